//! TCP segmentation of the TUN's TSO super-packets, laid out for one UDP GSO send of ESP datagrams (the
//! transmit side).
//!
//! Each super-packet is cut into MSS-sized segments, each a complete IP packet with its own length, IP id,
//! sequence number, flags and checksums, placed at a fixed stride in one buffer so that after in-place ESP
//! encapsulation the datagrams lie back to back: one `sendmsg` with `UDP_SEGMENT` then sends all of them.
//!
//! The kernel's contract (Documentation/networking/segmentation-offloads.rst, "TCP Segmentation"): "TCP
//! segmentation is dependent on support for the use of partial checksum offload. [...] the IPv4 ID [is]
//! incremented [per segment] [...] the TCP sequence number [advances by gso_size] [...] the flags FIN and PSH are
//! only set on the last segment, CWR only on the first". This file does exactly that, in userspace.

use super::checksum::{fold, pseudo, sum};
use super::{
    arr, put, tcp_headers, GsoError, VnetHdr, F_NEEDS_CSUM, GSO_ECN, GSO_NONE, GSO_TCPV4,
    GSO_TCPV6, IPPROTO_TCP, TCP_CWR, TCP_FIN, TCP_PSH,
};
use crate::wire::{ipv4, ipv6, tcp};

/// Writes the IP length fields, IPv4 id and header checksum, and the full TCP checksum, of the segment `seg`
/// (headers `hdr` bytes long, IP header `ip_len`).
pub(super) fn finish_segment(seg: &mut [u8], ip_len: usize, v6: bool) {
    // The headers were checked (`tcp_headers`): every `put` lands inside `seg`.
    let len = seg.len();
    if v6 {
        put(
            seg,
            ipv6::PAYLOAD_LEN,
            &(len.saturating_sub(ipv6::HEADER_LEN) as u16).to_be_bytes(),
        );
    } else {
        put(seg, ipv4::TOTAL_LEN, &(len as u16).to_be_bytes());
        put(seg, ipv4::CHECKSUM, &[0, 0]);
        let c = !fold(sum(seg.get(..ip_len).unwrap_or_default(), 0));
        put(seg, ipv4::CHECKSUM, &c.to_be_bytes());
    }
    let l4 = len.saturating_sub(ip_len);
    put(seg, ip_len + tcp::CHECKSUM, &[0, 0]);
    let ps = pseudo(seg, v6, IPPROTO_TCP, l4);
    let c = !fold(sum(seg.get(ip_len..).unwrap_or_default(), ps));
    put(seg, ip_len + tcp::CHECKSUM, &c.to_be_bytes());
}

/// Completes a partial checksum (`NEEDS_CSUM`) of a packet that is not to be segmented.
pub(crate) fn complete_checksum(hdr: &VnetHdr, pkt: &mut [u8]) -> Result<(), GsoError> {
    if hdr.flags & F_NEEDS_CSUM == 0 {
        return Ok(());
    }
    let start = usize::from(hdr.csum_start);
    let at = start + usize::from(hdr.csum_offset);
    if start > pkt.len() || at + 2 > pkt.len() {
        return Err(GsoError::Malformed);
    }
    // The field holds the pseudo-header sum; the checksum covers it and everything from csum_start.
    let c = !fold(sum(pkt.get(start..).ok_or(GsoError::Malformed)?, 0));
    put(pkt, at, &c.to_be_bytes()).ok_or(GsoError::Malformed)
}

/// How the segments of one super-packet were laid out by [`segment`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Segments {
    /// Number of segments.
    pub(crate) count: usize,
    /// Inner length of every segment but the last.
    pub(crate) seg_len: usize,
    /// Inner length of the last segment.
    pub(crate) last_len: usize,
}

impl Segments {
    /// Inner length of segment `i`.
    pub(crate) fn len(&self, i: usize) -> usize {
        if i + 1 == self.count {
            self.last_len
        } else {
            self.seg_len
        }
    }
}

