//! The timer contract of the IKE endpoint and its SAs: whatever `poll_timeout` reports, `handle_timeout` serves.
//! A deadline reported but not acted on would make the daemon's loop wake up at once, again and again (a spin);
//! one acted on but not reported would be missed until some datagram arrives. Both read one timer table in
//! `ike/src/sa/timers.rs`; these tests drive a pair through rekeys of both kinds, liveness checks, losses and
//! deletes, one timer at a time, and check after each that time moved on or something was sent.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Runs the pair for `span` of virtual time one timer at a time. After `handle_timeout(t)` on a side, that side's
/// next timer must be later than `t` unless it sent something: otherwise the loop calling it would spin.
/// Returns how many timers ran.
fn run_checked(p: &mut Pair, span: Duration) -> usize {
    let end = p.now + span;
    let mut steps = 0;
    p.drive();
    loop {
        let next = [p.a.poll_timeout(), p.b.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let Some(t) = next.filter(|&t| t <= end) else {
            break;
        };
        p.now = p.now.max(t);
        for side in ["a", "b"] {
            let ep = if side == "a" { &mut p.a } else { &mut p.b };
            if ep.poll_timeout().is_none_or(|t| t > p.now) {
                continue;
            }
            ep.handle_timeout(p.now);
            let sent: Vec<_> = std::iter::from_fn(|| ep.poll_transmit()).collect();
            let again = ep.poll_timeout();
            assert!(
                !sent.is_empty() || again.is_none_or(|t| t > p.now),
                "{side}: handle_timeout at {:?} left a timer due ({:?}) and sent nothing: the loop would spin",
                p.now - START.with(|s| *s),
                again.map(|t| t - START.with(|s| *s)),
            );
            for tr in sent {
                p.deliver(side == "a", tr);
            }
        }
        p.drive();
        steps += 1;
        assert!(steps < 100_000, "timers ran away");
    }
    p.now = p.now.max(end);
    steps
}

thread_local! {
    static START: Instant = Instant::now();
}

fn pair_with(ike_rekey: u64, child_rekey: u64) -> Pair {
    let (mut a, mut b) = configs();
    a.lifetimes.ike_rekey = Duration::from_secs(ike_rekey);
    a.lifetimes.child_rekey = Duration::from_secs(child_rekey);
    b.lifetimes.child_rekey = Duration::from_secs(child_rekey + 17);
    let mut p = Pair::new(a, b);
    p.now = START.with(|s| *s);
    p.connect();
    p
}

/// Rekeys of both kinds and liveness checks on a clean network: every timer reported is served.
#[test]
fn every_reported_timer_is_served_on_a_clean_network() {
    let mut p = pair_with(100, 130);
    let steps = run_checked(&mut p, Duration::from_secs(1000));
    assert!(steps > 20, "the scenario ran timers: {steps}");
    assert_eq!(p.a.status().len(), 1, "{:?}", p.ev_a);
}

/// The same with B's answers lost one in three (retransmissions, failed rekeys, dead peers, deletes of rekeyed
/// SAs that never come): still no timer reported and ignored.
#[test]
fn every_reported_timer_is_served_when_answers_are_lost() {
    let mut p = pair_with(60, 45);
    let mut n = 0u32;
    p.filter = Box::new(move |from_a, _| {
        if from_a {
            return true;
        }
        n += 1;
        !n.is_multiple_of(3)
    });
    let steps = run_checked(&mut p, Duration::from_secs(2000));
    assert!(steps > 50, "the scenario ran timers: {steps}");
}

/// A peer that stops answering altogether: retransmissions, then the IKE SA given up, and no timer left.
#[test]
fn a_silent_peer_ends_in_no_timer() {
    let mut p = pair_with(100, 130);
    p.filter = Box::new(|from_a, _| from_a);
    run_checked(&mut p, Duration::from_secs(1000));
    assert!(p.a.status().is_empty(), "A gave the silent peer up");
    assert_eq!(p.a.poll_timeout(), None, "and has no timer left");
}
