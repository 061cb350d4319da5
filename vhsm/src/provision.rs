//! Provisioning from a Key Broker Service (trustee's RCAR protocol, REFERENCE.md
//! section 9), the vault's half: everything secret happens here, the guest only
//! relays bytes.
//!
//! - [`SessionKey`]: the ephemeral P-256 ECDH key of one provisioning session. It is
//!   drawn from the DRBG by `ProvisionBegin`, never leaves the vault, and dies with
//!   the session: at the next Begin, or at Finish whatever its outcome.
//! - [`runtime_data`]: the exact RFC 8785 bytes the KBS hashes into REPORT_DATA.
//! - [`open_jwe`]: the flattened JWE the KBS releases, checked and decrypted inside
//!   the vault: `ECDH-ES+A256KW` (ECDH with the session key, Concat KDF with
//!   SHA-256, AES-256 key unwrap RFC 3394) and `A256GCM` with the received
//!   `protected` string as AAD.
//! - [`open_envelope`]: the decrypted plaintext: an owner-signed JWS (compact,
//!   ES384, the fixed header [`JWS_HEADER`]) over an [`Envelope`], checked against
//!   the owner key of the measured launch configuration; or, only when that
//!   configuration has no owner key and allows it, a bare envelope.
//!
//! The JSON the vault reads (the JWE and its protected header) goes through a small
//! strict reader: objects of strings (and one nested object), no escapes, no
//! duplicate or unknown member, so one JWE has one reading. Every temporary
//! holding a secret (shared secret, KEK, CEK, plaintext) is zeroized on drop.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit};
use base64ct::{Base64UrlUnpadded, Encoding};
use nitride_protocol::provision::{self as wire, Envelope, ENVELOPE_MAGIC, JWS_HEADER};
use nitride_protocol::vhsm::GCM_TAG_LEN;
use p384::ecdsa::signature::Verifier as _;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::key::ecdh_p256;
use crate::Error;

/// The ephemeral ECDH key of one provisioning session.
pub struct SessionKey {
    secret: Box<p256::SecretKey>,
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionKey([REDACTED])")
    }
}

impl SessionKey {
    /// A session key from 32 random bytes (`None` if they are not a valid scalar).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        p256::SecretKey::from_slice(bytes).ok().map(|k| Self {
            secret: Box::new(k),
        })
    }

    /// The public key's coordinates, base64url without padding (43 characters each).
    pub fn public_xy(&self) -> ([u8; 43], [u8; 43]) {
        let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
            &self.secret.public_key(),
            false,
        );
        let mut x = [0u8; 43];
        let mut y = [0u8; 43];
        // An uncompressed point always has both coordinates of 32 bytes, which
        // encode to exactly 43 characters.
        if let (Some(px), Some(py)) = (point.x(), point.y()) {
            let _ = Base64UrlUnpadded::encode(px, &mut x);
            let _ = Base64UrlUnpadded::encode(py, &mut y);
        }
        (x, y)
    }
}

/// The runtime-data JSON for `nonce` and `key`, and the JWK's range in it
/// ([`wire::runtime_data`]). `nonce` must pass [`wire::is_plain_nonce`].
pub fn runtime_data(nonce: &str, key: &SessionKey) -> (Vec<u8>, core::ops::Range<usize>) {
    let (x, y) = key.public_xy();
    let mut out = Vec::with_capacity(256);
    let range = wire::runtime_data(
        nonce,
        core::str::from_utf8(&x).unwrap_or_default(),
        core::str::from_utf8(&y).unwrap_or_default(),
        |s| out.extend_from_slice(s.as_bytes()),
    );
    (out, range)
}

/// A JSON value the vault accepts.
#[derive(Debug, PartialEq, Eq)]
enum Value<'a> {
    /// A string without escapes.
    Str(&'a str),
    /// An object.
    Obj(Vec<(&'a str, Value<'a>)>),
}

/// The strict JSON reader (see the module documentation).
struct Json<'a> {
    b: &'a [u8],
    i: usize,
}

/// How deep objects may nest (the JWE's protected header holds `epk`).
const MAX_DEPTH: usize = 2;

impl<'a> Json<'a> {
    /// Parse `b` as one object, with optional whitespace around it.
    fn document(b: &'a [u8]) -> Option<Vec<(&'a str, Value<'a>)>> {
        let mut p = Self { b, i: 0 };
        p.ws();
        let obj = p.object(0)?;
        p.ws();
        (p.i == b.len()).then_some(obj)
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        loop {
            match self.peek()? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        let s = core::str::from_utf8(self.b.get(start..self.i)?).ok()?;
        self.i += 1;
        Some(s)
    }

    fn object(&mut self, depth: usize) -> Option<Vec<(&'a str, Value<'a>)>> {
        if depth >= MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        let mut members: Vec<(&'a str, Value<'a>)> = Vec::new();
        self.ws();
        if self.eat(b'}').is_some() {
            return Some(members);
        }
        loop {
            self.ws();
            let name = self.string()?;
            if members.iter().any(|(n, _)| *n == name) {
                return None;
            }
            self.ws();
            self.eat(b':')?;
            self.ws();
            let value = match self.peek()? {
                b'"' => Value::Str(self.string()?),
                b'{' => Value::Obj(self.object(depth + 1)?),
                _ => return None,
            };
            members.push((name, value));
            self.ws();
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(members);
                }
                _ => return None,
            }
        }
    }
}

