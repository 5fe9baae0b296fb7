//! Writes the small seed corpus under fuzz/seeds/<target>/ (rerun after changing the input formats of the
//! targets): `cargo run --manifest-path fuzz/Cargo.toml --example gen_seeds`.
//!
//! Deterministic except where the crates draw randomness themselves (CBC IVs in esp_decap; SPIs, nonces and key
//! shares in the IKE handshake captured for ike_message). Structure-aware targets get pseudo-random byte strings
//! (a fixed LCG), which their generators turn into well-formed structures.

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ike::config::{
    id_from_addr, AuthMethod, Lifetimes, PeerConfig, Retransmit, DEFAULT_FRAGMENT_SIZE,
};
use ike::endpoint::Endpoint;
use ike::message::{encode_chain, Id, IdType, Payload, TrafficSelector};
use ike::proposal::ProposalSpec;
use zeroize::Zeroizing;

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

    ike_seeds(&root);
    gso_seeds(&root);
    mesh_seeds(&root);
}

/// `n` pseudo-random bytes from a fixed 64-bit LCG (Knuth's MMIX constants).
fn lcg(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 56) as u8
        })
        .collect()
}

fn dir(root: &Path, target: &str) -> std::path::PathBuf {
    let d = root.join(target);
    fs::create_dir_all(&d).unwrap();
    d
}

fn peer(name: &str, local: &str, remote: &str) -> PeerConfig {
    let (l, r): (IpAddr, IpAddr) = (local.parse().unwrap(), remote.parse().unwrap());
    PeerConfig {
        name: name.into(),
        local_addr: l,
        remote_addr: r,
        remote_port: 500,
        local_id: id_from_addr(l),
        remote_id: id_from_addr(r),
        auth: AuthMethod::Psk(Zeroizing::new(b"a shared secret of some length".to_vec())),
        ike_proposals: vec![ProposalSpec::ike("aes128gcm16-prfsha256-x25519").unwrap()],
        esp_proposals: vec![ProposalSpec::esp("aes128gcm16").unwrap()],
        local_ts: vec![TrafficSelector::from_prefix(
            "198.19.1.0".parse().unwrap(),
            24,
        )],
        remote_ts: vec![TrafficSelector::from_prefix(
            "198.19.2.0".parse().unwrap(),
            24,
        )],
        force_encap: false,
        udp_with_vmsecd: false,
        retransmit: Retransmit::default(),
        lifetimes: Lifetimes {
            ike_rekey: Duration::from_secs(100_000),
            ike_lifetime: Duration::ZERO,
            child_rekey: Duration::from_secs(3600),
            jitter: Duration::ZERO,
            dpd_delay: Duration::from_secs(30),
            nat_keepalive: Duration::from_secs(20),
        },
        replay_window: 1024,
        fragment_size: DEFAULT_FRAGMENT_SIZE,
    }
}

/// The datagrams of a real PSK handshake between two endpoints (IKE_SA_INIT and IKE_AUTH, both ways).
fn handshake() -> Vec<Vec<u8>> {
    let a_addr = SocketAddr::new("198.18.0.1".parse().unwrap(), 500);
    let b_addr = SocketAddr::new("198.18.0.2".parse().unwrap(), 500);
    let mut a = Endpoint::new(vec![Arc::new(peer("b", "198.18.0.1", "198.18.0.2"))]);
    let mut b = Endpoint::new(vec![Arc::new(peer("a", "198.18.0.2", "198.18.0.1"))]);
    let now = Instant::now();
    a.connect(now, "b");
    let mut out = Vec::new();
    for _ in 0..4 {
        while let Some(t) = a.poll_transmit() {
            b.handle(now, &t.data, a_addr, t.remote.port());
            out.push(t.data);
        }
        while let Some(t) = b.poll_transmit() {
            a.handle(now, &t.data, b_addr, t.remote.port());
            out.push(t.data);
        }
    }
    assert!(out.len() >= 4, "handshake produced {} datagrams", out.len());
    out
}

