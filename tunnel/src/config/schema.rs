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
    pub(super) control_socket: Option<S<String>>,
    pub(super) firewall: Option<S<String>>,
    pub(super) nat_keepalive: Option<S<toml::Value>>,
    pub(super) ike_fragment_size: Option<S<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HostSection {
    pub(super) name: Option<S<String>>,
    pub(super) address: Option<S<String>>,
    pub(super) subnets: Option<S<Vec<S<String>>>>,
    pub(super) id: Option<S<String>>,
    pub(super) port: Option<S<i64>>,
    pub(super) pubkey: Option<S<String>>,
    pub(super) cert: Option<S<String>>,
}
