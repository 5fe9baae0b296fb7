//! All IKE SAs of one daemon: demultiplexes datagrams by SPI, answers new IKE_SA_INIT requests (with cookies
//! under load), and collects what every SA wants sent or reported.
//!
//! An IKE SA rekey (RFC 7296 2.18) creates a new IKE SA with new SPIs: the endpoint files it under our new SPI,
//! moves Child SAs to the survivor of a rekey collision, and keeps the old SA reachable under its own SPI until
//! its delete completes.
//!
//! What an unauthenticated IKE_SA_INIT request may cost us (rate limits, cookies, half-open caps) is decided in
//! `admission.rs`; this file holds the endpoint's state, demultiplexing, timers and event collection. What keeps
//! the cost of one event independent of the number of SAs (timers in deadline order, SAs by peer, the SAs an
//! event touched) is in `index.rs`.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::config::PeerConfig;
use crate::crypto::auth;
use crate::event::{Event, Reason, Transmit};
use crate::message::{self, ExchangeType, Flags, Header, Notify, Payload};
use crate::notify as n;
use crate::ratelimit::TokenBucket;
use crate::sa::{IkeSa, InitOutcome, SaStatus, State, IKE_PORT};
use crate::suite;

mod admission;
mod index;
#[cfg(test)]
mod tests;

use admission::{CookieSecrets, Pressure};
pub use admission::{
    COOKIE_ANSWER_BURST_PER_ADDR, COOKIE_ANSWER_INTERVAL_PER_ADDR, COOKIE_PRESSURE_WINDOW,
    COOKIE_SECRET_LIFETIME, DEFAULT_COOKIE_THRESHOLD, INIT_ANSWER_BURST,
    INIT_ANSWER_BURST_PER_ADDR, INIT_ANSWER_INTERVAL, INIT_ANSWER_INTERVAL_PER_ADDR,
    KEY_EXCHANGE_BURST, KEY_EXCHANGE_BURST_PER_ADDR, KEY_EXCHANGE_INTERVAL,
    KEY_EXCHANGE_INTERVAL_PER_ADDR, MAX_HALF_OPEN, MAX_HALF_OPEN_PER_ADDR, MAX_IKE_SAS_PER_PEER,
    MAX_IKE_SAS_PER_PEER_WITH_REKEYS, MAX_INIT_REQUEST_LEN, UNAUTHENTICATED_EVENT_INTERVAL,
};

/// How long a duplicate IKE SA is left alone before its initiator deletes it. A strongSwan peer resolves
/// duplicates itself (uniqueids: a new IKE SA with the same identities replaces the old one); waiting lets its
/// delete arrive first, so that both ends never delete one SA each and end up with none.
pub const DUPLICATE_GRACE: Duration = Duration::from_secs(1);

/// What the endpoint did with unauthenticated IKE_SA_INIT traffic, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// IKE_SA_INIT requests from addresses that are no configured peer's: dropped.
    pub unknown_source: u64,
    /// COOKIE answers sent.
    pub cookies_sent: u64,
    /// Requests with a valid cookie.
    pub cookies_valid: u64,
    /// Stateless refusals sent (NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD, INVALID_SYNTAX).
    pub refused: u64,
    /// Requests dropped by the answer rate limits.
    pub rate_limited: u64,
    /// Requests dropped because the half-open caps were reached (or the request was too large to keep).
    pub capped: u64,
    /// Key exchanges done for IKE_SA_INIT requests (one key generation and agreement each).
    pub key_exchanges: u64,
    /// Half-open SAs created.
    pub half_open_created: u64,
    /// Half-open SAs that expired without IKE_AUTH.
    pub half_open_expired: u64,
    /// Half-open SAs without a cookie dropped to make room for a cookie-proven request.
    pub evicted: u64,
    /// Events about unauthenticated requests left out by [`UNAUTHENTICATED_EVENT_INTERVAL`].
    pub events_suppressed: u64,
}

