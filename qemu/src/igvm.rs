//! IGVM images for the virtual SNP machine (`qemu/snp-machine`, `docs/snp-machine.md`)
//! and their launch digests.
//!
//! [`build`] turns bare-metal ELF images into an IGVM file with the `igvm` crate:
//! every `PT_LOAD` page as a measured NORMAL page (file bytes, then zeros), the
//! secrets and CPUID pages, a command-line parameter area, page tables for the
//! image, and the boot processor's VMSA, in the shape KVM and QEMU (10.1 and later)
//! accept: one VMSA, at [`VMSA_GPA`], starting in 32-bit protected mode (CR0 0x31),
//! with the register values KVM itself puts into a launched VMSA, measured last.
//!
//! The launch digest of a file is computed here twice, independently of the
//! machine's own computation in QEMU:
//! - [`launch_digest`], the file parsed with the `igvm` crate, the digest chained
//!   here as the PSP does it (SNP ABI `SNP_LAUNCH_UPDATE`, PAGE_INFO), with the VMSA
//!   measured after every page, as KVM launches it;
//! - [`reference_digest`], `igvm::measurement::generate_snp_measurement`.
//!
//! `cargo xtask igvm` prints both and refuses a file on which they differ; the
//! machine's tests compare them with the MEASUREMENT of reports from the machine.

use std::fmt;

use igvm::snp_defs::{SevFeatures, SevSelector, SevVmsa};
use igvm::{IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader};
use igvm_defs::{
    IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType, IGVM_VHS_PARAMETER,
    IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_SUPPORTED_PLATFORM, PAGE_SIZE_4K,
};
use sha2::{Digest, Sha384};
use zerocopy::{FromZeros, IntoBytes};

/// Where KVM requires the boot processor's VMSA of an IGVM launch.
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
/// The compatibility mask of the SEV-SNP platform in the files built here.
pub const SNP_MASK: u32 = 1;
/// The guest policy of the images: SMT allowed (bit 16), bit 17 reserved-must-be-one,
/// ABI 0.0, no debug, no migration agent (`nitride_protocol::emulated::dev_psp::GUEST_POLICY`).
pub const GUEST_POLICY: u64 = nitride_protocol::emulated::dev_psp::GUEST_POLICY;
/// The C-bit position the machine reports (CPUID 0x8000_001F EBX[5:0]).
pub const C_BIT: u32 = 47;

/// The fixed guest-physical layout of an image built here (below 1 MiB).
pub mod layout {
    /// PML4 of the image's page tables.
    pub const PML4: u64 = 0x1000;
    /// PDPT of the private view (PML4 entry 0: virtual = guest physical, C-bit set).
    pub const PDPT_PRIVATE: u64 = 0x2000;
    /// PD of the private view (the first GiB in 2 MiB pages).
    pub const PD_PRIVATE: u64 = 0x3000;
    /// PDPT of the shared view (PML4 entry 1).
    pub const PDPT_SHARED: u64 = 0x4000;
    /// PD of the shared view (the first GiB, C-bit clear).
    pub const PD_SHARED: u64 = 0x5000;
    /// Virtual address of the shared view of guest-physical 0.
    pub const SHARED_VIEW: u64 = 1 << 39;
    /// The SNP secrets page.
    pub const SECRETS: u64 = 0x8000;
    /// The SNP CPUID page.
    pub const CPUID: u64 = 0x9000;
    /// The command-line parameter area (one page, NUL-terminated string).
    pub const CMDLINE: u64 = 0xA000;
    /// First address an ELF image may use.
    pub const IMAGE_MIN: u64 = 0x10_0000;
    /// End of guest RAM in the virtual SNP machine (64 MiB).
    pub const RAM_END: u64 = 0x400_0000;
}

/// Why an image could not be built or measured.
#[derive(Debug)]
pub enum Error {
    /// An ELF file is malformed or does not fit the layout.
    Elf(String),
    /// The `igvm` crate refused the file.
    Igvm(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Elf(s) => write!(f, "ELF image: {s}"),
            Self::Igvm(s) => write!(f, "IGVM: {s}"),
        }
    }
}

impl std::error::Error for Error {}

fn elf_err(s: impl Into<String>) -> Error {
    Error::Elf(s.into())
}

fn rd<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], Error> {
    at.checked_add(N)
        .and_then(|end| b.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| elf_err("truncated"))
}

