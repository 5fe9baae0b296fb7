//! IKE_SA_INIT in both roles: the initiator's request and its response, the responder's stateless
//! validation (cookies, groups) and answer, and NAT detection.

use super::*;

/// IKE_SA_INIT requests of one IKE SA at most: the first, then retries after COOKIE or INVALID_KE_PAYLOAD (a
/// responder needs one of each at most; strongSwan allows five). Bounds what forged answers can make us send.
const MAX_INIT_TRIES: u32 = 3;

/// IKE_SA_INIT responses examined per transmission of our request: the peer's answer and a few copies or
/// forgeries. Anyone who saw our request can answer it, and an answer that gets as far as the key agreement
/// costs one (a MODP-3072 exponentiation: milliseconds); beyond this the rest are ignored until the next
/// retransmission, which the real response then answers.
const RESPONSES_PER_SEND: u32 = 4;

impl IkeSa {
    // ---- IKE_SA_INIT, initiator ------------------------------------------------------------------------------

    pub(super) fn send_init(&mut self, now: Instant, group: Option<u16>) {
        let group = group.or_else(|| {
            self.cfg
                .ike_proposals
                .first()
                .and_then(ProposalSpec::first_dh)
        });
        // A retry in the same group (after COOKIE) keeps the key share too, as the cookie rule below asks of all
        // other payloads. A new share per retry broke IKE SAs when the responder read our request and its
        // retransmissions late (a daemon busy starting): it answered each copy with a COOKIE, we retried once per
        // COOKIE with a new share each time, it built its half-open SA from the first retry and answered the
        // others from that SA's cache, and we derived keys from the last share: our IKE_AUTH never decrypted
        // there and went unanswered until we gave up (benches/mesh_scale.sh with 100 daemons, ike/tests/mesh.rs).
        let keep =
            matches!(&self.phase, Phase::Init(init) if group == Some(init.key_share.group()));
        let fresh = if keep {
            None
        } else {
            let Some(ks) = group.and_then(|g| KeyShare::generate(g).ok()) else {
                self.close(Reason::Protocol(
                    "no usable key exchange group in our IKE proposals".into(),
                ));
                return;
            };
            Some(ks)
        };
        let (ke_group, ke_data) = match (&fresh, &self.phase) {
            (Some(ks), _) => (ks.group(), ks.public().to_vec()),
            (None, Phase::Init(init)) => (init.key_share.group(), init.key_share.public().to_vec()),
            // `keep` implies Phase::Init.
            (None, _) => return,
        };
        // A retry after COOKIE or INVALID_KE_PAYLOAD keeps the nonce: the cookie is computed over it.
        let (ni, cookie) = match &self.phase {
            Phase::Init(init) => (init.ni.clone(), init.cookie.clone()),
            _ => (random_bytes(NONCE_LEN), None),
        };
        let mut payloads = Vec::new();
        if let Some(c) = cookie {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.6
            //# the initiator MUST retry the IKE_SA_INIT with a Notify payload of type COOKIE containing the
            //# responder-supplied cookie data as the first payload and all other payloads unchanged.
            payloads.push(Payload::Notify(Notify::new(n::COOKIE, c)));
        }
        let props = wire_proposals(&self.cfg.ike_proposals, &[], true);
        payloads.push(Payload::Sa(props));
        payloads.push(Payload::Ke {
            group: ke_group,
            data: ke_data,
        });
        payloads.push(Payload::Nonce(ni.clone()));
        payloads.extend(self.nat_detection_payloads());
        if self.cfg.fragment_size != 0 {
            //= https://www.rfc-editor.org/rfc/rfc7383#section-2.3
            //# The initiator indicates its support for IKE fragmentation and willingness to use it by including a
            //# Notify payload of type IKEV2_FRAGMENTATION_SUPPORTED in the IKE_SA_INIT request message.
            payloads.push(Payload::Notify(Notify::new(
                n::IKEV2_FRAGMENTATION_SUPPORTED,
                vec![],
            )));
        }
        payloads.extend(self.sig_hash_notify());
        if self.cfg.udp_with_vmsecd {
            payloads.push(vendor::udp_encap_payload());
        }
        let msg =
            message::encode_plain(self.header(ExchangeType::IKE_SA_INIT, false, 0), &payloads);
        match &mut self.phase {
            Phase::Init(init) => {
                if let Some(ks) = fresh {
                    init.key_share = ks;
                }
                init.request = msg.clone();
                init.tries += 1;
            }
            _ => {
                let Some(ks) = fresh else { return };
                self.phase = Phase::Init(Box::new(InitState {
                    key_share: ks,
                    ni,
                    cookie: None,
                    tries: 1,
                    request: msg.clone(),
                    error: None,
                    examined: (0, 0, 0),
                }))
            }
        }
        self.next_id = 1;
        self.outstanding = Some(Outstanding {
            id: 0,
            datagrams: vec![msg.clone()],
            sent: 1,
            deadline: now + self.cfg.retransmit.timeout(0),
            what: Request::Init,
        });
        self.push_transmit(msg);
    }

