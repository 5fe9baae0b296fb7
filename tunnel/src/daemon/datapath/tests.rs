//! The datapath's rekey, fallback and policy rules, driven through [`Datapath`] with real ESP SAs.

use super::*;
use esp::{KeyMaterial, Transform, HEADROOM, TAILROOM};
use std::time::Duration;

const T: Transform = Transform::AesGcm128;

fn child(spi_in: u32, spi_out: u32, key: u8) -> ChildSaInfo {
    let keys = |k: u8| KeyMaterial::new(T, &vec![k; T.keymat_len()]).unwrap();
    let ts = |s: &str| s.parse::<Prefix>().unwrap().selector();
    ChildSaInfo {
        peer: "p".into(),
        ike_spi: 1,
        spi_in,
        spi_out,
        transform: T,
        esn: false,
        keys_in: keys(key),
        keys_out: keys(key + 1),
        ts_local: vec![ts("198.19.1.0/24")],
        ts_remote: vec![ts("198.19.2.0/24")],
        remote: "198.18.0.2:4500".parse().unwrap(),
        udp_encap: true,
        pfs_group: None,
    }
}

fn inner(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 253, 0, 0];
    p.extend_from_slice(&src);
    p.extend_from_slice(&dst);
    p
}

/// Encapsulates a packet from our VM to the peer's; returns the SPI it went out on.
fn send(d: &mut Datapath) -> u32 {
    let pkt = inner([198, 19, 1, 10], [198, 19, 2, 10]);
    let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
    let mut b = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + pkt.len());
    assert!(d.encap(&mut b).is_some());
    u32::from_be_bytes(b.as_slice()[..4].try_into().unwrap())
}

/// What the peer sends on the pair `c` (its outbound is our inbound).
fn receive(d: &mut Datapath, c: &ChildSaInfo) -> bool {
    let out = OutboundSa::new(SaParams::new(c.spi_in, T, false), &c.keys_in).unwrap();
    let pkt = inner([198, 19, 2, 10], [198, 19, 1, 10]);
    let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
    let mut b = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + pkt.len());
    out.encap(&mut b).unwrap();
    let mut esp = b.as_slice().to_vec();
    d.decap(&mut PacketBuf::full(&mut esp))
}

fn datapath() -> Datapath {
    Datapath::new(&[("p".into(), vec!["198.19.2.0/24".parse().unwrap()])])
}

#[test]
fn rekey_we_initiated_switches_outbound_at_once() {
    let mut d = datapath();
    let (old, new) = (child(0x1001, 0x2001, 1), child(0x1002, 0x2002, 3));
    d.install(&old, 64).unwrap();
    assert_eq!(send(&mut d), 0x2001);
    d.install(&new, 64).unwrap();
    assert_eq!(send(&mut d), 0x2002);
    // The old inbound SA still works until the old pair is deleted.
    assert!(receive(&mut d, &old));
    d.remove("p", 0x1001, 0x2001);
    assert_eq!(send(&mut d), 0x2002);
    assert!(receive(&mut d, &new));
}

#[test]
fn rekey_we_answered_waits_for_traffic_on_the_new_pair() {
    let mut d = datapath();
    let (old, new) = (child(0x1001, 0x2001, 1), child(0x1002, 0x2002, 3));
    d.install(&old, 64).unwrap();
    d.install_deferred(&new, 64).unwrap();
    // The peer may not have installed its new inbound SA yet: keep the old outbound one.
    assert_eq!(send(&mut d), 0x2001);
    assert!(receive(&mut d, &old));
    assert_eq!(send(&mut d), 0x2001);
    // The peer sends on the new pair: it has it, switch.
    assert!(receive(&mut d, &new));
    assert_eq!(send(&mut d), 0x2002);
    assert!(d.outbound_counters("p", 0x2002).is_some());
}

