//! Guest memory as the SVSM sees it: which guest-physical ranges are guest RAM, and
//! the one checked constructor that turns a guest-supplied address into a
//! [`GuestRange`].
//!
//! Every guest address is an allegation. [`GuestMemoryMap::range`] is the only way to
//! make a [`GuestRange`]; the platform's guest-memory accessors take nothing else, so
//! no code path can touch guest memory with an unchecked address.

use heapless::Vec;

/// Page size.
pub const PAGE: u64 = 4096;

/// Most distinct guest RAM ranges tracked.
pub const MAX_RANGES: usize = 32;

/// Largest guest range any request may name (1 MiB): bounds every copy the SVSM
/// makes on a guest's behalf.
pub const MAX_GUEST_RANGE: u64 = 1 << 20;

/// A half-open physical range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhysRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

impl PhysRange {
    /// `[start, end)`; `None` when `end < start`.
    pub const fn new(start: u64, end: u64) -> Option<Self> {
        if end < start {
            None
        } else {
            Some(Self { start, end })
        }
    }

    /// Number of bytes.
    pub const fn len(&self) -> u64 {
        self.end - self.start
    }

    /// True when empty.
    pub const fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// True when `self` and `other` share a byte.
    pub const fn overlaps(&self, other: &PhysRange) -> bool {
        self.start < other.end && other.start < self.end
    }

    /// True when `other` lies entirely inside `self`.
    pub const fn contains(&self, other: &PhysRange) -> bool {
        self.start <= other.start && other.end <= self.end
    }

    /// The pages wholly inside the range (start rounded up, end rounded down).
    pub const fn inner_pages(&self) -> Option<PhysRange> {
        let start = match self.start.checked_add(PAGE - 1) {
            Some(s) => s & !(PAGE - 1),
            None => return None,
        };
        let end = self.end & !(PAGE - 1);
        if end <= start {
            None
        } else {
            Some(PhysRange { start, end })
        }
    }
}

/// Why a guest address was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressError {
    /// `gpa + len` wraps around the address space.
    Overflow,
    /// The range is empty.
    Empty,
    /// The range is larger than [`MAX_GUEST_RANGE`] (or the caller's own limit).
    TooLarge,
    /// The range touches SVSM memory.
    SvsmMemory,
    /// The range is not wholly inside one range of guest RAM.
    NotGuestRam,
    /// The address is not aligned as the call requires.
    Misaligned,
}

/// Why the memory map could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// More RAM ranges than [`MAX_RANGES`].
    TooManyRanges,
    /// The SVSM region is not entirely RAM.
    SvsmNotInRam,
    /// The SVSM region is not page aligned.
    SvsmUnaligned,
}

/// Guest RAM: the platform's RAM minus the SVSM region, in page-aligned ranges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestMemoryMap {
    ram: Vec<PhysRange, MAX_RANGES>,
    svsm: PhysRange,
}

impl GuestMemoryMap {
    /// Build the map from the platform's RAM ranges (any order, possibly unaligned:
    /// only whole pages count) and the SVSM region, which must be page aligned and
    /// lie wholly inside RAM.
    pub fn new(ram: &[PhysRange], svsm: PhysRange) -> Result<Self, MapError> {
        if !svsm.start.is_multiple_of(PAGE) || !svsm.end.is_multiple_of(PAGE) {
            return Err(MapError::SvsmUnaligned);
        }
        if !ram.iter().any(|r| r.contains(&svsm)) {
            return Err(MapError::SvsmNotInRam);
        }
        let mut out: Vec<PhysRange, MAX_RANGES> = Vec::new();
        for r in ram.iter().filter_map(PhysRange::inner_pages) {
            // Cut the SVSM region out of each range.
            let pieces = [
                PhysRange::new(r.start, r.end.min(svsm.start)),
                PhysRange::new(r.start.max(svsm.end), r.end),
            ];
            for p in pieces.into_iter().flatten().filter(|p| !p.is_empty()) {
                out.push(p).map_err(|_| MapError::TooManyRanges)?;
            }
        }
        out.sort_unstable_by_key(|r| r.start);
        Ok(Self { ram: out, svsm })
    }

    /// The guest RAM ranges, sorted.
    pub fn ram(&self) -> &[PhysRange] {
        &self.ram
    }

    /// The SVSM region.
    pub fn svsm(&self) -> PhysRange {
        self.svsm
    }

    /// Total bytes of guest RAM.
    pub fn guest_bytes(&self) -> u64 {
        self.ram.iter().map(PhysRange::len).sum()
    }

    /// Check a guest-supplied `(gpa, len)`: non-empty, no wrap-around, at most
    /// `max_len` (itself capped at [`MAX_GUEST_RANGE`]), outside SVSM memory, and
    /// wholly inside one guest RAM range.
    pub fn range_bounded(
        &self,
        gpa: u64,
        len: u64,
        max_len: u64,
    ) -> Result<GuestRange, AddressError> {
        self.check(gpa, len, max_len.min(MAX_GUEST_RANGE))
    }

    /// [`GuestMemoryMap::range_bounded`] with the global limit.
    pub fn range(&self, gpa: u64, len: u64) -> Result<GuestRange, AddressError> {
        self.check(gpa, len, MAX_GUEST_RANGE)
    }

    /// A whole guest page at a page-aligned `gpa`.
    pub fn page(&self, gpa: u64) -> Result<GuestRange, AddressError> {
        if !gpa.is_multiple_of(PAGE) {
            return Err(AddressError::Misaligned);
        }
        self.range(gpa, PAGE)
    }

