//! Every REPORT_DATA form Nitride asks the PSP for, built in one place: the SVSM
//! (kernel and vault) and the verifier both call these constructors, so what one
//! hashes is what the other checks.
//!
//! | form | REPORT_DATA | hash input |
//! |---|---|---|
//! | [`services`] | SHA-512 | `nonce (64) ‖ services manifest table` (the table GUID at offset 64) |
//! | [`single_service`] | SHA-512 | `nonce (64) ‖ one service's manifest` (the vHSM manifest: `NTRDVHSM` at offset 64) |
//! | [`key_binding`] | SHA-512 | the key binding: `nonce (64) ‖ "NITRIDE-KEYBIND2" ‖ …` |
//! | [`kbs_runtime_data`] | SHA-384 ‖ 16 zero bytes | RFC 8785 runtime-data JSON (KBS attestation) |
//!
//! Why no input of one form reads as another (`docs/attestation.md` has the long
//! version):
//! - Every SHA-512 form's input is at least 80 bytes, of which bytes 0..64 are a
//!   nonce and bytes 64..72 a tag only the SVSM writes and that differs between the
//!   forms ([`Form`], [`classify`]). The nonce cannot move the tag: it is exactly 64
//!   bytes in every form. Two inputs of different forms therefore differ at offset
//!   64, and equal REPORT_DATA for them would be a SHA-512 collision.
//! - Within a form, the decoders are canonical (one byte string per value), so one
//!   input has one reading.
//! - The KBS form ends in 16 zero bytes; a SHA-512 output does so with probability
//!   2^-128, so no SHA-512 form's REPORT_DATA is a KBS form's value, nor the
//!   reverse, without an infeasible search.
//!
//! A new form must keep these rules: a SHA-512 input starting with a 64-byte nonce
//! and a new tag at offset 64, or a shorter hash zero-padded.

use sha2::{Digest, Sha384, Sha512};

use super::{
    KeyBinding, ManifestError, Nonce, KEY_BINDING_MAGIC, MANIFEST_TABLE_GUID, NONCE_SIZE,
    VHSM_MANIFEST_MAGIC, VHSM_SERVICE_GUID,
};
use crate::snp::Guid;

/// The length of each form's tag at offset [`NONCE_SIZE`].
pub const TAG_LEN: usize = 8;

/// The REPORT_DATA forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Form {
    /// Protocol 1 ATTEST_SERVICES: nonce ‖ services manifest table.
    Services,
    /// Protocol 1 ATTEST_SINGLE_SERVICE of the vHSM: nonce ‖ vHSM manifest.
    VhsmService,
    /// vHSM AttestKey: the key binding.
    KeyBinding,
    /// KBS attestation: SHA-384 of the runtime-data JSON, zero-padded.
    KbsRuntimeData,
}

impl Form {
    /// The tag a SHA-512 form's input carries at offset [`NONCE_SIZE`] (`None` for
    /// the KBS form, which is told apart by its zero padding).
    pub const fn tag(self) -> Option<[u8; TAG_LEN]> {
        match self {
            Self::Services => Some(first8(&MANIFEST_TABLE_GUID)),
            Self::VhsmService => Some(VHSM_MANIFEST_MAGIC),
            Self::KeyBinding => Some(first8(&KEY_BINDING_MAGIC)),
            Self::KbsRuntimeData => None,
        }
    }

    /// Every form.
    pub const ALL: [Form; 4] = [
        Self::Services,
        Self::VhsmService,
        Self::KeyBinding,
        Self::KbsRuntimeData,
    ];
}

