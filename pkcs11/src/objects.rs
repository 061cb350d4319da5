//! How vault keys appear as PKCS#11 objects: handles, CKA_ID, and every attribute's
//! value, computed from the vault's [`KeyAttributes`] (and the public key for the
//! public halves). Safe code only.
#![forbid(unsafe_code)]

use nitride_protocol::vhsm::{KeyAttributes, KeyType, KeyUsage, Origin};
use pkcs11_sys::*;

/// DER of the P-384 curve OID (1.3.132.0.34), CKA_EC_PARAMS of P-384 keys.
pub const P384_PARAMS: &[u8] = &[0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];
/// DER of the P-256 curve OID (prime256v1, 1.2.840.10045.3.1.7), CKA_EC_PARAMS of
/// P-256 keys.
pub const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
/// DER of id-Ed25519 (1.3.101.112, RFC 8410), CKA_EC_PARAMS of Ed25519 keys.
pub const ED25519_PARAMS: &[u8] = &[0x06, 0x03, 0x2B, 0x65, 0x70];
/// Other encodings of the Ed25519 curve clients send in templates: the printable
/// string "edwards25519" (PKCS#11 3.0) and OpenSC's older OID 1.3.6.1.4.1.11591.15.1.
pub const ED25519_PARAMS_ALT: &[&[u8]] = &[
    b"\x13\x0cedwards25519",
    &[
        0x06, 0x09, 0x2B, 0x06, 0x01, 0x04, 0x01, 0xDA, 0x47, 0x0F, 0x01,
    ],
];

