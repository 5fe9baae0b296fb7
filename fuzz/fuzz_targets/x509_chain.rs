//! X.509 certificate chains as a peer sends them in CERT payloads (IKE_AUTH with `auth = "cert"`), and as the
//! mesh's CA and certificate files hold them: DER parsing, the accessors the daemon calls, identity checks and
//! path validation against trust anchors.
//!
//! Input: a control byte (bits 0-3: which certificates are trust anchors; bits 4-5: which is the end entity;
//! bit 6: fuzzer-chosen time instead of 2027-01-15; bit 7: the rest is a PEM/DER file for
//! `parse_certificates` instead), 4 bytes of time, then up to 4 certificates, each `len(2) DER`.
//!
//! Checks:
//! * nothing panics; `Certificate::from_der` stays within the parse allocation budget;
//! * a parsed certificate's `der()` parses again to the same subject, issuer, names and expiry;
//! * `TrustAnchors::verify` is deterministic, and a path it accepts starts at the end entity's subject, ends at
//!   an anchor's subject, and is at most `MAX_CHAIN + 1` long.
#![no_main]

use ike::crypto::x509::{dn_to_string, format_time, parse_certificates, Certificate, TrustAnchors};
use ike::message::{Id, IdType};
use libfuzzer_sys::fuzz_target;
use vmsecd_fuzz::{alloc, Bytes};

fn exercise(c: &Certificate) {
    let _ = dn_to_string(c.subject_der());
    let _ = format_time(c.not_after());
    let _ = c.public_key();
    let _ = c.key_id();
    for id in [
        Id {
            id_type: IdType::IPV4_ADDR,
            data: vec![198, 18, 0, 2],
        },
        Id {
            id_type: IdType::FQDN,
            data: b"b0.example".to_vec(),
        },
        Id {
            id_type: IdType::RFC822_ADDR,
            data: b"vmsecd@b0.example".to_vec(),
        },
        Id {
            id_type: IdType::DER_ASN1_DN,
            data: c.subject_der().to_vec(),
        },
        Id {
            id_type: IdType::IPV6_ADDR,
            data: vec![0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
        },
    ] {
        let _ = c.check_identity(&id);
    }
    let again = Certificate::from_der(c.der()).expect("a certificate's own DER parses");
    assert_eq!(
        (
            again.subject(),
            again.issuer(),
            again.alt_names(),
            again.not_after()
        ),
        (c.subject(), c.issuer(), c.alt_names(), c.not_after()),
        "re-parse of der() differs"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes::new(data);
    let ctl = b.u8();
    let t = u32::from_be_bytes([b.u8(), b.u8(), b.u8(), b.u8()]);
    let unix: i64 = if ctl & 0x40 != 0 {
        i64::from(t) * 4
    } else {
        1_800_000_000
    };
    let certs: Vec<Certificate> = if ctl & 0x80 != 0 {
        let rest = b.take(usize::MAX);
        match alloc::check_parse("parse_certificates", rest.len(), || {
            parse_certificates(rest)
        }) {
            Ok(c) => c,
            Err(_) => return,
        }
    } else {
        let mut v = Vec::new();
        for _ in 0..4 {
            if b.is_empty() {
                break;
            }
            let len = usize::from(b.u16());
            let der = b.take(len);
            if let Ok(c) = alloc::check_parse("Certificate::from_der", der.len(), || {
                Certificate::from_der(der)
            }) {
                v.push(c);
            }
        }
        v
    };
    if certs.is_empty() {
        return;
    }
    for c in &certs {
        exercise(c);
    }
    let anchors: Vec<Certificate> = certs
        .iter()
        .enumerate()
        .filter(|(i, _)| ctl & (1 << (i % 4)) != 0)
        .map(|(_, c)| c.clone())
        .collect();
    let end = &certs[usize::from(ctl >> 4 & 3) % certs.len()];
    let Ok(ta) = TrustAnchors::new(anchors) else {
        return;
    };
    let _ = ta.certreq_data();
    let _ = ta.names();
    let r1 = ta.verify(end, &certs, unix);
    let r2 = ta.verify(end, &certs, unix);
    assert_eq!(
        format!("{r1:?}"),
        format!("{r2:?}"),
        "verify is not deterministic"
    );
    if let Ok(path) = r1 {
        assert!(
            path.len() >= 2 && path.len() <= ike::crypto::x509::MAX_CHAIN + 1,
            "path {path:?}"
        );
        assert_eq!(path[0], end.subject());
        let last = path.last().unwrap();
        assert!(
            ta.certificates().iter().any(|a| &a.subject() == last),
            "path {path:?} does not end at an anchor"
        );
    }
});
