//! The TUN's offloads, done in userspace: the virtio-net header that comes with every TUN read and write, and
//! the TCP helpers its two users share. [`segment`] cuts the TSO super-packets the TUN hands us into segments
//! for ESP (the transmit side); [`Coalescer`] merges decrypted TCP segments back into one super-packet for one
//! TUN write (the receive side, as GRO would). [`checksum`] holds the RFC 1071 sums both compute.
//!
//! With `IFF_VNET_HDR` and `TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)`, one read from the TUN returns a
//! TCP packet of up to 64 KiB that the kernel has not segmented, with a virtio-net header saying how to cut it
//! (`gso_size`) and where the partial checksum is; a write may carry such a packet the other way.
//!
//! Everything works on caller-owned buffers; nothing allocates.

// Parses bytes from the wire or from a VM: nothing here (nor in the submodules, which inherit these lints) may
// panic on them (issue 12 review item 6).
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

use std::fmt;

pub(crate) mod checksum;
mod coalesce;
mod segment;
#[cfg(test)]
mod tests;

pub(crate) use coalesce::Coalescer;
pub(crate) use segment::{complete_checksum, is_tcp_gso, segment, Segments};

/// Bytes of `struct virtio_net_hdr`.
pub(crate) const VNET_HDR_LEN: usize = 10;
/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`: the checksum at `csum_start + csum_offset` holds only the pseudo-header sum.
pub(crate) const F_NEEDS_CSUM: u8 = 1;
/// `VIRTIO_NET_HDR_GSO_NONE`, `_TCPV4`, `_TCPV6` (include/uapi/linux/virtio_net.h).
pub(crate) const GSO_NONE: u8 = 0;
pub(crate) const GSO_TCPV4: u8 = 1;
pub(crate) const GSO_TCPV6: u8 = 4;
/// `VIRTIO_NET_HDR_GSO_ECN` bit of gso_type.
const GSO_ECN: u8 = 0x80;

use crate::wire::tcp::{
    CWR as TCP_CWR, FIN as TCP_FIN, PSH as TCP_PSH, RST as TCP_RST, SYN as TCP_SYN, URG as TCP_URG,
};
use crate::wire::{self, ipv4, ipv6, tcp, Ipv4Packet, Ipv6Packet, IPPROTO_TCP};

/// `struct virtio_net_hdr` (little-endian fields: the TUN is used in the host's byte order, LE on x86 and arm).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct VnetHdr {
    pub(crate) flags: u8,
    pub(crate) gso_type: u8,
    pub(crate) hdr_len: u16,
    pub(crate) gso_size: u16,
    pub(crate) csum_start: u16,
    pub(crate) csum_offset: u16,
}

impl VnetHdr {
    pub(crate) fn parse(b: &[u8; VNET_HDR_LEN]) -> VnetHdr {
        let [flags, gso_type, h0, h1, g0, g1, s0, s1, o0, o1] = *b;
        VnetHdr {
            flags,
            gso_type,
            hdr_len: u16::from_le_bytes([h0, h1]),
            gso_size: u16::from_le_bytes([g0, g1]),
            csum_start: u16::from_le_bytes([s0, s1]),
            csum_offset: u16::from_le_bytes([o0, o1]),
        }
    }

    pub(crate) fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let [h0, h1] = self.hdr_len.to_le_bytes();
        let [g0, g1] = self.gso_size.to_le_bytes();
        let [s0, s1] = self.csum_start.to_le_bytes();
        let [o0, o1] = self.csum_offset.to_le_bytes();
        [self.flags, self.gso_type, h0, h1, g0, g1, s0, s1, o0, o1]
    }
}

/// Why a packet from the TUN could not be segmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GsoError {
    /// Headers missing, offsets out of range, or a GSO type other than TCP.
    Malformed,
    /// The output buffer is too small for the segments.
    NoRoom,
}

impl fmt::Display for GsoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GsoError::Malformed => "malformed offload packet from the TUN",
            GsoError::NoRoom => "segments do not fit the buffer",
        })
    }
}

/// `N` bytes of `b` at `at`, if they are there.
#[inline(always)]
fn arr<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    b.get(at..)?.first_chunk::<N>().copied()
}

/// Writes `v` into `b` at `at`; nothing if it does not fit (the callers checked that it does).
#[inline(always)]
fn put(b: &mut [u8], at: usize, v: &[u8]) -> Option<()> {
    b.get_mut(at..at.checked_add(v.len())?)?.copy_from_slice(v);
    Some(())
}

/// True if `a` and `b` both have bytes at `r` and they are equal.
#[inline(always)]
fn same<R: std::slice::SliceIndex<[u8], Output = [u8]> + Clone>(a: &[u8], b: &[u8], r: R) -> bool {
    matches!((a.get(r.clone()), b.get(r)), (Some(x), Some(y)) if x == y)
}

/// Where the headers of a TCP packet end: (IP header length, IP+TCP header length, IPv6?).
fn tcp_headers(pkt: &[u8]) -> Result<(usize, usize, bool), GsoError> {
    let (ip_len, v6) = match wire::version(pkt) {
        Some(4) => match Ipv4Packet::new_checked(pkt) {
            Some(ip) if ip.protocol() == IPPROTO_TCP => (ip.header_len(), false),
            _ => return Err(GsoError::Malformed),
        },
        // Extension headers are not expected from a TSO packet of the local stack; refuse them.
        Some(6) => match Ipv6Packet::new_checked(pkt) {
            Some(ip) if ip.next_header() == IPPROTO_TCP => (ipv6::HEADER_LEN, true),
            _ => return Err(GsoError::Malformed),
        },
        _ => return Err(GsoError::Malformed),
    };
    if ip_len < ipv4::HEADER_LEN || pkt.len() < ip_len + tcp::HEADER_LEN {
        return Err(GsoError::Malformed);
    }
    let off = pkt.get(ip_len + tcp::DATA_OFF).ok_or(GsoError::Malformed)?;
    let hdr = ip_len + usize::from(off >> 4) * 4;
    if hdr < ip_len + tcp::HEADER_LEN || pkt.len() < hdr {
        return Err(GsoError::Malformed);
    }
    Ok((ip_len, hdr, v6))
}
