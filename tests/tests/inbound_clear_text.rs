//! Inbound clear text: a packet from a remote mesh subnet reaches a local VM only out of the tunnel. One that
//! arrives in clear text on the underlay (spoofed by anyone there, no key needed) is dropped on the hypervisor,
//! IPv4 and IPv6, while vmsecd runs and after it was killed -9 (RFC 4301 section 5: the mesh's subnets have
//! PROTECT entries only, so unprotected traffic from them is discarded, as Linux XFRM's `dir fwd` policies do
//! for kernel IPsec).
//!
//! Bed: an underlay LAN with hypervisors `a` (198.18.0.1, 2001:db8:0:ff::1) and `b` (.2, ::2), and an outsider
//! `x` (.3, ::3) holding one address of b's VM subnets of each family (198.19.2.66, 2001:db8:2::66) and a
//! route to a's VM subnets via a. a's VM listens on UDP; `firewall = "auto"` with no libvirt rules, which is what
//! a libvirt `route` network leaves (forwarding into the subnet accepted from anywhere); a NAT network accepts
//! whatever conntrack calls ESTABLISHED, and conntrack does not look at the interface. a's reverse-path filter
//! is Debian's default, loose (2): it passes the IPv4 spoof because a route to its source exists (into the
//! TUN); IPv6 has none.
//!
//! Proven: datagrams b's VM sends through the tunnel arrive, the outsider's spoofed ones never do (before the
//! fix every one of them reached the VM); the same after `kill -9` of a's vmsecd (the rules stay, as the
//! fail-closed routes do; before the fix the IPv6 ones reached the VM); a clean stop removes the rules.

use std::path::Path;
use std::time::{Duration, Instant};

use vmsecd_e2e::dualstack::{add_addr6, underlay_lan6, vm_subnet6};
use vmsecd_e2e::netns::{Netns, NetnsGuard, NsChild};
use vmsecd_e2e::traffic::ping_until_ok;
use vmsecd_e2e::vmsecd::{is_up, HostEntry, Mesh, Vmsecd};

const PSK: &str = "inbound-clear-text-psk-0123456789";
const PORT: &str = "5555";
/// The addresses of b's VM subnets the outsider sends from.
const SPOOFED: [&str; 2] = ["198.19.2.66", "2001:db8:2::66"];

/// A UDP listener in `vm` on [`PORT`] of both families: one line "SOURCE PAYLOAD" per datagram into `out`,
/// until `stop` exists (at most 120 s).
fn listen(vm: &Netns, out: &Path, stop: &Path) -> NsChild {
    let script = format!(
        "import socket, select, os, time\n\
         a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(('0.0.0.0', {PORT}))\n\
         b = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n\
         b.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1); b.bind(('::', {PORT}))\n\
         f = open({out:?}, 'a', buffering=1)\n\
         f.write('listening\\n')\n\
         end = time.time() + 120\n\
         while time.time() < end and not os.path.exists({stop:?}):\n    \
             r, _, _ = select.select([a, b], [], [], 0.2)\n    \
             for s in r:\n        \
                 d, src = s.recvfrom(2048)\n        \
                 f.write(src[0] + ' ' + d.decode(errors='replace') + '\\n')\n",
        out = out.display().to_string(),
        stop = stop.display().to_string(),
    );
    vm.spawn(vm.command("python3").args(["-c", &script]))
}

