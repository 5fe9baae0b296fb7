//! The transmit buffer: ESP datagrams waiting to leave together, back to back, all of one size but the last,
//! towards one destination, so that one UDP GSO `sendmsg` (or one `sendmmsg` for raw ESP) sends them all.
//!
//! The next TUN read lands behind the pending datagrams, at `used + read_at`; its packet is then encrypted in
//! place right behind them (see `Daemon::on_tun`). Nothing allocates after [`TxBatch::new`].

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

use super::datapath::Wire;
use super::sockets::{GSO_MAX_BYTES, GSO_MAX_SEGMENTS};

/// Pending datagrams and the room for the next read.
pub(crate) struct TxBatch {
    buf: Vec<u8>,
    /// Where a read puts its packet, relative to the end of the pending datagrams.
    read_at: usize,
    /// Room a read needs behind `used` (a 64 KiB super-packet and its segments' overhead).
    read_room: usize,
    used: usize,
    count: usize,
    stride: usize,
    /// The last datagram was shorter than `stride`: nothing more may follow it in this batch.
    closed: bool,
    wire: Option<Wire>,
}

impl TxBatch {
    /// A batch buffer with room for `read_room` bytes per read, packets at `read_at`.
    pub(crate) fn new(read_at: usize, read_room: usize) -> TxBatch {
        TxBatch {
            buf: vec![0u8; read_room + GSO_MAX_BYTES + 4096],
            read_at,
            read_room,
            used: 0,
            count: 0,
            stride: 0,
            closed: false,
            wire: None,
        }
    }

    /// Where the next read goes: its virtio-net header, then the packet at [`TxBatch::read_at`].
    pub(crate) fn read_buf(&mut self) -> &mut [u8] {
        let start = self.used + self.read_at - crate::tun::VNET_HDR_LEN;
        let end = self.used + self.read_room;
        // Always in the buffer (`has_room` keeps `used` below its end); an empty slice otherwise, which the
        // read reports as too short.
        self.buf.get_mut(start..end).unwrap_or_default()
    }

    /// Absolute offset of the packet of the last read.
    pub(crate) fn read_at(&self) -> usize {
        self.used + self.read_at
    }

    /// Whether another read fits behind the pending datagrams.
    pub(crate) fn has_room(&self) -> bool {
        self.used + self.read_room <= self.buf.len()
    }

    pub(crate) fn buf(&self) -> &[u8] {
        &self.buf
    }

    pub(crate) fn buf_mut(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    /// Bytes of pending datagrams.
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    /// Where the pending datagrams go and their size, if there are any.
    pub(crate) fn pending(&self) -> Option<(Wire, usize)> {
        self.wire
            .filter(|_| self.count > 0)
            .map(|w| (w, self.stride))
    }

    /// Forgets the pending datagrams (after they were sent).
    pub(crate) fn clear(&mut self) {
        self.used = 0;
        self.count = 0;
        self.closed = false;
        self.wire = None;
    }

    /// Adds the datagram of `len` bytes at `at` (which must be [`TxBatch::used`]) if it can go in the same send:
    /// same destination, the same size or shorter (then it is the last), within the kernel's GSO limits.
    pub(crate) fn append(&mut self, at: usize, len: usize, wire: Wire) -> bool {
        debug_assert_eq!(at, self.used);
        if self.count == 0 {
            self.wire = Some(wire);
            self.stride = len;
        } else if self.wire != Some(wire)
            || self.closed
            || len > self.stride
            || self.count >= GSO_MAX_SEGMENTS
            || self.used + len > GSO_MAX_BYTES
        {
            return false;
        }
        self.closed = len < self.stride;
        self.used += len;
        self.count += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_datagrams_to_one_place_share_a_send() {
        let to = Wire::Udp("198.18.0.2:4500".parse().unwrap());
        let other = Wire::Raw("198.18.0.3".parse().unwrap());
        let mut b = TxBatch::new(100, 70_000);
        assert!(b.append(0, 80, to));
        assert!(b.append(80, 80, to));
        assert!(!b.append(160, 80, other), "another destination");
        assert!(!b.append(160, 90, to), "longer than the first");
        assert!(b.append(160, 60, to), "a shorter one ends the batch");
        assert!(!b.append(220, 60, to));
        assert_eq!(b.pending(), Some((to, 80)));
        assert_eq!(b.read_at(), 220 + 100);
        b.clear();
        assert_eq!(b.pending(), None);
        for i in 0..GSO_MAX_SEGMENTS {
            assert!(b.append(i * 100, 100, to));
        }
        assert!(!b.append(6400, 100, to), "64 segments at most");
    }
}
