//! The event loop that drives IKE and ESP: sockets on 500 and 4500 (and raw ESP), the TUN, the routes, the
//! timers, the control socket, SIGTERM.
//!
//! One task owns everything: the sans-IO IKE endpoint, the ESP datapath and the descriptors. This file is the
//! select loop; the rest lives next to it:
//! - `control_plane.rs`: the IKE endpoint, initiation (`schedule.rs`), learned subnets (`learned.rs`), early
//!   rekeys; it turns `ike` events into actions, which `apply.rs` carries out on the datapath, routes and
//!   firewall. `reload.rs` computes a reload's plan and applies it; `status.rs` answers `vmsecd status`;
//!   `setup.rs` builds and tears down the daemon; `timing.rs` holds the control plane's timing constants.
//! - The datapath's side of the loop is in `rx.rs` and `tx.rs`: TSO super-packets from the TUN are cut and
//!   encrypted in place and leave with one UDP GSO send; GRO batches are decrypted in place and merged into one
//!   TUN write. With `workers` above 1, threads read the TUN's other queues and transmit too (`workers.rs`).

mod apply;
mod batch;
pub mod control;
mod control_plane;
mod datapath;
mod dualstack;
#[doc(hidden)]
pub mod fuzz_api;
mod learned;
pub(crate) mod logcap;
mod metrics;
mod metrics_http;
mod offload;
mod peers;
mod rawrx;
mod rawtx;
mod reload;
mod reload_plan;
mod route_repair;
mod rx;
mod schedule;
mod setup;
mod sockets;
mod status;
mod timing;
mod tx;
mod workers;

use std::time::Instant;

use esp::framing::{self, UdpPayload};
use ike::event::Transmit;
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::prefix::Prefix;
use crate::route::Routes;
use crate::tun::AsyncQueue;
use control_plane::ControlPlane;
use datapath::Datapath;
pub use setup::forbid_core_dumps;
use timing::{IDLE_WAKE, SEQ_CHECK_INTERVAL, SHUTDOWN_GRACE};

/// Why the daemon stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Setting up failed (sockets, TUN, routes): the message says what to fix.
    #[error("{0:#}")]
    Setup(anyhow::Error),
    /// The event loop failed.
    #[error("{0:#}")]
    Runtime(anyhow::Error),
}

/// Reads (TUN) or receives (UDP) per wake-up.
const BATCH: usize = 32;
/// Runs the daemon for the local host of `config` until SIGTERM or SIGINT.
///
/// `private_key` is `vmsecd run --private-key`: a reload (SIGHUP, `vmsecd reload`) reads the mesh file again
/// with the same override.
///
/// `libvirt_dirs` is where a `subnets = "libvirt"` host reads its libvirt networks again on reload (the caller
/// has resolved them once with [`Config::resolve_libvirt`]).
pub async fn run(
    config: Config,
    private_key: Option<std::path::PathBuf>,
    libvirt_dirs: Vec<std::path::PathBuf>,
) -> Result<(), Error> {
    let mut d = Daemon::setup(config, private_key, libvirt_dirs).map_err(Error::Setup)?;
    let r = d.run().await.map_err(Error::Runtime);
    d.teardown(r.is_ok());
    r
}