/// Sends `count` datagrams to `dst` from `src` (an address of `ns`), each carrying `tag`.
fn send(ns: &Netns, src: &str, dst: &str, tag: &str, count: u32) {
    let fam = if dst.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let script = format!(
        "import socket, time\n\
         s = socket.socket(socket.{fam}, socket.SOCK_DGRAM); s.bind(({src:?}, 0))\n\
         for i in range({count}):\n    \
             s.sendto(b'{tag}', ({dst:?}, {PORT})); time.sleep(0.01)\n"
    );
    let out = ns.output("python3", &["-c", &script]);
    assert!(
        out.status.success(),
        "sending from {src} in {}: {}",
        ns.name(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn received(out: &Path) -> String {
    std::fs::read_to_string(out).unwrap_or_default()
}

/// Waits until `out` holds a line with each of `tags` (at most 10 s): datagrams sent after the spoofed ones
/// that show the listener was receiving meanwhile.
fn wait_for(out: &Path, tags: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tags.iter().all(|t| received(out).contains(t)) {
        assert!(
            Instant::now() < deadline,
            "the listener never got {tags:?}:\n{}",
            received(out)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The lines of `out` that came from an address of [`SPOOFED`].
fn spoofed_lines(out: &Path) -> Vec<String> {
    received(out)
        .lines()
        .filter(|l| SPOOFED.iter().any(|s| l.starts_with(&format!("{s} "))))
        .map(str::to_owned)
        .collect()
}

#[test]
fn clear_text_from_a_remote_subnet_never_reaches_a_vm() {
    vmsecd_e2e::netns::require_root_and_ip();
    let started = Instant::now();
    let mut g = NetnsGuard::new("inclear");
    let [a, b, x] = underlay_lan6(&mut g, ["a", "b", "x"]);
    let avm = g.vm_subnet(&a, 1, "avm");
    let bvm = g.vm_subnet(&b, 2, "bvm");
    for (n, h, vm) in [(1, &a, &avm), (2, &b, &bvm)] {
        vm_subnet6(h, vm, n);
    }
    // Debian's default (systemd's 50-default.conf): loose reverse-path filtering.
    a.sysctl("net.ipv4.conf.all.rp_filter=2");
    a.sysctl("net.ipv4.conf.default.rp_filter=2");
    a.sysctl("net.ipv4.conf.u0.rp_filter=2");
    // The outsider: addresses of b's VM subnets, and a's VM subnets routed via a, as any host of the
    // underlay can do.
    x.ip(&["addr", "add", "198.19.2.66/32", "dev", "lo"]);
    add_addr6(&x, "lo", "2001:db8:2::66/128");
    x.ip(&["route", "add", "198.19.1.0/24", "via", "198.18.0.1"]);
    x.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:1::/64",
        "via",
        "2001:db8:0:ff::1",
    ]);

    let root = g.dir();
    let (da, db) = (root.join("a"), root.join("b"));
    let mut mesh = Mesh::two_hosts(PSK);
    mesh.firewall = Some("auto".into());
    mesh.hosts = vec![
        HostEntry::dual_stack("hA", 1),
        HostEntry::dual_stack("hB", 2),
    ];
    let t = Duration::from_secs(20);
    let mut va = Vmsecd::start(&a, &da, &mesh, "hA");
    let mut vb = Vmsecd::start(&b, &db, &mesh, "hB");
    va.wait_status("hA-hB up", t, |s| is_up(s, "hB"));
    vb.wait_status("hB-hA up", t, |s| is_up(s, "hA"));
    for dst in ["198.19.1.10", "2001:db8:1::10"] {
        assert!(
            ping_until_ok(&bvm, dst, Duration::from_secs(10)),
            "{dst} through the tunnel\n{}",
            va.diagnostics()
        );
    }

    let out = root.join("received.txt");
    let stop = root.join("stop");
    let mut listener = listen(&avm, &out, &stop);
    wait_for(&out, &["listening"]);

    // 1. While vmsecd runs: the spoofed datagrams first, then b's VM through the tunnel.
    send(&x, SPOOFED[0], "198.19.1.10", "spoofed-v4", 20);
    send(&x, SPOOFED[1], "2001:db8:1::10", "spoofed-v6", 20);
    send(&bvm, "198.19.2.10", "198.19.1.10", "tunnel-v4", 5);
    send(&bvm, "2001:db8:2::10", "2001:db8:1::10", "tunnel-v6", 5);
    wait_for(&out, &["tunnel-v4", "tunnel-v6"]);
    std::thread::sleep(Duration::from_millis(500));
    let spoofed = spoofed_lines(&out);
    let rules = a.run("iptables-save", &[]) + &a.run("ip6tables-save", &[]);
    assert!(
        spoofed.is_empty(),
        "{} clear-text datagrams from the underlay with a remote VM's source reached a's VM while vmsecd ran:\n{}\n\
         rules:\n{rules}",
        spoofed.len(),
        spoofed.join("\n")
    );
    assert!(
        rules.contains("-s 198.19.2.0/24 ! -i vmsec0 -m rpfilter --invert")
            && rules.contains("-s 2001:db8:2::/64 ! -i vmsec0 -m rpfilter --invert"),
        "{rules}"
    );

    // 2. a's vmsecd killed -9: its TUN is gone, the rules are not.
    va.kill9();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.ip(&["link", "show"]).contains("vmsec0") {
        assert!(Instant::now() < deadline, "the TUN outlived vmsecd");
        std::thread::sleep(Duration::from_millis(20));
    }
    send(&x, SPOOFED[0], "198.19.1.10", "dead-spoofed-v4", 20);
    send(&x, SPOOFED[1], "2001:db8:1::10", "dead-spoofed-v6", 20);
    // A datagram from the underlay that is let in, sent last: the listener was receiving meanwhile.
    send(&x, "198.18.0.3", "198.19.1.10", "outsider-v4", 3);
    wait_for(&out, &["outsider-v4"]);
    std::thread::sleep(Duration::from_millis(500));
    let spoofed: Vec<String> = spoofed_lines(&out)
        .into_iter()
        .filter(|l| l.contains("dead-"))
        .collect();
    assert!(
        spoofed.is_empty(),
        "{} clear-text datagrams with a remote VM's source reached a's VM after vmsecd was killed:\n{}",
        spoofed.len(),
        spoofed.join("\n")
    );

    // 3. Started again and stopped cleanly: vmsecd's rules go with it.
    let mut va = Vmsecd::start(&a, &da, &mesh, "hA");
    va.wait_status("hA-hB up again", t, |s| is_up(s, "hB"));
    va.terminate(Duration::from_secs(10))
        .expect("vmsecd stops on SIGTERM");
    let rules = a.run("iptables-save", &[]) + &a.run("ip6tables-save", &[]);
    assert!(!rules.contains("vmsecd:"), "{rules}");

    std::fs::write(&stop, b"").expect("stop file");
    listener.wait_or_kill(Duration::from_secs(5));
    eprintln!(
        "inbound_clear_text: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
