//! The vHSM wire format: how a guest asks the vault for an operation.
//!
//! A request is a [`RequestHeader`] followed by `body_len` bytes of body; a response is
//! a [`ResponseHeader`] followed by `body_len` bytes of body. All integers are
//! little-endian and every fixed layout here is unaligned (`zerocopy::Unaligned`), so a
//! message can be parsed straight out of any byte buffer. Fixed-size parts of bodies are
//! zerocopy types ([`KeyTemplate`], [`KeyAttributes`], [`AuditEntry`]); variable parts
//! are length-prefixed byte strings (`u32` length, then the bytes). A body must be
//! consumed exactly: trailing bytes make the request malformed.
//!
//! `docs/vhsm-protocol.md` is the normative description; this module and that page
//! must agree. [`Request`] decodes and encodes request bodies without allocating, so
//! both the firmware (decoding) and guests (encoding) use the same code.

use bitflags::bitflags;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Protocol version carried in every header. Version 2: audit entries carry a salt
/// and a hash chain value ([`AuditEntry`]), ReadAudit returns only the entries the
/// caller may see, and a key the caller may not use is reported as `KeyNotFound`.
pub const VERSION: u16 = 2;

/// Largest request accepted, header included. The firmware copies a request from guest
/// memory into a private buffer of this size before parsing it. Large enough for the
/// largest request (Decrypt with maximal AAD and ciphertext).
pub const MAX_REQUEST_SIZE: usize = 36 * 1024;

/// Largest response produced, header included.
pub const MAX_RESPONSE_SIZE: usize = 32 * 1024;

/// Largest message to sign or verify, plaintext to encrypt, or additional
/// authenticated data (each field separately).
pub const MAX_DATA_LEN: usize = 16 * 1024;

/// Largest `Random` request.
pub const MAX_RANDOM_LEN: usize = 4096;

/// Longest key label, in bytes (any byte values).
pub const MAX_LABEL_LEN: usize = 32;

/// Longest salt or info string for `Derive`.
pub const MAX_DERIVE_INPUT_LEN: usize = 1024;

/// Longest wrapped key blob accepted by `Unwrap` (RFC 5649 output for the largest key).
pub const MAX_WRAPPED_LEN: usize = 256;

/// Longest signature accepted by `Verify`.
pub const MAX_SIGNATURE_LEN: usize = 128;

/// Number of keys the vault holds at most.
pub const KEY_CAPACITY: usize = 64;

/// Shortest digest SignDigest accepts: half the P-384 field (FIPS 186-5 needs the
/// hash to be at least as strong as half the curve order's size).
pub const MIN_DIGEST_LEN: usize = 24;

/// Longest digest SignDigest accepts (SHA-512); longer digests are refused, not cut.
pub const MAX_DIGEST_LEN: usize = 64;

/// Number of audit entries kept; older entries are overwritten.
pub const AUDIT_CAPACITY: usize = 256;

/// Domain separator of the audit hash chain (see [`audit_chain_input`]).
pub const AUDIT_CHAIN_DOMAIN: [u8; 16] = *b"NITRIDE-AUDIT-V1";

/// The part of an [`AuditEntry`] the chain hashes: everything before `chain`.
pub const AUDIT_CHAINED_LEN: usize = 40;

/// Length of one link's hash input: domain, previous chain value, entry.
pub const AUDIT_CHAIN_INPUT_LEN: usize = AUDIT_CHAIN_DOMAIN.len() + 48 + AUDIT_CHAINED_LEN;

/// The SHA-384 input of `entry`'s link in the audit chain:
/// `AUDIT_CHAIN_DOMAIN || previous || entry[0..40]` (seq, key id, op, status, caller
/// VMPL, reserved, salt), where `previous` is the `chain` of the entry recorded just
/// before (48 zero bytes for the vault's first entry). SHA-384 of it is
/// `entry.chain`. 104 bytes: one SHA-512 block.
pub fn audit_chain_input(previous: &[u8; 48], entry: &AuditEntry) -> [u8; AUDIT_CHAIN_INPUT_LEN] {
    let mut input = [0u8; AUDIT_CHAIN_INPUT_LEN];
    let (domain, rest) = input.split_at_mut(AUDIT_CHAIN_DOMAIN.len());
    let (prev, body) = rest.split_at_mut(48);
    domain.copy_from_slice(&AUDIT_CHAIN_DOMAIN);
    prev.copy_from_slice(previous);
    body.copy_from_slice(&entry.as_bytes()[..AUDIT_CHAINED_LEN]);
    input
}

/// AES-GCM nonce length; the nonce prefixes every ciphertext.
pub const GCM_NONCE_LEN: usize = 12;

/// AES-GCM tag length; the tag ends every ciphertext.
pub const GCM_TAG_LEN: usize = 16;

/// Length of the length prefix of a variable field.
const LEN_PREFIX: usize = 4;

/// Size of [`RequestHeader`] and [`ResponseHeader`].
pub const HEADER_SIZE: usize = 24;

/// Header of every request.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct RequestHeader {
    /// Protocol version: [`VERSION`].
    pub version: U16,
    /// Operation: an [`Op`] value.
    pub op: U16,
    /// Flags: none defined, must be zero.
    pub flags: U32,
    /// Chosen by the caller, echoed in the response.
    pub request_id: U64,
    /// Number of body bytes that follow the header.
    pub body_len: U32,
    /// Must be zero.
    pub reserved: U32,
}
const _: () = assert!(core::mem::size_of::<RequestHeader>() == HEADER_SIZE);

/// Header of every response.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct ResponseHeader {
    /// Protocol version: [`VERSION`].
    pub version: U16,
    /// The request's operation, echoed (0 if the request header was unreadable).
    pub op: U16,
    /// A [`Status`] value.
    pub status: U16,
    /// Response flags: [`RESPONSE_STATE_CHANGED`], else zero.
    pub flags: U16,
    /// The request's `request_id`, echoed (0 if the request header was unreadable).
    pub request_id: U64,
    /// Number of body bytes that follow; zero unless `status` is [`Status::Ok`].
    pub body_len: U32,
    /// Zero.
    pub reserved2: U32,
}
const _: () = assert!(core::mem::size_of::<ResponseHeader>() == HEADER_SIZE);

