//! The README's main job, run as a test: three hypervisors in namespaces, a vmsecd on each, every VM pings
//! every other VM, and the underlay carries no packet with a VM address in clear (`vmsecd demo` exits non-zero
//! otherwise).

use std::process::Command;

#[test]
fn demo_mesh_of_three_hypervisors() {
    vmsecd_e2e::netns::require_root_and_ip();
    // `vmsecd demo`, exactly as the README's first command runs it (the script is built into the binary).
    let out = Command::new(vmsecd_e2e::vmsecd::vmsecd_bin())
        .arg("demo")
        .output()
        .expect("run vmsecd demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "demo failed:\n{text}");
    assert_eq!(
        text.matches(" ok, avg RTT").count(),
        6,
        "every VM reaches every other VM:\n{text}"
    );
    assert!(
        text.contains("packets with a VM address in clear on the underlay: 0"),
        "{text}"
    );
    assert!(text.contains("ESP"), "the underlay carried ESP:\n{text}");
    // Nothing the demo started may outlive it: no process still has its config folder on its command line.
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
    let _ = std::fs::remove_dir_all(&dir);
}
