//! The vault: a bounded key store and the typed operations on it.
//!
//! Every operation takes the [`Caller`] and checks, in this order: the key exists and
//! the caller's VMPL is in the key's allowed set (a key the caller may not use is
//! reported exactly like a key that does not exist), the key's usage flags permit
//! the operation, then the operation's own rules (exportability, policy, capacity). All
//! checks run before anything changes, so a failed operation leaves the key store, the
//! keys' attributes and their nonce counters exactly as they were (the DRBG may have
//! advanced; the dispatcher records the failure in the audit log).
//!
//! Policy invariants (see `docs/vault.md`):
//! - a non-exportable key never leaves the vault: there is no plaintext export, `Wrap`
//!   refuses it, and keys derived from it can never be exportable;
//! - a derived key is usable by no VMPL its parent is not usable by;
//! - plaintext import needs [`VaultPolicy::allow_plaintext_import`];
//! - the store holds at most [`KEY_CAPACITY`] keys; ids are never reused.

use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;

use hkdf::Hkdf;
use nitride_protocol::attest::{
    report_data, vhsm_manifest_len, write_vhsm_manifest, KeyBinding, ManifestKey, Nonce,
    VhsmManifestHeader,
};
use nitride_protocol::svsm::VHSM_PROTOCOL_VERSION;
use nitride_protocol::vhsm::{
    parse_luks_uuid, LUKS_PASSPHRASE_INFO_PREFIX, LUKS_PASSPHRASE_LEN, LUKS_PASSPHRASE_SALT,
};
use nitride_protocol::vhsm::{
    KeyAttributes, KeyFlags, KeyTemplate, GCM_NONCE_LEN, KEY_CAPACITY, MAX_DATA_LEN, MAX_LABEL_LEN,
    MAX_RANDOM_LEN,
};
use nitride_protocol::vhsm::{MAX_RESPONSE_SIZE, VERSION as WIRE_VERSION};
use sha2::Sha384;
use zerocopy::little_endian::{U16, U32, U64};
use zeroize::Zeroizing;

use crate::audit::AuditLog;
use crate::drbg::{VaultDrbg, MAX_BYTES_PER_REQUEST};
use crate::key::{ecdh_p256, gcm_open, gcm_seal, kw_unwrap, kw_wrap, Material};
use crate::provision::{self, Authority, SessionKey};
use crate::scrub::{scrubbed, scrubbed_around, Depth};
use crate::seal::{self, BlobParams, StateKey, StatePayload};
use crate::{Attester, Caller, Error, KeyType, KeyUsage, Origin, Platform, VaultPolicy, VmplSet};
use nitride_protocol::sealed::{Purpose, MAX_KEY_PAYLOAD_LEN, MAX_SEAL_DATA_LEN};
use zerocopy::{FromBytes as _, IntoBytes as _};

/// Personalization string of the vault's DRBG.
const DRBG_PERSONALIZATION: &[u8] = b"nitride-vhsm drbg v1";

/// Prefix of the HKDF info for `Derive`: `prefix || key_type (u16 LE) || caller info`.
pub const DERIVE_INFO_PREFIX: &[u8] = b"nitride-vhsm derive v1\0";

/// AES-GCM encryptions allowed per key: the 32-bit invocation counter's range.
pub const GCM_INVOCATION_LIMIT: u64 = u32::MAX as u64;

/// The AES-GCM nonce of a key's `invocation`-th encryption in a vault whose nonce
/// base is `base`: `fixed (8 bytes) || invocation (u32 big-endian)`, where `fixed` =
/// `base + key id` (mod 2^64, big-endian), the deterministic construction of NIST SP
/// 800-38D section 8.2.1.
///
/// Within one vault, key ids are never reused and below 2^32, so no two keys share
/// a fixed field, and each key's invocation field only grows: no two encryptions
/// share a nonce, even under two keys with the same material (a key imported twice).
/// `base` is drawn from the DRBG when a vault starts and kept nowhere else; a vault
/// started again (a reboot, or a restored sealed state) draws a new one and restarts
/// every key's invocation field at 0, so a key present in two vaults (with ids `a`
/// and `b`) repeats a nonce only if `base1 + a = base2 + b`: probability 2^-64 per
/// pair of vault starts, however often and from whatever saved state it is restored.
pub fn gcm_nonce(base: u64, key_id: u32, invocation: u32) -> [u8; GCM_NONCE_LEN] {
    let mut nonce = [0u8; GCM_NONCE_LEN];
    let (fixed, counter) = nonce.split_at_mut(8);
    fixed.copy_from_slice(&base.wrapping_add(u64::from(key_id)).to_be_bytes());
    counter.copy_from_slice(&invocation.to_be_bytes());
    nonce
}

/// Draw the vault identity key (P-384) from a freshly seeded DRBG.
fn identity_key(drbg: &mut VaultDrbg) -> Result<Material, Error> {
    let mut bytes = Zeroizing::new([0u8; 48]);
    for _ in 0..KEYGEN_ATTEMPTS {
        drbg.generate(&mut bytes[..], b"identity")
            .map_err(|_| Error::Entropy)?;
        if let Ok(key) = Material::from_bytes(KeyType::EcdsaP384, &bytes[..]) {
            return Ok(key);
        }
    }
    Err(Error::InvalidKeyMaterial)
}

/// Fill `out` from `drbg`, reseeding it from `platform` when due. Callers run it
/// [`scrubbed`]: the DRBG's HMAC states lie on the stack while it runs.
fn fill<P: Platform>(drbg: &mut VaultDrbg, platform: &mut P, out: &mut [u8]) -> Result<(), Error> {
    for chunk in out.chunks_mut(MAX_BYTES_PER_REQUEST) {
        if drbg.needs_reseed() {
            let mut entropy = Zeroizing::new([0u8; 48]);
            platform.entropy(&mut entropy[..])?;
            drbg.reseed(&entropy[..], &[]);
        }
        drbg.generate(chunk, &[]).map_err(|_| Error::Entropy)?;
    }
    Ok(())
}

/// How deep signing with `material` may use the stack.
fn sign_depth(material: &Material) -> Depth {
    if material.key_type() == KeyType::HmacSha384 {
        Depth::Hmac
    } else {
        Depth::Signing
    }
}

/// Prefix of the HKDF info for `Agree`: `prefix || key_type (u16 LE) || caller info`.
pub const AGREE_INFO_PREFIX: &[u8] = b"nitride-vhsm agree v1\0";

/// Attempts at drawing a valid P-384 scalar before giving up (each fails with
/// probability below 2^-190).
const KEYGEN_ATTEMPTS: usize = 8;

/// A key label: up to [`MAX_LABEL_LEN`] bytes.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Label {
    bytes: [u8; MAX_LABEL_LEN],
    len: u8,
}

