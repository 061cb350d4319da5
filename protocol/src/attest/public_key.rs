//! Strict checking of the public keys in Nitride's evidence: each is the DER
//! SubjectPublicKeyInfo (RFC 5280) of its key type, with nothing after it.
//!
//! The SPKI is decoded with the `spki`/`der` crates (which refuse BER forms and
//! trailing data), its algorithm and parameters compared with the key type's
//! (RFC 5480 for P-384: id-ecPublicKey with the named curve secp384r1 and an
//! uncompressed point; RFC 8410 for Ed25519: id-Ed25519 without parameters and a
//! 32-byte key), and then encoded again and compared byte for byte with the input:
//! what passes is the one DER encoding of that key, as the vault writes it.

use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoRef;

use super::ManifestError;
use crate::vhsm::KeyType;

/// id-ecPublicKey (RFC 5480).
const ID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
/// secp384r1 (RFC 5480).
const SECP384R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
/// secp256r1 / prime256v1 (RFC 5480).
const SECP256R1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
/// id-Ed25519 (RFC 8410).
const ID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// Length of a P-384 SPKI DER with an uncompressed point.
pub const P384_SPKI_LEN: usize = 120;
/// Length of a P-256 SPKI DER with an uncompressed point.
pub const P256_SPKI_LEN: usize = 91;
/// Length of an Ed25519 SPKI DER.
pub const ED25519_SPKI_LEN: usize = 44;

/// Check that `spki` is the public key of a `key_type` key as the vault encodes
/// it: the strict DER SPKI for P-384, P-256 and Ed25519 keys, empty for AES and HMAC keys.
pub fn check_spki(key_type: KeyType, spki: &[u8]) -> Result<(), ManifestError> {
    let bad = ManifestError::BadPublicKey;
    let (oid, curve, key_len, expected_len) = match key_type {
        KeyType::Aes256 | KeyType::HmacSha384 => {
            return if spki.is_empty() { Ok(()) } else { Err(bad) };
        }
        KeyType::EcdsaP384 => (ID_EC_PUBLIC_KEY, Some(SECP384R1), 97, P384_SPKI_LEN),
        KeyType::Ed25519 => (ID_ED25519, None, 32, ED25519_SPKI_LEN),
        KeyType::EcdsaP256 | KeyType::EcdhP256 => {
            (ID_EC_PUBLIC_KEY, Some(SECP256R1), 65, P256_SPKI_LEN)
        }
    };
    if spki.len() != expected_len {
        return Err(bad);
    }
    // `from_der` refuses trailing bytes.
    let info = SubjectPublicKeyInfoRef::from_der(spki).map_err(|_| bad)?;
    if info.algorithm.oid != oid {
        return Err(bad);
    }
    let params_ok = match (info.algorithm.parameters, curve) {
        (None, None) => true,
        (Some(p), Some(curve)) => p.decode_as::<ObjectIdentifier>().ok() == Some(curve),
        _ => false,
    };
    // `as_bytes` is `None` when the BIT STRING has unused bits.
    let key = info.subject_public_key.as_bytes().ok_or(bad)?;
    let key_ok = key.len() == key_len && (curve.is_none() || key.first() == Some(&0x04));
    if !params_ok || !key_ok {
        return Err(bad);
    }
    let mut again = [0u8; P384_SPKI_LEN];
    let encoded = info.encode_to_slice(&mut again).map_err(|_| bad)?;
    if encoded != spki {
        return Err(bad);
    }
    Ok(())
}
