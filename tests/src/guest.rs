//! Linux guests under QEMU for the kernel-IPsec interop tests: a Debian kernel (its ESP/XFRM are modules, which
//! the host kernel lacks) booted straight into the host's own root file system, read-only over virtio-9p under a
//! tmpfs overlay, so every tool installed on the host (charon, pluto, ip, tcpdump, python3) runs in the guest.
//!
//! - [`image`] builds once per kernel version and caches in `$TMPDIR/vmsecd-guest-<version>-v1`: the
//!   uncompressed `vmlinux` (booted through its PVH entry, no firmware, no disk) taken from the xz payload of
//!   `/boot/vmlinuz-<version>`, and a busybox initramfs that loads the virtio, 9p and overlay modules (order from
//!   `modprobe --show-depends`), mounts the root and `switch_root`s into it. Built in a private directory and
//!   renamed into place, so concurrent tests never see half an image.
//! - [`Guest::boot`] starts QEMU with one virtio NIC per [`Nic`], each on a tap in a namespace of the test (the
//!   tap is opened here in that namespace and handed to QEMU as a file descriptor, so one guest can sit on
//!   several namespaces, e.g. the underlay and its own "VM" subnet). KVM is used only if a probe boot under KVM
//!   works on this machine (it does not here: the paravirtual `/dev/kvm` cannot run a stock kernel), otherwise
//!   TCG (`-accel tcg -cpu max`); never skipped.
//! - A second 9p share without caching is the command agent: [`Guest::exec`] writes a shell script there, the
//!   guest runs it and writes its standard output, error and exit code back. [`Guest::read_file`] and
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

use crate::netns::{output_of, run_checked, Netns, NsChild, KEEP_DIR_ENV};

/// Bumped whenever the cached image's contents change (its directory name carries it).
const IMAGE_VERSION: &str = "v1";
/// The modules the initramfs loads, with their dependencies, before it can mount the root.
const BOOT_MODULES: &[&str] = &["virtio_pci", "virtio_net", "9pnet_virtio", "9p", "overlay"];
/// Set to `tcg` or `kvm` to force an accelerator instead of probing.
pub const ACCEL_ENV: &str = "VT_GUEST_ACCEL";
/// How long a guest may take from QEMU's start to a running command agent (TCG on a loaded machine).
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// The cached kernel and initramfs.
#[derive(Debug)]
pub struct Image {
    /// The kernel version (`/lib/modules/<version>`).
    pub version: String,
    /// The uncompressed kernel, booted through its PVH note.
    pub vmlinux: PathBuf,
    /// The busybox initramfs (newc cpio, uncompressed).
    pub initrd: PathBuf,
}

/// The guest image, built (or found in the cache) on first use. Panics with what to install if the host has no
/// Debian kernel with the needed modules, no busybox-static or no QEMU.
pub fn image() -> &'static Image {
    static IMAGE: OnceLock<Image> = OnceLock::new();
    IMAGE.get_or_init(build_or_reuse_image)
}

fn require(path: &str, package: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: apt-get install {package} (guest tests never skip)"
    );
}

/// The newest `/boot/vmlinuz-*` whose modules include 9p over virtio.
fn pick_kernel() -> String {
    let mut versions: Vec<String> = fs::read_dir("/boot")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("vmlinuz-"))
                        .map(str::to_owned)
                })
                .filter(|v| {
                    Path::new("/lib/modules")
                        .join(v)
                        .join("kernel/net/9p/9pnet_virtio.ko")
                        .exists()
                })
                .collect()
        })
        .unwrap_or_default();
    // Version order, not text order: 6.1.0-10 after 6.1.0-9.
    versions.sort_by_key(|v| {
        v.split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .collect::<Vec<_>>()
    });
    versions.pop().unwrap_or_else(|| {
        panic!(
            "no /boot/vmlinuz-* with uncompressed virtio/9p modules under /lib/modules: apt-get install \
             linux-image-amd64 (the guest kernel; guest tests never skip)"
        )
    })
}

