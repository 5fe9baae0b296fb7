//! The transmit path: packets read from one TUN queue are encrypted and sent. The daemon's task runs it for
//! queue 0 and each transmit worker (`workers.rs`) for its own queue, on the same code: TSO super-packets are
//! cut into segments laid out back to back as ESP datagrams and leave with one UDP GSO send (for raw ESP, one
//! batch through the AF_PACKET transmit ring, `rawtx/`); smaller packets join a batch of equal-sized datagrams that leaves the same way.
//!
//! A batch of reads holds the read lock of the outbound table once; each burst of segments draws its sequence
//! numbers from the SA at once (`esp::OutboundSa::reserve`). Nothing allocates per packet.

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

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use esp::{PacketBuf, HEADROOM, TAILROOM};

use super::datapath::{Outbound, SharedOutbound, Wire};
use super::logcap::Limiter;
use super::{batch, offload, rawtx, sockets, BATCH};

/// What a transmitter needs: the outbound table and its own descriptors of the two ESP sockets.
pub(super) struct Transmitter {
    out: SharedOutbound,
    udp: OwnedFd,
    raw: rawtx::RawTx,
    /// TUN read errors survived, shared by the daemon's task and the workers.
    errors: Arc<TunErrors>,
    /// A dual-stack host's sockets of the other family: ESP to a peer of that family leaves through them.
    second: Option<SecondFds>,
}

/// Descriptors of the second underlay address's ESP sockets (see `sockets::Second`).
struct SecondFds {
    v6: bool,
    udp: OwnedFd,
    raw: OwnedFd,
}

impl SecondFds {
    fn try_clone(&self) -> io::Result<SecondFds> {
        Ok(SecondFds {
            v6: self.v6,
            udp: self.udp.try_clone()?,
            raw: self.raw.try_clone()?,
        })
    }

    /// Whether ESP to `wire` leaves through these.
    fn carries(&self, wire: &Wire) -> bool {
        let v6 = match wire {
            Wire::Udp(to) => to.is_ipv6(),
            Wire::Raw(to) => to.is_ipv6(),
        };
        v6 == self.v6
    }

    fn send(&self, data: &[u8], stride: usize, wire: Wire) {
        match wire {
            Wire::Udp(to) => send_udp_gso(&self.udp, data, stride, to),
            Wire::Raw(to) => {
                if let Err(e) = sockets::send_many(&self.raw, data, stride, to) {
                    tracing::debug!("sending ESP: {e}");
                }
            }
        }
    }
}

/// Sends back-to-back ESP datagrams of `stride` bytes (the last may be shorter) on `udp` in as few UDP GSO
/// sends as the kernel's limits allow.
fn send_udp_gso(udp: &OwnedFd, data: &[u8], stride: usize, to: SocketAddr) {
    let per_send = (sockets::GSO_MAX_BYTES / stride).clamp(1, sockets::GSO_MAX_SEGMENTS) * stride;
    for chunk in data.chunks(per_send) {
        if let Err(e) = sockets::send_gso(udp, chunk, stride, to) {
            tracing::debug!("sending ESP (GSO): {e}");
        }
    }
}

/// TUN read errors survived (`drops.tun_errors` in the status) and the limiter of their log lines.
struct TunErrors {
    count: AtomicU64,
    limit: Mutex<Limiter>,
}

