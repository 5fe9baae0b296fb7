//! Admission of unauthenticated IKE_SA_INIT requests: who is answered at all (configured peer addresses, rate
//! limits per address and overall), when a cookie is demanded (pressure over a window), how many half-open SAs
//! may exist (overall, per address, per peer) and which one gives way to a cookie-proven request, and the
//! bookkeeping of half-open SAs until they are authenticated or expire. Everything an unauthenticated sender can
//! make us hold or compute is bounded here.

use super::*;

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

/// IKE SAs one peer may hold before its IKE SA rekeys are refused (TEMPORARY_FAILURE): room for each of
/// [`MAX_IKE_SAS_PER_PEER`] to be rekeyed once while the SA it replaces waits for its delete. The rekey limit holds
/// each chain of rekeys alone, so without it a peer with that many IKE SAs held about ten times as many.
pub const MAX_IKE_SAS_PER_PEER_WITH_REKEYS: usize = 2 * MAX_IKE_SAS_PER_PEER;

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

/// Key exchanges for IKE_SA_INIT requests from one source address: a burst of this many, then one per
/// [`KEY_EXCHANGE_INTERVAL_PER_ADDR`]. A returned cookie proves only that its sender receives at the address, and
/// such a request skips the answer limits; one that fails IKE_AUTH at once frees its half-open slot, so without
/// this a sender at one mesh member's address (the member itself, or anyone on its path) could take every key
/// exchange of [`KEY_EXCHANGE_BURST`] and keep all other peers out. A peer needs one per IKE SA it starts with
/// us (a few in a simultaneous start, and at most [`MAX_IKE_SAS_PER_PEER`] of them stay); the burst is twice
/// [`MAX_HALF_OPEN_PER_ADDR`], so that the peer's own request still gets in at once after a sender on its path
/// filled its half-open slots (it replaces one that proved no cookie).
pub const KEY_EXCHANGE_BURST_PER_ADDR: u32 = 2 * MAX_HALF_OPEN_PER_ADDR as u32;
/// See [`KEY_EXCHANGE_BURST_PER_ADDR`].
pub const KEY_EXCHANGE_INTERVAL_PER_ADDR: Duration = Duration::from_secs(1);

/// COOKIE answers per claimed source address: a burst of this many, then one per
/// [`COOKIE_ANSWER_INTERVAL_PER_ADDR`] (100 per second), and no limit over all addresses. Only configured peer
/// addresses are answered, so a forger must claim a member's; with a limit over all addresses (as before: 100/s
/// in all), forging 1,000 requests a second "from" one member took every COOKIE answer and kept every other
/// peer out. Per address, the forger competes with that address alone. What we send stays bounded: a COOKIE
/// answer is smaller than the request that asked for it (nothing to amplify), at most this rate reaches any one
/// address, and computing one costs a hash.
pub const COOKIE_ANSWER_BURST_PER_ADDR: u32 = 100;
/// See [`COOKIE_ANSWER_BURST_PER_ADDR`].
pub const COOKIE_ANSWER_INTERVAL_PER_ADDR: Duration = Duration::from_millis(10);

/// How long a cookie secret is used before a new one replaces it; the previous one is still accepted for as
/// long again, so a cookie handed out just before a rotation stays good for a retry.
pub const COOKIE_SECRET_LIFETIME: Duration = Duration::from_secs(300);

/// IkeDown events caused by unauthenticated requests (refused IKE_SA_INIT proposals, failed IKE_AUTH on a
/// half-open SA), per peer: one per this interval; the next one says how many were not reported.
pub const UNAUTHENTICATED_EVENT_INTERVAL: Duration = Duration::from_secs(60);

/// Requests counted per [`COOKIE_PRESSURE_WINDOW`]: the current window and the one before.
#[derive(Debug)]
pub(super) struct Pressure {
    pub(super) start: Option<Instant>,
    pub(super) current: usize,
    pub(super) previous: usize,
}

