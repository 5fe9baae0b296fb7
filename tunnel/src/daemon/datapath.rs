//! The ESP datapath of the daemon: which SA a packet from the TUN takes (longest prefix match on its
//! destination), and which inner packets an inbound SA may deliver (its traffic selectors).
//!
//! Everything works in place on the caller's buffers; this module owns SA state and counters, never a socket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

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

struct PeerPath {
    name: String,
    out: Option<OutboundSa>,
    wire: Option<Wire>,
}

struct InPolicy {
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

/// SAs, routes and policy.
pub(crate) struct Datapath {
    peers: Vec<PeerPath>,
    /// (prefix, peer index), longest prefix first.
    routes: Vec<(Prefix, usize)>,
    sad: Sad,
    policy: HashMap<u32, InPolicy>,
    pub(crate) drops: Drops,
}

fn dst_addr(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&pkt[16..20]).ok()?)),
        6 if pkt.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&pkt[24..40]).ok()?)),
        _ => None,
    }
}

fn src_addr(pkt: &[u8]) -> Option<IpAddr> {
    match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 => Some(IpAddr::from(<[u8; 4]>::try_from(&pkt[12..16]).ok()?)),
        6 if pkt.len() >= 40 => Some(IpAddr::from(<[u8; 16]>::try_from(&pkt[8..24]).ok()?)),
        _ => None,
    }
}

impl Datapath {
    /// A datapath for these peers (name and their subnets), with no SA yet.
    pub(crate) fn new(peers: &[(String, Vec<Prefix>)]) -> Datapath {
        let mut routes: Vec<(Prefix, usize)> = peers
            .iter()
            .enumerate()
            .flat_map(|(i, (_, nets))| nets.iter().map(move |p| (*p, i)))
            .collect();
        routes.sort_by_key(|(p, _)| std::cmp::Reverse(p.prefix_len()));
        Datapath {
            peers: peers
                .iter()
                .map(|(name, _)| PeerPath {
                    name: name.clone(),
                    out: None,
                    wire: None,
                })
                .collect(),
            routes,
            sad: Sad::new(),
            policy: HashMap::new(),
            drops: Drops::default(),
        }
    }

    fn peer_index(&self, name: &str) -> Option<usize> {
        self.peers.iter().position(|p| p.name == name)
    }

    /// Installs a new Child SA (first or rekeyed): inbound SA and policy, and the outbound SA replaces the
    /// previous one at once (make before break: the old inbound SA stays until it is deleted).
    pub(crate) fn install(
        &mut self,
        c: &ChildSaInfo,
        replay_window: u32,
    ) -> Result<(), esp::BadKeyLength> {
        let mut p_in = SaParams::new(c.spi_in, c.transform, c.esn);
        p_in.replay_window = replay_window;
        self.sad.insert(InboundSa::new(p_in, &c.keys_in)?);
        self.policy.insert(
            c.spi_in,
            InPolicy {
                ts_local: c.ts_local.clone(),
                ts_remote: c.ts_remote.clone(),
            },
        );
        let out = OutboundSa::new(SaParams::new(c.spi_out, c.transform, c.esn), &c.keys_out)?;
        if let Some(i) = self.peer_index(&c.peer) {
            self.peers[i].out = Some(out);
            self.peers[i].wire = Some(if c.udp_encap {
                Wire::Udp(c.remote)
            } else {
                Wire::Raw(c.remote.ip())
            });
        }
        Ok(())
    }

    /// Removes a Child SA pair: the inbound SA, and the outbound SA if it is still the current one.
    pub(crate) fn remove(&mut self, peer: &str, spi_in: u32, spi_out: u32) {
        self.sad.remove(spi_in);
        self.policy.remove(&spi_in);
        if let Some(i) = self.peer_index(peer) {
            if self.peers[i]
                .out
                .as_ref()
                .is_some_and(|o| o.params().spi == spi_out)
            {
                self.peers[i].out = None;
                self.peers[i].wire = None;
            }
        }
    }

    /// Encapsulates one packet read from the TUN in place; returns where to send it.
    pub(crate) fn encap(&mut self, pkt: &mut PacketBuf<'_>) -> Option<Wire> {
        let Some(dst) = dst_addr(pkt.as_slice()) else {
            self.drops.no_route += 1;
            return None;
        };
        let Some(&(_, i)) = self.routes.iter().find(|(p, _)| p.contains(dst)) else {
            self.drops.no_route += 1;
            return None;
        };
        let peer = &mut self.peers[i];
        let (Some(out), Some(wire)) = (peer.out.as_mut(), peer.wire) else {
            self.drops.no_sa_out += 1;
            return None;
        };
        match out.encap(pkt) {
            Ok(()) => Some(wire),
            Err(_) => {
                self.drops.encap_failed += 1;
                None
            }
        }
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
            self.drops.policy += 1;
        }
        ok
    }

    /// Counters of an inbound SA.
    pub(crate) fn inbound_counters(&self, spi_in: u32) -> Option<esp::Counters> {
        self.sad.get(spi_in).map(|sa| *sa.counters())
    }

    /// Counters of the current outbound SA towards a peer, if its SPI is `spi_out`.
    pub(crate) fn outbound_counters(&self, peer: &str, spi_out: u32) -> Option<esp::Counters> {
        let p = &self.peers[self.peer_index(peer)?];
        p.out
            .as_ref()
            .filter(|o| o.params().spi == spi_out)
            .map(|o| *o.counters())
    }

    /// Inbound packets whose SPI was unknown.
    pub(crate) fn no_sa_in(&self) -> u64 {
        self.sad.no_sa_drops()
    }
}
