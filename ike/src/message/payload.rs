//! Payloads (RFC 7296 3.2-3.16, RFC 7383 2.5): the generic header chain and each payload's body.

use super::ts::TrafficSelector;
use super::{ParseError, Reader};

/// A payload type number (RFC 7296 3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PayloadType(pub u8);

#[allow(missing_docs)]
impl PayloadType {
    pub const NONE: u8 = 0;
    pub const SA: u8 = 33;
    pub const KE: u8 = 34;
    pub const IDI: u8 = 35;
    pub const IDR: u8 = 36;
    pub const CERT: u8 = 37;
    pub const CERTREQ: u8 = 38;
    pub const AUTH: u8 = 39;
    pub const NONCE: u8 = 40;
    pub const NOTIFY: u8 = 41;
    pub const DELETE: u8 = 42;
    pub const VENDOR: u8 = 43;
    pub const TSI: u8 = 44;
    pub const TSR: u8 = 45;
    pub const SK: u8 = 46;
    pub const CP: u8 = 47;
    pub const EAP: u8 = 48;
    pub const SKF: u8 = 53;
}

/// The protocol a proposal, notification or delete is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProtocolId(pub u8);

impl ProtocolId {
    /// IKE.
    pub const IKE: ProtocolId = ProtocolId(1);
    /// AH (never negotiated by vmsecd).
    pub const AH: ProtocolId = ProtocolId(2);
    /// ESP.
    pub const ESP: ProtocolId = ProtocolId(3);
}

/// A transform type (RFC 7296 3.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransformType(pub u8);

#[allow(missing_docs)]
impl TransformType {
    pub const ENCR: TransformType = TransformType(1);
    pub const PRF: TransformType = TransformType(2);
    pub const INTEG: TransformType = TransformType(3);
    pub const DH: TransformType = TransformType(4);
    pub const ESN: TransformType = TransformType(5);
}

/// One transform of a proposal, with its only attribute that exists in practice, the key length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SaTransform {
    /// The type.
    pub ttype: TransformType,
    /// The algorithm.
    pub id: u16,
    /// The Key Length attribute (type 14), if present.
    pub key_len: Option<u16>,
}

/// A proposal (RFC 7296 3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// Proposal number: the responder echoes the one it chose.
    pub num: u8,
    /// IKE or ESP.
    pub protocol: ProtocolId,
    /// The sender's SPI (empty for the first IKE_SA_INIT, 8 bytes for IKE rekey, 4 bytes for ESP).
    pub spi: Vec<u8>,
    /// The transforms.
    pub transforms: Vec<SaTransform>,
}

/// Identification types (RFC 7296 3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdType(pub u8);

#[allow(missing_docs)]
impl IdType {
    pub const IPV4_ADDR: IdType = IdType(1);
    pub const FQDN: IdType = IdType(2);
    pub const RFC822_ADDR: IdType = IdType(3);
    pub const IPV6_ADDR: IdType = IdType(5);
    pub const DER_ASN1_DN: IdType = IdType(9);
    pub const KEY_ID: IdType = IdType(11);
}

/// An identification payload body.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Id {
    /// The type.
    pub id_type: IdType,
    /// The identity bytes.
    pub data: Vec<u8>,
}

impl Id {
    /// The body as AUTH computes over it (RFC 7296 2.15: "IDx' ... the entire ID payload excluding the fixed
    /// header"): type, three reserved bytes, data.
    pub fn body(&self) -> Vec<u8> {
        let mut v = vec![self.id_type.0, 0, 0, 0];
        v.extend_from_slice(&self.data);
        v
    }
}

/// A notification (RFC 7296 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// Protocol the SPI belongs to (0 when there is none).
    pub protocol: u8,
    /// The SPI, often empty.
    pub spi: Vec<u8>,
    /// The notify message type (see [`crate::notify`]).
    pub ntype: u16,
    /// Notification data.
    pub data: Vec<u8>,
}

impl Notify {
    /// A notification with no SPI.
    pub fn new(ntype: u16, data: Vec<u8>) -> Notify {
        Notify {
            protocol: 0,
            spi: Vec::new(),
            ntype,
            data,
        }
    }
}

/// A delete payload (RFC 7296 3.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    /// IKE (no SPIs: the SA the message is protected by) or ESP.
    pub protocol: ProtocolId,
    /// The SPIs (4 bytes each for ESP).
    pub spis: Vec<Vec<u8>>,
}

