//! The Nitride vault: key store, policy, operations, audit log and request dispatcher.
//!
//! This crate is the vHSM's heart, linked into the SVSM firmware and tested on the
//! host. It is `no_std` + `alloc`, contains no unsafe code and knows nothing of SEV-SNP:
//! everything it needs from the machine comes through the small [`Platform`] trait.
//!
//! - [`Vault`] (module [`vault`]): the bounded key store and the typed operations, each
//!   enforcing the caller's VMPL, the key's usage flags, exportability and the vault's
//!   [`VaultPolicy`].
//! - [`Vault::handle`] / [`Vault::handle_with`] (module [`dispatch`]): decodes a wire
//!   request ([`nitride_protocol::vhsm`]), runs it, records it in the audit log and
//!   encodes the response. Never panics on any input. AttestKey reports come from an
//!   [`Attester`] the kernel passes with each request.
//! - [`Vault::manifest`]: the vHSM's attestation manifest (the vault policy, the audit
//!   log's count and chain, the vault identity key and every attestable key), which
//!   the SVSM attestation protocol binds into a report.
//! - [`key`]: key material (zeroized on drop, `[REDACTED]` in `Debug`) and the
//!   cryptography on it.
//! - [`drbg`]: the HMAC-DRBG (SP 800-90A, HMAC-SHA-384) every random byte comes from.
//! - [`audit`]: the bounded audit ring and the hash chain over every entry.
//! - [`provision`]: provisioning from a Key Broker Service: the session key, the
//!   runtime data, the JWE and the owner-signed envelope.
//! - [`seal`]: sealed blobs (Seal/Unseal, the vault's persistent state) under keys the
//!   PSP derives at VMPL0 ([`Attester::sealing_key`]).
//!
//! `docs/vault.md` describes the design; `docs/vhsm-protocol.md` the wire format.
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

extern crate alloc;

use alloc::vec::Vec;

use zeroize::Zeroizing;

pub mod audit;
pub mod dispatch;
pub mod drbg;
pub mod key;
pub mod provision;
mod scrub;
pub mod seal;
pub mod vault;

#[cfg(test)]
mod tests;

use nitride_protocol::launch_config::{LaunchConfig, LaunchPolicy, OWNER_KEY_LEN};
#[cfg(test)]
mod seal_tests;

pub use nitride_protocol::vhsm::{KeyType, KeyUsage, Origin, Status, VaultPolicyFlags, VmplSet};
pub use vault::{KeyInfo, KeySpec, Vault};

/// Why the platform could not serve a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlatformError {
    /// The entropy source failed or is unavailable.
    EntropyUnavailable,
}

/// What the vault needs from the machine it runs on; the kernel implements it.
///
/// Only entropy for now; attestation reports and derived keys arrive with the
/// attestation and sealing work.
pub trait Platform {
    /// Fill `out` with full-entropy bytes, or fail.
    fn entropy(&mut self, out: &mut [u8]) -> Result<(), PlatformError>;
}

/// Attestation evidence from the platform's PSP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evidence {
    /// The attestation report (0x4A0 bytes, `snp::AttestationReport`).
    pub report: Vec<u8>,
    /// The certificate table (`snp::certs` layout), or empty when none was asked
    /// for or the platform has none.
    pub certificates: Vec<u8>,
}

/// Why the platform could not attest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttestError {
    /// This platform has no PSP (or no channel to it).
    Unavailable,
    /// The PSP channel was shut after a failure (the VMPCK was wiped).
    Disabled,
    /// The PSP stayed busy.
    Busy,
    /// The PSP or the hypervisor returned an error.
    Failed,
}

/// Produces VMPL0 attestation reports for the vault. The kernel passes one with
/// each request, so that the vault never holds the platform.
pub trait Attester {
    /// A report at VMPL 0 with `report_data` in REPORT_DATA; with the certificate
    /// table when `certificates` is set.
    fn report(
        &mut self,
        report_data: &[u8; 64],
        certificates: bool,
    ) -> Result<Evidence, AttestError>;

