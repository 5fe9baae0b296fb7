//! Issue 12 item 12: cipher key schedules are wiped when an SA is dropped, and `Debug` never shows key bytes.
//!
//! A global allocator looks at every block freed while a test is watching: a block that still holds the AES
//! key when it is handed back to the allocator is a key schedule that was not zeroized (the AES-NI key schedule
//! starts with the key itself, round key 0). The `aes` crate wipes its schedules on drop only with its
//! `zeroize` feature; without it these tests fail.
//!
//! ring, which runs the AEADs (AES-GCM, ChaCha20-Poly1305) and HMAC, zeroizes nothing
//! (briansmith/ring#15): `ring_aead_keys_are_not_zeroized` records that gap and is ignored until it is closed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use esp::{InboundSa, KeyMaterial, OutboundSa, SaParams, Sad, Transform};

struct Inspecting;

thread_local! {
    static WATCH: Cell<Option<[u8; 16]>> = const { Cell::new(None) };
    /// Only the first this many bytes of each freed block are looked at.
    static PREFIX: Cell<usize> = const { Cell::new(usize::MAX) };
}
/// Blocks freed while watching that still held the watched bytes.
static LEAKED: AtomicUsize = AtomicUsize::new(0);

fn contains(hay: &[u8], needle: &[u8; 16]) -> bool {
    hay.windows(16).any(|w| w == needle)
}

unsafe impl GlobalAlloc for Inspecting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if let Ok(Some(needle)) = WATCH.try_with(Cell::get) {
            // SAFETY: the block is still allocated and `layout.size()` bytes long; it is only read.
            let len = PREFIX
                .try_with(Cell::get)
                .unwrap_or(usize::MAX)
                .min(layout.size());
            let block = unsafe { std::slice::from_raw_parts(ptr, len) };
            if contains(block, &needle) {
                LEAKED.fetch_add(1, Ordering::Relaxed);
            }
        }
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Inspecting = Inspecting;

/// A recognisable 16-byte key.
const KEY: [u8; 16] = [
    0xa7, 0x3c, 0x51, 0xe2, 0x09, 0x9b, 0x44, 0xd8, 0x6f, 0x13, 0xc5, 0x7a, 0x2e, 0xb0, 0x81, 0x5d,
];

/// Blocks freed by `f` that still held `needle`.
fn leaked_by(needle: [u8; 16], f: impl FnOnce()) -> usize {
    leaked_in_prefix(needle, usize::MAX, f)
}

/// Blocks freed by `f` whose first `prefix` bytes still held `needle`.
fn leaked_in_prefix(needle: [u8; 16], prefix: usize, f: impl FnOnce()) -> usize {
    let before = LEAKED.load(Ordering::Relaxed);
    PREFIX.with(|p| p.set(prefix));
    WATCH.with(|w| w.set(Some(needle)));
    f();
    WATCH.with(|w| w.set(None));
    PREFIX.with(|p| p.set(usize::MAX));
    LEAKED.load(Ordering::Relaxed) - before
}

/// The check sees a key schedule: a live `aes::Aes128` holds the key (AES-NI's round key 0), and freeing a
/// plain copy of the key is noticed. Without this, a test below could pass without looking at anything.
#[test]
#[cfg(target_arch = "x86_64")]
fn the_inspection_sees_key_schedules() {
    use aes::cipher::KeyInit;
    assert!(
        std::arch::is_x86_feature_detected!("aes"),
        "this check reads AES-NI key schedules; this CPU has no AES-NI"
    );
    let b = Box::new(aes::Aes128::new(&KEY.into()));
    // SAFETY: reads the bytes of a live, initialized value (the union's AES-NI half, which is in use).
    let live = unsafe {
        std::slice::from_raw_parts(
            (&*b as *const aes::Aes128).cast::<u8>(),
            std::mem::size_of::<aes::Aes128>(),
        )
    };
    assert!(
        contains(live, &KEY),
        "the AES-NI schedule does not start with the key"
    );
    drop(b);
    assert_eq!(
        leaked_by(KEY, || drop(std::hint::black_box(KEY.to_vec()))),
        1
    );
}

