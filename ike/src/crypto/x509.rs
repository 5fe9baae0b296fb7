//! X.509 certificates (RFC 5280) for IKE authentication (RFC 7296 3.6, 3.7): just what a mesh of hypervisors
//! needs, parsed with the same minimal DER reader as the key files. A certificate is trusted when a chain of
//! signatures leads from it to a configured CA certificate, every certificate on the way is within its validity
//! dates, every issuer is a CA (basicConstraints) allowed to sign certificates (keyUsage), and no certificate
//! carries a critical extension we do not understand. The peer's IKE identity must then be one of the end
//! certificate's subjectAltNames, or its subject DN.
//!
//! Sans-IO: the time is the caller's (`unix`, seconds since 1970), never read from a clock here. Only RSA keys,
//! like the rest of vmsecd; revocation (CRL, OCSP) is not checked.

use std::fmt;
use std::net::IpAddr;

use aws_lc_rs::digest;

pub use self::chain::TrustAnchors;
pub use self::name::dn_to_string;
use self::name::{dotted_oid, same_dn};
use super::der;
use super::key_error::KeyError;
use super::pem::pem_blocks;
use super::signature::{PublicKey, Scheme};
use crate::message::id::display_id;
use crate::message::{Id, IdType};

/// Why a certificate or a chain was refused. The text names the certificate and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Not DER, or not the structure of RFC 5280 4.1.
    #[error("malformed certificate: {0}")]
    Malformed(&'static str),
    /// The certificate's key is not an RSA key vmsecd accepts.
    #[error("certificate of {subject}: {reason}")]
    Key {
        /// Subject DN.
        subject: String,
        /// The key problem.
        reason: KeyError,
    },
    /// Not yet or no longer valid.
    #[error("certificate of {subject} is valid from {not_before} to {not_after}, not now ({now})")]
    Expired {
        /// Subject DN.
        subject: String,
        /// notBefore.
        not_before: String,
        /// notAfter.
        not_after: String,
        /// The time checked against.
        now: String,
    },
    /// No trusted CA and no intermediate certificate issued it.
    #[error("certificate of {subject} is issued by {issuer}, which is not a trusted CA (trusted: {trusted})")]
    UnknownIssuer {
        /// Subject DN.
        subject: String,
        /// Issuer DN.
        issuer: String,
        /// The configured CAs.
        trusted: String,
    },
    /// The issuer's signature does not verify, or uses an algorithm we do not accept.
    #[error("the signature of {issuer} on the certificate of {subject} does not verify")]
    BadSignature {
        /// Subject DN.
        subject: String,
        /// Issuer DN.
        issuer: String,
    },
    /// An issuer that is not a CA, or not allowed to sign certificates, or beyond its path length.
    #[error("certificate of {subject} cannot issue certificates: {reason}")]
    NotACa {
        /// Subject DN.
        subject: String,
        /// What is missing.
        reason: &'static str,
    },
    /// The end certificate's keyUsage excludes signatures.
    #[error("certificate of {subject} does not allow digital signatures (keyUsage)")]
    KeyUsage {
        /// Subject DN.
        subject: String,
    },
    /// RFC 5280 4.2: a critical extension we do not process.
    #[error(
        "certificate of {subject} has a critical extension vmsecd does not understand ({oid})"
    )]
    UnknownCritical {
        /// Subject DN.
        subject: String,
        /// The extension's OID, dotted.
        oid: String,
    },
    /// Chain building gave up after [`MAX_SIGNATURE_CHECKS`] signature checks.
    #[error(
        "gave up building the certificate chain of {subject} after {MAX_SIGNATURE_CHECKS} signature checks \
         (the peer sent too many intermediate certificates with matching names that do not verify)"
    )]
    TooManyCandidates {
        /// The certificate whose issuer was being looked for.
        subject: String,
    },
    /// Longer than [`MAX_CHAIN`].
    #[error("certificate chain longer than {MAX_CHAIN} certificates")]
    TooLong,
    /// The identity is neither a subjectAltName nor the subject.
    #[error("identity {id} is not in the certificate of {subject} (subjectAltName: {sans})")]
    IdentityMismatch {
        /// The IKE identity.
        id: String,
        /// Subject DN.
        subject: String,
        /// The names the certificate holds.
        sans: String,
    },
    /// A PEM file without a certificate, or an unreadable one.
    #[error("{0}")]
    File(String),
}

