//! Interop with strongSwan: vmsecd against a real charon 5.9 (Debian's packages), each on its own hypervisor in
//! a network namespace, each with a VM namespace behind its bridge.
//!
//! ```text
//!  avm 198.19.1.10 -- virbr0 198.19.1.1 [a: vmsecd, u0 198.18.0.1] ==== [b: charon, u0 198.18.0.2] virbr0 198.19.2.1 -- bvm 198.19.2.10
//! ```
//!
//! This kernel has no ESP, so charon runs its userspace ESP (kernel-libipsec: TUN `ipsec0`, routes in table
//! 220, ESP always in UDP 4500) and vmsecd is told `encap = "udp"`. Each case checks that both sides agree on the
//! IKE SA and the Child SA (SPIs, who initiated, algorithms), that the VMs reach each other (ping and a TCP
//! transfer, both ways), and that a capture of the underlay in `a` holds only UDP 500/4500 between the hosts and
//! never an inner address in clear. Then: deletes from either side, the failures (wrong PSK, no common proposal,
//! disjoint selectors, a silent peer) with the right notify and a clear log, and Child SA and IKE SA rekeys,
//! initiated by both sides and colliding with each other, under load.
//!
//! Not covered: IKE fragmentation with charon (both announce it, but no message of these tests is large enough
//! to be split; the pair tests in ike/tests/pair.rs cover it), and NAT keepalives (no NAT between the hosts).
//!
//! Needs root, iproute2, nftables, tcpdump, iperf3 and charon with kernel-libipsec, openssl, gcm and chapoly
//! (Debian: strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins
//! libstrongswan-extra-plugins): without them every test fails, none skips. `VT_KEEP_DIR=1` keeps each test's
//! directory (charon's and vmsecd's logs and configuration, the captures); `VT_CHARON_DEBUG=1` raises charon's
//! log levels.

use std::net::Ipv4Addr;
use std::thread::sleep;
use std::time::{Duration, Instant};

use vmsecd_e2e::bed::Bed;
use vmsecd_e2e::strongswan::{Charon, Conn, IkeSaInfo};
use vmsecd_e2e::traffic::{self, Captured};
use vmsecd_e2e::vmsecd::{is_up, peer, Mesh, Status, Vmsecd};

const PSK: &str = "interop-test-psk-0123456789abcdef";
const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const AVM: &str = "198.19.1.10";
const BVM: &str = "198.19.2.10";
/// charon's name for vmsecd's host is "hA" (see [`Conn::to_vmsecd`]), its child's:
const CHILD: &str = "net";
/// vmsecd's name for charon's host.
const PEER: &str = "hB";

fn both_logs(v: &Vmsecd, c: &Charon) -> String {
    format!("{}\n{}", v.diagnostics(), c.diagnostics())
}

/// Waits until both sides have exactly one established IKE SA with one installed Child SA, and the same SPIs.
fn wait_up(v: &mut Vmsecd, c: &Charon, timeout: Duration) -> (Status, IkeSaInfo) {
    let deadline = Instant::now() + timeout;
    loop {
        let st = v.status().ok();
        let sas = c.list_sas();
        if let Some(st) = st.filter(|s| is_up(s, PEER)) {
            let ike = peer(&st, PEER).ike.clone().expect("established");
            let matching: Vec<&IkeSaInfo> = sas
                .iter()
                .filter(|s| s.state == "ESTABLISHED" && s.spi_i == ike.spi_i)
                .collect();
            if let [sa] = matching[..] {
                if sa.children.iter().any(|c| c.state == "INSTALLED") {
                    return (st, sa.clone());
                }
            }
        }
        if Instant::now() > deadline {
            panic!(
                "no IKE SA with a Child SA on both sides after {timeout:?}\nvmsecd: {:#?}\ncharon: {sas:#?}\n{}",
                v.status(),
                both_logs(v, c)
            );
        }
        sleep(Duration::from_millis(100));
    }
}

