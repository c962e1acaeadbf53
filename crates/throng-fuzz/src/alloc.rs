//! The counting allocator: how many bytes one decode holds at its peak, per thread.
//!
//! A fuzz binary installs [`Counting`] as its global allocator; [`measure`] then reports the peak
//! of the bytes allocated (and not yet freed) by the current thread while a closure runs, so a
//! decoder that reserves what a hostile length prefix announces is caught even if it frees the
//! memory before returning. Counters are per thread, so decoders may be fuzzed on several threads
//! at once.
#![allow(unsafe_code)] // `GlobalAlloc` is an unsafe trait; this forwards every call to `System`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting the bytes each thread holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counting;

thread_local! {
    /// Bytes allocated minus bytes freed by this thread (memory freed by another thread than
    /// the one that allocated it makes this drift; only differences within one closure count).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// The highest `LIVE` since the last [`measure`] started.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn grow(n: usize) {
    // `try_with`: never fails for these const, drop-free cells, but an allocator must not panic.
    let _ = LIVE.try_with(|live| {
        let now = live.get().wrapping_add(n as isize);
        live.set(now);
        let _ = PEAK.try_with(|peak| {
            if now > peak.get() {
                peak.set(now);
            }
        });
    });
}

fn shrink(n: usize) {
    let _ = LIVE.try_with(|live| live.set(live.get().wrapping_sub(n as isize)));
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the counters
// are thread-local cells that never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for `dealloc`; `new_size` is the caller's, per `GlobalAlloc::realloc`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Counted as both blocks at once, as when the block moves.
            grow(new_size);
            shrink(layout.size());
        }
        p
    }
}

/// Run `f`; returns its result and the peak of the bytes this thread held above what it held
/// before, while `f` ran (0 when [`Counting`] is not the global allocator).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let r = f();
    let peak = PEAK.with(Cell::get).wrapping_sub(base);
    (r, usize::try_from(peak).unwrap_or(0))
}

/// Whether [`Counting`] is the global allocator of this program (it counts).
pub fn installed() -> bool {
    let ((), peak) = measure(|| drop(std::hint::black_box(vec![0u8; 4096])));
    peak >= 4096
}
