//! The SVSM attestation protocol (protocol 1, REFERENCE.md section 3) and the
//! evidence formats Nitride defines on top of it.
//!
//! - [`ServicesRequest`] / [`SingleServiceRequest`]: the request structures of
//!   ATTEST_SERVICES and ATTEST_SINGLE_SERVICE, byte for byte as Linux's configfs-tsm
//!   SVSM path writes them (`struct svsm_attest_call`). The nonce is exactly
//!   [`NONCE_SIZE`] (64) bytes.
//! - The services manifest: a GUID table (header GUID [`MANIFEST_TABLE_GUID`], total
//!   length, entry count; 24-byte entries; then the data, each entry's right after
//!   the previous one's). [`ManifestTable`] reads one; [`manifest_table_len`] /
//!   [`write_manifest_table`] build one.
//! - The vHSM's entry in that table ([`VHSM_SERVICE_GUID`]): a [`VhsmManifestHeader`],
//!   the vault identity public key, then one [`ManifestKeyHead`] + SPKI per attestable
//!   key. [`VhsmManifest`] reads one, [`write_vhsm_manifest`] builds one.
//! - The key binding hashed into REPORT_DATA by the vHSM's AttestKey operation:
//!   [`KeyBindingHead`] (the caller's nonce, a magic, the key's attributes), then the
//!   key's SPKI ([`KeyBinding`] reads and writes one).
//! - [`report_data`]: every REPORT_DATA form Nitride asks the PSP for, built in one
//!   place, and why no input of one form reads as another (`docs/attestation.md`).
//!
//! Every decoder here is canonical: it accepts exactly the bytes its encoder
//! writes (decode then encode gives the input back), with no unreferenced bytes,
//! reserved fields zero, and every public key a strict DER SubjectPublicKeyInfo of
//! the key's type with nothing after it.

use core::mem::{offset_of, size_of};

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::snp::{guid, Guid};
use crate::vhsm::{KeyAttributes, KeyType, KeyUsage, Origin, VmplSet, MAX_LABEL_LEN};

mod public_key;
pub mod report_data;

pub use public_key::{check_spki, ED25519_SPKI_LEN, P256_SPKI_LEN, P384_SPKI_LEN};

/// Call numbers of protocol 1.
pub mod attest_call {
    /// Attest all services: REPORT_DATA binds the whole services manifest.
    pub const SERVICES: u32 = 0;
    /// Attest one service, named by GUID, at a given manifest version.
    pub const SINGLE_SERVICE: u32 = 1;
}

/// The attestation protocol version served.
pub const ATTEST_PROTOCOL_VERSION: u32 = 1;

/// The size of every nonce Nitride's evidence carries: protocol 1's (what Linux's
/// configfs-tsm sends, and what other SVSMs enforce) and AttestKey's. Any other
/// size is refused with INVALID_PARAMETER.
pub const NONCE_SIZE: usize = 64;

/// A caller's nonce.
pub type Nonce = [u8; NONCE_SIZE];

/// A guest buffer named by an attestation request: GPA, size, reserved.
///
/// The SVSM specification gives the nonce's size as a `u16` followed by reserved
/// bytes, Linux writes a `u32`; reading a `u32` accepts both when the reserved bytes
/// are zero, which both write.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct GuestBuffer {
    /// Guest-physical address.
    pub gpa: U64,
    /// Size in bytes (in: the buffer's size; the SVSM reports needed sizes in
    /// registers, not here).
    pub size: U32,
    /// Reserved, zero.
    pub reserved: U32,
}
const _: () = assert!(size_of::<GuestBuffer>() == 0x10);

/// ATTEST_SERVICES request (0x40 bytes), at the GPA in RCX.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct ServicesRequest {
    /// Where the report goes (at least 0x4A0 bytes).
    pub report: GuestBuffer,
    /// The caller's nonce.
    pub nonce: GuestBuffer,
    /// Where the services manifest goes.
    pub manifest: GuestBuffer,
    /// Where the certificate table goes; size 0 asks for no certificates.
    pub certificates: GuestBuffer,
}
const _: () = assert!(size_of::<ServicesRequest>() == 0x40);
const _: () = assert!(offset_of!(ServicesRequest, report) == 0x00);
const _: () = assert!(offset_of!(ServicesRequest, nonce) == 0x10);
const _: () = assert!(offset_of!(ServicesRequest, manifest) == 0x20);
const _: () = assert!(offset_of!(ServicesRequest, certificates) == 0x30);

/// ATTEST_SINGLE_SERVICE request (0x58 bytes), at the GPA in RCX.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct SingleServiceRequest {
    /// The buffers, as for ATTEST_SERVICES.
    pub base: ServicesRequest,
    /// The service (mixed-endian GUID).
    pub service_guid: Guid,
    /// The manifest version wanted (0 = the latest the service has).
    pub manifest_version: U32,
    /// Reserved, zero.
    pub reserved: U32,
}
const _: () = assert!(size_of::<SingleServiceRequest>() == 0x58);
const _: () = assert!(offset_of!(SingleServiceRequest, service_guid) == 0x40);
const _: () = assert!(offset_of!(SingleServiceRequest, manifest_version) == 0x50);

/// Header GUID of a services manifest table, `63849ebb-3d92-4670-a1ff-58f9c94b87bb`.
pub const MANIFEST_TABLE_GUID: Guid = guid(
    0x6384_9ebb,
    0x3d92,
    0x4670,
    [0xa1, 0xff, 0x58, 0xf9, 0xc9, 0x4b, 0x87, 0xbb],
);

