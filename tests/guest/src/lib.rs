//! Runtime shared by the bare-metal guests (`test-guest`, `relay-guest`): the entry
//! stub (own stack, then `guest_main(boot_info_gpa, secrets_gpa)` as the guest
//! contract passes them in RDI/RSI), console output, the boot-info command line,
//! SVSM discovery, a heap, the SVSM call transport, ending the run, and the panic
//! handler. The guests are SEV-SNP guests at a VMPL below the SVSM ([`snp`]).
#![no_std]

use core::fmt::Write;
use nitride_protocol::emulated::{boot_info, exit, ports};
use nitride_protocol::svsm::{CallRegs, SvsmInfo};
use nitride_rt::uart::Uart;

pub mod snp;

/// The SVSM call transport: VMGEXIT with SNP_RUN_VMPL(0) through the GHCB MSR.
pub type CallTransport = nitride_guest_driver::call::GhcbMsrTransport;

/// The transport with the calling area at `caa`.
///
/// # Safety
///
/// `caa` must be the guest's calling-area page, identity mapped and writable.
pub unsafe fn transport(caa: u64) -> CallTransport {
    // SAFETY: the caller's promise; this guest is an SEV-SNP guest, the platform the
    // transport is for.
    unsafe { CallTransport::new(caa as *mut u8) }
}

/// Enter the SVSM with `regs` without setting `call_pending` (what a guest that
/// forgets the CAA protocol does): the registers afterwards.
pub fn raw_call(t: &mut CallTransport, regs: CallRegs) -> CallRegs {
    t.run_vmpl0_raw(regs).0
}

/// End the run with `status` (a status of the guest's range,
/// `nitride_protocol::emulated::exit`): a GHCB termination request, which the host
/// reports with the requesting VMPL.
pub fn exit_qemu(status: u32) -> ! {
    snp::terminate(status)
}

/// The guest heap (guest-driver's clients allocate).
#[global_allocator]
static ALLOCATOR: linked_list_allocator::LockedHeap = linked_list_allocator::LockedHeap::empty();

const HEAP_SIZE: usize = 1 << 20;
static mut HEAP: [core::mem::MaybeUninit<u8>; HEAP_SIZE] =
    [core::mem::MaybeUninit::uninit(); HEAP_SIZE];
pub use nitride_rt::halt_forever;

core::arch::global_asm!(
    r#"
    .section .text.entry, "ax", @progbits
    .global _start
_start:
    leaq guest_stack_top(%rip), %rsp
    call guest_main
    ud2

    .section .bss.stack, "aw", @nobits
    .p2align 4
guest_stack:
    .skip 64 * 1024
guest_stack_top:
    "#,
    options(att_syntax)
);

/// Print one `[guest]` line on COM1.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::print_line(format_args!($($arg)*))
    };
}

/// Print one `[guest]` line on COM1 (use [`say!`]).
pub fn print_line(args: core::fmt::Arguments<'_>) {
    let mut u = Uart::new(ports::COM1);
    let _ = u.write_str("[guest] ");
    let _ = writeln!(u, "{args}");
}

/// Print one line on COM1 exactly as given (a guest may print anything there).
pub fn print_raw(line: &str) {
    let mut u = Uart::new(ports::COM1);
    let _ = writeln!(u, "{line}");
}

/// Read a fixed guest page the SVSM prepared.
pub fn fixed_page(gpa: u64) -> &'static [u8; 4096] {
    // SAFETY: the guest contract puts the secrets and boot-info pages at these
    // identity-mapped addresses before the guest starts; nothing writes them later.
    unsafe { &*(gpa as *const [u8; 4096]) }
}

/// The guest command line from the boot-info page.
pub fn cmdline(boot_info_gpa: u64) -> &'static str {
    let page = fixed_page(boot_info_gpa);
    let magic = u32::from_le_bytes([page[0], page[1], page[2], page[3]]);
    if magic != boot_info::MAGIC {
        return "";
    }
    let len = u32::from_le_bytes([page[4], page[5], page[6], page[7]]) as usize;
    let bytes = page
        .get(boot_info::CMDLINE_OFFSET..boot_info::CMDLINE_OFFSET + len)
        .unwrap_or(&[]);
    core::str::from_utf8(bytes).unwrap_or("")
}

/// Set up the console and find the SVSM (exits with GUEST_FAIL when there is none).
pub fn start(secrets_gpa: u64) -> SvsmInfo {
    snp::init();
    Uart::new(ports::COM1).init();
    // SAFETY: `start` runs once, first thing, so this is the only reference to HEAP.
    ALLOCATOR
        .lock()
        .init_from_slice(unsafe { &mut *core::ptr::addr_of_mut!(HEAP) });
    match SvsmInfo::from_secrets_page(fixed_page(secrets_gpa)) {
        Ok(i) => i,
        Err(e) => {
            say!("no SVSM: {e:?}");
            exit_qemu(exit::GUEST_FAIL)
        }
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    say!("panic: {info}");
    exit_qemu(exit::GUEST_FAIL)
}
