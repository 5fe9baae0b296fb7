//! Network namespaces for end-to-end tests, cleaned up on every path.
//!
//! [`NetnsGuard`] creates uniquely named namespaces (`vt-<test>-<pid>-<suffix>`), veth pairs between them and
//! addresses on them, and deletes all of it when dropped, on success, failure or panic alike: first every
//! process still inside one of its namespaces is killed by PID, then the namespace is deleted, which takes its
//! veth ends with it. [`Netns`] runs commands inside one namespace (`ip netns exec`) and [`NsChild`] is a
//! background process there that is killed by PID when dropped.
//!
//! The rules of `shared/conventions.md` are enforced here rather than trusted: addresses only from
//! 198.18.0.0/15, and nothing is ever created in the root namespace (veth pairs are created inside the first
//! namespace with their peer placed straight into the second one).
//!
//! These tests need root and iproute2. [`require_root_and_ip`] (called by [`NetnsGuard::new`]) panics with a clear
//! message otherwise: an end-to-end test must fail, never pass silently, when it cannot run.
//!
//! ```no_run
//! use vmsecd_e2e::netns::NetnsGuard;
//!
//! let mut g = NetnsGuard::new("example");
//! let (a, b) = g.underlay_pair();
//! a.run("ip", &["route", "get", "198.18.0.2"]);
//! let child = b.spawn(b.command("sleep").arg("30"));
//! // `child` is killed when dropped, and the namespaces are deleted when `g` is.
//! # drop(child);
//! ```

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

/// Serializes `ip netns add/del` within this process: iproute2 sets up the shared `/run/netns` mount on first
/// use, and two first uses racing each other can stack mounts.
static IP_NETNS_LOCK: Mutex<()> = Mutex::new(());
/// Prefixes of the guards alive in this process, so that two guards never share one.
static LIVE_PREFIXES: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Set to keep the guard's work directory after the test (for debugging); namespaces are deleted regardless.
pub const KEEP_DIR_ENV: &str = "VT_KEEP_DIR";

/// Panics with a clear message unless this process is root and `ip` (iproute2) runs.
///
/// End-to-end tests call it first (through [`NetnsGuard::new`]): they must fail loudly, never skip, when they
/// cannot create namespaces.
pub fn require_root_and_ip() {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_else(|e| {
        panic!("cannot read /proc/self/status ({e}): is this Linux with /proc?")
    });
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|s| s.parse::<u32>().ok());
    if euid != Some(0) {
        // libtest names each test's thread after the test (not with --test-threads=1: then it is "main").
        let test = std::thread::current()
            .name()
            .filter(|n| *n != "main")
            .map_or_else(|| "this test".to_owned(), |n| format!("test `{n}`"));
        let euid = euid.map_or_else(|| "unknown".to_owned(), |u| u.to_string());
        panic!(
            "{test} needs root, as every test of the package vmsecd-e2e does (network namespaces, veth pairs, \
             raw sockets), but the effective uid is {euid}. Run them as root, e.g. `sudo scripts/setup test` or \
             `sudo -E cargo test -p vmsecd-e2e`; without root, `cargo test --workspace --exclude vmsecd-e2e` \
             runs the rest (README, \"Tests\", names the few unit tests that need root too). They never skip."
        );
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "`ip -V` failed ({}): iproute2 is needed for network namespaces (apt-get install iproute2)",
            o.status
        ),
        Err(e) => panic!(
            "`ip` (iproute2) is missing or not runnable ({e}): apt-get install iproute2; these tests never skip"
        ),
    }
}

