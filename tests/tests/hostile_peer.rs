//! A hostile peer on the underlay (issue 12, "Prove it: Hostile peer").
//!
//! Four hosts on one underlay LAN whose bridge forwards like a hub (`ageing_time 0`): vmsecd hosts `a`
//! (198.18.0.1) and `b` (198.18.0.2) with a VM each and an established tunnel, the attacker `x` (198.18.0.3), and
//! `c` (198.18.0.4), a third vmsecd host that is started only while a flood is running. The attacker
//! (`ike-attack`) sends with raw sockets, from b's own address and from 4,096 others (198.18.64.0/20), and sees
//! every frame on the LAN, as anyone on b's path or behind its NAT does. Against `a` it sends, in order:
//! every IKE payload type malformed (lengths, counts, nesting, truncations, bit flips; as IKE_SA_INIT and with
//! the live IKE SA's SPIs; to 500 and 4500); three real initiators from b's address whose IKE_AUTH claims an
//! identity holding a newline and a fake log line; ten real initiators from b's address (the `ike` crate's, with a
//! PSK that is not the mesh's) that complete IKE_SA_INIT and send every IKE_AUTH fragment but the last; 300 Delete bombs (SPI size 0, 65,535 SPIs, 176 per 1,436-byte
//! datagram) as IKE_SA_INIT and with the live SPIs; random datagrams to 500 and 4500; ESP with unknown SPIs (UDP
//! and raw); real ESP captured off the underlay, replayed and forged; an IKE_SA_INIT flood from b's address; the
//! same answering every COOKIE demand (half-open exhaustion); never-completed IKE fragment sets to the half-open
//! SAs and the live one; 300 IKE_SA_INIT requests with 100 unsupported transforms each (COOKIE demands answered);
//! then, while an IKE_SA_INIT flood from the 4,096 addresses and from b's runs, host c is
//! started; last, two Delete bombs of 65,507 bytes (only if the daemon survived the small ones within the bound:
//! on the base code one such datagram asks for ~12 GiB).
//!
//! Asserted, all collected and reported together:
//! - vmsecd on `a` is alive after every phase, and its peak RSS (VmHWM) stays under [`RSS_BOUND_MIB`];
//! - the established tunnel a-b carries pings every 50 ms throughout, losing at most [`LOSS_BOUND_PERCENT`];
//! - the IKE_SA_INIT flood from b's address meets COOKIE demands (at least 90% of its answers), and the
//!   COOKIE-answering flood creates at most [`HALF_OPEN_BOUND`] half-open SAs;
//! - every replayed and forged ESP packet is dropped and counted (replay or ICV), ESP with unknown SPIs is counted;
//! - no log line starts with the fake one an identity carried, no new line is longer than [`LOG_LINE_BOUND`];
//! - the refused proposals grow vmsecd's log by at most [`LOG_GROWTH_BOUND`], no line longer than
//!   [`LOG_LINE_BOUND`];
//! - c, started during the flood, has its tunnel with a within [`NEW_PEER_BOUND`] and its VM reaches a's.
//!
//! A second test: a mesh on MODP-3072 and 300 spoofed IKE_SA_INIT requests with a zero key share; vmsecd may
//! spend at most [`BAD_KE_CPU_BOUND_SECS`] of CPU on them (it must validate before exponentiating).
//!
//! About 50 s with issue 12's fixes, 110 s before them.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use vmsecd_e2e::hostile::{attack, cpu_seconds, num, proc_kib, seconds_until_echo, PingMeter};
use vmsecd_e2e::netns::{Netns, NetnsGuard};
use vmsecd_e2e::vmsecd::{is_up, peer, HostEntry, Mesh, Status, Vmsecd};

/// Peak RSS allowed for the attacked daemon. Idle it peaks at 7-8 MiB; one 1,436-byte Delete bomb takes the
/// base code to ~280 MiB.
const RSS_BOUND_MIB: u64 = 40;
/// Pings through the established tunnel that may be lost while the attack runs.
const LOSS_BOUND_PERCENT: f64 = 5.0;
/// Half-open SAs a COOKIE-answering flood of 500 requests from one peer's address may create.
const HALF_OPEN_BOUND: u64 = 64;
/// Time for a new peer to come up while the flood runs.
const NEW_PEER_BOUND: Duration = Duration::from_secs(30);
/// How much 300 refused proposals of 100 transforms each may grow the log, and how long a line may be.
const LOG_GROWTH_BOUND: usize = 64 * 1024;
const LOG_LINE_BOUND: usize = 1024;
/// How the fake log line `ike-attack id-inject` hides in an identity begins.
const FAKE_LOG_PREFIX: &str = "2026-01-01T00:00:00.000000Z";

