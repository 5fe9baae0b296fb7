//! `subnets = "libvirt"` with an IPv6 libvirt network (issue 17, item 3): hypervisor a runs Debian's real
//! libvirtd with one dual-stack NAT network (198.19.1.1/24 and 2001:db8:1::1/64, as `virsh net-define` takes
//! it with two `<ip>` elements); a's mesh entry says `subnets = "libvirt"` with `libvirt_range =
//! ["198.19.0.0/20", "2001:db8:1::/48"]`, so its vmsecd takes both subnets, and b, which lists its own dual
//! stack subnets, learns both from the traffic selectors: b's routes into the TUN and its status show them, and
//! the VMs reach each other in both families, both ways, without NAT (libvirt masquerades IPv4 to elsewhere,
//! vmsecd's exemptions lead its rules), TCP and UDP byte-checked.
//!
//! Needs root, iproute2, libvirt-daemon, libvirt-clients, dnsmasq-base, iptables, python3 and iputils-ping.

use std::time::{Duration, Instant};

use vmsecd_e2e::dualstack::{self, byte_checked, ping_ok, vm_subnet6};
use vmsecd_e2e::libvirt::Libvirtd;
use vmsecd_e2e::netns::NetnsGuard;
use vmsecd_e2e::vmsecd::{is_up, peer, Vmsecd};

const PSK: &str = "libvirt-ipv6-test-psk-0123456789";

#[test]
fn an_ipv6_libvirt_network_is_read_there_and_learned_elsewhere() {
    vmsecd_e2e::netns::require_root_and_ip();
    let started = Instant::now();
    let mut g = NetnsGuard::new("lv-ipv6");
    vmsecd_e2e::libvirt::require_libvirt();
    let hosts = g.underlay_lan(&["a", "b"]);
    let (a, b) = (hosts[0].clone(), hosts[1].clone());
    let dir = g.dir();
    a.sysctl("net.ipv4.ip_forward=1");
    let psk = dir.join("psk");
    std::fs::write(&psk, format!("{PSK}\n")).unwrap();
    std::fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let file = dir.join("mesh.toml");
    std::fs::write(
        &file,
        format!(
            r#"[mesh]
psk_file = {:?}

[[host]]
name = "hA"
address = "198.18.0.1"
subnets = "libvirt"
libvirt_range = ["198.19.0.0/20", "2001:db8:1::/48"]

[[host]]
name = "hB"
address = "198.18.0.2"
subnets = ["198.19.2.0/24", "2001:db8:2::/64"]
"#,
            psk.display().to_string()
        ),
    )
    .unwrap();

    let da = dir.join("libvirt-a");
    let la = Libvirtd::start(&a, &da);
    dualstack::check_test_address6("2001:db8:1::1");
    la.define_network_xml(
        "default",
        "<network>\n  <name>default</name>\n  <forward mode='nat'/>\n  \
         <bridge name='virbr0' stp='off' delay='0'/>\n  <ip address='198.19.1.1' netmask='255.255.255.0'>\n    \
         <dhcp><range start='198.19.1.100' end='198.19.1.200'/></dhcp>\n  </ip>\n  \
         <ip family='ipv6' address='2001:db8:1::1' prefix='64'/>\n</network>\n",
    );
    let avm = g.attach_vm(&a, "virbr0", 1, "avm");
    dualstack::add_addr6(&avm, "eth0", "2001:db8:1::10/64");
    avm.ip(&["-6", "route", "add", "default", "via", "2001:db8:1::1"]);
    let bvm = g.vm_subnet(&b, 2, "bvm");
    vm_subnet6(&b, &bvm, 2);

    let a_run = da.join("run/network");
    let a_etc = Libvirtd::etc_dir(&da).join("qemu/networks");
    let mut va = Vmsecd::start_with_args(
        &a,
        &dir.join("va"),
        &file,
        "hA",
        &[
            "--libvirt-dir",
            a_run.to_str().unwrap(),
            "--libvirt-dir",
            a_etc.to_str().unwrap(),
        ],
    );
    let mut vb = Vmsecd::start_with_file(&b, &dir.join("vb"), &file, "hB");
    let t = Duration::from_secs(30);
    va.wait_status("hA-hB up", t, |s| is_up(s, "hB"));
    let st = vb.wait_status("hB learned both", t, |s| {
        is_up(s, "hA") && peer(s, "hA").subnets.len() == 2
    });
    let learned = &peer(&st, "hA").subnets;
    assert!(
        learned.contains(&"198.19.1.0/24".to_owned())
            && learned.contains(&"2001:db8:1::/64".to_owned())
            && peer(&st, "hA").learned,
        "{st:#?}"
    );
    let r6 = b.ip(&["-6", "route", "show", "2001:db8:1::/64"]);
    assert!(r6.contains("dev vmsec0"), "{r6}");
    assert!(va.log().contains("2001:db8:1::/64"), "{}", va.diagnostics());
    let why = || format!("{}\n{}\n{}", la.log(), va.diagnostics(), vb.diagnostics());
    for (vm, dst) in [
        (&avm, "198.19.2.10"),
        (&avm, "2001:db8:2::10"),
        (&bvm, "198.19.1.10"),
        (&bvm, "2001:db8:1::10"),
    ] {
        ping_ok(vm, dst, &why);
    }
    for (srv, cli, dst, src) in [
        (&bvm, &avm, "2001:db8:2::10", "2001:db8:1::10"),
        (&bvm, &avm, "198.19.2.10", "198.19.1.10"),
    ] {
        let (seen, mss) = dualstack::tcp_probe(srv, cli, dst, 7020)
            .unwrap_or_else(|e| panic!("TCP {src} -> {dst}: {e}\n{}", why()));
        // libvirt's dnsmasq sends router advertisements on the IPv6 network, so the VM may also hold (and
        // prefer) a SLAAC address of 2001:db8:1::/64: any source in a's subnet shows there was no NAT.
        let ok = if src.contains(':') {
            seen.starts_with("2001:db8:1:")
        } else {
            seen == src
        };
        assert!(ok, "NAT between the VMs: {src} -> {dst} seen from {seen}");
        eprintln!("[libvirt_ipv6] TCP {src} -> {dst}: source kept, MSS {mss}");
    }
    byte_checked(&avm, &bvm, "2001:db8:1::10", "2001:db8:2::10", &why);
    eprintln!(
        "[libvirt_ipv6] learned 198.19.1.0/24 and 2001:db8:1::/64 from a's libvirt network; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