#[test]
fn rekey_we_answered_switches_when_the_peer_deletes_the_old_pair() {
    let mut d = datapath();
    let (old, new) = (child(0x1001, 0x2001, 1), child(0x1002, 0x2002, 3));
    d.install(&old, 64).unwrap();
    d.install_deferred(&new, 64).unwrap();
    assert!(
        d.outbound_counters("p", 0x2002).is_some(),
        "status sees the waiting SA"
    );
    d.remove("p", 0x1001, 0x2001);
    assert_eq!(send(&mut d), 0x2002);
    // A first Child SA is never held back.
    let mut d = datapath();
    d.install_deferred(&new, 64).unwrap();
    assert_eq!(send(&mut d), 0x2002);
}

/// Two IKE SAs with the peer for a moment (both ends initiated at once): the pair installed last is deleted
/// with its duplicate IKE SA, and the other pair, still up on both ends, carries the traffic again.
#[test]
fn removing_the_current_pair_falls_back_to_another_live_pair() {
    let mut d = datapath();
    let (kept, dup) = (child(0x1001, 0x2001, 1), child(0x1002, 0x2002, 3));
    d.install(&kept, 64).unwrap();
    d.install(&dup, 64).unwrap();
    assert_eq!(send(&mut d), 0x2002);
    d.remove("p", 0x1002, 0x2002);
    assert_eq!(send(&mut d), 0x2001);
    assert!(receive(&mut d, &kept));
    assert!(!receive(&mut d, &dup));
    d.remove("p", 0x1001, 0x2001);
    let pkt = inner([198, 19, 1, 10], [198, 19, 2, 10]);
    let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
    let mut b = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + pkt.len());
    assert!(d.encap(&mut b).is_none(), "no pair left: nothing is sent");
}

/// An outbound SA that has used seven eighths of its sequence numbers is reported, and no other; its
/// successor after the rekey is not.
#[test]
fn outbound_sa_running_low_is_reported() {
    let mut d = datapath();
    let (old, new) = (child(0x1001, 0x2001, 1), child(0x1002, 0x2002, 3));
    d.install(&old, 64).unwrap();
    send(&mut d);
    assert!(d.running_low().is_empty());
    {
        let o = d.out.read();
        let pkt = inner([198, 19, 1, 10], [198, 19, 2, 10]);
        let (sa, _) = o.route(&pkt).unwrap();
        // Use up seven eighths of the 32-bit space without sending (a reserved block left unused).
        let max = u64::from(u32::MAX);
        drop(sa.reserve(max - max / 8).unwrap());
    }
    assert_eq!(d.running_low(), vec![0x2001]);
    assert_eq!(send(&mut d), 0x2001, "it still sends");
    d.install(&new, 64).unwrap();
    assert!(d.running_low().is_empty(), "the rekeyed pair starts afresh");
}

/// A peer that rekeys again and again without ever deleting the old pairs: the replaced outbound SAs kept
/// for fallback stay bounded (the oldest go), and the newest of them still takes over when the current
/// one is removed.
#[test]
fn replaced_outbound_sas_are_trimmed() {
    let mut d = datapath();
    for k in 0..50u32 {
        d.install(&child(0x1000 + k, 0x2000 + k, (k % 100) as u8 * 2), 64)
            .unwrap();
    }
    assert_eq!(send(&mut d), 0x2000 + 49);
    let kept: Vec<u32> = d.out.read().peers[0].lanes[0]
        .standby
        .iter()
        .map(|(o, _)| o.params().spi)
        .collect();
    assert_eq!(kept, [0x2000 + 45, 0x2000 + 46, 0x2000 + 47, 0x2000 + 48]);
    d.remove("p", 0x1000 + 49, 0x2000 + 49);
    assert_eq!(
        send(&mut d),
        0x2000 + 48,
        "the newest replaced pair carries on"
    );
}

