//! The only code that touches guest memory: copies between SVSM buffers and checked
//! [`GuestRange`]s. On the emulated platform guest-physical addresses equal
//! host-physical ones and the SVSM's page tables identity-map the first 4 GiB.

use nitride_kernel::memory::GuestRange;
use nitride_kernel::platform::GuestMemoryError;

const IDENTITY_LIMIT: u64 = 1 << 32;

fn check(range: &GuestRange, len: usize) -> Result<(), GuestMemoryError> {
    if range.len() != len as u64 || range.gpa() + range.len() > IDENTITY_LIMIT {
        return Err(GuestMemoryError::LengthMismatch);
    }
    Ok(())
}

/// Copy guest memory into `out`.
pub fn read(range: GuestRange, out: &mut [u8]) -> Result<(), GuestMemoryError> {
    check(&range, out.len())?;
    // SAFETY: a GuestRange is non-empty, does not wrap, lies in guest RAM and outside
    // SVSM memory (so it cannot alias any Rust object), and is below 4 GiB, which the
    // SVSM identity-maps. The guest is stopped while the SVSM runs; a volatile copy
    // would add nothing since the bytes are re-validated after the copy anyway.
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
