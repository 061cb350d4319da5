//! The SVSM attestation protocol (protocol 1, REFERENCE.md section 3) and the
//! evidence formats Nitride defines on top of it.
//!
//! - [`ServicesRequest`] / [`SingleServiceRequest`]: the request structures of
//!   ATTEST_SERVICES and ATTEST_SINGLE_SERVICE, byte for byte as Linux's configfs-tsm
//!   SVSM path writes them (`struct svsm_attest_call`).
//! - The services manifest: a GUID table (header GUID [`MANIFEST_TABLE_GUID`], total
//!   length, entry count; 24-byte entries; then the data). [`ManifestTable`] reads
//!   one; [`manifest_table_len`] / [`write_manifest_table`] build one.
//! - The vHSM's entry in that table ([`VHSM_SERVICE_GUID`]): a [`VhsmManifestHeader`],
//!   the vault identity public key, then one [`ManifestKeyHead`] + SPKI per attestable
//!   key. [`VhsmManifest`] reads one.
//! - The key binding hashed into REPORT_DATA by the vHSM's AttestKey operation:
//!   [`KeyBindingHead`], the caller's nonce, the key's SPKI ([`KeyBinding`] reads one).
//!
//! REPORT_DATA is always SHA-512 of the bytes a relying party receives: `nonce ||
//! manifest` for the attestation protocol, the key-binding bytes for AttestKey.

use core::mem::{offset_of, size_of};

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::snp::{guid, Guid};
use crate::vhsm::KeyAttributes;

/// Call numbers of protocol 1.
pub mod attest_call {
    /// Attest all services: REPORT_DATA binds the whole services manifest.
    pub const SERVICES: u32 = 0;
    /// Attest one service, named by GUID, at a given manifest version.
    pub const SINGLE_SERVICE: u32 = 1;
}

/// The attestation protocol version served.
pub const ATTEST_PROTOCOL_VERSION: u32 = 1;