impl Pressure {
    pub(super) fn roll(&mut self, now: Instant) {
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

    /// The pressure [`Pressure::count`] would see at `now`, without counting a request.
    pub(super) fn peek(&self, now: Instant) -> usize {
        let Some(start) = self.start else { return 0 };
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= COOKIE_PRESSURE_WINDOW * 2 {
            0
        } else if elapsed >= COOKIE_PRESSURE_WINDOW {
            self.current
        } else {
            self.current.saturating_add(self.previous)
        }
    }

    pub(super) fn count(&mut self, now: Instant) -> usize {
        self.roll(now);
        self.current = self.current.saturating_add(1);
        self.current.saturating_add(self.previous)
    }
}

/// The secrets cookies are made with: the current one and the one it replaced.
pub(super) struct CookieSecrets {
    current: Zeroizing<[u8; 32]>,
    previous: Zeroizing<[u8; 32]>,
    since: Option<Instant>,
}

impl CookieSecrets {
    pub(super) fn new() -> CookieSecrets {
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
    pub(super) fn rotate(&mut self, now: Instant) {
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

impl Endpoint {
    /// Takes an answer token for `addr` and a global one; false: drop the request unanswered.
    pub(super) fn answer_allowed(&mut self, now: Instant, addr: IpAddr) -> bool {
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
    pub(super) fn per_addr_exhausted(&self, now: Instant, addr: IpAddr) -> bool {
        self.answer_limit_per_addr
            .get(&addr)
            .is_some_and(|b| !b.peek(now))
    }

    /// Takes a COOKIE answer token of `addr` (see [`COOKIE_ANSWER_BURST_PER_ADDR`]); false: drop the request
    /// unanswered.
    pub(super) fn cookie_answer_allowed(&mut self, now: Instant, addr: IpAddr) -> bool {
        let allowed = self
            .cookie_limit_per_addr
            .entry(addr)
            .or_insert_with(|| {
                TokenBucket::new(
                    COOKIE_ANSWER_BURST_PER_ADDR,
                    COOKIE_ANSWER_INTERVAL_PER_ADDR,
                )
            })
            .take(now);
        if !allowed {
            self.stats.rate_limited += 1;
        }
        allowed
    }

    /// Makes room for a cookie-proven request from `addr` when a half-open cap is full: drops the oldest
    /// half-open SA that never proved a cookie, from `addr` (or, with `any_addr`, from any address). A returned
    /// cookie proves its sender receives at the address; a request without one may be forged by anyone, and
    /// must not keep one that is proven out. False if there is none to drop.
    pub(super) fn evict_unproven(&mut self, addr: IpAddr, any_addr: bool) -> bool {
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
    pub(super) fn handle_new(&mut self, now: Instant, data: &[u8], h: &Header, from: SocketAddr) {
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
                // A COOKIE answer is smaller than the request (no amplification) and costs one hash: only a
                // limit of its own per claimed address applies, not the answer limits. Keyed by the claimed
                // source, it lets a forger of a peer's address compete with that peer for it, but with no one
                // else (see COOKIE_ANSWER_BURST_PER_ADDR).
                if !self.cookie_answer_allowed(now, from.ip()) {
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
            || self.peer_sa_count(&cfg.name) >= MAX_IKE_SAS_PER_PEER
        {
            self.stats.capped += 1;
            return;
        }
        //= https://www.rfc-editor.org/rfc/rfc7296#section-2.6
        //# An expected attack against IKE is state and CPU exhaustion, where the target is flooded with session
        //# initiation requests from forged IP addresses.
        // And from one real address that returns its cookies: its own allowance first, then a global token.
        // Configured peer addresses only come this far, so the map holds one bucket per peer at most.
        let per_addr = self
            .key_exchange_limit_per_addr
            .entry(from.ip())
            .or_insert_with(|| {
                TokenBucket::new(KEY_EXCHANGE_BURST_PER_ADDR, KEY_EXCHANGE_INTERVAL_PER_ADDR)
            });
        if !(per_addr.peek(now) && self.key_exchange_limit.take(now) && per_addr.take(now)) {
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
    pub(super) fn unauthenticated_event(&mut self, now: Instant, peer: &str, reason: Reason) {
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
    pub(super) fn settle_half_open(&mut self, spi: u64) {
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
                self.insert_sa(spi, sa);
            }
        }
    }

    pub(super) fn remove_half_open(&mut self, spi: u64) -> Option<IkeSa> {
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

    pub(super) fn drop_half_open(&mut self, spi: u64) {
        self.remove_half_open(spi);
    }
}
