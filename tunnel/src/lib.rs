//! vmsecd, the daemon of a mesh of hypervisors whose VM subnets reach each other through IKEv2/ESP tunnels.
//!
//! This library is the daemon's infrastructure, driven by the event loop in [`daemon`]:
//! - [`config`]: the mesh file, validated, and which host this machine is;
//! - [`tun`]: the route-based TUN interface, non-blocking, in batches, optionally multi-queue;
//! - [`route`]: routes into the TUN, addresses, and this machine's addresses, over NETLINK_ROUTE;
//! - [`failclosed`]: unreachable routes that keep remote-subnet traffic off the underlay when no tunnel carries it;
//! - [`prefix`]: CIDR prefixes;
//! - [`firewall`]: vmsecd's own iptables rules ahead of libvirt's (no NAT, accept, MSS clamp), kept in place;
//! - [`control_client`]: one-line requests to a running daemon (`vmsecd reload`, `vmsecd firewall-check`);
//! - [`libvirt`]: libvirt's network definitions (a leaf) and its network hook (`vmsecd install-hook`).
//!
//! The protocols themselves are sans-IO crates: `ike` (IKEv2) and `esp` (the ESP datapath).
#![warn(missing_docs, unreachable_pub)]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod control_client;
pub mod daemon;
pub mod failclosed;
pub mod firewall;
pub mod libvirt;
pub mod membership;
pub mod prefix;
pub mod route;
#[cfg(test)]
mod test_root;
pub mod tun;
pub(crate) mod wire;
