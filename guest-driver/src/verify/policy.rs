//! The caller's requirements on a genuine report, as a builder, and what an
//! accepted report's evidence says ([`Appraisal`]).
//!
//! Checks run in this order and stop at the first failure: signing key, VMPL, guest
//! policy bits (the must-be-one bit 17, DEBUG, MIGRATE_MA, then the optional SMT and
//! single-socket requirements), REPORT_DATA, the evidence (a services manifest or a
//! key binding, parsed strictly, then REPORT_DATA = the form's constructor in
//! `nitride_protocol::attest::report_data`), measurement, minimum TCB (against
//! REPORTED_TCB, the TCB the signing key is bound to).
//!
//! The evidence is returned parsed in the [`Appraisal`]: a caller reads the vault
//! identity, the keys or the binding from there, never from bytes the policy did
//! not check.

use alloc::vec::Vec;

use nitride_protocol::attest::{
    report_data, KeyBinding, ManifestError, ManifestTable, Nonce, VhsmManifest,
    MANIFEST_TABLE_GUID, VHSM_MANIFEST_MAGIC, VHSM_SERVICE_GUID,
};
use nitride_protocol::snp::{Guid, Policy, SigningKey, Tcb};
use nitride_protocol::vhsm::KeyType;

use super::error::PolicyError;
use super::VerifiedReport;

/// Minimum TCB, per component: a component left `None` is not checked. Compared
/// with REPORTED_TCB; a minimum FMC refuses a report of a generation without FMC
/// (before Turin).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MinTcb {
    /// Bootloader SPL.
    pub bootloader: Option<u8>,
    /// TEE (PSP OS) SPL.
    pub tee: Option<u8>,
    /// SNP firmware SPL.
    pub snp: Option<u8>,
    /// Microcode SPL.
    pub microcode: Option<u8>,
    /// FMC SPL (Turin).
    pub fmc: Option<u8>,
}

impl From<Tcb> for MinTcb {
    /// Every component of `t` as a minimum (FMC when `t` has one).
    fn from(t: Tcb) -> Self {
        Self {
            bootloader: Some(t.bootloader),
            tee: Some(t.tee),
            snp: Some(t.snp),
            microcode: Some(t.microcode),
            fmc: t.fmc,
        }
    }
}

/// The evidence the report must bind (one kind per policy).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expected {
    /// Nothing beyond a raw REPORT_DATA, if any.
    Nothing,
    /// Protocol 1: REPORT_DATA = SHA-512(nonce || manifest), the manifest a services
    /// table or the vHSM's own manifest.
    NonceManifest { nonce: Nonce, manifest: Vec<u8> },
    /// AttestKey: REPORT_DATA = SHA-512(binding).
    KeyBinding(Vec<u8>),
}

/// What a genuine report must also satisfy. Start from [`AppraisalPolicy::new`]
/// (accepts VCEK and VLEK; refuses DEBUG, MIGRATE_MA and a clear must-be-one bit;
/// checks nothing else) and add requirements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppraisalPolicy {
    vmpl: Option<u32>,
    report_data: Option<[u8; 64]>,
    measurements: Vec<[u8; 48]>,
    allow_debug: bool,
    allow_migrate_ma: bool,
    require_smt_off: bool,
    require_single_socket: bool,
    min_tcb: MinTcb,
    signing_keys: Vec<SigningKey>,
    expected: Expected,
    binding_nonce: Option<Nonce>,
}

impl Default for AppraisalPolicy {
    fn default() -> Self {
        Self::new()
    }
}

/// The evidence of an accepted report, parsed and checked by the policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckedEvidence<'p> {
    /// The policy expected no manifest or binding.
    None,
    /// ATTEST_SERVICES: the nonce and the services table (every entry a service
    /// the verifier knows, each parsed), with the vHSM's manifest when listed.
    Services {
        /// The nonce.
        nonce: &'p Nonce,
        /// The table.
        table: ManifestTable<'p>,
        /// The vHSM's entry (absent when the vHSM was not running).
        vhsm: Option<VhsmManifest<'p>>,
    },
    /// ATTEST_SINGLE_SERVICE of the vHSM: the nonce and its manifest.
    VhsmService {
        /// The nonce.
        nonce: &'p Nonce,
        /// The vHSM manifest.
        manifest: VhsmManifest<'p>,
    },
    /// AttestKey: the key binding.
    KeyBinding(KeyBinding<'p>),
}

