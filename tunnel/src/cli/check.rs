//! `vmsecd check`: what the daemon would do with the mesh file on this machine (the host, the shared settings,
//! one block per tunnel), and this machine's libvirt networks measured against the mesh. Only the CLI prints
//! these reports, so they live here rather than in the library's `config` or `libvirt` modules.

use std::fmt::Write as _;

use vmsecd::config::{Auth, Config, FoundBy};
use vmsecd::libvirt::network::Network;

/// `items` as text, separated by commas.
pub(crate) fn join<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// What `vmsecd check` prints: the host, the shared settings, and one block per tunnel.
pub(crate) fn render_check(
    config: &Config,
    libvirt: Option<&vmsecd::config::LibvirtFound>,
) -> String {
    let s = config.settings();
    let me = config.local();
    let ike = join(&s.ike_proposals.iter().map(|p| &p.text).collect::<Vec<_>>());
    let esp = join(&s.esp_proposals.iter().map(|p| &p.text).collect::<Vec<_>>());
    let auth = match &config.mesh.auth {
        Auth::Psk(psk) => format!("psk (key in {})", psk.path().display()),
        Auth::PubKey(pk) => format!(
            "pubkey (RSA {} private key in {})",
            pk.private_key.key.bits(),
            pk.private_key.path.display()
        ),
        Auth::Cert(c) => {
            let me_cert = c.certs[&me.name].cert();
            format!(
                "certificate \"{}\" (RSA {} private key in {}; expires {}; CA {} in {})",
                me_cert.subject(),
                c.private_key.key.bits(),
                c.private_key.path.display(),
                ike::crypto::x509::format_time(me_cert.not_after()),
                c.ca.anchors.names(),
                c.ca.path.display()
            )
        }
        _ => "unknown".to_owned(),
    };
    let dur = |d| humantime::format_duration(d).to_string();
    let mut o = String::new();
    let _ = writeln!(o, "{}: valid", config.mesh.file.display());
    let found = match config.found_by {
        FoundBy::Name => "chosen with --host".to_owned(),
        FoundBy::LocalAddress => format!("found by local address {}", me.addresses_text()),
    };
    let _ = writeln!(o, "this host: {} ({found})", me.name);
    let _ = writeln!(
        o,
        "  address {}, IKE port {}, identity {}",
        me.addresses_text(),
        me.port,
        me.id
    );
    match libvirt {
        Some(found) => {
            let nets: Vec<String> = found
                .networks
                .iter()
                .map(|(n, s)| format!("{n} {}", join(s)))
                .collect();
            let _ = writeln!(
                o,
                "  subnets {} (subnets = \"libvirt\": from libvirt networks {})",
                join(&me.subnets),
                nets.join("; ")
            );
        }
        None => {
            let _ = writeln!(o, "  subnets {}", join(&me.subnets));
        }
    }
    let _ = writeln!(o, "  interface {}, MTU {}", s.interface, s.mtu);
    let _ = writeln!(o, "  auth {auth}");
    let _ = writeln!(
        o,
        "  IKE SA lifetime {}, Child SA lifetime {}, rekey {} before expiry",
        dur(s.ike_lifetime),
        dur(s.child_lifetime),
        dur(s.rekey_margin)
    );
    let dpd = s
        .dpd_delay
        .map_or("off".to_owned(), |d| format!("after {} idle", dur(d)));
    let _ = writeln!(
        o,
        "  encapsulation {}, replay window {}, DPD {dpd}, control socket {}",
        s.encap, s.replay_window, s.control_socket
    );
    let tunnels = config.tunnels();
    let _ = writeln!(
        o,
        "{} tunnel{}:",
        tunnels.len(),
        if tunnels.len() == 1 { "" } else { "s" }
    );
    for t in &tunnels {
        let p = t.peer;
        let _ = writeln!(
            o,
            "  {} <-> {} at {} port {}, identity {}",
            me.name,
            p.name,
            t.underlay().map_or(p.address, |(_, remote)| remote),
            p.port,
            p.id
        );
        if p.libvirt.is_some() {
            let _ = writeln!(
                o,
                "    {} <-> learned from its Child SA (subnets = \"libvirt\"), within libvirt_range {}",
                join(t.local_subnets()),
                join(t.remote_selectors())
            );
        } else {
            let _ = writeln!(
                o,
                "    {} <-> {}",
                join(t.local_subnets()),
                join(t.remote_subnets())
            );
        }
        let _ = writeln!(o, "    IKE {ike}; ESP {esp}; auth {auth}");
        if let Auth::PubKey(pk) = &config.mesh.auth {
            let k = &pk.public_keys[&p.name];
            let _ = writeln!(
                o,
                "    peer key {} (RSA {})",
                k.path.display(),
                k.key.bits()
            );
        }
        if let Auth::Cert(c) = &config.mesh.auth {
            let _ = match c.certs.get(&p.name) {
                Some(f) => writeln!(
                    o,
                    "    peer certificate \"{}\" in {} (expires {})",
                    f.cert().subject(),
                    f.path.display(),
                    ike::crypto::x509::format_time(f.cert().not_after())
                ),
                None => writeln!(
                    o,
                    "    peer certificate: sent by the peer, must chain to the CA and name {}",
                    p.id
                ),
            };
        }
        for r in t.remote_subnets() {
            let _ = writeln!(o, "    route {r} dev {} mtu {}", s.interface, s.mtu);
        }
        if p.libvirt.is_some() {
            let _ = writeln!(
                o,
                "    routes into {} for the subnets it negotiates, while its Child SA is up",
                s.interface
            );
        }
        for r in t.remote_selectors() {
            let _ = writeln!(
                o,
                "    fail closed: unreachable {r} proto {} metric {} (kept if vmsecd dies, removed on a clean stop)",
                vmsecd::failclosed::PROTO,
                vmsecd::failclosed::METRIC
            );
        }
    }
    for e in config.unreachable() {
        let _ = writeln!(o, "refused: {e}");
    }
    if let Some(w) = config.mesh.trust_warning() {
        let _ = writeln!(o, "warning: {w}");
    }
    if let Auth::Cert(c) = &config.mesh.auth {
        for (subject, path, not_after) in c.expiring(
            vmsecd::config::unix_now(),
            vmsecd::config::CERT_EXPIRY_WARNING,
        ) {
            let _ = writeln!(
                o,
                "warning: certificate \"{subject}\" in {} expires {}: renew it before then",
                path.display(),
                ike::crypto::x509::format_time(not_after)
            );
        }
    }
    o
}

