//! The SVSM's own CPU tables and failure paths: GDT with a TSS, an IDT whose 32
//! exception vectors all run on IST stacks (the precompiled `core` uses the red
//! zone, and the SVSM runs with interrupts masked, so only exceptions arrive; the
//! stacks and their guard pages are defined in `snp/boot.rs`), the exception report,
//! and ending the VM with a verdict: the verdict line on the SVSM's log, then a GHCB
//! termination request.

use super::serial;
use super::take_once::{phys, TakeOnce};
use core::fmt::Write;
use nitride_protocol::emulated::exit;
use x86_64::instructions::segmentation::{Segment, CS, DS, ES, SS};
use x86_64::instructions::tables::{lidt, load_tss};
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::tss::TaskStateSegment;
use x86_64::structures::DescriptorTablePointer;
use x86_64::VirtAddr;

static TSS: TakeOnce<TaskStateSegment> = TakeOnce::new(TaskStateSegment::new());
static GDT: TakeOnce<GlobalDescriptorTable> = TakeOnce::new(GlobalDescriptorTable::new());
static IDT: TakeOnce<[IdtEntry; 32]> = TakeOnce::new([IdtEntry::MISSING; 32]);

/// An IDT gate (64-bit interrupt gate).
#[derive(Clone, Copy)]
#[repr(C)]
struct IdtEntry {
    offset_low: u16,
    selector: u16,
    ist: u8,
    type_attr: u8,
    offset_mid: u16,
    offset_high: u32,
    reserved: u32,
}

impl IdtEntry {
    const MISSING: Self = Self {
        offset_low: 0,
        selector: 0,
        ist: 0,
        type_attr: 0,
        offset_mid: 0,
        offset_high: 0,
        reserved: 0,
    };

    fn new(handler: u64, selector: u16, ist: u8) -> Self {
        Self {
            offset_low: handler as u16,
            selector,
            ist,
            type_attr: 0x8E, // present, DPL 0, 64-bit interrupt gate
            offset_mid: (handler >> 16) as u16,
            offset_high: (handler >> 32) as u32,
            reserved: 0,
        }
    }
}

/// IST index (1-based, as the IDT holds it) for each vector: #NMI, #DF and #MC get
/// their own stacks, every other exception shares the first. On SNP the fourth stack
/// is #VC's (a machine check never reaches an SEV-SNP guest: the host handles it),
/// so a #VC never lands on a stack another exception is using.
fn ist_for(vector: usize) -> u8 {
    match vector {
        2 => 2,
        8 => 3,
        29 => 4,
        _ => 1,
    }
}

/// The handler of `vector`: the #VC handler, else the fatal report's stub.
fn handler_for(vector: usize, stub: u64) -> u64 {
    if vector == 29 {
        return super::snp::vc::entry();
    }
    stub
}

extern "C" {
    static nitride_isr_table: [u64; 32];
    static nitride_ist_tops: [u64; 4];
}

/// Load the GDT, TSS and IDT. Call once, first thing.
pub fn init() {
    let (Some(tss), Some(gdt), Some(idt)) = (TSS.take(), GDT.take(), IDT.take()) else {
        fatal(format_args!("cpu::init called twice"));
    };
    // SAFETY: `nitride_ist_tops` is an immutable table of four stack tops defined in
    // boot.rs's assembly (each stack above a guard page).
    let tops = unsafe { &nitride_ist_tops };
    for (i, &top) in tops.iter().enumerate() {
        tss.interrupt_stack_table[i] = VirtAddr::new(top);
    }
    let code = gdt.append(Descriptor::kernel_code_segment());
    let data = gdt.append(Descriptor::kernel_data_segment());
    let tss_sel = gdt.append(Descriptor::tss_segment(tss));
    gdt.load();
    // SAFETY: the selectors index the GDT just loaded, which is 'static; the code
    // and data descriptors are flat 64-bit kernel segments like the boot GDT's.
    unsafe {
        CS::set_reg(code);
        DS::set_reg(data);
        ES::set_reg(data);
        SS::set_reg(data);
        load_tss(tss_sel);
    }
    // SAFETY: `nitride_isr_table` is an immutable table of 32 handler addresses
    // defined in the assembly below.
    let table = unsafe { &nitride_isr_table };
    for (vector, (entry, &handler)) in idt.iter_mut().zip(table.iter()).enumerate() {
        *entry = IdtEntry::new(handler_for(vector, handler), code.0, ist_for(vector));
    }
    let ptr = DescriptorTablePointer {
        limit: (core::mem::size_of::<[IdtEntry; 32]>() - 1) as u16,
        base: VirtAddr::new(phys(idt)),
    };
    // SAFETY: the IDT is 'static and every entry points at a handler stub below
    // that runs on an IST stack set in the TSS loaded above.
    unsafe { lidt(&ptr) };
}

