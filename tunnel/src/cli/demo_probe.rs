//! The demo's probes, so that `vmsecd demo` needs nothing beyond bash, coreutils, grep, sed and iproute2: an
//! ICMP echo of its own (`vmsecd demo-ping`, raw ICMP and ICMPv6 sockets, as root in a VM's namespace) instead
//! of iputils' `ping`, and a summary of what an interface carried (`vmsecd demo-capture`, an `AF_PACKET`
//! socket) instead of tcpdump. Both are hidden subcommands for the demo script; neither is part of the daemon.

use std::collections::BTreeMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use vmsecd::prefix::Prefix;

/// Echo requests carry this many bytes after the 8-byte ICMP header (as `ping -s 16`).
const PAYLOAD: usize = 16;

/// What [`ping`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PingResult {
    pub(crate) sent: u32,
    pub(crate) received: u32,
    /// Average round trip of the answered requests, in milliseconds.
    pub(crate) avg_ms: f64,
}

/// The Internet checksum (RFC 1071) of `data`.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let word = match c {
            [a, b] => u16::from_be_bytes([*a, *b]),
            [a] => u16::from_be_bytes([*a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request: ICMP type 8 (ICMPv6 128), identifier `id`, sequence `seq`. The ICMPv6 checksum is left
/// to the kernel, which computes it for every raw ICMPv6 socket (RFC 3542 3.1).
fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut m = vec![if v6 { 128 } else { 8 }, 0, 0, 0];
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend((0..PAYLOAD).map(|i| i as u8));
    if !v6 {
        let c = checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
    }
    m
}

/// The sequence number of an echo reply to `id` in what a raw socket received: an IPv4 socket hands over
/// the IPv4 header first, an ICMPv6 socket the ICMPv6 message alone.
fn reply_seq(v6: bool, data: &[u8], id: u16) -> Option<u16> {
    let icmp = if v6 {
        data
    } else {
        let ihl = usize::from(data.first()? & 0x0f) * 4;
        data.get(ihl..)?
    };
    let [ty, _, _, _, i0, i1, s0, s1, ..] = *icmp else {
        return None;
    };
    let reply = if v6 { 129 } else { 0 };
    (ty == reply && u16::from_be_bytes([i0, i1]) == id).then_some(u16::from_be_bytes([s0, s1]))
}

/// Sends `count` echo requests to `dst`, one every `interval`, and waits up to `timeout` after the last for
/// answers. Needs CAP_NET_RAW (the demo runs as root).
pub(crate) fn ping(
    dst: IpAddr,
    count: u32,
    interval: Duration,
    timeout: Duration,
) -> anyhow::Result<PingResult> {
    let v6 = dst.is_ipv6();
    let (domain, proto) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6)
    } else {
        (Domain::IPV4, Protocol::ICMPV4)
    };
    let s = Socket::new(domain, Type::RAW, Some(proto))
        .context("cannot open a raw ICMP socket (the demo runs as root)")?;
    let to = SockAddr::from(SocketAddr::new(dst, 0));
    let id = (std::process::id() & 0xffff) as u16;
    let mut sent_at: Vec<Option<Instant>> = vec![None; count as usize];
    let mut rtts: Vec<Duration> = Vec::new();
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    for seq in 0..count {
        let now = Instant::now();
        if let Some(slot) = sent_at.get_mut(seq as usize) {
            *slot = Some(now);
        }
        // A send error (no route yet) is a lost request, as for ping.
        let _ = s.send_to(&echo_request(v6, id, seq as u16), &to);
        let until = if seq + 1 == count {
            now + timeout
        } else {
            now + interval
        };
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || rtts.len() == count as usize {
                break;
            }
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let (n, from) = match s.recv_from(&mut buf) {
                Ok(r) => r,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    break
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e).context("receiving ICMP"),
            };
            // SAFETY: recv_from initialised the first n bytes.
            let data: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            if from.as_socket().map(|a| a.ip()) != Some(dst) {
                continue;
            }
            if let Some(q) = reply_seq(v6, &data, id) {
                if let Some(t) = sent_at.get_mut(usize::from(q)).and_then(Option::take) {
                    rtts.push(t.elapsed());
                }
            }
        }
    }
    let received = rtts.len() as u32;
    let avg_ms = if rtts.is_empty() {
        0.0
    } else {
        rtts.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / rtts.len() as f64
    };
    Ok(PingResult {
        sent: count,
        received,
        avg_ms,
    })
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// One frame's IP source, destination and what it carries (`ESP`, `UDP 4500`, `ICMPv6`, ...); `None` for
/// frames that are not IP.
fn classify(frame: &[u8]) -> Option<(IpAddr, IpAddr, String)> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let ip = frame.get(14..)?;
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = match ethertype {
        0x0800 => {
            let h: [u8; 20] = ip.get(..20)?.try_into().ok()?;
            let ihl = usize::from(h[0] & 0x0f) * 4;
            (
                Ipv4Addr::new(h[12], h[13], h[14], h[15]).into(),
                Ipv4Addr::new(h[16], h[17], h[18], h[19]).into(),
                h[9],
                ip.get(ihl..).unwrap_or(&[]),
            )
        }
        0x86dd => {
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (
                Ipv6Addr::from(s).into(),
                Ipv6Addr::from(d).into(),
                *ip.get(6)?,
                ip.get(40..).unwrap_or(&[]),
            )
        }
        _ => return None,
    };
    let what = match proto {
        50 => "ESP".to_owned(),
        // RFC 3948 2.2: on port 4500 a zero non-ESP marker starts IKE, anything else is ESP (a single 0xff
        // byte is a NAT keepalive).
        17 => match l4.get(..12) {
            Some([_, _, 0x11, 0x94, _, _, _, _, 0, 0, 0, 0]) => "IKE (UDP 4500)".to_owned(),
            Some([_, _, 0x11, 0x94, ..]) if l4.len() > 9 => "ESP in UDP 4500".to_owned(),
            Some([_, _, 0x01, 0xf4, ..]) => "IKE (UDP 500)".to_owned(),
            _ => match l4.get(2..4) {
                Some(&[a, b]) => format!("UDP {}", u16::from_be_bytes([a, b])),
                _ => "UDP".to_owned(),
            },
        },
        6 => "TCP".to_owned(),
        1 => "ICMP".to_owned(),
        58 => "ICMPv6".to_owned(),
        p => format!("IP protocol {p}"),
    };
    Some((src, dst, what))
}

