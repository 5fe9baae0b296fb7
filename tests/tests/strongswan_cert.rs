//! Interop with strongSwan's charon 5.9 using X.509 certificates: vmsecd with `auth = "pubkey"` and a mesh
//! `ca`, charon with swanctl `auth = pubkey`, `certs`, and its CAs (root and intermediate) in `x509ca/`. The
//! CA and every certificate come from strongSwan's `pki` (a root CA, an intermediate CA, one end certificate per
//! side with its identity as subjectAltName), on the same two-hypervisor bed as the other interop tests.
//!
//! With 4096-bit keys each side's IKE_AUTH carries two certificates (its own and the intermediate) and is
//! fragmented (RFC 7383) by both sides. Then the refusals: a charon certificate from another CA, and an
//! expired one, each refused by vmsecd with a log line that names the reason.
//!
//! Needs root, iproute2, nftables, charon with kernel-libipsec and strongSwan's `pki`. `VT_KEEP_DIR=1` keeps
//! the logs, keys and certificates.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmsecd_e2e::bed::Bed;
use vmsecd_e2e::strongswan::{pki_ca, pki_issue, Charon, Conn, PkiCert};
use vmsecd_e2e::vmsecd::is_up;

const CHILD: &str = "net";
const PEER: &str = "hB";
const A_ID: &str = "ha.example.net";
const B_ID: &str = "hb.example.net";

/// A root CA and an intermediate CA under it.
struct Pki {
    root: PkiCert,
    inter: PkiCert,
}

fn make_pki(dir: &Path, bits: u32, root_dn: &str) -> Pki {
    let root = pki_ca(dir, "root", bits, root_dn);
    let inter = pki_issue(
        dir,
        &root,
        "inter",
        bits,
        &format!("{root_dn} Intermediate"),
        &[],
        &["--ca"],
    );
    Pki { root, inter }
}

/// vmsecd's key and certificate file (its certificate, then the intermediate), issued by `pki`'s intermediate.
fn vmsecd_cert(dir: &Path, pki: &Pki, bits: u32) -> (PathBuf, PathBuf) {
    let c = pki_issue(
        dir,
        &pki.inter,
        "ha",
        bits,
        "C=CH, O=vmsecd test, CN=ha.example.net",
        &[A_ID, "198.18.0.1"],
        &[],
    );
    let chain = dir.join("ha-chain.pem");
    let mut pem = std::fs::read(&c.cert).expect("ha.pem");
    pem.extend(std::fs::read(&pki.inter.cert).expect("inter.pem"));
    std::fs::write(&chain, pem).expect("chain");
    (c.key, chain)
}

/// charon's key and certificate (issued by `issuer`, with `extra` pki arguments), installed in its swanctl
/// folders together with `trusted`'s root and intermediate (both in x509ca).
fn charon_cert(cdir: &Path, issuer: &PkiCert, trusted: &Pki, bits: u32, extra: &[&str]) {
    let work = cdir.join("pki");
    let c = pki_issue(
        &work,
        issuer,
        "hb",
        bits,
        "C=CH, O=vmsecd test, CN=hb.example.net",
        &[B_ID, "198.18.0.2"],
        extra,
    );
    for (sub, from, name) in [
        ("x509", &c.cert, "hb.pem"),
        ("private", &c.key, "hb.pem"),
        ("x509ca", &trusted.root.cert, "root.pem"),
        // swanctl 5.9 has no x509im/: intermediates go with the CAs, and charon sends them as issuer certs.
        ("x509ca", &trusted.inter.cert, "inter.pem"),
    ] {
        let d = cdir.join("swanctl").join(sub);
        std::fs::create_dir_all(&d).expect("swanctl dir");
        std::fs::copy(from, d.join(name)).expect("install into swanctl");
    }
}

fn conn() -> Conn {
    let mut c = Conn::to_vmsecd("unused").with_cert("hb.pem");
    c.local_id = B_ID.into();
    c.remote_id = A_ID.into();
    c
}

fn mesh_text(private: &Path, chain: &Path, ca: &Path) -> String {
    format!(
        r#"[mesh]
auth = "pubkey"
private_key = {private:?}
ca = {ca:?}
encap = "udp"
dpd_delay = 0

[[host]]
name = "hA"
address = "198.18.0.1"
id = "{A_ID}"
cert = {chain:?}
subnets = ["198.19.1.0/24"]

[[host]]
name = "hB"
address = "198.18.0.2"
id = "{B_ID}"
subnets = ["198.19.2.0/24"]
"#,
        private = private.display().to_string(),
        chain = chain.display().to_string(),
        ca = ca.display().to_string(),
    )
}

