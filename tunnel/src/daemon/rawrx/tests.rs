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