/// A configuration attribute (RFC 7296 3.15.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CfgAttr {
    /// Attribute type.
    pub attr_type: u16,
    /// Value.
    pub value: Vec<u8>,
}

/// A configuration payload (RFC 7296 3.15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// CFG_REQUEST (1), CFG_REPLY (2), CFG_SET (3), CFG_ACK (4).
    pub cfg_type: u8,
    /// The attributes.
    pub attrs: Vec<CfgAttr>,
}

/// An attribute value, for callers that print payloads.
pub type AttrValue = Vec<u8>;

/// A parsed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Payload {
    /// Security Association.
    Sa(Vec<Proposal>),
    /// Key Exchange.
    Ke {
        /// Diffie-Hellman group.
        group: u16,
        /// Public value.
        data: Vec<u8>,
    },
    /// Identification of the initiator.
    IdI(Id),
    /// Identification of the responder.
    IdR(Id),
    /// Certificate.
    Cert {
        /// Certificate encoding (4 = X.509 signature).
        encoding: u8,
        /// Certificate data.
        data: Vec<u8>,
    },
    /// Certificate request.
    CertReq {
        /// Certificate encoding.
        encoding: u8,
        /// Concatenated SHA-1 hashes of acceptable CA public keys.
        data: Vec<u8>,
    },
    /// Authentication.
    Auth {
        /// Method (1 RSA signature, 2 shared key MIC, 14 digital signature).
        method: u8,
        /// Authentication data.
        data: Vec<u8>,
    },
    /// Nonce.
    Nonce(Vec<u8>),
    /// Notify.
    Notify(Notify),
    /// Delete.
    Delete(Delete),
    /// Vendor ID.
    Vendor(Vec<u8>),
    /// Traffic selectors of the initiator.
    TsI(Vec<TrafficSelector>),
    /// Traffic selectors of the responder.
    TsR(Vec<TrafficSelector>),
    /// Configuration.
    Config(Config),
    /// A non-critical payload we do not know: skipped, kept for completeness.
    Unknown {
        /// Its type.
        ptype: u8,
        /// Its body.
        data: Vec<u8>,
    },
}

/// The Encrypted and Authenticated payload (SK), which must be last: its body is decrypted by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encrypted<'a> {
    /// Type of the first payload inside.
    pub inner_next: u8,
    /// Offset of the SK payload's generic header in the message (the AAD ends 4 bytes after it).
    pub offset: usize,
    /// IV, ciphertext and ICV.
    pub body: &'a [u8],
    /// Set for an Encrypted Fragment payload (SKF, RFC 7383): fragment number and total.
    pub fragment: Option<Fragment>,
}

/// Fragment numbering of an SKF payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fragment {
    /// 1-based number of this fragment.
    pub number: u16,
    /// Total fragments of the message.
    pub total: u16,
}

