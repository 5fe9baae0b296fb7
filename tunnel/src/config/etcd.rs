//! `[etcd]`: mesh membership from an etcd cluster (v3 API). Each host publishes its own entry under
//! `prefix` with a lease it keeps alive, and watches the prefix for the others (`crate::membership`).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::schema::{self, S};
use super::validate::Cx;
use super::ConfigError;
use crate::prefix::Prefix;

/// `lease_ttl` when absent: a host that dies without deleting its entry disappears from the others' meshes
/// this long after its last keep-alive.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// The shortest and longest `lease_ttl`: etcd itself refuses leases under its minimum (about 5 s with the
/// default election timeout); a day is far beyond any use.
const LEASE_TTL_RANGE: (Duration, Duration) = (Duration::from_secs(5), Duration::from_secs(86_400));

/// The `[etcd]` section, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdSettings {
    /// `endpoints`: URLs of the cluster's members (`https://198.18.0.10:2379`); at least one.
    pub endpoints: Vec<String>,
    /// `prefix`: the keys of this mesh, each host's entry at `PREFIX` + its name. Ends with `/`.
    pub prefix: String,
    /// `ca`: the CA that signed the members' server certificates (TLS); required with `https://`.
    pub ca: Option<PathBuf>,
    /// `cert` and `key`: this host's client certificate and key for etcd (TLS client authentication).
    pub client: Option<(PathBuf, PathBuf)>,
    /// `lease_ttl`: see [`DEFAULT_LEASE_TTL`].
    pub lease_ttl: Duration,
    /// `subnets_within`: the ranges the subnets of etcd members must lie in; empty when not set (anywhere,
    /// as before the key existed). Every subnet a member claims becomes a route into the tunnel on every host,
    /// so without it whoever can write to the prefix can take any range no host claimed yet, the hypervisors'
    /// management network, DNS servers or default gateway included, and blackhole it mesh-wide.
    pub subnets_within: Vec<Prefix>,
}

impl EtcdSettings {
    /// The addresses of the endpoints that name one (not a DNS name): an etcd member claiming a subnet that holds
    /// one is refused, since the route would cut this host off from the store it needs to recover.
    pub fn endpoint_addresses(&self) -> impl Iterator<Item = IpAddr> + '_ {
        self.endpoints.iter().filter_map(|u| {
            let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
            let authority = rest.split('/').next().unwrap_or(rest);
            authority
                .parse::<SocketAddr>()
                .map(|s| s.ip())
                .or_else(|_| authority.parse::<IpAddr>())
                .ok()
        })
    }
}

impl Cx<'_> {
    pub(super) fn etcd(&self, raw: &S<schema::EtcdSection>) -> Result<EtcdSettings, ConfigError> {
        let e = raw.get_ref();
        let missing = |what: &str| {
            self.invalid(
                raw,
                "etcd",
                format!("[etcd] has no {what}"),
                "endpoints = [\"https://ADDRESS:2379\", ...] and prefix = \"/vmsecd/MESH/\"",
            )
        };
        let endpoints: Vec<String> = match &e.endpoints {
            None => return Err(missing("endpoints")),
            Some(list) => {
                let mut out = Vec::new();
                for v in list.get_ref() {
                    let u = v.get_ref();
                    let tls = u.starts_with("https://");
                    if !(tls || u.starts_with("http://")) || u.len() > 256 {
                        return Err(self.invalid(
                            v,
                            "etcd.endpoints",
                            format!("{u:?} is not an etcd URL"),
                            "\"https://ADDRESS:PORT\" (or \"http://...\" on a trusted network only)",
                        ));
                    }
                    out.push(u.clone());
                }
                if out.is_empty() {
                    return Err(missing("endpoints"));
                }
                out
            }
        };
        let prefix = match &e.prefix {
            None => return Err(missing("prefix")),
            Some(v) => {
                let p = v.get_ref();
                if !p.starts_with('/') || !p.ends_with('/') || p.len() < 2 || p.len() > 128 {
                    return Err(self.invalid(
                        v,
                        "etcd.prefix",
                        format!("{p:?} cannot be used"),
                        "a key prefix of this mesh that starts and ends with /, such as \"/vmsecd/prod/\" (at most \
                         128 bytes)",
                    ));
                }
                p.clone()
            }
        };
        let ca = e.ca.as_ref().map(|v| self.path(v.get_ref()));
        if ca.is_none() && endpoints.iter().any(|u| u.starts_with("https://")) {
            return Err(missing("ca (needed for https:// endpoints)"));
        }
        let client = match (&e.cert, &e.key) {
            (Some(c), Some(k)) => Some((self.path(c.get_ref()), self.path(k.get_ref()))),
            (None, None) => None,
            (Some(v), None) | (None, Some(v)) => {
                return Err(self.invalid(
                    v,
                    "etcd.cert",
                    "cert and key come together".into(),
                    "both cert and key (the client certificate etcd checks), or neither",
                ))
            }
        };
        let lease_ttl = self.duration(&e.lease_ttl, "etcd.lease_ttl", DEFAULT_LEASE_TTL)?;
        if let Some(v) = &e.lease_ttl {
            if !(LEASE_TTL_RANGE.0..=LEASE_TTL_RANGE.1).contains(&lease_ttl) {
                return Err(self.invalid(
                    v,
                    "etcd.lease_ttl",
                    format!("{} is out of range", humantime::format_duration(lease_ttl)),
                    "5s to 24h",
                ));
            }
        }
        let mut subnets_within: Vec<Prefix> = Vec::new();
        for (j, r) in e
            .subnets_within
            .iter()
            .flat_map(|v| v.get_ref())
            .enumerate()
        {
            let key = format!("etcd.subnets_within[{j}]");
            let p = r.get_ref().parse::<Prefix>().map_err(|err| {
                self.invalid(
                    r,
                    &key,
                    err.to_string(),
                    "a CIDR range such as \"198.19.0.0/16\" or \"fd00:19::/48\"",
                )
            })?;
            subnets_within.push(p);
        }
        if let Some(v) = e.subnets_within.as_ref().filter(|v| v.get_ref().is_empty()) {
            return Err(self.invalid(
                v,
                "etcd.subnets_within",
                "the list is empty".into(),
                "the CIDR ranges the VM subnets of hosts from etcd lie in, e.g. [\"198.19.0.0/16\"]; or remove the \
                 key to accept them anywhere",
            ));
        }
        Ok(EtcdSettings {
            endpoints,
            prefix,
            ca,
            client,
            lease_ttl,
            subnets_within,
        })
    }
}
