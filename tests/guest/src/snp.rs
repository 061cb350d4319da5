//! The bare-metal guests' SEV-SNP runtime: what a guest at a VMPL
//! below the SVSM needs before it can print or call (`docs/guest-contract.md`).
//!
//! - A GHCB: the page right after the image (guest RAM the launch did not validate)
//!   made shared with a page state change and registered, both through the GHCB MSR
//!   protocol; the guest reaches it through the shared view of its initial page
//!   tables (C-bit clear, at 512 GiB).
//! - An IDT whose #VC handler turns what SEV-ES intercepts into GHCB requests: port
//!   I/O (IN/OUT with an immediate or DX port, 8/16/32 bits), CPUID and MSR access;
//!   anything else (and every other exception) ends the VM with GUEST_FAIL.
//! - Ending the VM: a GHCB termination request with Nitride's reason set and the
//!   guest's status as the code (`nitride_protocol::emulated::exit`).

use core::sync::atomic::{AtomicU64, Ordering};
use nitride_protocol::emulated::exit;
use nitride_protocol::snp::ghcb::{ioio, msr, nae, off, term, valid_bit, MSR_GHCB};

/// Virtual address of the shared view of guest-physical 0 (the SVSM's initial page
/// tables, PML4 entry 1).
pub const SHARED_VIEW: u64 = 1 << 39;

/// The registered GHCB's guest-physical address.
static GHCB: AtomicU64 = AtomicU64::new(0);

fn rdmsr(m: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: RDMSR of the GHCB MSR: served by SEV-ES hardware, no memory effects.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") m, out("eax") lo, out("edx") hi, options(nomem, nostack))
    };
    u64::from(lo) | (u64::from(hi) << 32)
}

fn wrmsr(m: u32, v: u64) {
    // SAFETY: WRMSR of the GHCB MSR: no memory effects.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") m, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nomem, nostack))
    };
}

fn vmgexit() {
    // SAFETY: VMGEXIT returns after the hypervisor served the request; the GHCB is
    // read afterwards with volatile reads.
    unsafe { core::arch::asm!("rep vmmcall", options(nostack)) };
}

fn msr_protocol(request: u64) -> u64 {
    wrmsr(MSR_GHCB, request);
    vmgexit();
    rdmsr(MSR_GHCB)
}

/// End the VM with `status` (GHCB termination request; the hypervisor reports the
/// requesting VMPL with it).
pub fn terminate(status: u32) -> ! {
    wrmsr(
        MSR_GHCB,
        term::request(term::SET_NITRIDE, u64::from(status)),
    );
    loop {
        vmgexit();
    }
}

fn ghcb_ptr(at: usize) -> *mut u64 {
    (SHARED_VIEW + GHCB.load(Ordering::SeqCst) + (at & 0xFF8) as u64) as *mut u64
}

fn put(at: usize, v: u64) {
    // SAFETY: a field of the registered GHCB page, mapped through the shared view.
    unsafe { ghcb_ptr(at).write_volatile(v) }
}

fn get(at: usize) -> u64 {
    // SAFETY: as in `put`.
    unsafe { ghcb_ptr(at).read_volatile() }
}

/// One NAE event through the GHCB: returns (SW_EXITINFO1, SW_EXITINFO2).
pub fn ghcb_call(code: u64, info1: u64, info2: u64, fields: &[(usize, u64)]) -> (u64, u64) {
    let mut bitmap = [0u64; 2];
    let mut set = |at: usize, v: u64| {
        put(at, v);
        let bit = valid_bit(at);
        bitmap[bit / 64] |= 1 << (bit % 64);
    };
    set(off::SW_EXIT_CODE, code);
    set(off::SW_EXIT_INFO_1, info1);
    set(off::SW_EXIT_INFO_2, info2);
    for &(at, v) in fields {
        set(at, v);
    }
    put(off::VALID_BITMAP, bitmap[0]);
    put(off::VALID_BITMAP + 8, bitmap[1]);
    put(
        0xFF8,
        nitride_protocol::snp::ghcb::PROTOCOL_VERSION_SNP << 16,
    );
    let saved = rdmsr(MSR_GHCB);
    wrmsr(MSR_GHCB, GHCB.load(Ordering::SeqCst));
    vmgexit();
    wrmsr(MSR_GHCB, saved);
    (get(off::SW_EXIT_INFO_1), get(off::SW_EXIT_INFO_2))
}

