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

use std::net::Ipv4Addr;
use std::thread::sleep;
use std::time::{Duration, Instant};

use crate::guest::{self, Guest, GuestLock, Nic};
use crate::netns::{Netns, NetnsGuard};
use crate::traffic::{self, Capture};
use crate::vmsecd::{peer, Mesh, Status, Vmsecd};

pub use crate::guest_charon::GuestCharon;
pub use crate::kernel_capture::{
    check_capture, check_capture6, informational_requests, underlay_offenders,
};

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
        let _ = self.a.output("nft", &["delete", "table", "inet", "vt"]);
        if on {
            // `inet`: over either underlay family ([`GuestBed::add_ipv6`]).
            let rules = "table inet vt {\n  chain out {\n    type filter hook output priority 0; policy accept;\n    \
                         udp dport 500 @th,208,8 34 @th,218,1 0 counter drop\n  }\n}\n";
            let file = self.dir("nft").join("block-init.nft");
            std::fs::write(&file, rules).expect("nft rules");
            self.a.run("nft", &["-f", file.to_str().expect("UTF-8")]);
        }
    }
}

impl GuestBed {
    /// The IPv6 underlay and VM subnets next to the IPv4 ones: [`A6`] on `a`'s `tb0` and [`B6`] on the guest's
    /// eth0, 2001:db8:1::/64 behind `a` (`avm` 2001:db8:1::10) and 2001:db8:2::/64 behind the guest (`bvm`
    /// 2001:db8:2::10), forwarding, and the guest's IPv6 ESP modules.
    pub fn add_ipv6(&self) {
        crate::dualstack::add_addr6(&self.a, "tb0", &format!("{A6}/64"));
        crate::dualstack::vm_subnet6(&self.a, &self.avm, 1);
        crate::dualstack::add_addr6(&self.bvm, "vm0", &format!("{BVM6}/64"));
        self.bvm
            .ip(&["-6", "route", "add", "default", "via", "2001:db8:2::1"]);
        self.guest.run(&format!(
            "ip -6 addr add {B6}/64 dev eth0 nodad && ip -6 addr add 2001:db8:2::1/64 dev eth1 nodad && \
             sysctl -qw net.ipv6.conf.all.forwarding=1 && \
             for m in esp6 xfrm6_tunnel tunnel6 ip6_tunnel; do modprobe -q $m 2>/dev/null; done; true"
        ));
    }
}

/// vmsecd's IPv6 underlay address ([`GuestBed::add_ipv6`]).
pub const A6: &str = "2001:db8:0:ff::1";
/// The guest's IPv6 underlay address.
pub const B6: &str = "2001:db8:0:ff::2";
/// The VM behind vmsecd, IPv6.
pub const AVM6: &str = "2001:db8:1::10";
/// The VM behind the guest, IPv6.
pub const BVM6: &str = "2001:db8:2::10";

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

/// What the cell runner needs of a kernel IPsec daemon in the guest (charon, pluto).
pub trait KernelPeer {
    /// Its name in log lines and cell names (`charon`, `pluto`).
    fn kind(&self) -> &'static str;
    /// The SAs it holds now, in vmsecd's notation.
    fn sas(&self) -> Vec<PeerSa>;
    /// Initiates its connection towards vmsecd; its output if that fails at once.
    fn initiate_to_vmsecd(&self) -> Result<(), String>;
    /// Its log, its state and the guest's XFRM state, for failure messages.
    fn diagnostics(&self) -> String;
    /// Once vmsecd has stopped (deleting its SAs): waits until the peer holds none, forcing it after 20 s.
    fn forget_sas(&self);
}

/// vmsecd's diagnostics and the peer's, for failure messages.
pub fn diag(v: &Vmsecd, p: &dyn KernelPeer) -> String {
    format!("{}\n{}", v.diagnostics(), p.diagnostics())
}