/// The `aes` crate's key schedules (ESP's AES-CBC transform) are wiped on drop.
///
/// `aes::Aes128` (runtime CPU detection) is a union of the AES-NI schedule (encryption and decryption round
/// keys: 2 x 11 x 16 bytes for AES-128, 2 x 15 x 16 for AES-256) and the larger software one; with AES-NI
/// only the first part is written, and only it is looked at here. The rest of the union is never initialized
/// and may hold whatever the stack held when the value was built (see `cbc_sas_leave_no_key_behind`).
#[test]
#[cfg(target_arch = "x86_64")]
fn aes_key_schedules_are_zeroized_on_drop() {
    use aes::cipher::KeyInit;
    assert!(std::arch::is_x86_feature_detected!("aes"), "needs AES-NI");
    let b = Box::new(aes::Aes128::new(&KEY.into()));
    assert_eq!(
        leaked_in_prefix(KEY, 2 * 11 * 16, || drop(b)),
        0,
        "aes::Aes128 schedule freed with its key"
    );
    let mut k256 = [0x33u8; 32];
    k256[..16].copy_from_slice(&KEY);
    let b = Box::new(aes::Aes256::new(&k256.into()));
    assert_eq!(
        leaked_in_prefix(KEY, 2 * 15 * 16, || drop(b)),
        0,
        "aes::Aes256 schedule freed with its key"
    );
}

/// SAs of the AES-CBC transforms: nothing freed when they are dropped still holds the AES key.
///
/// Not met yet: the schedules proper are wiped (above), but the unused tail of `aes`'s union can carry a
/// stale stack copy of the key into the heap (seen in release builds: 3 freed blocks). Run with `--ignored`.
#[test]
#[ignore = "aes 0.8's autodetect union copies uninitialized stack bytes (which can hold the key) into the SA"]
fn cbc_sas_leave_no_key_behind() {
    for t in [
        Transform::AesCbc128HmacSha256,
        Transform::AesCbc256HmacSha256,
    ] {
        let mut raw = vec![0x11u8; t.keymat_len()];
        raw[..16].copy_from_slice(&KEY);
        let keys = KeyMaterial::new(t, &raw).unwrap();
        raw.iter_mut().for_each(|b| *b = 0);
        let params = SaParams::new(0x4242, t, true);
        let out = Box::new(OutboundSa::new(params, &keys).unwrap());
        let mut sad = Sad::new();
        sad.insert(InboundSa::new(params, &keys).unwrap());
        let n = leaked_by(KEY, move || {
            drop(out);
            drop(sad);
            drop(keys);
        });
        assert_eq!(n, 0, "{t}: {n} freed blocks still held the AES key");
    }
}

/// ring (AES-GCM, ChaCha20-Poly1305, HMAC) wipes nothing: dropping an AEAD SA frees its key schedule as is.
/// Kept to measure the gap; run with `--ignored`. It passes once ring (or our use of it) wipes keys.
#[test]
#[ignore = "ring does not zeroize its key schedules (briansmith/ring#15)"]
fn ring_aead_keys_are_zeroized_on_drop() {
    let t = Transform::ChaCha20Poly1305;
    let mut raw = vec![0x22u8; t.keymat_len()];
    raw[..16].copy_from_slice(&KEY);
    let keys = KeyMaterial::new(t, &raw).unwrap();
    let out = Box::new(OutboundSa::new(SaParams::new(1, t, false), &keys).unwrap());
    let n = leaked_by(KEY, move || drop(out));
    assert_eq!(n, 0, "{t}: ChaCha20 key freed as is");
}

/// `Debug` of every key-holding type shows no key byte.
#[test]
fn debug_shows_no_key_bytes() {
    for t in Transform::ALL {
        let raw: Vec<u8> = (0..t.keymat_len())
            .map(|i| KEY[i % 16] ^ (i / 16) as u8)
            .collect();
        let keys = KeyMaterial::new(t, &raw).unwrap();
        let params = SaParams::new(7, t, false);
        let out = OutboundSa::new(params, &keys).unwrap();
        let inb = InboundSa::new(params, &keys).unwrap();
        let mut sad = Sad::new();
        sad.insert(InboundSa::new(params, &keys).unwrap());
        let text = format!("{keys:?} {keys:#?} {out:?} {out:#?} {inb:?} {inb:#?} {sad:?} {sad:#?}");
        let dec: Vec<String> = raw[..4].iter().map(u8::to_string).collect();
        let hex: String = raw[..4].iter().map(|b| format!("{b:02x}")).collect();
        for leak in [dec.join(", "), hex.clone(), hex.to_uppercase()] {
            assert!(
                !text.contains(&leak),
                "{t}: Debug shows key bytes {leak}: {text}"
            );
        }
    }
}