    pub(super) fn nat_detection_payloads(&self) -> Vec<Payload> {
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.23
        //# The data associated with these Notify types is the SHA-1 digest of the SPIs (in the order they appear in
        //# the header), IP address, and port from which this packet was sent.
        let src = if self.cfg.force_encap {
            // strongSwan's `encap = yes`: a source hash that cannot match makes the peer see a NAT.
            random_bytes(20)
        } else {
            suite::nat_hash(self.spi_i, self.spi_r, self.cfg.local_addr, self.local_port).to_vec()
        };
        let dst =
            suite::nat_hash(self.spi_i, self.spi_r, self.remote.ip(), self.remote.port()).to_vec();
        vec![
            Payload::Notify(Notify::new(n::NAT_DETECTION_SOURCE_IP, src)),
            Payload::Notify(Notify::new(n::NAT_DETECTION_DESTINATION_IP, dst)),
        ]
    }

    /// Looks at the peer's NAT detection notifies and Vendor IDs; switches to port 4500 if either side is behind
    /// a NAT, if our configuration forces it, or if both sides are vmsecd with `encap = "auto"`.
    ///
    /// `spi_r` is the responder SPI as it stood in the header of the message that carried them (0 in the
    /// IKE_SA_INIT request). The responder calls this with the request, the initiator with the response: a
    /// responder answers with the Vendor ID only when it announces it too, so both ends decide alike.
    pub(super) fn check_nat(&mut self, payloads: &[Payload], local_port: u16, spi_r: u64) {
        let mut nat = false;
        for p in payloads {
            if let Payload::Notify(x) = p {
                let expected = match x.ntype {
                    n::NAT_DETECTION_SOURCE_IP => {
                        suite::nat_hash(self.spi_i, spi_r, self.remote.ip(), self.remote.port())
                    }
                    n::NAT_DETECTION_DESTINATION_IP => {
                        suite::nat_hash(self.spi_i, spi_r, self.cfg.local_addr, local_port)
                    }
                    _ => continue,
                };
                if x.data != expected {
                    nat = true;
                    if x.ntype == n::NAT_DETECTION_DESTINATION_IP {
                        // The peer saw another address or port than ours: a NAT in front of us.
                        self.nat_local = true;
                    }
                }
            }
        }
        self.encap = if nat {
            Encap::Nat
        } else if self.cfg.force_encap {
            Encap::Forced
        } else if self.cfg.udp_with_vmsecd && vendor::announces_udp_encap(payloads) {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.23
            //# An initiator can use port 4500 for both IKE and ESP, regardless of whether or not there is a NAT,
            //# even at the beginning of IKE.
            Encap::VmsecdPeer
        } else {
            Encap::Raw
        };
        if self.encap.udp() {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.23
            //# the initiator MUST ... change to port 4500 for the IKE_AUTH exchange
            self.nat = true;
            self.local_port = NAT_T_PORT;
            if self.remote.port() == IKE_PORT {
                self.remote.set_port(NAT_T_PORT);
            }
        }
    }

