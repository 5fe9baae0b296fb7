//! Setting the daemon up and tearing it down: the fail-closed routes, the TUN and its routes, the sockets, the
//! datapath and its workers, the control socket, the firewall; and keeping the keys out of core files.

use std::time::Instant;

use super::apply::local_sources;
use super::control_plane::ControlPlane;
use super::datapath::Datapath;
use super::{
    apply, control, logcap, metrics_http, rawrx, route_repair, sockets, tx, workers, Daemon,
};
use crate::config::Config;
use crate::route::{Netlink, Route, Routes};
use crate::tun::{AsyncQueue, Tun, TunOptions};

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

impl Daemon {
    pub(super) fn setup(
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
        // Beside the raw socket, never instead of it: see rawrx.
        // A dual-stack host's IPv4 address may be its second (AF_XDP receive serves IPv4).
        let v4 = [Some(local.address), local.second_address]
            .into_iter()
            .flatten()
            .find(std::net::IpAddr::is_ipv4)
            .unwrap_or(local.address);
        let rawrx = rawrx::RawRx::open(s.raw_rx, v4);
        // A dual-stack host: the same three on its other family's address.
        let second = local
            .second_address
            .map(sockets::Second::open)
            .transpose()?;
        let datapath = Datapath::new(
            &config
                .peers()
                .map(|p| (p.name.clone(), p.subnets.clone()))
                .collect::<Vec<_>>(),
        );
        let mut tx = tx::Transmitter::new(
            datapath.outbound().clone(),
            std::os::fd::AsFd::as_fd(&udp4500).try_clone_to_owned()?,
            raw.try_clone_fd()?,
            s.raw_tx == crate::config::RawTxPath::Ring,
        );
        if let Some(s) = &second {
            tx.set_second(
                s.is_ipv6(),
                std::os::fd::AsFd::as_fd(&s.udp4500).try_clone_to_owned()?,
                s.raw.try_clone_fd()?,
            );
        }
        let workers = workers::Workers::start(queues, &tx)
            .map_err(|e| anyhow::anyhow!("starting the transmit workers: {e}"))?;
        let control = control::listen(&s.control_socket)?;
        let metrics_addr = s.metrics.map(|m| m.resolve(local.address));
        let metrics = metrics_addr.map(metrics_http::listen).transpose()?;
        if let Some(addr) = metrics_addr {
            tracing::info!(%addr, "serving Prometheus metrics on http://{addr}/metrics");
        }
        tracing::info!(
            host = %local.name, address = %local.addresses_text(), interface = %s.interface, peers = config.peers().count(),
            workers = s.workers,
            "vmsecd up: routes to {} remote subnets point into {}",
            routes.installed().len(), s.interface
        );
        for e in config.unreachable() {
            tracing::error!("{e}");
        }
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
            file_config: config.clone(),
            membership: None,
            members: Default::default(),
            members_refused: Vec::new(),
            member_pins: Default::default(),
            applied_subnets: apply::firewall_subnets(&config),
            firewall: crate::firewall::Handle::start(&config)?,
            cp: ControlPlane::new(config, Instant::now()),
            datapath,
            routes,
            failclosed,
            tun,
            wrote_tun0: std::cell::Cell::new(false),
            tx,
            workers,
            udp500,
            udp4500,
            raw,
            rawrx,
            second,
            control: Some(control),
            metrics,
            ifindex,
            private_key,
            libvirt_dirs,
            recv_errors: 0,
            logs: logcap::Limits::new(),
            route_repairs: route_repair::FailureLog::default(),
        })
    }

    /// `clean`: a stop asked for (SIGTERM, Ctrl-C), which also removes the fail-closed routes; after a failure
    /// they stay, as after a crash.
    pub(super) fn teardown(&mut self, clean: bool) {
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
}
