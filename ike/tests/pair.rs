//! Two IKE endpoints talking through an in-memory network with a controlled clock (quinn-proto's `Pair`).
//!
//! Every path of the state machine that depends on time or loss runs here in microseconds and never flakes:
//! the clock only moves when the test says so or when both sides are idle until their next timer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ike::config::{id_from_addr, AuthMethod, Lifetimes, PeerConfig, Retransmit};
use ike::endpoint::Endpoint;
use ike::event::{ChildSaInfo, Event, Reason, Transmit};
use ike::message::TrafficSelector;
use ike::proposal::ProposalSpec;
use zeroize::Zeroizing;

const A: &str = "198.18.0.1";
const B: &str = "198.18.0.2";

fn ts(s: &str) -> TrafficSelector {
    let (a, l) = s.split_once('/').unwrap();
    TrafficSelector::from_prefix(a.parse().unwrap(), l.parse().unwrap())
}

fn peer(name: &str, local: &str, remote: &str, local_net: &str, remote_net: &str) -> PeerConfig {
    let (l, r): (IpAddr, IpAddr) = (local.parse().unwrap(), remote.parse().unwrap());
    PeerConfig {
        name: name.into(),
        local_addr: l,
        remote_addr: r,
        remote_port: 500,
        local_id: id_from_addr(l),
        remote_id: id_from_addr(r),
        auth: AuthMethod::Psk(Zeroizing::new(b"a shared secret of some length".to_vec())),
        ike_proposals: vec![ProposalSpec::ike("aes128gcm16-prfsha256-x25519").unwrap()],
        esp_proposals: vec![ProposalSpec::esp("aes128gcm16").unwrap()],
        local_ts: vec![ts(local_net)],
        remote_ts: vec![ts(remote_net)],
        force_encap: false,
        retransmit: Retransmit::default(),
        lifetimes: Lifetimes {
            ike_rekey: Duration::from_secs(100_000),
            child_rekey: Duration::from_secs(3600),
            jitter: Duration::ZERO,
            dpd_delay: Duration::from_secs(30),
        },
        replay_window: 1024,
    }
}

/// Config of A (towards B) and of B (towards A).
fn configs() -> (PeerConfig, PeerConfig) {
    (
        peer("b", A, B, "198.19.1.0/24", "198.19.2.0/24"),
        peer("a", B, A, "198.19.2.0/24", "198.19.1.0/24"),
    )
}

type Filter = Box<dyn FnMut(bool, &Transmit) -> bool>;

struct Pair {
    a: Endpoint,
    b: Endpoint,
    now: Instant,
    /// Return false to drop a datagram; the bool is true for A→B.
    filter: Filter,
    ev_a: Vec<Event>,
    ev_b: Vec<Event>,
    /// Datagrams delivered, per direction (A→B, B→A).
    delivered: (usize, usize),
    log: Vec<(bool, Transmit)>,
}

impl Pair {
    fn new(a: PeerConfig, b: PeerConfig) -> Pair {
        Pair {
            a: Endpoint::new(vec![Arc::new(a)]),
            b: Endpoint::new(vec![Arc::new(b)]),
            now: Instant::now(),
            filter: Box::new(|_, _| true),
            ev_a: Vec::new(),
            ev_b: Vec::new(),
            delivered: (0, 0),
            log: Vec::new(),
        }
    }

    /// Delivers queued datagrams until both sides are quiet.
    fn drive(&mut self) {
        loop {
            let mut moved = false;
            while let Some(t) = self.a.poll_transmit() {
                moved = true;
                self.deliver(true, t);
            }
            while let Some(t) = self.b.poll_transmit() {
                moved = true;
                self.deliver(false, t);
            }
            while let Some(e) = self.a.poll_event() {
                self.ev_a.push(e);
            }
            while let Some(e) = self.b.poll_event() {
                self.ev_b.push(e);
            }
            if !moved {
                break;
            }
        }
    }

