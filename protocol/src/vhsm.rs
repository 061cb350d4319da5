//! The vHSM wire format.
//!
//! Not yet filled: see the issue "The vault: keys, operations, policy and the vHSM
//! wire protocol".
