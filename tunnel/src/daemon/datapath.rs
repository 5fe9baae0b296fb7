//! The ESP datapath of the daemon: which SA a packet from the TUN takes (longest prefix match on its
//! destination), and which inner packets an inbound SA may deliver (its traffic selectors).
//!
//! Everything works in place on the caller's buffers; this module owns SA state and counters, never a socket.
//!
//! The outbound half ([`Outbound`]: routes, lanes, outbound SAs) is shared with the transmit workers, one per
//! TUN queue: they take its read lock once per batch of TUN reads, and the daemon's task takes the write lock
//! only when IKE changes an SA. The SAs themselves hand out sequence numbers atomically, in blocks per burst
//! (`esp::OutboundSa::reserve`). The inbound half (SAD, policy) stays with the daemon's task, which receives all
//! ESP: one peer's ESP arrives on one UDP flow, which the kernel cannot spread over sockets.

// Parses bytes from the wire or from a VM: nothing here may panic on them (issue 12 review item 6).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use esp::{InboundSa, OutboundSa, PacketBuf, SaParams, Sad};
use ike::event::ChildSaInfo;
use ike::message::TrafficSelector;

use crate::prefix::Prefix;

/// How an ESP packet leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wire {
    /// In UDP from our port 4500 to this address.
    Udp(SocketAddr),
    /// As IP protocol 50 to this address.
    Raw(IpAddr),
}

/// Most traffic selectors a Child SA may have on each side to be installed. The lane lookup of every outbound
/// packet and the policy check of every inbound one scan them; vmsecd itself offers one per subnet, and the
/// `ike` crate refuses more than a few per side, so this only bounds what a future change or a hostile peer
/// could make every packet cost.
pub(crate) const MAX_SELECTORS: usize = 64;

/// Why a Child SA could not be installed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InstallError {
    /// The negotiated keys do not fit the transform (a bug in the IKE layer).
    #[error(transparent)]
    Key(#[from] esp::BadKeyLength),
    /// The peer negotiated more selectors than the datapath checks per packet.
    #[error(
        "it has {local} local and {remote} remote traffic selectors, more than the {max} per side vmsecd \
         installs (the peer's configuration offers too many subnets; merge them into fewer, larger ones)"
    )]
    TooManySelectors {
        local: usize,
        remote: usize,
        max: usize,
    },
}

/// Most replaced outbound SAs a lane keeps in `standby`. One is the usual case (the pair a rekey replaced, until
/// its delete arrives); a few cover rekeys that overlap with a duplicate IKE SA.
const STANDBY_MAX: usize = 4;

struct PeerPath {
    name: String,
    /// One lane per distinct pair of selectors the peer's Child SAs cover: usually one lane for all subnets; a
    /// peer that insists on one Child SA per subnet pair has one lane for each.
    lanes: Vec<Lane>,
}

impl PeerPath {
    fn new(name: &str) -> PeerPath {
        PeerPath {
            name: name.to_owned(),
            lanes: Vec::new(),
        }
    }

