//! The TUN side, where a VM controls the bytes: the TSO segmenter fed by the TUN's virtio-net header (GSO type,
//! size, checksum offsets; `vmsecd::daemon::fuzz_api`, exposing tunnel/src/daemon/gso.rs), the partial
//! checksum completion, and the receive-side coalescer that merges decrypted TCP segments (from a peer's VM)
//! into one TUN write.
//!
//! Input: a mode byte, then
//! * mode 0, raw: 10 bytes of virtio-net header, layout bytes (`at`, trailer), and the packet as the TUN
//!   returned it;
//! * mode 1, structured TSO: a valid IPv4/IPv6 TCP packet built from fields (options, flags, sequence, payload
//!   length, MSS) with a matching header, optionally spoiled by up to 4 header mutations;
//! * mode 2, coalescer: a structured super-packet cut by `segment`, its segments pushed (with fuzzer-chosen
//!   drops, swaps, damaged headers and foreign packets) into a `Coalescer`.
//!
//! Checks:
//! * nothing panics; `segment` writes only inside its output slots (bytes between strides are untouched);
//! * on success: `count == ceil(payload / gso_size)`, every segment but the last carries exactly `gso_size`
//!   bytes, the payloads concatenated are the original payload, each segment's IP length field is its length,
//!   the IPv4 header checksum and the TCP checksum (with pseudo-header) verify, sequence numbers advance by
//!   `gso_size`, IPv4 ids by one, FIN/PSH only on the last segment and CWR only on the first, and every other
//!   header byte is the original's;
//! * `complete_checksum` on a packet whose field holds the pseudo-header sum yields a TCP checksum that verifies;
//! * coalescer: every pushed packet comes out exactly once, in order; a single one unchanged; a merged run has
//!   a consistent virtio-net header (NEEDS_CSUM, TCPv4/6, `hdr_len`, `gso_size` = first segment's payload,
//!   `csum_start` = IP header, offset 16), correct IP length and IPv4 checksum, the pseudo-header sum in the TCP
//!   checksum field, the pushed payloads back to back, and `segment` cuts it back into the pushed segments.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use vmsecd::daemon::fuzz_api::{complete_checksum, is_tcp_gso, segment, Coalescer, VNET_HDR_LEN};