/// One handshake with certificates of `bits` from a root and an intermediate CA.
fn handshake(name: &str, bits: u32, vmsecd_initiates: bool) -> String {
    let mut bed = Bed::new("swcert", name);
    let (vdir, cdir) = (bed.dir("vmsecd"), bed.dir("charon"));
    let pki = make_pki(&bed.dir("pki"), bits, "C=CH, O=vmsecd test, CN=Mesh CA");
    let (private, chain) = vmsecd_cert(&vdir, &pki, bits);
    charon_cert(&cdir, &pki.inter, &pki, bits, &[]);
    let charon = Charon::start(&bed.b, &cdir, &[conn()]);
    if !vmsecd_initiates {
        bed.block_vmsecd_initiation();
    }
    let mut v = bed.vmsecd_from_text(&mesh_text(&private, &chain, &pki.root.cert));
    bed.connect(&mut v, &charon, vmsecd_initiates, CHILD);
    let log = charon.log();
    assert!(
        log.contains(&format!(
            "authentication of '{A_ID}' with RSA_EMSA_PSS_SHA2_256_SALT_32 successful"
        )),
        "charon verified vmsecd's signature with its certificate's key\n{}",
        charon.diagnostics()
    );
    assert!(
        log.contains("reached self-signed root ca with a path length of 1"),
        "charon built vmsecd's chain through the intermediate vmsecd sent\n{}",
        charon.diagnostics()
    );
    log
}

/// 4096-bit keys: both IKE_AUTH messages hold two certificates and are fragmented by both sides.
#[test]
fn cert_4096_chain_fragmented_by_both_sides() {
    let log = handshake("frag", 4096, true);
    assert!(
        log.contains("reassembled fragmented IKE message"),
        "charon reassembled vmsecd's fragmented IKE_AUTH request"
    );
    assert!(
        log.contains("splitting IKE message"),
        "charon fragmented its IKE_AUTH response"
    );
}

#[test]
fn cert_2048_charon_initiates() {
    handshake("r2048", 2048, false);
}

/// charon presents a certificate vmsecd must refuse; charon initiates and gets AUTHENTICATION_FAILED, vmsecd
/// logs `why`.
fn refused(name: &str, why: &str, make: impl FnOnce(&Path, &Path, &Pki)) {
    let mut bed = Bed::new("swcert", name);
    let (vdir, cdir) = (bed.dir("vmsecd"), bed.dir("charon"));
    let pki = make_pki(&bed.dir("pki"), 2048, "C=CH, O=vmsecd test, CN=Mesh CA");
    let (private, chain) = vmsecd_cert(&vdir, &pki, 2048);
    make(&bed.dir("pki"), &cdir, &pki);
    let charon = Charon::start(&bed.b, &cdir, &[conn()]);
    bed.block_vmsecd_initiation();
    let mut v = bed.vmsecd_from_text(&mesh_text(&private, &chain, &pki.root.cert));
    v.wait_status("vmsecd listening", Duration::from_secs(10), |_| true);
    let out = charon.initiate(CHILD, 20);
    assert!(!out.status.success(), "charon's initiation must fail");
    charon.wait_log(
        "received AUTHENTICATION_FAILED notify error",
        Duration::from_secs(10),
    );
    v.wait_log(why, Duration::from_secs(5));
    assert!(!is_up(&v.status().expect("status"), PEER));
    assert!(charon.list_sas().iter().all(|s| s.state != "ESTABLISHED"));
}

#[test]
fn cert_from_another_ca_is_refused() {
    refused("otherca", "which is not a trusted CA", |dir, cdir, pki| {
        // charon's certificate comes from a CA vmsecd does not know; charon itself trusts both.
        let other = make_pki(&dir.join("other"), 2048, "C=CH, O=elsewhere, CN=Other CA");
        charon_cert(cdir, &other.inter, &other, 2048, &[]);
        let ca = cdir.join("swanctl/x509ca");
        std::fs::copy(&pki.root.cert, ca.join("mesh-root.pem")).expect("copy");
    });
}

#[test]
fn expired_cert_is_refused() {
    refused("expired", "not now", |_, cdir, pki| {
        charon_cert(
            cdir,
            &pki.inter,
            pki,
            2048,
            &[
                "--not-before",
                "01.01.20 00:00:00",
                "--not-after",
                "01.01.21 00:00:00",
            ],
        );
    });
}