/// The IKE side of a daemon.
pub struct Endpoint {
    peers: Vec<Arc<PeerConfig>>,
    /// Configured peers by address: the only sources whose IKE_SA_INIT requests are answered.
    by_addr: HashMap<IpAddr, Arc<PeerConfig>>,
    /// Our SAs and authenticated ones, by our SPI.
    sas: HashMap<u64, IkeSa>,
    /// Half-open responder SAs, by our SPI: kept apart, so that nothing an unauthenticated sender creates is
    /// taken for the peer's SA or scanned on every event.
    half_open: HashMap<u64, IkeSa>,
    /// Expiry of half-open SAs, oldest first (all live [`crate::sa::HALF_OPEN_TIMEOUT`]); entries of SAs gone
    /// meanwhile are skipped.
    half_open_expiry: VecDeque<(Instant, u64)>,
    /// Half-open SAs per source address.
    half_open_per_addr: HashMap<IpAddr, usize>,
    /// Half-open SAs whose request returned a valid cookie (see [`Endpoint::evict_unproven`]).
    half_open_proven: HashSet<u64>,
    /// Half-open SAs by the initiator's SPI and address, to recognise retransmitted IKE_SA_INIT requests.
    by_init: HashMap<(u64, SocketAddr), u64>,
    cookie_secrets: CookieSecrets,
    cookie_threshold: usize,
    pressure: Pressure,
    /// Answers per configured peer address.
    answer_limit_per_addr: HashMap<IpAddr, TokenBucket>,
    answer_limit: TokenBucket,
    key_exchange_limit: TokenBucket,
    /// COOKIE answers per configured peer address.
    cookie_limit_per_addr: HashMap<IpAddr, TokenBucket>,
    /// Key exchanges per configured peer address.
    key_exchange_limit_per_addr: HashMap<IpAddr, TokenBucket>,
    /// Reports about unauthenticated requests, per peer name, and how many were left out since the last one.
    unauthenticated_events: HashMap<String, (TokenBucket, u64)>,
    stats: Stats,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Peers with more than one established IKE SA, since when (see [`Endpoint::resolve_duplicates`]).
    duplicates: HashMap<String, Instant>,
    /// The same, by the end of their grace (`since + DUPLICATE_GRACE`).
    dup_due: BTreeSet<(Instant, String)>,
    /// Peers whose count of established current SAs changed since the last duplicate check: only they are
    /// checked.
    dup_check: HashSet<String>,
    /// The SAs counted as established and current at their last collect (what a duplicate is made of).
    counted: HashSet<u64>,
    /// Every SA's next timer, in deadline order, and the same by SPI (see `index.rs`).
    timers: BTreeSet<(Instant, u64)>,
    armed: HashMap<u64, Instant>,
    /// The SPIs in `sas` of each peer.
    by_peer: HashMap<String, Vec<u64>>,
    /// SAs the current call touched, in order (possibly twice), and as a set: collected at its end.
    dirty: Vec<u64>,
    dirty_set: HashSet<u64>,
    /// SAs touched since the last INITIAL_CONTACT check (see [`Endpoint::honour_initial_contact`]).
    contact_check: HashSet<u64>,
    /// SAs that started counting as established and current since the last check for older ones (see
    /// [`Endpoint::probe_older`]).
    fresh_up: Vec<u64>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("peers", &self.peers.len())
            .field("sas", &self.sas.len())
            .field("half_open", &self.half_open.len())
            .finish_non_exhaustive()
    }
}

fn index_by_addr(peers: &[Arc<PeerConfig>]) -> HashMap<IpAddr, Arc<PeerConfig>> {
    // The first peer with an address wins, as the linear search did before.
    let mut m = HashMap::with_capacity(peers.len());
    for p in peers {
        m.entry(p.remote_addr).or_insert_with(|| p.clone());
    }
    m
}

