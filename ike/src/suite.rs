//! The negotiated IKE SA algorithms with their keys: the glue between proposals, the crypto module and the
//! message codec. Everything the state machine needs from cryptography goes through here.

use std::net::IpAddr;

use zeroize::Zeroizing;

use crate::crypto::{auth, dh, keys, prf::Prf, sk, CryptoError};
use crate::message::{self, Encrypted, Header, Id, Payload, PayloadType, HEADER_LEN};
use crate::proposal::{ids, Chosen};

/// Fills `buf` from the crypto backend's DRBG.
/// Why the suite could not do what an exchange needed, split by whose fault it is (as rustls's `Error` is):
/// [`SuiteError::Crypto`] keeps the crypto layer's own split (the peer's invalid public value or failed
/// authentication, a local backend failure); the others are negotiated choices vmsecd does not implement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SuiteError {
    /// A key exchange group vmsecd has no implementation of (the peer is incompatible, or our configuration names
    /// one only the parser knows).
    #[error("key exchange group {0} is not implemented")]
    UnsupportedGroup(u16),
    /// A negotiated algorithm or combination vmsecd does not implement (the peer is incompatible).
    #[error("{0}")]
    Unsupported(&'static str),
    /// What the crypto layer refused, with its own split by fault (see [`CryptoError`]).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

pub(crate) fn fill_random(buf: &mut [u8]) {
    use aws_lc_rs::rand::SecureRandom;
    // aws-lc's RAND_bytes aborts the process itself when its entropy source fails, so this error is not
    // reachable; if it ever were, going on with predictable SPIs, nonces or keys is worse than stopping.
    if aws_lc_rs::rand::SystemRandom::new().fill(buf).is_err() {
        std::process::abort();
    }
}

/// Checks the peer's Key Exchange Data for `group` before any key of ours is generated for it: the group is
/// one we implement and the value is valid for it (MODP: right length and 1 < y < p-1; ECP: a point on the
/// curve; Curve25519: 32 bytes). Cheap next to a key generation, so a request with a bad value costs us no
/// Diffie-Hellman work.
pub(crate) fn check_public(group: u16, peer: &[u8]) -> Result<(), SuiteError> {
    let g = dh::DhGroup::from_id(group).ok_or(SuiteError::UnsupportedGroup(group))?;
    Ok(dh::check_public(g, peer)?)
}

/// Constant-time equality of two MACs.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

/// NAT_DETECTION_*_IP data (RFC 7296 2.23).
pub(crate) fn nat_hash(spi_i: u64, spi_r: u64, ip: IpAddr, port: u16) -> [u8; 20] {
    auth::nat_detection_hash(spi_i, spi_r, ip, port)
}

/// The ESP transform a negotiated Child SA proposal names, if the datapath implements it.
pub(crate) fn esp_transform(c: &Chosen) -> Option<esp::Transform> {
    use esp::Transform as T;
    let integ = c.integ.map(|i| i.id);
    Some(match (c.encr.id, c.encr.key_len, integ) {
        (ids::ENCR_AES_GCM_16, Some(128), None) => T::AesGcm128,
        (ids::ENCR_AES_GCM_16, Some(256), None) => T::AesGcm256,
        (ids::ENCR_CHACHA20_POLY1305, None, None) => T::ChaCha20Poly1305,
        (ids::ENCR_AES_CBC, Some(128), Some(ids::AUTH_HMAC_SHA2_256_128)) => T::AesCbc128HmacSha256,
        (ids::ENCR_AES_CBC, Some(256), Some(ids::AUTH_HMAC_SHA2_256_128)) => T::AesCbc256HmacSha256,
        _ => return None,
    })
}

fn ike_encr(c: &Chosen) -> Option<sk::IkeEncr> {
    Some(match (c.encr.id, c.encr.key_len) {
        (ids::ENCR_AES_GCM_16, Some(128)) => sk::IkeEncr::AesGcm16_128,
        (ids::ENCR_AES_GCM_16, Some(256)) => sk::IkeEncr::AesGcm16_256,
        (ids::ENCR_CHACHA20_POLY1305, None) => sk::IkeEncr::ChaCha20Poly1305,
        (ids::ENCR_AES_CBC, Some(128)) => sk::IkeEncr::AesCbc128,
        (ids::ENCR_AES_CBC, Some(256)) => sk::IkeEncr::AesCbc256,
        _ => return None,
    })
}

fn ike_integ(c: &Chosen) -> Option<Option<sk::Integ>> {
    Some(match c.integ.map(|i| i.id) {
        None => None,
        Some(ids::AUTH_HMAC_SHA2_256_128) => Some(sk::Integ::HmacSha256_128),
        Some(ids::AUTH_HMAC_SHA2_384_192) => Some(sk::Integ::HmacSha384_192),
        Some(ids::AUTH_HMAC_SHA2_512_256) => Some(sk::Integ::HmacSha512_256),
        Some(_) => return None,
    })
}

/// The IKE SA's encryption, integrity (none for AEADs) and PRF, or which of them we do not implement.
fn ike_algorithms(c: &Chosen) -> Result<(sk::IkeEncr, Option<sk::Integ>, Prf), SuiteError> {
    Ok((
        ike_encr(c).ok_or(SuiteError::Unsupported("unsupported IKE encryption"))?,
        ike_integ(c).ok_or(SuiteError::Unsupported("unsupported IKE integrity"))?,
        ike_prf(c).ok_or(SuiteError::Unsupported("unsupported PRF"))?,
    ))
}

/// The PRF of a negotiated IKE proposal, if we implement it.
pub(crate) fn ike_prf(c: &Chosen) -> Option<Prf> {
    Some(match c.prf?.id {
        ids::PRF_HMAC_SHA2_256 => Prf::HmacSha256,
        ids::PRF_HMAC_SHA2_384 => Prf::HmacSha384,
        ids::PRF_HMAC_SHA2_512 => Prf::HmacSha512,
        _ => return None,
    })
}

/// True if every algorithm of a negotiated IKE proposal is implemented.
pub(crate) fn ike_supported(c: &Chosen) -> bool {
    ike_encr(c).is_some()
        && ike_integ(c).is_some()
        && ike_prf(c).is_some()
        && c.dh.and_then(dh::DhGroup::from_id).is_some()
        && (ike_encr(c).is_some_and(|e| e.is_aead()) == ike_integ(c).is_some_and(|i| i.is_none()))
}

/// Our ephemeral key exchange value.
pub(crate) struct KeyShare(dh::KeyShare);

impl std::fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KeyShare(group {}, redacted)", self.group())
    }
}

