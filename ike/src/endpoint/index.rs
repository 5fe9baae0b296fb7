//! What keeps the cost of one event independent of the number of IKE SAs (issue 14, "a hundred hypervisors"):
//! the SAs' next timers in deadline order, the SAs of each peer, and the SAs an event touched.
//!
//! Every call into an [`IkeSa`] that may change it (a datagram, a timeout, a delete, a rekey's hand-off) marks
//! its SPI dirty; [`Endpoint::collect`] then takes the transmits and events of the dirty SAs only, re-reads
//! their [`IkeSa::poll_timeout`], files them again in `timers` (or forgets the closed ones) and notes their
//! peers for the duplicate check. An SA nobody called cannot have changed: `IkeSa` has no clock of its own,
//! and its timers are a function of its state alone. So `poll_timeout` is the first entry of an ordered set,
//! `handle_timeout` visits the due SAs only, and every other lookup by peer goes through `by_peer`.
//!
//! [`Endpoint::check_index`] compares all of it with a full scan; the endpoint's unit tests call it after every
//! step of random event sequences.

use std::time::Instant;

use super::{Endpoint, DUPLICATE_GRACE};
use crate::sa::IkeSa;

impl Endpoint {
    /// Files an authenticated (or our own) SA under its SPI, dirty: its timer is read at the next collect.
    pub(super) fn insert_sa(&mut self, spi: u64, sa: IkeSa) {
        let name = sa.config().name.clone();
        if let Some(old) = self.sas.insert(spi, sa) {
            // Our SPIs are random and unique; kept consistent anyway.
            self.unindex(spi, &old.config().name);
        }
        self.by_peer.entry(name).or_default().push(spi);
        self.mark(spi);
    }

    /// The SA under `spi` was (or may have been) changed by the current event.
    pub(super) fn mark(&mut self, spi: u64) {
        self.dirty.push(spi);
        self.dirty_set.insert(spi);
    }

    /// Forgets a closed SA: its map entry, its timer and its place in its peer's list.
    pub(super) fn remove_sa(&mut self, spi: u64) {
        if let Some(sa) = self.sas.remove(&spi) {
            self.unindex(spi, &sa.config().name);
        }
    }

    /// Takes the SA out of the timers, its peer's list and the sets of SAs to check; if it counted towards its
    /// peer's duplicates, the peer is checked again.
    fn unindex(&mut self, spi: u64, peer: &str) {
        if let Some(t) = self.armed.remove(&spi) {
            self.timers.remove(&(t, spi));
        }
        if let Some(v) = self.by_peer.get_mut(peer) {
            v.retain(|k| *k != spi);
            if v.is_empty() {
                self.by_peer.remove(peer);
            }
        }
        self.contact_check.remove(&spi);
        if self.counted.remove(&spi) && !self.dup_check.contains(peer) {
            self.dup_check.insert(peer.to_owned());
        }
    }

    /// Files the SA's next timer again after something touched it.
    pub(super) fn rearm(&mut self, spi: u64) {
        let next = self.sas.get(&spi).and_then(IkeSa::poll_timeout);
        let old = self.armed.get(&spi).copied();
        if next == old {
            return;
        }
        if let Some(t) = old {
            self.timers.remove(&(t, spi));
            self.armed.remove(&spi);
        }
        if let Some(t) = next {
            self.timers.insert((t, spi));
            self.armed.insert(spi, t);
        }
    }

    /// Takes the SAs whose timer is due at `now` off the timer set (they are dirty, and filed again at the
    /// next collect).
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<u64> {
        let mut due = Vec::new();
        while let Some(&(t, spi)) = self.timers.first() {
            if t > now {
                break;
            }
            self.timers.pop_first();
            self.armed.remove(&spi);
            due.push(spi);
        }
        due
    }

    /// The SPIs of the SAs held with one peer (in any state; closed ones are gone after each collect).
    pub(super) fn peer_sas(&self, peer: &str) -> &[u64] {
        self.by_peer.get(peer).map_or(&[], Vec::as_slice)
    }

