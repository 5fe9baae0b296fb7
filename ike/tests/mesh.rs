//! A full mesh of N endpoints, every one configured with all others and all starting at once, on an in-memory
//! LAN with a virtual clock: how long until every pair holds an established IKE SA. Reproduces the
//! benches/mesh_scale.sh run with 100 daemons (190 s instead of < 60 s) without the daemons: the initiation
//! schedule is the daemon's (tunnel/src/daemon/schedule.rs: the lower address at once, the other after 3 s if
//! no IKE SA came up, retries after a doubling back-off from 2 s).
mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::peer;
use ike::endpoint::Endpoint;
use ike::event::{Event, Reason, Transmit};
use ike::sa::State;

const FOLLOWER_DELAY: Duration = Duration::from_secs(3);
const BACKOFF_FIRST: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(120);
/// One-way delay of the LAN.
const DELAY: Duration = Duration::from_micros(200);

fn ip(i: usize) -> String {
    format!("198.18.{}.{}", i / 250, i % 250 + 1)
}

struct Node {
    ep: Endpoint,
    /// Before this the daemon neither reads its socket (datagrams wait in its receive buffer) nor runs timers
    /// (not started yet, or busy starting).
    start: Instant,
    /// Next initiation and back-off, per peer index.
    sched: BTreeMap<usize, (Option<Instant>, Duration)>,
}

struct Mesh {
    nodes: Vec<Node>,
    addr: HashMap<IpAddr, usize>,
    now: Instant,
    /// Datagrams in flight: (arrival, sequence) -> (to, from, transmit).
    wire: BTreeMap<(Instant, u64), (usize, usize, Transmit)>,
    seq: u64,
    sent: u64,
    /// When the run began (trace times are relative to it).
    t0: Instant,
    /// Each node's next timer, recomputed when the node handled something.
    timers: Vec<Option<Instant>>,
    /// Percentage of datagrams lost, chosen by [`Mesh::lost`].
    loss_pct: u64,
    /// Picks which datagrams are lost (see [`Mesh::lost`]).
    loss_seed: u64,
    /// Copies sent so far of each message, by (from, to, exchange, message ID, flags).
    copies: HashMap<(usize, usize, u8, u32, u8), u32>,
    /// IKE SAs given up for lack of answers (Reason::PeerDead): every one a request the peer never answered.
    dead: u64,
    /// IkeDown events by reason (diagnostics).
    downs: BTreeMap<String, u64>,
    /// Trace lines per unordered pair (diagnostics, with MESH_TRACE set).
    trace: Option<HashMap<(usize, usize), Vec<String>>>,
    /// Pairs (i, j) where i declared j dead.
    dead_pairs: Vec<(usize, usize)>,
    /// Pairs still without an IKE SA after 60 s (diagnostics, with MESH_TRACE set).
    late_pairs: Vec<(usize, usize)>,
}

impl Mesh {
    fn new(n: usize, jitter_ms: u64) -> Mesh {
        let now = Instant::now();
        let mut nodes = Vec::new();
        let mut addr = HashMap::new();
        for i in 0..n {
            let mut peers = Vec::new();
            let mut sched = BTreeMap::new();
            for j in (0..n).filter(|j| *j != i) {
                let mut p = peer(
                    &format!("h{j}"),
                    &ip(i),
                    &ip(j),
                    &format!("10.{}.{}.0/24", i / 250, i % 250),
                    &format!("10.{}.{}.0/24", j / 250, j % 250),
                );
                p.udp_with_vmsecd = true;
                // No liveness checks: a duplicate IKE SA that one end closed silently (INITIAL_CONTACT, duplicate
                // resolution) would be declared dead by the other's check 30 s later, harmlessly (the pair keeps
                // its other SA), and hide what this test counts: attempts whose requests were never answered.
                p.lifetimes.dpd_delay = Duration::from_secs(100_000);
                peers.push(Arc::new(p));
                // Daemons start within a few seconds of each other.
                let start = now + Duration::from_millis((i as u64 * 7919) % (jitter_ms + 1));
                let first = if i < j { start } else { start + FOLLOWER_DELAY };
                sched.insert(j, (Some(first), BACKOFF_FIRST));
            }
            addr.insert(ip(i).parse().unwrap(), i);
            nodes.push(Node {
                ep: Endpoint::new(peers),
                start: now + Duration::from_millis((i as u64 * 7919) % (jitter_ms + 1)),
                sched,
            });
        }
        Mesh {
            nodes,
            addr,
            now,
            wire: BTreeMap::new(),
            t0: now,
            seq: 0,
            sent: 0,
            timers: Vec::new(),
            loss_pct: 0,
            loss_seed: 0,
            copies: HashMap::new(),
            dead: 0,
            downs: BTreeMap::new(),
            trace: std::env::var_os("MESH_TRACE").map(|_| HashMap::new()),
            dead_pairs: Vec::new(),
            late_pairs: Vec::new(),
        }
    }

