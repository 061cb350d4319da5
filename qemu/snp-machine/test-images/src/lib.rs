//! Runtime of the virtual SNP machine's test program (a VMPL0 image and a VMPL1
//! image in one IGVM file): the SNP interfaces as a guest uses them, written from the
//! specifications (GHCB 56421, SNP ABI 56860, APM vol. 2/3), not from the machine.
//!
//! - the GHCB MSR and the MSR protocol, VMGEXIT, and the GHCB page (through the
//!   shared view of guest memory the IGVM page tables map at [`SHARED_VIEW`]);
//! - the console through GHCB IOIO requests (COM1);
//! - an IDT whose #VC handler records the error code and emulates CPUID and RDMSR
//!   through the GHCB, and whose #GP/#UD handlers record and skip;
//! - PVALIDATE and RMPADJUST;
//! - the guest-message client of the PSP (AES-256-GCM under a VMPCK).
#![no_std]

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit};
use nitride_protocol::snp::msg::{MsgHeader, AAD_RANGE, AEAD_AES_256_GCM, HDR_VERSION};
use zerocopy::byteorder::little_endian::{U16, U64};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

pub use nitride_rt::halt_forever;

/// Virtual address of the shared view of guest-physical 0 (PML4 entry 1 of the
/// image's page tables, C-bit clear).
pub const SHARED_VIEW: u64 = 1 << 39;

/// Fixed guest-physical pages of the test (guest RAM is 64 MiB).
pub mod gpa {
    /// The image's page tables (0x1000..0x6000).
    pub const PAGE_TABLES: u64 = 0x1000;
    /// The SNP secrets page.
    pub const SECRETS: u64 = 0x8000;
    /// The SNP CPUID page.
    pub const CPUID: u64 = 0x9000;
    /// The command line.
    pub const CMDLINE: u64 = 0xA000;
    /// The VMPL1 image: 1 MiB from here.
    pub const VMPL1_IMAGE: u64 = 0x40_0000;
    /// End of the VMPL1 image region.
    pub const VMPL1_IMAGE_END: u64 = 0x50_0000;
    /// VMPL0's GHCB.
    pub const GHCB0: u64 = 0x80_0000;
    /// VMPL1's GHCB.
    pub const GHCB1: u64 = 0x80_1000;
    /// VMPL1's VMSA.
    pub const VMSA1: u64 = 0x81_0000;
    /// Sixteen pages: page `i` carries permission mask `i` for VMPL1.
    pub const PERM: u64 = 0x82_0000;
    /// A page nobody launched (private, not validated).
    pub const UNVALIDATED: u64 = 0x84_0000;
    /// Guest-request pages of VMPL0 (shared): request, response.
    pub const REQ0: u64 = 0x85_0000;
    /// Response page of VMPL0.
    pub const RSP0: u64 = 0x85_1000;
    /// Request page of VMPL1.
    pub const REQ1: u64 = 0x85_2000;
    /// Response page of VMPL1.
    pub const RSP1: u64 = 0x85_3000;
    /// Certificate buffer (4 shared pages).
    pub const CERTS: u64 = 0x85_4000;
    /// VMPL1's copy of the secrets page (VMPCK0 zeroed).
    pub const SECRETS1: u64 = 0x86_0000;
    /// Mailbox between VMPL0 and VMPL1 (private, VMPL1 read-write).
    pub const MAILBOX: u64 = 0x87_0000;
    /// A page VMPL1 tries to make a VMSA.
    pub const FAKE_VMSA2: u64 = 0x88_0000;
    /// VMPL1's page tables (5 pages).
    pub const PAGE_TABLES1: u64 = 0x89_0000;
}

