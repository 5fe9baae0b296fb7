//! The mesh file parser (tunnel/src/config): TOML, schema, validation of every key, hosts, subnets, identities
//! and proposals. The file is written by an administrator, not a peer, but `vmsecd check` is how they find
//! their mistakes: no text may panic it, and its verdict must not depend on anything but the text.
//!
//! Input: UTF-8 text, parsed as `mesh.toml` in a fixed folder holding a valid pre-shared key file `psk` (mode
//! 0600). Texts that could make the parser open device or proc files (`/dev`, `/proc`, `/sys`, `/run`, or any
//! backslash, which TOML escapes could use to spell them) are skipped: reading a FIFO would block the fuzzer.
//!
//! Checks: no panic; parsing twice gives the same verdict (same error text, or the same hosts); an accepted
//! mesh has at least two hosts (one with `[etcd]`) with distinct names and addresses, every host is found by `local_host` under its
//! own name and has all the others as peers; every error renders as text naming the file.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vmsecd::config::Mesh;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("vmsecd-fuzz-mesh-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fixture folder");
        let psk = d.join("psk");
        std::fs::write(&psk, "s3cr3t-psk-0123456789\n").expect("psk");
        std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if ["/dev", "/proc", "/sys", "/run", "\\"]
        .iter()
        .any(|s| text.contains(s))
    {
        return;
    }
    let file = dir().join("mesh.toml");
    let a = Mesh::parse(text, &file);
    let b = Mesh::parse(text, &file);
    match (&a, &b) {
        (Ok(m), Ok(n)) => {
            assert!(m.hosts.len() >= if m.etcd.is_some() { 1 } else { 2 });
            assert_eq!(
                format!("{:?}", m.hosts),
                format!("{:?}", n.hosts),
                "verdict not deterministic"
            );
            for (i, h) in m.hosts.iter().enumerate() {
                for g in &m.hosts[i + 1..] {
                    assert_ne!(h.name, g.name, "duplicate host name accepted");
                    assert_ne!(h.address, g.address, "duplicate address accepted");
                }
                let local = m
                    .local_host(Some(h.name.as_str()), &[])
                    .expect("host found by its name");
                assert_eq!(local.name, h.name);
                assert_eq!(m.peers(local).count(), m.hosts.len() - 1);
            }
        }
        (Err(e), Err(f)) => {
            let (s, t) = (e.to_string(), f.to_string());
            assert_eq!(s, t, "error not deterministic");
            assert!(s.contains("mesh.toml"), "error does not name the file: {s}");
        }
        _ => panic!(
            "one parse accepted, the other refused: {:?} / {:?}",
            a.is_ok(),
            b.is_ok()
        ),
    }
});
