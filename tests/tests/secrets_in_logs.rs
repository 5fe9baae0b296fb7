//! No secret in vmsecd's logs, even at `RUST_LOG=trace` (issue 12, "Prove it: Secrets").
//!
//! - Two vmsecd hosts (PSK) handshake and carry pings at trace level, then stop. Neither log may hold the PSK
//!   (raw, hex, base64, or as a Rust byte list), nor anything shaped like key material: a run of 32 or more hex
//!   digits (16 bytes; SPIs are 16 digits and allowed), a list of 16 or more byte values, or a base64 run of 24
//!   or more characters that is not a word. The logs cover an IKE SA rekey, Child SA rekeys, and a third host with
//!   another PSK whose handshakes fail authentication.
//! - vmsecd at trace against a charon that logs its own key material (`ike = 4`, `chd = 4`: the shared
//!   Diffie-Hellman secret, SKEYSEED, every SK_* key, the nonces and the ESP keys, which both ends share): none of
//!   those byte strings may appear in vmsecd's log, in hex (either case, with or without spaces), base64 or as a
//!   byte list. The test first checks that charon did log them, so it cannot pass on an empty oracle.
//!
//! - Two vmsecd hosts with RSA keys (`auth = "pubkey"`) at trace: neither private key (its PEM lines, its DER
//!   whole and in 48-byte pieces past the header) in any form, nothing key-shaped.
//!
//! About 15 s.

use std::fs;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use vmsecd_e2e::netns::{output_of, NetnsGuard, NsChild};
use vmsecd_e2e::strongswan::{
    pki_keygen, require_charon, strongswan_conf, swanctl_conf, Conn, CHARON,
};
use vmsecd_e2e::traffic::ping_until_ok;
use vmsecd_e2e::vmsecd::{is_up, HostEntry, Mesh, Vmsecd};

const PSK: &str = "Secrets-Test-PSK-kY3vQ9zT0pR7wX2m";
const WRONG_PSK: &str = "Another-PSK-for-c-Jd8sQ2vX5nR1tZ7";

