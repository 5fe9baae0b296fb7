//! Interop with strongSwan's charon 5.9 using raw RSA public keys (RFC 7427 Digital Signature AUTH): vmsecd with
//! `auth = "pubkey"`, charon with swanctl `auth = pubkey` and `pubkeys`, the same two-hypervisor bed as
//! strongswan_interop.rs (`NetnsGuard::hypervisor_pair`; charon's userspace ESP in UDP 4500).
//!
//! Keys come from strongSwan's `pki --gen --type rsa` (PKCS#1 PEM, which vmsecd must read) and from
//! `vmsecd keygen` (PKCS#8 PEM, which charon must read as a public key): 2048 and 4096 bits, both roles, PSS
//! (vmsecd's default) one way and PKCS#1 v1.5 (charon's default) the other. Then a wrong key on each side:
//! AUTHENTICATION_FAILED, no SA, and a log line that names the reason.
//!
//! Needs root, iproute2, nftables, charon with kernel-libipsec and strongSwan's `pki`. `VT_KEEP_DIR=1` keeps
//! the logs and keys.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmsecd_e2e::bed::Bed;
use vmsecd_e2e::strongswan::{pki_keygen, Charon, Conn};
use vmsecd_e2e::vmsecd::{is_up, vmsecd_bin};

const CHILD: &str = "net";
const PEER: &str = "hB";
/// Identities: vmsecd's is an FQDN, charon's an RFC 822 address (both as strongSwan writes them).
const A_ID: &str = "ha.example.net";
const B_ID: &str = "gw@hb.example.net";

/// How vmsecd's key pair is made.
#[derive(Clone, Copy)]
enum KeySource {
    /// strongSwan's `pki --gen` (PKCS#1).
    Pki,
    /// `vmsecd keygen` (PKCS#8).
    Keygen,
}

/// vmsecd's private key (in `vdir`) and its public key, also copied into charon's swanctl/pubkey/ as `ha.pub.pem`.
fn vmsecd_keys(vdir: &Path, cdir: &Path, source: KeySource, bits: u32) -> (PathBuf, PathBuf) {
    let (private, public) = match source {
        KeySource::Pki => pki_keygen(vdir, "ha", bits),
        KeySource::Keygen => {
            let out = std::process::Command::new(vmsecd_bin())
                .args([
                    "keygen",
                    "--name",
                    "ha",
                    "--bits",
                    &bits.to_string(),
                    "--out",
                ])
                .arg(vdir.join("keys"))
                .output()
                .expect("vmsecd keygen");
            assert!(
                out.status.success(),
                "vmsecd keygen: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("pubkey = \"keys/ha.pub.pem\""), "{stdout}");
            (vdir.join("keys/private.pem"), vdir.join("keys/ha.pub.pem"))
        }
    };
    std::fs::create_dir_all(cdir.join("swanctl/pubkey")).expect("pubkey dir");
    std::fs::copy(&public, cdir.join("swanctl/pubkey/ha.pub.pem")).expect("copy public key");
    (private, public)
}

/// vmsecd's mesh file: pubkey authentication, identities, the public keys by path.
fn mesh_text(private: &Path, a_pub: &Path, b_pub: &Path) -> String {
    mesh_text_ids(private, a_pub, b_pub, A_ID, B_ID)
}

/// [`mesh_text`] with other identities.
fn mesh_text_ids(private: &Path, a_pub: &Path, b_pub: &Path, a_id: &str, b_id: &str) -> String {
    format!(
        r#"[mesh]
auth = "pubkey"
private_key = {private:?}
encap = "udp"
dpd_delay = 0

[[host]]
name = "hA"
address = "198.18.0.1"
id = "{a_id}"
pubkey = {a_pub:?}
subnets = ["198.19.1.0/24"]

[[host]]
name = "hB"
address = "198.18.0.2"
id = "{b_id}"
pubkey = {b_pub:?}
subnets = ["198.19.2.0/24"]
"#,
        private = private.display().to_string(),
        a_pub = a_pub.display().to_string(),
        b_pub = b_pub.display().to_string(),
    )
}

fn conn() -> Conn {
    conn_ids(A_ID, B_ID)
}

