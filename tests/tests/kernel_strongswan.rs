//! vmsecd against strongSwan's charon with the kernel's ESP (kernel-netlink, XFRM) in a Debian guest: raw ESP
//! (protocol 50) and ESP in UDP 4500 forced by either side, both roles, rekeys from either side under traffic,
//! failures, DPD and a guest killed and booted again. See `src/kernel_peer.rs` for the bed.
//!
//! Each test boots one guest (TCG here: 7-9 s) and runs several cells on it. In every established cell: both
//! sides agree on SPIs and algorithms (`swanctl --list-sas` against `vmsecd status --json`), every byte of TCP
//! and UDP arrives both ways between the VMs, and a capture at vmsecd's underlay shows only the expected framing.
//!
//! Needs root, iproute2, nftables, tcpdump, python3, QEMU, Debian's kernel image and busybox-static, and charon
//! (see tests/README.md); fails, never skips, without them.

use std::time::{Duration, Instant};

use vmsecd_e2e::guest_charon::CHILD;
use vmsecd_e2e::kernel_peer::{
    agree_now, check_back_after_restart, diag, end_cell, framing_cells, pubkey_mesh_text, run_cell,
    spis, wait_agree, wait_all_rekeys, wanted, Cell, CertSet, GuestBed, GuestCharon, KernelPeer,
    Load, A6, ALGORITHM_CELLS, A_ID, B6, B_ID, PEER,
};
use vmsecd_e2e::strongswan::{pki_keygen, Conn};
use vmsecd_e2e::vmsecd::{peer, Mesh, Vmsecd};

const PSK: &str = "kernel-interop-psk-0123456789abcdef";
const GUEST_MEM: u32 = 384;
const GCM128: (&str, &str) = (
    "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",
    "AES_GCM_16_128",
);

/// charon reloaded with `conn` (ESP in UDP forced as the cell says), then the shared cell.
fn cell(
    bed: &GuestBed,
    charon: &GuestCharon,
    cell: &Cell,
    conn: &Conn,
    mesh: &Mesh,
    algs: (&str, &str),
    mesh_text: Option<&str>,
) -> Vmsecd {
    let mut conn = conn.clone();
    conn.encap = cell.peer_encap;
    charon.reload(&[conn]);
    run_cell(bed, charon, cell, mesh, algs, mesh_text)
}

fn conn() -> Conn {
    Conn::to_vmsecd(PSK)
}

fn mesh() -> Mesh {
    Mesh::two_hosts(PSK)
}

/// Raw ESP and ESP in UDP, each side forcing UDP, each side initiating.
#[test]
fn kernel_strongswan_framing_both_roles() {
    let bed = GuestBed::new("kss", "framing", GUEST_MEM);
    let charon = GuestCharon::start(&bed.guest, &[conn()]);
    for c in framing_cells("charon").iter().filter(|c| wanted(&c.name)) {
        let v = cell(&bed, &charon, c, &conn(), &mesh(), GCM128, None);
        end_cell(v, &charon);
    }
    // The other algorithms the guest's kernel has, over raw ESP with vmsecd initiating.
    for a in ALGORITHM_CELLS.iter().filter(|a| wanted(a.name)) {
        let (mut c, mut m) = (conn(), mesh());
        (c.proposals, c.esp_proposals) = (a.ike.into(), a.esp.into());
        (m.ike_proposals, m.esp_proposals) = (vec![a.ike.into()], vec![a.esp.into()]);
        let algs = (a.ike_alg, a.esp_alg);
        let v = cell(&bed, &charon, &Cell::raw(a.name, true), &c, &m, algs, None);
        end_cell(v, &charon);
    }
    // RSA raw public keys (swanctl `pubkeys`, `pki` keys of 2048 bits) with DN-less FQDN/e-mail identities, raw
    // ESP, vmsecd initiating.
    if wanted("rsa-pubkey") {
        let vdir = bed.dir("keys-vmsecd");
        let cdir = bed.dir("keys-charon");
        let (a_private, a_public) = pki_keygen(&vdir, "ha", 2048);
        let (b_private, b_public) = pki_keygen(&cdir, "hb", 2048);
        charon.put("private", &b_private);
        charon.put("pubkey", &a_public);
        charon.put("pubkey", &b_public);
        let mut c = conn().with_pubkeys("hb.pub.pem", "ha.pub.pem");
        (c.local_id, c.remote_id) = ("gw@hb.example.net".into(), A_ID.into());
        let text = pubkey_mesh_text(&a_private, &a_public, &b_public, "gw@hb.example.net");
        let cell = Cell::raw("rsa-pubkey", true);
        let v = self::cell(&bed, &charon, &cell, &c, &mesh(), GCM128, Some(&text));
        assert!(
            v.log().contains("IKE SA established"),
            "{}",
            v.diagnostics()
        );
        end_cell(v, &charon);
    }
    cert_cells(&bed, &charon);
    ipv6_cells(&bed, &charon);
}

