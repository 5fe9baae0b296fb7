//! The event loop that drives IKE and ESP: sockets on 500 and 4500 (and raw ESP), the TUN, the routes, the
//! timers, the control socket, SIGTERM.
//!
//! One task owns everything: the sans-IO IKE endpoint, the ESP datapath and the descriptors. The datapath's
//! side of the loop is in `io.rs` and `tx.rs`: TSO super-packets from the TUN are cut and encrypted in place
//! and leave with one UDP GSO send; GRO batches are decrypted in place and merged into one TUN write. With
//! `workers` above 1, threads read the TUN's other queues and transmit too (`workers.rs`).

mod batch;
pub mod control;
mod datapath;
#[doc(hidden)]
pub mod fuzz_api;
mod learned;
pub(crate) mod logcap;
mod offload;
mod peers;
mod reload;
mod rx;
mod sockets;
mod tx;
mod workers;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use esp::framing::{self, UdpPayload};
use ike::endpoint::Endpoint;
use ike::event::{Event, Reason, Transmit};
use ike::sa::State;
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::route::{Netlink, Route, Routes};
use crate::tun::{AsyncQueue, Tun, TunOptions};
use control::{ChildStatus, GlobalDrops, IkeStatus, PeerStatus, SaDrops, Status, Traffic};
use datapath::Datapath;

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
/// How often the outbound SAs' sequence numbers are checked against the rekey threshold: at 10 million packets
/// a second, a 32-bit space's last eighth lasts almost a minute.
const SEQ_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Wait before initiating towards a peer with a higher address: it is the one expected to initiate.
const FOLLOWER_DELAY: Duration = Duration::from_secs(3);