/// Both sides agree on the SAs: IKE SPIs, roles, algorithms (`ike_alg`, `esp_alg` in vmsecd's notation), Child
/// SPIs crosswise, selectors, UDP encapsulation.
fn check_agree(st: &Status, sa: &IkeSaInfo, vmsecd_initiated: bool, ike_alg: &str, esp_alg: &str) {
    let p = peer(st, PEER);
    let ike = p.ike.as_ref().expect("IKE SA");
    let ctx = format!("vmsecd: {p:#?}\ncharon: {sa:#?}");
    assert_eq!(
        (ike.spi_i.as_str(), ike.spi_r.as_str()),
        (sa.spi_i.as_str(), sa.spi_r.as_str()),
        "IKE SPIs differ\n{ctx}"
    );
    assert_eq!(
        ike.initiator, vmsecd_initiated,
        "vmsecd's role is wrong\n{ctx}"
    );
    assert_eq!(
        sa.charon_initiated, !vmsecd_initiated,
        "charon's role is wrong\n{ctx}"
    );
    assert_eq!(ike.algorithms, ike_alg, "vmsecd's IKE algorithms\n{ctx}");
    assert_eq!(sa.algorithms, ike_alg, "charon's IKE algorithms\n{ctx}");
    assert!(ike.udp_encap, "vmsecd uses UDP 4500\n{ctx}");
    assert_eq!(p.children.len(), 1, "one Child SA in vmsecd\n{ctx}");
    let installed: Vec<_> = sa
        .children
        .iter()
        .filter(|c| c.state == "INSTALLED")
        .collect();
    assert_eq!(installed.len(), 1, "one Child SA in charon\n{ctx}");
    let (ours, theirs) = (&p.children[0], installed[0]);
    assert_eq!(
        ours.spi_in, theirs.spi_out,
        "vmsecd's inbound SPI is charon's outbound\n{ctx}"
    );
    assert_eq!(
        ours.spi_out, theirs.spi_in,
        "vmsecd's outbound SPI is charon's inbound\n{ctx}"
    );
    assert_eq!(ours.algorithms, esp_alg, "vmsecd's ESP algorithms\n{ctx}");
    assert_eq!(theirs.algorithms, esp_alg, "charon's ESP algorithms\n{ctx}");
    assert!(theirs.encap, "charon carries ESP in UDP\n{ctx}");
    assert_eq!(theirs.local_ts, ["198.19.2.0/24"], "{ctx}");
    assert_eq!(theirs.remote_ts, ["198.19.1.0/24"], "{ctx}");
}

/// Pings both ways, runs a TCP transfer each way for `secs` seconds, and checks the bytes of four TCP
/// connections and 300 UDP datagrams (up to past the MTU) each way.
fn check_traffic(bed: &Bed, v: &Vmsecd, c: &Charon, secs: u32) {
    // The first packet may race the route and the TUN: allow a short warm-up, then demand every answer.
    assert!(
        traffic::ping_until_ok(&bed.avm, BVM, Duration::from_secs(5)),
        "VM a cannot reach VM b\n{}",
        both_logs(v, c)
    );
    for (from, to, what) in [(&bed.avm, BVM, "a -> b"), (&bed.bvm, AVM, "b -> a")] {
        let (sent, got) = traffic::ping(from, to, 5, "0.1");
        assert_eq!(
            (sent, got),
            (5, 5),
            "ping {what}: {got} of {sent} answered\n{}",
            both_logs(v, c)
        );
    }
    for reverse in [false, true] {
        let r = traffic::iperf3(&bed.bvm, &bed.avm, BVM, secs, reverse, None);
        let dir = if reverse { "b -> a" } else { "a -> b" };
        eprintln!(
            "[{}] TCP {dir}: {:.1} MB in {secs} s, retransmits {:?}",
            bed.name,
            r.bytes_received as f64 / 1e6,
            r.retransmits
        );
        assert!(
            r.bytes_received >= 1_000_000,
            "TCP {dir} moved only {} bytes\n{}\n{}",
            r.bytes_received,
            r.json,
            both_logs(v, c)
        );
    }
    // Every byte arrives as sent, both ways: vmsecd's segmentation of TSO super-packets on the way out and its
    // merging of charon's segments on the way in must not change one.
    for (server, client, addr, dir) in [
        (&bed.bvm, &bed.avm, BVM, "a -> b"),
        (&bed.avm, &bed.bvm, AVM, "b -> a"),
    ] {
        assert_eq!(
            traffic::udp_intact(server, client, addr, 300),
            (300, 0),
            "UDP {dir}: datagrams intact, damaged\n{}",
            both_logs(v, c)
        );
        let intact = traffic::tcp_intact(server, client, addr, 4, 2 << 20);
        assert_eq!(
            intact,
            4,
            "TCP {dir}: {intact} of 4 connections arrived intact\n{}",
            both_logs(v, c)
        );
    }
}