/// The GHCB's guest-physical address (0 before [`init`]).
pub fn ghcb_gpa() -> u64 {
    GHCB.load(Ordering::SeqCst)
}

/// The GHCB page through the shared view.
pub fn ghcb_page() -> *mut u8 {
    (SHARED_VIEW + GHCB.load(Ordering::SeqCst)) as *mut u8
}

extern "C" {
    static __guest_end: u8;
}

/// Set up the IDT (#VC) and the GHCB. Call first.
pub fn init() {
    install_idt();
    let gpa = core::ptr::addr_of!(__guest_end) as u64;
    let r = msr_protocol(msr::psc(gpa, false));
    if r & 0xFFF != msr::PSC_RESP || r >> 32 != 0 {
        terminate(exit::GUEST_FAIL);
    }
    let r = msr_protocol(msr::REG_GPA_REQ | gpa);
    if r != msr::REG_GPA_RESP | gpa {
        terminate(exit::GUEST_FAIL);
    }
    GHCB.store(gpa, Ordering::SeqCst);
}

/// Registers an exception stub saves, lowest address first.
#[repr(C)]
pub struct Frame {
    /// R15..R8, RBP, RDI, RSI, RDX, RCX, RBX, RAX.
    pub gprs: [u64; 15],
    /// Vector.
    pub vector: u64,
    /// Error code.
    pub error: u64,
    /// RIP.
    pub rip: u64,
    /// CS.
    pub cs: u64,
    /// RFLAGS.
    pub rflags: u64,
    /// RSP.
    pub rsp: u64,
    /// SS.
    pub ss: u64,
}

const RAX: usize = 14;
const RBX: usize = 13;
const RCX: usize = 12;
const RDX: usize = 11;

/// #VC error codes handled.
mod vc {
    pub const CPUID: u64 = 0x72;
    pub const IOIO: u64 = 0x7B;
    pub const MSR: u64 = 0x7C;
}

/// What happened to an instruction the #VC handler served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VcOutcome {
    /// Emulated; RIP moved past it.
    Done,
    /// The hypervisor asked for #GP (e.g. a refused MSR).
    GeneralProtection,
    /// Not something this handler emulates.
    Unhandled,
}

/// Serve a #VC on `f` (RIP at the instruction).
pub fn handle_vc(f: &mut Frame) -> VcOutcome {
    match f.error {
        vc::CPUID => {
            let (leaf, sub) = (f.gprs[RAX] & 0xFFFF_FFFF, f.gprs[RCX] & 0xFFFF_FFFF);
            ghcb_call(
                nae::CPUID,
                0,
                0,
                &[(off::RAX, leaf), (off::RCX, sub), (off::XCR0, 1)],
            );
            f.gprs[RAX] = get(off::RAX) & 0xFFFF_FFFF;
            f.gprs[RBX] = get(off::RBX) & 0xFFFF_FFFF;
            f.gprs[RCX] = get(off::RCX) & 0xFFFF_FFFF;
            f.gprs[RDX] = get(off::RDX) & 0xFFFF_FFFF;
            // The bits the CPU computes from this vCPU's CR4 (the host cannot know
            // them): leaf 1 ECX.OSXSAVE from CR4.OSXSAVE, leaf 7 ECX.OSPKE from
            // CR4.PKE. Without this a feature probe sees OSXSAVE and runs XGETBV,
            // which faults with CR4.OSXSAVE clear.
            let cr4 = x86_64::registers::control::Cr4::read_raw();
            let follow = |v: u64, bit: u64, on: bool| if on { v | bit } else { v & !bit };
            match leaf {
                1 => f.gprs[RCX] = follow(f.gprs[RCX], 1 << 27, cr4 & (1 << 18) != 0),
                7 if sub == 0 => f.gprs[RCX] = follow(f.gprs[RCX], 1 << 4, cr4 & (1 << 22) != 0),
                _ => {}
            }
            f.rip += 2;
            VcOutcome::Done
        }
        vc::MSR => {
            let write = {
                // SAFETY: RIP points at the faulting RDMSR/WRMSR (2 bytes) in this
                // guest's own code, mapped and readable.
                let b = unsafe { (f.rip as *const [u8; 2]).read() };
                b == [0x0F, 0x30]
            };
            let mut fields = [(off::RCX, f.gprs[RCX] & 0xFFFF_FFFF), (0, 0), (0, 0)];
            let n = if write {
                fields[1] = (off::RAX, f.gprs[RAX] & 0xFFFF_FFFF);
                fields[2] = (off::RDX, f.gprs[RDX] & 0xFFFF_FFFF);
                3
            } else {
                1
            };
            let (i1, _) = ghcb_call(nae::MSR, u64::from(write), 0, &fields[..n]);
            if i1 != 0 {
                return VcOutcome::GeneralProtection;
            }
            if !write {
                f.gprs[RAX] = get(off::RAX) & 0xFFFF_FFFF;
                f.gprs[RDX] = get(off::RDX) & 0xFFFF_FFFF;
            }
            f.rip += 2;
            VcOutcome::Done
        }
        vc::IOIO => ioio(f),
        _ => VcOutcome::Unhandled,
    }
}

