//! Status rendering: what `vmsecd status` answers, built from the control plane's SAs and the datapath's
//! counters.

use std::collections::HashMap;
use std::time::Instant;

use ike::sa::State;

use super::control::{ChildStatus, GlobalDrops, IkeStatus, PeerStatus, SaDrops, Status, Traffic};
use super::control_plane::ControlPlane;
use super::datapath::Datapath;

/// The answer to `vmsecd status`: per peer the IKE SA (an established one if there is one), its Child SAs
/// with the datapath's counters, and the drops no SA accounts for.
pub(super) fn status(
    cp: &ControlPlane,
    datapath: &Datapath,
    recv_errors: u64,
    tun_errors: u64,
) -> Status {
    let now = Instant::now();
    let sas = cp.endpoint().status();
    // One pass over the SAs (half-open ones included, which anyone can create), not one per peer: per peer,
    // an established SA if there is one, else the first.
    let mut best: HashMap<&str, &ike::sa::SaStatus> = HashMap::new();
    for (n, s) in &sas {
        let e = best.entry(n.as_str()).or_insert(s);
        if e.state != State::Established && s.state == State::Established {
            *e = s;
        }
    }
    let running = cp.running();
    let peers = running
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
                encap: s.encap.as_str().into(),
            });
            let children = sa
                .map(|s| {
                    s.children
                        .iter()
                        .map(|(spi_in, spi_out, alg, rekey)| {
                            let cin = datapath.inbound_counters(*spi_in).unwrap_or_default();
                            let cout = datapath
                                .outbound_counters(&p.name, *spi_out)
                                .unwrap_or_default();
                            ChildStatus {
                                spi_in: format!("{spi_in:08x}"),
                                spi_out: format!("{spi_out:08x}"),
                                algorithms: alg.clone(),
                                rekey_in_seconds: rekey.saturating_duration_since(now).as_secs(),
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
                // The address this pair talks over (a dual-stack peer has two).
                address: crate::config::underlay_pair(running.local(), p)
                    .map_or(p.address, |(_, remote)| remote)
                    .to_string(),
                state: state.into(),
                ike,
                children,
                subnets: p.subnets.iter().map(|s| s.to_string()).collect(),
                learned: p.libvirt.is_some(),
            }
        })
        .collect();
    let d = datapath.drops();
    Status {
        host: cp.config().local().name.clone(),
        peers,
        refused: running
            .unreachable()
            .iter()
            .map(|e| e.to_string())
            .collect(),
        drops: GlobalDrops {
            no_sa_in: datapath.no_sa_in(),
            no_sa_out: d.no_sa_out,
            no_route: d.no_route,
            policy: d.policy,
            encap_failed: d.encap_failed,
            recv_errors,
            tun_errors,
        },
        // Filled in by the caller, which owns the transmitters.
        raw_esp_out: Default::default(),
        raw_esp_in: Default::default(),
    }
}
