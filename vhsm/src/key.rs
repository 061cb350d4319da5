//! Key material and the cryptography performed with it.
//!
//! [`Material`] holds one key's secret: the raw AES-256 key with its expanded
//! AES-256-GCM cipher, the HMAC-SHA-384 key, the ECDSA P-384 signing key or the
//! Ed25519 signing key, each in its own heap allocation. Every variant is zeroized
//! in place when dropped (the RustCrypto and dalek key types zeroize themselves, the
//! AES and GHASH key schedules through the `aes` and `polyval` `zeroize` features; the
//! raw keys are [`Secret`]s), and `Debug` prints `[REDACTED]`. Only the vault module
//! can reach the raw bytes ([`Material::to_bytes`]), and only on the paths policy
//! allows. The functions here leave secret temporaries on the stack, as the crates
//! they call do: the vault runs them [`scrubbed`](crate::scrub).

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit};
use ed25519_dalek::pkcs8::EncodePublicKey as _;
use hmac::{Hmac, Mac};
use nitride_protocol::vhsm::{KeyType, GCM_NONCE_LEN, GCM_TAG_LEN, MAX_DIGEST_LEN, MIN_DIGEST_LEN};
use p384::ecdsa::signature::hazmat::PrehashSigner as _;
use p384::ecdsa::signature::{Signer as _, Verifier as _};
use sha2::Sha384;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::Error;

/// Fixed-size secret bytes: zeroized on drop, redacted in `Debug`.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret<const N: usize>([u8; N]);

impl<const N: usize> Secret<N> {
    /// Copy `bytes`, which must be exactly `N` long.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let arr: [u8; N] = bytes.try_into().map_err(|_| Error::InvalidKeyMaterial)?;
        Ok(Self(arr))
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8; N] {
        &self.0
    }
}

impl<const N: usize> fmt::Debug for Secret<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

/// An AES-256 key and its AES-256-GCM cipher, expanded once when the key enters the
/// vault (the key schedules and the GHASH key; zeroized on drop by `aes` and
/// `polyval`, whose `zeroize` features this crate enables).
pub struct AesKey {
    raw: Secret<32>,
    gcm: Aes256Gcm,
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl AesKey {
    fn new(bytes: &[u8]) -> Result<Self, Error> {
        let raw = Secret::from_slice(bytes)?;
        let gcm = Aes256Gcm::new_from_slice(raw.expose()).map_err(|_| Error::InvalidKeyMaterial)?;
        Ok(Self { raw, gcm })
    }
}

/// One key's secret material.
///
/// Every variant is boxed, so that a `Material` is a tag and a pointer: moving it
/// (the key table moves keys) copies no secret byte, and no variant's bytes can
/// linger in the unused part of a larger one. Each box is zeroized in place when
/// dropped, before it is freed.
pub enum Material {
    /// AES-256 key, with its expanded GCM cipher.
    Aes256(Box<AesKey>),
    /// ECDSA P-384 signing key (zeroizes its scalar on drop).
    EcdsaP384(Box<p384::ecdsa::SigningKey>),
    /// Ed25519 signing key (zeroizes its seed on drop).
    Ed25519(Box<ed25519_dalek::SigningKey>),
    /// HMAC-SHA-384 key.
    HmacSha384(Box<Secret<48>>),
    /// ECDSA P-256 signing key (zeroizes its scalar on drop).
    EcdsaP256(Box<p256::ecdsa::SigningKey>),
    /// ECDH P-256 secret key (zeroizes its scalar on drop).
    EcdhP256(Box<p256::SecretKey>),
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}([REDACTED])", self.key_type())
    }
}

/// Length of an HMAC-SHA-384 tag.
pub const HMAC_TAG_LEN: usize = 48;
/// Length of an Ed25519 signature.
pub const ED25519_SIGNATURE_LEN: usize = 64;

