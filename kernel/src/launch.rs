//! Preparing the first guest on the emulated platform: copy the guest image (the
//! PVH module) into SVSM memory, check it, zero all of guest RAM (nothing that was
//! there before the SVSM ran reaches the guest: firmware tables, the loader's data,
//! fw_cfg file names, the SVSM's own command line, the image as QEMU placed it),
//! load the image's segments into guest RAM, and write the fixed pages of the guest
//! contract (secrets, CAA, boot info, page tables). Everything goes through
//! [`Platform`]'s checked guest-memory accessors. The image is hashed as read (for
//! the launch measurement, [`crate::measure`]).

use crate::elf::{self, ElfError};
use crate::guest_setup::{boot_info_page, guest_page_table, secrets_page, Vmpcks};
use crate::measure::{self, Digest384};
use crate::memory::{AddressError, PhysRange, PAGE};
use crate::platform::{GuestMemoryError, Platform};
use alloc::vec;
use nitride_protocol::emulated::{
    BOOT_INFO_GPA, CAA_GPA, FIXED_PAGES_END, GUEST_PAGE_TABLES_GPA, GUEST_PAGE_TABLES_PAGES,
    SECRETS_GPA,
};

/// Largest guest image accepted.
pub const MAX_IMAGE: u64 = 16 << 20;

/// Why the guest could not be prepared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaunchError {
    /// No guest image was given.
    NoImage,
    /// The image is larger than [`MAX_IMAGE`].
    ImageTooLarge(u64),
    /// The image is not in guest RAM.
    ImageNotInGuestRam(AddressError),
    /// The image is not a loadable ELF.
    Elf(ElfError),
    /// A segment does not fit guest RAM.
    SegmentNotInGuestRam { paddr: u64, error: AddressError },
    /// A segment overlaps the fixed pages or the image itself.
    SegmentOverlaps { paddr: u64 },
    /// The entry point is outside the loaded segments.
    EntryOutside(u64),
    /// A fixed page is not guest RAM.
    FixedPage(AddressError),
    /// Guest memory access failed.
    Memory(GuestMemoryError),
}

impl From<GuestMemoryError> for LaunchError {
    fn from(e: GuestMemoryError) -> Self {
        Self::Memory(e)
    }
}

/// The fixed guest pages of the contract.
pub const FIXED_PAGES: PhysRange = PhysRange {
    start: SECRETS_GPA,
    end: FIXED_PAGES_END,
};

/// The prepared guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launched {
    /// The guest's entry point.
    pub entry: u64,
    /// SHA-384 of the guest image exactly as found (before loading).
    pub image_digest: Digest384,
    /// Bytes of guest RAM zeroed before loading (all of it).
    pub scrubbed: u64,
}