/// The members `names` of `obj`, which must have exactly these (in any order).
fn exactly<'v, 'a, const N: usize>(
    obj: &'v [(&'a str, Value<'a>)],
    names: [&str; N],
) -> Option<[&'v Value<'a>; N]> {
    if obj.len() != N {
        return None;
    }
    let mut out = [&Value::Str(""); N];
    for (slot, name) in out.iter_mut().zip(names) {
        *slot = obj.iter().find(|(n, _)| *n == name).map(|(_, v)| v)?;
    }
    Some(out)
}

fn string<'a>(v: &Value<'a>) -> Option<&'a str> {
    match v {
        Value::Str(s) => Some(s),
        Value::Obj(_) => None,
    }
}

/// Strict base64url without padding into a new buffer.
fn b64(s: &str) -> Option<Zeroizing<Vec<u8>>> {
    let mut out = Zeroizing::new(alloc::vec![0u8; s.len() / 4 * 3 + 3]);
    let n = Base64UrlUnpadded::decode(s, &mut out).ok()?.len();
    out.truncate(n);
    Some(out)
}

/// Strict base64url without padding of exactly `N` bytes.
fn b64_fixed<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    let n = Base64UrlUnpadded::decode(s, &mut out).ok()?.len();
    (n == N).then_some(out)
}

/// Concat KDF (NIST SP 800-56A, RFC 7518 section 4.6.2) with SHA-256 for
/// `ECDH-ES+A256KW`: one round, a 256-bit KEK. OtherInfo = AlgorithmID (`u32be(len)
/// || "ECDH-ES+A256KW"`) || PartyUInfo (`u32be(0)`) || PartyVInfo (`u32be(0)`) ||
/// SuppPubInfo (`u32be(256)`).
pub fn concat_kdf_a256kw(z: &[u8; 32]) -> Zeroizing<[u8; 32]> {
    let alg = wire::JWE_ALG.as_bytes();
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    // The algorithm name is 14 bytes: its length always fits.
    h.update(u32::try_from(alg.len()).unwrap_or(0).to_be_bytes());
    h.update(alg);
    h.update(0u32.to_be_bytes());
    h.update(0u32.to_be_bytes());
    h.update(256u32.to_be_bytes());
    let mut kek = Zeroizing::new([0u8; 32]);
    kek.copy_from_slice(&h.finalize());
    kek
}

/// Check and decrypt a flattened JWE (`{"protected","encrypted_key","iv",
/// "ciphertext","tag"}`, nothing else) addressed to `session`; returns the
/// plaintext. Any defect is [`Error::JweInvalid`]; nothing is returned unless the
/// key unwrap's integrity check and the GCM tag (over the `protected` string as
/// received) both pass.
pub fn open_jwe(session: &SessionKey, jwe: &[u8]) -> Result<Zeroizing<Vec<u8>>, Error> {
    let bad = Error::JweInvalid;
    let top = Json::document(jwe).ok_or(bad)?;
    let [protected, encrypted_key, iv, ciphertext, tag] = exactly(
        &top,
        ["protected", "encrypted_key", "iv", "ciphertext", "tag"],
    )
    .ok_or(bad)?;
    let protected = string(protected).ok_or(bad)?;
    let header_bytes = b64(protected).ok_or(bad)?;
    let header = Json::document(&header_bytes).ok_or(bad)?;
    let [alg, enc, epk] = exactly(&header, ["alg", "enc", "epk"]).ok_or(bad)?;
    if string(alg) != Some(wire::JWE_ALG) || string(enc) != Some(wire::JWE_ENC) {
        return Err(bad);
    }
    let Value::Obj(epk) = epk else {
        return Err(bad);
    };
    let [crv, kty, x, y] = exactly(epk, ["crv", "kty", "x", "y"]).ok_or(bad)?;
    if string(crv) != Some("P-256") || string(kty) != Some("EC") {
        return Err(bad);
    }
    let x: [u8; 32] = b64_fixed(string(x).ok_or(bad)?).ok_or(bad)?;
    let y: [u8; 32] = b64_fixed(string(y).ok_or(bad)?).ok_or(bad)?;
    let mut sec1 = [0u8; 65];
    sec1[0] = 0x04;
    sec1[1..33].copy_from_slice(&x);
    sec1[33..].copy_from_slice(&y);
    // Refuses points not on the curve (and the identity).
    let epk = p256::PublicKey::from_sec1_bytes(&sec1).map_err(|_| bad)?;
    let encrypted_key: [u8; 40] = b64_fixed(string(encrypted_key).ok_or(bad)?).ok_or(bad)?;
    let iv: [u8; 12] = b64_fixed(string(iv).ok_or(bad)?).ok_or(bad)?;
    let tag: [u8; GCM_TAG_LEN] = b64_fixed(string(tag).ok_or(bad)?).ok_or(bad)?;
    let mut plaintext = b64(string(ciphertext).ok_or(bad)?).ok_or(bad)?;

    let z = ecdh_p256(&session.secret, &epk);
    let kek = concat_kdf_a256kw(&z);
    let mut cek = Zeroizing::new([0u8; 32]);
    aes_kw::KekAes256::new((&*kek).into())
        .unwrap(&encrypted_key, &mut cek[..])
        .map_err(|_| bad)?;
    let cipher = Aes256Gcm::new_from_slice(&cek[..]).map_err(|_| bad)?;
    cipher
        .decrypt_in_place_detached(
            (&iv).into(),
            protected.as_bytes(),
            &mut plaintext[..],
            (&tag).into(),
        )
        .map_err(|_| bad)?;
    Ok(plaintext)
}

