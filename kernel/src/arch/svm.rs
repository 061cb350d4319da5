//! The emulated platform: the guest runs under AMD-V (SVM) with nested paging, so
//! the VMPL boundary of real SNP becomes the nested page tables, which map guest RAM
//! and nothing of the SVSM. A `VMMCALL` plays the part of the VMGEXIT that asks for
//! VMPL0. See `docs/guest-contract.md` for the guest's view.
//!
//! The VMCB is an ordinary page of bytes written at documented offsets (AMD APM
//! vol. 2, appendix B); the only unsafe code is the world switch itself and the MSR
//! writes that turn SVM on.

use super::take_once::{phys, TakeOnce};
use super::{cpu, guest_mem};
pub use nitride_kernel::emulated_psp::EmulatedPspChannel;
use nitride_kernel::memory::GuestMemoryMap;
use nitride_kernel::memory::GuestRange;
use nitride_kernel::npt::{self, Table, TablePool};
use nitride_kernel::platform::{
    Access, AttestError, Evidence, GuestExit, GuestMemoryError, Platform,
};
use nitride_kernel::psp::PspClient;
use nitride_protocol::emulated::{
    boot_info, ports, GUEST_INITIAL_RSP, GUEST_PAGE_TABLES_GPA, GUEST_VMPL,
};
use nitride_protocol::svsm::CallRegs;
use x86_64::registers::model_specific::Msr;

/// VMCB control-area offsets.
mod ctl {
    pub const INTERCEPT_MISC1: usize = 0x00C;
    pub const INTERCEPT_MISC2: usize = 0x010;
    pub const IOPM_BASE_PA: usize = 0x040;
    pub const MSRPM_BASE_PA: usize = 0x048;
    pub const GUEST_ASID: usize = 0x058;
    pub const TLB_CONTROL: usize = 0x05C;
    pub const V_INTR: usize = 0x060;
    pub const EXITCODE: usize = 0x070;
    pub const EXITINFO1: usize = 0x078;
    pub const EXITINFO2: usize = 0x080;
    pub const NP_ENABLE: usize = 0x090;
    pub const EVENTINJ: usize = 0x0A8;
    pub const N_CR3: usize = 0x0B0;
}

/// VMCB save-area offsets.
mod save {
    pub const ES: usize = 0x400;
    pub const CS: usize = 0x410;
    pub const SS: usize = 0x420;
    pub const DS: usize = 0x430;
    pub const FS: usize = 0x440;
    pub const GS: usize = 0x450;
    pub const GDTR: usize = 0x460;
    pub const LDTR: usize = 0x470;
    pub const IDTR: usize = 0x480;
    pub const TR: usize = 0x490;
    pub const CPL: usize = 0x4CB;
    pub const EFER: usize = 0x4D0;
    pub const CR4: usize = 0x548;
    pub const CR3: usize = 0x550;
    pub const CR0: usize = 0x558;
    pub const DR7: usize = 0x560;
    pub const DR6: usize = 0x568;
    pub const RFLAGS: usize = 0x570;
    pub const RIP: usize = 0x578;
    pub const RSP: usize = 0x5D8;
    pub const RAX: usize = 0x5F8;
    pub const G_PAT: usize = 0x668;
}

/// Exit codes handled.
mod exitcode {
    pub const IOIO: u64 = 0x7B;
    pub const MSR: u64 = 0x7C;
    pub const HLT: u64 = 0x78;
    pub const SHUTDOWN: u64 = 0x7F;
    pub const VMMCALL: u64 = 0x81;
    pub const NPF: u64 = 0x400;
}

/// Length of `VMMCALL` (QEMU does not save next-RIP).
const VMMCALL_LEN: u64 = 3;

const MSR_EFER: u32 = 0xC000_0080;
const MSR_VM_CR: u32 = 0xC001_0114;
const MSR_VM_HSAVE_PA: u32 = 0xC001_0117;
const EFER_SVME: u64 = 1 << 12;

/// Nested page-table pool size (pages).
const NPT_TABLES: usize = 64;

