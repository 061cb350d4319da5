//! The guest side of Nitride.
//!
//! - [`call`]: making SVSM calls through a [`call::Transport`] (VMMCALL on the
//!   emulated platform), and discovering the SVSM from the secrets page.
//! - [`verify`]: verifying SEV-SNP attestation reports and their AMD endorsement
//!   chains, then appraising them against a caller's policy (no_std + alloc).
//! - [`cli`] (feature `std`): the `nitride` command-line tool.
//!
//! The core is `no_std`; the `std` feature adds the command-line tool.
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

pub mod call;
pub mod verify;

#[cfg(feature = "std")]
pub mod cli;
