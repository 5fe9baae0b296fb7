//! Security associations: one direction each, encapsulating or decapsulating tunnel-mode packets in place.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::cipher::Cipher;
use crate::keys::BadKeyLength;
use crate::packet::{NoRoom, PacketBuf};
use crate::replay::{ReplayError, ReplayWindow, DEFAULT_REPLAY_WINDOW};
use crate::{KeyMaterial, Transform, ESP_HEADER_LEN};

/// IP protocol number of an IPv4 packet carried in tunnel mode.
pub const NEXT_HEADER_IPV4: u8 = 4;
/// IP protocol number of an IPv6 packet carried in tunnel mode.
pub const NEXT_HEADER_IPV6: u8 = 41;
/// "No next header": a dummy (traffic flow confidentiality) packet.
//= https://www.rfc-editor.org/rfc/rfc4303#section-2.6
//# A transmitter MUST be capable of generating dummy packets marked with this value in the next protocol field,
//# and a receiver MUST be prepared to discard such packets, without indicating an error.
pub const NEXT_HEADER_NONE: u8 = 59;

/// What an SA is: its SPI, transform, sequence-number size and replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SaParams {
    /// The SPI the receiver chose.
    pub spi: u32,
    /// The negotiated transform.
    pub transform: Transform,
    /// 64-bit extended sequence numbers (RFC 4303 2.2.1) instead of 32-bit ones.
    pub esn: bool,
    /// Anti-replay window in packets (inbound only); see [`ReplayWindow::new`].
    pub replay_window: u32,
}

impl SaParams {
    /// Parameters with the default replay window.
    pub fn new(spi: u32, transform: Transform, esn: bool) -> SaParams {
        SaParams {
            spi,
            transform,
            esn,
            replay_window: DEFAULT_REPLAY_WINDOW,
        }
    }
}

/// Per-SA counters, read by `vmsecd status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets encapsulated or successfully decapsulated.
    pub packets: u64,
    /// Inner-packet bytes of those packets.
    pub bytes: u64,
    /// Inbound packets refused by the replay window.
    pub drop_replay: u64,
    /// Inbound packets whose ICV did not verify.
    pub drop_auth: u64,
    /// Inbound packets too short, misaligned, with bad padding or an unexpected next header.
    pub drop_malformed: u64,
    /// Inbound dummy packets (next header 59), discarded as RFC 4303 2.6 says.
    pub drop_dummy: u64,
}

/// Why an inbound packet was dropped. Every drop increments one counter and leaves no other trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DropReason {
    /// No inbound SA has this SPI.
    #[error("no SA for SPI {0:#010x}")]
    NoSa(u32),
    /// Too short, misaligned, bad padding, zero or wrong sequence number, or a next header that tunnel mode
    /// does not carry.
    #[error("malformed ESP packet")]
    Malformed,
    /// Seen before, or left of the replay window.
    #[error("replayed or too old")]
    Replay,
    /// The ICV did not verify.
    #[error("integrity check failed")]
    AuthFailed,
    /// A dummy packet (next header 59): not an error, but nothing to deliver.
    #[error("dummy packet")]
    Dummy,
}

/// Why an outbound packet could not be encapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncapError {
    /// The sequence number space is used up: the SA must be replaced by a rekeyed one.
    //= https://www.rfc-editor.org/rfc/rfc4303#section-3.3.3
    //# the sender MUST NOT send a packet on an SA if doing so would cause the sequence number to cycle.
    #[error("sequence numbers exhausted; the SA must be rekeyed")]
    SequenceExhausted,
    /// The packet is not an IPv4 or IPv6 packet.
    #[error("not an IP packet")]
    NotIp,
    /// The buffer lacks headroom or tailroom.
    #[error(transparent)]
    NoRoom(#[from] NoRoom),
}

/// What a successfully decapsulated packet is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inner {
    /// [`NEXT_HEADER_IPV4`] or [`NEXT_HEADER_IPV6`].
    pub next_header: u8,
    /// Its full (64-bit if ESN) sequence number.
    pub seq: u64,
}

