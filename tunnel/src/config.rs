//! The mesh file: one TOML file, the same on every host, listing every host of the mesh (vmsecd hypervisors and
//! plain strongSwan gateways alike) and the settings they share.
//!
//! ```toml
//! [mesh]
//! interface = "vmsec0"
//! auth = "psk"
//! psk_file = "/etc/vmsecd/psk"
//! ike_proposals = ["aes128gcm16-prfsha256-x25519"]
//! esp_proposals = ["aes128gcm16"]
//!
//! [[host]]
//! name = "b0"
//! address = "198.18.0.1"
//! subnets = ["198.19.1.0/24"]
//!
//! [[host]]
//! name = "c0"
//! address = "198.18.0.2"
//! subnets = ["198.19.2.0/24"]
//! ```
//!
//! [`Mesh::load`] reads and validates the file; [`Mesh::local_host`] finds which entry is this machine (by
//! `--host NAME`, or by a local address) and the others are its peers; [`Config`] is the pair of them that
//! `vmsecd run` and `vmsecd check` work from. Every error is a [`ConfigError`] naming the file, the line, the
//! key, what is wrong and what is allowed.

mod dn;
mod error;
pub mod etcd;
mod identity;
mod keys;
mod libvirt_subnets;
mod psk;
mod schema;
#[cfg(test)]
mod tests;
mod underlay;
mod validate;

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ike::proposal::ProposalSpec;

pub use self::dn::DnError;
pub use self::error::{ConfigError, ErrorKind, KeyFileError, PskError};
pub use self::identity::{Identity, IdentityError};
pub(crate) use self::keys::read_private as read_private_key_file;
pub use self::keys::{CaFile, CertFile, PrivateKeyFile, PublicKeyFile};
pub use self::psk::Psk;
pub use self::underlay::{pair as underlay_pair, NoCommonFamily, PREFERRED_IS_V6};
use self::validate::Cx;
use crate::prefix::Prefix;

/// Where `vmsecd` looks for the mesh file when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vmsecd/mesh.toml";
/// `mesh.interface` when absent.
pub const DEFAULT_INTERFACE: &str = "vmsec0";
/// `mesh.mtu` when absent: room for the worst-case ESP overhead (IPv6 underlay, UDP encapsulation, AES-CBC) on
/// a 1500-byte underlay, and the value strongSwan's kernel-libipsec uses for its TUN.
pub const DEFAULT_MTU: u32 = 1400;
/// `mesh.workers` when absent: one thread does everything (see benches/README.md for the measurements behind
/// the choice).
pub const DEFAULT_WORKERS: usize = 1;
/// Most `mesh.workers`: one per TUN queue; past the core count more only add switching.
pub const MAX_WORKERS: usize = 64;
/// `mesh.ike_proposals` when absent.
pub const DEFAULT_IKE_PROPOSAL: &str = "aes128gcm16-prfsha256-x25519";
/// `mesh.esp_proposals` when absent.
pub const DEFAULT_ESP_PROPOSAL: &str = "aes128gcm16";
/// `mesh.ike_lifetime` when absent (strongSwan's IKE rekey time).
pub const DEFAULT_IKE_LIFETIME: Duration = Duration::from_secs(4 * 3600);
/// `mesh.child_lifetime` when absent (strongSwan's Child SA rekey time).
pub const DEFAULT_CHILD_LIFETIME: Duration = Duration::from_secs(3600);
/// `mesh.rekey_margin` when absent.
pub const DEFAULT_REKEY_MARGIN: Duration = Duration::from_secs(9 * 60);
/// `mesh.dpd_delay` when absent.
pub const DEFAULT_DPD_DELAY: Duration = Duration::from_secs(30);
/// Shortest `mesh.ike_lifetime` and `mesh.child_lifetime` the file may set.
const MIN_LIFETIME: Duration = Duration::from_secs(10);
/// Warn this long before a certificate of the mesh expires.
pub const CERT_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 86400);
/// `host.port` when absent: IKE's port (RFC 7296 2).
pub const DEFAULT_IKE_PORT: u16 = 500;
/// `mesh.control_socket` when absent: the abstract socket `vmsecd` in the daemon's own network namespace, so
/// daemons in different namespaces of one machine never collide, and `vmsecd status` finds its own.
pub const DEFAULT_CONTROL_SOCKET: &str = "@vmsecd";
/// Fewest bytes a pre-shared key may have.
pub const PSK_MIN_LEN: usize = 16;
/// Most bytes a pre-shared key file may have.
pub const PSK_MAX_LEN: usize = 4096;

