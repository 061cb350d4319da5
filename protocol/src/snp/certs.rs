//! The certificate table returned by an extended guest request (REFERENCE.md
//! section 6): 24-byte entries (GUID, offset, length) ended by an all-zero entry,
//! offsets counted from the start of the table.

use core::fmt;
use core::mem::size_of;

use zerocopy::byteorder::little_endian::U32;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{guid, Guid};

/// VCEK certificate `63da758d-e664-4564-adc5-f4b93be8accd`.
pub const GUID_VCEK: Guid = guid(
    0x63da_758d,
    0xe664,
    0x4564,
    [0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd],
);
/// VLEK certificate `a8074bc2-a25a-483e-aae6-39c045a0b8a1`.
pub const GUID_VLEK: Guid = guid(
    0xa807_4bc2,
    0xa25a,
    0x483e,
    [0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1],
);
/// ASK certificate `4ab7b379-bbac-4fe4-a02f-05aef327c782`.
pub const GUID_ASK: Guid = guid(
    0x4ab7_b379,
    0xbbac,
    0x4fe4,
    [0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82],
);
/// ARK certificate `c0b406a4-a803-4952-9743-3fb6014cd0ae`.
pub const GUID_ARK: Guid = guid(
    0xc0b4_06a4,
    0xa803,
    0x4952,
    [0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae],
);

/// One entry of the certificate table.
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
pub struct CertTableEntry {
    /// What the certificate is ([`CertKind`]).
    pub guid: Guid,
    /// Offset of the certificate from the start of the table.
    pub offset: U32,
    /// Length of the certificate.
    pub length: U32,
}

const _: () = assert!(size_of::<CertTableEntry>() == 24);

/// Size of one entry.
pub const ENTRY_SIZE: usize = size_of::<CertTableEntry>();

/// The certificate an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CertKind {
    /// VCEK.
    Vcek,
    /// VLEK.
    Vlek,
    /// ASK (or ASVK).
    Ask,
    /// ARK.
    Ark,
    /// Some other GUID.
    Other(Guid),
}

impl CertKind {
    /// Classify a GUID.
    pub fn from_guid(g: &Guid) -> Self {
        match *g {
            GUID_VCEK => Self::Vcek,
            GUID_VLEK => Self::Vlek,
            GUID_ASK => Self::Ask,
            GUID_ARK => Self::Ark,
            other => Self::Other(other),
        }
    }
}

/// Why a certificate table is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertTableError {
    /// The table ends before its all-zero terminating entry.
    MissingTerminator {
        /// Buffer length.
        len: usize,
    },
    /// An entry points outside the buffer.
    EntryOutOfBounds {
        /// Entry index.
        index: usize,
        /// Offset in the entry.
        offset: u32,
        /// Length in the entry.
        length: u32,
        /// Buffer length.
        len: usize,
    },
}

impl fmt::Display for CertTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingTerminator { len } => write!(
                f,
                "certificate table: no all-zero terminating entry within {len} bytes"
            ),
            Self::EntryOutOfBounds { index, offset, length, len } => write!(
                f,
                "certificate table: entry {index} (offset {offset}, length {length}) exceeds the {len}-byte buffer"
            ),
        }
    }
}

/// Iterator over `(kind, certificate bytes)` of a table.
#[derive(Clone, Debug)]
pub struct CertTableIter<'a> {
    buf: &'a [u8],
    index: usize,
    done: bool,
}

/// Walk the certificate table in `buf`.
pub fn entries(buf: &[u8]) -> CertTableIter<'_> {
    CertTableIter {
        buf,
        index: 0,
        done: false,
    }
}

impl<'a> Iterator for CertTableIter<'a> {
    type Item = Result<(CertKind, &'a [u8]), CertTableError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let len = self.buf.len();
        let entry = self
            .index
            .checked_mul(ENTRY_SIZE)
            .and_then(|start| self.buf.get(start..)?.get(..ENTRY_SIZE))
            .and_then(|b| CertTableEntry::read_from_bytes(b).ok());
        let Some(entry) = entry else {
            self.done = true;
            return Some(Err(CertTableError::MissingTerminator { len }));
        };
        if entry == CertTableEntry::default() {
            self.done = true;
            return None;
        }
        let index = self.index;
        self.index = index.saturating_add(1);
        let (offset, length) = (entry.offset.get(), entry.length.get());
        let cert = (offset as usize)
            .checked_add(length as usize)
            .and_then(|end| self.buf.get(offset as usize..end));
        Some(match cert {
            Some(c) => Ok((CertKind::from_guid(&entry.guid), c)),
            None => {
                self.done = true;
                Err(CertTableError::EntryOutOfBounds {
                    index,
                    offset,
                    length,
                    len,
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_byte_order() {
        assert_eq!(
            GUID_VCEK,
            [
                0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8,
                0xac, 0xcd
            ]
        );
    }

    fn table() -> [u8; 3 * ENTRY_SIZE + 7] {
        let mut buf = [0u8; 3 * ENTRY_SIZE + 7];
        let e1 = CertTableEntry {
            guid: GUID_VCEK,
            offset: U32::new(72),
            length: U32::new(4),
        };
        let e2 = CertTableEntry {
            guid: GUID_ARK,
            offset: U32::new(76),
            length: U32::new(3),
        };
        buf[..24].copy_from_slice(e1.as_bytes());
        buf[24..48].copy_from_slice(e2.as_bytes());
        buf[72..79].copy_from_slice(b"vcekark");
        buf
    }

    #[test]
    fn walk_round_trip() {
        let buf = table();
        let mut it = entries(&buf);
        assert_eq!(it.next(), Some(Ok((CertKind::Vcek, &b"vcek"[..]))));
        assert_eq!(it.next(), Some(Ok((CertKind::Ark, &b"ark"[..]))));
        assert_eq!(it.next(), None);
        let e = CertTableEntry::read_from_bytes(&buf[..24]);
        assert_eq!(e.map(|e| e.as_bytes() == &buf[..24]), Ok(true));
        assert_eq!(CertKind::from_guid(&GUID_VLEK), CertKind::Vlek);
        assert_eq!(CertKind::from_guid(&[1; 16]), CertKind::Other([1; 16]));
    }

    #[test]
    fn malformed_tables() {
        let buf = table();
        // No terminator: one entry pointing inside the table, then the buffer ends.
        let mut short = [0u8; ENTRY_SIZE];
        short.copy_from_slice(&buf[..ENTRY_SIZE]);
        short[16] = 0;
        assert_eq!(
            alloc_free::count(&short),
            Err(CertTableError::MissingTerminator { len: 24 })
        );
        let mut bad = buf;
        bad[24 + 16] = 200; // second entry's offset beyond the buffer
        assert!(matches!(
            alloc_free::count(&bad),
            Err(CertTableError::EntryOutOfBounds {
                index: 1,
                offset: 200,
                ..
            })
        ));
        let mut huge = buf;
        huge[16..24].fill(0xff); // offset + length overflows u32 range in usize sum
        assert!(matches!(
            alloc_free::count(&huge),
            Err(CertTableError::EntryOutOfBounds { .. })
        ));
    }

    mod alloc_free {
        use super::super::*;
        pub fn count(buf: &[u8]) -> Result<usize, CertTableError> {
            let mut n = 0;
            for e in entries(buf) {
                e?;
                n += 1;
            }
            Ok(n)
        }
    }
}
