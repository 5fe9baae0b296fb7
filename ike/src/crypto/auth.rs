//! AUTH with a pre-shared key (RFC 7296 2.15), NAT detection hashes (2.23) and stateless cookies (2.6).

use std::net::IpAddr;

use aws_lc_rs::{constant_time, digest};

use super::prf::Prf;
use super::CryptoError;

/// The octets an AUTH payload signs or MACs: `RealMessage | Nonce(peer) | prf(SK_px, IDx')`.
///
/// - `first_message`: our IKE_SA_INIT message exactly as sent (the initiator's request or the responder's
///   reply), from the IKE header on (without the four zero octets of a port-4500 non-ESP marker);
/// - `nonce_peer`: the peer's nonce value (the body of its Nonce payload);
/// - `sk_p`: SK_pi when computing or checking the initiator's AUTH, SK_pr for the responder's;
/// - `id_payload_body`: the ID payload without its generic header: ID Type, 3 reserved octets, data.
//= https://www.rfc-editor.org/rfc/rfc7296#section-2.15
//# InitiatorSignedOctets = RealMessage1 | NonceRData | MACedIDForI
pub fn signed_octets(
    first_message: &[u8],
    nonce_peer: &[u8],
    prf: Prf,
    sk_p: &[u8],
    id_payload_body: &[u8],
) -> Vec<u8> {
    //= https://www.rfc-editor.org/rfc/rfc7296#section-2.15
    //# MACedIDForI = prf(SK_pi, RestOfInitIDPayload)
    let maced_id = prf.prf(sk_p, id_payload_body);
    let mut out = Vec::with_capacity(first_message.len() + nonce_peer.len() + maced_id.len());
    out.extend_from_slice(first_message);
    out.extend_from_slice(nonce_peer);
    out.extend_from_slice(&maced_id);
    out
}

/// The Authentication Data of a shared-key AUTH payload (Auth Method 2) over `signed_octets`.
//= https://www.rfc-editor.org/rfc/rfc7296#section-2.15
//# AUTH = prf( prf(Shared Secret, "Key Pad for IKEv2"), <InitiatorSignedOctets>)
pub fn psk_auth(prf: Prf, psk: &[u8], signed_octets: &[u8]) -> Vec<u8> {
    let pad_key = prf.prf(psk, b"Key Pad for IKEv2");
    prf.prf(&pad_key, signed_octets).to_vec()
}

/// Checks a peer's shared-key Authentication Data, in constant time.
pub fn verify_psk_auth(
    prf: Prf,
    psk: &[u8],
    signed_octets: &[u8],
    received: &[u8],
) -> Result<(), CryptoError> {
    let expected = psk_auth(prf, psk, signed_octets);
    constant_time::verify_slices_are_equal(&expected, received)
        .map_err(|_| CryptoError::AuthenticationFailed)
}

fn ip_octets(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The data of a NAT_DETECTION_SOURCE_IP or NAT_DETECTION_DESTINATION_IP notification:
/// SHA-1(SPIi | SPIr | IP | Port), SPIr zero in an IKE_SA_INIT request.
//= https://www.rfc-editor.org/rfc/rfc7296#section-2.23
//# The data associated with the NAT_DETECTION_SOURCE_IP notification is a
//# SHA-1 digest of the SPIs (in the order they appear in the header), IP
//# address, and port from which this packet was sent.
pub fn nat_detection_hash(spi_i: u64, spi_r: u64, ip: IpAddr, port: u16) -> [u8; 20] {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&spi_i.to_be_bytes());
    ctx.update(&spi_r.to_be_bytes());
    ctx.update(&ip_octets(ip));
    ctx.update(&port.to_be_bytes());
    // SHA-1 digests are 20 bytes: the default (zeros) is never taken.
    ctx.finish()
        .as_ref()
        .first_chunk::<20>()
        .copied()
        .unwrap_or_default()
}

/// Length of the cookies [`cookie`] makes: a 4-byte secret id and a SHA-256 hash.
pub const COOKIE_LEN: usize = 4 + 32;

/// `<VersionIDofSecret>`: the first 4 bytes of a domain-separated hash of the secret, so that the responder
/// can rotate secrets without keeping a counter, and tell which secret a returned cookie was made with.
fn secret_id(secret: &[u8; 32]) -> [u8; 4] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"vmsecd IKEv2 cookie secret id");
    ctx.update(secret);
    // SHA-256 digests are 32 bytes: the default (zeros) is never taken.
    ctx.finish()
        .as_ref()
        .first_chunk::<4>()
        .copied()
        .unwrap_or_default()
}

