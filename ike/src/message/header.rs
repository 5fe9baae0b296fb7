//! The fixed IKE header (RFC 7296 3.1).

use super::{ParseError, Reader};

/// Bytes in the IKE header.
pub const HEADER_LEN: usize = 28;
/// Major version 2, minor 0.
pub const IKE_VERSION: u8 = 0x20;

/// The exchange a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExchangeType(pub u8);

impl ExchangeType {
    /// IKE_SA_INIT.
    pub const IKE_SA_INIT: ExchangeType = ExchangeType(34);
    /// IKE_AUTH.
    pub const IKE_AUTH: ExchangeType = ExchangeType(35);
    /// CREATE_CHILD_SA.
    pub const CREATE_CHILD_SA: ExchangeType = ExchangeType(36);
    /// INFORMATIONAL.
    pub const INFORMATIONAL: ExchangeType = ExchangeType(37);
}

/// Header flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// Set by the original initiator of the IKE SA.
    pub const INITIATOR: u8 = 0x08;
    /// Set when the sender can speak a higher major version.
    pub const VERSION: u8 = 0x10;
    /// Set in responses.
    pub const RESPONSE: u8 = 0x20;

    /// The Initiator bit.
    pub fn initiator(self) -> bool {
        self.0 & Self::INITIATOR != 0
    }
    /// The Response bit.
    pub fn response(self) -> bool {
        self.0 & Self::RESPONSE != 0
    }
}

/// The IKE header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The initiator's SPI.
    pub spi_i: u64,
    /// The responder's SPI (0 in the first IKE_SA_INIT request).
    pub spi_r: u64,
    /// Type of the first payload.
    pub next_payload: u8,
    /// Major and minor version.
    pub version: u8,
    /// The exchange.
    pub exchange: ExchangeType,
    /// I, V and R flags.
    pub flags: Flags,
    /// Message ID.
    pub message_id: u32,
    /// Total length of the message, header included.
    pub length: u32,
}

impl Header {
    /// Parses the header and checks the length field against the datagram.
    pub fn parse(buf: &[u8]) -> Result<Header, ParseError> {
        let mut r = Reader::new(buf, "IKE header");
        let h = Header {
            spi_i: r.u64()?,
            spi_r: r.u64()?,
            next_payload: r.u8()?,
            version: r.u8()?,
            exchange: ExchangeType(r.u8()?),
            flags: Flags(r.u8()?),
            message_id: r.u32()?,
            length: r.u32()?,
        };
        //= https://www.rfc-editor.org/rfc/rfc7296#section-3.1
        //# Implementations based on this version of IKE MUST set the major version to 2.
        if h.version >> 4 != 2 {
            return Err(ParseError::BadVersion(h.version >> 4));
        }
        if (h.length as usize) < HEADER_LEN || h.length as usize > buf.len() {
            return Err(ParseError::BadLength("IKE header"));
        }
        Ok(h)
    }

    /// Appends the 28 header bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spi_i.to_be_bytes());
        out.extend_from_slice(&self.spi_r.to_be_bytes());
        out.push(self.next_payload);
        out.push(self.version);
        out.push(self.exchange.0);
        out.push(self.flags.0);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}
