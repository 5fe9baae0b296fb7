//! The Encrypted (SK) payload: RFC 7296 3.14 for AES-CBC with HMAC-SHA2 (RFC 4868), RFC 5282 for AES-GCM,
//! RFC 7634 for ChaCha20-Poly1305.
//!
//! On the wire, after the SK payload's generic header:
//!
//! ```text
//! IV | encrypted( inner payloads | Padding | Pad Length ) | ICV
//! ```
//!
//! The caller builds the IKE header and the SK payload header with their final lengths first (they are
//! authenticated), using [`SkCipher::encrypted_len`], then calls [`SkCipher::encrypt`] and appends its output.

use std::sync::atomic::{AtomicU64, Ordering};

use aws_lc_rs::{aead, cipher, constant_time, hmac, rand};
use zeroize::Zeroizing;

use super::CryptoError;

/// An encryption algorithm for the IKE SA (transform type 1), with its key length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IkeEncr {
    /// ENCR_AES_GCM_16 (id 20) with a 128-bit key (RFC 5282).
    AesGcm16_128,
    /// ENCR_AES_GCM_16 (id 20) with a 256-bit key (RFC 5282).
    AesGcm16_256,
    /// ENCR_CHACHA20_POLY1305 (id 28, RFC 7634).
    ChaCha20Poly1305,
    /// ENCR_AES_CBC (id 12) with a 128-bit key; needs an [`Integ`].
    AesCbc128,
    /// ENCR_AES_CBC (id 12) with a 256-bit key; needs an [`Integ`].
    AesCbc256,
}

impl IkeEncr {
    /// The algorithm for a transform id and its Key Length attribute (in bits), if we implement it.
    pub fn from_transform(id: u16, key_bits: Option<u16>) -> Option<IkeEncr> {
        match (id, key_bits) {
            (20, Some(128)) => Some(IkeEncr::AesGcm16_128),
            (20, Some(256)) => Some(IkeEncr::AesGcm16_256),
            (28, None) => Some(IkeEncr::ChaCha20Poly1305),
            (12, Some(128)) => Some(IkeEncr::AesCbc128),
            (12, Some(256)) => Some(IkeEncr::AesCbc256),
            _ => None,
        }
    }

    /// The IANA transform id.
    pub fn id(self) -> u16 {
        match self {
            IkeEncr::AesGcm16_128 | IkeEncr::AesGcm16_256 => 20,
            IkeEncr::ChaCha20Poly1305 => 28,
            IkeEncr::AesCbc128 | IkeEncr::AesCbc256 => 12,
        }
    }

    /// The Key Length attribute (bits), absent for ChaCha20-Poly1305 whose key length is fixed.
    pub fn key_bits(self) -> Option<u16> {
        match self {
            IkeEncr::AesGcm16_128 | IkeEncr::AesCbc128 => Some(128),
            IkeEncr::AesGcm16_256 | IkeEncr::AesCbc256 => Some(256),
            IkeEncr::ChaCha20Poly1305 => None,
        }
    }

    /// True for the combined-mode algorithms, which take no integrity transform.
    pub fn is_aead(self) -> bool {
        !matches!(self, IkeEncr::AesCbc128 | IkeEncr::AesCbc256)
    }

    /// Bytes of the cipher key proper.
    pub fn cipher_key_len(self) -> usize {
        match self {
            IkeEncr::AesGcm16_128 | IkeEncr::AesCbc128 => 16,
            IkeEncr::AesGcm16_256 | IkeEncr::ChaCha20Poly1305 | IkeEncr::AesCbc256 => 32,
        }
    }

    /// Bytes of salt taken after the cipher key (RFC 5282, RFC 7634): 4 for the AEADs.
    pub fn salt_len(self) -> usize {
        if self.is_aead() {
            4
        } else {
            0
        }
    }

    /// Length of SK_ei / SK_er: the cipher key followed by the salt.
    pub fn key_len(self) -> usize {
        self.cipher_key_len() + self.salt_len()
    }

