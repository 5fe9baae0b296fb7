//! The mesh file's tests: the fixtures shared by all (a folder with a key file, the standard two hosts) and the
//! tests of the `[mesh]` settings, hosts, subnets and local host; by topic in the files beside it: `psk.rs` (the
//! key file), `pubkey.rs` (public keys, identities, certificates), `libvirt.rs` (`subnets = "libvirt"`),
//! `dualstack.rs` (`address = [IPv4, IPv6]`).

use std::os::unix::fs::PermissionsExt;

use super::*;

const SECRET: &str = "s3cr3t-psk-0123456789";

/// A folder with a good key file `psk` (mode 0600) and room for a mesh file.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        f.write("psk", &format!("{SECRET}\n"), 0o600);
        f
    }

    fn write(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("mesh.toml")
    }

    fn parse(&self, text: &str) -> Result<Mesh, ConfigError> {
        Mesh::parse(text, &self.file())
    }

    /// The error of a file that must not load.
    fn err(&self, text: &str) -> ConfigError {
        match self.parse(text) {
            Ok(m) => panic!("expected an error, got {m:#?}"),
            Err(e) => e,
        }
    }
}

const TWO_HOSTS: &str = r#"
[[host]]
name = "b0"
address = "198.18.0.1"
subnets = ["198.19.1.0/24"]

[[host]]
name = "c0"
address = "198.18.0.2"
subnets = ["198.19.2.0/24"]
"#;

/// A `[mesh]` section with the key file and `extra` keys, then the two standard hosts.
fn with_mesh(extra: &str) -> String {
    format!("[mesh]\npsk_file = \"psk\"\n{extra}\n{TWO_HOSTS}")
}

/// A `[mesh]` section with the key file, then `hosts`.
fn with_hosts(hosts: &str) -> String {
    format!("[mesh]\npsk_file = \"psk\"\n{hosts}")
}

fn invalid(e: &ConfigError) -> (&str, &str) {
    match &*e.kind {
        ErrorKind::Invalid { problem, allowed } => (problem, allowed),
        other => panic!("expected Invalid, got {other:?} ({e})"),
    }
}

#[test]
fn a_good_file_with_every_key() {
    let f = Fixture::new();
    f.write("pub-b0.pem", "x", 0o644);
    let text = r#"
[mesh]
interface = "vmsec1"
mtu = 1380
auth = "psk"
psk_file = "psk"
ike_proposals = ["aes256gcm16-prfsha384-ecp384", "aes128gcm16-prfsha256-x25519"]
esp_proposals = ["aes256gcm16", "aes256-sha256"]
ike_lifetime = "8h"
child_lifetime = 1800
rekey_margin = "5m"
dpd_delay = "1m 30s"
encap = "udp"
replay_window = 4096
control_socket = "run/vmsecd.sock"

[[host]]
name = "b0"
address = "198.18.0.1"
subnets = ["198.19.1.0/24", "198.19.11.0/24"]

[[host]]
name = "c0"
address = ["2001:db8::2", "198.18.0.2"]
subnets = ["198.19.2.0/24", "2001:db8:2::/64"]
id = "@c0.example"
port = 4501

[[host]]
name = "gw"
address = "198.18.0.3"
subnets = ["198.19.3.0/24"]
id = "@#0a0b"
"#;
    let m = f.parse(text).unwrap();
    let s = &m.settings;
    assert_eq!(s.interface, "vmsec1");
    assert_eq!(s.mtu, 1380);
    assert_eq!(
        s.ike_proposals
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>(),
        [
            "aes256gcm16-prfsha384-ecp384",
            "aes128gcm16-prfsha256-x25519"
        ]
    );
    assert_eq!(s.esp_proposals.len(), 2);
    assert_eq!(s.ike_lifetime, Duration::from_secs(8 * 3600));
    assert_eq!(s.child_lifetime, Duration::from_secs(1800));
    assert_eq!(s.rekey_margin, Duration::from_secs(300));
    assert_eq!(s.dpd_delay, Some(Duration::from_secs(90)));
    assert_eq!(s.encap, Encap::Udp);
    assert_eq!(s.replay_window, 4096);
    assert_eq!(
        s.control_socket,
        ControlSocket::Path(f.dir.path().join("run/vmsecd.sock"))
    );
    let Auth::Psk(psk) = &m.auth else {
        panic!("psk expected")
    };
    assert_eq!(
        psk.secret(),
        SECRET.as_bytes(),
        "the final newline is not part of the key"
    );
    assert_eq!(psk.path(), f.dir.path().join("psk"));

    assert_eq!(m.hosts.len(), 3);
    let c0 = m.host("c0").unwrap();
    assert_eq!(c0.address, "2001:db8::2".parse::<IpAddr>().unwrap());
    assert_eq!(c0.second_address, Some("198.18.0.2".parse().unwrap()));
    assert_eq!(c0.subnets[1].to_string(), "2001:db8:2::/64");
    assert_eq!(c0.id, Identity::Fqdn("c0.example".into()));
    assert_eq!(c0.id.wire(), (2, b"c0.example".to_vec()));
    assert_eq!(c0.port, 4501);
    let gw = m.host("gw").unwrap();
    assert_eq!(gw.id, Identity::KeyId(vec![0x0a, 0x0b]));
    assert_eq!(gw.id.to_string(), "@#0a0b");
    let b0 = m.host("b0").unwrap();
    assert_eq!(b0.id, Identity::Addr("198.18.0.1".parse().unwrap()));
    assert_eq!(b0.id.wire(), (1, vec![198, 18, 0, 1]));
    assert_eq!(b0.port, DEFAULT_IKE_PORT);

    let config = Config::new(
        m,
        None,
        &["127.0.0.1".parse().unwrap(), "198.18.0.3".parse().unwrap()],
    )
    .unwrap();
    assert_eq!(config.local().name, "gw");
    assert_eq!(config.found_by, FoundBy::LocalAddress);
    assert_eq!(
        config.peers().map(|h| h.name.as_str()).collect::<Vec<_>>(),
        ["b0", "c0"]
    );
    let t = config.tunnels();
    assert_eq!(t.len(), 2);
    assert_eq!(t[1].local_subnets()[0].to_string(), "198.19.3.0/24");
    assert_eq!(t[1].remote_subnets().len(), 2);
    // gw has IPv4 only: the pair talks over c0's IPv4 address.
    assert_eq!(
        t[1].underlay().unwrap(),
        ("198.18.0.3".parse().unwrap(), "198.18.0.2".parse().unwrap())
    );
}