/// The vHSM service, `2c3b3fbe-408b-431e-b92e-91d3619d1658` (chosen for Nitride).
pub const VHSM_SERVICE_GUID: Guid = guid(
    0x2c3b_3fbe,
    0x408b,
    0x431e,
    [0xb9, 0x2e, 0x91, 0xd3, 0x61, 0x9d, 0x16, 0x58],
);

/// The vTPM service (not served by Nitride), `c476f1eb-0123-45a5-9641-b4e7dde5bfe3`.
pub const VTPM_SERVICE_GUID: Guid = guid(
    0xc476_f1eb,
    0x0123,
    0x45a5,
    [0x96, 0x41, 0xb4, 0xe7, 0xdd, 0xe5, 0xbf, 0xe3],
);

/// Head of a services manifest table.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct ManifestTableHead {
    /// [`MANIFEST_TABLE_GUID`].
    pub guid: Guid,
    /// Length of the whole table, data included.
    pub total_len: U32,
    /// Number of entries.
    pub entry_count: U32,
}
const _: () = assert!(size_of::<ManifestTableHead>() == 24);

/// One entry of a services manifest table.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct ManifestTableEntry {
    /// The service.
    pub guid: Guid,
    /// Offset of the service's manifest from the start of the table.
    pub offset: U32,
    /// Length of the service's manifest.
    pub len: U32,
}
const _: () = assert!(size_of::<ManifestTableEntry>() == 24);

/// Why a manifest, table or binding could not be read or written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestError {
    /// Shorter than its header or than the lengths it declares.
    Truncated,
    /// Bytes after the declared end.
    TrailingBytes,
    /// Wrong magic or header GUID.
    BadMagic,
    /// A version this code does not know.
    UnsupportedVersion,
    /// A table entry does not start where the previous one ended (the first right
    /// after the entry array), or the entries do not end at the table's end.
    BadEntry,
    /// Two table entries name the same service.
    DuplicateService,
    /// A service this code does not know how to check.
    UnknownService,
    /// A reserved field is not zero.
    ReservedNotZero,
    /// Key attributes that the vault never writes (unknown type, origin or usage
    /// bits, usage the type cannot have, no ATTEST usage, key id 0, a label with
    /// bytes after its length, a flag other than 0 or 1).
    BadAttributes,
    /// Key records not in strictly increasing key-id order.
    KeyOrder,
    /// A public key that is not the strict DER SubjectPublicKeyInfo of its key type
    /// (or, for a symmetric key, not empty).
    BadPublicKey,
    /// A nonce that is not [`NONCE_SIZE`] bytes.
    BadNonce,
    /// A length does not fit in 32 bits, or an output buffer has the wrong size.
    TooLarge,
}

impl core::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Truncated => "shorter than the lengths it declares",
            Self::TrailingBytes => "bytes after its end",
            Self::BadMagic => "wrong magic or header GUID",
            Self::UnsupportedVersion => "unsupported version",
            Self::BadEntry => {
                "table entries do not follow each other exactly from the entry array to the end"
            }
            Self::DuplicateService => "two table entries name the same service",
            Self::UnknownService => "a service this verifier does not know",
            Self::ReservedNotZero => "a reserved field is not zero",
            Self::BadAttributes => "key attributes the vault never writes",
            Self::KeyOrder => "key records not in increasing key-id order",
            Self::BadPublicKey => {
                "a public key that is not the strict DER SubjectPublicKeyInfo of its key type"
            }
            Self::BadNonce => "a nonce that is not 64 bytes",
            Self::TooLarge => "a length over 32 bits or an output buffer of the wrong size",
        })
    }
}

fn u32_of(n: usize) -> Result<U32, ManifestError> {
    u32::try_from(n)
        .map(U32::new)
        .map_err(|_| ManifestError::TooLarge)
}

/// The length of a services manifest table holding `entries` (GUID, data).
pub fn manifest_table_len(entries: &[(Guid, &[u8])]) -> Option<usize> {
    let head = size_of::<ManifestTableHead>()
        .checked_add(entries.len().checked_mul(size_of::<ManifestTableEntry>())?)?;
    entries
        .iter()
        .try_fold(head, |acc, (_, data)| acc.checked_add(data.len()))
}

/// Write a services manifest table for `entries` into `out`, which must be exactly
/// [`manifest_table_len`] bytes. Entries keep their order; data follows the entries
/// in the same order, each right after the previous. The GUIDs must be distinct
/// (else [`ManifestError::DuplicateService`]): what is written always parses.
pub fn write_manifest_table(
    entries: &[(Guid, &[u8])],
    out: &mut [u8],
) -> Result<(), ManifestError> {
    let total = manifest_table_len(entries).ok_or(ManifestError::TooLarge)?;
    if out.len() != total {
        return Err(ManifestError::TooLarge);
    }
    for (i, (g, _)) in entries.iter().enumerate() {
        if entries[..i].iter().any(|(h, _)| h == g) {
            return Err(ManifestError::DuplicateService);
        }
    }
    let head = ManifestTableHead {
        guid: MANIFEST_TABLE_GUID,
        total_len: u32_of(total)?,
        entry_count: u32_of(entries.len())?,
    };
    let (h, mut rest) = out.split_at_mut(size_of::<ManifestTableHead>());
    h.copy_from_slice(head.as_bytes());
    // Cannot overflow: `total` is their sum.
    let mut data_at =
        size_of::<ManifestTableHead>() + entries.len() * size_of::<ManifestTableEntry>();
    for (g, data) in entries {
        let entry = ManifestTableEntry {
            guid: *g,
            offset: u32_of(data_at)?,
            len: u32_of(data.len())?,
        };
        let (e, r) = rest.split_at_mut(size_of::<ManifestTableEntry>());
        e.copy_from_slice(entry.as_bytes());
        rest = r;
        data_at += data.len();
    }
    for (_, data) in entries {
        let (d, r) = rest.split_at_mut(data.len());
        d.copy_from_slice(data);
        rest = r;
    }
    Ok(())
}