/// Runs `cmd` to completion and panics, showing both output streams, if it cannot start or exits non-zero.
/// Returns its standard output.
pub fn run_checked(cmd: &mut Command) -> String {
    let out = output_of(cmd);
    if !out.status.success() {
        panic!(
            "command failed ({}): {:?}\nstdout: {}\nstderr: {}",
            out.status,
            cmd,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `cmd` to completion with standard input closed and both output streams captured; panics only if it
/// cannot be started.
pub fn output_of(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Checks that an address (with or without a `/len` suffix) lies in 198.18.0.0/15, the only range tests may use.
///
/// # Panics
/// If it does not, or does not parse as IPv4.
pub fn check_test_address(addr: &str) {
    let (ip, len) = match addr.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (addr, None),
    };
    let ip: std::net::Ipv4Addr = ip.parse().unwrap_or_else(|_| {
        panic!("{addr:?} is not an IPv4 address: tests use only 198.18.0.0/15")
    });
    let o = ip.octets();
    let len_ok = match len {
        None => true,
        Some(l) => l.parse::<u8>().is_ok_and(|l| (15..=32).contains(&l)),
    };
    if o[0] != 198 || (o[1] & 0xfe) != 18 || !len_ok {
        panic!(
            "{addr} is outside 198.18.0.0/15, the only range tests may use (shared/conventions.md)"
        );
    }
}

/// One network namespace created by a [`NetnsGuard`]; cheap to clone, it is only the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// The namespace's name, as `ip netns list` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip netns exec NAME program`, with standard input closed; add arguments, environment and redirections,
    /// then run it or pass it to [`Netns::spawn`].
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name])
            .arg(program)
            .stdin(Stdio::null());
        c
    }

    /// Runs `program args` in the namespace to completion; panics with its output if it fails. Returns stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        run_checked(self.command(program).args(args))
    }

    /// Runs `program args` in the namespace to completion and returns its output, whatever its exit status.
    pub fn output(&self, program: &str, args: &[&str]) -> Output {
        output_of(self.command(program).args(args))
    }

    /// `ip -n NAME args...`; panics if it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        run_checked(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// The MAC address of `ifname` in this namespace, as `aa:bb:cc:dd:ee:ff`.
    pub fn mac(&self, ifname: &str) -> String {
        let out = self.ip(&["-o", "link", "show", "dev", ifname]);
        out.split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no MAC for {ifname} in {}: {out}", self.name))
            .to_owned()
    }

    /// A permanent neighbor (ARP) entry, so the first packets to `addr` are not held back by address
    /// resolution.
    pub fn add_neighbor(&self, ifname: &str, addr: &str, mac: &str) {
        check_test_address(addr);
        self.ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            ifname,
            "nud",
            "permanent",
        ]);
    }

    /// Sets a sysctl inside the namespace (only `net.*` keys are per namespace), e.g. `net.ipv4.ip_forward=1`.
    pub fn sysctl(&self, key_value: &str) {
        assert!(
            key_value.starts_with("net."),
            "only net.* sysctls are per namespace; {key_value} would change the host"
        );
        self.run("sysctl", &["-q", "-w", key_value]);
    }

    /// Starts `cmd` (which must come from [`Netns::command`] of this namespace) in the background. The returned
    /// [`NsChild`] kills it by PID when dropped.
    ///
    /// # Panics
    /// If it cannot be started.
    pub fn spawn(&self, cmd: &mut Command) -> NsChild {
        NsChild::spawn(cmd, &self.name)
    }
}

/// A background process started in a namespace; killed (SIGKILL, by PID) and reaped when dropped.
///
/// `ip netns exec` execs the program in place, so the PID is the program's own.
#[derive(Debug)]
pub struct NsChild {
    child: Child,
    label: String,
    status: Option<ExitStatus>,
}

impl NsChild {
    /// Starts `cmd`; `label` names it in messages.
    ///
    /// # Panics
    /// If it cannot be started.
    pub fn spawn(cmd: &mut Command, label: &str) -> NsChild {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?} ({label}): {e}"));
        NsChild {
            child,
            label: format!("{label}: {:?}", cmd.get_args().collect::<Vec<_>>()),
            status: None,
        }
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The underlying [`Child`], e.g. to take its stdin or stdout pipe.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Its exit status if it has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for it to exit; `None` if it is still running then (it is left running).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `timeout`; panics (after killing it) if it has not exited by then.
    pub fn wait_or_kill(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_timeout(timeout) {
            Some(s) => s,
            None => {
                self.kill();
                panic!("{} still running after {timeout:?}: killed", self.label);
            }
        }
    }

    /// Sends `signal` (a name such as `TERM` or `INT`) to its PID, unless it has exited.
    pub fn signal(&mut self, signal: &str) {
        if self.try_wait().is_none() {
            let _ = output_of(Command::new("kill").args(["-s", signal, &self.pid().to_string()]));
        }
    }

