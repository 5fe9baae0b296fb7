//! Merging the mesh file's hosts with the members read from etcd: a pure function, so that every conflict
//! rule is tested without a cluster. The file's hosts always stay; an etcd member is taken only if it
//! disturbs nothing already taken (file hosts first, then members in the order they were first written to
//! etcd, so an older member keeps its place against a newer one that claims the same thing). A refused member
//! is reported with a line naming both sides.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use super::entry::Member;
use crate::config::etcd::EtcdSettings;
use crate::config::{Auth, Config, Host, Identity, PublicKeyFile};
use crate::prefix::Prefix;

/// With `auth = "pubkey"` (raw keys): each member as first seen, by name, with the create revision of its entry
/// (see [`merge`]).
pub type Pins = BTreeMap<String, Member>;

/// The outcome of a merge.
#[derive(Debug)]
pub struct Merged {
    /// The configuration with the members taken.
    pub config: Config,
    /// Names of the members taken from etcd.
    pub taken: Vec<String>,
    /// One line per member refused: who, and what it conflicts with.
    pub refused: Vec<String>,
    /// The pins to pass to the next merge.
    pub pins: Pins,
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
        if let Some(a) = m.addresses().find(|a| h.addresses().any(|b| b == *a)) {
            return Some(format!("its address {a} is host {}'s", h.name));
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
            if let Some(a) = m.addresses().find(|a| p.contains(*a)) {
                return Some(format!(
                    "its address {a} lies in {p}, a subnet of host {}",
                    h.name
                ));
            }
        }
        if let Some(a) = h
            .addresses()
            .find(|a| m.subnets.iter().any(|q| q.contains(*a)))
        {
            return Some(format!(
                "one of its subnets holds host {}'s address {a}",
                h.name
            ));
        }
    }
    None
}

/// Why the subnets of `m` may not come from etcd at all, if they may not: one holds an etcd endpoint's address,
/// or lies outside `etcd.subnets_within` when that is set. Each subnet becomes a route into the tunnel on every
/// host, whether or not the member ever authenticates.
fn out_of_bounds(etcd: &EtcdSettings, m: &Host) -> Option<String> {
    for q in &m.subnets {
        if let Some(a) = etcd.endpoint_addresses().find(|a| q.contains(*a)) {
            return Some(format!(
                "its subnet {q} holds the address of etcd endpoint {a}: its route would cut the hosts off from etcd"
            ));
        }
        let within = &etcd.subnets_within;
        if !within.is_empty() && !within.iter().any(|r| r.contains_prefix(q)) {
            let ranges: Vec<String> = within.iter().map(|r| r.to_string()).collect();
            return Some(format!(
                "its subnet {q} lies outside etcd.subnets_within ({})",
                ranges.join(", ")
            ));
        }
    }
    None
}

/// What the hosts taken so far claim, indexed: a member is checked with a few lookups per subnet instead of
/// against every subnet of every host. A writer of etcd can store 1024 members of 64 subnets each, and the
/// pairwise check ([`conflict`] over all hosts) then took minutes of the event loop at each change; it now
/// only words the refusal, against the one host the index found.
#[derive(Default)]
struct Claims {
    names: HashMap<String, usize>,
    addrs: BTreeMap<IpAddr, usize>,
    ids: HashMap<Identity, usize>,
    /// Subnets and libvirt ranges, ordered by network address.
    prefixes: BTreeMap<Prefix, usize>,
    /// The prefix lengths in `prefixes` (a mesh uses a few), so that a lookup tries only those.
    lens: BTreeSet<u8>,
}

impl Claims {
    /// Records what host `i` claims (the first claimant of each thing stays).
    fn add(&mut self, i: usize, h: &Host) {
        self.names.entry(h.name.clone()).or_insert(i);
        for a in h.addresses() {
            self.addrs.entry(a).or_insert(i);
        }
        self.ids.entry(h.id.clone()).or_insert(i);
        for p in h
            .subnets
            .iter()
            .chain(h.libvirt.iter().flat_map(|l| l.range.iter()))
        {
            self.prefixes.entry(*p).or_insert(i);
            self.lens.insert(p.prefix_len());
        }
    }

