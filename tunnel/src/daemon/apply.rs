//! Applies the control plane's [`Action`]s to the datapath, the routes into the TUN and the firewall, and makes
//! those three follow the subnets in force (at reload, and when a `subnets = "libvirt"` peer's learned subnets
//! change). Whatever fails here is reported as a [`Change::Failed`] in words a sysadmin can act on.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::time::Instant;

use super::control_plane::{Action, Outbound};
use super::Daemon;
use crate::config::Config;
use crate::prefix::Prefix;
use crate::route::{Netlink, Route};

/// One step of a reload or of following learned subnets, as logged and answered to `vmsecd reload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    Done(String),
    /// A step that failed; the text starts with FAILED and says what to do.
    Failed(String),
}

impl From<crate::failclosed::RouteChange> for Change {
    fn from(c: crate::failclosed::RouteChange) -> Change {
        match c {
            crate::failclosed::RouteChange::Done(line) => Change::Done(line),
            crate::failclosed::RouteChange::Failed(line) => Change::Failed(line),
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Done(s) | Change::Failed(s) => f.write_str(s),
        }
    }
}

/// The local subnets and every peer's subnets of a configuration: what the firewall rules follow.
pub(super) fn firewall_subnets(c: &Config) -> (Vec<Prefix>, Vec<Prefix>) {
    (
        c.local().subnets.clone(),
        c.peers().flat_map(|p| p.subnets.clone()).collect(),
    )
}

/// The address of ours inside our VM subnets for each family (IPv4, IPv6): the source of packets this host
/// itself sends to a remote VM, so that they fall within the Child SA's selectors.
pub(super) fn local_sources(
    nl: &mut Netlink,
    subnets: &[crate::prefix::Prefix],
) -> (Option<IpAddr>, Option<IpAddr>) {
    let addrs: Vec<IpAddr> = nl
        .local_addresses()
        .map(|a| a.iter().map(|a| a.addr).collect())
        .unwrap_or_default();
    let find = |v4: bool| {
        addrs
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == v4 && subnets.iter().any(|p| p.contains(*a)))
    };
    (find(true), find(false))
}

impl Daemon {
    /// Carries out what the control plane decided after one `ike` event.
    pub(super) fn apply(&mut self, actions: Vec<Action>, now: Instant) {
        let window = self.cp.config().settings().replay_window;
        for a in actions {
            match a {
                Action::Install { child, outbound } => {
                    let r = match outbound {
                        Outbound::Now => self.datapath.install(&child, window),
                        Outbound::WhenPeerUsesIt => self.datapath.install_deferred(&child, window),
                    };
                    if let Err(e) = r {
                        tracing::error!(peer = %child.peer, "cannot install Child SA: {e}");
                    }
                }
                Action::Retire {
                    peer,
                    spi_in,
                    spi_out,
                } => self.datapath.retire(now, &peer, spi_in, spi_out),
                Action::Remove {
                    peer,
                    spi_in,
                    spi_out,
                } => self.datapath.remove(&peer, spi_in, spi_out),
                Action::SubnetsChanged => {
                    let running = self.cp.running();
                    for c in self.apply_subnets(&running, false) {
                        match c {
                            Change::Failed(c) => tracing::error!("{c}"),
                            Change::Done(c) => tracing::info!("{c}"),
                        }
                    }
                }
            }
        }
    }

    /// Makes the routes into the TUN, the datapath's prefix table and the firewall rules follow the subnets of
    /// `new`, the configuration now in force. `local_changed` re-adds every route (their source address may
    /// change).
    pub(super) fn apply_subnets(&mut self, new: &Config, local_changed: bool) -> Vec<Change> {
        let mut changes = Vec::new();
        // Routes into the TUN: exactly the peers' subnets, with a source inside our own subnets.
        let want: BTreeSet<Prefix> = new.peers().flat_map(|p| p.subnets.clone()).collect();
        let have: Vec<Prefix> = self.routes.installed().iter().map(|r| r.dst).collect();
        for dst in have {
            if local_changed || !want.contains(&dst) {
                if let Err(e) = self.routes.remove(dst) {
                    changes.push(Change::Failed(format!(
                        "FAILED to remove the route to {dst}: {e}"
                    )));
                }
            }
        }
        let (src4, src6) = local_sources(self.routes.netlink(), &new.local().subnets);
        for dst in want {
            if !self.routes.installed().iter().any(|r| r.dst == dst) {
                let src = if dst.is_ipv4() { src4 } else { src6 };
                let r = self.routes.add(Route {
                    dst,
                    ifindex: self.ifindex,
                    src,
                });
                if let Err(e) = r {
                    changes.push(Change::Failed(format!(
                        "FAILED to add the route to {dst}: {e}"
                    )));
                }
            }
        }

        self.datapath.set_peers(
            &new.peers()
                .map(|p| (p.name.clone(), p.subnets.clone()))
                .collect::<Vec<_>>(),
        );

        // Firewall rules follow the subnets: updated as a whole when any subnet changed.
        let subnets = firewall_subnets(new);
        if subnets != self.applied_subnets {
            self.applied_subnets = subnets;
            match self.firewall.update(new) {
                Ok(()) => changes.push(Change::Done(
                    "firewall rules for the new subnets: update queued (its outcome is logged)".to_owned(),
                )),
                Err(e) => changes.push(Change::Failed(format!(
                    "FAILED to put the firewall rules for the new subnets in place ({e}): mesh traffic may be \
                     NATed or rejected by libvirt's rules; fix the cause and reload again"
                ))),
            }
        }
        changes
    }
}
