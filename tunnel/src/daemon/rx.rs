//! The receive path, on the daemon's task: what it does when the ESP-in-UDP socket or the raw ESP socket is
//! readable. GRO batches (`recvmmsg` for raw ESP) are decrypted in place and their TCP segments merged into one
//! TUN write (`offload::Coalescer`), on the TUN queue of the flow's transmit worker. IKE messages that arrive
//! on UDP 4500 go to the IKE endpoint. The transmit path is `tx.rs` (queue 0's reads are handed to it from
//! here, with their buffer).
//! Nothing allocates per packet: the buffers are made once, in [`Buffers::new`].

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

use std::net::SocketAddr;
use std::time::Instant;

use esp::framing::{self, UdpPayload};
use esp::{PacketBuf, HEADROOM, TAILROOM};

use tokio::io::unix::AsyncFdReadyGuard;

use super::{batch, offload, sockets, tx, Daemon, BATCH};
use crate::tun::Queue;

/// Frames taken from each AF_XDP socket per wake-up: as many as the raw socket's BATCH receives of up to 64.
const XDP_BATCH: u32 = (BATCH * sockets::MMSG_MAX) as u32;

/// One raw ESP receive slot: the largest IPv4 datagram (RFC 791 total length) and the room the in-place
/// decapsulation needs around it.
const RAW_SLOT: usize = 65535 + HEADROOM + TAILROOM;

/// The datapath's buffers, made once: the transmit batch of queue 0 (the TUN the daemon's task reads) and the
/// receive buffers.
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
        // Raw ESP arrives with its IPv4 header (over IPv6 without one), as the kernel reassembled it: a slot must hold the largest IPv4
        // datagram, not the largest our MTU allows. A kernel peer (Linux XFRM behind a stateful firewall, whose
        // conntrack reassembles the VMs' fragmented datagrams before they are encrypted) sends ESP packets of
        // up to 64 KiB in fragments; a smaller slot truncated them and they failed their ICV (found against
        // strongSwan with kernel ESP, tests/tests/kernel_strongswan.rs). The buffer is allocated zeroed and
        // only the pages a datagram reaches are ever touched, so the 4 MiB of slots cost little memory.
        let raw_slot = RAW_SLOT.max(mtu + 60 + HEADROOM + TAILROOM);
        Buffers {
            // A TUN read lands at TUN_AT (its virtio-net header just before); its segments then fill the buffer
            // from the end of the pending datagrams as back-to-back ESP datagrams (see offload::segment).
            tx: tx::tx_batch(),
            udp: vec![0u8; 65536 + 4096],
            coalesce: vec![0u8; offload::VNET_HDR_LEN + 65535],
            raw: vec![0u8; raw_slot * sockets::MMSG_MAX],
            raw_slot,
        }
    }
}

impl Daemon {
    /// The TUN was readable (`ready`): reads and hands what it read to the transmit path (`tx.rs`) with the
    /// transmit buffer, which lives here with the receive buffers, until a read finds nothing (or [`BATCH`]
    /// reads). A read that finds nothing clears the readiness, so that the loop's next wait sleeps.
    pub(super) fn on_tun_readable(
        &self,
        bufs: &mut Buffers,
        ready: &mut AsyncFdReadyGuard<'_, Queue>,
    ) -> Result<(), tx::TunUnusable> {
        let (r, drained) = self.read_tun(bufs);
        if drained {
            ready.clear_ready();
        }
        r
    }

