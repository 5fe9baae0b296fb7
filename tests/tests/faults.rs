//! A faulty underlay between two vmsecd hosts (this kernel has no netem): nftables drops for loss on each
//! host's underlay input, and `lossy-relay` between two veth pairs for delay, reordering and duplication
//! (src/faultlink.rs). Settings and measured times are in tests/README.md.
//!
//! - Establishment under 20 % loss each way, 20 % of frames reordered (held 50 ms more than the 5-25 ms every
//!   frame waits) and 10 % duplicated; then IKE and Child SA rekeys (lifetimes of 60 s and 52 s, margin 25 s)
//!   under 10 % loss with the same reordering and duplication, for 100 s of VM traffic. Each rekey must
//!   complete within its retransmission budget: the tunnel never leaves `established`, no SA is set up anew,
//!   and SPIs change as often as the lifetimes require. Duplicated ESP must meet the replay check (counted).
//! - ESP reordered within the anti-replay window (no loss, no duplication) loses nothing to the replay check:
//!   every Child SA's `drops.replay` stays 0 while byte-checked TCP and UDP run both ways across a Child SA
//!   rekey.

use std::thread;
use std::time::{Duration, Instant};

use vmsecd_e2e::faultlink::{Faults, FaultyPair, SaWatch};
use vmsecd_e2e::netns::NetnsGuard;
use vmsecd_e2e::strongswan::{require_charon, Charon, Conn, IkeSaInfo};
use vmsecd_e2e::traffic::{iperf3, ping, ping_until_ok, tcp_intact, udp_intact};
use vmsecd_e2e::vmsecd::{is_up, Mesh, Vmsecd};

const RELAY: &str = env!("CARGO_BIN_EXE_lossy-relay");

/// The replay-window test runs alone; the others run side by side (they share it for reading). Its 300 UDP
/// datagrams (up to 8 KB, IP fragments) cross the TUN beside a 100 Mbit/s stream: when the three other tests'
/// daemons, relays and iperf3 starved a daemon of the 2 cores for ~100 ms, the TUN's 500-packet queue
/// overflowed (600 `TX dropped` on vmsec0 in two of three full runs on 2026-12-06) and a tail of datagrams was
/// lost before vmsecd saw it, which is not what the test is about.
static ALONE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn side_by_side() -> std::sync::RwLockReadGuard<'static, ()> {
    ALONE.read().unwrap_or_else(|e| e.into_inner())
}
const PSK: &str = "faults-test-psk-0123456789abcdef";
const AVM: &str = "198.19.1.10";
const BVM: &str = "198.19.2.10";

/// The kernel's drop counters of the underlay in each namespace: UDP errors and veth drops, for failure messages.
fn kernel_drops(p: &FaultyPair) -> String {
    let mut o = String::new();
    for ns in [&p.a, &p.b, &p.avm, &p.bvm] {
        let snmp =
            String::from_utf8_lossy(&ns.output("cat", &["/proc/net/snmp"]).stdout).into_owned();
        let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
        let ip: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Ip:")).collect();
        o.push_str(&format!(
            "--- {} ---\n{}\n{}\n",
            ns.name(),
            udp.join("\n"),
            ip.join("\n")
        ));
    }
    for ns in [&p.r, &p.a, &p.b] {
        let links = ns.output("ip", &["-s", "-o", "link"]);
        o.push_str(&format!(
            "--- {} ---\n{}",
            ns.name(),
            String::from_utf8_lossy(&links.stdout)
        ));
    }
    o
}

