//! Kernel IPsec peers in a Linux guest (see [`crate::guest`]): the bed, strongSwan's charon with kernel-netlink
//! (XFRM), and the checks every established case makes (SPIs and algorithms on both sides, every byte of TCP and
//! UDP both ways, an underlay carrying only IKE and ESP of the expected framing).
//!
//! ```text
//!  avm 198.19.1.10 -- virbr0 198.19.1.1 [a: vmsecd, tb0 198.18.0.1] ==tap== [guest b: eth0 198.18.0.2
//!                                           eth1 198.19.2.1] ==tap== [bvm: vm0 198.19.2.10]
//! ```
//!
//! The guest is the gateway of its VM subnet like a real strongSwan or libreswan host: `bvm` is a namespace of the
//! test on the guest's second NIC, so the traffic helpers of [`crate::traffic`] run unchanged between `avm` and
//! `bvm`, and the guest's kernel forwards between its VM NIC and its XFRM policies.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::guest::{self, Guest, GuestLock, GuestOutput, Nic};
use crate::netns::{Netns, NetnsGuard};
use crate::strongswan::{self, parse_list_sas, Conn, IkeSaInfo};
use crate::traffic::{self, Capture, Captured};
use crate::vmsecd::{peer, Status, Vmsecd};

/// vmsecd's underlay address (host a).
pub const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The guest's underlay address (host b).
pub const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The VM behind vmsecd.
pub const AVM: &str = "198.19.1.10";
/// The VM behind the guest.
pub const BVM: &str = "198.19.2.10";

/// One test's world: see the module documentation. Fields drop in order: the guest before the lock, both before
/// the namespaces.
pub struct GuestBed {
    /// The guest (host b).
    pub guest: Guest,
    _lock: GuestLock,
    /// vmsecd's hypervisor.
    pub a: Netns,
    /// The VM behind `a`.
    pub avm: Netns,
    /// The VM behind the guest.
    pub bvm: Netns,
    /// The namespaces and the work directory.
    pub g: NetnsGuard,
    /// The test's name, for its log lines.
    pub name: String,
    work: std::path::PathBuf,
    started: Instant,
}

impl GuestBed {
    /// Creates the namespaces, boots the guest (`mem_mb`) and configures both ends.
    pub fn new(prefix: &str, name: &str, mem_mb: u32) -> GuestBed {
        let started = Instant::now();
        let mut g = NetnsGuard::new(&format!("{prefix}-{name}"));
        let a = g.add_ns("a");
        let avm = g.vm_subnet(&a, 1, "avm");
        let bvm = g.add_ns("bvm");
        let lock = guest::lock();
        let work = g.dir();
        let dir = work.join("guest");
        let guest = Guest::boot(
            &lock,
            &dir,
            "b",
            &[Nic::new(&a, "tb0"), Nic::new(&bvm, "vm0")],
            mem_mb,
        );
        g.add_addr(&a, "tb0", "198.18.0.1/24");
        g.add_addr(&bvm, "vm0", "198.19.2.10/24");
        bvm.ip(&["route", "add", "default", "via", "198.19.2.1"]);
        let bed = GuestBed {
            guest,
            _lock: lock,
            a,
            avm,
            bvm,
            g,
            name: name.to_owned(),
            work,
            started,
        };
        bed.configure_guest();
        bed
    }

    /// The guest's addresses and forwarding (again after [`Guest::boot_again`]).
    pub fn configure_guest(&self) {
        configure_gateway(&self.guest, "198.18.0.2/24", "198.19.2.1/24");
    }

    /// A subdirectory of the test's work directory, created.
    pub fn dir(&self, sub: &str) -> std::path::PathBuf {
        let d = self.work.join(sub);
        std::fs::create_dir_all(&d).expect("test dir");
        d
    }

    /// A capture of the underlay at `a`'s tap.
    pub fn capture(&self, name: &str) -> Capture {
        let d = self.dir("capture");
        Capture::start(&self.a, "tb0", &d.join(format!("{name}.pcap")))
    }

