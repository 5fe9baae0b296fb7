//! The IKEv2 crypto suite: key exchange, PRF and prf+, SA key derivation, the Encrypted (SK) payload, and the
//! PSK / NAT-detection / COOKIE hashes.
//!
//! Sans-IO: nothing here reads a clock or owns a socket. Randomness (ephemeral keys, IVs) comes from the
//! aws-lc-rs DRBG. Every secret lives in a type that zeroizes on drop and prints redacted.
//!
//! One file per idea:
//! - [`dh`]: Diffie-Hellman groups 14, 15, 19, 20, 31 ([`dh::KeyShare`], [`dh::SharedSecret`]);
//! - [`prf`]: HMAC-SHA2 PRFs and prf+ (RFC 7296 2.13);
//! - [`keys`]: SKEYSEED and the IKE SA keys (2.14), IKE SA rekey (2.18), Child SA KEYMAT (2.17);
//! - [`sk`]: encrypting and authenticating the SK payload (3.14, RFC 5282, RFC 7634);
//! - [`auth`]: PSK AUTH (2.15), NAT detection hashes (2.23), stateless cookies (2.6);
//! - [`signature`]: RSA signature AUTH (RFC 7427 Digital Signature, RFC 7296 RSA Digital Signature);
//! - [`keyfile`]: RSA private and public keys from PEM/DER bytes ([`pem`] and [`der`] beneath it);
//! - [`x509`]: certificates and chains.

pub mod auth;
pub(crate) mod der;
pub mod dh;
mod key_error;
pub mod keyfile;
pub mod keys;
mod pem;
pub mod prf;
pub mod signature;
pub mod sk;
pub mod x509;

#[cfg(test)]
pub(crate) mod test_util {
    /// Decodes hex, ignoring whitespace (vectors are copied from RFCs in blocks).
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert!(digits.len().is_multiple_of(2), "odd hex length");
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }
}

pub use auth::{
    cookie, nat_detection_hash, psk_auth, signed_octets, verify_cookie, verify_psk_auth,
};
pub use dh::{DhGroup, KeyShare, SharedSecret};
pub use keys::{child_keymat, ike_keymat_len, split_child_keymat, ChildKeys, IkeKeys};
pub use prf::Prf;
pub use sk::{IkeEncr, Integ, SkCipher};

/// Why a crypto operation failed.
///
/// The variants say whose fault it is: [`CryptoError::InvalidPublicKey`], [`CryptoError::AuthenticationFailed`],
/// [`CryptoError::BadLength`] and [`CryptoError::BadPadding`] come from what the peer sent;
/// [`CryptoError::InvalidSuite`] from the caller; [`CryptoError::Backend`]
/// from aws-lc itself (should not happen).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The peer's Key Exchange Data is not a valid public value for the group (wrong length, not on the curve,
    /// out of range, or leading to a degenerate shared secret).
    #[error("invalid key exchange data for {group:?}: {reason}")]
    InvalidPublicKey {
        /// The group it was meant for.
        group: dh::DhGroup,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The ICV of an SK payload, an AUTH value or a cookie did not verify.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// An input is too short or of the wrong length.
    #[error("bad length of {what}: {got} bytes")]
    BadLength {
        /// Which input.
        what: &'static str,
        /// Its length.
        got: usize,
    },
    /// An authenticated SK payload carries a Pad Length larger than the plaintext: a broken peer.
    #[error("SK payload padding is inconsistent")]
    BadPadding,
    /// The algorithms or keys handed in do not fit together (e.g. an AEAD with an integrity transform).
    #[error("invalid crypto suite: {0}")]
    InvalidSuite(&'static str),
    /// aws-lc reported an internal failure.
    #[error("crypto backend failure: {0}")]
    Backend(&'static str),
}

/// Writes `n` bytes as "N bytes, redacted" in `Debug` output, for the secret-holding types.
fn redacted(f: &mut std::fmt::Formatter<'_>, name: &str, n: usize) -> std::fmt::Result {
    write!(f, "{name}({n} bytes, redacted)")
}
