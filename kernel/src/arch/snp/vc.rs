//! The SVSM's #VC handler (vector 29). Under SEV-ES the instructions the hypervisor
//! intercepts raise #VC in the guest instead of exiting; the SVSM executes only two
//! kinds of them on purpose:
//!
//! - CPUID (error code 0x72): answered from the CPUID page the PSP checked at launch
//!   ([`nitride_kernel::platform::snp::cpuid`]), never from the hypervisor;
//! - an access to a guest page that is not validated (0x404) while the SVSM copies
//!   guest memory ([`super::guest_mem`]): the copy stops and reports an error to the
//!   caller (the guest named a page it had not validated, or made shared).
//!
//! Everything else (port or MSR access, any other exit code, a 0x404 anywhere else)
//! is an SVSM bug or a hostile hypervisor: fatal, with the frame in the log. The
//! handler runs on its own IST stack and never uses the GHCB itself.

use super::guest_mem;
use nitride_kernel::platform::snp::cpuid::CpuidTable;
use spin::Once;

/// The CPUID page, copied and checked at boot.
static CPUID: Once<CpuidTable> = Once::new();

/// Answer CPUID from `table` from now on.
pub fn set_cpuid(table: CpuidTable) {
    CPUID.call_once(|| table);
}

/// What the #VC stub saves, lowest address first.
#[repr(C)]
pub struct VcFrame {
    r15: u64,
    r14: u64,
    r13: u64,
    r12: u64,
    r11: u64,
    r10: u64,
    r9: u64,
    r8: u64,
    rbp: u64,
    rdi: u64,
    rsi: u64,
    rdx: u64,
    rcx: u64,
    rbx: u64,
    rax: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

/// #VC error codes the handler serves.
mod code {
    pub const CPUID: u64 = 0x72;
    pub const PAGE_NOT_VALIDATED: u64 = 0x404;
}

#[no_mangle]
extern "C" fn nitride_vc(f: &mut VcFrame) {
    match f.error {
        code::CPUID => {
            let Some(table) = CPUID.get() else {
                super::super::cpu::fatal(format_args!(
                    "#VC: CPUID at RIP {:#x} before the CPUID page was read",
                    f.rip
                ));
            };
            let cr4 = x86_64::registers::control::Cr4::read_raw();
            let r = table.cpuid(f.rax as u32, f.rcx as u32, cr4);
            f.rax = u64::from(r[0]);
            f.rbx = u64::from(r[1]);
            f.rcx = u64::from(r[2]);
            f.rdx = u64::from(r[3]);
            f.rip += 2;
        }
        code::PAGE_NOT_VALIDATED => match guest_mem::fixup(f.rip) {
            Some(resume) => f.rip = resume,
            None => super::super::cpu::fatal(format_args!(
                "#VC: access to a page that is not validated at RIP {:#x} (not a guest-memory copy)",
                f.rip
            )),
        },
        e => super::super::cpu::fatal(format_args!(
            "#VC with error code {e:#x} at RIP {:#x} (RFLAGS {:#x}, RSP {:#x}): the SVSM does not execute that",
            f.rip, f.rflags, f.rsp
        )),
    }
}

core::arch::global_asm!(
    r#"
    .section .text.isr, "ax", @progbits
    .p2align 4
    .global nitride_vc_entry
nitride_vc_entry:
    pushq %rax
    pushq %rbx
    pushq %rcx
    pushq %rdx
    pushq %rsi
    pushq %rdi
    pushq %rbp
    pushq %r8
    pushq %r9
    pushq %r10
    pushq %r11
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, %rdi
    movq %rsp, %rbx
    andq $-16, %rsp
    call nitride_vc
    movq %rbx, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %r11
    popq %r10
    popq %r9
    popq %r8
    popq %rbp
    popq %rdi
    popq %rsi
    popq %rdx
    popq %rcx
    popq %rbx
    popq %rax
    addq $8, %rsp
    iretq
    "#,
    options(att_syntax)
);

extern "C" {
    fn nitride_vc_entry();
}

/// The stub's address, for the IDT.
pub fn entry() -> u64 {
    nitride_vc_entry as *const () as u64
}