impl<'p> CheckedEvidence<'p> {
    /// The vHSM manifest, whichever protocol-1 call produced it.
    pub fn vhsm_manifest(&self) -> Option<&VhsmManifest<'p>> {
        match self {
            Self::Services { vhsm, .. } => vhsm.as_ref(),
            Self::VhsmService { manifest, .. } => Some(manifest),
            Self::None | Self::KeyBinding(_) => None,
        }
    }
}

/// A report accepted by an [`AppraisalPolicy`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appraisal<'p> {
    /// The guest policy the report carries (bits checked as the policy says).
    pub guest_policy: Policy,
    /// The evidence the report binds, as checked.
    pub evidence: CheckedEvidence<'p>,
}

impl AppraisalPolicy {
    /// VCEK and VLEK accepted; DEBUG, MIGRATE_MA and a clear must-be-one bit
    /// refused; nothing else required.
    pub fn new() -> Self {
        Self {
            vmpl: None,
            report_data: None,
            measurements: Vec::new(),
            allow_debug: false,
            allow_migrate_ma: false,
            require_smt_off: false,
            require_single_socket: false,
            min_tcb: MinTcb::default(),
            signing_keys: alloc::vec![SigningKey::Vcek, SigningKey::Vlek],
            expected: Expected::Nothing,
            binding_nonce: None,
        }
    }

    /// Require the report to have been requested at exactly `vmpl`. A report a guest
    /// OS asked for (VMPL >= 1) never passes `expect_vmpl(0)`.
    pub fn expect_vmpl(mut self, vmpl: u32) -> Self {
        self.vmpl = Some(vmpl);
        self
    }

    /// Require REPORT_DATA to equal `data`.
    pub fn expect_report_data(mut self, data: [u8; 64]) -> Self {
        self.report_data = Some(data);
        self
    }

    /// Require the SVSM attestation binding: `manifest` is a services table
    /// (ATTEST_SERVICES) or the vHSM's manifest (ATTEST_SINGLE_SERVICE), told apart
    /// by its tag; it must parse strictly (a table may list only services this
    /// verifier checks: the vHSM), and REPORT_DATA must be SHA-512(nonce ||
    /// manifest). Replaces any key binding expected before.
    pub fn expect_nonce_manifest(mut self, nonce: &Nonce, manifest: &[u8]) -> Self {
        self.expected = Expected::NonceManifest {
            nonce: *nonce,
            manifest: manifest.to_vec(),
        };
        self
    }

    /// Require the report to bind `binding`, the key binding of the vHSM's AttestKey
    /// (`attest::KeyBinding`): it must parse strictly, and REPORT_DATA must equal
    /// SHA-512(binding). With [`Self::expect_binding_nonce`], its nonce must match
    /// too. Replaces any manifest expected before.
    pub fn expect_key_binding(mut self, binding: &[u8]) -> Self {
        self.expected = Expected::KeyBinding(binding.to_vec());
        self
    }

    /// Require the key binding's nonce to equal `nonce` (with
    /// [`Self::expect_key_binding`]; on its own it refuses every report).
    pub fn expect_binding_nonce(mut self, nonce: &Nonce) -> Self {
        self.binding_nonce = Some(*nonce);
        self
    }

    /// Add a measurement to the allow-list (an empty list allows any).
    pub fn allow_measurement(mut self, m: [u8; 48]) -> Self {
        self.measurements.push(m);
        self
    }

    /// Accept reports whose guest policy allows debugging (bit 19).
    pub fn allow_debug(mut self, allow: bool) -> Self {
        self.allow_debug = allow;
        self
    }

    /// Accept reports whose guest policy allows a migration agent (MIGRATE_MA,
    /// bit 18): such a guest's memory can be handed to a migration agent the guest
    /// owner did not launch.
    pub fn allow_migrate_ma(mut self, allow: bool) -> Self {
        self.allow_migrate_ma = allow;
        self
    }

