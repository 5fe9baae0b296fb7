//! `address = [IPv4, IPv6]`: a dual-stack host, which family each pair uses, and the pairs with none in common.

use super::*;

/// a has both families, b IPv4 only, c IPv6 only.
const MIXED: &str = r#"
[[host]]
name = "a"
address = ["198.18.0.1", "2001:db8:0:ff::1"]
subnets = ["198.19.1.0/24"]

[[host]]
name = "b"
address = "198.18.0.2"
subnets = ["198.19.2.0/24"]

[[host]]
name = "c"
address = "2001:db8:0:ff::3"
subnets = ["198.19.3.0/24"]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_mixed_mesh_pairs_hosts_by_the_family_they_share() {
    let f = Fixture::new();
    let m = f.parse(&with_hosts(MIXED)).unwrap();
    let a = m.host("a").unwrap();
    assert_eq!(a.address, ip("198.18.0.1"));
    assert_eq!(a.second_address, Some(ip("2001:db8:0:ff::1")));
    // The default identity is the first address.
    assert_eq!(a.id, Identity::Addr(ip("198.18.0.1")));

    // a, found by its IPv6 address alone: both peers, b over IPv4 and c over IPv6.
    let ca = Config::new(m.clone(), None, &[ip("2001:db8:0:ff::1")]).unwrap();
    assert_eq!(ca.local().name, "a");
    let t = ca.tunnels();
    assert_eq!(t.len(), 2);
    assert_eq!(
        t[0].underlay().unwrap(),
        (ip("198.18.0.1"), ip("198.18.0.2"))
    );
    assert_eq!(
        t[1].underlay().unwrap(),
        (ip("2001:db8:0:ff::1"), ip("2001:db8:0:ff::3"))
    );
    assert!(ca.unreachable().is_empty());

    // b: a only; c is refused, by name, both hosts and their addresses in the line.
    let cb = Config::new(m.clone(), Some("b"), &[]).unwrap();
    assert_eq!(
        cb.peers().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    let refused = cb.unreachable();
    assert_eq!(refused.len(), 1);
    assert_eq!(
        refused[0].to_string(),
        "no tunnel between hosts b (198.18.0.2) and c (2001:db8:0:ff::3): they have no underlay address \
         family in common; give one of them an address of the other's family (address = [\"IPv4\", \
         \"IPv6\"]), or route their VMs' traffic through a host that has both"
    );
    // Its VMs stay behind the fail-closed routes all the same.
    assert!(crate::failclosed::plan(&cb).contains(&"198.19.3.0/24".parse().unwrap()));

    let cc = Config::new(m, Some("c"), &[]).unwrap();
    assert_eq!(
        cc.peers().map(|p| p.name.as_str()).collect::<Vec<_>>(),
        ["a"]
    );
    assert_eq!(cc.unreachable()[0].peer, "b");
}

#[test]
fn both_families_on_both_ends_use_ipv6() {
    let f = Fixture::new();
    let m = f
        .parse(&with_hosts(
            r#"
[[host]]
name = "a"
address = ["198.18.0.1", "2001:db8:0:ff::1"]
subnets = ["198.19.1.0/24"]

[[host]]
name = "d"
address = ["2001:db8:0:ff::4", "198.18.0.4"]
subnets = ["198.19.4.0/24"]
"#,
        ))
        .unwrap();
    let c = Config::new(m, Some("d"), &[]).unwrap();
    assert_eq!(
        c.tunnels()[0].underlay().unwrap(),
        (ip("2001:db8:0:ff::4"), ip("2001:db8:0:ff::1"))
    );
}

#[test]
fn address_lists_that_are_refused() {
    let f = Fixture::new();
    let host = |addr: &str| {
        with_hosts(&format!(
            "{TWO_HOSTS}\n[[host]]\nname = \"d0\"\naddress = {addr}\nsubnets = [\"198.19.3.0/24\"]\n"
        ))
    };
    let e = f.err(&host(r#"["198.18.0.3", "198.18.0.4"]"#));
    assert_eq!(e.key, "host[2].address[1]");
    assert!(
        invalid(&e).0.contains("a second IPv4 address (198.18.0.4)"),
        "{e}"
    );
    let e = f.err(&host(r#"["198.18.0.3", "2001:db8::3", "2001:db8::4"]"#));
    assert_eq!(e.key, "host[2].address");
    assert!(invalid(&e).0.contains("3 addresses"), "{e}");
    let e = f.err(&host("[]"));
    assert!(invalid(&e).0.contains("0 addresses"), "{e}");
    let e = f.err(&host(r#"["2001:db8::3", "ff02::1"]"#));
    assert_eq!(e.key, "host[2].address[1]");
    assert!(invalid(&e).0.contains("ff02::1 cannot be"), "{e}");
    // Another host's address, in the second place.
    let e = f.err(&host(r#"["2001:db8::3", "198.18.0.2"]"#));
    assert!(
        matches!(&*e.kind, ErrorKind::DuplicateAddress { other, address, .. }
            if other == "c0" && *address == ip("198.18.0.2")),
        "{e}"
    );
    // A subnet that holds a host's second address.
    let e = f.err(&with_hosts(&format!(
        "{TWO_HOSTS}\n[[host]]\nname = \"d0\"\naddress = [\"198.18.0.3\", \"2001:db8:3::1\"]\nsubnets = [\"198.19.3.0/24\"]\n\
         [[host]]\nname = \"e0\"\naddress = \"198.18.0.5\"\nsubnets = [\"2001:db8:3::/64\"]\n"
    )));
    assert!(
        matches!(&*e.kind, ErrorKind::AddressInSubnet { host, .. } if host == "d0"),
        "{e}"
    );
}