impl KeyShare {
    pub(crate) fn generate(group: u16) -> Result<KeyShare, SuiteError> {
        let g = dh::DhGroup::from_id(group).ok_or(SuiteError::UnsupportedGroup(group))?;
        Ok(dh::KeyShare::generate(g).map(KeyShare)?)
    }
    pub(crate) fn group(&self) -> u16 {
        self.0.group().id()
    }
    pub(crate) fn public(&self) -> &[u8] {
        self.0.public()
    }
    pub(crate) fn agree(&self, peer: &[u8]) -> Result<dh::SharedSecret, SuiteError> {
        Ok(self.0.agree(peer)?)
    }
}

/// The keys and ciphers of an established (or half-established) IKE SA, from our point of view.
pub(crate) struct Suite {
    pub(crate) chosen: Chosen,
    prf: Prf,
    keys: keys::IkeKeys,
    /// Protects what we send.
    out: sk::SkCipher,
    /// Verifies and decrypts what we receive.
    inp: sk::SkCipher,
}

impl Suite {
    /// Derives SKEYSEED and the seven keys (RFC 7296 2.14); `initiator` is our role in the IKE SA.
    pub(crate) fn derive(
        chosen: &Chosen,
        shared: &dh::SharedSecret,
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
        initiator: bool,
    ) -> Result<Suite, SuiteError> {
        let (encr, integ, prf) = ike_algorithms(chosen)?;
        let keys = keys::IkeKeys::derive(prf, shared.as_ref(), ni, nr, spi_i, spi_r, encr, integ)?;
        Suite::with_keys(chosen, prf, keys, initiator)
    }

    /// The suite for freshly derived `keys`; `initiator` is our role in the IKE SA they belong to.
    fn with_keys(
        chosen: &Chosen,
        prf: Prf,
        keys: keys::IkeKeys,
        initiator: bool,
    ) -> Result<Suite, SuiteError> {
        let (out, inp) = keys.ciphers(initiator)?;
        Ok(Suite {
            chosen: chosen.clone(),
            prf,
            keys,
            out,
            inp,
        })
    }

    /// Encodes and protects a message in one SK payload.
    pub(crate) fn protect(&self, mut header: Header, payloads: &[Payload]) -> Vec<u8> {
        let (first, plain) = message::encode_chain(payloads);
        let plain = Zeroizing::new(plain);
        let sk_len = 4 + self.out.encrypted_len(plain.len());
        header.next_payload = PayloadType::SK;
        header.length = (HEADER_LEN + sk_len) as u32;
        let mut msg = Vec::with_capacity(header.length as usize);
        header.encode(&mut msg);
        msg.push(first);
        msg.push(0);
        msg.extend_from_slice(&(sk_len as u16).to_be_bytes());
        //= https://www.rfc-editor.org/rfc/rfc5282#section-5.1
        //# the AAD ... consists of the IKEv2 header through the last octet of the Encrypted Payload's generic
        //# header
        let body = self.out.encrypt(&msg, &plain);
        msg.extend_from_slice(&body);
        msg
    }

    /// Verifies and decrypts the SK payload of a received message and parses what it holds.
    pub(crate) fn unprotect(&self, msg: &[u8], enc: &Encrypted<'_>) -> Result<Vec<Payload>, ()> {
        if enc.fragment.is_some() {
            return Err(());
        }
        let aad = msg.get(..enc.offset + 4).ok_or(())?;
        let plain = self.inp.decrypt(aad, enc.body).map_err(|_| ())?;
        let (payloads, nested) = message::parse_chain(enc.inner_next, &plain, 0).map_err(|_| ())?;
        if nested.is_some() {
            return Err(());
        }
        Ok(payloads)
    }