    /// `a`'s firewall drops every IKE_SA_INIT request vmsecd sends (so that the guest's daemon initiates), or
    /// stops doing so.
    pub fn block_vmsecd_initiation(&self, on: bool) {
        let _ = self.a.output("nft", &["delete", "table", "ip", "vt"]);
        if on {
            let rules = "table ip vt {\n  chain out {\n    type filter hook output priority 0; policy accept;\n    \
                         udp dport 500 @th,208,8 34 @th,218,1 0 counter drop\n  }\n}\n";
            let file = self.dir("nft").join("block-init.nft");
            std::fs::write(&file, rules).expect("nft rules");
            self.a.run("nft", &["-f", file.to_str().expect("UTF-8")]);
        }
    }
}

impl Drop for GuestBed {
    fn drop(&mut self) {
        eprintln!(
            "[{}] {:.1} s{}",
            self.name,
            self.started.elapsed().as_secs_f64(),
            if std::thread::panicking() {
                " (failed)"
            } else {
                ""
            }
        );
    }
}

/// A guest as the IPsec gateway of its VM subnet: `underlay` (CIDR) on eth0, `vm_side` on eth1, forwarding, a
/// stateful firewall, and the kernel's IPsec modules loaded.
pub fn configure_gateway(guest: &Guest, underlay: &str, vm_side: &str) {
    crate::netns::check_test_address(underlay);
    crate::netns::check_test_address(vm_side);
    guest.run(&format!(
            "ip addr add {underlay} dev eth0 && ip addr add {vm_side} dev eth1 && sysctl -qw net.ipv4.ip_forward=1"
        ));
    // A stateful firewall on the gateway, as real ones have: conntrack reassembles the VMs' fragmented
    // datagrams before they are forwarded, so the guest encrypts whole 8 KB datagrams and fragments the ESP
    // packets, which a's kernel reassembles to far more than vmsecd's MTU before its raw socket reads them.
    guest.write_file(
            "/tmp/gw.nft",
            b"table inet gw {\n  chain forwarded {\n    type filter hook forward priority 0; policy accept;\n    \
              ct state invalid counter drop\n  }\n}\n",
        );
    guest.run("nft -f /tmp/gw.nft");
    // Under TCG the first XFRM state takes seconds of module loading: do it now, not inside an IKE_AUTH
    // (a peer retransmits meanwhile).
    guest.run(
            "for m in xfrm_user xfrm4_tunnel esp4 ah4 ipcomp authenc authencesn echainiv seqiv gcm ghash_generic \
             aesni_intel aes_generic cbc hmac sha256_generic sha512_generic chacha20poly1305 chacha_generic \
             poly1305_generic; do modprobe -q $m 2>/dev/null; done; true",
        );
}

/// Where a guest charon keeps its files (in the guest's own tmpfs).
const CHARON_DIR: &str = "/tmp/charon";

/// strongSwan's charon in the guest with the kernel's ESP (kernel-netlink: XFRM states, policies, and routes in
/// table 220), started with a private `strongswan.conf` (`STRONGSWAN_CONF`), driven with swanctl.
pub struct GuestCharon<'g> {
    guest: &'g Guest,
    pid: u32,
}

