//! The SVSM heap: a fixed region of SVSM memory behind a linked-list allocator.

use super::take_once::TakeOnce;
use core::mem::MaybeUninit;
use linked_list_allocator::LockedHeap;

/// Heap size.
pub const HEAP_SIZE: usize = 4 << 20;

#[global_allocator]
static ALLOCATOR: LockedHeap = LockedHeap::empty();

static HEAP: TakeOnce<[MaybeUninit<u8>; HEAP_SIZE]> =
    TakeOnce::new([MaybeUninit::uninit(); HEAP_SIZE]);

/// Hand the heap region to the allocator. Call once.
pub fn init() {
    if let Some(mem) = HEAP.take() {
        ALLOCATOR.lock().init_from_slice(mem);
    }
}

/// Bytes in use now.
pub fn used() -> usize {
    ALLOCATOR.lock().used()
}