    /// The lane of Child SAs with exactly these selectors, made if there is none yet.
    fn lane(&mut self, c: &ChildSaInfo) -> &mut Lane {
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
struct Lane {
    ts_local: Vec<TrafficSelector>,
    ts_remote: Vec<TrafficSelector>,
    out: Option<OutboundSa>,
    wire: Option<Wire>,
    /// The outbound SA of a Child SA we answered a rekey for, waiting until the peer can receive on it:
    /// (the new pair's inbound SPI, the SA, where it sends).
    pending: Option<(u32, OutboundSa, Wire)>,
    /// Outbound SAs of other Child SA pairs still installed (the one a rekey replaced until its delete, or the
    /// pair of a duplicate IKE SA): if the current one is removed first, the newest of these carries on, so
    /// traffic never stops while the peer still has a pair up.
    standby: Vec<(OutboundSa, Wire)>,
}

impl Lane {
    fn is_empty(&self) -> bool {
        self.out.is_none() && self.pending.is_none() && self.standby.is_empty()
    }
}

struct InPolicy {
    peer: Option<usize>,
    ts_local: Vec<TrafficSelector>,
    ts_remote: Vec<TrafficSelector>,
}

/// Counters that belong to no SA.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub(crate) struct Drops {
    /// Outbound packets to a peer that has no Child SA yet.
    pub(crate) no_sa_out: u64,
    /// Outbound packets whose destination no peer owns.
    pub(crate) no_route: u64,
    /// Inbound packets whose inner addresses lie outside their SA's selectors.
    pub(crate) policy: u64,
    /// Outbound packets that could not be encapsulated (sequence numbers exhausted).
    pub(crate) encap_failed: u64,
}

/// The outbound half of the datapath: routes, and per peer the lanes of outbound SAs. Shared (see the module
/// comment); its drop counters are atomic because every worker counts into them.
pub(crate) struct Outbound {
    peers: Vec<PeerPath>,
    /// (prefix, peer index), longest prefix first.
    routes: Vec<(Prefix, usize)>,
    no_sa_out: AtomicU64,
    no_route: AtomicU64,
    encap_failed: AtomicU64,
}

impl Outbound {
    /// The outbound SA and destination an inner packet takes; counts the drop if it has none.
    pub(crate) fn route(&self, pkt: &[u8]) -> Option<(&OutboundSa, Wire)> {
        let Some(dst) = dst_addr(pkt) else {
            self.no_route.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let Some(&(_, i)) = self.routes.iter().find(|(p, _)| p.contains(dst)) else {
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

    fn peer_index(&self, name: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.name == name)
    }
}

/// The outbound half, as the daemon's task and the transmit workers hold it.
#[derive(Clone)]
pub(crate) struct SharedOutbound(Arc<RwLock<Outbound>>);

impl SharedOutbound {
    /// For one batch of TUN reads. A worker that panicked cannot leave the table half-changed (workers only
    /// read it), so a poisoned lock is used as it is.
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, Outbound> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Outbound> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}

/// SAs, routes and policy.
pub(crate) struct Datapath {
    out: SharedOutbound,
    sad: Sad,
    policy: HashMap<u32, InPolicy>,
    /// (peer, inbound SPI) of Child SAs whose outbound SA waits for the peer's first packet on the new pair
    /// ([`Datapath::install_deferred`]): the inbound path checks this short list, so that it takes the write
    /// lock of the outbound half only to promote one.
    waiting: Vec<(usize, u32)>,
    /// Inbound SPIs of rekeyed Child SAs and when they stop accepting packets ([`REKEYED_INBOUND_LINGER`]),
    /// oldest first. As long as rekeys are rate-limited (the `ike` crate), so is this list.
    retiring: VecDeque<(Instant, u32)>,
    policy_drops: u64,
}

/// How long the inbound SA of a rekeyed Child SA keeps accepting packets after its delete exchange: ESP the
/// peer sent on it just before it switched to the new SA may still be in flight, and reordered behind the
/// DELETE (strongSwan keeps a rekeyed inbound SA for its `delete_rekeyed_delay`, 5 s by default).
pub(crate) const REKEYED_INBOUND_LINGER: Duration = Duration::from_secs(5);

fn dst_addr(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(pkt.get(16..20)?).ok()?)),
        6 => Some(IpAddr::from(<[u8; 16]>::try_from(pkt.get(24..40)?).ok()?)),
        _ => None,
    }
}

fn src_addr(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        // An IPv4 header is at least 20 bytes: one shorter has no destination either.
        4 if pkt.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(pkt.get(12..16)?).ok()?)),
        6 => Some(IpAddr::from(<[u8; 16]>::try_from(pkt.get(8..24)?).ok()?)),
        _ => None,
    }
}

impl Datapath {
    /// A datapath for these peers (name and their subnets), with no SA yet.
    pub(crate) fn new(peers: &[(String, Vec<Prefix>)]) -> Datapath {
        Datapath {
            out: SharedOutbound(Arc::new(RwLock::new(Outbound {
                peers: peers.iter().map(|(name, _)| PeerPath::new(name)).collect(),
                routes: Self::prefix_table(peers),
                no_sa_out: AtomicU64::new(0),
                no_route: AtomicU64::new(0),
                encap_failed: AtomicU64::new(0),
            }))),
            sad: Sad::new(),
            policy: HashMap::new(),
            waiting: Vec::new(),
            retiring: VecDeque::new(),
            policy_drops: 0,
        }
    }

