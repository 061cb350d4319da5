//! Typed rejections. Every variant names the check that failed and carries the
//! values seen and expected; `Display` renders them as one line.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use nitride_protocol::attest::ManifestError;
use nitride_protocol::snp::{Generation, ReportError, SigningKey};

/// Lower-case hex of a byte string, for messages.
#[derive(Clone, Copy, Debug)]
pub struct Hex<'a>(pub &'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Which certificate of the chain a message is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertRole {
    /// AMD root key (self-signed).
    Ark,
    /// AMD signing key (signs VCEKs).
    Ask,
    /// AMD signing key for VLEKs.
    Asvk,
    /// The endorsement key certificate (VCEK or VLEK), before its kind is known.
    Endorsement,
    /// Versioned chip endorsement key.
    Vcek,
    /// Versioned loaded endorsement key.
    Vlek,
}

impl fmt::Display for CertRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ark => "ARK",
            Self::Ask => "ASK",
            Self::Asvk => "ASVK",
            Self::Endorsement => "VCEK/VLEK",
            Self::Vcek => "VCEK",
            Self::Vlek => "VLEK",
        })
    }
}

/// Which trust anchor a chain ends in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RootUsed {
    /// A pinned AMD ARK.
    Amd(Generation),
    /// An extra root the caller explicitly opted into (e.g. a development ARK).
    Extra {
        /// The caller's label for it.
        label: String,
        /// The generation it is registered for.
        generation: Generation,
    },
}

impl fmt::Display for RootUsed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Amd(g) => write!(f, "AMD ARK ({g}, pinned)"),
            Self::Extra { label, generation } => {
                write!(f, "extra root '{label}' ({generation}, explicitly trusted)")
            }
        }
    }
}

/// A TCB component, for messages.
pub type Component = &'static str;

/// Why a report, or its endorsement chain, is not genuine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VerifyError {
    /// The report buffer has the wrong size or version.
    Report(ReportError),
    /// `signature_algo` is not 1 (ECDSA P-384 / SHA-384).
    SignatureAlgo {
        /// Value in the report.
        seen: u32,
        /// Required value.
        expected: u32,
    },
    /// The report's signing-key field is neither VCEK nor VLEK.
    SigningKeyUnsupported {
        /// Value in the report.
        seen: SigningKey,
    },
    /// The report says one key kind signed it, the certificate is the other.
    SigningKeyMismatch {
        /// Signing key named by the report.
        report: SigningKey,
        /// Kind of the certificate given.
        cert: SigningKey,
    },
    /// A certificate could not be parsed, or lacks something required.
    CertMalformed {
        /// Which certificate.
        role: CertRole,
        /// What is wrong.
        reason: String,
    },
    /// A certificate is not signed with RSASSA-PSS / SHA-384 / MGF1-SHA-384 / salt 48.
    CertAlgorithm {
        /// Which certificate.
        role: CertRole,
        /// What was found.
        seen: String,
    },
    /// A certificate's signature does not verify under its issuer's key.
    CertSignature {
        /// The certificate checked.
        subject: CertRole,
        /// The key it was checked against.
        issuer: CertRole,
        /// The root set the issuer came from.
        root: RootUsed,
    },
    /// An AMD ARK does not have the pinned SHA-256 fingerprint of its generation.
    ArkNotPinned {
        /// Generation it was offered for.
        generation: Generation,
        /// SHA-256 of the offered ARK (DER).
        seen: [u8; 32],
        /// Pinned SHA-256.
        expected: [u8; 32],
    },
    /// The processor generation cannot be determined.
    UnknownGeneration {
        /// The certificate's productName, if any.
        product_name: Option<String>,
    },
    /// The report (CPUID or CHIP_ID shape) and the certificate name different generations.
    GenerationMismatch {
        /// Generation implied by the report.
        report: Generation,
        /// Generation named by the certificate's productName.
        cert: Generation,
    },
    /// No trust anchor for the generation (or it lacks the needed intermediate).
    NoTrustAnchor {
        /// Generation needed.
        generation: Generation,
        /// Certificate missing.
        role: CertRole,
    },
    /// r or s is not a valid P-384 scalar in 72-byte little-endian form.
    ReportSignatureMalformed {
        /// Which component ("r" or "s") and why.
        reason: &'static str,
    },
    /// The ECDSA signature over bytes 0x000..0x2A0 does not verify.
    ReportSignatureInvalid {
        /// Which key was used.
        key: CertRole,
    },
    /// A TCB component of REPORTED_TCB differs from the certificate's SPL extension.
    TcbMismatch {
        /// Component name.
        component: Component,
        /// Value in REPORTED_TCB.
        report: u8,
        /// Value in the certificate.
        cert: u8,
    },
    /// hwID in the VCEK differs from CHIP_ID.
    ChipIdMismatch {
        /// CHIP_ID (as many bytes as compared).
        report: Vec<u8>,
        /// hwID from the certificate.
        cert: Vec<u8>,
    },
    /// A VLEK-signed report carries a non-zero CHIP_ID.
    VlekChipIdNotMasked {
        /// CHIP_ID seen.
        report: Vec<u8>,
    },
    /// The trust anchors the caller named cannot be used (a roots directory without
    /// an ARK, an ARK that fails its pin, an unreadable development root).
    RootsUnusable {
        /// The option and directory (`--roots DIR`).
        option: String,
        /// Why.
        reason: String,
    },
    /// The endorsement chains to a *development* root (the virtual SNP machine's), not
    /// to AMD, and the caller did not opt into trusting it.
    DevelopmentRoot {
        /// How this was established (which development root it chains to, or what
        /// the certificate claims).
        evidence: String,
    },
}

