//! Proposals in strongSwan's syntax (`aes128gcm16-prfsha256-x25519`, `aes256-sha256-modp2048`), their wire
//! form, and negotiation: the responder picks the first match in *its own* order of preference.

use crate::message::{Proposal, ProtocolId, SaTransform, TransformType};

/// A proposal as configured: the transforms it offers, by type, in order of preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposalSpec {
    /// IKE or ESP.
    pub protocol: ProtocolId,
    /// Offered transforms, ours first-preferred first within each type.
    pub transforms: Vec<SaTransform>,
    /// The text it was parsed from, for logs.
    pub text: String,
}

/// A proposal string that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposalError {
    /// A token is not an algorithm we implement.
    #[error("unknown algorithm {token:?} in proposal {proposal:?}; known: {known}")]
    UnknownToken {
        /// The token.
        token: String,
        /// The whole proposal.
        proposal: String,
        /// What is allowed there.
        known: &'static str,
    },
    /// The combination is incomplete or contradictory.
    #[error("proposal {proposal:?}: {reason}")]
    Invalid {
        /// The whole proposal.
        proposal: String,
        /// What is wrong.
        reason: &'static str,
    },
}

const IKE_KNOWN: &str =
    "aes128gcm16 aes256gcm16 chacha20poly1305 aes128 aes256 sha256 sha384 sha512 prfsha256 \
                         prfsha384 prfsha512 x25519 curve25519 ecp256 ecp384 modp2048 modp3072";
const ESP_KNOWN: &str =
    "aes128gcm16 aes256gcm16 chacha20poly1305 aes128 aes256 sha256 x25519 curve25519 ecp256 \
                         ecp384 modp2048 modp3072 esn noesn";

/// IANA ids (RFC 7296 3.3.2 and the IKEv2 registry).
#[allow(missing_docs)]
pub mod ids {
    pub const ENCR_AES_CBC: u16 = 12;
    pub const ENCR_AES_GCM_16: u16 = 20;
    pub const ENCR_CHACHA20_POLY1305: u16 = 28;
    pub const PRF_HMAC_SHA2_256: u16 = 5;
    pub const PRF_HMAC_SHA2_384: u16 = 6;
    pub const PRF_HMAC_SHA2_512: u16 = 7;
    pub const AUTH_HMAC_SHA2_256_128: u16 = 12;
    pub const AUTH_HMAC_SHA2_384_192: u16 = 13;
    pub const AUTH_HMAC_SHA2_512_256: u16 = 14;
    pub const DH_MODP_2048: u16 = 14;
    pub const DH_MODP_3072: u16 = 15;
    pub const DH_ECP_256: u16 = 19;
    pub const DH_ECP_384: u16 = 20;
    pub const DH_CURVE25519: u16 = 31;
    pub const ESN_NO: u16 = 0;
    pub const ESN_YES: u16 = 1;
}
use ids::*;

fn t(ttype: TransformType, id: u16, key_len: Option<u16>) -> SaTransform {
    SaTransform { ttype, id, key_len }
}

fn token(tok: &str, esp: bool) -> Option<SaTransform> {
    use TransformType as T;
    Some(match tok {
        "aes128gcm16" | "aes128gcm128" => t(T::ENCR, ENCR_AES_GCM_16, Some(128)),
        "aes256gcm16" | "aes256gcm128" => t(T::ENCR, ENCR_AES_GCM_16, Some(256)),
        "chacha20poly1305" => t(T::ENCR, ENCR_CHACHA20_POLY1305, None),
        "aes128" => t(T::ENCR, ENCR_AES_CBC, Some(128)),
        "aes256" => t(T::ENCR, ENCR_AES_CBC, Some(256)),
        "sha256" | "sha2_256" => t(T::INTEG, AUTH_HMAC_SHA2_256_128, None),
        "sha384" | "sha2_384" if !esp => t(T::INTEG, AUTH_HMAC_SHA2_384_192, None),
        "sha512" | "sha2_512" if !esp => t(T::INTEG, AUTH_HMAC_SHA2_512_256, None),
        "prfsha256" if !esp => t(T::PRF, PRF_HMAC_SHA2_256, None),
        "prfsha384" if !esp => t(T::PRF, PRF_HMAC_SHA2_384, None),
        "prfsha512" if !esp => t(T::PRF, PRF_HMAC_SHA2_512, None),
        "x25519" | "curve25519" => t(T::DH, DH_CURVE25519, None),
        "ecp256" => t(T::DH, DH_ECP_256, None),
        "ecp384" => t(T::DH, DH_ECP_384, None),
        "modp2048" => t(T::DH, DH_MODP_2048, None),
        "modp3072" => t(T::DH, DH_MODP_3072, None),
        "esn" if esp => t(T::ESN, ESN_YES, None),
        "noesn" if esp => t(T::ESN, ESN_NO, None),
        _ => return None,
    })
}