    /// The outbound half, for the transmit path and its workers.
    pub(crate) fn outbound(&self) -> &SharedOutbound {
        &self.out
    }

    /// Installs a new Child SA (first or rekeyed): inbound SA and policy, and the outbound SA replaces the
    /// previous one at once (make before break: the old inbound SA stays until it is deleted).
    pub(crate) fn install(
        &mut self,
        c: &ChildSaInfo,
        replay_window: u32,
    ) -> Result<(), InstallError> {
        let (out, wire) = self.install_inbound(c, replay_window)?;
        let mut o = self.out.write();
        if let Some(p) = o
            .peer_index(&c.peer)
            .and_then(|i| o.peers.get_mut(i))
            .map(|p| p.lane(c))
        {
            if let (Some(old), Some(old_wire)) = (p.out.take(), p.wire) {
                p.standby.push((old, old_wire));
                // A peer that rekeys without deleting the old pairs (or a stream of duplicate IKE SAs) must not
                // grow this list: the oldest pairs are the least likely to be still up at the peer.
                if p.standby.len() > STANDBY_MAX {
                    let excess = p.standby.len() - STANDBY_MAX;
                    p.standby.drain(..excess);
                }
            }
            if let Some((spi, _, _)) = p.pending.take() {
                self.waiting.retain(|w| w.1 != spi);
            }
            p.out = Some(out);
            p.wire = Some(wire);
        }
        Ok(())
    }

    /// Installs a Child SA that replaces another in a rekey the peer initiated: the inbound SA at once, the
    /// outbound SA only when the peer is known to receive on the new pair, that is when the first packet
    /// arrives on the new inbound SA or the old outbound SA is removed (the peer deleted the old pair). Until
    /// then the old outbound SA carries the traffic, so nothing is sent that the peer would drop.
    pub(crate) fn install_deferred(
        &mut self,
        c: &ChildSaInfo,
        replay_window: u32,
    ) -> Result<(), InstallError> {
        let (out, wire) = self.install_inbound(c, replay_window)?;
        let mut o = self.out.write();
        let i = o.peer_index(&c.peer);
        if let Some((i, p)) = i.and_then(|i| Some((i, o.peers.get_mut(i)?.lane(c)))) {
            if p.out.is_some() {
                if let Some((old, _, _)) = p.pending.replace((c.spi_in, out, wire)) {
                    self.waiting.retain(|w| w.1 != old);
                }
                self.waiting.push((i, c.spi_in));
            } else {
                p.out = Some(out);
                p.wire = Some(wire);
            }
        }
        Ok(())
    }

    fn install_inbound(
        &mut self,
        c: &ChildSaInfo,
        replay_window: u32,
    ) -> Result<(OutboundSa, Wire), InstallError> {
        if c.ts_local.len() > MAX_SELECTORS || c.ts_remote.len() > MAX_SELECTORS {
            return Err(InstallError::TooManySelectors {
                local: c.ts_local.len(),
                remote: c.ts_remote.len(),
                max: MAX_SELECTORS,
            });
        }
        let mut p_in = SaParams::new(c.spi_in, c.transform, c.esn);
        p_in.replay_window = replay_window;
        let out = OutboundSa::new(SaParams::new(c.spi_out, c.transform, c.esn), &c.keys_out)?;
        self.sad.insert(InboundSa::new(p_in, &c.keys_in)?);
        let peer = self.out.read().peer_index(&c.peer);
        self.policy.insert(
            c.spi_in,
            InPolicy {
                peer,
                ts_local: c.ts_local.clone(),
                ts_remote: c.ts_remote.clone(),
            },
        );
        let wire = if c.udp_encap {
            Wire::Udp(c.remote)
        } else {
            Wire::Raw(c.remote.ip())
        };
        Ok((out, wire))
    }

    /// Makes a waiting outbound SA the current one if it belongs to the pair whose inbound SPI is `spi_in`.
    fn promote(&mut self, peer: usize, spi_in: u32) {
        if !self.waiting.contains(&(peer, spi_in)) {
            return;
        }
        self.waiting.retain(|w| *w != (peer, spi_in));
        let mut o = self.out.write();
        for p in o.peers.get_mut(peer).into_iter().flat_map(|p| &mut p.lanes) {
            if p.pending.as_ref().is_some_and(|(s, _, _)| *s == spi_in) {
                if let Some((_, out, wire)) = p.pending.take() {
                    p.out = Some(out);
                    p.wire = Some(wire);
                }
            }
        }
    }

