//! ESP interop with an independent implementation: vmsecd's `esp` crate (through the `esp-peer` binary) against
//! scapy's IPsec layer (`tests/peers/scapy_esp_peer.py`), both directions, over real sockets between two network
//! namespaces.
//!
//! Every case is one transform, with or without extended sequence numbers, in UDP encapsulation (RFC 3948, port
//! 4500) or as raw IP protocol 50. esp-peer runs in namespace `a` (198.18.0.1) and the scapy peer in `b`
//! (198.18.0.2), each with fixed keys and SPIs:
//! - vmsecd -> scapy: esp-peer encapsulates inner packets built here; scapy decrypts them, checks padding, next
//!   header, sequence numbers and IV reuse, and compares each inner packet byte for byte (and so does this test).
//! - scapy -> vmsecd: scapy encrypts inner packets it builds itself (with ESN it walks the sequence number across
//!   2^32); esp-peer decapsulates them, and this test compares inner packets and full sequence numbers.
//!
//! These tests need root, iproute2, python3 and scapy 2.8; without any of them they fail, never skip.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::{Duration, Instant};

use esp::Transform;
use vmsecd_e2e::netns::{Netns, NetnsGuard, NsChild};

/// Packets each way per case.
const COUNT: usize = 24;
/// How long the peers may take (they include Python's and scapy's start-up).
const PEER_TIMEOUT_SECS: u64 = 30;

const A_ADDR: &str = "198.18.0.1";
const B_ADDR: &str = "198.18.0.2";

#[derive(Debug, Clone, Copy)]
struct Case {
    /// Short name, used in namespace names and messages.
    name: &'static str,
    /// strongSwan-style transform name, understood by both peers.
    transform: &'static str,
    esn: bool,
    /// "udp" or "raw".
    mode: &'static str,
    /// Distinguishes the fixed keys and SPIs of each case.
    idx: u32,
}

/// Fixed keying material for one direction of one case.
fn test_key(case: &Case, dir: u32) -> String {
    let t: Transform = case.transform.parse().expect("known transform");
    (0..t.keymat_len())
        .map(|i| {
            let b = (case.idx as usize * 53 + dir as usize * 101 + i * 7 + 0x11) as u8;
            format!("{b:02x}")
        })
        .collect()
}

fn test_spi(case: &Case, dir: u32) -> String {
    format!("{:08x}", 0xc000_0000 | (case.idx << 8) | dir)
}

/// The Python to run: `$PYTHON`, or `python3` from `PATH`.
fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Checks once per process that scapy's IPsec layer is there, with what these tests use, and returns the
/// interpreter's own path (which skips wrappers such as pyenv's shims on every later start). Panics (never
/// skips) with how to install scapy otherwise.
fn require_scapy() -> &'static str {
    static CHECK: OnceLock<Result<String, String>> = OnceLock::new();
    let r = CHECK.get_or_init(|| {
        let probe = "import inspect, scapy, scapy.layers.ipsec as i\n\
                     assert 'esn_en' in inspect.signature(i.SecurityAssociation).parameters, 'no ESN support'\n\
                     missing = {'AES-GCM', 'CHACHA20-POLY1305', 'AES-CBC'} - set(i.CRYPT_ALGOS)\n\
                     assert not missing, 'scapy lacks %s' % missing\n\
                     assert 'SHA2-256-128' in i.AUTH_ALGOS, 'scapy lacks SHA2-256-128'\n\
                     import sys; print(sys.executable)";
        match Command::new(python()).args(["-c", probe]).output() {
            Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).trim().to_owned()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
            Err(e) => Err(format!("cannot run {}: {e}", python())),
        }
    });
    match r {
        Ok(exe) => exe,
        Err(e) => panic!(
            "scapy's IPsec layer is not usable, so the ESP interop tests cannot run (they never skip).\n\
             Install it: `python3 -m pip install scapy==2.8.0 cryptography` (`sudo scripts/setup test` does this, \
             and CI runs that script).\nPython said: {e}"
        ),
    }
}

// ---- inner packets for the vmsecd -> scapy direction, built here independently of scapy ----

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const SRC4: [u8; 4] = [198, 19, 1, 10];
const DST4: [u8; 4] = [198, 19, 2, 10];

/// IPv4-mapped forms of the VM addresses: no address outside 198.18.0.0/15 appears even in inner packets.
fn mapped(v4: [u8; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12..].copy_from_slice(&v4);
    a
}