/// A validated mesh file.
#[derive(Debug, Clone)]
pub struct Mesh {
    /// The file it was read from (error messages name it; relative paths in it are resolved against its folder).
    pub file: PathBuf,
    /// The `[mesh]` section.
    pub settings: Settings,
    /// How hosts authenticate each other.
    pub auth: Auth,
    /// The `[[host]]` entries, in file order: at least two, names, addresses and identities unique, subnets
    /// disjoint.
    pub hosts: Vec<Host>,
    /// `[etcd]`: the membership is also published to and read from etcd (`crate::membership`).
    pub etcd: Option<etcd::EtcdSettings>,
}

/// The `[mesh]` section, defaults filled in.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Name of the TUN interface (`interface`, default `vmsec0`).
    pub interface: String,
    /// MTU of the TUN interface (`mtu`, default 1400).
    pub mtu: u32,
    /// IKE SA proposals, most preferred first (`ike_proposals`).
    pub ike_proposals: Vec<ProposalSpec>,
    /// Child SA (ESP) proposals, most preferred first (`esp_proposals`).
    pub esp_proposals: Vec<ProposalSpec>,
    /// Hard lifetime of an IKE SA (`ike_lifetime`, default 4h).
    pub ike_lifetime: Duration,
    /// Hard lifetime of a Child SA (`child_lifetime`, default 1h).
    pub child_lifetime: Duration,
    /// How long before the lifetime ends a rekey starts, jitter added below it (`rekey_margin`, default 9m).
    pub rekey_margin: Duration,
    /// Idle time before a liveness check; `None` when `dpd_delay = 0` turns it off (default 30s).
    pub dpd_delay: Option<Duration>,
    /// ESP framing (`encap`, default auto).
    pub encap: Encap,
    /// Anti-replay window of inbound Child SAs, in packets (`replay_window`, default 1024).
    pub replay_window: u32,
    /// Threads that encrypt and send, one per TUN queue (`workers`, default 1; at most [`MAX_WORKERS`]).
    pub workers: usize,
    /// How raw ESP leaves (`raw_tx`, default ring): README "Raw ESP and the transmit ring".
    pub raw_tx: RawTxPath,
    /// How raw ESP arrives (`raw_rx`, default socket): README "Raw ESP received through AF_XDP".
    pub raw_rx: RawRxPath,
    /// Where the daemon listens for `vmsecd status` (`control_socket`, default the abstract `@vmsecd`).
    pub control_socket: ControlSocket,
    /// Whether vmsecd keeps its rules ahead of libvirt's NAT and forward rules (`firewall`, default auto).
    pub firewall: FirewallMode,
    /// NAT keepalive interval when this host is behind a NAT (`nat_keepalive`, default 20s; `0` disables).
    pub nat_keepalive: Duration,
    /// Largest IKE message (IP and UDP headers included) before it is fragmented, RFC 7383
    /// (`ike_fragment_size`, default 1280; `0` never fragments and does not announce support).
    pub ike_fragment_size: u16,
    /// Where Prometheus metrics are served over HTTP (`metrics`); `None`, the default, serves none.
    pub metrics: Option<MetricsListen>,
}

/// `raw_tx` in `[mesh]`: how raw ESP (IP protocol 50) leaves the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawTxPath {
    /// An AF_PACKET transmit ring, the raw socket for what the ring cannot carry (the default). Skips
    /// netfilter's OUTPUT and POSTROUTING hooks.
    Ring,
    /// The raw socket only (`sendmmsg`): slower, but every packet passes the host's netfilter output rules.
    Socket,
}