impl Label {
    /// A label from `bytes`, at most [`MAX_LABEL_LEN`] long.
    pub fn new(bytes: &[u8]) -> Result<Self, Error> {
        let mut label = Self::default();
        label
            .bytes
            .get_mut(..bytes.len())
            .ok_or(Error::InvalidParameter)?
            .copy_from_slice(bytes);
        label.len = u8::try_from(bytes.len()).map_err(|_| Error::InvalidParameter)?;
        Ok(label)
    }

    /// The label's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or_default()
    }
}

impl fmt::Debug for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_bytes().escape_ascii())
    }
}

/// The requested properties of a new key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySpec {
    /// Type.
    pub key_type: KeyType,
    /// Usage flags; must be non-empty and allowed for the type.
    pub usage: KeyUsage,
    /// VMPLs that may use the key; must include the creating caller's.
    pub allowed: VmplSet,
    /// Whether the key may leave the vault (wrapped).
    pub exportable: bool,
    /// Whether the key is part of the vault's persistent state (ExportState).
    pub persistent: bool,
    /// Label.
    pub label: Label,
}

impl KeySpec {
    /// A spec without a label.
    pub fn new(key_type: KeyType, usage: KeyUsage, allowed: VmplSet, exportable: bool) -> Self {
        Self {
            key_type,
            usage,
            allowed,
            exportable,
            persistent: false,
            label: Label::default(),
        }
    }

    /// This spec, for a persistent key.
    pub fn persistent(mut self) -> Self {
        self.persistent = true;
        self
    }

    /// Parse the wire form, rejecting unknown types and bits.
    pub fn from_wire(template: &KeyTemplate, label: &[u8]) -> Result<Self, Error> {
        // Exportable and persistent may be asked for; restored is the vault's mark.
        let flags = KeyFlags::from_bits(template.exportable)
            .filter(|f| !f.contains(KeyFlags::RESTORED))
            .ok_or(Error::InvalidParameter)?;
        Ok(Self {
            key_type: KeyType::from_raw(template.key_type.get()).ok_or(Error::InvalidParameter)?,
            usage: KeyUsage::from_bits(template.usage.get()).ok_or(Error::InvalidParameter)?,
            allowed: VmplSet::from_bits(template.allowed_vmpls).ok_or(Error::InvalidParameter)?,
            exportable: flags.contains(KeyFlags::EXPORTABLE),
            persistent: flags.contains(KeyFlags::PERSISTENT),
            label: Label::new(label)?,
        })
    }

    /// Check the spec is coherent and the caller may create such a key.
    fn check(&self, caller: Caller) -> Result<(), Error> {
        if self.usage.is_empty() || !self.key_type.allowed_usage().contains(self.usage) {
            return Err(Error::InvalidParameter);
        }
        if !self.allowed.contains(caller.as_set()) {
            return Err(Error::InvalidParameter);
        }
        Ok(())
    }
}

/// A key's attributes (everything but its material).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// Id: never 0, never reused.
    pub id: u32,
    /// Type.
    pub key_type: KeyType,
    /// Usage flags.
    pub usage: KeyUsage,
    /// VMPLs that may use the key.
    pub allowed: VmplSet,
    /// Whether the key may leave the vault (wrapped).
    pub exportable: bool,
    /// Whether the key is part of the vault's persistent state.
    pub persistent: bool,
    /// Whether the key was restored from a sealed state (its origin is the
    /// original one).
    pub restored: bool,
    /// Where it came from.
    pub origin: Origin,
    /// Label.
    pub label: Label,
}

impl KeyInfo {
    /// The key flags.
    pub fn flags(&self) -> KeyFlags {
        let mut flags = KeyFlags::empty();
        flags.set(KeyFlags::EXPORTABLE, self.exportable);
        flags.set(KeyFlags::PERSISTENT, self.persistent);
        flags.set(KeyFlags::RESTORED, self.restored);
        flags
    }

    /// The wire form.
    pub fn to_wire(&self) -> KeyAttributes {
        KeyAttributes {
            key_id: U32::new(self.id),
            key_type: U16::new(self.key_type.raw()),
            origin: self.origin.raw(),
            allowed_vmpls: self.allowed.bits(),
            usage: U32::new(self.usage.bits()),
            exportable: self.flags().bits(),
            label_len: self.label.len,
            reserved: U16::new(0),
            label: self.label.bytes,
        }
    }
}

/// One stored key.
///
/// Its [`Material`] is a tag and a pointer to the secret, so the key table holds no
/// secret bytes: the table moves keys (Delete shifts every key after the deleted one
/// down, and `Vec::remove` leaves the old last slot's bytes in the table's spare
/// capacity), and a move copies bytes without dropping, so only the pointer moves.
/// The secret is zeroized in its own allocation when the key is dropped, before that
/// allocation is freed (`tests/residue.rs` checks every freed block for key bytes).
#[derive(Debug)]
struct Key {
    info: KeyInfo,
    material: Material,
    /// AES-GCM encryptions done with this key in this vault: the invocation field of
    /// the next nonce (see [`gcm_nonce`]).
    gcm_invocations: u32,
}

impl Key {
    fn permits(&self, usage: KeyUsage) -> Result<(), Error> {
        if self.info.usage.contains(usage) {
            Ok(())
        } else {
            Err(Error::UsageNotPermitted)
        }
    }
}

/// The vault. `P` provides entropy.
///
/// No secret lives inline in this struct (the firmware moves it around when it
/// starts): the DRBG state, the identity key and every key's material are boxed,
/// each built in a [`scrubbed_around`] frame and zeroized in place when dropped.
pub struct Vault<P> {
    platform: P,
    policy: VaultPolicy,
    drbg: Box<VaultDrbg>,
    /// The vault identity key (P-384), drawn from the DRBG at creation (or restored
    /// with a sealed state, which always carries it); never in the key table, never
    /// exported otherwise. Zeroizes its scalar on drop. Only its public half is used
    /// so far (provisioning uses a fresh key per session instead).
    #[allow(dead_code)]
    identity: Material,
    /// Its public key, SPKI DER.
    identity_spki: Vec<u8>,
    keys: Vec<Key>,
    next_id: u32,
    /// This vault's AES-GCM nonce base, drawn once when the vault is created and
    /// never stored anywhere else: a key's fixed nonce field is this plus its id.
    nonce_base: u64,
    pub(crate) audit: AuditLog,
    /// The measured owner key provisioned envelopes must be signed by.
    owner: Option<p384::ecdsa::VerifyingKey>,
    /// The open provisioning session's key, if any (see [`crate::provision`]).
    session: Option<SessionKey>,
    /// Where the persistent state stands (ExportState / ImportState).
    persist: Persist,
}