/// When to (re)initiate towards each peer.
struct Initiation {
    next: Option<Instant>,
    backoff: Duration,
}

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
    config: Config,
    endpoint: Endpoint,
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
    initiation: HashMap<String, Initiation>,
    firewall: crate::firewall::Handle,
    /// The TUN's interface index, for routes added on reload.
    ifindex: u32,
    /// `vmsecd run --private-key`, kept for reloads.
    private_key: Option<std::path::PathBuf>,
    /// Where this machine's libvirt network definitions are read from (`subnets = "libvirt"`), kept for reloads.
    libvirt_dirs: Vec<std::path::PathBuf>,
    /// Subnets learned from the Child SAs of `subnets = "libvirt"` peers: per peer, (inbound SPI, subnets).
    learned: HashMap<String, Vec<(u32, Vec<crate::prefix::Prefix>)>>,
    /// Inbound SPI of each installed Child SA by its outbound SPI, to ask IKE for a rekey when the outbound
    /// SA's sequence numbers run low; and the outbound SPIs already asked for.
    pairs: HashMap<u32, u32>,
    rekey_asked: std::collections::HashSet<u32>,
    /// Receive errors survived on the sockets (`drops.recv_errors` in the status).
    recv_errors: u64,
    /// Rate limits of the log lines that carry what unauthenticated senders chose.
    logs: logcap::Limits,
    /// The endpoint's next timer as last asked, and whether the endpoint was called since (see
    /// `next_deadline`).
    ike_deadline: Option<Instant>,
    ike_touched: bool,
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
        let peer_cfgs = peers::peer_configs(&config);
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
        let now = Instant::now();
        let mut initiation = HashMap::new();
        for p in config.peers() {
            // The lower address initiates at once; the other side waits a little so that both do not start an
            // IKE SA at the same moment, and initiates only if none came up.
            let first = if local.address < p.address {
                now
            } else {
                now + FOLLOWER_DELAY
            };
            initiation.insert(
                p.name.clone(),
                Initiation {
                    next: Some(first),
                    backoff: Duration::from_secs(2),
                },
            );
        }
        tracing::info!(
            host = %local.name, address = %local.address, interface = %s.interface, peers = peer_cfgs.len(),
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
            endpoint: Endpoint::new(peer_cfgs),
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
            initiation,
            firewall: crate::firewall::Handle::start(&config)?,
            config,
            ifindex,
            private_key,
            libvirt_dirs,
            learned: HashMap::new(),
            pairs: HashMap::new(),
            rekey_asked: Default::default(),
            recv_errors: 0,
            logs: logcap::Limits::new(),
            ike_deadline: None,
            ike_touched: true,
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
        control::cleanup(&self.config.settings().control_socket);
        tracing::info!(
            "vmsecd stopped: routes removed, {} deleted",
            self.config.settings().interface
        );
    }

    fn next_deadline(&mut self) -> Instant {
        // The endpoint's next timer is a scan over every IKE SA, half-open ones included: asked again only after
        // something touched the endpoint, not after each batch of ESP or TUN packets.
        if std::mem::take(&mut self.ike_touched) {
            self.ike_deadline = self.endpoint.poll_timeout();
        }
        let ike = self.ike_deadline;
        let init = self.initiation.values().filter_map(|i| i.next).min();
        let retired = self.datapath.next_retirement();
        [ike, init, retired]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(60))
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut bufs = rx::Buffers::new(self.config.settings().mtu as usize);
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
        bufs: &mut rx::Buffers,
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
                        self.ike_touched = true;
                        self.endpoint.handle(Instant::now(), &udp500_buf[..len], from, ike::sa::IKE_PORT);
                    }
                    Err(e) => self.on_recv_error("UDP 500", e)?,
                },
                r = self.raw.readable() => {
                    r?;
                    self.on_raw_readable(bufs)?;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    self.ike_touched = true;
                    self.endpoint.handle_timeout(now);
                    self.datapath.expire_retired(now);
                    self.initiate_due(now);
                }
                Some(req) = requests.recv() => {
                    // A reload changes the endpoint's peers.
                    self.ike_touched = true;
                    let body = match req.what.as_str() {
                        "status" => serde_json::to_string(&self.status())?,
                        "reload" => self.reload_answer(Instant::now()),
                        _ => r#"{"error":"unknown request"}"#.to_owned(),
                    };
                    // The client's task writes it, with its own timeout.
                    let _ = req.reply.send(body);
                }
                _ = seq_check.tick() => {
                    let now = Instant::now();
                    self.ike_touched = true;
                    self.rekey_running_low(now);
                    self.logs.flush(now);
                }
                _ = hup.recv() => {
                    self.ike_touched = true;
                    let _ = self.reload_answer(Instant::now());
                }
                _ = term.recv() => return self.shutdown().await,
                _ = int.recv() => return self.shutdown().await,
            }
            self.pump().await;
        }
    }

    fn initiate_due(&mut self, now: Instant) {
        let due: Vec<String> = self
            .initiation
            .iter()
            .filter(|(_, i)| i.next.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for name in due {
            let i = self.initiation.get_mut(&name).expect("listed");
            i.next = None;
            if !self.endpoint.has_sa(&name) {
                tracing::info!(peer = %name, "initiating IKE SA");
                self.endpoint.connect(now, &name);
            }
        }
    }

    /// Asks IKE to rekey every Child SA whose outbound SA has used seven eighths of its sequence numbers (once
    /// per SA): at high packet rates a 32-bit sequence space can end before the lifetime does, and an
    /// exhausted SA sends nothing (RFC 4303 3.3.3).
    fn rekey_running_low(&mut self, now: Instant) {
        for spi_out in self.datapath.running_low() {
            if !self.rekey_asked.insert(spi_out) {
                continue;
            }
            if let Some(&spi_in) = self.pairs.get(&spi_out) {
                tracing::info!(
                    spi_in = format!("{spi_in:08x}"),
                    spi_out = format!("{spi_out:08x}"),
                    "Child SA has used 7/8 of its sequence numbers: rekeying it now"
                );
                self.endpoint.rekey_child_now(now, spi_in);
            }
        }
    }

    /// Sends what IKE queued and acts on its events.
    async fn pump(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            self.ike_touched = true;
            self.send_ike(&t).await;
        }
        while let Some(e) = self.endpoint.poll_event() {
            // Acting on an event may call the endpoint again (a learned subnet refused deletes the peer's SA).
            self.ike_touched = true;
            self.on_event(e);
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

    fn on_event(&mut self, e: Event) {
        let window = self.config.settings().replay_window;
        match e {
            Event::IkeUp {
                peer,
                spis,
                algorithms,
                remote,
                nat,
                initiator,
            } => {
                tracing::info!(
                    %peer, %remote, spi_i = format!("{:016x}", spis.0), spi_r = format!("{:016x}", spis.1),
                    %algorithms, udp_encap = nat, role = if initiator { "initiator" } else { "responder" },
                    "IKE SA established"
                );
                if let Some(i) = self.initiation.get_mut(&peer) {
                    i.backoff = Duration::from_secs(2);
                }
            }
            Event::IkeRekeyed {
                peer,
                old_spis,
                new_spis,
                initiator,
            } => {
                tracing::info!(
                    %peer, old_spi_i = format!("{:016x}", old_spis.0), old_spi_r = format!("{:016x}", old_spis.1),
                    spi_i = format!("{:016x}", new_spis.0), spi_r = format!("{:016x}", new_spis.1),
                    initiator, "IKE SA rekeyed"
                );
            }
            Event::IkeDown {
                peer,
                reason,
                unauthenticated,
            } => {
                log_ike_down(
                    &mut self.logs,
                    &peer,
                    &reason,
                    unauthenticated,
                    Instant::now(),
                );
                // Keep trying, with back-off: the mesh wants every tunnel up. But a report about an IKE SA that
                // never authenticated the peer (a refused request from its address, or an unprotected error our own
                // IKE_SA_INIT got, which `ike` does not act on) changes nothing while an IKE SA with the peer is
                // still alive or an initiation is scheduled: anyone who can send from the peer's address can cause
                // one (issue 12 item 3). Only when our own initiation has ended on it, with nothing left and
                // nothing scheduled, is it retried, with the same back-off as any failure.
                if unauthenticated
                    && (self.endpoint.has_sa(&peer)
                        || self.initiation.get(&peer).is_some_and(|i| i.next.is_some()))
                {
                    return;
                }
                if let Some(i) = self.initiation.get_mut(&peer) {
                    let wait = i.backoff;
                    i.backoff = (i.backoff * 2).min(Duration::from_secs(120));
                    i.next = Some(Instant::now() + wait);
                }
            }
            Event::ChildUp(c) => {
                tracing::info!(
                    peer = %c.peer, spi_in = format!("{:08x}", c.spi_in), spi_out = format!("{:08x}", c.spi_out),
                    transform = %c.transform, esn = c.esn, udp_encap = c.udp_encap,
                    local = %logcap::clean(&ts(&c.ts_local), logcap::MAX_FIELD),
                    remote = %logcap::clean(&ts(&c.ts_remote), logcap::MAX_FIELD), "Child SA up"
                );
                if !self.learn(&c, Instant::now()) {
                    return;
                }
                if let Err(e) = self.datapath.install(&c, window) {
                    tracing::error!(peer = %c.peer, "cannot install Child SA: {e}");
                }
                self.pairs.insert(c.spi_out, c.spi_in);
            }
            Event::ChildRekeyed {
                old_spi_in,
                new,
                we_initiated,
            } => {
                tracing::info!(
                    peer = %new.peer, old_spi_in = format!("{old_spi_in:08x}"), spi_in = format!("{:08x}", new.spi_in),
                    spi_out = format!("{:08x}", new.spi_out), initiator = we_initiated, "Child SA rekeyed"
                );
                if !self.learn(&new, Instant::now()) {
                    return;
                }
                // As responder, the old outbound SA keeps carrying traffic until the peer has the new inbound one.
                let r = if we_initiated {
                    self.datapath.install(&new, window)
                } else {
                    self.datapath.install_deferred(&new, window)
                };
                if let Err(e) = r {
                    tracing::error!(peer = %new.peer, "cannot install rekeyed Child SA: {e}");
                }
                self.pairs.insert(new.spi_out, new.spi_in);
            }
            Event::ChildDown {
                peer,
                spi_in,
                spi_out,
                reason,
            } => {
                if spi_in != 0 {
                    tracing::info!(%peer, spi_in = format!("{spi_in:08x}"), spi_out = format!("{spi_out:08x}"), "Child SA deleted: {}", logcap::clean(&reason, logcap::MAX_FIELD));
                    if matches!(reason, Reason::Rekeyed) {
                        self.datapath.retire(Instant::now(), &peer, spi_in, spi_out);
                    } else {
                        self.datapath.remove(&peer, spi_in, spi_out);
                    }
                    self.forget(&peer, spi_in);
                    self.pairs.remove(&spi_out);
                    self.rekey_asked.remove(&spi_out);
                } else {
                    if self.logs.child_refused.allow(Instant::now()) {
                        tracing::warn!(%peer, "Child SA refused: {}", logcap::clean(&reason, logcap::MAX_FIELD));
                    }
                }
            }
            _ => {}
        }
    }

    async fn shutdown(&mut self) -> anyhow::Result<()> {
        tracing::info!("shutting down: deleting SAs");
        self.endpoint.delete_all(Instant::now());
        self.pump().await;
        // Give each peer a moment to acknowledge the delete, so its side is clean too.
        let end = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut buf = vec![0u8; 65536];
        let mut buf2 = vec![0u8; 65536];
        while !self.endpoint.is_idle() {
            tokio::select! {
                r = self.udp500.recv_from(&mut buf) => if let Ok((len, from)) = r {
                    self.endpoint.handle(Instant::now(), &buf[..len], from, ike::sa::IKE_PORT);
                },
                r = self.udp4500.recv_from(&mut buf2) => if let Ok((len, from)) = r {
                    if let UdpPayload::Ike { offset } = framing::classify_udp(&buf2[..len]) {
                        self.endpoint.handle(Instant::now(), &buf2[offset..len], from, ike::sa::NAT_T_PORT);
                    }
                },
                _ = tokio::time::sleep_until(end) => break,
            }
            self.pump().await;
        }
        Ok(())
    }

    fn status(&self) -> Status {
        let now = Instant::now();
        let sas = self.endpoint.status();
        // One pass over the SAs (half-open ones included, which anyone can create), not one per peer: per peer,
        // an established SA if there is one, else the first.
        let mut best: HashMap<&str, &ike::sa::SaStatus> = HashMap::new();
        for (n, s) in &sas {
            let e = best.entry(n.as_str()).or_insert(s);
            if e.state != State::Established && s.state == State::Established {
                *e = s;
            }
        }
        let peers = self
            .config
            .peers()
            .map(|p| {
                let sa = best.get(p.name.as_str()).copied();
                let state = match sa.map(|s| s.state) {
                    Some(State::Established) => "established",
                    Some(State::Closed) | None => "down",
                    Some(_) => "connecting",
                };
                let ike = sa.map(|s| IkeStatus {
                    spi_i: format!("{:016x}", s.spis.0),
                    spi_r: format!("{:016x}", s.spis.1),
                    initiator: s.initiator,
                    algorithms: s.algorithms.clone().unwrap_or_default(),
                    established_seconds: s
                        .established_at
                        .map(|t| now.saturating_duration_since(t).as_secs()),
                    rekey_in_seconds: s
                        .rekey_at
                        .map(|t| t.saturating_duration_since(now).as_secs()),
                    remote: s.remote.to_string(),
                    udp_encap: s.nat,
                });
                let children = sa
                    .map(|s| {
                        s.children
                            .iter()
                            .map(|(spi_in, spi_out, alg, rekey)| {
                                let cin =
                                    self.datapath.inbound_counters(*spi_in).unwrap_or_default();
                                let cout = self
                                    .datapath
                                    .outbound_counters(&p.name, *spi_out)
                                    .unwrap_or_default();
                                ChildStatus {
                                    spi_in: format!("{spi_in:08x}"),
                                    spi_out: format!("{spi_out:08x}"),
                                    algorithms: alg.clone(),
                                    rekey_in_seconds: rekey
                                        .saturating_duration_since(now)
                                        .as_secs(),
                                    r#in: Traffic {
                                        packets: cin.packets,
                                        bytes: cin.bytes,
                                    },
                                    out: Traffic {
                                        packets: cout.packets,
                                        bytes: cout.bytes,
                                    },
                                    drops: SaDrops {
                                        replay: cin.drop_replay,
                                        auth: cin.drop_auth,
                                        malformed: cin.drop_malformed,
                                        dummy: cin.drop_dummy,
                                    },
                                }
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                PeerStatus {
                    name: p.name.clone(),
                    address: p.address.to_string(),
                    state: state.into(),
                    ike,
                    children,
                    subnets: p.subnets.iter().map(|s| s.to_string()).collect(),
                    learned: p.libvirt.is_some(),
                }
            })
            .collect();
        let d = self.datapath.drops();
        Status {
            host: self.config.local().name.clone(),
            peers,
            drops: GlobalDrops {
                no_sa_in: self.datapath.no_sa_in(),
                no_sa_out: d.no_sa_out,
                no_route: d.no_route,
                policy: d.policy,
                encap_failed: d.encap_failed,
                recv_errors: self.recv_errors,
                tun_errors: self.tx.tun_errors(),
            },
        }
    }
}

fn ts(t: &[ike::message::TrafficSelector]) -> String {
    t.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Logs an `IkeDown` event; true if a line was written. Refusals of requests that never authenticated and the
/// real "IKE SA down" lines have limiters of their own: a sender forging requests from many peer addresses
/// must not use up the budget of the lines that say a tunnel went down.
fn log_ike_down(
    logs: &mut logcap::Limits,
    peer: &str,
    reason: &Reason,
    unauthenticated: bool,
    now: Instant,
) -> bool {
    match reason {
        Reason::DeletedByUs => {
            tracing::info!(%peer, "IKE SA deleted");
            true
        }
        // The reason may quote what an unauthenticated sender chose (its proposals).
        // Not the peer's IKE SA: a request from its address that never proved to be the peer.
        _ if unauthenticated => {
            let ok = logs.ike_refused.allow(now);
            if ok {
                tracing::warn!(
                    %peer,
                    "IKE exchange with this peer's address failed before the peer authenticated (the failure may \
                     come from the peer or from anyone who can send from its address; an established tunnel with \
                     the peer is unaffected): {}",
                    logcap::clean(reason, logcap::MAX_FIELD)
                );
            }
            ok
        }
        _ => {
            let ok = logs.ike_down.allow(now);
            if ok {
                tracing::warn!(%peer, "IKE SA down: {}", logcap::clean(reason, logcap::MAX_FIELD));
            }
            ok
        }
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
                super::log_ike_down(&mut logs, &format!("forged{}", i % 50), &refused, true, now)
            })
            .count();
        assert!(logged <= 10, "{logged} refusals logged at once");
        assert!(
            super::log_ike_down(&mut logs, "b", &ike::event::Reason::PeerDead, false, now),
            "the real IKE SA down line is logged"
        );
    }
}