/// RFC 1071, written out plainly (independent of gso.rs's vectorised sum): big-endian 16-bit words, an odd last
/// byte padded with zero, end-around carry; folded, not complemented.
fn checksum_fold(data: &[u8]) -> u16 {
    let mut s: u64 = 0;
    for c in data.chunks(2) {
        s += u64::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    fold(s)
}

const CANARY: u8 = 0xa5;

/// A TCP packet's parts, as built or as found.
#[derive(Debug, Clone)]
struct Tcp {
    v6: bool,
    ip_len: usize,
    hlen: usize,
    pkt: Vec<u8>,
}

fn tcp_layout(pkt: &[u8]) -> Option<(bool, usize, usize)> {
    let v6 = match pkt.first()? >> 4 {
        4 if pkt.len() >= 20 && pkt[9] == 6 => false,
        6 if pkt.len() >= 40 && pkt[6] == 6 => true,
        _ => return None,
    };
    let ip_len = if v6 {
        40
    } else {
        usize::from(pkt[0] & 0xf) * 4
    };
    if ip_len < 20 || pkt.len() < ip_len + 20 {
        return None;
    }
    let hlen = ip_len + usize::from(pkt[ip_len + 12] >> 4) * 4;
    (hlen >= ip_len + 20 && pkt.len() >= hlen).then_some((v6, ip_len, hlen))
}

/// The pseudo-header sum (RFC 793 3.1, RFC 8200 8.1), unfolded, of a TCP segment of `l4` bytes.
fn pseudo(pkt: &[u8], v6: bool, l4: usize) -> u64 {
    let addrs = if v6 { &pkt[8..40] } else { &pkt[12..20] };
    u64::from(checksum_fold(addrs)) + 6 + l4 as u64
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Whether the TCP checksum of `seg` verifies (the one's-complement sum over pseudo-header and segment is
/// 0xffff).
fn tcp_ok(seg: &[u8], v6: bool, ip_len: usize) -> bool {
    let l4 = seg.len() - ip_len;
    fold(u64::from(checksum_fold(&seg[ip_len..])) + pseudo(seg, v6, l4)) == 0xffff
}

fn build(u: &mut Unstructured<'_>) -> Result<(Tcp, u16)> {
    let v6: bool = u.arbitrary()?;
    // TSO sizes: 1..=1500, and never more than 64 segments (a real super-packet is at most 64 KiB).
    let mss: u16 = u.int_in_range(1..=1500)?;
    let ip_opts = if v6 {
        0
    } else {
        usize::from(u.int_in_range(0u8..=10)?) * 4
    };
    let tcp_opts = usize::from(u.int_in_range(0u8..=10)?) * 4;
    let ip_len = if v6 { 40 } else { 20 + ip_opts };
    let hlen = ip_len + 20 + tcp_opts;
    let payload = usize::from(u.int_in_range(0u16..=4000)?).min(64 * usize::from(mss));
    let mut pkt = vec![0u8; hlen + payload];
    let fill = u.bytes(u.len().min(hlen + payload))?;
    pkt[..fill.len()].copy_from_slice(fill);
    if v6 {
        pkt[0] = 0x60 | (pkt[0] & 0xf);
        let l = (pkt.len() - 40) as u16;
        pkt[4..6].copy_from_slice(&l.to_be_bytes());
        pkt[6] = 6;
    } else {
        pkt[0] = 0x40 | (ip_len / 4) as u8;
        let l = pkt.len() as u16;
        pkt[2..4].copy_from_slice(&l.to_be_bytes());
        pkt[6] &= 0x40; // DF at most: not a fragment
        pkt[7] = 0;
        pkt[9] = 6;
    }
    pkt[ip_len + 12] = (((20 + tcp_opts) / 4) as u8) << 4;
    Ok((
        Tcp {
            v6,
            ip_len,
            hlen,
            pkt,
        },
        mss,
    ))
}

fn vnet(
    flags: u8,
    gso_type: u8,
    hdr_len: usize,
    gso_size: u16,
    start: usize,
    off: u16,
) -> [u8; VNET_HDR_LEN] {
    let mut b = [0u8; VNET_HDR_LEN];
    b[0] = flags;
    b[1] = gso_type;
    b[2..4].copy_from_slice(&(hdr_len as u16).to_le_bytes());
    b[4..6].copy_from_slice(&gso_size.to_le_bytes());
    b[6..8].copy_from_slice(&(start as u16).to_le_bytes());
    b[8..10].copy_from_slice(&off.to_le_bytes());
    b
}

/// Runs `segment` on `pkt` with the daemon's kind of layout and checks everything about the result. Returns the
/// segments when it succeeded.
fn run_segment(
    hdr: &[u8; VNET_HDR_LEN],
    pkt: &[u8],
    at_extra: usize,
    trailer: usize,
) -> Option<Vec<Vec<u8>>> {
    let front = 16; // an ESP header with an 8-byte IV
    let at = front + at_extra;
    let mss = usize::from(u16::from_le_bytes([hdr[4], hdr[5]]));
    // The stride the daemon would pass: ESP header, the segment, padding and ICV.
    let layout = tcp_layout(pkt);
    let seg_len_guess = layout.map_or(0, |(_, _, hlen)| hlen + mss.min(pkt.len() - hlen));
    let stride = front + seg_len_guess + trailer;
    let count_guess = layout.map_or(1, |(_, _, hlen)| {
        (pkt.len() - hlen).div_ceil(mss.max(1)).max(1)
    });
    let cap = (at + pkt.len()).max(count_guess.min(4096) * stride + front) + 64;
    let mut buf = vec![CANARY; cap];
    buf[at..at + pkt.len()].copy_from_slice(pkt);
    let init = buf.clone();
    let res = segment(&mut buf, at, pkt.len(), hdr, front, stride);
    let Ok((count, seg_len, last_len)) = res else {
        return None;
    };
    let (v6, ip_len, hlen) = layout.expect("segment accepted a packet that is not TCP/IP");
    assert_eq!(
        usize::from(u16::from_le_bytes([hdr[6], hdr[7]])),
        ip_len,
        "csum_start is not the IP header"
    );
    assert!(mss > 0);
    let payload = pkt.len() - hlen;
    assert_eq!(count, payload.div_ceil(mss).max(1), "segment count");
    assert_eq!(seg_len, hlen + mss.min(payload));
    assert_eq!(last_len, hlen + payload - (count - 1) * mss);
    let seq0 = u32::from_be_bytes(pkt[ip_len + 4..ip_len + 8].try_into().unwrap());
    let id0 = u16::from_be_bytes([pkt[4], pkt[5]]);
    let flags0 = pkt[ip_len + 13];
    let mut segs = Vec::with_capacity(count);
    let mut joined = Vec::with_capacity(payload);
    for i in 0..count {
        let start = i * stride + front;
        let len = if i + 1 == count { last_len } else { seg_len };
        assert!(start + len <= buf.len());
        // From this segment's end to the next one's start (or the end of the buffer): never written.
        let gap_end = if i + 1 < count {
            (i + 1) * stride + front
        } else {
            buf.len()
        };
        assert!(
            buf[start + len..gap_end] == init[start + len..gap_end],
            "segment {i} wrote past its end"
        );
        if i == 0 {
            assert!(
                buf[..start] == init[..start],
                "segment wrote before the first slot"
            );
        }
        let seg = buf[start..start + len].to_vec();
        if v6 {
            assert_eq!(
                usize::from(u16::from_be_bytes([seg[4], seg[5]])) + 40,
                len,
                "IPv6 payload length"
            );
        } else {
            assert_eq!(
                usize::from(u16::from_be_bytes([seg[2], seg[3]])),
                len,
                "IPv4 total length"
            );
            assert_eq!(
                checksum_fold(&seg[..ip_len]),
                0xffff,
                "IPv4 header checksum of segment {i}"
            );
            assert_eq!(
                u16::from_be_bytes([seg[4], seg[5]]),
                id0.wrapping_add(i as u16),
                "IPv4 id"
            );
        }
        assert!(
            tcp_ok(&seg, v6, ip_len),
            "TCP checksum of segment {i}/{count}"
        );
        let seq = u32::from_be_bytes(seg[ip_len + 4..ip_len + 8].try_into().unwrap());
        assert_eq!(
            seq,
            seq0.wrapping_add((i * mss) as u32),
            "sequence number of segment {i}"
        );
        let f = seg[ip_len + 13];
        let mut want = flags0;
        if i + 1 != count {
            want &= !0x09;
        }
        if i != 0 {
            want &= !0x80;
        }
        assert_eq!(f, want, "TCP flags of segment {i}/{count}");
        // Every other header byte is the original's (ranges between the variable fields).
        let tcp = [
            ip_len..ip_len + 4,
            ip_len + 8..ip_len + 13,
            ip_len + 14..ip_len + 16,
            ip_len + 18..hlen,
        ];
        let ip = if v6 { [0..4, 6..ip_len] } else { [0..2, 6..10] };
        let v4_addrs = if v6 { 0..0 } else { 12..ip_len };
        for r in tcp.into_iter().chain(ip).chain([v4_addrs]) {
            assert!(
                seg[r.clone()] == pkt[r.clone()],
                "header bytes {r:?} of segment {i} changed"
            );
        }
        joined.extend_from_slice(&seg[hlen..]);
        segs.push(seg);
    }
    assert_eq!(
        joined,
        pkt[hlen..],
        "segment payloads differ from the super-packet's"
    );
    Some(segs)
}

fn payload_of(pkt: &[u8]) -> &[u8] {
    match tcp_layout(pkt) {
        Some((_, _, hlen)) => &pkt[hlen..],
        None => pkt,
    }
}

/// Checks one TUN write of the coalescer against the packets pushed into that run.
fn check_take(out: &[u8], run: &[Vec<u8>]) {
    assert!(!run.is_empty(), "take returned a write for an empty run");
    let (h, pkt) = out.split_at(VNET_HDR_LEN);
    if h[1] == 0 {
        assert_eq!(
            h, [0u8; VNET_HDR_LEN],
            "plain write with a non-zero virtio-net header"
        );
        assert_eq!(
            run.len(),
            1,
            "{} packets left in one plain write",
            run.len()
        );
        assert_eq!(pkt, &run[0][..], "single packet changed");
        return;
    }
    assert!(run.len() >= 2, "GSO header on a single segment");
    let (v6, ip_len, hlen) = tcp_layout(pkt).expect("merged packet is TCP");
    let first = tcp_layout(&run[0]).expect("first of a run is TCP");
    assert_eq!((v6, ip_len, hlen), first);
    let want = vnet(
        1,
        if v6 { 4 } else { 1 },
        hlen,
        (run[0].len() - hlen) as u16,
        ip_len,
        16,
    );
    assert_eq!(h, want, "virtio-net header of a merged packet");
    if v6 {
        assert_eq!(
            usize::from(u16::from_be_bytes([pkt[4], pkt[5]])) + 40,
            pkt.len()
        );
    } else {
        assert_eq!(usize::from(u16::from_be_bytes([pkt[2], pkt[3]])), pkt.len());
        assert_eq!(
            checksum_fold(&pkt[..ip_len]),
            0xffff,
            "IPv4 checksum of a merged packet"
        );
    }
    assert_eq!(
        u16::from_be_bytes([pkt[ip_len + 16], pkt[ip_len + 17]]),
        fold(pseudo(pkt, v6, pkt.len() - ip_len)),
        "partial checksum field"
    );
    let joined: Vec<u8> = run
        .iter()
        .flat_map(|p| payload_of(p).iter().copied())
        .collect();
    assert_eq!(&pkt[hlen..], &joined[..], "merged payload");
    // TSO of the merged packet gives back the pushed segments' payloads.
    let segs = run_segment(&want, pkt, 0, 18).expect("merged packet does not segment");
    assert_eq!(segs.len(), run.len());
    for (s, p) in segs.iter().zip(run) {
        assert_eq!(payload_of(s), payload_of(p));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    match mode % 3 {
        0 => {
            let Ok(h) = u.arbitrary::<[u8; VNET_HDR_LEN]>() else {
                return;
            };
            let (at_extra, trailer) = (
                usize::from(u.arbitrary::<u8>().unwrap_or(0) % 64),
                usize::from(u.arbitrary::<u8>().unwrap_or(0) % 64),
            );
            let pkt = u.take_rest();
            match is_tcp_gso(&h) {
                Ok(true) => {
                    run_segment(&h, pkt, at_extra, trailer);
                }
                Ok(false) => {
                    let mut p = pkt.to_vec();
                    let _ = complete_checksum(&h, &mut p);
                    assert_eq!(p.len(), pkt.len());
                }
                Err(_) => {}
            }
        }
        1 => {
            let Ok((t, mss)) = build(&mut u) else { return };
            let ecn = if u.arbitrary::<bool>().unwrap_or(false) {
                0x80
            } else {
                0
            };
            let gso_type = if t.v6 { 4 } else { 1 } | ecn;
            let mut pkt = t.pkt.clone();
            let l4 = pkt.len() - t.ip_len;
            let ps = fold(pseudo(&pkt, t.v6, l4));
            pkt[t.ip_len + 16..t.ip_len + 18].copy_from_slice(&ps.to_be_bytes());
            let mut h = vnet(1, gso_type, t.hlen, mss, t.ip_len, 16);
            // Partial checksum only (no segmentation): the completed checksum must verify.
            let mut single = pkt.clone();
            complete_checksum(&vnet(1, 0, t.hlen, 0, t.ip_len, 16), &mut single).expect("in range");
            assert!(
                tcp_ok(&single, t.v6, t.ip_len),
                "completed partial checksum does not verify"
            );
            // Spoil up to 4 bytes of the packet or header (the VM controls both).
            for _ in 0..u.int_in_range(0u8..=4).unwrap_or(0) {
                let (Ok(pos), Ok(x)) = (u.arbitrary::<u16>(), u.arbitrary::<u8>()) else {
                    break;
                };
                let pos = usize::from(pos) % (pkt.len() + VNET_HDR_LEN);
                if pos < VNET_HDR_LEN {
                    h[pos] ^= x;
                } else {
                    pkt[pos - VNET_HDR_LEN] ^= x;
                }
            }
            let at_extra = usize::from(u.arbitrary::<u8>().unwrap_or(0) % 64);
            let trailer = usize::from(u.arbitrary::<u8>().unwrap_or(18) % 64);
            if is_tcp_gso(&h) == Ok(true) {
                run_segment(&h, &pkt, at_extra, trailer);
            }
        }
        _ => {
            let Ok((t, mss)) = build(&mut u) else { return };
            let h = vnet(1, if t.v6 { 4 } else { 1 }, t.hlen, mss, t.ip_len, 16);
            let Some(mut segs) = run_segment(&h, &t.pkt, 0, 18) else {
                return;
            };
            // Perturb the stream: drop, swap, damage a header byte, insert a foreign packet.
            for _ in 0..u.int_in_range(0u8..=4).unwrap_or(0) {
                let Ok(op) = u.arbitrary::<u8>() else { break };
                let i = usize::from(u.arbitrary::<u8>().unwrap_or(0)) % segs.len().max(1);
                match op % 4 {
                    0 if segs.len() > 1 => {
                        segs.remove(i);
                    }
                    1 if segs.len() > 1 => {
                        let j = (i + 1) % segs.len();
                        segs.swap(i, j);
                    }
                    2 if !segs[i].is_empty() => {
                        let pos = usize::from(u.arbitrary::<u8>().unwrap_or(0))
                            % segs[i].len().min(t.hlen);
                        segs[i][pos] ^= u.arbitrary::<u8>().unwrap_or(1).max(1);
                    }
                    _ => {
                        let n = usize::from(u.arbitrary::<u8>().unwrap_or(0));
                        let raw = u.bytes(n.min(u.len())).unwrap_or_default().to_vec();
                        segs.insert(i.min(segs.len()), raw);
                    }
                }
            }
            let mut out = vec![0u8; VNET_HDR_LEN + 65535];
            let mut c = Coalescer::new(&mut out);
            let mut run: Vec<Vec<u8>> = Vec::new();
            for s in &segs {
                if s.is_empty() {
                    continue;
                }
                if !c.push(s) {
                    let w = c.take().to_vec();
                    check_take(&w, &run);
                    run.clear();
                    assert!(c.is_empty());
                    assert!(c.push(s), "push into an empty run refused");
                }
                run.push(s.clone());
            }
            let w = c.take().to_vec();
            if run.is_empty() {
                assert!(w.is_empty());
            } else {
                check_take(&w, &run);
            }
        }
    }
});