/// One cell: who initiates, what each side forces, what must come out.
#[derive(Debug, Clone)]
pub struct Cell {
    /// Its name (also its capture's and vmsecd directory's, and what `VT_CELLS` selects).
    pub name: String,
    /// vmsecd's `encap` (`auto`, `udp`).
    pub vmsecd_encap: &'static str,
    /// The peer forces ESP in UDP (charon `encap = yes`, pluto `encapsulation=yes`).
    pub peer_encap: bool,
    /// vmsecd initiates (else the peer, vmsecd's IKE_SA_INIT requests dropped by `a`'s firewall).
    pub vmsecd_initiates: bool,
    /// ESP in UDP 4500 expected (else raw ESP).
    pub udp: bool,
    /// IKE and ESP over the IPv6 underlay ([`GuestBed::add_ipv6`]), carrying IPv4 and IPv6 between the VMs.
    pub ipv6: bool,
}

impl Cell {
    /// A raw ESP cell, nobody forcing UDP.
    pub fn raw(name: &str, vmsecd_initiates: bool) -> Cell {
        Cell {
            name: name.into(),
            vmsecd_encap: "auto",
            peer_encap: false,
            vmsecd_initiates,
            udp: false,
            ipv6: false,
        }
    }
}

/// The six framing cells against `kind` (`charon`, `pluto`): raw ESP, ESP in UDP forced by the peer, ESP in
/// UDP forced by vmsecd, each with either side initiating.
pub fn framing_cells(kind: &str) -> Vec<Cell> {
    let cell = |name: String, vmsecd_encap, peer_encap, vmsecd_initiates| Cell {
        name,
        vmsecd_encap,
        peer_encap,
        vmsecd_initiates,
        udp: vmsecd_encap == "udp" || peer_encap,
        ipv6: false,
    };
    vec![
        cell("raw-vmsecd-init".into(), "auto", false, true),
        cell(format!("raw-{kind}-init"), "auto", false, false),
        cell(
            format!("udp-{kind}-forces-{kind}-init"),
            "auto",
            true,
            false,
        ),
        cell(format!("udp-{kind}-forces-vmsecd-init"), "auto", true, true),
        cell("udp-vmsecd-forces-vmsecd-init".into(), "udp", false, true),
        cell(
            format!("udp-vmsecd-forces-{kind}-init"),
            "udp",
            false,
            false,
        ),
    ]
}

/// True if `VT_CELLS` (a comma-separated list of cell names, for debugging) is unset or names `cell`.
pub fn wanted(cell: &str) -> bool {
    std::env::var("VT_CELLS")
        .ok()
        .is_none_or(|o| o.split(',').any(|n| n == cell))
}

/// Runs one cell against a peer already configured for it: vmsecd started (from `mesh` with the cell's `encap`,
/// or from `mesh_text` verbatim), the cell's initiator initiating, then both sides' agreement on `algs` (IKE,
/// ESP in vmsecd's notation), traffic and the capture checked. Returns vmsecd, still running.
pub fn run_cell(
    bed: &GuestBed,
    p: &dyn KernelPeer,
    cell: &Cell,
    mesh: &Mesh,
    algs: (&str, &str),
    mesh_text: Option<&str>,
) -> Vmsecd {
    let t = Instant::now();
    let mut mesh = mesh.clone();
    mesh.encap = cell.vmsecd_encap.into();
    bed.block_vmsecd_initiation(!cell.vmsecd_initiates);
    let cap = bed.capture(&cell.name);
    let vdir = bed.dir(&format!("vmsecd-{}", cell.name));
    let mut v = match mesh_text {
        None => Vmsecd::start(&bed.a, &vdir, &mesh, "hA"),
        Some(text) => {
            let file = vdir.join("mesh.toml");
            std::fs::write(&file, text).expect("mesh file");
            Vmsecd::start_with_file(&bed.a, &vdir, &file, "hA")
        }
    };
    if !cell.vmsecd_initiates {
        v.wait_status("vmsecd listening", Duration::from_secs(10), |_| true);
        if let Err(e) = p.initiate_to_vmsecd() {
            panic!("{}: {e}\n{}", cell.name, diag(&v, p));
        }
    }
    let d = || diag(&v, p);
    let (st, sa) = wait_agree(&v, PEER, || p.sas(), Duration::from_secs(60), &d);
    let e = Expect {
        peer: PEER,
        vmsecd_initiated: cell.vmsecd_initiates,
        ike_alg: algs.0,
        esp_alg: algs.1,
        udp: cell.udp,
    };
    check_agree(&st, &sa, &e);
    check_traffic(&bed.avm, &bed.bvm, 2, 1 << 20, 100, &d);
    let cap = if cell.ipv6 {
        for (vm, dst) in [(&bed.avm, BVM6), (&bed.bvm, AVM6)] {
            crate::dualstack::ping_ok(vm, dst, &d);
        }
        crate::dualstack::byte_checked(&bed.avm, &bed.bvm, AVM6, BVM6, &d);
        let cap = cap.stop();
        check_capture6(&cap, cell.udp, &cell.name);
        cap
    } else {
        let cap = cap.stop();
        check_capture(&cap, cell.udp, &cell.name);
        cap
    };
    drop(cap);
    eprintln!(
        "[{}] cell {} ok in {:.1} s",
        bed.name,
        cell.name,
        t.elapsed().as_secs_f64()
    );
    v
}

