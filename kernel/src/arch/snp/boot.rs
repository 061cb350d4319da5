//! Entry from the IGVM launch (`docs/real-snp.md`).
//!
//! The launch VMSA starts the SVSM at `svsm_snp_start32` in 32-bit protected mode,
//! paging off (CR0 0x31, as KVM requires of a launched VMSA), at VMPL0. Only the
//! pages the IGVM file carries are validated then: the SVSM's text, read-only data
//! and `.data` (which holds the bootstrap page tables and a small launch stack), the
//! SNP secrets and CPUID pages, the parameter pages and the launch configuration.
//!
//! 1. `svsm_snp_start32` finds the C-bit position in the CPUID page (the PSP checked
//!    it against the chip; a CPUID instruction would raise #VC, and there is no
//!    handler yet), identity-maps the first 4 GiB with 2 MiB pages and the C-bit set,
//!    enables long mode, NX and write protection, reloads CR3 with the C-bit and
//!    calls [`svsm_snp_early`] on the launch stack. Without a usable C-bit it asks
//!    the hypervisor to terminate the VM.
//! 2. [`svsm_snp_early`] validates every page of `.bss` with PVALIDATE (they were
//!    never launched; a page that was already validated means someone else validated
//!    it: fatal), zeroes `.bss` and calls `svsm_snp_main64` on the boot stack.
//!
//! The stacks live in `.bss.stacks`: the boot stack and the four IST stacks, each
//! above a guard page that the SVSM's page tables leave unmapped.

use super::insn::{self, PageSize};

/// The CPUID page's guest-physical address (`nitride_protocol::snp::launch::gpa`).
const CPUID_PAGE: u64 = nitride_protocol::snp::launch::gpa::CPUID;

