//! The SNP platform: the request loop's [`Platform`] on real SNP interfaces.
//!
//! The guest runs at its VMPL from a VMSA in SVSM memory (which the guest can never
//! reach); the SVSM runs it with SNP_RUN_VMPL (GHCB MSR protocol) and gets control
//! back when the guest asks the hypervisor to run VMPL0 (its SVSM call). The guest's
//! call registers are read from and written to its VMSA; its memory through
//! [`super::guest_mem`]; attestation reports come from the PSP through GHCB guest
//! requests with VMPCK0 ([`super::psp`]), and so do the keys the PSP derives for
//! sealing (MSG_KEY_REQ).

use super::super::cpu;
use super::ghcb;
use super::guest_mem;
use super::insn::{self, perm};
use super::psp::GhcbPsp;
use nitride_kernel::memory::{GuestMemoryMap, GuestRange};
use nitride_kernel::platform::{
    AttestError, Evidence, GuestExit, GuestMemoryError, PageSize, Platform, RmpError, VcpuError,
};
use nitride_kernel::psp::PspClient;
use nitride_protocol::snp::ghcb::{ap, msr, nae, off as ghcb_off};
use nitride_protocol::snp::msg::KeyReq;
use nitride_protocol::snp::report::AttestationReport;
use nitride_protocol::snp::vmsa::off;
use nitride_protocol::svsm::CallRegs;
use zerocopy::FromBytes;
use zeroize::Zeroizing;

/// A VMSA page.
#[repr(C, align(4096))]
pub struct VmsaPage(pub [u8; 4096]);

/// Most vCPUs the guest may add with CREATE_VCPU.
const MAX_VCPUS: usize = 8;

/// A vCPU the guest added: its VMSA page (taken from the guest) and APIC ID.
#[derive(Clone, Copy, Debug)]
struct AddedVcpu {
    vmsa: u64,
    apic_id: u32,
}

/// The SNP platform.
pub struct Snp {
    map: GuestMemoryMap,
    vmsa: &'static mut VmsaPage,
    guest_vmpl: u8,
    sev_features: u64,
    psp: Option<PspClient<GhcbPsp>>,
    /// The chip's committed TCB, read once from a report (sealing keys name it).
    committed_tcb: Option<[u8; 8]>,
    runs: u64,
    added: heapless::Vec<AddedVcpu, MAX_VCPUS>,
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
    pub fn new(
        map: GuestMemoryMap,
        vmsa: &'static mut VmsaPage,
        guest_vmpl: u8,
        sev_features: u64,
    ) -> Self {
        Self {
            map,
            vmsa,
            guest_vmpl,
            sev_features,
            psp: None,
            committed_tcb: None,
            runs: 0,
            added: heapless::Vec::new(),
        }
    }

    fn is_vmsa(&self, gpa: u64) -> bool {
        self.added.iter().any(|v| v.vmsa == gpa)
    }

