//! vmsecd against libreswan 4.10's pluto with the kernel's ESP (XFRM) in a Debian guest: raw ESP and ESP in UDP
//! forced by either side (`encapsulation=yes`, `encap = "udp"`), both roles, PSK; Child SA and IKE SA rekeys by
//! both sides under traffic. See `src/kernel_peer.rs` (the bed) and `src/libreswan.rs` (pluto in the guest).
//!
//! pluto does not print IKE SPIs: its side is read from the guest kernel's XFRM states (ESP SPIs crosswise,
//! algorithms, UDP encapsulation), vmsecd's from `vmsecd status --json`; every byte of TCP and UDP is checked
//! both ways, and a capture shows only the expected framing.
//!
//! Needs what `kernel_strongswan` needs and the unpacked libreswan (`scripts/setup test` does it).

use std::time::{Duration, Instant};

use vmsecd_e2e::kernel_peer::{
    agree_now, check_back_after_restart, diag, end_cell, framing_cells, run_cell, spis, wait_agree,
    wait_all_rekeys, wanted, Cell, CertSet, GuestBed, Load, A6, ALGORITHM_CELLS, A_ID, B6, B_ID,
    CA_DN, PEER,
};
use vmsecd_e2e::libreswan::{pkcs12, rsasigkey_of_pem, GuestPluto, LswAuth, LswConn};
use vmsecd_e2e::strongswan::pki_keygen;
use vmsecd_e2e::vmsecd::{peer, Mesh, Vmsecd};

const PSK: &str = "kernel-interop-psk-0123456789abcdef";
const CONN: &str = "hA";
const GUEST_MEM: u32 = 384;
const GCM128: (&str, &str) = (
    "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",
    "AES_GCM_16_128",
);

/// libreswan's `ike=` and `esp=` for an [`ALGORITHM_CELLS`] entry.
fn lsw_proposals(cell: &str) -> (&'static str, &'static str) {
    match cell {
        "gcm256" => ("aes_gcm256-sha2_384-dh20", "aes_gcm256"),
        "cbc-sha256" => ("aes256-sha2_256-modp2048", "aes256-sha2_256"),
        "chacha20poly1305" => ("chacha20_poly1305-sha2_256-dh31", "chacha20_poly1305"),
        other => panic!("no libreswan proposals for the cell {other}"),
    }
}

/// pluto reloaded with `conn` (`encapsulation=yes` if the cell says the peer forces UDP), then the shared cell.
fn cell(
    bed: &GuestBed,
    pluto: &GuestPluto,
    cell: &Cell,
    conn: &LswConn,
    mesh: &Mesh,
    algs: (&str, &str),
    mesh_text: Option<&str>,
) -> Vmsecd {
    let mut conn = conn.clone();
    conn.encapsulation = if cell.peer_encap { "yes" } else { "auto" }.into();
    pluto.reload(&[conn]);
    let v = run_cell(bed, pluto, cell, mesh, algs, mesh_text);
    // pluto's own account of the IKE SA (the Child SA's came from the guest's kernel).
    assert_eq!(
        pluto.ike_algorithms().as_deref(),
        Some(algs.0),
        "{}: the IKE algorithms in `whack --status`\n{}",
        cell.name,
        diag(&v, pluto)
    );
    let st = v.status().expect("status");
    let child = &peer(&st, PEER).children[0];
    let (local, remote) = if cell.ipv6 {
        (B6, A6)
    } else {
        ("198.18.0.2", "198.18.0.1")
    };
    assert_eq!(
        pluto.status_esp_spis(local, remote),
        vec![(child.spi_out.clone(), child.spi_in.clone())],
        "{}: the ESP SPIs in `whack --status` are vmsecd's crosswise\n{}",
        cell.name,
        diag(&v, pluto)
    );
    v
}

