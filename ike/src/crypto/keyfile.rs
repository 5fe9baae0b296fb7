//! RSA key files: PEM (RFC 7468) and DER. Private keys as PKCS#8 (`BEGIN PRIVATE KEY`, as `openssl genpkey` and
//! `vmsecd keygen` write them) or PKCS#1 (`BEGIN RSA PRIVATE KEY`, as strongSwan's `pki --gen` writes them);
//! public keys as SubjectPublicKeyInfo (`BEGIN PUBLIC KEY`, `pki --pub`, `openssl pkey -pubout`) or PKCS#1
//! (`BEGIN RSA PUBLIC KEY`).
//!
//! Sans-IO: the caller reads the file and hands in its bytes. Decoded private key material only ever lives in
//! [`Zeroizing`] buffers; errors never quote the input.

use zeroize::{Zeroize, Zeroizing};

use super::signature::{PrivateKey, PublicKey};

/// Why a key file cannot be used. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Neither PEM (`-----BEGIN ...-----`) nor DER.
    #[error("not a PEM or DER key")]
    NotAKey,
    /// A PEM block with a label this kind of key cannot have.
    #[error("PEM block \"{label}\" is not {expected}")]
    Label {
        /// The label found.
        label: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The PEM block has no matching END line.
    #[error("PEM block \"{0}\" has no END line")]
    Unterminated(String),
    /// The PEM body is not valid base64.
    #[error("PEM body is not valid base64")]
    Base64,
    /// A password-protected key: vmsecd has no way to ask for the password.
    #[error("the private key is encrypted; store it unencrypted, readable by root only")]
    Encrypted,
    /// The DER does not hold an RSA key (or aws-lc rejected it: inconsistent components, too small).
    #[error("not a usable RSA {what}: {reason}")]
    Rejected {
        /// "private key" or "public key".
        what: &'static str,
        /// aws-lc's reason.
        reason: String,
    },
    /// A key size vmsecd does not accept.
    #[error("RSA key of {bits} bits; allowed: 2048 to 8192 bits")]
    Size {
        /// The modulus size.
        bits: usize,
    },
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Decodes base64 (RFC 4648 4, with padding), ignoring whitespace.
fn base64_decode(text: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3));
    let mut acc: u32 = 0;
    let mut n = 0u32;
    let mut pad = 0usize;
    for &c in text.iter().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            pad += 1;
            acc <<= 6;
            n += 1;
        } else {
            if pad > 0 {
                return Err(KeyError::Base64);
            }
            let v = B64.iter().position(|&b| b == c).ok_or(KeyError::Base64)? as u32;
            acc = (acc << 6) | v;
            n += 1;
        }
        if n == 4 {
            let [_, a, b, c] = acc.to_be_bytes();
            match pad {
                0 => out.extend_from_slice(&[a, b, c]),
                1 => out.extend_from_slice(&[a, b]),
                _ => out.push(a),
            }
            acc = 0;
            n = 0;
        }
    }
    acc.zeroize();
    if n != 0 || pad > 2 {
        return Err(KeyError::Base64);
    }
    Ok(out)
}

/// Encodes base64 with 64-character lines, as PEM wants.
fn base64_encode(data: &[u8]) -> Zeroizing<String> {
    let mut out = Zeroizing::new(String::with_capacity(
        data.len() * 4 / 3 + data.len() / 48 + 4,
    ));
    for (i, chunk) in data.chunks(3).enumerate() {
        if i > 0 && i % 16 == 0 {
            out.push('\n');
        }
        let byte = |i: usize| chunk.get(i).copied().unwrap_or(0);
        let v = u32::from_be_bytes([0, byte(0), byte(1), byte(2)]);
        for k in 0..4 {
            // `& 63` keeps the index below 64, the alphabet's length.
            match B64.get((v >> (18 - 6 * k)) as usize & 63) {
                Some(&c) if k <= chunk.len() => out.push(c as char),
                _ => out.push('='),
            }
        }
    }
    out
}

/// A PEM block: its label and decoded body.
type PemBlock = (String, Zeroizing<Vec<u8>>);

/// The first PEM block of `text`, if it has one.
fn pem_block(text: &[u8]) -> Result<Option<PemBlock>, KeyError> {
    Ok(pem_block_and_rest(text)?.map(|(b, _)| b))
}

/// Every PEM block of `text`, in order (a certificate file may hold a chain).
pub(crate) fn pem_blocks(mut text: &[u8]) -> Result<Vec<PemBlock>, KeyError> {
    let mut out = Vec::new();
    while let Some((b, rest)) = pem_block_and_rest(text)? {
        out.push(b);
        text = rest;
    }
    Ok(out)
}

