//! One IKE SA and its Child SAs, in either role: a sans-IO state machine.
//!
//! Drive it like quinn-proto's `Connection`: feed received messages with [`IkeSa::handle`], call
//! [`IkeSa::handle_timeout`] when [`IkeSa::poll_timeout`] says, and drain [`IkeSa::poll_transmit`] and
//! [`IkeSa::poll_event`] after each call. Nothing here reads a clock: `now` is always an argument.
//!
//! Three things describe an SA: its [`State`] (where it is in its life, what exchanges it accepts), its `Phase`
//! (what the handshake holds: each phase owns only its data, so that the keys are there when a phase has them)
//! and its `Standing` (whether it is the peer's current IKE SA, or one a rekey replaced or may replace).
//!
//! This file holds the SA's state and its public API; each exchange has its own file:
//! - `exchange.rs`: requests and responses, message IDs, protection, fragments, the response cache, dispatch;
//! - `timers.rs`: the one timer table read by `poll_timeout` and `handle_timeout`, and every timing constant;
//! - `init.rs`: IKE_SA_INIT in both roles (the responder's side is called by the endpoint before an SA exists);
//! - `auth.rs`: IKE_AUTH in both roles, with the first Child SA;
//! - `child.rs`: CREATE_CHILD_SA for new Child SAs and their rekeys, collisions and caps;
//! - `ike_rekey.rs`: IKE SA rekey and its collisions;
//! - `informational.rs`: the peer's INFORMATIONAL requests (deletes, liveness);
//! - `payloads.rs`: our SA offers (`wire_proposals`), proposal text, and readers of the peer's payloads.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{AuthMethod, PeerConfig};
use crate::crypto::prf::Prf;
use crate::crypto::signature as sig;
use crate::crypto::x509;
use crate::event::{ChildSaInfo, Encap, Event, Reason, Transmit};
use crate::fragment::Reassembly;
use crate::message::id::display_id;
use crate::message::{
    self, Delete, ExchangeType, Flags, Fragment, Header, Id, Notify, Parsed, Payload, Proposal,
    ProtocolId, TrafficSelector, IKE_VERSION,
};
use crate::notify as n;
use crate::proposal::{self, Chosen, ProposalSpec};
use crate::ratelimit::TokenBucket;
use crate::suite::{self, KeyShare, Suite};
use crate::text::untrusted;
use crate::vendor;

/// The first payload of a kind, mapped: `first!(payloads, Payload::Nonce(x) => x.clone())`.
macro_rules! first {
    ($payloads:expr, $pat:pat => $val:expr) => {
        $payloads.iter().find_map(|p| match p {
            $pat => Some($val),
            _ => None,
        })
    };
}

mod auth;
mod child;
mod exchange;
mod ike_rekey;
mod informational;
mod init;
mod payloads;
#[cfg(test)]
mod tests;
mod timers;

pub use init::{InitOutcome, ValidInit};
use payloads::*;
use timers::*;
pub use timers::{
    CREATE_CHILD_BURST, CREATE_CHILD_INTERVAL, HALF_OPEN_TIMEOUT, IKE_REKEY_BURST,
    IKE_REKEY_INTERVAL, RESEND_INTERVAL,
};

/// IKE's well-known port.
pub const IKE_PORT: u16 = 500;
/// The NAT traversal port.
pub const NAT_T_PORT: u16 = 4500;

/// Traffic selectors at most per side (TSi, TSr) of a Child SA request or answer, or as many as we are configured
/// with for that side if more; beyond, TS_UNACCEPTABLE. vmsecd sends one per configured subnet (its peer's
/// configuration mirrors ours); thousands from a peer would cost a narrowing of ours x theirs and a Child SA as
/// large.
pub const MAX_TS_PER_SIDE: usize = 16;

/// Child SAs one IKE SA carries at most (not counting replaced ones whose delete is under way); a request for
/// more is answered NO_ADDITIONAL_SAS. vmsecd itself makes one per subnet pair.
pub const MAX_CHILD_SAS: usize = 16;

/// Accepted nonce lengths.
//= https://www.rfc-editor.org/rfc/rfc7296#section-3.9
//# The size of the Nonce Data MUST be between 16 and 256 octets, inclusive.
pub const NONCE_LEN_RANGE: std::ops::RangeInclusive<usize> = 16..=256;

