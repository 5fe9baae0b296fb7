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

use vmsecd_e2e::kernel_peer::{
    check_agree, check_capture, check_traffic, wait_agree, Expect, GuestBed, GuestCharon, PeerSa,
};
use vmsecd_e2e::strongswan::Conn;
use vmsecd_e2e::vmsecd::{Mesh, Vmsecd};

const PSK: &str = "kernel-interop-psk-0123456789abcdef";
const PEER: &str = "hB";
const CHILD: &str = "net";
const GUEST_MEM: u32 = 384;
const GCM128: (&str, &str) = (
    "AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519",
    "AES_GCM_16_128",
);

fn diag(v: &Vmsecd, c: &GuestCharon) -> String {
    format!("{}\n{}", v.diagnostics(), c.diagnostics())
}

/// One framing cell: who initiates, what each side forces, what must come out.
struct Cell {
    name: &'static str,
    vmsecd_encap: &'static str,
    charon_encap: bool,
    vmsecd_initiates: bool,
    udp: bool,
}

fn charon_sas(c: &GuestCharon) -> Vec<PeerSa> {
    c.list_sas().iter().map(PeerSa::from).collect()
}

/// Sets the cell up on a fresh vmsecd and a reloaded charon, checks agreement, traffic and capture; returns
/// vmsecd, still running.
fn run_cell(bed: &GuestBed, charon: &GuestCharon, cell: &Cell, conn: &Conn, mesh: &Mesh) -> Vmsecd {
    let t = Instant::now();
    let mut conn = conn.clone();
    conn.encap = cell.charon_encap;
    charon.reload(&[conn]);
    let mut mesh = mesh.clone();
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
        let out = charon.initiate(CHILD, 30);
        assert!(
            out.code == 0,
            "{}: swanctl --initiate failed:\n{}\n{}",
            cell.name,
            out.stdout,
            diag(&v, charon)
        );
    }
    let d = || diag(&v, charon);
    let (st, sa) = wait_agree(&v, PEER, || charon_sas(charon), Duration::from_secs(60), &d);
    let e = Expect {
        peer: PEER,
        vmsecd_initiated: cell.vmsecd_initiates,
        ike_alg: GCM128.0,
        esp_alg: GCM128.1,
        udp: cell.udp,
    };
    check_agree(&st, &sa, &e);
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

/// Ends a cell: vmsecd stops (deleting its SAs), charon is left with none.
fn end_cell(mut v: Vmsecd, charon: &GuestCharon) {
    v.terminate(Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !charon.list_sas().is_empty() {
        if Instant::now() > deadline {
            charon.swanctl(&["--terminate", "--ike", "hA", "--force"]);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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
    let cells = [
        Cell {
            name: "raw-vmsecd-init",
            vmsecd_encap: "auto",
            charon_encap: false,
            vmsecd_initiates: true,
            udp: false,
        },
        Cell {
            name: "raw-charon-init",
            vmsecd_encap: "auto",
            charon_encap: false,
            vmsecd_initiates: false,
            udp: false,
        },
        Cell {
            name: "udp-charon-forces-charon-init",
            vmsecd_encap: "auto",
            charon_encap: true,
            vmsecd_initiates: false,
            udp: true,
        },
        Cell {
            name: "udp-charon-forces-vmsecd-init",
            vmsecd_encap: "auto",
            charon_encap: true,
            vmsecd_initiates: true,
            udp: true,
        },
        Cell {
            name: "udp-vmsecd-forces-vmsecd-init",
            vmsecd_encap: "udp",
            charon_encap: false,
            vmsecd_initiates: true,
            udp: true,
        },
        Cell {
            name: "udp-vmsecd-forces-charon-init",
            vmsecd_encap: "udp",
            charon_encap: false,
            vmsecd_initiates: false,
            udp: true,
        },
    ];
    for cell in &cells {
        let v = run_cell(&bed, &charon, cell, &conn(), &mesh());
        end_cell(v, &charon);
    }
}
