//! The endpoint's index (`index.rs`) against a full scan: a small mesh of endpoints driven by a seeded
//! pseudo-random sequence of deliveries, losses, duplicates, timeouts, connects from both ends at once (duplicate
//! IKE SAs), deletes, restarts (INITIAL_CONTACT), reloads and early Child SA rekeys, with short lifetimes so that
//! IKE and Child SA rekeys (and their collisions) happen. After every step, [`Endpoint::check_index`] checks on
//! every endpoint that each SA's timer is filed where its `poll_timeout` says, that `poll_timeout` equals the
//! minimum of a full scan, and that every peer with duplicate SAs is noted.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Endpoint;
use crate::config::DEFAULT_FRAGMENT_SIZE;
use crate::config::{id_from_addr, AuthMethod, Lifetimes, PeerConfig, Retransmit};
use crate::event::{Event, Transmit};
use crate::message::TrafficSelector;
use crate::proposal::ProposalSpec;

const HOSTS: u8 = 4;

/// xorshift64*: deterministic, so that a failing seed can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn addr(i: u8) -> IpAddr {
    IpAddr::from([198, 18, 0, i])
}

fn peer(local: u8, remote: u8) -> Arc<PeerConfig> {
    let (l, r) = (addr(local), addr(remote));
    let net = |i: u8| TrafficSelector::from_prefix(IpAddr::from([198, 19, i, 0]), 24);
    Arc::new(PeerConfig {
        name: format!("h{remote}"),
        local_addr: l,
        remote_addr: r,
        remote_port: 500,
        local_id: id_from_addr(l),
        remote_id: id_from_addr(r),
        auth: AuthMethod::Psk(zeroize::Zeroizing::new(
            b"a shared secret of some length".to_vec(),
        )),
        ike_proposals: vec![ProposalSpec::ike("aes128gcm16-prfsha256-x25519").unwrap()],
        esp_proposals: vec![ProposalSpec::esp("aes128gcm16").unwrap()],
        local_ts: vec![net(local)],
        remote_ts: vec![net(remote)],
        force_encap: false,
        udp_with_vmsecd: false,
        retransmit: Retransmit {
            initial: Duration::from_secs(2),
            factor: 1.5,
            tries: 5,
        },
        lifetimes: Lifetimes {
            ike_rekey: Duration::from_secs(60),
            ike_lifetime: Duration::from_secs(90),
            child_rekey: Duration::from_secs(25),
            jitter: Duration::from_secs(5),
            dpd_delay: Duration::from_secs(7),
            nat_keepalive: Duration::from_secs(20),
        },
        replay_window: 1024,
        fragment_size: DEFAULT_FRAGMENT_SIZE,
    })
}

fn endpoint(i: u8) -> Endpoint {
    Endpoint::new(
        (1..=HOSTS)
            .filter(|r| *r != i)
            .map(|r| peer(i, r))
            .collect(),
    )
}

struct Mesh {
    eps: Vec<Endpoint>,
    now: Instant,
    /// Datagrams in flight: (from host index, to host index, datagram).
    net: Vec<(usize, usize, Transmit)>,
    /// Inbound SPIs of Child SAs reported up, per host.
    children: Vec<Vec<u32>>,
    events: usize,
    ike_up: usize,
    rekeys: usize,
}

impl Mesh {
    fn drain(&mut self) {
        for (i, ep) in self.eps.iter_mut().enumerate() {
            while let Some(t) = ep.poll_transmit() {
                let IpAddr::V4(v) = t.remote.ip() else {
                    panic!("IPv4 only")
                };
                let to = usize::from(v.octets()[3]) - 1;
                self.net.push((i, to, t));
            }
            while let Some(e) = ep.poll_event() {
                self.events += 1;
                match e {
                    Event::IkeUp { .. } => self.ike_up += 1,
                    Event::IkeRekeyed { .. } => self.rekeys += 1,
                    Event::ChildUp(c) => self.children[i].push(c.spi_in),
                    Event::ChildRekeyed { new, .. } => {
                        self.rekeys += 1;
                        self.children[i].push(new.spi_in)
                    }
                    _ => {}
                }
            }
        }
        for ep in &self.eps {
            ep.check_index();
        }
    }