const ATTACK: &str = env!("CARGO_BIN_EXE_ike-attack");
const PSK: &str = "hostile-peer-test-psk-0123456789";
const A: &str = "198.18.0.1";
const B: &str = "198.18.0.2";

fn host(name: &str, n: u8) -> HostEntry {
    HostEntry {
        name: name.into(),
        address: format!("198.18.0.{n}"),
        subnets: vec![format!("198.19.{n}.0/24")],
        port: None,
    }
}

/// Sum of a's drop counters for its Child SAs with `peer_name`: (replay, auth, malformed).
fn child_drops(s: &Status, peer_name: &str) -> (u64, u64, u64) {
    peer(s, peer_name)
        .children
        .iter()
        .fold((0, 0, 0), |acc, c| {
            (
                acc.0 + c.drops.replay,
                acc.1 + c.drops.auth,
                acc.2 + c.drops.malformed,
            )
        })
}

struct Checks {
    failures: Vec<String>,
}

impl Checks {
    fn check(&mut self, ok: bool, what: String) {
        eprintln!("[hostile] {} {what}", if ok { "ok  " } else { "FAIL" });
        if !ok {
            self.failures.push(what);
        }
    }
}

/// True (and recorded) if vmsecd on `a` still runs and answers `status`.
fn alive(v: &mut Vmsecd, checks: &mut Checks, after: &str) -> bool {
    let exited = v.try_wait();
    let status = v.status();
    let ok = exited.is_none() && status.is_ok();
    checks.check(
        ok,
        format!(
            "vmsecd alive after {after} (exit: {exited:?}, status: {})",
            status.err().unwrap_or_else(|| "answers".into())
        ),
    );
    ok
}

