//! The SEV-SNP attestation report (0x4A0 bytes; REFERENCE.md section 5).
//!
//! [`AttestationReport`] is the raw layout. [`AttestationReport::from_bytes`] views a
//! buffer as a report after checking its size and version; the typed accessors decode
//! the bit fields (policy, platform info, signer info) and the TCB versions, whose byte
//! layout depends on the processor generation ([`TcbLayout`]). Nothing here checks a
//! signature: that is the verifier's job (`nitride-guest-driver`'s `verify` module).

use core::fmt;
use core::mem::{offset_of, size_of};

use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of a report.
pub const REPORT_SIZE: usize = 0x4A0;
/// The signature covers bytes `0..SIGNED_LEN`.
pub const SIGNED_LEN: usize = 0x2A0;
/// `signature_algo` value for ECDSA P-384 with SHA-384, the only one defined.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;
/// Report versions this crate decodes.
pub const SUPPORTED_VERSIONS: [u32; 3] = [2, 3, 5];
/// Length of each signature component (r, s) as stored: 72 bytes little-endian,
/// of which the first 48 carry a P-384 scalar.
pub const SIG_COMPONENT_LEN: usize = 72;

/// The report signature area (512 bytes at 0x2A0).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct SnpSignature {
    /// r, little-endian, zero-padded to 72 bytes.
    pub r: [u8; SIG_COMPONENT_LEN],
    /// s, little-endian, zero-padded to 72 bytes.
    pub s: [u8; SIG_COMPONENT_LEN],
    /// Reserved (zero).
    pub reserved: [u8; 368],
}

const _: () = assert!(size_of::<SnpSignature>() == 0x200);

/// The attestation report as laid out by the PSP.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct AttestationReport {
    /// Report format version (2, 3 or 5).
    pub version: U32,
    /// Guest SVN from the ID block.
    pub guest_svn: U32,
    /// Guest policy ([`Policy`]).
    pub policy: U64,
    /// Family ID from the ID block.
    pub family_id: [u8; 16],
    /// Image ID from the ID block.
    pub image_id: [u8; 16],
    /// VMPL that asked for the report.
    pub vmpl: U32,
    /// Signature algorithm (1 = ECDSA P-384 with SHA-384).
    pub signature_algo: U32,
    /// Current TCB version.
    pub current_tcb: U64,
    /// Platform information ([`PlatformInfo`]).
    pub platform_info: U64,
    /// Signer information ([`SignerInfo`]).
    pub signer_info: U32,
    /// Reserved.
    pub reserved0: U32,
    /// Guest-supplied data.
    pub report_data: [u8; 64],
    /// Launch measurement.
    pub measurement: [u8; 48],
    /// Host-supplied data.
    pub host_data: [u8; 32],
    /// SHA-384 of the ID key.
    pub id_key_digest: [u8; 48],
    /// SHA-384 of the author key.
    pub author_key_digest: [u8; 48],
    /// Report ID of this guest.
    pub report_id: [u8; 32],
    /// Report ID of the migration agent.
    pub report_id_ma: [u8; 32],
    /// TCB version the report is signed with (the VCEK's TCB).
    pub reported_tcb: U64,
    /// CPUID family (version 3 and later).
    pub cpuid_fam_id: u8,
    /// CPUID model (version 3 and later).
    pub cpuid_mod_id: u8,
    /// CPUID stepping (version 3 and later).
    pub cpuid_step: u8,
    /// Reserved.
    pub reserved1: [u8; 21],
    /// Chip identifier (zero when masked; only 8 bytes used on Turin).
    pub chip_id: [u8; 64],
    /// Committed TCB version.
    pub committed_tcb: U64,
    /// Current firmware build.
    pub current_build: u8,
    /// Current firmware minor version.
    pub current_minor: u8,
    /// Current firmware major version.
    pub current_major: u8,
    /// Reserved.
    pub reserved2: u8,
    /// Committed firmware build.
    pub committed_build: u8,
    /// Committed firmware minor version.
    pub committed_minor: u8,
    /// Committed firmware major version.
    pub committed_major: u8,
    /// Reserved.
    pub reserved3: u8,
    /// TCB version at launch.
    pub launch_tcb: U64,
    /// Launch mitigation vector (version 5).
    pub launch_mit_vector: U64,
    /// Current mitigation vector (version 5).
    pub current_mit_vector: U64,
    /// Reserved.
    pub reserved4: [u8; 0x98],
    /// The signature over bytes `0..0x2A0`.
    pub signature: SnpSignature,
}