/// Whether a nonce the peer sent is usable in an IKE SA whose PRF is `prf` (`None`: none negotiated yet, by
/// [`NONCE_LEN_RANGE`] alone). A shorter one is treated as a malformed payload. Real peers send more than the
/// least: strongSwan 32 octets (its parser refuses what is outside 16..=256), libreswan's tests expect 32 both
/// ways with SHA2-512, and ours are 32 ([`NONCE_LEN`]); the bound is 16 for SHA2-256, 24 for -384, 32 for -512.
//= https://www.rfc-editor.org/rfc/rfc7296#section-2.10
//# Nonces used in IKEv2 MUST be randomly chosen, MUST be at least 128 bits in size, and MUST be at least half
//# the key size of the negotiated pseudorandom function (PRF).
fn nonce_fits(nonce: &[u8], prf: Option<Prf>) -> bool {
    NONCE_LEN_RANGE.contains(&nonce.len())
        && nonce.len() >= prf.map_or(0, |p| p.key_len().div_ceil(2))
}

/// Why a nonce the peer sent is not usable, for the reason reported (see [`nonce_fits`]).
fn nonce_misfit(nonce: &[u8], prf: Option<Prf>) -> String {
    let least = prf
        .map_or(0, |p| p.key_len().div_ceil(2))
        .max(*NONCE_LEN_RANGE.start());
    format!(
        "a Nonce of {} octets (RFC 7296 2.10, 3.9: {least} to {} with this PRF)",
        nonce.len(),
        NONCE_LEN_RANGE.end()
    )
}

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

/// Whether an IKE SA is the peer's current one (what a `silent` flag used to say, for three different reasons).
/// Only a current SA carries Child SAs, runs rekeys, liveness checks and keepalives, reports its end, and shows in
/// status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    /// The peer's IKE SA.
    Current,
    /// Made by the peer's rekey of this SA's predecessor while our own rekey of it was under way (RFC 7296
    /// 2.8.1): established, but quiet until the collision is resolved. It either wins (the endpoint hands it the
    /// Child SAs, [`IkeSa::adopt`]) or is found redundant ([`IkeSa::mark_redundant`]), and then its creator, the
    /// peer, deletes it, or we do after [`REDUNDANT_GRACE`].
    Contested {
        /// When it was found redundant.
        redundant_since: Option<Instant>,
    },
    /// Replaced: by a rekey (ours, and we delete it; or the peer's, and it waits in [`State::Rekeyed`] for the
    /// peer's delete), or the redundant SA of a collision we created and delete ourselves. It lingers until its
    /// delete completes.
    Replaced,
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
    RekeyChild(ChildRekey),
    /// An additional Child SA for one (local subnet, remote subnet) pair no Child SA covers yet.
    CreateChild {
        spi_in: u32,
        offered: Vec<Proposal>,
        ni: Vec<u8>,
        ks: Option<Box<KeyShare>>,
    },
    RekeyIke(IkeRekey),
}

/// Our Child SA rekey in flight (RFC 7296 2.8): what its answer is checked against and keyed with.
#[derive(Debug)]
struct ChildRekey {
    /// The Child SA it replaces.
    old_spi_in: u32,
    /// Our SPI in the new one.
    spi_in: u32,
    offered: Vec<Proposal>,
    ni: Vec<u8>,
    /// Our key share, with PFS.
    ks: Option<Box<KeyShare>>,
    /// The peer rekeyed the same Child SA meanwhile (RFC 7296 2.8.1).
    collision: Option<ChildCollision>,
}