    fn flush(&mut self, i: usize) {
        while let Some(t) = self.nodes[i].ep.poll_transmit() {
            let Some(&to) = self.addr.get(&t.remote.ip()) else {
                continue;
            };
            self.seq += 1;
            self.sent += 1;
            let lost = self.lost(i, to, &t);
            if let Some(tr) = &mut self.trace {
                let d = if t.remote.port() == 4500 && t.data.len() > 4 {
                    &t.data[4..]
                } else {
                    &t.data[..]
                };
                if let Ok(h) = ike::message::Header::parse(d) {
                    tr.entry((i.min(to), i.max(to))).or_default().push(format!(
                        "{:>9.3} h{i}->h{to} {:016x}/{:016x} ex{} id{} fl{:02x} len{}{}",
                        (self.now - self.t0).as_secs_f64(),
                        h.spi_i,
                        h.spi_r,
                        h.exchange.0,
                        h.message_id,
                        h.flags.0,
                        d.len(),
                        if lost { " LOST" } else { "" }
                    ));
                }
            }
            if lost {
                continue;
            }
            self.wire.insert((self.now + DELAY, self.seq), (to, i, t));
        }
        while let Some(e) = self.nodes[i].ep.poll_event() {
            if let Some(tr) = &mut self.trace {
                let j = match &e {
                    Event::IkeUp { peer, .. } | Event::IkeDown { peer, .. } => {
                        peer[1..].parse::<usize>().ok()
                    }
                    _ => None,
                };
                if let Some(j) = j {
                    let mut s = format!("{e:?}");
                    s.truncate(200);
                    tr.entry((i.min(j), i.max(j))).or_default().push(format!(
                        "{:>9.3} EVENT at h{i}: {s}",
                        (self.now - self.t0).as_secs_f64()
                    ));
                }
            }
            let node = &mut self.nodes[i];
            match e {
                Event::IkeUp { peer, .. } => {
                    let j: usize = peer[1..].parse().unwrap();
                    if let Some(s) = node.sched.get_mut(&j) {
                        s.1 = BACKOFF_FIRST;
                    }
                }
                Event::IkeDown {
                    unauthenticated: true,
                    reason,
                    ..
                } => {
                    let r = format!("{reason:?}");
                    let r: String = r.chars().take(60).collect();
                    *self
                        .downs
                        .entry(format!("unauthenticated {r}"))
                        .or_default() += 1;
                }
                Event::IkeDown {
                    peer,
                    unauthenticated: false,
                    reason,
                } => {
                    let r = format!("{reason:?}");
                    *self.downs.entry(r.chars().take(60).collect()).or_default() += 1;
                    let j: usize = peer[1..].parse().unwrap();
                    if reason == Reason::PeerDead {
                        self.dead += 1;
                        self.dead_pairs.push((i, j));
                    }
                    if let Some(s) = node.sched.get_mut(&j) {
                        s.0 = Some(self.now + s.1);
                        s.1 = (s.1 * 2).min(BACKOFF_MAX);
                    }
                }
                _ => {}
            }
        }
    }

    /// Whether a datagram is lost: a hash of the seed, the two nodes and what the datagram is to IKE (exchange,
    /// message ID, flags, and which copy of it this is), never of anything random (SPIs, nonces) nor of the
    /// order in which the nodes' events run (which depends on the SPIs where two timers are due at once). So a
    /// seed loses the same transmissions of each pair's exchanges in every run, and a run can be repeated.
    /// Datagrams that are no IKE message (NAT keepalives) are never lost.
    fn lost(&mut self, from: usize, to: usize, t: &Transmit) -> bool {
        if self.loss_pct == 0 {
            return false;
        }
        let d = if t.remote.port() == 4500 && t.data.len() > 4 {
            &t.data[4..]
        } else {
            &t.data[..]
        };
        let Ok(h) = ike::message::Header::parse(d) else {
            return false;
        };
        let key = (from, to, h.exchange.0, h.message_id, h.flags.0);
        let copy = self.copies.entry(key).or_default();
        *copy += 1;
        // splitmix64's finaliser over the fields.
        let mut x = self.loss_seed;
        for v in [
            from as u64,
            to as u64,
            u64::from(h.exchange.0),
            u64::from(h.message_id),
            u64::from(h.flags.0),
            u64::from(*copy),
        ] {
            x = (x ^ v).wrapping_add(0x9E37_79B9_7F4A_7C15);
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^= x >> 31;
        }
        x % 100 < self.loss_pct
    }