/// `raw_rx` in `[mesh]`: how raw ESP (IP protocol 50) sent to our IPv4 address is received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawRxPath {
    /// The raw socket (`recvmmsg`), the default.
    Socket,
    /// An XDP program in generic mode on the interface holding our IPv4 address steers unfragmented ESP to an
    /// AF_XDP socket; the raw socket still receives the rest. Falls back to the socket if XDP is unavailable.
    Xdp,
    /// The same with the program in the driver (native XDP): on some NIC drivers attaching it resets the
    /// queues (a short link outage), so it is asked for by name.
    XdpNative,
}

/// `metrics` in `[mesh]`: where the Prometheus metrics are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsListen {
    /// A port on this host's own underlay address (`metrics = 9477`): one line for the whole mesh.
    Port(u16),
    /// An address and port (`metrics = "127.0.0.1:9477"`).
    Addr(std::net::SocketAddr),
}

impl MetricsListen {
    /// The socket address for a host whose underlay address is `local`.
    pub fn resolve(self, local: std::net::IpAddr) -> std::net::SocketAddr {
        match self {
            MetricsListen::Port(p) => std::net::SocketAddr::new(local, p),
            MetricsListen::Addr(a) => a,
        }
    }
}

/// What vmsecd does about the host firewall (libvirt's MASQUERADE and REJECT rules): see [`crate::firewall`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirewallMode {
    /// Install, check every 2 s and repair vmsecd's own rules, if `iptables` is there; without it, log that no
    /// firewall handling is done and run on.
    Auto,
    /// Leave the firewall alone: the administrator exempts the mesh from NAT and REJECT by hand.
    Off,
}

impl fmt::Display for FirewallMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FirewallMode::Auto => "auto",
            FirewallMode::Off => "off",
        })
    }
}

/// How ESP travels between hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// Raw ESP (IP protocol 50) unless NAT is detected or the peer sends ESP in UDP; then UDP 4500.
    Auto,
    /// Always ESP in UDP 4500 (RFC 3948), forcing encapsulation even without NAT.
    Udp,
    /// Always raw ESP; a peer behind NAT cannot be reached.
    Raw,
}

impl fmt::Display for Encap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Encap::Auto => "auto",
            Encap::Udp => "udp",
            Encap::Raw => "raw",
        })
    }
}

/// The control socket's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlSocket {
    /// A Linux abstract socket (written `@NAME`): it belongs to the network namespace, and has no file
    /// permissions, so the daemon must check the peer's credentials (root only).
    Abstract(String),
    /// A socket file.
    Path(PathBuf),
}

/// The longest control socket name or path: `sockaddr_un.sun_path` has 108 bytes, 107 and a NUL for a path, 107
/// after the leading NUL when abstract.
pub const MAX_CONTROL_SOCKET: usize = 107;

/// Why a control socket address (`control_socket`, `--control`) cannot be used: the file's or the command
/// line's fault. The text says what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlSocketError {
    /// `@` with no name, or one too long.
    #[error("abstract socket name of 1 to {MAX_CONTROL_SOCKET} bytes after the @")]
    AbstractName,
    /// Nothing at all.
    #[error("a path, or @NAME for an abstract socket")]
    Empty,
    /// A path too long for a socket address.
    #[error("a socket path of at most {MAX_CONTROL_SOCKET} bytes (got {})", .0.display())]
    PathTooLong(PathBuf),
}

impl ControlSocket {
    /// Parses `@NAME` (abstract) or a path; a relative path is taken relative to `base`.
    pub fn parse(text: &str, base: &Path) -> Result<ControlSocket, ControlSocketError> {
        if let Some(name) = text.strip_prefix('@') {
            if name.is_empty() || name.len() > MAX_CONTROL_SOCKET {
                return Err(ControlSocketError::AbstractName);
            }
            return Ok(ControlSocket::Abstract(name.to_owned()));
        }
        if text.is_empty() {
            return Err(ControlSocketError::Empty);
        }
        let path = base.join(text);
        if path.as_os_str().len() > MAX_CONTROL_SOCKET {
            return Err(ControlSocketError::PathTooLong(path));
        }
        Ok(ControlSocket::Path(path))
    }
}

