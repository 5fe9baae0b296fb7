//! Every timing rule of an IKE SA in one place: its timing constants, and one table of timers (which, and when
//! each is due) that both [`IkeSa::poll_timeout`] and [`IkeSa::handle_timeout`] read, so the two cannot drift:
//! a timer the first reports is one the second acts on, and the other way round (named timers in one table, as
//! quinn-proto's `connection/timer.rs`).

use super::*;

/// How long the redundant IKE SA of a rekey collision waits for its creator's delete before deleting it itself.
pub(super) const REDUNDANT_GRACE: Duration = Duration::from_secs(10);

/// How long the responder of an IKE SA leaves the initiator to ask for the Child SAs of subnet pairs the first one
/// does not cover, before it asks itself (so that both sides rarely ask for the same pair).
pub(super) const EXTRA_CHILD_GRACE: Duration = Duration::from_secs(3);

/// How long a responder that refused the Child SA in IKE_AUTH waits before deleting the IKE SA.
pub(super) const RESPONDER_DELETE_DELAY: Duration = Duration::from_millis(200);

/// How long a half-open responder SA (IKE_SA_INIT answered, no IKE_AUTH yet) is kept: strongSwan's
/// `half_open_timeout` default. A genuine initiator sends IKE_AUTH within a round trip, and its retransmissions
/// (4, 7.2, 13 s) fall inside it; each half-open SA holds keys and up to two IKE_SA_INIT messages, and anyone who
/// can send from a peer's address can make one, so it must not wait out the whole retransmission budget.
pub const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// The cached response to a retransmitted request is sent again at most once per this interval per IKE SA: a
/// peer (or anyone replaying its datagrams) repeating a request as fast as it can would otherwise have every
/// datagram of the response (all its fragments) sent for each copy. A genuine peer retransmits after a second
/// or more (RFC 7296 2.4 leaves the timers to the implementation, 0.5 s at the least in charon).
pub const RESEND_INTERVAL: Duration = Duration::from_millis(100);

/// CREATE_CHILD_SA requests (new Child SAs and rekeys of either kind) a peer may make in a burst on one IKE SA
/// and its successors, then one per [`CREATE_CHILD_INTERVAL`]; beyond that it gets TEMPORARY_FAILURE and
/// retries later. Each may cost a key exchange.
pub const CREATE_CHILD_BURST: u32 = 16;
/// See [`CREATE_CHILD_BURST`].
pub const CREATE_CHILD_INTERVAL: Duration = Duration::from_secs(2);
/// IKE SA rekeys a peer may make in a burst, then one per [`IKE_REKEY_INTERVAL`]: each leaves the replaced IKE
/// SA behind until its delete, so a storm would pile them up.
pub const IKE_REKEY_BURST: u32 = 4;
/// See [`IKE_REKEY_BURST`].
pub const IKE_REKEY_INTERVAL: Duration = Duration::from_secs(30);

/// How long to wait before trying a rekey again after the peer refused it (TEMPORARY_FAILURE or a collision).
pub(super) fn rekey_retry() -> Duration {
    jittered(Duration::from_secs(15), Duration::from_secs(10))
}

/// Subtracts a random part of `jitter` from `d`.
pub(super) fn jittered(d: Duration, jitter: Duration) -> Duration {
    let mut b = [0u8; 4];
    suite::fill_random(&mut b);
    let frac = u32::from_ne_bytes(b) as f64 / u32::MAX as f64;
    d.saturating_sub(jitter.min(d / 2).mul_f64(frac))
}