/// Defines a `#[repr(int)]` enum with `raw()` and `from_raw()`.
macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident: $int:ty { $($(#[$vm:meta])* $var:ident = $val:expr,)+ }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr($int)]
        pub enum $name { $($(#[$vm])* $var = $val,)+ }

        impl $name {
            /// Every value, in numeric order.
            pub const ALL: &'static [$name] = &[$($name::$var,)+];

            /// The value on the wire.
            pub const fn raw(self) -> $int {
                self as $int
            }

            /// Decode a wire value; `None` if it is not defined.
            pub const fn from_raw(raw: $int) -> Option<Self> {
                match raw {
                    $($val => Some($name::$var),)+
                    _ => None,
                }
            }
        }
    };
}

wire_enum! {
    /// Operations (`RequestHeader::op`).
    Op: u16 {
        /// Generate a key inside the vault.
        Generate = 1,
        /// Import plaintext key material (only if the vault's policy allows it).
        Import = 2,
        /// Import a key wrapped (RFC 5649) under a vault key with UNWRAP usage.
        Unwrap = 3,
        /// Export an exportable key wrapped (RFC 5649) under a vault key with WRAP usage.
        Wrap = 4,
        /// Get the public key of an asymmetric key as SPKI DER.
        GetPublicKey = 5,
        /// Sign a message.
        Sign = 6,
        /// Verify a signature.
        Verify = 7,
        /// AES-256-GCM encrypt; the vault picks the nonce.
        Encrypt = 8,
        /// AES-256-GCM decrypt.
        Decrypt = 9,
        /// HKDF-SHA-384 from a vault key into a new vault key.
        Derive = 10,
        /// Random bytes from the vault's DRBG.
        Random = 11,
        /// Delete a key (its material is zeroized).
        Delete = 12,
        /// List the keys the caller may use.
        List = 13,
        /// Get one key's attributes.
        GetAttributes = 14,
        /// Read the audit log.
        ReadAudit = 15,
        /// A VMPL0 attestation report binding a key (one with ATTEST usage), its
        /// attributes and a caller nonce (`attest::KeyBinding`).
        AttestKey = 16,
        // Sealing (17-23).
        /// Seal caller data to this SVSM image on this chip (`sealed` format).
        Seal = 17,
        /// Open a blob from `Seal`.
        Unseal = 18,
        /// The vault's persistent state as one sealed blob.
        ExportState = 19,
        /// Restore a state blob into an empty vault.
        ImportState = 20,
        // Provisioning (24-31).
        /// Provisioning (issue 12), step 1: start a session with a KBS challenge
        /// nonce. The vault makes an ephemeral P-256 ECDH key, builds the RFC 8785
        /// runtime-data bytes around the nonce and its JWK, and returns them with a
        /// VMPL0 report whose REPORT_DATA is their SHA-384, zero-padded
        /// (`attest::report_data::kbs_runtime_data`). A new Begin ends any session
        /// still open.
        ProvisionBegin = 24,
        /// Provisioning, step 2: the flattened JWE the KBS released, decrypted inside
        /// the vault with the session's key (which then dies, whatever the outcome).
        /// Its plaintext is the owner-signed envelope (`provision::Envelope`),
        /// which sets every attribute of the new key.
        ProvisionFinish = 25,
        /// ECDH P-256: the shared secret of an ECDH key and a peer's public key, run
        /// through HKDF-SHA-384 into a new vault key.
        Agree = 26,
        // --- PKCS#11 support (issue 16): operations 32-39. ---
        /// Sign a caller-computed digest with an ECDSA key (PKCS#11 CKM_ECDSA); the
        /// signature is raw `r || s`.
        SignDigest = 32,
        /// Plain RFC 5869 HKDF-SHA-384 from a vault key into a new vault key
        /// (PKCS#11 CKM_HKDF_DERIVE): no vault prefix on `info`.
        HkdfDerive = 33,
        // --- LUKS volume unlock (issue 13): operations 40-47. ---
        /// The passphrase of one LUKS volume, derived inside the vault from a key with
        /// RELEASE usage and the volume's LUKS UUID (`LUKS_PASSPHRASE_*`); the key
        /// itself never leaves.
        ReleaseVolumePassphrase = 40,
        /// Seal one key with RELEASE usage (its attributes and material) to this SVSM
        /// image, launch policy and chip (`sealed` purpose Key), for its VMPL set.
        SealKey = 41,
        /// Open a blob from SealKey into a new, non-persistent key (restored mark,
        /// the sealed attributes, a new id).
        UnsealKey = 42,
    }
}

wire_enum! {
    /// Response status codes (`ResponseHeader::status`).
    Status: u16 {
        /// Success; the body holds the operation's result.
        Ok = 0,
        /// The request could not be parsed: short header, bad length, trailing bytes,
        /// non-zero reserved field or flags.
        Malformed = 1,
        /// The header's version is not [`VERSION`].
        UnsupportedVersion = 2,
        /// The header's operation is not an [`Op`].
        UnknownOperation = 3,
        /// A field is out of range: unknown key type, usage or VMPL bits, `exportable`
        /// not 0/1, usage not allowed for the type, VMPL set without the caller, Random
        /// length over [`MAX_RANDOM_LEN`], Decrypt input shorter than nonce and tag.
        InvalidParameter = 4,
        /// No key with this id.
        KeyNotFound = 5,
        /// The key exists but the caller's VMPL is not in its allowed set.
        AccessDenied = 6,
        /// The key's usage flags do not permit the operation.
        UsageNotPermitted = 7,
        /// The key is not exportable.
        NotExportable = 8,
        /// The vault's policy forbids the operation (plaintext import).
        PolicyDenied = 9,
        /// The key store is full, or key ids are exhausted.
        CapacityExceeded = 10,
        /// The key type does not support the operation.
        WrongKeyType = 11,
        /// Key material has the wrong length or is not a valid key.
        InvalidKeyMaterial = 12,
        /// Signature verification failed.
        SignatureInvalid = 13,
        /// AES-GCM tag or RFC 5649 integrity check failed.
        AuthenticationFailed = 14,
        /// The key has reached its AES-GCM invocation limit.
        NonceLimitReached = 15,
        /// The platform could not provide entropy.
        EntropyFailure = 16,
        /// The request or the response would exceed its maximum size.
        TooLarge = 17,
        /// The platform could not produce an attestation report (no PSP, or the PSP
        /// channel failed and was shut).
        AttestationUnavailable = 18,
        // Sealing (19-26).
        /// The platform could not derive a sealing key (no PSP, a PSP error status,
        /// or an all-zero key), e.g. a blob's TCB above the chip's.
        SealingUnavailable = 19,
        /// The blob is not one this SVSM writes (magic, version, purpose, a header
        /// field, its length), or it does not open: another image, another chip,
        /// a changed byte.
        SealedBlobInvalid = 20,
        /// The blob's unsealing rule does not include the caller's VMPL.
        SealRuleDenied = 21,
        /// ImportState into a vault that already holds keys.
        VaultNotEmpty = 22,
        /// ImportState of a state blob older (lower generation) than one already
        /// imported or exported in this boot.
        StateRollback = 23,
        // Provisioning (27-34).
        /// ProvisionFinish without a session (none begun, or already finished).
        NoSession = 27,
        /// The JWE is malformed, not for this session's key, or fails to decrypt.
        JweInvalid = 28,
        /// The decrypted envelope is malformed, or its signature is not the
        /// measured owner key's.
        EnvelopeInvalid = 29,
        /// The envelope is not signed and the measured launch configuration has no
        /// owner key and does not allow unauthenticated secrets, or it is unsigned
        /// while an owner key is configured.
        Unauthenticated = 30,
    }
}

wire_enum! {
    /// Key types.
    KeyType: u16 {
        /// AES-256: encrypt/decrypt (GCM), wrap/unwrap (RFC 5649), derive.
        Aes256 = 1,
        /// ECDSA over P-384 with SHA-384: sign/verify, public key.
        EcdsaP384 = 2,
        /// Ed25519 (pure): sign/verify, public key.
        Ed25519 = 3,
        /// HMAC-SHA-384 with a 48-byte key: sign/verify (the MAC), derive.
        HmacSha384 = 4,
        /// ECDSA over P-256 with SHA-256: sign/verify, public key.
        EcdsaP256 = 5,
        /// ECDH over P-256: agree (Agree) into a new key, public key.
        EcdhP256 = 6,
    }
}

impl KeyType {
    /// Length of the key's secret material as imported, wrapped and derived: the raw
    /// AES or HMAC key, the Ed25519 seed, or the big-endian P-384 scalar.
    pub const fn material_len(self) -> usize {
        match self {
            Self::Aes256 | Self::Ed25519 | Self::EcdsaP256 | Self::EcdhP256 => 32,
            Self::EcdsaP384 | Self::HmacSha384 => 48,
        }
    }

    /// The usage flags this type can carry.
    pub const fn allowed_usage(self) -> KeyUsage {
        match self {
            Self::Aes256 => KeyUsage::ENCRYPT
                .union(KeyUsage::DECRYPT)
                .union(KeyUsage::WRAP)
                .union(KeyUsage::UNWRAP)
                .union(KeyUsage::DERIVE)
                .union(KeyUsage::ATTEST)
                .union(KeyUsage::RELEASE),
            Self::EcdsaP384 | Self::Ed25519 | Self::EcdsaP256 => KeyUsage::SIGN
                .union(KeyUsage::VERIFY)
                .union(KeyUsage::ATTEST),
            Self::EcdhP256 => KeyUsage::DERIVE.union(KeyUsage::ATTEST),
            Self::HmacSha384 => KeyUsage::SIGN
                .union(KeyUsage::VERIFY)
                .union(KeyUsage::DERIVE)
                .union(KeyUsage::ATTEST)
                .union(KeyUsage::RELEASE),
        }
    }
}

wire_enum! {
    /// Where a key came from. A key restored from a sealed state keeps its origin;
    /// [`KeyFlags::RESTORED`] marks it.
    Origin: u8 {
        /// Generated inside the vault.
        Generated = 1,
        /// Imported as plaintext.
        Imported = 2,
        /// Imported wrapped under a vault key.
        Unwrapped = 3,
        /// Derived from another vault key.
        Derived = 4,
        /// Provisioned from a KBS in an envelope signed by the owner key of the
        /// measured launch configuration.
        Provisioned = 5,
        /// Provisioned from a KBS without an owner signature (only when the measured
        /// launch configuration allows unauthenticated secrets): anyone who could
        /// encrypt to the session's key may have chosen it.
        ProvisionedUnauthenticated = 6,
    }
}

bitflags! {
    /// What a key may be used for (`u32` on the wire).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct KeyUsage: u32 {
        /// AES-GCM encryption.
        const ENCRYPT = 1 << 0;
        /// AES-GCM decryption.
        const DECRYPT = 1 << 1;
        /// Signing (ECDSA, Ed25519, HMAC).
        const SIGN = 1 << 2;
        /// Verification (ECDSA, Ed25519, HMAC).
        const VERIFY = 1 << 3;
        /// Wrapping other (exportable) keys out of the vault.
        const WRAP = 1 << 4;
        /// Unwrapping keys into the vault.
        const UNWRAP = 1 << 5;
        /// Deriving new keys with HKDF.
        const DERIVE = 1 << 6;
        /// Attestable: listed in the vHSM's attestation manifest and usable with
        /// AttestKey. Any key type may carry it.
        const ATTEST = 1 << 7;
        /// Release: the vault may hand a value derived from the key (a LUKS volume
        /// passphrase, ReleaseVolumePassphrase) to a caller in the key's VMPL set,
        /// and may seal the key for that set (SealKey). AES-256 and HMAC-SHA-384.
        const RELEASE = 1 << 8;
    }
}

bitflags! {
    /// Key flags: the `exportable` byte of [`KeyTemplate`] and [`KeyAttributes`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct KeyFlags: u8 {
        /// The key may leave the vault, wrapped.
        const EXPORTABLE = 1 << 0;
        /// The key is part of the vault's persistent state (ExportState).
        const PERSISTENT = 1 << 1;
        /// The key was restored from a sealed state (ImportState); set by the vault
        /// only, never in a template.
        const RESTORED = 1 << 2;
    }
}

bitflags! {
    /// The vault's policy as the vHSM manifest reports it
    /// (`attest::VhsmManifestHeader::policy_flags`, `u32`). The SVSM fixes the
    /// policy when it starts, from the measured launch configuration
    /// (`launch_config`), so both the launch measurement and the manifest show it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct VaultPolicyFlags: u32 {
        /// Plaintext key material may be imported (`Import`); without it, keys enter
        /// the vault only generated, derived or unwrapped.
        const PLAINTEXT_IMPORT = 1 << 0;
        /// Provisioning accepts envelopes no owner signed (origin
        /// provisioned-unauthenticated); only without an owner key.
        const UNAUTHENTICATED_PROVISIONING = 1 << 1;
        /// An owner key is configured: provisioned envelopes must carry its
        /// signature. The key itself is in the launch configuration, whose digest
        /// the manifest carries.
        const OWNER_KEY = 1 << 2;
    }
}

bitflags! {
    /// A set of VMPLs, bit n for VMPL n (`u8` on the wire).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct VmplSet: u8 {
        /// VMPL0: the SVSM itself.
        const VMPL0 = 1 << 0;
        /// VMPL1.
        const VMPL1 = 1 << 1;
        /// VMPL2.
        const VMPL2 = 1 << 2;
        /// VMPL3.
        const VMPL3 = 1 << 3;
    }
}

