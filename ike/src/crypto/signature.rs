//! AUTH with RSA signatures: RFC 7427 Digital Signature (Auth Method 14) with RSASSA-PSS or RSASSA-PKCS1-v1_5
//! over SHA2-256/384/512, the hash algorithms announced in SIGNATURE_HASH_ALGORITHMS (RFC 7427 4), and, for
//! verification only, the legacy RSA Digital Signature method (1) of RFC 7296.
//!
//! RSA is aws-lc-rs (already the IKE crypto backend; see benches/benches/handshake.rs for its cost), not the
//! `rsa` crate (RUSTSEC-2023-0071, a timing side channel). The signed octets are those of PSK authentication
//! ([`super::signed_octets`]).

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self as sig, KeyPair as _, RsaKeyPair, UnparsedPublicKey};
use zeroize::Zeroizing;

use super::der;
use super::key_error::KeyError;
use super::pem::to_pem;

/// Auth Method 1: RSA Digital Signature (RFC 7296 3.8).
pub const AUTH_RSA_SIG: u8 = 1;
/// Auth Method 2: Shared Key Message Integrity Code (RFC 7296 3.8).
pub const AUTH_PSK: u8 = 2;
/// Auth Method 14: Digital Signature (RFC 7427 7).
pub const AUTH_DIGITAL_SIGNATURE: u8 = 14;

/// A hash algorithm of the SIGNATURE_HASH_ALGORITHMS notification (IANA "IKEv2 Hash Algorithms", RFC 7427 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigHash {
    /// SHA2-256 (2).
    Sha256,
    /// SHA2-384 (3).
    Sha384,
    /// SHA2-512 (4).
    Sha512,
}

impl SigHash {
    /// Every hash we sign and verify with, most preferred first: what we announce.
    pub const ALL: [SigHash; 3] = [SigHash::Sha256, SigHash::Sha384, SigHash::Sha512];

    /// The IANA number.
    pub fn id(self) -> u16 {
        match self {
            SigHash::Sha256 => 2,
            SigHash::Sha384 => 3,
            SigHash::Sha512 => 4,
        }
    }

    /// From the IANA number.
    pub fn from_id(id: u16) -> Option<SigHash> {
        SigHash::ALL.into_iter().find(|h| h.id() == id)
    }

    /// The digest length in bytes (also the PSS salt length we use and require).
    fn len(self) -> u8 {
        match self {
            SigHash::Sha256 => 32,
            SigHash::Sha384 => 48,
            SigHash::Sha512 => 64,
        }
    }

    /// The hash's OID, DER value bytes (2.16.840.1.101.3.4.2.x).
    fn oid(self) -> &'static [u8] {
        match self {
            SigHash::Sha256 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01],
            SigHash::Sha384 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02],
            SigHash::Sha512 => &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03],
        }
    }

    fn from_oid(oid: &[u8]) -> Option<SigHash> {
        SigHash::ALL.into_iter().find(|h| h.oid() == oid)
    }

    /// The data of our SIGNATURE_HASH_ALGORITHMS notification: each hash as two octets.
    // RFC 7427 section 4 (paraphrased): the notification data is the list of 16-bit hash algorithm identifiers
    // from IANA's "IKEv2 Hash Algorithms" registry.
    pub fn notify_data() -> Vec<u8> {
        SigHash::ALL
            .iter()
            .flat_map(|h| h.id().to_be_bytes())
            .collect()
    }

    /// The hash algorithms a peer's SIGNATURE_HASH_ALGORITHMS data lists (unknown ones skipped).
    pub fn parse_notify(data: &[u8]) -> Vec<u16> {
        let (pairs, _) = data.as_chunks::<2>();
        pairs.iter().map(|&c| u16::from_be_bytes(c)).collect()
    }

    /// Our most preferred hash among those the peer announced.
    // RFC 7427 section 4 (paraphrased): sign with a hash the peer announced in SIGNATURE_HASH_ALGORITHMS.
    pub fn choose(peer: &[u16]) -> Option<SigHash> {
        SigHash::ALL.into_iter().find(|h| peer.contains(&h.id()))
    }
}

/// The RSA signature padding we sign with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Padding {
    /// RSASSA-PSS, MGF1 with the same hash, salt as long as the hash (RFC 8017 8.1); RFC 8247 3.2 recommends it.
    #[default]
    Pss,
    /// RSASSA-PKCS1-v1_5 (RFC 8017 8.2).
    Pkcs1,
}

