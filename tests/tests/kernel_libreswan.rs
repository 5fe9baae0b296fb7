//! vmsecd against libreswan 4.10's pluto with the kernel's ESP (XFRM) in a Debian guest: raw ESP and ESP in UDP
//! forced by either side (`encapsulation=yes`, `encap = "udp"`), both roles, PSK; Child SA and IKE SA rekeys by
//! both sides under traffic. See `src/kernel_peer.rs` (the bed) and `src/libreswan.rs` (pluto in the guest).
//!
//! pluto does not print IKE SPIs: its side is read from the guest kernel's XFRM states (ESP SPIs crosswise,
//! algorithms, UDP encapsulation), vmsecd's from `vmsecd status --json`; every byte of TCP and UDP is checked
//! both ways, and a capture shows only the expected framing.
//!
//! Needs what `kernel_strongswan` needs and the unpacked libreswan (`scripts/setup test` does it).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmsecd_e2e::kernel_peer::{
    check_agree, check_capture, check_traffic, wait_agree, Expect, GuestBed, AVM, BVM,
};
use vmsecd_e2e::libreswan::{GuestPluto, LswConn};
use vmsecd_e2e::netns::Netns;
use vmsecd_e2e::traffic;
use vmsecd_e2e::vmsecd::{peer, Mesh, Vmsecd};

const PSK: &str = "kernel-interop-psk-0123456789abcdef";
const PEER: &str = "hB";
const CONN: &str = "hA";
const GUEST_MEM: u32 = 384;
const IKE_ALG: &str = "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519";
const ESP_ALG: &str = "AES_GCM_16_128";

fn diag(v: &Vmsecd, p: &GuestPluto) -> String {
    format!("{}\n{}", v.diagnostics(), p.diagnostics())
}

struct Cell {
    name: &'static str,
    vmsecd_encap: &'static str,
    pluto_encap: bool,
    vmsecd_initiates: bool,
    udp: bool,
}

fn run_cell(bed: &GuestBed, pluto: &GuestPluto, cell: &Cell) -> Vmsecd {
    let t = Instant::now();
    let mut conn = LswConn::to_vmsecd(PSK);
    conn.encapsulation = if cell.pluto_encap { "yes" } else { "auto" }.into();
    pluto.reload(&[conn]);
    let mut mesh = Mesh::two_hosts(PSK);
    mesh.encap = cell.vmsecd_encap.into();
    bed.block_vmsecd_initiation(!cell.vmsecd_initiates);
    let cap = bed.capture(cell.name);
    let mut v = Vmsecd::start(
        &bed.a,
        &bed.dir(&format!("vmsecd-{}", cell.name)),
        &mesh,
        "hA",
    );
    if !cell.vmsecd_initiates {
        v.wait_status("vmsecd listening", Duration::from_secs(10), |_| true);
        pluto.initiate(CONN);
    }
    let d = || diag(&v, pluto);
    let (st, sa) = wait_agree(&v, PEER, || pluto.sas(), Duration::from_secs(60), &d);
    check_agree(
        &st,
        &sa,
        &Expect {
            peer: PEER,
            vmsecd_initiated: cell.vmsecd_initiates,
            ike_alg: IKE_ALG,
            esp_alg: ESP_ALG,
            udp: cell.udp,
        },
    );
    check_traffic(&bed.avm, &bed.bvm, 2, 1 << 20, 100, &d);
    let cap = cap.stop();
    check_capture(&cap, cell.udp, cell.name);
    eprintln!(
        "[{}] cell {} ok in {:.1} s",
        bed.name,
        cell.name,
        t.elapsed().as_secs_f64()
    );
    v
}

