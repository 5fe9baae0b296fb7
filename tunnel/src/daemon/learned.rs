//! Subnets learned from traffic selectors: a `subnets = "libvirt"` peer's subnets are not in the mesh file. We
//! offer and accept its own range (its `libvirt_range`, or `mesh.libvirt_range` when it is the only such host)
//! as its side of the Child SA, it narrows that to its own libvirt networks (RFC 7296 2.9), and the negotiated
//! `ts_remote` becomes its subnets here: routes into the TUN, the datapath's prefix table and the firewall
//! exemptions, from the moment its Child SA is up until the last one goes down. Learned subnets outside the
//! peer's own range, or overlapping our own or another host's, are refused and the IKE SA deleted, with a log
//! line naming both hosts. Ranges of different hosts do not overlap (checked at load), so a peer cannot claim
//! the subnets of another libvirt host, not even while that host is down and has nothing learned to clash with.
//! Nor can it claim a prefix inside its range that this host routes through another interface (a network of
//! its own there): see [`Learned::set_host_routes`].

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use ike::event::ChildSaInfo;

use super::datapath::MAX_SELECTORS;
use super::logcap::{self, Limiter};
use crate::config::Config;
use crate::prefix::Prefix;

/// Most subnets learned from one peer (the union over its Child SAs). Each becomes a route, an entry of the
/// datapath's prefix table and firewall exemptions; a libvirt host has a handful of networks.
pub(super) const MAX_LEARNED: usize = 64;

/// Why the selectors of a Child SA are not learned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum TooMany {
    #[error("it negotiated {0} traffic selectors, more than the {MAX_SELECTORS} vmsecd accepts")]
    Selectors(usize),
    #[error(
        "its subnets (with those of its other Child SAs) are more than the {MAX_LEARNED} vmsecd learns from one \
         host (split or misaligned ranges make many subnets: give its libvirt networks aligned CIDR ranges)"
    )]
    Subnets,
}

/// The subnets a set of traffic selectors covers, in order, each once (ports and protocol are not looked at:
/// vmsecd always negotiates all of them). Refused, before anything large is built, if there are more than
/// [`MAX_SELECTORS`] selectors or if, with the `already` learned subnets, they make more than `max` subnets.
/// Linear in the number of selectors: a hash set, not a scan of the list, says what was seen.
pub(super) fn selector_subnets(
    ts: &[ike::message::TrafficSelector],
    already: &[Prefix],
    max: usize,
) -> Result<Vec<Prefix>, TooMany> {
    if ts.len() > MAX_SELECTORS {
        return Err(TooMany::Selectors(ts.len()));
    }
    let already: HashSet<Prefix> = already.iter().copied().collect();
    let mut mine: HashSet<Prefix> = HashSet::new();
    let mut v: Vec<Prefix> = Vec::new();
    let mut union = already.len();
    for t in ts {
        for p in Prefix::cover(t.start, t.end) {
            if mine.insert(p) {
                if !already.contains(&p) {
                    union += 1;
                    if union > max {
                        return Err(TooMany::Subnets);
                    }
                }
                v.push(p);
            }
        }
    }
    Ok(v)
}

/// Why `peer`'s learned subnet `s` is refused: it overlaps `route`, one of this host's own routes.
fn host_route_clash(peer: &str, s: &Prefix, route: &Prefix) -> String {
    format!(
        "{peer}'s subnet {s} overlaps {route}, which this host routes through another interface than the mesh's \
         (a network of its own inside {peer}'s libvirt_range, or a route added by hand): a route into the tunnel \
         would take this host's traffic to it. Narrow {peer}'s libvirt_range to its own VM networks"
    )
}

/// A list of subnets as one log field: escaped and capped at [`logcap::MAX_FIELD`] bytes.
fn subnet_list(subnets: &[Prefix]) -> String {
    struct List<'a>(&'a [Prefix]);
    impl std::fmt::Display for List<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            for (i, p) in self.0.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{p}")?;
            }
            Ok(())
        }
    }
    logcap::clean(&List(subnets), logcap::MAX_FIELD)
}

/// Most routes of this host's own inside `subnets = "libvirt"` peers' ranges that are kept (see
/// [`Learned::set_host_routes`]); a hypervisor has a handful.
pub(super) const MAX_HOST_ROUTES: usize = 1024;