impl<'g> GuestCharon<'g> {
    /// Writes the configuration, starts charon, waits for VICI and loads `conns`.
    pub fn start(guest: &'g Guest, conns: &[Conn]) -> GuestCharon<'g> {
        strongswan::require_charon();
        let dir = Path::new(CHARON_DIR);
        let debug = std::env::var_os("VT_CHARON_DEBUG").is_some();
        let plugins = strongswan::kernel_plugins();
        guest.write_file(
            &format!("{CHARON_DIR}/strongswan.conf"),
            strongswan::strongswan_conf_with(dir, debug, &plugins).as_bytes(),
        );
        guest.write_file(
            &format!("{CHARON_DIR}/swanctl/swanctl.conf"),
            strongswan::swanctl_conf(conns).as_bytes(),
        );
        guest.run(&format!(
            "chmod 600 {CHARON_DIR}/swanctl/swanctl.conf; mkdir -p {CHARON_DIR}/swanctl/x509 \
             {CHARON_DIR}/swanctl/x509ca {CHARON_DIR}/swanctl/private {CHARON_DIR}/swanctl/pubkey"
        ));
        let pid = guest.spawn(
            &format!(
                "export STRONGSWAN_CONF={CHARON_DIR}/strongswan.conf\nexec /usr/lib/ipsec/charon\n"
            ),
            &format!("{CHARON_DIR}/charon.out"),
        );
        let c = GuestCharon { guest, pid };
        let deadline = Instant::now() + Duration::from_secs(60);
        while c.swanctl(&["--stats"]).code != 0 {
            assert!(
                Instant::now() < deadline,
                "charon in the guest: no VICI after 60 s\n{}",
                c.diagnostics()
            );
            sleep(Duration::from_millis(200));
        }
        c.swanctl_ok(&["--load-all", "--noprompt"]);
        c
    }

    /// Copies a file of the host into charon's `swanctl/SUB/` (keys and certificates).
    pub fn put(&self, sub: &str, host_file: &Path) {
        let name = host_file
            .file_name()
            .and_then(|n| n.to_str())
            .expect("file name");
        let data = std::fs::read(host_file).expect("read the file for the guest");
        self.guest
            .write_file(&format!("{CHARON_DIR}/swanctl/{sub}/{name}"), &data);
    }

    /// charon's PID in the guest.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// `swanctl ARGS` in the guest, whatever its exit code.
    pub fn swanctl(&self, args: &[&str]) -> GuestOutput {
        let mut cmd = format!(
            "STRONGSWAN_CONF={CHARON_DIR}/strongswan.conf SWANCTL_DIR={CHARON_DIR}/swanctl swanctl"
        );
        for a in args {
            let _ = write!(cmd, " '{a}'");
        }
        self.guest.exec_timeout(&cmd, Duration::from_secs(90))
    }

    /// `swanctl ARGS`; panics with its output and charon's log if it fails. Returns stdout.
    pub fn swanctl_ok(&self, args: &[&str]) -> String {
        let out = self.swanctl(args);
        assert!(
            out.code == 0,
            "swanctl {args:?} failed ({}):\n{}\n{}\n{}",
            out.code,
            out.stdout,
            out.stderr,
            self.diagnostics()
        );
        out.stdout
    }

    /// Replaces the configuration with `conns` and loads it (what is gone is unloaded).
    pub fn reload(&self, conns: &[Conn]) {
        self.guest.write_file(
            &format!("{CHARON_DIR}/swanctl/swanctl.conf"),
            strongswan::swanctl_conf(conns).as_bytes(),
        );
        self.swanctl_ok(&["--load-all", "--noprompt"]);
    }

    /// `swanctl --initiate --child CHILD`.
    pub fn initiate(&self, child: &str, timeout_secs: u32) -> GuestOutput {
        self.swanctl(&[
            "--initiate",
            "--child",
            child,
            "--timeout",
            &timeout_secs.to_string(),
        ])
    }

    /// The SAs charon has now.
    pub fn list_sas(&self) -> Vec<IkeSaInfo> {
        parse_list_sas(&self.swanctl_ok(&["--list-sas", "--raw"]))
    }

    /// charon's log so far.
    pub fn log(&self) -> String {
        self.guest
            .exec(&format!("cat {CHARON_DIR}/charon.log"))
            .stdout
    }

    /// The end of charon's log, its output and the guest's XFRM state, for failure messages.
    pub fn diagnostics(&self) -> String {
        let out = self.guest.exec(&format!(
            "tail -n 80 {CHARON_DIR}/charon.log; echo '--- charon.out ---'; cat {CHARON_DIR}/charon.out; \
             echo '--- ip xfrm state ---'; ip xfrm state; echo '--- ip xfrm policy ---'; ip xfrm policy"
        ));
        format!("--- guest charon ---\n{}{}", out.stdout, out.stderr)
    }

    /// Stops charon (SIGTERM, then waits up to 10 s for it).
    pub fn stop(self) {
        self.guest.exec(&format!(
            "kill {p}; for i in $(seq 100); do kill -0 {p} 2>/dev/null || exit 0; sleep 0.1; done; kill -9 {p}",
            p = self.pid
        ));
    }
}

/// One IKE SA as either kernel peer reports it, in vmsecd's notation, to compare with vmsecd's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerSa {
    /// Initiator SPI (16 hex digits).
    pub spi_i: String,
    /// Responder SPI.
    pub spi_r: String,
    /// True if the peer initiated it.
    pub peer_initiated: bool,
    /// IKE algorithms (`AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519`); empty if the peer does not say.
    pub algorithms: String,
    /// Installed Child SAs: (peer's inbound SPI, peer's outbound SPI, algorithms, ESP in UDP).
    pub children: Vec<(String, String, String, bool)>,
}