impl fmt::Display for ControlSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlSocket::Abstract(name) => write!(f, "@{name}"),
            ControlSocket::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Peer authentication.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Auth {
    /// One pre-shared key for the whole mesh (RFC 7296 2.15).
    Psk(Psk),
    /// RSA signatures (RFC 7427): each host has its own key pair; every host's public key is in the mesh.
    PubKey(PubKeyAuth),
    /// RSA signatures with X.509 certificates (RFC 7296 3.6): `auth = "pubkey"` with a mesh `ca`; each host's
    /// certificate must chain to it and name the host's identity.
    Cert(CertAuth),
}

/// `auth = "pubkey"` with `ca`: this host's private key, the CAs, and the certificates the file names.
#[derive(Debug, Clone)]
pub struct CertAuth {
    /// This host's private key (`private_key`, or `vmsecd run --private-key`).
    pub private_key: PrivateKeyFile,
    /// The CA certificates every host's certificate chains to.
    pub ca: CaFile,
    /// The certificate (and intermediates) of each host that has a `cert` key, by host name. This host's is
    /// required; another host's is a fallback for a peer that sends no certificate.
    pub certs: std::collections::BTreeMap<String, CertFile>,
}

/// `auth = "pubkey"`: this host's private key and every host's public key (the `pubkey` of each `[[host]]`).
#[derive(Debug, Clone)]
pub struct PubKeyAuth {
    /// This host's private key (`private_key`, or `vmsecd run --private-key`).
    pub private_key: PrivateKeyFile,
    /// Each host's public key, by host name.
    pub public_keys: std::collections::BTreeMap<String, PublicKeyFile>,
}

/// Now, in seconds since 1970 (UTC): the time certificates are checked against.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl CertAuth {
    /// The certificates of the mesh (the CAs' and every certificate file's, intermediates included) that
    /// expire within `within` of `now` (seconds since 1970): what `vmsecd check` and the daemon warn about, so
    /// that a certificate is renewed before handshakes start to fail. Each as (subject, file, notAfter).
    pub fn expiring(&self, now: i64, within: Duration) -> Vec<(String, PathBuf, i64)> {
        let limit = now.saturating_add(within.as_secs() as i64);
        let mut out = Vec::new();
        let files = std::iter::once((&self.ca.path, self.ca.anchors.certificates()))
            .chain(self.certs.values().map(|f| (&f.path, &f.chain[..])));
        for (path, certs) in files {
            for c in certs {
                if c.not_after() <= limit && !out.iter().any(|(s, _, _)| *s == c.subject()) {
                    out.push((c.subject(), path.clone(), c.not_after()));
                }
            }
        }
        out
    }
}

/// One `[[host]]` entry: a hypervisor running vmsecd or any IKEv2 gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Unique name, used by `--host`, logs and `vmsecd status`.
    pub name: String,
    /// Underlay address IKE and ESP are sent to (and from, when this host is us): the first of `address`.
    pub address: IpAddr,
    /// With `address = [IPv4, IPv6]` (either order): the second, of the other family. Which of the two a pair
    /// of hosts uses is [`Tunnel::underlay`]'s choice.
    pub second_address: Option<IpAddr>,
    /// The VM subnets behind the host; the traffic selectors of its Child SAs. Empty for a `subnets =
    /// "libvirt"` host, except for the local host after [`Config::resolve_libvirt`] (its libvirt networks'
    /// subnets) and, in the daemon, for a peer whose Child SA is up (the subnets it negotiated).
    pub subnets: Vec<Prefix>,
    /// `subnets = "libvirt"`: the subnets come from the host's own libvirt networks.
    pub libvirt: Option<LibvirtSubnets>,
    /// IKE identity (default: the address, as in strongSwan).
    pub id: Identity,
    /// UDP port of its IKE (default 500).
    pub port: u16,
}

