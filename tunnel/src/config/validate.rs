//! Validation of the mesh file: from the TOML as given (with the place of every value) to [`Mesh`]'s parts,
//! with an error naming the line, the key, what is wrong and what is allowed for anything that would not work.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ike::proposal::{ProposalError, ProposalSpec};

use super::schema::{self, S};
use super::{
    Auth, CaFile, CertAuth, CertFile, ConfigError, ControlSocket, Encap, ErrorKind, FirewallMode,
    Host, Identity, KeyFileError, LibvirtSubnets, PrivateKeyFile, Psk, PubKeyAuth, PublicKeyFile,
    Settings, DEFAULT_CHILD_LIFETIME, DEFAULT_CONTROL_SOCKET, DEFAULT_DPD_DELAY,
    DEFAULT_ESP_PROPOSAL, DEFAULT_IKE_LIFETIME, DEFAULT_IKE_PORT, DEFAULT_IKE_PROPOSAL,
    DEFAULT_INTERFACE, DEFAULT_MTU, DEFAULT_REKEY_MARGIN, DEFAULT_WORKERS, MAX_WORKERS,
};
use crate::prefix::Prefix;

const MIN_LIFETIME: Duration = Duration::from_secs(10);
const ALLOWED_DURATION: &str =
    "a duration such as \"4h\", \"30m\", \"1h 30m\", \"90s\", or a number of seconds";

/// Validation context: the file's name and text, to turn spans into lines and columns.
pub(super) struct Cx<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
}

