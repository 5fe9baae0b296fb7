//! The metrics listener: `GET /metrics` over HTTP/1.x on the `metrics` address of `[mesh]` (off unless set).
//!
//! It runs in tasks of its own and asks the event loop for a [`Snapshot`] at most once per [`SNAPSHOT_TTL`],
//! however often it is scraped: no client can stall the loop or make it work more. Anyone who can reach the
//! address can connect, so each connection is bounded: at most [`MAX_CONNECTIONS`] at once (a new one takes the
//! slot of the oldest that has not sent its whole request head yet, else it is closed at once), a request head of at most [`MAX_REQUEST_HEAD`] bytes read within [`IO_TIMEOUT`], the answer written
//! within [`IO_TIMEOUT`], then the connection closed. Nothing a client sends is logged or kept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::metrics::{render, EventCounters, Snapshot};

/// Connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 4;
/// Longest request head (request line and headers) read.
pub(crate) const MAX_REQUEST_HEAD: usize = 4096;
/// Reading the request and writing the answer each get this long.
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// One snapshot of the event loop answers every scrape within this long.
pub(crate) const SNAPSHOT_TTL: Duration = Duration::from_secs(1);
/// How long a scrape waits for the event loop.
const LOOP_TIMEOUT: Duration = Duration::from_secs(5);

/// What the event loop is asked for: a snapshot, sent back on the channel.
pub(crate) type SnapshotRequest = oneshot::Sender<Snapshot>;

/// Binds the metrics address (before the event loop starts, so that a bad address stops the start-up).
pub(crate) fn listen(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    let l = std::net::TcpListener::bind(addr).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen for metrics on {addr} (mesh.metrics): {e}; choose a free port on one of this host's \
             addresses, or remove mesh.metrics"
        )
    })?;
    l.set_nonblocking(true)?;
    Ok(TcpListener::from_std(l)?)
}

/// How long a new connection waits for the slot of the connection it displaced (which gives it up at its next
/// poll).
const EVICT_WAIT: Duration = Duration::from_millis(200);

/// Connections still reading their request head, oldest first, each with what tells it to give its slot up.
type Reading = Arc<std::sync::Mutex<std::collections::VecDeque<(u64, Arc<tokio::sync::Notify>)>>>;

fn lock(
    r: &Reading,
) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(u64, Arc<tokio::sync::Notify>)>> {
    r.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The last rendered text and when its snapshot was taken.
type Cache = Arc<tokio::sync::Mutex<Option<(Instant, Arc<String>)>>>;

/// Serves scrapes in tasks of their own (see the module documentation).
pub(crate) fn serve(
    listener: TcpListener,
    to_loop: mpsc::Sender<SnapshotRequest>,
    events: EventCounters,
) -> tokio::task::JoinHandle<()> {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let cache: Cache = Arc::default();
    let reading: Reading = Arc::default();
    let mut next_id: u64 = 0;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                // EMFILE and the like: wait a little instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let permit = match slots.clone().try_acquire_owned() {
                Ok(p) => p,
                // Full: the oldest connection still reading its request head gives its slot up. Connections
                // that say nothing (slowloris) then hold no slot against a scraper, whose request arrives with
                // its connection; to lock it out, a client must now open connections faster than it sends.
                Err(_) => {
                    let Some((_, stop)) = lock(&reading).pop_front() else {
                        continue; // every slot is answering a request: closed at once
                    };
                    stop.notify_one();
                    match tokio::time::timeout(EVICT_WAIT, slots.clone().acquire_owned()).await {
                        Ok(Ok(p)) => p,
                        _ => continue,
                    }
                }
            };
            let (to_loop, events, cache) = (to_loop.clone(), events.clone(), cache.clone());
            let (id, stop) = (next_id, Arc::new(tokio::sync::Notify::new()));
            next_id += 1;
            lock(&reading).push_back((id, stop.clone()));
            let reading = reading.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let head = tokio::select! {
                    head = read_head(&mut stream) => head,
                    () = stop.notified() => None,
                };
                lock(&reading).retain(|(i, _)| *i != id);
                if let Some(head) = head {
                    serve_one(stream, &head, &to_loop, &events, &cache).await;
                }
            });
        }
    })
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics { head_only: bool },
    NotFound,
    BadMethod,
    Bad,
}

