//! The Nitride SVSM's platform-independent core, tested on the host.
//!
//! The core, which knows no platform:
//! - [`svsm`]: the request loop and the protocols it serves, each in its own module
//!   (core, attestation, vHSM).
//! - [`memory`]: guest RAM and the checked constructor for guest ranges.
//! - [`platform`]: the [`platform::Platform`] trait, the seam to the hardware, and
//!   the SNP platform's pure parts ([`platform::snp`]).
//! - [`psp`]: the PSP guest-message client (attestation reports, derived keys).
//! - [`npt`]: identity page-table construction (the SVSM's own W^X tables).
//! - [`cmdline`]: the SVSM command line.
//! - [`measure`]: the digest of the SVSM's code and read-only data (the boot log's
//!   self-check; the launch digest is the PSP's).
//!
//! The firmware binary (`src/main.rs` and `src/arch/`) adds boot from IGVM, the CPU
//! tables, the console and the hardware side of the SNP platform; all unsafe code
//! lives there.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod cmdline;
pub mod measure;
pub mod memory;
pub mod npt;
pub mod platform;
pub mod psp;
pub mod svsm;
