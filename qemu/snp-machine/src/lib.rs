//! The virtual SNP machine's architecture, in pure Rust, tested on the host.
//!
//! The machine (`src/main.rs` and `src/arch/`, built as a bare-metal image that QEMU
//! boots through PVH) plays the host, the SEV-SNP hardware and the PSP for one
//! confidential VM launched from an IGVM file. Everything it decides is decided here,
//! where the host tests can reach it; `src/arch/` only moves bytes and runs VMRUN.
//! `docs/snp-machine.md` says what is faithful to hardware and what is simplified.
//!
//! - [`igvm`]: the IGVM file, parsed with the `igvm_defs` layouts (the `igvm` crate
//!   needs `std`), and the launch rules KVM and QEMU impose.
//! - [`measure`]: the launch digest as the PSP chains it.
//! - [`rmp`]: the reverse map table and the SNP instructions on it (PVALIDATE,
//!   RMPADJUST), and page state changes.
//! - [`vmsa`]: VMSA layout and the checks on a VMSA before it runs.
//! - [`ghcb`]: GHCB MSR protocol and GHCB page layout and codes.
//! - [`cpuid`]: the CPUID the guest sees, the CPUID page and the secrets page.
//! - [`decode`]: the few instructions the machine decodes itself.
//! - [`exit`]: how the machine ends the QEMU process.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod cpuid;
pub mod decode;
pub mod ghcb;
pub mod igvm;
pub mod measure;
pub mod rmp;
pub mod vmsa;

/// The C-bit position the machine reports in CPUID 0x8000_001F EBX[5:0]: guest
/// physical addresses with this bit set are the private view of a page.
pub const C_BIT: u32 = 47;
/// The C-bit as a mask.
pub const C_MASK: u64 = 1 << C_BIT;
/// Guest RAM: guest-physical 0 up to this address (64 MiB), in 4 KiB pages.
pub const RAM_END: u64 = 0x400_0000;
/// Pages of guest RAM.
pub const RAM_PAGES: usize = (RAM_END / 4096) as usize;
/// Where KVM places the launch VMSA, outside guest RAM.
pub const LAUNCH_VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
/// SEV features of the VM (VMSA `sev_features`): SNPActive only.
pub const SEV_FEATURES: u64 = 1;
/// SEV_STATUS (MSR 0xC001_0131) of the guest: SEV, SEV-ES, SEV-SNP.
pub const SEV_STATUS: u64 = 0b111;
/// VMPLs.
pub const VMPLS: usize = 4;
/// The host-physical address of guest-physical 0: guest RAM is one contiguous
/// block of host memory above the machine's own 127 MiB.
pub const GUEST_HOST_BASE: u64 = 0x800_0000;

/// How the machine ends the QEMU process (`isa-debug-exit`: QEMU exits with
/// `value << 1 | 1`). The host log (port 0xE9) says why.
pub mod exit {
    /// The machine failed (a bug, no SVM, or no valid dev-PSP blob in fw_cfg).
    pub const MACHINE_FATAL: u32 = 0x40;
    /// The IGVM file was refused: nothing ran.
    pub const LAUNCH_REFUSED: u32 = 0x41;
    /// A VMPL touched a page the RMP does not let it touch.
    pub const VIOLATION: u32 = 0x42;
    /// The VM stopped: halted, shut down, or did what the machine does not emulate.
    pub const GUEST_STOPPED: u32 = 0x43;
    /// The guest asked to be terminated (GHCB termination request; the requesting
    /// VMPL, reason set and code in the host log).
    pub const TERMINATED: u32 = 0x44;

    /// QEMU's exit status for `value`.
    pub const fn qemu_status(value: u32) -> i32 {
        ((value << 1) | 1) as i32
    }
}

/// Lowercase hex of `bytes` into `out` (two characters a byte), for the host log.
pub fn hex<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = bytes.len().min(out.len() / 2);
    for (i, b) in bytes[..n].iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xF)];
    }
    core::str::from_utf8(&out[..2 * n]).unwrap_or("")
}