/// The sending half of an SA.
///
/// Shared by every datapath worker that sends on it (`encap` takes `&self`): the sequence number is an atomic
/// counter, so each worker draws numbers without a lock, and no number is ever used twice. Workers' packets may
/// then leave slightly out of order, which the receiver's anti-replay window absorbs (RFC 4303 3.4.3: it
/// accepts any not-yet-seen number within the window).
pub struct OutboundSa {
    params: SaParams,
    cipher: Cipher,
    /// The last sequence number handed out; 0 before the first packet.
    pub(crate) seq: AtomicU64,
    packets: AtomicU64,
    bytes: AtomicU64,
}

impl OutboundSa {
    /// A new outbound SA; its first packet carries sequence number 1.
    pub fn new(params: SaParams, keys: &KeyMaterial) -> Result<OutboundSa, BadKeyLength> {
        check_keys(&params, keys)?;
        Ok(OutboundSa {
            cipher: Cipher::new(params.transform, keys)?,
            params,
            seq: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        })
    }

    /// The SA's parameters.
    pub fn params(&self) -> &SaParams {
        &self.params
    }

    /// Counters so far (packets and bytes sent; the drop counters belong to inbound SAs).
    pub fn counters(&self) -> Counters {
        Counters {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            ..Counters::default()
        }
    }

    /// The last sequence number handed out.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// Sequence numbers left before the SA is exhausted, so the owner can rekey in time.
    pub fn seq_remaining(&self) -> u64 {
        self.max_seq() - self.seq()
    }

    /// True once seven eighths of the sequence space are used: time to replace the SA while it can still send
    /// (with 32-bit numbers and one million packets a second, about nine minutes before it would stop).
    //= https://www.rfc-editor.org/rfc/rfc4303#section-3.3.3
    //# the sender's counter and the receiver's counter MUST be reset (by establishing a new SA and thus a new
    //# key) prior to the transmission of the 2^32nd packet on an SA.
    pub fn running_low(&self) -> bool {
        self.seq_remaining() < self.max_seq() / 8
    }

    fn max_seq(&self) -> u64 {
        if self.params.esn {
            u64::MAX
        } else {
            u32::MAX as u64
        }
    }

    /// Encapsulates the IP packet in `pkt` in place: afterwards `pkt` holds the ESP packet, SPI first.
    ///
    /// Needs [`Transform::header_overhead`] bytes of headroom and [`Transform::trailer_overhead`] of tailroom.
    /// On error, `pkt` is unchanged and no sequence number is used. For a burst of packets, [`OutboundSa::reserve`]
    /// draws their numbers at once.
    pub fn encap(&self, pkt: &mut PacketBuf<'_>) -> Result<(), EncapError> {
        self.check(pkt)?;
        self.reserve(1)?.encap(pkt)
    }