    /// An error notification in an IKE_SA_INIT response: anyone on the path can forge one, so it does not end
    /// the IKE SA. It is reported at once, as unauthenticated (the daemon neither backs off nor takes it for the
    /// peer's word), and the IKE SA keeps retransmitting and waiting for a response it can use; if none comes,
    /// it closes when the retransmissions run out, reporting the error again (still as unauthenticated) as the
    /// reason it ended.
    //= https://www.rfc-editor.org/rfc/rfc7296#section-2.21.1
    //# Because all error notifications are completely unauthenticated, the recipient should continue trying for
    //# some time before giving up. The recipient should not immediately act based on the error notification
    //# unless corrective actions are defined in this specification, such as for COOKIE, INVALID_KE_PAYLOAD, and
    //# INVALID_MAJOR_VERSION.
    pub(super) fn unprotected_init_error(&mut self, reason: Reason) {
        let Phase::Init(init) = &mut self.phase else {
            return;
        };
        if init.error.is_some() || self.standing != Standing::Current {
            return;
        }
        self.events.push_back(Event::IkeDown {
            peer: self.cfg.name.clone(),
            reason: reason.clone(),
            unauthenticated: true,
        });
        init.error = Some(reason);
    }

    pub(super) fn handle_init_response(
        &mut self,
        now: Instant,
        payloads: Vec<Payload>,
        header: &Header,
        raw: &[u8],
        local_port: u16,
    ) {
        let Phase::Init(init) = &mut self.phase else {
            return;
        };
        let tries = init.tries;
        for p in &payloads {
            if let Payload::Notify(x) = p {
                match x.ntype {
                    //= https://www.rfc-editor.org/rfc/rfc7296#section-2.6
                    //# the initiator MUST retry the IKE_SA_INIT with a Notify payload of type COOKIE containing the
                    //# responder-supplied cookie data as the first payload and all other payloads unchanged.
                    // A COOKIE answer is never a response to use: one carrying the cookie our request already
                    // returns answers an older copy (a responder that read our first request and its
                    // retransmissions late answers each), and one beyond our retries may be anyone's; both are
                    // ignored while our request keeps being retransmitted. Taking a third one for a response had
                    // the IKE SA closed ("without an SA payload") when a late-reading responder sent three
                    // (ike/tests/mesh.rs with 5% loss).
                    n::COOKIE => {
                        if init.cookie.as_deref() != Some(&x.data[..]) && tries < MAX_INIT_TRIES {
                            init.cookie = Some(x.data.clone());
                            let group = init.key_share.group();
                            self.send_init(now, Some(group));
                        }
                        return;
                    }
                    //= https://www.rfc-editor.org/rfc/rfc7296#section-1.2
                    //# If the initiator guesses wrong, the responder will respond with a Notify payload of type
                    //# INVALID_KE_PAYLOAD indicating the selected group.
                    n::INVALID_KE_PAYLOAD if x.data.len() == 2 && tries < MAX_INIT_TRIES => {
                        let Ok(g) = <[u8; 2]>::try_from(&x.data[..]).map(u16::from_be_bytes) else {
                            continue;
                        };
                        let offered = self.cfg.ike_proposals.iter().any(|p| {
                            p.transforms
                                .iter()
                                .any(|t| t.ttype == message::TransformType::DH && t.id == g)
                        });
                        if offered {
                            self.send_init(now, Some(g));
                        } else {
                            // Not a correction we can make, and unauthenticated like any error notification
                            // (RFC 7296 2.21.1 above): anyone who saw our request could have sent it to end
                            // the IKE SA. Reported, and the request keeps being retransmitted.
                            self.unprotected_init_error(Reason::Protocol(format!(
                                "peer asked for key exchange group {g}, which we did not offer"
                            )));
                        }
                        return;
                    }
                    n::NO_PROPOSAL_CHOSEN => {
                        let reason = Reason::NoProposalChosen {
                            ours: proposal_text(&self.cfg.ike_proposals),
                            theirs: String::new(),
                        };
                        self.unprotected_init_error(reason);
                        return;
                    }
                    t if n::is_error(t) => {
                        self.unprotected_init_error(Reason::PeerError(n::name(t).into()));
                        return;
                    }
                    _ => {}
                }
            }
        }
        // Everything below is checked before the IKE_SA_INIT state is consumed: a response we cannot use is as
        // unauthenticated as an error notification (RFC 7296 2.21.1 above), so it is reported and the request
        // keeps being retransmitted for the real response (an on-path sender who saw our request closed the IKE
        // SA with a response lacking an SA payload, naming another group, or carrying a bad KE).
        let sent = (tries, self.outstanding.as_ref().map_or(0, |o| o.sent));
        if (init.examined.0, init.examined.1) != sent {
            init.examined = (sent.0, sent.1, 0);
        }
        if init.examined.2 >= RESPONSES_PER_SEND {
            return;
        }
        init.examined.2 += 1;
        let (keys, nr) = match self.usable_init_response(&payloads, header.spi_r) {
            Ok(usable) => usable,
            Err(reason) => {
                self.unprotected_init_error(reason);
                return;
            }
        };
        let init = match std::mem::replace(&mut self.phase, Phase::Void) {
            Phase::Init(init) => init,
            other => {
                self.phase = other;
                return;
            }
        };
        let InitState {
            ni,
            request: init_req,
            ..
        } = *init;
        self.spi_r = header.spi_r;
        // A usable response after a (forged) error notification: the error reported was not the peer's word (it
        // went with the IKE_SA_INIT state).
        self.phase = Phase::Auth(Box::new(Handshake {
            keys,
            ni,
            nr,
            init_req,
            init_resp: raw.to_vec(),
            peer_sig_hashes: peer_sig_hashes(&payloads),
        }));
        self.check_nat(&payloads, local_port, self.spi_r);
        self.frag = self.cfg.fragment_size != 0 && announces_fragmentation(&payloads);
        self.outstanding = None;
        self.send_auth(now);
    }

