//! The only code that touches guest memory on SNP: copies between SVSM buffers and
//! checked [`GuestRange`]s through the SVSM's own page tables, which map every range
//! of guest RAM private (C-bit set), read/write and never executable.
//!
//! A guest range is guest RAM, but not necessarily a page the guest validated: the
//! guest may name a page it never validated, or one it made shared (the SVSM's
//! private access then makes the host convert it back, unvalidated). The access
//! raises #VC 0x404; the copy is one `rep movsb` whose address the #VC handler knows
//! ([`fixup`]), so the copy stops there and the caller gets
//! [`GuestMemoryError::NotValidated`] instead of a fatal exception.

use super::super::paging;
use nitride_kernel::memory::GuestRange;
use nitride_kernel::platform::GuestMemoryError;

core::arch::global_asm!(
    r#"
    .section .text.guest_copy, "ax", @progbits
    .global nitride_guest_copy
    .global nitride_guest_copy_insn
    .global nitride_guest_copy_fault
    /* rdi = destination, rsi = source, rdx = length; rax = 0, or 1 after a #VC. */
nitride_guest_copy:
    movq %rdx, %rcx
nitride_guest_copy_insn:
    rep movsb
    xorl %eax, %eax
    ret
nitride_guest_copy_fault:
    movl $1, %eax
    ret
    "#,
    options(att_syntax)
);

extern "C" {
    fn nitride_guest_copy(dst: *mut u8, src: *const u8, len: usize) -> u64;
    fn nitride_guest_copy_insn();
    fn nitride_guest_copy_fault();
}

/// Where a #VC 0x404 at `rip` resumes: the copy's failure exit when `rip` is the
/// copy instruction, else `None`.
pub fn fixup(rip: u64) -> Option<u64> {
    (rip == nitride_guest_copy_insn as *const () as u64)
        .then_some(nitride_guest_copy_fault as *const () as u64)
}

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
    // SVSM memory (so it cannot alias any Rust object), and `check` confirmed that the
    // SVSM's page tables map it. The copy either completes or stops at a page the
    // guest did not validate (#VC, resumed at the failure exit). The guest is stopped
    // while the SVSM runs.
    match unsafe { nitride_guest_copy(out.as_mut_ptr(), range.gpa() as *const u8, out.len()) } {
        0 => Ok(()),
        _ => Err(GuestMemoryError::NotValidated),
    }
}

/// Copy `data` into guest memory.
pub fn write(range: GuestRange, data: &[u8]) -> Result<(), GuestMemoryError> {
    check(&range, data.len())?;
    // SAFETY: as in `read`: the destination is mapped guest RAM that no Rust object
    // lives in.
    match unsafe { nitride_guest_copy(range.gpa() as *mut u8, data.as_ptr(), data.len()) } {
        0 => Ok(()),
        _ => Err(GuestMemoryError::NotValidated),
    }
}

/// Copy SVSM-prepared bytes into a page of guest memory the SVSM validated itself
/// (boot: the guest's fixed pages).
pub fn write_page(gpa: u64, data: &[u8; 4096]) -> Result<(), GuestMemoryError> {
    if !paging::maps_guest(gpa, 4096) {
        return Err(GuestMemoryError::NotMapped);
    }
    // SAFETY: as in `write`: a page of mapped guest RAM, outside SVSM memory.
    match unsafe { nitride_guest_copy(gpa as *mut u8, data.as_ptr(), 4096) } {
        0 => Ok(()),
        _ => Err(GuestMemoryError::NotValidated),
    }
}