/// An inner packet: IPv4 or IPv6 header around `l4`, whose checksum (at `csum_at`, if any) is filled in,
/// with the pseudo-header unless `pseudo` is false (ICMPv4).
fn ip_packet(
    v6: bool,
    proto: u8,
    mut l4: Vec<u8>,
    csum_at: Option<usize>,
    pseudo: bool,
    id: u16,
) -> Vec<u8> {
    if let Some(at) = csum_at {
        let mut covered = Vec::new();
        if pseudo && !v6 {
            covered.extend_from_slice(&SRC4);
            covered.extend_from_slice(&DST4);
            covered.extend_from_slice(&[0, proto]);
            covered.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        } else if pseudo {
            covered.extend_from_slice(&mapped(SRC4));
            covered.extend_from_slice(&mapped(DST4));
            covered.extend_from_slice(&(l4.len() as u32).to_be_bytes());
            covered.extend_from_slice(&[0, 0, 0, proto]);
        }
        covered.extend_from_slice(&l4);
        let mut c = checksum(&covered);
        if c == 0 && proto == 17 {
            c = 0xffff;
        }
        l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    }
    let mut p = Vec::with_capacity(40 + l4.len());
    if v6 {
        p.extend_from_slice(&[0x60, 0x01, 0x23, 0x45]);
        p.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        p.extend_from_slice(&[proto, 64]);
        p.extend_from_slice(&mapped(SRC4));
        p.extend_from_slice(&mapped(DST4));
    } else {
        p.extend_from_slice(&[0x45, 0]);
        p.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
        p.extend_from_slice(&SRC4);
        p.extend_from_slice(&DST4);
        let c = checksum(&p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    p.extend_from_slice(&l4);
    p
}

/// `n` varied inner packets: IPv4 ICMP/UDP/TCP, IPv6 UDP/ICMPv6/TCP and a bare IPv4 header, payloads from
/// nothing to a 1400-byte packet (which still fits a 1500-byte underlay MTU after ESP, UDP and IP).
fn inner_packets(n: usize) -> Vec<Vec<u8>> {
    const SIZES: [usize; 24] = [
        0, 1, 3, 8, 15, 16, 17, 33, 63, 64, 65, 128, 200, 333, 512, 600, 777, 900, 1024, 1100,
        1234, 1300, 1348, 1400,
    ];
    (0..n)
        .map(|i| {
            let size = SIZES[i % SIZES.len()];
            let payload = |hdr: usize| -> Vec<u8> {
                let room = 1400 - hdr;
                (0..size.min(room))
                    .map(|j| (i * 31 + j * 7 + 3) as u8)
                    .collect()
            };
            let id = 0x1000 + i as u16;
            match i % 7 {
                0 => {
                    let mut l4 = vec![8, 0, 0, 0, 0x12, 0x34, 0, i as u8];
                    l4.extend(payload(28));
                    ip_packet(false, 1, l4, Some(2), false, id)
                }
                1 | 3 => {
                    let v6 = i % 7 == 3;
                    let mut l4 = vec![0x30, 0x39, 0x12, 0xb5, 0, 0, 0, 0];
                    l4.extend(payload(if v6 { 48 } else { 28 }));
                    let len = l4.len() as u16;
                    l4[4..6].copy_from_slice(&len.to_be_bytes());
                    ip_packet(v6, 17, l4, Some(6), true, id)
                }
                2 | 5 => {
                    let v6 = i % 7 == 5;
                    let mut l4 = vec![
                        0x9c, 0x40, 0x01, 0xbb, 0x11, 0x22, 0x33, 0x44, 0, 0, 0, 0, 0x60, 0x02,
                        0xff, 0xff, 0, 0, 0, 0, 2, 4, 0x05, 0x50,
                    ];
                    l4.extend(payload(if v6 { 64 } else { 44 }));
                    ip_packet(v6, 6, l4, Some(16), true, id)
                }
                4 => {
                    let mut l4 = vec![128, 0, 0, 0, 0x56, 0x78, 0, i as u8];
                    l4.extend(payload(48));
                    ip_packet(true, 58, l4, Some(2), true, id)
                }
                _ => ip_packet(false, 253, payload(20), None, false, id),
            }
        })
        .collect()
}

// ---- running the peers ----

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn read_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

fn log_of(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| format!("(no log: {e})"))
}

fn spawn_logged(ns: &Netns, mut cmd: Command, log: &Path) -> NsChild {
    let f = File::create(log).expect("log file");
    cmd.stdout(Stdio::from(f.try_clone().expect("log file")))
        .stderr(Stdio::from(f));
    ns.spawn(&mut cmd)
}

/// Compares two lists of hex lines; describes the first difference.
fn compare(what: &str, want: &[String], got: &[String]) -> Result<(), String> {
    if want.len() != got.len() {
        return Err(format!(
            "{what}: {} expected, {} received",
            want.len(),
            got.len()
        ));
    }
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        if w != g {
            let at = w.bytes().zip(g.bytes()).take_while(|(x, y)| x == y).count() / 2;
            return Err(format!(
                "{what}: packet #{} differs ({} vs {} bytes, first difference at byte {at})\n  sent: {w}\n  got:  {g}",
                i + 1,
                w.len() / 2,
                g.len() / 2
            ));
        }
    }
    Ok(())
}

