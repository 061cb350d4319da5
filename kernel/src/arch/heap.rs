//! The SVSM heap: a fixed region of SVSM memory behind a linked-list allocator,
//! wrapped to count the bytes in use and their high-water mark (requested sizes,
//! not counting the allocator's own rounding).

use super::take_once::TakeOnce;
use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicUsize, Ordering};
use linked_list_allocator::LockedHeap;

/// Heap size.
pub const HEAP_SIZE: usize = 4 << 20;

struct Counting {
    heap: LockedHeap,
    used: AtomicUsize,
    peak: AtomicUsize,
}

// SAFETY: every method forwards to LockedHeap, which upholds the GlobalAlloc
// contract; the counters only observe the sizes passed through.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, which we pass on unchanged.
        let p = unsafe { self.heap.alloc(layout) };
        if !p.is_null() {
            let now = self.used.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `dealloc`'s contract, which we pass on unchanged.
        unsafe { self.heap.dealloc(ptr, layout) };
        self.used.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting {
    heap: LockedHeap::empty(),
    used: AtomicUsize::new(0),
    peak: AtomicUsize::new(0),
};

static HEAP: TakeOnce<[MaybeUninit<u8>; HEAP_SIZE]> =
    TakeOnce::new([MaybeUninit::uninit(); HEAP_SIZE]);

/// Hand the heap region to the allocator. Call once.
pub fn init() {
    if let Some(mem) = HEAP.take() {
        ALLOCATOR.heap.lock().init_from_slice(mem);
    }
}

/// Bytes in use now.
pub fn used() -> usize {
    ALLOCATOR.used.load(Ordering::Relaxed)
}

/// Most bytes ever in use at once.
pub fn peak() -> usize {
    ALLOCATOR.peak.load(Ordering::Relaxed)
}
