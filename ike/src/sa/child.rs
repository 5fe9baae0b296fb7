//! Child SAs after IKE_AUTH: CREATE_CHILD_SA in both roles, Child SA rekey, its collisions and the caps on
//! how many Child SAs a peer may make us hold.

use super::*;

impl IkeSa {
    /// Responder side of a Child SA: pick an ESP proposal, narrow the selectors.
    #[allow(clippy::type_complexity)]
    pub(super) fn negotiate_child(
        &self,
        payloads: &[Payload],
        pfs_allowed: bool,
    ) -> Result<(Child, Payload, Vec<TrafficSelector>, Vec<TrafficSelector>), (u16, Reason)> {
        let theirs = first!(payloads, Payload::Sa(x) => x.clone());
        let tsi = first!(payloads, Payload::TsI(t) => t.clone());
        let tsr = first!(payloads, Payload::TsR(t) => t.clone());
        let (Some(theirs), Some(tsi), Some(tsr)) = (theirs, tsi, tsr) else {
            return Err((
                n::INVALID_SYNTAX,
                Reason::Protocol("Child SA request lacks SA, TSi or TSr".into()),
            ));
        };
        let ours: Vec<ProposalSpec> = if pfs_allowed {
            self.cfg.esp_proposals.clone()
        } else {
            self.cfg
                .esp_proposals
                .iter()
                .map(ProposalSpec::without_dh)
                .collect()
        };
        let chosen = proposal::select(&ours, &theirs).and_then(|c| {
            let spi = <[u8; 4]>::try_from(&c.spi[..]).ok()?;
            suite::esp_transform(&c).map(|_| (c, u32::from_be_bytes(spi)))
        });
        let Some((chosen, spi_out)) = chosen else {
            return Err((
                n::NO_PROPOSAL_CHOSEN,
                Reason::NoProposalChosen {
                    ours: proposal_text(&self.cfg.esp_proposals),
                    theirs: describe_offer(&theirs),
                },
            ));
        };
        if tsi.len() > MAX_TS_PER_SIDE.max(self.cfg.remote_ts.len())
            || tsr.len() > MAX_TS_PER_SIDE.max(self.cfg.local_ts.len())
        {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.9
            //# If the responder's policy does not allow it to accept any part of the proposed Traffic Selectors,
            //# it responds with a TS_UNACCEPTABLE Notify message.
            return Err((
                n::TS_UNACCEPTABLE,
                Reason::TsUnacceptable(format!(
                    "peer proposed {} and {} traffic selectors, more than we accept (at most \
                     {MAX_TS_PER_SIDE} per side, or as many as we are configured for)",
                    tsi.len(),
                    tsr.len()
                )),
            ));
        }
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.9
        //# the responder is allowed to narrow the choices by selecting a subset of the traffic
        // Duplicates are left out with a set (the order of first appearance is kept).
        let narrow =
            |theirs: &[TrafficSelector], ours: &[TrafficSelector]| -> Vec<TrafficSelector> {
                let mut seen = std::collections::HashSet::new();
                let mut v = Vec::new();
                for o in ours {
                    for t in theirs {
                        if let Some(x) = o.intersect(t) {
                            if seen.insert(x) {
                                v.push(x);
                            }
                        }
                    }
                }
                v
            };
        let n_tsi = narrow(&tsi, &self.cfg.remote_ts);
        let n_tsr = narrow(&tsr, &self.cfg.local_ts);
        if n_tsi.is_empty() || n_tsr.is_empty() {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.9
            //# If the responder's policy does not allow it to accept any part of the proposed Traffic Selectors,
            //# it responds with a TS_UNACCEPTABLE Notify message.
            return Err((
                n::TS_UNACCEPTABLE,
                Reason::TsUnacceptable(format!(
                    "peer proposed {} === {}, we allow {} === {}",
                    untrusted(&ts_list(&tsi)),
                    untrusted(&ts_list(&tsr)),
                    ts_list(&self.cfg.remote_ts),
                    ts_list(&self.cfg.local_ts)
                )),
            ));
        }
        let spi_in = random_spi32();
        let sa_payload = Payload::Sa(vec![
            chosen.to_wire(ProtocolId::ESP, spi_in.to_be_bytes().to_vec())
        ]);
        let child = self.new_child(spi_in, spi_out, chosen, n_tsi.clone(), n_tsr.clone(), false);
        Ok((child, sa_payload, n_tsi, n_tsr))
    }
}

