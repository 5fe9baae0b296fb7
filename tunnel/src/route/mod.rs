//! Routes, addresses and the local address list over NETLINK_ROUTE (rtnetlink(7)).
//!
//! A small synchronous implementation on a raw netlink socket, not `rtnetlink` / `netlink-packet-route`. vmsecd
//! needs seven messages (RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE and its dump, RTM_NEWADDR, RTM_DELADDR, an
//! RTM_GETADDR dump), for routes into the TUN, the fail-closed `unreachable` routes and addresses,
//! sent at start-up and exit, never on the packet path, so an async netlink stack buys nothing; `rtnetlink` 0.24
//! would add netlink-proto, netlink-sys, netlink-packet-core/-route, futures and nix (about 50 s more of a clean
//! debug build on this 2-core machine, measured: 72 s against 23 s for tokio alone) and APIs whose every 0.x
//! release may break callers (netlink-packet-route is at 0.34), whereas the rtnetlink ABI under this file does not
//! change. The kernel's own error text (extended ACK, `NETLINK_EXT_ACK`) is kept, so a refused route says why.
//!
//! A [`Netlink`] socket acts in the network namespace its opening thread was in, whichever thread uses it later.

use std::io;
use std::mem::size_of;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::prefix::Prefix;

mod msg;
#[cfg(test)]
mod repair_tests;

use self::msg::{
    addr_msg, align4, attrs, ext_ack_msg, family_of, ip_bytes, ip_from, parse_route, route_msg,
    unreachable_msg, Msg, IFA_ADDRESS, IFA_LOCAL, NDA_DST, NDA_LLADDR, NETLINK_CAP_ACK,
    NETLINK_EXT_ACK, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_EXCL, NLM_F_MULTI, NLM_F_REQUEST, RTAX_MTU, RTA_DST, RTA_GATEWAY, RTA_METRICS, RTA_OIF,
    RTA_PREFSRC, RTA_SRC, RTA_VIA, RTM_DELADDR, RTM_DELROUTE, RTM_GETADDR, RTM_GETNEIGH,
    RTM_GETROUTE, RTM_NEWADDR, RTM_NEWNEIGH, RTM_NEWROUTE, RTN_UNREACHABLE, RT_TABLE_MAIN,
    SOL_NETLINK,
};

/// A netlink request the kernel refused, or a socket failure.
#[derive(Debug, thiserror::Error)]
#[error("netlink: {op}: {error}{}{}", .kernel_msg.as_ref().map(|m| format!(" ({m})")).unwrap_or_default(), hint(.error, .op))]
pub struct NetlinkError {
    /// What was asked, e.g. `add route 198.19.2.0/24 dev #7`.
    pub op: String,
    /// The error number the kernel answered (part of the message, not also `source()`).
    pub error: io::Error,
    /// The kernel's explanation (extended ACK), when it gave one.
    pub kernel_msg: Option<String>,
}

impl NetlinkError {
    /// The errno, if the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        self.error.raw_os_error()
    }
}

fn hint(e: &io::Error, op: &str) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => {
            "; changing routes and addresses needs CAP_NET_ADMIN: run vmsecd as root".into()
        }
        Some(libc::EEXIST) if op.starts_with("add route") => {
            let dst = op.split_whitespace().nth(2).unwrap_or("");
            format!(
                "; another route for {dst} exists (ip route show {dst}): remove it, or renumber the subnet in the \
                 mesh file"
            )
        }
        Some(libc::EEXIST) if op.starts_with("add address") => {
            "; the interface has this address already".into()
        }
        _ => String::new(),
    }
}

/// One address of this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalAddr {
    /// The interface it is on.
    pub ifindex: u32,
    /// The address.
    pub addr: IpAddr,
    /// Its prefix length.
    pub prefix_len: u8,
}

