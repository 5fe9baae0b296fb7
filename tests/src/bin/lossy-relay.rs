//! lossy-relay: a faulty Ethernet link between two interfaces, for tests on a kernel without `sch_netem`.
//!
//! It runs in a namespace of its own that holds one end of two veth pairs (`--a` and `--b`, no addresses),
//! reads every frame arriving on one with an `AF_PACKET` socket and sends it out of the other, so the two far
//! ends share one Ethernet segment. IPv4 frames (IKE and ESP) meet faults drawn from a seeded PRNG:
//!
//! ```text
//! lossy-relay --a IF --b IF [--seed N] [--duration-secs S]
//!             [--delay-ms D] [--jitter-ms J]     every IPv4 frame waits D + uniform(0..=J) ms
//!             [--reorder PCT --reorder-ms R]      PCT % of them wait R ms more: later frames overtake them
//!             [--duplicate PCT]                   PCT % are sent twice (the copy with its own delay)
//!             [--loss PCT]                        PCT % are dropped (the tests drop with nftables instead)
//!             [--stats FILE]                      counters, rewritten every 250 ms and at exit
//!             [--ready-file F]                    created once both sockets are open
//! ```
//!
//! Everything else (ARP, IPv6 neighbour discovery) passes at once and untouched. The relay exits after
//! `--duration-secs` (default 600) so that a forgotten one cannot run on.
//!
//! Why a relay and not NFQUEUE: NFQUEUE can delay and drop, but duplicating needs a raw socket to re-inject
//! and reordering needs verdicts held back out of order, all through libnetfilter_queue's netlink protocol;
//! a relay between two veths does all four with two sockets and a timer heap, and its counters (how many
//! frames were overtaken and by how many) tell the test exactly what the daemons were put through.
//!
//! veth hands over UDP GSO super-packets (vmsecd sends ESP in UDP with `UDP_SEGMENT`) and leaves checksums to
//! the receiver (`CHECKSUM_PARTIAL`). The sockets therefore use `PACKET_VNET_HDR`: a super-packet is cut into
//! its datagrams here and every pending checksum is completed, as the segmentation and checksum offload of a
//! real NIC would, so the far end receives ordinary frames.
//!
//! The stats file holds `key value` lines, per direction `a2b_*` and `b2a_*`: `in` (frames received; a GSO
//! super-packet counts as its datagrams), `sent`, `lost`, `duplicated`, `delayed_extra` (chosen for
//! reordering), `overtaken` (frames that left after a frame that arrived later), `max_displacement` (the most
//! later-arrived frames that left before one frame), `passthrough` (not IPv4), `bad` (unsupported GSO,
//! truncated, send errors), `socket_drops` (dropped by the kernel before the relay read them: its receive
//! buffer, 32 MiB, was full; a test that wants no loss but the one it asked for checks that this is 0).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::ffi::CString;
use std::io;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// `struct virtio_net_hdr` (include/uapi/linux/virtio_net.h), without the mergeable-buffers count.
const VNET_HDR_LEN: usize = 10;
const VIRTIO_NET_HDR_F_NEEDS_CSUM: u8 = 1;
const VIRTIO_NET_HDR_GSO_NONE: u8 = 0;
const VIRTIO_NET_HDR_GSO_UDP_L4: u8 = 5;
const ETH_HLEN: usize = 14;
const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
/// `PACKET_VNET_HDR` (include/uapi/linux/if_packet.h).
const PACKET_VNET_HDR: libc::c_int = 15;

