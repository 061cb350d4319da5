//! Trust anchors: the AMD root keys (ARK) per generation, pinned by SHA-256, with
//! their intermediates (ASK for VCEKs, ASVK for VLEKs); plus, only if the caller
//! opts in, extra roots (e.g. a development ARK) that are not pinned.
//!
//! Walking a chain: ARK self-signature, ARK -> ASK/ASVK, ASK/ASVK -> VCEK/VLEK,
//! each RSASSA-PSS / SHA-384 / MGF1-SHA-384 / salt 48. Validity periods are not
//! checked (there is no trusted clock here, and AMD's VLEKs are short-lived); a
//! caller with a clock can check them on [`Cert::certificate`].

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use nitride_protocol::snp::Generation;

use super::cert::{Cert, EkExtensions};
use super::error::{CertRole, RootUsed, VerifyError};

const fn hex_nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => panic!("bad hex digit in a pinned fingerprint"),
    }
}

const fn hex32(s: &str) -> [u8; 32] {
    let b = s.as_bytes();
    assert!(b.len() == 64);
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (hex_nibble(b[2 * i]) << 4) | hex_nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

/// SHA-256 fingerprints (of the DER) of the AMD ARKs.
pub const PINNED_ARKS: [(Generation, [u8; 32]); 3] = [
    (
        Generation::Milan,
        hex32("69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd"),
    ),
    (
        Generation::Genoa,
        hex32("4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1"),
    ),
    (
        Generation::Turin,
        hex32("1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a"),
    ),
];

/// The pinned fingerprint for `generation`.
pub fn pinned_ark(generation: Generation) -> [u8; 32] {
    PINNED_ARKS
        .iter()
        .find(|(g, _)| *g == generation)
        .map(|(_, fp)| *fp)
        .unwrap_or([0; 32])
}

/// The AMD root PEMs bundled with this crate (`guest-driver/certs/`), per generation:
/// (ARK, ASK, ASVK).
pub const BUNDLED_PEMS: [(Generation, &str, &str, &str); 3] = [
    (
        Generation::Milan,
        include_str!("../../certs/milan-ark.pem"),
        include_str!("../../certs/milan-ask.pem"),
        include_str!("../../certs/milan-asvk.pem"),
    ),
    (
        Generation::Genoa,
        include_str!("../../certs/genoa-ark.pem"),
        include_str!("../../certs/genoa-ask.pem"),
        include_str!("../../certs/genoa-asvk.pem"),
    ),
    (
        Generation::Turin,
        include_str!("../../certs/turin-ark.pem"),
        include_str!("../../certs/turin-ask.pem"),
        include_str!("../../certs/turin-asvk.pem"),
    ),
];

/// The label of a development root added by [`TrustAnchors::add_dev_root`].
pub const DEV_ROOT_LABEL: &str = "development";

/// The generation a certificate's subject names (`Milan`, `Genoa`, `Turin`).
pub fn generation_from_subject(cert: &Cert) -> Option<Generation> {
    let subject = cert.certificate().tbs_certificate.subject.to_string();
    Generation::ALL
        .into_iter()
        .find(|g| subject.contains(g.name()) || subject.contains(generation_title(*g)))
}

fn generation_title(g: Generation) -> &'static str {
    match g {
        Generation::Milan => "Milan",
        Generation::Genoa => "Genoa",
        Generation::Turin => "Turin",
    }
}

/// Why a development root directory could not be loaded.
#[cfg(feature = "std")]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DevRootError {
    /// A file could not be read.
    Io {
        /// The file.
        path: String,
        /// The error.
        error: String,
    },
    /// A certificate is not usable.
    Cert(VerifyError),
}

#[cfg(feature = "std")]
impl core::fmt::Display for DevRootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Io { path, error } => write!(f, "development root: {path}: {error}"),
            Self::Cert(e) => write!(f, "development root: {e}"),
        }
    }
}

/// The certificates found in a certificate table (`snp::certs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableCerts<'a> {
    /// The VCEK, or else the VLEK.
    pub endorsement: Option<&'a [u8]>,
    /// The ASK (or ASVK).
    pub ask: Option<&'a [u8]>,
    /// The ARK.
    pub ark: Option<&'a [u8]>,
}