/// A host with `subnets = "libvirt"`: on the host itself its subnets are read from its libvirt networks
/// ([`Config::resolve_libvirt`]); the other hosts learn them from the traffic selectors it negotiates, within
/// its `range`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtSubnets {
    /// `libvirt_networks`: the networks to take, by name; empty for every network with an IPv4 address.
    pub networks: Vec<String>,
    /// Where its subnets may lie: the host's `libvirt_range`, or `mesh.libvirt_range` when it is the only
    /// `subnets = "libvirt"` host. Towards it we offer and accept this range as its traffic selectors, which it
    /// narrows to its actual subnets (RFC 7296 2.9); subnets it negotiates outside it are refused. Ranges of
    /// different hosts do not overlap, so no host can claim another's subnets.
    pub range: Vec<Prefix>,
}

/// Where a `subnets = "libvirt"` host's subnets came from, for `vmsecd check` and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtFound {
    /// (network name, its IPv4 subnets) for each network taken.
    pub networks: Vec<(String, Vec<Prefix>)>,
}

/// How the local host was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    /// `--host NAME`.
    Name,
    /// The host's address is one of this machine's.
    LocalAddress,
}

/// A validated mesh and which of its hosts this machine is: what `vmsecd run` and `vmsecd check` work from.
#[derive(Debug, Clone)]
pub struct Config {
    /// The mesh file.
    pub mesh: Mesh,
    /// How the local host was found.
    pub found_by: FoundBy,
    local: usize,
}

/// The tunnel from the local host to one peer: a Child SA between their subnets, a route per remote subnet.
#[derive(Debug, Clone, Copy)]
pub struct Tunnel<'a> {
    /// This machine.
    pub local: &'a Host,
    /// The other end.
    pub peer: &'a Host,
}

impl Tunnel<'_> {
    /// Our subnets: TSi when we initiate.
    pub fn local_subnets(&self) -> &[Prefix] {
        &self.local.subnets
    }

    /// The peer's subnets: TSr when we initiate, and the routes into the TUN. Empty for a `subnets = "libvirt"`
    /// peer until the daemon learns them from its Child SA (see [`Tunnel::remote_selectors`]).
    pub fn remote_subnets(&self) -> &[Prefix] {
        &self.peer.subnets
    }

    /// The remote traffic selectors we offer and accept: the peer's subnets, or for a `subnets = "libvirt"`
    /// peer its own range (it narrows them to its subnets).
    pub fn remote_selectors(&self) -> &[Prefix] {
        match &self.peer.libvirt {
            Some(lv) => &lv.range,
            None => &self.peer.subnets,
        }
    }
}

impl Config {
    /// This configuration with `hosts` (the file's, in their order, then members from etcd) and the public keys
    /// of the members (`auth = "pubkey"`): what `crate::membership::merge` builds. The local host keeps its index.
    pub fn with_members(
        &self,
        hosts: Vec<Host>,
        keys: std::collections::BTreeMap<String, PublicKeyFile>,
    ) -> Config {
        let mut c = self.clone();
        c.mesh.hosts = hosts;
        if let Auth::PubKey(pk) = &mut c.mesh.auth {
            pk.public_keys.extend(keys);
        }
        c
    }

    /// Loads the mesh file and finds the local host: the one named `host`, or else the one whose address is in
    /// `local_addrs` (see [`Mesh::local_host`]).
    pub fn load(
        path: &Path,
        host: Option<&str>,
        local_addrs: &[IpAddr],
    ) -> Result<Config, ConfigError> {
        Config::new(Mesh::load(path)?, host, local_addrs)
    }

    /// [`Config::load`] with `vmsecd run --private-key`.
    pub fn load_with_private_key(
        path: &Path,
        host: Option<&str>,
        local_addrs: &[IpAddr],
        private_key: Option<&Path>,
    ) -> Result<Config, ConfigError> {
        Config::new(
            Mesh::load_with_private_key(path, private_key)?,
            host,
            local_addrs,
        )
    }

