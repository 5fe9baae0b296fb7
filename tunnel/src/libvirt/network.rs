//! libvirt's network definitions read from disk: a leaf that returns [`Network`]s and knows nothing of the mesh
//! file, so that both the configuration (`subnets = "libvirt"`) and `vmsecd check` can use it.

use std::fs;
use std::path::{Path, PathBuf};

use crate::prefix::Prefix;

/// Where libvirt keeps its network definitions: the running networks (with what libvirt filled in) and the
/// persistent ones. A name found in both is read from the first.
pub const NETWORK_DIRS: [&str; 2] = ["/run/libvirt/network", "/etc/libvirt/qemu/networks"];

/// A libvirt network, as far as the mesh cares: its subnets must be in this host's `subnets` (or its VMs are
/// not reachable through the mesh), and must not overlap another host's (the how-to's first step: renumber
/// 192.168.122.0/24 on all hosts but one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    /// `<name>`.
    pub name: String,
    /// `<forward mode=...>`: `nat` (also when `<forward>` has no mode), `route`, `open`, ...; `isolated` when
    /// there is no `<forward>` element.
    pub mode: String,
    /// `<bridge name=...>`.
    pub bridge: Option<String>,
    /// One per `<ip address=... netmask=...|prefix=...>`.
    pub subnets: Vec<Prefix>,
}

/// The attributes of the first element named `tag` at or after `from` in `xml`, and where it ends.
fn element<'a>(xml: &'a str, tag: &str, from: usize) -> Option<(Vec<(&'a str, &'a str)>, usize)> {
    let mut at = from;
    loop {
        let start = at + xml.get(at..)?.find(&format!("<{tag}"))?;
        let after = start + 1 + tag.len();
        let next = xml[after..].chars().next()?;
        if !(next.is_whitespace() || next == '>' || next == '/') {
            at = after;
            continue;
        }
        let end = after + xml[after..].find('>')?;
        let mut attrs = Vec::new();
        let mut rest = &xml[after..end];
        while let Some(eq) = rest.find('=') {
            let key = rest[..eq].trim();
            let value = rest[eq + 1..].trim_start();
            let quote = value.chars().next()?;
            if quote != '\'' && quote != '"' {
                return None;
            }
            let close = value[1..].find(quote)?;
            attrs.push((key, &value[1..1 + close]));
            rest = &value[close + 2..];
        }
        return Some((attrs, end + 1));
    }
}

fn attr<'a>(attrs: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    attrs.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

/// Reads one network definition (libvirt's network XML). `None` if it has no `<name>`.
pub fn parse_network(xml: &str) -> Option<Network> {
    let name_start = xml.find("<name>")? + "<name>".len();
    let name = xml[name_start..name_start + xml[name_start..].find("</name>")?]
        .trim()
        .to_owned();
    let mode = match element(xml, "forward", 0) {
        Some((attrs, _)) => attr(&attrs, "mode").unwrap_or("nat").to_owned(),
        None => "isolated".to_owned(),
    };
    let bridge = element(xml, "bridge", 0).and_then(|(a, _)| attr(&a, "name").map(str::to_owned));
    let mut subnets = Vec::new();
    let mut at = 0;
    while let Some((attrs, end)) = element(xml, "ip", at) {
        at = end;
        let Some(addr) = attr(&attrs, "address").and_then(|a| a.parse::<std::net::IpAddr>().ok())
        else {
            continue;
        };
        let len = match (attr(&attrs, "prefix"), attr(&attrs, "netmask")) {
            (Some(p), _) => p.parse::<u8>().ok(),
            (None, Some(m)) => m
                .parse::<std::net::Ipv4Addr>()
                .ok()
                .map(|m| u32::from(m).leading_ones() as u8),
            (None, None) => Some(if addr.is_ipv4() { 24 } else { 64 }),
        };
        if let Some(len) = len {
            subnets.push(Prefix::new(addr, len));
        }
    }
    Some(Network {
        name,
        mode,
        bridge,
        subnets,
    })
}

/// Every libvirt network defined on this machine (see [`NETWORK_DIRS`]), by name; unreadable files are skipped.
pub fn networks(dirs: &[&Path]) -> Vec<Network> {
    let mut found: Vec<Network> = Vec::new();
    for dir in dirs {
        let Ok(entries) = fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "xml"))
            .collect();
        files.sort();
        for f in files {
            let Some(n) = fs::read_to_string(&f).ok().and_then(|x| parse_network(&x)) else {
                continue;
            };
            if !found.iter().any(|m| m.name == n.name) {
                found.push(n);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &str = "<network>\n  <name>default</name>\n  <uuid>x</uuid>\n  <forward mode='nat'/>\n  \
        <bridge name='virbr0' stp='on' delay='0'/>\n  <ip address='198.19.1.1' netmask='255.255.255.0'>\n    \
        <dhcp><range start='198.19.1.2' end='198.19.1.254'/></dhcp>\n  </ip>\n  \
        <ip family=\"ipv6\" address=\"fd00:1::1\" prefix=\"64\"/>\n</network>\n";

    #[test]
    fn reads_name_mode_bridge_and_subnets() {
        let n = parse_network(DEFAULT).unwrap();
        assert_eq!(n.name, "default");
        assert_eq!(n.mode, "nat");
        assert_eq!(n.bridge.as_deref(), Some("virbr0"));
        let s: Vec<String> = n.subnets.iter().map(|p| p.to_string()).collect();
        assert_eq!(s, ["198.19.1.0/24", "fd00:1::/64"]);
        let iso = parse_network("<network><name>iso</name><bridge name='virbr1'/><ip address='198.19.9.1' prefix='25'/></network>").unwrap();
        assert_eq!(iso.mode, "isolated");
        assert_eq!(iso.subnets[0].to_string(), "198.19.9.0/25");
        // <ipv6/> or <iptables/> elsewhere are not <ip>; garbage gives no subnet, never a panic.
        let odd = parse_network("<network><name>o</name><ipv6 x='1'/><ip address='nope'/><ip address='1.2.3.4' netmask=>").unwrap();
        assert!(odd.subnets.is_empty(), "{odd:?}");
        assert!(parse_network("<network/>").is_none());
    }

    #[test]
    fn finds_networks_running_ones_first() {
        let d = tempfile::tempdir().unwrap();
        let (run, etc) = (d.path().join("run"), d.path().join("etc"));
        fs::create_dir_all(&run).unwrap();
        fs::create_dir_all(&etc).unwrap();
        fs::write(run.join("default.xml"), DEFAULT).unwrap();
        fs::write(
            etc.join("default.xml"),
            DEFAULT.replace("198.19.1.1", "198.19.7.1"),
        )
        .unwrap();
        fs::write(etc.join("other.xml"), "<network><name>other</name><forward mode='route'/><ip address='198.19.8.1' prefix='24'/></network>").unwrap();
        fs::write(etc.join("notes.txt"), "not xml").unwrap();
        let nets = networks(&[&run, &etc]);
        assert_eq!(nets.len(), 2);
        assert_eq!(nets[0].subnets[0].to_string(), "198.19.1.0/24");
        assert_eq!(
            (nets[1].name.as_str(), nets[1].mode.as_str()),
            ("other", "route")
        );
    }
}