/// The subnets learned from the Child SAs of `subnets = "libvirt"` peers, kept apart from the mesh file's
/// configuration: per peer, (inbound SPI, subnets) of each Child SA that is up.
#[derive(Debug, Default)]
pub(super) struct Learned {
    peers: HashMap<String, Vec<(u32, Vec<Prefix>)>>,
    /// This host's unicast routes through other interfaces than the TUN to prefixes inside a libvirt peer's
    /// range (see [`Learned::set_host_routes`]).
    host_routes: Vec<Prefix>,
}

impl Learned {
    /// The union of the subnets learned from `peer`'s Child SAs, sorted, each once.
    pub(super) fn subnets(&self, peer: &str) -> Vec<Prefix> {
        let mut v: Vec<Prefix> = self
            .peers
            .get(peer)
            .into_iter()
            .flatten()
            .flat_map(|(_, s)| s.iter().copied())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The Child SA with inbound SPI `spi_in` of `peer` carries `subnets`.
    fn record(&mut self, peer: &str, spi_in: u32, subnets: Vec<Prefix>) {
        self.peers
            .entry(peer.to_owned())
            .or_default()
            .push((spi_in, subnets));
    }

    /// The Child SA with inbound SPI `spi_in` of `peer` went down; false if nothing was learned from the peer.
    fn remove(&mut self, peer: &str, spi_in: u32) -> bool {
        let Some(v) = self.peers.get_mut(peer) else {
            return false;
        };
        v.retain(|(s, _)| *s != spi_in);
        if v.is_empty() {
            self.peers.remove(peer);
        }
        true
    }

    /// Everything learned from `peer` goes (it left the mesh, or its tunnel is set up again).
    pub(super) fn drop_peer(&mut self, peer: &str) {
        self.peers.remove(peer);
    }
}

/// What learning the subnets of a new Child SA came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Learn {
    /// Nothing learned changed (not a `subnets = "libvirt"` peer, or subnets already known).
    Kept,
    /// The peer's learned subnets changed.
    Changed,
    /// Refused (logged): the caller deletes the peer's IKE SA and installs nothing.
    Refused,
}

impl Learned {
    /// True if `peer` is a `subnets = "libvirt"` host other than us.
    fn learns(config: &Config, peer: &str) -> bool {
        config
            .peers()
            .any(|p| p.name == peer && p.libvirt.is_some())
    }

    /// A Child SA came up (or was rekeyed): for a `subnets = "libvirt"` peer of `config` (the mesh file's),
    /// checks and records the subnets it negotiated. Refused, after logging why (through `limit`), if they
    /// overlap ours or another host's.
    pub(super) fn learn(
        &mut self,
        config: &Config,
        c: &ChildSaInfo,
        now: Instant,
        limit: &mut Limiter,
    ) -> Learn {
        if !Learned::learns(config, &c.peer) {
            return Learn::Kept;
        }
        // A peer that negotiates thousands of selectors (or ranges that split into many subnets) is refused
        // before they are expanded further, routed or logged (review item 4).
        let already = self.subnets(&c.peer);
        let subnets = match selector_subnets(&c.ts_remote, &already, MAX_LEARNED).and_then(|s| {
            // The datapath would not install it either (and its subnets would stay routed to nothing).
            if c.ts_local.len() > MAX_SELECTORS {
                Err(TooMany::Selectors(c.ts_local.len()))
            } else {
                Ok(s)
            }
        }) {
            Ok(s) => s,
            Err(e) => {
                if limit.allow(now) {
                    tracing::error!(
                        peer = %c.peer,
                        "refusing the subnets learned from its Child SA: {e}. Deleting the IKE SA with {} (it is \
                         tried again later)",
                        c.peer
                    );
                }
                return Learn::Refused;
            }
        };
        let clash = subnets
            .iter()
            .find_map(|sub| self.clash(config, &c.peer, sub));
        if let Some(why) = clash {
            if limit.allow(now) {
                tracing::error!(
                    peer = %c.peer,
                    "refusing the subnets {} learned from its Child SA: {why}; renumber one of the two (a libvirt \
                     network with virsh net-edit) and reload. Deleting the IKE SA with {} (it is tried again later)",
                    subnet_list(&subnets),
                    c.peer
                );
            }
            return Learn::Refused;
        }
        let before = self.subnets(&c.peer);
        self.record(&c.peer, c.spi_in, subnets);
        if self.changed(&c.peer, &before) {
            Learn::Changed
        } else {
            Learn::Kept
        }
    }

