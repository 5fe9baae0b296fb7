//! Checked views of the inner packets' IPv4, IPv6 and TCP headers, as smoltcp's `wire` module has them: field
//! offsets named once, a `new_checked` that proves the fixed header is there, and accessors that then read it
//! without further checks. Every parser of an inner header in the datapath goes through these (the routing
//! and policy lookups, the transmit workers' flow hash, the TUN-side segmenter and the receive-side coalescer),
//! so an offset is written in one place and a short packet is refused in one place.
//!
//! A view borrows the packet and holds its fixed header as an array reference: the accessors compile to the
//! same single loads as the hand-written parsers they replace (no bounds check, no allocation). What a view
//! does not check (the IPv4 header length field, the TCP data offset) its users check, as before: the views
//! decide nothing the parsers did not.

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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol number of TCP.
pub(crate) const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub(crate) const IPPROTO_UDP: u8 = 17;

/// The IP version of a packet (the high nibble of its first byte), if it has a first byte.
#[inline(always)]
pub(crate) fn version(pkt: &[u8]) -> Option<u8> {
    pkt.first().map(|b| b >> 4)
}

/// The destination address of an IPv4 or IPv6 packet, if its fixed header is there.
#[inline]
pub(crate) fn dst_addr(pkt: &[u8]) -> Option<IpAddr> {
    match version(pkt)? {
        4 => Some(Ipv4Packet::new_checked(pkt)?.dst_addr().into()),
        6 => Some(Ipv6Packet::new_checked(pkt)?.dst_addr().into()),
        _ => None,
    }
}

/// The source address of an IPv4 or IPv6 packet, if its fixed header is there.
#[inline]
pub(crate) fn src_addr(pkt: &[u8]) -> Option<IpAddr> {
    match version(pkt)? {
        4 => Some(Ipv4Packet::new_checked(pkt)?.src_addr().into()),
        6 => Some(Ipv6Packet::new_checked(pkt)?.src_addr().into()),
        _ => None,
    }
}

/// Big-endian u16 at `at` of a fixed header (`at + 1 < N`, which the callers' constants guarantee).
#[inline(always)]
fn be16<const N: usize>(h: &[u8; N], at: usize) -> u16 {
    match h.get(at..at + 2) {
        Some(&[a, b]) => u16::from_be_bytes([a, b]),
        _ => 0,
    }
}

/// `M` bytes of a fixed header at `at` (`at + M <= N`, guaranteed by the callers' constants).
#[inline(always)]
fn bytes<const M: usize, const N: usize>(h: &[u8; N], at: usize) -> [u8; M] {
    h.get(at..)
        .and_then(|b| b.first_chunk::<M>())
        .copied()
        .unwrap_or([0; M])
}

/// IPv4 header fields (RFC 791 3.1), as byte offsets.
pub(crate) mod ipv4 {
    /// Version and IHL.
    pub(crate) const VER_IHL: usize = 0;
    /// Total length.
    pub(crate) const TOTAL_LEN: usize = 2;
    /// Identification.
    pub(crate) const IDENT: usize = 4;
    /// Flags and fragment offset.
    pub(crate) const FLG_OFF: usize = 6;
    /// Protocol.
    pub(crate) const PROTOCOL: usize = 9;
    /// Header checksum.
    pub(crate) const CHECKSUM: usize = 10;
    /// Source address.
    pub(crate) const SRC_ADDR: usize = 12;
    /// Destination address.
    pub(crate) const DST_ADDR: usize = 16;
    /// The fixed header (no options).
    pub(crate) const HEADER_LEN: usize = 20;
}

/// IPv6 header fields (RFC 8200 3), as byte offsets.
pub(crate) mod ipv6 {
    /// Payload length.
    pub(crate) const PAYLOAD_LEN: usize = 4;
    /// Next header.
    pub(crate) const NXT_HDR: usize = 6;
    /// Source address.
    pub(crate) const SRC_ADDR: usize = 8;
    /// Destination address.
    pub(crate) const DST_ADDR: usize = 24;
    /// The fixed header.
    pub(crate) const HEADER_LEN: usize = 40;
}

/// TCP header fields (RFC 9293 3.1), as byte offsets from the TCP header's start.
pub(crate) mod tcp {
    /// Sequence number.
    pub(crate) const SEQ_NUM: usize = 4;
    /// Data offset (high nibble).
    pub(crate) const DATA_OFF: usize = 12;
    /// Flags.
    pub(crate) const FLAGS: usize = 13;
    /// Checksum.
    pub(crate) const CHECKSUM: usize = 16;
    /// The fixed header (no options).
    pub(crate) const HEADER_LEN: usize = 20;
    /// Flags.
    pub(crate) const FIN: u8 = 0x01;
    pub(crate) const SYN: u8 = 0x02;
    pub(crate) const RST: u8 = 0x04;
    pub(crate) const PSH: u8 = 0x08;
    pub(crate) const URG: u8 = 0x20;
    pub(crate) const CWR: u8 = 0x80;
}

/// An IPv4 packet whose fixed 20-byte header is there and whose version is 4. The header length field (IHL)
/// is not checked: [`Ipv4Packet::header_len`] returns it as it is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ipv4Packet<'a> {
    fixed: &'a [u8; ipv4::HEADER_LEN],
    packet: &'a [u8],
}

