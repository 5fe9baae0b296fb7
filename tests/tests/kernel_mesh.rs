//! A mixed mesh as a migration looks halfway: three hosts from one mesh file, b0 running vmsecd, c0 libreswan
//! 4.10 and d0 strongSwan (kernel ESP), each in a Linux guest; every pair carries traffic (libreswan <-> strongSwan
//! too), configured with the README's migration snippets (addresses and subnets per host).
//!
//! ```text
//!   b0vm 198.19.1.10 -- [b0: vmsecd 198.18.0.1] --+
//!   cvm  198.19.2.10 -- [guest c0: pluto 198.18.0.2] --+-- switch (bridge br0)
//!   dvm  198.19.3.10 -- [guest d0: charon 198.18.0.3] --+
//! ```

use std::time::{Duration, Instant};

use vmsecd_e2e::guest::{self, Guest, Nic};
use vmsecd_e2e::kernel_peer::{configure_gateway, GuestCharon, PeerSa};
use vmsecd_e2e::libreswan::{GuestPluto, LswConn};
use vmsecd_e2e::netns::{Netns, NetnsGuard};
use vmsecd_e2e::strongswan::Conn;
use vmsecd_e2e::traffic;
use vmsecd_e2e::vmsecd::{peer, HostEntry, Mesh, Vmsecd};

const PSK: &str = "kernel-mesh-psk-0123456789abcdef";
const GUEST_MEM: u32 = 384;

/// A guest gateway's VM namespace: a tap `vm0` with 198.19.`n`.10/24, default route via .1.
fn vm_ns(g: &mut NetnsGuard, suffix: &str) -> Netns {
    g.add_ns(suffix)
}

fn host(name: &str, n: u8) -> HostEntry {
    HostEntry {
        name: name.into(),
        address: format!("198.18.0.{n}"),
        subnets: vec![format!("198.19.{n}.0/24")],
        port: None,
    }
}

/// libreswan's conn from c0 (host 2) to host `n`.
fn lsw_conn(name: &str, n: u8) -> LswConn {
    let mut c = LswConn::to_vmsecd(PSK);
    c.name = name.into();
    c.left = "198.18.0.2".into();
    c.leftsubnet = "198.19.2.0/24".into();
    c.leftsourceip = "198.19.2.1".into();
    c.right = format!("198.18.0.{n}");
    c.rightsubnet = format!("198.19.{n}.0/24");
    c
}

/// strongSwan's connection from d0 (host 3) to host `n`.
fn sw_conn(name: &str, n: u8) -> Conn {
    let mut c = Conn::to_vmsecd(PSK);
    c.name = name.into();
    c.child = format!("net-{name}");
    c.encap = false;
    c.local_addr = "198.18.0.3".into();
    c.local_id = "198.18.0.3".into();
    c.remote_addr = format!("198.18.0.{n}");
    c.remote_id = format!("198.18.0.{n}");
    c.local_ts = "198.19.3.0/24".into();
    c.remote_ts = format!("198.19.{n}.0/24");
    c
}