/// Parses the request line of a complete head (`GET /metrics HTTP/1.1`); a query string is ignored.
fn parse_head(head: &[u8]) -> Asked {
    let Some(line) = head.split(|b| *b == b'\n').next() else {
        return Asked::Bad;
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return Asked::Bad;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Asked::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Asked::Bad;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Asked::BadMethod,
    };
    match target.split('?').next() {
        Some("/metrics") => Asked::Metrics { head_only },
        _ => Asked::NotFound,
    }
}

/// Reads a request head: `None` if the client sends nothing complete within [`IO_TIMEOUT`] and
/// [`MAX_REQUEST_HEAD`] bytes.
async fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; MAX_REQUEST_HEAD];
    let mut len = 0;
    let read = async {
        while len < buf.len() {
            let n = stream.read(&mut buf[len..]).await.ok()?;
            if n == 0 {
                return None;
            }
            len += n;
            if buf[..len].windows(4).any(|w| w == b"\r\n\r\n")
                || buf[..len].windows(2).any(|w| w == b"\n\n")
            {
                return Some(());
            }
        }
        None
    };
    tokio::time::timeout(IO_TIMEOUT, read).await.ok()??;
    buf.truncate(len);
    Some(buf)
}

/// The text of a scrape: from the cache while it is fresh, else from a new snapshot of the event loop.
async fn metrics_text(
    to_loop: &mpsc::Sender<SnapshotRequest>,
    events: &EventCounters,
    cache: &Cache,
) -> Option<Arc<String>> {
    // Held while the loop is asked: concurrent scrapes wait for one snapshot instead of asking for several.
    let mut c = cache.lock().await;
    if let Some((at, text)) = c.as_ref() {
        if at.elapsed() < SNAPSHOT_TTL {
            return Some(text.clone());
        }
    }
    let (tx, rx) = oneshot::channel();
    to_loop.try_send(tx).ok()?;
    let snap = tokio::time::timeout(LOOP_TIMEOUT, rx).await.ok()?.ok()?;
    let text = Arc::new(render(&snap, events));
    *c = Some((Instant::now(), text.clone()));
    Some(text)
}