core::arch::global_asm!(
    r#"
    .section .text.boot, "ax", @progbits
    .code32
    .global svsm_snp_start32
svsm_snp_start32:
    cli
    cld
    /* The C-bit: CPUID page entry 0x8000001F, EBX[5:0]. */
    movl ${cpuid_page}, %esi
    movl (%esi), %ecx
    cmpl $64, %ecx
    ja 9f
    leal 16(%esi), %edi
1:  testl %ecx, %ecx
    jz 9f
    cmpl $0x8000001F, (%edi)
    je 2f
    addl $48, %edi
    decl %ecx
    jmp 1b
2:  movl 28(%edi), %ecx
    andl $0x3F, %ecx
    cmpl $32, %ecx
    jb 9f
    movl %ecx, snp_c_bit
    subl $32, %ecx
    movl $1, %edx
    shll %cl, %edx              /* EDX: the C-bit in the high half of an entry */

    movl $snp_boot_pd, %edi
    xorl %ecx, %ecx
3:  movl %ecx, %eax
    shll $21, %eax
    orl $0xE3, %eax             /* present, writable, accessed, dirty, 2 MiB */
    movl %eax, (%edi,%ecx,8)
    movl %edx, 4(%edi,%ecx,8)
    incl %ecx
    cmpl $2048, %ecx
    jb 3b

    movl $snp_boot_pdpt, %edi
    movl $snp_boot_pd, %eax
    orl $0x23, %eax
    xorl %ecx, %ecx
4:  movl %eax, (%edi,%ecx,8)
    movl %edx, 4(%edi,%ecx,8)
    addl $0x1000, %eax
    incl %ecx
    cmpl $4, %ecx
    jb 4b

    movl $snp_boot_pml4, %edi
    movl $snp_boot_pdpt, %eax
    orl $0x23, %eax
    movl %eax, (%edi)
    movl %edx, 4(%edi)
    movl %edx, snp_c_bit_high
    movl %edi, %cr3

    movl %cr4, %eax
    orl $0x620, %eax            /* PAE | OSFXSR | OSXMMEXCPT */
    movl %eax, %cr4

    movl $0xC0000080, %ecx      /* EFER */
    rdmsr
    orl $0x900, %eax            /* LME | NXE */
    wrmsr

    movl %cr0, %eax
    andl $0xFFFFFFF3, %eax      /* clear EM, TS */
    orl $0x80010003, %eax       /* PG | WP | MP | PE */
    movl %eax, %cr0

    lgdt snp_boot_gdt_ptr
    ljmp $0x08, $5f

    /* No usable C-bit: GHCB MSR termination request (reason set 0, code 2:
       SEV-SNP feature not supported), then halt. */
9:  movl $0xC0010130, %ecx
    movl $0x20100, %eax
    xorl %edx, %edx
    wrmsr
    rep vmmcall
8:  hlt
    jmp 8b

    .code64
5:  movw $0x10, %ax
    movw %ax, %ds
    movw %ax, %es
    movw %ax, %ss
    movw %ax, %fs
    movw %ax, %gs
    /* CR3 again, now with the C-bit: the PML4 is private. */
    movl snp_c_bit_high(%rip), %eax
    shlq $32, %rax
    leaq snp_boot_pml4(%rip), %rcx
    orq %rcx, %rax
    movq %rax, %cr3
    leaq snp_launch_stack_top(%rip), %rsp
    call svsm_snp_early
6:  hlt
    jmp 6b

    .global svsm_snp_call_on_stack
    /* rdi = new stack top, rsi = function to call (never returns). */
svsm_snp_call_on_stack:
    movq %rdi, %rsp
    xorl %ebp, %ebp
    call *%rsi
7:  hlt
    jmp 7b

    /* Read-only and measured: the descriptors come with their accessed bit set. */
    .section .rodata.boot, "a"
    .p2align 3
snp_boot_gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF    /* 0x08: 64-bit code */
    .quad 0x00CF93000000FFFF    /* 0x10: data */
snp_boot_gdt_ptr:
    .word snp_boot_gdt_ptr - snp_boot_gdt - 1
    .long snp_boot_gdt

    /* Launched (and so validated) with the image: the bootstrap tables and the
       launch stack are file-backed zeros in .data. */
    .section .data.snpboot, "aw", @progbits
    .p2align 12
snp_boot_pml4:
    .skip 4096
snp_boot_pdpt:
    .skip 4096
snp_boot_pd:
    .skip 4 * 4096
snp_launch_stack:
    .skip 16 * 1024
snp_launch_stack_top:
    .global snp_c_bit
snp_c_bit:
    .long 0
snp_c_bit_high:
    .long 0

    /* Each stack sits right above its guard page (never mapped). */
    .section .bss.stacks, "aw", @nobits
    .p2align 12
boot_stack_guard:
    .skip 4096
boot_stack:
    .skip 128 * 1024
boot_stack_top:
    .irp n, 1, 2, 3, 4
ist\n\()_guard:
    .skip 4096
    .skip 32 * 1024
ist\n\()_top:
    .endr

    .section .rodata.stacks, "a"
    .p2align 3
    .global nitride_stack_guards
nitride_stack_guards:
    .quad boot_stack_guard, ist1_guard, ist2_guard, ist3_guard, ist4_guard
    .global nitride_ist_tops
nitride_ist_tops:
    .quad ist1_top, ist2_top, ist3_top, ist4_top
    .global nitride_boot_stack_top
nitride_boot_stack_top:
    .quad boot_stack_top
    "#,
    cpuid_page = const CPUID_PAGE,
    options(att_syntax)
);

extern "C" {
    static __bss_start: u8;
    static __bss_end: u8;
    static snp_c_bit: u32;
    static nitride_boot_stack_top: u64;
    fn svsm_snp_call_on_stack(top: u64, f: extern "C" fn() -> !) -> !;
}

/// GHCB termination codes of the early boot (Nitride reason set), before there is a
/// log.
pub mod early_failure {
    /// PVALIDATE of a `.bss` page failed.
    pub const PVALIDATE: u64 = 0xE0;
    /// A `.bss` page was already validated before the SVSM validated it.
    pub const ALREADY_VALIDATED: u64 = 0xE1;
    /// SEV_STATUS does not report SEV, SEV-ES and SEV-SNP.
    pub const NO_SNP: u64 = 0xE2;
    /// The CPUID page is malformed or disagrees with the boot code's C-bit.
    pub const CPUID_PAGE: u64 = 0xE3;
    /// The launch configuration page is malformed or names another SVSM region.
    pub const LAUNCH_CONFIG: u64 = 0xE4;
    /// The host's memory map is unusable.
    pub const MEMORY_MAP: u64 = 0xE5;
    /// A page of the SVSM region after the image could not be validated.
    pub const REGION_TAIL: u64 = 0xE8;
    /// The SVSM's page tables could not be built.
    pub const PAGE_TABLES: u64 = 0xE6;
    /// The GHCB could not be set up.
    pub const GHCB: u64 = 0xE7;
}

