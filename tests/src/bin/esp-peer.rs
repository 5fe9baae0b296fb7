//! esp-peer: one end of an ESP tunnel built on the `esp` crate, with fixed keys, over a real socket.
//!
//! It opens one socket (UDP 4500 for RFC 3948 encapsulation, or a raw IPv4 socket for IP protocol 50), starts
//! receiving at once, then (after an optional start signal) encapsulates and sends the inner packets of a file,
//! and finally writes what it decapsulated. Both directions share the one socket, as a real daemon's would.
//!
//! ```text
//! esp-peer --mode udp|raw --transform aes128gcm16 --esn 0|1 --local 198.18.0.1 --remote 198.18.0.2
//!          --out-spi c0010001 --out-key HEX --in-spi c0010002 --in-key HEX
//!          [--send FILE]                 inner IP packets to send, one hex line each
//!          [--recv N --recv-out FILE]    receive N ESP packets, write each inner packet as a hex line
//!          [--recv-seqs FILE]            and each one's full (ESN) sequence number, one decimal line each
//!          [--ready-file F]              created once the socket is bound and receiving
//!          [--go-file F]                 wait for F to exist before sending
//!          [--timeout-secs S]            give up receiving (and waiting for --go-file) after S seconds (20)
//! ```
//!
//! It exits 0 only if every packet was sent and exactly N packets were received and decapsulated; any
//! decapsulation failure is reported on stderr with the packet in hex, and makes it exit 1. Usage errors exit 2.

use std::fs;
use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::str::FromStr;
use std::thread;
use std::time::{Duration, Instant};

use esp::framing::{classify_udp, parse_ipv4, UdpPayload, IPPROTO_ESP, NAT_T_PORT};
use esp::{
    InboundSa, KeyMaterial, OutboundSa, PacketBuf, SaParams, Sad, Transform, HEADROOM, TAILROOM,
};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Udp,
    Raw,
}

#[derive(Debug)]
struct Args {
    mode: Mode,
    transform: Transform,
    esn: bool,
    local: Ipv4Addr,
    remote: Ipv4Addr,
    out_spi: u32,
    out_key: Vec<u8>,
    in_spi: u32,
    in_key: Vec<u8>,
    send: Option<String>,
    recv: usize,
    recv_out: Option<String>,
    recv_seqs: Option<String>,
    ready_file: Option<String>,
    go_file: Option<String>,
    timeout: Duration,
}

fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd-length hex string ({} digits)", s.len()));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("bad hex at {i}: {s:.40}"))
        })
        .collect()
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn parse_args() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut get = std::collections::HashMap::new();
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let Some(name) = k.strip_prefix("--") else {
            return Err(format!("unexpected argument {k:?}"));
        };
        let v = it.next().ok_or(format!("--{name} needs a value"))?;
        if get.insert(name.to_owned(), v.clone()).is_some() {
            return Err(format!("--{name} given twice"));
        }
    }
    let mut take = |k: &str| get.remove(k);
    let need = |v: Option<String>, k: &str| v.ok_or(format!("--{k} is required"));
    let spi = |s: String| {
        u32::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("SPI {s}: {e}"))
    };
    let ip = |s: String| Ipv4Addr::from_str(&s).map_err(|e| format!("address {s}: {e}"));
    let args = Args {
        mode: match need(take("mode"), "mode")?.as_str() {
            "udp" => Mode::Udp,
            "raw" => Mode::Raw,
            m => return Err(format!("--mode {m}: expected udp or raw")),
        },
        transform: need(take("transform"), "transform")?
            .parse()
            .map_err(|e| format!("{e}"))?,
        esn: match need(take("esn"), "esn")?.as_str() {
            "0" | "false" => false,
            "1" | "true" => true,
            e => return Err(format!("--esn {e}: expected 0 or 1")),
        },
        local: ip(need(take("local"), "local")?)?,
        remote: ip(need(take("remote"), "remote")?)?,
        out_spi: spi(need(take("out-spi"), "out-spi")?)?,
        out_key: hex_decode(&need(take("out-key"), "out-key")?)?,
        in_spi: spi(need(take("in-spi"), "in-spi")?)?,
        in_key: hex_decode(&need(take("in-key"), "in-key")?)?,
        send: take("send"),
        recv: take("recv")
            .map(|n| n.parse().map_err(|e| format!("--recv {n}: {e}")))
            .transpose()?
            .unwrap_or(0),
        recv_out: take("recv-out"),
        recv_seqs: take("recv-seqs"),
        ready_file: take("ready-file"),
        go_file: take("go-file"),
        timeout: Duration::from_secs_f64(
            take("timeout-secs")
                .map(|n| n.parse().map_err(|e| format!("--timeout-secs {n}: {e}")))
                .transpose()?
                .unwrap_or(20.0),
        ),
    };
    if let Some(k) = get.keys().next() {
        return Err(format!("unknown option --{k}"));
    }
    if args.recv > 0 && args.recv_out.is_none() {
        return Err("--recv needs --recv-out".into());
    }
    Ok(args)
}

