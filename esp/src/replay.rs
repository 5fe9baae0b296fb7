//! The anti-replay window (RFC 4303 3.4.3) kept as RFC 6479 bitmap blocks, and ESN reconstruction.
//!
//! The window is a ring of 64-bit blocks. Advancing it clears whole blocks, never shifts bits, so the cost of a
//! packet does not grow with the window: at most one pass over the blocks when the window jumps by more than its
//! size, one word otherwise.

/// Default window size, in packets.
pub const DEFAULT_REPLAY_WINDOW: u32 = 1024;
/// Largest window accepted, in packets.
pub const MAX_REPLAY_WINDOW: u32 = 1 << 16;

/// The receive window of one inbound SA.
#[derive(Clone, Debug)]
pub struct ReplayWindow {
    /// Ring of bitmap blocks; its length is a power of two, one block more than the window needs.
    blocks: Box<[u64]>,
    /// Highest sequence number authenticated so far (the right edge), 0 before the first packet.
    top: u64,
    /// Window size in packets: `(blocks.len() - 1) * 64`.
    size: u64,
}

/// Why the window refused a sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// The number was seen before.
    Replayed,
    /// The number is left of the window.
    TooOld,
}

impl ReplayWindow {
    /// A window of at least `size` packets (rounded up to a power of two of at least 64), capped at
    /// [`MAX_REPLAY_WINDOW`].
    //= https://www.rfc-editor.org/rfc/rfc4303#section-3.4.3
    //# A minimum window size of 32 packets MUST be supported when 32-bit sequence numbers are employed; a window
    //# size of 64 is preferred and SHOULD be employed as the default.
    pub fn new(size: u32) -> ReplayWindow {
        let size = size.clamp(64, MAX_REPLAY_WINDOW).next_power_of_two() as u64;
        let blocks = (size / 64 + 1).next_power_of_two() as usize;
        ReplayWindow {
            blocks: vec![0u64; blocks].into_boxed_slice(),
            top: 0,
            size,
        }
    }

    /// Window size in packets.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The highest sequence number accepted so far.
    pub fn top(&self) -> u64 {
        self.top
    }

    fn index(&self, seq: u64) -> (usize, u64) {
        let block = ((seq >> 6) as usize) & (self.blocks.len() - 1);
        (block, 1u64 << (seq & 63))
    }

    /// Checks a (full, 64-bit) sequence number without changing the window.
    //= https://www.rfc-editor.org/rfc/rfc4303#section-3.4.3
    //# If the received packet falls within the window and is not a duplicate, or if the packet is to the right of
    //# the window, and if a separate integrity algorithm is employed, then the receiver proceeds to integrity
    //# verification.
    pub fn check(&self, seq: u64) -> Result<(), ReplayError> {
        if seq > self.top {
            return Ok(());
        }
        if self.top - seq >= self.size {
            return Err(ReplayError::TooOld);
        }
        let (block, bit) = self.index(seq);
        // `index` masks the block number with `blocks.len() - 1` (a power of two): `get` never misses.
        if self.blocks.get(block).is_some_and(|b| b & bit != 0) {
            Err(ReplayError::Replayed)
        } else {
            Ok(())
        }
    }

    /// Records a sequence number whose packet passed ICV verification.
    //= https://www.rfc-editor.org/rfc/rfc4303#section-3.4.3
    //# The receive window is updated only if the integrity verification succeeds.
    pub fn update(&mut self, seq: u64) {
        if seq > self.top {
            let cur = self.top >> 6;
            let new = seq >> 6;
            let n = self.blocks.len() as u64;
            let clear = (new - cur).min(n);
            for i in 1..=clear {
                let (block, _) = self.index((cur + i) << 6);
                if let Some(b) = self.blocks.get_mut(block) {
                    *b = 0;
                }
            }
            self.top = seq;
        }
        let (block, bit) = self.index(seq);
        if let Some(b) = self.blocks.get_mut(block) {
            *b |= bit;
        }
    }

