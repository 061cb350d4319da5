//! The machine's hardware layer: boot, console, exceptions, the PVH start info,
//! guest RAM, CPU instructions, and the SVM world switch. All unsafe code of
//! the machine is here, in small functions behind safe APIs.

pub mod boot;
pub mod svm;

use core::fmt::Write;

use nitride_rt::uart::Uart;
use nitride_snp_machine::{exit, GUEST_HOST_BASE, RAM_END};

/// The guests' console: COM1 (the machine prints their lines there, each prefixed
/// with the VMPL that wrote it).
pub const CONSOLE: Uart = Uart::new(0x3F8);

/// The host log: QEMU's debug console (`isa-debugcon`) on port 0xE9. The machine's
/// own lines go here, and so do the bytes VMPL0 (the SVSM) writes to that port; no
/// other VMPL reaches it.
#[derive(Clone, Copy, Debug)]
pub struct HostLog;

/// The host log's port.
pub const HOST_LOG_PORT: u16 = nitride_protocol::emulated::ports::SVSM_LOG;

impl HostLog {
    /// Write raw bytes to the host log.
    pub fn write_bytes(&self, bytes: &[u8]) {
        let mut port: x86_64::instructions::port::Port<u8> =
            x86_64::instructions::port::Port::new(HOST_LOG_PORT);
        for &b in bytes {
            // SAFETY: writing QEMU's debug console port touches no memory.
            unsafe { port.write(b) };
        }
    }
}

impl Write for HostLog {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Print one line on the host log, prefixed `[snp-machine] `.
pub fn log(args: core::fmt::Arguments<'_>) {
    let mut c = HostLog;
    let _ = c.write_str("[snp-machine] ");
    let _ = c.write_fmt(args);
    let _ = c.write_str("\n");
}

/// `log!` with format arguments.
#[macro_export]
macro_rules! log {
    ($($t:tt)*) => { $crate::arch::log(format_args!($($t)*)) };
}

/// Report and end QEMU with `status` (`nitride_snp_machine::exit`).
pub fn stop(status: u32, args: core::fmt::Arguments<'_>) -> ! {
    log(args);
    nitride_rt::exit_qemu(status)
}

/// Build the IDT from the exception stubs of `boot.rs` and load it.
pub fn load_idt() {
    extern "C" {
        static machine_exc_stubs: [u64; 32];
    }
    static IDT: spin::Once<[u64; 64]> = spin::Once::new();
    let idt = IDT.call_once(|| {
        let mut t = [0u64; 64];
        for v in 0..32 {
            // SAFETY: the stub table is 32 addresses in .rodata, written by the
            // linker and never changed.
            let addr = unsafe { machine_exc_stubs[v] };
            // Interrupt gate, present, DPL 0, selector 0x08 (boot GDT code).
            t[2 * v] =
                (addr & 0xFFFF) | (0x08 << 16) | (0x8E00 << 32) | ((addr >> 16) & 0xFFFF) << 48;
            t[2 * v + 1] = addr >> 32;
        }
        t
    });
    let ptr = x86_64::structures::DescriptorTablePointer {
        limit: (64 * 8 - 1) as u16,
        base: x86_64::VirtAddr::new(idt.as_ptr() as u64),
    };
    // SAFETY: the table lives forever (a `static`) and holds valid 64-bit gates.
    unsafe { x86_64::instructions::tables::lidt(&ptr) };
}

/// Called by the exception stubs: an exception in the machine itself.
#[no_mangle]
extern "C" fn machine_exception(vector: u64, error: u64, rip: u64) -> ! {
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    stop(
        exit::MACHINE_FATAL,
        format_args!("machine exception {vector} (error {error:#x}) at RIP {rip:#x}, CR2 {cr2:#x}"),
    )
}

/// The machine's PVH start info: its command line and the first module (the IGVM
/// file), both host-physical.
#[derive(Debug, Default)]
pub struct StartInfo {
    /// The module's address and size.
    pub module: Option<(u64, u64)>,
    /// The command line (`-append`), at most 4 KiB.
    pub cmdline: alloc::vec::Vec<u8>,
}

fn phys_slice(pa: u64, len: usize) -> &'static [u8] {
    // SAFETY: PVH start info, module list, command line and module are in RAM the
    // loader filled below 4 GiB, identity mapped by `boot.rs`, never written by the
    // machine; callers bound `len` by what the loader says.
    unsafe { core::slice::from_raw_parts(pa as *const u8, len) }
}

