//! Shared fixtures and invariant checks for the fuzz targets: the `esp` fixtures and checked decapsulation
//! below, structure-aware IKE payload generation ([`ike_gen`]), fixed-key IKE ciphers ([`ike_sk`]) and a
//! counting allocator ([`alloc`]).
//!
//! Everything here is deterministic: the same input always builds the same SAs with the same keys, so a crash
//! reproduces from its input file alone. No state survives from one input to the next.

pub mod alloc;
pub mod ike_gen;
pub mod ike_sk;

use esp::{
    Counters, DropReason, InboundSa, KeyMaterial, OutboundSa, PacketBuf, SaParams, Sad, Transform,
    NEXT_HEADER_IPV4, NEXT_HEADER_IPV6,
};

/// Replay windows the fixture SAs use: the smallest the crate allows (so a short input slides it and reaches
/// RFC 4303 appendix A case A of ESN reconstruction) and the production default.
pub const WINDOWS: [u32; 2] = [64, esp::DEFAULT_REPLAY_WINDOW];

/// Number of fixture SAs: every transform, with and without ESN, with each window.
pub const N_SAS: usize = Transform::ALL.len() * 2 * WINDOWS.len();

/// The parameters of fixture SA `i` (taken modulo [`N_SAS`]).
///
/// SPIs are distinct, non-zero, and differ in every byte so that none is a prefix or byte-rotation of another.
pub fn params(i: usize) -> SaParams {
    let i = i % N_SAS;
    let t = Transform::ALL[i % Transform::ALL.len()];
    let esn = (i / Transform::ALL.len()) % 2 == 1;
    let window = WINDOWS[i / (Transform::ALL.len() * 2)];
    let b = i as u8;
    let spi = u32::from_be_bytes([0xc0 | b, 0x11 + b, 0x5a ^ b, 0x01 + b]);
    SaParams {
        spi,
        transform: t,
        esn,
        replay_window: window,
    }
}

/// The raw keying material of fixture SA `i`: cipher key, then salt (AEADs), then integrity key.
pub fn key_bytes(i: usize) -> Vec<u8> {
    let i = i % N_SAS;
    let len = params(i).transform.keymat_len();
    (0..len)
        .map(|k| (k as u8).wrapping_mul(31) ^ (i as u8).wrapping_mul(97) ^ 0xa5)
        .collect()
}

/// Fixed, per-SA keying material (inbound and outbound of one SA share it, as the two ends of one SA do).
pub fn keys(i: usize) -> KeyMaterial {
    KeyMaterial::new(params(i).transform, &key_bytes(i)).expect("fixture key length")
}

