//! What the phases and the standing of an IKE SA hold, along one handshake between two SAs driven by hand
//! (the exchanges themselves are tested end to end by tests/pair.rs).

use super::*;
use crate::config::{id_from_addr, Lifetimes, Retransmit, DEFAULT_FRAGMENT_SIZE};

const A: &str = "198.18.0.1";
const B: &str = "198.18.0.2";

fn peer(name: &str, local: &str, remote: &str) -> Arc<PeerConfig> {
    let (l, r): (std::net::IpAddr, std::net::IpAddr) =
        (local.parse().unwrap(), remote.parse().unwrap());
    let ts = |s: &str| TrafficSelector::from_prefix(s.parse().unwrap(), 24);
    Arc::new(PeerConfig {
        name: name.into(),
        local_addr: l,
        remote_addr: r,
        remote_port: IKE_PORT,
        local_id: id_from_addr(l),
        remote_id: id_from_addr(r),
        auth: AuthMethod::Psk(zeroize::Zeroizing::new(
            b"a shared secret of some length".to_vec(),
        )),
        ike_proposals: vec![ProposalSpec::ike("aes128gcm16-prfsha256-x25519").unwrap()],
        esp_proposals: vec![ProposalSpec::esp("aes128gcm16").unwrap()],
        local_ts: vec![ts(if name == "b" {
            "198.19.1.0"
        } else {
            "198.19.2.0"
        })],
        remote_ts: vec![ts(if name == "b" {
            "198.19.2.0"
        } else {
            "198.19.1.0"
        })],
        force_encap: false,
        udp_with_vmsecd: false,
        retransmit: Retransmit::default(),
        lifetimes: Lifetimes {
            ike_rekey: Duration::from_secs(100_000),
            ike_lifetime: Duration::ZERO,
            child_rekey: Duration::from_secs(3600),
            jitter: Duration::ZERO,
            dpd_delay: Duration::from_secs(30),
            nat_keepalive: Duration::from_secs(20),
        },
        replay_window: 1024,
        fragment_size: DEFAULT_FRAGMENT_SIZE,
    })
}

fn addr(s: &str) -> SocketAddr {
    SocketAddr::new(s.parse().unwrap(), IKE_PORT)
}

/// Delivers every datagram `from` queued to `to`.
fn deliver(now: Instant, from: &mut IkeSa, from_addr: &str, to: &mut IkeSa) {
    while let Some(t) = from.poll_transmit() {
        to.handle(now, &t.data, addr(from_addr), t.local_port);
    }
}

fn phase(sa: &IkeSa) -> &'static str {
    match sa.phase {
        Phase::Void => "void",
        Phase::Init(_) => "init",
        Phase::Auth(_) => "auth",
        Phase::Keyed(_) => "keyed",
    }
}

/// Each phase holds only what it needs: the initiator's key share until IKE_SA_INIT is answered, the IKE_SA_INIT
/// messages until IKE_AUTH is done, then the keys alone; both SAs end current and established.
#[test]
fn handshake_data_lives_only_as_long_as_the_handshake() {
    let now = Instant::now();
    let mut a = IkeSa::initiate(peer("b", A, B), now);
    assert_eq!((a.state(), phase(&a)), (State::InitSent, "init"));
    assert!(a.keys().is_none(), "no keys before IKE_SA_INIT is answered");
    let request = a.poll_transmit().unwrap();
    let Some(InitOutcome::Created(mut b)) =
        IkeSa::respond_init(peer("a", B, A), now, &request.data, addr(A))
    else {
        panic!("B answers IKE_SA_INIT");
    };
    assert_eq!((b.state(), phase(&b)), (State::AwaitingAuth, "auth"));
    deliver(now, &mut b, B, &mut a);
    assert_eq!((a.state(), phase(&a)), (State::AuthSent, "auth"));
    assert!(a.keys().is_some());
    deliver(now, &mut a, A, &mut b);
    assert_eq!((b.state(), phase(&b)), (State::Established, "keyed"));
    deliver(now, &mut b, B, &mut a);
    assert_eq!((a.state(), phase(&a)), (State::Established, "keyed"));
    for sa in [&a, &b] {
        assert_eq!(sa.standing, Standing::Current);
        assert!(!sa.is_superseded());
        assert_eq!(sa.children.len(), 1, "the first Child SA came up");
    }
}

/// A initiating to B, and B's SA created by A's IKE_SA_INIT request (its answer not yet sent).
fn init_answered(now: Instant) -> (IkeSa, Box<IkeSa>) {
    let mut a = IkeSa::initiate(peer("b", A, B), now);
    let request = a.poll_transmit().unwrap();
    let Some(InitOutcome::Created(b)) =
        IkeSa::respond_init(peer("a", B, A), now, &request.data, addr(A))
    else {
        panic!("B answers IKE_SA_INIT");
    };
    (a, b)
}

/// A half-open SA given up ends without a word about the peer (it never authenticated).
#[test]
fn half_open_sa_ends_unreported() {
    let now = Instant::now();
    let (_a, mut b) = init_answered(now);
    while b.poll_transmit().is_some() {}
    let later = now + HALF_OPEN_TIMEOUT;
    assert_eq!(b.poll_timeout(), Some(later));
    b.handle_timeout(later);
    assert_eq!(b.state(), State::Closed);
    assert!(b.poll_event().is_none(), "nothing reported");
}

/// An established pair of SAs, A the initiator.
fn established(now: Instant) -> (IkeSa, IkeSa) {
    let (mut a, mut b) = init_answered(now);
    deliver(now, &mut b, B, &mut a);
    deliver(now, &mut a, A, &mut b);
    deliver(now, &mut b, B, &mut a);
    assert_eq!(
        (a.state(), b.state()),
        (State::Established, State::Established)
    );
    while a.poll_event().is_some() {}
    while b.poll_event().is_some() {}
    (a, *b)
}

/// Message IDs at the end of their 32 bits: the peer's request with ID 2^32-1 made `peer_next_id` overflow (a
/// panic where overflow is checked, a wrap to 0 elsewhere, after which the peer's oldest requests would have
/// been taken afresh); our own request with that ID did the same to `next_id`. A peer can send that many in
/// hours (liveness checks are not rate-limited, and a peer that refuses our IKE SA rekeys keeps the counters).
/// Now the request is answered and the IKE SA deleted, and we never send that ID: the SA is closed first.
//= https://www.rfc-editor.org/rfc/rfc7296#section-2.2
//# In the unlikely event that Message IDs grow too large to fit in 32 bits, the IKE SA MUST be closed or
//# rekeyed.
#[test]
fn message_ids_at_the_end_of_32_bits_close_the_ike_sa() {
    let now = Instant::now();
    let (mut a, mut b) = established(now);
    b.peer_next_id = u32::MAX;
    let last = a
        .protect(a.header(ExchangeType::INFORMATIONAL, false, u32::MAX), &[])
        .unwrap();
    b.handle(now, &last[0], addr(A), IKE_PORT);
    let sent: Vec<Transmit> = std::iter::from_fn(|| b.poll_transmit()).collect();
    assert_eq!(sent.len(), 2, "the answer, then the delete");
    assert_eq!(b.state(), State::Deleting);
    // Ours: the ID before the last is the last we send.
    a.next_id = u32::MAX;
    a.check_liveness(now);
    assert!(a.poll_transmit().is_none());
    assert_eq!(a.state(), State::Closed);
}