fn is_aead(tr: &SaTransform) -> bool {
    tr.ttype == TransformType::ENCR && matches!(tr.id, ENCR_AES_GCM_16 | ENCR_CHACHA20_POLY1305)
}

impl ProposalSpec {
    /// Parses an IKE proposal such as `aes128gcm16-prfsha256-x25519` or `aes256-sha256-modp2048`.
    pub fn ike(text: &str) -> Result<ProposalSpec, ProposalError> {
        Self::parse(text, false)
    }

    /// Parses an ESP proposal such as `aes128gcm16`, `aes256-sha256-modp2048-esn`.
    pub fn esp(text: &str) -> Result<ProposalSpec, ProposalError> {
        Self::parse(text, true)
    }

    fn parse(text: &str, esp: bool) -> Result<ProposalSpec, ProposalError> {
        let invalid = |reason| ProposalError::Invalid {
            proposal: text.to_owned(),
            reason,
        };
        let mut tr: Vec<SaTransform> = Vec::new();
        for tok in text.split('-') {
            let x = token(tok, esp).ok_or_else(|| ProposalError::UnknownToken {
                token: tok.to_owned(),
                proposal: text.to_owned(),
                known: if esp { ESP_KNOWN } else { IKE_KNOWN },
            })?;
            if !tr.contains(&x) {
                tr.push(x);
            }
        }
        fn has(tr: &[SaTransform], ty: TransformType) -> bool {
            tr.iter().any(|x| x.ttype == ty)
        }
        if !has(&tr, TransformType::ENCR) {
            return Err(invalid("no encryption algorithm"));
        }
        let aead = tr
            .iter()
            .filter(|x| x.ttype == TransformType::ENCR)
            .all(is_aead);
        let classic = tr
            .iter()
            .filter(|x| x.ttype == TransformType::ENCR)
            .all(|x| !is_aead(x));
        if !aead && !classic {
            return Err(invalid(
                "mixes AEAD and non-AEAD encryption; write them as two proposals",
            ));
        }
        //= https://www.rfc-editor.org/rfc/rfc5282#section-8
        //# This document further updates [RFC4306] to require that if all of the encryption algorithms in any
        //# proposal are authenticated encryption algorithms, then the proposal MUST NOT propose any integrity
        //# transforms.
        if aead && has(&tr, TransformType::INTEG) {
            return Err(invalid("an AEAD algorithm takes no integrity algorithm"));
        }
        if classic && !has(&tr, TransformType::INTEG) {
            return Err(invalid(
                "AES-CBC needs an integrity algorithm (e.g. sha256)",
            ));
        }
        if !esp {
            if !has(&tr, TransformType::PRF) {
                if aead {
                    return Err(invalid("an AEAD IKE proposal needs a PRF (e.g. prfsha256)"));
                }
                // strongSwan derives the PRF from the integrity algorithm when none is given.
                let derived: Vec<SaTransform> = tr
                    .iter()
                    .filter(|x| x.ttype == TransformType::INTEG)
                    .map(|x| {
                        t(
                            TransformType::PRF,
                            x.id - AUTH_HMAC_SHA2_256_128 + PRF_HMAC_SHA2_256,
                            None,
                        )
                    })
                    .collect();
                tr.extend(derived);
            }
            if !has(&tr, TransformType::DH) {
                return Err(invalid(
                    "an IKE proposal needs a key exchange group (e.g. x25519)",
                ));
            }
        } else if !has(&tr, TransformType::ESN) {
            tr.push(t(TransformType::ESN, ESN_NO, None));
        }
        // Wire order by type, as strongSwan sends it; the stable sort keeps our preference within a type.
        tr.sort_by_key(|x| x.ttype);
        Ok(ProposalSpec {
            protocol: if esp {
                ProtocolId::ESP
            } else {
                ProtocolId::IKE
            },
            transforms: tr,
            text: text.to_owned(),
        })
    }

