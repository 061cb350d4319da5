//! The emulated platform: the guest runs under AMD-V (SVM) with nested paging, so
//! the VMPL boundary of real SNP becomes the nested page tables, which map guest RAM
//! and nothing of the SVSM. A `VMMCALL` plays the part of the VMGEXIT that asks for
//! VMPL0. See `docs/guest-contract.md` for the guest's view.
//!
//! The VMCB is an ordinary page of bytes written at documented offsets (AMD APM
//! vol. 2, appendix B); the only unsafe code is the world switch itself and the MSR
//! writes that turn SVM on.
//!
//! Every exit the guest can cause is decided here: the calling VMMCALL (any
//! prefixes, e.g. `rep vmmcall`) is completed by its real length; debug-register
//! accesses reach only a virtual debug-register file kept in SVSM memory (QEMU's
//! breakpoints would otherwise fire inside the SVSM); #DB and #BP are reflected into
//! the guest; INVD, WBINVD and MONITOR complete as no-ops, MWAIT stops a guest that
//! could never wake; XSETBV, RDPMC, refused ports and every MSR get #GP (logged with
//! a rate limit, [`nitride_kernel::refusals`]); a write to the debug-exit port is the
//! guest's request to end the run, honoured only with a status of the guest's own
//! range; NMI and INIT from the platform end the run. A guest that single-steps
//! (RFLAGS.TF) over an instruction the SVSM completes gets the #DB it is owed.
//! `docs/guest-contract.md` lists all of it.

use super::take_once::{phys, TakeOnce};
use super::{cpu, guest_mem};
use nitride_kernel::memory::GuestMemoryMap;
use nitride_kernel::memory::GuestRange;
use nitride_kernel::npt::{self, Table, TablePool};
use nitride_kernel::platform::emulated::insn::{self, DecodeError, Location, Paging};
pub use nitride_kernel::platform::emulated::psp::EmulatedPspChannel;
use nitride_kernel::platform::{
    Access, AttestError, Evidence, GuestExit, GuestMemoryError, Platform, PlatformEvent,
};
use nitride_kernel::psp::PspClient;
use nitride_kernel::refusals::{self, Kind, RefusalLog, Report};
use nitride_protocol::emulated::{
    boot_info, exit, ports, GUEST_INITIAL_RSP, GUEST_PAGE_TABLES_GPA, GUEST_VMPL,
};
use nitride_protocol::snp::msg::KeyReq;
use nitride_protocol::snp::report::AttestationReport;
use nitride_protocol::svsm::CallRegs;
use x86_64::registers::model_specific::Msr;
use zerocopy::FromBytes;
use zeroize::Zeroizing;

