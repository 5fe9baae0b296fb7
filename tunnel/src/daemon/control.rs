//! The control socket: `vmsecd status` asks, the daemon answers with one JSON document.
//!
//! The default socket is abstract (`@vmsecd`), so it belongs to the network namespace: two daemons in two
//! namespaces never see each other's. Abstract sockets have no file permissions, and any local user may bind
//! the name first: so both ends check the other's credentials (SO_PEERCRED). The daemon serves root only; every
//! client (`vmsecd status`, `reload`, `firewall-check`, the libvirt hook) refuses a server that is not root.
//! Clients are served in tasks of their own, with timeouts (see [`serve`]): none can stall the event loop.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::config::ControlSocket;

/// The status document (`vmsecd status --json`). Field names are stable; new fields may be added.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    /// This host's name in the mesh.
    pub host: String,
    /// One entry per peer in the mesh file.
    pub peers: Vec<PeerStatus>,
    /// Datapath drops that belong to no SA.
    pub drops: GlobalDrops,
    /// How raw ESP left: through the AF_PACKET transmit ring or the raw socket (README "Raw ESP and the
    /// transmit ring").
    #[serde(default)]
    pub raw_esp_out: RawEspOut,
    /// How raw ESP arrives: the raw socket, or AF_XDP (README "Raw ESP received through AF_XDP").
    #[serde(default)]
    pub raw_esp_in: RawEspIn,
    /// Hosts of the mesh this one has no tunnel to, each with why (no underlay address family in common).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

/// Raw ESP packets sent, by path, since the daemon started.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct RawEspOut {
    /// Through the transmit ring.
    pub ring: u64,
    /// Through the raw socket (next hop unresolved, over the MTU, ring full, one batch per peer and second,
    /// or `raw_tx = "socket"`).
    pub socket: u64,
}

/// The raw ESP receive path and what arrived through AF_XDP since the daemon started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RawEspIn {
    /// `socket` (`raw_rx = "socket"`), `xdp (generic) on eth0, 1 queue`, or `socket (xdp unavailable: why)`.
    pub path: String,
    /// Packets received through the AF_XDP sockets (the raw socket receives the rest).
    pub xdp: u64,
    /// Frames the kernel dropped for the AF_XDP sockets (no free frame: the daemon fell behind).
    pub xdp_dropped: u64,
}

/// One peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its name.
    pub name: String,
    /// Its underlay address.
    pub address: String,
    /// `established`, `connecting` or `down`.
    pub state: String,
    /// The IKE SA, if one exists.
    pub ike: Option<IkeStatus>,
    /// Its Child SAs.
    pub children: Vec<ChildStatus>,
    /// Its subnets (CIDR): from the mesh file, or for a `subnets = "libvirt"` host those learned from its
    /// Child SAs (empty while none is up).
    #[serde(default)]
    pub subnets: Vec<String>,
    /// True for a `subnets = "libvirt"` host: `subnets` was learned from its traffic selectors.
    #[serde(default)]
    pub learned: bool,
}

/// An IKE SA.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IkeStatus {
    /// Initiator SPI, 16 hex digits.
    pub spi_i: String,
    /// Responder SPI, 16 hex digits.
    pub spi_r: String,
    /// True if this host initiated it.
    pub initiator: bool,
    /// Negotiated algorithms, strongSwan style (`AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519`).
    pub algorithms: String,
    /// Seconds since it was established.
    pub established_seconds: Option<u64>,
    /// Seconds until it is rekeyed.
    pub rekey_in_seconds: Option<u64>,
    /// The peer's IKE address and port.
    pub remote: String,
    /// True when IKE and ESP use UDP 4500 (NAT, forced encapsulation, or both ends vmsecd).
    pub udp_encap: bool,
    /// How ESP is carried and why: `raw`, `udp-nat` (a NAT, or a peer forcing encapsulation as strongSwan's
    /// `encap = yes` does), `udp-forced` (our `encap = "udp"`) or `udp-vmsecd` (`encap = "auto"` and the peer is
    /// vmsecd: both announced vmsecd's Vendor ID).
    #[serde(default)]
    pub encap: String,
}

