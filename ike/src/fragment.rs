//! IKE message fragmentation (RFC 7383): splitting an encrypted message into Encrypted Fragment (SKF)
//! payloads, and reassembling received ones with bounded memory.
//!
//! Each fragment is a complete IKE message: the original header (Next Payload SKF, its own length), the SKF
//! payload header with Fragment Number and Total Fragments, and its share of the inner payloads encrypted and
//! authenticated on its own. The receiver checks every fragment's ICV before keeping it, so an attacker
//! cannot poison a reassembly.

use zeroize::Zeroizing;

use crate::crypto::sk::SkCipher;
use crate::message::{Header, PayloadType, HEADER_LEN};

/// Length of the SKF payload header: generic header, Fragment Number, Total Fragments.
const SKF_HEADER_LEN: usize = 8;

/// The most fragments we send or accept for one message.
pub(crate) const MAX_FRAGMENTS: u16 = 128;

/// The most plaintext one reassembly may hold (an IKE message never needs more than a UDP datagram).
const MAX_REASSEMBLY_BYTES: usize = 64 * 1024;

/// Splits the inner payload chain `plain` (whose first payload type is `first`) into SKF messages of at most
/// `max_len` bytes each. `None` if `max_len` leaves no room for data or the message would need more than
/// [`MAX_FRAGMENTS`] fragments.
pub(crate) fn split(
    cipher: &SkCipher,
    mut header: Header,
    first: u8,
    plain: &[u8],
    max_len: usize,
) -> Option<Vec<Vec<u8>>> {
    let fixed = HEADER_LEN + SKF_HEADER_LEN;
    // The largest chunk whose encryption (IV, padding, ICV) still fits.
    let mut chunk = max_len.checked_sub(fixed)?;
    while chunk > 0 && fixed + cipher.encrypted_len(chunk) > max_len {
        chunk -= 1;
    }
    if chunk == 0 {
        return None;
    }
    let total = plain.len().div_ceil(chunk);
    if total == 0 || total > usize::from(MAX_FRAGMENTS) {
        return None;
    }
    let mut out = Vec::with_capacity(total);
    for (i, part) in plain.chunks(chunk).enumerate() {
        let number = i as u16 + 1;
        let skf_len = SKF_HEADER_LEN + cipher.encrypted_len(part.len());
        header.next_payload = PayloadType::SKF;
        header.length = (HEADER_LEN + skf_len) as u32;
        let mut msg = Vec::with_capacity(header.length as usize);
        header.encode(&mut msg);
        //= https://www.rfc-editor.org/rfc/rfc7383#section-2.5
        //# In the very first fragment (with Fragment Number equal to 1), this field MUST be set to the payload
        //# type of the first inner payload. In the rest of the Fragment messages (with Fragment Number
        //# greater than 1), this field MUST be set to zero.
        msg.push(if number == 1 { first } else { 0 });
        msg.push(0);
        msg.extend_from_slice(&(skf_len as u16).to_be_bytes());
        msg.extend_from_slice(&number.to_be_bytes());
        msg.extend_from_slice(&(total as u16).to_be_bytes());
        let body = cipher.encrypt(&msg, part);
        msg.extend_from_slice(&body);
        out.push(msg);
    }
    Some(out)
}

/// Why a fragment was not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Dropped {
    /// More fragments than we accept, or more bytes.
    #[error("reassembly limit exceeded")]
    TooBig,
    /// Its Total Fragments is smaller than that of fragments already held (an older fragmentation).
    #[error("inconsistent Total Fragments")]
    Inconsistent,
    /// We hold this fragment already.
    #[error("duplicate fragment")]
    Duplicate,
}

/// A reassembled message: the type of its first inner payload and the inner payload chain.
pub(crate) type Whole = (u8, Zeroizing<Vec<u8>>);

/// The fragments of one message received so far (already authenticated and decrypted).
pub(crate) struct Reassembly {
    /// Message ID and whether it is a response: which message the fragments belong to.
    pub(crate) key: (u32, bool),
    total: u16,
    first_next: Option<u8>,
    parts: Vec<Option<Zeroizing<Vec<u8>>>>,
    bytes: usize,
}

impl std::fmt::Debug for Reassembly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembly")
            .field("key", &self.key)
            .field("total", &self.total)
            .field("held", &self.parts.iter().filter(|p| p.is_some()).count())
            .finish()
    }
}

impl Reassembly {
    /// Starts collecting the fragments of message `key`.
    pub(crate) fn new(key: (u32, bool), total: u16) -> Result<Reassembly, Dropped> {
        if total == 0 || total > MAX_FRAGMENTS {
            return Err(Dropped::TooBig);
        }
        Ok(Reassembly {
            key,
            total,
            first_next: None,
            parts: vec![None; usize::from(total)],
            bytes: 0,
        })
    }

