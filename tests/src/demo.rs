//! `vmsecd demo` run as a test (tests/demo_mesh.rs, tests/demo_vms.rs): the demo's own command, and the checks
//! every variant of it must pass.

use std::process::Command;

/// Runs `vmsecd demo ARGS` (the built-in script, as the README's first command runs it), with `path` as PATH
/// when given; returns its standard output and error, panicking with them if it failed.
pub fn run(args: &[&str], path: Option<&std::path::Path>) -> String {
    let mut cmd = Command::new(crate::vmsecd::vmsecd_bin());
    cmd.arg("demo").args(args);
    if let Some(p) = path {
        cmd.env("PATH", p);
    }
    let out = cmd.output().expect("run vmsecd demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "vmsecd demo {args:?} failed:\n{text}");
    text
}

/// What the demo printed proves the mesh: every VM reached every other VM over IPv4 and IPv6 (12 pings), the
/// underlay carried ESP and no packet with a VM address in clear. And nothing it started outlived it: no
/// process has its folder on its command line (daemons, QEMU's console and agent paths), no namespace of its
/// prefix remains (the taps and veths were in them). Removes the folder.
pub fn check_mesh_and_cleanup(text: &str) {
    assert_eq!(
        text.matches(" ok, avg RTT").count(),
        12,
        "every VM reaches every other VM, IPv4 and IPv6:\n{text}"
    );
    assert!(
        text.contains("packets with a VM address in clear on the underlay: 0"),
        "{text}"
    );
    assert!(text.contains("ESP"), "the underlay carried ESP:\n{text}");
    let dir = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("the mesh file is ")
                .and_then(|r| r.split("/mesh.toml").next())
        })
        .expect("the demo names its folder")
        .to_owned();
    let left = Command::new("pgrep")
        .args(["-f", &dir])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "processes left behind: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    let prefix = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("demo cleaned up (")
                .and_then(|r| r.split("namespaces ").nth(1))
                .and_then(|r| r.split('*').next())
        })
        .unwrap_or_else(|| panic!("the demo names its namespaces when it cleans up:\n{text}"))
        .to_owned();
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.lines().any(|l| l.starts_with(&prefix)),
        "namespaces {prefix}* left behind:\n{netns}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