/// A stateless COOKIE for an IKE_SA_INIT request from `ip` carrying nonce `ni` and initiator SPI `spi_i`.
///
/// `secret` is a random value known only to us, regenerated periodically; keep the previous one for a while and
/// check returned cookies with [`verify_cookie`].
//= https://www.rfc-editor.org/rfc/rfc7296#section-2.6
//# Cookie = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>)
pub fn cookie(secret: &[u8; 32], ni: &[u8], ip: IpAddr, spi_i: u64) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(ni);
    ctx.update(&ip_octets(ip));
    ctx.update(&spi_i.to_be_bytes());
    ctx.update(secret);
    let mut out = Vec::with_capacity(COOKIE_LEN);
    out.extend_from_slice(&secret_id(secret));
    out.extend_from_slice(ctx.finish().as_ref());
    out
}

/// Whether `received` is a cookie that one of our current `secrets` made for this request. The secret is
/// picked by the cookie's version id; the hash is compared in constant time.
pub fn verify_cookie(
    secrets: &[&[u8; 32]],
    received: &[u8],
    ni: &[u8],
    ip: IpAddr,
    spi_i: u64,
) -> bool {
    if received.len() != COOKIE_LEN {
        return false;
    }
    secrets.iter().any(|secret| {
        received.first_chunk::<4>() == Some(&secret_id(secret))
            && constant_time::verify_slices_are_equal(&cookie(secret, ni, ip, spi_i), received)
                .is_ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::test_util::hex;

    // Expected values from an independent implementation (Python hashlib/hmac); no published vectors exist.

    #[test]
    fn nat_detection() {
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(
            nat_detection_hash(0x0102030405060708, 0, v4, 500).to_vec(),
            hex("644b4575455bd6fcc1efe2be8162a9218e448e5f")
        );
        assert_eq!(
            nat_detection_hash(0x0102030405060708, 0x1112131415161718, v6, 4500).to_vec(),
            hex("1ee24423bf8f59515e0265c6d0f08be3d038f7e5")
        );
        assert_ne!(
            nat_detection_hash(1, 0, v4, 500),
            nat_detection_hash(1, 0, v4, 4500)
        );
    }

    #[test]
    fn psk_auth_construction() {
        let first: Vec<u8> = (0..40).collect();
        let nr = [0xaa; 32];
        let sk_pi = [0x11; 32];
        let idi = [1, 0, 0, 0, 192, 0, 2, 1]; // ID_IPV4_ADDR 192.0.2.1
        let octets = signed_octets(&first, &nr, Prf::HmacSha256, &sk_pi, &idi);
        assert_eq!(
            octets,
            hex(
                "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021222324252627
                 aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
                 01d465f45cdaa4e9662b28864a1eba20a71f86d4bf122c2f8528e356ee2335d7"
            )
        );
        let psk = b"correct horse battery staple";
        let auth = psk_auth(Prf::HmacSha256, psk, &octets);
        assert_eq!(
            auth,
            hex("1f7d585ba6aeecce712e3bd562138264c6b05182db284e24ce5d163f9629da75")
        );
        assert!(verify_psk_auth(Prf::HmacSha256, psk, &octets, &auth).is_ok());
        assert_eq!(
            verify_psk_auth(Prf::HmacSha256, b"wrong", &octets, &auth),
            Err(CryptoError::AuthenticationFailed)
        );
        assert!(verify_psk_auth(Prf::HmacSha256, psk, &octets, &auth[..31]).is_err());
        assert_eq!(psk_auth(Prf::HmacSha512, psk, &octets).len(), 64);
    }

    #[test]
    fn cookies() {
        let (s1, s2) = ([1u8; 32], [2u8; 32]);
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let c = cookie(&s1, b"nonce", ip, 42);
        assert_eq!(c.len(), COOKIE_LEN);
        const { assert!(COOKIE_LEN <= 64) }; // RFC 7296: COOKIE data is 1 to 64 octets
        assert!(verify_cookie(&[&s2, &s1], &c, b"nonce", ip, 42));
        assert!(!verify_cookie(&[&s2], &c, b"nonce", ip, 42));
        assert!(!verify_cookie(&[&s1], &c, b"nonce", ip, 43));
        assert!(!verify_cookie(&[&s1], &c, b"other", ip, 42));
        assert!(!verify_cookie(
            &[&s1],
            &c,
            b"nonce",
            "198.51.100.8".parse().unwrap(),
            42
        ));
        assert!(!verify_cookie(&[&s1], &c[..35], b"nonce", ip, 42));
        assert_ne!(c[..4], cookie(&s2, b"nonce", ip, 42)[..4]);
    }
}
