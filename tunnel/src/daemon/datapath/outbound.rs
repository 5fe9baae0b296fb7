//! The outbound half of the datapath: which SA a packet from the TUN takes. Routes (longest prefix first) map
//! an inner destination to a peer; per peer, lanes of outbound SAs, one lane per pair of traffic selectors, each
//! with its current SA, a rekeyed SA waiting for the peer, and replaced SAs kept for fallback.
//!
//! Shared with the transmit workers ([`SharedOutbound`]): they take its read lock once per batch of TUN reads,
//! and the daemon's task takes the write lock only when IKE changes an SA. The SAs hand out sequence numbers
//! atomically, in blocks per burst (`esp::OutboundSa::reserve`).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use esp::OutboundSa;
use ike::event::ChildSaInfo;
use ike::message::TrafficSelector;

use crate::wire::{dst_addr, src_addr};

/// How an ESP packet leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// In UDP from our port 4500 to this address.
    Udp(SocketAddr),
    /// As IP protocol 50 to this address.
    Raw(IpAddr),
}

/// Most replaced outbound SAs a lane keeps in `standby`. One is the usual case (the pair a rekey replaced, until
/// its delete arrives); a few cover rekeys that overlap with a duplicate IKE SA.
pub(super) const STANDBY_MAX: usize = 4;

pub(super) struct PeerPath {
    pub(super) name: String,
    /// One lane per distinct pair of selectors the peer's Child SAs cover: usually one lane for all subnets; a
    /// peer that insists on one Child SA per subnet pair has one lane for each.
    pub(super) lanes: Vec<Lane>,
}

impl PeerPath {
    pub(super) fn new(name: &str) -> PeerPath {
        PeerPath {
            name: name.to_owned(),
            lanes: Vec::new(),
        }
    }

    /// The lane of Child SAs with exactly these selectors, made if there is none yet.
    pub(super) fn lane(&mut self, c: &ChildSaInfo) -> &mut Lane {
        let i = self
            .lanes
            .iter()
            .position(|l| l.ts_local == c.ts_local && l.ts_remote == c.ts_remote)
            .unwrap_or(self.lanes.len());
        if i == self.lanes.len() {
            self.lanes.push(Lane {
                ts_local: c.ts_local.clone(),
                ts_remote: c.ts_remote.clone(),
                out: None,
                wire: None,
                pending: None,
                standby: Vec::new(),
            });
        }
        // In range: found, or just pushed. (`last_mut` would not need this proof but is no shorter.)
        #[allow(clippy::indexing_slicing)]
        &mut self.lanes[i]
    }

    /// The lane an inner packet from `src` to `dst` takes: the first whose selectors cover both, else (a peer
    /// that narrowed to less than its routes cover) the first that can send at all.
    fn lane_for(&self, src: Option<IpAddr>, dst: IpAddr) -> Option<&Lane> {
        let covers = |l: &Lane| {
            l.out.is_some()
                && l.ts_remote.iter().any(|t| t.contains_addr(dst))
                && src.is_none_or(|s| l.ts_local.iter().any(|t| t.contains_addr(s)))
        };
        self.lanes
            .iter()
            .find(|l| covers(l))
            .or_else(|| self.lanes.iter().find(|l| l.out.is_some()))
    }
}

/// The outbound side of the Child SAs with one pair of selectors.
pub(super) struct Lane {
    pub(super) ts_local: Vec<TrafficSelector>,
    pub(super) ts_remote: Vec<TrafficSelector>,
    pub(super) out: Option<OutboundSa>,
    pub(super) wire: Option<Wire>,
    /// The outbound SA of a Child SA we answered a rekey for, waiting until the peer can receive on it:
    /// (the new pair's inbound SPI, the SA, where it sends).
    pub(super) pending: Option<(u32, OutboundSa, Wire)>,
    /// Outbound SAs of other Child SA pairs still installed (the one a rekey replaced until its delete, or the
    /// pair of a duplicate IKE SA): if the current one is removed first, the newest of these carries on, so
    /// traffic never stops while the peer still has a pair up.
    pub(super) standby: Vec<(OutboundSa, Wire)>,
}

impl Lane {
    pub(super) fn is_empty(&self) -> bool {
        self.out.is_none() && self.pending.is_none() && self.standby.is_empty()
    }
}

/// The outbound half of the datapath: routes, and per peer the lanes of outbound SAs. Shared (see the module
/// comment); its drop counters are atomic because every worker counts into them.
pub(crate) struct Outbound {
    pub(super) peers: Vec<PeerPath>,
    /// Indexes into `peers` by name: IKE events name the peer, and one event must not compare every name.
    pub(super) by_name: std::collections::HashMap<String, usize>,
    /// Prefixes to peer indexes, longest match first.
    pub(super) routes: super::lpm::PrefixTable,
    pub(super) no_sa_out: AtomicU64,
    pub(super) no_route: AtomicU64,
    pub(super) encap_failed: AtomicU64,
}

impl Outbound {
    /// The outbound SA and destination an inner packet takes; counts the drop if it has none.
    pub(crate) fn route(&self, pkt: &[u8]) -> Option<(&OutboundSa, Wire)> {
        let Some(dst) = dst_addr(pkt) else {
            self.no_route.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let Some(i) = self.routes.lookup(dst) else {
            self.no_route.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        match self
            .peers
            .get(i)
            .and_then(|p| p.lane_for(src_addr(pkt), dst))
        {
            Some(Lane {
                out: Some(out),
                wire: Some(wire),
                ..
            }) => Some((out, *wire)),
            _ => {
                self.no_sa_out.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Counts `n` packets that had a route and an SA but could not be encapsulated.
    pub(crate) fn count_encap_failed(&self, n: u64) {
        self.encap_failed.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn peer_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Sets `peers` and rebuilds `by_name` (the first peer of a name wins, as a search from the front would).
    pub(super) fn set_paths(&mut self, peers: Vec<PeerPath>) {
        self.by_name.clear();
        for (i, p) in peers.iter().enumerate() {
            self.by_name.entry(p.name.clone()).or_insert(i);
        }
        self.peers = peers;
    }
}

/// The outbound half, as the daemon's task and the transmit workers hold it.
#[derive(Clone)]
pub(crate) struct SharedOutbound(pub(super) Arc<RwLock<Outbound>>);

impl SharedOutbound {
    /// For one batch of TUN reads. A worker that panicked cannot leave the table half-changed (workers only
    /// read it), so a poisoned lock is used as it is.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Outbound> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, Outbound> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}