fn build_or_reuse_image() -> Image {
    require("/usr/bin/qemu-system-x86_64", "qemu-system-x86");
    require("/bin/busybox", "busybox-static");
    let version = pick_kernel();
    let dir = std::env::temp_dir().join(format!("vmsecd-guest-{version}-{IMAGE_VERSION}"));
    let img = Image {
        version: version.clone(),
        vmlinux: dir.join("vmlinux"),
        initrd: dir.join("initrd.cpio"),
    };
    if dir.join("complete").exists() {
        return img;
    }
    // One builder at a time; the others wait and then find the complete directory.
    let _build = FileLock::acquire(&sibling(&dir, ".lock"));
    if dir.join("complete").exists() {
        return img;
    }
    let tmp = sibling(&dir, &format!(".tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).unwrap_or_else(|e| panic!("cannot create {}: {e}", tmp.display()));
    extract_vmlinux(&format!("/boot/vmlinuz-{version}"), &tmp.join("vmlinux"));
    fs::write(tmp.join("initrd.cpio"), initramfs(&version)).expect("write the initramfs");
    fs::write(tmp.join("complete"), "").expect("mark the image complete");
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir)
        .unwrap_or_else(|e| panic!("cannot rename {} to {}: {e}", tmp.display(), dir.display()));
    img
}

/// `dir` with `suffix` appended to its last component (`with_extension` would cut at the version's dots).
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The uncompressed kernel: Debian's bzImage carries it xz-compressed; Python's lzma takes it out (it stops at
/// the end of the xz stream and ignores what follows).
fn extract_vmlinux(vmlinuz: &str, out: &Path) {
    let script = r#"
import lzma, sys
d = open(sys.argv[1], 'rb').read()
i = d.find(b'\xfd7zXZ\x00')
if i < 0:
    sys.exit('no xz payload in ' + sys.argv[1])
k = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[i:])
if k[:4] != b'\x7fELF':
    sys.exit('the xz payload of ' + sys.argv[1] + ' is not an ELF kernel')
open(sys.argv[2], 'wb').write(k)
"#;
    run_checked(
        Command::new("python3")
            .args(["-c", script, vmlinuz])
            .arg(out),
    );
}

/// The module files to insmod, dependencies first, each once.
fn boot_modules(version: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    for m in BOOT_MODULES {
        let out = run_checked(Command::new("modprobe").args(["-S", version, "--show-depends", m]));
        for line in out.lines() {
            let mut w = line.split_whitespace();
            if w.next() == Some("insmod") {
                if let Some(f) = w.next() {
                    let f = PathBuf::from(f);
                    if !files.contains(&f) {
                        files.push(f);
                    }
                }
            }
            // "builtin NAME": nothing to load.
        }
    }
    files
}

/// Stage one, run by busybox as PID 1: modules, the root over 9p under a tmpfs overlay, the agent share, then
/// `switch_root` into the host's own `/bin/sh` running the agent's `stage2.sh` (written by [`Guest::boot`], so
/// it can change without rebuilding the image).
const INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev /lower /rw /newroot
$B mount -t proc proc /proc
$B mount -t devtmpfs dev /dev
if $B grep -q vmsecd.probe /proc/cmdline; then
  echo VMSECD-GUEST-PROBE-OK
  $B poweroff -f
fi
for m in $($B ls /modules); do
  $B insmod /modules/$m || echo "vmsecd-guest: insmod $m failed"
done
$B mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=262144 hostroot /lower || echo "vmsecd-guest: no root share"
$B mount -t tmpfs -o size=512m,mode=0755 rw /rw
$B mkdir -p /rw/upper /rw/work
$B mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || echo "vmsecd-guest: no overlay"
$B mkdir -p /newroot/vmsecd-agent
$B mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=262144 agent /newroot/vmsecd-agent || echo "vmsecd-guest: no agent share"
$B umount /proc
$B umount /dev
exec $B switch_root /newroot /bin/sh /vmsecd-agent/stage2.sh
echo "vmsecd-guest: switch_root failed"
$B poweroff -f
"#;

/// Stage two, the host's `/bin/sh` in the guest: a fresh `/proc`, `/sys`, `/dev`, `/run` and `/tmp`, links up,
/// then the agent loop: runs `cmd-N.sh` in order, leaving `out-N.stdout`, `out-N.stderr` and `out-N.rc` (the
/// last one renamed into place, so the host never reads half a result).
pub(crate) const STAGE2: &str = r#"#!/bin/sh
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs shm /dev/shm
mount -t tmpfs -o mode=0755 run /run
mount -t tmpfs -o mode=1777 tmp /tmp
mkdir -p /run/lock /run/netns
A=/vmsecd-agent
hostname "$(cat $A/hostname)"
ip link set lo up
for i in $(ls /sys/class/net); do ip link set "$i" up; done
echo "vmsecd-guest: agent ready"
echo ready > $A/ready.tmp && mv $A/ready.tmp $A/ready
n=0
while :; do
  if [ -f $A/cmd-$n.sh ]; then
    sh $A/cmd-$n.sh > $A/out-$n.stdout 2> $A/out-$n.stderr < /dev/null
    echo $? > $A/out-$n.rc.tmp
    mv $A/out-$n.rc.tmp $A/out-$n.rc
    n=$((n+1))
  else
    sleep 0.05
  fi
done
"#;

/// A newc cpio archive, written by hand (one format, a dozen entries: no need for a crate or `cpio`).
struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), body: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            body.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
        self.data.extend_from_slice(body);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }
}

