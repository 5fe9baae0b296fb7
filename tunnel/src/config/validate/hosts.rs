//! Validation of the `[[host]]` entries: names, addresses, identities, subnets (listed, or "libvirt" with its
//! ranges), ports, and the checks across hosts (duplicates, overlaps).

use super::*;

impl Cx<'_> {
    pub(in crate::config) fn hosts(
        &self,
        raw: &[S<schema::HostSection>],
        settings: &Settings,
        min_hosts: usize,
    ) -> Result<Vec<Host>, ConfigError> {
        if raw.len() < min_hosts {
            return Err(self.err(
                None,
                "host",
                ErrorKind::Missing {
                    what: format!(
                        "the file has {} [[host]] entr{}; a mesh needs at least two, this machine and a peer (with \
                         [etcd], at least this machine)",
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
            for a in h.addresses() {
                if let Some(&first) = addrs.get(&a) {
                    return Err(self.err(
                        r.address.as_ref().map(|v| v.span()),
                        format!("host[{i}].address"),
                        ErrorKind::DuplicateAddress {
                            address: a,
                            name: h.name.clone(),
                            other: hosts[first].name.clone(),
                        },
                    ));
                }
                addrs.insert(a, i);
            }
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
                if let Some((victim, address)) = hosts
                    .iter()
                    .find_map(|v| v.addresses().find(|&a| s.contains(a)).map(|a| (v, a)))
                {
                    return Err(self.err(
                        subnet_span(i, j),
                        format!("host[{i}].subnets[{j}]"),
                        ErrorKind::AddressInSubnet {
                            host: victim.name.clone(),
                            address,
                            owner: h.name.clone(),
                            subnet: *s,
                        },
                    ));
                }
                if let Some((r, name)) = s.special_use() {
                    return Err(self.err(
                        subnet_span(i, j),
                        format!("host[{i}].subnets[{j}]"),
                        ErrorKind::Invalid {
                            problem: format!("{s} overlaps {r} ({name})"),
                            allowed: "the VMs' subnets: every host routes them into the tunnel, so none may \
                                      hold loopback, link-local, multicast or reserved addresses"
                                .to_owned(),
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
    pub(in crate::config) fn libvirt_ranges(
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
            if let Some((o, name)) = p.special_use() {
                return Err(self.invalid(
                    r,
                    &key,
                    format!("{p} overlaps {o} ({name})"),
                    "a range of the host's VM networks: the other hosts route whatever it negotiates there \
                     into the tunnel, so none may hold loopback, link-local, multicast or reserved addresses",
                ));
            }
            if let Some(o) = range.iter().find(|o| o.overlaps(&p)) {
                return Err(self.invalid(
                    r,
                    &key,
                    format!("{p} overlaps {o}, listed before it"),
                    allowed,
                ));
            }
            if let Some((h, a)) = hosts
                .iter()
                .find_map(|h| h.addresses().find(|&a| p.contains(a)).map(|a| (h, a)))
            {
                return Err(self.invalid(
                    r,
                    &key,
                    format!(
                        "{p} holds {}'s address {a}: a learned subnet there would route IKE and ESP into the tunnel",
                        h.name
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

    /// `address`: one address, or an IPv4 and an IPv6 one (dual stack; either order, the first is the default
    /// identity).
    fn addresses(
        &self,
        i: usize,
        address: &S<schema::Addresses>,
    ) -> Result<(IpAddr, Option<IpAddr>), ConfigError> {
        let key = format!("host[{i}].address");
        let items: Vec<(&str, std::ops::Range<usize>, String)> = match address.get_ref() {
            schema::Addresses::One(a) => vec![(a.as_str(), address.span(), key.clone())],
            schema::Addresses::List(l) => l
                .iter()
                .enumerate()
                .map(|(j, a)| (a.get_ref().as_str(), a.span(), format!("{key}[{j}]")))
                .collect(),
        };
        if items.is_empty() || items.len() > 2 {
            return Err(self.err(
                Some(address.span()),
                key,
                ErrorKind::Invalid {
                    problem: format!("a list of {} addresses", items.len()),
                    allowed:
                        "one address, or one IPv4 and one IPv6 address: address = [\"198.18.0.1\", \
                              \"2001:db8::1\"]"
                            .to_owned(),
                },
            ));
        }
        let mut out = Vec::with_capacity(2);
        for (text, span, key) in items {
            let bad = |problem: String, allowed: &str| {
                self.err(
                    Some(span.clone()),
                    key.clone(),
                    ErrorKind::Invalid {
                        problem,
                        allowed: allowed.to_owned(),
                    },
                )
            };
            let addr: IpAddr = text.parse().map_err(|_| {
                bad(
                    format!("{text:?} is not an IP address"),
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
                return Err(bad(
                    format!("{addr} cannot be a host's address"),
                    "a unicast address other hosts can reach (not loopback, multicast or unspecified)",
                ));
            }
            if out.iter().any(|o: &IpAddr| o.is_ipv4() == addr.is_ipv4()) {
                return Err(bad(
                    format!(
                        "a second {} address ({addr})",
                        if addr.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                    "at most one address of each family: one IPv4 and one IPv6",
                ));
            }
            out.push(addr);
        }
        Ok((out[0], out.get(1).copied()))
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
                "the host's underlay IPv4 or IPv6 address, e.g. address = \"198.18.0.1\" (or both: \
                 address = [\"198.18.0.1\", \"2001:db8::1\"])",
            )
        })?;
        let (addr, second_address) = self.addresses(i, address)?;
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
                    problem.to_string(),
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
            second_address,
            subnets,
            libvirt,
            id,
            port,
        })
    }
}
