//! `raw_rx = "xdp"`: raw ESP received through an XDP program and AF_XDP sockets (tunnel/src/daemon/rawrx).
//! Two vmsecd hosts with `encap = "raw"` exchange pings, TCP and UDP intact while the status says XDP carries
//! the ESP; raw ESP the sender's kernel fragments (a route MTU of 1200 on the underlay) still arrives,
//! reassembled, through the raw socket; after a SIGKILL no XDP program is left on the interface. An interface
//! that already has an XDP program keeps it: vmsecd logs why and receives through the raw socket.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use vmsecd_e2e::netns::{Netns, NetnsGuard};
use vmsecd_e2e::traffic::{ping_until_ok, tcp_intact, udp_intact};
use vmsecd_e2e::vmsecd::{is_up, Mesh, Vmsecd};

const PSK: &str = "raw-rx-xdp-test-psk-0123456789abc";

/// Starts vmsecd as `host` with `mesh` plus `raw_rx = "xdp"`.
fn start_xdp(ns: &Netns, dir: &Path, mesh: &Mesh, host: &str) -> Vmsecd {
    std::fs::create_dir_all(dir).expect("dir");
    let psk = dir.join("psk");
    std::fs::write(&psk, format!("{}\n", mesh.psk)).expect("psk");
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let text = mesh
        .render(&psk)
        .replacen("[mesh]\n", "[mesh]\nraw_rx = \"xdp\"\n", 1);
    let file = dir.join("mesh.toml");
    std::fs::write(&file, text).expect("mesh file");
    Vmsecd::start_with_file(ns, dir, &file, host)
}

/// What `ip link show u0` says about XDP in `ns`: the `prog/xdp...` part, or "" when none is attached.
fn xdp_on_u0(ns: &Netns) -> String {
    let out = ns.ip(&["-d", "link", "show", "u0"]);
    out.split_whitespace()
        .skip_while(|w| !w.starts_with("xdp"))
        .take(1)
        .collect()
}

/// `Ip: ReasmOKs` of `ns`: IPv4 datagrams it reassembled.
fn reasm_oks(ns: &Netns) -> u64 {
    let snmp = ns.run("cat", &["/proc/net/snmp"]);
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let i = names
        .split_whitespace()
        .position(|n| n == "ReasmOKs")
        .unwrap();
    values.split_whitespace().nth(i).unwrap().parse().unwrap()
}

/// VM A pings VM B, then 4 MiB of TCP goes each way intact (and, with `udp`, 200 UDP datagrams each way).
fn traffic_intact_both_ways(avm: &Netns, bvm: &Netns, va: &Vmsecd, vb: &Vmsecd, udp: bool) {
    assert!(ping_until_ok(avm, "198.19.2.10", Duration::from_secs(5)));
    for (server, client, addr) in [(bvm, avm, "198.19.2.10"), (avm, bvm, "198.19.1.10")] {
        assert_eq!(
            tcp_intact(server, client, addr, 4, 1 << 20),
            4,
            "TCP intact\n{}\n{}",
            va.diagnostics(),
            vb.diagnostics()
        );
        if udp {
            assert_eq!(
                udp_intact(server, client, addr, 200),
                (200, 0),
                "UDP intact"
            );
        }
    }
}