    /// Removes a Child SA pair: the inbound SA, and the outbound SA if it is still the current one (a waiting
    /// successor then takes its place).
    pub(crate) fn remove(&mut self, peer: &str, spi_in: u32, spi_out: u32) {
        self.sad.remove(spi_in);
        self.policy.remove(&spi_in);
        self.remove_outbound(peer, spi_in, spi_out);
    }

    /// A rekeyed Child SA's delete: its outbound SA goes now, its inbound SA keeps accepting what the peer sent
    /// before it switched for [`REKEYED_INBOUND_LINGER`] ([`Datapath::expire_retired`] removes it).
    pub(crate) fn retire(&mut self, now: Instant, peer: &str, spi_in: u32, spi_out: u32) {
        self.remove_outbound(peer, spi_in, spi_out);
        self.retiring
            .push_back((now + REKEYED_INBOUND_LINGER, spi_in));
    }

    /// Removes the inbound SAs of rekeyed Child SAs whose linger time has passed.
    pub(crate) fn expire_retired(&mut self, now: Instant) {
        while let Some(&(until, spi_in)) = self.retiring.front() {
            if until > now {
                break;
            }
            self.retiring.pop_front();
            self.sad.remove(spi_in);
            self.policy.remove(&spi_in);
        }
    }

    /// When [`Datapath::expire_retired`] next has work.
    pub(crate) fn next_retirement(&self) -> Option<Instant> {
        self.retiring.front().map(|&(until, _)| until)
    }

    /// The outbound half of [`Datapath::remove`]: the outbound SA if it is still the current one (a waiting
    /// successor then takes its place), or wherever it waits.
    fn remove_outbound(&mut self, peer: &str, spi_in: u32, spi_out: u32) {
        let mut o = self.out.write();
        let i = o.peer_index(peer);
        if let Some((i, path)) = i.and_then(|i| Some((i, o.peers.get_mut(i)?))) {
            for p in &mut path.lanes {
                if p.pending.as_ref().is_some_and(|(s, _, _)| *s == spi_in) {
                    p.pending = None;
                }
                p.standby.retain(|(o, _)| o.params().spi != spi_out);
                if p.out.as_ref().is_some_and(|o| o.params().spi == spi_out) {
                    p.out = None;
                    p.wire = None;
                    if let Some((_, out, wire)) = p.pending.take() {
                        p.out = Some(out);
                        p.wire = Some(wire);
                    } else if let Some((out, wire)) = p.standby.pop() {
                        p.out = Some(out);
                        p.wire = Some(wire);
                    }
                }
            }
            path.lanes.retain(|l| !l.is_empty());
            let lanes = &path.lanes;
            self.waiting.retain(|&(w_peer, w_spi)| {
                w_peer != i
                    || lanes
                        .iter()
                        .any(|l| l.pending.as_ref().is_some_and(|(s, _, _)| *s == w_spi))
            });
        }
    }

    /// Replaces the peer list (reload): peers that stay keep their SAs; a removed peer's outbound SAs go at
    /// once, its inbound SAs stay until the delete of its Child SAs removes them (packets in flight are still
    /// delivered, within the SA's selectors); the prefix table is rebuilt.
    pub(crate) fn set_peers(&mut self, peers: &[(String, Vec<Prefix>)]) {
        let mut o = self.out.write();
        let mut old: Vec<PeerPath> = std::mem::take(&mut o.peers);
        let old_names: Vec<String> = old.iter().map(|p| p.name.clone()).collect();
        o.peers = peers
            .iter()
            .map(|(name, _)| match old.iter().position(|p| &p.name == name) {
                Some(i) => old.swap_remove(i),
                None => PeerPath::new(name),
            })
            .collect();
        let new_index = |i: usize| {
            old_names
                .get(i)
                .and_then(|n| o.peers.iter().position(|p| &p.name == n))
        };
        for pol in self.policy.values_mut() {
            pol.peer = pol.peer.and_then(new_index);
        }
        self.waiting = self
            .waiting
            .iter()
            .filter_map(|&(i, spi)| Some((new_index(i)?, spi)))
            .collect();
        o.routes = Self::prefix_table(peers);
    }

