//! Validation of the mesh file: from the TOML as given (with the place of every value) to [`Mesh`]'s parts,
//! with an error naming the line, the key, what is wrong and what is allowed for anything that would not work.
//!
//! This file holds the context ([`Cx`]: spans to lines and columns, the error builders) and the `[mesh]`
//! settings; `hosts.rs` the `[[host]]` entries and their libvirt ranges, `auth.rs` the keys and certificates.

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ike::proposal::{ProposalError, ProposalSpec};

use super::schema::{self, S};
use super::{
    Auth, CaFile, CertAuth, CertFile, ConfigError, ControlSocket, Encap, ErrorKind, FirewallMode,
    Host, Identity, KeyFileError, LibvirtSubnets, MetricsListen, PrivateKeyFile, Psk, PubKeyAuth,
    PublicKeyFile, RawRxPath, RawTxPath, Settings, DEFAULT_CHILD_LIFETIME, DEFAULT_CONTROL_SOCKET,
    DEFAULT_DPD_DELAY, DEFAULT_ESP_PROPOSAL, DEFAULT_IKE_LIFETIME, DEFAULT_IKE_PORT,
    DEFAULT_IKE_PROPOSAL, DEFAULT_INTERFACE, DEFAULT_MTU, DEFAULT_REKEY_MARGIN, DEFAULT_WORKERS,
    MAX_WORKERS, MIN_LIFETIME,
};
use crate::prefix::Prefix;

mod auth;
mod hosts;

const ALLOWED_DURATION: &str =
    "a duration such as \"4h\", \"30m\", \"1h 30m\", \"90s\", or a number of seconds";

/// Validation context: the file's name and text, to turn spans into lines and columns.
pub(super) struct Cx<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
}

