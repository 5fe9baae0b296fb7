//! Keying material for one direction of an ESP SA.

use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::Transform;

/// The keying material of one direction of an SA, as IKE derives it (RFC 7296 2.17).
///
/// It is zeroized on drop and its `Debug` output never shows the bytes.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KeyMaterial {
    bytes: Vec<u8>,
}

/// The keying material does not have the length the transform needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{transform} needs {expected} bytes of keying material, got {got}")]
pub struct BadKeyLength {
    /// The transform the key was meant for.
    pub transform: Transform,
    /// What it needs.
    pub expected: usize,
    /// What it got.
    pub got: usize,
}

impl KeyMaterial {
    /// Wraps raw keying material: the cipher key, then the salt (AEADs), then the integrity key.
    //= https://www.rfc-editor.org/rfc/rfc7296#section-2.17
    //# the encryption key (if any) MUST be taken from the first bits and the integrity key (if any) MUST be taken
    //# from the remaining bits.
    pub fn new(transform: Transform, bytes: &[u8]) -> Result<Self, BadKeyLength> {
        if bytes.len() != transform.keymat_len() {
            return Err(BadKeyLength {
                transform,
                expected: transform.keymat_len(),
                got: bytes.len(),
            });
        }
        Ok(KeyMaterial {
            bytes: bytes.to_vec(),
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// True if there is no key at all (never for a valid transform).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The cipher key (empty if the material is too short for `t`: the cipher then refuses it).
    pub(crate) fn cipher_key(&self, t: Transform) -> &[u8] {
        self.bytes.get(..t.cipher_key_len()).unwrap_or_default()
    }

    /// The AEAD salt (zeros for CBC, which has none); `None` if the material is too short for `t`.
    pub(crate) fn salt(&self, t: Transform) -> Option<[u8; 4]> {
        if t.salt_len() != 4 {
            return Some([0; 4]);
        }
        let at = t.cipher_key_len();
        self.bytes.get(at..at + 4)?.try_into().ok()
    }

    /// The integrity key (empty if the material is too short for `t`).
    pub(crate) fn integ_key(&self, t: Transform) -> &[u8] {
        self.bytes
            .get(t.cipher_key_len() + t.salt_len()..)
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyMaterial({} bytes, redacted)", self.bytes.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_redacted() {
        let t = Transform::AesGcm128;
        let raw: Vec<u8> = (0..20).collect();
        let k = KeyMaterial::new(t, &raw).unwrap();
        assert_eq!(k.cipher_key(t), &raw[..16]);
        assert_eq!(k.salt(t), Some([16, 17, 18, 19]));
        assert!(k.integ_key(t).is_empty());
        assert!(!format!("{k:?}").contains("16"));
        assert!(KeyMaterial::new(t, &raw[..19]).is_err());
        let t = Transform::AesCbc128HmacSha256;
        let raw: Vec<u8> = (0..48).collect();
        let k = KeyMaterial::new(t, &raw).unwrap();
        assert_eq!(k.integ_key(t), &raw[16..]);
    }
}