struct Daemon {
    /// The IKE endpoint, initiation, learned subnets and the file's configuration.
    cp: ControlPlane,
    datapath: Datapath,
    routes: Routes,
    /// Whether putting back the routes into the TUN is failing, so that it is not logged every second.
    route_repairs: route_repair::FailureLog,
    /// Unreachable routes behind the TUN routes, kept after a crash (see [`crate::failclosed`]).
    failclosed: crate::failclosed::FailClosed,
    tun: AsyncQueue,
    /// Set when a receive batch wrote to `tun` (queue 0): the batch then reads the TUN before going back to
    /// epoll (see `rx::Daemon::read_tun_after_write`).
    wrote_tun0: std::cell::Cell<bool>,
    /// The transmit path for queue 0 (the workers have their own).
    tx: tx::Transmitter,
    workers: workers::Workers,
    udp500: UdpSocket,
    udp4500: UdpSocket,
    raw: sockets::RawEsp,
    /// Raw ESP through AF_XDP (`raw_rx`), beside the raw socket.
    rawrx: rawrx::RawRx,
    /// A dual-stack host's sockets on its other family's address (`address = [IPv4, IPv6]`).
    second: Option<sockets::Second>,
    /// The control socket, until `run` hands it to the tasks that serve it (`control::serve`).
    control: Option<tokio::net::UnixListener>,
    /// The metrics listener (`mesh.metrics`), until `run` hands it to the tasks that serve it.
    metrics: Option<tokio::net::TcpListener>,
    firewall: crate::firewall::Handle,
    /// The TUN's interface index, for routes added on reload.
    ifindex: u32,
    /// `vmsecd run --private-key`, kept for reloads.
    private_key: Option<std::path::PathBuf>,
    /// Where this machine's libvirt network definitions are read from (`subnets = "libvirt"`), kept for reloads.
    libvirt_dirs: Vec<std::path::PathBuf>,
    /// The local and the peers' subnets the firewall rules were last given (see `apply::firewall_subnets`).
    applied_subnets: (Vec<Prefix>, Vec<Prefix>),
    /// Receive errors survived on the sockets (`drops.recv_errors` in the status).
    recv_errors: u64,
    /// Rate limits of the log lines of the sockets (the control plane has its own).
    logs: logcap::Limits,
    /// The mesh file as last loaded: the base onto which members from etcd are merged.
    file_config: Config,
    /// The etcd task (`[etcd]`), started once the sockets are open.
    membership: Option<crate::membership::Membership>,
    /// The members last read from etcd, and the entries refused while parsing them.
    members: (Vec<crate::membership::entry::Member>, Vec<String>),
    /// The refusals last logged (logged again only when they change).
    members_refused: Vec<String>,
    /// With `auth = "pubkey"`: each member from etcd as first seen, whose key it keeps while its entry exists
    /// (see `membership::merge::merge`).
    member_pins: crate::membership::merge::Pins,
}

