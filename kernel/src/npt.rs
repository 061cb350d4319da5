//! Building the nested page tables that define what the guest can reach.
//!
//! Guest-physical addresses map to the same host-physical addresses (identity), but
//! only for guest RAM: the SVSM region, and everything that is not RAM, is simply
//! absent, so any guest access there ends in a nested page fault. Entries use 2 MiB
//! pages where a whole aligned 2 MiB block is guest RAM and 4 KiB pages elsewhere.
//!
//! Pure logic over a [`TablePool`] of page-sized tables, so it is tested on the host;
//! the kernel hands it a pool in SVSM memory.

use crate::memory::{PhysRange, PAGE};

/// One page table: 512 entries.
pub type Table = [u64; 512];

/// Present.
pub const P: u64 = 1 << 0;
/// Writable.
pub const RW: u64 = 1 << 1;
/// User: nested walks count as user accesses, so every nested entry needs it.
pub const US: u64 = 1 << 2;
/// Large page (2 MiB in a page directory).
pub const PS: u64 = 1 << 7;
/// Physical-address bits of an entry.
pub const ADDR_MASK: u64 = 0x000F_FFFF_FFFF_F000;

const SIZE_2M: u64 = 2 << 20;
const SIZE_1G: u64 = 1 << 30;
const SIZE_512G: u64 = 1 << 39;

/// Why the tables could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NptError {
    /// The pool has no free table left.
    PoolExhausted,
    /// A range is not page aligned.
    Unaligned,
    /// A page is already mapped.
    Overlap,
}

/// Page-sized tables in one physically contiguous array at `base_pa`.
#[derive(Debug)]
pub struct TablePool<'a> {
    tables: &'a mut [Table],
    base_pa: u64,
    used: usize,
}

impl<'a> TablePool<'a> {
    /// A pool over `tables`, the first of which is at physical address `base_pa`.
    /// Tables are cleared as they are handed out.
    pub fn new(tables: &'a mut [Table], base_pa: u64) -> Self {
        Self {
            tables,
            base_pa,
            used: 0,
        }
    }

    /// Number of tables handed out.
    pub fn used(&self) -> usize {
        self.used
    }

    fn alloc(&mut self) -> Result<usize, NptError> {
        let t = self
            .tables
            .get_mut(self.used)
            .ok_or(NptError::PoolExhausted)?;
        t.fill(0);
        self.used += 1;
        Ok(self.used - 1)
    }

    fn pa(&self, index: usize) -> u64 {
        self.base_pa + index as u64 * PAGE
    }

    fn index_of(&self, pa: u64) -> usize {
        ((pa - self.base_pa) / PAGE) as usize
    }

    /// The table an entry points to, allocating it when the entry is empty.
    fn child(&mut self, table: usize, slot: usize) -> Result<usize, NptError> {
        let entry = self.tables[table][slot];
        if entry & P != 0 {
            if entry & PS != 0 {
                return Err(NptError::Overlap);
            }
            return Ok(self.index_of(entry & ADDR_MASK));
        }
        let child = self.alloc()?;
        self.tables[table][slot] = self.pa(child) | P | RW | US;
        Ok(child)
    }

    /// The physical address of table `index` (the root is index 0).
    pub fn table_pa(&self, index: usize) -> u64 {
        self.pa(index)
    }

    /// Read an entry, for inspection and tests.
    pub fn entry(&self, table: usize, slot: usize) -> u64 {
        self.tables[table][slot]
    }
}

/// Build identity-mapping tables for `ranges` (page aligned, non-overlapping);
/// returns the physical address of the root (PML4), which is table 0 of the pool.
pub fn build_identity(pool: &mut TablePool<'_>, ranges: &[PhysRange]) -> Result<u64, NptError> {
    let root = pool.alloc()?;
    for r in ranges {
        if r.start % PAGE != 0 || r.end % PAGE != 0 {
            return Err(NptError::Unaligned);
        }
        let mut addr = r.start;
        while addr < r.end {
            let pml4e = ((addr / SIZE_512G) % 512) as usize;
            let pdpte = ((addr / SIZE_1G) % 512) as usize;
            let pde = ((addr / SIZE_2M) % 512) as usize;
            let pdpt = pool.child(root, pml4e)?;
            let pd = pool.child(pdpt, pdpte)?;
            let big = addr % SIZE_2M == 0 && r.end - addr >= SIZE_2M;
            if big {
                if pool.tables[pd][pde] & P != 0 {
                    return Err(NptError::Overlap);
                }
                pool.tables[pd][pde] = addr | P | RW | US | PS;
                addr += SIZE_2M;
            } else {
                let pt = pool.child(pd, pde)?;
                let pte = ((addr / PAGE) % 512) as usize;
                if pool.tables[pt][pte] & P != 0 {
                    return Err(NptError::Overlap);
                }
                pool.tables[pt][pte] = addr | P | RW | US;
                addr += PAGE;
            }
        }
    }
    Ok(pool.table_pa(root))
}