/// A services manifest table, checked to be exactly what [`write_manifest_table`]
/// writes: `total_len` is the length of the bytes; the first entry's data starts
/// right after the entry array, each next one right where the previous ended, and
/// the last ends at the end of the table; no two entries name the same service.
/// Every byte is therefore either head, entry record or one entry's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestTable<'a> {
    bytes: &'a [u8],
    entries: &'a [ManifestTableEntry],
}

impl<'a> ManifestTable<'a> {
    /// Parse and check a table; `bytes` must be exactly `total_len` long.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ManifestError> {
        let (head, rest) =
            ManifestTableHead::ref_from_prefix(bytes).map_err(|_| ManifestError::Truncated)?;
        if head.guid != MANIFEST_TABLE_GUID {
            return Err(ManifestError::BadMagic);
        }
        let total = head.total_len.get() as usize;
        if total > bytes.len() {
            return Err(ManifestError::Truncated);
        }
        if total < bytes.len() {
            return Err(ManifestError::TrailingBytes);
        }
        let count = head.entry_count.get() as usize;
        let (entries, _) = <[ManifestTableEntry]>::ref_from_prefix_with_elems(rest, count)
            .map_err(|_| ManifestError::Truncated)?;
        // In range: the entry array lies inside `bytes`.
        let mut next = size_of::<ManifestTableHead>() + size_of_val(entries);
        for (i, e) in entries.iter().enumerate() {
            if e.offset.get() as usize != next {
                return Err(ManifestError::BadEntry);
            }
            next = next
                .checked_add(e.len.get() as usize)
                .filter(|end| *end <= total)
                .ok_or(ManifestError::BadEntry)?;
            if entries[..i].iter().any(|f| f.guid == e.guid) {
                return Err(ManifestError::DuplicateService);
            }
        }
        if next != total {
            return Err(ManifestError::BadEntry);
        }
        Ok(Self { bytes, entries })
    }

    /// The entries, in table order: (GUID, that service's manifest bytes).
    pub fn entries(&self) -> impl Iterator<Item = (Guid, &'a [u8])> + '_ {
        let bytes = self.bytes;
        self.entries.iter().map(move |e| {
            let start = e.offset.get() as usize;
            let end = start + e.len.get() as usize;
            // Checked in `parse`.
            (e.guid, bytes.get(start..end).unwrap_or_default())
        })
    }

    /// The manifest of one service, if listed (GUIDs are unique).
    pub fn find(&self, service: &Guid) -> Option<&'a [u8]> {
        self.entries().find(|(g, _)| g == service).map(|(_, d)| d)
    }

    /// The length of the table ([`Self::write`] writes exactly this many bytes).
    pub fn encoded_len(&self) -> usize {
        self.bytes.len()
    }

    /// Encode the table again from its entries (exactly [`Self::encoded_len`]
    /// bytes): the same bytes it was parsed from.
    pub fn write(&self, out: &mut [u8]) -> Result<(), ManifestError> {
        if out.len() != self.bytes.len() {
            return Err(ManifestError::TooLarge);
        }
        let head = ManifestTableHead {
            guid: MANIFEST_TABLE_GUID,
            total_len: u32_of(self.bytes.len())?,
            entry_count: u32_of(self.entries.len())?,
        };
        let mut put = |at: usize, data: &[u8]| -> Result<usize, ManifestError> {
            let end = at.checked_add(data.len()).ok_or(ManifestError::TooLarge)?;
            out.get_mut(at..end)
                .ok_or(ManifestError::TooLarge)?
                .copy_from_slice(data);
            Ok(end)
        };
        let mut record = put(0, head.as_bytes())?;
        let mut at = record + size_of_val(self.entries);
        for (guid, data) in self.entries() {
            let entry = ManifestTableEntry {
                guid,
                offset: u32_of(at)?,
                len: u32_of(data.len())?,
            };
            record = put(record, entry.as_bytes())?;
            at = put(at, data)?;
        }
        Ok(())
    }
}

/// Magic of the vHSM's service manifest.
pub const VHSM_MANIFEST_MAGIC: [u8; 8] = *b"NTRDVHSM";
/// Version of the vHSM manifest layout. Version 2 appended the vault policy and the
/// audit log's count and chain to the header; version 3 the digest of the measured
/// launch configuration.
pub const VHSM_MANIFEST_VERSION: u32 = 3;

/// Head of the vHSM's service manifest (144 bytes). Followed by the vault identity
/// key (SPKI DER, `identity_len` bytes), then `key_count` records of
/// [`ManifestKeyHead`] + that key's SPKI DER (empty for symmetric keys).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct VhsmManifestHeader {
    /// [`VHSM_MANIFEST_MAGIC`].
    pub magic: [u8; 8],
    /// [`VHSM_MANIFEST_VERSION`].
    pub manifest_version: U32,
    /// The vHSM SVSM protocol version served (`svsm::VHSM_PROTOCOL_VERSION`).
    pub protocol_version: U32,
    /// The vHSM message wire version (`vhsm::VERSION`).
    pub wire_version: U16,
    /// Zero.
    pub reserved: U16,
    /// Number of key records.
    pub key_count: U32,
    /// Length of the vault identity key (SPKI DER).
    pub identity_len: U32,
    /// Zero.
    pub reserved2: U32,
    /// The vault policy: `vhsm::VaultPolicyFlags` bits.
    pub policy_flags: U32,
    /// The generation of the vault's persistent state (`sealed`, ExportState): 0
    /// until a state was exported or imported, then the generation of the latest
    /// (saturating at `u32::MAX`). A relying party that tracks it sees a rollback to
    /// an older state blob.
    pub state_generation: U32,
    /// Audit entries the vault has recorded since it started (the last one's
    /// sequence number).
    pub audit_count: U64,
    /// The audit chain value after that entry (`vhsm::AuditEntry::chain`; zeros when
    /// none was recorded).
    pub audit_chain: [u8; 48],
    /// SHA-384 of the measured launch configuration the vault runs under
    /// (`launch_config::digest`): its policy and owner key. Version 3.
    pub launch_config: [u8; 48],
}
const _: () = assert!(size_of::<VhsmManifestHeader>() == 144);