/// A loaded ELF: its entry point and its pages (page-aligned guest-physical address,
/// 4 KiB contents).
#[derive(Debug)]
pub struct Loaded {
    /// `e_entry`.
    pub entry: u64,
    /// Every page a `PT_LOAD` segment touches, in address order.
    pub pages: Vec<(u64, Vec<u8>)>,
}

/// Load the `PT_LOAD` segments of a static ELF64 image (identity mapped, file
/// bytes then zeros to `p_memsz`) into 4 KiB pages.
pub fn load_elf(elf: &[u8]) -> Result<Loaded, Error> {
    load_elf_pages(elf, false)
}

/// Like [`load_elf`]; with `file_only`, each segment only as far as its file bytes
/// reach (the SVSM validates and zeroes its own `.bss` at boot, so those pages are
/// not launched).
pub fn load_elf_pages(elf: &[u8], file_only: bool) -> Result<Loaded, Error> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(elf_err("not an ELF64 little-endian file"));
    }
    let entry = u64::from_le_bytes(rd(elf, 0x18)?);
    let phoff = u64::from_le_bytes(rd(elf, 0x20)?) as usize;
    let phentsize = usize::from(u16::from_le_bytes(rd(elf, 0x36)?));
    let phnum = usize::from(u16::from_le_bytes(rd(elf, 0x38)?));
    if phentsize < 56 {
        return Err(elf_err("e_phentsize"));
    }
    let mut pages: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i * phentsize)
            .ok_or_else(|| elf_err("program header offset"))?;
        if u32::from_le_bytes(rd(elf, ph)?) != 1 {
            continue;
        }
        let offset = u64::from_le_bytes(rd(elf, ph + 8)?) as usize;
        let paddr = u64::from_le_bytes(rd(elf, ph + 24)?);
        let filesz = u64::from_le_bytes(rd(elf, ph + 32)?) as usize;
        let memsz = u64::from_le_bytes(rd(elf, ph + 40)?);
        let memsz = if file_only {
            memsz.min(filesz as u64)
        } else {
            memsz
        };
        if memsz == 0 {
            continue;
        }
        let end = paddr
            .checked_add(memsz)
            .filter(|&e| paddr >= layout::IMAGE_MIN && e <= layout::RAM_END)
            .ok_or_else(|| {
                elf_err(format!(
                    "segment {paddr:#x}+{memsz:#x} outside {:#x}..{:#x}",
                    layout::IMAGE_MIN,
                    layout::RAM_END
                ))
            })?;
        let bytes = offset
            .checked_add(filesz)
            .and_then(|e| elf.get(offset..e))
            .ok_or_else(|| elf_err("segment data outside the file"))?;
        let mut at = paddr & !0xFFF;
        while at < end {
            let page = pages.entry(at).or_insert_with(|| vec![0u8; 4096]);
            for (i, byte) in page.iter_mut().enumerate() {
                let a = at + i as u64;
                if a >= paddr && a < end {
                    let k = (a - paddr) as usize;
                    if k < bytes.len() {
                        *byte = bytes[k];
                    }
                }
            }
            at += 4096;
        }
    }
    if pages.is_empty() {
        return Err(elf_err("no PT_LOAD segment"));
    }
    Ok(Loaded {
        entry,
        pages: pages.into_iter().collect(),
    })
}

/// The image's page tables: PML4 entry 0 maps the first GiB at virtual = guest
/// physical with the C-bit set (private), entry 1 maps it again at
/// [`layout::SHARED_VIEW`] with the C-bit clear (shared); 2 MiB pages, writable,
/// accessed and dirty bits preset (so the CPU never writes the tables).
pub fn page_tables() -> Vec<(u64, Vec<u8>)> {
    let c = 1u64 << C_BIT;
    let table = |entries: &dyn Fn(usize) -> u64| {
        let mut p = vec![0u8; 4096];
        for i in 0..512 {
            p[i * 8..i * 8 + 8].copy_from_slice(&entries(i).to_le_bytes());
        }
        p
    };
    // Present, writable, accessed (0x23); large pages also dirty and PS (0xE3).
    vec![
        (
            layout::PML4,
            table(&|i| match i {
                0 => layout::PDPT_PRIVATE | c | 0x23,
                1 => layout::PDPT_SHARED | c | 0x23,
                _ => 0,
            }),
        ),
        (
            layout::PDPT_PRIVATE,
            table(&|i| {
                if i == 0 {
                    layout::PD_PRIVATE | c | 0x23
                } else {
                    0
                }
            }),
        ),
        (
            layout::PD_PRIVATE,
            table(&|i| ((i as u64) << 21) | c | 0xE3),
        ),
        (
            layout::PDPT_SHARED,
            table(&|i| {
                if i == 0 {
                    layout::PD_SHARED | c | 0x23
                } else {
                    0
                }
            }),
        ),
        (layout::PD_SHARED, table(&|i| ((i as u64) << 21) | 0xE3)),
    ]
}

