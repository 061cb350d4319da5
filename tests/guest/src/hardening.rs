//! Test-guest modes that attack the SVSM from the guest's side (issue 10): the
//! debug-register attack on the world switch, a console and verdicts the guest
//! fakes, refused-access floods, the calling instruction with prefixes and under
//! single-stepping, the instructions the SVSM intercepts, leftovers in guest RAM,
//! and buffers above 4 GiB.
//!
//! These modes install the guest's own GDT (with a TSS), and an IDT whose handlers
//! run on a stack of their own (IST2: the guest is built with a red zone) and record
//! what arrives; a probe that expects a fault tells the handler how long the faulting
//! instruction is, and the handler resumes after it. Every mode prints `[guest]`
//! lines and ends the run with GUEST_PASS or GUEST_FAIL through the SVSM.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use nitride_guest_driver::attest::{attest, AttestBuffers, GuestBuf, Target, REPORT_SIZE};
use nitride_guest_driver::call::{SvsmClient, VmmcallTransport};
use nitride_guest_driver::vhsm::{SvsmVhsmTransport, VhsmClient};
use nitride_protocol::emulated::{
    boot_info, dev_psp, exit, ports, BOOT_INFO_GPA, GUEST_PAGE_TABLES_GPA,
};
use nitride_protocol::svsm::{call_rax, core_call, protocol, query_protocol_arg, SvsmInfo};
use nitride_protocol::vhsm::{
    KeyTemplate, KeyType, KeyUsage, VmplSet, MAX_REQUEST_SIZE, MAX_RESPONSE_SIZE,
};
use nitride_test_guest::{exit_qemu, fixed_page, say};

/// The modes this module serves.
pub const MODES: &[&str] = &[
    "dr-attack",
    "fake-console",
    "fake-verdict",
    "port-sweep",
    "rep-vmmcall",
    "single-step",
    "intercepts",
    "mwait",
    "invlpga",
    "leftovers",
    "high-mem",
];

/// Run `mode` (one of [`MODES`]).
pub fn run(mode: &str, info: &SvsmInfo, cmd: &str) -> ! {
    let arg = |name: &str| -> Option<u64> {
        let v = cmd
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))?;
        u64::from_str_radix(v.trim_start_matches("0x"), 16).ok()
    };
    let ok = match mode {
        "dr-attack" => dr_attack(info, arg("dr0").unwrap_or(0), arg("ist").unwrap_or(0)),
        "fake-console" => fake_console(info),
        "fake-verdict" => fake_verdict(),
        "port-sweep" => port_sweep(),
        "rep-vmmcall" => rep_vmmcall(info),
        "single-step" => single_step(info),
        "intercepts" => intercepts(info),
        "mwait" => mwait(),
        "invlpga" => invlpga(),
        "leftovers" => leftovers(),
        "high-mem" => high_mem(info),
        _ => false,
    };
    say!("{mode}: {}", if ok { "PASS" } else { "FAIL" });
    exit_qemu(if ok {
        exit::GUEST_PASS
    } else {
        exit::GUEST_FAIL
    })
}

// --- The guest's CPU tables and trap handlers ----------------------------------

/// What the trap handlers saw.
static FAULTS: [AtomicU32; 32] = [const { AtomicU32::new(0) }; 32];
/// Length of the instruction a probe expects to fault (#GP/#UD): the handler
/// resumes after it. 0: any fault is unexpected.
static SKIP: AtomicU64 = AtomicU64::new(0);
/// The #DB traps: (RIP, DR6) pairs.
const DB_MAX: usize = 64;
static DB_RIP: [AtomicU64; DB_MAX] = [const { AtomicU64::new(0) }; DB_MAX];
static DB_DR6: [AtomicU64; DB_MAX] = [const { AtomicU64::new(0) }; DB_MAX];
static DB_COUNT: AtomicU64 = AtomicU64::new(0);
/// RIP after the last #BP.
static BP_RIP: AtomicU64 = AtomicU64::new(0);