fn end_cell(mut v: Vmsecd, pluto: &GuestPluto) {
    v.terminate(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pluto.sas().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Raw ESP and ESP in UDP, each side forcing UDP, each side initiating.
#[test]
fn kernel_libreswan_framing_both_roles() {
    let bed = GuestBed::new("kls", "framing", GUEST_MEM);
    let pluto = GuestPluto::start(&bed.guest, &[LswConn::to_vmsecd(PSK)]);
    let cells = [
        Cell {
            name: "raw-vmsecd-init",
            vmsecd_encap: "auto",
            pluto_encap: false,
            vmsecd_initiates: true,
            udp: false,
        },
        Cell {
            name: "raw-pluto-init",
            vmsecd_encap: "auto",
            pluto_encap: false,
            vmsecd_initiates: false,
            udp: false,
        },
        Cell {
            name: "udp-pluto-forces-pluto-init",
            vmsecd_encap: "auto",
            pluto_encap: true,
            vmsecd_initiates: false,
            udp: true,
        },
        Cell {
            name: "udp-pluto-forces-vmsecd-init",
            vmsecd_encap: "auto",
            pluto_encap: true,
            vmsecd_initiates: true,
            udp: true,
        },
        Cell {
            name: "udp-vmsecd-forces-vmsecd-init",
            vmsecd_encap: "udp",
            pluto_encap: false,
            vmsecd_initiates: true,
            udp: true,
        },
        Cell {
            name: "udp-vmsecd-forces-pluto-init",
            vmsecd_encap: "udp",
            pluto_encap: false,
            vmsecd_initiates: false,
            udp: true,
        },
    ];
    let only = std::env::var("VT_CELLS").ok();
    for cell in cells.iter().filter(|c| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|n| n == c.name))
    }) {
        let v = run_cell(&bed, &pluto, cell);
        end_cell(v, &pluto);
    }
}

/// vmsecd's current inbound Child SPI and IKE initiator SPI.
fn spis(v: &Vmsecd) -> (String, String) {
    let st = v.status().expect("status");
    let p = peer(&st, PEER);
    (
        p.ike.as_ref().map(|i| i.spi_i.clone()).unwrap_or_default(),
        p.children
            .first()
            .map(|c| c.spi_in.clone())
            .unwrap_or_default(),
    )
}

