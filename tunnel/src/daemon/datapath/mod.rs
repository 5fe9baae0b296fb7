//! The ESP datapath of the daemon: which SA a packet from the TUN takes (longest prefix match on its
//! destination), and which inner packets an inbound SA may deliver (its traffic selectors).
//!
//! The outbound half (`outbound.rs`) and the inbound half (`inbound.rs`) are kept here in step: a rekey
//! touches both, and an outbound SA may wait for the first packet on its new inbound SA.
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

use std::collections::HashMap;
use std::time::Instant;

use esp::{InboundSa, OutboundSa, PacketBuf, SaParams};
use ike::event::ChildSaInfo;

use crate::prefix::Prefix;

mod inbound;
mod lpm;
mod outbound;
#[cfg(test)]
mod tests;

#[cfg(test)]
use inbound::REKEYED_INBOUND_LINGER;
use inbound::{InPolicy, Inbound};
pub(crate) use outbound::{Outbound, SharedOutbound, Wire};
use outbound::{PeerPath, STANDBY_MAX};

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

/// SAs, routes and policy.
pub(crate) struct Datapath {
    out: SharedOutbound,
    inb: Inbound,
    /// (peer, inbound SPI) of Child SAs whose outbound SA waits for the peer's first packet on the new pair
    /// ([`Datapath::install_deferred`]): the inbound path checks this short list, so that it takes the write
    /// lock of the outbound half only to promote one. By inbound SPI (unique in the daemon): one lookup per
    /// packet, however many rekeys are under way.
    waiting: HashMap<u32, usize>,
}

impl Datapath {
    /// A datapath for these peers (name and their subnets), with no SA yet.
    pub(crate) fn new(peers: &[(String, Vec<Prefix>)]) -> Datapath {
        let d = Datapath {
            out: SharedOutbound(std::sync::Arc::new(std::sync::RwLock::new(Outbound {
                peers: Vec::new(),
                by_name: HashMap::new(),
                routes: Self::prefix_table(peers),
                no_sa_out: std::sync::atomic::AtomicU64::new(0),
                no_route: std::sync::atomic::AtomicU64::new(0),
                encap_failed: std::sync::atomic::AtomicU64::new(0),
            }))),
            inb: Inbound::new(),
            waiting: HashMap::new(),
        };
        d.out
            .write()
            .set_paths(peers.iter().map(|(name, _)| PeerPath::new(name)).collect());
        d
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
                self.waiting.remove(&spi);
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
                    self.waiting.remove(&old);
                }
                self.waiting.insert(c.spi_in, i);
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
        let sa = InboundSa::new(p_in, &c.keys_in)?;
        let peer = self.out.read().peer_index(&c.peer);
        self.inb.insert(
            c.spi_in,
            sa,
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
        if self.waiting.get(&spi_in) != Some(&peer) {
            return;
        }
        self.waiting.remove(&spi_in);
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
        self.inb.remove(spi_in);
        self.remove_outbound(peer, spi_in, spi_out);
    }

    /// A Child SA's delete after a rekey, or while the peer may still be sending on it (see the control plane's
    /// `linger`): its outbound SA goes now, its inbound SA keeps accepting what the peer sent before it switched
    /// for [`inbound::REKEYED_INBOUND_LINGER`] ([`Datapath::expire_retired`] removes it).
    pub(crate) fn retire(&mut self, now: Instant, peer: &str, spi_in: u32, spi_out: u32) {
        self.remove_outbound(peer, spi_in, spi_out);
        self.inb.retire(now, spi_in);
    }

    /// Removes the inbound SAs of rekeyed Child SAs whose linger time has passed.
    pub(crate) fn expire_retired(&mut self, now: Instant) {
        self.inb.expire_retired(now);
    }

    /// When [`Datapath::expire_retired`] next has work.
    pub(crate) fn next_retirement(&self) -> Option<Instant> {
        self.inb.next_retirement()
    }

