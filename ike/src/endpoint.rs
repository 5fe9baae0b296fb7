//! All IKE SAs of one daemon: demultiplexes datagrams by SPI, answers new IKE_SA_INIT requests (with cookies
//! under load), and collects what every SA wants sent or reported.
//!
//! An IKE SA rekey (RFC 7296 2.18) creates a new IKE SA with new SPIs: the endpoint files it under our new SPI,
//! moves Child SAs to the survivor of a rekey collision, and keeps the old SA reachable under its own SPI until
//! its delete completes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::config::PeerConfig;
use crate::crypto::auth;
use crate::event::{Event, Reason, Transmit};
use crate::message::{self, ExchangeType, Flags, Header, Notify, Payload};
use crate::notify as n;
use crate::ratelimit::TokenBucket;
use crate::sa::{IkeSa, InitOutcome, SaStatus, State, IKE_PORT};
use crate::suite;

/// How long a duplicate IKE SA is left alone before its initiator deletes it. A strongSwan peer resolves
/// duplicates itself (uniqueids: a new IKE SA with the same identities replaces the old one); waiting lets its
/// delete arrive first, so that both ends never delete one SA each and end up with none.
pub const DUPLICATE_GRACE: Duration = Duration::from_secs(1);

/// IKE_SA_INIT pressure (half-open SAs, plus requests from configured peer addresses in the last one or two
/// [`COOKIE_PRESSURE_WINDOW`]s) above which new initiators must return a cookie (RFC 7296 2.6).
pub const DEFAULT_COOKIE_THRESHOLD: usize = 32;

/// The window over which IKE_SA_INIT requests count towards [`DEFAULT_COOKIE_THRESHOLD`]: a flood of requests
/// that are refused (bad proposal, bad KE) or dropped makes cookies mandatory just as half-open SAs do.
pub const COOKIE_PRESSURE_WINDOW: Duration = Duration::from_secs(10);

/// Half-open responder SAs at most, all source addresses together. Beyond it new IKE_SA_INIT requests are
/// dropped (cookies are demanded long before, at [`DEFAULT_COOKIE_THRESHOLD`]).
pub const MAX_HALF_OPEN: usize = 256;

/// Half-open responder SAs at most per source address (a NATed peer may have a few in flight).
pub const MAX_HALF_OPEN_PER_ADDR: usize = 8;

/// IKE SAs one peer may hold with us (all states, replaced ones whose delete is under way included) before its
/// new IKE_SA_INIT requests are dropped: with a mesh-wide PSK any member can authenticate as any other, and each
/// IKE SA it completes would otherwise stay until dead-peer detection removes it. A restarting peer needs two
/// or three (its old SA lingers until our liveness check gives up on it), a rekey collision four.
pub const MAX_IKE_SAS_PER_PEER: usize = 16;

/// The largest IKE_SA_INIT request we keep in a half-open SA (it is signed later, so it must be kept whole).
/// Genuine ones are about 1 KiB even with MODP-3072 and several proposals.
pub const MAX_INIT_REQUEST_LEN: usize = 16 * 1024;

/// Answers to IKE_SA_INIT requests (COOKIE, refusals, new SAs) per source address: a burst of this many, then
/// one per [`INIT_ANSWER_INTERVAL_PER_ADDR`] (10 per second). Requests above it are dropped unanswered.
pub const INIT_ANSWER_BURST_PER_ADDR: u32 = 20;
/// See [`INIT_ANSWER_BURST_PER_ADDR`].
pub const INIT_ANSWER_INTERVAL_PER_ADDR: Duration = Duration::from_millis(100);
/// Answers to IKE_SA_INIT requests from all addresses together: a burst of this many, then one per
/// [`INIT_ANSWER_INTERVAL`] (100 per second).
pub const INIT_ANSWER_BURST: u32 = 200;
/// See [`INIT_ANSWER_BURST`].
pub const INIT_ANSWER_INTERVAL: Duration = Duration::from_millis(10);
/// New half-open SAs (each costs one key generation and one key agreement) from all addresses together: a
/// burst of this many, then one per [`KEY_EXCHANGE_INTERVAL`] (50 per second: about 1 CPU-second per second
/// with MODP-3072, 10 ms with X25519).
pub const KEY_EXCHANGE_BURST: u32 = 64;
/// See [`KEY_EXCHANGE_BURST`].
pub const KEY_EXCHANGE_INTERVAL: Duration = Duration::from_millis(20);