/// The capture holds IKE and ESP in UDP between the hosts, nothing else between them, no inner address.
fn check_capture(cap: &Captured) {
    let vms: [Ipv4Addr; 2] = [AVM.parse().unwrap(), BVM.parse().unwrap()];
    let bad = traffic::foreign_frames(cap, A, B, &[(Ipv4Addr::new(198, 19, 0, 0), 16)], &vms);
    assert!(
        bad.is_empty(),
        "the underlay carried {} frames that are not IKE/ESP in UDP, or showed inner addresses:\n{}",
        bad.len(),
        bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    let esp = cap
        .ipv4
        .iter()
        .filter(|f| f.sport == Some(4500) && f.payload.len() >= 4 && f.payload[..4] != [0; 4])
        .count();
    let ike = cap
        .ipv4
        .iter()
        .filter(|f| {
            f.sport == Some(500) || (f.sport == Some(4500) && f.payload.starts_with(&[0; 4]))
        })
        .count();
    assert!(
        ike >= 4,
        "the capture shows {ike} IKE datagrams; expected the handshake"
    );
    assert!(
        esp >= 20,
        "the capture shows only {esp} ESP-in-UDP datagrams"
    );
}

/// A full case: establish with `vmsecd_initiates`, compare, ping, transfer, capture.
fn full_case(
    name: &str,
    ike: &str,
    esp: &str,
    ike_alg: &str,
    esp_alg: &str,
    vmsecd_initiates: bool,
    secs: u32,
) {
    let mut bed = Bed::new("sw", name);
    let cap = bed.capture();
    let mut conn = Conn::to_vmsecd(PSK);
    conn.proposals = ike.into();
    conn.esp_proposals = esp.into();
    let charon = bed.charon(&[conn]);
    let mut mesh = Mesh::two_hosts(PSK);
    mesh.ike_proposals = vec![ike.into()];
    mesh.esp_proposals = vec![esp.into()];
    if !vmsecd_initiates {
        bed.block_vmsecd_initiation();
    }
    let mut v = bed.vmsecd(&mesh);
    if !vmsecd_initiates {
        // Wait for vmsecd's (dropped) attempt, so that charon's is not the first IKE_SA_INIT it sees by luck.
        v.wait_status("vmsecd listening", Duration::from_secs(10), |_| true);
        let out = charon.initiate(CHILD, 20);
        assert!(
            out.status.success(),
            "swanctl --initiate failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            both_logs(&v, &charon)
        );
    }
    let (st, sa) = wait_up(&mut v, &charon, Duration::from_secs(20));
    check_agree(&st, &sa, vmsecd_initiates, ike_alg, esp_alg);
    check_traffic(&bed, &v, &charon, secs);
    // Counters moved on both sides.
    let st = v.status().expect("status");
    let ours = &peer(&st, PEER).children[0];
    assert!(
        ours.r#in.packets > 0 && ours.out.packets > 0,
        "vmsecd counted no ESP: {ours:#?}"
    );
    assert_eq!(
        (ours.drops.auth, ours.drops.replay, ours.drops.malformed),
        (0, 0, 0),
        "vmsecd dropped inbound ESP: {ours:#?}"
    );
    let cap = cap.stop();
    check_capture(&cap);
    let log = v.log();
    assert!(
        log.contains("IKE SA established") && log.contains("Child SA up"),
        "{log}"
    );
}

// ---- 1. who initiates ----

#[test]
fn interop_vmsecd_initiates_charon_responds() {
    full_case(
        "init",
        "aes128gcm16-prfsha256-x25519",
        "aes128gcm16",
        "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",
        "AES_GCM_16_128",
        true,
        3,
    );
}

#[test]
fn interop_charon_initiates_vmsecd_responds() {
    full_case(
        "resp",
        "aes128gcm16-prfsha256-x25519",
        "aes128gcm16",
        "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",
        "AES_GCM_16_128",
        false,
        3,
    );
}

// ---- 2. proposals ----

#[test]
fn proposal_aes128gcm16_prfsha256_x25519() {
    full_case(
        "p-gcm128",
        "aes128gcm16-prfsha256-x25519",
        "aes128gcm16",
        "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",
        "AES_GCM_16_128",
        true,
        1,
    );
}

#[test]
fn proposal_aes256gcm16_prfsha384_ecp384() {
    full_case(
        "p-gcm256",
        "aes256gcm16-prfsha384-ecp384",
        "aes256gcm16",
        "AES_GCM_16_256/PRF_HMAC_SHA2_384/ECP_384",
        "AES_GCM_16_256",
        true,
        1,
    );
}

#[test]
fn proposal_chacha20poly1305_prfsha256_x25519() {
    full_case(
        "p-chacha",
        "chacha20poly1305-prfsha256-x25519",
        "chacha20poly1305",
        "CHACHA20_POLY1305/PRF_HMAC_SHA2_256/CURVE_25519",
        "CHACHA20_POLY1305",
        true,
        1,
    );
}

#[test]
fn proposal_aes256_sha256_modp2048() {
    full_case(
        "p-cbc",
        "aes256-sha256-modp2048",
        "aes256-sha256",
        "AES_CBC_256/HMAC_SHA2_256_128/PRF_HMAC_SHA2_256/MODP_2048",
        "AES_CBC_256/HMAC_SHA2_256_128",
        true,
        1,
    );
}

// ---- 3. deletes ----

#[test]
fn teardown_charon_terminates_then_vmsecd_stops() {
    let mut bed = Bed::new("sw", "delete");
    let charon = bed.charon(&[Conn::to_vmsecd(PSK)]);
    let mut v = bed.vmsecd(&Mesh::two_hosts(PSK));
    let (st, sa) = wait_up(&mut v, &charon, Duration::from_secs(20));
    let old_ike = peer(&st, PEER).ike.clone().expect("IKE SA");
    let old_child = peer(&st, PEER).children[0].clone();
    assert!(traffic::ping_until_ok(
        &bed.avm,
        BVM,
        Duration::from_secs(5)
    ));

    // charon deletes: vmsecd drops the IKE SA and its Child SA at once.
    let out = charon.terminate_ike(&sa.name);
    assert!(out.contains("terminate completed successfully"), "{out}");
    let st = v.wait_status("the old SAs gone", Duration::from_secs(5), |s| {
        let p = peer(s, PEER);
        p.ike.as_ref().is_none_or(|i| i.spi_i != old_ike.spi_i)
            && p.children.iter().all(|c| c.spi_in != old_child.spi_in)
    });
    eprintln!("[delete] after terminate: {:?}", peer(&st, PEER).state);
    let log = v.log();
    assert!(
        log.contains("IKE SA down: deleted by the peer")
            && log.contains(&format!("spi_in=\"{}\"", old_child.spi_in))
            && log.contains("Child SA deleted: deleted by the peer"),
        "vmsecd's log does not show the peer's delete\n{}",
        v.diagnostics()
    );

    // vmsecd wants its tunnel: it initiates again after its back-off, with new SPIs.
    let (st, _) = wait_up(&mut v, &charon, Duration::from_secs(15));
    let new_ike = peer(&st, PEER).ike.clone().expect("IKE SA");
    assert_ne!(new_ike.spi_i, old_ike.spi_i, "a new IKE SA");
    assert!(new_ike.initiator);
    assert!(traffic::ping_until_ok(
        &bed.avm,
        BVM,
        Duration::from_secs(5)
    ));

    // vmsecd stops on SIGTERM: it deletes the SA in charon, removes its routes and TUN, exits 0.
    let status = v
        .terminate(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("vmsecd did not exit on SIGTERM\n{}", v.diagnostics()));
    assert!(
        status.success(),
        "vmsecd exited {status}\n{}",
        v.diagnostics()
    );
    let sas = charon.wait_sas("no SA left", Duration::from_secs(5), |s| s.is_empty());
    assert!(sas.is_empty());
    charon.wait_log("received DELETE for IKE_SA", Duration::from_secs(1));
    let log = v.log();
    assert!(
        log.contains("IKE SA deleted") && log.contains("vmsecd stopped"),
        "{log}"
    );
    let links = bed.a.ip(&["-o", "link", "show"]);
    assert!(!links.contains("vmsec0"), "the TUN is gone: {links}");
    let routes = bed.a.ip(&["route", "show"]);
    assert!(
        !routes.contains("198.19.2.0/24"),
        "the route is gone: {routes}"
    );
}

// ---- 4. failures ----

/// Runs `swanctl --initiate`, which must fail, and returns its output.
fn initiate_fails(c: &Charon, v: &Vmsecd) -> String {
    let out = c.initiate(CHILD, 15);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success(),
        "swanctl --initiate succeeded where it must not:\n{text}\n{}",
        both_logs(v, c)
    );
    text
}

