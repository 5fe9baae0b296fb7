//! Merging the mesh file's hosts with the members read from etcd: a pure function, so that every conflict
//! rule is tested without a cluster. The file's hosts always stay; an etcd member is taken only if it
//! disturbs nothing already taken (file hosts first, then members in the order they were first written to
//! etcd, so an older member keeps its place against a newer one that claims the same thing). A refused member
//! is reported with a line naming both sides.

use std::collections::BTreeMap;

use super::entry::Member;
use crate::config::{Auth, Config, Host, PublicKeyFile};

/// The outcome of a merge.
#[derive(Debug)]
pub struct Merged {
    /// The configuration with the members taken.
    pub config: Config,
    /// Names of the members taken from etcd.
    pub taken: Vec<String>,
    /// One line per member refused: who, and what it conflicts with.
    pub refused: Vec<String>,
}

/// What `m` conflicts with among `hosts`, if anything.
fn conflict(hosts: &[Host], m: &Host) -> Option<String> {
    for h in hosts {
        if h.name == m.name {
            return Some(format!(
                "host {} is already in the mesh (address {})",
                h.name, h.address
            ));
        }
        if h.address == m.address {
            return Some(format!("its address {} is host {}'s", m.address, h.name));
        }
        if h.id == m.id {
            return Some(format!("its identity {} is host {}'s", m.id, h.name));
        }
        let theirs = h
            .subnets
            .iter()
            .chain(h.libvirt.iter().flat_map(|l| l.range.iter()));
        for p in theirs {
            if let Some(q) = m.subnets.iter().find(|q| q.overlaps(p)) {
                return Some(format!("its subnet {q} overlaps {p} of host {}", h.name));
            }
            if p.contains(m.address) {
                return Some(format!(
                    "its address {} lies in {p}, a subnet of host {}",
                    m.address, h.name
                ));
            }
        }
        if m.subnets.iter().any(|q| q.contains(h.address)) {
            return Some(format!(
                "one of its subnets holds host {}'s address {}",
                h.name, h.address
            ));
        }
    }
    None
}

/// Merges `file` (the mesh file as loaded, this host in it) with `members` (from etcd, oldest first).
///
/// A member that agrees exactly with a file host of the same name is that host publishing itself: nothing to
/// add. With `auth = "pubkey"` (raw keys) a member must carry its public key.
pub fn merge(file: &Config, members: &[Member]) -> Merged {
    let mut hosts = file.mesh.hosts.clone();
    let mut keys: BTreeMap<String, PublicKeyFile> = BTreeMap::new();
    let mut taken = Vec::new();
    let mut refused = Vec::new();
    for m in members {
        if let Some(f) = file.mesh.host(&m.host.name) {
            let same = f.address == m.host.address
                && f.port == m.host.port
                && f.id == m.host.id
                && (f.libvirt.is_some() || f.subnets == m.host.subnets);
            if !same {
                refused.push(format!(
                    "etcd member {} refused: it differs from host {} of the mesh file (address {}), which \
                     stays as the file says",
                    m.host.name, f.name, f.address
                ));
            }
            continue;
        }
        if let Some(why) = conflict(&hosts, &m.host) {
            refused.push(format!("etcd member {} refused: {why}", m.host.name));
            continue;
        }
        if let Auth::PubKey(_) = file.mesh.auth {
            let Some(k) = &m.pubkey else {
                refused.push(format!(
                    "etcd member {} refused: auth = \"pubkey\" and its entry has no pubkey",
                    m.host.name
                ));
                continue;
            };
            keys.insert(
                m.host.name.clone(),
                PublicKeyFile {
                    path: format!("etcd:{}", m.host.name).into(),
                    key: k.clone(),
                },
            );
        }
        taken.push(m.host.name.clone());
        hosts.push(m.host.clone());
    }
    Merged {
        config: file.with_members(hosts, keys),
        taken,
        refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::entry;

    /// A mesh file with [etcd] and this host (h1) alone, plus h2 when `two`.
    fn file(dir: &std::path::Path, two: bool) -> Config {
        use std::os::unix::fs::PermissionsExt;
        let psk = dir.join("psk");
        std::fs::write(&psk, "0123456789abcdef0123456789abcdef\n").unwrap();
        std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut text = "[mesh]\npsk_file = \"psk\"\n[etcd]\nendpoints = [\"http://198.18.0.10:2379\"]\n\
                        prefix = \"/vmsecd/t/\"\n[[host]]\nname = \"h1\"\naddress = \"198.18.0.1\"\n\
                        subnets = [\"198.19.1.0/24\"]\n"
            .to_owned();
        if two {
            text += "[[host]]\nname = \"h2\"\naddress = \"198.18.0.2\"\nsubnets = [\"198.19.2.0/24\"]\n";
        }
        let mesh = dir.join("mesh.toml");
        std::fs::write(&mesh, text).unwrap();
        Config::load(&mesh, Some("h1"), &[]).unwrap()
    }

    fn member(name: &str, n: u8, subnet: &str) -> Member {
        let v = format!(r#"{{"name":"{name}","address":"198.18.0.{n}","subnets":["{subnet}"]}}"#);
        entry::parse(name, v.as_bytes()).unwrap()
    }

    /// Members join; the file's own hosts (and this host publishing itself) add nothing; each conflict is
    /// refused with a line naming both hosts, and disturbs neither the file's hosts nor the other members.
    #[test]
    fn conflicts_are_refused_naming_both_and_disturb_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), true);
        let ms = vec![
            member("h1", 1, "198.19.1.0/24"),
            member("h2", 2, "198.19.2.0/24"),
            member("h3", 3, "198.19.3.0/24"),
            member("h4", 4, "198.19.1.128/25"),
            member("h5", 2, "198.19.5.0/24"),
            member("h2", 2, "198.19.9.0/24"),
            member("h6", 6, "198.19.3.0/25"),
            member("h7", 7, "198.19.7.0/24"),
        ];
        let m = merge(&f, &ms);
        assert_eq!(m.taken, ["h3", "h7"]);
        let names: Vec<&str> = m
            .config
            .mesh
            .hosts
            .iter()
            .map(|h| h.name.as_str())
            .collect();
        assert_eq!(names, ["h1", "h2", "h3", "h7"]);
        assert_eq!(m.config.local().name, "h1");
        let all = m.refused.join("\n");
        for want in [
            "etcd member h4 refused: its subnet 198.19.1.128/25 overlaps 198.19.1.0/24 of host h1",
            "etcd member h5 refused: its address 198.18.0.2 is host h2's",
            "etcd member h2 refused: it differs from host h2 of the mesh file",
            "etcd member h6 refused: its subnet 198.19.3.0/25 overlaps 198.19.3.0/24 of host h3",
        ] {
            assert!(all.contains(want), "{want}\n{all}");
        }
        assert_eq!(m.refused.len(), 4, "{all}");
        // The file alone with this host: a member is all the mesh has.
        let alone = file(dir.path(), false);
        let m = merge(&alone, &[member("h9", 9, "198.19.9.0/24")]);
        assert_eq!(m.config.peers().count(), 1);
    }
}
