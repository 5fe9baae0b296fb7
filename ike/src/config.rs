//! What an IKE SA needs to know about its peer: identities, secret, proposals, selectors, timers.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use crate::crypto::signature::{Padding, PrivateKey, PublicKey};
use crate::crypto::x509::{Certificate, TrustAnchors};
use crate::message::{Id, TrafficSelector};

pub use crate::message::id::{display_id, id_from_addr, parse_id};
use crate::proposal::ProposalSpec;

/// How a side proves who it is.
#[derive(Clone)]
#[non_exhaustive]
pub enum AuthMethod {
    /// A pre-shared key (RFC 7296 2.15, AUTH method 2).
    Psk(Zeroizing<Vec<u8>>),
    /// RSA signatures with raw public keys: we sign with `private` (RFC 7427 Digital Signature, AUTH method 14),
    /// the peer must sign with the key `peer_public` (method 14, or the legacy method 1).
    PubKey {
        /// Our private key.
        private: PrivateKey,
        /// The padding we sign with (the peer may use either).
        padding: Padding,
        /// The key the peer's AUTH must verify with.
        peer_public: PublicKey,
    },
    /// RSA signatures with X.509 certificates (RFC 7296 3.6): we send our certificate chain in CERT payloads and
    /// ask for the peer's with CERTREQ; the peer's certificate must chain to one of `trust`, and name the peer's
    /// identity.
    Certificate {
        /// Our private key, the one our certificate certifies.
        private: PrivateKey,
        /// The padding we sign with (the peer may use either).
        padding: Padding,
        /// Our certificate first, then any intermediates the peer needs to reach its CA.
        chain: Arc<Vec<Certificate>>,
        /// The CA certificates the peer's certificate must chain to.
        trust: Arc<TrustAnchors>,
        /// The peer's certificate from the mesh file, if it names one: used when the peer sends none.
        peer_cert: Option<Arc<Certificate>>,
        /// What time it is, for the validity dates.
        clock: WallClock,
    },
}

impl AuthMethod {
    /// A name for logs: "PSK", "public key" or "certificate".
    pub fn name(&self) -> &'static str {
        match self {
            AuthMethod::Psk(_) => "PSK",
            AuthMethod::PubKey { .. } => "public key",
            AuthMethod::Certificate { .. } => "certificate",
        }
    }

    /// Our private key and padding, when we authenticate with signatures.
    pub fn signer(&self) -> Option<(&PrivateKey, Padding)> {
        match self {
            AuthMethod::Psk(_) => None,
            AuthMethod::PubKey {
                private, padding, ..
            }
            | AuthMethod::Certificate {
                private, padding, ..
            } => Some((private, *padding)),
        }
    }
}

/// Wall-clock time for certificate validity, without reading a clock in this crate: the caller pairs one
/// `Instant` with the Unix time it read at that moment, and later times follow from the `Instant`s it hands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WallClock {
    /// A moment...
    pub at: Instant,
    /// ...and the Unix time (seconds since 1970, UTC) at that moment.
    pub unix: i64,
}

impl WallClock {
    /// The Unix time at `now`.
    pub fn unix_at(&self, now: Instant) -> i64 {
        match now.checked_duration_since(self.at) {
            Some(d) => self.unix + d.as_secs() as i64,
            None => self.unix - self.at.duration_since(now).as_secs() as i64,
        }
    }
}

impl std::fmt::Debug for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthMethod::Psk(_) => f.write_str("Psk(redacted)"),
            AuthMethod::PubKey {
                private,
                padding,
                peer_public,
            } => f
                .debug_struct("PubKey")
                .field("private", private)
                .field("padding", padding)
                .field("peer_public", peer_public)
                .finish(),
            AuthMethod::Certificate { chain, trust, .. } => f
                .debug_struct("Certificate")
                .field("chain", chain)
                .field("trust", trust)
                .finish_non_exhaustive(),
        }
    }
}

/// Retransmission of our requests: `initial`, then each timeout `factor` times the previous one, `tries`
/// sends in all before the peer is declared dead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retransmit {
    /// First timeout.
    pub initial: Duration,
    /// Multiplier per retransmission.
    pub factor: f64,
    /// Total transmissions of one request, the first included.
    pub tries: u32,
}

