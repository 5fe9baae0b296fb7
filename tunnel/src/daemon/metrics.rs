//! Prometheus metrics: what the event loop hands over for a scrape ([`Snapshot`]), the counters events feed as
//! they happen ([`EventCounters`]), and the text exposition ([`render`], with the `prometheus-client` crate).
//!
//! The HTTP listener that serves them is `metrics_http.rs`; the listen address is `metrics` in `[mesh]`, off
//! unless set. Counters are read where they already live (the datapath's per-SA counters, the IKE endpoint's
//! statistics), once per scrape, never per packet.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::control::Status;

/// What the event loop hands over for a scrape: the status document (per peer state and counters, the drops
/// no SA accounts for) and the IKE endpoint's admission figures.
#[derive(Debug)]
pub(crate) struct Snapshot {
    pub(crate) status: Status,
    pub(crate) ike: ike::endpoint::Stats,
    pub(crate) half_open: usize,
    pub(crate) demanding_cookies: bool,
    pub(crate) firewall_repairs: u64,
}

/// Counters fed by events as they happen (they have no other home): IKE handshake durations and rekeys.
/// Cheap to clone (shared atomics): the control plane counts, the listener's task reads.
#[derive(Debug, Clone)]
pub(crate) struct EventCounters {
    /// Seconds from the first IKE_SA_INIT to the IKE SA being established, both roles.
    pub(crate) handshake: Histogram,
    /// IKE SAs rekeyed (RFC 7296 2.18), by either side.
    pub(crate) ike_rekeys: Counter,
    /// Child SAs rekeyed (RFC 7296 2.8), by either side.
    pub(crate) child_rekeys: Counter,
}

