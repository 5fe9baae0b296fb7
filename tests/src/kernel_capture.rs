//! What a capture of a kernel-peer test's underlay may hold (see [`crate::kernel_peer`]): only IKE and ESP of
//! the expected framing between the two hosts, over IPv4 or IPv6, never an inner packet in clear; and the
//! liveness checks each side sent.

use std::net::Ipv4Addr;

use crate::kernel_peer::{A, A6, AVM, AVM6, B, B6, BVM, BVM6};
use crate::traffic::Captured;

/// The frames that do not belong on the underlay: between A and B, with `udp`, anything but UDP between ports
/// 500/4500; without, anything but raw ESP (protocol 50) and IKE (UDP 500, or 4500 behind the non-ESP marker).
/// IP fragments after the first carry no ports: they are taken as part of their datagram (the first fragment
/// is checked). Anywhere: an inner address in an IP header, or the source and destination of a packet between
/// the VMs in clear in a payload. Returns (offenders, ESP packets seen, IKE datagrams seen).
pub fn underlay_offenders(cap: &Captured, udp: bool) -> (Vec<String>, usize, usize) {
    let vms: [Ipv4Addr; 2] = [AVM.parse().expect("addr"), BVM.parse().expect("addr")];
    let inner = |x: Ipv4Addr| x.octets()[..2] == [198, 19];
    let mut pairs = Vec::new();
    for x in vms {
        for y in vms {
            if x != y {
                let mut p = x.octets().to_vec();
                p.extend_from_slice(&y.octets());
                pairs.push(p);
            }
        }
    }
    let clear = |payload: &[u8]| payload.windows(8).any(|w| pairs.iter().any(|p| p == w));
    let ike_port = |p: Option<u16>| matches!(p, Some(500) | Some(4500));
    let (mut bad, mut esp, mut ike) = (Vec::new(), 0, 0);
    for f in &cap.ipv4 {
        let between = (f.src == A && f.dst == B) || (f.src == B && f.dst == A);
        let udp_ike_ports = f.proto == 17 && ike_port(f.sport) && ike_port(f.dport);
        let marker = f.payload.starts_with(&[0; 4]);
        let keepalive = f.payload == [0xff];
        let udp_esp = udp_ike_ports && f.sport == Some(4500) && !marker && !keepalive;
        let why = if inner(f.src) || inner(f.dst) {
            Some("inner address in the IP header")
        } else if clear(&f.payload) {
            Some("inner addresses in clear in the payload")
        } else if !between {
            None
        } else if f.later_fragment {
            (f.proto != if udp { 17 } else { 50 } && f.proto != 17)
                .then_some("a fragment of something else")
        } else if f.proto == 50 {
            esp += 1;
            udp.then_some("raw ESP where ESP in UDP was expected")
        } else if udp_esp {
            esp += 1;
            (!udp).then_some("ESP in UDP where raw ESP was expected")
        } else if udp_ike_ports {
            ike += 1;
            None
        } else {
            Some("neither IKE nor ESP")
        };
        if let Some(why) = why {
            bad.push(format!(
                "{:.3}s {} > {} proto {} ports {:?} > {:?}: {why}",
                f.t, f.src, f.dst, f.proto, f.sport, f.dport
            ));
        }
    }
    (bad, esp, ike)
}