/// The vault's persistent-state bookkeeping.
#[derive(Clone, Copy, Debug, Default)]
struct Persist {
    /// Changes to the persistent state in this boot (a persistent key created,
    /// deleted, or its GCM counter moved; a state imported).
    changes: u64,
    /// `changes` when the current generation's blob was exported or imported.
    synced_at: Option<u64>,
    /// The generation of the latest state exported or imported (0: none).
    generation: u64,
    /// The highest generation exported or imported in this boot.
    highest: u64,
}

impl Persist {
    fn changed(&mut self) {
        self.changes = self.changes.saturating_add(1);
    }
}

/// What `Unseal` returns.
#[derive(Debug)]
pub struct Unsealed {
    /// The data.
    pub data: Zeroizing<Vec<u8>>,
    /// The blob sealed again at the current TCB, when it was sealed at another.
    pub resealed: Option<Vec<u8>>,
}

/// What `ImportState` returns.
#[derive(Debug)]
pub struct ImportedState {
    /// The restored state's generation.
    pub generation: u64,
    /// Keys restored.
    pub keys: u32,
    /// The state sealed again at the current TCB, when it was sealed at another.
    pub resealed: Option<Vec<u8>>,
}

impl<P> fmt::Debug for Vault<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("policy", &self.policy)
            .field("keys", &self.keys)
            .field("next_id", &self.next_id)
            .field("audit_next_seq", &self.audit.next_seq())
            .finish_non_exhaustive()
    }
}

impl<P: Platform> Vault<P> {
    /// An empty vault, its DRBG seeded from `platform`.
    pub fn new(mut platform: P, policy: VaultPolicy) -> Result<Self, Error> {
        let owner = policy
            .owner_key
            .map(|k| p384::ecdsa::VerifyingKey::from_sec1_bytes(&k))
            .transpose()
            .map_err(|_| Error::InvalidKeyMaterial)?;
        let (drbg, identity, base, audit) = scrubbed_around(Depth::KeyCreation, || {
            let mut seed = Zeroizing::new([0u8; 48 + 24]);
            platform.entropy(&mut seed[..])?;
            let (entropy, nonce) = seed.split_at(48);
            let mut drbg = Box::new(VaultDrbg::new(entropy, nonce, DRBG_PERSONALIZATION));
            let identity = identity_key(&mut drbg)?;
            let mut base = [0u8; 8];
            drbg.generate(&mut base, b"gcm nonce base")
                .map_err(|_| Error::Entropy)?;
            let mut salt_key = Zeroizing::new([0u8; 32]);
            drbg.generate(&mut salt_key[..], b"audit salt key")
                .map_err(|_| Error::Entropy)?;
            let audit = AuditLog::new(&salt_key);
            Ok::<_, Error>((drbg, identity, base, audit))
        })?;
        let mut identity_spki = Vec::new();
        identity.public_key_der(&mut identity_spki)?;
        Ok(Self {
            platform,
            policy,
            drbg,
            identity,
            identity_spki,
            keys: Vec::with_capacity(KEY_CAPACITY),
            next_id: 1,
            nonce_base: u64::from_be_bytes(base),
            audit,
            owner,
            session: None,
            persist: Persist::default(),
        })
    }

    /// Changes to the persistent state so far in this boot (the dispatcher flags a
    /// response whose request moved it).
    pub fn state_changes(&self) -> u64 {
        self.persist.changes
    }

    /// The generation of the latest state exported or imported (0: none yet).
    pub fn state_generation(&self) -> u64 {
        self.persist.generation
    }

    /// A fresh 32-byte salt from the DRBG.
    fn salt(&mut self) -> Result<[u8; 32], Error> {
        let mut salt = [0u8; 32];
        self.fill_random(&mut salt)?;
        Ok(salt)
    }

    /// `Seal`: seal `data` for the VMPLs in `rule` (which must include the caller's)
    /// to this SVSM image, launch policy and chip, at the current TCB.
    pub fn seal(
        &mut self,
        caller: Caller,
        rule: u32,
        data: &[u8],
        attester: &mut dyn Attester,
    ) -> Result<Vec<u8>, Error> {
        let rule = u8::try_from(rule)
            .ok()
            .and_then(VmplSet::from_bits)
            .filter(|r| r.contains(caller.as_set()))
            .ok_or(Error::InvalidParameter)?;
        if data.len() > MAX_SEAL_DATA_LEN {
            return Err(Error::TooLarge);
        }
        let params = BlobParams {
            purpose: Purpose::Data,
            rule,
            generation: 0,
            salt: self.salt()?,
        };
        seal::seal(attester, params, data)
    }

    /// `Unseal`: open a blob from `Seal` if the caller's VMPL is in its rule; when it
    /// was sealed at another TCB than the current one, also seal it again at the
    /// current TCB.
    pub fn unseal(
        &mut self,
        caller: Caller,
        blob: &[u8],
        attester: &mut dyn Attester,
    ) -> Result<Unsealed, Error> {
        let (header, data) = seal::open(attester, Purpose::Data, blob)?;
        let rule = VmplSet::from_bits(header.vmpl_rule).ok_or(Error::SealedBlobInvalid)?;
        if !rule.contains(caller.as_set()) {
            return Err(Error::SealRuleDenied);
        }
        let current = attester
            .sealing_tcb()
            .map_err(|_| Error::SealingUnavailable)?;
        let resealed = if current == header.tcb {
            None
        } else {
            let params = BlobParams {
                purpose: Purpose::Data,
                rule,
                generation: 0,
                salt: self.salt()?,
            };
            Some(seal::seal_at(attester, current, params, &data)?)
        };
        Ok(Unsealed { data, resealed })
    }

    /// The persistent state's payload now.
    fn state_payload(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        let keys = self
            .keys
            .iter()
            .filter(|k| k.info.persistent)
            .map(|k| {
                let mut attributes = k.info.to_wire();
                attributes.exportable &= !KeyFlags::RESTORED.bits();
                StateKey {
                    attributes,
                    gcm_invocations: k.gcm_invocations,
                    material: k.material.to_bytes(),
                }
            })
            .collect();
        StatePayload {
            next_id: self.next_id,
            audit_count: self.audit.count(),
            audit_chain: *self.audit.head(),
            identity: self.identity.to_bytes(),
            keys,
        }
        .encode()
    }

    /// `ExportState`: the persistent state (the identity key, every persistent key
    /// with its attributes and GCM counter, the next key id, the audit chain head)
    /// sealed at the current TCB, VMPL0-only, with its generation. The generation
    /// grows by one when the state changed since the last export or import.
    pub fn export_state(&mut self, attester: &mut dyn Attester) -> Result<(u64, Vec<u8>), Error> {
        let generation = if self.persist.synced_at == Some(self.persist.changes) {
            self.persist.generation
        } else {
            self.persist
                .generation
                .checked_add(1)
                .ok_or(Error::CapacityExceeded)?
        };
        let payload = scrubbed(Depth::Signing, || self.state_payload())?;
        let params = BlobParams {
            purpose: Purpose::VaultState,
            rule: VmplSet::VMPL0,
            generation,
            salt: self.salt()?,
        };
        let blob = seal::seal(attester, params, &payload)?;
        self.persist.generation = generation;
        self.persist.synced_at = Some(self.persist.changes);
        self.persist.highest = self.persist.highest.max(generation);
        Ok((generation, blob))
    }

