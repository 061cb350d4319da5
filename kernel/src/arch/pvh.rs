//! Reading the PVH `hvm_start_info` the loader left in low memory: the memory map,
//! the first module (the guest image) and the command line. These are host-supplied
//! boot data, read once before any guest runs; every count and length is bounded.

use heapless::Vec;
use nitride_kernel::memory::PhysRange;

const MAGIC: u32 = 0x336E_C578;
const MAX_MEMMAP: u32 = 128;
const CMDLINE_MAX: usize = 4096;
const RAM_TYPE: u32 = 1;

/// What the loader told us.
#[derive(Debug)]
pub struct BootInfo {
    /// RAM ranges (memory-map type 1).
    pub ram: Vec<PhysRange, 32>,
    /// The guest image, if a module was given.
    pub module: Option<PhysRange>,
    /// The command line.
    pub cmdline: Vec<u8, CMDLINE_MAX>,
}

/// Why the start info was refused.
#[allow(
    dead_code,
    reason = "fields are read through Debug in the fatal report"
)]
#[derive(Clone, Copy, Debug)]
pub enum PvhError {
    /// Wrong magic.
    BadMagic(u32),
    /// Version 0 start info carries no memory map.
    NoMemoryMap,
    /// More RAM ranges than we track.
    TooManyRanges,
    /// A module's range overflows.
    BadModule,
}

/// Read `len` bytes of physical memory below 4 GiB (identity mapped by boot).
fn read_phys(pa: u64, out: &mut [u8]) {
    let end = pa.saturating_add(out.len() as u64);
    if pa == 0 || end > 1 << 32 {
        out.fill(0);
        return;
    }
    // SAFETY: [pa, end) is below 4 GiB, which the boot page tables identity-map; the
    // loader's data there is plain bytes and nothing else writes it while we copy.
    unsafe { core::ptr::copy_nonoverlapping(pa as *const u8, out.as_mut_ptr(), out.len()) }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parse the start info at `pa`.
pub fn read(pa: u32) -> Result<BootInfo, PvhError> {
    let mut si = [0u8; 56];
    read_phys(u64::from(pa), &mut si);
    let magic = u32_at(&si, 0);
    if magic != MAGIC {
        return Err(PvhError::BadMagic(magic));
    }
    if u32_at(&si, 4) < 1 {
        return Err(PvhError::NoMemoryMap);
    }
    let nr_modules = u32_at(&si, 12);
    let modlist = u64_at(&si, 16);
    let cmdline_pa = u64_at(&si, 24);
    let memmap = u64_at(&si, 40);
    let entries = u32_at(&si, 48).min(MAX_MEMMAP);

    let mut ram = Vec::new();
    for i in 0..u64::from(entries) {
        let mut e = [0u8; 24];
        // An address that overflows reads as absent (read_phys refuses 0).
        read_phys(memmap.checked_add(i * 24).unwrap_or(0), &mut e);
        if u32_at(&e, 16) != RAM_TYPE {
            continue;
        }
        let start = u64_at(&e, 0);
        if let Some(r) = start
            .checked_add(u64_at(&e, 8))
            .and_then(|end| PhysRange::new(start, end))
        {
            ram.push(r).map_err(|_| PvhError::TooManyRanges)?;
        }
    }

    let module = if nr_modules > 0 {
        let mut m = [0u8; 32];
        read_phys(modlist, &mut m);
        let start = u64_at(&m, 0);
        let end = start
            .checked_add(u64_at(&m, 8))
            .ok_or(PvhError::BadModule)?;
        Some(PhysRange::new(start, end).ok_or(PvhError::BadModule)?)
    } else {
        None
    };

    let mut cmdline = Vec::new();
    if cmdline_pa != 0 {
        let mut buf = [0u8; CMDLINE_MAX];
        read_phys(cmdline_pa, &mut buf);
        let len = buf.iter().position(|&b| b == 0).unwrap_or(CMDLINE_MAX);
        let _ = cmdline.extend_from_slice(&buf[..len]);
    }
    Ok(BootInfo {
        ram,
        module,
        cmdline,
    })
}