/// Walk tables built by [`build_identity`]: the physical address `gpa` maps to, or
/// `None` when unmapped. For tests and self-checks.
pub fn translate(pool: &TablePool<'_>, gpa: u64) -> Option<u64> {
    let mut table = 0usize;
    let shifts = [39u32, 30, 21, 12];
    for (level, shift) in shifts.iter().enumerate() {
        let e = pool.tables[table][((gpa >> shift) & 511) as usize];
        if e & P == 0 {
            return None;
        }
        if level == 3 || e & PS != 0 {
            let size = 1u64 << shift;
            return Some((e & ADDR_MASK & !(size - 1)) | (gpa & (size - 1)));
        }
        table = pool.index_of(e & ADDR_MASK);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;

    #[test]
    fn maps_ram_and_leaves_holes() {
        let mut tables = vec![[0u64; 512]; 32];
        let mut pool = TablePool::new(&mut tables, 0x100_0000);
        let ram = [
            PhysRange {
                start: 0,
                end: 0x9_F000,
            },
            PhysRange {
                start: 0x10_0000,
                end: 0x100_0000,
            },
            PhysRange {
                start: 0x200_0000,
                end: 0x2000_0000,
            },
        ];
        let root = build_identity(&mut pool, &ram).unwrap();
        assert_eq!(root, 0x100_0000);
        for gpa in [
            0u64,
            0x9_EFFF,
            0x10_0000,
            0x1F_FFFF,
            0x20_0000,
            0xFF_FFFF,
            0x200_0000,
            0x1FFF_FFFF,
        ] {
            assert_eq!(translate(&pool, gpa), Some(gpa), "{gpa:#x}");
        }
        for gpa in [
            0x9_F000u64,
            0xA_0000,
            0xF_FFFF,
            0x100_0000,
            0x180_0000,
            0x1FF_FFFF,
            0x2000_0000,
        ] {
            assert_eq!(translate(&pool, gpa), None, "{gpa:#x}");
        }
        // First 2 MiB needs a 4 KiB table; the rest are 2 MiB pages.
        assert_eq!(pool.used(), 4);
        let pd =
            pool.index_of(pool.entry(pool.index_of(pool.entry(0, 0) & ADDR_MASK), 0) & ADDR_MASK);
        assert_eq!(pool.entry(pd, 1), 0x20_0000 | P | RW | US | PS);
        assert_eq!(pool.entry(pd, 8), 0);
        // Every entry on the way is user-accessible (nested walks are user accesses).
        assert_eq!(pool.entry(0, 0) & US, US);
    }

    #[test]
    fn errors() {
        let mut tables = vec![[0u64; 512]; 2];
        let mut pool = TablePool::new(&mut tables, 0);
        assert_eq!(
            build_identity(
                &mut pool,
                &[PhysRange {
                    start: 0,
                    end: 0x1000
                }]
            ),
            Err(NptError::PoolExhausted)
        );
        let mut tables = vec![[0u64; 512]; 8];
        let mut pool = TablePool::new(&mut tables, 0);
        assert_eq!(
            build_identity(
                &mut pool,
                &[PhysRange {
                    start: 0x800,
                    end: 0x1000
                }]
            ),
            Err(NptError::Unaligned)
        );
        let mut tables = vec![[0u64; 512]; 8];
        let mut pool = TablePool::new(&mut tables, 0);
        let r = PhysRange {
            start: 0x20_0000,
            end: 0x40_0000,
        };
        assert_eq!(build_identity(&mut pool, &[r, r]), Err(NptError::Overlap));
    }
}