    /// Reads queue 0 of the TUN without waiting and transmits what it finds (see [`Daemon::on_tun_readable`]);
    /// also whether a read found nothing (`WouldBlock`).
    fn read_tun(&self, bufs: &mut Buffers) -> (Result<(), tx::TunUnusable>, bool) {
        let q = self.tun.get_ref();
        let mut drained = false;
        let r = match q.read_vnet(bufs.tx.read_buf()) {
            Ok(n) => self.tx.on_readable(&mut bufs.tx, n, |b| {
                let r = q.read_vnet(b);
                drained |= matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
                r
            }),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                drained = true;
                Ok(())
            }
            Err(e) => self.tx.survive_read_error(e),
        };
        (r, drained)
    }

    /// After a receive batch wrote to queue 0 of the TUN: what the VM answered (an echo reply, TCP ACKs) was
    /// made inside that write, in the kernel's softirq, and is already queued on the TUN. Reading it now sends it
    /// at once, without first going back to epoll and through a turn of the loop (issue 15: about 10 us of an
    /// idle ping's round trip). Costs one read that finds nothing when the VM did not answer at once.
    fn read_tun_after_write(&self, bufs: &mut Buffers) -> Result<(), tx::TunUnusable> {
        if !self.wrote_tun0.take() {
            return Ok(());
        }
        self.read_tun(bufs).0
    }

    /// The end of a receive batch: the run of merged segments still pending goes to the TUN.
    fn deliver_rest(&self, merge: &mut offload::Coalescer<'_>) {
        if !merge.is_empty() {
            self.deliver_vnet(merge.take());
        }
    }

    /// UDP 4500 is readable: receive GRO batches until none is queued (or BATCH of them), decrypt in place,
    /// write the inner packets to the TUN, merged where they continue one TCP flow.
    pub(super) fn on_udp4500_readable(&mut self, bufs: &mut Buffers) -> anyhow::Result<()> {
        self.udp4500_batch(bufs, false)
    }

    /// [`Daemon::on_udp4500_readable`] on the first address's socket, or on the second's (`second`, a
    /// dual-stack host's other family).
    pub(super) fn udp4500_batch(&mut self, bufs: &mut Buffers, second: bool) -> anyhow::Result<()> {
        let mut merge = offload::Coalescer::new(&mut bufs.coalesce);
        for _ in 0..BATCH {
            let sock = match (&self.second, second) {
                (Some(s), true) => &s.udp4500,
                _ => &self.udp4500,
            };
            match sockets::recv_gro(sock, &mut bufs.udp) {
                Ok((len, from, seg)) => {
                    let Some(data) = bufs.udp.get_mut(..len) else {
                        continue;
                    };
                    for d in data.chunks_mut(seg.max(1)) {
                        self.on_udp4500(d, from, &mut merge);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => self.on_recv_error("UDP 4500", e)?,
            }
        }
        self.deliver_rest(&mut merge);
        self.read_tun_after_write(bufs)?;
        Ok(())
    }

    /// A receive on `socket` failed with something other than `WouldBlock`. Counted and logged (rate-limited),
    /// and survived: an ICMP error about something we sent (port or protocol unreachable, which anyone on the
    /// path can forge for the raw ESP socket), memory pressure, an interrupted call. Only an error that says the
    /// socket itself is unusable ends the daemon, with a message saying so.
    pub(super) fn on_recv_error(&mut self, socket: &str, e: std::io::Error) -> anyhow::Result<()> {
        survive_recv_error(&mut self.recv_errors, &mut self.logs.recv_error, socket, e)
    }

    /// The raw ESP socket is readable: recvmmsg, up to 64 datagrams per call, decrypted in place and merged
    /// for the TUN as for UDP.
    pub(super) fn on_raw_readable(&mut self, bufs: &mut Buffers) -> anyhow::Result<()> {
        self.raw_batch(bufs, false)
    }

    /// [`Daemon::on_raw_readable`] on the first address's socket, or on the second's (`second`).
    pub(super) fn raw_batch(&mut self, bufs: &mut Buffers, second: bool) -> anyhow::Result<()> {
        let mut merge = offload::Coalescer::new(&mut bufs.coalesce);
        let mut all_lens = [0usize; sockets::MMSG_MAX];
        let slot = bufs.raw_slot;
        let slots = (bufs.raw.len() / slot).clamp(1, sockets::MMSG_MAX);
        let (lens, _) = all_lens.split_at_mut(slots);
        for _ in 0..BATCH {
            let sock = match (&self.second, second) {
                (Some(s), true) => &s.raw,
                _ => &self.raw,
            };
            let family = sock.family();
            match sock.try_recv_many(&mut bufs.raw, slot, lens) {
                Ok(n) => {
                    for (d, &len) in bufs.raw.chunks_mut(slot).zip(lens.iter()).take(n) {
                        if let Some(d) = d.get_mut(..len) {
                            self.on_raw(d, family, &mut merge);
                        }
                    }
                    if n < slots {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => self.on_recv_error("raw ESP", e)?,
            }
        }
        self.deliver_rest(&mut merge);
        self.read_tun_after_write(bufs)?;
        Ok(())
    }

    /// An AF_XDP socket has frames (`raw_rx = "xdp"`): each queue's, up to a batch, decrypted in place in the
    /// UMEM and merged for the TUN as for the raw socket ([`Daemon::on_raw`]); the frames go back to the kernel.
    pub(super) fn on_xdp_readable(&mut self, bufs: &mut Buffers) -> Result<(), tx::TunUnusable> {
        let Some(mut active) = self.rawrx.take() else {
            return Ok(());
        };
        let mut merge = offload::Coalescer::new(&mut bufs.coalesce);
        let (received, more) = active.receive(XDP_BATCH, |ip| {
            self.on_raw(ip, framing::RawFamily::V4, &mut merge);
        });
        self.deliver_rest(&mut merge);
        self.rawrx.put(active, received, more);
        self.read_tun_after_write(bufs)
    }

    /// Writes a virtio-net header and packet (possibly a coalesced super-packet) to the TUN, on the queue its
    /// flow belongs to (see `workers::queue_of`): the kernel remembers which queue wrote a flow and hands
    /// that flow's outbound packets to the same queue, so each flow stays with one transmit worker.
    fn deliver_vnet(&self, data: &[u8]) {
        let q = match data
            .get(offload::VNET_HDR_LEN..)
            .and_then(|pkt| self.workers.queue_of(pkt))
        {
            Some(q) => q,
            None => {
                self.wrote_tun0.set(true);
                self.tun.get_ref()
            }
        };
        if let Err(e) = q.write_vnet(data) {
            tracing::debug!("writing to the TUN: {e}");
        }
    }

    fn on_udp4500(
        &mut self,
        data: &mut [u8],
        from: SocketAddr,
        merge: &mut offload::Coalescer<'_>,
    ) {
        match framing::classify_udp(data) {
            UdpPayload::Ike { offset } => {
                if let Some(msg) = data.get(offset..) {
                    self.cp
                        .handle(Instant::now(), msg, from, ike::sa::NAT_T_PORT);
                }
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

    fn on_raw(
        &mut self,
        data: &mut [u8],
        family: framing::RawFamily,
        merge: &mut offload::Coalescer<'_>,
    ) {
        let Some((offset, end)) = framing::raw_esp_span(data, family) else {
            return;
        };
        let mut pkt = PacketBuf::new(data, offset, end);
        if self.datapath.decap(&mut pkt) && !merge.push(pkt.as_slice()) {
            self.deliver_vnet(merge.take());
            merge.push(pkt.as_slice());
        }
    }
}

/// [`Daemon::on_recv_error`]: counts `e` into `count` and logs it within `limit`, or says why it is fatal.
pub(super) fn survive_recv_error(
    count: &mut u64,
    limit: &mut super::logcap::Limiter,
    socket: &str,
    e: std::io::Error,
) -> anyhow::Result<()> {
    if recv_error_is_fatal(&e) {
        anyhow::bail!(
            "receiving on the {socket} socket failed: {e}; the socket is unusable, so vmsecd stops (under systemd \
             it is restarted: Restart=on-failure)"
        );
    }
    *count += 1;
    if limit.allow(Instant::now()) {
        tracing::warn!(
            socket,
            total = *count,
            "receive error, counted and ignored (drops.recv_errors in `vmsecd status --json`): {e}"
        );
    }
    Ok(())
}

/// True for the receive errors that mean the socket itself is gone or broken (a bug, or the descriptor closed
/// under us): nothing later receives will fix them. Everything else (ECONNREFUSED, EHOSTUNREACH, ENETUNREACH,
/// ENOPROTOOPT from ICMP errors; ENOBUFS, ENOMEM; EINTR; a sender that is not IP) concerns one datagram or one
/// moment.
pub(super) fn recv_error_is_fatal(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::EINVAL | libc::ENOTCONN)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UDP socket that sent to a closed port gets the ICMP port unreachable back as ECONNREFUSED on its next
    /// receive, through the daemon's own receive call (`recv_gro`). (Linux reports ICMP errors only to connected
    /// UDP and raw sockets, or with IP_RECVERR: the daemon's sockets are neither today, which is why this uses a
    /// connected one.) The daemon's handling counts it, and the socket keeps receiving after it; a closed
    /// descriptor (EBADF) is fatal, with a message saying so. Loopback only, no namespace needed.
    #[test]
    fn icmp_port_unreachable_is_counted_and_survived() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let closed = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let closed_addr = closed.local_addr().unwrap();
            drop(closed);
            let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            s.connect(closed_addr).await.unwrap();
            s.send(b"x").await.unwrap();
            // The ICMP error is queued at once (loopback); a datagram from the peer after it makes the socket
            // readable for tokio (which does not wake a reader for an error alone).
            let peer = std::net::UdpSocket::bind(closed_addr).unwrap();
            peer.send_to(b"after", s.local_addr().unwrap()).unwrap();
            let mut buf = vec![0u8; 2048];
            let mut limit = crate::daemon::logcap::Limiter::new("test", 10, 2);
            let mut count = 0;
            let mut got = Vec::new();
            tokio::time::timeout(std::time::Duration::from_secs(2), async {
                while got.len() < 2 {
                    s.readable().await.unwrap();
                    match sockets::recv_gro(&s, &mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                        Err(e) => {
                            assert_eq!(e.raw_os_error(), Some(libc::ECONNREFUSED), "{e}");
                            survive_recv_error(&mut count, &mut limit, "UDP test", e).unwrap();
                            got.push(None);
                        }
                        Ok((n, from, _)) => got.push(Some((buf[..n].to_vec(), from))),
                    }
                }
            })
            .await
            .expect("the ICMP error and the datagram arrive");
            assert_eq!(count, 1);
            // The socket still works after the error: the peer's datagram arrives.
            assert_eq!(got, [None, Some((b"after".to_vec(), closed_addr))]);
            for transient in [
                libc::ENOBUFS,
                libc::EINTR,
                libc::EHOSTUNREACH,
                libc::ENOPROTOOPT,
                libc::ENOMEM,
            ] {
                let e = std::io::Error::from_raw_os_error(transient);
                survive_recv_error(&mut count, &mut limit, "UDP test", e).unwrap();
            }
            assert_eq!(count, 6);
            let closed_fd = std::io::Error::from_raw_os_error(libc::EBADF);
            let fatal = survive_recv_error(&mut count, &mut limit, "UDP test", closed_fd)
                .unwrap_err()
                .to_string();
            assert!(
                fatal.contains("the UDP test socket failed") && fatal.contains("vmsecd stops"),
                "{fatal}"
            );
            assert_eq!(count, 6);
        });
    }
}