    /// The TCB sealing keys are derived at now (the raw 8 bytes of the chip's
    /// committed TCB_VERSION). The default: no PSP.
    fn sealing_tcb(&mut self) -> Result<[u8; 8], AttestError> {
        Err(AttestError::Unavailable)
    }

    /// The sealing key at `tcb`: the PSP's MSG_KEY_REQ answer to
    /// `nitride_protocol::sealed::sealing_key_request(tcb)` (root VCEK, KEY_SEL VCEK,
    /// VMPL 0, guest policy, measurement and TCB mixed in). An error status, or a
    /// `tcb` above the committed TCB, is an error. The default: no PSP.
    fn sealing_key(&mut self, tcb: [u8; 8]) -> Result<Zeroizing<[u8; 32]>, AttestError> {
        let _ = tcb;
        Err(AttestError::Unavailable)
    }
}

/// An [`Attester`] for platforms without a PSP: every request fails.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAttester;

impl Attester for NoAttester {
    fn report(&mut self, _: &[u8; 64], _: bool) -> Result<Evidence, AttestError> {
        Err(AttestError::Unavailable)
    }
}

/// Vault-wide policy, fixed at construction and reported in the vHSM manifest
/// ([`VaultPolicy::flags`], and the digest of the launch configuration it comes
/// from: [`VaultPolicy::launch_config`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VaultPolicy {
    /// Whether plaintext key material may be imported (`Import`). Off by default:
    /// keys then enter the vault only generated, derived or wrapped.
    pub allow_plaintext_import: bool,
    /// Whether provisioning accepts envelopes no owner signed (only when no owner
    /// key is configured). Off by default.
    pub allow_unauthenticated_provisioning: bool,
    /// The owner's P-384 public key (uncompressed SEC1): provisioned envelopes must
    /// carry its signature. `Vault::new` refuses a point not on the curve.
    pub owner_key: Option<[u8; OWNER_KEY_LEN]>,
}

impl VaultPolicy {
    /// The policy a measured launch configuration sets.
    pub fn from_launch_config(config: &LaunchConfig) -> Self {
        Self {
            allow_plaintext_import: config.policy.contains(LaunchPolicy::PLAINTEXT_IMPORT),
            allow_unauthenticated_provisioning: config
                .policy
                .contains(LaunchPolicy::UNAUTHENTICATED_PROVISIONING),
            owner_key: config.owner_key,
        }
    }

    /// The launch configuration of this policy (whose digest the manifest carries).
    pub fn launch_config(&self) -> LaunchConfig {
        let mut policy = LaunchPolicy::empty();
        policy.set(LaunchPolicy::PLAINTEXT_IMPORT, self.allow_plaintext_import);
        policy.set(
            LaunchPolicy::UNAUTHENTICATED_PROVISIONING,
            self.allow_unauthenticated_provisioning,
        );
        LaunchConfig {
            policy,
            owner_key: self.owner_key,
        }
    }

    /// The policy as the manifest reports it.
    pub fn flags(self) -> VaultPolicyFlags {
        let mut flags = VaultPolicyFlags::empty();
        flags.set(
            VaultPolicyFlags::PLAINTEXT_IMPORT,
            self.allow_plaintext_import,
        );
        flags.set(
            VaultPolicyFlags::UNAUTHENTICATED_PROVISIONING,
            self.allow_unauthenticated_provisioning,
        );
        flags.set(VaultPolicyFlags::OWNER_KEY, self.owner_key.is_some());
        flags
    }
}

/// The identity of a request's sender, as established by the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    vmpl: u8,
}

impl Caller {
    /// The SVSM itself (VMPL0).
    pub const SVSM: Self = Self { vmpl: 0 };

    /// A caller running at `vmpl` (0 to 3); `None` otherwise.
    pub const fn new(vmpl: u8) -> Option<Self> {
        if vmpl < 4 {
            Some(Self { vmpl })
        } else {
            None
        }
    }

