//! IKEv2 (RFC 7296).
