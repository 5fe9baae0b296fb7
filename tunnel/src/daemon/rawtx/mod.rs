//! Raw ESP (IP protocol 50) out: through an AF_PACKET transmit ring where the next hop is known, through the
//! raw IP socket otherwise.
//!
//! A raw socket has no GSO, and `sendmmsg` on it costs 4.3-4.7 us of CPU per 1.4 KB packet (a route lookup,
//! `ip_append_data` and the output path for each), whatever the batch size; a TPACKET_V2 ring with one `sendto`
//! per batch costs 1.6-2.0 us (benches/README.md, "Raw ESP: send methods measured"). The ring bypasses the
//! kernel's IP layer, so this module does its part: the IPv4 or IPv6 header (as the raw socket would write
//! it), the Ethernet header from the next hop table (`nexthop.rs`), and the choice of the raw socket for what
//! the ring cannot carry:
//! - a peer whose route or neighbour is not (yet) resolved, or not over Ethernet (the socket's send makes the
//!   kernel resolve it);
//! - a packet larger than the path's MTU: the interface's, or the route's when lower (a route's `mtu`, or a
//!   path MTU the kernel learned from ICMP): the kernel fragments it; the ring would not;
//! - what does not fit in the ring, or in its socket's send buffer, while earlier frames are still in flight.
//!
//! What the ring skips: netfilter's OUTPUT and POSTROUTING hooks (iptables/nft rules on outgoing ESP see only
//! the one batch per peer and second that takes the socket; `tc` and the qdisc see everything), cgroup BPF
//! egress programs (systemd's `IPAddressDeny=`, `IPAccounting=`: they run in the IP output path), and the
//! kernel's IP output counters. `raw_tx = "socket"` in the mesh file sends everything through the raw socket, as
//! before. README "Raw ESP".

// Writes bytes from the VM into frames: nothing here may panic on them.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub(super) mod nexthop;
mod ring;
#[cfg(test)]
mod tests;

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use nexthop::{NextHop, NextHops};
use ring::Ring;

use super::offload::checksum;
use super::sockets;

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_ESP: u8 = 50;
/// The largest frame the ring is sized for (link-layer header included): 16 KiB frames, 128 in the ring, carry a
/// 9000-byte jumbo MTU.
const MAX_FRAME: usize = (16 << 10) - ring::DATA_AT;
/// The TTL and hop limit the raw socket uses by default (net.ipv4.ip_default_ttl, the IPv6 route's hop limit).
const HOPS: u8 = 64;

/// Packets sent each way, shared by all transmitters (for tests and the status).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) ring: AtomicU64,
    pub(super) socket: AtomicU64,
}

/// One transmitter's raw ESP sender.
pub(super) struct RawTx {
    socket: OwnedFd,
    /// Our underlay address, the packets' source; `None` (unknown) keeps the ring unused.
    local: Option<IpAddr>,
    /// The next hop table; `None` when the ring is off (`raw_tx = "socket"`, or no local address).
    hops: Option<Arc<NextHops>>,
    ring: Mutex<RingState>,
    counters: Arc<Counters>,
}

enum RingState {
    /// Opened at the first batch the ring may carry (a daemon with ESP in UDP only never maps one).
    Unopened,
    Open(Ring),
    /// Opening failed (logged once): the raw socket carries everything.
    Failed,
}

impl RawTx {
    /// A sender on the raw ESP socket `socket` (bound to our underlay address), with its own next hop table;
    /// `ring` false (`raw_tx = "socket"`) keeps the ring closed and sends everything through the socket.
    pub(super) fn new(socket: OwnedFd, ring: bool) -> RawTx {
        let local = local_addr(&socket);
        if !ring {
            tracing::info!("raw_tx = \"socket\": raw ESP leaves through the raw socket only");
        }
        RawTx {
            socket,
            local,
            hops: local.filter(|_| ring).map(NextHops::start),
            ring: Mutex::new(RingState::Unopened),
            counters: Arc::default(),
        }
    }

