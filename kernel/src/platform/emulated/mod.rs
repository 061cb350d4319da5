//! The emulated platform's pure parts (the SVSM drives AMD-V itself and plays the
//! hypervisor; `docs/emulated-platform.md`): the guest image and the fixed pages it
//! is started with, the decoder of the instructions the SVSM completes, and the
//! channel to the emulated PSP. The world switch and the exit handling are in the
//! firmware (`src/arch/svm.rs`).
//!
//! - [`elf`]: parsing the guest image.
//! - [`guest_setup`]: the secrets, boot-info and page-table pages given to the guest.
//! - [`launch`]: loading the guest image and writing the fixed guest pages.
//! - [`insn`]: decoding the guest instructions the SVSM completes itself, through a
//!   walk of the guest's page tables.
//! - [`psp`]: the channel to the emulated AMD Secure Processor (crate
//!   `nitride-emulated-psp`).

pub mod elf;
pub mod guest_setup;
pub mod insn;
pub mod launch;
pub mod psp;
