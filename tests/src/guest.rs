//! Linux guests under QEMU for the kernel-IPsec interop tests: a Debian kernel (its ESP/XFRM are modules, which
//! the host kernel lacks) booted straight into the host's own root file system, read-only over virtio-9p under a
//! tmpfs overlay, so every tool installed on the host (charon, pluto, ip, tcpdump, python3) runs in the guest.
//!
//! - The image (kernel and initramfs), QEMU's boot arguments and the command agent are the `vmsecd-guest`
//!   crate's (guest/), shared with `vmsecd demo --vms`; [`image`] here panics with what to install.
//! - [`Guest::boot`] starts QEMU with one virtio NIC per [`Nic`], each on a tap in a namespace of the test (the
//!   tap is opened here in that namespace and handed to QEMU as a file descriptor, so one guest can sit on
//!   several namespaces, e.g. the underlay and its own "VM" subnet). KVM is used only if a probe boot under KVM
//!   works on this machine (it does not here: the paravirtual `/dev/kvm` cannot run a stock kernel), otherwise
//!   TCG (`-accel tcg -cpu max`); never skipped.
//! - A second 9p share without caching is the command agent ([`Agent`]): [`Guest::exec`] writes a shell script
//!   there, the guest runs it and writes its standard output, error and exit code back. [`Guest::read_file`] and
//!   [`Guest::write_file`] move files through the same share.
//! - [`lock`] serializes guests across test processes (an `flock` on `$TMPDIR/vmsecd-guest.lock`): under TCG
//!   each guest takes a core, and CI must not boot a dozen at once.
//! - Dropping a [`Guest`] kills QEMU by PID and deletes its taps and files on every path; when the test is
//!   failing it prints the end of the guest's console first.

use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};

use std::thread::sleep;
use std::time::{Duration, Instant};
pub use vmsecd_guest::agent::{Agent, GuestOutput};
pub use vmsecd_guest::image::Image;
use vmsecd_guest::{qemu, FileLock};

use crate::netns::{output_of, Netns, NsChild, KEEP_DIR_ENV};

/// Set to `tcg` or `kvm` to force an accelerator instead of probing.
pub const ACCEL_ENV: &str = "VT_GUEST_ACCEL";
/// How long a guest may take from QEMU's start to a running command agent (TCG on a loaded machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// The guest image, built (or found in the cache) on first use. Panics with what to install if the host has no
/// Debian kernel with the needed modules, no busybox-static or no QEMU (guest tests never skip).
pub fn image() -> &'static Image {
    vmsecd_guest::image::image().unwrap_or_else(|e| panic!("{e} (guest tests never skip)"))
}

/// The right to run guests: one holder per machine at a time (this process's tests and other test processes).
/// Take it at the start of a test that boots guests and keep it until the guests are dropped.
pub struct GuestLock {
    _file: FileLock,
    _in_process: MutexGuard<'static, ()>,
}

/// Waits for and takes the [`GuestLock`]. Prints how long it waited when it had to.
pub fn lock() -> GuestLock {
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let t = Instant::now();
    let in_process = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let path = std::env::temp_dir().join("vmsecd-guest.lock");
    let file =
        FileLock::acquire(&path).unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
    if t.elapsed() > Duration::from_secs(1) {
        eprintln!(
            "[guest] waited {:.1} s for the guest lock",
            t.elapsed().as_secs_f64()
        );
    }
    GuestLock {
        _file: file,
        _in_process: in_process,
    }
}

/// Which accelerator guests use: KVM if a probe boot under it prints the probe marker, else TCG. Probed once per
/// process (a few seconds at most; under this machine's paravirtual KVM QEMU exits at once).
pub fn accel() -> &'static str {
    static ACCEL: OnceLock<&'static str> = OnceLock::new();
    ACCEL.get_or_init(|| match std::env::var(ACCEL_ENV).as_deref() {
        Ok("kvm") => "kvm",
        Ok("tcg") => "tcg",
        _ if kvm_works() => "kvm",
        _ => "tcg",
    })
}

