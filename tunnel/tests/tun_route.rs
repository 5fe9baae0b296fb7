//! The TUN and netlink modules for real: in a network namespace this test creates (`vt-tun-PID`) and deletes on
//! every path, it creates TUN interfaces, gives one an address, routes a subnet into them, checks with the kernel
//! (and `ip`) that the routes point into the TUN, and moves UDP packets both ways between a socket and the TUN.
//!
//! Needs root (CAP_NET_ADMIN and `ip netns add`): without it the test fails, it does not skip. Addresses are from
//! 198.18.0.0/15 only, as ../../shared/conventions.md asks; nothing touches the root namespace: the work runs on a
//! dedicated thread moved into the namespace with setns(2), which affects that thread (and what it spawns) only.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::process::Command;
use std::time::Duration;

use vmsecd::prefix::Prefix;
use vmsecd::route::{Netlink, Route, Routes};
use vmsecd::tun::{AsyncQueue, Tun, TunOptions};

/// A named network namespace, deleted when dropped (on success, failure and panic alike).
struct Netns {
    name: String,
}

impl Netns {
    fn create(prefix: &str) -> Netns {
        let name = format!("{prefix}-{}", std::process::id());
        run_ip(&["netns", "add", &name]);
        Netns { name }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (it creates a network namespace and TUN interfaces): run it as root, e.g. \
         sudo -E cargo test -p vmsecd --test tun_route"
    );
}

fn run_ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip (install iproute2): {e}"));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a new thread that has entered the namespace, and returns its result (or its panic).
fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{}", ns.name);
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a namespace file descriptor we hold open; CLONE_NEWNET moves this thread only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            let want = std::fs::metadata(&path).unwrap().ino();
            let have = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
            assert_eq!(have, want, "the thread is not in namespace {}", ns.name);
            f()
        });
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 19, 1, 1); // this host's VM bridge address (conventions.md)
const REMOTE_VM: Ipv4Addr = Ipv4Addr::new(198, 19, 2, 10); // a VM behind peer 2
const REMOTE_VM3: Ipv4Addr = Ipv4Addr::new(198, 19, 3, 10); // a VM behind peer 3

fn csum(b: &[u8]) -> u16 {
    let mut s: u32 = b
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// An IPv4/UDP packet (UDP checksum 0: none, allowed for IPv4).
fn udp4(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only")
    };
    let len = 28 + payload.len();
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&s.octets());
    p[16..20].copy_from_slice(&d.octets());
    let c = csum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    p[20..22].copy_from_slice(&src.port().to_be_bytes());
    p[22..24].copy_from_slice(&dst.port().to_be_bytes());
    p[24..26].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    p[28..].copy_from_slice(payload);
    p
}

/// (source, destination, payload) of an IPv4/UDP packet; None for anything else (IPv6 router solicitations
/// and the like also come out of a TUN that is up).
fn parse_udp4(p: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    if p.len() < 28 || p[0] >> 4 != 4 || p[9] != 17 {
        return None;
    }
    let ihl = usize::from(p[0] & 0xf) * 4;
    let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]));
    let port = |o: usize| u16::from_be_bytes([p[o], p[o + 1]]);
    let src = SocketAddr::new(ip(12), port(ihl));
    let dst = SocketAddr::new(ip(16), port(ihl + 2));
    Some((src, dst, &p[ihl + 8..]))
}