/// IKE and the guest kernel's ESP over an IPv6 underlay (2001:db8:0:ff::1 and ::2 next to the IPv4 addresses on
/// the same link), one Child SA carrying the VMs' IPv4 and IPv6 (both families' subnets as traffic selectors):
/// raw ESP (next header 50) with vmsecd initiating, ESP in UDP 4500 forced by vmsecd with charon initiating.
/// Pings, TCP and UDP byte-checked both ways in both families; the capture holds only IKE and ESP over IPv6.
fn ipv6_cells(bed: &GuestBed, charon: &GuestCharon) {
    let cells = [
        ("ipv6-raw-vmsecd-init", "auto", true),
        ("ipv6-udp-vmsecd-forces-charon-init", "udp", false),
    ];
    if !cells.iter().any(|c| wanted(c.0)) {
        return;
    }
    bed.add_ipv6();
    let mut c = conn();
    (c.local_addr, c.remote_addr) = (B6.into(), A6.into());
    (c.local_id, c.remote_id) = (B6.into(), A6.into());
    c.local_ts = "198.19.2.0/24,2001:db8:2::/64".into();
    c.remote_ts = "198.19.1.0/24,2001:db8:1::/64".into();
    let mut m = mesh();
    m.hosts[0].address = A6.into();
    m.hosts[1].address = B6.into();
    m.hosts[0].subnets.push("2001:db8:1::/64".into());
    m.hosts[1].subnets.push("2001:db8:2::/64".into());
    for (name, vmsecd_encap, vmsecd_initiates) in cells.into_iter().filter(|c| wanted(c.0)) {
        let cell = Cell {
            name: name.into(),
            vmsecd_encap,
            peer_encap: false,
            vmsecd_initiates,
            udp: vmsecd_encap == "udp",
            ipv6: true,
        };
        let v = self::cell(bed, charon, &cell, &c, &m, GCM128, None);
        end_cell(v, charon);
    }
}

/// X.509 certificates from `pki` (a root CA, one 2048-bit end certificate per side with its FQDN as
/// subjectAltName; vmsecd `auth = "pubkey"` with `ca`, charon `certs` and the root in `x509ca/`), raw ESP, each
/// side initiating, on the guest the other cells booted.
fn cert_cells(bed: &GuestBed, charon: &GuestCharon) {
    let names = ["cert-vmsecd-init", "cert-charon-init"];
    if !names.iter().any(|n| wanted(n)) {
        return;
    }
    let certs = CertSet::issue(&bed.dir("pki"));
    charon.put("x509", &certs.b.cert);
    charon.put("private", &certs.b.key);
    charon.put("x509ca", &certs.root.cert);
    let mut c = conn().with_cert("hbcert.pem");
    (c.local_id, c.remote_id) = (B_ID.into(), A_ID.into());
    let text = certs.mesh_text();
    for (name, vmsecd_initiates) in [(names[0], true), (names[1], false)] {
        if !wanted(name) {
            continue;
        }
        let before = charon.log().len();
        let v = cell(
            bed,
            charon,
            &Cell::raw(name, vmsecd_initiates),
            &c,
            &mesh(),
            GCM128,
            Some(&text),
        );
        let log = charon.log();
        let log = log.get(before..).unwrap_or(&log);
        for needle in [
            format!("authentication of '{A_ID}' with RSA_EMSA_PSS_SHA2_256_SALT_32 successful"),
            "reached self-signed root ca with a path length of 0".into(),
        ] {
            assert!(
                log.contains(&needle),
                "{name}: charon verified vmsecd's certificate chain and signature ({needle})\n{}",
                diag(&v, charon)
            );
        }
        end_cell(v, charon);
    }
}