    /// A taken prefix that holds `a`: one lookup per prefix length in use.
    fn holding(&self, a: IpAddr) -> Option<usize> {
        self.lens
            .iter()
            .find_map(|&len| self.prefixes.get(&Prefix::new(a, len)).copied())
    }

    /// The host that `m` conflicts with, if any (the lowest index found).
    fn conflict(&self, m: &Host) -> Option<usize> {
        let mut found = [
            self.names.get(&m.name).copied(),
            self.ids.get(&m.id).copied(),
        ]
        .into_iter()
        .chain(
            m.addresses()
                .flat_map(|a| [self.addrs.get(&a).copied(), self.holding(a)]),
        )
        .flatten()
        .min();
        for q in &m.subnets {
            // A taken prefix holding q's network address holds q or lies inside it; else the first taken
            // prefix (or host address) from q's network address on is the only one that can lie inside q.
            let inside = self
                .prefixes
                .range(*q..)
                .next()
                .filter(|(p, _)| q.contains(p.addr()))
                .map(|(_, i)| *i);
            let addr = self
                .addrs
                .range(q.addr()..)
                .next()
                .filter(|(a, _)| q.contains(**a))
                .map(|(_, i)| *i);
            for i in [self.holding(q.addr()), inside, addr].into_iter().flatten() {
                found = Some(found.map_or(i, |f| f.min(i)));
            }
        }
        found
    }
}