/// Reads from the queues until `n` UDP packets have come (each read at `offset` in its buffer).
async fn read_udp(
    queues: &[AsyncQueue],
    n: usize,
    offset: usize,
) -> Vec<(SocketAddr, SocketAddr, Vec<u8>)> {
    let mut got = Vec::new();
    let mut storage = vec![[0u8; 2048]; 8];
    let mut sizes = [0usize; 8];
    while got.len() < n {
        let mut bufs: Vec<&mut [u8]> = storage.iter_mut().map(|b| &mut b[..]).collect();
        let (which, count) = tokio::time::timeout(Duration::from_secs(5), async {
            // Multi-queue: the kernel picks the queue by flow hash, so wait on both.
            if queues.len() == 1 {
                (0, queues[0].read_batch(&mut bufs, &mut sizes, offset).await)
            } else {
                let (a, b) = bufs.split_at_mut(4);
                let (sa, sb) = sizes.split_at_mut(4);
                tokio::select! {
                    r = queues[0].read_batch(a, sa, offset) => (0, r),
                    r = queues[1].read_batch(b, sb, offset) => (1, r),
                }
            }
        })
        .await
        .expect("no packet came out of the TUN within 5 s");
        let count = count.expect("TUN read failed");
        let base = if which == 1 { 4 } else { 0 };
        for i in base..base + count {
            let buf = &storage[i][offset..offset + sizes[i]];
            if let Some((s, d, payload)) = parse_udp4(buf) {
                got.push((s, d, payload.to_vec()));
            }
        }
    }
    got
}