/// Ends a cell: vmsecd stops (deleting its SAs), the peer is left with none.
pub fn end_cell(mut v: Vmsecd, p: &dyn KernelPeer) {
    v.terminate(Duration::from_secs(10));
    p.forget_sas();
}

/// Waits until vmsecd and `p` agree ([`wait_agree`]) and checks it ([`check_agree`]) with the roles vmsecd's
/// status gives (after a rekey or a restart, whoever made the IKE SA now).
pub fn agree_now(v: &Vmsecd, p: &dyn KernelPeer, algs: (&str, &str), udp: bool) -> Status {
    let d = || diag(v, p);
    let (st, sa) = wait_agree(v, PEER, || p.sas(), Duration::from_secs(60), &d);
    let vmsecd_initiated = peer(&st, PEER).ike.as_ref().is_some_and(|i| i.initiator);
    let e = Expect {
        peer: PEER,
        vmsecd_initiated,
        ike_alg: algs.0,
        esp_alg: algs.1,
        udp,
    };
    check_agree(&st, &sa, &e);
    st
}

impl GuestBed {
    /// A power cut: the guest killed, booted again 2 s later and configured as before (its daemon is the
    /// caller's to start).
    pub fn power_cut_and_boot(&mut self) {
        self.guest.kill();
        sleep(Duration::from_secs(2));
        self.guest.boot_again();
        self.configure_guest();
    }
}

/// After [`GuestBed::power_cut_and_boot`] at `t` and the peer's start: traffic must pass again within `bound`
/// of `t`; then both sides agree (raw ESP, `algs`) and every byte passes both ways. Returns the time to traffic.
pub fn check_back_after_restart(
    bed: &GuestBed,
    v: &Vmsecd,
    p: &dyn KernelPeer,
    t: Instant,
    bound: Duration,
    algs: (&str, &str),
) -> Duration {
    let d = || diag(v, p);
    assert!(
        traffic::ping_until_ok(&bed.avm, BVM, bound.saturating_sub(t.elapsed())),
        "no traffic within {bound:?} of the guest's kill\n{}",
        d()
    );
    let back = t.elapsed();
    eprintln!(
        "[{}] traffic back {:.1} s after the kill (the guest booted in {:.1} s)",
        bed.name,
        back.as_secs_f64(),
        bed.guest.booted_in().as_secs_f64()
    );
    agree_now(v, p, algs, false);
    check_traffic(&bed.avm, &bed.bvm, 2, 1 << 20, 100, &d);
    back
}

/// vmsecd's name for the guest in [`Mesh::two_hosts`].
pub const PEER: &str = "hB";

