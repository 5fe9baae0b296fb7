//! Every timing constant of the daemon's control plane in one place (the datapath's own, such as how long a
//! rekeyed inbound SA lingers, stay with the datapath): when to initiate, how to back off, how often to check
//! sequence numbers, how long to wait at shutdown.

use std::time::Duration;

/// How often the outbound SAs' sequence numbers are checked against the rekey threshold: at 10 million packets
/// a second, a 32-bit space's last eighth lasts almost a minute.
pub(super) const SEQ_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Wait before initiating towards a peer with a higher address: it is the one expected to initiate.
pub(super) const FOLLOWER_DELAY: Duration = Duration::from_secs(3);
/// The first wait before initiating again after an IKE SA went down or failed; reset when one comes up.
pub(super) const BACKOFF_FIRST: Duration = Duration::from_secs(2);
/// The back-off doubles after each failure up to this.
pub(super) const BACKOFF_MAX: Duration = Duration::from_secs(120);
/// How long the event loop sleeps when no timer at all is pending.
pub(super) const IDLE_WAKE: Duration = Duration::from_secs(60);
/// At shutdown, how long each peer has to acknowledge the deletes.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);