/// Raw ESP and ESP in UDP, each side forcing UDP, each side initiating; then the other algorithms, raw RSA
/// keys and certificates, each a cell on the same guest.
#[test]
fn kernel_libreswan_framing_both_roles() {
    let bed = GuestBed::new("kls", "framing", GUEST_MEM);
    let conn = LswConn::to_vmsecd(PSK);
    let pluto = GuestPluto::start(&bed.guest, std::slice::from_ref(&conn));
    let mesh = Mesh::two_hosts(PSK);
    for c in framing_cells("pluto").iter().filter(|c| wanted(&c.name)) {
        let v = cell(&bed, &pluto, c, &conn, &mesh, GCM128, None);
        end_cell(v, &pluto);
    }
    // The other algorithms the guest's kernel has, over raw ESP with vmsecd initiating.
    for a in ALGORITHM_CELLS.iter().filter(|a| wanted(a.name)) {
        let (mut c, mut m) = (conn.clone(), mesh.clone());
        let (ike, esp) = lsw_proposals(a.name);
        (c.ike, c.esp) = (ike.into(), esp.into());
        (m.ike_proposals, m.esp_proposals) = (vec![a.ike.into()], vec![a.esp.into()]);
        let algs = (a.ike_alg, a.esp_alg);
        let v = self::cell(&bed, &pluto, &Cell::raw(a.name, true), &c, &m, algs, None);
        end_cell(v, &pluto);
    }
    raw_rsa_cell(&bed, &pluto);
    cert_cells(&bed, &pluto);
}

/// libreswan's raw RSA keys: pluto's key made in its NSS database by `rsasigkey` (what `ipsec newhostkey`
/// runs; 3072 bits, it refuses fewer than 2192), shown with `showhostkey --left` for its conn and `--pem` for
/// vmsecd's `pubkey`; vmsecd's `pki` key (2048 bits) given to pluto as `rightrsasigkey` (RFC 3110). pluto
/// verifies vmsecd's RSA-PSS signature (RFC 7427) against it and signs with its own the same way. Raw ESP,
/// each side initiating.
fn raw_rsa_cell(bed: &GuestBed, pluto: &GuestPluto) {
    let names = ["rsasigkey-vmsecd-init", "rsasigkey-pluto-init"];
    if !names.iter().any(|n| wanted(n)) {
        return;
    }
    let dir = bed.dir("keys-vmsecd");
    let (a_private, a_public) = pki_keygen(&dir, "ha", 2048);
    let (left_key, pem) = pluto.new_host_key(3072);
    let b_public = dir.join("hb.pub.pem");
    std::fs::write(&b_public, pem).expect("pluto's public key");
    let mut c = LswConn::to_vmsecd(PSK);
    c.auth = LswAuth::RawRsa {
        left_key,
        right_key: rsasigkey_of_pem(&a_public, &dir),
        leftid: B_ID.into(),
        rightid: A_ID.into(),
    };
    let text = vmsecd_e2e::kernel_peer::pubkey_mesh_text(&a_private, &a_public, &b_public, B_ID);
    let how = format!("using preloaded certificate '@{A_ID}'");
    auth_cells(bed, pluto, names, &c, &text, &how);
}

/// The cells `names` (vmsecd initiating, then pluto) with `conn` and vmsecd's mesh file `text`, raw ESP; pluto's
/// log must show vmsecd's signature verified as [`check_pluto_verified`] says with `how`.
fn auth_cells(
    bed: &GuestBed,
    pluto: &GuestPluto,
    names: [&str; 2],
    conn: &LswConn,
    text: &str,
    how: &str,
) {
    for (name, vmsecd_initiates) in [(names[0], true), (names[1], false)] {
        if !wanted(name) {
            continue;
        }
        let before = pluto.log().len();
        let cell = Cell::raw(name, vmsecd_initiates);
        let mesh = Mesh::two_hosts(PSK);
        let v = self::cell(bed, pluto, &cell, conn, &mesh, GCM128, Some(text));
        check_pluto_verified(pluto, before, name, how, &v);
        end_cell(v, pluto);
    }
}

/// pluto's log since `before` (bytes) shows vmsecd's RSA-PSS signature (RFC 7427 method 14, which vmsecd
/// signs with) verified against the key `how` names.
fn check_pluto_verified(pluto: &GuestPluto, before: usize, name: &str, how: &str, v: &Vmsecd) {
    let log = pluto.log();
    let log = log.get(before..).unwrap_or(&log);
    let needle = format!(
        "established IKE SA; authenticated peer '2048-bit RSASSA-PSS with SHA2_256' digital signature {how}"
    );
    assert!(
        log.contains(&needle),
        "{name}: pluto verified vmsecd's signature ({needle})\n{}",
        diag(v, pluto)
    );
}

