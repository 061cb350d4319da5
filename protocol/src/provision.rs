//! Provisioning from a Key Broker Service: the owner's envelope and the byte
//! forms the vault builds and checks (`docs/provisioning.md`).
//!
//! The secret a KBS releases to the vault is an **envelope**: the new key's
//! properties and material ([`Envelope`], a canonical binary layout), normally
//! signed by the owner as a JWS in compact serialization with ES384
//! ([`JWS_HEADER`], fixed), whose public key is in the measured launch
//! configuration (`launch_config`). The KBS encrypts it to the vault's session key
//! as a JWE; the vault decrypts it inside and stores the key.

use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::vhsm::{KeyTemplate, KeyType, MAX_LABEL_LEN};

/// Magic at the start of an envelope.
pub const ENVELOPE_MAGIC: [u8; 8] = *b"NTRDENV1";

/// The protected header of every owner-signed envelope, exactly these bytes
/// (base64url-encoded in the JWS): ES384, and a type that names what is signed so
/// that no other JWS of the owner's key reads as an envelope.
pub const JWS_HEADER: &[u8] = br#"{"alg":"ES384","typ":"nitride-envelope+jws"}"#;

/// The `alg` of the session key and of the JWE (`ECDH-ES+A256KW`).
pub const JWE_ALG: &str = "ECDH-ES+A256KW";

/// The `enc` of the JWE.
pub const JWE_ENC: &str = "A256GCM";

/// The fixed head of an envelope; the label and the material follow.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct EnvelopeHead {
    /// [`ENVELOPE_MAGIC`].
    pub magic: [u8; 8],
    /// The new key's type, usage, VMPLs and exportability.
    pub template: KeyTemplate,
    /// Label length (at most [`MAX_LABEL_LEN`]).
    pub label_len: U16,
    /// Material length ([`KeyType::material_len`] of the type).
    pub material_len: U16,
    /// Zero.
    pub reserved: U32,
}
const _: () = assert!(core::mem::size_of::<EnvelopeHead>() == 24);

/// A decoded envelope, borrowing its bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The new key's properties.
    pub template: KeyTemplate,
    /// Its label.
    pub label: &'a [u8],
    /// Its secret material.
    pub material: &'a [u8],
}

impl core::fmt::Debug for Envelope<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Envelope")
            .field("template", &self.template)
            .field("label", &self.label.escape_ascii())
            .field("material", &"[REDACTED]")
            .finish()
    }
}

/// Why an envelope was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Shorter than its head or its lengths, or bytes after the material.
    Length,
    /// Not [`ENVELOPE_MAGIC`].
    Magic,
    /// A reserved field is set.
    Reserved,
    /// Unknown key type, a label over [`MAX_LABEL_LEN`], or a material length
    /// other than the type's.
    Field,
}

impl<'a> Envelope<'a> {
    /// Decode `bytes` canonically: exactly head, label and material.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, EnvelopeError> {
        let (head, rest) =
            EnvelopeHead::read_from_prefix(bytes).map_err(|_| EnvelopeError::Length)?;
        if head.magic != ENVELOPE_MAGIC {
            return Err(EnvelopeError::Magic);
        }
        if head.reserved.get() != 0 {
            return Err(EnvelopeError::Reserved);
        }
        let key_type =
            KeyType::from_raw(head.template.key_type.get()).ok_or(EnvelopeError::Field)?;
        let label_len = usize::from(head.label_len.get());
        let material_len = usize::from(head.material_len.get());
        if label_len > MAX_LABEL_LEN || material_len != key_type.material_len() {
            return Err(EnvelopeError::Field);
        }
        let (label, material) = rest
            .split_at_checked(label_len)
            .ok_or(EnvelopeError::Length)?;
        if material.len() != material_len {
            return Err(EnvelopeError::Length);
        }
        Ok(Self {
            template: head.template,
            label,
            material,
        })
    }

    /// The encoded length.
    pub fn encoded_len(&self) -> usize {
        core::mem::size_of::<EnvelopeHead>() + self.label.len() + self.material.len()
    }

    /// Encode into `out` (exactly [`Self::encoded_len`] bytes).
    pub fn write(&self, out: &mut [u8]) -> Result<(), EnvelopeError> {
        if out.len() != self.encoded_len() {
            return Err(EnvelopeError::Length);
        }
        let head = EnvelopeHead {
            magic: ENVELOPE_MAGIC,
            template: self.template,
            label_len: U16::new(u16::try_from(self.label.len()).map_err(|_| EnvelopeError::Field)?),
            material_len: U16::new(
                u16::try_from(self.material.len()).map_err(|_| EnvelopeError::Field)?,
            ),
            reserved: U32::new(0),
        };
        let (h, rest) = out.split_at_mut(core::mem::size_of::<EnvelopeHead>());
        h.copy_from_slice(head.as_bytes());
        let (l, m) = rest.split_at_mut(self.label.len());
        l.copy_from_slice(self.label);
        m.copy_from_slice(self.material);
        Ok(())
    }
}