/// Mailbox layout (u64 words).
pub mod mailbox {
    /// What VMPL1 asks of VMPL0 when it runs VMPL0.
    pub const CMD: usize = 0;
    /// Checks VMPL1 passed.
    pub const PASSED: usize = 1;
    /// Checks VMPL1 failed.
    pub const FAILED: usize = 2;
    /// Probe mode for VMPL1 (0 none, 1 read, 2 write) and its page index.
    pub const PROBE: usize = 3;
    /// Probe page index.
    pub const PROBE_ARG: usize = 4;
    /// Commands.
    pub const CMD_DONE: u64 = 1;
    /// Run me again at once (round-trip measurement).
    pub const CMD_PING: u64 = 2;
    /// Check my VMSA's RAX is 0x1111 and make it 0x2222.
    pub const CMD_EDIT_RAX: u64 = 3;
}

/// A private page through its identity mapping.
pub fn private<T>(gpa: u64) -> *mut T {
    gpa as *mut T
}

/// A shared page through the shared view.
pub fn shared<T>(gpa: u64) -> *mut T {
    (SHARED_VIEW + gpa) as *mut T
}

/// Read the u64 at virtual address `addr` (a page of the fixed layout above).
pub fn rd64(addr: u64) -> u64 {
    // SAFETY: callers pass addresses in pages the image maps (fixed layout above);
    // a page the RMP refuses stops the VM, which is what the probes test.
    unsafe { (addr as *const u64).read_volatile() }
}

/// Write the u64 at virtual address `addr`.
pub fn wr64(addr: u64, v: u64) {
    // SAFETY: as for `rd64`.
    unsafe { (addr as *mut u64).write_volatile(v) }
}

/// RDMSR.
pub fn rdmsr(msr: u32) -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: reading an MSR has no memory effects; a refused one raises #VC/#GP,
    // which the handlers of this runtime deal with.
    unsafe {
        core::arch::asm!("rdmsr", in("ecx") msr, out("eax") lo, out("edx") hi, options(nostack))
    };
    u64::from(lo) | (u64::from(hi) << 32)
}

/// WRMSR.
pub fn wrmsr(msr: u32, v: u64) {
    // SAFETY: the MSRs written here (the GHCB MSR) have no memory effects.
    unsafe {
        core::arch::asm!("wrmsr", in("ecx") msr, in("eax") v as u32, in("edx") (v >> 32) as u32, options(nostack))
    };
}

/// The GHCB MSR.
pub const MSR_GHCB: u32 = 0xC001_0130;

/// VMGEXIT (`rep vmmcall`).
pub fn vmgexit() {
    // SAFETY: VMGEXIT hands control to the host and returns; memory the host writes
    // (GHCB, shared pages) is read afterwards with volatile reads.
    unsafe { core::arch::asm!("rep vmmcall", options(nostack)) };
}

/// One MSR-protocol request: the response.
pub fn msr_protocol(request: u64) -> u64 {
    wrmsr(MSR_GHCB, request);
    vmgexit();
    rdmsr(MSR_GHCB)
}

/// The TSC (instructions under `-icount shift=0`).
pub fn tsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// GHCB field offsets.
pub mod off {
    /// RAX.
    pub const RAX: usize = 0x1F8;
    /// RCX.
    pub const RCX: usize = 0x308;
    /// RDX.
    pub const RDX: usize = 0x310;
    /// RBX.
    pub const RBX: usize = 0x318;
    /// SW_EXITCODE.
    pub const EXIT_CODE: usize = 0x390;
    /// SW_EXITINFO1.
    pub const INFO1: usize = 0x398;
    /// SW_EXITINFO2.
    pub const INFO2: usize = 0x3A0;
    /// XCR0.
    pub const XCR0: usize = 0x3E8;
    /// Valid bitmap.
    pub const VALID: usize = 0x3F0;
    /// Shared buffer.
    pub const BUFFER: usize = 0x800;
}

/// The GHCB page of this VMPL (its guest-physical address).
static GHCB: AtomicU64 = AtomicU64::new(0);

/// Use the GHCB at `gpa` (already shared and registered).
pub fn set_ghcb(gpa: u64) {
    GHCB.store(gpa, Ordering::SeqCst);
}

fn ghcb_ptr(at: usize) -> *mut u64 {
    (SHARED_VIEW + GHCB.load(Ordering::SeqCst) + at as u64) as *mut u64
}

