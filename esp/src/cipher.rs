//! The keyed cipher of one SA direction: seal and open an ESP packet in place.
//!
//! Both directions see the packet as `[SPI | Seq | IV | encrypted part | ICV]`; this module only knows where the
//! parts are, not what the encrypted part holds.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use ring::{aead, hmac};
use zeroize::Zeroize;

use crate::{BadKeyLength, KeyMaterial, Transform, ESP_HEADER_LEN};

/// What the CBC IV key is derived under (see [`Cipher::new`]).
const IV_KEY_LABEL: &[u8] = b"vmsecd: ESP AES-CBC IV key";

/// Why the cipher refused a packet. Only ever an authentication failure: length checks happen before.
#[derive(Debug)]
pub(crate) struct AuthFailed;

// One per SA, reached through the SA: its size costs nothing per packet, a Box would cost a pointer chase.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Cipher {
    Aead {
        key: aead::LessSafeKey,
        salt: [u8; 4],
    },
    /// Boxed: the compatibility transform is rare, and the AEAD variant stays small.
    CbcHmac(Box<CbcHmac>),
}

/// Wipes what this crate holds itself. The `aes` schedules wipe themselves (its `zeroize` feature); ring's AEAD
/// and HMAC keys are not wiped by ring (briansmith/ring#15), and no safe code can reach into them.
impl Drop for Cipher {
    fn drop(&mut self) {
        if let Cipher::Aead { salt, .. } = self {
            salt.zeroize();
        }
    }
}

pub(crate) struct CbcHmac {
    aes: Aes,
    /// Encrypts the sequence number into the per-packet IV: unpredictable without this key, never repeated,
    /// and no system call per packet. Derived from the SA's integrity key (see [`Cipher::new`]).
    iv_key: aes::Aes128,
    mac: hmac::Key,
}

#[allow(clippy::large_enum_variant)] // one per SA, see Cipher
enum Aes {
    K128(aes::Aes128),
    K256(aes::Aes256),
}

impl Aes {
    fn encrypt(&self, block: &mut [u8]) {
        let b = GenericArray::from_mut_slice(block);
        match self {
            Aes::K128(k) => k.encrypt_block(b),
            Aes::K256(k) => k.encrypt_block(b),
        }
    }

    fn decrypt(&self, block: &mut [u8]) {
        let b = GenericArray::from_mut_slice(block);
        match self {
            Aes::K128(k) => k.decrypt_block(b),
            Aes::K256(k) => k.decrypt_block(b),
        }
    }

    /// CBC encryption in place of whole blocks.
    fn cbc_encrypt(&self, iv: &[u8; 16], data: &mut [u8]) {
        let mut prev = *iv;
        for block in data.chunks_exact_mut(16) {
            block.iter_mut().zip(prev).for_each(|(b, p)| *b ^= p);
            self.encrypt(block);
            prev.copy_from_slice(block);
        }
    }

    /// CBC decryption in place of whole blocks.
    fn cbc_decrypt(&self, iv: &[u8; 16], data: &mut [u8]) {
        let mut prev = *iv;
        for block in data.chunks_exact_mut(16) {
            let mut this = [0u8; 16];
            this.copy_from_slice(block);
            self.decrypt(block);
            block.iter_mut().zip(prev).for_each(|(b, p)| *b ^= p);
            prev = this;
        }
    }
}

/// Compares two MACs in constant time.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

/// ESN high-order bits: present only when the SA uses 64-bit extended sequence numbers.
pub(crate) type SeqHi = Option<u32>;