/// Our IKE SA rekey in flight (RFC 7296 1.3.2).
#[derive(Debug)]
struct IkeRekey {
    /// Our SPI in the new IKE SA (we are its initiator).
    spi: u64,
    offered: Vec<Proposal>,
    ni: Vec<u8>,
    ks: Box<KeyShare>,
    /// The peer rekeyed this IKE SA meanwhile (RFC 7296 2.8.2).
    collision: Option<IkeCollision>,
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

impl Child {
    /// The event that reports it gone, for the driver to remove.
    pub(crate) fn down(&self, peer: &str, reason: Reason) -> Event {
        Event::ChildDown {
            peer: peer.to_owned(),
            spi_in: self.spi_in,
            spi_out: self.spi_out,
            reason,
            refused: false,
        }
    }
}

/// What an IKE SA holds of its handshake, which only the handshake needs: each phase owns only its data (as
/// rustls's `client/hs.rs` states do), so that code needing the keys gets them from the phase that has them.
enum Phase {
    /// Nothing: before our first IKE_SA_INIT request, or once the handshake failed (the SA is closed).
    Void,
    /// Initiator, IKE_SA_INIT sent: no keys yet.
    Init(Box<InitState>),
    /// Keys made, IKE_AUTH not done (initiator: sent; responder: awaited).
    Auth(Box<Handshake>),
    /// IKE_AUTH done (or made by a rekey): the keys alone.
    Keyed(Box<Suite>),
}

/// The initiator's IKE_SA_INIT in flight.
struct InitState {
    /// Our key share, for the group of the request in flight.
    key_share: KeyShare,
    /// Our nonce, kept across retries (a cookie is computed over it).
    ni: Vec<u8>,
    /// The responder's cookie, once it asked for one (RFC 7296 2.6).
    cookie: Option<Vec<u8>>,
    /// Requests sent: the first, then retries after COOKIE or INVALID_KE_PAYLOAD.
    tries: u32,
    /// The request as sent: our AUTH payload signs it.
    request: Vec<u8>,
    /// An error notification in an IKE_SA_INIT response, reported (unauthenticated) but not acted on while a
    /// usable response may still come (see [`IkeSa::unprotected_init_error`]).
    error: Option<Reason>,
    /// Responses examined (up to the key agreement) since the request in flight was last sent, and which
    /// sending that was (try, transmission): bounds the work forged responses can cost.
    examined: (u32, u32, u32),
}

/// IKE_SA_INIT done, IKE_AUTH under way: the keys, and what the AUTH payloads sign (RFC 7296 2.15).
struct Handshake {
    keys: Suite,
    ni: Vec<u8>,
    nr: Vec<u8>,
    /// The IKE_SA_INIT request and response as sent: each side's AUTH payload signs its own message (and the
    /// responder answers a retransmitted request with the same response).
    init_req: Vec<u8>,
    init_resp: Vec<u8>,
    /// The hash algorithms of the peer's SIGNATURE_HASH_ALGORITHMS notification (RFC 7427 4), if it sent one.
    peer_sig_hashes: Option<Vec<u16>>,
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
    /// The local port the message being handled arrived on (see `handle`).
    rx_port: u16,
    nat: bool,
    /// What the handshake holds so far: our key share, then the keys with the IKE_SA_INIT messages, then the
    /// keys alone.
    phase: Phase,
    /// How ESP is carried and why (`nat` is `encap.udp()` once IKE_SA_INIT is done).
    encap: Encap,
    next_id: u32,
    outstanding: Option<Outstanding>,
    peer_next_id: u32,
    last_response: Option<(u32, Vec<Vec<u8>>)>,
    /// When the cached response was last sent again for a retransmitted request (see [`RESEND_INTERVAL`]).
    last_resend: Option<Instant>,
    children: Vec<Child>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    last_heard: Instant,
    /// When the peer's rekey replaced this SA ([`State::Rekeyed`]): it is dropped a retransmission budget later
    /// if the peer has not deleted it by then, however often the peer sends on it meanwhile.
    replaced_at: Option<Instant>,
    established_at: Option<Instant>,
    /// When this SA began (our IKE_SA_INIT request sent, or the peer's received).
    created_at: Instant,
    /// The peer's IKE_AUTH request carried INITIAL_CONTACT; taken by the endpoint once established.
    initial_contact: bool,
    /// Initiator: the endpoint holds another established IKE SA with this peer, so our IKE_AUTH must not claim
    /// INITIAL_CONTACT (see [`IkeSa::set_other_established`]).
    other_established: bool,
    /// Initiator before IKE_AUTH completed: the endpoint holds another established IKE SA with this peer, so
    /// running out of retransmissions here shows no dead peer (see [`IkeSa::set_peer_up_elsewhere`]).
    peer_up_elsewhere: bool,
    /// The peer has shown that it holds this IKE SA established: it answered a request of ours on it without an
    /// error (our IKE_AUTH included), or sent a request on it once established. A responder does not know
    /// otherwise whether its IKE_AUTH response arrived (see [`IkeSa::confirm_peer`]).
    peer_confirmed: bool,
    ike_rekey_at: Option<Instant>,
    /// The IkeDown event went out already (a refused Child SA is reported at once, before the delete exchange
    /// that follows): closing must not report the SA a second time.
    down_reported: bool,
    /// Whether it is the peer's current IKE SA, or one a rekey replaced or may yet replace.
    standing: Standing,
    /// New IKE SAs a rekey created, for the endpoint to file under their SPI.
    spawned: Vec<IkeSa>,
    /// Child SAs for the endpoint to move to the IKE SA filed under this SPI (the winner of a collision).
    handoff: Option<(u64, Vec<Child>)>,
    /// The IKE SA filed under this SPI lost a rekey collision, as of this instant: its creator must delete it.
    doomed: Option<(u64, Instant)>,
    /// Our NAT_DETECTION_DESTINATION_IP did not match: we are behind a NAT and keep its mapping alive.
    nat_local: bool,
    /// Both sides announced IKEV2_FRAGMENTATION_SUPPORTED (RFC 7383).
    frag: bool,
    /// Fragments of the peer's request being received. A slot of its own, apart from the response's: a
    /// fragmented request of the peer crossing the fragmented response to ours reset each other's fragments in
    /// a shared slot until a retransmission. Used only where the peer may send a request (not while our
    /// IKE_SA_INIT or IKE_AUTH is outstanding), so an SA not yet authenticated holds one reassembly at most.
    reassembly_request: Option<Reassembly>,
    /// Fragments of the response to our outstanding request being received (only while one is outstanding:
    /// never on a responder SA before IKE_AUTH completes).
    reassembly_response: Option<Reassembly>,
    /// The `now` of the call being processed.
    clock: Instant,
    /// When we last sent something to the peer (for NAT keepalives).
    last_sent: Instant,
    /// (local subnet, remote subnet) pairs we asked an additional Child SA for on this IKE SA: each once.
    tried_pairs: Vec<(TrafficSelector, TrafficSelector)>,
    /// The peer's CREATE_CHILD_SA requests (inherited by the successor of an IKE rekey).
    create_limit: TokenBucket,
    /// The peer's IKE SA rekeys (inherited likewise).
    rekey_limit: TokenBucket,
    /// False while the peer holds as many IKE SAs as a rekey may take it to (see `set_rekey_room`).
    rekey_room: bool,
    /// Where the peer was when the SA was made (the key of a half-open SA's retransmission lookup).
    origin: SocketAddr,
    /// When the SA was made: [`Event::IkeUp`] reports how long the handshake took.
    created: Instant,
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
    /// How ESP is carried, and why.
    pub encap: Encap,
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
            rx_port: IKE_PORT,
            nat: false,
            phase: Phase::Void,
            encap: Encap::Raw,
            next_id: 0,
            outstanding: None,
            peer_next_id: 0,
            last_response: None,
            last_resend: None,
            children: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            last_heard: now,
            replaced_at: None,
            established_at: None,
            created_at: now,
            initial_contact: false,
            other_established: false,
            peer_up_elsewhere: false,
            peer_confirmed: false,
            ike_rekey_at: None,
            down_reported: false,
            standing: Standing::Current,
            spawned: Vec::new(),
            handoff: None,
            doomed: None,
            nat_local: false,
            frag: false,
            reassembly_request: None,
            reassembly_response: None,
            clock: now,
            last_sent: now,
            created: now,
            tried_pairs: Vec::new(),
            create_limit: TokenBucket::new(CREATE_CHILD_BURST, CREATE_CHILD_INTERVAL),
            rekey_limit: TokenBucket::new(IKE_REKEY_BURST, IKE_REKEY_INTERVAL),
            rekey_room: true,
            origin: remote,
        }
    }

    /// The IKE SA's keys, once IKE_SA_INIT made them.
    pub(super) fn keys(&self) -> Option<&Suite> {
        match &self.phase {
            Phase::Void | Phase::Init(_) => None,
            Phase::Auth(hs) => Some(&hs.keys),
            Phase::Keyed(keys) => Some(keys),
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
        self.standing != Standing::Current
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
        self.standing = Standing::Current;
    }

    /// An IKE SA (by its local SPI) that lost a rekey collision we resolved, and when.
    pub(crate) fn take_doomed(&mut self) -> Option<(u64, Instant)> {
        self.doomed.take()
    }

    /// True once, when this SA is established and the peer's IKE_AUTH request carried INITIAL_CONTACT: the
    /// endpoint then closes the peer's older IKE SAs (see `Endpoint::honour_initial_contact`).
    pub(crate) fn take_initial_contact(&mut self) -> bool {
        let t = self.initial_contact && self.state == State::Established;
        if t {
            self.initial_contact = false;
        }
        t
    }

    /// Tells an initiator, before its IKE_SA_INIT response is handled, whether the endpoint holds another
    /// established IKE SA with the peer: its IKE_AUTH then claims no INITIAL_CONTACT.
    pub(crate) fn set_other_established(&mut self, yes: bool) {
        self.other_established = yes;
    }

    /// True once the peer has shown that it holds this IKE SA established (see `peer_confirmed`).
    pub(crate) fn peer_confirmed(&self) -> bool {
        self.peer_confirmed
    }

    /// Asks the peer to show that it holds this established IKE SA: an empty INFORMATIONAL request (the
    /// liveness check of RFC 7296 1.4), unless a request of ours is outstanding already (its answer shows it as
    /// well). It is retransmitted until answered, as any request. The endpoint asks before it deletes a
    /// duplicate IKE SA in favour of this one.
    pub(crate) fn confirm_peer(&mut self, now: Instant) {
        self.clock = now;
        if self.state == State::Established && !self.peer_confirmed && self.outstanding.is_none() {
            self.send_request(now, ExchangeType::INFORMATIONAL, vec![], Request::Liveness);
        }
    }

    /// When this SA began.
    pub(crate) fn created_at(&self) -> Instant {
        self.created_at
    }

    /// When it was established, if it was.
    pub(crate) fn established_at(&self) -> Option<Instant> {
        self.established_at
    }

    /// Closes this SA and its Child SAs here only, sending nothing: the peer no longer has it.
    pub(crate) fn forget(&mut self, now: Instant, reason: Reason) {
        self.clock = now;
        self.close(reason);
    }

    /// This SA lost a rekey collision: its creator deletes it, or we do after a grace period.
    pub(crate) fn mark_redundant(&mut self, now: Instant) {
        if let Standing::Contested {
            redundant_since: since @ None,
        } = &mut self.standing
        {
            *since = Some(now);
        }
    }

    /// A snapshot for status displays.
    pub fn status(&self) -> SaStatus {
        SaStatus {
            state: self.state,
            spis: (self.spi_i, self.spi_r),
            initiator: self.initiator,
            algorithms: self.keys().map(|s| s.chosen.describe()),
            established_at: self.established_at,
            rekey_at: self.ike_rekey_at,
            remote: self.remote,
            nat: self.nat,
            encap: self.encap,
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

    /// Ends the SA: its Child SAs go down with `reason`, and so does the IKE SA, reported unless it is not the
    /// peer's current one or was reported already.
    fn close(&mut self, reason: Reason) {
        self.end(reason, true);
    }

    /// Ends the SA; `report` false for one nobody authenticated (a half-open SA given up), of which there is
    /// nothing to tell.
    fn end(&mut self, reason: Reason, report: bool) {
        if self.state == State::Closed {
            return;
        }
        for c in std::mem::take(&mut self.children) {
            self.child_down(&c, reason.clone());
        }
        if report && !self.down_reported && self.standing == Standing::Current {
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
            what: Request::RekeyIke(IkeRekey {
                collision: Some(c), ..
            }),
            ..
        }) = &self.outstanding
        {
            self.doomed = Some((c.local_spi, self.clock));
        }
    }

    /// Reports a Child SA gone, for the driver to remove.
    fn child_down(&mut self, c: &Child, reason: Reason) {
        let e = c.down(&self.cfg.name, reason);
        self.events.push_back(e);
    }

    /// Reports a Child SA that never came up (either side refused it, or its answer was unusable): nothing to
    /// remove, the IKE SA stays.
    fn child_refused(&mut self, reason: Reason) {
        self.events.push_back(Event::ChildDown {
            peer: self.cfg.name.clone(),
            spi_in: 0,
            spi_out: 0,
            reason,
            refused: true,
        });
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
}
