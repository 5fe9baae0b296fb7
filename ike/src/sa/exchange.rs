//! The exchange machinery: requests and responses, message IDs, protection and fragments, the response
//! cache and its resend limit, and dispatch of each exchange to its handler.

use super::*;

// ---- the generic exchange machinery ------------------------------------------------------------------------

impl IkeSa {
    pub(super) fn send_request(
        &mut self,
        now: Instant,
        exchange: ExchangeType,
        payloads: Vec<Payload>,
        what: Request,
    ) {
        self.send_request_after(now, Duration::ZERO, exchange, payloads, what);
    }

    /// Queues a request; with a non-zero `delay` its first transmission waits that long (on the retransmission
    /// timer), then it is retransmitted as usual.
    pub(super) fn send_request_after(
        &mut self,
        now: Instant,
        delay: Duration,
        exchange: ExchangeType,
        payloads: Vec<Payload>,
        what: Request,
    ) {
        let id = self.next_id;
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.2
        //# In the unlikely event that Message IDs grow too large to fit in 32 bits, the IKE SA MUST be closed or
        //# rekeyed.
        // The last ID is never sent: no message could follow it (4 billion requests of ours on one IKE SA).
        let Some(next) = id.checked_add(1) else {
            self.close(Reason::Protocol(
                "the IKE SA has used up its message IDs".into(),
            ));
            return;
        };
        self.next_id = next;
        let header = self.header(exchange, false, id);
        let Some(datagrams) = self.protect(header, &payloads) else {
            return;
        };
        let (sent, deadline) = if delay.is_zero() {
            for d in &datagrams {
                self.push_transmit(d.clone());
            }
            (1, now + self.cfg.retransmit.timeout(0))
        } else {
            // handle_timeout sends it at the deadline as transmission number 1.
            (0, now + delay)
        };
        self.outstanding = Some(Outstanding {
            id,
            datagrams,
            sent,
            deadline,
            what,
        });
    }

    pub(super) fn send_response(
        &mut self,
        exchange: ExchangeType,
        id: u32,
        payloads: Vec<Payload>,
    ) {
        let header = self.header(exchange, true, id);
        let Some(datagrams) = self.protect(header, &payloads) else {
            return;
        };
        for d in &datagrams {
            self.push_transmit(d.clone());
        }
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.1
        //# The responder MUST remember each response until it receives a request whose sequence number is larger
        //# than or equal to the sequence number in the response plus its window size.
        self.last_response = Some((id, datagrams));
        // Saturating: after the peer's request with the last ID the SA is deleted (`dispatch_request`), and
        // a wrap to 0 would have taken the peer's oldest requests afresh meanwhile.
        self.peer_next_id = id.saturating_add(1);
    }

    /// Encrypts a message, as fragments if it is too big for the path and both sides support that.
    pub(super) fn protect(&self, header: Header, payloads: &[Payload]) -> Option<Vec<Vec<u8>>> {
        let suite = self.keys()?;
        Some(suite.protect_fragmented(header, payloads, self.frag, self.max_message_len()))
    }

    /// The largest IKE message that fits in `fragment_size` once IP and UDP headers (and the non-ESP marker on
    /// port 4500) are added.
    pub(super) fn max_message_len(&self) -> usize {
        let ip = if self.remote.is_ipv4() { 20 } else { 40 };
        let marker = if self.local_port == NAT_T_PORT { 4 } else { 0 };
        usize::from(self.cfg.fragment_size).saturating_sub(ip + 8 + marker)
    }

    /// Handles an IKE message for this SA (the non-ESP marker already removed).
    pub fn handle(&mut self, now: Instant, data: &[u8], from: SocketAddr, local_port: u16) {
        self.clock = now;
        self.rx_port = local_port;
        if self.state == State::Closed {
            return;
        }
        let Ok(parsed) = message::parse(data) else {
            return;
        };
        let h = parsed.header;
        // The sender's I flag must be the opposite of ours: it tells which side originally initiated.
        if h.flags.initiator() == self.initiator {
            return;
        }
        if let Some(f) = parsed.encrypted.and_then(|e| e.fragment) {
            self.handle_fragment(now, &parsed, f, from);
            return;
        }
        if h.flags.response() {
            self.handle_response(now, parsed, local_port, from);
        } else {
            self.handle_request(now, parsed, from);
        }
    }

    pub(super) fn decrypt(&self, parsed: &Parsed<'_>) -> Option<Vec<Payload>> {
        let enc = parsed.encrypted?;
        let suite = self.keys()?;
        //= https://www.rfc-editor.org/rfc/rfc7296#section-3.14
        //# if the integrity check fails, the message MUST be discarded
        suite.unprotect(parsed.bytes, &enc).ok()
    }