/// Guest code selector (boot-info GDT entry 1).
const GUEST_CODE_SELECTOR: u16 = 0x08;
/// Guest data selector (boot-info GDT entry 2).
const GUEST_DATA_SELECTOR: u16 = 0x10;

/// All SVSM memory the platform owns, page aligned.
#[repr(C, align(4096))]
struct SvmPages {
    vmcb: [u8; 4096],
    host_vmcb: [u8; 4096],
    hsave: [u8; 4096],
    iopm: [u8; 3 * 4096],
    msrpm: [u8; 2 * 4096],
    npt: [Table; NPT_TABLES],
    /// FXSAVE areas: host at 0, guest at 512.
    fx: [u8; 1024],
}

static PAGES: TakeOnce<SvmPages> = TakeOnce::new(SvmPages {
    vmcb: [0; 4096],
    host_vmcb: [0; 4096],
    hsave: [0; 4096],
    iopm: [0; 3 * 4096],
    msrpm: [0; 2 * 4096],
    npt: [[0; 512]; NPT_TABLES],
    fx: [0; 1024],
});

/// The guest's general-purpose registers that VMRUN does not keep in the VMCB.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct GuestGprs {
    rbx: u64,
    rcx: u64,
    rdx: u64,
    rsi: u64,
    rdi: u64,
    rbp: u64,
    r8: u64,
    r9: u64,
    r10: u64,
    r11: u64,
    r12: u64,
    r13: u64,
    r14: u64,
    r15: u64,
}

extern "C" {
    fn nitride_vmrun(vmcb_pa: u64, gprs: *mut GuestGprs, host_vmcb_pa: u64, fx: *mut u8);
}

core::arch::global_asm!(
    r#"
    .section .text.vmrun, "ax", @progbits
    .global nitride_vmrun
    /* rdi = guest VMCB PA, rsi = &GuestGprs, rdx = host VMCB PA,
       rcx = FXSAVE areas (host at 0, guest at 512). */
nitride_vmrun:
    pushq %rbx
    pushq %rbp
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    pushq %rdx
    pushq %rsi
    pushq %rcx
    fxsave64 (%rcx)
    fxrstor64 512(%rcx)
    movq %rdi, %rax
    movq 0x00(%rsi), %rbx
    movq 0x08(%rsi), %rcx
    movq 0x10(%rsi), %rdx
    movq 0x20(%rsi), %rdi
    movq 0x28(%rsi), %rbp
    movq 0x30(%rsi), %r8
    movq 0x38(%rsi), %r9
    movq 0x40(%rsi), %r10
    movq 0x48(%rsi), %r11
    movq 0x50(%rsi), %r12
    movq 0x58(%rsi), %r13
    movq 0x60(%rsi), %r14
    movq 0x68(%rsi), %r15
    movq 0x18(%rsi), %rsi
    vmload %rax
    vmrun %rax
    vmsave %rax
    movq 8(%rsp), %rax
    movq %rbx, 0x00(%rax)
    movq %rcx, 0x08(%rax)
    movq %rdx, 0x10(%rax)
    movq %rsi, 0x18(%rax)
    movq %rdi, 0x20(%rax)
    movq %rbp, 0x28(%rax)
    movq %r8, 0x30(%rax)
    movq %r9, 0x38(%rax)
    movq %r10, 0x40(%rax)
    movq %r11, 0x48(%rax)
    movq %r12, 0x50(%rax)
    movq %r13, 0x58(%rax)
    movq %r14, 0x60(%rax)
    movq %r15, 0x68(%rax)
    popq %rcx
    fxsave64 512(%rcx)
    fxrstor64 (%rcx)
    popq %rsi
    popq %rax
    vmload %rax
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbp
    popq %rbx
    ret
    "#,
    options(att_syntax)
);