fn kvm_works() -> bool {
    if fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return false;
    }
    let img = image();
    let dir = std::env::temp_dir().join(format!("vmsecd-guest-kvm-probe-{}", std::process::id()));
    let _ = fs::create_dir_all(&dir);
    let console = dir.join("console.log");
    let mut qemu = NsChild::spawn(
        Command::new("qemu-system-x86_64")
            .args(["-accel", "kvm", "-cpu", "host", "-m", "128", "-nodefaults"])
            .args(["-no-user-config", "-display", "none", "-no-reboot"])
            .arg("-kernel")
            .arg(&img.vmlinux)
            .arg("-initrd")
            .arg(&img.initrd)
            .args(["-append", "console=ttyS0 panic=-1 vmsecd.probe=1"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
        "kvm probe",
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut ok = false;
    while Instant::now() < deadline {
        if fs::read_to_string(&console)
            .unwrap_or_default()
            .contains("VMSECD-GUEST-PROBE-OK")
        {
            ok = true;
            break;
        }
        if qemu.try_wait().is_some() {
            ok = fs::read_to_string(&console)
                .unwrap_or_default()
                .contains("VMSECD-GUEST-PROBE-OK");
            break;
        }
        sleep(Duration::from_millis(100));
    }
    qemu.kill();
    let _ = fs::remove_dir_all(&dir);
    eprintln!(
        "[guest] /dev/kvm {}",
        if ok {
            "runs a stock kernel: guests use KVM"
        } else {
            "cannot run a stock kernel: guests use TCG"
        }
    );
    ok
}

/// One NIC of a guest: a tap named `tap` (at most 15 bytes) created in `ns`, seen in the guest as `eth<i>` in
/// the order given. The test configures the tap's end (address, bridge) like any interface of its namespace.
#[derive(Debug, Clone)]
pub struct Nic {
    /// The namespace holding the tap.
    pub ns: Netns,
    /// The tap's name there.
    pub tap: String,
}

impl Nic {
    /// A NIC on tap `tap` in `ns`.
    pub fn new(ns: &Netns, tap: &str) -> Nic {
        assert!(tap.len() <= 15, "tap name {tap:?} longer than 15 bytes");
        Nic {
            ns: ns.clone(),
            tap: tap.to_owned(),
        }
    }
}

/// A running guest; see the module documentation. Killed and cleaned up when dropped.
pub struct Guest {
    name: String,
    dir: PathBuf,
    nics: Vec<Nic>,
    mem_mb: u32,
    qemu: Option<NsChild>,
    agent: Agent,
    boots: u32,
    booted_in: Duration,
}

/// `TUNSETIFF` from `<linux/if_tun.h>`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// Opens tap `tap` in namespace `ns` (a thread of ours enters the namespace for the `open` and the ioctl; the
/// descriptor stays bound to that tap wherever it is passed).
fn open_tap(ns: &Netns, tap: &str) -> OwnedFd {
    let ns_path = PathBuf::from("/run/netns").join(ns.name());
    let tap = tap.to_owned();
    std::thread::spawn(move || -> Result<OwnedFd, String> {
        let nsf =
            fs::File::open(&ns_path).map_err(|e| format!("open {}: {e}", ns_path.display()))?;
        // SAFETY: setns on this short-lived thread only (the network namespace is per thread).
        if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let tun = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| format!("open /dev/net/tun: {e}"))?;
        let mut ifr = [0u8; 40];
        ifr[..tap.len()].copy_from_slice(tap.as_bytes());
        let flags: u16 = 0x0002 | 0x1000 | 0x4000; // IFF_TAP | IFF_NO_PI | IFF_VNET_HDR
        ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `ifr` is large enough to hold.
        if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) } != 0 {
            return Err(format!(
                "TUNSETIFF {tap}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(OwnedFd::from(tun))
    })
    .join()
    .expect("tap thread")
    .unwrap_or_else(|e| panic!("cannot open tap in {}: {e}", ns.name()))
}

impl Guest {
    /// Boots guest `name` (a hostname; also names its files) with `nics` (taps created here, in their
    /// namespaces, and deleted on drop), `mem_mb` of memory, its files under `dir` (created). Waits until its
    /// command agent runs; panics with the console if it does not within 3 minutes.
    pub fn boot(_lock: &GuestLock, dir: &Path, name: &str, nics: &[Nic], mem_mb: u32) -> Guest {
        for n in nics {
            n.ns.ip(&["tuntap", "add", "dev", &n.tap, "mode", "tap", "vnet_hdr"]);
            n.ns.ip(&["link", "set", &n.tap, "up"]);
        }
        let mut g = Guest {
            name: name.to_owned(),
            dir: dir.to_owned(),
            nics: nics.to_vec(),
            mem_mb,
            qemu: None,
            agent: Agent::new(dir.join("agent")),
            boots: 0,
            booted_in: Duration::ZERO,
        };
        g.start();
        g
    }

    fn agent_dir(&self) -> &Path {
        self.agent.dir()
    }

    /// The console log of the current boot.
    pub fn console_path(&self) -> PathBuf {
        self.dir.join(format!("console-{}.log", self.boots))
    }

    fn start(&mut self) {
        let img = image();
        let accel = accel();
        self.boots += 1;
        self.agent
            .prepare(&self.name)
            .unwrap_or_else(|e| panic!("agent share of {}: {e}", self.name));
        let agent = self.agent_dir().to_path_buf();

        let fds: Vec<OwnedFd> = self.nics.iter().map(|n| open_tap(&n.ns, &n.tap)).collect();
        // The guest's MACs: 52:54:00 (QEMU's), then bytes from our PID and the guest's name, and the NIC index; the
        // same at every boot, so the peers' neighbour entries stay right across a reboot.
        let tag =
            (std::process::id() as u8) ^ self.name.bytes().fold(0u8, |a, b| a.wrapping_mul(31) ^ b);
        let mut cmd = match self.nics.first() {
            Some(n) => n.ns.command("qemu-system-x86_64"),
            None => Command::new("qemu-system-x86_64"),
        };
        qemu::boot_args(
            &mut cmd,
            img,
            accel,
            self.mem_mb,
            &self.console_path(),
            &agent,
        );
        // Above anything the test process has open, so no dup2 lands on a descriptor still to be copied.
        let base_fd = 200usize;
        for (i, _) in fds.iter().enumerate() {
            cmd.arg("-netdev")
                .arg(format!("tap,id=n{i},fd={}", base_fd + i))
                .arg("-device")
                .arg(qemu::nic_device(
                    &format!("n{i}"),
                    tag,
                    self.name.len() as u8,
                    i as u8,
                ));
        }
        let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: between fork and exec only dup2 (async-signal-safe) on descriptors we own.
        unsafe {
            cmd.pre_exec(move || {
                for (i, fd) in raw.iter().enumerate() {
                    if libc::dup2(*fd, base_fd as i32 + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let log =
            fs::File::create(self.dir.join(format!("qemu-{}.log", self.boots))).expect("qemu log");
        cmd.stdout(Stdio::from(log.try_clone().expect("dup")))
            .stderr(Stdio::from(log));
        let t = Instant::now();
        self.qemu = Some(NsChild::spawn(&mut cmd, &format!("guest {}", self.name)));
        drop(fds);
        let ready = agent.join("ready");
        while !ready.exists() {
            if let Some(s) = self.qemu.as_mut().and_then(|q| q.try_wait()) {
                panic!(
                    "guest {} ({accel}): QEMU exited ({s}) before its agent ran\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            if t.elapsed() > BOOT_TIMEOUT {
                panic!(
                    "guest {} ({accel}): no agent after {BOOT_TIMEOUT:?}\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            sleep(Duration::from_millis(50));
        }
        self.booted_in = t.elapsed();
        eprintln!(
            "[guest] {} booted ({accel}, kernel {}) in {:.1} s",
            self.name,
            img.version,
            self.booted_in.as_secs_f64()
        );
    }

    /// How long the last boot took, from QEMU's start to a running agent.
    pub fn booted_in(&self) -> Duration {
        self.booted_in
    }

    /// The guest's name (its hostname).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its work directory on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// QEMU's PID (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.qemu.as_ref().map(|q| q.pid())
    }

    /// Runs `script` with `/bin/sh` in the guest and waits up to `timeout` for it; panics if the guest dies or
    /// the script outlives the timeout (the agent runs one script at a time, so a hung one ends the guest's
    /// use). Background processes must redirect their output and not hold the script's streams.
    pub fn exec_timeout(&self, script: &str, timeout: Duration) -> GuestOutput {
        let n = self.agent.submit(script).expect("write the guest command");
        let t = Instant::now();
        loop {
            if let Some(out) = self.agent.outcome(n) {
                return out;
            }
            assert!(
                self.qemu.is_some(),
                "guest {} is not running (killed); cannot run {script:?}",
                self.name
            );
            if t.elapsed() > timeout {
                panic!(
                    "guest {}: {script:?} did not finish in {timeout:?}\n{}",
                    self.name,
                    self.diagnostics()
                );
            }
            sleep(Duration::from_millis(20));
        }
    }

    /// [`Guest::exec_timeout`] with 60 s.
    pub fn exec(&self, script: &str) -> GuestOutput {
        self.exec_timeout(script, Duration::from_secs(60))
    }

    /// Runs `script` and returns its standard output; panics with its output and the console if it fails.
    pub fn run(&self, script: &str) -> String {
        let out = self.exec(script);
        if out.code != 0 {
            panic!(
                "guest {}: {script:?} failed ({})\nstdout: {}\nstderr: {}\n{}",
                self.name,
                out.code,
                out.stdout,
                out.stderr,
                self.console_tail(30)
            );
        }
        out.stdout
    }

    /// Starts `script` in the background in the guest (its own session, output to `log` in the guest) and
    /// returns its PID there.
    pub fn spawn(&self, script: &str, log: &str) -> u32 {
        let file = format!("/tmp/spawn-{}.sh", self.agent.current());
        self.write_file(&file, script.as_bytes());
        let out = self.run(&format!(
            "setsid sh {file} > {log} 2>&1 < /dev/null & echo $!"
        ));
        out.trim()
            .parse()
            .unwrap_or_else(|_| panic!("no PID from {out:?}"))
    }

    /// Copies `contents` to `path` in the guest (through the agent share).
    pub fn write_file(&self, path: &str, contents: &[u8]) {
        let name = format!("put-{}", self.agent.current());
        fs::write(self.agent_dir().join(&name), contents).expect("write to the agent share");
        self.run(&format!(
            "mkdir -p \"$(dirname '{path}')\" && cp /vmsecd-agent/{name} '{path}' && rm /vmsecd-agent/{name}"
        ));
    }

    /// The contents of `path` in the guest (through the agent share); panics if it cannot be read.
    pub fn read_file(&self, path: &str) -> Vec<u8> {
        let name = format!("get-{}", self.agent.current());
        self.run(&format!("cp '{path}' /vmsecd-agent/{name}"));
        let f = self.agent_dir().join(&name);
        let data = fs::read(&f).unwrap_or_else(|e| panic!("read {}: {e}", f.display()));
        let _ = fs::remove_file(f);
        data
    }

    /// The whole console log of the current boot.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.console_path()).unwrap_or_default()).into_owned()
    }

    /// The last `lines` lines of the console.
    pub fn console_tail(&self, lines: usize) -> String {
        let c = self.console();
        let v: Vec<&str> = c.lines().collect();
        let start = v.len().saturating_sub(lines);
        format!(
            "--- guest {} console ({}), last {} lines ---\n{}",
            self.name,
            self.console_path().display(),
            v.len() - start,
            v[start..].join("\n")
        )
    }

    /// The console's end and QEMU's own messages, for failure messages.
    pub fn diagnostics(&self) -> String {
        let qemu = fs::read_to_string(self.dir.join(format!("qemu-{}.log", self.boots)))
            .unwrap_or_default();
        format!("{}\n--- QEMU ---\n{qemu}", self.console_tail(40))
    }

    /// Kills the guest (SIGKILL to QEMU, as a power cut); its taps stay, so [`Guest::boot_again`] can follow.
    pub fn kill(&mut self) {
        if let Some(mut q) = self.qemu.take() {
            q.kill();
        }
    }

    /// Boots the guest again from scratch (a fresh overlay: nothing of the last run survives), killing it first
    /// if it still runs.
    pub fn boot_again(&mut self) {
        self.kill();
        self.start();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // Never panic here: this runs during unwinding too.
        if std::thread::panicking() && self.qemu.is_some() {
            eprintln!("{}", self.console_tail(40));
        }
        self.kill();
        for n in &self.nics {
            let _ = output_of(Command::new("ip").args(["-n", n.ns.name(), "link", "del", &n.tap]));
        }
        if std::env::var_os(KEEP_DIR_ENV).is_none() {
            let _ = fs::remove_dir_all(self.agent_dir());
        }
        let _ = std::io::stderr().flush();
    }
}