impl VerifyError {
    /// Short machine-readable name of the failed check.
    pub fn check(&self) -> &'static str {
        match self {
            Self::Report(ReportError::WrongSize { .. }) => "report_size",
            Self::Report(ReportError::UnsupportedVersion { .. }) => "report_version",
            Self::SignatureAlgo { .. } => "signature_algo",
            Self::SigningKeyUnsupported { .. } | Self::SigningKeyMismatch { .. } => "signing_key",
            Self::CertMalformed { .. } => "certificate",
            Self::CertAlgorithm { .. } => "certificate_algorithm",
            Self::CertSignature { .. } => "chain",
            Self::ArkNotPinned { .. } => "ark_pin",
            Self::UnknownGeneration { .. } | Self::GenerationMismatch { .. } => "generation",
            Self::NoTrustAnchor { .. } => "trust_anchor",
            Self::ReportSignatureMalformed { .. } | Self::ReportSignatureInvalid { .. } => {
                "report_signature"
            }
            Self::TcbMismatch { .. } => "tcb",
            Self::ChipIdMismatch { .. } | Self::VlekChipIdNotMasked { .. } => "chip_id",
            Self::DevelopmentRoot { .. } => "development_root",
            Self::RootsUnusable { .. } => "roots",
        }
    }
}

impl From<ReportError> for VerifyError {
    fn from(e: ReportError) -> Self {
        Self::Report(e)
    }
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Report(e) => write!(f, "{e}"),
            Self::SignatureAlgo { seen, expected } => write!(
                f,
                "signature_algo: {seen}, expected {expected} (ECDSA P-384 with SHA-384)"
            ),
            Self::SigningKeyUnsupported { seen } => {
                write!(f, "signing key: report says {seen}, expected vcek or vlek")
            }
            Self::SigningKeyMismatch { report, cert } => write!(
                f,
                "signing key: report says {report}, but the certificate given is a {cert}"
            ),
            Self::CertMalformed { role, reason } => write!(f, "{role} certificate: {reason}"),
            Self::CertAlgorithm { role, seen } => write!(
                f,
                "{role} certificate algorithm: {seen}, expected RSASSA-PSS with SHA-384, MGF1-SHA-384, salt 48"
            ),
            Self::CertSignature { subject, issuer, root } => write!(
                f,
                "chain: the {subject} certificate is not signed by the {issuer} of {root}"
            ),
            Self::ArkNotPinned { generation, seen, expected } => write!(
                f,
                "ARK pin ({generation}): SHA-256 {}, expected {}",
                Hex(seen),
                Hex(expected)
            ),
            Self::UnknownGeneration { product_name } => write!(
                f,
                "generation: cannot tell from the report (CPUID, CHIP_ID) nor the certificate (productName {})",
                product_name.as_deref().unwrap_or("absent")
            ),
            Self::GenerationMismatch { report, cert } => write!(
                f,
                "generation: report is from {report}, certificate is for {cert}"
            ),
            Self::NoTrustAnchor { generation, role } => {
                write!(f, "trust anchors: no {role} for {generation}")
            }
            Self::ReportSignatureMalformed { reason } => {
                write!(f, "report signature: malformed ({reason})")
            }
            Self::ReportSignatureInvalid { key } => write!(
                f,
                "report signature: ECDSA P-384/SHA-384 over 0x000..0x2A0 does not verify with the {key} key"
            ),
            Self::TcbMismatch { component, report, cert } => write!(
                f,
                "TCB: REPORTED_TCB {component} = {report}, but the certificate says {cert}"
            ),
            Self::ChipIdMismatch { report, cert } => write!(
                f,
                "chip id: CHIP_ID {}, but the VCEK hwID is {}",
                Hex(report),
                Hex(cert)
            ),
            Self::VlekChipIdNotMasked { report } => write!(
                f,
                "chip id: a VLEK-signed report must carry a zero CHIP_ID, saw {}",
                Hex(report)
            ),
            Self::RootsUnusable { option, reason } => write!(
                f,
                "trust anchors: {option} cannot be used ({reason}); nothing was verified"
            ),
            Self::DevelopmentRoot { evidence } => write!(
                f,
                "chain: the report is signed by a *development* root, not by AMD ({evidence}); \
                 it proves nothing about real hardware. To accept it anyway, trust that root \
                 explicitly: --trust-dev-root DIR (a directory holding its ark.pem and ask.pem, \
                 e.g. target/dev-chain)"
            ),
        }
    }
}

