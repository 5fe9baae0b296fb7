//! End-to-end test support: network namespaces ([`netns`]) and helpers shared by the tests in `tests/`.
//!
//! Everything here needs root and real namespaces; the tests using it fail (never skip) without them.

pub mod netns;
