//! The SVSM's own image in memory: its code and read-only data, the two
//! non-writable PT_LOAD segments the launch measurement covers
//! (`nitride_kernel::measure`). The linker script bounds them with symbols.

use nitride_kernel::measure::{self, Digest384, MeasureError, Segment};

extern "C" {
    static __svsm_text_start: u8;
    static __svsm_text_end: u8;
    static __svsm_rodata_start: u8;
    static __svsm_rodata_end: u8;
}

/// The bytes between two linker symbols.
fn span(start: *const u8, end: *const u8) -> (u64, &'static [u8]) {
    let (s, e) = (start as usize, end as usize);
    let len = e.saturating_sub(s);
    // SAFETY: the linker script places both symbols around one output section
    // (start <= end) of a PT_LOAD segment without write permission, loaded and
    // identity-mapped before entry; nothing writes it while the SVSM runs, so a
    // shared slice of it for 'static is sound.
    let bytes = unsafe { core::slice::from_raw_parts(start, len) };
    (s as u64, bytes)
}

/// SHA-384 of the SVSM's code and read-only data as loaded.
pub fn svsm_digest() -> Result<Digest384, MeasureError> {
    let (tv, text) = span(
        core::ptr::addr_of!(__svsm_text_start),
        core::ptr::addr_of!(__svsm_text_end),
    );
    let (rv, rodata) = span(
        core::ptr::addr_of!(__svsm_rodata_start),
        core::ptr::addr_of!(__svsm_rodata_end),
    );
    measure::svsm_digest(&[
        Segment {
            vaddr: tv,
            bytes: text,
        },
        Segment {
            vaddr: rv,
            bytes: rodata,
        },
    ])
}
