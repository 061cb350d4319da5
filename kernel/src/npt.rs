//! Building identity-mapping page tables: the SVSM's own page tables.
//!
//! They use [`map_identity`] with per-range permissions (text
//! read/execute, read-only data and every writable page no-execute, guard pages
//! left out) and, where the CPU has them, 1 GiB pages for guest RAM.
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
/// Large page (2 MiB in a page directory, 1 GiB in a PDPT).
pub const PS: u64 = 1 << 7;
/// No-execute (needs EFER.NXE).
pub const NX: u64 = 1 << 63;
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
    /// The root table was not the first table of the pool.
    NoRoot,
}

/// The largest leaf pages a mapping may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSizes {
    /// 4 KiB pages only.
    Small,
    /// 4 KiB and 2 MiB pages.
    Large,
    /// 4 KiB, 2 MiB and 1 GiB pages.
    Huge,
}

/// Page-sized tables in one physically contiguous array at `base_pa`.
#[derive(Debug)]
pub struct TablePool<'a> {
    tables: &'a mut [Table],
    base_pa: u64,
    used: usize,
    /// Entry bits that are not address bits although they lie in [`ADDR_MASK`] (the
    /// SNP C-bit).
    not_address: u64,
}

impl<'a> TablePool<'a> {
    /// A pool over `tables`, the first of which is at physical address `base_pa`.
    /// Tables are cleared as they are handed out.
    pub fn new(tables: &'a mut [Table], base_pa: u64) -> Self {
        Self {
            tables,
            base_pa,
            used: 0,
            not_address: 0,
        }
    }

