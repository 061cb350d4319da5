//! The pages the emulated platform prepares for its guest before the first VMRUN:
//! the secrets page (SVSM fields as on SNP), the boot-information page and the
//! guest's initial identity-mapping page tables. Pure byte builders; the platform
//! writes them through checked guest ranges. Layout: `docs/guest-contract.md` and
//! `nitride_protocol::emulated`.

use crate::memory::PhysRange;
use nitride_protocol::emulated::{boot_info, GUEST_VMPL};
use nitride_protocol::svsm::{secrets, SecretsSvsmFields, CORE_PROTOCOL_VERSION};
use zerocopy::IntoBytes;
use zeroize::Zeroizing;

/// A page of bytes.
pub type Page = [u8; 4096];

/// Secrets-page format version written at offset 0 (the version that carries the
/// SVSM fields).
pub const SECRETS_VERSION: u32 = 3;

/// The VM's four VM-platform communication keys (VMPCK0..3), 32 bytes each.
pub type Vmpcks = [Zeroizing<[u8; 32]>; 4];

/// The guest's secrets page: version, VMPCK1..3 (all zero on a platform without a
/// PSP), VMPCK0 zeroed — the guest never gets the key that lets the SVSM talk to
/// the PSP as VMPL0 — and the SVSM fields.
pub fn secrets_page(svsm: PhysRange, caa_gpa: u64, vmpcks: &Vmpcks) -> Zeroizing<Page> {
    let mut page = Zeroizing::new([0u8; 4096]);
    for (i, key) in vmpcks.iter().enumerate().skip(1) {
        page[secrets::VMPCK[i]..secrets::VMPCK[i] + 32].copy_from_slice(&key[..]);
    }
    page[secrets::VERSION..secrets::VERSION + 4].copy_from_slice(&SECRETS_VERSION.to_le_bytes());
    let fields = SecretsSvsmFields {
        svsm_base: svsm.start,
        svsm_size: svsm.len(),
        svsm_caa: caa_gpa,
        svsm_max_version: CORE_PROTOCOL_VERSION,
        svsm_guest_vmpl: GUEST_VMPL,
        reserved: [0; 3],
    };
    let bytes = fields.as_bytes();
    page[secrets::SVSM_FIELDS..secrets::SVSM_FIELDS + bytes.len()].copy_from_slice(bytes);
    page
}

/// The boot-information page: magic, the guest command line (truncated to
/// [`boot_info::CMDLINE_MAX`]) and the guest RAM ranges (at most
/// [`boot_info::MAX_RAM_RANGES`]).
pub fn boot_info_page(cmdline: &[u8], ram: &[PhysRange]) -> Page {
    let mut page = [0u8; 4096];
    let cmd = &cmdline[..cmdline.len().min(boot_info::CMDLINE_MAX)];
    let ranges = &ram[..ram.len().min(boot_info::MAX_RAM_RANGES)];
    page[boot_info::MAGIC_OFFSET..][..4].copy_from_slice(&boot_info::MAGIC.to_le_bytes());
    page[boot_info::CMDLINE_LEN_OFFSET..][..4].copy_from_slice(&(cmd.len() as u32).to_le_bytes());
    page[boot_info::RAM_RANGES_OFFSET..][..4].copy_from_slice(&(ranges.len() as u32).to_le_bytes());
    for (i, r) in ranges.iter().enumerate() {
        let at = boot_info::RAM_TABLE_OFFSET + i * 16;
        page[at..at + 8].copy_from_slice(&r.start.to_le_bytes());
        page[at + 8..at + 16].copy_from_slice(&r.end.to_le_bytes());
    }
    page[boot_info::CMDLINE_OFFSET..][..cmd.len()].copy_from_slice(cmd);
    for (i, d) in boot_info::GDT.iter().enumerate() {
        let at = boot_info::GDT_OFFSET + i * 8;
        page[at..at + 8].copy_from_slice(&d.to_le_bytes());
    }
    page
}

