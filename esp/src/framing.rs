//! How ESP packets travel: in UDP on port 4500 (RFC 3948), or as IP protocol 50.
//!
//! Both framings carry the same ESP packet, SPI first, so encapsulation and decapsulation never depend on
//! the framing; these functions only find the ESP packet in what a socket delivered, or add what the other
//! side's socket expects to find.

use std::net::Ipv4Addr;

/// The UDP port for IKE and UDP-encapsulated ESP.
pub const NAT_T_PORT: u16 = 4500;
/// IP protocol number of ESP.
pub const IPPROTO_ESP: u8 = 50;
/// Four zero bytes in front of an IKE message on port 4500.
//= https://www.rfc-editor.org/rfc/rfc3948#section-2.2
//# A Non-ESP Marker is 4 zero-valued bytes aligning with the SPI field of an ESP packet.
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// What a datagram received on UDP port 4500 holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpPayload {
    /// A NAT keepalive: ignore it.
    Keepalive,
    /// An IKE message; it starts this many bytes into the datagram (after the non-ESP marker).
    Ike {
        /// Offset of the IKE header.
        offset: usize,
    },
    /// An ESP packet, SPI first, at offset 0.
    Esp,
    /// Nothing valid: too short for any of the above.
    Invalid,
}

/// Classifies a UDP payload received on port 4500.
pub fn classify_udp(payload: &[u8]) -> UdpPayload {
    match payload {
        //= https://www.rfc-editor.org/rfc/rfc3948#section-2.3
        //# The sender MUST use a one-octet-long payload with the value 0xFF.
        [0xff] => UdpPayload::Keepalive,
        //= https://www.rfc-editor.org/rfc/rfc3948#section-2.1
        //# The SPI field in the ESP header MUST NOT be a zero value.
        [0, 0, 0, 0, rest @ ..] if !rest.is_empty() => UdpPayload::Ike { offset: 4 },
        [a, b, c, d, _, _, _, _, ..] if [*a, *b, *c, *d] != [0; 4] => UdpPayload::Esp,
        _ => UdpPayload::Invalid,
    }
}

/// The parts of an IPv4 packet as a raw IPv4 socket delivers it (header included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// The protocol field.
    pub protocol: u8,
    /// Offset of the payload (the header length).
    pub payload_offset: usize,
    /// Offset just past the payload (the total length).
    pub payload_end: usize,
}

/// Parses the IPv4 header in front of what a raw socket received, so the ESP packet behind it can be found.
/// Returns `None` for anything that is not a whole, unfragmented IPv4 packet.
pub fn parse_ipv4(pkt: &[u8]) -> Option<Ipv4Packet> {
    let (&[vihl, _, t0, t1, _, _, f0, f1, _, protocol, _, _, s0, s1, s2, s3, d0, d1, d2, d3], _) =
        pkt.split_first_chunk::<20>()?;
    if vihl >> 4 != 4 {
        return None;
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([t0, t1]));
    let frag = u16::from_be_bytes([f0, f1]);
    // More-fragments set or a non-zero offset: the kernel reassembles before raw delivery, so this is junk.
    if ihl < 20 || total < ihl || total > pkt.len() || frag & 0x3fff != 0 {
        return None;
    }
    Some(Ipv4Packet {
        src: Ipv4Addr::new(s0, s1, s2, s3),
        dst: Ipv4Addr::new(d0, d1, d2, d3),
        protocol,
        payload_offset: ihl,
        payload_end: total,
    })
}

/// Where the ESP packet lies in what a raw IP protocol 50 socket of `family` received: `(offset, end)`, or
/// `None` when it is not ESP (an IPv4 packet that is not whole, or carries another protocol).
///
/// An IPv4 raw socket hands over the whole packet, IPv4 header included (raw(7)). An IPv6 raw socket never
/// does:
//= https://www.rfc-editor.org/rfc/rfc3542#section-3
//# Another difference from IPv4 raw sockets is that complete packets (that is, IPv6 packets with extension
//# headers) cannot be sent or received using the IPv6 raw sockets API.
/// so there the datagram is the ESP packet itself.
pub fn raw_esp_span(pkt: &[u8], family: RawFamily) -> Option<(usize, usize)> {
    match family {
        RawFamily::V4 => {
            let ip = parse_ipv4(pkt)?;
            (ip.protocol == IPPROTO_ESP).then_some((ip.payload_offset, ip.payload_end))
        }
        RawFamily::V6 => Some((0, pkt.len())),
    }
}

/// The address family of a raw ESP socket, which decides what its datagrams start with ([`raw_esp_span`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawFamily {
    /// AF_INET: the IPv4 header, then ESP.
    V4,
    /// AF_INET6: ESP alone.
    V6,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_esp_span_by_family() {
        // ESP: SPI 0x01020304, sequence 1, then payload.
        let esp = [1u8, 2, 3, 4, 0, 0, 0, 1, 0xaa, 0xbb];
        assert_eq!(raw_esp_span(&esp, RawFamily::V6), Some((0, esp.len())));
        // The same ESP behind an IPv4 header, as an IPv4 raw socket delivers it.
        let total = (20 + esp.len()) as u16;
        let mut v4 = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0x40,
            0,
            64,
            50,
            0,
            0,
        ];
        v4.extend_from_slice(&[198, 18, 0, 2, 198, 18, 0, 1]);
        v4.extend_from_slice(&esp);
        assert_eq!(raw_esp_span(&v4, RawFamily::V4), Some((20, v4.len())));
        // Read as IPv4, the bare ESP of an IPv6 socket is no packet at all (what vmsecd did before: every ESP
        // over IPv6 was dropped).
        assert_eq!(raw_esp_span(&esp, RawFamily::V4), None);
        v4[9] = 17;
        assert_eq!(raw_esp_span(&v4, RawFamily::V4), None);
    }

    #[test]
    fn classify() {
        assert_eq!(classify_udp(&[0xff]), UdpPayload::Keepalive);
        assert_eq!(
            classify_udp(&[0, 0, 0, 0, 1, 2]),
            UdpPayload::Ike { offset: 4 }
        );
        assert_eq!(classify_udp(&[0, 0, 1, 0, 0, 0, 0, 1]), UdpPayload::Esp);
        assert_eq!(classify_udp(&[0, 0, 0, 0]), UdpPayload::Invalid);
        assert_eq!(classify_udp(&[1, 2, 3]), UdpPayload::Invalid);
        assert_eq!(classify_udp(&[]), UdpPayload::Invalid);
    }

    #[test]
    fn ipv4() {
        let mut p = [0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[9] = IPPROTO_ESP;
        p[12..16].copy_from_slice(&[198, 18, 0, 1]);
        let h = parse_ipv4(&p).unwrap();
        assert_eq!((h.protocol, h.payload_offset, h.payload_end), (50, 20, 28));
        assert_eq!(h.src, Ipv4Addr::new(198, 18, 0, 1));
        p[6] = 0x20; // more fragments
        assert!(parse_ipv4(&p).is_none());
        assert!(parse_ipv4(&p[..10]).is_none());
    }
}