/// Child SA and IKE SA rekeys initiated by each side, under TCP and UDP in both directions, over raw ESP: charon
/// rekeys by `swanctl --rekey`, vmsecd by its lifetimes (Child SA 30 s, IKE SA 45 s, margin 8 s). After each
/// rekey both sides agree on the new SPIs, and no byte of the traffic running throughout is lost or damaged.
#[test]
fn kernel_strongswan_rekeys_both_sides_under_traffic() {
    let bed = GuestBed::new("kss", "rekeys", GUEST_MEM);
    let charon = GuestCharon::start(&bed.guest, &[conn()]);
    let mut mesh = mesh();
    mesh.encap = "auto".into();
    mesh.child_lifetime = Some("30s".into());
    mesh.ike_lifetime = Some("45s".into());
    mesh.rekey_margin = Some("8s".into());
    let mut conn = conn();
    conn.encap = false;
    charon.reload(&[conn]);
    let v = Vmsecd::start(&bed.a, &bed.dir("vmsecd"), &mesh, "hA");
    let d = || diag(&v, &charon);
    let st = agree_now(&v, &charon, GCM128, false);
    assert!(
        peer(&st, PEER).ike.as_ref().is_some_and(|i| i.initiator),
        "vmsecd initiated"
    );
    let t0 = Instant::now();
    let load = Load::start(&bed.avm, &bed.bvm);
    let agree_after = |what: &str, before: &(String, String), ike_changes: bool| {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            // The roles are those of the IKE SA now: a rekeyed IKE SA's initiator is whoever rekeyed it.
            agree_now(&v, &charon, GCM128, false);
            let now = spis(&v);
            let child_new = now.1 != before.1;
            let ike_new = now.0 != before.0;
            if child_new && (ike_new || !ike_changes) {
                eprintln!(
                    "[rekeys] {what} at {:.1} s: IKE {} -> {}, Child {} -> {}",
                    t0.elapsed().as_secs_f64(),
                    before.0,
                    now.0,
                    before.1,
                    now.1
                );
                return now;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: SPIs unchanged after 90 s ({now:?})\n{}",
                d()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let s0 = spis(&v);
    // charon rekeys the Child SA, then the IKE SA (its Child SA moves over, keeping its SPIs; the next check
    // waits for vmsecd's own Child SA rekey as well, so that both change).
    charon.swanctl_ok(&["--rekey", "--child", CHILD]);
    let s1 = agree_after("Child SA rekey by charon", &s0, false);
    charon.swanctl_ok(&["--rekey", "--ike", "hA"]);
    v.wait_log("IKE SA rekeyed", Duration::from_secs(60));
    // vmsecd's own rekeys by lifetime: the Child SA's (22-25 s after charon's), then the IKE SA's.
    let s2 = agree_after("rekeys by charon (IKE) and vmsecd (Child)", &s1, true);
    let _ = s2;
    let counts = wait_all_rekeys(&v, Duration::from_secs(120), &d);
    eprintln!(
        "[rekeys] Child SA rekeys by vmsecd {}, by charon {}; IKE SA rekeys by vmsecd {}, by charon {} ({:.1} s)",
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        t0.elapsed().as_secs_f64()
    );
    agree_now(&v, &charon, GCM128, false);
    let (rounds, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "traffic across the rekeys ({rounds} rounds):\n{}\n{}",
        failures.join("\n"),
        d()
    );
    let log = v.log();
    assert!(
        log.matches("IKE SA established").count() == 1,
        "rekeys, not re-establishment\n{}",
        d()
    );
    eprintln!("[rekeys] {rounds} rounds of traffic intact across the rekeys");
}

/// Refusals with a clear line in vmsecd's log (a wrong PSK each way, no common proposal), then liveness checks
/// from both sides on an idle tunnel, then the guest killed (a power cut) and booted again: its charon
/// (`start_action = start`, as a gateway with `auto=start`) comes back and the VMs reach each other again within
/// [`RESTART_BOUND`] of the kill.
#[test]
fn kernel_strongswan_refusals_dpd_and_guest_restart() {
    let mut bed = GuestBed::new("kss", "restart", GUEST_MEM);
    let mut wrong = conn();
    wrong.encap = false;
    wrong.psk = "a-different-psk-0123456789abcdef".into();
    {
        let charon = GuestCharon::start(&bed.guest, &[wrong.clone()]);
        let mut v = Vmsecd::start(&bed.a, &bed.dir("vmsecd-psk"), &mesh(), "hA");
        v.wait_log(
            "authentication failed: the peer refused our authentication (AUTHENTICATION_FAILED)",
            Duration::from_secs(60),
        );
        let out = charon.initiate(CHILD, 30);
        assert!(
            out.code != 0,
            "charon got in with a wrong PSK\n{}",
            diag(&v, &charon)
        );
        v.wait_log(
            "authentication failed: AUTH from 198.18.0.2 does not verify: the PSKs differ",
            Duration::from_secs(30),
        );
        assert!(!v.log().contains(PSK), "the PSK must never be logged");
        v.terminate(Duration::from_secs(10));

        let mut ok = conn();
        ok.encap = false;
        charon.reload(&[ok]);
        let mut m = mesh();
        m.ike_proposals = vec!["aes256gcm16-prfsha384-ecp384".into()];
        let mut v = Vmsecd::start(&bed.a, &bed.dir("vmsecd-noprop"), &m, "hA");
        v.wait_log(
            "no proposal chosen: the peer accepted none of ours (aes256gcm16-prfsha384-ecp384)",
            Duration::from_secs(60),
        );
        v.terminate(Duration::from_secs(10));
        charon.stop();
    }

    // Liveness checks both ways on an idle tunnel.
    let mut c = conn();
    c.encap = false;
    c.dpd_delay = "5s".into();
    c.start_action = "start".into();
    let mut m = mesh();
    m.dpd_delay = Some("5s".into());
    m.encap = "auto".into();
    let v = Vmsecd::start(&bed.a, &bed.dir("vmsecd"), &m, "hA");
    {
        // Only vmsecd initiates here: with both ends starting at once the duplicate IKE SA is resolved while
        // the liveness checks are watched, and the SPIs move.
        let mut first = c.clone();
        first.start_action = "none".into();
        let charon = GuestCharon::start(&bed.guest, std::slice::from_ref(&first));
        let d = || diag(&v, &charon);
        wait_agree(&v, PEER, || charon.sas(), Duration::from_secs(60), &d);
        let before = spis(&v);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut paused = false;
        loop {
            let log = charon.log();
            let ours = log.matches("parsed INFORMATIONAL request").count();
            let theirs = log.matches("sending DPD request").count();
            if ours >= 1 && theirs >= 1 {
                eprintln!("[restart] liveness checks: {ours} from vmsecd, {theirs} from charon");
                break;
            }
            // Both ends check after 5 s without an inbound message, and each one's check is the other's
            // inbound message: whichever fires first keeps doing so and the other never does (vmsecd won every
            // round of a run). Once vmsecd's check was seen, vmsecd is stopped for 8 s (SIGSTOP, our own child):
            // charon then hears nothing for 5 s and sends its check, which vmsecd answers when it resumes
            // (charon retransmits after 4 s, then 7 s more).
            if ours >= 1 && theirs == 0 && !paused {
                paused = true;
                eprintln!("[restart] vmsecd's check seen, charon's not: vmsecd stopped for 8 s");
                v.pause_for(Duration::from_secs(8));
            }
            assert!(
                Instant::now() < deadline,
                "no liveness checks both ways in 60 s\n{}",
                d()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        assert_eq!(
            spis(&v),
            before,
            "the idle tunnel stays the same SAs\n{}",
            d()
        );
    }

    // A power cut and a reboot.
    let t = Instant::now();
    bed.power_cut_and_boot();
    let charon = GuestCharon::start(&bed.guest, std::slice::from_ref(&c));
    check_back_after_restart(&bed, &v, &charon, t, RESTART_BOUND, GCM128);
}

/// From the guest's kill to traffic through the tunnel again: its boot (7-9 s under TCG here, 25 s seen on a
/// loaded machine), charon's start and IKE.
const RESTART_BOUND: Duration = Duration::from_secs(120);