/// One signature scheme: padding and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Scheme {
    /// Padding.
    pub padding: Padding,
    /// Hash.
    pub hash: SigHash,
}

const OID_RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const OID_MGF1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08];
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

fn pkcs1_oid(h: SigHash) -> &'static [u8] {
    match h {
        // sha256WithRSAEncryption, sha384WithRSAEncryption, sha512WithRSAEncryption (RFC 4055 5)
        SigHash::Sha256 => &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b],
        SigHash::Sha384 => &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c],
        SigHash::Sha512 => &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d],
    }
}

/// `AlgorithmIdentifier { hash OID, NULL }`.
fn hash_alg_id(h: SigHash) -> Vec<u8> {
    let mut v = der::write(der::OID, h.oid());
    v.extend(der::write(der::NULL, &[]));
    der::write(der::SEQUENCE, &v)
}

/// A hash AlgorithmIdentifier with absent or NULL parameters (RFC 4055 2.1 allows both).
fn parse_hash_alg_id(input: &[u8]) -> Option<SigHash> {
    let (seq, rest) = der::expect(input, der::SEQUENCE)?;
    if !rest.is_empty() {
        return None;
    }
    let (oid, params) = der::expect(seq, der::OID)?;
    if !(params.is_empty() || params == [der::NULL, 0]) {
        return None;
    }
    SigHash::from_oid(oid)
}

impl Scheme {
    /// The AlgorithmIdentifier (DER) that goes into the AUTH payload.
    //= https://www.rfc-editor.org/rfc/rfc4055#section-3.1
    //# RSASSA-PSS-params  ::=  SEQUENCE  {
    //#    hashAlgorithm      [0] HashAlgorithm DEFAULT sha1Identifier,
    //#    maskGenAlgorithm   [1] MaskGenAlgorithm DEFAULT mgf1SHA1Identifier,
    //#    saltLength         [2] INTEGER DEFAULT 20,
    //#    trailerField       [3] INTEGER DEFAULT 1  }
    pub fn algorithm_identifier(self) -> Vec<u8> {
        let mut body = match self.padding {
            Padding::Pkcs1 => {
                let mut v = der::write(der::OID, pkcs1_oid(self.hash));
                v.extend(der::write(der::NULL, &[]));
                return der::write(der::SEQUENCE, &v);
            }
            Padding::Pss => der::write(der::OID, OID_RSASSA_PSS),
        };
        let mut params = der::write(0xa0, &hash_alg_id(self.hash));
        let mut mgf = der::write(der::OID, OID_MGF1);
        mgf.extend(hash_alg_id(self.hash));
        params.extend(der::write(0xa1, &der::write(der::SEQUENCE, &mgf)));
        params.extend(der::write(
            0xa2,
            &der::write(der::INTEGER, &[self.hash.len()]),
        ));
        body.extend(der::write(der::SEQUENCE, &params));
        der::write(der::SEQUENCE, &body)
    }

    /// The scheme an AlgorithmIdentifier names, if it is one we accept: PKCS#1 v1.5 or PSS with SHA2-256/384/512,
    /// PSS only with MGF1 over the same hash and a salt as long as the hash.
    pub fn from_algorithm_identifier(input: &[u8]) -> Option<Scheme> {
        let (seq, rest) = der::expect(input, der::SEQUENCE)?;
        if !rest.is_empty() {
            return None;
        }
        let (oid, params) = der::expect(seq, der::OID)?;
        if let Some(hash) = SigHash::ALL.into_iter().find(|&h| pkcs1_oid(h) == oid) {
            //= https://www.rfc-editor.org/rfc/rfc4055#section-5
            //# When any of these four object identifiers appears within an AlgorithmIdentifier, the parameters
            //# MUST be NULL.  Implementations MUST accept the parameters being absent as well as present.
            return (params.is_empty() || params == [der::NULL, 0]).then_some(Scheme {
                padding: Padding::Pkcs1,
                hash,
            });
        }
        if oid != OID_RSASSA_PSS {
            return None;
        }
        let (mut p, rest) = der::expect(params, der::SEQUENCE)?;
        if !rest.is_empty() {
            return None;
        }
        // Every field is required here: the defaults are SHA-1, which we do not accept.
        let (hash, r) = der::expect(p, 0xa0)?;
        p = r;
        let hash = parse_hash_alg_id(hash)?;
        let (mgf, r) = der::expect(p, 0xa1)?;
        p = r;
        let (mgf, rest) = der::expect(mgf, der::SEQUENCE)?;
        let (mgf_oid, mgf_hash) = der::expect(mgf, der::OID)?;
        if !rest.is_empty() || mgf_oid != OID_MGF1 || parse_hash_alg_id(mgf_hash)? != hash {
            return None;
        }
        let (salt, r) = der::expect(p, 0xa2)?;
        p = r;
        let (salt, rest) = der::expect(salt, der::INTEGER)?;
        if !rest.is_empty() || salt != [hash.len()] {
            return None;
        }
        if !p.is_empty() {
            // trailerField: only the default (1) exists.
            let (t, rest) = der::expect(p, 0xa3)?;
            if !rest.is_empty() || t != [der::INTEGER, 1, 1] {
                return None;
            }
        }
        Some(Scheme {
            padding: Padding::Pss,
            hash,
        })
    }

