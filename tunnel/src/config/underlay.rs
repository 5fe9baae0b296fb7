//! Dual-stack underlay: a host may have an IPv4 and an IPv6 address (`address = ["198.18.0.1",
//! "2001:db8::1"]`), and each pair of hosts talks over one family, the same one seen from both ends: IPv6 when
//! both have an IPv6 address, else IPv4 when both have an IPv4 one. A pair with no family in common (an
//! IPv4-only host and an IPv6-only host) has no tunnel: [`NoCommonFamily`] says so, naming both hosts, and
//! `Config::peers` leaves such a peer out (its subnets stay behind the fail-closed routes).

use std::net::IpAddr;

use super::{Host, Tunnel};

/// The family a pair uses when both hosts have both: IPv6 (as RFC 6724's default policy prefers it).
pub const PREFERRED_IS_V6: bool = true;

/// A pair of hosts with no underlay family in common: neither can reach the other's address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no tunnel between hosts {local} ({local_addrs}) and {peer} ({peer_addrs}): they have no underlay address \
     family in common; give one of them an address of the other's family (address = [\"IPv4\", \"IPv6\"]), or \
     route their VMs' traffic through a host that has both"
)]
pub struct NoCommonFamily {
    /// This host's name.
    pub local: String,
    /// Its addresses.
    pub local_addrs: String,
    /// The peer's name.
    pub peer: String,
    /// Its addresses.
    pub peer_addrs: String,
}

impl Host {
    /// Its underlay addresses: `address`, then the other family's when it has both.
    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        std::iter::once(self.address).chain(self.second_address)
    }

    /// Its address of one family, if it has one.
    pub fn address_of(&self, v6: bool) -> Option<IpAddr> {
        self.addresses().find(|a| a.is_ipv6() == v6)
    }

    /// The addresses as the mesh file writes them, for messages: `198.18.0.1` or `198.18.0.1, 2001:db8::1`.
    pub fn addresses_text(&self) -> String {
        self.addresses()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Tunnel<'_> {
    /// The underlay addresses this pair talks over, (ours, the peer's): of one family, the same one seen from
    /// either end (IPv6 preferred when both hosts have both).
    pub fn underlay(&self) -> Result<(IpAddr, IpAddr), NoCommonFamily> {
        pair(self.local, self.peer)
    }
}

/// See [`Tunnel::underlay`].
pub fn pair(local: &Host, peer: &Host) -> Result<(IpAddr, IpAddr), NoCommonFamily> {
    for v6 in [PREFERRED_IS_V6, !PREFERRED_IS_V6] {
        if let (Some(l), Some(p)) = (local.address_of(v6), peer.address_of(v6)) {
            return Ok((l, p));
        }
    }
    Err(NoCommonFamily {
        local: local.name.clone(),
        local_addrs: local.addresses_text(),
        peer: peer.name.clone(),
        peer_addrs: peer.addresses_text(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Identity;

    fn host(name: &str, addrs: &[&str]) -> Host {
        let a: Vec<IpAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        Host {
            name: name.into(),
            address: a[0],
            second_address: a.get(1).copied(),
            subnets: vec![],
            libvirt: None,
            id: Identity::Addr(a[0]),
            port: 500,
        }
    }

    #[test]
    fn a_pair_uses_the_family_both_have_ipv6_first() {
        let a = host("a", &["198.18.0.1", "2001:db8::1"]);
        let b = host("b", &["198.18.0.2"]);
        let c = host("c", &["2001:db8::3"]);
        let d = host("d", &["2001:db8::4", "198.18.0.4"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(pair(&a, &b).unwrap(), (ip("198.18.0.1"), ip("198.18.0.2")));
        assert_eq!(pair(&b, &a).unwrap(), (ip("198.18.0.2"), ip("198.18.0.1")));
        assert_eq!(
            pair(&a, &c).unwrap(),
            (ip("2001:db8::1"), ip("2001:db8::3"))
        );
        // Both have both: IPv6, whatever order each lists them in.
        assert_eq!(
            pair(&a, &d).unwrap(),
            (ip("2001:db8::1"), ip("2001:db8::4"))
        );
        assert_eq!(
            pair(&d, &a).unwrap(),
            (ip("2001:db8::4"), ip("2001:db8::1"))
        );
        let e = pair(&b, &c).unwrap_err();
        assert_eq!(
            e.to_string().split(':').next().unwrap(),
            "no tunnel between hosts b (198.18.0.2) and c (2001"
        );
        assert!(e.to_string().contains("c (2001:db8::3)"), "{e}");
    }
}
