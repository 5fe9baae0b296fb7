//! The ESP transforms vmsecd speaks, and the sizes that follow from each.

use std::fmt;
use std::str::FromStr;

/// An ESP transform: an AEAD, or a cipher plus an integrity algorithm.
///
/// Names follow strongSwan's proposal syntax (`aes128gcm16`, `chacha20poly1305`, `aes256-sha256`) so that a
/// strongSwan user can copy a proposal between the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transform {
    /// AES-GCM with a 16-byte ICV and a 128-bit key (RFC 4106).
    AesGcm128,
    /// AES-GCM with a 16-byte ICV and a 256-bit key (RFC 4106).
    AesGcm256,
    /// ChaCha20-Poly1305 (RFC 7634).
    ChaCha20Poly1305,
    /// AES-CBC with a 128-bit key (RFC 3602) and HMAC-SHA-256-128 (RFC 4868).
    AesCbc128HmacSha256,
    /// AES-CBC with a 256-bit key (RFC 3602) and HMAC-SHA-256-128 (RFC 4868).
    AesCbc256HmacSha256,
}

impl Transform {
    /// Every transform, in vmsecd's order of preference.
    pub const ALL: [Transform; 5] = [
        Transform::AesGcm128,
        Transform::AesGcm256,
        Transform::ChaCha20Poly1305,
        Transform::AesCbc256HmacSha256,
        Transform::AesCbc128HmacSha256,
    ];

    /// True for the combined-mode (AEAD) transforms.
    pub fn is_aead(self) -> bool {
        matches!(
            self,
            Transform::AesGcm128 | Transform::AesGcm256 | Transform::ChaCha20Poly1305
        )
    }

    /// Bytes of cipher key, not counting the salt.
    pub fn cipher_key_len(self) -> usize {
        match self {
            Transform::AesGcm128 | Transform::AesCbc128HmacSha256 => 16,
            Transform::AesGcm256 | Transform::ChaCha20Poly1305 | Transform::AesCbc256HmacSha256 => {
                32
            }
        }
    }

    /// Bytes of salt taken from the keying material after the cipher key.
    //= https://www.rfc-editor.org/rfc/rfc4106#section-8.1
    //# The size of the KEYMAT for the AES-GCM-ESP MUST be four octets longer than is needed for the associated AES
    //# key.
    pub fn salt_len(self) -> usize {
        if self.is_aead() {
            4
        } else {
            0
        }
    }

    /// Bytes of integrity key (zero for AEADs).
    pub fn integ_key_len(self) -> usize {
        match self {
            //= https://www.rfc-editor.org/rfc/rfc4868#section-2.1.1
            //# While no fixed key length is specified in [HMAC], this specification requires that when used as an
            //# integrity/authentication algorithm, a fixed key length equal to the output length of the hash functions
            //# MUST be supported, and key lengths other than the output length of the associated hash function MUST
            //# NOT be supported.
            Transform::AesCbc128HmacSha256 | Transform::AesCbc256HmacSha256 => 32,
            _ => 0,
        }
    }

    /// Total keying material per direction (RFC 7296 2.17: encryption key first, then integrity key).
    pub fn keymat_len(self) -> usize {
        self.cipher_key_len() + self.salt_len() + self.integ_key_len()
    }

    /// Bytes of explicit IV carried in each packet.
    pub fn iv_len(self) -> usize {
        match self {
            //= https://www.rfc-editor.org/rfc/rfc4106#section-3.1
            //# The AES-GCM-ESP IV field MUST be eight octets.
            Transform::AesGcm128 | Transform::AesGcm256 => 8,
            //= https://www.rfc-editor.org/rfc/rfc7634#section-2
            //# The IV field is 64 bits.
            Transform::ChaCha20Poly1305 => 8,
            //= https://www.rfc-editor.org/rfc/rfc3602#section-3
            //# The IV field MUST be the same size as the block size of the cipher algorithm being used.
            Transform::AesCbc128HmacSha256 | Transform::AesCbc256HmacSha256 => 16,
        }
    }