/// A Child SA pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildStatus {
    /// Inbound SPI, 8 hex digits.
    pub spi_in: String,
    /// Outbound SPI, 8 hex digits.
    pub spi_out: String,
    /// ESP algorithms.
    pub algorithms: String,
    /// Seconds until it is rekeyed.
    pub rekey_in_seconds: u64,
    /// Packets and bytes decapsulated.
    pub r#in: Traffic,
    /// Packets and bytes encapsulated.
    pub out: Traffic,
    /// Inbound drops by reason.
    pub drops: SaDrops,
}

/// Packet and byte counters.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Traffic {
    /// Packets.
    pub packets: u64,
    /// Inner-packet bytes.
    pub bytes: u64,
}

/// Inbound drops of one SA.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct SaDrops {
    /// Replayed or too old.
    pub replay: u64,
    /// ICV did not verify.
    pub auth: u64,
    /// Malformed.
    pub malformed: u64,
    /// Dummy (next header 59).
    pub dummy: u64,
}

/// Drops that belong to no SA.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct GlobalDrops {
    /// Inbound ESP with an unknown SPI.
    pub no_sa_in: u64,
    /// Outbound packets to a peer without a Child SA.
    pub no_sa_out: u64,
    /// Outbound packets to an address no peer owns.
    pub no_route: u64,
    /// Inbound inner packets outside their SA's traffic selectors.
    pub policy: u64,
    /// Outbound packets that could not be encapsulated.
    pub encap_failed: u64,
    /// Receive errors the daemon survived on its IKE and ESP sockets: ICMP errors (which anyone on the path can
    /// send), memory pressure (ENOBUFS, ENOMEM), interrupted calls.
    #[serde(default)]
    pub recv_errors: u64,
    /// TUN read errors the daemon and its transmit workers survived.
    #[serde(default)]
    pub tun_errors: u64,
}

fn std_addr(sock: &ControlSocket) -> std::io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match sock {
        ControlSocket::Abstract(name) => {
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        }
        ControlSocket::Path(p) => std::os::unix::net::SocketAddr::from_pathname(p),
    }
}

/// The credentials (SO_PEERCRED) of the process at the other end of a Unix stream socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cred {
    /// Its effective user id when it connected or bound.
    pub uid: u32,
    /// Its process id.
    pub pid: i32,
}

/// The credentials of the other end of a connected Unix stream socket.
pub fn peer_cred(fd: &impl std::os::fd::AsFd) -> std::io::Result<Cred> {
    use std::os::fd::AsRawFd;
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid descriptor, and a ucred buffer of the stated size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Cred {
        uid: c.uid,
        pid: c.pid,
    })
}

/// The message for a control socket held by someone other than root: any local user can bind an abstract name
/// first, and would then read what `vmsecd reload` and the libvirt hook send and answer what it likes.
pub fn squatter_message(sock: &ControlSocket, c: Cred) -> String {
    format!(
        "control socket {sock} is held by uid {} pid {}, not by vmsecd as root; that process may be impersonating \
         vmsecd: see what it is (ps -o user,pid,cmd -p {}), stop it, and restart vmsecd",
        c.uid, c.pid, c.pid
    )
}

/// Checks that the server end of a freshly connected control socket is root's.
pub fn check_server(stream: &impl std::os::fd::AsFd, sock: &ControlSocket) -> anyhow::Result<()> {
    let c = peer_cred(stream).map_err(|e| {
        anyhow::anyhow!("cannot tell who holds the control socket {sock} (SO_PEERCRED): {e}")
    })?;
    if c.uid != 0 {
        anyhow::bail!("{}", squatter_message(sock, c));
    }
    Ok(())
}

/// Who holds `sock` now, if anyone answers on it.
fn holder(sock: &ControlSocket) -> Option<Cred> {
    let s = std::os::unix::net::UnixStream::connect_addr(&std_addr(sock).ok()?).ok()?;
    peer_cred(&s).ok()
}

/// Says who holds a control socket that cannot be bound.
fn in_use(sock: &ControlSocket, e: &std::io::Error) -> anyhow::Error {
    match holder(sock) {
        Some(c) if c.uid == 0 => anyhow::anyhow!(
            "control socket {sock} is in use by pid {} (root): another vmsecd runs in this network namespace; stop \
             it first, or give this one another socket (--control)",
            c.pid
        ),
        Some(c) => anyhow::anyhow!("{}; vmsecd cannot start while it does", squatter_message(sock, c)),
        None => anyhow::anyhow!(
            "cannot bind control socket {sock}: {e} (another vmsecd in this network namespace?)"
        ),
    }
}

