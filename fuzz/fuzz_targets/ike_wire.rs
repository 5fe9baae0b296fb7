//! Arbitrary bytes from the wire into the IKE engine: nothing a peer (or anyone who can send a UDP datagram to
//! port 500/4500) sends may panic it, and parsing (modes 0-2) stays within the allocation budget of
//! `vmsecd_fuzz::alloc` (64 bytes per byte received plus 16 KiB).
//!
//! The first byte picks a mode:
//! * `0` — the rest is one IKE message for `message::parse` (header, plaintext payload chain, SK framing);
//! * `1` — the rest is a decrypted payload chain (what follows SK decryption) for `message::parse_chain`, with
//!   the second byte as the first payload type: this is what a peer with the keys controls;
//! * `2` — the rest is an X.509 certificate (DER, or PEM text) for the certificate parser and chain checks;
//! * `3` — the rest is a script of datagrams (`port_choice len_hi len_lo bytes...`) delivered to a responding
//!   [`Endpoint`] with one PSK peer, with its timers run between datagrams: a first IKE_SA_INIT may create a
//!   half-open SA that later datagrams then hit.
#![no_main]

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ike::config::{
    id_from_addr, AuthMethod, Lifetimes, PeerConfig, Retransmit, DEFAULT_FRAGMENT_SIZE,
};
use ike::crypto::x509::{parse_certificates, Certificate, TrustAnchors};
use ike::endpoint::Endpoint;
use ike::message::{self, TrafficSelector};
use ike::proposal::ProposalSpec;
use libfuzzer_sys::fuzz_target;
use vmsecd_fuzz::alloc;
use zeroize::Zeroizing;

fn peer() -> PeerConfig {
    let (l, r): (IpAddr, IpAddr) = ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());
    PeerConfig {
        name: "b".into(),
        local_addr: l,
        remote_addr: r,
        remote_port: 500,
        local_id: id_from_addr(l),
        remote_id: id_from_addr(r),
        auth: AuthMethod::Psk(Zeroizing::new(b"a shared secret of some length".to_vec())),
        ike_proposals: vec![
            ProposalSpec::ike("aes128gcm16-prfsha256-x25519").unwrap(),
            ProposalSpec::ike("aes256-sha256-modp2048").unwrap(),
        ],
        esp_proposals: vec![ProposalSpec::esp("aes128gcm16").unwrap()],
        local_ts: vec![TrafficSelector::from_prefix(
            "198.19.1.0".parse().unwrap(),
            24,
        )],
        remote_ts: vec![TrafficSelector::from_prefix(
            "198.19.2.0".parse().unwrap(),
            24,
        )],
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
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            let _ = alloc::check_parse("message::parse", rest.len(), || message::parse(rest));
        }
        1 => {
            if let Some((&first, chain)) = rest.split_first() {
                let _ = alloc::check_parse("parse_chain", chain.len(), || {
                    message::parse_chain(first, chain, 0)
                });
            }
        }
        2 => {
            if let Ok(certs) = alloc::check_parse("parse_certificates", rest.len(), || {
                parse_certificates(rest)
            }) {
                for c in &certs {
                    let _ = c.subject();
                    let _ = c.check_identity(&id_from_addr("198.18.0.2".parse().unwrap()));
                    let _ = c.key_id();
                }
                if let Ok(anchors) = TrustAnchors::new(certs[..1].to_vec()) {
                    let _ = anchors.verify(&certs[certs.len() - 1], &certs, 1_800_000_000);
                }
            }
            let _ = Certificate::from_der(rest);
        }
        _ => {
            let mut ep = Endpoint::new(vec![Arc::new(peer())]);
            let from = SocketAddr::new("198.18.0.2".parse().unwrap(), 500);
            let mut now = Instant::now();
            let mut script = rest;
            while script.len() >= 3 {
                let port = if script[0] & 1 == 0 { 500 } else { 4500 };
                let len =
                    (usize::from(script[1]) << 8 | usize::from(script[2])).min(script.len() - 3);
                let (datagram, next) = script[3..].split_at(len);
                script = next;
                ep.handle(now, datagram, from, port);
                while ep.poll_transmit().is_some() {}
                while ep.poll_event().is_some() {}
                now += Duration::from_secs(1);
                ep.handle_timeout(now);
            }
        }
    }
});
