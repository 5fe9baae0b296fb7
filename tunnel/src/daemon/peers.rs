//! From the mesh file to what the IKE engine needs per peer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ike::config::{AuthMethod, Lifetimes, PeerConfig, Retransmit, WallClock};
use ike::crypto::signature::Padding;
use zeroize::Zeroizing;

use crate::config::{Auth, Config, Encap};

/// One IKE peer configuration per other host in the mesh.
pub(crate) fn peer_configs(config: &Config) -> Vec<Arc<PeerConfig>> {
    let s = config.settings();
    let local = config.local();
    let psk = match &config.mesh.auth {
        Auth::Psk(psk) => Some(AuthMethod::Psk(Zeroizing::new(psk.secret().to_vec()))),
        _ => None,
    };
    // With certificates: our chain, sent to every peer, and the time their certificates are checked against.
    let own_chain = match &config.mesh.auth {
        // Config::new made sure this host has one.
        Auth::Cert(c) => Some(Arc::new(c.certs[&local.name].chain.clone())),
        _ => None,
    };
    let clock = WallClock {
        at: Instant::now(),
        unix: crate::config::unix_now(),
    };
    config
        .peers()
        .filter_map(|peer| {
            // Config::peers gives only the peers we share an underlay family with.
            let (local_addr, remote_addr) = crate::config::underlay_pair(local, peer).ok()?;
            let auth = match (&psk, &config.mesh.auth) {
                (Some(psk), _) => psk.clone(),
                (None, Auth::PubKey(pk)) => AuthMethod::PubKey {
                    private: pk.private_key.key.clone(),
                    padding: Padding::Pss,
                    // Config validation made sure every host has one.
                    peer_public: pk.public_keys[&peer.name].key.clone(),
                },
                (None, Auth::Cert(c)) => AuthMethod::Certificate {
                    private: c.private_key.key.clone(),
                    padding: Padding::Pss,
                    chain: own_chain.clone().expect("set for Auth::Cert above"),
                    trust: c.ca.anchors.clone(),
                    peer_cert: c.certs.get(&peer.name).map(|f| Arc::new(f.cert().clone())),
                    clock,
                },
                (None, Auth::Psk(_)) => unreachable!("handled above"),
            };
            Some(Arc::new(PeerConfig {
                name: peer.name.clone(),
                local_addr,
                remote_addr,
                remote_port: peer.port,
                local_id: local.id.to_id(),
                remote_id: peer.id.to_id(),
                auth,
                ike_proposals: s.ike_proposals.clone(),
                esp_proposals: s.esp_proposals.clone(),
                local_ts: local.subnets.iter().map(|p| p.selector()).collect(),
                // A `subnets = "libvirt"` peer: its range, which it narrows to its subnets (RFC 7296 2.9).
                remote_ts: crate::config::Tunnel { local, peer }
                    .remote_selectors()
                    .iter()
                    .map(|p| p.selector())
                    .collect(),
                force_encap: s.encap == Encap::Udp,
                // `auto`: ESP in UDP 4500 towards vmsecd peers (a Vendor ID both announce), raw ESP towards
                // others without a NAT.
                udp_with_vmsecd: s.encap == Encap::Auto,
                retransmit: Retransmit::default(),
                lifetimes: Lifetimes {
                    ike_rekey: s.ike_lifetime.saturating_sub(s.rekey_margin),
                    ike_lifetime: s.ike_lifetime,
                    child_rekey: s.child_lifetime.saturating_sub(s.rekey_margin),
                    // Up to a third of the margin at random, so two peers rarely rekey at the same moment.
                    jitter: s.rekey_margin / 3,
                    dpd_delay: s.dpd_delay.unwrap_or(Duration::ZERO),
                    nat_keepalive: s.nat_keepalive,
                },
                replay_window: s.replay_window,
                fragment_size: s.ike_fragment_size,
            }))
        })
        .collect()
}

/// True if two configurations of one peer would negotiate the same SAs: every field compared (the destructuring
/// below stops the build when `PeerConfig` gains one), the keys through their public halves and certificates
/// through their DER. A reload leaves the tunnel to a peer alone exactly when this holds.
pub(crate) fn same(a: &PeerConfig, b: &PeerConfig) -> bool {
    let secrets_equal = match (&a.auth, &b.auth) {
        (AuthMethod::Psk(x), AuthMethod::Psk(y)) => x == y,
        (
            AuthMethod::PubKey {
                private: pa,
                padding: da,
                peer_public: qa,
            },
            AuthMethod::PubKey {
                private: pb,
                padding: db,
                peer_public: qb,
            },
        ) => pa.public_key() == pb.public_key() && da == db && qa == qb,
        (
            AuthMethod::Certificate {
                private: pa,
                padding: da,
                chain: ca,
                trust: ta,
                peer_cert: qa,
                ..
            },
            AuthMethod::Certificate {
                private: pb,
                padding: db,
                chain: cb,
                trust: tb,
                peer_cert: qb,
                ..
            },
        ) => {
            let ders = |v: &[ike::crypto::x509::Certificate]| -> Vec<Vec<u8>> {
                v.iter().map(|c| c.der().to_vec()).collect()
            };
            pa.public_key() == pb.public_key()
                && da == db
                && ders(ca) == ders(cb)
                && ta.certreq_data() == tb.certreq_data()
                && qa.as_ref().map(|c| c.der()) == qb.as_ref().map(|c| c.der())
        }
        _ => false,
    };
    let PeerConfig {
        name,
        local_addr,
        remote_addr,
        remote_port,
        local_id,
        remote_id,
        auth: _,
        ike_proposals,
        esp_proposals,
        local_ts,
        remote_ts,
        force_encap,
        udp_with_vmsecd,
        retransmit,
        lifetimes,
        replay_window,
        fragment_size,
    } = a;
    secrets_equal
        && *name == b.name
        && *local_addr == b.local_addr
        && *remote_addr == b.remote_addr
        && *remote_port == b.remote_port
        && *local_id == b.local_id
        && *remote_id == b.remote_id
        && *ike_proposals == b.ike_proposals
        && *esp_proposals == b.esp_proposals
        && *local_ts == b.local_ts
        && *remote_ts == b.remote_ts
        && *force_encap == b.force_encap
        && *udp_with_vmsecd == b.udp_with_vmsecd
        && *retransmit == b.retransmit
        && *lifetimes == b.lifetimes
        && *replay_window == b.replay_window
        && *fragment_size == b.fragment_size
}