/// How long a cookie secret is used before a new one replaces it; the previous one is still accepted for as
/// long again, so a cookie handed out just before a rotation stays good for a retry.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(300);

/// IkeDown events caused by unauthenticated requests (refused IKE_SA_INIT proposals, failed IKE_AUTH on a
/// half-open SA), per peer: one per this interval; the next one says how many were not reported.
pub const UNAUTHENTICATED_EVENT_INTERVAL: Duration = Duration::from_secs(60);

/// What the endpoint did with unauthenticated IKE_SA_INIT traffic, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// IKE_SA_INIT requests from addresses that are no configured peer's: dropped.
    pub unknown_source: u64,
    /// COOKIE answers sent.
    pub cookies_sent: u64,
    /// Requests with a valid cookie.
    pub cookies_valid: u64,
    /// Stateless refusals sent (NO_PROPOSAL_CHOSEN, INVALID_KE_PAYLOAD, INVALID_SYNTAX).
    pub refused: u64,
    /// Requests dropped by the answer rate limits.
    pub rate_limited: u64,
    /// Requests dropped because the half-open caps were reached (or the request was too large to keep).
    pub capped: u64,
    /// Key exchanges done for IKE_SA_INIT requests (one key generation and agreement each).
    pub key_exchanges: u64,
    /// Half-open SAs created.
    pub half_open_created: u64,
    /// Half-open SAs that expired without IKE_AUTH.
    pub half_open_expired: u64,
    /// Half-open SAs without a cookie dropped to make room for a cookie-proven request.
    pub evicted: u64,
    /// Events about unauthenticated requests left out by [`UNAUTHENTICATED_EVENT_INTERVAL`].
    pub events_suppressed: u64,
}

/// Requests counted per [`COOKIE_PRESSURE_WINDOW`]: the current window and the one before.
#[derive(Debug)]
struct Pressure {
    start: Option<Instant>,
    current: usize,
    previous: usize,
}

impl Pressure {
    fn roll(&mut self, now: Instant) {
        let start = *self.start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= COOKIE_PRESSURE_WINDOW * 2 {
            self.previous = 0;
            self.current = 0;
            self.start = Some(now);
        } else if elapsed >= COOKIE_PRESSURE_WINDOW {
            self.previous = self.current;
            self.current = 0;
            self.start = Some(start + COOKIE_PRESSURE_WINDOW);
        }
    }

    fn count(&mut self, now: Instant) -> usize {
        self.roll(now);
        self.current = self.current.saturating_add(1);
        self.current.saturating_add(self.previous)
    }
}

/// The secrets cookies are made with: the current one and the one it replaced.
struct CookieSecrets {
    current: Zeroizing<[u8; 32]>,
    previous: Zeroizing<[u8; 32]>,
    since: Option<Instant>,
}

impl CookieSecrets {
    fn new() -> CookieSecrets {
        let mut current = Zeroizing::new([0u8; 32]);
        let mut previous = Zeroizing::new([0u8; 32]);
        suite::fill_random(&mut current[..]);
        suite::fill_random(&mut previous[..]);
        CookieSecrets {
            current,
            previous,
            since: None,
        }
    }

    //= https://www.rfc-editor.org/rfc/rfc7296#section-2.6
    //# the responder should change the value of <secret> frequently, especially if under attack.
    fn rotate(&mut self, now: Instant) {
        let since = *self.since.get_or_insert(now);
        let age = now.saturating_duration_since(since);
        if age >= COOKIE_SECRET_LIFETIME {
            // Idle for two lifetimes: the previous secret is as stale as the current one.
            self.previous = if age >= COOKIE_SECRET_LIFETIME * 2 {
                let mut fresh = Zeroizing::new([0u8; 32]);
                suite::fill_random(&mut fresh[..]);
                fresh
            } else {
                self.current.clone()
            };
            suite::fill_random(&mut self.current[..]);
            self.since = Some(now);
        }
    }
}