    /// Draws up to `n` consecutive sequence numbers (fewer only when the SA is about to run out) with one atomic
    /// read-modify-write, for a worker to use on a burst of packets: concurrent workers never share a number,
    /// and they touch the shared counter once per burst rather than once per packet. Numbers the worker leaves
    /// unused are skipped, a gap the receiver's window does not mind.
    pub fn reserve(&self, n: u64) -> Result<SeqBlock<'_>, EncapError> {
        let max = self.max_seq();
        let want = n.max(1);
        let prev = self
            .seq
            //= https://www.rfc-editor.org/rfc/rfc4303#section-3.3.3
            //# the sender MUST NOT send a packet on an SA if doing so would cause the sequence number to cycle.
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                (s < max).then(|| s + want.min(max - s))
            })
            .map_err(|_| EncapError::SequenceExhausted)?;
        Ok(SeqBlock {
            sa: self,
            next: prev + 1,
            end: prev + want.min(max - prev) + 1,
            packets: 0,
            bytes: 0,
        })
    }

    /// Whether `pkt` can be encapsulated: an IP packet, with room around it. Returns its next header.
    fn check(&self, pkt: &PacketBuf<'_>) -> Result<u8, EncapError> {
        let next_header = match pkt.as_slice().first().map(|b| b >> 4) {
            Some(4) => NEXT_HEADER_IPV4,
            Some(6) => NEXT_HEADER_IPV6,
            _ => return Err(EncapError::NotIp),
        };
        self.check_room(pkt)?;
        Ok(next_header)
    }

    /// Bytes of padding for an inner packet of `inner_len` bytes.
    fn pad_len(&self, inner_len: usize) -> usize {
        let t = self.params.transform;
        //= https://www.rfc-editor.org/rfc/rfc4303#section-2.4
        //# Padding also may be required, irrespective of encryption algorithm requirements, to ensure that the
        //# resulting ciphertext terminates on a 4-byte boundary.
        (t.block_len() - (inner_len + 2) % t.block_len()) % t.block_len()
    }

    fn check_room(&self, pkt: &PacketBuf<'_>) -> Result<(), NoRoom> {
        let t = self.params.transform;
        let front = t.header_overhead();
        let back = self.pad_len(pkt.len()) + 2 + t.icv_len();
        if pkt.headroom() < front || pkt.tailroom() < back {
            return Err(NoRoom {
                needed: front.saturating_sub(pkt.headroom()) + back.saturating_sub(pkt.tailroom()),
            });
        }
        Ok(())
    }

    /// Encapsulation with a given sequence number and AEAD IV; test vectors use it with published IVs.
    #[cfg(test)]
    pub(crate) fn encap_with(
        &self,
        pkt: &mut PacketBuf<'_>,
        next_header: u8,
        seq: u64,
        iv: &[u8; 16],
    ) -> Result<(), EncapError> {
        self.check_room(pkt)?;
        self.seq.fetch_max(seq, Ordering::Relaxed);
        let inner_len = pkt.len();
        self.seal(pkt, next_header, seq, iv)?;
        self.packets.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(inner_len as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Frames and encrypts `pkt` under `seq`; the room was checked, so `Err` is unreachable in practice (it
    /// reports a caller's bug as an error rather than a panic).
    fn seal(
        &self,
        pkt: &mut PacketBuf<'_>,
        next_header: u8,
        seq: u64,
        iv: &[u8; 16],
    ) -> Result<(), NoRoom> {
        let t = self.params.transform;
        let inner_len = pkt.len();
        let pad = self.pad_len(inner_len);
        let trailer = pkt.push_back(pad + 2 + t.icv_len())?;
        let (padding, rest) = trailer
            .split_at_mut_checked(pad)
            .ok_or(NoRoom { needed: 0 })?;
        //= https://www.rfc-editor.org/rfc/rfc4303#section-2.4
        //# The Padding bytes are initialized with a series of (unsigned, 1-byte) integer values.  The first padding
        //# byte appended to the plaintext is numbered 1, with subsequent padding bytes making up a monotonically
        //# increasing sequence
        for (i, b) in padding.iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        let Some([pad_len, nh]) = rest.first_chunk_mut::<2>() else {
            return Err(NoRoom { needed: 0 });
        };
        *pad_len = pad as u8;
        *nh = next_header;
        let header = pkt.push_front(t.header_overhead())?;
        let (spi_seq, iv_slot) = header
            .split_first_chunk_mut::<ESP_HEADER_LEN>()
            .ok_or(NoRoom { needed: 0 })?;
        spi_seq[..4].copy_from_slice(&self.params.spi.to_be_bytes());
        //= https://www.rfc-editor.org/rfc/rfc4303#section-2.2.1
        //# Only the low-order 32 bits of the sequence number are transmitted in the plaintext ESP header of each
        //# packet, thus minimizing packet overhead.
        spi_seq[4..].copy_from_slice(&(seq as u32).to_be_bytes());
        if t.is_aead() {
            if let (Some(dst), Some(src)) = (iv_slot.get_mut(..8), iv.get(..8)) {
                dst.copy_from_slice(src);
            }
        }
        let seq_hi = self.params.esn.then_some((seq >> 32) as u32);
        self.cipher
            .seal(t, pkt.as_mut_slice(), seq_hi)
            .map_err(|_| NoRoom { needed: 0 })
    }
}

/// Sequence numbers an [`OutboundSa`] handed to one worker for a burst of packets ([`OutboundSa::reserve`]).
/// The SA's packet and byte counters are updated once, when the block is dropped.
pub struct SeqBlock<'a> {
    sa: &'a OutboundSa,
    next: u64,
    /// One past the last number of the block.
    end: u64,
    packets: u64,
    bytes: u64,
}

impl SeqBlock<'_> {
    /// Numbers left in the block.
    pub fn remaining(&self) -> u64 {
        self.end - self.next
    }

    /// Encapsulates `pkt` in place under the block's next number, as [`OutboundSa::encap`] does; fails with
    /// [`EncapError::SequenceExhausted`] when the block is used up. On error, `pkt` is unchanged.
    pub fn encap(&mut self, pkt: &mut PacketBuf<'_>) -> Result<(), EncapError> {
        let next_header = self.sa.check(pkt)?;
        if self.next >= self.end {
            return Err(EncapError::SequenceExhausted);
        }
        let seq = self.next;
        self.next += 1;
        let mut iv = [0u8; 16];
        //= https://www.rfc-editor.org/rfc/rfc4106#section-3.1
        //# For a given key, the IV MUST NOT repeat.
        // The full sequence number is unique per SA, so it serves as the AEAD IV (RFC 4106 3.1 suggests a counter).
        iv[..8].copy_from_slice(&seq.to_be_bytes());
        let inner_len = pkt.len();
        self.sa.seal(pkt, next_header, seq, &iv)?;
        self.packets += 1;
        self.bytes += inner_len as u64;
        Ok(())
    }
}

