//! Certificates made by testdata/make.sh with OpenSSL: a CA, an intermediate (pathlen 0), end certificates
//! signed with PKCS#1 v1.5 and with PSS, and one certificate for each way a chain must fail.

use super::*;

fn load(name: &str) -> Certificate {
    let path = format!(
        "{}/src/crypto/x509/testdata/{name}.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    parse_certificates(&bytes).unwrap().remove(0)
}

fn anchors() -> TrustAnchors {
    TrustAnchors::new(vec![load("ca")]).unwrap()
}

/// A moment all test certificates are valid at.
fn valid_time() -> i64 {
    load("a").not_before + 86400
}

fn id(id_type: IdType, data: Vec<u8>) -> Id {
    Id { id_type, data }
}

fn ip_id(ip: &str) -> Id {
    let ip: IpAddr = ip.parse().unwrap();
    match ip {
        IpAddr::V4(v) => id(IdType::IPV4_ADDR, v.octets().to_vec()),
        IpAddr::V6(v) => id(IdType::IPV6_ADDR, v.octets().to_vec()),
    }
}

#[test]
fn parses_names_and_extensions() {
    let a = load("a");
    assert_eq!(a.subject(), "C=CH, O=vmsecd test, CN=a.example.net");
    assert_eq!(a.issuer(), "C=CH, O=vmsecd test, CN=Test Intermediate");
    assert_eq!(
        a.alt_names(),
        &[
            AltName::Ip("198.18.0.1".parse().unwrap()),
            AltName::Dns("a.example.net".into()),
            AltName::Email("admin@a.example.net".into()),
        ]
    );
    assert_eq!(a.key_usage, Some(KU_DIGITAL_SIGNATURE));
    assert_eq!(a.ca, None);
    assert_eq!(load("inter").ca, Some(Some(0)));
    assert_eq!(load("ca").ca, Some(None));
    assert!(a.not_after - a.not_before > 99 * 365 * 86400);
    assert_eq!(a.public_key().unwrap().bits(), 2048);
    assert_eq!(
        load("critical").unknown_critical.as_deref(),
        Some("1.2.3.4")
    );
}

#[test]
fn chain_through_an_intermediate_verifies() {
    let path = anchors()
        .verify(&load("a"), &[load("inter")], valid_time())
        .unwrap();
    assert_eq!(path.len(), 3, "{path:?}");
    assert_eq!(path[2], "C=CH, O=vmsecd test, CN=Test CA");
}

#[test]
fn pss_signed_certificate_verifies() {
    assert!(load("b")
        .scheme
        .is_some_and(|s| s.padding == super::super::signature::Padding::Pss));
    anchors().verify(&load("b"), &[], valid_time()).unwrap();
}

#[test]
fn missing_intermediate_names_the_issuer() {
    let e = anchors().verify(&load("a"), &[], valid_time()).unwrap_err();
    assert!(matches!(e, CertError::UnknownIssuer { .. }), "{e}");
    assert!(e.to_string().contains("Test Intermediate"), "{e}");
}

#[test]
fn other_ca_is_refused() {
    let e = anchors()
        .verify(&load("stranger"), &[], valid_time())
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("issued by C=CH, O=vmsecd test, CN=Other CA, which is not a trusted CA"),
        "{e}"
    );
}

#[test]
fn expired_and_not_yet_valid_are_refused() {
    let b = load("b");
    for t in [b.not_after + 1, b.not_before - 1] {
        let e = anchors().verify(&b, &[], t).unwrap_err();
        assert!(matches!(e, CertError::Expired { .. }), "{e}");
        assert!(e.to_string().contains("not now"), "{e}");
    }
}

#[test]
fn critical_unknown_extension_is_refused() {
    let e = anchors()
        .verify(&load("critical"), &[], valid_time())
        .unwrap_err();
    assert!(matches!(e, CertError::UnknownCritical { .. }), "{e}");
}

#[test]
fn key_usage_without_signature_is_refused() {
    let e = anchors()
        .verify(&load("encipher"), &[], valid_time())
        .unwrap_err();
    assert!(matches!(e, CertError::KeyUsage { .. }), "{e}");
}

#[test]
fn end_certificate_cannot_issue() {
    let e = anchors()
        .verify(&load("by-leaf"), &[load("a"), load("inter")], valid_time())
        .unwrap_err();
    assert!(matches!(e, CertError::NotACa { .. }), "{e}");
}

