//! The guest side of Nitride.
//!
//! - [`call`]: making SVSM calls through a [`call::Transport`] (VMMCALL on the
//!   emulated platform), and discovering the SVSM from the secrets page.
//!
//! The core is `no_std`; the `std` feature adds the command-line tool.
#![cfg_attr(not(feature = "std"), no_std)]

pub mod call;
