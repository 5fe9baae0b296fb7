//! Measures ways to send raw ESP (IP protocol 50) in bulk, for the choice in benches/README.md ("Raw ESP"): run
//! by benches/raw_tx.sh inside two namespaces joined by a veth pair, never on its own.
//!
//! `raw_esp_tx send MODE COUNT SIZE SRC DST [IFACE DSTMAC]`: sends COUNT ESP packets of SIZE bytes (IP payload)
//! as fast as it can; MODE is `mmsg:N` (a raw IP socket, `sendmmsg` of N messages per call), `ring` (an
//! AF_PACKET socket with a TPACKET_V2 TX ring: Ethernet and IPv4 headers written here, one `send` per 256
//! frames) or `ring-bypass` (the same with PACKET_QDISC_BYPASS). Prints packets, seconds and CPU seconds.
//! `raw_esp_tx recv SECS`: counts ESP packets on a raw socket with `recvmmsg` (64 per call) until SECS pass
//! without one; prints packets, seconds from first to last and CPU seconds.
//! `raw_esp_tx recv-xdp SECS MODE IFACE LOCAL`: the same through an AF_XDP socket (copy mode) on queue 0 of
//! IFACE, fed by the daemon's XDP program (tunnel/src/daemon/rawrx) attached in MODE (`native` or `generic`)
//! for ESP to LOCAL; a raw ESP socket stays open beside it, as in the daemon.
#![allow(clippy::indexing_slicing, clippy::unwrap_used)]

use std::time::{Duration, Instant};

#[allow(dead_code)]
#[path = "../src/daemon/rawrx/program.rs"]
mod program;
#[allow(dead_code)]
#[path = "../src/daemon/rawrx/xsk.rs"]
mod xsk;

fn cpu() -> f64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(r.ru_utime) + t(r.ru_stime)
}

fn check(r: libc::c_int, what: &str) -> libc::c_int {
    if r < 0 {
        panic!("{what}: {}", std::io::Error::last_os_error());
    }
    r
}

fn sockaddr(ip: std::net::Ipv4Addr) -> libc::sockaddr_in {
    // SAFETY: plain data.
    let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    a.sin_family = libc::AF_INET as u16;
    a.sin_addr.s_addr = u32::from(ip).to_be();
    a
}

fn esp_payload(size: usize, seq: u32) -> Vec<u8> {
    let mut p = vec![0xabu8; size];
    p[..4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    p[4..8].copy_from_slice(&seq.to_be_bytes());
    p
}

fn send_mmsg(batch: usize, count: usize, size: usize, dst: std::net::Ipv4Addr) {
    let fd = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, 50) },
        "socket",
    );
    let big: libc::c_int = 4 << 20;
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            (&big as *const libc::c_int).cast(),
            4,
        )
    };
    let to = sockaddr(dst);
    let data: Vec<u8> = (0..batch)
        .flat_map(|i| esp_payload(size, i as u32))
        .collect();
    let mut iov: Vec<libc::iovec> = data
        .chunks(size)
        .map(|c| libc::iovec {
            iov_base: c.as_ptr() as *mut _,
            iov_len: c.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            // SAFETY: plain data.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = (&to as *const libc::sockaddr_in) as *mut _;
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let (t0, c0) = (Instant::now(), cpu());
    let mut sent = 0;
    while sent < count {
        let n = (count - sent).min(batch);
        let r = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), n as u32, 0) };
        sent += check(r, "sendmmsg") as usize;
    }
    report("sent", sent, t0.elapsed(), cpu() - c0);
}