    /// How many IKE SAs (not half-open) are held with one peer.
    pub(super) fn peer_sa_count(&self, peer: &str) -> usize {
        self.peer_sas(peer).len()
    }

    /// Files the peer's duplicate state as noticed at `since`: it is resolved [`DUPLICATE_GRACE`] later.
    pub(super) fn note_duplicate(&mut self, peer: &str, now: Instant) -> Instant {
        if let Some(since) = self.duplicates.get(peer) {
            return *since;
        }
        self.duplicates.insert(peer.to_owned(), now);
        self.dup_due
            .insert((now + DUPLICATE_GRACE, peer.to_owned()));
        now
    }

    /// The peer has no duplicate IKE SAs any more (or they were just resolved).
    pub(super) fn clear_duplicate(&mut self, peer: &str) {
        if let Some(since) = self.duplicates.remove(peer) {
            self.dup_due
                .remove(&(since + DUPLICATE_GRACE, peer.to_owned()));
        }
    }

    /// The peers whose duplicate grace ended at `now` (each is cleared or resolved by `resolve_duplicates`).
    pub(super) fn due_duplicates(&self, now: Instant) -> Vec<String> {
        self.dup_due
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, p)| p.clone())
            .collect()
    }

    /// Panics unless the index agrees with a full scan of the SAs: every SA's timer filed at its
    /// [`IkeSa::poll_timeout`], nothing else filed, every SA in its peer's list, every peer with duplicate SAs
    /// noted or about to be checked, and [`Endpoint::poll_timeout`] equal to the minimum over everything.
    #[cfg(test)]
    pub(crate) fn check_index(&self) {
        use crate::sa::State;
        use std::collections::HashMap;
        assert!(self.dirty.is_empty(), "dirty SAs left after a call");
        assert!(self.dirty_set.is_empty(), "dirty set left after a call");
        assert_eq!(self.timers.len(), self.armed.len());
        assert!(self.counted.iter().all(|k| self.sas.contains_key(k)));
        for (spi, sa) in &self.sas {
            assert_ne!(sa.state(), State::Closed, "closed SA {spi:x} kept");
            let due = sa.poll_timeout();
            assert_eq!(
                self.armed.get(spi).copied(),
                due,
                "SA {spi:x}: filed timer is stale"
            );
            if let Some(t) = due {
                assert!(self.timers.contains(&(t, *spi)));
            }
            assert!(self.peer_sas(&sa.config().name).contains(spi));
            assert_eq!(
                self.counted.contains(spi),
                sa.state() == State::Established && !sa.is_superseded(),
                "SA {spi:x}: counted for duplicates or not, wrongly"
            );
        }
        for (t, spi) in &self.timers {
            assert_eq!(self.armed.get(spi), Some(t));
        }
        assert_eq!(
            self.by_peer.values().map(Vec::len).sum::<usize>(),
            self.sas.len()
        );
        let mut established: HashMap<&str, usize> = HashMap::new();
        for sa in self.sas.values() {
            if sa.state() == State::Established && !sa.is_superseded() {
                *established.entry(&sa.config().name).or_default() += 1;
            }
        }
        for (peer, n) in &established {
            if *n > 1 {
                assert!(
                    self.duplicates.contains_key(*peer) || self.dup_check.contains(*peer),
                    "duplicate SAs of {peer} unnoticed"
                );
            }
        }
        assert_eq!(self.duplicates.len(), self.dup_due.len());
        for (peer, since) in &self.duplicates {
            assert!(self
                .dup_due
                .contains(&(*since + DUPLICATE_GRACE, peer.clone())));
            if established.get(peer.as_str()).copied().unwrap_or(0) < 2 {
                assert!(
                    self.dup_check.contains(peer),
                    "stale duplicate of {peer} unchecked"
                );
            }
        }
        let scan = self
            .sas
            .values()
            .filter_map(IkeSa::poll_timeout)
            .chain(self.duplicates.values().map(|t| *t + DUPLICATE_GRACE))
            .chain(self.half_open_expiry.front().map(|(t, _)| *t))
            .min();
        assert_eq!(
            self.poll_timeout(),
            scan,
            "poll_timeout differs from a full scan"
        );
    }
}