/// The boot processor's VMSA: 32-bit protected mode (CR0 0x31, flat 4 GiB code and
/// data segments) at `entry`, and exactly the other values KVM writes into a VMSA it
/// launches (EFER.SVME, XCR0 1, x87 FCW 0x37F, MXCSR 0x1F80, the reset PAT, DR6 and
/// DR7), so that the page the PSP measures is the page in the file.
pub fn boot_vmsa(entry: u64) -> Box<SevVmsa> {
    let mut v = SevVmsa::new_box_zeroed().unwrap_or_else(|_| Box::new(SevVmsa::new_zeroed()));
    let seg = |selector: u16, attrib: u16| SevSelector {
        selector,
        attrib,
        limit: 0xFFFF_FFFF,
        base: 0,
    };
    v.cs = seg(0x08, 0x0C9B);
    for s in [&mut v.ds, &mut v.es, &mut v.ss, &mut v.fs, &mut v.gs] {
        *s = seg(0x10, 0x0C93);
    }
    v.gdtr = SevSelector {
        selector: 0,
        attrib: 0,
        limit: 0xFFFF,
        base: 0,
    };
    v.idtr = v.gdtr;
    v.ldtr = SevSelector {
        selector: 0,
        attrib: 0x0082,
        limit: 0xFFFF,
        base: 0,
    };
    v.tr = SevSelector {
        selector: 0,
        attrib: 0x008B,
        limit: 0xFFFF,
        base: 0,
    };
    v.cr0 = 0x31;
    v.efer = 0x1000;
    v.rip = entry;
    v.rflags = 0x2;
    v.xcr0 = 1;
    v.x87_fcw = 0x37F;
    v.mxcsr = 0x1F80;
    v.pat = 0x0007_0406_0007_0406;
    v.dr6 = 0xFFFF_0FF0;
    v.dr7 = 0x400;
    v.sev_features = SevFeatures::new().with_snp(true);
    v
}

/// Build the IGVM file of a machine image: `boot` (the VMPL0 ELF, entered in 32-bit
/// protected mode at its `e_entry`) and `extra` ELFs (loaded and measured, started by
/// the VMPL0 image itself), with the layout of [`layout`].
pub fn build(boot: &[u8], extra: &[&[u8]]) -> Result<Vec<u8>, Error> {
    let first = load_elf(boot)?;
    let mut pages: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
    for (gpa, data) in page_tables() {
        pages.insert(gpa, data);
    }
    for loaded in std::iter::once(Ok(first.pages.clone()))
        .chain(extra.iter().map(|e| load_elf(e).map(|l| l.pages)))
    {
        for (gpa, data) in loaded? {
            if pages.insert(gpa, data).is_some() {
                return Err(elf_err(format!("two images load page {gpa:#x}")));
            }
        }
    }
    let mut directives = page_directives(pages, layout::SECRETS, layout::CPUID);
    directives.push(IgvmDirectiveHeader::ParameterArea {
        number_of_bytes: PAGE_SIZE_4K,
        parameter_area_index: 0,
        initial_data: Vec::new(),
    });
    directives.push(IgvmDirectiveHeader::CommandLine(IGVM_VHS_PARAMETER {
        parameter_area_index: 0,
        byte_offset: 0,
    }));
    directives.push(IgvmDirectiveHeader::ParameterInsert(
        IGVM_VHS_PARAMETER_INSERT {
            gpa: layout::CMDLINE,
            compatibility_mask: SNP_MASK,
            parameter_area_index: 0,
        },
    ));
    directives.push(IgvmDirectiveHeader::SnpVpContext {
        gpa: VMSA_GPA,
        compatibility_mask: SNP_MASK,
        vp_index: 0,
        vmsa: boot_vmsa(first.entry),
    });
    finish(directives)
}

