//! IKE_AUTH in both roles: AUTH payloads, certificates, the first Child SA, and the SA becoming established.

use super::*;

/// Why an AUTH payload could not be made or did not verify, split by whose fault it is (as rustls's `Error`
/// is). The text is what the IkeDown reason and the daemon's log say, unchanged from when these were strings.
#[derive(Debug, thiserror::Error)]
pub(super) enum AuthError {
    /// The peer's: its PSK AUTH does not verify (another PSK, or a forgery).
    #[error("the PSKs differ")]
    PskMismatch,
    /// A signature ours could not be made (no common hash) or the peer's does not verify.
    #[error(transparent)]
    Signature(#[from] sig::SignatureError),
    /// The peer's certificate: not trusted, out of date, or not naming its identity.
    #[error(transparent)]
    Certificate(#[from] x509::CertError),
    /// The peer's signature does not verify under the key of its certificate.
    #[error("{error} (the key of the certificate of {subject})")]
    CertificateSignature {
        /// Why the signature failed.
        error: sig::SignatureError,
        /// The certificate's subject DN.
        subject: String,
    },
    /// The peer's first CERT payload is not a certificate we can read (malformed).
    #[error("the peer's certificate (first CERT payload): {0}")]
    MalformedCertificate(x509::CertError),
    /// Neither the peer nor the mesh file gave its certificate.
    #[error(
        "the peer sent no certificate (no X.509 CERT payload) and the mesh file names none for it"
    )]
    NoCertificate,
    /// Incompatible configurations: the peer authenticates with another method than ours.
    #[error(
        "authentication method mismatch: the peer authenticates with {theirs}, we are configured for {ours} \
         (mesh auth = \"{mesh}\")"
    )]
    MethodMismatch {
        /// The peer's method, in words.
        theirs: String,
        /// Ours.
        ours: &'static str,
        /// The mesh file's `auth` value for ours.
        mesh: &'static str,
    },
}

impl IkeSa {
    // ---- IKE_AUTH, initiator --------------------------------------------------------------------------------

    pub(super) fn send_auth(&mut self, now: Instant) {
        let Phase::Auth(hs) = &self.phase else {
            return;
        };
        let spi_in = random_spi32();
        let offered = wire_proposals(&self.cfg.esp_proposals, &spi_in.to_be_bytes(), false);
        let id_i = self.cfg.local_id.clone();
        let (method, auth) = match self.our_auth(hs, &id_i) {
            Ok(a) => a,
            Err(why) => {
                self.close(Reason::AuthenticationFailed(why.to_string()));
                return;
            }
        };
        let mut payloads = vec![Payload::IdI(id_i)];
        payloads.extend(self.cert_payloads());
        payloads.extend(self.certreq_payload());
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.4
        //# The INITIAL_CONTACT notification asserts that this IKE SA is the only IKE SA currently active between
        //# the authenticated identities.
        // So it is left out while another IKE SA with the peer is established (strongSwan likewise sends it only
        // without an existing contact): a second IKE SA begun while the peer's came up (our request lost and
        // retransmitted) claimed it, and the peer dropped the IKE SA both ends were about to keep as the one of
        // the duplicate pair (ike/tests/mesh.rs with 5% loss, pair test
        // `second_ike_sa_after_a_lost_request_claims_no_initial_contact`).
        if !self.other_established {
            payloads.push(Payload::Notify(Notify::new(n::INITIAL_CONTACT, vec![])));
        }
        payloads.push(Payload::IdR(self.cfg.remote_id.clone()));
        payloads.push(Payload::Auth { method, data: auth });
        payloads.push(Payload::Sa(offered.clone()));
        payloads.push(Payload::TsI(self.cfg.local_ts.clone()));
        payloads.push(Payload::TsR(self.cfg.remote_ts.clone()));
        self.state = State::AuthSent;
        self.send_request(
            now,
            ExchangeType::IKE_AUTH,
            payloads,
            Request::Auth { offered, spi_in },
        );
    }

