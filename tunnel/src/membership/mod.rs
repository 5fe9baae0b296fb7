//! Mesh membership from etcd (`[etcd]` in the mesh file): each host publishes its own entry (`entry.rs`) under
//! a lease it keeps alive and watches the others' (`client.rs`); the daemon merges them with the file's hosts
//! (`merge.rs`, a pure function) and applies the result as a reload does.
//!
//! etcd is for discovery, not for trust: with `auth = "pubkey"` and `ca` a member must still prove its
//! identity with a certificate of the mesh's CA (README, "Membership from etcd").

pub mod client;
pub mod entry;
pub mod merge;

pub use client::{Entries, Membership};

use entry::Member;

/// Parses the entries (oldest first, by create revision); the ones refused, each with a line saying why.
pub fn parse_entries(e: &Entries) -> (Vec<Member>, Vec<String>) {
    let mut sorted: Vec<_> = e.by_name.iter().collect();
    sorted.sort_by_key(|(n, (rev, _))| (*rev, (*n).clone()));
    let mut members = Vec::with_capacity(sorted.len());
    let mut refused = Vec::new();
    for (name, (_, value)) in sorted {
        match entry::parse(name, value) {
            Ok(m) => members.push(m),
            Err(err) => refused.push(format!(
                "etcd entry {:?} refused: {err}",
                crate::daemon::logcap::clean(name, 64)
            )),
        }
    }
    if e.left_out > 0 {
        refused.push(format!(
            "etcd: {} keys under the prefix left out: at most {} are read",
            e.left_out,
            entry::MAX_KEYS
        ));
    }
    (members, refused)
}