/// Where the SVSM image is linked and the size of its region (the linker script's
/// region, `nitride_protocol::emulated::{SVSM_BASE, SVSM_SIZE}`).
pub const SVSM_REGION: (u64, u64) = (
    nitride_protocol::emulated::SVSM_BASE,
    nitride_protocol::emulated::SVSM_SIZE,
);

/// Build the IGVM file of the SVSM with a guest image (`docs/real-snp.md`): the
/// SVSM's text, read-only data and `.data` (its `.bss` it validates itself), the
/// guest ELF (every page it loads, measured), the SNP secrets and CPUID pages, the
/// command-line and memory-map parameter pages, the measured launch configuration
/// ([`nitride_protocol::snp::launch::LaunchConfig`]: the SVSM region, the guest's
/// VMPL, entry and pages), the vault's measured launch configuration `vault_config`
/// (the default one when `None`: the same page, so the same launch digest, as
/// `Some(&LaunchConfig::DEFAULT)`) and the launch VMSA at the SVSM's 32-bit entry.
pub fn build_svsm(
    svsm: &[u8],
    guest: &[u8],
    vault_config: Option<&nitride_protocol::launch_config::LaunchConfig>,
) -> Result<Vec<u8>, Error> {
    use nitride_protocol::snp::launch::{gpa, LaunchConfig};
    let svsm_loaded = load_elf_pages(svsm, true)?;
    let guest_loaded = load_elf(guest)?;
    let (base, size) = SVSM_REGION;
    for (page, _) in &svsm_loaded.pages {
        if !(base..base + size).contains(page) {
            return Err(elf_err(format!(
                "SVSM page {page:#x} outside its region {base:#x}..{:#x}",
                base + size
            )));
        }
    }
    let mut config = LaunchConfig::new(base, size, 1, guest_loaded.entry);
    let mut run: Option<(u64, u64)> = None;
    for (page, _) in &guest_loaded.pages {
        if (base..base + size).contains(page) || *page < gpa::LOW_RESERVED_END {
            return Err(elf_err(format!(
                "guest page {page:#x} inside the SVSM region or the low megabyte"
            )));
        }
        run = match run {
            Some((s, e)) if e == *page => Some((s, e + 4096)),
            Some((s, e)) => {
                if !config.push_range(s, e) {
                    return Err(elf_err("the guest image has too many separate ranges"));
                }
                Some((*page, page + 4096))
            }
            None => Some((*page, page + 4096)),
        };
    }
    if let Some((s, e)) = run {
        if !config.push_range(s, e) {
            return Err(elf_err("the guest image has too many separate ranges"));
        }
    }
    let mut pages: std::collections::BTreeMap<u64, Vec<u8>> = Default::default();
    for (gpa, data) in svsm_loaded.pages.into_iter().chain(guest_loaded.pages) {
        if pages.insert(gpa, data).is_some() {
            return Err(elf_err(format!(
                "the SVSM and the guest both load page {gpa:#x}"
            )));
        }
    }
    pages.insert(gpa::LAUNCH_CONFIG, config.page().to_vec());
    let vault_config =
        vault_config.unwrap_or(&nitride_protocol::launch_config::LaunchConfig::DEFAULT);
    pages.insert(gpa::VAULT_CONFIG, vault_config.to_page().to_vec());
    let mut directives = page_directives(pages, gpa::SECRETS, gpa::CPUID);
    for (index, at) in [(0u32, gpa::CMDLINE), (1, gpa::MEMORY_MAP)] {
        directives.push(IgvmDirectiveHeader::ParameterArea {
            number_of_bytes: PAGE_SIZE_4K,
            parameter_area_index: index,
            initial_data: Vec::new(),
        });
        let param = IGVM_VHS_PARAMETER {
            parameter_area_index: index,
            byte_offset: 0,
        };
        directives.push(if index == 0 {
            IgvmDirectiveHeader::CommandLine(param)
        } else {
            IgvmDirectiveHeader::MemoryMap(param)
        });
        directives.push(IgvmDirectiveHeader::ParameterInsert(
            IGVM_VHS_PARAMETER_INSERT {
                gpa: at,
                compatibility_mask: SNP_MASK,
                parameter_area_index: index,
            },
        ));
    }
    directives.push(IgvmDirectiveHeader::SnpVpContext {
        gpa: VMSA_GPA,
        compatibility_mask: SNP_MASK,
        vp_index: 0,
        vmsa: boot_vmsa(svsm_loaded.entry),
    });
    finish(directives)
}

