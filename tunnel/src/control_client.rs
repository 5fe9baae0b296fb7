//! The client side of the daemon's control socket, for the one-line requests: `vmsecd reload`,
//! `vmsecd firewall-check` and libvirt's network hook. The server side and `vmsecd status` are in
//! `daemon::control`. Kept apart from [`crate::firewall`] so that the firewall does not depend on the daemon
//! that drives it.

use std::io::Write as _;
use std::time::Duration;

use crate::config::ControlSocket;
use crate::daemon::control::{peer_cred, squatter_message};

/// How long a request waits to send its line and to read the daemon's answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Asks the daemon on `socket` to check its firewall rules now (what libvirt's network hook runs); returns the
/// daemon's answer.
pub fn request_check(socket: &ControlSocket) -> Result<String, crate::firewall::Error> {
    request(socket, "firewall-check")
}

/// Sends one request line (`firewall-check`, `reload`) to the daemon on `socket`; returns its one-line answer.
pub fn request(socket: &ControlSocket, what: &str) -> Result<String, crate::firewall::Error> {
    use std::io::{BufRead as _, BufReader};
    use std::os::linux::net::SocketAddrExt as _;
    use std::os::unix::net::{SocketAddr, UnixStream};
    let err = |source| crate::firewall::Error::Control {
        socket: socket.to_string(),
        source,
    };
    let addr = match socket {
        ControlSocket::Abstract(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        ControlSocket::Path(p) => SocketAddr::from_pathname(p),
    }
    .map_err(err)?;
    let mut s = UnixStream::connect_addr(&addr).map_err(err)?;
    // Any local user can bind an abstract name before vmsecd does: talk only to root.
    let cred = peer_cred(&s).map_err(err)?;
    if cred.uid != 0 {
        return Err(crate::firewall::Error::NotVmsecd(squatter_message(
            socket, cred,
        )));
    }
    s.set_read_timeout(Some(REQUEST_TIMEOUT)).map_err(err)?;
    s.set_write_timeout(Some(REQUEST_TIMEOUT)).map_err(err)?;
    s.write_all(format!("{what}\n").as_bytes()).map_err(err)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(err)?;
    Ok(line.trim().to_owned())
}
