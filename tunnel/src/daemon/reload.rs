//! Reload (`SIGHUP`, `vmsecd reload`): read the mesh file again and apply the difference, leaving every tunnel
//! whose configuration did not change alone (same IKE and Child SAs, same SPIs, no packet lost).
//!
//! Hosts join and leave the mesh by editing the one file that every host shares; a reload on each host then
//! brings up the tunnels to a new host, deletes those to a removed host (INFORMATIONAL delete, routes and
//! firewall rules removed) and re-creates those whose peer changed (address, subnets, identity, key,
//! proposals or lifetimes). What a running daemon cannot change (its TUN, its control socket, its own
//! address) is refused with a line naming the key, and the running mesh stays as it is.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ike::config::PeerConfig;

use super::{local_sources, peers, Daemon, Initiation, FOLLOWER_DELAY};
use crate::config::Config;
use crate::prefix::Prefix;
use crate::route::Route;

/// What a reload did, one line per change (a step that failed says FAILED and what to do), for the log and the
/// answer to `vmsecd reload`. Once the file is accepted the reload goes through: a failed route or firewall
/// step does not undo the rest.
pub(super) type Changes = Vec<String>;

impl Daemon {
    /// Reloads and answers the control socket's `reload`: `{"reloaded": [changes]}` or `{"error": "..."}`.
    /// Every change and every refusal is logged as well.
    pub(super) fn reload_answer(&mut self, now: Instant) -> String {
        match self.reload(now) {
            Ok(changes) => {
                for c in &changes {
                    tracing::info!("reload: {c}");
                }
                serde_json::json!({ "reloaded": changes }).to_string()
            }
            Err(e) => {
                tracing::error!("reload refused, the running mesh is unchanged: {e}");
                serde_json::json!({ "error": e }).to_string()
            }
        }
    }

    fn reload(&mut self, now: Instant) -> Result<Changes, String> {
        let file = self.config.mesh.file.clone();
        let me = self.config.local().name.clone();
        let dirs: Vec<&std::path::Path> = self.libvirt_dirs.iter().map(|d| d.as_path()).collect();
        let mut new = Config::load_with_private_key(
            &file,
            Some(&me),
            &[],
            self.private_key.as_deref(),
        )
        .and_then(|mut c| c.resolve_libvirt(&dirs).map(|_| c))
        .map_err(|e| {
            if matches!(*e.kind, crate::config::ErrorKind::UnknownHost { .. }) {
                format!("{e} (this host, {me}, is no longer in the mesh file: stop vmsecd instead)")
            } else {
                e.to_string()
            }
        })?;
        let old = self.config.settings();
        let mut changes = Changes::new();
        if new.local().address != self.config.local().address {
            return Err(format!(
                "{}: the address of this host ({me}) changed from {} to {}: its sockets are bound to the old one; \
                 restart vmsecd to use the new address",
                file.display(),
                self.config.local().address,
                new.local().address
            ));
        }
        // Keys a running daemon cannot change take effect at the next start; the rest of the file applies now.
        let s = &mut new.mesh.settings;
        for (key, differs) in [
            ("interface", s.interface != old.interface),
            ("mtu", s.mtu != old.mtu),
            ("control_socket", s.control_socket != old.control_socket),
            ("firewall", s.firewall != old.firewall),
            ("workers", s.workers != old.workers),
        ] {
            if differs {
                changes.push(format!(
                    "mesh.{key} changed in {}: it takes effect when vmsecd restarts; the running value is kept",
                    file.display()
                ));
            }
        }
        s.interface = old.interface.clone();
        s.mtu = old.mtu;
        s.control_socket = old.control_socket.clone();
        s.firewall = old.firewall;
        s.workers = old.workers;

        let old_cfgs: HashMap<String, Arc<PeerConfig>> = self
            .endpoint
            .peers()
            .iter()
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        let new_cfgs = peers::peer_configs(&new);
        let mut keep = Vec::with_capacity(new_cfgs.len());
        let mut recreate = Vec::new();
        for c in new_cfgs {
            match old_cfgs.get(&c.name) {
                Some(o) if peers::same(o, &c) => keep.push(o.clone()),
                Some(_) => {
                    changes.push(format!(
                        "host {} changed: its tunnel is deleted and set up again",
                        c.name
                    ));
                    recreate.push(c.name.clone());
                    keep.push(c);
                }
                None => {
                    changes.push(format!("host {} added: setting up its tunnel", c.name));
                    keep.push(c);
                }
            }
        }
        let removed: Vec<String> = old_cfgs
            .keys()
            .filter(|n| !keep.iter().any(|c| &c.name == *n))
            .cloned()
            .collect();
        for n in &removed {
            changes.push(format!(
                "host {n} removed: its IKE SA is deleted, its routes removed"
            ));
        }

        // IKE: delete what goes or changes, then the new peer list (unchanged peers keep their configuration
        // object, and with it their SAs).
        for n in removed.iter().chain(&recreate) {
            self.endpoint.delete_peer(now, n);
        }
        self.endpoint.set_peers(now, keep.clone());

        // When to initiate: new peers as at start-up; changed ones once their old IKE SA is gone (the IkeDown
        // of the delete schedules it, see `on_event`); removed ones never again.
        for n in &removed {
            self.initiation.remove(n);
        }
        let local_addr = new.local().address;
        for p in new.peers() {
            if !old_cfgs.contains_key(&p.name) {
                let first = if local_addr < p.address {
                    now
                } else {
                    now + FOLLOWER_DELAY
                };
                self.initiation.insert(
                    p.name.clone(),
                    Initiation {
                        next: Some(first),
                        backoff: Duration::from_secs(2),
                    },
                );
            }
        }

        // Subnets learned from the Child SAs of `subnets = "libvirt"` peers stay while their tunnel does.
        for (name, _) in old_cfgs.iter() {
            if removed.contains(name) || recreate.contains(name) {
                self.learned.remove(name);
            }
        }
        for h in new.mesh.hosts.iter_mut() {
            if h.libvirt.is_some() && h.name != me {
                h.subnets = self.learned_subnets(&h.name);
            }
        }
        let local_changed = new.local().subnets != self.config.local().subnets;
        changes.extend(self.failclosed.update(&crate::failclosed::plan(&new)));
        changes.extend(self.apply_subnets(&new, local_changed));

        if changes.is_empty() {
            changes.push(format!("{}: no change", file.display()));
        }
        self.config = new;
        Ok(changes)
    }