impl Default for VhsmManifestHeader {
    fn default() -> Self {
        zerocopy::FromZeros::new_zeroed()
    }
}

impl VhsmManifestHeader {
    /// Whether every reserved field is zero (the parser requires it).
    pub fn reserved_zero(&self) -> bool {
        self.reserved.get() == 0 && self.reserved2.get() == 0
    }
}

/// One attestable key in the vHSM manifest: its attributes and its SPKI's length.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct ManifestKeyHead {
    /// The key's attributes (never material).
    pub attributes: KeyAttributes,
    /// Length of the SPKI DER that follows (0 for symmetric keys).
    pub spki_len: U32,
}
const _: () = assert!(size_of::<ManifestKeyHead>() == 52);

/// One key of a vHSM manifest: its attributes and its public key (SPKI DER; empty
/// for AES and HMAC keys).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestKey<'a> {
    /// The key's attributes.
    pub attributes: KeyAttributes,
    /// Its SPKI DER, or empty.
    pub spki: &'a [u8],
}

/// Check key attributes as the vault writes them, for a key with ATTEST usage
/// (the only keys that appear in evidence); returns the key type.
pub fn check_attestable_attributes(a: &KeyAttributes) -> Result<KeyType, ManifestError> {
    let bad = ManifestError::BadAttributes;
    let key_type = KeyType::from_raw(a.key_type.get()).ok_or(bad)?;
    let usage = KeyUsage::from_bits(a.usage.get()).ok_or(bad)?;
    let label_len = usize::from(a.label_len);
    let label_ok = label_len <= MAX_LABEL_LEN
        && a.label
            .get(label_len..)
            .is_some_and(|pad| pad.iter().all(|&b| b == 0));
    let ok = a.key_id.get() != 0
        && Origin::from_raw(a.origin).is_some()
        && VmplSet::from_bits(a.allowed_vmpls).is_some()
        && usage.contains(KeyUsage::ATTEST)
        && key_type.allowed_usage().contains(usage)
        && a.flags().is_some()
        && label_ok;
    if a.reserved.get() != 0 {
        return Err(ManifestError::ReservedNotZero);
    }
    if ok {
        Ok(key_type)
    } else {
        Err(bad)
    }
}

/// A parsed vHSM service manifest, checked to be exactly what
/// [`write_vhsm_manifest`] writes: magic and version, reserved fields zero, the
/// identity a strict P-384 SPKI, `key_count` key records in strictly increasing
/// key-id order, each with attributes the vault writes for an attestable key and
/// the strict SPKI of its type (empty for AES and HMAC keys), nothing after the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VhsmManifest<'a> {
    /// The header.
    pub header: VhsmManifestHeader,
    /// The vault identity key (SPKI DER).
    pub identity: &'a [u8],
    keys: &'a [u8],
}

/// Split `n` bytes off the front of `bytes`.
fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], ManifestError> {
    let (head, rest) = bytes.split_at_checked(n).ok_or(ManifestError::Truncated)?;
    *bytes = rest;
    Ok(head)
}

impl<'a> VhsmManifest<'a> {
    /// Parse and check a vHSM manifest.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ManifestError> {
        let (header, mut rest) =
            VhsmManifestHeader::read_from_prefix(bytes).map_err(|_| ManifestError::Truncated)?;
        if header.magic != VHSM_MANIFEST_MAGIC {
            return Err(ManifestError::BadMagic);
        }
        if header.manifest_version.get() != VHSM_MANIFEST_VERSION {
            return Err(ManifestError::UnsupportedVersion);
        }
        if !header.reserved_zero() {
            return Err(ManifestError::ReservedNotZero);
        }
        let identity = take(&mut rest, header.identity_len.get() as usize)?;
        check_spki(KeyType::EcdsaP384, identity)?;
        let keys = rest;
        let mut check = keys;
        let mut last_id = 0u32;
        for _ in 0..header.key_count.get() {
            let key = next_key(&mut check)?;
            let id = key.attributes.key_id.get();
            if id <= last_id {
                return Err(ManifestError::KeyOrder);
            }
            last_id = id;
            check_spki(check_attestable_attributes(&key.attributes)?, key.spki)?;
        }
        if !check.is_empty() {
            return Err(ManifestError::TrailingBytes);
        }
        Ok(Self {
            header,
            identity,
            keys,
        })
    }

    /// The attestable keys, in key-id order.
    pub fn keys(&self) -> impl Iterator<Item = ManifestKey<'a>> + Clone + '_ {
        let mut rest = self.keys;
        (0..self.header.key_count.get()).map_while(move |_| next_key(&mut rest).ok())
    }

    /// The encoded length ([`Self::write`] writes exactly this many bytes).
    pub fn encoded_len(&self) -> usize {
        size_of::<VhsmManifestHeader>() + self.identity.len() + self.keys.len()
    }

    /// Encode the manifest again from its parts (exactly [`Self::encoded_len`]
    /// bytes): the same bytes it was parsed from.
    pub fn write(&self, out: &mut [u8]) -> Result<(), ManifestError> {
        write_vhsm_manifest(&self.header, self.identity, self.keys(), out)
    }
}

