//! The seam between the request loop and the hardware.
//!
//! [`Platform`] is all the request loop may ask of the machine: run the guest until
//! it calls, read and write the caller's call registers, read or write guest memory
//! through checked [`GuestRange`]s, and the RMP, vCPU and PSP operations the
//! protocols need. The SNP platform implements it (SNP_RUN_VMPL, VMSAs, RMPADJUST,
//! GHCB guest requests; its pure parts in [`snp`], its hardware side in the
//! firmware's `src/arch/snp/`); the request loop's host tests implement it with a
//! mock.

pub mod snp;

use crate::memory::{GuestMemoryMap, GuestRange};
use nitride_protocol::snp::msg::KeyReq;
use nitride_protocol::snp::report::AttestationReport;
use nitride_protocol::svsm::CallRegs;
pub use nitride_vhsm::{AttestError, Evidence};
use zerocopy::FromBytes;
use zeroize::Zeroizing;

/// Why the guest stopped running and the SVSM got control back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest asked for the SVSM (VMGEXIT with SNP_RUN_VMPL(0) after setting
    /// `call_pending` in its calling area).
    SvsmCall,
    /// The guest can run no more (the request loop ends).
    Halted {
        /// Guest RIP.
        rip: u64,
    },
}

/// Guest memory access failed after the range was checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestMemoryError {
    /// The buffer's length differs from the range's.
    LengthMismatch,
    /// The SVSM's page tables do not map the range (the memory map and the page
    /// tables disagree: an SVSM bug, never a guest input).
    NotMapped,
    /// A page of the range is not validated (SNP: the guest never validated it, or
    /// made it shared): the access raised #VC and was stopped.
    NotValidated,
}

/// Size of a page an RMP operation names (the core protocol's PVALIDATE entries).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB.
    Small,
    /// 2 MiB.
    Large,
}

impl PageSize {
    /// Bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            Self::Small => 4096,
            Self::Large => 2 << 20,
        }
    }
}

/// Why the platform did not change a page's RMP state for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RmpError {
    /// The platform has no RMP.
    Unsupported,
    /// The instruction failed with this code (PVALIDATE/RMPADJUST: 1 FAIL_INPUT, 2
    /// FAIL_PERMISSION, 6 FAIL_SIZEMISMATCH).
    Failed(u32),
}

/// Why a vCPU could not be created or deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcpuError {
    /// The platform cannot add vCPUs.
    Unsupported,
    /// The VMSA page does not hold an acceptable VMSA for the guest (wrong VMPL,
    /// SEV features, EFER.SVME clear).
    BadVmsa,
    /// The VMSA page is not one the SVSM made a VMSA (DELETE_VCPU), or is one
    /// already (CREATE_VCPU).
    NotAVcpu,
    /// RMPADJUST refused the page (its code).
    Rmp(u32),
    /// The hypervisor refused the AP creation (it does not run that vCPU).
    Refused,
}

/// The machine under the request loop.
pub trait Platform {
    /// Run the guest until it exits to the SVSM.
    fn run_guest(&mut self) -> GuestExit;
    /// The calling vCPU's call registers (RAX, RCX, RDX, R8, R9).
    fn call_regs(&self) -> CallRegs;
    /// Set the calling vCPU's call registers.
    fn set_call_regs(&mut self, regs: &CallRegs);
    /// The VMPL the calling guest runs at.
    fn caller_vmpl(&self) -> u8;
    /// Guest RAM.
    fn memory(&self) -> &GuestMemoryMap;
    /// Copy guest memory into SVSM memory; `out.len()` must equal `range.len()`.
    fn read_guest(&self, range: GuestRange, out: &mut [u8]) -> Result<(), GuestMemoryError>;
    /// Copy SVSM memory into guest memory; `data.len()` must equal `range.len()`.
    fn write_guest(&mut self, range: GuestRange, data: &[u8]) -> Result<(), GuestMemoryError>;
    /// Zero guest memory. The default writes zeros through [`Platform::write_guest`];
    /// a platform may skip pages that already read as zero.
    fn zero_guest(&mut self, range: GuestRange) -> Result<(), GuestMemoryError> {
        const CHUNK: u64 = 4096;
        let zeros = [0u8; CHUNK as usize];
        let mut done = 0;
        while done < range.len() {
            let n = (range.len() - done).min(CHUNK);
            let part = range.sub(done, n).ok_or(GuestMemoryError::LengthMismatch)?;
            self.write_guest(part, &zeros[..n as usize])?;
            done += n;
        }
        Ok(())
    }
    /// A monotonic counter for measurements: the TSC on x86 (under QEMU's
    /// `-icount shift=0` an instruction count); 0 where there is none.
    fn cycles(&self) -> u64;
    /// Whether this platform can produce attestation reports (a PSP and a working
    /// channel to it); the attestation protocol is offered only then.
    fn attestation_available(&self) -> bool;
    /// Ask the PSP for an attestation report at VMPL 0 carrying `report_data`, with
    /// the certificate table when `certificates` is set.
    fn attestation_report(
        &mut self,
        report_data: &[u8; 64],
        certificates: bool,
    ) -> Result<Evidence, AttestError>;
    /// Whether the platform has an RMP (PVALIDATE and vCPU creation are served).
    fn rmp_available(&self) -> bool {
        false
    }
    /// The core protocol's PVALIDATE of one page of guest memory for the guest
    /// (`gpa` is a checked page of guest RAM): validating, the guest's VMPL gets full
    /// access afterwards; rescinding, its access is revoked first. `Ok(changed)`
    /// (the validated state changed).
    fn pvalidate_guest(
        &mut self,
        gpa: u64,
        size: PageSize,
        validate: bool,
    ) -> Result<bool, RmpError> {
        let _ = (gpa, size, validate);
        Err(RmpError::Unsupported)
    }
    /// CREATE_VCPU: run a new vCPU of the guest from the VMSA the guest prepared at
    /// `vmsa` (a checked page of guest RAM), with its calling area at `caa` and APIC
    /// ID `apic_id`. The VMSA page is taken from the guest.
    fn create_vcpu(&mut self, vmsa: u64, caa: u64, apic_id: u32) -> Result<(), VcpuError> {
        let _ = (vmsa, caa, apic_id);
        Err(VcpuError::Unsupported)
    }
    /// DELETE_VCPU: stop the vCPU whose VMSA is `vmsa` and give the page back.
    fn delete_vcpu(&mut self, vmsa: u64) -> Result<(), VcpuError> {
        let _ = vmsa;
        Err(VcpuError::Unsupported)
    }
    /// MSG_KEY_REQ on VMPCK0: the key the PSP derives for `request`. A non-zero
    /// status, and an all-zero key (one platform answers so, with status 0, for a
    /// TCB above its committed one), are errors. The default: no PSP.
    fn derived_key(&mut self, request: &KeyReq) -> Result<Zeroizing<[u8; 32]>, AttestError> {
        let _ = request;
        Err(AttestError::Unavailable)
    }
    /// The chip's committed TCB_VERSION (raw 8 bytes): the highest TCB a KEY_REQ may
    /// name. The default reads it from an attestation report.
    fn committed_tcb(&mut self) -> Result<[u8; 8], AttestError> {
        let evidence = self.attestation_report(&[0; 64], false)?;
        let (report, _) = AttestationReport::ref_from_prefix(&evidence.report)
            .map_err(|_| AttestError::Failed)?;
        Ok(report.committed_tcb.get().to_le_bytes())
    }
}