/// charon's connection with other identities (swanctl quotes a DN).
fn conn_ids(a_id: &str, b_id: &str) -> Conn {
    let mut c = Conn::to_vmsecd("unused").with_pubkeys("hb.pub.pem", "ha.pub.pem");
    c.local_id = format!("\"{b_id}\"");
    c.remote_id = format!("\"{a_id}\"");
    c
}

/// One handshake: keys of `bits`, vmsecd's from `source`, `vmsecd_initiates` or charon does.
fn case(name: &str, bits: u32, source: KeySource, vmsecd_initiates: bool) {
    case_ids(name, bits, source, vmsecd_initiates, A_ID, B_ID)
}

/// [`case`] with other identities.
fn case_ids(
    name: &str,
    bits: u32,
    source: KeySource,
    vmsecd_initiates: bool,
    a_id: &str,
    b_id: &str,
) {
    let mut bed = Bed::new("swpk", name);
    let (vdir, cdir) = (bed.dir("vmsecd"), bed.dir("charon"));
    let (private, a_pub) = vmsecd_keys(&vdir, &cdir, source, bits);
    let (_, b_pub) = pki_keygen(&cdir, "hb", bits);
    let charon = Charon::start(&bed.b, &cdir, &[conn_ids(a_id, b_id)]);
    if !vmsecd_initiates {
        bed.block_vmsecd_initiation();
    }
    let mut v = bed.vmsecd_from_text(&mesh_text_ids(&private, &a_pub, &b_pub, a_id, b_id));
    bed.connect(&mut v, &charon, vmsecd_initiates, CHILD);
    let log = charon.log();
    // charon verified vmsecd's RFC 7427 signature (vmsecd signs RSASSA-PSS) and signed its own with method 14.
    assert!(
        log.contains(&format!(
            "authentication of '{a_id}' with RSA_EMSA_PSS_SHA2_256_SALT_32 successful"
        )),
        "charon did not log vmsecd's PSS signature as verified\n{}",
        charon.diagnostics()
    );
    // charon signs RSASSA-PKCS1-v1_5 by default, with SHA2-256 for 2048/3072-bit keys and SHA2-384 for 4096-bit
    // ones: vmsecd verified it (the Child SA is up).
    let mine = format!("authentication of '{b_id}' (myself) with RSA_EMSA_PKCS1_SHA2_");
    let line = log.lines().find(|l| l.contains(&mine));
    assert!(
        line.is_some(),
        "charon's own signature scheme\n{}",
        charon.diagnostics()
    );
    eprintln!("[{name}] charon: {}", line.unwrap_or_default());
    let vlog = v.log();
    assert!(
        vlog.contains("IKE SA established") && vlog.contains("Child SA up"),
        "{}",
        v.diagnostics()
    );
}

#[test]
fn pubkey_2048_vmsecd_initiates_pki_keys() {
    case("i2048", 2048, KeySource::Pki, true);
}

#[test]
fn pubkey_4096_charon_initiates_keygen_keys() {
    case("r4096", 4096, KeySource::Keygen, false);
}

#[test]
fn pubkey_3072_charon_initiates_pki_keys() {
    case("r3072", 3072, KeySource::Pki, false);
}

/// Distinguished Name identities (ID_DER_ASN1_DN) on both sides, both roles: vmsecd's DER of the DN must be
/// byte for byte what charon sends and accepts.
#[test]
fn pubkey_dn_identities_both_roles() {
    let (a, b) = (
        "C=CH, O=vmsecd test, CN=ha.example.net",
        "C=CH, O=vmsecd test, OU=gw_1, CN=hb.example.net, E=gw@hb.example.net",
    );
    case_ids("dn-i", 2048, KeySource::Keygen, true, a, b);
    case_ids("dn-r", 2048, KeySource::Pki, false, a, b);
}