/// The longest chain we follow, end certificate and CA included.
pub const MAX_CHAIN: usize = 8;

/// Signature checks at most per [`TrustAnchors::verify`]: a chain of [`MAX_CHAIN`] certificates needs one per
/// link; the rest is room for a few candidates with a matching name that do not verify. Each is an RSA
/// verification (about 40 us at 2048 bits, 1 ms at 8192, the largest key accepted), and all of them are done
/// before the peer has authenticated.
pub const MAX_SIGNATURE_CHECKS: u32 = 16;

thread_local! {
    /// Certificate signature checks done on this thread (see [`signature_checks`]).
    static SIGNATURE_CHECKS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many certificate signatures were checked on this thread so far: a measure of the work chain building
/// did, for tests and diagnostics.
pub fn signature_checks() -> u64 {
    SIGNATURE_CHECKS.with(|c| c.get())
}

/// CERT and CERTREQ encoding "X.509 Certificate - Signature" (RFC 7296 3.6).
pub const ENCODING_X509_SIGNATURE: u8 = 4;

/// A name in a subjectAltName extension that an IKE identity can match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AltName {
    /// dNSName.
    Dns(String),
    /// iPAddress.
    Ip(IpAddr),
    /// rfc822Name.
    Email(String),
}

impl fmt::Display for AltName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AltName::Dns(s) | AltName::Email(s) => f.write_str(s),
            AltName::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// One parsed certificate. `der` is the whole certificate, as it goes into a CERT payload.
#[derive(Clone)]
pub struct Certificate {
    der: Vec<u8>,
    tbs: std::ops::Range<usize>,
    scheme: Option<Scheme>,
    signature: Vec<u8>,
    issuer: Vec<u8>,
    subject: Vec<u8>,
    not_before: i64,
    not_after: i64,
    key: Result<PublicKey, KeyError>,
    /// basicConstraints: `Some(path length limit)` for a CA (`None` inside: no limit).
    ca: Option<Option<u32>>,
    /// keyUsage bits, bit 0 (digitalSignature) as the lowest bit.
    key_usage: Option<u16>,
    alt_names: Vec<AltName>,
    unknown_critical: Option<String>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Certificate({})", self.subject())
    }
}

const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const OID_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
/// Extensions we accept as critical without acting on them: extendedKeyUsage and certificatePolicies (IKE has no
/// key purpose that must be present, RFC 4945 5.1.3.12) and the key identifiers.
const OID_ACCEPTED: &[&[u8]] = &[
    &[0x55, 0x1d, 0x25],
    &[0x55, 0x1d, 0x20],
    &[0x55, 0x1d, 0x0e],
    &[0x55, 0x1d, 0x23],
];

const KU_DIGITAL_SIGNATURE: u16 = 1 << 0;
const KU_NON_REPUDIATION: u16 = 1 << 1;
const KU_KEY_CERT_SIGN: u16 = 1 << 5;

