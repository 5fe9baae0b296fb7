//! Reload (`SIGHUP`, `vmsecd reload`): read the mesh file again and apply the difference, leaving every tunnel
//! whose configuration did not change alone (same IKE and Child SAs, same SPIs, no packet lost).
//!
//! Hosts join and leave the mesh by editing the one file that every host shares; a reload on each host then
//! brings up the tunnels to a new host, deletes those to a removed host (INFORMATIONAL delete, routes and
//! firewall rules removed) and re-creates those whose peer changed (address, subnets, identity, key,
//! proposals or lifetimes). What a running daemon cannot change (its TUN, its control socket, its own
//! address) is refused with a line naming the key, and the running mesh stays as it is.

use std::time::Instant;

use super::apply::Change;
use super::reload_plan::plan;
use super::{peers, Daemon};
use crate::config::{Config, ConfigError};

/// What a reload did, one line per change (a step that failed says FAILED and what to do), for the log and the
/// answer to `vmsecd reload`. Once the file is accepted the reload goes through: a failed route or firewall
/// step does not undo the rest.
pub(super) type Changes = Vec<Change>;

/// Why a reload was refused, the running mesh left as it was: the file's fault, or a change only a restart can
/// make.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReloadError {
    /// The file does not load (the error names the line and key).
    #[error(transparent)]
    Config(ConfigError),
    /// The file no longer has this host.
    #[error("{error} (this host, {me}, is no longer in the mesh file: stop vmsecd instead)")]
    HostRemoved {
        /// The unknown-host error.
        error: ConfigError,
        /// This host's name.
        me: String,
    },
    /// This host's address changed: the sockets are bound to the old one.
    #[error(
        "{}: the address of this host ({me}) changed from {old} to {new}: its sockets are bound to the old one; \
         restart vmsecd to use the new address",
        file.display()
    )]
    AddressChanged {
        /// The mesh file.
        file: std::path::PathBuf,
        /// This host's name.
        me: String,
        /// The running address.
        old: std::net::IpAddr,
        /// The file's.
        new: std::net::IpAddr,
    },
}

impl Daemon {
    /// Reloads and answers the control socket's `reload`: `{"reloaded": [changes]}` or `{"error": "..."}`.
    /// Every change and every refusal is logged as well.
    pub(super) fn reload_answer(&mut self, now: Instant) -> String {
        match self.reload(now) {
            Ok(changes) => {
                for c in &changes {
                    match c {
                        Change::Failed(c) => tracing::error!("reload: {c}"),
                        Change::Done(c) => tracing::info!("reload: {c}"),
                    }
                }
                let lines: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
                serde_json::json!({ "reloaded": lines }).to_string()
            }
            Err(e) => {
                tracing::error!("reload refused, the running mesh is unchanged: {e}");
                serde_json::json!({ "error": e.to_string() }).to_string()
            }
        }
    }

