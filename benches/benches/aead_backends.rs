//! Crypto backend comparison for the ESP datapath: ring vs aws-lc-rs vs RustCrypto.
//!
//! Run: `cd /work/main && CARGO_TARGET_DIR=/work/main/target cargo bench -p vmsecd-benches --bench aead_backends`
//! Filter, e.g.: `... --bench aead_backends -- 'seal_AES-128-GCM'`
//!
//! Groups (every one with `Throughput::Bytes`, ids `<backend>/<payload bytes>`):
//! * `seal_<ALG>` — in-place encryption with a separate 16-byte tag, 8-byte AAD
//!   (SPI + sequence number, as in ESP), a fresh 96-bit nonce per call
//!   (4-byte salt || 64-bit counter, as in RFC 4106 / RFC 7634).
//! * `open_<ALG>` — in-place decryption + tag check of a message sealed (untimed,
//!   in the batch setup) with a fresh nonce; only the open call is timed.
//! * `compat_cbc256_hmac_sha256` — AES-256-CBC encryption (no padding, buffer
//!   rounded up to a 16-byte multiple, fresh IV per packet) followed by
//!   HMAC-SHA-256 over the encrypted buffer. CBC is RustCrypto `aes`+`cbc`, the HMAC
//!   is ring, aws-lc-rs or RustCrypto. One extra row, `aws-lc-cbc+aws-lc-hmac`,
//!   does both steps in aws-lc-rs (`cipher::EncryptingKey::cbc`).
//! * `rsa2048_sign_pkcs1_sha256` — supplementary, for IKE_AUTH: one RSA-2048
//!   PKCS#1 v1.5 SHA-256 signature over a 64-byte message (ring vs aws-lc-rs).
//!
//! Before measuring, every backend is checked against the others (same key,
//! nonce and AAD must give the same ciphertext and tag, and each must open the
//! others' output), so a broken binding cannot produce a fast but wrong number.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};

/// Payload sizes: tiny (TCP ACK-ish), mid, typical 1500-MTU ESP payload, 9000-MTU jumbo payload.
const SIZES: [usize; 4] = [64, 512, 1400, 8950];
const AAD: [u8; 8] = *b"\x00\x00\x10\x01\x00\x00\x00\x2a"; // SPI 0x1001, seq 42
const SALT: [u8; 4] = [0xca, 0xfe, 0xba, 0xbe];

fn nonce_bytes(ctr: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&SALT);
    n[4..].copy_from_slice(&ctr.to_be_bytes());
    n
}

fn key_bytes(len: usize) -> Vec<u8> {
    (0..len as u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect()
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 131 + 7) as u8).collect()
}

#[derive(Clone, Copy, Debug)]
enum Alg {
    Aes128Gcm,
    Aes256Gcm,
    ChaCha20Poly1305,
}

impl Alg {
    const ALL: [Alg; 3] = [Alg::Aes128Gcm, Alg::Aes256Gcm, Alg::ChaCha20Poly1305];
    fn name(self) -> &'static str {
        match self {
            Alg::Aes128Gcm => "AES-128-GCM",
            Alg::Aes256Gcm => "AES-256-GCM",
            Alg::ChaCha20Poly1305 => "ChaCha20-Poly1305",
        }
    }
    fn key_len(self) -> usize {
        match self {
            Alg::Aes128Gcm => 16,
            _ => 32,
        }
    }
}

/// One AEAD backend, as the ESP datapath would call it.
trait Backend {
    const NAME: &'static str;
    fn new(alg: Alg, key: &[u8]) -> Self;
    /// Encrypts `buf` in place, returns the tag.
    fn seal(&self, ctr: u64, buf: &mut [u8]) -> [u8; 16];
    /// Decrypts `buf` in place; false on authentication failure.
    fn open(&self, ctr: u64, buf: &mut [u8], tag: &[u8; 16]) -> bool;
}

struct Ring(ring::aead::LessSafeKey);

