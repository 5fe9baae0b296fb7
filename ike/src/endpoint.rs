//! All IKE SAs of one daemon: demultiplexes datagrams by SPI, answers new IKE_SA_INIT requests (with cookies
//! under load), and collects what every SA wants sent or reported.
//!
//! An IKE SA rekey (RFC 7296 2.18) creates a new IKE SA with new SPIs: the endpoint files it under our new SPI,
//! moves Child SAs to the survivor of a rekey collision, and keeps the old SA reachable under its own SPI until
//! its delete completes.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::config::PeerConfig;
use crate::event::{Event, Transmit};
use crate::message::{self, ExchangeType, Flags, Header, Notify, Payload};
use crate::notify as n;
use crate::sa::{IkeSa, InitOutcome, SaStatus, State, IKE_PORT};
use crate::suite;

/// How long a duplicate IKE SA is left alone before its initiator deletes it. A strongSwan peer resolves
/// duplicates itself (uniqueids: a new IKE SA with the same identities replaces the old one); waiting lets its
/// delete arrive first, so that both ends never delete one SA each and end up with none.
pub const DUPLICATE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Half-open SAs above which new initiators must return a cookie (RFC 7296 2.6).
pub const DEFAULT_COOKIE_THRESHOLD: usize = 32;

/// The IKE side of a daemon.
pub struct Endpoint {
    peers: Vec<Arc<PeerConfig>>,
    sas: HashMap<u64, IkeSa>,
    /// Responder SAs by the initiator's SPI and address, to recognise retransmitted IKE_SA_INIT requests.
    by_init: HashMap<(u64, SocketAddr), u64>,
    cookie_secret: [u8; 32],
    cookie_threshold: usize,
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
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint that accepts and initiates IKE SAs with these peers.
    pub fn new(peers: Vec<Arc<PeerConfig>>) -> Endpoint {
        let mut cookie_secret = [0u8; 32];
        suite::fill_random(&mut cookie_secret);
        Endpoint {
            peers,
            sas: HashMap::new(),
            by_init: HashMap::new(),
            cookie_secret,
            cookie_threshold: DEFAULT_COOKIE_THRESHOLD,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            duplicates: HashMap::new(),
        }
    }

    /// Sets how many half-open SAs trigger cookies (0: always demand one).
    pub fn set_cookie_threshold(&mut self, n: usize) {
        self.cookie_threshold = n;
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

    /// True if an IKE SA with this peer exists in any state but closed.
    pub fn has_sa(&self, peer: &str) -> bool {
        self.sas
            .values()
            .any(|sa| sa.config().name == peer && sa.state() != State::Closed)
    }

    /// Status of every current SA: (peer name, status). IKE SAs a rekey replaced are left out while their
    /// delete completes.
    pub fn status(&self) -> Vec<(String, SaStatus)> {
        self.sas
            .values()
            .filter(|sa| !sa.is_superseded())
            .map(|sa| (sa.config().name.clone(), sa.status()))
            .collect()
    }

    /// How many IKE SAs are held, including replaced ones whose delete is still under way.
    pub fn sa_count(&self) -> usize {
        self.sas.len()
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
        self.collect();
    }

    /// Deletes the IKE SAs with one peer.
    pub fn delete_peer(&mut self, now: Instant, peer: &str) {
        for sa in self.sas.values_mut().filter(|sa| sa.config().name == peer) {
            sa.delete(now);
        }
        self.collect();
    }

    /// True when no SA is waiting for anything (all deleted).
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
            }
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.21.4
            //# If a node receives a message on UDP port 500 or 4500 outside the context of an IKE SA known to it
            //# (and the message is not a request to start an IKE SA), this may be the result of a recent crash
            // We stay silent to such messages: answering unauthenticated INVALID_IKE_SPI would make us a reflector.
        }
        self.collect();
        self.resolve_duplicates(now);
    }

    fn handle_new(&mut self, now: Instant, data: &[u8], h: &Header, from: SocketAddr) {
        if let Some(spi) = self.by_init.get(&(h.spi_i, from)) {
            if let Some(sa) = self.sas.get_mut(spi) {
                sa.handle(now, data, from, IKE_PORT);
                return;
            }
        }
        let Some(cfg) = self
            .peers
            .iter()
            .find(|p| p.remote_addr == from.ip())
            .cloned()
        else {
            return;
        };
        let half_open = self
            .sas
            .values()
            .filter(|sa| sa.state() == State::AwaitingAuth)
            .count();
        if half_open >= self.cookie_threshold {
            let Ok(parsed) = message::parse(data) else {
                return;
            };
            let ni = parsed.payloads.iter().find_map(|p| {
                if let Payload::Nonce(x) = p {
                    Some(x.clone())
                } else {
                    None
                }
            });
            let Some(ni) = ni else { return };
            let expected = suite::cookie(&self.cookie_secret, &ni, from.ip(), h.spi_i);
            //= https://www.rfc-editor.org/rfc/rfc7296#section-2.6
            //# When one party receives an IKE_SA_INIT request containing a cookie whose contents do not match the
            //# value expected, that party MUST ignore the cookie and process the message as if no cookie had been
            //# included; usually this means sending a response containing a new cookie.
            let presented = match parsed.payloads.first() {
                Some(Payload::Notify(x)) if x.ntype == n::COOKIE => Some(x.data.clone()),
                _ => None,
            };
            if presented.as_deref() != Some(&expected[..]) {
                let mut hdr = *h;
                hdr.flags = Flags(Flags::RESPONSE);
                let resp = message::encode_plain(
                    hdr,
                    &[Payload::Notify(Notify::new(n::COOKIE, expected))],
                );
                self.transmits.push_back(Transmit {
                    remote: from,
                    local_port: IKE_PORT,
                    data: resp,
                });
                return;
            }
        }
        match IkeSa::respond_init(cfg.clone(), now, data, from) {
            Some(InitOutcome::Created(sa)) => {
                let spi = sa.local_spi();
                self.by_init.insert((h.spi_i, from), spi);
                self.sas.insert(spi, *sa);
            }
            Some(InitOutcome::Refused(t, reason)) => {
                self.transmits.push_back(t);
                if let Some(reason) = reason {
                    self.events.push_back(Event::IkeDown {
                        peer: cfg.name.clone(),
                        reason,
                    });
                }
            }
            None => {}
        }
    }

    /// When [`Endpoint::handle_timeout`] must run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let dup = self.duplicates.values().map(|t| *t + DUPLICATE_GRACE);
        self.sas
            .values()
            .filter_map(IkeSa::poll_timeout)
            .chain(dup)
            .min()
    }

    /// Runs every SA's timers that are due.
    pub fn handle_timeout(&mut self, now: Instant) {
        for sa in self.sas.values_mut() {
            if sa.poll_timeout().is_some_and(|t| t <= now) {
                sa.handle_timeout(now);
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
            let keys = &by_peer[peer.as_str()];
            let rank = |k: &u64| {
                let sa = &self.sas[k];
                let cfg = sa.config();
                let lower_initiated = if sa.is_initiator() {
                    cfg.local_addr < cfg.remote_addr
                } else {
                    cfg.remote_addr < cfg.local_addr
                };
                (!lower_initiated, sa.spis().0)
            };
            let keep = keys.iter().min_by_key(|k| rank(k)).copied();
            delete.extend(
                keys.iter()
                    .filter(|k| Some(**k) != keep && self.sas[*k].is_initiator())
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
        self.by_init.retain(|_, spi| self.sas.contains_key(spi));
    }
}
