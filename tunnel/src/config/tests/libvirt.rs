//! Tests of `subnets = "libvirt"`: `libvirt_range` (the mesh's and each host's), confinement of each libvirt host
//! to its range, and reading this host's libvirt networks ([`Config::resolve_libvirt`]).

use super::*;

/// b0 lists its subnets, c0 takes them from libvirt; `mesh` holds extra `[mesh]` keys, `c0` extra keys of c0.
fn libvirt_mesh(mesh: &str, c0: &str) -> String {
    format!(
        "[mesh]\npsk_file = \"psk\"\n{mesh}\n\n[[host]]\nname = \"b0\"\naddress = \"198.18.0.1\"\nsubnets = \
         [\"198.19.1.0/24\"]\n\n[[host]]\nname = \"c0\"\naddress = \"198.18.0.2\"\nsubnets = \"libvirt\"\n{c0}\n"
    )
}

fn range_of(m: &Mesh, host: &str) -> Vec<String> {
    m.host(host)
        .unwrap()
        .libvirt
        .as_ref()
        .unwrap()
        .range
        .iter()
        .map(|p| p.to_string())
        .collect()
}

#[test]
fn subnets_libvirt_with_libvirt_range() {
    let f = Fixture::new();
    let m = f
        .parse(&libvirt_mesh(
            "libvirt_range = [\"198.19.0.0/16\", \"198.20.0.0/24\"]",
            "libvirt_networks = [\"default\", \"lab\"]",
        ))
        .unwrap();
    // The mesh-wide range of the one libvirt host becomes its own.
    assert_eq!(range_of(&m, "c0"), ["198.19.0.0/16", "198.20.0.0/24"]);
    let c0 = m.host("c0").unwrap();
    assert!(c0.subnets.is_empty());
    assert_eq!(
        c0.libvirt.as_ref().unwrap().networks,
        vec!["default".to_owned(), "lab".to_owned()]
    );
    assert_eq!(m.host("b0").unwrap().libvirt, None);
    // Without libvirt_networks: every network.
    let m = f
        .parse(&libvirt_mesh("libvirt_range = [\"198.19.0.0/16\"]", ""))
        .unwrap();
    assert_eq!(
        m.host("c0").unwrap().libvirt.as_ref().unwrap().networks,
        Vec::<String>::new()
    );
    // Seen from b0, c0's remote selectors are the range; b0's own are its subnets.
    let c = Config::new(m, Some("b0"), &[]).unwrap();
    let t = c.tunnels();
    assert_eq!(t[0].remote_selectors()[0].to_string(), "198.19.0.0/16");
    assert!(t[0].remote_subnets().is_empty());
    // The host's own key does the same.
    let m = f
        .parse(&libvirt_mesh("", "libvirt_range = [\"198.19.2.0/24\"]"))
        .unwrap();
    assert_eq!(range_of(&m, "c0"), ["198.19.2.0/24"]);
}

/// b0 lists its subnets; c0, d0 and e0 take theirs from libvirt, each with `ranges[i]` (a whole line) in its
/// `[[host]]`; `mesh` holds extra `[mesh]` keys.
fn three_libvirt(mesh: &str, ranges: [&str; 3]) -> String {
    let mut t = format!(
        "[mesh]\npsk_file = \"psk\"\n{mesh}\n\n[[host]]\nname = \"b0\"\naddress = \"198.18.0.1\"\nsubnets = \
         [\"198.19.1.0/24\"]\n"
    );
    for (i, (name, r)) in ["c0", "d0", "e0"].iter().zip(ranges).enumerate() {
        t.push_str(&format!(
            "\n[[host]]\nname = \"{name}\"\naddress = \"198.18.0.{}\"\nsubnets = \"libvirt\"\n{r}\n",
            i + 2
        ));
    }
    t
}