/// What [`capture`] saw.
#[derive(Debug, Default)]
pub(crate) struct Summary {
    /// Frames by (source, destination, what they carry).
    pub(crate) flows: BTreeMap<(IpAddr, IpAddr, String), u64>,
    /// Frames with an address of one of the `inner` prefixes in their IP header.
    pub(crate) inner: u64,
}

impl Summary {
    fn add(&mut self, frame: &[u8], inner: &[Prefix]) {
        if let Some((s, d, what)) = classify(frame) {
            if inner.iter().any(|p| p.contains(s) || p.contains(d)) {
                self.inner += 1;
            }
            *self.flows.entry((s, d, what)).or_default() += 1;
        }
    }

    /// The summary as the demo prints it, most frequent first, at most `max` lines, then the inner count.
    pub(crate) fn render(&self, max: usize) -> String {
        let mut v: Vec<_> = self.flows.iter().collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        let mut out = String::new();
        for ((s, d, what), n) in v.into_iter().take(max) {
            out += &format!("  {n:>6}  {s} > {d}  {what}\n");
        }
        out += &format!(
            "packets with a VM address in clear on the underlay: {}\n",
            self.inner
        );
        out
    }
}

/// Reads every frame on interface `iface` (promiscuous, so a bridge passes up what it forwards between its
/// ports) until SIGTERM or SIGINT, then returns the summary.
pub(crate) fn capture(iface: &str, inner: &[Prefix]) -> anyhow::Result<Summary> {
    let name = std::ffi::CString::new(iface).context("interface name")?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        anyhow::bail!("no interface {iface}: {}", io::Error::last_os_error());
    }
    let proto = (libc::ETH_P_ALL as u16).to_be();
    let s = Socket::new(
        Domain::PACKET,
        Type::RAW,
        Some(Protocol::from(i32::from(proto))),
    )
    .context("cannot open an AF_PACKET socket (the demo runs as root)")?;
    // SAFETY: sockaddr_ll is plain data; zeroes are valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: a valid socket and a sockaddr_ll of its exact size.
    let r = unsafe {
        libc::bind(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("binding the capture to {iface}"));
    }
    // SAFETY: packet_mreq is plain data; zeroes are valid.
    let mut mr: libc::packet_mreq = unsafe { std::mem::zeroed() };
    mr.mr_ifindex = ifindex as i32;
    mr.mr_type = libc::PACKET_MR_PROMISC as u16;
    // SAFETY: a valid socket and a packet_mreq of its exact size.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&mr as *const libc::packet_mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as libc::socklen_t,
        );
    }
    // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
    }
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut sum = Summary::default();
    let mut buf = [MaybeUninit::<u8>::uninit(); 256];
    println!("capturing on {iface}");
    while !STOP.load(Ordering::Relaxed) {
        match s.recv(&mut buf) {
            Ok(n) => {
                let n = n.min(buf.len());
                // SAFETY: recv initialised the first n bytes (a longer frame is cut to the buffer).
                let data: Vec<u8> = buf[..n]
                    .iter()
                    .map(|b| unsafe { b.assume_init() })
                    .collect();
                sum.add(&data, inner);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e).context("capturing"),
        }
    }
    Ok(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_and_replies() {
        let m = echo_request(false, 0x1234, 7);
        assert_eq!(m.len(), 8 + PAYLOAD);
        assert_eq!(checksum(&m), 0, "a message with its checksum sums to zero");
        // The reply as an IPv4 raw socket delivers it: a 20-byte header, then type 0.
        let mut reply = vec![0x45; 1];
        reply.extend_from_slice(&[0; 19]);
        reply.extend_from_slice(&m);
        reply[20] = 0;
        assert_eq!(reply_seq(false, &reply, 0x1234), Some(7));
        assert_eq!(reply_seq(false, &reply, 0x1235), None);
        // ICMPv6: no IP header; 128 out, 129 back.
        let mut m6 = echo_request(true, 9, 3);
        assert_eq!(m6[0], 128);
        m6[0] = 129;
        assert_eq!(reply_seq(true, &m6, 9), Some(3));
        assert_eq!(reply_seq(true, &m6[..5], 9), None);
    }

    #[test]
    fn capture_summary_counts_inner_addresses() {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 28, 0, 0, 0, 0, 64, 50, 0, 0];
        ip.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
        f.extend_from_slice(&ip);
        f.extend_from_slice(&[0; 8]);
        let inner: Vec<Prefix> = vec!["198.19.0.0/16".parse().unwrap()];
        let mut s = Summary::default();
        s.add(&f, &inner);
        // The same frame with a VM address as its source.
        f[26..30].copy_from_slice(&[198, 19, 1, 10]);
        f[14 + 9] = 1;
        s.add(&f, &inner);
        let text = s.render(10);
        assert!(text.contains("198.18.0.1 > 198.18.0.2  ESP"), "{text}");
        assert!(text.contains("198.19.1.10 > 198.18.0.2  ICMP"), "{text}");
        assert!(text.ends_with("underlay: 1\n"), "{text}");
        // ESP in UDP and IKE on port 4500 (RFC 3948's non-ESP marker), IKE on 500.
        let mut s = Summary::default();
        let udp = |dport: u16, body: &[u8]| {
            let mut f = vec![0u8; 12];
            f.extend_from_slice(&[0x08, 0x00]);
            let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
            ip.extend_from_slice(&[198, 18, 0, 1, 198, 18, 0, 2]);
            f.extend_from_slice(&ip);
            f.extend_from_slice(&[0x11, 0x94]);
            f.extend_from_slice(&dport.to_be_bytes());
            f.extend_from_slice(&[0, 20, 0, 0]);
            f.extend_from_slice(body);
            f
        };
        s.add(&udp(4500, &[1, 2, 3, 4, 0, 0, 0, 1, 9, 9]), &inner);
        s.add(&udp(4500, &[0, 0, 0, 0, 7, 7, 7, 7, 9, 9]), &inner);
        s.add(&udp(500, &[7; 10]), &inner);
        let text = s.render(10);
        for what in ["ESP in UDP 4500", "IKE (UDP 4500)", "IKE (UDP 500)"] {
            assert!(text.contains(what), "{what}: {text}");
        }
    }
}