fn base64(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut o = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..=c.len() {
            o.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    while !o.len().is_multiple_of(4) {
        o.push('=');
    }
    o
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Every way a log line could carry `secret`: hex (both cases, packed or spaced), base64 (of the whole and of
/// its first 12 bytes, which is a prefix of the whole's), a Rust byte list (`[12, 34, ...`, first 8 bytes).
fn forms(secret: &[u8]) -> Vec<String> {
    let h = hex(secret);
    let spaced: Vec<String> = secret.iter().map(|x| format!("{x:02x}")).collect();
    let head = &secret[..secret.len().min(12)];
    let mut v = vec![
        h.clone(),
        h.to_uppercase(),
        spaced.join(" "),
        spaced.join(" ").to_uppercase(),
        spaced.join(":"),
        base64(secret).trim_end_matches('=').to_owned(),
        base64(head),
        hex(head),
        hex(head).to_uppercase(),
        spaced[..head.len()].join(" "),
        spaced[..head.len()].join(" ").to_uppercase(),
        secret[..secret.len().min(8)]
            .iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    ];
    if let Ok(s) = std::str::from_utf8(secret) {
        v.push(s.to_owned());
    }
    v
}

/// (what, form) for each form of each secret found in `log`.
fn leaks(log: &str, secrets: &[(String, Vec<u8>)]) -> Vec<String> {
    let mut found = Vec::new();
    for (what, s) in secrets {
        for f in forms(s) {
            if f.len() >= 12 && log.contains(&f) {
                found.push(format!("{what} as {f:?}"));
            }
        }
    }
    found
}

/// Runs of characters in `class` at least `min` long.
fn runs(log: &str, min: usize, class: impl Fn(char) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in log.chars().chain(std::iter::once('\n')) {
        if class(c) {
            cur.push(c);
        } else {
            if cur.len() >= min {
                out.push(std::mem::take(&mut cur));
            }
            cur.clear();
        }
    }
    out
}

/// What in `log` looks like key material: hex runs of 32+ digits, lists of 16+ byte values, base64 runs of 24+
/// characters with digits and both cases.
fn key_shaped(log: &str) -> Vec<String> {
    let mut v: Vec<String> = runs(log, 32, |c| c.is_ascii_hexdigit())
        .into_iter()
        .map(|r| format!("hex run {r}"))
        .collect();
    for line in log.lines() {
        let nums = runs(line, 16 * 3, |c| c.is_ascii_digit() || c == ',' || c == ' ');
        for n in nums {
            if n.split(',')
                .filter(|x| x.trim().parse::<u8>().is_ok())
                .count()
                >= 16
            {
                v.push(format!("byte list {n}"));
            }
        }
        for r in runs(line, 24, |c| {
            c.is_ascii_alphanumeric() || c == '+' || c == '/'
        }) {
            let (d, u, l) = (
                r.chars().any(|c| c.is_ascii_digit()),
                r.chars().any(|c| c.is_ascii_uppercase()),
                r.chars().any(|c| c.is_ascii_lowercase()),
            );
            if d && u && l {
                v.push(format!("base64-like run {r}"));
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

fn trace() {
    // Every test of this file wants the same value.
    std::env::set_var("VT_VMSECD_LOG", "trace");
}

#[test]
fn vmsecd_pair_at_trace_logs_neither_psk_nor_key_material() {
    vmsecd_e2e::netns::require_root_and_ip();
    trace();
    let mut g = NetnsGuard::new("secrets");
    let hv = g.underlay_lan(&["a", "b", "c"]);
    let (a, b, c) = (hv[0].clone(), hv[1].clone(), hv[2].clone());
    let avm = g.vm_subnet(&a, 1, "avm");
    let _bvm = g.vm_subnet(&b, 2, "bvm");
    let _cvm = g.vm_subnet(&c, 3, "cvm");
    // Short lifetimes, so that the logs also cover an IKE SA rekey and Child SA rekeys (7-9 s after start).
    let mut mesh = Mesh::two_hosts(PSK);
    mesh.ike_lifetime = Some("16s".into());
    mesh.child_lifetime = Some("16s".into());
    mesh.rekey_margin = Some("7s".into());
    mesh.hosts.push(HostEntry {
        name: "hC".into(),
        address: "198.18.0.3".into(),
        subnets: vec!["198.19.3.0/24".into()],
        port: None,
    });
    // c has another PSK: its handshakes with a and b fail authentication, and those failures are logged too.
    let mut wrong = mesh.clone();
    wrong.psk = WRONG_PSK.into();
    let root = g.dir();
    let mut va = Vmsecd::start(&a, &root.join("a"), &mesh, "hA");
    let mut vb = Vmsecd::start(&b, &root.join("b"), &mesh, "hB");
    let mut vc = Vmsecd::start(&c, &root.join("c"), &wrong, "hC");
    let env = fs::read(format!("/proc/{}/environ", va.pid())).unwrap_or_default();
    assert!(
        env.split(|&x| x == 0).any(|e| e == b"RUST_LOG=trace"),
        "vmsecd was not started with RUST_LOG=trace"
    );
    va.wait_status("hA-hB up", Duration::from_secs(20), |s| is_up(s, "hB"));
    assert!(ping_until_ok(&avm, "198.19.2.10", Duration::from_secs(5)));
    va.wait_log("IKE SA rekeyed", Duration::from_secs(20));
    assert!(ping_until_ok(&avm, "198.19.2.10", Duration::from_secs(5)));
    for v in [&mut va, &mut vb, &mut vc] {
        v.terminate(Duration::from_secs(10));
    }
    let logs = [("a", va.log()), ("b", vb.log()), ("c", vc.log())];
    assert!(
        logs[0].1.contains("authentication") || logs[0].1.contains("AUTHENTICATION"),
        "a logged no authentication failure with c: {}",
        va.diagnostics()
    );
    let psk = vec![
        ("the PSK".to_owned(), PSK.as_bytes().to_vec()),
        ("c's PSK".to_owned(), WRONG_PSK.as_bytes().to_vec()),
    ];
    let mut bad = Vec::new();
    for (who, log) in &logs {
        for l in leaks(log, &psk) {
            bad.push(format!("{who}: {l}"));
        }
        for k in key_shaped(log) {
            bad.push(format!("{who}: {k}"));
        }
    }
    eprintln!(
        "[secrets] trace logs: a {} lines, b {} lines, c {} lines",
        logs[0].1.lines().count(),
        logs[1].1.lines().count(),
        logs[2].1.lines().count()
    );
    assert!(
        bad.is_empty(),
        "vmsecd's trace logs hold secrets or key-shaped data:\n{}\n(logs in {})",
        bad.join("\n"),
        root.display()
    );
}

/// The base64 body of a PEM file, decoded.
fn pem_der(pem: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.bytes())
        .filter(|c| *c != b'=')
        .collect();
    let mut out = Vec::new();
    for ch in clean.chunks(4) {
        let n = ch
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | (u32::from(val(*c)) << (18 - 6 * i)));
        for i in 0..ch.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

#[test]
fn vmsecd_pubkey_pair_at_trace_logs_no_private_key() {
    vmsecd_e2e::netns::require_root_and_ip();
    require_charon(); // for strongSwan's `pki`, which makes the keys
    trace();
    let mut g = NetnsGuard::new("secrets-pubkey");
    let (a, b, avm, _bvm) = g.hypervisor_pair();
    let root = g.dir();
    let (a_priv, a_pub) = pki_keygen(&root.join("ka"), "ha", 2048);
    let (b_priv, b_pub) = pki_keygen(&root.join("kb"), "hb", 2048);
    let mesh = |private: &Path| {
        format!(
            "[mesh]\nauth = \"pubkey\"\nprivate_key = {:?}\nencap = \"udp\"\n\n\
             [[host]]\nname = \"hA\"\naddress = \"198.18.0.1\"\npubkey = {:?}\nsubnets = [\"198.19.1.0/24\"]\n\n\
             [[host]]\nname = \"hB\"\naddress = \"198.18.0.2\"\npubkey = {:?}\nsubnets = [\"198.19.2.0/24\"]\n",
            private.display().to_string(),
            a_pub.display().to_string(),
            b_pub.display().to_string()
        )
    };
    let start = |ns: &vmsecd_e2e::netns::Netns, sub: &str, private: &Path, host: &str| {
        let d = root.join(sub);
        fs::create_dir_all(&d).unwrap();
        let f = d.join("mesh.toml");
        fs::write(&f, mesh(private)).unwrap();
        Vmsecd::start_with_file(ns, &d, &f, host)
    };
    let mut va = start(&a, "a", &a_priv, "hA");
    let mut vb = start(&b, "b", &b_priv, "hB");
    va.wait_status("hA-hB up", Duration::from_secs(30), |s| is_up(s, "hB"));
    assert!(ping_until_ok(&avm, "198.19.2.10", Duration::from_secs(5)));
    va.terminate(Duration::from_secs(10));
    vb.terminate(Duration::from_secs(10));
    let mut secrets = Vec::new();
    for (who, p) in [("a's private key", &a_priv), ("b's private key", &b_priv)] {
        let pem = fs::read_to_string(p).unwrap();
        let der = pem_der(&pem);
        assert!(der.len() > 1000, "{who}: {} DER bytes", der.len());
        // The whole DER, and 48-byte pieces of it past the modulus (which is public): the private exponent and
        // the primes.
        secrets.push((format!("{who} (DER)"), der.clone()));
        for (i, piece) in der[300..].chunks(48).enumerate() {
            secrets.push((
                format!("{who} (DER bytes from {})", 300 + 48 * i),
                piece.to_vec(),
            ));
        }
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            secrets.push((format!("{who} (PEM line)"), line.as_bytes().to_vec()));
        }
    }
    // The detector works on these: a log holding a piece of a's key is caught.
    let planted = format!("DEBUG x: d={}", hex(&secrets[3].1));
    assert!(!leaks(&planted, &secrets).is_empty());
    let mut bad = Vec::new();
    for (who, log) in [("a", va.log()), ("b", vb.log())] {
        for l in leaks(&log, &secrets) {
            bad.push(format!("{who}: {l}"));
        }
        for k in key_shaped(&log) {
            bad.push(format!("{who}: {k}"));
        }
    }
    eprintln!(
        "[secrets] pubkey: {} private-key pieces checked",
        secrets.len()
    );
    assert!(
        bad.is_empty(),
        "vmsecd's trace logs hold private-key or key-shaped data:\n{}\n(logs in {})",
        bad.join("\n"),
        root.display()
    );
}

/// The byte strings charon's `%B` dumps show after a label (`Sk_ei secret => 16 bytes @ 0x...` and then lines
/// `   0: 0C 4A ...`), for labels naming secrets.
fn charon_secrets(log: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let lines: Vec<&str> = log.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let Some(at) = l.find(" => ") else { continue };
        let rest = &l[at + 4..];
        let Some(n) = rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if !rest.contains("bytes @") || n == 0 {
            continue;
        }
        let label = l[..at]
            .rsplit(['>', ']'])
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        let lower = label.to_lowercase();
        if !["secret", "key", "skeyseed", "nonce", "sk_", "seed"]
            .iter()
            .any(|w| lower.contains(w))
        {
            continue;
        }
        let mut bytes = Vec::new();
        for d in &lines[i + 1..] {
            if bytes.len() >= n {
                break;
            }
            // "   0: 5D 9F 4B ...  ]..." after the log prefix.
            let Some(colon) = d
                .find(": ")
                .filter(|c| d[..*c].trim_end().ends_with(|x: char| x.is_ascii_digit()))
            else {
                break;
            };
            for w in d[colon + 2..].split_whitespace().take(16) {
                match u8::from_str_radix(w, 16) {
                    Ok(x) if w.len() == 2 => bytes.push(x),
                    _ => break,
                }
            }
        }
        bytes.truncate(n);
        if bytes.len() == n && n >= 8 {
            out.push((label, bytes));
        }
    }
    out
}

#[test]
fn vmsecd_at_trace_logs_none_of_the_keys_charon_derived() {
    vmsecd_e2e::netns::require_root_and_ip();
    require_charon();
    trace();
    let mut g = NetnsGuard::new("secrets-charon");
    let (a, b, avm, _bvm) = g.hypervisor_pair();
    let root = g.dir();
    // charon on b, logging its key material: the interop bed's configuration with the IKE and CHILD levels at 4.
    let cd = root.join("charon");
    fs::create_dir_all(cd.join("run")).unwrap();
    fs::create_dir_all(cd.join("swanctl")).unwrap();
    let conf =
        strongswan_conf(&cd, false).replace("      ike = 2\n", "      ike = 4\n      chd = 4\n");
    assert!(
        conf.contains("chd = 4"),
        "strongswan.conf changed shape:\n{conf}"
    );
    fs::write(cd.join("strongswan.conf"), conf).unwrap();
    let swanctl = cd.join("swanctl/swanctl.conf");
    fs::write(&swanctl, swanctl_conf(&[Conn::to_vmsecd(PSK)])).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&swanctl, fs::Permissions::from_mode(0o600)).unwrap();
    let out = fs::File::create(cd.join("charon.out")).unwrap();
    let mut cmd = b.command("env");
    cmd.arg(format!(
        "STRONGSWAN_CONF={}",
        cd.join("strongswan.conf").display()
    ))
    .args(["unshare", "-m", "--propagation", "private", "sh", "-c"])
    .arg(format!(
        "mount --bind {} /run && exec {CHARON}",
        cd.join("run").display()
    ))
    .stdout(Stdio::from(out.try_clone().unwrap()))
    .stderr(Stdio::from(out));
    let _charon: NsChild = b.spawn(&mut cmd);
    let swanctl_cmd = |args: &[&str]| {
        output_of(
            b.command("swanctl")
                .env("STRONGSWAN_CONF", cd.join("strongswan.conf"))
                .env("SWANCTL_DIR", cd.join("swanctl"))
                .args(args),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(cd.join("charon.vici").exists() && swanctl_cmd(&["--stats"]).status.success()) {
        assert!(
            Instant::now() < deadline,
            "charon did not start: {}",
            read(&cd.join("charon.out"))
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let loaded = swanctl_cmd(&["--load-all", "--noprompt"]);
    assert!(loaded.status.success(), "swanctl --load-all: {loaded:?}");

    let mut v = Vmsecd::start(&a, &root.join("a"), &Mesh::two_hosts(PSK), "hA");
    v.wait_status("hA-hB up", Duration::from_secs(20), |s| is_up(s, "hB"));
    assert!(
        ping_until_ok(&avm, "198.19.2.10", Duration::from_secs(5)),
        "no echo through the tunnel\n{}",
        v.diagnostics()
    );
    v.terminate(Duration::from_secs(10));
    let clog = read(&cd.join("charon.log"));
    let secrets = charon_secrets(&clog);
    let labels: Vec<&str> = secrets.iter().map(|(l, _)| l.as_str()).collect();
    eprintln!(
        "[secrets] charon logged {} secrets: {labels:?}",
        secrets.len()
    );
    for needed in ["Sk_ei", "Sk_d", "Diffie Hellman", "encryption"] {
        assert!(
            labels.iter().any(|l| l.contains(needed)),
            "charon's log has no {needed:?} dump to compare with (labels: {labels:?}); log in {}",
            cd.display()
        );
    }
    let mut all = secrets;
    all.push(("the PSK".into(), PSK.as_bytes().to_vec()));
    let log = v.log();
    let found = leaks(&log, &all);
    assert!(
        found.is_empty(),
        "vmsecd's trace log holds key material that charon derived too:\n{}\n(log in {})",
        found.join("\n"),
        root.display()
    );
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_else(|e| format!("({}: {e})", p.display()))
}

/// The detectors find what they look for, and pass what vmsecd really logs (so the tests above can fail).
#[test]
fn detectors_find_planted_secrets() {
    let key: Vec<u8> = (0u8..20)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let secrets = vec![("Sk_ei".to_owned(), key.clone())];
    let clean = "2026-12-03T18:45:49.586899Z  INFO vmsecd::daemon: IKE SA established peer=hB \
                 spi_i=\"1586f77610690395\" spi_r=\"7aa7bde3a24db795\" algorithms=AES_GCM_16_128/PRF_HMAC_SHA2_256/CURVE_25519\n\
                 2026-12-03T18:45:49.586946Z  INFO vmsecd::daemon: Child SA up peer=hB spi_in=\"3262550c\"\n";
    assert!(leaks(clean, &secrets).is_empty());
    assert!(key_shaped(clean).is_empty(), "{:?}", key_shaped(clean));
    for planted in [
        hex(&key),
        hex(&key).to_uppercase(),
        base64(&key),
        format!("{key:?}"),
        format!("{:02X?}", &key[..12]).replace(['[', ']', ','], ""),
    ] {
        let log = format!("{clean}DEBUG ike: derived key={planted}\n");
        assert!(!leaks(&log, &secrets).is_empty(), "missed {planted}");
    }
    for planted in [
        hex(&[7u8; 16]),
        format!("{:?}", [200u8; 16]),
        "nonce=q9XbT2vLk8Rz0PmN4sWd7YhC".to_owned(),
    ] {
        let log = format!("{clean}TRACE x: {planted}\n");
        assert!(!key_shaped(&log).is_empty(), "missed {planted}");
    }
    let psk = vec![("PSK".to_owned(), PSK.as_bytes().to_vec())];
    assert!(!leaks(&format!("psk={}", base64(PSK.as_bytes())), &psk).is_empty());
    let charon = "18:45:49 07[IKE] <1> Sk_ei secret => 20 bytes @ 0x7fbd94008840\n\
                  18:45:49 07[IKE] <1>    0: CF 02 06 AB FB 5E 64 19 94 33 E3 CD A4 AC 0C 90  .....^d..3......\n\
                  18:45:49 07[IKE] <1>   16: 75 69 20 48                                      ui H\n\
                  18:45:49 07[IKE] <1> natd_hash => 4 bytes @ 0x7fbd94008840\n";
    let parsed = charon_secrets(charon);
    assert_eq!(parsed.len(), 1, "{parsed:?}");
    assert_eq!(parsed[0].0, "Sk_ei secret");
    assert_eq!(
        hex(&parsed[0].1),
        "cf0206abfb5e64199433e3cda4ac0c9075692048"
    );
}
