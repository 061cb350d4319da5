//! The Nitride SVSM firmware image: boots through PVH, sets up the CPU, console and
//! heap, prepares the emulated platform and the guest, and runs the request loop.
//! The platform-independent parts are the `nitride_kernel` library.
#![no_std]
#![no_main]

extern crate alloc;

mod arch;

// The memory functions and unwinding symbols the image needs.
use nitride_rt as _;

use arch::entropy::Sources;
use arch::{cpu, heap};
#[cfg(not(feature = "snp"))]
use arch::{image, paging, pvh, serial, svm::Emulated};
#[cfg(not(feature = "snp"))]
use nitride_kernel::cmdline::Cmdline;
#[cfg(not(feature = "snp"))]
use nitride_kernel::measure;
#[cfg(not(feature = "snp"))]
use nitride_kernel::memory::{GuestMemoryMap, PhysRange};
#[cfg(not(feature = "snp"))]
use nitride_kernel::platform::emulated::guest_setup::Vmpcks;
#[cfg(not(feature = "snp"))]
use nitride_kernel::platform::emulated::launch::prepare_guest;
#[cfg(not(feature = "snp"))]
use nitride_kernel::platform::emulated::psp::{
    DevPspConfig, EmulatedPsp, EmulatedPspChannel, LaunchInfo,
};
#[cfg(not(feature = "snp"))]
use nitride_kernel::platform::GuestExit;
#[cfg(not(feature = "snp"))]
use nitride_kernel::psp::PspClient;
#[cfg(not(feature = "snp"))]
use nitride_kernel::svsm::Svsm;
use nitride_kernel::svsm::VhsmService;
#[cfg(not(feature = "snp"))]
use nitride_protocol::emulated::{
    dev_psp, exit, BOOT_INFO_GPA, CAA_GPA, SECRETS_GPA, SVSM_BASE, SVSM_END,
};
#[cfg(not(feature = "snp"))]
use nitride_protocol::launch_config::{self, LaunchConfig};
#[cfg(not(feature = "snp"))]
use nitride_rt::fw_cfg;
use nitride_vhsm::{PlatformError, Vault, VaultPolicy};
#[cfg(not(feature = "snp"))]
use zeroize::Zeroizing;

/// The SVSM on SEV-SNP (feature `snp`): booted from an IGVM image.
#[cfg(feature = "snp")]
mod snp_main;

#[cfg(not(feature = "snp"))]
extern "C" {
    static __svsm_image_end: u8;
}

