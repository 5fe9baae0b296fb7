//! Fixed-key IKE SK ciphers (RFC 7296 3.14, RFC 5282) and SK/SKF message assembly for the targets that fuzz
//! what only a peer holding the keys can send: the decrypted payload chain and fragment reassembly.

use std::sync::OnceLock;

use ike::crypto::{IkeEncr, Integ, SkCipher};
use ike::message::{Header, PayloadType, HEADER_LEN};

/// Every encryption/integrity pair vmsecd negotiates for IKE.
pub const SUITES: [(IkeEncr, Option<Integ>); 7] = [
    (IkeEncr::AesGcm16_128, None),
    (IkeEncr::AesGcm16_256, None),
    (IkeEncr::ChaCha20Poly1305, None),
    (IkeEncr::AesCbc128, Some(Integ::HmacSha256_128)),
    (IkeEncr::AesCbc256, Some(Integ::HmacSha256_128)),
    (IkeEncr::AesCbc128, Some(Integ::HmacSha384_192)),
    (IkeEncr::AesCbc256, Some(Integ::HmacSha512_256)),
];

/// The cipher of suite `i` (modulo [`SUITES`]) under fixed keys. Sender and receiver use the same one, as the
/// two ends of one direction of an IKE SA use the same keys.
///
/// Built once per process: `SkCipher::new` seeds its IV counter from aws-lc's DRBG, and that seeding (CPU
/// jitter entropy) took most of a fragment target's time when done per input. Only the AEAD IV counter carries
/// over between inputs; no outcome depends on it.
pub fn cipher(i: usize) -> &'static SkCipher {
    static CIPHERS: OnceLock<Vec<SkCipher>> = OnceLock::new();
    let all = CIPHERS.get_or_init(|| (0..SUITES.len()).map(build).collect());
    &all[i % SUITES.len()]
}

fn build(i: usize) -> SkCipher {
    let (encr, integ) = SUITES[i];
    let sk_e: Vec<u8> = (0..encr.key_len())
        .map(|k| (k as u8).wrapping_mul(29) ^ 0x3c ^ i as u8)
        .collect();
    let sk_a: Vec<u8> = (0..integ.map_or(0, |g| g.key_len()))
        .map(|k| (k as u8).wrapping_mul(53) ^ 0x96)
        .collect();
    SkCipher::new(encr, integ, &sk_e, &sk_a).expect("fixture suite")
}

/// A whole IKE message whose only payload is an SK payload holding `plain` (first inner payload `first`),
/// encrypted under `c`: header with final length, SK generic header, then IV, ciphertext and ICV over the AAD
/// of RFC 5282 5.1 (header through the SK payload header).
pub fn seal_message(c: &SkCipher, mut header: Header, first: u8, plain: &[u8]) -> Vec<u8> {
    let sk_len = 4 + c.encrypted_len(plain.len());
    header.next_payload = PayloadType::SK;
    header.length = (HEADER_LEN + sk_len) as u32;
    let mut msg = Vec::with_capacity(header.length as usize);
    header.encode(&mut msg);
    msg.push(first);
    msg.push(0);
    msg.extend_from_slice(&(sk_len as u16).to_be_bytes());
    let body = c.encrypt(&msg, plain);
    msg.extend_from_slice(&body);
    msg
}
