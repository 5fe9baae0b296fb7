//! Cost of one full IKEv2 handshake (IKE_SA_INIT + IKE_AUTH with its Child SA) in one process, no IO: two
//! `ike::endpoint::Endpoint`s pass their datagrams to each other until both report the Child SA up. PSK and RSA
//! public key authentication (RSASSA-PSS with SHA2-256, 2048- and 3072-bit keys), with the default suite
//! aes128gcm16-prfsha256-x25519. One iteration is both sides' work: two signatures and two verifications for
//! RSA, so the handshakes per second one core can serve as responder is about twice the result's rate.
//!
//! Next to it, RSA-PSS-SHA256 signing alone with aws-lc-rs (the backend ike uses) and with ring, on the same key.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use ike::config::{id_from_addr, AuthMethod, Lifetimes, PeerConfig, Retransmit};
use ike::crypto::signature::{Padding, PrivateKey};
use ike::endpoint::Endpoint;
use ike::event::Event;
use ike::message::TrafficSelector;
use ike::proposal::ProposalSpec;
use zeroize::Zeroizing;

const A: &str = "198.18.0.1";
const B: &str = "198.18.0.2";

fn peer(name: &str, local: &str, remote: &str, auth: AuthMethod) -> PeerConfig {
    let (l, r): (IpAddr, IpAddr) = (local.parse().unwrap(), remote.parse().unwrap());
    let net = |a: IpAddr| match a {
        IpAddr::V4(v) => {
            TrafficSelector::from_prefix(IpAddr::V4([198, 19, v.octets()[3], 0].into()), 24)
        }
        IpAddr::V6(_) => unreachable!(),
    };
    PeerConfig {
        name: name.into(),
        local_addr: l,
        remote_addr: r,
        remote_port: 500,
        local_id: id_from_addr(l),
        remote_id: id_from_addr(r),
        auth,
        ike_proposals: vec![ProposalSpec::ike("aes128gcm16-prfsha256-x25519").unwrap()],
        esp_proposals: vec![ProposalSpec::esp("aes128gcm16").unwrap()],
        local_ts: vec![net(l)],
        remote_ts: vec![net(r)],
        force_encap: false,
        udp_with_vmsecd: false,
        retransmit: Retransmit::default(),
        lifetimes: Lifetimes::default(),
        replay_window: 1024,
        fragment_size: ike::config::DEFAULT_FRAGMENT_SIZE,
    }
}

/// A's and B's configurations for `auth`: "psk", or an RSA key size.
fn configs(bits: Option<usize>) -> (Arc<PeerConfig>, Arc<PeerConfig>) {
    let (aa, ab) = match bits {
        None => {
            let psk = Zeroizing::new(b"a shared secret of some length".to_vec());
            (AuthMethod::Psk(psk.clone()), AuthMethod::Psk(psk))
        }
        Some(bits) => {
            let (ka, kb) = (
                PrivateKey::generate(bits).unwrap(),
                PrivateKey::generate(bits).unwrap(),
            );
            (
                AuthMethod::PubKey {
                    private: ka.clone(),
                    padding: Padding::Pss,
                    peer_public: kb.public_key(),
                },
                AuthMethod::PubKey {
                    private: kb,
                    padding: Padding::Pss,
                    peer_public: ka.public_key(),
                },
            )
        }
    };
    (Arc::new(peer("b", A, B, aa)), Arc::new(peer("a", B, A, ab)))
}

