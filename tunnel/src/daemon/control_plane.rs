//! The control plane: the IKE endpoint, the initiation schedule, the subnets learned from `subnets = "libvirt"`
//! peers and the early-rekey bookkeeping, turning `ike` events into typed [`Action`]s for the datapath, the
//! routes and the firewall (applied by `apply.rs`).
//!
//! It does no I/O and reads no clock: the daemon hands it datagrams, `now` and the datapath's list of outbound
//! SAs running low, and sends what [`ControlPlane::poll_transmit`] returns. That is what lets the unit tests
//! (`control_plane/tests.rs`) drive two of them over an in-memory network with a virtual clock, without root.
//!
//! The configuration it holds is the mesh file's, never rewritten: the subnets learned from `subnets = "libvirt"`
//! peers are state of their own (`learned.rs`), and [`ControlPlane::running`] is the two combined.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Instant;

use ike::endpoint::Endpoint;
use ike::event::{ChildSaInfo, Event, Reason, Transmit};

use super::learned::{Learn, Learned};
use super::reload_plan::ReloadPlan;
use super::schedule::Schedule;
use super::{logcap, peers};
use crate::config::Config;

/// How the outbound side of a newly installed Child SA takes over: the make-before-break rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outbound {
    /// At once: a new Child SA, or a rekey we initiated (the peer has the new inbound SA once it answered).
    Now,
    /// As rekey responder: the old outbound SA keeps carrying traffic until the peer has the new inbound one,
    /// which the datapath sees as the first packet on the new inbound SA (or the delete of the old pair).
    WhenPeerUsesIt,
}

/// What the daemon must do to the datapath, the routes and the firewall after an `ike` event.
#[derive(Debug)]
pub(super) enum Action {
    /// Install a Child SA in the datapath (a new one, or the new SA of a rekey).
    Install {
        child: Box<ChildSaInfo>,
        outbound: Outbound,
    },
    /// A Child SA replaced by a rekey: its outbound side goes, its inbound side lingers a little for packets
    /// still in flight.
    Retire {
        peer: String,
        spi_in: u32,
        spi_out: u32,
    },
    /// A Child SA deleted (not by a rekey): both sides go at once.
    Remove {
        peer: String,
        spi_in: u32,
        spi_out: u32,
    },
    /// The subnets learned from a `subnets = "libvirt"` peer changed: the routes, the datapath's prefix table
    /// and the firewall follow [`ControlPlane::running`].
    SubnetsChanged,
}

/// See the module documentation.
pub(super) struct ControlPlane {
    /// The mesh file as last loaded (at start-up or by reload); never rewritten in between.
    config: Config,
    endpoint: Endpoint,
    schedule: Schedule,
    /// Subnets learned from the Child SAs of `subnets = "libvirt"` peers.
    learned: Learned,
    /// The names of those peers in `config`: a Child SA event of any other peer is no business of `learned`,
    /// found out without a walk over every host of the file.
    libvirt_peers: HashSet<String>,
    /// The outbound SPIs whose early rekey was already asked for.
    rekey_asked: HashSet<u32>,
    /// Peers whose SAs we are deleting on purpose (reload removed or changed them, or their learned subnets
    /// were refused): their Child SAs are cut at once, not left to linger (see `linger`).
    cutting: HashSet<String>,
    /// Rate limits of the log lines that carry what unauthenticated senders chose.
    pub(super) logs: logcap::Limits,
    /// The endpoint's next timer as last asked, and whether the endpoint was called since (see `next_timer`).
    ike_deadline: Option<Instant>,
    touched: bool,
    /// Handshake durations and rekeys, for the metrics.
    pub(super) counters: super::metrics::EventCounters,
}

impl ControlPlane {
    /// The control plane of the local host of `config`, with every peer's first initiation scheduled.
    pub(super) fn new(config: Config, now: Instant) -> ControlPlane {
        let mut schedule = Schedule::default();
        for p in config.peers() {
            if let Ok((local, remote)) = crate::config::underlay_pair(config.local(), p) {
                schedule.add(&p.name, local, remote, now);
            }
        }
        ControlPlane {
            endpoint: Endpoint::new(peers::peer_configs(&config)),
            libvirt_peers: libvirt_peers(&config),
            config,
            schedule,
            learned: Learned::default(),
            rekey_asked: HashSet::new(),
            cutting: HashSet::new(),
            logs: logcap::Limits::new(),
            ike_deadline: None,
            touched: true,
            counters: super::metrics::EventCounters::default(),
        }
    }