impl<'a> Ipv4Packet<'a> {
    /// The view of `packet`, if it is at least 20 bytes and says version 4.
    #[inline(always)]
    pub(crate) fn new_checked(packet: &'a [u8]) -> Option<Ipv4Packet<'a>> {
        let fixed = packet.first_chunk::<{ ipv4::HEADER_LEN }>()?;
        (fixed[ipv4::VER_IHL] >> 4 == 4).then_some(Ipv4Packet { fixed, packet })
    }

    /// The header length in bytes, from the IHL field (unchecked: may be under 20 or past the packet).
    #[inline(always)]
    pub(crate) fn header_len(&self) -> usize {
        usize::from(self.fixed[ipv4::VER_IHL] & 0x0f) * 4
    }

    /// The total length field.
    #[inline(always)]
    pub(crate) fn total_len(&self) -> u16 {
        be16(self.fixed, ipv4::TOTAL_LEN)
    }

    /// True if this is a fragment: more fragments follow, or the offset is not zero.
    #[inline(always)]
    pub(crate) fn is_fragment(&self) -> bool {
        be16(self.fixed, ipv4::FLG_OFF) & 0x3fff != 0
    }

    /// The protocol field.
    #[inline(always)]
    pub(crate) fn protocol(&self) -> u8 {
        self.fixed[ipv4::PROTOCOL]
    }

    /// The source address.
    #[inline(always)]
    pub(crate) fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::<4, 20>(self.fixed, ipv4::SRC_ADDR))
    }

    /// The destination address.
    #[inline(always)]
    pub(crate) fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(bytes::<4, 20>(self.fixed, ipv4::DST_ADDR))
    }

    /// What follows the header as its IHL gives it, if the IHL is at least 20 and within the packet.
    #[inline(always)]
    pub(crate) fn payload(&self) -> Option<&'a [u8]> {
        let ihl = self.header_len();
        if ihl < ipv4::HEADER_LEN {
            return None;
        }
        self.packet.get(ihl..)
    }
}

/// An IPv6 packet whose fixed 40-byte header is there and whose version is 6.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ipv6Packet<'a> {
    fixed: &'a [u8; ipv6::HEADER_LEN],
    packet: &'a [u8],
}

impl<'a> Ipv6Packet<'a> {
    /// The view of `packet`, if it is at least 40 bytes and says version 6.
    #[inline(always)]
    pub(crate) fn new_checked(packet: &'a [u8]) -> Option<Ipv6Packet<'a>> {
        let fixed = packet.first_chunk::<{ ipv6::HEADER_LEN }>()?;
        (fixed[0] >> 4 == 6).then_some(Ipv6Packet { fixed, packet })
    }

    /// The payload length field.
    #[inline(always)]
    pub(crate) fn payload_len(&self) -> u16 {
        be16(self.fixed, ipv6::PAYLOAD_LEN)
    }

    /// The next header field.
    #[inline(always)]
    pub(crate) fn next_header(&self) -> u8 {
        self.fixed[ipv6::NXT_HDR]
    }

    /// The source address.
    #[inline(always)]
    pub(crate) fn src_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.src_dst_bytes::<{ ipv6::SRC_ADDR }>())
    }

    /// The destination address.
    #[inline(always)]
    pub(crate) fn dst_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.src_dst_bytes::<{ ipv6::DST_ADDR }>())
    }

    /// Source and destination, the 32 bytes from offset 8.
    #[inline(always)]
    pub(crate) fn addrs(&self) -> [u8; 32] {
        bytes::<32, 40>(self.fixed, ipv6::SRC_ADDR)
    }

    #[inline(always)]
    fn src_dst_bytes<const AT: usize>(&self) -> [u8; 16] {
        bytes::<16, 40>(self.fixed, AT)
    }

    /// What follows the fixed header (extension headers included).
    #[inline(always)]
    pub(crate) fn payload(&self) -> &'a [u8] {
        self.packet.get(ipv6::HEADER_LEN..).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_check_version_and_length_and_read_the_fields() {
        let mut p4 = vec![0x45, 0, 0, 28, 0x12, 0x34, 0x20, 0, 64, 17, 0, 0];
        p4.extend_from_slice(&[198, 19, 1, 10, 198, 19, 2, 10, 1, 2, 3, 4, 5, 6, 7, 8]);
        let v = Ipv4Packet::new_checked(&p4).unwrap();
        assert_eq!(
            (v.header_len(), v.total_len(), v.protocol()),
            (20, 28, IPPROTO_UDP)
        );
        assert!(v.is_fragment(), "more fragments");
        assert_eq!(v.src_addr(), Ipv4Addr::new(198, 19, 1, 10));
        assert_eq!(v.dst_addr(), Ipv4Addr::new(198, 19, 2, 10));
        assert_eq!(v.payload(), Some(&p4[20..]));
        assert!(Ipv4Packet::new_checked(&p4[..19]).is_none(), "short");
        assert!(Ipv6Packet::new_checked(&p4).is_none(), "not 6");
        p4[0] = 0x44;
        assert_eq!(
            Ipv4Packet::new_checked(&p4).unwrap().payload(),
            None,
            "IHL 16"
        );

        let mut p6 = vec![0x60, 0, 0, 0, 0, 4, IPPROTO_TCP, 64];
        p6.extend((1..=32u8).chain([9, 9, 9, 9]));
        let v = Ipv6Packet::new_checked(&p6).unwrap();
        assert_eq!((v.payload_len(), v.next_header()), (4, IPPROTO_TCP));
        assert_eq!(v.src_addr().octets()[0], 1);
        assert_eq!(v.dst_addr().octets()[15], 32);
        assert_eq!(v.addrs()[31], 32);
        assert_eq!(v.payload(), &[9, 9, 9, 9]);
        assert!(Ipv6Packet::new_checked(&p6[..39]).is_none());
        assert!(Ipv4Packet::new_checked(&p6).is_none());
    }
}