/// Where the kernel would send a packet (`ip route get`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLookup {
    /// Outgoing interface.
    pub oif: Option<u32>,
    /// Next hop, if not on-link; for an IPv4 route through an IPv6 next hop (RFC 5549), that IPv6 address.
    pub gateway: Option<IpAddr>,
    /// Source address the kernel would pick.
    pub prefsrc: Option<IpAddr>,
    /// The route's MTU (`RTAX_MTU` in `RTA_METRICS`): a route's `mtu`, or a path MTU the kernel learned from an
    /// ICMP "fragmentation needed" / "packet too big"; `None` when the interface's holds.
    pub mtu: Option<u32>,
}

/// A neighbour entry (`ip neigh get ADDR dev IF`): the link-layer address and the entry's `NUD_*` state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbour {
    /// The link-layer address, when the kernel knows one (not for an INCOMPLETE or FAILED entry).
    pub lladdr: Option<[u8; 6]>,
    /// `NUD_*` bits (include/uapi/linux/neighbour.h): REACHABLE 0x02, STALE 0x04, DELAY 0x08, PROBE 0x10, ...
    pub state: u16,
}

/// A route of the main table, as vmsecd installs them: a prefix into an interface, `proto static scope link`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The destination prefix (a peer's subnet).
    pub dst: Prefix,
    /// The interface (the TUN).
    pub ifindex: u32,
    /// Source address for packets this machine itself sends along it (e.g. its VM bridge's address, so the
    /// packets fall within the Child SA's traffic selectors).
    pub src: Option<IpAddr>,
}

/// A route of the main table that refuses traffic rather than forwarding it (`ip route add unreachable DST proto
/// PROTO metric METRIC`): the kernel drops what matches it and answers the sender with ICMP "host unreachable"
/// (ICMPv6 "no route"). It has no interface, so it outlives every interface and every process: see
/// [`crate::failclosed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnreachableRoute {
    /// The destination prefix.
    pub dst: Prefix,
    /// Its metric (`RTA_PRIORITY`): among routes for the same prefix the lowest metric wins.
    pub metric: u32,
    /// The route's protocol number (`rtm_protocol`), which tells whose route it is.
    pub proto: u8,
}

/// A route of the main table as a dump lists it (the parts vmsecd looks at).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListedRoute {
    /// The destination prefix.
    pub dst: Prefix,
    /// `rtm_type`: 1 unicast, 6 blackhole, 7 unreachable, 8 prohibit, ...
    pub kind: u8,
    /// The metric (0 when the kernel gave none).
    pub metric: u32,
    /// The protocol number.
    pub proto: u8,
    /// The outgoing interface (`RTA_OIF`), 0 when the route has none (unreachable, multipath).
    pub oif: u32,
}

impl ListedRoute {
    /// True if it is a unicast route (`rtm_type` 1): one that delivers packets somewhere.
    pub fn is_unicast(&self) -> bool {
        self.kind == 1
    }

    /// True if it is an `unreachable` route.
    pub fn is_unreachable(&self) -> bool {
        self.kind == RTN_UNREACHABLE
    }

    /// True if this listed route is `route` as vmsecd installed it: the same prefix into the same interface. A
    /// route to the same prefix through another device (someone else's, or a leftover) is not ours: counting
    /// it as present would leave the remote subnet routed away from the TUN for good.
    pub fn is(&self, route: &Route) -> bool {
        self.dst == route.dst && self.oif == route.ifindex && !self.is_unreachable()
    }
}