    fn prefix_table(peers: &[(String, Vec<Prefix>)]) -> Vec<(Prefix, usize)> {
        let mut routes: Vec<(Prefix, usize)> = peers
            .iter()
            .enumerate()
            .flat_map(|(i, (_, nets))| nets.iter().map(move |p| (*p, i)))
            .collect();
        routes.sort_by_key(|(p, _)| std::cmp::Reverse(p.prefix_len()));
        routes
    }

    /// Decapsulates an ESP packet in place; true if `pkt` now holds an inner packet to deliver.
    pub(crate) fn decap(&mut self, pkt: &mut PacketBuf<'_>) -> bool {
        let Ok((spi, _)) = self.sad.decap(pkt) else {
            return false;
        };
        let inner = pkt.as_slice();
        let ok = match (self.policy.get(&spi), src_addr(inner), dst_addr(inner)) {
            // RFC 4301 5.2: after decryption, the inner packet must match the SA's selectors; otherwise a peer
            // could inject traffic for subnets that belong to another host.
            (Some(p), Some(s), Some(d)) => {
                p.ts_remote.iter().any(|t| t.contains_addr(s))
                    && p.ts_local.iter().any(|t| t.contains_addr(d))
            }
            _ => false,
        };
        if !ok {
            self.policy_drops += 1;
        } else if !self.waiting.is_empty() {
            if let Some(peer) = self.policy.get(&spi).and_then(|p| p.peer) {
                // The peer sends on this pair, so it can receive on it too.
                self.promote(peer, spi);
            }
        }
        ok
    }

    /// Counters of an inbound SA.
    pub(crate) fn inbound_counters(&self, spi_in: u32) -> Option<esp::Counters> {
        self.sad.get(spi_in).map(|sa| *sa.counters())
    }

    /// Counters of the current outbound SA towards a peer, if its SPI is `spi_out`.
    pub(crate) fn outbound_counters(&self, peer: &str, spi_out: u32) -> Option<esp::Counters> {
        let o = self.out.read();
        let p = o.peers.get(o.peer_index(peer)?)?;
        p.lanes
            .iter()
            .flat_map(|l| {
                l.out
                    .iter()
                    .chain(l.pending.as_ref().map(|(_, o, _)| o))
                    .chain(l.standby.iter().map(|(o, _)| o))
            })
            .find(|o| o.params().spi == spi_out)
            .map(|o| o.counters())
    }

    /// Outbound SPIs of the current outbound SAs that have used seven eighths of their sequence numbers
    /// (`esp::OutboundSa::running_low`): their Child SAs must be rekeyed before they run out.
    pub(crate) fn running_low(&self) -> Vec<u32> {
        let o = self.out.read();
        o.peers
            .iter()
            .flat_map(|p| &p.lanes)
            .filter_map(|l| l.out.as_ref())
            .filter(|sa| sa.running_low())
            .map(|sa| sa.params().spi)
            .collect()
    }

    /// The counters that belong to no SA.
    pub(crate) fn drops(&self) -> Drops {
        let o = self.out.read();
        Drops {
            no_sa_out: o.no_sa_out.load(Ordering::Relaxed),
            no_route: o.no_route.load(Ordering::Relaxed),
            policy: self.policy_drops,
            encap_failed: o.encap_failed.load(Ordering::Relaxed),
        }
    }

    /// Inbound packets whose SPI was unknown.
    pub(crate) fn no_sa_in(&self) -> u64 {
        self.sad.no_sa_drops()
    }