impl VmplSet {
    /// Whether VMPL `vmpl` is in the set.
    pub const fn contains_vmpl(self, vmpl: u8) -> bool {
        vmpl < 4 && self.bits() & (1 << vmpl) != 0
    }
}

/// The requested properties of a new key (Generate, Import, Unwrap, Derive).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct KeyTemplate {
    /// A [`KeyType`] value.
    pub key_type: U16,
    /// A [`VmplSet`]: the VMPLs that may use the key.
    pub allowed_vmpls: u8,
    /// Key flags ([`KeyFlags`]; the byte keeps its first bit's name): bit 0 the key
    /// may leave the vault (wrapped), bit 1 it is persistent. `RESTORED` is never
    /// requested.
    pub exportable: u8,
    /// [`KeyUsage`] bits.
    pub usage: U32,
}
const _: () = assert!(core::mem::size_of::<KeyTemplate>() == 8);

impl KeyTemplate {
    /// A template from typed values.
    pub fn new(key_type: KeyType, usage: KeyUsage, allowed: VmplSet, exportable: bool) -> Self {
        Self {
            key_type: U16::new(key_type.raw()),
            allowed_vmpls: allowed.bits(),
            exportable: u8::from(exportable),
            usage: U32::new(usage.bits()),
        }
    }

    /// This template, asking for a persistent key.
    pub fn persistent(mut self) -> Self {
        self.exportable |= KeyFlags::PERSISTENT.bits();
        self
    }
}

/// A key's attributes, as returned by Generate, Import, Unwrap, Derive, GetAttributes
/// and List. Never contains key material.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct KeyAttributes {
    /// Key id (never 0, never reused while the vault runs).
    pub key_id: U32,
    /// A [`KeyType`] value.
    pub key_type: U16,
    /// An [`Origin`] value.
    pub origin: u8,
    /// A [`VmplSet`].
    pub allowed_vmpls: u8,
    /// [`KeyUsage`] bits.
    pub usage: U32,
    /// Key flags ([`KeyFlags`]; the byte keeps its first bit's name, so old encodings,
    /// 0 or 1, read as before): exportable, persistent, restored.
    pub exportable: u8,
    /// Number of meaningful bytes in `label`.
    pub label_len: u8,
    /// Zero.
    pub reserved: U16,
    /// The label, zero-padded.
    pub label: [u8; MAX_LABEL_LEN],
}
const _: () = assert!(core::mem::size_of::<KeyAttributes>() == 48);

impl KeyAttributes {
    /// The key flags, if only defined bits are set.
    pub fn flags(&self) -> Option<KeyFlags> {
        KeyFlags::from_bits(self.exportable)
    }

    /// The meaningful bytes of the label.
    pub fn label(&self) -> &[u8] {
        self.label
            .get(..usize::from(self.label_len))
            .unwrap_or(&self.label)
    }
}

/// One audit log entry (88 bytes). Never contains key material.
///
/// `chain` links the entry to every entry recorded before it, whoever recorded it:
/// `chain = SHA-384(audit_chain_input(previous chain, entry))`. The vHSM manifest
/// carries the latest `chain` and the number of entries ever recorded, so an
/// attestation report commits to the whole log. `salt` is unpredictable to anyone
/// who cannot read the entry (a keyed function of `seq` under a key that never leaves
/// the vault), so the chain values of entries a caller can see tell it nothing about
/// the entries between them it cannot.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct AuditEntry {
    /// Sequence number: 1 for the vault's first request, then +1 per request.
    pub seq: U64,
    /// The key the operation concerned, or 0.
    pub key_id: U32,
    /// The raw operation (an [`Op`] value, or whatever an unknown request carried).
    pub op: U16,
    /// The [`Status`] returned.
    pub status: U16,
    /// The caller's VMPL.
    pub caller_vmpl: u8,
    /// Zero.
    pub reserved: [u8; 7],
    /// Per-entry salt, hashed into `chain`.
    pub salt: [u8; 16],
    /// The audit chain after this entry.
    pub chain: [u8; 48],
}
const _: () = assert!(core::mem::size_of::<AuditEntry>() == 88);

impl Default for AuditEntry {
    fn default() -> Self {
        zerocopy::FromZeros::new_zeroed()
    }
}
const _: () = assert!(core::mem::offset_of!(AuditEntry, chain) == AUDIT_CHAINED_LEN);

/// Why a message could not be decoded or encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The bytes end early, have trailing bytes, a reserved field is set, or a
    /// fixed-size field (AttestKey's nonce) has another length.
    Malformed,
    /// The version is not [`VERSION`].
    UnsupportedVersion,
    /// The operation is not an [`Op`].
    UnknownOperation,
    /// A length exceeds a documented maximum, or an output buffer is too small.
    TooLarge,
}

impl WireError {
    /// The status a response carries for this error.
    pub const fn status(self) -> Status {
        match self {
            Self::Malformed => Status::Malformed,
            Self::UnsupportedVersion => Status::UnsupportedVersion,
            Self::UnknownOperation => Status::UnknownOperation,
            Self::TooLarge => Status::TooLarge,
        }
    }
}

/// A bounds-checked reader over a body.
#[derive(Debug)]
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Read from `bytes`.
    pub const fn new(bytes: &'a [u8]) -> Self {
        Self { rest: bytes }
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.rest.len() {
            return Err(WireError::Malformed);
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// A fixed-layout value.
    pub fn fixed<T: FromBytes + KnownLayout + Immutable + Unaligned>(
        &mut self,
    ) -> Result<T, WireError> {
        let (value, rest) = T::read_from_prefix(self.rest).map_err(|_| WireError::Malformed)?;
        self.rest = rest;
        Ok(value)
    }

    /// A little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, WireError> {
        self.fixed::<U32>().map(U32::get)
    }

    /// A little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, WireError> {
        self.fixed::<U64>().map(U64::get)
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], WireError> {
        let len = usize::try_from(self.u32()?).map_err(|_| WireError::TooLarge)?;
        if len > max {
            return Err(WireError::TooLarge);
        }
        self.take(len)
    }

    /// Succeeds only if every byte was consumed.
    pub fn finish(self) -> Result<(), WireError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed)
        }
    }
}

/// A bounds-checked writer into a caller-provided buffer.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    /// Write into `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes written so far.
    pub const fn len(&self) -> usize {
        self.pos
    }

    /// Whether nothing was written yet.
    pub const fn is_empty(&self) -> bool {
        self.pos == 0
    }

    /// Append raw bytes.
    pub fn put(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let end = self
            .pos
            .checked_add(bytes.len())
            .ok_or(WireError::TooLarge)?;
        let dst = self.buf.get_mut(self.pos..end).ok_or(WireError::TooLarge)?;
        dst.copy_from_slice(bytes);
        self.pos = end;
        Ok(())
    }

    /// Append a little-endian `u32`.
    pub fn u32(&mut self, v: u32) -> Result<(), WireError> {
        self.put(&v.to_le_bytes())
    }

    /// Append a little-endian `u64`.
    pub fn u64(&mut self, v: u64) -> Result<(), WireError> {
        self.put(&v.to_le_bytes())
    }

    /// Append a length-prefixed byte string.
    pub fn bytes(&mut self, bytes: &[u8]) -> Result<(), WireError> {
        let len = u32::try_from(bytes.len()).map_err(|_| WireError::TooLarge)?;
        self.u32(len)?;
        self.put(bytes)
    }
}