/// Cuts the TCP super-packet `buf[at..at + len]` (as read from the TUN with virtio-net header `hdr`, GSO type
/// TCPv4 or TCPv6) into segments of at most `hdr.gso_size` payload bytes, in place: segment `i` goes to
/// `buf[i * stride + front..]`, where `stride` is returned by `stride_of(inner segment length)` (the size of
/// the ESP datagram the segment becomes, so datagrams end up back to back) and `front` is the ESP header
/// length. `at` must be at least `front`.
///
/// The payloads are moved from the back: segment `i` lands at or after where its payload was, so later
/// segments are moved before earlier ones are overwritten; the headers are written once all payloads are in
/// place.
pub(crate) fn segment(
    buf: &mut [u8],
    at: usize,
    len: usize,
    hdr: &VnetHdr,
    front: usize,
    stride_of: impl Fn(usize) -> usize,
) -> Result<Segments, GsoError> {
    if at < front || buf.len() < at + len {
        return Err(GsoError::NoRoom);
    }
    let pkt = buf.get(at..at + len).ok_or(GsoError::NoRoom)?;
    let (ip_len, hlen, v6) = tcp_headers(pkt)?;
    let mss = usize::from(hdr.gso_size);
    if mss == 0 || usize::from(hdr.csum_start) != ip_len {
        return Err(GsoError::Malformed);
    }
    let payload = len - hlen;
    let count = payload.div_ceil(mss).max(1);
    let segs = Segments {
        count,
        seg_len: hlen + mss.min(payload),
        last_len: hlen + (payload - (count - 1) * mss),
    };
    let stride = stride_of(segs.seg_len);
    if stride < front + segs.seg_len {
        return Err(GsoError::NoRoom);
    }
    if buf.len() < (count - 1) * stride + front + segs.last_len {
        return Err(GsoError::NoRoom);
    }
    // Moving from the back is only safe while each segment lands at or after the end of the previous one's
    // unmoved payload; segment 1 is the tightest case. The daemon reads at esp::HEADROOM, well inside it.
    if count > 1 && at > front + stride - (segs.seg_len - hlen) {
        return Err(GsoError::NoRoom);
    }
    let mut tmpl = [0u8; 120];
    let tmpl = tmpl.get_mut(..hlen).ok_or(GsoError::Malformed)?;
    tmpl.copy_from_slice(pkt.get(..hlen).ok_or(GsoError::Malformed)?);
    let tmpl = &*tmpl;
    let seq0 = u32::from_be_bytes(arr(tmpl, ip_len + tcp::SEQ_NUM).ok_or(GsoError::Malformed)?);
    let id0 = u16::from_be_bytes(arr(tmpl, ipv4::IDENT).ok_or(GsoError::Malformed)?);
    let flags0 = *tmpl.get(ip_len + tcp::FLAGS).ok_or(GsoError::Malformed)?;
    // First every payload, from the back; only then the headers. A segment's headers go in front of its
    // payload, which can reach back over the end of the previous segment's payload where it still lies unmoved
    // (segment 1's headers overlap the last bytes of segment 0's source when the read sat less than two ESP
    // headers and a trailer into the buffer, as it does): writing them in the same pass silently replaced those
    // bytes, and the TCP checksum, computed afterwards, covered the damage.
    for i in (0..count).rev() {
        let src = at + hlen + i * mss;
        let dst = i * stride + front;
        buf.copy_within(src..src + segs.len(i) - hlen, dst + hlen);
    }
    for i in 0..count {
        let dst = i * stride + front;
        // In range: checked against buf.len() above.
        let seg = buf
            .get_mut(dst..dst + segs.len(i))
            .ok_or(GsoError::NoRoom)?;
        put(seg, 0, tmpl);
        if !v6 {
            put(seg, ipv4::IDENT, &id0.wrapping_add(i as u16).to_be_bytes());
        }
        put(
            seg,
            ip_len + tcp::SEQ_NUM,
            &seq0.wrapping_add((i * mss) as u32).to_be_bytes(),
        );
        let mut f = flags0;
        if i != count - 1 {
            f &= !(TCP_FIN | TCP_PSH);
        }
        if i != 0 {
            f &= !TCP_CWR;
        }
        put(seg, ip_len + tcp::FLAGS, &[f]);
        finish_segment(seg, ip_len, v6);
    }
    Ok(segs)
}

/// Whether `hdr` announces a TCP super-packet to cut.
pub(crate) fn is_tcp_gso(hdr: &VnetHdr) -> Result<bool, GsoError> {
    match hdr.gso_type & !GSO_ECN {
        GSO_NONE => Ok(false),
        GSO_TCPV4 | GSO_TCPV6 => Ok(true),
        _ => Err(GsoError::Malformed),
    }
}