/// The measured pages' directives (`pages`, in address order), then the PSP-filled
/// SNP secrets page at `secrets` and CPUID page at `cpuid`.
fn page_directives(
    pages: std::collections::BTreeMap<u64, Vec<u8>>,
    secrets: u64,
    cpuid: u64,
) -> Vec<IgvmDirectiveHeader> {
    let flags = IgvmPageDataFlags::new();
    let mut directives: Vec<_> = pages
        .into_iter()
        .map(|(gpa, data)| IgvmDirectiveHeader::PageData {
            gpa,
            compatibility_mask: SNP_MASK,
            flags,
            data_type: IgvmPageDataType::NORMAL,
            data,
        })
        .collect();
    for (gpa, data_type) in [
        (secrets, IgvmPageDataType::SECRETS),
        (cpuid, IgvmPageDataType::CPUID_DATA),
    ] {
        directives.push(IgvmDirectiveHeader::PageData {
            gpa,
            compatibility_mask: SNP_MASK,
            flags,
            data_type,
            data: Vec::new(),
        });
    }
    directives
}

/// The IGVM file of `directives`: the SEV-SNP platform header and the guest policy.
fn finish(directives: Vec<IgvmDirectiveHeader>) -> Result<Vec<u8>, Error> {
    let platform = IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: SNP_MASK,
        highest_vtl: 0,
        platform_type: IgvmPlatformType::SEV_SNP,
        platform_version: igvm_defs::IGVM_SEV_SNP_PLATFORM_VERSION,
        shared_gpa_boundary: 0,
    });
    let init = IgvmInitializationHeader::GuestPolicy {
        policy: GUEST_POLICY,
        compatibility_mask: SNP_MASK,
    };
    let file = IgvmFile::new(
        igvm::IgvmRevision::V1,
        vec![platform],
        vec![init],
        directives,
    )
    .map_err(|e| Error::Igvm(e.to_string()))?;
    let mut out = Vec::new();
    file.serialize(&mut out)
        .map_err(|e| Error::Igvm(e.to_string()))?;
    Ok(out)
}

fn parse(file: &[u8]) -> Result<IgvmFile, Error> {
    IgvmFile::new_from_binary(file, Some(igvm::IsolationType::Snp))
        .map_err(|e| Error::Igvm(e.to_string()))
}

/// SNP page types in PAGE_INFO (SNP ABI, SNP_LAUNCH_UPDATE).
mod page_type {
    pub const NORMAL: u8 = 1;
    pub const VMSA: u8 = 2;
    pub const UNMEASURED: u8 = 4;
    pub const SECRETS: u8 = 5;
    pub const CPUID: u8 = 6;
}

/// The PSP's launch digest: starts at 48 zero bytes; each launched page replaces it
/// with SHA-384 of its 0x70-byte PAGE_INFO.
#[derive(Clone, Debug)]
pub struct Digest384([u8; 48]);

impl Default for Digest384 {
    fn default() -> Self {
        Self([0; 48])
    }
}

impl Digest384 {
    /// Chain one page: `contents` is SHA-384 of the page for NORMAL and VMSA pages,
    /// zero for the others; no VMPL1-3 permissions (KVM launches every page so).
    pub fn page(&mut self, page_type: u8, gpa: u64, contents: [u8; 48]) {
        let mut info = [0u8; 0x70];
        info[..48].copy_from_slice(&self.0);
        info[48..96].copy_from_slice(&contents);
        info[0x60..0x62].copy_from_slice(&0x70u16.to_le_bytes());
        info[0x62] = page_type;
        info[0x68..0x70].copy_from_slice(&gpa.to_le_bytes());
        self.0 = Sha384::digest(info).into();
    }

    /// The digest so far.
    pub fn value(&self) -> [u8; 48] {
        self.0
    }
}

fn sha384_page(data: &[u8]) -> [u8; 48] {
    let mut page = [0u8; 4096];
    page[..data.len()].copy_from_slice(data);
    Sha384::digest(page).into()
}