    fn signing(self) -> &'static sig::RsaSignatureEncoding {
        match (self.padding, self.hash) {
            (Padding::Pss, SigHash::Sha256) => &sig::RSA_PSS_SHA256,
            (Padding::Pss, SigHash::Sha384) => &sig::RSA_PSS_SHA384,
            (Padding::Pss, SigHash::Sha512) => &sig::RSA_PSS_SHA512,
            (Padding::Pkcs1, SigHash::Sha256) => &sig::RSA_PKCS1_SHA256,
            (Padding::Pkcs1, SigHash::Sha384) => &sig::RSA_PKCS1_SHA384,
            (Padding::Pkcs1, SigHash::Sha512) => &sig::RSA_PKCS1_SHA512,
        }
    }

    fn verification(self) -> &'static sig::RsaParameters {
        match (self.padding, self.hash) {
            (Padding::Pss, SigHash::Sha256) => &sig::RSA_PSS_2048_8192_SHA256,
            (Padding::Pss, SigHash::Sha384) => &sig::RSA_PSS_2048_8192_SHA384,
            (Padding::Pss, SigHash::Sha512) => &sig::RSA_PSS_2048_8192_SHA512,
            (Padding::Pkcs1, SigHash::Sha256) => &sig::RSA_PKCS1_2048_8192_SHA256,
            (Padding::Pkcs1, SigHash::Sha384) => &sig::RSA_PKCS1_2048_8192_SHA384,
            (Padding::Pkcs1, SigHash::Sha512) => &sig::RSA_PKCS1_2048_8192_SHA512,
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = match self.padding {
            Padding::Pss => "RSASSA-PSS",
            Padding::Pkcs1 => "RSASSA-PKCS1-v1_5",
        };
        let h = match self.hash {
            SigHash::Sha256 => "SHA2-256",
            SigHash::Sha384 => "SHA2-384",
            SigHash::Sha512 => "SHA2-512",
        };
        write!(f, "{p} with {h}")
    }
}

/// Why a peer's signature AUTH was refused, or ours could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The AUTH payload of method 14 is too short or its AlgorithmIdentifier length is wrong.
    #[error("malformed Digital Signature AUTH data")]
    Malformed,
    /// The AlgorithmIdentifier names a scheme we do not accept (or did not announce).
    #[error("signature algorithm not accepted (we take RSASSA-PSS or RSASSA-PKCS1-v1_5 with SHA2-256/384/512)")]
    UnknownAlgorithm,
    /// The signature does not verify with the peer's configured public key.
    #[error("{scheme} signature does not verify with the peer's public key ({bits}-bit RSA)")]
    BadSignature {
        /// What was tried ("RSASSA-PSS with SHA2-256", "RSA Digital Signature (PKCS#1 v1.5, SHA-1)").
        scheme: String,
        /// The configured key's size.
        bits: usize,
    },
    /// The peer did not announce SIGNATURE_HASH_ALGORITHMS, or none we can sign with: we cannot use method 14,
    /// and method 1 (SHA-1) is verification-only here.
    #[error(
        "the peer announced no signature hash algorithm we support (SIGNATURE_HASH_ALGORITHMS, RFC 7427): it is \
         probably configured for PSK authentication, or too old for RFC 7427 (vmsecd does not sign with SHA-1, \
         the legacy RSA Digital Signature method 1)"
    )]
    NoCommonHash,
    /// aws-lc failed to sign (should not happen).
    #[error("signing failed in the crypto backend")]
    Backend,
}