fn csum(h: &[u8]) -> u16 {
    let mut s: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

#[allow(clippy::too_many_arguments)]
fn send_ring(
    bypass: bool,
    count: usize,
    size: usize,
    src: std::net::Ipv4Addr,
    dst: std::net::Ipv4Addr,
    iface: &str,
    dmac: [u8; 6],
) {
    let proto = (libc::ETH_P_IP as u16).to_be() as i32;
    let fd = check(
        unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) },
        "socket",
    );
    let v2: libc::c_int = 1; // TPACKET_V2
    check(
        unsafe { libc::setsockopt(fd, libc::SOL_PACKET, 10, (&v2 as *const i32).cast(), 4) },
        "PACKET_VERSION",
    );
    if bypass {
        let one: libc::c_int = 1;
        check(
            unsafe { libc::setsockopt(fd, libc::SOL_PACKET, 20, (&one as *const i32).cast(), 4) },
            "PACKET_QDISC_BYPASS",
        );
    }
    const FRAME: usize = 2048;
    const FRAMES: usize = 1024;
    #[repr(C)]
    struct Req {
        block_size: u32,
        block_nr: u32,
        frame_size: u32,
        frame_nr: u32,
    }
    let req = Req {
        block_size: 1 << 16,
        block_nr: ((FRAMES * FRAME) >> 16) as u32,
        frame_size: FRAME as u32,
        frame_nr: FRAMES as u32,
    };
    check(
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                13, // PACKET_TX_RING
                (&req as *const Req).cast(),
                std::mem::size_of::<Req>() as u32,
            )
        },
        "PACKET_TX_RING",
    );
    let cname = std::ffi::CString::new(iface).unwrap();
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) } as i32;
    // SAFETY: plain data.
    let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    ll.sll_family = libc::AF_PACKET as u16;
    ll.sll_protocol = proto as u16;
    ll.sll_ifindex = ifindex;
    check(
        unsafe {
            libc::bind(
                fd,
                (&ll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        },
        "bind",
    );
    let ring = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            FRAMES * FRAME,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    assert_ne!(ring, libc::MAP_FAILED, "mmap");
    let ring = unsafe { std::slice::from_raw_parts_mut(ring.cast::<u8>(), FRAMES * FRAME) };
    // The source MAC: the interface's own.
    let smac_text = std::fs::read_to_string(format!("/sys/class/net/{iface}/address")).unwrap();
    let smac: Vec<u8> = smac_text
        .trim()
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).unwrap())
        .collect();
    // tpacket2_hdr is 32 bytes; data at TPACKET2_HDRLEN - sizeof(sockaddr_ll) aligned: use offset 32.
    const DATA: usize = 32;
    let (t0, c0) = (Instant::now(), cpu());
    let mut sent = 0;
    let mut slot = 0;
    let mut id: u16 = 0;
    while sent < count {
        let mut queued = 0;
        while queued < 256 && sent + queued < count {
            let f = &mut ring[slot * FRAME..(slot + 1) * FRAME];
            let status = u32::from_ne_bytes(f[0..4].try_into().unwrap());
            if status != 0 {
                break; // still owned by the kernel
            }
            let len = 14 + 20 + size;
            let d = &mut f[DATA..DATA + len];
            d[..6].copy_from_slice(&dmac);
            d[6..12].copy_from_slice(&smac);
            d[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let ip = &mut d[14..34];
            ip.copy_from_slice(&[
                0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ]);
            ip[2..4].copy_from_slice(&((20 + size) as u16).to_be_bytes());
            ip[4..6].copy_from_slice(&id.to_be_bytes());
            id = id.wrapping_add(1);
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let c = csum(ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            let p = &mut d[34..];
            p.fill(0xab);
            p[..4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            p[4..8].copy_from_slice(&((sent + queued) as u32).to_be_bytes());
            // tp_len, tp_snaplen at 4 and 8; then status = SEND_REQUEST.
            f[4..8].copy_from_slice(&(len as u32).to_ne_bytes());
            f[8..12].copy_from_slice(&(len as u32).to_ne_bytes());
            std::sync::atomic::fence(std::sync::atomic::Ordering::Release);
            f[0..4].copy_from_slice(&1u32.to_ne_bytes());
            slot = (slot + 1) % FRAMES;
            queued += 1;
        }
        if queued == 0 {
            // Ring full: let the kernel send what is queued and wait.
            check(
                unsafe { libc::send(fd, std::ptr::null(), 0, 0) } as i32,
                "send",
            );
            continue;
        }
        check(
            unsafe { libc::send(fd, std::ptr::null(), 0, 0) } as i32,
            "send",
        );
        sent += queued;
    }
    // Wait until the kernel has sent every frame.
    loop {
        let busy = (0..FRAMES).any(|i| {
            let s = u32::from_ne_bytes(ring[i * FRAME..i * FRAME + 4].try_into().unwrap());
            s != 0 && s & 0x4 == 0 // not AVAILABLE and not WRONG_FORMAT
        });
        if !busy {
            break;
        }
        unsafe { libc::send(fd, std::ptr::null(), 0, 0) };
    }
    report("sent", sent, t0.elapsed(), cpu() - c0);
}

fn recv(idle: Duration) {
    let fd = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, 50) },
        "socket",
    );
    let big: libc::c_int = 16 << 20;
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&big as *const libc::c_int).cast(),
            4,
        )
    };
    let tv = libc::timeval {
        tv_sec: idle.as_secs() as i64,
        tv_usec: 0,
    };
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    const SLOT: usize = 2048;
    let mut buf = vec![0u8; 64 * SLOT];
    let mut iov: Vec<libc::iovec> = buf
        .chunks_mut(SLOT)
        .map(|c| libc::iovec {
            iov_base: c.as_mut_ptr().cast(),
            iov_len: SLOT,
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = iov
        .iter_mut()
        .map(|v| {
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = v;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    println!("ready");
    let mut got = 0usize;
    let mut first = None;
    let mut last = Instant::now();
    let c0 = cpu();
    loop {
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                64,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            break; // the idle timeout
        }
        first.get_or_insert_with(Instant::now);
        last = Instant::now();
        got += r as usize;
    }
    let span = first.map(|f| last - f).unwrap_or_default();
    report("received", got, span, cpu() - c0);
}

fn recv_xdp(idle: Duration, mode: &str, iface: &str, local: std::net::Ipv4Addr) {
    use std::os::fd::AsRawFd;
    let _raw = check(
        unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, 50) },
        "socket",
    );
    let cname = std::ffi::CString::new(iface).unwrap();
    let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    let map = program::create_map(1).unwrap();
    let prog = program::load(local, &map, xsk::MAX_FRAME, program::XDP_PASS).unwrap();
    let mode = if mode == "native" {
        program::Mode::Native
    } else {
        program::Mode::Generic
    };
    let mut sock = xsk::Xsk::open(ifindex, 0, 2048).unwrap();
    program::map_socket(&map, 0, sock.as_raw_fd()).unwrap();
    let _link = program::attach(&prog, iface, ifindex, mode).unwrap();
    println!("ready");
    let mut got = 0usize;
    let mut first = None;
    let mut last = Instant::now();
    let c0 = cpu();
    let mut sum = 0u64;
    loop {
        let n = sock.receive(64, |f| sum += u64::from(f[14 + 9]));
        if n == 0 {
            let mut p = libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let r = unsafe { libc::poll(&mut p, 1, idle.as_millis() as i32) };
            if r == 0 {
                break;
            }
            continue;
        }
        first.get_or_insert_with(Instant::now);
        last = Instant::now();
        got += n as usize;
    }
    let span = first.map(|f| last - f).unwrap_or_default();
    report("received", got, span, cpu() - c0);
    let (full, empty, dropped) = sock.drops().unwrap();
    println!("xsk drops: rx ring full {full}, fill ring empty {empty}, other {dropped}; protocol sum ok {}", sum == 50 * got as u64);
}