#[test]
fn defaults() {
    let f = Fixture::new();
    let m = f.parse(&with_mesh("")).unwrap();
    let s = &m.settings;
    assert_eq!(s.interface, "vmsec0");
    assert_eq!(s.mtu, DEFAULT_MTU);
    assert_eq!(s.ike_proposals[0].text, "aes128gcm16-prfsha256-x25519");
    assert_eq!(s.esp_proposals[0].text, "aes128gcm16");
    assert_eq!(s.ike_lifetime, Duration::from_secs(4 * 3600));
    assert_eq!(s.child_lifetime, Duration::from_secs(3600));
    assert_eq!(s.rekey_margin, Duration::from_secs(9 * 60));
    assert_eq!(s.dpd_delay, Some(Duration::from_secs(30)));
    assert_eq!(s.encap, Encap::Auto);
    assert_eq!(s.replay_window, esp::DEFAULT_REPLAY_WINDOW);
    assert_eq!(s.workers, 1);
    assert_eq!(s.control_socket, ControlSocket::Abstract("vmsecd".into()));
    assert_eq!(s.control_socket.to_string(), DEFAULT_CONTROL_SOCKET);
}

#[test]
fn the_example_of_the_issue_loads_and_finds_its_host() {
    let f = Fixture::new();
    let text = r#"
[mesh]
interface = "vmsec0"
auth = "psk"                       # "psk" or "pubkey"
psk_file = "psk"                   # the secret, never inline in the mesh file
ike_proposals = ["aes128gcm16-prfsha256-x25519"]
esp_proposals = ["aes128gcm16"]

[[host]]
name = "b0"
address = "198.18.0.1"
subnets = ["198.19.1.0/24"]

[[host]]
name = "c0"
address = "198.18.0.2"
subnets = ["198.19.2.0/24"]
"#;
    let path = f.write("mesh.toml", text, 0o644);
    let c = Config::load(&path, None, &["198.18.0.2".parse().unwrap()]).unwrap();
    assert_eq!(c.local().name, "c0");
    assert_eq!(c.peers().next().unwrap().name, "b0");
}