impl IkeSa {
    // ---- CREATE_CHILD_SA ---------------------------------------------------------------------------------------

    /// When we may ask for the Child SA of an uncovered subnet pair: at once as the IKE SA's initiator, after
    /// [`EXTRA_CHILD_GRACE`] as its responder.
    pub(super) fn extra_child_from(&self) -> Option<Instant> {
        let at = self.established_at?;
        Some(if self.initiator {
            at
        } else {
            at + EXTRA_CHILD_GRACE
        })
    }

    /// The first (local subnet, remote subnet) pair of our configuration that no Child SA touches and that we
    /// have not asked for on this IKE SA: a peer that insists on one Child SA per subnet pair narrowed the first
    /// Child SA to one pair, and each other pair needs its own. A pair that a Child SA covers only in part (the
    /// peer narrowed a range to its own subnets, as a `subnets = "libvirt"` host does) is not asked for again.
    pub(super) fn uncovered_pair(&self) -> Option<(TrafficSelector, TrafficSelector)> {
        // Called from poll_timeout, so on every turn of the daemon's loop: no allocation.
        if self.children.iter().all(|c| c.rekeyed) {
            return None;
        }
        let touches = |have: &[TrafficSelector], want: &TrafficSelector| {
            have.iter().any(|h| h.intersect(want).is_some())
        };
        for l in &self.cfg.local_ts {
            for r in &self.cfg.remote_ts {
                if l.ts_type() != r.ts_type() || self.tried_pairs.contains(&(*l, *r)) {
                    continue;
                }
                if !self
                    .children
                    .iter()
                    .filter(|c| !c.rekeyed)
                    .any(|c| touches(&c.ts_local, l) && touches(&c.ts_remote, r))
                {
                    return Some((*l, *r));
                }
            }
        }
        None
    }

    /// Asks for an additional Child SA for one subnet pair (CREATE_CHILD_SA without REKEY_SA).
    //= https://www.rfc-editor.org/rfc/rfc7296#section-1.3.1
    //# A Child SA may be created by sending a CREATE_CHILD_SA request.
    pub(super) fn start_create_child(
        &mut self,
        now: Instant,
        pair: (TrafficSelector, TrafficSelector),
    ) {
        self.tried_pairs.push(pair);
        let spi_in = random_spi32();
        let ni = random_bytes(NONCE_LEN);
        let (offered, ks) = self.child_offer(spi_in);
        //= https://www.rfc-editor.org/rfc/rfc7296#section-1.3.1
        //# HDR, SK {SA, Ni, [KEi], TSi, TSr} -->
        let mut payloads = vec![Payload::Sa(offered.clone()), Payload::Nonce(ni.clone())];
        if let Some(ks) = &ks {
            payloads.push(Payload::Ke {
                group: ks.group(),
                data: ks.public().to_vec(),
            });
        }
        payloads.push(Payload::TsI(vec![pair.0]));
        payloads.push(Payload::TsR(vec![pair.1]));
        self.send_request(
            now,
            ExchangeType::CREATE_CHILD_SA,
            payloads,
            Request::CreateChild {
                spi_in,
                offered,
                ni,
                ks: ks.map(Box::new),
            },
        );
    }