/// The IKE side of a daemon.
pub struct Endpoint {
    peers: Vec<Arc<PeerConfig>>,
    /// Configured peers by address: the only sources whose IKE_SA_INIT requests are answered.
    by_addr: HashMap<IpAddr, Arc<PeerConfig>>,
    /// Our SAs and authenticated ones, by our SPI.
    sas: HashMap<u64, IkeSa>,
    /// Half-open responder SAs, by our SPI: kept apart, so that nothing an unauthenticated sender creates is
    /// taken for the peer's SA or scanned on every event.
    half_open: HashMap<u64, IkeSa>,
    /// Expiry of half-open SAs, oldest first (all live [`crate::sa::HALF_OPEN_TIMEOUT`]); entries of SAs gone
    /// meanwhile are skipped.
    half_open_expiry: VecDeque<(Instant, u64)>,
    /// Half-open SAs per source address.
    half_open_per_addr: HashMap<IpAddr, usize>,
    /// Half-open SAs whose request returned a valid cookie (see [`Endpoint::evict_unproven`]).
    half_open_proven: HashSet<u64>,
    /// Half-open SAs by the initiator's SPI and address, to recognise retransmitted IKE_SA_INIT requests.
    by_init: HashMap<(u64, SocketAddr), u64>,
    cookie_secrets: CookieSecrets,
    cookie_threshold: usize,
    pressure: Pressure,
    /// Answers per configured peer address.
    answer_limit_per_addr: HashMap<IpAddr, TokenBucket>,
    answer_limit: TokenBucket,
    key_exchange_limit: TokenBucket,
    /// Reports about unauthenticated requests, per peer name, and how many were left out since the last one.
    unauthenticated_events: HashMap<String, (TokenBucket, u64)>,
    stats: Stats,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Peers with more than one established IKE SA, since when (see [`Endpoint::resolve_duplicates`]).
    duplicates: HashMap<String, Instant>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("peers", &self.peers.len())
            .field("sas", &self.sas.len())
            .field("half_open", &self.half_open.len())
            .finish_non_exhaustive()
    }
}

fn index_by_addr(peers: &[Arc<PeerConfig>]) -> HashMap<IpAddr, Arc<PeerConfig>> {
    // The first peer with an address wins, as the linear search did before.
    let mut m = HashMap::with_capacity(peers.len());
    for p in peers {
        m.entry(p.remote_addr).or_insert_with(|| p.clone());
    }
    m
}

impl Endpoint {
    /// An endpoint that accepts and initiates IKE SAs with these peers.
    pub fn new(peers: Vec<Arc<PeerConfig>>) -> Endpoint {
        Endpoint {
            by_addr: index_by_addr(&peers),
            peers,
            sas: HashMap::new(),
            half_open: HashMap::new(),
            half_open_expiry: VecDeque::new(),
            half_open_per_addr: HashMap::new(),
            half_open_proven: HashSet::new(),
            by_init: HashMap::new(),
            cookie_secrets: CookieSecrets::new(),
            cookie_threshold: DEFAULT_COOKIE_THRESHOLD,
            pressure: Pressure {
                start: None,
                current: 0,
                previous: 0,
            },
            answer_limit_per_addr: HashMap::new(),
            answer_limit: TokenBucket::new(INIT_ANSWER_BURST, INIT_ANSWER_INTERVAL),
            key_exchange_limit: TokenBucket::new(KEY_EXCHANGE_BURST, KEY_EXCHANGE_INTERVAL),
            unauthenticated_events: HashMap::new(),
            stats: Stats::default(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            duplicates: HashMap::new(),
        }
    }

    /// Sets the IKE_SA_INIT pressure that triggers cookies (0: always demand one).
    pub fn set_cookie_threshold(&mut self, n: usize) {
        self.cookie_threshold = n;
    }

    /// What happened to unauthenticated IKE_SA_INIT traffic so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The configured peers.
    pub fn peers(&self) -> &[Arc<PeerConfig>] {
        &self.peers
    }

    /// Replaces the peer list (reload). SAs of peers no longer present are deleted.
    pub fn set_peers(&mut self, now: Instant, peers: Vec<Arc<PeerConfig>>) {
        let gone: Vec<u64> = self
            .sas
            .iter()
            .filter(|(_, sa)| !peers.iter().any(|p| p.name == sa.config().name))
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(sa) = self.sas.get_mut(&k) {
                sa.delete(now);
            }
        }
        // Half-open SAs hold the old configuration: let a new request start over with the new one.
        let half_open: Vec<u64> = self.half_open.keys().copied().collect();
        for k in half_open {
            self.drop_half_open(k);
        }
        self.by_addr = index_by_addr(&peers);
        self.answer_limit_per_addr
            .retain(|a, _| peers.iter().any(|p| p.remote_addr == *a));
        self.unauthenticated_events
            .retain(|name, _| peers.iter().any(|p| p.name == *name));
        self.peers = peers;
        self.collect();
    }

