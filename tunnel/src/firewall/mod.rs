//! vmsecd's own firewall rules: the mesh exempted from libvirt's NAT and REJECT, and TCP MSS clamped into the
//! TUN; installed at start, checked every [`CHECK_INTERVAL`], repaired, and removed on exit.
//!
//! # Why these rules, and why there
//!
//! A libvirt NAT network (`<forward mode='nat'/>`) breaks a route-based mesh in two ways. Measured on Debian 12
//! with libvirt 9.0, which drives `iptables` (iptables-nft there):
//! - nat `POSTROUTING -j LIBVIRT_PRT` MASQUERADEs everything from the VM subnet that is not for the VM subnet
//!   itself (`-s 198.19.1.0/24 ! -d 198.19.1.0/24 -j MASQUERADE`), so a VM's packet to a remote VM would leave
//!   with the hypervisor's address and no longer match the Child SA's traffic selectors;
//! - filter `FORWARD -j LIBVIRT_FWI` accepts into the bridge only `RELATED,ESTABLISHED` and REJECTs the rest,
//!   so a remote VM cannot open a connection to a local VM.
//!
//! libvirt inserts its per-network rules at the top of its *own* chains and re-creates them on every
//! `net-start` and libvirtd restart, so exemptions placed inside `LIBVIRT_*` chains are undone. An nftables
//! table of our own that only `accept`s does not help either: an accept ends only its own base chain, and
//! libvirt's chain still runs and REJECTs or MASQUERADEs. What survived both restarts in the experiment are
//! rules at the top of the *built-in* chains, ahead of libvirt's jumps:
//! - nat `POSTROUTING`: local subnet → remote subnet `ACCEPT` (ends the nat chain before `-j LIBVIRT_PRT`,
//!   so the connection gets no NAT binding);
//! - filter `FORWARD`: remote subnet → local subnet in from the TUN `ACCEPT`, local → remote out to the TUN
//!   `ACCEPT` (before `-j LIBVIRT_FWX/FWI/FWO`). The inbound rule names the TUN (`-i vmsec0`): a packet with
//!   a remote VM source that arrives in clear text from the underlay is not let in by it.
//!
//! libvirt adds its jumps only when its chains do not exist yet (a fresh boot, or after a flush), and then at
//! position 1, above ours. So this module does not trust the order it left: every [`CHECK_INTERVAL`] (and
//! whenever libvirt's network hook pokes the daemon, see `vmsecd install-hook`) it reads the tables back and
//! re-inserts its rules when one is missing or sits below a `LIBVIRT_` jump.
//!
//! The TUN's MTU is below the bridge's (libvirt guests default to 1500), so a `TCPMSS --clamp-mss-to-pmtu`
//! rule in mangle `FORWARD` for SYNs into the TUN keeps TCP working where ICMP "fragmentation needed" is
//! dropped. It needs no particular position (libvirt puts nothing in mangle `FORWARD`).
//!
//! # Ownership
//!
//! Every rule carries the comment `vmsecd: ...` ([`COMMENT_TAG`]); that comment is how the daemon finds its
//! rules, and the only rules it ever deletes. Changes go through `iptables-restore --noflush`, one transaction
//! per table (`nft -f -` per family with nftables), so a repair never leaves a moment without the rules.
//!
//! # Backends
//!
//! - libvirt 9.x (and 10.4+ with `firewall_backend = "iptables"`) calls `iptables`/`ip6tables`; vmsecd calls
//!   the same commands, so both land in the same backend, iptables-nft (nf_tables tables `ip nat`, `ip filter`)
//!   or iptables-legacy (x_tables): `firewall/iptables.rs` does the above. Tested with libvirt 9.0.
//! - libvirt 10.4 and newer with its nftables backend (`firewall_backend = "nftables"` in
//!   /etc/libvirt/network.conf, or its tables `ip libvirt_network`/`ip6 libvirt_network` present) is out of
//!   reach of iptables rules: `firewall/nft.rs` explains what vmsecd does there instead (an identity SNAT in a
//!   table of its own before libvirt's NAT chain, and accept rules kept at the top of libvirt's own forward
//!   chains). It is tested against a table laid out as libvirt's source lays it out, not against libvirt
//!   10.4 itself, which Debian 12 does not have.
//!
//! The backend is detected at start and again at every check, so a libvirtd that starts after vmsecd with
//! its nftables backend (a fresh boot) moves vmsecd's rules there within one check.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::config::{Config, FirewallMode};
use crate::prefix::Prefix;

