//! Transmit workers: with `workers = N` the TUN has N queues (`IFF_MULTI_QUEUE`); the daemon's task reads
//! queue 0 and one thread per other queue reads its own, each encrypting and sending what it reads (`tx.rs`)
//! on its own core.
//!
//! The kernel picks a TUN queue per flow: it remembers which queue last wrote a flow's packets (the tun driver's
//! flow table, "automq") and otherwise hashes the flow. So the daemon's task, which receives and decrypts all
//! inbound ESP, writes each inbound packet to the queue [`queue_of`] picks for its flow: both directions of a
//! flow then meet the same worker, and every flow keeps its order.
//!
//! Only the transmit side is spread: a peer's ESP arrives as one UDP flow (one address and port pair), which
//! the kernel delivers to one socket, so the receive side stays on the daemon's task.

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
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::tun::Queue;
use crate::wire::{self, Ipv4Packet, Ipv6Packet};

use super::tx::tx_batch;
use super::tx::Transmitter;

/// The running workers and their queues.
pub(super) struct Workers {
    /// Queues 1..N. Each worker reads its queue; the daemon's task writes inbound packets to them.
    queues: Vec<Arc<Queue>>,
    threads: Vec<JoinHandle<()>>,
    /// An eventfd the workers poll besides their queue: written once to stop them all.
    stop: Option<OwnedFd>,
}

impl Workers {
    /// No workers: the daemon's task does all of it.
    pub(super) fn none() -> Workers {
        Workers {
            queues: Vec::new(),
            threads: Vec::new(),
            stop: None,
        }
    }

    /// Starts one worker per queue in `queues`, each with its own transmitter on the shared outbound table.
    pub(super) fn start(queues: Vec<Queue>, tx: &Transmitter) -> io::Result<Workers> {
        let mut w = Workers::none();
        if queues.is_empty() {
            return Ok(w);
        }
        // SAFETY: plain eventfd(2); the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(fd) };
        for (i, q) in queues.into_iter().enumerate() {
            let q = Arc::new(q);
            let worker = Worker {
                queue: q.clone(),
                tx: tx.try_clone()?,
                stop: stop.try_clone()?,
            };
            let t = std::thread::Builder::new()
                .name(format!("vmsecd-tx{}", i + 1))
                .spawn(move || worker.run())?;
            w.queues.push(q);
            w.threads.push(t);
        }
        w.stop = Some(stop);
        Ok(w)
    }

    /// The queue to write an inbound inner packet to, by its flow; `None` for queue 0 (the daemon's task's).
    pub(super) fn queue_of(&self, pkt: &[u8]) -> Option<&Queue> {
        if self.queues.is_empty() {
            return None;
        }
        match queue_of(pkt, self.queues.len() + 1) {
            0 => None,
            k => self.queues.get(k - 1).map(|q| &**q),
        }
    }

    /// Stops the workers and waits for them.
    pub(super) fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to our eventfd.
            unsafe { libc::write(stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
            for t in self.threads.drain(..) {
                if t.join().is_err() {
                    tracing::error!("a transmit worker panicked");
                }
            }
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    queue: Arc<Queue>,
    tx: Transmitter,
    stop: OwnedFd,
}

impl Worker {
    fn run(self) {
        let mut batch = tx_batch();
        let mut fds = [
            libc::pollfd {
                fd: self.queue.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        loop {
            // SAFETY: two live pollfd structs, their count, no timeout.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
            if r < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("transmit worker: poll failed: {e}; worker stopped");
                return;
            }
            if fds[1].revents != 0 {
                return;
            }
            let q = &self.queue;
            let r = match q.read_vnet(batch.read_buf()) {
                Ok(n) => self.tx.on_readable(&mut batch, n, |b| q.read_vnet(b)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Err(e) => self.tx.survive_read_error(e),
            };
            if let Err(e) = r {
                tracing::error!("transmit worker: {e}; this worker stops");
                return;
            }
        }
    }
}

/// Which of `n` queues an inner packet's flow belongs to: a hash of its addresses and, for TCP and UDP, its
/// ports, the same both ways (source and destination combined symmetrically), so a flow's two directions
/// agree. Fragments other than the first carry no ports, so fragments hash by addresses alone.
pub(super) fn queue_of(pkt: &[u8], n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    let (addrs, proto, l4) = match wire::version(pkt) {
        Some(4) => {
            let Some(ip) = Ipv4Packet::new_checked(pkt) else {
                return 0;
            };
            let l4 = if ip.is_fragment() { None } else { ip.payload() };
            let a = u32::from(ip.src_addr()) ^ u32::from(ip.dst_addr());
            (a, ip.protocol(), l4)
        }
        Some(6) => {
            let Some(ip) = Ipv6Packet::new_checked(pkt) else {
                return 0;
            };
            // Source and destination: the 32 bytes after the first 8.
            let a = ip.addrs().chunks_exact(4).fold(0, |h, w| {
                h ^ <[u8; 4]>::try_from(w).map_or(0, u32::from_be_bytes)
            });
            (a, ip.next_header(), Some(ip.payload()))
        }
        _ => return 0,
    };
    let ports = match (proto, l4) {
        (wire::IPPROTO_TCP | wire::IPPROTO_UDP, Some([s0, s1, d0, d1, ..])) => {
            u32::from(u16::from_be_bytes([*s0, *s1])) ^ u32::from(u16::from_be_bytes([*d0, *d1]))
        }
        _ => 0,
    };
    let key = (u64::from(addrs) << 32 | u64::from(ports)) ^ u64::from(proto);
    // Fibonacci hashing: the high bits of the product are well mixed.
    ((key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % n as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[9] = 6;
        p[12..16].copy_from_slice(&src);
        p[16..20].copy_from_slice(&dst);
        p[20..22].copy_from_slice(&sport.to_be_bytes());
        p[22..24].copy_from_slice(&dport.to_be_bytes());
        p
    }

    #[test]
    fn both_directions_of_a_flow_share_a_queue_and_flows_spread() {
        let (a, b) = ([198, 19, 1, 10], [198, 19, 2, 10]);
        let mut used = [0usize; 4];
        for port in 40000..40400u16 {
            let there = queue_of(&tcp4(a, b, port, 5201), 4);
            assert_eq!(there, queue_of(&tcp4(b, a, 5201, port), 4));
            used[there] += 1;
        }
        // 400 flows over 4 queues: each gets a fair share.
        assert!(used.iter().all(|&u| (60..=140).contains(&u)), "{used:?}");
        assert_eq!(queue_of(&tcp4(a, b, 1, 2), 1), 0);
        assert_eq!(queue_of(&[0x45, 0, 0], 4), 0, "too short: queue 0");
    }
}