    /// Starts an IKE SA with the named peer. Returns its SPI, or `None` for an unknown name.
    pub fn connect(&mut self, now: Instant, peer: &str) -> Option<u64> {
        let cfg = self.peers.iter().find(|p| p.name == peer)?.clone();
        let sa = IkeSa::initiate(cfg, now);
        let spi = sa.local_spi();
        self.sas.insert(spi, sa);
        self.collect();
        Some(spi)
    }

    /// True if an IKE SA with this peer exists in any state but closed. Half-open responder SAs do not count:
    /// anyone who can send from the peer's address makes one, and it must not keep us from initiating.
    pub fn has_sa(&self, peer: &str) -> bool {
        self.sas
            .values()
            .any(|sa| sa.config().name == peer && sa.state() != State::Closed)
    }

    /// Status of every current SA: (peer name, status). IKE SAs a rekey replaced are left out while their
    /// delete completes, and so are half-open responder SAs (see [`Endpoint::half_open_count`]).
    pub fn status(&self) -> Vec<(String, SaStatus)> {
        self.sas
            .values()
            .filter(|sa| !sa.is_superseded())
            .map(|sa| (sa.config().name.clone(), sa.status()))
            .collect()
    }

    /// How many IKE SAs are held, including replaced ones whose delete is still under way and half-open ones.
    pub fn sa_count(&self) -> usize {
        self.sas.len() + self.half_open.len()
    }

    /// How many half-open responder SAs are held (IKE_SA_INIT answered, no IKE_AUTH yet).
    pub fn half_open_count(&self) -> usize {
        self.half_open.len()
    }

    /// Asks for the Child SA with inbound SPI `spi_in` to be rekeyed now (see [`IkeSa::rekey_child_now`]);
    /// false if no IKE SA holds it.
    pub fn rekey_child_now(&mut self, now: Instant, spi_in: u32) -> bool {
        self.sas
            .values_mut()
            .any(|sa| sa.rekey_child_now(now, spi_in))
    }

    /// Deletes every IKE SA (shutdown).
    pub fn delete_all(&mut self, now: Instant) {
        for sa in self.sas.values_mut() {
            sa.delete(now);
        }
        let half_open: Vec<u64> = self.half_open.keys().copied().collect();
        for k in half_open {
            self.drop_half_open(k);
        }
        self.collect();
    }

    /// Deletes the IKE SAs with one peer.
    pub fn delete_peer(&mut self, now: Instant, peer: &str) {
        for sa in self.sas.values_mut().filter(|sa| sa.config().name == peer) {
            sa.delete(now);
        }
        let half_open: Vec<u64> = self
            .half_open
            .iter()
            .filter(|(_, sa)| sa.config().name == peer)
            .map(|(k, _)| *k)
            .collect();
        for k in half_open {
            self.drop_half_open(k);
        }
        self.collect();
    }

    /// True when no SA is waiting for anything (all deleted). Half-open SAs wait for nothing of ours.
    pub fn is_idle(&self) -> bool {
        self.sas.values().all(|sa| sa.state() == State::Closed)
    }

    /// Handles a datagram received on `local_port` (the non-ESP marker already removed on 4500).
    pub fn handle(&mut self, now: Instant, data: &[u8], from: SocketAddr, local_port: u16) {
        let Ok(h) = Header::parse(data) else { return };
        if h.exchange == ExchangeType::IKE_SA_INIT && !h.flags.response() && h.spi_r == 0 {
            self.handle_new(now, data, &h, from);
        } else {
            let ours = if h.flags.initiator() {
                h.spi_r
            } else {
                h.spi_i
            };
            if let Some(sa) = self.sas.get_mut(&ours) {
                sa.handle(now, data, from, local_port);
            } else if let Some(sa) = self.half_open.get_mut(&ours) {
                sa.handle(now, data, from, local_port);
                self.settle_half_open(ours);
                if !self.sas.contains_key(&ours) {
                    // Still half-open or gone: nothing else changed.
                    return;
                }
            } else {
                //= https://www.rfc-editor.org/rfc/rfc7296#section-2.21.4
                //# If a node receives a message on UDP port 500 or 4500 outside the context of an IKE SA known to
                //# it (and the message is not a request to start an IKE SA), this may be the result of a recent
                //# crash
                // We stay silent to such messages: answering unauthenticated INVALID_IKE_SPI would make us a
                // reflector. Nothing changed either: no SA is scanned, nothing allocated.
                return;
            }
        }
        self.collect();
        self.resolve_duplicates(now);
    }

