//! For the few unit tests of this crate that need root (they give a file to another user with `chown`): one
//! check, so that `cargo test` as another user fails them with the test's name, the reason and the fix, instead
//! of an `EPERM` from deep inside. They never skip. The end-to-end tests (package `vmsecd-e2e`) have their own
//! check, `require_root_and_ip` in tests/src/netns.rs.

/// Panics, naming `test` and `why`, unless the effective uid is 0.
pub(crate) fn require_root(test: &str, why: &str) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "{test} needs root: {why}; the effective uid is {euid}. Run the vmsecd unit tests as root, e.g. \
         `sudo -E cargo test -p vmsecd --lib` (the README's \"Tests\" lists every test that needs root). It never \
         skips."
    );
}
