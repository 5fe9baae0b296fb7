//! One IKE SA and its Child SAs, in either role: a sans-IO state machine.
//!
//! Drive it like quinn-proto's `Connection`: feed received messages with [`IkeSa::handle`], call
//! [`IkeSa::handle_timeout`] when [`IkeSa::poll_timeout`] says, and drain [`IkeSa::poll_transmit`] and
//! [`IkeSa::poll_event`] after each call. Nothing here reads a clock: `now` is always an argument.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{display_id, AuthMethod, PeerConfig};
use crate::crypto::signature as sig;
use crate::crypto::x509;
use crate::event::{ChildSaInfo, Event, Reason, Transmit};
use crate::fragment::Reassembly;
use crate::message::{
    self, Delete, ExchangeType, Flags, Fragment, Header, Id, Notify, Parsed, Payload, Proposal,
    ProtocolId, TrafficSelector, IKE_VERSION,
};
use crate::notify as n;
use crate::proposal::{self, Chosen, ProposalSpec};
use crate::ratelimit::TokenBucket;
use crate::suite::{self, KeyShare, Suite};
use crate::text::untrusted;

/// The first payload of a kind, mapped: `first!(payloads, Payload::Nonce(x) => x.clone())`.
macro_rules! first {
    ($payloads:expr, $pat:pat => $val:expr) => {
        $payloads.iter().find_map(|p| match p {
            $pat => Some($val),
            _ => None,
        })
    };
}

/// IKE's well-known port.
pub const IKE_PORT: u16 = 500;
/// The NAT traversal port.
pub const NAT_T_PORT: u16 = 4500;

/// How long the redundant IKE SA of a rekey collision waits for its creator's delete before deleting it itself.
const REDUNDANT_GRACE: Duration = Duration::from_secs(10);

/// How long the responder of an IKE SA leaves the initiator to ask for the Child SAs of subnet pairs the first one
/// does not cover, before it asks itself (so that both sides rarely ask for the same pair).
const EXTRA_CHILD_GRACE: Duration = Duration::from_secs(3);

/// How long a responder that refused the Child SA in IKE_AUTH waits before deleting the IKE SA.
const RESPONDER_DELETE_DELAY: Duration = Duration::from_millis(200);

/// How long a half-open responder SA (IKE_SA_INIT answered, no IKE_AUTH yet) is kept: strongSwan's
/// `half_open_timeout` default. A genuine initiator sends IKE_AUTH within a round trip, and its retransmissions
/// (4, 7.2, 13 s) fall inside it; each half-open SA holds keys and up to two IKE_SA_INIT messages, and anyone who
/// can send from a peer's address can make one, so it must not wait out the whole retransmission budget.
pub const HALF_OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Traffic selectors at most per side (TSi, TSr) of a Child SA request or answer, or as many as we are configured
/// with for that side if more; beyond, TS_UNACCEPTABLE. vmsecd sends one per configured subnet (its peer's
/// configuration mirrors ours); thousands from a peer would cost a narrowing of ours x theirs and a Child SA as
/// large.
pub const MAX_TS_PER_SIDE: usize = 16;

/// The cached response to a retransmitted request is sent again at most once per this interval per IKE SA: a
/// peer (or anyone replaying its datagrams) repeating a request as fast as it can would otherwise have every
/// datagram of the response (all its fragments) sent for each copy. A genuine peer retransmits after a second
/// or more (RFC 7296 2.4 leaves the timers to the implementation, 0.5 s at the least in charon).
pub const RESEND_INTERVAL: Duration = Duration::from_millis(100);

/// Child SAs one IKE SA carries at most (not counting replaced ones whose delete is under way); a request for
/// more is answered NO_ADDITIONAL_SAS. vmsecd itself makes one per subnet pair.
pub const MAX_CHILD_SAS: usize = 16;

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

/// Accepted nonce lengths.
//= https://www.rfc-editor.org/rfc/rfc7296#section-3.9
//# The size of the Nonce Data MUST be between 16 and 256 octets, inclusive.
pub const NONCE_LEN_RANGE: std::ops::RangeInclusive<usize> = 16..=256;

/// Where the SA is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Initiator: IKE_SA_INIT sent.
    InitSent,
    /// Initiator: IKE_AUTH sent.
    AuthSent,
    /// Responder: IKE_SA_INIT answered, waiting for IKE_AUTH.
    AwaitingAuth,
    /// Authenticated.
    Established,
    /// Our delete of the IKE SA is outstanding.
    Deleting,
    /// Replaced by a rekey the peer initiated: waiting for the peer to delete it.
    Rekeyed,
    /// Gone; the driver drops it.
    Closed,
}

/// What an outstanding request of ours was for.
#[derive(Debug)]
enum Request {
    Init,
    Auth {
        offered: Vec<Proposal>,
        spi_in: u32,
    },
    Liveness,
    DeleteIke,
    DeleteChild {
        spi_in: u32,
    },
    RekeyChild {
        old_spi_in: u32,
        spi_in: u32,
        offered: Vec<Proposal>,
        ni: Vec<u8>,
        ks: Option<Box<KeyShare>>,
        /// The peer rekeyed the same Child SA meanwhile (RFC 7296 2.8.1).
        collision: Option<ChildCollision>,
    },
    /// An additional Child SA for one (local subnet, remote subnet) pair no Child SA covers yet.
    CreateChild {
        spi_in: u32,
        offered: Vec<Proposal>,
        ni: Vec<u8>,
        ks: Option<Box<KeyShare>>,
    },
    RekeyIke {
        /// Our SPI in the new IKE SA (we are its initiator).
        spi: u64,
        offered: Vec<Proposal>,
        ni: Vec<u8>,
        ks: Box<KeyShare>,
        /// The peer rekeyed this IKE SA meanwhile (RFC 7296 2.8.2).
        collision: Option<IkeCollision>,
    },
}

/// The Child SA the peer created when it rekeyed the one we were rekeying.
#[derive(Debug)]
struct ChildCollision {
    ni: Vec<u8>,
    nr: Vec<u8>,
}

/// The IKE SA the peer created when it rekeyed the one we were rekeying.
#[derive(Debug)]
struct IkeCollision {
    /// Our SPI in it (the endpoint files it under this).
    local_spi: u64,
    spis: (u64, u64),
    ni: Vec<u8>,
    nr: Vec<u8>,
}

/// The lower of an exchange's two nonces (byte-wise; a prefix is lower).
fn lowest<'a>(ni: &'a [u8], nr: &'a [u8]) -> &'a [u8] {
    ni.min(nr)
}

/// How long to wait before trying a rekey again after the peer refused it (TEMPORARY_FAILURE or a collision).
fn rekey_retry() -> Duration {
    jittered(Duration::from_secs(15), Duration::from_secs(10))
}

#[derive(Debug)]
struct Outstanding {
    id: u32,
    datagrams: Vec<Vec<u8>>,
    sent: u32,
    deadline: Instant,
    what: Request,
}

/// A Child SA as the IKE SA tracks it.
#[derive(Debug, Clone)]
pub(crate) struct Child {
    spi_in: u32,
    spi_out: u32,
    chosen: Chosen,
    ts_local: Vec<TrafficSelector>,
    ts_remote: Vec<TrafficSelector>,
    rekey_at: Instant,
    /// A rekey replaced it: delete it once the peer has the new one (we sent or answered the delete).
    rekeyed: bool,
}