impl Cx<'_> {
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    }

    fn err(
        &self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        kind: impl Into<ErrorKind>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.to_owned(),
            location: span.map(|s| self.line_col(s.start)),
            key: key.into(),
            kind: Box::new(kind.into()),
        }
    }

    pub(in crate::config) fn invalid<T>(
        &self,
        v: &S<T>,
        key: &str,
        problem: String,
        allowed: &str,
    ) -> ConfigError {
        self.err(
            Some(v.span()),
            key,
            ErrorKind::Invalid {
                problem,
                allowed: allowed.to_owned(),
            },
        )
    }

    /// A path from the file, relative ones taken from the file's folder.
    pub(in crate::config) fn path(&self, p: &str) -> PathBuf {
        self.file.parent().unwrap_or(Path::new("")).join(p)
    }

    pub(super) fn settings(&self, m: &schema::MeshSection) -> Result<Settings, ConfigError> {
        let interface = match &m.interface {
            None => DEFAULT_INTERFACE.to_owned(),
            Some(v) => {
                let n = v.get_ref();
                // IFNAMSIZ is 16 with the NUL; "." and ".." and '/' would clash with /sys/class/net.
                let ok = (1..=15).contains(&n.len())
                    && n != "."
                    && n != ".."
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                if !ok {
                    return Err(self.invalid(
                        v,
                        "mesh.interface",
                        format!("{n:?} is not a usable interface name"),
                        "1 to 15 characters of letters, digits, '-', '_' and '.'",
                    ));
                }
                n.clone()
            }
        };
        let ike_proposals = self.proposals(
            &m.ike_proposals,
            "mesh.ike_proposals",
            DEFAULT_IKE_PROPOSAL,
            ProposalSpec::ike,
        )?;
        let esp_proposals = self.proposals(
            &m.esp_proposals,
            "mesh.esp_proposals",
            DEFAULT_ESP_PROPOSAL,
            ProposalSpec::esp,
        )?;
        let ike_lifetime =
            self.duration(&m.ike_lifetime, "mesh.ike_lifetime", DEFAULT_IKE_LIFETIME)?;
        let child_lifetime = self.duration(
            &m.child_lifetime,
            "mesh.child_lifetime",
            DEFAULT_CHILD_LIFETIME,
        )?;
        let rekey_margin =
            self.duration(&m.rekey_margin, "mesh.rekey_margin", DEFAULT_REKEY_MARGIN)?;
        let dpd_delay = self.duration(&m.dpd_delay, "mesh.dpd_delay", DEFAULT_DPD_DELAY)?;
        for (v, key, life) in [
            (&m.ike_lifetime, "mesh.ike_lifetime", ike_lifetime),
            (&m.child_lifetime, "mesh.child_lifetime", child_lifetime),
        ] {
            if life < MIN_LIFETIME {
                return Err(self.err(
                    v.as_ref().map(|v| v.span()),
                    key,
                    ErrorKind::Invalid {
                        problem: format!("{} is too short", humantime::format_duration(life)),
                        allowed: format!("at least {}", humantime::format_duration(MIN_LIFETIME)),
                    },
                ));
            }
            if rekey_margin.is_zero() || rekey_margin * 2 >= life {
                let lifetime_key = key;
                let (span, key) = match &m.rekey_margin {
                    Some(v) => (Some(v.span()), "mesh.rekey_margin"),
                    None => (v.as_ref().map(|v| v.span()), lifetime_key),
                };
                return Err(self.err(
                    span,
                    key,
                    ErrorKind::Invalid {
                        problem: format!(
                            "rekey_margin {} leaves no room to rekey within {} {}",
                            humantime::format_duration(rekey_margin),
                            lifetime_key.trim_start_matches("mesh."),
                            humantime::format_duration(life),
                        ),
                        allowed: "a rekey_margin above 0 and below half of ike_lifetime and of child_lifetime"
                            .to_owned(),
                    },
                ));
            }
        }
        let encap = match &m.encap {
            None => Encap::Auto,
            Some(v) => match v.get_ref().as_str() {
                "auto" => Encap::Auto,
                "udp" => Encap::Udp,
                "raw" => Encap::Raw,
                other => {
                    return Err(self.invalid(
                        v,
                        "mesh.encap",
                        format!("unknown encapsulation {other:?}"),
                        "\"auto\" (raw ESP unless NAT is found or the peer uses UDP), \"udp\" (always UDP 4500), \
                         \"raw\" (always IP protocol 50)",
                    ))
                }
            },
        };
        let raw_tx = match &m.raw_tx {
            None => RawTxPath::Ring,
            Some(v) => match v.get_ref().as_str() {
                "ring" => RawTxPath::Ring,
                "socket" => RawTxPath::Socket,
                other => {
                    return Err(self.invalid(
                        v,
                        "mesh.raw_tx",
                        format!("unknown raw ESP transmit path {other:?}"),
                        "\"ring\" (an AF_PACKET transmit ring, the default; skips netfilter's OUTPUT and \
                         POSTROUTING hooks) or \"socket\" (the raw socket only, through netfilter)",
                    ))
                }
            },
        };
        let raw_rx = match &m.raw_rx {
            None => RawRxPath::Socket,
            Some(v) => match v.get_ref().as_str() {
                "socket" => RawRxPath::Socket,
                "xdp" => RawRxPath::Xdp,
                "xdp-native" => RawRxPath::XdpNative,
                other => {
                    return Err(self.invalid(
                        v,
                        "mesh.raw_rx",
                        format!("unknown raw ESP receive path {other:?}"),
                        "\"socket\" (the raw socket, the default), \"xdp\" (an XDP program in generic mode and an \
                         AF_XDP socket for unfragmented ESP, the raw socket for the rest) or \"xdp-native\" (the \
                         same in the driver; some NIC drivers reset their queues when it is attached)",
                    ))
                }
            },
        };
        let replay_window = match &m.replay_window {
            None => esp::DEFAULT_REPLAY_WINDOW,
            Some(v) => {
                let n = *v.get_ref();
                let max = i64::from(esp::MAX_REPLAY_WINDOW);
                if !(64..=max).contains(&n) {
                    return Err(self.invalid(
                        v,
                        "mesh.replay_window",
                        format!("{n} packets is out of range"),
                        &format!("64 to {max} packets (rounded up to a power of two)"),
                    ));
                }
                n as u32
            }
        };
        let workers = match &m.workers {
            None => DEFAULT_WORKERS,
            Some(v) => {
                let n = *v.get_ref();
                if !(1..=MAX_WORKERS as i64).contains(&n) {
                    return Err(self.invalid(
                        v,
                        "mesh.workers",
                        format!("{n} workers is out of range"),
                        &format!("1 to {MAX_WORKERS} (one per core is the most that helps)"),
                    ));
                }
                let n = n as usize;
                // Each worker sends its bursts (up to 64 packets, numbered as one block) while the others send
                // theirs, so a peer sees up to (n - 1) x 64 packets out of order; the mesh's replay window,
                // which every vmsecd peer uses, must accept that.
                let late = (n - 1) * 64;
                if late > replay_window as usize {
                    return Err(self.invalid(
                        v,
                        "mesh.workers",
                        format!(
                            "{n} workers can deliver packets up to {late} out of order, more than replay_window \
                             = {replay_window} accepts"
                        ),
                        &format!(
                            "at most {} workers with this replay_window, or replay_window = {} or more",
                            replay_window as usize / 64 + 1,
                            late.next_power_of_two()
                        ),
                    ));
                }
                n
            }
        };
        let mtu = match &m.mtu {
            None => DEFAULT_MTU,
            Some(v) => {
                let n = *v.get_ref();
                if !(576..=65535).contains(&n) {
                    return Err(self.invalid(
                        v,
                        "mesh.mtu",
                        format!("{n} is out of range"),
                        "576 to 65535 bytes (1280 or more when a subnet is IPv6)",
                    ));
                }
                n as u32
            }
        };
        let control_socket = match &m.control_socket {
            None => ControlSocket::Abstract(DEFAULT_CONTROL_SOCKET[1..].to_owned()),
            Some(v) => {
                ControlSocket::parse(v.get_ref(), self.file.parent().unwrap_or(Path::new("")))
                    .map_err(|allowed| {
                        self.invalid(
                            v,
                            "mesh.control_socket",
                            format!("{:?} cannot be used", v.get_ref()),
                            &allowed.to_string(),
                        )
                    })?
            }
        };
        let firewall = match &m.firewall {
            None => FirewallMode::Auto,
            Some(v) => match v.get_ref().as_str() {
                "auto" => FirewallMode::Auto,
                "off" => FirewallMode::Off,
                other => {
                    return Err(self.invalid(
                        v,
                        "mesh.firewall",
                        format!("unknown firewall mode {other:?}"),
                        "\"auto\" (vmsecd keeps its rules ahead of libvirt's NAT and REJECT rules), \"off\" (vmsecd \
                         leaves the firewall alone)",
                    ))
                }
            },
        };
        let nat_keepalive = self.duration(
            &m.nat_keepalive,
            "mesh.nat_keepalive",
            ike::config::Lifetimes::default().nat_keepalive,
        )?;
        let ike_fragment_size = match &m.ike_fragment_size {
            None => ike::config::DEFAULT_FRAGMENT_SIZE,
            Some(v) => {
                let n = *v.get_ref();
                if n != 0 && !(576..=65535).contains(&n) {
                    return Err(self.invalid(
                        v,
                        "mesh.ike_fragment_size",
                        format!("{n} is out of range"),
                        "0 (never fragment) or 576 to 65535 bytes",
                    ));
                }
                n as u16
            }
        };
        let metrics = match &m.metrics {
            None => None,
            Some(v) => Some(self.metrics(v)?),
        };
        Ok(Settings {
            metrics,
            firewall,
            nat_keepalive,
            ike_fragment_size,
            interface,
            mtu,
            ike_proposals,
            esp_proposals,
            ike_lifetime,
            child_lifetime,
            rekey_margin,
            dpd_delay: (!dpd_delay.is_zero()).then_some(dpd_delay),
            encap,
            replay_window,
            workers,
            raw_tx,
            raw_rx,
            control_socket,
        })
    }

    /// `mesh.metrics`: a port on the host's own address, or an address and port.
    fn metrics(&self, v: &S<toml::Value>) -> Result<MetricsListen, ConfigError> {
        let parsed = match v.get_ref() {
            toml::Value::Integer(p) => u16::try_from(*p)
                .ok()
                .filter(|p| *p != 0)
                .map(MetricsListen::Port),
            toml::Value::String(s) => s.parse().ok().map(MetricsListen::Addr),
            _ => None,
        };
        parsed.ok_or_else(|| {
            self.invalid(
                v,
                "mesh.metrics",
                format!("{} is neither a port nor an address and port", v.get_ref()),
                "a port (served on each host's own address), such as 9477, or an address and port such as \
                 \"127.0.0.1:9477\" (whoever reaches it reads peer names, addresses and traffic counters)",
            )
        })
    }

    fn proposals(
        &self,
        v: &Option<S<Vec<S<String>>>>,
        key: &str,
        default: &str,
        parse: fn(&str) -> Result<ProposalSpec, ProposalError>,
    ) -> Result<Vec<ProposalSpec>, ConfigError> {
        let Some(list) = v else {
            return Ok(vec![parse(default).expect("the default proposal parses")]);
        };
        if list.get_ref().is_empty() {
            return Err(self.invalid(
                list,
                key,
                "the list is empty".to_owned(),
                &format!("one or more proposals in strongSwan's syntax, e.g. [\"{default}\"]"),
            ));
        }
        list.get_ref()
            .iter()
            .enumerate()
            .map(|(i, p)| {
                parse(p.get_ref()).map_err(|e| self.err(Some(p.span()), format!("{key}[{i}]"), e))
            })
            .collect()
    }

    pub(in crate::config) fn duration(
        &self,
        v: &Option<S<toml::Value>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(v) = v else { return Ok(default) };
        let parsed = match v.get_ref() {
            toml::Value::Integer(n) if *n >= 0 => Some(Duration::from_secs(*n as u64)),
            toml::Value::String(s) => humantime::parse_duration(s.trim()).ok(),
            _ => None,
        };
        parsed.ok_or_else(|| {
            self.invalid(
                v,
                key,
                format!("{} is not a duration", v.get_ref()),
                ALLOWED_DURATION,
            )
        })
    }
}
