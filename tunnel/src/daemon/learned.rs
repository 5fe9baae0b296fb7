//! Subnets learned from traffic selectors: a `subnets = "libvirt"` peer's subnets are not in the mesh file. We
//! offer and accept its own range (its `libvirt_range`, or `mesh.libvirt_range` when it is the only such host)
//! as its side of the Child SA, it narrows that to its own libvirt networks (RFC 7296 2.9), and the negotiated
//! `ts_remote` becomes its subnets here: routes into the TUN, the datapath's prefix table and the firewall
//! exemptions, from the moment its Child SA is up until the last one goes down. Learned subnets outside the
//! peer's own range, or overlapping our own or another host's, are refused and the IKE SA deleted, with a log
//! line naming both hosts. Ranges of different hosts do not overlap (checked at load), so a peer cannot claim
//! the subnets of another libvirt host, not even while that host is down and has nothing learned to clash with.

use std::time::Instant;

use ike::event::ChildSaInfo;

use super::Daemon;
use crate::prefix::Prefix;

/// The subnets a set of traffic selectors covers, in order, each once (ports and protocol are not looked at:
/// vmsecd always negotiates all of them).
pub(super) fn selector_subnets(ts: &[ike::message::TrafficSelector]) -> Vec<Prefix> {
    let mut v: Vec<Prefix> = Vec::new();
    for t in ts {
        for p in Prefix::cover(t.start, t.end) {
            if !v.contains(&p) {
                v.push(p);
            }
        }
    }
    v
}

impl Daemon {
    /// True if `peer` is a `subnets = "libvirt"` host other than us.
    fn learns(&self, peer: &str) -> bool {
        self.config
            .peers()
            .any(|p| p.name == peer && p.libvirt.is_some())
    }

    /// The subnets currently learned from `peer`'s Child SAs (the union over those that are up), sorted.
    pub(super) fn learned_subnets(&self, peer: &str) -> Vec<Prefix> {
        let mut v: Vec<Prefix> = self
            .learned
            .get(peer)
            .into_iter()
            .flatten()
            .flat_map(|(_, s)| s.iter().copied())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// A Child SA came up (or was rekeyed): for a `subnets = "libvirt"` peer, checks and records the subnets it
    /// negotiated and routes them. Returns false, after logging why and deleting the peer's IKE SA, if they
    /// overlap ours or another host's (the caller then installs nothing).
    pub(super) fn learn(&mut self, c: &ChildSaInfo, now: Instant) -> bool {
        if !self.learns(&c.peer) {
            return true;
        }
        let subnets = selector_subnets(&c.ts_remote);
        let range: &[Prefix] = self
            .config
            .peers()
            .find(|p| p.name == c.peer)
            .and_then(|p| p.libvirt.as_ref())
            .map_or(&[], |lv| &lv.range);
        let me = self.config.local();
        let mut clash: Option<String> = None;
        for s in &subnets {
            if !range.iter().any(|r| r.contains_prefix(s)) {
                clash = Some(format!(
                    "{} negotiated {s}, outside its libvirt_range ({})",
                    c.peer,
                    range
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            } else if let Some(o) = me.subnets.iter().find(|o| o.overlaps(s)) {
                clash = Some(format!(
                    "{}'s subnet {s} overlaps {}'s subnet {o} (this host)",
                    c.peer, me.name
                ));
            } else if let Some((h, o)) = self
                .config
                .peers()
                .filter(|h| h.name != c.peer)
                .find_map(|h| h.subnets.iter().find(|o| o.overlaps(s)).map(|o| (h, o)))
            {
                clash = Some(format!(
                    "{}'s subnet {s} overlaps {}'s {} subnet {o}",
                    c.peer,
                    h.name,
                    if h.libvirt.is_some() {
                        "learned"
                    } else {
                        "configured"
                    }
                ));
            }
            if clash.is_some() {
                break;
            }
        }
        if let Some(why) = clash {
            tracing::error!(
                peer = %c.peer,
                "refusing the subnets {} learned from its Child SA: {why}; renumber one of the two (a libvirt network \
                 with virsh net-edit) and reload. Deleting the IKE SA with {} (it is tried again later)",
                subnets.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", "),
                c.peer
            );
            self.endpoint.delete_peer(now, &c.peer);
            return false;
        }
        self.learned
            .entry(c.peer.clone())
            .or_default()
            .push((c.spi_in, subnets));
        self.sync_learned();
        true
    }

    /// A Child SA went down: its subnets are forgotten, and when no other Child SA of the peer carries them
    /// their routes go.
    pub(super) fn forget(&mut self, peer: &str, spi_in: u32) {
        let Some(v) = self.learned.get_mut(peer) else {
            return;
        };
        v.retain(|(s, _)| *s != spi_in);
        if v.is_empty() {
            self.learned.remove(peer);
        }
        self.sync_learned();
    }

    /// Puts the learned subnets into the running configuration and, if they changed, into the routes, the
    /// datapath and the firewall.
    fn sync_learned(&mut self) {
        let mut new = self.config.clone();
        let me = new.local().name.clone();
        for h in new.mesh.hosts.iter_mut() {
            if h.libvirt.is_some() && h.name != me {
                h.subnets = self.learned_subnets(&h.name);
            }
        }
        let changed: Vec<String> = new
            .peers()
            .zip(self.config.peers())
            .filter(|(a, b)| a.subnets != b.subnets)
            .map(|(a, b)| {
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
                format!(
                    "host {}: learned subnets {} (were {})",
                    a.name,
                    list(&a.subnets),
                    list(&b.subnets)
                )
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        for c in &changed {
            tracing::info!("{c}");
        }
        for c in self.apply_subnets(&new, false) {
            if c.starts_with("FAILED") {
                tracing::error!("{c}");
            } else {
                tracing::info!("{c}");
            }
        }
        self.config = new;
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
        let got: Vec<String> = selector_subnets(&ts)
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
}