fn next_key<'a>(rest: &mut &'a [u8]) -> Result<ManifestKey<'a>, ManifestError> {
    let head = ManifestKeyHead::read_from_bytes(take(rest, size_of::<ManifestKeyHead>())?)
        .map_err(|_| ManifestError::Truncated)?;
    let spki = take(rest, head.spki_len.get() as usize)?;
    Ok(ManifestKey {
        attributes: head.attributes,
        spki,
    })
}

/// The length of a vHSM manifest with `identity` and `keys`.
pub fn vhsm_manifest_len<'k>(
    identity: &[u8],
    keys: impl IntoIterator<Item = ManifestKey<'k>>,
) -> Option<usize> {
    keys.into_iter().try_fold(
        size_of::<VhsmManifestHeader>().checked_add(identity.len())?,
        |acc, k| acc.checked_add(size_of::<ManifestKeyHead>() + k.spki.len()),
    )
}

/// Write a vHSM manifest into `out` (exactly [`vhsm_manifest_len`] bytes): the
/// header (magic, version, `key_count` and `identity_len` set here, every other
/// field taken from `header`), the identity key, then each key's record, in the
/// order given (the vault gives them in key-id order).
pub fn write_vhsm_manifest<'k, I>(
    header: &VhsmManifestHeader,
    identity: &[u8],
    keys: I,
    out: &mut [u8],
) -> Result<(), ManifestError>
where
    I: IntoIterator<Item = ManifestKey<'k>>,
    I::IntoIter: Clone,
{
    let keys = keys.into_iter();
    let total = vhsm_manifest_len(identity, keys.clone()).ok_or(ManifestError::TooLarge)?;
    if out.len() != total {
        return Err(ManifestError::TooLarge);
    }
    let header = VhsmManifestHeader {
        magic: VHSM_MANIFEST_MAGIC,
        manifest_version: U32::new(VHSM_MANIFEST_VERSION),
        key_count: u32_of(keys.clone().count())?,
        identity_len: u32_of(identity.len())?,
        ..*header
    };
    let mut rest = out;
    let mut put = |data: &[u8]| {
        // In range: `out` is exactly the sum of the parts.
        let (d, r) = core::mem::take(&mut rest).split_at_mut(data.len());
        d.copy_from_slice(data);
        rest = r;
    };
    put(header.as_bytes());
    put(identity);
    for k in keys {
        let head = ManifestKeyHead {
            attributes: k.attributes,
            spki_len: u32_of(k.spki.len())?,
        };
        put(head.as_bytes());
        put(k.spki);
    }
    Ok(())
}

/// Magic of a key binding (version 2: the nonce first, then this magic at offset
/// 64, where every protocol-1 REPORT_DATA input has its manifest's own tag).
pub const KEY_BINDING_MAGIC: [u8; 16] = *b"NITRIDE-KEYBIND2";

/// Head of a key binding (the bytes whose SHA-512 is the REPORT_DATA of an
/// AttestKey report, 136 bytes): the caller's nonce, the magic, the key's
/// attributes, the SPKI's length, a reserved zero; then `spki_len` bytes of the
/// key's SPKI DER (empty for symmetric keys).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct KeyBindingHead {
    /// The caller's nonce.
    pub nonce: Nonce,
    /// [`KEY_BINDING_MAGIC`].
    pub magic: [u8; 16],
    /// The key's attributes at the time of the report.
    pub attributes: KeyAttributes,
    /// Length of the SPKI.
    pub spki_len: U32,
    /// Zero.
    pub reserved: U32,
}
const _: () = assert!(size_of::<KeyBindingHead>() == 136);
const _: () = assert!(offset_of!(KeyBindingHead, magic) == NONCE_SIZE);

/// A key binding, checked when parsed: magic, reserved zero, attributes the vault
/// writes for an attestable key, the strict SPKI of the key's type (empty for
/// symmetric keys), nothing after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyBinding<'a> {
    /// The caller's nonce.
    pub nonce: &'a Nonce,
    /// The key's attributes.
    pub attributes: KeyAttributes,
    /// The key's SPKI DER (empty for symmetric keys).
    pub spki: &'a [u8],
}