    fn deliver(&mut self, from_a: bool, t: Transmit) {
        self.log.push((from_a, t.clone()));
        if !(self.filter)(from_a, &t) {
            return;
        }
        let src: IpAddr = if from_a {
            A.parse().unwrap()
        } else {
            B.parse().unwrap()
        };
        let from = SocketAddr::new(src, t.local_port);
        let mut data = &t.data[..];
        if t.remote.port() == 4500 {
            assert_eq!(
                &data[..4],
                &[0, 0, 0, 0],
                "IKE on 4500 carries the non-ESP marker"
            );
            data = &data[4..];
        }
        let to = if from_a { &mut self.b } else { &mut self.a };
        to.handle(self.now, data, from, t.remote.port());
        if from_a {
            self.delivered.0 += 1;
        } else {
            self.delivered.1 += 1;
        }
    }

    /// Moves the clock to the next timer of either side (at most `limit` ahead) and runs it.
    fn advance(&mut self, limit: Duration) -> bool {
        let next = [self.a.poll_timeout(), self.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        match next {
            Some(t) if t <= self.now + limit => {
                self.now = self.now.max(t);
                self.a.handle_timeout(self.now);
                self.b.handle_timeout(self.now);
                self.drive();
                true
            }
            _ => false,
        }
    }

    /// Runs until quiet for `span` of virtual time.
    fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        self.drive();
        while self.now < end && self.advance(end - self.now) {}
        self.now = self.now.max(end);
    }

    fn connect(&mut self) {
        self.a.connect(self.now, "b").unwrap();
        self.drive();
    }
}

fn child_ups(ev: &[Event]) -> Vec<ChildSaInfo> {
    ev.iter()
        .filter_map(|e| {
            if let Event::ChildUp(c) = e {
                Some((**c).clone())
            } else {
                None
            }
        })
        .collect()
}

fn downs(ev: &[Event]) -> Vec<Reason> {
    ev.iter()
        .filter_map(|e| {
            if let Event::IkeDown { reason, .. } = e {
                Some(reason.clone())
            } else {
                None
            }
        })
        .collect()
}

fn assert_pair_matches(x: &ChildSaInfo, y: &ChildSaInfo) {
    assert_eq!((x.spi_in, x.spi_out), (y.spi_out, y.spi_in));
    assert_eq!(x.transform, y.transform);
    // The keys agree: a packet one side seals the other opens.
    let p = esp::SaParams::new(x.spi_out, x.transform, x.esn);
    let mut out = esp::OutboundSa::new(p, &x.keys_out).unwrap();
    let mut inb = esp::InboundSa::new(p, &y.keys_in).unwrap();
    let mut buf = vec![0u8; 256];
    buf[esp::HEADROOM] = 0x45;
    let mut pkt = esp::PacketBuf::new(&mut buf, esp::HEADROOM, esp::HEADROOM + 40);
    out.encap(&mut pkt).unwrap();
    inb.decap(&mut pkt)
        .expect("keys derived on both sides agree");
}

#[test]
fn psk_handshake_brings_up_matching_child_sas() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.connect();
    let (ca, cb) = (child_ups(&p.ev_a), child_ups(&p.ev_b));
    assert_eq!(
        (ca.len(), cb.len()),
        (1, 1),
        "a: {:?}\nb: {:?}",
        p.ev_a,
        p.ev_b
    );
    assert_pair_matches(&ca[0], &cb[0]);
    assert_pair_matches(&cb[0], &ca[0]);
    assert_eq!(ca[0].ts_local, vec![ts("198.19.1.0/24")]);
    assert_eq!(ca[0].ts_remote, vec![ts("198.19.2.0/24")]);
    assert_eq!(cb[0].ts_local, vec![ts("198.19.2.0/24")]);
    assert!(!ca[0].udp_encap);
    // IKE_SA_INIT and IKE_AUTH: two requests, two responses.
    assert_eq!(p.delivered, (2, 2));
}