    /// Takes an answer token for `addr` and a global one; false: drop the request unanswered.
    fn answer_allowed(&mut self, now: Instant, addr: IpAddr) -> bool {
        let b = self.answer_limit_per_addr.entry(addr).or_insert_with(|| {
            TokenBucket::new(INIT_ANSWER_BURST_PER_ADDR, INIT_ANSWER_INTERVAL_PER_ADDR)
        });
        let allowed = b.peek(now) && self.answer_limit.take(now) && b.take(now);
        if !allowed {
            self.stats.rate_limited += 1;
        }
        allowed
    }

    /// True if `addr` has no answer token left: its next request is asked for a cookie instead of dropped.
    fn per_addr_exhausted(&self, now: Instant, addr: IpAddr) -> bool {
        self.answer_limit_per_addr
            .get(&addr)
            .is_some_and(|b| !b.peek(now))
    }

    /// Takes a global answer token only (for COOKIE answers); false: drop the request unanswered.
    fn global_answer_allowed(&mut self, now: Instant) -> bool {
        let allowed = self.answer_limit.take(now);
        if !allowed {
            self.stats.rate_limited += 1;
        }
        allowed
    }

    /// Makes room for a cookie-proven request from `addr` when a half-open cap is full: drops the oldest
    /// half-open SA that never proved a cookie, from `addr` (or, with `any_addr`, from any address). A returned
    /// cookie proves its sender receives at the address; a request without one may be forged by anyone, and
    /// must not keep one that is proven out. False if there is none to drop.
    fn evict_unproven(&mut self, addr: IpAddr, any_addr: bool) -> bool {
        let victim = self.half_open_expiry.iter().find_map(|(_, spi)| {
            let sa = self.half_open.get(spi)?;
            let ok = !self.half_open_proven.contains(spi)
                && (any_addr || sa.remote_at_init().ip() == addr);
            ok.then_some(*spi)
        });
        match victim {
            Some(spi) => {
                self.drop_half_open(spi);
                self.stats.evicted += 1;
                true
            }
            None => false,
        }
    }