/// charon holds a wrong public key for vmsecd: it refuses vmsecd's AUTH with AUTHENTICATION_FAILED. Then the
/// other way round: vmsecd holds a wrong key for charon and refuses charon's AUTH. No SA on either side.
#[test]
fn pubkey_wrong_key_is_refused_on_both_sides() {
    // 1. vmsecd initiates; charon (responder) has another key as "ha.pub.pem".
    let mut bed = Bed::new("swpk", "wrong");
    let (vdir, cdir) = (bed.dir("vmsecd"), bed.dir("charon"));
    let (private, a_pub) = vmsecd_keys(&vdir, &cdir, KeySource::Pki, 2048);
    let (_, b_pub) = pki_keygen(&cdir, "hb", 2048);
    let (_, other) = pki_keygen(&bed.dir("other"), "other", 2048);
    std::fs::copy(&other, cdir.join("swanctl/pubkey/ha.pub.pem")).expect("swap key");
    let charon = Charon::start(&bed.b, &cdir, &[conn()]);
    let mut v = bed.vmsecd_from_text(&mesh_text(&private, &a_pub, &b_pub));
    v.wait_log("AUTHENTICATION_FAILED", Duration::from_secs(20));
    assert!(
        v.log().contains("check the keys"),
        "vmsecd names the reason\n{}",
        v.diagnostics()
    );
    charon.wait_log(
        "signature validation failed, looking for another key",
        Duration::from_secs(5),
    );
    let st = v.status().expect("status");
    assert!(!is_up(&st, PEER), "no SA in vmsecd: {st:#?}");
    assert!(
        charon.list_sas().iter().all(|s| s.state != "ESTABLISHED"),
        "no SA in charon"
    );
    v.terminate(Duration::from_secs(5));
    drop(v);
    drop(charon);
    drop(bed);

    // 2. charon initiates; vmsecd (responder) has another key for hB.
    let mut bed = Bed::new("swpk", "wrong2");
    let (vdir, cdir) = (bed.dir("vmsecd"), bed.dir("charon"));
    let (private, a_pub) = vmsecd_keys(&vdir, &cdir, KeySource::Keygen, 2048);
    pki_keygen(&cdir, "hb", 2048);
    let (_, other) = pki_keygen(&bed.dir("other"), "other", 2048);
    let charon = Charon::start(&bed.b, &cdir, &[conn()]);
    bed.block_vmsecd_initiation();
    let mut v = bed.vmsecd_from_text(&mesh_text(&private, &a_pub, &other));
    v.wait_status("vmsecd listening", Duration::from_secs(10), |_| true);
    let out = charon.initiate(CHILD, 20);
    assert!(!out.status.success(), "charon's initiation must fail");
    charon.wait_log(
        "received AUTHENTICATION_FAILED notify error",
        Duration::from_secs(10),
    );
    v.wait_log(
        "does not verify with the peer's public key",
        Duration::from_secs(5),
    );
    let st = v.status().expect("status");
    assert!(!is_up(&st, PEER), "no SA in vmsecd: {st:#?}");
    assert!(charon.list_sas().iter().all(|s| s.state != "ESTABLISHED"));
}

/// charon is configured for PSK, vmsecd for public keys: vmsecd refuses charon's PSK AUTH with
/// AUTHENTICATION_FAILED and a log line naming the method mismatch.
#[test]
fn psk_charon_against_pubkey_vmsecd_names_the_mismatch() {
    let mut bed = Bed::new("swpk", "mixed");
    let (vdir, cdir) = (bed.dir("vmsecd"), bed.dir("charon"));
    let (private, a_pub) = vmsecd_keys(&vdir, &cdir, KeySource::Keygen, 2048);
    let (_, b_pub) = pki_keygen(&cdir, "hb", 2048);
    let mut c = Conn::to_vmsecd("a-psk-of-sufficient-length-0123456789");
    c.local_id = B_ID.into();
    c.remote_id = A_ID.into();
    let charon = Charon::start(&bed.b, &cdir, &[c]);
    bed.block_vmsecd_initiation();
    let mut v = bed.vmsecd_from_text(&mesh_text(&private, &a_pub, &b_pub));
    v.wait_status("vmsecd listening", Duration::from_secs(10), |_| true);
    let out = charon.initiate(CHILD, 20);
    assert!(!out.status.success(), "charon's initiation must fail");
    charon.wait_log(
        "received AUTHENTICATION_FAILED notify error",
        Duration::from_secs(10),
    );
    v.wait_log(
        "authentication method mismatch: the peer authenticates with a pre-shared key (AUTH method 2), we are \
         configured for public key",
        Duration::from_secs(5),
    );
    assert!(!is_up(&v.status().expect("status"), PEER));
}
