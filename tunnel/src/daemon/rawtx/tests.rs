//! The transmit ring against the kernel: two namespaces joined by a veth pair (198.18.77.0/24 and fd00:77::/64,
//! created here and deleted on every path), the sender's next hop resolved by the kernel, and what arrives at a
//! raw socket on the other side compared with what was sent. Needs root.

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::*;

/// Two namespaces `<name>a` and `<name>b` with a veth pair between them, deleted when dropped.
struct Pair {
    name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pair {
    fn new(test: &str) -> Pair {
        crate::test_root::require_root(test, "it creates network namespaces");
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let p = Pair {
            name: format!(
                "vrtx{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let (a, b) = (p.ns('a'), p.ns('b'));
        // A panic past here drops `p`, which deletes what exists.
        ip(&["netns", "add", &a]);
        ip(&["netns", "add", &b]);
        ip(&[
            "-n", &a, "link", "add", "r0", "type", "veth", "peer", "name", "r0", "netns", &b,
        ]);
        for (ns, n) in [(&a, 1), (&b, 2)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("198.18.77.{n}/24"),
                "dev",
                "r0",
            ]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("fd00:77::{n}/64"),
                "dev",
                "r0",
                "nodad",
            ]);
            ip(&["-n", ns, "link", "set", "r0", "up"]);
        }
        p
    }

    fn ns(&self, side: char) -> String {
        format!("{}{side}", self.name)
    }

    /// Runs `f` on a thread inside namespace `side` (threads it spawns stay there too).
    fn run<T: Send + 'static>(&self, side: char, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.ns(side));
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("namespace file");
            // SAFETY: a valid namespace descriptor; only this thread moves.
            let r = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns");
            f()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for side in ['a', 'b'] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(side)])
                .status();
        }
    }
}

fn raw_socket(local: IpAddr) -> Socket {
    let domain = if local.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::RAW, Some(Protocol::from(50))).expect("raw socket");
    s.bind(&SockAddr::from(SocketAddr::new(local, 0)))
        .expect("bind");
    s
}

/// ESP-looking packets: `n` of `stride` bytes, the last `last` bytes, each starting with `mark` and its index.
fn batch(mark: u8, n: usize, stride: usize, last: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 0..n {
        let len = if i + 1 == n { last } else { stride };
        v.extend((0..len).map(|j| match j {
            0 => mark,
            1 => i as u8,
            _ => j as u8,
        }));
    }
    v
}