/// Our RSA private key. Zeroized by aws-lc when dropped; `Debug` shows only its size.
#[derive(Clone)]
pub struct PrivateKey {
    pair: Arc<RsaKeyPair>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(RSA {} bits, redacted)", self.bits())
    }
}

fn check_bits(bits: usize) -> Result<(), KeyError> {
    if (2048..=8192).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::Size { bits })
    }
}

impl PrivateKey {
    fn new(pair: RsaKeyPair) -> Result<PrivateKey, KeyError> {
        let key = PrivateKey {
            pair: Arc::new(pair),
        };
        check_bits(key.bits())?;
        Ok(key)
    }

    /// From PKCS#8 `PrivateKeyInfo` DER.
    pub fn from_pkcs8(der: &[u8]) -> Result<PrivateKey, KeyError> {
        let pair = RsaKeyPair::from_pkcs8(der).map_err(|e| KeyError::Rejected {
            what: "private key (PKCS#8)",
            reason: e.to_string(),
        })?;
        PrivateKey::new(pair)
    }

    /// From PKCS#1 `RSAPrivateKey` DER.
    pub fn from_pkcs1(der: &[u8]) -> Result<PrivateKey, KeyError> {
        let pair = RsaKeyPair::from_der(der).map_err(|e| KeyError::Rejected {
            what: "private key (PKCS#1)",
            reason: e.to_string(),
        })?;
        PrivateKey::new(pair)
    }

    /// A new key of 2048, 3072 or 4096 bits.
    pub fn generate(bits: usize) -> Result<PrivateKey, KeyError> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            bits => return Err(KeyError::Size { bits }),
        };
        let pair = RsaKeyPair::generate(size).map_err(|_| KeyError::Rejected {
            what: "private key",
            reason: "key generation failed".into(),
        })?;
        PrivateKey::new(pair)
    }

    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        self.pair.public_modulus_len() * 8
    }

    /// The matching public key.
    #[allow(clippy::expect_used)] // Our own key pair, never wire data: aws-lc encodes a valid RSAPublicKey.
    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_der(self.pair.public_key().as_ref())
            .expect("aws-lc encodes a valid RSAPublicKey")
    }

    /// PKCS#8 PEM (`BEGIN PRIVATE KEY`), as `vmsecd keygen` writes it.
    #[allow(clippy::expect_used)] // Our own key pair, never wire data: aws-lc encodes every RSA key it holds.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let der = self.pair.as_der().expect("an RSA key pair encodes");
        to_pem("PRIVATE KEY", der.as_ref())
    }

    /// Signs the AUTH octets with `scheme`: the Authentication Data of a Digital Signature (14) AUTH payload.
    // RFC 7427 section 3: Authentication Data = ASN.1 Length (1 octet) | AlgorithmIdentifier (DER) | Signature
    // Value.
    pub fn sign_auth(&self, scheme: Scheme, octets: &[u8]) -> Result<Vec<u8>, SignatureError> {
        let alg = scheme.algorithm_identifier();
        let mut sig = vec![0u8; self.pair.public_modulus_len()];
        self.pair
            .sign(scheme.signing(), &SystemRandom::new(), octets, &mut sig)
            .map_err(|_| SignatureError::Backend)?;
        let mut out = Vec::with_capacity(1 + alg.len() + sig.len());
        out.push(alg.len() as u8);
        out.extend_from_slice(&alg);
        out.extend_from_slice(&sig);
        Ok(out)
    }
}

/// An RSA public key: the key a peer must sign with. Kept as SubjectPublicKeyInfo DER.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    spki: Vec<u8>,
    bits: usize,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey(RSA {} bits)", self.bits)
    }
}

/// The modulus size of an `RSAPublicKey` (PKCS#1) DER.
fn rsa_public_bits(rsa: &[u8]) -> Option<usize> {
    let (seq, rest) = der::expect(rsa, der::SEQUENCE)?;
    let (n, _) = der::expect(seq, der::INTEGER)?;
    if !rest.is_empty() {
        return None;
    }
    let n = match n {
        [0, tail @ ..] => tail,
        n => n,
    };
    let first = *n.first()?;
    Some(n.len() * 8 - first.leading_zeros() as usize)
}