    /// Require SMT off: the guest policy must forbid SMT (bit 16 clear) and the
    /// platform must report SMT disabled (PLATFORM_INFO bit 0 clear).
    pub fn require_smt_off(mut self, require: bool) -> Self {
        self.require_smt_off = require;
        self
    }

    /// Require the guest policy's SINGLE_SOCKET bit (20).
    pub fn require_single_socket(mut self, require: bool) -> Self {
        self.require_single_socket = require;
        self
    }

    /// Require each REPORTED_TCB component given in `min` to be at least its value.
    /// Takes a [`MinTcb`] or a whole [`Tcb`].
    pub fn min_tcb(mut self, min: impl Into<MinTcb>) -> Self {
        self.min_tcb = min.into();
        self
    }

    /// Accept only these signing keys.
    pub fn allow_signing_keys(mut self, keys: &[SigningKey]) -> Self {
        self.signing_keys = keys.to_vec();
        self
    }

    /// Check a verified report against the policy; on success, the evidence it
    /// binds, parsed.
    pub fn appraise(&self, v: &VerifiedReport) -> Result<Appraisal<'_>, PolicyError> {
        let r = &v.report;
        if !self.signing_keys.contains(&v.signing_key) {
            return Err(PolicyError::SigningKey {
                seen: v.signing_key,
                allowed: self.signing_keys.clone(),
            });
        }
        if let Some(expected) = self.vmpl {
            let seen = r.vmpl.get();
            if seen != expected {
                return Err(PolicyError::Vmpl { seen, expected });
            }
        }
        let guest_policy = r.policy();
        self.check_policy_bits(v)?;
        if let Some(expected) = self.report_data {
            if r.report_data != expected {
                return Err(PolicyError::ReportData {
                    seen: alloc::boxed::Box::new(r.report_data),
                    expected: alloc::boxed::Box::new(expected),
                });
            }
        }
        let evidence = self.check_evidence(&r.report_data)?;
        if !self.measurements.is_empty() && !self.measurements.contains(&r.measurement) {
            return Err(PolicyError::Measurement {
                seen: r.measurement,
                allowed: self.measurements.clone(),
            });
        }
        self.check_tcb(&v.reported_tcb())?;
        Ok(Appraisal {
            guest_policy,
            evidence,
        })
    }

    fn check_policy_bits(&self, v: &VerifiedReport) -> Result<(), PolicyError> {
        let policy = v.report.policy();
        let bits = policy.0;
        if !policy.reserved_must_be_one() {
            return Err(PolicyError::ReservedBitClear { policy: bits });
        }
        if policy.debug() && !self.allow_debug {
            return Err(PolicyError::Debug { policy: bits });
        }
        if policy.migrate_ma() && !self.allow_migrate_ma {
            return Err(PolicyError::MigrateMa { policy: bits });
        }
        if self.require_smt_off {
            let platform_info = v.report.platform_info();
            if policy.smt() || platform_info.smt_enabled() {
                return Err(PolicyError::Smt {
                    policy: bits,
                    platform_info: platform_info.0,
                });
            }
        }
        if self.require_single_socket && !policy.single_socket() {
            return Err(PolicyError::SingleSocket { policy: bits });
        }
        Ok(())
    }

    fn check_tcb(&self, tcb: &Tcb) -> Result<(), PolicyError> {
        let min = &self.min_tcb;
        let pairs = [
            ("bootloader", Some(tcb.bootloader), min.bootloader),
            ("tee", Some(tcb.tee), min.tee),
            ("snp", Some(tcb.snp), min.snp),
            ("microcode", Some(tcb.microcode), min.microcode),
            ("fmc", tcb.fmc, min.fmc),
        ];
        for (component, seen, minimum) in pairs {
            let Some(minimum) = minimum else { continue };
            let Some(seen) = seen else {
                return Err(PolicyError::TcbComponentMissing { component });
            };
            if seen < minimum {
                return Err(PolicyError::TcbTooLow {
                    component,
                    seen,
                    minimum,
                });
            }
        }
        Ok(())
    }

    fn check_evidence(&self, report_data: &[u8; 64]) -> Result<CheckedEvidence<'_>, PolicyError> {
        match &self.expected {
            Expected::Nothing => match self.binding_nonce {
                Some(_) => Err(PolicyError::KeyBindingMissing),
                None => Ok(CheckedEvidence::None),
            },
            Expected::NonceManifest { .. } if self.binding_nonce.is_some() => {
                // A binding nonce is a requirement on a key binding, which a manifest
                // is not: refuse rather than ignore it.
                Err(PolicyError::KeyBindingMissing)
            }
            Expected::NonceManifest { nonce, manifest } => {
                let malformed = |reason| PolicyError::ManifestMalformed { reason };
                let (evidence, expected) = if manifest.starts_with(&MANIFEST_TABLE_GUID) {
                    let table = ManifestTable::parse(manifest).map_err(malformed)?;
                    let vhsm = services_vhsm(&table).map_err(malformed)?;
                    let expected = report_data::services(nonce, manifest).map_err(malformed)?;
                    (CheckedEvidence::Services { nonce, table, vhsm }, expected)
                } else if manifest.starts_with(&VHSM_MANIFEST_MAGIC) {
                    let parsed = vhsm_manifest(manifest).map_err(malformed)?;
                    let expected = report_data::single_service(nonce, &VHSM_SERVICE_GUID, manifest)
                        .map_err(malformed)?;
                    let evidence = CheckedEvidence::VhsmService {
                        nonce,
                        manifest: parsed,
                    };
                    (evidence, expected)
                } else {
                    return Err(malformed(ManifestError::BadMagic));
                };
                if *report_data != expected {
                    return Err(PolicyError::ReportData {
                        seen: alloc::boxed::Box::new(*report_data),
                        expected: alloc::boxed::Box::new(expected),
                    });
                }
                Ok(evidence)
            }
            Expected::KeyBinding(bytes) => {
                let malformed = |reason| PolicyError::KeyBindingMalformed { reason };
                let binding = KeyBinding::parse(bytes).map_err(malformed)?;
                check_point(binding.attributes.key_type.get(), binding.spki).map_err(malformed)?;
                if let Some(expected) = &self.binding_nonce {
                    if binding.nonce != expected {
                        return Err(PolicyError::KeyBindingNonce {
                            seen: binding.nonce.to_vec(),
                            expected: expected.to_vec(),
                        });
                    }
                }
                let expected = report_data::key_binding(bytes).map_err(malformed)?;
                if *report_data != expected {
                    return Err(PolicyError::KeyBindingReportData {
                        seen: alloc::boxed::Box::new(*report_data),
                        expected: alloc::boxed::Box::new(expected),
                    });
                }
                Ok(CheckedEvidence::KeyBinding(binding))
            }
        }
    }
}

