//! vmsecd against real libvirt NAT networks: two hypervisor namespaces, each with its own libvirtd (network
//! driver only, private /run, /etc/libvirt, /var/*/libvirt) and a NAT network 198.19.N.0/24 on `virbr0` with a
//! "VM" namespace on it, a vmsecd on each, and an "outside" host on the underlay that is not in the mesh.
//!
//! Proven with vmsecd's firewall handling: VM-to-remote-VM TCP in both directions keeps the VM source address
//! (no libvirt MASQUERADE, no libvirt REJECT), VM-to-outside is still NATed to the hypervisor's address; libvirt
//! creating its chains after vmsecd (a fresh boot's order) puts its jumps above vmsecd's rules and vmsecd
//! re-inserts them within seconds; all of it holds after `virsh net-destroy` + `net-start` and after libvirtd
//! is killed and started again; vmsecd removes exactly its own rules on exit; the root namespace's rules are
//! untouched. And without it (`firewall = "off"`) the same VM-to-VM connections are NATed or rejected, so the
//! first test can fail.

use std::time::{Duration, Instant};

use vmsecd_e2e::libvirt::{
    libvirt_nftables_network, libvirt_nftables_network_restart, ruleset, tcp_probe,
    tcp_seen_source, vmsecd_nft_rules_lead, vmsecd_rules_lead, Libvirtd,
};
use vmsecd_e2e::netns::{run_checked, Netns, NetnsGuard};
use vmsecd_e2e::vmsecd::{is_up, vmsecd_bin, Mesh, Vmsecd};

const PSK: &str = "libvirt-mesh-test-psk-0123456789";
const AVM: &str = "198.19.1.10";
const BVM: &str = "198.19.2.10";
const OUTSIDE: &str = "198.18.0.3";

/// The hypervisors, VMs and daemons of one test. Fields drop in order: daemons first, then libvirtds, then the
/// namespaces (the guard kills whatever is left inside, e.g. libvirt's dnsmasq, by PID).
struct Bed {
    va: Vmsecd,
    vb: Vmsecd,
    la: Libvirtd,
    lb: Libvirtd,
    a: Netns,
    b: Netns,
    out: Netns,
    avm: Netns,
    bvm: Netns,
    g: NetnsGuard,
}