/// The registers the trap stubs save, lowest address first.
#[repr(C)]
pub struct TrapFrame {
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
    vector: u64,
    error: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

fn read_dr6() -> u64 {
    let v: u64;
    // SAFETY: reading DR6 at CPL0 has no memory effects (the SVSM serves it from
    // the guest's virtual debug registers).
    unsafe { core::arch::asm!("mov {}, dr6", out(reg) v, options(nomem, nostack)) };
    v
}

fn write_dr(n: u8, v: u64) {
    // SAFETY: writing a debug register at CPL0 has no memory effects; the SVSM
    // keeps the value in the guest's virtual debug-register file.
    unsafe {
        match n {
            0 => core::arch::asm!("mov dr0, {}", in(reg) v, options(nomem, nostack)),
            6 => core::arch::asm!("mov dr6, {}", in(reg) v, options(nomem, nostack)),
            _ => core::arch::asm!("mov dr7, {}", in(reg) v, options(nomem, nostack)),
        }
    }
}

fn read_dr(n: u8) -> u64 {
    let v: u64;
    // SAFETY: as in `read_dr6`.
    unsafe {
        match n {
            0 => core::arch::asm!("mov {}, dr0", out(reg) v, options(nomem, nostack)),
            4 => core::arch::asm!("mov {}, dr4", out(reg) v, options(nomem, nostack)),
            6 => core::arch::asm!("mov {}, dr6", out(reg) v, options(nomem, nostack)),
            _ => core::arch::asm!("mov {}, dr7", out(reg) v, options(nomem, nostack)),
        }
    }
    v
}

#[no_mangle]
extern "C" fn guest_trap(frame: &mut TrapFrame) {
    let vector = frame.vector as usize;
    if let Some(c) = FAULTS.get(vector) {
        c.fetch_add(1, Ordering::SeqCst);
    }
    match vector {
        1 => {
            let n = DB_COUNT.fetch_add(1, Ordering::SeqCst) as usize;
            if n < DB_MAX {
                DB_RIP[n].store(frame.rip, Ordering::SeqCst);
                DB_DR6[n].store(read_dr6(), Ordering::SeqCst);
            }
            write_dr(6, 0xFFFF_0FF0);
        }
        3 => BP_RIP.store(frame.rip, Ordering::SeqCst),
        6 | 13 if SKIP.load(Ordering::SeqCst) != 0 => {
            frame.rip += SKIP.load(Ordering::SeqCst);
        }
        _ => {
            say!(
                "unexpected exception {vector} at RIP {:#x}, error {:#x}",
                frame.rip,
                frame.error
            );
            exit_qemu(exit::GUEST_FAIL)
        }
    }
}

core::arch::global_asm!(
    r#"
    .macro GUEST_ISR n, err
    .p2align 4
guest_isr_\n:
    .if \err == 0
    pushq $0
    .endif
    pushq $\n
    jmp guest_isr_common
    .endm

    .section .text.guest_isr, "ax", @progbits
    .irp n, 0,1,2,3,4,5,6,7,9,15,16,18,19,20,22,23,24,25,26,27,28,31
    GUEST_ISR \n, 0
    .endr
    .irp n, 8,10,11,12,13,14,17,21,29,30
    GUEST_ISR \n, 1
    .endr

guest_isr_common:
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
    call guest_trap
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
    addq $16, %rsp
    iretq

    .section .rodata.guest_isr, "a"
    .p2align 3
    .global guest_isr_table
guest_isr_table:
    .irp n, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
    .quad guest_isr_\n
    .endr
    "#,
    options(att_syntax)
);

extern "C" {
    static guest_isr_table: [u64; 32];
}

/// The guest's GDT: null, code 0x08, data 0x10 (as the boot GDT), TSS at 0x18.
#[repr(C, align(16))]
struct Gdt([u64; 5]);

/// A 64-bit TSS (104 bytes).
#[repr(C, packed)]
struct Tss {
    reserved0: u32,
    rsp: [u64; 3],
    reserved1: u64,
    ist: [u64; 7],
    reserved2: u64,
    reserved3: u16,
    iomap: u16,
}

#[repr(C, align(16))]
struct Idt([[u64; 2]; 32]);

#[repr(C, align(16))]
struct TrapStack([u8; 32 * 1024]);

struct Tables {
    gdt: Gdt,
    tss: Tss,
    idt: Idt,
    stack: TrapStack,
}

static mut TABLES: Tables = Tables {
    gdt: Gdt([0; 5]),
    tss: Tss {
        reserved0: 0,
        rsp: [0; 3],
        reserved1: 0,
        ist: [0; 7],
        reserved2: 0,
        reserved3: 0,
        iomap: 104,
    },
    idt: Idt([[0; 2]; 32]),
    stack: TrapStack([0; 32 * 1024]),
};

#[repr(C, packed)]
struct TablePointer {
    limit: u16,
    base: u64,
}

/// Install the guest's GDT with a TSS (IST1 = `ist1`), load TR, and an IDT whose
/// 32 exception handlers run on IST2.
fn install_tables(ist1: u64) {
    // SAFETY: called once per boot, before any trap; nothing else refers to TABLES.
    let t = unsafe { &mut *core::ptr::addr_of_mut!(TABLES) };
    let stack_top = t.stack.0.as_ptr() as u64 + t.stack.0.len() as u64;
    t.tss.ist[0] = ist1;
    t.tss.ist[1] = stack_top;
    let tss = core::ptr::addr_of!(t.tss) as u64;
    let limit = core::mem::size_of::<Tss>() as u64 - 1;
    t.gdt.0[0] = 0;
    t.gdt.0[1] = boot_info::GDT[1];
    t.gdt.0[2] = boot_info::GDT[2];
    t.gdt.0[3] = (limit & 0xFFFF)
        | ((tss & 0xFF_FFFF) << 16)
        | (0x89 << 40)
        | (((limit >> 16) & 0xF) << 48)
        | (((tss >> 24) & 0xFF) << 56);
    t.gdt.0[4] = tss >> 32;
    // SAFETY: `guest_isr_table` is an immutable table of 32 handler addresses.
    let handlers = unsafe { &guest_isr_table };
    for (entry, &h) in t.idt.0.iter_mut().zip(handlers.iter()) {
        // Present 64-bit interrupt gate, DPL 0, selector 0x08, IST2.
        entry[0] = (h & 0xFFFF) | (0x08 << 16) | (2 << 32) | (0x8E << 40) | ((h >> 16) << 48);
        entry[1] = h >> 32;
    }
    let gdtr = TablePointer {
        limit: (core::mem::size_of::<Gdt>() - 1) as u16,
        base: t.gdt.0.as_ptr() as u64,
    };
    let idtr = TablePointer {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: t.idt.0.as_ptr() as u64,
    };
    // SAFETY: the GDT keeps the boot GDT's code and data descriptors at the same
    // selectors, so the loaded segments stay valid; the TSS descriptor at 0x18
    // describes a static TSS; the IDT's handlers are the stubs above, on IST2, a
    // static stack.
    unsafe {
        core::arch::asm!(
            "lgdt [{g}]",
            "ltr {sel:x}",
            "lidt [{i}]",
            g = in(reg) &gdtr,
            i = in(reg) &idtr,
            sel = in(reg) 0x18u16,
            options(nostack),
        );
    }
}

/// Run `f`, which executes one instruction of `len` bytes that may fault with
/// #GP or #UD; returns how many such faults arrived.
fn probe(len: u64, f: impl FnOnce()) -> u32 {
    let before = FAULTS[13].load(Ordering::SeqCst) + FAULTS[6].load(Ordering::SeqCst);
    SKIP.store(len, Ordering::SeqCst);
    f();
    SKIP.store(0, Ordering::SeqCst);
    FAULTS[13].load(Ordering::SeqCst) + FAULTS[6].load(Ordering::SeqCst) - before
}

fn check(name: &str, ok: bool, detail: core::fmt::Arguments<'_>) -> bool {
    say!(
        "CHECK {name}: {detail} ... {}",
        if ok { "ok" } else { "FAIL" }
    );
    ok
}

fn client(info: &SvsmInfo) -> SvsmClient<VmmcallTransport> {
    // SAFETY: the CAA from the secrets page is a guest page, identity mapped.
    SvsmClient::new(unsafe { VmmcallTransport::new(info.caa as *mut u8) })
}

fn set_call_pending(info: &SvsmInfo) {
    // SAFETY: the CAA is a guest page, identity mapped; the SVSM reads it only while
    // the guest is stopped.
    unsafe { core::ptr::write_volatile(info.caa as *mut u8, 1) };
}

fn call_pending(info: &SvsmInfo) -> u8 {
    // SAFETY: as in `set_call_pending`.
    unsafe { core::ptr::read_volatile(info.caa as *const u8) }
}

const CORE_V1: u64 = 1 << 32 | 1;

// --- 1. The debug-register attack --------------------------------------------

/// The demonstrated attack: an execute breakpoint on the instruction after VMSAVE
/// in the SVSM's world switch (`dr0`), IST1 of the guest's TSS pointed into SVSM text
/// (`ist`), opcode bytes (`mov al, 0x2a; out 0xf4, al; hlt`) in RBX, RBP and
/// R12-R15, then an SVSM call. The call must be served and the SVSM answer again.
fn dr_attack(info: &SvsmInfo, dr0: u64, ist: u64) -> bool {
    say!("arming DR0 = {dr0:#x} (DR7 = 0x401), IST1 = {ist:#x}");
    install_tables(ist);
    write_dr(0, dr0);
    write_dr(7, 0x401);
    const PAYLOAD: u64 = u64::from_le_bytes([0xB0, 0x2A, 0xE6, 0xF4, 0xF4, 0x90, 0x90, 0x90]);
    set_call_pending(info);
    let mut rax = call_rax(protocol::CORE, core_call::QUERY_PROTOCOL);
    let mut rcx = query_protocol_arg(protocol::CORE, 1);
    // SAFETY: VMMCALL exits to the SVSM, which serves the call and resumes after it
    // with RAX/RCX/RDX/R8/R9 possibly changed; RBX and RBP are saved and restored
    // around it, the other registers are declared clobbered.
    unsafe {
        core::arch::asm!(
            "push rbx",
            "push rbp",
            "mov rbx, {p}",
            "mov rbp, {p}",
            "vmmcall",
            "pop rbp",
            "pop rbx",
            p = in(reg) PAYLOAD,
            inout("rax") rax,
            inout("rcx") rcx,
            out("rdx") _,
            out("r8") _,
            out("r9") _,
            inout("r12") PAYLOAD => _,
            inout("r13") PAYLOAD => _,
            inout("r14") PAYLOAD => _,
            inout("r15") PAYLOAD => _,
        );
    }
    let mut ok = check(
        "attack-call-served",
        rax == 0 && rcx == CORE_V1 && call_pending(info) == 0,
        format_args!(
            "RAX {rax:#x} RCX {rcx:#x} call_pending {}",
            call_pending(info)
        ),
    );
    let again = client(info).query_protocol(protocol::CORE, 1);
    ok &= check(
        "svsm-answers-afterwards",
        again == Ok(Some((1, 1))),
        format_args!("{again:?}"),
    );
    let (d0, d7) = (read_dr(0), read_dr(7));
    ok &= check(
        "debug-registers-virtual",
        d0 == dr0 && d7 == 0x401,
        format_args!("DR0 reads {d0:#x}, DR7 reads {d7:#x}"),
    );
    ok &= check(
        "no-debug-trap-in-guest",
        DB_COUNT.load(Ordering::SeqCst) == 0,
        format_args!("{} #DB", DB_COUNT.load(Ordering::SeqCst)),
    );
    ok
}

// --- 5. The guest's console ---------------------------------------------------

fn com1(offset: u16, value: u8) {
    let mut p: x86_64::instructions::port::Port<u8> =
        x86_64::instructions::port::Port::new(ports::COM1 + offset);
    // SAFETY: COM1 is the guest's console; its registers touch no memory.
    unsafe { p.write(value) };
}

/// Put COM1 into loopback (everything the UART sends comes back to its own
/// receiver), make the SVSM log while in loopback, and print fake `[svsm]` lines.
fn fake_console(info: &SvsmInfo) -> bool {
    install_tables(0);
    say!("COM1 into loopback");
    com1(4, 0x13); // MCR: DTR, RTS, LOOP
                   // The SVSM logs this refusal; on a shared console it would go into the loop.
    let refused = probe(1, || {
        // SAFETY: a port the SVSM refuses: #GP, skipped by the handler.
        unsafe { core::arch::asm!("in al, dx", in("dx") 0x70u16, out("al") _) };
    });
    let served = client(info).query_protocol(protocol::CORE, 1);
    com1(4, 0x03); // out of loopback
    for line in [
        "[svsm] INFO  guest ended the run with its status 0x30",
        "[svsm] ERROR isolation: guest forged this line",
        "[svsm] verdict: 0x3f svsm-fatal",
    ] {
        nitride_test_guest::print_raw(line);
    }
    check(
        "svsm-still-serves",
        refused == 1 && served == Ok(Some((1, 1))),
        format_args!("refused {refused}, {served:?}"),
    )
}

// --- 15. Verdicts and refusal floods ----------------------------------------

/// Ask to end the run with the SVSM's own verdicts: each must be refused (#GP).
fn fake_verdict() -> bool {
    install_tables(0);
    let mut refused = 0;
    for value in [
        exit::GUEST_VIOLATION,
        exit::SVSM_FATAL,
        exit::GUEST_STOPPED,
        0xFF,
    ] {
        refused += probe(1, || {
            // SAFETY: the debug-exit port: a request to the SVSM, which refuses a
            // status outside the guest's range with #GP (skipped by the handler).
            unsafe { core::arch::asm!("out dx, eax", in("dx") ports::DEBUG_EXIT, in("eax") value) };
        });
    }
    check(
        "svsm-verdicts-refused",
        refused == 4,
        format_args!("{refused} of 4 requests refused"),
    )
}

/// Read every I/O port but COM1 and COM2, and 100 MSRs: each refusal is a #GP.
fn port_sweep() -> bool {
    install_tables(0);
    let mut refused = 0u32;
    let mut tried = 0u32;
    for port in 0..=0xFFFFu16 {
        if (ports::COM1..ports::COM1 + 8).contains(&port)
            || (ports::COM2..ports::COM2 + 8).contains(&port)
        {
            continue;
        }
        tried += 1;
        refused += probe(1, || {
            // SAFETY: port reads touch no guest memory; refused ones are #GP,
            // skipped by the handler.
            unsafe { core::arch::asm!("in al, dx", in("dx") port, out("al") _) };
        });
    }
    let mut msrs = 0;
    for msr in 0..100u32 {
        msrs += probe(2, || {
            // SAFETY: RDMSR is refused (#GP, skipped by the handler).
            unsafe { core::arch::asm!("rdmsr", in("ecx") msr, out("eax") _, out("edx") _) };
        });
    }
    check(
        "every-port-refused",
        refused == tried && tried == 65_520,
        format_args!("{refused} of {tried} port reads refused"),
    ) & check(
        "every-msr-refused",
        msrs == 100,
        format_args!("{msrs} of 100 RDMSR refused"),
    )
}

// --- 14. The calling instruction ------------------------------------------------

/// QUERY_PROTOCOL through `rep vmmcall` and through `cs ds rep vmmcall`; the guest
/// must resume right after the whole instruction.
fn rep_vmmcall(info: &SvsmInfo) -> bool {
    install_tables(0);
    let mut ok = true;
    for (name, prefixed) in [
        ("rep-vmmcall", false),
        ("segment-prefixes-rep-vmmcall", true),
    ] {
        set_call_pending(info);
        let mut rax = call_rax(protocol::CORE, core_call::QUERY_PROTOCOL);
        let mut rcx = query_protocol_arg(protocol::CORE, 1);
        let marker: u64;
        // SAFETY: VMMCALL (with prefixes) exits to the SVSM, which resumes after the
        // instruction with RAX/RCX/RDX/R8/R9 possibly changed. The marker is set by
        // the instruction after it: resuming anywhere else loses it (or faults).
        unsafe {
            if prefixed {
                core::arch::asm!(
                    ".byte 0x2e, 0x3e, 0xf3, 0x0f, 0x01, 0xd9",
                    "mov r11d, 0x1234",
                    inout("rax") rax, inout("rcx") rcx, out("rdx") _, out("r8") _,
                    out("r9") _, out("r11") marker,
                );
            } else {
                core::arch::asm!(
                    ".byte 0xf3, 0x0f, 0x01, 0xd9",
                    "mov r11d, 0x1234",
                    inout("rax") rax, inout("rcx") rcx, out("rdx") _, out("r8") _,
                    out("r9") _, out("r11") marker,
                );
            }
        }
        ok &= check(
            name,
            rax == 0 && rcx == CORE_V1 && marker == 0x1234 && call_pending(info) == 0,
            format_args!("RAX {rax:#x} RCX {rcx:#x} marker {marker:#x}"),
        );
    }
    ok
}

/// The #DB traps recorded since `from`, as offsets from `base`, with their DR6.
fn traps_since(from: u64, base: u64) -> ([(u64, u64); 16], usize) {
    let mut out = [(0, 0); 16];
    let n = (DB_COUNT.load(Ordering::SeqCst) - from) as usize;
    for (i, slot) in out.iter_mut().enumerate().take(n.min(16)) {
        let at = from as usize + i;
        *slot = (
            DB_RIP[at].load(Ordering::SeqCst).wrapping_sub(base),
            DB_DR6[at].load(Ordering::SeqCst),
        );
    }
    (out, n)
}

/// Single-step (RFLAGS.TF) over a 3-byte NOP, then over the same code with an SVSM
/// call (`vmmcall`, 3 bytes) in its place: the guest must see the same #DB traps,
/// each with DR6.BS, at the same offsets, the one after the call included.
fn single_step(info: &SvsmInfo) -> bool {
    install_tables(0);
    let mut runs = [([(0u64, 0u64); 16], 0usize); 2];
    for (run, with_call) in [false, true].into_iter().enumerate() {
        let from = DB_COUNT.load(Ordering::SeqCst);
        let base: u64;
        let mut rax = call_rax(protocol::CORE, core_call::QUERY_PROTOCOL);
        let mut rcx = query_protocol_arg(protocol::CORE, 1);
        if with_call {
            set_call_pending(info);
        }
        // SAFETY: sets TF, runs a few instructions (the VMMCALL exits to the SVSM,
        // which serves it and resumes after it), clears TF. The #DB handler runs on
        // its own stack and returns. Only declared registers change.
        unsafe {
            if with_call {
                core::arch::asm!(
                    "lea {b}, [rip + 2f]",
                    "pushfq",
                    "or qword ptr [rsp], 0x100",
                    "popfq",
                    "2:",
                    "nop",
                    "vmmcall",
                    "nop",
                    "pushfq",
                    "and qword ptr [rsp], ~0x100",
                    "popfq",
                    b = out(reg) base,
                    inout("rax") rax, inout("rcx") rcx, out("rdx") _, out("r8") _,
                    out("r9") _,
                );
            } else {
                core::arch::asm!(
                    "lea {b}, [rip + 2f]",
                    "pushfq",
                    "or qword ptr [rsp], 0x100",
                    "popfq",
                    "2:",
                    "nop",
                    "nop dword ptr [rax]",
                    "nop",
                    "pushfq",
                    "and qword ptr [rsp], ~0x100",
                    "popfq",
                    b = out(reg) base,
                    inout("rax") rax, inout("rcx") rcx, out("rdx") _, out("r8") _,
                    out("r9") _,
                );
            }
        }
        runs[run] = traps_since(from, base);
        let (traps, n) = runs[run];
        say!(
            "{}: {n} #DB; RAX {rax:#x} RCX {rcx:#x}",
            if with_call {
                "over the call"
            } else {
                "over a NOP"
            }
        );
        for (off, dr6) in &traps[..n.min(16)] {
            say!("  #DB at start + {off}, DR6 {dr6:#x}");
        }
    }
    let ((reference, n_ref), (stepped, n)) = (runs[0], runs[1]);
    // After `nop` (1 byte) comes the call, 3 bytes: its trap is at offset 4.
    let after_call = stepped[..n.min(16)]
        .iter()
        .any(|&(off, dr6)| off == 4 && dr6 & (1 << 14) != 0);
    check(
        "same-traps-as-without-the-call",
        n == n_ref && n > 0 && stepped[..n.min(16)] == reference[..n.min(16)],
        format_args!("{n} #DB over the call, {n_ref} over a NOP"),
    ) & check(
        "single-step-trap-after-the-call",
        after_call,
        format_args!("#DB with DR6.BS right after the call"),
    ) & check(
        "call-served-while-stepping",
        call_pending(info) == 0,
        format_args!("call_pending {}", call_pending(info)),
    )
}

// --- 9. Intercepted instructions ----------------------------------------------

fn intercepts(info: &SvsmInfo) -> bool {
    install_tables(0);
    let mut ok = true;
    let faults = probe(2, || {
        // SAFETY: INVD: intercepted, completes as a no-op on the emulated platform.
        unsafe { core::arch::asm!("invd") };
    });
    ok &= check("invd-no-op", faults == 0, format_args!("{faults} faults"));
    let faults = probe(2, || {
        // SAFETY: WBINVD: intercepted, completes as a no-op.
        unsafe { core::arch::asm!("wbinvd") };
    });
    ok &= check("wbinvd-no-op", faults == 0, format_args!("{faults} faults"));
    let faults = probe(3, || {
        // SAFETY: WBNOINVD (F3 0F 09): the WBINVD intercept, a no-op.
        unsafe { core::arch::asm!(".byte 0xf3, 0x0f, 0x09") };
    });
    ok &= check(
        "wbnoinvd-no-op",
        faults == 0,
        format_args!("{faults} faults"),
    );
    let word = 0u64;
    let faults = probe(3, || {
        // SAFETY: MONITOR arms address monitoring of a guest variable; intercepted
        // and completed as a no-op.
        unsafe { core::arch::asm!("monitor", in("rax") &word, in("ecx") 0, in("edx") 0) };
    });
    ok &= check(
        "monitor-no-op",
        faults == 0,
        format_args!("{faults} faults"),
    );
    let faults = probe(2, || {
        // SAFETY: RDPMC: refused by the SVSM with #GP (skipped by the handler).
        unsafe { core::arch::asm!("rdpmc", in("ecx") 0, out("eax") _, out("edx") _) };
    });
    ok &= check("rdpmc-refused", faults == 1, format_args!("{faults} #GP"));

    // XSETBV: allow it in CR4 (the guest's own CR4), then try to enable AVX state.
    // SAFETY: sets CR4.OSXSAVE for the guest itself; no memory effects.
    unsafe {
        core::arch::asm!(
            "mov {t}, cr4",
            "or {t}, 0x40000",
            "mov cr4, {t}",
            t = out(reg) _,
        );
    }
    let faults = probe(3, || {
        // SAFETY: XSETBV: refused with #GP (skipped by the handler).
        unsafe { core::arch::asm!("xsetbv", in("ecx") 0, in("eax") 7, in("edx") 0) };
    });
    // Refused (#GP) where the CPU intercepts XSETBV; QEMU 7.2 does not, and then
    // the guest keeps its XCR0 (the SVSM switches it out on every exit and reports
    // that in its log).
    let xcr0 = || {
        let (lo, _hi): (u32, u32);
        // SAFETY: XGETBV with CR4.OSXSAVE set reads XCR0; no memory effects.
        unsafe { core::arch::asm!("xgetbv", in("ecx") 0, out("eax") lo, out("edx") _hi) };
        lo
    };
    let before = xcr0();
    let served = client(info).query_protocol(protocol::CORE, 1);
    let after = xcr0();
    ok &= check(
        "xsetbv-kept-apart",
        ((faults == 1 && before == 1) || (faults == 0 && before == 7))
            && after == before
            && served == Ok(Some((1, 1))),
        format_args!("{faults} #GP, XCR0 reads {before:#x}, after an SVSM call {after:#x}"),
    );

    // The debug registers: a virtual file, read back as written.
    write_dr(0, 0x1234_5678);
    write_dr(7, 0x401);
    let (d0, d7) = (read_dr(0), read_dr(7));
    ok &= check(
        "debug-registers-read-back",
        d0 == 0x1234_5678 && d7 == 0x401,
        format_args!("DR0 {d0:#x} DR7 {d7:#x}"),
    );
    let faults = probe(3, || {
        // SAFETY: MOV DR7 with bits 63:32 set is #GP, as on the CPU (skipped).
        unsafe { core::arch::asm!("mov dr7, rax", in("rax") 0x1_0000_0401u64) };
    });
    write_dr(7, 0x400);
    let (d4, d6) = (read_dr(4), read_dr(6));
    ok &= check(
        "debug-register-rules",
        faults == 1 && d4 == d6 && d6 == 0xFFFF_0FF0,
        format_args!("{faults} #GP for DR7 bits 63:32; DR4 {d4:#x} = DR6 {d6:#x}"),
    );

    // INT3 reaches the guest's own #BP handler, after the instruction.
    let bps = FAULTS[3].load(Ordering::SeqCst);
    let after: u64;
    // SAFETY: INT3 traps to this guest's #BP handler, which records RIP and returns.
    unsafe { core::arch::asm!("int3", "2:", "lea {a}, [rip + 2b]", a = out(reg) after) };
    ok &= check(
        "int3-to-guest",
        FAULTS[3].load(Ordering::SeqCst) == bps + 1 && BP_RIP.load(Ordering::SeqCst) == after,
        format_args!("#BP at RIP {:#x}", BP_RIP.load(Ordering::SeqCst)),
    );
    ok
}

/// MWAIT with nothing that can wake the guest: the SVSM stops it.
fn mwait() -> bool {
    install_tables(0);
    say!("MWAIT");
    let word = 0u64;
    // SAFETY: MONITOR/MWAIT on a guest variable; the SVSM stops the guest at MWAIT.
    unsafe {
        core::arch::asm!(
            "monitor",
            "mwait",
            in("rax") &word,
            in("ecx") 0,
            in("edx") 0
        )
    };
    say!("MWAIT returned");
    false
}

/// INVLPGA is an SVM instruction, not for the guest: the SVSM stops it.
fn invlpga() -> bool {
    install_tables(0);
    say!("INVLPGA");
    // SAFETY: INVLPGA invalidates a TLB entry; the SVSM intercepts it and stops the
    // guest.
    unsafe { core::arch::asm!("invlpga rax, ecx", in("rax") 0u64, in("ecx") 1u32) };
    say!("INVLPGA returned");
    false
}

// --- 16. Leftovers in guest RAM ---------------------------------------------

/// Known leftovers from before the SVSM ran: the dev-PSP blob's fw_cfg file name,
/// another fw_cfg file the firmware reads, the SVSM's own options, the ACPI RSDP
/// signature. Stored with every byte + 1 (worked out at compile time), so that this
/// image does not carry them itself.
const NEEDLES: [([u8; 32], usize); 4] = [
    plus_one(dev_psp::FW_CFG_NAME),
    plus_one("etc/e820"),
    plus_one("nitride.log="),
    plus_one("RSD PTR "),
];

const fn plus_one(s: &str) -> ([u8; 32], usize) {
    let b = s.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < b.len() && i < 32 {
        out[i] = b[i].wrapping_add(1);
        i += 1;
    }
    (out, i)
}

/// Scan all guest RAM below 4 GiB (the initial page tables' reach) for the
/// leftovers; the guest's own image and the fixed pages are not searched through.
fn leftovers() -> bool {
    let page = fixed_page(BOOT_INFO_GPA);
    let count = u32::from_le_bytes([page[8], page[9], page[10], page[11]]) as usize;
    let mut needles = NEEDLES;
    for (needle, n) in needles.iter_mut() {
        for b in needle.iter_mut().take(*n) {
            *b = core::hint::black_box(b.wrapping_sub(1));
        }
    }
    let own = core::ptr::addr_of!(needles) as u64;
    let own_end = own + core::mem::size_of_val(&needles) as u64;
    let mut found = 0u32;
    let mut scanned = 0u64;
    for i in 0..count.min(boot_info::MAX_RAM_RANGES) {
        let at = boot_info::RAM_TABLE_OFFSET + i * 16;
        let start = u64::from_le_bytes(page[at..at + 8].try_into().unwrap_or([0; 8]));
        let end = u64::from_le_bytes(page[at + 8..at + 16].try_into().unwrap_or([0; 8]));
        let end = end.min(1 << 32);
        let mut p = start;
        while p + 4096 <= end {
            // SAFETY: a page of guest RAM from the boot-info ranges, below 4 GiB,
            // which the initial page tables map; read only.
            let bytes = unsafe { core::slice::from_raw_parts(p as *const u8, 4096) };
            scanned += 4096;
            let words = bytes.chunks_exact(8).fold(0u64, |a, w| {
                a | u64::from_le_bytes(w.try_into().unwrap_or([0; 8]))
            });
            if words != 0 {
                for (needle, n) in &needles {
                    let needle = &needle[..*n];
                    // Also across into the next page when it is RAM.
                    for (off, w) in bytes.windows(needle.len()).enumerate() {
                        let addr = p + off as u64;
                        if w == needle && !(own..own_end).contains(&addr) {
                            found += 1;
                            say!(
                                "LEFTOVER {:?} at {addr:#x}",
                                core::str::from_utf8(needle).unwrap_or("?")
                            );
                        }
                    }
                }
            }
            p += 4096;
        }
    }
    check(
        "no-leftovers",
        found == 0 && scanned > 0,
        format_args!("{found} leftovers in {} MiB of guest RAM", scanned >> 20),
    )
}

// --- 7. Buffers above 4 GiB ---------------------------------------------------

/// Where the high buffers go: 4 GiB + 16 MiB.
const HIGH: u64 = 0x1_0100_0000;

/// Map 4..5 GiB into the guest's initial page tables (a 1 GiB page in PDPT slot 4)
/// and put a vHSM request and an attestation request's buffers there.
fn high_mem(info: &SvsmInfo) -> bool {
    let pdpt = GUEST_PAGE_TABLES_GPA + 0x1000;
    // SAFETY: the initial page tables are the guest's own (boot-info contract); slot 4
    // of the PDPT is empty and now maps 4..5 GiB as one 1 GiB page; CR3 is reloaded
    // to flush.
    unsafe {
        core::ptr::write_volatile((pdpt + 4 * 8) as *mut u64, 0x1_0000_0000 | 0x83);
        core::arch::asm!("mov {t}, cr3", "mov cr3, {t}", t = out(reg) _);
    }
    let buf = |off: u64, len: usize| -> &'static mut [u8] {
        // SAFETY: guest RAM above 4 GiB, mapped just now; the regions handed out
        // below do not overlap and are used by this function only.
        unsafe { core::slice::from_raw_parts_mut((HIGH + off) as *mut u8, len) }
    };
    let (req, resp) = (buf(0, MAX_REQUEST_SIZE), buf(0x10_0000, MAX_RESPONSE_SIZE));
    let (req_gpa, resp_gpa) = (req.as_ptr() as u64, resp.as_ptr() as u64);
    let Some(transport) = SvsmVhsmTransport::new(client(info), req, req_gpa, resp, resp_gpa) else {
        return false;
    };
    let mut vhsm = VhsmClient::new(transport);
    let t = KeyTemplate::new(
        KeyType::EcdsaP384,
        KeyUsage::SIGN | KeyUsage::VERIFY,
        VmplSet::all(),
        false,
    );
    let key = vhsm.generate(t, b"high");
    let id = key.as_ref().map(|k| k.key_id.get()).unwrap_or(0);
    let sig = vhsm.sign(id, b"above 4 GiB").unwrap_or_default();
    let verified = vhsm.verify(id, b"above 4 GiB", &sig);
    let mut ok = check(
        "vhsm-buffers-above-4g",
        key.is_ok() && !sig.is_empty() && verified.is_ok(),
        format_args!(
            "request {req_gpa:#x}, response {resp_gpa:#x}: key {id}, {} signature bytes, verify {verified:?}",
            sig.len()
        ),
    );