impl Default for EventCounters {
    fn default() -> EventCounters {
        EventCounters {
            // 5 ms to 20 s: a PSK handshake on a LAN takes milliseconds, RSA-3072 under load hundreds, a peer
            // that answers only after retransmissions seconds.
            handshake: Histogram::new(exponential_buckets(0.005, 2.0, 13)),
            ike_rekeys: Counter::default(),
            child_rekeys: Counter::default(),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabel {
    peer: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerStateLabel {
    peer: String,
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerAddressLabel {
    peer: String,
    address: String,
    family: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerReasonLabel {
    peer: String,
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: &'static str,
}

fn counter(v: u64) -> Counter {
    let c = Counter::default();
    c.inc_by(v);
    c
}

fn gauge(v: i64) -> Gauge {
    let g = Gauge::default();
    g.set(v);
    g
}

/// The OpenMetrics text of one scrape.
pub(crate) fn render(s: &Snapshot, ev: &EventCounters) -> String {
    let mut reg = Registry::with_prefix_and_labels(
        "vmsecd",
        [(
            std::borrow::Cow::Borrowed("host"),
            std::borrow::Cow::Owned(s.status.host.clone()),
        )]
        .into_iter(),
    );
    let state = Family::<PeerStateLabel, Gauge>::default();
    let up = Family::<PeerLabel, Gauge>::default();
    let children = Family::<PeerLabel, Gauge>::default();
    let [in_b, out_b, in_p, out_p] =
        std::array::from_fn(|_| Family::<PeerLabel, Counter>::default());
    let peer_drops = Family::<PeerReasonLabel, Counter>::default();
    let underlay = Family::<PeerAddressLabel, Gauge>::default();
    for p in &s.status.peers {
        underlay
            .get_or_create(&PeerAddressLabel {
                peer: p.name.clone(),
                address: p.address.clone(),
                family: if p.address.contains(':') {
                    "ipv6"
                } else {
                    "ipv4"
                },
            })
            .set(1);
        let l = PeerLabel {
            peer: p.name.clone(),
        };
        for st in ["established", "connecting", "down"] {
            state
                .get_or_create(&PeerStateLabel {
                    peer: p.name.clone(),
                    state: st,
                })
                .set(i64::from(p.state == st));
        }
        up.get_or_create(&l)
            .set(i64::from(p.state == "established"));
        children.get_or_create(&l).set(p.children.len() as i64);
        let mut drops = [0u64; 4];
        for c in &p.children {
            in_b.get_or_create(&l).inc_by(c.r#in.bytes);
            out_b.get_or_create(&l).inc_by(c.out.bytes);
            in_p.get_or_create(&l).inc_by(c.r#in.packets);
            out_p.get_or_create(&l).inc_by(c.out.packets);
            for (d, v) in drops.iter_mut().zip([
                c.drops.replay,
                c.drops.auth,
                c.drops.malformed,
                c.drops.dummy,
            ]) {
                *d += v;
            }
        }
        // Present at 0 before the first Child SA, so that rate() has a start.
        for f in [&in_b, &out_b, &in_p, &out_p] {
            let _ = f.get_or_create(&l);
        }
        for (reason, v) in ["replay", "auth", "malformed", "dummy"]
            .into_iter()
            .zip(drops)
        {
            peer_drops
                .get_or_create(&PeerReasonLabel {
                    peer: p.name.clone(),
                    reason,
                })
                .inc_by(v);
        }
    }
    reg.register(
        "peer_state",
        "1 for the state the peer's IKE SA is in (established, connecting, down), 0 for the others",
        state,
    );
    reg.register("peer_up", "1 while the peer's IKE SA is established", up);
    reg.register(
        "peer_underlay",
        "1, labelled with the underlay address the peer is reached at and its family (a dual-stack pair uses one)",
        underlay,
    );
    reg.register("peer_child_sas", "Child SAs with the peer", children);
    let traffic = "of inner packets through the peer's current Child SAs (a rekeyed SA starts at 0: a counter reset)";
    reg.register_with_unit(
        "peer_in",
        format!("Bytes received and decrypted {traffic}"),
        Unit::Bytes,
        in_b,
    );
    reg.register_with_unit(
        "peer_out",
        format!("Bytes encrypted and sent {traffic}"),
        Unit::Bytes,
        out_b,
    );
    reg.register(
        "peer_in_packets",
        format!("Packets received and decrypted {traffic}"),
        in_p,
    );
    reg.register(
        "peer_out_packets",
        format!("Packets encrypted and sent {traffic}"),
        out_p,
    );
    reg.register(
        "peer_drops",
        "Inbound ESP packets dropped by the peer's current Child SAs, by reason (replay, auth: ICV failed, \
         malformed, dummy)",
        peer_drops,
    );
    let drops = Family::<ReasonLabel, Counter>::default();
    let d = &s.status.drops;
    for (reason, v) in [
        ("no_sa_in", d.no_sa_in),
        ("no_sa_out", d.no_sa_out),
        ("no_route", d.no_route),
        ("policy", d.policy),
        ("encap_failed", d.encap_failed),
        ("recv_error", d.recv_errors),
        ("tun_error", d.tun_errors),
    ] {
        drops.get_or_create(&ReasonLabel { reason }).inc_by(v);
    }
    reg.register(
        "drops",
        "Packets no SA accounts for, by reason: no_sa_in (unknown SPI), no_sa_out (peer without a Child SA yet), \
         no_route (no peer owns the address), policy (outside the SA's selectors), encap_failed, recv_error \
         (socket receive errors survived), tun_error",
        drops,
    );
    let raw = Family::<PathLabel, Counter>::default();
    let r = &s.status.raw_esp_out;
    for (path, v) in [("ring", r.ring), ("socket", r.socket)] {
        raw.get_or_create(&PathLabel { path }).inc_by(v);
    }
    reg.register(
        "raw_esp_out_packets",
        "Raw ESP (IP protocol 50) packets sent, by path: ring (the AF_PACKET transmit ring) or socket (the raw \
         socket: next hop unresolved, over the MTU, ring full, one batch per peer and second)",
        raw,
    );
    let xdp = &s.status.raw_esp_in;
    reg.register(
        "raw_esp_in_xdp_packets",
        "Raw ESP packets received through AF_XDP (raw_rx = \"xdp\"); the raw socket receives the rest",
        counter(xdp.xdp),
    );
    reg.register(
        "raw_esp_in_xdp_dropped",
        "Frames the kernel dropped for vmsecd's AF_XDP sockets (no free frame: the daemon fell behind)",
        counter(xdp.xdp_dropped),
    );
    let init = Family::<ReasonLabel, Counter>::default();
    for (reason, v) in [
        ("unknown_source", s.ike.unknown_source),
        ("rate_limited", s.ike.rate_limited),
        ("capped", s.ike.capped),
        ("refused", s.ike.refused),
        ("half_open_expired", s.ike.half_open_expired),
        ("evicted", s.ike.evicted),
    ] {
        init.get_or_create(&ReasonLabel { reason }).inc_by(v);
    }
    reg.register(
        "ike_init_dropped",
        "Unauthenticated IKE_SA_INIT requests or half-open SAs dropped or refused, by reason",
        init,
    );
    reg.register(
        "ike_half_open_sas",
        "Half-open responder IKE SAs (IKE_SA_INIT answered, no IKE_AUTH yet)",
        gauge(s.half_open as i64),
    );
    reg.register(
        "ike_cookies_demanded",
        "1 while new initiators are asked for a cookie whatever their address (RFC 7296 2.6: pressure above the \
         threshold)",
        gauge(i64::from(s.demanding_cookies)),
    );
    reg.register(
        "ike_cookies_sent",
        "COOKIE answers sent",
        counter(s.ike.cookies_sent),
    );
    reg.register(
        "ike_key_exchanges",
        "Key exchanges done for IKE_SA_INIT requests",
        counter(s.ike.key_exchanges),
    );
    reg.register_with_unit(
        "ike_handshake_duration",
        "From the first IKE_SA_INIT sent or received to the IKE SA established",
        Unit::Seconds,
        ev.handshake.clone(),
    );
    reg.register("ike_rekeys", "IKE SAs rekeyed", ev.ike_rekeys.clone());
    reg.register("child_rekeys", "Child SAs rekeyed", ev.child_rekeys.clone());
    reg.register(
        "firewall_repairs",
        "Firewall checks that found vmsecd's rules missing or below libvirt's and repaired them",
        counter(s.firewall_repairs),
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &reg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::control::{
        ChildStatus, GlobalDrops, PeerStatus, RawEspOut, SaDrops, Traffic,
    };

    fn snapshot() -> Snapshot {
        let child = |bytes| ChildStatus {
            spi_in: "c0000001".into(),
            spi_out: "c0000002".into(),
            algorithms: "AES_GCM_16_256".into(),
            rekey_in_seconds: 100,
            r#in: Traffic { packets: 3, bytes },
            out: Traffic {
                packets: 4,
                bytes: 400,
            },
            drops: SaDrops {
                replay: 1,
                ..SaDrops::default()
            },
        };
        Snapshot {
            status: Status {
                host: "h1".into(),
                peers: vec![
                    PeerStatus {
                        name: "h2".into(),
                        address: "198.18.0.2".into(),
                        state: "established".into(),
                        ike: None,
                        children: vec![child(300), child(700)],
                        subnets: vec![],
                        learned: false,
                    },
                    PeerStatus {
                        name: "h3".into(),
                        address: "198.18.0.3".into(),
                        state: "down".into(),
                        ike: None,
                        children: vec![],
                        subnets: vec![],
                        learned: false,
                    },
                ],
                drops: GlobalDrops {
                    no_sa_out: 7,
                    ..GlobalDrops::default()
                },
                raw_esp_out: RawEspOut {
                    ring: 90,
                    socket: 10,
                },
                raw_esp_in: crate::daemon::control::RawEspIn {
                    path: "xdp (generic) on u0, 1 queue".into(),
                    xdp: 70,
                    xdp_dropped: 3,
                },
                refused: vec![],
            },
            ike: ike::endpoint::Stats::default(),
            half_open: 2,
            demanding_cookies: true,
            firewall_repairs: 5,
        }
    }

    /// Every metric the README lists is there, with the host label, summed per peer over its Child SAs.
    #[test]
    fn the_exposition_names_every_metric() {
        let ev = EventCounters::default();
        ev.handshake.observe(0.02);
        ev.child_rekeys.inc();
        let text = render(&snapshot(), &ev);
        for line in [
            r#"vmsecd_peer_state{host="h1",peer="h2",state="established"} 1"#,
            r#"vmsecd_peer_state{host="h1",peer="h3",state="down"} 1"#,
            r#"vmsecd_peer_up{host="h1",peer="h2"} 1"#,
            r#"vmsecd_peer_underlay{host="h1",peer="h2",address="198.18.0.2",family="ipv4"} 1"#,
            r#"vmsecd_peer_in_bytes_total{host="h1",peer="h2"} 1000"#,
            r#"vmsecd_peer_in_bytes_total{host="h1",peer="h3"} 0"#,
            r#"vmsecd_peer_out_bytes_total{host="h1",peer="h2"} 800"#,
            r#"vmsecd_peer_in_packets_total{host="h1",peer="h2"} 6"#,
            r#"vmsecd_peer_drops_total{host="h1",peer="h2",reason="replay"} 2"#,
            r#"vmsecd_drops_total{host="h1",reason="no_sa_out"} 7"#,
            r#"vmsecd_raw_esp_out_packets_total{host="h1",path="ring"} 90"#,
            r#"vmsecd_raw_esp_out_packets_total{host="h1",path="socket"} 10"#,
            r#"vmsecd_raw_esp_in_xdp_packets_total{host="h1"} 70"#,
            r#"vmsecd_raw_esp_in_xdp_dropped_total{host="h1"} 3"#,
            r#"vmsecd_ike_half_open_sas{host="h1"} 2"#,
            r#"vmsecd_ike_cookies_demanded{host="h1"} 1"#,
            r#"vmsecd_ike_handshake_duration_seconds_count{host="h1"} 1"#,
            r#"vmsecd_child_rekeys_total{host="h1"} 1"#,
            r#"vmsecd_firewall_repairs_total{host="h1"} 5"#,
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }
}