impl Drop for SeqBlock<'_> {
    fn drop(&mut self) {
        if self.packets > 0 {
            self.sa.packets.fetch_add(self.packets, Ordering::Relaxed);
            self.sa.bytes.fetch_add(self.bytes, Ordering::Relaxed);
        }
    }
}

/// The receiving half of an SA.
pub struct InboundSa {
    params: SaParams,
    cipher: Cipher,
    pub(crate) window: ReplayWindow,
    counters: Counters,
}

impl InboundSa {
    /// A new inbound SA with an empty replay window.
    pub fn new(params: SaParams, keys: &KeyMaterial) -> Result<InboundSa, BadKeyLength> {
        check_keys(&params, keys)?;
        Ok(InboundSa {
            cipher: Cipher::new(params.transform, keys)?,
            window: ReplayWindow::new(params.replay_window),
            params,
            counters: Counters::default(),
        })
    }

    /// The SA's parameters.
    pub fn params(&self) -> &SaParams {
        &self.params
    }

    /// Counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The highest sequence number accepted so far.
    pub fn highest_seq(&self) -> u64 {
        self.window.top()
    }

    /// Decapsulates the ESP packet in `pkt` (SPI first) in place: afterwards `pkt` holds the inner IP packet.
    ///
    /// A dropped packet increments exactly one counter; the replay window changes only for a packet whose ICV
    /// verified.
    pub fn decap(&mut self, pkt: &mut PacketBuf<'_>) -> Result<Inner, DropReason> {
        let r = self.decap_inner(pkt);
        let c = &mut self.counters;
        match r {
            Ok(_) => {}
            Err(DropReason::Replay) => c.drop_replay += 1,
            Err(DropReason::AuthFailed) => c.drop_auth += 1,
            Err(DropReason::Dummy) => c.drop_dummy += 1,
            Err(DropReason::Malformed) | Err(DropReason::NoSa(_)) => c.drop_malformed += 1,
        }
        r
    }

    fn decap_inner(&mut self, pkt: &mut PacketBuf<'_>) -> Result<Inner, DropReason> {
        let inner = self.open_packet(pkt)?;
        if inner.next_header == NEXT_HEADER_NONE {
            return Err(DropReason::Dummy);
        }
        //= https://www.rfc-editor.org/rfc/rfc4303#section-2.6
        //# The value of this field is chosen from the set of IP Protocol Numbers defined on the web page of the IANA,
        //# e.g., a value of 4 indicates IPv4, a value of 41 indicates IPv6, and a value of 6 indicates TCP.
        let version = pkt.as_slice().first().map(|b| b >> 4);
        let ok = match inner.next_header {
            NEXT_HEADER_IPV4 => version == Some(4),
            NEXT_HEADER_IPV6 => version == Some(6),
            _ => false,
        };
        if !ok {
            return Err(DropReason::Malformed);
        }
        self.counters.packets += 1;
        self.counters.bytes += pkt.len() as u64;
        Ok(inner)
    }

