//! X.509 certificates of the AMD endorsement chain: parsing (serial number 0
//! accepted), RSASSA-PSS signature checks, public keys, and the AMD extensions of
//! VCEK/VLEK certificates (SPLs, productName, hwID, cspID).

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use der::asn1::{AnyRef, Ia5StringRef, ObjectIdentifier};
use der::{Decode, Encode, Reader, SliceReader, Tag, Tagged};
use p384::ecdsa::VerifyingKey;
use rsa::pkcs1::{DecodeRsaPublicKey, RsaPssParams};
use rsa::{Pss, RsaPublicKey};
use sha2::{Digest, Sha256, Sha384};
use x509_cert::Certificate;

use nitride_protocol::snp::SigningKey;

use super::error::{CertRole, RootUsed, VerifyError};

const OID_RSA_ENCRYPTION: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_RSASSA_PSS: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.10");
const OID_MGF1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.8");
const OID_SHA384: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.2");
const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");

/// AMD extension OIDs (1.3.6.1.4.1.3704.1.*).
pub mod oid {
    use der::asn1::ObjectIdentifier;
    /// structVersion.
    pub const STRUCT_VERSION: ObjectIdentifier =
        ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.1");
    /// productName (IA5String, e.g. `Milan-B0`).
    pub const PRODUCT_NAME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.2");
    /// Bootloader SPL.
    pub const BL_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.1");
    /// TEE SPL.
    pub const TEE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.2");
    /// SNP SPL.
    pub const SNP_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.3");
    /// Microcode SPL.
    pub const UCODE_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.8");
    /// FMC SPL (Turin).
    pub const FMC_SPL: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.3.9");
    /// hwID: CHIP_ID as raw bytes (VCEK).
    pub const HW_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.4");
    /// cspID: the cloud provider (VLEK).
    pub const CSP_ID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.3704.1.5");
}

/// A parsed certificate, with its raw to-be-signed bytes kept for signature checks.
#[derive(Clone, Debug)]
pub struct Cert {
    der: Vec<u8>,
    tbs: Vec<u8>,
    cert: Certificate,
}

fn malformed(role: CertRole, reason: impl ToString) -> VerifyError {
    VerifyError::CertMalformed {
        role,
        reason: reason.to_string(),
    }
}

impl Cert {
    /// Parse DER. Serial number 0 (as on every VCEK/VLEK) is accepted.
    pub fn from_der(role: CertRole, der: &[u8]) -> Result<Self, VerifyError> {
        let outer = AnyRef::from_der(der).map_err(|e| malformed(role, e))?;
        if outer.tag() != Tag::Sequence {
            return Err(malformed(role, "not a DER SEQUENCE"));
        }
        let mut reader = SliceReader::new(outer.value()).map_err(|e| malformed(role, e))?;
        let tbs = reader.tlv_bytes().map_err(|e| malformed(role, e))?.to_vec();
        let cert = Certificate::from_der(der).map_err(|e| malformed(role, e))?;
        Ok(Self {
            der: der.to_vec(),
            tbs,
            cert,
        })
    }