/// VMCB control-area offsets.
mod ctl {
    pub const INTERCEPT_DR: usize = 0x004;
    pub const INTERCEPT_EXCEPTIONS: usize = 0x008;
    pub const INTERCEPT_MISC1: usize = 0x00C;
    pub const INTERCEPT_MISC2: usize = 0x010;
    pub const IOPM_BASE_PA: usize = 0x040;
    pub const MSRPM_BASE_PA: usize = 0x048;
    pub const GUEST_ASID: usize = 0x058;
    pub const TLB_CONTROL: usize = 0x05C;
    pub const V_INTR: usize = 0x060;
    pub const INT_STATE: usize = 0x068;
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

/// Exit codes handled (the low 32 bits of EXITCODE).
mod exitcode {
    pub const READ_DR0: u32 = 0x20;
    pub const READ_DR7: u32 = 0x27;
    pub const WRITE_DR0: u32 = 0x30;
    pub const WRITE_DR7: u32 = 0x37;
    pub const EXCP_DB: u32 = 0x41;
    pub const EXCP_BP: u32 = 0x43;
    pub const NMI: u32 = 0x61;
    pub const INIT: u32 = 0x63;
    pub const RDPMC: u32 = 0x6F;
    pub const INVD: u32 = 0x76;
    pub const HLT: u32 = 0x78;
    pub const IOIO: u32 = 0x7B;
    pub const MSR: u32 = 0x7C;
    pub const SHUTDOWN: u32 = 0x7F;
    pub const VMMCALL: u32 = 0x81;
    pub const ICEBP: u32 = 0x88;
    pub const WBINVD: u32 = 0x89;
    pub const MONITOR: u32 = 0x8A;
    pub const MWAIT: u32 = 0x8B;
    pub const MWAIT_CONDITIONAL: u32 = 0x8C;
    pub const XSETBV: u32 = 0x8D;
    pub const NPF: u32 = 0x400;
}

/// Intercept bits of the first miscellaneous word (VMCB 0x00C): bit n is exit code
/// 0x60 + n.
mod misc1 {
    pub const NMI: u32 = 1 << 1;
    pub const INIT: u32 = 1 << 3;
    pub const RDPMC: u32 = 1 << 15;
    pub const INVD: u32 = 1 << 22;
    pub const HLT: u32 = 1 << 24;
    pub const INVLPGA: u32 = 1 << 26;
    pub const IOIO: u32 = 1 << 27;
    pub const MSR: u32 = 1 << 28;
    pub const SHUTDOWN: u32 = 1 << 31;
}

/// Intercept bits of the second miscellaneous word (VMCB 0x010): bit n is exit code
/// 0x80 + n.
mod misc2 {
    /// VMRUN, VMMCALL, VMLOAD, VMSAVE, STGI, CLGI, SKINIT.
    pub const SVM_INSTRUCTIONS: u32 = 0x7F;
    pub const ICEBP: u32 = 1 << 8;
    pub const WBINVD: u32 = 1 << 9;
    pub const MONITOR: u32 = 1 << 10;
    pub const MWAIT: u32 = 1 << 11;
    pub const MWAIT_CONDITIONAL: u32 = 1 << 12;
    pub const XSETBV: u32 = 1 << 13;
}

/// Exception vectors the platform injects or reflects.
mod vector {
    pub const DB: u8 = 1;
    pub const BP: u8 = 3;
    pub const UD: u8 = 6;
    pub const GP: u8 = 13;
}

const RFLAGS_TF: u64 = 1 << 8;
const RFLAGS_RF: u64 = 1 << 16;
const CR4_DE: u64 = 1 << 3;
const EFER_LMA: u64 = 1 << 10;
/// CS attribute bit L (64-bit code) in the VMCB's packed segment attributes.
const CS_ATTR_L: u16 = 1 << 9;
/// DR6 bits: BD (debug-register access detected), BS (single step).
const DR6_BD: u64 = 1 << 13;
const DR6_BS: u64 = 1 << 14;
/// DR6 and DR7 at reset (the bits that read as 1).
const DR6_FIXED: u64 = 0xFFFF_0FF0;
const DR7_FIXED: u64 = 0x400;
/// DR7 GD: general detect (a MOV DR raises #DB first).
const DR7_GD: u64 = 1 << 13;

/// The guest's debug registers. They live here, in SVSM memory, and never reach
/// the CPU: the guest's MOV to or from DR0-DR7 is intercepted and served from this
/// file, and the VMCB's DR6/DR7 stay at their reset values, so no breakpoint the
/// guest sets is ever armed (under QEMU an armed breakpoint would fire inside the
/// SVSM, on whatever TSS is loaded at that moment). Breakpoints are accepted and
/// read back, but never fire; DR6 reports the single steps the SVSM delivers.
#[derive(Clone, Copy, Debug)]
struct DebugRegisters {
    dr: [u64; 4],
    dr6: u64,
    dr7: u64,
}

impl DebugRegisters {
    const RESET: Self = Self {
        dr: [0; 4],
        dr6: DR6_FIXED,
        dr7: DR7_FIXED,
    };
}

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

/// All SVSM memory the platform owns, page aligned. The host VMCB follows the guest
/// VMCB directly: the world switch finds it at guest VMCB + 4096 without touching
/// memory (see `nitride_vmrun`).
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

const _: () = assert!(
    core::mem::offset_of!(SvmPages, host_vmcb) == core::mem::offset_of!(SvmPages, vmcb) + 4096
);

static PAGES: TakeOnce<SvmPages> = TakeOnce::new(SvmPages {
    vmcb: [0; 4096],
    host_vmcb: [0; 4096],
    hsave: [0; 4096],
    iopm: [0; 3 * 4096],
    msrpm: [0; 2 * 4096],
    npt: [[0; 512]; NPT_TABLES],
    fx: [0; 1024],
});

/// The guest's general-purpose registers that VMRUN does not keep in the VMCB, and
/// its XCR0 (which VMRUN does not switch either).
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
    /// XCR0 (offset 0x70), switched only when `swap_xcr0` is passed to the stub.
    xcr0: u64,
}

