//! The event loop that drives IKE and ESP: sockets on 500 and 4500 (and raw ESP), the TUN, the routes, the
//! timers, the control socket, SIGTERM.
//!
//! One task owns everything: the sans-IO IKE endpoint, the ESP datapath and the descriptors. The datapath's
//! side of the loop is in `io.rs` and `tx.rs`: TSO super-packets from the TUN are cut and encrypted in place
//! and leave with one UDP GSO send; GRO batches are decrypted in place and merged into one TUN write. With
//! `workers` above 1, threads read the TUN's other queues and transmit too (`workers.rs`).

mod apply;
mod batch;
pub mod control;
mod control_plane;
mod datapath;
mod gso;
mod io;
mod learned;
pub(crate) mod logcap;
mod peers;
mod reload;
mod schedule;
mod sockets;
mod status;
mod timing;
mod tx;
mod workers;

use std::net::IpAddr;
use std::time::Instant;

use esp::framing::{self, UdpPayload};
use ike::event::Transmit;
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::prefix::Prefix;
use crate::route::{Netlink, Route, Routes};
use crate::tun::{AsyncQueue, Tun, TunOptions};
use control_plane::ControlPlane;
use datapath::Datapath;
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

/// Keeps the keys out of core files: no core dump at all (RLIMIT_CORE 0), and the process not dumpable
/// (PR_SET_DUMPABLE 0), which also stops other processes of the same uid from reading its memory through
/// /proc or ptrace. Called first thing in `vmsecd run`, before the PSK or a private key is read.
pub fn forbid_core_dumps() -> std::io::Result<()> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit for the call's duration.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: PR_SET_DUMPABLE takes one integer argument; the others are ignored.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
    /// Unreachable routes behind the TUN routes, kept after a crash (see [`crate::failclosed`]).
    failclosed: crate::failclosed::FailClosed,
    tun: AsyncQueue,
    /// The transmit path for queue 0 (the workers have their own).
    tx: tx::Transmitter,
    workers: workers::Workers,
    udp500: UdpSocket,
    udp4500: UdpSocket,
    raw: sockets::RawEsp,
    /// The control socket, until `run` hands it to the tasks that serve it (`control::serve`).
    control: Option<tokio::net::UnixListener>,
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
}

/// The address of ours inside our VM subnets for each family (IPv4, IPv6): the source of packets this host
/// itself sends to a remote VM, so that they fall within the Child SA's selectors.
fn local_sources(
    nl: &mut Netlink,
    subnets: &[crate::prefix::Prefix],
) -> (Option<IpAddr>, Option<IpAddr>) {
    let addrs: Vec<IpAddr> = nl
        .local_addresses()
        .map(|a| a.iter().map(|a| a.addr).collect())
        .unwrap_or_default();
    let find = |v4: bool| {
        addrs
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == v4 && subnets.iter().any(|p| p.contains(*a)))
    };
    (find(true), find(false))
}