const _: () = assert!(size_of::<AttestationReport>() == REPORT_SIZE);
const _: () = assert!(offset_of!(AttestationReport, vmpl) == 0x30);
const _: () = assert!(offset_of!(AttestationReport, signer_info) == 0x48);
const _: () = assert!(offset_of!(AttestationReport, report_data) == 0x50);
const _: () = assert!(offset_of!(AttestationReport, measurement) == 0x90);
const _: () = assert!(offset_of!(AttestationReport, reported_tcb) == 0x180);
const _: () = assert!(offset_of!(AttestationReport, cpuid_fam_id) == 0x188);
const _: () = assert!(offset_of!(AttestationReport, chip_id) == 0x1A0);
const _: () = assert!(offset_of!(AttestationReport, committed_tcb) == 0x1E0);
const _: () = assert!(offset_of!(AttestationReport, current_build) == 0x1E8);
const _: () = assert!(offset_of!(AttestationReport, committed_build) == 0x1EC);
const _: () = assert!(offset_of!(AttestationReport, launch_tcb) == 0x1F0);
const _: () = assert!(offset_of!(AttestationReport, current_mit_vector) == 0x200);
const _: () = assert!(offset_of!(AttestationReport, signature) == SIGNED_LEN);

/// Why a buffer is not a report this crate decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportError {
    /// The buffer is not exactly [`REPORT_SIZE`] bytes.
    WrongSize {
        /// Length given.
        seen: usize,
        /// Length required.
        expected: usize,
    },
    /// The version field is not one of [`SUPPORTED_VERSIONS`].
    UnsupportedVersion {
        /// Version read from the report.
        seen: u32,
    },
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongSize { seen, expected } => write!(
                f,
                "report size: {seen} bytes, expected exactly {expected} (0x{expected:x})"
            ),
            Self::UnsupportedVersion { seen } => write!(
                f,
                "report version: {seen} is not supported, expected one of {SUPPORTED_VERSIONS:?}"
            ),
        }
    }
}

/// Guest policy (report offset 0x08).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Policy(pub u64);

impl Policy {
    /// Minimum firmware ABI minor version (bits 7:0).
    pub const fn abi_minor(self) -> u8 {
        self.0 as u8
    }
    /// Minimum firmware ABI major version (bits 15:8).
    pub const fn abi_major(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Bit 16: SMT allowed.
    pub const fn smt(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Bit 17: reserved, must be one.
    pub const fn reserved_must_be_one(self) -> bool {
        self.0 & (1 << 17) != 0
    }
    /// Bit 18: association with a migration agent allowed.
    pub const fn migrate_ma(self) -> bool {
        self.0 & (1 << 18) != 0
    }
    /// Bit 19: debugging allowed (the hypervisor can read and write guest memory).
    pub const fn debug(self) -> bool {
        self.0 & (1 << 19) != 0
    }
    /// Bit 20: the guest may run on a single socket only.
    pub const fn single_socket(self) -> bool {
        self.0 & (1 << 20) != 0
    }
}

/// Platform information (report offset 0x40). Bit meanings from the SNP firmware
/// ABI (56860).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlatformInfo(pub u64);

impl PlatformInfo {
    /// Bit 0: SMT enabled on the platform.
    pub const fn smt_enabled(self) -> bool {
        self.0 & 1 != 0
    }
    /// Bit 1: transparent SME enabled.
    pub const fn tsme_enabled(self) -> bool {
        self.0 & (1 << 1) != 0
    }
    /// Bit 2: ECC memory in use.
    pub const fn ecc_enabled(self) -> bool {
        self.0 & (1 << 2) != 0
    }
    /// Bit 3: RAPL disabled.
    pub const fn rapl_disabled(self) -> bool {
        self.0 & (1 << 3) != 0
    }
    /// Bit 4: ciphertext hiding enabled.
    pub const fn ciphertext_hiding_enabled(self) -> bool {
        self.0 & (1 << 4) != 0
    }
}

/// Which key signed the report (signer info bits 4:2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigningKey {
    /// Versioned chip endorsement key (0).
    Vcek,
    /// Versioned loaded endorsement key (1).
    Vlek,
    /// Not signed (7).
    None,
    /// A reserved value.
    Reserved(u8),
}

impl SigningKey {
    /// Decode the 3-bit field.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 7 {
            0 => Self::Vcek,
            1 => Self::Vlek,
            7 => Self::None,
            other => Self::Reserved(other),
        }
    }
    /// Lower-case name (`vcek`, `vlek`, `none`, `reserved`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Vcek => "vcek",
            Self::Vlek => "vlek",
            Self::None => "none",
            Self::Reserved(_) => "reserved",
        }
    }
}