impl Cipher {
    /// The keyed cipher; `Err` only if `keys` does not have the lengths `t` needs (checked by
    /// [`KeyMaterial::new`] already).
    pub(crate) fn new(t: Transform, keys: &KeyMaterial) -> Result<Cipher, BadKeyLength> {
        let ck = keys.cipher_key(t);
        let bad = || BadKeyLength {
            transform: t,
            expected: t.keymat_len(),
            got: keys.len(),
        };
        Ok(match t {
            Transform::AesGcm128 | Transform::AesGcm256 | Transform::ChaCha20Poly1305 => {
                let alg = match t {
                    Transform::AesGcm128 => &aead::AES_128_GCM,
                    Transform::AesGcm256 => &aead::AES_256_GCM,
                    _ => &aead::CHACHA20_POLY1305,
                };
                let key = aead::UnboundKey::new(alg, ck).map_err(|_| bad())?;
                Cipher::Aead {
                    key: aead::LessSafeKey::new(key),
                    salt: keys.salt(t).ok_or_else(bad)?,
                }
            }
            Transform::AesCbc128HmacSha256 | Transform::AesCbc256HmacSha256 => {
                let aes = if t == Transform::AesCbc128HmacSha256 {
                    Aes::K128(aes::Aes128::new_from_slice(ck).map_err(|_| bad())?)
                } else {
                    Aes::K256(aes::Aes256::new_from_slice(ck).map_err(|_| bad())?)
                };
                let mac = hmac::Key::new(hmac::HMAC_SHA256, keys.integ_key(t));
                // The key that turns sequence numbers into IVs, derived from the SA's secret integrity key with
                // HMAC as a PRF under a label of its own: unpredictable to anyone without the SA's keys, and
                // different for every SA. The label (26 bytes) is shorter than anything the same key
                // authenticates (an ESP packet has at least 40 bytes), so no ICV ever equals it.
                let derived = hmac::sign(&mac, IV_KEY_LABEL);
                let mut iv_key = [0u8; 16];
                iv_key.copy_from_slice(derived.as_ref().get(..16).ok_or_else(bad)?);
                let cbc = CbcHmac {
                    aes,
                    iv_key: aes::Aes128::new(&iv_key.into()),
                    mac,
                };
                iv_key.zeroize();
                Cipher::CbcHmac(Box::new(cbc))
            }
        })
    }

    /// Encrypts `pkt[ESP_HEADER_LEN + iv_len .. len - icv]` in place and writes IV (CBC) and ICV.
    ///
    /// For the AEADs the caller has already written the explicit IV; for CBC the IV is made here, because a CBC
    /// IV must be unpredictable: the full sequence number encrypted under a random per-SA key. `Err` only if
    /// `pkt` is shorter than the framing the caller was meant to build around it.
    pub(crate) fn seal(&self, t: Transform, pkt: &mut [u8], seq_hi: SeqHi) -> Result<(), TooShort> {
        let icv_start = pkt.len().checked_sub(t.icv_len()).ok_or(TooShort)?;
        let (covered, icv) = pkt.split_at_mut(icv_start);
        match self {
            Cipher::Aead { key, salt } => {
                let (head, iv, body) = split_aead(covered).ok_or(TooShort)?;
                let aad = aead_aad(head, seq_hi);
                let tag = key
                    .seal_in_place_separate_tag(
                        nonce(salt, iv),
                        aead::Aad::from(aad.as_ref()),
                        body,
                    )
                    .map_err(|_| TooShort)?;
                icv.get_mut(..tag.as_ref().len())
                    .ok_or(TooShort)?
                    .copy_from_slice(tag.as_ref());
            }
            //= https://www.rfc-editor.org/rfc/rfc3602#section-3
            //# The IV MUST be chosen at random, and MUST be unpredictable.
            Cipher::CbcHmac(c) => {
                let (head, rest) = covered
                    .split_first_chunk_mut::<ESP_HEADER_LEN>()
                    .ok_or(TooShort)?;
                let (iv_slot, body) = rest.split_first_chunk_mut::<16>().ok_or(TooShort)?;
                let mut iv = [0u8; 16];
                iv[..4].copy_from_slice(&seq_hi.unwrap_or(0).to_be_bytes());
                iv[4..8].copy_from_slice(&head[4..8]);
                c.iv_key
                    .encrypt_block(GenericArray::from_mut_slice(&mut iv));
                *iv_slot = iv;
                c.aes.cbc_encrypt(&iv, body);
                let tag = cbc_icv(&c.mac, covered, seq_hi);
                let tag = tag.as_ref().get(..t.icv_len()).ok_or(TooShort)?;
                icv.get_mut(..tag.len())
                    .ok_or(TooShort)?
                    .copy_from_slice(tag);
            }
        }
        Ok(())
    }

