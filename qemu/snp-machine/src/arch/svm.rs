//! AMD-V as the machine uses it: one VMCB per VMPL, nested page tables per VMPL,
//! and the world switch.
//!
//! The world switch (`snp_vmrun`) saves the machine's callee-saved registers and
//! x87/SSE state, restores the VMPL's extended state with XRSTOR (under the VMPL's
//! XCR0, which the caller loaded), loads the guest GPRs, and runs `VMLOAD; VMRUN;
//! VMSAVE`. After the exit it first `VMLOAD`s the machine's own TR, FS, GS and
//! syscall MSRs (nothing before that can fault), then stores the guest GPRs and
//! clears them, saves the VMPL's extended state with XSAVE and restores the
//! machine's.
//!
//! One exit never leaves the stub: RDMSR and WRMSR of the GHCB MSR, which SEV-ES
//! hardware serves without any exit (the register is part of the vCPU's state).
//! After the `VMLOAD` of the machine's state the stub reads or writes the VMPL's
//! GHCB MSR value (the caller's `ghcb_msr`), steps RIP over the two-byte
//! instruction and runs the VMPL again; the guest GPRs stay in their registers
//! (the stub touches only RAX, which the VMCB holds, and RCX/RDX, which it puts
//! back), and no event can be pending (EXITINTINFO is checked). Everything else,
//! SEV_STATUS included, takes the full exit to the run loop.

use nitride_snp_machine::VMPLS;

/// One 4 KiB page.
pub type Page = [u8; 4096];
/// One page table.
pub type Table = [u64; 512];

/// Nested page tables of one view: a PDPT, a PD and the 32 page tables of the
/// 64 MiB of guest RAM.
#[repr(C, align(4096))]
pub struct Tables {
    /// PDPT.
    pub pdpt: Table,
    /// PD.
    pub pd: Table,
    /// Page tables.
    pub pt: [Table; 32],
}

/// Extended state of one VMPL and the machine's x87/SSE state around a run.
#[repr(C, align(64))]
pub struct Fpu {
    /// The machine's FXSAVE area.
    pub host: [u8; 512],
    pad: [u8; 512],
    /// The VMPL's XSAVE area.
    pub guest: [u8; 3072],
}

/// The guest GPRs kept outside the VMCB, in VMSA order from RCX (index 3 unused:
/// RSP is in the VMCB): RCX, RDX, RBX, -, RBP, RSI, RDI, R8..R15.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Gprs(pub [u64; 15]);

/// Everything the machine gives the hardware, page aligned.
#[repr(C, align(4096))]
pub struct SvmPages {
    /// VMCB of each VMPL.
    pub vmcb: [Page; VMPLS],
    /// The machine's VMCB (VMSAVE/VMLOAD of its own state).
    pub host_vmcb: Page,
    /// VM_HSAVE_PA.
    pub hsave: Page,
    /// I/O permission map (all ports intercepted).
    pub iopm: [Page; 3],
    /// MSR permission map.
    pub msrpm: [Page; 2],
    /// PML4 of each VMPL.
    pub pml4: [Table; VMPLS],
    /// The shared view (C-bit clear) of each VMPL.
    pub shared: [Tables; VMPLS],
    /// The private view of each VMPL (C-bit set).
    pub private: [Tables; VMPLS],
    /// Extended state of each VMPL.
    pub fpu: [Fpu; VMPLS],
    /// The launch VMSA page (guest-physical 0xFFFF_FFFF_F000, outside guest RAM).
    pub launch_vmsa: Page,
}

const EMPTY_TABLES: Tables = Tables {
    pdpt: [0; 512],
    pd: [0; 512],
    pt: [[0; 512]; 32],
};
const EMPTY_FPU: Fpu = Fpu {
    host: [0; 512],
    pad: [0; 512],
    guest: [0; 3072],
};

