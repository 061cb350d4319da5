//! The SNP platform: the request loop's [`Platform`] on real SNP interfaces.
//!
//! The guest runs at its VMPL from a VMSA in SVSM memory (which the guest can never
//! reach); the SVSM runs it with SNP_RUN_VMPL (GHCB MSR protocol) and gets control
//! back when the guest asks the hypervisor to run VMPL0 (its SVSM call). The guest's
//! call registers are read from and written to its VMSA; its memory through
//! [`super::guest_mem`]; attestation reports come from the PSP through GHCB guest
//! requests with VMPCK0 ([`super::psp`]).

use super::super::cpu;
use super::guest_mem;
use super::insn;
use super::psp::GhcbPsp;
use nitride_kernel::memory::{GuestMemoryMap, GuestRange};
use nitride_kernel::platform::{AttestError, Evidence, GuestExit, GuestMemoryError, Platform};
use nitride_kernel::psp::PspClient;
use nitride_protocol::snp::ghcb::msr;
use nitride_protocol::snp::vmsa::off;
use nitride_protocol::svsm::CallRegs;

/// A VMSA page.
#[repr(C, align(4096))]
pub struct VmsaPage(pub [u8; 4096]);

/// The SNP platform.
pub struct Snp {
    map: GuestMemoryMap,
    vmsa: &'static mut VmsaPage,
    guest_vmpl: u8,
    psp: Option<PspClient<GhcbPsp>>,
    runs: u64,
}

impl core::fmt::Debug for Snp {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Snp")
            .field("guest_vmpl", &self.guest_vmpl)
            .field("runs", &self.runs)
            .field("psp", &self.psp)
            .finish_non_exhaustive()
    }
}

impl Snp {
    /// The platform for a guest at `guest_vmpl` whose VMSA (already created with the
    /// hypervisor) is `vmsa`.
    pub fn new(map: GuestMemoryMap, vmsa: &'static mut VmsaPage, guest_vmpl: u8) -> Self {
        Self {
            map,
            vmsa,
            guest_vmpl,
            psp: None,
            runs: 0,
        }
    }

    /// Give the platform its PSP client (VMPCK0); attestation is offered from then on.
    pub fn attach_psp(&mut self, psp: PspClient<GhcbPsp>) {
        self.psp = Some(psp);
    }

    fn vmsa_read(&self, at: usize) -> u64 {
        let p = self.vmsa.0.as_ptr();
        // SAFETY: `at` is a VMSA field offset below 4096 - 8 and 8-aligned; the page is
        // ours, and the hardware writes it only while the guest runs (volatile).
        unsafe { p.add(at).cast::<u64>().read_volatile() }
    }

    fn vmsa_write(&mut self, at: usize, v: u64) {
        let p = self.vmsa.0.as_mut_ptr();
        // SAFETY: as in `vmsa_read`.
        unsafe { p.add(at).cast::<u64>().write_volatile(v) }
    }
}

impl Platform for Snp {
    fn run_guest(&mut self) -> GuestExit {
        let r = insn::msr_protocol(msr::run_vmpl(self.guest_vmpl));
        if r & 0xFFF != msr::RUN_VMPL_RESP || r >> 32 != 0 {
            cpu::fatal(format_args!(
                "SNP_RUN_VMPL({}) refused by the hypervisor (response {r:#x})",
                self.guest_vmpl
            ));
        }
        self.runs += 1;
        // The guest runs until it asks for VMPL0: its SVSM call.
        GuestExit::SvsmCall
    }

    fn call_regs(&self) -> CallRegs {
        CallRegs {
            rax: self.vmsa_read(off::RAX),
            rcx: self.vmsa_read(off::RCX),
            rdx: self.vmsa_read(off::RDX),
            r8: self.vmsa_read(off::R8),
            r9: self.vmsa_read(off::R9),
        }
    }

    fn set_call_regs(&mut self, regs: &CallRegs) {
        self.vmsa_write(off::RAX, regs.rax);
        self.vmsa_write(off::RCX, regs.rcx);
        self.vmsa_write(off::RDX, regs.rdx);
        self.vmsa_write(off::R8, regs.r8);
        self.vmsa_write(off::R9, regs.r9);
    }

    fn caller_vmpl(&self) -> u8 {
        self.guest_vmpl
    }

    fn memory(&self) -> &GuestMemoryMap {
        &self.map
    }

    fn read_guest(&self, range: GuestRange, out: &mut [u8]) -> Result<(), GuestMemoryError> {
        guest_mem::read(range, out)
    }

    fn write_guest(&mut self, range: GuestRange, data: &[u8]) -> Result<(), GuestMemoryError> {
        guest_mem::write(range, data)
    }

    fn cycles(&self) -> u64 {
        cpu::tsc()
    }

    fn attestation_available(&self) -> bool {
        self.psp.as_ref().is_some_and(|psp| !psp.is_disabled())
    }

    fn attestation_report(
        &mut self,
        report_data: &[u8; 64],
        certificates: bool,
    ) -> Result<Evidence, AttestError> {
        let psp = self.psp.as_mut().ok_or(AttestError::Unavailable)?;
        let start = cpu::tsc();
        let evidence = psp.report(report_data, 0, certificates).map_err(|e| {
            log::warn!("attestation report failed: {e}");
            AttestError::from(e)
        })?;
        log::info!(
            "PSP round trip: {} cycles (GHCB guest request)",
            cpu::tsc().wrapping_sub(start)
        );
        Ok(evidence)
    }
}
