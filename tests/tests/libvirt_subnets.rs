//! `subnets = "libvirt"`: a host whose mesh entry does not list its subnets. Hypervisor a runs a real libvirtd
//! (network driver only, see `vmsecd_e2e::libvirt`) with a NAT network 198.19.1.0/24, and its vmsecd reads that
//! network's XML (`--libvirt-dir`, libvirtd's private /run/libvirt/network and /etc/libvirt/qemu/networks) to
//! know its own subnets; hypervisor b lists 198.19.2.0/24 and learns a's subnet from the traffic selectors a
//! narrows its own `libvirt_range = ["198.19.0.0/20"]` to. Proven: a VM on each side reaches the other both
//! ways without NAT, b's route and status show the learned subnet; a third libvirt host hC (range
//! 198.19.16.0/20) that claims a's subnet 198.19.1.0/24 (its own copy of the mesh file says so, as a
//! compromised member's would) gets no Child SA from a or b while a and b carry on, and neither after a has
//! stopped (when no learned subnet of a's is left to clash with: one mesh-wide range let it take a's subnet
//! then); when a stops, b's route goes and its fail-closed route for a's range stays.

use std::path::Path;
use std::time::Duration;

use vmsecd_e2e::libvirt::{tcp_seen_source, Libvirtd};
use vmsecd_e2e::netns::{output_of, Netns, NetnsGuard};
use vmsecd_e2e::traffic::ping_until_ok;
use vmsecd_e2e::vmsecd::{is_up, peer, vmsecd_bin, Vmsecd};

const PSK: &str = "libvirt-subnets-test-psk-0123456789";
const AVM: &str = "198.19.1.10";
const BVM: &str = "198.19.2.10";

fn mesh(psk_file: &Path, a_networks: &str) -> String {
    mesh_with_ranges(psk_file, a_networks, "198.19.0.0/20", "198.19.16.0/20")
}

/// The mesh with hA's and hC's ranges as given: what hC's own (lying) copy of the file changes.
fn mesh_with_ranges(psk_file: &Path, a_networks: &str, a_range: &str, c_range: &str) -> String {
    format!(
        r#"[mesh]
psk_file = {psk:?}

[[host]]
name = "hA"
address = "198.18.0.1"
subnets = "libvirt"
libvirt_networks = {a_networks}
libvirt_range = ["{a_range}"]

[[host]]
name = "hB"
address = "198.18.0.2"
subnets = ["198.19.2.0/24"]

[[host]]
name = "hC"
address = "198.18.0.3"
subnets = "libvirt"
libvirt_range = ["{c_range}"]
"#,
        psk = psk_file.display().to_string(),
    )
}