    /// Another sender on the same socket and next hop table, with its own ring (for a transmit worker).
    pub(super) fn try_clone(&self) -> io::Result<RawTx> {
        Ok(RawTx {
            socket: self.socket.try_clone()?,
            local: self.local,
            hops: self.hops.clone(),
            ring: Mutex::new(RingState::Unopened),
            counters: self.counters.clone(),
        })
    }

    #[cfg(test)]
    pub(super) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Packets sent so far each way, by this sender and its clones.
    pub(super) fn sent(&self) -> super::control::RawEspOut {
        super::control::RawEspOut {
            ring: self.counters.ring.load(Ordering::Relaxed),
            socket: self.counters.socket.load(Ordering::Relaxed),
        }
    }

    /// Sends back-to-back ESP packets of `stride` bytes (the last may be shorter) to `to`: as many as it can
    /// through the ring, the rest through the raw socket. A full socket buffer drops the rest (as a router would).
    pub(super) fn send(&self, data: &[u8], stride: usize, to: IpAddr) -> io::Result<()> {
        let stride = stride.max(1);
        let mut done = 0;
        if let Some(hop) = self.hops.as_ref().and_then(|h| h.get(to)) {
            done = self.send_ring(data, stride, to, &hop);
        }
        let rest = data.get(done * stride..).unwrap_or_default();
        if done > 0 {
            self.counters.ring.fetch_add(done as u64, Ordering::Relaxed);
        }
        if rest.is_empty() {
            return Ok(());
        }
        self.counters
            .socket
            .fetch_add(rest.len().div_ceil(stride) as u64, Ordering::Relaxed);
        sockets::send_many(&self.socket, rest, stride, to)
    }

    /// Writes as many packets as fit into the ring and flushes it; returns how many went.
    fn send_ring(&self, data: &[u8], stride: usize, to: IpAddr, hop: &NextHop) -> usize {
        let (Some(local), l3, ethertype) = (match to {
            IpAddr::V4(_) => (self.local.filter(IpAddr::is_ipv4), 20, ETH_P_IP),
            IpAddr::V6(_) => (self.local.filter(IpAddr::is_ipv6), 40, ETH_P_IPV6),
        }) else {
            return 0;
        };
        // All packets but the last are `stride` long: one check covers them (the MTU is the IP packet's limit).
        if l3 + stride.min(data.len()) > hop.mtu {
            return 0;
        }
        let mut guard = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*guard, RingState::Unopened) {
            // Frames of at most MAX_FRAME: an interface with a larger MTU (up to 65535 for veth or a dummy)
            // used to make the ring fail for good, for every peer ("frame too large for the ring"); now only
            // the packets over MAX_FRAME take the raw socket.
            *guard = match Ring::open((ETH_HLEN + hop.link_mtu).min(MAX_FRAME)) {
                Ok(r) => RingState::Open(r),
                Err(e) => {
                    tracing::warn!("raw ESP transmit ring unavailable, using the raw socket: {e}");
                    RingState::Failed
                }
            };
        }
        let RingState::Open(ring) = &mut *guard else {
            return 0;
        };
        let mut n: usize = 0;
        for esp in data.chunks(stride) {
            let len = ETH_HLEN + l3 + esp.len();
            let Some(frame) = ring.frame(len) else {
                break;
            };
            if !write_frame(frame, hop, local, to, esp) {
                break;
            }
            ring.commit(len);
            n += 1;
        }
        if n > 0 {
            if let Err(e) = ring.flush(hop.ifindex, ethertype) {
                // What the kernel did not take is the end of this batch: the raw socket tries it.
                tracing::debug!(
                    "sending ESP (ring): {}; {} packets left to the raw socket",
                    e.error,
                    e.frames
                );
                n = n.saturating_sub(e.frames);
            }
        }
        n
    }
}