    /// Verifies the ICV, then decrypts the encrypted part in place. On failure the buffer may be garbage.
    pub(crate) fn open(
        &self,
        t: Transform,
        pkt: &mut [u8],
        seq_hi: SeqHi,
    ) -> Result<(), AuthFailed> {
        let icv_start = pkt.len().checked_sub(t.icv_len()).ok_or(AuthFailed)?;
        let (covered, icv) = pkt.split_at_mut(icv_start);
        match self {
            Cipher::Aead { key, salt } => {
                let (head, iv, body) = split_aead(covered).ok_or(AuthFailed)?;
                let aad = aead_aad(head, seq_hi);
                let tag = aead::Tag::try_from(&*icv).map_err(|_| AuthFailed)?;
                key.open_in_place_separate_tag(
                    nonce(salt, iv),
                    aead::Aad::from(aad.as_ref()),
                    tag,
                    body,
                    0..,
                )
                .map(|_| ())
                .map_err(|_| AuthFailed)
            }
            Cipher::CbcHmac(c) => {
                //= https://www.rfc-editor.org/rfc/rfc4303#section-3.4.4.1
                //# If integrity has been selected, the receiver computes the ICV over the ESP packet minus the ICV,
                //# using the specified integrity algorithm and verifies that it is the same as the ICV carried in
                //# the packet.
                let tag = cbc_icv(&c.mac, covered, seq_hi);
                let tag = tag.as_ref().get(..t.icv_len()).ok_or(AuthFailed)?;
                if !ct_eq(tag, icv) {
                    return Err(AuthFailed);
                }
                let (_, rest) = covered
                    .split_first_chunk_mut::<ESP_HEADER_LEN>()
                    .ok_or(AuthFailed)?;
                let (iv, body) = rest.split_first_chunk_mut::<16>().ok_or(AuthFailed)?;
                c.aes.cbc_decrypt(iv, body);
                Ok(())
            }
        }
    }
}

/// An ESP packet was shorter than the framing built around it: a bug in the caller, reported, not a panic.
#[derive(Debug)]
pub(crate) struct TooShort;

/// Splits what the ICV covers in an AEAD packet into `[SPI | Seq]`, the 8-byte explicit IV and the encrypted
/// part.
fn split_aead(covered: &mut [u8]) -> Option<(&[u8; ESP_HEADER_LEN], &[u8; 8], &mut [u8])> {
    let (head, rest) = covered.split_first_chunk_mut::<ESP_HEADER_LEN>()?;
    let (iv, body) = rest.split_first_chunk_mut::<8>()?;
    Some((head, iv, body))
}

//= https://www.rfc-editor.org/rfc/rfc4106#section-4
//# The nonce passed to the GCM-AES encryption algorithm has the following layout:
fn nonce(salt: &[u8; 4], iv: &[u8; 8]) -> aead::Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(iv);
    aead::Nonce::assume_unique_for_key(n)
}

/// The AEAD's associated data: 8 or 12 bytes.
struct Aad {
    bytes: [u8; 12],
    esn: bool,
}

impl AsRef<[u8]> for Aad {
    fn as_ref(&self) -> &[u8] {
        if self.esn {
            &self.bytes
        } else {
            let (short, _) = self.bytes.split_at(8);
            short
        }
    }
}

//= https://www.rfc-editor.org/rfc/rfc4106#section-5
//# Two formats of the AAD are defined: one for 32-bit sequence numbers, and one for 64-bit extended sequence
//# numbers.
fn aead_aad(head: &[u8; ESP_HEADER_LEN], seq_hi: SeqHi) -> Aad {
    let mut bytes = [0u8; 12];
    bytes[..4].copy_from_slice(&head[..4]);
    match seq_hi {
        None => {
            bytes[4..8].copy_from_slice(&head[4..8]);
            Aad { bytes, esn: false }
        }
        Some(hi) => {
            bytes[4..8].copy_from_slice(&hi.to_be_bytes());
            bytes[8..12].copy_from_slice(&head[4..8]);
            Aad { bytes, esn: true }
        }
    }
}

//= https://www.rfc-editor.org/rfc/rfc4303#section-2.2.1
//# The high-order 32 bits are maintained as part of the sequence number counter by both transmitter and receiver
//# and are included in the computation of the ICV
fn cbc_icv(mac: &hmac::Key, covered: &[u8], seq_hi: SeqHi) -> hmac::Tag {
    let mut ctx = hmac::Context::with_key(mac);
    ctx.update(covered);
    if let Some(hi) = seq_hi {
        ctx.update(&hi.to_be_bytes());
    }
    ctx.sign()
}