/// The DER prefix of a P-384 SubjectPublicKeyInfo up to the uncompressed point.
const P384_SPKI_PREFIX: &[u8] = &[
    0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01, 0x06, 0x05, 0x2B,
    0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
];
/// The DER prefix of a P-256 SubjectPublicKeyInfo up to the uncompressed point.
const P256_SPKI_PREFIX: &[u8] = &[
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01, 0x06, 0x08, 0x2A,
    0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// The DER prefix of an Ed25519 SubjectPublicKeyInfo up to the 32-byte key.
const ED25519_SPKI_PREFIX: &[u8] = &[
    0x30, 0x2A, 0x30, 0x05, 0x06, 0x03, 0x2B, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Which half of a vault key an object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Half {
    /// The secret key or the private key (the vault key itself).
    Secret,
    /// The public key of an asymmetric key.
    Public,
}

/// The object handle of a half of vault key `id`: `id * 2` for the key, `id * 2 + 1`
/// for its public half (never 0, the invalid handle: vault ids start at 1).
pub fn handle(id: u32, half: Half) -> CK_OBJECT_HANDLE {
    CK_OBJECT_HANDLE::from(id) * 2 + CK_OBJECT_HANDLE::from(half == Half::Public)
}

/// The vault key id and half an object handle names, if it can name one.
pub fn from_handle(h: CK_OBJECT_HANDLE) -> Option<(u32, Half)> {
    let id = u32::try_from(h / 2).ok().filter(|&id| id != 0)?;
    Some((
        id,
        if h % 2 == 1 {
            Half::Public
        } else {
            Half::Secret
        },
    ))
}

/// CKA_ID of both halves of vault key `id`: the id, 4 bytes big-endian. It is the
/// same across reboots exactly when the vault keeps the key's id (sealed state
/// restored: issue 11).
pub fn cka_id(id: u32) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

/// Whether a vault key type has a public half.
pub fn is_asymmetric(t: KeyType) -> bool {
    matches!(
        t,
        KeyType::EcdsaP384 | KeyType::Ed25519 | KeyType::EcdsaP256 | KeyType::EcdhP256
    )
}

/// CKA_KEY_TYPE of a vault key type.
pub fn ck_key_type(t: KeyType) -> CK_KEY_TYPE {
    match t {
        KeyType::Aes256 => CKK_AES,
        KeyType::EcdsaP384 | KeyType::EcdsaP256 | KeyType::EcdhP256 => CKK_EC,
        KeyType::Ed25519 => CKK_EC_EDWARDS,
        KeyType::HmacSha384 => CKK_GENERIC_SECRET,
    }
}

/// The key generation mechanism of a vault key type.
pub fn gen_mechanism(t: KeyType) -> CK_MECHANISM_TYPE {
    match t {
        KeyType::Aes256 => CKM_AES_KEY_GEN,
        KeyType::EcdsaP384 | KeyType::EcdsaP256 | KeyType::EcdhP256 => CKM_EC_KEY_PAIR_GEN,
        KeyType::Ed25519 => CKM_EC_EDWARDS_KEY_PAIR_GEN,
        KeyType::HmacSha384 => CKM_GENERIC_SECRET_KEY_GEN,
    }
}

/// The public key's point (CKA_EC_POINT content, before the OCTET STRING wrapping)
/// from the vault's SPKI, which must have exactly the layout the vault writes.
pub fn point_from_spki(t: KeyType, spki: &[u8]) -> Option<&[u8]> {
    let (prefix, len) = match t {
        KeyType::EcdsaP384 => (P384_SPKI_PREFIX, 97),
        KeyType::EcdsaP256 | KeyType::EcdhP256 => (P256_SPKI_PREFIX, 65),
        KeyType::Ed25519 => (ED25519_SPKI_PREFIX, 32),
        KeyType::Aes256 | KeyType::HmacSha384 => return None,
    };
    let point = spki.strip_prefix(prefix)?;
    (point.len() == len).then_some(point)
}

/// A DER OCTET STRING around `content` (shorter than 128 bytes).
fn octet_string(content: &[u8]) -> Option<Vec<u8>> {
    let len = u8::try_from(content.len()).ok().filter(|l| *l < 0x80)?;
    let mut v = vec![0x04, len];
    v.extend_from_slice(content);
    Some(v)
}

/// An attribute's value as a client reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttrValue {
    /// The value bytes.
    Value(Vec<u8>),
    /// The attribute is sensitive (CKR_ATTRIBUTE_SENSITIVE): CKA_VALUE of a key.
    Sensitive,
    /// The object has no such attribute (CKR_ATTRIBUTE_TYPE_INVALID).
    Invalid,
}

/// The encoding of a CK_ULONG attribute.
pub fn ulong(v: CK_ULONG) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// The encoding of a CK_BBOOL attribute.
pub fn bool_attr(v: bool) -> Vec<u8> {
    vec![u8::from(v)]
}

/// One object: a half of a vault key, with the public key when it is asymmetric.
#[derive(Clone, Debug)]
pub struct Object {
    /// The vault's attributes of the key.
    pub attrs: KeyAttributes,
    /// Which half.
    pub half: Half,
    /// The SPKI DER of an asymmetric key, empty otherwise.
    pub spki: Vec<u8>,
}

impl Object {
    /// The vault key type (every key the vault lists has a known one).
    pub fn key_type(&self) -> Option<KeyType> {
        KeyType::from_raw(self.attrs.key_type.get())
    }

    /// The object's handle.
    pub fn handle(&self) -> CK_OBJECT_HANDLE {
        handle(self.attrs.key_id.get(), self.half)
    }

    fn usage(&self) -> KeyUsage {
        KeyUsage::from_bits_truncate(self.attrs.usage.get())
    }

    /// Whether the key was generated inside the vault (CKA_LOCAL).
    fn local(&self) -> bool {
        Origin::from_raw(self.attrs.origin) == Some(Origin::Generated)
    }

    /// The value of attribute `ty`, with PKCS#11 semantics.
    ///
    /// Secret and private keys: CKA_SENSITIVE is always true (the vault never
    /// reveals key material in the clear), CKA_EXTRACTABLE is the vault's
    /// `exportable` (wrappable), CKA_ALWAYS_SENSITIVE and CKA_NEVER_EXTRACTABLE are
    /// true only for keys generated in the vault (and, for the latter, not
    /// exportable): an imported, unwrapped or derived key's material existed
    /// elsewhere, or comes from a key the module cannot vouch for.
    pub fn attribute(&self, ty: CK_ATTRIBUTE_TYPE) -> AttrValue {
        let Some(kt) = self.key_type() else {
            return AttrValue::Invalid;
        };
        let usage = self.usage();
        let secret = self.half == Half::Secret;
        let asym = is_asymmetric(kt);
        let public = !secret;
        let v = match ty {
            CKA_CLASS => ulong(match (asym, secret) {
                (false, _) => CKO_SECRET_KEY,
                (true, true) => CKO_PRIVATE_KEY,
                (true, false) => CKO_PUBLIC_KEY,
            }),
            CKA_TOKEN => bool_attr(true),
            CKA_PRIVATE | CKA_MODIFIABLE | CKA_COPYABLE => bool_attr(false),
            CKA_DESTROYABLE => bool_attr(true),
            CKA_LABEL => self.attrs.label().to_vec(),
            CKA_ID => cka_id(self.attrs.key_id.get()),
            CKA_KEY_TYPE => ulong(ck_key_type(kt)),
            CKA_LOCAL => bool_attr(self.local()),
            CKA_KEY_GEN_MECHANISM => ulong(if self.local() {
                gen_mechanism(kt)
            } else {
                CK_UNAVAILABLE_INFORMATION
            }),
            CKA_START_DATE | CKA_END_DATE => Vec::new(),
            CKA_DERIVE => bool_attr(secret && usage.contains(KeyUsage::DERIVE)),
            CKA_SIGN if !public => bool_attr(usage.contains(KeyUsage::SIGN)),
            CKA_VERIFY if !asym || public => bool_attr(usage.contains(KeyUsage::VERIFY)),
            CKA_DECRYPT if !public => bool_attr(usage.contains(KeyUsage::DECRYPT)),
            CKA_ENCRYPT if !asym || public => bool_attr(usage.contains(KeyUsage::ENCRYPT)),
            CKA_UNWRAP if !public => bool_attr(usage.contains(KeyUsage::UNWRAP)),
            CKA_WRAP if !asym || public => bool_attr(usage.contains(KeyUsage::WRAP)),
            CKA_SIGN_RECOVER if !public => bool_attr(false),
            CKA_VERIFY_RECOVER if !asym || public => bool_attr(false),
            CKA_SENSITIVE if secret => bool_attr(true),
            CKA_EXTRACTABLE if secret => bool_attr(self.attrs.exportable & 1 == 1),
            CKA_ALWAYS_SENSITIVE if secret => bool_attr(self.local()),
            CKA_NEVER_EXTRACTABLE if secret => {
                bool_attr(self.local() && self.attrs.exportable & 1 == 0)
            }
            CKA_WRAP_WITH_TRUSTED if secret => bool_attr(false),
            CKA_ALWAYS_AUTHENTICATE if secret && asym => bool_attr(false),
            CKA_TRUSTED if public || !asym => bool_attr(false),
            CKA_VALUE if secret => return AttrValue::Sensitive,
            CKA_VALUE_LEN if !asym => ulong(kt.material_len() as CK_ULONG),
            CKA_EC_PARAMS if asym => match kt {
                KeyType::EcdsaP384 => P384_PARAMS.to_vec(),
                KeyType::EcdsaP256 | KeyType::EcdhP256 => P256_PARAMS.to_vec(),
                _ => ED25519_PARAMS.to_vec(),
            },
            CKA_EC_POINT if public => {
                match point_from_spki(kt, &self.spki).and_then(octet_string) {
                    Some(v) => v,
                    None => return AttrValue::Invalid,
                }
            }
            CKA_PUBLIC_KEY_INFO if asym && !self.spki.is_empty() => self.spki.clone(),
            _ => return AttrValue::Invalid,
        };
        AttrValue::Value(v)
    }

    /// Whether every attribute of `template` has exactly the given value here
    /// (C_FindObjects); a sensitive or absent attribute never matches.
    pub fn matches(&self, template: &[(CK_ATTRIBUTE_TYPE, Vec<u8>)]) -> bool {
        template
            .iter()
            .all(|(ty, want)| matches!(self.attribute(*ty), AttrValue::Value(v) if &v == want))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use nitride_protocol::vhsm::{KeyTemplate, VmplSet};
    use zerocopy::little_endian::U32;

    fn attrs(id: u32, t: KeyType, origin: Origin, exportable: bool) -> KeyAttributes {
        let tpl = KeyTemplate::new(t, t.allowed_usage(), VmplSet::all(), exportable);
        KeyAttributes {
            key_id: U32::new(id),
            key_type: tpl.key_type,
            origin: origin.raw(),
            allowed_vmpls: tpl.allowed_vmpls,
            usage: tpl.usage,
            exportable: tpl.exportable,
            label_len: 1,
            label: [b'x'; 32],
            ..Default::default()
        }
    }

    #[test]
    fn handles_round_trip_and_never_zero() {
        for id in [1u32, 2, 77, u32::MAX] {
            for half in [Half::Secret, Half::Public] {
                let h = handle(id, half);
                assert_ne!(h, 0);
                assert_eq!(from_handle(h), Some((id, half)));
            }
        }
        assert_eq!(from_handle(0), None);
        assert_eq!(from_handle(1), None);
        assert_eq!(from_handle(u64::from(u32::MAX) * 2 + 2), None);
    }

    #[test]
    fn sensitivity_attributes_follow_origin_and_exportability() {
        let get = |o: &Object, ty| o.attribute(ty);
        let t = |b: bool| AttrValue::Value(vec![u8::from(b)]);
        let gen = Object {
            attrs: attrs(3, KeyType::Aes256, Origin::Generated, false),
            half: Half::Secret,
            spki: Vec::new(),
        };
        assert_eq!(get(&gen, CKA_SENSITIVE), t(true));
        assert_eq!(get(&gen, CKA_EXTRACTABLE), t(false));
        assert_eq!(get(&gen, CKA_ALWAYS_SENSITIVE), t(true));
        assert_eq!(get(&gen, CKA_NEVER_EXTRACTABLE), t(true));
        assert_eq!(get(&gen, CKA_LOCAL), t(true));
        assert_eq!(get(&gen, CKA_VALUE), AttrValue::Sensitive);
        assert_eq!(get(&gen, CKA_ID), AttrValue::Value(vec![0, 0, 0, 3]));
        let imported = Object {
            attrs: attrs(4, KeyType::HmacSha384, Origin::Imported, true),
            half: Half::Secret,
            spki: Vec::new(),
        };
        assert_eq!(get(&imported, CKA_EXTRACTABLE), t(true));
        assert_eq!(get(&imported, CKA_ALWAYS_SENSITIVE), t(false));
        assert_eq!(get(&imported, CKA_NEVER_EXTRACTABLE), t(false));
        assert_eq!(get(&imported, CKA_LOCAL), t(false));
        assert_eq!(
            get(&imported, CKA_KEY_GEN_MECHANISM),
            AttrValue::Value(ulong(CK_UNAVAILABLE_INFORMATION))
        );
        assert_eq!(get(&imported, CKA_EC_POINT), AttrValue::Invalid);
    }

    #[test]
    fn ec_point_comes_from_a_strict_spki() {
        let mut spki = P384_SPKI_PREFIX.to_vec();
        spki.push(0x04);
        spki.extend_from_slice(&[7; 96]);
        let public = Object {
            attrs: attrs(5, KeyType::EcdsaP384, Origin::Generated, false),
            half: Half::Public,
            spki: spki.clone(),
        };
        let AttrValue::Value(point) = public.attribute(CKA_EC_POINT) else {
            panic!("no point")
        };
        assert_eq!(&point[..3], &[0x04, 97, 0x04]);
        assert_eq!(point.len(), 99);
        assert_eq!(public.attribute(CKA_SENSITIVE), AttrValue::Invalid);
        assert_eq!(public.attribute(CKA_VALUE), AttrValue::Invalid);
        // One byte short, one too many, another prefix: no point.
        for bad in [
            spki[..spki.len() - 1].to_vec(),
            [spki.clone(), vec![0]].concat(),
            [&[0x30, 0x77][..], &spki[2..]].concat(),
        ] {
            assert_eq!(point_from_spki(KeyType::EcdsaP384, &bad), None);
        }
    }
}