    fn deliver(&mut self, n: usize, keep: bool) {
        let (from, to, t) = if keep {
            self.net[n].clone()
        } else {
            self.net.swap_remove(n)
        };
        if t.data == [0xff] {
            return;
        }
        let mut data = &t.data[..];
        if t.remote.port() == 4500 {
            data = &data[4..];
        }
        let src = SocketAddr::new(addr(from as u8 + 1), t.local_port);
        self.eps[to].handle(self.now, data, src, t.remote.port());
    }

    fn step(&mut self, rng: &mut Rng) {
        let host = rng.below(HOSTS.into());
        let other = |rng: &mut Rng| {
            let o = (host + 1 + rng.below(usize::from(HOSTS) - 1)) % usize::from(HOSTS);
            format!("h{}", o + 1)
        };
        // Deliveries most of the time while anything is in flight; some lost, some duplicated.
        let roll = if !self.net.is_empty() && rng.below(100) < 85 {
            0
        } else {
            55 + rng.below(45)
        };
        match roll {
            0..=54 => {
                let n = rng.below(self.net.len());
                match rng.below(20) {
                    0 => {
                        self.net.swap_remove(n);
                    }
                    1 => self.deliver(n, true),
                    _ => self.deliver(n, false),
                }
            }
            // The clock to the next timer of anyone, every endpoint called.
            55..=74 => {
                let next = self.eps.iter().filter_map(Endpoint::poll_timeout).min();
                if let Some(t) = next {
                    self.now = self.now.max(t);
                }
                for ep in &mut self.eps {
                    ep.handle_timeout(self.now);
                }
            }
            // A little time passes; one endpoint called whether due or not.
            75..=84 => {
                self.now += Duration::from_millis(rng.below(3000) as u64);
                self.eps[host].handle_timeout(self.now);
            }
            85..=89 => {
                let p = other(rng);
                self.eps[host].connect(self.now, &p);
            }
            90..=91 => {
                let p = other(rng);
                self.eps[host].delete_peer(self.now, &p);
            }
            92 => {
                // A restart: everything of the old endpoint forgotten; its peers hear INITIAL_CONTACT.
                self.eps[host] = endpoint(host as u8 + 1);
                self.children[host].clear();
                let p = other(rng);
                self.eps[host].connect(self.now, &p);
            }
            93 => {
                let peers = self.eps[host].peers().to_vec();
                self.eps[host].set_peers(self.now, peers);
            }
            94..=96 if !self.children[host].is_empty() => {
                let c = self.children[host][rng.below(self.children[host].len())];
                self.eps[host].rekey_child_now(self.now, c);
            }
            _ => {
                // Both ends initiate at once: duplicate IKE SAs, resolved after the grace.
                let o = (host + 1 + rng.below(usize::from(HOSTS) - 1)) % usize::from(HOSTS);
                self.eps[host].connect(self.now, &format!("h{}", o + 1));
                self.eps[o].connect(self.now, &format!("h{}", host + 1));
            }
        }
        self.drain();
    }
}

/// See the module documentation. About 30 seeds of 600 steps each.
#[test]
fn index_matches_a_full_scan_over_random_event_sequences() {
    let mut established = 0;
    let mut events = 0;
    let (mut ike_up, mut rekeys) = (0, 0);
    for seed in 1..=30u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut mesh = Mesh {
            eps: (1..=HOSTS).map(endpoint).collect(),
            now: Instant::now(),
            net: Vec::new(),
            children: vec![Vec::new(); HOSTS.into()],
            events: 0,
            ike_up: 0,
            rekeys: 0,
        };
        for (i, ep) in mesh.eps.iter_mut().enumerate() {
            for r in (i + 2)..=usize::from(HOSTS) {
                ep.connect(mesh.now, &format!("h{r}"));
            }
        }
        mesh.drain();
        for _ in 0..600 {
            mesh.step(&mut rng);
        }
        established += mesh
            .eps
            .iter()
            .map(|ep| {
                ep.status()
                    .iter()
                    .filter(|(_, s)| !s.children.is_empty())
                    .count()
            })
            .sum::<usize>();
        events += mesh.events;
        ike_up += mesh.ike_up;
        rekeys += mesh.rekeys;
    }
    // The sequences did exercise the endpoints (not all lost in the first exchange).
    assert!(events > 5000, "only {events} events");
    assert!(ike_up > 1000, "only {ike_up} IKE SAs up");
    assert!(rekeys > 100, "only {rekeys} rekeys");
    assert!(established > 30, "only {established} SAs up at the ends");
    eprintln!(
        "{events} events, {ike_up} IKE SAs up, {rekeys} rekeys, {established} up at the ends"
    );
}
