//! IPv6 beside IPv4 in the test beds (shared/conventions.md): VM subnets 2001:db8:N::/64 behind hypervisor N
//! (bridge at ::1, VM at ::10), an underlay 2001:db8:0:ff::N/64, and the checks the dual-stack tests share: the
//! underlay carries no inner packet of either family in clear, and a TCP probe of either family reports the
//! source address the server saw and the MSS the client was left with.

use std::io::BufRead as _;
use std::net::IpAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::netns::{output_of, Netns, NetnsGuard};
use crate::traffic::{self, Captured};

/// Checks that an IPv6 address (with or without `/len`) lies in 2001:db8::/32, the only IPv6 range tests use.
///
/// # Panics
/// If it does not, or does not parse as IPv6.
pub fn check_test_address6(addr: &str) {
    let ip = addr.split_once('/').map_or(addr, |(ip, _)| ip);
    let ip: std::net::Ipv6Addr = ip
        .parse()
        .unwrap_or_else(|_| panic!("{addr:?} is not an IPv6 address"));
    let s = ip.segments();
    assert!(
        s[0] == 0x2001 && s[1] == 0xdb8,
        "{addr} is outside 2001:db8::/32, the only IPv6 range tests may use (shared/conventions.md)"
    );
}

/// `ip -6 addr add CIDR dev IF nodad` in `ns` (no duplicate address detection: usable at once).
pub fn add_addr6(ns: &Netns, ifname: &str, cidr: &str) {
    check_test_address6(cidr);
    ns.ip(&["-6", "addr", "add", cidr, "dev", ifname, "nodad"]);
}

/// IPv6 for hypervisor `n`'s VM subnet made by `NetnsGuard::vm_subnet`: 2001:db8:`n`::1/64 on `virbr0`,
/// forwarding on, the VM's `eth0` 2001:db8:`n`::10/64 with a default route via ::1.
pub fn vm_subnet6(host: &Netns, vm: &Netns, n: u8) {
    host.sysctl("net.ipv6.conf.all.forwarding=1");
    add_addr6(host, "virbr0", &format!("2001:db8:{n}::1/64"));
    add_addr6(vm, "eth0", &format!("2001:db8:{n}::10/64"));
    vm.ip(&[
        "-6",
        "route",
        "add",
        "default",
        "via",
        &format!("2001:db8:{n}::1"),
    ]);
}

/// [`NetnsGuard::underlay_lan`] with IPv6 beside IPv4: the `i`-th host (198.18.0.`i+1`) also has
/// 2001:db8:0:ff::`i+1`/64 on `u0`.
///
/// # Panics
/// If a namespace or address cannot be made.
pub fn underlay_lan6<const N: usize>(g: &mut NetnsGuard, hosts: [&str; N]) -> [Netns; N] {
    let lan = g.underlay_lan(&hosts);
    for (i, h) in lan.iter().enumerate() {
        add_addr6(h, "u0", &format!("2001:db8:0:ff::{}/64", i + 1));
    }
    lan.try_into()
        .unwrap_or_else(|_| panic!("underlay_lan made one namespace per host"))
}

/// IPv6 on the underlay `u0` of each `(host, n)`: 2001:db8:0:ff::`n`/64, and permanent neighbour entries for
/// every other one (no neighbour discovery delay for the first packets).
pub fn underlay6(hosts: &[(&Netns, u8)]) {
    for (h, n) in hosts {
        add_addr6(h, "u0", &format!("2001:db8:0:ff::{n}/64"));
    }
    for (h, n) in hosts {
        for (o, m) in hosts {
            if n != m {
                h.ip(&[
                    "-6",
                    "neigh",
                    "replace",
                    &format!("2001:db8:0:ff::{m}"),
                    "lladdr",
                    &o.mac("u0"),
                    "dev",
                    "u0",
                    "nud",
                    "permanent",
                ]);
            }
        }
    }
}

/// Every frame of `cap`, either family, that shows a VM's packet in clear: an address of `inner` (the VM
/// subnets, CIDR) in its IP header, or the source and destination of a packet between two of `vms` next to
/// each other in its payload (as in an inner IP header); and every frame between two of `hosts` (the underlay
/// addresses) that is not IKE or ESP (UDP 500/4500, IP protocol 50) nor ICMPv6 (neighbour discovery). Empty
/// when the underlay carried only what it should.
pub fn leaks(cap: &Captured, hosts: &[IpAddr], inner: &[&str], vms: &[IpAddr]) -> Vec<String> {
    let nets: Vec<(IpAddr, u8)> = inner
        .iter()
        .map(|c| {
            let (a, l) = c.split_once('/').expect("CIDR");
            (a.parse().expect("address"), l.parse().expect("length"))
        })
        .collect();
    let in_inner = |x: IpAddr| {
        nets.iter().any(|(net, len)| match (x, net) {
            (IpAddr::V4(x), IpAddr::V4(n)) => {
                let m = u32::MAX.checked_shl(32 - *len as u32).unwrap_or(0);
                u32::from(x) & m == u32::from(*n) & m
            }
            (IpAddr::V6(x), IpAddr::V6(n)) => {
                let m = u128::MAX.checked_shl(128 - *len as u32).unwrap_or(0);
                u128::from(x) & m == u128::from(*n) & m
            }
            _ => false,
        })
    };
    let bytes = |a: &IpAddr| match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut pairs = Vec::new();
    for x in vms {
        for y in vms {
            if x != y && x.is_ipv4() == y.is_ipv4() {
                pairs.push([bytes(x), bytes(y)].concat());
            }
        }
    }
    let clear = |p: &[u8]| {
        pairs
            .iter()
            .any(|pair| p.windows(pair.len()).any(|w| w == &pair[..]))
    };
    let between = |s: IpAddr, d: IpAddr| hosts.contains(&s) && hosts.contains(&d);
    let ike = |p: Option<u16>| matches!(p, Some(500) | Some(4500));
    let mut bad = Vec::new();
    for f in &cap.ipv4 {
        let (s, d) = (IpAddr::V4(f.src), IpAddr::V4(f.dst));
        let allowed = f.proto == 50 || (f.proto == 17 && ike(f.sport) && ike(f.dport));
        if in_inner(s) || in_inner(d) || clear(&f.payload) || (between(s, d) && !allowed) {
            bad.push(format!(
                "{:.3}s {s} > {d} proto {} ports {:?} > {:?}",
                f.t, f.proto, f.sport, f.dport
            ));
        }
    }
    for f in &cap.ipv6 {
        let (s, d) = (IpAddr::V6(f.src), IpAddr::V6(f.dst));
        let allowed =
            f.next == 50 || f.next == 58 || (f.next == 17 && ike(f.sport) && ike(f.dport));
        if in_inner(s) || in_inner(d) || clear(&f.payload) || (between(s, d) && !allowed) {
            bad.push(format!(
                "{:.3}s {s} > {d} next header {} ports {:?} > {:?}",
                f.t, f.next, f.sport, f.dport
            ));
        }
    }
    bad
}