impl fmt::Display for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Reserved(v) => write!(f, "reserved({v})"),
            other => f.write_str(other.name()),
        }
    }
}

/// Signer information (report offset 0x48).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SignerInfo(pub u32);

impl SignerInfo {
    /// Bit 0: the author key digest is present.
    pub const fn author_key_en(self) -> bool {
        self.0 & 1 != 0
    }
    /// Bit 1: CHIP_ID is masked (zero).
    pub const fn mask_chip_key(self) -> bool {
        self.0 & 2 != 0
    }
    /// Bits 4:2: the signing key.
    pub const fn signing_key(self) -> SigningKey {
        SigningKey::from_bits((self.0 >> 2) as u8)
    }
}

/// AMD EPYC processor generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Generation {
    /// Zen 3 (family 0x19, models 0x00-0x0F).
    Milan,
    /// Zen 4 (family 0x19, models 0x10-0x1F and 0xA0-0xAF).
    Genoa,
    /// Zen 5 (family 0x1A, models 0x00-0x11).
    Turin,
}

impl Generation {
    /// All generations, oldest first.
    pub const ALL: [Self; 3] = [Self::Milan, Self::Genoa, Self::Turin];

    /// Generation from CPUID family and model, if known.
    pub const fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0F) => Some(Self::Milan),
            (0x19, 0x10..=0x1F) | (0x19, 0xA0..=0xAF) => Some(Self::Genoa),
            (0x1A, 0x00..=0x11) => Some(Self::Turin),
            _ => None,
        }
    }

    /// Generation from the start of a certificate's `productName` (e.g. `Milan-B0`).
    pub fn from_product_name(name: &str) -> Option<Self> {
        let base = name.split('-').next().unwrap_or(name);
        Self::ALL
            .into_iter()
            .find(|g| g.name().eq_ignore_ascii_case(base))
    }

    /// Lower-case name (`milan`, `genoa`, `turin`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Milan => "milan",
            Self::Genoa => "genoa",
            Self::Turin => "turin",
        }
    }

    /// How this generation lays out a TCB_VERSION.
    pub const fn tcb_layout(self) -> TcbLayout {
        match self {
            Self::Milan | Self::Genoa => TcbLayout::MilanGenoa,
            Self::Turin => TcbLayout::Turin,
        }
    }
}

impl fmt::Display for Generation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Byte layout of a TCB_VERSION.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcbLayout {
    /// Byte 0 bootloader, 1 TEE, 6 SNP, 7 microcode.
    MilanGenoa,
    /// Byte 0 FMC, 1 bootloader, 2 TEE, 3 SNP, 7 microcode.
    Turin,
}

/// A decoded TCB_VERSION.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tcb {
    /// Firmware FMC SPL (Turin only).
    pub fmc: Option<u8>,
    /// Bootloader SPL.
    pub bootloader: u8,
    /// TEE (PSP OS) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
}

impl Tcb {
    /// Decode a raw TCB_VERSION.
    pub const fn decode(raw: u64, layout: TcbLayout) -> Self {
        let b = raw.to_le_bytes();
        match layout {
            TcbLayout::MilanGenoa => Self {
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            },
            TcbLayout::Turin => Self {
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            },
        }
    }

    /// Encode back into a raw TCB_VERSION (reserved bytes zero).
    pub const fn encode(self, layout: TcbLayout) -> u64 {
        let mut b = [0u8; 8];
        match layout {
            TcbLayout::MilanGenoa => {
                b[0] = self.bootloader;
                b[1] = self.tee;
                b[6] = self.snp;
                b[7] = self.microcode;
            }
            TcbLayout::Turin => {
                b[0] = match self.fmc {
                    Some(v) => v,
                    None => 0,
                };
                b[1] = self.bootloader;
                b[2] = self.tee;
                b[3] = self.snp;
                b[7] = self.microcode;
            }
        }
        u64::from_le_bytes(b)
    }
}

impl fmt::Display for Tcb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bootloader={} tee={} snp={} microcode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