impl Payload {
    /// Its payload type number.
    pub fn ptype(&self) -> u8 {
        match self {
            Payload::Sa(_) => PayloadType::SA,
            Payload::Ke { .. } => PayloadType::KE,
            Payload::IdI(_) => PayloadType::IDI,
            Payload::IdR(_) => PayloadType::IDR,
            Payload::Cert { .. } => PayloadType::CERT,
            Payload::CertReq { .. } => PayloadType::CERTREQ,
            Payload::Auth { .. } => PayloadType::AUTH,
            Payload::Nonce(_) => PayloadType::NONCE,
            Payload::Notify(_) => PayloadType::NOTIFY,
            Payload::Delete(_) => PayloadType::DELETE,
            Payload::Vendor(_) => PayloadType::VENDOR,
            Payload::TsI(_) => PayloadType::TSI,
            Payload::TsR(_) => PayloadType::TSR,
            Payload::Config(_) => PayloadType::CP,
            Payload::Unknown { ptype, .. } => *ptype,
        }
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Payload::Sa(props) => {
                for (i, p) in props.iter().enumerate() {
                    let start = out.len();
                    //= https://www.rfc-editor.org/rfc/rfc7296#section-3.3.1
                    //# Last Substruc (1 octet) - Specifies whether or not this is the last Proposal Substructure in the
                    //# SA.  This field has a value of 0 if this was the last Proposal Substructure, and a value of 2
                    //# if there are more Proposal Substructures.
                    out.push(if i + 1 == props.len() { 0 } else { 2 });
                    out.push(0);
                    out.extend_from_slice(&[0, 0]);
                    out.push(p.num);
                    out.push(p.protocol.0);
                    out.push(p.spi.len() as u8);
                    out.push(p.transforms.len() as u8);
                    out.extend_from_slice(&p.spi);
                    for (j, t) in p.transforms.iter().enumerate() {
                        let tstart = out.len();
                        out.push(if j + 1 == p.transforms.len() { 0 } else { 3 });
                        out.push(0);
                        out.extend_from_slice(&[0, 0]);
                        out.push(t.ttype.0);
                        out.push(0);
                        out.extend_from_slice(&t.id.to_be_bytes());
                        if let Some(k) = t.key_len {
                            //= https://www.rfc-editor.org/rfc/rfc7296#section-3.3.5
                            //# If the AF bit is zero (0), then the attribute uses TLV format; if the AF bit is one
                            //# (1), the TV format (with two-byte value) is used.
                            //= https://www.rfc-editor.org/rfc/rfc7296#section-3.3.5
                            //# The Key Length attribute specifies the key length in bits (MUST use network byte
                            //# order) for certain transforms as follows:
                            out.extend_from_slice(&(0x8000u16 | 14).to_be_bytes());
                            out.extend_from_slice(&k.to_be_bytes());
                        }
                        set_length(out, tstart);
                    }
                    set_length(out, start);
                }
            }
            Payload::Ke { group, data } => {
                out.extend_from_slice(&group.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                out.extend_from_slice(data);
            }
            Payload::IdI(id) | Payload::IdR(id) => out.extend_from_slice(&id.body()),
            Payload::Cert { encoding, data } | Payload::CertReq { encoding, data } => {
                out.push(*encoding);
                out.extend_from_slice(data);
            }
            Payload::Auth { method, data } => {
                out.extend_from_slice(&[*method, 0, 0, 0]);
                out.extend_from_slice(data);
            }
            Payload::Nonce(d) | Payload::Vendor(d) | Payload::Unknown { data: d, .. } => {
                out.extend_from_slice(d)
            }
            Payload::Notify(n) => {
                out.push(n.protocol);
                out.push(n.spi.len() as u8);
                out.extend_from_slice(&n.ntype.to_be_bytes());
                out.extend_from_slice(&n.spi);
                out.extend_from_slice(&n.data);
            }
            Payload::Delete(d) => {
                out.push(d.protocol.0);
                out.push(
                    d.spis
                        .first()
                        .map_or(if d.protocol == ProtocolId::IKE { 0 } else { 4 }, |s| {
                            s.len() as u8
                        }),
                );
                out.extend_from_slice(&(d.spis.len() as u16).to_be_bytes());
                for s in &d.spis {
                    out.extend_from_slice(s);
                }
            }
            Payload::TsI(ts) | Payload::TsR(ts) => {
                out.extend_from_slice(&[ts.len() as u8, 0, 0, 0]);
                for t in ts {
                    t.encode(out);
                }
            }
            Payload::Config(c) => {
                out.extend_from_slice(&[c.cfg_type, 0, 0, 0]);
                for a in &c.attrs {
                    out.extend_from_slice(&(a.attr_type & 0x7fff).to_be_bytes());
                    out.extend_from_slice(&(a.value.len() as u16).to_be_bytes());
                    out.extend_from_slice(&a.value);
                }
            }
        }
    }