fn put64(page: &mut [u8; 4096], off: usize, v: u64) {
    page[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn put32(page: &mut [u8; 4096], off: usize, v: u32) {
    page[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn get64(page: &[u8; 4096], off: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&page[off..off + 8]);
    u64::from_le_bytes(b)
}

/// A segment register in the VMCB: selector, attributes, limit, base.
fn put_segment(
    page: &mut [u8; 4096],
    off: usize,
    selector: u16,
    attrib: u16,
    limit: u32,
    base: u64,
) {
    page[off..off + 2].copy_from_slice(&selector.to_le_bytes());
    page[off + 2..off + 4].copy_from_slice(&attrib.to_le_bytes());
    put32(page, off + 4, limit);
    put64(page, off + 8, base);
}

/// Why SVM could not be set up.
#[allow(
    dead_code,
    reason = "fields are read through Debug in the fatal report"
)]
#[derive(Clone, Copy, Debug)]
pub enum SvmError {
    /// CPUID does not report SVM.
    NoSvm,
    /// CPUID does not report nested paging.
    NoNestedPaging,
    /// SVM is disabled by the firmware (VM_CR.SVMDIS).
    Disabled,
    /// The nested page tables did not fit the pool.
    Npt(npt::NptError),
    /// Called twice.
    AlreadyInitialised,
}

fn check_cpu() -> Result<(), SvmError> {
    let max_ext = core::arch::x86_64::__cpuid(0x8000_0000).eax;
    if max_ext < 0x8000_000A {
        return Err(SvmError::NoSvm);
    }
    if core::arch::x86_64::__cpuid(0x8000_0001).ecx & (1 << 2) == 0 {
        return Err(SvmError::NoSvm);
    }
    if core::arch::x86_64::__cpuid(0x8000_000A).edx & 1 == 0 {
        return Err(SvmError::NoNestedPaging);
    }
    // SAFETY: VM_CR exists when CPUID reports SVM; reading it has no side effects.
    if unsafe { Msr::new(MSR_VM_CR).read() } & (1 << 4) != 0 {
        return Err(SvmError::Disabled);
    }
    Ok(())
}

/// The emulated platform.
pub struct Emulated {
    pages: &'static mut SvmPages,
    gprs: GuestGprs,
    map: GuestMemoryMap,
    exits: u64,
    /// The client of the emulated PSP (VMPCK0), once attached.
    psp: Option<PspClient<EmulatedPspChannel>>,
}

impl core::fmt::Debug for Emulated {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Emulated")
            .field("exits", &self.exits)
            .field("psp", &self.psp)
            .finish_non_exhaustive()
    }
}