fn run_case(case: Case) {
    let started = Instant::now();
    let mut g = NetnsGuard::new(&format!("espi-{}", case.name));
    let python = require_scapy();
    let (a, b) = g.underlay_pair();
    let dir: PathBuf = g.dir();
    let f = |name: &str| dir.join(name);

    // vmsecd -> scapy: inner packets built here.
    let to_scapy = inner_packets(COUNT);
    fs::write(
        f("a-send.hex"),
        to_scapy.iter().map(|p| hex(p) + "\n").collect::<String>(),
    )
    .unwrap();

    let (spi_ab, key_ab) = (test_spi(&case, 0x0a), test_key(&case, 1));
    let (spi_ba, key_ba) = (test_spi(&case, 0x0b), test_key(&case, 2));
    let esn = if case.esn { "1" } else { "0" };
    let timeout = PEER_TIMEOUT_SECS.to_string();
    let go = f("go");
    let path = |p: PathBuf| p.to_str().expect("UTF-8 temp path").to_owned();

    let mut esp_cmd = a.command(env!("CARGO_BIN_EXE_esp-peer"));
    esp_cmd.args([
        "--mode",
        case.mode,
        "--transform",
        case.transform,
        "--esn",
        esn,
        "--local",
        A_ADDR,
        "--remote",
        B_ADDR,
        "--out-spi",
        &spi_ab,
        "--out-key",
        &key_ab,
        "--in-spi",
        &spi_ba,
        "--in-key",
        &key_ba,
        "--send",
        &path(f("a-send.hex")),
        "--recv",
        &COUNT.to_string(),
        "--recv-out",
        &path(f("a-recv.hex")),
        "--recv-seqs",
        &path(f("a-recv-seqs.txt")),
        "--ready-file",
        &path(f("a-ready")),
        "--go-file",
        &path(go.clone()),
        "--timeout-secs",
        &timeout,
    ]);
    let mut esp_peer = spawn_logged(&a, esp_cmd, &f("esp-peer.log"));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/scapy_esp_peer.py");
    let mut py_cmd = b.command(python);
    py_cmd.arg(&script).args([
        "--mode",
        case.mode,
        "--transform",
        case.transform,
        "--esn",
        esn,
        "--local",
        B_ADDR,
        "--remote",
        A_ADDR,
        "--out-spi",
        &spi_ba,
        "--out-key",
        &key_ba,
        "--in-spi",
        &spi_ab,
        "--in-key",
        &key_ab,
        "--send-count",
        &COUNT.to_string(),
        "--seed",
        &case.idx.to_string(),
        "--sent-out",
        &path(f("b-sent.hex")),
        "--sent-seqs",
        &path(f("b-sent-seqs.txt")),
        "--recv",
        &COUNT.to_string(),
        "--recv-out",
        &path(f("b-recv.hex")),
        "--expect",
        &path(f("a-send.hex")),
        "--ready-file",
        &path(f("b-ready")),
        "--go-file",
        &path(go.clone()),
        "--timeout-secs",
        &timeout,
    ]);
    let mut scapy_peer = spawn_logged(&b, py_cmd, &f("scapy-peer.log"));

    let logs = || {
        format!(
            "--- esp-peer (in {}) ---\n{}--- scapy peer (in {}) ---\n{}",
            a.name(),
            log_of(&f("esp-peer.log")),
            b.name(),
            log_of(&f("scapy-peer.log"))
        )
    };

    // Both sockets bound and receiving before either side sends.
    let deadline = Instant::now() + Duration::from_secs(PEER_TIMEOUT_SECS);
    while !(f("a-ready").exists() && f("b-ready").exists()) {
        if esp_peer.try_wait().is_some()
            || scapy_peer.try_wait().is_some()
            || Instant::now() > deadline
        {
            panic!(
                "[{}] a peer exited or hung before it was ready\n{}",
                case.name,
                logs()
            );
        }
        sleep(Duration::from_millis(10));
    }
    fs::write(&go, b"go\n").unwrap();

    let wait = Duration::from_secs(PEER_TIMEOUT_SECS + 15);
    let esp_status = esp_peer.wait_or_kill(wait);
    let scapy_status = scapy_peer.wait_or_kill(wait);
    let mut problems = Vec::new();
    if !scapy_status.success() {
        problems.push(format!(
            "scapy peer failed ({scapy_status}): vmsecd -> scapy is broken"
        ));
    }
    if !esp_status.success() {
        problems.push(format!(
            "esp-peer failed ({esp_status}): scapy -> vmsecd is broken"
        ));
    }

    // scapy -> vmsecd: what scapy encrypted must be what esp-peer decapsulated, with the same sequence numbers.
    let sent_by_scapy = read_lines(&f("b-sent.hex"));
    if sent_by_scapy.len() != COUNT {
        problems.push(format!(
            "scapy peer wrote {} sent packets, not {COUNT}",
            sent_by_scapy.len()
        ));
    }
    if let Err(e) = compare(
        "scapy -> vmsecd inner packets",
        &sent_by_scapy,
        &read_lines(&f("a-recv.hex")),
    ) {
        problems.push(e);
    }
    if let Err(e) = compare(
        "scapy -> vmsecd full sequence numbers",
        &read_lines(&f("b-sent-seqs.txt")),
        &read_lines(&f("a-recv-seqs.txt")),
    ) {
        problems.push(e);
    }
    // vmsecd -> scapy: scapy compared already (--expect); check its output here too.
    let sent_by_us: Vec<String> = to_scapy.iter().map(|p| hex(p)).collect();
    if let Err(e) = compare(
        "vmsecd -> scapy inner packets",
        &sent_by_us,
        &read_lines(&f("b-recv.hex")),
    ) {
        problems.push(e);
    }

    if !problems.is_empty() {
        panic!(
            "[{} {} esn={} {}] ESP interop failed:\n{}\n{}",
            case.name,
            case.transform,
            case.esn,
            case.mode,
            problems.join("\n"),
            logs()
        );
    }
    let last_seq = read_lines(&f("a-recv-seqs.txt"))
        .last()
        .cloned()
        .unwrap_or_default();
    println!(
        "esp interop {:<16} esn={} {}: {COUNT} packets each way byte-identical (scapy's last seq {last_seq}), {:.1?}",
        case.transform,
        u8::from(case.esn),
        case.mode,
        started.elapsed()
    );
}

