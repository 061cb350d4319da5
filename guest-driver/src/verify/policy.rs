//! The caller's requirements on a genuine report, as a builder.
//!
//! Checks run in this order and stop at the first failure: signing key, VMPL,
//! debug bit, REPORT_DATA, key binding (parses, nonce, REPORT_DATA = SHA-512 of it),
//! measurement, minimum TCB (against REPORTED_TCB, the TCB the signing key is bound
//! to).

use alloc::vec::Vec;

use nitride_protocol::attest::KeyBinding;
use nitride_protocol::snp::{SigningKey, Tcb};
use sha2::{Digest, Sha512};

use super::error::PolicyError;
use super::VerifiedReport;

/// What a genuine report must also satisfy. Start from [`AppraisalPolicy::new`]
/// (accepts VCEK and VLEK, refuses debug, checks nothing else) and add requirements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppraisalPolicy {
    vmpl: Option<u32>,
    report_data: Option<[u8; 64]>,
    measurements: Vec<[u8; 48]>,
    allow_debug: bool,
    min_tcb: Option<Tcb>,
    signing_keys: Vec<SigningKey>,
    key_binding: Option<Vec<u8>>,
    binding_nonce: Option<Vec<u8>>,
}

impl Default for AppraisalPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl AppraisalPolicy {
    /// VCEK and VLEK accepted, debug refused, nothing else required.
    pub fn new() -> Self {
        Self {
            vmpl: None,
            report_data: None,
            measurements: Vec::new(),
            allow_debug: false,
            min_tcb: None,
            signing_keys: alloc::vec![SigningKey::Vcek, SigningKey::Vlek],
            key_binding: None,
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

    /// Require REPORT_DATA = SHA-512(nonce || manifest), the SVSM attestation binding.
    pub fn expect_nonce_manifest(self, nonce: &[u8], manifest: &[u8]) -> Self {
        let mut h = Sha512::new();
        h.update(nonce);
        h.update(manifest);
        self.expect_report_data(h.finalize().into())
    }

    /// Require the report to bind `binding`, the key binding of the vHSM's AttestKey
    /// (`attest::KeyBinding`): it must parse, and REPORT_DATA must equal
    /// SHA-512(binding). With [`Self::expect_binding_nonce`], its nonce must match too.
    pub fn expect_key_binding(mut self, binding: &[u8]) -> Self {
        self.key_binding = Some(binding.to_vec());
        self
    }

    /// Require the key binding's nonce to equal `nonce` (with
    /// [`Self::expect_key_binding`]; on its own it refuses every report).
    pub fn expect_binding_nonce(mut self, nonce: &[u8]) -> Self {
        self.binding_nonce = Some(nonce.to_vec());
        self
    }

    /// Add a measurement to the allow-list (an empty list allows any).
    pub fn allow_measurement(mut self, m: [u8; 48]) -> Self {
        self.measurements.push(m);
        self
    }

    /// Accept reports whose guest policy allows debugging.
    pub fn allow_debug(mut self, allow: bool) -> Self {
        self.allow_debug = allow;
        self
    }

    /// Require each REPORTED_TCB component to be at least `min` (FMC only when both
    /// sides have it).
    pub fn min_tcb(mut self, min: Tcb) -> Self {
        self.min_tcb = Some(min);
        self
    }

    /// Accept only these signing keys.
    pub fn allow_signing_keys(mut self, keys: &[SigningKey]) -> Self {
        self.signing_keys = keys.to_vec();
        self
    }

    /// Check a verified report against the policy.
    pub fn appraise(&self, v: &VerifiedReport) -> Result<(), PolicyError> {
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
        let policy = r.policy();
        if policy.debug() && !self.allow_debug {
            return Err(PolicyError::Debug { policy: policy.0 });
        }
        if let Some(expected) = self.report_data {
            if r.report_data != expected {
                return Err(PolicyError::ReportData {
                    seen: alloc::boxed::Box::new(r.report_data),
                    expected: alloc::boxed::Box::new(expected),
                });
            }
        }
        self.check_key_binding(&r.report_data)?;
        if !self.measurements.is_empty() && !self.measurements.contains(&r.measurement) {
            return Err(PolicyError::Measurement {
                seen: r.measurement,
                allowed: self.measurements.clone(),
            });
        }
        if let Some(min) = self.min_tcb {
            let tcb = v.reported_tcb();
            let fmc = match (tcb.fmc, min.fmc) {
                (Some(s), Some(m)) => Some((s, m)),
                _ => None,
            };
            let pairs = [
                ("bootloader", tcb.bootloader, min.bootloader),
                ("tee", tcb.tee, min.tee),
                ("snp", tcb.snp, min.snp),
                ("microcode", tcb.microcode, min.microcode),
            ];
            for (component, seen, minimum) in
                pairs.into_iter().chain(fmc.map(|(s, m)| ("fmc", s, m)))
            {
                if seen < minimum {
                    return Err(PolicyError::TcbTooLow {
                        component,
                        seen,
                        minimum,
                    });
                }
            }
        }
        Ok(())
    }

    fn check_key_binding(&self, report_data: &[u8; 64]) -> Result<(), PolicyError> {
        let Some(bytes) = &self.key_binding else {
            return match &self.binding_nonce {
                Some(_) => Err(PolicyError::KeyBindingMissing),
                None => Ok(()),
            };
        };
        let binding = KeyBinding::parse(bytes)
            .map_err(|reason| PolicyError::KeyBindingMalformed { reason })?;
        if let Some(expected) = &self.binding_nonce {
            if binding.nonce != expected.as_slice() {
                return Err(PolicyError::KeyBindingNonce {
                    seen: binding.nonce.to_vec(),
                    expected: expected.clone(),
                });
            }
        }
        let expected: [u8; 64] = Sha512::digest(bytes).into();
        if *report_data != expected {
            return Err(PolicyError::KeyBindingReportData {
                seen: alloc::boxed::Box::new(*report_data),
                expected: alloc::boxed::Box::new(expected),
            });
        }
        Ok(())
    }
}