    /// The caller's VMPL.
    pub const fn vmpl(self) -> u8 {
        self.vmpl
    }

    /// The caller's VMPL as a one-element set.
    pub fn as_set(self) -> VmplSet {
        VmplSet::from_bits_truncate(1 << self.vmpl)
    }
}

/// Why an operation failed. Each maps to one wire [`Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A parameter is out of range (type, usage, VMPL set, label, length).
    InvalidParameter,
    /// No such key, or none the caller's VMPL may use (the vault never tells the
    /// two apart; the wire's `AccessDenied` status is not used).
    KeyNotFound,
    /// The key's usage flags do not permit the operation.
    UsageNotPermitted,
    /// The key (or, for derivation, its parent) is not exportable.
    NotExportable,
    /// The vault policy forbids it (plaintext import, widening access by derivation).
    PolicyDenied,
    /// The key store is full or key ids are exhausted.
    CapacityExceeded,
    /// The key's type does not support the operation.
    WrongKeyType,
    /// Key material of the wrong length or not a valid key.
    InvalidKeyMaterial,
    /// A signature or MAC did not verify.
    SignatureInvalid,
    /// An AES-GCM tag or RFC 5649 integrity check failed.
    AuthenticationFailed,
    /// The key's AES-GCM nonce space is used up.
    NonceLimitReached,
    /// The platform could not provide entropy.
    Entropy,
    /// The response would exceed its maximum size.
    TooLarge,
    /// The platform could not produce an attestation report.
    AttestationUnavailable,
    /// The platform could not derive a sealing key.
    SealingUnavailable,
    /// A sealed blob is malformed or does not open.
    SealedBlobInvalid,
    /// The blob's unsealing rule excludes the caller's VMPL.
    SealRuleDenied,
    /// ImportState into a vault that holds keys.
    VaultNotEmpty,
    /// ImportState of a state older than one seen in this boot.
    StateRollback,
    /// ProvisionFinish without an open session.
    NoSession,
    /// The JWE is malformed, not addressed to the session key, or does not decrypt.
    JweInvalid,
    /// The envelope is malformed or its signature is not the owner key's.
    EnvelopeInvalid,
    /// The envelope's authority is not what the measured policy demands.
    Unauthenticated,
}

impl Error {
    /// The status a response carries for this error.
    pub const fn status(self) -> Status {
        match self {
            Self::InvalidParameter => Status::InvalidParameter,
            Self::KeyNotFound => Status::KeyNotFound,
            Self::UsageNotPermitted => Status::UsageNotPermitted,
            Self::NotExportable => Status::NotExportable,
            Self::PolicyDenied => Status::PolicyDenied,
            Self::CapacityExceeded => Status::CapacityExceeded,
            Self::WrongKeyType => Status::WrongKeyType,
            Self::InvalidKeyMaterial => Status::InvalidKeyMaterial,
            Self::SignatureInvalid => Status::SignatureInvalid,
            Self::AuthenticationFailed => Status::AuthenticationFailed,
            Self::NonceLimitReached => Status::NonceLimitReached,
            Self::Entropy => Status::EntropyFailure,
            Self::TooLarge => Status::TooLarge,
            Self::AttestationUnavailable => Status::AttestationUnavailable,
            Self::SealingUnavailable => Status::SealingUnavailable,
            Self::SealedBlobInvalid => Status::SealedBlobInvalid,
            Self::SealRuleDenied => Status::SealRuleDenied,
            Self::VaultNotEmpty => Status::VaultNotEmpty,
            Self::StateRollback => Status::StateRollback,
            Self::NoSession => Status::NoSession,
            Self::JweInvalid => Status::JweInvalid,
            Self::EnvelopeInvalid => Status::EnvelopeInvalid,
            Self::Unauthenticated => Status::Unauthenticated,
        }
    }
}

impl From<PlatformError> for Error {
    fn from(_: PlatformError) -> Self {
        Self::Entropy
    }
}