    /// The keys an IKE_SA_INIT response gives (from the proposal it chose, its KE and nonce; `spi_r` is its
    /// header's) and the responder's nonce, or why the response cannot be used.
    fn usable_init_response(
        &self,
        payloads: &[Payload],
        spi_r: u64,
    ) -> Result<(Suite, Vec<u8>), Reason> {
        let Phase::Init(init) = &self.phase else {
            return Err(Reason::Protocol("IKE_SA_INIT response out of turn".into()));
        };
        //= https://www.rfc-editor.org/rfc/rfc7296#section-3.1
        //# Responder's SPI (8 octets) - A value chosen by the responder to identify a unique IKE Security
        //# Association. This value MUST be zero in the first message of an IKE initial exchange (including
        //# repeats of that message including a cookie).
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.6
        //# Each endpoint chooses one of the two SPIs and MUST choose them so as to be unique identifiers of an
        //# IKE SA. An SPI value of zero is special: it indicates that the remote SPI value is not yet known by
        //# the sender.
        // So a response whose responder SPI is zero names no IKE SA, and every later message would carry it.
        if spi_r == 0 {
            return Err(Reason::Protocol(
                "IKE_SA_INIT response with a zero responder SPI".into(),
            ));
        }
        let offered = wire_proposals(&self.cfg.ike_proposals, &[], true);
        let chosen = match first!(payloads, Payload::Sa(props) => props) {
            Some(props) => proposal::check_response(&offered, props),
            None => {
                return Err(Reason::Protocol(
                    "IKE_SA_INIT response without an SA payload".into(),
                ))
            }
        };
        let chosen = match chosen {
            Ok(c) if suite::ike_supported(&c) => c,
            Ok(c) => {
                return Err(Reason::Protocol(format!(
                    "IKE_SA_INIT response chose {}, which we cannot use",
                    c.describe()
                )))
            }
            Err(e) => {
                return Err(Reason::Protocol(format!(
                    "IKE_SA_INIT response refused: {e}"
                )))
            }
        };
        let ke = first!(payloads, Payload::Ke { group, data } => (*group, data));
        let nr = first!(payloads, Payload::Nonce(d) => d);
        let (Some((group, peer_pub)), Some(nr)) = (ke, nr) else {
            return Err(Reason::Protocol(
                "IKE_SA_INIT response lacks KE or Nonce".into(),
            ));
        };
        if Some(group) != chosen.dh || group != init.key_share.group() {
            return Err(Reason::Protocol(format!(
                "responder used group {group}, not the one we sent"
            )));
        }
        // Checked before the key agreement: an unusable response costs none.
        let prf = suite::ike_prf(&chosen);
        if !nonce_fits(nr, prf) {
            return Err(Reason::Protocol(format!(
                "IKE_SA_INIT response with {}",
                nonce_misfit(nr, prf)
            )));
        }
        let shared = init
            .key_share
            .agree(peer_pub)
            .map_err(|e| Reason::Protocol(format!("bad KE payload: {e}")))?;
        let keys = Suite::derive(&chosen, &shared, &init.ni, nr, self.spi_i, spi_r, true)
            .map_err(|e| Reason::Protocol(e.to_string()))?;
        Ok((keys, nr.clone()))
    }
}

