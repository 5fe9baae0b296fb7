//! QEMU's command line for a guest of [`crate::image`]: direct kernel boot, serial console to a file, the host's
//! root read-only and the agent share over virtio-9p. The caller adds the NICs (`-netdev tap,...`), which differ
//! (a descriptor per tap in the tests, a tap by name in the demo), and where QEMU runs (its namespace).

use std::path::Path;
use std::process::Command;

use crate::image::Image;

/// The kernel command line: serial console, no reboot on panic, classic `eth0` names.
pub const KERNEL_CMDLINE: &str =
    "console=ttyS0 panic=-1 loglevel=4 net.ifnames=0 random.trust_cpu=on";

/// Adds to `cmd` (a `qemu-system-x86_64` command) the arguments that boot `img` with `accel` (`kvm` or `tcg`),
/// `mem_mb` of memory and one CPU, its console in `console` and its agent share in `agent`.
pub fn boot_args(
    cmd: &mut Command,
    img: &Image,
    accel: &str,
    mem_mb: u32,
    console: &Path,
    agent: &Path,
) {
    match accel {
        "kvm" => cmd.args(["-accel", "kvm", "-cpu", "host"]),
        _ => cmd.args(["-accel", "tcg", "-cpu", "max"]),
    };
    cmd.args(["-m", &mem_mb.to_string(), "-smp", "1"])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&img.vmlinux)
        .arg("-initrd")
        .arg(&img.initrd)
        .args(["-append", KERNEL_CMDLINE])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .args([
            "-fsdev",
            "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        ])
        .args(["-device", "virtio-9p-pci,fsdev=root,mount_tag=hostroot"])
        .arg("-fsdev")
        .arg(format!(
            "local,id=agent,path={},security_model=none",
            agent.display()
        ))
        .args(["-device", "virtio-9p-pci,fsdev=agent,mount_tag=agent"]);
}

/// A virtio NIC on netdev `id` with MAC `52:54:00:{tag}:{b}:{index}` (QEMU's prefix; the same at every boot of
/// the same guest, so that peers' neighbour entries stay right across a reboot).
pub fn nic_device(id: &str, tag: u8, b: u8, index: u8) -> String {
    format!("virtio-net-pci,netdev={id},mac=52:54:00:{tag:02x}:{b:02x}:{index:02x}")
}
