//! An IPv6 underlay (issue 17, item 4): hypervisors whose mesh `address`es are IPv6 (2001:db8:0:ff::N), with
//! dual-stack VM subnets. IKE and ESP run over IPv6, raw ESP (next header 50) and ESP in UDP 4500, between
//! two vmsecd hosts and between vmsecd and strongSwan (kernel-libipsec, ESP in UDP), and carry the VMs' IPv4
//! and IPv6 traffic: pings, TCP and UDP with every byte checked both ways; the underlay capture holds only
//! IKE and ESP over IPv6 (and neighbour discovery), no inner packet of either family in clear.
//!
//! Needs root, iproute2, tcpdump, python3, iputils-ping and charon.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use vmsecd_e2e::bed::Bed;
use vmsecd_e2e::dualstack::{self, byte_checked, ping_ok, underlay6, vm_subnet6};
use vmsecd_e2e::netns::{require_root_and_ip, NetnsGuard};
use vmsecd_e2e::strongswan::Conn;
use vmsecd_e2e::traffic::{Capture, Captured};
use vmsecd_e2e::vmsecd::{is_up, peer, Mesh, Vmsecd};

const PSK: &str = "a-psk-of-sufficient-length-0123456789";
const A4: &str = "198.19.1.10";
const B4: &str = "198.19.2.10";
const A6: &str = "2001:db8:1::10";
const B6: &str = "2001:db8:2::10";
const UA: &str = "2001:db8:0:ff::1";
const UB: &str = "2001:db8:0:ff::2";

/// Two hosts on the IPv6 underlay with both families' VM subnets.
fn v6_mesh(encap: &str) -> Mesh {
    let mut m = Mesh::two_hosts(PSK);
    m.encap = encap.into();
    m.hosts[0].address = UA.into();
    m.hosts[1].address = UB.into();
    m.hosts[0].subnets.push("2001:db8:1::/64".into());
    m.hosts[1].subnets.push("2001:db8:2::/64".into());
    m
}

/// Checks the capture: no leak, and ESP over IPv6 the way `encap` says; returns the number of ESP frames.
fn check_underlay(cap: &Captured, encap: &str) -> usize {
    let hosts: Vec<IpAddr> = [UA, UB].iter().map(|s| s.parse().unwrap()).collect();
    let vms: Vec<IpAddr> = [A4, B4, A6, B6]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let bad = dualstack::leaks(
        cap,
        &hosts,
        &["198.19.0.0/16", "2001:db8:1::/48", "2001:db8:2::/48"],
        &vms,
    );
    assert!(bad.is_empty(), "underlay leaks: {bad:#?}");
    let between = |f: &&vmsecd_e2e::traffic::Frame6| {
        hosts.contains(&IpAddr::V6(f.src)) && hosts.contains(&IpAddr::V6(f.dst))
    };
    let esp = cap
        .ipv6
        .iter()
        .filter(between)
        .filter(|f| match encap {
            "raw" => f.next == 50,
            _ => f.next == 17 && f.dport == Some(4500) && f.payload.get(..4) != Some(&[0; 4]),
        })
        .count();
    let v4 = cap.ipv4.len();
    assert_eq!(v4, 0, "IPv4 frames on an IPv6 underlay");
    assert!(esp > 1000, "only {esp} ESP frames ({encap}) over IPv6");
    esp
}