impl Daemon {
    fn setup(
        config: Config,
        private_key: Option<std::path::PathBuf>,
        libvirt_dirs: Vec<std::path::PathBuf>,
    ) -> anyhow::Result<Daemon> {
        let s = config.settings().clone();
        let local = config.local().clone();
        // Before the TUN exists: from here on nothing for the remote subnets leaves but through a tunnel.
        let failclosed = crate::failclosed::FailClosed::take_over(
            Netlink::open()?,
            &crate::failclosed::plan(&config),
        )?;
        let tun = Tun::create(&TunOptions {
            vnet_hdr: true,
            queues: s.workers,
            ..TunOptions::new(&s.interface, s.mtu)
        })?;
        let ifindex = tun.ifindex();
        let mut nl = Netlink::open()?;
        let (src4, src6) = local_sources(&mut nl, &local.subnets);
        let mut routes = Routes::new(nl);
        for peer in config.peers() {
            for net in &peer.subnets {
                let src = if net.is_ipv4() { src4 } else { src6 };
                routes.add(Route {
                    dst: *net,
                    ifindex,
                    src,
                })?;
            }
        }
        let mut queues = tun.into_queues();
        let queue = queues.remove(0);
        // TSO super-packets in, GRO-like super-packets out: one TUN read or write moves up to 64 KiB.
        if let Err(e) = queue.set_offload(true) {
            tracing::warn!("TUN offloads unavailable, one packet per read: {e}");
        }
        let tun = AsyncQueue::new(queue)?;
        let udp500 = sockets::udp(local.address, ike::sa::IKE_PORT)?;
        let udp4500 = sockets::udp(local.address, ike::sa::NAT_T_PORT)?;
        if !sockets::enable_gro(&udp4500) {
            tracing::warn!("UDP GRO unavailable: one ESP datagram per receive");
        }
        let raw = sockets::RawEsp::open(local.address)?;
        let datapath = Datapath::new(
            &config
                .peers()
                .map(|p| (p.name.clone(), p.subnets.clone()))
                .collect::<Vec<_>>(),
        );
        let tx = tx::Transmitter::new(
            datapath.outbound().clone(),
            std::os::fd::AsFd::as_fd(&udp4500).try_clone_to_owned()?,
            raw.try_clone_fd()?,
        );
        let workers = workers::Workers::start(queues, &tx)
            .map_err(|e| anyhow::anyhow!("starting the transmit workers: {e}"))?;
        let control = control::listen(&s.control_socket)?;
        tracing::info!(
            host = %local.name, address = %local.address, interface = %s.interface, peers = config.peers().count(),
            workers = s.workers,
            "vmsecd up: routes to {} remote subnets point into {}",
            routes.installed().len(), s.interface
        );
        if let Some(w) = config.mesh.trust_warning() {
            tracing::warn!("{w}");
        }
        if let crate::config::Auth::Cert(c) = &config.mesh.auth {
            let now = crate::config::unix_now();
            for (subject, path, not_after) in c.expiring(now, crate::config::CERT_EXPIRY_WARNING) {
                tracing::warn!(
                    file = %path.display(),
                    "certificate \"{subject}\" expires {}: renew it before then, or handshakes will fail",
                    ike::crypto::x509::format_time(not_after)
                );
            }
        }
        Ok(Daemon {
            applied_subnets: apply::firewall_subnets(&config),
            firewall: crate::firewall::Handle::start(&config)?,
            cp: ControlPlane::new(config, Instant::now()),
            datapath,
            routes,
            failclosed,
            tun,
            tx,
            workers,
            udp500,
            udp4500,
            raw,
            control: Some(control),
            ifindex,
            private_key,
            libvirt_dirs,
            recv_errors: 0,
            logs: logcap::Limits::new(),
        })
    }

