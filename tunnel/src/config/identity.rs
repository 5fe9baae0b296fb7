//! IKE identities as the mesh file writes them (`id = ...`): parsing, display, and the ID payload they become.

use std::fmt;
use std::net::IpAddr;

use super::dn;

/// Why an identity written in the mesh file (`id = ...`) is not one: the file's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// `@#` without an even number of hex digits.
    #[error("key ID {0:?} needs an even number of hex digits after @#")]
    KeyIdHex(String),
    /// `user@domain` with a bad user or domain part.
    #[error("{0:?} is not a valid user@fqdn (RFC 822) identity")]
    Rfc822(String),
    /// Neither an address nor a name.
    #[error("{0:?} is neither an IP address nor a DNS name")]
    NotANameOrAddress(String),
    /// A DN that cannot be encoded.
    #[error(transparent)]
    Dn(#[from] dn::DnError),
}

/// An IKE identity (RFC 7296 3.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// ID_IPV4_ADDR or ID_IPV6_ADDR.
    Addr(IpAddr),
    /// ID_FQDN, written `name.example` or `@name.example`.
    Fqdn(String),
    /// ID_RFC822_ADDR, written `user@name.example`.
    Rfc822(String),
    /// ID_DER_ASN1_DN, written `C=CH, O=example, CN=gw` as strongSwan writes it: the text (as written) and the
    /// DER the ID payload carries.
    Dn(String, Vec<u8>),
    /// ID_KEY_ID, written `@#` and hex digits, as in strongSwan.
    KeyId(Vec<u8>),
}

impl Identity {
    /// Parses strongSwan's notation: an IP address, `@#HEX` for a key ID, or a DNS name with an optional `@`.
    pub fn parse(text: &str) -> Result<Identity, IdentityError> {
        if let Ok(a) = text.parse::<IpAddr>() {
            return Ok(Identity::Addr(a));
        }
        if let Some(hex) = text.strip_prefix("@#") {
            if hex.is_empty() || hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(IdentityError::KeyIdHex(text.to_owned()));
            }
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex digits"))
                .collect();
            return Ok(Identity::KeyId(bytes));
        }
        if dn::looks_like_dn(text) {
            return Ok(Identity::Dn(text.trim().to_owned(), dn::parse(text)?));
        }
        let is_name = |n: &str| {
            !n.is_empty()
                && n.len() <= 253
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
        };
        if let Some((user, domain)) = text.split_once('@').filter(|(u, _)| !u.is_empty()) {
            if user.bytes().all(|b| b.is_ascii_graphic() && b != b'@') && is_name(domain) {
                return Ok(Identity::Rfc822(text.to_owned()));
            }
            return Err(IdentityError::Rfc822(text.to_owned()));
        }
        let name = text.strip_prefix('@').unwrap_or(text);
        if !is_name(name) {
            return Err(IdentityError::NotANameOrAddress(text.to_owned()));
        }
        Ok(Identity::Fqdn(name.to_owned()))
    }

    /// The ID payload's type (RFC 7296 3.5) and data, for the IDi/IDr payloads and the AUTH computation.
    pub fn wire(&self) -> (u8, Vec<u8>) {
        match self {
            Identity::Addr(IpAddr::V4(a)) => (1, a.octets().to_vec()),
            Identity::Addr(IpAddr::V6(a)) => (5, a.octets().to_vec()),
            Identity::Fqdn(n) => (2, n.as_bytes().to_vec()),
            Identity::Rfc822(n) => (3, n.as_bytes().to_vec()),
            Identity::Dn(_, der) => (9, der.clone()),
            Identity::KeyId(k) => (11, k.clone()),
        }
    }

    /// The identity as the IKE engine takes it.
    pub fn to_id(&self) -> ike::message::Id {
        let (t, data) = self.wire();
        ike::message::Id {
            id_type: ike::message::IdType(t),
            data,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Addr(a) => write!(f, "{a}"),
            Identity::Fqdn(n) | Identity::Rfc822(n) | Identity::Dn(n, _) => write!(f, "{n}"),
            Identity::KeyId(k) => {
                f.write_str("@#")?;
                k.iter().try_for_each(|b| write!(f, "{b:02x}"))
            }
        }
    }
}