/// Lines of `log` after byte `from` that contain `needle`.
fn count_after(log: &str, from: usize, needle: &str) -> usize {
    log.get(from..)
        .unwrap_or("")
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

fn start_pair(p: &FaultyPair, g: &mut NetnsGuard, m: &Mesh) -> (Vmsecd, Vmsecd) {
    let root = g.dir();
    let va = Vmsecd::start(&p.a, &root.join("a"), m, "hA");
    let vb = Vmsecd::start(&p.b, &root.join("b"), m, "hB");
    (va, vb)
}

/// Waits until both hosts hold an established IKE SA with a Child SA; returns how long it took.
fn wait_both_up(va: &mut Vmsecd, vb: &mut Vmsecd, since: Instant, timeout: Duration) -> Duration {
    va.wait_status("hA-hB up", timeout, |s| is_up(s, "hB"));
    let rest = timeout.saturating_sub(since.elapsed());
    vb.wait_status("hB-hA up", rest.max(Duration::from_secs(1)), |s| {
        is_up(s, "hA")
    });
    since.elapsed()
}

#[test]
fn establish_and_rekey_under_loss_reorder_duplication() {
    let _shared = side_by_side();
    const ESTABLISH_LOSS: u32 = 20;
    const REKEY_LOSS: u32 = 10;
    const PHASE: Duration = Duration::from_secs(100);
    let started = Instant::now();
    let mut g = NetnsGuard::new("faults-rekey");
    let mut p = FaultyPair::new(&mut g);
    let faults = Faults {
        delay_ms: 5,
        jitter_ms: 20,
        reorder_pct: 20.0,
        reorder_ms: 50,
        duplicate_pct: 10.0,
    };
    p.relay(RELAY, faults, 0x5eed_0001, Duration::from_secs(400));
    p.set_loss(ESTABLISH_LOSS);

    let mut m = Mesh::two_hosts(PSK);
    // A rekey starts 25 s (less up to a third as jitter) before the end: room for 4 transmissions of the
    // request (at 0, 4, 11.2 and 24.2 s) before the SA runs out.
    m.child_lifetime = Some("52s".into());
    m.ike_lifetime = Some("60s".into());
    m.rekey_margin = Some("25s".into());
    let t0 = Instant::now();
    let (mut va, mut vb) = start_pair(&p, &mut g, &m);
    // Each of the two exchanges has 6 transmissions over 165 s; 90 s holds 5 of them.
    let up = wait_both_up(&mut va, &mut vb, t0, Duration::from_secs(90));
    // Both ends may have started an IKE SA: the follower initiates 3 s after start when nothing is up yet, and
    // establishment under 20 % loss can take longer. Its exchanges retransmit at 0, 4 and 11.2 s, and the
    // duplicate is deleted a second after it is up (seen: up 10 s after the first one). Let that settle before
    // counting what is set up anew; the first rekey starts 27 s after establishment at the earliest.
    std::thread::sleep(Duration::from_secs(18));
    let (la, lb) = (va.log().len(), vb.log().len());
    eprintln!(
        "[faults] established under {ESTABLISH_LOSS}% loss each way + reorder/duplicate in {:.1} s",
        up.as_secs_f64()
    );

    p.set_loss(REKEY_LOSS);
    let watch = SaWatch::start(&p.a, &p.b, Duration::from_millis(250));
    let phase_start = Instant::now();
    let avm = p.avm.clone();
    let pinger = thread::spawn(move || ping(&avm, BVM, (PHASE.as_millis() / 200) as u32, "0.2"));
    let (sent, got) = pinger.join().expect("ping thread");
    let phase = phase_start.elapsed();
    // Every byte of TCP still arrives (TCP resends what the link lost); UDP datagrams arrive whole or not at all.
    let flows = tcp_intact(&p.bvm, &p.avm, BVM, 4, 1 << 20);
    let (udp_ok, udp_bad) = udp_intact(&p.avm, &p.bvm, AVM, 200);
    let h = watch.finish();
    let stats = p.relay_stats();
    let lost = p.lost();
    let (loga, logb) = (va.log(), vb.log());
    let diag = || {
        format!(
            "a: {:#?}\nb: {:#?}\nrelay: {stats:?}\nnft lost (a, b): {lost:?}\n{}\n{}",
            h[0],
            h[1],
            va.diagnostics(),
            vb.diagnostics()
        )
    };
    eprintln!(
        "[faults] rekey phase {:.0} s at {REKEY_LOSS}% loss: a saw {} IKE and {} Child SA rekeys, b {} and {}; \
         ping {got}/{sent}; replay drops (duplicates) a {} b {}; relay {stats:?}; nft dropped {lost:?}; \
         udp {udp_ok} intact {udp_bad} damaged",
        phase.as_secs_f64(),
        h[0].ike_changes(),
        h[0].child_changes(),
        h[1].ike_changes(),
        h[1].child_changes(),
        h[0].replay_drops(),
        h[1].replay_drops(),
    );

    // Every rekey completed before its SA ran out: never down, nothing set up anew.
    for (name, x, log, from) in [("a", &h[0], &loga, la), ("b", &h[1], &logb, lb)] {
        assert!(x.samples > 100, "{name}: status sampled\n{}", diag());
        assert_eq!(
            x.not_up,
            0,
            "{name}: the tunnel left `established`\n{}",
            diag()
        );
        for bad in ["IKE SA established", "IKE SA down", "Child SA up"] {
            assert_eq!(
                count_after(log, from, bad),
                0,
                "{name}: {bad:?} after establishment: something was set up anew\n{}",
                diag()
            );
        }
        // 100 s with lifetimes of 52 s (rekey every 18.7-27 s) and 60 s (every 26.7-35 s).
        assert!(
            x.child_changes() >= 3,
            "{name}: Child SA rekeys\n{}",
            diag()
        );
        assert!(x.ike_changes() >= 2, "{name}: IKE SA rekeys\n{}", diag());
        // Every new SPI came from a logged rekey (the log is read just after the last sample, so it may hold
        // one more).
        for (what, seen) in [
            ("Child SA rekeyed", x.child_changes()),
            ("IKE SA rekeyed", x.ike_changes()),
        ] {
            let logged = count_after(log, from, what);
            assert!(
                (seen..=seen + 1).contains(&logged),
                "{name}: {logged} {what:?} lines for {seen} SPI changes\n{}",
                diag()
            );
        }
        assert_eq!(
            x.auth_drops(),
            0,
            "{name}: ESP failed authentication\n{}",
            diag()
        );
    }
    assert_eq!(flows, 4, "TCP intact under loss\n{}", diag());
    assert_eq!(udp_bad, 0, "UDP damaged\n{}", diag());
    // The duplicated ESP reached the replay check and was counted there: the zero of the reorder-only test
    // below is a real zero.
    assert!(
        h[0].replay_drops() + h[1].replay_drops() > 0,
        "duplicates counted as replays\n{}",
        diag()
    );
    assert!(
        stats.get("a2b_duplicated").copied().unwrap_or(0) > 0
            && stats.get("b2a_overtaken").copied().unwrap_or(0) > 0,
        "the relay duplicated and reordered\n{}",
        diag()
    );
    assert!(
        lost.0 > 0 && lost.1 > 0,
        "the loss rules dropped\n{}",
        diag()
    );
    // With 10 % loss each way about 19 % of pings are lost; far more means an outage.
    assert!(got * 100 >= sent * 60, "ping {got}/{sent}\n{}", diag());
    va.terminate(Duration::from_secs(5));
    vb.terminate(Duration::from_secs(5));
    eprintln!("[faults-rekey] {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn esp_reordered_within_window_loses_nothing_to_replay_check() {
    let _alone = ALONE.write().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let mut g = NetnsGuard::new("faults-reorder");
    let mut p = FaultyPair::new(&mut g);
    // No loss, no duplication: every ESP packet arrives once, a quarter of them 8 ms late.
    let faults = Faults {
        delay_ms: 1,
        jitter_ms: 3,
        reorder_pct: 25.0,
        reorder_ms: 8,
        duplicate_pct: 0.0,
    };
    p.relay(RELAY, faults, 0x5eed_0002, Duration::from_secs(300));
    // Default lifetimes: no rekey during the test (see `esp_in_flight_across_child_rekey_is_delivered`).
    let m = Mesh::two_hosts(PSK);
    let t0 = Instant::now();
    let (mut va, mut vb) = start_pair(&p, &mut g, &m);
    let up = wait_both_up(&mut va, &mut vb, t0, Duration::from_secs(30));
    assert!(ping_until_ok(&p.avm, BVM, Duration::from_secs(5)));
    let watch = SaWatch::start(&p.a, &p.b, Duration::from_millis(250));
    // A bulk TCP stream a -> b under the byte checks: more packets in flight, reordered further.
    let (bvm, avm) = (p.bvm.clone(), p.avm.clone());
    let bulk = thread::spawn(move || iperf3(&bvm, &avm, BVM, 12, false, Some("100M")));
    let traffic = Instant::now();
    for (server, client, addr) in [(&p.bvm, &p.avm, BVM), (&p.avm, &p.bvm, AVM)] {
        let r = udp_intact(server, client, addr, 300);
        assert_eq!(
            r,
            (300, 0),
            "UDP datagrams intact, damaged; SAs seen {:#?}\nrelay {:?}\n{}\n{}\n{}",
            watch.snapshot(),
            p.relay_stats(),
            kernel_drops(&p),
            va.diagnostics(),
            vb.diagnostics()
        );
        assert_eq!(
            tcp_intact(server, client, addr, 4, 4 << 20),
            4,
            "TCP intact\n{}\n{}",
            va.diagnostics(),
            vb.diagnostics()
        );
    }
    let traffic = traffic.elapsed();
    let bulk = bulk.join().expect("iperf3 thread");
    let h = watch.finish();
    let stats = p.relay_stats();
    eprintln!(
        "[faults] reorder only: up in {:.1} s; byte checks in {:.1} s beside {} MB of bulk TCP ({:?} \
         retransmits); host drops a {:?} b {:?}; relay {stats:?}",
        up.as_secs_f64(),
        traffic.as_secs_f64(),
        bulk.bytes_received / 1_000_000,
        bulk.retransmits,
        h[0].global_drops,
        h[1].global_drops,
    );
    check_reorder_only(&stats, 1000);
    for (name, x) in [("a", &h[0]), ("b", &h[1])] {
        assert_eq!(
            x.replay_drops(),
            0,
            "{name}: reordered ESP within the window was dropped as a replay: {x:#?}\n{}\n{}",
            va.diagnostics(),
            vb.diagnostics()
        );
        assert_eq!(x.auth_drops(), 0, "{name}: {x:#?}");
        assert_eq!(x.not_up, 0, "{name}: tunnel down during the test: {x:#?}");
        assert_eq!(x.child_changes(), 0, "{name}: no rekey expected: {x:#?}");
        assert_eq!(x.global_drops.get("no_sa_in"), Some(&0), "{name}: {x:#?}");
    }
    va.terminate(Duration::from_secs(5));
    vb.terminate(Duration::from_secs(5));
    eprintln!("[faults-reorder] {:.1} s", started.elapsed().as_secs_f64());
}

/// The relay reordered (more than `min_overtaken` frames each way), never by as many frames as the anti-replay
/// window (1024) holds, and lost, duplicated or overran nothing.
fn check_reorder_only(stats: &std::collections::BTreeMap<String, u64>, min_overtaken: u64) {
    let get = |k: &str| stats.get(k).copied().unwrap_or(0);
    for d in ["a2b", "b2a"] {
        assert!(get(&format!("{d}_overtaken")) > min_overtaken, "{stats:?}");
        assert!(
            get(&format!("{d}_max_displacement")) < 1024,
            "reordered beyond the replay window (1024): {stats:?}"
        );
        for k in ["duplicated", "lost", "bad", "socket_drops"] {
            assert_eq!(get(&format!("{d}_{k}")), 0, "relay {k}: {stats:?}");
        }
    }
}

/// ESP still in flight on the old Child SA when a rekey completes must be delivered, not dropped because the
/// old inbound SA is already gone. vmsecd used to remove the old inbound SA as soon as the rekey's DELETE had
/// been processed, so ESP the peer sent on it just before, and that the link held back behind the DELETE, was
/// counted as `no_sa_in` and lost; it now keeps a rekeyed inbound SA for 5 s, as strongSwan's
/// `delete_rekeyed_delay` does (tunnel/src/daemon/datapath/inbound.rs, REKEYED_INBOUND_LINGER).
#[test]
fn esp_in_flight_across_child_rekey_is_delivered() {
    let _shared = side_by_side();
    let started = Instant::now();
    let mut g = NetnsGuard::new("faults-rekeyflight");
    let mut p = FaultyPair::new(&mut g);
    // A quarter of the frames 30 ms late: the DELETE that ends a rekey often overtakes ESP sent before it.
    let faults = Faults {
        delay_ms: 1,
        jitter_ms: 3,
        reorder_pct: 25.0,
        reorder_ms: 30,
        duplicate_pct: 0.0,
    };
    p.relay(RELAY, faults, 0x5eed_0003, Duration::from_secs(300));
    let mut m = Mesh::two_hosts(PSK);
    m.child_lifetime = Some("20s".into());
    m.rekey_margin = Some("8s".into());
    let t0 = Instant::now();
    let (mut va, mut vb) = start_pair(&p, &mut g, &m);
    wait_both_up(&mut va, &mut vb, t0, Duration::from_secs(30));
    let watch = SaWatch::start(&p.a, &p.b, Duration::from_millis(250));
    // Bulk TCP both ways through two Child SA rekeys (every 9.3-12 s).
    let (bvm, avm) = (p.bvm.clone(), p.avm.clone());
    let fwd = thread::spawn(move || iperf3(&bvm, &avm, BVM, 26, false, Some("50M")));
    let (bvm, avm) = (p.bvm.clone(), p.avm.clone());
    let rev = thread::spawn(move || iperf3(&avm, &bvm, AVM, 26, false, Some("50M")));
    let (fwd, rev) = (fwd.join().expect("iperf3"), rev.join().expect("iperf3"));
    let h = watch.finish();
    let stats = p.relay_stats();
    eprintln!(
        "[faults] across rekeys: Child SA rekeys a {} b {}; host drops a {:?} b {:?}; TCP {} / {} MB; relay \
         {stats:?}",
        h[0].child_changes(),
        h[1].child_changes(),
        h[0].global_drops,
        h[1].global_drops,
        fwd.bytes_received / 1_000_000,
        rev.bytes_received / 1_000_000,
    );
    check_reorder_only(&stats, 1000);
    for (name, x) in [("a", &h[0]), ("b", &h[1])] {
        assert!(x.child_changes() >= 2, "{name}: rekeys: {x:#?}");
        assert_eq!(x.replay_drops(), 0, "{name}: {x:#?}");
        assert_eq!(
            x.global_drops.get("no_sa_in"),
            Some(&0),
            "{name}: ESP in flight on the old SA dropped after the rekey: {x:#?}\n{}\n{}",
            va.diagnostics(),
            vb.diagnostics()
        );
    }
    va.terminate(Duration::from_secs(5));
    vb.terminate(Duration::from_secs(5));
    eprintln!(
        "[faults-rekeyflight] {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// vmsecd (a) and a strongSwan 5.9 gateway (b, kernel-libipsec) through the same faulty link: established
/// under 20 % loss with reordering and duplication, then vmsecd's IKE and Child SA rekeys (charon's own
/// lifetimes are long) under 10 % loss for 70 s; charon must hold the SAs vmsecd holds at the end.
#[test]
fn strongswan_peer_establishes_and_rekeys_under_faults() {
    let _shared = side_by_side();
    let started = Instant::now();
    require_charon();
    let mut g = NetnsGuard::new("faults-swan");
    let mut p = FaultyPair::new(&mut g);
    p.relay(
        RELAY,
        Faults {
            delay_ms: 5,
            jitter_ms: 20,
            reorder_pct: 20.0,
            reorder_ms: 50,
            duplicate_pct: 10.0,
        },
        0x5eed_0004,
        Duration::from_secs(300),
    );
    p.set_loss(20);
    let root = g.dir();
    let mut m = Mesh::two_hosts(PSK);
    m.child_lifetime = Some("52s".into());
    m.ike_lifetime = Some("60s".into());
    m.rekey_margin = Some("25s".into());
    let c = Charon::start(&p.b, &root.join("charon"), &[Conn::to_vmsecd(PSK)]);
    let t0 = Instant::now();
    let mut va = Vmsecd::start(&p.a, &root.join("a"), &m, "hA");
    va.wait_status("hA-hB up", Duration::from_secs(90), |s| is_up(s, "hB"));
    let up = t0.elapsed();
    let la = va.log().len();
    p.set_loss(10);
    let watch = SaWatch::start_a(&p.a, Duration::from_millis(250));
    // 70 s: room for two Child SA rekeys (every 18.7-27 s) even when both need a retransmission.
    let (sent, got) = ping(&p.avm, BVM, 350, "0.2");
    let h = watch.finish();
    let x = &h[0];
    let log = va.log();
    let diag = || format!("{x:#?}\n{}\n{}", va.diagnostics(), c.diagnostics());
    eprintln!(
        "[faults] strongSwan peer: up in {:.1} s under 20% loss; 70 s at 10% loss: {} IKE and {} Child SA rekeys, \
         ping {got}/{sent}, replay drops {}; relay {:?}",
        up.as_secs_f64(),
        x.ike_changes(),
        x.child_changes(),
        x.replay_drops(),
        p.relay_stats()
    );
    assert_eq!(x.not_up, 0, "the tunnel left `established`\n{}", diag());
    for bad in ["IKE SA established", "IKE SA down", "Child SA up"] {
        assert_eq!(
            count_after(&log, la, bad),
            0,
            "{bad:?} after establishment\n{}",
            diag()
        );
    }
    assert!(x.child_changes() >= 2, "Child SA rekeys\n{}", diag());
    assert!(x.ike_changes() >= 1, "IKE SA rekeys\n{}", diag());
    assert!(got * 100 >= sent * 60, "ping {got}/{sent}\n{}", diag());
    // charon holds the IKE SA and the Child SA vmsecd holds. The two are read one after the other while
    // vmsecd's rekeys go on (one every 19-27 s, each retransmitted under 10 % loss), so a reading may fall
    // between charon's answer and vmsecd's receipt of it (CI run: charon already held the new Child SA that
    // vmsecd was still waiting for). Agreement must come within two retransmissions (3 s) of a rekey.
    let agree = |sas: &[IkeSaInfo], st: &vmsecd_e2e::vmsecd::Status| {
        let pe = vmsecd_e2e::vmsecd::peer(st, "hB");
        let Some(ike) = pe.ike.as_ref() else {
            return false;
        };
        sas.iter().any(|s| {
            s.state == "ESTABLISHED"
                && s.spi_i == ike.spi_i
                && s.children.iter().any(|ch| {
                    ch.state == "INSTALLED" && pe.children.iter().any(|v| v.spi_out == ch.spi_in)
                })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = va.status().expect("status");
        let sas = c.list_sas();
        if agree(&sas, &st) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "charon's SAs {sas:#?}\nvmsecd's {:#?}\n{}",
            vmsecd_e2e::vmsecd::peer(&st, "hB"),
            diag()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    va.terminate(Duration::from_secs(5));
    eprintln!("[faults-swan] {:.1} s", started.elapsed().as_secs_f64());
}