    /// The wire form, numbered `num`, carrying `spi`.
    pub fn to_wire(&self, num: u8, spi: Vec<u8>) -> Proposal {
        Proposal {
            num,
            protocol: self.protocol,
            spi,
            transforms: self.transforms.clone(),
        }
    }

    /// The first DH group offered, if any (the group of the KE payload we send).
    pub fn first_dh(&self) -> Option<u16> {
        self.transforms
            .iter()
            .find(|x| x.ttype == TransformType::DH)
            .map(|x| x.id)
    }

    /// This proposal without its DH transforms (for Child SAs created without PFS in IKE_AUTH).
    pub fn without_dh(&self) -> ProposalSpec {
        ProposalSpec {
            transforms: self
                .transforms
                .iter()
                .copied()
                .filter(|x| x.ttype != TransformType::DH)
                .collect(),
            ..self.clone()
        }
    }
}

/// The algorithms both sides agreed on: one transform per type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chosen {
    /// The proposal number (as the initiator numbered it).
    pub num: u8,
    /// The SPI the peer sent in that proposal.
    pub spi: Vec<u8>,
    /// Encryption.
    pub encr: SaTransform,
    /// PRF (IKE only).
    pub prf: Option<SaTransform>,
    /// Integrity (non-AEAD only).
    pub integ: Option<SaTransform>,
    /// Key exchange group, if one was negotiated.
    pub dh: Option<u16>,
    /// Extended sequence numbers (ESP only).
    pub esn: bool,
}

impl Chosen {
    /// The chosen transforms as a single-transform-per-type proposal, with our SPI, for the response.
    pub fn to_wire(&self, protocol: ProtocolId, spi: Vec<u8>) -> Proposal {
        let mut transforms = vec![self.encr];
        transforms.extend(self.prf);
        transforms.extend(self.integ);
        if let Some(g) = self.dh {
            transforms.push(t(TransformType::DH, g, None));
        }
        if protocol == ProtocolId::ESP {
            transforms.push(t(
                TransformType::ESN,
                if self.esn { ESN_YES } else { ESN_NO },
                None,
            ));
        }
        Proposal {
            num: self.num,
            protocol,
            spi,
            transforms,
        }
    }

    /// strongSwan-style name of the chosen algorithms, for logs and `vmsecd status`.
    pub fn describe(&self) -> String {
        let mut parts = vec![encr_name(&self.encr)];
        if let Some(i) = self.integ {
            parts.push(match i.id {
                AUTH_HMAC_SHA2_256_128 => "HMAC_SHA2_256_128".into(),
                AUTH_HMAC_SHA2_384_192 => "HMAC_SHA2_384_192".into(),
                AUTH_HMAC_SHA2_512_256 => "HMAC_SHA2_512_256".into(),
                x => format!("INTEG_{x}"),
            });
        }
        if let Some(p) = self.prf {
            parts.push(match p.id {
                PRF_HMAC_SHA2_256 => "PRF_HMAC_SHA2_256".into(),
                PRF_HMAC_SHA2_384 => "PRF_HMAC_SHA2_384".into(),
                PRF_HMAC_SHA2_512 => "PRF_HMAC_SHA2_512".into(),
                x => format!("PRF_{x}"),
            });
        }
        if let Some(g) = self.dh {
            parts.push(dh_name(g).into());
        }
        parts.join("/")
    }
}

