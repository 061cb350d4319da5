//! The IGVM file the machine launches, parsed with the layouts of `igvm_defs` (the
//! `igvm` crate itself needs `std`; the host tests of `nitride-qemu` parse the same
//! files with it and compare), strictly: every header in bounds and of its exact
//! size, padding and reserved fields zero, the CRC32 checked, the sections in order,
//! and a directive the machine does not implement refused by name (unless the file
//! marks it optional).
//!
//! On top of the format, the rules of a KVM/QEMU launch, so that a file that boots
//! here is launchable on a real SNP host: an SEV-SNP platform header and a guest
//! policy; 4 KiB pages inside guest RAM, each launched once; exactly one VP context,
//! the boot processor's (index 0), at [`crate::LAUNCH_VMSA_GPA`], which passes
//! [`crate::vmsa::check_launch_vmsa`].

use alloc::vec::Vec;
use core::mem::size_of;

use igvm_defs::{
    IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType, IgvmVariableHeaderType,
    IGVM_FIXED_HEADER, IGVM_VHS_GUEST_POLICY, IGVM_VHS_PAGE_DATA, IGVM_VHS_PARAMETER,
    IGVM_VHS_PARAMETER_AREA, IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_REQUIRED_MEMORY,
    IGVM_VHS_SUPPORTED_PLATFORM, IGVM_VHS_VARIABLE_HEADER, IGVM_VHS_VP_CONTEXT,
    IGVM_VHT_OPTIONAL_BIT,
};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::vmsa::{check_launch_vmsa, VmsaError};
use crate::{LAUNCH_VMSA_GPA, RAM_END};

/// What kind of page a page directive launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// Contents measured.
    Normal,
    /// Contents loaded, not measured.
    Unmeasured,
    /// Loaded shared (host-visible): neither measured nor private.
    Shared,
    /// The SNP secrets page (filled by the PSP).
    Secrets,
    /// The SNP CPUID page (filled by the host, checked by the PSP).
    Cpuid,
}

/// One step of the launch, in file order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Place a page (`data`: 4 KiB from the file; `None` = zeros).
    Page {
        /// Guest-physical address.
        gpa: u64,
        /// Its kind.
        kind: PageKind,
        /// Its contents.
        data: Option<&'a [u8]>,
    },
    /// Insert parameter area `area` (`bytes` long) at `gpa`: unmeasured pages the
    /// loader fills.
    Parameter {
        /// Guest-physical address.
        gpa: u64,
        /// Parameter area index.
        area: u32,
        /// Its size.
        bytes: u64,
    },
}

/// A parameter the loader writes into an area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    /// Parameter area index.
    pub area: u32,
    /// Byte offset in the area.
    pub offset: u32,
}

/// A parsed, checked IGVM file.
#[derive(Clone, Debug)]
pub struct Plan<'a> {
    /// The guest policy.
    pub policy: u64,
    /// The page steps, in file order.
    pub actions: Vec<Action<'a>>,
    /// The boot processor's VMSA page.
    pub vmsa: [u8; 4096],
    /// Where the command line goes, if the file asks for it.
    pub cmdline: Option<Param>,
    /// Where the memory map goes, if the file asks for it.
    pub memory_map: Option<Param>,
}

/// Why a file was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IgvmError {
    /// The fixed header is malformed (what is wrong).
    FixedHeader(&'static str),
    /// The CRC32 of the headers does not match.
    Checksum {
        /// In the file.
        stored: u32,
        /// Computed.
        computed: u32,
    },
    /// A variable header is malformed (its offset in the file, what is wrong).
    Header(usize, &'static str),
    /// A required header type the machine does not implement.
    Unsupported(u32),
    /// No SEV-SNP platform header.
    NoSnpPlatform,
    /// No guest policy for the SEV-SNP platform.
    NoPolicy,
    /// A page outside guest RAM or not 4 KiB aligned.
    BadGpa(u64),
    /// A page launched twice.
    Duplicate(u64),
    /// Not exactly one VP context.
    VpContexts(usize),
    /// The VP context is not the boot processor's at the launch VMSA address.
    VpContext {
        /// Its VP index.
        vp_index: u16,
        /// Its address.
        gpa: u64,
    },
    /// The launch VMSA breaks a KVM launch rule.
    Vmsa(VmsaError),
}

impl core::fmt::Display for IgvmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::FixedHeader(w) => write!(f, "IGVM fixed header: {w}"),
            Self::Checksum { stored, computed } => {
                write!(f, "IGVM checksum {stored:#x}, computed {computed:#x}")
            }
            Self::Header(at, w) => write!(f, "IGVM header at {at:#x}: {w}"),
            Self::Unsupported(t) => write!(f, "IGVM header type {t:#x} is not supported"),
            Self::NoSnpPlatform => f.write_str("IGVM file has no SEV-SNP platform"),
            Self::NoPolicy => f.write_str("IGVM file has no SEV-SNP guest policy"),
            Self::BadGpa(g) => write!(
                f,
                "IGVM page at {g:#x}: not 4 KiB aligned or outside guest RAM (0..{RAM_END:#x})"
            ),
            Self::Duplicate(g) => write!(f, "IGVM page at {g:#x} launched twice"),
            Self::VpContexts(n) => {
                write!(f, "IGVM file has {n} VP contexts: KVM launches exactly one")
            }
            Self::VpContext { vp_index, gpa } => write!(
                f,
                "IGVM VP context {vp_index} at {gpa:#x}: KVM launches only VP 0 at {LAUNCH_VMSA_GPA:#x}"
            ),
            Self::Vmsa(e) => write!(f, "{e}"),
        }
    }
}

