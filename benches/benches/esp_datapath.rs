//! ESP datapath cost per packet: encapsulation alone, and encapsulation plus decapsulation, next to the bare
//! AEAD seal + open of the same payload with the same backend (ring). The difference is what ESP framing, padding,
//! sequence numbers, the SAD lookup and the replay window cost on top of the cipher.
//! Goal (issue 2): encap + decap at most 10% above bare seal + open at 1400 bytes.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use esp::{
    InboundSa, KeyMaterial, OutboundSa, PacketBuf, SaParams, Sad, Transform, HEADROOM, TAILROOM,
};
use ring::aead::{
    Aad, LessSafeKey, Nonce, Tag, UnboundKey, AES_128_GCM, AES_256_GCM, CHACHA20_POLY1305,
};
use std::time::Duration;

const SIZES: [usize; 4] = [64, 512, 1400, 8950];

fn esp(c: &mut Criterion) {
    for t in [
        Transform::AesGcm128,
        Transform::AesGcm256,
        Transform::ChaCha20Poly1305,
        Transform::AesCbc256HmacSha256,
    ] {
        let mut g = c.benchmark_group(format!("esp/{t}"));
        g.measurement_time(Duration::from_secs(2))
            .warm_up_time(Duration::from_millis(500))
            .sample_size(30);
        for size in SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            let keys = KeyMaterial::new(t, &vec![0x42; t.keymat_len()]).unwrap();
            let params = SaParams::new(0x1234, t, true);
            let mut buf = vec![0u8; HEADROOM + size + TAILROOM];
            buf[HEADROOM] = 0x45;

            let out = OutboundSa::new(params, &keys).unwrap();
            g.bench_function(BenchmarkId::new("encap", size), |b| {
                b.iter(|| {
                    let mut pkt = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + size);
                    pkt.as_mut_slice()[0] = 0x45;
                    out.encap(&mut pkt).unwrap();
                })
            });

            let out = OutboundSa::new(params, &keys).unwrap();
            let mut sad = Sad::new();
            sad.insert(InboundSa::new(params, &keys).unwrap());
            g.bench_function(BenchmarkId::new("encap+decap", size), |b| {
                b.iter(|| {
                    let mut pkt = PacketBuf::new(&mut buf, HEADROOM, HEADROOM + size);
                    pkt.as_mut_slice()[0] = 0x45;
                    out.encap(&mut pkt).unwrap();
                    sad.decap(&mut pkt).unwrap();
                })
            });

            if t.is_aead() {
                let alg = match t {
                    Transform::AesGcm128 => &AES_128_GCM,
                    Transform::AesGcm256 => &AES_256_GCM,
                    _ => &CHACHA20_POLY1305,
                };
                let key =
                    LessSafeKey::new(UnboundKey::new(alg, &vec![0x42; alg.key_len()]).unwrap());
                let mut data = vec![0u8; size];
                let mut n = 0u64;
                g.bench_function(BenchmarkId::new("bare seal+open", size), |b| {
                    b.iter(|| {
                        n += 1;
                        let mut nonce = [0u8; 12];
                        nonce[4..].copy_from_slice(&n.to_be_bytes());
                        let aad = n.to_be_bytes();
                        let tag = key
                            .seal_in_place_separate_tag(
                                Nonce::assume_unique_for_key(nonce),
                                Aad::from(aad),
                                &mut data,
                            )
                            .unwrap();
                        let tag = Tag::try_from(tag.as_ref()).unwrap();
                        key.open_in_place_separate_tag(
                            Nonce::assume_unique_for_key(nonce),
                            Aad::from(aad),
                            tag,
                            &mut data,
                            0..,
                        )
                        .unwrap();
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, esp);
criterion_main!(benches);