mod iptables;
mod nft;
mod thread;

pub use self::iptables::Backend;
pub use self::thread::{Checker, Handle};

/// How often the daemon checks that its rules are present and ahead of libvirt's.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// The start of the comment of every rule vmsecd owns.
pub const COMMENT_TAG: &str = "vmsecd:";
/// Where libvirt (10.4 and newer) is told which firewall backend to use.
pub const LIBVIRT_NETWORK_CONF: &str = "/etc/libvirt/network.conf";

/// A firewall command that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The command could not be started (not installed, not executable).
    #[error("firewall: cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The control socket is held by a process that is not root, so not by vmsecd.
    #[error("{0}")]
    NotVmsecd(String),
    /// The command ran and failed.
    #[error("firewall: `{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on standard error.
        stderr: String,
    },
    /// The daemon could not be asked over its control socket.
    #[error(
        "cannot reach vmsecd on control socket {socket}: {source}. Is `vmsecd run` running in this network \
         namespace?"
    )]
    Control {
        /// The socket.
        socket: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

impl Family {
    fn tool(self) -> &'static str {
        match self {
            Family::V4 => "iptables",
            Family::V6 => "ip6tables",
        }
    }

    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn of(p: &Prefix) -> Family {
        if p.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// Which firewall libvirt drives, as far as this host shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibvirtBackend {
    /// `iptables` (libvirt before 10.4, or `firewall_backend = "iptables"`): handled here.
    Iptables,
    /// libvirt's own nftables tables (`libvirt_network`, libvirt 10.4 and newer): see `firewall/nft.rs`.
    Nftables,
}

/// What a check found in one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainState {
    /// Our rules are all there, in order, none of them below a libvirt jump.
    Ok,
    /// One is missing, changed, duplicated or stale.
    Missing,
    /// All there, but a `LIBVIRT_` jump sits above one that must be ahead of it.
    Displaced,
}

/// What one check did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Chains whose rules were missing or changed and were written again (`family table chain`).
    pub restored: Vec<String>,
    /// Chains where libvirt's jumps had landed above our rules, which were moved back on top.
    pub reordered: Vec<String>,
}

impl Report {
    /// True when nothing needed fixing.
    pub fn is_ok(&self) -> bool {
        self.restored.is_empty() && self.reordered.is_empty()
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `program args` with `input` on standard input; its standard output, or a typed error naming the
/// command and its standard error.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String, Error> {
    let command = command_line(program, args);
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?;
    }
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        command: command.clone(),
        source,
    })?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        // iptables-restore and nft -f name the failing line of their input: show it.
        if let Some(text) = input {
            stderr += &format!("; its input was:\n{}", text.trim_end());
        }
        return Err(Error::Failed {
            command,
            status: out.status.to_string(),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Which firewall libvirt drives here: its nftables backend if `network_conf` sets
/// `firewall_backend = "nftables"` or libvirt's nftables table `ip libvirt_network` exists; iptables otherwise.
pub fn libvirt_backend(network_conf: &Path) -> LibvirtBackend {
    let configured = std::fs::read_to_string(network_conf)
        .map(|t| parse_firewall_backend(&t))
        .unwrap_or(None);
    match configured.as_deref() {
        Some("nftables") => return LibvirtBackend::Nftables,
        Some(_) => return LibvirtBackend::Iptables,
        None => {}
    }
    // libvirt 10.4+ defaults to nftables when built so; its tables then exist once a network has started.
    if run("nft", &["list", "table", "ip", "libvirt_network"], None).is_ok() {
        LibvirtBackend::Nftables
    } else {
        LibvirtBackend::Iptables
    }
}

/// The value of an uncommented `firewall_backend = "..."` line of libvirt's network.conf.
fn parse_firewall_backend(text: &str) -> Option<String> {
    text.lines()
        .map(|l| l.trim())
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "firewall_backend").then(|| v.trim().trim_matches('"').to_owned())
        })
}

