//! The SNP platform's hardware side, all its unsafe code in small modules behind safe
//! APIs (the decisions are in `nitride_kernel::platform::snp`, tested on the host):
//!
//! - [`boot`]: the 32-bit entry from the IGVM launch, the bootstrap page tables with
//!   the C-bit, validating `.bss`;
//! - [`insn`]: the GHCB MSR, VMGEXIT, SEV_STATUS, PVALIDATE and RMPADJUST (the RMP
//!   operations);
//! - [`ghcb`]: the SVSM's GHCB page and its NAE events;
//! - [`vc`]: the #VC handler (CPUID from the CPUID page, guest-copy fixups);
//! - [`guest_mem`]: copies to and from guest memory;
//! - [`psp`]: guest requests to the PSP through the GHCB;
//! - [`platform`]: the [`nitride_kernel::platform::Platform`] the request loop runs
//!   on (SNP_RUN_VMPL, the guest's VMSA).

pub mod boot;
pub mod ghcb;
pub mod guest_mem;
pub mod insn;
pub mod platform;
pub mod psp;
pub mod vc;
