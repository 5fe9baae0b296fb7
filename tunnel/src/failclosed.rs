//! Fail closed: traffic to the mesh's remote subnets is dropped, never sent in clear along another route,
//! whenever no tunnel carries it, including while vmsecd is not running because it crashed.
//!
//! The routes into the TUN go when the TUN goes, and the TUN goes with the process: after a SIGKILL, an abort or
//! the OOM killer, a VM's packets to a remote VM would follow the default route onto the underlay in clear text.
//! So for every remote subnet the mesh file names (a listed host's `subnets`, and a `subnets = "libvirt"`
//! host's range, which holds whatever subnets it will negotiate) vmsecd keeps a second route of its own:
//!
//! ```text
//! unreachable 198.19.2.0/24 proto 118 metric 1000000000
//! ```
//!
//! - **unreachable**, not blackhole: the kernel drops the packet and answers the sender (the VM) with ICMP
//!   "host unreachable" (ICMPv6 "no route"), rate-limited by the kernel (`net.ipv4.icmp_ratelimit`). A new
//!   connection fails at once with EHOSTUNREACH instead of hanging through its SYN retries, which tells the
//!   VM's user what is wrong; an established TCP connection takes it as a soft error and keeps retransmitting,
//!   so it survives a daemon restart. A blackhole would be silent, and `prohibit` would claim a policy
//!   refusal where there is an outage. The ICMP goes to the VM on its bridge, never onto the underlay.
//! - **metric 1000000000** ([`METRIC`]): among routes for one prefix the lowest metric wins, so the TUN's route
//!   (IPv4 metric 0, IPv6 1024) carries the traffic whenever it exists, and this one only when it does not.
//!   Longer prefixes win whatever their metric, so a host's own VM bridges inside a `libvirt_range` are not
//!   affected.
//! - **proto 118** ([`PROTO`], "v" in ASCII, unused in iproute2's `rt_protos`): how vmsecd tells its own
//!   routes from everyone else's. It adds, takes over and removes only `unreachable` routes of this protocol
//!   in the main table, never another route.
//!
//! Life cycle: installed at start before anything else (and taken over from a crashed run: stale ones removed,
//! missing ones added), updated on reload (hosts added and removed), kept when the daemon dies or fails, and
//! removed only on a clean stop (SIGTERM, Ctrl-C). By hand: `ip route show proto 118`, `ip -6 route show proto
//! 118`, `ip route flush proto 118`.

use std::collections::BTreeSet;

use crate::config::{Config, Tunnel};
use crate::prefix::Prefix;
use crate::route::{Netlink, NetlinkError, UnreachableRoute};

/// The route protocol number of vmsecd's fail-closed routes (`ip route show proto 118`).
pub const PROTO: u8 = 118;
/// Their metric: far above any route a tool installs for the same prefix by default (0 for IPv4, 1024 for
/// IPv6, a few hundred for NetworkManager), so that any route into a tunnel wins over them.
pub const METRIC: u32 = 1_000_000_000;

/// One change [`FailClosed::update`] made, or tried to: a line for the log and for `vmsecd reload`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteChange {
    /// Done.
    Done(String),
    /// Failed; the text starts with FAILED and says what to do.
    Failed(String),
}

/// The prefixes that must never leave this host but through a tunnel: for each peer, the remote traffic
/// selectors we offer it ([`Tunnel::remote_selectors`]: its listed subnets, or the range its libvirt subnets
/// lie in). Our own subnets are not in it (they are local), nor are learned subnets: they lie inside a range
/// that is.
pub fn plan(config: &Config) -> BTreeSet<Prefix> {
    // Every other host, also one we have no underlay family in common with: no tunnel to it, and its VMs'
    // traffic must not leave in clear either.
    config
        .all_peers()
        .flat_map(|peer| {
            Tunnel {
                local: config.local(),
                peer,
            }
            .remote_selectors()
            .to_vec()
        })
        .collect()
}

fn route(dst: Prefix) -> UnreachableRoute {
    UnreachableRoute {
        dst,
        metric: METRIC,
        proto: PROTO,
    }
}

