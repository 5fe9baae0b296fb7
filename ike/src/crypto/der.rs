//! A minimal DER reader and writer (X.690): enough for SubjectPublicKeyInfo, RSAPublicKey, AlgorithmIdentifier,
//! the signature schemes of RFC 7427 and the X.509 certificates vmsecd checks. A leaf: key files, signatures and
//! certificates all read DER through it.

/// One TLV: `(tag, value, rest)`, or `None` if `input` does not start with a well-formed DER TLV.
pub(crate) fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 3 {
            return None;
        }
        let (len_bytes, rest) = rest.split_at_checked(n)?;
        let len = len_bytes.iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        // DER: the shortest length form.
        if len < 0x80 || len_bytes.first() == Some(&0) {
            return None;
        }
        (len, rest)
    };
    let (value, rest) = rest.split_at_checked(len)?;
    Some((tag, value, rest))
}

/// A TLV with the expected tag.
pub(crate) fn expect(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, v, rest) = tlv(input)?;
    (tag == want).then_some((v, rest))
}

pub(crate) const SEQUENCE: u8 = 0x30;
pub(crate) const INTEGER: u8 = 0x02;
pub(crate) const BIT_STRING: u8 = 0x03;
pub(crate) const NULL: u8 = 0x05;
pub(crate) const OID: u8 = 0x06;

/// Encodes one TLV (lengths up to 65535).
pub(crate) fn write(tag: u8, value: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match value.len() {
        n if n < 0x80 => out.push(n as u8),
        n if n < 0x100 => out.extend_from_slice(&[0x81, n as u8]),
        n => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
    }
    out.extend_from_slice(value);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths() {
        let long = vec![7u8; 300];
        let enc = write(SEQUENCE, &long);
        let (tag, v, rest) = tlv(&enc).unwrap();
        assert_eq!((tag, v.len(), rest.len()), (0x30, 300, 0));
        assert!(tlv(&[0x30, 0x81, 0x05, 0, 0, 0, 0, 0]).is_none()); // not the shortest form
        assert!(tlv(&[0x30, 0x05, 0]).is_none());
    }
}
