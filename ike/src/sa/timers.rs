//! When the SA must wake up, and what it does then: retransmission, liveness, lifetimes and rekeys.

use super::*;

impl IkeSa {
    /// When [`IkeSa::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let mut t = self.outstanding.as_ref().map(|o| o.deadline);
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        min(self.keepalive_due());
        if self.state == State::Established && !self.silent {
            min(self.expires_at());
        }
        if self.state == State::Established && self.silent {
            // A new IKE SA that lost a rekey collision (or may yet win one): no rekeys, no liveness checks.
            min(self.redundant_since.map(|t| t + REDUNDANT_GRACE));
        } else if self.state == State::Established && self.outstanding.is_none() {
            min(self.ike_rekey_at);
            min(self
                .children
                .iter()
                .filter(|c| !c.rekeyed)
                .map(|c| c.rekey_at)
                .min());
            let dpd = self.cfg.lifetimes.dpd_delay;
            if !dpd.is_zero() {
                min(Some(self.last_heard + dpd));
            }
            if self.uncovered_pair().is_some() {
                min(self.extra_child_from());
            }
        }
        if self.state == State::AwaitingAuth {
            // A half-open SA whose initiator went away (or never existed: a spoofed request).
            min(Some(self.last_heard + HALF_OPEN_TIMEOUT));
        }
        if self.state == State::Rekeyed {
            // A rekeyed one the peer never deletes is dropped after the retransmission budget.
            min(Some(self.last_heard + self.total_retransmit_time()));
        }
        t
    }

    /// When the IKE SA's hard lifetime ends, if it has one.
    pub(super) fn expires_at(&self) -> Option<Instant> {
        let life = self.cfg.lifetimes.ike_lifetime;
        (!life.is_zero())
            .then_some(self.established_at)
            .flatten()
            .map(|t| t + life)
    }

    /// When the next NAT keepalive is due, if we are behind a NAT.
    pub(super) fn keepalive_due(&self) -> Option<Instant> {
        let k = self.cfg.lifetimes.nat_keepalive;
        (self.state == State::Established && self.nat_local && !self.silent && !k.is_zero())
            .then(|| self.last_sent + k)
    }

    pub(super) fn total_retransmit_time(&self) -> Duration {
        (0..self.cfg.retransmit.tries)
            .map(|n| self.cfg.retransmit.timeout(n))
            .sum()
    }

    /// Retransmits, gives up, checks liveness and starts rekeys whose time has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = now;
        if self.keepalive_due().is_some_and(|t| now >= t) {
            //= https://www.rfc-editor.org/rfc/rfc3948#section-2.3
            //# The sender MUST use a one-octet-long payload with the value 0xFF.
            // It goes to the peer's port 4500 from ours, without the non-ESP marker.
            self.transmits.push_back(Transmit {
                remote: self.remote,
                local_port: NAT_T_PORT,
                data: vec![0xff],
            });
            self.last_sent = now;
        }
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.8
        //# When the lifetime of a security association expires, the security association MUST NOT be used.
        // A rekey that keeps failing (TEMPORARY_FAILURE, lost requests, the peer refusing it) ends here, even while
        // its request is still being retransmitted: the IKE SA and its Child SAs are closed at once and the daemon
        // sets up a new one from scratch. The delete goes out once, unanswered: while a request of ours is
        // outstanding the peer would not accept the next message ID anyway, and waiting would keep using the SA.
        if self.state == State::Established
            && !self.silent
            && self.expires_at().is_some_and(|t| now >= t)
        {
            self.send_delete_ike(now, Duration::ZERO);
            self.close(Reason::Expired);
            return;
        }
        if let Some(o) = &mut self.outstanding {
            if now >= o.deadline {
                //= https://www.rfc-editor.org/rfc/rfc7296#section-2.1
                //# the initiator MUST retransmit a request until it either receives a corresponding response or
                //# deems the IKE SA to have failed.
                if o.sent >= self.cfg.retransmit.tries {
                    // No usable IKE_SA_INIT response came: an error notification received meanwhile is the best
                    // explanation there is.
                    let reason = match self.init_error.take() {
                        Some(r) if self.state == State::InitSent => r,
                        _ => Reason::PeerDead,
                    };
                    self.close(reason);
                    return;
                }
                o.deadline = now + self.cfg.retransmit.timeout(o.sent);
                o.sent += 1;
                let datagrams = o.datagrams.clone();
                for d in datagrams {
                    self.push_transmit(d);
                }
            }
            return;
        }
        match self.state {
            State::AwaitingAuth if now >= self.last_heard + HALF_OPEN_TIMEOUT => {
                // Nobody authenticated: nothing to report about the peer, whose own SAs are untouched.
                self.silent = true;
                self.close(Reason::PeerDead);
            }
            State::Rekeyed if now >= self.last_heard + self.total_retransmit_time() => {
                // The peer never deleted the IKE SA it replaced; its Child SAs live on in the new one.
                self.close(Reason::Rekeyed);
            }
            // Its creator should have deleted it (RFC 7296 2.8.1) but did not: a peer that aborted its rekey when
            // our delete of the old SA overtook its response (charon does) never will.
            State::Established
                if self.silent
                    && self
                        .redundant_since
                        .is_some_and(|t| now >= t + REDUNDANT_GRACE) =>
            {
                self.send_delete_ike(now, Duration::ZERO);
            }
            // No rekeys and no liveness checks on a redundant SA.
            State::Established if self.silent => {}
            State::Established => {
                if self.ike_rekey_at.is_some_and(|t| now >= t) {
                    self.start_ike_rekey(now);
                    return;
                }
                if let Some(i) = self
                    .children
                    .iter()
                    .position(|c| !c.rekeyed && now >= c.rekey_at)
                {
                    self.start_child_rekey(now, i);
                    return;
                }
                if self.extra_child_from().is_some_and(|t| now >= t) {
                    if let Some(pair) = self.uncovered_pair() {
                        self.start_create_child(now, pair);
                        return;
                    }
                }
                let dpd = self.cfg.lifetimes.dpd_delay;
                if !dpd.is_zero() && now >= self.last_heard + dpd {
                    //= https://www.rfc-editor.org/rfc/rfc7296#section-1.4
                    //# An INFORMATIONAL request with no payloads (other than the empty Encrypted payload
                    //# required by the syntax) is commonly used as a check for liveness.
                    self.send_request(now, ExchangeType::INFORMATIONAL, vec![], Request::Liveness);
                }
            }
            _ => {}
        }
    }
}