fn read<T: FromBytes + KnownLayout + Immutable>(body: &[u8], at: usize) -> Result<T, IgvmError> {
    if body.len() != size_of::<T>() {
        return Err(IgvmError::Header(at, "length is not the size of its type"));
    }
    T::read_from_bytes(body).map_err(|_| IgvmError::Header(at, "unreadable"))
}

fn page_gpa(gpa: u64) -> Result<u64, IgvmError> {
    if !gpa.is_multiple_of(4096) || gpa >= RAM_END {
        return Err(IgvmError::BadGpa(gpa));
    }
    Ok(gpa)
}

/// The file data of a directive: 4 KiB at `file_offset` (0 = none).
fn file_page(
    file: &[u8],
    data_start: usize,
    file_offset: u32,
    at: usize,
) -> Result<Option<&[u8]>, IgvmError> {
    if file_offset == 0 {
        return Ok(None);
    }
    let start = file_offset as usize;
    if start < data_start {
        return Err(IgvmError::Header(at, "file data inside the headers"));
    }
    start
        .checked_add(4096)
        .and_then(|end| file.get(start..end))
        .map(Some)
        .ok_or(IgvmError::Header(at, "file data outside the file"))
}

/// Parse and check `file`.
pub fn parse(file: &[u8]) -> Result<Plan<'_>, IgvmError> {
    let (fixed, _) = IGVM_FIXED_HEADER::read_from_prefix(file)
        .map_err(|_| IgvmError::FixedHeader("shorter than the fixed header"))?;
    if fixed.magic != igvm_defs::IGVM_MAGIC_VALUE {
        return Err(IgvmError::FixedHeader("bad magic"));
    }
    if fixed.format_version != igvm_defs::IGVM_FORMAT_VERSION_1 {
        return Err(IgvmError::FixedHeader("format version is not 1"));
    }
    if fixed.total_file_size as usize != file.len() {
        return Err(IgvmError::FixedHeader("total size is not the file's size"));
    }
    let vh_start = fixed.variable_header_offset as usize;
    let vh_end = vh_start
        .checked_add(fixed.variable_header_size as usize)
        .filter(|&e| e <= file.len())
        .ok_or(IgvmError::FixedHeader("variable headers outside the file"))?;
    if vh_start < size_of::<IGVM_FIXED_HEADER>() || !vh_start.is_multiple_of(8) {
        return Err(IgvmError::FixedHeader("variable headers misplaced"));
    }
    let mut zeroed = fixed;
    zeroed.checksum = 0;
    let mut crc = crc32fast::Hasher::new();
    crc.update(zeroed.as_bytes());
    crc.update(&file[vh_start..vh_end]);
    let computed = crc.finalize();
    if computed != fixed.checksum {
        return Err(IgvmError::Checksum {
            stored: fixed.checksum,
            computed,
        });
    }

    let mut snp_mask = None;
    let mut policy = None;
    let mut actions = Vec::new();
    let mut areas: Vec<(u32, u64)> = Vec::new();
    let mut vps = Vec::new();
    let mut cmdline = None;
    let mut memory_map = None;
    let mut stage = 0u8;
    let mut at = vh_start;
    while at < vh_end {
        let head = file
            .get(at..at + 8)
            .ok_or(IgvmError::Header(at, "truncated"))?;
        let head = IGVM_VHS_VARIABLE_HEADER::read_from_bytes(head)
            .map_err(|_| IgvmError::Header(at, "unreadable"))?;
        let len = head.length as usize;
        let body_at = at + 8;
        let padded = len.div_ceil(8) * 8;
        let body = body_at
            .checked_add(len)
            .filter(|&e| e <= vh_end)
            .map(|e| &file[body_at..e])
            .ok_or(IgvmError::Header(at, "body outside the variable headers"))?;
        let pad_end = (body_at + padded).min(vh_end);
        if file[body_at + len..pad_end].iter().any(|&b| b != 0) {
            return Err(IgvmError::Header(at, "padding not zero"));
        }
        let raw = head.typ.0;
        let optional = raw & IGVM_VHT_OPTIONAL_BIT != 0;
        let typ = raw & !IGVM_VHT_OPTIONAL_BIT;
        let this_stage = match typ {
            0x1..=0x100 => 0,
            0x101..=0x200 => 1,
            0x301..=0x400 => 2,
            _ => return Err(IgvmError::Header(at, "type outside every section")),
        };
        if this_stage < stage {
            return Err(IgvmError::Header(at, "header after a later section"));
        }
        stage = this_stage;
        let ours = |mask: u32| snp_mask.is_some_and(|m: u32| m & mask != 0);
        match IgvmVariableHeaderType(typ) {
            IgvmVariableHeaderType::IGVM_VHT_SUPPORTED_PLATFORM => {
                let p: IGVM_VHS_SUPPORTED_PLATFORM = read(body, at)?;
                if p.platform_type == IgvmPlatformType::SEV_SNP {
                    if snp_mask.is_some() || p.compatibility_mask.count_ones() != 1 {
                        return Err(IgvmError::Header(at, "SEV-SNP platform mask"));
                    }
                    snp_mask = Some(p.compatibility_mask);
                }
            }
            IgvmVariableHeaderType::IGVM_VHT_GUEST_POLICY => {
                let p: IGVM_VHS_GUEST_POLICY = read(body, at)?;
                if p.reserved != 0 {
                    return Err(IgvmError::Header(at, "reserved not zero"));
                }
                if ours(p.compatibility_mask) {
                    policy = Some(p.policy);
                }
            }
            IgvmVariableHeaderType::IGVM_VHT_PAGE_DATA => {
                let p: IGVM_VHS_PAGE_DATA = read(body, at)?;
                if p.reserved != 0 {
                    return Err(IgvmError::Header(at, "reserved not zero"));
                }
                if !ours(p.compatibility_mask) {
                    continue_next(&mut at, padded);
                    continue;
                }
                let flags: IgvmPageDataFlags = p.flags;
                if flags.is_2mb_page() || flags.reserved() != 0 {
                    return Err(IgvmError::Header(at, "2 MiB or reserved page flags"));
                }
                let kind = match p.data_type {
                    IgvmPageDataType::NORMAL if flags.shared() => PageKind::Shared,
                    IgvmPageDataType::NORMAL if flags.unmeasured() => PageKind::Unmeasured,
                    IgvmPageDataType::NORMAL => PageKind::Normal,
                    IgvmPageDataType::SECRETS => PageKind::Secrets,
                    IgvmPageDataType::CPUID_DATA | IgvmPageDataType::CPUID_XF => PageKind::Cpuid,
                    _ => return Err(IgvmError::Header(at, "unknown page data type")),
                };
                let data = file_page(file, vh_end, p.file_offset, at)?;
                actions.push(Action::Page {
                    gpa: page_gpa(p.gpa)?,
                    kind,
                    data,
                });
            }
            IgvmVariableHeaderType::IGVM_VHT_PARAMETER_AREA => {
                let p: IGVM_VHS_PARAMETER_AREA = read(body, at)?;
                if p.number_of_bytes == 0 || !p.number_of_bytes.is_multiple_of(4096) {
                    return Err(IgvmError::Header(at, "parameter area size"));
                }
                if p.file_offset != 0 {
                    return Err(IgvmError::Header(at, "parameter area initial data"));
                }
                if areas.iter().any(|a| a.0 == p.parameter_area_index) {
                    return Err(IgvmError::Header(at, "parameter area index reused"));
                }
                areas.push((p.parameter_area_index, p.number_of_bytes));
            }
            IgvmVariableHeaderType::IGVM_VHT_COMMAND_LINE
            | IgvmVariableHeaderType::IGVM_VHT_MEMORY_MAP => {
                let p: IGVM_VHS_PARAMETER = read(body, at)?;
                let size = areas
                    .iter()
                    .find(|a| a.0 == p.parameter_area_index)
                    .ok_or(IgvmError::Header(at, "unknown parameter area"))?
                    .1;
                if u64::from(p.byte_offset) >= size {
                    return Err(IgvmError::Header(at, "parameter offset outside its area"));
                }
                let param = Some(Param {
                    area: p.parameter_area_index,
                    offset: p.byte_offset,
                });
                if typ == IgvmVariableHeaderType::IGVM_VHT_COMMAND_LINE.0 {
                    cmdline = param;
                } else {
                    memory_map = param;
                }
            }
            IgvmVariableHeaderType::IGVM_VHT_PARAMETER_INSERT => {
                let p: IGVM_VHS_PARAMETER_INSERT = read(body, at)?;
                if ours(p.compatibility_mask) {
                    let bytes = areas
                        .iter()
                        .find(|a| a.0 == p.parameter_area_index)
                        .ok_or(IgvmError::Header(at, "unknown parameter area"))?
                        .1;
                    let end = p
                        .gpa
                        .checked_add(bytes)
                        .filter(|&e| e <= RAM_END)
                        .ok_or(IgvmError::BadGpa(p.gpa))?;
                    let _ = end;
                    actions.push(Action::Parameter {
                        gpa: page_gpa(p.gpa)?,
                        area: p.parameter_area_index,
                        bytes,
                    });
                }
            }
            IgvmVariableHeaderType::IGVM_VHT_VP_CONTEXT => {
                let p: IGVM_VHS_VP_CONTEXT = read(body, at)?;
                if p.reserved != 0 {
                    return Err(IgvmError::Header(at, "reserved not zero"));
                }
                if ours(p.compatibility_mask) {
                    let data = file_page(file, vh_end, p.file_offset, at)?
                        .ok_or(IgvmError::Header(at, "VP context without data"))?;
                    vps.push((p.vp_index, p.gpa.get(), data));
                }
            }
            IgvmVariableHeaderType::IGVM_VHT_REQUIRED_MEMORY => {
                let p: IGVM_VHS_REQUIRED_MEMORY = read(body, at)?;
                if ours(p.compatibility_mask) {
                    let end = p.gpa.checked_add(u64::from(p.number_of_bytes));
                    if !p.gpa.is_multiple_of(4096) || end.is_none_or(|e| e > RAM_END) {
                        return Err(IgvmError::BadGpa(p.gpa));
                    }
                }
            }
            _ if optional => {}
            _ => return Err(IgvmError::Unsupported(typ)),
        }
        continue_next(&mut at, padded);
    }
    let mask = snp_mask.ok_or(IgvmError::NoSnpPlatform)?;
    let _ = mask;
    let policy = policy.ok_or(IgvmError::NoPolicy)?;

    // Every page once.
    let mut seen: Vec<u64> = Vec::new();
    for a in &actions {
        let (gpa, pages) = match *a {
            Action::Page { gpa, .. } => (gpa, 1),
            Action::Parameter { gpa, bytes, .. } => (gpa, bytes / 4096),
        };
        for i in 0..pages {
            seen.push(gpa + i * 4096);
        }
    }
    seen.sort_unstable();
    if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
        return Err(IgvmError::Duplicate(w[0]));
    }

    if vps.len() != 1 {
        return Err(IgvmError::VpContexts(vps.len()));
    }
    let (vp_index, gpa, data) = vps[0];
    if vp_index != 0 || gpa != LAUNCH_VMSA_GPA {
        return Err(IgvmError::VpContext { vp_index, gpa });
    }
    let mut vmsa = [0u8; 4096];
    vmsa.copy_from_slice(data);
    check_launch_vmsa(&vmsa).map_err(IgvmError::Vmsa)?;
    Ok(Plan {
        policy,
        actions,
        vmsa,
        cmdline,
        memory_map,
    })
}