/// The current SPIs on vmsecd's side: (IKE initiator SPI, Child inbound SPI).
pub fn spis(v: &Vmsecd) -> (String, String) {
    let st = v.status().expect("status");
    let p = peer(&st, PEER);
    (
        p.ike.as_ref().map(|i| i.spi_i.clone()).unwrap_or_default(),
        p.children
            .first()
            .map(|c| c.spi_in.clone())
            .unwrap_or_default(),
    )
}

/// Waits until vmsecd's log shows every kind of rekey at least once: (Child SA rekeys by vmsecd, by the peer,
/// IKE SA rekeys by vmsecd, by the peer). Panics after `timeout` with the counts and `diag()`.
pub fn wait_all_rekeys(v: &Vmsecd, timeout: Duration, diag: &dyn Fn() -> String) -> [usize; 4] {
    let deadline = Instant::now() + timeout;
    loop {
        let log = v.log();
        let count = |what: &str, ours: bool| {
            let role = if ours {
                "initiator=true"
            } else {
                "initiator=false"
            };
            log.lines()
                .filter(|l| l.contains(what) && l.contains(role))
                .count()
        };
        let c = [
            count("Child SA rekeyed", true),
            count("Child SA rekeyed", false),
            count("IKE SA rekeyed", true),
            count("IKE SA rekeyed", false),
        ];
        if c.iter().all(|&n| n >= 1) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "not every kind of rekey in {timeout:?}: (Child by vmsecd, by the peer, IKE by vmsecd, by the peer) \
             = {c:?}\n{}",
            diag()
        );
        sleep(Duration::from_millis(500));
    }
}

/// Traffic that keeps running on a thread until stopped: rounds of `tcp_intact` (2 connections of 1 MiB) and
/// `udp_intact` (50 datagrams) in both directions; returns (rounds, failures) when finished.
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u32, Vec<String>)>,
}

impl Load {
    /// Starts the rounds between the VMs.
    pub fn start(avm: &Netns, bvm: &Netns) -> Load {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (avm, bvm, s) = (avm.clone(), bvm.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let (mut rounds, mut failures) = (0, Vec::new());
            while !s.load(Ordering::Relaxed) {
                for (server, client, addr, dir) in
                    [(&bvm, &avm, BVM, "a -> b"), (&avm, &bvm, AVM, "b -> a")]
                {
                    let tcp = traffic::tcp_intact(server, client, addr, 2, 1 << 20);
                    if tcp != 2 {
                        failures.push(format!("round {rounds}: TCP {dir}: {tcp} of 2 intact"));
                    }
                    let udp = traffic::udp_intact(server, client, addr, 50);
                    if udp != (50, 0) {
                        failures.push(format!(
                            "round {rounds}: UDP {dir}: (intact, damaged) {udp:?} of 50"
                        ));
                    }
                }
                rounds += 1;
            }
            (rounds, failures)
        });
        Load { stop, thread }
    }

    /// Stops after the current round: (rounds, failures).
    pub fn finish(self) -> (u32, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().expect("load thread")
    }
}

/// One algorithm cell: vmsecd's proposals (strongSwan syntax, which charon takes verbatim) and what both sides
/// must report for them.
#[derive(Debug, Clone, Copy)]
pub struct AlgCell {
    /// The cell's name.
    pub name: &'static str,
    /// vmsecd's `ike_proposals` entry.
    pub ike: &'static str,
    /// vmsecd's `esp_proposals` entry.
    pub esp: &'static str,
    /// The IKE SA's algorithms in vmsecd's notation.
    pub ike_alg: &'static str,
    /// The Child SA's.
    pub esp_alg: &'static str,
}

