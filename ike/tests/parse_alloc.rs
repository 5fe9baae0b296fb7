//! Proves the parsers' promise (issue 12 item 1): **parsing never allocates more than
//! [`FACTOR`] x the bytes received, plus [`OVERHEAD`] bytes**, whatever the bytes are.
//!
//! Bytes allocated means every byte requested from the allocator while parsing (each `alloc`, and the new size
//! of each `realloc`), summed: not the peak, the total, so growth by doubling is counted too. It is measured on
//! the parsing thread only, by a counting global allocator (its own test binary: a `#[global_allocator]` is
//! per binary).
//!
//! Why 16: the largest Rust value a parser builds per received byte is one [`Payload`] (56 bytes) for a
//! 4-byte payload that is only a generic header (Vendor ID or an unknown type); every other structure costs
//! less per byte (a 4-byte ESP SPI in a Delete 28 bytes, an 8-byte proposal 56, a 4-byte configuration
//! attribute 32, an 8-byte transform 8, a 16-byte traffic selector 40). Before the fix a Delete payload of 8
//! bytes with SPI Size 0 and Num of SPIs 65535 cost 65,535 x 24 bytes: about 196,000 x its size.
//!
//! Inputs: adversarial ones built by hand (every count field at its maximum over the shortest body, SPI sizes 0
//! and 1, deep chains of empty payloads filling a 64 KiB datagram) for every payload type, each alone in a
//! chain and in a whole message, plus random payload bodies, random chains and randomly mutated valid
//! messages from proptest, and a decrypted (SK) chain.

mod counting_alloc;
use counting_alloc::allocated;
use ike::crypto::{IkeEncr, SkCipher};
use ike::message::{
    encode_plain, parse, parse_chain, CfgAttr, Config, Delete, ExchangeType, Flags, Header, Id,
    IdType, Notify, Payload, PayloadType, Proposal, ProtocolId, SaTransform, TrafficSelector,
    TransformType, HEADER_LEN, IKE_VERSION,
};
use proptest::prelude::*;

/// Bytes allocated per byte received, at most.
const FACTOR: usize = 16;
/// Fixed bytes allocated per parse on top of that.
const OVERHEAD: usize = 64;

fn bound(input: usize) -> usize {
    FACTOR * input + OVERHEAD
}

/// Every payload type we parse, an unknown non-critical one, and the encrypted ones that end a chain.
const TYPES: [u8; 19] = [
    33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48, 53, 1, 200,
];

/// A chain of one payload of type `ptype` with `body`.
fn one_payload(body: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + body.len()).unwrap();
    let mut v = vec![PayloadType::NONE, 0];
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A whole IKE_SA_INIT message around a chain starting with `first`.
fn message(first: u8, chain: &[u8]) -> Vec<u8> {
    let header = Header {
        spi_i: 0x0102_0304_0506_0708,
        spi_r: 0,
        next_payload: first,
        version: IKE_VERSION,
        exchange: ExchangeType::IKE_SA_INIT,
        flags: Flags(Flags::INITIATOR),
        message_id: 0,
        length: u32::try_from(HEADER_LEN + chain.len()).unwrap(),
    };
    let mut v = Vec::new();
    header.encode(&mut v);
    v.extend_from_slice(chain);
    v
}

/// Checks the bound for a chain parsed alone and inside a whole message; returns the worst bytes/input ratio.
fn check(first: u8, chain: &[u8], what: &str) -> f64 {
    let a = allocated(|| parse_chain(first, chain, 0));
    assert!(
        a <= bound(chain.len()),
        "{what}: parse_chain of {} bytes allocated {a} bytes (bound {})",
        chain.len(),
        bound(chain.len())
    );
    let msg = message(first, chain);
    let b = allocated(|| parse(&msg));
    assert!(
        b <= bound(msg.len()),
        "{what}: parse of a {}-byte message allocated {b} bytes (bound {})",
        msg.len(),
        bound(msg.len())
    );
    (a as f64 / chain.len().max(1) as f64).max(b as f64 / msg.len() as f64)
}

