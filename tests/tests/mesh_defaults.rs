//! The mesh file as a new user writes it (the README's minimal file: no `encap` key, so `encap = "auto"`):
//! between two vmsecd hosts without a NAT, both announce vmsecd's Vendor ID and the tunnel runs on ESP in UDP
//! 4500 (GSO/GRO batches), which a capture of the underlay shows: no IP protocol 50 at all. Towards a strongSwan
//! peer the same file keeps working as before: charon does not know the ID, ignores it, and forces UDP
//! encapsulation itself (`encap = yes`, as its kernel-libipsec needs), which vmsecd sees as a NAT.

use std::net::Ipv4Addr;
use std::time::Duration;

use vmsecd_e2e::bed::Bed;
use vmsecd_e2e::netns::NetnsGuard;
use vmsecd_e2e::strongswan::Conn;
use vmsecd_e2e::traffic::{self, ping_until_ok, tcp_intact, Capture};
use vmsecd_e2e::vmsecd::{is_up, peer, Mesh, Vmsecd};

const PSK: &str = "mesh-defaults-test-psk-0123456789";

#[test]
fn two_vmsecd_hosts_with_the_minimal_mesh_file_use_esp_in_udp() {
    vmsecd_e2e::netns::require_root_and_ip();
    let mut g = NetnsGuard::new("meshdef");
    let (a, b) = g.underlay_pair();
    let avm = g.vm_subnet(&a, 1, "avm");
    let bvm = g.vm_subnet(&b, 2, "bvm");
    let root = g.dir();
    let mut m = Mesh::two_hosts(PSK);
    m.encap = String::new();
    let mesh_text = m.render(std::path::Path::new("psk"));
    assert!(!mesh_text.contains("encap"), "{mesh_text}");
    let cap = Capture::start(&a, "u0", &root.join("underlay.pcap"));
    let mut va = Vmsecd::start(&a, &root.join("a"), &m, "hA");
    let mut vb = Vmsecd::start(&b, &root.join("b"), &m, "hB");
    let t = Duration::from_secs(20);
    va.wait_status("hA-hB up", t, |s| is_up(s, "hB"));
    vb.wait_status("hB-hA up", t, |s| is_up(s, "hA"));
    assert!(ping_until_ok(&avm, "198.19.2.10", Duration::from_secs(5)));
    assert_eq!(tcp_intact(&bvm, &avm, "198.19.2.10", 2, 1 << 20), 2);
    assert_eq!(tcp_intact(&avm, &bvm, "198.19.1.10", 2, 1 << 20), 2);
    let captured = cap.stop();

    for (v, other) in [(&va, "hB"), (&vb, "hA")] {
        let s = v.status().expect("status");
        let ike = peer(&s, other).ike.clone().expect("IKE SA");
        assert!(ike.udp_encap, "{ike:?}\n{}", v.diagnostics());
        assert_eq!(ike.encap, "udp-vmsecd", "{ike:?}\n{}", v.diagnostics());
        assert!(
            v.log().contains("encap=udp-vmsecd"),
            "the log says why:\n{}",
            v.log()
        );
        assert!(!v.log().contains("keepalive"), "no NAT, no keepalives");
    }
    let (ha, hb) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 2));
    let raw = captured.ipv4.iter().filter(|f| f.proto == 50).count();
    let esp_udp = captured
        .ipv4
        .iter()
        .filter(|f| {
            f.proto == 17
                && (f.sport, f.dport) == (Some(4500), Some(4500))
                && f.payload.len() > 8
                && f.payload[..4] != [0; 4]
        })
        .count();
    assert_eq!(raw, 0, "no raw ESP on the underlay");
    // A UDP GSO batch crosses the veth as one frame: 4 MiB make a few hundred.
    assert!(esp_udp > 100, "ESP in UDP 4500: {esp_udp} frames");
    let vms: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 19, 1, 10), Ipv4Addr::new(198, 19, 2, 10)];
    let bad = traffic::foreign_frames(
        &captured,
        ha,
        hb,
        &[(Ipv4Addr::new(198, 19, 0, 0), 16)],
        &vms,
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn a_strongswan_peer_with_the_default_encap_still_gets_esp_in_udp() {
    let mut bed = Bed::new("meshdef", "swan");
    let c = bed.charon(&[Conn::to_vmsecd(PSK)]);
    let mut m = Mesh::two_hosts(PSK);
    m.encap = String::new();
    let mut v = bed.vmsecd(&m);
    bed.connect(&mut v, &c, true, "net");
    let s = v.status().expect("status");
    let ike = peer(&s, "hB").ike.clone().expect("IKE SA");
    // charon's `encap = yes` fakes its NAT_DETECTION_SOURCE_IP hash: vmsecd sees a NAT, as before the Vendor ID.
    assert_eq!(
        (ike.udp_encap, ike.encap.as_str()),
        (true, "udp-nat"),
        "{ike:?}\n{}",
        v.diagnostics()
    );
    let sas = c.list_sas();
    assert!(
        sas.iter()
            .flat_map(|s| &s.children)
            .any(|ch| ch.state == "INSTALLED" && ch.encap),
        "charon carries ESP in UDP: {sas:#?}"
    );
    assert_eq!(
        tcp_intact(&bed.bvm, &bed.avm, "198.19.2.10", 2, 1 << 20),
        2,
        "{}\n{}",
        v.diagnostics(),
        c.diagnostics()
    );
}