/// IN/OUT (not the string forms): decoded at RIP, served with a GHCB IOIO event.
fn ioio(f: &mut Frame) -> VcOutcome {
    // SAFETY: RIP points at the faulting instruction in this guest's own code; at
    // most 3 bytes of it are read (prefix, opcode, immediate).
    let b = unsafe { (f.rip as *const [u8; 3]).read() };
    let (opsize16, at) = if b[0] == 0x66 { (true, 1) } else { (false, 0) };
    let op = b[at];
    let (port, len) = match op {
        0xE4..=0xE7 => (u16::from(b[at + 1]), at + 2),
        0xEC..=0xEF => ((f.gprs[RDX] & 0xFFFF) as u16, at + 1),
        _ => return VcOutcome::Unhandled,
    };
    let size: u8 = match (op & 1, opsize16) {
        (0, _) => 1,
        (_, true) => 2,
        _ => 4,
    };
    let input = op & 2 == 0;
    let mask = if size == 4 {
        0xFFFF_FFFF
    } else {
        (1u64 << (8 * size)) - 1
    };
    let info = ioio::info(port, size, input);
    let (i1, _) = if input {
        ghcb_call(nae::IOIO, info, 0, &[])
    } else {
        ghcb_call(nae::IOIO, info, 0, &[(off::RAX, f.gprs[RAX] & mask)])
    };
    if i1 != 0 {
        return VcOutcome::GeneralProtection;
    }
    if input {
        let v = get(off::RAX) & mask;
        f.gprs[RAX] = if size == 4 {
            v
        } else {
            (f.gprs[RAX] & !mask) | v
        };
    }
    f.rip += len as u64;
    VcOutcome::Done
}

#[no_mangle]
extern "C" fn snp_guest_exception(f: &mut Frame) {
    if f.vector == 29 && handle_vc(f) == VcOutcome::Done {
        return;
    }
    // Nothing is printed here: COM1 output takes a #VC, whose IST stack this
    // handler is running on.
    terminate(exit::GUEST_FAIL);
}

core::arch::global_asm!(
    r#"
    .section .text.snp_exc, "ax", @progbits
    .p2align 4
snp_exc_vc:
    pushq $29
    jmp snp_exc_common
    .p2align 4
snp_exc_other:
    pushq $0
    pushq $255
    jmp snp_exc_common
snp_exc_common:
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
    call snp_guest_exception
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
    addq $16, %rsp
    iretq

    .section .rodata.snp_exc, "a"
    .p2align 3
    .global snp_exc_vc_addr
snp_exc_vc_addr:
    .quad snp_exc_vc
    .global snp_exc_other_addr
snp_exc_other_addr:
    .quad snp_exc_other
    "#,
    options(att_syntax)
);

/// The IDT of the runtime: #VC to the handler, every other vector ends the VM.
#[repr(C, align(16))]
struct Idt([[u64; 2]; 32]);

static mut IDT: Idt = Idt([[0; 2]; 32]);