/// A decoded request body, one variant per [`Op`]; byte strings borrow the request.
///
/// Body layouts (in order; `id` = `u32` key id, `bytes` = `u32` length + bytes):
/// see each variant and `docs/vhsm-protocol.md`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// `KeyTemplate, bytes label`.
    Generate {
        /// Properties of the new key.
        template: KeyTemplate,
        /// Label (at most [`MAX_LABEL_LEN`]).
        label: &'a [u8],
    },
    /// `KeyTemplate, bytes label, bytes material`.
    Import {
        /// Properties of the new key.
        template: KeyTemplate,
        /// Label.
        label: &'a [u8],
        /// Raw key material ([`KeyType::material_len`] bytes).
        material: &'a [u8],
    },
    /// `id unwrapping_key, KeyTemplate, bytes label, bytes wrapped`.
    Unwrap {
        /// AES-256 key with UNWRAP usage.
        unwrapping_key: u32,
        /// Properties of the new key.
        template: KeyTemplate,
        /// Label.
        label: &'a [u8],
        /// RFC 5649 wrapped key material.
        wrapped: &'a [u8],
    },
    /// `id wrapping_key, id key`.
    Wrap {
        /// AES-256 key with WRAP usage.
        wrapping_key: u32,
        /// The exportable key to wrap.
        key: u32,
    },
    /// `id key`.
    GetPublicKey {
        /// An ECDSA P-384 or Ed25519 key.
        key: u32,
    },
    /// `id key, bytes message`.
    Sign {
        /// Key with SIGN usage.
        key: u32,
        /// The message (hashed by the vault where the algorithm hashes).
        message: &'a [u8],
    },
    /// `id key, bytes message, bytes signature`.
    Verify {
        /// Key with VERIFY usage.
        key: u32,
        /// The message.
        message: &'a [u8],
        /// DER (ECDSA), 64 bytes (Ed25519) or 48 bytes (HMAC).
        signature: &'a [u8],
    },
    /// `id key, bytes aad, bytes plaintext`.
    Encrypt {
        /// AES-256 key with ENCRYPT usage.
        key: u32,
        /// Additional authenticated data.
        aad: &'a [u8],
        /// Plaintext.
        plaintext: &'a [u8],
    },
    /// `id key, bytes aad, bytes ciphertext`.
    Decrypt {
        /// AES-256 key with DECRYPT usage.
        key: u32,
        /// Additional authenticated data.
        aad: &'a [u8],
        /// `nonce (12) || ciphertext || tag (16)`, as Encrypt returns it.
        ciphertext: &'a [u8],
    },
    /// `id parent, KeyTemplate, bytes label, bytes salt, bytes info`.
    Derive {
        /// AES-256 or HMAC-SHA-384 key with DERIVE usage.
        parent: u32,
        /// Properties of the new key.
        template: KeyTemplate,
        /// Label.
        label: &'a [u8],
        /// HKDF salt.
        salt: &'a [u8],
        /// HKDF info.
        info: &'a [u8],
    },
    /// `u32 length`.
    Random {
        /// Number of bytes wanted (at most [`MAX_RANDOM_LEN`]).
        len: u32,
    },
    /// `id key`.
    Delete {
        /// The key to delete.
        key: u32,
    },
    /// Empty body.
    List,
    /// `id key`.
    GetAttributes {
        /// The key.
        key: u32,
    },
    /// `u64 from_seq`.
    ReadAudit {
        /// Return retained entries whose sequence number is at least this.
        from_seq: u64,
    },
    /// `id key, bytes nonce` (the nonce exactly `attest::NONCE_SIZE` = 64 bytes:
    /// any other length is malformed). Response body: `bytes binding, bytes report,
    /// bytes certificates` (the key binding whose SHA-512 is REPORT_DATA, the
    /// 0x4A0-byte report, the certificate table or empty).
    AttestKey {
        /// A key with ATTEST usage.
        key: u32,
        /// The caller's nonce.
        nonce: &'a crate::attest::Nonce,
    },
    /// `u32 rule, bytes data` (data at most `sealed::MAX_SEAL_DATA_LEN`). `rule` is a
    /// [`VmplSet`]: the VMPLs that may unseal; it must include the caller's. Response
    /// body: `bytes blob`.
    Seal {
        /// VMPLs that may unseal.
        rule: u32,
        /// The data.
        data: &'a [u8],
    },
    /// `bytes blob`. Response body: `u32 flags` ([`SEAL_RESEALED`]), `bytes data`,
    /// `bytes resealed` (empty unless resealed).
    Unseal {
        /// A blob from Seal.
        blob: &'a [u8],
    },
    /// Empty body. Response body: `u64 generation, bytes blob`.
    ExportState,
    /// `bytes blob`. Response body: `u64 generation, u32 keys restored, u32 flags`
    /// ([`SEAL_RESEALED`]), `bytes resealed` (empty unless resealed).
    ImportState {
        /// A blob from ExportState.
        blob: &'a [u8],
    },
    /// `id key, bytes digest` (the digest [`MIN_DIGEST_LEN`]..=[`MAX_DIGEST_LEN`]
    /// bytes, else the vault answers InvalidParameter). Response body: the raw
    /// signature `r || s`, each the curve's field size (96 bytes for P-384, 64 for P-256).
    SignDigest {
        /// An ECDSA key with SIGN usage.
        key: u32,
        /// The digest, used as is (a longer one is truncated to the curve order's bit
        /// length as FIPS 186-5 says).
        digest: &'a [u8],
    },
    /// `id parent, KeyTemplate, bytes label, bytes salt, bytes info`, as Derive; the
    /// new key's material is exactly RFC 5869 HKDF-SHA-384(salt, parent material,
    /// info) of the new type's material length.
    HkdfDerive {
        /// AES-256 or HMAC-SHA-384 key with DERIVE usage.
        parent: u32,
        /// Properties of the new key.
        template: KeyTemplate,
        /// Label.
        label: &'a [u8],
        /// HKDF salt (empty: the RFC 5869 default, a hash-length string of zeros).
        salt: &'a [u8],
        /// HKDF info.
        info: &'a [u8],
    },
    /// `bytes nonce`: the KBS challenge nonce as the KBS sent it (the JSON string's
    /// contents, at most [`MAX_KBS_NONCE_LEN`] bytes of the base64 alphabet).
    /// Response body: `bytes runtime_data, bytes jwk, bytes report, bytes
    /// certificates` ([`ProvisionEvidence`]).
    ProvisionBegin {
        /// The KBS nonce.
        nonce: &'a [u8],
    },
    /// `bytes jwe`: the flattened JWE JSON the KBS released (at most
    /// [`MAX_JWE_LEN`] bytes). Response body: the new key's [`KeyAttributes`].
    ProvisionFinish {
        /// The JWE.
        jwe: &'a [u8],
    },
    /// `id key, KeyTemplate, bytes label, bytes peer, bytes salt, bytes info`.
    Agree {
        /// An ECDH P-256 key with DERIVE usage.
        key: u32,
        /// Properties of the new key.
        template: KeyTemplate,
        /// Label.
        label: &'a [u8],
        /// The peer's public key: a P-256 SPKI DER (91 bytes).
        peer: &'a [u8],
        /// HKDF salt.
        salt: &'a [u8],
        /// HKDF info.
        info: &'a [u8],
    },
    /// `id key, bytes uuid` (exactly [`LUKS_UUID_LEN`] bytes: the volume's LUKS UUID
    /// in its canonical lowercase text form, else the vault answers
    /// InvalidParameter). Response body: `bytes passphrase`
    /// ([`LUKS_PASSPHRASE_LEN`] bytes).
    ReleaseVolumePassphrase {
        /// An AES-256 or HMAC-SHA-384 key with RELEASE usage.
        key: u32,
        /// The LUKS UUID, e.g. `0b5e6a34-4c1f-4f57-9a43-1c2b8d3e5f60`.
        uuid: [u8; LUKS_UUID_LEN],
    },
    /// `id key`. Response body: `bytes blob`.
    SealKey {
        /// A key with RELEASE usage.
        key: u32,
    },
    /// `bytes blob`. Response body: the new key's [`KeyAttributes`].
    UnsealKey {
        /// A blob from SealKey.
        blob: &'a [u8],
    },
}

/// Length of a LUKS UUID in its canonical text form (8-4-4-4-12 hex digits).
pub const LUKS_UUID_LEN: usize = 36;

