//! Membership from etcd: a real three-member etcd cluster (Debian's etcd-server 3.4, TLS for clients and
//! peers, client certificates required) and five vmsecd hosts, each with a mesh file that holds `[etcd]` and
//! its own `[[host]]` only. In order:
//! 1. four hosts start and find each other through etcd (a full mesh of 4);
//! 2. join by starting: h5 starts, every host gets a tunnel to it, its VM is reached;
//! 3. leave cleanly: h5 stops (SIGTERM), its entry is deleted, the others drop it well before a lease would
//!    expire;
//! 4. kill -9: h4 dies, the others drop it once its lease expires (`lease_ttl = 5s`; the time is printed);
//! 5. one etcd member killed: the tunnels carry pings, h4 starts again and joins through the two left;
//! 6. all of etcd down: tunnels keep carrying pings for longer than the lease TTL; h5 starts meanwhile (it
//!    cannot publish); etcd comes back on its data: every host catches up, h5 included;
//! 7. a bogus entry (another host's address) and a garbage one are refused, naming both hosts, with nothing
//!    else disturbed.

use std::path::Path;
use std::time::{Duration, Instant};

use vmsecd_e2e::etcd::Cluster;
use vmsecd_e2e::netns::{Netns, NetnsGuard};
use vmsecd_e2e::traffic::{ping, ping_until_ok};
use vmsecd_e2e::vmsecd::{is_up, Vmsecd};

const PSK: &str = "etcd-membership-test-psk-0123456789";
const PREFIX: &str = "/vmsecd/test/";

fn start(ns: &Netns, dir: &Path, n: u8, etcd: &Cluster) -> Vmsecd {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let psk = dir.join("psk");
    std::fs::write(&psk, format!("{PSK}\n")).unwrap();
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    let text = format!(
        "[mesh]\npsk_file = {:?}\nfirewall = \"off\"\ndpd_delay = \"5s\"\n\n[etcd]\nendpoints = [{}]\nprefix = \
         {PREFIX:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\nlease_ttl = \"5s\"\n\n[[host]]\nname = \"h{n}\"\naddress = \
         \"198.18.0.{n}\"\nsubnets = [\"198.19.{n}.0/24\"]\n",
        psk.display().to_string(),
        endpoints.join(", "),
        etcd.pki.ca.display().to_string(),
        etcd.pki.client_cert.display().to_string(),
        etcd.pki.client_key.display().to_string(),
    );
    let file = dir.join("mesh.toml");
    std::fs::write(&file, text).unwrap();
    Vmsecd::start_with_file(ns, dir, &file, &format!("h{n}"))
}

/// Waits until every daemon in `hosts` (by number) has exactly the peers `peers` up (its own excluded).
fn wait_mesh(v: &mut [Option<Vmsecd>], hosts: &[u8], what: &str, timeout: Duration) -> Duration {
    let t = Instant::now();
    for &h in hosts {
        let want: Vec<String> = hosts
            .iter()
            .filter(|&&p| p != h)
            .map(|p| format!("h{p}"))
            .collect();
        v[h as usize].as_mut().unwrap().wait_status(
            &format!("{what} (on h{h})"),
            timeout.saturating_sub(t.elapsed()),
            |s| s.peers.len() == want.len() && want.iter().all(|p| is_up(s, p)),
        );
    }
    t.elapsed()
}

