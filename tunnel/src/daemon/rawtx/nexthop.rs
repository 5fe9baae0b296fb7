//! Next hops of raw ESP peers, for the transmit ring, which bypasses the kernel's routing and neighbour
//! resolution: per peer address, the outgoing interface, its MAC and MTU, and the next hop's MAC, asked of the
//! kernel (`ip route get`, `ip neigh get`, over NETLINK_ROUTE) by a thread of its own every second, so the
//! datapath only reads a table.
//!
//! A peer the table does not know (yet), or whose neighbour entry is not resolved, is sent to through the raw
//! socket, which makes the kernel resolve it (ARP or ND). The ring's packets pass neither through the kernel's
//! neighbour code nor through conntrack, so after each refresh (once a second) the next batch to each peer goes
//! through the raw socket: the kernel then confirms the neighbour (a STALE entry goes DELAY, PROBE, REACHABLE by
//! a unicast ARP or ND probe, so a changed MAC is learnt) and conntrack keeps seeing the flow (a host firewall
//! that accepts inbound ESP as ESTABLISHED keeps accepting it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, Weak};
use std::time::Duration;

use crate::route::Netlink;

/// How often the table is refreshed from the kernel.
const REFRESH: Duration = Duration::from_secs(1);
/// `NUD_*` states (include/uapi/linux/neighbour.h) whose link-layer address may be used.
const NUD_USABLE: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x80; // REACHABLE STALE DELAY PROBE PERMANENT
/// `ARPHRD_ETHER`: the ring writes Ethernet headers, so only Ethernet interfaces qualify.
const ARPHRD_ETHER: u16 = 1;

/// Where a packet to one peer leaves: all the ring needs to write its Ethernet header and to size it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct NextHop {
    pub(super) ifindex: i32,
    pub(super) src_mac: [u8; 6],
    pub(super) dst_mac: [u8; 6],
    /// The path's MTU: the interface's, or the route's when lower (a route's `mtu`, or a path MTU the kernel
    /// learned from ICMP). Larger packets go through the raw socket, which fragments them (or reports the
    /// error), as it would without the ring.
    pub(super) mtu: usize,
    /// The interface's MTU, which sizes the ring's frames.
    pub(super) link_mtu: usize,
}

#[derive(Default)]
struct Entry {
    hop: Option<NextHop>,
    /// Set by each refresh: the next batch takes the raw socket (see the module's doc).
    probe: AtomicBool,
    /// Set by the datapath when it sends; an entry unused for a refresh is forgotten.
    used: AtomicBool,
}

/// The table, shared by the transmitters and the thread that refreshes it.
pub(super) struct NextHops {
    /// Our underlay address: routes are looked up from it, as for the raw socket bound to it.
    local: IpAddr,
    table: RwLock<HashMap<IpAddr, Entry>>,
    wake: Condvar,
    woken: Mutex<bool>,
}

impl NextHops {
    /// The table, and its refresh thread, which ends when the last transmitter drops it.
    pub(super) fn start(local: IpAddr) -> Arc<NextHops> {
        let hops = Arc::new(NextHops {
            local,
            table: RwLock::new(HashMap::new()),
            wake: Condvar::new(),
            woken: Mutex::new(false),
        });
        let weak = Arc::downgrade(&hops);
        let spawned = std::thread::Builder::new()
            .name("vmsecd-nexthop".into())
            .spawn(move || refresh_loop(weak));
        if let Err(e) = spawned {
            tracing::warn!(
                "raw ESP next-hop thread not started, raw ESP uses the raw socket only: {e}"
            );
        }
        hops
    }

    /// The next hop to `to` if the ring may carry the next batch: known, resolved, and no probe due. Otherwise
    /// `None`, and the caller sends through the raw socket; an unknown `to` is queued for resolution. Only
    /// addresses of established SAs reach here, so the table is as large as the set of raw ESP peers.
    pub(super) fn get(&self, to: IpAddr) -> Option<NextHop> {
        {
            let t = self.table.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = t.get(&to) {
                e.used.store(true, Ordering::Relaxed);
                if e.probe.swap(false, Ordering::Relaxed) {
                    return None;
                }
                return e.hop;
            }
        }
        self.table
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(to)
            .or_default()
            .used
            .store(true, Ordering::Relaxed);
        *self.woken.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_one();
        None
    }