    /// The octets an AUTH payload covers (RFC 7296 2.15), ours (`local`) or the peer's.
    pub(super) fn auth_octets(&self, hs: &Handshake, local: bool, id: &Id) -> Vec<u8> {
        // Which side's octets: the initiator signs its IKE_SA_INIT request and the responder's nonce.
        let signer_is_initiator = local == self.initiator;
        let (first, nonce) = if signer_is_initiator {
            (&hs.init_req, &hs.nr)
        } else {
            (&hs.init_resp, &hs.ni)
        };
        hs.keys.signed_octets(signer_is_initiator, first, nonce, id)
    }

    /// Our AUTH payload: method and Authentication Data, or why we cannot make one.
    pub(super) fn our_auth(&self, hs: &Handshake, id: &Id) -> Result<(u8, Vec<u8>), AuthError> {
        let octets = self.auth_octets(hs, true, id);
        let suite = &hs.keys;
        match &self.cfg.auth {
            AuthMethod::Psk(psk) => Ok((sig::AUTH_PSK, suite.psk_auth(psk, &octets))),
            AuthMethod::PubKey {
                private, padding, ..
            }
            | AuthMethod::Certificate {
                private, padding, ..
            } => {
                // RFC 7427 section 4 (paraphrased): sign with a hash the peer announced.
                let hash = hs
                    .peer_sig_hashes
                    .as_deref()
                    .and_then(sig::SigHash::choose)
                    .ok_or(sig::SignatureError::NoCommonHash)?;
                let scheme = sig::Scheme {
                    padding: *padding,
                    hash,
                };
                let data = private.sign_auth(scheme, &octets)?;
                Ok((sig::AUTH_DIGITAL_SIGNATURE, data))
            }
        }
    }

    /// Checks the peer's AUTH payload against its configured PSK or public key; the error names the reason,
    /// including an authentication method that is not ours (PSK on one side, public key on the other).
    pub(super) fn check_peer_auth(
        &self,
        hs: &Handshake,
        now: Instant,
        id: &Id,
        method: u8,
        data: &[u8],
        payloads: &[Payload],
    ) -> Result<(), AuthError> {
        let octets = self.auth_octets(hs, false, id);
        let suite = &hs.keys;
        let method_name = |m: u8| match m {
            sig::AUTH_PSK => "a pre-shared key (AUTH method 2)".to_owned(),
            sig::AUTH_RSA_SIG => "an RSA signature (AUTH method 1)".to_owned(),
            sig::AUTH_DIGITAL_SIGNATURE => "a digital signature (AUTH method 14)".to_owned(),
            m => format!("AUTH method {m}"),
        };
        match (&self.cfg.auth, method) {
            (AuthMethod::Psk(psk), sig::AUTH_PSK) => {
                if suite::ct_eq(&suite.psk_auth(psk, &octets), data) {
                    Ok(())
                } else {
                    Err(AuthError::PskMismatch)
                }
            }
            (AuthMethod::PubKey { peer_public, .. }, m)
                if m == sig::AUTH_DIGITAL_SIGNATURE || m == sig::AUTH_RSA_SIG =>
            {
                peer_public.verify_auth(method, data, &octets)?;
                Ok(())
            }
            (
                AuthMethod::Certificate {
                    trust,
                    peer_cert,
                    clock,
                    ..
                },
                m,
            ) if m == sig::AUTH_DIGITAL_SIGNATURE || m == sig::AUTH_RSA_SIG => {
                let end = peer_certificate(payloads, peer_cert.as_deref())?;
                //= https://www.rfc-editor.org/rfc/rfc7296#section-3.6
                //# The Certificate payload provides a means to transport certificates or other
                //# authentication-related information via IKE.
                // The first CERT is the peer's own; any further ones are intermediates towards its CA.
                // At most MAX_CHAIN - 1 of them are parsed: a longer chain could not be used (see
                // TrustAnchors::verify), and each costs parsing before the peer has authenticated.
                let intermediates: Vec<x509::Certificate> = peer_certs(payloads)
                    .skip(1)
                    .take(x509::MAX_CHAIN - 1)
                    .filter_map(|d| x509::Certificate::from_der(d).ok())
                    .collect();
                trust.verify(&end, &intermediates, clock.unix_at(now))?;
                end.check_identity(id)?;
                end.public_key()?
                    .verify_auth(method, data, &octets)
                    .map_err(|error| AuthError::CertificateSignature {
                        error,
                        subject: end.subject(),
                    })?;
                Ok(())
            }
            (ours, theirs) => {
                let mesh = match ours {
                    AuthMethod::Psk(_) => "psk",
                    AuthMethod::PubKey { .. } | AuthMethod::Certificate { .. } => "pubkey",
                };
                Err(AuthError::MethodMismatch {
                    theirs: method_name(theirs),
                    ours: ours.name(),
                    mesh,
                })
            }
        }
    }