/// Length of a released volume passphrase (raw bytes; clients use its lowercase hex).
pub const LUKS_PASSPHRASE_LEN: usize = 32;

/// HKDF salt of ReleaseVolumePassphrase.
pub const LUKS_PASSPHRASE_SALT: &[u8] = b"nitride luks volume passphrase v1\0";

/// Prefix of ReleaseVolumePassphrase's HKDF info (then the UUID's 16 bytes).
pub const LUKS_PASSPHRASE_INFO_PREFIX: &[u8] = b"NITRIDE-LUKS-PASSPHRASE-V1\0";

/// The 16 bytes of a LUKS UUID in canonical lowercase text form, or `None` for any
/// other form (uppercase, braces, missing or misplaced dashes, other lengths).
pub fn parse_luks_uuid(text: &[u8]) -> Option<[u8; 16]> {
    if text.len() != LUKS_UUID_LEN {
        return None;
    }
    let mut out = [0u8; 16];
    let mut nibbles = 0usize;
    for (i, &c) in text.iter().enumerate() {
        let dash = matches!(i, 8 | 13 | 18 | 23);
        if dash {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        let byte = out.get_mut(nibbles / 2)?;
        *byte = (*byte << 4) | v;
        nibbles += 1;
    }
    Some(out)
}

/// Longest KBS nonce ProvisionBegin accepts (trustee sends 44: base64 of 32 bytes).
pub const MAX_KBS_NONCE_LEN: usize = 128;

/// Longest JWE ProvisionFinish accepts.
pub const MAX_JWE_LEN: usize = 8 * 1024;

/// Longest peer public key Agree accepts.
pub const MAX_PEER_KEY_LEN: usize = 128;

/// Largest ciphertext field accepted by Decrypt.
pub const MAX_CIPHERTEXT_LEN: usize = GCM_NONCE_LEN + MAX_DATA_LEN + GCM_TAG_LEN;

// The largest request (Decrypt: id, AAD, ciphertext) fits in MAX_REQUEST_SIZE.
const _: () = assert!(
    HEADER_SIZE + 4 + (LEN_PREFIX + MAX_DATA_LEN) + (LEN_PREFIX + MAX_CIPHERTEXT_LEN)
        <= MAX_REQUEST_SIZE
);

impl<'a> Request<'a> {
    /// The operation of this request.
    pub const fn op(&self) -> Op {
        match self {
            Self::Generate { .. } => Op::Generate,
            Self::Import { .. } => Op::Import,
            Self::Unwrap { .. } => Op::Unwrap,
            Self::Wrap { .. } => Op::Wrap,
            Self::GetPublicKey { .. } => Op::GetPublicKey,
            Self::Sign { .. } => Op::Sign,
            Self::Verify { .. } => Op::Verify,
            Self::Encrypt { .. } => Op::Encrypt,
            Self::Decrypt { .. } => Op::Decrypt,
            Self::Derive { .. } => Op::Derive,
            Self::Random { .. } => Op::Random,
            Self::Delete { .. } => Op::Delete,
            Self::List => Op::List,
            Self::GetAttributes { .. } => Op::GetAttributes,
            Self::ReadAudit { .. } => Op::ReadAudit,
            Self::AttestKey { .. } => Op::AttestKey,
            Self::Seal { .. } => Op::Seal,
            Self::Unseal { .. } => Op::Unseal,
            Self::ExportState => Op::ExportState,
            Self::ImportState { .. } => Op::ImportState,
            Self::SignDigest { .. } => Op::SignDigest,
            Self::HkdfDerive { .. } => Op::HkdfDerive,
            Self::ProvisionBegin { .. } => Op::ProvisionBegin,
            Self::ProvisionFinish { .. } => Op::ProvisionFinish,
            Self::Agree { .. } => Op::Agree,
            Self::ReleaseVolumePassphrase { .. } => Op::ReleaseVolumePassphrase,
            Self::SealKey { .. } => Op::SealKey,
            Self::UnsealKey { .. } => Op::UnsealKey,
        }
    }

    /// Decode a whole request (header and body); returns the header too.
    pub fn decode(message: &'a [u8]) -> Result<(RequestHeader, Self), WireError> {
        let header = decode_request_header(message)?;
        let body = message.get(HEADER_SIZE..).ok_or(WireError::Malformed)?;
        let op = Op::from_raw(header.op.get()).ok_or(WireError::UnknownOperation)?;
        Ok((header, Self::decode_body(op, body)?))
    }

    /// Decode the body of operation `op`.
    pub fn decode_body(op: Op, body: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let request = match op {
            Op::Generate => Self::Generate {
                template: r.fixed()?,
                label: r.bytes(MAX_LABEL_LEN)?,
            },
            Op::Import => Self::Import {
                template: r.fixed()?,
                label: r.bytes(MAX_LABEL_LEN)?,
                material: r.bytes(MAX_WRAPPED_LEN)?,
            },
            Op::Unwrap => Self::Unwrap {
                unwrapping_key: r.u32()?,
                template: r.fixed()?,
                label: r.bytes(MAX_LABEL_LEN)?,
                wrapped: r.bytes(MAX_WRAPPED_LEN)?,
            },
            Op::Wrap => Self::Wrap {
                wrapping_key: r.u32()?,
                key: r.u32()?,
            },
            Op::GetPublicKey => Self::GetPublicKey { key: r.u32()? },
            Op::Sign => Self::Sign {
                key: r.u32()?,
                message: r.bytes(MAX_DATA_LEN)?,
            },
            Op::Verify => Self::Verify {
                key: r.u32()?,
                message: r.bytes(MAX_DATA_LEN)?,
                signature: r.bytes(MAX_SIGNATURE_LEN)?,
            },
            Op::Encrypt => Self::Encrypt {
                key: r.u32()?,
                aad: r.bytes(MAX_DATA_LEN)?,
                plaintext: r.bytes(MAX_DATA_LEN)?,
            },
            Op::Decrypt => Self::Decrypt {
                key: r.u32()?,
                aad: r.bytes(MAX_DATA_LEN)?,
                ciphertext: r.bytes(MAX_CIPHERTEXT_LEN)?,
            },
            Op::Derive => Self::Derive {
                parent: r.u32()?,
                template: r.fixed()?,
                label: r.bytes(MAX_LABEL_LEN)?,
                salt: r.bytes(MAX_DERIVE_INPUT_LEN)?,
                info: r.bytes(MAX_DERIVE_INPUT_LEN)?,
            },
            Op::Random => Self::Random { len: r.u32()? },
            Op::Delete => Self::Delete { key: r.u32()? },
            Op::List => Self::List,
            Op::GetAttributes => Self::GetAttributes { key: r.u32()? },
            Op::ReadAudit => Self::ReadAudit { from_seq: r.u64()? },
            Op::AttestKey => Self::AttestKey {
                key: r.u32()?,
                nonce: r
                    .bytes(crate::attest::NONCE_SIZE)?
                    .try_into()
                    .map_err(|_| WireError::Malformed)?,
            },
            Op::Seal => Self::Seal {
                rule: r.u32()?,
                data: r.bytes(crate::sealed::MAX_SEAL_DATA_LEN)?,
            },
            Op::Unseal => Self::Unseal {
                blob: r.bytes(crate::sealed::MAX_SEALED_LEN)?,
            },
            Op::ExportState => Self::ExportState,
            Op::ImportState => Self::ImportState {
                blob: r.bytes(crate::sealed::MAX_SEALED_LEN)?,
            },
            Op::SignDigest => Self::SignDigest {
                key: r.u32()?,
                digest: r.bytes(MAX_DIGEST_LEN)?,
            },
            Op::HkdfDerive => Self::HkdfDerive {
                parent: r.u32()?,
                template: r.fixed()?,
                label: r.bytes(MAX_LABEL_LEN)?,
                salt: r.bytes(MAX_DERIVE_INPUT_LEN)?,
                info: r.bytes(MAX_DERIVE_INPUT_LEN)?,
            },
            Op::ProvisionBegin => Self::ProvisionBegin {
                nonce: r.bytes(MAX_KBS_NONCE_LEN)?,
            },
            Op::ProvisionFinish => Self::ProvisionFinish {
                jwe: r.bytes(MAX_JWE_LEN)?,
            },
            Op::Agree => Self::Agree {
                key: r.u32()?,
                template: r.fixed()?,
                label: r.bytes(MAX_LABEL_LEN)?,
                peer: r.bytes(MAX_PEER_KEY_LEN)?,
                salt: r.bytes(MAX_DERIVE_INPUT_LEN)?,
                info: r.bytes(MAX_DERIVE_INPUT_LEN)?,
            },
            Op::ReleaseVolumePassphrase => Self::ReleaseVolumePassphrase {
                key: r.u32()?,
                uuid: r
                    .bytes(LUKS_UUID_LEN)?
                    .try_into()
                    .map_err(|_| WireError::Malformed)?,
            },
            Op::SealKey => Self::SealKey { key: r.u32()? },
            Op::UnsealKey => Self::UnsealKey {
                blob: r.bytes(crate::sealed::MAX_SEALED_LEN)?,
            },
        };
        r.finish()?;
        Ok(request)
    }

    /// Encode the body into `w`.
    pub fn encode_body(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        match *self {
            Self::Generate { template, label } => {
                w.put(template.as_bytes())?;
                w.bytes(label)
            }
            Self::Import {
                template,
                label,
                material,
            } => {
                w.put(template.as_bytes())?;
                w.bytes(label)?;
                w.bytes(material)
            }
            Self::Unwrap {
                unwrapping_key,
                template,
                label,
                wrapped,
            } => {
                w.u32(unwrapping_key)?;
                w.put(template.as_bytes())?;
                w.bytes(label)?;
                w.bytes(wrapped)
            }
            Self::Wrap { wrapping_key, key } => {
                w.u32(wrapping_key)?;
                w.u32(key)
            }
            Self::GetPublicKey { key } | Self::Delete { key } | Self::GetAttributes { key } => {
                w.u32(key)
            }
            Self::Sign { key, message }
            | Self::SignDigest {
                key,
                digest: message,
            } => {
                w.u32(key)?;
                w.bytes(message)
            }
            Self::Verify {
                key,
                message,
                signature,
            } => {
                w.u32(key)?;
                w.bytes(message)?;
                w.bytes(signature)
            }
            Self::Encrypt {
                key,
                aad,
                plaintext: data,
            }
            | Self::Decrypt {
                key,
                aad,
                ciphertext: data,
            } => {
                w.u32(key)?;
                w.bytes(aad)?;
                w.bytes(data)
            }
            Self::Derive {
                parent,
                template,
                label,
                salt,
                info,
            }
            | Self::HkdfDerive {
                parent,
                template,
                label,
                salt,
                info,
            } => {
                w.u32(parent)?;
                w.put(template.as_bytes())?;
                w.bytes(label)?;
                w.bytes(salt)?;
                w.bytes(info)
            }
            Self::Random { len } => w.u32(len),
            Self::List | Self::ExportState => Ok(()),
            Self::ReadAudit { from_seq } => w.u64(from_seq),
            Self::AttestKey { key, nonce } => {
                w.u32(key)?;
                w.bytes(nonce)
            }
            Self::Seal { rule, data } => {
                w.u32(rule)?;
                w.bytes(data)
            }
            Self::Unseal { blob } | Self::ImportState { blob } | Self::UnsealKey { blob } => {
                w.bytes(blob)
            }
            Self::ReleaseVolumePassphrase { key, uuid } => {
                w.u32(key)?;
                w.bytes(&uuid)
            }
            Self::SealKey { key } => w.u32(key),
            Self::ProvisionBegin { nonce } => w.bytes(nonce),
            Self::ProvisionFinish { jwe } => w.bytes(jwe),
            Self::Agree {
                key,
                template,
                label,
                peer,
                salt,
                info,
            } => {
                w.u32(key)?;
                w.put(template.as_bytes())?;
                w.bytes(label)?;
                w.bytes(peer)?;
                w.bytes(salt)?;
                w.bytes(info)
            }
        }
    }

    /// Encode a whole request (header and body) into `out`; returns its length.
    pub fn encode(&self, request_id: u64, out: &mut [u8]) -> Result<usize, WireError> {
        let body_len = {
            let body = out.get_mut(HEADER_SIZE..).ok_or(WireError::TooLarge)?;
            let mut w = Writer::new(body);
            self.encode_body(&mut w)?;
            w.len()
        };
        let total = HEADER_SIZE
            .checked_add(body_len)
            .ok_or(WireError::TooLarge)?;
        if total > MAX_REQUEST_SIZE {
            return Err(WireError::TooLarge);
        }
        let header = RequestHeader {
            version: U16::new(VERSION),
            op: U16::new(self.op().raw()),
            flags: U32::new(0),
            request_id: U64::new(request_id),
            body_len: U32::new(u32::try_from(body_len).map_err(|_| WireError::TooLarge)?),
            reserved: U32::new(0),
        };
        Writer::new(out).put(header.as_bytes())?;
        Ok(total)
    }
}

/// Parse and check a request header against the whole message's length.
pub fn decode_request_header(message: &[u8]) -> Result<RequestHeader, WireError> {
    if message.len() > MAX_REQUEST_SIZE {
        return Err(WireError::TooLarge);
    }
    let (header, body) =
        RequestHeader::read_from_prefix(message).map_err(|_| WireError::Malformed)?;
    if header.version.get() != VERSION {
        return Err(WireError::UnsupportedVersion);
    }
    if header.flags.get() != 0 || header.reserved.get() != 0 {
        return Err(WireError::Malformed);
    }
    if usize::try_from(header.body_len.get()).ok() != Some(body.len()) {
        return Err(WireError::Malformed);
    }
    Ok(header)
}

/// A decoded response: its header and body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response<'a> {
    /// The header.
    pub header: ResponseHeader,
    /// The body (empty unless the status is Ok).
    pub body: &'a [u8],
}