    /// Length of the IV at the start of the SK payload body: 8 for the AEADs, the AES block for CBC.
    pub fn iv_len(self) -> usize {
        if self.is_aead() {
            8
        } else {
            16
        }
    }

    /// The block size that padding aligns to. The AEADs are stream modes and need none beyond the Pad Length.
    fn block_len(self) -> usize {
        if self.is_aead() {
            1
        } else {
            16
        }
    }
}

/// An integrity algorithm for the IKE SA (transform type 3), RFC 4868.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Integ {
    /// AUTH_HMAC_SHA2_256_128.
    HmacSha256_128 = 12,
    /// AUTH_HMAC_SHA2_384_192.
    HmacSha384_192 = 13,
    /// AUTH_HMAC_SHA2_512_256.
    HmacSha512_256 = 14,
}

impl Integ {
    /// The algorithm for an IANA transform id, if we implement it.
    pub fn from_id(id: u16) -> Option<Integ> {
        match id {
            12 => Some(Integ::HmacSha256_128),
            13 => Some(Integ::HmacSha384_192),
            14 => Some(Integ::HmacSha512_256),
            _ => None,
        }
    }

    /// The IANA transform id.
    pub fn id(self) -> u16 {
        self as u16
    }

    /// Length of SK_ai / SK_ar: the HMAC output length (RFC 4868).
    pub fn key_len(self) -> usize {
        match self {
            Integ::HmacSha256_128 => 32,
            Integ::HmacSha384_192 => 48,
            Integ::HmacSha512_256 => 64,
        }
    }

    /// Length of the truncated ICV: half the HMAC output (RFC 4868).
    pub fn icv_len(self) -> usize {
        self.key_len() / 2
    }

    fn algorithm(self) -> hmac::Algorithm {
        match self {
            Integ::HmacSha256_128 => hmac::HMAC_SHA256,
            Integ::HmacSha384_192 => hmac::HMAC_SHA384,
            Integ::HmacSha512_256 => hmac::HMAC_SHA512,
        }
    }
}

/// The keyed cipher of one direction of an IKE SA: encrypts outgoing SK payloads with SK_e{i,r} and SK_a{i,r},
/// or decrypts incoming ones.
///
/// Build one per direction (see [`crate::crypto::IkeKeys::ciphers`]). Keys are held by aws-lc, which cleanses
/// them when freed.
pub struct SkCipher {
    encr: IkeEncr,
    integ: Option<Integ>,
    inner: Inner,
}

enum Inner {
    Aead {
        key: aead::LessSafeKey,
        salt: [u8; 4],
        /// The next explicit IV. It starts at a random value, so that two `SkCipher`s that a caller might
        /// build for the same key (after a bug, or a restart of the state machine) still do not collide.
        next_iv: AtomicU64,
    },
    /// Boxed: the AEAD variant is the common one.
    CbcHmac(Box<CbcHmac>),
}

struct CbcHmac {
    enc: cipher::EncryptingKey,
    dec: cipher::DecryptingKey,
    mac: hmac::Key,
    icv_len: usize,
}

