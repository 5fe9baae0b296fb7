//! A mixed underlay (issue 17, item 4): host a has an IPv4 and an IPv6 address (`address = [IPv4, IPv6]`),
//! b only IPv4, c only IPv6, one mesh file for the three. a and b talk over IPv4 on their link, a and c over
//! IPv6 on theirs; b and c share no family and have no tunnel, which both say in a log line naming both hosts,
//! and b's VM cannot reach c's (fail-closed, nothing in clear). VM traffic of both families, pings, TCP and UDP
//! with every byte checked both ways, crosses both pairs; a capture on each link shows ESP of that link's
//! family only, and no inner packet in clear.
//!
//! Needs root, iproute2, tcpdump, python3 and iputils-ping.

use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use vmsecd_e2e::dualstack::{self, add_addr6, byte_checked, ping_ok, vm_subnet6};
use vmsecd_e2e::netns::{require_root_and_ip, Netns, NetnsGuard};
use vmsecd_e2e::traffic::{self, Capture, Captured};
use vmsecd_e2e::vmsecd::{is_up, peer, HostEntry, Mesh, Vmsecd};

const PSK: &str = "a-psk-of-sufficient-length-0123456789";
const A4: &str = "198.18.0.1";
const B4: &str = "198.18.0.2";
const A6: &str = "2001:db8:0:ff::1";
const C6: &str = "2001:db8:0:ff::3";

/// The mesh: a dual-stack, b IPv4, c IPv6; VM subnets of both families behind each.
fn mesh_file(dir: &Path, encap: &str) -> std::path::PathBuf {
    let host = |name: &str, address: &str, n: u8| HostEntry {
        name: name.into(),
        address: address.into(),
        subnets: vec![format!("198.19.{n}.0/24"), format!("2001:db8:{n}::/64")],
        port: None,
    };
    let mut m = Mesh::two_hosts(PSK);
    m.encap = encap.into();
    m.hosts = vec![host("a", A4, 1), host("b", B4, 2), host("c", C6, 3)];
    std::fs::create_dir_all(dir).expect("dir");
    let psk = dir.join("psk");
    std::fs::write(&psk, format!("{PSK}\n")).expect("psk");
    std::fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    let text = m.render(&psk).replace(
        &format!("address = \"{A4}\""),
        &format!("address = [\"{A4}\", \"{A6}\"]"),
    );
    assert!(text.contains(A6), "{text}");
    let file = dir.join("mesh.toml");
    std::fs::write(&file, text).expect("mesh file");
    file
}

/// The link's capture holds only ESP (raw, or in UDP 4500 with `encap` "udp"/"") and IKE of one family,
/// between its two hosts, and no inner packet in clear; returns the number of ESP frames.
fn check_link(cap: &Captured, v6: bool, ends: [&str; 2], encap: &str) -> usize {
    let hosts: Vec<IpAddr> = ends.iter().map(|s| s.parse().unwrap()).collect();
    let vms: Vec<IpAddr> = (1..=3)
        .flat_map(|n| [format!("198.19.{n}.10"), format!("2001:db8:{n}::10")])
        .map(|s| s.parse().unwrap())
        .collect();
    let bad = dualstack::leaks(
        cap,
        &hosts,
        &[
            "198.19.0.0/16",
            "2001:db8:1::/48",
            "2001:db8:2::/48",
            "2001:db8:3::/48",
        ],
        &vms,
    );
    assert!(bad.is_empty(), "{ends:?}: leaks: {bad:#?}");
    let raw = encap == "raw";
    let esp = if v6 {
        assert!(
            cap.ipv4.is_empty(),
            "{ends:?}: IPv4 on the IPv6 link: {:?}",
            &cap.ipv4[..1]
        );
        // Link-local neighbour discovery and MLD aside, every IPv6 frame is between the two ends.
        for f in &cap.ipv6 {
            let ll = f.src.segments()[0] == 0xfe80 || f.dst.segments()[0] == 0xff02;
            assert!(ll || hosts.contains(&IpAddr::V6(f.src)), "{ends:?}: {f:?}");
        }
        cap.ipv6
            .iter()
            .filter(|f| {
                if raw {
                    f.next == 50
                } else {
                    f.next == 17 && f.dport == Some(4500) && f.payload.get(..4) != Some(&[0; 4])
                }
            })
            .count()
    } else {
        assert!(
            cap.ipv6.is_empty(),
            "{ends:?}: IPv6 on the IPv4 link: {:?}",
            &cap.ipv6[..1]
        );
        for f in &cap.ipv4 {
            assert!(hosts.contains(&IpAddr::V4(f.src)), "{ends:?}: {f:?}");
        }
        cap.ipv4
            .iter()
            .filter(|f| {
                if raw {
                    f.proto == 50
                } else {
                    f.proto == 17 && f.dport == Some(4500) && f.payload.get(..4) != Some(&[0; 4])
                }
            })
            .count()
    };
    assert!(esp > 1000, "{ends:?}: only {esp} ESP frames");
    esp
}

