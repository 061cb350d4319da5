//! The SVSM's own page tables: W^X, guard pages, and every page of guest RAM.
//!
//! Boot starts on a bootstrap mapping (the first 4 GiB, read/write/execute, built by
//! `snp/boot.rs`). [`init`] replaces it, before the guest exists and before anything
//! but the IGVM launch pages has been read, with identity-mapping tables that hold:
//!
//! - the SVSM's text read+execute; its read-only data read-only and no-execute; its
//!   data and bss (heap, stacks, page tables, VMCBs) read/write and no-execute,
//!   except the guard page under each stack, which is not mapped;
//! - every range of guest RAM, wherever it lies (above 4 GiB too), read/write and
//!   no-execute: the SVSM reaches guest memory only through `guest_mem`, and can
//!   never run it;
//! - nothing else: no MMIO, no unused part of the SVSM region.
//!
//! With CR0.WP set (boot), no write to code or read-only data and no instruction
//! fetch from writable memory or guest RAM can succeed; each faults into the SVSM's
//! exception report.

use super::take_once::{phys, TakeOnce};
use nitride_kernel::memory::{GuestMemoryMap, PhysRange, PAGE};
use nitride_kernel::npt::{self, NptError, PageSizes, Table, TablePool, NX, P, RW};
use spin::Once;

/// Page-table pages for the SVSM's own tables. The SVSM region needs a handful;
/// guest RAM needs one page directory per GiB that is not a whole 1 GiB page (or per
/// GiB when the CPU has no 1 GiB pages): 80 pages cover 64 GiB even then.
const TABLES: usize = 80;

/// The table pages (page aligned, as the CPU requires).
#[repr(C, align(4096))]
struct Tables([Table; TABLES]);

static POOL: TakeOnce<Tables> = TakeOnce::new(Tables([[0; 512]; TABLES]));

/// Guest RAM as mapped, for [`maps_guest`].
static GUEST_RAM: Once<GuestMemoryMap> = Once::new();

extern "C" {
    static __svsm_text_start: u8;
    static __svsm_rodata_start: u8;
    static __svsm_data_start: u8;
    static __svsm_image_end: u8;
    static nitride_stack_guards: [u64; 5];
}

/// Why the tables could not be built.
#[allow(
    dead_code,
    reason = "fields are read through Debug in the fatal report"
)]
#[derive(Clone, Copy, Debug)]
pub enum PagingError {
    /// Called twice.
    AlreadyInitialised,
    /// Building the tables failed (e.g. the pool of [`TABLES`] pages is too small for
    /// this much guest RAM).
    Tables(NptError),
    /// More guard pages and shared ranges than the tables builder takes.
    TooManyHoles,
}

impl From<NptError> for PagingError {
    fn from(e: NptError) -> Self {
        Self::Tables(e)
    }
}

/// What [`init`] built.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Text, rodata, data+bss (start, end), in that order.
    pub text: PhysRange,
    /// Read-only data.
    pub rodata: PhysRange,
    /// Data and bss.
    pub data: PhysRange,
    /// Guard pages left out.
    pub guards: usize,
    /// Table pages used.
    pub tables: usize,
    /// Whether guest RAM uses 1 GiB pages.
    pub huge_pages: bool,
}

fn addr(sym: *const u8) -> u64 {
    sym as u64
}

fn page_up(a: u64) -> u64 {
    (a + PAGE - 1) & !(PAGE - 1)
}

