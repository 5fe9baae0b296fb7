//! Fail closed: while no tunnel carries it, traffic to the mesh's remote subnets is dropped on the hypervisor,
//! never sent in clear along the default route, and that holds while vmsecd is dead (SIGKILL), because the
//! `unreachable` routes vmsecd keeps (proto 118, metric 1000000000) are kernel routes that outlive its TUN.
//!
//! Bed: an underlay LAN (switch namespace `ul`) with hypervisors `a` (198.18.0.1) and `b` (198.18.0.2) and a
//! router `r` (198.18.0.3) that is both hypervisors' default route, as an Internet uplink would be; a VM behind
//! each hypervisor (198.19.1.10, 198.19.2.10). Every frame `a` puts on the underlay is captured at its switch
//! port.
//!
//! Proven: the routes are there while vmsecd runs; after `kill -9` of a's vmsecd (its TUN and TUN routes gone)
//! the VM's pings and UDP to the remote VM get ICMP "host unreachable" from `a` and not one frame with a VM
//! address, nor a VM address pair in clear in a payload, leaves `a`; the routes survived the crash; a stale
//! route of ours is removed and a foreign one (another proto) left alone at the next start; the tunnel carries
//! traffic again within [`RECOVERY`] of the restart; a reload puts back a route flushed by hand, and adds and
//! removes the routes of a host that joins and leaves; after a clean stop (SIGTERM) none of vmsecd's routes is left.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vmsecd_e2e::dualstack::{underlay_lan6, vm_subnet6};
use vmsecd_e2e::netns::{output_of, run_checked, Netns, NetnsGuard};
use vmsecd_e2e::traffic::{ping, ping_until_ok, Capture, Captured};
use vmsecd_e2e::vmsecd::{is_up, vmsecd_bin, HostEntry, Mesh, Vmsecd};

const PSK: &str = "fail-closed-test-psk-0123456789ab";
/// vmsecd's route protocol number (`ip route show proto 118`).
const PROTO: &str = "118";
/// From the restart of a's vmsecd to the first ping answered through the tunnel: measured 1.0-1.1 s here (a,
/// on the lower address, initiates at once; b takes the new IKE SA and Child SA in place of the dead ones).
const RECOVERY: Duration = Duration::from_secs(10);

fn mesh(hosts: &[(&str, u8)]) -> Mesh {
    let mut m = Mesh::two_hosts(PSK);
    // ESP in UDP 4500 either way; no firewall handling (no libvirt here): only the routes are under test.
    m.firewall = Some("off".into());
    m.hosts = hosts
        .iter()
        .map(|(n, i)| HostEntry::dual_stack(n, *i))
        .collect();
    m
}

/// `ip route show proto 118` and `ip -6 route show proto 118` in `ns`, one route per line, as "TYPE PREFIX
/// metric N" (the IPv6 lines' `dev lo` and `pref medium` left out).
fn our_routes(ns: &Netns) -> Vec<String> {
    let mut v: Vec<String> = [&["-4"][..], &["-6"][..]]
        .iter()
        .flat_map(|fam| {
            let mut args = fam.to_vec();
            args.extend(["route", "show", "proto", PROTO]);
            ns.ip(&args)
                .lines()
                .map(|l| {
                    let t: Vec<&str> = l.split_whitespace().collect();
                    let metric = t
                        .iter()
                        .position(|w| *w == "metric")
                        .and_then(|i| t.get(i + 1));
                    format!(
                        "{} {} metric {}",
                        t.first().unwrap_or(&""),
                        t.get(1).unwrap_or(&""),
                        metric.unwrap_or(&"none")
                    )
                })
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    v
}

/// The frames of `cap` that show VM traffic in clear: a VM subnet address (198.19.0.0/16) in the IP header,
/// or two VM addresses side by side (as in an IP header) in a payload.
fn clear_text(cap: &Captured) -> Vec<String> {
    let vm = |a: Ipv4Addr| a.octets()[..2] == [198, 19];
    let vms: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 19, 1, 10), Ipv4Addr::new(198, 19, 2, 10)];
    let pair = |p: &[u8]| {
        p.windows(8).any(|w| {
            vms.iter().any(|x| {
                vms.iter()
                    .any(|y| x != y && w[..4] == x.octets() && w[4..] == y.octets())
            })
        })
    };
    cap.ipv4
        .iter()
        .filter(|f| vm(f.src) || vm(f.dst) || pair(&f.payload))
        .map(|f| format!("{:.3}s {} > {} proto {}", f.t, f.src, f.dst, f.proto))
        .collect()
}