/// The one socket both directions use.
enum Sock {
    Udp(UdpSocket),
    Raw(Socket),
}

impl Sock {
    fn open(mode: Mode, local: Ipv4Addr) -> io::Result<Sock> {
        Ok(match mode {
            Mode::Udp => Sock::Udp(UdpSocket::bind(SocketAddrV4::new(local, NAT_T_PORT))?),
            Mode::Raw => {
                let s = Socket::new(
                    Domain::IPV4,
                    Type::RAW,
                    Some(Protocol::from(IPPROTO_ESP as i32)),
                )?;
                s.bind(&SockAddr::from(SocketAddrV4::new(local, 0)))?;
                Sock::Raw(s)
            }
        })
    }

    fn try_clone(&self) -> io::Result<Sock> {
        Ok(match self {
            Sock::Udp(s) => Sock::Udp(s.try_clone()?),
            Sock::Raw(s) => Sock::Raw(s.try_clone()?),
        })
    }

    fn set_read_timeout(&self, t: Duration) -> io::Result<()> {
        match self {
            Sock::Udp(s) => s.set_read_timeout(Some(t)),
            Sock::Raw(s) => s.set_read_timeout(Some(t)),
        }
    }

    /// Sends one ESP packet (SPI first): as the UDP payload, or as the payload of an IPv4 packet the kernel builds.
    fn send(&self, esp: &[u8], remote: Ipv4Addr) -> io::Result<usize> {
        match self {
            Sock::Udp(s) => s.send_to(esp, SocketAddrV4::new(remote, NAT_T_PORT)),
            Sock::Raw(s) => s.send_to(esp, &SockAddr::from(SocketAddrV4::new(remote, 0))),
        }
    }

    /// Receives one datagram: the UDP payload, or (raw) the whole IPv4 packet, header included. Returns its
    /// length and source address.
    fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, Ipv4Addr)> {
        match self {
            Sock::Udp(s) => {
                let (n, from) = s.recv_from(buf)?;
                let ip = match from {
                    SocketAddr::V4(a) => *a.ip(),
                    SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
                };
                Ok((n, ip))
            }
            Sock::Raw(s) => {
                let mut s: &Socket = s;
                let n = s.read(buf)?;
                let src = parse_ipv4(&buf[..n]).map_or(Ipv4Addr::UNSPECIFIED, |h| h.src);
                Ok((n, src))
            }
        }
    }
}

/// What the receiving thread found.
#[derive(Default)]
struct Received {
    /// (full sequence number, inner packet) of each packet decapsulated, in arrival order.
    ok: Vec<(u64, Vec<u8>)>,
    /// One message per packet that failed to decapsulate.
    failures: Vec<String>,
    /// Datagrams that were not ESP from the peer (ignored, reported).
    ignored: usize,
}

fn receive(
    sock: Sock,
    mode: Mode,
    remote: Ipv4Addr,
    mut sad: Sad,
    n: usize,
    deadline: Instant,
) -> Received {
    let mut r = Received::default();
    let mut buf = vec![0u8; 65536];
    if let Err(e) = sock.set_read_timeout(Duration::from_millis(100)) {
        r.failures.push(format!("set_read_timeout: {e}"));
        return r;
    }
    while r.ok.len() + r.failures.len() < n && Instant::now() < deadline {
        let (len, src) = match sock.recv(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                r.failures.push(format!("recv: {e}"));
                return r;
            }
        };
        if src != remote {
            eprintln!("esp-peer: ignoring {len} bytes from {src}");
            r.ignored += 1;
            continue;
        }
        let (start, end) = match mode {
            Mode::Udp => match classify_udp(&buf[..len]) {
                UdpPayload::Esp => (0, len),
                other => {
                    eprintln!(
                        "esp-peer: ignoring UDP payload classified {other:?}: {}",
                        hex_encode(&buf[..len])
                    );
                    r.ignored += 1;
                    continue;
                }
            },
            Mode::Raw => match parse_ipv4(&buf[..len]) {
                Some(h) if h.protocol == IPPROTO_ESP => (h.payload_offset, h.payload_end),
                other => {
                    eprintln!(
                        "esp-peer: ignoring raw packet {other:?}: {}",
                        hex_encode(&buf[..len])
                    );
                    r.ignored += 1;
                    continue;
                }
            },
        };
        let wire = buf[start..end].to_vec();
        let mut pkt = PacketBuf::new(&mut buf, start, end);
        match sad.decap(&mut pkt) {
            Ok((_spi, inner)) => r.ok.push((inner.seq, pkt.as_slice().to_vec())),
            Err(e) => r.failures.push(format!(
                "decap of packet #{} failed: {e}; ESP packet ({} bytes): {}",
                r.ok.len() + r.failures.len() + 1,
                wire.len(),
                hex_encode(&wire)
            )),
        }
    }
    r
}

