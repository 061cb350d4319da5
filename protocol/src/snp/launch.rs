//! Nitride's IGVM images: where the builder (`nitride_qemu::igvm`) puts each piece in
//! guest-physical memory, and the measured launch configuration page the SVSM boots
//! from (`docs/real-snp.md`, `docs/guest-contract.md`).
//!
//! The launch configuration is a NORMAL page of the IGVM file: the PSP measures it
//! into MEASUREMENT with everything else, so what it says (where the SVSM and the
//! guest are, which pages are the guest's, where the guest starts) is part of the
//! launch digest a verifier checks. Host-provided data (the command line, the memory
//! map) arrives in parameter pages, which are not measured and are treated as
//! hostile input.

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Guest-physical addresses of an SVSM image's fixed pages.
pub mod gpa {
    /// The SNP secrets page (VMPCKs; the SVSM's alone).
    pub const SECRETS: u64 = 0x8000;
    /// The SNP CPUID page (the SVSM's alone).
    pub const CPUID: u64 = 0x9000;
    /// The command-line parameter page (host-provided, NUL-terminated): the SVSM's
    /// options, ` -- `, the guest's command line.
    pub const CMDLINE: u64 = 0xA000;
    /// The memory-map parameter page (host-provided): IGVM memory-map entries.
    pub const MEMORY_MAP: u64 = 0xB000;
    /// The image layout ([`LaunchConfig`], measured).
    pub const LAUNCH_CONFIG: u64 = 0xC000;
    /// The vault's measured launch configuration
    /// ([`crate::launch_config::LaunchConfig`]: the vault policy and the owner key),
    /// at the start of a measured page whose other bytes are zero
    /// ([`crate::launch_config::LaunchConfig::from_page`]). The builder always
    /// places it (the default configuration when none is given); an all-zero page
    /// means the default configuration.
    pub const VAULT_CONFIG: u64 = 0xD000;
    /// Everything below this address belongs to the SVSM (never guest RAM).
    pub const LOW_RESERVED_END: u64 = 0x10_0000;
}

/// Size of one IGVM memory-map entry (`IGVM_VHS_MEMORY_MAP_ENTRY`): starting page
/// u64, page count u64, type u16 (0 = memory), flags u16, reserved u32.
pub const MEMORY_MAP_ENTRY_SIZE: usize = 24;
/// Entry type of usable RAM in the IGVM memory map.
pub const MEMORY_MAP_TYPE_MEMORY: u16 = 0;

/// Magic of the launch configuration page.
pub const MAGIC: [u8; 8] = *b"NTRDLCF1";
/// Version of its layout.
pub const VERSION: u32 = 1;
/// Most guest page ranges a launch configuration lists.
pub const MAX_GUEST_RANGES: usize = 16;

/// How the guest starts.
pub mod guest_kind {
    /// A bare-metal ELF image, entered in 64-bit mode at its entry point with the
    /// page tables, boot-information page and registers of the guest contract.
    pub const ELF64: u8 = 1;
}

/// A range of guest-physical pages, `[start, end)`, page aligned.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct PageRange {
    /// First byte.
    pub start: U64,
    /// One past the last byte.
    pub end: U64,
}

/// The launch configuration page (measured; the rest of the page is zero).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct LaunchConfig {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: U32,
    /// Size of this structure.
    pub size: U32,
    /// Start of the SVSM's region (its image, data, heap and stacks).
    pub svsm_base: U64,
    /// Size of the SVSM's region.
    pub svsm_size: U64,
    /// The VMPL the guest runs at (1..=3).
    pub guest_vmpl: u8,
    /// [`guest_kind`].
    pub guest_kind: u8,
    /// Zero.
    pub reserved: [u8; 6],
    /// Where the guest starts.
    pub guest_entry: U64,
    /// How many of `guest_ranges` are used.
    pub guest_range_count: U32,
    /// Zero.
    pub reserved2: U32,
    /// The launched pages that are the guest's (its image): the SVSM grants the
    /// guest VMPL access to exactly these, and to the fixed pages it makes itself.
    pub guest_ranges: [PageRange; MAX_GUEST_RANGES],
}
const _: () = assert!(core::mem::size_of::<LaunchConfig>() == 0x38 + 16 * MAX_GUEST_RANGES);

/// Why a launch configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaunchConfigError {
    /// Wrong magic, version or size.
    Format,
    /// A reserved field or byte after the structure is not zero.
    Reserved,
    /// The SVSM region is empty, unaligned or wraps.
    SvsmRegion,
    /// The guest VMPL is not 1..=3.
    GuestVmpl(u8),
    /// The guest kind is unknown.
    GuestKind(u8),
    /// More guest ranges than [`MAX_GUEST_RANGES`], or none.
    RangeCount(u32),
    /// A guest range is empty, unaligned, wraps, lies below
    /// [`gpa::LOW_RESERVED_END`], overlaps the SVSM region or another range (index).
    Range(usize),
    /// The entry point is not inside a guest range.
    Entry(u64),
}

impl LaunchConfig {
    /// A configuration with no guest ranges.
    pub fn new(svsm_base: u64, svsm_size: u64, guest_vmpl: u8, guest_entry: u64) -> Self {
        Self {
            magic: MAGIC,
            version: U32::new(VERSION),
            size: U32::new(core::mem::size_of::<Self>() as u32),
            svsm_base: U64::new(svsm_base),
            svsm_size: U64::new(svsm_size),
            guest_vmpl,
            guest_kind: guest_kind::ELF64,
            reserved: [0; 6],
            guest_entry: U64::new(guest_entry),
            guest_range_count: U32::new(0),
            reserved2: U32::new(0),
            guest_ranges: [PageRange::default(); MAX_GUEST_RANGES],
        }
    }

