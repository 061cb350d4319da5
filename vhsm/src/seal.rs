//! Sealed blobs: the cryptography of `nitride_protocol::sealed` and the vault's
//! persistent-state payload.
//!
//! A blob's AEAD key and nonce come from HKDF-SHA-384 over the sealing key the PSP
//! derives at VMPL0 for the TCB in the blob's header ([`Attester::sealing_key`]), the
//! header's random salt and the whole header; the header is the AAD. An all-zero
//! derived key is refused (one platform was seen answering so, with status 0, for a
//! TCB above its committed one). Opening checks the header canonically before any key
//! is asked for, and nothing of the payload is returned unless the tag verifies.
//!
//! The state payload ([`StatePayload`]) is canonical too: every field is checked
//! against what [`StatePayload::encode`] writes, so decoding then encoding gives the
//! same bytes. `docs/sealing.md` describes both.

use alloc::vec::Vec;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit};
use hkdf::Hkdf;
use nitride_protocol::sealed::{
    Purpose, SealedHeader, SEALED_HEADER_LEN, SEALED_MAGIC, SEALED_TAG_LEN, SEALED_VERSION,
    SEALING_FIELDS, SEALING_KEY_VMPL, SEAL_INFO_DOMAIN,
};
use nitride_protocol::vhsm::{KeyAttributes, KeyFlags, KEY_CAPACITY, MAX_LABEL_LEN};
use sha2::Sha384;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, IntoBytes};
use zeroize::Zeroizing;

use crate::scrub::{scrubbed, Depth};
use crate::{Attester, Error, KeyType, KeyUsage, Origin, VmplSet};

/// Ask the platform for the sealing key at `tcb`, refusing an all-zero key.
fn sealing_key(attester: &mut dyn Attester, tcb: [u8; 8]) -> Result<Zeroizing<[u8; 32]>, Error> {
    let key = attester
        .sealing_key(tcb)
        .map_err(|_| Error::SealingUnavailable)?;
    if key.iter().all(|&b| b == 0) {
        return Err(Error::SealingUnavailable);
    }
    Ok(key)
}

/// The blob's AES-256-GCM cipher and nonce: HKDF-SHA-384(salt = header.salt,
/// IKM = sealing key, info = SEAL_INFO_DOMAIN || header), 44 bytes.
fn blob_cipher(key: &[u8; 32], header: &SealedHeader) -> Result<(Aes256Gcm, [u8; 12]), Error> {
    let hk = Hkdf::<Sha384>::new(Some(&header.salt), key);
    let mut okm = Zeroizing::new([0u8; 44]);
    hk.expand_multi_info(&[SEAL_INFO_DOMAIN, header.as_bytes()], &mut okm[..])
        .map_err(|_| Error::SealingUnavailable)?;
    let (k, n) = okm.split_at(32);
    let cipher = Aes256Gcm::new_from_slice(k).map_err(|_| Error::SealingUnavailable)?;
    let nonce: [u8; 12] = n.try_into().map_err(|_| Error::SealingUnavailable)?;
    Ok((cipher, nonce))
}

/// What a new blob's header says besides its payload.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BlobParams {
    pub purpose: Purpose,
    pub rule: VmplSet,
    pub generation: u64,
    pub salt: [u8; 32],
}

/// Seal `payload` at the platform's current TCB: `header || ciphertext || tag`.
pub(crate) fn seal(
    attester: &mut dyn Attester,
    params: BlobParams,
    payload: &[u8],
) -> Result<Vec<u8>, Error> {
    let tcb = attester
        .sealing_tcb()
        .map_err(|_| Error::SealingUnavailable)?;
    seal_at(attester, tcb, params, payload)
}

