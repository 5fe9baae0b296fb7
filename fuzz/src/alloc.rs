//! A counting global allocator, so targets can assert the rule "parsing never allocates more than a small
//! constant times the bytes received" (issue 12, item 1) on every input, not just on chosen ones.
//!
//! It counts the bytes requested by `alloc` and the growth of `realloc` (not frees): the total a parse asked
//! for, which is what an attacker's amplification multiplies. libFuzzer runs one input at a time on one
//! thread, so a global counter read before and after a call is exact.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static REQUESTED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers every call to `System` with the caller's arguments unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        REQUESTED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        REQUESTED.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REQUESTED.fetch_add(new_size.saturating_sub(layout.size()), Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes requested from the allocator so far (monotonic).
pub fn requested() -> usize {
    REQUESTED.load(Ordering::Relaxed)
}

/// Allowed allocation for parsing `input_len` received bytes: 64 per byte received plus a fixed 16 KiB (one
/// proposal may reserve room for its 255 announced transforms before finding them missing, about 2 KiB, and
/// small fixed costs). A parsed payload is at most ~64 bytes of struct per 4-byte header, and `Vec` doubling
/// at most doubles that, so honest parsing stays far below; an amplification (a count field the bytes cannot
/// hold) does not.
pub fn parse_budget(input_len: usize) -> usize {
    64 * input_len + 16 * 1024
}

/// Runs `f` and returns its result and the bytes it requested from the allocator.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = requested();
    let r = f();
    (r, requested() - before)
}

/// Runs `f` (a parse of `input_len` received bytes) and panics if it requested more than
/// [`parse_budget`]. `what` names the parser in the message.
pub fn check_parse<T>(what: &str, input_len: usize, f: impl FnOnce() -> T) -> T {
    let (r, used) = measure(f);
    assert!(
        used <= parse_budget(input_len),
        "{what}: {used} bytes allocated parsing {input_len} received bytes (budget {})",
        parse_budget(input_len)
    );
    r
}
