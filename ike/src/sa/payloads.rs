//! Helpers that read or describe payloads: offers in strongSwan's syntax, notifies, certificates, selectors.

use super::*;

/// Our configured proposals as SA payload proposals, numbered from 1, each with `spi` (empty in IKE_SA_INIT).
/// `keep_dh` false strips the key exchange transforms, for an ESP offer with no KE payload beside it (IKE_AUTH,
/// or a Child SA request without a key share).
pub(super) fn wire_proposals(specs: &[ProposalSpec], spi: &[u8], keep_dh: bool) -> Vec<Proposal> {
    specs
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let num = i as u8 + 1;
            if keep_dh {
                p.to_wire(num, spi.to_vec())
            } else {
                p.without_dh().to_wire(num, spi.to_vec())
            }
        })
        .collect()
}

/// Our configured proposals in their configuration syntax, for the log line of a failed negotiation.
pub(super) fn proposal_text(specs: &[ProposalSpec]) -> String {
    specs
        .iter()
        .map(|p| p.text.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The peer's proposals in strongSwan's syntax, for the NO_PROPOSAL_CHOSEN log line: at most
/// [`crate::text::MAX_UNTRUSTED_CHARS`] characters, however many proposals the request carried.
pub(super) fn describe_offer(props: &[Proposal]) -> String {
    let mut out = String::new();
    for (i, p) in props.iter().enumerate() {
        if out.len() > crate::text::MAX_UNTRUSTED_CHARS {
            out.push_str(&format!(" ... ({} more proposals)", props.len() - i));
            break;
        }
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&proposal::describe_wire(p));
    }
    untrusted(&out)
}

pub(super) fn announces_fragmentation(payloads: &[Payload]) -> bool {
    payloads
        .iter()
        .any(|p| matches!(p, Payload::Notify(x) if x.ntype == n::IKEV2_FRAGMENTATION_SUPPORTED))
}

/// The PFS secret of a Child SA answer to our request with key share `ks`: `Some(None)` without PFS, `None` if
/// the answer lacks the KE payload or its key does not work.
pub(super) fn pfs_secret(
    ks: Option<&KeyShare>,
    payloads: &[Payload],
) -> Option<Option<crate::crypto::dh::SharedSecret>> {
    let Some(ks) = ks else {
        return Some(None);
    };
    let pub_r = first!(payloads, Payload::Ke { data, .. } => data.clone())?;
    ks.agree(&pub_r).ok().map(Some)
}

/// The X.509 certificates of the CERT payloads, in order.
pub(super) fn peer_certs(payloads: &[Payload]) -> impl Iterator<Item = &[u8]> {
    payloads.iter().filter_map(|p| match p {
        Payload::Cert { encoding, data } if *encoding == x509::ENCODING_X509_SIGNATURE => {
            Some(&data[..])
        }
        _ => None,
    })
}

/// The peer's own certificate: its first CERT payload, or the one the mesh file names if it sent none.
pub(super) fn peer_certificate(
    payloads: &[Payload],
    configured: Option<&x509::Certificate>,
) -> Result<x509::Certificate, auth::AuthError> {
    match peer_certs(payloads).next() {
        Some(der) => {
            x509::Certificate::from_der(der).map_err(auth::AuthError::MalformedCertificate)
        }
        None => configured.cloned().ok_or(auth::AuthError::NoCertificate),
    }
}

/// The hash algorithms of a SIGNATURE_HASH_ALGORITHMS notification, if there is one.
pub(super) fn peer_sig_hashes(payloads: &[Payload]) -> Option<Vec<u16>> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(x) if x.ntype == n::SIGNATURE_HASH_ALGORITHMS => {
            Some(sig::SigHash::parse_notify(&x.data))
        }
        _ => None,
    })
}

pub(super) fn error_notify(payloads: &[Payload]) -> Option<u16> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(x) if n::is_error(x.ntype) => Some(x.ntype),
        _ => None,
    })
}

pub(super) fn ts_list(ts: &[TrafficSelector]) -> String {
    ts.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