#[cfg(not(feature = "snp"))]
#[no_mangle]
extern "C" fn svsm_main64(start_info: u32) -> ! {
    cpu::init();
    let boot =
        pvh::read(start_info).unwrap_or_else(|e| cpu::fatal(format_args!("PVH start info: {e:?}")));
    let cmdline_str = core::str::from_utf8(&boot.cmdline).unwrap_or("");
    let (cmd, unknown) = Cmdline::parse(cmdline_str);
    serial::init_logger(cmd.log);
    let svsm_region = PhysRange {
        start: SVSM_BASE,
        end: SVSM_END,
    };
    let map = GuestMemoryMap::new(&boot.ram, svsm_region)
        .unwrap_or_else(|e| cpu::fatal(format_args!("memory map: {e:?}")));
    // From here on the SVSM runs on its own W^X tables, which map guest RAM
    // no-execute and leave the stacks' guard pages out.
    let layout = paging::init(&map, 0, &[])
        .unwrap_or_else(|e| cpu::fatal(format_args!("page tables: {e:?}")));
    heap::init();

    let image_end = core::ptr::addr_of!(__svsm_image_end) as u64;
    log::info!(
        "Nitride SVSM {} (emulated platform)",
        env!("CARGO_PKG_VERSION")
    );
    log::info!(
        "SVSM region {:#x}..{:#x} ({} MiB); image+bss end at {:#x} ({} KiB used), heap {} KiB",
        SVSM_BASE,
        SVSM_END,
        (SVSM_END - SVSM_BASE) >> 20,
        image_end,
        (image_end - SVSM_BASE) >> 10,
        heap::HEAP_SIZE >> 10
    );
    log::info!(
        "page tables: text {:#x}..{:#x} RX, rodata ..{:#x} R, data+bss ..{:#x} RW NX with {} stack guard pages, guest RAM RW NX ({} pages), {} table pages",
        layout.text.start,
        layout.text.end,
        layout.rodata.end,
        layout.data.end,
        layout.guards,
        if layout.huge_pages { "up to 1 GiB" } else { "up to 2 MiB" },
        layout.tables
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
    let mut platform = Emulated::new(map, BOOT_INFO_GPA, SECRETS_GPA)
        .unwrap_or_else(|e| cpu::fatal(format_args!("SVM: {e:?}")));
    let svsm_digest =
        image::svsm_digest().unwrap_or_else(|e| cpu::fatal(format_args!("SVSM image: {e:?}")));
    let psp_setup = psp_inputs();
    let no_keys: Vmpcks = core::array::from_fn(|_| Zeroizing::new([0u8; 32]));
    let guest_keys = psp_setup.as_ref().map_or(&no_keys, |s| &s.vmpcks);
    let launched = prepare_guest(&mut platform, boot.module, cmd.guest.as_bytes(), guest_keys)
        .unwrap_or_else(|e| cpu::fatal(format_args!("guest image: {e:?}")));
    log::info!(
        "guest RAM scrubbed: {} MiB zeroed before loading (only the guest image and the fixed pages are non-zero)",
        launched.scrubbed >> 20
    );
    let (launch_config, config_digest) = launch_config();
    let measurement =
        measure::launch_measurement(&svsm_digest, &launched.image_digest, &config_digest);
    log::info!("launch measurement {}", measure::hex(&measurement));
    log::debug!(
        "measured: SVSM code+rodata {}, guest image {} bytes {}, launch configuration {}",
        measure::hex(&svsm_digest),
        boot.module.map_or(0, |m| m.len()),
        measure::hex(&launched.image_digest),
        measure::hex(&config_digest)
    );
    if let Some(setup) = psp_setup {
        attach_emulated_psp(&mut platform, setup, measurement);
    }
    let entry = launched.entry;
    platform.start_at(entry);
    log::info!("guest loaded, entry {entry:#x}; secrets page {SECRETS_GPA:#x}, CAA {CAA_GPA:#x}; entering guest at VMPL1");
    log::info!("heap in use after boot: {} bytes", heap::used());

    let vault = make_vault(VaultPolicy::from_launch_config(&launch_config));
    let mut svsm = Svsm::new(platform, vault, CAA_GPA);
    let stop = svsm.run();
    let stats = svsm.stats();
    log::info!(
        "served {} call(s), ignored {} without call_pending, {} exits",
        stats.served,
        stats.ignored,
        svsm.platform().exits()
    );
    for total in svsm.platform().refusals().summary() {
        log::warn!(
            "guest {} accesses refused in this run: {} in total ({} not logged one by one)",
            total.kind.name(),
            total.count,
            total.not_logged
        );
    }
    if let Some((own, guest)) = svsm.platform().xcr0_report() {
        match guest {
            Some(g) => log::info!(
                "XCR0: the SVSM ran every exit with its own {own:#x}; the guest's {g:#x} was switched out"
            ),
            None => log::info!("XCR0: the SVSM ran every exit with its own {own:#x}"),
        }
    }
    let code = verdict(stop, svsm_region);
    // The SVSM's code and read-only data must be what was measured at launch.
    match image::svsm_digest() {
        Ok(now) if now == svsm_digest => log::info!(
            "SVSM code and read-only data unchanged since boot (SHA-384 {})",
            measure::hex(&now)
        ),
        Ok(now) => cpu::fatal(format_args!(
            "SVSM code or read-only data CHANGED since boot (SHA-384 {}, was {})",
            measure::hex(&now),
            measure::hex(&svsm_digest)
        )),
        Err(e) => cpu::fatal(format_args!("SVSM image: {e:?}")),
    }
    cpu::exit_with(code)
}

#[cfg(not(feature = "snp"))]
/// Log why the guest stopped and give the exit status.
fn verdict(stop: GuestExit, svsm_region: PhysRange) -> u32 {
    match stop {
        GuestExit::Violation { gpa, rip, access } => {
            let what = if svsm_region.start <= gpa && gpa < svsm_region.end {
                "SVSM memory"
            } else {
                "memory outside guest RAM"
            };
            log::error!("isolation: guest {access} of {what} at GPA {gpa:#x} (RIP {rip:#x}) stopped; page not mapped");
            exit::GUEST_VIOLATION
        }
        GuestExit::ExitRequest { status } => {
            log::info!("guest ended the run with its status {status:#x}");
            u32::from(status)
        }
        GuestExit::Halted { rip } => {
            log::warn!("guest halted with interrupts off at RIP {rip:#x}; stopping");
            exit::GUEST_STOPPED
        }
        GuestExit::Waited { rip } => {
            log::warn!("guest waited (MWAIT) with nothing to wake it at RIP {rip:#x}; stopping");
            exit::GUEST_STOPPED
        }
        GuestExit::Shutdown { rip } => {
            log::error!("guest shut down (triple fault) near RIP {rip:#x}; stopping");
            exit::GUEST_STOPPED
        }
        GuestExit::PlatformEvent { event, rip } => {
            log::error!(
                "the platform sent an {event} while the guest ran (RIP {rip:#x}); stopping"
            );
            exit::GUEST_STOPPED
        }
        GuestExit::Undecodable { code, rip } => {
            log::error!("guest instruction for exit {code:#x} at RIP {rip:#x} could not be completed; stopping");
            exit::GUEST_STOPPED
        }
        GuestExit::Unexpected { code, info1, info2 } => {
            log::error!("unexpected guest exit {code:#x} (info {info1:#x}, {info2:#x}); stopping");
            exit::GUEST_STOPPED
        }
        GuestExit::SvsmCall => {
            log::error!("request loop ended on an SVSM call; stopping");
            exit::GUEST_STOPPED
        }
    }
}

#[cfg(not(feature = "snp"))]
/// The measured launch configuration from fw_cfg (the default one when there is
/// none) and the digest the measurement folds in. A configuration that is present
/// but malformed stops the SVSM: it must never run under a policy other than the
/// one measured.
fn launch_config() -> (LaunchConfig, [u8; 48]) {
    match fw_cfg::read_file(launch_config::FW_CFG_NAME) {
        Ok(bytes) => match LaunchConfig::parse(&bytes) {
            Ok(config) => {
                log::info!(
                    "launch configuration from fw_cfg: policy {:#x}, owner key {}",
                    config.policy.bits(),
                    if config.owner_key.is_some() {
                        "set"
                    } else {
                        "none"
                    }
                );
                (config, launch_config::digest(&bytes))
            }
            Err(e) => cpu::fatal(format_args!("{e}")),
        },
        Err(fw_cfg::FwCfgError::NotFound | fw_cfg::FwCfgError::NoDevice) => {
            log::info!(
                "no launch configuration in fw_cfg: the default (everything refused, no owner key)"
            );
            (LaunchConfig::DEFAULT, LaunchConfig::DEFAULT.digest())
        }
        Err(e) => cpu::fatal(format_args!("launch configuration: fw_cfg: {e:?}")),
    }
}

#[cfg(not(feature = "snp"))]
/// What the emulated PSP needs before the guest is loaded: the chip (from the
/// dev-PSP blob), the VM's VMPCKs and its report ID.
struct PspSetup {
    config: DevPspConfig,
    vmpcks: Vmpcks,
    report_id: [u8; 32],
}

#[cfg(not(feature = "snp"))]
/// Read the dev-PSP blob from fw_cfg and draw the VMPCKs and the report ID. `None`
/// (with a warning) means the platform has no PSP: no blob, a malformed blob, or no
/// entropy for the keys (fail closed).
fn psp_inputs() -> Option<PspSetup> {
    let no_psp = "the platform has no PSP, attestation is not offered";
    let blob = match fw_cfg::read_file(dev_psp::FW_CFG_NAME) {
        Ok(b) => Zeroizing::new(b),
        Err(e) => {
            log::warn!("no dev-PSP blob in fw_cfg ({e:?}): {no_psp}");
            return None;
        }
    };
    let config = match DevPspConfig::parse(&blob) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("dev-PSP blob refused ({e}): {no_psp}");
            return None;
        }
    };
    let sources = Sources::detect();
    let mut vmpcks: Vmpcks = core::array::from_fn(|_| Zeroizing::new([0u8; 32]));
    let mut report_id = [0u8; 32];
    let drawn = vmpcks
        .iter_mut()
        .try_for_each(|k| sources.fill(&mut k[..]))
        .and_then(|()| sources.fill(&mut report_id));
    if let Err(e) = drawn {
        log::warn!("no entropy for the VMPCKs ({e:?}): {no_psp}");
        return None;
    }
    Some(PspSetup {
        config,
        vmpcks,
        report_id,
    })
}