impl From<&IkeSaInfo> for PeerSa {
    fn from(s: &IkeSaInfo) -> PeerSa {
        PeerSa {
            spi_i: s.spi_i.clone(),
            spi_r: s.spi_r.clone(),
            peer_initiated: s.charon_initiated,
            algorithms: s.algorithms.clone(),
            children: s
                .children
                .iter()
                .filter(|c| c.state == "INSTALLED")
                .map(|c| {
                    (
                        c.spi_in.clone(),
                        c.spi_out.clone(),
                        c.algorithms.clone(),
                        c.encap,
                    )
                })
                .collect(),
        }
    }
}

/// What a case expects both sides to agree on.
#[derive(Debug, Clone)]
pub struct Expect<'a> {
    /// vmsecd's name for the peer.
    pub peer: &'a str,
    /// True if vmsecd initiated the IKE SA.
    pub vmsecd_initiated: bool,
    /// IKE algorithms in vmsecd's notation.
    pub ike_alg: &'a str,
    /// ESP algorithms in vmsecd's notation.
    pub esp_alg: &'a str,
    /// ESP in UDP 4500 (else raw protocol 50).
    pub udp: bool,
}

/// Polls until vmsecd and the peer (`peer_sas`, polled too) hold the same established IKE SA with exactly one
/// installed Child SA whose SPIs match crosswise; returns both views. Panics after `timeout` with `diag()`.
pub fn wait_agree(
    v: &Vmsecd,
    peer_name: &str,
    mut peer_sas: impl FnMut() -> Vec<PeerSa>,
    timeout: Duration,
    diag: &dyn Fn() -> String,
) -> (Status, PeerSa) {
    let deadline = Instant::now() + timeout;
    loop {
        let st = v.status().ok();
        let sas = peer_sas();
        if let Some(st) = st {
            if let Some(p) = st.peers.iter().find(|p| p.name == peer_name) {
                if let (Some(ike), [child]) = (&p.ike, &p.children[..]) {
                    // A peer whose IKE SPIs are unknown (libreswan: its view comes from the kernel) has one entry.
                    let same: Vec<&PeerSa> = sas
                        .iter()
                        .filter(|s| s.spi_i.is_empty() || s.spi_i == ike.spi_i)
                        .collect();
                    if let [sa] = same[..] {
                        if let [(pin, pout, _, _)] = &sa.children[..] {
                            if *pin == child.spi_out && *pout == child.spi_in {
                                return (st.clone(), sa.clone());
                            }
                        }
                    }
                }
            }
        }
        if Instant::now() > deadline {
            panic!(
                "vmsecd and the peer do not agree on one IKE SA with one Child SA after {timeout:?}\nvmsecd: \
                 {:#?}\npeer: {sas:#?}\n{}",
                v.status(),
                diag()
            );
        }
        sleep(Duration::from_millis(250));
    }
}