/// The launch digest of an IGVM file, chained here: the SNP directives in file order
/// (NORMAL pages by content, unmeasured, secrets and CPUID pages as such, parameter
/// areas as unmeasured pages where they are inserted; shared pages not at all), then
/// the VMSA, which KVM launches after every page.
pub fn launch_digest(file: &[u8]) -> Result<[u8; 48], Error> {
    let igvm = parse(file)?;
    let mut digest = Digest384::default();
    let mut areas = std::collections::HashMap::new();
    let mut vmsas = Vec::new();
    let applies = |mask: Option<u32>| mask.is_none_or(|m| m & SNP_MASK != 0);
    for d in igvm.directives() {
        if !applies(d.compatibility_mask()) {
            continue;
        }
        match d {
            IgvmDirectiveHeader::PageData {
                gpa,
                flags,
                data_type,
                data,
                ..
            } => {
                if flags.shared() {
                    continue;
                }
                let (ty, contents) = match *data_type {
                    IgvmPageDataType::SECRETS => (page_type::SECRETS, [0; 48]),
                    IgvmPageDataType::CPUID_DATA | IgvmPageDataType::CPUID_XF => {
                        (page_type::CPUID, [0; 48])
                    }
                    _ if flags.unmeasured() => (page_type::UNMEASURED, [0; 48]),
                    _ => (page_type::NORMAL, sha384_page(data)),
                };
                digest.page(ty, *gpa, contents);
            }
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes,
                parameter_area_index,
                ..
            } => {
                areas.insert(*parameter_area_index, *number_of_bytes);
            }
            IgvmDirectiveHeader::ParameterInsert(p) => {
                let size = areas
                    .get(&p.parameter_area_index)
                    .ok_or_else(|| Error::Igvm("insert of an unknown parameter area".into()))?;
                for off in (0..*size).step_by(4096) {
                    digest.page(page_type::UNMEASURED, p.gpa + off, [0; 48]);
                }
            }
            IgvmDirectiveHeader::SnpVpContext { gpa, vmsa, .. } => {
                vmsas.push((*gpa, sha384_page(vmsa.as_bytes())));
            }
            _ => {}
        }
    }
    for (gpa, contents) in vmsas {
        digest.page(page_type::VMSA, gpa, contents);
    }
    Ok(digest.value())
}

/// The launch digest of an IGVM file according to the `igvm` crate.
pub fn reference_digest(file: &[u8]) -> Result<[u8; 48], Error> {
    let igvm = parse(file)?;
    igvm::measurement::generate_snp_measurement(igvm.initializations(), igvm.directives(), SNP_MASK)
        .map_err(|e| Error::Igvm(format!("{e:?}")))
}