impl SkCipher {
    /// Builds the cipher from SK_e (cipher key, then salt for the AEADs) and SK_a (empty for the AEADs).
    pub fn new(
        encr: IkeEncr,
        integ: Option<Integ>,
        sk_e: &[u8],
        sk_a: &[u8],
    ) -> Result<SkCipher, CryptoError> {
        if sk_e.len() != encr.key_len() {
            return Err(CryptoError::BadLength {
                what: "SK_e",
                got: sk_e.len(),
            });
        }
        let (key, salt) = sk_e.split_at(encr.cipher_key_len());
        let inner = match (encr.is_aead(), integ) {
            (true, None) => {
                if !sk_a.is_empty() {
                    return Err(CryptoError::BadLength {
                        what: "SK_a",
                        got: sk_a.len(),
                    });
                }
                let alg = match encr {
                    IkeEncr::AesGcm16_128 => &aead::AES_128_GCM,
                    IkeEncr::AesGcm16_256 => &aead::AES_256_GCM,
                    _ => &aead::CHACHA20_POLY1305,
                };
                let key = aead::UnboundKey::new(alg, key)
                    .map_err(|_| CryptoError::Backend("AEAD key"))?;
                let mut start = [0u8; 8];
                rand::fill(&mut start).map_err(|_| CryptoError::Backend("IV seed"))?;
                Inner::Aead {
                    key: aead::LessSafeKey::new(key),
                    salt: salt.try_into().map_err(|_| CryptoError::BadLength {
                        what: "SK_e salt",
                        got: salt.len(),
                    })?,
                    next_iv: AtomicU64::new(u64::from_be_bytes(start)),
                }
            }
            (false, Some(integ)) => {
                if sk_a.len() != integ.key_len() {
                    return Err(CryptoError::BadLength {
                        what: "SK_a",
                        got: sk_a.len(),
                    });
                }
                let alg = if encr == IkeEncr::AesCbc128 {
                    &cipher::AES_128
                } else {
                    &cipher::AES_256
                };
                let unbound = || {
                    cipher::UnboundCipherKey::new(alg, key)
                        .map_err(|_| CryptoError::Backend("AES key"))
                };
                Inner::CbcHmac(Box::new(CbcHmac {
                    enc: cipher::EncryptingKey::cbc(unbound()?)
                        .map_err(|_| CryptoError::Backend("AES-CBC"))?,
                    dec: cipher::DecryptingKey::cbc(unbound()?)
                        .map_err(|_| CryptoError::Backend("AES-CBC"))?,
                    mac: hmac::Key::new(integ.algorithm(), sk_a),
                    icv_len: integ.icv_len(),
                }))
            }
            // RFC 5282: an AEAD is negotiated without an integrity transform (or with NONE).
            (true, Some(_)) => {
                return Err(CryptoError::InvalidSuite(
                    "an AEAD takes no integrity transform",
                ))
            }
            (false, None) => {
                return Err(CryptoError::InvalidSuite(
                    "AES-CBC needs an integrity transform",
                ))
            }
        };
        Ok(SkCipher { encr, integ, inner })
    }

    /// The encryption algorithm.
    pub fn encr(&self) -> IkeEncr {
        self.encr
    }

    /// The integrity algorithm, `None` for the AEADs.
    pub fn integ(&self) -> Option<Integ> {
        self.integ
    }

    /// Length of the ICV at the end of the SK payload.
    pub fn icv_len(&self) -> usize {
        match self.integ {
            Some(integ) => integ.icv_len(),
            None => 16,
        }
    }

    fn padded_len(&self, plain_len: usize) -> usize {
        // Inner payloads, Padding, Pad Length: a multiple of the block size.
        (plain_len + 1).div_ceil(self.encr.block_len()) * self.encr.block_len()
    }

    /// Exactly how many bytes [`SkCipher::encrypt`] returns for `plain_len` bytes of inner payloads: the SK
    /// payload's length is this plus its 4-byte generic header.
    pub fn encrypted_len(&self, plain_len: usize) -> usize {
        self.encr.iv_len() + self.padded_len(plain_len) + self.icv_len()
    }

    /// What encryption adds to the inner payloads: IV, Padding, Pad Length and ICV.
    pub fn overhead(&self, plain_len: usize) -> usize {
        self.encrypted_len(plain_len) - plain_len
    }

    /// The smallest valid SK payload body: IV, one block (or just the Pad Length for the AEADs), ICV.
    pub fn min_encrypted_len(&self) -> usize {
        self.encrypted_len(0)
    }

