//! The event loop that drives IKE and ESP: sockets on 500 and 4500 (and raw ESP), the TUN, the routes, the
//! timers, the control socket, SIGTERM. Not built yet: [`run`] is the place it goes.

use crate::config::Config;

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// This build has no event loop.
    #[error("the daemon event loop is not built yet")]
    NotBuilt,
}

/// Runs the daemon for the local host of `config` until SIGTERM: called by `vmsecd run` inside a tokio
/// multi-thread runtime, after the mesh file was validated.
pub async fn run(config: Config) -> Result<(), Error> {
    tracing::debug!(host = %config.local().name, "daemon::run called");
    Err(Error::NotBuilt)
}