/// A NETLINK_ROUTE socket in the calling thread's network namespace. Each call sends one request and waits for
/// the kernel's answer (at most 5 s).
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens the socket.
    pub fn open() -> Result<Netlink, NetlinkError> {
        let err = |error| NetlinkError {
            op: "open NETLINK_ROUTE socket".to_owned(),
            error,
            kernel_msg: None,
        };
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: fd is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            // Best effort: without them, errors lose the kernel's text, or carry the whole request back.
            let _ = setsockopt(
                &fd,
                SOL_NETLINK,
                opt,
                &1 as *const libc::c_int as *const _,
                size_of::<libc::c_int>(),
            );
        }
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        setsockopt(
            &fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const _,
            size_of::<libc::timeval>(),
        )
        .map_err(err)?;
        // SAFETY: sockaddr_nl is plain data; zero is a valid value (pid 0: the kernel assigns one).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl and its size is given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(Netlink { fd, seq: 0 })
    }

    /// Adds a route to `route.dst` through `route.ifindex` (main table, `proto static scope link`). Fails with
    /// EEXIST if a route for that prefix exists already.
    pub fn add_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let op = format!("add route {} dev #{}", route.dst, route.ifindex);
        let msg = route_msg(
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            route,
        );
        self.ack(&op, msg)
    }

    /// Removes a route added by [`Netlink::add_route`].
    pub fn del_route(&mut self, route: &Route) -> Result<(), NetlinkError> {
        let op = format!("delete route {} dev #{}", route.dst, route.ifindex);
        let msg = route_msg(
            RTM_DELROUTE,
            NLM_F_REQUEST | NLM_F_ACK,
            &Route {
                src: None,
                ..*route
            },
        );
        self.ack(&op, msg)
    }

    /// Adds an `unreachable` route. Fails with EEXIST if one with the same prefix and metric exists already.
    pub fn add_unreachable(&mut self, route: &UnreachableRoute) -> Result<(), NetlinkError> {
        let op = format!(
            "add route unreachable {} proto {} metric {}",
            route.dst, route.proto, route.metric
        );
        let msg = unreachable_msg(
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            route,
        );
        self.ack(&op, msg)
    }

    /// Removes the `unreachable` route with exactly this prefix, metric and protocol; another route for the
    /// same prefix (the TUN's, or anyone else's) is not touched.
    pub fn del_unreachable(&mut self, route: &UnreachableRoute) -> Result<(), NetlinkError> {
        let op = format!(
            "delete route unreachable {} proto {} metric {}",
            route.dst, route.proto, route.metric
        );
        let msg = unreachable_msg(RTM_DELROUTE, NLM_F_REQUEST | NLM_F_ACK, route);
        self.ack(&op, msg)
    }

    /// Every route of the main table, IPv4 and IPv6, whose protocol number is `proto` (`ip route show table
    /// main proto PROTO`, both families).
    pub fn routes_of_proto(&mut self, proto: u8) -> Result<Vec<ListedRoute>, NetlinkError> {
        self.main_routes(|r| r.proto == proto)
    }

    /// Every route of the main table, IPv4 and IPv6, that `keep` accepts.
    pub fn main_routes(
        &mut self,
        mut keep: impl FnMut(&ListedRoute) -> bool,
    ) -> Result<Vec<ListedRoute>, NetlinkError> {
        let mut out = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let mut msg = Msg::new(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP);
            msg.bytes(&[family, 0, 0, 0, 0, 0, 0, 0]);
            msg.bytes(&0u32.to_ne_bytes());
            self.request("list routes", msg, |ty, body| {
                if let Some(r) = parse_route(ty, body) {
                    if r.1 == u32::from(RT_TABLE_MAIN) && keep(&r.0) {
                        out.push(r.0);
                    }
                }
            })?;
        }
        Ok(out)
    }

    /// Adds `addr/prefix_len` to the interface (IPv6 without duplicate address detection).
    pub fn add_address(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let op = format!("add address {addr}/{prefix_len} dev #{ifindex}");
        let msg = addr_msg(
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            ifindex,
            addr,
            prefix_len,
        );
        self.ack(&op, msg)
    }

    /// Removes an address from the interface.
    pub fn del_address(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
        prefix_len: u8,
    ) -> Result<(), NetlinkError> {
        let op = format!("delete address {addr}/{prefix_len} dev #{ifindex}");
        let msg = addr_msg(
            RTM_DELADDR,
            NLM_F_REQUEST | NLM_F_ACK,
            ifindex,
            addr,
            prefix_len,
        );
        self.ack(&op, msg)
    }

    /// Every address of every interface in this namespace, IPv4 and IPv6 (what `ip addr` lists): to find which
    /// mesh host this machine is.
    pub fn local_addresses(&mut self) -> Result<Vec<LocalAddr>, NetlinkError> {
        let mut msg = Msg::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP);
        // struct ifaddrmsg { family, prefixlen, flags, scope, index }
        msg.bytes(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
        msg.bytes(&0u32.to_ne_bytes());
        let mut out = Vec::new();
        self.request("list addresses", msg, |ty, body| {
            if ty != RTM_NEWADDR || body.len() < 8 {
                return;
            }
            let (family, prefix_len) = (body[0], body[1]);
            let ifindex = u32::from_ne_bytes(body[4..8].try_into().expect("4 bytes"));
            let (mut local, mut address) = (None, None);
            for (t, v) in attrs(&body[8..]) {
                match t {
                    IFA_LOCAL => local = ip_from(family, v),
                    IFA_ADDRESS => address = ip_from(family, v),
                    _ => {}
                }
            }
            // IFA_LOCAL is our end of a point-to-point link; IFA_ADDRESS the peer's there, ours elsewhere.
            if let Some(addr) = local.or(address) {
                out.push(LocalAddr {
                    ifindex,
                    addr,
                    prefix_len,
                });
            }
        })?;
        Ok(out)
    }

    /// Asks the kernel where it would send a packet to `dst` (`ip route get DST`).
    pub fn route_get(&mut self, dst: IpAddr) -> Result<RouteLookup, NetlinkError> {
        self.route_get_from(dst, None)
    }

    /// As [`Netlink::route_get`], for a packet from `src` (`ip route get DST from SRC`): the answer a socket
    /// bound to `src` gets, policy routing by source included.
    pub fn route_get_from(
        &mut self,
        dst: IpAddr,
        src: Option<IpAddr>,
    ) -> Result<RouteLookup, NetlinkError> {
        let mut msg = Msg::new(RTM_GETROUTE, NLM_F_REQUEST);
        let (family, bits) = family_of(dst);
        let src = src.filter(|s| s.is_ipv4() == dst.is_ipv4());
        let src_bits = if src.is_some() { bits } else { 0 };
        msg.bytes(&[family, bits, src_bits, 0, 0, 0, 0, 0]);
        msg.bytes(&0u32.to_ne_bytes());
        msg.attr(RTA_DST, &ip_bytes(dst));
        if let Some(src) = src {
            msg.attr(RTA_SRC, &ip_bytes(src));
        }
        let mut found = RouteLookup {
            oif: None,
            gateway: None,
            prefsrc: None,
            mtu: None,
        };
        self.request(&format!("look up route to {dst}"), msg, |ty, body| {
            if ty != RTM_NEWROUTE || body.len() < 12 {
                return;
            }
            for (t, v) in attrs(&body[12..]) {
                match t {
                    RTA_OIF if v.len() == 4 => {
                        found.oif = Some(u32::from_ne_bytes(v.try_into().expect("4 bytes")))
                    }
                    RTA_GATEWAY => found.gateway = ip_from(family, v),
                    // The next hop of an IPv4 route through an IPv6 one (RFC 5549): without it the route read as
                    // on-link, and the raw ESP ring looked up (and used) a neighbour entry for the peer's own
                    // address, which anyone on the link can plant with an ARP request to us.
                    RTA_VIA => {
                        found.gateway = v.split_first_chunk::<2>().and_then(|(f, a)| {
                            u8::try_from(u16::from_ne_bytes(*f))
                                .ok()
                                .and_then(|f| ip_from(f, a))
                        })
                    }
                    RTA_PREFSRC => found.prefsrc = ip_from(family, v),
                    RTA_METRICS => {
                        found.mtu = attrs(v)
                            .find(|(t, m)| *t == RTAX_MTU && m.len() == 4)
                            .and_then(|(_, m)| <[u8; 4]>::try_from(m).ok())
                            .map(u32::from_ne_bytes)
                            .filter(|m| *m > 0)
                    }
                    _ => {}
                }
            }
        })?;
        Ok(found)
    }

    /// The kernel's neighbour entry for `addr` on interface `ifindex` (`ip neigh get`, Linux 5.0); `None` if it
    /// has none (ENOENT). Only 6-byte (Ethernet) link-layer addresses are returned.
    pub fn neigh_get(
        &mut self,
        ifindex: u32,
        addr: IpAddr,
    ) -> Result<Option<Neighbour>, NetlinkError> {
        let mut msg = Msg::new(RTM_GETNEIGH, NLM_F_REQUEST);
        let (family, _) = family_of(addr);
        // struct ndmsg: family, 3 pad bytes, ifindex, state, flags, type (neigh_valid_get_req wants the rest 0).
        msg.bytes(&[family, 0, 0, 0]);
        msg.bytes(&ifindex.to_ne_bytes());
        msg.bytes(&[0, 0, 0, 0]);
        msg.attr(NDA_DST, &ip_bytes(addr));
        let mut found = None;
        let r = self.request(
            &format!("look up neighbour {addr} on #{ifindex}"),
            msg,
            |ty, body| {
                if ty != RTM_NEWNEIGH || body.len() < 12 {
                    return;
                }
                let state = u16::from_ne_bytes([body[8], body[9]]);
                let lladdr = attrs(&body[12..])
                    .find(|(t, _)| *t == NDA_LLADDR)
                    .and_then(|(_, v)| <[u8; 6]>::try_from(v).ok());
                found = Some(Neighbour { lladdr, state });
            },
        );
        match r {
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
            Ok(()) => Ok(found),
        }
    }

    fn ack(&mut self, op: &str, msg: Msg) -> Result<(), NetlinkError> {
        self.request(op, msg, |_, _| {})
    }

    /// Sends a request and reads answers until its ACK (error 0), its error, or the end of its dump. `each` sees
    /// every other message of the answer: type and body after the netlink header.
    fn request(
        &mut self,
        op: &str,
        msg: Msg,
        mut each: impl FnMut(u16, &[u8]),
    ) -> Result<(), NetlinkError> {
        let err = |error, kernel_msg| NetlinkError {
            op: op.to_owned(),
            error,
            kernel_msg,
        };
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = msg.flags() & NLM_F_DUMP == NLM_F_DUMP;
        let wants_ack = msg.flags() & NLM_F_ACK != 0;
        let buf = msg.finish(seq);
        // SAFETY: sockaddr_nl is plain data; zero (pid 0) addresses the kernel.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: buf and kernel are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                &kernel as *const libc::sockaddr_nl as *const libc::sockaddr,
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(err(io::Error::last_os_error(), None));
        }

        let mut rx = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: sockaddr_nl is plain data.
            let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
            let mut from_len = size_of::<libc::sockaddr_nl>() as libc::socklen_t;
            // SAFETY: rx, from and from_len are valid for the lengths given.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    rx.as_mut_ptr().cast(),
                    rx.len(),
                    0,
                    &mut from as *mut libc::sockaddr_nl as *mut libc::sockaddr,
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err(e, None));
            }
            if from.nl_pid != 0 {
                continue; // not from the kernel
            }
            let mut data = &rx[..n as usize];
            while data.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
                let ty = u16::from_ne_bytes(data[4..6].try_into().expect("2 bytes"));
                let flags = u16::from_ne_bytes(data[6..8].try_into().expect("2 bytes"));
                let mseq = u32::from_ne_bytes(data[8..12].try_into().expect("4 bytes"));
                if len < NLMSG_HDRLEN || len > data.len() {
                    return Err(err(
                        io::Error::new(io::ErrorKind::InvalidData, "malformed netlink answer"),
                        None,
                    ));
                }
                let (this, rest) = data.split_at(len);
                data = rest.get(align4(len) - len..).unwrap_or(&[]);
                if mseq != seq {
                    continue; // an answer to an earlier request that timed out
                }
                match ty {
                    NLMSG_ERROR => {
                        let body = &this[NLMSG_HDRLEN..];
                        if body.len() < 4 {
                            return Err(err(
                                io::Error::new(io::ErrorKind::InvalidData, "short netlink error"),
                                None,
                            ));
                        }
                        let errno = -i32::from_ne_bytes(body[0..4].try_into().expect("4 bytes"));
                        if errno == 0 {
                            return Ok(());
                        }
                        return Err(err(
                            io::Error::from_raw_os_error(errno),
                            ext_ack_msg(flags, body),
                        ));
                    }
                    NLMSG_DONE if dump => return Ok(()),
                    _ => {
                        each(ty, &this[NLMSG_HDRLEN..]);
                        if !dump && flags & NLM_F_MULTI == 0 && !wants_ack {
                            return Ok(());
                        }
                    }
                }
            }
        }
    }
}

