//! A strongSwan gateway with two VM subnets and one Child SA per subnet pair (swanctl children `net` for
//! 198.19.2.0/24 and `net3` for 198.19.3.0/24), against vmsecd whose mesh file lists both subnets for that host.
//! vmsecd proposes one Child SA for all of them; charon narrows it to one child's pair, and vmsecd then asks for
//! the other pair with a CREATE_CHILD_SA of its own. Both Child SAs come up, and each VM subnet's traffic takes
//! its own Child SA in both directions (charon's per-child packet counters prove it).
//!
//! Needs root, iproute2, nftables and charon with kernel-libipsec. `VT_KEEP_DIR=1` keeps the logs.

use std::thread::sleep;
use std::time::{Duration, Instant};

use vmsecd_e2e::bed::Bed;
use vmsecd_e2e::strongswan::{Charon, ChildSaInfo, Conn};
use vmsecd_e2e::traffic;
use vmsecd_e2e::vmsecd::{is_up, Mesh, Vmsecd};

const PSK: &str = "a-psk-of-sufficient-length-0123456789";
/// The second address of VM b, in the gateway's second subnet.
const BVM3: &str = "198.19.3.10";

/// Both of charon's children installed, with vmsecd's status agreeing; returns them by name.
fn wait_two_children(v: &mut Vmsecd, c: &Charon) -> (ChildSaInfo, ChildSaInfo) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sas = c.list_sas();
        let installed = |name: &str| {
            sas.iter()
                .filter(|s| s.state == "ESTABLISHED")
                .flat_map(|s| s.children.iter())
                .find(|ch| ch.name == name && ch.state == "INSTALLED")
                .cloned()
        };
        if let (Some(a), Some(b), Ok(st)) = (installed("net"), installed("net3"), v.status()) {
            if is_up(&st, "hB") {
                return (a, b);
            }
        }
        if Instant::now() > deadline {
            panic!(
                "two Child SAs not up after 30 s: {sas:#?}\n{}\n{}",
                v.diagnostics(),
                c.diagnostics()
            );
        }
        sleep(Duration::from_millis(200));
    }
}

fn case(name: &str, vmsecd_initiates: bool) {
    let mut bed = Bed::new("swsub", name);
    // VM b also answers on 198.19.3.10; b routes that subnet to it, and holds an address in it itself
    // (kernel-libipsec refuses a child whose local selector has no local address: TS_UNACCEPTABLE).
    bed.bvm
        .ip(&["addr", "add", &format!("{BVM3}/32"), "dev", "lo"]);
    bed.b.ip(&["addr", "add", "198.19.3.1/32", "dev", "lo"]);
    bed.b
        .ip(&["route", "add", "198.19.3.0/24", "via", "198.19.2.10"]);
    let mut conn = Conn::to_vmsecd(PSK);
    conn.more_children = vec![(
        "net3".into(),
        "198.19.3.0/24".into(),
        "198.19.1.0/24".into(),
    )];
    let charon = bed.charon(&[conn]);
    if !vmsecd_initiates {
        bed.block_vmsecd_initiation();
    }
    let mut mesh = Mesh::two_hosts(PSK);
    mesh.hosts[1].subnets.push("198.19.3.0/24".into());
    let mut v = bed.vmsecd(&mesh);
    if !vmsecd_initiates {
        v.wait_status("vmsecd listening", Duration::from_secs(10), |_| true);
        // charon brings up its first child only: vmsecd asks for the second pair itself.
        let out = charon.initiate("net", 30);
        assert!(
            out.status.success(),
            "swanctl --initiate failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            charon.diagnostics()
        );
    }
    let (net, net3) = wait_two_children(&mut v, &charon);
    assert_eq!(net.local_ts, vec!["198.19.2.0/24".to_owned()]);
    assert_eq!(net3.local_ts, vec!["198.19.3.0/24".to_owned()]);
    for dst in ["198.19.2.10", BVM3] {
        assert!(
            traffic::ping_until_ok(&bed.avm, dst, Duration::from_secs(5)),
            "VM a cannot reach {dst}\n{}\n{}",
            v.diagnostics(),
            charon.diagnostics()
        );
    }
    // Ten pings to the .3 address only: they, and their answers, must all go through net3.
    let before = wait_two_children(&mut v, &charon);
    let (sent, got) = traffic::ping(&bed.avm, BVM3, 10, "0.1");
    assert_eq!((sent, got), (10, 10), "{}", v.diagnostics());
    let after = wait_two_children(&mut v, &charon);
    let d = |a: &ChildSaInfo, b: &ChildSaInfo| {
        (b.packets_in - a.packets_in, b.packets_out - a.packets_out)
    };
    assert_eq!(
        d(&before.1, &after.1),
        (10, 10),
        "net3 carried the .3 traffic"
    );
    assert_eq!(d(&before.0, &after.0), (0, 0), "net carried none of it");
    let log = v.log();
    assert_eq!(
        log.matches("Child SA up").count(),
        2,
        "two Child SAs, no more\n{log}"
    );
}

#[test]
fn child_sa_per_subnet_pair_vmsecd_initiates() {
    case("init", true);
}

#[test]
fn child_sa_per_subnet_pair_charon_initiates_one_child() {
    case("resp", false);
}