// ---- responder: IKE_SA_INIT (called by the endpoint, before an SA exists) ------------------------------------

/// What the endpoint does with an IKE_SA_INIT request.
#[derive(Debug)]
pub enum InitOutcome {
    /// A new half-open SA; its response is queued in it.
    Created(Box<IkeSa>),
    /// A stateless answer (NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD, COOKIE) and an event explaining it, if any.
    Refused(Transmit, Option<Reason>),
}

/// An IKE_SA_INIT request that passed every check that costs no key exchange: a proposal of ours, a KE payload
/// of the chosen group with a value valid for it, a nonce of legal length.
#[derive(Debug)]
pub struct ValidInit {
    header: Header,
    raw: Vec<u8>,
    payloads: Vec<Payload>,
    chosen: Chosen,
    group: u16,
    peer_public: Vec<u8>,
    ni: Vec<u8>,
}

impl ValidInit {
    /// The request as received.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }
}

impl IkeSa {
    /// Answers an IKE_SA_INIT request from `from` for the peer `cfg`: [`IkeSa::validate_init`], then
    /// [`IkeSa::answer_init`].
    pub fn respond_init(
        cfg: Arc<PeerConfig>,
        now: Instant,
        raw: &[u8],
        from: SocketAddr,
    ) -> Option<InitOutcome> {
        match IkeSa::validate_init(&cfg, raw, from) {
            Ok(v) => IkeSa::answer_init(cfg, now, v, from),
            Err(refusal) => refusal,
        }
    }

    /// Checks an IKE_SA_INIT request completely before any Diffie-Hellman work: the header, a proposal we
    /// accept, the KE payload's group and value, the nonce. `Err(None)`: drop it silently; `Err(Some(_))`:
    /// the stateless answer to send.
    pub fn validate_init(
        cfg: &PeerConfig,
        raw: &[u8],
        from: SocketAddr,
    ) -> Result<ValidInit, Option<InitOutcome>> {
        let parsed = message::parse(raw).map_err(|_| None)?;
        let h = parsed.header;
        if h.exchange != ExchangeType::IKE_SA_INIT
            || h.flags.response()
            || h.message_id != 0
            || h.spi_r != 0
        {
            return Err(None);
        }
        let refuse = |payloads: Vec<Payload>, reason: Option<Reason>| {
            Some(refusal(h, from, &payloads, reason))
        };
        let theirs = first!(parsed.payloads, Payload::Sa(x) => x).ok_or(None)?;
        let ke =
            first!(parsed.payloads, Payload::Ke { group, data } => (*group, data)).ok_or(None)?;
        let ni = first!(parsed.payloads, Payload::Nonce(x) => x).ok_or(None)?;
        let Some(chosen) = proposal::select(&cfg.ike_proposals, theirs)
            .filter(|c| c.spi.is_empty() && suite::ike_supported(c))
        else {
            let ours = proposal_text(&cfg.ike_proposals);
            return Err(refuse(
                vec![Payload::Notify(Notify::new(n::NO_PROPOSAL_CHOSEN, vec![]))],
                Some(Reason::NoProposalChosen {
                    ours,
                    theirs: describe_offer(theirs),
                }),
            ));
        };
        let group = chosen.dh.ok_or(None)?;
        if ke.0 != group {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-1.2
            //# If the initiator guesses wrong, the responder will respond with a Notify payload of type
            //# INVALID_KE_PAYLOAD indicating the selected group.
            return Err(refuse(
                vec![Payload::Notify(Notify::new(
                    n::INVALID_KE_PAYLOAD,
                    group.to_be_bytes().to_vec(),
                ))],
                None,
            ));
        }
        // The peer's value and nonce are checked before a key of ours is generated for them: a spoofed request
        // with a bad value must cost no Diffie-Hellman work.
        if suite::check_public(group, ke.1).is_err() || !nonce_fits(ni, suite::ike_prf(&chosen)) {
            return Err(refuse(
                vec![Payload::Notify(Notify::new(n::INVALID_SYNTAX, vec![]))],
                None,
            ));
        }
        Ok(ValidInit {
            header: h,
            raw: parsed.bytes.to_vec(),
            payloads: parsed.payloads.clone(),
            chosen,
            group,
            peer_public: ke.1.clone(),
            ni: ni.clone(),
        })
    }