#[test]
fn raw_esp_through_af_xdp_intact_fragments_through_the_socket_nothing_left_after_kill() {
    vmsecd_e2e::netns::require_root_and_ip();
    let mut g = NetnsGuard::new("rawrxxdp");
    let (a, b) = g.underlay_pair();
    let avm = g.vm_subnet(&a, 1, "avm");
    let bvm = g.vm_subnet(&b, 2, "bvm");
    let root = g.dir();
    let mut m = Mesh::two_hosts(PSK);
    m.encap = "raw".into();
    let mut va = start_xdp(&a, &root.join("a"), &m, "hA");
    let mut vb = start_xdp(&b, &root.join("b"), &m, "hB");
    let t = Duration::from_secs(20);
    va.wait_status("hA-hB up", t, |s| is_up(s, "hB"));
    vb.wait_status("hB-hA up", t, |s| is_up(s, "hA"));
    for (v, ns) in [(&va, &a), (&vb, &b)] {
        let s = v.status().expect("status");
        assert!(
            s.raw_esp_in
                .path
                .starts_with("xdp (generic) on u0, 1 queue"),
            "{:?}\n{}",
            s.raw_esp_in,
            v.diagnostics()
        );
        assert!(
            xdp_on_u0(ns).starts_with("xdpgeneric"),
            "ip link: {}",
            ns.ip(&["-d", "link", "show", "u0"])
        );
        assert!(
            v.log().contains("is received through AF_XDP"),
            "{}",
            v.diagnostics()
        );
    }
    traffic_intact_both_ways(&avm, &bvm, &va, &vb, true);
    let (sa, sb) = (va.status().unwrap(), vb.status().unwrap());
    for (s, host) in [(&sa, "hA"), (&sb, "hB")] {
        // 4 MiB each way is about 3,000 ESP packets.
        assert!(
            s.raw_esp_in.xdp > 2_000,
            "{host}: ESP through AF_XDP: {:?}",
            s.raw_esp_in
        );
        assert_eq!(s.raw_esp_in.xdp_dropped, 0, "{host}: {:?}", s.raw_esp_in);
    }

    // ESP larger than a's route to b allows leaves a in IP fragments (the raw socket's path: the kernel
    // fragments it); the XDP program passes fragments, b's kernel reassembles them for the raw socket.
    a.ip(&[
        "route",
        "add",
        "198.18.0.2/32",
        "dev",
        "u0",
        "mtu",
        "lock",
        "1200",
    ]);
    let (xdp0, reasm0) = (sb.raw_esp_in.xdp, reasm_oks(&b));
    // The sender's next-hop table learns the route's MTU within a second (until then its ring still carries
    // the large packets whole): transfers until b has reassembled ESP, each one intact.
    let deadline = Instant::now() + Duration::from_secs(20);
    while reasm_oks(&b) - reasm0 <= 1_000 {
        assert!(
            Instant::now() < deadline,
            "b reassembled {} datagrams (ESP in fragments) in 20 s\n{}",
            reasm_oks(&b) - reasm0,
            va.diagnostics()
        );
        assert_eq!(
            tcp_intact(&bvm, &avm, "198.19.2.10", 2, 1 << 20),
            2,
            "TCP intact through fragments\n{}",
            vb.diagnostics()
        );
    }
    // AF_XDP kept working beside the socket: no frame dropped, and the packets that fit still took it.
    let s = vb.status().unwrap();
    assert_eq!(s.raw_esp_in.xdp_dropped, 0, "{:?}", s.raw_esp_in);
    assert!(s.raw_esp_in.xdp > xdp0, "{:?}", s.raw_esp_in);

    // A crash: the link's descriptor closes with the process, and the kernel detaches the program.
    va.kill9();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !xdp_on_u0(&a).is_empty() {
        assert!(
            Instant::now() < deadline,
            "XDP still attached after SIGKILL: {}",
            xdp_on_u0(&a)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(vb.terminate(Duration::from_secs(5)).is_some());
    assert_eq!(xdp_on_u0(&b), "", "nothing left after a clean stop");
}

/// An underlay like `NetnsGuard::underlay_pair`'s, with a veth pair of `queues` receive and transmit queues.
fn multiqueue_pair(g: &mut NetnsGuard, queues: u32) -> (Netns, Netns) {
    let a = g.add_ns("a");
    let b = g.add_ns("b");
    let q = queues.to_string();
    let qs = ["numtxqueues", q.as_str(), "numrxqueues", q.as_str()];
    let mut args = vec!["link", "add", "u0"];
    args.extend(qs);
    args.extend(["type", "veth", "peer", "name", "u0"]);
    args.extend(qs);
    args.extend(["netns", b.name()]);
    a.ip(&args);
    for (ns, addr) in [(&a, "198.18.0.1/24"), (&b, "198.18.0.2/24")] {
        ns.ip(&["link", "set", "u0", "up"]);
        g.add_addr(ns, "u0", addr);
    }
    a.add_neighbor("u0", "198.18.0.2", &b.mac("u0"));
    b.add_neighbor("u0", "198.18.0.1", &a.mac("u0"));
    (a, b)
}

/// One AF_XDP socket per receive queue: a veth pair with 4 queues each way, all four mapped, traffic intact.
#[test]
fn raw_esp_through_af_xdp_on_an_interface_of_four_queues() {
    vmsecd_e2e::netns::require_root_and_ip();
    let mut g = NetnsGuard::new("rawrxmq");
    let (a, b) = multiqueue_pair(&mut g, 4);
    let avm = g.vm_subnet(&a, 1, "avm");
    let bvm = g.vm_subnet(&b, 2, "bvm");
    let root = g.dir();
    let mut m = Mesh::two_hosts(PSK);
    m.encap = "raw".into();
    let mut va = start_xdp(&a, &root.join("a"), &m, "hA");
    let mut vb = start_xdp(&b, &root.join("b"), &m, "hB");
    let t = Duration::from_secs(20);
    va.wait_status("hA-hB up", t, |s| is_up(s, "hB"));
    vb.wait_status("hB-hA up", t, |s| is_up(s, "hA"));
    for v in [&va, &vb] {
        let s = v.status().expect("status");
        assert_eq!(
            s.raw_esp_in.path,
            "xdp (generic) on u0, 4 queues",
            "{}",
            v.diagnostics()
        );
    }
    traffic_intact_both_ways(&avm, &bvm, &va, &vb, false);
    for v in [&va, &vb] {
        let s = v.status().unwrap();
        assert!(
            s.raw_esp_in.xdp > 2_000,
            "ESP through AF_XDP: {:?}",
            s.raw_esp_in
        );
    }
    assert!(va.terminate(Duration::from_secs(5)).is_some());
    assert!(vb.terminate(Duration::from_secs(5)).is_some());
}

/// Loads a program that passes everything (`r0 = XDP_PASS; exit`) and attaches it to u0 in `ns` in generic
/// mode the classic way (netlink, `ip link set ... xdpgeneric pinned`), so that it stays after the loader
/// exits: python3's ctypes makes the bpf(2) calls, a bpffs mounted in the command's own mount namespace holds
/// the pin for the moment `ip` needs it.
fn attach_foreign_program(ns: &Netns, dir: &Path) {
    let script = r#"
import ctypes, os, struct, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
d = sys.argv[1]
subprocess.run(["mount", "-t", "bpf", "bpf", d], check=True)
insns = struct.pack("<BBhi", 0xb7, 0, 0, 2) + struct.pack("<BBhi", 0x95, 0, 0, 0)
ib = ctypes.create_string_buffer(insns, len(insns))
lic = ctypes.create_string_buffer(b"GPL")
attr = ctypes.create_string_buffer(128)
struct.pack_into("<IIQQ", attr, 0, 6, 2, ctypes.addressof(ib), ctypes.addressof(lic))
fd = libc.syscall(321, 5, attr, 128)
if fd < 0: sys.exit("BPF_PROG_LOAD: " + os.strerror(ctypes.get_errno()))
path = ctypes.create_string_buffer((d + "/other").encode())
attr = ctypes.create_string_buffer(128)
struct.pack_into("<QI", attr, 0, ctypes.addressof(path), fd)
if libc.syscall(321, 6, attr, 128) < 0: sys.exit("BPF_OBJ_PIN: " + os.strerror(ctypes.get_errno()))
subprocess.run(["ip", "link", "set", "dev", "u0", "xdpgeneric", "pinned", d + "/other"], check=True)
os.unlink(d + "/other")
subprocess.run(["umount", d], check=True)
"#;
    let bpffs = dir.join("bpffs");
    std::fs::create_dir_all(&bpffs).expect("bpffs dir");
    let out = ns
        .command("unshare")
        .args(["-m", "python3", "-c", script])
        .arg(&bpffs)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "attaching another XDP program: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn an_interface_with_another_xdp_program_keeps_it_and_raw_esp_uses_the_socket() {
    vmsecd_e2e::netns::require_root_and_ip();
    let mut g = NetnsGuard::new("rawrxbusy");
    let (a, b) = g.underlay_pair();
    let avm = g.vm_subnet(&a, 1, "avm");
    g.vm_subnet(&b, 2, "bvm");
    let root = g.dir();
    attach_foreign_program(&b, &root);
    let before = xdp_on_u0(&b);
    assert!(
        before.starts_with("xdpgeneric"),
        "the other program: {before:?}"
    );
    let mut m = Mesh::two_hosts(PSK);
    m.encap = "raw".into();
    let mut va = start_xdp(&a, &root.join("a"), &m, "hA");
    let mut vb = start_xdp(&b, &root.join("b"), &m, "hB");
    let t = Duration::from_secs(20);
    va.wait_status("hA-hB up", t, |s| is_up(s, "hB"));
    let s = vb.wait_status("hB-hA up", t, |s| is_up(s, "hA"));
    assert!(
        s.raw_esp_in
            .path
            .starts_with("socket (xdp unavailable: another XDP program is already attached to u0"),
        "{:?}",
        s.raw_esp_in
    );
    assert!(
        vb.log()
            .contains("raw ESP is received through the raw socket instead"),
        "{}",
        vb.diagnostics()
    );
    assert!(
        ping_until_ok(&avm, "198.19.2.10", Duration::from_secs(5)),
        "{}",
        vb.diagnostics()
    );
    assert_eq!(vb.status().unwrap().raw_esp_in.xdp, 0);
    assert_eq!(xdp_on_u0(&b), before, "the other program stays attached");
    assert!(vb.terminate(Duration::from_secs(5)).is_some());
    assert_eq!(xdp_on_u0(&b), before, "and stays after vmsecd stops");
    assert!(va.terminate(Duration::from_secs(5)).is_some());
}
