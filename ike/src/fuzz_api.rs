//! Entry points for the fuzz targets in `fuzz/` only: not part of the crate's API, may change at any time.
//!
//! IKE fragment reassembly (RFC 7383) is crate-private and runs only after an SKF payload's ICV verified,
//! which a fuzzer cannot reach through [`crate::endpoint::Endpoint`] without the SA's keys. These thin
//! wrappers let `fuzz_targets/ike_fragments.rs` split a payload chain under a fixed-key [`SkCipher`] and feed
//! the fragments, in any order and with any damage, to the same reassembly the endpoint uses.

use zeroize::Zeroizing;

use crate::crypto::sk::SkCipher;
use crate::fragment;
use crate::message::Header;

/// The most fragments one message may have (sent or accepted).
pub const MAX_FRAGMENTS: u16 = fragment::MAX_FRAGMENTS;

/// [`fragment::split`]: the SKF messages for the inner chain `plain` (first payload type `first`), each at
/// most `max_len` bytes.
pub fn split(
    cipher: &SkCipher,
    header: Header,
    first: u8,
    plain: &[u8],
    max_len: usize,
) -> Option<Vec<Vec<u8>>> {
    fragment::split(cipher, header, first, plain, max_len)
}

/// A completed message: the first inner payload type and the inner payload chain.
pub type Whole = (u8, Zeroizing<Vec<u8>>);

/// [`fragment::Reassembly`] behind a stable face: the error is its `Display` text.
pub struct Reassembly(fragment::Reassembly);

impl Reassembly {
    /// Starts collecting the fragments of message `key` (message ID, response?) with `total` fragments.
    pub fn new(key: (u32, bool), total: u16) -> Result<Reassembly, String> {
        fragment::Reassembly::new(key, total)
            .map(Reassembly)
            .map_err(|e| e.to_string())
    }

    /// Adds one authenticated, decrypted fragment; the first inner payload type and the whole chain once
    /// complete.
    pub fn add(
        &mut self,
        number: u16,
        total: u16,
        next: u8,
        plain: Zeroizing<Vec<u8>>,
    ) -> Result<Option<Whole>, String> {
        self.0
            .add(number, total, next, plain)
            .map_err(|e| e.to_string())
    }
}
