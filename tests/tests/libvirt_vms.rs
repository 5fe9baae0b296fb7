//! Real VMs under libvirt (issue 17, item 1): two hypervisor namespaces, each with Debian's real libvirtd
//! running its network and QEMU drivers, a NAT network (198.19.N.0/24 on virbr0) and one guest that libvirtd
//! defines and starts (`virsh define`/`start`, `<domain type='qemu'>` under TCG, direct kernel boot, a virtio
//! NIC on the network's bridge, MTU 1500, a static address). Through vmsecd: the guests ping each other, move
//! TCP and UDP with every byte checked both ways, full-size DF pings learn the tunnel's MTU from the
//! hypervisor's ICMP "fragmentation needed" (no black hole); after `virsh destroy` + `start` of a guest and a
//! libvirtd restart, the mesh carries the guests' traffic again within 30 s, with vmsecd untouched.
//!
//! Needs root, iproute2, libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients, dnsmasq-base, iptables,
//! qemu-system-x86, linux-image-amd64, busybox-static, python3 and iputils-ping (in the guests, which run the
//! host's root file system).

use std::time::{Duration, Instant};

use vmsecd_e2e::guest;
use vmsecd_e2e::libvirt::Libvirtd;
use vmsecd_e2e::libvirt_guest::{tcp_intact, udp_intact, VirtGuest};
use vmsecd_e2e::netns::NetnsGuard;
use vmsecd_e2e::vmsecd::{is_up, Mesh, Vmsecd};

const PSK: &str = "libvirt-vms-test-psk-0123456789";

/// Pings `dst` from the guest until an answer, at most `within`; returns how long it took.
fn ping_until(g: &VirtGuest, dst: &str, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let out = g.exec_timeout(&format!("ping -n -c 1 -W 1 {dst}"), Duration::from_secs(30));
        if out.code == 0 {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "no answer from {dst} within {within:?}: {}{}\n{}",
            out.stdout,
            out.stderr,
            g.diagnostics()
        );
    }
}

/// The guest's static address on the libvirt network, and its MTU.
fn configure(g: &VirtGuest, n: u8) -> String {
    g.run(&format!(
        "ip addr add 198.19.{n}.10/24 dev eth0 && ip route add default via 198.19.{n}.1 && \
         sysctl -qw net.core.rmem_max=8388608 && \
         cat /sys/class/net/eth0/mtu"
    ))
    .trim()
    .to_owned()
}

#[test]
fn qemu_guests_started_by_libvirt_reach_each_other_through_vmsecd() {
    vmsecd_e2e::netns::require_root_and_ip();
    let started = Instant::now();
    let mut g = NetnsGuard::new("lv-vms");
    let hosts = g.underlay_lan(&["a", "b"]);
    let (a, b) = (hosts[0].clone(), hosts[1].clone());
    let dir = g.dir();
    for ns in [&a, &b] {
        ns.sysctl("net.ipv4.ip_forward=1");
    }
    let _lock = guest::lock();
    let mut la = Libvirtd::start_with_qemu(&a, &dir.join("libvirt-a"));
    let lb = Libvirtd::start_with_qemu(&b, &dir.join("libvirt-b"));
    la.define_nat_network("default", 1);
    lb.define_nat_network("default", 2);
    let mut mesh = Mesh::two_hosts(PSK);
    mesh.encap = "auto".into();
    let va = Vmsecd::start(&a, &dir.join("va"), &mesh, "hA");
    let vb = Vmsecd::start(&b, &dir.join("vb"), &mesh, "hB");
    let pid = std::process::id() % 10000;
    let mut ga = VirtGuest::define_and_start(
        la.qemu(),
        &dir.join("ga"),
        &format!("vma{pid}"),
        "default",
        "52:54:00:17:01:10",
    );
    let gb = VirtGuest::define_and_start(
        lb.qemu(),
        &dir.join("gb"),
        &format!("vmb{pid}"),
        "default",
        "52:54:00:17:02:10",
    );
    let mtu = configure(&ga, 1);
    configure(&gb, 2);
    assert_eq!(mtu, "1500", "the guest's virtio NIC");
    let why = || format!("{}\n{}", va.diagnostics(), vb.diagnostics());
    let t = ping_until(&ga, "198.19.2.10", Duration::from_secs(60));
    eprintln!(
        "[libvirt_vms] guests: MTU {mtu}; first echo a -> b after {:.1} s of pinging",
        t.as_secs_f64()
    );
    ping_until(&gb, "198.19.1.10", Duration::from_secs(30));
    let st = va.status().expect("status");
    assert!(is_up(&st, "hB"), "{st:#?}\n{}", why());
    let out = ga.run("ping -n -q -c 10 -i 0.2 -W 2 198.19.2.10 | grep transmitted");
    eprintln!("[libvirt_vms] a -> b: {}", out.trim());

    // Full-size packets with DF: the hypervisor answers "fragmentation needed" with the TUN's MTU (1400), the
    // guest's kernel learns it and the next full-size ping is cut to fit; no black hole.
    let df = ga.exec_timeout(
        "ping -n -c 3 -i 0.5 -W 2 -M do -s 1472 198.19.2.10; ip route get 198.19.2.10; \
         ping -n -c 3 -i 0.2 -W 2 -M do -s 1372 198.19.2.10",
        Duration::from_secs(60),
    );
    eprintln!(
        "[libvirt_vms] DF pings of 1500 bytes, then 1400:\n{}{}",
        df.stdout, df.stderr
    );
    assert!(
        df.stdout.contains("mtu 1400") || df.stderr.contains("mtu=1400"),
        "the guest did not learn the tunnel's MTU: {}{}",
        df.stdout,
        df.stderr
    );
    assert_eq!(df.code, 0, "1400-byte DF pings after the MTU was learned");

    for (srv, cli, addr) in [(&gb, &ga, "198.19.2.10"), (&ga, &gb, "198.19.1.10")] {
        let t = Instant::now();
        assert_eq!(
            tcp_intact(srv, cli, addr, 2, 1 << 20),
            2,
            "TCP to {addr}\n{}",
            why()
        );
        assert_eq!(
            udp_intact(srv, cli, addr, 200),
            (200, 0),
            "UDP to {addr}\n{}",
            why()
        );
        eprintln!(
            "[libvirt_vms] to {addr}: 2 x 1 MiB TCP and 200 UDP datagrams intact in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }

    // virsh destroy + start: a new boot, a new tap on the bridge; the mesh needs nothing.
    ga.destroy();
    let t = Instant::now();
    let boot = ga.start();
    configure(&ga, 1);
    ping_until(&ga, "198.19.2.10", Duration::from_secs(30));
    eprintln!(
        "[libvirt_vms] virsh destroy + start: boot {:.1} s, traffic again {:.1} s after start",
        boot.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );

    // libvirtd restarted (its guests and networks keep running, its rules are re-created).
    la.restart();
    let t = Instant::now();
    ping_until(&ga, "198.19.2.10", Duration::from_secs(30));
    ping_until(&gb, "198.19.1.10", Duration::from_secs(30));
    eprintln!(
        "[libvirt_vms] libvirtd restart: traffic within {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(
        va.log().matches("IKE SA established").count() == 1,
        "vmsecd set its IKE SA up again:\n{}",
        why()
    );
    eprintln!("[libvirt_vms] {:.1} s", started.elapsed().as_secs_f64());
}
