//! Real libvirt networking in a hypervisor namespace: Debian's libvirtd with only its network driver, one per
//! namespace, in a mount namespace of its own (the recipe of shared/conventions.md), driven with `virsh`.
//!
//! What libvirtd sees as /run, /run/libvirt, /etc/libvirt and /var/{lib,log,cache} is private: a tmpfs, folders
//! of the test's work directory, and overlays whose upper layers live there too, so nothing it writes reaches
//! the host's file system, and it finds no D-Bus (hence no firewalld: it calls `iptables` itself, in its
//! network namespace). Its dnsmasq children stay in the namespace and end with it ([`crate::netns::NetnsGuard`]
//! kills every process left inside by PID).
//!
//! [`Libvirtd::start`] panics if libvirtd, virsh or dnsmasq is missing: the tests that need them fail loudly,
//! never skip.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::netns::{check_test_address, output_of, Netns, NsChild};

/// The TCP probe of both families (it lived here for IPv4 before the dual-stack tests).
pub use crate::dualstack::tcp_probe;

/// What libvirtd runs inside its own mount namespace: private /run, /etc/libvirt and /var/*/libvirt, only the
/// network driver, then `exec libvirtd` (so the PID stays libvirtd's).
const START_SCRIPT: &str = r#"#!/bin/sh
set -eu
D=$1
mount --make-rprivate /
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/libvirt "$D/run"
mount --bind "$D/run" /run/libvirt
mount --bind "$D/etc" /etc/libvirt
for x in lib log cache; do
  mkdir -p "$D/overlay-$x/upper" "$D/overlay-$x/work"
  mount -t overlay overlay -o "lowerdir=/var/$x,upperdir=$D/overlay-$x/upper,workdir=$D/overlay-$x/work" "/var/$x"
  mkdir -p "/var/$x/libvirt"
done
# With the QEMU driver: its guests' monitor sockets live in /var/lib/libvirt/qemu, which must be a plain bind
# mount (the same inodes after a restart in a new mount namespace; a socket reached through a new overlay
# mount refuses connections, and libvirtd then kills the guest it cannot reconnect to).
if [ -f "$D/passwd" ]; then
  mkdir -p "$D/qemu-lib" /var/lib/libvirt/qemu
  mount --bind "$D/qemu-lib" /var/lib/libvirt/qemu
fi
# With the QEMU driver: its compiled-in default user libvirt-qemu must resolve before qemu.conf (user = "root")
# is read; copies of passwd and group that name it are bound over the real ones in this mount namespace only.
if [ -f "$D/passwd" ]; then
  mount --bind "$D/passwd" /etc/passwd
  mount --bind "$D/group" /etc/group
fi
export LIBVIRT_DRIVER_DIR="$D/drivers"
exec /usr/sbin/libvirtd
"#;

/// Panics, saying what to install, unless libvirtd (Debian's `libvirt-daemon`, with its network driver),
/// `virsh` (`libvirt-clients`), dnsmasq (`dnsmasq-base`) and iptables are there.
pub fn require_libvirt() {
    let install = "apt-get install --no-install-recommends libvirt-daemon libvirt-clients dnsmasq-base iptables \
                   (or run scripts/setup test); this test never skips";
    for bin in ["/usr/sbin/libvirtd", "/usr/sbin/dnsmasq"] {
        assert!(Path::new(bin).exists(), "{bin} is missing: {install}");
    }
    for (tool, arg) in [("virsh", "--version"), ("iptables", "-V")] {
        match Command::new(tool).arg(arg).stdin(Stdio::null()).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => panic!("`{tool} {arg}` failed ({}): {install}", o.status),
            Err(e) => panic!("`{tool}` cannot run ({e}): {install}"),
        }
    }
    network_driver();
}

/// libvirt's network driver module.
fn network_driver() -> PathBuf {
    let found = fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            e.path()
                .join("libvirt/connection-driver/libvirt_driver_network.so")
        })
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!(
            "libvirt's network driver (/usr/lib/*/libvirt/connection-driver/libvirt_driver_network.so) is missing: \
             apt-get install --no-install-recommends libvirt-daemon"
        )
    })
}

/// One libvirtd in a hypervisor namespace; killed by PID when dropped.
#[derive(Debug)]
pub struct Libvirtd {
    ns: Netns,
    dir: PathBuf,
    child: Option<NsChild>,
}

impl Libvirtd {
    /// What this libvirtd sees as /etc/libvirt, under its work folder `dir`: write hooks (`hooks/network`)
    /// here before [`Libvirtd::start`], since libvirtd looks for them only when it starts.
    pub fn etc_dir(dir: &Path) -> PathBuf {
        dir.join("etc")
    }