    /// The peer's answer to [`IkeSa::start_create_child`]: a new Child SA, or a refusal reported as a refused
    /// ChildDown (the IKE SA and its other Child SAs stay).
    pub(super) fn finish_create_child(
        &mut self,
        now: Instant,
        payloads: Vec<Payload>,
        spi_in: u32,
        offered: Vec<Proposal>,
        ni: Vec<u8>,
        ks: Option<Box<KeyShare>>,
    ) {
        let refused = IkeSa::child_refused;
        if let Some(t) = error_notify(&payloads) {
            let reason = match t {
                n::TS_UNACCEPTABLE => Reason::TsUnacceptable(
                    "peer refused an additional Child SA for a subnet pair the first one does not cover".into(),
                ),
                n::NO_PROPOSAL_CHOSEN => Reason::NoProposalChosen {
                    ours: proposal_text(&self.cfg.esp_proposals),
                    theirs: String::new(),
                },
                t => Reason::PeerError(n::name(t).into()),
            };
            refused(self, reason);
            return;
        }
        let Some(nr) = first!(payloads, Payload::Nonce(x) => x.clone()) else {
            refused(
                self,
                Reason::Protocol("CREATE_CHILD_SA answer lacks Nr".into()),
            );
            return;
        };
        let prf = self.keys().map(Suite::prf);
        if !nonce_fits(&nr, prf) {
            // The peer has installed its Child SA: deleted like any other we cannot use.
            refused(
                self,
                Reason::Protocol(format!(
                    "CREATE_CHILD_SA answer with {}",
                    nonce_misfit(&nr, prf)
                )),
            );
            self.delete_unusable_child(now, spi_in);
            return;
        }
        let Some(shared) = pfs_secret(ks.as_deref(), &payloads) else {
            refused(
                self,
                Reason::Protocol("CREATE_CHILD_SA answer lacks a usable KE payload".into()),
            );
            self.delete_unusable_child(now, spi_in);
            return;
        };
        let accepted = self
            .accept_child(&payloads, &offered, spi_in, ks.is_some())
            .and_then(|mut child| {
                child.rekey_at =
                    now + jittered(self.cfg.lifetimes.child_rekey, self.cfg.lifetimes.jitter);
                let info =
                    self.child_info(&child, shared.as_ref().map(|s| s.as_ref()), &ni, &nr, true)?;
                Ok((child, info))
            });
        match accepted {
            Ok((child, info)) => {
                self.children.push(child);
                self.events.push_back(Event::ChildUp(Box::new(info)));
            }
            Err(reason) => {
                refused(self, reason);
                self.delete_unusable_child(now, spi_in);
            }
        }
    }

    /// The peer answered our CREATE_CHILD_SA with a Child SA we cannot use (a proposal we did not offer, a bad
    /// key exchange...): it has installed it, so it is deleted like any other (RFC 7296 1.4.1), and never
    /// installed here.
    pub(super) fn delete_unusable_child(&mut self, now: Instant, spi_in: u32) {
        if self.outstanding.is_some() {
            return;
        }
        let d = Payload::Delete(Delete {
            protocol: ProtocolId::ESP,
            spis: vec![spi_in.to_be_bytes().to_vec()],
        });
        self.send_request(
            now,
            ExchangeType::INFORMATIONAL,
            vec![d],
            Request::DeleteChild { spi_in },
        );
    }

    /// Our ESP proposals for a new or rekeyed Child SA with inbound SPI `spi_in`, with PFS (a key share for the
    /// first group named) when the configured ESP proposal names a group.
    pub(super) fn child_offer(&self, spi_in: u32) -> (Vec<Proposal>, Option<KeyShare>) {
        let group = self
            .cfg
            .esp_proposals
            .first()
            .and_then(ProposalSpec::first_dh);
        let ks = group.and_then(|g| KeyShare::generate(g).ok());
        let offered = wire_proposals(&self.cfg.esp_proposals, &spi_in.to_be_bytes(), ks.is_some());
        (offered, ks)
    }

    pub(super) fn start_child_rekey(&mut self, now: Instant, i: usize) {
        let Some(old) = self.children.get(i).cloned() else {
            return;
        };
        let spi_in = random_spi32();
        let ni = random_bytes(NONCE_LEN);
        // PFS when the configured ESP proposal names a group; the first one is sent.
        let (offered, ks) = self.child_offer(spi_in);
        //= https://www.rfc-editor.org/rfc/rfc7296#section-1.3.3
        //# The SA being rekeyed is identified by the SPI field in the Notify payload; this is the SPI the exchange
        //# initiator would expect in inbound ESP or AH packets.
        let mut payloads = vec![
            Payload::Notify(Notify {
                protocol: ProtocolId::ESP.0,
                spi: old.spi_in.to_be_bytes().to_vec(),
                ntype: n::REKEY_SA,
                data: vec![],
            }),
            Payload::Sa(offered.clone()),
            Payload::Nonce(ni.clone()),
        ];
        if let Some(ks) = &ks {
            payloads.push(Payload::Ke {
                group: ks.group(),
                data: ks.public().to_vec(),
            });
        }
        payloads.push(Payload::TsI(old.ts_local.clone()));
        payloads.push(Payload::TsR(old.ts_remote.clone()));
        // Postpone this child's rekey so that a failure does not loop; the response resets it.
        if let Some(c) = self.children.get_mut(i) {
            c.rekey_at = now + self.cfg.lifetimes.child_rekey;
        }
        self.send_request(
            now,
            ExchangeType::CREATE_CHILD_SA,
            payloads,
            Request::RekeyChild(ChildRekey {
                old_spi_in: old.spi_in,
                spi_in,
                offered,
                ni,
                ks: ks.map(Box::new),
                collision: None,
            }),
        );
    }