/// What the exception stubs push, lowest address first.
#[repr(C)]
pub struct ExceptionFrame {
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

const NAMES: [&str; 32] = [
    "divide error (#DE)",
    "debug (#DB)",
    "NMI",
    "breakpoint (#BP)",
    "overflow (#OF)",
    "bound range (#BR)",
    "invalid opcode (#UD)",
    "device not available (#NM)",
    "double fault (#DF)",
    "coprocessor segment overrun",
    "invalid TSS (#TS)",
    "segment not present (#NP)",
    "stack fault (#SS)",
    "general protection (#GP)",
    "page fault (#PF)",
    "reserved 15",
    "x87 FP (#MF)",
    "alignment check (#AC)",
    "machine check (#MC)",
    "SIMD FP (#XM)",
    "virtualization (#VE)",
    "control protection (#CP)",
    "reserved 22",
    "reserved 23",
    "reserved 24",
    "reserved 25",
    "reserved 26",
    "reserved 27",
    "hypervisor injection (#HV)",
    "VMM communication (#VC)",
    "security (#SX)",
    "reserved 31",
];

#[no_mangle]
extern "C" fn nitride_exception(frame: &ExceptionFrame) -> ! {
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    let name = NAMES
        .get(frame.vector as usize)
        .copied()
        .unwrap_or("unknown");
    let mut out = serial::Emergency::new();
    let _ = write!(
        out,
        "\n[svsm] FATAL: CPU exception in the SVSM: vector {} {}\n[svsm]   error code {:#x}  RIP {:#018x}  CS {:#x}  RFLAGS {:#x}\n[svsm]   RSP {:#018x}  SS {:#x}  CR2 {:#018x}\n",
        frame.vector, name, frame.error, frame.rip, frame.cs, frame.rflags, frame.rsp, frame.ss, cr2
    );
    exit_with(exit::SVSM_FATAL)
}

core::arch::global_asm!(
    r#"
    .macro ISR_NOERR n
    .p2align 4
nitride_isr_\n:
    pushq $0
    pushq $\n
    jmp nitride_isr_common
    .endm

    .macro ISR_ERR n
    .p2align 4
nitride_isr_\n:
    pushq $\n
    jmp nitride_isr_common
    .endm

    .section .text.isr, "ax", @progbits
    ISR_NOERR 0
    ISR_NOERR 1
    ISR_NOERR 2
    ISR_NOERR 3
    ISR_NOERR 4
    ISR_NOERR 5
    ISR_NOERR 6
    ISR_NOERR 7
    ISR_ERR 8
    ISR_NOERR 9
    ISR_ERR 10
    ISR_ERR 11
    ISR_ERR 12
    ISR_ERR 13
    ISR_ERR 14
    ISR_NOERR 15
    ISR_NOERR 16
    ISR_ERR 17
    ISR_NOERR 18
    ISR_NOERR 19
    ISR_NOERR 20
    ISR_ERR 21
    ISR_NOERR 22
    ISR_NOERR 23
    ISR_NOERR 24
    ISR_NOERR 25
    ISR_NOERR 26
    ISR_NOERR 27
    ISR_NOERR 28
    ISR_ERR 29
    ISR_ERR 30
    ISR_NOERR 31

nitride_isr_common:
    movq %rsp, %rdi
    andq $-16, %rsp
    call nitride_exception
    ud2

    .section .rodata.isr, "a"
    .p2align 3
    .global nitride_isr_table
nitride_isr_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad nitride_isr_\n
    .endr
    "#,
    options(att_syntax)
);

/// End the run with `value`: the verdict line on the SVSM's log
/// (`[svsm] verdict: 0x21 guest-pass`), then a GHCB termination request with
/// Nitride's reason set and `value` as the code, which the hypervisor reports with
/// the requesting VMPL.
pub fn exit_with(value: u32) -> ! {
    let mut out = serial::Emergency::new();
    let _ = writeln!(
        out,
        "[svsm] {}{value:#x} {}",
        exit::VERDICT_PREFIX,
        exit::name(value)
    );
    super::snp::insn::terminate(u64::from(value))
}

/// The time-stamp counter (under QEMU's `-icount shift=0`, an instruction count).
pub fn tsc() -> u64 {
    // SAFETY: RDTSC reads a counter; it has no memory effects. CR4.TSD is clear, so
    // it is allowed at CPL0 (where the SVSM runs) anyway.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Report a fatal SVSM error and stop the VM.
pub fn fatal(args: core::fmt::Arguments<'_>) -> ! {
    let mut out = serial::Emergency::new();
    let _ = writeln!(out, "[svsm] FATAL: {args}");
    exit_with(exit::SVSM_FATAL)
}

/// Deliberately fault (images built with the `fault-injection` feature only).
#[cfg(feature = "fault-injection")]
pub fn inject(fault: nitride_kernel::cmdline::Fault) {
    use nitride_kernel::cmdline::Fault;
    log::warn!("fault injection: {fault:?}");
    match fault {
        // SAFETY: deliberately executes an invalid opcode to test the #UD report;
        // the handler never returns.
        Fault::InvalidOpcode => unsafe { core::arch::asm!("ud2") },
        Fault::PageFault => {
            // SAFETY: deliberately reads an address above the 4 GiB the SVSM maps
            // to test the #PF report; the handler never returns.
            unsafe {
                core::arch::asm!("mov rax, [{a}]", a = in(reg) 0x40_0000_0000u64, out("rax") _)
            }
        }
        Fault::GeneralProtection => {
            // SAFETY: deliberately reads a non-canonical address to test the #GP
            // report; the handler never returns.
            unsafe {
                core::arch::asm!("mov rax, [{a}]", a = in(reg) 0x8000_0000_0000_0000u64, out("rax") _)
            }
        }
        Fault::Panic => panic!("deliberate panic (fault injection)"),
        Fault::WriteText => {
            let target = fatal as *const () as u64;
            log::warn!("writing to SVSM code at {target:#x}");
            // SAFETY: deliberately writes the SVSM's own code, which W^X maps
            // read-only: the write must fault (#PF) and the handler never returns.
            unsafe { core::ptr::write_volatile(target as *mut u8, 0xCC) }
        }
        Fault::ExecData => {
            static RET: TakeOnce<[u8; 16]> = TakeOnce::new([0xC3; 16]);
            let Some(ret) = RET.take() else { return };
            let target = phys(ret);
            log::warn!("calling SVSM data at {target:#x}");
            // SAFETY: deliberately calls a `ret` in the SVSM's writable data, which
            // W^X maps no-execute: the fetch must fault (#PF); the handler never
            // returns (and a plain `ret` would return here if it did not).
            let f: extern "C" fn() = unsafe { core::mem::transmute(target as usize) };
            f();
        }
        Fault::ExecGuest => {
            let target = 0x20_0000u64;
            log::warn!("calling guest RAM at {target:#x}");
            // SAFETY: deliberately jumps into guest RAM, which the SVSM maps
            // no-execute: the fetch must fault (#PF) and the handler never returns.
            let f: extern "C" fn() = unsafe { core::mem::transmute(target as usize) };
            f();
        }
        Fault::StackGuard => {
            let target = super::paging::boot_stack_guard() + 0xFF8;
            log::warn!("writing the guard page under the boot stack at {target:#x}");
            // SAFETY: deliberately writes the unmapped guard page below the boot
            // stack, as an overflowing stack would: the write must fault (#PF) and
            // the handler never returns.
            unsafe { core::ptr::write_volatile(target as *mut u64, 0) }
        }
    }
}