    /// Kills it (SIGKILL to its PID) unless it has exited, and reaps it.
    pub fn kill(&mut self) {
        if self.try_wait().is_none() {
            // Child::kill sends SIGKILL to this child's PID only; it cannot hit a recycled PID before wait().
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Owns the namespaces of one test and deletes them (after killing what runs inside) when dropped.
#[derive(Debug)]
pub struct NetnsGuard {
    prefix: String,
    namespaces: Vec<Netns>,
    dir: Option<PathBuf>,
}

impl NetnsGuard {
    /// A guard whose namespaces will be named `vt-<test_name>-<pid>-<suffix>`. Checks root and iproute2 first
    /// ([`require_root_and_ip`]). `test_name` is reduced to `[a-z0-9-]`.
    pub fn new(test_name: &str) -> NetnsGuard {
        require_root_and_ip();
        let clean: String = test_name
            .chars()
            .map(|c| c.to_ascii_lowercase())
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let base = format!("vt-{}-{}", clean.trim_matches('-'), std::process::id());
        let mut live = LIVE_PREFIXES.lock().unwrap_or_else(|e| e.into_inner());
        let live = live.get_or_insert_with(HashSet::new);
        let mut prefix = base.clone();
        let mut n = 1;
        while live.contains(&prefix) {
            n += 1;
            prefix = format!("{base}-{n}");
        }
        live.insert(prefix.clone());
        NetnsGuard {
            prefix,
            namespaces: Vec::new(),
            dir: None,
        }
    }

    /// The unique prefix of this guard's namespaces.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The namespaces created so far, in creation order.
    pub fn namespaces(&self) -> &[Netns] {
        &self.namespaces
    }

    /// A private work directory for this test (`$TMPDIR/<prefix>`), created on first use and removed on drop
    /// (unless `VT_KEEP_DIR` is set in the environment).
    pub fn dir(&mut self) -> PathBuf {
        if let Some(d) = &self.dir {
            return d.clone();
        }
        let d = std::env::temp_dir().join(&self.prefix);
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap_or_else(|e| panic!("cannot create {}: {e}", d.display()));
        self.dir = Some(d.clone());
        d
    }

    /// Creates namespace `<prefix>-<suffix>` with its loopback up.
    pub fn add_ns(&mut self, suffix: &str) -> Netns {
        let ns = Netns {
            name: format!("{}-{suffix}", self.prefix),
        };
        assert!(
            !self.namespaces.contains(&ns),
            "namespace {} created twice",
            ns.name
        );
        {
            let _l = IP_NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
            // A namespace of this exact name can only be left over from a killed run whose PID was reused.
            if Path::new("/run/netns").join(&ns.name).exists() {
                let _ = output_of(Command::new("ip").args(["netns", "del", &ns.name]));
            }
            // Registered before creation so that a half-made namespace is still deleted.
            self.namespaces.push(ns.clone());
            run_checked(Command::new("ip").args(["netns", "add", &ns.name]));
        }
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// A veth pair `a_if` (in `a`) <-> `b_if` (in `b`), both up. It is created inside `a` with its peer placed
    /// directly into `b`, so it never appears in the root namespace; it goes away with the namespaces.
    pub fn veth(&self, a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
        for n in [a_if, b_if] {
            assert!(n.len() <= 15, "interface name {n:?} longer than 15 bytes");
        }
        a.ip(&[
            "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
        ]);
        a.ip(&["link", "set", a_if, "up"]);
        b.ip(&["link", "set", b_if, "up"]);
    }

    /// Adds `cidr` (e.g. `198.18.0.1/24`, checked to be in 198.18.0.0/15) to `ifname` in `ns`.
    pub fn add_addr(&self, ns: &Netns, ifname: &str, cidr: &str) {
        check_test_address(cidr);
        assert!(
            self.namespaces.contains(ns),
            "{} is not a namespace of this guard",
            ns.name
        );
        ns.ip(&["addr", "add", cidr, "dev", ifname]);
    }

    /// The common two-host underlay: namespaces `<prefix>-a` and `<prefix>-b`, a veth pair `u0`–`u0` between
    /// them, 198.18.0.1/24 on a and 198.18.0.2/24 on b, and permanent neighbor entries for each other (no ARP
    /// delay for the first packets).
    pub fn underlay_pair(&mut self) -> (Netns, Netns) {
        let a = self.add_ns("a");
        let b = self.add_ns("b");
        self.veth(&a, "u0", &b, "u0");
        self.add_addr(&a, "u0", "198.18.0.1/24");
        self.add_addr(&b, "u0", "198.18.0.2/24");
        a.add_neighbor("u0", "198.18.0.2", &b.mac("u0"));
        b.add_neighbor("u0", "198.18.0.1", &a.mac("u0"));
        (a, b)
    }

    /// The VM side of hypervisor number `n` (shared/conventions.md): in `host`, a bridge `virbr0` at
    /// 198.19.`n`.1/24 and `ip_forward=1`; a VM namespace `<prefix>-<vm_suffix>` whose `eth0` (peer `vnet0`,
    /// enslaved to the bridge) has 198.19.`n`.10/24 and a default route via the bridge. Returns the VM.
    pub fn vm_subnet(&mut self, host: &Netns, n: u8, vm_suffix: &str) -> Netns {
        host.ip(&["link", "add", "virbr0", "type", "bridge"]);
        self.add_addr(host, "virbr0", &format!("198.19.{n}.1/24"));
        host.ip(&["link", "set", "virbr0", "up"]);
        host.sysctl("net.ipv4.ip_forward=1");
        self.attach_vm(host, "virbr0", n, vm_suffix)
    }

    /// A "VM" on an existing bridge of `host` (one made by [`NetnsGuard::vm_subnet`], or a libvirt network's):
    /// namespace `<prefix>-<vm_suffix>` whose `eth0` (peer `vnet0` in `host`, enslaved to `bridge`) has
    /// 198.19.`n`.10/24 and a default route via 198.19.`n`.1. Returns the VM.
    pub fn attach_vm(&mut self, host: &Netns, bridge: &str, n: u8, vm_suffix: &str) -> Netns {
        let vm = self.add_ns(vm_suffix);
        self.veth(host, "vnet0", &vm, "eth0");
        host.ip(&["link", "set", "vnet0", "master", bridge]);
        self.add_addr(&vm, "eth0", &format!("198.19.{n}.10/24"));
        let gw = format!("198.19.{n}.1");
        check_test_address(&gw);
        vm.ip(&["route", "add", "default", "via", &gw]);
        vm
    }

    /// An underlay LAN: a switch namespace `<prefix>-ul` with a bridge `br0`, and one namespace per entry of
    /// `hosts` (`<prefix>-<suffix>`) attached to it by `u0`, with 198.18.0.`i+1`/24 for the `i`-th. Unlike
    /// [`NetnsGuard::underlay_pair`], it has room for a host that is not in the mesh ("the outside").
    pub fn underlay_lan(&mut self, hosts: &[&str]) -> Vec<Netns> {
        assert!(hosts.len() < 250, "198.18.0.0/24 has room for 250 hosts");
        let ul = self.add_ns("ul");
        ul.ip(&["link", "add", "br0", "type", "bridge"]);
        ul.ip(&["link", "set", "br0", "up"]);
        hosts
            .iter()
            .enumerate()
            .map(|(i, suffix)| {
                let h = self.add_ns(suffix);
                let port = format!("p{i}");
                self.veth(&ul, &port, &h, "u0");
                ul.ip(&["link", "set", &port, "master", "br0"]);
                self.add_addr(&h, "u0", &format!("198.18.0.{}/24", i + 1));
                h
            })
            .collect()
    }

    /// Two hypervisors with one VM each: [`NetnsGuard::underlay_pair`] (`a` at 198.18.0.1, `b` at 198.18.0.2)
    /// and [`NetnsGuard::vm_subnet`] 1 behind `a` (VM `avm`, 198.19.1.10) and 2 behind `b` (VM `bvm`,
    /// 198.19.2.10). Returns `(a, b, avm, bvm)`.
    pub fn hypervisor_pair(&mut self) -> (Netns, Netns, Netns, Netns) {
        let (a, b) = self.underlay_pair();
        let avm = self.vm_subnet(&a, 1, "avm");
        let bvm = self.vm_subnet(&b, 2, "bvm");
        (a, b, avm, bvm)
    }

    fn pids_in(ns: &Netns) -> Vec<u32> {
        let out = output_of(Command::new("ip").args(["netns", "pids", &ns.name]));
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    fn delete(ns: &Netns) {
        // Every process still inside was started by this test (the name is unique to it): end each by PID.
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let pids = Self::pids_in(ns);
            if pids.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "netns guard: processes {pids:?} still in {} after SIGKILL",
                    ns.name
                );
                break;
            }
            for pid in pids {
                let _ = output_of(Command::new("kill").args(["-KILL", &pid.to_string()]));
            }
            sleep(Duration::from_millis(20));
        }
        let _l = IP_NETNS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let out = output_of(Command::new("ip").args(["netns", "del", &ns.name]));
        if !out.status.success() && Path::new("/run/netns").join(&ns.name).exists() {
            eprintln!(
                "netns guard: `ip netns del {}` failed: {}",
                ns.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Never panic here: this runs during unwinding too.
        for ns in self.namespaces.iter().rev() {
            Self::delete(ns);
        }
        if let Some(d) = &self.dir {
            if std::env::var_os(KEEP_DIR_ENV).is_some() {
                eprintln!("netns guard: keeping {}", d.display());
            } else {
                let _ = fs::remove_dir_all(d);
            }
        }
        if let Some(live) = LIVE_PREFIXES
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            live.remove(&self.prefix);
        }
    }
}