/// How many pages a file launches (for the per-page cost).
pub fn launched_pages(file: &[u8]) -> Result<usize, Error> {
    let igvm = parse(file)?;
    let mut areas = std::collections::HashMap::new();
    let mut n = 0usize;
    for d in igvm.directives() {
        match d {
            IgvmDirectiveHeader::PageData { flags, .. } if !flags.shared() => n += 1,
            IgvmDirectiveHeader::ParameterArea {
                number_of_bytes,
                parameter_area_index,
                ..
            } => {
                areas.insert(*parameter_area_index, *number_of_bytes);
            }
            IgvmDirectiveHeader::ParameterInsert(p) => {
                n += areas.get(&p.parameter_area_index).copied().unwrap_or(0) as usize / 4096
            }
            IgvmDirectiveHeader::SnpVpContext { .. } => n += 1,
            _ => {}
        }
    }
    Ok(n)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// A minimal static ELF64 with one PT_LOAD segment at `paddr`.
    fn elf(paddr: u64, data: &[u8], memsz: u64, entry: u64) -> Vec<u8> {
        let mut e = vec![0u8; 0x78];
        e[..4].copy_from_slice(b"\x7fELF");
        e[4] = 2;
        e[5] = 1;
        e[0x18..0x20].copy_from_slice(&entry.to_le_bytes());
        e[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3A].copy_from_slice(&1u16.to_le_bytes());
        let ph = 0x40;
        e[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
        e[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes());
        e[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes());
        e[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes());
        e[ph + 32..ph + 40].copy_from_slice(&(data.len() as u64).to_le_bytes());
        e[ph + 40..ph + 48].copy_from_slice(&memsz.to_le_bytes());
        e.extend_from_slice(data);
        e
    }

    #[test]
    fn elf_pages_have_file_bytes_then_zeros() {
        let l = load_elf(&elf(0x10_0800, &[1, 2, 3], 0x1000, 0x10_0800)).unwrap();
        assert_eq!(l.entry, 0x10_0800);
        assert_eq!(
            l.pages.iter().map(|p| p.0).collect::<Vec<_>>(),
            [0x10_0000, 0x10_1000]
        );
        assert_eq!(&l.pages[0].1[0x800..0x804], &[1, 2, 3, 0]);
        assert!(l.pages[1].1.iter().all(|&b| b == 0));
        assert!(load_elf(&elf(0x8000, &[1], 1, 0)).is_err());
        assert!(load_elf(&elf(layout::RAM_END - 1, &[1], 2, 0)).is_err());
    }

    #[test]
    fn our_digest_agrees_with_the_igvm_crate() {
        let boot = elf(0x10_0000, &[0xF4; 100], 0x3000, 0x10_0000);
        let other = elf(0x40_0000, &[0x90; 5000], 0x2000, 0x40_0000);
        let file = build(&boot, &[&other]).unwrap();
        let ours = launch_digest(&file).unwrap();
        assert_eq!(ours, reference_digest(&file).unwrap());
        assert_ne!(ours, [0; 48]);
        // 5 page tables + 3 + 2 image pages + secrets + CPUID + 1 parameter page + VMSA.
        assert_eq!(launched_pages(&file).unwrap(), 5 + 5 + 2 + 1 + 1);
        // The digest covers the contents: one byte of the second image changes it.
        let other2 = elf(0x40_0000, &[0x91; 5000], 0x2000, 0x40_0000);
        let file2 = build(&boot, &[&other2]).unwrap();
        assert_ne!(launch_digest(&file2).unwrap(), ours);
        // Overlapping images are refused.
        assert!(build(&boot, &[&boot]).is_err());
    }

    /// The vault's launch configuration is a measured page of the SVSM image: a
    /// changed policy or owner key changes the launch digest; none and the default
    /// one measure the same; the page holds the encoding then zeros.
    #[test]
    fn the_launch_configuration_is_measured() {
        use nitride_protocol::launch_config::{LaunchConfig, LaunchPolicy};
        let (base, _) = SVSM_REGION;
        let svsm = elf(base, &[0xF4; 100], 0x1000, base);
        let guest = elf(0x40_0000, &[0x90; 100], 0x1000, 0x40_0000);
        let digest = |c: Option<&LaunchConfig>| {
            let file = build_svsm(&svsm, &guest, c).unwrap();
            assert_eq!(
                launch_digest(&file).unwrap(),
                reference_digest(&file).unwrap()
            );
            launch_digest(&file).unwrap()
        };
        let import = LaunchConfig {
            policy: LaunchPolicy::PLAINTEXT_IMPORT,
            owner_key: None,
        };
        let mut key = [9u8; 97];
        key[0] = 4;
        let owned = LaunchConfig {
            policy: LaunchPolicy::empty(),
            owner_key: Some(key),
        };
        let none = digest(None);
        assert_eq!(none, digest(Some(&LaunchConfig::DEFAULT)));
        assert_ne!(none, digest(Some(&import)));
        assert_ne!(none, digest(Some(&owned)));
        assert_ne!(digest(Some(&import)), digest(Some(&owned)));
        assert_eq!(
            LaunchConfig::from_page(&owned.to_page()).unwrap(),
            (owned, owned.digest())
        );
    }

    #[test]
    fn page_info_layout() {
        // One NORMAL page of zeros at 0, chained from the zero digest, by hand.
        let mut d = Digest384::default();
        d.page(1, 0x1000, sha384_page(&[]));
        let mut info = vec![0u8; 48];
        info.extend_from_slice(&Sha384::digest([0u8; 4096]));
        info.extend_from_slice(&[0x70, 0, 1, 0, 0, 0, 0, 0]);
        info.extend_from_slice(&0x1000u64.to_le_bytes());
        assert_eq!(info.len(), 0x70);
        assert_eq!(d.value(), <[u8; 48]>::from(Sha384::digest(&info)));
    }
}
