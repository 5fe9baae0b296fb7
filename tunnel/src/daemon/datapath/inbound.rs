//! The inbound half of the datapath, on the daemon's task (which receives all ESP: one peer's ESP arrives on one
//! UDP flow, which the kernel cannot spread over sockets): the SAD, the policy each inbound SA enforces on the
//! inner packets it delivers (its traffic selectors), and the inbound SAs of rekeyed Child SAs that linger a
//! while after their delete.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use esp::{InboundSa, PacketBuf, Sad};
use ike::message::TrafficSelector;

use crate::wire::{dst_addr, icmp_error_quote, src_addr, IcmpQuote};

pub(super) struct InPolicy {
    pub(super) peer: Option<usize>,
    pub(super) ts_local: Vec<TrafficSelector>,
    pub(super) ts_remote: Vec<TrafficSelector>,
}

impl InPolicy {
    /// Whether a packet from `src` to `dst` may arrive on the SA: from the peer's selectors to ours.
    fn covers(&self, src: IpAddr, dst: IpAddr) -> bool {
        self.ts_remote.iter().any(|t| t.contains_addr(src))
            && self.ts_local.iter().any(|t| t.contains_addr(dst))
    }

    /// Whether an ICMP error may arrive on the SA: the packet it quotes must be one that left on it, from our
    /// selectors to the peer's. Otherwise a peer could report errors about flows between our VMs and other
    /// hosts (an unreachable port that resets a connected UDP socket, a Packet Too Big that shrinks the path
    /// MTU towards another host's VMs), which the VMs' stacks believe from any router on the path. RFC 4301
    /// 6.1.1.1 asks for this check of ICMP error messages received on an SA; Linux XFRM makes it in
    /// icmp_rcv (xfrm4_policy_check_reverse on the quoted header) and drops an error it cannot read.
    fn covers_quote(&self, inner: &[u8]) -> bool {
        match icmp_error_quote(inner) {
            IcmpQuote::NotAnError => true,
            IcmpQuote::Quotes { src, dst } => {
                self.ts_local.iter().any(|t| t.contains_addr(src))
                    && self.ts_remote.iter().any(|t| t.contains_addr(dst))
            }
            IcmpQuote::Unreadable => false,
        }
    }
}

/// How long the inbound SA of a rekeyed Child SA (or of a duplicate, deleted while it carried traffic) keeps
/// accepting packets after its delete exchange: ESP the peer sent on it just before it switched to the new SA
/// may still be in flight, and reordered behind the DELETE (strongSwan keeps a rekeyed inbound SA for its
/// `delete_rekeyed_delay`, 5 s by default).
pub(crate) const REKEYED_INBOUND_LINGER: Duration = Duration::from_secs(5);

/// SAD, policy and the rekeyed inbound SAs that linger.
pub(super) struct Inbound {
    sad: Sad,
    pub(super) policy: HashMap<u32, InPolicy>,
    /// Inbound SPIs of rekeyed Child SAs and when they stop accepting packets ([`REKEYED_INBOUND_LINGER`]),
    /// oldest first. As long as rekeys are rate-limited (the `ike` crate), so is this list.
    retiring: VecDeque<(Instant, u32)>,
    pub(super) policy_drops: u64,
}

impl Inbound {
    pub(super) fn new() -> Inbound {
        Inbound {
            sad: Sad::new(),
            policy: HashMap::new(),
            retiring: VecDeque::new(),
            policy_drops: 0,
        }
    }

    /// Installs an inbound SA and the policy it enforces.
    pub(super) fn insert(&mut self, spi: u32, sa: InboundSa, policy: InPolicy) {
        self.sad.insert(sa);
        self.policy.insert(spi, policy);
    }

    /// Removes an inbound SA and its policy.
    pub(super) fn remove(&mut self, spi_in: u32) {
        self.sad.remove(spi_in);
        self.policy.remove(&spi_in);
    }

    /// A rekeyed Child SA's inbound SA keeps accepting packets until `now + REKEYED_INBOUND_LINGER`.
    pub(super) fn retire(&mut self, now: Instant, spi_in: u32) {
        self.retiring
            .push_back((now + REKEYED_INBOUND_LINGER, spi_in));
    }

    /// Removes the inbound SAs of rekeyed Child SAs whose linger time has passed.
    pub(crate) fn expire_retired(&mut self, now: Instant) {
        while let Some(&(until, spi_in)) = self.retiring.front() {
            if until > now {
                break;
            }
            self.retiring.pop_front();
            self.remove(spi_in);
        }
    }

    /// When [`Inbound::expire_retired`] next has work.
    pub(crate) fn next_retirement(&self) -> Option<Instant> {
        self.retiring.front().map(|&(until, _)| until)
    }

    /// Decapsulates an ESP packet in place; its SA's inbound SPI if `pkt` now holds an inner packet to deliver
    /// (within the SA's selectors).
    pub(super) fn decap(&mut self, pkt: &mut PacketBuf<'_>) -> Option<u32> {
        let Ok((spi, _)) = self.sad.decap(pkt) else {
            return None;
        };
        let inner = pkt.as_slice();
        let ok = match (self.policy.get(&spi), src_addr(inner), dst_addr(inner)) {
            // RFC 4301 5.2: after decryption, the inner packet must match the SA's selectors; otherwise a peer
            // could inject traffic for subnets that belong to another host.
            (Some(p), Some(s), Some(d)) => p.covers(s, d) && p.covers_quote(inner),
            _ => false,
        };
        if !ok {
            self.policy_drops += 1;
            return None;
        }
        Some(spi)
    }

    /// The index of the peer whose Child SA has this inbound SPI.
    pub(super) fn peer_of(&self, spi_in: u32) -> Option<usize> {
        self.policy.get(&spi_in).and_then(|p| p.peer)
    }

    /// Counters of an inbound SA.
    pub(super) fn counters(&self, spi_in: u32) -> Option<esp::Counters> {
        self.sad.get(spi_in).map(|sa| *sa.counters())
    }

    /// Inbound packets whose SPI was unknown.
    pub(super) fn no_sa_in(&self) -> u64 {
        self.sad.no_sa_drops()
    }
}