/// `vmsecd check` in `ns` as `host`: (success, stdout and stderr).
fn check(ns: &Netns, file: &Path, host: &str, dirs: &[&Path]) -> (bool, String) {
    let mut cmd = ns.command(vmsecd_bin());
    cmd.args(["check", "--config"])
        .arg(file)
        .args(["--host", host]);
    for d in dirs {
        cmd.arg("--libvirt-dir").arg(d);
    }
    let out = output_of(&mut cmd);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `vmsecd reload` in `ns`: (success, stdout and stderr).
fn reload(ns: &Netns) -> (bool, String) {
    let out = output_of(ns.command(vmsecd_bin()).arg("reload"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn route(ns: &Netns, dst: &str) -> String {
    ns.ip(&["route", "show", dst])
}

#[test]
fn a_libvirt_hosts_subnets_are_read_there_and_learned_elsewhere() {
    vmsecd_e2e::netns::require_root_and_ip();
    let mut g = NetnsGuard::new("lv-subnets");
    vmsecd_e2e::libvirt::require_libvirt();
    let hosts = g.underlay_lan(&["a", "b", "c"]);
    let (a, b, c) = (hosts[0].clone(), hosts[1].clone(), hosts[2].clone());
    let dir = g.dir();
    for ns in [&a, &b] {
        ns.sysctl("net.ipv4.ip_forward=1");
    }
    let psk = dir.join("psk");
    std::fs::write(&psk, format!("{PSK}\n")).unwrap();
    std::fs::set_permissions(&psk, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let file = dir.join("mesh.toml");
    std::fs::write(&file, mesh(&psk, r#"["default"]"#)).unwrap();

    let (da, db) = (dir.join("libvirt-a"), dir.join("libvirt-b"));
    let la = Libvirtd::start(&a, &da);
    let lb = Libvirtd::start(&b, &db);
    // What libvirtd (in its own mount namespace) sees as /run/libvirt/network and /etc/libvirt/qemu/networks.
    let a_run = da.join("run/network");
    let a_etc = Libvirtd::etc_dir(&da).join("qemu/networks");
    let a_dirs: [&Path; 2] = [&a_run, &a_etc];

    // Before a has a network, hA's check says what is missing and fails.
    let (ok, text) = check(&a, &file, "hA", &a_dirs);
    assert!(!ok, "{text}");
    assert!(
        text.contains("host[0].subnets: hA takes its subnets from the libvirt networks default, but default is not defined on this machine")
            && text.contains("virsh net-define"),
        "{text}"
    );

    la.define_nat_network("default", 1);
    lb.define_nat_network("default", 2);
    let avm = g.attach_vm(&a, "virbr0", 1, "avm");
    let bvm = g.attach_vm(&b, "virbr0", 2, "bvm");

    let (ok, text) = check(&a, &file, "hA", &a_dirs);
    assert!(ok, "{text}");
    assert!(
        text.contains("subnets 198.19.1.0/24 (subnets = \"libvirt\": from libvirt networks default 198.19.1.0/24)"),
        "{text}"
    );
    let (ok, text) = check(&b, &file, "hB", &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("198.19.2.0/24 <-> learned from its Child SA (subnets = \"libvirt\"), within libvirt_range 198.19.0.0/20"),
        "{text}"
    );

    let a_args = [
        "--libvirt-dir",
        a_run.to_str().unwrap(),
        "--libvirt-dir",
        a_etc.to_str().unwrap(),
    ];
    let mut va = Vmsecd::start_with_args(&a, &dir.join("vmsecd-a"), &file, "hA", &a_args);
    // b has no libvirt host of its own to read; its own subnets are listed.
    let mut vb = Vmsecd::start_with_file(&b, &dir.join("vmsecd-b"), &file, "hB");
    va.wait_log(
        "local subnets 198.19.1.0/24 from libvirt networks default",
        Duration::from_secs(10),
    );
    va.wait_status("the tunnel to hB", Duration::from_secs(20), |s| {
        is_up(s, "hB")
    });
    let st = vb.wait_status("hA's learned subnet", Duration::from_secs(20), |s| {
        is_up(s, "hA") && peer(s, "hA").subnets == ["198.19.1.0/24"]
    });
    assert!(peer(&st, "hA").learned, "{st:#?}");
    let diag = |va: &Vmsecd, vb: &Vmsecd| format!("{}\n{}", va.diagnostics(), vb.diagnostics());
    assert!(
        route(&b, "198.19.1.0/24").contains("dev vmsec0"),
        "b routes a's learned subnet into the TUN: {}\n{}",
        b.ip(&["route"]),
        diag(&va, &vb)
    );
    // a knows b's subnet from the file, as before.
    assert!(route(&a, "198.19.2.0/24").contains("dev vmsec0"));
    let text = output_of(b.command(vmsecd_bin()).arg("status"));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("subnets 198.19.1.0/24 (learned from its Child SA: subnets = \"libvirt\")")
            && text.contains("subnets none yet (learned"),
        "{text}"
    );

    // VM to VM, both ways, and without libvirt's NAT: b's firewall exemption followed the learned subnet.
    assert!(
        ping_until_ok(&avm, BVM, Duration::from_secs(10)),
        "{}",
        diag(&va, &vb)
    );
    assert!(
        ping_until_ok(&bvm, AVM, Duration::from_secs(10)),
        "{}",
        diag(&va, &vb)
    );
    assert_eq!(
        tcp_seen_source(&bvm, &avm, BVM, 5101).as_deref(),
        Ok(AVM),
        "{}",
        diag(&va, &vb)
    );
    assert_eq!(
        tcp_seen_source(&avm, &bvm, AVM, 5102).as_deref(),
        Ok(BVM),
        "{}",
        diag(&va, &vb)
    );

    // hC claims hA's subnet: its libvirt network is 198.19.1.0/24, and its own copy of the mesh file puts its
    // range there. a and b confine hC to 198.19.16.0/20: no Child SA, no route, no learned subnet.
    let c_nets = dir.join("libvirt-c");
    std::fs::create_dir_all(&c_nets).unwrap();
    std::fs::write(
        c_nets.join("clash.xml"),
        "<network><name>clash</name><forward mode='nat'/><bridge name='virbr0'/>\
         <ip address='198.19.1.1' netmask='255.255.255.0'/></network>",
    )
    .unwrap();
    let c_file = dir.join("mesh-c.toml");
    std::fs::write(
        &c_file,
        mesh_with_ranges(&psk, r#"["default"]"#, "198.19.0.0/24", "198.19.1.0/24"),
    )
    .unwrap();
    let start_c = || {
        Vmsecd::start_with_args(
            &c,
            &dir.join("vmsecd-c"),
            &c_file,
            "hC",
            &["--libvirt-dir", c_nets.to_str().unwrap()],
        )
    };
    let vc = start_c();
    wait_until(
        Duration::from_secs(30),
        || refused_c(&va) && refused_c(&vb),
        || format!("{}\n{}", diag(&va, &vb), vc.diagnostics()),
    );
    let st = vb.status().unwrap();
    assert!(peer(&st, "hC").subnets.is_empty(), "{st:#?}");
    assert!(peer(&st, "hC").children.is_empty(), "{st:#?}");
    assert_eq!(peer(&st, "hA").subnets, ["198.19.1.0/24"], "{st:#?}");
    assert!(
        ping_until_ok(&avm, BVM, Duration::from_secs(5)),
        "a and b carry on: {}\n{}",
        diag(&va, &vb),
        vc.diagnostics()
    );
    drop(vc);

    // a gets a second network; a reload with a name libvirt does not know is refused and changes nothing, the
    // right one makes a propose both subnets, and b learns them.
    let lab = dir.join("lab.xml");
    std::fs::write(
        &lab,
        "<network><name>lab</name><forward mode='nat'/><bridge name='virbr1' stp='off' delay='0'/>\
         <ip address='198.19.3.1' netmask='255.255.255.0'/></network>",
    )
    .unwrap();
    la.virsh(&["net-define", lab.to_str().unwrap()]);
    la.virsh(&["net-start", "lab"]);
    std::fs::write(&file, mesh(&psk, r#"["default", "nope"]"#)).unwrap();
    let (ok, text) = reload(&a);
    assert!(!ok, "{text}");
    assert!(
        text.contains("but nope is not defined on this machine")
            && text.contains("networks found in"),
        "{text}"
    );
    std::fs::write(&file, mesh(&psk, r#"["default", "lab"]"#)).unwrap();
    let (ok, text) = reload(&a);
    assert!(ok && text.contains("host hB changed"), "{text}");
    vb.wait_status("hA's two learned subnets", Duration::from_secs(20), |s| {
        is_up(s, "hA") && peer(s, "hA").subnets == ["198.19.1.0/24", "198.19.3.0/24"]
    });
    assert!(
        route(&b, "198.19.3.0/24").contains("dev vmsec0"),
        "{}",
        b.ip(&["route"])
    );
    assert!(
        ping_until_ok(&avm, BVM, Duration::from_secs(10)),
        "after the reload: {}",
        diag(&va, &vb)
    );

    // a stops: its Child SA is deleted, and b's route to the learned subnet goes with it.
    assert!(va.terminate(Duration::from_secs(10)).is_some());
    vb.wait_status("hA's subnet forgotten", Duration::from_secs(10), |s| {
        peer(s, "hA").subnets.is_empty()
    });
    assert_eq!(
        route(&b, "198.19.1.0/24").trim(),
        "",
        "{}",
        vb.diagnostics()
    );
    assert!(
        b.ip(&["route", "show", "proto", "118"])
            .contains("unreachable 198.19.0.0/20"),
        "b's fail-closed route for a's range: {}",
        b.ip(&["route"])
    );

    // With a down nothing learned of a's is left on b to clash with: hC is still confined to its own range.
    let vc = start_c();
    let before = vb.log().len();
    wait_until(
        Duration::from_secs(30),
        || refused_c_since(&vb, before),
        || format!("{}\n{}", vb.diagnostics(), vc.diagnostics()),
    );
    let st = vb.status().unwrap();
    assert!(peer(&st, "hC").subnets.is_empty(), "{st:#?}");
    assert!(peer(&st, "hA").subnets.is_empty(), "{st:#?}");
    assert!(
        !route(&b, "198.19.1.0/24").contains("vmsec0"),
        "b routes a's subnet to hC: {}",
        b.ip(&["route"])
    );
    drop(vc);
    assert!(vb.terminate(Duration::from_secs(10)).is_some());
    drop((la, lb));
}

/// True once `v`'s log shows hC's Child SA refused: by the selectors (its range holds no subnet of its own) or
/// by the learned-subnet check.
fn refused_c(v: &Vmsecd) -> bool {
    refused_c_since(v, 0)
}

fn refused_c_since(v: &Vmsecd, from: usize) -> bool {
    let log = v.log();
    log.get(from..).unwrap_or("").lines().any(|l| {
        l.contains("hC")
            && (l.contains("Child SA refused")
                || l.contains("outside its libvirt_range")
                || l.contains("traffic selectors unacceptable"))
    })
}

/// Polls `ok` until it holds; panics with `diag()` after `timeout`.
fn wait_until(timeout: Duration, ok: impl Fn() -> bool, diag: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + timeout;
    while !ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "not reached in {timeout:?}\n{}",
            diag()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