impl PublicKey {
    /// From SubjectPublicKeyInfo or PKCS#1 `RSAPublicKey` DER.
    pub fn from_der(input: &[u8]) -> Result<PublicKey, KeyError> {
        let rejected = |reason: &str| KeyError::Rejected {
            what: "public key",
            reason: reason.to_owned(),
        };
        aws_lc_rs::rsa::PublicKey::from_der(input).map_err(|e| rejected(&e.to_string()))?;
        let (seq, rest) = der::expect(input, der::SEQUENCE).ok_or_else(|| rejected("not DER"))?;
        if !rest.is_empty() {
            return Err(rejected("trailing data"));
        }
        let (spki, rsa) = if der::tlv(seq).is_some_and(|(tag, _, _)| tag == der::SEQUENCE) {
            // SubjectPublicKeyInfo: SEQUENCE { AlgorithmIdentifier, BIT STRING }
            let (alg, r) = der::expect(seq, der::SEQUENCE).ok_or_else(|| rejected("bad SPKI"))?;
            let (oid, _) = der::expect(alg, der::OID).ok_or_else(|| rejected("bad SPKI"))?;
            if oid != OID_RSA_ENCRYPTION {
                return Err(rejected("not an RSA key"));
            }
            let (bits, _) = der::expect(r, der::BIT_STRING).ok_or_else(|| rejected("bad SPKI"))?;
            let rsa = bits
                .split_first()
                .filter(|(unused, _)| **unused == 0)
                .ok_or_else(|| rejected("bad SPKI"))?
                .1;
            (input.to_vec(), rsa.to_vec())
        } else {
            let mut alg = der::write(der::OID, OID_RSA_ENCRYPTION);
            alg.extend(der::write(der::NULL, &[]));
            let mut bits = vec![0u8];
            bits.extend_from_slice(input);
            let mut body = der::write(der::SEQUENCE, &alg);
            body.extend(der::write(der::BIT_STRING, &bits));
            (der::write(der::SEQUENCE, &body), input.to_vec())
        };
        let bits = rsa_public_bits(&rsa).ok_or_else(|| rejected("bad RSAPublicKey"))?;
        check_bits(bits)?;
        Ok(PublicKey { spki, bits })
    }

    /// The modulus size in bits.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// SubjectPublicKeyInfo PEM (`BEGIN PUBLIC KEY`), as strongSwan's `pki --pub` writes it.
    pub fn to_pem(&self) -> String {
        to_pem("PUBLIC KEY", &self.spki).to_string()
    }

    /// Verifies `signature` over `message` with `scheme` (a certificate's signature, for one).
    pub fn verify_scheme(&self, scheme: Scheme, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(scheme.verification(), &self.spki)
            .verify(message, signature)
            .is_ok()
    }