    /// Answers a validated IKE_SA_INIT request: the key exchange, the keys, and a half-open SA holding the
    /// response. This is the expensive step.
    pub fn answer_init(
        cfg: Arc<PeerConfig>,
        now: Instant,
        v: ValidInit,
        from: SocketAddr,
    ) -> Option<InitOutcome> {
        let ValidInit {
            header: h,
            raw,
            payloads: request,
            chosen,
            group,
            peer_public,
            ni,
        } = v;
        let ks = KeyShare::generate(group).ok()?;
        let public = ks.public().to_vec();
        let shared = match ks.agree(&peer_public) {
            Ok(s) => s,
            Err(_) => {
                return Some(refusal(
                    h,
                    from,
                    &[Payload::Notify(Notify::new(n::INVALID_SYNTAX, vec![]))],
                    None,
                ))
            }
        };
        let mut sa = IkeSa::blank(cfg, false, h.spi_i, random_u64(), from, now);
        let nr = random_bytes(NONCE_LEN);
        sa.peer_next_id = 1;
        let keys = Suite::derive(&chosen, &shared, &ni, &nr, sa.spi_i, sa.spi_r, false).ok()?;
        let mut payloads = vec![
            Payload::Sa(vec![chosen.to_wire(ProtocolId::IKE, vec![])]),
            Payload::Ke {
                group,
                data: public,
            },
            Payload::Nonce(nr.clone()),
        ];
        payloads.extend(sa.nat_detection_payloads());
        //= https://www.rfc-editor.org/rfc/rfc7296#section-1.2
        //# The responder can also send a Certificate Request payload ([CERTREQ]) in its IKE_SA_INIT response
        payloads.extend(sa.certreq_payload());
        payloads.extend(sa.sig_hash_notify());
        sa.check_nat(&request, IKE_PORT, 0);
        if sa.cfg.udp_with_vmsecd && vendor::announces_udp_encap(&request) {
            // We answer with the ID only when the initiator announced it: a peer that did not gets nothing
            // private from us.
            payloads.push(vendor::udp_encap_payload());
        }
        if sa.cfg.fragment_size != 0 && announces_fragmentation(&request) {
            //= https://www.rfc-editor.org/rfc/rfc7383#section-2.3
            //# If the responder supports IKE fragmentation and is willing to use it, it includes a Notify payload
            //# of type IKEV2_FRAGMENTATION_SUPPORTED in the IKE_SA_INIT response message.
            payloads.push(Payload::Notify(Notify::new(
                n::IKEV2_FRAGMENTATION_SUPPORTED,
                vec![],
            )));
            sa.frag = true;
        }
        // The response goes out from port 500 whatever NAT detection found; the initiator moves to 4500.
        let resp = message::encode_plain(sa.header(ExchangeType::IKE_SA_INIT, true, 0), &payloads);
        sa.phase = Phase::Auth(Box::new(Handshake {
            keys,
            ni,
            nr,
            init_req: raw,
            init_resp: resp.clone(),
            peer_sig_hashes: peer_sig_hashes(&request),
        }));
        sa.transmits.push_back(Transmit {
            remote: from,
            local_port: IKE_PORT,
            data: resp,
        });
        Some(InitOutcome::Created(Box::new(sa)))
    }
}

/// A stateless answer to the IKE_SA_INIT request with header `h`.
pub(super) fn refusal(
    h: Header,
    from: SocketAddr,
    payloads: &[Payload],
    reason: Option<Reason>,
) -> InitOutcome {
    let mut hdr = h;
    hdr.flags = Flags(Flags::RESPONSE);
    let data = message::encode_plain(hdr, payloads);
    InitOutcome::Refused(
        Transmit {
            remote: from,
            local_port: IKE_PORT,
            data,
        },
        reason,
    )
}