    /// Encrypts the inner payloads and returns `IV | ciphertext | ICV`, [`SkCipher::encrypted_len`] bytes.
    ///
    /// `aad` is everything in the message before the IV: the IKE header and every payload up to and including
    /// the SK payload's generic header, all with their final lengths. `Err` only if the cryptographic backend
    /// fails.
    pub fn try_encrypt(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match &self.inner {
            Inner::Aead { key, salt, next_iv } => {
                let iv = next_iv.fetch_add(1, Ordering::Relaxed).to_be_bytes();
                self.seal_aead(key, salt, aad, plaintext, iv)
            }
            Inner::CbcHmac(c) => {
                let mut out = Vec::with_capacity(self.encrypted_len(plaintext.len()));
                out.resize(16, 0);
                self.pad_into(&mut out, plaintext);
                let (iv_slot, body) = out
                    .split_first_chunk_mut::<16>()
                    .ok_or(CryptoError::Backend("AES-CBC"))?;
                //= https://www.rfc-editor.org/rfc/rfc7296#section-3.14
                //# Senders MUST select a new unpredictable IV for every message; recipients MUST accept any value.
                let ctx = c
                    .enc
                    .encrypt(body)
                    .map_err(|_| CryptoError::Backend("AES-CBC encrypt"))?;
                let iv: &[u8] = (&ctx)
                    .try_into()
                    .map_err(|_| CryptoError::Backend("AES-CBC IV"))?;
                *iv_slot = iv
                    .try_into()
                    .map_err(|_| CryptoError::Backend("AES-CBC IV"))?;
                let tag = cbc_icv(&c.mac, aad, &out);
                let icv = tag
                    .as_ref()
                    .get(..c.icv_len)
                    .ok_or(CryptoError::Backend("HMAC"))?;
                out.extend_from_slice(icv);
                Ok(out)
            }
        }
    }

    /// [`SkCipher::try_encrypt`] for callers with no way to report a failure (messages we build ourselves).
    #[allow(clippy::expect_used)]
    // Cannot fail: aws-lc's AEAD seal fails only for inputs beyond 2^36 bytes (an IKE message is under 64 KiB),
    // CBC encryption only for partial blocks (`pad_into` pads to whole blocks), and every length taken apart
    // above is one this function wrote itself.
    pub fn encrypt(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        self.try_encrypt(aad, plaintext)
            .expect("sealing an IKE message we built cannot fail")
    }