static mut PAGES: SvmPages = SvmPages {
    vmcb: [[0; 4096]; VMPLS],
    host_vmcb: [0; 4096],
    hsave: [0; 4096],
    iopm: [[0; 4096]; 3],
    msrpm: [[0; 4096]; 2],
    pml4: [[0; 512]; VMPLS],
    shared: [EMPTY_TABLES; VMPLS],
    private: [EMPTY_TABLES; VMPLS],
    fpu: [EMPTY_FPU; VMPLS],
    launch_vmsa: [0; 4096],
};

/// The machine's SVM pages, handed out once.
pub fn pages() -> &'static mut SvmPages {
    static TAKEN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    assert!(
        !TAKEN.swap(true, core::sync::atomic::Ordering::SeqCst),
        "SVM pages taken twice"
    );
    // SAFETY: handed out once (checked above), so this is the only reference.
    unsafe { &mut *core::ptr::addr_of_mut!(PAGES) }
}

/// The physical address of a machine object (identity mapped).
pub fn pa<T>(x: &T) -> u64 {
    x as *const T as u64
}

extern "C" {
    fn snp_vmrun(
        vmcb_pa: u64,
        gprs: *mut Gprs,
        host_vmcb_pa: u64,
        fpu: *mut Fpu,
        ghcb_msr: *mut u64,
    );
}