    /// `clean`: a stop asked for (SIGTERM, Ctrl-C), which also removes the fail-closed routes; after a failure
    /// they stay, as after a crash.
    fn teardown(&mut self, clean: bool) {
        self.workers.stop();
        self.firewall.remove();
        if let Err(e) = self.routes.remove_all() {
            tracing::warn!("removing routes: {e}");
        }
        if !clean {
            tracing::warn!(
                "fail-closed routes kept (ip route show proto {}): vmsecd failed",
                crate::failclosed::PROTO
            );
        } else if let Err(e) = self.failclosed.remove_all() {
            tracing::warn!("removing the fail-closed routes: {e}");
        }
        control::cleanup(&self.cp.config().settings().control_socket);
        tracing::info!(
            "vmsecd stopped: routes removed, {} deleted",
            self.cp.config().settings().interface
        );
    }

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
        let mut bufs = io::Buffers::new(self.cp.config().settings().mtu as usize);
        let mut udp500_buf = vec![0u8; 65536];
        let mut seq_check = tokio::time::interval(SEQ_CHECK_INTERVAL);
        seq_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Control clients are served by tasks of their own; only their parsed requests reach this loop.
        let (to_loop, mut requests) = tokio::sync::mpsc::channel(control::MAX_CLIENTS);
        let server = self
            .control
            .take()
            .map(|l| control::serve(l, to_loop, self.firewall.checker()));
        let r = self
            .event_loop(
                &mut bufs,
                &mut udp500_buf,
                &mut seq_check,
                &mut requests,
                [&mut term, &mut int, &mut hup],
            )
            .await;
        if let Some(s) = server {
            s.abort();
        }
        r
    }

    async fn event_loop(
        &mut self,
        bufs: &mut io::Buffers,
        udp500_buf: &mut [u8],
        seq_check: &mut tokio::time::Interval,
        requests: &mut tokio::sync::mpsc::Receiver<control::Request>,
        [term, int, hup]: [&mut tokio::signal::unix::Signal; 3],
    ) -> anyhow::Result<()> {
        loop {
            let deadline = tokio::time::Instant::from_std(self.next_deadline());
            tokio::select! {
                // A read error is counted and survived; only a closed descriptor ends the daemon (review item 10).
                r = self.tun.read_vnet(bufs.tx.read_buf()) => match r {
                    Ok(n) => self.on_tun_readable(bufs, n)?,
                    Err(e) => self.tx.survive_read_error(e)?,
                },
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
                _ = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    self.cp.handle_timeout(now);
                    self.datapath.expire_retired(now);
                }
                Some(req) = requests.recv() => {
                    let body = match req.what.as_str() {
                        "status" => serde_json::to_string(&status::status(
                            &self.cp,
                            &self.datapath,
                            self.recv_errors,
                            self.tx.tun_errors(),
                        ))?,
                        "reload" => self.reload_answer(Instant::now()),
                        _ => r#"{"error":"unknown request"}"#.to_owned(),
                    };
                    // The client's task writes it, with its own timeout.
                    let _ = req.reply.send(body);
                }
                _ = seq_check.tick() => {
                    let now = Instant::now();
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
        let sock = if t.local_port == ike::sa::NAT_T_PORT {
            &self.udp4500
        } else {
            &self.udp500
        };
        if let Err(e) = sock.send_to(&t.data, t.remote).await {
            // The address may be anyone's that sent us an IKE_SA_INIT.
            if self.logs.send_error.allow(Instant::now()) {
                tracing::warn!(to = %t.remote, "sending IKE message: {e}");
            }
        }
    }

    async fn shutdown(&mut self) -> anyhow::Result<()> {
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
                _ = tokio::time::sleep_until(end) => break,
            }
            self.pump().await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    /// After the call this process writes no core file and is not dumpable. (It changes the test process
    /// itself, harmlessly: nothing here dumps core or is traced.)
    #[test]
    fn core_dumps_are_forbidden() {
        super::forbid_core_dumps().unwrap();
        // SAFETY: PR_GET_DUMPABLE takes no argument.
        assert_eq!(unsafe { libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0) }, 0);
        let mut r = libc::rlimit {
            rlim_cur: 1,
            rlim_max: 1,
        };
        // SAFETY: a valid rlimit to fill.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_CORE, &mut r) }, 0);
        assert_eq!((r.rlim_cur, r.rlim_max), (0, 0));
    }

    /// Review item 8: a flood of refused unauthenticated requests (forged from many peer addresses) must not
    /// hide the line that says a real IKE SA went down, logged at the same moment.
    #[test]
    fn unauthenticated_refusals_do_not_suppress_real_ike_sa_down_lines() {
        let now = std::time::Instant::now();
        let mut logs = super::logcap::Limits::new();
        let refused = ike::event::Reason::NoProposalChosen {
            ours: "AES_GCM_16_256".into(),
            theirs: "3DES".into(),
        };
        let logged = (0..1000)
            .filter(|i| {
                super::control_plane::log_ike_down(
                    &mut logs,
                    &format!("forged{}", i % 50),
                    &refused,
                    true,
                    now,
                )
            })
            .count();
        assert!(logged <= 10, "{logged} refusals logged at once");
        assert!(
            super::control_plane::log_ike_down(
                &mut logs,
                "b",
                &ike::event::Reason::PeerDead,
                false,
                now
            ),
            "the real IKE SA down line is logged"
        );
    }
}