/// Seals an ESP packet for fixture SA `i` by hand, independently of `esp`'s encapsulation: `plaintext` is the
/// whole encrypted part (payload, padding, pad length, next header) exactly as given, so a test can authenticate
/// a packet `OutboundSa::encap` would never produce (bad padding, a dummy, a wrong next header). `seq` is the
/// full sequence number; its high half goes into the ICV only for an ESN SA. `iv` supplies the explicit IV (its
/// first 8 bytes for the AEADs). `plaintext` must be a multiple of the transform's block length for CBC.
pub fn seal_raw(i: usize, seq: u64, iv: &[u8; 16], plaintext: &[u8]) -> Vec<u8> {
    use aws_lc_rs::{aead, cipher, hmac};
    let p = params(i);
    let t = p.transform;
    let k = key_bytes(i);
    let ck = &k[..t.cipher_key_len()];
    let mut wire = Vec::with_capacity(t.header_overhead() + plaintext.len() + t.icv_len());
    wire.extend(p.spi.to_be_bytes());
    wire.extend((seq as u32).to_be_bytes());
    wire.extend(&iv[..t.iv_len()]);
    let mut body = plaintext.to_vec();
    if t.is_aead() {
        // RFC 4106 4 / RFC 7634 2: nonce = salt || IV; RFC 4106 5: AAD = SPI || [seq high] || seq low.
        let alg = match t {
            Transform::AesGcm128 => &aead::AES_128_GCM,
            Transform::AesGcm256 => &aead::AES_256_GCM,
            _ => &aead::CHACHA20_POLY1305,
        };
        let key = aead::LessSafeKey::new(aead::UnboundKey::new(alg, ck).expect("key"));
        let mut n = [0u8; 12];
        n[..4].copy_from_slice(&k[t.cipher_key_len()..t.cipher_key_len() + 4]);
        n[4..].copy_from_slice(&iv[..8]);
        let mut aad = p.spi.to_be_bytes().to_vec();
        if p.esn {
            aad.extend(((seq >> 32) as u32).to_be_bytes());
        }
        aad.extend((seq as u32).to_be_bytes());
        let tag = key
            .seal_in_place_separate_tag(
                aead::Nonce::assume_unique_for_key(n),
                aead::Aad::from(&aad[..]),
                &mut body,
            )
            .expect("seal");
        wire.extend(&body);
        wire.extend(tag.as_ref());
    } else {
        // RFC 3602: AES-CBC with the explicit IV; RFC 4303 2.2.1/3.3.2.1 and RFC 4868: HMAC-SHA-256-128 over
        // SPI .. ciphertext, then the high half of an extended sequence number.
        let alg = if ck.len() == 16 {
            &cipher::AES_128
        } else {
            &cipher::AES_256
        };
        let key = cipher::EncryptingKey::cbc(cipher::UnboundCipherKey::new(alg, ck).expect("key"))
            .expect("cbc");
        key.less_safe_encrypt(
            &mut body,
            cipher::EncryptionContext::Iv128(aws_lc_rs::iv::FixedLength::from(*iv)),
        )
        .expect("block-aligned plaintext");
        wire.extend(&body);
        let mac = hmac::Key::new(hmac::HMAC_SHA256, &k[t.cipher_key_len()..]);
        let mut ctx = hmac::Context::with_key(&mac);
        ctx.update(&wire);
        if p.esn {
            ctx.update(&((seq >> 32) as u32).to_be_bytes());
        }
        wire.extend(&ctx.sign().as_ref()[..16]);
    }
    wire
}

/// A Sad holding every fixture SA, each with a fresh replay window.
pub fn new_sad() -> Sad {
    let mut sad = Sad::new();
    for i in 0..N_SAS {
        let prev = sad.insert(InboundSa::new(params(i), &keys(i)).expect("fixture SA"));
        assert!(prev.is_none(), "fixture SPIs must be distinct");
    }
    sad
}

/// The sending half matching fixture SA `i`.
pub fn outbound(i: usize) -> OutboundSa {
    OutboundSa::new(params(i), &keys(i)).expect("fixture SA")
}

/// Index of the fixture SA with this SPI.
pub fn index_of(spi: u32) -> Option<usize> {
    (0..N_SAS).find(|&i| params(i).spi == spi)
}

/// Drops plus delivered packets: every decapsulation attempt an SA saw adds exactly one to this.
pub fn events(c: &Counters) -> u64 {
    c.packets + c.drop_replay + c.drop_auth + c.drop_malformed + c.drop_dummy
}

/// Bytes written around a packet so that a write outside its window is seen.
pub const CANARY: u8 = 0xcd;

/// What one checked decapsulation did.
pub struct Outcome {
    /// `Sad::decap`'s result.
    pub result: Result<(u32, esp::Inner), DropReason>,
    /// On success, the decapsulated inner packet.
    pub inner: Vec<u8>,
}