/// Hand-made worst cases: count fields at their maximum over the shortest bodies, the smallest elements
/// repeated, deep chains.
fn adversarial() -> Vec<(u8, Vec<u8>, String)> {
    let mut cases: Vec<(u8, Vec<u8>, String)> = Vec::new();
    let mut add = |ptype: u8, body: Vec<u8>, what: &str| {
        cases.push((ptype, one_payload(&body), format!("{what} (type {ptype})")))
    };
    // Delete (RFC 7296 3.11): the reported case, and its neighbours.
    add(
        42,
        vec![1, 0, 0xff, 0xff],
        "Delete IKE, SPI Size 0, 65535 SPIs",
    );
    add(
        42,
        vec![3, 0, 0xff, 0xff],
        "Delete ESP, SPI Size 0, 65535 SPIs",
    );
    let mut d = vec![3, 1, 0xff, 0xff];
    d.extend(std::iter::repeat_n(7, 60_000));
    add(42, d, "Delete, SPI Size 1, 65535 SPIs over 60000 bytes");
    let mut d = vec![3, 4, 0x3a, 0x98];
    d.extend(std::iter::repeat_n(7, 15_000 * 4));
    add(42, d, "Delete ESP, 15000 4-byte SPIs");
    add(
        42,
        vec![3, 255, 0xff, 0xff, 1, 2, 3],
        "Delete, SPI Size 255",
    );
    // SA: 255 transforms announced in an 8-byte proposal; many empty proposals; many minimal transforms.
    add(
        33,
        vec![0, 0, 0, 8, 1, 1, 0, 255],
        "SA, 255 transforms in an empty proposal",
    );
    add(
        33,
        vec![0, 0, 0, 8, 1, 1, 255, 255],
        "SA, SPI Size 255 and 255 transforms",
    );
    let mut sa = Vec::new();
    for _ in 0..8000 {
        sa.extend_from_slice(&[2, 0, 0, 8, 1, 3, 0, 0]);
    }
    let n = sa.len();
    sa[n - 8] = 0;
    add(33, sa, "SA, 8000 empty proposals");
    let mut sa = vec![0, 0, 0x08, 0x00, 1, 1, 0, 255];
    for i in 0..255 {
        sa.extend_from_slice(&[if i == 254 { 0 } else { 3 }, 0, 0, 8, 1, 0, 0, 20]);
    }
    add(33, sa, "SA, 255 8-byte transforms");
    let k = 16_000u16;
    let mut sa = vec![0, 0];
    sa.extend_from_slice(&(16 + 4 * k).to_be_bytes());
    sa.extend_from_slice(&[1, 1, 0, 1, 0, 0]);
    sa.extend_from_slice(&(8 + 4 * k).to_be_bytes());
    sa.extend_from_slice(&[1, 0, 0, 20]);
    for _ in 0..k {
        sa.extend_from_slice(&[0x80, 14, 0, 128]);
    }
    add(33, sa, "SA, a transform with 16000 attributes");
    // Traffic selectors: 255 announced, one present; 255 present.
    let mut ts = vec![255, 0, 0, 0];
    ts.extend_from_slice(&[7, 0, 0, 16, 0, 0, 255, 255, 198, 19, 1, 0, 198, 19, 1, 255]);
    add(44, ts.clone(), "TSi, 255 selectors announced, 1 present");
    add(
        45,
        vec![255, 0, 0, 0],
        "TSr, 255 selectors announced, none present",
    );
    let mut ts = vec![255, 0, 0, 0];
    for _ in 0..255 {
        ts.extend_from_slice(&[7, 0, 0, 16, 0, 0, 255, 255, 198, 19, 1, 0, 198, 19, 1, 255]);
    }
    add(44, ts, "TSi, 255 selectors");
    // Configuration: as many empty attributes as fit; one that announces more than it has.
    let mut cp = vec![1, 0, 0, 0];
    for _ in 0..16_000 {
        cp.extend_from_slice(&[0, 1, 0, 0]);
    }
    add(47, cp, "CP, 16000 empty attributes");
    add(
        47,
        vec![1, 0, 0, 0, 0, 1, 0xff, 0xff],
        "CP, attribute longer than the payload",
    );
    // Notify: SPI Size 255 with no SPI; the shortest body.
    add(41, vec![3, 255, 0x40, 0x00], "Notify, SPI Size 255, no SPI");
    add(41, vec![0, 0, 0x40, 0x00], "Notify, shortest");
    // The shortest legal body of every other type, and empty bodies of every type.
    add(34, vec![0, 31, 0, 0], "KE, empty public value");
    add(35, vec![2, 0, 0, 0], "IDi, empty");
    add(37, vec![4], "CERT, empty");
    add(38, vec![4], "CERTREQ, empty");
    add(39, vec![2, 0, 0, 0], "AUTH, empty");
    add(40, vec![0; 16], "Nonce, 16 bytes");
    add(
        53,
        vec![0, 1, 0xff, 0xff],
        "SKF, fragment 1 of 65535, no body",
    );
    for t in TYPES {
        add(t, Vec::new(), "empty body");
        add(t, vec![0xff; 3], "three 0xff bytes");
    }
    // Deep chains: as many empty payloads as a 64 KiB datagram holds, for every type (a chain of SK would end
    // at the first one; the rest are refused as coming after it).
    for t in TYPES {
        let n = (65_535 - HEADER_LEN) / 4;
        let mut chain = Vec::with_capacity(n * 4);
        for i in 0..n {
            chain.extend_from_slice(&[if i + 1 == n { 0 } else { t }, 0, 0, 4]);
        }
        cases.push((t, chain, format!("chain of {n} empty payloads of type {t}")));
    }
    // Vendor IDs of 1 byte, and Nonces of 16, chained.
    let mut chain = Vec::new();
    for i in 0..13_000 {
        chain.extend_from_slice(&[if i + 1 == 13_000 { 0 } else { 43 }, 0, 0, 5, 0x42]);
    }
    cases.push((43, chain, "chain of 13000 one-byte Vendor IDs".into()));
    cases
}