    /// Finds the local host in an already loaded mesh.
    pub fn new(
        mesh: Mesh,
        host: Option<&str>,
        local_addrs: &[IpAddr],
    ) -> Result<Config, ConfigError> {
        let (local, found_by) = mesh.local_index(host, local_addrs)?;
        if let Auth::PubKey(pk) = &mesh.auth {
            let me = &mesh.hosts[local];
            let public = &pk.public_keys[&me.name];
            if pk.private_key.key.public_key() != public.key {
                return Err(ConfigError {
                    file: mesh.file.clone(),
                    location: None,
                    key: "mesh.private_key".to_owned(),
                    kind: Box::new(ErrorKind::KeyMismatch {
                        private: pk.private_key.path.clone(),
                        host: me.name.clone(),
                        public: public.path.clone(),
                    }),
                });
            }
        }
        if let Auth::Cert(ca) = &mesh.auth {
            let me = &mesh.hosts[local];
            let err = |kind: ErrorKind| ConfigError {
                file: mesh.file.clone(),
                location: None,
                key: format!("host[{local}].cert"),
                kind: Box::new(kind),
            };
            let Some(cert) = ca.certs.get(&me.name) else {
                return Err(err(ErrorKind::Missing {
                    what: format!(
                        "with mesh.ca, this host ({}) needs its certificate: cert = \"PATH\" in its [[host]]",
                        me.name
                    ),
                }));
            };
            let public = cert.cert().public_key().map_err(|error| {
                err(ErrorKind::Key(KeyFileError::Cert {
                    path: cert.path.clone(),
                    error,
                }))
            })?;
            if ca.private_key.key.public_key() != *public {
                return Err(err(ErrorKind::CertKeyMismatch {
                    private: ca.private_key.path.clone(),
                    host: me.name.clone(),
                    cert: cert.path.clone(),
                }));
            }
        }
        Ok(Config {
            mesh,
            found_by,
            local,
        })
    }

    /// The `[mesh]` settings.
    pub fn settings(&self) -> &Settings {
        &self.mesh.settings
    }

    /// This machine's entry.
    pub fn local(&self) -> &Host {
        &self.mesh.hosts[self.local]
    }

    /// Every other host we can reach, in file order: those with an underlay address family in common with us
    /// (see [`Config::unreachable`] for the others).
    pub fn peers(&self) -> impl Iterator<Item = &Host> {
        let local = self.local();
        self.mesh
            .peers(local)
            .filter(move |p| underlay::pair(local, p).is_ok())
    }

    /// The other hosts we have no underlay family in common with, and why: no tunnel to them (their subnets
    /// stay behind the fail-closed routes).
    pub fn unreachable(&self) -> Vec<NoCommonFamily> {
        let local = self.local();
        self.mesh
            .peers(local)
            .filter_map(|p| underlay::pair(local, p).err())
            .collect()
    }

    /// Every other host, reachable or not (the fail-closed routes cover them all).
    pub fn all_peers(&self) -> impl Iterator<Item = &Host> {
        self.mesh.peers(self.local())
    }

    /// The tunnels this host sets up: one per peer, in file order.
    pub fn tunnels(&self) -> Vec<Tunnel<'_>> {
        self.peers()
            .map(|peer| Tunnel {
                local: self.local(),
                peer,
            })
            .collect()
    }
}

impl Mesh {
    /// Reads and validates a mesh file, and reads the pre-shared key or the key files it names.
    pub fn load(path: &Path) -> Result<Mesh, ConfigError> {
        Mesh::load_with_private_key(path, None)
    }

