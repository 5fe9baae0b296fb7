//! `vmsecd demo --vms`, as the README runs it: the demo mesh of three hypervisors with a real QEMU guest (TCG,
//! Debian's kernel) on each hypervisor's bridge instead of a VM namespace. Every VM pings every other VM over IPv4
//! and IPv6 with vmsecd's own probe run inside the guests, the underlay carries only ESP, the guests run their own
//! kernel (not the host's), and nothing the demo made survives it: no QEMU, no daemon, no namespace (the taps
//! were in them). Holds the guest lock: three guests at once are enough for this machine.

use std::process::Command;
use std::time::Instant;

use vmsecd_e2e::guest;

#[test]
fn demo_with_real_vms() {
    vmsecd_e2e::netns::require_root_and_ip();
    let _lock = guest::lock();
    let t = Instant::now();
    let out = Command::new(vmsecd_e2e::vmsecd::vmsecd_bin())
        .args(["demo", "--vms"])
        .output()
        .expect("run vmsecd demo --vms");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "demo --vms failed:\n{text}");
    eprintln!(
        "[demo_vms] demo --vms ran in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // Real guests: each booted its own kernel, which is not the host's.
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    let vms: Vec<&str> = text.lines().filter(|l| l.contains("  VM of ")).collect();
    assert_eq!(vms.len(), 3, "three VMs booted:\n{text}");
    for l in &vms {
        assert!(
            l.contains("-vm up ") && !l.contains(&format!("kernel {} ", host_kernel.trim())),
            "a guest with its own kernel: {l}\n{text}"
        );
        eprintln!("[demo_vms] {}", l.trim());
    }
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

    // Nothing left: no process has the demo's folder on its command line (QEMU's console and agent paths are
    // in it), and no namespace of its prefix remains.
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
            l.split("namespaces ")
                .nth(1)
                .and_then(|r| r.split('*').next())
        })
        .expect("the demo names its namespaces")
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