#[derive(Debug, Clone)]
struct Args {
    a: String,
    b: String,
    seed: u64,
    duration: Duration,
    delay_ms: u64,
    jitter_ms: u64,
    reorder: f64,
    reorder_ms: u64,
    duplicate: f64,
    loss: f64,
    stats: Option<PathBuf>,
    ready: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        a: String::new(),
        b: String::new(),
        seed: 1,
        duration: Duration::from_secs(600),
        delay_ms: 0,
        jitter_ms: 0,
        reorder: 0.0,
        reorder_ms: 0,
        duplicate: 0.0,
        loss: 0.0,
        stats: None,
        ready: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        let num = |v: &str| v.parse::<u64>().map_err(|e| format!("{k} {v}: {e}"));
        let pct = |v: &str| match v.parse::<f64>() {
            Ok(p) if (0.0..=100.0).contains(&p) => Ok(p / 100.0),
            _ => Err(format!("{k} {v}: a percentage 0-100")),
        };
        match k.as_str() {
            "--a" => a.a = v.clone(),
            "--b" => a.b = v.clone(),
            "--seed" => a.seed = num(v)?,
            "--duration-secs" => a.duration = Duration::from_secs(num(v)?),
            "--delay-ms" => a.delay_ms = num(v)?,
            "--jitter-ms" => a.jitter_ms = num(v)?,
            "--reorder" => a.reorder = pct(v)?,
            "--reorder-ms" => a.reorder_ms = num(v)?,
            "--duplicate" => a.duplicate = pct(v)?,
            "--loss" => a.loss = pct(v)?,
            "--stats" => a.stats = Some(PathBuf::from(v)),
            "--ready-file" => a.ready = Some(PathBuf::from(v)),
            _ => return Err(format!("unknown option {k}")),
        }
    }
    if a.a.is_empty() || a.b.is_empty() {
        return Err("--a and --b are required".into());
    }
    if a.reorder > 0.0 && a.reorder_ms == 0 {
        return Err("--reorder needs --reorder-ms above 0".into());
    }
    Ok(a)
}

/// SplitMix64: small, seedable, good enough to draw fault decisions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    /// Uniform in `0..=max`.
    fn upto(&mut self, max: u64) -> u64 {
        if max == 0 {
            0
        } else {
            self.next() % (max + 1)
        }
    }
}

/// One bound `AF_PACKET` socket with virtio-net headers.
struct PacketSocket {
    fd: libc::c_int,
}

impl PacketSocket {
    fn open(ifname: &str) -> io::Result<PacketSocket> {
        let name = CString::new(ifname).map_err(|_| io::Error::other("interface name"))?;
        // SAFETY: plain FFI calls with valid arguments; the fd is owned by the returned value.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                i32::from(ETH_P_ALL.to_be()),
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let s = PacketSocket { fd };
            let one: libc::c_int = 1;
            if libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                PACKET_VNET_HDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            // Bursts of GSO super-packets (64 KiB each) would overflow the default receive buffer while
            // the relay sleeps in poll; what the kernel drops there anyway is counted (`socket_drops`).
            let bytes: libc::c_int = 32 << 20;
            for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
                if libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&bytes as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                ) < 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = ETH_P_ALL.to_be();
            sll.sll_ifindex = ifindex as i32;
            if libc::bind(
                fd,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            Ok(s)
        }
    }

    /// One frame that arrived on the interface (frames it sent itself are skipped), with its virtio-net
    /// header first; `None` when nothing is waiting.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: buf and sll are valid for the lengths given.
            let (n, pkttype) = unsafe {
                let mut sll: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                let n = libc::recvfrom(
                    self.fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                );
                (n, sll.sll_pkttype)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Ok(Some(n as usize));
        }
    }

    /// Frames the kernel dropped because this socket's receive buffer was full, since the last call
    /// (`PACKET_STATISTICS` resets on read).
    fn drops(&self) -> u64 {
        let mut st = libc::tpacket_stats {
            tp_packets: 0,
            tp_drops: 0,
        };
        let mut len = std::mem::size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: st and len are valid for the call.
        let r = unsafe {
            libc::getsockopt(
                self.fd,
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if r < 0 {
            0
        } else {
            u64::from(st.tp_drops)
        }
    }

    /// Sends one plain frame (a zero virtio-net header is put in front).
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut out = Vec::with_capacity(VNET_HDR_LEN + frame.len());
        out.extend_from_slice(&[0; VNET_HDR_LEN]);
        out.extend_from_slice(frame);
        // SAFETY: out is valid for its length.
        let n = unsafe { libc::send(self.fd, out.as_ptr().cast(), out.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: the fd is ours.
        unsafe { libc::close(self.fd) };
    }
}

/// The 16-bit ones' complement sum of `data`, added to `sum` (folded to 16 bits).
fn csum_add(sum: u32, data: &[u8]) -> u32 {
    // 32-bit words into a 64-bit accumulator: ones' complement addition is associative, so the carries are
    // folded once at the end.
    let mut acc = u64::from(sum);
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_be_bytes(tail));
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u32
}

fn csum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Turns a received buffer (virtio-net header + frame) into the plain frames a NIC would have put on the
/// wire: checksums completed, UDP GSO super-packets cut into datagrams. `Err` for what it cannot do.
fn normalize(buf: &[u8]) -> Result<Vec<Vec<u8>>, &'static str> {
    if buf.len() < VNET_HDR_LEN {
        return Err("short read");
    }
    let (h, frame) = buf.split_at(VNET_HDR_LEN);
    let flags = h[0];
    let gso_type = h[1] & !0x80;
    let gso_size = usize::from(u16::from_ne_bytes([h[4], h[5]]));
    let csum_start = usize::from(u16::from_ne_bytes([h[6], h[7]]));
    let csum_offset = usize::from(u16::from_ne_bytes([h[8], h[9]]));
    match gso_type {
        VIRTIO_NET_HDR_GSO_NONE => {
            let mut f = frame.to_vec();
            if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
                let at = csum_start + csum_offset;
                if at + 2 > f.len() || csum_start > f.len() {
                    return Err("checksum offsets outside the frame");
                }
                // The field holds the pseudo-header sum; the rest is summed from csum_start on.
                let mut c = csum_fold(csum_add(0, &f[csum_start..]));
                if c == 0 && csum_offset == 6 {
                    c = 0xffff; // UDP: zero means "no checksum"
                }
                f[at..at + 2].copy_from_slice(&c.to_be_bytes());
            }
            Ok(vec![f])
        }
        VIRTIO_NET_HDR_GSO_UDP_L4 => segment_udp4(frame, gso_size),
        _ => Err("unsupported GSO type"),
    }
}

