//! NETLINK_ROUTE messages as bytes: the uapi constants, the builder of requests (routes, `unreachable`
//! routes, addresses) and the parsers of what the kernel answers (route dumps, attributes, extended ACK text).
//! No socket here: [`super::Netlink`] sends what this builds and hands back what it reads.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{ListedRoute, Route, UnreachableRoute};
use crate::prefix::Prefix;

// uapi/linux/netlink.h
pub(super) const NLMSG_HDRLEN: usize = 16;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLM_F_REQUEST: u16 = 0x1;
pub(super) const NLM_F_MULTI: u16 = 0x2;
pub(super) const NLM_F_ACK: u16 = 0x4;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLM_F_EXCL: u16 = 0x200;
pub(super) const NLM_F_CREATE: u16 = 0x400;
pub(super) const NLM_F_CAPPED: u16 = 0x100;
pub(super) const NLM_F_ACK_TLVS: u16 = 0x200;
pub(super) const NLMSGERR_ATTR_MSG: u16 = 1;
pub(super) const SOL_NETLINK: libc::c_int = 270;
pub(super) const NETLINK_CAP_ACK: libc::c_int = 10;
pub(super) const NETLINK_EXT_ACK: libc::c_int = 11;
// uapi/linux/rtnetlink.h, if_addr.h
pub(super) const RTM_NEWADDR: u16 = 20;
pub(super) const RTM_DELADDR: u16 = 21;
pub(super) const RTM_GETADDR: u16 = 22;
pub(super) const RTM_NEWROUTE: u16 = 24;
pub(super) const RTM_DELROUTE: u16 = 25;
pub(super) const RTM_GETROUTE: u16 = 26;
pub(super) const RTM_NEWNEIGH: u16 = 28;
pub(super) const RTM_GETNEIGH: u16 = 30;
pub(super) const NDA_DST: u16 = 1;
pub(super) const NDA_LLADDR: u16 = 2;
pub(super) const RTA_DST: u16 = 1;
pub(super) const RTA_SRC: u16 = 2;
pub(super) const RTA_OIF: u16 = 4;
pub(super) const RTA_GATEWAY: u16 = 5;
pub(super) const RTA_PRIORITY: u16 = 6;
pub(super) const RTA_METRICS: u16 = 8;
/// In `RTA_METRICS` (nested): the route's MTU.
pub(super) const RTAX_MTU: u16 = 2;
pub(super) const RTA_PREFSRC: u16 = 7;
pub(super) const RTA_TABLE: u16 = 15;
/// A next hop of another family than the route's (`struct rtvia`: the family, host order, then the address), as
/// an IPv4 route through an IPv6 next hop has (RFC 5549, `ip route add ... via inet6 ...`).
pub(super) const RTA_VIA: u16 = 18;
pub(super) const IFA_ADDRESS: u16 = 1;
pub(super) const IFA_LOCAL: u16 = 2;
pub(super) const IFA_F_NODAD: u8 = 0x02;
pub(super) const RT_TABLE_MAIN: u8 = 254;
pub(super) const RTPROT_STATIC: u8 = 4;
pub(super) const RT_SCOPE_UNIVERSE: u8 = 0;
pub(super) const RT_SCOPE_LINK: u8 = 253;
pub(super) const RT_SCOPE_NOWHERE: u8 = 255;
pub(super) const RTN_UNICAST: u8 = 1;
pub(super) const RTN_UNREACHABLE: u8 = 7;

/// A netlink message under construction: header (length and sequence filled in by `finish`), body, attributes.
pub(super) struct Msg(Vec<u8>);

impl Msg {
    pub(super) fn new(ty: u16, flags: u16) -> Msg {
        let mut v = Vec::with_capacity(128);
        v.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_seq
        v.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid
        Msg(v)
    }

    pub(super) fn flags(&self) -> u16 {
        u16::from_ne_bytes([self.0[6], self.0[7]])
    }

    pub(super) fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    /// struct rtattr { u16 len; u16 type; } and the value, padded to 4 bytes.
    pub(super) fn attr(&mut self, ty: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.0.resize(align4(self.0.len()), 0);
    }

    pub(super) fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.0
    }
}

pub(super) fn route_msg(ty: u16, flags: u16, r: &Route) -> Msg {
    let mut m = Msg::new(ty, flags);
    let (family, _) = family_of(r.dst.addr());
    // struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type; u32 flags }
    m.bytes(&[
        family,
        r.dst.prefix_len(),
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        RT_SCOPE_LINK,
        RTN_UNICAST,
    ]);
    m.bytes(&0u32.to_ne_bytes());
    m.attr(RTA_DST, &ip_bytes(r.dst.addr()));
    m.attr(RTA_OIF, &r.ifindex.to_ne_bytes());
    if let Some(src) = r.src {
        m.attr(RTA_PREFSRC, &ip_bytes(src));
    }
    m
}

