//! Distinguished Name identities (ID_DER_ASN1_DN, RFC 7296 3.5) written as strongSwan writes them:
//! `C=CH, O=example, CN=gw.example.net` (or with `/` separators), encoded to DER the way strongSwan's
//! `identification_create_from_string` does, so that the bytes on the wire match what charon sends and expects:
//! one RDN per SET, PrintableString when the value allows it and UTF8String otherwise, IA5String for e-mail
//! addresses.

/// An attribute strongSwan knows by name: its OID (DER value bytes) and whether it is an IA5String.
const ATTRS: &[(&str, &[u8], bool)] = &[
    ("C", &[0x55, 0x04, 0x06], false),
    ("ST", &[0x55, 0x04, 0x08], false),
    ("L", &[0x55, 0x04, 0x07], false),
    ("O", &[0x55, 0x04, 0x0a], false),
    ("OU", &[0x55, 0x04, 0x0b], false),
    ("CN", &[0x55, 0x04, 0x03], false),
    ("S", &[0x55, 0x04, 0x04], false),
    ("SN", &[0x55, 0x04, 0x05], false),
    ("serialNumber", &[0x55, 0x04, 0x05], false),
    ("T", &[0x55, 0x04, 0x0c], false),
    ("G", &[0x55, 0x04, 0x2a], false),
    (
        "E",
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
        true,
    ),
    (
        "emailAddress",
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
        true,
    ),
    (
        "DC",
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
        false,
    ),
    (
        "UID",
        &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01],
        false,
    ),
];

const PRINTABLE_STRING: u8 = 0x13;
const UTF8_STRING: u8 = 0x0c;
const IA5_STRING: u8 = 0x16;

fn tlv(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match value.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend_from_slice(&[0x81, n as u8]),
        n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(value);
    out
}

// The PrintableString alphabet (X.680 41.4): A-Z a-z 0-9 space ' ( ) + , - . / : = ?
fn is_printable(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b" '()+,-./:=?".contains(&b))
}

/// Whether `text` is written as a DN (`KEY=value` with a known attribute first).
pub(super) fn looks_like_dn(text: &str) -> bool {
    let first = text.trim_start_matches('/');
    first
        .split_once('=')
        .is_some_and(|(k, _)| ATTRS.iter().any(|(name, _, _)| *name == k.trim()))
}

/// Why a DN written in the mesh file cannot be encoded: the file's fault, each naming the part to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnError {
    /// A part without `=`.
    #[error("{part:?} in DN {dn:?} is not KEY=value")]
    NotKeyValue {
        /// The part.
        part: String,
        /// The whole DN as written.
        dn: String,
    },
    /// An attribute name vmsecd does not know.
    #[error("unknown attribute {key:?} in DN {dn:?} (known: {known})")]
    UnknownAttribute {
        /// The attribute as written.
        key: String,
        /// The whole DN as written.
        dn: String,
        /// The attributes vmsecd knows, comma-separated.
        known: String,
    },
    /// `KEY=` with nothing after it.
    #[error("empty value for {key} in DN {dn:?}")]
    EmptyValue {
        /// The attribute.
        key: String,
        /// The whole DN as written.
        dn: String,
    },
    /// No `KEY=value` at all.
    #[error("DN {0:?} has no attribute")]
    Empty(String),
}

/// Parses `C=CH, O=example, CN=gw` (`,` or `/` between RDNs) into the DER of the Name; the error names the
/// attribute that is not understood.
pub(super) fn parse(text: &str) -> Result<Vec<u8>, DnError> {
    let sep = if text.starts_with('/') { '/' } else { ',' };
    let mut rdns = Vec::new();
    for part in text.split(sep).map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = part.split_once('=').ok_or_else(|| DnError::NotKeyValue {
            part: part.to_owned(),
            dn: text.to_owned(),
        })?;
        let (key, value) = (key.trim(), value.trim());
        let (_, oid, ia5) = ATTRS
            .iter()
            .find(|(name, _, _)| *name == key)
            .ok_or_else(|| DnError::UnknownAttribute {
                key: key.to_owned(),
                dn: text.to_owned(),
                known: ATTRS.iter().map(|a| a.0).collect::<Vec<_>>().join(", "),
            })?;
        if value.is_empty() {
            return Err(DnError::EmptyValue {
                key: key.to_owned(),
                dn: text.to_owned(),
            });
        }
        let string_type = if *ia5 && value.is_ascii() {
            IA5_STRING
        } else if is_printable(value) {
            PRINTABLE_STRING
        } else {
            UTF8_STRING
        };
        let mut atv = tlv(0x06, oid);
        atv.extend(tlv(string_type, value.as_bytes()));
        rdns.extend(tlv(0x31, &tlv(0x30, &atv)));
    }
    if rdns.is_empty() {
        return Err(DnError::Empty(text.to_owned()));
    }
    Ok(tlv(0x30, &rdns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_strongswan() {
        // As in a certificate strongSwan's `pki --self --dn "C=CH, O=strongSwan, CN=moon, E=a@b.example, CN=gw_1"`
        // makes (`openssl asn1parse`): each RDN a SET of one AttributeTypeAndValue; PrintableString, IA5String
        // for the e-mail, UTF8String for "gw_1".
        let der = parse("C=CH, O=strongSwan, CN=moon").unwrap();
        let want: Vec<u8> = [
            &[0x30, 0x31][..],
            &[
                0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x06, 0x13, 0x02,
            ],
            b"CH",
            &[
                0x31, 0x13, 0x30, 0x11, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x13, 0x0a,
            ],
            b"strongSwan",
            &[
                0x31, 0x0d, 0x30, 0x0b, 0x06, 0x03, 0x55, 0x04, 0x03, 0x13, 0x04,
            ],
            b"moon",
        ]
        .concat();
        assert_eq!(der, want);
        assert_eq!(parse("/C=CH/O=strongSwan/CN=moon").unwrap(), want);
        // Not printable: UTF8String; e-mail: IA5String.
        let der = parse("CN=gw_1, E=a@b.example").unwrap();
        assert!(der.windows(2).any(|w| w == [UTF8_STRING, 4]));
        assert!(der.windows(2).any(|w| w == [IA5_STRING, 11]));
        assert!(parse("X=1").is_err());
        assert!(parse("CN=").is_err());
        assert!(looks_like_dn("C=CH, CN=x") && looks_like_dn("/CN=x"));
        assert!(!looks_like_dn("gw.example.net") && !looks_like_dn("a=b@example.net"));
    }
}