/// Binds the control socket (a stale socket file from a crashed daemon is replaced).
pub(crate) fn listen(sock: &ControlSocket) -> anyhow::Result<UnixListener> {
    if let ControlSocket::Path(p) = sock {
        if std::os::unix::net::UnixStream::connect(p).is_ok() {
            return Err(in_use(
                sock,
                &std::io::Error::from(std::io::ErrorKind::AddrInUse),
            ));
        }
        let _ = std::fs::remove_file(p);
    }
    let l = std::os::unix::net::UnixListener::bind_addr(&std_addr(sock)?).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            in_use(sock, &e)
        } else {
            anyhow::anyhow!("cannot bind control socket {sock}: {e}")
        }
    })?;
    l.set_nonblocking(true)?;
    if let ControlSocket::Path(p) = sock {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(UnixListener::from_std(l)?)
}

/// Removes a socket file on exit.
pub(crate) fn cleanup(sock: &ControlSocket) {
    if let ControlSocket::Path(p) = sock {
        let _ = std::fs::remove_file(p);
    }
}

/// Reading the request and writing the answer each get this long: a client that says nothing or reads nothing
/// is dropped after it.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request line (`firewall-check` is the longest request).
pub(crate) const MAX_REQUEST: usize = 64;
/// Clients served at once; more are refused at once.
pub(crate) const MAX_CLIENTS: usize = 16;
/// How long a client waits for the event loop's answer (a reload reads files).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// The answer to a client that is not root.
const NOT_ROOT: &str = "{\"error\":\"the vmsecd control socket serves root only\"}\n";

/// A request the event loop answers (`status`, `reload`): the answer, one JSON document, goes back on `reply`.
pub(crate) struct Request {
    pub(crate) what: String,
    pub(crate) reply: tokio::sync::oneshot::Sender<String>,
}

/// Serves the control socket in tasks of its own, so that no client can stall the event loop: each connection
/// is checked (root only), its one request line read within [`IO_TIMEOUT`] and [`MAX_REQUEST`] bytes, passed
/// to the loop on `to_loop` (or to the firewall thread), and the answer written within [`IO_TIMEOUT`]. At most
/// [`MAX_CLIENTS`] at once.
pub(crate) fn serve(
    listener: UnixListener,
    to_loop: tokio::sync::mpsc::Sender<Request>,
    firewall: crate::firewall::Checker,
) -> tokio::task::JoinHandle<()> {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // EMFILE and the like: wait a little instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            // Root only, decided before the client takes a slot (and without waiting on it): other users cannot
            // crowd root's clients out.
            if !matches!(stream.peer_cred(), Ok(c) if c.uid() == 0) {
                let _ = stream.try_write(NOT_ROOT.as_bytes());
                continue;
            }
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                // Full: drop it (the client sees the connection closed).
                continue;
            };
            let to_loop = to_loop.clone();
            let firewall = firewall.clone();
            tokio::spawn(async move {
                let _permit = permit;
                serve_one(stream, to_loop, firewall).await;
            });
        }
    })
}

async fn serve_one(
    mut stream: UnixStream,
    to_loop: tokio::sync::mpsc::Sender<Request>,
    firewall: crate::firewall::Checker,
) {
    let Some(req) = read_request(&mut stream).await else {
        return;
    };
    let answer = answer(req, &to_loop, &firewall).await;
    let _ = tokio::time::timeout(
        IO_TIMEOUT,
        stream.write_all(format!("{answer}\n").as_bytes()),
    )
    .await;
}