#[test]
fn every_ike_and_esp_suite_negotiates() {
    for (ike, esp) in [
        ("aes128gcm16-prfsha256-x25519", "aes128gcm16"),
        ("aes256gcm16-prfsha384-ecp384", "aes256gcm16-esn"),
        ("chacha20poly1305-prfsha256-x25519", "chacha20poly1305"),
        ("aes256-sha256-modp2048", "aes256-sha256"),
        ("aes128-sha512-ecp256", "aes128-sha256"),
        ("aes256gcm16-prfsha512-modp3072", "aes256gcm16"),
    ] {
        let (mut a, mut b) = configs();
        for c in [&mut a, &mut b] {
            c.ike_proposals = vec![ProposalSpec::ike(ike).unwrap()];
            c.esp_proposals = vec![ProposalSpec::esp(esp).unwrap()];
        }
        let mut p = Pair::new(a, b);
        p.connect();
        let (ca, cb) = (child_ups(&p.ev_a), child_ups(&p.ev_b));
        assert_eq!(
            (ca.len(), cb.len()),
            (1, 1),
            "{ike} / {esp}: {:?} {:?}",
            p.ev_a,
            p.ev_b
        );
        assert_pair_matches(&ca[0], &cb[0]);
        assert_eq!(ca[0].esn, esp.ends_with("-esn"));
    }
}

#[test]
fn wrong_psk_fails_on_both_sides_without_child_sa() {
    let (a, mut b) = configs();
    b.auth = AuthMethod::Psk(Zeroizing::new(b"another secret entirely, longer".to_vec()));
    let mut p = Pair::new(a, b);
    p.connect();
    assert!(child_ups(&p.ev_a).is_empty() && child_ups(&p.ev_b).is_empty());
    assert!(
        matches!(downs(&p.ev_b)[..], [Reason::AuthenticationFailed(_)]),
        "{:?}",
        p.ev_b
    );
    assert!(
        matches!(downs(&p.ev_a)[..], [Reason::AuthenticationFailed(_)]),
        "{:?}",
        p.ev_a
    );
    assert!(!p.a.has_sa("b") && !p.b.has_sa("a"));
}

