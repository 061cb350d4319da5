//! The attestation protocol's decoders (`nitride_protocol::attest`): the services
//! manifest table, the vHSM service manifest and the request layouts.
//!
//! Properties, beyond "does not panic":
//! - decode then encode is the identity: a table that parses is written again by
//!   `ManifestTable::write` and by `write_manifest_table` of its entries to the same
//!   bytes; a vHSM manifest that parses is written again by `VhsmManifest::write` and
//!   by `write_vhsm_manifest` of its parts to the same bytes;
//! - a parsed table is exactly what the SVSM writes: each entry starts where the
//!   previous ended (the first right after the entry array), the last ends at the
//!   table's end, no GUID twice, and every entry slice is that range of the input;
//! - a parsed vHSM manifest has increasing key ids, attributes that pass
//!   `check_attestable_attributes`, and public keys that pass `check_spki` for
//!   their type (the identity a P-384 key);
//! - anything the writers write parses back to the same values;
//! - the request layouts read from exactly their size and write back the same bytes.
//!
//! The first input byte selects how the rest is read: as a table / manifest /
//! requests (even), or as a recipe for table entries to write first (odd).
#![no_main]

use libfuzzer_sys::fuzz_target;
use nitride_protocol::attest::{
    check_attestable_attributes, check_spki, manifest_table_len, vhsm_manifest_len,
    write_manifest_table, write_vhsm_manifest, ManifestTable, ServicesRequest,
    SingleServiceRequest, VhsmManifest, VHSM_SERVICE_GUID,
};
use nitride_protocol::snp::Guid;
use nitride_protocol::vhsm::KeyType;
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
    let base = bytes.as_ptr() as usize;
    let mut next = HEAD + count * ENTRY;
    for (i, (g, d)) in entries.iter().enumerate() {
        let raw = &bytes[HEAD + i * ENTRY..HEAD + (i + 1) * ENTRY];
        let offset = u32::from_le_bytes(raw[16..20].try_into().unwrap()) as usize;
        let len = u32::from_le_bytes(raw[20..24].try_into().unwrap()) as usize;
        assert_eq!(&raw[..16], g);
        assert_eq!(d.len(), len, "entry {i} length");
        assert_eq!(offset, next, "entry {i} does not follow the previous one");
        next = offset + len;
        // The slice handed out is that range of the table (not a copy or a default).
        assert_eq!(d.as_ptr() as usize - base, offset, "entry {i} offset");
        assert!(
            entries[..i].iter().all(|(h, _)| h != g),
            "entry {i} repeats a GUID"
        );
        assert_eq!(table.find(g), Some(*d));
    }
    assert_eq!(next, bytes.len(), "entries do not cover the table");
    // Decode then encode is the identity, through both writers.
    let len = manifest_table_len(&entries).expect("length of a parsed table");
    assert_eq!(len, bytes.len());
    assert_eq!(table.encoded_len(), bytes.len());
    let mut out = vec![0u8; len];
    write_manifest_table(&entries, &mut out).expect("write parsed entries");
    assert_eq!(out, bytes);
    out.fill(0);
    table.write(&mut out).expect("re-encode the table");
    assert_eq!(out, bytes);
    // A wrong-sized buffer is refused, never written past.
    let mut short = vec![0u8; len - 1];
    assert!(write_manifest_table(&entries, &mut short).is_err());
    assert!(table.write(&mut short).is_err());
    if let Some(m) = table.find(&VHSM_SERVICE_GUID) {
        check_vhsm_manifest(m);
    }
}

fn check_vhsm_manifest(bytes: &[u8]) {
    let Ok(m) = VhsmManifest::parse(bytes) else {
        return;
    };
    assert_eq!(m.identity.len(), m.header.identity_len.get() as usize);
    assert!(m.header.reserved_zero());
    check_spki(KeyType::EcdsaP384, m.identity).expect("identity is a P-384 key");
    let keys: Vec<_> = m.keys().collect();
    assert_eq!(keys.len(), m.header.key_count.get() as usize);
    let mut last = 0;
    for k in &keys {
        let id = k.attributes.key_id.get();
        assert!(id > last, "key ids increase");
        last = id;
        let t = check_attestable_attributes(&k.attributes).expect("attributes");
        check_spki(t, k.spki).expect("public key of its type");
    }
    // Decode then encode is the identity, through both writers.
    assert_eq!(m.encoded_len(), bytes.len());
    let mut out = vec![0u8; bytes.len()];
    m.write(&mut out).expect("re-encode");
    assert_eq!(out, bytes, "a parsed manifest re-encodes to its input");
    assert_eq!(
        vhsm_manifest_len(m.identity, keys.iter().copied()),
        Some(bytes.len())
    );
    out.fill(0);
    write_vhsm_manifest(&m.header, m.identity, keys.iter().copied(), &mut out)
        .expect("write parsed parts");
    assert_eq!(out, bytes);
    assert!(m.write(&mut out[1..]).is_err());
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
    let unique = entries
        .iter()
        .enumerate()
        .all(|(i, (g, _))| entries[..i].iter().all(|(h, _)| h != g));
    match write_manifest_table(&entries, &mut out) {
        Ok(()) => {
            assert!(unique);
            let table = ManifestTable::parse(&out).expect("a written table parses");
            assert!(table.entries().eq(entries.iter().copied()));
            check_table(&out);
        }
        Err(_) => assert!(!unique, "the writer refuses only repeated GUIDs"),
    }
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