/// Fills `frame` (exactly Ethernet + IP header + `esp` long) with one packet; false if the sizes disagree.
fn write_frame(frame: &mut [u8], hop: &NextHop, from: IpAddr, to: IpAddr, esp: &[u8]) -> bool {
    let Some((eth, rest)) = frame.split_first_chunk_mut::<ETH_HLEN>() else {
        return false;
    };
    let ethertype = if to.is_ipv4() { ETH_P_IP } else { ETH_P_IPV6 };
    eth[..6].copy_from_slice(&hop.dst_mac);
    eth[6..12].copy_from_slice(&hop.src_mac);
    eth[12..].copy_from_slice(&ethertype.to_be_bytes());
    let ok = match (from, to) {
        (IpAddr::V4(s), IpAddr::V4(d)) => match rest.split_first_chunk_mut::<20>() {
            Some((ip, payload)) if payload.len() == esp.len() => {
                *ip = ipv4_header(s.octets(), d.octets(), esp.len());
                payload.copy_from_slice(esp);
                true
            }
            _ => false,
        },
        (IpAddr::V6(s), IpAddr::V6(d)) => match rest.split_first_chunk_mut::<40>() {
            Some((ip, payload)) if payload.len() == esp.len() => {
                *ip = ipv6_header(s.octets(), d.octets(), esp.len());
                payload.copy_from_slice(esp);
                true
            }
            _ => false,
        },
        _ => false,
    };
    ok
}

/// The IPv4 header the raw socket writes for an unconnected socket's packet that fits the path MTU: DF set,
/// ID 0, TTL 64, no options. RFC 6864 section 4.1: "The IPv4 ID field MUST NOT be used for purposes other than
/// fragmentation and reassembly", and an atomic datagram (DF set, not a fragment) is never reassembled, so the
/// kernel's own `ip_select_ident_segs` leaves it 0 for such a socket.
fn ipv4_header(src: [u8; 4], dst: [u8; 4], payload: usize) -> [u8; 20] {
    let total = (20 + payload) as u16;
    let [t0, t1] = total.to_be_bytes();
    let mut h = [
        0x45,
        0,
        t0,
        t1,
        0,
        0,
        0x40,
        0,
        HOPS,
        IPPROTO_ESP,
        0,
        0,
        src[0],
        src[1],
        src[2],
        src[3],
        dst[0],
        dst[1],
        dst[2],
        dst[3],
    ];
    let [c0, c1] = ipv4_checksum(&h).to_be_bytes();
    h[10] = c0;
    h[11] = c1;
    h
}

/// RFC 791: "The checksum field is the 16 bit one's complement of the one's complement sum of all 16 bit words
/// in the header." The sum is the datapath's own (`offload::checksum`, RFC 1071).
fn ipv4_checksum(h: &[u8; 20]) -> u16 {
    !checksum::fold(checksum::sum(h, 0))
}

/// The IPv6 header of an ESP packet (RFC 8200 section 3): traffic class and flow label 0, as the raw socket
/// sends them by default.
fn ipv6_header(src: [u8; 16], dst: [u8; 16], payload: usize) -> [u8; 40] {
    let mut h = [0u8; 40];
    h[0] = 0x60;
    h[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
    h[6] = IPPROTO_ESP;
    h[7] = HOPS;
    h[8..24].copy_from_slice(&src);
    h[24..40].copy_from_slice(&dst);
    h
}

/// The address a socket is bound to, if it is a specific one.
fn local_addr(s: &OwnedFd) -> Option<IpAddr> {
    // SAFETY: sockaddr_storage is plain data; getsockname writes at most `len` bytes into it.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: st and len are valid for the call.
    let r = unsafe {
        libc::getsockname(
            s.as_raw_fd(),
            (&mut st as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return None;
    }
    let ip = match i32::from(st.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in, which fits in sockaddr_storage.
            let a = unsafe { &*(&st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            IpAddr::from(u32::from_be(a.sin_addr.s_addr).to_be_bytes())
        }
        libc::AF_INET6 => {
            // SAFETY: as above, a sockaddr_in6.
            let a =
                unsafe { &*(&st as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            IpAddr::from(a.sin6_addr.s6_addr)
        }
        _ => return None,
    };
    (!ip.is_unspecified()).then_some(ip)
}