/// Decapsulates `wire` (a copy of it, placed with `headroom` canary bytes before and `tailroom` after) through
/// `sad`, and asserts every invariant that must hold whatever the bytes are:
///
/// * `Sad::decap` does not panic (the fuzzer reports a panic anywhere as a crash);
/// * exactly one counter moves: the addressed SA's matching drop counter, or its `packets` (and `bytes` by the
///   inner length) on success, or the Sad's own no-SA / malformed counter; no other SA changes at all;
/// * a failed decapsulation leaves the SA's `highest_seq()` unchanged (a forged or replayed packet never moves
///   the window; an authenticated dummy would, but the fuzz targets never authenticate a dummy);
/// * on success the packet window lies inside the original one, the bytes outside the original window are
///   untouched, the next header matches the inner version nibble, `Inner::seq`'s low half is the wire
///   sequence number, and the window's right edge is now at least `Inner::seq`.
pub fn checked_decap(sad: &mut Sad, wire: &[u8], headroom: usize, tailroom: usize) -> Outcome {
    checked_decap_with(sad, wire, headroom, tailroom, false)
}

/// [`checked_decap`] for a packet the caller authenticated itself (see [`seal_raw`]): such a packet may move the
/// replay window and still be dropped (as a dummy, or as malformed after its ICV verified), so that one
/// assertion is left to the caller, who knows what the window should do.
pub fn checked_decap_with(
    sad: &mut Sad,
    wire: &[u8],
    headroom: usize,
    tailroom: usize,
    authentic: bool,
) -> Outcome {
    let spi = wire
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let sa_before = spi
        .and_then(|s| sad.get(s))
        .map(|sa| (*sa.counters(), sa.highest_seq()));
    let others_before: Vec<(u32, Counters, u64)> = sad
        .iter()
        .filter(|sa| Some(sa.params().spi) != spi)
        .map(|sa| (sa.params().spi, *sa.counters(), sa.highest_seq()))
        .collect();
    let (no_sa_before, malformed_before) = (sad.no_sa_drops(), sad.malformed_drops());

    let mut buf = vec![CANARY; headroom + wire.len() + tailroom];
    let (start, end) = (headroom, headroom + wire.len());
    buf[start..end].copy_from_slice(wire);
    let mut pkt = PacketBuf::new(&mut buf, start, end);
    let result = sad.decap(&mut pkt);
    let (out_start, out_end) = (pkt.start(), pkt.end());
    let inner = if result.is_ok() {
        pkt.as_slice().to_vec()
    } else {
        Vec::new()
    };

    // Nothing outside the packet's window was written, success or not.
    assert!(
        buf[..start].iter().all(|&b| b == CANARY),
        "decap wrote into the headroom"
    );
    assert!(
        buf[end..].iter().all(|&b| b == CANARY),
        "decap wrote into the tailroom"
    );

    // Other SAs are untouched.
    for (other, c, top) in others_before {
        let sa = sad.get(other).expect("SA vanished");
        assert_eq!(
            *sa.counters(),
            c,
            "decap of SPI {spi:x?} moved SA {other:#x}'s counters"
        );
        assert_eq!(
            sa.highest_seq(),
            top,
            "decap of SPI {spi:x?} moved SA {other:#x}'s window"
        );
    }

    match (spi, sa_before) {
        (None, _) => {
            assert_eq!(
                result,
                Err(DropReason::Malformed),
                "packet shorter than an SPI"
            );
            assert_eq!(sad.malformed_drops(), malformed_before + 1);
            assert_eq!(sad.no_sa_drops(), no_sa_before);
        }
        (Some(s), None) => {
            assert_eq!(result, Err(DropReason::NoSa(s)), "unknown SPI");
            assert_eq!(sad.no_sa_drops(), no_sa_before + 1);
            assert_eq!(sad.malformed_drops(), malformed_before);
        }
        (Some(s), Some((c0, top0))) => {
            assert_eq!(sad.no_sa_drops(), no_sa_before);
            assert_eq!(sad.malformed_drops(), malformed_before);
            let sa = sad.get(s).expect("SA vanished");
            let c1 = *sa.counters();
            let top1 = sa.highest_seq();
            assert_eq!(
                events(&c1),
                events(&c0) + 1,
                "one decap must move exactly one counter: {c0:?} -> {c1:?} for {result:?}"
            );
            let mut expect = c0;
            match result {
                Ok((got_spi, inn)) => {
                    assert_eq!(got_spi, s);
                    assert!(
                        start <= out_start && out_start <= out_end && out_end <= end,
                        "decapsulated packet {out_start}..{out_end} outside the received {start}..{end}"
                    );
                    let t = sa.params().transform;
                    assert!(
                        inner.len() + t.header_overhead() + 2 + t.icv_len() <= wire.len(),
                        "inner packet longer than the ESP packet could carry"
                    );
                    let version = inner.first().map(|b| b >> 4);
                    match inn.next_header {
                        NEXT_HEADER_IPV4 => assert_eq!(version, Some(4)),
                        NEXT_HEADER_IPV6 => assert_eq!(version, Some(6)),
                        nh => panic!("delivered next header {nh}"),
                    }
                    assert_eq!(
                        inn.seq as u32,
                        u32::from_be_bytes([wire[4], wire[5], wire[6], wire[7]]),
                        "Inner::seq's low half is not the wire sequence number"
                    );
                    if !sa.params().esn {
                        assert!(
                            inn.seq <= u32::MAX as u64,
                            "32-bit SA produced a 64-bit seq"
                        );
                    }
                    assert_eq!(
                        top1,
                        top0.max(inn.seq),
                        "window edge after accepting {}",
                        inn.seq
                    );
                    expect.packets += 1;
                    expect.bytes += inner.len() as u64;
                }
                Err(e) => {
                    assert!(
                        authentic || top1 == top0,
                        "failed decap ({e:?}) moved highest_seq from {top0} to {top1}"
                    );
                    match e {
                        DropReason::Replay => expect.drop_replay += 1,
                        DropReason::AuthFailed => expect.drop_auth += 1,
                        DropReason::Malformed => expect.drop_malformed += 1,
                        DropReason::Dummy => expect.drop_dummy += 1,
                        DropReason::NoSa(x) => {
                            panic!("SA {s:#x} exists but decap said NoSa({x:#x})")
                        }
                        _ => panic!("unknown DropReason {e:?}"),
                    }
                }
            }
            assert_eq!(c1, expect, "counters after {result:?}");
        }
    }
    Outcome { result, inner }
}