/// Merges `file` (the mesh file as loaded, this host in it) with `members` (from etcd, oldest first).
///
/// A member that agrees exactly with a file host of the same name is that host publishing itself: nothing to
/// add. With `auth = "pubkey"` (raw keys) a member must carry its public key, and keeps the key it was first seen
/// with (`pins`, from the previous merge) for as long as its entry exists: an entry rewritten with another key
/// (by whoever can write to etcd) is refused and the member stays as first seen, so that the store cannot hand
/// a known host's name, address and subnets to another key pair (README, "Membership from etcd"). An entry
/// deleted and written anew (a host leaving and joining again, with a new key pair perhaps) is a new member.
pub fn merge(file: &Config, members: &[Member], pins: &Pins) -> Merged {
    let mut hosts = file.mesh.hosts.clone();
    let mut claims = Claims::default();
    for (i, h) in hosts.iter().enumerate() {
        claims.add(i, h);
    }
    let raw_keys = matches!(file.mesh.auth, Auth::PubKey(_));
    let mut keys: BTreeMap<String, PublicKeyFile> = BTreeMap::new();
    let mut taken = Vec::new();
    let mut refused = Vec::new();
    let mut pins_out = Pins::new();
    for m in members {
        let m = match pins.get(&m.host.name) {
            Some(first) if raw_keys && first.created == m.created && first.pubkey != m.pubkey => {
                refused.push(format!(
                    "etcd member {} refused: its public key is not the one it joined with (its entry was \
                     rewritten in etcd); it stays as it was. A host whose key pair changed joins again once \
                     its entry is deleted (a clean stop, or etcdctl del)",
                    m.host.name
                ));
                first
            }
            _ => m,
        };
        if raw_keys && m.pubkey.is_some() {
            pins_out.insert(m.host.name.clone(), m.clone());
        }
        if let Some(f) = file.mesh.host(&m.host.name) {
            let same = f.address == m.host.address
                && f.second_address == m.host.second_address
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
        if let Some(why) = file
            .mesh
            .etcd
            .as_ref()
            .and_then(|e| out_of_bounds(e, &m.host))
        {
            refused.push(format!("etcd member {} refused: {why}", m.host.name));
            continue;
        }
        if let Some(i) = claims.conflict(&m.host) {
            let h = hosts.get(i..=i).unwrap_or_default();
            let why = conflict(h, &m.host).unwrap_or_else(|| {
                format!(
                    "it conflicts with host {}",
                    h.first().map_or("?", |h| &h.name)
                )
            });
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
        claims.add(hosts.len(), &m.host);
        hosts.push(m.host.clone());
    }
    Merged {
        config: file.with_members(hosts, keys),
        taken,
        refused,
        pins: pins_out,
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
        let m = merge(&f, &ms, &Pins::new());
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
        let m = merge(&alone, &[member("h9", 9, "198.19.9.0/24")], &Pins::new());
        assert_eq!(m.config.peers().count(), 1);
    }

    /// 1024 members of 64 subnets each (all that etcd entries may hold) are merged without comparing every
    /// subnet with every other: the pairwise check took about 25 s for 256 of them here (debug build), so
    /// minutes of the event loop for 1024, at each change. With the index the whole test takes under 1.5 s here
    /// (debug build, loaded machine); the bound is generous. Conflicts are still found among them.
    #[test]
    fn a_thousand_members_of_64_subnets_merge_quickly() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), true);
        let mut ms: Vec<Member> = (0..1024usize)
            .map(|i| {
                let subs: Vec<String> = (0..64)
                    .map(|j| format!("\"fd00:{i:x}::{j:x}/128\""))
                    .collect();
                let v = format!(
                    r#"{{"name":"m{i}","address":"198.18.{}.{}","subnets":[{}]}}"#,
                    4 + i / 250,
                    1 + i % 250,
                    subs.join(",")
                );
                entry::parse(&format!("m{i}"), v.as_bytes()).unwrap()
            })
            .collect();
        ms.push(member("late", 250, "fd00:3ff::3f/128"));
        ms.push(member("wide", 251, "fd00::/16"));
        let t = std::time::Instant::now();
        let m = merge(&f, &ms, &Pins::new());
        assert!(
            t.elapsed() < std::time::Duration::from_secs(10),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(m.taken.len(), 1024);
        let all = m.refused.join("\n");
        assert!(all.contains("etcd member late refused: its subnet fd00:3ff::3f/128 overlaps fd00:3ff::3f/128 of host m1023"), "{all}");
        assert!(
            all.contains("etcd member wide refused: its subnet fd00::/16 overlaps"),
            "{all}"
        );
        assert_eq!(m.refused.len(), 2, "{all}");
    }

    /// With raw public keys, a member keeps the key it joined with while its entry exists: the entry rewritten
    /// with another key (same create revision) is refused and the member stays as it was; deleted and written
    /// anew (a new create revision), it is a new member with the new key.
    #[test]
    fn a_rewritten_entry_cannot_change_a_members_key() {
        use ike::crypto::signature::PrivateKey;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let [own, first, second] = [0, 1, 2].map(|_| PrivateKey::generate(2048).unwrap());
        let private = dir.path().join("private.pem");
        std::fs::write(&private, own.to_pkcs8_pem()).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(dir.path().join("h1.pub.pem"), own.public_key().to_pem()).unwrap();
        let text = "[mesh]\nauth = \"pubkey\"\nprivate_key = \"private.pem\"\n[etcd]\n\
                    endpoints = [\"http://198.18.0.10:2379\"]\nprefix = \"/vmsecd/t/\"\n[[host]]\nname = \"h1\"\n\
                    address = \"198.18.0.1\"\nsubnets = [\"198.19.1.0/24\"]\npubkey = \"h1.pub.pem\"\n";
        let mesh = dir.path().join("mesh.toml");
        std::fs::write(&mesh, text).unwrap();
        let f = Config::load(&mesh, Some("h1"), &[]).unwrap();
        let h2 = |key: &PrivateKey, subnet: &str, created: i64| {
            let v = serde_json::json!({
                "name": "h2", "address": "198.18.0.2", "subnets": [subnet],
                "pubkey": key.public_key().to_pem(),
            });
            Member {
                created,
                ..entry::parse("h2", v.to_string().as_bytes()).unwrap()
            }
        };
        let key_of = |m: &Merged| match &m.config.mesh.auth {
            Auth::PubKey(pk) => pk.public_keys["h2"].key.clone(),
            _ => unreachable!(),
        };
        let m = merge(&f, &[h2(&first, "198.19.2.0/24", 5)], &Pins::new());
        assert_eq!((m.taken.len(), m.refused.len()), (1, 0), "{:?}", m.refused);
        // Rewritten with another key (and another subnet): refused, h2 stays as it joined.
        let m = merge(&f, &[h2(&second, "198.19.9.0/24", 5)], &m.pins);
        assert!(
            m.refused[0]
                .contains("etcd member h2 refused: its public key is not the one it joined with"),
            "{:?}",
            m.refused
        );
        assert_eq!(key_of(&m), first.public_key());
        assert_eq!(
            m.config.mesh.host("h2").unwrap().subnets[0].to_string(),
            "198.19.2.0/24"
        );
        // The same key with a new subnet is a change the member may make.
        let m = merge(&f, &[h2(&first, "198.19.3.0/24", 5)], &m.pins);
        assert!(m.refused.is_empty(), "{:?}", m.refused);
        assert_eq!(
            m.config.mesh.host("h2").unwrap().subnets[0].to_string(),
            "198.19.3.0/24"
        );
        // Deleted and written anew: a new member, with its new key.
        let m = merge(&f, &[h2(&second, "198.19.2.0/24", 11)], &m.pins);
        assert!(m.refused.is_empty(), "{:?}", m.refused);
        assert_eq!(key_of(&m), second.public_key());
    }

    /// A dual-stack member: its second address is claimed too, and a member that shares no family with this
    /// host is merged (the other hosts may reach it) but gets no tunnel from here.
    #[test]
    fn dual_stack_members_claim_both_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let f = file(dir.path(), true);
        let parse = |name: &str, v: &str| entry::parse(name, v.as_bytes()).unwrap();
        let ms = vec![
            parse(
                "h3",
                r#"{"name":"h3","address":["198.18.0.3","2001:db8:0:ff::3"],"subnets":["198.19.3.0/24"]}"#,
            ),
            parse(
                "h4",
                r#"{"name":"h4","address":["2001:db8:0:ff::3","198.18.0.4"],"subnets":["198.19.4.0/24"]}"#,
            ),
            parse(
                "h5",
                r#"{"name":"h5","address":"2001:db8:0:ff::5","subnets":["198.19.5.0/24"]}"#,
            ),
        ];
        let m = merge(&f, &ms, &Pins::new());
        assert_eq!(m.taken, ["h3", "h5"]);
        assert!(
            m.refused[0]
                .contains("etcd member h4 refused: its address 2001:db8:0:ff::3 is host h3's"),
            "{:?}",
            m.refused
        );
        let peers: Vec<&str> = m.config.peers().map(|h| h.name.as_str()).collect();
        assert_eq!(peers, ["h2", "h3"]);
        assert_eq!(m.config.unreachable()[0].peer, "h5");
    }

    /// A writer of etcd (a compromised store, any holder of a client certificate it accepts) publishes a member
    /// whose subnets are ranges no host claimed: the hypervisors' management network, or the range of the etcd
    /// cluster itself. Every host would route them into the tunnel, towards a member that may never
    /// authenticate: a mesh-wide blackhole, and cut off from etcd, no way back. A subnet that holds an etcd
    /// endpoint's address is refused always; with `etcd.subnets_within`, so is one outside those ranges.
    #[test]
    fn members_cannot_claim_the_stores_address_or_subnets_outside_the_allowed_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = file(dir.path(), false);
        let ms = vec![
            member("h3", 3, "198.19.3.0/24"),
            member("mgmt", 4, "10.0.0.0/8"),
            member("store", 5, "198.18.0.8/29"),
        ];
        let m = merge(&f, &ms, &Pins::new());
        assert_eq!(m.taken, ["h3", "mgmt"], "{:?}", m.refused);
        assert_eq!(
            m.refused,
            ["etcd member store refused: its subnet 198.18.0.8/29 holds the address of etcd endpoint 198.18.0.10: \
              its route would cut the hosts off from etcd"]
        );
        f.mesh.etcd.as_mut().unwrap().subnets_within = vec!["198.19.0.0/16".parse().unwrap()];
        let m = merge(&f, &ms, &Pins::new());
        assert_eq!(m.taken, ["h3"]);
        assert_eq!(
            m.refused[0],
            "etcd member mgmt refused: its subnet 10.0.0.0/8 lies outside etcd.subnets_within (198.19.0.0/16)"
        );
        assert_eq!(m.refused.len(), 2);
    }
}