impl Endpoint {
    /// An endpoint that accepts and initiates IKE SAs with these peers.
    pub fn new(peers: Vec<Arc<PeerConfig>>) -> Endpoint {
        Endpoint {
            by_addr: index_by_addr(&peers),
            peers,
            sas: HashMap::new(),
            half_open: HashMap::new(),
            half_open_expiry: VecDeque::new(),
            half_open_per_addr: HashMap::new(),
            half_open_proven: HashSet::new(),
            by_init: HashMap::new(),
            cookie_secrets: CookieSecrets::new(),
            cookie_threshold: DEFAULT_COOKIE_THRESHOLD,
            pressure: Pressure {
                start: None,
                current: 0,
                previous: 0,
            },
            answer_limit_per_addr: HashMap::new(),
            answer_limit: TokenBucket::new(INIT_ANSWER_BURST, INIT_ANSWER_INTERVAL),
            key_exchange_limit: TokenBucket::new(KEY_EXCHANGE_BURST, KEY_EXCHANGE_INTERVAL),
            key_exchange_limit_per_addr: HashMap::new(),
            cookie_limit_per_addr: HashMap::new(),
            unauthenticated_events: HashMap::new(),
            stats: Stats::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            duplicates: HashMap::new(),
            dup_due: BTreeSet::new(),
            dup_check: HashSet::new(),
            counted: HashSet::new(),
            timers: BTreeSet::new(),
            armed: HashMap::new(),
            by_peer: HashMap::new(),
            dirty: Vec::new(),
            dirty_set: HashSet::new(),
            contact_check: HashSet::new(),
            fresh_up: Vec::new(),
        }
    }

    /// Sets the IKE_SA_INIT pressure that triggers cookies (0: always demand one).
    pub fn set_cookie_threshold(&mut self, n: usize) {
        self.cookie_threshold = n;
    }

    /// What happened to unauthenticated IKE_SA_INIT traffic so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The configured peers.
    pub fn peers(&self) -> &[Arc<PeerConfig>] {
        &self.peers
    }

