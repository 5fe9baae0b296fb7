//! `encap = "auto"` between two vmsecd peers: both announce vmsecd's Vendor ID in IKE_SA_INIT and move IKE and
//! ESP to UDP 4500 without faking NAT detection; towards a peer that does not announce it (kernel IPsec,
//! strongSwan), raw ESP unless a NAT is found. The choice is covered by AUTH: stripping the ID fails IKE_AUTH.

mod common;

use common::*;
use ike::event::{Encap, Event, Transmit};
use ike::message::{self, ExchangeType, Payload};
use ike::vendor::UDP_ENCAP_VID;

/// The Encap of each side's IkeUp event.
fn encaps(p: &Pair) -> (Vec<Encap>, Vec<Encap>) {
    let of = |ev: &[Event]| {
        ev.iter()
            .filter_map(|e| match e {
                Event::IkeUp { encap, nat, .. } => {
                    assert_eq!(*nat, encap.udp(), "nat flag and encap agree");
                    Some(*encap)
                }
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    (of(&p.ev_a), of(&p.ev_b))
}

/// The Vendor IDs of a plain IKE_SA_INIT message.
fn vids(t: &Transmit) -> Vec<Vec<u8>> {
    message::parse(&t.data)
        .map(|m| {
            m.payloads
                .iter()
                .filter_map(|p| match p {
                    Payload::Vendor(v) => Some(v.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn init_messages(p: &Pair) -> (Transmit, Transmit) {
    let init: Vec<&(bool, Transmit)> = p
        .log
        .iter()
        .filter(|(_, t)| {
            t.local_port == 500
                && message::parse(&t.data)
                    .is_ok_and(|m| m.header.exchange == ExchangeType::IKE_SA_INIT)
        })
        .collect();
    let req = init.iter().find(|(from_a, _)| *from_a).unwrap().1.clone();
    let resp = init.iter().find(|(from_a, _)| !*from_a).unwrap().1.clone();
    (req, resp)
}

#[test]
fn two_vmsecd_peers_agree_on_udp_4500_without_faking_nat() {
    let (mut a, mut b) = configs();
    a.udp_with_vmsecd = true;
    b.udp_with_vmsecd = true;
    let mut p = Pair::new(a, b);
    p.connect();
    assert_eq!(
        encaps(&p),
        (vec![Encap::VmsecdPeer], vec![Encap::VmsecdPeer])
    );
    let (ca, cb) = (child_ups(&p.ev_a), child_ups(&p.ev_b));
    assert_eq!((ca.len(), cb.len()), (1, 1));
    assert!(ca[0].udp_encap && cb[0].udp_encap);
    assert_eq!((ca[0].remote.port(), cb[0].remote.port()), (4500, 4500));
    let (req, resp) = init_messages(&p);
    assert_eq!(vids(&req), vec![UDP_ENCAP_VID.to_vec()]);
    assert_eq!(vids(&resp), vec![UDP_ENCAP_VID.to_vec()]);
    // IKE_AUTH and everything after it on 4500 both ways.
    assert!(p
        .log
        .iter()
        .skip(2)
        .all(|(_, t)| (t.local_port, t.remote.port()) == (4500, 4500)));
    // Real NAT detection hashes: neither side thinks it is behind a NAT, so no keepalives.
    p.run_for(std::time::Duration::from_secs(120));
    assert!(
        !p.log.iter().any(|(_, t)| t.data == [0xff]),
        "no NAT, no keepalives"
    );
    let sa = &p.a.status()[0].1;
    assert_eq!((sa.nat, sa.encap), (true, Encap::VmsecdPeer));
}

#[test]
fn a_peer_without_the_vendor_id_gets_raw_esp_and_nothing_private() {
    // A, vmsecd with encap auto, initiates towards B, which does not know the ID (kernel IPsec without NAT).
    let (mut a, b) = configs();
    a.udp_with_vmsecd = true;
    let mut p = Pair::new(a, b);
    p.connect();
    assert_eq!(encaps(&p), (vec![Encap::Raw], vec![Encap::Raw]));
    let ca = child_ups(&p.ev_a);
    assert!(!ca[0].udp_encap && !child_ups(&p.ev_b)[0].udp_encap);
    assert!(p.log.iter().all(|(_, t)| t.local_port == 500));
    // B initiates towards A: A announces the ID in its request only; B ignores it.
    let (a, mut b) = configs();
    b.udp_with_vmsecd = true;
    let mut p = Pair::new(a, b);
    p.connect();
    assert_eq!(encaps(&p), (vec![Encap::Raw], vec![Encap::Raw]));
    let (req, resp) = init_messages(&p);
    assert!(vids(&req).is_empty());
    assert!(
        vids(&resp).is_empty(),
        "a responder sends its ID only to a peer that announced it"
    );
}

#[test]
fn forced_encapsulation_and_nat_take_precedence() {
    // encap = "udp" on A, auto on B: A fakes its source hash (as strongSwan's encap = yes), B sees a NAT.
    let (mut a, mut b) = configs();
    a.force_encap = true;
    b.udp_with_vmsecd = true;
    let mut p = Pair::new(a, b);
    p.connect();
    assert_eq!(encaps(&p), (vec![Encap::Forced], vec![Encap::Nat]));
    assert!(child_ups(&p.ev_a)[0].udp_encap && child_ups(&p.ev_b)[0].udp_encap);
}

#[test]
fn stripping_the_vendor_id_on_the_path_fails_authentication() {
    let (mut a, mut b) = configs();
    a.udp_with_vmsecd = true;
    b.udp_with_vmsecd = true;
    let mut p = Pair::new(a, b);
    // An attacker removes the ID from B's IKE_SA_INIT response: A then believes B wants raw ESP, B the
    // opposite. Both AUTH payloads sign the IKE_SA_INIT messages as sent, so A's check of B's AUTH fails.
    let mut stripped = false;
    p.a.connect(p.now, "b").unwrap();
    loop {
        let mut moved = false;
        while let Some(t) = p.a.poll_transmit() {
            moved = true;
            p.deliver(true, t);
        }
        while let Some(mut t) = p.b.poll_transmit() {
            moved = true;
            if let Ok(m) = message::parse(&t.data) {
                if m.header.exchange == ExchangeType::IKE_SA_INIT && !stripped {
                    let kept: Vec<Payload> = m
                        .payloads
                        .iter()
                        .filter(|x| !matches!(x, Payload::Vendor(_)))
                        .cloned()
                        .collect();
                    t.data = message::encode_plain(m.header, &kept);
                    stripped = true;
                }
            }
            p.deliver(false, t);
        }
        while let Some(e) = p.a.poll_event() {
            p.ev_a.push(e);
        }
        while let Some(e) = p.b.poll_event() {
            p.ev_b.push(e);
        }
        if !moved {
            break;
        }
    }
    assert!(stripped);
    p.run_for(std::time::Duration::from_secs(300));
    // A's AUTH signs A's request, which was not touched: B authenticates A and answers. B's AUTH signs B's
    // response as B sent it, so A refuses it, never installs a Child SA, and tells B, which removes its own.
    assert!(child_ups(&p.ev_a).is_empty(), "{:?}", p.ev_a);
    assert!(
        !p.ev_a.iter().any(|e| matches!(e, Event::IkeUp { .. })),
        "A authenticated nothing over a tampered IKE_SA_INIT"
    );
    assert!(!downs(&p.ev_a).is_empty());
    assert!(
        p.a.status().is_empty() && p.b.status().is_empty(),
        "no SA left: {:?}",
        p.ev_b
    );
}