    /// Reconstructs the high-order 32 bits of an extended sequence number from its transmitted low half.
    //= https://www.rfc-editor.org/rfc/rfc4303#appendix-A.2.2
    //# If Seql >= Bl (where Bl = Tl - W + 1), then Seqh = Th
    pub fn esn_high(&self, seq_lo: u32) -> u32 {
        let w = self.size as u32;
        let tl = self.top as u32;
        let th = (self.top >> 32) as u32;
        let bl = tl.wrapping_sub(w).wrapping_add(1);
        if tl >= w - 1 {
            // Case A: the window lies within one sequence-number subspace.
            if seq_lo >= bl {
                th
            } else {
                th.wrapping_add(1)
            }
        } else {
            // Case B: the window spans two subspaces.
            // In subspace 0 there is no earlier subspace: a low half at or above Bl is then a packet far to
            // the right in subspace 0, not one from "subspace -1" (which would wrap to 2^32 - 1).
            if seq_lo >= bl && th > 0 {
                th - 1
            } else {
                th
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_and_duplicates() {
        let mut w = ReplayWindow::new(1024);
        for s in 1..5000u64 {
            assert_eq!(w.check(s), Ok(()));
            w.update(s);
            assert_eq!(w.check(s), Err(ReplayError::Replayed));
        }
        // The right edge is 4999: the window holds 3976..=4999.
        assert_eq!(w.check(4999 - 1024), Err(ReplayError::TooOld));
        assert_eq!(w.check(4999 - 1023), Err(ReplayError::Replayed));
    }

    #[test]
    fn out_of_order_within_window() {
        let mut w = ReplayWindow::new(1024);
        w.update(2000);
        assert_eq!(w.check(2000 - 1023), Ok(()));
        w.update(2000 - 1023);
        assert_eq!(w.check(2000 - 1023), Err(ReplayError::Replayed));
        assert_eq!(w.check(2000 - 1024), Err(ReplayError::TooOld));
        // A big jump forgets everything behind the new window.
        w.update(100_000);
        assert_eq!(w.check(100_000 - 1023), Ok(()));
        assert_eq!(w.check(2000), Err(ReplayError::TooOld));
    }

    #[test]
    fn jump_by_less_than_window_keeps_bits() {
        let mut w = ReplayWindow::new(128);
        w.update(100);
        w.update(150);
        assert_eq!(w.check(100), Err(ReplayError::Replayed));
        assert_eq!(w.check(149), Ok(()));
        w.update(227);
        assert_eq!(w.check(100), Err(ReplayError::Replayed));
        assert_eq!(w.check(99), Err(ReplayError::TooOld));
    }

    #[test]
    fn sizes() {
        assert_eq!(ReplayWindow::new(1).size(), 64);
        assert_eq!(ReplayWindow::new(1024).size(), 1024);
        assert_eq!(ReplayWindow::new(1000).size(), 1024);
        assert_eq!(ReplayWindow::new(8192).size(), 8192);
        assert_eq!(ReplayWindow::new(u32::MAX).size(), MAX_REPLAY_WINDOW as u64);
    }

    #[test]
    fn esn_reconstruction() {
        let mut w = ReplayWindow::new(64);
        // Case A, well inside a subspace.
        w.update((5u64 << 32) | 1000);
        assert_eq!(w.esn_high(990), 5);
        assert_eq!(w.esn_high(2000), 5);
        assert_eq!(
            w.esn_high(10),
            6,
            "far left of the window means the next subspace"
        );
        // Case B: the window straddles a subspace boundary.
        let mut w = ReplayWindow::new(64);
        w.update((7u64 << 32) | 10);
        assert_eq!(w.esn_high(5), 7);
        assert_eq!(w.esn_high(u32::MAX - 5), 6);
        assert_eq!(w.esn_high(100), 7);
    }

    #[test]
    fn fresh_window_esn() {
        let w = ReplayWindow::new(1024);
        assert_eq!(w.esn_high(1), 0);
        assert_eq!(w.esn_high(5000), 0);
        // Found reading the fuzz harness: this used to wrap to subspace 0xffffffff.
        assert_eq!(w.esn_high(u32::MAX - 5), 0);
    }
}
