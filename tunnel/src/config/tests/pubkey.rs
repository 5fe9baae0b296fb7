//! Tests of `auth = "pubkey"`: key files, identities as strongSwan writes them, and certificates with a CA.

use ike::crypto::signature::PrivateKey;

use super::*;

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
        "config::tests::pubkey::pubkey_key_file_errors_name_the_file",
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

/// The typed errors of identities, DNs and control socket addresses read as the strings they replaced.
#[test]
fn identity_and_socket_errors_read_as_before() {
    let text = |r: Result<Identity, IdentityError>| r.unwrap_err().to_string();
    assert_eq!(
        text(Identity::parse("@#abc")),
        "key ID \"@#abc\" needs an even number of hex digits after @#"
    );
    assert_eq!(
        text(Identity::parse("root@")),
        "\"root@\" is not a valid user@fqdn (RFC 822) identity"
    );
    assert_eq!(
        text(Identity::parse("a b")),
        "\"a b\" is neither an IP address nor a DNS name"
    );
    let unknown = text(Identity::parse("CN=gw, XX=1"));
    assert!(
        unknown.starts_with("unknown attribute \"XX\" in DN \"CN=gw, XX=1\" (known: C, "),
        "{unknown}"
    );
    assert_eq!(
        text(Identity::parse("CN=")),
        "empty value for CN in DN \"CN=\""
    );
    let socket = |t: &str| {
        ControlSocket::parse(t, Path::new(""))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        socket("@"),
        "abstract socket name of 1 to 107 bytes after the @"
    );
    assert_eq!(socket(""), "a path, or @NAME for an abstract socket");
    let long = "x".repeat(108);
    assert_eq!(
        socket(&long),
        format!("a socket path of at most 107 bytes (got {long})")
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
