//! Peers killed with SIGKILL and started again (issue 12, "Prove it: Restarts").
//!
//! - vmsecd peer: hosts a (198.18.0.1) and b (198.18.0.2) with a VM each, tunnel up; b's vmsecd is killed -9
//!   (its TUN and routes vanish, a still holds the old SAs) and started again. Measured: seconds from the
//!   restart to the first echo VM a -> VM b through the tunnel; bound [`RESTART_BOUND`].
//! - The same, with one spoofed IKE_SA_INIT from a's address reaching the restarted b as it starts listening
//!   (an attacker on the LAN, `ike-attack spoof-init`): the half-open SA it leaves must not stop b from
//!   initiating (on the base code it does, until a's dead-peer detection gives up on the old SA: minutes).
//! - Our own vmsecd (a, which initiates at once) killed -9 and started again while b holds the old SAs; bound
//!   [`RESTART_BOUND`].
//! - strongSwan peer: vmsecd on a, charon on b; charon killed -9 and started again (with `start_action =
//!   start`, as a gateway that wants its tunnel up does); bound [`RESTART_BOUND`].
//!
//! About 40 s.

use std::time::{Duration, Instant};

use vmsecd_e2e::bed::Bed;
use vmsecd_e2e::hostile::{attack, num, seconds_until_echo};
use vmsecd_e2e::netns::{Netns, NetnsGuard};
use vmsecd_e2e::strongswan::Conn;
use vmsecd_e2e::vmsecd::{is_up, Mesh, Vmsecd};

/// From a peer's restart to the first echo through the tunnel. The restarted vmsecd is the follower (higher
/// address): it waits 3 s before it initiates, and the exchange takes milliseconds.
const RESTART_BOUND: Duration = Duration::from_secs(10);
/// How long the tests wait for the echo before they report the failure (beyond the bound, to measure).
const WAIT: Duration = Duration::from_secs(25);

const ATTACK: &str = env!("CARGO_BIN_EXE_ike-attack");
const PSK: &str = "restarts-test-psk-0123456789abcdef";
const BVM: &str = "198.19.2.10";

/// a, b with VMs and the attacker x on one LAN; both daemons up with a working tunnel.
fn two_vmsecd(g: &mut NetnsGuard) -> (Netns, Netns, Netns, Netns, Mesh, Vmsecd, Vmsecd) {
    let hv = g.underlay_lan(&["a", "b", "x"]);
    let (a, b, x) = (hv[0].clone(), hv[1].clone(), hv[2].clone());
    // A hub, so that the attacker sees what b answers to a's address.
    let ul = g.namespaces()[0].clone();
    ul.ip(&["link", "set", "br0", "type", "bridge", "ageing_time", "0"]);
    x.ip(&["link", "set", "u0", "promisc", "on"]);
    let avm = g.vm_subnet(&a, 1, "avm");
    let _bvm = g.vm_subnet(&b, 2, "bvm");
    let mesh = Mesh::two_hosts(PSK);
    let root = g.dir();
    let mut va = Vmsecd::start(&a, &root.join("a"), &mesh, "hA");
    let mut vb = Vmsecd::start(&b, &root.join("b"), &mesh, "hB");
    va.wait_status("hA-hB up", Duration::from_secs(20), |s| is_up(s, "hB"));
    vb.wait_status("hB-hA up", Duration::from_secs(20), |s| is_up(s, "hA"));
    assert!(
        vmsecd_e2e::traffic::ping_until_ok(&avm, BVM, Duration::from_secs(5)),
        "no echo before the restart\n{}",
        va.diagnostics()
    );
    (a, b, x, avm, mesh, va, vb)
}

