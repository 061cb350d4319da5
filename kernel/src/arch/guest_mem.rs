//! The only code that touches guest memory: copies between SVSM buffers and checked
//! [`GuestRange`]s. On the emulated platform guest-physical addresses equal
//! host-physical ones, and the SVSM's own page tables ([`super::paging`]) map every
//! range of guest RAM, read/write and never executable, wherever it lies (above
//! 4 GiB too): a `GuestRange` is made only from the same memory map the tables were
//! built from, and every copy checks again that its range is mapped.

use super::paging;
use nitride_kernel::memory::GuestRange;
use nitride_kernel::platform::GuestMemoryError;

fn check(range: &GuestRange, len: usize) -> Result<(), GuestMemoryError> {
    if range.len() != len as u64 {
        return Err(GuestMemoryError::LengthMismatch);
    }
    if !paging::maps_guest(range.gpa(), range.len()) {
        return Err(GuestMemoryError::NotMapped);
    }
    Ok(())
}

/// Copy guest memory into `out`.
pub fn read(range: GuestRange, out: &mut [u8]) -> Result<(), GuestMemoryError> {
    check(&range, out.len())?;
    // SAFETY: a GuestRange is non-empty, does not wrap, lies in guest RAM and outside
    // SVSM memory (so it cannot alias any Rust object), and `check` confirmed that
    // the SVSM's page tables map it (identity, read/write). The guest is stopped
    // while the SVSM runs; a volatile copy would add nothing since the bytes are
    // re-validated after the copy anyway.
    unsafe {
        core::ptr::copy_nonoverlapping(range.gpa() as *const u8, out.as_mut_ptr(), out.len())
    };
    Ok(())
}

/// Copy `data` into guest memory.
pub fn write(range: GuestRange, data: &[u8]) -> Result<(), GuestMemoryError> {
    check(&range, data.len())?;
    // SAFETY: as in `read`: the destination is mapped guest RAM that no Rust object
    // lives in.
    unsafe { core::ptr::copy_nonoverlapping(data.as_ptr(), range.gpa() as *mut u8, data.len()) };
    Ok(())
}

/// Zero guest memory, writing only the 4 KiB pages that do not already read as zero
/// (QEMU backs untouched guest RAM with the host's zero page; writing every page
/// would make the host allocate all of it).
pub fn zero(range: GuestRange) -> Result<(), GuestMemoryError> {
    let len = usize::try_from(range.len()).map_err(|_| GuestMemoryError::LengthMismatch)?;
    check(&range, len)?;
    let mut at = range.gpa();
    let end = range.gpa() + range.len();
    while at < end {
        let next = ((at | 0xFFF) + 1).min(end);
        let n = (next - at) as usize;
        // SAFETY: [at, next) lies inside the checked, mapped range (see `read`); the
        // slice lives only for this iteration and nothing else refers to the bytes.
        let bytes = unsafe { core::slice::from_raw_parts_mut(at as *mut u8, n) };
        let zero = match <&[u8; 4096]>::try_from(&*bytes) {
            Ok(page) if at.is_multiple_of(4096) => page_is_zero(page),
            _ => bytes.iter().all(|&b| b == 0),
        };
        if !zero {
            bytes.fill(0);
        }
        at = next;
    }
    Ok(())
}

/// Whether a page-aligned page is all zero: 16-byte SSE2 loads ORed together, eight
/// per step (the scrub reads all of guest RAM at boot, so this is its cost).
fn page_is_zero(page: &[u8; 4096]) -> bool {
    use core::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_load_si128, _mm_movemask_epi8, _mm_or_si128, _mm_setzero_si128,
    };
    let base = page.as_ptr().cast::<__m128i>();
    // SAFETY: SSE2 is part of the x86-64 baseline and enabled at boot (CR4.OSFXSR).
    // The page is 4096-aligned (checked by the caller) and 4096 bytes long; step * 8
    // + i < 256, so each 16-byte load is aligned and in bounds.
    unsafe {
        let mut acc = _mm_setzero_si128();
        for step in 0..32 {
            for i in 0..8 {
                acc = _mm_or_si128(acc, _mm_load_si128(base.add(step * 8 + i)));
            }
        }
        _mm_movemask_epi8(_mm_cmpeq_epi8(acc, _mm_setzero_si128())) == 0xFFFF
    }
}
