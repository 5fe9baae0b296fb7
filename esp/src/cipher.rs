//! The keyed cipher of one SA direction: seal and open an ESP packet in place.
//!
//! Both directions see the packet as `[SPI | Seq | IV | encrypted part | ICV]`; this module only knows where the
//! parts are, not what the encrypted part holds.

use aes::cipher::generic_array::GenericArray;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{aead, hmac};

use crate::{KeyMaterial, Transform, ESP_HEADER_LEN};

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

pub(crate) struct CbcHmac {
    aes: Aes,
    /// Encrypts the sequence number into the per-packet IV: unpredictable without this key, never repeated,
    /// and no system call per packet.
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
    pub(crate) fn new(t: Transform, keys: &KeyMaterial) -> Cipher {
        let ck = keys.cipher_key(t);
        // The key lengths are checked by KeyMaterial::new, so the constructors cannot fail.
        match t {
            Transform::AesGcm128 | Transform::AesGcm256 | Transform::ChaCha20Poly1305 => {
                let alg = match t {
                    Transform::AesGcm128 => &aead::AES_128_GCM,
                    Transform::AesGcm256 => &aead::AES_256_GCM,
                    _ => &aead::CHACHA20_POLY1305,
                };
                let key =
                    aead::UnboundKey::new(alg, ck).expect("AEAD key length checked by KeyMaterial");
                Cipher::Aead {
                    key: aead::LessSafeKey::new(key),
                    salt: keys.salt(t),
                }
            }
            Transform::AesCbc128HmacSha256 | Transform::AesCbc256HmacSha256 => {
                let aes = if t == Transform::AesCbc128HmacSha256 {
                    Aes::K128(
                        aes::Aes128::new_from_slice(ck)
                            .expect("AES key length checked by KeyMaterial"),
                    )
                } else {
                    Aes::K256(
                        aes::Aes256::new_from_slice(ck)
                            .expect("AES key length checked by KeyMaterial"),
                    )
                };
                let mut iv_key = [0u8; 16];
                SystemRandom::new()
                    .fill(&mut iv_key)
                    .expect("the system random source does not fail");
                let cbc = CbcHmac {
                    aes,
                    iv_key: aes::Aes128::new(&iv_key.into()),
                    mac: hmac::Key::new(hmac::HMAC_SHA256, keys.integ_key(t)),
                };
                iv_key.iter_mut().for_each(|b| *b = 0);
                Cipher::CbcHmac(Box::new(cbc))
            }
        }
    }

    /// Encrypts `pkt[ESP_HEADER_LEN + iv_len .. len - icv]` in place and writes IV (CBC) and ICV.
    ///
    /// For the AEADs the caller has already written the explicit IV; for CBC the IV is made here, because a CBC
    /// IV must be unpredictable: the full sequence number encrypted under a random per-SA key.
    pub(crate) fn seal(&self, t: Transform, pkt: &mut [u8], seq_hi: SeqHi) {
        let iv_end = ESP_HEADER_LEN + t.iv_len();
        let icv_start = pkt.len() - t.icv_len();
        match self {
            Cipher::Aead { key, salt } => {
                let (head, rest) = pkt.split_at_mut(iv_end);
                let (body, icv) = rest.split_at_mut(icv_start - iv_end);
                let nonce = nonce(salt, &head[ESP_HEADER_LEN..iv_end]);
                let aad = aead_aad(head, seq_hi);
                let tag = key
                    .seal_in_place_separate_tag(nonce, aead::Aad::from(&aad.0[..aad.1]), body)
                    .expect("in-place seal of a bounded buffer cannot fail");
                icv.copy_from_slice(tag.as_ref());
            }
            //= https://www.rfc-editor.org/rfc/rfc3602#section-3
            //# The IV MUST be chosen at random, and MUST be unpredictable.
            Cipher::CbcHmac(c) => {
                let mut iv = [0u8; 16];
                iv[..4].copy_from_slice(&seq_hi.unwrap_or(0).to_be_bytes());
                iv[4..8].copy_from_slice(&pkt[4..8]);
                c.iv_key
                    .encrypt_block(GenericArray::from_mut_slice(&mut iv));
                pkt[ESP_HEADER_LEN..iv_end].copy_from_slice(&iv);
                c.aes.cbc_encrypt(&iv, &mut pkt[iv_end..icv_start]);
                let tag = cbc_icv(&c.mac, &pkt[..icv_start], seq_hi);
                pkt[icv_start..].copy_from_slice(&tag.as_ref()[..t.icv_len()]);
            }
        }
    }

    /// Verifies the ICV, then decrypts the encrypted part in place. On failure the buffer may be garbage.
    pub(crate) fn open(
        &self,
        t: Transform,
        pkt: &mut [u8],
        seq_hi: SeqHi,
    ) -> Result<(), AuthFailed> {
        let iv_end = ESP_HEADER_LEN + t.iv_len();
        let icv_start = pkt.len() - t.icv_len();
        match self {
            Cipher::Aead { key, salt } => {
                let (head, rest) = pkt.split_at_mut(iv_end);
                let (body, icv) = rest.split_at_mut(icv_start - iv_end);
                let nonce = nonce(salt, &head[ESP_HEADER_LEN..iv_end]);
                let aad = aead_aad(head, seq_hi);
                let tag = aead::Tag::try_from(&icv[..]).map_err(|_| AuthFailed)?;
                key.open_in_place_separate_tag(
                    nonce,
                    aead::Aad::from(&aad.0[..aad.1]),
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
                let tag = cbc_icv(&c.mac, &pkt[..icv_start], seq_hi);
                if !ct_eq(&tag.as_ref()[..t.icv_len()], &pkt[icv_start..]) {
                    return Err(AuthFailed);
                }
                let mut iv = [0u8; 16];
                iv.copy_from_slice(&pkt[ESP_HEADER_LEN..iv_end]);
                c.aes.cbc_decrypt(&iv, &mut pkt[iv_end..icv_start]);
                Ok(())
            }
        }
    }
}

//= https://www.rfc-editor.org/rfc/rfc4106#section-4
//# The nonce passed to the GCM-AES encryption algorithm has the following layout:
fn nonce(salt: &[u8; 4], iv: &[u8]) -> aead::Nonce {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(salt);
    n[4..].copy_from_slice(iv);
    aead::Nonce::assume_unique_for_key(n)
}

//= https://www.rfc-editor.org/rfc/rfc4106#section-5
//# Two formats of the AAD are defined: one for 32-bit sequence numbers, and one for 64-bit extended sequence
//# numbers.
fn aead_aad(head: &[u8], seq_hi: SeqHi) -> ([u8; 12], usize) {
    let mut aad = [0u8; 12];
    aad[..4].copy_from_slice(&head[..4]);
    match seq_hi {
        None => {
            aad[4..8].copy_from_slice(&head[4..8]);
            (aad, 8)
        }
        Some(hi) => {
            aad[4..8].copy_from_slice(&hi.to_be_bytes());
            aad[8..12].copy_from_slice(&head[4..8]);
            (aad, 12)
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