/// The algorithms beyond the defaults that the guest's kernel has: AES-GCM-256 with ECP-384, AES-CBC-256 with
/// SHA2-256 and MODP-2048, ChaCha20-Poly1305 with Curve25519.
pub const ALGORITHM_CELLS: &[AlgCell] = &[
    AlgCell {
        name: "gcm256",
        ike: "aes256gcm16-prfsha384-ecp384",
        esp: "aes256gcm16",
        ike_alg: "AES_GCM_16_256/PRF_HMAC_SHA2_384/ECP_384",
        esp_alg: "AES_GCM_16_256",
    },
    AlgCell {
        name: "cbc-sha256",
        ike: "aes256-sha256-modp2048",
        esp: "aes256-sha256",
        ike_alg: "AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048",
        esp_alg: "AES_CBC_256/HMAC_SHA2_256_128",
    },
    AlgCell {
        name: "chacha20poly1305",
        ike: "chacha20poly1305-prfsha256-x25519",
        esp: "chacha20poly1305",
        ike_alg: "CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519",
        esp_alg: "CHACHA20_POLY1305",
    },
];

/// vmsecd's identity in the certificate and public-key cells.
pub const A_ID: &str = "ha.example.net";
/// The guest's identity in the certificate cells.
pub const B_ID: &str = "hb.example.net";

/// A root CA and one end certificate per side, from `pki`: 2048-bit RSA, the FQDN ([`A_ID`], [`B_ID`]) and the
/// underlay address as subjectAltNames.
pub struct CertSet {
    /// The root CA (`C=CH, O=vmsecd test, CN=Kernel Mesh CA`).
    pub root: crate::strongswan::PkiCert,
    /// vmsecd's (`hacert`).
    pub a: crate::strongswan::PkiCert,
    /// The guest's (`hbcert`).
    pub b: crate::strongswan::PkiCert,
}

impl CertSet {
    /// Issues the set into `dir`.
    pub fn issue(dir: &std::path::Path) -> CertSet {
        use crate::strongswan::{pki_ca, pki_issue};
        let root = pki_ca(dir, "root", 2048, CA_DN);
        let issue = |name: &str, id: &str, ip: &str| {
            let dn = format!("C=CH, O=vmsecd test, CN={id}");
            pki_issue(dir, &root, name, 2048, &dn, &[id, ip], &[])
        };
        let a = issue("hacert", A_ID, "198.18.0.1");
        let b = issue("hbcert", B_ID, "198.18.0.2");
        CertSet { root, a, b }
    }

    /// vmsecd's mesh file: `auth = "pubkey"` with the root as `ca`, its own certificate, the guest known by
    /// [`B_ID`] only.
    pub fn mesh_text(&self) -> String {
        format!(
            "[mesh]\nauth = \"pubkey\"\nprivate_key = {:?}\nca = {:?}\nencap = \"auto\"\n\n[[host]]\n\
             name = \"hA\"\naddress = \"198.18.0.1\"\nid = \"{A_ID}\"\ncert = {:?}\nsubnets = [\"198.19.1.0/24\"]\n\n\
             [[host]]\nname = \"hB\"\naddress = \"198.18.0.2\"\nid = \"{B_ID}\"\nsubnets = [\"198.19.2.0/24\"]\n",
            self.a.key.display().to_string(),
            self.root.cert.display().to_string(),
            self.a.cert.display().to_string(),
        )
    }
}

/// The root's subject.
pub const CA_DN: &str = "C=CH, O=vmsecd test, CN=Kernel Mesh CA";

/// vmsecd's mesh file for raw public keys: its key pair (PEM files), the guest's public key and identity.
pub fn pubkey_mesh_text(
    a_private: &std::path::Path,
    a_public: &std::path::Path,
    b_public: &std::path::Path,
    b_id: &str,
) -> String {
    format!(
        "[mesh]\nauth = \"pubkey\"\nprivate_key = {:?}\nencap = \"auto\"\n\n[[host]]\nname = \"hA\"\n\
         address = \"198.18.0.1\"\nid = \"{A_ID}\"\npubkey = {:?}\nsubnets = [\"198.19.1.0/24\"]\n\n\
         [[host]]\nname = \"hB\"\naddress = \"198.18.0.2\"\nid = \"{b_id}\"\npubkey = {:?}\n\
         subnets = [\"198.19.2.0/24\"]\n",
        a_private.display().to_string(),
        a_public.display().to_string(),
        b_public.display().to_string()
    )
}