const _: () = assert!(core::mem::offset_of!(GuestGprs, xcr0) == 0x70);

/// The SVSM's own XCR0: x87 and SSE state only.
const HOST_XCR0: u64 = 0x3;

extern "C" {
    fn nitride_vmrun(vmcb_pa: u64, gprs: *mut GuestGprs, fx: *mut u8, swap_xcr0: u64);
}

// The world switch. Between #VMEXIT and the VMLOAD of the host VMCB the CPU still
// holds the guest's TR (and with it the guest's IST pointers), FS, GS and LDTR, and
// every GPR but RAX and RSP holds a guest value: an exception there would run the
// SVSM's handler on a stack the guest chose. So that window is three instructions
// that touch no memory but the two VMCB pages (VMSAVE, LEA, VMLOAD: the host VMCB is
// the page after the guest's, and RAX holds the guest VMCB's address again after
// VMRUN), the guest can arm no breakpoint (its debug-register accesses are
// intercepted), and GIF stays clear (no NMI or SMI). Right after, the guest's GPRs
// are stored and cleared, so no guest value stays live in SVSM code. Where the CPU
// has XSAVE, XCR0 is switched too (the guest's before VMRUN, the SVSM's right after
// the GPRs): QEMU 7.2 does not intercept XSETBV, so a guest's XCR0 would otherwise
// stay live in the SVSM.
// `nitride_vmrun_after_vmsave` marks the instruction after VMSAVE; the attack test
// aims a guest breakpoint at it.
core::arch::global_asm!(
    r#"
    .section .text.vmrun, "ax", @progbits
    .global nitride_vmrun
    .global nitride_vmrun_after_vmsave
    /* rdi = guest VMCB PA (the host VMCB is the next page), rsi = &GuestGprs,
       rdx = FXSAVE areas (host at 0, guest at 512), rcx = switch XCR0 (0 or 1).
       Stack while the guest runs: flag at 0, FXSAVE areas at 8, &GuestGprs at 16. */
nitride_vmrun:
    pushq %rbx
    pushq %rbp
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    pushq %rsi
    pushq %rdx
    pushq %rcx
    fxsave64 (%rdx)
    fxrstor64 512(%rdx)
    testq %rcx, %rcx
    jz 1f
    movl 0x70(%rsi), %eax
    movl 0x74(%rsi), %edx
    xorl %ecx, %ecx
    xsetbv
1:
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
nitride_vmrun_after_vmsave:
    leaq 4096(%rax), %rax
    vmload %rax
    /* Host TR, FS, GS, LDTR and syscall MSRs are back: store the guest's GPRs and
       clear them. */
    movq 16(%rsp), %rax
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
    xorl %eax, %eax
    xorl %ebx, %ebx
    xorl %ecx, %ecx
    xorl %edx, %edx
    xorl %esi, %esi
    xorl %edi, %edi
    xorl %ebp, %ebp
    xorl %r8d, %r8d
    xorl %r9d, %r9d
    xorl %r10d, %r10d
    xorl %r11d, %r11d
    xorl %r12d, %r12d
    xorl %r13d, %r13d
    xorl %r14d, %r14d
    xorl %r15d, %r15d
    cmpq $0, (%rsp)
    je 2f
    movq 16(%rsp), %rsi
    xorl %ecx, %ecx
    xgetbv
    movl %eax, 0x70(%rsi)
    movl %edx, 0x74(%rsi)
    movl ${host_xcr0}, %eax
    xorl %edx, %edx
    xsetbv
    xorl %eax, %eax
    xorl %esi, %esi
2:
    popq %rcx
    popq %rdx
    fxsave64 512(%rdx)
    fxrstor64 (%rdx)
    popq %rsi
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbp
    popq %rbx
    ret
    "#,
    host_xcr0 = const HOST_XCR0,
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
    /// The guest's debug registers (never loaded into the CPU).
    debug: DebugRegisters,
    /// Refused accesses, counted for the rate-limited log.
    refusals: RefusalLog,
    /// The CPU has XSAVE: XCR0 is switched with the guest.
    xsave: bool,
    /// XCR0 values the guest ran with that differ from the SVSM's (the last one),
    /// for the stop report.
    guest_xcr0_seen: Option<u64>,
    /// The client of the emulated PSP (VMPCK0), once attached.
    psp: Option<PspClient<EmulatedPspChannel>>,
    /// The chip's committed TCB, read from the first report sealing needed.
    committed_tcb: Option<[u8; 8]>,
}