impl<'a> KeyBinding<'a> {
    /// Parse and check a key binding.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ManifestError> {
        let (head, mut rest) =
            KeyBindingHead::ref_from_prefix(bytes).map_err(|_| ManifestError::Truncated)?;
        if head.magic != KEY_BINDING_MAGIC {
            return Err(ManifestError::BadMagic);
        }
        if head.reserved.get() != 0 {
            return Err(ManifestError::ReservedNotZero);
        }
        let key_type = check_attestable_attributes(&head.attributes)?;
        let spki = take(&mut rest, head.spki_len.get() as usize)?;
        if !rest.is_empty() {
            return Err(ManifestError::TrailingBytes);
        }
        check_spki(key_type, spki)?;
        Ok(Self {
            nonce: &head.nonce,
            attributes: head.attributes,
            spki,
        })
    }

    /// The encoded length of this binding.
    pub fn encoded_len(&self) -> usize {
        size_of::<KeyBindingHead>() + self.spki.len()
    }

    /// Encode into `out` (exactly [`Self::encoded_len`] bytes).
    pub fn write(&self, out: &mut [u8]) -> Result<(), ManifestError> {
        if out.len() != self.encoded_len() {
            return Err(ManifestError::TooLarge);
        }
        let head = KeyBindingHead {
            nonce: *self.nonce,
            magic: KEY_BINDING_MAGIC,
            attributes: self.attributes,
            spki_len: u32_of(self.spki.len())?,
            reserved: U32::new(0),
        };
        let (h, s) = out.split_at_mut(size_of::<KeyBindingHead>());
        h.copy_from_slice(head.as_bytes());
        s.copy_from_slice(self.spki);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
pub(crate) mod tests {
    use super::*;

    /// Offsets of `struct svsm_attest_call` in Linux (arch/x86/include/asm/sev.h):
    /// `svsm_loc_entry` is `{ u64 pa; u32 len; u8 rsvd[4]; }`, four of them, then
    /// `service_guid[16]`, `service_manifest_ver` (u32), `rsvd[4]`.
    #[test]
    fn request_layout_matches_linux() {
        let mut req = SingleServiceRequest::default();
        req.base.report.gpa = U64::new(0x1111);
        req.base.report.size = U32::new(0x4A0);
        req.base.nonce.gpa = U64::new(0x2222);
        req.base.nonce.size = U32::new(64);
        req.base.manifest.gpa = U64::new(0x3333);
        req.base.manifest.size = U32::new(0x1000);
        req.base.certificates.gpa = U64::new(0x4444);
        req.base.certificates.size = U32::new(0x2000);
        req.service_guid = VHSM_SERVICE_GUID;
        req.manifest_version = U32::new(7);
        let b = req.as_bytes();
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        assert_eq!((u64_at(0x00), u32_at(0x08)), (0x1111, 0x4A0));
        assert_eq!((u64_at(0x10), u32_at(0x18)), (0x2222, 64));
        assert_eq!((u64_at(0x20), u32_at(0x28)), (0x3333, 0x1000));
        assert_eq!((u64_at(0x30), u32_at(0x38)), (0x4444, 0x2000));
        assert_eq!(&b[0x40..0x50], &VHSM_SERVICE_GUID);
        assert_eq!(u32_at(0x50), 7);
        assert_eq!(b.len(), 0x58);
        // The services request is the first 0x40 bytes.
        assert_eq!(b[..0x40], *req.base.as_bytes());
    }

    #[test]
    fn guid_byte_order() {
        // 63849ebb-3d92-4670-a1ff-58f9c94b87bb in UEFI order.
        assert_eq!(
            MANIFEST_TABLE_GUID,
            [
                0xbb, 0x9e, 0x84, 0x63, 0x92, 0x3d, 0x70, 0x46, 0xa1, 0xff, 0x58, 0xf9, 0xc9, 0x4b,
                0x87, 0xbb
            ]
        );
        assert_eq!(VHSM_SERVICE_GUID[..4], [0xbe, 0x3f, 0x3b, 0x2c]);
    }

    /// A P-384 SPKI DER (RFC 5480) around `point` (0x04 || X || Y, not checked to
    /// be on the curve: only the encoding matters here).
    pub(crate) fn p384_spki(fill: u8) -> std::vec::Vec<u8> {
        let mut v = std::vec![
            0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x05, 0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00, 0x04,
        ];
        v.extend_from_slice(&[fill; 96]);
        v
    }

    /// An Ed25519 SPKI DER (RFC 8410).
    pub(crate) fn ed25519_spki(fill: u8) -> std::vec::Vec<u8> {
        let mut v =
            std::vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
        v.extend_from_slice(&[fill; 32]);
        v
    }

    pub(crate) fn attrs(id: u32, key_type: KeyType) -> KeyAttributes {
        let mut a = KeyAttributes::default();
        a.key_id = U32::new(id);
        a.key_type = U16::new(key_type.raw());
        a.origin = Origin::Generated.raw();
        a.allowed_vmpls = VmplSet::all().bits();
        a.usage = U32::new(
            (KeyUsage::ATTEST | key_type.allowed_usage().intersection(KeyUsage::SIGN)).bits(),
        );
        a.label_len = 3;
        a.label[..3].copy_from_slice(b"key");
        a
    }

    fn table(entries: &[(Guid, &[u8])]) -> std::vec::Vec<u8> {
        let mut out = std::vec![0u8; manifest_table_len(entries).unwrap()];
        write_manifest_table(entries, &mut out).unwrap();
        out
    }

    #[test]
    fn manifest_table_round_trip() {
        let entries: [(Guid, &[u8]); 2] = [(VHSM_SERVICE_GUID, b"vault"), (VTPM_SERVICE_GUID, b"")];
        let len = manifest_table_len(&entries).unwrap();
        assert_eq!(len, 24 + 48 + 5);
        let out = table(&entries);
        let t = ManifestTable::parse(&out).unwrap();
        let got: std::vec::Vec<_> = t.entries().collect();
        assert_eq!(got, entries.to_vec());
        assert_eq!(t.find(&VHSM_SERVICE_GUID), Some(&b"vault"[..]));
        assert_eq!(t.find(&MANIFEST_TABLE_GUID), None);
        // Decode then encode is the identity.
        let mut again = [0u8; 77];
        t.write(&mut again).unwrap();
        assert_eq!(again[..], out[..]);
        assert_eq!(t.write(&mut [0u8; 76]), Err(ManifestError::TooLarge));
        // Entry pointing into the entry array, or past the end.
        let mut bad = out.clone();
        bad[24 + 16] = 30;
        assert_eq!(ManifestTable::parse(&bad), Err(ManifestError::BadEntry));
        let mut bad = out.clone();
        bad[24 + 20] = 6;
        assert_eq!(ManifestTable::parse(&bad), Err(ManifestError::BadEntry));
        assert_eq!(
            ManifestTable::parse(&out[..76]),
            Err(ManifestError::Truncated)
        );
        let mut bad = out.clone();
        bad[0] ^= 1;
        assert_eq!(ManifestTable::parse(&bad), Err(ManifestError::BadMagic));
        assert_eq!(
            write_manifest_table(&entries, &mut [0u8; 76]),
            Err(ManifestError::TooLarge)
        );
    }

    /// The table is exactly what the writer writes: entries in order, each right
    /// after the previous, covering the table; nothing unreferenced; no GUID twice.
    #[test]
    fn manifest_table_is_canonical() {
        let out = table(&[(VHSM_SERVICE_GUID, b"vault"), (VTPM_SERVICE_GUID, b"tpm")]);
        assert!(ManifestTable::parse(&out).is_ok());
        // Unreferenced bytes at the end, covered by total_len: refused.
        let mut longer = out.clone();
        longer.extend_from_slice(b"junk");
        let n = longer.len() as u32;
        longer[16..20].copy_from_slice(&n.to_le_bytes());
        assert_eq!(ManifestTable::parse(&longer), Err(ManifestError::BadEntry));
        // Unreferenced bytes between the entry array and the first entry.
        let mut gap = out.clone();
        gap.insert(72, 0);
        let n = gap.len() as u32;
        gap[16..20].copy_from_slice(&n.to_le_bytes());
        for e in 0..2 {
            let o = 24 + e * 24 + 16;
            let v = u32::from_le_bytes(gap[o..o + 4].try_into().unwrap()) + 1;
            gap[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
        assert_eq!(ManifestTable::parse(&gap), Err(ManifestError::BadEntry));
        // Entries out of order (the second's data first): refused.
        let mut swapped = out.clone();
        swapped[24 + 16..24 + 20].copy_from_slice(&75u32.to_le_bytes());
        swapped[48 + 16..48 + 20].copy_from_slice(&72u32.to_le_bytes());
        assert_eq!(ManifestTable::parse(&swapped), Err(ManifestError::BadEntry));
        // Overlapping entries.
        let mut overlap = out.clone();
        overlap[48 + 16..48 + 20].copy_from_slice(&74u32.to_le_bytes());
        assert_eq!(ManifestTable::parse(&overlap), Err(ManifestError::BadEntry));
        // The same GUID twice: refused by parser and writer.
        let dup = [
            (VHSM_SERVICE_GUID, &b"a"[..]),
            (VHSM_SERVICE_GUID, &b"b"[..]),
        ];
        let mut twice = out.clone();
        twice[48..64].copy_from_slice(&VHSM_SERVICE_GUID);
        assert_eq!(
            ManifestTable::parse(&twice),
            Err(ManifestError::DuplicateService)
        );
        let mut buf = [0u8; 74];
        assert_eq!(
            write_manifest_table(&dup, &mut buf),
            Err(ManifestError::DuplicateService)
        );
        // An empty table is the head alone.
        let empty = table(&[]);
        assert_eq!(empty.len(), 24);
        assert_eq!(ManifestTable::parse(&empty).unwrap().entries().count(), 0);
    }

    fn vhsm_manifest(keys: &[ManifestKey<'_>]) -> std::vec::Vec<u8> {
        let identity = p384_spki(0x11);
        let header = VhsmManifestHeader {
            protocol_version: U32::new(1),
            wire_version: U16::new(1),
            ..Default::default()
        };
        let len = vhsm_manifest_len(&identity, keys.iter().copied()).unwrap();
        let mut out = std::vec![0u8; len];
        write_vhsm_manifest(&header, &identity, keys.iter().copied(), &mut out).unwrap();
        out
    }

    #[test]
    fn vhsm_manifest_parse() {
        let (ec, ed) = (p384_spki(0x22), ed25519_spki(0x33));
        let keys = [
            ManifestKey {
                attributes: attrs(5, KeyType::EcdsaP384),
                spki: &ec,
            },
            ManifestKey {
                attributes: attrs(6, KeyType::Aes256),
                spki: b"",
            },
            ManifestKey {
                attributes: attrs(9, KeyType::Ed25519),
                spki: &ed,
            },
        ];
        let bytes = vhsm_manifest(&keys);
        assert_eq!(&bytes[..8], b"NTRDVHSM");
        assert_eq!(bytes.len(), 144 + 120 + 3 * 52 + 120 + 44);
        let m = VhsmManifest::parse(&bytes).unwrap();
        assert_eq!(m.identity, &p384_spki(0x11)[..]);
        assert_eq!(m.header.key_count.get(), 3);
        assert!(m.keys().eq(keys.iter().copied()));
        // Decode then encode is the identity.
        let mut again = std::vec![0u8; m.encoded_len()];
        m.write(&mut again).unwrap();
        assert_eq!(again, bytes);
        assert_eq!(
            VhsmManifest::parse(&bytes[..bytes.len() - 1]),
            Err(ManifestError::Truncated)
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            VhsmManifest::parse(&longer),
            Err(ManifestError::TrailingBytes)
        );
        // Reserved fields.
        for at in [18, 28] {
            let mut bad = bytes.clone();
            bad[at] = 1;
            assert_eq!(
                VhsmManifest::parse(&bad),
                Err(ManifestError::ReservedNotZero)
            );
        }
    }

    /// Every key and the identity must be the strict SPKI of their type; attributes
    /// as the vault writes them, ids increasing.
    #[test]
    fn vhsm_manifest_is_strict() {
        let ec = p384_spki(0x22);
        let one = |attributes: KeyAttributes, spki: &[u8]| {
            vhsm_manifest(&[ManifestKey { attributes, spki }])
        };
        let ok = one(attrs(5, KeyType::EcdsaP384), &ec);
        assert!(VhsmManifest::parse(&ok).is_ok());
        // An SPKI followed by anything (OpenSSL would read the first key).
        let mut trailing = ec.clone();
        trailing.push(0);
        let m = one(attrs(5, KeyType::EcdsaP384), &trailing);
        assert_eq!(VhsmManifest::parse(&m), Err(ManifestError::BadPublicKey));
        // The wrong key type's SPKI; an SPKI for a symmetric key.
        for (t, spki) in [
            (KeyType::Ed25519, ec.clone()),
            (KeyType::EcdsaP384, ed25519_spki(1)),
            (KeyType::HmacSha384, ec.clone()),
        ] {
            assert_eq!(
                VhsmManifest::parse(&one(attrs(5, t), &spki)),
                Err(ManifestError::BadPublicKey),
                "{t:?}"
            );
        }
        // A compressed point, a non-minimal length, another curve's OID.
        let mut compressed = ec.clone();
        compressed[23] = 0x02;
        let mut long_len = ec.clone();
        long_len.splice(1..2, [0x81, 0x76]);
        let mut p256 = ec.clone();
        p256[19] = 0x23;
        for spki in [compressed, long_len, p256] {
            assert_eq!(
                VhsmManifest::parse(&one(attrs(5, KeyType::EcdsaP384), &spki)),
                Err(ManifestError::BadPublicKey)
            );
        }
        // Identity that is not a P-384 SPKI.
        let mut bad_identity = ok.clone();
        bad_identity[size_of::<VhsmManifestHeader>() + 5] ^= 1;
        // Every reserved field of the header: offsets 18 (u16) and 28 (u32). Offset 36
        // is the state generation (sealing): any value parses and reads back.
        for at in [18, 28] {
            let mut m = ok.clone();
            m[at] = 1;
            assert_eq!(
                VhsmManifest::parse(&m),
                Err(ManifestError::ReservedNotZero),
                "{at}"
            );
        }
        let mut generation = ok.clone();
        generation[36] = 7;
        assert_eq!(
            VhsmManifest::parse(&generation)
                .unwrap()
                .header
                .state_generation
                .get(),
            7
        );
        assert_eq!(
            VhsmManifest::parse(&bad_identity),
            Err(ManifestError::BadPublicKey)
        );
        // Attributes the vault never writes.
        let mut no_attest = attrs(5, KeyType::EcdsaP384);
        no_attest.usage = U32::new(KeyUsage::SIGN.bits());
        let mut bad_type = attrs(5, KeyType::EcdsaP384);
        bad_type.key_type = U16::new(9);
        let mut label_junk = attrs(5, KeyType::EcdsaP384);
        label_junk.label[20] = 1;
        let mut wrong_usage = attrs(5, KeyType::EcdsaP384);
        wrong_usage.usage = U32::new((KeyUsage::ATTEST | KeyUsage::ENCRYPT).bits());
        let mut zero_id = attrs(5, KeyType::EcdsaP384);
        zero_id.key_id = U32::new(0);
        assert_eq!(
            check_attestable_attributes(&zero_id),
            Err(ManifestError::BadAttributes)
        );
        for a in [no_attest, bad_type, label_junk, wrong_usage] {
            assert_eq!(
                VhsmManifest::parse(&one(a, &ec)),
                Err(ManifestError::BadAttributes),
                "{a:?}"
            );
        }
        let mut reserved = attrs(5, KeyType::EcdsaP384);
        reserved.reserved = U16::new(1);
        assert_eq!(
            VhsmManifest::parse(&one(reserved, &ec)),
            Err(ManifestError::ReservedNotZero)
        );
        // Ids must increase.
        let k = |id| ManifestKey {
            attributes: attrs(id, KeyType::Aes256),
            spki: b"",
        };
        assert!(VhsmManifest::parse(&vhsm_manifest(&[k(1), k(2)])).is_ok());
        for keys in [[k(2), k(1)], [k(2), k(2)]] {
            assert_eq!(
                VhsmManifest::parse(&vhsm_manifest(&keys)),
                Err(ManifestError::KeyOrder)
            );
        }
    }

    #[test]
    fn key_binding_round_trip() {
        let spki = p384_spki(0x44);
        let nonce = [0x6E; 64];
        let b = KeyBinding {
            nonce: &nonce,
            attributes: attrs(9, KeyType::EcdsaP384),
            spki: &spki,
        };
        let mut out = std::vec![0u8; b.encoded_len()];
        assert_eq!(out.len(), 136 + 120);
        b.write(&mut out).unwrap();
        assert_eq!(&out[..64], &nonce);
        assert_eq!(&out[64..80], b"NITRIDE-KEYBIND2");
        assert_eq!(&out[128..136], &[120, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&out[136..], &spki[..]);
        assert_eq!(KeyBinding::parse(&out), Ok(b));
        assert_eq!(
            KeyBinding::parse(&out[..out.len() - 1]),
            Err(ManifestError::Truncated)
        );
        let mut longer = out.clone();
        longer.push(0);
        assert_eq!(
            KeyBinding::parse(&longer),
            Err(ManifestError::TrailingBytes)
        );
        // An SPKI with bytes after the key inside its declared length: refused.
        let mut padded = out.clone();
        padded.push(0);
        padded[128] += 1;
        assert_eq!(KeyBinding::parse(&padded), Err(ManifestError::BadPublicKey));
        let mut reserved = out.clone();
        reserved[132] = 1;
        assert_eq!(
            KeyBinding::parse(&reserved),
            Err(ManifestError::ReservedNotZero)
        );
        // The old layout (magic first) is not a binding.
        let mut old = std::vec::Vec::from(&b"NITRIDE-KEYBIND1"[..]);
        old.extend_from_slice(&out);
        assert_eq!(KeyBinding::parse(&old), Err(ManifestError::BadMagic));
    }
}