#[test]
fn error_display_names_file_line_key_problem_and_allowed() {
    let f = Fixture::new();
    let e = f.err(&with_mesh("encap = \"gre\""));
    let s = e.to_string();
    let file = f.file().display().to_string();
    assert!(
        s.starts_with(&format!(
            "{file}:3:9: mesh.encap: unknown encapsulation \"gre\"; allowed: \"auto\""
        )),
        "{s}"
    );
}

#[test]
fn unreadable_mesh_file() {
    let e = Mesh::load(Path::new("/nonexistent/vmsecd/mesh.toml")).unwrap_err();
    assert!(matches!(*e.kind, ErrorKind::Read(_)), "{e}");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/vmsecd/mesh.toml: cannot read the mesh file: "),
        "{e}"
    );
}

#[test]
fn not_toml() {
    let f = Fixture::new();
    let e = f.err("[mesh\npsk_file = 1");
    assert!(matches!(*e.kind, ErrorKind::Syntax(_)), "{e}");
    assert_eq!(e.location.map(|l| l.0), Some(1));
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let f = Fixture::new();
    let e = f.err(&with_mesh("psk_flie = \"psk\""));
    assert!(matches!(*e.kind, ErrorKind::Syntax(_)), "{e}");
    assert_eq!(e.location, Some((3, 1)), "{e}");
    assert!(e.to_string().contains("unknown field `psk_flie`"), "{e}");

    let e = f.err(&with_hosts(&format!(
        "{TWO_HOSTS}\nsubnet = [\"198.19.9.0/24\"]"
    )));
    assert!(e.to_string().contains("unknown field `subnet`"), "{e}");

    let e = f.err(&format!("{}\n[extra]\nx = 1", with_mesh("")));
    assert!(e.to_string().contains("unknown field `extra`"), "{e}");
}

#[test]
fn wrong_types() {
    let f = Fixture::new();
    let e = f.err(&with_mesh("mtu = \"big\""));
    assert!(matches!(*e.kind, ErrorKind::Syntax(_)), "{e}");
    assert_eq!(e.location, Some((3, 7)), "{e}");
    let e = f.err(&with_mesh(
        "ike_proposals = \"aes128gcm16-prfsha256-x25519\"",
    ));
    assert!(matches!(*e.kind, ErrorKind::Syntax(_)), "{e}");
}

#[test]
fn duplicate_host_names() {
    let f = Fixture::new();
    let e = f.err(&with_hosts(&format!(
        "{TWO_HOSTS}\n[[host]]\nname = \"b0\"\naddress = \"198.18.0.3\"\nsubnets = [\"198.19.3.0/24\"]\n"
    )));
    assert_eq!(e.key, "host[2].name");
    assert!(
        matches!(&*e.kind, ErrorKind::DuplicateName { name, first } if name == "b0" && first == "host[0]"),
        "{e}"
    );
}

#[test]
fn duplicate_addresses() {
    let f = Fixture::new();
    let e = f.err(&with_hosts(&format!(
        "{TWO_HOSTS}\n[[host]]\nname = \"d0\"\naddress = \"198.18.0.2\"\nsubnets = [\"198.19.3.0/24\"]\n"
    )));
    assert_eq!(e.key, "host[2].address");
    assert!(
        matches!(&*e.kind, ErrorKind::DuplicateAddress { other, .. } if other == "c0"),
        "{e}"
    );
}

#[test]
fn duplicate_identities() {
    let f = Fixture::new();
    let e = f.err(&with_hosts(&format!(
        "{TWO_HOSTS}\n[[host]]\nname = \"d0\"\naddress = \"198.18.0.3\"\nid = \"198.18.0.1\"\nsubnets = [\"198.19.3.0/24\"]\n"
    )));
    assert_eq!(e.key, "host[2].id");
    assert!(
        matches!(&*e.kind, ErrorKind::DuplicateId { other, .. } if other == "b0"),
        "{e}"
    );
}

#[test]
fn overlapping_subnets_name_both_hosts() {
    let f = Fixture::new();
    let e = f.err(&with_hosts(
        r#"
[[host]]
name = "a0"
address = "198.18.0.9"
subnets = ["198.19.9.0/24"]

[[host]]
name = "b0"
address = "198.18.0.1"
subnets = ["198.19.1.0/24"]

[[host]]
name = "c0"
address = "198.18.0.2"
subnets = ["198.19.1.128/25"]
"#,
    ));
    assert_eq!(e.key, "host[2].subnets[0]");
    assert_eq!(e.location, Some((17, 12)));
    assert!(
        e.to_string().ends_with(
            "host[2].subnets[0]: b0 198.19.1.0/24 overlaps c0 198.19.1.128/25: renumber one"
        ),
        "{e}"
    );
}