/// Routes vmsecd has added, so that all of them can be removed on exit (and are, at the latest, on drop).
#[derive(Debug)]
pub struct Routes {
    nl: Netlink,
    installed: Vec<Route>,
}

impl Routes {
    /// Tracks routes added through `nl`.
    pub fn new(nl: Netlink) -> Routes {
        Routes {
            nl,
            installed: Vec::new(),
        }
    }

    /// Adds a route and remembers it.
    pub fn add(&mut self, route: Route) -> Result<(), NetlinkError> {
        let route = match self.nl.add_route(&route) {
            Ok(()) => route,
            // The kernel refuses a preferred source it cannot use yet: an IPv6 address still in duplicate
            // address detection (libvirt adds its bridge's address without `nodad`, so a network started a
            // moment before vmsecd has one for about a second) is "Invalid source address" (EINVAL). The route
            // matters more than its source, which only concerns what this host itself sends to remote VMs.
            Err(e) if e.errno() == Some(libc::EINVAL) && route.src.is_some() => {
                let without = Route { src: None, ..route };
                self.nl.add_route(&without)?;
                tracing::warn!(
                    dst = %route.dst,
                    "route added without its source address {}: the kernel refused it ({e}); an IPv6 address \
                     still in duplicate address detection is refused so. The VMs' traffic is not affected; \
                     what this host itself sends to the remote VMs takes another source until the next start",
                    route.src.map(|a| a.to_string()).unwrap_or_default()
                );
                without
            }
            Err(e) => return Err(e),
        };
        tracing::debug!(dst = %route.dst, ifindex = route.ifindex, "route added");
        self.installed.push(route);
        Ok(())
    }

