//! PEM (RFC 7468): base64 bodies between BEGIN and END lines, for key files and certificate files. Decoded
//! bodies only ever live in [`Zeroizing`] buffers (a private key's DER is secret); errors never quote the input.

use zeroize::{Zeroize, Zeroizing};

use super::key_error::KeyError;

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
pub(crate) fn pem_block(text: &[u8]) -> Result<Option<PemBlock>, KeyError> {
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
}