/// Resolves when the membership from etcd changed; never without etcd. False when the task is gone.
async fn membership_changed(m: &mut Option<crate::membership::Membership>) -> bool {
    match m {
        Some(m) => m.entries.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

impl Daemon {
    fn next_deadline(&mut self) -> Instant {
        [self.cp.next_timer(), self.datapath.next_retirement()]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + IDLE_WAKE)
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut bufs = rx::Buffers::new(self.cp.config().settings().mtu as usize);
        let mut udp500_buf = vec![0u8; 65536];
        let mut seq_check = tokio::time::interval(SEQ_CHECK_INTERVAL);
        seq_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Control clients are served by tasks of their own; only their parsed requests reach this loop.
        let (to_loop, mut requests) = tokio::sync::mpsc::channel(control::MAX_CLIENTS);
        let server = self
            .control
            .take()
            .map(|l| control::serve(l, to_loop, self.firewall.checker()));
        self.membership = self.start_membership();
        let (to_loop, mut scrapes) = tokio::sync::mpsc::channel(1);
        let metrics = self
            .metrics
            .take()
            .map(|l| metrics_http::serve(l, to_loop, self.cp.counters.clone()));
        let r = self
            .event_loop(
                &mut bufs,
                &mut udp500_buf,
                &mut seq_check,
                (&mut requests, &mut scrapes),
                [&mut term, &mut int, &mut hup],
            )
            .await;
        for s in [server, metrics].into_iter().flatten() {
            s.abort();
        }
        r
    }

    async fn event_loop(
        &mut self,
        bufs: &mut rx::Buffers,
        udp500_buf: &mut [u8],
        seq_check: &mut tokio::time::Interval,
        (requests, scrapes): (
            &mut tokio::sync::mpsc::Receiver<control::Request>,
            &mut tokio::sync::mpsc::Receiver<metrics_http::SnapshotRequest>,
        ),
        [term, int, hup]: [&mut tokio::signal::unix::Signal; 3],
    ) -> anyhow::Result<()> {
        // One timer for the loop's life, moved only when the next deadline comes earlier (or it fired): not a
        // new one registered in tokio's timer wheel and dropped again on each wake-up (issue 15). A deadline that
        // moved later just wakes the loop early once, and the control plane's timers check their own times.
        let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(self.next_deadline()));
        tokio::pin!(sleep);
        loop {
            let deadline = tokio::time::Instant::from_std(self.next_deadline());
            if deadline < sleep.deadline() || sleep.is_elapsed() {
                sleep.as_mut().reset(deadline);
            }
            tokio::select! {
                // A read error is counted and survived; only a closed descriptor ends the daemon (review item 10).
                r = self.tun.readable() => {
                    self.on_tun_readable(bufs, &mut r?)?;
                }
                r = self.udp4500.readable() => {
                    r?;
                    self.on_udp4500_readable(bufs)?;
                }
                r = self.udp500.recv_from(udp500_buf) => match r {
                    Ok((len, from)) => {
                        self.cp.handle(Instant::now(), &udp500_buf[..len], from, ike::sa::IKE_PORT);
                    }
                    Err(e) => self.on_recv_error("UDP 500", e)?,
                },
                r = self.raw.readable() => {
                    r?;
                    self.on_raw_readable(bufs)?;
                }
                r = self.rawrx.readable() => {
                    r?;
                    self.on_xdp_readable(bufs)?;
                }
                r = sockets::second_readable(&self.second, |s| &s.udp4500) => {
                    r?;
                    self.on_second_udp4500_readable(bufs)?;
                }
                r = sockets::second_readable(&self.second, |s| &s.udp500) => {
                    r?;
                    self.on_second_udp500_readable(udp500_buf)?;
                }
                r = sockets::second_raw_readable(&self.second) => {
                    r?;
                    self.on_second_raw_readable(bufs)?;
                }
                _ = &mut sleep => {
                    let now = Instant::now();
                    self.cp.handle_timeout(now);
                    self.datapath.expire_retired(now);
                }
                Some(req) = requests.recv() => {
                    let body = match req.what.as_str() {
                        "status" => serde_json::to_string(&self.status())?,
                        "reload" => self.reload_answer(Instant::now()),
                        _ => r#"{"error":"unknown request"}"#.to_owned(),
                    };
                    // The client's task writes it, with its own timeout.
                    let _ = req.reply.send(body);
                }
                changed = membership_changed(&mut self.membership) => {
                    if changed {
                        self.on_membership(Instant::now());
                    } else {
                        tracing::error!("etcd: the membership task ended; the last membership seen is kept");
                        self.membership = None;
                    }
                }
                Some(reply) = scrapes.recv() => {
                    let _ = reply.send(self.metrics_snapshot());
                }
                _ = seq_check.tick() => {
                    let now = Instant::now();
                    self.repair_routes(now);
                    self.cp.rekey_running_low(now, self.datapath.running_low());
                    self.cp.flush_logs(now);
                    self.logs.flush(now);
                }
                _ = hup.recv() => {
                    let _ = self.reload_answer(Instant::now());
                }
                _ = term.recv() => return self.shutdown().await,
                _ = int.recv() => return self.shutdown().await,
            }
            self.pump().await;
        }
    }

    /// What `vmsecd status` and the metrics show: the control plane's and datapath's state, with the counters
    /// only the transmitters hold.
    fn status(&self) -> control::Status {
        control::Status {
            raw_esp_out: self.tx.raw_esp_out(),
            raw_esp_in: self.rawrx.status(),
            ..status::status(
                &self.cp,
                &self.datapath,
                self.recv_errors,
                self.tx.tun_errors(),
            )
        }
    }

    /// What a scrape of the metrics shows (rendered by the listener's task, not here).
    fn metrics_snapshot(&self) -> metrics::Snapshot {
        let ep = self.cp.endpoint();
        metrics::Snapshot {
            status: self.status(),
            ike: ep.stats(),
            half_open: ep.half_open_count(),
            demanding_cookies: ep.demanding_cookies(Instant::now()),
            firewall_repairs: self.firewall.repairs(),
        }
    }

    /// Sends what IKE queued and acts on its events.
    async fn pump(&mut self) {
        while let Some(t) = self.cp.poll_transmit() {
            self.send_ike(&t).await;
        }
        while let Some(actions) = self.cp.poll_actions(Instant::now()) {
            self.apply(actions, Instant::now());
        }
    }

    async fn send_ike(&mut self, t: &Transmit) {
        // A dual-stack host sends to a peer from the address of that peer's family.
        let second = self
            .second
            .as_ref()
            .filter(|s| s.is_ipv6() == t.remote.is_ipv6());
        let sock = match (second, t.local_port == ike::sa::NAT_T_PORT) {
            (Some(s), true) => &s.udp4500,
            (Some(s), false) => &s.udp500,
            (None, true) => &self.udp4500,
            (None, false) => &self.udp500,
        };
        if let Err(e) = sock.send_to(&t.data, t.remote).await {
            // The address may be anyone's that sent us an IKE_SA_INIT.
            if self.logs.send_error.allow(Instant::now()) {
                tracing::warn!(to = %t.remote, "sending IKE message: {e}");
            }
        }
    }

    /// Starts publishing this host's entry to etcd and watching the others' (`[etcd]`); here, after the
    /// sockets are open, so that no peer tries to reach this host before it can answer.
    fn start_membership(&self) -> Option<crate::membership::Membership> {
        let cfg = &self.file_config;
        let etcd = cfg.mesh.etcd.clone()?;
        let local = cfg.local();
        let pem = match &cfg.mesh.auth {
            crate::config::Auth::PubKey(pk) => pk
                .public_keys
                .get(&local.name)
                .and_then(|f| std::fs::read_to_string(&f.path).ok()),
            _ => None,
        };
        let own = serde_json::to_vec(&crate::membership::entry::of_host(local, pem)).ok()?;
        Some(crate::membership::Membership::start(etcd, &local.name, own))
    }

    async fn shutdown(&mut self) -> anyhow::Result<()> {
        // A clean stop deletes this host's entry: the others drop it at once, not when its lease expires.
        if let Some(m) = self.membership.take() {
            m.leave().await;
        }
        tracing::info!("shutting down: deleting SAs");
        self.cp.delete_all(Instant::now());
        self.pump().await;
        // Give each peer a moment to acknowledge the delete, so its side is clean too.
        let end = tokio::time::Instant::now() + SHUTDOWN_GRACE;
        let mut buf = vec![0u8; 65536];
        let mut buf2 = vec![0u8; 65536];
        while !self.cp.is_idle() {
            tokio::select! {
                r = self.udp500.recv_from(&mut buf) => if let Ok((len, from)) = r {
                    self.cp.handle(Instant::now(), &buf[..len], from, ike::sa::IKE_PORT);
                },
                r = self.udp4500.recv_from(&mut buf2) => if let Ok((len, from)) = r {
                    if let UdpPayload::Ike { offset } = framing::classify_udp(&buf2[..len]) {
                        self.cp.handle(Instant::now(), &buf2[offset..len], from, ike::sa::NAT_T_PORT);
                    }
                },
                // A dual-stack host: the other family's IKE (its ESP can wait, the SAs are going).
                r = sockets::second_readable(&self.second, |s| &s.udp500) => if r.is_ok() {
                    let _ = self.on_second_udp500_readable(&mut buf);
                },
                r = sockets::second_readable(&self.second, |s| &s.udp4500) => if r.is_ok() {
                    self.drain_second_ike_4500(&mut buf2);
                },
                _ = tokio::time::sleep_until(end) => break,
            }
            self.pump().await;
        }
        Ok(())
    }
}