/// Why a genuine report does not meet the caller's policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// VMPL differs from the one required.
    Vmpl {
        /// VMPL in the report.
        seen: u32,
        /// VMPL required.
        expected: u32,
    },
    /// REPORT_DATA differs from the expected value.
    ReportData {
        /// REPORT_DATA in the report.
        seen: Box<[u8; 64]>,
        /// Value required.
        expected: Box<[u8; 64]>,
    },
    /// MEASUREMENT is not in the allow-list.
    Measurement {
        /// MEASUREMENT in the report.
        seen: [u8; 48],
        /// The allow-list.
        allowed: Vec<[u8; 48]>,
    },
    /// The guest policy allows debugging and the caller did not allow that.
    Debug {
        /// The policy value.
        policy: u64,
    },
    /// The guest policy's reserved bit 17, which must be one, is clear.
    ReservedBitClear {
        /// The policy value.
        policy: u64,
    },
    /// The guest policy allows a migration agent (MIGRATE_MA, bit 18) and the
    /// caller did not allow that.
    MigrateMa {
        /// The policy value.
        policy: u64,
    },
    /// SMT is required off, but the guest policy allows it (bit 16) or the platform
    /// has it enabled (PLATFORM_INFO bit 0).
    Smt {
        /// The policy value.
        policy: u64,
        /// PLATFORM_INFO.
        platform_info: u64,
    },
    /// A single socket is required, but the guest policy's SINGLE_SOCKET bit (20)
    /// is clear.
    SingleSocket {
        /// The policy value.
        policy: u64,
    },
    /// A minimum is given for a TCB component the report's generation does not
    /// have (FMC before Turin).
    TcbComponentMissing {
        /// Component name.
        component: Component,
    },
    /// A TCB component is below the minimum.
    TcbTooLow {
        /// Component name.
        component: Component,
        /// Value in REPORTED_TCB.
        seen: u8,
        /// Minimum.
        minimum: u8,
    },
    /// The report was signed by a key kind the caller does not accept.
    SigningKey {
        /// Key that signed.
        seen: SigningKey,
        /// Keys accepted.
        allowed: Vec<SigningKey>,
    },
    /// The services manifest given is not one the SVSM writes (or lists a service
    /// this verifier cannot check).
    ManifestMalformed {
        /// Why.
        reason: ManifestError,
    },
    /// The key binding given does not parse.
    KeyBindingMalformed {
        /// Why.
        reason: ManifestError,
    },
    /// The key binding's nonce is not the one expected.
    KeyBindingNonce {
        /// Nonce in the binding.
        seen: Vec<u8>,
        /// Nonce required.
        expected: Vec<u8>,
    },
    /// REPORT_DATA is not SHA-512 of the key binding given.
    KeyBindingReportData {
        /// REPORT_DATA in the report.
        seen: Box<[u8; 64]>,
        /// SHA-512 of the binding.
        expected: Box<[u8; 64]>,
    },
    /// A binding nonce is required but no key binding was given.
    KeyBindingMissing,
}