/// A GHCB field.
pub fn ghcb_get(at: usize) -> u64 {
    rd64((ghcb_ptr(at)) as u64)
}

/// Whether the host marked a field valid.
pub fn ghcb_valid(at: usize) -> bool {
    let bit = at / 8;
    let byte = (SHARED_VIEW + GHCB.load(Ordering::SeqCst) + off::VALID as u64 + (bit / 8) as u64)
        as *const u8;
    // SAFETY: a byte of the registered GHCB page, mapped through the shared view.
    unsafe { byte.read_volatile() & (1 << (bit % 8)) != 0 }
}

/// Write a byte into the GHCB.
pub fn ghcb_put_byte(at: usize, v: u8) {
    let p = (SHARED_VIEW + GHCB.load(Ordering::SeqCst) + at as u64) as *mut u8;
    // SAFETY: a byte of the registered GHCB page.
    unsafe { p.write_volatile(v) };
}

/// One NAE event through the GHCB page: `fields` are set (and marked valid) besides
/// the exit code and infos; returns (SW_EXITINFO1, SW_EXITINFO2).
pub fn ghcb_call(code: u64, info1: u64, info2: u64, fields: &[(usize, u64)]) -> (u64, u64) {
    for i in 0..2 {
        wr64((ghcb_ptr(off::VALID + 8 * i)) as u64, 0);
    }
    let mark = |at: usize, v: u64| {
        wr64((ghcb_ptr(at)) as u64, v);
        let bit = at / 8;
        let word = ghcb_ptr(off::VALID + 8 * (bit / 64));
        wr64((word) as u64, rd64((word) as u64) | (1 << (bit % 64)));
    };
    mark(off::EXIT_CODE, code);
    mark(off::INFO1, info1);
    mark(off::INFO2, info2);
    for &(at, v) in fields {
        mark(at, v);
    }
    // Protocol version 2, usage 0.
    wr64((ghcb_ptr(0xFF8)) as u64, 2 << 16);
    wrmsr(MSR_GHCB, GHCB.load(Ordering::SeqCst));
    vmgexit();
    (ghcb_get(off::INFO1), ghcb_get(off::INFO2))
}

/// Make `gpa` shared with the MSR protocol; true on success.
pub fn psc_shared(gpa: u64) -> bool {
    let r = msr_protocol(0x014 | (2 << 52) | gpa);
    r & 0xFFF == 0x015 && r >> 32 == 0
}

/// Register `gpa` as this VMPL's GHCB; true when the host echoes it.
pub fn register_ghcb(gpa: u64) -> bool {
    msr_protocol(0x012 | gpa) == (0x013 | gpa)
}

struct Console;

impl Write for Console {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        for b in s.bytes() {
            ghcb_call(
                0x7B,
                (0x3F8 << 16) | (1 << 4),
                0,
                &[(off::RAX, u64::from(b))],
            );
        }
        Ok(())
    }
}

/// Print a line on COM1 through the GHCB.
pub fn print(args: core::fmt::Arguments<'_>) {
    let _ = Console.write_fmt(args);
    let _ = Console.write_str("\n");
}

/// `say!` prints one line.
#[macro_export]
macro_rules! say {
    ($($t:tt)*) => { $crate::print(format_args!($($t)*)) };
}

/// Print `bytes` as `LABEL index hex` lines of 64 bytes.
pub fn print_hex(label: &str, bytes: &[u8]) {
    for (i, chunk) in bytes.chunks(64).enumerate() {
        let mut line = [0u8; 128];
        for (k, b) in chunk.iter().enumerate() {
            line[2 * k] = b"0123456789abcdef"[usize::from(b >> 4)];
            line[2 * k + 1] = b"0123456789abcdef"[usize::from(b & 15)];
        }
        say!(
            "{label} {i} {}",
            core::str::from_utf8(&line[..2 * chunk.len()]).unwrap_or("")
        );
    }
}