    /// Whole pages of guest RAM `[gpa, gpa + len)` for a page operation (a 2 MiB page
    /// may exceed [`MAX_GUEST_RANGE`]; no bytes are copied): `gpa` aligned to `len`,
    /// which is a page multiple.
    pub fn pages(&self, gpa: u64, len: u64) -> Result<GuestRange, AddressError> {
        if len == 0 || !len.is_multiple_of(PAGE) || !gpa.is_multiple_of(len) {
            return Err(AddressError::Misaligned);
        }
        self.check(gpa, len, u64::MAX)
    }

    /// A range for loading the guest image at boot, which may exceed
    /// [`MAX_GUEST_RANGE`] (the image is host-supplied at boot, not a request).
    pub fn boot_range(&self, gpa: u64, len: u64) -> Result<GuestRange, AddressError> {
        self.check(gpa, len, u64::MAX)
    }

    fn check(&self, gpa: u64, len: u64, max_len: u64) -> Result<GuestRange, AddressError> {
        if len == 0 {
            return Err(AddressError::Empty);
        }
        let end = gpa.checked_add(len).ok_or(AddressError::Overflow)?;
        if len > max_len {
            return Err(AddressError::TooLarge);
        }
        let r = PhysRange { start: gpa, end };
        if r.overlaps(&self.svsm) {
            return Err(AddressError::SvsmMemory);
        }
        if !self.ram.iter().any(|ram| ram.contains(&r)) {
            return Err(AddressError::NotGuestRam);
        }
        Ok(GuestRange { gpa, len })
    }
}

/// A checked guest-physical range: non-empty, no wrap-around, wholly inside guest
/// RAM and outside SVSM memory. Only [`GuestMemoryMap`] makes these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestRange {
    gpa: u64,
    len: u64,
}

impl GuestRange {
    /// First guest-physical address.
    pub fn gpa(&self) -> u64 {
        self.gpa
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Never true (ranges are non-empty); here for clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sub-range `[offset, offset + len)`, if it fits.
    pub fn sub(&self, offset: u64, len: u64) -> Option<GuestRange> {
        let end = offset.checked_add(len)?;
        if len == 0 || end > self.len {
            return None;
        }
        Some(GuestRange {
            gpa: self.gpa + offset,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> GuestMemoryMap {
        let ram = [
            PhysRange::new(0, 0x9_FC00).unwrap(),
            PhysRange::new(0x10_0000, 0x2000_0000).unwrap(),
        ];
        GuestMemoryMap::new(&ram, PhysRange::new(0x100_0000, 0x200_0000).unwrap()).unwrap()
    }

    #[test]
    fn svsm_region_is_cut_out_and_partial_pages_dropped() {
        let m = map();
        assert_eq!(
            m.ram(),
            &[
                PhysRange {
                    start: 0,
                    end: 0x9_F000
                },
                PhysRange {
                    start: 0x10_0000,
                    end: 0x100_0000
                },
                PhysRange {
                    start: 0x200_0000,
                    end: 0x2000_0000
                },
            ]
        );
        assert_eq!(m.guest_bytes(), 0x9_F000 + 0xF0_0000 + 0x1E00_0000);
    }

    #[test]
    fn ranges_are_checked() {
        let m = map();
        assert!(m.range(0x10_0000, 0x1000).is_ok());
        assert_eq!(m.range(0x10_0000, 0), Err(AddressError::Empty));
        assert_eq!(m.range(u64::MAX - 10, 100), Err(AddressError::Overflow));
        assert_eq!(m.range(0x100_0000, 8), Err(AddressError::SvsmMemory));
        assert_eq!(m.range(0xFF_FFF8, 16), Err(AddressError::SvsmMemory));
        assert_eq!(m.range(0x1FF_FFFF, 2), Err(AddressError::SvsmMemory));
        assert_eq!(m.range(0xA_0000, 16), Err(AddressError::NotGuestRam));
        assert_eq!(m.range(0x9_EFF0, 0x20), Err(AddressError::NotGuestRam));
        assert_eq!(m.range(0x3000_0000, 16), Err(AddressError::NotGuestRam));
        assert_eq!(
            m.range(0x200_0000, MAX_GUEST_RANGE + 1),
            Err(AddressError::TooLarge)
        );
        assert_eq!(
            m.range_bounded(0x200_0000, 65, 64),
            Err(AddressError::TooLarge)
        );
        assert_eq!(m.page(0x200_0008), Err(AddressError::Misaligned));
        assert!(m.boot_range(0x200_0000, 8 << 20).is_ok());
        assert_eq!(
            m.boot_range(0xF0_0000, 2 << 20),
            Err(AddressError::SvsmMemory)
        );
    }

    #[test]
    fn sub_ranges_stay_inside() {
        let r = map().range(0x10_0000, 0x1000).unwrap();
        assert_eq!(r.sub(0x10, 0x10).map(|s| s.gpa()), Some(0x10_0010));
        assert_eq!(r.sub(0xFF0, 0x20), None);
        assert_eq!(r.sub(u64::MAX, 2), None);
        assert_eq!(r.sub(0, 0), None);
    }

    #[test]
    fn svsm_must_be_aligned_ram() {
        let ram = [PhysRange::new(0, 0x1000_0000).unwrap()];
        assert_eq!(
            GuestMemoryMap::new(&ram, PhysRange::new(0x100_0800, 0x200_0000).unwrap()),
            Err(MapError::SvsmUnaligned)
        );
        assert_eq!(
            GuestMemoryMap::new(&ram, PhysRange::new(0xF00_0000, 0x1100_0000).unwrap()),
            Err(MapError::SvsmNotInRam)
        );
    }
}
