//! Proves the datapath's promise: after warm-up, encapsulating and decapsulating a packet allocates nothing.
//!
//! A counting global allocator wraps the system one and counts only the allocations of the thread that is
//! measuring, so the test harness's own threads do not disturb the count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use esp::{
    InboundSa, KeyMaterial, OutboundSa, PacketBuf, SaParams, Sad, Transform, HEADROOM, TAILROOM,
};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static MEASURING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count() {
    if MEASURING.with(|m| m.get()) {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn encap_and_decap_allocate_nothing_per_packet() {
    const PACKETS: usize = 10_000;
    // The counter itself works: one Box while measuring is seen.
    MEASURING.with(|m| m.set(true));
    let b = std::hint::black_box(Box::new(1u64));
    MEASURING.with(|m| m.set(false));
    drop(b);
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed),
        1,
        "the counting allocator does not count"
    );
    for t in Transform::ALL {
        for esn in [false, true] {
            let keys = KeyMaterial::new(t, &vec![0x5a; t.keymat_len()]).unwrap();
            let params = SaParams::new(0x4242, t, esn);
            let mut out = OutboundSa::new(params, &keys).unwrap();
            let mut sad = Sad::new();
            sad.insert(InboundSa::new(params, &keys).unwrap());
            let mut buf = vec![0u8; HEADROOM + 1400 + TAILROOM];
            let run = |out: &mut OutboundSa, sad: &mut Sad, buf: &mut [u8], n: usize| {
                for i in 0..n {
                    let len = 40 + (i * 97) % 1360;
                    buf[HEADROOM] = 0x45;
                    let mut pkt = PacketBuf::new(buf, HEADROOM, HEADROOM + len);
                    out.encap(&mut pkt).unwrap();
                    let (_, inner) = sad.decap(&mut pkt).unwrap();
                    assert_eq!((pkt.len(), inner.seq), (len, out.seq()));
                }
            };
            run(&mut out, &mut sad, &mut buf, 100);
            let before = ALLOCS.load(Ordering::Relaxed);
            MEASURING.with(|m| m.set(true));
            run(&mut out, &mut sad, &mut buf, PACKETS);
            MEASURING.with(|m| m.set(false));
            let allocs = ALLOCS.load(Ordering::Relaxed) - before;
            assert_eq!(
                allocs, 0,
                "{t} esn={esn}: {allocs} allocations for {PACKETS} packets"
            );
        }
    }
}