#[cfg(not(feature = "snp"))]
/// Start the emulated PSP for the launched guest and give the platform its client
/// on VMPCK0.
fn attach_emulated_psp(platform: &mut Emulated, setup: PspSetup, measurement: [u8; 48]) {
    let PspSetup {
        config,
        vmpcks,
        report_id,
    } = setup;
    let vmpck0 = Zeroizing::new(*vmpcks[0]);
    let launch = LaunchInfo {
        measurement,
        // The emulated platform's host supplies no HOST_DATA.
        host_data: [0; 32],
        report_id,
    };
    let certs = config.cert_table().len();
    // Genoa layout: bootloader, TEE, 4 reserved, SNP, microcode.
    let tcb = config.tcb_version().to_le_bytes();
    let psp = EmulatedPsp::new(config, launch, vmpcks).with_clock(cpu::tsc);
    platform.attach_psp(PspClient::new(EmulatedPspChannel::new(psp), vmpck0, 0));
    let chip = &dev_psp::CHIP_ID;
    let name_len = chip.iter().position(|&b| b == 0).unwrap_or(chip.len());
    log::info!(
        "emulated PSP ready: measurement {}, chip {} ({} TCB bl {} tee {} snp {} ucode {}), VCEK chain from fw_cfg ({certs}-byte certificate table)",
        measure::hex(&measurement),
        core::str::from_utf8(&chip[..name_len]).unwrap_or("?"),
        dev_psp::PRODUCT_NAME,
        tcb[0],
        tcb[1],
        tcb[6],
        tcb[7],
    );
}

