//! The Vendor ID vmsecd sends and understands: ESP in UDP between two vmsecd hosts.
//!
//! Raw ESP (IP protocol 50) has no segmentation offload: the kernel sends and receives it one datagram at a
//! time, while ESP in UDP 4500 travels as UDP GSO/GRO batches. Between two vmsecd hosts with `encap = "auto"`
//! ESP in UDP is therefore the fast path, and raw ESP stays the choice towards kernel-IPsec peers without a
//! NAT. Each side announces the Vendor ID below in IKE_SA_INIT; when both did, both move IKE and ESP to port
//! 4500 as after NAT detection, without faking a NAT_DETECTION hash (that is for `encap = "udp"`, which has to
//! convince peers that do not know this ID, as strongSwan's `encap = yes` does).
//!
//! The IKE_SA_INIT messages are signed by both sides' AUTH payloads (RFC 7296 2.15), so an attacker who adds
//! or strips the ID makes IKE_AUTH fail: the choice is authenticated once the IKE SA is.

//= https://www.rfc-editor.org/rfc/rfc7296#section-3.12
//# The Vendor ID payload, denoted V in this document, contains a vendor-defined constant. The constant is
//# used by vendors to identify and recognize remote instances of their implementations. This mechanism allows
//# a vendor to experiment with new features while maintaining backward compatibility.
//
//= https://www.rfc-editor.org/rfc/rfc7296#section-3.12
//# Unfamiliar Vendor IDs MUST be ignored.

use crate::message::Payload;

/// vmsecd's Vendor ID: "with `encap = "auto"`, I prefer ESP in UDP 4500 towards another vmsecd".
///
/// Readable text rather than a hash, so that a capture shows what it means; long and specific enough not to
/// collide with another implementation's constant.
pub const UDP_ENCAP_VID: &[u8] = b"vmsecd: ESP in UDP 4500 between vmsecd peers, v1";

/// The Vendor ID payload to add to an IKE_SA_INIT message.
pub fn udp_encap_payload() -> Payload {
    Payload::Vendor(UDP_ENCAP_VID.to_vec())
}

/// True if the peer's IKE_SA_INIT message carries [`UDP_ENCAP_VID`].
pub fn announces_udp_encap(payloads: &[Payload]) -> bool {
    payloads
        .iter()
        .any(|p| matches!(p, Payload::Vendor(v) if v.as_slice() == UDP_ENCAP_VID))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_constant_counts() {
        assert!(announces_udp_encap(&[
            Payload::Vendor(b"other".to_vec()),
            udp_encap_payload()
        ]));
        assert!(!announces_udp_encap(&[Payload::Vendor(
            UDP_ENCAP_VID[..10].to_vec()
        )]));
        assert!(!announces_udp_encap(&[]));
    }
}
