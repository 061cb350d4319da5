//! Verifying SEV-SNP attestation reports (no_std + alloc, pure Rust).
//!
//! Two layers:
//! 1. **Genuineness** ([`verify`], or [`TrustAnchors::verify_endorsement`] then
//!    [`Endorsement::verify_report`]): the report parses (size, version), uses
//!    signature_algo 1, names the same key kind (VCEK/VLEK) as the certificate; the
//!    certificate chains to a trusted root of the right generation; the ECDSA
//!    P-384/SHA-384 signature over bytes 0x000..0x2A0 verifies; REPORTED_TCB equals
//!    the certificate's SPLs; CHIP_ID equals the VCEK's hwID (or is zero for a VLEK).
//! 2. **Policy** ([`AppraisalPolicy`]): what the caller requires of a genuine report
//!    (VMPL, guest policy bits, REPORT_DATA and the evidence it binds, measurement,
//!    minimum TCB, signing key). An accepted report comes back as an [`Appraisal`]
//!    holding the evidence parsed ([`CheckedEvidence`]).
//!
//! Every rejection is a typed error ([`VerifyError`], [`PolicyError`]) that names the
//! check and the values seen and expected. See `docs/attestation-verification.md`.
#![forbid(unsafe_code)]

mod anchors;
mod cert;
mod error;
mod policy;

use alloc::vec::Vec;

use p384::ecdsa::signature::hazmat::PrehashVerifier;
use p384::ecdsa::{Signature, VerifyingKey};
use p384::FieldBytes;
use sha2::{Digest, Sha384};

use nitride_protocol::snp::report::{SIG_ALGO_ECDSA_P384_SHA384, SIG_COMPONENT_LEN};
use nitride_protocol::snp::{AttestationReport, Generation, SigningKey, Tcb, TcbLayout};

#[cfg(feature = "std")]
pub use anchors::DevRootError;
pub use anchors::{
    generation_from_subject, pinned_ark, table_certs, Endorsement, RootSet, TableCerts,
    TrustAnchors, BUNDLED_PEMS, DEV_ROOT_LABEL, PINNED_ARKS,
};
pub use cert::{oid, Cert, EkExtensions};
pub use error::{CertRole, Error, Hex, PolicyError, RootUsed, VerifyError};
pub use policy::{Appraisal, AppraisalPolicy, CheckedEvidence, MinTcb};

/// A report whose signature and endorsement chain have been verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedReport {
    /// The report (a copy).
    pub report: AttestationReport,
    /// Processor generation (from the report and the certificate).
    pub generation: Generation,
    /// The key kind that signed it.
    pub signing_key: SigningKey,
    /// The root the chain ended in.
    pub root: RootUsed,
    /// Whether CHIP_ID was compared with the VCEK's hwID (false when masked or VLEK).
    pub chip_id_checked: bool,
}

impl VerifiedReport {
    /// TCB layout of the generation.
    pub fn tcb_layout(&self) -> TcbLayout {
        self.generation.tcb_layout()
    }

    /// REPORTED_TCB decoded for the generation.
    pub fn reported_tcb(&self) -> Tcb {
        self.report.reported_tcb(self.tcb_layout())
    }
}

/// Verify `report` (raw bytes) with the VCEK/VLEK certificate `ek` (PEM or DER)
/// against `anchors`.
pub fn verify(
    anchors: &TrustAnchors,
    report: &[u8],
    ek: &[u8],
) -> Result<VerifiedReport, VerifyError> {
    let parsed = AttestationReport::from_bytes(report)?;
    check_header(parsed)?;
    let endorsement = anchors.verify_endorsement(ek, parsed.generation())?;
    endorsement.verify_report(report)
}

/// Checks that need no key: signature algorithm and a usable signing-key field.
fn check_header(report: &AttestationReport) -> Result<SigningKey, VerifyError> {
    let algo = report.signature_algo.get();
    if algo != SIG_ALGO_ECDSA_P384_SHA384 {
        return Err(VerifyError::SignatureAlgo {
            seen: algo,
            expected: SIG_ALGO_ECDSA_P384_SHA384,
        });
    }
    match report.signer_info().signing_key() {
        k @ (SigningKey::Vcek | SigningKey::Vlek) => Ok(k),
        seen => Err(VerifyError::SigningKeyUnsupported { seen }),
    }
}

/// Convert a 72-byte little-endian signature component into a big-endian P-384 scalar.
fn scalar_be(le: &[u8; SIG_COMPONENT_LEN], name: &'static str) -> Result<FieldBytes, VerifyError> {
    let (value, padding) = le.split_at(48);
    if padding.iter().any(|&b| b != 0) {
        return Err(VerifyError::ReportSignatureMalformed {
            reason: if name == "r" {
                "r: bytes 48..72 not zero"
            } else {
                "s: bytes 48..72 not zero"
            },
        });
    }
    let mut be = FieldBytes::default();
    be.iter_mut()
        .zip(value.iter().rev())
        .for_each(|(d, s)| *d = *s);
    Ok(be)
}

