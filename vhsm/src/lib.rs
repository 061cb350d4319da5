//! The Nitride vault (not yet filled: see the issue "The vault: keys, operations,
//! policy and the vHSM wire protocol").
#![no_std]
#![forbid(unsafe_code)]