/// Sends batches from a until the ring carried one, then a batch marked 0xE0 + n that went through the ring (a
/// batch after each refresh of the next hops takes the socket: the next mark is tried then), then one packet
/// larger than the MTU (through the socket, marked 0xFF). Returns the mark and the counters' (ring, socket)
/// after the marked batch and at the end.
fn send_side(local: IpAddr, to: IpAddr) -> (u8, [(u64, u64); 2]) {
    let tx = RawTx::new(OwnedFd::from(raw_socket(local)), true);
    let c = |tx: &RawTx| {
        let c = tx.counters();
        (
            c.ring.load(Ordering::Relaxed),
            c.socket.load(Ordering::Relaxed),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while c(&tx).0 == 0 {
        assert!(
            Instant::now() < deadline,
            "the ring never carried a packet: {:?}",
            c(&tx)
        );
        tx.send(&batch(0x11, 2, 600, 600), 600, to).expect("send");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut mark = 0xE0;
    let ring = loop {
        let before = c(&tx);
        tx.send(&batch(mark, 3, 1000, 500), 1000, to).expect("send");
        let after = c(&tx);
        if after == (before.0 + 3, before.1) {
            break after;
        }
        assert_eq!(after, (before.0, before.1 + 3), "a batch goes one way");
        mark += 1;
        assert!(mark < 0xF0, "the ring never carried a marked batch");
    };
    tx.send(&batch(0xFF, 1, 3000, 3000), 3000, to)
        .expect("send");
    (mark, [ring, c(&tx)])
}

/// Receives on b until the 0xFF packet arrived; returns the marked batches and it (IPv4: with their header).
fn receive_side(local: IpAddr) -> impl FnOnce() -> Vec<Vec<u8>> {
    let s = raw_socket(local);
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    move || {
        let mut s = s;
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        let off = if local.is_ipv4() { 20 } else { 0 };
        loop {
            let n = s.read(&mut buf).expect("the packets arrive");
            let mark = buf.get(off).copied().unwrap_or(0);
            if mark >= 0xE0 {
                got.push(buf[..n].to_vec());
            }
            if mark == 0xFF {
                return got;
            }
        }
    }
}

/// The packets of the batch marked `mark`, then the last (large) one.
fn pick(got: Vec<Vec<u8>>, off: usize, mark: u8) -> Vec<Vec<u8>> {
    got.into_iter()
        .filter(|p| p[off] == mark || p[off] == 0xFF)
        .collect()
}

/// The round both ring tests make: a (at `a`) sends a marked batch through the ring and one packet over the MTU
/// through the socket to b (at `b`), which receives on a raw socket (`off`: the bytes before the ESP header it
/// hands up). Returns the four marked packets b got, in order, and the batch that was sent.
fn ring_then_socket(test: &str, a: &str, b: &str, off: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
    let pair = Pair::new(test);
    let (a, b): (IpAddr, IpAddr) = (a.parse().unwrap(), b.parse().unwrap());
    let rx = pair.run('b', move || receive_side(b));
    // The socket was opened in b: it receives there, whichever thread reads it.
    let rx = std::thread::spawn(rx);
    let (mark, [ring, after]) = pair.run('a', move || send_side(a, b));
    assert_eq!(
        after,
        (ring.0, ring.1 + 1),
        "the packet over the MTU went through the socket"
    );
    let got = pick(rx.join().unwrap(), off, mark);
    assert_eq!(
        got.len(),
        4,
        "the marked batch and the large packet arrived"
    );
    (got, batch(mark, 3, 1000, 500))
}

#[test]
fn ring_sends_raw_esp_with_the_ipv4_header_the_socket_would_write() {
    let (got, want) = ring_then_socket(
        "ring_sends_raw_esp_with_the_ipv4_header_the_socket_would_write",
        "198.18.77.1",
        "198.18.77.2",
        20,
    );
    let mut esp: Vec<&[u8]> = want.chunks(1000).collect();
    esp.push(&[]);
    for (i, p) in got.iter().enumerate() {
        let h = &p[..20];
        assert_eq!(h[0], 0x45, "version 4, no options");
        assert_eq!(usize::from(u16::from_be_bytes([h[2], h[3]])), p.len());
        assert_eq!(h[9], 50, "protocol ESP");
        assert_eq!(&h[12..16], &[198, 18, 77, 1]);
        assert_eq!(&h[16..20], &[198, 18, 77, 2]);
        if i < 3 {
            // What the ring wrote (the kernel hands raw sockets the header as it arrived).
            assert_eq!(&h[4..9], &[0, 0, 0x40, 0, 64], "ID 0, DF, TTL 64");
            let sum: u32 = h
                .chunks(2)
                .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
                .sum();
            assert_eq!((sum & 0xffff) + (sum >> 16), 0xffff, "header checksum");
            assert_eq!(&p[20..], esp[i], "packet {i} intact and in order");
        } else {
            assert_eq!(
                p.len(),
                20 + 3000,
                "the large packet arrived whole (reassembled)"
            );
        }
    }
}

#[test]
fn ring_sends_raw_esp_over_ipv6() {
    let (got, want) = ring_then_socket(
        "ring_sends_raw_esp_over_ipv6",
        "fd00:77::1",
        "fd00:77::2",
        0,
    );
    let mut esp: Vec<&[u8]> = want.chunks(1000).collect();
    esp.push(&[]);
    for (i, p) in got.iter().enumerate() {
        if i < 3 {
            assert_eq!(p.as_slice(), esp[i], "packet {i} intact and in order");
        } else {
            assert_eq!(
                p.len(),
                3000,
                "the large packet arrived whole (reassembled)"
            );
        }
    }
}

#[test]
fn ipv4_checksum_matches_rfc_1071_example() {
    // A header whose checksum is known (from a capture): 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7.
    let mut h = [
        0x45, 0, 0, 0x73, 0, 0, 0x40, 0, 0x40, 0x11, 0, 0, 0xc0, 0xa8, 0, 1, 0xc0, 0xa8, 0, 0xc7,
    ];
    assert_eq!(ipv4_checksum(&h), 0xb861);
    h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
    assert_eq!(ipv4_checksum(&h), 0);
    let built = ipv4_header([198, 18, 0, 1], [198, 18, 0, 2], 100);
    assert_eq!(ipv4_checksum(&built), 0);
    assert_eq!(u16::from_be_bytes([built[2], built[3]]), 120);
}

/// A flush that fails (here: the link is down, ENETDOWN) drops the frames the kernel did not take and keeps the
/// ring in step with the kernel's head: twice the ring's frames go by one failed flush each without the ring
/// filling up (the frames used to stay SEND_REQUEST: a full ring, which nothing flushed again, put all raw ESP
/// on the raw socket for good, and a partly filled one sent its stale frames with a later batch, on that
/// batch's interface), and once the link is up again the kernel sends what follows.
#[test]
fn a_failed_flush_leaves_no_frame_behind() {
    let pair = Pair::new("a_failed_flush_leaves_no_frame_behind");
    ip(&["-n", &pair.ns('a'), "link", "set", "r0", "down"]);
    let (mut ring, ifindex) = pair.run('a', || {
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"r0".as_ptr()) } as i32;
        assert_ne!(ifindex, 0);
        let mut ring = Ring::open(ETH_HLEN + 1500).expect("ring");
        let frames = ring::RING_BYTES / 2048;
        for i in 0..2 * frames {
            let f = ring
                .frame(64)
                .unwrap_or_else(|| panic!("no frame after {i} failed flushes"));
            f.fill(0);
            ring.commit(64);
            let e = ring.flush(ifindex, ETH_P_IP).expect_err("the link is down");
            assert_eq!(e.error.raw_os_error(), Some(libc::ENETDOWN), "{e:?}");
            assert_eq!(e.frames, 1, "the frame is dropped");
        }
        (ring, ifindex)
    });
    ip(&["-n", &pair.ns('a'), "link", "set", "r0", "up"]);
    for _ in 0..3 {
        let f = ring.frame(64).expect("a frame");
        f.fill(0);
        ring.commit(64);
    }
    ring.flush(ifindex, ETH_P_IP).expect("the link is up");
    // The kernel took them from where its head was: all three sent and available again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ring.idle() {
        assert!(
            Instant::now() < deadline,
            "the kernel never sent the frames"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A route's MTU below its interface's (`ip route ... mtu`, or a path MTU the kernel learned from an ICMP
/// "fragmentation needed") holds for the ring as for the raw socket: a packet over it goes through the socket,
/// which fragments it (or reports the error), never through the ring, which would send it whole with DF set
/// into a path that drops it.
#[test]
fn a_route_mtu_below_the_link_mtu_keeps_larger_packets_off_the_ring() {
    let pair = Pair::new("a_route_mtu_below_the_link_mtu_keeps_larger_packets_off_the_ring");
    ip(&[
        "-n",
        &pair.ns('a'),
        "route",
        "add",
        "198.18.77.2/32",
        "dev",
        "r0",
        "mtu",
        "lock",
        "1200",
    ]);
    let (a, b): (IpAddr, IpAddr) = (
        "198.18.77.1".parse().unwrap(),
        "198.18.77.2".parse().unwrap(),
    );
    pair.run('a', move || {
        let tx = RawTx::new(OwnedFd::from(raw_socket(a)), true);
        let ring = |tx: &RawTx| tx.counters().ring.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(20);
        while ring(&tx) == 0 {
            assert!(Instant::now() < deadline, "the ring never carried a packet");
            tx.send(&batch(0x11, 2, 600, 600), 600, b).expect("send");
            std::thread::sleep(Duration::from_millis(100));
        }
        for i in 0..5 {
            let before = ring(&tx);
            let _ = tx.send(&batch(0x22, 3, 1300, 1300), 1300, b);
            assert_eq!(
                ring(&tx),
                before,
                "try {i}: 1300 bytes over a 1200-byte route took the ring"
            );
        }
    });
}

/// A slow qdisc on a's r0 (tbf, 8 kbit/s) with a queue of `limit` bytes: frames handed to it stay charged to
/// the sending socket's buffer for the whole test.
fn slow_qdisc(pair: &Pair, limit: &str) {
    let out = Command::new("tc")
        .args(["-n", &pair.ns('a'), "qdisc", "add", "dev", "r0", "root"])
        .args(["tbf", "rate", "8kbit", "burst", "1600", "limit", limit])
        .output()
        .expect("tc runs");
    assert!(
        out.status.success(),
        "tc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A flush the socket's send buffer cuts short: the kernel charges each frame it takes to SO_SNDBUF until the
/// qdisc or NIC frees it, stops at the first frame it cannot charge, and `sendto` still succeeds (with the bytes
/// it took). Those frames used to stay SEND_REQUEST: sent later with another batch (on that batch's interface,
/// behind its next hop, counted as sent now), and, as a saturated link left more each time, a ring full of
/// them that nothing flushed again put all raw ESP on the raw socket for good. A slow qdisc (tbf, 8 kbit/s, a
/// deep queue) keeps the first frames charged here.
#[test]
fn a_flush_cut_short_by_the_send_buffer_leaves_no_frame_behind() {
    let pair = Pair::new("a_flush_cut_short_by_the_send_buffer_leaves_no_frame_behind");
    slow_qdisc(&pair, "1000000");
    pair.run('a', || {
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"r0".as_ptr()) } as i32;
        assert_ne!(ifindex, 0);
        let mut ring = Ring::open(ETH_HLEN + 1500).expect("ring");
        ring.set_sndbuf(4096);
        const N: usize = 32;
        for _ in 0..N {
            let f = ring.frame(1014).expect("a frame");
            f.fill(0);
            ring.commit(1014);
        }
        let unsent = match ring.flush(ifindex, ETH_P_IP) {
            Ok(()) => 0,
            Err(e) => e.frames,
        };
        assert_eq!(
            ring.requested(),
            0,
            "frames left SEND_REQUEST after the flush ({unsent} reported unsent)"
        );
        assert!(
            unsent > 0 && unsent < N,
            "the send buffer took some frames, not all: {unsent} of {N} unsent"
        );
        // The next frame is the kernel's next: a frame committed now is taken (or reported) by the next flush.
        let f = ring.frame(1014).expect("a frame");
        f.fill(0);
        ring.commit(1014);
        let again = match ring.flush(ifindex, ETH_P_IP) {
            Ok(()) => 0,
            Err(e) => e.frames,
        };
        assert!(again <= 1, "{again}");
        assert_eq!(ring.requested(), 0);
    });
}

/// The ring, not its socket's send buffer, bounds the frames in flight: one flush of 1,000 full-size frames into
/// a slow qdisc (tbf, 8 kbit/s, a queue deep enough for all) hands all of them to the kernel. At the default
/// send buffer (208 KiB) the kernel took 92 and left 908 to the raw socket.
#[test]
fn the_send_buffer_holds_a_full_ring() {
    let pair = Pair::new("the_send_buffer_holds_a_full_ring");
    slow_qdisc(&pair, "4000000");
    let ip_link = Command::new("ip")
        .args([
            "-n",
            &pair.ns('a'),
            "link",
            "set",
            "r0",
            "txqueuelen",
            "2000",
        ])
        .status()
        .expect("ip runs");
    assert!(ip_link.success());
    pair.run('a', || {
        // SAFETY: a NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(c"r0".as_ptr()) } as i32;
        assert_ne!(ifindex, 0);
        let mut ring = Ring::open(ETH_HLEN + 1500).expect("ring");
        const N: usize = 1000;
        for _ in 0..N {
            let f = ring.frame(ETH_HLEN + 1500).expect("a frame");
            f.fill(0);
            ring.commit(ETH_HLEN + 1500);
        }
        if let Err(e) = ring.flush(ifindex, ETH_P_IP) {
            panic!("{} of {N} frames not taken: {}", e.frames, e.error);
        }
        assert_eq!(ring.requested(), 0);
    });
}

/// An IPv4 route through an IPv6 next hop (RFC 5549, `via inet6`, as BGP unnumbered installs them) comes back
/// from `ip route get` as RTA_VIA, not RTA_GATEWAY. The next hop table took such a route for an on-link one and
/// asked for the neighbour entry of the peer's own address, which the kernel never uses there, and which anyone
/// on the link can plant with an ARP request to us ("who has OURS, tell PEER"): the ring then sent the peer's
/// ESP to the planter's MAC. The entry planted here by hand must not be used: the MAC is the IPv6 next hop's.
#[test]
fn an_ipv4_route_via_an_ipv6_next_hop_uses_that_next_hop() {
    let pair = Pair::new("an_ipv4_route_via_an_ipv6_next_hop_uses_that_next_hop");
    let (a, b) = (pair.ns('a'), pair.ns('b'));
    let out = Command::new("ip")
        .args(["-n", &b, "-o", "link", "show", "r0"])
        .output()
        .expect("ip runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let b_mac_text = text
        .split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("b's MAC in {text:?}"))
        .to_owned();
    let b_mac: [u8; 6] = b_mac_text
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect::<Vec<u8>>()
        .try_into()
        .unwrap();
    ip(&[
        "-n",
        &a,
        "route",
        "add",
        "198.18.99.0/24",
        "via",
        "inet6",
        "fd00:77::2",
        "dev",
        "r0",
    ]);
    ip(&[
        "-n",
        &a,
        "neigh",
        "replace",
        "fd00:77::2",
        "lladdr",
        &b_mac_text,
        "dev",
        "r0",
        "nud",
        "permanent",
    ]);
    // What an ARP request from the link could have left: the peer's IPv4 address at another MAC.
    ip(&[
        "-n",
        &a,
        "neigh",
        "replace",
        "198.18.99.5",
        "lladdr",
        "02:00:00:00:00:66",
        "dev",
        "r0",
        "nud",
        "permanent",
    ]);
    let hop = pair.run('a', || {
        let mut nl = crate::route::Netlink::open().expect("netlink");
        nexthop::resolve(
            &mut nl,
            "198.18.77.1".parse().unwrap(),
            "198.18.99.5".parse().unwrap(),
        )
        .expect("route lookup")
    });
    let hop = hop.expect("the IPv6 next hop is resolved");
    assert_eq!(
        hop.dst_mac, b_mac,
        "the IPv6 next hop's MAC, not the planted one"
    );
}

/// An interface whose MTU is larger than the ring's largest frame (65535 here, which a veth or dummy allows) still
/// gets the ring for the packets that fit a frame; opening the ring at that MTU failed, and the raw socket
/// carried everything to every peer for good.
#[test]
fn a_link_mtu_over_the_largest_frame_keeps_the_ring() {
    let pair = Pair::new("a_link_mtu_over_the_largest_frame_keeps_the_ring");
    for side in ['a', 'b'] {
        ip(&["-n", &pair.ns(side), "link", "set", "r0", "mtu", "65535"]);
    }
    let (a, b): (IpAddr, IpAddr) = (
        "198.18.77.1".parse().unwrap(),
        "198.18.77.2".parse().unwrap(),
    );
    pair.run('a', move || {
        let tx = RawTx::new(OwnedFd::from(raw_socket(a)), true);
        let ring = |tx: &RawTx| tx.counters().ring.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(20);
        while ring(&tx) == 0 {
            assert!(
                Instant::now() < deadline,
                "the ring never carried a packet (failed to open: {})",
                matches!(*tx.ring.lock().unwrap(), RingState::Failed)
            );
            tx.send(&batch(0x11, 2, 1400, 1400), 1400, b).expect("send");
            std::thread::sleep(Duration::from_millis(100));
        }
        // A packet larger than a frame takes the socket, and the ring stays open.
        let socket = tx.counters().socket.load(Ordering::Relaxed);
        tx.send(&batch(0x22, 1, 20000, 20000), 20000, b)
            .expect("send");
        assert_eq!(tx.counters().socket.load(Ordering::Relaxed), socket + 1);
        assert!(matches!(*tx.ring.lock().unwrap(), RingState::Open(_)));
    });
}