impl Certificate {
    /// Parses one DER certificate.
    //= https://www.rfc-editor.org/rfc/rfc5280#section-4.1
    //# Certificate  ::=  SEQUENCE  {
    //#      tbsCertificate       TBSCertificate,
    //#      signatureAlgorithm   AlgorithmIdentifier,
    //#      signatureValue       BIT STRING  }
    pub fn from_der(input: &[u8]) -> Result<Certificate, CertError> {
        let bad = CertError::Malformed;
        let (cert, rest) = der::expect(input, der::SEQUENCE).ok_or(bad("not a DER SEQUENCE"))?;
        if !rest.is_empty() {
            return Err(bad("trailing data"));
        }
        let (_, tbs_body, after_tbs) = der::tlv(cert).ok_or(bad("no tbsCertificate"))?;
        let tbs_start = cert.as_ptr() as usize - input.as_ptr() as usize;
        let tbs_len = cert.len() - after_tbs.len();
        let (alg, r) = der::tlv(after_tbs)
            .filter(|(t, _, _)| *t == der::SEQUENCE)
            .and_then(|(_, _, r)| Some((after_tbs.get(..after_tbs.len() - r.len())?, r)))
            .ok_or(bad("no signatureAlgorithm"))?;
        let (sig, r) = der::expect(r, der::BIT_STRING).ok_or(bad("no signatureValue"))?;
        if !r.is_empty() {
            return Err(bad("trailing data after signatureValue"));
        }
        let signature = match sig.split_first() {
            Some((0, s)) => s.to_vec(),
            _ => return Err(bad("signatureValue has unused bits")),
        };

        //= https://www.rfc-editor.org/rfc/rfc5280#section-4.1
        //# TBSCertificate  ::=  SEQUENCE  {
        //#      version         [0]  EXPLICIT Version DEFAULT v1,
        //#      serialNumber         CertificateSerialNumber,
        //#      signature            AlgorithmIdentifier,
        //#      issuer               Name,
        //#      validity             Validity,
        //#      subject              Name,
        //#      subjectPublicKeyInfo SubjectPublicKeyInfo,
        let mut t = tbs_body;
        if let Some((v, r)) = der::expect(t, 0xa0) {
            let (_, rest) = der::expect(v, der::INTEGER).ok_or(bad("bad version"))?;
            if !rest.is_empty() {
                return Err(bad("bad version"));
            }
            t = r;
        }
        let (_, r) = der::expect(t, der::INTEGER).ok_or(bad("no serialNumber"))?;
        let (inner_alg, r) = raw(r, der::SEQUENCE).ok_or(bad("no signature algorithm"))?;
        //# This field MUST contain the same algorithm identifier as the
        //# signatureAlgorithm field in the sequence Certificate
        if inner_alg != alg {
            return Err(bad("the two signature algorithms differ"));
        }
        let (issuer, r) = raw(r, der::SEQUENCE).ok_or(bad("no issuer"))?;
        let (validity, r) = der::expect(r, der::SEQUENCE).ok_or(bad("no validity"))?;
        let (not_before, v) = time(validity).ok_or(bad("bad notBefore"))?;
        let (not_after, v) = time(v).ok_or(bad("bad notAfter"))?;
        if !v.is_empty() {
            return Err(bad("bad validity"));
        }
        let (subject, r) = raw(r, der::SEQUENCE).ok_or(bad("no subject"))?;
        let (spki, mut r) = raw(r, der::SEQUENCE).ok_or(bad("no subjectPublicKeyInfo"))?;
        // issuerUniqueID [1], subjectUniqueID [2]: skipped.
        for tag in [0x81, 0xa1, 0x82, 0xa2] {
            if let Some((t, _, rest)) = der::tlv(r) {
                if t == tag {
                    r = rest;
                }
            }
        }
        let mut cert = Certificate {
            der: input.to_vec(),
            tbs: tbs_start..tbs_start + tbs_len,
            scheme: Scheme::from_algorithm_identifier(alg),
            signature,
            issuer: issuer.to_vec(),
            subject: subject.to_vec(),
            not_before,
            not_after,
            key: PublicKey::from_der(spki),
            ca: None,
            key_usage: None,
            alt_names: Vec::new(),
            unknown_critical: None,
        };
        if let Some((exts, rest)) = der::expect(r, 0xa3) {
            if !rest.is_empty() {
                return Err(bad("trailing data in tbsCertificate"));
            }
            cert.extensions(exts)?;
        } else if !r.is_empty() {
            return Err(bad("trailing data in tbsCertificate"));
        }
        Ok(cert)
    }

