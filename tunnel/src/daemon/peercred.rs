//! Who holds the other end of a Unix socket (SO_PEERCRED), and the message naming a process that holds the
//! control socket instead of vmsecd as root. A leaf, so that the control socket (`control.rs`) and the
//! firewall's checks (`firewall/mod.rs`) both use it without importing each other.

use crate::config::ControlSocket;

/// The credentials (SO_PEERCRED) of the process at the other end of a Unix stream socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cred {
    /// Its effective user id when it connected or bound.
    pub uid: u32,
    /// Its process id.
    pub pid: i32,
}

/// The credentials of the other end of a connected Unix stream socket.
pub fn peer_cred(fd: &impl std::os::fd::AsFd) -> std::io::Result<Cred> {
    use std::os::fd::AsRawFd;
    let mut c = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid descriptor, and a ucred buffer of the stated size.
    let r = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut c as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Cred {
        uid: c.uid,
        pid: c.pid,
    })
}

/// The message for a control socket held by someone other than root: any local user can bind an abstract name
/// first, and would then read what `vmsecd reload` and the libvirt hook send and answer what it likes.
pub fn squatter_message(sock: &ControlSocket, c: Cred) -> String {
    format!(
        "control socket {sock} is held by uid {} pid {}, not by vmsecd as root; that process may be impersonating \
         vmsecd: see what it is (ps -o user,pid,cmd -p {}), stop it, and restart vmsecd",
        c.uid, c.pid, c.pid
    )
}
