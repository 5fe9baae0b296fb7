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

/// A key pair from `vmsecd keygen` (2048 bits): (private key, public key).
fn keygen(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let out = std::process::Command::new(vmsecd_e2e::vmsecd::vmsecd_bin())
        .args(["keygen", "--name", name, "--bits", "2048", "--out"])
        .arg(dir)
        .output()
        .expect("vmsecd keygen");
    assert!(
        out.status.success(),
        "vmsecd keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir.join("private.pem"), dir.join(format!("{name}.pub.pem")))
}

/// A mesh file with `auth = "pubkey"` (raw keys): `private` is this host's key; `hosts` the `[[host]]` tables
/// it lists (number, public key), the rest comes from etcd.
fn pubkey_file(
    dir: &Path,
    etcd: &Cluster,
    private: &Path,
    hosts: &[(u8, &Path)],
) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| format!("{e:?}")).collect();
    let mut text = format!(
        "[mesh]\nauth = \"pubkey\"\nprivate_key = {:?}\nfirewall = \"off\"\ndpd_delay = \"5s\"\n\n[etcd]\nendpoints = \
         [{}]\nprefix = {PREFIX:?}\nca = {:?}\ncert = {:?}\nkey = {:?}\nlease_ttl = \"5s\"\n",
        private.display().to_string(),
        endpoints.join(", "),
        etcd.pki.ca.display().to_string(),
        etcd.pki.client_cert.display().to_string(),
        etcd.pki.client_key.display().to_string(),
    );
    for (n, public) in hosts {
        text += &format!(
            "\n[[host]]\nname = \"h{n}\"\naddress = \"198.18.0.{n}\"\nsubnets = [\"198.19.{n}.0/24\"]\npubkey = {:?}\n",
            public.display().to_string()
        );
    }
    let file = dir.join("mesh.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// `auth = "pubkey"` with raw public keys and members from etcd, and what etcd is trusted with (README,
/// "Membership from etcd": addresses, subnets and public keys of the hosts not in the file; it cannot have
/// anyone impersonate a host already known, or a host in the file). h1 is in every host's file; h2, h3 and h4
/// list only themselves (and h1) and learn each other's keys from etcd. In order:
/// 1. h1, h2, h3 come up as a full mesh (h2-h3 on keys read from etcd only);
/// 2. h4, known only from etcd, joins: every host gets a tunnel to it, VM2 <-> VM4 carries TCP intact;
/// 3. an entry under a new name with its own key pair claiming h3's subnet is refused;
/// 4. h1's entry (a file host) and h3's (a host known from etcd) overwritten with that key pair (same name,
///    address and subnets): no tunnel is disturbed, h3's overwrite is refused with a log line;
/// 5. h1 and h3 stop, and impostors start at their addresses with that key pair, claiming to be h1 and h3:
///    neither authenticates with h2 or h4, whose tunnel keeps carrying pings.
#[test]
fn pubkey_members_from_etcd_and_what_etcd_is_trusted_with() {
    let t0 = Instant::now();
    if std::env::var_os("VT_VMSECD_LOG").is_none() {
        std::env::set_var(
            "VT_VMSECD_LOG",
            "debug,h2=info,hyper=info,hyper_util=info,tonic=info,tower=info,rustls=info",
        );
    }
    let mut g = NetnsGuard::new("etcdpk");
    let hv = g.underlay_lan(&["h1", "h2", "h3", "h4", "e1", "e2", "e3"]);
    let vms: Vec<Netns> = (1..=4u8)
        .map(|n| g.vm_subnet(&hv[n as usize - 1], n, &format!("vm{n}")))
        .collect();
    let root = g.dir();
    let etcd = Cluster::start(
        &root.join("etcd"),
        &[
            (hv[4].clone(), "198.18.0.5"),
            (hv[5].clone(), "198.18.0.6"),
            (hv[6].clone(), "198.18.0.7"),
        ],
    );
    let e_ns = hv[4].clone();
    let keys: Vec<_> = (0..=4u8)
        .map(|n| {
            if n == 0 {
                keygen(&root.join("keys-evil"), "evil")
            } else {
                keygen(&root.join(format!("keys-h{n}")), &format!("h{n}"))
            }
        })
        .collect();
    let (evil_private, evil_public) = keys[0].clone();
    let start_host = |n: u8| -> Vmsecd {
        let (private, public) = &keys[n as usize];
        let mut hosts = vec![(1u8, keys[1].1.as_path())];
        if n != 1 {
            hosts.push((n, public.as_path()));
        }
        let dir = root.join(format!("h{n}"));
        let file = pubkey_file(&dir, &etcd, private, &hosts);
        Vmsecd::start_with_file(&hv[n as usize - 1], &dir, &file, &format!("h{n}"))
    };
    let mut v: Vec<Option<Vmsecd>> = (0..=4).map(|_| None).collect();
    let t = Duration::from_secs(90);

    // 1. Three hosts, h2 and h3 on each other's keys from etcd.
    for n in 1..=3u8 {
        v[n as usize] = Some(start_host(n));
    }
    let full3 = wait_mesh(&mut v, &[1, 2, 3], "a full mesh of 3 on public keys", t);

    // 2. h4, known from etcd only, joins; traffic flows between two hosts that know each other from etcd.
    v[4] = Some(start_host(4));
    let join = wait_mesh(&mut v, &[1, 2, 3, 4], "h4 joined from etcd", t);
    assert!(
        ping_until_ok(&vms[1], "198.19.4.10", Duration::from_secs(10)),
        "VM2 -> VM4"
    );
    assert_eq!(
        vmsecd_e2e::traffic::tcp_intact(&vms[3], &vms[1], "198.19.4.10", 4, 1 << 20),
        4,
        "TCP VM2 -> VM4 intact"
    );

    // Settled SPIs of every host's IKE SAs.
    let spis = |v: &Vmsecd| -> Vec<(String, String)> {
        let st = v.status().unwrap();
        let mut s: Vec<_> = st
            .peers
            .iter()
            .filter_map(|p| p.ike.as_ref().map(|i| (p.name.clone(), i.spi_i.clone())))
            .collect();
        s.sort();
        s
    };
    let settled = |v: &Vmsecd| {
        let mut before = spis(v);
        for _ in 0..15 {
            std::thread::sleep(Duration::from_secs(2));
            let again = spis(v);
            if again == before {
                break;
            }
            before = again;
        }
        before
    };
    let before: Vec<_> = (1..=4).map(|n| settled(v[n].as_ref().unwrap())).collect();

    let pem = std::fs::read_to_string(&evil_public).unwrap();
    let put = |name: &str, address: &str, subnet: &str| {
        let entry = serde_json::json!({
            "name": name, "address": address, "subnets": [subnet], "pubkey": pem,
        })
        .to_string();
        let out = etcd.ctl(&e_ns, &["put", &format!("{PREFIX}{name}"), &entry]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    // 3. A new name with its own key pair claiming h3's subnet.
    put("evil", "198.18.0.99", "198.19.3.0/24");
    for n in [2usize, 4] {
        v[n].as_ref().unwrap().wait_log(
            "etcd member evil refused: its subnet 198.19.3.0/24 overlaps 198.19.3.0/24 of host h3",
            Duration::from_secs(10),
        );
    }

    // 4. The entries of a file host and of a host known from etcd overwritten with that key pair.
    put("h1", "198.18.0.1", "198.19.1.0/24");
    put("h3", "198.18.0.3", "198.19.3.0/24");
    for n in [2usize, 4] {
        v[n].as_ref().unwrap().wait_log(
            "etcd member h3 refused: its public key is not the one it joined with",
            Duration::from_secs(10),
        );
    }
    std::thread::sleep(Duration::from_secs(3));
    for n in 1..=4usize {
        assert_eq!(
            spis(v[n].as_ref().unwrap()),
            before[n - 1],
            "h{n}: no tunnel disturbed by the overwritten entries"
        );
    }

    // 5. Impostors with that key pair at h1's and h3's addresses (the hosts stopped; their entries, no longer
    // under their leases, stay as overwritten).
    for n in [1usize, 3] {
        assert!(
            v[n].as_mut()
                .unwrap()
                .terminate(Duration::from_secs(10))
                .is_some(),
            "h{n} stops"
        );
        v[n] = None;
    }
    let impostors: Vec<Vmsecd> = [1u8, 3]
        .iter()
        .map(|&n| {
            let dir = root.join(format!("impostor-h{n}"));
            let mut hosts = vec![(n, evil_public.as_path())];
            if n != 1 {
                hosts.push((1, keys[1].1.as_path()));
            }
            let file = pubkey_file(&dir, &etcd, &evil_private, &hosts);
            Vmsecd::start_with_file(&hv[n as usize - 1], &dir, &file, &format!("h{n}"))
        })
        .collect();
    // Long enough for both ends to initiate (the follower after 3 s) and retry. An impostor answering h2's
    // IKE_AUTH counts its side as established (an IKE responder does once it has verified the initiator and
    // sent its AUTH), but h2 refuses its AUTH: what counts is that h2 and h4 never take it for h1 or h3.
    let t5 = Instant::now();
    while t5.elapsed() < Duration::from_secs(20) {
        for n in [2usize, 4] {
            let st = v[n].as_ref().unwrap().status().unwrap();
            for p in ["h1", "h3"] {
                assert!(
                    !is_up(&st, p),
                    "h{n} authenticated an impostor as {p}: {st:#?}"
                );
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    // VM1 and VM3 are still behind the impostors' hosts: nothing from VM2 reaches them.
    for vm in ["198.19.1.10", "198.19.3.10"] {
        let (s, r) = ping(&vms[1], vm, 5, "0.2");
        assert_eq!((s, r), (5, 0), "VM2 -> {vm} through an impostor");
    }
    for imp in &impostors {
        let log = imp.log().to_lowercase();
        assert!(
            log.contains("authentication"),
            "the impostor's attempts failed authentication:\n{log}"
        );
    }
    let (s, r) = ping(&vms[1], "198.19.4.10", 10, "0.05");
    assert_eq!((s, r), (10, 10), "VM2 -> VM4 throughout");
    eprintln!(
        "[etcd_membership pubkey] full mesh of 3: {:.1} s; h4 from etcd: {:.1} s; total {:.1} s",
        full3.as_secs_f64(),
        join.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}
