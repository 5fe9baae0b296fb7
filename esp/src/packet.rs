//! A packet as a window into a caller-owned buffer, with room in front and behind.
//!
//! The datapath reads a packet into the middle of a buffer, leaving headroom for the ESP header and IV (and, if
//! the caller builds them, outer IP and UDP headers) and tailroom for padding, trailer and ICV. Encapsulation and
//! decapsulation then move the window's edges; no byte of the payload is ever copied.

/// Headroom that fits every transform's ESP header and IV plus an outer IPv6 and UDP header.
pub const HEADROOM: usize = 40 + 8 + crate::ESP_HEADER_LEN + 16;
/// Tailroom that fits every transform's worst-case padding, trailer and ICV.
pub const TAILROOM: usize = 15 + 2 + 16;

/// A mutable view of one packet inside a larger buffer: `buf[start..end]` is the packet.
#[derive(Debug)]
pub struct PacketBuf<'a> {
    buf: &'a mut [u8],
    start: usize,
    end: usize,
}

/// The buffer has not enough room in front or behind for what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet buffer has no room: {needed} more bytes needed")]
pub struct NoRoom {
    /// Bytes that were missing.
    pub needed: usize,
}

impl<'a> PacketBuf<'a> {
    /// A packet occupying `buf[start..end]`.
    ///
    /// # Panics
    /// If `start > end` or `end > buf.len()`: that is a bug in the caller, not bad input.
    pub fn new(buf: &'a mut [u8], start: usize, end: usize) -> PacketBuf<'a> {
        assert!(
            start <= end && end <= buf.len(),
            "packet window {start}..{end} outside buffer of {}",
            buf.len()
        );
        PacketBuf { buf, start, end }
    }

    /// A packet that fills the whole buffer (as received, with no headroom).
    pub fn full(buf: &'a mut [u8]) -> PacketBuf<'a> {
        let end = buf.len();
        PacketBuf { buf, start: 0, end }
    }

    /// The packet's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // `start <= end <= buf.len()` always holds (checked by `new`, kept by every method): never empty by miss.
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    /// The packet's bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        self.buf.get_mut(self.start..self.end).unwrap_or_default()
    }

    /// Length of the packet.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// True if the packet holds no byte.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Where the packet starts in the buffer.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Where the packet ends in the buffer.
    pub fn end(&self) -> usize {
        self.end
    }

    /// Free bytes in front of the packet.
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Free bytes behind the packet.
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.end
    }

    /// Grows the packet by `n` bytes in front and returns them.
    pub fn push_front(&mut self, n: usize) -> Result<&mut [u8], NoRoom> {
        if n > self.start {
            return Err(NoRoom {
                needed: n - self.start,
            });
        }
        self.start -= n;
        self.buf
            .get_mut(self.start..self.start + n)
            .ok_or(NoRoom { needed: n })
    }

    /// Grows the packet by `n` bytes behind and returns them.
    pub fn push_back(&mut self, n: usize) -> Result<&mut [u8], NoRoom> {
        if n > self.tailroom() {
            return Err(NoRoom {
                needed: n - self.tailroom(),
            });
        }
        self.end += n;
        self.buf
            .get_mut(self.end - n..self.end)
            .ok_or(NoRoom { needed: n })
    }

    /// Drops `n` bytes from the front (at most the whole packet).
    pub fn pull_front(&mut self, n: usize) {
        self.start += n.min(self.len());
    }

    /// Keeps only the first `len` bytes (no-op if the packet is shorter).
    pub fn truncate(&mut self, len: usize) {
        self.end = self.start + len.min(self.len());
    }

    /// Sets the window to `buf[start..end]` again, e.g. to reuse the buffer for the next packet.
    ///
    /// # Panics
    /// As [`PacketBuf::new`].
    pub fn reset(&mut self, start: usize, end: usize) {
        assert!(
            start <= end && end <= self.buf.len(),
            "packet window outside buffer"
        );
        self.start = start;
        self.end = end;
    }

    /// The whole underlying buffer.
    pub fn buffer_mut(&mut self) -> &mut [u8] {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_and_pull() {
        let mut storage = [0u8; 32];
        let mut p = PacketBuf::new(&mut storage, 8, 16);
        p.push_front(8).unwrap().fill(1);
        assert_eq!(p.push_front(1), Err(NoRoom { needed: 1 }));
        p.push_back(16).unwrap().fill(2);
        assert!(p.push_back(1).is_err());
        assert_eq!(p.len(), 32);
        p.pull_front(100);
        assert!(p.is_empty());
    }
}
