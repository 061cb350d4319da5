//! Guest RAM on SNP: the host's IGVM memory map (a parameter page, not measured, so
//! hostile input) checked and cut down to what the guest may name.
//!
//! The map only says where the host put RAM; the RMP decides what is private and
//! validated. What the SVSM takes from it: the RAM ranges, page aligned, sorted, not
//! overlapping; minus the low megabyte (the SNP secrets and CPUID pages, the
//! parameter pages, the launch configuration: the SVSM's alone) and minus the SVSM's
//! own region, which [`GuestMemoryMap`] cuts out.

use crate::memory::{GuestMemoryMap, MapError, PhysRange, MAX_RANGES, PAGE};
use nitride_protocol::snp::launch::{
    gpa::LOW_RESERVED_END, MEMORY_MAP_ENTRY_SIZE, MEMORY_MAP_TYPE_MEMORY,
};

/// Why the memory map was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryMapError {
    /// An entry's page range wraps or is empty (its index).
    Entry(usize),
    /// Entries overlap or are not sorted (index of the second).
    Order(usize),
    /// More RAM ranges than the SVSM tracks.
    TooMany,
    /// The SVSM region is not inside the RAM the map describes.
    Map(MapError),
}

/// The RAM ranges of an IGVM memory-map page (entries until the first with zero
/// pages), then the guest memory map around `svsm`.
pub fn guest_memory(page: &[u8; 4096], svsm: PhysRange) -> Result<GuestMemoryMap, MemoryMapError> {
    let mut ram: heapless::Vec<PhysRange, MAX_RANGES> = heapless::Vec::new();
    let mut last_end = 0u64;
    for (i, e) in page.chunks_exact(MEMORY_MAP_ENTRY_SIZE).enumerate() {
        let u64_at = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&e[at..at + 8]);
            u64::from_le_bytes(b)
        };
        let (first, count) = (u64_at(0), u64_at(8));
        if count == 0 {
            break;
        }
        let ty = u16::from_le_bytes([e[16], e[17]]);
        let start = first.checked_mul(PAGE).ok_or(MemoryMapError::Entry(i))?;
        let end = first
            .checked_add(count)
            .and_then(|p| p.checked_mul(PAGE))
            .ok_or(MemoryMapError::Entry(i))?;
        if start < last_end {
            return Err(MemoryMapError::Order(i));
        }
        last_end = end;
        if ty != MEMORY_MAP_TYPE_MEMORY {
            continue;
        }
        let start = start.max(LOW_RESERVED_END);
        if start < end {
            ram.push(PhysRange { start, end })
                .map_err(|_| MemoryMapError::TooMany)?;
        }
    }
    GuestMemoryMap::new(&ram, svsm).map_err(MemoryMapError::Map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(entries: &[(u64, u64, u16)]) -> [u8; 4096] {
        let mut p = [0u8; 4096];
        for (i, (first, count, ty)) in entries.iter().enumerate() {
            let e = &mut p[i * 24..i * 24 + 24];
            e[..8].copy_from_slice(&first.to_le_bytes());
            e[8..16].copy_from_slice(&count.to_le_bytes());
            e[16..18].copy_from_slice(&ty.to_le_bytes());
        }
        p
    }

    const SVSM: PhysRange = PhysRange {
        start: 0x100_0000,
        end: 0x200_0000,
    };

    #[test]
    fn ram_minus_low_megabyte_and_svsm() {
        let m = guest_memory(&page(&[(0, 0x4000, 0)]), SVSM).unwrap();
        assert_eq!(
            m.ram(),
            &[
                PhysRange {
                    start: 0x10_0000,
                    end: 0x100_0000
                },
                PhysRange {
                    start: 0x200_0000,
                    end: 0x400_0000
                }
            ]
        );
        assert!(m.range(0x9000, 8).is_err());
    }

    #[test]
    fn refusals() {
        assert_eq!(
            guest_memory(&page(&[(0, 0x4000, 0), (0x100, 1, 0)]), SVSM).unwrap_err(),
            MemoryMapError::Order(1)
        );
        assert_eq!(
            guest_memory(&page(&[(u64::MAX, 2, 0)]), SVSM).unwrap_err(),
            MemoryMapError::Entry(0)
        );
        assert_eq!(
            guest_memory(&page(&[(0, 0x1000, 0)]), SVSM).unwrap_err(),
            MemoryMapError::Map(MapError::SvsmNotInRam)
        );
        // A non-RAM entry does not count as RAM.
        assert!(guest_memory(&page(&[(0, 0x4000, 1)]), SVSM).is_err());
    }
}
