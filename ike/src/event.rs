//! What the IKE engine tells its driver: datagrams to send and things that happened.

use std::net::SocketAddr;

use crate::message::TrafficSelector;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Where to.
    pub remote: SocketAddr,
    /// From which of our ports: 500, or 4500 after NAT detection (then `data` starts with the non-ESP marker).
    pub local_port: u16,
    /// The UDP payload.
    pub data: Vec<u8>,
}

/// An ESP SA pair ready to install: everything the datapath needs, nothing it does not.
#[derive(Debug, Clone)]
pub struct ChildSaInfo {
    /// Name of the peer (from its configuration).
    pub peer: String,
    /// The IKE SA it belongs to (our SPI, for logs).
    pub ike_spi: u64,
    /// SPI of the inbound SA (we chose it).
    pub spi_in: u32,
    /// SPI of the outbound SA (the peer chose it).
    pub spi_out: u32,
    /// The ESP transform.
    pub transform: esp::Transform,
    /// 64-bit extended sequence numbers.
    pub esn: bool,
    /// Keying material of the inbound SA.
    pub keys_in: esp::KeyMaterial,
    /// Keying material of the outbound SA.
    pub keys_out: esp::KeyMaterial,
    /// Our side's negotiated selectors.
    pub ts_local: Vec<TrafficSelector>,
    /// The peer's negotiated selectors.
    pub ts_remote: Vec<TrafficSelector>,
    /// The peer's address and port for ESP.
    pub remote: SocketAddr,
    /// Carry ESP in UDP (port 4500) rather than as IP protocol 50.
    pub udp_encap: bool,
    /// The key exchange used for this Child SA, if PFS.
    pub pfs_group: Option<u16>,
}

/// How an IKE SA's Child SAs carry ESP, and why: what NAT detection and the peers' announcements decided in
/// IKE_SA_INIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encap {
    /// Raw ESP (IP protocol 50): no NAT, and the peer did not announce vmsecd's Vendor ID (or we did not).
    Raw,
    /// ESP in UDP 4500: a NAT_DETECTION hash did not match. A NAT is on the path, or the peer forces
    /// encapsulation the way strongSwan's `encap = yes` does.
    Nat,
    /// ESP in UDP 4500 because our configuration forces it (`encap = "udp"`).
    Forced,
    /// ESP in UDP 4500 because both sides announced vmsecd's Vendor ID ([`crate::vendor`]), no NAT needed.
    VmsecdPeer,
}

impl Encap {
    /// True if ESP is carried in UDP 4500.
    pub fn udp(self) -> bool {
        self != Encap::Raw
    }

    /// A word for logs and status.
    pub fn as_str(self) -> &'static str {
        match self {
            Encap::Raw => "raw",
            Encap::Nat => "udp-nat",
            Encap::Forced => "udp-forced",
            Encap::VmsecdPeer => "udp-vmsecd",
        }
    }
}

/// Why an SA went away or never came up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// The peer deleted it.
    DeletedByPeer,
    /// We deleted it (shutdown, reconfiguration).
    DeletedByUs,
    /// Replaced by a rekeyed SA.
    Rekeyed,
    /// No answer after every retransmission.
    PeerDead,
    /// Its lifetime ended and no rekey had replaced it (RFC 7296 2.8).
    Expired,
    /// The peer refused our authentication, or failed to prove its own.
    AuthenticationFailed(String),
    /// No proposal in common; both sides' proposals are named.
    NoProposalChosen {
        /// What we offered or accept.
        ours: String,
        /// What the peer offered (when we are responder) or empty.
        theirs: String,
    },
    /// The traffic selectors do not overlap.
    TsUnacceptable(String),
    /// The peer answered with an error notification.
    PeerError(String),
    /// The peer sent something that breaks the protocol.
    Protocol(String),
    /// The peer started anew: a newer IKE SA it set up carried INITIAL_CONTACT, so this older one is gone on its
    /// side (a reboot, a restarted daemon). Closed here without a message.
    PeerRestarted,
}