#[test]
fn path_length_is_enforced() {
    let e = anchors()
        .verify(
            &load("deep"),
            &[load("inter2"), load("inter")],
            valid_time(),
        )
        .unwrap_err();
    assert!(e.to_string().contains("pathLenConstraint"), "{e}");
}

#[test]
fn tampered_signature_is_refused() {
    let mut b = load("b");
    let last = b.signature.len() - 1;
    b.signature[last] ^= 1;
    let e = anchors().verify(&b, &[], valid_time()).unwrap_err();
    assert!(matches!(e, CertError::BadSignature { .. }), "{e}");
}

#[test]
fn identities_bind_to_alt_names_or_subject() {
    let a = load("a");
    a.check_identity(&ip_id("198.18.0.1")).unwrap();
    a.check_identity(&id(IdType::FQDN, b"A.Example.NET".to_vec()))
        .unwrap();
    a.check_identity(&id(IdType::RFC822_ADDR, b"admin@a.example.net".to_vec()))
        .unwrap();
    a.check_identity(&id(IdType::DER_ASN1_DN, a.subject_der().to_vec()))
        .unwrap();
    let e = a.check_identity(&ip_id("198.18.0.2")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "identity 198.18.0.2 is not in the certificate of C=CH, O=vmsecd test, CN=a.example.net \
         (subjectAltName: 198.18.0.1, a.example.net, admin@a.example.net)"
    );
    assert!(a
        .check_identity(&id(IdType::FQDN, b"b.example.net".to_vec()))
        .is_err());
}

#[test]
fn dn_match_ignores_string_types() {
    // The same DN with PrintableString (strongSwan) and UTF8String (OpenSSL) values.
    let name = |tag: u8| {
        let atv = [&[0x06, 0x03, 0x55, 0x04, 0x03, tag, 0x02][..], b"gw"].concat();
        let seq = der::write(der::SEQUENCE, &atv);
        der::write(der::SEQUENCE, &der::write(0x31, &seq))
    };
    assert!(same_dn(&name(0x13), &name(0x0c)));
    assert_eq!(dn_to_string(&name(0x13)), "CN=gw");
}

#[test]
fn certreq_holds_the_ca_key_hash() {
    let data = anchors().certreq_data();
    assert_eq!(data.len(), 20);
    assert_eq!(
        Some(<[u8; 20]>::try_from(&data[..]).unwrap()),
        load("ca").key_id()
    );
}

#[test]
fn times_round_trip() {
    assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
    assert_eq!(format_time(1_796_279_679), "2026-12-03 06:34:39 UTC");
    assert_eq!(days_from_civil(2026, 12, 3) * 86400, 1_796_256_000);
    assert_eq!(
        time(&[&[0x17, 13][..], b"491231235959Z"].concat()).map(|t| t.0),
        Some(days_from_civil(2049, 12, 31) * 86400 + 86399)
    );
    assert_eq!(
        time(&[&[0x17, 13][..], b"500101000000Z"].concat()).map(|t| t.0),
        Some(days_from_civil(1950, 1, 1) * 86400)
    );
    assert!(time(&[&[0x17, 13][..], b"501301000000Z"].concat()).is_none());
    // Found by the ike_wire fuzz target: a byte below '0' where a digit belongs.
    assert!(time(&[&[0x17, 13][..], b"5012-1000000Z"].concat()).is_none());
}

#[test]
fn garbage_never_panics() {
    let good = load("a").der().to_vec();
    for cut in 0..good.len() {
        let _ = Certificate::from_der(&good[..cut]);
    }
    for i in (0..good.len()).step_by(7) {
        let mut bad = good.clone();
        bad[i] ^= 0xa5;
        let _ = Certificate::from_der(&bad);
    }
}

/// A peer whose certificate comes from a CA we do not trust, and which sends that (self-signed) CA along as an
/// intermediate, as some implementations do: the chain reaches the self-signed CA, which is not ours, and must
/// end in a refusal that names it, never a panic.
#[test]
fn untrusted_root_sent_along_is_refused() {
    let e = anchors()
        .verify(&load("stranger"), &[load("other-ca")], valid_time())
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("C=CH, O=vmsecd test, CN=Other CA is issued by C=CH, O=vmsecd test, CN=Other CA, which is not a trusted CA"),
        "{e}"
    );
}
