//! The Nitride SVSM's platform-independent core, tested on the host.
//!
//! - [`memory`]: guest RAM and the checked constructor for guest ranges.
//! - [`platform`]: the [`platform::Platform`] trait, the seam to the hardware.
//! - [`svsm`]: the request loop and the core protocol.
//! - [`insn`]: decoding the guest instructions the SVSM completes itself, through a
//!   walk of the guest's page tables.
//! - [`refusals`]: rate-limited reporting of refused guest accesses.
//! - [`attest`]: the SVSM attestation protocol (protocol 1).
//! - [`npt`]: nested page-table construction (which guest addresses exist).
//! - [`elf`]: parsing the guest image.
//! - [`guest_setup`]: the secrets, boot-info and page-table pages given to the guest.
//! - [`launch`]: loading the guest image and writing the fixed guest pages.
//! - [`cmdline`]: the SVSM command line.
//! - [`measure`]: the launch measurement (SVSM and guest image digests).
//! - [`psp`]: the PSP guest-message client (attestation reports, derived keys).
//! - [`emulated_psp`]: the emulated platform's channel to the emulated AMD Secure
//!   Processor (crate `nitride-emulated-psp`).
//!
//! The firmware binary (`src/main.rs` and `src/arch/`) adds boot, the CPU tables,
//! the console and the emulated platform; all unsafe code lives there.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod attest;
pub mod cmdline;
pub mod elf;
pub mod emulated_psp;
pub mod guest_setup;
pub mod insn;
pub mod launch;
pub mod measure;
pub mod memory;
pub mod npt;
pub mod platform;
pub mod psp;
pub mod refusals;
pub mod svsm;