impl<'a> Response<'a> {
    /// Parse a whole response.
    pub fn decode(message: &'a [u8]) -> Result<Self, WireError> {
        let (header, body) =
            ResponseHeader::read_from_prefix(message).map_err(|_| WireError::Malformed)?;
        if header.version.get() != VERSION {
            return Err(WireError::UnsupportedVersion);
        }
        if header.flags.get() & !RESPONSE_STATE_CHANGED != 0 || header.reserved2.get() != 0 {
            return Err(WireError::Malformed);
        }
        if usize::try_from(header.body_len.get()).ok() != Some(body.len()) {
            return Err(WireError::Malformed);
        }
        // Only a success carries a body (canonical: one encoding per answer).
        if header.status.get() != Status::Ok.raw() && !body.is_empty() {
            return Err(WireError::Malformed);
        }
        Ok(Self { header, body })
    }

    /// The status, if it is a defined one.
    pub fn status(&self) -> Option<Status> {
        Status::from_raw(self.header.status.get())
    }

    /// A body holding one [`KeyAttributes`] (Generate, Import, Unwrap, Derive,
    /// GetAttributes).
    pub fn attributes(&self) -> Result<KeyAttributes, WireError> {
        KeyAttributes::read_from_bytes(self.body).map_err(|_| WireError::Malformed)
    }

    /// A List body: `u32 count` then `count` [`KeyAttributes`].
    pub fn key_list(&self) -> Result<&'a [KeyAttributes], WireError> {
        counted(self.body)
    }

    /// A ReadAudit body: `u32 count` then `count` [`AuditEntry`].
    pub fn audit_entries(&self) -> Result<&'a [AuditEntry], WireError> {
        counted(self.body)
    }

    /// An AttestKey body: `bytes binding, bytes report, bytes certificates`.
    pub fn attest_key(&self) -> Result<AttestKeyEvidence<'a>, WireError> {
        let mut r = Reader::new(self.body);
        let evidence = AttestKeyEvidence {
            binding: r.bytes(MAX_RESPONSE_SIZE)?,
            report: r.bytes(MAX_RESPONSE_SIZE)?,
            certificates: r.bytes(MAX_RESPONSE_SIZE)?,
        };
        r.finish()?;
        Ok(evidence)
    }
}

impl<'a> Response<'a> {
    /// Whether the response says the vault's persistent state changed.
    pub fn state_changed(&self) -> bool {
        self.header.flags.get() & RESPONSE_STATE_CHANGED != 0
    }

    /// A Seal body: `bytes blob`.
    pub fn sealed_blob(&self) -> Result<&'a [u8], WireError> {
        let mut r = Reader::new(self.body);
        let blob = r.bytes(crate::sealed::MAX_SEALED_LEN)?;
        r.finish()?;
        Ok(blob)
    }

    /// An Unseal body: `u32 flags, bytes data, bytes resealed`.
    pub fn unsealed(&self) -> Result<Unsealed<'a>, WireError> {
        let mut r = Reader::new(self.body);
        let flags = r.u32()?;
        let data = r.bytes(crate::sealed::MAX_SEAL_DATA_LEN)?;
        let resealed = r.bytes(crate::sealed::MAX_SEALED_LEN)?;
        r.finish()?;
        if flags & !SEAL_RESEALED != 0 || (flags & SEAL_RESEALED != 0) == resealed.is_empty() {
            return Err(WireError::Malformed);
        }
        Ok(Unsealed {
            data,
            resealed: (!resealed.is_empty()).then_some(resealed),
        })
    }

    /// An ExportState body: `u64 generation, bytes blob`.
    pub fn exported_state(&self) -> Result<(u64, &'a [u8]), WireError> {
        let mut r = Reader::new(self.body);
        let generation = r.u64()?;
        let blob = r.bytes(crate::sealed::MAX_SEALED_LEN)?;
        r.finish()?;
        Ok((generation, blob))
    }

    /// An ImportState body: `u64 generation, u32 keys, u32 flags, bytes resealed`.
    pub fn imported_state(&self) -> Result<ImportedState<'a>, WireError> {
        let mut r = Reader::new(self.body);
        let generation = r.u64()?;
        let keys = r.u32()?;
        let flags = r.u32()?;
        let resealed = r.bytes(crate::sealed::MAX_SEALED_LEN)?;
        r.finish()?;
        if flags & !SEAL_RESEALED != 0 || (flags & SEAL_RESEALED != 0) == resealed.is_empty() {
            return Err(WireError::Malformed);
        }
        Ok(ImportedState {
            generation,
            keys,
            resealed: (!resealed.is_empty()).then_some(resealed),
        })
    }
}