    /// Puts back every tracked route the kernel no longer has, and returns their prefixes. The kernel deletes
    /// a route by itself when its preferred source address goes: `virsh net-destroy` removes the bridge's
    /// address, and with it the routes to every remote subnet whose source it was, which `net-start` does not
    /// bring back (nor does anything else: traffic to the remote VMs would meet the fail-closed routes until
    /// a restart). A flush by hand is repaired the same way. Called every second: one dump of the main table.
    pub fn repair(&mut self) -> Result<Vec<Prefix>, NetlinkError> {
        self.repair_and_list(|_| false).0
    }

    /// [`Routes::repair`], and the routes of the main table that `also` accepts, read in the same dump (`None`
    /// when the dump failed): the daemon looks at other routes every second too, and one dump serves both.
    pub fn repair_and_list(
        &mut self,
        mut also: impl FnMut(&ListedRoute) -> bool,
    ) -> (Result<Vec<Prefix>, NetlinkError>, Option<Vec<ListedRoute>>) {
        let mut other = Vec::new();
        let listed = self.nl.main_routes(|r| {
            if also(r) {
                other.push(*r);
            }
            r.proto == msg::RTPROT_STATIC
        });
        match listed {
            Ok(listed) => (self.repair_listed(&listed), Some(other)),
            Err(e) => (Err(e), None),
        }
    }