/// Cuts an IPv4 UDP GSO super-packet into datagrams of `gso_size` payload bytes, each with its own IP length,
/// ID and header checksum and a full UDP checksum.
fn segment_udp4(frame: &[u8], gso_size: usize) -> Result<Vec<Vec<u8>>, &'static str> {
    if frame.len() < ETH_HLEN + 20 + 8 || u16::from_be_bytes([frame[12], frame[13]]) != ETH_P_IP {
        return Err("UDP GSO frame is not IPv4");
    }
    let ihl = usize::from(frame[ETH_HLEN] & 0x0f) * 4;
    let l4 = ETH_HLEN + ihl;
    if ihl < 20 || frame.len() < l4 + 8 || frame[ETH_HLEN + 9] != 17 || gso_size == 0 {
        return Err("UDP GSO frame malformed");
    }
    let payload = &frame[l4 + 8..];
    let id0 = u16::from_be_bytes([frame[ETH_HLEN + 4], frame[ETH_HLEN + 5]]);
    let mut out = Vec::new();
    for (i, chunk) in payload.chunks(gso_size).enumerate() {
        let mut f = Vec::with_capacity(l4 + 8 + chunk.len());
        f.extend_from_slice(&frame[..l4 + 8]);
        f.extend_from_slice(chunk);
        let ip = ETH_HLEN;
        let tot = (ihl + 8 + chunk.len()) as u16;
        f[ip + 2..ip + 4].copy_from_slice(&tot.to_be_bytes());
        f[ip + 4..ip + 6].copy_from_slice(&id0.wrapping_add(i as u16).to_be_bytes());
        f[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
        let c = csum_fold(csum_add(0, &f[ip..ip + ihl]));
        f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        let ulen = (8 + chunk.len()) as u16;
        f[l4 + 4..l4 + 6].copy_from_slice(&ulen.to_be_bytes());
        f[l4 + 6..l4 + 8].copy_from_slice(&[0, 0]);
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&f[ip + 12..ip + 20]);
        pseudo[9] = 17;
        pseudo[10..].copy_from_slice(&ulen.to_be_bytes());
        let mut c = csum_fold(csum_add(csum_add(0, &pseudo), &f[l4..]));
        if c == 0 {
            c = 0xffff;
        }
        f[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
        out.push(f);
    }
    Ok(out)
}

/// A frame waiting for its time to leave.
struct Pending {
    at: Instant,
    order: u64,
    dir: usize,
    /// Its arrival number in its direction (a duplicate shares its original's).
    seq: u64,
    frame: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.order) == (o.at, o.order)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Pending {
    /// Reversed: the max-heap pops the earliest.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.order).cmp(&(self.at, self.order))
    }
}