/// A and B with X.509 certificates (ike's test certificates: A's from an intermediate CA, sent with it; B's from
/// the root; RSA-2048): each side verifies a chain and the peer's signature.
fn cert_configs() -> (Arc<PeerConfig>, Arc<PeerConfig>) {
    use ike::crypto::keyfile::parse_private_key;
    use ike::crypto::x509::{parse_certificates, TrustAnchors};
    let data = |f: &str| {
        std::fs::read(format!(
            "{}/../ike/src/crypto/x509/testdata/{f}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    };
    let cert = |f: &str| parse_certificates(&data(f)).unwrap().remove(0);
    let trust = Arc::new(TrustAnchors::new(vec![cert("ca.pem")]).unwrap());
    let clock = ike::config::WallClock {
        at: Instant::now(),
        unix: cert("a.pem").not_after() - 365 * 86400,
    };
    let auth = |key: &str, chain| AuthMethod::Certificate {
        private: parse_private_key(&data(key)).unwrap(),
        padding: Padding::Pss,
        chain: Arc::new(chain),
        trust: trust.clone(),
        peer_cert: None,
        clock,
    };
    (
        Arc::new(peer(
            "b",
            A,
            B,
            auth("a.key", vec![cert("a.pem"), cert("inter.pem")]),
        )),
        Arc::new(peer("a", B, A, auth("b.key", vec![cert("b.pem")]))),
    )
}

/// One handshake between fresh endpoints; panics unless both sides end with a Child SA.
fn handshake(mut a: Endpoint, mut b: Endpoint, now: Instant) {
    a.connect(now, "b").unwrap();
    let (from_a, from_b): (SocketAddr, SocketAddr) = (
        format!("{A}:500").parse().unwrap(),
        format!("{B}:500").parse().unwrap(),
    );
    let mut ups = 0;
    loop {
        let mut moved = false;
        while let Some(t) = a.poll_transmit() {
            moved = true;
            b.handle(
                now,
                strip(&t.data, t.remote.port()),
                from_a,
                t.remote.port(),
            );
        }
        while let Some(t) = b.poll_transmit() {
            moved = true;
            a.handle(
                now,
                strip(&t.data, t.remote.port()),
                from_b,
                t.remote.port(),
            );
        }
        while let Some(e) = a.poll_event().or_else(|| b.poll_event()) {
            if matches!(e, Event::ChildUp(_)) {
                ups += 1;
            }
        }
        if !moved {
            break;
        }
    }
    assert_eq!(ups, 2, "both sides have the Child SA");
}

/// Datagrams to port 4500 carry the four-zero non-ESP marker.
fn strip(data: &[u8], port: u16) -> &[u8] {
    if port == 4500 {
        &data[4..]
    } else {
        data
    }
}

fn bench_handshake(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    g.measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);
    for name in ["psk", "rsa2048", "rsa3072", "x509-rsa2048"] {
        let (ca, cb) = match name {
            "psk" => configs(None),
            "rsa2048" => configs(Some(2048)),
            "rsa3072" => configs(Some(3072)),
            _ => cert_configs(),
        };
        let now = Instant::now();
        g.bench_function(name, |bch| {
            bch.iter_batched(
                || {
                    (
                        Endpoint::new(vec![ca.clone()]),
                        Endpoint::new(vec![cb.clone()]),
                    )
                },
                |(a, b)| handshake(a, b, now),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn bench_rsa_sign(c: &mut Criterion) {
    use aws_lc_rs::encoding::AsDer as _;
    let mut g = c.benchmark_group("rsa_pss_sha256_sign");
    g.measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);
    let msg = vec![0x5a; 600];
    for bits in [2048, 3072] {
        let size = match bits {
            2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
            _ => aws_lc_rs::rsa::KeySize::Rsa3072,
        };
        let aws = aws_lc_rs::signature::RsaKeyPair::generate(size).unwrap();
        let pkcs8 = aws.as_der().unwrap();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut sig = vec![0u8; aws.public_modulus_len()];
        g.bench_function(format!("aws-lc-rs/{bits}"), |b| {
            b.iter(|| {
                aws.sign(&aws_lc_rs::signature::RSA_PSS_SHA256, &rng, &msg, &mut sig)
                    .unwrap()
            })
        });
        let ring_key = ring::rsa::KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let ring_rng = ring::rand::SystemRandom::new();
        g.bench_function(format!("ring/{bits}"), |b| {
            b.iter(|| {
                ring_key
                    .sign(&ring::signature::RSA_PSS_SHA256, &ring_rng, &msg, &mut sig)
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_handshake, bench_rsa_sign);
criterion_main!(benches);
