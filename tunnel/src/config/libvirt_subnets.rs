//! `subnets = "libvirt"` on the local host: its subnets read from this machine's libvirt networks (through the
//! leaf [`crate::libvirt::network`]) and checked against the mesh before the daemon uses them.

use std::path::Path;

use super::{join, Config, ConfigError, ErrorKind, LibvirtFound};
use crate::prefix::Prefix;

impl Config {
    /// For a local host with `subnets = "libvirt"`: reads this machine's libvirt network definitions from
    /// `dirs` (normally [`crate::libvirt::network::NETWORK_DIRS`]) and makes their subnets the local subnets:
    /// the IPv4 ones, and the IPv6 ones too when the host's `libvirt_range` holds an IPv6 prefix (a range of
    /// IPv6 prefixes alone takes only IPv6 subnets).
    /// Refused, in words that say what to do, when no network (or a named one) is found, or a subnet lies
    /// outside its libvirt range, overlaps another host's subnets or holds a host's address. Returns
    /// `None` when the local host lists its subnets.
    pub fn resolve_libvirt(&mut self, dirs: &[&Path]) -> Result<Option<LibvirtFound>, ConfigError> {
        let me = self.local();
        let Some(lv) = me.libvirt.clone() else {
            return Ok(None);
        };
        let name = me.name.clone();
        let err = |kind| ConfigError {
            file: self.mesh.file.clone(),
            location: None,
            key: format!("host[{}].subnets", self.local),
            kind: Box::new(kind),
        };
        let where_ = join(dirs.iter().map(|d| d.display()));
        let all = crate::libvirt::network::networks(dirs);
        let missing: Vec<&String> = lv
            .networks
            .iter()
            .filter(|n| !all.iter().any(|a| &a.name == *n))
            .collect();
        if !missing.is_empty() {
            return Err(err(ErrorKind::Libvirt(format!(
                "{name} takes its subnets from the libvirt networks {}, but {} {} not defined on this machine (networks found in {where_}: {}); define and start {} (virsh net-define, virsh net-start) or fix libvirt_networks",
                join(lv.networks.iter()),
                join(missing.iter()),
                if missing.len() == 1 { "is" } else { "are" },
                if all.is_empty() { "none".to_owned() } else { join(all.iter().map(|n| &n.name)) },
                if missing.len() == 1 { "it" } else { "them" },
            ))));
        }
        // The families its range has: IPv4 always was; IPv6 subnets (<ip family='ipv6' .../>) are taken
        // when the range holds an IPv6 prefix, and left to libvirt alone otherwise, as before.
        let v6 = lv.range.iter().any(|r| !r.is_ipv4());
        let v4 = lv.range.iter().any(|r| r.is_ipv4());
        let families = match (v4, v6) {
            (true, true) => "an IPv4 or IPv6 address",
            (false, true) => "an IPv6 address",
            _ => "an IPv4 address",
        };
        let networks: Vec<(String, Vec<Prefix>)> = all
            .iter()
            .filter(|n| lv.networks.is_empty() || lv.networks.contains(&n.name))
            .map(|n| {
                let taken: Vec<Prefix> = n
                    .subnets
                    .iter()
                    .copied()
                    .filter(|p| if p.is_ipv4() { v4 || !v6 } else { v6 })
                    .collect();
                (n.name.clone(), taken)
            })
            .filter(|(_, taken)| !taken.is_empty())
            .collect();
        if networks.is_empty() {
            return Err(err(ErrorKind::Libvirt(format!(
                "{name} has subnets = \"libvirt\", but no libvirt network with {families} was found in {where_}{}: define one (virsh net-define, e.g. with <ip address='192.168.122.1' prefix='24'/>) and start it, or list this host's subnets in the mesh file",
                if lv.networks.is_empty() {
                    String::new()
                } else {
                    format!(" among {}", join(lv.networks.iter()))
                }
            ))));
        }
        let range = &lv.range;
        let mut subnets: Vec<Prefix> = Vec::new();
        for (net, nets) in &networks {
            for s in nets {
                if !range.iter().any(|r| r.contains_prefix(s)) {
                    return Err(err(ErrorKind::Libvirt(format!(
                        "libvirt network {net}'s subnet {s} lies outside {name}'s libvirt_range ({}): the other hosts would refuse it; renumber the network (virsh net-edit {net}) or widen the range",
                        join(range.iter())
                    ))));
                }
                if let Some(o) = subnets.iter().find(|o| o.overlaps(s)) {
                    return Err(err(ErrorKind::Libvirt(format!(
                        "libvirt network {net}'s subnet {s} overlaps {o} of another of this host's networks: renumber one (virsh net-edit {net})"
                    ))));
                }
                for h in self.mesh.peers(me) {
                    if let Some(o) = h.subnets.iter().find(|o| o.overlaps(s)) {
                        return Err(err(ErrorKind::Libvirt(format!(
                            "libvirt network {net}'s subnet {s} on {name} overlaps {}'s subnet {o}: renumber the network (virsh net-edit {net}) or the other host's subnet",
                            h.name
                        ))));
                    }
                }
                if let Some((h, a)) = self
                    .mesh
                    .hosts
                    .iter()
                    .find_map(|h| h.addresses().find(|&a| s.contains(a)).map(|a| (h, a)))
                {
                    return Err(err(ErrorKind::Libvirt(format!(
                        "libvirt network {net}'s subnet {s} holds {}'s address {a}: the route for it would send IKE and ESP into the tunnel; renumber the network (virsh net-edit {net})",
                        h.name
                    ))));
                }
                subnets.push(*s);
            }
        }
        let local = self.local;
        self.mesh.hosts[local].subnets = subnets;
        Ok(Some(LibvirtFound { networks }))
    }
}