#[test]
fn no_common_proposal_names_both_sides() {
    let (a, mut b) = configs();
    b.ike_proposals = vec![ProposalSpec::ike("aes256gcm16-prfsha384-ecp384").unwrap()];
    let mut p = Pair::new(a, b);
    p.connect();
    let da = downs(&p.ev_a);
    assert!(
        matches!(&da[..], [Reason::NoProposalChosen { .. }]),
        "{da:?}"
    );
    let db = downs(&p.ev_b);
    match &db[..] {
        [Reason::NoProposalChosen { ours, theirs }] => {
            assert!(ours.contains("aes256gcm16-prfsha384-ecp384"));
            assert!(!theirs.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn disjoint_traffic_selectors_are_refused() {
    let (a, mut b) = configs();
    b.remote_ts = vec![ts("198.19.9.0/24")];
    let mut p = Pair::new(a, b);
    p.connect();
    assert!(child_ups(&p.ev_a).is_empty());
    assert!(
        downs(&p.ev_b)
            .iter()
            .any(|r| matches!(r, Reason::TsUnacceptable(_))),
        "{:?}",
        p.ev_b
    );
    assert!(
        downs(&p.ev_a)
            .iter()
            .any(|r| matches!(r, Reason::TsUnacceptable(_))),
        "{:?}",
        p.ev_a
    );
}

/// IKE header: exchange type at byte 18, flags at 19 (0x20: response).
fn is_request(t: &Transmit, exchange: u8) -> bool {
    let d = if t.remote.port() == 4500 {
        &t.data[4..]
    } else {
        &t.data[..]
    };
    d.len() >= 28 && d[18] == exchange && d[19] & 0x20 == 0
}

/// strongSwan keeps its IKE SA when the responder refuses the Child SA in IKE_AUTH ("failed to establish
/// CHILD_SA, keeping IKE_SA"): a responder that forgot its side silently left the initiator with an IKE SA
/// nobody answers. The refusing responder deletes the IKE SA instead, each side reports the refusal once, and
/// nothing is left on either side.
#[test]
fn responder_refusing_the_child_sa_deletes_the_ike_sa() {
    for (what, tweak) in [
        (
            "selectors",
            Box::new(|b: &mut PeerConfig| b.remote_ts = vec![ts("198.19.9.0/24")])
                as Box<dyn Fn(&mut PeerConfig)>,
        ),
        (
            "ESP proposal",
            Box::new(|b: &mut PeerConfig| {
                b.esp_proposals = vec![ProposalSpec::esp("aes256gcm16").unwrap()]
            }),
        ),
    ] {
        let (a, mut b) = configs();
        tweak(&mut b);
        let mut p = Pair::new(a, b);
        // A stands for an initiator that keeps its IKE SA: its own delete is lost.
        p.filter = Box::new(|from_a, t| !(from_a && is_request(t, 37)));
        p.connect();
        p.run_for(Duration::from_secs(1));
        // B sent, after its IKE_AUTH response, an INFORMATIONAL request (the delete), and A answered it.
        assert!(
            p.log.iter().any(|(from_a, t)| !from_a && is_request(t, 37)),
            "{what}: the responder deletes the IKE SA"
        );
        assert!(
            p.a.is_idle() && p.b.is_idle(),
            "{what}: no IKE SA is left on either side"
        );
        let (da, db) = (downs(&p.ev_a), downs(&p.ev_b));
        assert_eq!(
            (da.len(), db.len()),
            (1, 1),
            "{what}: one IkeDown each: {da:?} {db:?}"
        );
        let refused = |r: &Reason| {
            matches!(
                r,
                Reason::TsUnacceptable(_) | Reason::NoProposalChosen { .. }
            )
        };
        assert!(refused(&da[0]) && refused(&db[0]), "{what}: {da:?} {db:?}");
    }
}

#[test]
fn wider_proposal_is_narrowed_by_the_responder() {
    let (mut a, b) = configs();
    a.remote_ts = vec![ts("198.19.0.0/16")];
    let mut p = Pair::new(a, b);
    p.connect();
    let ca = child_ups(&p.ev_a);
    assert_eq!(ca.len(), 1, "{:?}", p.ev_a);
    assert_eq!(
        ca[0].ts_remote,
        vec![ts("198.19.2.0/24")],
        "narrowed to B's subnet"
    );
}

#[test]
fn lost_messages_are_retransmitted_with_backoff() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    // Drop the first two IKE_SA_INIT requests and the first IKE_AUTH response.
    let mut a_sent = 0;
    let mut b_sent = 0;
    p.filter = Box::new(move |from_a, _| {
        if from_a {
            a_sent += 1;
            a_sent > 2
        } else {
            b_sent += 1;
            b_sent != 2
        }
    });
    let t0 = p.now;
    p.connect();
    // 4 s + 7.2 s for the lost requests, 4 s for the lost response; short of the first liveness check (30 s).
    p.run_for(Duration::from_secs(20));
    assert_eq!(child_ups(&p.ev_a).len(), 1, "{:?}", p.ev_a);
    assert_eq!(child_ups(&p.ev_b).len(), 1);
    // A's datagrams: init, init (4 s), init (4+7.2 s), auth, auth retransmit.
    let sent_a: Vec<_> = p.log.iter().filter(|(a, _)| *a).collect();
    assert_eq!(sent_a.len(), 5, "{:?}", sent_a.len());
    assert!(p.now - t0 >= Duration::from_secs(11));
    // B answered the retransmitted IKE_AUTH from its cache: only one Child SA on B.
    assert_eq!(child_ups(&p.ev_b).len(), 1);
}

#[test]
fn silent_peer_is_declared_dead_after_the_retransmission_budget() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.filter = Box::new(|from_a, _| !from_a);
    let t0 = p.now;
    p.connect();
    p.run_for(Duration::from_secs(600));
    assert_eq!(downs(&p.ev_a), vec![Reason::PeerDead]);
    let sends = p.log.iter().filter(|(a, _)| *a).count();
    assert_eq!(
        sends,
        Retransmit::default().tries as usize,
        "no busy loop: exactly the budgeted sends"
    );
    let gave_up = p.now - t0;
    assert!(
        gave_up >= Duration::from_secs(160) && gave_up <= Duration::from_secs(600),
        "{gave_up:?}"
    );
}

#[test]
fn invalid_ke_payload_retries_with_the_peers_group() {
    let (mut a, mut b) = configs();
    a.ike_proposals = vec![ProposalSpec::ike("aes128gcm16-prfsha256-x25519-ecp256").unwrap()];
    b.ike_proposals = vec![ProposalSpec::ike("aes128gcm16-prfsha256-ecp256").unwrap()];
    let mut p = Pair::new(a, b);
    p.connect();
    assert_eq!(child_ups(&p.ev_a).len(), 1, "{:?}", p.ev_a);
    // init (x25519) -> INVALID_KE(19) -> init (ecp256) -> response, then IKE_AUTH.
    assert_eq!(p.delivered, (3, 3));
    let up = p.ev_a.iter().find_map(|e| {
        if let Event::IkeUp { algorithms, .. } = e {
            Some(algorithms.clone())
        } else {
            None
        }
    });
    assert!(up.unwrap().contains("ECP_256"));
}

#[test]
fn cookie_is_demanded_under_load_and_honoured() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.b.set_cookie_threshold(0);
    p.connect();
    assert_eq!(child_ups(&p.ev_a).len(), 1, "{:?}", p.ev_a);
    assert_eq!(
        p.delivered,
        (3, 3),
        "init, COOKIE, init with cookie, response, auth"
    );
}

#[test]
fn child_sa_rekeys_make_before_break() {
    let (mut a, mut b) = configs();
    a.lifetimes.child_rekey = Duration::from_secs(100);
    b.lifetimes.child_rekey = Duration::from_secs(10_000);
    let mut p = Pair::new(a, b);
    p.connect();
    let first = child_ups(&p.ev_a)[0].clone();
    p.run_for(Duration::from_secs(350));
    let rekeyed_a: Vec<_> = p
        .ev_a
        .iter()
        .filter_map(|e| {
            if let Event::ChildRekeyed {
                old_spi_in, new, ..
            } = e
            {
                Some((*old_spi_in, (**new).clone()))
            } else {
                None
            }
        })
        .collect();
    let rekeyed_b: Vec<_> = p
        .ev_b
        .iter()
        .filter_map(|e| {
            if let Event::ChildRekeyed {
                old_spi_in, new, ..
            } = e
            {
                Some((*old_spi_in, (**new).clone()))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        rekeyed_a.len(),
        3,
        "three rekeys in 350 s at 100 s: {:?}",
        p.ev_a
    );
    assert_eq!(rekeyed_b.len(), 3);
    assert_eq!(rekeyed_a[0].0, first.spi_in);
    for (x, y) in rekeyed_a.iter().zip(&rekeyed_b) {
        assert_pair_matches(&x.1, &y.1);
    }
    // Each old SA is deleted on both sides after its successor exists.
    let down_a = p
        .ev_a
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::ChildDown {
                    reason: Reason::Rekeyed,
                    ..
                }
            )
        })
        .count();
    let down_b = p
        .ev_b
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::ChildDown {
                    reason: Reason::Rekeyed,
                    ..
                }
            )
        })
        .count();
    assert_eq!((down_a, down_b), (3, 3), "{:?}", p.ev_b);
    let pos_new = p
        .ev_a
        .iter()
        .position(|e| matches!(e, Event::ChildRekeyed { .. }))
        .unwrap();
    let pos_old = p
        .ev_a
        .iter()
        .position(|e| matches!(e, Event::ChildDown { .. }))
        .unwrap();
    assert!(pos_new < pos_old, "make before break");
}

