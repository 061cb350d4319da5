//! The SNP platform's pure parts (`docs/real-snp.md`, `docs/guest-contract.md`): the
//! SVSM runs at VMPL0 of an SEV-SNP guest launched from an IGVM file; its guest runs
//! at a lower VMPL. What is decided here is tested on the host; the firmware's
//! `src/arch/snp/` only executes the SNP instructions (VMGEXIT, PVALIDATE,
//! RMPADJUST), handles #VC and moves bytes.
//!
//! - [`cpuid`]: the CPUID page, which answers the SVSM's CPUID instructions.
//! - [`memmap`]: guest RAM from the host's IGVM memory map.
//! - [`guest_setup`]: the guest's secrets page, initial page tables and VMSA.

pub mod cpuid;
pub mod guest_setup;
pub mod memmap;