impl Backend for Ring {
    const NAME: &'static str = "ring";
    fn new(alg: Alg, key: &[u8]) -> Self {
        use ring::aead;
        let a = match alg {
            Alg::Aes128Gcm => &aead::AES_128_GCM,
            Alg::Aes256Gcm => &aead::AES_256_GCM,
            Alg::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        };
        Ring(aead::LessSafeKey::new(
            aead::UnboundKey::new(a, key).unwrap(),
        ))
    }
    #[inline]
    fn seal(&self, ctr: u64, buf: &mut [u8]) -> [u8; 16] {
        use ring::aead::{Aad, Nonce};
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes(ctr)),
                Aad::from(AAD),
                buf,
            )
            .unwrap();
        tag.as_ref().try_into().unwrap()
    }
    #[inline]
    fn open(&self, ctr: u64, buf: &mut [u8], tag: &[u8; 16]) -> bool {
        use ring::aead::{Aad, Nonce, Tag};
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes(ctr)),
                Aad::from(AAD),
                Tag::from(*tag),
                buf,
                0..,
            )
            .is_ok()
    }
}

struct AwsLc(aws_lc_rs::aead::LessSafeKey);

impl Backend for AwsLc {
    const NAME: &'static str = "aws-lc-rs";
    fn new(alg: Alg, key: &[u8]) -> Self {
        use aws_lc_rs::aead;
        let a = match alg {
            Alg::Aes128Gcm => &aead::AES_128_GCM,
            Alg::Aes256Gcm => &aead::AES_256_GCM,
            Alg::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        };
        AwsLc(aead::LessSafeKey::new(
            aead::UnboundKey::new(a, key).unwrap(),
        ))
    }
    #[inline]
    fn seal(&self, ctr: u64, buf: &mut [u8]) -> [u8; 16] {
        use aws_lc_rs::aead::{Aad, Nonce};
        let tag = self
            .0
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes(ctr)),
                Aad::from(AAD),
                buf,
            )
            .unwrap();
        tag.as_ref().try_into().unwrap()
    }
    #[inline]
    fn open(&self, ctr: u64, buf: &mut [u8], tag: &[u8; 16]) -> bool {
        use aws_lc_rs::aead::{Aad, Nonce};
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes(ctr)),
                Aad::from(AAD),
                tag,
                buf,
            )
            .is_ok()
    }
}

// Held once per bench, by value like the other backends' keys: size does not matter here.
#[allow(clippy::large_enum_variant)]
enum RustCrypto {
    Aes128Gcm(aes_gcm::Aes128Gcm),
    Aes256Gcm(aes_gcm::Aes256Gcm),
    ChaCha(chacha20poly1305::ChaCha20Poly1305),
}

impl Backend for RustCrypto {
    const NAME: &'static str = "rustcrypto";
    fn new(alg: Alg, key: &[u8]) -> Self {
        use aes_gcm::aead::KeyInit;
        match alg {
            Alg::Aes128Gcm => {
                RustCrypto::Aes128Gcm(aes_gcm::Aes128Gcm::new_from_slice(key).unwrap())
            }
            Alg::Aes256Gcm => {
                RustCrypto::Aes256Gcm(aes_gcm::Aes256Gcm::new_from_slice(key).unwrap())
            }
            Alg::ChaCha20Poly1305 => {
                RustCrypto::ChaCha(chacha20poly1305::ChaCha20Poly1305::new_from_slice(key).unwrap())
            }
        }
    }
    #[inline]
    fn seal(&self, ctr: u64, buf: &mut [u8]) -> [u8; 16] {
        use aes_gcm::aead::AeadInPlace;
        let n = nonce_bytes(ctr);
        let n = (&n).into();
        let tag = match self {
            RustCrypto::Aes128Gcm(c) => c.encrypt_in_place_detached(n, &AAD, buf),
            RustCrypto::Aes256Gcm(c) => c.encrypt_in_place_detached(n, &AAD, buf),
            RustCrypto::ChaCha(c) => c.encrypt_in_place_detached(n, &AAD, buf),
        }
        .unwrap();
        tag.into()
    }
    #[inline]
    fn open(&self, ctr: u64, buf: &mut [u8], tag: &[u8; 16]) -> bool {
        use aes_gcm::aead::AeadInPlace;
        let n = nonce_bytes(ctr);
        let n = (&n).into();
        let t = tag.into();
        match self {
            RustCrypto::Aes128Gcm(c) => c.decrypt_in_place_detached(n, &AAD, buf, t),
            RustCrypto::Aes256Gcm(c) => c.decrypt_in_place_detached(n, &AAD, buf, t),
            RustCrypto::ChaCha(c) => c.decrypt_in_place_detached(n, &AAD, buf, t),
        }
        .is_ok()
    }
}

