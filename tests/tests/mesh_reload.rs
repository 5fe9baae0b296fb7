//! Hosts join and leave the mesh by editing the one mesh file: three hypervisors on one underlay LAN, the mesh
//! starts with two of them; the third is added to the file and the running daemons take it in on SIGHUP and on
//! `vmsecd reload` without touching the tunnel that did not change (same SPIs); a broken file is refused with
//! the running mesh intact; the third host is removed again, its IKE SA deleted and its routes gone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vmsecd_e2e::netns::{output_of, run_checked, Netns, NetnsGuard};
use vmsecd_e2e::traffic::ping_until_ok;
use vmsecd_e2e::vmsecd::{is_up, peer, vmsecd_bin, HostEntry, Mesh, Vmsecd};

const PSK: &str = "mesh-reload-test-psk-0123456789";

fn host(name: &str, n: u8) -> HostEntry {
    HostEntry {
        name: name.into(),
        address: format!("198.18.0.{n}"),
        subnets: vec![format!("198.19.{n}.0/24")],
        port: None,
    }
}

fn mesh(hosts: &[(&str, u8)]) -> Mesh {
    let mut m = Mesh::two_hosts(PSK);
    m.encap = "auto".into();
    m.hosts = hosts.iter().map(|(n, i)| host(n, *i)).collect();
    m
}

/// Rewrites the mesh file a daemon runs from (its folder also holds the PSK file).
fn rewrite(dir: &Path, m: &Mesh) {
    std::fs::write(dir.join("mesh.toml"), m.render(&dir.join("psk"))).expect("mesh file");
}

fn reload(ns: &Netns) -> (bool, String) {
    let out = output_of(ns.command(vmsecd_bin()).arg("reload"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn ike_spis(v: &Vmsecd, peer_name: &str) -> (String, String) {
    let st = v.status().expect("status");
    let ike = peer(&st, peer_name).ike.clone().expect("IKE SA");
    (ike.spi_i, ike.spi_r)
}

fn routes(ns: &Netns) -> String {
    ns.ip(&["route", "show"])
}

#[test]
fn hosts_join_and_leave_by_reload() {
    vmsecd_e2e::netns::require_root_and_ip();
    let mut g = NetnsGuard::new("reload");
    let hv = g.underlay_lan(&["a", "b", "c"]);
    let (a, b, c) = (hv[0].clone(), hv[1].clone(), hv[2].clone());
    let avm = g.vm_subnet(&a, 1, "avm");
    let _bvm = g.vm_subnet(&b, 2, "bvm");
    let _cvm = g.vm_subnet(&c, 3, "cvm");
    let root = g.dir();
    let dirs: Vec<PathBuf> = ["a", "b", "c"].iter().map(|d| root.join(d)).collect();
    let two = mesh(&[("hA", 1), ("hB", 2)]);
    let three = mesh(&[("hA", 1), ("hB", 2), ("hC", 3)]);

    // 1. A two-host mesh.
    let mut va = Vmsecd::start(&a, &dirs[0], &two, "hA");
    let mut vb = Vmsecd::start(&b, &dirs[1], &two, "hB");
    let t = Duration::from_secs(20);
    va.wait_status("hA-hB up", t, |s| is_up(s, "hB"));
    vb.wait_status("hB-hA up", t, |s| is_up(s, "hA"));
    assert!(ping_until_ok(&avm, "198.19.2.10", Duration::from_secs(5)));
    let ab = ike_spis(&va, "hB");
    assert!(!routes(&a).contains("198.19.3.0/24"), "{}", routes(&a));

    // 2. hC joins: the file gains a host; hA takes it in on SIGHUP, hB on `vmsecd reload`.
    rewrite(&dirs[0], &three);
    rewrite(&dirs[1], &three);
    let mut vc = Vmsecd::start(&c, &dirs[2], &three, "hC");
    run_checked(Command::new("kill").args(["-HUP", &va.pid().to_string()]));
    let (ok, text) = reload(&b);
    assert!(ok, "vmsecd reload: {text}");
    assert!(text.contains("host hC added"), "{text}");
    va.wait_status("hA-hC up", t, |s| is_up(s, "hC"));
    vb.wait_status("hB-hC up", t, |s| is_up(s, "hC"));
    vc.wait_status("hC up with both", t, |s| is_up(s, "hA") && is_up(s, "hB"));
    assert!(ping_until_ok(&avm, "198.19.3.10", Duration::from_secs(5)));
    assert!(routes(&a).contains("198.19.3.0/24"), "{}", routes(&a));
    assert_eq!(
        ike_spis(&va, "hB"),
        ab,
        "the unchanged tunnel hA-hB kept its IKE SA"
    );
    assert!(va.log().contains("reload: host hC added"), "{}", va.log());

    // 3. A broken file is refused, naming the file; the running mesh is untouched.
    std::fs::write(
        dirs[0].join("mesh.toml"),
        "[mesh]\nike_proposals = [\"aes999\"]\n",
    )
    .unwrap();
    let (ok, text) = reload(&a);
    assert!(!ok, "a broken mesh file must be refused: {text}");
    assert!(
        text.contains("mesh.toml"),
        "the refusal names the file: {text}"
    );
    let st = va.status().expect("status");
    assert!(is_up(&st, "hB") && is_up(&st, "hC"), "{st:?}");
    assert_eq!(ike_spis(&va, "hB"), ab);

    // 4. hC leaves: removed from the file on hA and hB and reloaded; its IKE SAs are deleted (hC sees them go),
    // the routes to its subnet are gone, and hA-hB still has the same SAs.
    rewrite(&dirs[0], &two);
    rewrite(&dirs[1], &two);
    let (ok, text) = reload(&a);
    assert!(ok && text.contains("host hC removed"), "{text}");
    let (ok, text) = reload(&b);
    assert!(ok && text.contains("host hC removed"), "{text}");
    vc.wait_status("hC sees both tunnels deleted", t, |s| {
        !is_up(s, "hA") && !is_up(s, "hB")
    });
    let st = va.status().expect("status");
    assert!(st.peers.iter().all(|p| p.name != "hC"), "{st:?}");
    assert!(!routes(&a).contains("198.19.3.0/24"), "{}", routes(&a));
    assert!(!routes(&b).contains("198.19.3.0/24"), "{}", routes(&b));
    assert_eq!(ike_spis(&va, "hB"), ab);
    assert!(ping_until_ok(&avm, "198.19.2.10", Duration::from_secs(5)));

    for v in [&mut va, &mut vb, &mut vc] {
        v.terminate(Duration::from_secs(10));
    }
}
