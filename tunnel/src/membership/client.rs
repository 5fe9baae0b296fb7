//! The etcd side: a task that publishes this host's entry under a lease it keeps alive, reads and watches
//! the mesh's prefix, and hands the daemon the entries it sees through a `tokio::sync::watch` channel, at most
//! every [`PUBLISH_INTERVAL`]. It never blocks the event loop: the loop only sees the channel change.
//!
//! When etcd cannot be reached the channel keeps its last value (the daemon keeps the last membership seen,
//! and its tunnels); the task retries with back-off, and on reconnection grants a new lease, writes the entry
//! again and reads the whole prefix before watching, so it catches up on whatever it missed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, PutOptions, TlsOptions,
    WatchOptions,
};
use tokio::sync::{oneshot, watch};

use super::entry::{MAX_ENTRY_BYTES, MAX_KEYS};
use crate::config::etcd::EtcdSettings;

/// The daemon is told of changes at most this often: a burst of joins (a fleet starting) is one reload.
pub const PUBLISH_INTERVAL: Duration = Duration::from_millis(500);
/// Connecting and each request get this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Back-off between attempts to reach etcd, doubling up to the maximum: short, so that once etcd is back
/// this host writes its entry again before its old lease (renewed in full by a restarted leader) expires.
const RETRY: (Duration, Duration) = (Duration::from_millis(500), Duration::from_secs(2));
/// Leaving (revoking the lease, which deletes the entry) gets this long at shutdown.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the prefix holds: host name (the key with the prefix stripped) to (create revision, value). Entries
/// over [`MAX_ENTRY_BYTES`] are kept as empty values (refused by the parser with the size named).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Entries {
    /// By name.
    pub by_name: BTreeMap<String, (i64, Arc<[u8]>)>,
    /// Keys left out because [`MAX_KEYS`] were already held.
    pub left_out: usize,
}

