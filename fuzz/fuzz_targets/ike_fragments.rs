//! IKE fragment reassembly (RFC 7383) with fixed keys: a payload chain is split into SKF messages by the same
//! code the endpoint sends with (`ike::fuzz_api::split`, exposing `ike/src/fragment.rs`), and a script
//! delivers them, duplicated, reordered, damaged, forged or re-split with a smaller size, to a receiver that
//! does what `IkeSa::handle_fragment` (ike/src/sa.rs) does: parse, check the ICV over the AAD through Total
//! Fragments, feed `Reassembly::add`, parse the reassembled chain.
//!
//! Input: suite byte (`% 7`), header (structured), response flag, max length `68 + u16 % 1400`, a chain
//! (structured, up to 24 payloads), then script ops (up to 48):
//! * `0 k` deliver fragment `k` of the current split;
//! * `1 k pos xor` deliver it damaged (must not authenticate);
//! * `2 number total len bytes` a forged SKF message with the right header (must not authenticate);
//! * `3 dec` re-split with `max_len - 1 - dec` (RFC 7383 2.6.2: a retransmission with a smaller fragment size);
//!   used only when it gives more fragments, as the RFC requires of a sender (3 per input at most);
//! * `4` deliver every fragment of the current split not yet delivered, last first.
//!
//! A reference model tracks which fragments of the newest split the receiver holds; checks:
//! * every SKF message is at most `max_len` bytes, parses, and carries numbers 1..=total;
//! * damaged and forged fragments never authenticate;
//! * reassembly completes exactly when the model holds every fragment of the newest split, and then yields the
//!   first inner payload type and the exact chain, which parses back to the generated payloads;
//! * reassembly and parsing never panic, and the reassembled chain's parse stays within the allocation budget.
#![no_main]

use std::collections::BTreeSet;

use ike::fuzz_api::{split, Reassembly, MAX_FRAGMENTS};
use ike::message::{self, encode_chain, parse_chain, Flags, HEADER_LEN};
use libfuzzer_sys::arbitrary::Unstructured;
use libfuzzer_sys::fuzz_target;
use vmsecd_fuzz::{alloc, ike_gen, ike_sk};

struct Receiver {
    cipher: &'static ike::crypto::SkCipher,
    key: (u32, bool),
    reassembly: Option<Reassembly>,
}