impl core::fmt::Debug for Emulated {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Emulated")
            .field("exits", &self.exits)
            .field("refusals", &self.refusals)
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

        // I/O: intercept every port except the guest's console and COM2. The
        // debug-exit port is intercepted too: a write there is a request to the SVSM.
        pages.iopm.fill(0xFF);
        for range in [ports::COM1..ports::COM1 + 8, ports::COM2..ports::COM2 + 8] {
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
        // Every read and write of DR0-DR15.
        put32(v, ctl::INTERCEPT_DR, 0xFFFF_FFFF);
        put32(
            v,
            ctl::INTERCEPT_EXCEPTIONS,
            (1 << vector::DB) | (1 << vector::BP),
        );
        put32(
            v,
            ctl::INTERCEPT_MISC1,
            misc1::NMI
                | misc1::INIT
                | misc1::RDPMC
                | misc1::INVD
                | misc1::HLT
                | misc1::INVLPGA
                | misc1::IOIO
                | misc1::MSR
                | misc1::SHUTDOWN,
        );
        put32(
            v,
            ctl::INTERCEPT_MISC2,
            misc2::SVM_INSTRUCTIONS
                | misc2::ICEBP
                | misc2::WBINVD
                | misc2::MONITOR
                | misc2::MWAIT
                | misc2::MWAIT_CONDITIONAL
                | misc2::XSETBV,
        );
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
        // The CPU's DR6/DR7 while the guest runs: reset values, nothing armed. The
        // guest's own values are in `DebugRegisters`.
        put64(v, save::DR7, DR7_FIXED);
        put64(v, save::DR6, DR6_FIXED);
        put64(v, save::RFLAGS, 0x2);
        put64(v, save::RSP, GUEST_INITIAL_RSP);
        put64(v, save::RAX, 0);
        put64(v, save::G_PAT, 0x0007_0406_0007_0406);

        let gprs = GuestGprs {
            rdi: boot_info_gpa,
            rsi: secrets_gpa,
            // XCR0 at reset: x87 only.
            xcr0: 1,
            ..GuestGprs::default()
        };
        let xsave = core::arch::x86_64::__cpuid(1).ecx & (1 << 26) != 0;

        // Turn SVM on and save the host state VMRUN does not (TR, FS, GS, ...).
        let hsave = phys(&pages.hsave);
        let host_vmcb = phys(&pages.host_vmcb);
        if xsave {
            // SAFETY: CPUID reports XSAVE, so CR4.OSXSAVE may be set; XCR0 = x87|SSE
            // is valid on every CPU with XSAVE. The SVSM uses no XSAVE-managed state
            // beyond what FXSAVE covers; this only lets the world switch keep the
            // guest's XCR0 apart from its own.
            unsafe {
                core::arch::asm!(
                    "mov {t}, cr4",
                    "or {t}, {osxsave}",
                    "mov cr4, {t}",
                    "xor ecx, ecx",
                    "xsetbv",
                    t = out(reg) _,
                    osxsave = const 1u64 << 18,
                    in("eax") HOST_XCR0 as u32,
                    in("edx") 0u32,
                    out("ecx") _,
                    options(nostack),
                );
            }
        }
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
            debug: DebugRegisters::RESET,
            refusals: RefusalLog::new(),
            xsave,
            guest_xcr0_seen: None,
            psp: None,
            committed_tcb: None,
        })
    }

    /// Inject an exception into the guest on the next VMRUN.
    fn inject(&mut self, vector: u8, error: Option<u32>) {
        // Type 3 (exception), error code valid when given, event valid.
        let mut event = u64::from(vector) | (3 << 8) | (1 << 31);
        if let Some(code) = error {
            event |= (1 << 11) | (u64::from(code) << 32);
        }
        put64(&mut self.pages.vmcb, ctl::EVENTINJ, event);
    }

    fn inject_gp(&mut self) {
        self.inject(vector::GP, Some(0));
    }

    /// Number of VMEXITs taken so far.
    pub fn exits(&self) -> u64 {
        self.exits
    }

    /// The SVSM must run with its own XCR0 after every exit, whatever the guest set
    /// (QEMU 7.2 lets the guest's XSETBV through despite the intercept).
    fn check_xcr0(&mut self) {
        let (lo, hi): (u32, u32);
        // SAFETY: XGETBV with ECX = 0 reads XCR0; CR4.OSXSAVE was set in `new`.
        unsafe {
            core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") hi, options(nomem, nostack))
        };
        let now = u64::from(hi) << 32 | u64::from(lo);
        if now != HOST_XCR0 {
            cpu::fatal(format_args!(
                "XCR0 is {now:#x} in the SVSM after an exit (its own is {HOST_XCR0:#x})"
            ));
        }
        if self.gprs.xcr0 != HOST_XCR0 && self.gprs.xcr0 != 1 {
            self.guest_xcr0_seen = Some(self.gprs.xcr0);
        }
    }

    /// How XCR0 was kept: the SVSM's own value, and the guest's last one when it set
    /// another (for the stop report). `None` without XSAVE.
    pub fn xcr0_report(&self) -> Option<(u64, Option<u64>)> {
        self.xsave.then_some((HOST_XCR0, self.guest_xcr0_seen))
    }

    /// What was refused so far, by kind.
    pub fn refusals(&self) -> &RefusalLog {
        &self.refusals
    }

    /// Count and (rate-limited) log a refused access, and answer it with #GP.
    fn refuse(&mut self, kind: Kind, what: core::fmt::Arguments<'_>) {
        match self.refusals.record(kind) {
            Report::Line => log::warn!("guest {what} refused (#GP)"),
            Report::Summary { count } => log::warn!(
                "guest {} accesses refused so far: {count} (each answered with #GP; only the first {} are logged one by one)",
                kind.name(),
                refusals::FIRST_LOGGED
            ),
            Report::Quiet => {}
        }
        self.inject_gp();
    }

    fn vmcb64(&self, off: usize) -> u64 {
        get64(&self.pages.vmcb, off)
    }

    fn paging(&self) -> Paging {
        Paging {
            cr0: self.vmcb64(save::CR0),
            cr3: self.vmcb64(save::CR3),
            cr4: self.vmcb64(save::CR4),
            efer: self.vmcb64(save::EFER),
        }
    }

    fn location(&self) -> Location {
        let v = &self.pages.vmcb;
        let cs_attr = u16::from_le_bytes([v[save::CS + 2], v[save::CS + 3]]);
        Location {
            rip: self.vmcb64(save::RIP),
            cs_base: self.vmcb64(save::CS + 8),
            long_mode: self.vmcb64(save::EFER) & EFER_LMA != 0 && cs_attr & CS_ATTR_L != 0,
        }
    }

    /// The bytes of the guest's current instruction (fewer than 15 when it ends
    /// near an unreadable page).
    fn fetch(&self) -> Option<([u8; insn::MAX_LEN], usize)> {
        insn::fetch(self, &self.paging(), &self.location()).ok()
    }

    /// The length of the current instruction, which the exit says is `opcode`.
    fn length_of(&self, opcode: &[u8]) -> Result<usize, DecodeError> {
        let (bytes, n) = self.fetch().ok_or(DecodeError::Truncated)?;
        insn::length_of(&bytes[..n], opcode, self.location().long_mode)
    }

    /// The guest completed the current instruction of `len` bytes (the SVSM did its
    /// work): move RIP past it, drop RF and the interrupt shadow as the CPU would,
    /// and deliver the single-step #DB a guest running with RFLAGS.TF is owed.
    fn complete(&mut self, len: usize) {
        let at = self.location();
        let mut rip = at.rip.wrapping_add(len as u64);
        if !at.long_mode {
            rip &= 0xFFFF_FFFF;
        }
        let rflags = self.vmcb64(save::RFLAGS);
        let v = &mut self.pages.vmcb;
        put64(v, save::RIP, rip);
        put64(v, save::RFLAGS, rflags & !RFLAGS_RF);
        put64(v, ctl::INT_STATE, 0);
        if rflags & RFLAGS_TF != 0 {
            self.debug.dr6 |= DR6_BS;
            self.inject(vector::DB, None);
        }
    }

    /// An instruction the SVSM must complete could not be decoded: a LOCK prefix or
    /// DR8+ is #UD as on the CPU; bytes that cannot be read or are not the
    /// instruction the exit names stop the guest.
    fn undecodable(&mut self, code: u32, error: DecodeError) -> Option<GuestExit> {
        match error {
            DecodeError::Lock | DecodeError::BadDebugRegister => {
                self.inject(vector::UD, None);
                None
            }
            DecodeError::Truncated | DecodeError::Unexpected => {
                log::error!(
                    "guest instruction at RIP {:#x} (exit {code:#x}) could not be decoded: {error:?}",
                    self.vmcb64(save::RIP)
                );
                Some(GuestExit::Undecodable {
                    code: u64::from(code),
                    rip: self.vmcb64(save::RIP),
                })
            }
        }
    }

    /// Complete an instruction that has no effect on the emulated platform.
    fn no_op(&mut self, code: u32, opcode: &[u8]) -> Option<GuestExit> {
        match self.length_of(opcode) {
            Ok(len) => {
                self.complete(len);
                None
            }
            Err(e) => self.undecodable(code, e),
        }
    }

    /// The guest's general-purpose register `n` (ModRM numbering).
    fn gpr(&self, n: u8) -> u64 {
        let g = &self.gprs;
        match n {
            0 => self.vmcb64(save::RAX),
            1 => g.rcx,
            2 => g.rdx,
            3 => g.rbx,
            4 => self.vmcb64(save::RSP),
            5 => g.rbp,
            6 => g.rsi,
            7 => g.rdi,
            8 => g.r8,
            9 => g.r9,
            10 => g.r10,
            11 => g.r11,
            12 => g.r12,
            13 => g.r13,
            14 => g.r14,
            _ => g.r15,
        }
    }

    fn set_gpr(&mut self, n: u8, value: u64) {
        let g = &mut self.gprs;
        match n {
            0 => put64(&mut self.pages.vmcb, save::RAX, value),
            1 => g.rcx = value,
            2 => g.rdx = value,
            3 => g.rbx = value,
            4 => put64(&mut self.pages.vmcb, save::RSP, value),
            5 => g.rbp = value,
            6 => g.rsi = value,
            7 => g.rdi = value,
            8 => g.r8 = value,
            9 => g.r9 = value,
            10 => g.r10 = value,
            11 => g.r11 = value,
            12 => g.r12 = value,
            13 => g.r13 = value,
            14 => g.r14 = value,
            _ => g.r15 = value,
        }
    }

    /// MOV to or from a debug register: served from the virtual file.
    fn mov_dr(&mut self, code: u32) -> Option<GuestExit> {
        let Some((bytes, n)) = self.fetch() else {
            return self.undecodable(code, DecodeError::Truncated);
        };
        let long_mode = self.location().long_mode;
        let m = match insn::mov_dr(&bytes[..n], long_mode) {
            Ok(m) => m,
            Err(e) => return self.undecodable(code, e),
        };
        let named = if m.to_dr {
            code - exitcode::WRITE_DR0
        } else {
            code - exitcode::READ_DR0
        };
        if u32::from(m.dr) != named || m.to_dr != (code >= exitcode::WRITE_DR0) {
            return self.undecodable(code, DecodeError::Unexpected);
        }
        // General detect: the access itself raises #DB (a fault, RIP unchanged).
        if self.debug.dr7 & DR7_GD != 0 {
            self.debug.dr7 &= !DR7_GD;
            self.debug.dr6 |= DR6_BD;
            self.inject(vector::DB, None);
            return None;
        }
        let dr = match m.dr {
            4 | 5 if self.vmcb64(save::CR4) & CR4_DE != 0 => {
                self.inject(vector::UD, None);
                return None;
            }
            4 => 6,
            5 => 7,
            d => d,
        };
        if m.to_dr {
            let mut value = self.gpr(m.gpr);
            if !long_mode {
                value &= 0xFFFF_FFFF;
            }
            match dr {
                6 | 7 if value >> 32 != 0 => {
                    self.inject_gp();
                    return None;
                }
                6 => self.debug.dr6 = value | DR6_FIXED,
                7 => self.debug.dr7 = value | DR7_FIXED,
                d => self.debug.dr[usize::from(d & 3)] = value,
            }
        } else {
            let mut value = match dr {
                6 => self.debug.dr6,
                7 => self.debug.dr7,
                d => self.debug.dr[usize::from(d & 3)],
            };
            if !long_mode {
                value &= 0xFFFF_FFFF;
            }
            self.set_gpr(m.gpr, value);
        }
        self.complete(m.len);
        None
    }

    /// A #DB in the guest (a single step of its own): give it back, with the step
    /// recorded in the virtual DR6.
    fn reflect_debug(&mut self) {
        let dr6 = self.vmcb64(save::DR6);
        self.debug.dr6 |= dr6 & DR6_BS;
        put64(&mut self.pages.vmcb, save::DR6, DR6_FIXED);
        self.inject(vector::DB, None);
    }

    /// A #BP (INT3) in the guest: the intercept leaves RIP at the instruction;
    /// deliver the trap after it, as the CPU would have.
    fn reflect_breakpoint(&mut self, code: u32) -> Option<GuestExit> {
        let len = self
            .length_of(&[0xCC])
            .or_else(|_| self.length_of(&[0xCD, 0x03]));
        match len {
            Ok(len) => {
                let rip = self.vmcb64(save::RIP).wrapping_add(len as u64);
                put64(&mut self.pages.vmcb, save::RIP, rip);
                self.inject(vector::BP, None);
                None
            }
            Err(e) => self.undecodable(code, e),
        }
    }

    /// An intercepted port access. A write to the debug-exit port asks to end the
    /// run: granted for a status of the guest's range, refused (#GP) for anything
    /// else, above all the SVSM's own verdicts. Every other port is refused.
    fn io(&mut self, info1: u64) -> Option<GuestExit> {
        let port = (info1 >> 16) as u16;
        let is_in = info1 & 1 != 0;
        let string = info1 & (1 << 2) != 0;
        let size = (info1 >> 4) & 7;
        if port == ports::DEBUG_EXIT && !is_in && !string {
            let mask = match size {
                1 => 0xFF,
                2 => 0xFFFF,
                _ => 0xFFFF_FFFF,
            };
            let value = (self.vmcb64(save::RAX) & mask) as u32;
            if exit::is_guest_status(value) {
                return Some(GuestExit::ExitRequest {
                    status: value as u8,
                });
            }
            self.refuse(
                Kind::Io,
                format_args!(
                    "request to end the run with status {value:#x} (the guest's range is {:#x}..={:#x}; the others are the SVSM's verdicts)",
                    exit::GUEST_STATUS_FIRST,
                    exit::GUEST_STATUS_LAST
                ),
            );
            return None;
        }
        self.refuse(
            Kind::Io,
            format_args!("I/O {} port {port:#x}", if is_in { "from" } else { "to" }),
        );
        None
    }

    /// Handle one exit; `None` resumes the guest.
    fn handle_exit(&mut self, code: u64, info1: u64, info2: u64) -> Option<GuestExit> {
        let rip = self.vmcb64(save::RIP);
        let low = code as u32;
        if code >> 32 != 0 {
            // Negative codes (QEMU reports VMEXIT_INVALID as 0xFFFF_FFFF, which
            // falls through to `Unexpected` below).
            return Some(GuestExit::Unexpected { code, info1, info2 });
        }
        match low {
            exitcode::VMMCALL => match self.length_of(&insn::VMMCALL) {
                Ok(len) => {
                    self.complete(len);
                    Some(GuestExit::SvsmCall)
                }
                Err(e) => self.undecodable(low, e),
            },
            exitcode::READ_DR0..=exitcode::READ_DR7 | exitcode::WRITE_DR0..=exitcode::WRITE_DR7 => {
                self.mov_dr(low)
            }
            exitcode::EXCP_DB => {
                self.reflect_debug();
                None
            }
            exitcode::EXCP_BP => self.reflect_breakpoint(low),
            exitcode::IOIO => self.io(info1),
            exitcode::MSR => {
                let write = info1 == 1;
                let msr = self.gprs.rcx as u32;
                self.refuse(
                    Kind::Msr,
                    format_args!("{} of MSR {msr:#x}", if write { "WRMSR" } else { "RDMSR" }),
                );
                None
            }
            // Either opcode under either exit: QEMU 7.2 reports INVD with the WBINVD
            // exit code. Both complete as no-ops.
            exitcode::INVD | exitcode::WBINVD => match self
                .length_of(&insn::WBINVD)
                .or_else(|_| self.length_of(&insn::INVD))
            {
                Ok(len) => {
                    self.complete(len);
                    None
                }
                Err(e) => self.undecodable(low, e),
            },
            exitcode::MONITOR => self.no_op(low, &insn::MONITOR),
            exitcode::ICEBP => match self.length_of(&[0xF1]) {
                Ok(len) => {
                    self.complete(len);
                    // INT1: a #DB trap after the instruction (unless the single
                    // step already queued one).
                    self.inject(vector::DB, None);
                    None
                }
                Err(e) => self.undecodable(low, e),
            },
            exitcode::MWAIT | exitcode::MWAIT_CONDITIONAL => Some(GuestExit::Waited { rip }),
            exitcode::XSETBV => {
                self.refuse(Kind::Instruction, format_args!("XSETBV"));
                None
            }
            exitcode::RDPMC => {
                self.refuse(Kind::Instruction, format_args!("RDPMC"));
                None
            }
            exitcode::NMI => Some(GuestExit::PlatformEvent {
                event: PlatformEvent::Nmi,
                rip,
            }),
            exitcode::INIT => Some(GuestExit::PlatformEvent {
                event: PlatformEvent::Init,
                rip,
            }),
            exitcode::NPF => {
                let access = Access {
                    write: info1 & (1 << 1) != 0,
                    execute: info1 & (1 << 4) != 0,
                };
                Some(GuestExit::Violation {
                    gpa: info2,
                    rip,
                    access,
                })
            }
            exitcode::HLT => Some(GuestExit::Halted { rip }),
            exitcode::SHUTDOWN => Some(GuestExit::Shutdown { rip }),
            // INVLPGA (exit 0x7A) and the other SVM instructions are not for
            // the guest: they stop it, like any exit not handled above.
            _ => Some(GuestExit::Unexpected { code, info1, info2 }),
        }
    }
}

