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
    for (name, (created, value)) in sorted {
        match entry::parse(name, value) {
            Ok(m) => members.push(Member {
                created: *created,
                ..m
            }),
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

/// The most refusal lines logged when the refusals change; the rest are counted in one more line.
pub const MAX_REFUSALS_LOGGED: usize = 8;

/// The lines to log for `refused`: whoever can write to etcd can store a thousand bogus entries and change one
/// every 500 ms, and each change would log every refusal again.
pub fn refusal_lines(refused: &[String]) -> Vec<String> {
    let mut lines: Vec<String> = refused.iter().take(MAX_REFUSALS_LOGGED).cloned().collect();
    if refused.len() > MAX_REFUSALS_LOGGED {
        lines.push(format!(
            "etcd: {} more refusals not logged (only the first {MAX_REFUSALS_LOGGED} are); `etcdctl get --prefix` \
             shows the entries",
            refused.len() - MAX_REFUSALS_LOGGED
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thousand bogus entries give a bounded number of log lines per change, not a thousand.
    #[test]
    fn refusals_logged_are_capped() {
        let few: Vec<String> = (0..3).map(|i| format!("r{i}")).collect();
        assert_eq!(refusal_lines(&few), few);
        let many: Vec<String> = (0..1024).map(|i| format!("r{i}")).collect();
        let lines = refusal_lines(&many);
        assert_eq!(lines.len(), MAX_REFUSALS_LOGGED + 1);
        assert!(
            lines[MAX_REFUSALS_LOGGED].contains("1016 more"),
            "{lines:?}"
        );
    }
}
