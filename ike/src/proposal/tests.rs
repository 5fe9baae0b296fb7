//! Proposal parsing, selection and description, against strongSwan's syntax and behaviour.

use super::*;

#[test]
fn strongswan_syntax() {
    let p = ProposalSpec::ike("aes128gcm16-prfsha256-x25519").unwrap();
    assert_eq!(p.transforms.len(), 3);
    assert_eq!(p.first_dh(), Some(DH_CURVE25519));
    let p = ProposalSpec::ike("aes256-sha256-modp2048").unwrap();
    assert!(
        p.transforms
            .contains(&t(TransformType::PRF, PRF_HMAC_SHA2_256, None)),
        "PRF derived from sha256"
    );
    let p = ProposalSpec::esp("aes256-sha256").unwrap();
    assert!(p.transforms.contains(&t(TransformType::ESN, ESN_NO, None)));
    assert!(
        ProposalSpec::esp("aes128gcm16-esn-noesn")
            .unwrap()
            .transforms
            .len()
            == 3
    );
    for bad in [
        "aes128gcm16-x25519",
        "aes128-prfsha256-x25519",
        "aes128gcm16-sha256-prfsha256-x25519",
        "aes128-sha256",
        "blowfish-sha1-modp1024",
        "",
    ] {
        assert!(ProposalSpec::ike(bad).is_err(), "{bad}");
    }
    let e = ProposalSpec::esp("aes128gcm16-des")
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"des\"") && e.contains("known:"), "{e}");
}

#[test]
fn received_proposals_read_as_strongswan_writes_them() {
    for text in [
        "aes128gcm16-prfsha256-x25519",
        "aes256gcm16-prfsha384-ecp384",
        "chacha20poly1305-prfsha256-x25519",
        "aes256-sha256-prfsha256-modp2048",
    ] {
        let p = ProposalSpec::ike(text).unwrap().to_wire(1, vec![]);
        assert_eq!(describe_wire(&p), text);
    }
    for (text, shown) in [
        ("aes128gcm16", "aes128gcm16"),
        ("aes256-sha256-esn", "aes256-sha256-esn"),
        ("aes128gcm16-esn-noesn", "aes128gcm16-esn-noesn"),
    ] {
        let p = ProposalSpec::esp(text).unwrap().to_wire(1, vec![0; 4]);
        assert_eq!(describe_wire(&p), shown);
    }
    let odd = Proposal {
        num: 1,
        protocol: ProtocolId::IKE,
        spi: vec![],
        transforms: vec![
            t(TransformType::ENCR, 3, None),
            t(TransformType::ENCR, ENCR_AES_GCM_16, Some(192)),
            t(TransformType::INTEG, 0, None),
            t(TransformType::DH, 2, None),
        ],
    };
    assert_eq!(describe_wire(&odd), "encr3-aes192gcm16-dh2");
}

#[test]
fn responder_prefers_its_own_order() {
    let ours = [
        ProposalSpec::ike("aes256gcm16-prfsha384-ecp384").unwrap(),
        ProposalSpec::ike("aes128gcm16-prfsha256-x25519").unwrap(),
    ];
    let theirs = [
        ProposalSpec::ike("aes128gcm16-prfsha256-x25519")
            .unwrap()
            .to_wire(1, vec![]),
        ProposalSpec::ike("aes256gcm16-prfsha384-ecp384")
            .unwrap()
            .to_wire(2, vec![]),
    ];
    let c = select(&ours, &theirs).unwrap();
    assert_eq!((c.num, c.dh), (2, Some(DH_ECP_384)));
    assert_eq!(c.describe(), "AES_GCM_16_256/PRF_HMAC_SHA2_384/ECP_384");
    let wire = c.to_wire(ProtocolId::IKE, vec![]);
    assert_eq!(check_response(&theirs, &[wire]), Ok(c));
    assert!(
        select(&ours[..1], &theirs[..1]).is_none(),
        "no common proposal"
    );
}