/// One IKE SA.
pub struct IkeSa {
    cfg: Arc<PeerConfig>,
    initiator: bool,
    spi_i: u64,
    spi_r: u64,
    state: State,
    remote: SocketAddr,
    local_port: u16,
    nat: bool,
    suite: Option<Suite>,
    ni: Vec<u8>,
    nr: Vec<u8>,
    init_req: Vec<u8>,
    init_resp: Vec<u8>,
    key_share: Option<KeyShare>,
    cookie: Option<Vec<u8>>,
    next_id: u32,
    outstanding: Option<Outstanding>,
    peer_next_id: u32,
    last_response: Option<(u32, Vec<Vec<u8>>)>,
    /// When the cached response was last sent again for a retransmitted request (see [`RESEND_INTERVAL`]).
    last_resend: Option<Instant>,
    /// An error notification in an IKE_SA_INIT response, reported (unauthenticated) but not acted on while a
    /// usable response may still come (see [`IkeSa::unprotected_init_error`]).
    init_error: Option<Reason>,
    children: Vec<Child>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    last_heard: Instant,
    established_at: Option<Instant>,
    ike_rekey_at: Option<Instant>,
    init_tries: u32,
    /// The IkeDown event went out already (a refused Child SA is reported at once, before the delete exchange
    /// that follows): closing must not report the SA a second time.
    down_reported: bool,
    /// Superseded by a rekey (the old SA) or redundant (the loser of a rekey collision): it carries no Child
    /// SA, its closing reports nothing and status does not show it.
    silent: bool,
    /// New IKE SAs a rekey created, for the endpoint to file under their SPI.
    spawned: Vec<IkeSa>,
    /// Child SAs for the endpoint to move to the IKE SA filed under this SPI (the winner of a collision).
    handoff: Option<(u64, Vec<Child>)>,
    /// The IKE SA filed under this SPI lost a rekey collision, as of this instant: its creator must delete it.
    doomed: Option<(u64, Instant)>,
    /// Set on a redundant IKE SA (see `doomed`): when it was found redundant.
    redundant_since: Option<Instant>,
    /// Our NAT_DETECTION_DESTINATION_IP did not match: we are behind a NAT and keep its mapping alive.
    nat_local: bool,
    /// Both sides announced IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383).
    frag: bool,
    /// Fragments of a message being received.
    reassembly: Option<Reassembly>,
    /// The `now` of the call being processed.
    clock: Instant,
    /// When we last sent something to the peer (for NAT keepalives).
    last_sent: Instant,
    /// The hash algorithms of the peer's SIGNATURE_HASH_ALGORITHMS notification (RFC 7427 4), if it sent one.
    peer_sig_hashes: Option<Vec<u16>>,
    /// (local subnet, remote subnet) pairs we asked an additional Child SA for on this IKE SA: each once.
    tried_pairs: Vec<(TrafficSelector, TrafficSelector)>,
    /// The peer's CREATE_CHILD_SA requests (inherited by the successor of an IKE rekey).
    create_limit: TokenBucket,
    /// The peer's IKE SA rekeys (inherited likewise).
    rekey_limit: TokenBucket,
    /// Where the peer was when the SA was made (the key of a half-open SA's retransmission lookup).
    origin: SocketAddr,
}

impl std::fmt::Debug for IkeSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IkeSa")
            .field("peer", &self.cfg.name)
            .field("spi_i", &format_args!("{:016x}", self.spi_i))
            .field("spi_r", &format_args!("{:016x}", self.spi_r))
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// A snapshot for `vmsecd status`.
#[derive(Debug, Clone)]
pub struct SaStatus {
    /// State.
    pub state: State,
    /// SPIs.
    pub spis: (u64, u64),
    /// We initiated.
    pub initiator: bool,
    /// Negotiated IKE algorithms.
    pub algorithms: Option<String>,
    /// When it was established.
    pub established_at: Option<Instant>,
    /// When the IKE SA is due for rekeying.
    pub rekey_at: Option<Instant>,
    /// Remote address.
    pub remote: SocketAddr,
    /// Port 4500 in use.
    pub nat: bool,
    /// Child SAs: (spi_in, spi_out, algorithms, rekey time).
    pub children: Vec<(u32, u32, String, Instant)>,
}

fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    suite::fill_random(&mut v);
    v
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    suite::fill_random(&mut b);
    u64::from_ne_bytes(b) | 1
}

fn random_spi32() -> u32 {
    let mut b = [0u8; 4];
    suite::fill_random(&mut b);
    // SPIs 1-255 are reserved by IANA; stay clear of them.
    u32::from_ne_bytes(b) | 0x100
}

/// Subtracts a random part of `jitter` from `d`.
fn jittered(d: Duration, jitter: Duration) -> Duration {
    let mut b = [0u8; 4];
    suite::fill_random(&mut b);
    let frac = u32::from_ne_bytes(b) as f64 / u32::MAX as f64;
    d.saturating_sub(jitter.min(d / 2).mul_f64(frac))
}

//= https://www.rfc-editor.org/rfc/rfc7296#section-2.10
//# Nonces used in IKEv2 MUST be randomly chosen, MUST be at least 128 bits in size, and MUST be at least half
//# the key size of the negotiated pseudorandom function (PRF).
const NONCE_LEN: usize = 32;

impl IkeSa {
    /// Starts an IKE SA towards the configured peer: queues the IKE_SA_INIT request.
    pub fn initiate(cfg: Arc<PeerConfig>, now: Instant) -> IkeSa {
        let remote = SocketAddr::new(cfg.remote_addr, cfg.remote_port);
        let mut sa = IkeSa::blank(cfg, true, random_u64(), 0, remote, now);
        sa.send_init(now, None);
        sa
    }

    fn blank(
        cfg: Arc<PeerConfig>,
        initiator: bool,
        spi_i: u64,
        spi_r: u64,
        remote: SocketAddr,
        now: Instant,
    ) -> IkeSa {
        IkeSa {
            cfg,
            initiator,
            spi_i,
            spi_r,
            state: if initiator {
                State::InitSent
            } else {
                State::AwaitingAuth
            },
            remote,
            local_port: IKE_PORT,
            nat: false,
            suite: None,
            ni: Vec::new(),
            nr: Vec::new(),
            init_req: Vec::new(),
            init_resp: Vec::new(),
            key_share: None,
            cookie: None,
            next_id: 0,
            outstanding: None,
            peer_next_id: 0,
            last_response: None,
            last_resend: None,
            init_error: None,
            children: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            last_heard: now,
            established_at: None,
            ike_rekey_at: None,
            init_tries: 0,
            down_reported: false,
            silent: false,
            spawned: Vec::new(),
            handoff: None,
            doomed: None,
            redundant_since: None,
            nat_local: false,
            frag: false,
            reassembly: None,
            clock: now,
            last_sent: now,
            peer_sig_hashes: None,
            tried_pairs: Vec::new(),
            create_limit: TokenBucket::new(CREATE_CHILD_BURST, CREATE_CHILD_INTERVAL),
            rekey_limit: TokenBucket::new(IKE_REKEY_BURST, IKE_REKEY_INTERVAL),
            origin: remote,
        }
    }

    /// Our SPI: the key the endpoint files this SA under.
    pub fn local_spi(&self) -> u64 {
        if self.initiator {
            self.spi_i
        } else {
            self.spi_r
        }
    }

    /// Both SPIs, initiator's first.
    pub fn spis(&self) -> (u64, u64) {
        (self.spi_i, self.spi_r)
    }