    /// `ImportState`: restore a state blob into a vault that holds no key. Refused if
    /// the blob does not open, or is older than a state already exported or imported
    /// in this boot; nothing changes then. Restored keys keep their ids, attributes,
    /// origin and GCM counters, and carry the restored mark; the vault identity key
    /// becomes the stored one; a new GCM nonce base is drawn (see [`gcm_nonce`]).
    pub fn import_state(
        &mut self,
        blob: &[u8],
        attester: &mut dyn Attester,
    ) -> Result<ImportedState, Error> {
        if !self.keys.is_empty() {
            return Err(Error::VaultNotEmpty);
        }
        let (header, payload) = seal::open(attester, Purpose::VaultState, blob)?;
        let generation = header.generation.get();
        if generation < self.persist.highest {
            return Err(Error::StateRollback);
        }
        let current = attester
            .sealing_tcb()
            .map_err(|_| Error::SealingUnavailable)?;
        let state = StatePayload::decode(&payload)?;
        // Build everything before changing anything.
        let (identity, mut keys) = scrubbed_around(Depth::KeyCreation, || {
            let identity = Material::from_bytes(KeyType::EcdsaP384, &state.identity)?;
            let mut keys = Vec::with_capacity(KEY_CAPACITY);
            for k in &state.keys {
                let a = &k.attributes;
                let key_type =
                    KeyType::from_raw(a.key_type.get()).ok_or(Error::SealedBlobInvalid)?;
                let info = KeyInfo {
                    id: a.key_id.get(),
                    key_type,
                    usage: KeyUsage::from_bits(a.usage.get()).ok_or(Error::SealedBlobInvalid)?,
                    allowed: VmplSet::from_bits(a.allowed_vmpls).ok_or(Error::SealedBlobInvalid)?,
                    exportable: a.exportable & KeyFlags::EXPORTABLE.bits() != 0,
                    persistent: true,
                    restored: true,
                    origin: Origin::from_raw(a.origin).ok_or(Error::SealedBlobInvalid)?,
                    label: Label::new(a.label())?,
                };
                let material = Material::from_bytes(key_type, &k.material)
                    .map_err(|_| Error::SealedBlobInvalid)?;
                keys.push(Key {
                    info,
                    material,
                    gcm_invocations: k.gcm_invocations,
                });
            }
            Ok::<_, Error>((identity, keys))
        })?;
        let mut identity_spki = Vec::new();
        identity.public_key_der(&mut identity_spki)?;
        let mut base = [0u8; 8];
        self.fill_random(&mut base)?;
        let count = u32::try_from(keys.len()).map_err(|_| Error::TooLarge)?;
        // Commit.
        self.identity = identity;
        self.identity_spki = identity_spki;
        self.keys.append(&mut keys);
        self.next_id = self.next_id.max(state.next_id);
        self.nonce_base = u64::from_be_bytes(base);
        self.audit.resume(state.audit_count, state.audit_chain);
        self.persist.changed();
        self.persist.generation = generation;
        self.persist.synced_at = Some(self.persist.changes);
        self.persist.highest = self.persist.highest.max(generation);
        let resealed = if current == header.tcb {
            None
        } else {
            let payload = scrubbed(Depth::Signing, || self.state_payload())?;
            let params = BlobParams {
                purpose: Purpose::VaultState,
                rule: VmplSet::VMPL0,
                generation,
                salt: self.salt()?,
            };
            seal::seal_at(attester, current, params, &payload).ok()
        };
        Ok(ImportedState {
            generation,
            keys: count,
            resealed,
        })
    }

    /// The vault identity public key (P-384, SPKI DER). The private half never
    /// leaves the vault; the vHSM manifest carries this key, so an attestation report
    /// over the manifest binds it to the SVSM.
    pub fn identity_public_key(&self) -> &[u8] {
        &self.identity_spki
    }