    /// Verifies a peer's Authentication Data for `method` (14 or 1) over the AUTH octets. Method 14 must use one
    /// of the schemes of [`SigHash::ALL`] (what we announce). Returns what was verified, for the log.
    pub fn verify_auth(
        &self,
        method: u8,
        data: &[u8],
        octets: &[u8],
    ) -> Result<String, SignatureError> {
        match method {
            AUTH_DIGITAL_SIGNATURE => {
                let (&len, rest) = data.split_first().ok_or(SignatureError::Malformed)?;
                let len = len as usize;
                if rest.len() <= len {
                    return Err(SignatureError::Malformed);
                }
                let (alg, signature) = rest.split_at(len);
                // RFC 7427 section 3 (paraphrased): only an AlgorithmIdentifier we support (and announced) is
                // accepted.
                let scheme = Scheme::from_algorithm_identifier(alg)
                    .ok_or(SignatureError::UnknownAlgorithm)?;
                UnparsedPublicKey::new(scheme.verification(), &self.spki)
                    .verify(octets, signature)
                    .map_err(|_| SignatureError::BadSignature {
                        scheme: scheme.to_string(),
                        bits: self.bits,
                    })?;
                Ok(scheme.to_string())
            }
            AUTH_RSA_SIG => {
                //= https://www.rfc-editor.org/rfc/rfc7296#section-3.8
                //# RSA Digital Signature (1) - Computed as specified in Section 2.15 using an RSA private key
                //# with RSASSA-PKCS1-v1_5 signature scheme specified in [PKCS1]
                // The hash is SHA-1 in every implementation (RFC 4718 3.2); RFC 7427 exists to replace it.
                let scheme = "RSA Digital Signature (RSASSA-PKCS1-v1_5 with SHA-1)";
                UnparsedPublicKey::new(
                    &sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                    &self.spki,
                )
                .verify(octets, data)
                .map_err(|_| SignatureError::BadSignature {
                    scheme: scheme.into(),
                    bits: self.bits,
                })?;
                Ok(scheme.into())
            }
            _ => Err(SignatureError::UnknownAlgorithm),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::keyfile::{parse_private_key, parse_public_key};
    use crate::crypto::test_util::hex;

    #[test]
    fn algorithm_identifiers() {
        // sha256WithRSAEncryption with NULL parameters, the form RFC 7427 appendix A lists.
        assert_eq!(
            Scheme {
                padding: Padding::Pkcs1,
                hash: SigHash::Sha256
            }
            .algorithm_identifier(),
            hex("300d06092a864886f70d01010b0500")
        );
        // RSASSA-PSS with SHA-256, MGF1-SHA-256, salt 32: the encoding OpenSSL writes (`openssl asn1parse` of
        // Chromium's verify_signed_data_unittest/rsa-pss-sha256-using-pss-key-with-params.pem shows the same).
        let pss = hex("3041 0609 2a864886f70d01010a 3034
             a00f 300d 0609 608648016503040201 0500
             a11c 301a 0609 2a864886f70d010108 300d 0609 608648016503040201 0500
             a203 020120");
        let ours = Scheme {
            padding: Padding::Pss,
            hash: SigHash::Sha256,
        }
        .algorithm_identifier();
        assert_eq!(ours, pss);
        for padding in [Padding::Pss, Padding::Pkcs1] {
            for hash in SigHash::ALL {
                let s = Scheme { padding, hash };
                let der = s.algorithm_identifier();
                assert!(der.len() < 256);
                assert_eq!(Scheme::from_algorithm_identifier(&der), Some(s));
            }
        }
        // PKCS#1 without the NULL is accepted; SHA-1 and a PSS salt of 20 are not.
        assert!(Scheme::from_algorithm_identifier(&hex("300b06092a864886f70d01010b")).is_some());
        assert!(
            Scheme::from_algorithm_identifier(&hex("300d06092a864886f70d0101050500")).is_none()
        );
        let mut salt20 = pss.clone();
        *salt20.last_mut().unwrap() = 20;
        assert!(Scheme::from_algorithm_identifier(&salt20).is_none());
        assert!(Scheme::from_algorithm_identifier(&pss[..pss.len() - 1]).is_none());
    }

    #[test]
    fn hash_negotiation() {
        assert_eq!(SigHash::notify_data(), vec![0, 2, 0, 3, 0, 4]);
        assert_eq!(
            SigHash::parse_notify(&[0, 1, 0, 2, 0, 3, 0, 4, 0, 5]),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(SigHash::choose(&[1, 4, 3]), Some(SigHash::Sha384));
        assert_eq!(SigHash::choose(&[1, 5]), None);
    }

    #[test]
    fn sign_verify_pem_round_trip() {
        let key = PrivateKey::generate(2048).unwrap();
        assert_eq!(key.bits(), 2048);
        assert!(!format!("{key:?}").contains("BEGIN"));
        let pem = key.to_pkcs8_pem();
        let again = parse_private_key(pem.as_bytes()).unwrap();
        let public = parse_public_key(key.public_key().to_pem().as_bytes()).unwrap();
        assert_eq!(public, again.public_key());
        assert_eq!(public.bits(), 2048);
        let other = PrivateKey::generate(2048).unwrap().public_key();
        let octets = b"signed octets";
        for padding in [Padding::Pss, Padding::Pkcs1] {
            for hash in SigHash::ALL {
                let s = Scheme { padding, hash };
                let data = key.sign_auth(s, octets).unwrap();
                assert_eq!(public.verify_auth(14, &data, octets), Ok(s.to_string()));
                assert!(matches!(
                    public.verify_auth(14, &data, b"other octets"),
                    Err(SignatureError::BadSignature { .. })
                ));
                assert!(matches!(
                    other.verify_auth(14, &data, octets),
                    Err(SignatureError::BadSignature { .. })
                ));
                assert!(public.verify_auth(1, &data, octets).is_err());
            }
        }
        assert_eq!(
            public.verify_auth(14, &[3, 1, 2], octets),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            public.verify_auth(14, &[], octets),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn legacy_method_1_verifies() {
        // RSASSA-PKCS1-v1_5 with SHA-1 made by OpenSSL 3 (`openssl dgst -sha1 -sign k.pem msg`), as an RFC 7296
        // method 1 peer computes it.
        let public = parse_public_key(
            b"-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAxjyLWMEelM0+QwZ4AoII\n6JsoznHOCuYrQkxXfcwgC762/SVWGlUD4XK6X2a8O9s78amj0vjWZyVqlFcl21yv\noCZXYlfybQHMAqQaqRT2keMQUkQfhfkW+Gx5JpU3gURyBaGepyksF/sDspAveMUZ\njvTYdizIEjGE0sSZyx+z9klJ24vlPH6rZPgSSDlE+m3bozfB+BWTLfJDb6rfklc3\nrtm8KT5CC6OC9m8ldTAsMA181TTTTUU534GWfwv3nNGZdDKBoP9jI254Qp6kgxXZ\ndTvI0WBVF9oi8SZpPBD1x1VM2eYdGiserQrqH7tKNsg6X5W2JlCGuiRbuKD7QENs\n/wIDAQAB\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let octets = b"vmsecd RFC 7296 method 1 test octets";
        let sig = hex("5672ac93260052ce03d02a0a2107ef42d19686edad9262842a66db0017e5ba5a3048e91297b09f9c94e016c2e1da0767
             c061dcf47624df49b43c66cd7cc75b3b44bd1e1925d6a1c0da9a2295f8ed24f69dd3483580b5514b9c8a20d10fd3102e
             1ad1ac7cc41ef33b1f71af2b52d71745df2d0ccf7e0225d51b04afadc0f0678d09048623dd94a3a68fcdaf4b8745fbf1
             a3fbb5255c50aedd716dfc2ac58ba9184b40e9c159999103738604dab562192a1ab09bbf12887e3af59988fc8bef27b1
             e8dd51a9666eae3f0098c4c473e4bcd2710fbcd01f91c2c153f12f59f646974494f3ee1f1f8641025a00c08ba861f2f6
             3dd7c8fec19ba02d77dceaa48657c44f");
        assert_eq!(
            public.verify_auth(AUTH_RSA_SIG, &sig, octets),
            Ok("RSA Digital Signature (RSASSA-PKCS1-v1_5 with SHA-1)".into())
        );
        assert!(matches!(
            public.verify_auth(AUTH_RSA_SIG, &sig, b"other octets"),
            Err(SignatureError::BadSignature { .. })
        ));
        // The same bytes are no method 14 AUTH data.
        assert!(public
            .verify_auth(AUTH_DIGITAL_SIGNATURE, &sig, octets)
            .is_err());
    }

    mod wire {
        use super::*;
        use proptest::prelude::*;

        fn public() -> &'static PublicKey {
            static KEY: std::sync::OnceLock<PublicKey> = std::sync::OnceLock::new();
            KEY.get_or_init(|| PrivateKey::generate(2048).unwrap().public_key())
        }

        proptest! {
            // What the peer sends (AUTH data, AlgorithmIdentifier) and what a key file holds never panics.
            #[test]
            fn arbitrary_auth_data_is_refused_without_panic(data in proptest::collection::vec(any::<u8>(), 0..400)) {
                prop_assert!(public().verify_auth(AUTH_DIGITAL_SIGNATURE, &data, b"x").is_err());
                prop_assert!(public().verify_auth(AUTH_RSA_SIG, &data, b"x").is_err());
                let _ = Scheme::from_algorithm_identifier(&data);
                let _ = parse_private_key(&data);
                let _ = parse_public_key(&data);
            }

            #[test]
            fn mutated_algorithm_identifiers_parse_or_not_without_panic(i in 0usize..67, b in any::<u8>()) {
                let mut der = Scheme { padding: Padding::Pss, hash: SigHash::Sha512 }.algorithm_identifier();
                let i = i % der.len();
                der[i] = b;
                let _ = Scheme::from_algorithm_identifier(&der);
                let _ = Scheme::from_algorithm_identifier(&der[..i]);
            }
        }
    }
}
