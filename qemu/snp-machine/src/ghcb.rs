//! The GHCB protocol as the machine serves it: the layouts and codes are
//! `nitride_protocol::snp::ghcb` (shared with the SVSM and the guest driver); what
//! this host offers is here.

pub use nitride_protocol::snp::ghcb::*;

/// The GHCB protocol versions served (2: SEV-SNP).
pub const PROTOCOL_MIN: u64 = 2;
/// Highest version served.
pub const PROTOCOL_MAX: u64 = 2;
/// Hypervisor features: SEV-SNP (bit 0), AP creation (bit 1).
pub const HV_FEATURES: u64 = hv_features::SNP | hv_features::AP_CREATION;
