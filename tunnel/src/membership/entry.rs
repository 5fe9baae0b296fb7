//! One host's entry in etcd: the keys of a `[[host]]` table as JSON, under `PREFIX` + its name. Whatever is in
//! etcd is read as untrusted input: bounded ([`MAX_ENTRY_BYTES`], [`MAX_SUBNETS`]), parsed without panicking,
//! and refused with a reason a sysadmin can act on.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::{Host, Identity};
use crate::prefix::Prefix;

/// The largest entry read (a 4096-bit RSA public key in PEM is about 800 bytes).
pub const MAX_ENTRY_BYTES: usize = 4096;
/// The most subnets an entry may list.
pub const MAX_SUBNETS: usize = 64;
/// The most keys read under the prefix; more are ignored (and logged).
pub const MAX_KEYS: usize = 1024;

/// The entry as published (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The host's name, equal to the key's last part.
    pub name: String,
    /// Its underlay address, or its IPv4 and IPv6 addresses (dual stack) as a list of two.
    pub address: EntryAddress,
    /// Its VM subnets (CIDR): listed in the file, or read from its libvirt networks.
    pub subnets: Vec<String>,
    /// Its IKE identity, when not its address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its IKE port, when not 500.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// With `auth = "pubkey"`: its RSA public key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pubkey: Option<String>,
}

/// `address` in an entry: one address (a string, as before dual stack), or a list of an IPv4 and an IPv6 one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EntryAddress {
    /// One address.
    One(String),
    /// Both families' (at most two; the first is the default identity).
    Two(Vec<String>),
}

/// Parses one address of an entry.
fn entry_address(text: &str) -> Result<IpAddr, EntryError> {
    let address: IpAddr = text
        .parse()
        .map_err(|_| invalid("address", "not an IPv4 or IPv6 address"))?;
    if address.is_unspecified() || address.is_multicast() || address.is_loopback() {
        return Err(invalid("address", "not a host's unicast address"));
    }
    Ok(address)
}

/// An entry that parsed: a host, and its public key when it carried one.
#[derive(Debug, Clone)]
pub struct Member {
    /// The host, as a `[[host]]` table would give it.
    pub host: Host,
    /// Its public key (PEM text and parsed), with `auth = "pubkey"`.
    pub pubkey: Option<ike::crypto::signature::PublicKey>,
    /// The entry's create revision in etcd (0 when not read from etcd): the same while the entry is rewritten,
    /// a new one once it was deleted and written anew.
    pub created: i64,
}