/// What Unseal returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsealed<'a> {
    /// The data.
    pub data: &'a [u8],
    /// The same data sealed at the current TCB, when the blob's TCB was older.
    pub resealed: Option<&'a [u8]>,
}

/// What ImportState returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportedState<'a> {
    /// The restored state's generation.
    pub generation: u64,
    /// Keys restored.
    pub keys: u32,
    /// The state sealed at the current TCB, when the blob's TCB was older.
    pub resealed: Option<&'a [u8]>,
}

/// What ProvisionBegin returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProvisionEvidence<'a> {
    /// The RFC 8785 runtime-data JSON the vault built; SHA-384 of it, zero-padded,
    /// is REPORT_DATA.
    pub runtime_data: &'a [u8],
    /// The session's public key as the JWK inside the runtime data
    /// (`{"alg","crv","kty","x","y"}`).
    pub jwk: &'a [u8],
    /// The attestation report (0x4A0 bytes).
    pub report: &'a [u8],
    /// The certificate table (`snp::certs`), empty when the platform has none.
    pub certificates: &'a [u8],
}

impl<'a> Response<'a> {
    /// A ProvisionBegin body: `bytes runtime_data, bytes jwk, bytes report, bytes
    /// certificates`.
    pub fn provision_evidence(&self) -> Result<ProvisionEvidence<'a>, WireError> {
        let mut r = Reader::new(self.body);
        let evidence = ProvisionEvidence {
            runtime_data: r.bytes(MAX_RESPONSE_SIZE)?,
            jwk: r.bytes(MAX_RESPONSE_SIZE)?,
            report: r.bytes(MAX_RESPONSE_SIZE)?,
            certificates: r.bytes(MAX_RESPONSE_SIZE)?,
        };
        r.finish()?;
        Ok(evidence)
    }
}

/// What AttestKey returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttestKeyEvidence<'a> {
    /// The key binding (`attest::KeyBinding` encoding); SHA-512 of it is REPORT_DATA.
    pub binding: &'a [u8],
    /// The attestation report (0x4A0 bytes).
    pub report: &'a [u8],
    /// The certificate table (`snp::certs`), empty when the platform has none.
    pub certificates: &'a [u8],
}

/// `u32 count` followed by exactly `count` fixed-layout records.
fn counted<T: FromBytes + KnownLayout + Immutable + Unaligned>(
    body: &[u8],
) -> Result<&[T], WireError> {
    let mut r = Reader::new(body);
    let count = usize::try_from(r.u32()?).map_err(|_| WireError::Malformed)?;
    let rest = body.get(LEN_PREFIX..).ok_or(WireError::Malformed)?;
    let (items, _) =
        <[T]>::ref_from_prefix_with_elems(rest, count).map_err(|_| WireError::Malformed)?;
    if core::mem::size_of_val(items) != rest.len() {
        return Err(WireError::Malformed);
    }
    Ok(items)
}

/// Write a response header for `op`, `request_id`, `status` and a body of `body_len`.
pub fn response_header(op: u16, request_id: u64, status: Status, body_len: u32) -> ResponseHeader {
    ResponseHeader {
        version: U16::new(VERSION),
        op: U16::new(op),
        status: U16::new(status.raw()),
        flags: U16::new(0),
        request_id: U64::new(request_id),
        body_len: U32::new(body_len),
        reserved2: U32::new(0),
    }
}

/// [`ResponseHeader::flags`] bit: this request changed the vault's persistent state
/// (a persistent key created, deleted, or its GCM counter moved; a state imported):
/// the state blob the caller holds is stale, ExportState gives the current one.
pub const RESPONSE_STATE_CHANGED: u16 = 1 << 0;