/// Largest nonce the SVSM accepts (Linux passes 64 bytes).
pub const MAX_NONCE_SIZE: u32 = 4096;

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
    /// An entry points outside the table or overlaps the header.
    BadEntry,
    /// A length does not fit in 32 bits, or an output buffer is too small.
    TooLarge,
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
/// in the same order.
pub fn write_manifest_table(
    entries: &[(Guid, &[u8])],
    out: &mut [u8],
) -> Result<(), ManifestError> {
    let total = manifest_table_len(entries).ok_or(ManifestError::TooLarge)?;
    if out.len() != total {
        return Err(ManifestError::TooLarge);
    }
    let u32_of = |n: usize| u32::try_from(n).map_err(|_| ManifestError::TooLarge);
    let head = ManifestTableHead {
        guid: MANIFEST_TABLE_GUID,
        total_len: U32::new(u32_of(total)?),
        entry_count: U32::new(u32_of(entries.len())?),
    };
    let (h, mut rest) = out.split_at_mut(size_of::<ManifestTableHead>());
    h.copy_from_slice(head.as_bytes());
    let mut data_at =
        size_of::<ManifestTableHead>() + entries.len() * size_of::<ManifestTableEntry>();
    for (g, data) in entries {
        let entry = ManifestTableEntry {
            guid: *g,
            offset: U32::new(u32_of(data_at)?),
            len: U32::new(u32_of(data.len())?),
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

/// A services manifest table, checked: every entry lies inside the table, after the
/// entry array.
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
        let data_start = size_of::<ManifestTableHead>() + count * size_of::<ManifestTableEntry>();
        for e in entries {
            let start = e.offset.get() as usize;
            let end = start
                .checked_add(e.len.get() as usize)
                .ok_or(ManifestError::BadEntry)?;
            if start < data_start || end > total {
                return Err(ManifestError::BadEntry);
            }
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

    /// The manifest of one service, if listed.
    pub fn find(&self, service: &Guid) -> Option<&'a [u8]> {
        self.entries().find(|(g, _)| g == service).map(|(_, d)| d)
    }
}

/// Magic of the vHSM's service manifest.
pub const VHSM_MANIFEST_MAGIC: [u8; 8] = *b"NTRDVHSM";
/// Version of the vHSM manifest layout. Version 2 appended the vault policy and the
/// audit log's count and chain to the header.
pub const VHSM_MANIFEST_VERSION: u32 = 2;

/// Head of the vHSM's service manifest (96 bytes). Followed by the vault identity
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
    /// Zero.
    pub reserved3: U32,
    /// Audit entries the vault has recorded since it started (the last one's
    /// sequence number).
    pub audit_count: U64,
    /// The audit chain value after that entry (`vhsm::AuditEntry::chain`; zeros when
    /// none was recorded).
    pub audit_chain: [u8; 48],
}
const _: () = assert!(size_of::<VhsmManifestHeader>() == 96);

impl Default for VhsmManifestHeader {
    fn default() -> Self {
        zerocopy::FromZeros::new_zeroed()
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

/// A parsed vHSM service manifest.
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
    /// Parse and check a vHSM manifest (every record complete, nothing after the
    /// last).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ManifestError> {
        let (header, mut rest) =
            VhsmManifestHeader::read_from_prefix(bytes).map_err(|_| ManifestError::Truncated)?;
        if header.magic != VHSM_MANIFEST_MAGIC {
            return Err(ManifestError::BadMagic);
        }
        if header.manifest_version.get() != VHSM_MANIFEST_VERSION {
            return Err(ManifestError::UnsupportedVersion);
        }
        let identity = take(&mut rest, header.identity_len.get() as usize)?;
        let keys = rest;
        let mut check = keys;
        for _ in 0..header.key_count.get() {
            next_key(&mut check)?;
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

    /// The attestable keys: attributes and SPKI DER.
    pub fn keys(&self) -> impl Iterator<Item = (KeyAttributes, &'a [u8])> + '_ {
        let mut rest = self.keys;
        (0..self.header.key_count.get()).map_while(move |_| next_key(&mut rest).ok())
    }
}

fn next_key<'a>(rest: &mut &'a [u8]) -> Result<(KeyAttributes, &'a [u8]), ManifestError> {
    let head = ManifestKeyHead::read_from_bytes(take(rest, size_of::<ManifestKeyHead>())?)
        .map_err(|_| ManifestError::Truncated)?;
    let spki = take(rest, head.spki_len.get() as usize)?;
    Ok((head.attributes, spki))
}

/// Magic of a key binding.
pub const KEY_BINDING_MAGIC: [u8; 16] = *b"NITRIDE-KEYBIND1";
/// Largest nonce AttestKey accepts.
pub const MAX_KEY_BINDING_NONCE: usize = 256;

/// Head of a key binding (the bytes whose SHA-512 is the REPORT_DATA of an
/// AttestKey report): magic, lengths, the key's attributes; then `nonce_len` bytes
/// of the caller's nonce, then `spki_len` bytes of the key's SPKI DER (empty for
/// symmetric keys).
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
pub struct KeyBindingHead {
    /// [`KEY_BINDING_MAGIC`].
    pub magic: [u8; 16],
    /// Length of the nonce.
    pub nonce_len: U32,
    /// Length of the SPKI.
    pub spki_len: U32,
    /// The key's attributes at the time of the report.
    pub attributes: KeyAttributes,
}
const _: () = assert!(size_of::<KeyBindingHead>() == 72);

/// A parsed key binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyBinding<'a> {
    /// The key's attributes.
    pub attributes: KeyAttributes,
    /// The caller's nonce.
    pub nonce: &'a [u8],
    /// The key's SPKI DER (empty for symmetric keys).
    pub spki: &'a [u8],
}

impl<'a> KeyBinding<'a> {
    /// Parse a key binding; nothing may follow the SPKI.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ManifestError> {
        let (head, mut rest) =
            KeyBindingHead::read_from_prefix(bytes).map_err(|_| ManifestError::Truncated)?;
        if head.magic != KEY_BINDING_MAGIC {
            return Err(ManifestError::BadMagic);
        }
        let nonce = take(&mut rest, head.nonce_len.get() as usize)?;
        let spki = take(&mut rest, head.spki_len.get() as usize)?;
        if !rest.is_empty() {
            return Err(ManifestError::TrailingBytes);
        }
        Ok(Self {
            attributes: head.attributes,
            nonce,
            spki,
        })
    }

    /// The encoded length of this binding.
    pub fn encoded_len(&self) -> usize {
        size_of::<KeyBindingHead>() + self.nonce.len() + self.spki.len()
    }

    /// Encode into `out` (exactly [`Self::encoded_len`] bytes).
    pub fn write(&self, out: &mut [u8]) -> Result<(), ManifestError> {
        if out.len() != self.encoded_len() {
            return Err(ManifestError::TooLarge);
        }
        let u32_of = |n: usize| u32::try_from(n).map_err(|_| ManifestError::TooLarge);
        let head = KeyBindingHead {
            magic: KEY_BINDING_MAGIC,
            nonce_len: U32::new(u32_of(self.nonce.len())?),
            spki_len: U32::new(u32_of(self.spki.len())?),
            attributes: self.attributes,
        };
        let (h, rest) = out.split_at_mut(size_of::<KeyBindingHead>());
        h.copy_from_slice(head.as_bytes());
        let (n, s) = rest.split_at_mut(self.nonce.len());
        n.copy_from_slice(self.nonce);
        s.copy_from_slice(self.spki);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::field_reassign_with_default)]
mod tests {
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

    #[test]
    fn manifest_table_round_trip() {
        let entries: [(Guid, &[u8]); 2] = [(VHSM_SERVICE_GUID, b"vault"), (VTPM_SERVICE_GUID, b"")];
        let len = manifest_table_len(&entries).unwrap();
        assert_eq!(len, 24 + 48 + 5);
        let mut out = [0u8; 77];
        write_manifest_table(&entries, &mut out).unwrap();
        let t = ManifestTable::parse(&out).unwrap();
        let got: std::vec::Vec<_> = t.entries().collect();
        assert_eq!(got, entries.to_vec());
        assert_eq!(t.find(&VHSM_SERVICE_GUID), Some(&b"vault"[..]));
        assert_eq!(t.find(&MANIFEST_TABLE_GUID), None);
        // Entry pointing into the entry array, or past the end.
        let mut bad = out;
        bad[24 + 16] = 30;
        assert_eq!(ManifestTable::parse(&bad), Err(ManifestError::BadEntry));
        let mut bad = out;
        bad[24 + 20] = 6;
        assert_eq!(ManifestTable::parse(&bad), Err(ManifestError::BadEntry));
        assert_eq!(
            ManifestTable::parse(&out[..76]),
            Err(ManifestError::Truncated)
        );
        let mut bad = out;
        bad[0] ^= 1;
        assert_eq!(ManifestTable::parse(&bad), Err(ManifestError::BadMagic));
        assert_eq!(
            write_manifest_table(&entries, &mut [0u8; 76]),
            Err(ManifestError::TooLarge)
        );
    }

    #[test]
    fn vhsm_manifest_parse() {
        let mut bytes = std::vec::Vec::new();
        let header = VhsmManifestHeader {
            magic: VHSM_MANIFEST_MAGIC,
            manifest_version: U32::new(VHSM_MANIFEST_VERSION),
            protocol_version: U32::new(1),
            wire_version: U16::new(1),
            key_count: U32::new(2),
            identity_len: U32::new(3),
            ..Default::default()
        };
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(b"IDK");
        for (id, spki) in [(5u32, &b"spki5"[..]), (6, &b""[..])] {
            let mut head = ManifestKeyHead::default();
            head.attributes.key_id = U32::new(id);
            head.spki_len = U32::new(spki.len() as u32);
            bytes.extend_from_slice(head.as_bytes());
            bytes.extend_from_slice(spki);
        }
        let m = VhsmManifest::parse(&bytes).unwrap();
        assert_eq!(m.identity, b"IDK");
        let keys: std::vec::Vec<_> = m.keys().map(|(a, s)| (a.key_id.get(), s)).collect();
        assert_eq!(keys, [(5, &b"spki5"[..]), (6, &b""[..])]);
        assert_eq!(
            VhsmManifest::parse(&bytes[..bytes.len() - 1]),
            Err(ManifestError::Truncated)
        );
        bytes.push(0);
        assert_eq!(
            VhsmManifest::parse(&bytes),
            Err(ManifestError::TrailingBytes)
        );
    }

    #[test]
    fn key_binding_round_trip() {
        let mut attributes = KeyAttributes::default();
        attributes.key_id = U32::new(9);
        let b = KeyBinding {
            attributes,
            nonce: &[1, 2, 3],
            spki: &[4, 5],
        };
        let mut out = [0u8; 77];
        b.write(&mut out).unwrap();
        assert_eq!(&out[..16], b"NITRIDE-KEYBIND1");
        assert_eq!(&out[16..24], &[3, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(&out[72..], &[1, 2, 3, 4, 5]);
        assert_eq!(KeyBinding::parse(&out), Ok(b));
        assert_eq!(KeyBinding::parse(&out[..76]), Err(ManifestError::Truncated));
    }
}