fn root_rules() -> String {
    format!(
        "{}\n---\n{}",
        ruleset(None),
        run_checked(&mut std::process::Command::new("ip6tables-save"))
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// Builds the bed. With `firewall = "auto"` the daemons start before libvirt has any network (as when
/// vmsecd.service starts before libvirtd.service on boot), with the hook installed into each libvirtd's
/// private /etc/libvirt/hooks; with `"off"` they start after.
fn bed(name: &str, firewall: &str) -> Bed {
    bed_with(name, firewall, Some("nat"))
}

/// [`bed`] with hypervisor b's network in `b_mode` (`None`: isolated).
fn bed_with(name: &str, firewall: &str, b_mode: Option<&str>) -> Bed {
    let mut g = NetnsGuard::new(name);
    vmsecd_e2e::libvirt::require_libvirt();
    let hosts = g.underlay_lan(&["a", "b", "out"]);
    let (a, b, out) = (hosts[0].clone(), hosts[1].clone(), hosts[2].clone());
    let dir = g.dir();
    for ns in [&a, &b] {
        ns.sysctl("net.ipv4.ip_forward=1");
    }
    let mut mesh = Mesh::two_hosts(PSK);
    mesh.encap = "auto".into();
    mesh.firewall = Some(firewall.into());
    let (da, db) = (dir.join("libvirt-a"), dir.join("libvirt-b"));
    if firewall != "off" {
        for d in [&da, &db] {
            let hooks = Libvirtd::etc_dir(d).join("hooks");
            let out = run_checked(
                std::process::Command::new(vmsecd_bin())
                    .args(["install-hook", "--hooks-dir"])
                    .arg(&hooks),
            );
            assert!(out.contains("libvirt network hook written"), "{out}");
        }
    }
    let la = Libvirtd::start(&a, &da);
    let lb = Libvirtd::start(&b, &db);
    let start_vmsecd =
        |ns: &Netns, host: &str, sub: &str| Vmsecd::start(ns, &dir.join(sub), &mesh, host);
    let (va, vb) = if firewall == "off" {
        la.define_nat_network("default", 1);
        lb.define_nat_network("default", 2);
        (
            start_vmsecd(&a, "hA", "vmsecd-a"),
            start_vmsecd(&b, "hB", "vmsecd-b"),
        )
    } else {
        let v = (
            start_vmsecd(&a, "hA", "vmsecd-a"),
            start_vmsecd(&b, "hB", "vmsecd-b"),
        );
        for (ns, v) in [(&a, &v.0), (&b, &v.1)] {
            v.wait_log("firewall: mesh exempted", Duration::from_secs(10));
            assert!(
                ruleset(Some(ns)).contains("vmsecd: no NAT"),
                "{}",
                ruleset(Some(ns))
            );
        }
        // libvirt now creates its chains, and its jumps land above vmsecd's rules.
        la.define_nat_network("default", 1);
        lb.define_network("default", 2, b_mode);
        v
    };
    let avm = g.attach_vm(&a, "virbr0", 1, "avm");
    let bvm = g.attach_vm(&b, "virbr0", 2, "bvm");
    let mut bed = Bed {
        va,
        vb,
        la,
        lb,
        a,
        b,
        out,
        avm,
        bvm,
        g,
    };
    bed.va
        .wait_status("the tunnel to hB", Duration::from_secs(20), |s| {
            is_up(s, "hB")
        });
    bed.vb
        .wait_status("the tunnel to hA", Duration::from_secs(20), |s| {
            is_up(s, "hA")
        });
    bed
}

impl Bed {
    fn diagnostics(&self) -> String {
        format!(
            "--- a ---\n{}\n--- b ---\n{}\n{}\n{}",
            ruleset(Some(&self.a)),
            ruleset(Some(&self.b)),
            self.va.diagnostics(),
            self.vb.diagnostics()
        )
    }

    /// Waits until both hypervisors have vmsecd's rules above libvirt's jumps; returns how long it took.
    fn wait_rules_lead(&self, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            let r = vmsecd_rules_lead(&self.a).and_then(|_| vmsecd_rules_lead(&self.b));
            match r {
                Ok(()) => return t0.elapsed(),
                Err(e) if t0.elapsed() > timeout => {
                    panic!(
                        "vmsecd's rules not back on top after {timeout:?}: {e}\n{}",
                        self.diagnostics()
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// VM to remote VM in both directions keeps the VM addresses; VM to outside is NATed.
    fn prove_mesh(&self, round: &str, port: u16) {
        let (seen, mss) = tcp_probe(&self.bvm, &self.avm, BVM, port).unwrap_or_else(|e| {
            panic!("{round}: VM a -> VM b failed: {e}\n{}", self.diagnostics())
        });
        assert_eq!(
            seen,
            AVM,
            "{round}: VM a -> VM b must arrive from a's VM address\n{}",
            self.diagnostics()
        );
        // VM b's SYN-ACK advertised 1460 (MTU 1500); hypervisor b clamps it into the TUN (MTU 1400) to 1360, and
        // VM a, whose own route allows 1500, uses that (less 12 bytes of timestamps).
        assert!(
            mss <= 1360,
            "{round}: the MSS through the tunnel is {mss}, not clamped to the TUN's MTU"
        );
        let seen = tcp_seen_source(&self.avm, &self.bvm, AVM, port + 1);
        assert_eq!(
            seen.as_deref(),
            Ok(BVM),
            "{round}: VM b -> VM a (a new connection into a NAT network) must be accepted and keep b's VM \
             address\n{}",
            self.diagnostics()
        );
        let seen = tcp_seen_source(&self.out, &self.avm, OUTSIDE, port + 2);
        assert_eq!(
            seen.as_deref(),
            Ok("198.18.0.1"),
            "{round}: VM a -> outside must still be NATed to a's underlay address\n{}",
            self.diagnostics()
        );
        eprintln!(
            "{round}: VM a <-> VM b without NAT (MSS {mss}), VM a -> outside NATed to 198.18.0.1"
        );
    }
}

#[test]
fn libvirt_nat_networks_joined_by_the_mesh() {
    let t0 = Instant::now();
    let root_before = root_rules();
    let mut bed = bed("libvirt-mesh", "auto");

    // Fresh boot order: libvirt's jumps landed above vmsecd's rules, and vmsecd put its own back on top.
    for v in [&bed.va, &bed.vb] {
        v.wait_log(
            "firewall: libvirt moved its rules above ours; re-inserted",
            Duration::from_secs(10),
        );
    }
    bed.wait_rules_lead(Duration::from_secs(5));
    let mangle = bed
        .a
        .run("iptables", &["-w", "-t", "mangle", "-S", "FORWARD"]);
    assert!(
        mangle.contains("-o vmsec0") && mangle.contains("TCPMSS --clamp-mss-to-pmtu"),
        "MSS clamp into the TUN: {mangle}"
    );
    bed.prove_mesh("after libvirt created its chains", 5001);

    // Someone deletes a rule of ours by hand: back within seconds.
    let nat = bed
        .a
        .run("iptables", &["-w", "-t", "nat", "-S", "POSTROUTING"]);
    let ours = nat
        .lines()
        .find(|l| l.contains("vmsecd:"))
        .expect("our nat rule")
        .replacen("-A ", "-D ", 1);
    let args: Vec<String> = shell_words(&ours);
    let mut cmd = bed.a.command("iptables");
    cmd.args(["-w", "-t", "nat"]).args(&args);
    let missing = "firewall: our rules were missing or changed";
    let before = count(&bed.va, &[missing]);
    run_checked(&mut cmd);
    let t = Instant::now();
    wait_count_above(&bed.va, &[missing], before, Duration::from_secs(6));
    bed.wait_rules_lead(Duration::from_secs(5));
    eprintln!("a deleted rule was restored after {:?}", t.elapsed());

    // libvirt network restart on a: libvirt re-inserts its per-network rules; the VM's port is re-attached to
    // the new bridge, as libvirt would do for a real guest's tap on restart of the guest.
    let pokes = [
        "firewall-check request",
        "check requested over the control socket",
    ];
    let before = count(&bed.va, &pokes);
    let t = Instant::now();
    bed.la.virsh(&["net-destroy", "default"]);
    bed.la.virsh(&["net-start", "default"]);
    bed.a.ip(&["link", "set", "vnet0", "master", "virbr0"]);
    bed.wait_rules_lead(Duration::from_secs(5));
    eprintln!(
        "net-destroy + net-start: vmsecd's rules lead {:?} after the restart began",
        t.elapsed()
    );
    // libvirt's network hook (installed by `vmsecd install-hook`) asked the daemon to check at once.
    wait_count_above(&bed.va, &pokes, before, Duration::from_secs(2));
    bed.prove_mesh("after virsh net-destroy && net-start", 5011);

    // libvirtd killed by PID and started again, on both hypervisors.
    let (pa, pb) = (bed.la.pid(), bed.lb.pid());
    bed.la.restart();
    bed.lb.restart();
    assert_ne!(pa, bed.la.pid());
    assert_ne!(pb, bed.lb.pid());
    bed.wait_rules_lead(Duration::from_secs(5));
    // One check period later, too: a late libvirt insert would have been repaired by now.
    std::thread::sleep(Duration::from_millis(2500));
    bed.wait_rules_lead(Duration::from_secs(5));
    bed.prove_mesh("after libvirtd restarts", 5021);

    // On exit vmsecd removes exactly its own rules: libvirt's stay.
    for (v, ns) in [(&mut bed.va, bed.a.clone()), (&mut bed.vb, bed.b.clone())] {
        let before = ruleset(Some(&ns));
        let st = v
            .terminate(Duration::from_secs(10))
            .expect("vmsecd exits on SIGTERM");
        assert!(st.success(), "vmsecd exit status {st}\n{}", v.diagnostics());
        let after = ruleset(Some(&ns));
        assert!(
            !after.contains("vmsecd"),
            "vmsecd left rules behind:\n{after}"
        );
        let without_ours: Vec<&str> = before.lines().filter(|l| !l.contains("vmsecd:")).collect();
        assert_eq!(
            after.lines().collect::<Vec<_>>(),
            without_ours,
            "only vmsecd's rules go"
        );
        assert!(after.contains("-j LIBVIRT_PRT") && after.contains("MASQUERADE"));
    }
    assert_eq!(
        root_rules(),
        root_before,
        "the root namespace's rules must not change"
    );
    let name = bed.g.prefix().to_owned();
    drop(bed);
    eprintln!("{name}: done in {:?}", t0.elapsed());
}

#[test]
fn an_isolated_network_in_the_mesh_reaches_the_mesh_only() {
    let bed = bed_with("libvirt-isolated", "auto", None);
    bed.wait_rules_lead(Duration::from_secs(5));
    let d = || bed.diagnostics();
    let a_to_b = tcp_seen_source(&bed.bvm, &bed.avm, BVM, 5401);
    assert_eq!(
        a_to_b.as_deref(),
        Ok(AVM),
        "into the isolated network from the mesh\n{}",
        d()
    );
    let b_to_a = tcp_seen_source(&bed.avm, &bed.bvm, AVM, 5402);
    assert_eq!(
        b_to_a.as_deref(),
        Ok(BVM),
        "out of the isolated network into the mesh\n{}",
        d()
    );
    let b_out = tcp_seen_source(&bed.out, &bed.bvm, OUTSIDE, 5403);
    assert!(
        b_out.is_err(),
        "an isolated network must not reach the outside: {b_out:?}\n{}",
        d()
    );
    eprintln!("isolated network b: mesh both ways, outside refused ({b_out:?})");
}

#[test]
fn without_firewall_handling_libvirt_nats_or_rejects_the_mesh() {
    let root_before = root_rules();
    let bed = bed("libvirt-nofw", "off");
    assert!(
        !ruleset(Some(&bed.a)).contains("vmsecd"),
        "firewall = \"off\" installs nothing"
    );
    let a_to_b = tcp_seen_source(&bed.bvm, &bed.avm, BVM, 5101);
    let b_to_a = tcp_seen_source(&bed.avm, &bed.bvm, AVM, 5102);
    eprintln!("firewall = off: VM a -> VM b: {a_to_b:?}; VM b -> VM a: {b_to_a:?}");
    assert_ne!(
        a_to_b.as_deref(),
        Ok(AVM),
        "without vmsecd's rules libvirt's MASQUERADE applies (or the packet matches no SA)"
    );
    assert!(
        b_to_a.is_err(),
        "without vmsecd's rules libvirt REJECTs new connections into its NAT network: {b_to_a:?}"
    );
    drop(bed);
    assert_eq!(
        root_rules(),
        root_before,
        "the root namespace's rules must not change"
    );
}

/// How many lines of the daemon's log contain one of `needles`.
fn count(v: &Vmsecd, needles: &[&str]) -> usize {
    v.log()
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .count()
}

/// Waits until more than `n` lines of the daemon's log contain one of `needles`; panics after `timeout`.
fn wait_count_above(v: &Vmsecd, needles: &[&str], n: usize, timeout: Duration) {
    let t0 = Instant::now();
    while count(v, needles) <= n {
        assert!(
            t0.elapsed() < timeout,
            "no new log line with {needles:?} after {timeout:?}\n{}",
            v.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Splits an `iptables -S` line into arguments (double quotes group, as iptables prints comments).
fn shell_words(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Hypervisors whose "libvirt" uses its nftables backend (libvirt 10.4+), laid out command for command as
/// libvirt's source does it ([`libvirt_nftables_network`]); libvirt 9.0 on Debian 12 cannot produce it.
struct NftBed {
    va: Vmsecd,
    vb: Vmsecd,
    a: Netns,
    b: Netns,
    out: Netns,
    avm: Netns,
    bvm: Netns,
    _g: NetnsGuard,
}

fn nft_bed(name: &str, firewall: &str) -> NftBed {
    let mut g = NetnsGuard::new(name);
    vmsecd_e2e::traffic::require_tool("nft", &["--version"], "nftables");
    let hosts = g.underlay_lan(&["a", "b", "out"]);
    let (a, b, out) = (hosts[0].clone(), hosts[1].clone(), hosts[2].clone());
    let avm = g.vm_subnet(&a, 1, "avm");
    let bvm = g.vm_subnet(&b, 2, "bvm");
    let dir = g.dir();
    let mut mesh = Mesh::two_hosts(PSK);
    mesh.encap = "auto".into();
    mesh.firewall = Some(firewall.into());
    if firewall == "off" {
        libvirt_nftables_network(&a, "virbr0", 1);
        libvirt_nftables_network(&b, "virbr0", 2);
    }
    let mut va = Vmsecd::start(&a, &dir.join("vmsecd-a"), &mesh, "hA");
    let mut vb = Vmsecd::start(&b, &dir.join("vmsecd-b"), &mesh, "hB");
    va.wait_status("the tunnel to hB", Duration::from_secs(20), |s| {
        is_up(s, "hB")
    });
    vb.wait_status("the tunnel to hA", Duration::from_secs(20), |s| {
        is_up(s, "hA")
    });
    NftBed {
        va,
        vb,
        a,
        b,
        out,
        avm,
        bvm,
        _g: g,
    }
}

impl NftBed {
    fn diagnostics(&self) -> String {
        let nft = |ns: &Netns| ns.run("nft", &["list", "ruleset"]);
        format!(
            "--- a ---\n{}\n--- b ---\n{}\n{}\n{}",
            nft(&self.a),
            nft(&self.b),
            self.va.diagnostics(),
            self.vb.diagnostics()
        )
    }

    fn wait_rules_lead(&self, timeout: Duration) -> Duration {
        let t0 = Instant::now();
        loop {
            match vmsecd_nft_rules_lead(&self.a).and_then(|_| vmsecd_nft_rules_lead(&self.b)) {
                Ok(()) => return t0.elapsed(),
                Err(e) if t0.elapsed() > timeout => panic!(
                    "vmsecd's nftables rules not in place after {timeout:?}: {e}\n{}",
                    self.diagnostics()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn prove_mesh(&self, round: &str, port: u16) {
        let d = || self.diagnostics();
        let probe = tcp_probe(&self.bvm, &self.avm, BVM, port);
        let mss = probe.as_ref().map_or(0, |p| p.1);
        assert_eq!(
            probe.map(|p| p.0).as_deref(),
            Ok(AVM),
            "{round}: VM a -> VM b\n{}",
            d()
        );
        assert!(mss <= 1360, "{round}: MSS {mss} not clamped\n{}", d());
        let seen = tcp_seen_source(&self.avm, &self.bvm, AVM, port + 1);
        assert_eq!(seen.as_deref(), Ok(BVM), "{round}: VM b -> VM a\n{}", d());
        let seen = tcp_seen_source(&self.out, &self.avm, OUTSIDE, port + 2);
        assert_eq!(
            seen.as_deref(),
            Ok("198.18.0.1"),
            "{round}: VM a -> outside is NATed\n{}",
            d()
        );
        eprintln!("{round}: VM a <-> VM b without NAT, VM a -> outside NATed to 198.18.0.1");
    }
}

#[test]
fn libvirt_nftables_backend_emulated() {
    let root_before = root_rules();
    let mut bed = nft_bed("libvirt-nft", "auto");
    // No libvirt table yet: vmsecd starts with iptables rules (as on a host whose libvirtd starts later).
    bed.va
        .wait_log("firewall: mesh exempted", Duration::from_secs(10));
    assert!(
        ruleset(Some(&bed.a)).contains("vmsecd:"),
        "{}",
        bed.diagnostics()
    );
    // libvirt (nftables backend) starts its networks: vmsecd moves its rules to nftables within a check.
    let t = Instant::now();
    libvirt_nftables_network(&bed.a, "virbr0", 1);
    libvirt_nftables_network(&bed.b, "virbr0", 2);
    bed.wait_rules_lead(Duration::from_secs(6));
    eprintln!(
        "moved to libvirt's nftables backend after {:?}",
        t.elapsed()
    );
    bed.va
        .wait_log("libvirt uses its nftables backend", Duration::from_secs(1));
    assert!(
        !ruleset(Some(&bed.a)).contains("vmsecd:"),
        "vmsecd's iptables rules are gone once it uses nftables:\n{}",
        bed.diagnostics()
    );
    bed.prove_mesh("libvirt nftables backend", 5201);

    // Network restart: libvirt's chains are rewritten without vmsecd's rules; they come back.
    let t = Instant::now();
    libvirt_nftables_network_restart(&bed.a, "virbr0", 1);
    bed.wait_rules_lead(Duration::from_secs(6));
    eprintln!(
        "after a network restart, vmsecd's rules lead again after {:?}",
        t.elapsed()
    );
    // A second network start inserts libvirt's rules above vmsecd's: moved back on top.
    libvirt_nftables_network(&bed.b, "virbr0", 2);
    bed.vb.wait_log(
        "firewall: libvirt moved its rules above ours; re-inserted",
        Duration::from_secs(6),
    );
    bed.wait_rules_lead(Duration::from_secs(6));
    bed.prove_mesh("after libvirt rewrote its chains", 5211);

    // On exit: vmsecd's table and its rules in libvirt's chains go; libvirt's stay.
    for (v, ns) in [(&mut bed.va, bed.a.clone()), (&mut bed.vb, bed.b.clone())] {
        let st = v
            .terminate(Duration::from_secs(10))
            .expect("vmsecd exits on SIGTERM");
        assert!(st.success(), "{}", v.diagnostics());
        let all = ns.run("nft", &["list", "ruleset"]);
        assert!(!all.contains("vmsecd"), "vmsecd left rules behind:\n{all}");
        assert!(
            all.contains("masquerade") && all.contains("reject"),
            "{all}"
        );
    }
    drop(bed);
    assert_eq!(
        root_rules(),
        root_before,
        "the root namespace's rules must not change"
    );
}

#[test]
fn without_firewall_handling_libvirts_nftables_backend_nats_or_rejects_the_mesh() {
    let bed = nft_bed("libvirt-nft-off", "off");
    let a_to_b = tcp_seen_source(&bed.bvm, &bed.avm, BVM, 5301);
    let b_to_a = tcp_seen_source(&bed.avm, &bed.bvm, AVM, 5302);
    eprintln!("nftables, firewall = off: VM a -> VM b: {a_to_b:?}; VM b -> VM a: {b_to_a:?}");
    assert_ne!(a_to_b.as_deref(), Ok(AVM), "{}", bed.diagnostics());
    assert!(b_to_a.is_err(), "{b_to_a:?}\n{}", bed.diagnostics());
}