    fn next_timer(&self, i: usize) -> Option<Instant> {
        let n = &self.nodes[i];
        let s = n.sched.values().filter_map(|s| s.0).min();
        [n.ep.poll_timeout(), s]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.max(n.start))
    }

    fn run_timers(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.nodes[i];
        if node.ep.poll_timeout().is_some_and(|t| t <= now) {
            node.ep.handle_timeout(now);
        }
        let due: Vec<usize> = node
            .sched
            .iter_mut()
            .filter(|(_, s)| s.0.is_some_and(|t| t <= now))
            .map(|(j, s)| {
                s.0 = None;
                *j
            })
            .collect();
        for j in due {
            let name = format!("h{j}");
            if !node.ep.has_sa(&name) {
                node.ep.connect(now, &name);
            }
        }
        self.flush(i);
    }

    /// The pairs (i, j) where node i holds no established IKE SA with j (diagnostics).
    fn missing(&self) -> Vec<(usize, usize)> {
        let n = self.nodes.len();
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let up: Vec<String> = node
                .ep
                .status()
                .into_iter()
                .filter(|(_, s)| s.state == State::Established)
                .map(|(p, _)| p)
                .collect();
            out.extend(
                (0..n)
                    .filter(|j| *j != i && !up.contains(&format!("h{j}")))
                    .map(|j| (i, j)),
            );
        }
        out
    }

    fn full(&self) -> bool {
        let n = self.nodes.len();
        self.nodes.iter().all(|node| {
            let mut up = node
                .ep
                .status()
                .into_iter()
                .filter(|(_, s)| s.state == State::Established)
                .map(|(p, _)| p)
                .collect::<Vec<_>>();
            up.sort();
            up.dedup();
            up.len() == n - 1
        })
    }

    /// Runs for `limit`; returns when every pair was first up.
    fn run(&mut self, limit: Duration) -> Option<Duration> {
        let mut up = None;
        let start = self.now;
        let n = self.nodes.len();
        self.timers = (0..n).map(|i| self.next_timer(i)).collect();
        let mut last_check = start;
        loop {
            let next_wire = self.wire.keys().next().map(|k| k.0);
            let next_timer = (0..n).filter_map(|i| self.timers[i].map(|t| (t, i))).min();
            let t = match (next_wire, next_timer) {
                (Some(w), Some((t, _))) => w.min(t),
                (Some(w), None) => w,
                (None, Some((t, _))) => t,
                (None, None) => return up,
            };
            if t > start + limit {
                return up;
            }
            self.now = self.now.max(t);
            // Deliver everything due now, then run due timers.
            while let Some(entry) = self.wire.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let (to, from, tr) = entry.remove();
                let src = SocketAddr::new(ip(from).parse().unwrap(), tr.local_port);
                let mut data = &tr.data[..];
                if data == [0xff] {
                    continue;
                }
                if self.now < self.nodes[to].start {
                    // Queued in the socket's receive buffer until the daemon reads it.
                    self.seq += 1;
                    self.wire
                        .insert((self.nodes[to].start, self.seq), (to, from, tr));
                    continue;
                }
                if tr.remote.port() == 4500 {
                    if data.len() < 4 || data[..4] != [0, 0, 0, 0] {
                        continue;
                    }
                    data = &data[4..];
                }
                self.nodes[to]
                    .ep
                    .handle(self.now, data, src, tr.remote.port());
                self.flush(to);
                self.timers[to] = self.next_timer(to);
            }
            for i in 0..n {
                if self.timers[i].is_some_and(|x| x <= self.now) {
                    self.run_timers(i);
                    self.timers[i] = self.next_timer(i);
                }
            }
            if self.now >= last_check + Duration::from_millis(500) {
                last_check = self.now;
                if up.is_none() && self.full() {
                    up = Some(self.now - start);
                }
                if up.is_none()
                    && self.trace.is_some()
                    && self.late_pairs.is_empty()
                    && self.now >= start + Duration::from_secs(60)
                {
                    self.late_pairs = self.missing();
                }
            }
        }
    }
}