impl Material {
    /// Build a key of type `key_type` from its raw form ([`KeyType::material_len`] bytes:
    /// the AES or HMAC key, the Ed25519 seed, the big-endian P-384 scalar).
    pub fn from_bytes(key_type: KeyType, bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() != key_type.material_len() {
            return Err(Error::InvalidKeyMaterial);
        }
        Ok(match key_type {
            KeyType::Aes256 => Self::Aes256(Box::new(AesKey::new(bytes)?)),
            KeyType::HmacSha384 => Self::HmacSha384(Box::new(Secret::from_slice(bytes)?)),
            KeyType::EcdsaP384 => Self::EcdsaP384(Box::new(
                p384::ecdsa::SigningKey::from_slice(bytes)
                    .map_err(|_| Error::InvalidKeyMaterial)?,
            )),
            KeyType::Ed25519 => {
                let seed = Secret::<32>::from_slice(bytes)?;
                Self::Ed25519(Box::new(ed25519_dalek::SigningKey::from_bytes(
                    seed.expose(),
                )))
            }
            KeyType::EcdsaP256 => Self::EcdsaP256(Box::new(
                p256::ecdsa::SigningKey::from_slice(bytes)
                    .map_err(|_| Error::InvalidKeyMaterial)?,
            )),
            KeyType::EcdhP256 => Self::EcdhP256(Box::new(
                p256::SecretKey::from_slice(bytes).map_err(|_| Error::InvalidKeyMaterial)?,
            )),
        })
    }

