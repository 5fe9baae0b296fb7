//! Issue 12 item 12: no key material is printed by any `Debug` impl of `ike::crypto`. Every key-holding type is
//! built from known key bytes (or made to reveal them) and formatted with `{:?}` and `{:#?}`; neither output
//! may contain the bytes in any of the usual renderings (decimal list, hex either case).

use ike::crypto::{split_child_keymat, DhGroup, IkeEncr, IkeKeys, Integ, KeyShare, Prf, SkCipher};

/// Renderings of `key` that a careless `Debug` would print: `[167, 60, ...`, `a73c...`, `A73C...`. A short
/// prefix is enough: one leaked key byte sequence of 4 is already a leak.
fn renderings(key: &[u8]) -> Vec<String> {
    let k = &key[..key.len().min(4)];
    let dec: Vec<String> = k.iter().map(u8::to_string).collect();
    vec![
        dec.join(", "),
        dec.join(","),
        k.iter().map(|b| format!("{b:02x}")).collect(),
        k.iter().map(|b| format!("{b:02X}")).collect(),
    ]
}

fn assert_redacted(what: &str, value: &impl std::fmt::Debug, keys: &[&[u8]]) {
    for text in [format!("{value:?}"), format!("{value:#?}")] {
        for key in keys.iter().filter(|k| !k.is_empty()) {
            for r in renderings(key) {
                assert!(
                    !text.contains(&r),
                    "{what}: Debug shows key bytes ({r}): {text}"
                );
            }
        }
    }
}

/// Distinct, unlikely bytes: no length or counter in a Debug output renders like them.
fn key(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| 0xa7u8.wrapping_add(seed).wrapping_mul(i as u8 | 1) ^ 0x3c)
        .collect()
}

/// The check is not vacuous: it catches bytes printed as a list or in hex.
#[test]
fn the_check_catches_a_leak() {
    let k = key(16, 9);
    let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
    for leaky in [format!("{k:?}"), hex] {
        let caught = std::panic::catch_unwind(|| assert_redacted("leaky", &leaky, &[&k]));
        assert!(caught.is_err(), "missed {leaky}");
    }
}

#[test]
fn sk_ciphers_do_not_print_keys() {
    for (encr, integ) in [
        (IkeEncr::AesGcm16_128, None),
        (IkeEncr::AesGcm16_256, None),
        (IkeEncr::ChaCha20Poly1305, None),
        (IkeEncr::AesCbc256, Some(Integ::HmacSha256_128)),
    ] {
        let sk_e = key(encr.key_len(), 1);
        let sk_a = key(integ.map_or(0, |i| i.key_len()), 2);
        let c = SkCipher::new(encr, integ, &sk_e, &sk_a).unwrap();
        assert_redacted(
            "SkCipher",
            &c,
            &[&sk_e, &sk_a, &sk_e[encr.cipher_key_len()..]],
        );
    }
}

#[test]
fn key_exchange_and_derived_keys_do_not_print_secrets() {
    for group in [DhGroup::Curve25519, DhGroup::Ecp256, DhGroup::Modp2048] {
        let a = KeyShare::generate(group).unwrap();
        let b = KeyShare::generate(group).unwrap();
        let shared = a.agree(b.public()).unwrap();
        assert_redacted("KeyShare", &a, &[]);
        assert_redacted("SharedSecret", &shared, &[shared.as_bytes()]);
        let keys = IkeKeys::derive(
            Prf::HmacSha256,
            shared.as_bytes(),
            &key(32, 3),
            &key(32, 4),
            1,
            2,
            IkeEncr::AesCbc128,
            Some(Integ::HmacSha256_128),
        )
        .unwrap();
        let all: Vec<&[u8]> = vec![
            &keys.sk_d,
            &keys.sk_ai,
            &keys.sk_ar,
            &keys.sk_ei,
            &keys.sk_er,
            &keys.sk_pi,
            &keys.sk_pr,
        ];
        assert_redacted("IkeKeys", &keys, &all);
        let (i, r) = keys.ciphers(true).unwrap();
        assert_redacted("SkCipher from IkeKeys", &(i, r), &all);
    }
    let keymat = key(72, 5);
    let child = split_child_keymat(&keymat, 36).unwrap();
    assert_redacted("ChildKeys", &child, &[&child.i_to_r, &child.r_to_i]);
}

#[test]
fn private_key_does_not_print_itself() {
    let k = ike::crypto::signature::PrivateKey::generate(2048).unwrap();
    let pem = k.to_pkcs8_pem();
    // The base64 body, not the header: any 16-character run of it would be a leak.
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let text = format!("{k:?} {k:#?}");
    for run in body.as_bytes().chunks(16).skip(1).take(20) {
        assert!(
            !text.contains(std::str::from_utf8(run).unwrap()),
            "PrivateKey Debug shows its PEM: {text}"
        );
    }
}