/// The first PEM block of `text` and what follows it.
fn pem_block_and_rest(text: &[u8]) -> Result<Option<(PemBlock, &[u8])>, KeyError> {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let Some(start) = text.windows(BEGIN.len()).position(|w| w == BEGIN) else {
        return Ok(None);
    };
    let rest = text.get(start + BEGIN.len()..).unwrap_or_default();
    let label_end = rest
        .windows(5)
        .position(|w| w == b"-----")
        .ok_or(KeyError::NotAKey)?;
    let (label, body) = rest.split_at_checked(label_end).ok_or(KeyError::NotAKey)?;
    let label = String::from_utf8_lossy(label).into_owned();
    let body = body.get(5..).unwrap_or_default();
    let end_marker = format!("-----END {label}-----");
    let end = body
        .windows(end_marker.len())
        .position(|w| w == end_marker.as_bytes())
        .ok_or_else(|| KeyError::Unterminated(label.clone()))?;
    let (body, rest) = body
        .split_at_checked(end)
        .ok_or_else(|| KeyError::Unterminated(label.clone()))?;
    let rest = rest.get(end_marker.len()..).unwrap_or_default();
    //= https://www.rfc-editor.org/rfc/rfc1421#section-4.6.1.1
    //# Proc-Type: 4,ENCRYPTED
    if label.contains("ENCRYPTED") || body.windows(10).any(|w| w == b"Proc-Type:") {
        return Err(KeyError::Encrypted);
    }
    Ok(Some(((label, base64_decode(body)?), rest)))
}

/// Writes DER as a PEM block (RFC 7468 2).
pub fn to_pem(label: &str, der: &[u8]) -> Zeroizing<String> {
    let b64 = base64_encode(der);
    let mut out = Zeroizing::new(String::with_capacity(b64.len() + 2 * label.len() + 40));
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    out.push_str(&b64);
    out.push_str("\n-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Parses an RSA private key: PEM `PRIVATE KEY` (PKCS#8) or `RSA PRIVATE KEY` (PKCS#1), or either as DER.
pub fn parse_private_key(bytes: &[u8]) -> Result<PrivateKey, KeyError> {
    match pem_block(bytes)? {
        Some((label, der)) => match label.as_str() {
            "PRIVATE KEY" => PrivateKey::from_pkcs8(&der),
            "RSA PRIVATE KEY" => PrivateKey::from_pkcs1(&der),
            _ => Err(KeyError::Label {
                label,
                expected: "PRIVATE KEY or RSA PRIVATE KEY",
            }),
        },
        None if bytes.first() == Some(&0x30) => {
            PrivateKey::from_pkcs8(bytes).or_else(|_| PrivateKey::from_pkcs1(bytes))
        }
        None => Err(KeyError::NotAKey),
    }
}

/// Parses an RSA public key: PEM `PUBLIC KEY` (SubjectPublicKeyInfo) or `RSA PUBLIC KEY` (PKCS#1), or DER.
pub fn parse_public_key(bytes: &[u8]) -> Result<PublicKey, KeyError> {
    match pem_block(bytes)? {
        Some((label, der)) => match label.as_str() {
            "PUBLIC KEY" | "RSA PUBLIC KEY" => PublicKey::from_der(&der),
            _ => Err(KeyError::Label {
                label,
                expected: "PUBLIC KEY or RSA PUBLIC KEY",
            }),
        },
        None if bytes.first() == Some(&0x30) => PublicKey::from_der(bytes),
        None => Err(KeyError::NotAKey),
    }
}

/// A minimal DER reader: enough for SubjectPublicKeyInfo, RSAPublicKey and AlgorithmIdentifier.
pub(crate) mod der {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for n in 0..70 {
            let data: Vec<u8> = (0..n as u8).map(|i| i.wrapping_mul(37)).collect();
            let enc = base64_encode(&data);
            assert_eq!(*base64_decode(enc.as_bytes()).unwrap(), data, "{n}");
        }
        assert_eq!(*base64_decode(b"TWFu").unwrap(), b"Man");
        assert_eq!(*base64_decode(b"TWE=").unwrap(), b"Ma");
        assert_eq!(*base64_decode(b"TQ==\n").unwrap(), b"M");
        assert!(base64_decode(b"TQ=").is_err());
        assert!(base64_decode(b"T*==").is_err());
        assert!(base64_decode(b"TQ==TQ==").is_err());
    }

    #[test]
    fn pem_errors_name_the_problem() {
        assert_eq!(parse_private_key(b"hello").unwrap_err(), KeyError::NotAKey);
        assert_eq!(
            parse_private_key(b"-----BEGIN CERTIFICATE-----\nTQ==\n-----END CERTIFICATE-----\n")
                .unwrap_err(),
            KeyError::Label {
                label: "CERTIFICATE".into(),
                expected: "PRIVATE KEY or RSA PRIVATE KEY"
            }
        );
        assert_eq!(
            parse_private_key(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nTQ==\n-----END ENCRYPTED PRIVATE KEY-----\n")
                .unwrap_err(),
            KeyError::Encrypted
        );
        assert_eq!(
            parse_private_key(b"-----BEGIN PRIVATE KEY-----\nTQ==\n").unwrap_err(),
            KeyError::Unterminated("PRIVATE KEY".into())
        );
        assert!(matches!(
            parse_private_key(b"-----BEGIN PRIVATE KEY-----\nTQ==\n-----END PRIVATE KEY-----\n"),
            Err(KeyError::Rejected { .. })
        ));
    }

    #[test]
    fn der_lengths() {
        let long = vec![7u8; 300];
        let enc = der::write(der::SEQUENCE, &long);
        let (tag, v, rest) = der::tlv(&enc).unwrap();
        assert_eq!((tag, v.len(), rest.len()), (0x30, 300, 0));
        assert!(der::tlv(&[0x30, 0x81, 0x05, 0, 0, 0, 0, 0]).is_none()); // not the shortest form
        assert!(der::tlv(&[0x30, 0x05, 0]).is_none());
    }
}
