//! The decrypted payload chain: what a peer holding the IKE SA's keys controls, i.e. what follows SK
//! decryption in IKE_AUTH, CREATE_CHILD_SA and INFORMATIONAL. Each input is encrypted under fixed keys of one
//! of the seven IKE suites vmsecd negotiates (`vmsecd_fuzz::ike_sk`), so the fuzzer gets past the ICV and
//! reaches the parsers behind it.
//!
//! Input: a byte choosing the suite (`% 7`) and the mode (`/ 7 % 2`), an IKE header (structured), then
//! * mode 0: a structured payload chain (`vmsecd_fuzz::ike_gen`), then up to 4 mutations `pos(2) xor(1)` of
//!   the sealed message;
//! * mode 1: a first payload type byte and raw inner bytes, sealed as they are.
//!
//! Checks:
//! * the sealed message parses with the SK payload last, right after the header, and decrypts (AAD: header
//!   and SK payload header, RFC 5282 5.1) to exactly the plaintext;
//! * `parse_chain` on the plaintext never panics and stays within the allocation budget; mode 0:
//!   `parse_chain(encode_chain(x)) == x`; mode 1: whatever parses re-encodes to a chain that parses to the same
//!   payloads;
//! * a mutated message never decrypts (every byte is under the AAD or the ICV), so nothing forged reaches the
//!   inner parsers.
#![no_main]

use ike::message::{self, encode_chain, parse_chain, HEADER_LEN};
use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use vmsecd_fuzz::{alloc, ike_gen, ike_sk};

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(sel) = u.arbitrary::<u8>() else { return };
    let suite = usize::from(sel) % ike_sk::SUITES.len();
    let mode = usize::from(sel) / ike_sk::SUITES.len() % 2;
    let Ok(mut header) = ike_gen::header(&mut u) else {
        return;
    };
    header.version = message::IKE_VERSION;
    let (first, plain, chain) = if mode == 0 {
        let Ok(chain) = ike_gen::chain(&mut u, 12) else {
            return;
        };
        let (first, plain) = encode_chain(&chain);
        (first, plain, Some(chain))
    } else {
        let Ok(first) = u.arbitrary::<u8>() else {
            return;
        };
        let n = u.len().min(8192);
        (first, u.bytes(n).unwrap_or_default().to_vec(), None)
    };
    let c = ike_sk::cipher(suite);
    let wire = ike_sk::seal_message(c, header, first, &plain);

    let parsed = message::parse(&wire).expect("sealed message parses");
    assert!(parsed.payloads.is_empty());
    let enc = parsed.encrypted.expect("SK payload");
    assert_eq!(
        (enc.offset, enc.inner_next, enc.fragment),
        (HEADER_LEN, first, None)
    );
    let got = c
        .decrypt(&wire[..enc.offset + 4], enc.body)
        .expect("sealed message decrypts");
    assert_eq!(&got[..], &plain[..], "decrypt(encrypt(p)) != p");

    let res = alloc::check_parse("parse_chain (decrypted)", plain.len(), || {
        parse_chain(first, &got, 0)
    });
    match (&chain, res) {
        (Some(chain), Ok((payloads, None))) => {
            assert_eq!(&payloads, chain, "parse(encode(x)) != x")
        }
        (Some(chain), other) => panic!("encoded chain {chain:?} does not parse: {other:?}"),
        (None, Ok((payloads, _))) => {
            let (f2, b2) = encode_chain(&payloads);
            let again = parse_chain(f2, &b2, 0);
            assert_eq!(
                again,
                Ok((payloads, None)),
                "re-encoded chain parses differently"
            );
        }
        (None, Err(_)) => {}
    }

    // Forgeries: change 1 to 4 bytes anywhere; nothing may decrypt.
    let mut bad = wire.clone();
    for _ in 0..4 {
        let (Ok(pos), Ok(x)) = (u.arbitrary::<u16>(), u.arbitrary::<u8>()) else {
            break;
        };
        let i = usize::from(pos) % bad.len();
        bad[i] ^= x;
    }
    if bad == wire {
        return;
    }
    if let Ok(p) = alloc::check_parse("message::parse (forged)", bad.len(), || {
        message::parse(&bad)
    }) {
        if let Some(e) = p.encrypted {
            if let Some(aad) = bad.get(..e.offset + 4) {
                assert!(
                    c.decrypt(aad, e.body).is_err(),
                    "a modified SK message authenticated"
                );
            }
        }
    }
});