#[derive(Default, Clone, Copy)]
struct Counters {
    input: u64,
    sent: u64,
    lost: u64,
    duplicated: u64,
    delayed_extra: u64,
    overtaken: u64,
    max_displacement: u64,
    passthrough: u64,
    bad: u64,
    /// Frames the kernel dropped before the relay read them (full receive buffer).
    socket_drops: u64,
    /// Highest arrival number sent so far.
    highest_sent: Option<u64>,
}

fn write_stats(path: &Option<PathBuf>, c: &[Counters; 2], done: bool) {
    let Some(path) = path else { return };
    let mut s = String::new();
    for (d, name) in [(0, "a2b"), (1, "b2a")] {
        let x = &c[d];
        for (k, v) in [
            ("in", x.input),
            ("sent", x.sent),
            ("lost", x.lost),
            ("duplicated", x.duplicated),
            ("delayed_extra", x.delayed_extra),
            ("overtaken", x.overtaken),
            ("max_displacement", x.max_displacement),
            ("passthrough", x.passthrough),
            ("bad", x.bad),
            ("socket_drops", x.socket_drops),
        ] {
            s.push_str(&format!("{name}_{k} {v}\n"));
        }
    }
    s.push_str(&format!("done {}\n", u8::from(done)));
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, s).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

