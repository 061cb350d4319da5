//! The Nitride SVSM firmware image for SEV-SNP: booted from its IGVM image at VMPL0
//! ([`snp_main`]: CPU, console, heap, W^X page tables, GHCB, the guest's pages and
//! VMSA, the request loop), and the vault it serves. The platform-independent parts
//! are the `nitride_kernel` library; all unsafe code is in [`arch`].
#![no_std]
#![no_main]

extern crate alloc;

mod arch;

// The memory functions and unwinding symbols the image needs.
use nitride_rt as _;

use arch::entropy::Sources;
use arch::{cpu, heap};
use nitride_kernel::svsm::VhsmService;
use nitride_vhsm::{PlatformError, Vault, VaultPolicy};

/// The SVSM on SEV-SNP: booted from an IGVM image.
mod snp_main;

/// The vault's entropy: the CPU's RDSEED/RDRAND.
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