fn wait_for_file(path: &str, deadline: Instant) -> Result<(), String> {
    while !std::path::Path::new(path).exists() {
        if Instant::now() >= deadline {
            return Err(format!("timed out waiting for {path}"));
        }
        thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

fn run(a: Args) -> Result<(), String> {
    let start = Instant::now();
    let deadline = start + a.timeout;
    let t = a.transform;
    let out_keys = KeyMaterial::new(t, &a.out_key).map_err(|e| format!("--out-key: {e}"))?;
    let in_keys = KeyMaterial::new(t, &a.in_key).map_err(|e| format!("--in-key: {e}"))?;
    let out = OutboundSa::new(SaParams::new(a.out_spi, t, a.esn), &out_keys)
        .map_err(|e| e.to_string())?;
    let mut sad = Sad::new();
    sad.insert(
        InboundSa::new(SaParams::new(a.in_spi, t, a.esn), &in_keys).map_err(|e| e.to_string())?,
    );

    let inners: Vec<Vec<u8>> = match &a.send {
        Some(f) => fs::read_to_string(f)
            .map_err(|e| format!("{f}: {e}"))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(hex_decode)
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };

    let sock = Sock::open(a.mode, a.local)
        .map_err(|e| format!("socket ({:?} on {}): {e}", a.mode, a.local))?;
    let rx = sock.try_clone().map_err(|e| format!("socket clone: {e}"))?;
    let (mode, remote, n) = (a.mode, a.remote, a.recv);
    let receiver = thread::spawn(move || receive(rx, mode, remote, sad, n, deadline));

    if let Some(f) = &a.ready_file {
        fs::write(f, b"ready\n").map_err(|e| format!("{f}: {e}"))?;
    }
    if let Some(f) = &a.go_file {
        wait_for_file(f, deadline)?;
    }

    let mut send_errors = Vec::new();
    for (i, inner) in inners.iter().enumerate() {
        let mut buf = vec![0u8; HEADROOM + inner.len() + TAILROOM];
        buf[HEADROOM..HEADROOM + inner.len()].copy_from_slice(inner);
        let mut pkt = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + inner.len());
        if let Err(e) = out.encap(&mut pkt) {
            send_errors.push(format!("encap of inner packet #{}: {e}", i + 1));
            continue;
        }
        match sock.send(pkt.as_slice(), a.remote) {
            Ok(n) if n == pkt.len() => {}
            Ok(n) => send_errors.push(format!(
                "packet #{}: sent {n} of {} bytes",
                i + 1,
                pkt.len()
            )),
            Err(e) => send_errors.push(format!("send of packet #{}: {e}", i + 1)),
        }
        // A little pacing, so a slow (Python) receiver never overflows its socket buffer.
        thread::sleep(Duration::from_micros(500));
    }

    let r = receiver
        .join()
        .map_err(|_| "receiver thread panicked".to_string())?;
    if let Some(f) = &a.recv_out {
        let text: String = r.ok.iter().map(|(_, p)| hex_encode(p) + "\n").collect();
        fs::write(f, text).map_err(|e| format!("{f}: {e}"))?;
    }
    if let Some(f) = &a.recv_seqs {
        let text: String = r.ok.iter().map(|(s, _)| format!("{s}\n")).collect();
        fs::write(f, text).map_err(|e| format!("{f}: {e}"))?;
    }
    eprintln!(
        "esp-peer: {} sent ({} {} esn={}), {} of {} received, {} decap failures, {} ignored, {:?}",
        inners.len() - send_errors.len(),
        t,
        if a.mode == Mode::Udp { "udp" } else { "raw" },
        a.esn,
        r.ok.len(),
        n,
        r.failures.len(),
        r.ignored,
        start.elapsed()
    );
    let mut problems: Vec<String> = send_errors;
    problems.extend(r.failures);
    if r.ok.len() < n {
        problems.push(format!(
            "received only {} of {n} packets before the timeout",
            r.ok.len()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!(
                "esp-peer: {e}\nusage: see the comment at the top of tests/src/bin/esp-peer.rs"
            );
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("esp-peer: FAILED:\n{e}");
            ExitCode::FAILURE
        }
    }
}