/// vmsecd's rules on this host, for whichever firewall libvirt uses, and the commands that keep them in place.
/// All calls block on child processes (milliseconds each): the daemon runs them off its event loop.
#[derive(Debug)]
pub struct Firewall {
    local: Vec<Prefix>,
    remote: Vec<Prefix>,
    guarded: Vec<Prefix>,
    interface: String,
    network_conf: std::path::PathBuf,
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Iptables(iptables::Iptables),
    Nft(nft::Nft),
}

impl Firewall {
    /// The firewall handling the config asks for on this host: `None` when `firewall = "off"`, when there is
    /// no pair of local and remote subnets of one family, or when neither `iptables` nor `nft` is installed
    /// (each logged once, saying what the administrator can do).
    pub fn for_config(config: &Config) -> Result<Option<Firewall>, Error> {
        let s = config.settings();
        if s.firewall == FirewallMode::Off {
            tracing::info!(
                "firewall = \"off\": vmsecd leaves the firewall alone (libvirt's NAT and REJECT rules apply to \
                 mesh traffic unless exempted by hand)"
            );
            return Ok(None);
        }
        let remote: Vec<Prefix> = config.peers().flat_map(|p| p.subnets.clone()).collect();
        // What leaves only through the tunnel arrives only through it: the fail-closed routes' prefixes (a
        // libvirt host's whole range too, before anything is learned from it, and hosts with no underlay family
        // in common), each guarded by the raw rule (see `iptables.rs`).
        let guarded: Vec<Prefix> = crate::failclosed::plan(config).into_iter().collect();
        Firewall::new(
            &config.local().subnets,
            &remote,
            &guarded,
            &s.interface,
            Path::new(LIBVIRT_NETWORK_CONF),
        )
    }

    /// The firewall for these subnets and TUN, with libvirt's network.conf at `network_conf`.
    pub fn new(
        local: &[Prefix],
        remote: &[Prefix],
        guarded: &[Prefix],
        interface: &str,
        network_conf: &Path,
    ) -> Result<Option<Firewall>, Error> {
        let Some(kind) = Self::kind(
            local,
            remote,
            guarded,
            interface,
            libvirt_backend(network_conf),
            true,
        )?
        else {
            return Ok(None);
        };
        Ok(Some(Firewall {
            local: local.to_vec(),
            remote: remote.to_vec(),
            guarded: guarded.to_vec(),
            interface: interface.to_owned(),
            network_conf: network_conf.to_owned(),
            kind,
        }))
    }

    fn kind(
        local: &[Prefix],
        remote: &[Prefix],
        guarded: &[Prefix],
        interface: &str,
        libvirt: LibvirtBackend,
        log: bool,
    ) -> Result<Option<Kind>, Error> {
        let nft = || nft::Nft::new(local, remote, guarded, interface).map(Kind::Nft);
        if libvirt == LibvirtBackend::Nftables {
            return Ok(nft());
        }
        if nft::Nft::new(local, remote, guarded, interface).is_none() {
            return Ok(None);
        }
        match iptables::Iptables::new(local, remote, guarded, interface)? {
            Ok(i) => Ok(Some(Kind::Iptables(i))),
            // No iptables: libvirt cannot be using it either; if nft is there, libvirt may use that.
            Err(missing) if has_nft() => {
                if log {
                    tracing::info!("firewall: `{missing}` is not installed; using nftables");
                }
                Ok(nft())
            }
            Err(missing) => {
                if log {
                    tracing::warn!(
                        "firewall: neither `{missing}` nor `nft` is installed: no firewall handling is done \
                         (libvirt's NAT and REJECT rules, if any, apply to mesh traffic). Install iptables, or set \
                         firewall = \"off\" to say this is intended"
                    );
                }
                Ok(None)
            }
        }
    }