/// Asserts the capture carries only the expected framing, and enough ESP and IKE to show the case happened.
pub fn check_capture(cap: &Captured, udp: bool, what: &str) {
    let (bad, esp, ike) = underlay_offenders(cap, udp);
    assert!(
        bad.is_empty(),
        "{what}: the underlay carried {} frames that do not belong ({}):\n{}",
        bad.len(),
        if udp {
            "only UDP 500/4500 expected"
        } else {
            "only raw ESP and IKE expected"
        },
        bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(ike >= 2, "{what}: the capture shows {ike} IKE datagrams");
    assert!(
        esp >= 20,
        "{what}: the capture shows only {esp} ESP packets"
    );
}

/// IKE liveness checks in a capture of the underlay: INFORMATIONAL requests (exchange type 37, Response flag
/// clear; RFC 7296 3.1: "R (Response) - This bit indicates that this message is a response to a message
/// containing the same Message ID") sent by A and by B, over UDP 500 or behind the non-ESP marker on 4500. On
/// an idle tunnel these are the liveness checks (no deletes or rekeys happen meanwhile).
pub fn informational_requests(cap: &Captured) -> (usize, usize) {
    let (mut from_a, mut from_b) = (0, 0);
    for f in cap
        .ipv4
        .iter()
        .filter(|f| f.proto == 17 && !f.later_fragment)
    {
        let ike = match (f.sport, f.dport) {
            (Some(500), Some(500)) => f.payload.get(..),
            (Some(4500), Some(4500)) if f.payload.starts_with(&[0; 4]) => f.payload.get(4..),
            _ => None,
        };
        let Some(ike) = ike else { continue };
        let (Some(&exchange), Some(&flags)) = (ike.get(18), ike.get(19)) else {
            continue;
        };
        if exchange == 37 && flags & 0x20 == 0 {
            if f.src == A {
                from_a += 1;
            } else if f.src == B {
                from_b += 1;
            }
        }
    }
    (from_a, from_b)
}

/// [`check_capture`] for a cell over the IPv6 underlay: between [`A6`] and [`B6`] only ICMPv6 (neighbour
/// discovery), IKE (UDP 500/4500) and ESP of the expected framing (fragments of it too: next header 44 whose
/// fragment header names 50, or 17 for UDP); no IPv4 between the hosts; no VM address of either family in clear.
pub fn check_capture6(cap: &Captured, udp: bool, what: &str) {
    use std::net::{IpAddr, Ipv6Addr};
    let hosts: [Ipv6Addr; 2] = [A6.parse().expect("addr"), B6.parse().expect("addr")];
    let vms: Vec<IpAddr> = [AVM, BVM, AVM6, BVM6]
        .iter()
        .map(|s| s.parse().expect("addr"))
        .collect();
    let mut bad = crate::dualstack::leaks(
        cap,
        &[],
        &["198.19.0.0/16", "2001:db8:1::/48", "2001:db8:2::/48"],
        &vms,
    );
    let ike_port = |p: Option<u16>| matches!(p, Some(500) | Some(4500));
    let (mut esp, mut ike) = (0, 0);
    for f in cap
        .ipv6
        .iter()
        .filter(|f| hosts.contains(&f.src) && hosts.contains(&f.dst))
    {
        let udp_ike_ports = f.next == 17 && ike_port(f.sport) && ike_port(f.dport);
        let udp_esp = udp_ike_ports
            && f.sport == Some(4500)
            && !f.payload.starts_with(&[0; 4])
            && f.payload != [0xff];
        let why = match f.next {
            58 => None,
            50 => {
                esp += 1;
                udp.then_some("raw ESP where ESP in UDP was expected")
            }
            44 => (f.payload.first() != Some(if udp { &17 } else { &50 }))
                .then_some("a fragment of something else"),
            _ if udp_esp => {
                esp += 1;
                (!udp).then_some("ESP in UDP where raw ESP was expected")
            }
            _ if udp_ike_ports => {
                ike += 1;
                None
            }
            _ => Some("neither IKE nor ESP"),
        };
        if let Some(why) = why {
            bad.push(format!(
                "{:.3}s {} > {} next header {} ports {:?} > {:?}: {why}",
                f.t, f.src, f.dst, f.next, f.sport, f.dport
            ));
        }
    }
    for f in cap
        .ipv4
        .iter()
        .filter(|f| [A, B].contains(&f.src) && [A, B].contains(&f.dst))
    {
        bad.push(format!(
            "{:.3}s {} > {} proto {}: IPv4 between the hosts on an IPv6 cell",
            f.t, f.src, f.dst, f.proto
        ));
    }
    assert!(
        bad.is_empty(),
        "{what}: the IPv6 underlay carried {} frames that do not belong:\n{}",
        bad.len(),
        bad.iter().take(20).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(
        ike >= 2,
        "{what}: the capture shows {ike} IKE datagrams over IPv6"
    );
    assert!(
        esp >= 20,
        "{what}: the capture shows only {esp} ESP packets over IPv6"
    );
}