    fn ap(&self, op: u64, apic_id: u32, vmsa: u64) -> bool {
        ghcb::call(
            nae::AP_CREATION,
            op | (u64::from(self.guest_vmpl) << 16) | (u64::from(apic_id) << 32),
            vmsa,
            &[(ghcb_off::RAX, self.sev_features)],
        ) == Some((0, 0))
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

    fn derived_key(&mut self, request: &KeyReq) -> Result<Zeroizing<[u8; 32]>, AttestError> {
        let psp = self.psp.as_mut().ok_or(AttestError::Unavailable)?;
        let key = psp.derive_key(request).map_err(|e| {
            log::warn!("derived key request failed: {e}");
            AttestError::from(e)
        })?;
        if key.iter().all(|&b| b == 0) {
            log::warn!("the PSP derived an all-zero key: refused");
            return Err(AttestError::Failed);
        }
        Ok(key)
    }

    fn committed_tcb(&mut self) -> Result<[u8; 8], AttestError> {
        if let Some(tcb) = self.committed_tcb {
            return Ok(tcb);
        }
        let evidence = self.attestation_report(&[0; 64], false)?;
        let (report, _) = AttestationReport::ref_from_prefix(&evidence.report)
            .map_err(|_| AttestError::Failed)?;
        let tcb = report.committed_tcb.get().to_le_bytes();
        self.committed_tcb = Some(tcb);
        Ok(tcb)
    }

    fn rmp_available(&self) -> bool {
        true
    }

    fn pvalidate_guest(
        &mut self,
        gpa: u64,
        size: PageSize,
        validate: bool,
    ) -> Result<bool, RmpError> {
        let size = match size {
            PageSize::Small => insn::PageSize::Small,
            PageSize::Large => insn::PageSize::Large,
        };
        // A VMSA the guest handed over is not the guest's to validate or rescind.
        if self.is_vmsa(gpa) {
            return Err(RmpError::Failed(1));
        }
        if validate {
            let changed = insn::pvalidate(gpa, size, true).map_err(RmpError::Failed)?;
            insn::rmpadjust(gpa, size, self.guest_vmpl, perm::ALL, false)
                .map_err(RmpError::Failed)?;
            Ok(changed)
        } else {
            // Revoke the guest's access while the page is still validated: the VMPL
            // permissions outlive PVALIDATE, and a page the SVSM validates again later
            // must not come with the guest's old access. A page that is not validated
            // refuses RMPADJUST (FAIL_INPUT); PVALIDATE then reports it unchanged.
            match insn::rmpadjust(gpa, size, self.guest_vmpl, 0, false) {
                Ok(()) | Err(1) => {}
                Err(code) => return Err(RmpError::Failed(code)),
            }
            insn::pvalidate(gpa, size, false).map_err(RmpError::Failed)
        }
    }

    fn create_vcpu(&mut self, vmsa: u64, _caa: u64, apic_id: u32) -> Result<(), VcpuError> {
        // The boot vCPU runs already; a VMSA page is used once.
        if apic_id == 0 || self.is_vmsa(vmsa) || self.added.iter().any(|v| v.apic_id == apic_id) {
            return Err(VcpuError::NotAVcpu);
        }
        let range = self.map.page(vmsa).map_err(|_| VcpuError::BadVmsa)?;
        let mut page = [0u8; 4096];
        guest_mem::read(range, &mut page).map_err(|_| VcpuError::BadVmsa)?;
        let get = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&page[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if page[off::VMPL] != self.guest_vmpl
            || get(off::SEV_FEATURES) != self.sev_features
            || get(off::EFER) & (1 << 12) == 0
        {
            return Err(VcpuError::BadVmsa);
        }
        // Take the page from the guest and make it a VMSA for its VMPL.
        insn::rmpadjust(vmsa, insn::PageSize::Small, self.guest_vmpl, 0, true)
            .map_err(VcpuError::Rmp)?;
        if self.added.is_full() || !self.ap(ap::CREATE, apic_id, vmsa) {
            // Give it back as it was.
            let _ = insn::rmpadjust(
                vmsa,
                insn::PageSize::Small,
                self.guest_vmpl,
                perm::ALL,
                false,
            );
            return Err(VcpuError::Refused);
        }
        self.added
            .push(AddedVcpu { vmsa, apic_id })
            .map_err(|_| VcpuError::Refused)
    }

    fn delete_vcpu(&mut self, vmsa: u64) -> Result<(), VcpuError> {
        let i = self
            .added
            .iter()
            .position(|v| v.vmsa == vmsa)
            .ok_or(VcpuError::NotAVcpu)?;
        let apic_id = self.added[i].apic_id;
        if !self.ap(ap::DESTROY, apic_id, vmsa) {
            return Err(VcpuError::Refused);
        }
        insn::rmpadjust(
            vmsa,
            insn::PageSize::Small,
            self.guest_vmpl,
            perm::ALL,
            false,
        )
        .map_err(VcpuError::Rmp)?;
        self.added.swap_remove(i);
        Ok(())
    }
}