/// A little cursor over fuzzer bytes that yields zeros once the input is used up.
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    /// Reads from `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Bytes { data }
    }

    /// True when every byte has been taken.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// One byte, or 0.
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// Two bytes big-endian, or what is left padded with zeros.
    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }

    /// Up to `n` bytes (fewer at the end of input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
}

/// An inner IP packet of `len` (at least 1) bytes from `src`, with the version nibble forced to 4 or 6.
pub fn ip_payload(src: &[u8], len: usize, v6: bool) -> Vec<u8> {
    let len = len.max(1);
    let mut p: Vec<u8> = (0..len)
        .map(|k| src.get(k).copied().unwrap_or(k as u8))
        .collect();
    p[0] = (p[0] & 0x0f) | if v6 { 0x60 } else { 0x40 };
    p
}

/// Encapsulates `payload` with `out` into a fresh buffer with exactly the room the transform needs and returns the
/// ESP packet (SPI first).
pub fn encap(out: &mut OutboundSa, payload: &[u8]) -> Vec<u8> {
    let t = out.params().transform;
    let head = t.header_overhead();
    let mut buf = vec![0u8; head + payload.len() + t.trailer_overhead()];
    buf[head..head + payload.len()].copy_from_slice(payload);
    let mut pkt = PacketBuf::new(&mut buf, head, head + payload.len());
    out.encap(&mut pkt).expect("encap with enough room");
    pkt.as_slice().to_vec()
}
