//! The IKEv2 wire format (RFC 7296 section 3): header, generic payload chain, every payload vmsecd reads.
//!
//! Parsing is strict and total: any length that does not add up is a typed [`ParseError`], never a panic, and
//! nothing is trusted before it is checked. Encoding is the mirror image and is tested against it.

mod header;
pub mod id;
mod payload;
mod ts;

#[cfg(test)]
mod tests;

pub use header::{ExchangeType, Flags, Header, HEADER_LEN, IKE_VERSION};
pub use payload::{
    encode_chain, parse_chain, AttrValue, CfgAttr, Config, Delete, Encrypted, Fragment, Id, IdType,
    Notify, Payload, PayloadType, Proposal, ProtocolId, SaTransform, TransformType,
};
pub use ts::{TrafficSelector, TsType};

/// Encodes an unencrypted message (IKE_SA_INIT): header with the final length, then the payloads.
pub fn encode_plain(mut header: Header, payloads: &[Payload]) -> Vec<u8> {
    let (first, body) = encode_chain(payloads);
    header.next_payload = first;
    header.length = (HEADER_LEN + body.len()) as u32;
    let mut out = Vec::with_capacity(header.length as usize);
    header.encode(&mut out);
    out.extend_from_slice(&body);
    out
}

/// A parsed message: its header, its clear payloads and, if present, the still-encrypted SK/SKF payload.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The header.
    pub header: Header,
    /// Payloads outside the SK payload (all of them for IKE_SA_INIT).
    pub payloads: Vec<Payload>,
    /// The SK or SKF payload, last in the message.
    pub encrypted: Option<Encrypted<'a>>,
    /// The message bytes up to its declared length.
    pub bytes: &'a [u8],
}

/// Parses a whole datagram holding one IKE message.
///
/// It allocates at most 16 bytes per byte of `buf` (proven by `tests/parse_alloc.rs`): every count is checked
/// against the bytes that must hold what it counts before anything is allocated.
pub fn parse(buf: &[u8]) -> Result<Parsed<'_>, ParseError> {
    let header = Header::parse(buf)?;
    let bytes = usize::try_from(header.length)
        .ok()
        .and_then(|len| buf.get(..len))
        .ok_or(ParseError::BadLength("IKE header"))?;
    let chain = bytes
        .get(HEADER_LEN..)
        .ok_or(ParseError::BadLength("IKE header"))?;
    let (payloads, encrypted) = parse_chain(header.next_payload, chain, HEADER_LEN)?;
    Ok(Parsed {
        header,
        payloads,
        encrypted,
        bytes,
    })
}

/// Why a message could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The message or a payload ends before its declared length.
    #[error("truncated {0}")]
    Truncated(&'static str),
    /// A length field is inconsistent with its container.
    #[error("bad length in {0}")]
    BadLength(&'static str),
    /// The major version is not 2.
    //= https://www.rfc-editor.org/rfc/rfc7296#section-3.1
    //# Implementations based on this version of IKE MUST set the major version to 2.
    #[error("IKE major version {0} is not 2")]
    BadVersion(u8),
    /// A payload the receiver must understand is unknown to us: answer UNSUPPORTED_CRITICAL_PAYLOAD.
    #[error("unsupported critical payload type {0}")]
    UnsupportedCritical(u8),
    /// A field holds a value the RFC forbids.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// A count announces more elements than the bytes that follow can hold (or, for sizes of 0, any at all):
    /// refused before anything is allocated for them.
    #[error("{what}: {count} announced, the {room} bytes left cannot hold them")]
    Count {
        /// What is counted.
        what: &'static str,
        /// The count received.
        count: usize,
        /// The bytes left to hold them.
        room: usize,
    },
}

/// A cursor over received bytes: every read checks the bound.
#[derive(Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], ParseError> {
        let (a, b) = self
            .buf
            .split_at_checked(n)
            .ok_or(ParseError::Truncated(self.what))?;
        self.buf = b;
        Ok(a)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], ParseError> {
        let (a, b) = self
            .buf
            .split_first_chunk::<N>()
            .ok_or(ParseError::Truncated(self.what))?;
        self.buf = b;
        Ok(*a)
    }
    pub(crate) fn u8(&mut self) -> Result<u8, ParseError> {
        let [b] = self.array()?;
        Ok(b)
    }
    pub(crate) fn u16(&mut self) -> Result<u16, ParseError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, ParseError> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, ParseError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
    /// Refuses `count` elements of at least `min_size` bytes each unless the bytes left can hold them: call it
    /// before allocating room for `count` elements, so a count from the wire never allocates more than the
    /// bytes received back it.
    pub(crate) fn room_for(
        &self,
        what: &'static str,
        count: usize,
        min_size: usize,
    ) -> Result<(), ParseError> {
        match count.checked_mul(min_size) {
            Some(need) if need <= self.buf.len() => Ok(()),
            _ => Err(ParseError::Count {
                what,
                count,
                room: self.buf.len(),
            }),
        }
    }
}