    fn wait(&self) {
        let mut woken = self.woken.lock().unwrap_or_else(PoisonError::into_inner);
        if !*woken {
            woken = self
                .wake
                .wait_timeout(woken, REFRESH)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        *woken = false;
    }
}

fn refresh_loop(weak: Weak<NextHops>) {
    let mut nl = match Netlink::open() {
        Ok(nl) => nl,
        Err(e) => {
            tracing::warn!(
                "raw ESP next hops cannot be looked up, raw ESP uses the raw socket only: {e}"
            );
            return;
        }
    };
    let mut logged = false;
    while let Some(hops) = weak.upgrade() {
        hops.wait();
        let wanted: Vec<IpAddr> = {
            let mut t = hops.table.write().unwrap_or_else(PoisonError::into_inner);
            t.retain(|_, e| e.used.swap(false, Ordering::Relaxed));
            t.keys().copied().collect()
        };
        for to in wanted {
            let hop = match resolve(&mut nl, hops.local, to) {
                Ok(r) => r,
                Err(e) => {
                    if !logged {
                        tracing::warn!(%to, "raw ESP next hop lookup failed, using the raw socket: {e}");
                        logged = true;
                    }
                    None
                }
            };
            let mut t = hops.table.write().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = t.get_mut(&to) {
                if e.hop != hop {
                    tracing::debug!(%to, ?hop, "raw ESP next hop");
                }
                e.hop = hop;
                e.probe.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// The next hop from `local` to `to`; `None` if the ring cannot be used (no route, not Ethernet, neighbour
/// unresolved).
pub(super) fn resolve(
    nl: &mut Netlink,
    local: IpAddr,
    to: IpAddr,
) -> Result<Option<NextHop>, crate::route::NetlinkError> {
    let route = nl.route_get_from(to, Some(local))?;
    let Some(oif) = route.oif else {
        return Ok(None);
    };
    let Some(link) = link_of(oif) else {
        return Ok(None);
    };
    let via = route.gateway.unwrap_or(to);
    let Some(n) = nl.neigh_get(oif, via)? else {
        return Ok(None);
    };
    let (Some(dst_mac), true) = (n.lladdr, n.state & NUD_USABLE != 0) else {
        return Ok(None);
    };
    let hop = NextHop {
        ifindex: oif as i32,
        src_mac: link.0,
        dst_mac,
        mtu: route.mtu.map_or(link.1, |m| link.1.min(m as usize)),
        link_mtu: link.1,
    };
    Ok(Some(hop))
}

/// An Ethernet interface's MAC and MTU (SIOCGIFHWADDR, SIOCGIFMTU); `None` for any other kind of link.
fn link_of(ifindex: u32) -> Option<([u8; 6], usize)> {
    // struct ifreq: the name (IFNAMSIZ = 16 bytes), then a 24-byte union (a sockaddr, or an int).
    let mut ifr = [0u8; 40];
    // SAFETY: if_indextoname writes at most IFNAMSIZ bytes, NUL included, into the first 16 bytes of ifr.
    if unsafe { libc::if_indextoname(ifindex, ifr.as_mut_ptr().cast()) }.is_null() {
        return None;
    }
    // SAFETY: plain socket(2); the result is checked and closed by OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a new descriptor nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let mut hw = ifr;
    // SAFETY: ifr-shaped buffers of the full struct ifreq size (40 bytes), written by the kernel in place.
    if unsafe { libc::ioctl(raw, libc::SIOCGIFHWADDR, hw.as_mut_ptr()) } < 0 {
        return None;
    }
    // SAFETY: as above.
    if unsafe { libc::ioctl(raw, libc::SIOCGIFMTU, ifr.as_mut_ptr()) } < 0 {
        return None;
    }
    let family = u16::from_ne_bytes([hw[16], hw[17]]);
    let mac: [u8; 6] = hw[18..24].try_into().ok()?;
    let mtu = i32::from_ne_bytes(ifr[16..20].try_into().ok()?);
    (family == ARPHRD_ETHER && mtu > 0).then_some((mac, mtu as usize))
}