    /// The mesh file's configuration, as loaded.
    pub(super) fn config(&self) -> &Config {
        &self.config
    }

    pub(super) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The configuration in force: the file's, with the subnets learned from each `subnets = "libvirt"` peer.
    pub(super) fn running(&self) -> Config {
        let mut c = self.config.clone();
        let me = c.local().name.clone();
        for h in c.mesh.hosts.iter_mut() {
            if h.libvirt.is_some() && h.name != me {
                h.subnets = self.learned.subnets(&h.name);
            }
        }
        c
    }

    /// An IKE datagram arrived on `local_port`.
    pub(super) fn handle(&mut self, now: Instant, data: &[u8], from: SocketAddr, local_port: u16) {
        self.touched = true;
        self.endpoint.handle(now, data, from, local_port);
    }

    /// The time of [`ControlPlane::next_timer`] came: the endpoint's timers, then the initiations due.
    pub(super) fn handle_timeout(&mut self, now: Instant) {
        self.touched = true;
        self.endpoint.handle_timeout(now);
        for name in self.schedule.take_due(now) {
            if !self.endpoint.has_sa(&name) {
                tracing::info!(peer = %name, "initiating IKE SA");
                self.endpoint.connect(now, &name);
            }
        }
    }

    /// When [`ControlPlane::handle_timeout`] is next due.
    pub(super) fn next_timer(&mut self) -> Option<Instant> {
        // The endpoint's next timer is a scan over every IKE SA, half-open ones included: asked again only after
        // something touched the endpoint, not after each batch of ESP or TUN packets.
        if std::mem::take(&mut self.touched) {
            self.ike_deadline = self.endpoint.poll_timeout();
        }
        [self.ike_deadline, self.schedule.next()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The next IKE datagram to send.
    pub(super) fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.endpoint.poll_transmit();
        self.touched |= t.is_some();
        t
    }

    /// The next event of the endpoint, as actions (possibly none). `None` when no event is queued.
    pub(super) fn poll_actions(&mut self, now: Instant) -> Option<Vec<Action>> {
        let e = self.endpoint.poll_event()?;
        // Acting on an event may call the endpoint again (a learned subnet refused deletes the peer's SA).
        self.touched = true;
        Some(self.on_event(e, now))
    }

    /// Asks IKE to rekey every Child SA whose outbound SA has used seven eighths of its sequence numbers (once
    /// per SA): at high packet rates a 32-bit sequence space can end before the lifetime does, and an
    /// exhausted SA sends nothing (RFC 4303 3.3.3). `running_low` is the datapath's list of such outbound SPIs;
    /// the inbound SPI that names the Child SA to IKE comes from IKE's own pairing.
    pub(super) fn rekey_running_low(&mut self, now: Instant, running_low: Vec<u32>) {
        let fresh: Vec<u32> = running_low
            .into_iter()
            .filter(|spi_out| self.rekey_asked.insert(*spi_out))
            .collect();
        if fresh.is_empty() {
            return;
        }
        self.touched = true;
        let pairs: Vec<(u32, u32)> = self
            .endpoint
            .status()
            .iter()
            .flat_map(|(_, s)| s.children.iter().map(|c| (c.0, c.1)))
            .collect();
        for spi_out in fresh {
            if let Some(&(spi_in, _)) = pairs.iter().find(|(_, o)| *o == spi_out) {
                tracing::info!(
                    spi_in = format!("{spi_in:08x}"),
                    spi_out = format!("{spi_out:08x}"),
                    "Child SA has used 7/8 of its sequence numbers: rekeying it now"
                );
                self.endpoint.rekey_child_now(now, spi_in);
            }
        }
    }

    /// Deletes every SA (at shutdown).
    pub(super) fn delete_all(&mut self, now: Instant) {
        self.touched = true;
        self.endpoint.delete_all(now);
    }

    /// True when no exchange is under way.
    pub(super) fn is_idle(&self) -> bool {
        self.endpoint.is_idle()
    }

    /// Writes the summaries of the rate-limited log lines.
    pub(super) fn flush_logs(&mut self, now: Instant) {
        self.logs.flush(now);
    }

    /// Applies a reload's plan to IKE, the schedule and the learned subnets; `new` becomes the configuration.
    pub(super) fn reload(&mut self, now: Instant, new: Config, plan: &ReloadPlan) {
        self.touched = true;
        // IKE: delete what goes or changes, then the new peer list (unchanged peers keep their configuration
        // object, and with it their SAs).
        for n in plan.remove.iter().chain(&plan.change) {
            self.delete_peer(now, n);
        }
        self.endpoint.set_peers(now, plan.peers.clone());
        // When to initiate: new peers as at start-up; changed ones once their old IKE SA is gone (the IkeDown
        // of the delete schedules it, see `on_event`); removed ones never again.
        for n in &plan.remove {
            self.schedule.remove(n);
        }
        for p in new.peers().filter(|p| plan.add.contains(&p.name)) {
            if let Ok((local, remote)) = crate::config::underlay_pair(new.local(), p) {
                self.schedule.add(&p.name, local, remote, now);
            }
        }
        // Subnets learned from the Child SAs of `subnets = "libvirt"` peers stay while their tunnel does.
        for n in plan.remove.iter().chain(&plan.change) {
            self.learned.drop_peer(n);
        }
        self.libvirt_peers = libvirt_peers(&new);
        self.config = new;
        // A host the new file adds may list subnets that a libvirt peer's range holds and that the peer already
        // took (a listed subnet is never accepted from it when learned, but this one came first): its IKE SA goes
        // now, not at its next rekey.
        for peer in self
            .learned
            .recheck(&self.config, now, &mut self.logs.learned_refused)
        {
            self.delete_peer(now, &peer);
        }
    }

    /// The ranges of the `subnets = "libvirt"` peers: only this host's routes inside them matter to the control
    /// plane (see [`ControlPlane::set_host_routes`]).
    pub(super) fn libvirt_ranges(&self) -> Vec<crate::prefix::Prefix> {
        self.config
            .peers()
            .filter_map(|p| p.libvirt.as_ref())
            .flat_map(|lv| lv.range.iter().copied())
            .collect()
    }

    /// This host's unicast routes through other interfaces than the TUN (the daemon reads them every second):
    /// subnets a `subnets = "libvirt"` peer negotiates must not overlap those inside its range (see
    /// `Learned::set_host_routes`). A peer whose learned subnets overlap one that appeared since loses its IKE
    /// SA, and with it their routes.
    pub(super) fn set_host_routes(
        &mut self,
        now: Instant,
        routes: impl IntoIterator<Item = crate::prefix::Prefix>,
    ) {
        let clashing =
            self.learned
                .set_host_routes(&self.config, routes, now, &mut self.logs.learned_refused);
        for peer in clashing {
            self.delete_peer(now, &peer);
        }
    }

    /// Deletes the IKE SA with `peer` (its learned subnets were refused).
    pub(super) fn delete_peer(&mut self, now: Instant, peer: &str) {
        self.touched = true;
        if self.endpoint.has_sa(peer) {
            self.cutting.insert(peer.to_owned());
        }
        self.endpoint.delete_peer(now, peer);
    }

    /// Whether a deleted Child SA's inbound SA keeps accepting packets for a while (the datapath's
    /// `REKEYED_INBOUND_LINGER`, 5 s) rather than going at once. ESP the peer sent on it just
    /// before the delete may still be in flight: behind the DELETE on another path (raw ESP is read from
    /// another socket than IKE), or sent before the peer processed ours. That is so after a rekey, and after a
    /// delete of one of two Child SAs or IKE SAs the peer and we hold (a duplicate of a simultaneous start,
    /// resolved a second later while it carried traffic). An SA past its hard lifetime, of a peer found dead or restarted, or cut on purpose (reload, refused subnets) goes at
    /// once. Bounded: Child SAs come and go only as fast as `ike`'s rate limits let a peer create them.
    fn linger(&self, peer: &str, reason: &Reason) -> bool {
        match reason {
            Reason::Rekeyed => true,
            Reason::DeletedByPeer | Reason::DeletedByUs => {
                !self.cutting.contains(peer) && self.config.peers().any(|p| p.name == peer)
            }
            _ => false,
        }
    }

    /// Learns the subnets of a new Child SA of a `subnets = "libvirt"` peer (see `learned.rs`): false, with the
    /// peer's IKE SA deleted (it is tried again later), if they are refused; the caller then installs nothing.
    fn learn(&mut self, c: &ChildSaInfo, now: Instant, actions: &mut Vec<Action>) -> bool {
        if !self.libvirt_peers.contains(&c.peer) {
            return true;
        }
        match self
            .learned
            .learn(&self.config, c, now, &mut self.logs.learned_refused)
        {
            Learn::Kept => true,
            Learn::Changed => {
                actions.push(Action::SubnetsChanged);
                true
            }
            Learn::Refused => {
                self.delete_peer(now, &c.peer);
                false
            }
        }
    }

    fn on_event(&mut self, e: Event, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        match e {
            Event::IkeUp {
                peer,
                spis,
                algorithms,
                remote,
                nat,
                encap,
                initiator,
                handshake,
            } => {
                self.counters.handshake.observe(handshake.as_secs_f64());
                tracing::info!(
                    %peer, %remote, spi_i = format!("{:016x}", spis.0), spi_r = format!("{:016x}", spis.1),
                    %algorithms, udp_encap = nat, encap = %encap.as_str(), role = if initiator { "initiator" } else { "responder" },
                    "IKE SA established"
                );
                self.schedule.up(&peer);
            }
            Event::IkeRekeyed {
                peer,
                old_spis,
                new_spis,
                initiator,
            } => {
                self.counters.ike_rekeys.inc();
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
                log_ike_down(&mut self.logs, &peer, &reason, unauthenticated, now);
                if !self.endpoint.has_sa(&peer) {
                    self.cutting.remove(&peer);
                }
                // Keep trying, with back-off: the mesh wants every tunnel up. But a report about an IKE SA that
                // never authenticated the peer (a refused request from its address, or an unprotected error our own
                // IKE_SA_INIT got, which `ike` does not act on) changes nothing while an IKE SA with the peer is
                // still alive or an initiation is scheduled: anyone who can send from the peer's address can cause
                // one (issue 12 item 3). Only when our own initiation has ended on it, with nothing left and
                // nothing scheduled, is it retried, with the same back-off as any failure.
                if unauthenticated
                    && (self.endpoint.has_sa(&peer) || self.schedule.is_scheduled(&peer))
                {
                    return actions;
                }
                self.schedule.failed(&peer, now);
            }
            Event::ChildUp(c) => {
                tracing::info!(
                    peer = %c.peer, spi_in = format!("{:08x}", c.spi_in), spi_out = format!("{:08x}", c.spi_out),
                    transform = %c.transform, esn = c.esn, udp_encap = c.udp_encap,
                    local = %logcap::clean(&ts(&c.ts_local), logcap::MAX_FIELD),
                    remote = %logcap::clean(&ts(&c.ts_remote), logcap::MAX_FIELD), "Child SA up"
                );
                if self.learn(&c, now, &mut actions) {
                    actions.push(Action::Install {
                        child: c,
                        outbound: Outbound::Now,
                    });
                }
            }
            Event::ChildRekeyed {
                old_spi_in,
                new,
                we_initiated,
            } => {
                self.counters.child_rekeys.inc();
                tracing::info!(
                    peer = %new.peer, old_spi_in = format!("{old_spi_in:08x}"), spi_in = format!("{:08x}", new.spi_in),
                    spi_out = format!("{:08x}", new.spi_out), initiator = we_initiated, "Child SA rekeyed"
                );
                if self.learn(&new, now, &mut actions) {
                    actions.push(Action::Install {
                        child: new,
                        outbound: if we_initiated {
                            Outbound::Now
                        } else {
                            Outbound::WhenPeerUsesIt
                        },
                    });
                }
            }
            Event::ChildDown {
                peer,
                spi_in,
                spi_out,
                reason,
                refused,
            } => {
                if !refused {
                    tracing::info!(%peer, spi_in = format!("{spi_in:08x}"), spi_out = format!("{spi_out:08x}"), "Child SA deleted: {}", logcap::clean(&reason, logcap::MAX_FIELD));
                    actions.push(if self.linger(&peer, &reason) {
                        Action::Retire {
                            peer: peer.clone(),
                            spi_in,
                            spi_out,
                        }
                    } else {
                        Action::Remove {
                            peer: peer.clone(),
                            spi_in,
                            spi_out,
                        }
                    });
                    if self.learned.forget(&peer, spi_in) {
                        actions.push(Action::SubnetsChanged);
                    }
                    self.rekey_asked.remove(&spi_out);
                } else if self.logs.child_refused.allow(now) {
                    tracing::warn!(%peer, "Child SA refused: {}", logcap::clean(&reason, logcap::MAX_FIELD));
                }
            }
            _ => {}
        }
        actions
    }
}

/// The peers of `config` with `subnets = "libvirt"`.
fn libvirt_peers(config: &Config) -> HashSet<String> {
    config
        .peers()
        .filter(|p| p.libvirt.is_some())
        .map(|p| p.name.clone())
        .collect()
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
pub(super) fn log_ike_down(
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
mod tests;