/// Nothing is up on either side: vmsecd's peer is not established, and charon keeps no established IKE SA (a
/// side that refuses a Child SA in IKE_AUTH deletes the IKE SA rather than leave it to the other).
fn assert_nothing_up(v: &Vmsecd, c: &Charon) {
    let st = v.status().expect("status");
    assert_ne!(peer(&st, PEER).state, "established", "{st:#?}");
    // charon may process our delete before the IKE_AUTH response it follows and ignore it ("ignoring
    // INFORMATIONAL in IKE_SA state CONNECTING"): then it acts on the retransmission, 4 s later.
    c.wait_sas("no established IKE SA", Duration::from_secs(10), |sas| {
        sas.iter().all(|s| s.state != "ESTABLISHED")
    });
}

#[test]
fn failure_wrong_psk() {
    let mut bed = Bed::new("sw", "psk");
    let charon = bed.charon(&[Conn::to_vmsecd("a-different-psk-0123456789abcdef")]);
    let v = bed.vmsecd(&Mesh::two_hosts(PSK));
    // vmsecd initiates: charon's check of our AUTH fails, it answers AUTHENTICATION_FAILED.
    v.wait_log(
        "authentication failed: the peer refused our authentication (AUTHENTICATION_FAILED)",
        Duration::from_secs(10),
    );
    charon.wait_log("MAC mismatched", Duration::from_secs(2));
    charon.wait_log("N(AUTH_FAILED)", Duration::from_secs(2));
    // charon initiates: vmsecd's check of charon's AUTH fails, and it answers AUTHENTICATION_FAILED.
    let out = initiate_fails(&charon, &v);
    assert!(
        out.contains("received AUTHENTICATION_FAILED notify error"),
        "{out}\n{}",
        both_logs(&v, &charon)
    );
    v.wait_log(
        "authentication failed: AUTH from 198.18.0.2 does not verify: the PSKs differ",
        Duration::from_secs(2),
    );
    assert_nothing_up(&v, &charon);
    let log = v.log();
    assert!(!log.contains(PSK), "the PSK must never be logged");
}