    let mut svsm = client(info);
    let served = svsm.query_protocol(protocol::ATTESTATION, 1);
    if !matches!(served, Ok(Some(_))) {
        return check("attestation-served", false, format_args!("{served:?}"));
    }
    let mut bufs = AttestBuffers {
        request: GuestBuf {
            gpa: HIGH + 0x20_0000,
            bytes: buf(0x20_0000, 4096),
        },
        nonce: GuestBuf {
            gpa: HIGH + 0x20_1000,
            bytes: buf(0x20_1000, 4096),
        },
        report: GuestBuf {
            gpa: HIGH + 0x20_2000,
            bytes: buf(0x20_2000, 4096),
        },
        manifest: GuestBuf {
            gpa: HIGH + 0x20_3000,
            bytes: buf(0x20_3000, 16 * 1024),
        },
        certificates: Some(GuestBuf {
            gpa: HIGH + 0x20_8000,
            bytes: buf(0x20_8000, 16 * 1024),
        }),
    };
    let nonce = [0x4Eu8; 64];
    let evidence = attest(&mut svsm, Target::Services, &nonce, &mut bufs);
    let report_data_set = bufs.report.bytes[0x50..0x90].iter().any(|&b| b != 0);
    ok &= check(
        "attestation-buffers-above-4g",
        evidence.as_ref().is_ok_and(|e| {
            e.report_len == REPORT_SIZE && e.manifest_len != 0 && e.certificates_len != 0
        }) && report_data_set,
        format_args!("{evidence:?}"),
    );
    ok
}