    /// [`Routes::repair`] on the main table's static routes as `listed`.
    fn repair_listed(&mut self, listed: &[ListedRoute]) -> Result<Vec<Prefix>, NetlinkError> {
        // Once a second with one route per peer: a set, not a search of the listing per route. Keyed as
        // `ListedRoute::is` compares: the prefix and the device, unreachable routes left out.
        let present: std::collections::HashSet<(Prefix, u32)> = listed
            .iter()
            .filter(|l| !l.is_unreachable())
            .map(|l| (l.dst, l.oif))
            .collect();
        let (kept, missing): (Vec<Route>, Vec<Route>) = self
            .installed
            .iter()
            .copied()
            .partition(|r| present.contains(&(r.dst, r.ifindex)));
        if missing.is_empty() {
            return Ok(Vec::new());
        }
        self.installed = kept;
        let mut back = Vec::new();
        let mut first_error = None;
        // Every missing route is tried, and every one that fails stays tracked: one that cannot be put back
        // (another device's route to the same prefix in the way) must not keep the others out, nor make them
        // forgotten (never put back, nor removed at exit).
        for r in missing {
            // With the source first: it is back if the address is (net-start), else add() goes without it.
            match self.add(r) {
                Ok(()) => back.push(r.dst),
                Err(e) => {
                    // Remember it, so the next round tries again.
                    self.installed.push(r);
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => {
                if !back.is_empty() {
                    tracing::warn!(
                        "routes into the TUN were gone and are put back: {}",
                        back.iter()
                            .map(|p| p.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                Err(e)
            }
            None => Ok(back),
        }
    }

    /// Removes the tracked route to `dst`. A route already gone (its interface removed) counts as removed.
    pub fn remove(&mut self, dst: Prefix) -> Result<(), NetlinkError> {
        let Some(i) = self.installed.iter().position(|r| r.dst == dst) else {
            return Ok(());
        };
        let route = self.installed.remove(i);
        match self.nl.del_route(&route) {
            Err(e) if !gone(&e) => {
                self.installed.insert(i, route);
                Err(e)
            }
            _ => {
                tracing::debug!(dst = %route.dst, "route removed");
                Ok(())
            }
        }
    }

    /// Removes every tracked route; returns the first failure, after trying them all.
    pub fn remove_all(&mut self) -> Result<(), NetlinkError> {
        let mut first = None;
        for dst in self
            .installed
            .iter()
            .rev()
            .map(|r| r.dst)
            .collect::<Vec<_>>()
        {
            if let Err(e) = self.remove(dst) {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// The routes in place.
    pub fn installed(&self) -> &[Route] {
        &self.installed
    }

    /// The socket, for other requests.
    pub fn netlink(&mut self) -> &mut Netlink {
        &mut self.nl
    }
}

impl Drop for Routes {
    fn drop(&mut self) {
        if let Err(e) = self.remove_all() {
            tracing::warn!("could not remove a route on exit: {e}");
        }
    }
}

/// The route or its interface does not exist (any more).
fn gone(e: &NetlinkError) -> bool {
    matches!(e.errno(), Some(libc::ESRCH | libc::ENODEV | libc::ENOENT))
}

fn setsockopt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: *const libc::c_void,
    len: usize,
) -> io::Result<()> {
    // SAFETY: callers pass a pointer to a live value of `len` bytes of the option's type.
    if unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, value, len as libc::socklen_t) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_a_remedy() {
        let e = NetlinkError {
            op: "add route 198.19.2.0/24 dev #7".into(),
            error: io::Error::from_raw_os_error(libc::EEXIST),
            kernel_msg: None,
        };
        let s = e.to_string();
        assert!(
            s.starts_with("netlink: add route 198.19.2.0/24 dev #7: File exists"),
            "{s}"
        );
        assert!(s.contains("ip route show 198.19.2.0/24"), "{s}");
    }
}