    /// The vault's policy.
    pub fn policy(&self) -> VaultPolicy {
        self.policy
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Fill `out` from the DRBG, reseeding from the platform when due.
    pub fn fill_random(&mut self, out: &mut [u8]) -> Result<(), Error> {
        let (drbg, platform) = (&mut self.drbg, &mut self.platform);
        scrubbed(Depth::Signing, || fill(drbg, platform, out))
    }

    /// `Random`: `len` bytes (at most [`MAX_RANDOM_LEN`]) appended to `out`.
    pub fn random(&mut self, len: usize, out: &mut Vec<u8>) -> Result<(), Error> {
        if len > MAX_RANDOM_LEN {
            return Err(Error::InvalidParameter);
        }
        let start = out.len();
        out.resize(start.checked_add(len).ok_or(Error::TooLarge)?, 0);
        let result = match out.get_mut(start..) {
            Some(dst) => self.fill_random(dst),
            None => Err(Error::TooLarge),
        };
        if result.is_err() {
            out.truncate(start);
        }
        result
    }

    /// A key the caller may use.
    fn key(&self, caller: Caller, id: u32) -> Result<&Key, Error> {
        self.keys
            .get(self.index(caller, id)?)
            .ok_or(Error::KeyNotFound)
    }

    /// The index of a key the caller may use.
    ///
    /// A key the caller's VMPL may not use is, to that caller, a key that does not
    /// exist: the same error, at the same point, so that every later step (and the
    /// response and audit entry) is the same as for an id never issued. The search
    /// looks at every key whatever it finds, so that it takes as long either way.
    fn index(&self, caller: Caller, id: u32) -> Result<usize, Error> {
        let mut found = None;
        for (index, key) in self.keys.iter().enumerate() {
            if key.info.id == id && key.info.allowed.contains(caller.as_set()) {
                found = Some(index);
            }
        }
        found.ok_or(Error::KeyNotFound)
    }

    /// A key the caller may use, with `usage`.
    fn usable(&self, caller: Caller, id: u32, usage: KeyUsage) -> Result<&Key, Error> {
        let key = self.key(caller, id)?;
        key.permits(usage)?;
        Ok(key)
    }

    /// The id the next key gets, if there is room for one.
    fn check_room(&self) -> Result<u32, Error> {
        if self.keys.len() >= KEY_CAPACITY || self.next_id == u32::MAX {
            return Err(Error::CapacityExceeded);
        }
        Ok(self.next_id)
    }

    /// Store a new key (the last step of every creating operation).
    fn insert(
        &mut self,
        spec: &KeySpec,
        origin: Origin,
        material: Material,
    ) -> Result<KeyInfo, Error> {
        let id = self.check_room()?;
        let next_id = id.checked_add(1).ok_or(Error::CapacityExceeded)?;
        let info = KeyInfo {
            id,
            key_type: spec.key_type,
            usage: spec.usage,
            allowed: spec.allowed,
            exportable: spec.exportable,
            persistent: spec.persistent,
            restored: false,
            origin,
            label: spec.label,
        };
        if info.persistent {
            self.persist.changed();
        }
        self.keys.push(Key {
            info,
            material,
            gcm_invocations: 0,
        });
        self.next_id = next_id;
        Ok(info)
    }

    /// `Generate`: a new key from the DRBG.
    pub fn generate(&mut self, caller: Caller, spec: &KeySpec) -> Result<KeyInfo, Error> {
        spec.check(caller)?;
        self.check_room()?;
        let (drbg, platform) = (&mut self.drbg, &mut self.platform);
        let material = scrubbed_around(Depth::KeyCreation, || {
            let mut bytes = Zeroizing::new(alloc::vec![0u8; spec.key_type.material_len()]);
            for _ in 0..KEYGEN_ATTEMPTS {
                fill(drbg, platform, &mut bytes)?;
                if let Ok(material) = Material::from_bytes(spec.key_type, &bytes) {
                    return Ok(material);
                }
            }
            Err(Error::InvalidKeyMaterial)
        })?;
        self.insert(spec, Origin::Generated, material)
    }

    /// `Import`: plaintext key material, if the policy allows it.
    pub fn import(
        &mut self,
        caller: Caller,
        spec: &KeySpec,
        material: &[u8],
    ) -> Result<KeyInfo, Error> {
        if !self.policy.allow_plaintext_import {
            return Err(Error::PolicyDenied);
        }
        spec.check(caller)?;
        self.check_room()?;
        let material = scrubbed_around(Depth::KeyCreation, || {
            Material::from_bytes(spec.key_type, material)
        })?;
        self.insert(spec, Origin::Imported, material)
    }

    /// `Unwrap`: key material wrapped (RFC 5649) under an AES key with UNWRAP usage.
    pub fn unwrap_key(
        &mut self,
        caller: Caller,
        unwrapping_key: u32,
        spec: &KeySpec,
        wrapped: &[u8],
    ) -> Result<KeyInfo, Error> {
        let kek = self
            .usable(caller, unwrapping_key, KeyUsage::UNWRAP)?
            .material
            .aes_key()?;
        spec.check(caller)?;
        self.check_room()?;
        let material = scrubbed_around(Depth::KeyCreation, || {
            let plain = kw_unwrap(kek, wrapped)?;
            Material::from_bytes(spec.key_type, &plain)
        })?;
        self.insert(spec, Origin::Unwrapped, material)
    }

    /// `Wrap`: append an exportable key wrapped (RFC 5649) under an AES key with WRAP
    /// usage. This is the only way key material leaves the vault.
    pub fn wrap_key(
        &self,
        caller: Caller,
        wrapping_key: u32,
        key: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let kek = self
            .usable(caller, wrapping_key, KeyUsage::WRAP)?
            .material
            .aes_key()?;
        let target = self.key(caller, key)?;
        if !target.info.exportable {
            return Err(Error::NotExportable);
        }
        scrubbed(Depth::Signing, || {
            kw_wrap(kek, &target.material.to_bytes(), out)
        })
    }

    /// `GetPublicKey`: append the SPKI DER of an ECDSA or Ed25519 key.
    pub fn public_key(&self, caller: Caller, key: u32, out: &mut Vec<u8>) -> Result<(), Error> {
        self.key(caller, key)?.material.public_key_der(out)
    }

    /// `Sign`: append a signature (DER ECDSA, raw Ed25519, HMAC tag) over `message`.
    pub fn sign(
        &self,
        caller: Caller,
        key: u32,
        message: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let material = &self.usable(caller, key, KeyUsage::SIGN)?.material;
        scrubbed(sign_depth(material), || material.sign(message, out))
    }

    /// `SignDigest`: append the raw ECDSA signature `r || s` over a caller-computed
    /// digest (PKCS#11 `CKM_ECDSA`).
    pub fn sign_digest(
        &self,
        caller: Caller,
        key: u32,
        digest: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let material = &self.usable(caller, key, KeyUsage::SIGN)?.material;
        scrubbed(sign_depth(material), || material.sign_digest(digest, out))
    }

    /// `Verify`: `Ok` if `signature` is valid for `message`.
    pub fn verify(
        &self,
        caller: Caller,
        key: u32,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), Error> {
        let material = &self.usable(caller, key, KeyUsage::VERIFY)?.material;
        if material.key_type() == KeyType::HmacSha384 {
            scrubbed(Depth::Hmac, || material.verify(message, signature))
        } else {
            // A public-key verification: nothing secret on the stack.
            material.verify(message, signature)
        }
    }

    /// `Encrypt`: append `nonce || ciphertext || tag` (AES-256-GCM, vault-chosen nonce,
    /// see [`gcm_nonce`]).
    pub fn encrypt(
        &mut self,
        caller: Caller,
        key: u32,
        aad: &[u8],
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        if aad.len() > MAX_DATA_LEN || plaintext.len() > MAX_DATA_LEN {
            return Err(Error::TooLarge);
        }
        let base = self.nonce_base;
        let index = self.index(caller, key)?;
        let key = self.keys.get_mut(index).ok_or(Error::KeyNotFound)?;
        key.permits(KeyUsage::ENCRYPT)?;
        let cipher = key.material.gcm()?;
        let invocation = key.gcm_invocations;
        if u64::from(invocation) >= GCM_INVOCATION_LIMIT {
            return Err(Error::NonceLimitReached);
        }
        let nonce = gcm_nonce(base, key.info.id, invocation);
        scrubbed(Depth::Cipher, || {
            gcm_seal(cipher, &nonce, aad, plaintext, out)
        })?;
        key.gcm_invocations = invocation.checked_add(1).ok_or(Error::NonceLimitReached)?;
        if key.info.persistent {
            self.persist.changed();
        }
        Ok(())
    }

    /// `Decrypt`: open `nonce || ciphertext || tag` and append the plaintext.
    pub fn decrypt(
        &self,
        caller: Caller,
        key: u32,
        aad: &[u8],
        sealed: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let cipher = self
            .usable(caller, key, KeyUsage::DECRYPT)?
            .material
            .gcm()?;
        scrubbed(Depth::Cipher, || gcm_open(cipher, aad, sealed, out))
    }

    /// `Derive`: HKDF-SHA-384 from an AES or HMAC key with DERIVE usage into a new key.
    ///
    /// `OKM = HKDF-SHA-384(salt, IKM = parent material,
    ///        info = DERIVE_INFO_PREFIX || key_type (u16 LE) || info)`, of the new type's
    /// material length. The new key may be exportable only if the parent is, and may be
    /// used only by VMPLs that may use the parent.
    pub fn derive(
        &mut self,
        caller: Caller,
        parent: u32,
        spec: &KeySpec,
        salt: &[u8],
        info: &[u8],
    ) -> Result<KeyInfo, Error> {
        self.hkdf_into_key(
            caller,
            parent,
            spec,
            salt,
            &[DERIVE_INFO_PREFIX, &spec.key_type.raw().to_le_bytes(), info],
        )
    }

    /// `HkdfDerive`: plain RFC 5869 HKDF-SHA-384 (PKCS#11 `CKM_HKDF_DERIVE`).
    ///
    /// `OKM = HKDF-SHA-384(salt, IKM = parent material, info)`, of the new type's
    /// material length, with the same checks as [`Vault::derive`]: DERIVE usage on
    /// the parent, the new key exportable only if the parent is, and usable only by
    /// VMPLs that may use the parent. Without the type in `info`, keys of two types
    /// derived with the same salt and info share a prefix; that reveals nothing new,
    /// because a key derived from a non-exportable parent is itself non-exportable,
    /// and an exportable parent can be exported anyway.
    pub fn hkdf_derive(
        &mut self,
        caller: Caller,
        parent: u32,
        spec: &KeySpec,
        salt: &[u8],
        info: &[u8],
    ) -> Result<KeyInfo, Error> {
        self.hkdf_into_key(caller, parent, spec, salt, &[info])
    }

    /// HKDF-SHA-384 from `parent` with `info` the concatenation of `info_parts`.
    fn hkdf_into_key(
        &mut self,
        caller: Caller,
        parent: u32,
        spec: &KeySpec,
        salt: &[u8],
        info_parts: &[&[u8]],
    ) -> Result<KeyInfo, Error> {
        let parent = self.usable(caller, parent, KeyUsage::DERIVE)?;
        spec.check(caller)?;
        if spec.exportable && !parent.info.exportable {
            return Err(Error::NotExportable);
        }
        if !parent.info.allowed.contains(spec.allowed) {
            return Err(Error::PolicyDenied);
        }
        self.check_room()?;
        let ikm = parent.material.derive_input()?;
        let material = scrubbed_around(Depth::KeyCreation, || {
            let hk = Hkdf::<Sha384>::new(Some(salt), ikm);
            let mut okm = Zeroizing::new(alloc::vec![0u8; spec.key_type.material_len()]);
            hk.expand_multi_info(info_parts, &mut okm)
                .map_err(|_| Error::InvalidParameter)?;
            Material::from_bytes(spec.key_type, &okm)
        })?;
        self.insert(spec, Origin::Derived, material)
    }

    /// `ReleaseVolumePassphrase`: the passphrase of the LUKS volume `uuid` (canonical
    /// lowercase text form), derived from an AES-256 or HMAC-SHA-384 key with RELEASE
    /// usage that the caller may use:
    ///
    /// `HKDF-SHA-384(salt = LUKS_PASSPHRASE_SALT, IKM = key material,
    ///  info = LUKS_PASSPHRASE_INFO_PREFIX || the UUID's 16 bytes)`, 32 bytes.
    ///
    /// Each volume gets its own passphrase; the key never leaves.
    pub fn release_volume_passphrase(
        &self,
        caller: Caller,
        key: u32,
        uuid: &[u8],
    ) -> Result<Zeroizing<[u8; LUKS_PASSPHRASE_LEN]>, Error> {
        let key = self.usable(caller, key, KeyUsage::RELEASE)?;
        let uuid = parse_luks_uuid(uuid).ok_or(Error::InvalidParameter)?;
        let ikm = key.material.derive_input()?;
        scrubbed(Depth::KeyCreation, || {
            let hk = Hkdf::<Sha384>::new(Some(LUKS_PASSPHRASE_SALT), ikm);
            let mut okm = Zeroizing::new([0u8; LUKS_PASSPHRASE_LEN]);
            hk.expand_multi_info(&[LUKS_PASSPHRASE_INFO_PREFIX, &uuid], &mut okm[..])
                .map_err(|_| Error::InvalidParameter)?;
            Ok(okm)
        })
    }

    /// `SealKey`: a key with RELEASE usage that the caller may use, sealed (purpose
    /// Key) to this SVSM image, launch policy and chip, for the key's VMPL set. The
    /// payload is the key's attributes (flags reduced to EXPORTABLE) and material.
    pub fn seal_key(
        &mut self,
        caller: Caller,
        key: u32,
        attester: &mut dyn Attester,
    ) -> Result<Vec<u8>, Error> {
        let k = self.usable(caller, key, KeyUsage::RELEASE)?;
        let rule = k.info.allowed;
        let mut attributes = k.info.to_wire();
        attributes.exportable &= KeyFlags::EXPORTABLE.bits();
        let mut payload = Zeroizing::new(Vec::with_capacity(MAX_KEY_PAYLOAD_LEN));
        payload.extend_from_slice(attributes.as_bytes());
        payload.extend_from_slice(&k.material.to_bytes());
        let params = BlobParams {
            purpose: Purpose::Key,
            rule,
            generation: 0,
            salt: self.salt()?,
        };
        seal::seal(attester, params, &payload)
    }

    /// `UnsealKey`: open a blob from SealKey (refused unless the caller's VMPL is in
    /// its rule) into a new, non-persistent key with the sealed type, usage, VMPL
    /// set, exportability, origin and label, the restored mark and a new id.
    pub fn unseal_key(
        &mut self,
        caller: Caller,
        blob: &[u8],
        attester: &mut dyn Attester,
    ) -> Result<KeyInfo, Error> {
        let (header, payload) = seal::open(attester, Purpose::Key, blob)?;
        let rule = VmplSet::from_bits(header.vmpl_rule).ok_or(Error::SealedBlobInvalid)?;
        if !rule.contains(caller.as_set()) {
            return Err(Error::SealRuleDenied);
        }
        let bad = Error::SealedBlobInvalid;
        let (head, material) = payload
            .split_at_checked(size_of::<KeyAttributes>())
            .ok_or(bad)?;
        let a = KeyAttributes::read_from_bytes(head).map_err(|_| bad)?;
        let key_type = KeyType::from_raw(a.key_type.get()).ok_or(bad)?;
        let usage = KeyUsage::from_bits(a.usage.get()).ok_or(bad)?;
        let flags = a.flags().ok_or(bad)?;
        let label_len = usize::from(a.label_len);
        let canonical = a.key_id.get() != 0
            && usage.contains(KeyUsage::RELEASE)
            && key_type.allowed_usage().contains(usage)
            && a.allowed_vmpls == rule.bits()
            && (flags & !KeyFlags::EXPORTABLE).is_empty()
            && a.reserved.get() == 0
            && label_len <= MAX_LABEL_LEN
            && a.label
                .get(label_len..)
                .is_some_and(|r| r.iter().all(|&b| b == 0))
            && material.len() == key_type.material_len();
        if !canonical {
            return Err(bad);
        }
        let origin = Origin::from_raw(a.origin).ok_or(bad)?;
        let spec = KeySpec {
            key_type,
            usage,
            allowed: rule,
            exportable: flags.contains(KeyFlags::EXPORTABLE),
            persistent: false,
            label: Label::new(a.label()).map_err(|_| bad)?,
        };
        self.check_room()?;
        let material = scrubbed_around(Depth::KeyCreation, || {
            Material::from_bytes(key_type, material).map_err(|_| Error::SealedBlobInvalid)
        })?;
        let mut info = self.insert(&spec, origin, material)?;
        info.restored = true;
        if let Some(k) = self.keys.last_mut() {
            k.info.restored = true;
        }
        Ok(info)
    }

    /// `Delete`: remove a key; its material is zeroized as it is dropped.
    pub fn delete(&mut self, caller: Caller, key: u32) -> Result<(), Error> {
        let index = self.index(caller, key)?;
        let removed = self.keys.remove(index);
        if removed.info.persistent {
            self.persist.changed();
        }
        drop(removed);
        Ok(())
    }

    /// `List`: the keys the caller may use, in creation order.
    pub fn list(&self, caller: Caller) -> impl Iterator<Item = &KeyInfo> + '_ {
        self.keys
            .iter()
            .map(|k| &k.info)
            .filter(move |i| i.allowed.contains(caller.as_set()))
    }