#[test]
fn overlapping_subnets_within_one_host() {
    let f = Fixture::new();
    let e = f.err(&with_hosts(
        r#"
[[host]]
name = "b0"
address = "198.18.0.1"
subnets = ["198.19.0.0/16", "198.19.4.0/24"]

[[host]]
name = "c0"
address = "198.18.0.2"
subnets = ["198.20.2.0/24"]
"#,
    ));
    assert_eq!(e.key, "host[0].subnets[1]");
    assert!(
        matches!(&*e.kind, ErrorKind::Overlap { first_host, host, .. } if first_host == "b0" && host == "b0")
    );
}

#[test]
fn a_subnet_must_not_hold_a_host_address() {
    let f = Fixture::new();
    let e = f.err(&with_hosts(
        r#"
[[host]]
name = "b0"
address = "198.18.0.1"
subnets = ["198.19.1.0/24"]

[[host]]
name = "c0"
address = "198.18.0.2"
subnets = ["198.18.0.0/16"]
"#,
    ));
    assert_eq!(e.key, "host[1].subnets[0]");
    assert!(
        matches!(&*e.kind, ErrorKind::AddressInSubnet { host, owner, .. } if host == "b0" && owner == "c0"),
        "{e}"
    );
}

#[test]
fn subnets_must_be_cidr_prefixes() {
    let f = Fixture::new();
    let hosts = TWO_HOSTS.replace("198.19.2.0/24", "198.19.2.7/24");
    let e = f.err(&with_hosts(&hosts));
    assert_eq!(e.key, "host[1].subnets[0]");
    assert!(
        e.to_string()
            .ends_with("has host bits set: did you mean 198.19.2.0/24?"),
        "{e}"
    );

    let hosts = TWO_HOSTS.replace("198.19.2.0/24", "198.19.2.0");
    let e = f.err(&with_hosts(&hosts));
    assert!(
        matches!(
            *e.kind,
            ErrorKind::Prefix(crate::prefix::PrefixError::Syntax(_))
        ),
        "{e}"
    );

    let hosts = TWO_HOSTS.replace("[\"198.19.2.0/24\"]", "[]");
    let e = f.err(&with_hosts(&hosts));
    assert_eq!(e.key, "host[1].subnets");
    assert_eq!(invalid(&e).0, "the list is empty");
}

