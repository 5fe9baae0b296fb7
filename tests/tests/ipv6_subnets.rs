//! Dual-stack VM subnets (issue 17, item 3): every hypervisor has an IPv4 and an IPv6 VM subnet
//! (198.19.N.0/24 and 2001:db8:N::/64), the underlay is IPv4.
//!
//! - vmsecd <-> vmsecd, raw ESP: one Child SA carries both families; routes into the TUN for both; the firewall
//!   exemptions (iptables and ip6tables) lead a libvirt-like ruleset (FORWARD REJECT, MASQUERADE of the VM
//!   subnets for both families), so the far VM sees the near VM's own address; the MSS is clamped to the TUN's
//!   MTU for both families; VM pings both ways, TCP and UDP with every byte checked both ways for both
//!   families (UDP past the tunnel's MTU included: IPv4 fragmented by the hypervisor, IPv6 by the VM after an
//!   ICMPv6 Packet Too Big); a VM that sends from an address outside its subnet reaches nobody (the far
//!   vmsecd drops it after decryption, counted as `policy`); the underlay
//!   capture shows no inner packet of either family in clear.
//! - strongSwan (kernel-libipsec) with one child holding both families' selectors, and with one child per
//!   family: vmsecd asks for the second Child SA itself, and each family's traffic takes its own.
//!
//! Needs root, iproute2, iptables (ip6tables), tcpdump, python3, iputils-ping and charon.

use std::net::IpAddr;
use std::thread::sleep;
use std::time::{Duration, Instant};

use vmsecd_e2e::bed::Bed;
use vmsecd_e2e::dualstack::{self, byte_checked, ping_ok, vm_subnet6};
use vmsecd_e2e::netns::{require_root_and_ip, Netns, NetnsGuard};
use vmsecd_e2e::strongswan::{Charon, ChildSaInfo, Conn};
use vmsecd_e2e::traffic::{self, Capture};
use vmsecd_e2e::vmsecd::{is_up, peer, Mesh, Vmsecd};

const PSK: &str = "a-psk-of-sufficient-length-0123456789";
const A4: &str = "198.19.1.10";
const B4: &str = "198.19.2.10";
const A6: &str = "2001:db8:1::10";
const B6: &str = "2001:db8:2::10";

/// The mesh of the two hypervisors with both families' subnets.
fn dual_mesh(encap: &str) -> Mesh {
    let mut m = Mesh::two_hosts(PSK);
    m.encap = encap.into();
    m.hosts[0].subnets.push("2001:db8:1::/64".into());
    m.hosts[1].subnets.push("2001:db8:2::/64".into());
    m
}

/// What libvirt puts in front of a NAT network with an IPv4 and an IPv6 subnet, reduced to what matters: its
/// VMs' traffic to anywhere else is masqueraded, and forwarding anything else is refused. vmsecd's exemptions
/// must lead both families' chains for the mesh to work at all and to keep the VMs' own addresses.
fn libvirt_like_firewall(h: &Netns, n: u8) {
    traffic::require_tool("iptables", &["--version"], "iptables");
    for (cmd, net) in [
        ("iptables", format!("198.19.{n}.0/24")),
        ("ip6tables", format!("2001:db8:{n}::/64")),
    ] {
        h.run(cmd, &["-A", "FORWARD", "-j", "REJECT"]);
        h.run(
            cmd,
            &[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-s",
                &net,
                "!",
                "-d",
                &net,
                "-j",
                "MASQUERADE",
            ],
        );
    }
}