    /// `GetAttributes`.
    pub fn attributes(&self, caller: Caller, key: u32) -> Result<KeyInfo, Error> {
        Ok(self.key(caller, key)?.info)
    }

    /// The vHSM's service manifest (`nitride_protocol::attest::VhsmManifest`
    /// layout): the header (with the vault policy, and the audit log's entry count
    /// and chain value at this moment), the vault identity key, then every key with
    /// [`KeyUsage::ATTEST`] in id order, each as its attributes and SPKI DER (empty
    /// for AES and HMAC keys). It lists every attestable key whatever VMPLs may use
    /// it: attestable keys are public knowledge by design.
    pub fn manifest(&self) -> Vec<u8> {
        // Keys are kept in id order (ids only grow, keys are appended).
        let mut spkis: Vec<(KeyAttributes, Vec<u8>)> = Vec::new();
        for key in self
            .keys
            .iter()
            .filter(|k| k.info.usage.contains(KeyUsage::ATTEST))
        {
            let mut spki = Vec::new();
            // Symmetric keys have no public half: an empty SPKI. Keys in the vault
            // always encode; should one not, it is listed without its SPKI, which
            // makes the manifest fail every verifier's check (fail closed).
            if key.material.public_part(&mut spki).is_err() {
                spki.clear();
            }
            spkis.push((key.info.to_wire(), spki));
        }
        let keys = spkis.iter().map(|(attributes, spki)| ManifestKey {
            attributes: *attributes,
            spki,
        });
        let header = VhsmManifestHeader {
            protocol_version: U32::new(VHSM_PROTOCOL_VERSION),
            wire_version: U16::new(WIRE_VERSION),
            policy_flags: U32::new(self.policy.flags().bits()),
            audit_count: U64::new(self.audit.count()),
            audit_chain: *self.audit.head(),
            state_generation: U32::new(u32::try_from(self.persist.generation).unwrap_or(u32::MAX)),
            launch_config: self.policy.launch_config().digest(),
            ..VhsmManifestHeader::default()
        };
        // Under 12 KiB with the 64-key capacity: the length always fits, and the
        // writer fails only on a wrong-sized buffer. Should it fail, the manifest is
        // empty and no verifier accepts it.
        let mut out =
            alloc::vec![0u8; vhsm_manifest_len(&self.identity_spki, keys.clone()).unwrap_or(0)];
        if write_vhsm_manifest(&header, &self.identity_spki, keys, &mut out).is_err() {
            out.clear();
        }
        out
    }

