//! IKEv2 (RFC 7296) for vmsecd: message codec, crypto suite, proposals and the SA state machines.
//!
//! Sans-IO like quinn-proto: nothing here owns a socket or reads a clock. Callers pass received datagrams and
//! the current time in, and take datagrams to send, the next timer and events (IKE SA up, rekeyed, down; Child
//! SA up, rekeyed, deleted) out. Encrypted messages too big for the path are fragmented (RFC 7383), and a side
//! behind a NAT is told to send keepalives (RFC 3948) as ordinary datagrams.
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

pub mod config;
pub mod crypto;
pub mod endpoint;
pub mod event;
mod fragment;
#[doc(hidden)]
pub mod fuzz_api;
pub mod message;
pub mod notify;
pub mod proposal;
pub mod ratelimit;
pub mod sa;
mod suite;
pub mod text;
pub mod vendor;