impl Cx<'_> {
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn err(
        &self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        kind: impl Into<ErrorKind>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            location: span.map(|s| self.line_col(s.start)),
            key: key.into(),
            kind: Box::new(kind.into()),
        }
    }

    fn invalid<T>(&self, v: &S<T>, key: &str, problem: String, allowed: &str) -> ConfigError {
        self.err(
            Some(v.span()),
            key,
            ErrorKind::Invalid {
                problem,
                allowed: allowed.to_owned(),
            },
        )
    }

    /// A path from the file, relative ones taken from the file's folder.
    fn path(&self, p: &str) -> PathBuf {
        self.file.parent().unwrap_or(Path::new("")).join(p)
    }

    pub(super) fn settings(&self, m: &schema::MeshSection) -> Result<Settings, ConfigError> {
        let interface = match &m.interface {
            None => DEFAULT_INTERFACE.to_owned(),
            Some(v) => {
                let n = v.get_ref();
                // IFNAMSIZ is 16 with the NUL; "." and ".." and '/' would clash with /sys/class/net.
                let ok = (1..=15).contains(&n.len())
                    && n != "."
                    && n != ".."
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    return Err(self.invalid(
                        v,
                        "mesh.interface",
                        format!("{n:?} is not a usable interface name"),
                        "1 to 15 characters of letters, digits, '-', '_' and '.'",
                    ));
                }
                n.clone()
            }
        };
        let ike_proposals = self.proposals(
            &m.ike_proposals,
            "mesh.ike_proposals",
            DEFAULT_IKE_PROPOSAL,
            ProposalSpec::ike,
        )?;
        let esp_proposals = self.proposals(
            &m.esp_proposals,
            "mesh.esp_proposals",
            DEFAULT_ESP_PROPOSAL,
            ProposalSpec::esp,
        )?;
        let ike_lifetime =
            self.duration(&m.ike_lifetime, "mesh.ike_lifetime", DEFAULT_IKE_LIFETIME)?;
        let child_lifetime = self.duration(
            &m.child_lifetime,
            "mesh.child_lifetime",
            DEFAULT_CHILD_LIFETIME,
        )?;
        let rekey_margin =
            self.duration(&m.rekey_margin, "mesh.rekey_margin", DEFAULT_REKEY_MARGIN)?;
        let dpd_delay = self.duration(&m.dpd_delay, "mesh.dpd_delay", DEFAULT_DPD_DELAY)?;
        for (v, key, life) in [
            (&m.ike_lifetime, "mesh.ike_lifetime", ike_lifetime),
            (&m.child_lifetime, "mesh.child_lifetime", child_lifetime),
        ] {
            if life < MIN_LIFETIME {
                return Err(self.err(
                    v.as_ref().map(|v| v.span()),
                    key,
                    ErrorKind::Invalid {
                        problem: format!("{} is too short", humantime::format_duration(life)),
                        allowed: format!("at least {}", humantime::format_duration(MIN_LIFETIME)),
                    },
                ));
            }
            if rekey_margin.is_zero() || rekey_margin * 2 >= life {
                let lifetime_key = key;
                let (span, key) = match &m.rekey_margin {
                    Some(v) => (Some(v.span()), "mesh.rekey_margin"),
                    None => (v.as_ref().map(|v| v.span()), lifetime_key),
                };
                return Err(self.err(
                    span,
                    key,
                    ErrorKind::Invalid {
                        problem: format!(
                            "rekey_margin {} leaves no room to rekey within {} {}",
                            humantime::format_duration(rekey_margin),
                            lifetime_key.trim_start_matches("mesh."),
                            humantime::format_duration(life),
                        ),
                        allowed: "a rekey_margin above 0 and below half of ike_lifetime and of child_lifetime"
                            .to_owned(),
                    },
                ));
            }
        }
        let encap = match &m.encap {
            None => Encap::Auto,
            Some(v) => match v.get_ref().as_str() {
                "auto" => Encap::Auto,
                "udp" => Encap::Udp,
                "raw" => Encap::Raw,
                other => {
                    return Err(self.invalid(
                        v,
                        "mesh.encap",
                        format!("unknown encapsulation {other:?}"),
                        "\"auto\" (raw ESP unless NAT is found or the peer uses UDP), \"udp\" (always UDP 4500), \
                         \"raw\" (always IP protocol 50)",
                    ))
                }
            },
        };
        let replay_window = match &m.replay_window {
            None => esp::DEFAULT_REPLAY_WINDOW,
            Some(v) => {
                let n = *v.get_ref();
                let max = i64::from(esp::MAX_REPLAY_WINDOW);
                if !(64..=max).contains(&n) {
                    return Err(self.invalid(
                        v,
                        "mesh.replay_window",
                        format!("{n} packets is out of range"),
                        &format!("64 to {max} packets (rounded up to a power of two)"),
                    ));
                }
                n as u32
            }
        };
        let workers = match &m.workers {
            None => DEFAULT_WORKERS,
            Some(v) => {
                let n = *v.get_ref();
                if !(1..=MAX_WORKERS as i64).contains(&n) {
                    return Err(self.invalid(
                        v,
                        "mesh.workers",
                        format!("{n} workers is out of range"),
                        &format!("1 to {MAX_WORKERS} (one per core is the most that helps)"),
                    ));
                }
                let n = n as usize;
                // Each worker sends its bursts (up to 64 packets, numbered as one block) while the others send
                // theirs, so a peer sees up to (n - 1) x 64 packets out of order; the mesh's replay window,
                // which every vmsecd peer uses, must accept that.
                let late = (n - 1) * 64;
                if late > replay_window as usize {
                    return Err(self.invalid(
                        v,
                        "mesh.workers",
                        format!(
                            "{n} workers can deliver packets up to {late} out of order, more than replay_window \
                             = {replay_window} accepts"
                        ),
                        &format!(
                            "at most {} workers with this replay_window, or replay_window = {} or more",
                            replay_window as usize / 64 + 1,
                            late.next_power_of_two()
                        ),
                    ));
                }
                n
            }
        };
        let mtu = match &m.mtu {
            None => DEFAULT_MTU,
            Some(v) => {
                let n = *v.get_ref();
                if !(576..=65535).contains(&n) {
                    return Err(self.invalid(
                        v,
                        "mesh.mtu",
                        format!("{n} is out of range"),
                        "576 to 65535 bytes (1280 or more when a subnet is IPv6)",
                    ));
                }
                n as u32
            }
        };
        let control_socket = match &m.control_socket {
            None => ControlSocket::Abstract(DEFAULT_CONTROL_SOCKET[1..].to_owned()),
            Some(v) => {
                ControlSocket::parse(v.get_ref(), self.file.parent().unwrap_or(Path::new("")))
                    .map_err(|allowed| {
                        self.invalid(
                            v,
                            "mesh.control_socket",
                            format!("{:?} cannot be used", v.get_ref()),
                            &allowed,
                        )
                    })?
            }
        };
        let firewall = match &m.firewall {
            None => FirewallMode::Auto,
            Some(v) => match v.get_ref().as_str() {
                "auto" => FirewallMode::Auto,
                "off" => FirewallMode::Off,
                other => {
                    return Err(self.invalid(
                        v,
                        "mesh.firewall",
                        format!("unknown firewall mode {other:?}"),
                        "\"auto\" (vmsecd keeps its rules ahead of libvirt's NAT and REJECT rules), \"off\" (vmsecd \
                         leaves the firewall alone)",
                    ))
                }
            },
        };
        let nat_keepalive = self.duration(
            &m.nat_keepalive,
            "mesh.nat_keepalive",
            ike::config::Lifetimes::default().nat_keepalive,
        )?;
        let ike_fragment_size = match &m.ike_fragment_size {
            None => ike::config::DEFAULT_FRAGMENT_SIZE,
            Some(v) => {
                let n = *v.get_ref();
                if n != 0 && !(576..=65535).contains(&n) {
                    return Err(self.invalid(
                        v,
                        "mesh.ike_fragment_size",
                        format!("{n} is out of range"),
                        "0 (never fragment) or 576 to 65535 bytes",
                    ));
                }
                n as u16
            }
        };
        Ok(Settings {
            firewall,
            nat_keepalive,
            ike_fragment_size,
            interface,
            mtu,
            ike_proposals,
            esp_proposals,
            ike_lifetime,
            child_lifetime,
            rekey_margin,
            dpd_delay: (!dpd_delay.is_zero()).then_some(dpd_delay),
            encap,
            replay_window,
            workers,
            control_socket,
        })
    }

    fn proposals(
        &self,
        v: &Option<S<Vec<S<String>>>>,
        key: &str,
        default: &str,
        parse: fn(&str) -> Result<ProposalSpec, ProposalError>,
    ) -> Result<Vec<ProposalSpec>, ConfigError> {
        let Some(list) = v else {
            return Ok(vec![parse(default).expect("the default proposal parses")]);
        };
        if list.get_ref().is_empty() {
            return Err(self.invalid(
                list,
                key,
                "the list is empty".to_owned(),
                &format!("one or more proposals in strongSwan's syntax, e.g. [\"{default}\"]"),
            ));
        }
        list.get_ref()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                parse(p.get_ref()).map_err(|e| self.err(Some(p.span()), format!("{key}[{i}]"), e))
            })
            .collect()
    }

    fn duration(
        &self,
        v: &Option<S<toml::Value>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        let parsed = match v.get_ref() {
            toml::Value::Integer(n) if *n >= 0 => Some(Duration::from_secs(*n as u64)),
            toml::Value::String(s) => humantime::parse_duration(s.trim()).ok(),
            _ => None,
        };
        parsed.ok_or_else(|| {
            self.invalid(
                v,
                key,
                format!("{} is not a duration", v.get_ref()),
                ALLOWED_DURATION,
            )
        })
    }

    pub(super) fn hosts(
        &self,
        raw: &[S<schema::HostSection>],
        settings: &Settings,
    ) -> Result<Vec<Host>, ConfigError> {
        if raw.len() < 2 {
            return Err(self.err(
                None,
                "host",
                ErrorKind::Missing {
                    what: format!(
                        "the file has {} [[host]] entr{}; a mesh needs at least two, this machine and a peer",
                        raw.len(),
                        if raw.len() == 1 { "y" } else { "ies" }
                    ),
                },
            ));
        }
        let mut hosts = Vec::with_capacity(raw.len());
        for (i, h) in raw.iter().enumerate() {
            hosts.push(self.host(i, h)?);
        }

        // Unique names, addresses, identities.
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addrs: HashMap<IpAddr, usize> = HashMap::new();
        let mut ids: HashMap<&Identity, usize> = HashMap::new();
        for (i, h) in hosts.iter().enumerate() {
            let r = raw[i].get_ref();
            if let Some(&first) = names.get(h.name.as_str()) {
                return Err(self.err(
                    r.name.as_ref().map(|v| v.span()),
                    format!("host[{i}].name"),
                    ErrorKind::DuplicateName {
                        name: h.name.clone(),
                        first: format!("host[{first}]"),
                    },
                ));
            }
            names.insert(&h.name, i);
            if let Some(&first) = addrs.get(&h.address) {
                return Err(self.err(
                    r.address.as_ref().map(|v| v.span()),
                    format!("host[{i}].address"),
                    ErrorKind::DuplicateAddress {
                        address: h.address,
                        name: h.name.clone(),
                        other: hosts[first].name.clone(),
                    },
                ));
            }
            addrs.insert(h.address, i);
            if let Some(&first) = ids.get(&h.id) {
                let (span, key) = match &r.id {
                    Some(v) => (Some(v.span()), format!("host[{i}].id")),
                    None => (
                        r.address.as_ref().map(|v| v.span()),
                        format!("host[{i}].address"),
                    ),
                };
                return Err(self.err(
                    span,
                    key,
                    ErrorKind::DuplicateId {
                        id: h.id.to_string(),
                        name: h.name.clone(),
                        other: hosts[first].name.clone(),
                    },
                ));
            }
            ids.insert(&h.id, i);
        }

        // Subnets: disjoint across the whole mesh (within a host too), and no host address inside one.
        let subnet_span =
            |i: usize, j: usize| match raw[i].get_ref().subnets.as_ref().map(|s| s.get_ref()) {
                Some(schema::Subnets::List(l)) => l.get(j).map(|v| v.span()),
                _ => None,
            };
        for (i, h) in hosts.iter().enumerate() {
            for (j, s) in h.subnets.iter().enumerate() {
                for (k, other) in hosts.iter().enumerate().take(i + 1) {
                    let upto = if k == i { j } else { other.subnets.len() };
                    if let Some(o) = other.subnets[..upto].iter().find(|o| o.overlaps(s)) {
                        return Err(self.err(
                            subnet_span(i, j),
                            format!("host[{i}].subnets[{j}]"),
                            ErrorKind::Overlap {
                                first_host: other.name.clone(),
                                first_subnet: *o,
                                host: h.name.clone(),
                                subnet: *s,
                            },
                        ));
                    }
                }
                if let Some(victim) = hosts.iter().find(|v| s.contains(v.address)) {
                    return Err(self.err(
                        subnet_span(i, j),
                        format!("host[{i}].subnets[{j}]"),
                        ErrorKind::AddressInSubnet {
                            host: victim.name.clone(),
                            address: victim.address,
                            owner: h.name.clone(),
                            subnet: *s,
                        },
                    ));
                }
                if !s.is_ipv4() && settings.mtu < 1280 {
                    return Err(self.err(
                        subnet_span(i, j),
                        format!("host[{i}].subnets[{j}]"),
                        ErrorKind::Invalid {
                            problem: format!("IPv6 subnet {s} with mesh.mtu = {}", settings.mtu),
                            allowed: "IPv6 needs an MTU of 1280 or more (RFC 8200): raise mesh.mtu"
                                .to_owned(),
                        },
                    ));
                }
            }
        }
        Ok(hosts)
    }

    /// `host[i].libvirt_networks`: network names, at least one, each once.
    fn libvirt_networks(
        &self,
        i: usize,
        v: &S<Vec<S<String>>>,
    ) -> Result<Vec<String>, ConfigError> {
        let key = format!("host[{i}].libvirt_networks");
        if v.get_ref().is_empty() {
            return Err(self.invalid(
                v,
                &key,
                "the list is empty".to_owned(),
                "the names of one or more libvirt networks (virsh net-list --all), e.g. [\"default\"]; or \
                 remove the key to take every network with an IPv4 address",
            ));
        }
        let mut names: Vec<String> = Vec::new();
        for (j, n) in v.get_ref().iter().enumerate() {
            let name = n.get_ref();
            let allowed =
                "the name of a libvirt network as virsh net-list --all shows it, each once";
            if name.trim().is_empty() || name.contains('/') {
                return Err(self.invalid(
                    n,
                    &format!("{key}[{j}]"),
                    format!("{name:?} is not a network name"),
                    allowed,
                ));
            }
            if names.contains(name) {
                return Err(self.invalid(
                    n,
                    &format!("{key}[{j}]"),
                    format!("{name:?} is listed twice"),
                    allowed,
                ));
            }
            names.push(name.clone());
        }
        Ok(names)
    }

    /// The ranges the subnets of `subnets = "libvirt"` hosts may lie in, one per such host: its own
    /// `host.libvirt_range`, or `mesh.libvirt_range` when it is the only such host (the file format before
    /// per-host ranges). A range is where the other hosts accept that host's negotiated subnets, so ranges of
    /// different hosts must not overlap: otherwise one host could claim subnets of another (while that one is
    /// down, too).
    pub(super) fn libvirt_ranges(
        &self,
        m: &schema::MeshSection,
        raw: &[S<schema::HostSection>],
        hosts: &mut [Host],
        settings: &Settings,
    ) -> Result<(), ConfigError> {
        let users: Vec<usize> = (0..hosts.len())
            .filter(|&i| hosts[i].libvirt.is_some())
            .collect();
        for (i, h) in raw.iter().enumerate() {
            let Some(v) = &h.get_ref().libvirt_range else {
                continue;
            };
            let key = format!("host[{i}].libvirt_range");
            if hosts[i].libvirt.is_none() {
                return Err(self.invalid(
                    v,
                    &key,
                    "set, but this host lists its subnets".to_owned(),
                    "remove it, or set subnets = \"libvirt\" to learn this host's subnets within this range",
                ));
            }
            let range = self.range_list(v, &key, hosts, settings)?;
            if let Some(lv) = hosts[i].libvirt.as_mut() {
                lv.range = range;
            }
        }
        let names = |v: &[usize]| {
            v.iter()
                .map(|&i| hosts[i].name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &m.libvirt_range {
            None => {
                if let Some(&i) = users.iter().find(|&&i| {
                    hosts[i]
                        .libvirt
                        .as_ref()
                        .is_some_and(|l| l.range.is_empty())
                }) {
                    return Err(self.err(
                        raw[i].get_ref().subnets.as_ref().map(|s| s.span()),
                        format!("host[{i}].libvirt_range"),
                        ErrorKind::Missing {
                            what: format!(
                                "host {} has subnets = \"libvirt\": the other hosts learn its subnets from the traffic \
                                 selectors it negotiates, and accept them only within its own range: libvirt_range = \
                                 [\"192.168.122.0/24\"] in its [[host]] (ranges of different hosts must not overlap; \
                                 mesh.libvirt_range serves instead only when exactly one host has subnets = \"libvirt\")",
                                hosts[i].name
                            ),
                        },
                    ));
                }
            }
            Some(v) => {
                let key = "mesh.libvirt_range";
                let Some(&i) = users.first() else {
                    return Err(self.invalid(
                        v,
                        key,
                        "set, but no host has subnets = \"libvirt\"".to_owned(),
                        "remove it, or set subnets = \"libvirt\" on the hosts whose subnets come from libvirt",
                    ));
                };
                if users.len() > 1 {
                    return Err(self.invalid(
                        v,
                        key,
                        format!(
                            "one range for {} hosts with subnets = \"libvirt\" ({}): each of them could claim \
                             subnets of the others",
                            users.len(),
                            names(&users)
                        ),
                        "a mesh-wide libvirt_range only when exactly one host has subnets = \"libvirt\"; else \
                         remove it and give each such host its own libvirt_range in its [[host]], ranges of \
                         different hosts not overlapping",
                    ));
                }
                if raw[i].get_ref().libvirt_range.is_some() {
                    return Err(self.invalid(
                        v,
                        key,
                        format!(
                            "set, and {}, the one host with subnets = \"libvirt\", has its own libvirt_range",
                            hosts[i].name
                        ),
                        "remove one of the two (the host's own is the one to keep)",
                    ));
                }
                let range = self.range_list(v, key, hosts, settings)?;
                if let Some(lv) = hosts[i].libvirt.as_mut() {
                    lv.range = range;
                }
            }
        }
        // No two hosts' ranges overlap.
        for (n, &i) in users.iter().enumerate() {
            for &k in &users[..n] {
                let range = |h: &Host| {
                    h.libvirt
                        .as_ref()
                        .map(|l| l.range.clone())
                        .unwrap_or_default()
                };
                let (ri, rk) = (range(&hosts[i]), range(&hosts[k]));
                let Some((p, o)) = ri
                    .iter()
                    .find_map(|p| rk.iter().find(|o| o.overlaps(p)).map(|o| (p, o)))
                else {
                    continue;
                };
                let v = raw[i].get_ref().libvirt_range.as_ref();
                return Err(self.err(
                    v.map(|v| v.span()),
                    format!("host[{i}].libvirt_range"),
                    ErrorKind::Invalid {
                        problem: format!(
                            "{}'s libvirt_range {p} overlaps {}'s libvirt_range {o}: either host could claim \
                             subnets of the other",
                            hosts[i].name, hosts[k].name
                        ),
                        allowed: "a range of its own for each host with subnets = \"libvirt\", not overlapping \
                                  another host's"
                            .to_owned(),
                    },
                ));
            }
        }
        Ok(())
    }

    /// A list of ranges (`mesh.libvirt_range` or `host[i].libvirt_range`): at least one, none overlapping
    /// another, none holding a host's underlay address.
    fn range_list(
        &self,
        v: &S<Vec<S<String>>>,
        key: &str,
        hosts: &[Host],
        settings: &Settings,
    ) -> Result<Vec<Prefix>, ConfigError> {
        let allowed = "one or more CIDR ranges the host's libvirt networks lie in, e.g. [\"192.168.122.0/24\"], \
                       not overlapping each other";
        if v.get_ref().is_empty() {
            return Err(self.invalid(v, key, "the list is empty".to_owned(), allowed));
        }
        let mut range: Vec<Prefix> = Vec::new();
        for (j, r) in v.get_ref().iter().enumerate() {
            let key = format!("{key}[{j}]");
            let p = r
                .get_ref()
                .parse::<Prefix>()
                .map_err(|e| self.err(Some(r.span()), key.clone(), e))?;
            if let Some(o) = range.iter().find(|o| o.overlaps(&p)) {
                return Err(self.invalid(
                    r,
                    &key,
                    format!("{p} overlaps {o}, listed before it"),
                    allowed,
                ));
            }
            if let Some(h) = hosts.iter().find(|h| p.contains(h.address)) {
                return Err(self.invalid(
                    r,
                    &key,
                    format!(
                        "{p} holds {}'s address {}: a learned subnet there would route IKE and ESP into the tunnel",
                        h.name, h.address
                    ),
                    "a range that holds no host's underlay address",
                ));
            }
            if !p.is_ipv4() && settings.mtu < 1280 {
                return Err(self.invalid(
                    r,
                    &key,
                    format!("IPv6 range {p} with mesh.mtu = {}", settings.mtu),
                    "IPv6 needs an MTU of 1280 or more (RFC 8200): raise mesh.mtu",
                ));
            }
            range.push(p);
        }
        Ok(range)
    }

    fn host(&self, i: usize, h: &S<schema::HostSection>) -> Result<Host, ConfigError> {
        let r = h.get_ref();
        let missing = |field: &str, what: &str| {
            self.err(
                Some(h.span()),
                format!("host[{i}].{field}"),
                ErrorKind::Missing {
                    what: what.to_owned(),
                },
            )
        };
        let name = r
            .name
            .as_ref()
            .ok_or_else(|| missing("name", "a unique name for the host, e.g. name = \"b0\""))?;
        let n = name.get_ref();
        if n.is_empty()
            || n.len() > 63
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(self.invalid(
                name,
                &format!("host[{i}].name"),
                format!("{n:?} is not a usable host name"),
                "1 to 63 characters of letters, digits, '-', '_' and '.'",
            ));
        }
        let address = r.address.as_ref().ok_or_else(|| {
            missing(
                "address",
                "the host's underlay IPv4 or IPv6 address, e.g. address = \"198.18.0.1\"",
            )
        })?;
        let key = format!("host[{i}].address");
        let addr: IpAddr = address.get_ref().parse().map_err(|_| {
            self.invalid(
                address,
                &key,
                format!("{:?} is not an IP address", address.get_ref()),
                "an IPv4 or IPv6 address, without a prefix length or port",
            )
        })?;
        let unusable = match addr {
            IpAddr::V4(a) => {
                a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast()
            }
            IpAddr::V6(a) => a.is_unspecified() || a.is_loopback() || a.is_multicast(),
        };
        if unusable {
            return Err(self.invalid(
                address,
                &key,
                format!("{addr} cannot be a host's address"),
                "a unicast address other hosts can reach (not loopback, multicast or unspecified)",
            ));
        }
        let subnets_v = r.subnets.as_ref().ok_or_else(|| {
            missing(
                "subnets",
                "the VM subnets behind the host, e.g. subnets = [\"198.19.1.0/24\"], or subnets = \"libvirt\"",
            )
        })?;
        let (subnets, libvirt) = match subnets_v.get_ref() {
            schema::Subnets::Word(w) if w == "libvirt" => {
                let networks = match &r.libvirt_networks {
                    None => Vec::new(),
                    Some(v) => self.libvirt_networks(i, v)?,
                };
                (
                    Vec::new(),
                    Some(LibvirtSubnets {
                        networks,
                        range: Vec::new(),
                    }),
                )
            }
            schema::Subnets::Word(w) => {
                return Err(self.invalid(
                    subnets_v,
                    &format!("host[{i}].subnets"),
                    format!("{w:?} is not a list of subnets"),
                    "a list of subnets in CIDR notation, e.g. [\"198.19.1.0/24\"], or \"libvirt\" (this host's \
                     libvirt networks, learned by the other hosts within its libvirt_range)",
                ))
            }
            schema::Subnets::List(list) => {
                if let Some(v) = &r.libvirt_networks {
                    return Err(self.invalid(
                        v,
                        &format!("host[{i}].libvirt_networks"),
                        "set, but this host lists its subnets".to_owned(),
                        "remove it, or set subnets = \"libvirt\" to take the subnets from these networks",
                    ));
                }
                if list.is_empty() {
                    return Err(self.invalid(
                        subnets_v,
                        &format!("host[{i}].subnets"),
                        "the list is empty".to_owned(),
                        "one or more subnets in CIDR notation, e.g. [\"198.19.1.0/24\"], or \"libvirt\"",
                    ));
                }
                let subnets = list
                    .iter()
                    .enumerate()
                    .map(|(j, s)| {
                        s.get_ref().parse::<Prefix>().map_err(|e| {
                            self.err(Some(s.span()), format!("host[{i}].subnets[{j}]"), e)
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (subnets, None)
            }
        };
        let id = match &r.id {
            None => Identity::Addr(addr),
            Some(v) => Identity::parse(v.get_ref()).map_err(|problem| {
                self.invalid(
                    v,
                    &format!("host[{i}].id"),
                    problem,
                    "an IP address, a DNS name (FQDN, optionally written @name), user@fqdn, a DN (C=CH, O=example, CN=gw) or @#hex for a key ID",
                )
            })?,
        };
        let port = match &r.port {
            None => DEFAULT_IKE_PORT,
            Some(v) => u16::try_from(*v.get_ref())
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| {
                    self.invalid(
                        v,
                        &format!("host[{i}].port"),
                        format!("{} is not a port", v.get_ref()),
                        "1 to 65535 (default 500)",
                    )
                })?,
        };
        Ok(Host {
            name: n.clone(),
            address: addr,
            subnets,
            libvirt,
            id,
            port,
        })
    }

    pub(super) fn auth(
        &self,
        m: &schema::MeshSection,
        mesh_span: Option<Range<usize>>,
        hosts: &[S<schema::HostSection>],
        valid_hosts: &[Host],
        private_key_override: Option<&Path>,
    ) -> Result<Auth, ConfigError> {
        let method = m.auth.as_ref().map_or("psk", |v| v.get_ref().as_str());
        let only_with = |span: Range<usize>, key: String, method: &str| {
            self.err(
                Some(span),
                key,
                ErrorKind::Invalid {
                    problem: format!("set, but it is only used with auth = \"{method}\""),
                    allowed: format!("remove it, or set mesh.auth = \"{method}\""),
                },
            )
        };
        match method {
            "psk" => {
                if let Some(v) = &m.private_key {
                    return Err(only_with(v.span(), "mesh.private_key".to_owned(), "pubkey"));
                }
                if let Some((i, v)) = hosts.iter().enumerate().find_map(|(i, h)| h.get_ref().pubkey.as_ref().map(|v| (i, v))) {
                    return Err(only_with(v.span(), format!("host[{i}].pubkey"), "pubkey"));
                }
                if let Some(v) = &m.ca {
                    return Err(only_with(v.span(), "mesh.ca".to_owned(), "pubkey"));
                }
                if let Some((i, v)) = hosts.iter().enumerate().find_map(|(i, h)| h.get_ref().cert.as_ref().map(|v| (i, v))) {
                    return Err(only_with(v.span(), format!("host[{i}].cert"), "pubkey"));
                }
                let Some(v) = &m.psk_file else {
                    return Err(self.err(
                        mesh_span,
                        "mesh.psk_file",
                        ErrorKind::Missing {
                            what: "with auth = \"psk\", the path of a file holding the pre-shared key, readable by \
                                   root only, e.g. psk_file = \"/etc/vmsecd/psk\""
                                .to_owned(),
                        },
                    ));
                };
                let psk = Psk::read(&self.path(v.get_ref())).map_err(|e| self.err(Some(v.span()), "mesh.psk_file", e))?;
                Ok(Auth::Psk(psk))
            }
            "pubkey" => {
                if let Some(v) = &m.psk_file {
                    return Err(only_with(v.span(), "mesh.psk_file".to_owned(), "psk"));
                }
                if m.private_key.is_none() && private_key_override.is_none() {
                    return Err(self.err(
                        mesh_span,
                        "mesh.private_key",
                        ErrorKind::Missing {
                            what: "with auth = \"pubkey\", the path of this host's private key (PEM)".to_owned(),
                        },
                    ));
                }
                if let Some(ca) = &m.ca {
                    return self.cert_auth(ca, hosts, valid_hosts, private_key_override, &m.private_key);
                }
                if let Some((i, v)) = hosts.iter().enumerate().find_map(|(i, h)| h.get_ref().cert.as_ref().map(|v| (i, v))) {
                    return Err(self.invalid(
                        v,
                        &format!("host[{i}].cert"),
                        "set, but certificates are only used with a mesh CA".to_owned(),
                        "set mesh.ca = \"PATH\" (the CA certificate), or remove cert and give each host its pubkey",
                    ));
                }
                if let Some((i, h)) = hosts.iter().enumerate().find(|(_, h)| h.get_ref().pubkey.is_none()) {
                    return Err(self.err(
                        Some(h.span()),
                        format!("host[{i}].pubkey"),
                        ErrorKind::Missing {
                            what: "with auth = \"pubkey\", the path of the host's public key (PEM)".to_owned(),
                        },
                    ));
                }
                let private_key = self.private_key(private_key_override, &m.private_key)?;
                let mut public_keys = std::collections::BTreeMap::new();
                let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
                for (i, (h, host)) in hosts.iter().zip(valid_hosts).enumerate() {
                    let v = h.get_ref().pubkey.as_ref().expect("checked above");
                    let key = format!("host[{i}].pubkey");
                    let file = PublicKeyFile::read(&self.path(v.get_ref()))
                        .map_err(|e| self.err(Some(v.span()), key.clone(), e))?;
                    if let Some(&first) = seen.get(file.key.spki_der()) {
                        return Err(self.invalid(
                            v,
                            &key,
                            format!("{} has the same public key as {}", host.name, valid_hosts[first].name),
                            "one key pair per host (vmsecd keygen on each host)",
                        ));
                    }
                    seen.insert(file.key.spki_der().to_vec(), i);
                    public_keys.insert(host.name.clone(), file);
                }
                Ok(Auth::PubKey(PubKeyAuth { private_key, public_keys }))
            }
            other => Err(self.invalid(
                m.auth.as_ref().expect("auth was given"),
                "mesh.auth",
                format!("unknown authentication method {other:?}"),
                "\"psk\" (a pre-shared key in psk_file) or \"pubkey\" (private_key and each host's pubkey, or a mesh ca \
                 and host certificates)",
            )),
        }
    }
}

impl Cx<'_> {
    fn private_key(
        &self,
        override_path: Option<&Path>,
        key: &Option<S<String>>,
    ) -> Result<PrivateKeyFile, ConfigError> {
        match (override_path, key) {
            (Some(p), _) => PrivateKeyFile::read(p).map_err(|e| self.err(None, "--private-key", e)),
            (None, Some(v)) => PrivateKeyFile::read(&self.path(v.get_ref()))
                .map_err(|e| self.err(Some(v.span()), "mesh.private_key", e)),
            (None, None) => unreachable!("checked by the caller"),
        }
    }

    /// `auth = "pubkey"` with `ca`: the CA file, and every host certificate the file names, each verified now
    /// against the CA and checked to name its host's identity, so that a wrong file is found at start rather
    /// than at the first handshake.
    fn cert_auth(
        &self,
        ca: &S<String>,
        hosts: &[S<schema::HostSection>],
        valid_hosts: &[Host],
        private_key_override: Option<&Path>,
        private_key: &Option<S<String>>,
    ) -> Result<Auth, ConfigError> {
        if let Some((i, v)) = hosts
            .iter()
            .enumerate()
            .find_map(|(i, h)| h.get_ref().pubkey.as_ref().map(|v| (i, v)))
        {
            return Err(self.invalid(
                v,
                &format!("host[{i}].pubkey"),
                "set together with mesh.ca: with a CA, hosts authenticate with certificates".to_owned(),
                "cert = \"PATH\" (the host's certificate) instead, or remove mesh.ca to use raw public keys",
            ));
        }
        let private_key = self.private_key(private_key_override, private_key)?;
        let ca_file = CaFile::read(&self.path(ca.get_ref()))
            .map_err(|e| self.err(Some(ca.span()), "mesh.ca", e))?;
        let now = super::unix_now();
        let mut certs = std::collections::BTreeMap::new();
        for (i, (h, host)) in hosts.iter().zip(valid_hosts).enumerate() {
            let Some(v) = &h.get_ref().cert else {
                continue;
            };
            let key = format!("host[{i}].cert");
            let path = self.path(v.get_ref());
            let file =
                CertFile::read(&path).map_err(|e| self.err(Some(v.span()), key.clone(), e))?;
            let cert_err = |error| {
                self.err(
                    Some(v.span()),
                    key.clone(),
                    KeyFileError::Cert {
                        path: path.clone(),
                        error,
                    },
                )
            };
            let (end, intermediates) = file
                .chain
                .split_first()
                .expect("parse_certificates returns one or more");
            ca_file
                .anchors
                .verify(end, intermediates, now)
                .map_err(cert_err)?;
            end.check_identity(&host.id.to_id()).map_err(cert_err)?;
            certs.insert(host.name.clone(), file);
        }
        Ok(Auth::Cert(CertAuth {
            private_key,
            ca: ca_file,
            certs,
        }))
    }
}