    //= https://www.rfc-editor.org/rfc/rfc5280#section-4.1
    //# Extension  ::=  SEQUENCE  {
    //#      extnID      OBJECT IDENTIFIER,
    //#      critical    BOOLEAN DEFAULT FALSE,
    //#      extnValue   OCTET STRING
    fn extensions(&mut self, exts: &[u8]) -> Result<(), CertError> {
        let bad = CertError::Malformed;
        let (mut list, rest) = der::expect(exts, der::SEQUENCE).ok_or(bad("bad extensions"))?;
        if !rest.is_empty() {
            return Err(bad("bad extensions"));
        }
        while !list.is_empty() {
            let (ext, r) = der::expect(list, der::SEQUENCE).ok_or(bad("bad extension"))?;
            list = r;
            let (oid, mut e) = der::expect(ext, der::OID).ok_or(bad("bad extension"))?;
            let mut critical = false;
            if let Some((b, r)) = der::expect(e, BOOLEAN) {
                critical = b == [0xff];
                e = r;
            }
            let (value, r) = der::expect(e, OCTET_STRING).ok_or(bad("bad extension"))?;
            if !r.is_empty() {
                return Err(bad("bad extension"));
            }
            match oid {
                OID_BASIC_CONSTRAINTS => {
                    //# BasicConstraints ::= SEQUENCE {
                    //#      cA                      BOOLEAN DEFAULT FALSE,
                    //#      pathLenConstraint       INTEGER (0..MAX) OPTIONAL }
                    let (mut bc, _) =
                        der::expect(value, der::SEQUENCE).ok_or(bad("bad basicConstraints"))?;
                    let mut ca = false;
                    if let Some((b, r)) = der::expect(bc, BOOLEAN) {
                        ca = b == [0xff];
                        bc = r;
                    }
                    let path_len = der::expect(bc, der::INTEGER).and_then(|(n, _)| {
                        (n.len() <= 4 && n.first().is_some_and(|b| b & 0x80 == 0))
                            .then(|| n.iter().fold(0u32, |a, &b| (a << 8) | b as u32))
                    });
                    self.ca = ca.then_some(path_len);
                }
                OID_KEY_USAGE => {
                    //# KeyUsage ::= BIT STRING {
                    //#      digitalSignature        (0),
                    let (bits, _) =
                        der::expect(value, der::BIT_STRING).ok_or(bad("bad keyUsage"))?;
                    let bytes = bits.get(1..).unwrap_or_default();
                    // Bit 0 is the most significant bit of the first byte: reverse into bit positions.
                    let mut ku = 0u16;
                    for (i, b) in bytes.iter().take(2).enumerate() {
                        for j in 0..8 {
                            if b & (0x80 >> j) != 0 {
                                ku |= 1 << (i * 8 + j);
                            }
                        }
                    }
                    self.key_usage = Some(ku);
                }
                OID_SUBJECT_ALT_NAME => {
                    let (mut names, _) =
                        der::expect(value, der::SEQUENCE).ok_or(bad("bad subjectAltName"))?;
                    // Room for the names kept, counted first: the vector is allocated once, never grown by
                    // doubling, and an empty name (which names nothing) is not kept, so each 32-byte AltName
                    // stands for at least 3 received bytes (tests/parse_alloc.rs: <= 16 x the certificate).
                    let mut count = names;
                    let mut kept = 0;
                    while let Some((tag, v, r)) = der::tlv(count) {
                        count = r;
                        kept += usize::from(matches!(tag, 0x81 | 0x82 | 0x87) && !v.is_empty());
                    }
                    self.alt_names.reserve_exact(kept);
                    while let Some((tag, v, r)) = der::tlv(names) {
                        names = r;
                        if v.is_empty() {
                            continue;
                        }
                        //# GeneralName ::= CHOICE {
                        //#      rfc822Name                      [1]     IA5String,
                        //#      dNSName                         [2]     IA5String,
                        //#      iPAddress                       [7]     OCTET STRING,
                        let name = match tag {
                            0x81 => AltName::Email(String::from_utf8_lossy(v).into_owned()),
                            0x82 => AltName::Dns(String::from_utf8_lossy(v).into_owned()),
                            0x87 => match ip_from_octets(v) {
                                Some(ip) => AltName::Ip(ip),
                                None => continue,
                            },
                            _ => continue,
                        };
                        self.alt_names.push(name);
                    }
                }
                o if OID_ACCEPTED.contains(&o) => {}
                //= https://www.rfc-editor.org/rfc/rfc5280#section-4.2
                //# A certificate-using system MUST reject the certificate if it encounters
                //# a critical extension it does not recognize or a critical extension
                //# that contains information that it cannot process.
                o if critical => self.unknown_critical = Some(dotted_oid(o)),
                _ => {}
            }
        }
        Ok(())
    }

    /// The certificate's DER, for a CERT payload.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The subject DN, as strongSwan prints it.
    pub fn subject(&self) -> String {
        dn_to_string(&self.subject)
    }

    /// The subject DN's DER (an ID_DER_ASN1_DN identity).
    pub fn subject_der(&self) -> &[u8] {
        &self.subject
    }

    /// The issuer DN.
    pub fn issuer(&self) -> String {
        dn_to_string(&self.issuer)
    }