/// The longest text field a [`Reason`] shows. Fields made from what a peer sent are capped at
/// [`crate::text::MAX_UNTRUSTED_CHARS`] where they are made; this second bound, with the escaping of control
/// characters, keeps every reason one line of bounded length whatever a future change puts in it.
const MAX_REASON_FIELD_CHARS: usize = 1000;

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let safe = |s: &str| crate::text::capped(s, MAX_REASON_FIELD_CHARS);
        match self {
            Reason::DeletedByPeer => f.write_str("deleted by the peer"),
            Reason::DeletedByUs => f.write_str("deleted by us"),
            Reason::Rekeyed => f.write_str("replaced by a rekeyed SA"),
            Reason::Expired => f.write_str("its lifetime ended before a rekey replaced it"),
            Reason::PeerDead => {
                f.write_str("peer did not answer any retransmission: declared dead")
            }
            Reason::AuthenticationFailed(s) => write!(f, "authentication failed: {}", safe(s)),
            Reason::NoProposalChosen { ours, theirs } if theirs.is_empty() => {
                write!(
                    f,
                    "no proposal chosen: the peer accepted none of ours ({})",
                    safe(ours)
                )
            }
            Reason::NoProposalChosen { ours, theirs } => {
                write!(
                    f,
                    "no proposal chosen: ours {}, theirs {}",
                    safe(ours),
                    safe(theirs)
                )
            }
            Reason::TsUnacceptable(s) => write!(f, "traffic selectors unacceptable: {}", safe(s)),
            Reason::PeerError(s) => write!(f, "peer answered {}", safe(s)),
            Reason::Protocol(s) => write!(f, "protocol error: {}", safe(s)),
            Reason::PeerRestarted => f.write_str(
                "the peer started anew (INITIAL_CONTACT in a newer IKE SA): this older one is gone on its side",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_one_bounded_line() {
        let r = Reason::Protocol("a\nb".repeat(5000));
        let line = r.to_string();
        assert!(
            !line.contains('\n') && line.len() < 2 * MAX_REASON_FIELD_CHARS,
            "{}",
            line.len()
        );
    }
}

/// Something the driver must act on or log.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// The IKE SA is authenticated and usable.
    IkeUp {
        /// Peer name.
        peer: String,
        /// Initiator and responder SPIs.
        spis: (u64, u64),
        /// Negotiated algorithms, strongSwan style.
        algorithms: String,
        /// Where the peer is.
        remote: SocketAddr,
        /// NAT detected (or encapsulation forced, or agreed between vmsecd peers): IKE and ESP use port 4500.
        nat: bool,
        /// How ESP is carried, and why.
        encap: Encap,
        /// True if we initiated.
        initiator: bool,
        /// From the first IKE_SA_INIT sent (initiator) or received (responder) to now.
        handshake: std::time::Duration,
    },
    /// The IKE SA was rekeyed (RFC 7296 2.18): its Child SAs now belong to the new IKE SA, which carries every
    /// later exchange. Nothing changes for the datapath.
    IkeRekeyed {
        /// Peer name.
        peer: String,
        /// Initiator and responder SPIs of the replaced IKE SA.
        old_spis: (u64, u64),
        /// Initiator and responder SPIs of the new IKE SA.
        new_spis: (u64, u64),
        /// True if we initiated the rekey exchange that survived (we are then the new SA's initiator).
        initiator: bool,
    },
    /// The IKE SA is gone, with all its Child SAs.
    IkeDown {
        /// Peer name.
        peer: String,
        /// Why.
        reason: Reason,
        /// A responder-side IKE SA that never authenticated the peer (a refused IKE_SA_INIT, a failed IKE_AUTH):
        /// anyone who can send from the peer's address can cause this, so it must not change how or when we
        /// initiate towards the peer.
        unauthenticated: bool,
    },
    /// A Child SA pair is ready: install it.
    ChildUp(Box<ChildSaInfo>),
    /// A Child SA replaced another: install the new one, keep the old inbound SA until `ChildDown`.
    ///
    /// When we initiated the rekey the peer installed both new SAs before answering, so the new outbound SA can
    /// carry traffic at once. When we answered it (`we_initiated` false), the peer installs its new inbound SA
    /// only once it has processed our response: keep sending on the old outbound SA until the peer deletes the
    /// old SA or traffic arrives on the new inbound one (RFC 7296 2.8; strongSwan delays its outbound SA the
    /// same way), or packets sent in between are lost.
    ChildRekeyed {
        /// Inbound SPI of the SA it replaces.
        old_spi_in: u32,
        /// The new SA.
        new: Box<ChildSaInfo>,
        /// True if we initiated the rekey.
        we_initiated: bool,
    },
    /// A Child SA pair is gone: remove it. Or, with `refused`, a Child SA never came up: we or the peer refused
    /// it, nothing was installed, and the IKE SA and its other Child SAs stay.
    ChildDown {
        /// Peer name.
        peer: String,
        /// Its inbound SPI (0 when `refused`).
        spi_in: u32,
        /// Its outbound SPI (0 when `refused`).
        spi_out: u32,
        /// Why.
        reason: Reason,
        /// The Child SA never came up (a CREATE_CHILD_SA either side refused, or whose answer we could not
        /// use): there is nothing to remove, only the reason to tell.
        refused: bool,
    },
}