    pub(super) fn finish_child_rekey(
        &mut self,
        now: Instant,
        payloads: Vec<Payload>,
        rekey: ChildRekey,
    ) {
        let ChildRekey {
            old_spi_in,
            spi_in,
            offered,
            ni,
            ks,
            collision,
        } = rekey;
        if error_notify(&payloads).is_some() {
            // TEMPORARY_FAILURE, CHILD_SA_NOT_FOUND after a collision the peer's exchange won, ...: try again a
            // little later (a Child SA the peer rekeyed meanwhile is marked rekeyed and is not retried).
            if let Some(c) = self.children.iter_mut().find(|c| c.spi_in == old_spi_in) {
                c.rekey_at = now + rekey_retry();
            }
            return;
        }
        let nr = first!(payloads, Payload::Nonce(x) => x.clone());
        let retry_later = |sa: &mut IkeSa| {
            if let Some(c) = sa.children.iter_mut().find(|c| c.spi_in == old_spi_in) {
                c.rekey_at = now + rekey_retry();
            }
        };
        // An answer we cannot use: the old Child SA stays, its rekey is tried again later, the refusal is
        // reported, and the peer's new one is deleted.
        let refuse = |sa: &mut IkeSa, reason: Reason| {
            sa.child_refused(reason);
            retry_later(sa);
            sa.delete_unusable_child(now, spi_in);
        };
        let Some(nr) = nr else {
            retry_later(self);
            self.delete_unusable_child(now, spi_in);
            return;
        };
        let prf = self.keys().map(Suite::prf);
        if !nonce_fits(&nr, prf) {
            let why = format!("CREATE_CHILD_SA answer with {}", nonce_misfit(&nr, prf));
            refuse(self, Reason::Protocol(why));
            return;
        }
        let accepted = pfs_secret(ks.as_deref(), &payloads)
            .ok_or_else(|| {
                Reason::Protocol("CREATE_CHILD_SA answer lacks a usable KE payload".into())
            })
            .and_then(|shared| {
                let child = self.accept_child(&payloads, &offered, spi_in, ks.is_some())?;
                Ok((child, shared))
            });
        let (mut child, shared) = match accepted {
            Ok(x) => x,
            Err(reason) => {
                refuse(self, reason);
                return;
            }
        };
        if let Some(c) = collision {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.8.1
            //# If redundant SAs are created through such a collision, the SA created with the lowest of the four
            //# nonces used in the two exchanges SHOULD be closed by the endpoint that created it.
            if lowest(&ni, &nr) < lowest(&c.ni, &c.nr) {
                // Ours is redundant: never installed, closed at once. The peer's new SA replaces the old one, and
                // the peer, its creator, deletes the old one.
                let d = Payload::Delete(Delete {
                    protocol: ProtocolId::ESP,
                    spis: vec![spi_in.to_be_bytes().to_vec()],
                });
                self.send_request(
                    now,
                    ExchangeType::INFORMATIONAL,
                    vec![d],
                    Request::DeleteChild { spi_in },
                );
                return;
            }
            // Ours survives; the peer closes its redundant one and we retire the old one as usual.
        }
        child.rekey_at = now + jittered(self.cfg.lifetimes.child_rekey, self.cfg.lifetimes.jitter);
        let info =
            match self.child_info(&child, shared.as_ref().map(|s| s.as_ref()), &ni, &nr, true) {
                Ok(info) => info,
                Err(reason) => {
                    refuse(self, reason);
                    return;
                }
            };
        self.children.push(child);
        if let Some(old) = self.children.iter_mut().find(|c| c.spi_in == old_spi_in) {
            old.rekeyed = true;
        }
        self.events.push_back(Event::ChildRekeyed {
            old_spi_in,
            new: Box::new(info),
            we_initiated: true,
        });
        // Make before break: the new SA is installed; now retire the old one.
        let d = Payload::Delete(Delete {
            protocol: ProtocolId::ESP,
            spis: vec![old_spi_in.to_be_bytes().to_vec()],
        });
        self.send_request(
            now,
            ExchangeType::INFORMATIONAL,
            vec![d],
            Request::DeleteChild { spi_in: old_spi_in },
        );
    }