fn mesh(n: usize, jitter_ms: u64, loss_pct: u64, seed: u64, limit: Duration) -> Option<Duration> {
    let wall = Instant::now();
    let mut m = Mesh::new(n, jitter_ms);
    m.loss_pct = loss_pct;
    m.loss_seed = std::env::var("MESH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(seed);
    let r = m.run(limit);
    let stats: Vec<_> = m.nodes.iter().map(|n| n.ep.stats()).collect();
    let sum = |f: fn(&ike::endpoint::Stats) -> u64| stats.iter().map(f).sum::<u64>();
    eprintln!(
        "n={n} jitter={jitter_ms}ms loss={loss_pct}% seed={}: full mesh after {r:?} (virtual), {} IKE SAs declared dead, \
         {} datagrams, {:?} wall; cookies {} \
         valid {} rate_limited {} capped {} key_exchanges {} half_open_expired {} evicted {}",
        m.loss_seed,
        m.dead,
        m.sent,
        wall.elapsed(),
        sum(|s| s.cookies_sent),
        sum(|s| s.cookies_valid),
        sum(|s| s.rate_limited),
        sum(|s| s.capped),
        sum(|s| s.key_exchanges),
        sum(|s| s.half_open_expired),
        sum(|s| s.evicted),
    );
    eprintln!("IkeDown reasons: {:?}", m.downs);
    for &(i, j) in m.dead_pairs.iter().chain(&m.late_pairs) {
        eprintln!("PeerDead at h{i} for h{j}, or no IKE SA after 60 s; trace:");
        if let Some(tr) = m.trace.as_ref().and_then(|t| t.get(&(i.min(j), i.max(j)))) {
            for l in tr {
                eprintln!("  {l}");
            }
        }
        for (a, b) in [(i, j), (j, i)] {
            for (p, s) in m.nodes[a].ep.status() {
                if p == format!("h{b}") {
                    eprintln!(
                        "  status at h{a}: {:?} {:016x}/{:016x} init={}",
                        s.state, s.spis.0, s.spis.1, s.initiator
                    );
                }
            }
        }
    }
    assert_eq!(m.dead, 0, "IKE SAs whose requests were never answered");
    // Every IKE SA one end deleted, the other took the delete of: one that never reached the peer left it a
    // stale IKE SA (a delete sent behind an unanswered liveness check, with the next message ID, did).
    assert_eq!(
        m.downs.get("DeletedByUs"),
        m.downs.get("DeletedByPeer"),
        "deletes that never reached the peer"
    );
    r
}

#[test]
fn mesh_30_comes_up_quickly() {
    let t = mesh(30, 10000, 0, 0, Duration::from_secs(200)).expect("mesh of 30 never complete");
    assert!(t < Duration::from_secs(30), "{t:?}");
}

#[test]
fn mesh_100_comes_up_within_a_minute() {
    let t = mesh(100, 10000, 0, 0, Duration::from_secs(300)).expect("mesh of 100 never complete");
    assert!(t < Duration::from_secs(60), "{t:?}");
}

/// With 5% loss, no IKE SA may go unanswered and the mesh must come up within a minute. Before issue 14's fixes,
/// 72-82 IKE SAs of 9,900 ended as PeerDead: the duplicate IKE SAs deleted after simultaneous starts (about 1,400
/// here) whose delete answer was lost, retransmitting the delete to a peer that had already forgotten the SA
/// (pair test `delete_whose_answer_is_lost_ends_as_our_delete`). The last one (about 1 run in 10 with the old
/// loss choice by sequence number): an IKE_AUTH request lost four times in a row outlived the responder's
/// half-open SA (30 s) while the responder's own IKE SA had come up, and ended PeerDead after 165 s (pair test
/// `attempt_the_peer_forgot_is_no_dead_peer_while_its_other_sa_is_up`).
///
/// The losses are those of seed 1 (see [`Mesh::lost`]): the same in every run, so the test no longer varies
/// with the hash-map seeds (run it with `MESH_SEED=n` to try others, `MESH_TRACE=1` to print the exchanges of a
/// pair that failed). Why a fixed seed: 55 of seeds 1-60 pass, and each of the other 5 (3, 9, 21, 29, 40) has one
/// pair whose IKE_AUTH exchange lost its request or its response on 5 transmissions in a row (about 0.0975^5 per
/// exchange): the 6th goes out at 89.5 s (4 s x 1.8^n, strongSwan's schedule), so that pair comes up at 97-100 s;
/// with 6 in a row (seeds 3 and 9) the initiator gives up after 165 s as RFC 7296 2.4 says ("repeated attempts
/// ... unanswered for a timeout period"), PeerDead, re-initiates 2 s later and its INITIAL_CONTACT clears the
/// responder's stale SA. Neither is an engine fault; a random seed would fail CI about 1 run in 12.
///
/// About 4-6 s wall in the debug build here.
#[test]
fn mesh_100_with_loss_comes_up_within_a_minute() {
    let t = mesh(100, 10000, 5, 1, Duration::from_secs(300)).expect("mesh of 100 never complete");
    assert!(t < Duration::from_secs(60), "{t:?}");
}

/// The lossy case at a size that runs in CI (under a second in debug).
#[test]
fn mesh_30_with_loss_comes_up_quickly() {
    let t = mesh(30, 10000, 5, 1, Duration::from_secs(300)).expect("mesh of 30 never complete");
    assert!(t < Duration::from_secs(60), "{t:?}");
}
