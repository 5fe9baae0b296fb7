//! When to (re)initiate an IKE SA towards each peer: the first attempt (the lower address at once, the other
//! after [`FOLLOWER_DELAY`]) and the back-off after failures, in one place.

use std::collections::HashMap;
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
        self.peers.insert(
            name.to_owned(),
            Initiation {
                next: Some(first),
                backoff: BACKOFF_FIRST,
            },
        );
    }

    /// A peer left the mesh: never initiated again.
    pub(super) fn remove(&mut self, name: &str) {
        self.peers.remove(name);
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
            i.next = Some(now + wait);
        }
    }

    /// True if an initiation towards the peer is pending.
    pub(super) fn is_scheduled(&self, name: &str) -> bool {
        self.peers.get(name).is_some_and(|i| i.next.is_some())
    }

    /// The earliest pending initiation.
    pub(super) fn next(&self) -> Option<Instant> {
        self.peers.values().filter_map(|i| i.next).min()
    }

    /// The peers whose initiation is due at `now`; each is taken off the schedule.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        for (name, i) in self.peers.iter_mut() {
            if i.next.is_some_and(|t| t <= now) {
                i.next = None;
                due.push(name.clone());
            }
        }
        due
    }
}
