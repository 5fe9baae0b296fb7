//! libvirt, as far as vmsecd meets it, in two leaves that do not know each other:
//! - [`network`]: this machine's libvirt network definitions (names, modes, bridges, subnets), read from disk;
//!   used by the configuration for `subnets = "libvirt"` and by `vmsecd check`;
//! - [`hook`]: libvirt's network hook script, which `vmsecd install-hook` writes so that libvirt pokes the
//!   daemon's firewall check whenever a network starts.

pub mod hook;
pub mod network;
