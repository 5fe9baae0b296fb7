//! The XDP program's decisions, run by the kernel (`BPF_PROG_TEST_RUN`) on frames made here: loaded with
//! `XDP_DROP` as the verdict of a queue with no socket, so that a frame the program steers to the map comes back
//! `XDP_DROP` and one it leaves to the stack `XDP_PASS`. Needs root (bpf(2)); no namespace, no interface.

use super::program::{self, XDP_DROP, XDP_PASS};
use super::xsk::MAX_FRAME;
use std::net::Ipv4Addr;

/// Our address: its last byte makes the 32-bit immediate negative, which the comparison must handle.
const LOCAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);

/// An Ethernet frame of `len` bytes carrying IPv4 with protocol `proto` to `dst`, `frag` as the flags and
/// fragment offset field.
fn frame(len: usize, proto: u8, dst: Ipv4Addr, frag: u16) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    f[14] = 0x45;
    f[16..18].copy_from_slice(&((len - 14) as u16).to_be_bytes());
    f[20..22].copy_from_slice(&frag.to_be_bytes());
    f[22] = 64;
    f[23] = proto;
    f[26..30].copy_from_slice(&[198, 18, 0, 1]);
    f[30..34].copy_from_slice(&dst.octets());
    f
}

#[test]
fn the_program_steers_unfragmented_esp_to_us_and_passes_the_rest() {
    crate::test_root::require_root(
        "the_program_steers_unfragmented_esp_to_us_and_passes_the_rest",
        "it loads an XDP program with bpf(2)",
    );
    let map = program::create_map(1).unwrap();
    let prog = program::load(LOCAL, &map, MAX_FRAME, XDP_DROP).unwrap();
    let run = |f: &[u8]| program::test_run(&prog, f).unwrap();
    let steered = XDP_DROP;
    let esp = frame(1400, 50, LOCAL, 0);
    assert_eq!(run(&esp), steered, "ESP to us");
    assert_eq!(run(&frame(1400, 50, LOCAL, 0x4000)), steered, "DF set");
    assert_eq!(run(&frame(34, 50, LOCAL, 0)), steered, "headers only");
    assert_eq!(
        run(&frame(MAX_FRAME as usize, 50, LOCAL, 0)),
        steered,
        "as long as a UMEM frame holds"
    );
    let pass = [
        (
            "ESP to another address",
            frame(1400, 50, Ipv4Addr::new(198, 18, 0, 2), 0),
        ),
        ("a first fragment (MF)", frame(1400, 50, LOCAL, 0x2000)),
        ("a later fragment (offset)", frame(1400, 50, LOCAL, 0x00b9)),
        (
            "the last fragment (offset, DF clear)",
            frame(600, 50, LOCAL, 0x1fff),
        ),
        ("UDP", frame(1400, 17, LOCAL, 0)),
        (
            "longer than a UMEM frame",
            frame(MAX_FRAME as usize + 1, 50, LOCAL, 0),
        ),
        ("far longer (several buffers)", frame(9000, 50, LOCAL, 0)),
    ];
    for (what, f) in pass {
        assert_eq!(run(&f), XDP_PASS, "{what}");
    }
    let mut options = esp.clone();
    options[14] = 0x46;
    assert_eq!(run(&options), XDP_PASS, "IPv4 with options");
    let mut v6 = esp.clone();
    v6[12..14].copy_from_slice(&[0x86, 0xdd]);
    assert_eq!(run(&v6), XDP_PASS, "IPv6");
    let mut vlan = esp.clone();
    vlan[12..14].copy_from_slice(&[0x81, 0x00]);
    assert_eq!(run(&vlan), XDP_PASS, "VLAN-tagged");
    assert_eq!(run(&esp[..33]), XDP_PASS, "shorter than the headers");
    // With XDP_PASS as the miss verdict, as the daemon loads it, nothing is dropped when no socket is there.
    let daemon = program::load(LOCAL, &map, MAX_FRAME, XDP_PASS).unwrap();
    assert_eq!(program::test_run(&daemon, &esp).unwrap(), XDP_PASS);
}

#[test]
fn the_program_is_the_documented_length() {
    // The module documentation and the instruction comments count on it.
    assert_eq!(
        program::instructions(LOCAL, 3, MAX_FRAME, XDP_PASS).len(),
        28
    );
}

/// An interface without an Ethernet header (here a TUN device; PPP, GRE, IPIP and WireGuard alike): generic XDP
/// would hand the program the IPv4 header at offset 0, so its checks would read the source address as the
/// EtherType and payload bytes as the destination, and steer (to be dropped) packets of any protocol to any
/// address, while the status said XDP carried the ESP. Setup refuses it: the raw socket receives, and the status
/// says why. Needs root; works in a namespace of its own.
#[test]
fn an_interface_without_ethernet_keeps_the_raw_socket() {
    use std::os::fd::AsRawFd;
    use std::process::Command;
    crate::test_root::require_root(
        "an_interface_without_ethernet_keeps_the_raw_socket",
        "it makes a namespace and a TUN device",
    );
    struct Ns(String);
    impl Drop for Ns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }
    let ip = |args: &[&str]| {
        let st = Command::new("ip").args(args).status().expect("ip");
        assert!(st.success(), "ip {args:?}");
    };
    let ns = Ns(format!("rawrxl3{}", std::process::id()));
    ip(&["netns", "add", &ns.0]);
    ip(&["-n", &ns.0, "tuntap", "add", "t0", "mode", "tun"]);
    ip(&["-n", &ns.0, "addr", "add", "198.18.91.1/24", "dev", "t0"]);
    ip(&["-n", &ns.0, "link", "set", "t0", "up"]);
    let path = format!("/run/netns/{}", ns.0);
    let status = std::thread::spawn(move || {
        let f = std::fs::File::open(&path).expect("namespace file");
        // SAFETY: a valid namespace descriptor; only this thread moves.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let _enter = rt.enter();
        let rx = super::RawRx::open(
            crate::config::RawRxPath::Xdp,
            Ipv4Addr::new(198, 18, 91, 1).into(),
        );
        rx.status().path
    })
    .join()
    .expect("namespace thread");
    assert!(
        status.starts_with("socket (xdp unavailable: t0 is not an Ethernet interface"),
        "{status}"
    );
}
