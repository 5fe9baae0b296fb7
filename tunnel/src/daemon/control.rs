//! The control socket: `vmsecd status` asks, the daemon answers with one JSON document.
//!
//! The default socket is abstract (`@vmsecd`), so it belongs to the network namespace: two daemons in two
//! namespaces never see each other's. Abstract sockets have no file permissions, so the daemon checks that
//! the caller is root.

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
    /// True when IKE and ESP use UDP 4500 (NAT, or forced encapsulation).
    pub udp_encap: bool,
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

/// Binds the control socket (a stale socket file from a crashed daemon is replaced).
pub(crate) fn listen(sock: &ControlSocket) -> anyhow::Result<UnixListener> {
    if let ControlSocket::Path(p) = sock {
        if std::os::unix::net::UnixStream::connect(p).is_ok() {
            anyhow::bail!(
                "control socket {} is in use: another vmsecd runs here",
                p.display()
            );
        }
        let _ = std::fs::remove_file(p);
    }
    let l = std::os::unix::net::UnixListener::bind_addr(&std_addr(sock)?).map_err(|e| {
        anyhow::anyhow!(
            "cannot bind control socket {sock}: {e} (another vmsecd in this network namespace?)"
        )
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

/// Reads one request line from an accepted connection; `None` if the caller is not root or says nothing.
pub(crate) async fn read_request(stream: &mut UnixStream) -> Option<String> {
    match stream.peer_cred() {
        Ok(c) if c.uid() == 0 => {}
        _ => {
            let _ = stream
                .write_all(b"{\"error\":\"vmsecd status needs root\"}\n")
                .await;
            return None;
        }
    }
    let mut line = String::new();
    let mut r = BufReader::new(stream);
    tokio::time::timeout(Duration::from_secs(2), r.read_line(&mut line))
        .await
        .ok()?
        .ok()?;
    Some(line.trim().to_owned())
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
                if i.udp_encap { ", UDP 4500" } else { "" }
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
    let d = &s.drops;
    out += &format!(
        "drops: unknown SPI {}, no SA yet {}, no route {}, policy {}, encap {}\n",
        d.no_sa_in, d.no_sa_out, d.no_route, d.policy, d.encap_failed
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
