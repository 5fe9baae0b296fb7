//! IKE SA rekey (RFC 7296 1.3.2, 2.18) in both roles, its collisions (2.8.2), and the hand-over of Child SAs to
//! the new IKE SA.

use super::*;

/// Why the answer to our IKE SA rekey gives us no new IKE SA.
#[derive(Debug)]
pub(super) enum RekeyAnswer {
    /// The peer refused (an error notification: TEMPORARY_FAILURE, NO_PROPOSAL_CHOSEN...); ours is tried again
    /// at the postponed time.
    Refused,
    /// The peer made an IKE SA we cannot use: its fault (misbehaving or incompatible).
    Unusable(UnusableRekey),
}

/// An IKE SA rekey answer we cannot use. The text is what the IkeDown reason says (as when it was a string).
#[derive(Debug, thiserror::Error)]
pub(super) enum UnusableRekey {
    /// No SA payload.
    #[error("no SA payload")]
    NoSa,
    /// A proposal we did not offer, or more than one.
    #[error(transparent)]
    Proposal(#[from] proposal::Mismatch),
    /// The new responder SPI is not 8 bytes.
    #[error("the SPI is not 8 bytes")]
    SpiLength,
    /// The new responder SPI is zero.
    #[error("zero SPI")]
    ZeroSpi,
    /// Another key exchange group than the one of our KE payload.
    #[error("it chose another key exchange group than the one we sent ({0})")]
    OtherGroup(&'static str),
    /// No nonce of legal length.
    #[error("no usable Nonce")]
    NoNonce,
    /// No KE payload of our group.
    #[error("no KE payload of our group")]
    NoKe,
    /// The key exchange or the derivation failed (a bad KE value).
    #[error(transparent)]
    Keys(#[from] suite::SuiteError),
    /// Ours, a bug: the IKE SA being rekeyed has no keys.
    #[error("the IKE SA has no keys")]
    NoKeys,
}

// ---- IKE SA rekey (RFC 7296 1.3.2, 2.18) and its collisions (2.8.2) ---------------------------------------------

impl IkeSa {
    /// Tells the SA, before it handles a datagram, whether the endpoint lets the peer hold one more IKE SA: a
    /// rekey the peer asks for is refused with TEMPORARY_FAILURE while not (the rekey limit holds each chain of
    /// rekeys alone, and each leaves the SA it replaced until the peer deletes it).
    pub(crate) fn set_rekey_room(&mut self, room: bool) {
        self.rekey_room = room;
    }

    pub(super) fn start_ike_rekey(&mut self, now: Instant) {
        // Postponed at once: a refusal or a lost peer must not make this loop; success replaces the SA anyway.
        self.ike_rekey_at = Some(now + rekey_retry());
        // The new SA keeps the group of the current one, which the peer chose from our proposals.
        let group = self.keys().and_then(|s| s.chosen.dh);
        let Some(ks) = group.and_then(|g| KeyShare::generate(g).ok()) else {
            return;
        };
        let spi = random_u64();
        let ni = random_bytes(NONCE_LEN);
        let offered = wire_proposals(&self.cfg.ike_proposals, &spi.to_be_bytes(), true);
        //= https://www.rfc-editor.org/rfc/rfc7296#section-1.3.2
        //# The CREATE_CHILD_SA request for rekeying an IKE SA is:
        //#
        //# Initiator                         Responder
        //# -------------------------------------------------------------------
        //# HDR, SK {SA, Ni, KEi} -->
        let payloads = vec![
            Payload::Sa(offered.clone()),
            Payload::Nonce(ni.clone()),
            Payload::Ke {
                group: ks.group(),
                data: ks.public().to_vec(),
            },
        ];
        self.send_request(
            now,
            ExchangeType::CREATE_CHILD_SA,
            payloads,
            Request::RekeyIke(IkeRekey {
                spi,
                offered,
                ni,
                ks: Box::new(ks),
                collision: None,
            }),
        );
    }

    /// The keys of the new IKE SA from a rekey response, or why there is none.
    pub(super) fn rekey_response_suite(
        &self,
        payloads: &[Payload],
        spi: u64,
        offered: &[Proposal],
        ni: &[u8],
        ks: KeyShare,
    ) -> Result<(Suite, u64, Vec<u8>), RekeyAnswer> {
        if error_notify(payloads).is_some() {
            return Err(RekeyAnswer::Refused);
        }
        self.usable_rekey_answer(payloads, spi, offered, ni, ks)
            .map_err(RekeyAnswer::Unusable)
    }

    /// [`IkeSa::rekey_response_suite`] for an answer that is not a refusal.
    fn usable_rekey_answer(
        &self,
        payloads: &[Payload],
        spi: u64,
        offered: &[Proposal],
        ni: &[u8],
        ks: KeyShare,
    ) -> Result<(Suite, u64, Vec<u8>), UnusableRekey> {
        let props = first!(payloads, Payload::Sa(props) => props).ok_or(UnusableRekey::NoSa)?;
        let chosen = proposal::check_response(offered, props)?;
        //= https://www.rfc-editor.org/rfc/rfc7296#section-1.3.2
        //# A new initiator SPI is supplied in the SPI field of the SA payload.
        // (and the responder's in its answer's)
        let spi_r = <[u8; 8]>::try_from(chosen.spi.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| UnusableRekey::SpiLength)?;
        if spi_r == 0 {
            return Err(UnusableRekey::ZeroSpi);
        }
        if chosen.dh != Some(ks.group()) {
            return Err(UnusableRekey::OtherGroup(proposal::dh_name(ks.group())));
        }
        let nr = first!(payloads, Payload::Nonce(x) => x.clone())
            .filter(|nr| nonce_fits(nr, suite::ike_prf(&chosen)))
            .ok_or(UnusableRekey::NoNonce)?;
        let ke = first!(payloads, Payload::Ke { group, data } => (*group, data.clone()))
            .filter(|ke| ke.0 == ks.group())
            .ok_or(UnusableRekey::NoKe)?;
        let shared = ks.agree(&ke.1)?;
        let suite = self
            .keys()
            .ok_or(UnusableRekey::NoKeys)?
            .derive_rekey(&chosen, &shared, ni, &nr, spi, spi_r, true)?;
        Ok((suite, spi_r, nr))
    }

    pub(super) fn finish_ike_rekey(
        &mut self,
        now: Instant,
        payloads: Vec<Payload>,
        rekey: IkeRekey,
    ) {
        let IkeRekey {
            spi,
            offered,
            ni,
            ks,
            collision,
        } = rekey;
        let (suite, spi_r, nr) = match self.rekey_response_suite(&payloads, spi, &offered, &ni, *ks)
        {
            Ok(x) => x,
            Err(why) => {
                // Refused (TEMPORARY_FAILURE, NO_PROPOSAL_CHOSEN, ...) or unusable: if the peer's own rekey of
                // this SA succeeded meanwhile, that one replaces it; a refusal is retried at the postponed time.
                if let Some(c) = collision {
                    self.hand_over(now, c.local_spi, c.spis);
                } else if let RekeyAnswer::Unusable(why) = why {
                    // The peer believes the new IKE SA exists (and may have moved its Child SAs there) while we
                    // cannot use it: both ends start afresh rather than disagree about which SA is current.
                    // (RFC 7296 2.21.3: after authentication, an unprocessable response leads to the IKE SA being
                    // deleted.)
                    self.events.push_back(Event::IkeDown {
                        peer: self.cfg.name.clone(),
                        reason: Reason::Protocol(format!("IKE SA rekey answer refused: {why}")),
                        unauthenticated: false,
                    });
                    self.down_reported = true;
                    self.send_delete_ike(now, Duration::ZERO);
                }
                return;
            }
        };
        let mut new = self.successor(now, true, spi, spi_r, suite);
        if let Some(c) = collision {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.8.1
            //# If redundant SAs are created through such a collision, the SA created with the lowest of the four
            //# nonces used in the two exchanges SHOULD be closed by the endpoint that created it.
            if lowest(&ni, &nr) < lowest(&c.ni, &c.nr) {
                // Ours is the redundant one: we close it; the peer, creator of the survivor, deletes the old SA.
                new.standing = Standing::Replaced;
                // The peer created its side of this SA while answering our request, but charon registers it only
                // after handling its own exchange's response, which crosses with this delete: a delete sent at
                // once is dropped ("IKE_SA ... waiting for delete") and only the retransmission 4 s later lands.
                new.send_delete_ike(now, RESPONDER_DELETE_DELAY);
                self.spawned.push(new);
                self.hand_over(now, c.local_spi, c.spis);
                return;
            }
            // Ours survives: the peer closes its redundant one, and we delete the old SA as after any rekey.
            self.doomed = Some((c.local_spi, now));
        }
        new.children = std::mem::take(&mut self.children);
        self.events.push_back(Event::IkeRekeyed {
            peer: self.cfg.name.clone(),
            old_spis: self.spis(),
            new_spis: new.spis(),
            initiator: true,
        });
        self.spawned.push(new);
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.8
        //# After the new equivalent IKE SA is created, the initiator deletes the old IKE SA, and the Delete
        //# payload to delete itself MUST be the last request sent over the old IKE SA.
        self.standing = Standing::Replaced;
        self.send_delete_ike(now, Duration::ZERO);
    }

    pub(super) fn respond_ike_rekey(&mut self, now: Instant, id: u32, payloads: Vec<Payload>) {
        let refuse = |sa: &mut IkeSa, notify: Notify| {
            sa.send_response(
                ExchangeType::CREATE_CHILD_SA,
                id,
                vec![Payload::Notify(notify)],
            );
        };
        let ours_pending = matches!(
            &self.outstanding,
            Some(Outstanding {
                what: Request::RekeyIke(_),
                ..
            })
        );
        let busy = self
            .outstanding
            .as_ref()
            .is_some_and(|o| !matches!(o.what, Request::Liveness | Request::RekeyIke(_)));
        let collided = matches!(
            &self.outstanding,
            Some(Outstanding {
                what: Request::RekeyIke(IkeRekey {
                    collision: Some(_),
                    ..
                }),
                ..
            })
        );
        if collided {
            // The peer rekeyed this SA already while ours is outstanding: the SA that made is noted as the
            // collision's, and only the answer to ours resolves it (it wins, or is found redundant). A second
            // rekey would overwrite that note and leave the first new SA contested for ever, with no timer (a
            // hostile peer never deletes it). This SA is being replaced one way or the other.
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.25.2
            //# If a peer receives a request to rekey an IKE SA that it is currently trying to close, it SHOULD
            //# reply with TEMPORARY_FAILURE.
            refuse(self, Notify::new(n::TEMPORARY_FAILURE, vec![]));
            return;
        }
        if !self.rekey_room {
            // The peer holds as many IKE SAs as the endpoint allows (see `set_rekey_room`): it deletes the ones
            // its rekeys replaced (or they expire), then asks again, as after the rekey rate limit.
            refuse(self, Notify::new(n::TEMPORARY_FAILURE, vec![]));
            return;
        }
        if busy {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.25.1
            //# If a peer receives a request to rekey the IKE SA, and it is currently, rekeying, or closing a
            //# Child SA of that IKE SA, it SHOULD reply with TEMPORARY_FAILURE.
            refuse(self, Notify::new(n::TEMPORARY_FAILURE, vec![]));
            return;
        }
        let theirs = first!(payloads, Payload::Sa(x) => x.clone());
        let ke = first!(payloads, Payload::Ke { group, data } => (*group, data.clone()));
        let ni = first!(payloads, Payload::Nonce(x) => x.clone());
        let (Some(theirs), Some(ke), Some(ni)) = (theirs, ke, ni) else {
            refuse(self, Notify::new(n::INVALID_SYNTAX, vec![]));
            return;
        };
        let old_prf = self.keys().and_then(Suite::prf_id);
        let Some(chosen) = proposal::select(&self.cfg.ike_proposals, &theirs).filter(|c| {
            c.spi.len() == 8
                && c.spi.iter().any(|b| *b != 0)
                && suite::ike_supported(c)
                && c.prf.map(|p| p.id) == old_prf
        }) else {
            refuse(self, Notify::new(n::NO_PROPOSAL_CHOSEN, vec![]));
            return;
        };
        let Some(group) = chosen.dh else {
            refuse(self, Notify::new(n::NO_PROPOSAL_CHOSEN, vec![]));
            return;
        };
        if ke.0 != group {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-1.3
            //# the responder MUST reject the request and indicate its preferred Diffie-Hellman group in the
            //# INVALID_KE_PAYLOAD Notify payload.
            refuse(
                self,
                Notify::new(n::INVALID_KE_PAYLOAD, group.to_be_bytes().to_vec()),
            );
            return;
        }
        if !nonce_fits(&ni, suite::ike_prf(&chosen)) || suite::check_public(group, &ke.1).is_err() {
            refuse(self, Notify::new(n::INVALID_SYNTAX, vec![]));
            return;
        }
        let Ok(ks) = KeyShare::generate(group) else {
            refuse(self, Notify::new(n::NO_PROPOSAL_CHOSEN, vec![]));
            return;
        };
        let public = ks.public().to_vec();
        let Ok(shared) = ks.agree(&ke.1) else {
            refuse(self, Notify::new(n::INVALID_SYNTAX, vec![]));
            return;
        };
        let Ok(spi_i) = <[u8; 8]>::try_from(&chosen.spi[..]).map(u64::from_be_bytes) else {
            refuse(self, Notify::new(n::NO_PROPOSAL_CHOSEN, vec![]));
            return;
        };
        let spi_r = random_u64();
        let nr = random_bytes(NONCE_LEN);
        let suite = match self
            .keys()
            .map(|s| s.derive_rekey(&chosen, &shared, &ni, &nr, spi_i, spi_r, false))
        {
            Some(Ok(s)) => s,
            _ => {
                refuse(self, Notify::new(n::NO_PROPOSAL_CHOSEN, vec![]));
                return;
            }
        };
        //= https://www.rfc-editor.org/rfc/rfc7296#section-1.3.2
        //# <-- HDR, SK {SA, Nr, KEr}
        self.send_response(
            ExchangeType::CREATE_CHILD_SA,
            id,
            vec![
                Payload::Sa(vec![
                    chosen.to_wire(ProtocolId::IKE, spi_r.to_be_bytes().to_vec())
                ]),
                Payload::Nonce(nr.clone()),
                Payload::Ke {
                    group,
                    data: public,
                },
            ],
        );
        let mut new = self.successor(now, false, spi_i, spi_r, suite);
        if ours_pending {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.8.1
            //# ... cannot yet know which of the exchanges will have the lowest nonce, so it will just note
            //# the situation and respond as usual.
            let c = IkeCollision {
                local_spi: new.local_spi(),
                spis: new.spis(),
                ni,
                nr,
            };
            if let Some(Outstanding {
                what: Request::RekeyIke(IkeRekey { collision, .. }),
                ..
            }) = &mut self.outstanding
            {
                *collision = Some(c);
            }
            // It stays without Child SAs and unreported unless it wins.
            new.standing = Standing::Contested {
                redundant_since: None,
            };
            self.spawned.push(new);
            return;
        }
        let new_spi = new.local_spi();
        let new_spis = new.spis();
        self.spawned.push(new);
        // A liveness check in flight is moot: the new SA proves the peer alive.
        self.outstanding = None;
        self.hand_over(now, new_spi, new_spis);
    }

    /// The IKE SA a rekey created: established, message IDs from zero, the old SA's path and options.
    pub(super) fn successor(
        &self,
        now: Instant,
        initiator: bool,
        spi_i: u64,
        spi_r: u64,
        suite: Suite,
    ) -> IkeSa {
        let mut sa = IkeSa::blank(self.cfg.clone(), initiator, spi_i, spi_r, self.remote, now);
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.18
        //# The new IKE SA MUST reset its message counters to 0.
        sa.next_id = 0;
        sa.peer_next_id = 0;
        sa.state = State::Established;
        sa.local_port = self.local_port;
        sa.nat = self.nat;
        sa.encap = self.encap;
        sa.nat_local = self.nat_local;
        sa.frag = self.frag;
        sa.phase = Phase::Keyed(Box::new(suite));
        sa.established_at = Some(now);
        let lt = self.cfg.lifetimes;
        sa.ike_rekey_at = Some(now + jittered(lt.ike_rekey, lt.jitter));
        sa.last_sent = self.last_sent;
        // The peer's allowance carries over: rekeying the IKE SA must not reset it.
        sa.create_limit = self.create_limit.clone();
        sa.rekey_limit = self.rekey_limit.clone();
        sa
    }

    /// This SA is replaced by the peer's rekey: its Child SAs go to the IKE SA filed under `target`, and it
    /// waits, replaced, for the peer (the rekey's initiator) to delete it.
    pub(super) fn hand_over(&mut self, now: Instant, target: u64, new_spis: (u64, u64)) {
        self.handoff = Some((target, std::mem::take(&mut self.children)));
        self.events.push_back(Event::IkeRekeyed {
            peer: self.cfg.name.clone(),
            old_spis: self.spis(),
            new_spis,
            initiator: false,
        });
        self.standing = Standing::Replaced;
        if self.state == State::Established {
            self.state = State::Rekeyed;
            self.replaced_at = Some(now);
        }
    }
}