    /// Adds an authenticated fragment: `next` is its SKF Next Payload field, `plain` its decrypted share.
    /// Returns the first inner payload type and the whole inner chain once every fragment is in.
    pub(crate) fn add(
        &mut self,
        number: u16,
        total: u16,
        next: u8,
        plain: Zeroizing<Vec<u8>>,
    ) -> Result<Option<Whole>, Dropped> {
        // RFC 7383 2.6.2 (PMTU discovery): a retransmission fragmented anew (smaller PMTU) has a larger Total Fragments: the fragments held
        // belong to the older split and are discarded; a fragment with a smaller total is the stale one.
        if total > self.total {
            *self = Reassembly::new(self.key, total)?;
        } else if total < self.total {
            return Err(Dropped::Inconsistent);
        }
        let i = usize::from(number).wrapping_sub(1);
        let Some(slot) = self.parts.get_mut(i) else {
            return Err(Dropped::Inconsistent);
        };
        if slot.is_some() {
            return Err(Dropped::Duplicate);
        }
        if self.bytes + plain.len() > MAX_REASSEMBLY_BYTES {
            return Err(Dropped::TooBig);
        }
        self.bytes += plain.len();
        *slot = Some(plain);
        if number == 1 {
            self.first_next = Some(next);
        }
        if self.parts.iter().any(Option::is_none) {
            return Ok(None);
        }
        let mut whole = Zeroizing::new(Vec::with_capacity(self.bytes));
        for p in self.parts.iter().flatten() {
            whole.extend_from_slice(p);
        }
        Ok(Some((self.first_next.unwrap_or(0), whole)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn z(b: &[u8]) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(b.to_vec())
    }

    #[test]
    fn reassembles_out_of_order_and_drops_duplicates() {
        let mut r = Reassembly::new((3, false), 3).unwrap();
        assert_eq!(r.add(3, 3, 0, z(b"c")), Ok(None));
        assert_eq!(r.add(3, 3, 0, z(b"c")), Err(Dropped::Duplicate));
        assert_eq!(r.add(1, 3, 41, z(b"a")), Ok(None));
        let (first, whole) = r.add(2, 3, 0, z(b"b")).unwrap().unwrap();
        assert_eq!((first, &whole[..]), (41, &b"abc"[..]));
    }

    #[test]
    fn larger_total_restarts_smaller_is_dropped() {
        let mut r = Reassembly::new((1, true), 2).unwrap();
        r.add(1, 2, 41, z(b"xx")).unwrap();
        assert_eq!(r.add(1, 1, 41, z(b"xx")), Err(Dropped::Inconsistent));
        assert_eq!(r.add(1, 3, 41, z(b"a")), Ok(None));
        assert_eq!(r.add(2, 3, 0, z(b"b")), Ok(None));
        assert_eq!(r.add(3, 3, 0, z(b"c")).unwrap().unwrap().1.to_vec(), b"abc");
    }

    proptest::proptest! {
        /// Whatever fragments arrive (numbers, totals, sizes, in any order), reassembly never panics, never holds
        /// more than its bounds, and a completed message is exactly the held parts in order.
        #[test]
        fn arbitrary_fragments_never_panic(
            frags in proptest::collection::vec((1u16..300, 1u16..300, 0u8..60, 0usize..3000), 0..200)
        ) {
            let mut r = Reassembly::new((0, false), frags.first().map_or(1, |f| f.1.min(MAX_FRAGMENTS))).unwrap();
            for (number, total, next, len) in frags {
                let number = number.min(total);
                if let Ok(Some((_, whole))) = r.add(number, total, next, Zeroizing::new(vec![number as u8; len])) {
                    proptest::prop_assert!(whole.len() <= MAX_REASSEMBLY_BYTES);
                    r = Reassembly::new((0, false), 1).unwrap();
                }
                proptest::prop_assert!(r.bytes <= MAX_REASSEMBLY_BYTES);
                proptest::prop_assert!(r.parts.len() <= usize::from(MAX_FRAGMENTS));
            }
        }
    }

    #[test]
    fn limits_hold() {
        assert_eq!(
            Reassembly::new((0, false), MAX_FRAGMENTS + 1).unwrap_err(),
            Dropped::TooBig
        );
        let mut r = Reassembly::new((0, false), 2).unwrap();
        assert_eq!(
            r.add(1, 2, 1, Zeroizing::new(vec![0; MAX_REASSEMBLY_BYTES + 1])),
            Err(Dropped::TooBig)
        );
        assert_eq!(
            r.add(1, MAX_FRAGMENTS + 1, 1, z(b"a")),
            Err(Dropped::TooBig)
        );
    }
}