impl AttestationReport {
    /// View `bytes` as a report: exactly [`REPORT_SIZE`] bytes, supported version.
    pub fn from_bytes(bytes: &[u8]) -> Result<&Self, ReportError> {
        let report = Self::ref_from_bytes(bytes).map_err(|_| ReportError::WrongSize {
            seen: bytes.len(),
            expected: REPORT_SIZE,
        })?;
        let version = report.version.get();
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(ReportError::UnsupportedVersion { seen: version });
        }
        Ok(report)
    }

    /// The bytes covered by the signature (`0..0x2A0`).
    pub fn signed_bytes(&self) -> &[u8] {
        let all: &[u8] = self.as_bytes();
        let (signed, _) = all.split_at(SIGNED_LEN);
        signed
    }

    /// The guest policy.
    pub fn policy(&self) -> Policy {
        Policy(self.policy.get())
    }

    /// The platform information.
    pub fn platform_info(&self) -> PlatformInfo {
        PlatformInfo(self.platform_info.get())
    }

    /// The signer information.
    pub fn signer_info(&self) -> SignerInfo {
        SignerInfo(self.signer_info.get())
    }

    /// CPUID family, model and stepping (version 3 and later).
    pub fn cpuid(&self) -> Option<(u8, u8, u8)> {
        (self.version.get() >= 3).then_some((self.cpuid_fam_id, self.cpuid_mod_id, self.cpuid_step))
    }

    /// Whether CHIP_ID has only its first 8 bytes set (the Turin shape).
    pub fn chip_id_is_turin_shaped(&self) -> bool {
        let (head, tail) = self.chip_id.split_at(8);
        head.iter().any(|&b| b != 0) && tail.iter().all(|&b| b == 0)
    }

    /// The processor generation as far as the report alone tells: from CPUID for
    /// version 3 and later; for version 2, Turin when CHIP_ID has the Turin shape,
    /// otherwise unknown (Milan and Genoa cannot be told apart from a v2 report).
    pub fn generation(&self) -> Option<Generation> {
        match self.cpuid() {
            Some((family, model, _)) => Generation::from_cpuid(family, model),
            None if self.chip_id_is_turin_shaped() => Some(Generation::Turin),
            None => None,
        }
    }

    /// The TCB layout implied by [`Self::generation`] (Milan/Genoa unless Turin).
    pub fn tcb_layout(&self) -> TcbLayout {
        match self.generation() {
            Some(g) => g.tcb_layout(),
            None => TcbLayout::MilanGenoa,
        }
    }

    /// CURRENT_TCB, decoded with `layout`.
    pub fn current_tcb(&self, layout: TcbLayout) -> Tcb {
        Tcb::decode(self.current_tcb.get(), layout)
    }

    /// REPORTED_TCB, decoded with `layout`.
    pub fn reported_tcb(&self, layout: TcbLayout) -> Tcb {
        Tcb::decode(self.reported_tcb.get(), layout)
    }

    /// COMMITTED_TCB, decoded with `layout`.
    pub fn committed_tcb(&self, layout: TcbLayout) -> Tcb {
        Tcb::decode(self.committed_tcb.get(), layout)
    }

    /// LAUNCH_TCB, decoded with `layout`.
    pub fn launch_tcb(&self, layout: TcbLayout) -> Tcb {
        Tcb::decode(self.launch_tcb.get(), layout)
    }

    /// Current firmware version as (major, minor, build).
    pub fn current_version(&self) -> (u8, u8, u8) {
        (self.current_major, self.current_minor, self.current_build)
    }

    /// Committed firmware version as (major, minor, build).
    pub fn committed_version(&self) -> (u8, u8, u8) {
        (
            self.committed_major,
            self.committed_minor,
            self.committed_build,
        )
    }

    /// Launch and current mitigation vectors (version 5 and later).
    pub fn mit_vectors(&self) -> Option<(u64, u64)> {
        (self.version.get() >= 5)
            .then_some((self.launch_mit_vector.get(), self.current_mit_vector.get()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    fn blank(version: u32) -> AttestationReport {
        let mut r = AttestationReport::new_zeroed();
        r.version = U32::new(version);
        r
    }

    #[test]
    fn round_trip_through_bytes() {
        let mut r = blank(3);
        r.vmpl = U32::new(2);
        r.report_data[0] = 0xAA;
        r.signature.s[71] = 0x55;
        let bytes = r.as_bytes();
        assert_eq!(bytes.len(), REPORT_SIZE);
        assert_eq!(bytes[0x30], 2);
        assert_eq!(bytes[0x50], 0xAA);
        assert_eq!(bytes[0x2E8 + 71], 0x55);
        let back = AttestationReport::from_bytes(bytes);
        assert_eq!(back, Ok(&r));
    }

    #[test]
    fn size_and_version_are_checked() {
        let r = blank(2);
        let bytes = r.as_bytes();
        assert_eq!(
            AttestationReport::from_bytes(&bytes[..REPORT_SIZE - 1]),
            Err(ReportError::WrongSize {
                seen: REPORT_SIZE - 1,
                expected: REPORT_SIZE
            })
        );
        let mut long = [0u8; REPORT_SIZE + 1];
        long[..REPORT_SIZE].copy_from_slice(bytes);
        assert!(matches!(
            AttestationReport::from_bytes(&long),
            Err(ReportError::WrongSize { seen: 0x4A1, .. })
        ));
        for v in [0, 1, 4, 6, u32::MAX] {
            assert_eq!(
                AttestationReport::from_bytes(blank(v).as_bytes()),
                Err(ReportError::UnsupportedVersion { seen: v })
            );
        }
        for v in SUPPORTED_VERSIONS {
            assert!(AttestationReport::from_bytes(blank(v).as_bytes()).is_ok());
        }
    }

    #[test]
    fn bit_fields() {
        let p = Policy(0xb0000 | 0x1f);
        assert!(p.smt() && p.reserved_must_be_one() && p.debug());
        assert!(!p.migrate_ma() && !p.single_socket());
        assert_eq!(p.abi_minor(), 0x1f);
        let s = SignerInfo(0b111 << 2 | 1);
        assert_eq!(s.signing_key(), SigningKey::None);
        assert!(s.author_key_en() && !s.mask_chip_key());
        assert_eq!(SignerInfo(0b1_10).signing_key(), SigningKey::Vlek);
        assert!(SignerInfo(0b1_10).mask_chip_key());
        assert_eq!(SigningKey::from_bits(3), SigningKey::Reserved(3));
    }

    #[test]
    fn tcb_layouts() {
        let raw = u64::from_le_bytes([1, 2, 3, 4, 5, 6, 7, 8]);
        let m = Tcb::decode(raw, TcbLayout::MilanGenoa);
        assert_eq!(
            (m.fmc, m.bootloader, m.tee, m.snp, m.microcode),
            (None, 1, 2, 7, 8)
        );
        let t = Tcb::decode(raw, TcbLayout::Turin);
        assert_eq!(
            (t.fmc, t.bootloader, t.tee, t.snp, t.microcode),
            (Some(1), 2, 3, 4, 8)
        );
        assert_eq!(
            Tcb::decode(m.encode(TcbLayout::MilanGenoa), TcbLayout::MilanGenoa),
            m
        );
        assert_eq!(Tcb::decode(t.encode(TcbLayout::Turin), TcbLayout::Turin), t);
    }

    #[test]
    fn generation_detection() {
        let mut r = blank(3);
        for (fam, model, gen) in [
            (0x19, 0x01, Some(Generation::Milan)),
            (0x19, 0x11, Some(Generation::Genoa)),
            (0x19, 0xA0, Some(Generation::Genoa)),
            (0x1A, 0x02, Some(Generation::Turin)),
            (0x17, 0x01, None),
        ] {
            r.cpuid_fam_id = fam;
            r.cpuid_mod_id = model;
            assert_eq!(r.generation(), gen, "family {fam:#x} model {model:#x}");
        }
        // Version 2: only the CHIP_ID shape speaks.
        let mut r = blank(2);
        r.cpuid_fam_id = 0x19;
        assert_eq!(r.cpuid(), None);
        assert_eq!(r.generation(), None);
        r.chip_id[..8].fill(0x11);
        assert_eq!(r.generation(), Some(Generation::Turin));
        assert_eq!(r.tcb_layout(), TcbLayout::Turin);
        r.chip_id[8] = 1;
        assert_eq!(r.generation(), None);
        assert_eq!(r.tcb_layout(), TcbLayout::MilanGenoa);
        assert_eq!(
            Generation::from_product_name("Milan-B0"),
            Some(Generation::Milan)
        );
        assert_eq!(
            Generation::from_product_name("Genoa"),
            Some(Generation::Genoa)
        );
        assert_eq!(Generation::from_product_name("Naples"), None);
    }
}
