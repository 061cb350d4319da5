//! Trust anchors: the AMD root keys (ARK) per generation, pinned by SHA-256, with
//! their intermediates (ASK for VCEKs, ASVK for VLEKs); plus, only if the caller
//! opts in, extra roots (e.g. a development ARK) that are not pinned.
//!
//! Walking a chain: ARK self-signature, ARK -> ASK/ASVK, ASK/ASVK -> VCEK/VLEK,
//! each RSASSA-PSS / SHA-384 / MGF1-SHA-384 / salt 48. Validity periods are not
//! checked (there is no trusted clock here, and AMD's VLEKs are short-lived); a
//! caller with a clock can check them on [`Cert::certificate`].

use alloc::string::String;
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