/// Who vouches for a provisioned key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// The owner key of the measured launch configuration signed the envelope.
    Owner,
    /// Nobody: a bare envelope, accepted because the configuration allows it.
    Unauthenticated,
}

/// The envelope inside a decrypted JWE plaintext, and who vouches for it.
///
/// `owner` is the measured owner key (uncompressed SEC1 P-384), `allow_unsigned`
/// the measured policy. A signed envelope needs an owner key and its valid ES384
/// signature under exactly [`JWS_HEADER`]; a bare one (starting with
/// [`ENVELOPE_MAGIC`]) is accepted only without an owner key and with
/// `allow_unsigned`.
pub fn open_envelope(
    plaintext: &[u8],
    owner: Option<&p384::ecdsa::VerifyingKey>,
    allow_unsigned: bool,
) -> Result<(Zeroizing<Vec<u8>>, Authority), Error> {
    if plaintext.starts_with(&ENVELOPE_MAGIC) {
        if owner.is_some() || !allow_unsigned {
            return Err(Error::Unauthenticated);
        }
        Envelope::parse(plaintext).map_err(|_| Error::EnvelopeInvalid)?;
        return Ok((
            Zeroizing::new(plaintext.to_vec()),
            Authority::Unauthenticated,
        ));
    }
    let owner = owner.ok_or(Error::Unauthenticated)?;
    let bad = Error::EnvelopeInvalid;
    let text = core::str::from_utf8(plaintext).map_err(|_| bad)?;
    let mut parts = text.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad);
    };
    if b64(header).ok_or(bad)?.as_slice() != JWS_HEADER {
        return Err(bad);
    }
    let signature: [u8; 96] = b64_fixed(signature).ok_or(bad)?;
    let signature = p384::ecdsa::Signature::from_slice(&signature).map_err(|_| bad)?;
    let signed_len = header
        .len()
        .checked_add(1)
        .and_then(|n| n.checked_add(payload.len()))
        .ok_or(bad)?;
    let signed = text.get(..signed_len).ok_or(bad)?;
    owner
        .verify(signed.as_bytes(), &signature)
        .map_err(|_| bad)?;
    let payload = b64(payload).ok_or(bad)?;
    Envelope::parse(&payload).map_err(|_| bad)?;
    Ok((payload, Authority::Owner))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reader_is_strict() {
        let ok = br#" {"a":"x", "b":{"c":"y"}} "#;
        let doc = Json::document(ok).unwrap();
        assert_eq!(doc.len(), 2);
        for bad in [
            &br#"{"a":"x","a":"y"}"#[..],
            br#"{"a":"x\"y"}"#,
            br#"{"a":1}"#,
            br#"{"a":"x",}"#,
            br#"{"a":"x"} x"#,
            br#"{"a":{"b":{"c":"d"}}}"#,
            br#"{"a":"x""#,
            br#"["a"]"#,
            b"{\"a\":\"\x01\"}",
        ] {
            assert_eq!(Json::document(bad), None, "{}", bad.escape_ascii());
        }
        assert!(exactly(&doc, ["a", "b"]).is_some());
        assert!(exactly(&doc, ["a"]).is_none());
        assert!(exactly(&doc, ["a", "c"]).is_none());
    }

    #[test]
    fn base64url_is_canonical() {
        assert_eq!(b64("AQ").unwrap().as_slice(), &[1]);
        // Non-zero trailing bits, padding and the standard alphabet are refused.
        assert!(b64("AR").is_none());
        assert!(b64("AQ==").is_none());
        assert!(b64("+/").is_none());
        assert!(b64_fixed::<2>("AQ").is_none());
    }
}