    /// `AttestKey`: a VMPL0 attestation report binding a key with ATTEST usage, its
    /// attributes and the caller's 64-byte `nonce`. Appends `bytes binding, bytes
    /// report, bytes certificates` to `out`, where `binding` is the [`KeyBinding`]
    /// encoding and REPORT_DATA = SHA-512(binding)
    /// (`nitride_protocol::attest::report_data::key_binding`).
    pub fn attest_key(
        &self,
        caller: Caller,
        key: u32,
        nonce: &Nonce,
        attester: &mut dyn Attester,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let key = self.usable(caller, key, KeyUsage::ATTEST)?;
        let mut spki = Vec::new();
        key.material.public_part(&mut spki)?;
        let binding = KeyBinding {
            nonce,
            attributes: key.info.to_wire(),
            spki: &spki,
        };
        let mut encoded = alloc::vec![0u8; binding.encoded_len()];
        let report_data = report_data::key_binding_of(&binding, &mut encoded)
            .map_err(|_| Error::InvalidParameter)?;
        let evidence = attester
            .report(&report_data, true)
            .map_err(|_| Error::AttestationUnavailable)?;
        let body_len = [&encoded, &evidence.report, &evidence.certificates]
            .iter()
            .try_fold(0usize, |acc, b| acc.checked_add(4)?.checked_add(b.len()))
            .ok_or(Error::TooLarge)?;
        if out.len().checked_add(body_len).ok_or(Error::TooLarge)? > MAX_RESPONSE_SIZE {
            return Err(Error::TooLarge);
        }
        for part in [&encoded, &evidence.report, &evidence.certificates] {
            let len = u32::try_from(part.len()).map_err(|_| Error::TooLarge)?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(part);
        }
        Ok(())
    }