fn ike_seeds(root: &Path) {
    // ike_message: structured (mode 0) from pseudo-random bytes; real datagrams (mode 1).
    let d = dir(root, "ike_message");
    for i in 0..8u64 {
        let mut s = vec![0u8];
        s.extend(lcg(i, 300 + 250 * i as usize));
        write(&d, &format!("structured_{i}"), &s);
    }
    for (i, m) in handshake().iter().enumerate() {
        let mut s = vec![1u8];
        s.extend(m);
        write(&d, &format!("handshake_{i}"), &s);
    }
    // issue 12 item 1: a Delete payload with SPI Size 0 and Num of SPIs 65535 in an IKE_SA_INIT-shaped message:
    // 8 bytes that make the parser build 65,535 empty Vecs (about 1.5 MiB, before anything is authenticated).
    let mut m = vec![1u8];
    m.extend(0x1122_3344_5566_7788u64.to_be_bytes());
    m.extend(0u64.to_be_bytes());
    m.extend([42, 0x20, 34, 0x08, 0, 0, 0, 0]);
    m.extend(36u32.to_be_bytes());
    m.extend([0, 0, 0, 8, 1, 0, 0xff, 0xff]);
    write(&d, "regression_delete_spi_size_0_count_65535", &m);

    // ike_sk: every suite, structured chains and one raw IKE_AUTH-like inner chain.
    let d = dir(root, "ike_sk");
    for suite in 0..7u8 {
        let mut s = vec![suite];
        s.extend(lcg(100 + u64::from(suite), 700));
        write(&d, &format!("structured_suite{suite}"), &s);
    }
    let inner = vec![
        Payload::IdI(Id {
            id_type: IdType::IPV4_ADDR,
            data: vec![198, 18, 0, 1],
        }),
        Payload::Auth {
            method: 2,
            data: vec![0x5a; 32],
        },
        Payload::TsI(vec![TrafficSelector::from_prefix(
            "198.19.1.0".parse().unwrap(),
            24,
        )]),
        Payload::TsR(vec![TrafficSelector::from_prefix(
            "198.19.2.0".parse().unwrap(),
            24,
        )]),
    ];
    let (first, chain) = encode_chain(&inner);
    for suite in [0u8, 3] {
        let mut s = vec![suite + 7]; // mode 1
        s.extend(lcg(7, 30)); // header choices
        s.push(first);
        s.extend(&chain);
        write(&d, &format!("raw_auth_chain_suite{suite}"), &s);
    }

    // ike_fragments: every suite.
    let d = dir(root, "ike_fragments");
    for suite in 0..7u8 {
        let mut s = vec![suite];
        s.extend(lcg(200 + u64::from(suite), 900));
        write(&d, &format!("suite{suite}"), &s);
    }

    // x509_chain: the certificates of the ike_wire seeds, as DER, in chains.
    let d = dir(root, "x509_chain");
    let wire = root.join("ike_wire");
    let pem = |n: &str| fs::read(wire.join(n)).unwrap();
    let der = |n: &str| -> Vec<Vec<u8>> {
        ike::crypto::x509::parse_certificates(&pem(n))
            .unwrap()
            .iter()
            .map(|c| c.der().to_vec())
            .collect()
    };
    let chain_seed = |ctl: u8, certs: &[Vec<u8>]| {
        let mut s = vec![ctl, 0, 0, 0, 0];
        for c in certs {
            s.extend((c.len() as u16).to_be_bytes());
            s.extend(c);
        }
        s
    };
    let ca = der("x509-ca");
    let a = der("x509-a");
    let b = der("x509-b");
    let bundle = der("x509-untrusted-root-sent-along");
    write(
        &d,
        "ca_then_a",
        &chain_seed(0x11, &[ca[0].clone(), a[0].clone()]),
    );
    write(
        &d,
        "ca_then_b",
        &chain_seed(0x11, &[ca[0].clone(), b[0].clone()]),
    );
    let mut all = vec![ca[0].clone()];
    all.extend(bundle.iter().take(3).cloned());
    write(&d, "ca_and_bundle", &chain_seed(0x11, &all));
    let mut s = vec![0x80, 0, 0, 0, 0];
    s.extend(pem("x509-untrusted-root-sent-along"));
    write(&d, "pem_bundle", &s);
}

