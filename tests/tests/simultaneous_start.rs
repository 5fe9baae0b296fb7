//! Both ends initiate at once (last session's flake: under heavy load both initiated, duplicate resolution
//! deleted one IKE SA about 1 s later, and afterwards the VMs' pings were half answered with no drop counted).
//! The follower (the higher address) initiates 3 s after its start when no IKE SA came up; starting the leader
//! about 3 s after the follower makes both IKE_SA_INITs cross, as a handshake slower than 3 s under load does.
//! Repeated with offsets around 3 s: after each start, once duplicate resolution is done, pings must be
//! answered both ways, each end must hold one IKE SA, and no drop may be counted.
//!
//! Needs root, iproute2 and iputils-ping.

use std::thread::sleep;
use std::time::{Duration, Instant};

use vmsecd_e2e::netns::{require_root_and_ip, NetnsGuard};
use vmsecd_e2e::traffic;
use vmsecd_e2e::vmsecd::{is_up, Mesh, Vmsecd};

const PSK: &str = "a-psk-of-sufficient-length-0123456789";

#[test]
fn both_ends_initiating_at_once_leave_one_working_tunnel() {
    require_root_and_ip();
    let started = Instant::now();
    let mut g = NetnsGuard::new("simstart");
    let (a, b, avm, bvm) = g.hypervisor_pair();
    let root = g.dir();
    let mut mesh = Mesh::two_hosts(PSK);
    // vmsecd on both ends, `auto`: ESP in UDP 4500 between them.
    mesh.encap = String::new();
    let mut crossed = 0;
    let offsets_ms = [2950u64, 3000, 3050, 3100, 3020, 3070];
    for (i, off) in offsets_ms.iter().enumerate() {
        let mut vb = Vmsecd::start(&b, &root.join(format!("b{i}")), &mesh, "hB");
        sleep(Duration::from_millis(*off));
        let mut va = Vmsecd::start(&a, &root.join(format!("a{i}")), &mesh, "hA");
        let t = Duration::from_secs(30);
        va.wait_status("a up", t, |s| {
            is_up(s, "hB") && s.peers.iter().all(|p| !p.children.is_empty())
        });
        vb.wait_status("b up", t, |s| {
            is_up(s, "hA") && s.peers.iter().all(|p| !p.children.is_empty())
        });
        // Duplicate resolution waits 1 s, then deletes; give it and the delete exchange time.
        sleep(Duration::from_secs(3));
        let established = va.log().matches("IKE SA established").count();
        if established > 1 {
            crossed += 1;
        }
        let why = || format!("{}\n{}", va.diagnostics(), vb.diagnostics());
        for (vm, dst) in [(&avm, "198.19.2.10"), (&bvm, "198.19.1.10")] {
            let (sent, got) = traffic::ping(vm, dst, 20, "0.05");
            assert!(
                got >= 19,
                "start {i} (leader {off} ms after the follower, {established} IKE SAs came up at a): {} -> {dst} \
                 {got} of {sent} answered\n{}",
                vm.name(),
                why()
            );
        }
        for v in [&va, &vb] {
            let s = v.status().expect("status");
            let ikes = s.peers.iter().filter(|p| p.ike.is_some()).count();
            assert_eq!(ikes, 1, "{s:#?}");
            let d = s.drops;
            // A duplicate that came up late (the follower's first IKE_SA_INIT reached the leader before its
            // socket was open, and its retransmission 4 s later made a second IKE SA while the pings ran) is
            // deleted 1 s later while it carries traffic: a packet in flight on it then meets no SA at the end
            // that already took the delete (seen once in three full runs: no_sa_in 1, every ping answered).
            // Since 2026-12-06 the deleted duplicate's inbound SA lingers 5 s as a rekeyed one does, which should
            // take that loss away; the bound stays until full runs have shown it at 0. Anything more, or on the
            // way out, is the bug this test is about.
            let duplicates = v.log().matches("IKE SA established").count() > 1;
            let in_flight = if duplicates { 2 } else { 0 };
            assert!(
                d.no_sa_in <= in_flight && (d.no_sa_out, d.policy) == (0, 0),
                "start {i}: {d:?} (at most {in_flight} without an inbound SA)\n{}",
                why()
            );
        }
        va.terminate(Duration::from_secs(10));
        vb.terminate(Duration::from_secs(10));
    }
    eprintln!(
        "[simultaneous_start] {} starts, {crossed} with two IKE SAs up at once (one deleted by duplicate \
         resolution), pings answered both ways after each; {:.1} s",
        offsets_ms.len(),
        started.elapsed().as_secs_f64()
    );
}