/// Seal `payload` at `tcb`.
pub(crate) fn seal_at(
    attester: &mut dyn Attester,
    tcb: [u8; 8],
    params: BlobParams,
    payload: &[u8],
) -> Result<Vec<u8>, Error> {
    let header = SealedHeader {
        magic: SEALED_MAGIC,
        version: U16::new(SEALED_VERSION),
        purpose: U16::new(params.purpose as u16),
        vmpl_rule: params.rule.bits(),
        key_vmpl: SEALING_KEY_VMPL,
        reserved: U16::new(0),
        field_select: U64::new(SEALING_FIELDS),
        tcb,
        generation: U64::new(params.generation),
        salt: params.salt,
        payload_len: U32::new(u32::try_from(payload.len()).map_err(|_| Error::TooLarge)?),
        reserved2: U32::new(0),
    };
    let key = sealing_key(attester, tcb)?;
    let mut out = Vec::with_capacity(header.blob_len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
    scrubbed(Depth::KeyCreation, || {
        let (cipher, nonce) = blob_cipher(&key, &header)?;
        let body = out
            .get_mut(SEALED_HEADER_LEN..)
            .ok_or(Error::SealingUnavailable)?;
        let tag = cipher
            .encrypt_in_place_detached((&nonce).into(), header.as_bytes(), body)
            .map_err(|_| Error::TooLarge)?;
        out.extend_from_slice(&tag);
        Ok::<_, Error>(())
    })?;
    Ok(out)
}

/// Open a blob of `purpose`: its header and payload. Refused (before any key is
/// asked for) unless the header is one [`seal`] writes; refused unless the tag
/// verifies under the key derived at the header's TCB.
pub(crate) fn open(
    attester: &mut dyn Attester,
    purpose: Purpose,
    blob: &[u8],
) -> Result<(SealedHeader, Zeroizing<Vec<u8>>), Error> {
    let (header, body) =
        SealedHeader::parse(blob, purpose).map_err(|_| Error::SealedBlobInvalid)?;
    let key = sealing_key(attester, header.tcb)?;
    let split = body
        .len()
        .checked_sub(SEALED_TAG_LEN)
        .ok_or(Error::SealedBlobInvalid)?;
    let (ciphertext, tag) = body.split_at(split);
    let mut plain = Zeroizing::new(ciphertext.to_vec());
    scrubbed(Depth::KeyCreation, || {
        let (cipher, nonce) = blob_cipher(&key, &header)?;
        cipher
            .decrypt_in_place_detached(
                (&nonce).into(),
                header.as_bytes(),
                &mut plain[..],
                tag.into(),
            )
            .map_err(|_| Error::SealedBlobInvalid)
    })?;
    Ok((header, plain))
}

/// One key of a state payload (`Debug` redacts the material).
pub struct StateKey {
    /// Attributes as stored: PERSISTENT set, RESTORED clear.
    pub attributes: KeyAttributes,
    /// The key's AES-GCM invocation counter (lifetime).
    pub gcm_invocations: u32,
    /// The raw material ([`KeyType::material_len`] bytes).
    pub material: Zeroizing<Vec<u8>>,
}

/// The vault's persistent state, as sealed by ExportState:
///
/// ```text
/// u32 next_id, u32 key_count, u64 audit_count, [48] audit_chain,
/// [48] identity key (P-384 scalar, big-endian),
/// key_count x { KeyAttributes (48), u32 gcm_invocations, material }
/// ```
///
/// little-endian, keys in increasing id order, each material of its type's length.
/// (Public for the fuzz target; only the vault builds and opens state blobs.)
pub struct StatePayload {
    /// The id the next key gets.
    pub next_id: u32,
    /// Audit entries recorded when the state was exported.
    pub audit_count: u64,
    /// The audit chain head then.
    pub audit_chain: [u8; 48],
    /// The vault identity key's scalar.
    pub identity: Zeroizing<Vec<u8>>,
    /// The persistent keys.
    pub keys: Vec<StateKey>,
}

impl core::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StateKey")
            .field("attributes", &self.attributes)
            .field("gcm_invocations", &self.gcm_invocations)
            .field("material", &"[REDACTED]")
            .finish()
    }
}