impl Default for Retransmit {
    /// strongSwan's defaults: 4 s, times 1.8, 5 retransmissions (about 165 s before giving up).
    fn default() -> Self {
        Retransmit {
            initial: Duration::from_secs(4),
            factor: 1.8,
            tries: 6,
        }
    }
}

impl Retransmit {
    /// The timeout after the `n`-th transmission (0-based).
    pub fn timeout(&self, n: u32) -> Duration {
        self.initial.mul_f64(self.factor.powi(n as i32))
    }
}

/// Lifetimes and liveness checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lifetimes {
    /// Rekey the IKE SA after this long.
    pub ike_rekey: Duration,
    /// Delete the IKE SA (and its Child SAs) this long after it was established if no rekey has replaced it
    /// by then (zero: never). The daemon then sets up a new one.
    pub ike_lifetime: Duration,
    /// Rekey each Child SA after this long.
    pub child_rekey: Duration,
    /// Up to this much is subtracted at random from each rekey time, so both peers do not rekey at once.
    pub jitter: Duration,
    /// Send a liveness check after this long without hearing from the peer (zero: never).
    pub dpd_delay: Duration,
    /// Behind a NAT, send a NAT keepalive after this long without sending anything (zero: never).
    pub nat_keepalive: Duration,
}

impl Default for Lifetimes {
    fn default() -> Self {
        Lifetimes {
            ike_rekey: Duration::from_secs(4 * 3600),
            ike_lifetime: Duration::from_secs(4 * 3600 + 9 * 60),
            child_rekey: Duration::from_secs(3600),
            jitter: Duration::from_secs(360),
            dpd_delay: Duration::from_secs(30),
            // strongSwan's `keep_alive` default.
            nat_keepalive: Duration::from_secs(20),
        }
    }
}

/// Everything about one peer.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// A name for logs.
    pub name: String,
    /// Our underlay address.
    pub local_addr: IpAddr,
    /// The peer's underlay address.
    pub remote_addr: IpAddr,
    /// The UDP port the peer listens on for IKE (500).
    pub remote_port: u16,
    /// Our identity.
    pub local_id: Id,
    /// The identity the peer must prove.
    pub remote_id: Id,
    /// Our authentication (and, for PSK, the peer's too).
    pub auth: AuthMethod,
    /// IKE proposals, most preferred first.
    pub ike_proposals: Vec<ProposalSpec>,
    /// ESP proposals, most preferred first.
    pub esp_proposals: Vec<ProposalSpec>,
    /// Our side's traffic selectors (our VM subnets).
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's traffic selectors (its VM subnets).
    pub remote_ts: Vec<TrafficSelector>,
    /// Force UDP encapsulation of ESP even without NAT (strongSwan's `encap = yes`).
    pub force_encap: bool,
    /// `encap = "auto"`: announce vmsecd's Vendor ID ([`crate::vendor`]) in IKE_SA_INIT and carry ESP in UDP
    /// 4500 when the peer announces it too. Peers that do not know the ID ignore it and get raw ESP unless a
    /// NAT is detected.
    pub udp_with_vmsecd: bool,
    /// Retransmission policy.
    pub retransmit: Retransmit,
    /// Lifetimes.
    pub lifetimes: Lifetimes,
    /// Anti-replay window for inbound Child SAs.
    pub replay_window: u32,
    /// IKE fragmentation (RFC 7383): the largest IP datagram an encrypted IKE message may make, IP and UDP
    /// headers included (strongSwan's `fragment_size`, 1280 by default); larger messages are sent as
    /// fragments when both sides support it. Zero disables fragmentation (we then do not announce it).
    pub fragment_size: u16,
}

/// strongSwan's default `fragment_size`: the IPv6 minimum MTU, used for both address families.
pub const DEFAULT_FRAGMENT_SIZE: u16 = 1280;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retransmit_budget_is_strongswans() {
        let r = Retransmit::default();
        let total: f64 = (0..r.tries).map(|n| r.timeout(n).as_secs_f64()).sum();
        assert!((total - 165.0).abs() < 1.0, "{total}");
    }
}
