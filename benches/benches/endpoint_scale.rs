//! What one IKE event costs an endpoint holding N established IKE SAs (issue 14: "per-packet and per-IKE-message
//! cost independent of the number of peers"). One `ike::endpoint::Endpoint` (A) with N peers, each peer a
//! one-SA endpoint of its own, all handshakes done in the setup, no IO. Measured, at N = 10, 100 and 1000:
//!
//! - `liveness/N`: one INFORMATIONAL liveness exchange started by one peer: the peer's timer fires, A handles the
//!   request and answers, the peer handles the answer. The peer's side costs the same at every N, so what grows
//!   with N is A's per-message work.
//! - `timer/N`: A's `poll_timeout` followed by a `handle_timeout` with nothing due (what a daemon's loop does when
//!   it wakes up for anything else).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ike::config::{id_from_addr, AuthMethod, Lifetimes, PeerConfig, Retransmit};
use ike::endpoint::Endpoint;
use ike::event::Event;
use ike::message::TrafficSelector;
use ike::proposal::ProposalSpec;
use zeroize::Zeroizing;

/// Long enough never to come up while measuring.
const NEVER: Duration = Duration::from_secs(1_000_000_000);
/// The liveness check interval of the peers (A's is `NEVER`).
const DPD: Duration = Duration::from_secs(10);

fn addr(i: usize) -> IpAddr {
    // A is 198.18.0.1; peers from 198.18.0.2 on.
    let n = i + 1;
    IpAddr::from([198, 18, (n / 250) as u8, (n % 250) as u8 + 1])
}

fn net(i: usize) -> TrafficSelector {
    TrafficSelector::from_prefix(
        IpAddr::from([198, 19, (i / 250) as u8, (i % 250) as u8]),
        32,
    )
}

fn peer(name: String, local: usize, remote: usize, dpd: Duration) -> Arc<PeerConfig> {
    let (l, r) = (addr(local), addr(remote));
    Arc::new(PeerConfig {
        name,
        local_addr: l,
        remote_addr: r,
        remote_port: 500,
        local_id: id_from_addr(l),
        remote_id: id_from_addr(r),
        auth: AuthMethod::Psk(Zeroizing::new(b"a shared secret of some length".to_vec())),
        ike_proposals: vec![ProposalSpec::ike("aes128gcm16-prfsha256-x25519").unwrap()],
        esp_proposals: vec![ProposalSpec::esp("aes128gcm16").unwrap()],
        local_ts: vec![net(local)],
        remote_ts: vec![net(remote)],
        force_encap: false,
        udp_with_vmsecd: false,
        retransmit: Retransmit::default(),
        lifetimes: Lifetimes {
            ike_rekey: NEVER,
            ike_lifetime: Duration::ZERO,
            child_rekey: NEVER,
            jitter: Duration::ZERO,
            dpd_delay: dpd,
            nat_keepalive: Duration::from_secs(20),
        },
        replay_window: 1024,
        fragment_size: ike::config::DEFAULT_FRAGMENT_SIZE,
    })
}

/// A with `n` established IKE SAs, and its peers (peer `i` is host `i + 1`).
struct Star {
    a: Endpoint,
    peers: Vec<Endpoint>,
    now: Instant,
}

impl Star {
    fn new(n: usize) -> Star {
        let a = Endpoint::new(
            (1..=n)
                .map(|i| peer(format!("p{i}"), 0, i, NEVER))
                .collect(),
        );
        let peers = (1..=n)
            .map(|i| Endpoint::new(vec![peer("a".into(), i, 0, DPD)]))
            .collect();
        let mut s = Star {
            a,
            peers,
            now: Instant::now(),
        };
        for i in 0..n {
            // A initiates: A's answer limits (IKE_SA_INIT requests per second) stay out of the setup.
            s.a.connect(s.now, &format!("p{}", i + 1)).unwrap();
            let (ups, _) = s.pump(i);
            assert_eq!(ups, 2, "peer {i} and A have the Child SA");
        }
        assert_eq!(s.a.status().len(), n);
        assert_eq!(
            s.liveness(0),
            2,
            "a liveness check is one request and its answer"
        );
        s
    }

    /// Passes datagrams between A and peer `i` until both are quiet; the Child SAs that came up, and the
    /// datagrams passed.
    fn pump(&mut self, i: usize) -> (usize, usize) {
        let (from_a, from_p) = (
            SocketAddr::new(addr(0), 500),
            SocketAddr::new(addr(i + 1), 500),
        );
        let (mut ups, mut passed) = (0, 0);
        loop {
            let mut moved = false;
            while let Some(t) = self.peers[i].poll_transmit() {
                moved = true;
                passed += 1;
                self.a.handle(
                    self.now,
                    strip(&t.data, t.remote.port()),
                    from_p,
                    t.remote.port(),
                );
            }
            while let Some(t) = self.a.poll_transmit() {
                moved = true;
                passed += 1;
                assert_eq!(t.remote.ip(), addr(i + 1));
                self.peers[i].handle(
                    self.now,
                    strip(&t.data, t.remote.port()),
                    from_a,
                    t.remote.port(),
                );
            }
            while let Some(e) = self.a.poll_event().or_else(|| self.peers[i].poll_event()) {
                if matches!(e, Event::ChildUp(_)) {
                    ups += 1;
                }
            }
            if !moved {
                return (ups, passed);
            }
        }
    }

    /// One liveness exchange started by peer `i`; the datagrams passed.
    fn liveness(&mut self, i: usize) -> usize {
        let due = self.peers[i].poll_timeout().unwrap();
        self.now = self.now.max(due);
        self.peers[i].handle_timeout(self.now);
        self.pump(i).1
    }
}

fn strip(data: &[u8], port: u16) -> &[u8] {
    if port == 4500 {
        &data[4..]
    } else {
        data
    }
}

fn bench_scale(c: &mut Criterion) {
    let mut g = c.benchmark_group("endpoint_scale");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);
    for n in [10, 100, 1000] {
        let mut star = Star::new(n);
        let mut k = 0;
        g.bench_function(format!("liveness/{n}"), |b| {
            b.iter(|| {
                // A different peer each time, so that no peer's SA stays hot in the cache.
                k = (k + 7) % n;
                star.liveness(k)
            })
        });
        let a = &mut star.a;
        let now = star.now;
        g.bench_function(format!("timer/{n}"), |b| {
            b.iter(|| {
                let next = a.poll_timeout();
                a.handle_timeout(now);
                next
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_scale);
criterion_main!(benches);