/// Pick the endorsement key (VCEK, else VLEK), ASK and ARK out of a certificate table.
pub fn table_certs(table: &[u8]) -> Result<TableCerts<'_>, nitride_protocol::snp::CertTableError> {
    use nitride_protocol::snp::CertKind;
    let mut out = TableCerts::default();
    let mut vlek = None;
    for entry in nitride_protocol::snp::certs::entries(table) {
        let (kind, bytes) = entry?;
        match kind {
            CertKind::Vcek => out.endorsement = out.endorsement.or(Some(bytes)),
            CertKind::Vlek => vlek = vlek.or(Some(bytes)),
            CertKind::Ask => out.ask = out.ask.or(Some(bytes)),
            CertKind::Ark => out.ark = out.ark.or(Some(bytes)),
            CertKind::Other(_) => {}
        }
    }
    out.endorsement = out.endorsement.or(vlek);
    Ok(out)
}

/// One root with its intermediates.
#[derive(Clone, Debug)]
pub struct RootSet {
    /// Which root this is (pinned AMD, or an opted-in extra).
    pub source: RootUsed,
    /// Generation served.
    pub generation: Generation,
    ark: Cert,
    ask: Option<Cert>,
    asvk: Option<Cert>,
}

/// The roots a verifier trusts.
#[derive(Clone, Debug, Default)]
pub struct TrustAnchors {
    sets: Vec<RootSet>,
}

/// A VCEK/VLEK whose chain has been checked, ready to verify reports.
#[derive(Clone, Debug)]
pub struct Endorsement {
    /// The certificate.
    pub cert: Cert,
    /// Its AMD extensions (kind, SPLs, hwID/cspID).
    pub extensions: EkExtensions,
    /// Generation of the chain used.
    pub generation: Generation,
    /// The root the chain ends in.
    pub root: RootUsed,
    pub(super) key: p384::ecdsa::VerifyingKey,
}

fn parse_opt(role: CertRole, bytes: Option<&[u8]>) -> Result<Option<Cert>, VerifyError> {
    bytes.map(|b| Cert::from_pem_or_der(role, b)).transpose()
}

impl TrustAnchors {
    /// No anchors at all.
    pub fn empty() -> Self {
        Self::default()
    }

    /// The AMD roots bundled with this crate, pinned.
    pub fn amd_builtin() -> Result<Self, VerifyError> {
        let mut a = Self::empty();
        for (g, ark, ask, asvk) in BUNDLED_PEMS {
            a.add_amd(
                g,
                ark.as_bytes(),
                Some(ask.as_bytes()),
                Some(asvk.as_bytes()),
            )?;
        }
        Ok(a)
    }

    /// Add an AMD ARK (PEM or DER) for `generation`, with its ASK and/or ASVK. The ARK
    /// must have the pinned fingerprint of that generation.
    pub fn add_amd(
        &mut self,
        generation: Generation,
        ark: &[u8],
        ask: Option<&[u8]>,
        asvk: Option<&[u8]>,
    ) -> Result<(), VerifyError> {
        let ark = Cert::from_pem_or_der(CertRole::Ark, ark)?;
        let (seen, expected) = (ark.sha256(), pinned_ark(generation));
        if seen != expected {
            return Err(VerifyError::ArkNotPinned {
                generation,
                seen,
                expected,
            });
        }
        self.sets.push(RootSet {
            source: RootUsed::Amd(generation),
            generation,
            ark,
            ask: parse_opt(CertRole::Ask, ask)?,
            asvk: parse_opt(CertRole::Asvk, asvk)?,
        });
        Ok(())
    }

    /// Explicitly trust an extra, unpinned root for `generation` (e.g. a development
    /// ARK). It is tried after the AMD roots; a verdict through it names `label`.
    pub fn add_extra_root(
        &mut self,
        label: &str,
        generation: Generation,
        ark: &[u8],
        ask: Option<&[u8]>,
        asvk: Option<&[u8]>,
    ) -> Result<(), VerifyError> {
        self.sets.push(RootSet {
            source: RootUsed::Extra {
                label: String::from(label),
                generation,
            },
            generation,
            ark: Cert::from_pem_or_der(CertRole::Ark, ark)?,
            ask: parse_opt(CertRole::Ask, ask)?,
            asvk: parse_opt(CertRole::Asvk, asvk)?,
        });
        Ok(())
    }

