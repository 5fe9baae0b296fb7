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

/// IP protocol numbers of ICMP and ICMPv6.
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 extension headers [`icmp_error_quote`] walks: Hop-by-Hop Options, Routing, Fragment, Authentication
/// Header, Destination Options.
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
/// Most extension headers walked before the ICMPv6 header: a packet with more is refused as unreadable (a
/// real stack sends two or three at most).
const MAX_EXT_HEADERS: usize = 8;
/// Bytes of the ICMP and ICMPv6 header in front of the quoted packet of an error message.
const ICMP_HEADER_LEN: usize = 8;

/// What an inner packet says about the packet it is an ICMP or ICMPv6 error for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IcmpQuote {
    /// Not an ICMP error (any other packet, an informational ICMP message, a non-first fragment).
    NotAnError,
    /// An ICMP error quoting a packet from `src` to `dst`.
    Quotes { src: IpAddr, dst: IpAddr },
    /// An ICMP error whose quoted header is not all there (or whose IPv6 header chain is cut short or too
    /// long to walk): nothing says which flow it is about.
    Unreadable,
}

/// Whether `pkt` is an ICMP error, and which packet it quotes. An error message acts on the flow of the packet
/// it quotes (a path MTU, an unreachable port), so the inbound policy checks that packet too (`inbound.rs`).
///
/// A fragment with a non-zero offset carries no ICMP header and is [`IcmpQuote::NotAnError`]: the first
/// fragment holds the ICMP header and is checked; a fragmented error whose quote lies beyond its first
/// fragment is [`IcmpQuote::Unreadable`].
pub(crate) fn icmp_error_quote(pkt: &[u8]) -> IcmpQuote {
    let quoted = |q: Option<&[u8]>| -> IcmpQuote {
        match q.and_then(|q| Some((src_addr(q)?, dst_addr(q)?))) {
            Some((src, dst)) => IcmpQuote::Quotes { src, dst },
            None => IcmpQuote::Unreadable,
        }
    };
    match version(pkt) {
        Some(4) => {
            let Some(ip) = Ipv4Packet::new_checked(pkt) else {
                return IcmpQuote::NotAnError;
            };
            if ip.protocol() != IPPROTO_ICMP || be16(ip.fixed, ipv4::FLG_OFF) & 0x1fff != 0 {
                return IcmpQuote::NotAnError;
            }
            let Some(icmp) = ip.payload() else {
                return IcmpQuote::Unreadable;
            };
            // The error types of RFC 792 (Linux's icmp_pointers marks the same five as errors): destination
            // unreachable, source quench, redirect, time exceeded, parameter problem.
            match icmp.first() {
                Some(3 | 4 | 5 | 11 | 12) => quoted(icmp.get(ICMP_HEADER_LEN..)),
                Some(_) => IcmpQuote::NotAnError,
                None => IcmpQuote::Unreadable,
            }
        }
        Some(6) => {
            let Some(ip) = Ipv6Packet::new_checked(pkt) else {
                return IcmpQuote::NotAnError;
            };
            let mut next = ip.next_header();
            let mut at = ipv6::HEADER_LEN;
            for _ in 0..MAX_EXT_HEADERS {
                let (len, more) = match (next, pkt.get(at..).unwrap_or_default()) {
                    (IPPROTO_ICMPV6, [ty, ..]) => {
                        //= https://www.rfc-editor.org/rfc/rfc4443#section-2.1
                        //# Error messages are identified as such by a zero in the high-order bit of their
                        //# message Type field values.
                        return if ty & 0x80 == 0 {
                            quoted(pkt.get(at + ICMP_HEADER_LEN..))
                        } else {
                            IcmpQuote::NotAnError
                        };
                    }
                    (IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS, [nh, len, ..]) => {
                        ((usize::from(*len) + 1) * 8, *nh)
                    }
                    (IPV6_AH, [nh, len, ..]) => ((usize::from(*len) + 2) * 4, *nh),
                    (IPV6_FRAGMENT, [nh, _, o0, o1, ..]) => {
                        if u16::from_be_bytes([*o0, *o1]) >> 3 != 0 {
                            return IcmpQuote::NotAnError;
                        }
                        (8, *nh)
                    }
                    // The chain ends in something else (TCP, UDP, ESP, No Next Header): not ICMPv6.
                    (
                        IPPROTO_ICMPV6 | IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AH
                        | IPV6_FRAGMENT,
                        _,
                    ) => return IcmpQuote::Unreadable,
                    _ => return IcmpQuote::NotAnError,
                };
                at += len;
                next = more;
            }
            IcmpQuote::Unreadable
        }
        _ => IcmpQuote::NotAnError,
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

    /// The IPv6 header chain in front of an ICMPv6 error is walked within bounds: a chain cut short or longer
    /// than MAX_EXT_HEADERS is unreadable (the policy drops it), a later fragment or a chain ending in
    /// something else is no error, and nothing reads past the packet.
    #[test]
    fn icmpv6_header_chain_is_walked_within_bounds() {
        let v6 = |nh: u8, payload: &[u8]| {
            let mut p = vec![0x60, 0, 0, 0, 0, payload.len() as u8, nh, 64];
            p.extend_from_slice(&[0x20; 32]);
            p.extend_from_slice(payload);
            p
        };
        let dest_opts = |nh: u8| [nh, 0, 1, 4, 0, 0, 0, 0];
        let mut chain = Vec::new();
        for _ in 0..MAX_EXT_HEADERS {
            chain.extend_from_slice(&dest_opts(IPV6_DEST_OPTS));
        }
        chain.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        chain.extend_from_slice(&v6(IPPROTO_UDP, &[0; 8]));
        assert_eq!(
            icmp_error_quote(&v6(IPV6_DEST_OPTS, &chain)),
            IcmpQuote::Unreadable
        );
        let short = &v6(IPV6_DEST_OPTS, &dest_opts(IPPROTO_ICMPV6))[..44];
        assert_eq!(icmp_error_quote(short), IcmpQuote::Unreadable);
        let later_fragment = [IPPROTO_ICMPV6, 0, 0x05, 0x01, 0, 0, 0, 1, 1, 0, 0, 0];
        assert_eq!(
            icmp_error_quote(&v6(IPV6_FRAGMENT, &later_fragment)),
            IcmpQuote::NotAnError
        );
        assert_eq!(
            icmp_error_quote(&v6(IPPROTO_TCP, &[1; 20])),
            IcmpQuote::NotAnError
        );
        assert_eq!(
            icmp_error_quote(&v6(IPV6_DEST_OPTS, &dest_opts(IPPROTO_TCP))),
            IcmpQuote::NotAnError
        );
        let mut ok = vec![1, 0, 0, 0, 0, 0, 0, 0];
        ok.extend_from_slice(&v6(IPPROTO_UDP, &[0; 8]));
        let q = icmp_error_quote(&v6(
            IPV6_AH,
            &[&[IPPROTO_ICMPV6, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..], &ok].concat(),
        ));
        assert!(matches!(q, IcmpQuote::Quotes { .. }), "{q:?}");
    }
}
