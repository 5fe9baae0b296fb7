//! Entry points for the fuzz targets in `fuzz/` only: not part of the crate's API, may change at any time.
//!
//! The TUN-side segmenter and the receive-side coalescer ([`super::offload`]) read headers a VM controls (the TCP/IP
//! headers of its packets, and through the TUN's virtio-net header the GSO size and checksum offsets). They
//! are crate-private; these wrappers expose exactly what `fuzz_targets/gso.rs` drives, with the virtio-net
//! header as its 10 wire bytes.

use super::offload as gso;

/// Bytes of `struct virtio_net_hdr`.
pub const VNET_HDR_LEN: usize = gso::VNET_HDR_LEN;

/// How [`segment`] laid the segments out: count, inner length of each but the last, of the last.
pub type Segments = (usize, usize, usize);

/// Whether the virtio-net header announces a TCP super-packet to cut (`Err` for an unknown GSO type).
pub fn is_tcp_gso(vnet: &[u8; VNET_HDR_LEN]) -> Result<bool, String> {
    gso::is_tcp_gso(&gso::VnetHdr::parse(vnet)).map_err(|e| e.to_string())
}

/// `gso::segment` with the header as bytes and a fixed stride.
pub fn segment(
    buf: &mut [u8],
    at: usize,
    len: usize,
    vnet: &[u8; VNET_HDR_LEN],
    front: usize,
    stride: usize,
) -> Result<Segments, String> {
    gso::segment(buf, at, len, &gso::VnetHdr::parse(vnet), front, |_| stride)
        .map(|s| (s.count, s.seg_len, s.last_len))
        .map_err(|e| e.to_string())
}

/// `gso::complete_checksum`: fills in a `NEEDS_CSUM` partial checksum of a packet that is not segmented.
pub fn complete_checksum(vnet: &[u8; VNET_HDR_LEN], pkt: &mut [u8]) -> Result<(), String> {
    gso::complete_checksum(&gso::VnetHdr::parse(vnet), pkt).map_err(|e| e.to_string())
}

/// The RFC 1071 sum of `data`, folded to 16 bits (not complemented).
pub fn checksum_fold(data: &[u8]) -> u16 {
    gso::checksum::fold(gso::checksum::sum(data, 0))
}

/// `gso::Coalescer` over a caller-owned output buffer.
pub struct Coalescer<'a>(gso::Coalescer<'a>);

impl<'a> Coalescer<'a> {
    /// An empty run writing into `out` (at least `VNET_HDR_LEN + 65535` bytes).
    pub fn new(out: &'a mut [u8]) -> Coalescer<'a> {
        Coalescer(gso::Coalescer::new(out))
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds a decrypted packet to the run; false if the run must be taken first.
    pub fn push(&mut self, pkt: &[u8]) -> bool {
        self.0.push(pkt)
    }

    /// The pending TUN write (virtio-net header and packet); empties the run.
    pub fn take(&mut self) -> &[u8] {
        self.0.take()
    }
}
