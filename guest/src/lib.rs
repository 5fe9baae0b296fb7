//! Linux guests under QEMU (TCG) for `vmsecd demo --vms` and the end-to-end tests: Debian's kernel (its ESP/XFRM,
//! virtio and 9p are modules, which the host kernel may lack) booted straight into the host's own root file
//! system, read-only over virtio-9p under a tmpfs overlay, so every tool installed on the host runs in the guest.
//! Shared by the daemon's binary (the demo) and the tests crate, so that neither depends on the other:
//!
//! - [`image`]: the cached kernel and busybox initramfs ([`image::image`]).
//! - [`qemu`]: QEMU's command line for such a guest, NICs apart (the tests pass taps as descriptors, the demo by
//!   name).
//! - [`agent`]: the command agent, a 9p share through which the host runs scripts in the guest.
//! - [`FileLock`]: an `flock`, for the image cache and the tests' one-guest-at-a-time lock.

pub mod agent;
pub mod image;
pub mod qemu;

use std::os::fd::AsRawFd;
use std::path::Path;

/// An exclusive `flock` on a file, released when dropped.
#[derive(Debug)]
pub struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    /// Waits for and takes the lock on `path` (created if missing).
    pub fn acquire(path: &Path) -> std::io::Result<FileLock> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)?;
        // SAFETY: flock on a descriptor this function owns; blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileLock { _file: file })
    }
}