/// An `unreachable` route: no interface, no gateway (the kernel refuses either with one), scope universe when
/// added; scope "nowhere" when deleted, which matches any scope, as `ip route del` does.
pub(super) fn unreachable_msg(ty: u16, flags: u16, r: &UnreachableRoute) -> Msg {
    let mut m = Msg::new(ty, flags);
    let (family, _) = family_of(r.dst.addr());
    let scope = if ty == RTM_DELROUTE {
        RT_SCOPE_NOWHERE
    } else {
        RT_SCOPE_UNIVERSE
    };
    m.bytes(&[
        family,
        r.dst.prefix_len(),
        0,
        0,
        RT_TABLE_MAIN,
        r.proto,
        scope,
        RTN_UNREACHABLE,
    ]);
    m.bytes(&0u32.to_ne_bytes());
    m.attr(RTA_DST, &ip_bytes(r.dst.addr()));
    m.attr(RTA_PRIORITY, &r.metric.to_ne_bytes());
    m
}

/// One route of a dump (struct rtmsg and its attributes), with its table; `None` for anything else.
pub(super) fn parse_route(ty: u16, body: &[u8]) -> Option<(ListedRoute, u32)> {
    if ty != RTM_NEWROUTE || body.len() < 12 {
        return None;
    }
    let (family, dst_len, table, proto, kind) = (body[0], body[1], body[4], body[5], body[7]);
    let mut table = u32::from(table);
    let mut dst = None;
    let mut metric = 0;
    let mut oif = 0;
    for (t, v) in attrs(&body[12..]) {
        match t {
            RTA_DST => dst = ip_from(family, v),
            RTA_OIF if v.len() == 4 => oif = u32::from_ne_bytes(v.try_into().ok()?),
            RTA_PRIORITY if v.len() == 4 => metric = u32::from_ne_bytes(v.try_into().ok()?),
            RTA_TABLE if v.len() == 4 => table = u32::from_ne_bytes(v.try_into().ok()?),
            _ => {}
        }
    }
    // A default route has no RTA_DST.
    let dst = match (dst, i32::from(family)) {
        (Some(d), _) => d,
        (None, libc::AF_INET) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (None, libc::AF_INET6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    Some((
        ListedRoute {
            dst: Prefix::new(dst, dst_len),
            kind,
            metric,
            proto,
            oif,
        },
        table,
    ))
}

pub(super) fn addr_msg(ty: u16, flags: u16, ifindex: u32, addr: IpAddr, prefix_len: u8) -> Msg {
    let mut m = Msg::new(ty, flags);
    let (family, _) = family_of(addr);
    let ifa_flags = if addr.is_ipv6() { IFA_F_NODAD } else { 0 };
    m.bytes(&[family, prefix_len, ifa_flags, RT_SCOPE_UNIVERSE]);
    m.bytes(&ifindex.to_ne_bytes());
    m.attr(IFA_LOCAL, &ip_bytes(addr));
    m.attr(IFA_ADDRESS, &ip_bytes(addr));
    m
}

pub(super) fn family_of(a: IpAddr) -> (u8, u8) {
    match a {
        IpAddr::V4(_) => (libc::AF_INET as u8, 32),
        IpAddr::V6(_) => (libc::AF_INET6 as u8, 128),
    }
}

pub(super) fn ip_bytes(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

pub(super) fn ip_from(family: u8, v: &[u8]) -> Option<IpAddr> {
    match (i32::from(family), v.len()) {
        (libc::AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?))),
        (libc::AF_INET6, 16) => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?))),
        _ => None,
    }
}

pub(super) fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes of a message body: (type, value) pairs; a malformed one ends the list.
pub(super) fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff; // without NLA_F_NESTED / NLA_F_NET_BYTEORDER
        if len < 4 || len > b.len() {
            return None;
        }
        let v = &b[4..len];
        b = b.get(align4(len)..).unwrap_or(&[]);
        Some((ty, v))
    })
}