    /// An IKE_SA_INIT request without a responder SPI. Everything before the key exchange is cheap and bounded:
    /// the source must be a configured peer's address, answers are rate-limited, cookies are demanded under
    /// pressure, the request is validated completely, and the half-open caps are checked; only then is a key
    /// generated.
    fn handle_new(&mut self, now: Instant, data: &[u8], h: &Header, from: SocketAddr) {
        let Some(cfg) = self.by_addr.get(&from.ip()).cloned() else {
            self.stats.unknown_source += 1;
            return;
        };
        let pressure = self
            .pressure
            .count(now)
            .saturating_add(self.half_open.len());
        self.cookie_secrets.rotate(now);
        if let Some(spi) = self.by_init.get(&(h.spi_i, from)).copied() {
            // A retransmission: answered from the half-open SA's cache, within the rate limits.
            if self.answer_allowed(now, from.ip()) {
                if let Some(sa) = self.half_open.get_mut(&spi) {
                    sa.handle(now, data, from, IKE_PORT);
                }
                self.settle_half_open(spi);
            }
            return;
        }
        let Ok(parsed) = message::parse(data) else {
            return;
        };
        let mut cookie_ok = false;
        // Cookies are demanded under pressure, and from an address that already holds a half-open SA or has used
        // up its answer allowance: a sender forging requests "from" a peer's address then keeps neither its
        // half-open slots nor its answers from the peer, which returns the cookie and gets in.
        let holds_half_open = self.half_open_per_addr.contains_key(&from.ip());
        if pressure >= self.cookie_threshold
            || holds_half_open
            || self.per_addr_exhausted(now, from.ip())
        {
            let Some(ni) = parsed.payloads.iter().find_map(|p| match p {
                Payload::Nonce(x) => Some(x),
                _ => None,
            }) else {
                return;
            };
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.6
            //# When one party receives an IKE_SA_INIT request containing a cookie whose contents do not match the
            //# value expected, that party MUST ignore the cookie and process the message as if no cookie had been
            //# included; usually this means sending a response containing a new cookie.
            // Compared in constant time, against the current secret and the previous one.
            let presented = match parsed.payloads.first() {
                Some(Payload::Notify(x)) if x.ntype == n::COOKIE => Some(&x.data[..]),
                _ => None,
            };
            let secrets = [
                &*self.cookie_secrets.current,
                &*self.cookie_secrets.previous,
            ];
            cookie_ok =
                presented.is_some_and(|c| auth::verify_cookie(&secrets, c, ni, from.ip(), h.spi_i));
            if !cookie_ok {
                // A COOKIE answer is smaller than the request (no amplification) and costs one hash: only the
                // global limit applies. A per-address limit would be keyed by the claimed source, so that an
                // off-path sender forging requests "from" a peer could use up the peer's allowance and keep it
                // from ever getting a cookie.
                if !self.global_answer_allowed(now) {
                    return;
                }
                let cookie = auth::cookie(&self.cookie_secrets.current, ni, from.ip(), h.spi_i);
                let mut hdr = *h;
                hdr.flags = Flags(Flags::RESPONSE);
                let resp =
                    message::encode_plain(hdr, &[Payload::Notify(Notify::new(n::COOKIE, cookie))]);
                self.stats.cookies_sent += 1;
                self.transmits.push_back(Transmit {
                    remote: from,
                    local_port: IKE_PORT,
                    data: resp,
                });
                return;
            }
            self.stats.cookies_valid += 1;
        }
        // A returned cookie proves the sender receives at this address: its request is answered without the
        // answer limits (the key exchange limit below still applies). Others take a token of their address and a
        // global one.
        if !cookie_ok && !self.answer_allowed(now, from.ip()) {
            return;
        }
        let valid = match IkeSa::validate_init(&cfg, data, from) {
            Ok(v) => v,
            Err(Some(InitOutcome::Refused(t, reason))) => {
                self.stats.refused += 1;
                self.transmits.push_back(t);
                if let Some(reason) = reason {
                    self.unauthenticated_event(now, &cfg.name, reason);
                }
                return;
            }
            Err(_) => return,
        };
        let per_addr = self
            .half_open_per_addr
            .get(&from.ip())
            .copied()
            .unwrap_or(0);
        // A cookie-proven request meeting a full cap takes the place of an unproven half-open SA.
        if cookie_ok && per_addr >= MAX_HALF_OPEN_PER_ADDR {
            self.evict_unproven(from.ip(), false);
        }
        if cookie_ok
            && self.half_open.len() >= MAX_HALF_OPEN
            && !self.evict_unproven(from.ip(), false)
        {
            self.evict_unproven(from.ip(), true);
        }
        let per_addr = self
            .half_open_per_addr
            .get(&from.ip())
            .copied()
            .unwrap_or(0);
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.6
        //# An expected attack against IKE is state and CPU exhaustion, where the target is flooded with session
        //# initiation requests from forged IP addresses.
        if self.half_open.len() >= MAX_HALF_OPEN
            || per_addr >= MAX_HALF_OPEN_PER_ADDR
            || valid.raw().len() > MAX_INIT_REQUEST_LEN
            // Counted only here, for a request that passed every check and limit above.
            || self.sas.values().filter(|sa| sa.config().name == cfg.name).count()
                >= MAX_IKE_SAS_PER_PEER
        {
            self.stats.capped += 1;
            return;
        }
        if !self.key_exchange_limit.take(now) {
            self.stats.rate_limited += 1;
            return;
        }
        self.stats.key_exchanges += 1;
        match IkeSa::answer_init(cfg.clone(), now, valid, from) {
            Some(InitOutcome::Created(sa)) => {
                let spi = sa.local_spi();
                self.stats.half_open_created += 1;
                self.by_init.insert((h.spi_i, from), spi);
                *self.half_open_per_addr.entry(from.ip()).or_insert(0) += 1;
                self.half_open_expiry
                    .push_back((now + crate::sa::HALF_OPEN_TIMEOUT, spi));
                self.half_open.insert(spi, *sa);
                if cookie_ok {
                    self.half_open_proven.insert(spi);
                }
                self.settle_half_open(spi);
            }
            Some(InitOutcome::Refused(t, reason)) => {
                self.stats.refused += 1;
                self.transmits.push_back(t);
                if let Some(reason) = reason {
                    self.unauthenticated_event(now, &cfg.name, reason);
                }
            }
            None => {}
        }
    }