impl Emulated {
    /// Turn SVM on, build the nested page tables for `map`, and prepare a VMCB for
    /// the documented initial CPU state (the entry point is set by [`Emulated::start_at`]).
    pub fn new(
        map: GuestMemoryMap,
        boot_info_gpa: u64,
        secrets_gpa: u64,
    ) -> Result<Self, SvmError> {
        check_cpu()?;
        let pages = PAGES.take().ok_or(SvmError::AlreadyInitialised)?;

        let npt_base = phys(&pages.npt);
        let mut pool = TablePool::new(&mut pages.npt, npt_base);
        let ncr3 = npt::build_identity(&mut pool, map.ram()).map_err(SvmError::Npt)?;
        log::info!(
            "nested paging: {} guest RAM ranges, {} MiB, {} table pages",
            map.ram().len(),
            map.guest_bytes() >> 20,
            pool.used()
        );

        // I/O: intercept every port except the console, COM2 and debug-exit.
        pages.iopm.fill(0xFF);
        for range in [
            ports::COM1..ports::COM1 + 8,
            ports::COM2..ports::COM2 + 8,
            ports::DEBUG_EXIT..ports::DEBUG_EXIT + 4,
        ] {
            for port in range {
                pages.iopm[usize::from(port / 8)] &= !(1 << (port % 8));
            }
        }
        // MSRs: intercept all.
        pages.msrpm.fill(0xFF);

        // Guest FPU/SSE state: the reset values, never the SVSM's registers.
        pages.fx.fill(0);
        pages.fx[512..514].copy_from_slice(&0x037Fu16.to_le_bytes());
        pages.fx[512 + 24..512 + 28].copy_from_slice(&0x1F80u32.to_le_bytes());

        let iopm = phys(&pages.iopm);
        let msrpm = phys(&pages.msrpm);
        let v = &mut pages.vmcb;
        v.fill(0);
        // HLT, IOIO, MSR, SHUTDOWN.
        put32(
            v,
            ctl::INTERCEPT_MISC1,
            (1 << 24) | (1 << 27) | (1 << 28) | (1 << 31),
        );
        // VMRUN, VMMCALL, VMLOAD, VMSAVE, STGI, CLGI, SKINIT.
        put32(v, ctl::INTERCEPT_MISC2, 0x7F);
        put64(v, ctl::IOPM_BASE_PA, iopm);
        put64(v, ctl::MSRPM_BASE_PA, msrpm);
        put32(v, ctl::GUEST_ASID, 1);
        v[ctl::TLB_CONTROL] = 1;
        put64(v, ctl::V_INTR, 1 << 24); // V_INTR_MASKING: host IF governs interrupts
        put64(v, ctl::NP_ENABLE, 1);
        put64(v, ctl::N_CR3, ncr3);

        for seg in [save::ES, save::SS, save::DS, save::FS, save::GS] {
            put_segment(v, seg, GUEST_DATA_SELECTOR, 0x0C93, 0xFFFF_FFFF, 0);
        }
        put_segment(v, save::CS, GUEST_CODE_SELECTOR, 0x0A9B, 0xFFFF_FFFF, 0);
        put_segment(
            v,
            save::GDTR,
            0,
            0,
            (boot_info::GDT.len() * 8 - 1) as u32,
            boot_info_gpa + boot_info::GDT_OFFSET as u64,
        );
        put_segment(v, save::IDTR, 0, 0, 0, 0);
        put_segment(v, save::LDTR, 0, 0x0082, 0, 0);
        put_segment(v, save::TR, 0, 0x008B, 0x67, 0);
        v[save::CPL] = 0;
        put64(v, save::EFER, (1 << 8) | (1 << 10) | (1 << 11) | EFER_SVME);
        put64(v, save::CR4, (1 << 5) | (1 << 9) | (1 << 10));
        put64(v, save::CR3, GUEST_PAGE_TABLES_GPA);
        put64(v, save::CR0, 0x8001_0033);
        put64(v, save::DR7, 0x400);
        put64(v, save::DR6, 0xFFFF_0FF0);
        put64(v, save::RFLAGS, 0x2);
        put64(v, save::RSP, GUEST_INITIAL_RSP);
        put64(v, save::RAX, 0);
        put64(v, save::G_PAT, 0x0007_0406_0007_0406);

        let gprs = GuestGprs {
            rdi: boot_info_gpa,
            rsi: secrets_gpa,
            ..GuestGprs::default()
        };

        // Turn SVM on and save the host state VMRUN does not (TR, FS, GS, ...).
        let hsave = phys(&pages.hsave);
        let host_vmcb = phys(&pages.host_vmcb);
        // SAFETY: CPUID reported SVM and VM_CR allows it; setting EFER.SVME and
        // pointing VM_HSAVE_PA at a page-aligned page of SVSM memory (which nothing
        // else uses) is the architected way to enable it. VMSAVE writes only the
        // host VMCB page. CLGI keeps the global interrupt flag clear in the SVSM.
        unsafe {
            let mut efer = Msr::new(MSR_EFER);
            efer.write(efer.read() | EFER_SVME);
            Msr::new(MSR_VM_HSAVE_PA).write(hsave);
            core::arch::asm!("vmsave rax", in("rax") host_vmcb, options(nostack));
            core::arch::asm!("clgi", options(nomem, nostack));
        }
        Ok(Self {
            pages,
            gprs,
            map,
            exits: 0,
            psp: None,
        })
    }

    fn inject_gp(&mut self) {
        // Vector 13, type 3 (exception), error code valid, event valid, code 0.
        put64(
            &mut self.pages.vmcb,
            ctl::EVENTINJ,
            13 | (3 << 8) | (1 << 11) | (1 << 31),
        );
    }