/// A 64-bit interrupt gate to `handler` (selector 0x08, IST `ist`).
pub fn gate(handler: u64, ist: u64) -> [u64; 2] {
    [
        (handler & 0xFFFF) | (0x08 << 16) | (ist << 32) | (0x8E << 40) | ((handler >> 16) << 48),
        handler >> 32,
    ]
}

/// The #VC stub's address (for a guest that installs its own IDT).
pub fn vc_stub() -> u64 {
    extern "C" {
        static snp_exc_vc_addr: u64;
    }
    // SAFETY: an immutable address in .rodata, written by the linker.
    unsafe { snp_exc_vc_addr }
}

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

/// The #VC handler's stack (IST1): the guest is built with a red zone, so an
/// exception must never be delivered on the stack of the code it interrupts.
#[repr(C, align(16))]
struct VcStack([u8; 32 * 1024]);

struct Tables {
    gdt: [u64; 5],
    tss: Tss,
    stack: VcStack,
}

static mut TABLES: Tables = Tables {
    gdt: [0; 5],
    tss: Tss {
        reserved0: 0,
        rsp: [0; 3],
        reserved1: 0,
        ist: [0; 7],
        reserved2: 0,
        reserved3: 0,
        iomap: 104,
    },
    stack: VcStack([0; 32 * 1024]),
};

/// The top of the #VC stack (IST1 of the runtime's TSS).
pub fn vc_stack_top() -> u64 {
    // SAFETY: only the address is taken.
    let t = unsafe { &*core::ptr::addr_of!(TABLES) };
    t.stack.0.as_ptr() as u64 + t.stack.0.len() as u64
}

fn install_idt() {
    extern "C" {
        static snp_exc_other_addr: u64;
    }
    // SAFETY: called once at start, before any exception; nothing else refers to
    // TABLES.
    let t = unsafe { &mut *core::ptr::addr_of_mut!(TABLES) };
    t.tss.ist[0] = t.stack.0.as_ptr() as u64 + t.stack.0.len() as u64;
    let tss = core::ptr::addr_of!(t.tss) as u64;
    let limit = core::mem::size_of::<Tss>() as u64 - 1;
    t.gdt = [
        0,
        nitride_protocol::emulated::boot_info::GDT[1],
        nitride_protocol::emulated::boot_info::GDT[2],
        (limit & 0xFFFF)
            | ((tss & 0xFF_FFFF) << 16)
            | (0x89 << 40)
            | (((limit >> 16) & 0xF) << 48)
            | (((tss >> 24) & 0xFF) << 56),
        tss >> 32,
    ];
    #[repr(C, packed)]
    struct GdtPtr {
        limit: u16,
        base: u64,
    }
    let g = GdtPtr {
        limit: (core::mem::size_of::<[u64; 5]>() - 1) as u16,
        base: t.gdt.as_ptr() as u64,
    };
    // SAFETY: the GDT keeps the boot GDT's code and data descriptors at the same
    // selectors (the loaded segments stay valid) and adds a TSS at 0x18 describing a
    // static TSS.
    unsafe {
        core::arch::asm!("lgdt [{g}]", "ltr {sel:x}", g = in(reg) &g, sel = in(reg) 0x18u16, options(nostack))
    };
    // SAFETY: an immutable address in .rodata, written by the linker.
    let other = unsafe { snp_exc_other_addr };
    // SAFETY: called once at start, before any exception can be taken; nothing else
    // refers to IDT.
    let idt = unsafe { &mut *core::ptr::addr_of_mut!(IDT) };
    for (v, e) in idt.0.iter_mut().enumerate() {
        *e = if v == 29 {
            gate(vc_stub(), 1)
        } else {
            gate(other, 1)
        };
    }
    #[repr(C, packed)]
    struct Ptr {
        limit: u16,
        base: u64,
    }
    let p = Ptr {
        limit: (core::mem::size_of::<Idt>() - 1) as u16,
        base: idt.0.as_ptr() as u64,
    };
    // SAFETY: the IDT is static and holds gates to the stubs above (selector 0x08,
    // the boot GDT's code segment).
    unsafe { core::arch::asm!("lidt [{}]", in(reg) &p, options(nostack)) };
}