/// Kills b's vmsecd with SIGKILL, starts it again (optionally with a spoofed IKE_SA_INIT from a's address as
/// soon as it listens) and returns the seconds to the first echo, or the failure with both logs.
fn restart_b(spoof: bool, name: &str) {
    vmsecd_e2e::netns::require_root_and_ip();
    let mut g = NetnsGuard::new(name);
    let (_a, b, x, avm, mesh, va, vb) = two_vmsecd(&mut g);
    let dir = g.dir().join("b");
    drop(vb); // SIGKILL by PID, reaped
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let vb = Vmsecd::start(&b, &dir, &mesh, "hB");
    let mut spoofed = String::new();
    if spoof {
        vb.wait_log("vmsecd up", Duration::from_secs(5));
        let out = attack(ATTACK, &x, "198.18.0.2", "198.18.0.1", &["spoof-init"]);
        // The spoof must have reached b's IKE (answered with a KE or a COOKIE), or this test proves nothing.
        assert!(
            num(&out, "answer") + num(&out, "cookie") == 1,
            "the restarted b did not answer the spoofed IKE_SA_INIT: {out}\n{}",
            vb.diagnostics()
        );
        spoofed = format!(
            " (spoofed IKE_SA_INIT sent {:.2} s after the restart: {out})",
            t.elapsed().as_secs_f64()
        );
    }
    let echo = seconds_until_echo(&avm, BVM, t, WAIT);
    eprintln!("[{name}] first echo after the restart: {echo:?} s{spoofed}");
    assert!(
        echo.is_some_and(|s| s <= RESTART_BOUND.as_secs_f64()),
        "after b's vmsecd was killed -9 and restarted{spoofed}, the first echo came after {echo:?} s (bound \
         {RESTART_BOUND:?})\n--- a ---\n{}\n--- b ---\n{}",
        va.diagnostics(),
        vb.diagnostics()
    );
}

#[test]
fn vmsecd_peer_killed_and_restarted() {
    restart_b(false, "restart");
}

#[test]
fn vmsecd_peer_restarted_behind_a_spoofed_ike_sa_init() {
    restart_b(true, "restart-spoof");
}

/// Our own side: a (the lower address, which initiates at once) killed -9 and started again while b still holds
/// the old SAs.
#[test]
fn own_vmsecd_killed_and_restarted() {
    vmsecd_e2e::netns::require_root_and_ip();
    let mut g = NetnsGuard::new("restart-own");
    let (a, _b, _x, avm, mesh, va, vb) = two_vmsecd(&mut g);
    let dir = g.dir().join("a");
    drop(va); // SIGKILL by PID, reaped
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let va = Vmsecd::start(&a, &dir, &mesh, "hA");
    let echo = seconds_until_echo(&avm, BVM, t, WAIT);
    eprintln!("[restart-own] first echo after a's restart: {echo:?} s");
    assert!(
        echo.is_some_and(|s| s <= RESTART_BOUND.as_secs_f64()),
        "after a's own vmsecd was killed -9 and restarted, the first echo came after {echo:?} s (bound \
         {RESTART_BOUND:?})\n--- a ---\n{}\n--- b ---\n{}",
        va.diagnostics(),
        vb.diagnostics()
    );
}

#[test]
fn strongswan_peer_killed_and_restarted() {
    let mut bed = Bed::new("restart", "charon");
    let mut v = bed.vmsecd(&Mesh::two_hosts(PSK));
    let conn = Conn::to_vmsecd(PSK);
    let c = bed.charon(std::slice::from_ref(&conn));
    bed.connect(&mut v, &c, true, "net");
    drop(c); // SIGKILL by PID
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let mut again = conn.clone();
    again.start_action = "start".into();
    let dir = bed.dir("charon-again");
    let c = vmsecd_e2e::strongswan::Charon::start(&bed.b, &dir, &[again]);
    let echo = seconds_until_echo(&bed.avm, BVM, t, WAIT);
    eprintln!("[restart-charon] first echo after charon's restart: {echo:?} s");
    assert!(
        echo.is_some_and(|s| s <= RESTART_BOUND.as_secs_f64()),
        "after charon was killed -9 and restarted, the first echo came after {echo:?} s (bound {RESTART_BOUND:?})\n{}\n{}",
        v.diagnostics(),
        c.diagnostics()
    );
}