/// A rekeyed pair's delete: what the peer sent on the old pair before it switched, delivered after the
/// DELETE (reordering on the path), is still accepted for REKEYED_INBOUND_LINGER, and only then refused;
/// outbound traffic leaves the old pair at once.
#[test]
fn rekeyed_inbound_sa_lingers_then_goes() {
    let mut d = datapath();
    let old = child(0x1000, 0x2000, 2);
    let new = child(0x1001, 0x2001, 4);
    d.install(&old, 64).unwrap();
    d.install(&new, 64).unwrap();
    // The peer's outbound SA of the old pair, one sequence number after another (a fresh one per packet
    // would be a replay).
    let peer_old = OutboundSa::new(SaParams::new(old.spi_in, T, false), &old.keys_in).unwrap();
    let from_peer = |d: &mut Datapath| {
        let pkt = inner([198, 19, 2, 10], [198, 19, 1, 10]);
        let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
        let mut b = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + pkt.len());
        peer_old.encap(&mut b).unwrap();
        let mut esp = b.as_slice().to_vec();
        d.decap(&mut PacketBuf::full(&mut esp))
    };
    let t0 = Instant::now();
    d.retire(t0, "p", 0x1000, 0x2000);
    assert_eq!(send(&mut d), 0x2001, "outbound left the old pair at once");
    assert!(
        from_peer(&mut d),
        "in flight on the old pair: still delivered"
    );
    assert_eq!(d.next_retirement(), Some(t0 + REKEYED_INBOUND_LINGER));
    d.expire_retired(t0 + REKEYED_INBOUND_LINGER - Duration::from_millis(1));
    assert!(from_peer(&mut d), "delivered until the linger ends");
    d.expire_retired(t0 + REKEYED_INBOUND_LINGER);
    assert!(!from_peer(&mut d), "refused once it ended");
    assert!(receive(&mut d, &new));
    assert_eq!(d.next_retirement(), None);
}

/// Sends a packet between two addresses; returns the SPI it went out on, if any.
fn send_between(d: &mut Datapath, src: [u8; 4], dst: [u8; 4]) -> Option<u32> {
    let pkt = inner(src, dst);
    let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(&pkt);
    let mut b = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + pkt.len());
    d.encap(&mut b)?;
    Some(u32::from_be_bytes(b.as_slice()[..4].try_into().unwrap()))
}

/// A peer with two subnets that insists on one Child SA per subnet pair: each packet takes the Child SA
/// whose selectors cover it, and a rekey of one pair leaves the other alone.
#[test]
fn one_child_sa_per_subnet_pair_each_carries_its_own_traffic() {
    let ts = |s: &str| s.parse::<Prefix>().unwrap().selector();
    let mut d = Datapath::new(&[(
        "p".into(),
        vec![
            "198.19.2.0/24".parse().unwrap(),
            "198.19.3.0/24".parse().unwrap(),
        ],
    )]);
    let two = child(0x1001, 0x2001, 1);
    let mut three = child(0x1002, 0x2002, 3);
    three.ts_remote = vec![ts("198.19.3.0/24")];
    d.install(&two, 64).unwrap();
    d.install(&three, 64).unwrap();
    let (vm, to2, to3) = ([198, 19, 1, 10], [198, 19, 2, 10], [198, 19, 3, 10]);
    assert_eq!(send_between(&mut d, vm, to2), Some(0x2001));
    assert_eq!(send_between(&mut d, vm, to3), Some(0x2002));
    // Rekey of the .3 pair: only its lane switches.
    let mut three_new = child(0x1003, 0x2003, 5);
    three_new.ts_remote = three.ts_remote.clone();
    d.install(&three_new, 64).unwrap();
    d.remove("p", 0x1002, 0x2002);
    assert_eq!(send_between(&mut d, vm, to3), Some(0x2003));
    assert_eq!(send_between(&mut d, vm, to2), Some(0x2001));
    assert_eq!(d.out.read().peers[0].lanes.len(), 2);
    // The .2 pair deleted: its lane goes; .2 traffic falls back to the lane that is left (the peer's policy
    // decides), .3 traffic is unchanged.
    d.remove("p", 0x1001, 0x2001);
    assert_eq!(d.out.read().peers[0].lanes.len(), 1);
    assert_eq!(send_between(&mut d, vm, to3), Some(0x2003));
}

