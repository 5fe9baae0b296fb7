//! A reload's plan: which peers a new mesh file adds, removes or changes, computed from the running and the new
//! IKE peer configurations alone (a pure function, so that it is tested without a daemon). `reload.rs` reads the
//! file and applies the plan.

use std::collections::HashSet;
use std::sync::Arc;

use ike::config::PeerConfig;

use super::peers;

/// What a reload changes among the peers, computed from the running and the new IKE peer configurations alone.
#[derive(Debug, Default)]
pub(super) struct ReloadPlan {
    /// Peers new in the file: their tunnel is set up as at start-up.
    pub(super) add: Vec<String>,
    /// Peers gone from the file: their IKE SA is deleted, never initiated again.
    pub(super) remove: Vec<String>,
    /// Peers whose configuration changed: their IKE SA is deleted and set up again.
    pub(super) change: Vec<String>,
    /// The endpoint's new peer list, in the file's order: unchanged peers keep their configuration object, and
    /// with it their SAs.
    pub(super) peers: Vec<Arc<PeerConfig>>,
}

/// The difference between the running peer configurations `old` and those of the new file, `new`.
pub(super) fn plan(old: &[Arc<PeerConfig>], new: Vec<Arc<PeerConfig>>) -> ReloadPlan {
    let mut plan = ReloadPlan::default();
    for c in new {
        match old.iter().find(|o| o.name == c.name) {
            Some(o) if peers::same(o, &c) => plan.peers.push(o.clone()),
            Some(_) => {
                plan.change.push(c.name.clone());
                plan.peers.push(c);
            }
            None => {
                plan.add.push(c.name.clone());
                plan.peers.push(c);
            }
        }
    }
    let kept: HashSet<&str> = plan.peers.iter().map(|c| c.name.as_str()).collect();
    plan.remove = old
        .iter()
        .filter(|o| !kept.contains(o.name.as_str()))
        .map(|o| o.name.clone())
        .collect();
    plan
}

impl ReloadPlan {
    /// One line per peer added, changed or removed.
    pub(super) fn describe(&self) -> Vec<String> {
        let mut v = Vec::new();
        for c in &self.peers {
            if self.change.contains(&c.name) {
                v.push(format!(
                    "host {} changed: its tunnel is deleted and set up again",
                    c.name
                ));
            } else if self.add.contains(&c.name) {
                v.push(format!("host {} added: setting up its tunnel", c.name));
            }
        }
        for n in &self.remove {
            v.push(format!(
                "host {n} removed: its IKE SA is deleted, its routes removed"
            ));
        }
        v
    }
}
