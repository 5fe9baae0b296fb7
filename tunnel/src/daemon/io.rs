//! The datapath's side of the event loop: what the daemon does when the TUN, the ESP-in-UDP socket or the raw
//! ESP socket is readable. Batches both ways: TSO super-packets from the TUN are cut into segments whose ESP
//! datagrams leave with one UDP GSO send (`sendmmsg` for raw ESP); GRO batches (`recvmmsg` for raw ESP) are
//! decrypted in place and their TCP segments merged into one TUN write. Nothing allocates per packet: the
//! buffers are made once, in [`Buffers::new`].

use std::net::SocketAddr;
use std::time::Instant;

use esp::framing::{self, UdpPayload};
use esp::{PacketBuf, HEADROOM, TAILROOM};

use super::datapath::Wire;
use super::{batch, gso, sockets, Daemon, BATCH};

/// Where a TUN read puts its packet in the transmit buffer: room in front for the virtio-net header and ESP.
const TUN_AT: usize = HEADROOM;
/// The transmit buffer: a 64 KiB super-packet cut into segments of at least 536 bytes of payload (122 at most),
/// each with up to 120 bytes of headers and the ESP overhead, or one packet of up to the largest MTU.
const TUN_BUF: usize = TUN_AT + 65535 + 122 * (120 + HEADROOM + TAILROOM);
/// The datapath's buffers, made once.
pub(super) struct Buffers {
    /// TUN reads and the ESP datagrams made of them.
    pub(super) tx: batch::TxBatch,
    /// UDP GRO receives.
    udp: Vec<u8>,
    /// Merged TCP segments on their way to the TUN.
    coalesce: Vec<u8>,
    /// Raw ESP receives, one datagram per `raw_slot` bytes.
    raw: Vec<u8>,
    raw_slot: usize,
}

impl Buffers {
    pub(super) fn new(mtu: usize) -> Buffers {
        // Raw ESP arrives with its IPv4 header: a slot holds the largest packet the peer's TUN MTU allows.
        let raw_slot = (mtu + 60 + HEADROOM + TAILROOM).max(2048);
        Buffers {
            // A TUN read lands at TUN_AT (its virtio-net header just before); its segments then fill the buffer
            // from the end of the pending datagrams as back-to-back ESP datagrams (see gso::segment).
            tx: batch::TxBatch::new(TUN_AT, TUN_BUF),
            udp: vec![0u8; 65536 + 4096],
            coalesce: vec![0u8; gso::VNET_HDR_LEN + 65535],
            raw: vec![0u8; raw_slot * sockets::MMSG_MAX.min((256 << 10) / raw_slot).max(1)],
            raw_slot,
        }
    }
}

