//! The README's main job, run as a test: three hypervisors in namespaces, a vmsecd on each, every VM pings
//! every other VM over IPv4 and IPv6, and the underlay carries no packet with a VM address in clear (`vmsecd
//! demo` exits non-zero otherwise). It runs as a new user's machine without iputils-ping or tcpdump would: its
//! PATH holds only bash, coreutils, grep, sed and iproute2's `ip`.

use std::process::Command;

#[test]
fn demo_mesh_of_three_hypervisors() {
    vmsecd_e2e::netns::require_root_and_ip();
    // A PATH of links to what the demo may use and nothing else (no ping, tcpdump, awk, bc, python3).
    let bin_dir = std::env::temp_dir().join(format!("vt-demo-path-{}", std::process::id()));
    std::fs::create_dir_all(&bin_dir).expect("PATH dir");
    let coreutils = Command::new("dpkg")
        .args(["-L", "coreutils"])
        .output()
        .expect("dpkg -L coreutils");
    let mut tools: Vec<String> = String::from_utf8_lossy(&coreutils.stdout)
        .lines()
        .filter(|l| l.starts_with("/usr/bin/") || l.starts_with("/bin/"))
        .map(str::to_owned)
        .collect();
    for t in ["bash", "sh", "ip", "grep", "sed"] {
        let found = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
            .iter()
            .map(|d| std::path::Path::new(d).join(t))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{t} is missing"));
        tools.push(found.display().to_string());
    }
    for t in &tools {
        let p = std::path::Path::new(t);
        if p.exists() {
            let _ = std::os::unix::fs::symlink(p, bin_dir.join(p.file_name().expect("name")));
        }
    }
    for absent in ["ping", "tcpdump", "awk", "python3", "bc"] {
        assert!(
            !bin_dir.join(absent).exists(),
            "{absent} in the demo's PATH"
        );
    }
    // `vmsecd demo`, exactly as the README's first command runs it (the script is built into the binary).
    let text = vmsecd_e2e::demo::run(&[], Some(&bin_dir));
    let _ = std::fs::remove_dir_all(&bin_dir);
    vmsecd_e2e::demo::check_mesh_and_cleanup(&text);
}