    /// Starts libvirtd in `ns` with its private folders under `dir`; returns once `virsh` reaches it.
    pub fn start(ns: &Netns, dir: &Path) -> Libvirtd {
        Self::start_drivers(ns, dir, false)
    }

    /// [`Libvirtd::start`] with libvirt's QEMU driver too, so that it runs real guests ([`Libvirtd::virsh_qemu`],
    /// `<domain type='qemu'>`): as root, without cgroups, mount namespaces or a security driver (none of which
    /// a hypervisor namespace without systemd has), its state in the private folders.
    pub fn start_with_qemu(ns: &Netns, dir: &Path) -> Libvirtd {
        Self::start_drivers(ns, dir, true)
    }

    fn start_drivers(ns: &Netns, dir: &Path, qemu: bool) -> Libvirtd {
        require_libvirt();
        for d in ["etc", "run", "drivers"] {
            fs::create_dir_all(dir.join(d)).expect("libvirtd folders");
        }
        let mut drivers = vec![network_driver()];
        if qemu {
            let q = network_driver().with_file_name("libvirt_driver_qemu.so");
            assert!(
                q.exists(),
                "{} is missing: apt-get install --no-install-recommends libvirt-daemon-driver-qemu qemu-system-x86",
                q.display()
            );
            drivers.push(q);
            // See START_SCRIPT: libvirt-qemu (and kvm) for the QEMU driver's defaults; never on the host.
            let mut passwd = fs::read_to_string("/etc/passwd").expect("/etc/passwd");
            if !passwd.contains("\nlibvirt-qemu:") {
                passwd += "libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin\n";
            }
            let mut group = fs::read_to_string("/etc/group").expect("/etc/group");
            for g in ["libvirt-qemu:x:64055:", "kvm:x:64056:"] {
                let name = g.split(':').next().unwrap_or(g);
                if !group.contains(&format!("\n{name}:")) {
                    group += &format!("{g}\n");
                }
            }
            fs::write(dir.join("passwd"), passwd).expect("passwd copy");
            fs::write(dir.join("group"), group).expect("group copy");
            fs::write(
                Self::etc_dir(dir).join("qemu.conf"),
                "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\n\
                 security_driver = \"none\"\ncgroup_controllers = [ ]\nnamespaces = [ ]\nstdio_handler = \"file\"\n",
            )
            .expect("qemu.conf");
        }
        for d in drivers {
            let link = dir
                .join("drivers")
                .join(d.file_name().expect("driver file"));
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&d, &link).expect("driver link");
        }
        // No polkit and no D-Bus in here: the socket is guarded by its folder, which only root can reach.
        fs::write(
            Self::etc_dir(dir).join("libvirtd.conf"),
            "auth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\nunix_sock_group = \"root\"\n",
        )
        .expect("libvirtd.conf");
        fs::write(dir.join("start.sh"), START_SCRIPT).expect("start script");
        let mut l = Libvirtd {
            ns: ns.clone(),
            dir: dir.to_owned(),
            child: None,
        };
        l.spawn();
        l
    }

    fn spawn(&mut self) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("libvirtd.log"))
            .expect("libvirtd log");
        let mut cmd = self.ns.command("unshare");
        cmd.args(["-m", "--propagation", "private", "sh"])
            .arg(self.dir.join("start.sh"))
            .arg(&self.dir)
            .stdout(Stdio::from(log.try_clone().expect("dup")))
            .stderr(Stdio::from(log));
        self.child = Some(self.ns.spawn(&mut cmd));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = output_of(&mut self.virsh_cmd(&["net-list", "--all"]));
            if out.status.success() {
                return;
            }
            if let Some(s) = self.child.as_mut().and_then(|c| c.try_wait()) {
                panic!("libvirtd exited ({s}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!(
                    "libvirtd in {} not reachable after 20 s: {}\n{}",
                    self.ns.name(),
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Its PID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").pid()
    }

    /// Its log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("libvirtd.log")).unwrap_or_default()
    }

    fn virsh_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("virsh");
        c.arg("-c")
            .arg(format!(
                "network:///system?socket={}",
                self.dir.join("run/libvirt-sock").display()
            ))
            .args(args)
            .stdin(Stdio::null());
        c
    }

    /// The QEMU driver's connection to this libvirtd (started with [`Libvirtd::start_with_qemu`]), which stays
    /// valid across [`Libvirtd::restart`].
    pub fn qemu(&self) -> QemuConn {
        QemuConn {
            socket: self.dir.join("run/libvirt-sock"),
            log: self.dir.join("libvirtd.log"),
        }
    }

    /// `virsh ARGS` against this libvirtd; panics with its output and libvirtd's log if it fails.
    pub fn virsh(&self, args: &[&str]) -> String {
        let out = output_of(&mut self.virsh_cmd(args));
        if !out.status.success() {
            panic!(
                "virsh {args:?} failed ({}): {}{}\n--- libvirtd log ---\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.log()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Defines and starts NAT network `name`: bridge `virbr0` at 198.19.`n`.1/24, DHCP from .100 to .200 (the
    /// test's VMs use .10, outside the range).
    pub fn define_nat_network(&self, name: &str, n: u8) {
        self.define_network(name, n, Some("nat"));
    }

    /// Defines and starts network `name` on bridge `virbr0` at 198.19.`n`.1/24 with `<forward mode='MODE'/>`
    /// (`nat`, `route`, ...), or isolated (no `<forward>`) for `None`; DHCP from .100 to .200.
    pub fn define_network(&self, name: &str, n: u8, mode: Option<&str>) {
        let gw = format!("198.19.{n}.1");
        check_test_address(&gw);
        let forward = mode.map_or(String::new(), |m| format!("\n  <forward mode='{m}'/>"));
        let xml = format!(
            "<network>\n  <name>{name}</name>{forward}\n  \
             <bridge name='virbr0' stp='off' delay='0'/>\n  <ip address='{gw}' netmask='255.255.255.0'>\n    \
             <dhcp><range start='198.19.{n}.100' end='198.19.{n}.200'/></dhcp>\n  </ip>\n</network>\n"
        );
        self.define_network_xml(name, &xml);
    }

    /// Defines and starts network `name` from its XML as given (a test's own addresses only).
    pub fn define_network_xml(&self, name: &str, xml: &str) {
        let file = self.dir.join(format!("{name}.xml"));
        fs::write(&file, xml).expect("network xml");
        self.virsh(&["net-define", &file.display().to_string()]);
        self.virsh(&["net-start", name]);
    }

    /// Kills libvirtd by its PID (SIGTERM, then SIGKILL after 5 s) and starts it again; its networks stay up,
    /// as on a real host, and it re-creates their firewall rules.
    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.signal("TERM");
            if c.wait_timeout(Duration::from_secs(5)).is_none() {
                c.kill();
            }
        }
        self.spawn();
    }
}