/// Review item 4: a peer that negotiates thousands of traffic selectors must not make every packet scan
/// them all (the lane lookup on send, the policy check on receive): a Child SA with more than
/// MAX_SELECTORS on a side is not installed, and nothing of it is looked at per packet.
#[test]
fn a_child_sa_with_too_many_selectors_is_not_installed() {
    let mut d = datapath();
    let mut c = child(0x100, 0x200, 1);
    c.ts_remote = (0..4000u32)
        .map(|i| {
            let a = std::net::Ipv4Addr::from(
                u32::from(std::net::Ipv4Addr::new(198, 19, 2, 0)) + i % 256,
            );
            Prefix::new(a.into(), 32).selector()
        })
        .collect();
    let e = d.install(&c, 64).unwrap_err().to_string();
    assert!(e.contains("4000") && e.contains("64"), "{e}");
    assert!(d.install_deferred(&c, 64).is_err());
    // Nothing of it is installed: no inbound SA, no lane.
    assert!(d.inbound_counters(0x100).is_none());
    assert!(d.outbound_counters("p", 0x200).is_none());
    // At the limit it is.
    c.ts_remote.truncate(MAX_SELECTORS);
    d.install(&c, 64).unwrap();
    assert!(d.outbound_counters("p", 0x200).is_some());
}

/// The peer's outbound SA of the pair `c` (our inbound one).
fn peer_out(c: &ChildSaInfo) -> OutboundSa {
    OutboundSa::new(SaParams::new(c.spi_in, T, false), &c.keys_in).unwrap()
}

/// Decapsulates `pkt` as the peer sent it on `out`; true if it is delivered.
fn receive_packet(d: &mut Datapath, out: &OutboundSa, pkt: &[u8]) -> bool {
    let mut buf = vec![0u8; HEADROOM + pkt.len() + TAILROOM];
    buf[HEADROOM..HEADROOM + pkt.len()].copy_from_slice(pkt);
    let mut b = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + pkt.len());
    out.encap(&mut b).unwrap();
    let mut esp = b.as_slice().to_vec();
    d.decap(&mut PacketBuf::full(&mut esp))
}

/// An ICMPv4 message of `ty` from `src` to `dst` that quotes `quote` (the quoted packet's header and more).
fn icmp4(src: [u8; 4], dst: [u8; 4], ty: u8, quote: &[u8]) -> Vec<u8> {
    let mut p = inner(src, dst);
    p[9] = 1;
    let len = (20 + 8 + quote.len()) as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p.extend_from_slice(&[ty, 4, 0, 0, 0, 0, 0x05, 0x14]);
    p.extend_from_slice(quote);
    p
}