fn report(what: &str, n: usize, t: Duration, cpu: f64) {
    let s = t.as_secs_f64();
    println!(
        "{what} {n} in {s:.3} s: {:.0} kpps, cpu {cpu:.3} s, {:.2} us cpu/packet",
        n as f64 / s / 1e3,
        cpu * 1e6 / n.max(1) as f64
    );
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a.get(1).map(String::as_str) {
        Some("recv") => recv(Duration::from_secs(a[2].parse().unwrap())),
        Some("recv-xdp") => recv_xdp(
            Duration::from_secs(a[2].parse().unwrap()),
            &a[3],
            &a[4],
            a[5].parse().unwrap(),
        ),
        Some("send") => {
            let (mode, count, size) = (&a[2], a[3].parse().unwrap(), a[4].parse().unwrap());
            let (src, dst) = (a[5].parse().unwrap(), a[6].parse().unwrap());
            if let Some(n) = mode.strip_prefix("mmsg:") {
                send_mmsg(n.parse().unwrap(), count, size, dst);
            } else {
                let mac: Vec<u8> = a[8]
                    .split(':')
                    .map(|x| u8::from_str_radix(x, 16).unwrap())
                    .collect();
                send_ring(
                    mode == "ring-bypass",
                    count,
                    size,
                    src,
                    dst,
                    &a[7],
                    mac.try_into().unwrap(),
                );
            }
        }
        _ => eprintln!("usage: see the module documentation"),
    }
}