#[test]
fn counting_allocator_counts() {
    let n = allocated(|| vec![0u8; 1000]);
    assert!(n >= 1000, "the counting allocator does not count: {n}");
}

#[test]
fn adversarial_inputs_allocate_at_most_16x() {
    let mut worst = (0.0, String::new());
    for (first, chain, what) in adversarial() {
        let r = check(first, &chain, &what);
        if r > worst.0 {
            worst = (r, what);
        }
    }
    println!(
        "worst bytes allocated per byte received: {:.2} ({})",
        worst.0, worst.1
    );
}

/// Valid payloads of every type, to mutate.
fn valid_payloads() -> Vec<Payload> {
    let ts = TrafficSelector::from_prefix("198.19.1.0".parse().unwrap(), 24);
    vec![
        Payload::Sa(vec![Proposal {
            num: 1,
            protocol: ProtocolId::ESP,
            spi: vec![1, 2, 3, 4],
            transforms: vec![
                SaTransform {
                    ttype: TransformType::ENCR,
                    id: 20,
                    key_len: Some(128),
                },
                SaTransform {
                    ttype: TransformType::ESN,
                    id: 0,
                    key_len: None,
                },
            ],
        }]),
        Payload::Ke {
            group: 31,
            data: vec![9; 32],
        },
        Payload::Nonce(vec![7; 32]),
        Payload::Notify(Notify {
            protocol: 3,
            spi: vec![0, 0, 1, 0],
            ntype: 16393,
            data: vec![],
        }),
        Payload::IdI(Id {
            id_type: IdType::FQDN,
            data: b"b0.example.net".to_vec(),
        }),
        Payload::Auth {
            method: 2,
            data: vec![3; 32],
        },
        Payload::Cert {
            encoding: 4,
            data: vec![0x30, 0x82],
        },
        Payload::CertReq {
            encoding: 4,
            data: vec![5; 20],
        },
        Payload::TsI(vec![ts, ts]),
        Payload::TsR(vec![ts]),
        Payload::Delete(Delete {
            protocol: ProtocolId::ESP,
            spis: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]],
        }),
        Payload::Vendor(b"vmsecd".to_vec()),
        Payload::Config(Config {
            cfg_type: 1,
            attrs: vec![CfgAttr {
                attr_type: 1,
                value: vec![],
            }],
        }),
    ]
}