    /// [`Mesh::load`], with this host's private key read from `private_key` instead of the file's
    /// `private_key` (`vmsecd run --private-key`).
    pub fn load_with_private_key(
        path: &Path,
        private_key: Option<&Path>,
    ) -> Result<Mesh, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_owned(),
            location: None,
            key: String::new(),
            kind: Box::new(ErrorKind::Read(e)),
        })?;
        Mesh::parse_with_private_key(&text, path, private_key)
    }

    /// Validates the text of a mesh file; `file` names it in errors, and relative paths in it are resolved
    /// against `file`'s folder.
    pub fn parse(text: &str, file: &Path) -> Result<Mesh, ConfigError> {
        Mesh::parse_with_private_key(text, file, None)
    }

    /// [`Mesh::parse`] with a private key path that overrides the file's `private_key`.
    pub fn parse_with_private_key(
        text: &str,
        file: &Path,
        private_key: Option<&Path>,
    ) -> Result<Mesh, ConfigError> {
        let cx = Cx { file, text };
        let raw: schema::File = toml::from_str(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            location: e.span().map(|s| cx.line_col(s.start)),
            key: String::new(),
            kind: Box::new(ErrorKind::Syntax(e.message().trim_end().to_owned())),
        })?;
        let (mesh_span, section) = match raw.mesh {
            Some(m) => {
                let span = m.span();
                (Some(span), m.into_inner())
            }
            None => (None, schema::MeshSection::default()),
        };
        let settings = cx.settings(&section)?;
        let etcd = raw.etcd.as_ref().map(|e| cx.etcd(e)).transpose()?;
        // With etcd, the file may hold this host alone: the others come from etcd.
        let min_hosts = if etcd.is_some() { 1 } else { 2 };
        let mut hosts = cx.hosts(&raw.host, &settings, min_hosts)?;
        cx.libvirt_ranges(&section, &raw.host, &mut hosts, &settings)?;
        let auth = cx.auth(&section, mesh_span, &raw.host, &hosts, private_key)?;
        Ok(Mesh {
            file: file.to_owned(),
            settings,
            auth,
            hosts,
            etcd,
        })
    }

    /// What `vmsecd check` and the daemon's start warn about a mesh whose members must trust each other: with
    /// `auth = "psk"` every host holds the one key that authenticates every host, so with three or more hosts
    /// any member (or whoever takes the key from one) can pose as any other towards the rest and claim its
    /// subnets. Two hosts have no third to deceive. `None` when that does not apply.
    pub fn trust_warning(&self) -> Option<String> {
        if !matches!(self.auth, Auth::Psk(_)) || self.hosts.len() < 3 {
            return None;
        }
        Some(format!(
            "auth = \"psk\": all {} hosts share one key, so any host of the mesh (or whoever takes the key from \
             one) can authenticate as any other host and claim its subnets, reading and forging the traffic of \
             its VMs; use auth = \"pubkey\" (a key pair per host: vmsecd keygen) unless every host trusts \
             every other",
            self.hosts.len()
        ))
    }

    /// The host with this name.
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Our entry: the host named `name` when given (`--host`; its address is then not checked, so a file can be
    /// checked for another machine), or else the one host whose address is among `local_addrs`.
    pub fn local_host(
        &self,
        name: Option<&str>,
        local_addrs: &[IpAddr],
    ) -> Result<&Host, ConfigError> {
        self.local_index(name, local_addrs)
            .map(|(i, _)| &self.hosts[i])
    }

    /// Every host but `local`, in file order.
    pub fn peers<'a>(&'a self, local: &'a Host) -> impl Iterator<Item = &'a Host> {
        self.hosts.iter().filter(move |h| h.name != local.name)
    }

    fn local_index(
        &self,
        name: Option<&str>,
        local_addrs: &[IpAddr],
    ) -> Result<(usize, FoundBy), ConfigError> {
        let err = |key: &str, kind| ConfigError {
            file: self.file.clone(),
            location: None,
            key: key.to_owned(),
            kind: Box::new(kind),
        };
        if let Some(name) = name {
            return match self.hosts.iter().position(|h| h.name == name) {
                Some(i) => Ok((i, FoundBy::Name)),
                None => Err(err(
                    "--host",
                    ErrorKind::UnknownHost {
                        name: name.to_owned(),
                        known: join(self.hosts.iter().map(|h| &h.name)),
                    },
                )),
            };
        }
        let ours: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| self.hosts[i].addresses().any(|a| local_addrs.contains(&a)))
            .collect();
        match ours[..] {
            [i] => Ok((i, FoundBy::LocalAddress)),
            [] => Err(err(
                "",
                ErrorKind::NotOurs {
                    local: if local_addrs.is_empty() {
                        "none".to_owned()
                    } else {
                        join(local_addrs.iter())
                    },
                    hosts: join(
                        self.hosts
                            .iter()
                            .map(|h| format!("{} {}", h.name, h.addresses_text())),
                    ),
                },
            )),
            _ => Err(err(
                "",
                ErrorKind::Ambiguous {
                    names: join(ours.iter().map(|&i| &self.hosts[i].name)),
                },
            )),
        }
    }
}

fn join<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    items.map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
}
