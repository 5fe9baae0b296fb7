//! The security association database: inbound SAs by SPI.

use std::collections::HashMap;

use crate::packet::PacketBuf;
use crate::sa::{DropReason, InboundSa, Inner};

/// Inbound SAs keyed by SPI: one hash lookup per packet.
#[derive(Debug, Default)]
pub struct Sad {
    inbound: HashMap<u32, InboundSa>,
    no_sa: u64,
    malformed: u64,
}

impl Sad {
    /// An empty database.
    pub fn new() -> Sad {
        Sad::default()
    }

    /// Adds an inbound SA, replacing (and returning) one with the same SPI.
    pub fn insert(&mut self, sa: InboundSa) -> Option<InboundSa> {
        self.inbound.insert(sa.params().spi, sa)
    }

    /// Removes the SA with this SPI.
    pub fn remove(&mut self, spi: u32) -> Option<InboundSa> {
        self.inbound.remove(&spi)
    }

    /// The SA with this SPI.
    pub fn get(&self, spi: u32) -> Option<&InboundSa> {
        self.inbound.get(&spi)
    }

    /// All inbound SAs.
    pub fn iter(&self) -> impl Iterator<Item = &InboundSa> {
        self.inbound.values()
    }

    /// Number of SAs.
    pub fn len(&self) -> usize {
        self.inbound.len()
    }

    /// True if no SA is installed.
    pub fn is_empty(&self) -> bool {
        self.inbound.is_empty()
    }

    /// Packets dropped because no SA had their SPI.
    pub fn no_sa_drops(&self) -> u64 {
        self.no_sa
    }

    /// Packets dropped because they were too short to carry an SPI.
    pub fn malformed_drops(&self) -> u64 {
        self.malformed
    }

    /// Finds the SA by the packet's SPI and decapsulates in place. Returns the SPI with the result.
    //= https://www.rfc-editor.org/rfc/rfc4303#section-3.4.2
    //# If no valid Security Association exists for this packet, the receiver MUST discard the packet; this is
    //# an auditable event.
    pub fn decap(&mut self, pkt: &mut PacketBuf<'_>) -> Result<(u32, Inner), DropReason> {
        let Some(spi) = pkt
            .as_slice()
            .first_chunk::<4>()
            .copied()
            .map(u32::from_be_bytes)
        else {
            self.malformed += 1;
            return Err(DropReason::Malformed);
        };
        match self.inbound.get_mut(&spi) {
            Some(sa) => sa.decap(pkt).map(|inner| (spi, inner)),
            None => {
                self.no_sa += 1;
                Err(DropReason::NoSa(spi))
            }
        }
    }
}