#[test]
fn kernel_mesh_vmsecd_libreswan_strongswan() {
    let t = Instant::now();
    let mut g = NetnsGuard::new("kmesh");
    let hosts = g.underlay_lan(&["b0"]);
    let b0 = hosts[0].clone();
    let ul = g.namespaces()[0].clone();
    let b0vm = g.vm_subnet(&b0, 1, "b0vm");
    let cvm = vm_ns(&mut g, "cvm");
    let dvm = vm_ns(&mut g, "dvm");
    let lock = guest::lock();
    let dir = g.dir();
    let c0 = Guest::boot(
        &lock,
        &dir.join("c0"),
        "c0",
        &[Nic::new(&ul, "tc0"), Nic::new(&cvm, "vm0")],
        GUEST_MEM,
    );
    let d0 = Guest::boot(
        &lock,
        &dir.join("d0"),
        "d0",
        &[Nic::new(&ul, "td0"), Nic::new(&dvm, "vm0")],
        GUEST_MEM,
    );
    for tap in ["tc0", "td0"] {
        ul.ip(&["link", "set", tap, "master", "br0"]);
    }
    for (vm, n) in [(&cvm, 2u8), (&dvm, 3)] {
        g.add_addr(vm, "vm0", &format!("198.19.{n}.10/24"));
        vm.ip(&["route", "add", "default", "via", &format!("198.19.{n}.1")]);
    }
    configure_gateway(&c0, "198.18.0.2/24", "198.19.2.1/24");
    configure_gateway(&d0, "198.18.0.3/24", "198.19.3.1/24");

    let pluto = GuestPluto::start(&c0, &[lsw_conn("b0", 1), lsw_conn("d0", 3)]);
    let charon = GuestCharon::start(&d0, &[sw_conn("b0", 1), sw_conn("c0", 2)]);
    let mut mesh = Mesh::two_hosts(PSK);
    mesh.encap = "auto".into();
    mesh.hosts = vec![host("b0", 1), host("c0", 2), host("d0", 3)];
    let mut v = Vmsecd::start(&b0, &dir.join("vmsecd"), &mesh, "b0");
    let d = || {
        format!(
            "{}\n{}\n{}",
            v.diagnostics(),
            pluto.diagnostics(),
            charon.diagnostics()
        )
    };
    // strongSwan on d0 sets up its tunnel to libreswan on c0 (vmsecd, on the lowest address, starts its own).
    let out = charon.initiate("net-c0", 60);
    assert!(
        out.code == 0,
        "d0 -> c0: swanctl --initiate failed:\n{}\n{}",
        out.stdout,
        d()
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    while !v.status().is_ok_and(|s| {
        ["c0", "d0"].iter().all(|p| {
            s.peers
                .iter()
                .any(|x| x.name == *p && x.state == "established" && !x.children.is_empty())
        })
    }) {
        assert!(
            Instant::now() < deadline,
            "vmsecd: tunnels to c0 and d0 not up in 90 s\n{}",
            d()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // vmsecd and each peer agree on the Child SA between them (charon: IKE SPIs too).
    let st = v.status().expect("status");
    let c0_view = pluto.sas_between("198.18.0.2", "198.18.0.1");
    let ours = &peer(&st, "c0").children[0];
    assert!(
        c0_view.iter().any(|s| s
            .children
            .iter()
            .any(|c| c.0 == ours.spi_out && c.1 == ours.spi_in)),
        "vmsecd and libreswan disagree on the Child SA: {ours:#?} vs {c0_view:#?}\n{}",
        d()
    );
    let d0_view: Vec<PeerSa> = charon
        .list_sas()
        .iter()
        .filter(|s| s.name == "b0")
        .map(PeerSa::from)
        .collect();
    let ike = peer(&st, "d0").ike.clone().expect("IKE SA with d0");
    assert!(
        d0_view
            .iter()
            .any(|s| s.spi_i == ike.spi_i && s.spi_r == ike.spi_r),
        "vmsecd and strongSwan disagree on the IKE SA: {ike:#?} vs {d0_view:#?}\n{}",
        d()
    );
    // Every pair of VMs, both ways: reachability, then every byte of TCP and UDP.
    let vms = [
        (&b0vm, "198.19.1.10", "b0"),
        (&cvm, "198.19.2.10", "c0"),
        (&dvm, "198.19.3.10", "d0"),
    ];
    for (i, (x, xa, xn)) in vms.iter().enumerate() {
        for (y, ya, yn) in vms.iter().skip(i + 1) {
            for (from, to, to_addr, what) in [
                (x, y, *ya, format!("{xn} -> {yn}")),
                (y, x, *xa, format!("{yn} -> {xn}")),
            ] {
                assert!(
                    traffic::ping_until_ok(from, to_addr, Duration::from_secs(30)),
                    "{what}: no ping answer in 30 s\n{}",
                    d()
                );
                let tcp = traffic::tcp_intact(to, from, to_addr, 2, 512 << 10);
                assert_eq!(tcp, 2, "{what}: TCP connections intact\n{}", d());
                let udp = traffic::udp_intact(to, from, to_addr, 50);
                assert_eq!(
                    udp,
                    (50, 0),
                    "{what}: UDP datagrams (intact, damaged)\n{}",
                    d()
                );
                eprintln!("[kmesh] {what}: ping, TCP and UDP intact");
            }
        }
    }
    eprintln!(
        "[kmesh] every pair carries traffic; {:.1} s (guests booted in {:.1} s and {:.1} s)",
        t.elapsed().as_secs_f64(),
        c0.booted_in().as_secs_f64(),
        d0.booted_in().as_secs_f64()
    );
    v.terminate(Duration::from_secs(10));
}