    /// The peer's configuration.
    pub fn config(&self) -> &Arc<PeerConfig> {
        &self.cfg
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// True if we initiated this IKE SA.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }

    /// The `now` of the last call that drove this SA.
    pub(crate) fn clock(&self) -> Instant {
        self.clock
    }

    /// The address and port the SA was made with (for a responder, the IKE_SA_INIT request's source).
    pub(crate) fn remote_at_init(&self) -> SocketAddr {
        self.origin
    }

    /// True for a responder SA whose initiator has not authenticated yet (IKE_SA_INIT answered, no valid
    /// IKE_AUTH): anyone able to send from the peer's address can make one, so it is not the peer's SA.
    pub fn is_half_open(&self) -> bool {
        !self.initiator && self.state == State::AwaitingAuth
    }

    /// True for an IKE SA a rekey replaced (or the redundant one of a rekey collision): it lingers only until
    /// its delete completes, carries no Child SA and is left out of status displays.
    pub fn is_superseded(&self) -> bool {
        self.silent
    }

    /// The IKE SAs a rekey created since the last call: the endpoint files them under their local SPI.
    pub(crate) fn take_spawned(&mut self) -> Vec<IkeSa> {
        std::mem::take(&mut self.spawned)
    }

    /// Child SAs to move to another IKE SA (by its local SPI), after a rekey collision this SA lost.
    pub(crate) fn take_handoff(&mut self) -> Option<(u64, Vec<Child>)> {
        self.handoff.take()
    }

    /// Takes over the Child SAs of the IKE SA it replaced (it won a rekey collision).
    pub(crate) fn adopt(&mut self, children: Vec<Child>) {
        self.children.extend(children);
        self.silent = false;
    }

    /// An IKE SA (by its local SPI) that lost a rekey collision we resolved, and when.
    pub(crate) fn take_doomed(&mut self) -> Option<(u64, Instant)> {
        self.doomed.take()
    }

    /// This SA lost a rekey collision: its creator deletes it, or we do after a grace period.
    pub(crate) fn mark_redundant(&mut self, now: Instant) {
        if self.silent && self.redundant_since.is_none() {
            self.redundant_since = Some(now);
        }
    }

    /// A snapshot for status displays.
    pub fn status(&self) -> SaStatus {
        SaStatus {
            state: self.state,
            spis: (self.spi_i, self.spi_r),
            initiator: self.initiator,
            algorithms: self.suite.as_ref().map(|s| s.chosen.describe()),
            established_at: self.established_at,
            rekey_at: self.ike_rekey_at,
            remote: self.remote,
            nat: self.nat,
            children: self
                .children
                .iter()
                .filter(|c| !c.rekeyed)
                .map(|c| (c.spi_in, c.spi_out, c.chosen.describe(), c.rekey_at))
                .collect(),
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

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
    fn expires_at(&self) -> Option<Instant> {
        let life = self.cfg.lifetimes.ike_lifetime;
        (!life.is_zero())
            .then_some(self.established_at)
            .flatten()
            .map(|t| t + life)
    }

    /// When the next NAT keepalive is due, if we are behind a NAT.
    fn keepalive_due(&self) -> Option<Instant> {
        let k = self.cfg.lifetimes.nat_keepalive;
        (self.state == State::Established && self.nat_local && !self.silent && !k.is_zero())
            .then(|| self.last_sent + k)
    }

    fn total_retransmit_time(&self) -> Duration {
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

    /// Asks for the Child SA whose inbound SPI is `spi_in` to be rekeyed at the next timeout, whatever its
    /// lifetime says; false if this IKE SA holds no such Child SA still in use. For the datapath, when the
    /// Child SA's outbound sequence numbers run low (RFC 4303 3.3.3).
    pub fn rekey_child_now(&mut self, now: Instant, spi_in: u32) -> bool {
        match self
            .children
            .iter_mut()
            .find(|c| c.spi_in == spi_in && !c.rekeyed)
        {
            Some(c) => {
                c.rekey_at = c.rekey_at.min(now);
                true
            }
            None => false,
        }
    }

    /// Deletes the IKE SA (and with it every Child SA): sends INFORMATIONAL with a Delete payload.
    pub fn delete(&mut self, now: Instant) {
        self.clock = now;
        self.abandon_rekey();
        match self.state {
            State::Established => self.send_delete_ike(now, Duration::ZERO),
            State::Rekeyed => self.close(Reason::Rekeyed),
            State::Deleting | State::Closed => {}
            _ => self.close(Reason::DeletedByUs),
        }
    }

    fn close(&mut self, reason: Reason) {
        if self.state == State::Closed {
            return;
        }
        for c in self.children.drain(..) {
            self.events.push_back(Event::ChildDown {
                peer: self.cfg.name.clone(),
                spi_in: c.spi_in,
                spi_out: c.spi_out,
                reason: reason.clone(),
            });
        }
        if !self.down_reported && !self.silent {
            // Our IKE SA failing before the peer authenticated: what made it fail (a plaintext IKE_SA_INIT response,
            // an IKE_AUTH response whose AUTH did not verify) may come from anyone on the path. A peer that never
            // answered (PeerDead) is no one's word, and our own delete is ours.
            let unauthenticated = self.initiator
                && matches!(self.state, State::InitSent | State::AuthSent)
                && !matches!(reason, Reason::PeerDead | Reason::DeletedByUs);
            self.events.push_back(Event::IkeDown {
                peer: self.cfg.name.clone(),
                reason,
                unauthenticated,
            });
        }
        self.state = State::Closed;
        self.abandon_rekey();
        self.outstanding = None;
    }

    /// Before an outstanding IKE SA rekey is abandoned: if it had collided with the peer's, the SA we created
    /// for the peer's request will never be resolved, so it goes the way of a redundant one.
    fn abandon_rekey(&mut self) {
        if let Some(Outstanding {
            what: Request::RekeyIke {
                collision: Some(c), ..
            },
            ..
        }) = &self.outstanding
        {
            self.doomed = Some((c.local_spi, self.clock));
        }
    }

    fn push_transmit(&mut self, data: Vec<u8>) {
        self.last_sent = self.clock;
        let data = if self.local_port == NAT_T_PORT {
            //= https://www.rfc-editor.org/rfc/rfc3948#section-2.2
            //# The Non-ESP Marker is 4 bytes of zero aligning with the SPI field of an ESP packet.
            let mut v = Vec::with_capacity(data.len() + 4);
            v.extend_from_slice(&[0; 4]);
            v.extend_from_slice(&data);
            v
        } else {
            data
        };
        self.transmits.push_back(Transmit {
            remote: self.remote,
            local_port: self.local_port,
            data,
        });
    }

    fn header(&self, exchange: ExchangeType, response: bool, id: u32) -> Header {
        let mut flags = 0;
        if self.initiator {
            flags |= Flags::INITIATOR;
        }
        if response {
            flags |= Flags::RESPONSE;
        }
        Header {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            next_payload: 0,
            version: IKE_VERSION,
            exchange,
            flags: Flags(flags),
            message_id: id,
            length: 0,
        }
    }

    // ---- IKE_SA_INIT, initiator ------------------------------------------------------------------------------

    fn send_init(&mut self, now: Instant, group: Option<u16>) {
        let group = group.or_else(|| {
            self.cfg
                .ike_proposals
                .first()
                .and_then(ProposalSpec::first_dh)
        });
        let Some(ks) = group.and_then(|g| KeyShare::generate(g).ok()) else {
            self.close(Reason::Protocol(
                "no usable key exchange group in our IKE proposals".into(),
            ));
            return;
        };
        // A retry after COOKIE or INVALID_KE_PAYLOAD keeps the nonce: the cookie is computed over it.
        if self.ni.is_empty() {
            self.ni = random_bytes(NONCE_LEN);
        }
        let mut payloads = Vec::new();
        if let Some(c) = &self.cookie {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.6
            //# the initiator MUST retry the IKE_SA_INIT with a Notify payload of type COOKIE containing the
            //# responder-supplied cookie data as the first payload and all other payloads unchanged.
            payloads.push(Payload::Notify(Notify::new(n::COOKIE, c.clone())));
        }
        let props = self
            .cfg
            .ike_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| p.to_wire(i as u8 + 1, vec![]))
            .collect();
        payloads.push(Payload::Sa(props));
        payloads.push(Payload::Ke {
            group: ks.group(),
            data: ks.public().to_vec(),
        });
        payloads.push(Payload::Nonce(self.ni.clone()));
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
        self.key_share = Some(ks);
        let msg =
            message::encode_plain(self.header(ExchangeType::IKE_SA_INIT, false, 0), &payloads);
        self.init_req = msg.clone();
        self.init_tries += 1;
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

    fn nat_detection_payloads(&self) -> Vec<Payload> {
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

    /// Looks at the peer's NAT detection notifies; switches to port 4500 if either side is behind a NAT.
    ///
    /// `spi_r` is the responder SPI as it stood in the header of the message that carried them (0 in the
    /// IKE_SA_INIT request).
    fn check_nat(&mut self, payloads: &[Payload], local_port: u16, spi_r: u64) {
        let mut nat = self.cfg.force_encap;
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
        if nat {
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
    fn unprotected_init_error(&mut self, reason: Reason) {
        if self.init_error.is_some() || self.silent {
            return;
        }
        self.events.push_back(Event::IkeDown {
            peer: self.cfg.name.clone(),
            reason: reason.clone(),
            unauthenticated: true,
        });
        self.init_error = Some(reason);
    }

    fn handle_init_response(
        &mut self,
        now: Instant,
        payloads: Vec<Payload>,
        header: &Header,
        raw: &[u8],
        local_port: u16,
    ) {
        for p in &payloads {
            if let Payload::Notify(x) = p {
                match x.ntype {
                    n::COOKIE if self.cookie.is_none() || self.init_tries < 3 => {
                        self.cookie = Some(x.data.clone());
                        self.send_init(now, self.key_share.as_ref().map(KeyShare::group));
                        return;
                    }
                    //= https://www.rfc-editor.org/rfc/rfc7296#section-1.2
                    //# If the initiator guesses wrong, the responder will respond with a Notify payload of type
                    //# INVALID_KE_PAYLOAD indicating the selected group.
                    n::INVALID_KE_PAYLOAD if x.data.len() == 2 && self.init_tries < 3 => {
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
                            self.close(Reason::Protocol(format!(
                                "peer asked for key exchange group {g}, which we did not offer"
                            )));
                        }
                        return;
                    }
                    n::NO_PROPOSAL_CHOSEN => {
                        let reason = Reason::NoProposalChosen {
                            ours: self.ike_proposal_text(),
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
        let offered: Vec<Proposal> = self
            .cfg
            .ike_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| p.to_wire(i as u8 + 1, vec![]))
            .collect();
        let chosen = match first!(payloads, Payload::Sa(props) => props) {
            Some(props) => proposal::check_response(&offered, props),
            None => {
                self.close(Reason::Protocol(
                    "IKE_SA_INIT response without an SA payload".into(),
                ));
                return;
            }
        };
        let chosen = match chosen {
            Ok(c) if suite::ike_supported(&c) => c,
            Ok(c) => {
                self.close(Reason::Protocol(format!(
                    "IKE_SA_INIT response chose {}, which we cannot use",
                    c.describe()
                )));
                return;
            }
            Err(e) => {
                self.close(Reason::Protocol(format!(
                    "IKE_SA_INIT response refused: {e}"
                )));
                return;
            }
        };
        let ke = first!(payloads, Payload::Ke { group, data } => (*group, data.clone()));
        let nr = first!(payloads, Payload::Nonce(d) => d.clone());
        let (Some((group, peer_pub)), Some(nr)) = (ke, nr) else {
            self.close(Reason::Protocol(
                "IKE_SA_INIT response lacks KE or Nonce".into(),
            ));
            return;
        };
        let Some(ks) = self.key_share.take() else {
            return;
        };
        if Some(group) != chosen.dh || group != ks.group() {
            self.close(Reason::Protocol(format!(
                "responder used group {group}, not the one we sent"
            )));
            return;
        }
        let shared = match ks.agree(&peer_pub) {
            Ok(s) => s,
            Err(e) => {
                self.close(Reason::Protocol(format!("bad KE payload: {e}")));
                return;
            }
        };
        self.spi_r = header.spi_r;
        self.nr = nr;
        self.init_resp = raw.to_vec();
        // A usable response after a (forged) error notification: the error reported was not the peer's word.
        self.init_error = None;
        let suite = match Suite::derive(
            &chosen, &shared, &self.ni, &self.nr, self.spi_i, self.spi_r, true,
        ) {
            Ok(s) => s,
            Err(e) => {
                self.close(Reason::Protocol(e));
                return;
            }
        };
        self.suite = Some(suite);
        self.check_nat(&payloads, local_port, self.spi_r);
        self.frag = self.cfg.fragment_size != 0 && announces_fragmentation(&payloads);
        self.peer_sig_hashes = peer_sig_hashes(&payloads);
        self.outstanding = None;
        self.send_auth(now);
    }

    fn ike_proposal_text(&self) -> String {
        self.cfg
            .ike_proposals
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn esp_proposal_text(&self) -> String {
        self.cfg
            .esp_proposals
            .iter()
            .map(|p| p.text.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    // ---- IKE_AUTH, initiator --------------------------------------------------------------------------------

    fn send_auth(&mut self, now: Instant) {
        let spi_in = random_spi32();
        let offered: Vec<Proposal> = self
            .cfg
            .esp_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| {
                p.without_dh()
                    .to_wire(i as u8 + 1, spi_in.to_be_bytes().to_vec())
            })
            .collect();
        let id_i = self.cfg.local_id.clone();
        let (method, auth) = match self.our_auth(&id_i) {
            Ok(a) => a,
            Err(why) => {
                self.close(Reason::AuthenticationFailed(why));
                return;
            }
        };
        let mut payloads = vec![Payload::IdI(id_i)];
        payloads.extend(self.cert_payloads());
        payloads.extend(self.certreq_payload());
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.4
        //# The INITIAL_CONTACT notification asserts that this IKE SA is the only IKE SA currently active between
        //# the authenticated identities.
        payloads.push(Payload::Notify(Notify::new(n::INITIAL_CONTACT, vec![])));
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
    fn auth_octets(&self, local: bool, id: &Id) -> Result<Vec<u8>, String> {
        let suite = self.keys()?;
        // Which side's octets: the initiator signs its IKE_SA_INIT request and the responder's nonce.
        let signer_is_initiator = local == self.initiator;
        let (first, nonce) = if signer_is_initiator {
            (&self.init_req, &self.nr)
        } else {
            (&self.init_resp, &self.ni)
        };
        Ok(suite.signed_octets(signer_is_initiator, first, nonce, id))
    }

    /// The IKE SA's keys, which exist once IKE_SA_INIT is done.
    fn keys(&self) -> Result<&Suite, String> {
        self.suite
            .as_ref()
            .ok_or_else(|| "no keys yet: IKE_SA_INIT is not complete".to_owned())
    }

    /// Our AUTH payload: method and Authentication Data, or why we cannot make one.
    fn our_auth(&self, id: &Id) -> Result<(u8, Vec<u8>), String> {
        let octets = self.auth_octets(true, id)?;
        let suite = self.keys()?;
        match &self.cfg.auth {
            AuthMethod::Psk(psk) => Ok((sig::AUTH_PSK, suite.psk_auth(psk, &octets))),
            AuthMethod::PubKey {
                private, padding, ..
            }
            | AuthMethod::Certificate {
                private, padding, ..
            } => {
                // RFC 7427 section 4 (paraphrased): sign with a hash the peer announced.
                let hash = self
                    .peer_sig_hashes
                    .as_deref()
                    .and_then(sig::SigHash::choose)
                    .ok_or_else(|| sig::SignatureError::NoCommonHash.to_string())?;
                let scheme = sig::Scheme {
                    padding: *padding,
                    hash,
                };
                let data = private
                    .sign_auth(scheme, &octets)
                    .map_err(|e| e.to_string())?;
                Ok((sig::AUTH_DIGITAL_SIGNATURE, data))
            }
        }
    }

    /// Checks the peer's AUTH payload against its configured PSK or public key; the error names the reason,
    /// including an authentication method that is not ours (PSK on one side, public key on the other).
    fn check_peer_auth(
        &self,
        now: Instant,
        id: &Id,
        method: u8,
        data: &[u8],
        payloads: &[Payload],
    ) -> Result<(), String> {
        let octets = self.auth_octets(false, id)?;
        let suite = self.keys()?;
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
                    Err("the PSKs differ".into())
                }
            }
            (AuthMethod::PubKey { peer_public, .. }, m)
                if m == sig::AUTH_DIGITAL_SIGNATURE || m == sig::AUTH_RSA_SIG =>
            {
                peer_public
                    .verify_auth(method, data, &octets)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
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
                trust
                    .verify(&end, &intermediates, clock.unix_at(now))
                    .map_err(|e| e.to_string())?;
                end.check_identity(id).map_err(|e| e.to_string())?;
                end.public_key()
                    .map_err(|e| e.to_string())?
                    .verify_auth(method, data, &octets)
                    .map(|_| ())
                    .map_err(|e| format!("{e} (the key of the certificate of {})", end.subject()))
            }
            (ours, theirs) => {
                let mesh = match ours {
                    AuthMethod::Psk(_) => "psk",
                    AuthMethod::PubKey { .. } | AuthMethod::Certificate { .. } => "pubkey",
                };
                Err(format!(
                    "authentication method mismatch: the peer authenticates with {}, we are configured for \
                     {} (mesh auth = \"{mesh}\")",
                    method_name(theirs),
                    ours.name(),
                ))
            }
        }
    }

    /// Our SIGNATURE_HASH_ALGORITHMS notification, when we authenticate with signatures.
    // RFC 7427 section 4 (paraphrased): each side announces the hashes it supports in its IKE_SA_INIT message.
    fn sig_hash_notify(&self) -> Option<Payload> {
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
    fn cert_payloads(&self) -> Vec<Payload> {
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
    fn certreq_payload(&self) -> Option<Payload> {
        match &self.cfg.auth {
            AuthMethod::Certificate { trust, .. } => Some(Payload::CertReq {
                encoding: x509::ENCODING_X509_SIGNATURE,
                data: trust.certreq_data(),
            }),
            _ => None,
        }
    }

    fn handle_auth_response(
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
        if let Err(why) = self.check_peer_auth(now, &id_r, method, &data, &payloads) {
            self.close(Reason::AuthenticationFailed(format!(
                "the peer's AUTH payload does not verify: {}",
                untrusted(&why)
            )));
            return;
        }
        self.established(now);
        // The Child SA: an error notify here means the IKE SA stands but the Child SA did not come up.
        if let Some(t) = error_notify(&payloads) {
            let reason = match t {
                n::NO_PROPOSAL_CHOSEN => Reason::NoProposalChosen {
                    ours: self.esp_proposal_text(),
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
                let info = self.child_info(&child, None, &self.ni, &self.nr, true)?;
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
    fn fail_child(&mut self, now: Instant, reason: Reason) {
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
    fn send_delete_ike(&mut self, now: Instant, delay: Duration) {
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
    fn accept_child(
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
    fn new_child(
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
    fn child_info(
        &self,
        c: &Child,
        shared: Option<&[u8]>,
        ni: &[u8],
        nr: &[u8],
        we_init: bool,
    ) -> Result<ChildSaInfo, Reason> {
        let suite = self
            .suite
            .as_ref()
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

    fn established(&mut self, now: Instant) {
        self.state = State::Established;
        self.established_at = Some(now);
        let lt = self.cfg.lifetimes;
        self.ike_rekey_at = Some(now + jittered(lt.ike_rekey, lt.jitter));
        self.events.push_back(Event::IkeUp {
            peer: self.cfg.name.clone(),
            spis: (self.spi_i, self.spi_r),
            algorithms: self
                .suite
                .as_ref()
                .map(|s| s.chosen.describe())
                .unwrap_or_default(),
            remote: self.remote,
            nat: self.nat,
            initiator: self.initiator,
        });
    }
}

// ---- the generic exchange machinery ------------------------------------------------------------------------

impl IkeSa {
    fn send_request(
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
    fn send_request_after(
        &mut self,
        now: Instant,
        delay: Duration,
        exchange: ExchangeType,
        payloads: Vec<Payload>,
        what: Request,
    ) {
        let id = self.next_id;
        self.next_id += 1;
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

    fn send_response(&mut self, exchange: ExchangeType, id: u32, payloads: Vec<Payload>) {
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
        self.peer_next_id = id + 1;
    }

    /// Encrypts a message, as fragments if it is too big for the path and both sides support that.
    fn protect(&self, header: Header, payloads: &[Payload]) -> Option<Vec<Vec<u8>>> {
        let suite = self.suite.as_ref()?;
        Some(suite.protect_fragmented(header, payloads, self.frag, self.max_message_len()))
    }

    /// The largest IKE message that fits in `fragment_size` once IP and UDP headers (and the non-ESP marker on
    /// port 4500) are added.
    fn max_message_len(&self) -> usize {
        let ip = if self.remote.is_ipv4() { 20 } else { 40 };
        let marker = if self.local_port == NAT_T_PORT { 4 } else { 0 };
        usize::from(self.cfg.fragment_size).saturating_sub(ip + 8 + marker)
    }

    /// Handles an IKE message for this SA (the non-ESP marker already removed).
    pub fn handle(&mut self, now: Instant, data: &[u8], from: SocketAddr, local_port: u16) {
        self.clock = now;
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

    fn decrypt(&self, parsed: &Parsed<'_>) -> Option<Vec<Payload>> {
        let enc = parsed.encrypted?;
        let suite = self.suite.as_ref()?;
        //= https://www.rfc-editor.org/rfc/rfc7296#section-3.14
        //# if the integrity check fails, the message MUST be discarded
        suite.unprotect(parsed.bytes, &enc).ok()
    }

    fn handle_response(
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
    fn handle_fragment(
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
        if self.reassembly.as_ref().map(|r| r.key) != Some(key) {
            match Reassembly::new(key, f.total) {
                Ok(r) => self.reassembly = Some(r),
                Err(_) => return,
            }
        }
        let Some(r) = self.reassembly.as_mut() else {
            return;
        };
        let Ok(Some((first, whole))) = r.add(f.number, f.total, enc.inner_next, plain) else {
            return;
        };
        self.reassembly = None;
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

    fn decrypt_fragment(&self, parsed: &Parsed<'_>) -> Option<zeroize::Zeroizing<Vec<u8>>> {
        let enc = parsed.encrypted?;
        self.suite
            .as_ref()?
            .unprotect_fragment(parsed.bytes, &enc)
            .ok()
    }

    /// A verified response to our outstanding request.
    fn dispatch_response(&mut self, now: Instant, payloads: Vec<Payload>, from: SocketAddr) {
        let Some(o) = self.outstanding.take() else {
            return;
        };
        self.heard(now, from);
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
                    self.events.push_back(Event::ChildDown {
                        peer: self.cfg.name.clone(),
                        spi_in,
                        spi_out: c.spi_out,
                        reason,
                    });
                }
            }
            Request::RekeyChild {
                old_spi_in,
                spi_in,
                offered,
                ni,
                ks,
                collision,
            } => self.finish_child_rekey(
                now, payloads, old_spi_in, spi_in, offered, ni, ks, collision,
            ),
            Request::CreateChild {
                spi_in,
                offered,
                ni,
                ks,
            } => self.finish_create_child(now, payloads, spi_in, offered, ni, ks),
            Request::RekeyIke {
                spi,
                offered,
                ni,
                ks,
                collision,
            } => self.finish_ike_rekey(now, payloads, spi, offered, ni, *ks, collision),
        }
    }

    /// True (and the time noted) if the cached response may be sent again now (see [`RESEND_INTERVAL`]).
    fn resend_allowed(&mut self, now: Instant) -> bool {
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
    fn resend_last_response(&mut self) {
        let datagrams = self
            .last_response
            .as_ref()
            .map(|(_, d)| d.clone())
            .unwrap_or_default();
        for d in datagrams {
            self.push_transmit(d);
        }
    }

    fn heard(&mut self, now: Instant, from: SocketAddr) {
        self.last_heard = now;
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.23
        //# ... if the IP address or port of the other end changed, and NAT was detected, update the address
        if self.nat && from != self.remote && from.port() != IKE_PORT {
            self.remote = from;
        }
    }

    fn handle_request(&mut self, now: Instant, parsed: Parsed<'_>, from: SocketAddr) {
        let id = parsed.header.message_id;
        if self.state == State::AwaitingAuth && parsed.header.exchange == ExchangeType::IKE_SA_INIT
        {
            // A retransmitted IKE_SA_INIT request: answer with the same response.
            if parsed.bytes == &self.init_req[..] {
                let resp = self.init_resp.clone();
                self.transmits.push_back(Transmit {
                    remote: from,
                    local_port: IKE_PORT,
                    data: resp,
                });
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
    fn dispatch_request(
        &mut self,
        now: Instant,
        header: Header,
        payloads: Vec<Payload>,
        from: SocketAddr,
    ) {
        let id = header.message_id;
        // Only a message that authenticated may move the peer's address.
        if self.state == State::AwaitingAuth {
            if from.port() == NAT_T_PORT {
                self.remote = from;
            }
        } else {
            self.heard(now, from);
        }
        let exchange = header.exchange;
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
    }

    // ---- responder: IKE_AUTH ------------------------------------------------------------------------------

    fn respond_auth(&mut self, now: Instant, id: u32, payloads: Vec<Payload>) {
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
        if let Err(why) = self.check_peer_auth(now, &id_i, method, &data, &payloads) {
            refuse(
                self,
                format!(
                    "AUTH from {} does not verify: {}",
                    untrusted(&display_id(&id_i)),
                    untrusted(&why)
                ),
            );
            return;
        }
        let id_r = self.cfg.local_id.clone();
        let (our_method, our_auth) = match self.our_auth(&id_r) {
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
        self.established(now);
        let child =
            self.negotiate_child(&payloads, false)
                .and_then(|(child, sa_payload, tsi, tsr)| {
                    let info = self
                        .child_info(&child, None, &self.ni, &self.nr, false)
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

    /// Responder side of a Child SA: pick an ESP proposal, narrow the selectors.
    #[allow(clippy::type_complexity)]
    fn negotiate_child(
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
                    ours: self.esp_proposal_text(),
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

    // ---- INFORMATIONAL ----------------------------------------------------------------------------------------

    fn respond_informational(&mut self, now: Instant, id: u32, payloads: Vec<Payload>) {
        let mut resp = Vec::new();
        let mut delete_ike = false;
        let mut our_spis = Vec::new();
        for p in &payloads {
            if let Payload::Delete(d) = p {
                if d.protocol == ProtocolId::IKE {
                    delete_ike = true;
                } else if d.protocol == ProtocolId::ESP {
                    for spi in &d.spis {
                        let Ok(b) = <[u8; 4]>::try_from(&spi[..]) else {
                            continue;
                        };
                        let spi_out = u32::from_be_bytes(b);
                        //= https://www.rfc-editor.org/rfc/rfc7296#section-1.4.1
                        //# the recipient MUST close the designated SAs ... each endpoint MUST send a Delete
                        //# payload for the SAs it has as the inbound part of the pair
                        if let Some(i) = self.children.iter().position(|c| c.spi_out == spi_out) {
                            let c = self.children.remove(i);
                            our_spis.push(c.spi_in.to_be_bytes().to_vec());
                            let reason = if c.rekeyed {
                                Reason::Rekeyed
                            } else {
                                Reason::DeletedByPeer
                            };
                            self.events.push_back(Event::ChildDown {
                                peer: self.cfg.name.clone(),
                                spi_in: c.spi_in,
                                spi_out,
                                reason,
                            });
                        }
                    }
                }
            }
        }
        if !our_spis.is_empty() {
            resp.push(Payload::Delete(Delete {
                protocol: ProtocolId::ESP,
                spis: our_spis,
            }));
        }
        self.send_response(ExchangeType::INFORMATIONAL, id, resp);
        if delete_ike {
            // Our own rekey of this SA collided with the peer's, whose exchange won and which now deletes the old
            // SA before our exchange's response arrived: the Child SAs go to the peer's new SA.
            if let Some(Outstanding {
                what:
                    Request::RekeyIke {
                        collision: Some(c), ..
                    },
                ..
            }) = self.outstanding.take()
            {
                self.hand_over(now, c.local_spi, c.spis);
            }
            self.close(Reason::DeletedByPeer);
        }
    }

    // ---- CREATE_CHILD_SA ---------------------------------------------------------------------------------------

    /// When we may ask for the Child SA of an uncovered subnet pair: at once as the IKE SA's initiator, after
    /// [`EXTRA_CHILD_GRACE`] as its responder.
    fn extra_child_from(&self) -> Option<Instant> {
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
    fn uncovered_pair(&self) -> Option<(TrafficSelector, TrafficSelector)> {
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
    fn start_create_child(&mut self, now: Instant, pair: (TrafficSelector, TrafficSelector)) {
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

    /// The peer's answer to [`IkeSa::start_create_child`]: a new Child SA, or a refusal reported as a
    /// ChildDown without SPIs (the IKE SA and its other Child SAs stay).
    fn finish_create_child(
        &mut self,
        now: Instant,
        payloads: Vec<Payload>,
        spi_in: u32,
        offered: Vec<Proposal>,
        ni: Vec<u8>,
        ks: Option<Box<KeyShare>>,
    ) {
        let refused = |sa: &mut IkeSa, reason: Reason| {
            sa.events.push_back(Event::ChildDown {
                peer: sa.cfg.name.clone(),
                spi_in: 0,
                spi_out: 0,
                reason,
            });
        };
        if let Some(t) = error_notify(&payloads) {
            let reason = match t {
                n::TS_UNACCEPTABLE => Reason::TsUnacceptable(
                    "peer refused an additional Child SA for a subnet pair the first one does not cover".into(),
                ),
                n::NO_PROPOSAL_CHOSEN => Reason::NoProposalChosen {
                    ours: self.esp_proposal_text(),
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
    fn delete_unusable_child(&mut self, now: Instant, spi_in: u32) {
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
    fn child_offer(&self, spi_in: u32) -> (Vec<Proposal>, Option<KeyShare>) {
        let group = self
            .cfg
            .esp_proposals
            .first()
            .and_then(ProposalSpec::first_dh);
        let ks = group.and_then(|g| KeyShare::generate(g).ok());
        let offered: Vec<Proposal> = self
            .cfg
            .esp_proposals
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let p = if ks.is_some() {
                    p.clone()
                } else {
                    p.without_dh()
                };
                p.to_wire(k as u8 + 1, spi_in.to_be_bytes().to_vec())
            })
            .collect();
        (offered, ks)
    }

    fn start_child_rekey(&mut self, now: Instant, i: usize) {
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
            Request::RekeyChild {
                old_spi_in: old.spi_in,
                spi_in,
                offered,
                ni,
                ks: ks.map(Box::new),
                collision: None,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_child_rekey(
        &mut self,
        now: Instant,
        payloads: Vec<Payload>,
        old_spi_in: u32,
        spi_in: u32,
        offered: Vec<Proposal>,
        ni: Vec<u8>,
        ks: Option<Box<KeyShare>>,
        collision: Option<ChildCollision>,
    ) {
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
        let Some(nr) = nr else {
            retry_later(self);
            self.delete_unusable_child(now, spi_in);
            return;
        };
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
                // The old Child SA stays; its rekey is tried again later, and the peer's new one is deleted.
                self.events.push_back(Event::ChildDown {
                    peer: self.cfg.name.clone(),
                    spi_in: 0,
                    spi_out: 0,
                    reason,
                });
                retry_later(self);
                self.delete_unusable_child(now, spi_in);
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
                    self.events.push_back(Event::ChildDown {
                        peer: self.cfg.name.clone(),
                        spi_in: 0,
                        spi_out: 0,
                        reason,
                    });
                    retry_later(self);
                    self.delete_unusable_child(now, spi_in);
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

    fn respond_create_child(&mut self, now: Instant, id: u32, payloads: Vec<Payload>) {
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
                what: Request::RekeyIke { .. },
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
                    self.events.push_back(Event::ChildDown {
                        peer: self.cfg.name.clone(),
                        spi_in: 0,
                        spi_out: 0,
                        reason,
                    });
                    return;
                }
            };
        if !NONCE_LEN_RANGE.contains(&ni.len()) {
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
                    self.events.push_back(Event::ChildDown {
                        peer: self.cfg.name.clone(),
                        spi_in: 0,
                        spi_out: 0,
                        reason,
                    });
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
                        Request::RekeyChild {
                            old_spi_in: ours,
                            collision,
                            ..
                        },
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

// ---- IKE SA rekey (RFC 7296 1.3.2, 2.18) and its collisions (2.8.2) ---------------------------------------------

impl IkeSa {
    fn start_ike_rekey(&mut self, now: Instant) {
        // Postponed at once: a refusal or a lost peer must not make this loop; success replaces the SA anyway.
        self.ike_rekey_at = Some(now + rekey_retry());
        // The new SA keeps the group of the current one, which the peer chose from our proposals.
        let group = self.suite.as_ref().and_then(|s| s.chosen.dh);
        let Some(ks) = group.and_then(|g| KeyShare::generate(g).ok()) else {
            return;
        };
        let spi = random_u64();
        let ni = random_bytes(NONCE_LEN);
        let offered: Vec<Proposal> = self
            .cfg
            .ike_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| p.to_wire(i as u8 + 1, spi.to_be_bytes().to_vec()))
            .collect();
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
            Request::RekeyIke {
                spi,
                offered,
                ni,
                ks: Box::new(ks),
                collision: None,
            },
        );
    }

    /// The keys of the new IKE SA from a rekey response; `Err(None)` if the peer refused (an error notify),
    /// `Err(Some(why))` if the answer is unusable (a proposal we did not offer, a bad key exchange...).
    fn rekey_response_suite(
        &self,
        payloads: &[Payload],
        spi: u64,
        offered: &[Proposal],
        ni: &[u8],
        ks: KeyShare,
    ) -> Result<(Suite, u64, Vec<u8>), Option<String>> {
        if error_notify(payloads).is_some() {
            return Err(None);
        }
        let bad = |why: String| Some(format!("IKE SA rekey answer refused: {why}"));
        let props = first!(payloads, Payload::Sa(props) => props)
            .ok_or_else(|| bad("no SA payload".into()))?;
        let chosen = proposal::check_response(offered, props).map_err(|e| bad(e.to_string()))?;
        //= https://www.rfc-editor.org/rfc/rfc7296#section-1.3.2
        //# A new initiator SPI is supplied in the SPI field of the SA payload.
        // (and the responder's in its answer's)
        let spi_r = <[u8; 8]>::try_from(chosen.spi.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| bad("the SPI is not 8 bytes".into()))?;
        if spi_r == 0 {
            return Err(bad("zero SPI".into()));
        }
        if chosen.dh != Some(ks.group()) {
            return Err(bad(format!(
                "it chose another key exchange group than the one we sent ({})",
                proposal::dh_name(ks.group())
            )));
        }
        let nr = first!(payloads, Payload::Nonce(x) => x.clone())
            .filter(|nr| NONCE_LEN_RANGE.contains(&nr.len()))
            .ok_or_else(|| bad("no usable Nonce".into()))?;
        let ke = first!(payloads, Payload::Ke { group, data } => (*group, data.clone()))
            .filter(|ke| ke.0 == ks.group())
            .ok_or_else(|| bad("no KE payload of our group".into()))?;
        let shared = ks.agree(&ke.1).map_err(&bad)?;
        self.keys()
            .and_then(|s| s.derive_rekey(&chosen, &shared, ni, &nr, spi, spi_r, true))
            .map(|suite| (suite, spi_r, nr))
            .map_err(bad)
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_ike_rekey(
        &mut self,
        now: Instant,
        payloads: Vec<Payload>,
        spi: u64,
        offered: Vec<Proposal>,
        ni: Vec<u8>,
        ks: KeyShare,
        collision: Option<IkeCollision>,
    ) {
        let (suite, spi_r, nr) = match self.rekey_response_suite(&payloads, spi, &offered, &ni, ks)
        {
            Ok(x) => x,
            Err(why) => {
                // Refused (TEMPORARY_FAILURE, NO_PROPOSAL_CHOSEN, ...) or unusable: if the peer's own rekey of
                // this SA succeeded meanwhile, that one replaces it; a refusal is retried at the postponed time.
                if let Some(c) = collision {
                    self.hand_over(now, c.local_spi, c.spis);
                } else if let Some(why) = why {
                    // The peer believes the new IKE SA exists (and may have moved its Child SAs there) while we
                    // cannot use it: both ends start afresh rather than disagree about which SA is current.
                    // (RFC 7296 2.21.3: after authentication, an unprocessable response leads to the IKE SA being
                    // deleted.)
                    self.events.push_back(Event::IkeDown {
                        peer: self.cfg.name.clone(),
                        reason: Reason::Protocol(why),
                        unauthenticated: false,
                    });
                    self.down_reported = true;
                    self.send_delete_ike(now, Duration::ZERO);
                }
                return;
            }
        };
        let mut new = self.successor(now, true, spi, spi_r, suite, ni, nr);
        if let Some(c) = collision {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.8.1
            //# If redundant SAs are created through such a collision, the SA created with the lowest of the four
            //# nonces used in the two exchanges SHOULD be closed by the endpoint that created it.
            if lowest(&new.ni, &new.nr) < lowest(&c.ni, &c.nr) {
                // Ours is the redundant one: we close it; the peer, creator of the survivor, deletes the old SA.
                new.silent = true;
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
        self.silent = true;
        self.send_delete_ike(now, Duration::ZERO);
    }

    fn respond_ike_rekey(&mut self, now: Instant, id: u32, payloads: Vec<Payload>) {
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
                what: Request::RekeyIke { .. },
                ..
            })
        );
        let busy = self
            .outstanding
            .as_ref()
            .is_some_and(|o| !matches!(o.what, Request::Liveness | Request::RekeyIke { .. }));
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
        let old_prf = self.suite.as_ref().and_then(Suite::prf_id);
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
        if !NONCE_LEN_RANGE.contains(&ni.len()) || suite::check_public(group, &ke.1).is_err() {
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
            .suite
            .as_ref()
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
        let mut new = self.successor(now, false, spi_i, spi_r, suite, ni, nr);
        if ours_pending {
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.8.1
            //# ... cannot yet know which of the exchanges will have the lowest nonce, so it will just note
            //# the situation and respond as usual.
            let c = IkeCollision {
                local_spi: new.local_spi(),
                spis: new.spis(),
                ni: new.ni.clone(),
                nr: new.nr.clone(),
            };
            if let Some(Outstanding {
                what: Request::RekeyIke { collision, .. },
                ..
            }) = &mut self.outstanding
            {
                *collision = Some(c);
            }
            // It stays without Child SAs and unreported unless it wins.
            new.silent = true;
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
    #[allow(clippy::too_many_arguments)]
    fn successor(
        &self,
        now: Instant,
        initiator: bool,
        spi_i: u64,
        spi_r: u64,
        suite: Suite,
        ni: Vec<u8>,
        nr: Vec<u8>,
    ) -> IkeSa {
        let mut sa = IkeSa::blank(self.cfg.clone(), initiator, spi_i, spi_r, self.remote, now);
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.18
        //# The new IKE SA MUST reset its message counters to 0.
        sa.next_id = 0;
        sa.peer_next_id = 0;
        sa.state = State::Established;
        sa.local_port = self.local_port;
        sa.nat = self.nat;
        sa.nat_local = self.nat_local;
        sa.frag = self.frag;
        sa.suite = Some(suite);
        sa.ni = ni;
        sa.nr = nr;
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
    /// waits, silent, for the peer (the rekey's initiator) to delete it.
    fn hand_over(&mut self, now: Instant, target: u64, new_spis: (u64, u64)) {
        self.handoff = Some((target, std::mem::take(&mut self.children)));
        self.events.push_back(Event::IkeRekeyed {
            peer: self.cfg.name.clone(),
            old_spis: self.spis(),
            new_spis,
            initiator: false,
        });
        self.silent = true;
        if self.state == State::Established {
            self.state = State::Rekeyed;
            self.last_heard = now;
        }
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
            let ours = cfg
                .ike_proposals
                .iter()
                .map(|p| p.text.as_str())
                .collect::<Vec<_>>()
                .join(", ");
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
        if suite::check_public(group, ke.1).is_err() || !NONCE_LEN_RANGE.contains(&ni.len()) {
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
        sa.ni = ni;
        sa.nr = random_bytes(NONCE_LEN);
        sa.init_req = raw;
        sa.peer_next_id = 1;
        let suite =
            Suite::derive(&chosen, &shared, &sa.ni, &sa.nr, sa.spi_i, sa.spi_r, false).ok()?;
        let mut payloads = vec![
            Payload::Sa(vec![chosen.to_wire(ProtocolId::IKE, vec![])]),
            Payload::Ke {
                group,
                data: public,
            },
            Payload::Nonce(sa.nr.clone()),
        ];
        sa.suite = Some(suite);
        payloads.extend(sa.nat_detection_payloads());
        //= https://www.rfc-editor.org/rfc/rfc7296#section-1.2
        //# The responder can also send a Certificate Request payload ([CERTREQ]) in its IKE_SA_INIT response
        payloads.extend(sa.certreq_payload());
        payloads.extend(sa.sig_hash_notify());
        sa.peer_sig_hashes = peer_sig_hashes(&request);
        sa.check_nat(&request, IKE_PORT, 0);
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
        sa.init_resp = resp.clone();
        sa.transmits.push_back(Transmit {
            remote: from,
            local_port: IKE_PORT,
            data: resp,
        });
        Some(InitOutcome::Created(Box::new(sa)))
    }
}

/// A stateless answer to the IKE_SA_INIT request with header `h`.
fn refusal(
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

/// The peer's proposals in strongSwan's syntax, for the NO_PROPOSAL_CHOSEN log line: at most
/// [`crate::text::MAX_UNTRUSTED_CHARS`] characters, however many proposals the request carried.
fn describe_offer(props: &[Proposal]) -> String {
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

fn announces_fragmentation(payloads: &[Payload]) -> bool {
    payloads
        .iter()
        .any(|p| matches!(p, Payload::Notify(x) if x.ntype == n::IKEV2_FRAGMENTATION_SUPPORTED))
}

/// The PFS secret of a Child SA answer to our request with key share `ks`: `Some(None)` without PFS, `None` if
/// the answer lacks the KE payload or its key does not work.
fn pfs_secret(
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
fn peer_certs(payloads: &[Payload]) -> impl Iterator<Item = &[u8]> {
    payloads.iter().filter_map(|p| match p {
        Payload::Cert { encoding, data } if *encoding == x509::ENCODING_X509_SIGNATURE => {
            Some(&data[..])
        }
        _ => None,
    })
}

/// The peer's own certificate: its first CERT payload, or the one the mesh file names if it sent none.
fn peer_certificate(
    payloads: &[Payload],
    configured: Option<&x509::Certificate>,
) -> Result<x509::Certificate, String> {
    match peer_certs(payloads).next() {
        Some(der) => x509::Certificate::from_der(der)
            .map_err(|e| format!("the peer's certificate (first CERT payload): {e}")),
        None => configured.cloned().ok_or_else(|| {
            "the peer sent no certificate (no X.509 CERT payload) and the mesh file names none for it".into()
        }),
    }
}

/// The hash algorithms of a SIGNATURE_HASH_ALGORITHMS notification, if there is one.
fn peer_sig_hashes(payloads: &[Payload]) -> Option<Vec<u16>> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(x) if x.ntype == n::SIGNATURE_HASH_ALGORITHMS => {
            Some(sig::SigHash::parse_notify(&x.data))
        }
        _ => None,
    })
}

fn error_notify(payloads: &[Payload]) -> Option<u16> {
    payloads.iter().find_map(|p| match p {
        Payload::Notify(x) if n::is_error(x.ntype) => Some(x.ntype),
        _ => None,
    })
}

fn ts_list(ts: &[TrafficSelector]) -> String {
    ts.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}