impl Daemon {
    /// The TUN was readable and one read returned `n` bytes (virtio-net header included): handle it, drain
    /// what else is queued (one wake-up, many reads), and send what is pending.
    pub(super) fn on_tun_readable(&mut self, bufs: &mut Buffers, n: usize) -> std::io::Result<()> {
        let tx = &mut bufs.tx;
        self.on_tun(tx, n - gso::VNET_HDR_LEN);
        for _ in 1..BATCH {
            if !tx.has_room() {
                self.flush(tx);
            }
            match self.tun.get_ref().read_vnet(tx.read_buf()) {
                Ok(n) => self.on_tun(tx, n - gso::VNET_HDR_LEN),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        self.flush(tx);
        Ok(())
    }

    /// UDP 4500 is readable: receive GRO batches until none is queued (or BATCH of them), decrypt in place,
    /// write the inner packets to the TUN, merged where they continue one TCP flow.
    pub(super) fn on_udp4500_readable(&mut self, bufs: &mut Buffers) -> std::io::Result<()> {
        let mut merge = gso::Coalescer::new(&mut bufs.coalesce);
        for _ in 0..BATCH {
            match sockets::recv_gro(&self.udp4500, &mut bufs.udp) {
                Ok((len, from, seg)) => {
                    for d in bufs.udp[..len].chunks_mut(seg.max(1)) {
                        self.on_udp4500(d, from, &mut merge);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if !merge.is_empty() {
            self.deliver_vnet(merge.take());
        }
        Ok(())
    }

    /// The raw ESP socket is readable: recvmmsg, up to 64 datagrams per call, decrypted in place and merged
    /// for the TUN as for UDP.
    pub(super) fn on_raw_readable(&mut self, bufs: &mut Buffers) -> std::io::Result<()> {
        let mut merge = gso::Coalescer::new(&mut bufs.coalesce);
        let mut lens = [0usize; sockets::MMSG_MAX];
        let slot = bufs.raw_slot;
        let slots = (bufs.raw.len() / slot).clamp(1, sockets::MMSG_MAX);
        for _ in 0..BATCH {
            match self
                .raw
                .try_recv_many(&mut bufs.raw, slot, &mut lens[..slots])
            {
                Ok(n) => {
                    for (d, len) in bufs.raw.chunks_mut(slot).zip(lens).take(n) {
                        self.on_raw(&mut d[..len], &mut merge);
                    }
                    if n < slots {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        if !merge.is_empty() {
            self.deliver_vnet(merge.take());
        }
        Ok(())
    }

    /// Encrypts what one TUN read put at `tx.read_at()` (its virtio-net header in front, `len` bytes of packet
    /// behind). A TCP super-packet is cut into segments laid out so that their ESP datagrams lie back to back,
    /// and goes out at once with one UDP GSO send per 64 KiB; any other packet joins the pending batch of
    /// equal-sized datagrams (ACKs, mostly), sent by [`Daemon::flush`] with one GSO send or `sendmmsg`.
    fn on_tun(&mut self, tx: &mut batch::TxBatch, len: usize) {
        let at = tx.read_at();
        let buf = tx.buf_mut();
        let hdr_bytes: &[u8; gso::VNET_HDR_LEN] = buf[at - gso::VNET_HDR_LEN..at]
            .try_into()
            .expect("10 bytes");
        let hdr = gso::VnetHdr::parse(hdr_bytes);
        let is_gso = match gso::is_tcp_gso(&hdr) {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!("TUN packet dropped: {e}");
                return;
            }
        };
        if !is_gso && gso::complete_checksum(&hdr, &mut buf[at..at + len]).is_err() {
            tracing::debug!("TUN packet with bad checksum offsets dropped");
            return;
        }
        let Some(t) = self.datapath.out_transform(&buf[at..at + len]) else {
            return;
        };
        let front = t.header_overhead();
        let base = tx.used();
        let buf = &mut tx.buf_mut()[base..];
        let at = at - base;
        let segs = if is_gso {
            match gso::segment(buf, at, len, &hdr, front, |l| t.esp_len(l)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!("TUN super-packet dropped: {e}");
                    return;
                }
            }
        } else {
            // One packet: move it to where its ESP datagram continues the batch.
            buf.copy_within(at..at + len, front);
            gso::Segments {
                count: 1,
                seg_len: len,
                last_len: len,
            }
        };
        let stride = t.esp_len(segs.seg_len);
        let mut wire = None;
        let mut done = 0;
        for i in 0..segs.count {
            let inner = if i + 1 == segs.count {
                segs.last_len
            } else {
                segs.seg_len
            };
            let mut pkt = PacketBuf::new(
                &mut buf[i * stride..i * stride + t.esp_len(inner)],
                front,
                front + inner,
            );
            match self.datapath.encap(&mut pkt) {
                Some(w) => wire = Some(w),
                None => break,
            }
            debug_assert_eq!((pkt.start(), pkt.len()), (0, t.esp_len(inner)));
            done += 1;
        }
        let Some(wire) = wire else {
            return;
        };
        let bytes = if done == segs.count {
            (done - 1) * stride + t.esp_len(segs.last_len)
        } else {
            done * stride
        };
        if is_gso {
            // What is pending goes first, then the segments, in order.
            self.flush(tx);
            self.send_datagrams(&tx.buf()[base..base + bytes], stride, wire);
            tx.clear();
        } else if !tx.append(base, bytes, wire) {
            // It does not continue the pending batch: send that, and this one starts the next.
            self.flush_prefix(tx, base);
            tx.buf_mut().copy_within(base..base + bytes, 0);
            tx.clear();
            let appended = tx.append(0, bytes, wire);
            debug_assert!(appended);
        }
    }

    /// Sends the pending batch of datagrams.
    fn flush(&self, tx: &mut batch::TxBatch) {
        self.flush_prefix(tx, tx.used());
        tx.clear();
    }

    fn flush_prefix(&self, tx: &batch::TxBatch, end: usize) {
        if let Some((wire, stride)) = tx.pending() {
            self.send_datagrams(&tx.buf()[..end], stride, wire);
        }
    }

    /// Sends back-to-back datagrams of `stride` bytes (the last may be shorter): UDP GSO, or sendmmsg for raw
    /// ESP.
    fn send_datagrams(&self, data: &[u8], stride: usize, wire: Wire) {
        match wire {
            Wire::Udp(to) => self.send_udp_gso(data, stride, to),
            Wire::Raw(to) => {
                // Raw ESP has no GSO: sendmmsg, up to 64 datagrams per call.
                if let Err(e) = self.raw.send_many(data, stride, to) {
                    tracing::debug!("sending ESP: {e}");
                }
            }
        }
    }

    /// Sends back-to-back ESP datagrams of `stride` bytes (the last may be shorter) in as few UDP GSO sends as
    /// the kernel's limits allow.
    fn send_udp_gso(&self, data: &[u8], stride: usize, to: SocketAddr) {
        let per_send =
            (sockets::GSO_MAX_BYTES / stride).clamp(1, sockets::GSO_MAX_SEGMENTS) * stride;
        for chunk in data.chunks(per_send) {
            if let Err(e) = sockets::send_gso(&self.udp4500, chunk, stride, to) {
                tracing::debug!("sending ESP (GSO): {e}");
            }
        }
    }

    /// Writes a virtio-net header and packet (possibly a coalesced super-packet) to the TUN.
    fn deliver_vnet(&self, data: &[u8]) {
        if let Err(e) = self.tun.get_ref().write_vnet(data) {
            tracing::debug!("writing to the TUN: {e}");
        }
    }

    fn on_udp4500(&mut self, data: &mut [u8], from: SocketAddr, merge: &mut gso::Coalescer<'_>) {
        match framing::classify_udp(data) {
            UdpPayload::Ike { offset } => {
                self.endpoint
                    .handle(Instant::now(), &data[offset..], from, ike::sa::NAT_T_PORT);
            }
            UdpPayload::Esp => {
                let mut pkt = PacketBuf::full(data);
                if self.datapath.decap(&mut pkt) && !merge.push(pkt.as_slice()) {
                    // Not a continuation of the pending run: write that, start a new one.
                    self.deliver_vnet(merge.take());
                    merge.push(pkt.as_slice());
                }
            }
            UdpPayload::Keepalive | UdpPayload::Invalid => {}
        }
    }

    fn on_raw(&mut self, data: &mut [u8], merge: &mut gso::Coalescer<'_>) {
        let Some(ip) = framing::parse_ipv4(data) else {
            return;
        };
        if ip.protocol != framing::IPPROTO_ESP {
            return;
        }
        let mut pkt = PacketBuf::new(data, ip.payload_offset, ip.payload_end);
        if self.datapath.decap(&mut pkt) && !merge.push(pkt.as_slice()) {
            self.deliver_vnet(merge.take());
            merge.push(pkt.as_slice());
        }
    }
}