#[test]
fn dual_stack_subnets_between_vmsecd_hosts() {
    require_root_and_ip();
    let started = Instant::now();
    let mut g = NetnsGuard::new("v6sub");
    let (a, b, avm, bvm) = g.hypervisor_pair();
    vm_subnet6(&a, &avm, 1);
    vm_subnet6(&b, &bvm, 2);
    // On a only: b forwards whatever its VM sends into the TUN, so that the spoofing check below reaches
    // vmsecd.
    libvirt_like_firewall(&a, 1);
    let root = g.dir();
    let mesh = dual_mesh("raw");
    let mut va = Vmsecd::start(&a, &root.join("a"), &mesh, "hA");
    let mut vb = Vmsecd::start(&b, &root.join("b"), &mesh, "hB");
    let t = Duration::from_secs(30);
    va.wait_status("hA-hB up", t, |s| is_up(s, "hB"));
    vb.wait_status("hB-hA up", t, |s| is_up(s, "hA"));
    let why = || {
        format!(
            "{}{}{}{}\n{}\n{}",
            a.ip(&["-s", "link", "show", "vmsec0"]),
            b.ip(&["-s", "link", "show", "vmsec0"]),
            bvm.run("nstat", &["-az", "Ip*"]),
            bvm.run("nstat", &["-az", "Udp*"]),
            va.diagnostics(),
            vb.diagnostics()
        )
    };
    let cap = Capture::start(&a, "u0", &root.join("underlay.pcap"));

    // Routes into the TUN for both families.
    let r4 = a.ip(&["route", "show", "dev", "vmsec0"]);
    let r6 = a.ip(&["-6", "route", "show", "dev", "vmsec0"]);
    assert!(r4.contains("198.19.2.0/24"), "{r4}");
    assert!(r6.contains("2001:db8:2::/64"), "{r6}");
    // The exemptions lead both families' chains, ahead of the libvirt-like REJECT and MASQUERADE.
    for (cmd, l, r) in [
        ("iptables-save", "198.19.1.0/24", "198.19.2.0/24"),
        ("ip6tables-save", "2001:db8:1::/64", "2001:db8:2::/64"),
    ] {
        let saved = a.run(cmd, &[]);
        let nat = format!("-A POSTROUTING -s {l} -d {r}");
        let fwd = format!("-A FORWARD -s {l} -d {r} -o vmsec0");
        for needle in [&nat, &fwd] {
            let ours = saved.find(needle.as_str());
            let theirs = if needle == &nat {
                saved.find("-j MASQUERADE")
            } else {
                saved.find("-A FORWARD -j REJECT")
            };
            assert!(
                matches!((ours, theirs), (Some(o), Some(t)) if o < t),
                "{cmd}: {needle:?} missing or not ahead of the libvirt-like rule:\n{saved}"
            );
        }
        assert!(saved.contains("--clamp-mss-to-pmtu"), "{cmd}:\n{saved}");
    }

    // Both families, both ways.
    for (vm, dst) in [(&avm, B4), (&avm, B6), (&bvm, A4), (&bvm, A6)] {
        ping_ok(vm, dst, &why);
    }
    // One Child SA carries both.
    let st = va.status().expect("status");
    assert_eq!(peer(&st, "hB").children.len(), 1, "{st:#?}");
    assert!(!peer(&st, "hB").ike.as_ref().expect("ike").udp_encap);

    // No NAT for either family, and the MSS the far side advertises is clamped to the TUN's MTU (1400:
    // 1360 for IPv4, 1340 for IPv6; the VMs' own interfaces would allow 1460 and 1440).
    for (srv, cli, dst, src, max) in [
        (&bvm, &avm, B4, A4, 1360),
        (&bvm, &avm, B6, A6, 1340),
        (&avm, &bvm, A6, B6, 1340),
    ] {
        let (seen, mss) = dualstack::tcp_probe(srv, cli, dst, 7010).unwrap_or_else(|e| {
            panic!("TCP {src} -> {dst}: {e}\n{}", why());
        });
        assert_eq!(seen, src, "the far VM saw another source (NAT?)");
        assert!(mss <= max && mss >= max - 40, "MSS {mss} to {dst}");
        eprintln!("[ipv6_subnets] TCP {src} -> {dst}: source kept, MSS {mss}");
    }

    byte_checked(&avm, &bvm, A4, B4, &why);
    byte_checked(&avm, &bvm, A6, B6, &why);

    // A VM sending from an address outside its host's subnets reaches nobody: b's vmsecd has no Child SA
    // whose selectors cover it (and a's would drop it after decryption).
    // b's vmsecd sends them (its lanes pick an SA by destination when none covers the source); a's checks
    // every decrypted packet against the Child SA's selectors (RFC 4301 5.2) and drops them as `policy`.
    let dropped = || va.status().expect("status").drops.policy;
    for (spoof, dst) in [("2001:db8:99::10", A6), ("198.19.99.10", A4)] {
        let cidr = if spoof.contains(':') {
            format!("{spoof}/128")
        } else {
            format!("{spoof}/32")
        };
        bvm.ip(&["addr", "add", &cidr, "dev", "eth0", "nodad"]);
        let before = dropped();
        let out = bvm.output(
            "ping",
            &["-n", "-c", "3", "-i", "0.2", "-W", "1", "-I", spoof, dst],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(" 0 received"),
            "a spoofed source got through: {text}"
        );
        assert!(
            dropped() > before,
            "a's vmsecd did not drop the packets from {spoof}\n{}",
            why()
        );
    }
    eprintln!(
        "[ipv6_subnets] spoofed sources (3 pings each family) dropped by a's vmsecd: policy {}",
        dropped()
    );

    let captured = cap.stop();
    let hosts: Vec<IpAddr> = ["198.18.0.1", "198.18.0.2"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let vms: Vec<IpAddr> = [A4, B4, A6, B6]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let bad = dualstack::leaks(
        &captured,
        &hosts,
        &["198.19.0.0/16", "2001:db8:1::/48", "2001:db8:2::/48"],
        &vms,
    );
    assert!(bad.is_empty(), "underlay leaks: {bad:#?}");
    let esp = captured.ipv4.iter().filter(|f| f.proto == 50).count();
    assert!(esp > 1000, "only {esp} raw ESP frames on the underlay");
    eprintln!(
        "[ipv6_subnets] dual stack vmsecd <-> vmsecd: {esp} ESP frames, none in clear; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// charon's children as installed, by name, once vmsecd agrees the tunnel is up and `n` are installed.
fn wait_children(v: &Vmsecd, c: &Charon, n: usize) -> Vec<ChildSaInfo> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sas = c.list_sas();
        let mut installed: Vec<ChildSaInfo> = sas
            .iter()
            .filter(|s| s.state == "ESTABLISHED")
            .flat_map(|s| s.children.iter())
            .filter(|ch| ch.state == "INSTALLED")
            .cloned()
            .collect();
        installed.sort_by(|x, y| x.name.cmp(&y.name));
        if installed.len() == n && v.status().is_ok_and(|s| is_up(&s, "hB")) {
            return installed;
        }
        if Instant::now() > deadline {
            panic!(
                "{n} Child SAs not up after 30 s: {sas:#?}\n{}\n{}",
                v.diagnostics(),
                c.diagnostics()
            );
        }
        sleep(Duration::from_millis(200));
    }
}

/// The VMs of a [`Bed`] with their IPv6 subnets too; charon's host holds an address of each of its subnets
/// (kernel-libipsec refuses a child whose local selector has no local address).
fn dual_bed(name: &str) -> Bed {
    let bed = Bed::new("v6sw", name);
    vm_subnet6(&bed.a, &bed.avm, 1);
    vm_subnet6(&bed.b, &bed.bvm, 2);
    bed
}

#[test]
fn strongswan_one_child_sa_for_both_families() {
    let mut bed = dual_bed("one");
    let mut conn = Conn::to_vmsecd(PSK);
    conn.local_ts = "198.19.2.0/24,2001:db8:2::/64".into();
    conn.remote_ts = "198.19.1.0/24,2001:db8:1::/64".into();
    let charon = bed.charon(&[conn]);
    let v = bed.vmsecd(&dual_mesh("udp"));
    let ch = wait_children(&v, &charon, 1);
    assert_eq!(ch[0].local_ts, ["198.19.2.0/24", "2001:db8:2::/64"]);
    assert_eq!(ch[0].remote_ts, ["198.19.1.0/24", "2001:db8:1::/64"]);
    let why = || {
        format!(
            "{:#?}\n{:#?}\n{}\n{}",
            v.status(),
            charon.list_sas(),
            v.diagnostics(),
            charon.diagnostics()
        )
    };
    for dst in [B4, B6] {
        ping_ok(&bed.avm, dst, &why);
    }
    ping_ok(&bed.bvm, A6, &why);
    byte_checked(&bed.avm, &bed.bvm, A6, B6, &why);
    let after = wait_children(&v, &charon, 1);
    assert!(
        after[0].packets_in > 1000 && after[0].packets_out > 1000,
        "{after:#?}"
    );
}

#[test]
fn strongswan_child_sa_per_family() {
    let mut bed = dual_bed("per");
    let mut conn = Conn::to_vmsecd(PSK);
    conn.more_children = vec![(
        "net6".into(),
        "2001:db8:2::/64".into(),
        "2001:db8:1::/64".into(),
    )];
    let charon = bed.charon(&[conn]);
    let v = bed.vmsecd(&dual_mesh("udp"));
    let ch = wait_children(&v, &charon, 2);
    assert_eq!(ch[0].name, "net");
    assert_eq!(ch[0].local_ts, ["198.19.2.0/24"]);
    assert_eq!(ch[1].local_ts, ["2001:db8:2::/64"]);
    let why = || {
        format!(
            "{:#?}\n{:#?}\n{}\n{}",
            v.status(),
            charon.list_sas(),
            v.diagnostics(),
            charon.diagnostics()
        )
    };
    ping_ok(&bed.avm, B4, &why);
    ping_ok(&bed.avm, B6, &why);
    // IPv6 traffic takes net6 in both directions, none of it net.
    let before = wait_children(&v, &charon, 2);
    let (sent, got) = traffic::ping(&bed.avm, B6, 10, "0.1");
    assert_eq!((sent, got), (10, 10), "{}", why());
    let after = wait_children(&v, &charon, 2);
    let d = |x: &ChildSaInfo, y: &ChildSaInfo| {
        (y.packets_in - x.packets_in, y.packets_out - x.packets_out)
    };
    assert_eq!(
        d(&before[1], &after[1]),
        (10, 10),
        "net6 carried the IPv6 pings"
    );
    assert_eq!(d(&before[0], &after[0]), (0, 0), "net carried none of them");
    byte_checked(&bed.avm, &bed.bvm, A6, B6, &why);
    byte_checked(&bed.avm, &bed.bvm, A4, B4, &why);
    let st = v.status().expect("status");
    assert_eq!(peer(&st, "hB").children.len(), 2, "{st:#?}");
}