/// What `vmsecd check` says about this machine's libvirt networks: for each, whether its subnets are in this
/// host's `subnets`, and which other host's subnets it overlaps (that network must be renumbered).
pub(crate) fn libvirt_report(nets: &[Network], config: &Config) -> String {
    let mut o = String::new();
    if nets.is_empty() {
        return o;
    }
    let me = config.local();
    let _ = writeln!(o, "libvirt networks on this machine:");
    for n in nets {
        let bridge = n.bridge.as_deref().unwrap_or("no bridge");
        for s in &n.subnets {
            let clash: Vec<String> = config
                .peers()
                .filter(|p| p.subnets.iter().any(|q| q.overlaps(s)))
                .map(|p| p.name.clone())
                .collect();
            let verdict = if !clash.is_empty() {
                format!(
                    "OVERLAPS host {}'s subnets: renumber this network (virsh net-edit {}) or the other host's",
                    clash.join(", "),
                    n.name
                )
            } else if me
                .subnets
                .iter()
                .any(|m| m.contains(s.addr()) && m.prefix_len() <= s.prefix_len())
            {
                "in the mesh".to_owned()
            } else {
                format!(
                    "NOT in this host's subnets: add \"{s}\" to host {}'s subnets, or its VMs are not reachable \
                     through the mesh",
                    me.name
                )
            };
            let _ = writeln!(o, "  {} ({}, {bridge}) {s}: {verdict}", n.name, n.mode);
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn check_prints_every_tunnel() {
        let dir = tempfile::tempdir().unwrap();
        let psk = dir.path().join("psk");
        std::fs::write(&psk, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).unwrap();
        let file = dir.path().join("mesh.toml");
        std::fs::write(
            &file,
            r#"
[mesh]
psk_file = "psk"
esp_proposals = ["aes256gcm16", "aes128gcm16"]

[[host]]
name = "b0"
address = "198.18.0.1"
subnets = ["198.19.1.0/24"]

[[host]]
name = "c0"
address = "198.18.0.2"
subnets = ["198.19.2.0/24", "198.19.12.0/24"]

[[host]]
name = "gw"
address = "198.18.0.3"
subnets = ["198.19.3.0/24"]
port = 4501
id = "gw.example"
"#,
        )
        .unwrap();
        let config = Config::load(&file, None, &["198.18.0.1".parse().unwrap()]).unwrap();
        let out = render_check(&config, None);
        assert!(
            out.contains("this host: b0 (found by local address 198.18.0.1)"),
            "{out}"
        );
        assert!(out.contains("interface vmsec0, MTU 1400"), "{out}");
        assert!(out.contains("2 tunnels:"), "{out}");
        assert!(
            out.contains("b0 <-> c0 at 198.18.0.2 port 500, identity 198.18.0.2"),
            "{out}"
        );
        assert!(
            out.contains("198.19.1.0/24 <-> 198.19.2.0/24, 198.19.12.0/24"),
            "{out}"
        );
        assert!(
            out.contains("route 198.19.12.0/24 dev vmsec0 mtu 1400"),
            "{out}"
        );
        assert!(
            out.contains("b0 <-> gw at 198.18.0.3 port 4501, identity gw.example"),
            "{out}"
        );
        assert!(
            out.contains(
                "IKE aes128gcm16-prfsha256-x25519; ESP aes256gcm16, aes128gcm16; auth psk"
            ),
            "{out}"
        );
        assert!(
            out.contains("fail closed: unreachable 198.19.12.0/24 proto 118 metric 1000000000"),
            "{out}"
        );
        assert!(
            out.contains("warning: auth = \"psk\": all 3 hosts share one key")
                && out.contains("use auth = \"pubkey\""),
            "{out}"
        );
        assert!(
            !out.contains("0123456789abcdef"),
            "the key must never be printed: {out}"
        );
    }
}
