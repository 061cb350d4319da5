//! Sealed blobs: data and vault state encrypted so that only the same SVSM image, on
//! the same chip, at VMPL0, can open them.
//!
//! A blob is a [`SealedHeader`] (80 bytes), then the AES-256-GCM ciphertext of the
//! payload, then the 16-byte tag. The AEAD key and nonce are
//!
//! ```text
//! OKM (44 bytes) = HKDF-SHA-384(salt = header.salt, IKM = the PSP-derived sealing key,
//!                               info = SEAL_INFO_DOMAIN || header (80 bytes))
//! key = OKM[0..32], nonce = OKM[32..44], AAD = header (80 bytes)
//! ```
//!
//! where the sealing key is the PSP's MSG_KEY_REQ answer to [`sealing_key_request`]
//! for the TCB in the header: rooted in the VCEK (KEY_SEL explicitly VCEK, so a host
//! installing a VLEK changes nothing), derived for VMPL 0 (no lower VMPL can ask for
//! it), mixing in [`SEALING_FIELDS`]: the guest policy, the launch measurement and the
//! TCB version. Every blob has its own random salt, so every blob has its own key and
//! nonce. `docs/sealing.md` is the normative description, with the rollback and
//! cloning notes.
//!
//! Blobs are opaque to the guest, which only stores them. [`SealedHeader::parse`] is
//! canonical: any value the SVSM would not write is refused before any key is asked
//! for.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::snp::msg::{guest_field, KeyReq};
use crate::vhsm::VmplSet;

/// Magic at the start of every blob.
pub const SEALED_MAGIC: [u8; 8] = *b"NTRSEAL\0";
/// The blob format version this module writes and reads.
pub const SEALED_VERSION: u16 = 1;
/// Size of [`SealedHeader`].
pub const SEALED_HEADER_LEN: usize = 80;
/// Length of the GCM tag after the ciphertext.
pub const SEALED_TAG_LEN: usize = 16;
/// Domain string at the start of the HKDF `info`.
pub const SEAL_INFO_DOMAIN: &[u8] = b"nitride sealed blob v1\0";

/// Largest caller payload `Seal` accepts.
pub const MAX_SEAL_DATA_LEN: usize = 8 * 1024;
/// Largest vault-state payload (64 keys of the largest type fit with room to spare).
pub const MAX_STATE_PAYLOAD_LEN: usize = 16 * 1024;
/// Largest key payload (`SealKey`): the key's 48-byte attributes and the largest
/// material (48 bytes).
pub const MAX_KEY_PAYLOAD_LEN: usize = 96;
/// Largest blob of any purpose.
pub const MAX_SEALED_LEN: usize = SEALED_HEADER_LEN + MAX_STATE_PAYLOAD_LEN + SEALED_TAG_LEN;

/// The guest fields the sealing key mixes in: the guest policy, the launch
/// measurement and the TCB version (`KeyReq::guest_field_select`).
///
/// - MEASUREMENT: another SVSM build, another guest image or another launch
///   configuration (the launch digest covers every measured page of the IGVM image)
///   gets another key.
/// - GUEST_POLICY: a launch that allows debugging (whose memory the host can read)
///   gets another key.
/// - TCB_VERSION: the key is rooted in the VCEK at the TCB stored in the header; after
///   a firmware update the old blob is opened at the old TCB and sealed again at the
///   new one (a rollback of the PSP firmware below the stored TCB cannot derive it).
///
/// Not mixed in: IMAGE_ID, FAMILY_ID, GUEST_SVN (no ID block is used), the launch
/// mitigation vector (version-5 reports only).
pub const SEALING_FIELDS: u64 =
    guest_field::POLICY | guest_field::MEASUREMENT | guest_field::TCB_VERSION;

/// KEY_SEL = VCEK, explicitly (bits 2:1 of `key_select` = 1); root key VCEK (bit 0 =
/// 0).
pub const SEALING_KEY_SELECT: u32 = 1 << 1;

/// The VMPL the sealing key is derived for.
pub const SEALING_KEY_VMPL: u8 = 0;

/// The MSG_KEY_REQ body the SVSM sends for a sealing key at `tcb` (the raw 8 bytes of
/// a TCB_VERSION).
pub fn sealing_key_request(tcb: [u8; 8]) -> KeyReq {
    KeyReq {
        root_key_select: U32::new(SEALING_KEY_SELECT),
        reserved: U32::new(0),
        guest_field_select: U64::new(SEALING_FIELDS),
        vmpl: U32::new(u32::from(SEALING_KEY_VMPL)),
        guest_svn: U32::new(0),
        tcb_version: U64::from_bytes(tcb),
    }
}

/// What a blob holds (`SealedHeader::purpose`). A blob of one purpose is never
/// opened as another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Purpose {
    /// Caller data (`Seal` / `Unseal`).
    Data = 1,
    /// The vault's persistent state (`ExportState` / `ImportState`).
    VaultState = 2,
    /// One key with RELEASE usage (`SealKey` / `UnsealKey`).
    Key = 3,
}