    pub(super) fn handle_response(
        &mut self,
        now: Instant,
        parsed: Parsed<'_>,
        local_port: u16,
        from: SocketAddr,
    ) {
        let Some(o) = &self.outstanding else { return };
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.2
        //# the Message ID is used to match up requests and responses
        if parsed.header.message_id != o.id {
            return;
        }
        if parsed.header.exchange == ExchangeType::IKE_SA_INIT {
            if self.state != State::InitSent {
                return;
            }
            let payloads = parsed.payloads.clone();
            let raw = parsed.bytes.to_vec();
            let header = parsed.header;
            self.handle_init_response(now, payloads, &header, &raw, local_port);
            return;
        }
        let Some(payloads) = self.decrypt(&parsed) else {
            return;
        };
        self.dispatch_response(now, payloads, from);
    }

    /// An Encrypted Fragment payload (RFC 7383): checked, kept, and once all are in, processed as the message.
    pub(super) fn handle_fragment(
        &mut self,
        now: Instant,
        parsed: &Parsed<'_>,
        f: Fragment,
        from: SocketAddr,
    ) {
        // Fragments are only valid on an SA that negotiated them.
        if !self.frag {
            return;
        }
        let h = parsed.header;
        let (id, response) = (h.message_id, h.flags.response());
        if response {
            if self.outstanding.as_ref().map(|o| o.id) != Some(id) {
                return;
            }
        } else {
            if matches!(self.state, State::InitSent | State::AuthSent) {
                // Our IKE_SA_INIT or IKE_AUTH is outstanding: the peer has no request to make yet (one would be
                // answered INVALID_SYNTAX), and the response's slot is in use: an SA not yet authenticated holds
                // one reassembly at most.
                return;
            }
            if let Some((last, _)) = &self.last_response {
                if id == *last {
                    //= https://www.rfc-editor.org/rfc/rfc7383#section-2.6.1
                    // A retransmitted fragmented request is answered with every (cached) fragment of the response,
                    // once per retransmission: on its first fragment, after that fragment's ICV verified (and at
                    // most once per RESEND_INTERVAL, as below in handle_request).
                    if f.number == 1
                        && self.decrypt_fragment(parsed).is_some()
                        && self.resend_allowed(now)
                    {
                        self.resend_last_response();
                    }
                    return;
                }
            }
            if id != self.peer_next_id {
                return;
            }
        }
        //= https://www.rfc-editor.org/rfc/rfc7383#section-2.6
        // Each fragment's ICV is verified before it is stored, so forged fragments cannot spoil a reassembly.
        let Some(plain) = self.decrypt_fragment(parsed) else {
            return;
        };
        let Some(enc) = parsed.encrypted else { return };
        let key = (id, response);
        // Requests and responses each have their slot: both directions' exchanges can be under way at once.
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.3
        //# An IKE endpoint MUST be prepared to accept and process a request while it has a request outstanding
        //# in order to avoid a deadlock in this situation.
        let slot = if response {
            &mut self.reassembly_response
        } else {
            &mut self.reassembly_request
        };
        if slot.as_ref().map(|r| r.key) != Some(key) {
            match Reassembly::new(key, f.total) {
                Ok(r) => *slot = Some(r),
                Err(_) => return,
            }
        }
        let Some(r) = slot.as_mut() else {
            return;
        };
        let Ok(Some((first, whole))) = r.add(f.number, f.total, enc.inner_next, plain) else {
            return;
        };
        *slot = None;
        let payloads = match message::parse_chain(first, &whole, 0) {
            Ok((payloads, None)) => payloads,
            _ => return,
        };
        if response {
            self.dispatch_response(now, payloads, from);
        } else {
            self.dispatch_request(now, h, payloads, from);
        }
    }