    /// The subjectAltNames an IKE identity can match.
    pub fn alt_names(&self) -> &[AltName] {
        &self.alt_names
    }

    /// notAfter, seconds since 1970.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The certified public key.
    pub fn public_key(&self) -> Result<&PublicKey, CertError> {
        self.key.as_ref().map_err(|reason| CertError::Key {
            subject: self.subject(),
            reason: reason.clone(),
        })
    }

    /// SHA-1 of the SubjectPublicKeyInfo: how a CERTREQ names a CA.
    //= https://www.rfc-editor.org/rfc/rfc7296#section-3.7
    //# The Certification Authority value is a concatenated
    //# list of SHA-1 hashes of the public keys of trusted Certification
    //# Authorities (CAs).  Each is encoded as the SHA-1 hash of the Subject
    //# Public Key Info element (see section 4.1.2.7 of [PKIX]) from each
    //# Trust Anchor certificate.
    pub fn key_id(&self) -> Option<[u8; 20]> {
        let key = self.key.as_ref().ok()?;
        let d = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, key.spki_der());
        d.as_ref().try_into().ok()
    }

    fn check_time(&self, unix: i64) -> Result<(), CertError> {
        if unix < self.not_before || unix > self.not_after {
            return Err(CertError::Expired {
                subject: self.subject(),
                not_before: format_time(self.not_before),
                not_after: format_time(self.not_after),
                now: format_time(unix),
            });
        }
        Ok(())
    }

    fn check_critical(&self) -> Result<(), CertError> {
        match &self.unknown_critical {
            Some(oid) => Err(CertError::UnknownCritical {
                subject: self.subject(),
                oid: oid.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Whether `self` may issue `child` with `below` CA certificates between them, and signed it.
    fn issued(&self, child: &Certificate, below: u32) -> Result<(), CertError> {
        let not_ca = |reason| CertError::NotACa {
            subject: self.subject(),
            reason,
        };
        //= https://www.rfc-editor.org/rfc/rfc5280#section-4.2.1.9
        //# If the basic constraints extension is not present in a version 3
        //# certificate, or the extension is present but the cA boolean is not
        //# asserted, then the certified public key MUST NOT be used to verify
        //# certificate signatures.
        let Some(path_len) = self.ca else {
            return Err(not_ca("it is not a CA (basicConstraints cA is not set)"));
        };
        if path_len.is_some_and(|n| below > n) {
            return Err(not_ca("its pathLenConstraint is exceeded"));
        }
        //= https://www.rfc-editor.org/rfc/rfc5280#section-4.2.1.3
        //# If the keyUsage extension is present, then the subject public key
        //# MUST NOT be used to verify signatures on certificates or CRLs unless
        //# the corresponding keyCertSign or cRLSign bit is set.
        if self.key_usage.is_some_and(|ku| ku & KU_KEY_CERT_SIGN == 0) {
            return Err(not_ca("its keyUsage lacks keyCertSign"));
        }
        let key = self.public_key()?;
        SIGNATURE_CHECKS.with(|c| c.set(c.get().saturating_add(1)));
        let ok = child
            .scheme
            .zip(child.der.get(child.tbs.clone()))
            .is_some_and(|(s, tbs)| key.verify_scheme(s, tbs, &child.signature));
        if !ok {
            return Err(CertError::BadSignature {
                subject: child.subject(),
                issuer: self.subject(),
            });
        }
        Ok(())
    }

    /// Whether the IKE identity `id` names this certificate: a subjectAltName of the identity's type, or for a
    /// DN identity the subject.
    //= https://www.rfc-editor.org/rfc/rfc4945#section-3.1
    //# Implementations MUST be capable of comparing the
    //# identity in the ID payload with the subjectAltName or subject fields
    pub fn check_identity(&self, id: &Id) -> Result<(), CertError> {
        let matches = match id.id_type {
            IdType::IPV4_ADDR | IdType::IPV6_ADDR => {
                let ip = ip_from_octets(&id.data);
                ip.is_some_and(|ip| self.alt_names.contains(&AltName::Ip(ip)))
            }
            IdType::FQDN => self.alt_names.iter().any(
                |n| matches!(n, AltName::Dns(d) if d.as_bytes().eq_ignore_ascii_case(&id.data)),
            ),
            IdType::RFC822_ADDR => self.alt_names.iter().any(
                |n| matches!(n, AltName::Email(d) if d.as_bytes().eq_ignore_ascii_case(&id.data)),
            ),
            IdType::DER_ASN1_DN => same_dn(&id.data, &self.subject),
            _ => false,
        };
        if matches {
            return Ok(());
        }
        let sans: Vec<String> = self.alt_names.iter().map(|n| n.to_string()).collect();
        Err(CertError::IdentityMismatch {
            id: display_id(id),
            subject: self.subject(),
            sans: if sans.is_empty() {
                "none".into()
            } else {
                sans.join(", ")
            },
        })
    }
}

/// Every certificate of a PEM file (or one DER certificate), in order.
pub fn parse_certificates(bytes: &[u8]) -> Result<Vec<Certificate>, CertError> {
    let file_err = |e: KeyError| CertError::File(e.to_string());
    let blocks = pem_blocks(bytes).map_err(file_err)?;
    if blocks.is_empty() {
        if bytes.first() == Some(&der::SEQUENCE) {
            return Ok(vec![Certificate::from_der(bytes)?]);
        }
        return Err(CertError::File(
            "no PEM CERTIFICATE block and not DER".into(),
        ));
    }
    let certs = blocks
        .iter()
        .filter(|(label, _)| label == "CERTIFICATE" || label == "X509 CERTIFICATE")
        .map(|(_, der)| Certificate::from_der(der))
        .collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(CertError::File("no PEM CERTIFICATE block".into()));
    }
    Ok(certs)
}

const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;

/// One TLV of tag `want` with its header: `(whole TLV, rest)`.
fn raw(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (_, rest) = der::expect(input, want)?;
    Some((input.get(..input.len() - rest.len())?, rest))
}

/// An IPv4 (4 bytes) or IPv6 (16 bytes) address in network order.
fn ip_from_octets(v: &[u8]) -> Option<IpAddr> {
    if let Ok(a) = <[u8; 4]>::try_from(v) {
        Some(IpAddr::from(a))
    } else {
        <[u8; 16]>::try_from(v).ok().map(IpAddr::from)
    }
}

//= https://www.rfc-editor.org/rfc/rfc5280#section-4.1.2.5
//# CAs conforming to this profile MUST always encode certificate
//# validity dates through the year 2049 as UTCTime; certificate validity
//# dates in 2050 or later MUST be encoded as GeneralizedTime.
fn time(input: &[u8]) -> Option<(i64, &[u8])> {
    let (tag, v, rest) = der::tlv(input)?;
    let digits = |s: &[u8]| -> Option<i64> {
        s.iter().try_fold(0i64, |a, &b| {
            // `then`, not `then_some`: the digit value must not be computed for a non-digit.
            b.is_ascii_digit().then(|| a * 10 + (b - b'0') as i64)
        })
    };
    let (year, v) = match (tag, v.len()) {
        // UTCTime YYMMDDHHMMSSZ
        (0x17, 13) => {
            let (yy, v) = v.split_first_chunk::<2>()?;
            let yy = digits(yy)?;
            //# Where YY is greater than or equal to 50, the year SHALL be
            //# interpreted as 19YY; and
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, v)
        }
        // GeneralizedTime YYYYMMDDHHMMSSZ
        (0x18, 15) => {
            let (yyyy, v) = v.split_first_chunk::<4>()?;
            (digits(yyyy)?, v)
        }
        _ => return None,
    };
    // MMDDHHMMSSZ
    let [m0, m1, d0, d1, h0, h1, i0, i1, s0, s1, b'Z'] = *<&[u8; 11]>::try_from(v).ok()? else {
        return None;
    };
    let (mo, d, h, mi, s) = (
        digits(&[m0, m1])?,
        digits(&[d0, d1])?,
        digits(&[h0, h1])?,
        digits(&[i0, i1])?,
        digits(&[s0, s1])?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    Some((
        days_from_civil(year, mo, d) * 86400 + h * 3600 + mi * 60 + s,
        rest,
    ))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// `2026-12-03 06:34:39 UTC` from seconds since 1970.
pub fn format_time(unix: i64) -> String {
    let days = unix.div_euclid(86400);
    let secs = unix.rem_euclid(86400);
    // H. Hinnant's `civil_from_days`.
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

mod chain;
pub(crate) mod name;

#[cfg(test)]
mod tests;