/// Permanent neighbour entry for `addr` (either family) on `dev` of `ns`, at `peer`'s `peer_dev`.
fn neighbour(ns: &Netns, dev: &str, addr: &str, peer: &Netns, peer_dev: &str) {
    let fam = if addr.contains(':') { "-6" } else { "-4" };
    let mac = peer.mac(peer_dev);
    ns.ip(&[
        fam,
        "neigh",
        "replace",
        addr,
        "lladdr",
        &mac,
        "dev",
        dev,
        "nud",
        "permanent",
    ]);
}

fn mixed(encap: &str) {
    require_root_and_ip();
    let started = Instant::now();
    let mut g = NetnsGuard::new(&format!("mixul-{encap}"));
    let a = g.add_ns("a");
    let b = g.add_ns("b");
    let c = g.add_ns("c");
    // a-b: IPv4 only (no IPv6 at all on the link, not even link-local); a-c: IPv6 only.
    g.veth(&a, "u4", &b, "u0");
    g.veth(&a, "u6", &c, "u0");
    for (ns, dev) in [(&a, "u4"), (&b, "u0")] {
        ns.sysctl(&format!("net.ipv6.conf.{dev}.disable_ipv6=1"));
    }
    g.add_addr(&a, "u4", &format!("{A4}/24"));
    g.add_addr(&b, "u0", &format!("{B4}/24"));
    add_addr6(&a, "u6", &format!("{A6}/64"));
    add_addr6(&c, "u0", &format!("{C6}/64"));
    neighbour(&a, "u4", B4, &b, "u0");
    neighbour(&b, "u0", A4, &a, "u4");
    neighbour(&a, "u6", C6, &c, "u0");
    neighbour(&c, "u0", A6, &a, "u6");
    let avm = g.vm_subnet(&a, 1, "avm");
    let bvm = g.vm_subnet(&b, 2, "bvm");
    let cvm = g.vm_subnet(&c, 3, "cvm");
    for (h, vm, n) in [(&a, &avm, 1), (&b, &bvm, 2), (&c, &cvm, 3)] {
        vm_subnet6(h, vm, n);
    }
    let root = g.dir();
    let file = mesh_file(&root, encap);
    let cap4 = Capture::start(&a, "u4", &root.join("ab.pcap"));
    let cap6 = Capture::start(&a, "u6", &root.join("ac.pcap"));
    let mut va = Vmsecd::start_with_file(&a, &root.join("a"), &file, "a");
    let mut vb = Vmsecd::start_with_file(&b, &root.join("b"), &file, "b");
    let mut vc = Vmsecd::start_with_file(&c, &root.join("c"), &file, "c");
    let t = Duration::from_secs(60);
    let st = va.wait_status("a-b and a-c up", t, |s| is_up(s, "b") && is_up(s, "c"));
    vb.wait_status("b-a up", t, |s| is_up(s, "a"));
    vc.wait_status("c-a up", t, |s| is_up(s, "a"));
    let up = started.elapsed();

    // Each pair over its family, the status showing the address used.
    let pb = peer(&st, "b");
    assert_eq!(pb.address, B4, "{pb:?}");
    assert!(
        pb.ike
            .as_ref()
            .unwrap()
            .remote
            .starts_with(&format!("{B4}:")),
        "{pb:?}"
    );
    let pc = peer(&st, "c");
    assert_eq!(pc.address, C6, "{pc:?}");
    assert!(
        pc.ike
            .as_ref()
            .unwrap()
            .remote
            .starts_with(&format!("[{C6}]:")),
        "{pc:?}"
    );
    // No NAT seen (each side's NAT hash over the address of the pair's family), so: vmsecd's Vendor ID and
    // UDP 4500 with `auto`, raw ESP with `raw`.
    let want = if encap == "raw" { "raw" } else { "udp-vmsecd" };
    for p in &st.peers {
        assert_eq!(p.ike.as_ref().unwrap().encap, want, "{p:?}");
    }
    // b-c refused, in both logs, naming both hosts; neither lists the other.
    let refusal = format!(
        "no tunnel between hosts b ({B4}) and c ({C6}): they have no underlay address family in common"
    );
    vb.wait_log(&refusal, Duration::from_secs(5));
    vc.wait_log(
        &format!("no tunnel between hosts c ({C6}) and b ({B4})"),
        Duration::from_secs(5),
    );
    for (v, other) in [(&vb, "c"), (&vc, "b")] {
        let s = v.status().expect("status");
        assert!(s.peers.iter().all(|p| p.name != other), "{s:#?}");
    }

    let why = || {
        format!(
            "{}\n{}\n{}",
            va.diagnostics(),
            vb.diagnostics(),
            vc.diagnostics()
        )
    };
    for (vm, dst) in [
        (&avm, "198.19.2.10"),
        (&avm, "2001:db8:2::10"),
        (&bvm, "198.19.1.10"),
        (&bvm, "2001:db8:1::10"),
        (&avm, "198.19.3.10"),
        (&avm, "2001:db8:3::10"),
        (&cvm, "198.19.1.10"),
        (&cvm, "2001:db8:1::10"),
    ] {
        ping_ok(vm, dst, &why);
    }
    byte_checked(&avm, &bvm, "198.19.1.10", "198.19.2.10", &why);
    byte_checked(&avm, &bvm, "2001:db8:1::10", "2001:db8:2::10", &why);
    byte_checked(&avm, &cvm, "198.19.1.10", "198.19.3.10", &why);
    byte_checked(&avm, &cvm, "2001:db8:1::10", "2001:db8:3::10", &why);
    // b's VM cannot reach c's: no tunnel, and the fail-closed routes keep it off the underlay.
    for dst in ["198.19.3.10", "2001:db8:3::10"] {
        let (sent, got) = traffic::ping(&bvm, dst, 3, "0.2");
        assert_eq!((sent, got), (3, 0), "b's VM reached {dst}");
    }
    let esp4 = check_link(&cap4.stop(), false, [A4, B4], encap);
    let esp6 = check_link(&cap6.stop(), true, [A6, C6], encap);
    for v in [&va, &vb, &vc] {
        let d = v.status().expect("status").drops;
        assert_eq!((d.no_sa_in, d.policy), (0, 0), "{d:?}");
    }
    eprintln!(
        "[mixed_underlay] encap {}: a-b over IPv4 ({esp4} ESP frames), a-c over IPv6 ({esp6}), b-c refused; up \
         {:.1} s after start; {:.1} s",
        if encap.is_empty() { "auto" } else { encap },
        up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn mixed_underlay_esp_in_udp() {
    mixed("");
}

#[test]
fn mixed_underlay_raw_esp() {
    mixed("raw");
}