#[test]
fn failure_proposal_mismatch() {
    let mut bed = Bed::new("sw", "noprop");
    let mut conn = Conn::to_vmsecd(PSK);
    conn.proposals = "aes128gcm16-prfsha256-x25519".into();
    conn.esp_proposals = "aes128gcm16".into();
    let charon = bed.charon(std::slice::from_ref(&conn));
    let mut mesh = Mesh::two_hosts(PSK);
    mesh.ike_proposals = vec!["aes256gcm16-prfsha384-ecp384".into()];
    mesh.esp_proposals = vec!["aes256gcm16".into()];
    let v = bed.vmsecd(&mesh);
    // vmsecd initiates: charon finds no IKE proposal in common and says so; both logs name the proposals.
    v.wait_log(
        "no proposal chosen: the peer accepted none of ours (aes256gcm16-prfsha384-ecp384)",
        Duration::from_secs(10),
    );
    charon.wait_log(
        "received proposals: IKE:AES_GCM_16_256/PRF_HMAC_SHA2_384/ECP_384",
        Duration::from_secs(2),
    );
    charon.wait_log("N(NO_PROP)", Duration::from_secs(2));
    // charon initiates: vmsecd answers NO_PROPOSAL_CHOSEN and names both sides' proposals.
    let out = initiate_fails(&charon, &v);
    assert!(
        out.contains("received NO_PROPOSAL_CHOSEN notify error"),
        "{out}"
    );
    v.wait_log(
        "no proposal chosen: ours aes256gcm16-prfsha384-ecp384, theirs aes128gcm16-prfsha256-x25519",
        Duration::from_secs(2),
    );
    assert_nothing_up(&v, &charon);

    // The IKE proposals match but the ESP ones do not: the Child SA is refused with NO_PROPOSAL_CHOSEN.
    conn.proposals = "aes256gcm16-prfsha384-ecp384".into();
    charon.reload(&[conn]);
    let out = initiate_fails(&charon, &v);
    assert!(out.contains("NO_PROPOSAL_CHOSEN"), "{out}");
    v.wait_log(
        "no proposal chosen: ours aes256gcm16, theirs aes128gcm16",
        Duration::from_secs(2),
    );
    assert_nothing_up(&v, &charon);
}

#[test]
fn failure_traffic_selectors_disjoint() {
    let mut bed = Bed::new("sw", "ts");
    let mut conn = Conn::to_vmsecd(PSK);
    // charon wants 198.19.3.0/24 behind vmsecd, which has only 198.19.1.0/24.
    conn.remote_ts = "198.19.3.0/24".into();
    let charon = bed.charon(&[conn]);
    let v = bed.vmsecd(&Mesh::two_hosts(PSK));
    // vmsecd initiates: charon has no child config for 198.19.1.0/24 === 198.19.2.0/24.
    v.wait_log(
        "traffic selectors unacceptable: peer refused ours",
        Duration::from_secs(10),
    );
    charon.wait_log("N(TS_UNACCEPT)", Duration::from_secs(2));
    // charon initiates: vmsecd cannot narrow 198.19.3.0/24 to anything of its own.
    let out = initiate_fails(&charon, &v);
    assert!(out.contains("TS_UNACCEPTABLE"), "{out}");
    v.wait_log(
        "traffic selectors unacceptable: peer proposed 198.19.2.0-198.19.2.255 === 198.19.3.0-198.19.3.255",
        Duration::from_secs(2),
    );
    assert_nothing_up(&v, &charon);
}

/// CPU time (user + system) a process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let get = |i: usize| {
        f.get(i - 3)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(14) + get(15)
}

#[test]
fn failure_peer_never_answers() {
    let mut bed = Bed::new("sw", "silent");
    // No charon on b: nothing answers IKE at 198.18.0.2.
    let cap = bed.capture();
    let v = bed.vmsecd(&Mesh::two_hosts(PSK));
    v.wait_log("initiating IKE SA", Duration::from_secs(5));
    let t0 = Instant::now();
    let cpu0 = cpu_ticks(v.pid());
    // The retransmission budget (strongSwan's: 4 s, x1.8, 6 sends, about 165 s), then a clear log line.
    v.wait_log(
        "IKE SA down: peer did not answer any retransmission: declared dead",
        Duration::from_secs(190),
    );
    let gave_up = t0.elapsed();
    // The daemon keeps wanting its tunnel: a new attempt after its back-off (2 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    while v.log().matches("initiating IKE SA").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "no new attempt after giving up\n{}",
            v.diagnostics()
        );
        sleep(Duration::from_millis(100));
    }
    let cpu = cpu_ticks(v.pid()) - cpu0;
    let cap = cap.stop();
    let sends: Vec<f64> = cap
        .ipv4
        .iter()
        .filter(|f| f.src == A && f.dst == B && f.dport == Some(500))
        .map(|f| f.t)
        .collect();
    let others = cap
        .ipv4
        .iter()
        .filter(|f| f.src == A && f.dst == B && f.dport != Some(500))
        .count();
    eprintln!(
        "[silent] gave up after {:.1} s; sends at {sends:.1?}; vmsecd used {cpu} CPU ticks",
        gave_up.as_secs_f64()
    );
    assert_eq!(others, 0, "vmsecd sent only IKE to port 500");
    assert!(
        (150.0..185.0).contains(&gave_up.as_secs_f64()),
        "gave up after {gave_up:?}, expected the ~165 s budget"
    );
    // Six sends of the first request (one and five retransmissions), each wait longer than the one before,
    // then the new attempt's first send.
    assert_eq!(sends.len(), 7, "datagrams at {sends:?}");
    let gaps: Vec<f64> = sends.windows(2).map(|w| w[1] - w[0]).take(5).collect();
    let want = [4.0, 7.2, 12.96, 23.33, 41.99];
    for (g, w) in gaps.iter().zip(want) {
        assert!(
            (g - w).abs() < 1.0,
            "retransmission gaps {gaps:.2?}, expected {want:?}"
        );
    }
    // No busy loop: 3 datagrams in the first 15 s, and next to no CPU over the whole wait.
    assert_eq!(sends.iter().filter(|t| **t - sends[0] < 15.0).count(), 3);
    assert!(cpu < 300, "vmsecd used {cpu} CPU ticks while waiting");
}

