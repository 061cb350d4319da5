//! The SVSM's GHCB (GHCB specification 56421): one page of SVSM memory made shared
//! with the hypervisor, through which VMPL0 asks the hypervisor for what SEV-ES
//! takes out of its hands: port I/O (the SVSM's log), guest requests to the PSP,
//! AP creation (the guest's VMSA) and SNP_RUN_VMPL.
//!
//! The page is shared, so the hypervisor (and any VMPL of this guest, through a
//! C-bit-clear mapping) may write it at any time: every value read back is read
//! once, volatile, and checked by its user. The SVSM runs with interrupts masked and
//! its #VC handler never uses the GHCB, so no request can interrupt another.

use super::insn::{self, PageSize};
use core::sync::atomic::{AtomicU64, Ordering};
use nitride_protocol::snp::ghcb::{msr, off, valid_bit, PROTOCOL_VERSION_SNP};

/// The GHCB page.
#[repr(C, align(4096))]
pub struct GhcbPage([u8; 4096]);

/// Writable (`.bss`), reached only through raw pointers: the hypervisor writes it.
static mut PAGE: GhcbPage = GhcbPage([0; 4096]);

/// The registered GHCB's guest-physical address (0 before [`init`]).
static REGISTERED: AtomicU64 = AtomicU64::new(0);

/// The GHCB's address: the SVSM's page tables must map it without the C-bit.
pub fn page_address() -> u64 {
    core::ptr::addr_of_mut!(PAGE) as u64
}

/// Why the GHCB could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GhcbError {
    /// PVALIDATE (rescinding the page's validation) failed with this code.
    Rescind(u32),
    /// The page state change to shared was refused (the MSR-protocol response).
    PageStateChange(u64),
    /// The hypervisor did not register the GHCB (its response).
    Register(u64),
}

/// Make the page shared and register it with the hypervisor. Call once, after the
/// SVSM's page tables map the page without the C-bit (and before anything uses it).
pub fn init() -> Result<(), GhcbError> {
    let gpa = page_address();
    // The page was validated with the rest of .bss: rescind it before the host
    // takes it back (SNP: a page is made shared only after it is invalidated).
    insn::pvalidate(gpa, PageSize::Small, false).map_err(GhcbError::Rescind)?;
    let r = insn::msr_protocol(msr::psc(gpa, false));
    if r & 0xFFF != msr::PSC_RESP || r >> 32 != 0 {
        return Err(GhcbError::PageStateChange(r));
    }
    let r = insn::msr_protocol(msr::REG_GPA_REQ | gpa);
    if r != msr::REG_GPA_RESP | gpa {
        return Err(GhcbError::Register(r));
    }
    REGISTERED.store(gpa, Ordering::SeqCst);
    Ok(())
}

/// Whether the GHCB is registered (the log can use it).
pub fn ready() -> bool {
    REGISTERED.load(Ordering::SeqCst) != 0
}

fn ptr(at: usize) -> *mut u8 {
    // The page is static and 4096 bytes long; `at` is a GHCB offset below 4096.
    (page_address() + (at & 0xFFF) as u64) as *mut u8
}

fn write64(at: usize, v: u64) {
    // SAFETY: `ptr` points into the static GHCB page, mapped shared and writable; u64
    // fields are 8-aligned; the page is shared memory, so volatile.
    unsafe { ptr(at).cast::<u64>().write_volatile(v) }
}

/// Read the GHCB field at `at` (a value the hypervisor wrote: untrusted).
pub fn read64(at: usize) -> u64 {
    // SAFETY: as in `write64`.
    unsafe { ptr(at).cast::<u64>().read_volatile() }
}

/// One NAE event through the GHCB page: SW_EXITCODE `code`, SW_EXITINFO1/2, and
/// `fields` (offset, value), each marked valid. Returns SW_EXITINFO1 and 2 as the
/// hypervisor left them (`None` when it did not mark them valid).
pub fn call(code: u64, info1: u64, info2: u64, fields: &[(usize, u64)]) -> Option<(u64, u64)> {
    let gpa = REGISTERED.load(Ordering::SeqCst);
    if gpa == 0 {
        return None;
    }
    let mut bitmap = [0u64; 2];
    let mut set = |at: usize, v: u64| {
        write64(at, v);
        let bit = valid_bit(at);
        bitmap[bit / 64] |= 1 << (bit % 64);
    };
    set(off::SW_EXIT_CODE, code);
    set(off::SW_EXIT_INFO_1, info1);
    set(off::SW_EXIT_INFO_2, info2);
    for &(at, v) in fields {
        set(at, v);
    }
    write64(off::VALID_BITMAP, bitmap[0]);
    write64(off::VALID_BITMAP + 8, bitmap[1]);
    // Protocol version (u16 at 0xFFA) and usage 0 (u32 at 0xFFC).
    write64(0xFF8, PROTOCOL_VERSION_SNP << 16);
    insn::set_ghcb_msr(gpa);
    insn::vmgexit();
    if !(valid(off::SW_EXIT_INFO_1) && valid(off::SW_EXIT_INFO_2)) {
        return None;
    }
    Some((read64(off::SW_EXIT_INFO_1), read64(off::SW_EXIT_INFO_2)))
}

/// Whether the hypervisor marked the field at `at` valid in its answer.
pub fn valid(at: usize) -> bool {
    let bit = valid_bit(at);
    read64(off::VALID_BITMAP + 8 * (bit / 64)) & (1 << (bit % 64)) != 0
}