impl Purpose {
    /// Decode a wire value.
    pub const fn from_raw(raw: u16) -> Option<Self> {
        match raw {
            1 => Some(Self::Data),
            2 => Some(Self::VaultState),
            3 => Some(Self::Key),
            _ => None,
        }
    }
}

/// The header of a sealed blob (80 bytes, little-endian), authenticated as AAD.
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
pub struct SealedHeader {
    /// [`SEALED_MAGIC`].
    pub magic: [u8; 8],
    /// [`SEALED_VERSION`].
    pub version: U16,
    /// A [`Purpose`].
    pub purpose: U16,
    /// The unsealing rule: the VMPLs (a [`VmplSet`]) that may open a data blob;
    /// VMPL0 only ([`VmplSet::VMPL0`]'s bits = 1) for a state blob.
    pub vmpl_rule: u8,
    /// The VMPL the sealing key was derived for: [`SEALING_KEY_VMPL`].
    pub key_vmpl: u8,
    /// Zero.
    pub reserved: U16,
    /// The KEY_REQ guest field select: [`SEALING_FIELDS`].
    pub field_select: U64,
    /// The raw TCB_VERSION the sealing key was derived at.
    pub tcb: [u8; 8],
    /// The state generation (vault state; from 1); 0 for data blobs.
    pub generation: U64,
    /// Random, per blob: the HKDF salt.
    pub salt: [u8; 32],
    /// Length of the ciphertext (= the payload's).
    pub payload_len: U32,
    /// Zero.
    pub reserved2: U32,
}
const _: () = assert!(core::mem::size_of::<SealedHeader>() == SEALED_HEADER_LEN);

/// Why a blob was refused before decryption.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SealedError {
    /// Shorter than header and tag, or longer than [`MAX_SEALED_LEN`].
    Length,
    /// Not [`SEALED_MAGIC`].
    Magic,
    /// Not [`SEALED_VERSION`].
    Version,
    /// Another purpose than the operation expects.
    Purpose,
    /// A field the SVSM never writes (VMPL rule, key VMPL, field select, reserved,
    /// generation of a data blob).
    Field,
    /// `payload_len` disagrees with the blob's length, or exceeds the purpose's limit.
    PayloadLength,
}

impl SealedHeader {
    /// Split and check a blob expected to be of `purpose`: returns the header and
    /// `ciphertext || tag`. Checks every field against what the SVSM writes.
    pub fn parse(blob: &[u8], purpose: Purpose) -> Result<(Self, &[u8]), SealedError> {
        if blob.len() > MAX_SEALED_LEN {
            return Err(SealedError::Length);
        }
        let (header, rest) = Self::read_from_prefix(blob).map_err(|_| SealedError::Length)?;
        if rest.len() < SEALED_TAG_LEN {
            return Err(SealedError::Length);
        }
        if header.magic != SEALED_MAGIC {
            return Err(SealedError::Magic);
        }
        if header.version.get() != SEALED_VERSION {
            return Err(SealedError::Version);
        }
        if Purpose::from_raw(header.purpose.get()) != Some(purpose) {
            return Err(SealedError::Purpose);
        }
        let rule_ok = match purpose {
            Purpose::Data | Purpose::Key => {
                VmplSet::from_bits(header.vmpl_rule).is_some_and(|s| !s.is_empty())
            }
            Purpose::VaultState => header.vmpl_rule == VmplSet::VMPL0.bits(),
        };
        if !rule_ok
            || header.key_vmpl != SEALING_KEY_VMPL
            || header.reserved.get() != 0
            || header.reserved2.get() != 0
            || header.field_select.get() != SEALING_FIELDS
            || (purpose != Purpose::VaultState && header.generation.get() != 0)
            || (purpose == Purpose::VaultState && header.generation.get() == 0)
        {
            return Err(SealedError::Field);
        }
        let limit = match purpose {
            Purpose::Data => MAX_SEAL_DATA_LEN,
            Purpose::VaultState => MAX_STATE_PAYLOAD_LEN,
            Purpose::Key => MAX_KEY_PAYLOAD_LEN,
        };
        let len = usize::try_from(header.payload_len.get()).map_err(|_| SealedError::Length)?;
        if len > limit || Some(rest.len()) != len.checked_add(SEALED_TAG_LEN) {
            return Err(SealedError::PayloadLength);
        }
        Ok((header, rest))
    }

