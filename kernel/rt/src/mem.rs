//! The symbols a freestanding image must provide itself: the memory functions the
//! compiler calls (written with string instructions so the compiler cannot turn them
//! back into calls to themselves), and the unwinding hooks the precompiled `core`
//! refers to but never reaches with `panic = "abort"`.

/// # Safety
/// The C `memcpy` contract: `n` bytes readable at `src`, writable at `dst`, no overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // Eight bytes per iteration, then the tail: under QEMU's icount every iteration
    // of a string instruction counts as one instruction, so `rep movsq` is an eighth
    // of `rep movsb` for the buffers the calling path moves (docs/benchmarks.md).
    // SAFETY: the caller guarantees both ranges are valid for `n` bytes; `rep movsq`
    // copies the first `n / 8 * 8` bytes forwards and leaves rdi/rsi just past them,
    // where `rep movsb` copies the remaining `n % 8` (DF is clear in all SVSM code).
    unsafe {
        core::arch::asm!(
            "rep movsq",
            "mov rcx, {tail}",
            "rep movsb",
            tail = in(reg) n % 8,
            inout("rcx") n / 8 => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags),
        );
    }
    dst
}

/// # Safety
/// The C `memmove` contract: `n` bytes readable at `src`, writable at `dst`.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize).wrapping_add(n) {
        // SAFETY: forward copy is correct when dst is below src or the ranges are disjoint.
        return unsafe { memcpy(dst, src, n) };
    }
    // SAFETY: overlapping with dst above src: copy backwards from the last byte with
    // DF set, and clear DF again before returning.
    unsafe {
        core::arch::asm!(
            "std", "rep movsb", "cld",
            inout("rcx") n => _,
            inout("rdi") dst.add(n - 1) => _,
            inout("rsi") src.add(n - 1) => _,
            options(nostack),
        );
    }
    dst
}

/// # Safety
/// The C `memset` contract: `n` bytes writable at `dst`.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // The byte in all eight lanes of rax: eight bytes per iteration, then the tail.
    let word = u64::from(c as u8).wrapping_mul(0x0101_0101_0101_0101);
    // SAFETY: the caller guarantees `n` writable bytes at `dst`; `rep stosq` writes
    // the first `n / 8 * 8` and leaves rdi just past them, `rep stosb` the remaining
    // `n % 8` (DF is clear in all SVSM code).
    unsafe {
        core::arch::asm!(
            "rep stosq",
            "mov rcx, {tail}",
            "rep stosb",
            tail = in(reg) n % 8,
            inout("rcx") n / 8 => _,
            inout("rdi") dst => _,
            in("rax") word,
            options(nostack, preserves_flags),
        );
    }
    dst
}

/// # Safety
/// The C `memcmp` contract: `n` bytes readable at `a` and `b`.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: `i < n` and the caller guarantees `n` readable bytes at both
        // pointers; volatile reads keep the compiler from turning the loop into a
        // call to `memcmp`.
        let (x, y) = unsafe { (a.add(i).read_volatile(), b.add(i).read_volatile()) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// As for [`memcmp`].
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// Never called: nothing unwinds with `panic = "abort"`.
#[no_mangle]
pub extern "C" fn rust_eh_personality() {}

/// Never called: nothing unwinds with `panic = "abort"`.
#[no_mangle]
pub extern "C" fn _Unwind_Resume() -> ! {
    crate::halt_forever()
}