/// The fail-closed routes in place. Deliberately not removed on drop: a panic that unwinds is a crash too, and
/// the routes must outlive it. [`FailClosed::remove_all`] is the clean stop.
#[derive(Debug)]
pub struct FailClosed {
    nl: Netlink,
    installed: BTreeSet<Prefix>,
}

impl FailClosed {
    /// Makes the routes of proto [`PROTO`] exactly `plan`: the ones a previous run left (after a crash) are
    /// taken over, ours that are not in `plan` (a host removed while vmsecd was down, another metric) are
    /// removed, the missing ones added. Fails on the first route that cannot be added: vmsecd must not run
    /// without them.
    pub fn take_over(mut nl: Netlink, plan: &BTreeSet<Prefix>) -> Result<FailClosed, NetlinkError> {
        let mut installed = BTreeSet::new();
        let mut taken = 0;
        for r in nl.routes_of_proto(PROTO)? {
            if r.is_unreachable() && r.metric == METRIC && plan.contains(&r.dst) {
                installed.insert(r.dst);
                taken += 1;
                continue;
            }
            // Ours (proto 118) but not wanted: only an unreachable route is ours to delete.
            if r.is_unreachable() {
                let stale = UnreachableRoute {
                    dst: r.dst,
                    metric: r.metric,
                    proto: PROTO,
                };
                match nl.del_unreachable(&stale) {
                    Ok(()) => tracing::info!(
                        "fail closed: removed the stale route unreachable {} metric {} (proto {PROTO}) left by an \
                         earlier run",
                        r.dst,
                        r.metric
                    ),
                    Err(e) => tracing::warn!("fail closed: cannot remove a stale route: {e}"),
                }
            } else {
                tracing::warn!(
                    "a route to {} of type {} carries vmsecd's protocol number {PROTO} but is not one of its \
                     unreachable routes: left alone",
                    r.dst,
                    r.kind
                );
            }
        }
        let mut fc = FailClosed { nl, installed };
        for dst in plan {
            if !fc.installed.contains(dst) {
                fc.add(*dst)?;
            }
        }
        tracing::info!(
            "fail closed: unreachable routes (proto {PROTO}, metric {METRIC}) for {} remote subnets{}: traffic \
             to them is dropped whenever no tunnel carries it, also if vmsecd dies; removed on a clean stop",
            fc.installed.len(),
            if taken > 0 {
                format!(", {taken} taken over from an earlier run")
            } else {
                String::new()
            }
        );
        Ok(fc)
    }

    /// Adds the route; true if it was missing, false if it was there already (ours, or added by hand since).
    fn add(&mut self, dst: Prefix) -> Result<bool, NetlinkError> {
        let created = match self.nl.add_unreachable(&route(dst)) {
            Err(e) if e.errno() == Some(libc::EEXIST) => false,
            Err(e) => return Err(e),
            Ok(()) => true,
        };
        if created {
            tracing::debug!(%dst, "fail-closed route added");
        }
        self.installed.insert(dst);
        Ok(created)
    }

    fn remove(&mut self, dst: Prefix) -> Result<(), NetlinkError> {
        match self.nl.del_unreachable(&route(dst)) {
            Err(e) if !matches!(e.errno(), Some(libc::ESRCH | libc::ENOENT)) => return Err(e),
            _ => {}
        }
        tracing::debug!(%dst, "fail-closed route removed");
        self.installed.remove(&dst);
        Ok(())
    }

    /// Makes the routes follow a new plan (reload): every prefix of the plan added (new ones, and any removed by
    /// hand since), then the ones no longer in the mesh removed. Returns one line per change.
    pub fn update(&mut self, plan: &BTreeSet<Prefix>) -> Vec<RouteChange> {
        let mut changes = Vec::new();
        for dst in plan {
            let known = self.installed.contains(dst);
            match self.add(*dst) {
                Ok(false) => {}
                Ok(true) if known => changes.push(RouteChange::Done(format!(
                    "fail-closed route for {dst} was missing (removed by hand?): put back"
                ))),
                Ok(true) => changes.push(RouteChange::Done(format!(
                    "fail-closed route added: unreachable {dst} (proto {PROTO}) while no tunnel carries it"
                ))),
                Err(e) => changes.push(RouteChange::Failed(format!(
                    "FAILED to add the fail-closed route for {dst}: {e}; traffic to it may leave in clear text \
                     when no tunnel carries it"
                ))),
            }
        }
        let gone: Vec<Prefix> = self.installed.difference(plan).copied().collect();
        for dst in gone {
            match self.remove(dst) {
                Ok(()) => changes.push(RouteChange::Done(format!("fail-closed route removed: {dst}"))),
                Err(e) => changes.push(RouteChange::Failed(format!(
                    "FAILED to remove the fail-closed route for {dst}: {e}; remove it by hand: ip route del \
                     unreachable {dst} proto {PROTO} metric {METRIC}"
                ))),
            }
        }
        changes
    }

