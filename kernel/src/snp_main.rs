//! The SVSM on SEV-SNP: what runs after the boot code (`arch::snp::boot`) validated
//! `.bss` (`docs/real-snp.md`).
//!
//! 1. CPU tables (the #VC handler), SEV_STATUS (SEV, SEV-ES and SNP, or the VM is
//!    terminated), the CPUID page for CPUID, the measured image layout (the SNP
//!    launch configuration page), the vault's measured launch configuration page,
//!    the host's memory map;
//! 2. the SVSM's own page tables (W^X, C-bit, the GHCB and the guest-request pages
//!    shared), the GHCB, the log, the heap;
//! 3. the guest: its fixed pages validated, written and granted to its VMPL, its
//!    launched image granted (never a page of the SVSM), its VMSA (RMPADJUST VMSA,
//!    AP creation); the PSP client on VMPCK0; the vault;
//! 4. the request loop.
//!
//! Failures before the log works end the VM with a GHCB termination code
//! (`arch::snp::boot::early_failure`); later ones are fatal with a log line.

use crate::arch::snp::boot::{self, early_failure};
use crate::arch::snp::insn::{self, perm, PageSize};
use crate::arch::snp::platform::{Snp, VmsaPage};
use crate::arch::snp::psp::{self as psp_channel, GhcbPsp};
use crate::arch::snp::{ghcb, guest_mem, vc};
use crate::arch::take_once::TakeOnce;
use crate::arch::{cpu, heap, image, paging, serial};
use nitride_kernel::cmdline::Cmdline;
use nitride_kernel::measure;
use nitride_kernel::memory::{GuestMemoryMap, PhysRange, PAGE};
use nitride_kernel::platform::snp::cpuid::CpuidTable;
use nitride_kernel::platform::snp::guest_setup::{self, layout};
use nitride_kernel::platform::snp::memmap;
use nitride_kernel::psp::PspClient;
use nitride_kernel::svsm::Svsm;
use nitride_protocol::emulated::exit;
use nitride_protocol::launch_config::LaunchConfig as VaultLaunchConfig;
use nitride_protocol::snp::ghcb::{ap, nae, off};
use nitride_protocol::snp::launch::{gpa, LaunchConfig};
use nitride_protocol::svsm::secrets;
use nitride_vhsm::VaultPolicy;
use zeroize::Zeroizing;

extern "C" {
    static __svsm_start: u8;
    static __svsm_image_end: u8;
}

/// The guest's VMSA: SVSM memory, which the guest can never reach.
static GUEST_VMSA: TakeOnce<VmsaPage> = TakeOnce::new(VmsaPage([0; 4096]));

/// SEV_STATUS bits that must be set: SEV, SEV-ES, SEV-SNP.
const SEV_SNP: u64 = 0b111;

