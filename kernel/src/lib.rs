//! The Nitride SVSM (being built: see the issue "Boot the SVSM in QEMU").
#![cfg_attr(not(test), no_std)]