fn initramfs(version: &str) -> Vec<u8> {
    let mut c = Cpio {
        data: Vec::new(),
        ino: 0,
    };
    for d in ["bin", "dev", "proc", "sys", "modules"] {
        c.entry(d, 0o040755, (0, 0), b"");
    }
    // The kernel opens /dev/console for PID 1 before anything is mounted.
    c.entry("dev/console", 0o020600, (5, 1), b"");
    let busybox = fs::read("/bin/busybox").expect("read /bin/busybox (busybox-static)");
    c.entry("bin/busybox", 0o100755, (0, 0), &busybox);
    c.entry("init", 0o100755, (0, 0), INIT.as_bytes());
    for (i, m) in boot_modules(version).iter().enumerate() {
        let body = fs::read(m).unwrap_or_else(|e| panic!("read {}: {e}", m.display()));
        let name = m.file_name().and_then(|n| n.to_str()).expect("module name");
        c.entry(&format!("modules/{i:02}-{name}"), 0o100644, (0, 0), &body);
    }
    c.entry("TRAILER!!!", 0, (0, 0), b"");
    c.data
}

/// An exclusive `flock` on a file, released when dropped.
struct FileLock {
    _file: fs::File,
}

impl FileLock {
    fn acquire(path: &Path) -> FileLock {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        // SAFETY: flock on a descriptor this function owns; blocks until the lock is ours.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(
            r,
            0,
            "flock {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        FileLock { _file: file }
    }
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
    let file = FileLock::acquire(&std::env::temp_dir().join("vmsecd-guest.lock"));
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

/// What a command in the guest did.
#[derive(Debug, Clone)]
pub struct GuestOutput {
    /// Its exit code.
    pub code: i32,
    /// Its standard output.
    pub stdout: String,
    /// Its standard error.
    pub stderr: String,
}

/// The host's end of a guest's command agent, the uncached 9p share the guest mounts at /vmsecd-agent: a
/// script goes in as `cmd-N.sh` (written then renamed, so the guest never runs half of one), its output and exit
/// code come back as `out-N.stdout`, `out-N.stderr` and `out-N.rc`. Both kinds of guest ([`Guest`] and
/// libvirt's [`crate::libvirt_guest::VirtGuest`]) talk through it.
pub struct Agent {
    dir: PathBuf,
    next: Mutex<u64>,
}

impl Agent {
    /// The agent share in `dir` (made by [`Agent::prepare`]).
    pub fn new(dir: PathBuf) -> Agent {
        Agent {
            dir,
            next: Mutex::new(0),
        }
    }

    /// The share's folder on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Empties the share for a new boot of guest `hostname`: the stage-2 script and the hostname in it, the
    /// command numbers from 0 again.
    pub fn prepare(&self, hostname: &str) {
        let _ = fs::remove_dir_all(&self.dir);
        fs::create_dir_all(&self.dir)
            .unwrap_or_else(|e| panic!("create {}: {e}", self.dir.display()));
        fs::write(self.dir.join("stage2.sh"), STAGE2).expect("stage2");
        fs::write(self.dir.join("hostname"), hostname).expect("hostname");
        *self.lock() = 0;
    }

    fn lock(&self) -> MutexGuard<'_, u64> {
        self.next.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The number the next command will get (transfer files are named after it, so they never collide).
    pub fn current(&self) -> u64 {
        *self.lock()
    }

    /// Hands `script` to the guest; returns its number for [`Agent::outcome`].
    pub fn submit(&self, script: &str) -> u64 {
        let mut next = self.lock();
        let n = *next;
        *next += 1;
        let tmp = self.dir.join(format!("cmd-{n}.tmp"));
        fs::write(&tmp, script).expect("write the guest command");
        fs::rename(&tmp, self.dir.join(format!("cmd-{n}.sh"))).expect("rename the guest command");
        n
    }

    /// What command `n` returned, once the guest has finished it.
    pub fn outcome(&self, n: u64) -> Option<GuestOutput> {
        let code = fs::read_to_string(self.dir.join(format!("out-{n}.rc"))).ok()?;
        let read = |ext: &str| {
            fs::read_to_string(self.dir.join(format!("out-{n}.{ext}"))).unwrap_or_default()
        };
        Some(GuestOutput {
            code: code.trim().parse().unwrap_or(-1),
            stdout: read("stdout"),
            stderr: read("stderr"),
        })
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
        self.agent.prepare(&self.name);
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
        match accel {
            "kvm" => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            _ => cmd.args(["-accel", "tcg", "-cpu", "max"]),
        };
        cmd.args(["-m", &self.mem_mb.to_string(), "-smp", "1"])
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
            .args([
                "-append",
                "console=ttyS0 panic=-1 loglevel=4 net.ifnames=0 random.trust_cpu=on",
            ])
            .arg("-serial")
            .arg(format!("file:{}", self.console_path().display()))
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
        // Above anything the test process has open, so no dup2 lands on a descriptor still to be copied.
        let base_fd = 200usize;
        for (i, _) in fds.iter().enumerate() {
            cmd.arg("-netdev")
                .arg(format!("tap,id=n{i},fd={}", base_fd + i))
                .arg("-device")
                .arg(format!(
                    "virtio-net-pci,netdev=n{i},mac=52:54:00:{tag:02x}:{:02x}:{i:02x}",
                    self.name.len() as u8
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
        let n = self.agent.submit(script);
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