    /// Parse PEM (`CERTIFICATE` label) or, failing that, DER.
    pub fn from_pem_or_der(role: CertRole, bytes: &[u8]) -> Result<Self, VerifyError> {
        let text = core::str::from_utf8(bytes)
            .ok()
            .filter(|t| t.contains("-----BEGIN"));
        match text {
            Some(text) => {
                let (label, doc) = der::Document::from_pem(text).map_err(|e| malformed(role, e))?;
                if label != "CERTIFICATE" {
                    return Err(malformed(
                        role,
                        format!("PEM label {label}, expected CERTIFICATE"),
                    ));
                }
                Self::from_der(role, doc.as_bytes())
            }
            None => Self::from_der(role, bytes),
        }
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// SHA-256 of the DER encoding (the pinning fingerprint).
    pub fn sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.der).into()
    }

    /// The parsed structure.
    pub fn certificate(&self) -> &Certificate {
        &self.cert
    }

    /// Check that the signature algorithm is RSASSA-PSS with SHA-384, MGF1-SHA-384
    /// and salt 48, the same in the outer and the to-be-signed structure.
    fn check_pss_params(&self, role: CertRole) -> Result<(), VerifyError> {
        let alg = &self.cert.signature_algorithm;
        let bad = |seen: String| VerifyError::CertAlgorithm { role, seen };
        if alg.oid != OID_RSASSA_PSS {
            return Err(bad(format!("OID {}", alg.oid)));
        }
        if *alg != self.cert.tbs_certificate.signature {
            return Err(bad("outer and inner signature algorithms differ".into()));
        }
        let params = alg
            .parameters
            .as_ref()
            .ok_or_else(|| bad("PSS without parameters".into()))?;
        let params_der = params.to_der().map_err(|e| malformed(role, e))?;
        let p = RsaPssParams::from_der(&params_der).map_err(|e| malformed(role, e))?;
        let mgf_hash = p.mask_gen.parameters.as_ref().map(|h| h.oid);
        if p.hash.oid != OID_SHA384
            || p.mask_gen.oid != OID_MGF1
            || mgf_hash != Some(OID_SHA384)
            || p.salt_len != 48
        {
            return Err(bad(format!(
                "hash {}, mask {} with {:?}, salt {}",
                p.hash.oid, p.mask_gen.oid, mgf_hash, p.salt_len
            )));
        }
        Ok(())
    }

    /// The RSA public key (ARK, ASK, ASVK).
    pub fn rsa_key(&self, role: CertRole) -> Result<RsaPublicKey, VerifyError> {
        let spki = &self.cert.tbs_certificate.subject_public_key_info;
        if spki.algorithm.oid != OID_RSA_ENCRYPTION {
            return Err(malformed(
                role,
                format!(
                    "public key OID {}, expected rsaEncryption",
                    spki.algorithm.oid
                ),
            ));
        }
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| malformed(role, "public key bit string has unused bits"))?;
        RsaPublicKey::from_pkcs1_der(bits).map_err(|e| malformed(role, e))
    }

    /// The P-384 public key (VCEK, VLEK).
    pub fn p384_key(&self, role: CertRole) -> Result<VerifyingKey, VerifyError> {
        let spki = &self.cert.tbs_certificate.subject_public_key_info;
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
        if spki.algorithm.oid != OID_EC_PUBLIC_KEY || curve != Some(OID_SECP384R1) {
            return Err(malformed(
                role,
                format!(
                    "public key {} / {:?}, expected id-ecPublicKey / secp384r1",
                    spki.algorithm.oid, curve
                ),
            ));
        }
        let bits = spki
            .subject_public_key
            .as_bytes()
            .ok_or_else(|| malformed(role, "public key bit string has unused bits"))?;
        VerifyingKey::from_sec1_bytes(bits).map_err(|_| malformed(role, "invalid P-384 point"))
    }

    /// Check that this certificate (`role`) is signed by `issuer` (`issuer_role`).
    pub fn check_signed_by(
        &self,
        role: CertRole,
        issuer: &Cert,
        issuer_role: CertRole,
        root: &RootUsed,
    ) -> Result<(), VerifyError> {
        self.check_pss_params(role)?;
        let key = issuer.rsa_key(issuer_role)?;
        let sig = self
            .cert
            .signature
            .as_bytes()
            .ok_or_else(|| malformed(role, "signature bit string has unused bits"))?;
        let hash = Sha384::digest(&self.tbs);
        key.verify(Pss::new_with_salt::<Sha384>(48), &hash, sig)
            .map_err(|_| VerifyError::CertSignature {
                subject: role,
                issuer: issuer_role,
                root: root.clone(),
            })
    }

    /// The AMD extensions of an endorsement-key certificate.
    pub fn amd_extensions(&self) -> Result<EkExtensions, VerifyError> {
        let role = CertRole::Endorsement;
        let mut x = EkExtensions::default();
        let mut spls = [None; 5];
        for ext in self.cert.tbs_certificate.extensions.iter().flatten() {
            let v = ext.extn_value.as_bytes();
            let spl = |name: &str| {
                u8::from_der(v)
                    .map(Some)
                    .map_err(|e| malformed(role, format!("{name} extension: {e}")))
            };
            match ext.extn_id {
                oid::PRODUCT_NAME => {
                    let s = Ia5StringRef::from_der(v)
                        .map_err(|e| malformed(role, format!("productName extension: {e}")))?;
                    x.product_name = Some(s.as_str().into());
                }
                oid::BL_SPL => spls[0] = spl("blSPL")?,
                oid::TEE_SPL => spls[1] = spl("teeSPL")?,
                oid::SNP_SPL => spls[2] = spl("snpSPL")?,
                oid::UCODE_SPL => spls[3] = spl("ucodeSPL")?,
                oid::FMC_SPL => spls[4] = spl("fmcSPL")?,
                oid::HW_ID => x.hw_id = Some(v.to_vec()),
                oid::CSP_ID => {
                    let text = AnyRef::from_der(v).map(|a| a.value()).unwrap_or(v);
                    x.csp_id = Some(String::from_utf8_lossy(text).into_owned());
                }
                _ => {}
            }
        }
        let need = |v: Option<u8>, name: &str| {
            v.ok_or_else(|| malformed(role, format!("{name} extension missing")))
        };
        x.bootloader = need(spls[0], "blSPL")?;
        x.tee = need(spls[1], "teeSPL")?;
        x.snp = need(spls[2], "snpSPL")?;
        x.microcode = need(spls[3], "ucodeSPL")?;
        x.fmc = spls[4];
        x.kind = match (&x.hw_id, &x.csp_id) {
            (Some(_), None) => SigningKey::Vcek,
            (None, Some(_)) => SigningKey::Vlek,
            _ => {
                return Err(malformed(
                    role,
                    "expected exactly one of hwID (VCEK) and cspID (VLEK)",
                ))
            }
        };
        Ok(x)
    }
}

/// What a VCEK/VLEK certificate says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EkExtensions {
    /// VCEK (has hwID) or VLEK (has cspID).
    pub kind: SigningKey,
    /// productName, e.g. `Milan-B0`.
    pub product_name: Option<String>,
    /// Bootloader SPL.
    pub bootloader: u8,
    /// TEE SPL.
    pub tee: u8,
    /// SNP SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
    /// FMC SPL (Turin).
    pub fmc: Option<u8>,
    /// hwID (VCEK).
    pub hw_id: Option<Vec<u8>>,
    /// cspID (VLEK).
    pub csp_id: Option<String>,
}

impl Default for EkExtensions {
    fn default() -> Self {
        Self {
            kind: SigningKey::None,
            product_name: None,
            bootloader: 0,
            tee: 0,
            snp: 0,
            microcode: 0,
            fmc: None,
            hw_id: None,
            csp_id: None,
        }
    }
}