/// Answers a connection whose request head was read.
async fn serve_one(
    mut stream: TcpStream,
    head: &[u8],
    to_loop: &mpsc::Sender<SnapshotRequest>,
    events: &EventCounters,
    cache: &Cache,
) {
    let (status, body, head_only) = match parse_head(head) {
        Asked::Metrics { head_only } => match metrics_text(to_loop, events, cache).await {
            Some(t) => ("200 OK", t, head_only),
            None => (
                "503 Service Unavailable",
                Arc::new("vmsecd did not answer in time\n".to_owned()),
                false,
            ),
        },
        Asked::NotFound => (
            "404 Not Found",
            Arc::new("vmsecd serves /metrics only\n".to_owned()),
            false,
        ),
        Asked::BadMethod => (
            "405 Method Not Allowed",
            Arc::new("GET /metrics\n".to_owned()),
            false,
        ),
        Asked::Bad => ("400 Bad Request", Arc::new(String::new()), false),
    };
    let content_type = if status.starts_with("200") {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = async {
        stream.write_all(header.as_bytes()).await?;
        if !head_only {
            stream.write_all(body.as_bytes()).await?;
        }
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(IO_TIMEOUT, write).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the loop answers for a host with no peers and nothing counted.
    fn empty_host_snapshot() -> Snapshot {
        Snapshot {
            status: crate::daemon::control::Status {
                host: "h1".into(),
                peers: vec![],
                drops: Default::default(),
                raw_esp_out: Default::default(),
                raw_esp_in: Default::default(),
                refused: vec![],
            },
            ike: Default::default(),
            half_open: 0,
            demanding_cookies: false,
            firewall_repairs: 0,
        }
    }

    #[test]
    fn request_lines() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Asked::Metrics { head_only: false }
        );
        assert_eq!(
            parse_head(b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Asked::Metrics { head_only: true }
        );
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\n\r\n"), Asked::NotFound);
        assert_eq!(
            parse_head(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Asked::BadMethod
        );
        assert_eq!(parse_head(b"GET /metrics\r\n\r\n"), Asked::Bad);
        assert_eq!(parse_head(b"GET /metrics SSH-2.0\r\n\r\n"), Asked::Bad);
        assert_eq!(parse_head(&[0xff, b' ', b'\n', b'\n']), Asked::Bad);
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// A metrics listener on a free loopback port, served on the current runtime, whose loop answers every
    /// snapshot request with [`empty_host_snapshot`]. Returns its address, how many snapshots the loop was
    /// asked for, and the server's task.
    fn serve_an_empty_host() -> (
        std::net::SocketAddr,
        Arc<std::sync::atomic::AtomicUsize>,
        tokio::task::JoinHandle<()>,
    ) {
        let l = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, mut rx) = mpsc::channel::<SnapshotRequest>(1);
        let server = serve(l, tx, EventCounters::default());
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = asked.clone();
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = r.send(empty_host_snapshot());
            }
        });
        (addr, asked, server)
    }

    /// Clients that connect and say nothing, or send an endless head, hold neither the loop nor the other
    /// scrapes for long: with every slot but one held by silent clients, a scrape is answered at once; a head
    /// over the limit is closed unanswered; a silent client is closed after the timeout; the loop is asked for
    /// one snapshot however many scrapes come within the TTL.
    #[test]
    fn stuck_and_greedy_clients_are_bounded() {
        runtime().block_on(async {
            let (addr, asked, _server) = serve_an_empty_host();
            let mut silent = Vec::new();
            for _ in 0..MAX_CONNECTIONS - 1 {
                silent.push(TcpStream::connect(addr).await.unwrap());
            }
            let scrape = || async {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut text = String::new();
                s.read_to_string(&mut text).await.unwrap();
                text
            };
            let t = Instant::now();
            let text = scrape().await;
            assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
            assert!(text.contains("# EOF"), "{text}");
            assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
            // Slots come back as scrapes end; the snapshot is reused within its TTL.
            for _ in 0..3 {
                assert!(scrape().await.contains("200 OK"));
            }
            assert!(asked.load(std::sync::atomic::Ordering::SeqCst) <= 2);
            drop(silent);
            // A head over the limit is not answered.
            let mut s = TcpStream::connect(addr).await.unwrap();
            let _ = s.write_all(&vec![b'a'; MAX_REQUEST_HEAD + 10]).await;
            let mut buf = Vec::new();
            let n = tokio::time::timeout(IO_TIMEOUT * 2, s.read_to_end(&mut buf))
                .await
                .expect("closed within the timeout")
                .unwrap_or(0);
            assert_eq!(n, 0, "{:?}", String::from_utf8_lossy(&buf));
            // A silent client is closed after the timeout.
            let mut s = TcpStream::connect(addr).await.unwrap();
            let r = tokio::time::timeout(IO_TIMEOUT * 2, s.read(&mut [0u8; 16]))
                .await
                .expect("a silent client is closed within the timeout");
            assert_eq!(r.unwrap_or(0), 0);
        });
    }

    /// Slowloris: as many silent connections as there are slots, made again as soon as they are closed, locked
    /// every scrape out (a new connection was closed at once while the slots were full). A connection that has
    /// not sent a whole request head now gives its slot to a new one, oldest first, so the scrape is answered
    /// and the oldest silent client is closed.
    #[test]
    fn silent_clients_give_their_slots_to_a_scrape() {
        runtime().block_on(async {
            let (addr, _, _server) = serve_an_empty_host();
            let mut silent = Vec::new();
            for _ in 0..MAX_CONNECTIONS {
                let mut s = TcpStream::connect(addr).await.unwrap();
                // One byte of a head that never ends: the connection is accepted and reading.
                s.write_all(b"G").await.unwrap();
                silent.push(s);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            for _ in 0..3 {
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut text = String::new();
                tokio::time::timeout(IO_TIMEOUT, s.read_to_string(&mut text))
                    .await
                    .expect("answered before the silent clients time out")
                    .unwrap();
                assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
            }
            let n = tokio::time::timeout(Duration::from_secs(2), silent[0].read(&mut [0u8; 16]))
                .await
                .expect("the oldest silent client was closed");
            assert_eq!(n.unwrap_or(0), 0);
        });
    }
}