    /// Why `peer` may not have the subnet `s`, if it may not: outside its range, or overlapping a subnet of ours,
    /// of another host (configured, or learned) or one of this host's own routes inside its range.
    fn clash(&self, config: &Config, peer: &str, s: &Prefix) -> Option<String> {
        let range: &[Prefix] = config
            .peers()
            .find(|p| p.name == peer)
            .and_then(|p| p.libvirt.as_ref())
            .map_or(&[], |lv| &lv.range);
        let me = config.local();
        if !range.iter().any(|r| r.contains_prefix(s)) {
            return Some(format!(
                "{peer} negotiated {s}, outside its libvirt_range ({})",
                range
                    .iter()
                    .map(|r| r.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(o) = me.subnets.iter().find(|o| o.overlaps(s)) {
            return Some(format!(
                "{peer}'s subnet {s} overlaps {}'s subnet {o} (this host)",
                me.name
            ));
        }
        if let Some((h, o)) = config.peers().filter(|h| h.name != peer).find_map(|h| {
            self.subnets_of(h)
                .into_iter()
                .find(|o| o.overlaps(s))
                .map(|o| (h, o))
        }) {
            return Some(format!(
                "{peer}'s subnet {s} overlaps {}'s {} subnet {o}",
                h.name,
                if h.libvirt.is_some() {
                    "learned"
                } else {
                    "configured"
                }
            ));
        }
        self.host_routes
            .iter()
            .find(|r| r.overlaps(s))
            .map(|r| host_route_clash(peer, s, r))
    }

    /// The peers whose learned subnets clash (see [`Learned::clash`]) with `config` and this host's routes as they
    /// are now, each logged through `limit`: a reload may add a host whose listed subnets a libvirt peer's range
    /// holds and the peer already took, and a network of this host's own may appear inside a peer's range.
    /// The caller deletes their IKE SA (their routes go with it), so that what a peer took first does not
    /// keep another host's traffic until its next rekey.
    pub(super) fn recheck(
        &self,
        config: &Config,
        now: Instant,
        limit: &mut Limiter,
    ) -> Vec<String> {
        let mut names: Vec<&String> = self.peers.keys().collect();
        names.sort();
        let mut clashing = Vec::new();
        for peer in names {
            let why = self
                .subnets(peer)
                .iter()
                .find_map(|sub| self.clash(config, peer, sub));
            if let Some(why) = why {
                if limit.allow(now) {
                    tracing::error!(
                        %peer,
                        "refusing the subnets learned from its Child SA: {why}. Deleting the IKE SA with {peer} (it \
                         is tried again later)"
                    );
                }
                clashing.push(peer.clone());
            }
        }
        clashing
    }

    /// Takes this host's unicast routes through other interfaces than the TUN (a connected network of its own,
    /// a static route), keeping those to prefixes inside a `subnets = "libvirt"` peer's range, at most
    /// [`MAX_HOST_ROUTES`]. A peer's range may hold networks of this host's own that are not in the mesh (the
    /// fail-closed route of the range is less specific and leaves them alone), and a peer that narrowed its
    /// selectors to a prefix inside one of them would get a route into the tunnel more specific than the
    /// host's own, and with it the traffic this host sends to that network. Such subnets are refused when
    /// learned; returns, logged through `limit`, the peers whose learned subnets overlap a route that appeared
    /// since (the caller deletes their IKE SA).
    //= https://www.rfc-editor.org/rfc/rfc7296#section-2.9
    //# the responder is allowed to narrow the choices by selecting a subset of the traffic
    // A subset of what we offered, that is: the offer (the peer's range) bounds what a peer may claim, not what
    // this host may route elsewhere inside it.
    pub(super) fn set_host_routes(
        &mut self,
        config: &Config,
        routes: impl IntoIterator<Item = Prefix>,
        now: Instant,
        limit: &mut Limiter,
    ) -> Vec<String> {
        let ranges: Vec<Prefix> = config
            .peers()
            .filter_map(|p| p.libvirt.as_ref())
            .flat_map(|lv| lv.range.iter().copied())
            .collect();
        let mut kept: Vec<Prefix> = routes
            .into_iter()
            .filter(|r| ranges.iter().any(|range| range.contains_prefix(r)))
            .take(MAX_HOST_ROUTES)
            .collect();
        kept.sort();
        kept.dedup();
        // Read every second: the learned subnets are looked at again only when the routes changed.
        if kept == self.host_routes {
            return Vec::new();
        }
        self.host_routes = kept;
        self.recheck(config, now, limit)
    }

    /// A Child SA went down: its subnets are forgotten; true (logged) if the peer's learned subnets changed,
    /// when no other Child SA of the peer carries them (their routes then go).
    pub(super) fn forget(&mut self, peer: &str, spi_in: u32) -> bool {
        let before = self.subnets(peer);
        self.remove(peer, spi_in) && self.changed(peer, &before)
    }

    /// The subnets of `host` in force: its learned ones for a `subnets = "libvirt"` host, else the file's.
    fn subnets_of(&self, host: &crate::config::Host) -> Vec<Prefix> {
        if host.libvirt.is_some() {
            self.subnets(&host.name)
        } else {
            host.subnets.clone()
        }
    }

    /// True, logged, if the subnets learned from `peer` are no longer `before`.
    fn changed(&self, peer: &str, before: &[Prefix]) -> bool {
        let after = self.subnets(peer);
        if after == before {
            return false;
        }
        let list = |s: &[Prefix]| {
            if s.is_empty() {
                "none".to_owned()
            } else {
                s.iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        tracing::info!(
            "host {peer}: learned subnets {} (were {})",
            list(&after),
            list(before)
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ike::message::TrafficSelector;

    #[test]
    fn selectors_become_subnets() {
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        let ts = [
            p("198.19.3.0/24").selector(),
            p("198.19.3.0/25").selector(),
            TrafficSelector {
                start: "198.19.4.0".parse().unwrap(),
                end: "198.19.5.127".parse().unwrap(),
                ..p("198.19.4.0/24").selector()
            },
        ];
        let got: Vec<String> = selector_subnets(&ts, &[], MAX_LEARNED)
            .unwrap()
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(
            got,
            [
                "198.19.3.0/24",
                "198.19.3.0/25",
                "198.19.4.0/24",
                "198.19.5.0/25"
            ]
        );
    }

    fn v4(a: u32) -> std::net::IpAddr {
        std::net::Ipv4Addr::from(a).into()
    }

    /// Review item 4: ~4,000 misaligned ranges inside a libvirt range (each splitting into many subnets) are
    /// refused at once, without the quadratic dedup; so are more subnets than MAX_LEARNED, counting those the
    /// peer's other Child SAs already carry; the log line that names them is bounded.
    #[test]
    fn thousands_of_selectors_or_subnets_are_refused_quickly() {
        let p = |s: &str| s.parse::<Prefix>().unwrap();
        let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0));
        let misaligned = |i: u32, span: u32| TrafficSelector {
            start: v4(base + i * span + 1),
            end: v4(base + (i + 1) * span - 2),
            ..p("198.18.0.0/15").selector()
        };
        // 4,000 selectors of 8 subnets each, all inside 198.18.0.0/15: 32,000 distinct subnets.
        let flood: Vec<TrafficSelector> = (0..4000).map(|i| misaligned(i, 32)).collect();
        let t = Instant::now();
        assert_eq!(
            selector_subnets(&flood, &[], MAX_LEARNED),
            Err(TooMany::Selectors(4000))
        );
        // Few selectors, many subnets: stops at the cap.
        let few: Vec<TrafficSelector> = (0..MAX_SELECTORS as u32)
            .map(|i| misaligned(i, 1024))
            .collect();
        assert_eq!(
            selector_subnets(&few, &[], MAX_LEARNED),
            Err(TooMany::Subnets)
        );
        assert!(
            t.elapsed() < std::time::Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        // The cap counts the subnets already learned from the peer's other Child SAs, once each.
        let one = [p("198.19.3.0/24").selector()];
        let already: Vec<Prefix> = (0..MAX_LEARNED as u32)
            .map(|i| Prefix::new(v4(base + (i << 8)), 24))
            .collect();
        assert_eq!(
            selector_subnets(&one, &already, MAX_LEARNED),
            Err(TooMany::Subnets)
        );
        // A rekey of a Child SA whose subnets are already learned adds nothing, and keeps its own list whole.
        let again = [already[0].selector()];
        assert_eq!(
            selector_subnets(&again, &already, MAX_LEARNED),
            Ok(vec![already[0]])
        );
        // The log field naming the refused subnets is capped, however many there are.
        let line = subnet_list(&already);
        assert!(line.len() <= logcap::MAX_FIELD + 30, "{}", line.len());
        assert!(line.starts_with("198.18.0.0/24, 198.18.1.0/24"), "{line}");
    }
}