fn continue_next(at: &mut usize, padded: usize) {
    *at += 8 + padded;
}

/// The launch digest of a plan, as the PSP computes it for a KVM launch: the pages
/// in file order (parameter areas as unmeasured pages), then the VMSA.
pub fn launch_digest(plan: &Plan<'_>) -> [u8; 48] {
    use crate::measure::{page_type, LaunchDigest};
    let mut d = LaunchDigest::default();
    let zero = [0u8; 4096];
    let mut page = [0u8; 4096];
    for a in &plan.actions {
        match *a {
            Action::Page { gpa, kind, data } => {
                let ty = match kind {
                    PageKind::Normal => page_type::NORMAL,
                    PageKind::Unmeasured => page_type::UNMEASURED,
                    PageKind::Secrets => page_type::SECRETS,
                    PageKind::Cpuid => page_type::CPUID,
                    PageKind::Shared => continue,
                };
                let contents = match data {
                    Some(bytes) => {
                        page.copy_from_slice(bytes);
                        &page
                    }
                    None => &zero,
                };
                d.add(ty, gpa, contents);
            }
            Action::Parameter { gpa, bytes, .. } => {
                for i in 0..bytes / 4096 {
                    d.add(page_type::UNMEASURED, gpa + i * 4096, &zero);
                }
            }
        }
    }
    d.add(page_type::VMSA, LAUNCH_VMSA_GPA, &plan.vmsa);
    d.value()
}