    /// The raw form [`Material::from_bytes`] accepts. Crate-private: only the wrap path,
    /// after its exportability check, may call it.
    pub(crate) fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(self.key_type().material_len()));
        match self {
            Self::Aes256(k) => out.extend_from_slice(k.raw.expose()),
            Self::HmacSha384(k) => out.extend_from_slice(k.expose()),
            Self::EcdsaP384(k) => {
                let mut bytes = k.to_bytes();
                out.extend_from_slice(&bytes);
                bytes[..].zeroize();
            }
            Self::Ed25519(k) => {
                let mut bytes = k.to_bytes();
                out.extend_from_slice(&bytes);
                bytes.zeroize();
            }
            Self::EcdsaP256(k) => {
                let mut bytes = k.to_bytes();
                out.extend_from_slice(&bytes);
                bytes[..].zeroize();
            }
            Self::EcdhP256(k) => {
                let mut bytes = k.to_bytes();
                out.extend_from_slice(&bytes);
                bytes[..].zeroize();
            }
        }
        out
    }

    /// The key's type.
    pub fn key_type(&self) -> KeyType {
        match self {
            Self::Aes256(_) => KeyType::Aes256,
            Self::EcdsaP384(_) => KeyType::EcdsaP384,
            Self::Ed25519(_) => KeyType::Ed25519,
            Self::HmacSha384(_) => KeyType::HmacSha384,
            Self::EcdsaP256(_) => KeyType::EcdsaP256,
            Self::EcdhP256(_) => KeyType::EcdhP256,
        }
    }

    /// The secret used as HKDF input keying material (AES and HMAC keys only).
    pub(crate) fn derive_input(&self) -> Result<&[u8], Error> {
        match self {
            Self::Aes256(k) => Ok(k.raw.expose()),
            Self::HmacSha384(k) => Ok(k.expose()),
            Self::EcdsaP384(_) | Self::Ed25519(_) | Self::EcdsaP256(_) | Self::EcdhP256(_) => {
                Err(Error::WrongKeyType)
            }
        }
    }

    /// The AES-256 key, for key wrap.
    pub(crate) fn aes_key(&self) -> Result<&[u8; 32], Error> {
        match self {
            Self::Aes256(k) => Ok(k.raw.expose()),
            _ => Err(Error::WrongKeyType),
        }
    }

    /// The AES-256-GCM cipher of an AES key.
    pub(crate) fn gcm(&self) -> Result<&Aes256Gcm, Error> {
        match self {
            Self::Aes256(k) => Ok(&k.gcm),
            _ => Err(Error::WrongKeyType),
        }
    }

    /// Append the public key as DER SubjectPublicKeyInfo.
    pub fn public_key_der(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let doc = match self {
            Self::EcdsaP384(k) => k.verifying_key().to_public_key_der(),
            Self::Ed25519(k) => k.verifying_key().to_public_key_der(),
            Self::EcdsaP256(k) => k.verifying_key().to_public_key_der(),
            Self::EcdhP256(k) => k.public_key().to_public_key_der(),
            Self::Aes256(_) | Self::HmacSha384(_) => return Err(Error::WrongKeyType),
        }
        .map_err(|_| Error::InvalidKeyMaterial)?;
        out.extend_from_slice(doc.as_bytes());
        Ok(())
    }

    /// Append what attestation shows of the key: the SPKI DER of an asymmetric key,
    /// nothing for an AES or HMAC key (which has no public half).
    pub fn public_part(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        match self {
            Self::Aes256(_) | Self::HmacSha384(_) => Ok(()),
            Self::EcdsaP384(_) | Self::Ed25519(_) | Self::EcdsaP256(_) | Self::EcdhP256(_) => {
                self.public_key_der(out)
            }
        }
    }

    /// Append a signature over `message`: DER ECDSA-with-SHA-384, 64-byte Ed25519, or
    /// the 48-byte HMAC-SHA-384 tag.
    pub fn sign(&self, message: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        match self {
            Self::EcdsaP384(k) => {
                let sig: p384::ecdsa::Signature =
                    k.try_sign(message).map_err(|_| Error::InvalidKeyMaterial)?;
                out.extend_from_slice(sig.to_der().as_bytes());
            }
            Self::Ed25519(k) => out.extend_from_slice(&k.sign(message).to_bytes()),
            Self::HmacSha384(k) => {
                out.extend_from_slice(&hmac_sha384(k, message)?.finalize().into_bytes())
            }
            Self::EcdsaP256(k) => {
                let sig: p256::ecdsa::Signature =
                    k.try_sign(message).map_err(|_| Error::InvalidKeyMaterial)?;
                out.extend_from_slice(sig.to_der().as_bytes());
            }
            Self::Aes256(_) | Self::EcdhP256(_) => return Err(Error::WrongKeyType),
        }
        Ok(())
    }

    /// Append the raw ECDSA signature `r || s` over a caller-computed `digest`
    /// (deterministic nonce, RFC 6979). The digest must be
    /// `MIN_DIGEST_LEN..=MAX_DIGEST_LEN` bytes; a longer one than the order is
    /// truncated to its bit length (FIPS 186-5). Other key types: `WrongKeyType`.
    pub fn sign_digest(&self, digest: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
        if !(MIN_DIGEST_LEN..=MAX_DIGEST_LEN).contains(&digest.len()) {
            return Err(Error::InvalidParameter);
        }
        match self {
            Self::EcdsaP384(k) => {
                let sig: p384::ecdsa::Signature = k
                    .sign_prehash(digest)
                    .map_err(|_| Error::InvalidParameter)?;
                out.extend_from_slice(&sig.to_bytes());
                Ok(())
            }
            Self::EcdsaP256(k) => {
                let sig: p256::ecdsa::Signature = k
                    .sign_prehash(digest)
                    .map_err(|_| Error::InvalidParameter)?;
                out.extend_from_slice(&sig.to_bytes());
                Ok(())
            }
            Self::Aes256(_) | Self::Ed25519(_) | Self::HmacSha384(_) | Self::EcdhP256(_) => {
                Err(Error::WrongKeyType)
            }
        }
    }

    /// Check a signature made by [`Material::sign`] (or any standard implementation).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), Error> {
        let ok = match self {
            Self::EcdsaP384(k) => p384::ecdsa::Signature::from_der(signature)
                .is_ok_and(|sig| k.verifying_key().verify(message, &sig).is_ok()),
            Self::Ed25519(k) => ed25519_dalek::Signature::from_slice(signature)
                .is_ok_and(|sig| k.verifying_key().verify_strict(message, &sig).is_ok()),
            Self::HmacSha384(k) => hmac_sha384(k, message)?.verify_slice(signature).is_ok(),
            Self::EcdsaP256(k) => p256::ecdsa::Signature::from_der(signature)
                .is_ok_and(|sig| k.verifying_key().verify(message, &sig).is_ok()),
            Self::Aes256(_) | Self::EcdhP256(_) => return Err(Error::WrongKeyType),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::SignatureInvalid)
        }
    }
}

/// ECDH P-256: the shared secret (the x-coordinate, 32 bytes) of `secret` and the
/// peer public key `peer` (a P-256 SPKI DER, checked to be on the curve).
pub fn ecdh_p256(secret: &p256::SecretKey, peer: &p256::PublicKey) -> Zeroizing<[u8; 32]> {
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine());
    let mut z = Zeroizing::new([0u8; 32]);
    z.copy_from_slice(shared.raw_secret_bytes());
    z
}