    /// AEAD encryption with a given explicit IV (the public entry point draws it from the counter).
    fn seal_aead(
        &self,
        key: &aead::LessSafeKey,
        salt: &[u8; 4],
        aad: &[u8],
        plaintext: &[u8],
        iv: [u8; 8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(self.encrypted_len(plaintext.len()));
        out.extend_from_slice(&iv);
        self.pad_into(&mut out, plaintext);
        let (_, body) = out
            .split_first_chunk_mut::<8>()
            .ok_or(CryptoError::Backend("AEAD"))?;
        let tag = key
            .seal_in_place_separate_tag(nonce(salt, &iv), aead::Aad::from(aad), body)
            .map_err(|_| CryptoError::Backend("AEAD seal"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Appends inner payloads, Padding (zeros) and the Pad Length.
    fn pad_into(&self, out: &mut Vec<u8>, plaintext: &[u8]) {
        let pad = self.padded_len(plaintext.len()) - plaintext.len() - 1;
        out.extend_from_slice(plaintext);
        out.resize(out.len() + pad, 0);
        out.push(pad as u8); // < 16
    }

    /// Checks the ICV of `body` (`IV | ciphertext | ICV`, everything after the SK payload's generic header)
    /// and returns the inner payloads, padding removed.
    ///
    /// `aad` is everything in the message before the IV, exactly as received.
    pub fn decrypt(&self, aad: &[u8], body: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let bad_length = CryptoError::BadLength {
            what: "SK payload",
            got: body.len(),
        };
        if body.len() < self.min_encrypted_len() {
            return Err(bad_length);
        }
        let icv_start = body.len() - self.icv_len();
        let (covered, icv) = body.split_at_checked(icv_start).ok_or(bad_length.clone())?;
        let mut plain = match &self.inner {
            Inner::Aead { key, salt, .. } => {
                let (iv, ciphertext) =
                    covered.split_first_chunk::<8>().ok_or(bad_length.clone())?;
                let mut buf = Zeroizing::new(ciphertext.to_vec());
                //= https://www.rfc-editor.org/rfc/rfc5282#section-5.1
                //# The associated data (A) MUST consist of the partial contents of the IKEv2 message, starting
                //# from the first octet of the Fixed IKE Header through the last octet of the Payload Header of the
                //# Encrypted Payload (i.e., the fourth octet of the Encrypted Payload), as shown in Figure 3.
                key.open_in_place_separate_tag(
                    nonce(salt, iv),
                    aead::Aad::from(aad),
                    icv,
                    &mut buf,
                )
                .map_err(|_| CryptoError::AuthenticationFailed)?;
                buf
            }
            Inner::CbcHmac(c) => {
                let (iv, ciphertext) = covered
                    .split_first_chunk::<16>()
                    .ok_or(bad_length.clone())?;
                if !ciphertext.len().is_multiple_of(16) {
                    return Err(bad_length);
                }
                let tag = cbc_icv(&c.mac, aad, covered);
                let expected = tag
                    .as_ref()
                    .get(..c.icv_len)
                    .ok_or(CryptoError::Backend("HMAC"))?;
                constant_time::verify_slices_are_equal(expected, icv)
                    .map_err(|_| CryptoError::AuthenticationFailed)?;
                let mut buf = Zeroizing::new(ciphertext.to_vec());
                c.dec
                    .decrypt(&mut buf, cipher::DecryptionContext::Iv128((*iv).into()))
                    .map_err(|_| CryptoError::Backend("AES-CBC decrypt"))?;
                buf
            }
        };
        // Authenticated: a bad Pad Length is the peer's bug, not an attack on the ICV.
        let pad = usize::from(*plain.last().ok_or(CryptoError::BadPadding)?);
        let len = plain
            .len()
            .checked_sub(pad + 1)
            .ok_or(CryptoError::BadPadding)?;
        plain.truncate(len);
        Ok(plain)
    }
}

/// aws-lc wipes the keys it holds when they are freed (`OPENSSL_free` cleanses, `SymmetricCipherKey` and
/// `HMAC_CTX_cleanup` zeroize); the salt is ours to wipe.
impl Drop for SkCipher {
    fn drop(&mut self) {
        if let Inner::Aead { salt, .. } = &mut self.inner {
            zeroize::Zeroize::zeroize(salt);
        }
    }
}

impl std::fmt::Debug for SkCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkCipher")
            .field("encr", &self.encr)
            .field("integ", &self.integ)
            .field("keys", &"redacted")
            .finish()
    }
}

/// The 12-byte AEAD nonce: the 4-byte salt from SK_e, then the 8-byte explicit IV (RFC 5282,
/// RFC 7634).
fn nonce(salt: &[u8; 4], iv: &[u8; 8]) -> aead::Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(iv);
    aead::Nonce::assume_unique_for_key(n)
}

//= https://www.rfc-editor.org/rfc/rfc7296#section-3.14
//# Integrity Checksum Data is the cryptographic checksum of the
//# entire message starting with the Fixed IKE header through the Pad
//# Length.
fn cbc_icv(mac: &hmac::Key, aad: &[u8], iv_and_ciphertext: &[u8]) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(mac);
    ctx.update(aad);
    ctx.update(iv_and_ciphertext);
    ctx.sign()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::hex;

    const ALL: [(IkeEncr, Option<Integ>); 9] = [
        (IkeEncr::AesGcm16_128, None),
        (IkeEncr::AesGcm16_256, None),
        (IkeEncr::ChaCha20Poly1305, None),
        (IkeEncr::AesCbc128, Some(Integ::HmacSha256_128)),
        (IkeEncr::AesCbc128, Some(Integ::HmacSha384_192)),
        (IkeEncr::AesCbc128, Some(Integ::HmacSha512_256)),
        (IkeEncr::AesCbc256, Some(Integ::HmacSha256_128)),
        (IkeEncr::AesCbc256, Some(Integ::HmacSha384_192)),
        (IkeEncr::AesCbc256, Some(Integ::HmacSha512_256)),
    ];

    fn cipher(encr: IkeEncr, integ: Option<Integ>) -> SkCipher {
        let sk_e: Vec<u8> = (0..encr.key_len() as u8).collect();
        let sk_a: Vec<u8> = (100..100 + integ.map_or(0, |i| i.key_len()) as u8).collect();
        SkCipher::new(encr, integ, &sk_e, &sk_a).unwrap()
    }