// ---- 5. rekeying under load ----

#[test]
fn rekey_child_sa_under_load() {
    let mut bed = Bed::new("sw", "rekey");
    let mut conn = Conn::to_vmsecd(PSK);
    // Child SAs rekeyed every ~20 s from both sides (charon at 18-20 s, its rand_time being a tenth; vmsecd at
    // 16.7-20 s, a third of the margin): whichever fires first rekeys, so both initiate some, and rekeys may meet
    // (TEMPORARY_FAILURE, RFC 7296 2.25). The IKE SA: vmsecd at 19.7-23 s, charon at 22.5-25 s and once more by
    // `swanctl --rekey` at 33 s. The windows overlap only a little: with vmsecd's at 21.7-25 s, as before,
    // charon won both natural rounds of the 60 s about one run in six and the test failed without a fault.
    conn.child_rekey_time = "20s".into();
    conn.ike_rekey_time = "25s".into();
    let charon = bed.charon(&[conn]);
    let mut mesh = Mesh::two_hosts(PSK);
    mesh.child_lifetime = Some("30s".into());
    mesh.ike_lifetime = Some("33s".into());
    mesh.rekey_margin = Some("10s".into());
    let mut v = bed.vmsecd(&mesh);
    let (st, sa) = wait_up(&mut v, &charon, Duration::from_secs(20));
    check_agree(
        &st,
        &sa,
        true,
        "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",
        "AES_GCM_16_128",
    );
    assert!(traffic::ping_until_ok(
        &bed.avm,
        BVM,
        Duration::from_secs(5)
    ));
    let first_child = peer(&st, PEER).children[0].spi_in.clone();
    let first_ike = peer(&st, PEER).ike.clone().expect("IKE SA");

    // A steady ping alongside the transfer: each lost reply is a packet lost to a rekey.
    let pinger = {
        let avm = bed.avm.clone();
        std::thread::spawn(move || traffic::ping(&avm, BVM, 580, "0.1"))
    };
    let secs = 60;
    let (_, rcvbuf_before) = traffic::udp_errors(&bed.b);
    let r = std::thread::scope(|s| {
        // Whatever the timers do, charon rekeys the IKE SA at least once on its own initiative, mid-transfer.
        s.spawn(|| {
            sleep(Duration::from_secs(33));
            let out = charon.swanctl(&["--rekey", "--ike", "hA"]);
            eprintln!(
                "[rekey] swanctl --rekey --ike hA: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        });
        traffic::iperf3(&bed.bvm, &bed.avm, BVM, secs, false, Some("20M"))
    });
    let (sent, got) = pinger.join().expect("pinger");
    // charon's kernel-libipsec reads ESP from one UDP socket on one thread; under load its receive buffer
    // overflows now and then (RcvbufErrors on its host), and each such drop is a TCP retransmission that has
    // nothing to do with rekeying.
    let charon_drops = traffic::udp_errors(&bed.b).1 - rcvbuf_before;
    eprintln!("[rekey] datagrams dropped by charon's full UDP receive buffer: {charon_drops}");
    let log = v.log();
    let rekeys = log.matches("Child SA rekeyed").count();
    let by_vmsecd = log
        .lines()
        .filter(|l| l.contains("Child SA rekeyed") && l.contains("initiator=true"))
        .count();
    eprintln!("[rekey] {by_vmsecd} of {rekeys} rekeys initiated by vmsecd, the others by charon");
    let ike_rekeys = log.matches("IKE SA rekeyed").count();
    let ike_by_vmsecd = log
        .lines()
        .filter(|l| l.contains("IKE SA rekeyed") && l.contains("initiator=true"))
        .count();
    eprintln!(
        "[rekey] {ike_by_vmsecd} of {ike_rekeys} IKE SA rekeys initiated by vmsecd, the others by charon; \
         TEMPORARY_FAILURE answers in charon's log: {}",
        charon.log().matches("TEMPORARY_FAILURE").count()
    );
    let st = v.status().expect("status");
    eprintln!(
        "[rekey] {rekeys} Child SA rekeys; TCP {:.1} MB in {secs} s, retransmits {:?} (per second {:?}), per second \
         (MB) {:?}; ping {got}/{sent}",
        r.bytes_received as f64 / 1e6,
        r.retransmits,
        r.retransmits_per_interval,
        r.per_interval
            .iter()
            .map(|b| (*b as f64 / 1e5).round() / 10.0)
            .collect::<Vec<_>>()
    );
    assert!(
        rekeys >= 2,
        "expected several Child SA rekeys in {secs} s, saw {rekeys}\n{}",
        both_logs(&v, &charon)
    );
    assert!(
        ike_rekeys >= 2 && ike_by_vmsecd >= 1 && ike_rekeys > ike_by_vmsecd,
        "expected IKE SA rekeys initiated by both sides in {secs} s: {ike_by_vmsecd} of {ike_rekeys} by vmsecd\n{}",
        both_logs(&v, &charon)
    );
    assert!(
        !log.contains("IKE SA down"),
        "the IKE SA never went down\n{}",
        both_logs(&v, &charon)
    );
    assert_eq!(
        log.matches("IKE SA established").count(),
        1,
        "rekeys, not re-establishment\n{}",
        both_logs(&v, &charon)
    );
    assert!(
        r.per_interval.len() >= secs as usize - 1,
        "iperf3 reported {} intervals",
        r.per_interval.len()
    );
    let stalled: Vec<usize> = r
        .per_interval
        .iter()
        .enumerate()
        .filter(|(_, b)| **b < 100_000)
        .map(|(i, _)| i)
        .collect();
    assert!(
        stalled.is_empty(),
        "the transfer stalled in seconds {stalled:?}: {:?}\n{}",
        r.per_interval,
        both_logs(&v, &charon)
    );
    assert!(
        got + 2 >= sent,
        "{} of {sent} pings lost across the rekeys\n{}",
        sent - got,
        both_logs(&v, &charon)
    );
    let p = peer(&st, PEER);
    assert!(
        p.children.iter().all(|c| c.drops.auth == 0),
        "no ESP failed authentication: {p:#?}"
    );
    // Every TCP retransmission but a few (slow start; the same ~15 show in a run without any rekey) is a
    // datagram charon's host dropped for a full receive buffer: none is left to blame on the rekeys.
    if let Some(retrans) = r.retransmits {
        assert!(
            retrans <= charon_drops + 50,
            "{retrans} TCP retransmissions, only {charon_drops} explained by charon's receive buffer"
        );
    }
    assert_eq!(
        st.drops.no_sa_in, 0,
        "vmsecd received ESP for an SPI it did not know (lost to a rekey): {st:#?}"
    );
    // Afterwards both sides agree on one current IKE SA (a rekeyed one: whoever initiated its rekey is its
    // initiator) and one current Child SA, neither the first one.
    let (st, sa) = wait_up(&mut v, &charon, Duration::from_secs(10));
    let vmsecd_initiated = peer(&st, PEER).ike.as_ref().expect("IKE SA").initiator;
    check_agree(
        &st,
        &sa,
        vmsecd_initiated,
        "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",
        "AES_GCM_16_128",
    );
    assert_ne!(peer(&st, PEER).children[0].spi_in, first_child);
    assert_ne!(
        peer(&st, PEER).ike.as_ref().expect("IKE SA").spi_i,
        first_ike.spi_i,
        "the IKE SA was rekeyed"
    );
    // No IKE SA is left over (one being replaced at this very moment gets a few seconds to go).
    let deadline = Instant::now() + Duration::from_secs(5);
    while charon.list_sas().len() > 1 && Instant::now() < deadline {
        sleep(Duration::from_millis(100));
    }
    assert_eq!(
        charon.list_sas().len(),
        1,
        "charon holds no leftover IKE SA: {:#?}",
        charon.list_sas()
    );
}

/// RFC 7296 2.8.2 against charon: both sides rekey the IKE SA at once and each answers the other's request.
///
/// Without a delay on the path the two requests cannot be made to cross by timing alone, so hA's firewall holds
/// vmsecd's CREATE_CHILD_SA messages back: vmsecd's own IKE rekey request is dropped (it stays outstanding),
/// `swanctl --rekey` makes charon send its request, vmsecd answers it (the answer is dropped too, so charon's
/// request stays outstanding). Released, the two retransmissions cross: each side now holds both exchanges, and
/// both must keep the same survivor (the lowest of the four nonces marks the redundant SA), with the Child SA
/// and traffic intact and no IKE SA left over.
#[test]
fn rekey_ike_sa_collision() {
    let mut bed = Bed::new("sw", "rekeycoll");
    traffic::require_tool("nft", &["--version"], "nftables");
    let mut conn = Conn::to_vmsecd(PSK);
    conn.child_rekey_time = "1h".into();
    conn.ike_rekey_time = "1h".into();
    let charon = bed.charon(&[conn]);
    let mut mesh = Mesh::two_hosts(PSK);
    // vmsecd rekeys the IKE SA after 8-10 s; nothing else rekeys during the test.
    mesh.ike_lifetime = Some("16s".into());
    mesh.rekey_margin = Some("6s".into());
    mesh.dpd_delay = Some("0".into());
    let mut v = bed.vmsecd(&mesh);
    let (st, _) = wait_up(&mut v, &charon, Duration::from_secs(20));
    let first_ike = peer(&st, PEER).ike.clone().expect("IKE SA");
    assert!(traffic::ping_until_ok(
        &bed.avm,
        BVM,
        Duration::from_secs(5)
    ));

    // Hold back vmsecd's CREATE_CHILD_SA messages (UDP 4500, non-ESP marker, exchange type 36 at byte 18 of the
    // IKE header), counting them.
    let rules = "table ip vtcoll {\n  chain out {\n    type filter hook output priority 0; policy accept;\n    \
                 udp dport 4500 @th,64,32 0 @th,240,8 36 counter drop\n  }\n}\n";
    let file = bed.dir("nft").join("hold-ccsa.nft");
    std::fs::write(&file, rules).expect("nft rules");
    bed.a.run("nft", &["-f", file.to_str().expect("UTF-8")]);
    let held = |bed: &Bed| -> u64 {
        let out = bed.a.run("nft", &["list", "table", "ip", "vtcoll"]);
        out.split("packets ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while held(&bed) == 0 {
        assert!(
            Instant::now() < deadline,
            "vmsecd did not start its IKE rekey\n{}",
            both_logs(&v, &charon)
        );
        sleep(Duration::from_millis(20));
    }
    // vmsecd's request is outstanding (its retransmission is due 4 s after it): now charon's.
    std::thread::scope(|s| {
        s.spawn(|| {
            let out = charon.swanctl(&["--rekey", "--ike", "hA"]);
            eprintln!(
                "[rekeycoll] swanctl --rekey --ike hA: {}",
                String::from_utf8_lossy(&out.stdout).trim()
            );
        });
        // Until vmsecd has answered charon's request (held back as well), then release both.
        let deadline = Instant::now() + Duration::from_secs(3);
        while held(&bed) < 2 && Instant::now() < deadline {
            sleep(Duration::from_millis(20));
        }
        let n = held(&bed);
        bed.a.run("nft", &["delete", "table", "ip", "vtcoll"]);
        eprintln!("[rekeycoll] {n} CREATE_CHILD_SA messages held back, released");
    });
    // Both sides settle on one IKE SA with the Child SA.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (st, sa) = loop {
        let (st, sa) = wait_up(&mut v, &charon, Duration::from_secs(20));
        if st
            .peers
            .iter()
            .all(|p| p.ike.as_ref().is_some_and(|i| i.spi_i != first_ike.spi_i))
            && charon.list_sas().len() == 1
        {
            break (st, sa);
        }
        assert!(
            Instant::now() < deadline,
            "no single rekeyed IKE SA on both sides: {:#?}\n{}",
            charon.list_sas(),
            both_logs(&v, &charon)
        );
        sleep(Duration::from_millis(200));
    };
    let vmsecd_initiated = peer(&st, PEER).ike.as_ref().expect("IKE SA").initiator;
    check_agree(
        &st,
        &sa,
        vmsecd_initiated,
        "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",
        "AES_GCM_16_128",
    );
    let log = v.log();
    let clog = charon.log();
    eprintln!(
        "[rekeycoll] vmsecd: {} IKE SA rekeyed ({}); charon: {} collision lines; survivor initiated by {}",
        log.matches("IKE SA rekeyed").count(),
        log.lines()
            .filter(|l| l.contains("IKE SA rekeyed"))
            .map(|l| if l.contains("initiator=true") { "ours" } else { "charon's" })
            .collect::<Vec<_>>()
            .join(", "),
        clog.lines().filter(|l| l.contains("collision")).count(),
        if vmsecd_initiated { "vmsecd" } else { "charon" }
    );
    assert!(
        clog.contains("collision"),
        "charon saw the collision too\n{}",
        both_logs(&v, &charon)
    );
    assert_eq!(
        log.matches("IKE SA rekeyed").count(),
        1,
        "one rekey for vmsecd: the redundant SA is not reported\n{}",
        both_logs(&v, &charon)
    );
    assert!(!log.contains("IKE SA down"), "{}", both_logs(&v, &charon));
    assert!(traffic::ping_until_ok(
        &bed.avm,
        BVM,
        Duration::from_secs(5)
    ));
    let (sent, got) = traffic::ping(&bed.avm, BVM, 20, "0.05");
    assert_eq!(
        sent, got,
        "traffic flows over the Child SA the survivor holds"
    );
}