/// The vault's entropy on the emulated platform.
struct CpuEntropy(Sources);

impl nitride_vhsm::Platform for CpuEntropy {
    fn entropy(&mut self, out: &mut [u8]) -> Result<(), PlatformError> {
        self.0
            .fill(out)
            .map_err(|_| PlatformError::EntropyUnavailable)
    }
}

/// The vault as the request loop serves it, reporting the heap every
/// [`HEAP_REPORT_EVERY`] requests so that its high-water mark can be watched.
struct FirmwareVault {
    vault: Vault<CpuEntropy>,
    served: u64,
}

/// How often the heap is reported.
const HEAP_REPORT_EVERY: u64 = 1000;

impl VhsmService for FirmwareVault {
    fn handle(
        &mut self,
        vmpl: u8,
        request: &[u8],
        attester: &mut dyn nitride_vhsm::Attester,
    ) -> alloc::vec::Vec<u8> {
        let response = VhsmService::handle(&mut self.vault, vmpl, request, attester);
        self.served += 1;
        if self.served == 1 || self.served.is_multiple_of(HEAP_REPORT_EVERY) {
            log::info!(
                "vhsm: {} request(s) served, {} key(s); heap in use {} bytes, high-water {} bytes",
                self.served,
                self.vault.len(),
                heap::used(),
                heap::peak()
            );
        }
        response
    }

    fn manifest(&self) -> alloc::vec::Vec<u8> {
        self.vault.manifest()
    }
}

fn make_vault(policy: VaultPolicy) -> Option<FirmwareVault> {
    let sources = Sources::detect();
    if !sources.any() {
        log::error!("no entropy source (RDSEED/RDRAND): the vHSM protocol is not offered");
        return None;
    }
    match Vault::new(CpuEntropy(sources), policy) {
        Ok(vault) => {
            // The policy comes from the measured launch configuration; the vHSM
            // manifest reports it too (policy flags and the configuration's digest).
            log::info!(
                "vHSM ready: protocol {:#x} v{}, entropy {}, plaintext import {} (manifest policy flags {:#x})",
                nitride_protocol::svsm::protocol::VHSM,
                nitride_protocol::svsm::VHSM_PROTOCOL_VERSION,
                sources.describe(),
                if policy.allow_plaintext_import {
                    "allowed"
                } else {
                    "refused"
                },
                policy.flags().bits()
            );
            Some(FirmwareVault { vault, served: 0 })
        }
        Err(e) => {
            log::error!("vault could not start ({e:?}): the vHSM protocol is not offered");
            None
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    cpu::fatal(format_args!("panic: {info}"))
}
