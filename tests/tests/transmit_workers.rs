//! Bulk TCP between two vmsecd hosts, every byte checked: sixteen connections each way carry 8 MiB of distinct
//! data and must arrive intact and in order (the receiver returns the SHA-256 of what it read), as must 600 UDP
//! datagrams of sizes up to past the MTU, and the Child SA's counters must agree on both sides. With `workers = 2` (ESP in UDP: GSO and GRO) the TUN has two queues
//! and both transmit threads of the sending host must have carried some of the connections; with raw ESP
//! (the AF_PACKET transmit ring, `recvmmsg`) one thread does it all, and the ring must have carried most of it.

use std::time::Duration;

use vmsecd_e2e::netns::NetnsGuard;
use vmsecd_e2e::traffic::{ping_until_ok, tcp_intact, udp_intact};
use vmsecd_e2e::vmsecd::{is_up, peer, Mesh, Vmsecd};

const PSK: &str = "transmit-workers-test-psk-0123456";
const FLOWS: u32 = 16;
const BYTES: u32 = 8 << 20;

/// Nanoseconds each thread of `pid` has run, by thread name.
fn thread_cpu(pid: u32) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let t = t.expect("task").path();
        let name = std::fs::read_to_string(t.join("comm")).unwrap_or_default();
        let ns = std::fs::read_to_string(t.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        v.push((name.trim().to_owned(), ns));
    }
    v
}

fn tx_thread_ns(v: &Vmsecd, name: &str) -> u64 {
    thread_cpu(v.pid())
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, ns)| ns)
        .sum()
}

#[test]
fn two_transmit_workers_carry_many_flows_intact() {
    bulk_tcp_intact("workers", "udp", 2);
}

#[test]
fn raw_esp_carries_many_flows_intact() {
    bulk_tcp_intact("rawbulk", "raw", 1);
}

fn bulk_tcp_intact(name: &str, encap: &str, workers: u32) {
    vmsecd_e2e::netns::require_root_and_ip();
    let mut g = NetnsGuard::new(name);
    let (a, b) = g.underlay_pair();
    let avm = g.vm_subnet(&a, 1, "avm");
    let bvm = g.vm_subnet(&b, 2, "bvm");
    let root = g.dir();
    let mut m = Mesh::two_hosts(PSK);
    m.encap = encap.into();
    m.workers = Some(workers);
    let mut va = Vmsecd::start(&a, &root.join("a"), &m, "hA");
    let mut vb = Vmsecd::start(&b, &root.join("b"), &m, "hB");
    let t = Duration::from_secs(20);
    va.wait_status("hA-hB up", t, |s| is_up(s, "hB"));
    vb.wait_status("hB-hA up", t, |s| is_up(s, "hA"));
    assert!(ping_until_ok(&avm, "198.19.2.10", Duration::from_secs(5)));
    assert!(
        va.log().contains(&format!("workers={workers}")),
        "the daemon reports its workers:\n{}",
        va.log()
    );

    for (from, to, server, client, addr) in [
        (&va, &vb, &bvm, &avm, "198.19.2.10"),
        (&vb, &va, &avm, &bvm, "198.19.1.10"),
    ] {
        let (main0, tx0) = (
            tx_thread_ns(from, "vmsecd"),
            tx_thread_ns(from, "vmsecd-tx1"),
        );
        // UDP of every size up to past the MTU (IP fragments): each datagram arrives whole and unchanged.
        assert_eq!(
            udp_intact(server, client, addr, 600),
            (600, 0),
            "UDP datagrams intact, damaged\n{}",
            from.diagnostics()
        );
        let intact = tcp_intact(server, client, addr, FLOWS, BYTES);
        assert_eq!(
            intact,
            FLOWS,
            "every connection arrives intact\n{}\n{}",
            from.diagnostics(),
            to.diagnostics()
        );
        let (main1, tx1) = (
            tx_thread_ns(from, "vmsecd"),
            tx_thread_ns(from, "vmsecd-tx1"),
        );
        // Sending 128 MiB costs tens of milliseconds of encryption; with 16 flows spread over two queues,
        // each thread gets a share (all 16 on one queue has odds of 2 in 65536).
        if workers > 1 {
            assert!(
                tx1 - tx0 > 5_000_000,
                "the second transmit thread ran {} us",
                (tx1 - tx0) / 1000
            );
        }
        assert!(main1 - main0 > 5_000_000);
    }

    // Both ends count the packets of the Child SA, whichever thread sent them: the receiver counts what the
    // sender counted, less what the underlay dropped (a socket buffer may overflow under 16 flows; TCP resends).
    let (sa, sb) = (va.status().expect("status"), vb.status().expect("status"));
    let (ca, cb) = (&peer(&sa, "hB").children[0], &peer(&sb, "hA").children[0]);
    let ike = peer(&sa, "hB").ike.as_ref().expect("IKE SA");
    assert_eq!(ike.udp_encap, encap == "udp", "ESP framing as configured");
    for (sent, received, dir) in [
        (ca.out.packets, cb.r#in.packets, "a to b"),
        (cb.out.packets, ca.r#in.packets, "b to a"),
    ] {
        assert!(
            received <= sent && received >= sent - sent / 50,
            "{dir}: sent {sent}, received {received}"
        );
    }
    assert!(ca.out.bytes > u64::from(FLOWS * BYTES));
    // Raw ESP leaves through the AF_PACKET transmit ring once the peer's next hop is resolved (issue 15); the raw
    // socket carries the first packets, the fragmented UDP datagrams and one batch per second.
    for (s, host) in [(&sa, "hA"), (&sb, "hB")] {
        let r = s.raw_esp_out;
        if encap == "raw" {
            assert!(
                r.ring > 10 * r.socket && r.ring > ca.out.packets.min(cb.out.packets) / 2,
                "{host}: raw ESP mostly through the ring: {r:?}"
            );
        } else {
            assert_eq!((r.ring, r.socket), (0, 0), "{host}: no raw ESP");
        }
    }
    va.terminate(Duration::from_secs(5));
    vb.terminate(Duration::from_secs(5));
}