fn run(args: &Args) -> io::Result<()> {
    let socks = [PacketSocket::open(&args.a)?, PacketSocket::open(&args.b)?];
    if let Some(r) = &args.ready {
        std::fs::write(r, b"")?;
    }
    let mut rng = Rng(args.seed);
    let mut heap: BinaryHeap<Pending> = BinaryHeap::new();
    let mut order = 0u64;
    let mut arrivals = [0u64; 2];
    let mut c = [Counters::default(); 2];
    let mut buf = vec![0u8; VNET_HDR_LEN + 65536 + 4096];
    let start = Instant::now();
    let mut last_stats = start;
    while start.elapsed() < args.duration {
        let now = Instant::now();
        // Send what is due.
        while heap.peek().is_some_and(|p| p.at <= now) {
            let Some(p) = heap.pop() else { break };
            let x = &mut c[p.dir];
            match socks[1 - p.dir].send(&p.frame) {
                Ok(()) => x.sent += 1,
                Err(_) => x.bad += 1,
            }
            if let Some(h) = x.highest_sent {
                if p.seq < h {
                    x.overtaken += 1;
                    x.max_displacement = x.max_displacement.max(h - p.seq);
                }
            }
            x.highest_sent = Some(x.highest_sent.map_or(p.seq, |h| h.max(p.seq)));
        }
        if now.duration_since(last_stats) >= Duration::from_millis(250) {
            for d in 0..2 {
                c[d].socket_drops += socks[d].drops();
            }
            write_stats(&args.stats, &c, false);
            last_stats = now;
        }
        let wait_ms = heap
            .peek()
            .map(|p| p.at.saturating_duration_since(now).as_millis() as i32)
            .unwrap_or(100)
            .clamp(0, 100);
        let mut fds = [
            libc::pollfd {
                fd: socks[0].fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: socks[1].fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of two pollfd.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait_ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for dir in 0..2 {
            if fds[dir].revents == 0 {
                continue;
            }
            // A bounded batch per wake-up, so one busy direction cannot starve the timers.
            for _ in 0..256 {
                let Some(n) = socks[dir].recv(&mut buf)? else {
                    break;
                };
                let frames = match normalize(&buf[..n]) {
                    Ok(f) => f,
                    Err(_) => {
                        c[dir].bad += 1;
                        continue;
                    }
                };
                let now = Instant::now();
                for frame in frames {
                    let seq = arrivals[dir];
                    arrivals[dir] += 1;
                    c[dir].input += 1;
                    let ipv4 = frame.len() >= ETH_HLEN
                        && u16::from_be_bytes([frame[12], frame[13]]) == ETH_P_IP;
                    if !ipv4 {
                        c[dir].passthrough += 1;
                        order += 1;
                        heap.push(Pending {
                            at: now,
                            order,
                            dir,
                            seq,
                            frame,
                        });
                        continue;
                    }
                    if rng.chance(args.loss) {
                        c[dir].lost += 1;
                        continue;
                    }
                    let copies = if rng.chance(args.duplicate) {
                        c[dir].duplicated += 1;
                        2
                    } else {
                        1
                    };
                    for _ in 0..copies {
                        let mut ms = args.delay_ms + rng.upto(args.jitter_ms);
                        if rng.chance(args.reorder) {
                            c[dir].delayed_extra += 1;
                            ms += args.reorder_ms;
                        }
                        order += 1;
                        heap.push(Pending {
                            at: now + Duration::from_millis(ms),
                            order,
                            dir,
                            seq,
                            frame: frame.clone(),
                        });
                    }
                }
            }
        }
    }
    for d in 0..2 {
        c[d].socket_drops += socks[d].drops();
    }
    write_stats(&args.stats, &c, true);
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("lossy-relay: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lossy-relay: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; ETH_HLEN];
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        let tot = (20 + 8 + payload.len()) as u16;
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&tot.to_be_bytes());
        ip[4..6].copy_from_slice(&7u16.to_be_bytes());
        ip[8] = 64;
        ip[9] = 17;
        ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
        ip[16..20].copy_from_slice(&[198, 18, 0, 2]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&4500u16.to_be_bytes());
        f.extend_from_slice(&4500u16.to_be_bytes());
        f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn valid_udp4(f: &[u8]) -> bool {
        let ip = &f[ETH_HLEN..ETH_HLEN + 20];
        if csum_fold(csum_add(0, ip)) != 0 {
            return false;
        }
        let udp = &f[ETH_HLEN + 20..];
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&ip[12..20]);
        pseudo[9] = 17;
        pseudo[10..].copy_from_slice(&(udp.len() as u16).to_be_bytes());
        csum_fold(csum_add(csum_add(0, &pseudo), udp)) == 0
    }

    #[test]
    fn gso_super_packet_is_cut_into_valid_datagrams() {
        let payload: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        let mut buf = vec![0u8; VNET_HDR_LEN];
        buf[1] = VIRTIO_NET_HDR_GSO_UDP_L4;
        buf[4..6].copy_from_slice(&1400u16.to_ne_bytes());
        buf.extend_from_slice(&udp4_frame(&payload));
        let segs = normalize(&buf).unwrap();
        assert_eq!(segs.len(), 3);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert!(valid_udp4(s), "segment {i} checksums");
            assert_eq!(u16::from_be_bytes([s[18], s[19]]), 7 + i as u16);
            joined.extend_from_slice(&s[ETH_HLEN + 28..]);
        }
        assert_eq!(joined, payload);
    }

    #[test]
    fn partial_checksum_is_completed() {
        let payload = b"hello, odd length";
        let mut f = udp4_frame(payload);
        // CHECKSUM_PARTIAL: the field holds the (not inverted) pseudo-header sum.
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&f[ETH_HLEN + 12..ETH_HLEN + 20]);
        pseudo[9] = 17;
        pseudo[10..].copy_from_slice(&(8 + payload.len() as u16).to_be_bytes());
        let ip = ETH_HLEN;
        let c = csum_fold(csum_add(0, &f[ip..ip + 20]));
        f[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        let partial = !csum_fold(csum_add(0, &pseudo));
        f[ip + 26..ip + 28].copy_from_slice(&partial.to_be_bytes());
        let mut buf = vec![0u8; VNET_HDR_LEN];
        buf[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        buf[6..8].copy_from_slice(&((ETH_HLEN + 20) as u16).to_ne_bytes());
        buf[8..10].copy_from_slice(&6u16.to_ne_bytes());
        buf.extend_from_slice(&f);
        let out = normalize(&buf).unwrap();
        assert!(valid_udp4(&out[0]));
    }

    #[test]
    fn rng_is_seeded() {
        let (mut a, mut b) = (Rng(5), Rng(5));
        assert_eq!(
            (0..8).map(|_| a.next()).collect::<Vec<_>>(),
            (0..8).map(|_| b.next()).collect::<Vec<_>>()
        );
        let mut r = Rng(9);
        let hits = (0..100_000).filter(|_| r.chance(0.2)).count();
        assert!((19_000..21_000).contains(&hits), "{hits}");
    }
}
