//! The SNP CPUID page (SNP firmware ABI, CPUID function table; Linux `struct
//! snp_cpuid_table`): the CPUID values the PSP checked against the chip at launch.
//! Under SEV-ES a CPUID instruction raises #VC; the SVSM answers it from this table,
//! never from the hypervisor.
//!
//! Layout: u32 count at 0x0, then (from 0x10) `count` entries of 0x30 bytes:
//! eax_in, ecx_in (u32), xcr0_in, xss_in (u64), eax, ebx, ecx, edx (u32), reserved
//! (u64). At most 64 entries.

/// Most entries the page holds.
pub const MAX_ENTRIES: usize = 64;
const ENTRY: usize = 0x30;
const FIRST: usize = 0x10;

/// Why a CPUID page was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuidError {
    /// More than [`MAX_ENTRIES`] entries.
    Count(u32),
    /// No entry for leaf 0x8000_001F (the C-bit position).
    NoMemoryEncryptionLeaf,
    /// The C-bit position is not usable (it must lie in 32..=63).
    CBit(u32),
}

/// A checked copy of the CPUID page.
#[derive(Clone)]
pub struct CpuidTable {
    page: [u8; 4096],
    count: usize,
}

impl core::fmt::Debug for CpuidTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CpuidTable")
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

fn u32_at(p: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&p[at..at + 4]);
    u32::from_le_bytes(b)
}

impl CpuidTable {
    /// Check the page: a count the page can hold and a leaf 0x8000_001F with a usable
    /// C-bit position.
    pub fn parse(page: &[u8; 4096]) -> Result<Self, CpuidError> {
        let count = u32_at(page, 0);
        if count as usize > MAX_ENTRIES {
            return Err(CpuidError::Count(count));
        }
        let t = Self {
            page: *page,
            count: count as usize,
        };
        let Some(r) = t.lookup(0x8000_001F, 0) else {
            return Err(CpuidError::NoMemoryEncryptionLeaf);
        };
        let c = r[1] & 0x3F;
        if !(32..=63).contains(&c) {
            return Err(CpuidError::CBit(c));
        }
        Ok(t)
    }

    /// EAX, EBX, ECX, EDX of `leaf`/`subleaf` (the subleaf counts only for the leaves
    /// that have subleaves: 4, 7, 0xB, 0xD, 0xF, 0x10, 0x8000_001D, 0x8000_0020),
    /// or `None` when the table has no entry.
    pub fn lookup(&self, leaf: u32, subleaf: u32) -> Option<[u32; 4]> {
        let indexed = matches!(
            leaf,
            4 | 7 | 0xB | 0xD | 0xF | 0x10 | 0x8000_001D | 0x8000_0020
        );
        (0..self.count).find_map(|i| {
            let e = &self.page[FIRST + i * ENTRY..FIRST + (i + 1) * ENTRY];
            (u32_at(e, 0) == leaf && (!indexed || u32_at(e, 4) == subleaf)).then(|| {
                [
                    u32_at(e, 0x18),
                    u32_at(e, 0x1C),
                    u32_at(e, 0x20),
                    u32_at(e, 0x24),
                ]
            })
        })
    }

    /// The C-bit position (CPUID 0x8000_001F EBX[5:0]).
    pub fn c_bit(&self) -> u32 {
        self.lookup(0x8000_001F, 0).map_or(0, |r| r[1] & 0x3F)
    }

    /// Answer a CPUID instruction of a CPU whose CR4 is `cr4`: the table's entry, or
    /// all zeros for a leaf the table does not hold (as Linux does for leaves in
    /// range it does not list), with the bits hardware derives from CR4 at the time
    /// of the instruction set as the CPU would (leaf 1 ECX.OSXSAVE from CR4.OSXSAVE,
    /// leaf 7 ECX.OSPKE from CR4.PKE): the table holds the chip's, not this CPU's.
    pub fn cpuid(&self, leaf: u32, subleaf: u32, cr4: u64) -> [u32; 4] {
        let mut r = self.lookup(leaf, subleaf).unwrap_or([0; 4]);
        let set = |v: u32, bit: u32, on: bool| if on { v | bit } else { v & !bit };
        match (leaf, subleaf) {
            (1, _) => r[2] = set(r[2], 1 << 27, cr4 & (1 << 18) != 0),
            (7, 0) => r[2] = set(r[2], 1 << 4, cr4 & (1 << 22) != 0),
            _ => {}
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn page(entries: &[(u32, u32, [u32; 4])]) -> [u8; 4096] {
        let mut p = [0u8; 4096];
        p[..4].copy_from_slice(&(entries.len() as u32).to_le_bytes());
        for (i, (leaf, sub, r)) in entries.iter().enumerate() {
            let e = &mut p[FIRST + i * ENTRY..FIRST + (i + 1) * ENTRY];
            e[0..4].copy_from_slice(&leaf.to_le_bytes());
            e[4..8].copy_from_slice(&sub.to_le_bytes());
            for (k, v) in r.iter().enumerate() {
                e[0x18 + 4 * k..0x1C + 4 * k].copy_from_slice(&v.to_le_bytes());
            }
        }
        p
    }

    #[test]
    fn lookup_and_c_bit() {
        let p = page(&[
            (1, 0, [0xA00F11, 0, 1 << 30, 0]),
            (7, 0, [0, 1, 2, 3]),
            (7, 1, [4, 5, 6, 7]),
            (0x8000_001F, 0, [0xF, 47 | (1 << 6), 0, 0]),
        ]);
        let t = CpuidTable::parse(&p).unwrap();
        assert_eq!(t.c_bit(), 47);
        assert_eq!(t.cpuid(7, 1, 0), [4, 5, 6, 7]);
        assert_eq!(t.cpuid(1, 99, 0), [0xA00F11, 0, 1 << 30, 0]);
        assert_eq!(t.cpuid(0x4000_0000, 0, 0), [0; 4]);
        // OSXSAVE follows CR4.OSXSAVE, whatever the table says.
        assert_eq!(t.cpuid(1, 0, 1 << 18)[2], (1 << 30) | (1 << 27));
        let p = page(&[(1, 0, [0, 0, 1 << 27, 0]), (0x8000_001F, 0, [0, 51, 0, 0])]);
        assert_eq!(CpuidTable::parse(&p).unwrap().cpuid(1, 0, 0)[2], 0);
    }

    #[test]
    fn refusals() {
        let mut p = page(&[(1, 0, [0; 4])]);
        assert_eq!(
            CpuidTable::parse(&p).unwrap_err(),
            CpuidError::NoMemoryEncryptionLeaf
        );
        p[..4].copy_from_slice(&65u32.to_le_bytes());
        assert_eq!(CpuidTable::parse(&p).unwrap_err(), CpuidError::Count(65));
        let p = page(&[(0x8000_001F, 0, [0xF, 12, 0, 0])]);
        assert_eq!(CpuidTable::parse(&p).unwrap_err(), CpuidError::CBit(12));
    }
}