    /// Add a guest range; `false` when the table is full.
    pub fn push_range(&mut self, start: u64, end: u64) -> bool {
        let n = self.guest_range_count.get() as usize;
        let Some(slot) = self.guest_ranges.get_mut(n) else {
            return false;
        };
        *slot = PageRange {
            start: U64::new(start),
            end: U64::new(end),
        };
        self.guest_range_count = U32::new(n as u32 + 1);
        true
    }

    /// The used guest ranges.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.guest_ranges
            .iter()
            .take(self.guest_range_count.get() as usize)
            .map(|r| (r.start.get(), r.end.get()))
    }

    /// The page's bytes.
    pub fn page(&self) -> [u8; 4096] {
        let mut p = [0u8; 4096];
        p[..core::mem::size_of::<Self>()].copy_from_slice(self.as_bytes());
        p
    }

    /// Parse and check the page: exactly what [`LaunchConfig::page`] writes for a
    /// consistent configuration, nothing else.
    pub fn parse(page: &[u8; 4096]) -> Result<Self, LaunchConfigError> {
        let (c, rest) = Self::read_from_prefix(page).map_err(|_| LaunchConfigError::Format)?;
        if c.magic != MAGIC
            || c.version.get() != VERSION
            || c.size.get() as usize != core::mem::size_of::<Self>()
        {
            return Err(LaunchConfigError::Format);
        }
        if c.reserved != [0; 6] || c.reserved2.get() != 0 || rest.iter().any(|&b| b != 0) {
            return Err(LaunchConfigError::Reserved);
        }
        let (base, size) = (c.svsm_base.get(), c.svsm_size.get());
        let svsm_end = base
            .checked_add(size)
            .ok_or(LaunchConfigError::SvsmRegion)?;
        if size == 0 || base % 4096 != 0 || size % 4096 != 0 || base < gpa::LOW_RESERVED_END {
            return Err(LaunchConfigError::SvsmRegion);
        }
        if !(1..=3).contains(&c.guest_vmpl) {
            return Err(LaunchConfigError::GuestVmpl(c.guest_vmpl));
        }
        if c.guest_kind != guest_kind::ELF64 {
            return Err(LaunchConfigError::GuestKind(c.guest_kind));
        }
        let n = c.guest_range_count.get();
        if n == 0 || n as usize > MAX_GUEST_RANGES {
            return Err(LaunchConfigError::RangeCount(n));
        }
        if c.guest_ranges[n as usize..]
            .iter()
            .any(|r| *r != PageRange::default())
        {
            return Err(LaunchConfigError::Reserved);
        }
        let ranges = &c.guest_ranges[..n as usize];
        for (i, r) in ranges.iter().enumerate() {
            let (s, e) = (r.start.get(), r.end.get());
            let bad = e <= s
                || s % 4096 != 0
                || e % 4096 != 0
                || s < gpa::LOW_RESERVED_END
                || (s < svsm_end && base < e)
                || ranges[..i]
                    .iter()
                    .any(|o| s < o.end.get() && o.start.get() < e);
            if bad {
                return Err(LaunchConfigError::Range(i));
            }
        }
        let entry = c.guest_entry.get();
        if !ranges
            .iter()
            .any(|r| (r.start.get()..r.end.get()).contains(&entry))
        {
            return Err(LaunchConfigError::Entry(entry));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> LaunchConfig {
        let mut c = LaunchConfig::new(0x100_0000, 0x100_0000, 1, 0x20_0010);
        assert!(c.push_range(0x20_0000, 0x30_0000));
        c
    }

    #[test]
    fn round_trip() {
        let c = good();
        let p = c.page();
        let back = LaunchConfig::parse(&p).unwrap();
        assert_eq!(back.page(), p);
        assert_eq!(
            back.ranges().collect::<std::vec::Vec<_>>(),
            [(0x20_0000, 0x30_0000)]
        );
    }

    #[test]
    fn refusals() {
        let mut p = good().page();
        p[4095] = 1;
        assert_eq!(
            LaunchConfig::parse(&p).unwrap_err(),
            LaunchConfigError::Reserved
        );
        let mut c = good();
        c.guest_vmpl = 0;
        assert_eq!(
            LaunchConfig::parse(&c.page()).unwrap_err(),
            LaunchConfigError::GuestVmpl(0)
        );
        let mut c = good();
        c.push_range(0x180_0000, 0x181_0000);
        assert_eq!(
            LaunchConfig::parse(&c.page()).unwrap_err(),
            LaunchConfigError::Range(1)
        );
        let mut c = good();
        c.push_range(0x2F_0000, 0x31_0000);
        assert_eq!(
            LaunchConfig::parse(&c.page()).unwrap_err(),
            LaunchConfigError::Range(1)
        );
        let mut c = good();
        c.push_range(0x8000, 0x9000);
        assert_eq!(
            LaunchConfig::parse(&c.page()).unwrap_err(),
            LaunchConfigError::Range(1)
        );
        let mut c = good();
        c.guest_entry = U64::new(0x40_0000);
        assert_eq!(
            LaunchConfig::parse(&c.page()).unwrap_err(),
            LaunchConfigError::Entry(0x40_0000)
        );
        let c = LaunchConfig::new(0x100_0000, 0x100_0000, 1, 0);
        assert_eq!(
            LaunchConfig::parse(&c.page()).unwrap_err(),
            LaunchConfigError::RangeCount(0)
        );
        let mut c = good();
        c.svsm_base = U64::new(0x100_0800);
        assert_eq!(
            LaunchConfig::parse(&c.page()).unwrap_err(),
            LaunchConfigError::SvsmRegion
        );
    }
}