/// The kernel's text in an error answer: struct nlmsgerr { int error; struct nlmsghdr msg; [payload] } then
/// attributes when NLM_F_ACK_TLVS is set. With NETLINK_CAP_ACK (NLM_F_CAPPED) the payload is left out.
pub(super) fn ext_ack_msg(flags: u16, body: &[u8]) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 || body.len() < 4 + NLMSG_HDRLEN {
        return None;
    }
    let orig_len = u32::from_ne_bytes(body[4..8].try_into().ok()?) as usize;
    let tlv_at = 4 + if flags & NLM_F_CAPPED != 0 {
        NLMSG_HDRLEN
    } else {
        align4(orig_len)
    };
    attrs(body.get(tlv_at..)?)
        .find(|&(t, _)| t == NLMSGERR_ATTR_MSG)
        .map(|(_, v)| {
            String::from_utf8_lossy(v.split(|&b| b == 0).next().unwrap_or(v)).into_owned()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_message_layout() {
        let r = Route {
            dst: "198.19.2.0/24".parse().unwrap(),
            ifindex: 7,
            src: Some("198.19.1.1".parse().unwrap()),
        };
        let b = route_msg(
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &r,
        )
        .finish(9);
        assert_eq!(b.len(), 16 + 12 + 8 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(u16::from_ne_bytes([b[4], b[5]]), RTM_NEWROUTE);
        assert_eq!(u32::from_ne_bytes(b[8..12].try_into().unwrap()), 9);
        assert_eq!(&b[16..24], &[libc::AF_INET as u8, 24, 0, 0, 254, 4, 253, 1]);
        let a: Vec<_> = attrs(&b[28..]).collect();
        assert_eq!(a[0], (RTA_DST, &[198u8, 19, 2, 0][..]));
        assert_eq!(a[1], (RTA_OIF, &7u32.to_ne_bytes()[..]));
        assert_eq!(a[2], (RTA_PREFSRC, &[198u8, 19, 1, 1][..]));
        // The kernel's dump of it carries the interface back; only that prefix into that interface is ours.
        let (listed, _) = parse_route(RTM_NEWROUTE, &b[16..]).unwrap();
        assert_eq!((listed.dst, listed.oif), (r.dst, 7));
        assert!(listed.is(&r));
        let elsewhere = ListedRoute { oif: 8, ..listed };
        assert!(!elsewhere.is(&r), "same prefix through another device");
        let other_prefix = ListedRoute {
            dst: "198.19.3.0/24".parse().unwrap(),
            ..listed
        };
        assert!(!other_prefix.is(&r));
        let refusing = ListedRoute {
            kind: RTN_UNREACHABLE,
            ..listed
        };
        assert!(
            !refusing.is(&r),
            "an unreachable route is never the TUN route"
        );
    }

    #[test]
    fn unreachable_route_layout_and_dump_parse() {
        let r = UnreachableRoute {
            dst: "2001:db8:2::/64".parse().unwrap(),
            metric: 1_000_000_000,
            proto: 118,
        };
        let b = unreachable_msg(RTM_NEWROUTE, NLM_F_REQUEST, &r).finish(1);
        // family, dst_len, src_len, tos, table main, proto, scope universe, type unreachable
        assert_eq!(
            &b[16..24],
            &[libc::AF_INET6 as u8, 64, 0, 0, 254, 118, 0, 7]
        );
        let a: Vec<_> = attrs(&b[28..]).collect();
        assert_eq!(
            a.len(),
            2,
            "no interface, no gateway: the kernel refuses either"
        );
        assert_eq!(a[1], (RTA_PRIORITY, &1_000_000_000u32.to_ne_bytes()[..]));
        let del = unreachable_msg(RTM_DELROUTE, NLM_F_REQUEST, &r).finish(2);
        assert_eq!(del[16 + 6], RT_SCOPE_NOWHERE);
        // What the kernel dumps back has the same layout (plus RTA_TABLE and others).
        let mut body = b[16..].to_vec();
        body.extend_from_slice(&8u16.to_ne_bytes());
        body.extend_from_slice(&RTA_TABLE.to_ne_bytes());
        body.extend_from_slice(&254u32.to_ne_bytes());
        let (listed, table) = parse_route(RTM_NEWROUTE, &body).unwrap();
        assert_eq!(table, 254);
        assert_eq!(
            listed,
            ListedRoute {
                dst: r.dst,
                kind: RTN_UNREACHABLE,
                metric: r.metric,
                proto: 118,
                oif: 0,
            }
        );
        assert!(listed.is_unreachable());
        assert_eq!(parse_route(RTM_NEWADDR, &body), None);
        assert_eq!(parse_route(RTM_NEWROUTE, &body[..8]), None);
    }

    #[test]
    fn ipv6_attributes_pad_and_parse() {
        let b = addr_msg(
            RTM_NEWADDR,
            NLM_F_REQUEST,
            3,
            "2001:db8::1".parse().unwrap(),
            64,
        )
        .finish(1);
        assert_eq!(b.len(), 16 + 8 + 20 + 20);
        assert_eq!(b[16 + 2], IFA_F_NODAD);
        let a: Vec<_> = attrs(&b[24..]).collect();
        assert_eq!(a.len(), 2);
        assert_eq!(
            ip_from(libc::AF_INET6 as u8, a[0].1),
            Some("2001:db8::1".parse().unwrap())
        );
    }

    #[test]
    fn extended_ack_text_is_found() {
        // nlmsgerr with a capped original header, then NLMSGERR_ATTR_MSG "Nexthop device is not up".
        let mut body = (-libc::ENETDOWN).to_ne_bytes().to_vec();
        body.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
        let text = b"Nexthop device is not up\0";
        body.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        body.extend_from_slice(text);
        let m = ext_ack_msg(NLM_F_CAPPED | NLM_F_ACK_TLVS, &body);
        assert_eq!(m.as_deref(), Some("Nexthop device is not up"));
        assert_eq!(ext_ack_msg(NLM_F_CAPPED, &body), None);
    }
}