    /// RFC 7634 Appendix B: an INFORMATIONAL request carrying a SET_WINDOW_SIZE notification, encrypted with
    /// ChaCha20-Poly1305, IV 10..17. The expected bytes are the whole 69-byte message of the RFC (as also
    /// used by strongSwan's test_message_chapoly.c).
    #[test]
    fn chacha20poly1305_rfc7634_appendix_b() {
        let sk_e = hex(
            "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f
             a0a1a2a3",
        );
        let c = SkCipher::new(IkeEncr::ChaCha20Poly1305, None, &sk_e, &[]).unwrap();
        // IKE header: SPIs, next payload SK (46), version 2.0, INFORMATIONAL (37), flags 0,
        // message ID 9, length 69; SK header: next payload Notify (41), length 41.
        let aad = hex(
            "c0c1c2c3c4c5c6c7 d0d1d2d3d4d5d6d7 2e 20 25 00 00000009 00000045
             29 00 0029",
        );
        // Notify: no next payload, length 12, protocol 0, SPI size 0, SET_WINDOW_SIZE (16385), window 10.
        let inner = hex("00 00 000c 00 00 4001 0000000a");
        let expected = hex(
            "c0c1c2c3c4c5c6c7d0d1d2d3d4d5d6d72e20250000000009000000452900002910
             1112131415161761039470 1f8d017f7c129248896b71bfe25236efd7cdc670
             66906315b2",
        );
        assert_eq!(c.encrypted_len(inner.len()), 41 - 4);
        let Inner::Aead { key, salt, .. } = &c.inner else {
            unreachable!()
        };
        let body = c
            .seal_aead(
                key,
                salt,
                &aad,
                &inner,
                hex("1011121314151617").try_into().unwrap(),
            )
            .unwrap();
        let mut message = aad.clone();
        message.extend_from_slice(&body);
        assert_eq!(message, expected);
        assert_eq!(*c.decrypt(&aad, &body).unwrap(), inner);
    }

    /// Every algorithm, every inner length 0..100: the length promised, a round trip, and padding per 3.14.
    #[test]
    fn round_trip_every_suite_and_length() {
        for (encr, integ) in ALL {
            let c = cipher(encr, integ);
            let aad = b"IKE header + SK header";
            for len in 0..100usize {
                let plain: Vec<u8> = (0..len).map(|i| i as u8 ^ 0x5a).collect();
                let body = c.encrypt(aad, &plain);
                assert_eq!(body.len(), c.encrypted_len(len), "{encr:?} {len}");
                assert_eq!(c.overhead(len), body.len() - len);
                assert_eq!(
                    *c.decrypt(aad, &body).unwrap(),
                    plain,
                    "{encr:?} {integ:?} {len}"
                );
                if !encr.is_aead() {
                    assert_eq!((body.len() - 16 - c.icv_len()) % 16, 0);
                    assert!(body.len() - 16 - c.icv_len() - len <= 16);
                }
            }
        }
    }

    /// The two directions' keys are independent: a cipher with other keys cannot read or forge.
    #[test]
    fn wrong_key_fails() {
        for (encr, integ) in ALL {
            let c = cipher(encr, integ);
            let sk_e = vec![7u8; encr.key_len()];
            let sk_a = vec![9u8; integ.map_or(0, |i| i.key_len())];
            let other = SkCipher::new(encr, integ, &sk_e, &sk_a).unwrap();
            let body = c.encrypt(b"aad", b"payloads");
            assert_eq!(
                other.decrypt(b"aad", &body),
                Err(CryptoError::AuthenticationFailed)
            );
        }
    }

