//! The mesh file as TOML gives it: every value with its place in the file, nothing checked yet beyond types.
//! Unknown keys are refused here (`deny_unknown_fields`), so a typo such as `psk_flie` is an error, not a
//! silently ignored line.

use serde::Deserialize;
use toml::Spanned;

pub(super) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    #[serde(default)]
    pub(super) mesh: Option<S<MeshSection>>,
    #[serde(default)]
    pub(super) host: Vec<S<HostSection>>,
    #[serde(default)]
    pub(super) etcd: Option<S<EtcdSection>>,
}

/// `[etcd]`: where the mesh's membership is published and watched.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EtcdSection {
    pub(super) endpoints: Option<S<Vec<S<String>>>>,
    pub(super) prefix: Option<S<String>>,
    pub(super) ca: Option<S<String>>,
    pub(super) cert: Option<S<String>>,
    pub(super) key: Option<S<String>>,
    pub(super) lease_ttl: Option<S<toml::Value>>,
    pub(super) subnets_within: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MeshSection {
    pub(super) interface: Option<S<String>>,
    pub(super) mtu: Option<S<i64>>,
    pub(super) auth: Option<S<String>>,
    pub(super) psk_file: Option<S<String>>,
    pub(super) private_key: Option<S<String>>,
    pub(super) ca: Option<S<String>>,
    pub(super) ike_proposals: Option<S<Vec<S<String>>>>,
    pub(super) esp_proposals: Option<S<Vec<S<String>>>>,
    /// Durations: a string such as "4h" or an integer number of seconds.
    pub(super) ike_lifetime: Option<S<toml::Value>>,
    pub(super) child_lifetime: Option<S<toml::Value>>,
    pub(super) rekey_margin: Option<S<toml::Value>>,
    pub(super) dpd_delay: Option<S<toml::Value>>,
    pub(super) encap: Option<S<String>>,
    pub(super) replay_window: Option<S<i64>>,
    pub(super) workers: Option<S<i64>>,
    pub(super) raw_tx: Option<S<String>>,
    pub(super) raw_rx: Option<S<String>>,
    pub(super) control_socket: Option<S<String>>,
    pub(super) firewall: Option<S<String>>,
    pub(super) nat_keepalive: Option<S<toml::Value>>,
    pub(super) ike_fragment_size: Option<S<i64>>,
    /// A port (on this host's own address) or an address and port.
    pub(super) metrics: Option<S<toml::Value>>,
    pub(super) libvirt_range: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HostSection {
    pub(super) name: Option<S<String>>,
    pub(super) address: Option<S<Addresses>>,
    pub(super) subnets: Option<S<Subnets>>,
    pub(super) libvirt_networks: Option<S<Vec<S<String>>>>,
    pub(super) libvirt_range: Option<S<Vec<S<String>>>>,
    pub(super) id: Option<S<String>>,
    pub(super) port: Option<S<i64>>,
    pub(super) pubkey: Option<S<String>>,
    pub(super) cert: Option<S<String>>,
}

/// `subnets`: a list of CIDR prefixes, or a word (`"libvirt"`: read from this machine's libvirt networks, learned
/// from the traffic selectors on the others). A hand-written visitor rather than an untagged enum, so that each
/// list element keeps its place in the file.
#[derive(Debug)]
pub(super) enum Subnets {
    Word(String),
    List(Vec<S<String>>),
}

impl<'de> Deserialize<'de> for Subnets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Subnets, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Subnets;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of subnets such as [\"198.19.1.0/24\"], or \"libvirt\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Subnets, E> {
                Ok(Subnets::Word(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Subnets, A::Error> {
                let mut list = Vec::new();
                while let Some(x) = seq.next_element::<S<String>>()? {
                    list.push(x);
                }
                Ok(Subnets::List(list))
            }
        }
        d.deserialize_any(V)
    }
}

/// `address`: one underlay address, or a list of an IPv4 and an IPv6 one (dual stack).
#[derive(Debug)]
pub(super) enum Addresses {
    One(String),
    List(Vec<S<String>>),
}

impl<'de> Deserialize<'de> for Addresses {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Addresses, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Addresses;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "an address such as \"198.18.0.1\", or an IPv4 and an IPv6 one: [\"198.18.0.1\", \"2001:db8::1\"]",
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Addresses, E> {
                Ok(Addresses::One(v.to_owned()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Addresses, A::Error> {
                let mut list = Vec::new();
                while let Some(x) = seq.next_element::<S<String>>()? {
                    list.push(x);
                }
                Ok(Addresses::List(list))
            }
        }
        d.deserialize_any(V)
    }
}