/// A hostile peer (authenticated, inner addresses inside its selectors) sends ICMP errors to our VM about the
/// VM's flows with a third host (198.19.3.0/24): a port unreachable resets the VM's connected UDP socket, a
/// fragmentation needed shrinks its path MTU to that host. The packet an error quotes must have left on the
/// same SA (RFC 4301 6.1.1.1): dropped as policy otherwise, and when the quote is not there to be read.
#[test]
fn icmp_errors_must_quote_a_packet_of_their_own_sa() {
    let mut d = datapath();
    let c = child(0x1001, 0x2001, 1);
    d.install(&c, 64).unwrap();
    let out = peer_out(&c);
    let (router, vm, theirs, third) = (
        [198, 19, 2, 1],
        [198, 19, 1, 10],
        [198, 19, 2, 10],
        [198, 19, 3, 10],
    );
    let udp_quote = |from, to| {
        let mut q = inner(from, to);
        q[9] = 17;
        q.extend_from_slice(&[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        q
    };
    for ty in [3u8, 11, 12] {
        assert!(
            receive_packet(&mut d, &out, &icmp4(router, vm, ty, &udp_quote(vm, theirs))),
            "type {ty} about a flow on this SA is delivered"
        );
        assert!(
            !receive_packet(&mut d, &out, &icmp4(router, vm, ty, &udp_quote(vm, third))),
            "type {ty} about the VM's flow with another host is dropped"
        );
    }
    assert!(
        !receive_packet(&mut d, &out, &icmp4(router, vm, 3, &udp_quote(theirs, vm))),
        "a quote the wrong way round"
    );
    let truncated = udp_quote(vm, theirs);
    assert!(
        !receive_packet(&mut d, &out, &icmp4(router, vm, 3, &truncated[..19])),
        "quote cut short"
    );
    assert_eq!(d.drops().policy, 5);
    // Informational messages carry no quote; a fragment with an offset carries no ICMP header at all.
    let echo = icmp4(router, vm, 8, &udp_quote(vm, third));
    assert!(receive_packet(&mut d, &out, &echo));
    let mut later_fragment = icmp4(router, vm, 3, &udp_quote(vm, third));
    later_fragment[6..8].copy_from_slice(&[0, 0x10]);
    assert!(receive_packet(&mut d, &out, &later_fragment));
    assert_eq!(d.drops().policy, 5);
}

/// The same for ICMPv6, whose header may follow extension headers: a Packet Too Big behind a Destination
/// Options header and a Fragment header (first fragment) is checked like one that is not.
#[test]
fn icmpv6_errors_behind_extension_headers_must_quote_a_packet_of_their_own_sa() {
    let ts = |s: &str| s.parse::<Prefix>().unwrap().selector();
    let mut d = Datapath::new(&[("p".into(), vec!["2001:db8:2::/64".parse().unwrap()])]);
    let mut c = child(0x1001, 0x2001, 1);
    c.ts_local = vec![ts("2001:db8:1::/64")];
    c.ts_remote = vec![ts("2001:db8:2::/64")];
    d.install(&c, 64).unwrap();
    let out = peer_out(&c);
    let addr = |s: &str| s.parse::<std::net::Ipv6Addr>().unwrap().octets();
    let (router, vm, theirs, third) = (
        addr("2001:db8:2::1"),
        addr("2001:db8:1::10"),
        addr("2001:db8:2::10"),
        addr("2001:db8:3::10"),
    );
    let v6 = |nh: u8, src: [u8; 16], dst: [u8; 16], payload: &[u8]| {
        let mut p = vec![0x60, 0, 0, 0];
        p.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        p.extend_from_slice(&[nh, 64]);
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    };
    let quote = |to| v6(17, vm, to, &[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
    let ptb = |ty: u8, to| {
        let mut m = vec![ty, 0, 0, 0, 0, 0, 0x05, 0x00];
        m.extend_from_slice(&quote(to));
        m
    };
    // Destination Options (8 bytes, pad) then Fragment (offset 0, more fragments) then ICMPv6.
    let behind_headers = |m: &[u8]| {
        let mut p = vec![44, 0, 1, 4, 0, 0, 0, 0];
        p.extend_from_slice(&[58, 0, 0, 1, 0, 0, 0, 7]);
        p.extend_from_slice(m);
        v6(60, router, vm, &p)
    };
    assert!(receive_packet(
        &mut d,
        &out,
        &v6(58, router, vm, &ptb(2, theirs))
    ));
    assert!(!receive_packet(
        &mut d,
        &out,
        &v6(58, router, vm, &ptb(2, third))
    ));
    assert!(receive_packet(
        &mut d,
        &out,
        &behind_headers(&ptb(2, theirs))
    ));
    assert!(!receive_packet(
        &mut d,
        &out,
        &behind_headers(&ptb(1, third))
    ));
    assert!(
        !receive_packet(&mut d, &out, &v6(58, router, vm, &ptb(1, theirs)[..8 + 39])),
        "quote cut short"
    );
    // Echo request (type 128): informational, no quote looked at.
    assert!(receive_packet(
        &mut d,
        &out,
        &v6(58, router, vm, &ptb(128, third))
    ));
    assert_eq!(d.drops().policy, 3);
}