    /// Authenticates, decrypts and strips ESP framing, whatever the next header; `pkt` is left holding the payload.
    pub(crate) fn open_packet(&mut self, pkt: &mut PacketBuf<'_>) -> Result<Inner, DropReason> {
        let t = self.params.transform;
        let head = t.header_overhead();
        let len = pkt.len();
        if len < head + t.icv_len() + 2 {
            return Err(DropReason::Malformed);
        }
        let encrypted_len = len - head - t.icv_len();
        //= https://www.rfc-editor.org/rfc/rfc4303#section-2.4
        //# Padding also may be required, irrespective of encryption algorithm requirements, to ensure that the
        //# resulting ciphertext terminates on a 4-byte boundary.
        if !encrypted_len.is_multiple_of(t.block_len()) {
            return Err(DropReason::Malformed);
        }
        let Some((&[s0, s1, s2, s3, q0, q1, q2, q3], _)) = pkt.as_slice().split_first_chunk::<8>()
        else {
            return Err(DropReason::Malformed);
        };
        let spi = u32::from_be_bytes([s0, s1, s2, s3]);
        if spi != self.params.spi {
            return Err(DropReason::NoSa(spi));
        }
        let seq_lo = u32::from_be_bytes([q0, q1, q2, q3]);
        let seq_hi = self.params.esn.then(|| self.window.esn_high(seq_lo));
        let seq = ((seq_hi.unwrap_or(0) as u64) << 32) | seq_lo as u64;
        // The first packet sent on an SA carries 1; 0 is never valid.
        if seq == 0 {
            return Err(DropReason::Malformed);
        }
        //= https://www.rfc-editor.org/rfc/rfc4303#section-3.4.3
        //# If the received packet falls within the window and is not a duplicate, or if the packet is to the right
        //# of the window, and if a separate integrity algorithm is employed, then the receiver proceeds to integrity
        //# verification.
        self.window
            .check(seq)
            .map_err(|_: ReplayError| DropReason::Replay)?;
        self.cipher
            .open(t, pkt.as_mut_slice(), seq_hi)
            .map_err(|_| DropReason::AuthFailed)?;
        self.window.update(seq);

        let Some(plain) = pkt.as_slice().get(head..len - t.icv_len()) else {
            return Err(DropReason::Malformed);
        };
        let Some((rest, &[pad_len, next_header])) = plain.split_last_chunk::<2>() else {
            return Err(DropReason::Malformed);
        };
        let pad_len = usize::from(pad_len);
        //= https://www.rfc-editor.org/rfc/rfc4303#section-2.5
        //# The Pad Length field is mandatory.
        let Some(payload_len) = rest.len().checked_sub(pad_len) else {
            return Err(DropReason::Malformed);
        };
        //= https://www.rfc-editor.org/rfc/rfc4303#section-2.4
        //# the receiver SHOULD inspect the Padding field.
        let pad_ok = rest
            .get(payload_len..)
            .is_some_and(|p| p.iter().enumerate().all(|(i, &b)| b == i as u8 + 1));
        if !pad_ok {
            return Err(DropReason::Malformed);
        }
        pkt.pull_front(head);
        pkt.truncate(payload_len);
        Ok(Inner { next_header, seq })
    }
}

fn check_keys(params: &SaParams, keys: &KeyMaterial) -> Result<(), BadKeyLength> {
    // KeyMaterial::new checked the length against the transform it was made for; check it is this one.
    let t = params.transform;
    if keys.len() != t.keymat_len() {
        return Err(BadKeyLength {
            transform: t,
            expected: t.keymat_len(),
            got: keys.len(),
        });
    }
    Ok(())
}

impl std::fmt::Debug for OutboundSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundSa")
            .field("params", &self.params)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for InboundSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundSa")
            .field("params", &self.params)
            .field("highest_seq", &self.window.top())
            .finish_non_exhaustive()
    }
}