/// The services this verifier knows how to check in a services table.
const KNOWN_SERVICES: [Guid; 1] = [VHSM_SERVICE_GUID];

/// Check every entry of a services table: only known services, each parsed (the
/// table itself is already canonical). Returns the vHSM's manifest.
fn services_vhsm<'a>(table: &ManifestTable<'a>) -> Result<Option<VhsmManifest<'a>>, ManifestError> {
    let mut vhsm = None;
    for (guid, data) in table.entries() {
        if !KNOWN_SERVICES.contains(&guid) {
            return Err(ManifestError::UnknownService);
        }
        vhsm = Some(vhsm_manifest(data)?);
    }
    Ok(vhsm)
}

/// Parse a vHSM manifest and check its P-384 points lie on the curve.
fn vhsm_manifest(bytes: &[u8]) -> Result<VhsmManifest<'_>, ManifestError> {
    let m = VhsmManifest::parse(bytes)?;
    check_point(KeyType::EcdsaP384.raw(), m.identity)?;
    for k in m.keys() {
        check_point(k.attributes.key_type.get(), k.spki)?;
    }
    Ok(m)
}

/// Beyond the strict DER the parsers check: a P-384 key's point (the last 97
/// bytes of its SPKI, uncompressed) is on the curve.
fn check_point(key_type: u16, spki: &[u8]) -> Result<(), ManifestError> {
    if key_type != KeyType::EcdsaP384.raw() {
        return Ok(());
    }
    let point = spki
        .len()
        .checked_sub(97)
        .and_then(|at| spki.get(at..))
        .ok_or(ManifestError::BadPublicKey)?;
    p384::PublicKey::from_sec1_bytes(point)
        .map(drop)
        .map_err(|_| ManifestError::BadPublicKey)
}
