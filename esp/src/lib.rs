//! ESP (RFC 4303).