async fn answer(
    req: String,
    to_loop: &tokio::sync::mpsc::Sender<Request>,
    firewall: &crate::firewall::Checker,
) -> String {
    match req.as_str() {
        "firewall-check" => firewall.check_now().await,
        "status" | "reload" => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if to_loop.send(Request { what: req, reply: tx }).await.is_err() {
                return r#"{"error":"vmsecd is shutting down"}"#.to_owned();
            }
            match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
                Ok(Ok(a)) => a,
                _ => r#"{"error":"vmsecd did not answer in time"}"#.to_owned(),
            }
        }
        other => serde_json::json!({ "error": format!("unknown request {:?}", crate::daemon::logcap::clean(&other, MAX_REQUEST)) }).to_string(),
    }
}

/// Reads one request line, at most [`MAX_REQUEST`] bytes, within [`IO_TIMEOUT`]; `None` if the client says
/// nothing in time, too much, or not text.
pub(crate) async fn read_request(stream: &mut UnixStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; MAX_REQUEST + 1];
    let mut len = 0;
    let read = async {
        while len < buf.len() {
            let n = stream.read(&mut buf[len..]).await.ok()?;
            if n == 0 {
                break;
            }
            len += n;
            if buf[..len].contains(&b'\n') {
                break;
            }
        }
        Some(())
    };
    tokio::time::timeout(IO_TIMEOUT, read).await.ok()??;
    let line = buf[..len].split(|b| *b == b'\n').next()?;
    if line.len() > MAX_REQUEST {
        return None;
    }
    Some(std::str::from_utf8(line).ok()?.trim().to_owned())
}

/// Asks the daemon behind `sock` for its status.
pub async fn query(sock: &ControlSocket) -> anyhow::Result<Status> {
    let addr = std_addr(sock)?;
    let std = std::os::unix::net::UnixStream::connect_addr(&addr).map_err(|e| {
        anyhow::anyhow!(
            "cannot reach vmsecd on control socket {sock}: {e}. Is `vmsecd run` running in this network namespace \
             (or give --control)?"
        )
    })?;
    check_server(&std, sock)?;
    std.set_nonblocking(true)?;
    let mut s = UnixStream::from_std(std)?;
    s.write_all(b"status\n").await?;
    let mut text = String::new();
    let mut r = BufReader::new(s);
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut text)).await??;
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
        if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
            anyhow::bail!("vmsecd refused: {e}");
        }
    }
    Ok(serde_json::from_str(&text)?)
}