    /// The blob's total length: header, payload, tag.
    pub fn blob_len(&self) -> usize {
        SEALED_HEADER_LEN + self.payload_len.get() as usize + SEALED_TAG_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn header(purpose: Purpose, len: u32) -> SealedHeader {
        SealedHeader {
            magic: SEALED_MAGIC,
            version: U16::new(SEALED_VERSION),
            purpose: U16::new(purpose as u16),
            vmpl_rule: 1,
            key_vmpl: 0,
            field_select: U64::new(SEALING_FIELDS),
            tcb: [1, 2, 3, 4, 5, 6, 7, 8],
            generation: U64::new(if purpose == Purpose::VaultState { 7 } else { 0 }),
            salt: [0x5A; 32],
            payload_len: U32::new(len),
            ..SealedHeader::default()
        }
    }

    fn blob(h: &SealedHeader, body: usize) -> Vec<u8> {
        let mut b = h.as_bytes().to_vec();
        b.resize(SEALED_HEADER_LEN + body, 0xEE);
        b
    }

    #[test]
    fn well_formed_blobs_parse() {
        for purpose in [Purpose::Data, Purpose::VaultState, Purpose::Key] {
            let h = header(purpose, 5);
            let b = blob(&h, 5 + SEALED_TAG_LEN);
            let (parsed, rest) = SealedHeader::parse(&b, purpose).unwrap();
            assert_eq!(parsed, h);
            assert_eq!(rest.len(), 5 + SEALED_TAG_LEN);
            assert_eq!(parsed.blob_len(), b.len());
        }
    }

    #[test]
    fn every_header_field_is_checked() {
        let good = header(Purpose::Data, 0);
        type Mutation = fn(&mut SealedHeader);
        let cases: [(Mutation, SealedError); 11] = [
            (|h| h.magic[0] ^= 1, SealedError::Magic),
            (|h| h.version = U16::new(2), SealedError::Version),
            (|h| h.purpose = U16::new(2), SealedError::Purpose),
            (|h| h.purpose = U16::new(0), SealedError::Purpose),
            (|h| h.vmpl_rule = 0, SealedError::Field),
            (|h| h.vmpl_rule = 0x10, SealedError::Field),
            (|h| h.key_vmpl = 1, SealedError::Field),
            (|h| h.reserved = U16::new(1), SealedError::Field),
            (|h| h.reserved2 = U32::new(1), SealedError::Field),
            (
                |h| h.field_select = U64::new(guest_field::POLICY),
                SealedError::Field,
            ),
            (|h| h.generation = U64::new(1), SealedError::Field),
        ];
        for (mutate, want) in cases {
            let mut h = good;
            mutate(&mut h);
            let b = blob(&h, SEALED_TAG_LEN);
            assert_eq!(SealedHeader::parse(&b, Purpose::Data), Err(want), "{h:?}");
        }
        // A key blob is never opened as data, nor the other way round, and carries
        // no generation.
        let k = header(Purpose::Key, 5);
        let b = blob(&k, 5 + SEALED_TAG_LEN);
        assert_eq!(
            SealedHeader::parse(&b, Purpose::Data),
            Err(SealedError::Purpose)
        );
        let mut k7 = k;
        k7.generation = U64::new(7);
        let b = blob(&k7, 5 + SEALED_TAG_LEN);
        assert_eq!(
            SealedHeader::parse(&b, Purpose::Key),
            Err(SealedError::Field)
        );
        let big = header(Purpose::Key, (MAX_KEY_PAYLOAD_LEN + 1) as u32);
        let b = blob(&big, MAX_KEY_PAYLOAD_LEN + 1 + SEALED_TAG_LEN);
        assert_eq!(
            SealedHeader::parse(&b, Purpose::Key),
            Err(SealedError::PayloadLength)
        );
        // A state blob is VMPL0-only.
        let mut s = header(Purpose::VaultState, 0);
        s.vmpl_rule = 3;
        let b = blob(&s, SEALED_TAG_LEN);
        assert_eq!(
            SealedHeader::parse(&b, Purpose::VaultState),
            Err(SealedError::Field)
        );
        // Generations start at 1.
        let mut s = header(Purpose::VaultState, 0);
        s.generation = U64::new(0);
        let b = blob(&s, SEALED_TAG_LEN);
        assert_eq!(
            SealedHeader::parse(&b, Purpose::VaultState),
            Err(SealedError::Field)
        );
    }

    #[test]
    fn truncation_and_length_mismatch_are_refused() {
        let h = header(Purpose::Data, 4);
        let b = blob(&h, 4 + SEALED_TAG_LEN);
        for cut in 0..b.len() {
            assert!(
                SealedHeader::parse(&b[..cut], Purpose::Data).is_err(),
                "{cut}"
            );
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(
            SealedHeader::parse(&long, Purpose::Data),
            Err(SealedError::PayloadLength)
        );
        let big = header(Purpose::Data, (MAX_SEAL_DATA_LEN + 1) as u32);
        let b = blob(&big, MAX_SEAL_DATA_LEN + 1 + SEALED_TAG_LEN);
        assert_eq!(
            SealedHeader::parse(&b, Purpose::Data),
            Err(SealedError::PayloadLength)
        );
    }

    #[test]
    fn the_key_request_selects_vcek_vmpl0_and_the_stored_tcb() {
        let req = sealing_key_request([9, 0, 0, 0, 0, 0, 23, 72]);
        assert_eq!(req.root_key_select.get(), 0b010);
        assert_eq!(req.vmpl.get(), 0);
        assert_eq!(req.guest_field_select.get(), 0b10_1001);
        assert_eq!(
            req.tcb_version.get().to_le_bytes(),
            [9, 0, 0, 0, 0, 0, 23, 72]
        );
    }
}