    /// Flipping any bit of the AAD, the IV, the ciphertext or the ICV is detected.
    #[test]
    fn tampering_rejected() {
        for (encr, integ) in ALL {
            let c = cipher(encr, integ);
            let aad = b"header".to_vec();
            let body = c.encrypt(&aad, b"some inner payloads");
            for i in 0..body.len() {
                let mut bad = body.clone();
                bad[i] ^= 0x01;
                assert_eq!(
                    c.decrypt(&aad, &bad),
                    Err(CryptoError::AuthenticationFailed),
                    "{encr:?} byte {i}"
                );
            }
            for i in 0..aad.len() {
                let mut bad = aad.clone();
                bad[i] ^= 0x80;
                assert_eq!(
                    c.decrypt(&bad, &body),
                    Err(CryptoError::AuthenticationFailed),
                    "{encr:?} aad {i}"
                );
            }
            // Truncated or extended bodies fail on length or on the ICV, never succeed.
            for cut in [1, c.icv_len(), body.len() - 1] {
                assert!(c.decrypt(&aad, &body[..body.len() - cut]).is_err());
            }
            let mut long = body.clone();
            long.extend_from_slice(&[0; 16]);
            assert!(c.decrypt(&aad, &long).is_err());
            assert!(matches!(
                c.decrypt(&aad, &[]),
                Err(CryptoError::BadLength { .. })
            ));
        }
    }

    /// An authentic message whose Pad Length points before the start is refused as bad padding.
    #[test]
    fn bad_pad_length_rejected() {
        let c = cipher(IkeEncr::AesGcm16_128, None);
        // Seal, with the real key, a plaintext of just a Pad Length of 5.
        let Inner::Aead { key, salt, .. } = &c.inner else {
            unreachable!()
        };
        let mut forged = vec![5u8];
        let tag = key
            .seal_in_place_separate_tag(nonce(salt, &[0; 8]), aead::Aad::from(b"aad"), &mut forged)
            .unwrap();
        let mut bad = vec![0u8; 8];
        bad.extend_from_slice(&forged);
        bad.extend_from_slice(tag.as_ref());
        assert_eq!(c.decrypt(b"aad", &bad), Err(CryptoError::BadPadding));
    }

    /// AEAD IVs never repeat under one key; CBC IVs are fresh per message.
    #[test]
    fn ivs_do_not_repeat() {
        for (encr, integ) in [ALL[0], ALL[3]] {
            let c = cipher(encr, integ);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..1000 {
                let body = c.encrypt(b"", b"x");
                assert!(seen.insert(body[..encr.iv_len()].to_vec()), "{encr:?}");
            }
        }
    }

    #[test]
    fn suite_and_key_checks() {
        let gcm = IkeEncr::AesGcm16_128;
        assert!(matches!(
            SkCipher::new(gcm, Some(Integ::HmacSha256_128), &[0; 20], &[0; 32]),
            Err(CryptoError::InvalidSuite(_))
        ));
        assert!(matches!(
            SkCipher::new(IkeEncr::AesCbc128, None, &[0; 16], &[]),
            Err(CryptoError::InvalidSuite(_))
        ));
        assert!(matches!(
            SkCipher::new(gcm, None, &[0; 16], &[]),
            Err(CryptoError::BadLength { .. })
        ));
        assert!(matches!(
            SkCipher::new(
                IkeEncr::AesCbc256,
                Some(Integ::HmacSha256_128),
                &[0; 32],
                &[0; 16]
            ),
            Err(CryptoError::BadLength { .. })
        ));
        let c = cipher(gcm, None);
        assert!(!format!("{c:?}").contains("[0, 1, 2"));
    }

    #[test]
    fn ids_and_lengths() {
        for (encr, _) in ALL {
            assert_eq!(
                IkeEncr::from_transform(encr.id(), encr.key_bits()),
                Some(encr)
            );
        }
        assert_eq!(IkeEncr::from_transform(20, Some(192)), None);
        assert_eq!(IkeEncr::from_transform(28, Some(256)), None);
        let lens: Vec<usize> = ALL[..5].iter().map(|(e, _)| e.key_len()).collect();
        assert_eq!(lens, [20, 36, 36, 16, 16]);
        for integ in [
            Integ::HmacSha256_128,
            Integ::HmacSha384_192,
            Integ::HmacSha512_256,
        ] {
            assert_eq!(Integ::from_id(integ.id()), Some(integ));
        }
        assert_eq!(Integ::HmacSha384_192.icv_len(), 24);
    }
}