#[test]
fn each_libvirt_host_is_confined_to_its_own_range() {
    let f = Fixture::new();
    let own = [
        "libvirt_range = [\"198.19.16.0/20\"]",
        "libvirt_range = [\"198.19.32.0/20\", \"fd00:19:32::/48\"]",
        "libvirt_range = [\"198.19.48.0/20\"]",
    ];
    let m = f.parse(&three_libvirt("", own)).unwrap();
    assert_eq!(range_of(&m, "c0"), ["198.19.16.0/20"]);
    assert_eq!(range_of(&m, "d0"), ["198.19.32.0/20", "fd00:19:32::/48"]);
    assert_eq!(range_of(&m, "e0"), ["198.19.48.0/20"]);
    // Each peer is offered and accepted only within its own range.
    let c = Config::new(m, Some("b0"), &[]).unwrap();
    let sel: Vec<(String, Vec<String>)> = c
        .tunnels()
        .iter()
        .map(|t| {
            (
                t.peer.name.clone(),
                t.remote_selectors().iter().map(|p| p.to_string()).collect(),
            )
        })
        .collect();
    assert_eq!(
        sel,
        [
            ("c0".to_owned(), vec!["198.19.16.0/20".to_owned()]),
            (
                "d0".to_owned(),
                vec!["198.19.32.0/20".to_owned(), "fd00:19:32::/48".to_owned()]
            ),
            ("e0".to_owned(), vec!["198.19.48.0/20".to_owned()]),
        ]
    );

    // Overlapping ranges of two hosts: refused at load, naming both hosts.
    let e = f.err(&three_libvirt(
        "",
        [own[0], own[1], "libvirt_range = [\"198.19.0.0/16\"]"],
    ));
    assert_eq!(e.key, "host[3].libvirt_range");
    let (problem, allowed) = invalid(&e);
    assert_eq!(
        problem,
        "e0's libvirt_range 198.19.0.0/16 overlaps c0's libvirt_range 198.19.16.0/20: either host could claim \
         subnets of the other"
    );
    assert!(allowed.contains("not overlapping"), "{allowed}");

    // One mesh-wide range for several libvirt hosts: each could take the others' subnets.
    let e = f.err(&three_libvirt(
        "libvirt_range = [\"198.19.0.0/16\"]",
        ["", "", ""],
    ));
    assert_eq!(e.key, "mesh.libvirt_range");
    let (problem, allowed) = invalid(&e);
    assert!(
        problem.contains("one range for 3 hosts with subnets = \"libvirt\" (c0, d0, e0)"),
        "{problem}"
    );
    assert!(
        allowed.contains("only when exactly one host") && allowed.contains("its own libvirt_range"),
        "{allowed}"
    );
    // The same with ranges of their own as well.
    let e = f.err(&three_libvirt("libvirt_range = [\"198.19.0.0/16\"]", own));
    assert_eq!(e.key, "mesh.libvirt_range");

    // A libvirt host with no range while several exist: its own key is what is missing.
    let e = f.err(&three_libvirt("", [own[0], "", own[2]]));
    assert_eq!(e.key, "host[2].libvirt_range");
    let ErrorKind::Missing { what } = &*e.kind else {
        panic!("expected Missing, got {e}");
    };
    assert!(
        what.contains("host d0 has subnets = \"libvirt\"")
            && what.contains("only when exactly one host has subnets = \"libvirt\""),
        "{what}"
    );

    // Both the mesh's and the one libvirt host's own.
    let e = f.err(&libvirt_mesh(
        "libvirt_range = [\"198.19.0.0/16\"]",
        "libvirt_range = [\"198.19.2.0/24\"]",
    ));
    assert_eq!(e.key, "mesh.libvirt_range");
    assert!(invalid(&e).0.contains("has its own libvirt_range"), "{e}");

    // On a host that lists its subnets.
    let e = f.err(&with_hosts(
        "[[host]]\nname = \"b0\"\naddress = \"198.18.0.1\"\nsubnets = [\"198.19.1.0/24\"]\nlibvirt_range = [\"198.19.0.0/16\"]\n\
         [[host]]\nname = \"c0\"\naddress = \"198.18.0.2\"\nsubnets = [\"198.19.2.0/24\"]\n",
    ));
    assert_eq!(e.key, "host[0].libvirt_range");
    assert_eq!(invalid(&e).0, "set, but this host lists its subnets");

    // A host's own range is checked like the mesh's: no host address inside.
    let e = f.err(&three_libvirt(
        "",
        [own[0], own[1], "libvirt_range = [\"198.18.0.0/24\"]"],
    ));
    assert_eq!(e.key, "host[3].libvirt_range[0]");
    assert!(invalid(&e).0.contains("holds b0's address"), "{e}");
}

#[test]
fn psk_meshes_of_three_or_more_warn_that_members_can_impersonate_each_other() {
    let f = Fixture::new();
    assert_eq!(f.parse(&with_mesh("")).unwrap().trust_warning(), None);
    let three = format!(
        "{}\n[[host]]\nname = \"d0\"\naddress = \"198.18.0.3\"\nsubnets = [\"198.19.3.0/24\"]\n",
        with_mesh("")
    );
    let w = f.parse(&three).unwrap().trust_warning().expect("a warning");
    assert!(
        w.contains("all 3 hosts share one key")
            && w.contains("can authenticate as any other host and claim its subnets")
            && w.contains("auth = \"pubkey\""),
        "{w}"
    );
}