/// The side that answered a rekey must not send on the new pair before the initiator can receive on it (the
/// initiator installs its new inbound SA only once it has our response: strongSwan does so), so the event says
/// who initiated; and the responder learns that the initiator is ready from its delete of the old pair, which
/// comes after the rekey.
#[test]
fn child_rekey_event_tells_who_initiated() {
    let (mut a, mut b) = configs();
    a.lifetimes.child_rekey = Duration::from_secs(100);
    b.lifetimes.child_rekey = Duration::from_secs(10_000);
    let mut p = Pair::new(a, b);
    p.connect();
    p.run_for(Duration::from_secs(150));
    let flags = |ev: &[Event]| -> Vec<bool> {
        ev.iter()
            .filter_map(|e| match e {
                Event::ChildRekeyed { we_initiated, .. } => Some(*we_initiated),
                _ => None,
            })
            .collect()
    };
    assert_eq!(flags(&p.ev_a), vec![true], "{:?}", p.ev_a);
    assert_eq!(flags(&p.ev_b), vec![false], "{:?}", p.ev_b);
    let rekeyed = p
        .ev_b
        .iter()
        .position(|e| matches!(e, Event::ChildRekeyed { .. }))
        .unwrap();
    let old_gone = p
        .ev_b
        .iter()
        .position(|e| {
            matches!(
                e,
                Event::ChildDown {
                    reason: Reason::Rekeyed,
                    ..
                }
            )
        })
        .expect("the initiator deletes the old pair");
    assert!(rekeyed < old_gone);
}