/// Load the guest image found at `image` (guest-physical) and write the fixed
/// pages, the secrets page carrying VMPCK1..3 of `vmpcks` (VMPCK0 zeroed).
pub fn prepare_guest<P: Platform>(
    p: &mut P,
    image: Option<PhysRange>,
    guest_cmdline: &[u8],
    vmpcks: &Vmpcks,
) -> Result<Launched, LaunchError> {
    let image = image.ok_or(LaunchError::NoImage)?;
    if image.len() > MAX_IMAGE {
        return Err(LaunchError::ImageTooLarge(image.len()));
    }
    let src = p
        .memory()
        .boot_range(image.start, image.len())
        .map_err(LaunchError::ImageNotInGuestRam)?;
    let mut file = vec![0u8; image.len() as usize];
    p.read_guest(src, &mut file)?;
    let image_digest = measure::guest_digest(&file);
    let parsed = elf::parse(&file).map_err(LaunchError::Elf)?;

    // The guest finds zeros everywhere but its segments and the fixed pages.
    let map = p.memory().clone();
    let mut scrubbed = 0;
    for r in map.ram() {
        let range = map
            .boot_range(r.start, r.len())
            .map_err(LaunchError::FixedPage)?;
        p.zero_guest(range)?;
        scrubbed += r.len();
    }

    for seg in &parsed.segments {
        let dest = p
            .memory()
            .boot_range(seg.paddr, seg.mem_size)
            .map_err(|error| LaunchError::SegmentNotInGuestRam {
                paddr: seg.paddr,
                error,
            })?;
        let span = PhysRange {
            start: seg.paddr,
            end: seg.paddr + seg.mem_size,
        };
        if span.overlaps(&FIXED_PAGES) || span.overlaps(&image) {
            return Err(LaunchError::SegmentOverlaps { paddr: seg.paddr });
        }
        // File bytes, then zeros, a page at a time.
        let mut done = 0u64;
        while done < seg.mem_size {
            let n = (seg.mem_size - done).min(PAGE);
            let mut chunk = [0u8; PAGE as usize];
            let chunk = &mut chunk[..n as usize];
            if done < seg.file_size {
                let take = (seg.file_size - done).min(n) as usize;
                let from = (seg.offset + done) as usize;
                chunk[..take].copy_from_slice(&file[from..from + take]);
            }
            let to = dest
                .sub(done, n)
                .ok_or(LaunchError::SegmentOverlaps { paddr: seg.paddr })?;
            p.write_guest(to, chunk)?;
            done += n;
        }
    }
    if !parsed
        .segments
        .iter()
        .any(|s| (s.paddr..s.paddr + s.mem_size).contains(&parsed.entry))
    {
        return Err(LaunchError::EntryOutside(parsed.entry));
    }

    let page = |gpa: u64| map.page(gpa).map_err(LaunchError::FixedPage);
    p.write_guest(
        page(SECRETS_GPA)?,
        &secrets_page(map.svsm(), CAA_GPA, vmpcks)[..],
    )?;
    p.write_guest(page(CAA_GPA)?, &[0u8; PAGE as usize])?;
    p.write_guest(
        page(BOOT_INFO_GPA)?,
        &boot_info_page(guest_cmdline, map.ram()),
    )?;
    for i in 0..GUEST_PAGE_TABLES_PAGES {
        let gpa = GUEST_PAGE_TABLES_GPA + i * PAGE;
        p.write_guest(page(gpa)?, &guest_page_table(GUEST_PAGE_TABLES_GPA, i))?;
    }
    Ok(Launched {
        entry: parsed.entry,
        image_digest,
        scrubbed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svsm::tests::MockPlatform;
    use zeroize::Zeroizing;

    fn keys() -> Vmpcks {
        [0xA0, 0xA1, 0xA2, 0xA3].map(|b| Zeroizing::new([b; 32]))
    }

    fn elf_at(paddr: u64, code: &[u8], entry: u64) -> std::vec::Vec<u8> {
        let mut f = vec![0u8; 0x100];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[0x10] = 2;
        f[0x12] = 62;
        f[0x18..0x20].copy_from_slice(&entry.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x36] = 56;
        f[0x38] = 1;
        f[64] = 1;
        f[72..80].copy_from_slice(&0x100u64.to_le_bytes());
        f[88..96].copy_from_slice(&paddr.to_le_bytes());
        f[96..104].copy_from_slice(&(code.len() as u64).to_le_bytes());
        f[104..112].copy_from_slice(&(0x2000u64).to_le_bytes());
        f.extend_from_slice(code);
        f
    }

    fn with_image(p: &mut MockPlatform, at: u64, file: &[u8]) -> PhysRange {
        p.ram[at as usize..at as usize + file.len()].copy_from_slice(file);
        PhysRange {
            start: at,
            end: at + file.len() as u64,
        }
    }

    #[test]
    fn loads_segments_and_fixed_pages() {
        let mut p = MockPlatform::new();
        p.ram[0x14_0000..0x14_2000].fill(0xEE); // stale bytes must be zeroed
        let img = with_image(
            &mut p,
            0x18_0000,
            &elf_at(0x14_0000, b"\x90\x90\xF4", 0x14_0001),
        );
        let file = elf_at(0x14_0000, b"\x90\x90\xF4", 0x14_0001);
        // Leftovers from before the SVSM: a firmware table in low memory and a
        // fw_cfg file name elsewhere.
        p.ram[0x9_0000..0x9_0008].copy_from_slice(b"RSD PTR ");
        let name = nitride_protocol::emulated::dev_psp::FW_CFG_NAME.as_bytes();
        p.ram[0x1F_0000..0x1F_0000 + name.len()].copy_from_slice(name);
        let launched = prepare_guest(&mut p, Some(img), b"mode=calls", &keys()).unwrap();
        assert_eq!(launched.entry, 0x14_0001);
        assert_eq!(launched.scrubbed, 0x20_0000);
        assert!(!p.ram.windows(8).any(|w| w == b"RSD PTR "));
        assert!(!p.ram.windows(name.len()).any(|w| w == name));
        // The image as QEMU placed it is gone too; only the loaded segment remains.
        assert!(p.ram[0x18_0000..0x18_0100].iter().all(|&b| b == 0));
        assert_eq!(launched.image_digest, measure::guest_digest(&file));
        assert_eq!(&p.ram[0x14_0000..0x14_0003], b"\x90\x90\xF4");
        assert!(p.ram[0x14_0003..0x14_2000].iter().all(|&b| b == 0));
        assert_eq!(
            &p.ram[(BOOT_INFO_GPA + 0x400) as usize..][..10],
            b"mode=calls"
        );
        let secrets = &p.ram[SECRETS_GPA as usize..][..4096];
        let info = nitride_protocol::svsm::SvsmInfo::from_secrets_page(secrets).unwrap();
        assert_eq!(info.caa, CAA_GPA);
        assert!(
            secrets[0x20..0x40].iter().all(|&b| b == 0),
            "VMPCK0 withheld"
        );
        assert!(
            secrets[0x40..0x60].iter().all(|&b| b == 0xA1),
            "VMPCK1 given"
        );
    }

    #[test]
    fn refuses_bad_placements() {
        let mut p = MockPlatform::new();
        assert_eq!(
            prepare_guest(&mut p, None, b"", &keys()),
            Err(LaunchError::NoImage)
        );
        let img = with_image(&mut p, 0x18_0000, &elf_at(0x20_0000, b"\x90", 0x20_0000));
        assert!(matches!(
            prepare_guest(&mut p, Some(img), b"", &keys()),
            Err(LaunchError::SegmentNotInGuestRam {
                error: AddressError::SvsmMemory,
                ..
            })
        ));
        let img = with_image(&mut p, 0x18_0000, &elf_at(0x10_2000, b"\x90", 0x10_2000));
        assert_eq!(
            prepare_guest(&mut p, Some(img), b"", &keys()),
            Err(LaunchError::SegmentOverlaps { paddr: 0x10_2000 })
        );
        let img = with_image(&mut p, 0x18_0000, &elf_at(0x17_F000, b"\x90", 0x17_F000));
        assert_eq!(
            prepare_guest(&mut p, Some(img), b"", &keys()),
            Err(LaunchError::SegmentOverlaps { paddr: 0x17_F000 })
        );
        let img = with_image(&mut p, 0x18_0000, &elf_at(0x14_0000, b"\x90", 0x15_0000));
        assert_eq!(
            prepare_guest(&mut p, Some(img), b"", &keys()),
            Err(LaunchError::EntryOutside(0x15_0000))
        );
        let img = with_image(&mut p, 0x18_0000, b"not an elf at all, just text....");
        assert!(matches!(
            prepare_guest(&mut p, Some(img), b"", &keys()),
            Err(LaunchError::Elf(_))
        ));
    }
}
