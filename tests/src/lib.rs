//! End-to-end test support: the strongSwan interop bed ([`bed`]), network namespaces ([`netns`]), strongSwan's charon as a peer ([`strongswan`]),
//! vmsecd itself ([`vmsecd`]), real libvirtd networks ([`libvirt`]), QEMU Linux guests ([`guest`]) with kernel IPsec peers in them
//! ([`kernel_peer`], [`libreswan`]), and traffic and capture helpers ([`traffic`]) shared by the tests in `tests/`.
//!
//! Everything here needs root and real namespaces; the tests using it fail (never skip) without them.

pub mod bed;
pub mod demo;
pub mod dualstack;
pub mod etcd;
pub mod faultlink;
pub mod guest;
pub mod guest_charon;
pub mod hostile;
pub mod kernel_capture;
pub mod kernel_peer;
pub mod libreswan;
pub mod libvirt;
pub mod libvirt_guest;
pub mod netns;
pub mod prometheus;
pub mod strongswan;
pub mod traffic;
pub mod vmsecd;