#[test]
fn subnets_libvirt_needs_libvirt_range() {
    let f = Fixture::new();
    let e = f.err(&libvirt_mesh("", ""));
    assert_eq!(e.key, "host[1].libvirt_range");
    let ErrorKind::Missing { what } = &*e.kind else {
        panic!("expected Missing, got {e}");
    };
    assert!(
        what.contains("host c0 has subnets = \"libvirt\"")
            && what.contains("libvirt_range = [\"192.168.122.0/24\"] in its [[host]]"),
        "{what}"
    );
    assert!(
        e.to_string().starts_with(&format!(
            "{}:13:11: host[1].libvirt_range: missing: ",
            f.file().display()
        )),
        "{e}"
    );

    // Set although no host uses it.
    let e = f.err(&with_mesh("libvirt_range = [\"198.19.0.0/16\"]"));
    assert_eq!(
        (e.key.as_str(), e.location),
        ("mesh.libvirt_range", Some((3, 17)))
    );
    let (problem, allowed) = invalid(&e);
    assert!(
        problem.contains("no host has subnets = \"libvirt\""),
        "{problem}"
    );
    assert!(allowed.contains("remove it"), "{allowed}");
}

#[test]
fn libvirt_range_values() {
    let f = Fixture::new();
    let e = f.err(&libvirt_mesh("libvirt_range = []", ""));
    assert_eq!(e.key, "mesh.libvirt_range");
    let (problem, allowed) = invalid(&e);
    assert!(
        problem.contains("empty") && allowed.contains("CIDR"),
        "{problem} / {allowed}"
    );

    let e = f.err(&libvirt_mesh(
        "libvirt_range = [\"198.19.0.0/16\", \"198.19.0.5/16\"]",
        "",
    ));
    assert_eq!(e.key, "mesh.libvirt_range[1]");
    assert!(
        matches!(
            *e.kind,
            ErrorKind::Prefix(crate::prefix::PrefixError::HostBits { .. })
        ),
        "{e}"
    );

    let e = f.err(&libvirt_mesh(
        "libvirt_range = [\"198.19.0.0/16\", \"198.19.3.0/24\"]",
        "",
    ));
    assert_eq!(e.key, "mesh.libvirt_range[1]");
    assert_eq!(e.location, Some((3, 35)));
    let (problem, _) = invalid(&e);
    assert_eq!(
        problem,
        "198.19.3.0/24 overlaps 198.19.0.0/16, listed before it"
    );

    let e = f.err(&libvirt_mesh("libvirt_range = [\"198.18.0.0/15\"]", ""));
    assert_eq!(e.key, "mesh.libvirt_range[0]");
    let (problem, allowed) = invalid(&e);
    assert!(
        problem.contains("holds b0's address 198.18.0.1"),
        "{problem}"
    );
    assert!(allowed.contains("no host's underlay address"), "{allowed}");

    let e = f.err(&libvirt_mesh("libvirt_range = \"198.19.0.0/16\"", ""));
    assert_eq!(e.key, "");
    assert!(matches!(*e.kind, ErrorKind::Syntax(_)), "{e}");
}

#[test]
fn subnets_word_and_libvirt_networks_errors() {
    let f = Fixture::new();
    let range = "libvirt_range = [\"198.19.0.0/16\"]";
    let e = f.err(&libvirt_mesh(range, "").replace("\"libvirt\"", "\"virsh\""));
    assert_eq!(e.key, "host[1].subnets");
    assert_eq!(e.location, Some((13, 11)));
    let (problem, allowed) = invalid(&e);
    assert_eq!(problem, "\"virsh\" is not a list of subnets");
    assert!(
        allowed.contains("CIDR") && allowed.contains("\"libvirt\""),
        "{allowed}"
    );

    let e = f.err(&libvirt_mesh(range, "libvirt_networks = []"));
    assert_eq!(e.key, "host[1].libvirt_networks");
    let (problem, allowed) = invalid(&e);
    assert!(
        problem.contains("empty") && allowed.contains("virsh net-list"),
        "{problem} / {allowed}"
    );

    let e = f.err(&libvirt_mesh(
        range,
        "libvirt_networks = [\"default\", \"default\"]",
    ));
    assert_eq!(e.key, "host[1].libvirt_networks[1]");
    assert_eq!(invalid(&e).0, "\"default\" is listed twice");

    let e = f.err(&libvirt_mesh(range, "libvirt_networks = [\"\"]"));
    assert_eq!(e.key, "host[1].libvirt_networks[0]");

    // libvirt_networks with a list of subnets.
    let e = f.err(&with_hosts(
        "[[host]]\nname = \"b0\"\naddress = \"198.18.0.1\"\nsubnets = [\"198.19.1.0/24\"]\nlibvirt_networks = [\"default\"]\n\
         [[host]]\nname = \"c0\"\naddress = \"198.18.0.2\"\nsubnets = [\"198.19.2.0/24\"]\n",
    ));
    assert_eq!(e.key, "host[0].libvirt_networks");
    let (problem, allowed) = invalid(&e);
    assert_eq!(problem, "set, but this host lists its subnets");
    assert!(allowed.contains("subnets = \"libvirt\""), "{allowed}");

    // Neither a list nor a string.
    let e = f.err(&libvirt_mesh(range, "").replace("\"libvirt\"", "7"));
    assert!(
        matches!(*e.kind, ErrorKind::Syntax(ref m) if m.contains("or \"libvirt\"")),
        "{e}"
    );
    // The missing-subnets message mentions "libvirt" too.
    let e = f.err(&with_hosts(
        "[[host]]\nname = \"b0\"\naddress = \"198.18.0.1\"\n[[host]]\nname = \"c0\"\naddress = \"198.18.0.2\"\nsubnets = [\"198.19.2.0/24\"]\n",
    ));
    assert_eq!(e.key, "host[0].subnets");
    assert!(e.to_string().contains("subnets = \"libvirt\""), "{e}");
}