impl Material {
    /// The ECDH secret of an ECDH P-256 key.
    pub(crate) fn ecdh_secret(&self) -> Result<&p256::SecretKey, Error> {
        match self {
            Self::EcdhP256(k) => Ok(k),
            _ => Err(Error::WrongKeyType),
        }
    }
}

fn hmac_sha384(key: &Secret<48>, message: &[u8]) -> Result<Hmac<Sha384>, Error> {
    let mut mac = <Hmac<Sha384> as KeyInit>::new_from_slice(key.expose())
        .map_err(|_| Error::InvalidKeyMaterial)?;
    mac.update(message);
    Ok(mac)
}

/// AES-256-GCM: append `nonce || ciphertext || tag` for `plaintext` to `out`.
pub fn gcm_seal(
    cipher: &Aes256Gcm,
    nonce: &[u8; GCM_NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    // One allocation for the whole output, so the tag never forces a reallocation.
    out.reserve(
        GCM_NONCE_LEN
            .saturating_add(plaintext.len())
            .saturating_add(GCM_TAG_LEN),
    );
    out.extend_from_slice(nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let buf = out.get_mut(start..).ok_or(Error::TooLarge)?;
    let tag = cipher
        .encrypt_in_place_detached(nonce.into(), aad, buf)
        .map_err(|_| Error::TooLarge)?;
    out.extend_from_slice(&tag);
    Ok(())
}

/// AES-256-GCM: open `nonce || ciphertext || tag` and append the plaintext to `out`.
/// On failure nothing is appended.
pub fn gcm_open(
    cipher: &Aes256Gcm,
    aad: &[u8],
    sealed: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), Error> {
    let body_len = sealed
        .len()
        .checked_sub(GCM_NONCE_LEN + GCM_TAG_LEN)
        .ok_or(Error::InvalidParameter)?;
    let (nonce, rest) = sealed.split_at(GCM_NONCE_LEN);
    let (ciphertext, tag) = rest.split_at(body_len);
    let start = out.len();
    out.extend_from_slice(ciphertext);
    let buf = out.get_mut(start..).ok_or(Error::TooLarge)?;
    if cipher
        .decrypt_in_place_detached(nonce.into(), aad, buf, tag.into())
        .is_err()
    {
        out.truncate(start);
        return Err(Error::AuthenticationFailed);
    }
    Ok(())
}

/// RFC 5649 (AES key wrap with padding) under `kek`, appended to `out` (nothing is
/// appended on failure).
pub fn kw_wrap(kek: &[u8; 32], data: &[u8], out: &mut Vec<u8>) -> Result<(), Error> {
    let kek = aes_kw::KekAes256::new(kek.into());
    let len = data
        .len()
        .div_ceil(8)
        .checked_mul(8)
        .and_then(|n| n.checked_add(8))
        .ok_or(Error::TooLarge)?;
    let start = out.len();
    out.resize(start.checked_add(len).ok_or(Error::TooLarge)?, 0);
    let result = match out.get_mut(start..) {
        Some(dst) => kek
            .wrap_with_padding(data, dst)
            .map_err(|_| Error::InvalidParameter),
        None => Err(Error::TooLarge),
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// RFC 5649 unwrap under `kek`; the plaintext is zeroized when dropped.
pub fn kw_unwrap(kek: &[u8; 32], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let kek = aes_kw::KekAes256::new(kek.into());
    let len = wrapped
        .len()
        .checked_sub(8)
        .ok_or(Error::AuthenticationFailed)?;
    if len == 0 || !wrapped.len().is_multiple_of(8) {
        return Err(Error::AuthenticationFailed);
    }
    let mut buf = Zeroizing::new(alloc::vec![0u8; len]);
    let n = kek
        .unwrap_with_padding(wrapped, &mut buf)
        .map_err(|_| Error::AuthenticationFailed)?
        .len();
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;

    #[test]
    fn debug_is_redacted() {
        let keys = [
            Material::from_bytes(KeyType::Aes256, &[0x41; 32]).unwrap(),
            Material::from_bytes(KeyType::HmacSha384, &[0x41; 48]).unwrap(),
            Material::from_bytes(KeyType::Ed25519, &[0x41; 32]).unwrap(),
            Material::from_bytes(KeyType::EcdsaP384, &[0x41; 48]).unwrap(),
            Material::from_bytes(KeyType::EcdsaP256, &[0x41; 32]).unwrap(),
            Material::from_bytes(KeyType::EcdhP256, &[0x41; 32]).unwrap(),
        ];
        for k in &keys {
            let s = format!("{k:?}");
            assert!(s.ends_with("([REDACTED])"), "{s}");
            assert!(!s.contains("41") && !s.contains("65"), "{s}");
        }
        assert_eq!(format!("{:?}", Secret::<4>([1, 2, 3, 4])), "[REDACTED]");
    }

    #[test]
    fn secret_zeroizes() {
        let mut s = Secret::<8>([0xAA; 8]);
        s.zeroize();
        assert_eq!(s.expose(), &[0; 8]);
    }

    #[test]
    fn material_lengths_and_validity() {
        for kt in [
            KeyType::Aes256,
            KeyType::HmacSha384,
            KeyType::Ed25519,
            KeyType::EcdsaP384,
            KeyType::EcdsaP256,
            KeyType::EcdhP256,
        ] {
            let n = kt.material_len();
            assert_eq!(
                Material::from_bytes(kt, &alloc::vec![7; n - 1]).unwrap_err(),
                Error::InvalidKeyMaterial
            );
            assert_eq!(
                Material::from_bytes(kt, &alloc::vec![7; n + 1]).unwrap_err(),
                Error::InvalidKeyMaterial
            );
            let m = Material::from_bytes(kt, &alloc::vec![7; n]).unwrap();
            assert_eq!(m.key_type(), kt);
            assert_eq!(&m.to_bytes()[..], &alloc::vec![7; n][..]);
        }
        // Zero and the group order are not P-384 scalars.
        assert!(Material::from_bytes(KeyType::EcdsaP384, &[0; 48]).is_err());
        assert!(Material::from_bytes(KeyType::EcdsaP384, &[0xff; 48]).is_err());
        for kt in [KeyType::EcdsaP256, KeyType::EcdhP256] {
            assert!(Material::from_bytes(kt, &[0; 32]).is_err());
            assert!(Material::from_bytes(kt, &[0xff; 32]).is_err());
        }
    }

    #[test]
    fn gcm_round_trip_and_tamper() {
        let key = Aes256Gcm::new_from_slice(&[9u8; 32]).unwrap();
        let mut sealed = Vec::new();
        gcm_seal(&key, &[1; 12], b"aad", b"secret", &mut sealed).unwrap();
        assert_eq!(sealed.len(), 12 + 6 + 16);
        let mut out = Vec::new();
        gcm_open(&key, b"aad", &sealed, &mut out).unwrap();
        assert_eq!(out, b"secret");
        let mut out = Vec::new();
        assert_eq!(
            gcm_open(&key, b"aaX", &sealed, &mut out),
            Err(Error::AuthenticationFailed)
        );
        assert!(out.is_empty());
        assert_eq!(
            gcm_open(&key, b"", &sealed[..27], &mut out),
            Err(Error::InvalidParameter)
        );
    }

    /// AES-256 KWP round trips for lengths around the semiblock boundaries, and any
    /// flipped bit fails the integrity check (interop with OpenSSL: tests/interop.rs).
    #[test]
    fn key_wrap_round_trip_and_tamper() {
        let kek = [3u8; 32];
        for len in [1usize, 7, 8, 9, 32, 48] {
            let data = alloc::vec![0x5a; len];
            let mut wrapped = Vec::new();
            kw_wrap(&kek, &data, &mut wrapped).unwrap();
            assert_eq!(wrapped.len(), len.div_ceil(8) * 8 + 8);
            assert_eq!(&kw_unwrap(&kek, &wrapped).unwrap()[..], &data[..]);
            let mut bad = wrapped.clone();
            bad[0] ^= 1;
            assert_eq!(
                kw_unwrap(&kek, &bad).unwrap_err(),
                Error::AuthenticationFailed
            );
        }
        assert_eq!(
            kw_unwrap(&kek, &[0; 7]).unwrap_err(),
            Error::AuthenticationFailed
        );
        assert_eq!(
            kw_unwrap(&kek, &[0; 8]).unwrap_err(),
            Error::AuthenticationFailed
        );
        assert_eq!(
            kw_unwrap(&kek, &[0; 20]).unwrap_err(),
            Error::AuthenticationFailed
        );
    }
}
