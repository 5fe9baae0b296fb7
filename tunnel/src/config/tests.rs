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
address = "2001:db8::2"
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
fn psk_file_missing_from_the_mesh_section() {
    let f = Fixture::new();
    let e = f.err(&format!("[mesh]\ninterface = \"vmsec0\"\n{TWO_HOSTS}"));
    assert_eq!(e.key, "mesh.psk_file");
    assert!(matches!(*e.kind, ErrorKind::Missing { .. }), "{e}");
    // No [mesh] at all: auth defaults to psk, which needs psk_file.
    let e = f.err(TWO_HOSTS);
    assert_eq!(e.key, "mesh.psk_file");
}

#[test]
fn psk_file_that_does_not_exist() {
    let f = Fixture::new();
    let e = f.err(&with_mesh("").replace("psk_file = \"psk\"", "psk_file = \"nope\""));
    assert_eq!(e.key, "mesh.psk_file");
    assert!(
        matches!(&*e.kind, ErrorKind::Psk(PskError::Unreadable { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("umask 077"), "{e}");
}

#[test]
fn psk_file_readable_by_group_or_others() {
    for mode in [0o644, 0o640, 0o604, 0o610, 0o601] {
        let f = Fixture::new();
        f.write("psk", SECRET, mode);
        let e = f.err(&with_mesh(""));
        assert!(
            matches!(&*e.kind, ErrorKind::Psk(PskError::Mode { mode: m, .. }) if *m == mode),
            "{mode:o}: {e}"
        );
        assert!(e.to_string().contains(&format!("(mode {mode:04o})")), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }
    let f = Fixture::new();
    f.write("psk", SECRET, 0o400);
    f.parse(&with_mesh("")).unwrap();
}

#[test]
fn psk_shorter_than_16_bytes() {
    let f = Fixture::new();
    f.write("psk", "0123456789abcde\n", 0o600); // 15 bytes and a newline
    let e = f.err(&with_mesh(""));
    assert!(
        matches!(&*e.kind, ErrorKind::Psk(PskError::TooShort { len: 15, .. })),
        "{e}"
    );
    assert!(e.to_string().contains("at least 16"), "{e}");

    f.write("psk", "0123456789abcdef\r\n", 0o600);
    let m = f.parse(&with_mesh("")).unwrap();
    let Auth::Psk(psk) = &m.auth else {
        panic!("psk expected")
    };
    assert_eq!(psk.secret(), b"0123456789abcdef");
}

#[test]
fn psk_file_too_long_or_not_a_file() {
    let f = Fixture::new();
    f.write("psk", &"x".repeat(PSK_MAX_LEN + 1), 0o600);
    let e = f.err(&with_mesh(""));
    assert!(
        matches!(&*e.kind, ErrorKind::Psk(PskError::TooLong { .. })),
        "{e}"
    );

    let f = Fixture::new();
    std::fs::create_dir(f.dir.path().join("keys")).unwrap();
    std::fs::set_permissions(
        f.dir.path().join("keys"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let e = f.err(&with_mesh("").replace("psk_file = \"psk\"", "psk_file = \"keys\""));
    assert!(
        matches!(&*e.kind, ErrorKind::Psk(PskError::NotAFile { .. })),
        "{e}"
    );
}

#[test]
fn psk_paths_resolve_against_the_mesh_folder_and_absolute_ones_stay() {
    let f = Fixture::new();
    std::fs::create_dir(f.dir.path().join("keys")).unwrap();
    f.write("keys/mesh.psk", SECRET, 0o600);
    let m = f
        .parse(&with_mesh("").replace("psk_file = \"psk\"", "psk_file = \"keys/mesh.psk\""))
        .unwrap();
    let Auth::Psk(psk) = &m.auth else {
        panic!("psk expected")
    };
    assert_eq!(psk.path(), f.dir.path().join("keys/mesh.psk"));

    let abs = f.dir.path().join("psk");
    let m = f
        .parse(&with_mesh("").replace("\"psk\"", &format!("{:?}", abs.display().to_string())))
        .unwrap();
    let Auth::Psk(psk) = &m.auth else {
        panic!("psk expected")
    };
    assert_eq!(psk.path(), abs);
}

#[test]
fn the_psk_is_never_printed() {
    let f = Fixture::new();
    let m = f.parse(&with_mesh("")).unwrap();
    let debug = format!(
        "{m:?} {:?}",
        Config::new(m.clone(), Some("b0"), &[]).unwrap()
    );
    assert!(!debug.contains(SECRET), "{debug}");
    assert!(debug.contains("<redacted>"), "{debug}");
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

// ---- auth = "pubkey" ---------------------------------------------------------------------------------------------

use ike::crypto::signature::PrivateKey;

/// Two hosts' keys, made once for all tests of this binary.
fn test_keys() -> &'static [PrivateKey; 2] {
    static KEYS: std::sync::OnceLock<[PrivateKey; 2]> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        [
            PrivateKey::generate(2048).unwrap(),
            PrivateKey::generate(2048).unwrap(),
        ]
    })
}

/// A pubkey mesh: b0's private key in `private.pem` (mode `mode`), both public keys under keys/.
fn pubkey_fixture(mode: u32) -> (Fixture, String) {
    let f = Fixture::new();
    let [b0, c0] = test_keys();
    std::fs::create_dir(f.dir.path().join("keys")).unwrap();
    f.write("private.pem", &b0.to_pkcs8_pem(), mode);
    f.write("keys/b0.pub.pem", &b0.public_key().to_pem(), 0o644);
    f.write("keys/c0.pub.pem", &c0.public_key().to_pem(), 0o644);
    let hosts = TWO_HOSTS
        .replace(
            "subnets = [\"198.19.1.0/24\"]",
            "subnets = [\"198.19.1.0/24\"]\nid = \"b0.example.net\"\npubkey = \"keys/b0.pub.pem\"",
        )
        .replace(
            "subnets = [\"198.19.2.0/24\"]",
            "subnets = [\"198.19.2.0/24\"]\nid = \"admin@c0.example.net\"\npubkey = \"keys/c0.pub.pem\"",
        );
    let text = format!("[mesh]\nauth = \"pubkey\"\nprivate_key = \"private.pem\"\n{hosts}");
    (f, text)
}

#[test]
fn pubkey_mesh_loads_keys_and_identities() {
    let (f, text) = pubkey_fixture(0o600);
    let m = f.parse(&text).unwrap();
    let Auth::PubKey(pk) = &m.auth else {
        panic!("pubkey expected")
    };
    let [b0, c0] = test_keys();
    assert_eq!(pk.private_key.key.public_key(), b0.public_key());
    assert_eq!(pk.public_keys["c0"].key, c0.public_key());
    assert_eq!(
        pk.public_keys["c0"].path,
        f.dir.path().join("keys/c0.pub.pem")
    );
    assert!(
        !format!("{m:?}").contains("BEGIN"),
        "no key material in Debug"
    );
    assert_eq!(m.hosts[0].id, Identity::Fqdn("b0.example.net".into()));
    assert_eq!(
        m.hosts[1].id,
        Identity::Rfc822("admin@c0.example.net".into())
    );
    assert_eq!(m.hosts[1].id.wire().0, 3);
    // As b0 the key matches; as c0 it is b0's key, which is refused naming both files.
    Config::new(m.clone(), Some("b0"), &[]).unwrap();
    let e = Config::new(m, Some("c0"), &[]).unwrap_err();
    assert!(matches!(*e.kind, ErrorKind::KeyMismatch { .. }), "{e}");
    assert!(
        e.to_string().contains("private.pem") && e.to_string().contains("c0.pub.pem"),
        "{e}"
    );
    // --private-key overrides the file's private_key.
    f.write("c0.pem", &c0.to_pkcs8_pem(), 0o400);
    let m =
        Mesh::parse_with_private_key(&text, &f.file(), Some(&f.dir.path().join("c0.pem"))).unwrap();
    Config::new(m, Some("c0"), &[]).unwrap();
}

#[test]
fn pubkey_key_file_errors_name_the_file() {
    // Readable by group: refused with the mode and the chmod to fix it.
    let (f, text) = pubkey_fixture(0o640);
    let e = f.err(&text);
    assert_eq!(e.key, "mesh.private_key");
    assert!(
        matches!(
            *e.kind,
            ErrorKind::Key(KeyFileError::Mode { mode: 0o640, .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("chmod 600"), "{e}");
    // Mode 0600 but owned by another user (nobody, uid 65534; chown needs root, as the tests do): refused with
    // the owner and the chown to fix it.
    crate::test_root::require_root(
        "config::tests::pubkey_key_file_errors_name_the_file",
        "it gives the private key file to uid 65534 (chown)",
    );
    let (f, text) = pubkey_fixture(0o600);
    let key = f.dir.path().join("private.pem");
    std::os::unix::fs::chown(&key, Some(65534), None)
        .expect("chown (the config tests run as root)");
    let e = f.err(&text);
    assert!(
        matches!(
            *e.kind,
            ErrorKind::Key(KeyFileError::Owner { uid: 65534, .. })
        ),
        "{e}"
    );
    assert!(e.to_string().contains("chown root:root"), "{e}");
    // Not PEM, a public key where the private one belongs, a truncated public key.
    let (f, text) = pubkey_fixture(0o600);
    f.write("private.pem", "not a key\n", 0o600);
    let e = f.err(&text);
    assert!(
        e.to_string().contains("private.pem: not a PEM or DER key"),
        "{e}"
    );
    f.write("private.pem", &test_keys()[0].public_key().to_pem(), 0o600);
    let e = f.err(&text);
    assert!(
        e.to_string()
            .contains("PEM block \"PUBLIC KEY\" is not PRIVATE KEY"),
        "{e}"
    );
    f.write("private.pem", &test_keys()[0].to_pkcs8_pem(), 0o600);
    let pem = test_keys()[1].public_key().to_pem();
    f.write(
        "keys/c0.pub.pem",
        &pem.replace("\n-----END", "AAAA\n-----END"),
        0o644,
    );
    let e = f.err(&text);
    assert_eq!(e.key, "host[1].pubkey");
    assert!(
        e.to_string()
            .contains("c0.pub.pem: not a usable RSA public key"),
        "{e}"
    );
    // The same public key for two hosts.
    f.write(
        "keys/c0.pub.pem",
        &test_keys()[0].public_key().to_pem(),
        0o644,
    );
    let e = f.err(&text);
    assert!(invalid(&e).0.contains("same public key as b0"), "{e}");
}

#[test]
fn identities_as_strongswan_writes_them() {
    for (text, want) in [
        ("198.18.0.1", Identity::Addr("198.18.0.1".parse().unwrap())),
        ("@b0.example.net", Identity::Fqdn("b0.example.net".into())),
        ("b0.example.net", Identity::Fqdn("b0.example.net".into())),
        (
            "root@b0.example.net",
            Identity::Rfc822("root@b0.example.net".into()),
        ),
    ] {
        assert_eq!(Identity::parse(text), Ok(want.clone()), "{text}");
        assert_eq!(want.to_string(), text.trim_start_matches('@'));
    }
    assert!(Identity::parse("root@").is_err());
    assert!(Identity::parse("a@b@c").is_err());
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

// ---- auth = "pubkey" with a CA: certificates -------------------------------------------------------------------

/// A file of ike's X.509 test data (made by OpenSSL, see ike/src/crypto/x509/testdata/make.sh).
fn x509(name: &str) -> String {
    let p = format!(
        "{}/../ike/src/crypto/x509/testdata/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// A certificate mesh as b0: b0 (198.18.0.1) has certificate "a" with its intermediate in one file, c0
/// (198.18.0.2) certificate "b"; the private key is a's.
fn cert_fixture() -> (Fixture, String) {
    let f = Fixture::new();
    f.write("ca.pem", &x509("ca.pem"), 0o644);
    f.write("b0.pem", &(x509("a.pem") + &x509("inter.pem")), 0o644);
    f.write("c0.pem", &x509("b.pem"), 0o644);
    f.write("other.pem", &x509("stranger.pem"), 0o644);
    f.write("private.pem", &x509("a.key"), 0o600);
    let hosts = TWO_HOSTS
        .replace(
            "subnets = [\"198.19.1.0/24\"]",
            "subnets = [\"198.19.1.0/24\"]\ncert = \"b0.pem\"",
        )
        .replace(
            "subnets = [\"198.19.2.0/24\"]",
            "subnets = [\"198.19.2.0/24\"]\ncert = \"c0.pem\"",
        );
    let text = format!(
        "[mesh]\nauth = \"pubkey\"\nprivate_key = \"private.pem\"\nca = \"ca.pem\"\n{hosts}"
    );
    (f, text)
}

fn key_file_error(e: &ConfigError) -> &KeyFileError {
    match &*e.kind {
        ErrorKind::Key(k) => k,
        other => panic!("expected a key file error, got {other:?} ({e})"),
    }
}

#[test]
fn cert_mesh_loads_chains_and_checks_this_hosts_key() {
    let (f, text) = cert_fixture();
    let m = f.parse(&text).unwrap();
    let Auth::Cert(c) = &m.auth else {
        panic!("certificates expected")
    };
    assert_eq!(c.certs["b0"].chain.len(), 2);
    assert_eq!(
        c.certs["c0"].cert().subject(),
        "C=CH, O=vmsecd test, CN=b.example.net"
    );
    assert!(
        !format!("{m:?}").contains("BEGIN"),
        "no key material in Debug"
    );
    // Nothing expires within 30 days of a day after the certificates were made; 10 days before the first
    // notAfter, every certificate does, each named once with its file.
    let now = c.certs["b0"].cert().not_after() - 99 * 365 * 86400;
    assert!(c.expiring(now, CERT_EXPIRY_WARNING).is_empty());
    let first = [&c.certs["b0"].chain[..], &c.certs["c0"].chain[..]]
        .concat()
        .iter()
        .map(|x| x.not_after())
        .min()
        .unwrap();
    let soon = c.expiring(first - 10 * 86400, CERT_EXPIRY_WARNING);
    let subjects: Vec<&str> = soon.iter().map(|(s, _, _)| s.as_str()).collect();
    for want in ["Test Intermediate", "a.example.net", "b.example.net"] {
        assert!(
            subjects.iter().any(|s| s.ends_with(want)),
            "{want}: {soon:?}"
        );
    }
    assert_eq!(
        subjects
            .iter()
            .filter(|s| s.contains("Intermediate"))
            .count(),
        1
    );
    Config::new(m.clone(), Some("b0"), &[]).unwrap();
    // As c0, the private key is b0's.
    let e = Config::new(m, Some("c0"), &[]).unwrap_err();
    assert!(matches!(*e.kind, ErrorKind::CertKeyMismatch { .. }), "{e}");
    assert_eq!(e.key, "host[1].cert");
    assert!(e.to_string().contains("c0.pem"), "{e}");

    // A peer's certificate is optional (it sends its own); this host's is not.
    let no_c0 = text.replace("\ncert = \"c0.pem\"", "");
    let m = f.parse(&no_c0).unwrap();
    Config::new(m.clone(), Some("b0"), &[]).unwrap();
    let e = Config::new(m, Some("c0"), &[]).unwrap_err();
    assert!(matches!(*e.kind, ErrorKind::Missing { .. }), "{e}");
    assert_eq!(e.key, "host[1].cert");
}

#[test]
fn cert_errors_name_the_host_and_the_reason() {
    let (f, text) = cert_fixture();
    // b0's certificate given to c0: it does not name c0's address.
    let e = f.err(&text.replace("cert = \"c0.pem\"", "cert = \"b0.pem\""));
    assert_eq!(e.key, "host[1].cert");
    assert!(
        e.to_string()
            .contains("identity 198.18.0.2 is not in the certificate of C=CH, O=vmsecd test, CN=a.example.net"),
        "{e}"
    );
    // Issued by another CA.
    let e = f.err(&text.replace("cert = \"c0.pem\"", "cert = \"other.pem\""));
    assert!(
        matches!(key_file_error(&e), KeyFileError::Cert { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("which is not a trusted CA"), "{e}");
    // A certificate file that is not there: the hint is about certificates, not keys.
    let e = f.err(&text.replace("cert = \"c0.pem\"", "cert = \"missing.pem\""));
    assert!(
        matches!(key_file_error(&e), KeyFileError::UnreadableCert { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("issued by the mesh's CA"), "{e}");
    // b0's file without its intermediate.
    f.write("b0.pem", &x509("a.pem"), 0o644);
    let e = f.err(&text);
    assert_eq!(e.key, "host[0].cert");
    assert!(e.to_string().contains("CN=Test Intermediate"), "{e}");
    // The CA file must hold a CA.
    f.write("ca.pem", &x509("b.pem"), 0o644);
    let e = f.err(&text);
    assert_eq!(e.key, "mesh.ca");
    assert!(e.to_string().contains("not a CA"), "{e}");
}

#[test]
fn cert_keys_only_with_their_method() {
    let (f, text) = cert_fixture();
    // pubkey and ca together.
    let e = f.err(&text.replace("cert = \"c0.pem\"", "pubkey = \"c0.pem\""));
    assert_eq!(e.key, "host[1].pubkey");
    // cert without ca.
    let e = f.err(&text.replace("ca = \"ca.pem\"\n", ""));
    assert_eq!(e.key, "host[0].cert");
    assert!(invalid(&e).1.contains("mesh.ca"), "{e}");
    // psk with ca.
    let e = f.err(&format!(
        "[mesh]\npsk_file = \"psk\"\nca = \"ca.pem\"\n{TWO_HOSTS}"
    ));
    assert_eq!(e.key, "mesh.ca");
}

/// b0 lists its subnets, c0 takes them from libvirt; `mesh` holds extra `[mesh]` keys, `c0` extra keys of c0.
fn libvirt_mesh(mesh: &str, c0: &str) -> String {
    format!(
        "[mesh]\npsk_file = \"psk\"\n{mesh}\n\n[[host]]\nname = \"b0\"\naddress = \"198.18.0.1\"\nsubnets = \
         [\"198.19.1.0/24\"]\n\n[[host]]\nname = \"c0\"\naddress = \"198.18.0.2\"\nsubnets = \"libvirt\"\n{c0}\n"
    )
}

fn range_of(m: &Mesh, host: &str) -> Vec<String> {
    m.host(host)
        .unwrap()
        .libvirt
        .as_ref()
        .unwrap()
        .range
        .iter()
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn subnets_libvirt_with_libvirt_range() {
    let f = Fixture::new();
    let m = f
        .parse(&libvirt_mesh(
            "libvirt_range = [\"198.19.0.0/16\", \"198.20.0.0/24\"]",
            "libvirt_networks = [\"default\", \"lab\"]",
        ))
        .unwrap();
    // The mesh-wide range of the one libvirt host becomes its own.
    assert_eq!(range_of(&m, "c0"), ["198.19.0.0/16", "198.20.0.0/24"]);
    let c0 = m.host("c0").unwrap();
    assert!(c0.subnets.is_empty());
    assert_eq!(
        c0.libvirt.as_ref().unwrap().networks,
        vec!["default".to_owned(), "lab".to_owned()]
    );
    assert_eq!(m.host("b0").unwrap().libvirt, None);
    // Without libvirt_networks: every network.
    let m = f
        .parse(&libvirt_mesh("libvirt_range = [\"198.19.0.0/16\"]", ""))
        .unwrap();
    assert_eq!(
        m.host("c0").unwrap().libvirt.as_ref().unwrap().networks,
        Vec::<String>::new()
    );
    // Seen from b0, c0's remote selectors are the range; b0's own are its subnets.
    let c = Config::new(m, Some("b0"), &[]).unwrap();
    let t = c.tunnels();
    assert_eq!(t[0].remote_selectors()[0].to_string(), "198.19.0.0/16");
    assert!(t[0].remote_subnets().is_empty());
    // The host's own key does the same.
    let m = f
        .parse(&libvirt_mesh("", "libvirt_range = [\"198.19.2.0/24\"]"))
        .unwrap();
    assert_eq!(range_of(&m, "c0"), ["198.19.2.0/24"]);
}

/// b0 lists its subnets; c0, d0 and e0 take theirs from libvirt, each with `ranges[i]` (a whole line) in its
/// `[[host]]`; `mesh` holds extra `[mesh]` keys.
fn three_libvirt(mesh: &str, ranges: [&str; 3]) -> String {
    let mut t = format!(
        "[mesh]\npsk_file = \"psk\"\n{mesh}\n\n[[host]]\nname = \"b0\"\naddress = \"198.18.0.1\"\nsubnets = \
         [\"198.19.1.0/24\"]\n"
    );
    for (i, (name, r)) in ["c0", "d0", "e0"].iter().zip(ranges).enumerate() {
        t.push_str(&format!(
            "\n[[host]]\nname = \"{name}\"\naddress = \"198.18.0.{}\"\nsubnets = \"libvirt\"\n{r}\n",
            i + 2
        ));
    }
    t
}

#[test]
fn each_libvirt_host_is_confined_to_its_own_range() {
    let f = Fixture::new();
    let own = [
        "libvirt_range = [\"198.19.16.0/20\"]",
        "libvirt_range = [\"198.19.32.0/20\", \"fd00:19:32::/48\"]",
        "libvirt_range = [\"198.19.48.0/20\"]",
    ];
    let m = f.parse(&three_libvirt("", own)).unwrap();
    assert_eq!(range_of(&m, "c0"), ["198.19.16.0/20"]);
    assert_eq!(range_of(&m, "d0"), ["198.19.32.0/20", "fd00:19:32::/48"]);
    assert_eq!(range_of(&m, "e0"), ["198.19.48.0/20"]);
    // Each peer is offered and accepted only within its own range.
    let c = Config::new(m, Some("b0"), &[]).unwrap();
    let sel: Vec<(String, Vec<String>)> = c
        .tunnels()
        .iter()
        .map(|t| {
            (
                t.peer.name.clone(),
                t.remote_selectors().iter().map(|p| p.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(
        sel,
        [
            ("c0".to_owned(), vec!["198.19.16.0/20".to_owned()]),
            (
                "d0".to_owned(),
                vec!["198.19.32.0/20".to_owned(), "fd00:19:32::/48".to_owned()]
            ),
            ("e0".to_owned(), vec!["198.19.48.0/20".to_owned()]),
        ]
    );

    // Overlapping ranges of two hosts: refused at load, naming both hosts.
    let e = f.err(&three_libvirt(
        "",
        [own[0], own[1], "libvirt_range = [\"198.19.0.0/16\"]"],
    ));
    assert_eq!(e.key, "host[3].libvirt_range");
    let (problem, allowed) = invalid(&e);
    assert_eq!(
        problem,
        "e0's libvirt_range 198.19.0.0/16 overlaps c0's libvirt_range 198.19.16.0/20: either host could claim \
         subnets of the other"
    );
    assert!(allowed.contains("not overlapping"), "{allowed}");

    // One mesh-wide range for several libvirt hosts: each could take the others' subnets.
    let e = f.err(&three_libvirt(
        "libvirt_range = [\"198.19.0.0/16\"]",
        ["", "", ""],
    ));
    assert_eq!(e.key, "mesh.libvirt_range");
    let (problem, allowed) = invalid(&e);
    assert!(
        problem.contains("one range for 3 hosts with subnets = \"libvirt\" (c0, d0, e0)"),
        "{problem}"
    );
    assert!(
        allowed.contains("only when exactly one host") && allowed.contains("its own libvirt_range"),
        "{allowed}"
    );
    // The same with ranges of their own as well.
    let e = f.err(&three_libvirt("libvirt_range = [\"198.19.0.0/16\"]", own));
    assert_eq!(e.key, "mesh.libvirt_range");

    // A libvirt host with no range while several exist: its own key is what is missing.
    let e = f.err(&three_libvirt("", [own[0], "", own[2]]));
    assert_eq!(e.key, "host[2].libvirt_range");
    let ErrorKind::Missing { what } = &*e.kind else {
        panic!("expected Missing, got {e}");
    };
    assert!(
        what.contains("host d0 has subnets = \"libvirt\"")
            && what.contains("only when exactly one host has subnets = \"libvirt\""),
        "{what}"
    );

    // Both the mesh's and the one libvirt host's own.
    let e = f.err(&libvirt_mesh(
        "libvirt_range = [\"198.19.0.0/16\"]",
        "libvirt_range = [\"198.19.2.0/24\"]",
    ));
    assert_eq!(e.key, "mesh.libvirt_range");
    assert!(invalid(&e).0.contains("has its own libvirt_range"), "{e}");

    // On a host that lists its subnets.
    let e = f.err(&with_hosts(
        "[[host]]\nname = \"b0\"\naddress = \"198.18.0.1\"\nsubnets = [\"198.19.1.0/24\"]\nlibvirt_range = [\"198.19.0.0/16\"]\n\
         [[host]]\nname = \"c0\"\naddress = \"198.18.0.2\"\nsubnets = [\"198.19.2.0/24\"]\n",
    ));
    assert_eq!(e.key, "host[0].libvirt_range");
    assert_eq!(invalid(&e).0, "set, but this host lists its subnets");

    // A host's own range is checked like the mesh's: no host address inside.
    let e = f.err(&three_libvirt(
        "",
        [own[0], own[1], "libvirt_range = [\"198.18.0.0/24\"]"],
    ));
    assert_eq!(e.key, "host[3].libvirt_range[0]");
    assert!(invalid(&e).0.contains("holds b0's address"), "{e}");
}

#[test]
fn psk_meshes_of_three_or_more_warn_that_members_can_impersonate_each_other() {
    let f = Fixture::new();
    assert_eq!(f.parse(&with_mesh("")).unwrap().trust_warning(), None);
    let three = format!(
        "{}\n[[host]]\nname = \"d0\"\naddress = \"198.18.0.3\"\nsubnets = [\"198.19.3.0/24\"]\n",
        with_mesh("")
    );
    let w = f.parse(&three).unwrap().trust_warning().expect("a warning");
    assert!(
        w.contains("all 3 hosts share one key")
            && w.contains("can authenticate as any other host and claim its subnets")
            && w.contains("auth = \"pubkey\""),
        "{w}"
    );
}

#[test]
fn subnets_libvirt_needs_libvirt_range() {
    let f = Fixture::new();
    let e = f.err(&libvirt_mesh("", ""));
    assert_eq!(e.key, "host[1].libvirt_range");
    let ErrorKind::Missing { what } = &*e.kind else {
        panic!("expected Missing, got {e}");
    };
    assert!(
        what.contains("host c0 has subnets = \"libvirt\"")
            && what.contains("libvirt_range = [\"192.168.122.0/24\"] in its [[host]]"),
        "{what}"
    );
    assert!(
        e.to_string().starts_with(&format!(
            "{}:13:11: host[1].libvirt_range: missing: ",
            f.file().display()
        )),
        "{e}"
    );

    // Set although no host uses it.
    let e = f.err(&with_mesh("libvirt_range = [\"198.19.0.0/16\"]"));
    assert_eq!(
        (e.key.as_str(), e.location),
        ("mesh.libvirt_range", Some((3, 17)))
    );
    let (problem, allowed) = invalid(&e);
    assert!(
        problem.contains("no host has subnets = \"libvirt\""),
        "{problem}"
    );
    assert!(allowed.contains("remove it"), "{allowed}");
}

#[test]
fn libvirt_range_values() {
    let f = Fixture::new();
    let e = f.err(&libvirt_mesh("libvirt_range = []", ""));
    assert_eq!(e.key, "mesh.libvirt_range");
    let (problem, allowed) = invalid(&e);
    assert!(
        problem.contains("empty") && allowed.contains("CIDR"),
        "{problem} / {allowed}"
    );

    let e = f.err(&libvirt_mesh(
        "libvirt_range = [\"198.19.0.0/16\", \"198.19.0.5/16\"]",
        "",
    ));
    assert_eq!(e.key, "mesh.libvirt_range[1]");
    assert!(
        matches!(
            *e.kind,
            ErrorKind::Prefix(crate::prefix::PrefixError::HostBits { .. })
        ),
        "{e}"
    );

    let e = f.err(&libvirt_mesh(
        "libvirt_range = [\"198.19.0.0/16\", \"198.19.3.0/24\"]",
        "",
    ));
    assert_eq!(e.key, "mesh.libvirt_range[1]");
    assert_eq!(e.location, Some((3, 35)));
    let (problem, _) = invalid(&e);
    assert_eq!(
        problem,
        "198.19.3.0/24 overlaps 198.19.0.0/16, listed before it"
    );

    let e = f.err(&libvirt_mesh("libvirt_range = [\"198.18.0.0/15\"]", ""));
    assert_eq!(e.key, "mesh.libvirt_range[0]");
    let (problem, allowed) = invalid(&e);
    assert!(
        problem.contains("holds b0's address 198.18.0.1"),
        "{problem}"
    );
    assert!(allowed.contains("no host's underlay address"), "{allowed}");

    let e = f.err(&libvirt_mesh("libvirt_range = \"198.19.0.0/16\"", ""));
    assert_eq!(e.key, "");
    assert!(matches!(*e.kind, ErrorKind::Syntax(_)), "{e}");
}

#[test]
fn subnets_word_and_libvirt_networks_errors() {
    let f = Fixture::new();
    let range = "libvirt_range = [\"198.19.0.0/16\"]";
    let e = f.err(&libvirt_mesh(range, "").replace("\"libvirt\"", "\"virsh\""));
    assert_eq!(e.key, "host[1].subnets");
    assert_eq!(e.location, Some((13, 11)));
    let (problem, allowed) = invalid(&e);
    assert_eq!(problem, "\"virsh\" is not a list of subnets");
    assert!(
        allowed.contains("CIDR") && allowed.contains("\"libvirt\""),
        "{allowed}"
    );

    let e = f.err(&libvirt_mesh(range, "libvirt_networks = []"));
    assert_eq!(e.key, "host[1].libvirt_networks");
    let (problem, allowed) = invalid(&e);
    assert!(
        problem.contains("empty") && allowed.contains("virsh net-list"),
        "{problem} / {allowed}"
    );

    let e = f.err(&libvirt_mesh(
        range,
        "libvirt_networks = [\"default\", \"default\"]",
    ));
    assert_eq!(e.key, "host[1].libvirt_networks[1]");
    assert_eq!(invalid(&e).0, "\"default\" is listed twice");

    let e = f.err(&libvirt_mesh(range, "libvirt_networks = [\"\"]"));
    assert_eq!(e.key, "host[1].libvirt_networks[0]");

    // libvirt_networks with a list of subnets.
    let e = f.err(&with_hosts(
        "[[host]]\nname = \"b0\"\naddress = \"198.18.0.1\"\nsubnets = [\"198.19.1.0/24\"]\nlibvirt_networks = [\"default\"]\n\
         [[host]]\nname = \"c0\"\naddress = \"198.18.0.2\"\nsubnets = [\"198.19.2.0/24\"]\n",
    ));
    assert_eq!(e.key, "host[0].libvirt_networks");
    let (problem, allowed) = invalid(&e);
    assert_eq!(problem, "set, but this host lists its subnets");
    assert!(allowed.contains("subnets = \"libvirt\""), "{allowed}");

    // Neither a list nor a string.
    let e = f.err(&libvirt_mesh(range, "").replace("\"libvirt\"", "7"));
    assert!(
        matches!(*e.kind, ErrorKind::Syntax(ref m) if m.contains("or \"libvirt\"")),
        "{e}"
    );
    // The missing-subnets message mentions "libvirt" too.
    let e = f.err(&with_hosts(
        "[[host]]\nname = \"b0\"\naddress = \"198.18.0.1\"\n[[host]]\nname = \"c0\"\naddress = \"198.18.0.2\"\nsubnets = [\"198.19.2.0/24\"]\n",
    ));
    assert_eq!(e.key, "host[0].subnets");
    assert!(e.to_string().contains("subnets = \"libvirt\""), "{e}");
}

/// A libvirt network definition as libvirt writes it.
fn net_xml(name: &str, ip: &str) -> String {
    format!(
        "<network>\n  <name>{name}</name>\n  <forward mode='nat'/>\n  <bridge name='virbr-{name}'/>\n  \
         <ip address='{ip}' netmask='255.255.255.0'>\n  </ip>\n</network>\n"
    )
}

#[test]
fn resolve_libvirt_reads_this_hosts_networks() {
    let f = Fixture::new();
    let run = f.dir.path().join("run");
    let etc = f.dir.path().join("etc");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::create_dir_all(&etc).unwrap();
    let dirs = [run.as_path(), etc.as_path()];
    let load = |c0: &str| {
        Config::new(
            f.parse(&libvirt_mesh("libvirt_range = [\"198.19.0.0/16\"]", c0))
                .unwrap(),
            Some("c0"),
            &[],
        )
        .unwrap()
    };

    // No network at all: the error says where it looked and what to do.
    let e = load("").resolve_libvirt(&dirs).unwrap_err();
    assert_eq!(e.key, "host[1].subnets");
    let text = e.to_string();
    assert!(
        text.contains("c0 has subnets = \"libvirt\", but no libvirt network with an IPv4 address was found in")
            && text.contains(&run.display().to_string())
            && text.contains("virsh net-define"),
        "{text}"
    );

    // Every network with an IPv4 address: running ones first, persistent ones too; IPv6 and address-less ones
    // are not taken.
    std::fs::write(run.join("default.xml"), net_xml("default", "198.19.3.1")).unwrap();
    std::fs::write(etc.join("lab.xml"), net_xml("lab", "198.19.4.1")).unwrap();
    std::fs::write(
        etc.join("v6.xml"),
        "<network><name>v6</name><ip family='ipv6' address='2001:db8::1' prefix='64'/></network>",
    )
    .unwrap();
    std::fs::write(etc.join("none.xml"), "<network><name>none</name></network>").unwrap();
    let mut c = load("");
    let found = c.resolve_libvirt(&dirs).unwrap().unwrap();
    assert_eq!(
        c.local()
            .subnets
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        ["198.19.3.0/24", "198.19.4.0/24"]
    );
    assert_eq!(
        found
            .networks
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["default", "lab"]
    );
    assert_eq!(c.tunnels()[0].local_subnets().len(), 2);

    // By name.
    let mut c = load("libvirt_networks = [\"lab\"]");
    c.resolve_libvirt(&dirs).unwrap();
    assert_eq!(c.local().subnets[0].to_string(), "198.19.4.0/24");
    assert_eq!(c.local().subnets.len(), 1);
    let e = load("libvirt_networks = [\"lab\", \"prod\"]")
        .resolve_libvirt(&dirs)
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("but prod is not defined on this machine")
            && text.contains("networks found in")
            && text.contains("default, lab, none, v6"),
        "{text}"
    );
    let e = load("libvirt_networks = [\"v6\"]")
        .resolve_libvirt(&dirs)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no libvirt network with an IPv4 address was found in"),
        "{e}"
    );
    assert!(e.to_string().contains(" among v6"), "{e}");

    // A host that lists its subnets is left alone.
    let mut c = Config::new(
        f.parse(&libvirt_mesh("libvirt_range = [\"198.19.0.0/16\"]", ""))
            .unwrap(),
        Some("b0"),
        &[],
    )
    .unwrap();
    assert!(c.resolve_libvirt(&dirs).unwrap().is_none());
    assert_eq!(c.local().subnets[0].to_string(), "198.19.1.0/24");

    // Outside the range, or overlapping another host's subnets: say which network to renumber.
    std::fs::write(etc.join("lab.xml"), net_xml("lab", "10.1.2.1")).unwrap();
    let e = load("").resolve_libvirt(&dirs).unwrap_err();
    assert!(
        e.to_string()
            .contains("libvirt network lab's subnet 10.1.2.0/24 lies outside c0's libvirt_range (198.19.0.0/16)"),
        "{e}"
    );
    std::fs::write(etc.join("lab.xml"), net_xml("lab", "198.19.1.1")).unwrap();
    let e = load("").resolve_libvirt(&dirs).unwrap_err();
    assert!(
        e.to_string().contains(
            "libvirt network lab's subnet 198.19.1.0/24 on c0 overlaps b0's subnet 198.19.1.0/24"
        ),
        "{e}"
    );
    assert!(e.to_string().contains("virsh net-edit lab"), "{e}");
}
