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
