//! The SNP instructions the SVSM executes, each behind a safe function: the GHCB MSR
//! and VMGEXIT (the way to the hypervisor), SEV_STATUS, PVALIDATE and RMPADJUST (the
//! RMP operations a VMPL0 guest may make). None of them touches memory the compiler
//! knows about except through the GHCB and pages the caller names by address.

use nitride_protocol::snp::ghcb::{MSR_GHCB, MSR_SEV_STATUS};

/// Read an MSR the hardware serves under SEV-ES without a #VC (the GHCB MSR,
/// SEV_STATUS).
fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR of the GHCB MSR or SEV_STATUS: SEV-ES hardware serves both without
    // an exit; no memory is touched.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags))
    };
    u64::from(lo) | (u64::from(hi) << 32)
}

/// SEV_STATUS (MSR 0xC001_0131).
pub fn sev_status() -> u64 {
    rdmsr(MSR_SEV_STATUS)
}

/// The GHCB MSR.
pub fn ghcb_msr() -> u64 {
    rdmsr(MSR_GHCB)
}

/// Write the GHCB MSR.
pub fn set_ghcb_msr(v: u64) {
    // SAFETY: the GHCB MSR is a plain register of this vCPU's GHCB protocol state;
    // writing it has no memory effects.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") MSR_GHCB, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nomem, nostack, preserves_flags))
    };
}

/// VMGEXIT (`rep vmmcall`): hand control to the hypervisor, which serves the request
/// in the GHCB MSR or the GHCB page and resumes this VMPL. The hypervisor (and,
/// through SNP_RUN_VMPL, the guest) may have written the GHCB, shared pages and the
/// guest's VMSA meanwhile: the asm is a full compiler barrier.
pub fn vmgexit() {
    // SAFETY: VMGEXIT returns here with every register but the ones the GHCB protocol
    // defines unchanged (the hypervisor cannot see or change VMPL0's registers under
    // SEV-ES); memory it may change is accessed afterwards through volatile reads.
    unsafe { core::arch::asm!("rep vmmcall", options(nostack, preserves_flags)) };
}

/// One MSR-protocol request: write `request` into the GHCB MSR, VMGEXIT, return the
/// response the hypervisor left there.
pub fn msr_protocol(request: u64) -> u64 {
    set_ghcb_msr(request);
    vmgexit();
    ghcb_msr()
}

/// Page size of an RMP operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageSize {
    /// 4 KiB.
    Small,
    /// 2 MiB.
    #[allow(
        dead_code,
        reason = "the core protocol's PVALIDATE passes 2 MiB requests on"
    )]
    Large,
}

impl PageSize {
    fn bits(self) -> u64 {
        match self {
            Self::Small => 0,
            Self::Large => 1,
        }
    }
}

/// PVALIDATE of the page at virtual address `va`: `Ok(changed)` (CF clear: the
/// validated bit changed), or the failure code in EAX (1 FAIL_INPUT, 6
/// FAIL_SIZEMISMATCH).
pub fn pvalidate(va: u64, size: PageSize, validate: bool) -> Result<bool, u32> {
    let rax: u64;
    let cf: u8;
    // SAFETY: PVALIDATE changes only the validated bit of the RMP entry of the page
    // that `va` maps; no memory is read or written. The callers decide which pages:
    // the SVSM's own (before use, contents then zeroed) and the guest's on request.
    unsafe {
        core::arch::asm!(
            ".byte 0xF2, 0x0F, 0x01, 0xFF",
            "setc {cf}",
            cf = out(reg_byte) cf,
            inout("rax") va => rax,
            in("rcx") size.bits(),
            in("rdx") u64::from(validate),
            options(nostack),
        );
    }
    match rax as u32 {
        0 => Ok(cf == 0),
        code => Err(code),
    }
}

/// RMPADJUST of the page at `va` for `vmpl`: permission mask `perms` (read, write,
/// user execute, supervisor execute), `vmsa` to make it a VMSA page. `Err` holds
/// EAX (1 FAIL_INPUT, 2 FAIL_PERMISSION, 6 FAIL_SIZEMISMATCH).
pub fn rmpadjust(va: u64, size: PageSize, vmpl: u8, perms: u8, vmsa: bool) -> Result<(), u32> {
    let rax: u64;
    let attrs = u64::from(perms) | (u64::from(vmpl) << 8) | (u64::from(vmsa) << 16);
    // SAFETY: RMPADJUST changes only the RMP entry of the page `va` maps (the
    // permissions of a lower VMPL, or its VMSA bit); no memory is read or written.
    unsafe {
        core::arch::asm!(
            ".byte 0xF3, 0x0F, 0x01, 0xFE",
            inout("rax") va => rax,
            in("rcx") size.bits(),
            in("rdx") attrs,
            options(nostack),
        );
    }
    match rax as u32 {
        0 => Ok(()),
        code => Err(code),
    }
}

/// The VMPL permission bits of RMPADJUST.
pub mod perm {
    /// Read.
    pub const READ: u8 = 1 << 0;
    /// Write.
    pub const WRITE: u8 = 1 << 1;
    /// User-mode execute.
    pub const EXEC_USER: u8 = 1 << 2;
    /// Supervisor-mode execute.
    pub const EXEC_SUPERVISOR: u8 = 1 << 3;
    /// Everything.
    pub const ALL: u8 = READ | WRITE | EXEC_USER | EXEC_SUPERVISOR;
}

/// Ask the hypervisor to end the VM with Nitride's reason set and `code`; never
/// returns (if the hypervisor resumes, halt).
pub fn terminate(code: u64) -> ! {
    use nitride_protocol::snp::ghcb::term;
    set_ghcb_msr(term::request(term::SET_NITRIDE, code));
    loop {
        vmgexit();
        x86_64::instructions::hlt();
    }
}
