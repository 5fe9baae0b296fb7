//! Why a key file or key cannot be used: one error type for the PEM layer, the DER layer and the RSA checks, so
//! that a sysadmin reads one kind of message whatever went wrong with the file.

/// Why a key file cannot be used. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Neither PEM (`-----BEGIN ...-----`) nor DER.
    #[error("not a PEM or DER key")]
    NotAKey,
    /// A PEM block with a label this kind of key cannot have.
    #[error("PEM block \"{label}\" is not {expected}")]
    Label {
        /// The label found.
        label: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The PEM block has no matching END line.
    #[error("PEM block \"{0}\" has no END line")]
    Unterminated(String),
    /// The PEM body is not valid base64.
    #[error("PEM body is not valid base64")]
    Base64,
    /// A password-protected key: vmsecd has no way to ask for the password.
    #[error("the private key is encrypted; store it unencrypted, readable by root only")]
    Encrypted,
    /// The DER does not hold an RSA key (or aws-lc rejected it: inconsistent components, too small).
    #[error("not a usable RSA {what}: {reason}")]
    Rejected {
        /// "private key" or "public key".
        what: &'static str,
        /// aws-lc's reason.
        reason: String,
    },
    /// A key size vmsecd does not accept.
    #[error("RSA key of {bits} bits; allowed: 2048 to 8192 bits")]
    Size {
        /// The modulus size.
        bits: usize,
    },
}
