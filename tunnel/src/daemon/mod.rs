//! The event loop that drives IKE and ESP: sockets on 500 and 4500 (and raw ESP), the TUN, the routes, the
//! timers, the control socket, SIGTERM.
//!
//! One task owns everything: the sans-IO IKE endpoint, the ESP datapath and the descriptors. The datapath
//! reads the TUN in batches into buffers with headroom, so encapsulation happens in place; decapsulation
//! writes the inner packet to the TUN straight from the receive buffer.

mod batch;
pub mod control;
mod datapath;
mod gso;
mod peers;
mod sockets;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use esp::framing::{self, UdpPayload};
use esp::{PacketBuf, HEADROOM, TAILROOM};
use ike::endpoint::Endpoint;
use ike::event::{Event, Reason, Transmit};
use ike::sa::State;
use tokio::net::UdpSocket;
use tokio::signal::unix::{signal, SignalKind};

use crate::config::Config;
use crate::route::{Netlink, Route, Routes};
use crate::tun::{AsyncQueue, Tun, TunOptions};
use control::{ChildStatus, GlobalDrops, IkeStatus, PeerStatus, SaDrops, Status, Traffic};
use datapath::{Datapath, Wire};

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
/// Where a TUN read puts its packet in the transmit buffer: room in front for the virtio-net header and ESP.
const TUN_AT: usize = HEADROOM;
/// The transmit buffer: a 64 KiB super-packet cut into segments of at least 536 bytes of payload (122 at most),
/// each with up to 120 bytes of headers and the ESP overhead, or one packet of up to the largest MTU.
const TUN_BUF: usize = TUN_AT + 65535 + 122 * (120 + HEADROOM + TAILROOM);
/// Wait before initiating towards a peer with a higher address: it is the one expected to initiate.
const FOLLOWER_DELAY: Duration = Duration::from_secs(3);

/// When to (re)initiate towards each peer.
struct Initiation {
    next: Option<Instant>,
    backoff: Duration,
}

/// Runs the daemon for the local host of `config` until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), Error> {
    let mut d = Daemon::setup(config).map_err(Error::Setup)?;
    let r = d.run().await.map_err(Error::Runtime);
    d.teardown();
    r
}

struct Daemon {
    config: Config,
    endpoint: Endpoint,
    datapath: Datapath,
    routes: Routes,
    tun: AsyncQueue,
    udp500: UdpSocket,
    udp4500: UdpSocket,
    raw: sockets::RawEsp,
    control: tokio::net::UnixListener,
    initiation: HashMap<String, Initiation>,
}

impl Daemon {
    fn setup(config: Config) -> anyhow::Result<Daemon> {
        let s = config.settings().clone();
        let local = config.local().clone();
        let peer_cfgs = peers::peer_configs(&config);
        let tun = Tun::create(&TunOptions {
            vnet_hdr: true,
            ..TunOptions::new(&s.interface, s.mtu)
        })?;
        let ifindex = tun.ifindex();
        let mut nl = Netlink::open()?;
        // Packets this host itself sends to a remote VM need a source inside our subnets to match the Child SA.
        let src_of = |nl: &mut Netlink, v4: bool| -> Option<IpAddr> {
            let addrs = nl.local_addresses().ok()?;
            addrs
                .iter()
                .map(|a| a.addr)
                .find(|a| a.is_ipv4() == v4 && local.subnets.iter().any(|p| p.contains(*a)))
        };
        let src4 = src_of(&mut nl, true);
        let src6 = src_of(&mut nl, false);
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
        let queue = tun
            .into_queues()
            .pop()
            .expect("a TUN has at least one queue");
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
        let datapath = Datapath::new(
            &config
                .peers()
                .map(|p| (p.name.clone(), p.subnets.clone()))
                .collect::<Vec<_>>(),
        );
        tracing::info!(
            host = %local.name, address = %local.address, interface = %s.interface, peers = peer_cfgs.len(),
            "vmsecd up: routes to {} remote subnets point into {}",
            routes.installed().len(), s.interface
        );
        Ok(Daemon {
            endpoint: Endpoint::new(peer_cfgs),
            datapath,
            routes,
            tun,
            udp500,
            udp4500,
            raw,
            control,
            initiation,
            config,
        })
    }

    fn teardown(&mut self) {
        if let Err(e) = self.routes.remove_all() {
            tracing::warn!("removing routes: {e}");
        }
        control::cleanup(&self.config.settings().control_socket);
        tracing::info!(
            "vmsecd stopped: routes removed, {} deleted",
            self.config.settings().interface
        );
    }