/// Unseal / ImportState response flag (`u32 flags` in the body): the blob was sealed
/// at an older TCB; the response carries the same contents sealed at the current TCB,
/// which the caller should store instead.
pub const SEAL_RESEALED: u32 = 1 << 0;

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(req: Request<'_>) {
        let mut buf = [0u8; 512];
        let n = req.encode(0x1122_3344_5566_7788, &mut buf).unwrap();
        let (header, back) = Request::decode(&buf[..n]).unwrap();
        assert_eq!(back, req);
        assert_eq!(header.request_id.get(), 0x1122_3344_5566_7788);
        assert_eq!(
            usize::try_from(header.body_len.get()).unwrap(),
            n - HEADER_SIZE
        );
        // Every strict prefix of the body is malformed, and so is a trailing byte.
        for cut in HEADER_SIZE..n {
            let mut m = buf[..cut].to_vec();
            m[16..20].copy_from_slice(&u32::try_from(cut - HEADER_SIZE).unwrap().to_le_bytes());
            assert_eq!(
                Request::decode(&m),
                Err(WireError::Malformed),
                "cut at {cut} of {req:?}"
            );
        }
        let mut m = buf[..=n].to_vec();
        m[16..20].copy_from_slice(&u32::try_from(n + 1 - HEADER_SIZE).unwrap().to_le_bytes());
        assert_eq!(Request::decode(&m), Err(WireError::Malformed));
    }

    #[test]
    fn every_request_round_trips() {
        let t = KeyTemplate::new(KeyType::Aes256, KeyUsage::ENCRYPT, VmplSet::VMPL1, true);
        for req in [
            Request::Generate {
                template: t,
                label: b"disk",
            },
            Request::Import {
                template: t,
                label: b"",
                material: &[7; 32],
            },
            Request::Unwrap {
                unwrapping_key: 3,
                template: t,
                label: b"x",
                wrapped: &[1; 40],
            },
            Request::Wrap {
                wrapping_key: 1,
                key: 2,
            },
            Request::GetPublicKey { key: 9 },
            Request::Sign {
                key: 1,
                message: b"hello",
            },
            Request::Verify {
                key: 1,
                message: b"hello",
                signature: &[4; 64],
            },
            Request::Encrypt {
                key: 1,
                aad: b"a",
                plaintext: b"p",
            },
            Request::Decrypt {
                key: 1,
                aad: b"",
                ciphertext: &[0; 28],
            },
            Request::Derive {
                parent: 5,
                template: t,
                label: b"l",
                salt: b"s",
                info: b"i",
            },
            Request::Random { len: 32 },
            Request::Delete { key: 4 },
            Request::List,
            Request::GetAttributes { key: 4 },
            Request::ReadAudit { from_seq: 17 },
            Request::SignDigest {
                key: 2,
                digest: &[0x5A; 48],
            },
            Request::HkdfDerive {
                parent: 5,
                template: t,
                label: b"h",
                salt: b"",
                info: b"ctx",
            },
            Request::AttestKey {
                key: 4,
                nonce: &[0x6E; 64],
            },
            Request::ProvisionBegin { nonce: b"bm9uY2U=" },
            Request::ProvisionFinish { jwe: b"{}" },
            Request::Agree {
                key: 3,
                template: t,
                label: b"shared",
                peer: &[4; 91],
                salt: b"s",
                info: b"i",
            },
            Request::ReleaseVolumePassphrase {
                key: 7,
                uuid: *b"0b5e6a34-4c1f-4f57-9a43-1c2b8d3e5f60",
            },
            Request::SealKey { key: 7 },
            Request::UnsealKey { blob: &[9; 120] },
        ] {
            roundtrip(req);
        }
    }

    #[test]
    fn luks_uuid_form() {
        assert_eq!(
            parse_luks_uuid(b"0b5e6a34-4c1f-4f57-9a43-1c2b8d3e5f60"),
            Some([
                0x0b, 0x5e, 0x6a, 0x34, 0x4c, 0x1f, 0x4f, 0x57, 0x9a, 0x43, 0x1c, 0x2b, 0x8d, 0x3e,
                0x5f, 0x60
            ])
        );
        for bad in [
            &b"0B5E6A34-4C1F-4F57-9A43-1C2B8D3E5F60"[..],
            b"0b5e6a344c1f4f579a431c2b8d3e5f60",
            b"0b5e6a34-4c1f-4f57-9a43-1c2b8d3e5f6",
            b"0b5e6a34-4c1f-4f57-9a43-1c2b8d3e5f600",
            b"0b5e6a34+4c1f-4f57-9a43-1c2b8d3e5f60",
            b"0b5e6a3-44c1f-4f57-9a43-1c2b8d3e5f60",
            b"0b5e6a34-4c1f-4f57-9a43-1c2b8d3e5fg0",
            b"{b5e6a34-4c1f-4f57-9a43-1c2b8d3e5f6}",
        ] {
            assert_eq!(parse_luks_uuid(bad), None, "{bad:?}");
        }
    }

    /// ReleaseVolumePassphrase's UUID field is exactly 36 bytes.
    #[test]
    fn release_uuid_is_36_bytes() {
        for len in [0usize, 35, 37] {
            let mut body = 4u32.to_le_bytes().to_vec();
            body.extend_from_slice(&(len as u32).to_le_bytes());
            body.extend(core::iter::repeat_n(b'a', len));
            let header = RequestHeader {
                version: U16::new(VERSION),
                op: U16::new(Op::ReleaseVolumePassphrase.raw()),
                flags: U32::new(0),
                request_id: U64::new(1),
                body_len: U32::new(body.len() as u32),
                reserved: U32::new(0),
            };
            let mut req = header.as_bytes().to_vec();
            req.extend_from_slice(&body);
            let want = if len > LUKS_UUID_LEN {
                WireError::TooLarge
            } else {
                WireError::Malformed
            };
            assert_eq!(Request::decode(&req), Err(want), "uuid of {len} bytes");
        }
    }

    /// AttestKey's nonce is exactly 64 bytes: a shorter or longer one is refused
    /// when decoded, whatever the length prefix says.
    #[test]
    fn attest_key_nonce_is_64_bytes() {
        let mut buf = [0u8; 256];
        let n = Request::AttestKey {
            key: 4,
            nonce: &[7; 64],
        }
        .encode(1, &mut buf)
        .unwrap();
        assert!(Request::decode(&buf[..n]).is_ok());
        for len in [0usize, 1, 63, 65, 128] {
            let mut body = 4u32.to_le_bytes().to_vec();
            body.extend_from_slice(&(len as u32).to_le_bytes());
            body.extend(core::iter::repeat_n(7u8, len));
            let mut req = buf[..HEADER_SIZE].to_vec();
            req[16..20].copy_from_slice(&(body.len() as u32).to_le_bytes());
            req.extend_from_slice(&body);
            let want = if len > 64 {
                WireError::TooLarge
            } else {
                WireError::Malformed
            };
            assert_eq!(Request::decode(&req), Err(want), "nonce of {len} bytes");
        }
    }

    #[test]
    fn header_checks() {
        let mut buf = [0u8; 64];
        let n = Request::List.encode(1, &mut buf).unwrap();
        assert_eq!(n, HEADER_SIZE);
        assert_eq!(Request::decode(&buf[..n - 1]), Err(WireError::Malformed));
        for version in [1, 3] {
            let mut bad = buf;
            bad[0] = version;
            assert_eq!(
                Request::decode(&bad[..n]),
                Err(WireError::UnsupportedVersion)
            );
        }
        let mut bad = buf;
        bad[2] = 0xff;
        assert_eq!(Request::decode(&bad[..n]), Err(WireError::UnknownOperation));
        let mut bad = buf;
        bad[4] = 1;
        assert_eq!(Request::decode(&bad[..n]), Err(WireError::Malformed));
        let mut bad = buf;
        bad[20] = 1;
        assert_eq!(Request::decode(&bad[..n]), Err(WireError::Malformed));
        assert_eq!(
            decode_request_header(&[0; MAX_REQUEST_SIZE + 1]),
            Err(WireError::TooLarge)
        );
    }

    #[test]
    fn length_limits_are_enforced() {
        let t = KeyTemplate::new(KeyType::Aes256, KeyUsage::ENCRYPT, VmplSet::VMPL1, true);
        let mut buf = [0u8; 128];
        let long = [b'x'; MAX_LABEL_LEN + 1];
        let n = Request::Generate {
            template: t,
            label: &long,
        }
        .encode(1, &mut buf)
        .unwrap();
        assert_eq!(Request::decode(&buf[..n]), Err(WireError::TooLarge));
        let n = Request::Generate {
            template: t,
            label: &long[..MAX_LABEL_LEN],
        }
        .encode(1, &mut buf)
        .unwrap();
        assert!(Request::decode(&buf[..n]).is_ok());
        // A length prefix far beyond the message is malformed or too large, never a panic.
        let n = Request::Sign {
            key: 1,
            message: b"",
        }
        .encode(1, &mut buf)
        .unwrap();
        buf[28..32].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Request::decode(&buf[..n]), Err(WireError::TooLarge));
        // Encoding into a short buffer fails cleanly.
        assert_eq!(
            Request::Sign {
                key: 1,
                message: &[0; 100]
            }
            .encode(1, &mut buf[..64]),
            Err(WireError::TooLarge)
        );
    }

    #[test]
    fn enums_round_trip_and_reject_unknown() {
        for &op in Op::ALL {
            assert_eq!(Op::from_raw(op.raw()), Some(op));
        }
        for &s in Status::ALL {
            assert_eq!(Status::from_raw(s.raw()), Some(s));
        }
        assert_eq!(Op::from_raw(0), None);
        assert_eq!(Op::from_raw(21), None);
        assert_eq!(Op::from_raw(27), None);
        assert_eq!(Status::from_raw(24), None);
        assert_eq!(Status::from_raw(31), None);
        assert_eq!(KeyType::from_raw(7), None);
        assert_eq!(Origin::from_raw(0), None);
        assert!(VmplSet::VMPL2.contains_vmpl(2));
        assert!(!VmplSet::VMPL2.contains_vmpl(1));
        assert!(!VmplSet::all().contains_vmpl(4));
    }

    #[test]
    fn response_bodies_decode() {
        let entry = AuditEntry {
            seq: U64::new(3),
            key_id: U32::new(9),
            op: U16::new(6),
            ..Default::default()
        };
        let body = 4 + size_of::<AuditEntry>();
        let mut msg = [0u8; HEADER_SIZE + 4 + 88 + 8];
        let header = response_header(15, 7, Status::Ok, body as u32);
        msg[..HEADER_SIZE].copy_from_slice(header.as_bytes());
        msg[HEADER_SIZE..HEADER_SIZE + 4].copy_from_slice(&1u32.to_le_bytes());
        msg[HEADER_SIZE + 4..HEADER_SIZE + body].copy_from_slice(entry.as_bytes());
        let resp = Response::decode(&msg[..HEADER_SIZE + body]).unwrap();
        assert_eq!(resp.status(), Some(Status::Ok));
        assert_eq!(resp.audit_entries().unwrap(), &[entry]);
        // A count that disagrees with the body length is malformed.
        assert_eq!(
            Response {
                header,
                body: &msg[HEADER_SIZE..HEADER_SIZE + body - 1]
            }
            .audit_entries(),
            Err(WireError::Malformed)
        );
        assert_eq!(
            Response::decode(&msg[..HEADER_SIZE + body - 1]),
            Err(WireError::Malformed)
        );
        // Undefined flag bits (offset 6: only bit 0 is defined) and the reserved field
        // (offset 20) must be zero.
        for (at, value) in [(6, 2), (7, 1), (20, 1)] {
            let mut m = msg;
            m[at] = value;
            assert_eq!(
                Response::decode(&m[..HEADER_SIZE + body]),
                Err(WireError::Malformed),
                "{at}"
            );
        }
        // An error carries no body.
        let mut m = msg;
        let refused = response_header(15, 7, Status::KeyNotFound, body as u32);
        m[..HEADER_SIZE].copy_from_slice(refused.as_bytes());
        assert_eq!(
            Response::decode(&m[..HEADER_SIZE + body]),
            Err(WireError::Malformed)
        );
        let empty = response_header(15, 7, Status::KeyNotFound, 0);
        assert_eq!(
            Response::decode(empty.as_bytes()).map(|r| r.status()),
            Ok(Some(Status::KeyNotFound))
        );
    }

    #[test]
    fn audit_chain_input_layout() {
        let entry = AuditEntry {
            seq: U64::new(0x0102),
            key_id: U32::new(7),
            op: U16::new(8),
            status: U16::new(15),
            caller_vmpl: 2,
            salt: [0xAB; 16],
            chain: [0xCD; 48],
            ..Default::default()
        };
        let input = audit_chain_input(&[0x11; 48], &entry);
        assert_eq!(&input[..16], b"NITRIDE-AUDIT-V1");
        assert_eq!(&input[16..64], &[0x11; 48]);
        assert_eq!(&input[64..72], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&input[72..80], &[7, 0, 0, 0, 8, 0, 15, 0]);
        assert_eq!(&input[80..88], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&input[88..], &[0xAB; 16]);
    }
}