fn encr_name(e: &SaTransform) -> String {
    match (e.id, e.key_len) {
        (ENCR_AES_GCM_16, Some(k)) => format!("AES_GCM_16_{k}"),
        (ENCR_AES_CBC, Some(k)) => format!("AES_CBC_{k}"),
        (ENCR_CHACHA20_POLY1305, _) => "CHACHA20_POLY1305".into(),
        (id, _) => format!("ENCR_{id}"),
    }
}

/// A received proposal in strongSwan's syntax (`aes128gcm16-prfsha256-x25519`, `aes256-sha256-esn-noesn`), so
/// that a log naming both sides' proposals reads the same way as the configuration files on both sides.
/// Algorithms without a strongSwan token are written as type and IANA number (`encr3`, `dh2`).
pub fn describe_wire(p: &Proposal) -> String {
    use TransformType as T;
    let name = |x: &SaTransform| -> Option<String> {
        Some(match (x.ttype, x.id, x.key_len) {
            (T::ENCR, ENCR_AES_GCM_16, Some(k)) => format!("aes{k}gcm16"),
            (T::ENCR, ENCR_AES_CBC, Some(k)) => format!("aes{k}"),
            (T::ENCR, ENCR_CHACHA20_POLY1305, _) => "chacha20poly1305".into(),
            (T::INTEG, AUTH_HMAC_SHA2_256_128, _) => "sha256".into(),
            (T::INTEG, AUTH_HMAC_SHA2_384_192, _) => "sha384".into(),
            (T::INTEG, AUTH_HMAC_SHA2_512_256, _) => "sha512".into(),
            (T::PRF, PRF_HMAC_SHA2_256, _) => "prfsha256".into(),
            (T::PRF, PRF_HMAC_SHA2_384, _) => "prfsha384".into(),
            (T::PRF, PRF_HMAC_SHA2_512, _) => "prfsha512".into(),
            (T::DH, DH_CURVE25519, _) => "x25519".into(),
            (T::DH, DH_ECP_256, _) => "ecp256".into(),
            (T::DH, DH_ECP_384, _) => "ecp384".into(),
            (T::DH, DH_MODP_2048, _) => "modp2048".into(),
            (T::DH, DH_MODP_3072, _) => "modp3072".into(),
            // NONE for integrity or DH: the same as not offering the type.
            (T::INTEG | T::DH, 0, _) => return None,
            (T::ESN, ESN_YES, _) => "esn".into(),
            (T::ESN, ESN_NO, _) => "noesn".into(),
            (t, id, k) => {
                let ty = match t {
                    T::ENCR => "encr",
                    T::PRF => "prf",
                    T::INTEG => "integ",
                    T::DH => "dh",
                    T::ESN => "esn",
                    _ => "transform",
                };
                match k {
                    Some(k) => format!("{ty}{id}/{k}"),
                    None => format!("{ty}{id}"),
                }
            }
        })
    };
    let only_noesn = p
        .transforms
        .iter()
        .filter(|x| x.ttype == T::ESN)
        .all(|x| x.id == ESN_NO);
    // strongSwan's order: encryption, integrity, PRF, key exchange, ESN.
    let rank = |x: &&SaTransform| match x.ttype {
        T::ENCR => 0,
        T::INTEG => 1,
        T::PRF => 2,
        T::DH => 3,
        _ => 4,
    };
    let mut ordered: Vec<&SaTransform> = p.transforms.iter().collect();
    ordered.sort_by_key(rank);
    let mut names: Vec<String> = Vec::new();
    let mut len = 0usize;
    for (i, x) in ordered.iter().enumerate() {
        // strongSwan leaves "noesn" out when it is the only choice.
        if x.ttype == T::ESN && only_noesn {
            continue;
        }
        // A peer may send thousands of transforms: the description stays short (and the duplicate check cheap).
        if len > crate::text::MAX_UNTRUSTED_CHARS {
            names.push(format!("... ({} more transforms)", ordered.len() - i));
            break;
        }
        if let Some(n) = name(x) {
            if !names.contains(&n) {
                len += n.len() + 1;
                names.push(n);
            }
        }
    }
    names.join("-")
}