/// Pass and fail counts.
#[derive(Debug, Default)]
pub struct Checks {
    /// Passed.
    pub passed: u64,
    /// Failed.
    pub failed: u64,
}

impl Checks {
    /// Record and print one check.
    pub fn check(&mut self, name: &str, ok: bool, detail: core::fmt::Arguments<'_>) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        say!("{} {name}: {detail}", if ok { "PASS" } else { "FAIL" });
    }
}

/// Last exception the handlers saw: vector, error code, and how many so far.
pub static LAST_VECTOR: AtomicU64 = AtomicU64::new(0);
/// Its error code.
pub static LAST_ERROR: AtomicU64 = AtomicU64::new(0);
/// Exceptions taken.
pub static EXCEPTIONS: AtomicU64 = AtomicU64::new(0);
/// Bytes the handler skips for a #VC/#GP/#UD it does not emulate (set by a test
/// before the instruction it expects to fault).
pub static SKIP: AtomicU64 = AtomicU64::new(0);
/// SW_EXITINFO1 of the last MSR the #VC handler asked the host for.
pub static LAST_MSR_INFO1: AtomicU64 = AtomicU64::new(0);

/// Forget the last exception.
pub fn clear_exception() {
    LAST_VECTOR.store(u64::MAX, Ordering::SeqCst);
    LAST_ERROR.store(u64::MAX, Ordering::SeqCst);
}

/// The last exception (vector, error code).
pub fn last_exception() -> (u64, u64) {
    (
        LAST_VECTOR.load(Ordering::SeqCst),
        LAST_ERROR.load(Ordering::SeqCst),
    )
}

/// Registers saved by the exception stub (pushed RAX first, R15 last).
#[repr(C)]
pub struct Frame {
    /// R15..R8, RBP, RDI, RSI, RDX, RCX, RBX, RAX (in this order in memory).
    pub gprs: [u64; 15],
    /// Vector.
    pub vector: u64,
    /// Error code.
    pub error: u64,
    /// RIP.
    pub rip: u64,
}

const RAX: usize = 14;
const RBX: usize = 13;
const RCX: usize = 12;
const RDX: usize = 11;

#[no_mangle]
extern "C" fn test_exception(f: &mut Frame) {
    EXCEPTIONS.fetch_add(1, Ordering::SeqCst);
    LAST_VECTOR.store(f.vector, Ordering::SeqCst);
    LAST_ERROR.store(f.error, Ordering::SeqCst);
    let skip = SKIP.swap(0, Ordering::SeqCst);
    match (f.vector, f.error) {
        (29, 0x72) => {
            let (leaf, sub) = (f.gprs[RAX] & 0xFFFF_FFFF, f.gprs[RCX] & 0xFFFF_FFFF);
            ghcb_call(
                0x72,
                0,
                0,
                &[(off::RAX, leaf), (off::RCX, sub), (off::XCR0, 1)],
            );
            f.gprs[RAX] = ghcb_get(off::RAX);
            f.gprs[RBX] = ghcb_get(off::RBX);
            f.gprs[RCX] = ghcb_get(off::RCX);
            f.gprs[RDX] = ghcb_get(off::RDX);
            f.rip += 2;
        }
        (29, 0x7C) => {
            let msr = f.gprs[RCX] & 0xFFFF_FFFF;
            let (i1, _) = ghcb_call(0x7C, 0, 0, &[(off::RCX, msr)]);
            LAST_MSR_INFO1.store(i1, Ordering::SeqCst);
            if i1 == 0 {
                f.gprs[RAX] = ghcb_get(off::RAX) & 0xFFFF_FFFF;
                f.gprs[RDX] = ghcb_get(off::RDX) & 0xFFFF_FFFF;
            }
            f.rip += 2;
        }
        (29 | 13 | 6, _) if skip > 0 => f.rip += skip,
        (v, e) => {
            say!(
                "FAIL unexpected exception {v} (error {e:#x}) at RIP {:#x}",
                f.rip
            );
            terminate(1);
        }
    }
}