/// Read the PVH start info at `pa`.
pub fn start_info(pa: u64) -> StartInfo {
    let head = phys_slice(pa, 0x38);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(x)
    };
    let mut info = StartInfo::default();
    if u32_at(head, 0) != 0x336E_C578 {
        return info;
    }
    if u32_at(head, 12) > 0 {
        let m = phys_slice(u64_at(head, 16), 32);
        info.module = Some((u64_at(m, 0), u64_at(m, 8)));
    }
    let cmdline = u64_at(head, 24);
    if cmdline != 0 {
        let s = phys_slice(cmdline, 4096);
        let len = s.iter().position(|&b| b == 0).unwrap_or(0);
        info.cmdline = s[..len].to_vec();
    }
    info
}

/// The IGVM module's bytes.
pub fn module_bytes(pa: u64, len: u64) -> &'static [u8] {
    phys_slice(pa, len as usize)
}

/// Guest RAM: host-physical `GUEST_HOST_BASE ..+ RAM_END`, reserved for the guest.
pub fn guest_ram() -> &'static mut [u8] {
    static TAKEN: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    assert!(
        !TAKEN.swap(true, core::sync::atomic::Ordering::SeqCst),
        "guest RAM taken twice"
    );
    // SAFETY: the region lies above the machine's image (link.ld asserts the bound),
    // is identity mapped by `boot.rs`, and is handed out once (checked above); the
    // machine checks at boot that QEMU has RAM there and that the PVH module does
    // not overlap it.
    unsafe { core::slice::from_raw_parts_mut(GUEST_HOST_BASE as *mut u8, RAM_END as usize) }
}

/// Copy `src` into `dst` eight bytes at a time (`rep movsq`: under `-icount` one
/// count per word, not per byte).
pub fn copy_words(dst: &mut [u8], src: &[u8]) {
    assert!(
        dst.len() == src.len() && src.len().is_multiple_of(8),
        "copy_words: lengths"
    );
    // SAFETY: both slices are valid for `len` bytes and do not overlap (one is
    // borrowed mutably); `rep movsq` copies exactly len / 8 words forwards (DF is
    // clear in the machine).
    unsafe {
        core::arch::asm!(
            "rep movsq",
            inout("rcx") src.len() / 8 => _,
            inout("rdi") dst.as_mut_ptr() => _,
            inout("rsi") src.as_ptr() => _,
            options(nostack, preserves_flags),
        );
    }
}

/// CPUID of the real (emulated) processor.
pub fn cpuid(leaf: u32, sub: u32) -> [u32; 4] {
    let r = core::arch::x86_64::__cpuid_count(leaf, sub);
    [r.eax, r.ebx, r.ecx, r.edx]
}

/// The TSC (under `-icount shift=0`: instructions executed).
pub fn tsc() -> u64 {
    // SAFETY: RDTSC has no side effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Set XCR0 (the caller checked the value against CPUID).
pub fn set_xcr0(value: u64) {
    // SAFETY: CR4.OSXSAVE is set at boot; the callers pass only x87|SSE with AVX
    // where CPUID reports it, so XSETBV cannot fault. XCR0 affects only which state
    // XSAVE/XRSTOR and AVX instructions use; the machine's code uses neither.
    unsafe {
        core::arch::asm!("xsetbv", in("ecx") 0u32, in("eax") value as u32, in("edx") (value >> 32) as u32, options(nomem, nostack));
    }
}

/// XCR0.
pub fn xcr0() -> u64 {
    // SAFETY: CR4.OSXSAVE is set at boot, so XGETBV(0) cannot fault.
    unsafe { core::arch::x86_64::_xgetbv(0) }
}

/// 32 random bytes from RDRAND, if the CPU has it.
pub fn random32() -> Option<[u8; 32]> {
    let rd = x86_64::instructions::random::RdRand::new()?;
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        let v = (0..10).find_map(|_| rd.get_u64())?;
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    Some(out)
}

/// Host RAM size check: the page at the end of guest RAM must be RAM (QEMU's `-m`
/// at least `GUEST_HOST_BASE + RAM_END`), which the PVH memory map says.
pub fn ram_covers(start_info_pa: u64, end: u64) -> bool {
    let head = phys_slice(start_info_pa, 0x38);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let u64_at = |b: &[u8], o: usize| {
        let mut x = [0u8; 8];
        x.copy_from_slice(&b[o..o + 8]);
        u64::from_le_bytes(x)
    };
    if u32_at(head, 4) < 1 {
        return false;
    }
    let (map, n) = (u64_at(head, 0x28), u32_at(head, 0x30) as usize);
    let entries = phys_slice(map, n.min(128) * 24);
    entries.chunks(24).any(|e| {
        let (addr, size, ty) = (u64_at(e, 0), u64_at(e, 8), u32_at(e, 16));
        ty == 1 && addr <= GUEST_HOST_BASE && addr.saturating_add(size) >= end
    })
}
