//! The guest side of Nitride.
//!
//! - [`attest`]: the SVSM attestation protocol (protocol 1) client for guest kernels.
//! - [`call`]: making SVSM calls through a [`call::Transport`] (VMGEXIT with
//!   SNP_RUN_VMPL, through the GHCB MSR or a GHCB page), and discovering the SVSM from
//!   the secrets page.
//! - [`verify`]: verifying SEV-SNP attestation reports and their AMD endorsement
//!   chains, then appraising them against a caller's policy (no_std + alloc).
//! - [`vhsm`]: the typed vHSM client over any request transport.
//! - [`relay`] (feature `std`): the host's end of the relay channel to the relay guest.
//! - [`cli`] (feature `std`): the `nitride` command-line tool.
//!
//! The core is `no_std`; the `std` feature adds the command-line tool.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod attest;
pub mod call;
#[cfg(feature = "std")]
pub mod cli;
#[cfg(feature = "std")]
pub mod kbs;
#[cfg(feature = "std")]
pub mod relay;
pub mod verify;
pub mod vhsm;