    fn reload(&mut self, now: Instant) -> Result<Changes, ReloadError> {
        let config = self.cp.config();
        let file = config.mesh.file.clone();
        let me = config.local().name.clone();
        let dirs: Vec<&std::path::Path> = self.libvirt_dirs.iter().map(|d| d.as_path()).collect();
        let mut new =
            Config::load_with_private_key(&file, Some(&me), &[], self.private_key.as_deref())
                .and_then(|mut c| c.resolve_libvirt(&dirs).map(|_| c))
                .map_err(|error| {
                    if matches!(*error.kind, crate::config::ErrorKind::UnknownHost { .. }) {
                        ReloadError::HostRemoved {
                            error,
                            me: me.clone(),
                        }
                    } else {
                        ReloadError::Config(error)
                    }
                })?;
        let old = config.settings();
        let mut changes = Changes::new();
        if new.local().address != config.local().address
            || new.local().second_address != config.local().second_address
        {
            return Err(ReloadError::AddressChanged {
                file,
                me,
                old: config.local().address,
                new: new.local().address,
            });
        }
        // Keys a running daemon cannot change take effect at the next start; the rest of the file applies now.
        let s = &mut new.mesh.settings;
        for (key, differs) in [
            ("interface", s.interface != old.interface),
            ("mtu", s.mtu != old.mtu),
            ("control_socket", s.control_socket != old.control_socket),
            ("firewall", s.firewall != old.firewall),
            ("workers", s.workers != old.workers),
            ("raw_tx", s.raw_tx != old.raw_tx),
            ("raw_rx", s.raw_rx != old.raw_rx),
            ("metrics", s.metrics != old.metrics),
        ] {
            if differs {
                changes.push(Change::Done(format!(
                    "mesh.{key} changed in {}: it takes effect when vmsecd restarts; the running value is kept",
                    file.display()
                )));
            }
        }
        s.interface = old.interface.clone();
        s.mtu = old.mtu;
        s.control_socket = old.control_socket.clone();
        s.firewall = old.firewall;
        s.workers = old.workers;
        s.raw_tx = old.raw_tx;
        s.raw_rx = old.raw_rx;
        s.metrics = old.metrics;
        if new.mesh.etcd != config.mesh.etcd {
            changes.push(Change::Done(format!(
                "[etcd] changed in {}: it takes effect when vmsecd restarts; the running value is kept",
                file.display()
            )));
            new.mesh.etcd = config.mesh.etcd.clone();
        }
        // The file as loaded is the base every membership change from etcd is merged onto.
        self.file_config = new.clone();
        let new = self.merged(now);

        self.apply_config(now, new, &mut changes);
        if changes.is_empty() {
            changes.push(Change::Done(format!("{}: no change", file.display())));
        }
        Ok(changes)
    }

    /// Applies a new configuration (a file reload, or a membership change from etcd): the one path both take.
    /// Tunnels whose peer did not change are left alone.
    pub(super) fn apply_config(&mut self, now: Instant, new: Config, changes: &mut Changes) {
        let plan = plan(self.cp.endpoint().peers(), peers::peer_configs(&new));
        changes.extend(plan.describe().into_iter().map(Change::Done));
        let local_changed = new.local().subnets != self.cp.config().local().subnets;
        // Hosts newly in the mesh that we share no underlay family with: no tunnel, said once.
        let before: Vec<String> = self
            .cp
            .config()
            .unreachable()
            .into_iter()
            .map(|e| e.peer)
            .collect();
        for e in new
            .unreachable()
            .into_iter()
            .filter(|e| !before.contains(&e.peer))
        {
            changes.push(Change::Failed(format!("FAILED: {e}")));
        }
        self.cp.reload(now, new, &plan);
        let running = self.cp.running();
        changes.extend(
            self.failclosed
                .update(&crate::failclosed::plan(&running))
                .into_iter()
                .map(Change::from),
        );
        changes.extend(self.apply_subnets(&running, local_changed));
    }

    /// The file's configuration merged with the members last read from etcd; refusals logged when they change.
    fn merged(&mut self, _now: Instant) -> Config {
        if self.file_config.mesh.etcd.is_none() {
            return self.file_config.clone();
        }
        let m =
            crate::membership::merge::merge(&self.file_config, &self.members.0, &self.member_pins);
        self.member_pins = m.pins;
        let refused: Vec<String> = self.members.1.iter().chain(&m.refused).cloned().collect();
        if refused != self.members_refused {
            for r in crate::membership::refusal_lines(&refused) {
                tracing::warn!("{r}; the rest of the mesh is not disturbed");
            }
            self.members_refused = refused;
        }
        m.config
    }

    /// The members in etcd changed (at most every 500 ms): merge and apply as a reload would.
    pub(super) fn on_membership(&mut self, now: Instant) {
        let Some(m) = &mut self.membership else {
            return;
        };
        let entries = m.entries.borrow_and_update().clone();
        self.members = crate::membership::parse_entries(&entries);
        let new = self.merged(now);
        let mut changes = Changes::new();
        self.apply_config(now, new, &mut changes);
        for c in &changes {
            tracing::info!("membership: {c}");
        }
    }
}