    /// Explicitly trust a *development* root (the virtual SNP machine's dev ARK and ASK,
    /// PEM or DER) under the label [`DEV_ROOT_LABEL`]. Its generation comes from the
    /// ARK's or ASK's subject (a name containing `Milan`, `Genoa` or `Turin`, as AMD's
    /// `SEV-Genoa` / `ARK-Genoa` do), else Genoa, the generation the emulated PSP
    /// plays. Refuses an ARK that is a pinned AMD ARK (that is no development root).
    pub fn add_dev_root(&mut self, ark: &[u8], ask: &[u8]) -> Result<Generation, VerifyError> {
        let ark_cert = Cert::from_pem_or_der(CertRole::Ark, ark)?;
        let ask_cert = Cert::from_pem_or_der(CertRole::Ask, ask)?;
        if let Some((g, _)) = PINNED_ARKS.iter().find(|(_, fp)| *fp == ark_cert.sha256()) {
            return Err(VerifyError::CertMalformed {
                role: CertRole::Ark,
                reason: alloc::format!(
                    "offered as a development root, but it is the pinned AMD ARK of {g}"
                ),
            });
        }
        let generation = generation_from_subject(&ark_cert)
            .or_else(|| generation_from_subject(&ask_cert))
            .unwrap_or(Generation::Genoa);
        self.add_extra_root(DEV_ROOT_LABEL, generation, ark, Some(ask), None)?;
        Ok(generation)
    }

    /// [`Self::add_dev_root`] from a directory holding `ark.pem` and `ask.pem` (the
    /// layout of `target/dev-chain/`).
    #[cfg(feature = "std")]
    pub fn add_dev_root_dir(&mut self, dir: &std::path::Path) -> Result<Generation, DevRootError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read(&path).map_err(|e| DevRootError::Io {
                path: path.display().to_string(),
                error: e.to_string(),
            })
        };
        let (ark, ask) = (read("ark.pem")?, read("ask.pem")?);
        self.add_dev_root(&ark, &ask).map_err(DevRootError::Cert)
    }

    /// The root sets, AMD ones first.
    pub fn sets(&self) -> impl Iterator<Item = &RootSet> {
        let amd = self
            .sets
            .iter()
            .filter(|s| matches!(s.source, RootUsed::Amd(_)));
        let extra = self
            .sets
            .iter()
            .filter(|s| !matches!(s.source, RootUsed::Amd(_)));
        amd.chain(extra)
    }

    /// Check a VCEK/VLEK (PEM or DER) up to a trusted root. `report_generation` is what
    /// the report says (if anything); the certificate's productName must agree.
    pub fn verify_endorsement(
        &self,
        ek: &[u8],
        report_generation: Option<Generation>,
    ) -> Result<Endorsement, VerifyError> {
        let cert = Cert::from_pem_or_der(CertRole::Endorsement, ek)?;
        let extensions = cert.amd_extensions()?;
        let role = match extensions.kind {
            nitride_protocol::snp::SigningKey::Vlek => CertRole::Vlek,
            _ => CertRole::Vcek,
        };
        let cert_generation = extensions
            .product_name
            .as_deref()
            .and_then(Generation::from_product_name);
        let generation = match (report_generation, cert_generation) {
            (Some(r), Some(c)) if r != c => {
                return Err(VerifyError::GenerationMismatch { report: r, cert: c })
            }
            (Some(g), _) | (None, Some(g)) => g,
            (None, None) => {
                return Err(VerifyError::UnknownGeneration {
                    product_name: extensions.product_name.clone(),
                })
            }
        };
        let key = cert.p384_key(role)?;
        let inter_role = if role == CertRole::Vlek {
            CertRole::Asvk
        } else {
            CertRole::Ask
        };
        let mut first_err = None;
        for set in self.sets().filter(|s| s.generation == generation) {
            let inter = match inter_role {
                CertRole::Asvk => set.asvk.as_ref(),
                _ => set.ask.as_ref(),
            };
            let Some(inter) = inter else {
                first_err.get_or_insert(VerifyError::NoTrustAnchor {
                    generation,
                    role: inter_role,
                });
                continue;
            };
            let root = &set.source;
            let checked = set
                .ark
                .check_signed_by(CertRole::Ark, &set.ark, CertRole::Ark, root)
                .and_then(|()| inter.check_signed_by(inter_role, &set.ark, CertRole::Ark, root))
                .and_then(|()| cert.check_signed_by(role, inter, inter_role, root));
            match checked {
                Ok(()) => {
                    return Ok(Endorsement {
                        cert,
                        extensions,
                        generation,
                        root: root.clone(),
                        key,
                    })
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or(VerifyError::NoTrustAnchor {
            generation,
            role: CertRole::Ark,
        }))
    }
}
