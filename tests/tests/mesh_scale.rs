//! A mesh of many hosts on one machine, the small version of `benches/mesh_scale.sh`: N = 12 vmsecd hosts
//! (66 host pairs) on one underlay bridge, each with a VM namespace behind it, one mesh file, `firewall =
//! "off"`. Checks: every host has every other up within 60 s of start (the time is printed), a sample of VM
//! pairs reach each other, the daemons' RSS stays small, a 13th host added by reload on every daemon is taken in
//! by all, and a host removed by reload is dropped by all, with no other tunnel disturbed (same SPIs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmsecd_e2e::netns::{output_of, Netns, NetnsGuard};
use vmsecd_e2e::traffic::ping_until_ok;
use vmsecd_e2e::vmsecd::{is_up, vmsecd_bin, HostEntry, Mesh, Vmsecd};

const N: u8 = 12;
const PSK: &str = "mesh-scale-test-psk-0123456789abc";

fn mesh(hosts: impl Iterator<Item = u8>) -> Mesh {
    let mut m = Mesh::two_hosts(PSK);
    m.encap = "auto".into();
    m.firewall = Some("off".into());
    m.hosts = hosts
        .map(|n| HostEntry {
            name: format!("h{n}"),
            address: format!("198.18.0.{n}"),
            subnets: vec![format!("198.19.{n}.0/24")],
            port: None,
        })
        .collect();
    m
}

fn rewrite(dir: &Path, m: &Mesh) {
    std::fs::write(dir.join("mesh.toml"), m.render(&dir.join("psk"))).expect("mesh file");
}

fn reload(ns: &Netns) -> String {
    let out = output_of(ns.command(vmsecd_bin()).arg("reload"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Waits until each daemon of `hosts` has every other one of `hosts` up and no other peer.
fn wait_full(v: &mut [Option<Vmsecd>], hosts: &[u8], what: &str, timeout: Duration) -> Duration {
    let t = Instant::now();
    for &h in hosts {
        let want: Vec<String> = hosts
            .iter()
            .filter(|&&p| p != h)
            .map(|p| format!("h{p}"))
            .collect();
        v[h as usize].as_mut().expect("running").wait_status(
            &format!("{what} (on h{h})"),
            timeout.saturating_sub(t.elapsed()),
            |s| s.peers.len() == want.len() && want.iter().all(|p| is_up(s, p)),
        );
    }
    t.elapsed()
}

fn spis(v: &Vmsecd, peer: &str) -> Option<String> {
    let st = v.status().ok()?;
    st.peers
        .iter()
        .find(|p| p.name == peer)?
        .ike
        .as_ref()
        .map(|i| i.spi_i.clone())
}

#[test]
fn a_mesh_of_twelve_comes_up_and_follows_reloads() {
    let t0 = Instant::now();
    let mut g = NetnsGuard::new("scale");
    let names: Vec<String> = (1..=N + 1).map(|n| format!("h{n}")).collect();
    let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    let hv = g.underlay_lan(&refs);
    let vms: Vec<Netns> = (1..=N + 1)
        .map(|n| g.vm_subnet(&hv[n as usize - 1], n, &format!("vm{n}")))
        .collect();
    let root = g.dir();
    let dirs: Vec<PathBuf> = (0..=N + 1).map(|n| root.join(format!("h{n}"))).collect();
    let all = mesh(1..=N);
    let mut v: Vec<Option<Vmsecd>> = (0..=N + 1).map(|_| None).collect();

    // Start all, time to full mesh.
    let start = Instant::now();
    for n in 1..=N {
        v[n as usize] = Some(Vmsecd::start(
            &hv[n as usize - 1],
            &dirs[n as usize],
            &all,
            &format!("h{n}"),
        ));
    }
    let hosts: Vec<u8> = (1..=N).collect();
    wait_full(&mut v, &hosts, "full mesh of 12", Duration::from_secs(60));
    let full = start.elapsed();

    // A sample of VM pairs.
    for (a, b) in [(1u8, 12u8), (2, 7), (5, 11), (12, 3), (8, 9)] {
        assert!(
            ping_until_ok(
                &vms[a as usize - 1],
                &format!("198.19.{b}.10"),
                Duration::from_secs(10)
            ),
            "VM{a} -> VM{b}"
        );
    }
    let rss: Vec<u64> = (1..=N)
        .map(|n| rss_kib(v[n as usize].as_ref().unwrap().pid()))
        .collect();
    let max_rss = *rss.iter().max().unwrap();
    assert!(max_rss < 64 * 1024, "RSS {rss:?} KiB");

    // Reload: a 13th host on every daemon. The h2-h3 IKE SA is read once it is settled: when both ends
    // initiated at the same moment, one of the two SAs is deleted a second after both came up.
    let mut h2_h3 = spis(v[2].as_ref().unwrap(), "h3");
    for _ in 0..15 {
        std::thread::sleep(Duration::from_secs(2));
        let again = spis(v[2].as_ref().unwrap(), "h3");
        if again == h2_h3 {
            break;
        }
        h2_h3 = again;
    }
    let thirteen = mesh(1..=N + 1);
    let t1 = Instant::now();
    v[N as usize + 1] = Some(Vmsecd::start(
        &hv[N as usize],
        &dirs[N as usize + 1],
        &thirteen,
        &format!("h{}", N + 1),
    ));
    for n in 1..=N {
        rewrite(&dirs[n as usize], &thirteen);
        assert!(reload(&hv[n as usize - 1]).contains(&format!("host h{} added", N + 1)));
    }
    let hosts13: Vec<u8> = (1..=N + 1).collect();
    wait_full(
        &mut v,
        &hosts13,
        "h13 taken in by all",
        Duration::from_secs(60),
    );
    let add = t1.elapsed();
    assert!(
        ping_until_ok(&vms[0], "198.19.13.10", Duration::from_secs(10)),
        "VM1 -> VM13"
    );

    // Reload: h12 removed from every file.
    let without = mesh((1..=N + 1).filter(|&n| n != N));
    let t2 = Instant::now();
    for n in (1..=N + 1).filter(|&n| n != N) {
        rewrite(&dirs[n as usize], &without);
        assert!(reload(&hv[n as usize - 1]).contains(&format!("host h{N} removed")));
    }
    let rest: Vec<u8> = (1..=N + 1).filter(|&n| n != N).collect();
    wait_full(&mut v, &rest, "h12 dropped by all", Duration::from_secs(30));
    let remove = t2.elapsed();
    assert_eq!(
        spis(v[2].as_ref().unwrap(), "h3"),
        h2_h3,
        "h2-h3 untouched by both reloads"
    );
    eprintln!(
        "[mesh_scale] N = {N}: full mesh {:.1} s; RSS max {} KiB (all: {rss:?}); 13th host by reload {:.1} s; \
         removal {:.1} s; total {:.1} s",
        full.as_secs_f64(),
        max_rss,
        add.as_secs_f64(),
        remove.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