const fn first8(b: &[u8]) -> [u8; TAG_LEN] {
    [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// Which SHA-512 form a hash input is, by its tag at offset [`NONCE_SIZE`]; `None`
/// when it is none of them.
pub fn classify(input: &[u8]) -> Option<Form> {
    let tag = input.get(NONCE_SIZE..NONCE_SIZE + TAG_LEN)?;
    Form::ALL
        .into_iter()
        .find(|f| f.tag().is_some_and(|t| t == tag))
}

fn sha512(parts: &[&[u8]]) -> [u8; 64] {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// ATTEST_SERVICES: SHA-512(nonce ‖ table). `table` must start with the table
/// GUID (the form's tag); the verifier checks the rest (`ManifestTable::parse`).
pub fn services(nonce: &Nonce, table: &[u8]) -> Result<[u8; 64], ManifestError> {
    if !table.starts_with(&MANIFEST_TABLE_GUID) {
        return Err(ManifestError::BadMagic);
    }
    Ok(sha512(&[nonce, table]))
}

/// ATTEST_SINGLE_SERVICE of `service`: SHA-512(nonce ‖ manifest). Only the vHSM is
/// served; its manifest must start with [`VHSM_MANIFEST_MAGIC`] (the form's tag).
pub fn single_service(
    nonce: &Nonce,
    service: &Guid,
    manifest: &[u8],
) -> Result<[u8; 64], ManifestError> {
    if *service != VHSM_SERVICE_GUID {
        return Err(ManifestError::UnknownService);
    }
    if !manifest.starts_with(&VHSM_MANIFEST_MAGIC) {
        return Err(ManifestError::BadMagic);
    }
    Ok(sha512(&[nonce, manifest]))
}

/// AttestKey: SHA-512 of the encoded key binding. `encoded` must carry the
/// binding's magic at offset [`NONCE_SIZE`] (the form's tag).
pub fn key_binding(encoded: &[u8]) -> Result<[u8; 64], ManifestError> {
    if encoded.get(NONCE_SIZE..NONCE_SIZE + KEY_BINDING_MAGIC.len()) != Some(&KEY_BINDING_MAGIC) {
        return Err(ManifestError::BadMagic);
    }
    Ok(sha512(&[encoded]))
}

/// AttestKey from a binding value: encodes it into `scratch` (exactly its
/// [`KeyBinding::encoded_len`]) and hashes that.
pub fn key_binding_of(
    binding: &KeyBinding<'_>,
    scratch: &mut [u8],
) -> Result<[u8; 64], ManifestError> {
    binding.write(scratch)?;
    key_binding(scratch)
}

/// KBS attestation (REFERENCE.md section 9): REPORT_DATA = SHA-384 of the RFC 8785
/// (canonical) runtime-data JSON, zero-padded to 64 bytes. The caller canonicalises
/// the JSON; this only hashes and pads.
pub fn kbs_runtime_data(canonical_json: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..48].copy_from_slice(&Sha384::digest(canonical_json));
    out
}

/// Whether `report_data` has the KBS form's shape (its last 16 bytes zero).
pub fn has_kbs_padding(report_data: &[u8; 64]) -> bool {
    report_data[48..].iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attest::tests::{attrs, p384_spki};
    use crate::vhsm::KeyType;

    fn hex(s: &str) -> std::vec::Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Known answers computed with Python's hashlib (an outside judge).
    #[test]
    fn known_answers() {
        // An empty services table after a 64-byte nonce.
        let mut table = MANIFEST_TABLE_GUID.to_vec();
        table.extend_from_slice(&24u32.to_le_bytes());
        table.extend_from_slice(&0u32.to_le_bytes());
        assert_eq!(
            services(&[0x4E; 64], &table).unwrap().to_vec(),
            hex("85793ce9d87036433b08662be813818f39a30159e06807fa5886672a29517fa14d9d01f07ad3fb7d36db1b0c8f85d45d51084aede40ea46f292af0f39d93c8d8")
        );
        // RFC 8785 runtime data as a KBS client hashes it: SHA-384, zero-padded.
        let json =
            br#"{"nonce":"bm9uY2U=","tee-pubkey":{"alg":"RSA1_5","e":"AQAB","kty":"RSA","n":"x"}}"#;
        let rd = kbs_runtime_data(json);
        assert_eq!(
            rd[..48].to_vec(),
            hex("5f48553511e653cd152b6e4e7fc162eab17672271b8189e397da400cbc8b8a82ce9a6012f27e19b1c2342794dd587ca6")
        );
        assert_eq!(rd[48..], [0u8; 16]);
        assert!(has_kbs_padding(&rd));
        assert!(!has_kbs_padding(&services(&[0x4E; 64], &table).unwrap()));
    }

    /// Each constructor takes only inputs of its own form, and the forms' tags are
    /// distinct and sit at offset 64 of every SHA-512 form's input.
    #[test]
    fn forms_are_told_apart_at_offset_64() {
        let nonce = [7u8; 64];
        let tags: std::vec::Vec<_> = Form::ALL.iter().filter_map(|f| f.tag()).collect();
        assert_eq!(tags.len(), 3);
        for (i, a) in tags.iter().enumerate() {
            assert!(tags[i + 1..].iter().all(|b| a != b));
        }
        let mut table = MANIFEST_TABLE_GUID.to_vec();
        table.extend_from_slice(&[0; 8]);
        let manifest = VHSM_MANIFEST_MAGIC.to_vec();
        assert_eq!(
            classify(&[&nonce[..], &table].concat()),
            Some(Form::Services)
        );
        assert_eq!(
            classify(&[&nonce[..], &manifest].concat()),
            Some(Form::VhsmService)
        );
        let spki = p384_spki(1);
        let b = KeyBinding {
            nonce: &nonce,
            attributes: attrs(3, KeyType::EcdsaP384),
            spki: &spki,
        };
        let mut encoded = std::vec![0u8; b.encoded_len()];
        let rd = key_binding_of(&b, &mut encoded).unwrap();
        assert_eq!(classify(&encoded), Some(Form::KeyBinding));
        assert_eq!(key_binding(&encoded), Ok(rd));
        assert_eq!(classify(&nonce), None);
        // A constructor refuses another form's input.
        assert_eq!(services(&nonce, &manifest), Err(ManifestError::BadMagic));
        assert_eq!(
            single_service(&nonce, &VHSM_SERVICE_GUID, &table),
            Err(ManifestError::BadMagic)
        );
        assert_eq!(
            single_service(&nonce, &MANIFEST_TABLE_GUID, &manifest),
            Err(ManifestError::UnknownService)
        );
        let protocol1 = [&nonce[..], &table].concat();
        assert_eq!(key_binding(&protocol1), Err(ManifestError::BadMagic));
        // A binding-shaped nonce cannot reach offset 64.
        let mut shaped = [0u8; 64];
        shaped.copy_from_slice(&encoded[..64]);
        assert_eq!(
            classify(&[&shaped[..], &table].concat()),
            Some(Form::Services)
        );
    }
}