/// Checks that in `ns` every vmsecd rule of filter FORWARD and nat POSTROUTING sits above every `LIBVIRT_`
/// jump, and that there is at least one of each; the reason otherwise (with the chains).
pub fn vmsecd_rules_lead(ns: &Netns) -> Result<(), String> {
    for (table, chain) in [("filter", "FORWARD"), ("nat", "POSTROUTING")] {
        let rules = ns.run("iptables", &["-w", "-t", table, "-S", chain]);
        let lines: Vec<&str> = rules.lines().filter(|l| l.starts_with("-A ")).collect();
        let ours: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].contains("vmsecd:"))
            .collect();
        let first_libvirt = lines
            .iter()
            .position(|l| l.contains("-j LIBVIRT_") || l.contains("-g LIBVIRT_"));
        if ours.is_empty() {
            return Err(format!("no vmsecd rule in {table} {chain}:\n{rules}"));
        }
        if let Some(f) = first_libvirt {
            if ours.iter().any(|&i| i > f) {
                return Err(format!(
                    "a libvirt jump is above vmsecd's rules in {table} {chain}:\n{rules}"
                ));
            }
        }
    }
    Ok(())
}

/// Every rule line of every table in `ns` (`iptables-save` without its comment and counter lines).
pub fn ruleset(ns: Option<&Netns>) -> String {
    let out = match ns {
        Some(ns) => ns.run("iptables-save", &[]),
        None => crate::netns::run_checked(&mut Command::new("iptables-save")),
    };
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.find(" [") {
            Some(i) if l.starts_with(':') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Opens one TCP connection from `client` to `server_addr:port`, where a one-shot server in `server` answers
/// with the peer address it saw. `Ok(address the server saw)`, or `Err` with why the connection failed
/// (refused by a REJECT, timed out, ...).
pub fn tcp_seen_source(
    server: &Netns,
    client: &Netns,
    server_addr: &str,
    port: u16,
) -> Result<String, String> {
    tcp_probe(server, client, server_addr, port).map(|(addr, _)| addr)
}

/// What libvirt 10.4 and newer does with its nftables backend (`firewall_backend = "nftables"`) when it starts
/// a NAT network on `bridge` with 198.19.`n`.0/24, command for command as its src/network/network_nftables.c
/// issues them: its table `ip libvirt_network` with base chains `forward` (filter) and `guest_nat` (srcnat),
/// and the network's rules inserted at the top of its chains. Debian 12 has libvirt 9.0, which cannot do this,
/// so tests that need libvirt's nftables layout build it with this.
pub fn libvirt_nftables_network(ns: &Netns, bridge: &str, n: u8) {
    let net = format!("198.19.{n}.0/24");
    check_test_address(&net);
    let script = format!(
        "add table ip libvirt_network\n\
         add chain ip libvirt_network forward {{ type filter hook forward priority 0; policy accept; }}\n\
         add chain ip libvirt_network guest_output\n\
         add chain ip libvirt_network guest_input\n\
         add chain ip libvirt_network guest_cross\n\
         add chain ip libvirt_network guest_nat {{ type nat hook postrouting priority 100; policy accept; }}\n\
         {jumps}\
         {rules}",
        jumps = if ns
            .output("nft", &["list", "chain", "ip", "libvirt_network", "forward"])
            .status
            .success()
        {
            String::new()
        } else {
            "insert rule ip libvirt_network forward counter jump guest_output\n\
             insert rule ip libvirt_network forward counter jump guest_input\n\
             insert rule ip libvirt_network forward counter jump guest_cross\n"
                .to_owned()
        },
        rules = libvirt_nftables_network_rules(bridge, &net),
    );
    let mut cmd = ns.command("nft");
    cmd.args(["-f", "-"]).stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("nft");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("nft script");
    let out = child.wait_with_output().expect("nft");
    assert!(
        out.status.success(),
        "nft -f failed: {}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network's rules as libvirt's nftables backend inserts them (each at the top of its chain).
fn libvirt_nftables_network_rules(bridge: &str, net: &str) -> String {
    format!(
        "insert rule ip libvirt_network guest_output iif {bridge} counter reject\n\
         insert rule ip libvirt_network guest_input oif {bridge} counter reject\n\
         insert rule ip libvirt_network guest_cross iif {bridge} oif {bridge} counter accept\n\
         insert rule ip libvirt_network guest_output ip saddr {net} iif {bridge} counter accept\n\
         insert rule ip libvirt_network guest_input oif {bridge} ip daddr {net} ct state related,established counter accept\n\
         insert rule ip libvirt_network guest_nat ip saddr {net} ip daddr != {net} counter masquerade\n\
         insert rule ip libvirt_network guest_nat ip saddr {net} ip daddr 255.255.255.255/32 counter return\n\
         insert rule ip libvirt_network guest_nat ip saddr {net} ip daddr 224.0.0.0/24 counter return\n"
    )
}

/// Checks that in `ns` vmsecd's rules are the first rules of libvirt's nftables chains `guest_input` and
/// `guest_output`, and that vmsecd's own table `ip vmsecd` is there; the reason otherwise.
pub fn vmsecd_nft_rules_lead(ns: &Netns) -> Result<(), String> {
    let own = ns.output("nft", &["list", "table", "ip", "vmsecd"]);
    if !own.status.success() {
        return Err("no table ip vmsecd".to_owned());
    }
    for chain in ["guest_input", "guest_output"] {
        let out = ns.run("nft", &["list", "chain", "ip", "libvirt_network", chain]);
        let rules: Vec<&str> = out
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("accept") || l.contains("reject"))
            .collect();
        match rules.first() {
            Some(first) if first.contains("vmsecd:") => {}
            _ => return Err(format!("vmsecd's rule is not first in {chain}:\n{out}")),
        }
    }
    Ok(())
}

/// `virsh net-destroy` + `net-start` as libvirt's nftables backend does it: the network's rules are deleted
/// (here: its chains flushed, which takes vmsecd's rules in them along) and inserted again at the top.
pub fn libvirt_nftables_network_restart(ns: &Netns, bridge: &str, n: u8) {
    for chain in ["guest_output", "guest_input", "guest_cross", "guest_nat"] {
        ns.run("nft", &["flush", "chain", "ip", "libvirt_network", chain]);
    }
    libvirt_nftables_network(ns, bridge, n);
}

/// `virsh -c qemu:///system` towards one test libvirtd ([`Libvirtd::qemu`]).
#[derive(Debug, Clone)]
pub struct QemuConn {
    socket: PathBuf,
    log: PathBuf,
}

impl QemuConn {
    /// `virsh -c qemu:///system ARGS`: `(success, stdout and stderr)`.
    pub fn virsh(&self, args: &[&str]) -> (bool, String) {
        let out = output_of(
            Command::new("virsh")
                .arg("-c")
                .arg(format!("qemu:///system?socket={}", self.socket.display()))
                .args(args)
                .stdin(Stdio::null()),
        );
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// libvirtd's log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}