    /// Reports something an unauthenticated request caused, at most once per
    /// [`UNAUTHENTICATED_EVENT_INTERVAL`] per peer, saying how many were left out since the last report.
    fn unauthenticated_event(&mut self, now: Instant, peer: &str, reason: Reason) {
        let (bucket, suppressed) = self
            .unauthenticated_events
            .entry(peer.to_owned())
            .or_insert_with(|| (TokenBucket::new(1, UNAUTHENTICATED_EVENT_INTERVAL), 0));
        if !bucket.take(now) {
            *suppressed += 1;
            self.stats.events_suppressed += 1;
            return;
        }
        let left_out = std::mem::take(suppressed);
        let reason = if left_out == 0 {
            reason
        } else {
            let note = format!(" ({left_out} similar reports left out)");
            match reason {
                Reason::NoProposalChosen { ours, theirs } => Reason::NoProposalChosen {
                    ours,
                    theirs: theirs + &note,
                },
                Reason::AuthenticationFailed(s) => Reason::AuthenticationFailed(s + &note),
                Reason::Protocol(s) => Reason::Protocol(s + &note),
                Reason::TsUnacceptable(s) => Reason::TsUnacceptable(s + &note),
                Reason::PeerError(s) => Reason::PeerError(s + &note),
                other => other,
            }
        };
        self.events.push_back(Event::IkeDown {
            peer: peer.to_owned(),
            reason,
            unauthenticated: true,
        });
    }

    /// After a half-open SA handled something: collects what it queued, and moves it to the peer's SAs once
    /// authenticated, or forgets it once closed. Costs the same however many half-open SAs there are.
    fn settle_half_open(&mut self, spi: u64) {
        let Some(sa) = self.half_open.get_mut(&spi) else {
            return;
        };
        while let Some(t) = sa.poll_transmit() {
            self.transmits.push_back(t);
        }
        let closed = sa.state() == State::Closed;
        let mut events = Vec::new();
        while let Some(e) = sa.poll_event() {
            events.push(e);
        }
        let name = sa.config().name.clone();
        let clock = sa.clock();
        let authenticated = !closed && !sa.is_half_open();
        for e in events {
            match e {
                // An IKE_AUTH that failed on a half-open SA: the sender may not be the peer at all.
                Event::IkeDown { reason, .. } if closed => {
                    self.unauthenticated_event(clock, &name, reason)
                }
                e => self.events.push_back(e),
            }
        }
        if closed {
            self.drop_half_open(spi);
        } else if authenticated {
            if let Some(sa) = self.remove_half_open(spi) {
                self.sas.insert(spi, sa);
            }
        }
    }

