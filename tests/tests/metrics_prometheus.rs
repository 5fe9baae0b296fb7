//! Prometheus metrics, scraped by a real Prometheus (Debian's `prometheus` 2.x): two hypervisors on one
//! underlay run vmsecd with `metrics = 9477` (each serves on its own underlay address); Prometheus, in a third
//! namespace on the same LAN, scrapes both every second. Through its HTTP API the test sees both targets up,
//! each peer established, the handshake histogram filled, and the tunnel's byte counter grow with traffic
//! between the VMs. A daemon whose mesh file has no `metrics` key listens on no TCP port.

use std::time::Duration;

use vmsecd_e2e::netns::NetnsGuard;
use vmsecd_e2e::prometheus::Prometheus;
use vmsecd_e2e::traffic::ping;
use vmsecd_e2e::vmsecd::{is_up, HostEntry, Mesh, Vmsecd};

const PSK: &str = "metrics-prometheus-test-psk-0123456789";

fn mesh() -> Mesh {
    let mut m = Mesh::two_hosts(PSK);
    m.encap = "auto".into();
    m.firewall = Some("off".into());
    m.hosts = (1..=2)
        .map(|n| HostEntry {
            name: format!("h{n}"),
            address: format!("198.18.0.{n}"),
            subnets: vec![format!("198.19.{n}.0/24")],
            port: None,
        })
        .collect();
    m
}

/// Starts vmsecd as `host` in `ns` from `mesh` with `extra` lines added to `[mesh]`.
fn start(ns: &vmsecd_e2e::netns::Netns, dir: &std::path::Path, host: &str, extra: &str) -> Vmsecd {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let psk = dir.join("psk");
    std::fs::write(&psk, format!("{PSK}\n")).unwrap();
    std::fs::set_permissions(&psk, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = mesh()
        .render(&psk)
        .replacen("[mesh]\n", &format!("[mesh]\n{extra}"), 1);
    let file = dir.join("mesh.toml");
    std::fs::write(&file, text).unwrap();
    Vmsecd::start_with_file(ns, dir, &file, host)
}

fn value(r: &[(serde_json::Value, f64)]) -> f64 {
    r.first().map(|(_, v)| *v).unwrap_or(f64::NAN)
}

#[test]
fn prometheus_scrapes_two_daemons_and_sees_the_byte_counter_grow() {
    let t0 = std::time::Instant::now();
    let mut g = NetnsGuard::new("metrics");
    let hv = g.underlay_lan(&["a", "b", "p"]);
    let (a, b, p) = (hv[0].clone(), hv[1].clone(), hv[2].clone());
    let avm = g.vm_subnet(&a, 1, "avm");
    let _bvm = g.vm_subnet(&b, 2, "bvm");
    let root = g.dir();

    let mut va = start(&a, &root.join("a"), "h1", "metrics = 9477\n");
    let mut vb = start(&b, &root.join("b"), "h2", "metrics = 9477\n");
    let t = Duration::from_secs(30);
    va.wait_status("h1-h2 up", t, |s| is_up(s, "h2"));
    vb.wait_status("h2-h1 up", t, |s| is_up(s, "h1"));

    let prom = Prometheus::start(
        &p,
        &root.join("prometheus"),
        "198.18.0.3:9090",
        &["198.18.0.1:9477", "198.18.0.2:9477"],
    );
    // Both daemons scraped, each seeing its peer established, and the handshake recorded.
    let diag = || format!("{}\n{}", va.diagnostics(), vb.diagnostics());
    prom.wait("both targets up", "sum(up)", t, |r| value(r) == 2.0);
    prom.wait("both peers established", "sum(vmsecd_peer_up)", t, |r| {
        value(r) == 2.0
    });
    prom.wait(
        "handshakes in the histogram",
        "sum(vmsecd_ike_handshake_duration_seconds_count)",
        t,
        |r| value(r) >= 1.0,
    );
    prom.wait(
        "the per-peer state set",
        r#"vmsecd_peer_state{host="h1",peer="h2",state="established"}"#,
        t,
        |r| value(r) == 1.0,
    );

    // Traffic through the tunnel: the sent-bytes counter of h1 towards h2 grows, as Prometheus sees it.
    let bytes = r#"vmsecd_peer_out_bytes_total{host="h1",peer="h2"}"#;
    let before = value(&prom.wait("the byte counter", bytes, t, |r| !r.is_empty()));
    let (sent, got) = ping(&avm, "198.19.2.10", 20, "0.05");
    assert_eq!((sent, got), (20, 20), "ping through the tunnel\n{}", diag());
    let after = prom.wait("the byte counter growing", bytes, t, |r| {
        value(r) >= before + 20.0 * 84.0
    });
    let rate = prom.wait(
        "a positive rate",
        &format!("increase({bytes}[1m])"),
        t,
        |r| value(r) > 0.0,
    );
    // The receiving side counted them too.
    prom.wait(
        "h2's inbound counter",
        r#"vmsecd_peer_in_bytes_total{host="h2",peer="h1"}"#,
        t,
        |r| value(r) >= 20.0 * 84.0,
    );

    // Off by default: a daemon without `metrics` opens no TCP listener.
    drop(vb);
    let mut vb2 = start(&b, &root.join("b2"), "h2", "");
    vb2.wait_status("h2-h1 up again", t, |s| is_up(s, "h1"));
    let listening = b.run("ss", &["-Htln"]);
    assert!(
        listening.trim().is_empty(),
        "TCP listeners without metrics: {listening}"
    );
    prom.wait(
        "h2's target down",
        r#"up{instance="198.18.0.2:9477"}"#,
        t,
        |r| value(r) == 0.0,
    );
    eprintln!(
        "[metrics_prometheus] bytes {before} -> {}, increase over 1m {}; {:.1} s",
        value(&after),
        value(&rate),
        t0.elapsed().as_secs_f64()
    );
}
