//! Statically allocated buffers handed out once as `&'static mut`.
//!
//! Large SVSM-owned memory (heap, stacks, VMCBs, page tables) lives in `.bss` inside
//! the SVSM region. [`TakeOnce::take`] gives out the unique mutable reference to
//! such a buffer at most once, so the rest of the kernel uses ordinary safe borrows.

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

/// A value that can be borrowed mutably for `'static` exactly once.
pub struct TakeOnce<T> {
    taken: AtomicBool,
    value: UnsafeCell<T>,
}

// SAFETY: the only access to `value` is through `take`, which the atomic flag
// lets succeed once, so no two references to `value` ever exist; sending that one
// reference to another CPU is fine when `T: Send`.
unsafe impl<T: Send> Sync for TakeOnce<T> {}

impl<T> TakeOnce<T> {
    /// Wrap `value`.
    pub const fn new(value: T) -> Self {
        Self {
            taken: AtomicBool::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// The unique `&'static mut`, or `None` if it was taken before.
    #[allow(
        clippy::mut_from_ref,
        reason = "the atomic flag makes the returned borrow unique"
    )]
    pub fn take(&'static self) -> Option<&'static mut T> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: the flag was false, so this is the first and only call that gets
        // here; no other reference to `value` exists or will ever be created.
        Some(unsafe { &mut *self.value.get() })
    }
}

/// The physical address of SVSM memory: the SVSM identity-maps its region.
pub fn phys<T: ?Sized>(r: &T) -> u64 {
    r as *const T as *const u8 as u64
}