    /// What it drives, for the log: `iptables (nf_tables)`, `iptables (legacy)` or `nftables`.
    pub fn describe(&self) -> &'static str {
        match &self.kind {
            Kind::Iptables(i) if i.backend() == Backend::Legacy => "iptables (legacy)",
            Kind::Iptables(_) => "iptables (nf_tables)",
            Kind::Nft(_) => "nftables, libvirt's backend",
        }
    }

    /// How many rules it keeps in place.
    pub fn len(&self) -> usize {
        match &self.kind {
            Kind::Iptables(i) => i.len(),
            Kind::Nft(n) => n.len(),
        }
    }

    /// True if it keeps no rule (never, for a firewall [`Firewall::new`] returned).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the rules back and repairs whatever is missing or sits below libvirt's; the first call installs
    /// them (and takes over stale ones a killed vmsecd left). When libvirt turns out to use its nftables backend
    /// now (it started after vmsecd), vmsecd's iptables rules are removed and its nftables rules installed.
    pub fn check(&mut self) -> Result<Report, Error> {
        if matches!(self.kind, Kind::Iptables(_))
            && libvirt_backend(&self.network_conf) == LibvirtBackend::Nftables
        {
            if let Some(kind) = Self::kind(
                &self.local,
                &self.remote,
                &self.guarded,
                &self.interface,
                LibvirtBackend::Nftables,
                false,
            )? {
                tracing::warn!(
                    "firewall: libvirt uses its nftables backend: moving vmsecd's rules from iptables to nftables"
                );
                self.remove()?;
                self.kind = kind;
            }
        }
        match &mut self.kind {
            Kind::Iptables(i) => i.check(),
            Kind::Nft(n) => n.check(),
        }
    }

    /// Deletes every rule of vmsecd's (found by the [`COMMENT_TAG`] comment; with nftables, its own table too),
    /// and nothing else. Returns how many.
    pub fn remove(&mut self) -> Result<usize, Error> {
        match &mut self.kind {
            Kind::Iptables(i) => i.remove(),
            Kind::Nft(n) => n.remove(),
        }
    }
}

/// `v` without the prefixes another of them holds (a libvirt host's learned subnets inside its range), sorted:
/// one guard rule per outermost prefix.
fn outermost(mut v: Vec<Prefix>) -> Vec<Prefix> {
    v.sort_by_key(|p| (p.prefix_len(), *p));
    let mut kept: Vec<Prefix> = Vec::with_capacity(v.len());
    for p in v {
        if !kept.iter().any(|k| k.contains_prefix(&p)) {
            kept.push(p);
        }
    }
    kept.sort();
    kept
}

fn has_nft() -> bool {
    run("nft", &["--version"], None).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_commands_name_the_command_its_stderr_and_input() {
        let e = run(
            "sh",
            &["-c", "cat >/dev/null; echo 'line 2 failed' >&2; exit 2"],
            Some("*nat\nbad\n"),
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(matches!(e, Error::Failed { .. }), "{e:?}");
        assert!(
            text.starts_with("firewall: `sh -c cat >/dev/null;"),
            "{text}"
        );
        assert!(
            text.contains("(exit status: 2): line 2 failed; its input was:\n*nat\nbad"),
            "{text}"
        );
        let e = run("vmsecd-no-such-command", &["-V"], None).unwrap_err();
        assert!(
            matches!(&e, Error::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{e:?}"
        );
    }

    #[test]
    fn libvirt_network_conf() {
        assert_eq!(
            parse_firewall_backend("#firewall_backend = \"nftables\"\n"),
            None
        );
        assert_eq!(
            parse_firewall_backend("# x\nfirewall_backend = \"iptables\"\n").as_deref(),
            Some("iptables")
        );
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("network.conf");
        std::fs::write(&conf, "firewall_backend = \"nftables\"\n").unwrap();
        assert_eq!(libvirt_backend(&conf), LibvirtBackend::Nftables);
        std::fs::write(&conf, "firewall_backend=\"iptables\"\n").unwrap();
        assert_eq!(libvirt_backend(&conf), LibvirtBackend::Iptables);
    }
}