/// The IPv6 frames of a pcap file (Ethernet) with a VM subnet address (2001:db8:1::/64, 2001:db8:2::/64) as
/// source or destination: `Captured` decodes IPv4 only.
fn clear_text_v6(pcap: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut off = 24;
    while off + 16 <= pcap.len() {
        let incl = u32::from_le_bytes(pcap[off + 8..off + 12].try_into().unwrap()) as usize;
        off += 16;
        let Some(f) = pcap.get(off..off + incl) else {
            break;
        };
        off += incl;
        if f.len() < 14 + 40 || f[12..14] != [0x86, 0xdd] {
            continue;
        }
        let ip = &f[14..];
        let vm = |a: &[u8]| {
            a[..6] == [0x20, 0x01, 0x0d, 0xb8, 0, 1] || a[..6] == [0x20, 0x01, 0x0d, 0xb8, 0, 2]
        };
        let (src, dst) = (&ip[8..24], &ip[24..40]);
        if vm(src) || vm(dst) {
            let addr = |a: &[u8]| std::net::Ipv6Addr::from(<[u8; 16]>::try_from(a).unwrap());
            out.push(format!(
                "{} > {} next header {}",
                addr(src),
                addr(dst),
                ip[6]
            ));
        }
    }
    out
}

fn reload(ns: &Netns) -> String {
    let out = output_of(ns.command(vmsecd_bin()).arg("reload"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "vmsecd reload: {text}");
    text
}

fn rewrite(dir: &Path, m: &Mesh) {
    std::fs::write(dir.join("mesh.toml"), m.render(&dir.join("psk"))).expect("mesh file");
}

#[test]
fn no_clear_text_while_vmsecd_is_dead() {
    vmsecd_e2e::netns::require_root_and_ip();
    let started = Instant::now();
    let mut g = NetnsGuard::new("failclosed");
    // IPv6 the same way (2001:db8::/32, shared/conventions.md): underlay 2001:db8:0:ff::N, VM subnets
    // 2001:db8:N::/64 (below), the router the hypervisors' default route.
    let [a, b, r] = underlay_lan6(&mut g, ["a", "b", "r"]);
    let ul = g.namespaces()[0].clone();
    for h in [&a, &b] {
        h.ip(&["route", "add", "default", "via", "198.18.0.3"]);
    }
    // The router answers ARP but forwards nothing: whatever reaches it has already leaked.
    r.sysctl("net.ipv4.ip_forward=0");
    let avm = g.vm_subnet(&a, 1, "avm");
    let bvm = g.vm_subnet(&b, 2, "bvm");
    for (n, h, vm) in [(1, &a, &avm), (2, &b, &bvm)] {
        h.ip(&["-6", "route", "add", "default", "via", "2001:db8:0:ff::3"]);
        vm_subnet6(h, vm, n);
    }
    let root = g.dir();
    let (da, db) = (root.join("a"), root.join("b"));
    let two = mesh(&[("hA", 1), ("hB", 2)]);
    let t = Duration::from_secs(20);

    // 1. The mesh is up; a's fail-closed route for b's subnet is in place behind the TUN route.
    let mut va = Vmsecd::start(&a, &da, &two, "hA");
    let mut vb = Vmsecd::start(&b, &db, &two, "hB");
    va.wait_status("hA-hB up", t, |s| is_up(s, "hB"));
    vb.wait_status("hB-hA up", t, |s| is_up(s, "hA"));
    assert!(ping_until_ok(&avm, "198.19.2.10", Duration::from_secs(5)));
    assert!(
        ping_until_ok(&avm, "2001:db8:2::10", Duration::from_secs(5)),
        "IPv6 through the tunnel\n{}",
        va.diagnostics()
    );
    let expected = vec![
        "unreachable 198.19.2.0/24 metric 1000000000".to_owned(),
        "unreachable 2001:db8:2::/64 metric 1000000000".to_owned(),
    ];
    assert_eq!(our_routes(&a), expected, "{}", va.diagnostics());
    for dst in ["198.19.2.10", "2001:db8:2::10"] {
        let get = a.ip(&["route", "get", dst]);
        assert!(
            get.contains("dev vmsec0"),
            "the TUN route wins while vmsecd runs: {get}"
        );
    }

    // 2. kill -9: the TUN and its routes vanish with the process.
    let cap = Capture::start(&ul, "p0", &root.join("a-underlay.pcap"));
    run_checked(Command::new("kill").args(["-KILL", &va.pid().to_string()]));
    let deadline = Instant::now() + Duration::from_secs(5);
    while va.try_wait().is_none() {
        assert!(Instant::now() < deadline, "vmsecd survived SIGKILL");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !a.ip(&["link", "show"]).contains("vmsec0"),
        "the TUN outlived the process: {}",
        a.ip(&["link", "show"])
    );

    // 3. The VM sends to the remote subnet while vmsecd is dead: ICMP and UDP. Nothing may leave in clear.
    let out = avm.output(
        "ping",
        &["-n", "-c", "5", "-i", "0.2", "-W", "1", "198.19.2.10"],
    );
    let ping_text = String::from_utf8_lossy(&out.stdout).into_owned();
    let out6 = avm.output(
        "ping",
        &["-n", "-c", "5", "-i", "0.2", "-W", "1", "2001:db8:2::10"],
    );
    let ping6_text = String::from_utf8_lossy(&out6.stdout).into_owned();
    let udp = avm.output(
        "python3",
        &[
            "-c",
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             for i in range(20):\n    try: s.sendto(b'198.19.1.10>198.19.2.10 clear', ('198.19.2.10', 9))\n    \
             except OSError as e: print('refused', e.errno)\n",
        ],
    );
    assert!(
        udp.status.success(),
        "{}",
        String::from_utf8_lossy(&udp.stderr)
    );
    let captured = cap.stop();
    let mut leaked = clear_text(&captured);
    leaked.extend(clear_text_v6(
        &std::fs::read(root.join("a-underlay.pcap")).expect("the capture"),
    ));
    assert!(
        leaked.is_empty(),
        "VM traffic left hypervisor a in clear text while its vmsecd was dead ({} frames):\n{}\nroutes:\n{}",
        leaked.len(),
        leaked.join("\n"),
        a.ip(&["route", "show"])
    );
    assert!(
        ping_text.contains("Destination Host Unreachable"),
        "the VM is told at once that the remote subnet is unreachable: {ping_text}"
    );
    assert!(
        ping6_text.contains("Destination unreachable: No route"),
        "the same over IPv6 (ICMPv6 no route): {ping6_text}"
    );
    assert_eq!(
        our_routes(&a),
        expected,
        "the fail-closed route survived the crash"
    );

    // 4. A stale route of ours (a host no longer in the mesh) is removed at the next start; a route of another
    // protocol is never touched.
    a.ip(&[
        "route",
        "add",
        "unreachable",
        "198.19.9.0/24",
        "proto",
        PROTO,
        "metric",
        "1000000000",
    ]);
    a.ip(&[
        "route",
        "add",
        "blackhole",
        "198.19.8.0/24",
        "proto",
        "static",
    ]);
    let restart = Instant::now();
    let mut va = Vmsecd::start(&a, &da, &two, "hA");
    let mut back = None;
    while restart.elapsed() < RECOVERY {
        if ping(&avm, "198.19.2.10", 1, "0.2").1 == 1 {
            back = Some(restart.elapsed());
            break;
        }
    }
    let back = back.unwrap_or_else(|| {
        panic!(
            "no traffic through the tunnel {RECOVERY:?} after the restart\n{}\n{}",
            va.diagnostics(),
            vb.diagnostics()
        )
    });
    eprintln!(
        "[failclosed] traffic back {:.2} s after the restart",
        back.as_secs_f64()
    );
    assert_eq!(our_routes(&a), expected, "taken over, stale one removed");
    assert!(
        a.ip(&["route", "show", "proto", "static"])
            .contains("blackhole 198.19.8.0/24"),
        "a route vmsecd did not make was removed"
    );

    // 5. Reload puts back a route flushed by hand; a host joins (its subnet blocked at once, before any tunnel
    // to it) and leaves again.
    a.ip(&["route", "flush", "proto", PROTO]);
    a.ip(&["-6", "route", "flush", "proto", PROTO]);
    assert_eq!(our_routes(&a), Vec::<String>::new());
    let text = reload(&a);
    assert!(text.contains("put back"), "{text}");
    assert_eq!(our_routes(&a), expected);
    let three = mesh(&[("hA", 1), ("hB", 2), ("hC", 4)]);
    rewrite(&da, &three);
    let text = reload(&a);
    assert!(text.contains("host hC added"), "{text}");
    assert_eq!(
        our_routes(&a),
        vec![
            "unreachable 198.19.2.0/24 metric 1000000000".to_owned(),
            "unreachable 198.19.4.0/24 metric 1000000000".to_owned(),
            "unreachable 2001:db8:2::/64 metric 1000000000".to_owned(),
            "unreachable 2001:db8:4::/64 metric 1000000000".to_owned(),
        ]
    );
    rewrite(&da, &two);
    reload(&a);
    assert_eq!(our_routes(&a), expected);

    // 6. A clean stop removes every route vmsecd made, and only those.
    assert!(va.terminate(Duration::from_secs(10)).is_some(), "SIGTERM");
    assert_eq!(our_routes(&a), Vec::<String>::new(), "{}", va.diagnostics());
    assert!(a.ip(&["route", "show"]).contains("blackhole 198.19.8.0/24"));
    vb.terminate(Duration::from_secs(10));
    eprintln!("[failclosed] {:.1} s", started.elapsed().as_secs_f64());
}