    fn parse_body(ptype: u8, body: &[u8]) -> Result<Payload, ParseError> {
        let mut r = Reader::new(body, "payload");
        Ok(match ptype {
            PayloadType::SA => Payload::Sa(parse_proposals(body)?),
            PayloadType::KE => {
                let group = r.u16()?;
                r.u16()?;
                Payload::Ke {
                    group,
                    data: r.rest().to_vec(),
                }
            }
            PayloadType::IDI | PayloadType::IDR => {
                let id_type = IdType(r.u8()?);
                r.take(3)?;
                let id = Id {
                    id_type,
                    data: r.rest().to_vec(),
                };
                if ptype == PayloadType::IDI {
                    Payload::IdI(id)
                } else {
                    Payload::IdR(id)
                }
            }
            PayloadType::CERT | PayloadType::CERTREQ => {
                let encoding = r.u8()?;
                let data = r.rest().to_vec();
                if ptype == PayloadType::CERT {
                    Payload::Cert { encoding, data }
                } else {
                    Payload::CertReq { encoding, data }
                }
            }
            PayloadType::AUTH => {
                let method = r.u8()?;
                r.take(3)?;
                Payload::Auth {
                    method,
                    data: r.rest().to_vec(),
                }
            }
            PayloadType::NONCE => {
                //= https://www.rfc-editor.org/rfc/rfc7296#section-3.9
                //# The size of the Nonce Data MUST be between 16 and 256 octets, inclusive.
                if !(16..=256).contains(&body.len()) {
                    return Err(ParseError::BadLength("nonce"));
                }
                Payload::Nonce(body.to_vec())
            }
            PayloadType::NOTIFY => {
                let protocol = r.u8()?;
                let spi_len = usize::from(r.u8()?);
                let ntype = r.u16()?;
                let spi = r.take(spi_len)?.to_vec();
                Payload::Notify(Notify {
                    protocol,
                    spi,
                    ntype,
                    data: r.rest().to_vec(),
                })
            }
            PayloadType::DELETE => Payload::Delete(parse_delete(&mut r)?),
            PayloadType::VENDOR => Payload::Vendor(body.to_vec()),
            PayloadType::TSI | PayloadType::TSR => {
                //= https://www.rfc-editor.org/rfc/rfc7296#section-3.13
                //# Number of TSs (1 octet) - Number of Traffic Selectors being provided.
                let n = usize::from(r.u8()?);
                r.take(3)?;
                if n == 0 {
                    return Err(ParseError::BadLength("traffic selectors"));
                }
                // The shortest selector (IPv4) is 16 bytes.
                r.room_for("traffic selectors", n, 16)?;
                let mut ts = Vec::with_capacity(n);
                for _ in 0..n {
                    ts.push(TrafficSelector::parse(&mut r)?);
                }
                if !r.is_empty() {
                    return Err(ParseError::BadLength("traffic selectors"));
                }
                if ptype == PayloadType::TSI {
                    Payload::TsI(ts)
                } else {
                    Payload::TsR(ts)
                }
            }
            PayloadType::CP => {
                let cfg_type = r.u8()?;
                r.take(3)?;
                let mut attrs = Vec::with_capacity(count_attributes(r.clone()));
                while !r.is_empty() {
                    let attr_type = r.u16()? & 0x7fff;
                    let len = usize::from(r.u16()?);
                    attrs.push(CfgAttr {
                        attr_type,
                        value: r.take(len)?.to_vec(),
                    });
                }
                Payload::Config(Config { cfg_type, attrs })
            }
            _ => Payload::Unknown {
                ptype,
                data: body.to_vec(),
            },
        })
    }
}

/// A Delete payload's body. Every SPI is backed by its SPI Size bytes received, so a Delete payload never
/// allocates more than 7 bytes per byte (a 4-byte SPI in its own 24-byte `Vec`).
fn parse_delete(r: &mut Reader<'_>) -> Result<Delete, ParseError> {
    let protocol = ProtocolId(r.u8()?);
    let spi_len = usize::from(r.u8()?);
    let n = usize::from(r.u16()?);
    //= https://www.rfc-editor.org/rfc/rfc7296#section-3.11
    //# o  Protocol ID (1 octet) - Must be 1 for an IKE SA, 2 for AH, or 3 for ESP.
    //#
    //# o  SPI Size (1 octet) - Length in octets of the SPI as defined by the protocol ID.  It MUST be zero for
    //#    IKE (SPI is in message header) or four for AH and ESP.
    let expected = match protocol {
        ProtocolId::IKE => 0,
        ProtocolId::AH | ProtocolId::ESP => 4,
        _ => return Err(ParseError::Invalid("Delete protocol ID")),
    };
    if spi_len != expected {
        return Err(ParseError::Invalid("Delete SPI Size"));
    }
    //= https://www.rfc-editor.org/rfc/rfc7296#section-3.11
    //# o  Num of SPIs (2 octets, unsigned integer) - The number of SPIs contained in the Delete payload.  The
    //#    size of each SPI is defined by the SPI Size field.
    //
    //= https://www.rfc-editor.org/rfc/rfc7296#section-3.11
    //# Deletion of the IKE SA is indicated by a protocol ID of 1 (IKE) but no SPIs.
    //
    // The bytes left must hold exactly Num of SPIs SPIs of SPI Size bytes: checked before allocating, so 65535
    // SPIs of size 0 in 8 bytes (65,535 empty `Vec`s) are refused rather than built.
    if (spi_len == 0 && n != 0) || n.checked_mul(spi_len) != Some(r.remaining()) {
        return Err(ParseError::Count {
            what: "Delete SPIs",
            count: n,
            room: r.remaining(),
        });
    }
    let mut spis = Vec::with_capacity(n);
    for _ in 0..n {
        spis.push(r.take(spi_len)?.to_vec());
    }
    Ok(Delete { protocol, spis })
}