/// `etcd.subnets_within`: the ranges etcd members' subnets must lie in (`membership::merge`), parsed as CIDR
/// ranges; absent means anywhere, an empty list is refused.
#[test]
fn etcd_subnets_within_is_a_list_of_ranges() {
    let f = Fixture::new();
    let etcd = |within: &str| {
        format!(
            "[etcd]\nendpoints = [\"http://198.18.0.10:2379\"]\nprefix = \"/vmsecd/t/\"\n{within}\n{}",
            with_mesh("")
        )
    };
    let m = f.parse(&etcd("")).unwrap();
    assert!(m.etcd.as_ref().unwrap().subnets_within.is_empty());
    assert_eq!(
        m.etcd
            .as_ref()
            .unwrap()
            .endpoint_addresses()
            .collect::<Vec<_>>(),
        ["198.18.0.10".parse::<std::net::IpAddr>().unwrap()]
    );
    let m = f
        .parse(&etcd(
            r#"subnets_within = ["198.19.0.0/16", "fd00:19::/48"]"#,
        ))
        .unwrap();
    assert_eq!(m.etcd.unwrap().subnets_within.len(), 2);
    let e = f.err(&etcd("subnets_within = []"));
    assert_eq!(e.key, "etcd.subnets_within");
    assert_eq!(invalid(&e).0, "the list is empty");
    let e = f.err(&etcd(r#"subnets_within = ["198.19.0.1/16"]"#));
    assert_eq!(e.key, "etcd.subnets_within[0]");
}

#[test]
fn ipv6_subnets_need_an_mtu_of_1280() {
    let f = Fixture::new();
    let text = format!(
        "[mesh]\npsk_file = \"psk\"\nmtu = 1200\n{}",
        TWO_HOSTS.replace("198.19.2.0/24", "2001:db8:2::/64")
    );
    let e = f.err(&text);
    assert_eq!(e.key, "host[1].subnets[0]");
    assert!(invalid(&e).1.contains("1280"));
}

#[test]
fn unknown_proposal_tokens() {
    let f = Fixture::new();
    let e = f.err(&with_mesh(
        "ike_proposals = [\"aes128gcm16-prfsha256-x25519\", \"aes128gcm16-prfmd5-x25519\"]",
    ));
    assert_eq!(e.key, "mesh.ike_proposals[1]");
    assert_eq!(e.location, Some((3, 50)));
    assert!(
        e.to_string().contains("unknown algorithm \"prfmd5\""),
        "{e}"
    );
    assert!(e.to_string().contains("known: aes128gcm16"), "{e}");

    let e = f.err(&with_mesh("esp_proposals = [\"aes128gcm\"]"));
    assert_eq!(e.key, "mesh.esp_proposals[0]");
    assert!(matches!(*e.kind, ErrorKind::Proposal(_)), "{e}");

    // ESP takes no PRF.
    let e = f.err(&with_mesh("esp_proposals = [\"aes128gcm16-prfsha256\"]"));
    assert!(matches!(*e.kind, ErrorKind::Proposal(_)), "{e}");

    let e = f.err(&with_mesh("esp_proposals = []"));
    assert_eq!(e.key, "mesh.esp_proposals");
    assert!(invalid(&e).1.contains("[\"aes128gcm16\"]"));
}

#[test]
fn auth_methods() {
    let f = Fixture::new();
    let e = f.err(&with_mesh("auth = \"cert\""));
    assert_eq!(e.key, "mesh.auth");
    assert!(invalid(&e).1.contains("\"psk\""));

    // pubkey needs private_key and every host's pubkey.
    let pubkey_hosts = TWO_HOSTS.replace(
        "subnets = [\"198.19.2.0/24\"]",
        "subnets = [\"198.19.2.0/24\"]\npubkey = \"c0.pem\"",
    );
    let e = f.err(&format!("[mesh]\nauth = \"pubkey\"\n{pubkey_hosts}"));
    assert_eq!(e.key, "mesh.private_key");
    assert!(matches!(*e.kind, ErrorKind::Missing { .. }), "{e}");
    let e = f.err(&format!(
        "[mesh]\nauth = \"pubkey\"\nprivate_key = \"key.pem\"\n{pubkey_hosts}"
    ));
    assert_eq!(e.key, "host[0].pubkey");
    let all = pubkey_hosts.replace(
        "subnets = [\"198.19.1.0/24\"]",
        "subnets = [\"198.19.1.0/24\"]\npubkey = \"b0.pem\"",
    );
    let e = f.err(&format!(
        "[mesh]\nauth = \"pubkey\"\nprivate_key = \"key.pem\"\n{all}"
    ));
    assert_eq!(e.key, "mesh.private_key");
    assert!(
        matches!(*e.kind, ErrorKind::Key(KeyFileError::Unreadable { .. })),
        "{e}"
    );
    let e = f.err(&format!(
        "[mesh]\nauth = \"pubkey\"\npsk_file = \"psk\"\nprivate_key = \"k\"\n{all}"
    ));
    assert_eq!(e.key, "mesh.psk_file");

    // psk with pubkey keys set is a mistake worth pointing at.
    let e = f.err(&with_mesh("private_key = \"key.pem\""));
    assert_eq!(e.key, "mesh.private_key");
    let e = f.err(&with_hosts(&pubkey_hosts));
    assert_eq!(e.key, "host[1].pubkey");
}

#[test]
fn local_host_by_name_or_address() {
    let f = Fixture::new();
    let m = f.parse(&with_mesh("")).unwrap();
    let b0: IpAddr = "198.18.0.1".parse().unwrap();
    assert_eq!(m.local_host(None, &[b0]).unwrap().name, "b0");
    // --host wins, and its address need not be local.
    assert_eq!(m.local_host(Some("c0"), &[b0]).unwrap().name, "c0");
    assert_eq!(
        m.peers(m.host("c0").unwrap())
            .map(|h| &h.name[..])
            .collect::<Vec<_>>(),
        ["b0"]
    );

    let e = m.local_host(Some("x9"), &[]).unwrap_err();
    assert_eq!(e.key, "--host");
    assert!(
        e.to_string()
            .contains("no [[host]] is named \"x9\"; hosts in this file: b0, c0"),
        "{e}"
    );

    let e = m
        .local_host(
            None,
            &["198.18.0.77".parse().unwrap(), "::1".parse().unwrap()],
        )
        .unwrap_err();
    assert!(matches!(*e.kind, ErrorKind::NotOurs { .. }), "{e}");
    let s = e.to_string();
    assert!(s.contains("local addresses: 198.18.0.77, ::1"), "{s}");
    assert!(s.contains("hosts: b0 198.18.0.1, c0 198.18.0.2"), "{s}");
    assert!(s.contains("--host NAME"), "{s}");

    let e = m
        .local_host(None, &[b0, "198.18.0.2".parse().unwrap()])
        .unwrap_err();
    assert!(
        matches!(&*e.kind, ErrorKind::Ambiguous { names } if names == "b0, c0"),
        "{e}"
    );
}

#[test]
fn at_least_two_hosts() {
    let f = Fixture::new();
    let e = f.err("[mesh]\npsk_file = \"psk\"\n[[host]]\nname = \"b0\"\naddress = \"198.18.0.1\"\nsubnets = [\"198.19.1.0/24\"]\n");
    assert_eq!(e.key, "host");
    assert!(matches!(*e.kind, ErrorKind::Missing { .. }), "{e}");
}

#[test]
fn host_fields() {
    let f = Fixture::new();
    let base = "[[host]]\nname = \"c0\"\naddress = \"198.18.0.2\"\nsubnets = [\"198.19.2.0/24\"]\n";
    let b0 = "[[host]]\nname = \"b0\"\naddress = \"198.18.0.1\"\nsubnets = [\"198.19.1.0/24\"]\n";
    let case = |c0: &str| f.err(&with_hosts(&format!("{b0}\n{c0}")));

    let e = case(&base.replace("name = \"c0\"\n", ""));
    assert_eq!(
        (e.key.as_str(), matches!(*e.kind, ErrorKind::Missing { .. })),
        ("host[1].name", true)
    );
    let e = case(&base.replace("address = \"198.18.0.2\"\n", ""));
    assert_eq!(e.key, "host[1].address");
    let e = case(&base.replace("subnets = [\"198.19.2.0/24\"]\n", ""));
    assert_eq!(e.key, "host[1].subnets");

    let e = case(&base.replace("\"c0\"", "\"c 0\""));
    assert_eq!(e.key, "host[1].name");
    let e = case(&base.replace("198.18.0.2", "198.18.0.2/24"));
    assert_eq!(e.key, "host[1].address");
    assert!(invalid(&e).0.contains("is not an IP address"));
    let e = case(&base.replace("198.18.0.2", "127.0.0.1"));
    assert!(invalid(&e).1.contains("not loopback"));
    // A subnet in a special-purpose range: every host would route it into the tunnel.
    let e = case(&base.replace("198.19.2.0/24", "169.254.169.254/32"));
    assert_eq!(e.key, "host[1].subnets[0]");
    assert!(
        invalid(&e)
            .0
            .contains("overlaps 169.254.0.0/16 (link-local)"),
        "{e}"
    );
    let e = case(&base.replace("\"198.19.2.0/24\"", "\"198.19.2.0/24\", \"8000::/1\""));
    assert!(invalid(&e).0.contains("fe80::/10"), "{e}");
    let e = case(&base.replace(
        "subnets = [\"198.19.2.0/24\"]",
        "subnets = \"libvirt\"\nlibvirt_range = [\"224.0.0.0/4\"]",
    ));
    assert!(invalid(&e).0.contains("multicast"), "{e}");
    let e = case(&format!("{base}port = 0\n"));
    assert_eq!(e.key, "host[1].port");
    let e = case(&format!("{base}port = 70000\n"));
    assert_eq!(e.key, "host[1].port");
    let e = case(&format!("{base}id = \"carol@example org\"\n"));
    assert_eq!(e.key, "host[1].id");
    assert!(invalid(&e).0.contains("RFC 822"));
    let e = case(&format!("{base}id = \"@#abc\"\n"));
    assert_eq!(e.key, "host[1].id");
    let e = case(&format!("{base}id = \"C=CH, X=strongSwan\"\n"));
    assert_eq!(e.key, "host[1].id");
}

#[test]
fn durations() {
    let f = Fixture::new();
    let m = f
        .parse(&with_mesh(
            "ike_lifetime = \"1d\"\nchild_lifetime = \"1h 30m\"\ndpd_delay = 0",
        ))
        .unwrap();
    assert_eq!(m.settings.ike_lifetime, Duration::from_secs(86400));
    assert_eq!(m.settings.child_lifetime, Duration::from_secs(5400));
    assert_eq!(m.settings.dpd_delay, None);

    // Short lifetimes, for tests, with a margin that fits.
    let m = f
        .parse(&with_mesh(
            "child_lifetime = \"20s\"\nrekey_margin = \"5s\"",
        ))
        .unwrap();
    assert_eq!(m.settings.child_lifetime, Duration::from_secs(20));

    let e = f.err(&with_mesh("ike_lifetime = \"soon\""));
    assert_eq!(e.key, "mesh.ike_lifetime");
    assert!(invalid(&e).1.contains("\"4h\""));
    let e = f.err(&with_mesh("dpd_delay = -5"));
    assert_eq!(e.key, "mesh.dpd_delay");
    let e = f.err(&with_mesh("dpd_delay = true"));
    assert_eq!(e.key, "mesh.dpd_delay");

    let e = f.err(&with_mesh("child_lifetime = \"5s\"\nrekey_margin = \"1s\""));
    assert_eq!(e.key, "mesh.child_lifetime");
    assert!(invalid(&e).1.contains("at least 10s"));

    // The default margin (9m) does not fit in a 10-minute lifetime: the error points at what to lower.
    let e = f.err(&with_mesh("child_lifetime = \"10m\""));
    assert_eq!(e.key, "mesh.child_lifetime");
    assert!(invalid(&e).0.contains("rekey_margin 9m"), "{e}");
    let e = f.err(&with_mesh("rekey_margin = \"3h\""));
    assert_eq!(e.key, "mesh.rekey_margin");
    // The message names the lifetime the margin does not fit in, not the margin twice.
    let e = f.err(&with_mesh("ike_lifetime = \"20s\"\nrekey_margin = \"12s\""));
    assert_eq!(e.key, "mesh.rekey_margin");
    assert!(invalid(&e).0.contains("within ike_lifetime 20s"), "{e}");
    let e = f.err(&with_mesh("rekey_margin = 0"));
    assert_eq!(e.key, "mesh.rekey_margin");
}

#[test]
fn mesh_values_out_of_range() {
    let f = Fixture::new();
    let e = f.err(&with_mesh("interface = \"vmsec-interface0\""));
    assert_eq!(e.key, "mesh.interface");
    let e = f.err(&with_mesh("interface = \"../x\""));
    assert_eq!(e.key, "mesh.interface");
    let e = f.err(&with_mesh("mtu = 100"));
    assert_eq!(e.key, "mesh.mtu");
    let e = f.err(&with_mesh("mtu = 70000"));
    assert_eq!(e.key, "mesh.mtu");
    let e = f.err(&with_mesh("replay_window = 32"));
    assert_eq!(e.key, "mesh.replay_window");
    assert!(invalid(&e).1.starts_with("64 to 65536"));
    let e = f.err(&with_mesh("replay_window = 131072"));
    assert_eq!(e.key, "mesh.replay_window");
    let e = f.err(&with_mesh("workers = 0"));
    assert_eq!(e.key, "mesh.workers");
    assert!(invalid(&e).1.starts_with("1 to 64"));
    assert_eq!(f.err(&with_mesh("workers = 65")).key, "mesh.workers");
    assert_eq!(
        f.parse(&with_mesh("workers = 4")).unwrap().settings.workers,
        4
    );
    // 18 workers: up to 1088 packets out of order, more than the default window of 1024.
    let e = f.err(&with_mesh("workers = 18"));
    assert_eq!(e.key, "mesh.workers");
    assert!(invalid(&e).1.contains("replay_window = 2048"), "{e}");
    let m = f
        .parse(&with_mesh("workers = 18\nreplay_window = 2048"))
        .unwrap();
    assert_eq!(m.settings.workers, 18);
    assert_eq!(
        f.parse(&with_mesh("")).unwrap().settings.raw_tx,
        RawTxPath::Ring
    );
    assert_eq!(
        f.parse(&with_mesh("raw_tx = \"socket\""))
            .unwrap()
            .settings
            .raw_tx,
        RawTxPath::Socket
    );
    assert_eq!(
        f.parse(&with_mesh("")).unwrap().settings.raw_rx,
        RawRxPath::Socket
    );
    for (v, want) in [
        ("socket", RawRxPath::Socket),
        ("xdp", RawRxPath::Xdp),
        ("xdp-native", RawRxPath::XdpNative),
    ] {
        let m = f.parse(&with_mesh(&format!("raw_rx = \"{v}\""))).unwrap();
        assert_eq!(m.settings.raw_rx, want);
    }
    let e = f.err(&with_mesh("raw_rx = \"ring\""));
    assert_eq!(e.key, "mesh.raw_rx");
    assert!(invalid(&e).1.contains("\"xdp-native\""), "{e}");
    let e = f.err(&with_mesh("raw_tx = \"xdp\""));
    assert_eq!(e.key, "mesh.raw_tx");
    assert!(invalid(&e).1.contains("\"socket\""), "{e}");
    let e = f.err(&with_mesh("control_socket = \"@\""));
    assert_eq!(e.key, "mesh.control_socket");
    let e = f.err(&with_mesh(&format!(
        "control_socket = \"/{}\"",
        "x".repeat(120)
    )));
    assert_eq!(e.key, "mesh.control_socket");
    let m = f
        .parse(&with_mesh("control_socket = \"@vmsecd-b0\""))
        .unwrap();
    assert_eq!(
        m.settings.control_socket,
        ControlSocket::Abstract("vmsecd-b0".into())
    );
}

#[test]
fn firewall_mode() {
    let f = Fixture::new();
    assert_eq!(
        f.parse(&with_mesh("")).unwrap().settings.firewall,
        FirewallMode::Auto
    );
    for (text, mode) in [("auto", FirewallMode::Auto), ("off", FirewallMode::Off)] {
        let m = f
            .parse(&with_mesh(&format!("firewall = {text:?}")))
            .unwrap();
        assert_eq!(m.settings.firewall, mode);
        assert_eq!(mode.to_string(), text);
    }
    let e = f.err(&with_mesh("firewall = \"nftables\""));
    let (problem, allowed) = invalid(&e);
    assert_eq!(e.key, "mesh.firewall");
    assert_eq!(e.location, Some((3, 12)));
    assert!(problem.contains("\"nftables\""), "{problem}");
    assert!(
        allowed.contains("\"auto\"") && allowed.contains("\"off\""),
        "{allowed}"
    );
}

#[test]
fn nat_keepalive_and_ike_fragment_size() {
    let f = Fixture::new();
    let s = f.parse(&with_mesh("")).unwrap().settings;
    assert_eq!(s.nat_keepalive, Duration::from_secs(20));
    assert_eq!(s.ike_fragment_size, 1280);
    let s = f
        .parse(&with_mesh("nat_keepalive = \"45s\"\nike_fragment_size = 0"))
        .unwrap()
        .settings;
    assert_eq!(s.nat_keepalive, Duration::from_secs(45));
    assert_eq!(s.ike_fragment_size, 0);
    let e = f.err(&with_mesh("ike_fragment_size = 100"));
    assert_eq!(e.key, "mesh.ike_fragment_size");
    let (problem, allowed) = invalid(&e);
    assert!(
        problem.contains("100") && allowed.contains("576"),
        "{problem} / {allowed}"
    );
}

/// Metrics are off unless asked for; a port is served on each host's own address.
#[test]
fn metrics_listen_address() {
    use crate::config::MetricsListen;
    let f = Fixture::new();
    assert_eq!(f.parse(&with_mesh("")).unwrap().settings.metrics, None);
    let s = f.parse(&with_mesh("metrics = 9477")).unwrap().settings;
    assert_eq!(s.metrics, Some(MetricsListen::Port(9477)));
    assert_eq!(
        s.metrics.unwrap().resolve("198.18.0.3".parse().unwrap()),
        "198.18.0.3:9477".parse().unwrap()
    );
    let s = f
        .parse(&with_mesh("metrics = \"127.0.0.1:9100\""))
        .unwrap()
        .settings;
    assert_eq!(
        s.metrics,
        Some(MetricsListen::Addr("127.0.0.1:9100".parse().unwrap()))
    );
    for bad in [
        "metrics = 0",
        "metrics = 70000",
        "metrics = \"localhost\"",
        "metrics = true",
    ] {
        let e = f.err(&with_mesh(bad));
        assert_eq!(e.key, "mesh.metrics", "{bad}");
    }
}

mod dualstack;
mod libvirt;
mod psk;
mod pubkey;