/// Build the SVSM's page tables for its image and `map`'s guest RAM and switch to
/// them. Call once, before the guest is prepared.
///
/// `enc` is the C-bit (SNP: set in every entry that maps private memory, which is
/// everything but `shared`). `shared` are page ranges of
/// the SVSM's data that it shares with the hypervisor (the GHCB, the guest-request
/// pages): mapped read/write, no-execute and without the C-bit.
pub fn init(map: &GuestMemoryMap, enc: u64, shared: &[PhysRange]) -> Result<Layout, PagingError> {
    let tables = &mut POOL.take().ok_or(PagingError::AlreadyInitialised)?.0;
    let base = phys(tables);
    let mut pool = TablePool::new(tables, base).with_encryption_bit(enc);
    let root = npt::new_root(&mut pool)?;

    let text = PhysRange {
        start: addr(core::ptr::addr_of!(__svsm_text_start)),
        end: addr(core::ptr::addr_of!(__svsm_rodata_start)),
    };
    let rodata = PhysRange {
        start: text.end,
        end: addr(core::ptr::addr_of!(__svsm_data_start)),
    };
    let data = PhysRange {
        start: rodata.end,
        end: page_up(addr(core::ptr::addr_of!(__svsm_image_end))),
    };
    let table = P | RW | enc;
    npt::map_identity(&mut pool, text, P | enc, table, PageSizes::Small)?;
    npt::map_identity(&mut pool, rodata, P | NX | enc, table, PageSizes::Small)?;
    // SAFETY: `nitride_stack_guards` is an immutable table of five addresses
    // defined in the boot code's assembly.
    let guards = unsafe { &nitride_stack_guards };
    // Holes in the private data mapping: the guard pages (never mapped) and the
    // shared ranges (mapped below, without the C-bit), in address order.
    let mut holes: heapless::Vec<PhysRange, 16> = heapless::Vec::new();
    for &g in guards.iter() {
        holes
            .push(PhysRange {
                start: g,
                end: g + PAGE,
            })
            .map_err(|_| PagingError::TooManyHoles)?;
    }
    for r in shared {
        holes.push(*r).map_err(|_| PagingError::TooManyHoles)?;
    }
    holes.sort_unstable_by_key(|h| h.start);
    let mut at = data.start;
    for hole in holes.iter().chain(core::iter::once(&PhysRange {
        start: data.end,
        end: data.end,
    })) {
        if hole.start > at {
            npt::map_identity(
                &mut pool,
                PhysRange {
                    start: at,
                    end: hole.start,
                },
                P | RW | NX | enc,
                table,
                PageSizes::Small,
            )?;
        }
        at = at.max(hole.end);
    }
    for r in shared {
        npt::map_identity(&mut pool, *r, P | RW | NX, table, PageSizes::Small)?;
    }

    let huge_pages = core::arch::x86_64::__cpuid(0x8000_0001).edx & (1 << 26) != 0;
    let sizes = if huge_pages {
        PageSizes::Huge
    } else {
        PageSizes::Large
    };
    for r in map.ram() {
        npt::map_identity(&mut pool, *r, P | RW | NX | enc, table, sizes)?;
    }
    let used = pool.used();
    // SAFETY: the new tables map the code running now (text), its stack (data) and
    // everything the SVSM refers to afterwards: its image with the permissions above
    // and guest RAM. Nothing refers to the bootstrap mapping's other pages. Writing
    // CR3 also flushes the bootstrap mapping's TLB entries (no global pages are
    // used). With `enc`, the root table is private too.
    unsafe {
        core::arch::asm!("mov cr3, {}", in(reg) root | enc, options(nostack, preserves_flags));
    }
    GUEST_RAM.call_once(|| map.clone());
    Ok(Layout {
        text,
        rodata,
        data,
        guards: guards.len(),
        tables: used,
        huge_pages,
    })
}

/// Whether `[gpa, gpa + len)` lies in guest RAM as the SVSM's page tables map it.
pub fn maps_guest(gpa: u64, len: u64) -> bool {
    let Some(end) = gpa.checked_add(len) else {
        return false;
    };
    let want = PhysRange { start: gpa, end };
    GUEST_RAM
        .get()
        .is_some_and(|m| m.ram().iter().any(|r| r.contains(&want)))
}

/// The guard page under the boot stack (for the fault-injection tests).
#[cfg(feature = "fault-injection")]
pub fn boot_stack_guard() -> u64 {
    // SAFETY: as in `init`: an immutable table defined in boot.rs.
    unsafe { nitride_stack_guards[0] }
}