core::arch::global_asm!(
    r#"
    .section .text.exc, "ax", @progbits
    .altmacro
    .macro texc n, err
    texc_\n:
    .if \err == 0
        pushq $0
    .endif
        pushq $\n
        jmp texc_common
    .endm
    texc 6, 0
    texc 13, 1
    texc 14, 1
    texc 29, 1
texc_common:
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
    call test_exception
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

    .section .rodata.texc, "a"
    .p2align 3
    .global test_exc_stubs
test_exc_stubs:
    .quad texc_6
    .quad texc_13
    .quad texc_14
    .quad texc_29
    "#,
    options(att_syntax)
);

/// GDT: null, 64-bit code (0x08), data (0x10).
static GDT: [u64; 3] = [0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF];

/// Load the GDT and segment registers, and an IDT with handlers for #UD, #GP,
/// #PF and #VC.
pub fn init_cpu() {
    extern "C" {
        static test_exc_stubs: [u64; 4];
    }
    static mut IDT: [u64; 64] = [0; 64];
    // SAFETY: called once at start, before any exception can be taken; the IDT
    // and GDT are statics that live forever; the stubs are valid handlers.
    unsafe {
        let idt = &mut *core::ptr::addr_of_mut!(IDT);
        for (i, v) in [6usize, 13, 14, 29].into_iter().enumerate() {
            let a = test_exc_stubs[i];
            idt[2 * v] = (a & 0xFFFF) | (0x08 << 16) | (0x8E00 << 32) | ((a >> 16) & 0xFFFF) << 48;
            idt[2 * v + 1] = a >> 32;
        }
        let gdtr: [u16; 5] = {
            let b = GDT.as_ptr() as u64;
            [
                23,
                b as u16,
                (b >> 16) as u16,
                (b >> 32) as u16,
                (b >> 48) as u16,
            ]
        };
        let idtr: [u16; 5] = {
            let b = idt.as_ptr() as u64;
            [
                511,
                b as u16,
                (b >> 16) as u16,
                (b >> 32) as u16,
                (b >> 48) as u16,
            ]
        };
        core::arch::asm!(
            "lgdt [{g}]",
            "lidt [{i}]",
            "mov ax, 0x10",
            "mov ds, ax",
            "mov es, ax",
            "mov ss, ax",
            "push 0x08",
            "lea rax, [rip + 2f]",
            "push rax",
            "retfq",
            "2:",
            g = in(reg) gdtr.as_ptr(),
            i = in(reg) idtr.as_ptr(),
            out("rax") _,
        );
    }
}

/// PVALIDATE: (EAX, CF).
pub fn pvalidate(va: u64, size: u32, validate: bool) -> (u32, bool) {
    let rax: u64;
    let cf: u8;
    // SAFETY: PVALIDATE changes only the RMP entry of the page (a faulting one is
    // handled by the exception handlers); it touches no memory.
    unsafe {
        core::arch::asm!(
            ".byte 0xF2, 0x0F, 0x01, 0xFF",
            "setc {cf}",
            cf = out(reg_byte) cf,
            inout("rax") va => rax,
            in("ecx") size,
            in("edx") u32::from(validate),
            options(nostack),
        );
    }
    (rax as u32, cf != 0)
}

/// RMPADJUST: EAX.
pub fn rmpadjust(va: u64, size: u64, perms: u8, vmpl: u8, vmsa: bool) -> u32 {
    let rax: u64;
    let attrs = u64::from(perms) | (u64::from(vmpl) << 8) | (u64::from(vmsa) << 16);
    // SAFETY: as for PVALIDATE.
    unsafe {
        core::arch::asm!(
            ".byte 0xF3, 0x0F, 0x01, 0xFE",
            inout("rax") va => rax,
            in("rcx") size,
            in("rdx") attrs,
            options(nostack),
        );
    }
    rax as u32
}

/// Ask the host to end the VM: GHCB MSR termination, reason set 1, `code`.
pub fn terminate(code: u64) -> ! {
    msr_protocol(0x100 | (1 << 12) | (code << 16));
    halt_forever()
}

