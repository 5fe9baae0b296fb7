//! ESP datapath cost per packet: encapsulation alone, and encapsulation plus decapsulation, next to the bare
//! AEAD seal + open of the same payload with the same backend (ring). The difference is what ESP framing, padding,
//! sequence numbers, the SAD lookup and the replay window cost on top of the cipher.
//! Goal (issue 2): encap + decap at most 10% above bare seal + open at 1400 bytes.
//!
//! Also the per-packet parts on their own: the SAD lookup by SPI (1 to 4096 SAs), the anti-replay window (in
//! order, and reordered within the window), and drawing sequence numbers from a shared outbound SA, per packet
//! or per 44-packet block, alone and while another thread draws from the same SA (the transmit workers' case).

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

fn parts(c: &mut Criterion) {
    let t = Transform::AesGcm128;
    let keys = KeyMaterial::new(t, &vec![0x42; t.keymat_len()]).unwrap();
    let mut g = c.benchmark_group("parts");
    g.measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(30);

    // SAD lookup: the SPIs are spread like random ones; the lookup walks them all.
    for n in [1u32, 64, 4096] {
        let mut sad = Sad::new();
        let spis: Vec<u32> = (0..n)
            .map(|i| i.wrapping_mul(0x9e37_79b9) | 0x100)
            .collect();
        for &spi in &spis {
            sad.insert(InboundSa::new(SaParams::new(spi, t, false), &keys).unwrap());
        }
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("sad lookup", n), |b| {
            b.iter(|| {
                i = (i + 1) % spis.len();
                std::hint::black_box(sad.get(spis[i]).is_some())
            })
        });
    }

    // Replay window: check and update, in order; and 32 out of order (each run of 32 reversed).
    let mut w = esp::ReplayWindow::new(1024);
    let mut seq = 0u64;
    g.bench_function("replay in order", |b| {
        b.iter(|| {
            seq += 1;
            w.check(seq).unwrap();
            w.update(seq);
        })
    });
    let mut w = esp::ReplayWindow::new(1024);
    let mut base = 0u64;
    let mut k = 0u64;
    g.bench_function("replay reordered by 32", |b| {
        b.iter(|| {
            let seq = base + 32 - k;
            w.check(seq).unwrap();
            w.update(seq);
            k += 1;
            if k == 32 {
                k = 0;
                base += 32;
            }
        })
    });

    // Sequence numbers from an outbound SA that another thread may be drawing from too.
    for contended in [false, true] {
        let sa = OutboundSa::new(SaParams::new(0x1234, t, true), &keys).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            if contended {
                s.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        drop(std::hint::black_box(sa.reserve(1).unwrap()));
                    }
                });
            }
            let who = if contended { "contended" } else { "alone" };
            g.bench_function(format!("seq per packet, {who}"), |b| {
                b.iter(|| drop(std::hint::black_box(sa.reserve(1).unwrap())))
            });
            // One block for a 44-segment super-packet, counted per packet.
            g.throughput(Throughput::Elements(44));
            g.bench_function(format!("seq per 44-packet block, {who}"), |b| {
                b.iter(|| drop(std::hint::black_box(sa.reserve(44).unwrap())))
            });
            g.throughput(Throughput::Elements(1));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    g.finish();
}

criterion_group!(benches, esp, parts);
criterion_main!(benches);