/// The tests of this file measure CPU time and loss: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn hostile_peer_cannot_exhaust_crash_stall_or_fool_vmsecd() {
    vmsecd_e2e::netns::require_root_and_ip();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let mut g = NetnsGuard::new("hostile");
    let hv = g.underlay_lan(&["a", "b", "x", "c"]);
    let (a, b, x, c) = (hv[0].clone(), hv[1].clone(), hv[2].clone(), hv[3].clone());
    let ul: Netns = g.namespaces()[0].clone();
    // A hub: every frame reaches every port, so the attacker is on the path between a and b.
    ul.ip(&["link", "set", "br0", "type", "bridge", "ageing_time", "0"]);
    x.ip(&["link", "set", "u0", "promisc", "on"]);
    // a can answer the attacker's other addresses (and does not drop them by reverse-path filtering).
    a.ip(&["route", "add", "198.18.64.0/20", "via", "198.18.0.3"]);
    let avm = g.vm_subnet(&a, 1, "avm");
    let _bvm = g.vm_subnet(&b, 2, "bvm");
    let cvm = g.vm_subnet(&c, 3, "cvm");
    let root = g.dir();
    let dir = |s: &str| -> PathBuf { root.join(s) };
    let mut mesh = Mesh::two_hosts(PSK);
    mesh.hosts = vec![host("hA", 1), host("hB", 2), host("hC", 4)];
    mesh.hosts[2].subnets = vec!["198.19.3.0/24".into()];

    let mut va = Vmsecd::start(&a, &dir("a"), &mesh, "hA");
    let mut vb = Vmsecd::start(&b, &dir("b"), &mesh, "hB");
    let up = Duration::from_secs(20);
    va.wait_status("hA-hB up", up, |s| is_up(s, "hB"));
    vb.wait_status("hB-hA up", up, |s| is_up(s, "hA"));
    assert!(
        vmsecd_e2e::traffic::ping_until_ok(&avm, "198.19.2.10", Duration::from_secs(5)),
        "no ping through the tunnel before the attack\n{}",
        va.diagnostics()
    );
    let pid = va.pid();
    let idle_hwm = proc_kib(pid, "VmHWM").expect("VmHWM");
    let st = va.status().expect("status");
    let ike = peer(&st, "hB").ike.clone().expect("IKE SA");
    let live = format!("{}:{}", ike.spi_i, ike.spi_r);
    eprintln!(
        "[hostile] tunnel up after {:.1} s; vmsecd peak RSS {} KiB; live IKE SA {live}",
        started.elapsed().as_secs_f64(),
        idle_hwm
    );

    let mut checks = Checks {
        failures: Vec::new(),
    };
    let meter = PingMeter::start(&avm, "198.19.2.10");
    let bound_kib = RSS_BOUND_MIB * 1024;
    // Whether every phase so far left the daemon alive within the bound; whether the bound was broken (reported
    // once: later phases cannot lower a peak).
    let hwm_ok = std::cell::Cell::new(true);
    let rss_over = std::cell::Cell::new(false);
    let phase = |va: &mut Vmsecd, checks: &mut Checks, name: &str, args: &[&str]| {
        let t = Instant::now();
        let mut all = vec![
            "--live-spis",
            live.as_str(),
            "--pps",
            "3000",
            "--max-secs",
            "40",
        ];
        all.extend_from_slice(args);
        let out = attack(ATTACK, &x, A, B, &all);
        let alive_now = alive(va, checks, name);
        let hwm = proc_kib(pid, "VmHWM").unwrap_or(0);
        eprintln!(
            "[hostile] {name}: {out} in {:.1} s; vmsecd peak RSS now {hwm} KiB",
            t.elapsed().as_secs_f64()
        );
        if hwm > bound_kib && !rss_over.replace(true) {
            checks.check(
                false,
                format!("peak RSS after {name}: {hwm} KiB <= {bound_kib} KiB"),
            );
        }
        hwm_ok.set(hwm_ok.get() && alive_now && hwm <= bound_kib);
        (out, alive_now)
    };

    // 1. Malformed payloads of every type; Delete bombs; garbage; ESP with unknown SPIs.
    phase(&mut va, &mut checks, "malformed", &["malformed"]);
    // Real initiators from b's address claiming an identity with a newline, a fake log line and 1,400 bytes.
    let log_before = va.log().len();
    let (out, _) = phase(&mut va, &mut checks, "identity injection", &["id-inject:3"]);
    let log = va.log();
    let grown = log.get(log_before..).unwrap_or("");
    let forged = grown
        .lines()
        .filter(|l| l.starts_with(FAKE_LOG_PREFIX))
        .count();
    let longest = grown.lines().map(str::len).max().unwrap_or(0);
    checks.check(
        num(&out, "sent.id-inject-answered") >= 1,
        format!(
            "identities with a fake log line reached IKE_AUTH and were refused: {} of 3",
            num(&out, "sent.id-inject-answered")
        ),
    );
    checks.check(
        forged == 0 && longest <= LOG_LINE_BOUND,
        format!(
            "no log line forged by a peer's identity: {forged} lines start with the fake prefix; longest new line \
             {longest} bytes (<= {LOG_LINE_BOUND})"
        ),
    );
    // Real initiators from b's address that stop short of the last IKE_AUTH fragment: authenticated fragments
    // held in reassembly.
    let (out, _) = phase(
        &mut va,
        &mut checks,
        "authenticated fragments",
        &["auth-fragments:10"],
    );
    checks.check(
        num(&out, "sent.auth-fragments-withheld") >= 1,
        format!(
            "authenticated IKE_AUTH fragment sets left incomplete: {} (at least one initiator got that far)",
            num(&out, "sent.auth-fragments-withheld")
        ),
    );
    phase(&mut va, &mut checks, "amplify", &["amplify:300"]);
    let before = va.status().ok();
    let (out, alive_now) = phase(
        &mut va,
        &mut checks,
        "garbage and unknown ESP",
        &["garbage:3000", "esp-unknown:3000"],
    );
    if let (Some(before), true) = (before, alive_now) {
        let after = va.status().expect("status");
        let counted = after.drops.no_sa_in - before.drops.no_sa_in;
        let sent = num(&out, "sent.esp-unknown");
        checks.check(
            counted * 2 >= sent,
            format!("ESP with unknown SPIs counted: {counted} of {sent} (at least half)"),
        );
    }

    // 2. Real ESP captured off the underlay while the VMs ping, replayed and forged.
    let before = va.status().ok();
    let (out, alive_now) = phase(&mut va, &mut checks, "ESP replay", &["esp-replay:3"]);
    if let (Some(before), true) = (before, alive_now) {
        let after = va.status().expect("status");
        let (r0, a0, m0) = child_drops(&before, "hB");
        let (r1, a1, m1) = child_drops(&after, "hB");
        let captured = num(&out, "sent.esp-captured");
        let replayed = num(&out, "sent.esp-replay");
        let forged = num(&out, "sent.esp-forged");
        let dropped = (r1 - r0) + (a1 - a0) + (m1 - m0);
        checks.check(
            captured >= 20 && dropped * 10 >= (replayed + forged) * 9,
            format!(
                "{captured} captured ESP packets, {replayed} replays and {forged} forgeries: {dropped} counted as \
                 dropped (replay {}, ICV {}, malformed {}; at least 90%)",
                r1 - r0,
                a1 - a0,
                m1 - m0
            ),
        );
    }

    // 3. IKE_SA_INIT floods from b's address: plain (cookies), then answering every COOKIE demand.
    let (out, _) = phase(&mut va, &mut checks, "IKE_SA_INIT flood", &["init:2000"]);
    let (cookie, answer) = (num(&out, "cookie"), num(&out, "answer"));
    checks.check(
        cookie > 0 && cookie * 10 >= (cookie + answer) * 9,
        format!("the IKE_SA_INIT flood met COOKIE demands: {cookie} cookies, {answer} real answers (>= 90% cookies)"),
    );
    let (out, _) = phase(
        &mut va,
        &mut checks,
        "half-open exhaustion and fragments",
        &["init-answer:500", "fragments:30"],
    );
    let answer = num(&out, "answer");
    checks.check(
        answer <= HALF_OPEN_BOUND,
        format!(
            "half-open SAs created by 500 COOKIE-answering requests from one address: {answer} <= {HALF_OPEN_BOUND}"
        ),
    );

    // Refused proposals from b's address (answering COOKIE demands, as an on-path attacker can): the log
    // must not grow with what the attacker sends.
    let log_before = va.log().len();
    let (out, _) = phase(
        &mut va,
        &mut checks,
        "refused proposals",
        &["proposals:300"],
    );
    let log = va.log();
    let grown = log.get(log_before..).unwrap_or("");
    let longest = grown.lines().map(str::len).max().unwrap_or(0);
    checks.check(
        grown.len() <= LOG_GROWTH_BOUND && longest <= LOG_LINE_BOUND,
        format!(
            "{} refused proposals of 100 transforms each grew the log by {} bytes in {} lines (<= {LOG_GROWTH_BOUND}), \
             longest line {longest} bytes (<= {LOG_LINE_BOUND})",
            num(&out, "sent.proposals"),
            grown.len(),
            grown.lines().count()
        ),
    );

    // 4. A new peer joins while the floods run (from 4,096 addresses and from b's).
    let flood = |args: &[&str], log: &str| {
        let f = std::fs::File::create(root.join(log)).expect("flood log");
        x.spawn(
            x.command(ATTACK)
                .args([
                    "--target",
                    A,
                    "--peer",
                    B,
                    "--max-secs",
                    "25",
                    "--seed",
                    "7",
                ])
                .args(args)
                .stdout(Stdio::from(f))
                .stderr(Stdio::null()),
        )
    };
    let mut f1 = flood(&["--pps", "2000", "range:40000"], "range.json");
    let mut f2 = flood(&["--pps", "1000", "init-answer:20000"], "init.json");
    std::thread::sleep(Duration::from_secs(2));
    let t = Instant::now();
    let mut vc = Vmsecd::start(&c, &dir("c"), &mesh, "hC");
    let deadline = Instant::now() + NEW_PEER_BOUND;
    let mut c_up = None;
    while Instant::now() < deadline && vc.try_wait().is_none() {
        if va.status().is_ok_and(|s| is_up(&s, "hC")) && vc.status().is_ok_and(|s| is_up(&s, "hA"))
        {
            c_up = Some(t.elapsed().as_secs_f64());
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let c_echo = c_up.and_then(|_| seconds_until_echo(&cvm, "198.19.1.10", t, NEW_PEER_BOUND));
    checks.check(
        c_up.is_some() && c_echo.is_some(),
        format!(
            "new peer hC started during the flood: tunnel up after {c_up:?} s, first echo after {c_echo:?} s \
             (bound {NEW_PEER_BOUND:?})"
        ),
    );
    let f1_done = f1.wait_timeout(Duration::from_secs(30)).is_some();
    let f2_done = f2.wait_timeout(Duration::from_secs(30)).is_some();
    let floods = format!(
        "{} {}",
        std::fs::read_to_string(root.join("range.json"))
            .unwrap_or_default()
            .trim(),
        std::fs::read_to_string(root.join("init.json"))
            .unwrap_or_default()
            .trim()
    );
    eprintln!("[hostile] floods during the join: {floods} (ended: {f1_done} {f2_done})");
    let alive_now = alive(&mut va, &mut checks, "the floods during the join");

    // 5. Full-size Delete bombs, only if the small ones were survived within the bound (else each one asks the
    // machine for ~12 GiB).
    if alive_now && hwm_ok.get() {
        phase(&mut va, &mut checks, "jumbo Delete bombs", &["jumbo:2"]);
    } else {
        checks.check(
            false,
            "jumbo Delete bombs not sent: the daemon already failed with small ones".into(),
        );
    }

    let (sent, got) = meter.stop();
    let loss = if sent == 0 {
        100.0
    } else {
        100.0 * f64::from(sent - got) / f64::from(sent)
    };
    checks.check(
        sent >= 200 && loss <= LOSS_BOUND_PERCENT,
        format!("the tunnel a-b carried pings through the attack: {got}/{sent} answered, {loss:.1}% lost (<= {LOSS_BOUND_PERCENT}%)"),
    );
    let hwm = proc_kib(pid, "VmHWM");
    eprintln!(
        "[hostile] vmsecd peak RSS: idle {idle_hwm} KiB, after the attack {hwm:?} KiB; {:.1} s in all",
        started.elapsed().as_secs_f64()
    );
    if !checks.failures.is_empty() {
        panic!(
            "{} of the hostile-peer checks failed:\n- {}\n{}\n{}",
            checks.failures.len(),
            checks.failures.join("\n- "),
            va.diagnostics(),
            vc.diagnostics()
        );
    }
    for v in [&mut va, &mut vb, &mut vc] {
        v.terminate(Duration::from_secs(10));
    }
}

/// CPU time vmsecd may spend on 300 spoofed IKE_SA_INIT requests whose MODP-3072 key share is invalid (zero).
/// One 3072-bit exponentiation costs about 18 ms: validating the peer's share first costs next to nothing.
const BAD_KE_CPU_BOUND_SECS: f64 = 1.0;

/// Issue 12 item 4 end to end: a mesh on MODP-3072, and 300 IKE_SA_INIT requests from b's address with a zero
/// key share (no COOKIE answered). vmsecd must refuse them before any exponentiation of its own.
#[test]
fn spoofed_invalid_modp_key_shares_cost_no_exponentiation() {
    vmsecd_e2e::netns::require_root_and_ip();
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut g = NetnsGuard::new("hostile-ke");
    let hv = g.underlay_lan(&["a", "b", "x"]);
    let (a, b, x) = (hv[0].clone(), hv[1].clone(), hv[2].clone());
    let ul: Netns = g.namespaces()[0].clone();
    ul.ip(&["link", "set", "br0", "type", "bridge", "ageing_time", "0"]);
    x.ip(&["link", "set", "u0", "promisc", "on"]);
    let avm = g.vm_subnet(&a, 1, "avm");
    let _bvm = g.vm_subnet(&b, 2, "bvm");
    let root = g.dir();
    let mut mesh = Mesh::two_hosts(PSK);
    mesh.ike_proposals = vec!["aes128gcm16-prfsha256-modp3072".into()];
    let mut va = Vmsecd::start(&a, &root.join("a"), &mesh, "hA");
    let _vb = Vmsecd::start(&b, &root.join("b"), &mesh, "hB");
    va.wait_status("hA-hB up", Duration::from_secs(20), |s| is_up(s, "hB"));
    assert!(vmsecd_e2e::traffic::ping_until_ok(
        &avm,
        "198.19.2.10",
        Duration::from_secs(5)
    ));
    let pid = va.pid();
    let before = cpu_seconds(pid).expect("vmsecd's /proc/PID/stat");
    let out = attack(
        ATTACK,
        &x,
        A,
        B,
        &["--pps", "300", "--max-secs", "10", "bad-ke:300"],
    );
    std::thread::sleep(Duration::from_secs(2));
    let after = cpu_seconds(pid);
    let alive = va.try_wait().is_none() && va.status().is_ok();
    let used = after.map(|t| t - before);
    eprintln!("[hostile-ke] {out}; vmsecd used {used:?} s of CPU on them; alive: {alive}");
    assert!(
        alive && used.is_some_and(|u| u <= BAD_KE_CPU_BOUND_SECS),
        "300 spoofed IKE_SA_INIT requests with a zero MODP-3072 key share cost vmsecd {used:?} s of CPU (bound \
         {BAD_KE_CPU_BOUND_SECS} s; alive: {alive}); answers: {out}\n{}",
        va.diagnostics()
    );
}