#[test]
fn membership_from_a_three_member_etcd_cluster() {
    let t0 = Instant::now();
    // The gRPC stack's debug lines would bury vmsecd's own.
    if std::env::var_os("VT_VMSECD_LOG").is_none() {
        std::env::set_var(
            "VT_VMSECD_LOG",
            "debug,h2=info,hyper=info,hyper_util=info,tonic=info,tower=info,rustls=info",
        );
    }
    let mut g = NetnsGuard::new("etcd");
    let hv = g.underlay_lan(&["h1", "h2", "h3", "h4", "h5", "e1", "e2", "e3"]);
    let vms: Vec<Netns> = (1..=5u8)
        .map(|n| g.vm_subnet(&hv[n as usize - 1], n, &format!("vm{n}")))
        .collect();
    let root = g.dir();
    let mut etcd = Cluster::start(
        &root.join("etcd"),
        &[
            (hv[5].clone(), "198.18.0.6"),
            (hv[6].clone(), "198.18.0.7"),
            (hv[7].clone(), "198.18.0.8"),
        ],
    );
    let e_ns = hv[5].clone();
    let mut v: Vec<Option<Vmsecd>> = (0..=5).map(|_| None).collect();
    let dir = |n: u8, run: &str| root.join(format!("h{n}-{run}"));
    let t = Duration::from_secs(60);

    // 1. Four hosts find each other through etcd.
    for n in 1..=4u8 {
        v[n as usize] = Some(start(&hv[n as usize - 1], &dir(n, "1"), n, &etcd));
    }
    let full4 = wait_mesh(&mut v, &[1, 2, 3, 4], "a full mesh of 4 from etcd", t);

    // 2. Join by starting.
    v[5] = Some(start(&hv[4], &dir(5, "1"), 5, &etcd));
    let join = wait_mesh(&mut v, &[1, 2, 3, 4, 5], "h5 joined", t);
    assert!(
        ping_until_ok(&vms[0], "198.19.5.10", Duration::from_secs(10)),
        "VM1 -> VM5"
    );

    // 3. Leave cleanly: the entry is deleted, not left to its lease.
    let t3 = Instant::now();
    assert!(
        v[5].as_mut()
            .unwrap()
            .terminate(Duration::from_secs(10))
            .is_some(),
        "h5 stops"
    );
    v[5] = None;
    wait_mesh(
        &mut v,
        &[1, 2, 3, 4],
        "h5 gone after its clean stop",
        Duration::from_secs(20),
    );
    let leave = t3.elapsed();

    // 4. kill -9: gone once its lease expires.
    let t4 = Instant::now();
    let mut dead = v[4].take().unwrap();
    dead.kill9();
    wait_mesh(
        &mut v,
        &[1, 2, 3],
        "h4 gone after its lease expired",
        Duration::from_secs(30),
    );
    let expiry = t4.elapsed();
    drop(dead);

    // 5. One etcd member killed: nothing disturbed, and a host still joins through the others.
    etcd.members[0].kill();
    let (s, r) = ping(&vms[0], "198.19.2.10", 20, "0.05");
    assert_eq!((s, r), (20, 20), "VM1 -> VM2 with one etcd member down");
    v[4] = Some(start(&hv[3], &dir(4, "2"), 4, &etcd));
    wait_mesh(&mut v, &[1, 2, 3, 4], "h4 back with two etcd members", t);

    // 6. All of etcd down: the tunnels keep working past the lease TTL; h5 starts meanwhile; etcd comes back
    // and everyone catches up.
    etcd.members[1].kill();
    etcd.members[2].kill();
    let t6 = Instant::now();
    v[5] = Some(start(&hv[4], &dir(5, "2"), 5, &etcd));
    while t6.elapsed() < Duration::from_secs(8) {
        let (s, r) = ping(&vms[0], "198.19.3.10", 10, "0.1");
        assert_eq!((s, r), (10, 10), "VM1 -> VM3 with all of etcd down");
    }
    for n in [1u8, 2, 3, 4] {
        let st = v[n as usize].as_ref().unwrap().status().unwrap();
        assert_eq!(st.peers.len(), 3, "h{n} kept the last membership: {st:#?}");
    }
    for m in etcd.members.iter_mut() {
        m.start();
    }
    let t6b = Instant::now();
    etcd.wait_healthy(t);
    wait_mesh(
        &mut v,
        &[1, 2, 3, 4, 5],
        "everyone caught up after etcd came back",
        t,
    );
    let catch_up = t6b.elapsed();
    assert!(
        ping_until_ok(&vms[4], "198.19.1.10", Duration::from_secs(10)),
        "VM5 -> VM1"
    );

    // 7. Bogus entries: refused, naming both hosts; nothing else disturbed.
    let spis = |v: &Vmsecd| -> Vec<String> {
        let st = v.status().unwrap();
        st.peers
            .iter()
            .filter_map(|p| p.ike.as_ref().map(|i| i.spi_i.clone()))
            .collect()
    };
    // Read once settled: an IKE SA both ends initiated at once is resolved a second after both came up.
    let mut before = spis(v[1].as_ref().unwrap());
    for _ in 0..15 {
        std::thread::sleep(Duration::from_secs(2));
        let again = spis(v[1].as_ref().unwrap());
        if again == before {
            break;
        }
        before = again;
    }
    let bogus = r#"{"name":"evil","address":"198.18.0.2","subnets":["198.19.66.0/24"]}"#;
    let out = etcd.ctl(&e_ns, &["put", &format!("{PREFIX}evil"), bogus]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = etcd.ctl(
        &e_ns,
        &[
            "put",
            &format!("{PREFIX}junk"),
            "{\"name\":\"junk\",\n\"x\":1}",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    v[1].as_ref().unwrap().wait_log(
        "etcd member evil refused: its address 198.18.0.2 is host h2's",
        Duration::from_secs(10),
    );
    v[1].as_ref()
        .unwrap()
        .wait_log("etcd entry \"junk\" refused", Duration::from_secs(10));
    let st = v[1].as_ref().unwrap().status().unwrap();
    assert_eq!(st.peers.len(), 4, "{st:#?}");
    assert_eq!(spis(v[1].as_ref().unwrap()), before, "no tunnel disturbed");
    let (s, r) = ping(&vms[0], "198.19.2.10", 10, "0.05");
    assert_eq!((s, r), (10, 10));
    eprintln!(
        "[etcd_membership] full mesh of 4: {:.1} s; join: {:.1} s; clean leave seen in {:.1} s; kill -9 seen in \
         {:.1} s (lease_ttl 5 s); catch-up after etcd restart: {:.1} s; total {:.1} s",
        full4.as_secs_f64(),
        join.as_secs_f64(),
        leave.as_secs_f64(),
        expiry.as_secs_f64(),
        catch_up.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