/// Whether a base64 (standard or URL-safe, padded or not) string, as a KBS nonce
/// is, consists only of characters that need no JSON escaping and no RFC 8785
/// rewriting: the vault puts it in the runtime-data JSON as it is.
pub fn is_plain_nonce(nonce: &[u8]) -> bool {
    !nonce.is_empty()
        && nonce
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'=' | b'-' | b'_'))
}

/// Write the RFC 8785 runtime-data JSON trustee's KBS hashes into REPORT_DATA
/// (REFERENCE.md 9): `{"additional-evidence":"","nonce":N,"tee-pubkey":JWK}` with
/// the JWK `{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":X,"y":Y}`. Members
/// are in RFC 8785 order (sorted), without whitespace; `nonce` must pass
/// [`is_plain_nonce`] and `x`, `y` are base64url without padding, so no string
/// needs escaping. Appends to `out` through `push`; returns the JWK's byte range.
pub fn runtime_data(
    nonce: &str,
    x_b64: &str,
    y_b64: &str,
    mut push: impl FnMut(&str),
) -> core::ops::Range<usize> {
    let head = r#"{"additional-evidence":"","nonce":""#;
    let mid = r#"","tee-pubkey":"#;
    let start = head.len() + nonce.len() + mid.len();
    push(head);
    push(nonce);
    push(mid);
    let jwk = [
        r#"{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":""#,
        x_b64,
        r#"","y":""#,
        y_b64,
        r#""}"#,
    ];
    let mut end = start;
    for part in jwk {
        end += part.len();
        push(part);
    }
    push("}");
    start..end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhsm::{KeyUsage, VmplSet};

    #[test]
    fn envelope_round_trips_and_is_canonical() {
        let t = KeyTemplate::new(
            KeyType::Aes256,
            KeyUsage::ENCRYPT | KeyUsage::DECRYPT,
            VmplSet::VMPL1,
            false,
        );
        let e = Envelope {
            template: t,
            label: b"disk",
            material: &[9; 32],
        };
        let mut b = std::vec![0u8; e.encoded_len()];
        e.write(&mut b).unwrap();
        assert_eq!(&b[..8], b"NTRDENV1");
        assert_eq!(Envelope::parse(&b), Ok(e));
        assert_eq!(
            Envelope::parse(&b[..b.len() - 1]),
            Err(EnvelopeError::Length)
        );
        assert_eq!(
            Envelope::parse(&[&b[..], &[0]].concat()),
            Err(EnvelopeError::Length)
        );
        let mut bad = b.clone();
        bad[20] = 1;
        assert_eq!(Envelope::parse(&bad), Err(EnvelopeError::Reserved));
        let mut bad = b.clone();
        bad[18] = 31; // material length
        assert_eq!(Envelope::parse(&bad), Err(EnvelopeError::Field));
        let mut bad = b.clone();
        bad[8] = 9; // key type
        assert_eq!(Envelope::parse(&bad), Err(EnvelopeError::Field));
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(Envelope::parse(&bad), Err(EnvelopeError::Magic));
        assert!(!std::format!("{e:?}").contains("9, 9"));
    }

    /// The exact bytes trustee's KBS hashes (REFERENCE.md 9).
    #[test]
    fn runtime_data_is_the_jcs_form() {
        let mut s = std::string::String::new();
        let jwk = runtime_data("bm9uY2U=", "AAA", "BBB", |p| s.push_str(p));
        assert_eq!(
            s,
            r#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"AAA","y":"BBB"}}"#
        );
        assert_eq!(
            &s[jwk],
            r#"{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"AAA","y":"BBB"}"#
        );
        assert!(is_plain_nonce(b"ab+/=-_9"));
        for bad in [&b""[..], b"a\"b", b"a\\b", b"a b", b"\xc3\xa9"] {
            assert!(!is_plain_nonce(bad));
        }
    }
}