    /// The outbound half of [`Datapath::remove`]: the outbound SA if it is still the current one (a waiting
    /// successor then takes its place), or wherever it waits.
    fn remove_outbound(&mut self, peer: &str, spi_in: u32, spi_out: u32) {
        let mut o = self.out.write();
        let i = o.peer_index(peer);
        if let Some(path) = i.and_then(|i| o.peers.get_mut(i)) {
            // What waits in this peer's lanes now; whatever of it no longer waits afterwards leaves `waiting`.
            let was_pending: Vec<u32> = path
                .lanes
                .iter()
                .filter_map(|l| l.pending.as_ref().map(|(s, _, _)| *s))
                .collect();
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
            for spi in was_pending {
                if !path
                    .lanes
                    .iter()
                    .any(|l| l.pending.as_ref().is_some_and(|(s, _, _)| *s == spi))
                {
                    self.waiting.remove(&spi);
                }
            }
        }
    }

    /// Replaces the peer list (reload): peers that stay keep their SAs; a removed peer's outbound SAs go at
    /// once, its inbound SAs stay until the delete of its Child SAs removes them (packets in flight are still
    /// delivered, within the SA's selectors); the prefix table is rebuilt.
    pub(crate) fn set_peers(&mut self, peers: &[(String, Vec<Prefix>)]) {
        let mut o = self.out.write();
        let mut old: Vec<PeerPath> = std::mem::take(&mut o.peers);
        let old_names: Vec<String> = old.iter().map(|p| p.name.clone()).collect();
        let paths = peers
            .iter()
            .map(|(name, _)| match old.iter().position(|p| &p.name == name) {
                Some(i) => old.swap_remove(i),
                None => PeerPath::new(name),
            })
            .collect();
        o.set_paths(paths);
        let new_index = |i: usize| old_names.get(i).and_then(|n| o.peer_index(n));
        for pol in self.inb.policy.values_mut() {
            pol.peer = pol.peer.and_then(new_index);
        }
        self.waiting = self
            .waiting
            .iter()
            .filter_map(|(&spi, &i)| Some((spi, new_index(i)?)))
            .collect();
        o.routes = Self::prefix_table(peers);
    }

    fn prefix_table(peers: &[(String, Vec<Prefix>)]) -> lpm::PrefixTable {
        lpm::PrefixTable::new(
            peers
                .iter()
                .enumerate()
                .flat_map(|(i, (_, nets))| nets.iter().map(move |p| (*p, i))),
        )
    }

    /// Decapsulates an ESP packet in place; true if `pkt` now holds an inner packet to deliver.
    pub(crate) fn decap(&mut self, pkt: &mut PacketBuf<'_>) -> bool {
        let Some(spi) = self.inb.decap(pkt) else {
            return false;
        };
        if !self.waiting.is_empty() {
            if let Some(peer) = self.inb.peer_of(spi) {
                // The peer sends on this pair, so it can receive on it too.
                self.promote(peer, spi);
            }
        }
        true
    }

    /// Counters of an inbound SA.
    pub(crate) fn inbound_counters(&self, spi_in: u32) -> Option<esp::Counters> {
        self.inb.counters(spi_in)
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
            no_sa_out: o.no_sa_out.load(std::sync::atomic::Ordering::Relaxed),
            no_route: o.no_route.load(std::sync::atomic::Ordering::Relaxed),
            policy: self.inb.policy_drops,
            encap_failed: o.encap_failed.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Inbound packets whose SPI was unknown.
    pub(crate) fn no_sa_in(&self) -> u64 {
        self.inb.no_sa_in()
    }

    /// Encapsulates one inner packet in place as the transmit path does; returns where to send it.
    #[cfg(test)]
    pub(in crate::daemon) fn encap(&mut self, pkt: &mut PacketBuf<'_>) -> Option<Wire> {
        let o = self.out.read();
        let (sa, wire) = o.route(pkt.as_slice())?;
        sa.encap(pkt).ok().map(|()| wire)
    }
}