core::arch::global_asm!(
    r#"
    .section .text.vmrun, "ax", @progbits
    .global snp_vmrun
    /* rdi = VMCB PA, rsi = &Gprs, rdx = host VMCB PA, rcx = &Fpu, r8 = &GHCB MSR.
       Stack while the VMPL runs: 0 &Fpu, 8 &Gprs, 16 host VMCB, 24 &GHCB MSR,
       32 VMCB. */
snp_vmrun:
    pushq %rbx
    pushq %rbp
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    pushq %rdi
    pushq %r8
    pushq %rdx
    pushq %rsi
    pushq %rcx
    fxsave64 (%rcx)
    movl $-1, %eax
    movl $-1, %edx
    xrstor64 1024(%rcx)
    movq %rdi, %rax
    movq 0x08(%rsi), %rdx
    movq 0x10(%rsi), %rbx
    movq 0x20(%rsi), %rbp
    movq 0x30(%rsi), %rdi
    movq 0x38(%rsi), %r8
    movq 0x40(%rsi), %r9
    movq 0x48(%rsi), %r10
    movq 0x50(%rsi), %r11
    movq 0x58(%rsi), %r12
    movq 0x60(%rsi), %r13
    movq 0x68(%rsi), %r14
    movq 0x70(%rsi), %r15
    movq 0x00(%rsi), %rcx
    movq 0x28(%rsi), %rsi
1:
    vmload %rax
    vmrun %rax
    vmsave %rax
    movq 16(%rsp), %rax
    vmload %rax
    /* The GHCB MSR (0xC001_0130): an MSR exit (0x7C) with ECX naming it and no
       event pending. EXITINFO1 is 0 for RDMSR, 1 for WRMSR. */
    cmpl $0xC0010130, %ecx
    jne 3f
    movq 32(%rsp), %rax
    cmpq $0x7C, 0x70(%rax)
    jne 3f
    testl $0x80000000, 0x88(%rax)
    jnz 3f
    pushq %rcx
    cmpq $1, 0x78(%rax)
    je 2f
    /* RDMSR: EDX:EAX = the GHCB MSR (RAX zero-extended, in the VMCB). */
    movq 32(%rsp), %rcx
    movq (%rcx), %rdx
    movl %edx, %ecx
    movq %rcx, 0x5F8(%rax)
    shrq $32, %rdx
    jmp 4f
2:
    /* WRMSR: the GHCB MSR = EDX:EAX. */
    pushq %rdx
    shlq $32, %rdx
    movl 0x5F8(%rax), %ecx
    orq %rdx, %rcx
    movq 40(%rsp), %rdx
    movq %rcx, (%rdx)
    popq %rdx
4:
    popq %rcx
    addq $2, 0x578(%rax)
    movq $0, 0xA8(%rax)
    movb $0, 0x5C(%rax)
    jmp 1b
3:
    movq 8(%rsp), %rax
    movq %rcx, 0x00(%rax)
    movq %rdx, 0x08(%rax)
    movq %rbx, 0x10(%rax)
    movq %rbp, 0x20(%rax)
    movq %rsi, 0x28(%rax)
    movq %rdi, 0x30(%rax)
    movq %r8, 0x38(%rax)
    movq %r9, 0x40(%rax)
    movq %r10, 0x48(%rax)
    movq %r11, 0x50(%rax)
    movq %r12, 0x58(%rax)
    movq %r13, 0x60(%rax)
    movq %r14, 0x68(%rax)
    movq %r15, 0x70(%rax)
    xorl %ebx, %ebx
    xorl %ebp, %ebp
    xorl %esi, %esi
    xorl %edi, %edi
    xorl %r8d, %r8d
    xorl %r9d, %r9d
    xorl %r10d, %r10d
    xorl %r11d, %r11d
    xorl %r12d, %r12d
    xorl %r13d, %r13d
    xorl %r14d, %r14d
    xorl %r15d, %r15d
    popq %rcx
    movl $-1, %eax
    movl $-1, %edx
    xsave64 1024(%rcx)
    fxrstor64 (%rcx)
    addq $32, %rsp
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

/// Run the VMPL whose VMCB is `pages.vmcb[vmpl]` until its next #VMEXIT that the
/// stub does not serve itself (RDMSR and WRMSR of the GHCB MSR, whose value is
/// `ghcb_msr`).
pub fn run(pages: &mut SvmPages, vmpl: usize, gprs: &mut Gprs, ghcb_msr: &mut u64) {
    let vmcb = pa(&pages.vmcb[vmpl]);
    let host = pa(&pages.host_vmcb);
    let fpu: *mut Fpu = &mut pages.fpu[vmpl];
    // SAFETY: the VMCB, host VMCB and VM_HSAVE_PA page are page-aligned machine pages
    // prepared by `enable` and the caller; the nested page tables map guest RAM only,
    // so the guest cannot reach machine memory. The stub saves and restores every
    // callee-saved register and the machine's x87/SSE state, restores the machine's
    // TR/FS/GS/syscall MSRs with VMLOAD right after the exit, and its XSAVE/XRSTOR
    // area is the VMPL's 64-byte aligned `Fpu::guest`. Its GHCB MSR fast path writes
    // only `ghcb_msr` (a valid, exclusively borrowed u64) and the VMPL's VMCB.
    unsafe { snp_vmrun(vmcb, gprs, host, fpu, ghcb_msr) };
}

/// Why SVM could not be turned on.
#[derive(Clone, Copy, Debug)]
pub enum SvmError {
    /// No SVM or no nested paging in CPUID.
    NoSvm,
    /// VM_CR.SVMDIS.
    Disabled,
}

/// Turn SVM on: EFER.SVME, VM_HSAVE_PA, the machine's own VMCB, GIF clear.
pub fn enable(pages: &mut SvmPages) -> Result<(), SvmError> {
    use x86_64::registers::model_specific::Msr;
    let ext = super::cpuid(0x8000_0001, 0);
    let svm = super::cpuid(0x8000_000A, 0);
    if ext[2] & (1 << 2) == 0 || svm[3] & 1 == 0 {
        return Err(SvmError::NoSvm);
    }
    // SAFETY: VM_CR exists when CPUID reports SVM; reading it has no side effects.
    if unsafe { Msr::new(0xC001_0114).read() } & (1 << 4) != 0 {
        return Err(SvmError::Disabled);
    }
    let hsave = pa(&pages.hsave);
    let host = pa(&pages.host_vmcb);
    // SAFETY: CPUID reports SVM and VM_CR allows it; setting EFER.SVME and pointing
    // VM_HSAVE_PA at a page of machine memory that nothing else uses is how SVM is
    // enabled; VMSAVE writes only the host VMCB page; CLGI keeps interrupts off.
    unsafe {
        let mut efer = Msr::new(0xC000_0080);
        efer.write(efer.read() | (1 << 12));
        Msr::new(0xC001_0117).write(hsave);
        core::arch::asm!("vmsave rax", in("rax") host, options(nostack));
        core::arch::asm!("clgi", options(nomem, nostack));
    }
    Ok(())
}