fn vmsecd_pair(encap: &str) {
    require_root_and_ip();
    let started = Instant::now();
    let mut g = NetnsGuard::new(&format!("v6ul-{encap}"));
    let (a, b, avm, bvm) = g.hypervisor_pair();
    // IPv6 only on the underlay: the IPv4 addresses hypervisor_pair gave u0 go.
    for h in [&a, &b] {
        h.ip(&["-4", "addr", "flush", "dev", "u0"]);
    }
    underlay6(&[(&a, 1), (&b, 2)]);
    vm_subnet6(&a, &avm, 1);
    vm_subnet6(&b, &bvm, 2);
    let root = g.dir();
    let cap = Capture::start(&a, "u0", &root.join("underlay.pcap"));
    let mesh = v6_mesh(encap);
    let mut va = Vmsecd::start(&a, &root.join("a"), &mesh, "hA");
    let mut vb = Vmsecd::start(&b, &root.join("b"), &mesh, "hB");
    let t = Duration::from_secs(30);
    let st = va.wait_status("hA-hB up", t, |s| is_up(s, "hB"));
    vb.wait_status("hB-hA up", t, |s| is_up(s, "hA"));
    let up = started.elapsed();
    let ike = peer(&st, "hB").ike.clone().expect("ike");
    assert_eq!(ike.udp_encap, encap == "udp", "{ike:?}");
    assert!(ike.remote.starts_with(&format!("[{UB}]")), "{ike:?}");
    let why = || format!("{}\n{}", va.diagnostics(), vb.diagnostics());
    for (vm, dst) in [(&avm, B4), (&avm, B6), (&bvm, A4), (&bvm, A6)] {
        ping_ok(vm, dst, &why);
    }
    byte_checked(&avm, &bvm, A4, B4, &why);
    byte_checked(&avm, &bvm, A6, B6, &why);
    let esp = check_underlay(&cap.stop(), encap);
    let st = va.status().expect("status");
    let d = st.drops;
    assert_eq!((d.no_sa_in, d.policy), (0, 0), "{d:?}");
    eprintln!(
        "[ipv6_underlay] vmsecd <-> vmsecd over IPv6, {encap} ESP: up {:.1} s after start, {esp} ESP frames, none \
         in clear; {:.1} s",
        up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn vmsecd_pair_raw_esp_over_ipv6() {
    vmsecd_pair("raw");
}

#[test]
fn vmsecd_pair_esp_in_udp_over_ipv6() {
    vmsecd_pair("udp");
}

#[test]
fn strongswan_over_ipv6() {
    let started = Instant::now();
    let mut bed = Bed::new("v6ul", "sw");
    for h in [&bed.a, &bed.b] {
        h.ip(&["-4", "addr", "flush", "dev", "u0"]);
    }
    underlay6(&[(&bed.a, 1), (&bed.b, 2)]);
    vm_subnet6(&bed.a, &bed.avm, 1);
    vm_subnet6(&bed.b, &bed.bvm, 2);
    let cap = bed.capture();
    let mut conn = Conn::to_vmsecd(PSK);
    conn.local_addr = UB.into();
    conn.remote_addr = UA.into();
    conn.local_id = UB.into();
    conn.remote_id = UA.into();
    conn.local_ts = "198.19.2.0/24,2001:db8:2::/64".into();
    conn.remote_ts = "198.19.1.0/24,2001:db8:1::/64".into();
    let charon = bed.charon(&[conn]);
    let mut v = bed.vmsecd(&v6_mesh("udp"));
    v.wait_status("hA-hB up", Duration::from_secs(30), |s| is_up(s, "hB"));
    let sas = charon.wait_sas("charon up", Duration::from_secs(30), |s| {
        s.iter()
            .any(|s| s.state == "ESTABLISHED" && s.children.iter().any(|c| c.state == "INSTALLED"))
    });
    let why = || {
        format!(
            "{}\n{}\n{}\n{:#?}\n{:#?}\n{}\n{}",
            bed.bvm.run("nstat", &["-az", "Udp*"]),
            bed.b.run("nstat", &["-az", "Ip*"]),
            bed.b.ip(&["-s", "link", "show", "ipsec0"]),
            v.status(),
            charon.list_sas(),
            v.diagnostics(),
            charon.diagnostics()
        )
    };
    for (vm, dst) in [
        (&bed.avm, B4),
        (&bed.avm, B6),
        (&bed.bvm, A4),
        (&bed.bvm, A6),
    ] {
        ping_ok(vm, dst, &why);
    }
    byte_checked(&bed.avm, &bed.bvm, A4, B4, &why);
    byte_checked(&bed.avm, &bed.bvm, A6, B6, &why);
    let esp = check_underlay(&cap.stop(), "udp");
    eprintln!(
        "[ipv6_underlay] vmsecd <-> charon over IPv6: {} Child SA, {esp} ESP frames, none in clear; {:.1} s",
        sas[0].children.len(),
        started.elapsed().as_secs_f64()
    );
}