/// Check the report's ECDSA P-384 / SHA-384 signature over bytes 0x000..0x2A0
/// (r and s little-endian) with `key`.
pub fn verify_report_signature(
    report: &AttestationReport,
    key: &VerifyingKey,
    key_role: CertRole,
) -> Result<(), VerifyError> {
    let r = scalar_be(&report.signature.r, "r")?;
    let s = scalar_be(&report.signature.s, "s")?;
    let sig = Signature::from_scalars(r, s).map_err(|_| VerifyError::ReportSignatureMalformed {
        reason: "r or s is zero or not below the P-384 order",
    })?;
    let digest = Sha384::digest(report.signed_bytes());
    key.verify_prehash(&digest, &sig)
        .map_err(|_| VerifyError::ReportSignatureInvalid { key: key_role })
}

/// Compare REPORTED_TCB (decoded for the generation) with the certificate's SPLs.
pub fn check_tcb(tcb: &Tcb, ext: &EkExtensions) -> Result<(), VerifyError> {
    let pairs = [
        ("bootloader", tcb.bootloader, Some(ext.bootloader)),
        ("tee", tcb.tee, Some(ext.tee)),
        ("snp", tcb.snp, Some(ext.snp)),
        ("microcode", tcb.microcode, Some(ext.microcode)),
    ];
    for (component, report, cert) in pairs {
        if cert != Some(report) {
            return Err(VerifyError::TcbMismatch {
                component,
                report,
                cert: cert.unwrap_or(0),
            });
        }
    }
    if let Some(report) = tcb.fmc {
        if ext.fmc != Some(report) {
            return Err(VerifyError::TcbMismatch {
                component: "fmc",
                report,
                cert: ext.fmc.unwrap_or(0),
            });
        }
    }
    Ok(())
}

/// Compare CHIP_ID with the certificate: hwID for a VCEK (8 bytes on Turin, with the
/// rest of CHIP_ID zero), all-zero CHIP_ID for a VLEK. Returns whether hwID was
/// compared (a VCEK report with mask_chip_key set has a zero CHIP_ID and cannot be).
pub fn check_chip_id(
    report: &AttestationReport,
    ext: &EkExtensions,
    generation: Generation,
) -> Result<bool, VerifyError> {
    let chip = &report.chip_id;
    let zero = chip.iter().all(|&b| b == 0);
    match ext.kind {
        SigningKey::Vlek => {
            if zero {
                Ok(false)
            } else {
                Err(VerifyError::VlekChipIdNotMasked {
                    report: chip.to_vec(),
                })
            }
        }
        _ if zero && report.signer_info().mask_chip_key() => Ok(false),
        _ => {
            let hw = ext.hw_id.as_deref().unwrap_or(&[]);
            let len = if generation == Generation::Turin {
                8
            } else {
                chip.len()
            };
            let (head, tail) = chip.split_at(len.min(chip.len()));
            if head == hw && tail.iter().all(|&b| b == 0) {
                Ok(true)
            } else {
                let shown: Vec<u8> = if tail.iter().all(|&b| b == 0) {
                    head.to_vec()
                } else {
                    chip.to_vec()
                };
                Err(VerifyError::ChipIdMismatch {
                    report: shown,
                    cert: hw.to_vec(),
                })
            }
        }
    }
}

impl Endorsement {
    /// Verify a report (raw bytes) against this already chain-checked certificate.
    pub fn verify_report(&self, bytes: &[u8]) -> Result<VerifiedReport, VerifyError> {
        let report = AttestationReport::from_bytes(bytes)?;
        let signing_key = check_header(report)?;
        if signing_key != self.extensions.kind {
            return Err(VerifyError::SigningKeyMismatch {
                report: signing_key,
                cert: self.extensions.kind,
            });
        }
        if let Some(g) = report.generation() {
            if g != self.generation {
                return Err(VerifyError::GenerationMismatch {
                    report: g,
                    cert: self.generation,
                });
            }
        }
        let role = if signing_key == SigningKey::Vlek {
            CertRole::Vlek
        } else {
            CertRole::Vcek
        };
        verify_report_signature(report, &self.key, role)?;
        check_tcb(
            &report.reported_tcb(self.generation.tcb_layout()),
            &self.extensions,
        )?;
        let chip_id_checked = check_chip_id(report, &self.extensions, self.generation)?;
        Ok(VerifiedReport {
            report: *report,
            generation: self.generation,
            signing_key,
            root: self.root.clone(),
            chip_id_checked,
        })
    }
}

#[cfg(test)]
mod tests;
