//! RSA key files: PEM (RFC 7468) and DER. Private keys as PKCS#8 (`BEGIN PRIVATE KEY`, as `openssl genpkey` and
//! `vmsecd keygen` write them) or PKCS#1 (`BEGIN RSA PRIVATE KEY`, as strongSwan's `pki --gen` writes them);
//! public keys as SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`, `pki --pub`, `openssl pkey -pubout`) or PKCS#1
//! (`BEGIN RSA PUBLIC KEY`).
//!
//! Sans-IO: the caller reads the file and hands in its bytes. Decoded private key material only ever lives in
//! [`Zeroizing`] buffers; errors never quote the input.

use super::pem::pem_block;
use super::signature::{PrivateKey, PublicKey};

pub use super::key_error::KeyError;
pub use super::pem::to_pem;

/// Parses an RSA private key: PEM `PRIVATE KEY` (PKCS#8) or `RSA PRIVATE KEY` (PKCS#1), or either as DER.
pub fn parse_private_key(bytes: &[u8]) -> Result<PrivateKey, KeyError> {
    match pem_block(bytes)? {
        Some((label, der)) => match label.as_str() {
            "PRIVATE KEY" => PrivateKey::from_pkcs8(&der),
            "RSA PRIVATE KEY" => PrivateKey::from_pkcs1(&der),
            _ => Err(KeyError::Label {
                label,
                expected: "PRIVATE KEY or RSA PRIVATE KEY",
            }),
        },
        None if bytes.first() == Some(&0x30) => {
            PrivateKey::from_pkcs8(bytes).or_else(|_| PrivateKey::from_pkcs1(bytes))
        }
        None => Err(KeyError::NotAKey),
    }
}

/// Parses an RSA public key: PEM `PUBLIC KEY` (SubjectPublicKeyInfo) or `RSA PUBLIC KEY` (PKCS#1), or DER.
pub fn parse_public_key(bytes: &[u8]) -> Result<PublicKey, KeyError> {
    match pem_block(bytes)? {
        Some((label, der)) => match label.as_str() {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => PublicKey::from_der(&der),
            _ => Err(KeyError::Label {
                label,
                expected: "PUBLIC KEY or RSA PUBLIC KEY",
            }),
        },
        None if bytes.first() == Some(&0x30) => PublicKey::from_der(bytes),
        None => Err(KeyError::NotAKey),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_errors_name_the_problem() {
        assert_eq!(parse_private_key(b"hello").unwrap_err(), KeyError::NotAKey);
        assert_eq!(
            parse_private_key(b"-----BEGIN CERTIFICATE-----\nTQ==\n-----END CERTIFICATE-----\n")
                .unwrap_err(),
            KeyError::Label {
                label: "CERTIFICATE".into(),
                expected: "PRIVATE KEY or RSA PRIVATE KEY"
            }
        );
        assert_eq!(
            parse_private_key(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nTQ==\n-----END ENCRYPTED PRIVATE KEY-----\n")
                .unwrap_err(),
            KeyError::Encrypted
        );
        assert_eq!(
            parse_private_key(b"-----BEGIN PRIVATE KEY-----\nTQ==\n").unwrap_err(),
            KeyError::Unterminated("PRIVATE KEY".into())
        );
        assert!(matches!(
            parse_private_key(b"-----BEGIN PRIVATE KEY-----\nTQ==\n-----END PRIVATE KEY-----\n"),
            Err(KeyError::Rejected { .. })
        ));
    }
}
