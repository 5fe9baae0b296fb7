//! Identities (RFC 7296 3.5) in strongSwan's syntax: parsed from configuration (`@fqdn`, `user@fqdn`, an
//! address, `@#hex`) and displayed for logs. Here rather than in `config` so that certificate checks, the SA and
//! the daemon share one spelling without importing the configuration.

use std::net::IpAddr;

use super::{Id, IdType};

/// The default identity of a host: its address, as strongSwan does.
pub fn id_from_addr(addr: IpAddr) -> Id {
    match addr {
        IpAddr::V4(a) => Id {
            id_type: IdType::IPV4_ADDR,
            data: a.octets().to_vec(),
        },
        IpAddr::V6(a) => Id {
            id_type: IdType::IPV6_ADDR,
            data: a.octets().to_vec(),
        },
    }
}

/// Parses an identity as strongSwan writes it: an address, `@fqdn` or a plain FQDN, `user@fqdn`, or `@#hex`
/// for a key ID.
pub fn parse_id(s: &str) -> Id {
    if let Ok(a) = s.parse::<IpAddr>() {
        return id_from_addr(a);
    }
    if let Some(hex) = s.strip_prefix("@#") {
        // `get`, not indexing: a non-ASCII character in the mesh file must not split a UTF-8 sequence.
        let bytes = (0..hex.len() / 2)
            .filter_map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        return Id {
            id_type: IdType::KEY_ID,
            data: bytes,
        };
    }
    if let Some(fqdn) = s.strip_prefix('@') {
        return Id {
            id_type: IdType::FQDN,
            data: fqdn.as_bytes().to_vec(),
        };
    }
    if s.contains('@') {
        return Id {
            id_type: IdType::RFC822_ADDR,
            data: s.as_bytes().to_vec(),
        };
    }
    Id {
        id_type: IdType::FQDN,
        data: s.as_bytes().to_vec(),
    }
}

/// Shows an identity as strongSwan prints it.
pub fn display_id(id: &Id) -> String {
    match id.id_type {
        IdType::IPV4_ADDR if id.data.len() == 4 => match <[u8; 4]>::try_from(&id.data[..]) {
            Ok(a) => std::net::Ipv4Addr::from(a).to_string(),
            Err(_) => "(bad IPv4 ID)".into(),
        },
        IdType::IPV6_ADDR if id.data.len() == 16 => match <[u8; 16]>::try_from(&id.data[..]) {
            Ok(a) => std::net::Ipv6Addr::from(a).to_string(),
            Err(_) => "(bad IPv6 ID)".into(),
        },
        IdType::FQDN | IdType::RFC822_ADDR => String::from_utf8_lossy(&id.data).into_owned(),
        IdType::DER_ASN1_DN => crate::crypto::x509::name::dn_to_string(&id.data),
        IdType::KEY_ID => format!(
            "@#{}",
            id.data
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ),
        t => format!("(ID type {})", t.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        for s in [
            "198.18.0.1",
            "2001:db8::1",
            "b0.example.net",
            "admin@example.net",
            "@#0a0b",
        ] {
            assert_eq!(display_id(&parse_id(s)), s);
        }
        assert_eq!(parse_id("@b0.example.net").id_type, IdType::FQDN);
        // Not a panic: a multi-byte character where a hex digit pair is expected.
        assert!(parse_id("@#aé0b").data.is_empty());
    }
}