pub(crate) const TCP_SERVER: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1])))
s.listen(4)
s.settimeout(30)
print("ready", flush=True)
c, peer = s.accept()
a = peer[0][7:] if peer[0].startswith("::ffff:") else peer[0]
c.sendall((a + "\n").encode())
c.close()
"#;

pub(crate) const TCP_CLIENT: &str = r#"
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
c.settimeout(5)
addr = c.makefile().readline().split()[0]
print(addr, c.getsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG))
"#;

/// One TCP connection from `client` to `server_addr:port` (either family: the one-shot server in `server` listens
/// on a dual-stack socket) where the server answers with the source address it saw: `Ok((that address, the MSS
/// the client's side uses))`, at most what the server's SYN-ACK advertised, so it shows NAT and a clamp on the
/// way (a router sending the SYN-ACK into the tunnel); `Err` with why the connection failed (refused by a
/// REJECT, timed out, ...).
pub fn tcp_probe(
    server: &Netns,
    client: &Netns,
    server_addr: &str,
    port: u16,
) -> Result<(String, u32), String> {
    if server_addr.contains(':') {
        check_test_address6(server_addr);
    } else {
        crate::netns::check_test_address(server_addr);
    }
    let mut srv = server.spawn(
        server
            .command("python3")
            .args(["-c", TCP_SERVER, &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let stdout = srv.child_mut().stdout.take().expect("server stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("server output");
    assert_eq!(
        line.trim(),
        "ready",
        "the TCP server in {} did not start",
        server.name()
    );
    let out = output_of(client.command("python3").args([
        "-c",
        TCP_CLIENT,
        server_addr,
        &port.to_string(),
    ]));
    drop(srv);
    probe_outcome(
        out.status.success(),
        &String::from_utf8_lossy(&out.stdout),
        &String::from_utf8_lossy(&out.stderr),
    )
}

/// What [`TCP_CLIENT`] reported, wherever it ran: `Ok((address the server saw, MSS))` when it succeeded, else
/// `Err` with the last line of its error output.
pub(crate) fn probe_outcome(ok: bool, stdout: &str, stderr: &str) -> Result<(String, u32), String> {
    if ok {
        let text = stdout.trim();
        let (addr, mss) = text.split_once(' ').unwrap_or((text, "0"));
        Ok((addr.to_owned(), mss.parse().unwrap_or(0)))
    } else {
        Err(stderr.lines().last().unwrap_or("failed").to_owned())
    }
}

/// Pings `dst` from `ns` until one answer, then 10 more at 0.1 s: at most one may go unanswered (a loaded
/// machine can hold an answer past ping's 1 s wait); prints the count.
pub fn ping_ok(ns: &Netns, dst: &str, why: &dyn Fn() -> String) {
    assert!(
        traffic::ping_until_ok(ns, dst, Duration::from_secs(10)),
        "{} cannot reach {dst}\n{}",
        ns.name(),
        why()
    );
    let (sent, got) = traffic::ping(ns, dst, 10, "0.1");
    assert!(
        sent == 10 && got >= 9,
        "{} -> {dst}: {got} of {sent} answered\n{}",
        ns.name(),
        why()
    );
    if got < sent {
        eprintln!(
            "[dualstack] {} -> {dst}: {got} of {sent} answered",
            ns.name()
        );
    }
}

/// TCP (2 flows of 1 MiB) and UDP (300 datagrams of 1 B to 8 KB) between the VMs, both ways, every byte
/// checked; prints what it moved.
pub fn byte_checked(avm: &Netns, bvm: &Netns, a: &str, b: &str, why: &dyn Fn() -> String) {
    for (srv, cli, addr) in [(bvm, avm, b), (avm, bvm, a)] {
        let t = Instant::now();
        let ok = traffic::tcp_intact(srv, cli, addr, 2, 1 << 20);
        assert_eq!(ok, 2, "TCP to {addr} damaged\n{}", why());
        let (intact, bad) = traffic::udp_intact(srv, cli, addr, 300);
        assert_eq!((intact, bad), (300, 0), "UDP to {addr}\n{}", why());
        eprintln!(
            "[dualstack] to {addr}: 2 x 1 MiB TCP and 300 UDP datagrams intact in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
}