fn gso_seeds(root: &Path) {
    let d = dir(root, "gso");
    // Mode 0: a raw TSO packet as the TUN gives it: IPv4/TCP, 3000 bytes of payload, gso_size 1400.
    let payload = 3000usize;
    let mut p = vec![0u8; 40 + payload];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&[198, 19, 1, 10]);
    p[16..20].copy_from_slice(&[198, 19, 2, 10]);
    p[32] = 0x50;
    p[33] = 0x18;
    for (i, b) in p[40..].iter_mut().enumerate() {
        *b = i as u8;
    }
    let mut s = vec![0u8, 1, 1];
    s.extend(40u16.to_le_bytes());
    s.extend(1400u16.to_le_bytes());
    s.extend(20u16.to_le_bytes());
    s.extend(16u16.to_le_bytes());
    s.extend([10, 18]);
    s.extend(&p);
    write(&d, "raw_tso_v4", &s);
    for i in 0..6u64 {
        write(
            &d,
            &format!("structured_tso_{i}"),
            &[&[1u8][..], &lcg(300 + i, 200)].concat(),
        );
        write(
            &d,
            &format!("coalesce_{i}"),
            &[&[2u8][..], &lcg(400 + i, 200)].concat(),
        );
    }
}

fn mesh_seeds(root: &Path) {
    let d = dir(root, "mesh_config");
    let hosts = "\n[[host]]\nname = \"b0\"\naddress = \"198.18.0.1\"\nsubnets = [\"198.19.1.0/24\"]\n\n[[host]]\nname = \"c0\"\naddress = \"198.18.0.2\"\nsubnets = [\"198.19.2.0/24\"]\n";
    write(
        &d,
        "two_hosts",
        format!("[mesh]\npsk_file = \"psk\"\n{hosts}").as_bytes(),
    );
    write(
        &d,
        "every_key",
        br#"[mesh]
interface = "vmsec1"
mtu = 1380
auth = "psk"
psk_file = "psk"
ike_proposals = ["aes256gcm16-prfsha384-ecp384", "aes128gcm16-prfsha256-x25519"]
esp_proposals = ["aes256gcm16", "aes256-sha256"]
ike_lifetime = "8h"
child_lifetime = 1800
rekey_margin = "5m"
dpd_delay = "1m 30s"
encap = "udp"
replay_window = 4096
control_socket = "run/vmsecd.sock"

[[host]]
name = "b0"
address = "198.18.0.1"
subnets = ["198.19.1.0/24", "198.19.11.0/24"]

[[host]]
name = "c0"
address = "2001:db8::2"
subnets = ["198.19.2.0/24", "2001:db8:2::/64"]
id = "@c0.example"
port = 4501

[[host]]
name = "gw"
address = "198.18.0.3"
subnets = ["198.19.3.0/24"]
id = "@#0a0b"
"#,
    );
    write(
        &d,
        "libvirt_range",
        br#"[mesh]
psk_file = "psk"
libvirt_range = ["198.19.0.0/16", "198.20.0.0/24"]

[[host]]
name = "b0"
address = "198.18.0.1"
subnets = "libvirt"

[[host]]
name = "c0"
address = "198.18.0.2"
subnets = ["198.20.0.0/25"]
"#,
    );
    write(
        &d,
        "overlap_error",
        format!(
            "[mesh]\npsk_file = \"psk\"\n{}",
            hosts.replace("198.19.2.0/24", "198.19.1.128/25")
        )
        .as_bytes(),
    );
}