impl core::fmt::Debug for StatePayload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StatePayload")
            .field("next_id", &self.next_id)
            .field("audit_count", &self.audit_count)
            .field("keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Length of the identity scalar.
const IDENTITY_LEN: usize = 48;

/// A stored key's attributes are ones the vault could have written.
fn attributes_valid(a: &KeyAttributes) -> Option<KeyType> {
    let key_type = KeyType::from_raw(a.key_type.get())?;
    let usage = KeyUsage::from_bits(a.usage.get())?;
    let allowed = VmplSet::from_bits(a.allowed_vmpls)?;
    let flags = a.flags()?;
    let label_len = usize::from(a.label_len);
    let ok = a.key_id.get() != 0
        && Origin::from_raw(a.origin).is_some()
        && !usage.is_empty()
        && key_type.allowed_usage().contains(usage)
        && !allowed.is_empty()
        && flags.contains(KeyFlags::PERSISTENT)
        && !flags.contains(KeyFlags::RESTORED)
        && a.reserved.get() == 0
        && label_len <= MAX_LABEL_LEN
        && a.label.get(label_len..)?.iter().all(|&b| b == 0);
    ok.then_some(key_type)
}

impl StatePayload {
    /// The canonical encoding.
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        let mut out = Zeroizing::new(Vec::with_capacity(
            112 + self.keys.len().saturating_mul(100),
        ));
        out.extend_from_slice(&self.next_id.to_le_bytes());
        let count = u32::try_from(self.keys.len()).map_err(|_| Error::TooLarge)?;
        out.extend_from_slice(&count.to_le_bytes());
        out.extend_from_slice(&self.audit_count.to_le_bytes());
        out.extend_from_slice(&self.audit_chain);
        out.extend_from_slice(&self.identity);
        for key in &self.keys {
            out.extend_from_slice(key.attributes.as_bytes());
            out.extend_from_slice(&key.gcm_invocations.to_le_bytes());
            out.extend_from_slice(&key.material);
        }
        Ok(out)
    }

    /// Decode and check a payload. Anything [`StatePayload::encode`] would not have
    /// written for a vault is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let bad = Error::SealedBlobInvalid;
        let mut rest = bytes;
        let mut take = |n: usize| -> Result<&[u8], Error> {
            if n > rest.len() {
                return Err(bad);
            }
            let (head, tail) = rest.split_at(n);
            rest = tail;
            Ok(head)
        };
        let u32_at = |b: &[u8]| -> Result<u32, Error> {
            Ok(u32::from_le_bytes(b.try_into().map_err(|_| bad)?))
        };
        let next_id = u32_at(take(4)?)?;
        let count = usize::try_from(u32_at(take(4)?)?).map_err(|_| bad)?;
        let audit_count = u64::from_le_bytes(take(8)?.try_into().map_err(|_| bad)?);
        let audit_chain: [u8; 48] = take(48)?.try_into().map_err(|_| bad)?;
        let identity = Zeroizing::new(take(IDENTITY_LEN)?.to_vec());
        if count > KEY_CAPACITY || next_id == 0 {
            return Err(bad);
        }
        let mut keys = Vec::with_capacity(count);
        let mut last_id = 0u32;
        for _ in 0..count {
            let attributes = KeyAttributes::read_from_bytes(take(48)?).map_err(|_| bad)?;
            let key_type = attributes_valid(&attributes).ok_or(bad)?;
            let id = attributes.key_id.get();
            if id <= last_id || id >= next_id {
                return Err(bad);
            }
            last_id = id;
            let gcm_invocations = u32_at(take(4)?)?;
            let material = Zeroizing::new(take(key_type.material_len())?.to_vec());
            keys.push(StateKey {
                attributes,
                gcm_invocations,
                material,
            });
        }
        if !rest.is_empty() {
            return Err(bad);
        }
        Ok(Self {
            next_id,
            audit_count,
            audit_chain,
            identity,
            keys,
        })
    }
}

/// Bytes a state blob takes per key of `key_type`: attributes, counter, material.
pub const fn state_bytes_per_key(key_type: KeyType) -> usize {
    size_of::<KeyAttributes>() + 4 + key_type.material_len()
}

/// Bytes of a state blob with no key: header, fixed payload, tag.
pub const STATE_BLOB_BASE_LEN: usize =
    SEALED_HEADER_LEN + 4 + 4 + 8 + 48 + IDENTITY_LEN + SEALED_TAG_LEN;