    /// Encapsulates one inner packet in place as the transmit path does; returns where to send it.
    #[cfg(test)]
    fn encap(&mut self, pkt: &mut PacketBuf<'_>) -> Option<Wire> {
        let o = self.out.read();
        let (sa, wire) = o.route(pkt.as_slice())?;
        sa.encap(pkt).ok().map(|()| wire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use esp::{KeyMaterial, Transform, HEADROOM, TAILROOM};

    const T: Transform = Transform::AesGcm128;

    fn child(spi_in: u32, spi_out: u32, key: u8) -> ChildSaInfo {
        let keys = |k: u8| KeyMaterial::new(T, &vec![k; T.keymat_len()]).unwrap();
        let ts = |s: &str| s.parse::<Prefix>().unwrap().selector();
        ChildSaInfo {
            peer: "p".into(),
            ike_spi: 1,
            spi_in,
            spi_out,
            transform: T,
            esn: false,
            keys_in: keys(key),
            keys_out: keys(key + 1),
            ts_local: vec![ts("198.19.1.0/24")],
            ts_remote: vec![ts("198.19.2.0/24")],
            remote: "198.18.0.2:4500".parse().unwrap(),
            udp_encap: true,
            pfs_group: None,
        }
    }

    fn inner(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 253, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p
    }

    /// Encapsulates a packet from our VM to the peer's; returns the SPI it went out on.
    fn send(d: &mut Datapath) -> u32 {
        let pkt = inner([198, 19, 1, 10], [198, 19, 2, 10]);
        let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        let mut b = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + pkt.len());
        assert!(d.encap(&mut b).is_some());
        u32::from_be_bytes(b.as_slice()[..4].try_into().unwrap())
    }

    /// What the peer sends on the pair `c` (its outbound is our inbound).
    fn receive(d: &mut Datapath, c: &ChildSaInfo) -> bool {
        let out = OutboundSa::new(SaParams::new(c.spi_in, T, false), &c.keys_in).unwrap();
        let pkt = inner([198, 19, 2, 10], [198, 19, 1, 10]);
        let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        let mut b = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + pkt.len());
        out.encap(&mut b).unwrap();
        let mut esp = b.as_slice().to_vec();
        d.decap(&mut PacketBuf::full(&mut esp))
    }

    fn datapath() -> Datapath {
        Datapath::new(&[("p".into(), vec!["198.19.2.0/24".parse().unwrap()])])
    }

    #[test]
    fn rekey_we_initiated_switches_outbound_at_once() {
        let mut d = datapath();
        let (old, new) = (child(0x1001, 0x2001, 1), child(0x1002, 0x2002, 3));
        d.install(&old, 64).unwrap();
        assert_eq!(send(&mut d), 0x2001);
        d.install(&new, 64).unwrap();
        assert_eq!(send(&mut d), 0x2002);
        // The old inbound SA still works until the old pair is deleted.
        assert!(receive(&mut d, &old));
        d.remove("p", 0x1001, 0x2001);
        assert_eq!(send(&mut d), 0x2002);
        assert!(receive(&mut d, &new));
    }

    #[test]
    fn rekey_we_answered_waits_for_traffic_on_the_new_pair() {
        let mut d = datapath();
        let (old, new) = (child(0x1001, 0x2001, 1), child(0x1002, 0x2002, 3));
        d.install(&old, 64).unwrap();
        d.install_deferred(&new, 64).unwrap();
        // The peer may not have installed its new inbound SA yet: keep the old outbound one.
        assert_eq!(send(&mut d), 0x2001);
        assert!(receive(&mut d, &old));
        assert_eq!(send(&mut d), 0x2001);
        // The peer sends on the new pair: it has it, switch.
        assert!(receive(&mut d, &new));
        assert_eq!(send(&mut d), 0x2002);
        assert!(d.outbound_counters("p", 0x2002).is_some());
    }

    #[test]
    fn rekey_we_answered_switches_when_the_peer_deletes_the_old_pair() {
        let mut d = datapath();
        let (old, new) = (child(0x1001, 0x2001, 1), child(0x1002, 0x2002, 3));
        d.install(&old, 64).unwrap();
        d.install_deferred(&new, 64).unwrap();
        assert!(
            d.outbound_counters("p", 0x2002).is_some(),
            "status sees the waiting SA"
        );
        d.remove("p", 0x1001, 0x2001);
        assert_eq!(send(&mut d), 0x2002);
        // A first Child SA is never held back.
        let mut d = datapath();
        d.install_deferred(&new, 64).unwrap();
        assert_eq!(send(&mut d), 0x2002);
    }

