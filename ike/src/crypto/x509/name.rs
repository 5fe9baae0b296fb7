//! X.501 distinguished names inside certificates: read as attribute/value pairs, compared as strongSwan does, and
//! printed as strongSwan prints them (`C=CH, O=strongSwan, CN=moon.strongswan.org`). A leaf over the DER reader,
//! so that identities (`message::id`) can print a DN without depending on certificate checking.

use crate::crypto::der;

/// An OID in dotted decimal, for an attribute or extension vmsecd has no name for.
pub(super) fn dotted_oid(oid: &[u8]) -> String {
    let mut parts = Vec::new();
    let mut v: u64 = 0;
    for (i, &b) in oid.iter().enumerate() {
        v = (v << 7) | (b & 0x7f) as u64;
        if b & 0x80 == 0 {
            if parts.is_empty() {
                let first = (v / 40).min(2);
                parts.push(first);
                parts.push(v - 40 * first);
            } else {
                parts.push(v);
            }
            v = 0;
        }
        if i > 64 {
            break;
        }
    }
    parts
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// The attribute type/value pairs of a DER Name, in order; `None` if it is not a Name.
pub(super) fn rdns(name: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let (mut seq, rest) = der::expect(name, der::SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    while !seq.is_empty() {
        let (mut set, r) = der::expect(seq, 0x31)?;
        seq = r;
        while !set.is_empty() {
            let (atv, r) = der::expect(set, der::SEQUENCE)?;
            set = r;
            let (oid, value) = der::expect(atv, der::OID)?;
            let (_, value, _) = der::tlv(value)?;
            out.push((oid, value));
        }
    }
    Some(out)
}

/// Two DNs are the same if their attributes and values are, whatever string type each value uses (strongSwan
/// writes PrintableString where OpenSSL writes UTF8String).
pub(super) fn same_dn(a: &[u8], b: &[u8]) -> bool {
    a == b || matches!((rdns(a), rdns(b)), (Some(x), Some(y)) if x == y)
}

/// A DER Name as strongSwan prints it: `C=CH, O=strongSwan, CN=moon.strongswan.org`.
pub fn dn_to_string(name: &[u8]) -> String {
    const NAMES: &[(&[u8], &str)] = &[
        (&[0x55, 0x04, 0x06], "C"),
        (&[0x55, 0x04, 0x08], "ST"),
        (&[0x55, 0x04, 0x07], "L"),
        (&[0x55, 0x04, 0x0a], "O"),
        (&[0x55, 0x04, 0x0b], "OU"),
        (&[0x55, 0x04, 0x03], "CN"),
        (&[0x55, 0x04, 0x05], "SN"),
        (&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01], "E"),
        (
            &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
            "DC",
        ),
    ];
    let Some(list) = rdns(name) else {
        return "(unparsable DN)".into();
    };
    let parts: Vec<String> = list
        .iter()
        .map(|(oid, v)| {
            let key = NAMES
                .iter()
                .find(|(o, _)| o == oid)
                .map(|(_, n)| (*n).to_owned())
                .unwrap_or_else(|| dotted_oid(oid));
            format!("{key}={}", String::from_utf8_lossy(v))
        })
        .collect();
    parts.join(", ")
}