    pub(super) fn decrypt_fragment(
        &self,
        parsed: &Parsed<'_>,
    ) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        let enc = parsed.encrypted?;
        self.keys()?.unprotect_fragment(parsed.bytes, &enc).ok()
    }

    /// A verified response to our outstanding request.
    pub(super) fn dispatch_response(
        &mut self,
        now: Instant,
        payloads: Vec<Payload>,
        from: SocketAddr,
    ) {
        let Some(o) = self.outstanding.take() else {
            return;
        };
        self.heard(now, from);
        // An answer that refuses nothing shows the peer holds the IKE SA (one still waiting for our IKE_AUTH
        // response answers a request with INVALID_SYNTAX).
        if !payloads
            .iter()
            .any(|p| matches!(p, Payload::Notify(x) if n::is_error(x.ntype)))
        {
            self.peer_confirmed = true;
        }
        match o.what {
            Request::Init => {}
            Request::Auth { offered, spi_in } => {
                self.handle_auth_response(now, payloads, offered, spi_in)
            }
            Request::Liveness => {}
            Request::DeleteIke => self.close(Reason::DeletedByUs),
            Request::DeleteChild { spi_in } => {
                if let Some(i) = self.children.iter().position(|c| c.spi_in == spi_in) {
                    let c = self.children.remove(i);
                    let reason = if c.rekeyed {
                        Reason::Rekeyed
                    } else {
                        Reason::DeletedByUs
                    };
                    self.child_down(&c, reason);
                }
            }
            Request::RekeyChild(rekey) => self.finish_child_rekey(now, payloads, rekey),
            Request::CreateChild {
                spi_in,
                offered,
                ni,
                ks,
            } => self.finish_create_child(now, payloads, spi_in, offered, ni, ks),
            Request::RekeyIke(rekey) => self.finish_ike_rekey(now, payloads, rekey),
        }
    }

    /// True (and the time noted) if the cached response may be sent again now (see [`RESEND_INTERVAL`]).
    pub(super) fn resend_allowed(&mut self, now: Instant) -> bool {
        if self
            .last_resend
            .is_some_and(|t| now.saturating_duration_since(t) < RESEND_INTERVAL)
        {
            return false;
        }
        self.last_resend = Some(now);
        true
    }

    /// Sends every datagram of the cached response again.
    pub(super) fn resend_last_response(&mut self) {
        let datagrams = self
            .last_response
            .as_ref()
            .map(|(_, d)| d.clone())
            .unwrap_or_default();
        for d in datagrams {
            self.push_transmit(d);
        }
    }

    pub(super) fn heard(&mut self, now: Instant, from: SocketAddr) {
        self.last_heard = now;
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.23
        //# ... if the IP address or port of the other end changed, and NAT was detected, update the address
        if self.nat && from != self.remote && from.port() != IKE_PORT {
            self.remote = from;
        }
    }

    pub(super) fn handle_request(&mut self, now: Instant, parsed: Parsed<'_>, from: SocketAddr) {
        let id = parsed.header.message_id;
        if self.state == State::AwaitingAuth && parsed.header.exchange == ExchangeType::IKE_SA_INIT
        {
            // A retransmitted IKE_SA_INIT request: answer with the same response.
            if let Phase::Auth(hs) = &self.phase {
                if parsed.bytes == &hs.init_req[..] {
                    self.transmits.push_back(Transmit {
                        remote: from,
                        local_port: IKE_PORT,
                        data: hs.init_resp.clone(),
                    });
                }
            }
            return;
        }
        if let Some((last, _)) = &self.last_response {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.1
            //# If a responder receives a retransmitted request, it MUST retransmit its response
            // Within the spirit of that MUST, retransmissions are answered at most once per RESEND_INTERVAL: the
            // peer's own retransmissions are far slower, only a flood of replays is held back.
            if id == *last {
                if parsed.encrypted.is_some()
                    && self.decrypt(&parsed).is_some()
                    && self.resend_allowed(now)
                {
                    self.resend_last_response();
                }
                return;
            }
        }
        if id != self.peer_next_id {
            return;
        }
        let Some(payloads) = self.decrypt(&parsed) else {
            return;
        };
        self.dispatch_request(now, parsed.header, payloads, from);
    }

    /// A verified request with the Message ID we expect next.
    pub(super) fn dispatch_request(
        &mut self,
        now: Instant,
        header: Header,
        payloads: Vec<Payload>,
        from: SocketAddr,
    ) {
        let id = header.message_id;
        // Only a message that authenticated may move the peer's address.
        if self.state == State::AwaitingAuth {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.23
            //# an IPsec endpoint that discovers a NAT between it and its correspondent MUST send all subsequent
            //# traffic from port 4500
            // An initiator may also move to 4500 without a NAT (strongSwan does whenever both announce NAT-T, and
            // always with `encap = yes`): the answer must then come from our 4500, with the non-ESP marker, or
            // it lands on the initiator's 4500 socket as ESP and is dropped. ESP itself stays raw unless a NAT
            // was detected (`self.nat`).
            if self.rx_port == NAT_T_PORT {
                self.local_port = NAT_T_PORT;
                self.remote = from;
            } else if from.port() == NAT_T_PORT {
                self.remote = from;
            }
        } else {
            self.heard(now, from);
        }
        let exchange = header.exchange;
        if self.state == State::Established {
            // A request after IKE_AUTH: the peer holds the IKE SA established.
            self.peer_confirmed = true;
        }
        match (self.state, exchange) {
            (State::AwaitingAuth, ExchangeType::IKE_AUTH) => self.respond_auth(now, id, payloads),
            (
                State::Established | State::Deleting | State::Rekeyed,
                ExchangeType::INFORMATIONAL,
            ) => self.respond_informational(now, id, payloads),
            (State::Established, ExchangeType::CREATE_CHILD_SA) => {
                self.respond_create_child(now, id, payloads)
            }
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.25.2
            //# If a peer receives a request to rekey an IKE SA that it is currently trying to close, it SHOULD
            //# reply with TEMPORARY_FAILURE.
            (State::Deleting | State::Rekeyed, ExchangeType::CREATE_CHILD_SA) => {
                self.send_response(
                    exchange,
                    id,
                    vec![Payload::Notify(Notify::new(n::TEMPORARY_FAILURE, vec![]))],
                );
            }
            _ => {
                self.send_response(
                    exchange,
                    id,
                    vec![Payload::Notify(Notify::new(n::INVALID_SYNTAX, vec![]))],
                );
            }
        }
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.2
        //# In the unlikely event that Message IDs grow too large to fit in 32 bits, the IKE SA MUST be closed or
        //# rekeyed.
        // The peer can send no request after this one (it takes hours of liveness checks to get here).
        if id == u32::MAX && self.state == State::Established {
            self.send_delete_ike(now, Duration::ZERO);
        }
    }
}