/// The timers of an IKE SA, in the order [`IkeSa::handle_timeout`] serves them when several are due at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Timer {
    /// A NAT keepalive to the peer (RFC 3948), when we are behind a NAT.
    Keepalive,
    /// The IKE SA's hard lifetime.
    Expiry,
    /// Our outstanding request: retransmit it, or give up on the peer. While it is outstanding, none of the
    /// timers after it is armed: they would each send a request.
    Retransmit,
    /// A half-open responder SA that never saw IKE_AUTH ([`HALF_OPEN_TIMEOUT`]).
    HalfOpen,
    /// A rekeyed IKE SA whose peer never deleted it: dropped the retransmission budget after it was replaced.
    RekeyedDrop,
    /// The redundant IKE SA of a rekey collision whose creator did not delete it ([`REDUNDANT_GRACE`]).
    RedundantDelete,
    /// The IKE SA's own rekey.
    IkeRekey,
    /// The earliest rekey of a Child SA not yet rekeyed.
    ChildRekey,
    /// A Child SA for a subnet pair no Child SA covers yet ([`EXTRA_CHILD_GRACE`]).
    ExtraChild,
    /// A liveness check (dead peer detection) after the peer has been quiet for `dpd_delay`.
    Liveness,
}

/// How many kinds of [`Timer`] there are.
const TIMERS: usize = 10;

impl IkeSa {
    /// Every timer and when it is due, `None` where it is not armed. The one place that says when each timer
    /// runs: [`IkeSa::poll_timeout`] takes the earliest, [`IkeSa::handle_timeout`] serves the due ones in order.
    pub(super) fn timers(&self) -> [(Timer, Option<Instant>); TIMERS] {
        if self.state == State::Closed {
            return [
                Timer::Keepalive,
                Timer::Expiry,
                Timer::Retransmit,
                Timer::HalfOpen,
                Timer::RekeyedDrop,
                Timer::RedundantDelete,
                Timer::IkeRekey,
                Timer::ChildRekey,
                Timer::ExtraChild,
                Timer::Liveness,
            ]
            .map(|t| (t, None));
        }
        let established = self.state == State::Established;
        let idle = self.outstanding.is_none();
        // Only the peer's current IKE SA rekeys, checks liveness and expires: a contested one waits for the
        // collision's outcome, a replaced one for its delete.
        let current = self.standing == Standing::Current;
        let active = idle && established && current;
        let redundant_since = match self.standing {
            Standing::Contested { redundant_since } => redundant_since,
            _ => None,
        };
        let dpd = self.cfg.lifetimes.dpd_delay;
        [
            (Timer::Keepalive, self.keepalive_due()),
            (
                Timer::Expiry,
                (established && current)
                    .then(|| self.expires_at())
                    .flatten(),
            ),
            (
                Timer::Retransmit,
                self.outstanding.as_ref().map(|o| o.deadline),
            ),
            (
                Timer::HalfOpen,
                (idle && self.state == State::AwaitingAuth)
                    .then(|| self.last_heard + HALF_OPEN_TIMEOUT),
            ),
            // From when it was replaced, not from when the peer was last heard on it: a peer that kept sending
            // liveness checks on the SAs its rekeys replaced (one per IKE_REKEY_INTERVAL) kept them all.
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.8
            //# After the new equivalent IKE SA is created, the initiator deletes the old IKE SA, and the Delete
            //# payload to delete itself MUST be the last request sent over the old IKE SA.
            (
                Timer::RekeyedDrop,
                (idle && self.state == State::Rekeyed)
                    .then(|| self.replaced_at.map(|t| t + self.total_retransmit_time()))
                    .flatten(),
            ),
            (
                Timer::RedundantDelete,
                (idle && established)
                    .then(|| redundant_since.map(|t| t + REDUNDANT_GRACE))
                    .flatten(),
            ),
            (
                Timer::IkeRekey,
                active.then_some(self.ike_rekey_at).flatten(),
            ),
            (
                Timer::ChildRekey,
                active
                    .then(|| {
                        self.children
                            .iter()
                            .filter(|c| !c.rekeyed)
                            .map(|c| c.rekey_at)
                            .min()
                    })
                    .flatten(),
            ),
            (
                Timer::ExtraChild,
                (active && self.uncovered_pair().is_some())
                    .then(|| self.extra_child_from())
                    .flatten(),
            ),
            (
                Timer::Liveness,
                (active && !dpd.is_zero()).then(|| self.last_heard + dpd),
            ),
        ]
    }