macro_rules! cases {
    ($($test:ident: $transform:literal, esn $esn:literal, $mode:literal, $idx:literal;)*) => {$(
        #[test]
        fn $test() {
            run_case(Case {
                name: stringify!($test),
                transform: $transform,
                esn: $esn,
                mode: $mode,
                idx: $idx,
            });
        }
    )*};
}

cases! {
    aes128gcm_udp: "aes128gcm16", esn false, "udp", 1;
    aes128gcm_esn_udp: "aes128gcm16", esn true, "udp", 2;
    aes128gcm_raw: "aes128gcm16", esn false, "raw", 3;
    aes128gcm_esn_raw: "aes128gcm16", esn true, "raw", 4;
    aes256gcm_udp: "aes256gcm16", esn false, "udp", 5;
    aes256gcm_esn_udp: "aes256gcm16", esn true, "udp", 6;
    aes256gcm_raw: "aes256gcm16", esn false, "raw", 7;
    aes256gcm_esn_raw: "aes256gcm16", esn true, "raw", 8;
    chacha20poly1305_udp: "chacha20poly1305", esn false, "udp", 9;
    chacha20poly1305_esn_udp: "chacha20poly1305", esn true, "udp", 10;
    chacha20poly1305_raw: "chacha20poly1305", esn false, "raw", 11;
    chacha20poly1305_esn_raw: "chacha20poly1305", esn true, "raw", 12;
    aes256cbc_sha256_udp: "aes256-sha256", esn false, "udp", 13;
    aes256cbc_sha256_esn_udp: "aes256-sha256", esn true, "udp", 14;
    aes256cbc_sha256_raw: "aes256-sha256", esn false, "raw", 15;
    aes256cbc_sha256_esn_raw: "aes256-sha256", esn true, "raw", 16;
    aes128cbc_sha256_udp: "aes128-sha256", esn false, "udp", 17;
    aes128cbc_sha256_esn_udp: "aes128-sha256", esn true, "udp", 18;
    aes128cbc_sha256_raw: "aes128-sha256", esn false, "raw", 19;
    aes128cbc_sha256_esn_raw: "aes128-sha256", esn true, "raw", 20;
}
