//! `vmsecd demo --vms`: the hidden subcommands the demo script drives its QEMU guests with, on the
//! `vmsecd-guest` crate the tests use too (Debian's kernel booted directly, the host's root over 9p, a command
//! agent). `demo-vm` checks the host or boots one guest on a tap; `demo-vm-exec` runs a script in a guest.

use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use vmsecd_guest::agent::Agent;
use vmsecd_guest::{image, qemu};

/// Memory of a demo guest: the kernel, busybox and the tmpfs overlay's few files.
const MEM_MB: u32 = 256;

/// Checks what the guests need (QEMU, a Debian kernel, busybox-static, python3) and builds the cached image;
/// prints the kernel's version. The error names the package to install.
pub(crate) fn check() -> anyhow::Result<()> {
    let img = image::image().map_err(|e| anyhow::anyhow!("the demo's VMs cannot boot: {e}"))?;
    println!(
        "guest image: Debian kernel {} booted directly, initramfs {}",
        img.version,
        img.initrd.display()
    );
    Ok(())
}

/// Boots guest `name` with its files in `dir` (console, agent share), its one NIC on tap `tap` of the current
/// namespace (QEMU opens it by name), under TCG: replaces this process with QEMU, so the caller's PID for it is
/// QEMU's and killing it ends the guest.
pub(crate) fn boot(dir: &Path, name: &str, tap: &str) -> anyhow::Result<()> {
    let img = image::image().map_err(|e| anyhow::anyhow!("the demo's VMs cannot boot: {e}"))?;
    let agent = Agent::new(dir.join("agent"));
    agent
        .prepare(name)
        .with_context(|| format!("cannot prepare {}", agent.dir().display()))?;
    let mut cmd = Command::new("qemu-system-x86_64");
    // TCG: KVM is not probed here (a paravirtual /dev/kvm may not run a stock kernel, see the tests' guest.rs).
    qemu::boot_args(
        &mut cmd,
        img,
        "tcg",
        MEM_MB,
        &dir.join("console.log"),
        agent.dir(),
    );
    let tag = name.bytes().fold(0u8, |a, b| a.wrapping_mul(31) ^ b);
    cmd.args([
        "-netdev",
        &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
        "-device",
        &qemu::nic_device("n0", tag, name.len() as u8, 0),
    ]);
    // A process group of its own: a Ctrl-C at the terminal reaches the demo script, which stops the guests
    // after the daemons (by PID) and says it was interrupted, instead of QEMU dying first under its feet.
    cmd.process_group(0);
    let e = cmd.exec();
    Err(anyhow::anyhow!(
        "cannot run qemu-system-x86_64 (apt-get install qemu-system-x86): {e}"
    ))
}

/// Runs `script` with `/bin/sh` in the guest whose files are in `dir`, waits up to `timeout`, and passes on its
/// output and exit code.
pub(crate) fn exec(dir: &Path, script: &str, timeout: Duration) -> anyhow::Result<i32> {
    use std::io::Write as _;
    let agent = Agent::attach(dir.join("agent"))
        .with_context(|| format!("no guest agent in {}", dir.display()))?;
    anyhow::ensure!(
        agent.is_ready(),
        "the guest of {} has not booted (yet)",
        dir.display()
    );
    let out = agent
        .run(script, timeout)
        .context("cannot hand the command to the guest")?
        .ok_or_else(|| anyhow::anyhow!("the guest did not finish {script:?} within {timeout:?}"))?;
    std::io::stdout().write_all(out.stdout.as_bytes())?;
    std::io::stderr().write_all(out.stderr.as_bytes())?;
    // The caller may exit with the code at once, past the buffered writer.
    std::io::stdout().flush()?;
    Ok(out.code)
}