#[test]
fn multi_algorithm_proposals_and_esp_dh() {
    let ours = [ProposalSpec::esp("aes128gcm16").unwrap()];
    let theirs = [ProposalSpec::esp("aes256gcm16-aes128gcm16-esn-noesn")
        .unwrap()
        .to_wire(1, vec![1, 2, 3, 4])];
    let c = select(&ours, &theirs).unwrap();
    assert_eq!(
        (c.encr.key_len, c.esn, c.spi.clone()),
        (Some(128), false, vec![1, 2, 3, 4])
    );
    // They want PFS and we do not: no match; they allow NONE: match without DH.
    let pfs = [ProposalSpec::esp("aes128gcm16-x25519")
        .unwrap()
        .to_wire(1, vec![0; 4])];
    assert!(select(&ours, &pfs).is_none());
    let mut optional = pfs[0].clone();
    optional.transforms.push(t(TransformType::DH, 0, None));
    assert_eq!(select(&ours, &[optional]).unwrap().dh, None);
}

#[test]
fn response_must_be_from_the_offer() {
    let offered = [ProposalSpec::ike("aes128gcm16-prfsha256-x25519")
        .unwrap()
        .to_wire(1, vec![])];
    let mut forged = offered[0].clone();
    forged.transforms[0].key_len = Some(256);
    assert!(matches!(
        check_response(&offered, &[forged]),
        Err(Mismatch::NotOffered { .. })
    ));
    let mut two = offered[0].clone();
    two.transforms.push(t(TransformType::DH, DH_ECP_256, None));
    assert!(check_response(&offered, &[two]).is_err());
    assert_eq!(
        check_response(&offered, &[offered[0].clone()]),
        Ok(Chosen {
            num: 1,
            spi: vec![],
            encr: t(TransformType::ENCR, ENCR_AES_GCM_16, Some(128)),
            prf: Some(t(TransformType::PRF, PRF_HMAC_SHA2_256, None)),
            integ: None,
            dh: Some(DH_CURVE25519),
            esn: false,
        })
    );
}

/// Every way an answer can differ from the offer, type by type.
#[test]
fn response_checked_type_by_type() {
    let esp = ProposalSpec::esp("aes128-sha256")
        .unwrap()
        .to_wire(1, vec![1, 2, 3, 4]);
    let offered = [esp.clone()];
    let ok = check_response(&offered, std::slice::from_ref(&esp)).unwrap();
    assert_eq!(ok.integ.map(|i| i.id), Some(AUTH_HMAC_SHA2_256_128));
    let without = |ty: TransformType| {
        let mut p = esp.clone();
        p.transforms.retain(|x| x.ttype != ty);
        p
    };
    assert_eq!(
        check_response(&offered, &[without(TransformType::INTEG)]),
        Err(Mismatch::MissingType("integrity"))
    );
    let mut none = without(TransformType::INTEG);
    none.transforms.push(t(TransformType::INTEG, 0, None));
    assert!(matches!(
        check_response(&offered, &[none]),
        Err(Mismatch::NotOffered { id: 0, .. })
    ));
    assert_eq!(
        check_response(&offered, &[without(TransformType::ESN)]),
        Err(Mismatch::MissingType("ESN"))
    );
    let mut extra = esp.clone();
    extra
        .transforms
        .push(t(TransformType::DH, DH_CURVE25519, None));
    assert!(matches!(
        check_response(&offered, &[extra]),
        Err(Mismatch::ExtraType { .. })
    ));
    let mut dup = esp.clone();
    dup.transforms.push(dup.transforms[0]);
    assert!(matches!(
        check_response(&offered, &[dup]),
        Err(Mismatch::SeveralOfType { count: 2, .. })
    ));
    let mut num = esp.clone();
    num.num = 2;
    assert_eq!(
        check_response(&offered, &[num]),
        Err(Mismatch::UnknownNumber(2))
    );
    let mut proto = esp.clone();
    proto.protocol = ProtocolId::IKE;
    assert!(matches!(
        check_response(&offered, &[proto]),
        Err(Mismatch::WrongProtocol { .. })
    ));
    let mut spi = esp.clone();
    spi.spi = vec![1; 8];
    assert_eq!(
        check_response(&offered, &[spi]),
        Err(Mismatch::SpiSize { got: 8, want: 4 })
    );
    assert_eq!(
        check_response(&offered, &[esp.clone(), esp]),
        Err(Mismatch::ProposalCount(2))
    );
}
