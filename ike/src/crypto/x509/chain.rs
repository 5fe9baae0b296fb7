//! Trust anchors and chain verification: which CA certificates a mesh trusts, and whether a chain of signatures
//! leads from a peer's certificate to one of them, every certificate on the way valid at the time and every issuer
//! a CA allowed to sign certificates, within the caps on chain length and signature checks.

use super::*;

/// The CA certificates a mesh trusts.
#[derive(Debug, Clone, Default)]
pub struct TrustAnchors {
    cas: Vec<Certificate>,
}

impl TrustAnchors {
    /// Trusts `cas`. Each must be a CA certificate (basicConstraints cA).
    pub fn new(cas: Vec<Certificate>) -> Result<TrustAnchors, CertError> {
        for ca in &cas {
            if ca.ca.is_none() {
                return Err(CertError::NotACa {
                    subject: ca.subject(),
                    reason: "it is not a CA (basicConstraints cA is not set)",
                });
            }
            ca.public_key()?;
        }
        Ok(TrustAnchors { cas })
    }

    /// The CERTREQ Certification Authority data: the SHA-1 key hash of every trusted CA.
    pub fn certreq_data(&self) -> Vec<u8> {
        self.cas
            .iter()
            .filter_map(Certificate::key_id)
            .flatten()
            .collect()
    }

    /// The trusted CA certificates.
    pub fn certificates(&self) -> &[Certificate] {
        &self.cas
    }

    /// The trusted CAs' subjects, for messages.
    pub fn names(&self) -> String {
        let v: Vec<String> = self
            .cas
            .iter()
            .map(|c| format!("\"{}\"", c.subject()))
            .collect();
        v.join(", ")
    }

    /// Verifies `end` (with the `intermediates` the peer sent) up to a trusted CA at time `unix`, and checks
    /// that `end` may sign (keyUsage). Returns the chain's subjects, end first, for the log.
    pub fn verify(
        &self,
        end: &Certificate,
        intermediates: &[Certificate],
        unix: i64,
    ) -> Result<Vec<String>, CertError> {
        //= https://www.rfc-editor.org/rfc/rfc5280#section-4.2.1.3
        //# The digitalSignature bit is asserted when the subject public key is
        //# used for verifying digital signatures, other than signatures on
        //# certificates (bit 5) and CRLs (bit 6)
        if end
            .key_usage
            .is_some_and(|ku| ku & (KU_DIGITAL_SIGNATURE | KU_NON_REPUDIATION) == 0)
        {
            return Err(CertError::KeyUsage {
                subject: end.subject(),
            });
        }
        end.public_key()?;
        let mut path = vec![end.subject()];
        let mut cert = end;
        // What chain building may cost is bounded before the peer has authenticated: at most MAX_CHAIN - 1
        // intermediates are looked at (the first ones sent; a longer chain could not be used anyway), each
        // continues the chain at most once, and at most MAX_SIGNATURE_CHECKS signatures are checked in all.
        let intermediates = intermediates.get(..MAX_CHAIN - 1).unwrap_or(intermediates);
        let mut used = [false; MAX_CHAIN - 1];
        let mut checks = 0u32;
        let mut check = |issuer: &Certificate, child: &Certificate, below: u32| {
            if checks >= MAX_SIGNATURE_CHECKS {
                return Err(CertError::TooManyCandidates {
                    subject: child.subject(),
                });
            }
            checks += 1;
            issuer.issued(child, below)
        };
        for below in 0..MAX_CHAIN as u32 {
            cert.check_time(unix)?;
            cert.check_critical()?;
            // A trusted CA that issued it ends the chain.
            let mut last_err = None;
            for ca in self
                .cas
                .iter()
                .filter(|ca| same_dn(&ca.subject, &cert.issuer))
            {
                match check(ca, cert, below).and_then(|_| ca.check_time(unix)) {
                    Ok(()) => {
                        path.push(ca.subject());
                        return Ok(path);
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            // Otherwise an intermediate the peer sent (never the certificate itself: a self-signed root sent
            // along issues itself). The first one whose signature verifies continues the chain; if none does,
            // the reason the first candidate failed is the answer.
            let mut next = None;
            for (k, i) in intermediates.iter().enumerate().filter(|(k, i)| {
                !std::ptr::eq(*i, cert)
                    && !used.get(*k).copied().unwrap_or(true)
                    && same_dn(&i.subject, &cert.issuer)
            }) {
                match check(i, cert, below) {
                    Ok(()) => {
                        next = Some((k, i));
                        break;
                    }
                    Err(e @ CertError::TooManyCandidates { .. }) => return Err(e),
                    Err(e) => {
                        last_err.get_or_insert(e);
                    }
                }
            }
            let Some((k, i)) = next else {
                return Err(last_err.unwrap_or_else(|| CertError::UnknownIssuer {
                    subject: cert.subject(),
                    issuer: cert.issuer(),
                    trusted: self.names(),
                }));
            };
            if let Some(u) = used.get_mut(k) {
                *u = true;
            }
            path.push(i.subject());
            cert = i;
        }
        Err(CertError::TooLong)
    }
}