    /// When [`IkeSa::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers().iter().filter_map(|(_, at)| *at).min()
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
        (self.state == State::Established
            && self.nat_local
            && self.standing == Standing::Current
            && !k.is_zero())
        .then(|| self.last_sent + k)
    }

    pub(super) fn total_retransmit_time(&self) -> Duration {
        (0..self.cfg.retransmit.tries)
            .map(|n| self.cfg.retransmit.timeout(n))
            .sum()
    }

    /// Tells an initiator whose IKE SA is not up yet whether the endpoint holds another established IKE SA with
    /// the peer: if its retransmissions run out, it then ends without reporting the peer dead (see `fire`).
    pub(crate) fn set_peer_up_elsewhere(&mut self, yes: bool) {
        self.peer_up_elsewhere = yes;
    }

    /// Checks the peer's liveness on this established IKE SA now (an empty INFORMATIONAL request, RFC 7296
    /// 1.4), unless a request of ours is outstanding already: its answer, or its running out of
    /// retransmissions, tells as much.
    pub(crate) fn check_liveness(&mut self, now: Instant) {
        self.clock = now;
        if self.state == State::Established
            && self.standing == Standing::Current
            && self.outstanding.is_none()
        {
            self.send_request(now, ExchangeType::INFORMATIONAL, vec![], Request::Liveness);
        }
    }

    /// True while a request of ours on this SA waits for its answer.
    pub(crate) fn awaits_answer(&self) -> bool {
        self.outstanding.is_some()
    }

    /// Retransmits, gives up, checks liveness and starts rekeys whose time has come: serves the due timers of
    /// [`IkeSa::timers`] in order, until one of them starts or ends something.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.clock = now;
        for (timer, at) in self.timers() {
            if at.is_some_and(|t| now >= t) && self.fire(timer, now).is_break() {
                return;
            }
        }
    }

    /// Acts on one due timer; `Break` when nothing after it may run in this call.
    fn fire(&mut self, timer: Timer, now: Instant) -> std::ops::ControlFlow<()> {
        use std::ops::ControlFlow::{Break, Continue};
        match timer {
            Timer::Keepalive => {
                //= https://www.rfc-editor.org/rfc/rfc3948#section-2.3
                //# The sender MUST use a one-octet-long payload with the value 0xFF.
                // It goes to the peer's port 4500 from ours, without the non-ESP marker.
                self.transmits.push_back(Transmit {
                    remote: self.remote,
                    local_port: NAT_T_PORT,
                    data: vec![0xff],
                });
                self.last_sent = now;
                Continue(())
            }
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.8
            //# When the lifetime of a security association expires, the security association MUST NOT be used.
            // A rekey that keeps failing (TEMPORARY_FAILURE, lost requests, the peer refusing it) ends here, even
            // while its request is still being retransmitted: the IKE SA and its Child SAs are closed at once and the
            // daemon sets up a new one from scratch. The delete goes out once, unanswered: while a request of ours is
            // outstanding the peer would not accept the next message ID anyway, and waiting would keep using the SA.
            Timer::Expiry => {
                self.send_delete_ike(now, Duration::ZERO);
                self.close(Reason::Expired);
                Break(())
            }
            Timer::Retransmit => {
                let Some(o) = &mut self.outstanding else {
                    return Break(());
                };
                //= https://www.rfc-editor.org/rfc/rfc7296#section-2.1
                //# the initiator MUST retransmit a request until it either receives a corresponding response or
                //# deems the IKE SA to have failed.
                if o.sent >= self.cfg.retransmit.tries {
                    // No usable IKE_SA_INIT response came: an error notification received meanwhile is the best
                    // explanation there is.
                    let reason = match &mut self.phase {
                        Phase::Init(init) if self.state == State::InitSent => init.error.take(),
                        _ => None,
                    };
                    // An unanswered delete of our IKE SA ends it as our delete, not as a dead peer: a peer that
                    // took the delete forgets the IKE SA as it answers, so when that answer is lost, our
                    // retransmissions reach no SA, and a receiver stays silent to those (2.21.4, below). Reporting
                    // it as PeerDead had the daemon back off and re-initiate to a peer whose other IKE SA is up
                    // (the duplicate deleted after a simultaneous start, ike/tests/mesh.rs with 5% loss). strongSwan
                    // likewise just destroys it ("proper IKE_SA delete failed, peer not responding").
                    //= https://www.rfc-editor.org/rfc/rfc7296#section-2.21.4
                    //# If a node receives a message on UDP port 500 or 4500 outside the context of an IKE SA
                    //# known to it (and the message is not a request to start an IKE SA), this may be the result
                    //# of a recent crash of the node.
                    let reason = match &o.what {
                        Request::DeleteIke => Some(Reason::DeletedByUs),
                        _ => reason,
                    };
                    let reason = reason.unwrap_or(Reason::PeerDead);
                    // Our IKE SA never came up, but the peer set up another one with us meanwhile, which is up:
                    // the peer is alive and this attempt is moot. Its requests went unanswered because the peer
                    // no longer knows it (a responder keeps a half-open SA HALF_OPEN_TIMEOUT, 30 s, and our
                    // IKE_AUTH lost four times in a row is sent for the fifth time at 47 s). Reported, it read
                    // as a dead peer (one of 9,900 IKE SAs in ike/tests/mesh.rs at 5% loss) and had the daemon
                    // back off from a peer whose IKE SA is up; so it ends unreported, and the endpoint checks
                    // the other SA's liveness instead, which reports the peer dead if it is.
                    //= https://www.rfc-editor.org/rfc/rfc7296#section-2.4
                    //# Receipt of a fresh cryptographically protected message on an IKE SA or any of its Child
                    //# SAs ensures liveness of the IKE SA and all of its Child SAs.
                    if self.peer_up_elsewhere
                        && matches!(self.state, State::InitSent | State::AuthSent)
                    {
                        self.end(reason, false);
                        return Break(());
                    }
                    self.close(reason);
                    return Break(());
                }
                o.deadline = now + self.cfg.retransmit.timeout(o.sent);
                o.sent += 1;
                let datagrams = o.datagrams.clone();
                for d in datagrams {
                    self.push_transmit(d);
                }
                Break(())
            }
            Timer::HalfOpen => {
                // Nobody authenticated: nothing to report about the peer, whose own SAs are untouched.
                self.end(Reason::PeerDead, false);
                Break(())
            }
            Timer::RekeyedDrop => {
                // The peer never deleted the IKE SA it replaced; its Child SAs live on in the new one.
                self.close(Reason::Rekeyed);
                Break(())
            }
            // Its creator should have deleted it (RFC 7296 2.8.1) but did not: a peer that aborted its rekey when
            // our delete of the old SA overtook its response (charon does) never will.
            Timer::RedundantDelete => {
                self.send_delete_ike(now, Duration::ZERO);
                Break(())
            }
            Timer::IkeRekey => {
                self.start_ike_rekey(now);
                Break(())
            }
            Timer::ChildRekey => {
                match self
                    .children
                    .iter()
                    .position(|c| !c.rekeyed && now >= c.rekey_at)
                {
                    Some(i) => {
                        self.start_child_rekey(now, i);
                        Break(())
                    }
                    None => Continue(()),
                }
            }
            Timer::ExtraChild => match self.uncovered_pair() {
                Some(pair) => {
                    self.start_create_child(now, pair);
                    Break(())
                }
                None => Continue(()),
            },
            //= https://www.rfc-editor.org/rfc/rfc7296#section-1.4
            //# An INFORMATIONAL request with no payloads (other than the empty Encrypted payload
            //# required by the syntax) is commonly used as a check for liveness.
            Timer::Liveness => {
                self.send_request(now, ExchangeType::INFORMATIONAL, vec![], Request::Liveness);
                Break(())
            }
        }
    }
}
