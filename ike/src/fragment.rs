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
///
/// RFC 7383 sets no upper bound on Total Fragments; we do, so that a peer announcing 65535 fragments and
/// sending only the first (forever) holds nothing: a fragment with a larger total is refused before anything
/// is kept for it.
//= https://www.rfc-editor.org/rfc/rfc7383#section-2.5
//# Total Fragments (2 octets, unsigned integer) - number of fragments into which the original message was
//# divided.
pub(crate) const MAX_FRAGMENTS: u16 = 128;

/// The most memory the fragments held by one reassembly may occupy, counted as the capacity of their buffers
/// (what is really allocated, not just what is used): an IKE message never needs more than a UDP datagram.
///
/// An IKE SA holds at most two reassemblies, the peer's request and the response to ours (a fragmented
/// request crossing a fragmented response reset each other in a single shared slot), and only one before it
/// is authenticated (a responder has no request outstanding, an initiator takes no request then). So these
/// two constants bound what a peer can make an SA hold in never-completed fragment sets: per reassembly
/// [`MAX_FRAGMENTS`] fragments and [`MAX_REASSEMBLY_BYTES`] bytes, plus one 24-byte slot per announced
/// fragment; per IKE SA twice that once authenticated (256 fragments, 128 KiB and 6 KiB of slots), once that
/// before.
pub(crate) const MAX_REASSEMBLY_BYTES: usize = 64 * 1024;

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
        let body = cipher.try_encrypt(&msg, part).ok()?;
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
    /// How many of `parts` are held: completion is checked in constant time.
    held: usize,
    /// Capacity of the held parts' buffers.
    bytes: usize,
}

impl std::fmt::Debug for Reassembly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembly")
            .field("key", &self.key)
            .field("total", &self.total)
            .field("held", &self.held)
            .field("bytes", &self.bytes)
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
            held: 0,
            bytes: 0,
        })
    }

    /// Bytes of fragment data held, counted as buffer capacity: never more than [`MAX_REASSEMBLY_BYTES`].
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.bytes
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
        // The buffer's capacity, not its length: a decrypted fragment's buffer also has room for the padding and
        // Pad Length it was truncated by, and that memory is held too.
        let size = plain.capacity();
        if self.bytes.saturating_add(size) > MAX_REASSEMBLY_BYTES {
            return Err(Dropped::TooBig);
        }
        self.bytes += size;
        self.held += 1;
        *slot = Some(plain);
        if number == 1 {
            self.first_next = Some(next);
        }
        if self.held < self.parts.len() {
            return Ok(None);
        }
        let len = self.parts.iter().flatten().map(|p| p.len()).sum();
        let mut whole = Zeroizing::new(Vec::with_capacity(len));
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
                proptest::prop_assert_eq!(r.held, r.parts.iter().flatten().count());
                proptest::prop_assert!(r.parts.len() <= usize::from(MAX_FRAGMENTS));
            }
        }
    }

    /// A buffer of `len` bytes with room for `cap`, as a decrypted fragment whose padding was cut off.
    fn with_capacity(len: usize, cap: usize) -> Zeroizing<Vec<u8>> {
        let mut v = Vec::with_capacity(cap);
        v.resize(len, 0x5a);
        Zeroizing::new(v)
    }

    /// Never-completed fragment sets, as a hostile peer holding the SA's keys sends them, stay within
    /// MAX_FRAGMENTS parts and MAX_REASSEMBLY_BYTES of buffers per reassembly (and an SA holds one).
    #[test]
    fn never_completed_sets_are_bounded() {
        // Fragment 1 of 65535, forever: nothing is kept.
        assert_eq!(
            Reassembly::new((0, false), u16::MAX).unwrap_err(),
            Dropped::TooBig
        );
        let mut r = Reassembly::new((0, false), 2).unwrap();
        for _ in 0..1000 {
            assert_eq!(r.add(1, u16::MAX, 41, z(b"a")), Err(Dropped::TooBig));
        }
        assert_eq!((r.held, r.held_bytes()), (0, 0));
        // Fragment 1 of MAX_FRAGMENTS, forever: kept once.
        let mut r = Reassembly::new((0, false), MAX_FRAGMENTS).unwrap();
        r.add(1, MAX_FRAGMENTS, 41, z(&[1; 1000])).unwrap();
        for _ in 0..1000 {
            assert_eq!(
                r.add(1, MAX_FRAGMENTS, 41, z(&[1; 1000])),
                Err(Dropped::Duplicate)
            );
        }
        assert_eq!((r.held, r.held_bytes()), (1, 1000));
        // All but the last fragment, each a tiny plaintext in a big buffer: the buffers are what is counted.
        let mut r = Reassembly::new((0, false), MAX_FRAGMENTS).unwrap();
        let mut kept = 0;
        for n in 1..MAX_FRAGMENTS {
            if r.add(n, MAX_FRAGMENTS, 0, with_capacity(1, 1400)).is_ok() {
                kept += 1;
            }
        }
        assert!(r.held_bytes() <= MAX_REASSEMBLY_BYTES, "{}", r.held_bytes());
        assert_eq!(kept, MAX_REASSEMBLY_BYTES / 1400);
        // Ever larger totals restart the set; what is held stays bounded all along.
        let mut r = Reassembly::new((0, false), 1).unwrap();
        for total in 2..=MAX_FRAGMENTS {
            for n in 1..total {
                let _ = r.add(n, total, 0, with_capacity(600, 600));
                assert!(r.held_bytes() <= MAX_REASSEMBLY_BYTES);
                assert!(r.parts.len() <= usize::from(MAX_FRAGMENTS));
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