    /// Bytes of integrity check value appended to each packet.
    pub fn icv_len(self) -> usize {
        16
    }

    /// The length the encrypted part (payload, padding, pad length, next header) must be a multiple of.
    pub fn block_len(self) -> usize {
        match self {
            //= https://www.rfc-editor.org/rfc/rfc4303#section-2.4
            //# Padding also may be required, irrespective of encryption algorithm requirements, to ensure that the
            //# resulting ciphertext terminates on a 4-byte boundary.
            Transform::AesGcm128 | Transform::AesGcm256 | Transform::ChaCha20Poly1305 => 4,
            Transform::AesCbc128HmacSha256 | Transform::AesCbc256HmacSha256 => 16,
        }
    }

    /// Worst-case bytes ESP adds in front of the inner packet (header and IV).
    pub fn header_overhead(self) -> usize {
        crate::ESP_HEADER_LEN + self.iv_len()
    }

    /// Worst-case bytes ESP adds behind the inner packet (padding, trailer, ICV).
    pub fn trailer_overhead(self) -> usize {
        self.block_len() - 1 + 2 + self.icv_len()
    }

    /// The exact length of the ESP packet (header, IV, payload, padding, trailer, ICV) that
    /// [`crate::OutboundSa::encap`] makes of an inner packet of `inner_len` bytes: callers that lay out several
    /// packets back to back (for one UDP GSO send) place them with it.
    pub fn esp_len(self, inner_len: usize) -> usize {
        let bl = self.block_len();
        let pad = (bl - (inner_len + 2) % bl) % bl;
        self.header_overhead() + inner_len + pad + 2 + self.icv_len()
    }

    /// The IANA transform IDs (RFC 7296 3.3.2): (ENCR id, key length in bits, INTEG id or 0).
    pub fn iana(self) -> (u16, u16, u16) {
        match self {
            Transform::AesGcm128 => (20, 128, 0),
            Transform::AesGcm256 => (20, 256, 0),
            Transform::ChaCha20Poly1305 => (28, 0, 0),
            Transform::AesCbc128HmacSha256 => (12, 128, 12),
            Transform::AesCbc256HmacSha256 => (12, 256, 12),
        }
    }

    /// strongSwan's name for this transform.
    pub fn name(self) -> &'static str {
        match self {
            Transform::AesGcm128 => "aes128gcm16",
            Transform::AesGcm256 => "aes256gcm16",
            Transform::ChaCha20Poly1305 => "chacha20poly1305",
            Transform::AesCbc128HmacSha256 => "aes128-sha256",
            Transform::AesCbc256HmacSha256 => "aes256-sha256",
        }
    }
}

impl fmt::Display for Transform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A proposal token that names no transform vmsecd implements.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown ESP transform {token:?}; known: aes128gcm16, aes256gcm16, chacha20poly1305, aes128-sha256, aes256-sha256")]
pub struct UnknownTransform {
    /// What was asked for.
    pub token: String,
}

impl FromStr for Transform {
    type Err = UnknownTransform;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "aes128gcm16" | "aes128gcm128" => Transform::AesGcm128,
            "aes256gcm16" | "aes256gcm128" => Transform::AesGcm256,
            "chacha20poly1305" => Transform::ChaCha20Poly1305,
            "aes128-sha256" | "aes128-sha2_256" => Transform::AesCbc128HmacSha256,
            "aes256-sha256" | "aes256-sha2_256" => Transform::AesCbc256HmacSha256,
            _ => {
                return Err(UnknownTransform {
                    token: s.to_owned(),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in Transform::ALL {
            assert_eq!(t.name().parse::<Transform>().unwrap(), t);
        }
        assert!("aes128ccm8".parse::<Transform>().is_err());
    }
}