    fn remove_half_open(&mut self, spi: u64) -> Option<IkeSa> {
        let sa = self.half_open.remove(&spi)?;
        self.half_open_proven.remove(&spi);
        let addr = sa.remote_at_init();
        self.by_init.remove(&(sa.spis().0, addr));
        if let Some(c) = self.half_open_per_addr.get_mut(&addr.ip()) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.half_open_per_addr.remove(&addr.ip());
            }
        }
        Some(sa)
    }

    fn drop_half_open(&mut self, spi: u64) {
        self.remove_half_open(spi);
    }

    /// When [`Endpoint::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let dup = self.duplicates.values().map(|t| *t + DUPLICATE_GRACE);
        let half_open = self.half_open_expiry.front().map(|(t, _)| *t);
        self.sas
            .values()
            .filter_map(IkeSa::poll_timeout)
            .chain(dup)
            .chain(half_open)
            .min()
    }

    /// Runs every SA's timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for sa in self.sas.values_mut() {
            if sa.poll_timeout().is_some_and(|t| t <= now) {
                sa.handle_timeout(now);
            }
        }
        // Half-open SAs expire oldest first; only the expired ones are looked at.
        while let Some((t, spi)) = self.half_open_expiry.front().copied() {
            if t > now {
                break;
            }
            self.half_open_expiry.pop_front();
            if let Some(sa) = self.half_open.get_mut(&spi) {
                sa.handle_timeout(now);
                if sa.state() == State::Closed {
                    self.stats.half_open_expired += 1;
                }
                self.settle_half_open(spi);
            }
        }
        self.collect();
        self.resolve_duplicates(now);
    }

    /// Two established IKE SAs with one peer: both ends started one at the same moment (the follower's timer
    /// fired while the leader's IKE_SA_INIT was in flight, or both ends restarted together). Both ends must
    /// keep the same one, and each SA must be deleted by one end only, so the rule depends only on what both
    /// see: keep the SA that the lower address initiated (the mesh's designated initiator), among those the
    /// lowest initiator SPI; the initiator of every other one deletes it, after [`DUPLICATE_GRACE`].
    ///
    /// Why not act on INITIAL_CONTACT instead: when two IKE_AUTH exchanges cross, each carries it, and
    /// honouring both would delete both SAs.
    fn resolve_duplicates(&mut self, now: Instant) {
        let mut by_peer: HashMap<&str, Vec<u64>> = HashMap::new();
        for (k, sa) in &self.sas {
            if sa.state() == State::Established && !sa.is_superseded() {
                by_peer.entry(&sa.config().name).or_default().push(*k);
            }
        }
        let dup_peers: Vec<String> = by_peer
            .iter()
            .filter(|(_, k)| k.len() > 1)
            .map(|(p, _)| (*p).to_owned())
            .collect();
        self.duplicates.retain(|p, _| dup_peers.contains(p));
        let mut delete = Vec::new();
        for peer in dup_peers {
            let since = *self.duplicates.entry(peer.clone()).or_insert(now);
            if now < since + DUPLICATE_GRACE {
                continue;
            }
            let Some(keys) = by_peer.get(peer.as_str()) else {
                continue;
            };
            let rank = |k: &u64| {
                self.sas.get(k).map(|sa| {
                    let cfg = sa.config();
                    let lower_initiated = if sa.is_initiator() {
                        cfg.local_addr < cfg.remote_addr
                    } else {
                        cfg.remote_addr < cfg.local_addr
                    };
                    (!lower_initiated, sa.spis().0)
                })
            };
            let keep = keys.iter().min_by_key(|k| rank(k)).copied();
            delete.extend(
                keys.iter()
                    .filter(|k| {
                        Some(**k) != keep && self.sas.get(*k).is_some_and(IkeSa::is_initiator)
                    })
                    .copied(),
            );
            self.duplicates.remove(&peer);
        }
        for k in &delete {
            if let Some(sa) = self.sas.get_mut(k) {
                sa.delete(now);
            }
        }
        if !delete.is_empty() {
            self.collect();
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

    fn collect(&mut self) {
        // A rekey creates IKE SAs (filed under their own SPI, while the old one stays reachable until its delete
        // completes) and may move Child SAs between them; the new ones can have queued messages of their own.
        loop {
            let mut spawned = Vec::new();
            let mut handoffs = Vec::new();
            let mut doomed = Vec::new();
            for sa in self.sas.values_mut() {
                spawned.extend(sa.take_spawned());
                handoffs.extend(sa.take_handoff());
                doomed.extend(sa.take_doomed());
                while let Some(t) = sa.poll_transmit() {
                    self.transmits.push_back(t);
                }
                while let Some(e) = sa.poll_event() {
                    self.events.push_back(e);
                }
            }
            if spawned.is_empty() && handoffs.is_empty() && doomed.is_empty() {
                break;
            }
            for sa in spawned {
                self.sas.insert(sa.local_spi(), sa);
            }
            for (spi, children) in handoffs {
                if let Some(sa) = self.sas.get_mut(&spi) {
                    sa.adopt(children);
                }
            }
            for (spi, when) in doomed {
                if let Some(sa) = self.sas.get_mut(&spi) {
                    sa.mark_redundant(when);
                }
            }
        }
        let closed: Vec<u64> = self
            .sas
            .iter()
            .filter(|(_, sa)| sa.state() == State::Closed)
            .map(|(k, _)| *k)
            .collect();
        for k in closed {
            self.sas.remove(&k);
        }
    }
}