    /// Replaces the peer list (reload). SAs of peers no longer present are deleted. Scans every SA: a reload is
    /// no per-message event.
    pub fn set_peers(&mut self, now: Instant, peers: Vec<Arc<PeerConfig>>) {
        let gone: Vec<u64> = self
            .sas
            .iter()
            .filter(|(_, sa)| !peers.iter().any(|p| p.name == sa.config().name))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(sa) = self.sas.get_mut(&k) {
                sa.delete(now);
                self.mark(k);
            }
        }
        // Half-open SAs hold the old configuration: let a new request start over with the new one.
        let half_open: Vec<u64> = self.half_open.keys().copied().collect();
        for k in half_open {
            self.drop_half_open(k);
        }
        self.by_addr = index_by_addr(&peers);
        self.answer_limit_per_addr
            .retain(|a, _| peers.iter().any(|p| p.remote_addr == *a));
        self.key_exchange_limit_per_addr
            .retain(|a, _| peers.iter().any(|p| p.remote_addr == *a));
        self.cookie_limit_per_addr
            .retain(|a, _| peers.iter().any(|p| p.remote_addr == *a));
        self.unauthenticated_events
            .retain(|name, _| peers.iter().any(|p| p.name == *name));
        self.peers = peers;
        self.collect();
    }

    /// Starts an IKE SA with the named peer. Returns its SPI, or `None` for an unknown name.
    pub fn connect(&mut self, now: Instant, peer: &str) -> Option<u64> {
        let cfg = self.peers.iter().find(|p| p.name == peer)?.clone();
        let sa = IkeSa::initiate(cfg, now);
        let spi = sa.local_spi();
        self.insert_sa(spi, sa);
        self.collect();
        Some(spi)
    }

    /// True if an IKE SA with this peer exists in any state but closed. Half-open responder SAs do not count:
    /// anyone who can send from the peer's address makes one, and it must not keep us from initiating.
    pub fn has_sa(&self, peer: &str) -> bool {
        self.peer_sas(peer)
            .iter()
            .filter_map(|k| self.sas.get(k))
            .any(|sa| sa.state() != State::Closed)
    }

    /// Status of every current SA: (peer name, status). IKE SAs a rekey replaced are left out while their
    /// delete completes, and so are half-open responder SAs (see [`Endpoint::half_open_count`]).
    pub fn status(&self) -> Vec<(String, SaStatus)> {
        self.sas
            .values()
            .filter(|sa| !sa.is_superseded())
            .map(|sa| (sa.config().name.clone(), sa.status()))
            .collect()
    }

    /// How many IKE SAs are held, including replaced ones whose delete is still under way and half-open ones.
    pub fn sa_count(&self) -> usize {
        self.sas.len() + self.half_open.len()
    }

    /// How many half-open responder SAs are held (IKE_SA_INIT answered, no IKE_AUTH yet).
    pub fn half_open_count(&self) -> usize {
        self.half_open.len()
    }

    /// True while a new initiator would be asked for a cookie whatever its address (RFC 7296 2.6): the
    /// IKE_SA_INIT pressure (requests over the last window plus half-open SAs) is at the cookie threshold.
    pub fn demanding_cookies(&self, now: Instant) -> bool {
        self.pressure.peek(now).saturating_add(self.half_open.len()) >= self.cookie_threshold
    }

    /// Asks for the Child SA with inbound SPI `spi_in` to be rekeyed now (see [`IkeSa::rekey_child_now`]);
    /// false if no IKE SA holds it. Scans the SAs for the Child SA: asked once per Child SA whose sequence
    /// numbers run low, never per message.
    pub fn rekey_child_now(&mut self, now: Instant, spi_in: u32) -> bool {
        let found = self
            .sas
            .iter_mut()
            .find_map(|(k, sa)| sa.rekey_child_now(now, spi_in).then_some(*k));
        match found {
            Some(k) => {
                self.mark(k);
                self.collect();
                true
            }
            None => false,
        }
    }

    /// Deletes every IKE SA (shutdown).
    pub fn delete_all(&mut self, now: Instant) {
        let all: Vec<u64> = self.sas.keys().copied().collect();
        for k in all {
            if let Some(sa) = self.sas.get_mut(&k) {
                sa.delete(now);
            }
            self.mark(k);
        }
        let half_open: Vec<u64> = self.half_open.keys().copied().collect();
        for k in half_open {
            self.drop_half_open(k);
        }
        self.collect();
    }

    /// Deletes the IKE SAs with one peer.
    pub fn delete_peer(&mut self, now: Instant, peer: &str) {
        for k in self.peer_sas(peer).to_vec() {
            if let Some(sa) = self.sas.get_mut(&k) {
                sa.delete(now);
                self.mark(k);
            }
        }
        let half_open: Vec<u64> = self
            .half_open
            .iter()
            .filter(|(_, sa)| sa.config().name == peer)
            .map(|(k, _)| *k)
            .collect();
        for k in half_open {
            self.drop_half_open(k);
        }
        self.collect();
    }

    /// True when no SA is waiting for anything (all deleted). Half-open SAs wait for nothing of ours.
    pub fn is_idle(&self) -> bool {
        self.sas.values().all(|sa| sa.state() == State::Closed)
    }

    /// Handles a datagram received on `local_port` (the non-ESP marker already removed on 4500).
    pub fn handle(&mut self, now: Instant, data: &[u8], from: SocketAddr, local_port: u16) {
        let Ok(h) = Header::parse(data) else { return };
        if h.exchange == ExchangeType::IKE_SA_INIT && !h.flags.response() && h.spi_r == 0 {
            self.handle_new(now, data, &h, from);
        } else {
            let ours = if h.flags.initiator() {
                h.spi_r
            } else {
                h.spi_i
            };
            self.note_other_established(ours);
            let room = self
                .sas
                .get(&ours)
                .map(|sa| self.peer_sa_count(&sa.config().name) < MAX_IKE_SAS_PER_PEER_WITH_REKEYS);
            if let Some(sa) = self.sas.get_mut(&ours) {
                sa.set_rekey_room(room.unwrap_or(true));
                sa.handle(now, data, from, local_port);
                self.mark(ours);
            } else if let Some(sa) = self.half_open.get_mut(&ours) {
                sa.handle(now, data, from, local_port);
                // Authenticated, it is filed (and marked) among the SAs.
                self.settle_half_open(ours);
                if !self.sas.contains_key(&ours) {
                    // Still half-open or gone: nothing else changed.
                    return;
                }
            } else {
                //= https://www.rfc-editor.org/rfc/rfc7296#section-2.21.4
                //# If a node receives a message on UDP port 500 or 4500 outside the context of an IKE SA known to
                //# it (and the message is not a request to start an IKE SA), this may be the result of a recent
                //# crash
                // We stay silent to such messages: answering unauthenticated INVALID_IKE_SPI would make us a
                // reflector. Nothing changed either: no SA is scanned, nothing allocated.
                return;
            }
        }
        self.collect();
        self.honour_initial_contact(now);
        self.probe_older(now);
        self.resolve_duplicates(now);
    }

    /// Before an initiator in IKE_SA_INIT handles a datagram (its response, which sends IKE_AUTH): tells it
    /// whether another IKE SA with the peer is established, which its IKE_AUTH must then not deny by claiming
    /// INITIAL_CONTACT (RFC 7296 2.4). Looks at the peer's SAs only: it runs for every datagram that names an
    /// initiator's SPI while it waits for its IKE_SA_INIT response, and anyone who saw the request may send
    /// those, so a walk over every SA would make their cost grow with the mesh again.
    fn note_other_established(&mut self, spi: u64) {
        let Some(name) = self
            .sas
            .get(&spi)
            .filter(|sa| sa.state() == State::InitSent)
            .map(|sa| sa.config().name.clone())
        else {
            return;
        };
        let other = self.peer_sas(&name).iter().any(|k| {
            *k != spi
                && self
                    .sas
                    .get(k)
                    .is_some_and(|sa| sa.state() == State::Established && !sa.is_superseded())
        });
        if let Some(sa) = self.sas.get_mut(&spi) {
            sa.set_other_established(other);
        }
    }

    /// For an initiator's IKE SA not up yet (IKE_SA_INIT or IKE_AUTH outstanding): another established, current
    /// IKE SA with the same peer, if there is one (`Some(None)` if not). `None` for any other SA. Looks at the
    /// peer's SAs only.
    fn up_elsewhere(&self, spi: u64) -> Option<Option<u64>> {
        let sa = self.sas.get(&spi).filter(|sa| {
            sa.is_initiator() && matches!(sa.state(), State::InitSent | State::AuthSent)
        })?;
        let other = self.peer_sas(&sa.config().name).iter().copied().find(|k| {
            *k != spi
                && self
                    .sas
                    .get(k)
                    .is_some_and(|o| o.state() == State::Established && !o.is_superseded())
        });
        Some(other)
    }

    /// A peer's new IKE SA carried INITIAL_CONTACT (RFC 7296 2.4): its older IKE SAs are gone on its side (it
    /// rebooted, or its daemon restarted), and ours would linger until liveness checks gave up on them (minutes)
    /// while holding the peer's slot in `status` and their Child SAs in the datapath. Closed here, silently.
    ///
    /// Only SAs established before the new one began are closed: when both ends initiate at once, each
    /// IKE_AUTH carries INITIAL_CONTACT, and neither SA was established when the other began, so both stay and
    /// [`Endpoint::resolve_duplicates`] keeps one.
    ///
    /// Only the SAs touched since the last check can carry the flag, and only the peer's SAs are closed.
    fn honour_initial_contact(&mut self, now: Instant) {
        let mut fresh = Vec::new();
        for k in self.contact_check.drain() {
            if let Some(sa) = self.sas.get_mut(&k) {
                if sa.take_initial_contact() {
                    fresh.push((k, sa.config().name.clone(), sa.created_at()));
                }
            }
        }
        if fresh.is_empty() {
            return;
        }
        for (key, peer, began) in fresh {
            for k in self.peer_sas(&peer).to_vec() {
                let Some(sa) = self.sas.get_mut(&k) else {
                    continue;
                };
                //= https://www.rfc-editor.org/rfc/rfc7296#section-2.4
                //# the receiver MAY delete other SAs it has for the same authenticated identity without waiting
                //# for a timeout.
                if k != key
                    && sa.state() == State::Established
                    && !sa.is_superseded()
                    && sa.established_at().is_some_and(|t| t < began)
                {
                    sa.forget(now, Reason::PeerRestarted);
                    self.mark(k);
                }
            }
        }
        self.collect();
    }

    /// A new IKE SA with a peer came up while an older one, established before the new one began, is still up:
    /// no simultaneous start (see [`Endpoint::resolve_duplicates`]) and no rekey (a replaced SA is not current).
    /// Without INITIAL_CONTACT (libreswan sends none after a reboot) that is what a peer that lost the older SA
    /// looks like, or one that re-authenticates and deletes the old SA itself. So the older SA's liveness is
    /// checked at once rather than after `dpd_delay` of silence: it goes within the retransmission time if the
    /// peer lost it, and costs one exchange if not. It is not closed unasked: the peer may still hold it.
    //= https://www.rfc-editor.org/rfc/rfc7296#section-2.4
    //# An endpoint MUST conclude that the other endpoint has failed only when repeated attempts to contact it
    //# have gone unanswered for a timeout period or when a cryptographically protected INITIAL_CONTACT
    //# notification is received on a different IKE SA to the same authenticated identity.
    ///
    /// Only the peers of SAs that came up in this call are looked at.
    fn probe_older(&mut self, now: Instant) {
        if self.fresh_up.is_empty() {
            return;
        }
        let mut probe = Vec::new();
        for k in std::mem::take(&mut self.fresh_up) {
            let Some((peer, began)) = self
                .sas
                .get(&k)
                .filter(|sa| sa.state() == State::Established && !sa.is_superseded())
                .map(|sa| (sa.config().name.clone(), sa.created_at()))
            else {
                continue;
            };
            probe.extend(self.peer_sas(&peer).iter().copied().filter(|o| {
                *o != k
                    && self.sas.get(o).is_some_and(|sa| {
                        sa.state() == State::Established
                            && !sa.is_superseded()
                            && sa.established_at().is_some_and(|t| t < began)
                    })
            }));
        }
        for o in probe {
            if let Some(sa) = self.sas.get_mut(&o) {
                sa.check_liveness(now);
                self.mark(o);
            }
        }
        self.collect();
    }

    /// When [`Endpoint::handle_timeout`] must run next: the first of three ordered sets, whatever the number
    /// of SAs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let sas = self.timers.first().map(|(t, _)| *t);
        let dup = self.dup_due.first().map(|(t, _)| *t);
        let half_open = self.half_open_expiry.front().map(|(t, _)| *t);
        [sas, dup, half_open].into_iter().flatten().min()
    }

    /// Runs the timers that are due, of the SAs whose timer is due only.
    pub fn handle_timeout(&mut self, now: Instant) {
        for k in self.take_due(now) {
            let elsewhere = self.up_elsewhere(k);
            if let Some(sa) = self.sas.get_mut(&k) {
                if let Some(other) = elsewhere {
                    sa.set_peer_up_elsewhere(other.is_some());
                }
                if sa.poll_timeout().is_some_and(|t| t <= now) {
                    sa.handle_timeout(now);
                }
                let gave_up = sa.state() == State::Closed;
                self.mark(k);
                // Our attempt gave up while the peer's other IKE SA is up (see `IkeSa::set_peer_up_elsewhere`):
                // whether the peer is alive is asked on that SA, at once.
                if let Some(Some(other)) = elsewhere.filter(|_| gave_up) {
                    if let Some(o) = self.sas.get_mut(&other) {
                        o.check_liveness(now);
                        self.mark(other);
                    }
                }
            }
        }
        // Half-open SAs expire oldest first; only the expired ones are looked at.
        while let Some((t, spi)) = self.half_open_expiry.front().copied() {
            if t > now {
                break;
            }
            self.half_open_expiry.pop_front();
            if let Some(sa) = self.half_open.get_mut(&spi) {
                sa.handle_timeout(now);
                if sa.state() == State::Closed {
                    self.stats.half_open_expired += 1;
                }
                self.settle_half_open(spi);
            }
        }
        self.collect();
        self.resolve_duplicates(now);
    }

    /// Two established IKE SAs with one peer: both ends started one at the same moment (the follower's timer
    /// fired while the leader's IKE_SA_INIT was in flight, or both ends restarted together). Both ends must
    /// keep the same one, and each SA must be deleted by one end only, so the rule depends only on what both
    /// see: keep the SA that the lower address initiated (the mesh's designated initiator), among those the
    /// lowest initiator SPI; the initiator of every other one deletes it, after [`DUPLICATE_GRACE`].
    ///
    /// Why not act on INITIAL_CONTACT instead: when two IKE_AUTH exchanges cross, each carries it, and
    /// honouring both would delete both SAs.
    ///
    /// Only the peers whose SAs changed since the last call, and those whose grace ended, are looked at.
    fn resolve_duplicates(&mut self, now: Instant) {
        let mut peers: Vec<String> = self.dup_check.drain().collect();
        peers.extend(self.due_duplicates(now));
        peers.sort_unstable();
        peers.dedup();
        let mut delete = Vec::new();
        let mut confirm = Vec::new();
        let mut wait = Vec::new();
        let mut resolved = Vec::new();
        for peer in peers {
            let keys: Vec<u64> = self
                .peer_sas(&peer)
                .iter()
                .copied()
                .filter(|k| {
                    self.sas
                        .get(k)
                        .is_some_and(|sa| sa.state() == State::Established && !sa.is_superseded())
                })
                .collect();
            if keys.len() < 2 {
                self.clear_duplicate(&peer);
                continue;
            }
            let since = self.note_duplicate(&peer, now);
            if now < since + DUPLICATE_GRACE {
                continue;
            }
            let rank = |k: &u64| {
                self.sas.get(k).map(|sa| {
                    let cfg = sa.config();
                    let lower_initiated = if sa.is_initiator() {
                        cfg.local_addr < cfg.remote_addr
                    } else {
                        cfg.remote_addr < cfg.local_addr
                    };
                    (!lower_initiated, sa.spis().0)
                })
            };
            let keep = keys.iter().min_by_key(|k| rank(k)).copied();
            let ours: Vec<u64> = keys
                .iter()
                .filter(|k| Some(**k) != keep && self.sas.get(*k).is_some_and(IkeSa::is_initiator))
                .copied()
                .collect();
            // The SA kept must be established at the peer too before ours go: as its responder we do not know
            // whether our IKE_AUTH response arrived, and deleting a duplicate the peer holds established left
            // it with none until its IKE_AUTH retransmission got through (24 s for the last pairs of
            // benches/mesh_scale.sh with 100 hosts and 5% loss). So we ask it first (a liveness check on the
            // kept SA) and delete once it answered, checking again each DUPLICATE_GRACE meanwhile.
            if let Some(k) = keep.filter(|k| {
                !ours.is_empty() && self.sas.get(k).is_some_and(|sa| !sa.peer_confirmed())
            }) {
                confirm.push((k, peer));
                continue;
            }
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.3
            //# An IKE endpoint MUST wait for a response to each of its messages before sending a subsequent
            //# message
            // A delete sent behind a request of ours still outstanding on that SA (a liveness check of
            // `probe_older`) took the next message ID, which the peer does not take before the outstanding one's:
            // it went unanswered and the peer kept the SA. So the SA is deleted once that request is done.
            if ours
                .iter()
                .any(|k| self.sas.get(k).is_some_and(IkeSa::awaits_answer))
            {
                wait.push(peer);
                continue;
            }
            delete.extend(ours);
            self.clear_duplicate(&peer);
            // Looked at again at the next call, as any peer still holding duplicates (the other end may have
            // to delete them): noted afresh then, with a new grace.
            resolved.push(peer);
        }
        for peer in &wait {
            // Checked again after a new grace (or at once when the answer changes the peer's SAs).
            self.clear_duplicate(peer);
            self.note_duplicate(peer, now);
        }
        for (k, peer) in &confirm {
            if let Some(sa) = self.sas.get_mut(k) {
                sa.confirm_peer(now);
                self.mark(*k);
            }
            // Checked again after a new grace (or at once when the answer changes the peer's SAs).
            self.clear_duplicate(peer);
            self.note_duplicate(peer, now);
        }
        for k in &delete {
            if let Some(sa) = self.sas.get_mut(k) {
                sa.delete(now);
                self.mark(*k);
            }
        }
        if !delete.is_empty() || !confirm.is_empty() {
            self.collect();
        }
        self.dup_check.extend(resolved);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Takes what the SAs touched by the current call queued, files the IKE SAs a rekey created, hands Child
    /// SAs over, then files each touched SA's next timer again and forgets the closed ones. SAs nobody touched
    /// are not looked at (see `index.rs`).
    fn collect(&mut self) {
        // A rekey creates IKE SAs (filed under their own SPI, while the old one stays reachable until its delete
        // completes) and may move Child SAs between them; the new ones can have queued messages of their own.
        let mut next = 0;
        loop {
            let mut spawned = Vec::new();
            let mut handoffs = Vec::new();
            let mut doomed = Vec::new();
            while let Some(k) = self.dirty.get(next).copied() {
                next += 1;
                let Some(sa) = self.sas.get_mut(&k) else {
                    continue;
                };
                spawned.extend(sa.take_spawned());
                if let Some((target, children)) = sa.take_handoff() {
                    handoffs.push((target, children, sa.config().name.clone()));
                }
                doomed.extend(sa.take_doomed());
                while let Some(t) = sa.poll_transmit() {
                    self.transmits.push_back(t);
                }
                while let Some(e) = sa.poll_event() {
                    self.events.push_back(e);
                }
            }
            if spawned.is_empty() && handoffs.is_empty() && doomed.is_empty() {
                break;
            }
            for sa in spawned {
                self.insert_sa(sa.local_spi(), sa);
            }
            for (spi, children, peer) in handoffs {
                if let Some(sa) = self
                    .sas
                    .get_mut(&spi)
                    .filter(|sa| sa.state() != State::Closed)
                {
                    sa.adopt(children);
                    self.mark(spi);
                } else {
                    // The winner of a rekey collision is gone already (the peer deleted the SA its own rekey
                    // made, then answered ours so that ours lost): nothing carries these Child SAs any more, and
                    // unreported they stayed in the datapath for ever.
                    for c in children {
                        self.events.push_back(c.down(
                            &peer,
                            Reason::Protocol(
                                "the IKE SA that won a rekey collision and was to carry it is gone".into(),
                            ),
                        ));
                    }
                }
            }
            for (spi, when) in doomed {
                if let Some(sa) = self.sas.get_mut(&spi) {
                    sa.mark_redundant(when);
                    self.mark(spi);
                }
            }
        }
        // Taken and given back, so that its allocation is reused by the next call.
        let mut dirty = std::mem::take(&mut self.dirty);
        for k in dirty.drain(..) {
            if !self.dirty_set.remove(&k) {
                continue; // listed twice
            }
            let Some(sa) = self.sas.get(&k) else {
                continue;
            };
            if sa.state() == State::Closed {
                self.remove_sa(k);
            } else {
                // A peer's duplicate state changes only when one of its SAs starts or stops counting.
                let counts = sa.state() == State::Established && !sa.is_superseded();
                if counts != self.counted.contains(&k) {
                    if !self.dup_check.contains(&sa.config().name) {
                        self.dup_check.insert(sa.config().name.clone());
                    }
                    if counts {
                        self.counted.insert(k);
                        self.fresh_up.push(k);
                    } else {
                        self.counted.remove(&k);
                    }
                }
                self.contact_check.insert(k);
                self.rearm(k);
            }
        }
        self.dirty = dirty;
    }
}