/// strongSwan's name of a DH group.
pub fn dh_name(g: u16) -> &'static str {
    match g {
        DH_CURVE25519 => "CURVE_25519",
        DH_ECP_256 => "ECP_256",
        DH_ECP_384 => "ECP_384",
        DH_MODP_2048 => "MODP_2048",
        DH_MODP_3072 => "MODP_3072",
        _ => "unknown group",
    }
}

/// Picks, as responder, the first of *our* proposals that one of theirs matches.
//= https://www.rfc-editor.org/rfc/rfc7296#section-2.7
//# The responder MUST choose a single suite, which may be any subset of the SA proposal following the rules
//# below
pub fn select(ours: &[ProposalSpec], theirs: &[Proposal]) -> Option<Chosen> {
    for o in ours {
        for p in theirs.iter().filter(|p| p.protocol == o.protocol) {
            if let Some(c) = match_one(o, p) {
                return Some(c);
            }
        }
    }
    None
}

fn match_one(ours: &ProposalSpec, theirs: &Proposal) -> Option<Chosen> {
    let pick = |ty: TransformType| -> Result<Option<SaTransform>, ()> {
        let mine: Vec<&SaTransform> = ours.transforms.iter().filter(|x| x.ttype == ty).collect();
        // "NONE" (id 0) for INTEG or DH is the same as not offering the type (except for ESN, where 0 means no).
        let theirs_of: Vec<&SaTransform> = theirs
            .transforms
            .iter()
            .filter(|x| x.ttype == ty && (x.id != 0 || ty == TransformType::ESN))
            .collect();
        match (mine.is_empty(), theirs_of.is_empty()) {
            (true, true) => Ok(None),
            (true, false) | (false, true) => {
                // They offer DH NONE alongside real groups, or we want no DH and they allow NONE.
                let they_allow_none = theirs.transforms.iter().any(|x| x.ttype == ty && x.id == 0);
                if mine.is_empty() && they_allow_none {
                    Ok(None)
                } else {
                    Err(())
                }
            }
            (false, false) => mine
                .iter()
                .find(|m| theirs_of.contains(m))
                .map(|m| Some(**m))
                .ok_or(()),
        }
    };
    let encr = pick(TransformType::ENCR).ok()??;
    let prf = pick(TransformType::PRF).ok()?;
    let integ = pick(TransformType::INTEG).ok()?;
    let dh = pick(TransformType::DH).ok()?.map(|x| x.id);
    let esn = pick(TransformType::ESN)
        .ok()?
        .is_some_and(|x| x.id == ESN_YES);
    Some(Chosen {
        num: theirs.num,
        spi: theirs.spi.clone(),
        encr,
        prf,
        integ,
        dh,
        esn,
    })
}

/// Why a responder's chosen proposal is not one we can accept (RFC 7296 2.7): the peer's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Mismatch {
    /// The SA payload of the answer does not hold exactly one proposal.
    #[error("the answer's SA payload holds {0} proposals, not exactly one")]
    ProposalCount(usize),
    /// The proposal number is none of ours.
    #[error("the answer names proposal {0}, which we did not offer")]
    UnknownNumber(u8),
    /// The protocol differs from the one of our proposal with that number.
    #[error("the answer's proposal {num} is for protocol {got}, ours was for protocol {want}")]
    WrongProtocol {
        /// Proposal number.
        num: u8,
        /// Protocol of the answer.
        got: u8,
        /// Protocol of our proposal.
        want: u8,
    },
    /// The SPI has the wrong size for the exchange (0 in IKE_SA_INIT, 8 for an IKE rekey, 4 for ESP).
    #[error("the answer's SPI is {got} bytes, expected {want}")]
    SpiSize {
        /// Size received.
        got: usize,
        /// Size required.
        want: usize,
    },
    /// A transform type we offered is missing (e.g. no integrity algorithm for AES-CBC).
    #[error("the answer has no {0} transform, but we offered that type")]
    MissingType(&'static str),
    /// More than one transform of one type.
    #[error("the answer has {count} {ttype} transforms, exactly one is allowed")]
    SeveralOfType {
        /// The type.
        ttype: &'static str,
        /// How many.
        count: usize,
    },
    /// A transform of a type we did not offer.
    #[error("the answer has a {ttype} transform (id {id}), a type we did not offer")]
    ExtraType {
        /// The type.
        ttype: &'static str,
        /// Its algorithm id.
        id: u16,
    },
    /// A transform (algorithm or key length) that is not in our proposal.
    #[error("the answer chose {ttype} id {id}{}, which we did not offer", key_len.map(|k| format!(" with key length {k}")).unwrap_or_default())]
    NotOffered {
        /// The type.
        ttype: &'static str,
        /// Its algorithm id.
        id: u16,
        /// Its key length attribute.
        key_len: Option<u16>,
    },
}