#[no_mangle]
extern "C" fn svsm_snp_main64() -> ! {
    cpu::init();
    let sev_status = insn::sev_status();
    if sev_status & SEV_SNP != SEV_SNP {
        insn::terminate(early_failure::NO_SNP);
    }
    let c_bit = boot::c_bit();
    let table = match CpuidTable::parse(&boot::launch_page(gpa::CPUID)) {
        Ok(t) if t.c_bit() == c_bit => t,
        _ => insn::terminate(early_failure::CPUID_PAGE),
    };
    vc::set_cpuid(table);
    let svsm_start = core::ptr::addr_of!(__svsm_start) as u64;
    let image_end = core::ptr::addr_of!(__svsm_image_end) as u64;
    let config = match LaunchConfig::parse(&boot::launch_page(gpa::LAUNCH_CONFIG)) {
        Ok(c)
            if c.svsm_base.get() == svsm_start
                && image_end <= svsm_start.saturating_add(c.svsm_size.get()) =>
        {
            c
        }
        _ => insn::terminate(early_failure::LAUNCH_CONFIG),
    };
    let svsm_region = PhysRange {
        start: config.svsm_base.get(),
        end: config.svsm_base.get() + config.svsm_size.get(),
    };
    let tail_start = image_end.next_multiple_of(PAGE);
    let tail_pages = match boot::validate_region_tail(tail_start, svsm_region.end) {
        Ok(n) => n,
        Err(_) => insn::terminate(early_failure::REGION_TAIL),
    };
    let map = match memmap::guest_memory(&boot::launch_page(gpa::MEMORY_MAP), svsm_region) {
        Ok(m) => m,
        Err(_) => insn::terminate(early_failure::MEMORY_MAP),
    };
    let cmdline_page = boot::launch_page(gpa::CMDLINE);
    let vault_config_page = boot::launch_page(gpa::VAULT_CONFIG);
    let snp_secrets = Zeroizing::new(boot::launch_page(gpa::SECRETS));
    let enc = 1u64 << c_bit;
    let (psp_start, psp_end) = psp_channel::shared_range();
    let shared = [
        PhysRange {
            start: ghcb::page_address(),
            end: ghcb::page_address() + PAGE,
        },
        PhysRange {
            start: psp_start,
            end: psp_end,
        },
    ];
    let layout_info = match paging::init(&map, enc, &shared) {
        Ok(l) => l,
        Err(_) => insn::terminate(early_failure::PAGE_TABLES),
    };
    if ghcb::init().is_err() {
        insn::terminate(early_failure::GHCB);
    }

    let cmdline_len = cmdline_page.iter().position(|&b| b == 0).unwrap_or(0);
    let cmdline_str = core::str::from_utf8(&cmdline_page[..cmdline_len]).unwrap_or("");
    let (cmd, unknown) = Cmdline::parse(cmdline_str);
    serial::init_logger(cmd.log);
    heap::init();
    log::info!(
        "Nitride SVSM {} (SEV-SNP, VMPL0; SEV_STATUS {sev_status:#x}, C-bit {c_bit})",
        env!("CARGO_PKG_VERSION")
    );
    log::info!(
        "SVSM region {:#x}..{:#x} ({} MiB); image+bss end at {image_end:#x} ({} KiB used), heap {} KiB",
        svsm_region.start,
        svsm_region.end,
        svsm_region.len() >> 20,
        (image_end - svsm_region.start) >> 10,
        heap::HEAP_SIZE >> 10
    );
    log::info!(
        "the rest of the SVSM region ({tail_start:#x}..{:#x}, {tail_pages} pages) validated at VMPL0, never granted",
        svsm_region.end
    );
    log::info!(
        "page tables: text {:#x}..{:#x} RX, rodata ..{:#x} R, data+bss ..{:#x} RW NX with {} stack guard pages, GHCB and guest-request pages shared, guest RAM RW NX ({} pages), {} table pages",
        layout_info.text.start,
        layout_info.text.end,
        layout_info.rodata.end,
        layout_info.data.end,
        layout_info.guards,
        if layout_info.huge_pages { "up to 1 GiB" } else { "up to 2 MiB" },
        layout_info.tables
    );
    if unknown > 0 {
        log::warn!("{unknown} unknown command-line word(s) ignored: {cmdline_str:?}");
    }
    #[cfg(feature = "fault-injection")]
    if let Some(f) = cmd.fault {
        cpu::inject(f);
    }
    #[cfg(not(feature = "fault-injection"))]
    if cmd.fault.is_some() {
        log::warn!("nitride.fault ignored: this image is built without fault injection");
    }
    for r in map.ram() {
        log::info!("guest RAM {:#010x}..{:#010x}", r.start, r.end);
    }
    let svsm_digest =
        image::svsm_digest().unwrap_or_else(|e| cpu::fatal(format_args!("SVSM image: {e:?}")));
    let vault_config = vault_config(&vault_config_page);

    let guest_vmpl = config.guest_vmpl;
    let sev_features = sev_status >> 2;
    prepare_guest(&map, &config, &snp_secrets, cmd.guest.as_bytes(), c_bit)
        .unwrap_or_else(|e| cpu::fatal(format_args!("guest setup: {e}")));
    let vmsa = GUEST_VMSA
        .take()
        .unwrap_or_else(|| cpu::fatal(format_args!("guest VMSA taken twice")));
    vmsa.0 = guest_setup::initial_vmsa(config.guest_entry.get(), guest_vmpl, c_bit, sev_features);
    let vmsa_gpa = core::ptr::addr_of!(vmsa.0) as u64;
    if let Err(e) = insn::rmpadjust(vmsa_gpa, PageSize::Small, guest_vmpl, 0, true) {
        cpu::fatal(format_args!("RMPADJUST of the guest VMSA failed ({e})"));
    }
    let created = ghcb::call(
        nae::AP_CREATION,
        ap::CREATE | (u64::from(guest_vmpl) << 16),
        vmsa_gpa,
        &[(off::RAX, sev_features)],
    );
    if created != Some((0, 0)) {
        cpu::fatal(format_args!(
            "the hypervisor refused the guest's VMSA (AP creation: {created:?})"
        ));
    }
    let mut platform = Snp::new(map, vmsa, guest_vmpl, sev_features);

    let vmpck0 = Zeroizing::new({
        let mut k = [0u8; 32];
        k.copy_from_slice(&snp_secrets[secrets::VMPCK[0]..secrets::VMPCK[0] + 32]);
        k
    });
    drop(snp_secrets);
    if vmpck0.iter().all(|&b| b == 0) {
        log::warn!("VMPCK0 is zero: the platform has no PSP channel, attestation is not offered");
    } else {
        match GhcbPsp::new() {
            Ok(channel) => {
                platform.attach_psp(PspClient::new(channel, vmpck0, 0));
                log::info!("PSP channel: GHCB guest requests with VMPCK0");
            }
            Err(e) => log::warn!("PSP channel not set up ({e:?}): attestation is not offered"),
        }
    }
    log::info!(
        "measured: SVSM code+rodata {} (the launch digest covers the whole IGVM image)",
        measure::hex(&svsm_digest)
    );
    log::info!(
        "guest loaded, entry {:#x}; secrets page {:#x}, CAA {:#x}; entering guest at VMPL{guest_vmpl}",
        config.guest_entry.get(),
        layout::SECRETS,
        layout::CAA
    );
    log::info!("heap in use after boot: {} bytes", heap::used());

    let vault = crate::make_vault(VaultPolicy::from_launch_config(&vault_config));
    let mut svsm = Svsm::new(platform, vault, layout::CAA);
    let stop = svsm.run();
    log::error!("request loop ended: {stop:?}");
    cpu::exit_with(exit::GUEST_STOPPED)
}