/// Both sides agree on the SAs: IKE SPIs, roles, algorithms, Child SPIs crosswise, the ESP framing.
pub fn check_agree(st: &Status, sa: &PeerSa, e: &Expect) {
    let p = peer(st, e.peer);
    let ike = p.ike.as_ref().expect("IKE SA");
    let ctx = format!("vmsecd: {p:#?}\npeer: {sa:#?}");
    // A peer view without IKE SPIs (libreswan's, read from the kernel's XFRM states) leaves the IKE SA to
    // vmsecd's side: its Child SAs are compared below.
    if !sa.spi_i.is_empty() {
        assert_eq!(
            (ike.spi_i.as_str(), ike.spi_r.as_str()),
            (sa.spi_i.as_str(), sa.spi_r.as_str()),
            "IKE SPIs differ\n{ctx}"
        );
        assert_eq!(
            sa.peer_initiated, !e.vmsecd_initiated,
            "the peer's role\n{ctx}"
        );
    }
    assert_eq!(ike.initiator, e.vmsecd_initiated, "vmsecd's role\n{ctx}");
    assert_eq!(ike.algorithms, e.ike_alg, "vmsecd's IKE algorithms\n{ctx}");
    if !sa.algorithms.is_empty() {
        assert_eq!(sa.algorithms, e.ike_alg, "the peer's IKE algorithms\n{ctx}");
    }
    assert_eq!(
        ike.udp_encap, e.udp,
        "vmsecd's ESP framing (true: UDP)\n{ctx}"
    );
    assert_eq!(p.children.len(), 1, "one Child SA in vmsecd\n{ctx}");
    assert_eq!(sa.children.len(), 1, "one Child SA in the peer\n{ctx}");
    let (ours, (pin, pout, palg, pencap)) = (&p.children[0], &sa.children[0]);
    assert_eq!(
        &ours.spi_in, pout,
        "vmsecd's inbound SPI is the peer's outbound\n{ctx}"
    );
    assert_eq!(
        &ours.spi_out, pin,
        "vmsecd's outbound SPI is the peer's inbound\n{ctx}"
    );
    // vmsecd names the PFS group of a Child SA's proposal too; the kernel's state (libreswan's view) has none.
    let ours_alg = [
        "/CURVE_25519",
        "/ECP_256",
        "/ECP_384",
        "/MODP_2048",
        "/MODP_3072",
    ]
    .iter()
    .fold(ours.algorithms.as_str(), |a, g| {
        a.strip_suffix(g).unwrap_or(a)
    });
    assert_eq!(ours_alg, e.esp_alg, "vmsecd's ESP algorithms\n{ctx}");
    assert_eq!(palg, e.esp_alg, "the peer's ESP algorithms\n{ctx}");
    assert_eq!(*pencap, e.udp, "the peer's ESP framing (true: UDP)\n{ctx}");
}

/// Pings both ways until answered, then checks every byte of `flows` TCP connections of `bytes` each and of `datagrams` UDP
/// datagrams (1 byte to past the MTU) each way between the VMs.
pub fn check_traffic(
    avm: &Netns,
    bvm: &Netns,
    flows: u32,
    bytes: u32,
    datagrams: u32,
    diag: &dyn Fn() -> String,
) {
    // Reachability first (a guest under TCG on a loaded machine may answer a ping after ping's 1 s wait: no
    // count of echoes is demanded); the byte checks below are the real test.
    for (from, to, what) in [(avm, BVM, "a -> b"), (bvm, AVM, "b -> a")] {
        assert!(
            traffic::ping_until_ok(from, to, Duration::from_secs(20)),
            "ping {what}: no answer in 20 s\n{}",
            diag()
        );
    }
    for (server, client, addr, dir) in [(bvm, avm, BVM, "a -> b"), (avm, bvm, AVM, "b -> a")] {
        assert_eq!(
            traffic::udp_intact(server, client, addr, datagrams),
            (datagrams, 0),
            "UDP {dir}: datagrams intact, damaged\n{}",
            diag()
        );
        let intact = traffic::tcp_intact(server, client, addr, flows, bytes);
        assert_eq!(
            intact,
            flows,
            "TCP {dir}: {intact} of {flows} connections arrived intact\n{}",
            diag()
        );
    }
}