/// Child SA and IKE SA rekeys by pluto (`whack --rekey-ipsec`, `--rekey-ike`) and by vmsecd (lifetimes 30 s /
/// 45 s) over raw ESP, under TCP and UDP both ways: every byte intact, the SPIs agree after each.
#[test]
fn kernel_libreswan_rekeys_both_sides_under_traffic() {
    let bed = GuestBed::new("kls", "rekeys", GUEST_MEM);
    let pluto = GuestPluto::start(&bed.guest, &[LswConn::to_vmsecd(PSK)]);
    let mut mesh = Mesh::two_hosts(PSK);
    mesh.encap = "auto".into();
    mesh.child_lifetime = Some("30s".into());
    mesh.ike_lifetime = Some("45s".into());
    mesh.rekey_margin = Some("8s".into());
    // pluto rekeys Child SAs with PFS (`pfs=yes` is its default): without a group in vmsecd's ESP proposal its
    // rekey is refused ("Child SA refused: no proposal chosen: ours aes128gcm16, theirs aes128gcm16-x25519").
    mesh.esp_proposals = vec!["aes128gcm16-x25519".into()];
    let v = Vmsecd::start(&bed.a, &bed.dir("vmsecd"), &mesh, "hA");
    let d = || diag(&v, &pluto);
    let agree = || {
        let (st, sa) = wait_agree(&v, PEER, || pluto.sas(), Duration::from_secs(60), &d);
        let vmsecd_initiated = peer(&st, PEER).ike.as_ref().is_some_and(|i| i.initiator);
        check_agree(
            &st,
            &sa,
            &Expect {
                peer: PEER,
                vmsecd_initiated,
                ike_alg: IKE_ALG,
                esp_alg: ESP_ALG,
                udp: false,
            },
        );
    };
    agree();
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (avm, bvm, s): (Netns, Netns, _) = (bed.avm.clone(), bed.bvm.clone(), stop.clone());
        std::thread::spawn(move || {
            let (mut rounds, mut failures) = (0u32, Vec::new());
            while !s.load(Ordering::Relaxed) {
                for (server, client, addr, dir) in
                    [(&bvm, &avm, BVM, "a -> b"), (&avm, &bvm, AVM, "b -> a")]
                {
                    let tcp = traffic::tcp_intact(server, client, addr, 2, 1 << 20);
                    if tcp != 2 {
                        failures.push(format!("round {rounds}: TCP {dir}: {tcp} of 2 intact"));
                    }
                    let udp = traffic::udp_intact(server, client, addr, 50);
                    if udp != (50, 0) {
                        failures.push(format!("round {rounds}: UDP {dir}: {udp:?} of 50"));
                    }
                }
                rounds += 1;
            }
            (rounds, failures)
        })
    };
    let before = spis(&v);
    pluto.whack_ok(&["--rekey-ipsec", "--name", CONN, "--asynchronous"]);
    v.wait_log("Child SA rekeyed", Duration::from_secs(60));
    pluto.whack_ok(&["--rekey-ike", "--name", CONN, "--asynchronous"]);
    v.wait_log("IKE SA rekeyed", Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(120);
    let counts = loop {
        let log = v.log();
        let count = |what: &str, ours: bool| {
            log.lines()
                .filter(|l| {
                    l.contains(what)
                        && l.contains(if ours {
                            "initiator=true"
                        } else {
                            "initiator=false"
                        })
                })
                .count()
        };
        let c = (
            count("Child SA rekeyed", true),
            count("Child SA rekeyed", false),
            count("IKE SA rekeyed", true),
            count("IKE SA rekeyed", false),
        );
        if c.0 >= 1 && c.1 >= 1 && c.2 >= 1 && c.3 >= 1 {
            break c;
        }
        assert!(
            Instant::now() < deadline,
            "not every kind of rekey in 120 s: (Child by vmsecd, by pluto, IKE by vmsecd, by pluto) = {c:?}\n{}",
            d()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    agree();
    stop.store(true, Ordering::Relaxed);
    let (rounds, failures) = load.join().expect("load thread");
    let after = spis(&v);
    eprintln!(
        "[rekeys] Child SA rekeys by vmsecd {}, by pluto {}; IKE SA rekeys by vmsecd {}, by pluto {} in {:.1} s; \
         SPIs {before:?} -> {after:?}; {rounds} rounds of traffic",
        counts.0,
        counts.1,
        counts.2,
        counts.3,
        t0.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "traffic across the rekeys ({rounds} rounds):\n{}\n{}",
        failures.join("\n"),
        d()
    );
    assert_eq!(
        v.log().matches("IKE SA established").count(),
        1,
        "rekeys, not re-establishment\n{}",
        d()
    );
}

/// The README's "Migrating" snippets for a libreswan and a strongSwan (kernel ESP) host that stay in a vmsecd
/// mesh are the configurations these tests (and `kernel_strongswan`) run: checked word for word, so the README
/// cannot drift from what is tested. Needs neither root nor a guest.
#[test]
fn readme_migration_snippets_are_the_tested_configurations() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let lsw = LswConn::to_vmsecd(README_PSK);
    let libreswan = format!(
        "{}\n# ipsec.secrets\n{}",
        lsw.render().trim_end(),
        vmsecd_e2e::libreswan::ipsec_secrets(std::slice::from_ref(&lsw)).trim_end()
    );
    let mut sw = vmsecd_e2e::strongswan::Conn::to_vmsecd(README_PSK);
    sw.encap = false;
    let strongswan = vmsecd_e2e::strongswan::swanctl_conf(&[sw]);
    for (what, snippet) in [("libreswan", libreswan), ("strongSwan", strongswan)] {
        assert!(
            readme.contains(snippet.trim_end()),
            "README.md's migration section lacks the tested {what} configuration; it must contain, verbatim:\n{snippet}"
        );
    }
}

/// The PSK the README's snippets show (the tests use another; the rest is identical).
const README_PSK: &str = "the-mesh-psk-from-psk_file";
