//! Whole IKE messages, structure-aware: most inputs are read as choices that build a well-formed header and
//! payload chain (SA proposals with transforms and attributes, KE, IDs, certificates, AUTH, nonces, notifies,
//! deletes, vendor IDs, traffic selectors, configuration, unknown payloads), so the fuzzer reaches every payload
//! body parser instead of dying in the header; then the encoding is damaged.
//!
//! Input: a mode byte, then
//! * even: a structured message (see `vmsecd_fuzz::ike_gen`), then up to 16 mutations `pos(2) xor(1)` applied
//!   to its encoding;
//! * odd: the rest, parsed as one received datagram.
//!
//! Checks:
//! * `message::parse` never panics, and never allocates more than `alloc::parse_budget(datagram length)`;
//! * structured: `parse(encode_plain(h, chain)) == (h, chain)` exactly, or `BadVersion` when the generated
//!   version is not 2;
//! * any message that parses: its plain payloads re-encoded (`encode_chain`) parse back to the same payloads
//!   (encode/parse is a fixed point on everything the parser accepts), and its header re-encodes to the
//!   received 28 bytes.
#![no_main]

use ike::message::{self, encode_chain, encode_plain, parse_chain, Header, ParseError, HEADER_LEN};
use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use vmsecd_fuzz::{alloc, ike_gen};

/// Parses `buf` as a received datagram under the allocation budget and checks the fixed-point property.
fn parse_checked(buf: &[u8]) -> Option<(Header, Vec<message::Payload>, bool)> {
    let parsed = alloc::check_parse("message::parse", buf.len(), || message::parse(buf));
    let p = parsed.ok()?;
    let mut h = Vec::new();
    p.header.encode(&mut h);
    assert_eq!(
        &h[..],
        &buf[..HEADER_LEN],
        "header does not re-encode to its bytes"
    );
    assert_eq!(p.bytes.len(), p.header.length as usize);
    if let Some(e) = p.encrypted {
        assert!(
            e.offset >= HEADER_LEN && e.offset + 4 + e.body.len() <= p.bytes.len(),
            "SK payload {}+{} outside the message ({})",
            e.offset,
            e.body.len(),
            p.bytes.len()
        );
        if let Some(f) = e.fragment {
            assert!(f.number >= 1 && f.number <= f.total);
        }
    }
    let (first, body) = encode_chain(&p.payloads);
    let again = alloc::check_parse("parse_chain (re-encoded)", body.len(), || {
        parse_chain(first, &body, 0)
    });
    match again {
        Ok((payloads, None)) => assert_eq!(
            payloads, p.payloads,
            "re-encoded payloads parse differently"
        ),
        other => panic!(
            "re-encoded payloads {:?} do not parse: {other:?}",
            p.payloads
        ),
    }
    Some((p.header, p.payloads, p.encrypted.is_some()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        parse_checked(rest);
        return;
    }
    let mut u = Unstructured::new(rest);
    let (Ok(header), Ok(chain)) = (ike_gen::header(&mut u), ike_gen::chain(&mut u, 16)) else {
        return;
    };
    let wire = encode_plain(header, &chain);
    if header.version >> 4 != 2 {
        assert_eq!(
            message::parse(&wire).err(),
            Some(ParseError::BadVersion(header.version >> 4))
        );
    } else {
        let (h, payloads, enc) = parse_checked(&wire).unwrap_or_else(|| {
            panic!(
                "encoded message does not parse: {:?}",
                message::parse(&wire)
            )
        });
        assert!(!enc);
        assert_eq!(h.length as usize, wire.len());
        assert_eq!(
            (h.spi_i, h.spi_r, h.exchange, h.flags, h.message_id),
            (
                header.spi_i,
                header.spi_r,
                header.exchange,
                header.flags,
                header.message_id
            )
        );
        assert_eq!(payloads, chain, "parse(encode(x)) != x");
    }
    // Damage the encoding at fuzzer-chosen places.
    let mut bad = wire;
    let mut n = 0;
    while n < 16 && u.len() >= 3 {
        let (Ok(pos), Ok(x)) = (u.arbitrary::<u16>(), u.arbitrary::<u8>()) else {
            break;
        };
        if !bad.is_empty() {
            let i = usize::from(pos) % bad.len();
            bad[i] ^= x;
        }
        n += 1;
    }
    if n > 0 {
        parse_checked(&bad);
    }
});
