//! When to (re)initiate an IKE SA towards each peer: the first attempt (the lower address at once, the other
//! after [`FOLLOWER_DELAY`]) and the back-off after failures, in one place.
//!
//! The daemon asks for the next initiation on every turn of its loop (after every batch of packets), so the
//! pending ones are also kept in time order: [`Schedule::next`] costs the same with 3 peers or 200.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::timing::{BACKOFF_FIRST, BACKOFF_MAX, FOLLOWER_DELAY};

/// When to (re)initiate towards one peer.
#[derive(Debug)]
struct Initiation {
    next: Option<Instant>,
    backoff: Duration,
}

/// The initiation schedule of every peer, by name.
#[derive(Debug, Default)]
pub(super) struct Schedule {
    peers: HashMap<String, Initiation>,
    /// The pending initiations of `peers` (those with `next` set), by time.
    pending: BTreeSet<(Instant, String)>,
}

impl Schedule {
    /// A peer joins (at start-up or by reload). The lower address initiates at once; the other side waits a
    /// little so that both do not start an IKE SA at the same moment, and initiates only if none came up.
    pub(super) fn add(&mut self, name: &str, local: IpAddr, remote: IpAddr, now: Instant) {
        let first = if local < remote {
            now
        } else {
            now + FOLLOWER_DELAY
        };
        self.remove(name);
        self.peers.insert(
            name.to_owned(),
            Initiation {
                next: Some(first),
                backoff: BACKOFF_FIRST,
            },
        );
        self.pending.insert((first, name.to_owned()));
    }

    /// A peer left the mesh: never initiated again.
    pub(super) fn remove(&mut self, name: &str) {
        if let Some(Initiation { next: Some(t), .. }) = self.peers.remove(name) {
            self.pending.remove(&(t, name.to_owned()));
        }
    }

    /// An IKE SA with the peer came up: the next failure waits the shortest time again.
    pub(super) fn up(&mut self, name: &str) {
        if let Some(i) = self.peers.get_mut(name) {
            i.backoff = BACKOFF_FIRST;
        }
    }

    /// The IKE SA with the peer went down or failed: try again after the back-off, which doubles.
    pub(super) fn failed(&mut self, name: &str, now: Instant) {
        if let Some(i) = self.peers.get_mut(name) {
            let wait = i.backoff;
            i.backoff = (i.backoff * 2).min(BACKOFF_MAX);
            if let Some(t) = i.next.replace(now + wait) {
                self.pending.remove(&(t, name.to_owned()));
            }
            self.pending.insert((now + wait, name.to_owned()));
        }
    }

    /// True if an initiation towards the peer is pending.
    pub(super) fn is_scheduled(&self, name: &str) -> bool {
        self.peers.get(name).is_some_and(|i| i.next.is_some())
    }

    /// The earliest pending initiation.
    pub(super) fn next(&self) -> Option<Instant> {
        self.pending.first().map(|(t, _)| *t)
    }

    /// The peers whose initiation is due at `now`; each is taken off the schedule.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        while self.pending.first().is_some_and(|(t, _)| *t <= now) {
            let Some((_, name)) = self.pending.pop_first() else {
                break;
            };
            if let Some(i) = self.peers.get_mut(&name) {
                i.next = None;
            }
            due.push(name);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The time-ordered set follows every change: `next` is the earliest pending initiation, `take_due` takes
    /// exactly the due ones, a failure reschedules, a removed peer is never due.
    #[test]
    fn pending_initiations_stay_in_time_order() {
        let t0 = Instant::now();
        let (lo, hi): (IpAddr, IpAddr) =
            ("198.18.0.1".parse().unwrap(), "198.18.0.2".parse().unwrap());
        let mut s = Schedule::default();
        s.add("a", lo, hi, t0); // at once
        s.add("b", hi, lo, t0); // after FOLLOWER_DELAY
        s.add("c", hi, lo, t0);
        assert_eq!(s.next(), Some(t0));
        assert_eq!(s.take_due(t0), vec!["a".to_owned()]);
        assert!(!s.is_scheduled("a"));
        assert_eq!(s.next(), Some(t0 + FOLLOWER_DELAY));
        s.remove("c");
        s.failed("a", t0);
        assert_eq!(s.next(), Some(t0 + BACKOFF_FIRST.min(FOLLOWER_DELAY)));
        // A second failure before the first retry moves it, doubled.
        s.failed("a", t0);
        let later = t0 + FOLLOWER_DELAY.max(BACKOFF_FIRST * 2);
        let mut due = s.take_due(later);
        due.sort();
        assert_eq!(due, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(s.next(), None);
        assert_eq!(s.pending.len(), 0);
        // Re-adding a peer replaces its entry.
        s.add("b", lo, hi, later);
        s.add("b", hi, lo, later);
        assert_eq!(s.pending.len(), 1);
        assert_eq!(s.next(), Some(later + FOLLOWER_DELAY));
    }
}