    /// Number of VMEXITs taken so far.
    pub fn exits(&self) -> u64 {
        self.exits
    }
}

impl Platform for Emulated {
    fn run_guest(&mut self) -> GuestExit {
        loop {
            let vmcb = phys(&self.pages.vmcb);
            let host = phys(&self.pages.host_vmcb);
            let fx = self.pages.fx.as_mut_ptr();
            // SAFETY: the VMCB, host save area (VM_HSAVE_PA) and host VMCB are
            // page-aligned SVSM pages prepared in `new`; the guest's nested page
            // tables map only guest RAM, so the guest cannot reach SVSM memory. The
            // stub saves and restores every callee-saved register and the SSE state,
            // and restores the host's TR/FS/GS with VMLOAD after the exit.
            unsafe { nitride_vmrun(vmcb, &mut self.gprs, host, fx) };
            self.exits += 1;
            let v = &mut self.pages.vmcb;
            v[ctl::TLB_CONTROL] = 0;
            let code = get64(v, ctl::EXITCODE);
            let info1 = get64(v, ctl::EXITINFO1);
            let info2 = get64(v, ctl::EXITINFO2);
            let rip = get64(v, save::RIP);
            match code & 0xFFFF_FFFF {
                exitcode::VMMCALL => {
                    put64(v, save::RIP, rip.wrapping_add(VMMCALL_LEN));
                    return GuestExit::SvsmCall;
                }
                exitcode::NPF => {
                    let access = Access {
                        write: info1 & (1 << 1) != 0,
                        execute: info1 & (1 << 4) != 0,
                    };
                    return GuestExit::Violation {
                        gpa: info2,
                        rip,
                        access,
                    };
                }
                exitcode::HLT => return GuestExit::Halted { rip },
                exitcode::SHUTDOWN => return GuestExit::Shutdown { rip },
                exitcode::IOIO => {
                    log::warn!("guest I/O to port {:#x} refused (#GP)", info1 >> 16);
                    self.inject_gp();
                }
                exitcode::MSR => {
                    log::warn!(
                        "guest {} of MSR {:#x} refused (#GP)",
                        if info1 == 1 { "WRMSR" } else { "RDMSR" },
                        self.gprs.rcx as u32
                    );
                    self.inject_gp();
                }
                _ => return GuestExit::Unexpected { code, info1, info2 },
            }
        }
    }

    fn call_regs(&self) -> CallRegs {
        CallRegs {
            rax: get64(&self.pages.vmcb, save::RAX),
            rcx: self.gprs.rcx,
            rdx: self.gprs.rdx,
            r8: self.gprs.r8,
            r9: self.gprs.r9,
        }
    }

    fn set_call_regs(&mut self, regs: &CallRegs) {
        put64(&mut self.pages.vmcb, save::RAX, regs.rax);
        self.gprs.rcx = regs.rcx;
        self.gprs.rdx = regs.rdx;
        self.gprs.r8 = regs.r8;
        self.gprs.r9 = regs.r9;
    }

    fn caller_vmpl(&self) -> u8 {
        GUEST_VMPL
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
        let timing = psp.channel().psp().last_timing();
        log::info!(
            "PSP round trip: {} cycles (emulated PSP {}, of which signing {})",
            cpu::tsc().wrapping_sub(start),
            timing.handled,
            timing.signing
        );
        Ok(evidence)
    }

    fn cycles(&self) -> u64 {
        cpu::tsc()
    }
}

impl Emulated {
    /// Give the platform its PSP client (VMPCK0 to the emulated PSP); attestation is
    /// offered from then on.
    pub fn attach_psp(&mut self, psp: PspClient<EmulatedPspChannel>) {
        self.psp = Some(psp);
    }

    /// Start the guest at `entry` on the next run.
    pub fn start_at(&mut self, entry: u64) {
        put64(&mut self.pages.vmcb, save::RIP, entry);
    }
}