/// Page `index` (0 PML4, 1 PDPT, 2..=5 page directories) of the guest's initial
/// page tables at `base`: the first 4 GiB identity-mapped with 2 MiB pages,
/// supervisor, writable, executable.
pub fn guest_page_table(base: u64, index: u64) -> Page {
    const PRESENT_RW: u64 = 0x3;
    const LARGE: u64 = 0x80;
    let mut entries = [0u64; 512];
    match index {
        0 => entries[0] = (base + 0x1000) | PRESENT_RW,
        1 => {
            for (i, e) in entries.iter_mut().take(4).enumerate() {
                *e = (base + 0x2000 + i as u64 * 0x1000) | PRESENT_RW;
            }
        }
        2..=5 => {
            let gib = (index - 2) << 30;
            for (i, e) in entries.iter_mut().enumerate() {
                *e = (gib + ((i as u64) << 21)) | PRESENT_RW | LARGE;
            }
        }
        _ => {}
    }
    let mut page = [0u8; 4096];
    page.copy_from_slice(entries.as_bytes());
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use nitride_protocol::svsm::SvsmInfo;

    fn keys() -> Vmpcks {
        [0x10, 0x11, 0x12, 0x13].map(|b| Zeroizing::new([b; 32]))
    }

    #[test]
    fn secrets_page_is_discoverable() {
        let page = secrets_page(
            PhysRange {
                start: 0x100_0000,
                end: 0x200_0000,
            },
            0x10_1000,
            &keys(),
        );
        let info = SvsmInfo::from_secrets_page(&page[..]).unwrap();
        assert_eq!(
            (info.base, info.size, info.caa, info.guest_vmpl),
            (0x100_0000, 0x100_0000, 0x10_1000, 1)
        );
        assert!(page[0x20..0x40].iter().all(|&b| b == 0), "VMPCK0 is zero");
        assert!(page[0x40..0x60].iter().all(|&b| b == 0x11), "VMPCK1");
        assert!(page[0x60..0x80].iter().all(|&b| b == 0x12), "VMPCK2");
        assert!(page[0x80..0xA0].iter().all(|&b| b == 0x13), "VMPCK3");
        assert!(
            !page.windows(32).any(|w| w == [0x10; 32]),
            "no VMPCK0 anywhere"
        );
        // Without a PSP every key is zero.
        let none = [0; 4].map(|_| Zeroizing::new([0u8; 32]));
        let page = secrets_page(
            PhysRange {
                start: 0,
                end: 0x1000,
            },
            0,
            &none,
        );
        assert!(page[0x20..0xA0].iter().all(|&b| b == 0), "VMPCKs are zero");
    }

    #[test]
    fn boot_info_carries_cmdline_and_ram() {
        let ram = [
            PhysRange {
                start: 0,
                end: 0x9_F000,
            },
            PhysRange {
                start: 0x200_0000,
                end: 0x2000_0000,
            },
        ];
        let page = boot_info_page(b"mode=calls", &ram);
        assert_eq!(&page[..4], &boot_info::MAGIC.to_le_bytes());
        assert_eq!(&page[4..8], &10u32.to_le_bytes());
        assert_eq!(&page[8..12], &2u32.to_le_bytes());
        assert_eq!(&page[0x20..0x28], &0x200_0000u64.to_le_bytes());
        assert_eq!(&page[boot_info::CMDLINE_OFFSET..][..10], b"mode=calls");
        let long = [b'x'; 5000];
        let page = boot_info_page(&long, &[]);
        assert_eq!(&page[4..8], &(boot_info::CMDLINE_MAX as u32).to_le_bytes());
    }

    #[test]
    fn guest_page_tables_identity_map_4g() {
        let base = 0x10_3000;
        let pd3 = guest_page_table(base, 5);
        let last = u64::from_le_bytes(pd3[4088..].try_into().unwrap());
        assert_eq!(last, 0xFFE0_0000 | 0x83);
        let pml4 = guest_page_table(base, 0);
        assert_eq!(u64::from_le_bytes(pml4[..8].try_into().unwrap()), 0x10_4003);
    }
}