#[test]
fn child_rekey_with_pfs() {
    let (mut a, mut b) = configs();
    a.esp_proposals = vec![ProposalSpec::esp("aes256gcm16-ecp384").unwrap()];
    b.esp_proposals = vec![ProposalSpec::esp("aes256gcm16-ecp384").unwrap()];
    a.lifetimes.child_rekey = Duration::from_secs(100);
    let mut p = Pair::new(a, b);
    p.connect();
    p.run_for(Duration::from_secs(150));
    let news: Vec<_> = p
        .ev_b
        .iter()
        .filter_map(|e| {
            if let Event::ChildRekeyed { new, .. } = e {
                Some(new.pfs_group)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(news, vec![Some(20)], "{:?}", p.ev_b);
}

#[test]
fn delete_reaches_the_peer() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.connect();
    p.a.delete_all(p.now);
    p.drive();
    assert_eq!(downs(&p.ev_b), vec![Reason::DeletedByPeer]);
    assert_eq!(downs(&p.ev_a), vec![Reason::DeletedByUs]);
    assert!(p.ev_b.iter().any(|e| matches!(
        e,
        Event::ChildDown {
            reason: Reason::DeletedByPeer,
            ..
        }
    )));
    assert!(p.a.is_idle() && p.b.is_idle());
}

#[test]
fn liveness_checks_after_idle_and_dead_peer_detection() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.connect();
    let before = p.delivered;
    p.run_for(Duration::from_secs(31));
    assert!(
        p.delivered.0 > before.0 || p.delivered.1 > before.1,
        "a liveness check was exchanged"
    );
    assert!(downs(&p.ev_a).is_empty() && downs(&p.ev_b).is_empty());
    // Now B vanishes.
    p.filter = Box::new(|from_a, _| !from_a);
    p.run_for(Duration::from_secs(400));
    assert_eq!(downs(&p.ev_a), vec![Reason::PeerDead]);
    assert!(p.ev_a.iter().any(|e| matches!(
        e,
        Event::ChildDown {
            reason: Reason::PeerDead,
            ..
        }
    )));
}

#[test]
fn forced_udp_encapsulation_moves_to_port_4500() {
    let (mut a, b) = configs();
    a.force_encap = true;
    let mut p = Pair::new(a, b);
    p.connect();
    let ca = child_ups(&p.ev_a);
    assert_eq!(ca.len(), 1);
    assert!(ca[0].udp_encap && child_ups(&p.ev_b)[0].udp_encap);
    assert_eq!(ca[0].remote.port(), 4500);
    let auth = &p.log[2];
    assert_eq!((auth.1.local_port, auth.1.remote.port()), (4500, 4500));
}

#[test]
fn garbage_and_replayed_messages_change_nothing() {
    let (a, b) = configs();
    let mut p = Pair::new(a, b);
    p.connect();
    let n_ev = (p.ev_a.len(), p.ev_b.len());
    // Replay every datagram ever sent, and some garbage, at both sides.
    let log = p.log.clone();
    for (from_a, t) in log {
        p.deliver(from_a, t.clone());
        let mut bad = t.data.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        p.deliver(from_a, Transmit { data: bad, ..t });
    }
    p.drive();
    assert_eq!(
        (p.ev_a.len(), p.ev_b.len()),
        n_ev,
        "{:?}",
        &p.ev_b[n_ev.1..]
    );
}

// ---- RSA public key authentication (RFC 7427) ------------------------------------------------------------------

use ike::config::parse_id;
use ike::crypto::signature::{Padding, PrivateKey};

/// One key per size, generated once per test binary (4096-bit generation takes a while).
fn rsa_key(bits: usize, n: usize) -> PrivateKey {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Keys = Mutex<HashMap<(usize, usize), PrivateKey>>;
    static KEYS: OnceLock<Keys> = OnceLock::new();
    let mut keys = KEYS.get_or_init(Keys::default).lock().unwrap();
    keys.entry((bits, n))
        .or_insert_with(|| PrivateKey::generate(bits).unwrap())
        .clone()
}

/// A and B with their own RSA keys, each knowing the other's public key; FQDN and RFC 822 identities.
fn pubkey_configs(bits: usize, padding: Padding) -> (PeerConfig, PeerConfig) {
    let (ka, kb) = (rsa_key(bits, 0), rsa_key(bits, 1));
    let (mut a, mut b) = configs();
    a.auth = AuthMethod::PubKey {
        private: ka.clone(),
        padding,
        peer_public: kb.public_key(),
    };
    b.auth = AuthMethod::PubKey {
        private: kb,
        padding,
        peer_public: ka.public_key(),
    };
    a.local_id = parse_id("a.example.net");
    b.remote_id = a.local_id.clone();
    b.local_id = parse_id("admin@b.example.net");
    a.remote_id = b.local_id.clone();
    (a, b)
}

fn assert_up(p: &Pair) {
    let (ca, cb) = (child_ups(&p.ev_a), child_ups(&p.ev_b));
    assert_eq!(
        (ca.len(), cb.len()),
        (1, 1),
        "a: {:?}\nb: {:?}",
        p.ev_a,
        p.ev_b
    );
    assert_pair_matches(&ca[0], &cb[0]);
}

/// The AUTH method of the IKE_AUTH messages is only visible encrypted; the IKE_SA_INIT messages must carry
/// SIGNATURE_HASH_ALGORITHMS (16431) with SHA2-256/384/512.
fn init_announces_hashes(p: &Pair) -> bool {
    let needle = [0x40, 0x2f, 0, 2, 0, 3, 0, 4];
    p.log
        .iter()
        .filter(|(_, t)| t.data.len() > 18 && t.data[18] == 34)
        .all(|(_, t)| t.data.windows(needle.len()).any(|w| w == needle))
}

#[test]
fn pubkey_handshake_pss_both_roles() {
    let (a, b) = pubkey_configs(2048, Padding::Pss);
    let mut p = Pair::new(a, b);
    p.connect();
    assert_up(&p);
    assert!(init_announces_hashes(&p));
    assert_eq!(p.delivered, (2, 2));

    // B initiates this time.
    let (a, b) = pubkey_configs(2048, Padding::Pss);
    let mut p = Pair::new(a, b);
    p.b.connect(p.now, "a").unwrap();
    p.drive();
    assert_up(&p);
}

#[test]
fn pubkey_handshake_pkcs1_and_mixed_padding() {
    let (a, b) = pubkey_configs(2048, Padding::Pkcs1);
    let mut p = Pair::new(a, b);
    p.connect();
    assert_up(&p);
    // Each side verifies whichever padding the other signs with.
    let (a, mut b) = pubkey_configs(2048, Padding::Pss);
    if let AuthMethod::PubKey { padding, .. } = &mut b.auth {
        *padding = Padding::Pkcs1;
    }
    let mut p = Pair::new(a, b);
    p.connect();
    assert_up(&p);
}

#[test]
fn pubkey_handshake_4096_bit() {
    for padding in [Padding::Pss, Padding::Pkcs1] {
        let (a, b) = pubkey_configs(4096, padding);
        let mut p = Pair::new(a, b);
        p.connect();
        assert_up(&p);
    }
}

#[test]
fn wrong_public_key_fails_with_authentication_failed_and_no_child_sa() {
    // B expects another key than A's: B refuses A (AUTHENTICATION_FAILED), A learns it from B's answer.
    let (a, mut b) = pubkey_configs(2048, Padding::Pss);
    if let AuthMethod::PubKey { peer_public, .. } = &mut b.auth {
        *peer_public = rsa_key(2048, 2).public_key();
    }
    let mut p = Pair::new(a, b);
    p.connect();
    assert!(child_ups(&p.ev_a).is_empty() && child_ups(&p.ev_b).is_empty());
    let (da, db) = (downs(&p.ev_a), downs(&p.ev_b));
    assert!(
        matches!(&db[..], [Reason::AuthenticationFailed(why)] if why.contains("does not verify with the peer's public key")),
        "{db:?}"
    );
    assert!(
        matches!(&da[..], [Reason::AuthenticationFailed(why)] if why.contains("AUTHENTICATION_FAILED")),
        "{da:?}"
    );
    assert!(!p.a.has_sa("b") && !p.b.has_sa("a"));

    // A expects another key than B's: B accepts A, but A refuses B's AUTH in the response.
    let (mut a, b) = pubkey_configs(2048, Padding::Pkcs1);
    if let AuthMethod::PubKey { peer_public, .. } = &mut a.auth {
        *peer_public = rsa_key(2048, 2).public_key();
    }
    let mut p = Pair::new(a, b);
    p.connect();
    p.run_for(Duration::from_secs(10));
    assert!(child_ups(&p.ev_a).is_empty());
    assert!(
        matches!(&downs(&p.ev_a)[..], [Reason::AuthenticationFailed(why)] if why.contains("does not verify")),
        "{:?}",
        p.ev_a
    );
    assert!(!p.a.has_sa("b"));
}

#[test]
fn psk_against_pubkey_is_refused_naming_the_mismatch() {
    for psk_initiates in [true, false] {
        let (a, b) = pubkey_configs(2048, Padding::Pss);
        let (mut psk_a, mut psk_b) = configs();
        (psk_a.local_id, psk_a.remote_id) = (a.local_id.clone(), a.remote_id.clone());
        (psk_b.local_id, psk_b.remote_id) = (b.local_id.clone(), b.remote_id.clone());
        let (a, b) = if psk_initiates {
            (psk_a, b)
        } else {
            (a, psk_b)
        };
        let mut p = Pair::new(a, b);
        p.connect();
        // A half-open responder SA (the initiator gave up before IKE_AUTH) expires on its own.
        p.run_for(Duration::from_secs(300));
        assert!(child_ups(&p.ev_a).is_empty() && child_ups(&p.ev_b).is_empty());
        if psk_initiates {
            // The pubkey responder names the mismatch.
            let db = downs(&p.ev_b);
            assert!(
                matches!(&db[..], [Reason::AuthenticationFailed(why)] if why.contains("authentication method mismatch")),
                "{db:?}"
            );
        } else {
            // The pubkey initiator sees no SIGNATURE_HASH_ALGORITHMS in the PSK responder's IKE_SA_INIT response
            // and stops before IKE_AUTH, saying why.
            let da = downs(&p.ev_a);
            assert!(
                matches!(&da[..], [Reason::AuthenticationFailed(why)] if why.contains("configured for PSK")),
                "{da:?}"
            );
        }
        assert!(!p.a.has_sa("b") && !p.b.has_sa("a"));
    }
}