/// A TUN read failed in a way no later read will fix: the descriptor is closed or not a TUN queue (a bug).
#[derive(Debug, thiserror::Error)]
#[error(
    "reading the TUN interface failed: {0}; its queue descriptor is closed or invalid, so vmsecd stops (under \
     systemd it is restarted: Restart=on-failure)"
)]
pub(super) struct TunUnusable(#[source] io::Error);

/// Where a TUN read puts its packet in the transmit buffer: room in front for the virtio-net header and ESP.
const TUN_AT: usize = HEADROOM;
/// The transmit buffer: a 64 KiB super-packet cut into segments of at least 536 bytes of payload (122 at most),
/// each with up to 120 bytes of headers and the ESP overhead, or one packet of up to the largest MTU.
const TUN_BUF: usize = TUN_AT + 65535 + 122 * (120 + HEADROOM + TAILROOM);
/// A transmit buffer: a TUN read lands at TUN_AT (its virtio-net header just before); its segments then fill the
/// buffer from the end of the pending datagrams as back-to-back ESP datagrams (see offload::segment).
pub(super) fn tx_batch() -> batch::TxBatch {
    batch::TxBatch::new(TUN_AT, TUN_BUF)
}

impl Transmitter {
    /// `ring`: raw ESP may leave through the transmit ring (`raw_tx = "ring"`, the default).
    pub(super) fn new(out: SharedOutbound, udp: OwnedFd, raw: OwnedFd, ring: bool) -> Transmitter {
        Transmitter {
            out,
            udp,
            raw: rawtx::RawTx::new(raw, ring),
            errors: Arc::new(TunErrors {
                count: AtomicU64::new(0),
                limit: Mutex::new(Limiter::new(
                    "TUN read errors",
                    super::logcap::BURST,
                    super::logcap::PER_SECOND,
                )),
            }),
            second: None,
        }
    }

    /// A dual-stack host: ESP to peers of the other family leaves through that family's sockets (`v6` for
    /// IPv6 ones). Set before the workers clone this transmitter.
    pub(super) fn set_second(&mut self, v6: bool, udp: OwnedFd, raw: OwnedFd) {
        self.second = Some(SecondFds { v6, udp, raw });
    }

    /// Another transmitter on the same table and sockets (for a worker).
    pub(super) fn try_clone(&self) -> io::Result<Transmitter> {
        Ok(Transmitter {
            out: self.out.clone(),
            udp: self.udp.try_clone()?,
            raw: self.raw.try_clone()?,
            errors: self.errors.clone(),
            second: self.second.as_ref().map(SecondFds::try_clone).transpose()?,
        })
    }

    /// Raw ESP packets sent so far through the ring and the raw socket, by every transmitter of this table.
    pub(super) fn raw_esp_out(&self) -> super::control::RawEspOut {
        self.raw.sent()
    }

    /// TUN read errors survived so far, by every transmitter of this table.
    pub(super) fn tun_errors(&self) -> u64 {
        self.errors.count.load(Ordering::Relaxed)
    }

    /// A TUN read failed with something other than `WouldBlock`: counted and logged (rate-limited), and
    /// survived, as the socket receive errors are (a short read, ENOBUFS, EINTR, EIO while the interface goes
    /// down concern one read or one moment). Only EBADF, a descriptor closed under us, is fatal.
    pub(super) fn survive_read_error(&self, e: io::Error) -> Result<(), TunUnusable> {
        if e.raw_os_error() == Some(libc::EBADF) {
            return Err(TunUnusable(e));
        }
        let total = self.errors.count.fetch_add(1, Ordering::Relaxed) + 1;
        let allowed = self
            .errors
            .limit
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .allow(Instant::now());
        if allowed {
            tracing::warn!(
                total,
                "TUN read error, counted and ignored (drops.tun_errors in `vmsecd status --json`): {e}"
            );
        }
        Ok(())
    }

    /// The queue was readable and one read put `n` bytes (virtio-net header included) at `tx.read_buf()`:
    /// handles it, drains what else is queued with `read` (one wake-up, up to [`BATCH`] reads), and sends
    /// what is pending.
    pub(super) fn on_readable(
        &self,
        tx: &mut batch::TxBatch,
        n: usize,
        mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    ) -> Result<(), TunUnusable> {
        let out = self.out.read();
        self.on_tun(&out, tx, n.saturating_sub(offload::VNET_HDR_LEN));
        let mut failed = None;
        for _ in 1..BATCH {
            if !tx.has_room() {
                self.flush(tx);
            }
            match read(tx.read_buf()) {
                Ok(n) => self.on_tun(&out, tx, n.saturating_sub(offload::VNET_HDR_LEN)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // What was read before goes out; the next wake-up reads again.
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        self.flush(tx);
        failed.map_or(Ok(()), |e| self.survive_read_error(e))
    }

    /// Encrypts what one TUN read put at `tx.read_at()` (its virtio-net header in front, `len` bytes of packet
    /// behind). A TCP super-packet is cut into segments laid out so that their ESP datagrams lie back to back,
    /// and goes out at once with one UDP GSO send per 64 KiB; any other packet joins the pending batch of
    /// equal-sized datagrams (ACKs, mostly), sent by [`Transmitter::flush`] with one GSO send or one ring batch.
    fn on_tun(&self, out: &Outbound, tx: &mut batch::TxBatch, len: usize) {
        let at = tx.read_at();
        // The read put its header and packet there (`read_buf`): the checked forms cost one comparison each.
        let Some((hdr_bytes, pkt)) = at
            .checked_sub(offload::VNET_HDR_LEN)
            .and_then(|h| tx.buf_mut().get_mut(h..at + len))
            .and_then(|b| b.split_first_chunk_mut::<{ offload::VNET_HDR_LEN }>())
        else {
            return;
        };
        let hdr = offload::VnetHdr::parse(hdr_bytes);
        let is_gso = match offload::is_tcp_gso(&hdr) {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!("TUN packet dropped: {e}");
                return;
            }
        };
        if !is_gso && offload::complete_checksum(&hdr, pkt).is_err() {
            tracing::debug!("TUN packet with bad checksum offsets dropped");
            return;
        }
        // All segments of a super-packet share its addresses, so one lookup serves them all.
        let Some((sa, wire)) = out.route(pkt) else {
            return;
        };
        let t = sa.params().transform;
        let front = t.header_overhead();
        let base = tx.used();
        let Some(buf) = tx.buf_mut().get_mut(base..) else {
            return;
        };
        let at = at - base;
        let segs = if is_gso {
            match offload::segment(buf, at, len, &hdr, front, |l| t.esp_len(l)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!("TUN super-packet dropped: {e}");
                    return;
                }
            }
        } else {
            // One packet: move it to where its ESP datagram continues the batch.
            buf.copy_within(at..at + len, front);
            offload::Segments {
                count: 1,
                seg_len: len,
                last_len: len,
            }
        };
        let stride = t.esp_len(segs.seg_len);
        let mut done = 0;
        if let Ok(mut seqs) = sa.reserve(segs.count as u64) {
            for i in 0..segs.count {
                let inner = segs.len(i);
                let Some(dgram) = buf.get_mut(i * stride..i * stride + t.esp_len(inner)) else {
                    break;
                };
                let mut pkt = PacketBuf::new(dgram, front, front + inner);
                if seqs.encap(&mut pkt).is_err() {
                    break;
                }
                debug_assert_eq!((pkt.start(), pkt.len()), (0, t.esp_len(inner)));
                done += 1;
            }
        }
        if done < segs.count {
            out.count_encap_failed((segs.count - done) as u64);
        }
        if done == 0 {
            return;
        }
        let bytes = if done == segs.count {
            (done - 1) * stride + t.esp_len(segs.last_len)
        } else {
            done * stride
        };
        if is_gso {
            // What is pending goes first, then the segments, in order.
            self.flush(tx);
            if let Some(d) = tx.buf().get(base..base + bytes) {
                self.send_datagrams(d, stride, wire);
            }
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
            if let Some(d) = tx.buf().get(..end) {
                self.send_datagrams(d, stride, wire);
            }
        }
    }

    /// Sends back-to-back datagrams of `stride` bytes (the last may be shorter): UDP GSO, or the transmit ring
    /// (or sendmmsg) for raw ESP.
    fn send_datagrams(&self, data: &[u8], stride: usize, wire: Wire) {
        if let Some(s) = self.second.as_ref().filter(|s| s.carries(&wire)) {
            return s.send(data, stride, wire);
        }
        match wire {
            Wire::Udp(to) => self.send_udp_gso(data, stride, to),
            Wire::Raw(to) => {
                // Raw ESP has no GSO: an AF_PACKET ring, or sendmmsg on the raw socket (rawtx.rs).
                if let Err(e) = self.raw.send(data, stride, to) {
                    tracing::debug!("sending ESP: {e}");
                }
            }
        }
    }

    /// Sends back-to-back ESP datagrams of `stride` bytes (the last may be shorter) in as few UDP GSO sends as
    /// the kernel's limits allow.
    fn send_udp_gso(&self, data: &[u8], stride: usize, to: SocketAddr) {
        send_udp_gso(&self.udp, data, stride, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::datapath::Datapath;

    fn transmitter() -> Transmitter {
        let dp = Datapath::new(&[("p".to_owned(), vec!["198.19.2.0/24".parse().unwrap()])]);
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        Transmitter::new(dp.outbound().clone(), udp.into(), other.into(), true)
    }

    /// Review item 10: a TUN read error other than WouldBlock (here EIO, then a short read) is counted and
    /// survived; only a closed descriptor (EBADF) ends the daemon, with a message that says so. No root needed:
    /// the reads are a closure, as the daemon's are.
    #[test]
    fn tun_read_errors_are_counted_and_survived_but_ebadf_is_fatal() {
        let t = transmitter();
        let mut batch = tx_batch();
        let mut errs = vec![
            io::Error::from_raw_os_error(libc::EIO),
            io::Error::new(
                io::ErrorKind::InvalidData,
                "TUN read shorter than its header",
            ),
        ]
        .into_iter();
        // The first read (zeros: no route, dropped) came from the caller; the drain then fails.
        for _ in 0..2 {
            let e = errs.next().unwrap();
            let mut once = Some(e);
            t.on_readable(&mut batch, offload::VNET_HDR_LEN + 20, |_| {
                Err(once
                    .take()
                    .unwrap_or_else(|| io::ErrorKind::WouldBlock.into()))
            })
            .expect("a TUN read error is survived");
        }
        // The daemon's own read (before `on_readable`) goes through the same door.
        t.survive_read_error(io::Error::from_raw_os_error(libc::ENOBUFS))
            .expect("survived");
        assert_eq!(t.tun_errors(), 3);
        let fatal = t
            .on_readable(&mut batch, offload::VNET_HDR_LEN + 20, |_| {
                Err(io::Error::from_raw_os_error(libc::EBADF))
            })
            .unwrap_err()
            .to_string();
        assert!(
            fatal.contains("TUN") && fatal.contains("vmsecd stops"),
            "{fatal}"
        );
        assert_eq!(t.tun_errors(), 3);
        // A worker's transmitter shares the count.
        let w = t.try_clone().unwrap();
        w.survive_read_error(io::Error::from_raw_os_error(libc::EIO))
            .unwrap();
        assert_eq!(t.tun_errors(), 4);
    }
}