/// A transform type's name for messages.
fn type_name(t: TransformType) -> &'static str {
    match t {
        TransformType::ENCR => "encryption",
        TransformType::PRF => "PRF",
        TransformType::INTEG => "integrity",
        TransformType::DH => "key exchange",
        TransformType::ESN => "ESN",
        _ => "unknown-type",
    }
}

/// Checks, as initiator, the responder's answer (all proposals of its SA payload) against what we `offered`.
//= https://www.rfc-editor.org/rfc/rfc7296#section-2.7
//# If a proposal is accepted, the SA response MUST contain the same protocol.
//= https://www.rfc-editor.org/rfc/rfc7296#section-2.7
//# The accepted cryptographic suite MUST contain exactly one transform of each type included in the proposal.
// Anything else (a missing or extra type, a transform or key length we did not offer, another proposal number,
// protocol or SPI size) is refused: the Chosen we build from it feeds key derivation and the datapath, which
// trust it to be one of our own proposals. A NONE (id 0) integrity or key exchange transform counts as absent,
// so it is accepted only for a type we did not offer.
pub fn check_response(offered: &[Proposal], answer: &[Proposal]) -> Result<Chosen, Mismatch> {
    let [chosen] = answer else {
        return Err(Mismatch::ProposalCount(answer.len()));
    };
    let ours = offered
        .iter()
        .find(|p| p.num == chosen.num)
        .ok_or(Mismatch::UnknownNumber(chosen.num))?;
    if ours.protocol != chosen.protocol {
        return Err(Mismatch::WrongProtocol {
            num: chosen.num,
            got: chosen.protocol.0,
            want: ours.protocol.0,
        });
    }
    if chosen.spi.len() != ours.spi.len() {
        return Err(Mismatch::SpiSize {
            got: chosen.spi.len(),
            want: ours.spi.len(),
        });
    }
    let offered_type = |ty: TransformType| ours.transforms.iter().any(|x| x.ttype == ty);
    for x in &chosen.transforms {
        let none = x.id == 0 && matches!(x.ttype, TransformType::INTEG | TransformType::DH);
        if !offered_type(x.ttype) {
            if none {
                continue;
            }
            return Err(Mismatch::ExtraType {
                ttype: type_name(x.ttype),
                id: x.id,
            });
        }
        if !ours.transforms.contains(x) {
            return Err(Mismatch::NotOffered {
                ttype: type_name(x.ttype),
                id: x.id,
                key_len: x.key_len,
            });
        }
    }
    let one = |ty: TransformType| -> Result<Option<SaTransform>, Mismatch> {
        if !offered_type(ty) {
            return Ok(None);
        }
        let mut of = chosen.transforms.iter().filter(|x| x.ttype == ty);
        match (of.next(), of.count()) {
            (Some(x), 0) => Ok(Some(*x)),
            (None, _) => Err(Mismatch::MissingType(type_name(ty))),
            (Some(_), more) => Err(Mismatch::SeveralOfType {
                ttype: type_name(ty),
                count: more + 1,
            }),
        }
    };
    let encr = one(TransformType::ENCR)?.ok_or(Mismatch::MissingType("encryption"))?;
    Ok(Chosen {
        num: chosen.num,
        spi: chosen.spi.clone(),
        encr,
        prf: one(TransformType::PRF)?,
        integ: one(TransformType::INTEG)?,
        dh: one(TransformType::DH)?.map(|x| x.id),
        esn: one(TransformType::ESN)?.is_some_and(|x| x.id == ESN_YES),
    })
}

#[cfg(test)]
mod tests;