impl PolicyError {
    /// Short machine-readable name of the failed check.
    pub fn check(&self) -> &'static str {
        match self {
            Self::Vmpl { .. } => "policy_vmpl",
            Self::ReportData { .. } => "policy_report_data",
            Self::Measurement { .. } => "policy_measurement",
            Self::Debug { .. } => "policy_debug",
            Self::ReservedBitClear { .. } => "policy_reserved_bit",
            Self::MigrateMa { .. } => "policy_migrate_ma",
            Self::Smt { .. } => "policy_smt",
            Self::SingleSocket { .. } => "policy_single_socket",
            Self::TcbTooLow { .. } | Self::TcbComponentMissing { .. } => "policy_tcb",
            Self::ManifestMalformed { .. } => "policy_manifest",
            Self::SigningKey { .. } => "policy_signing_key",
            Self::KeyBindingMalformed { .. }
            | Self::KeyBindingNonce { .. }
            | Self::KeyBindingReportData { .. }
            | Self::KeyBindingMissing => "policy_key_binding",
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vmpl { seen, expected } => write!(
                f,
                "policy vmpl: report was requested at VMPL {seen}, expected VMPL {expected}"
            ),
            Self::ReportData { seen, expected } => write!(
                f,
                "policy report_data: {}, expected {}",
                Hex(&seen[..]),
                Hex(&expected[..])
            ),
            Self::Measurement { seen, allowed } => {
                write!(
                    f,
                    "policy measurement: {} is not in the allow-list [",
                    Hex(seen)
                )?;
                for (i, m) in allowed.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{}", Hex(m))?;
                }
                f.write_str("]")
            }
            Self::Debug { policy } => write!(
                f,
                "policy debug: guest policy {policy:#x} allows debugging (bit 19), not allowed"
            ),
            Self::ReservedBitClear { policy } => write!(
                f,
                "policy reserved bit: guest policy {policy:#x} has bit 17 clear, which must be one"
            ),
            Self::MigrateMa { policy } => write!(
                f,
                "policy migrate_ma: guest policy {policy:#x} allows a migration agent (bit 18), not allowed"
            ),
            Self::Smt {
                policy,
                platform_info,
            } => write!(
                f,
                "policy smt: SMT required off, but guest policy {policy:#x} {} SMT (bit 16) and \
                 platform info {platform_info:#x} says SMT {}",
                if policy & (1 << 16) != 0 { "allows" } else { "forbids" },
                if platform_info & 1 != 0 { "enabled" } else { "disabled" }
            ),
            Self::SingleSocket { policy } => write!(
                f,
                "policy single socket: required, but guest policy {policy:#x} has SINGLE_SOCKET (bit 20) clear"
            ),
            Self::TcbComponentMissing { component } => write!(
                f,
                "policy tcb: a minimum {component} is required, but this generation's TCB has no {component}"
            ),
            Self::TcbTooLow {
                component,
                seen,
                minimum,
            } => write!(f, "policy tcb: {component} = {seen}, minimum {minimum}"),
            Self::ManifestMalformed { reason } => {
                write!(f, "policy manifest: not a manifest the SVSM writes: {reason}")
            }
            Self::SigningKey { seen, allowed } => {
                write!(f, "policy signing key: {seen}, allowed [")?;
                for (i, k) in allowed.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{k}")?;
                }
                f.write_str("]")
            }
            Self::KeyBindingMalformed { reason } => {
                write!(f, "policy key binding: malformed ({reason})")
            }
            Self::KeyBindingNonce { seen, expected } => write!(
                f,
                "policy key binding: nonce {}, expected {}",
                Hex(seen),
                Hex(expected)
            ),
            Self::KeyBindingReportData { seen, expected } => write!(
                f,
                "policy key binding: REPORT_DATA {}, expected SHA-512(binding) {}",
                Hex(&seen[..]),
                Hex(&expected[..])
            ),
            Self::KeyBindingMissing => f.write_str(
                "policy key binding: a binding nonce is required but no key binding was given",
            ),
        }
    }
}

/// Either kind of rejection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The report or its chain is not genuine.
    Verify(VerifyError),
    /// The report is genuine but fails the caller's policy.
    Policy(PolicyError),
}

impl From<VerifyError> for Error {
    fn from(e: VerifyError) -> Self {
        Self::Verify(e)
    }
}

impl From<PolicyError> for Error {
    fn from(e: PolicyError) -> Self {
        Self::Policy(e)
    }
}

impl Error {
    /// Short machine-readable name of the failed check.
    pub fn check(&self) -> &'static str {
        match self {
            Self::Verify(e) => e.check(),
            Self::Policy(e) => e.check(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Verify(e) => write!(f, "{e}"),
            Self::Policy(e) => write!(f, "{e}"),
        }
    }
}
