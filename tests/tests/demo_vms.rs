//! `vmsecd demo --vms`, as the README runs it: the demo mesh of three hypervisors with a real QEMU guest (TCG,
//! Debian's kernel) on each hypervisor's bridge instead of a VM namespace. Every VM pings every other VM over IPv4
//! and IPv6 with vmsecd's own probe run inside the guests, the underlay carries only ESP, the guests run their own
//! kernel (not the host's), and nothing the demo made survives it: no QEMU, no daemon, no namespace (the taps
//! were in them). Holds the guest lock: three guests at once are enough for this machine.

use std::time::Instant;

use vmsecd_e2e::{demo, guest};

#[test]
fn demo_with_real_vms() {
    vmsecd_e2e::netns::require_root_and_ip();
    let _lock = guest::lock();
    let t = Instant::now();
    let text = demo::run(&["--vms"], None);
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
            l.contains("-vm up ") && !l.contains(&format!("kernel {},", host_kernel.trim())),
            "a guest with its own kernel: {l}\n{text}"
        );
        eprintln!("[demo_vms] {}", l.trim());
    }
    demo::check_mesh_and_cleanup(&text);
}