    pub(super) fn respond_create_child(&mut self, now: Instant, id: u32, payloads: Vec<Payload>) {
        let rekey = payloads.iter().find_map(|p| match p {
            Payload::Notify(x) if x.ntype == n::REKEY_SA => {
                <[u8; 4]>::try_from(&x.spi[..]).ok().map(u32::from_be_bytes)
            }
            _ => None,
        });
        let is_ike_rekey = payloads.iter().any(
            |p| matches!(p, Payload::Sa(ps) if ps.iter().any(|x| x.protocol == ProtocolId::IKE)),
        );
        let temporary_failure = |sa: &mut IkeSa| {
            sa.send_response(
                ExchangeType::CREATE_CHILD_SA,
                id,
                vec![Payload::Notify(Notify::new(n::TEMPORARY_FAILURE, vec![]))],
            );
        };
        // Rate limits: every CREATE_CHILD_SA may cost a key exchange, and an IKE rekey leaves the old IKE SA
        // behind until its delete. A peer above them is asked to come back later, as after a collision.
        if !self.create_limit.take(now) || (is_ike_rekey && !self.rekey_limit.take(now)) {
            temporary_failure(self);
            return;
        }
        if is_ike_rekey {
            self.respond_ike_rekey(now, id, payloads);
            return;
        }
        let live = self.children.iter().filter(|c| !c.rekeyed).count();
        if rekey.is_none() && live >= MAX_CHILD_SAS {
            // RFC 7296 3.10.1 (paraphrased): NO_ADDITIONAL_SAS tells the initiator that the responder is unwilling
            // to accept any more Child SAs on this IKE SA.
            self.send_response(
                ExchangeType::CREATE_CHILD_SA,
                id,
                vec![Payload::Notify(Notify::new(n::NO_ADDITIONAL_SAS, vec![]))],
            );
            return;
        }
        if self.children.len() >= 2 * MAX_CHILD_SAS {
            // Rekeyed Child SAs whose delete the peer has not sent yet: it rekeys faster than it cleans up.
            temporary_failure(self);
            return;
        }
        if matches!(
            &self.outstanding,
            Some(Outstanding {
                what: Request::RekeyIke(_),
                ..
            })
        ) {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.25.2
            //# If a peer receives a request to create or rekey a Child SA when it is currently rekeying the IKE
            //# SA, it SHOULD reply with TEMPORARY_FAILURE.
            self.send_response(
                ExchangeType::CREATE_CHILD_SA,
                id,
                vec![Payload::Notify(Notify::new(n::TEMPORARY_FAILURE, vec![]))],
            );
            return;
        }
        let ni = first!(payloads, Payload::Nonce(x) => x.clone());
        let Some(ni) = ni else {
            self.send_response(
                ExchangeType::CREATE_CHILD_SA,
                id,
                vec![Payload::Notify(Notify::new(n::INVALID_SYNTAX, vec![]))],
            );
            return;
        };
        let old_index = rekey.and_then(|spi_out| {
            self.children
                .iter()
                .position(|c| c.spi_out == spi_out && !c.rekeyed)
        });
        let deleting = rekey.is_some_and(|spi_out| {
            self.children.iter().any(|c| {
                c.spi_out == spi_out
                    && matches!(&self.outstanding, Some(Outstanding { what: Request::DeleteChild { spi_in }, .. }) if *spi_in == c.spi_in)
            })
        });
        if deleting {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.25.1
            //# If a peer receives a request to rekey a Child SA that it is currently trying to close, it SHOULD
            //# reply with TEMPORARY_FAILURE.
            self.send_response(
                ExchangeType::CREATE_CHILD_SA,
                id,
                vec![Payload::Notify(Notify::new(n::TEMPORARY_FAILURE, vec![]))],
            );
            return;
        }
        if rekey.is_some() && old_index.is_none() {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.25
            //# the responder MUST reply with CHILD_SA_NOT_FOUND
            let spi = rekey.map(|s| s.to_be_bytes().to_vec()).unwrap_or_default();
            self.send_response(
                ExchangeType::CREATE_CHILD_SA,
                id,
                vec![Payload::Notify(Notify {
                    protocol: 3,
                    spi,
                    ntype: n::CHILD_SA_NOT_FOUND,
                    data: vec![],
                })],
            );
            return;
        }
        let peer_ke = first!(payloads, Payload::Ke { group, data } => (*group, data.clone()));
        let (mut child, sa_payload, tsi, tsr) =
            match self.negotiate_child(&payloads, peer_ke.is_some()) {
                Ok(x) => x,
                Err((notify, reason)) => {
                    self.send_response(
                        ExchangeType::CREATE_CHILD_SA,
                        id,
                        vec![Payload::Notify(Notify::new(notify, vec![]))],
                    );
                    self.child_refused(reason);
                    return;
                }
            };
        if !nonce_fits(&ni, self.keys().map(Suite::prf)) {
            self.send_response(
                ExchangeType::CREATE_CHILD_SA,
                id,
                vec![Payload::Notify(Notify::new(n::INVALID_SYNTAX, vec![]))],
            );
            return;
        }
        let nr = random_bytes(NONCE_LEN);
        let mut resp = vec![sa_payload, Payload::Nonce(nr.clone())];
        let mut shared = None;
        if let Some(g) = child.chosen.dh {
            let Some((group, pub_i)) = peer_ke.filter(|(group, _)| *group == g) else {
                //= https://www.rfc-editor.org/rfc/rfc7296#section-1.3
                //# the responder MUST reject the request and indicate its preferred Diffie-Hellman group in the
                //# INVALID_KE_PAYLOAD Notify payload.
                self.send_response(
                    ExchangeType::CREATE_CHILD_SA,
                    id,
                    vec![Payload::Notify(Notify::new(
                        n::INVALID_KE_PAYLOAD,
                        g.to_be_bytes().to_vec(),
                    ))],
                );
                return;
            };
            // The peer's value is checked before we spend a key generation on it.
            let ks =
                match suite::check_public(group, &pub_i).and_then(|()| KeyShare::generate(group)) {
                    Ok(ks) => ks,
                    Err(_) => {
                        self.send_response(
                            ExchangeType::CREATE_CHILD_SA,
                            id,
                            vec![Payload::Notify(Notify::new(n::INVALID_SYNTAX, vec![]))],
                        );
                        return;
                    }
                };
            resp.push(Payload::Ke {
                group,
                data: ks.public().to_vec(),
            });
            match ks.agree(&pub_i) {
                Ok(s) => shared = Some(s),
                Err(_) => {
                    self.send_response(
                        ExchangeType::CREATE_CHILD_SA,
                        id,
                        vec![Payload::Notify(Notify::new(n::INVALID_SYNTAX, vec![]))],
                    );
                    return;
                }
            }
        }
        child.rekey_at = now + jittered(self.cfg.lifetimes.child_rekey, self.cfg.lifetimes.jitter);
        let info =
            match self.child_info(&child, shared.as_ref().map(|s| s.as_ref()), &ni, &nr, false) {
                Ok(info) => info,
                Err(reason) => {
                    self.send_response(
                        ExchangeType::CREATE_CHILD_SA,
                        id,
                        vec![Payload::Notify(Notify::new(n::NO_PROPOSAL_CHOSEN, vec![]))],
                    );
                    self.child_refused(reason);
                    return;
                }
            };
        resp.push(Payload::TsI(tsi));
        resp.push(Payload::TsR(tsr));
        self.send_response(ExchangeType::CREATE_CHILD_SA, id, resp);
        self.children.push(child);
        match old_index.and_then(|i| self.children.get(i).map(|c| (i, c.spi_in))) {
            Some((i, old_spi_in)) => {
                if let Some(Outstanding {
                    what:
                        Request::RekeyChild(ChildRekey {
                            old_spi_in: ours,
                            collision,
                            ..
                        }),
                    ..
                }) = &mut self.outstanding
                {
                    if *ours == old_spi_in {
                        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.8.1
                        //# ... cannot yet know which of the exchanges will have the lowest nonce, so it will just note
                        //# the situation and respond as usual.
                        *collision = Some(ChildCollision {
                            ni: ni.clone(),
                            nr: nr.clone(),
                        });
                    }
                }
                if let Some(old) = self.children.get_mut(i) {
                    old.rekeyed = true;
                    // The initiator of the rekey deletes the old SA; if it never does, our own timer would rekey
                    // it again, so push that far out.
                    old.rekey_at = now + self.cfg.lifetimes.child_rekey;
                }
                self.events.push_back(Event::ChildRekeyed {
                    old_spi_in,
                    new: Box::new(info),
                    we_initiated: false,
                });
            }
            None => self.events.push_back(Event::ChildUp(Box::new(info))),
        }
    }
}