impl Receiver {
    /// `Some(Some(whole))` when this datagram completed a message, `Some(None)` when it authenticated,
    /// `None` when it did not.
    fn deliver(&mut self, dgram: &[u8]) -> Option<Option<(u8, Vec<u8>)>> {
        let parsed = alloc::check_parse("message::parse (SKF)", dgram.len(), || {
            message::parse(dgram)
        })
        .ok()?;
        let enc = parsed.encrypted?;
        let f = enc.fragment?;
        let aad = parsed.bytes.get(..enc.offset + 8)?;
        let plain = self.cipher.decrypt(aad, enc.body).ok()?;
        if self.reassembly.is_none() {
            self.reassembly = Some(Reassembly::new(self.key, f.total).ok()?);
        }
        let r = self.reassembly.as_mut()?;
        match r.add(f.number, f.total, enc.inner_next, plain) {
            Ok(Some((first, whole))) => {
                self.reassembly = None;
                Some(Some((first, whole.to_vec())))
            }
            _ => Some(None),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(sel), Ok(mut header), Ok(resp), Ok(ml)) = (
        u.arbitrary::<u8>(),
        ike_gen::header(&mut u),
        u.arbitrary::<bool>(),
        u.arbitrary::<u16>(),
    ) else {
        return;
    };
    header.version = message::IKE_VERSION;
    header.flags = Flags(if resp {
        Flags::RESPONSE
    } else {
        Flags::INITIATOR
    });
    let Ok(chain) = ike_gen::chain(&mut u, 24) else {
        return;
    };
    let (first, plain) = encode_chain(&chain);
    if plain.is_empty() {
        return;
    }
    let suite = usize::from(sel) % ike_sk::SUITES.len();
    let tx = ike_sk::cipher(suite);
    let mut max_len = 68 + usize::from(ml) % 1400;
    let mut frags = match split(tx, header, first, &plain, max_len) {
        Some(f) => f,
        None => return,
    };
    let check_split = |frags: &[Vec<u8>], max_len: usize| {
        assert!(!frags.is_empty() && frags.len() <= usize::from(MAX_FRAGMENTS));
        for (i, f) in frags.iter().enumerate() {
            assert!(
                f.len() <= max_len,
                "fragment of {} bytes > {max_len}",
                f.len()
            );
            let p = message::parse(f).expect("SKF message parses");
            let e = p.encrypted.expect("SKF payload");
            let fr = e.fragment.expect("fragment numbering");
            assert_eq!(
                (fr.number as usize, fr.total as usize),
                (i + 1, frags.len())
            );
            assert_eq!(e.inner_next, if i == 0 { first } else { 0 });
            assert_eq!(e.offset, HEADER_LEN);
        }
    };
    check_split(&frags, max_len);

    let mut rx = Receiver {
        cipher: ike_sk::cipher(suite),
        key: (header.message_id, resp),
        reassembly: None,
    };
    // Fragments of the newest split the receiver holds (the model), and those delivered at all.
    let mut held: BTreeSet<usize> = BTreeSet::new();
    let mut total_held = 0usize; // Total Fragments of what the receiver holds (0: nothing yet)
    let mut completions = 0;
    let mut on_result = |r: Option<Option<(u8, Vec<u8>)>>,
                         k: usize,
                         n: usize,
                         held: &mut BTreeSet<usize>,
                         total_held: &mut usize| {
        let Some(done) = r else {
            panic!("genuine fragment {k}/{n} did not authenticate");
        };
        // Model: a larger total restarts, a smaller one is dropped, a duplicate is dropped.
        if n > *total_held {
            held.clear();
            *total_held = n;
        }
        if n == *total_held {
            held.insert(k);
        }
        let complete = *total_held > 0 && held.len() == *total_held;
        match done {
            Some((f, whole)) => {
                assert!(
                    complete,
                    "reassembly completed with {held:?} of {total_held}"
                );
                assert_eq!(f, first, "first inner payload type");
                assert_eq!(whole, plain, "reassembled chain differs");
                let parsed = alloc::check_parse("parse_chain (reassembled)", whole.len(), || {
                    parse_chain(f, &whole, 0)
                });
                assert_eq!(parsed, Ok((chain.clone(), None)));
                held.clear();
                *total_held = 0;
                completions += 1;
            }
            None => assert!(!complete, "all {total_held} fragments held but no message"),
        }
    };

    let mut delivered: BTreeSet<usize> = BTreeSet::new();
    let mut resplits = 0;
    for _ in 0..48 {
        let Ok(op) = u.arbitrary::<u8>() else { break };
        match op % 5 {
            0 => {
                let k = usize::from(u.arbitrary::<u8>().unwrap_or(0)) % frags.len();
                let r = rx.deliver(&frags[k]);
                delivered.insert(k);
                on_result(r, k, frags.len(), &mut held, &mut total_held);
            }
            1 => {
                let k = usize::from(u.arbitrary::<u8>().unwrap_or(0)) % frags.len();
                let pos = usize::from(u.arbitrary::<u16>().unwrap_or(0)) % frags[k].len();
                let x = u.arbitrary::<u8>().unwrap_or(1).max(1);
                let mut bad = frags[k].clone();
                bad[pos] ^= x;
                assert_eq!(rx.deliver(&bad), None, "a damaged fragment authenticated");
            }
            2 => {
                let number = u.arbitrary::<u16>().unwrap_or(1);
                let total = u.arbitrary::<u16>().unwrap_or(1);
                let len = usize::from(u.arbitrary::<u8>().unwrap_or(0));
                let body = u.bytes(len.min(u.len())).unwrap_or_default();
                let mut h = header;
                h.next_payload = message::PayloadType::SKF;
                h.length = (HEADER_LEN + 8 + body.len()) as u32;
                let mut m = Vec::new();
                h.encode(&mut m);
                m.extend_from_slice(&[first, 0]);
                m.extend_from_slice(&((8 + body.len()) as u16).to_be_bytes());
                m.extend_from_slice(&number.to_be_bytes());
                m.extend_from_slice(&total.to_be_bytes());
                m.extend_from_slice(body);
                assert_eq!(rx.deliver(&m), None, "a forged fragment authenticated");
            }
            3 => {
                let dec = usize::from(u.arbitrary::<u8>().unwrap_or(0));
                resplits += 1;
                if resplits > 3 {
                    continue;
                }
                let smaller = max_len.saturating_sub(1 + dec).max(68);
                if let Some(f2) = split(tx, header, first, &plain, smaller) {
                    if f2.len() > frags.len() {
                        check_split(&f2, smaller);
                        frags = f2;
                        max_len = smaller;
                        delivered.clear();
                    }
                }
            }
            _ => {
                for k in (0..frags.len()).rev() {
                    if !delivered.contains(&k) {
                        let r = rx.deliver(&frags[k]);
                        delivered.insert(k);
                        on_result(r, k, frags.len(), &mut held, &mut total_held);
                    }
                }
            }
        }
    }
    let _ = completions;
});
