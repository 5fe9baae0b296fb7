//! ESP (RFC 4303) for vmsecd: security associations, in-place tunnel-mode encapsulation and decapsulation,
//! anti-replay, and the framings ESP travels in (UDP encapsulation, RFC 3948, or raw IP protocol 50).
//!
//! This crate is sans-IO: it owns no socket, reads no clock and spawns nothing. The caller hands it packet
//! buffers ([`PacketBuf`]) with room in front and behind; [`OutboundSa::encap`] and [`Sad::decap`] rewrite them in
//! place, so the datapath allocates nothing and copies nothing per packet.
//!
//! ```
//! use esp::{InboundSa, KeyMaterial, OutboundSa, PacketBuf, SaParams, Sad, Transform, HEADROOM};
//!
//! let t = Transform::AesGcm128;
//! let keys = KeyMaterial::new(t, &[7u8; 20]).unwrap();
//! let params = SaParams::new(0x1000, t, true);
//! let mut out = OutboundSa::new(params, &keys).unwrap();
//! let mut sad = Sad::new();
//! sad.insert(InboundSa::new(params, &keys).unwrap());
//!
//! let inner = [0x45u8, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0, 198, 19, 1, 10, 198, 19, 2, 10];
//! let mut buf = [0u8; 256];
//! buf[HEADROOM..HEADROOM + 20].copy_from_slice(&inner);
//! let mut pkt = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + 20);
//! out.encap(&mut pkt).unwrap();
//! sad.decap(&mut pkt).unwrap();
//! assert_eq!(pkt.as_slice(), &inner);
//! ```
#![warn(missing_docs, unreachable_pub)]
#![forbid(unsafe_code)]
// Nothing received from the wire may panic the daemon: no unwrap, expect, unchecked index or panic outside
// tests. A true invariant keeps an `#[allow]` next to the proof that it holds.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic,
        clippy::unreachable
    )
)]

mod cipher;
pub mod framing;
mod keys;
mod packet;
mod replay;
mod sa;
mod sad;
mod transform;

#[cfg(test)]
mod tests;

pub use keys::{BadKeyLength, KeyMaterial};
pub use packet::{NoRoom, PacketBuf, HEADROOM, TAILROOM};
pub use replay::{ReplayError, ReplayWindow, DEFAULT_REPLAY_WINDOW, MAX_REPLAY_WINDOW};
pub use sa::{
    Counters, DropReason, EncapError, InboundSa, Inner, OutboundSa, SaParams, SeqBlock,
    NEXT_HEADER_IPV4, NEXT_HEADER_IPV6, NEXT_HEADER_NONE,
};
pub use sad::Sad;
pub use transform::{Transform, UnknownTransform};

/// Bytes of SPI and sequence number in front of every ESP packet.
pub const ESP_HEADER_LEN: usize = 8;
