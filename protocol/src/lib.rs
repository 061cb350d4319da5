//! Wire types shared by the Nitride firmware and the guest side.
//!
//! Everything here is plain data: constants, `#[repr(C)]` layouts with zerocopy
//! derives and a size assertion next to each, and small pure helpers. No unsafe code,
//! no allocation, no knowledge of the machine underneath (hardware or the virtual SNP
//! machine).
//!
//! - [`svsm`]: the SVSM calling convention, result codes, the calling area (CAA), the
//!   core protocol and the SVSM fields of the secrets page.
//! - [`attest`]: the SVSM attestation protocol, the services manifest, the vHSM's
//!   manifest entry and the AttestKey key binding.
//! - [`emulated`]: numbers of the guest contract and of the development PSP shared by
//!   the firmware, the guests, the virtual SNP machine and the runner: the
//!   boot-information page, ports, exit statuses, the dev-PSP blob (the name is the
//!   retired emulated platform's).
//! - [`launch_config`]: the measured launch configuration (vault policy, owner key).
//! - [`provision`]: the owner's envelope and the KBS runtime-data bytes.
//! - [`relay`]: framing between host tools and the relay guest.
//! - [`sealed`]: the sealed blob format (Seal, the vault's persistent state).
//! - [`snp`]: SEV-SNP attestation report, certificate table and guest-message layouts.
//! - [`vhsm`]: the vHSM request/response wire format.
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

#[cfg(test)]
extern crate std;

pub mod attest;
pub mod emulated;
pub mod launch_config;
pub mod provision;
pub mod relay;
pub mod sealed;
pub mod snp;
pub mod svsm;
pub mod vhsm;
