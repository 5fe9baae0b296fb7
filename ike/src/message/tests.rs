use proptest::prelude::*;

use super::*;
use crate::notify;

fn sample_payloads() -> Vec<Payload> {
    vec![
        Payload::Sa(vec![
            Proposal {
                num: 1,
                protocol: ProtocolId::IKE,
                spi: vec![],
                transforms: vec![
                    SaTransform {
                        ttype: TransformType::ENCR,
                        id: 20,
                        key_len: Some(128),
                    },
                    SaTransform {
                        ttype: TransformType::PRF,
                        id: 5,
                        key_len: None,
                    },
                    SaTransform {
                        ttype: TransformType::DH,
                        id: 31,
                        key_len: None,
                    },
                ],
            },
            Proposal {
                num: 2,
                protocol: ProtocolId::ESP,
                spi: vec![1, 2, 3, 4],
                transforms: vec![SaTransform {
                    ttype: TransformType::ESN,
                    id: 0,
                    key_len: None,
                }],
            },
        ]),
        Payload::Ke {
            group: 31,
            data: vec![9; 32],
        },
        Payload::Nonce(vec![7; 32]),
        Payload::Notify(Notify::new(notify::NAT_DETECTION_SOURCE_IP, vec![1; 20])),
        Payload::Notify(Notify {
            protocol: 3,
            spi: vec![0, 0, 1, 0],
            ntype: notify::REKEY_SA,
            data: vec![],
        }),
        Payload::IdI(Id {
            id_type: IdType::FQDN,
            data: b"b0.example.net".to_vec(),
        }),
        Payload::IdR(Id {
            id_type: IdType::IPV4_ADDR,
            data: vec![198, 18, 0, 2],
        }),
        Payload::Auth {
            method: 2,
            data: vec![3; 32],
        },
        Payload::Cert {
            encoding: 4,
            data: vec![0x30, 0x82],
        },
        Payload::CertReq {
            encoding: 4,
            data: vec![5; 20],
        },
        Payload::TsI(vec![TrafficSelector::from_prefix(
            "198.19.1.0".parse().unwrap(),
            24,
        )]),
        Payload::TsR(vec![
            TrafficSelector::from_prefix("198.19.2.0".parse().unwrap(), 24),
            TrafficSelector::from_prefix("2001:db8::".parse().unwrap(), 48),
        ]),
        Payload::Delete(Delete {
            protocol: ProtocolId::ESP,
            spis: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]],
        }),
        Payload::Delete(Delete {
            protocol: ProtocolId::IKE,
            spis: vec![],
        }),
        Payload::Config(Config {
            cfg_type: 1,
            attrs: vec![CfgAttr {
                attr_type: 1,
                value: vec![],
            }],
        }),
        Payload::Vendor(b"vmsecd".to_vec()),
    ]
}

fn header() -> Header {
    Header {
        spi_i: 0x1122_3344_5566_7788,
        spi_r: 0,
        next_payload: 0,
        version: IKE_VERSION,
        exchange: ExchangeType::IKE_SA_INIT,
        flags: Flags(Flags::INITIATOR),
        message_id: 0,
        length: 0,
    }
}

#[test]
fn every_payload_round_trips() {
    let payloads = sample_payloads();
    let bytes = encode_plain(header(), &payloads);
    let parsed = parse(&bytes).unwrap();
    assert_eq!(parsed.payloads, payloads);
    assert!(parsed.encrypted.is_none());
    assert_eq!(parsed.header.length as usize, bytes.len());
}

#[test]
fn unknown_payloads_skipped_unless_critical() {
    let mut bytes = encode_plain(
        header(),
        &[
            Payload::Nonce(vec![1; 16]),
            Payload::Unknown {
                ptype: 200,
                data: vec![1, 2],
            },
        ],
    );
    let parsed = parse(&bytes).unwrap();
    assert_eq!(
        parsed.payloads[1],
        Payload::Unknown {
            ptype: 200,
            data: vec![1, 2]
        }
    );
    // Set the critical bit on the unknown payload: 28 header + 20 nonce payload, then its flags byte.
    bytes[28 + 20 + 1] = 0x80;
    assert_eq!(
        parse(&bytes).unwrap_err(),
        ParseError::UnsupportedCritical(200)
    );
}