    /// The same pool for tables whose entries carry `bits` (the SNP C-bit) besides
    /// the address: they are not part of the address when an entry is followed.
    pub fn with_encryption_bit(mut self, bits: u64) -> Self {
        self.not_address = bits;
        self
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

    /// The table an entry points to, allocating it (with entry flags `flags`) when
    /// the entry is empty.
    fn child(&mut self, table: usize, slot: usize, flags: u64) -> Result<usize, NptError> {
        let entry = self.tables[table][slot];
        if entry & P != 0 {
            if entry & PS != 0 {
                return Err(NptError::Overlap);
            }
            return Ok(self.index_of(entry & ADDR_MASK & !self.not_address));
        }
        let child = self.alloc()?;
        self.tables[table][slot] = self.pa(child) | flags;
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

/// Start a set of tables: allocate the root (PML4), which must be the pool's first
/// table, and return its physical address.
pub fn new_root(pool: &mut TablePool<'_>) -> Result<u64, NptError> {
    if pool.used != 0 {
        return Err(NptError::NoRoot);
    }
    let root = pool.alloc()?;
    Ok(pool.table_pa(root))
}

/// Identity-map `range` (page aligned) in the tables rooted at the pool's first
/// table: leaf entries get `leaf` (with [`PS`] added for large pages), tables created
/// on the way get `table`. Leaves are as large as `sizes` allows and alignment
/// permits.
pub fn map_identity(
    pool: &mut TablePool<'_>,
    range: PhysRange,
    leaf: u64,
    table: u64,
    sizes: PageSizes,
) -> Result<(), NptError> {
    if pool.used == 0 {
        return Err(NptError::NoRoot);
    }
    if !range.start.is_multiple_of(PAGE) || !range.end.is_multiple_of(PAGE) {
        return Err(NptError::Unaligned);
    }
    let root = 0;
    let mut addr = range.start;
    while addr < range.end {
        let pml4e = ((addr / SIZE_512G) % 512) as usize;
        let pdpte = ((addr / SIZE_1G) % 512) as usize;
        let pde = ((addr / SIZE_2M) % 512) as usize;
        let left = range.end - addr;
        let pdpt = pool.child(root, pml4e, table)?;
        if sizes == PageSizes::Huge && addr.is_multiple_of(SIZE_1G) && left >= SIZE_1G {
            if pool.tables[pdpt][pdpte] & P != 0 {
                return Err(NptError::Overlap);
            }
            pool.tables[pdpt][pdpte] = addr | leaf | PS;
            addr += SIZE_1G;
            continue;
        }
        let pd = pool.child(pdpt, pdpte, table)?;
        if sizes != PageSizes::Small && addr.is_multiple_of(SIZE_2M) && left >= SIZE_2M {
            if pool.tables[pd][pde] & P != 0 {
                return Err(NptError::Overlap);
            }
            pool.tables[pd][pde] = addr | leaf | PS;
            addr += SIZE_2M;
        } else {
            let pt = pool.child(pd, pde, table)?;
            let pte = ((addr / PAGE) % 512) as usize;
            if pool.tables[pt][pte] & P != 0 {
                return Err(NptError::Overlap);
            }
            pool.tables[pt][pte] = addr | leaf;
            addr += PAGE;
        }
    }
    Ok(())
}

/// The leaf entry that maps `addr` in tables built here, or `None` when unmapped.
pub fn leaf_entry(pool: &TablePool<'_>, addr: u64) -> Option<u64> {
    let mut table = 0usize;
    for (level, shift) in [39u32, 30, 21, 12].iter().enumerate() {
        let e = pool.tables[table][((addr >> shift) & 511) as usize];
        if e & P == 0 {
            return None;
        }
        if level == 3 || e & PS != 0 {
            return Some(e);
        }
        table = pool.index_of(e & ADDR_MASK);
    }
    None
}

/// Walk identity tables: the physical address `gpa` maps to, or
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

    /// Identity tables for `ranges`, every entry present, writable and user (the
    /// shape the tests walk).
    fn build_identity(pool: &mut TablePool<'_>, ranges: &[PhysRange]) -> Result<u64, NptError> {
        let root = new_root(pool)?;
        for r in ranges {
            map_identity(pool, *r, P | RW | US, P | RW | US, PageSizes::Large)?;
        }
        Ok(root)
    }

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
    fn permissions_and_page_sizes() {
        let mut tables = vec![[0u64; 512]; 16];
        let mut pool = TablePool::new(&mut tables, 0x100_0000);
        new_root(&mut pool).unwrap();
        let text = PhysRange {
            start: 0x100_0000,
            end: 0x100_2000,
        };
        let data = PhysRange {
            start: 0x100_3000,
            end: 0x100_4000,
        };
        let ram = PhysRange {
            start: 0x4000_0000,
            end: 0xC020_0000,
        };
        map_identity(&mut pool, text, P, P | RW, PageSizes::Huge).unwrap();
        map_identity(&mut pool, data, P | RW | NX, P | RW, PageSizes::Huge).unwrap();
        map_identity(&mut pool, ram, P | RW | NX, P | RW, PageSizes::Huge).unwrap();
        assert_eq!(leaf_entry(&pool, 0x100_1FFF), Some(0x100_1000 | P));
        // The page between text and data (a guard) stays unmapped.
        assert_eq!(leaf_entry(&pool, 0x100_2000), None);
        assert_eq!(
            leaf_entry(&pool, 0x100_3000),
            Some(0x100_3000 | P | RW | NX)
        );
        // Two whole GiB as 1 GiB pages, the last 2 MiB as a 2 MiB page.
        assert_eq!(
            leaf_entry(&pool, 0x7FFF_FFFF),
            Some(0x4000_0000 | P | RW | NX | PS)
        );
        assert_eq!(
            leaf_entry(&pool, 0xC010_0000),
            Some(0xC000_0000 | P | RW | NX | PS)
        );
        assert_eq!(translate(&pool, 0x8123_4567), Some(0x8123_4567));
        assert_eq!(leaf_entry(&pool, 0xC020_0000), None);
        // Intermediate entries carry the table flags, never NX.
        assert_eq!(pool.entry(0, 0) & (NX | US), 0);
        assert_eq!(
            map_identity(&mut pool, data, P, P, PageSizes::Small),
            Err(NptError::Overlap)
        );
        let mut empty = vec![[0u64; 512]; 2];
        let mut no_root = TablePool::new(&mut empty, 0);
        assert_eq!(
            map_identity(&mut no_root, data, P, P, PageSizes::Small),
            Err(NptError::NoRoot)
        );
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