#[test]
fn tun_and_routes_in_a_namespace() {
    require_root();
    let ns = Netns::create("vt-tun");
    let ns_name = ns.name.clone();
    in_netns(&ns, || {
        let ip_ns = |args: &[&str]| {
            let mut all = vec!["-n", ns_name.as_str()];
            all.extend_from_slice(args);
            run_ip(&all)
        };
        ip_ns(&["link", "set", "lo", "up"]);

        // One single-queue TUN, one multi-queue TUN with the virtio-net header.
        let tun = Tun::create(&TunOptions::new("vt0", 1400)).expect("create vt0");
        let mq = Tun::create(&TunOptions {
            name: "vt1".into(),
            mtu: 1380,
            queues: 2,
            vnet_hdr: true,
        })
        .expect("create vt1");
        assert_eq!(mq.queues().len(), 2);
        let link = ip_ns(&["-o", "link", "show", "vt0"]);
        assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
        let link = ip_ns(&["-d", "-o", "link", "show", "vt1"]);
        assert!(
            link.contains("mtu 1380") && link.contains("multi_queue") && link.contains("vnet_hdr"),
            "{link}"
        );
        assert!(
            ip_ns(&["-o", "link", "show", "vt0"]).starts_with(&format!("{}: vt0", tun.ifindex()))
        );

        // A second vt0 is refused, with words a sysadmin can act on.
        let e = Tun::create(&TunOptions::new("vt0", 1400)).unwrap_err();
        assert!(e.to_string().contains("ip link del vt0"), "{e}");

        // Address and routes over netlink.
        let mut nl = Netlink::open().unwrap();
        nl.add_address(tun.ifindex(), LOCAL.into(), 32).unwrap();
        let addrs = nl.local_addresses().unwrap();
        assert!(
            addrs.iter().any(|a| a.addr == IpAddr::V4(LOCAL)
                && a.ifindex == tun.ifindex()
                && a.prefix_len == 32),
            "{addrs:?}"
        );
        assert!(
            addrs
                .iter()
                .any(|a| a.addr == IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "{addrs:?}"
        );

        let mut routes = Routes::new(Netlink::open().unwrap());
        let to2: Prefix = "198.19.2.0/24".parse().unwrap();
        let to3: Prefix = "198.19.3.0/24".parse().unwrap();
        routes
            .add(Route {
                dst: to2,
                ifindex: tun.ifindex(),
                src: Some(LOCAL.into()),
            })
            .unwrap();
        routes
            .add(Route {
                dst: to3,
                ifindex: mq.ifindex(),
                src: Some(LOCAL.into()),
            })
            .unwrap();
        assert_eq!(routes.installed().len(), 2);
        let e = nl
            .add_route(&Route {
                dst: to2,
                ifindex: mq.ifindex(),
                src: None,
            })
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
        assert!(e.to_string().contains("ip route show 198.19.2.0/24"), "{e}");

        let r = nl.route_get(REMOTE_VM.into()).unwrap();
        assert_eq!(r.oif, Some(tun.ifindex()), "{r:?}");
        assert_eq!(r.prefsrc, Some(IpAddr::V4(LOCAL)), "{r:?}");
        assert_eq!(
            nl.route_get(REMOTE_VM3.into()).unwrap().oif,
            Some(mq.ifindex())
        );
        let shown = ip_ns(&["route", "show", "198.19.2.0/24"]);
        assert!(
            shown.contains("dev vt0") && shown.contains("src 198.19.1.1"),
            "{shown}"
        );

        // Packets both ways, through the async queues.
        let tun_index = tun.ifindex();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let queues = rt.block_on(async {
            let q0 = [AsyncQueue::new(tun.into_queues().remove(0)).unwrap()];
            let sock = UdpSocket::bind((LOCAL, 0)).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let me = sock.local_addr().unwrap();
            let vm = SocketAddr::new(REMOTE_VM.into(), 7000);

            // Socket -> route -> TUN.
            sock.send_to(b"hello", vm).unwrap();
            let got = read_udp(&q0, 1, 0).await;
            assert_eq!(got[0], (me, vm, b"hello".to_vec()));

            // TUN -> kernel -> socket.
            q0[0].write_batch(&[udp4(vm, me, b"world")]).await.unwrap();
            let mut buf = [0u8; 64];
            let (n, from) = sock
                .recv_from(&mut buf)
                .expect("the packet written to the TUN did not reach the socket");
            assert_eq!((&buf[..n], from), (&b"world"[..], vm));

            // A batch, read at an offset (the room ESP needs in front).
            for i in 0..8u8 {
                sock.send_to(&[b'p', i], vm).unwrap();
            }
            let got = read_udp(&q0, 8, esp::HEADROOM).await;
            let payloads: Vec<_> = got.iter().map(|g| g.2.clone()).collect();
            assert_eq!(
                payloads,
                (0..8u8).map(|i| vec![b'p', i]).collect::<Vec<_>>()
            );
            let many: Vec<Vec<u8>> = (0..4u8).map(|i| udp4(vm, me, &[b'q', i])).collect();
            q0[0].write_batch(&many).await.unwrap();
            for i in 0..4u8 {
                let (n, _) = sock.recv_from(&mut buf).unwrap();
                assert_eq!(&buf[..n], &[b'q', i]);
            }

            // The same through the multi-queue TUN with virtio-net headers.
            let qs: Vec<AsyncQueue> = mq
                .into_queues()
                .into_iter()
                .map(|q| AsyncQueue::new(q).unwrap())
                .collect();
            let vm3 = SocketAddr::new(REMOTE_VM3.into(), 7001);
            sock.send_to(b"mq-out", vm3).unwrap();
            let got = read_udp(&qs, 1, 16).await;
            assert_eq!(got[0], (me, vm3, b"mq-out".to_vec()));
            qs[1].write(&udp4(vm3, me, b"mq-in")).await.unwrap();
            let (n, from) = sock.recv_from(&mut buf).unwrap();
            assert_eq!((&buf[..n], from), (&b"mq-in"[..], vm3));
            (q0, qs)
        });

        // Removing the tracked routes: the kernel has no route to the subnet any more.
        routes.remove_all().unwrap();
        assert!(routes.installed().is_empty());
        match nl.route_get(REMOTE_VM.into()) {
            Err(e) => assert_eq!(e.errno(), Some(libc::ENETUNREACH), "{e}"),
            Ok(r) => assert_ne!(r.oif, Some(tun_index), "{r:?}"),
        }
        assert!(ip_ns(&["route", "show", "198.19.2.0/24"]).trim().is_empty());

        // Dropping the last queue removes the interface, its address and any route through it.
        routes
            .add(Route {
                dst: to2,
                ifindex: tun_index,
                src: None,
            })
            .unwrap();
        drop(queues);
        let links = ip_ns(&["-o", "link", "show"]);
        assert!(!links.contains("vt0") && !links.contains("vt1"), "{links}");
        assert!(ip_ns(&["route", "show", "198.19.2.0/24"]).trim().is_empty());
        // The route went with its interface; removing it again counts as done.
        routes.remove_all().unwrap();
    });
    drop(ns);
}