    /// Makes the routes into the TUN, the datapath's prefix table and the firewall rules follow the subnets of
    /// `new` (the running configuration is `self.config`): at reload, and when a `subnets = "libvirt"` peer's
    /// learned subnets change. `local_changed` re-adds every route (their source address may change).
    pub(super) fn apply_subnets(&mut self, new: &Config, local_changed: bool) -> Changes {
        let mut changes = Changes::new();
        // Routes into the TUN: exactly the peers' subnets, with a source inside our own subnets.
        let want: BTreeSet<Prefix> = new.peers().flat_map(|p| p.subnets.clone()).collect();
        let have: Vec<Prefix> = self.routes.installed().iter().map(|r| r.dst).collect();
        for dst in have {
            if local_changed || !want.contains(&dst) {
                if let Err(e) = self.routes.remove(dst) {
                    changes.push(format!("FAILED to remove the route to {dst}: {e}"));
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
                    changes.push(format!("FAILED to add the route to {dst}: {e}"));
                }
            }
        }

        self.datapath.set_peers(
            &new.peers()
                .map(|p| (p.name.clone(), p.subnets.clone()))
                .collect::<Vec<_>>(),
        );

        // Firewall rules follow the subnets: updated as a whole when any subnet changed.
        let subnets = |c: &Config| -> (Vec<Prefix>, Vec<Prefix>) {
            (
                c.local().subnets.clone(),
                c.peers().flat_map(|p| p.subnets.clone()).collect(),
            )
        };
        if subnets(new) != subnets(&self.config) {
            match self.firewall.update(new) {
                Ok(()) => changes.push(
                    "firewall rules for the new subnets: update queued (its outcome is logged)".to_owned(),
                ),
                Err(e) => changes.push(format!(
                    "FAILED to put the firewall rules for the new subnets in place ({e}): mesh traffic may be \
                     NATed or rejected by libvirt's rules; fix the cause and reload again"
                )),
            }
        }
        changes
    }
}