    fn next_deadline(&self) -> Instant {
        let ike = self.endpoint.poll_timeout();
        let init = self.initiation.values().filter_map(|i| i.next).min();
        [ike, init]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(60))
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        // A TUN read lands at TUN_AT (its virtio-net header just before); its segments then fill the buffer from
        // the start as back-to-back ESP datagrams (see gso::segment), up to 64 KiB of payload plus per-segment
        // headers and ESP overhead.
        let mut tx = batch::TxBatch::new(TUN_AT, TUN_BUF);
        let mut udp_buf = vec![0u8; 65536 + 4096];
        let mut coalesce_buf = vec![0u8; gso::VNET_HDR_LEN + 65535];
        let mut udp500_buf = vec![0u8; 65536];
        // Raw ESP arrives with its IPv4 header: a slot holds the largest packet the peer's TUN MTU allows.
        let raw_slot = (self.config.settings().mtu as usize + 60 + HEADROOM + TAILROOM).max(2048);
        let mut raw_buf =
            vec![0u8; raw_slot * sockets::MMSG_MAX.min((256 << 10) / raw_slot).max(1)];
        loop {
            let deadline = tokio::time::Instant::from_std(self.next_deadline());
            tokio::select! {
                r = self.tun.read_vnet(tx.read_buf()) => {
                    self.on_tun(&mut tx, r? - gso::VNET_HDR_LEN);
                    // Drain what is queued: one wake-up, many reads; small packets leave in batches.
                    for _ in 1..BATCH {
                        if !tx.has_room() {
                            self.flush(&mut tx);
                        }
                        match self.tun.get_ref().read_vnet(tx.read_buf()) {
                            Ok(n) => self.on_tun(&mut tx, n - gso::VNET_HDR_LEN),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    self.flush(&mut tx);
                }
                r = self.udp4500.readable() => {
                    r?;
                    // Drain what is queued: one wake-up, many datagrams (and with GRO many per receive).
                    let mut merge = gso::Coalescer::new(&mut coalesce_buf);
                    for _ in 0..BATCH {
                        match sockets::recv_gro(&self.udp4500, &mut udp_buf) {
                            Ok((len, from, seg)) => {
                                for d in udp_buf[..len].chunks_mut(seg.max(1)) {
                                    self.on_udp4500(d, from, &mut merge);
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    if !merge.is_empty() {
                        self.deliver_vnet(merge.take());
                    }
                }
                r = self.udp500.recv_from(&mut udp500_buf) => {
                    let (len, from) = r?;
                    self.endpoint.handle(Instant::now(), &udp500_buf[..len], from, ike::sa::IKE_PORT);
                }
                r = self.raw.readable() => {
                    r?;
                    // recvmmsg: up to 64 datagrams per call, decrypted in place and coalesced for the TUN.
                    let mut merge = gso::Coalescer::new(&mut coalesce_buf);
                    let mut lens = [0usize; sockets::MMSG_MAX];
                    let slots = (raw_buf.len() / raw_slot).clamp(1, sockets::MMSG_MAX);
                    for _ in 0..BATCH {
                        match self.raw.try_recv_many(&mut raw_buf, raw_slot, &mut lens[..slots]) {
                            Ok(n) => {
                                for (d, len) in raw_buf.chunks_mut(raw_slot).zip(lens).take(n) {
                                    self.on_raw(&mut d[..len], &mut merge);
                                }
                                if n < slots {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(e.into()),
                        }
                    }
                    if !merge.is_empty() {
                        self.deliver_vnet(merge.take());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let now = Instant::now();
                    self.endpoint.handle_timeout(now);
                    self.initiate_due(now);
                }
                r = self.control.accept() => {
                    if let Ok((mut stream, _)) = r {
                        if let Some(req) = control::read_request(&mut stream).await {
                            let body = match req.as_str() {
                                "status" => serde_json::to_string(&self.status())?,
                                other => format!("{{\"error\":\"unknown request {other:?}\"}}"),
                            };
                            use tokio::io::AsyncWriteExt;
                            let _ = stream.write_all(format!("{body}\n").as_bytes()).await;
                        }
                    }
                }
                _ = term.recv() => return self.shutdown().await,
                _ = int.recv() => return self.shutdown().await,
            }
            self.pump().await;
        }
    }

    /// Encrypts what one TUN read put at `tx.read_at()` (its virtio-net header in front, `len` bytes of packet
    /// behind). A TCP super-packet is cut into segments laid out so that their ESP datagrams lie back to back,
    /// and goes out at once with one UDP GSO send per 64 KiB; any other packet joins the pending batch of
    /// equal-sized datagrams (ACKs, mostly), sent by [`Daemon::flush`] with one GSO send or `sendmmsg`.
    fn on_tun(&mut self, tx: &mut batch::TxBatch, len: usize) {
        let at = tx.read_at();
        let buf = tx.buf_mut();
        let hdr_bytes: &[u8; gso::VNET_HDR_LEN] = buf[at - gso::VNET_HDR_LEN..at]
            .try_into()
            .expect("10 bytes");
        let hdr = gso::VnetHdr::parse(hdr_bytes);
        let is_gso = match gso::is_tcp_gso(&hdr) {
            Ok(g) => g,
            Err(e) => {
                tracing::debug!("TUN packet dropped: {e}");
                return;
            }
        };
        if !is_gso && gso::complete_checksum(&hdr, &mut buf[at..at + len]).is_err() {
            tracing::debug!("TUN packet with bad checksum offsets dropped");
            return;
        }
        let Some(t) = self.datapath.out_transform(&buf[at..at + len]) else {
            return;
        };
        let front = t.header_overhead();
        let base = tx.used();
        let buf = &mut tx.buf_mut()[base..];
        let at = at - base;
        let segs = if is_gso {
            match gso::segment(buf, at, len, &hdr, front, |l| t.esp_len(l)) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!("TUN super-packet dropped: {e}");
                    return;
                }
            }
        } else {
            // One packet: move it to where its ESP datagram continues the batch.
            buf.copy_within(at..at + len, front);
            gso::Segments {
                count: 1,
                seg_len: len,
                last_len: len,
            }
        };
        let stride = t.esp_len(segs.seg_len);
        let mut wire = None;
        let mut done = 0;
        for i in 0..segs.count {
            let inner = if i + 1 == segs.count {
                segs.last_len
            } else {
                segs.seg_len
            };
            let mut pkt = PacketBuf::new(
                &mut buf[i * stride..i * stride + t.esp_len(inner)],
                front,
                front + inner,
            );
            match self.datapath.encap(&mut pkt) {
                Some(w) => wire = Some(w),
                None => break,
            }
            debug_assert_eq!((pkt.start(), pkt.len()), (0, t.esp_len(inner)));
            done += 1;
        }
        let Some(wire) = wire else {
            return;
        };
        let bytes = if done == segs.count {
            (done - 1) * stride + t.esp_len(segs.last_len)
        } else {
            done * stride
        };
        if is_gso {
            // What is pending goes first, then the segments, in order.
            self.flush(tx);
            self.send_datagrams(&tx.buf()[base..base + bytes], stride, wire);
            tx.clear();
        } else if !tx.append(base, bytes, wire) {
            // It does not continue the pending batch: send that, and this one starts the next.
            self.flush_prefix(tx, base);
            tx.buf_mut().copy_within(base..base + bytes, 0);
            tx.clear();
            let appended = tx.append(0, bytes, wire);
            debug_assert!(appended);
        }
    }

    /// Sends the pending batch of datagrams.
    fn flush(&self, tx: &mut batch::TxBatch) {
        self.flush_prefix(tx, tx.used());
        tx.clear();
    }

    fn flush_prefix(&self, tx: &batch::TxBatch, end: usize) {
        if let Some((wire, stride)) = tx.pending() {
            self.send_datagrams(&tx.buf()[..end], stride, wire);
        }
    }

    /// Sends back-to-back datagrams of `stride` bytes (the last may be shorter): UDP GSO, or sendmmsg for raw
    /// ESP.
    fn send_datagrams(&self, data: &[u8], stride: usize, wire: Wire) {
        match wire {
            Wire::Udp(to) => self.send_udp_gso(data, stride, to),
            Wire::Raw(to) => {
                // Raw ESP has no GSO: sendmmsg, up to 64 datagrams per call.
                if let Err(e) = self.raw.send_many(data, stride, to) {
                    tracing::debug!("sending ESP: {e}");
                }
            }
        }
    }

    /// Sends back-to-back ESP datagrams of `stride` bytes (the last may be shorter) in as few UDP GSO sends as
    /// the kernel's limits allow.
    fn send_udp_gso(&self, data: &[u8], stride: usize, to: SocketAddr) {
        let per_send =
            (sockets::GSO_MAX_BYTES / stride).clamp(1, sockets::GSO_MAX_SEGMENTS) * stride;
        for chunk in data.chunks(per_send) {
            if let Err(e) = sockets::send_gso(&self.udp4500, chunk, stride, to) {
                tracing::debug!("sending ESP (GSO): {e}");
            }
        }
    }

    /// Writes a virtio-net header and packet (possibly a coalesced super-packet) to the TUN.
    fn deliver_vnet(&self, data: &[u8]) {
        if let Err(e) = self.tun.get_ref().write_vnet(data) {
            tracing::debug!("writing to the TUN: {e}");
        }
    }

    fn on_udp4500(&mut self, data: &mut [u8], from: SocketAddr, merge: &mut gso::Coalescer<'_>) {
        match framing::classify_udp(data) {
            UdpPayload::Ike { offset } => {
                self.endpoint
                    .handle(Instant::now(), &data[offset..], from, ike::sa::NAT_T_PORT);
            }
            UdpPayload::Esp => {
                let mut pkt = PacketBuf::full(data);
                if self.datapath.decap(&mut pkt) && !merge.push(pkt.as_slice()) {
                    // Not a continuation of the pending run: write that, start a new one.
                    self.deliver_vnet(merge.take());
                    merge.push(pkt.as_slice());
                }
            }
            UdpPayload::Keepalive | UdpPayload::Invalid => {}
        }
    }

    fn on_raw(&mut self, data: &mut [u8], merge: &mut gso::Coalescer<'_>) {
        let Some(ip) = framing::parse_ipv4(data) else {
            return;
        };
        if ip.protocol != framing::IPPROTO_ESP {
            return;
        }
        let mut pkt = PacketBuf::new(data, ip.payload_offset, ip.payload_end);
        if self.datapath.decap(&mut pkt) && !merge.push(pkt.as_slice()) {
            self.deliver_vnet(merge.take());
            merge.push(pkt.as_slice());
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

    /// Sends what IKE queued and acts on its events.
    async fn pump(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            self.send_ike(&t).await;
        }
        while let Some(e) = self.endpoint.poll_event() {
            self.on_event(e);
        }
    }

    async fn send_ike(&self, t: &Transmit) {
        let sock = if t.local_port == ike::sa::NAT_T_PORT {
            &self.udp4500
        } else {
            &self.udp500
        };
        if let Err(e) = sock.send_to(&t.data, t.remote).await {
            tracing::warn!(to = %t.remote, "sending IKE message: {e}");
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
            Event::IkeDown { peer, reason } => {
                match &reason {
                    Reason::DeletedByUs => tracing::info!(%peer, "IKE SA deleted"),
                    _ => tracing::warn!(%peer, "IKE SA down: {reason}"),
                }
                // Keep trying, with back-off: the mesh wants every tunnel up.
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
                    local = %ts(&c.ts_local), remote = %ts(&c.ts_remote), "Child SA up"
                );
                if let Err(e) = self.datapath.install(&c, window) {
                    tracing::error!(peer = %c.peer, "cannot install Child SA: {e}");
                }
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
                // As responder, the old outbound SA keeps carrying traffic until the peer has the new inbound one.
                let r = if we_initiated {
                    self.datapath.install(&new, window)
                } else {
                    self.datapath.install_deferred(&new, window)
                };
                if let Err(e) = r {
                    tracing::error!(peer = %new.peer, "cannot install rekeyed Child SA: {e}");
                }
            }
            Event::ChildDown {
                peer,
                spi_in,
                spi_out,
                reason,
            } => {
                if spi_in != 0 {
                    tracing::info!(%peer, spi_in = format!("{spi_in:08x}"), spi_out = format!("{spi_out:08x}"), "Child SA deleted: {reason}");
                    self.datapath.remove(&peer, spi_in, spi_out);
                } else {
                    tracing::warn!(%peer, "Child SA refused: {reason}");
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
        let peers = self
            .config
            .peers()
            .map(|p| {
                let sa = sas
                    .iter()
                    .filter(|(n, _)| *n == p.name)
                    .map(|(_, s)| s)
                    .max_by_key(|s| s.state == State::Established);
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
                }
            })
            .collect();
        let d = self.datapath.drops;
        Status {
            host: self.config.local().name.clone(),
            peers,
            drops: GlobalDrops {
                no_sa_in: self.datapath.no_sa_in(),
                no_sa_out: d.no_sa_out,
                no_route: d.no_route,
                policy: d.policy,
                encap_failed: d.encap_failed,
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