    /// Removes every fail-closed route (clean stop); returns the first failure after trying them all.
    pub fn remove_all(&mut self) -> Result<(), NetlinkError> {
        let mut first = None;
        for dst in self.installed.clone() {
            if let Err(e) = self.remove(dst) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The prefixes covered.
    pub fn installed(&self) -> &BTreeSet<Prefix> {
        &self.installed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mesh;
    use std::io::Write;

    fn config(hosts: &str, range: &str, me: &str) -> Config {
        let dir =
            std::env::temp_dir().join(format!("vmsecd-failclosed-{}-{me}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let psk = dir.join("psk");
        let mut f = std::fs::File::create(&psk).unwrap();
        f.write_all(b"0123456789abcdef0123456789abcdef").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = format!(
            "[mesh]\npsk_file = {:?}\n{range}\n{hosts}",
            psk.display().to_string()
        );
        let mesh = Mesh::parse(&text, &dir.join("mesh.toml")).unwrap_or_else(|e| panic!("{e}"));
        Config::new(mesh, Some(me), &[]).unwrap()
    }

    fn strings(p: &BTreeSet<Prefix>) -> Vec<String> {
        p.iter().map(|p| p.to_string()).collect()
    }

    const THREE: &str = "[[host]]\nname = \"a\"\naddress = \"198.18.0.1\"\nsubnets = [\"198.19.1.0/24\"]\n\
                         [[host]]\nname = \"b\"\naddress = \"198.18.0.2\"\nsubnets = [\"198.19.2.0/24\", \"2001:db8:2::/64\"]\n\
                         [[host]]\nname = \"c\"\naddress = \"198.18.0.3\"\nsubnets = [\"198.19.3.0/25\"]\n";

    #[test]
    fn every_remote_subnet_of_both_families_and_never_our_own() {
        let c = config(THREE, "", "a");
        assert_eq!(
            strings(&plan(&c)),
            ["198.19.2.0/24", "198.19.3.0/25", "2001:db8:2::/64"]
        );
        let c = config(THREE, "", "b");
        assert_eq!(strings(&plan(&c)), ["198.19.1.0/24", "198.19.3.0/25"]);
    }

    #[test]
    fn a_libvirt_host_is_covered_by_its_range_before_anything_is_learned() {
        let hosts =
            "[[host]]\nname = \"a\"\naddress = \"198.18.0.1\"\nsubnets = [\"198.19.1.0/24\"]\n\
                     [[host]]\nname = \"b\"\naddress = \"198.18.0.2\"\nsubnets = \"libvirt\"\n";
        let c = config(
            hosts,
            "libvirt_range = [\"198.19.128.0/17\", \"fd00:19::/48\"]",
            "a",
        );
        assert_eq!(strings(&plan(&c)), ["198.19.128.0/17", "fd00:19::/48"]);
        // On the libvirt host itself the range is its own: nothing remote to block but a's subnet.
        let c = config(hosts, "libvirt_range = [\"198.19.128.0/17\"]", "b");
        assert_eq!(strings(&plan(&c)), ["198.19.1.0/24"]);
    }

    #[test]
    fn the_metric_loses_to_every_default_route_metric() {
        // IPv4 routes default to 0, IPv6 to 1024 (IP6_RT_PRIO_USER); the TUN's routes are added with these.
        const { assert!(METRIC > 1024) };
        assert_eq!(
            PROTO, 118,
            "documented in the README and used by tests/tests/fail_closed.rs"
        );
    }
}