/// The daemon's handle on the task.
#[derive(Debug)]
pub struct Membership {
    /// Changes, at most every [`PUBLISH_INTERVAL`].
    pub entries: watch::Receiver<Arc<Entries>>,
    leave: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Membership {
    /// Starts the task: `own` is this host's entry (JSON), written at `PREFIX` + `name`.
    pub fn start(settings: EtcdSettings, name: &str, own: Vec<u8>) -> Membership {
        let (tx, rx) = watch::channel(Arc::new(Entries::default()));
        let (leave_tx, leave_rx) = oneshot::channel();
        let key = format!("{}{name}", settings.prefix);
        let task = tokio::spawn(run(settings, key, own, tx, leave_rx));
        Membership {
            entries: rx,
            leave: Some(leave_tx),
            task,
        }
    }

    /// Deletes this host's entry (revokes its lease) and ends the task: a clean stop, so the others drop this
    /// host at once rather than when the lease expires. Waits at most [`LEAVE_TIMEOUT`] and a little more.
    pub async fn leave(mut self) {
        if let Some(l) = self.leave.take() {
            let _ = l.send(());
        }
        if tokio::time::timeout(LEAVE_TIMEOUT + Duration::from_secs(1), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn options(s: &EtcdSettings) -> anyhow::Result<ConnectOptions> {
    let mut o = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(3));
    if let Some(ca) = &s.ca {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| anyhow::anyhow!("etcd: cannot read {}: {e}", p.display()))
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let Some((cert, key)) = &s.client {
            // The key lets its holder write the mesh's entries: checked as this host's IKE key is.
            let key = crate::config::read_private_key_file(key)
                .map_err(|e| anyhow::anyhow!("etcd: {e}"))?;
            tls = tls.identity(Identity::from_pem(read(cert)?, key.as_slice()));
        }
        o = o.with_tls(tls);
    }
    Ok(o)
}

/// Why a session ended.
enum End {
    /// The daemon stops: leave done.
    Left,
    /// etcd failed; try again.
    Failed(anyhow::Error),
}

async fn run(
    s: EtcdSettings,
    key: String,
    own: Vec<u8>,
    tx: watch::Sender<Arc<Entries>>,
    mut leave: oneshot::Receiver<()>,
) {
    let mut delay = RETRY.0;
    let mut failing: Option<String> = None;
    // One member at a time, the next one after a failure: a client balanced over all of them kept sending to a
    // member that was down (measured with etcd-client 0.21: every retry went to the dead member's address).
    let mut next = 0usize;
    loop {
        let endpoint = &s.endpoints[next % s.endpoints.len()];
        match session(&s, endpoint, &key, &own, &tx, &mut leave, &mut failing).await {
            End::Left => return,
            End::Failed(e) => {
                next = next.wrapping_add(1);
                let msg = format!("{e:#}");
                if failing.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(
                        %endpoint,
                        "etcd: {msg}; tunnels keep the last membership seen; retrying (logged again only if the \
                         error changes)"
                    );
                    failing = Some(msg);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = &mut leave => return,
        }
        delay = (delay * 2).min(RETRY.1);
    }
}

/// The longest name under the prefix that is kept (and then refused by the parser, which takes at most 63
/// bytes): etcd keys may be 1.5 MiB long, and a name is held for as long as its key exists, so longer ones are
/// skipped as keys outside the prefix are.
const MAX_NAME_IN_KEY: usize = 255;

fn name_of<'a>(prefix: &str, key: &'a [u8]) -> Option<&'a str> {
    if key.len() > prefix.len().saturating_add(MAX_NAME_IN_KEY) {
        return None;
    }
    std::str::from_utf8(key).ok()?.strip_prefix(prefix)
}

fn value_of(v: &[u8]) -> Arc<[u8]> {
    if v.len() > MAX_ENTRY_BYTES {
        // The parser refuses an empty value; the size goes in the log line through the placeholder.
        Arc::from(format!("{{\"too_large\":{}}}", v.len()).into_bytes())
    } else {
        Arc::from(v)
    }
}

async fn session(
    s: &EtcdSettings,
    endpoint: &str,
    key: &str,
    own: &[u8],
    tx: &watch::Sender<Arc<Entries>>,
    leave: &mut oneshot::Receiver<()>,
    failing: &mut Option<String>,
) -> End {
    macro_rules! t {
        ($what:expr, $e:expr) => {
            match tokio::time::timeout(REQUEST_TIMEOUT, $e).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return End::Failed(anyhow::anyhow!("{}: {e}", $what)),
                Err(_) => {
                    return End::Failed(anyhow::anyhow!(
                        "{}: no answer in {REQUEST_TIMEOUT:?}",
                        $what
                    ))
                }
            }
        };
    }
    let opts = match options(s).await {
        Ok(o) => o,
        Err(e) => return End::Failed(e),
    };
    let mut c = t!("connecting", Client::connect([endpoint], Some(opts)));
    let ttl = s.lease_ttl.as_secs() as i64;
    let lease = t!("granting a lease", c.lease_grant(ttl, None)).id();
    t!(
        "publishing this host's entry",
        c.put(key, own, Some(PutOptions::new().with_lease(lease)))
    );
    let got = t!(
        "reading the mesh's entries",
        c.get(
            s.prefix.as_str(),
            Some(
                GetOptions::new()
                    .with_prefix()
                    .with_limit(MAX_KEYS as i64 + 1)
            )
        )
    );
    let mut entries = Entries::default();
    for kv in got.kvs() {
        let Some(name) = name_of(&s.prefix, kv.key()) else {
            continue;
        };
        if entries.by_name.len() >= MAX_KEYS {
            entries.left_out += 1;
            continue;
        }
        entries.by_name.insert(
            name.to_owned(),
            (kv.create_revision(), value_of(kv.value())),
        );
    }
    let rev = got.header().map_or(0, |h| h.revision());
    tx.send_replace(Arc::new(entries.clone()));
    if failing.take().is_some() {
        tracing::info!(
            "etcd: reachable again; membership read anew ({} entries)",
            entries.by_name.len()
        );
    } else {
        tracing::info!(
            key,
            lease_ttl = ttl,
            "etcd: this host's entry published; {} entries",
            entries.by_name.len()
        );
    }
    let mut watch = t!(
        "watching the mesh's prefix",
        c.watch(
            s.prefix.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(rev + 1)
            )
        )
    );
    let (mut keeper, mut kept) = t!("keeping the lease alive", c.lease_keep_alive(lease));
    let mut keep_tick = tokio::time::interval(s.lease_ttl / 3);
    let mut publish = tokio::time::interval(PUBLISH_INTERVAL);
    publish.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut dirty = false;
    let mut last_ack = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = &mut *leave => {
                // Revoking the lease deletes the entry: the others drop this host at once.
                let r = tokio::time::timeout(LEAVE_TIMEOUT, c.lease_revoke(lease)).await;
                match r {
                    Ok(Ok(_)) => tracing::info!(key, "etcd: this host's entry deleted"),
                    _ => tracing::warn!(key, "etcd: could not delete this host's entry; it goes when its lease expires"),
                }
                return End::Left;
            }
            _ = keep_tick.tick() => {
                if let Err(e) = keeper.keep_alive().await {
                    return End::Failed(anyhow::anyhow!("keeping the lease alive: {e}"));
                }
                if last_ack.elapsed() > s.lease_ttl {
                    return End::Failed(anyhow::anyhow!("no lease keep-alive answer for {:?}", s.lease_ttl));
                }
            }
            m = kept.message() => match m {
                Ok(Some(r)) if r.ttl() > 0 => last_ack = tokio::time::Instant::now(),
                Ok(Some(_)) => return End::Failed(anyhow::anyhow!("this host's lease expired (etcd was out of reach for longer than lease_ttl)")),
                Ok(None) => return End::Failed(anyhow::anyhow!("the lease keep-alive stream ended")),
                Err(e) => return End::Failed(anyhow::anyhow!("keeping the lease alive: {e}")),
            },
            m = watch.message() => match m {
                Ok(Some(w)) => {
                    if w.canceled() {
                        return End::Failed(anyhow::anyhow!("the watch was cancelled (compacted at revision {})", w.compact_revision()));
                    }
                    for ev in w.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let Some(name) = name_of(&s.prefix, kv.key()) else { continue };
                        match ev.event_type() {
                            EventType::Put => {
                                if entries.by_name.len() >= MAX_KEYS && !entries.by_name.contains_key(name) {
                                    entries.left_out += 1;
                                    continue;
                                }
                                entries.by_name.insert(name.to_owned(), (kv.create_revision(), value_of(kv.value())));
                            }
                            EventType::Delete => {
                                entries.by_name.remove(name);
                            }
                        }
                        dirty = true;
                    }
                }
                Ok(None) => return End::Failed(anyhow::anyhow!("the watch stream ended")),
                Err(e) => return End::Failed(anyhow::anyhow!("watching: {e}")),
            },
            _ = publish.tick() => {
                if dirty {
                    dirty = false;
                    tx.send_replace(Arc::new(entries.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd keys may be 1.5 MiB long, and the names under the prefix are kept for as long as the keys exist
    /// (and cloned at each change): a writer of a thousand such keys would have each daemon hold gigabytes.
    /// A key whose name cannot be a host's is not kept at all.
    #[test]
    fn names_too_long_for_a_host_are_not_kept() {
        let prefix = "/vmsecd/hosts/";
        assert_eq!(name_of(prefix, b"/vmsecd/hosts/h7"), Some("h7"));
        assert_eq!(name_of(prefix, b"/other/h7"), None);
        let mut long = prefix.as_bytes().to_vec();
        long.extend(std::iter::repeat_n(b'a', 1 << 20));
        assert_eq!(name_of(prefix, &long), None);
        let mut max = prefix.as_bytes().to_vec();
        max.extend(std::iter::repeat_n(b'a', MAX_NAME_IN_KEY));
        assert!(name_of(prefix, &max).is_some());
    }

    /// The etcd client key lets its holder write the mesh's entries (with `auth = "pubkey"` and raw keys: add
    /// hosts that then authenticate): like this host's IKE private key, it is refused when group or others can
    /// read it.
    #[test]
    fn an_etcd_client_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("c.pem"),
            dir.path().join("k.pem"),
        );
        for f in [&ca, &cert, &key] {
            std::fs::write(f, b"-----BEGIN X-----\n-----END X-----\n").unwrap();
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = EtcdSettings {
            endpoints: vec!["https://198.18.0.1:2379".into()],
            prefix: "/vmsecd/t/".into(),
            ca: Some(ca),
            client: Some((cert, key.clone())),
            lease_ttl: Duration::from_secs(10),
            subnets_within: Vec::new(),
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let e = rt.block_on(options(&s)).unwrap_err().to_string();
        assert!(e.contains("group or others"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(rt.block_on(options(&s)).is_ok());
    }
}