/// Values that hit count and length fields' edges half of the time, any byte otherwise (one draw: proptest's
/// unions are slow in debug builds).
fn interesting_byte() -> impl Strategy<Value = u8> {
    const EDGES: [u8; 8] = [0, 1, 2, 4, 8, 0x7f, 0x80, 0xff];
    any::<u16>().prop_map(|x| {
        let [hi, lo] = x.to_be_bytes();
        if hi & 1 == 0 {
            EDGES[usize::from(hi >> 1) % EDGES.len()]
        } else {
            lo
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// A random body for a random payload type, its first bytes (where the counts and lengths are) drawn from
    /// edge values.
    #[test]
    fn random_bodies_allocate_at_most_16x(
        ptype in prop::sample::select(TYPES.to_vec()),
        head in prop::collection::vec(interesting_byte(), 0..12),
        tail in prop::collection::vec(any::<u8>(), 0..400),
    ) {
        let mut body = head;
        body.extend_from_slice(&tail);
        check(ptype, &one_payload(&body), "random body");
    }

    /// Random chains of random payload headers and bodies.
    #[test]
    fn random_chains_allocate_at_most_16x(
        first in prop::sample::select(TYPES.to_vec()),
        parts in prop::collection::vec(
            (prop::sample::select(TYPES.to_vec()), prop::collection::vec(interesting_byte(), 0..24)), 0..40),
    ) {
        let mut chain = Vec::new();
        for (i, (_, body)) in parts.iter().enumerate() {
            let next = parts.get(i + 1).map_or(0, |p| p.0);
            chain.extend_from_slice(&[next, 0]);
            chain.extend_from_slice(&u16::try_from(4 + body.len()).unwrap().to_be_bytes());
            chain.extend_from_slice(body);
        }
        check(first, &chain, "random chain");
    }

    /// A valid message of every payload type with bytes overwritten by edge values.
    #[test]
    fn mutated_messages_allocate_at_most_16x(
        edits in prop::collection::vec((any::<prop::sample::Index>(), interesting_byte()), 1..6),
    ) {
        let header = Header {
            spi_i: 1,
            spi_r: 2,
            next_payload: 0,
            version: IKE_VERSION,
            exchange: ExchangeType::IKE_AUTH,
            flags: Flags(0),
            message_id: 1,
            length: 0,
        };
        let mut msg = encode_plain(header, &valid_payloads());
        for (at, v) in edits {
            let i = HEADER_LEN + at.index(msg.len() - HEADER_LEN);
            msg[i] = v;
        }
        let n = allocated(|| parse(&msg));
        prop_assert!(n <= bound(msg.len()), "{n} bytes allocated for {}", msg.len());
        let (first, chain) = (msg[16], &msg[HEADER_LEN..]);
        let n = allocated(|| parse_chain(first, chain, 0));
        prop_assert!(n <= bound(chain.len()), "{n} bytes allocated for {}", chain.len());
    }
}

/// What a peer holding the keys controls: the decrypted chain. Decrypting copies the ciphertext once (1 x), then
/// the chain is parsed: 17 x the SK body at most.
#[test]
fn decrypted_chain_allocates_at_most_17x() {
    let key: Vec<u8> = (0..20).collect();
    let sk = SkCipher::new(IkeEncr::AesGcm16_128, None, &key, &[]).unwrap();
    for (first, chain, what) in adversarial() {
        if chain.len() > 60_000 {
            continue;
        }
        let aad = [0u8; 32];
        let body = sk.encrypt(&aad, &chain);
        let n = allocated(|| {
            let plain = sk.decrypt(&aad, &body).unwrap();
            let r = parse_chain(first, &plain, 0).map(|(p, _)| p);
            (r, plain)
        });
        assert!(
            n <= (FACTOR + 1) * body.len() + OVERHEAD,
            "{what}: {n} bytes for a {}-byte SK body",
            body.len()
        );
    }
}

/// The reported case, by itself: an 8-byte Delete payload in an IKE_SA_INIT-sized message is refused with a
/// typed error, having allocated next to nothing.
#[test]
fn delete_with_65535_empty_spis_is_refused() {
    let chain = one_payload(&[3, 0, 0xff, 0xff]);
    let msg = message(PayloadType::DELETE, &chain);
    let mut result = None;
    let n = allocated(|| result = Some(parse(&msg).map(|p| p.payloads)));
    assert!(result.unwrap().is_err(), "65535 SPIs of 0 bytes accepted");
    assert!(n <= OVERHEAD, "{n} bytes allocated");
}

/// A DER TLV with a minimal length (long forms up to 3 bytes, as the parser takes).
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    let n = content.len();
    match n {
        0..=0x7f => v.push(n as u8),
        0x80..=0xff => v.extend_from_slice(&[0x81, n as u8]),
        0x100..=0xffff => v.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
        _ => v.extend_from_slice(&[0x83, (n >> 16) as u8, (n >> 8) as u8, n as u8]),
    }
    v.extend_from_slice(content);
    v
}

/// A structurally valid certificate whose subjectAltName extension holds `names` (DER GeneralNames).
fn cert_with_alt_names(names: &[u8]) -> Vec<u8> {
    let alg = der(
        0x30,
        &[
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
        ],
    );
    let time = der(0x17, b"250101000000Z");
    let mut ext = der(0x06, &[0x55, 0x1d, 0x11]);
    ext.extend(der(0x04, &der(0x30, names)));
    let exts = der(0xa3, &der(0x30, &der(0x30, &ext)));
    let mut tbs = der(0xa0, &der(0x02, &[2]));
    tbs.extend(der(0x02, &[1]));
    tbs.extend(&alg);
    tbs.extend(der(0x30, &[]));
    tbs.extend(der(0x30, &[time.clone(), time].concat()));
    tbs.extend(der(0x30, &[]));
    tbs.extend(der(0x30, &[]));
    tbs.extend(exts);
    let mut cert = der(0x30, &tbs);
    cert.extend(alg);
    cert.extend(der(0x03, &[0, 1, 2, 3]));
    der(0x30, &cert)
}

/// The X.509 parser (CERT payloads: what a peer holding the SK keys sends in IKE_AUTH) keeps the same bound:
/// a certificate that is nothing but subjectAltNames of the shortest kinds, and mutated ones.
#[test]
fn certificates_allocate_at_most_16x() {
    use ike::crypto::x509::Certificate;
    let mut worst = 0.0f64;
    for (what, entry) in [
        ("empty dNSName", &[0x82, 0][..]),
        ("1-byte dNSName", &[0x82, 1, b'a'][..]),
        ("empty rfc822Name", &[0x81, 0][..]),
        ("IPv4 iPAddress", &[0x87, 4, 198, 18, 0, 1][..]),
        ("unknown GeneralName", &[0x88, 0][..]),
    ] {
        let names: Vec<u8> = entry
            .iter()
            .copied()
            .cycle()
            .take(60_000 / entry.len() * entry.len())
            .collect();
        let cert = cert_with_alt_names(&names);
        let mut parsed = None;
        let n = allocated(|| parsed = Some(Certificate::from_der(&cert).map(|_| ())));
        assert!(
            parsed.unwrap().is_ok(),
            "{what}: the crafted certificate does not parse"
        );
        worst = worst.max(n as f64 / cert.len() as f64);
        assert!(
            n <= bound(cert.len()),
            "{what}: a {}-byte certificate allocated {n} bytes (bound {})",
            cert.len(),
            bound(cert.len())
        );
    }
    println!("certificates: worst {worst:.2} bytes allocated per byte");
}
