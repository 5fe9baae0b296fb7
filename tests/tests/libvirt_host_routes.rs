//! A `subnets = "libvirt"` peer may not take a network its range holds that this host routes elsewhere.
//!
//! Hypervisor a lists 198.19.1.0/24 (its VM `avm`) and also has a network of its own outside the mesh, bridge
//! `virbr1` 198.19.200.0/24 with a VM `aown` (198.19.200.10), inside the range 198.19.128.0/17 the mesh file
//! gives libvirt host b, as the README allows ("a hypervisor's own bridges inside a `libvirt_range` are not
//! affected" by the fail-closed route). b is hostile: its libvirt network (its `--libvirt-dir`) is
//! 198.19.200.8/29, inside its range, so it narrows its selectors to that. Before the fix a learned it and
//! routed 198.19.200.8/29 into the tunnel, more specific than its own bridge's /24: what a (and its VMs) sent
//! to its own VM 198.19.200.10 went to b. Proven: a refuses the subnet (log line naming its own route), its
//! route to 198.19.200.10 stays on virbr1 while b keeps trying, and avm reaches aown.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use vmsecd_e2e::netns::NetnsGuard;
use vmsecd_e2e::traffic::ping_until_ok;
use vmsecd_e2e::vmsecd::Vmsecd;

const PSK: &str = "libvirt-host-routes-psk-0123456789";

#[test]
fn a_libvirt_peer_cannot_take_a_network_this_host_routes_elsewhere() {
    vmsecd_e2e::netns::require_root_and_ip();
    let started = Instant::now();
    let mut g = NetnsGuard::new("lvhostrt");
    let (a, b) = g.underlay_pair();
    let avm = g.vm_subnet(&a, 1, "avm");
    // a's own network outside the mesh, inside b's range.
    a.ip(&["link", "add", "virbr1", "type", "bridge"]);
    g.add_addr(&a, "virbr1", "198.19.200.1/24");
    a.ip(&["link", "set", "virbr1", "up"]);
    let aown = g.add_ns("aown");
    g.veth(&a, "vnet1", &aown, "eth0");
    a.ip(&["link", "set", "vnet1", "master", "virbr1"]);
    a.ip(&["link", "set", "vnet1", "up"]);
    g.add_addr(&aown, "eth0", "198.19.200.10/24");
    aown.ip(&["link", "set", "eth0", "up"]);
    aown.ip(&["route", "add", "default", "via", "198.19.200.1"]);
    assert!(
        ping_until_ok(&avm, "198.19.200.10", Duration::from_secs(5)),
        "a's own VMs reach each other before vmsecd"
    );

    let root = g.dir();
    let psk = root.join("psk");
    std::fs::write(&psk, PSK).expect("psk");
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let file = root.join("mesh.toml");
    std::fs::write(
        &file,
        format!(
            "[mesh]\npsk_file = {:?}\nfirewall = \"off\"\nencap = \"udp\"\n\n\
             [[host]]\nname = \"hA\"\naddress = \"198.18.0.1\"\nsubnets = [\"198.19.1.0/24\"]\n\n\
             [[host]]\nname = \"hB\"\naddress = \"198.18.0.2\"\nsubnets = \"libvirt\"\n\
             libvirt_range = [\"198.19.128.0/17\"]\n",
            psk.display().to_string()
        ),
    )
    .expect("mesh file");
    // b's libvirt network, as its vmsecd reads it.
    let nets = root.join("b-networks");
    std::fs::create_dir_all(&nets).expect("dir");
    std::fs::write(
        nets.join("grab.xml"),
        "<network><name>grab</name><forward mode='route'/><bridge name='virbr0'/>\
         <ip address='198.19.200.9' prefix='29'/></network>",
    )
    .expect("network xml");

    let va = Vmsecd::start_with_file(&a, &root.join("a"), &file, "hA");
    let nets_arg = nets.display().to_string();
    let vb = Vmsecd::start_with_args(
        &b,
        &root.join("b"),
        &file,
        "hB",
        &["--libvirt-dir", &nets_arg],
    );
    // b narrows to its /29 in every Child SA it makes; a must refuse it, and its route to its own VM must never
    // move into the tunnel, also while b tries again (5 s after the first refusal).
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut refused: Option<Instant> = None;
    while refused.is_none_or(|t| t.elapsed() < Duration::from_secs(5)) {
        let get = a.ip(&["route", "get", "198.19.200.10"]);
        assert!(
            get.contains("dev virbr1"),
            "a routes its own VM 198.19.200.10 into the tunnel to b: {get}\nroutes:\n{}\n{}",
            a.ip(&["route", "show"]),
            va.diagnostics()
        );
        if refused.is_none()
            && va
                .log()
                .contains("which this host routes through another interface")
        {
            refused = Some(Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "a never refused b's subnet\n{}\n{}",
            va.diagnostics(),
            vb.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        ping_until_ok(&avm, "198.19.200.10", Duration::from_secs(5)),
        "a's VMs still reach its own network\n{}",
        va.diagnostics()
    );
    assert!(vb.log().contains("Child SA"), "{}", vb.diagnostics());
    eprintln!(
        "libvirt_host_routes: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