/// Why an entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// Larger than [`MAX_ENTRY_BYTES`].
    #[error("{0} bytes, more than the {MAX_ENTRY_BYTES} allowed")]
    TooLarge(usize),
    /// Not an entry (JSON with the keys of a `[[host]]` table).
    #[error("not a host entry ({0})")]
    Syntax(String),
    /// The key's last part and the entry's name differ, or the name cannot be a host name.
    #[error("the key names {key:?} but the entry is for {name:?}")]
    KeyMismatch {
        /// The key's last part.
        key: String,
        /// The entry's `name`.
        name: String,
    },
    /// A field's value cannot be used.
    #[error("{field}: {problem}")]
    Invalid {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(field: &'static str, problem: impl Into<String>) -> EntryError {
    EntryError::Invalid {
        field,
        problem: problem.into(),
    }
}

/// A host name as the mesh file allows it.
fn usable_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Parses the entry stored at `key` (with `prefix` stripped: the host's name) from `value`.
pub fn parse(name_in_key: &str, value: &[u8]) -> Result<Member, EntryError> {
    if value.len() > MAX_ENTRY_BYTES {
        return Err(EntryError::TooLarge(value.len()));
    }
    let e: Entry = serde_json::from_slice(value)
        .map_err(|e| EntryError::Syntax(crate::daemon::logcap::clean(&e, 200)))?;
    if e.name != name_in_key || !usable_name(&e.name) {
        return Err(EntryError::KeyMismatch {
            key: crate::daemon::logcap::clean(&name_in_key, 64),
            name: crate::daemon::logcap::clean(&e.name, 64),
        });
    }
    let (address, second_address) = match &e.address {
        EntryAddress::One(a) => (entry_address(a)?, None),
        EntryAddress::Two(l) => match l.as_slice() {
            [a] => (entry_address(a)?, None),
            [a, b] => {
                let (a, b) = (entry_address(a)?, entry_address(b)?);
                if a.is_ipv4() == b.is_ipv4() {
                    return Err(invalid(
                        "address",
                        "two addresses of one family (at most one IPv4 and one IPv6)",
                    ));
                }
                (a, Some(b))
            }
            _ => {
                return Err(invalid(
                    "address",
                    "one address, or a list of one IPv4 and one IPv6 address",
                ))
            }
        },
    };
    if e.subnets.len() > MAX_SUBNETS {
        return Err(invalid(
            "subnets",
            format!("{} subnets, more than {MAX_SUBNETS}", e.subnets.len()),
        ));
    }
    let mut subnets: Vec<Prefix> = Vec::with_capacity(e.subnets.len());
    for s in &e.subnets {
        let p: Prefix = s
            .parse()
            .map_err(|_| invalid("subnets", "not a list of CIDR prefixes"))?;
        if subnets.iter().any(|q| q.overlaps(&p)) {
            return Err(invalid("subnets", "two of its subnets overlap"));
        }
        if let Some((r, name)) = p.special_use() {
            return Err(invalid(
                "subnets",
                format!("{p} overlaps {r} ({name}), which holds no VM subnet"),
            ));
        }
        if p.contains(address) || second_address.is_some_and(|a| p.contains(a)) {
            return Err(invalid(
                "subnets",
                "a subnet holds the host's own underlay address",
            ));
        }
        subnets.push(p);
    }
    let id = match &e.id {
        None => Identity::Addr(address),
        Some(t) => Identity::parse(t).map_err(|_| invalid("id", "not an IKE identity"))?,
    };
    let port = e.port.unwrap_or(crate::config::DEFAULT_IKE_PORT);
    if port == 0 {
        return Err(invalid("port", "0 is no port"));
    }
    let pubkey = e
        .pubkey
        .as_ref()
        .map(|pem| ike::crypto::keyfile::parse_public_key(pem.as_bytes()))
        .transpose()
        .map_err(|_| invalid("pubkey", "not an RSA public key in PEM"))?;
    Ok(Member {
        host: Host {
            name: e.name,
            address,
            second_address,
            subnets,
            libvirt: None,
            id,
            port,
        },
        pubkey,
        created: 0,
    })
}

/// The entry this host publishes: its `[[host]]` keys (with the subnets read from libvirt, if any), and its
/// public key's PEM with `auth = "pubkey"`.
pub fn of_host(h: &Host, pubkey_pem: Option<String>) -> Entry {
    Entry {
        name: h.name.clone(),
        address: match h.second_address {
            None => EntryAddress::One(h.address.to_string()),
            Some(b) => EntryAddress::Two(vec![h.address.to_string(), b.to_string()]),
        },
        subnets: h.subnets.iter().map(|p| p.to_string()).collect(),
        id: (h.id != Identity::Addr(h.address)).then(|| h.id.to_string()),
        port: (h.port != crate::config::DEFAULT_IKE_PORT).then_some(h.port),
        pubkey: pubkey_pem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_round_trips_and_bad_ones_are_refused_with_a_reason() {
        let ok = br#"{"name":"h7","address":"198.18.0.7","subnets":["198.19.7.0/24"]}"#;
        let m = parse("h7", ok).unwrap();
        assert_eq!(m.host.address.to_string(), "198.18.0.7");
        assert_eq!(m.host.port, 500);
        let back = serde_json::to_vec(&of_host(&m.host, None)).unwrap();
        assert_eq!(back, ok.to_vec());
        for (name, v, want) in [
            ("h8", &ok[..], "the key names"),
            ("h7", br#"{"name":"h7"}"#, "not a host entry"),
            ("h7", br#"{"name":"h7","address":"x","subnets":[]}"#, "address"),
            (
                "h7",
                br#"{"name":"h7","address":"198.18.0.7","subnets":["198.19.7.0/24","198.19.7.128/25"]}"#,
                "overlap",
            ),
            (
                "h7",
                br#"{"name":"h7","address":"198.18.0.7","subnets":["198.18.0.0/24"]}"#,
                "own underlay",
            ),
            (
                "h7",
                br#"{"name":"h7","address":"198.18.0.7","subnets":[],"evil":1}"#,
                "unknown field",
            ),
            // Every host would route them into the tunnel: a cloud's metadata service, multicast, all of IPv6
            // in two halves.
            (
                "h7",
                br#"{"name":"h7","address":"198.18.0.7","subnets":["169.254.169.254/32"]}"#,
                "overlaps 169.254.0.0/16 (link-local)",
            ),
            (
                "h7",
                br#"{"name":"h7","address":"198.18.0.7","subnets":["224.0.0.0/4"]}"#,
                "multicast",
            ),
            (
                "h7",
                br#"{"name":"h7","address":"198.18.0.7","subnets":["::/1","8000::/1"]}"#,
                "overlaps ::/128",
            ),
        ] {
            let e = parse(name, v).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let big = vec![b' '; MAX_ENTRY_BYTES + 1];
        assert!(matches!(parse("h7", &big), Err(EntryError::TooLarge(_))));
        let many: Vec<String> = (0..65).map(|i| format!("\"10.{i}.0.0/16\"")).collect();
        let v = format!(
            r#"{{"name":"h7","address":"198.18.0.7","subnets":[{}]}}"#,
            many.join(",")
        );
        assert!(parse("h7", v.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("more than 64"));
    }

    #[test]
    fn a_dual_stack_entry_carries_both_addresses() {
        let ok = br#"{"name":"h7","address":["198.18.0.7","2001:db8:0:ff::7"],"subnets":["198.19.7.0/24"]}"#;
        let m = parse("h7", ok).unwrap();
        assert_eq!(m.host.address.to_string(), "198.18.0.7");
        assert_eq!(
            m.host.second_address.unwrap().to_string(),
            "2001:db8:0:ff::7"
        );
        // The default identity stays the first address: no `id` written back.
        let back = serde_json::to_vec(&of_host(&m.host, None)).unwrap();
        assert_eq!(back, ok.to_vec());
        for (v, want) in [
            (&br#"{"name":"h7","address":["198.18.0.7","198.18.0.8"],"subnets":[]}"#[..], "one family"),
            (br#"{"name":"h7","address":["198.18.0.7","2001:db8::7","2001:db8::8"],"subnets":[]}"#, "a list of one IPv4"),
            (br#"{"name":"h7","address":[],"subnets":[]}"#, "a list of one IPv4"),
            (br#"{"name":"h7","address":["198.18.0.7","::1"],"subnets":[]}"#, "unicast"),
            (br#"{"name":"h7","address":["198.18.0.7","2001:db8:7::1"],"subnets":["2001:db8:7::/64"]}"#, "own underlay"),
            (br#"{"name":"h7","address":7,"subnets":[]}"#, "not a host entry"),
        ] {
            let e = parse("h7", v).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
