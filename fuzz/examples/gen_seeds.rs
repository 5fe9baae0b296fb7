//! Writes the small seed corpus under fuzz/seeds/<target>/ (deterministic; rerun after changing the input
//! formats of the targets): `cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds`.

use std::fs;
use std::path::Path;

use vmsecd_fuzz::{checked_decap, encap, ip_payload, new_sad, outbound, N_SAS};

fn ipv4_inner(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len.max(20)];
    p[0] = 0x45;
    let total = p.len() as u16;
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[198, 19, 1, 10]);
    p[16..20].copy_from_slice(&[198, 19, 2, 10]);
    p
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let decap = root.join("esp_decap");
    let rt = root.join("esp_roundtrip");
    fs::create_dir_all(&decap).unwrap();
    fs::create_dir_all(&rt).unwrap();

    // Mode 0: valid ESP packets as received (an AEAD SA and a CBC+HMAC ESN SA).
    for (name, sa) in [("valid_gcm128", 0usize), ("valid_cbc256_esn", 8)] {
        let mut out = outbound(sa);
        let wire = encap(&mut out, &ipv4_inner(40));
        let check = checked_decap(&mut new_sad(), &wire, 0, 0);
        assert!(
            check.result.is_ok(),
            "seed packet does not decapsulate: {:?}",
            check.result
        );
        let mut seed = vec![0u8]; // mode 0
        seed.extend(&wire);
        write(&decap, &format!("mode0_{name}"), &seed);
    }

    // Mode 1: a known SPI in front of a plausible-length body (ChaCha20-Poly1305, ESN).
    let sa = 7;
    let mut seed = vec![((sa as u8) << 2) | 1];
    seed.extend([0u8; 4]);
    seed.extend(1u32.to_be_bytes());
    seed.extend((0..8 + 44 + 16).map(|i| i as u8));
    write(&decap, "mode1_spi_chacha_esn", &seed);

    // Mode 2: scripts on the 64-packet-window SAs: encapsulate, deliver, replay, mutate, jump ahead, deliver old.
    for sa in [2usize, 9] {
        let mut s = vec![((sa as u8) << 2) | 2];
        for i in 0..4u8 {
            s.extend([(i & 1) << 4, 23]); // encap 24 bytes, v4 or v6
            s.extend((0..24).map(|k| k ^ i));
        }
        s.extend([1, 1, 1, 0, 1, 1]); // deliver 1, 0, 1 (replay)
        s.extend([2, 2, 0, 0, 0, 0, 9, 0x80]); // mutate packet 2: one XOR at byte 9
        s.extend([2, 3, 0, 1, 4, 0, 0, 0]); // packet 3 truncated by 5
        s.extend([3, 40]); // 160 lost packets
        s.extend([0x10, 39]);
        s.extend((0..40).map(|k| k as u8));
        s.extend([1, 4, 1, 3, 1, 2]); // newest, then two left of the window
        write(&decap, &format!("mode2_script_sa{sa}"), &s);
    }

    // Mode 2, op 4: hand-sealed packets on AES-GCM-256 with ESN (SA 6): a valid IPv4 packet, a dummy (next header
    // 59), bad padding, and a next header that does not match the version nibble.
    let sa = 6u8;
    let mut s = vec![(sa << 2) | 2];
    let v4: Vec<u8> = ipv4_inner(20);
    for (flags, pad, nh) in [(1u8, 0u8, 4u8), (1, 1, 59), (0, 3, 4), (1, 0, 41)] {
        s.extend([4, 0, flags, v4.len() as u8]);
        s.extend(&v4);
        s.extend([pad, nh, 0x42]);
    }
    write(&decap, "mode2_hand_sealed_sa6", &s);

    // Mode 3: an IPv4 packet, protocol 50, around a valid ESP packet; and a NAT keepalive.
    let mut out = outbound(1);
    let wire = encap(&mut out, &ip_payload(&[0x60; 48], 48, true));
    assert!(checked_decap(&mut new_sad(), &wire, 0, 0).result.is_ok());
    let mut ip = ipv4_inner(20);
    ip[2..4].copy_from_slice(&((20 + wire.len()) as u16).to_be_bytes());
    ip[9] = 50;
    let mut seed = vec![3u8];
    seed.extend(&ip);
    seed.extend(&wire);
    write(&decap, "mode3_ipv4_esp", &seed);
    write(&decap, "mode3_keepalive", &[3, 0xff]);

    // Round trip: an IPv4 and an IPv6 packet with ample room, then one without headroom.
    for (name, sa) in [("gcm128", 0usize), ("cbc128_esn_w1024", N_SAS - 1)] {
        let mut s = vec![sa as u8];
        for (flags, len, head, tail) in [(0u8, 39u16, 40u8, 40u8), (1, 99, 24, 33), (0, 19, 0, 40)]
        {
            s.push(flags);
            s.extend(len.to_be_bytes());
            s.extend([head, tail]);
            s.extend(ipv4_inner(len as usize + 1));
        }
        write(&rt, &format!("three_{name}"), &s);
    }
}