/// The frames that do not belong on the underlay: between A and B, with `udp`, anything but UDP between ports
/// 500/4500; without, anything but raw ESP (protocol 50) and IKE (UDP 500, or 4500 behind the non-ESP marker).
/// IP fragments after the first carry no ports: they are taken as part of their datagram (the first fragment
/// is checked). Anywhere: an inner address in an IP header, or the source and destination of a packet between
/// the VMs in clear in a payload. Returns (offenders, ESP packets seen, IKE datagrams seen).
pub fn underlay_offenders(cap: &Captured, udp: bool) -> (Vec<String>, usize, usize) {
    let vms: [Ipv4Addr; 2] = [AVM.parse().expect("addr"), BVM.parse().expect("addr")];
    let inner = |x: Ipv4Addr| x.octets()[..2] == [198, 19];
    let mut pairs = Vec::new();
    for x in vms {
        for y in vms {
            if x != y {
                let mut p = x.octets().to_vec();
                p.extend_from_slice(&y.octets());
                pairs.push(p);
            }
        }
    }
    let clear = |payload: &[u8]| payload.windows(8).any(|w| pairs.iter().any(|p| p == w));
    let ike_port = |p: Option<u16>| matches!(p, Some(500) | Some(4500));
    let (mut bad, mut esp, mut ike) = (Vec::new(), 0, 0);
    for f in &cap.ipv4 {
        let between = (f.src == A && f.dst == B) || (f.src == B && f.dst == A);
        let udp_ike_ports = f.proto == 17 && ike_port(f.sport) && ike_port(f.dport);
        let marker = f.payload.starts_with(&[0; 4]);
        let keepalive = f.payload == [0xff];
        let udp_esp = udp_ike_ports && f.sport == Some(4500) && !marker && !keepalive;
        let why = if inner(f.src) || inner(f.dst) {
            Some("inner address in the IP header")
        } else if clear(&f.payload) {
            Some("inner addresses in clear in the payload")
        } else if !between {
            None
        } else if f.later_fragment {
            (f.proto != if udp { 17 } else { 50 } && f.proto != 17)
                .then_some("a fragment of something else")
        } else if f.proto == 50 {
            esp += 1;
            udp.then_some("raw ESP where ESP in UDP was expected")
        } else if udp_esp {
            esp += 1;
            (!udp).then_some("ESP in UDP where raw ESP was expected")
        } else if udp_ike_ports {
            ike += 1;
            None
        } else {
            Some("neither IKE nor ESP")
        };
        if let Some(why) = why {
            bad.push(format!(
                "{:.3}s {} > {} proto {} ports {:?} > {:?}: {why}",
                f.t, f.src, f.dst, f.proto, f.sport, f.dport
            ));
        }
    }
    (bad, esp, ike)
}

/// Asserts the capture carries only the expected framing, and enough ESP and IKE to show the case happened.
pub fn check_capture(cap: &Captured, udp: bool, what: &str) {
    let (bad, esp, ike) = underlay_offenders(cap, udp);
    assert!(
        bad.is_empty(),
        "{what}: the underlay carried {} frames that do not belong ({}):\n{}",
        bad.len(),
        if udp {
            "only UDP 500/4500 expected"
        } else {
            "only raw ESP and IKE expected"
        },
        bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(ike >= 2, "{what}: the capture shows {ike} IKE datagrams");
    assert!(
        esp >= 20,
        "{what}: the capture shows only {esp} ESP packets"
    );
}
