//! What the SVSM prepares for its guest on SNP, as bytes (`docs/guest-contract.md`):
//! the guest's copy of the secrets page, its boot-information page, its initial page
//! tables (guest RAM identity-mapped private, and again shared at
//! [`layout::SHARED_VIEW`]), and its first VMSA. The firmware validates the pages, writes these bytes, and grants the
//! guest VMPL access with RMPADJUST.

use crate::memory::PhysRange;
use nitride_protocol::emulated::boot_info;
use nitride_protocol::snp::vmsa::{off, put64};
use nitride_protocol::svsm::{secrets, SecretsSvsmFields, CORE_PROTOCOL_VERSION};
use zerocopy::IntoBytes;
use zeroize::Zeroizing;

/// A page of bytes.
pub type Page = [u8; 4096];

/// The guest's fixed pages on SNP.
pub mod layout {
    /// The guest's copy of the secrets page.
    pub const SECRETS: u64 = 0x10_0000;
    /// The boot vCPU's initial calling area.
    pub const CAA: u64 = 0x10_1000;
    /// The boot-information page (`nitride_protocol::emulated::boot_info` layout).
    pub const BOOT_INFO: u64 = 0x10_2000;
    /// The guest's initial page tables: PML4, the private view's PDPT and four page
    /// directories (the first 4 GiB identity-mapped, C-bit set), the shared view's
    /// PDPT and four page directories (the same 4 GiB at [`SHARED_VIEW`], C-bit
    /// clear, no-execute).
    pub const PAGE_TABLES: u64 = 0x10_3000;
    /// Pages the initial page tables take.
    pub const PAGE_TABLE_PAGES: u64 = 11;
    /// First address after the fixed pages.
    pub const FIXED_END: u64 = PAGE_TABLES + PAGE_TABLE_PAGES * 4096;
    /// Virtual address of the shared view of guest-physical 0 (PML4 entry 1).
    pub const SHARED_VIEW: u64 = 1 << 39;
}

/// The guest's secrets page: the SNP secrets page with every VMPCK below the guest's
/// VMPL zeroed (VMPCK0 at least: the guest never talks to the PSP as VMPL0), and the
/// SVSM fields filled.
pub fn secrets_page(
    snp: &Page,
    guest_vmpl: u8,
    svsm_base: u64,
    svsm_size: u64,
    caa: u64,
) -> Zeroizing<Page> {
    let mut page = Zeroizing::new(*snp);
    for (i, &at) in secrets::VMPCK.iter().enumerate() {
        if i < usize::from(guest_vmpl.max(1)) {
            page[at..at + 32].fill(0);
        }
    }
    // Everything from the SVSM fields on is the SVSM's to fill.
    page[secrets::SVSM_FIELDS..].fill(0);
    let fields = SecretsSvsmFields {
        svsm_base,
        svsm_size,
        svsm_caa: caa,
        svsm_max_version: CORE_PROTOCOL_VERSION,
        svsm_guest_vmpl: guest_vmpl,
        reserved: [0; 3],
    };
    let bytes = fields.as_bytes();
    page[secrets::SVSM_FIELDS..secrets::SVSM_FIELDS + bytes.len()].copy_from_slice(bytes);
    page
}

/// Page `index` of the guest's initial page tables at [`layout::PAGE_TABLES`]
/// (0 PML4, 1 private PDPT, 2..=5 private PDs, 6 shared PDPT, 7..=10 shared PDs),
/// for C-bit `c_bit`.
pub fn page_table(index: u64, c_bit: u32) -> Page {
    const P_RW: u64 = 0x3;
    const LARGE: u64 = 0x80;
    const NX: u64 = 1 << 63;
    let c = 1u64 << c_bit;
    let base = layout::PAGE_TABLES;
    let mut entries = [0u64; 512];
    match index {
        0 => {
            entries[0] = (base + 0x1000) | c | P_RW;
            entries[1] = (base + 0x6000) | c | P_RW;
        }
        1 | 6 => {
            for (i, e) in entries.iter_mut().take(4).enumerate() {
                *e = (base + (index + 1) * 0x1000 + i as u64 * 0x1000) | c | P_RW;
            }
        }
        2..=5 => {
            let gib = (index - 2) << 30;
            for (i, e) in entries.iter_mut().enumerate() {
                *e = (gib + ((i as u64) << 21)) | c | P_RW | LARGE;
            }
        }
        7..=10 => {
            let gib = (index - 7) << 30;
            for (i, e) in entries.iter_mut().enumerate() {
                *e = (gib + ((i as u64) << 21)) | P_RW | LARGE | NX;
            }
        }
        _ => {}
    }
    let mut page = [0u8; 4096];
    page.copy_from_slice(entries.as_bytes());
    page
}