#[test]
fn encrypted_payload_must_be_last() {
    let (_, mut body) = encode_chain(&[Payload::Nonce(vec![1; 16])]);
    // Build header + SK(payload next = 40 inside) + 8 bytes body.
    let mut sk = vec![PayloadType::NONE, 0, 0, 12];
    sk.extend_from_slice(&[0xaa; 8]);
    let mut msg = Vec::new();
    let mut h = header();
    h.next_payload = PayloadType::SK;
    h.length = (28 + sk.len()) as u32;
    h.encode(&mut msg);
    msg.extend_from_slice(&sk);
    let p = parse(&msg).unwrap();
    let e = p.encrypted.unwrap();
    assert_eq!((e.offset, e.body.len(), e.inner_next), (28, 8, 0));
    // Something after SK is refused.
    h.length += body.len() as u32;
    msg.clear();
    h.encode(&mut msg);
    sk[0] = PayloadType::NONCE;
    msg.extend_from_slice(&sk);
    msg.append(&mut body);
    assert!(parse(&msg).is_err());
}

#[test]
fn bad_lengths_and_versions() {
    let bytes = encode_plain(header(), &sample_payloads());
    for cut in 0..bytes.len() {
        // A short datagram is refused by the header's length check or by the chain.
        assert!(parse(&bytes[..cut]).is_err(), "cut at {cut}");
    }
    let mut v1 = bytes.clone();
    v1[17] = 0x10;
    assert_eq!(parse(&v1).unwrap_err(), ParseError::BadVersion(1));
}

proptest! {
    #[test]
    fn parse_never_panics(mut data in prop::collection::vec(any::<u8>(), 0..600), first in 0u8..60) {
        if data.len() >= 28 {
            data[17] = IKE_VERSION;
            let len = data.len() as u32;
            data[24..28].copy_from_slice(&len.to_be_bytes());
            data[16] = first;
        }
        let _ = parse(&data);
    }

    #[test]
    fn mutated_messages_never_panic(pos in 0usize..400, val in any::<u8>()) {
        let mut bytes = encode_plain(header(), &sample_payloads());
        let p = pos % bytes.len();
        bytes[p] = val;
        let _ = parse(&bytes);
    }
}

/// RFC 7296 3.11: a Delete payload's SPIs must be exactly what its bytes hold, with the SPI Size its protocol
/// defines; anything else is refused with a typed error before anything is allocated for the SPIs.
#[test]
fn delete_counts_must_fit_the_bytes() {
    let chain = |body: &[u8]| {
        let mut v = vec![0, 0, 0, 4 + body.len() as u8];
        v.extend_from_slice(body);
        v
    };
    let count = |body: &[u8]| {
        parse_chain(PayloadType::DELETE, &chain(body), 0).map(|(payloads, _)| payloads)
    };
    assert_eq!(
        count(&[1, 0, 0xff, 0xff]).unwrap_err(),
        ParseError::Count {
            what: "Delete SPIs",
            count: 65535,
            room: 0
        }
    );
    assert!(matches!(
        count(&[3, 4, 0, 3, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap_err(),
        ParseError::Count {
            count: 3,
            room: 8,
            ..
        }
    ));
    assert_eq!(
        count(&[3, 0, 0xff, 0xff]).unwrap_err(),
        ParseError::Invalid("Delete SPI Size")
    );
    assert_eq!(
        count(&[3, 1, 0, 1, 9]).unwrap_err(),
        ParseError::Invalid("Delete SPI Size")
    );
    assert_eq!(
        count(&[9, 4, 0, 1, 1, 2, 3, 4]).unwrap_err(),
        ParseError::Invalid("Delete protocol ID")
    );
    let p = count(&[3, 4, 0, 2, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    assert_eq!(
        p,
        [Payload::Delete(Delete {
            protocol: ProtocolId::ESP,
            spis: vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8]]
        })]
    );
    let p = count(&[1, 0, 0, 0]).unwrap();
    assert_eq!(
        p,
        [Payload::Delete(Delete {
            protocol: ProtocolId::IKE,
            spis: vec![]
        })]
    );
}

/// Counts of transforms and traffic selectors that the bytes cannot hold are refused as such.
#[test]
fn transform_and_selector_counts_must_fit() {
    let sa = [0, 0, 0, 12, 0, 0, 0, 8, 1, 1, 0, 255];
    assert!(matches!(
        parse_chain(PayloadType::SA, &sa, 0).unwrap_err(),
        ParseError::Count {
            what: "transforms",
            count: 255,
            room: 0
        }
    ));
    let ts = [0, 0, 0, 8, 255, 0, 0, 0];
    assert!(matches!(
        parse_chain(PayloadType::TSI, &ts, 0).unwrap_err(),
        ParseError::Count {
            what: "traffic selectors",
            count: 255,
            room: 0
        }
    ));
}