/// Renders the status as a table a sysadmin reads at a glance.
pub fn render(s: &Status) -> String {
    let mut out = format!("vmsecd on {}\n", s.host);
    if s.raw_esp_in.path.starts_with("xdp") || s.raw_esp_in.path.contains("xdp unavailable") {
        out += &format!(
            "raw ESP in: {}, {} packets through AF_XDP, {} dropped\n",
            s.raw_esp_in.path, s.raw_esp_in.xdp, s.raw_esp_in.xdp_dropped
        );
    }
    out += &format!(
        "{:<12} {:<16} {:<12} {:<10} {:<10} {:>12} {:>12} {:>8}\n",
        "PEER", "ADDRESS", "STATE", "UP", "REKEY", "IN", "OUT", "DROPS"
    );
    let secs = |x: Option<u64>| {
        x.map(|s| format!("{}m{:02}s", s / 60, s % 60))
            .unwrap_or_else(|| "-".into())
    };
    for p in &s.peers {
        let (pin, pout, drops) = p.children.iter().fold((0, 0, 0), |(a, b, d), c| {
            (
                a + c.r#in.bytes,
                b + c.out.bytes,
                d + c.drops.replay + c.drops.auth + c.drops.malformed,
            )
        });
        out += &format!(
            "{:<12} {:<16} {:<12} {:<10} {:<10} {:>12} {:>12} {:>8}\n",
            p.name,
            p.address,
            p.state,
            secs(p.ike.as_ref().and_then(|i| i.established_seconds)),
            secs(p.ike.as_ref().and_then(|i| i.rekey_in_seconds)),
            human(pin),
            human(pout),
            drops
        );
        if p.learned {
            out += &format!(
                "  subnets {} (learned from its Child SA: subnets = \"libvirt\")\n",
                if p.subnets.is_empty() {
                    "none yet".to_owned()
                } else {
                    p.subnets.join(", ")
                }
            );
        } else if !p.subnets.is_empty() {
            out += &format!("  subnets {}\n", p.subnets.join(", "));
        }
        if let Some(i) = &p.ike {
            out += &format!(
                "  IKE  {}_i {}_r  {}  {}{}\n",
                i.spi_i,
                i.spi_r,
                i.algorithms,
                if i.initiator {
                    "initiator"
                } else {
                    "responder"
                },
                match i.encap.as_str() {
                    "udp-nat" => ", UDP 4500 (NAT detected)",
                    "udp-forced" => ", UDP 4500 (encap = udp)",
                    "udp-vmsecd" => ", UDP 4500 (vmsecd peer)",
                    _ if i.udp_encap => ", UDP 4500",
                    _ => "",
                }
            );
        }
        for c in &p.children {
            out += &format!(
                "  ESP  {}_i {}_o  {}  in {} pkts / {}, out {} pkts / {}, rekey in {}\n",
                c.spi_in,
                c.spi_out,
                c.algorithms,
                c.r#in.packets,
                human(c.r#in.bytes),
                c.out.packets,
                human(c.out.bytes),
                secs(Some(c.rekey_in_seconds))
            );
        }
    }
    for r in &s.refused {
        out += &format!("refused: {r}\n");
    }
    let d = &s.drops;
    out += &format!(
        "drops: unknown SPI {}, no SA yet {}, no route {}, policy {}, encap {}; receive errors {}, TUN read \
         errors {}\n",
        d.no_sa_in, d.no_sa_out, d.no_route, d.policy, d.encap_failed, d.recv_errors, d.tun_errors
    );
    out
}

fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead as _;

    /// A process of uid 65534 (nobody) that binds the abstract socket `name` and holds it; its PID. Needs root.
    fn squatter(name: &str) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(
            euid, 0,
            "this test must run as root: it starts a process as uid 65534"
        );
        let mut child = std::process::Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import socket,sys,time\n\
                 s=socket.socket(socket.AF_UNIX)\n\
                 s.bind('\\0'+sys.argv[1]); s.listen(8)\n\
                 print('bound', flush=True)\n\
                 time.sleep(60)",
                name,
            ])
            .uid(65534)
            .gid(65534)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 is needed by this test");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "bound");
        child
    }

    /// The text status names the raw ESP receive path when XDP was asked for (working or not), and says nothing
    /// of it on the default socket path.
    #[test]
    fn the_text_status_shows_the_raw_esp_receive_path() {
        let mut s = Status {
            host: "h1".into(),
            peers: vec![],
            drops: Default::default(),
            raw_esp_out: Default::default(),
            raw_esp_in: RawEspIn {
                path: "socket".into(),
                xdp: 0,
                xdp_dropped: 0,
            },
            refused: vec![],
        };
        assert!(!render(&s).contains("raw ESP in"), "{}", render(&s));
        s.raw_esp_in = RawEspIn {
            path: "xdp (generic) on u0, 1 queue".into(),
            xdp: 1234,
            xdp_dropped: 5,
        };
        assert!(
            render(&s).contains(
                "raw ESP in: xdp (generic) on u0, 1 queue, 1234 packets through AF_XDP, 5 dropped"
            ),
            "{}",
            render(&s)
        );
        s.raw_esp_in.path =
            "socket (xdp unavailable: no interface holds our address 198.18.0.1)".into();
        assert!(render(&s).contains("xdp unavailable"), "{}", render(&s));
    }

    fn unique(what: &str) -> ControlSocket {
        ControlSocket::Abstract(format!("vmsecd-test-{}-{what}", std::process::id()))
    }

    /// A local user holds the control socket's name: `vmsecd status` (query) and `reload`, `firewall-check` and
    /// the libvirt hook (firewall::request) refuse to talk to it, naming its uid and pid; the daemon, which
    /// cannot bind, says who holds the name.
    #[test]
    fn a_squatter_on_the_control_socket_is_refused_by_clients_and_named_by_the_daemon() {
        let sock = unique("squat");
        let mut child = squatter(&sock.to_string()[1..]);
        let pid = child.id();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt.block_on(query(&sock)).unwrap_err().to_string();
        let e2 = crate::control_client::request(&sock, "reload")
            .unwrap_err()
            .to_string();
        let e3 = rt
            .block_on(async { listen(&sock).map(|_| ()) })
            .unwrap_err()
            .to_string();
        let _ = child.kill();
        let _ = child.wait();
        let held = format!("is held by uid 65534 pid {pid}, not by vmsecd as root");
        for text in [&e, &e2, &e3] {
            assert!(text.contains(&held), "{text}");
            assert!(text.contains(&sock.to_string()), "{text}");
        }
        assert!(e3.contains("vmsecd cannot start while it does"), "{e3}");
    }

    /// A client that is not root gets the refusal at once, and takes no slot.
    #[test]
    fn clients_other_than_root_are_refused() {
        use std::os::unix::process::CommandExt;
        let sock = unique("nonroot");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, _rx) = tokio::sync::mpsc::channel(1);
        let _server = rt.block_on(async {
            let server = serve(listen(&sock).unwrap(), tx, crate::firewall::Checker::off());
            Some(server)
        });
        let name = sock.to_string()[1..].to_owned();
        let out = rt.block_on(async {
            let child = tokio::task::spawn_blocking(move || {
                std::process::Command::new("/usr/bin/python3")
                    .args([
                        "-c",
                        "import socket,sys\n\
                     s=socket.socket(socket.AF_UNIX); s.connect('\\0'+sys.argv[1])\n\
                     print(s.recv(200).decode())",
                        &name,
                    ])
                    .uid(65534)
                    .output()
            });
            tokio::time::timeout(Duration::from_secs(10), child)
                .await
                .expect("the client finished within 10 s")
                .unwrap()
                .expect("python3 is needed by this test")
        });
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("serves root only"), "{text:?} {out:?}");
    }

    /// Clients that connect and never send, or send and never read, hold neither the event loop nor the other
    /// clients: a status request still gets its answer at once, while as many stuck clients as there are slots
    /// minus one are connected, and stuck clients are dropped after the timeout.
    #[test]
    fn stuck_clients_do_not_delay_other_requests() {
        crate::test_root::require_root(
            "daemon::control::tests::stuck_clients_do_not_delay_other_requests",
            "the control socket's server refuses clients that are not root",
        );
        let sock = unique("stuck");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Request>(4);
            let _server = serve(listen(&sock).unwrap(), tx, crate::firewall::Checker::off());
            // The "event loop": answers at once.
            tokio::spawn(async move {
                while let Some(r) = rx.recv().await {
                    let _ = r.reply.send(format!("{{\"answer\":\"{}\"}}", r.what));
                }
            });
            let connect = || {
                let s = std::os::unix::net::UnixStream::connect_addr(&std_addr(&sock).unwrap())
                    .unwrap();
                s.set_nonblocking(true).unwrap();
                UnixStream::from_std(s).unwrap()
            };
            // Silent clients, and clients that ask and never read (with a receive buffer the answer fills).
            let mut stuck = Vec::new();
            for i in 0..MAX_CLIENTS - 1 {
                let mut s = connect();
                if i % 2 == 0 {
                    s.write_all(b"status\n").await.unwrap();
                }
                stuck.push(s);
            }
            let t = std::time::Instant::now();
            let mut s = connect();
            s.write_all(b"status\n").await.unwrap();
            let mut line = String::new();
            BufReader::new(&mut s).read_line(&mut line).await.unwrap();
            assert_eq!(line.trim(), r#"{"answer":"status"}"#);
            assert!(
                t.elapsed() < Duration::from_millis(500),
                "{:?}",
                t.elapsed()
            );
            // A request line longer than MAX_REQUEST is not served.
            let mut s = connect();
            s.write_all(&[b'a'; 200]).await.unwrap();
            let mut buf = Vec::new();
            let n = tokio::time::timeout(
                IO_TIMEOUT * 2,
                tokio::io::AsyncReadExt::read_to_end(&mut s, &mut buf),
            )
            .await
            .expect("closed within the timeout")
            .unwrap_or(0);
            assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf));
            // The silent ones are dropped after the timeout: their read sees the end.
            let mut buf = [0u8; 64];
            let r = tokio::time::timeout(
                IO_TIMEOUT * 2,
                tokio::io::AsyncReadExt::read(&mut stuck[1], &mut buf),
            )
            .await
            .expect("a silent client is dropped within the timeout");
            assert_eq!(r.unwrap(), 0);
        });
    }
}
