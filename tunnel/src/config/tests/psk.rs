//! Tests of `auth = "psk"`: the key file (missing, unreadable, too short or long, mode, paths), never printed.

use super::*;

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