/// X.509 certificates in pluto's NSS database (a `pki` root CA and end certificates, as the strongSwan cells use;
/// pluto's imported with `pk12util`, the root trusted with `certutil -t CT,,`; `leftcert`, `rightca`), raw ESP,
/// each side initiating.
fn cert_cells(bed: &GuestBed, pluto: &GuestPluto) {
    let names = ["cert-vmsecd-init", "cert-pluto-init"];
    if !names.iter().any(|n| wanted(n)) {
        return;
    }
    let dir = bed.dir("pki");
    let certs = CertSet::issue(&dir);
    let p12 = dir.join("hb.p12");
    pkcs12(
        &certs.b.cert,
        &certs.b.key,
        &certs.root.cert,
        "hbcert",
        "p12-test",
        &p12,
    );
    pluto.import_p12(&p12, "p12-test", &certs.root.cert, "Kernel Mesh CA");
    let mut c = LswConn::to_vmsecd(PSK);
    c.auth = LswAuth::Cert {
        nickname: "hbcert".into(),
        leftid: B_ID.into(),
        rightid: A_ID.into(),
        rightca: CA_DN.into(),
    };
    let how = format!("using peer certificate '@{A_ID}' issued by CA '{CA_DN}'");
    auth_cells(bed, pluto, names, &c, &certs.mesh_text(), &how);
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
    let agree = || agree_now(&v, &pluto, GCM128, false);
    agree();
    let t0 = Instant::now();
    let load = Load::start(&bed.avm, &bed.bvm);
    let before = spis(&v);
    pluto.whack_ok(&["--rekey-ipsec", "--name", CONN, "--asynchronous"]);
    v.wait_log("Child SA rekeyed", Duration::from_secs(60));
    pluto.whack_ok(&["--rekey-ike", "--name", CONN, "--asynchronous"]);
    v.wait_log("IKE SA rekeyed", Duration::from_secs(60));
    let counts = wait_all_rekeys(&v, Duration::from_secs(120), &d);
    agree();
    let (rounds, failures) = load.finish();
    let after = spis(&v);
    eprintln!(
        "[rekeys] Child SA rekeys by vmsecd {}, by pluto {}; IKE SA rekeys by vmsecd {}, by pluto {} in {:.1} s; \
         SPIs {before:?} -> {after:?}; {rounds} rounds of traffic",
        counts[0],
        counts[1],
        counts[2],
        counts[3],
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

/// Refusals with a clear line in vmsecd's log (a wrong PSK each way, no common proposal each way), liveness
/// checks both ways on an idle tunnel (`dpddelay=5s` against vmsecd's `dpd_delay = "5s"`, counted as
/// INFORMATIONAL requests in a capture), then the guest killed (a power cut) and booted again: its pluto
/// (`auto=start`) comes back and the VMs reach each other again within [`RESTART_BOUND`] of the kill.
#[test]
fn kernel_libreswan_refusals_dpd_and_guest_restart() {
    let mut bed = GuestBed::new("kls", "restart", GUEST_MEM);
    let ok = LswConn::to_vmsecd(PSK);
    let mut wrong = ok.clone();
    wrong.psk = "a-different-psk-0123456789abcdef".into();
    {
        let pluto = GuestPluto::start(&bed.guest, std::slice::from_ref(&wrong));
        // vmsecd initiates with the other PSK: pluto refuses it.
        let mut v = Vmsecd::start(&bed.a, &bed.dir("vmsecd-psk"), &Mesh::two_hosts(PSK), "hA");
        v.wait_log(
            "authentication failed: the peer refused our authentication (AUTHENTICATION_FAILED)",
            Duration::from_secs(60),
        );
        // pluto initiates with the other PSK: vmsecd refuses it.
        pluto.initiate(CONN);
        v.wait_log(
            "authentication failed: AUTH from 198.18.0.2 does not verify: the PSKs differ",
            Duration::from_secs(60),
        );
        assert!(!v.log().contains(PSK), "the PSK must never be logged");
        v.terminate(Duration::from_secs(10));
        let _ = pluto.whack(&["--delete", "--name", CONN]);

        // No common proposal: vmsecd offers only AES-GCM-256 with ECP-384 to a pluto that wants AES-GCM-128
        // with Curve25519, then pluto initiates with its own.
        pluto.reload(std::slice::from_ref(&ok));
        let mut m = Mesh::two_hosts(PSK);
        m.ike_proposals = vec!["aes256gcm16-prfsha384-ecp384".into()];
        let mut v = Vmsecd::start(&bed.a, &bed.dir("vmsecd-noprop"), &m, "hA");
        v.wait_log(
            "no proposal chosen: the peer accepted none of ours (aes256gcm16-prfsha384-ecp384)",
            Duration::from_secs(60),
        );
        pluto.initiate(CONN);
        v.wait_log(
            "no proposal chosen: ours aes256gcm16-prfsha384-ecp384, theirs",
            Duration::from_secs(60),
        );
        eprintln!(
            "[restart] refusals: {}",
            v.log()
                .lines()
                .filter(|l| l.contains("no proposal chosen") || l.contains("authentication failed"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        v.terminate(Duration::from_secs(10));
        let _ = pluto.whack(&["--delete", "--name", CONN]);
        pluto.stop();
    }

    // Liveness checks both ways on an idle tunnel, vmsecd initiating.
    let mut c = ok.clone();
    c.dpddelay = Some("5s".into());
    let mut m = Mesh::two_hosts(PSK);
    m.dpd_delay = Some("5s".into());
    m.encap = "auto".into();
    let v = Vmsecd::start(&bed.a, &bed.dir("vmsecd"), &m, "hA");
    {
        let pluto = GuestPluto::start(&bed.guest, std::slice::from_ref(&c));
        let d = || diag(&v, &pluto);
        wait_agree(&v, PEER, || pluto.sas(), Duration::from_secs(60), &d);
        let before = spis(&v);
        // Both send a check after 5 s without traffic from the other, and each check is the other's traffic:
        // whichever fires first keeps firing and the other never does (vmsecd won every round of a run today:
        // 5 against 0). So vmsecd, once its first check is out (5 s after coming up), is stopped for 8 s
        // (SIGSTOP, our own child): pluto hears nothing for 5 s and sends its check, which vmsecd answers when
        // it resumes (pluto retransmits meanwhile).
        let cap = bed.capture("dpd");
        std::thread::sleep(Duration::from_secs(7));
        v.pause_for(Duration::from_secs(8));
        std::thread::sleep(Duration::from_secs(10));
        let seen = vmsecd_e2e::kernel_peer::informational_requests(&cap.stop());
        eprintln!(
            "[restart] liveness checks in 25 s (vmsecd stopped for 8 of them): {} from vmsecd, {} from pluto",
            seen.0, seen.1
        );
        assert!(
            seen.0 >= 1 && seen.1 >= 1,
            "no liveness checks both ways in 25 s (INFORMATIONAL requests from vmsecd, from pluto: {seen:?})\n{}",
            d()
        );
        assert_eq!(
            spis(&v),
            before,
            "the idle tunnel stays the same SAs\n{}",
            d()
        );
    }

    // A power cut and a reboot. pluto sends no INITIAL_CONTACT unless told (`initial-contact=no` is its
    // default): without it vmsecd would keep the IKE SA of before the reboot next to pluto's new one (its rule for
    // duplicates keeps the one the lower address initiated) until liveness checks gave up on it.
    c.auto = "start".into();
    c.extra.push("initial-contact=yes".into());
    let t = Instant::now();
    bed.power_cut_and_boot();
    let pluto = GuestPluto::start(&bed.guest, std::slice::from_ref(&c));
    check_back_after_restart(&bed, &v, &pluto, t, RESTART_BOUND, GCM128);
    assert!(
        v.log()
            .contains("the peer started anew (INITIAL_CONTACT in a newer IKE SA)"),
        "vmsecd closed the IKE SA of before the reboot on pluto's INITIAL_CONTACT\n{}",
        diag(&v, &pluto)
    );
}

/// From the guest's kill to traffic through the tunnel again: its boot (7-9 s under TCG here, 25 s seen on a
/// loaded machine), pluto's start and IKE.
const RESTART_BOUND: Duration = Duration::from_secs(120);