/// The vault's measured launch configuration from its page of the IGVM image
/// (`gpa::VAULT_CONFIG`; all zero: the default one). Measured with the rest of the
/// image, so MEASUREMENT shows it. A page that does not decode stops the SVSM: it
/// must never run under a policy other than the one measured.
fn vault_config(page: &[u8; 4096]) -> VaultLaunchConfig {
    match VaultLaunchConfig::from_page(page) {
        Ok((config, digest)) => {
            log::info!(
                "launch configuration (measured page {:#x}): policy {:#x}, owner key {}, digest {}",
                gpa::VAULT_CONFIG,
                config.policy.bits(),
                if config.owner_key.is_some() {
                    "set"
                } else {
                    "none"
                },
                measure::hex(&digest)
            );
            config
        }
        Err(e) => cpu::fatal(format_args!("{e}")),
    }
}

/// Why the guest could not be set up.
#[derive(Debug)]
enum GuestSetupError {
    /// A page of the launch configuration's guest ranges is not guest RAM.
    NotGuestRam(u64),
    /// A fixed page was already validated before the SVSM validated it (a replayed
    /// or double-validated page).
    AlreadyValidated(u64),
    /// PVALIDATE failed.
    Pvalidate(u64, u32),
    /// RMPADJUST failed.
    Rmpadjust(u64, u32),
    /// Writing a fixed page failed.
    Write(u64),
}

impl core::fmt::Display for GuestSetupError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotGuestRam(a) => write!(f, "page {a:#x} is not guest RAM"),
            Self::AlreadyValidated(a) => write!(f, "page {a:#x} was already validated"),
            Self::Pvalidate(a, c) => write!(f, "PVALIDATE of {a:#x} failed ({c})"),
            Self::Rmpadjust(a, c) => write!(f, "RMPADJUST of {a:#x} failed ({c})"),
            Self::Write(a) => write!(f, "writing {a:#x} failed"),
        }
    }
}

/// Validate, write and grant the guest's fixed pages; grant its launched image.
fn prepare_guest(
    map: &GuestMemoryMap,
    config: &LaunchConfig,
    snp_secrets: &[u8; 4096],
    guest_cmdline: &[u8],
    c_bit: u32,
) -> Result<(), GuestSetupError> {
    let vmpl = config.guest_vmpl;
    let grant = |page: u64, perms: u8| {
        map.page(page)
            .map_err(|_| GuestSetupError::NotGuestRam(page))?;
        insn::rmpadjust(page, PageSize::Small, vmpl, perms, false)
            .map_err(|e| GuestSetupError::Rmpadjust(page, e))
    };
    let fixed = |page: u64, bytes: &[u8; 4096]| {
        map.page(page)
            .map_err(|_| GuestSetupError::NotGuestRam(page))?;
        match insn::pvalidate(page, PageSize::Small, true) {
            Ok(true) => {}
            Ok(false) => return Err(GuestSetupError::AlreadyValidated(page)),
            Err(e) => return Err(GuestSetupError::Pvalidate(page, e)),
        }
        guest_mem::write_page(page, bytes).map_err(|_| GuestSetupError::Write(page))?;
        grant(page, perm::READ | perm::WRITE)
    };
    let base = config.svsm_base.get();
    let size = config.svsm_size.get();
    fixed(
        layout::SECRETS,
        &guest_setup::secrets_page(snp_secrets, vmpl, base, size, layout::CAA),
    )?;
    fixed(layout::CAA, &[0; 4096])?;
    fixed(
        layout::BOOT_INFO,
        &guest_setup::boot_info_page(guest_cmdline, map.ram()),
    )?;
    for i in 0..layout::PAGE_TABLE_PAGES {
        fixed(
            layout::PAGE_TABLES + i * PAGE,
            &guest_setup::page_table(i, c_bit),
        )?;
    }
    let mut pages = 0u64;
    for (start, end) in config.ranges() {
        for page in (start..end).step_by(PAGE as usize) {
            grant(page, perm::ALL)?;
            pages += 1;
        }
    }
    log::info!(
        "guest VMPL{vmpl}: {pages} launched image pages and {} fixed pages granted (RMPADJUST); no SVSM page",
        3 + layout::PAGE_TABLE_PAGES
    );
    Ok(())
}