impl Platform for Emulated {
    fn run_guest(&mut self) -> GuestExit {
        loop {
            let vmcb = phys(&self.pages.vmcb);
            let fx = self.pages.fx.as_mut_ptr();
            // SAFETY: the VMCB and the host VMCB after it, and the host save area
            // (VM_HSAVE_PA), are page-aligned SVSM pages prepared in `new`; the
            // guest's nested page tables map only guest RAM, so the guest cannot
            // reach SVSM memory. The stub saves and restores every callee-saved
            // register and the SSE state, and restores the host's TR/FS/GS with
            // VMLOAD before it touches any other memory.
            unsafe { nitride_vmrun(vmcb, &mut self.gprs, fx, u64::from(self.xsave)) };
            self.exits += 1;
            if self.xsave {
                self.check_xcr0();
            }
            let v = &mut self.pages.vmcb;
            v[ctl::TLB_CONTROL] = 0;
            let code = get64(v, ctl::EXITCODE);
            let info1 = get64(v, ctl::EXITINFO1);
            let info2 = get64(v, ctl::EXITINFO2);
            if let Some(exit) = self.handle_exit(code, info1, info2) {
                return exit;
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

    fn zero_guest(&mut self, range: GuestRange) -> Result<(), GuestMemoryError> {
        guest_mem::zero(range)
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