    /// The octets a side signs (RFC 7296 2.15): its first message, the peer's nonce, prf(SK_p, ID').
    pub(crate) fn signed_octets(
        &self,
        signer_is_initiator: bool,
        first: &[u8],
        nonce: &[u8],
        id: &Id,
    ) -> Vec<u8> {
        let sk_p = if signer_is_initiator {
            &self.keys.sk_pi
        } else {
            &self.keys.sk_pr
        };
        auth::signed_octets(first, nonce, self.prf, sk_p, &id.body())
    }

    /// AUTH = prf(prf(PSK, "Key Pad for IKEv2"), octets).
    pub(crate) fn psk_auth(&self, psk: &[u8], octets: &[u8]) -> Vec<u8> {
        auth::psk_auth(self.prf, psk, octets)
    }

    /// KEYMAT for a Child SA (RFC 7296 2.17).
    pub(crate) fn child_keymat(
        &self,
        shared: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
        len: usize,
    ) -> Zeroizing<Vec<u8>> {
        keys::child_keymat(self.prf, &self.keys.sk_d, shared, ni, nr, len)
    }

    // ---- IKE SA rekey and fragmentation (kept at the end of the impl so that other changes merge apart) ----

    /// The keys and ciphers of the IKE SA that replaces this one (RFC 7296 2.18): SKEYSEED from our SK_d and
    /// the new exchange's g^ir and nonces. `initiator` is our role in the new SA (the rekey exchange's).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn derive_rekey(
        &self,
        chosen: &Chosen,
        shared: &dh::SharedSecret,
        ni: &[u8],
        nr: &[u8],
        spi_i: u64,
        spi_r: u64,
        initiator: bool,
    ) -> Result<Suite, SuiteError> {
        let (encr, integ, prf) = ike_algorithms(chosen)?;
        // keys::IkeKeys::derive_rekey runs prf+ with the old PRF: a rekey that changed it would not
        // interoperate (see there), so both our offer and our choice keep it.
        if prf != self.prf {
            return Err(SuiteError::Unsupported(
                "the rekeyed IKE SA must keep the PRF",
            ));
        }
        let keys = self
            .keys
            .rekey(shared.as_ref(), ni, nr, spi_i, spi_r, encr, integ)?;
        Suite::with_keys(chosen, prf, keys, initiator)
    }

    /// The PRF: the one a nonce's least length depends on (RFC 7296 2.10).
    pub(crate) fn prf(&self) -> Prf {
        self.prf
    }

    /// The PRF (rekey proposals must keep it).
    pub(crate) fn prf_id(&self) -> Option<u16> {
        self.chosen.prf.map(|p| p.id)
    }

    /// Encodes and protects a message; if it would exceed `max_len` bytes (the IKE message, without IP and
    /// UDP headers) and `fragment` is set, as Encrypted Fragment payloads of at most that size (RFC 7383).
    pub(crate) fn protect_fragmented(
        &self,
        header: Header,
        payloads: &[Payload],
        fragment: bool,
        max_len: usize,
    ) -> Vec<Vec<u8>> {
        let whole = self.protect(header, payloads);
        if !fragment || whole.len() <= max_len {
            return vec![whole];
        }
        let (first, plain) = message::encode_chain(payloads);
        let plain = Zeroizing::new(plain);
        match crate::fragment::split(&self.out, header, first, &plain, max_len) {
            Some(frags) => frags,
            // The limit is too small for even one byte per fragment, or needs too many: send it whole.
            None => vec![whole],
        }
    }

    /// Verifies and decrypts one Encrypted Fragment payload; returns its share of the inner payloads.
    pub(crate) fn unprotect_fragment(
        &self,
        msg: &[u8],
        enc: &Encrypted<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, ()> {
        // RFC 7383 2.5.3: the AAD runs through the Total Fragments field, so the numbering is authenticated.
        let aad = msg.get(..enc.offset + 8).ok_or(())?;
        self.inp.decrypt(aad, enc.body).map_err(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The suite's errors keep whose fault it is: an unknown group is ours or an incompatible peer's, a bad
    /// public value is the peer's (the crypto layer's own variant), and both read as before in the logs.
    #[test]
    fn errors_say_whose_fault() {
        let e = KeyShare::generate(9999).unwrap_err();
        assert_eq!(e, SuiteError::UnsupportedGroup(9999));
        assert_eq!(e.to_string(), "key exchange group 9999 is not implemented");
        let e = check_public(31, &[0u8; 5]).unwrap_err();
        assert!(
            matches!(e, SuiteError::Crypto(CryptoError::InvalidPublicKey { .. })),
            "{e:?}"
        );
        let ks = KeyShare::generate(31).unwrap();
        assert!(matches!(
            ks.agree(&[0u8; 32]),
            Err(SuiteError::Crypto(CryptoError::InvalidPublicKey { .. }))
        ));
    }
}