    /// Two IKE SAs with the peer for a moment (both ends initiated at once): the pair installed last is deleted
    /// with its duplicate IKE SA, and the other pair, still up on both ends, carries the traffic again.
    #[test]
    fn removing_the_current_pair_falls_back_to_another_live_pair() {
        let mut d = datapath();
        let (kept, dup) = (child(0x1001, 0x2001, 1), child(0x1002, 0x2002, 3));
        d.install(&kept, 64).unwrap();
        d.install(&dup, 64).unwrap();
        assert_eq!(send(&mut d), 0x2002);
        d.remove("p", 0x1002, 0x2002);
        assert_eq!(send(&mut d), 0x2001);
        assert!(receive(&mut d, &kept));
        assert!(!receive(&mut d, &dup));
        d.remove("p", 0x1001, 0x2001);
        let pkt = inner([198, 19, 1, 10], [198, 19, 2, 10]);
        let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        let mut b = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + pkt.len());
        assert!(d.encap(&mut b).is_none(), "no pair left: nothing is sent");
    }

    /// An outbound SA that has used seven eighths of its sequence numbers is reported, and no other; its
    /// successor after the rekey is not.
    #[test]
    fn outbound_sa_running_low_is_reported() {
        let mut d = datapath();
        let (old, new) = (child(0x1001, 0x2001, 1), child(0x1002, 0x2002, 3));
        d.install(&old, 64).unwrap();
        send(&mut d);
        assert!(d.running_low().is_empty());
        {
            let o = d.out.read();
            let pkt = inner([198, 19, 1, 10], [198, 19, 2, 10]);
            let (sa, _) = o.route(&pkt).unwrap();
            // Use up seven eighths of the 32-bit space without sending (a reserved block left unused).
            let max = u64::from(u32::MAX);
            drop(sa.reserve(max - max / 8).unwrap());
        }
        assert_eq!(d.running_low(), vec![0x2001]);
        assert_eq!(send(&mut d), 0x2001, "it still sends");
        d.install(&new, 64).unwrap();
        assert!(d.running_low().is_empty(), "the rekeyed pair starts afresh");
    }

    /// A peer that rekeys again and again without ever deleting the old pairs: the replaced outbound SAs kept
    /// for fallback stay bounded (the oldest go), and the newest of them still takes over when the current
    /// one is removed.
    #[test]
    fn replaced_outbound_sas_are_trimmed() {
        let mut d = datapath();
        for k in 0..50u32 {
            d.install(&child(0x1000 + k, 0x2000 + k, (k % 100) as u8 * 2), 64)
                .unwrap();
        }
        assert_eq!(send(&mut d), 0x2000 + 49);
        let kept: Vec<u32> = d.out.read().peers[0].lanes[0]
            .standby
            .iter()
            .map(|(o, _)| o.params().spi)
            .collect();
        assert_eq!(kept, [0x2000 + 45, 0x2000 + 46, 0x2000 + 47, 0x2000 + 48]);
        d.remove("p", 0x1000 + 49, 0x2000 + 49);
        assert_eq!(
            send(&mut d),
            0x2000 + 48,
            "the newest replaced pair carries on"
        );
    }

    /// A rekeyed pair's delete: what the peer sent on the old pair before it switched, delivered after the
    /// DELETE (reordering on the path), is still accepted for REKEYED_INBOUND_LINGER, and only then refused;
    /// outbound traffic leaves the old pair at once.
    #[test]
    fn rekeyed_inbound_sa_lingers_then_goes() {
        let mut d = datapath();
        let old = child(0x1000, 0x2000, 2);
        let new = child(0x1001, 0x2001, 4);
        d.install(&old, 64).unwrap();
        d.install(&new, 64).unwrap();
        // The peer's outbound SA of the old pair, one sequence number after another (a fresh one per packet
        // would be a replay).
        let peer_old = OutboundSa::new(SaParams::new(old.spi_in, T, false), &old.keys_in).unwrap();
        let from_peer = |d: &mut Datapath| {
            let pkt = inner([198, 19, 2, 10], [198, 19, 1, 10]);
            let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
            buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
            let mut b = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + pkt.len());
            peer_old.encap(&mut b).unwrap();
            let mut esp = b.as_slice().to_vec();
            d.decap(&mut PacketBuf::full(&mut esp))
        };
        let t0 = Instant::now();
        d.retire(t0, "p", 0x1000, 0x2000);
        assert_eq!(send(&mut d), 0x2001, "outbound left the old pair at once");
        assert!(
            from_peer(&mut d),
            "in flight on the old pair: still delivered"
        );
        assert_eq!(d.next_retirement(), Some(t0 + REKEYED_INBOUND_LINGER));
        d.expire_retired(t0 + REKEYED_INBOUND_LINGER - Duration::from_millis(1));
        assert!(from_peer(&mut d), "delivered until the linger ends");
        d.expire_retired(t0 + REKEYED_INBOUND_LINGER);
        assert!(!from_peer(&mut d), "refused once it ended");
        assert!(receive(&mut d, &new));
        assert_eq!(d.next_retirement(), None);
    }

    /// Sends a packet between two addresses; returns the SPI it went out on, if any.
    fn send_between(d: &mut Datapath, src: [u8; 4], dst: [u8; 4]) -> Option<u32> {
        let pkt = inner(src, dst);
        let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        let mut b = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + pkt.len());
        d.encap(&mut b)?;
        Some(u32::from_be_bytes(b.as_slice()[..4].try_into().unwrap()))
    }

    /// A peer with two subnets that insists on one Child SA per subnet pair: each packet takes the Child SA
    /// whose selectors cover it, and a rekey of one pair leaves the other alone.
    #[test]
    fn one_child_sa_per_subnet_pair_each_carries_its_own_traffic() {
        let ts = |s: &str| s.parse::<Prefix>().unwrap().selector();
        let mut d = Datapath::new(&[(
            "p".into(),
            vec![
                "198.19.2.0/24".parse().unwrap(),
                "198.19.3.0/24".parse().unwrap(),
            ],
        )]);
        let two = child(0x1001, 0x2001, 1);
        let mut three = child(0x1002, 0x2002, 3);
        three.ts_remote = vec![ts("198.19.3.0/24")];
        d.install(&two, 64).unwrap();
        d.install(&three, 64).unwrap();
        let (vm, to2, to3) = ([198, 19, 1, 10], [198, 19, 2, 10], [198, 19, 3, 10]);
        assert_eq!(send_between(&mut d, vm, to2), Some(0x2001));
        assert_eq!(send_between(&mut d, vm, to3), Some(0x2002));
        // Rekey of the .3 pair: only its lane switches.
        let mut three_new = child(0x1003, 0x2003, 5);
        three_new.ts_remote = three.ts_remote.clone();
        d.install(&three_new, 64).unwrap();
        d.remove("p", 0x1002, 0x2002);
        assert_eq!(send_between(&mut d, vm, to3), Some(0x2003));
        assert_eq!(send_between(&mut d, vm, to2), Some(0x2001));
        assert_eq!(d.out.read().peers[0].lanes.len(), 2);
        // The .2 pair deleted: its lane goes; .2 traffic falls back to the lane that is left (the peer's policy
        // decides), .3 traffic is unchanged.
        d.remove("p", 0x1001, 0x2001);
        assert_eq!(d.out.read().peers[0].lanes.len(), 1);
        assert_eq!(send_between(&mut d, vm, to3), Some(0x2003));
    }

    /// Review item 4: a peer that negotiates thousands of traffic selectors must not make every packet scan
    /// them all (the lane lookup on send, the policy check on receive): a Child SA with more than
    /// MAX_SELECTORS on a side is not installed, and nothing of it is looked at per packet.
    #[test]
    fn a_child_sa_with_too_many_selectors_is_not_installed() {
        let mut d = datapath();
        let mut c = child(0x100, 0x200, 1);
        c.ts_remote = (0..4000u32)
            .map(|i| {
                let a = std::net::Ipv4Addr::from(
                    u32::from(std::net::Ipv4Addr::new(198, 19, 2, 0)) + i % 256,
                );
                Prefix::new(a.into(), 32).selector()
            })
            .collect();
        let e = d.install(&c, 64).unwrap_err().to_string();
        assert!(e.contains("4000") && e.contains("64"), "{e}");
        assert!(d.install_deferred(&c, 64).is_err());
        // Nothing of it is installed: no inbound SA, no lane.
        assert!(d.inbound_counters(0x100).is_none());
        assert!(d.outbound_counters("p", 0x200).is_none());
        // At the limit it is.
        c.ts_remote.truncate(MAX_SELECTORS);
        d.install(&c, 64).unwrap();
        assert!(d.outbound_counters("p", 0x200).is_some());
    }
}