    /// `ProvisionBegin`: open a provisioning session for the KBS challenge `nonce`.
    ///
    /// Draws a fresh session key (ending any open session), builds the runtime-data
    /// JSON around `nonce` and the key's JWK, asks `attester` for a VMPL0 report
    /// with REPORT_DATA = SHA-384(JSON) zero-padded, and appends `bytes
    /// runtime_data, bytes jwk, bytes report, bytes certificates` to `out`. Without
    /// a report no session stays open.
    pub fn provision_begin(
        &mut self,
        nonce: &[u8],
        attester: &mut dyn Attester,
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        self.session = None;
        if nonce.len() > nitride_protocol::vhsm::MAX_KBS_NONCE_LEN
            || !nitride_protocol::provision::is_plain_nonce(nonce)
        {
            return Err(Error::InvalidParameter);
        }
        let nonce = core::str::from_utf8(nonce).map_err(|_| Error::InvalidParameter)?;
        let (drbg, platform) = (&mut self.drbg, &mut self.platform);
        let session = scrubbed_around(Depth::KeyCreation, || {
            let mut bytes = Zeroizing::new([0u8; 32]);
            for _ in 0..KEYGEN_ATTEMPTS {
                fill(drbg, platform, &mut bytes[..])?;
                if let Some(key) = SessionKey::from_bytes(&bytes[..]) {
                    return Ok(key);
                }
            }
            Err(Error::InvalidKeyMaterial)
        })?;
        let (json, jwk) = provision::runtime_data(nonce, &session);
        let report_data = report_data::kbs_runtime_data(&json);
        let evidence = attester
            .report(&report_data, true)
            .map_err(|_| Error::AttestationUnavailable)?;
        let jwk = json.get(jwk).ok_or(Error::InvalidParameter)?;
        let parts: [&[u8]; 4] = [&json, jwk, &evidence.report, &evidence.certificates];
        let body_len = parts
            .iter()
            .try_fold(0usize, |acc, b| acc.checked_add(4)?.checked_add(b.len()))
            .ok_or(Error::TooLarge)?;
        if out.len().checked_add(body_len).ok_or(Error::TooLarge)? > MAX_RESPONSE_SIZE {
            return Err(Error::TooLarge);
        }
        for part in parts {
            let len = u32::try_from(part.len()).map_err(|_| Error::TooLarge)?;
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(part);
        }
        self.session = Some(session);
        Ok(())
    }

    /// `ProvisionFinish`: decrypt the KBS's JWE with the open session's key (the
    /// session ends here, whatever happens), check the envelope inside against the
    /// measured owner key and policy ([`provision::open_envelope`]), and store the
    /// key it carries with the attributes it sets, origin
    /// [`Origin::Provisioned`] (or [`Origin::ProvisionedUnauthenticated`]).
    pub fn provision_finish(&mut self, jwe: &[u8]) -> Result<KeyInfo, Error> {
        let session = self.session.take().ok_or(Error::NoSession)?;
        self.check_room()?;
        let (owner, allow_unsigned) = (
            self.owner.as_ref(),
            self.policy.allow_unauthenticated_provisioning,
        );
        let (spec, authority, material) = scrubbed_around(Depth::KeyCreation, || {
            let plaintext = provision::open_jwe(&session, jwe)?;
            drop(session);
            let (payload, authority) = provision::open_envelope(&plaintext, owner, allow_unsigned)?;
            let envelope = nitride_protocol::provision::Envelope::parse(&payload)
                .map_err(|_| Error::EnvelopeInvalid)?;
            let spec = KeySpec::from_wire(&envelope.template, envelope.label)
                .map_err(|_| Error::EnvelopeInvalid)?;
            if spec.usage.is_empty()
                || !spec.key_type.allowed_usage().contains(spec.usage)
                || spec.allowed.is_empty()
            {
                return Err(Error::EnvelopeInvalid);
            }
            let material = Material::from_bytes(spec.key_type, envelope.material)
                .map_err(|_| Error::EnvelopeInvalid)?;
            Ok((spec, authority, material))
        })?;
        let origin = match authority {
            Authority::Owner => Origin::Provisioned,
            Authority::Unauthenticated => Origin::ProvisionedUnauthenticated,
        };
        self.insert(&spec, origin, material)
    }

    /// Whether a provisioning session is open.
    pub fn provisioning(&self) -> bool {
        self.session.is_some()
    }

    /// `Agree`: ECDH P-256 between an ECDH key with DERIVE usage and the peer's
    /// public key (`peer`, a P-256 SPKI DER), into a new key:
    /// `OKM = HKDF-SHA-384(salt, IKM = the shared x-coordinate, info =
    /// AGREE_INFO_PREFIX || key_type (u16 LE) || info)`. The same rules as `Derive`:
    /// exportable only if the ECDH key is, usable by no VMPL the ECDH key is not.
    pub fn agree(
        &mut self,
        caller: Caller,
        key: u32,
        spec: &KeySpec,
        peer: &[u8],
        salt: &[u8],
        info: &[u8],
    ) -> Result<KeyInfo, Error> {
        use p256::pkcs8::DecodePublicKey as _;
        let parent = self.usable(caller, key, KeyUsage::DERIVE)?;
        let secret = parent.material.ecdh_secret()?;
        spec.check(caller)?;
        if spec.exportable && !parent.info.exportable {
            return Err(Error::NotExportable);
        }
        if !parent.info.allowed.contains(spec.allowed) {
            return Err(Error::PolicyDenied);
        }
        nitride_protocol::attest::check_spki(KeyType::EcdhP256, peer)
            .map_err(|_| Error::InvalidParameter)?;
        let peer =
            p256::PublicKey::from_public_key_der(peer).map_err(|_| Error::InvalidParameter)?;
        self.check_room()?;
        let material = scrubbed_around(Depth::KeyCreation, || {
            let z = ecdh_p256(secret, &peer);
            let hk = Hkdf::<Sha384>::new(Some(salt), &z[..]);
            let mut okm = Zeroizing::new(alloc::vec![0u8; spec.key_type.material_len()]);
            hk.expand_multi_info(
                &[AGREE_INFO_PREFIX, &spec.key_type.raw().to_le_bytes(), info],
                &mut okm,
            )
            .map_err(|_| Error::InvalidParameter)?;
            Material::from_bytes(spec.key_type, &okm)
        })?;
        self.insert(spec, Origin::Derived, material)
    }

    /// The audit log.
    pub fn audit_log(&self) -> &AuditLog {
        &self.audit
    }
}

#[cfg(test)]
impl<P> Vault<P> {
    /// Everything "unchanged on failure" covers: the keys' attributes and nonce state.
    pub(crate) fn snapshot(&self) -> Vec<(KeyInfo, u32)> {
        self.keys
            .iter()
            .map(|k| (k.info, k.gcm_invocations))
            .collect()
    }

    /// Move a key's GCM invocation counter (to test the limit).
    pub(crate) fn set_gcm_counter(&mut self, id: u32, counter: u32) {
        for k in self.keys.iter_mut().filter(|k| k.info.id == id) {
            k.gcm_invocations = counter;
        }
    }

    /// This vault's nonce base.
    pub(crate) fn nonce_base(&self) -> u64 {
        self.nonce_base
    }

    /// The platform (to make it fail).
    pub(crate) fn platform_mut(&mut self) -> &mut P {
        &mut self.platform
    }

    /// An AES key's bytes (to compute expected values).
    pub(crate) fn keys_material_for_test(&self, id: u32) -> [u8; 32] {
        let key = self.keys.iter().find(|k| k.info.id == id).unwrap();
        *key.material.aes_key().unwrap()
    }

    /// Move the id counter (to test id exhaustion).
    pub(crate) fn set_next_id(&mut self, id: u32) {
        self.next_id = id;
    }
}