/// A guest-message channel to the PSP on VMPCK `index`.
pub struct Psp {
    key: [u8; 32],
    index: u8,
    seq: u64,
    req: u64,
    rsp: u64,
}

/// Why a guest request failed: SW_EXITINFO1/2 of the NAE event, or a response that
/// does not check out.
#[derive(Debug, PartialEq, Eq)]
pub enum PspFail {
    /// The host or firmware failed it.
    Exit(u64, u64),
    /// The response did not authenticate or match.
    Response,
}

impl Psp {
    /// A channel using shared pages `req`/`rsp`.
    pub fn new(key: [u8; 32], index: u8, req: u64, rsp: u64) -> Self {
        Self {
            key,
            index,
            seq: 0,
            req,
            rsp,
        }
    }

    /// Send one message; the decrypted body into `out`. `certs`: the extended
    /// request with (buffer, pages); on `Exit`, RBX of the GHCB tells pages needed.
    pub fn request(
        &mut self,
        msg_type: u8,
        body: &[u8],
        out: &mut [u8],
        certs: Option<(u64, u64)>,
    ) -> Result<usize, PspFail> {
        let seq = self.seq + 1;
        let header = MsgHeader {
            msg_seqno: U64::new(seq),
            algo: AEAD_AES_256_GCM,
            hdr_version: HDR_VERSION,
            hdr_sz: U16::new(0x60),
            msg_type,
            msg_version: 1,
            msg_sz: U16::new(body.len() as u16),
            msg_vmpck: self.index,
            ..MsgHeader::new_zeroed()
        };
        let mut page = [0u8; 4096];
        page[..0x60].copy_from_slice(header.as_bytes());
        page[0x60..0x60 + body.len()].copy_from_slice(body);
        let mut iv = [0u8; 12];
        iv[..8].copy_from_slice(&seq.to_le_bytes());
        let cipher = Aes256Gcm::new((&self.key).into());
        let (head, rest) = page.split_at_mut(0x60);
        let tag = cipher
            .encrypt_in_place_detached((&iv).into(), &head[AAD_RANGE], &mut rest[..body.len()])
            .map_err(|_| PspFail::Response)?;
        head[..16].copy_from_slice(&tag);
        let dst: *mut [u8; 4096] = shared(self.req);
        // SAFETY: the request page is a shared page of the fixed layout.
        unsafe { dst.write_volatile(page) };
        let (i1, i2) = match certs {
            None => ghcb_call(0x8000_0011, self.req, self.rsp, &[]),
            Some((buf, pages)) => ghcb_call(
                0x8000_0012,
                self.req,
                self.rsp,
                &[(off::RAX, buf), (off::RBX, pages)],
            ),
        };
        if (i1, i2) != (0, 0) {
            return Err(PspFail::Exit(i1, i2));
        }
        let src: *const [u8; 4096] = shared(self.rsp);
        // SAFETY: the response page is a shared page of the fixed layout.
        let mut rsp = unsafe { src.read_volatile() };
        let h = MsgHeader::read_from_bytes(&rsp[..0x60]).map_err(|_| PspFail::Response)?;
        let len = usize::from(h.msg_sz.get());
        if h.msg_seqno.get() != seq + 1
            || h.msg_type != msg_type + 1
            || len > out.len()
            || len > 4096 - 0x60
        {
            return Err(PspFail::Response);
        }
        let mut iv = [0u8; 12];
        iv[..8].copy_from_slice(&(seq + 1).to_le_bytes());
        let mut tag = [0u8; 16];
        tag.copy_from_slice(&rsp[..16]);
        let (head, rest) = rsp.split_at_mut(0x60);
        cipher
            .decrypt_in_place_detached(
                (&iv).into(),
                &head[AAD_RANGE],
                &mut rest[..len],
                (&tag).into(),
            )
            .map_err(|_| PspFail::Response)?;
        out[..len].copy_from_slice(&rest[..len]);
        self.seq += 2;
        Ok(len)
    }
}