/// How many configuration attributes (4-byte header and value) follow, counting until the first that does not
/// fit: the capacity to reserve, so the attribute vector is allocated once and never grows by doubling.
fn count_attributes(mut r: Reader<'_>) -> usize {
    let mut n = 0;
    while !r.is_empty() {
        let Ok(_) = r.u16() else { break };
        let Ok(len) = r.u16() else { break };
        if r.take(usize::from(len)).is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// How many proposal substructures the SA payload body holds, counting until the last or the first whose
/// length does not fit (the parser then reports the error): the capacity to reserve.
fn count_proposals(mut r: Reader<'_>) -> usize {
    let mut n = 0;
    loop {
        let Ok([last, _, l0, l1]) = r.array::<4>() else {
            return n;
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        if len < 8 || r.take(len - 4).is_err() {
            return n;
        }
        n += 1;
        if last != 2 {
            return n;
        }
    }
}

fn parse_proposals(body: &[u8]) -> Result<Vec<Proposal>, ParseError> {
    let mut r = Reader::new(body, "SA payload");
    let mut props = Vec::with_capacity(count_proposals(r.clone()));
    loop {
        let last = r.u8()?;
        r.u8()?;
        let len = usize::from(r.u16()?);
        //= https://www.rfc-editor.org/rfc/rfc7296#section-3.3.1
        //# Proposal Length (2 octets, unsigned integer) - Length of this proposal, including all transforms and
        //# attributes that follow.
        let Some(inner) = len.checked_sub(4).filter(|&l| l >= 4) else {
            return Err(ParseError::BadLength("proposal"));
        };
        let mut p = Reader::new(r.take(inner)?, "proposal");
        let num = p.u8()?;
        let protocol = ProtocolId(p.u8()?);
        let spi_len = usize::from(p.u8()?);
        let n = usize::from(p.u8()?);
        let spi = p.take(spi_len)?.to_vec();
        // Each transform is at least its 8-byte header: 255 of them announced in an empty proposal are refused
        // before 255 are allocated.
        p.room_for("transforms", n, 8)?;
        let mut transforms = Vec::with_capacity(n);
        for _ in 0..n {
            p.u8()?;
            p.u8()?;
            let tlen = usize::from(p.u16()?);
            let Some(tinner) = tlen.checked_sub(4).filter(|&l| l >= 4) else {
                return Err(ParseError::BadLength("transform"));
            };
            let mut t = Reader::new(p.take(tinner)?, "transform");
            let ttype = TransformType(t.u8()?);
            t.u8()?;
            let id = t.u16()?;
            let mut key_len = None;
            while !t.is_empty() {
                let af_type = t.u16()?;
                if af_type & 0x8000 != 0 {
                    let v = t.u16()?;
                    if af_type & 0x7fff == 14 {
                        key_len = Some(v);
                    }
                } else {
                    let l = usize::from(t.u16()?);
                    t.take(l)?;
                }
            }
            transforms.push(SaTransform { ttype, id, key_len });
        }
        if !p.is_empty() {
            return Err(ParseError::BadLength("proposal"));
        }
        props.push(Proposal {
            num,
            protocol,
            spi,
            transforms,
        });
        match last {
            0 => break,
            2 => continue,
            _ => return Err(ParseError::Invalid("proposal Last Substruc")),
        }
    }
    if !r.is_empty() {
        return Err(ParseError::BadLength("SA payload"));
    }
    Ok(props)
}

/// How many payloads the chain holds before its end, an Encrypted payload or the first header that does not
/// fit: the capacity to reserve, so the payload vector is allocated once (one 56-byte [`Payload`] per payload
/// of at least 4 bytes) and never grows by doubling.
fn count_payloads(mut next: u8, mut r: Reader<'_>) -> usize {
    let mut n = 0;
    while next != PayloadType::NONE && next != PayloadType::SK && next != PayloadType::SKF {
        let Ok([following, _, l0, l1]) = r.array::<4>() else {
            return n;
        };
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        if len < 4 || r.take(len - 4).is_err() {
            return n;
        }
        n += 1;
        next = following;
    }
    n
}

/// Parses a payload chain starting with type `first`. An SK or SKF payload ends the chain and is returned
/// apart; `base` is the offset of `buf` in the whole message (so the SK offset can be reported).
///
/// Work is linear in `buf.len()`; memory allocated is at most 16 bytes per byte of `buf`.
pub fn parse_chain(
    first: u8,
    buf: &[u8],
    base: usize,
) -> Result<(Vec<Payload>, Option<Encrypted<'_>>), ParseError> {
    let mut r = Reader::new(buf, "payload header");
    let mut payloads = Vec::with_capacity(count_payloads(first, r.clone()));
    let mut next = first;
    while next != PayloadType::NONE {
        let off = buf.len() - r.remaining();
        let following = r.u8()?;
        let critical = r.u8()? & 0x80 != 0;
        let len = usize::from(r.u16()?);
        let Some(body_len) = len.checked_sub(4) else {
            return Err(ParseError::BadLength("payload"));
        };
        let body = r
            .take(body_len)
            .map_err(|_| ParseError::BadLength("payload"))?;
        if next == PayloadType::SK || next == PayloadType::SKF {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-3.14
            //# The Encrypted payload, if present in a message, MUST be the last payload in the message.
            if !r.is_empty() {
                return Err(ParseError::Invalid("payload after the Encrypted payload"));
            }
            let (fragment, body) = if next == PayloadType::SKF {
                let mut f = Reader::new(body, "SKF payload");
                let number = f.u16()?;
                let total = f.u16()?;
                //= https://www.rfc-editor.org/rfc/rfc7383#section-2.5
                //# Fragment Number (2 octets, unsigned integer) - current Fragment message number, starting from 1.
                //# This field MUST be less than or equal to the next field (Total Fragments).  This field MUST NOT be
                //# zero.
                if number == 0 || number > total {
                    return Err(ParseError::Invalid("fragment number"));
                }
                (Some(Fragment { number, total }), f.rest())
            } else {
                (None, body)
            };
            return Ok((
                payloads,
                Some(Encrypted {
                    inner_next: following,
                    offset: base + off,
                    body,
                    fragment,
                }),
            ));
        }
        let known = matches!(next, 33..=45 | 47);
        if !known && critical {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.5
            //# If the critical flag is set and the payload type is unrecognized, the message MUST be rejected
            return Err(ParseError::UnsupportedCritical(next));
        }
        payloads.push(Payload::parse_body(next, body)?);
        next = following;
    }
    if !r.is_empty() {
        return Err(ParseError::BadLength(
            "trailing bytes after the last payload",
        ));
    }
    Ok((payloads, None))
}

/// Writes the length of the structure that starts at `start` and ends at the end of `out` into its 2-byte
/// length field, bytes 2 and 3 (the generic payload header, proposal and transform substructures alike).
fn set_length(out: &mut [u8], start: usize) {
    let len = out.len().saturating_sub(start) as u16;
    if let Some(field) = out.get_mut(start + 2..start + 4) {
        field.copy_from_slice(&len.to_be_bytes());
    }
}

/// Encodes a payload chain; returns the first payload's type (0 for an empty chain) and the bytes.
pub fn encode_chain(payloads: &[Payload]) -> (u8, Vec<u8>) {
    let mut out = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let start = out.len();
        out.push(
            payloads
                .get(i + 1)
                .map_or(PayloadType::NONE, Payload::ptype),
        );
        out.push(0);
        out.extend_from_slice(&[0, 0]);
        p.encode_body(&mut out);
        set_length(&mut out, start);
    }
    (
        payloads.first().map_or(PayloadType::NONE, Payload::ptype),
        out,
    )
}