/// Cross-checks the three backends on every algorithm and size before any timing.
fn check_aead_interop() {
    for alg in Alg::ALL {
        let key = key_bytes(alg.key_len());
        let r = Ring::new(alg, &key);
        let a = AwsLc::new(alg, &key);
        let c = RustCrypto::new(alg, &key);
        for &len in SIZES.iter().chain(&[0, 1, 15, 17]) {
            let pt = payload(len);
            let (mut br, mut ba, mut bc) = (pt.clone(), pt.clone(), pt.clone());
            let (tr, ta, tc) = (r.seal(7, &mut br), a.seal(7, &mut ba), c.seal(7, &mut bc));
            assert_eq!(
                (&br, tr),
                (&ba, ta),
                "{} ring vs aws-lc-rs seal, len {len}",
                alg.name()
            );
            assert_eq!(
                (&br, tr),
                (&bc, tc),
                "{} ring vs rustcrypto seal, len {len}",
                alg.name()
            );
            if len > 0 {
                assert_ne!(br, pt, "ciphertext equals plaintext");
            }
            // Each backend opens the (identical) output; a flipped tag bit must be rejected.
            let mut bad = tr;
            bad[0] ^= 1;
            type OpenFn<'a> = Box<dyn Fn(&mut [u8], &[u8; 16]) -> bool + 'a>;
            let openers: [(&str, OpenFn); 3] = [
                ("ring", Box::new(|b, t| r.open(7, b, t))),
                ("aws-lc-rs", Box::new(|b, t| a.open(7, b, t))),
                ("rustcrypto", Box::new(|b, t| c.open(7, b, t))),
            ];
            for (name, open) in &openers {
                let mut b = br.clone();
                assert!(open(&mut b, &tr), "{name} open {} len {len}", alg.name());
                assert_eq!(b, pt, "{name} open {} len {len}", alg.name());
                let mut b = br.clone();
                assert!(!open(&mut b, &bad), "{name} accepted a bad tag");
            }
        }
    }
}