/// The C-bit position the boot code found in the CPUID page.
pub fn c_bit() -> u32 {
    // SAFETY: written once by `svsm_snp_start32` before any Rust code runs, then only
    // read.
    unsafe { core::ptr::addr_of!(snp_c_bit).read_volatile() }
}

/// Validate and zero `.bss`, then run `svsm_snp_main64` on the boot stack.
#[no_mangle]
extern "C" fn svsm_snp_early() -> ! {
    extern "C" {
        fn svsm_snp_main64() -> !;
    }
    extern "C" fn main() -> ! {
        // SAFETY: `svsm_snp_main64` is the SVSM's main function (main.rs), which takes
        // no arguments and never returns.
        unsafe { svsm_snp_main64() }
    }
    let start = core::ptr::addr_of!(__bss_start) as u64;
    let end = core::ptr::addr_of!(__bss_end) as u64;
    let mut page = start & !0xFFF;
    while page < end {
        match insn::pvalidate(page, PageSize::Small, true) {
            Ok(true) => {}
            Ok(false) => insn::terminate(early_failure::ALREADY_VALIDATED),
            Err(_) => insn::terminate(early_failure::PVALIDATE),
        }
        page += 4096;
    }
    // SAFETY: [start, end) is the SVSM's .bss, just validated, mapped by the
    // bootstrap tables, and not yet referred to by any Rust object (nothing has run
    // that uses it). Zeroing it is what a loader does.
    unsafe { core::ptr::write_bytes(start as *mut u8, 0, (end - start) as usize) };
    // SAFETY: `nitride_boot_stack_top` is the top of the boot stack in .bss (just
    // validated and zeroed); `main` never returns, so nothing uses the launch stack
    // afterwards.
    unsafe { svsm_snp_call_on_stack(nitride_boot_stack_top, main) }
}

/// Validate the SVSM region's pages after the image and `.bss` (`start..end`, page
/// aligned): the SVSM never uses them, but validated at VMPL0 and never granted, a
/// guest's access to them meets the RMP (the VMPL has no permission) instead of an
/// unvalidated page. Only while the bootstrap tables map them (before the SVSM's own
/// page tables are loaded). `Err(page)`: the page PVALIDATE refused or found already
/// validated.
pub fn validate_region_tail(start: u64, end: u64) -> Result<usize, u64> {
    let mut page = start;
    let mut count = 0;
    while page < end {
        match insn::pvalidate(page, PageSize::Small, true) {
            Ok(true) => count += 1,
            Ok(false) | Err(_) => return Err(page),
        }
        page += 4096;
    }
    Ok(count)
}

/// A copy of one of the launch's low pages (`nitride_protocol::snp::launch::gpa`:
/// secrets, CPUID, parameter pages, launch configuration), read through the
/// bootstrap mapping. Only before the SVSM's own page tables are loaded: they do
/// not map the low pages.
pub fn launch_page(gpa: u64) -> [u8; 4096] {
    let mut out = [0u8; 4096];
    if !gpa.is_multiple_of(4096) || gpa >= nitride_protocol::snp::launch::gpa::LOW_RESERVED_END {
        return out;
    }
    let src = gpa as *const u8;
    for (i, b) in out.iter_mut().enumerate() {
        // SAFETY: a page below 1 MiB, which the bootstrap tables map (identity, 4 GiB,
        // C-bit set) and which the launch validated (the IGVM file places these
        // pages); volatile, since the host provided some of them.
        *b = unsafe { src.add(i).read_volatile() };
    }
    out
}