/// A libvirt network definition as libvirt writes it.
fn net_xml(name: &str, ip: &str) -> String {
    format!(
        "<network>\n  <name>{name}</name>\n  <forward mode='nat'/>\n  <bridge name='virbr-{name}'/>\n  \
         <ip address='{ip}' netmask='255.255.255.0'>\n  </ip>\n</network>\n"
    )
}

#[test]
fn resolve_libvirt_reads_this_hosts_networks() {
    let f = Fixture::new();
    let run = f.dir.path().join("run");
    let etc = f.dir.path().join("etc");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::create_dir_all(&etc).unwrap();
    let dirs = [run.as_path(), etc.as_path()];
    let load = |c0: &str| {
        Config::new(
            f.parse(&libvirt_mesh("libvirt_range = [\"198.19.0.0/16\"]", c0))
                .unwrap(),
            Some("c0"),
            &[],
        )
        .unwrap()
    };

    // No network at all: the error says where it looked and what to do.
    let e = load("").resolve_libvirt(&dirs).unwrap_err();
    assert_eq!(e.key, "host[1].subnets");
    let text = e.to_string();
    assert!(
        text.contains("c0 has subnets = \"libvirt\", but no libvirt network with an IPv4 address was found in")
            && text.contains(&run.display().to_string())
            && text.contains("virsh net-define"),
        "{text}"
    );

    // Every network with an IPv4 address: running ones first, persistent ones too; IPv6 and address-less ones
    // are not taken.
    std::fs::write(run.join("default.xml"), net_xml("default", "198.19.3.1")).unwrap();
    std::fs::write(etc.join("lab.xml"), net_xml("lab", "198.19.4.1")).unwrap();
    std::fs::write(
        etc.join("v6.xml"),
        "<network><name>v6</name><ip family='ipv6' address='2001:db8::1' prefix='64'/></network>",
    )
    .unwrap();
    std::fs::write(etc.join("none.xml"), "<network><name>none</name></network>").unwrap();
    let mut c = load("");
    let found = c.resolve_libvirt(&dirs).unwrap().unwrap();
    assert_eq!(
        c.local()
            .subnets
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>(),
        ["198.19.3.0/24", "198.19.4.0/24"]
    );
    assert_eq!(
        found
            .networks
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>(),
        ["default", "lab"]
    );
    assert_eq!(c.tunnels()[0].local_subnets().len(), 2);

    // By name.
    let mut c = load("libvirt_networks = [\"lab\"]");
    c.resolve_libvirt(&dirs).unwrap();
    assert_eq!(c.local().subnets[0].to_string(), "198.19.4.0/24");
    assert_eq!(c.local().subnets.len(), 1);
    let e = load("libvirt_networks = [\"lab\", \"prod\"]")
        .resolve_libvirt(&dirs)
        .unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("but prod is not defined on this machine")
            && text.contains("networks found in")
            && text.contains("default, lab, none, v6"),
        "{text}"
    );
    let e = load("libvirt_networks = [\"v6\"]")
        .resolve_libvirt(&dirs)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no libvirt network with an IPv4 address was found in"),
        "{e}"
    );
    assert!(e.to_string().contains(" among v6"), "{e}");

    // A host that lists its subnets is left alone.
    let mut c = Config::new(
        f.parse(&libvirt_mesh("libvirt_range = [\"198.19.0.0/16\"]", ""))
            .unwrap(),
        Some("b0"),
        &[],
    )
    .unwrap();
    assert!(c.resolve_libvirt(&dirs).unwrap().is_none());
    assert_eq!(c.local().subnets[0].to_string(), "198.19.1.0/24");

    // Outside the range, or overlapping another host's subnets: say which network to renumber.
    std::fs::write(etc.join("lab.xml"), net_xml("lab", "10.1.2.1")).unwrap();
    let e = load("").resolve_libvirt(&dirs).unwrap_err();
    assert!(
        e.to_string()
            .contains("libvirt network lab's subnet 10.1.2.0/24 lies outside c0's libvirt_range (198.19.0.0/16)"),
        "{e}"
    );
    std::fs::write(etc.join("lab.xml"), net_xml("lab", "198.19.1.1")).unwrap();
    let e = load("").resolve_libvirt(&dirs).unwrap_err();
    assert!(
        e.to_string().contains(
            "libvirt network lab's subnet 198.19.1.0/24 on c0 overlaps b0's subnet 198.19.1.0/24"
        ),
        "{e}"
    );
    assert!(e.to_string().contains("virsh net-edit lab"), "{e}");
}