fn bench_backend<B: Backend>(c: &mut Criterion, alg: Alg) {
    let key = key_bytes(alg.key_len());
    let backend = B::new(alg, &key);

    let mut g = c.benchmark_group(format!("seal_{}", alg.name()));
    for &len in &SIZES {
        g.throughput(Throughput::Bytes(len as u64));
        let mut buf = payload(len);
        let mut ctr = 0u64;
        g.bench_with_input(BenchmarkId::new(B::NAME, len), &len, |b, _| {
            b.iter(|| {
                ctr += 1;
                black_box(backend.seal(black_box(ctr), black_box(&mut buf[..])))
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group(format!("open_{}", alg.name()));
    for &len in &SIZES {
        g.throughput(Throughput::Bytes(len as u64));
        let pt = payload(len);
        let mut ctr = 0u64;
        g.bench_with_input(BenchmarkId::new(B::NAME, len), &len, |b, _| {
            b.iter_batched_ref(
                || {
                    // Untimed: seal a fresh message under a fresh nonce.
                    ctr += 1;
                    let mut buf = pt.clone();
                    let tag = backend.seal(ctr, &mut buf);
                    (ctr, buf, tag)
                },
                |(n, buf, tag)| {
                    let ok = backend.open(black_box(*n), black_box(&mut buf[..]), black_box(tag));
                    debug_assert!(ok);
                    black_box(ok)
                },
                // Small batches keep the inputs in L1/L2 like the seal case (32 x 9 KB).
                BatchSize::NumIterations(32),
            )
        });
    }
    g.finish();
}

fn aead(c: &mut Criterion) {
    check_aead_interop();
    for alg in Alg::ALL {
        bench_backend::<Ring>(c, alg);
        bench_backend::<AwsLc>(c, alg);
        bench_backend::<RustCrypto>(c, alg);
    }
}

// ---------------------------------------------------------------------------
// Compatibility transform: AES-256-CBC + HMAC-SHA-256 (RFC 3602 + RFC 4868).

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn cbc_iv(ctr: u64) -> [u8; 16] {
    let mut iv = [0x5a; 16];
    iv[8..].copy_from_slice(&ctr.to_le_bytes());
    iv
}

/// RustCrypto AES-256-CBC, no padding, reusing a precomputed key schedule.
#[inline]
fn rc_cbc_encrypt(aes: &aes::Aes256Enc, ctr: u64, buf: &mut [u8]) {
    use cbc::cipher::{block_padding::NoPadding, BlockEncryptMut, InnerIvInit};
    let iv = cbc_iv(ctr);
    let enc = cbc::Encryptor::<aes::Aes256Enc>::inner_iv_init(aes.clone(), (&iv).into());
    let len = buf.len();
    enc.encrypt_padded_mut::<NoPadding>(buf, len).unwrap();
}

#[inline]
fn awslc_cbc_encrypt(key: &aws_lc_rs::cipher::EncryptingKey, ctr: u64, buf: &mut [u8]) {
    use aws_lc_rs::cipher::EncryptionContext;
    use aws_lc_rs::iv::FixedLength;
    let ctx = EncryptionContext::Iv128(FixedLength::from(cbc_iv(ctr)));
    key.less_safe_encrypt(buf, ctx).unwrap();
}

struct CompatKeys {
    rc_aes: aes::Aes256Enc,
    awslc_cbc: aws_lc_rs::cipher::EncryptingKey,
    ring_hmac: ring::hmac::Key,
    awslc_hmac: aws_lc_rs::hmac::Key,
    rc_hmac: HmacSha256,
}

impl CompatKeys {
    fn new() -> Self {
        use aes::cipher::KeyInit;
        use aws_lc_rs::cipher::{EncryptingKey, UnboundCipherKey, AES_256};
        let enc_key = key_bytes(32);
        let mac_key: Vec<u8> = key_bytes(32).iter().map(|b| b ^ 0x36).collect();
        CompatKeys {
            rc_aes: aes::Aes256Enc::new_from_slice(&enc_key).unwrap(),
            awslc_cbc: EncryptingKey::cbc(UnboundCipherKey::new(&AES_256, &enc_key).unwrap())
                .unwrap(),
            ring_hmac: ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &mac_key),
            awslc_hmac: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &mac_key),
            rc_hmac: <HmacSha256 as hmac::Mac>::new_from_slice(&mac_key).unwrap(),
        }
    }
    #[inline]
    fn rc_mac(&self, buf: &[u8]) -> [u8; 32] {
        use hmac::Mac;
        let mut m = self.rc_hmac.clone();
        m.update(buf);
        m.finalize().into_bytes().into()
    }
}

fn check_compat(k: &CompatKeys) {
    for &len in &SIZES {
        let len = len.next_multiple_of(16);
        let (mut a, mut b) = (payload(len), payload(len));
        rc_cbc_encrypt(&k.rc_aes, 3, &mut a);
        awslc_cbc_encrypt(&k.awslc_cbc, 3, &mut b);
        assert_eq!(a, b, "CBC rustcrypto vs aws-lc-rs, len {len}");
        assert_ne!(a, payload(len));
        let r = ring::hmac::sign(&k.ring_hmac, &a);
        let w = aws_lc_rs::hmac::sign(&k.awslc_hmac, &a);
        assert_eq!(r.as_ref(), w.as_ref(), "HMAC ring vs aws-lc-rs");
        assert_eq!(r.as_ref(), &k.rc_mac(&a)[..], "HMAC ring vs rustcrypto");
    }
}

fn compat(c: &mut Criterion) {
    let k = CompatKeys::new();
    check_compat(&k);
    let mut g = c.benchmark_group("compat_cbc256_hmac_sha256");
    for &size in &SIZES {
        // CBC without padding needs a whole number of blocks: 1400 -> 1408, 8950 -> 8960.
        let len = size.next_multiple_of(16);
        g.throughput(Throughput::Bytes(len as u64));
        let mut buf = payload(len);
        let mut ctr = 0u64;
        g.bench_function(BenchmarkId::new("rustcrypto-cbc+ring-hmac", size), |b| {
            b.iter(|| {
                ctr += 1;
                rc_cbc_encrypt(&k.rc_aes, black_box(ctr), &mut buf);
                let t = ring::hmac::sign(&k.ring_hmac, black_box(&buf));
                let mut out = [0u8; 16];
                out.copy_from_slice(&t.as_ref()[..16]); // HMAC-SHA-256-128 ICV
                black_box(out)
            })
        });
        g.bench_function(BenchmarkId::new("rustcrypto-cbc+aws-lc-hmac", size), |b| {
            b.iter(|| {
                ctr += 1;
                rc_cbc_encrypt(&k.rc_aes, black_box(ctr), &mut buf);
                let t = aws_lc_rs::hmac::sign(&k.awslc_hmac, black_box(&buf));
                let mut out = [0u8; 16];
                out.copy_from_slice(&t.as_ref()[..16]);
                black_box(out)
            })
        });
        g.bench_function(
            BenchmarkId::new("rustcrypto-cbc+rustcrypto-hmac", size),
            |b| {
                b.iter(|| {
                    ctr += 1;
                    rc_cbc_encrypt(&k.rc_aes, black_box(ctr), &mut buf);
                    let t = k.rc_mac(black_box(&buf));
                    let mut out = [0u8; 16];
                    out.copy_from_slice(&t[..16]);
                    black_box(out)
                })
            },
        );
        g.bench_function(BenchmarkId::new("aws-lc-cbc+aws-lc-hmac", size), |b| {
            b.iter(|| {
                ctr += 1;
                awslc_cbc_encrypt(&k.awslc_cbc, black_box(ctr), &mut buf);
                let t = aws_lc_rs::hmac::sign(&k.awslc_hmac, black_box(&buf));
                let mut out = [0u8; 16];
                out.copy_from_slice(&t.as_ref()[..16]);
                black_box(out)
            })
        });
    }
    g.finish();
}

// ---------------------------------------------------------------------------
// Supplementary: RSA-2048 signing (IKE_AUTH), to check the backend choice is not
// decided by the datapath alone.

fn rsa(c: &mut Criterion) {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair as _;
    // ring cannot generate RSA keys: generate with aws-lc-rs, load the same PKCS#8 in both.
    let awslc_key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = awslc_key.as_der().unwrap();
    let ring_key = ring::rsa::KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let ring_rng = ring::rand::SystemRandom::new();
    let awslc_rng = aws_lc_rs::rand::SystemRandom::new();
    let msg = payload(64);
    let n = ring_key.public().modulus_len();
    let (mut s1, mut s2) = (vec![0u8; n], vec![0u8; n]);
    // PKCS#1 v1.5 is deterministic: both must give the same signature, and each must verify.
    ring_key
        .sign(&ring::signature::RSA_PKCS1_SHA256, &ring_rng, &msg, &mut s1)
        .unwrap();
    awslc_key
        .sign(
            &aws_lc_rs::signature::RSA_PKCS1_SHA256,
            &awslc_rng,
            &msg,
            &mut s2,
        )
        .unwrap();
    assert_eq!(s1, s2, "RSA signatures differ");
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        awslc_key.public_key().as_ref(),
    )
    .verify(&msg, &s2)
    .unwrap();

    let mut g = c.benchmark_group("rsa2048_sign_pkcs1_sha256");
    g.bench_function("ring", |b| {
        b.iter(|| {
            ring_key
                .sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &ring_rng,
                    black_box(&msg),
                    &mut s1,
                )
                .unwrap()
        })
    });
    g.bench_function("aws-lc-rs", |b| {
        b.iter(|| {
            awslc_key
                .sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &awslc_rng,
                    black_box(&msg),
                    &mut s2,
                )
                .unwrap()
        })
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = aead, compat, rsa
}
criterion_main!(benches);