/// The guest's first VMSA: 64-bit mode at `entry`, CPL 0, the initial page tables
/// (CR3 with the C-bit), the boot-information page's GDT, RDI = the boot-information
/// page, RSI = the secrets page, the reset values of RFLAGS, PAT, the debug
/// registers, XCR0 and the x87/SSE control words; `sev_features` the VM's.
pub fn initial_vmsa(entry: u64, guest_vmpl: u8, c_bit: u32, sev_features: u64) -> Page {
    let mut p = [0u8; 4096];
    let seg = |p: &mut Page, at: usize, selector: u16, attrib: u16, limit: u32, base: u64| {
        p[at..at + 2].copy_from_slice(&selector.to_le_bytes());
        p[at + 2..at + 4].copy_from_slice(&attrib.to_le_bytes());
        p[at + 4..at + 8].copy_from_slice(&limit.to_le_bytes());
        put64(p, at + 8, base);
    };
    for at in [off::ES, off::SS, off::DS, off::FS, off::GS] {
        seg(&mut p, at, 0x10, 0x0C93, 0xFFFF_FFFF, 0);
    }
    seg(&mut p, off::CS, 0x08, 0x0A9B, 0xFFFF_FFFF, 0);
    seg(
        &mut p,
        off::GDTR,
        0,
        0,
        (boot_info::GDT.len() * 8 - 1) as u32,
        layout::BOOT_INFO + boot_info::GDT_OFFSET as u64,
    );
    seg(&mut p, off::IDTR, 0, 0, 0, 0);
    seg(&mut p, off::LDTR, 0, 0x0082, 0xFFFF, 0);
    seg(&mut p, off::TR, 0, 0x008B, 0x67, 0);
    p[off::VMPL] = guest_vmpl;
    put64(
        &mut p,
        off::EFER,
        (1 << 8) | (1 << 10) | (1 << 11) | (1 << 12),
    );
    put64(&mut p, off::CR4, (1 << 5) | (1 << 9) | (1 << 10));
    put64(&mut p, off::CR3, layout::PAGE_TABLES | (1u64 << c_bit));
    put64(&mut p, off::CR0, 0x8001_0033);
    put64(&mut p, off::DR7, 0x400);
    put64(&mut p, off::DR6, 0xFFFF_0FF0);
    put64(&mut p, off::RFLAGS, 0x2);
    put64(&mut p, off::RIP, entry);
    put64(&mut p, RDI, layout::BOOT_INFO);
    put64(&mut p, RSI, layout::SECRETS);
    put64(&mut p, off::G_PAT, 0x0007_0406_0007_0406);
    put64(&mut p, off::SEV_FEATURES, sev_features);
    put64(&mut p, off::XCR0, 1);
    p[off::MXCSR..off::MXCSR + 4].copy_from_slice(&0x1F80u32.to_le_bytes());
    p[off::X87_FCW..off::X87_FCW + 2].copy_from_slice(&0x037Fu16.to_le_bytes());
    p
}

/// VMSA offset of RSI.
pub const RSI: usize = 0x330;
/// VMSA offset of RDI.
pub const RDI: usize = 0x338;

/// The boot-information page (`nitride_protocol::emulated::boot_info` layout): magic,
/// the guest command line (truncated to [`boot_info::CMDLINE_MAX`]) and the guest RAM
/// ranges (at most [`boot_info::MAX_RAM_RANGES`]).
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

#[cfg(test)]
mod tests {
    use super::*;
    use nitride_protocol::snp::vmsa::get64;
    use nitride_protocol::svsm::SvsmInfo;

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
    fn secrets_copy_withholds_vmpck0_and_names_the_svsm() {
        let mut snp = [0u8; 4096];
        for (i, &at) in secrets::VMPCK.iter().enumerate() {
            snp[at..at + 32].fill(0xA0 + i as u8);
        }
        snp[0] = 3;
        snp[0x140] = 0xEE; // a host-chosen value where the SVSM fields go
        let g = secrets_page(&snp, 1, 0x100_0000, 0x100_0000, layout::CAA);
        assert!(g[0x20..0x40].iter().all(|&b| b == 0));
        assert!(g[0x40..0x60].iter().all(|&b| b == 0xA1));
        let info = SvsmInfo::from_secrets_page(&g[..]).unwrap();
        assert_eq!(
            (info.base, info.size, info.caa, info.guest_vmpl),
            (0x100_0000, 0x100_0000, layout::CAA, 1)
        );
        let g2 = secrets_page(&snp, 2, 0x100_0000, 0x100_0000, layout::CAA);
        assert!(
            g2[0x40..0x60].iter().all(|&b| b == 0),
            "VMPCK1 withheld from VMPL2"
        );
    }

    #[test]
    fn page_tables_map_private_and_shared() {
        let pml4 = page_table(0, 47);
        let e = |p: &Page, i: usize| u64::from_le_bytes(p[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!(e(&pml4, 0), 0x10_4000 | (1 << 47) | 3);
        assert_eq!(e(&pml4, 1), 0x10_9000 | (1 << 47) | 3);
        assert_eq!(e(&page_table(6, 47), 3), 0x10_D000 | (1 << 47) | 3);
        assert_eq!(e(&page_table(2, 47), 1), (2 << 20) | (1 << 47) | 0x83);
        assert_eq!(
            e(&page_table(8, 47), 1),
            (1 << 30) | (2 << 20) | 0x83 | (1 << 63)
        );
    }

    #[test]
    fn vmsa_fields() {
        let v = initial_vmsa(0x20_0000, 1, 51, 1);
        assert_eq!(get64(&v, off::RIP), 0x20_0000);
        assert_eq!(get64(&v, off::CR3), 0x10_3000 | (1 << 51));
        assert_eq!(v[off::VMPL], 1);
        assert_eq!(get64(&v, RDI), layout::BOOT_INFO);
        assert_eq!(get64(&v, off::SEV_FEATURES), 1);
    }
}