    /// Our SIGNATURE_HASH_ALGORITHMS notification, when we authenticate with signatures.
    // RFC 7427 section 4 (paraphrased): each side announces the hashes it supports in its IKE_SA_INIT message.
    pub(super) fn sig_hash_notify(&self) -> Option<Payload> {
        self.cfg.auth.signer().is_some().then(|| {
            Payload::Notify(Notify::new(
                n::SIGNATURE_HASH_ALGORITHMS,
                sig::SigHash::notify_data(),
            ))
        })
    }

    /// Our certificate and its intermediates, one CERT payload each, when we authenticate with certificates.
    //= https://www.rfc-editor.org/rfc/rfc7296#section-3.6
    //# The first certificate provided MUST contain the public key used to verify the AUTH field.
    pub(super) fn cert_payloads(&self) -> Vec<Payload> {
        match &self.cfg.auth {
            AuthMethod::Certificate { chain, .. } => chain
                .iter()
                .map(|c| Payload::Cert {
                    encoding: x509::ENCODING_X509_SIGNATURE,
                    data: c.der().to_vec(),
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// A CERTREQ naming the CAs we trust, so that the peer sends its certificate (strongSwan sends it only when
    /// asked, by default).
    pub(super) fn certreq_payload(&self) -> Option<Payload> {
        match &self.cfg.auth {
            AuthMethod::Certificate { trust, .. } => Some(Payload::CertReq {
                encoding: x509::ENCODING_X509_SIGNATURE,
                data: trust.certreq_data(),
            }),
            _ => None,
        }
    }

    pub(super) fn handle_auth_response(
        &mut self,
        now: Instant,
        payloads: Vec<Payload>,
        offered: Vec<Proposal>,
        spi_in: u32,
    ) {
        if let Some(t) = error_notify(&payloads) {
            if t == n::AUTHENTICATION_FAILED {
                let what = match self.cfg.auth {
                    AuthMethod::Psk(_) => "PSK",
                    AuthMethod::PubKey { .. } => "keys, the authentication method",
                    AuthMethod::Certificate { .. } => {
                        "certificates (does the peer trust our CA?), the authentication method"
                    }
                };
                self.close(Reason::AuthenticationFailed(format!(
                    "the peer refused our authentication (AUTHENTICATION_FAILED): check the {what} and our \
                     identity"
                )));
                return;
            }
        }
        let id_r = first!(payloads, Payload::IdR(id) => id.clone());
        let auth = first!(payloads, Payload::Auth { method, data } => (*method, data.clone()));
        let (Some(id_r), Some((method, data))) = (id_r, auth) else {
            self.close(Reason::Protocol(
                "IKE_AUTH response lacks IDr or AUTH".into(),
            ));
            return;
        };
        if id_r != self.cfg.remote_id {
            self.close(Reason::AuthenticationFailed(format!(
                "peer identity {} is not the expected {}",
                untrusted(&display_id(&id_r)),
                display_id(&self.cfg.remote_id)
            )));
            return;
        }
        let verdict = match &self.phase {
            Phase::Auth(hs) => self.check_peer_auth(hs, now, &id_r, method, &data, &payloads),
            _ => return,
        };
        if let Err(why) = verdict {
            self.close(Reason::AuthenticationFailed(format!(
                "the peer's AUTH payload does not verify: {}",
                untrusted(&why.to_string())
            )));
            return;
        }
        let Some(nonces) = self.established(now) else {
            return;
        };
        // The Child SA: an error notify here means the IKE SA stands but the Child SA did not come up.
        if let Some(t) = error_notify(&payloads) {
            let reason = match t {
                n::NO_PROPOSAL_CHOSEN => Reason::NoProposalChosen {
                    ours: proposal_text(&self.cfg.esp_proposals),
                    theirs: String::new(),
                },
                n::TS_UNACCEPTABLE => Reason::TsUnacceptable(format!(
                    "peer refused ours: local {} remote {}",
                    ts_list(&self.cfg.local_ts),
                    ts_list(&self.cfg.remote_ts)
                )),
                t => Reason::PeerError(n::name(t).into()),
            };
            self.fail_child(now, reason);
            return;
        }
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.21.2
        //# If the error occurs on the initiator, the notification MAY be returned in a separate INFORMATIONAL
        //# exchange, usually with the IKE SA deleted.
        // An answer we cannot accept (a proposal we did not offer, ...) deletes the IKE SA with its Child SA.
        let accepted = self
            .accept_child(&payloads, &offered, spi_in, false)
            .and_then(|child| {
                let info = self.child_info(&child, None, &nonces.ni, &nonces.nr, true)?;
                Ok((child, info))
            });
        match accepted {
            Ok((child, info)) => {
                self.children.push(child);
                self.events.push_back(Event::ChildUp(Box::new(info)));
            }
            Err(reason) => {
                self.fail_child(now, reason);
            }
        }
    }

    /// A Child SA could not be set up (in IKE_AUTH, either role): the IKE SA has no purpose without one, so it
    /// is deleted, and the peer is told so that it does not keep an IKE SA we have forgotten. `reason` is what
    /// the IKE SA's one IkeDown event reports, at once.
    pub(super) fn fail_child(&mut self, now: Instant, reason: Reason) {
        // As responder the delete follows our IKE_AUTH response at once; a peer that processes messages on
        // several threads (charon) may then handle the delete first and drop it ("ignoring INFORMATIONAL in
        // IKE_SA state CONNECTING"), keeping its IKE SA until our retransmission 4 s later. A short pause lets
        // it take the response first.
        let delay = if self.initiator {
            Duration::ZERO
        } else {
            RESPONDER_DELETE_DELAY
        };
        self.events.push_back(Event::IkeDown {
            peer: self.cfg.name.clone(),
            reason,
            unauthenticated: false,
        });
        self.down_reported = true;
        self.send_delete_ike(now, delay);
    }

    /// Abandons any outstanding request and deletes the IKE SA with INFORMATIONAL { D(IKE) }, first sent after
    /// `delay`; the SA closes when the peer answers or the retransmissions run out.
    pub(super) fn send_delete_ike(&mut self, now: Instant, delay: Duration) {
        // An outstanding rekey of ours that collided with the peer's is abandoned here too: the SA made for the
        // peer's must not stay contested for ever (the hard lifetime ending mid-collision left it so).
        self.clock = now;
        self.abandon_rekey();
        self.outstanding = None;
        let d = Payload::Delete(Delete {
            protocol: ProtocolId::IKE,
            spis: vec![],
        });
        self.send_request_after(
            now,
            delay,
            ExchangeType::INFORMATIONAL,
            vec![d],
            Request::DeleteIke,
        );
        self.state = State::Deleting;
    }

    /// Checks a responder's Child SA answer against what we offered.
    pub(super) fn accept_child(
        &self,
        payloads: &[Payload],
        offered: &[Proposal],
        spi_in: u32,
        pfs: bool,
    ) -> Result<Child, Reason> {
        let props = first!(payloads, Payload::Sa(props) => props)
            .ok_or_else(|| Reason::Protocol("Child SA answer without an SA payload".into()))?;
        let chosen = proposal::check_response(offered, props)
            .map_err(|e| Reason::Protocol(format!("Child SA answer refused: {e}")))?;
        let Ok(spi_out) = <[u8; 4]>::try_from(&chosen.spi[..]).map(u32::from_be_bytes) else {
            return Err(Reason::Protocol("ESP SPI is not 4 bytes".into()));
        };
        if suite::esp_transform(&chosen).is_none() {
            return Err(Reason::Protocol(format!(
                "Child SA answer chose {}, which the datapath does not implement",
                chosen.describe()
            )));
        }
        if pfs != chosen.dh.is_some() {
            return Err(Reason::Protocol("PFS group mismatch".into()));
        }
        let tsi = first!(payloads, Payload::TsI(t) => t.clone());
        let tsr = first!(payloads, Payload::TsR(t) => t.clone());
        let (Some(tsi), Some(tsr)) = (tsi, tsr) else {
            return Err(Reason::Protocol("Child SA answer lacks TSi/TSr".into()));
        };
        if tsi.len() > MAX_TS_PER_SIDE.max(self.cfg.local_ts.len())
            || tsr.len() > MAX_TS_PER_SIDE.max(self.cfg.remote_ts.len())
        {
            return Err(Reason::TsUnacceptable(format!(
                "responder answered with {} and {} traffic selectors, more than we accept \
                 (at most {MAX_TS_PER_SIDE} per side, or as many as we are configured for)",
                tsi.len(),
                tsr.len()
            )));
        }
        // The responder may only narrow: each returned selector must lie inside what we proposed.
        let inside = |got: &[TrafficSelector], ours: &[TrafficSelector]| {
            got.iter()
                .all(|g| ours.iter().any(|o| o.intersect(g) == Some(*g)))
        };
        if !inside(&tsi, &self.cfg.local_ts) || !inside(&tsr, &self.cfg.remote_ts) {
            return Err(Reason::TsUnacceptable(format!(
                "responder widened the selectors: {} === {}",
                untrusted(&ts_list(&tsi)),
                untrusted(&ts_list(&tsr))
            )));
        }
        Ok(self.new_child(spi_in, spi_out, chosen, tsi, tsr, true))
    }

    /// A Child SA from negotiated selectors; `we_init` says whether we initiated the exchange that made it,
    /// because TSi always describes the exchange initiator's side.
    pub(super) fn new_child(
        &self,
        spi_in: u32,
        spi_out: u32,
        chosen: Chosen,
        ts_i: Vec<TrafficSelector>,
        ts_r: Vec<TrafficSelector>,
        we_init: bool,
    ) -> Child {
        let (ts_local, ts_remote) = if we_init { (ts_i, ts_r) } else { (ts_r, ts_i) };
        let lt = &self.cfg.lifetimes;
        Child {
            spi_in,
            spi_out,
            chosen,
            ts_local,
            ts_remote,
            rekey_at: self.last_heard + jittered(lt.child_rekey, lt.jitter),
            rekeyed: false,
        }
    }

    /// The ESP SAs of a Child SA; `ni`/`nr` and `we_init` are those of the exchange that created it.
    pub(super) fn child_info(
        &self,
        c: &Child,
        shared: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
        we_init: bool,
    ) -> Result<ChildSaInfo, Reason> {
        let suite = self
            .keys()
            .ok_or_else(|| Reason::Protocol("Child SA before the IKE SA has keys".into()))?;
        // accept_child and negotiate_child only let through what the datapath implements; checked again here
        // because a wrong answer must never be able to take the daemon down.
        let transform = suite::esp_transform(&c.chosen).ok_or_else(|| {
            Reason::Protocol(format!(
                "Child SA algorithms {} are not implemented by the datapath",
                c.chosen.describe()
            ))
        })?;
        let half = transform.keymat_len();
        let keymat = suite.child_keymat(shared, ni, nr, 2 * half);
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.17
        //# All keys for SAs carrying data from the initiator to the responder are taken before SAs going from
        //# the responder to the initiator.
        let (i_to_r, r_to_i) = keymat.split_at(half);
        let (k_in, k_out) = if we_init {
            (r_to_i, i_to_r)
        } else {
            (i_to_r, r_to_i)
        };
        let key = |k: &[u8]| {
            esp::KeyMaterial::new(transform, k)
                .map_err(|e| Reason::Protocol(format!("Child SA keys: {e}")))
        };
        Ok(ChildSaInfo {
            peer: self.cfg.name.clone(),
            ike_spi: self.local_spi(),
            spi_in: c.spi_in,
            spi_out: c.spi_out,
            transform,
            esn: c.chosen.esn,
            keys_in: key(k_in)?,
            keys_out: key(k_out)?,
            ts_local: c.ts_local.clone(),
            ts_remote: c.ts_remote.clone(),
            remote: self.remote,
            udp_encap: self.nat,
            pfs_group: c.chosen.dh,
        })
    }

    /// IKE_AUTH is done: the SA keeps its keys and drops the rest of the handshake, but for the nonces, which
    /// it hands back (they make the first Child SA's keys); `None` if it was not in IKE_AUTH.
    pub(super) fn established(&mut self, now: Instant) -> Option<Nonces> {
        let hs = match std::mem::replace(&mut self.phase, Phase::Void) {
            Phase::Auth(hs) => hs,
            other => {
                self.phase = other;
                return None;
            }
        };
        let Handshake { keys, ni, nr, .. } = *hs;
        let algorithms = keys.chosen.describe();
        self.phase = Phase::Keyed(Box::new(keys));
        self.state = State::Established;
        self.established_at = Some(now);
        let lt = self.cfg.lifetimes;
        self.ike_rekey_at = Some(now + jittered(lt.ike_rekey, lt.jitter));
        self.events.push_back(Event::IkeUp {
            peer: self.cfg.name.clone(),
            spis: (self.spi_i, self.spi_r),
            algorithms,
            remote: self.remote,
            nat: self.nat,
            encap: self.encap,
            initiator: self.initiator,
            handshake: now.saturating_duration_since(self.created),
        });
        Some(Nonces { ni, nr })
    }
}

/// The nonces of the IKE_SA_INIT exchange, which key the first Child SA (RFC 7296 2.17).
pub(super) struct Nonces {
    ni: Vec<u8>,
    nr: Vec<u8>,
}

impl IkeSa {
    // ---- responder: IKE_AUTH ------------------------------------------------------------------------------

    pub(super) fn respond_auth(&mut self, now: Instant, id: u32, payloads: Vec<Payload>) {
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.4
        //# The INITIAL_CONTACT notification asserts that this IKE SA is the only IKE SA currently active between
        //# the authenticated identities.
        // Acted on by the endpoint only if this SA gets established (the AUTH verified).
        self.initial_contact = payloads
            .iter()
            .any(|p| matches!(p, Payload::Notify(x) if x.ntype == n::INITIAL_CONTACT));
        let id_i = first!(payloads, Payload::IdI(x) => x.clone());
        let auth = first!(payloads, Payload::Auth { method, data } => (*method, data.clone()));
        let (Some(id_i), Some((method, data))) = (id_i, auth) else {
            self.send_response(
                ExchangeType::IKE_AUTH,
                id,
                vec![Payload::Notify(Notify::new(n::INVALID_SYNTAX, vec![]))],
            );
            self.close(Reason::Protocol(
                "IKE_AUTH request lacks IDi or AUTH".into(),
            ));
            return;
        };
        let refuse = |sa: &mut IkeSa, why: String| {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.21.2
            //# If the error occurs on the responder, the notification is returned in the protected response
            sa.send_response(
                ExchangeType::IKE_AUTH,
                id,
                vec![Payload::Notify(Notify::new(
                    n::AUTHENTICATION_FAILED,
                    vec![],
                ))],
            );
            sa.close(Reason::AuthenticationFailed(why));
        };
        if id_i != self.cfg.remote_id {
            let why = format!(
                "peer claims identity {}, expected {}",
                untrusted(&display_id(&id_i)),
                display_id(&self.cfg.remote_id)
            );
            refuse(self, why);
            return;
        }
        let id_r = self.cfg.local_id.clone();
        let Phase::Auth(hs) = &self.phase else {
            return;
        };
        let verdict = self
            .check_peer_auth(hs, now, &id_i, method, &data, &payloads)
            .map_err(|why| {
                format!(
                    "AUTH from {} does not verify: {}",
                    untrusted(&display_id(&id_i)),
                    untrusted(&why.to_string())
                )
            })
            .and_then(|()| self.our_auth(hs, &id_r).map_err(|why| why.to_string()));
        let (our_method, our_auth) = match verdict {
            Ok(a) => a,
            Err(why) => {
                refuse(self, why);
                return;
            }
        };
        let mut resp = vec![Payload::IdR(id_r)];
        resp.extend(self.cert_payloads());
        resp.push(Payload::Auth {
            method: our_method,
            data: our_auth,
        });
        let Some(nonces) = self.established(now) else {
            return;
        };
        let child =
            self.negotiate_child(&payloads, false)
                .and_then(|(child, sa_payload, tsi, tsr)| {
                    let info = self
                        .child_info(&child, None, &nonces.ni, &nonces.nr, false)
                        .map_err(|r| (n::NO_PROPOSAL_CHOSEN, r))?;
                    Ok((child, info, sa_payload, tsi, tsr))
                });
        match child {
            Ok((child, info, sa_payload, tsi, tsr)) => {
                resp.extend([sa_payload, Payload::TsI(tsi), Payload::TsR(tsr)]);
                self.send_response(ExchangeType::IKE_AUTH, id, resp);
                self.children.push(child);
                self.events.push_back(Event::ChildUp(Box::new(info)));
            }
            Err((notify, reason)) => {
                resp.push(Payload::Notify(Notify::new(notify, vec![])));
                self.send_response(ExchangeType::IKE_AUTH, id, resp);
                // Without a Child SA this IKE SA carries nothing. The peer keeps it after such an answer
                // (strongSwan: "failed to establish CHILD_SA, keeping IKE_SA"), so delete it on both sides rather
                // than forget it silently.
                self.fail_child(now, reason);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed errors read exactly as the strings they replaced (the daemon logs them, pair.rs matches one).
    #[test]
    fn auth_errors_read_as_before() {
        assert_eq!(AuthError::PskMismatch.to_string(), "the PSKs differ");
        assert_eq!(
            AuthError::NoCertificate.to_string(),
            "the peer sent no certificate (no X.509 CERT payload) and the mesh file names none for it"
        );
        assert_eq!(
            AuthError::MethodMismatch {
                theirs: "a pre-shared key (AUTH method 2)".into(),
                ours: "public key",
                mesh: "pubkey",
            }
            .to_string(),
            "authentication method mismatch: the peer authenticates with a pre-shared key (AUTH method 2), \
             we are configured for public key (mesh auth = \"pubkey\")"
        );
        assert_eq!(
            AuthError::from(sig::SignatureError::NoCommonHash).to_string(),
            sig::SignatureError::NoCommonHash.to_string()
        );
    }
}
