//! The attestation protocol's decoders (`nitride_protocol::attest`): the services
//! manifest table, the vHSM service manifest and the request layouts.
//!
//! Properties, beyond "does not panic":
//! - a table that parses has every entry inside it, after the entry array, exactly as
//!   its raw entry records say; `find` returns the first entry of a GUID;
//! - `write_manifest_table` of the parsed entries gives a table of
//!   `manifest_table_len` bytes that parses to the same entries;
//! - a vHSM manifest that parses re-encodes (header, identity, key records) to the
//!   input byte for byte, with `key_count` keys;
//! - the request layouts read from exactly their size and write back the same bytes.
//!
//! The first input byte selects how the rest is read: as a table / manifest /
//! requests (even), or as a recipe for table entries to write first (odd).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nitride_protocol::attest::{
    manifest_table_len, write_manifest_table, ManifestKeyHead, ManifestTable, ServicesRequest,
    SingleServiceRequest, VhsmManifest, VHSM_SERVICE_GUID,
};
use nitride_protocol::snp::Guid;
use zerocopy::byteorder::little_endian::U32;
use zerocopy::{FromBytes, IntoBytes};

const HEAD: usize = 24;
const ENTRY: usize = 24;

fn check_table(bytes: &[u8]) {
    let Ok(table) = ManifestTable::parse(bytes) else {
        return;
    };
    let entries: Vec<(Guid, &[u8])> = table.entries().collect();
    let count = u32::from_le_bytes(bytes[20..24].try_into().unwrap()) as usize;
    assert_eq!(entries.len(), count);
    let data_start = HEAD + count * ENTRY;
    let base = bytes.as_ptr() as usize;
    for (i, (g, d)) in entries.iter().enumerate() {
        let raw = &bytes[HEAD + i * ENTRY..HEAD + (i + 1) * ENTRY];
        let offset = u32::from_le_bytes(raw[16..20].try_into().unwrap()) as usize;
        let len = u32::from_le_bytes(raw[20..24].try_into().unwrap()) as usize;
        assert_eq!(&raw[..16], g);
        assert_eq!(d.len(), len, "entry {i} length");
        assert!(offset >= data_start, "entry {i} overlaps the entry array");
        assert!(offset + len <= bytes.len(), "entry {i} outside the table");
        // The slice handed out is that range of the table (not a copy or a default).
        assert_eq!(d.as_ptr() as usize - base, offset, "entry {i} offset");
    }
    for (g, _) in &entries {
        let first = entries.iter().find(|(h, _)| h == g).map(|(_, d)| *d);
        assert_eq!(table.find(g), first);
    }
    // Round trip through the writer.
    let len = manifest_table_len(&entries).expect("length of a parsed table");
    let mut out = vec![0u8; len];
    write_manifest_table(&entries, &mut out).expect("write parsed entries");
    let again = ManifestTable::parse(&out).expect("written table parses");
    assert!(again.entries().eq(entries.iter().copied()));
    // A wrong-sized buffer is refused, never written past.
    let mut short = vec![0u8; len.saturating_sub(1)];
    if len > 0 {
        assert!(write_manifest_table(&entries, &mut short).is_err());
    }
    if let Some(m) = table.find(&VHSM_SERVICE_GUID) {
        check_vhsm_manifest(m);
    }
}

fn check_vhsm_manifest(bytes: &[u8]) {
    let Ok(m) = VhsmManifest::parse(bytes) else {
        return;
    };
    assert_eq!(m.identity.len(), m.header.identity_len.get() as usize);
    let keys: Vec<_> = m.keys().collect();
    assert_eq!(keys.len(), m.header.key_count.get() as usize);
    let mut out = m.header.as_bytes().to_vec();
    out.extend_from_slice(m.identity);
    for (attributes, spki) in &keys {
        let head = ManifestKeyHead {
            attributes: *attributes,
            spki_len: U32::new(spki.len() as u32),
        };
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(spki);
    }
    assert_eq!(out, bytes, "a parsed manifest re-encodes to its input");
}

fn check_requests(bytes: &[u8]) {
    match ServicesRequest::read_from_bytes(bytes) {
        Ok(r) => assert_eq!(r.as_bytes(), bytes),
        Err(_) => assert_ne!(bytes.len(), size_of::<ServicesRequest>()),
    }
    match SingleServiceRequest::read_from_bytes(bytes) {
        Ok(r) => {
            assert_eq!(r.as_bytes(), bytes);
            assert_eq!(r.base.as_bytes(), &bytes[..size_of::<ServicesRequest>()]);
        }
        Err(_) => assert_ne!(bytes.len(), size_of::<SingleServiceRequest>()),
    }
    if let Ok((r, _)) = SingleServiceRequest::read_from_prefix(bytes) {
        let _ = (
            r.base.nonce.gpa.get(),
            r.base.nonce.size.get(),
            r.manifest_version.get(),
        );
    }
}

/// Entries from a recipe: per entry one byte picking the GUID (vHSM, or 16 input
/// bytes) and one length byte; the data are the next bytes of the input.
fn write_from_recipe(mut data: &[u8]) {
    let mut entries: Vec<(Guid, &[u8])> = Vec::new();
    while entries.len() < 16 {
        let [pick, len, rest @ ..] = data else { break };
        data = rest;
        let guid = if pick & 1 == 0 {
            VHSM_SERVICE_GUID
        } else {
            let Some((g, rest)) = data.split_first_chunk::<16>() else {
                break;
            };
            data = rest;
            *g
        };
        let n = usize::from(*len).min(data.len());
        let (d, rest) = data.split_at(n);
        data = rest;
        entries.push((guid, d));
    }
    let len = manifest_table_len(&entries).expect("small table");
    let mut out = vec![0u8; len];
    write_manifest_table(&entries, &mut out).expect("write");
    let table = ManifestTable::parse(&out).expect("a written table parses");
    assert!(table.entries().eq(entries.iter().copied()));
    check_table(&out);
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        write_from_recipe(rest);
    } else {
        check_table(rest);
        check_vhsm_manifest(rest);
        check_requests(rest);
    }
});