/// IPv6 libvirt networks (issue 17): taken when the host's `libvirt_range` holds an IPv6 prefix, checked
/// against it like IPv4 ones; ignored (as before) when the range is IPv4 only.
#[test]
fn resolve_libvirt_takes_ipv6_networks_within_an_ipv6_range() {
    let f = Fixture::new();
    let run = f.dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let dirs = [run.as_path()];
    let load = |range: &str| {
        let c0 = format!("libvirt_range = [{range}]");
        Config::new(f.parse(&libvirt_mesh("", &c0)).unwrap(), Some("c0"), &[]).unwrap()
    };
    let subnets =
        |c: &Config| -> Vec<String> { c.local().subnets.iter().map(|p| p.to_string()).collect() };
    // A dual-stack network, as `virsh net-define` stores one with two <ip> elements, and an IPv6-only one.
    std::fs::write(
        run.join("default.xml"),
        "<network><name>default</name><forward mode='nat'/><bridge name='virbr0'/>\
         <ip address='198.19.2.1' netmask='255.255.255.0'/>\
         <ip family='ipv6' address='2001:db8:2::1' prefix='64'/></network>",
    )
    .unwrap();
    std::fs::write(
        run.join("v6only.xml"),
        "<network><name>v6only</name><ip family='ipv6' address='2001:db8:3::1' prefix='64'/></network>",
    )
    .unwrap();

    // IPv4 range only: the IPv6 subnets stay libvirt's alone.
    let mut c = load("\"198.19.0.0/16\"");
    let found = c.resolve_libvirt(&dirs).unwrap().unwrap();
    assert_eq!(subnets(&c), ["198.19.2.0/24"]);
    assert_eq!(found.networks.len(), 1);

    // Both families: both taken, the IPv6-only network too.
    let mut c = load("\"198.19.0.0/16\", \"2001:db8::/40\"");
    let found = c.resolve_libvirt(&dirs).unwrap().unwrap();
    let mut s = subnets(&c);
    s.sort();
    assert_eq!(s, ["198.19.2.0/24", "2001:db8:2::/64", "2001:db8:3::/64"]);
    assert_eq!(found.networks.len(), 2);
    assert_eq!(c.tunnels()[0].local_subnets().len(), 3);

    // IPv6 range only: IPv4 subnets are not taken.
    let mut c = load("\"2001:db8::/40\"");
    c.resolve_libvirt(&dirs).unwrap();
    let mut s = subnets(&c);
    s.sort();
    assert_eq!(s, ["2001:db8:2::/64", "2001:db8:3::/64"]);

    // An IPv6 subnet outside the IPv6 range is refused, naming the network.
    let e = load("\"198.19.0.0/16\", \"2001:db8:2::/48\"")
        .resolve_libvirt(&dirs)
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "libvirt network v6only's subnet 2001:db8:3::/64 lies outside c0's libvirt_range"
        ),
        "{e}"
    );

    // With the IPv6-only network named alone and an IPv4 range, nothing is found: the message says what.
    let e = Config::new(
        f.parse(&libvirt_mesh(
            "",
            "libvirt_range = [\"198.19.0.0/16\"]\nlibvirt_networks = [\"v6only\"]",
        ))
        .unwrap(),
        Some("c0"),
        &[],
    )
    .unwrap()
    .resolve_libvirt(&dirs)
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("no libvirt network with an IPv4 address"),
        "{e}"
    );
}
