//! The vHSM key binding (`nitride_protocol::attest::KeyBinding`), the AttestKey
//! request on the wire, the verifier's key-binding policy
//! (`AppraisalPolicy::expect_key_binding` / `expect_binding_nonce`) and
//! `verify::table_certs` on arbitrary certificate tables.
//!
//! Properties:
//! - decode then encode is the identity: a binding that parses re-encodes with
//!   `write` to the input byte for byte (and a wrong-sized output buffer is
//!   refused); it has the binding's tag at offset 64, attributes that pass
//!   `check_attestable_attributes` and the strict SPKI of its key type;
//! - an AttestKey request that decodes carries a 64-byte nonce and re-encodes to
//!   its input;
//! - the policy accepts a report exactly when the binding parses, its P-384 point
//!   (if any) is on the curve, REPORT_DATA is SHA-512(binding) and the expected
//!   nonce (if any) is the binding's; the accepted evidence is that binding; a
//!   nonce requirement without a binding refuses every report;
//! - `table_certs` hands out slices of the table, each the first certificate of its
//!   kind (the VLEK only without a VCEK), and fails exactly when the walk fails.
//!
//! First input byte: bits 0-1 select the part, the rest is its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nitride_guest_driver::verify::{
    table_certs, AppraisalPolicy, CheckedEvidence, RootUsed, VerifiedReport,
};
use nitride_protocol::attest::report_data::{self, Form};
use nitride_protocol::attest::{check_attestable_attributes, check_spki, KeyBinding, NONCE_SIZE};
use nitride_protocol::snp::{certs, AttestationReport, CertKind, Generation, SigningKey};
use nitride_protocol::vhsm::{KeyType, Op, Request};
use sha2::{Digest, Sha512};
use zerocopy::byteorder::little_endian::U64;
use zerocopy::FromZeros;

fn check_binding(bytes: &[u8]) {
    let Ok(b) = KeyBinding::parse(bytes) else {
        return;
    };
    assert_eq!(b.encoded_len(), bytes.len());
    assert_eq!(report_data::classify(bytes), Some(Form::KeyBinding));
    let t = check_attestable_attributes(&b.attributes).expect("attributes");
    check_spki(t, b.spki).expect("public key of its type");
    let mut out = vec![0u8; bytes.len()];
    b.write(&mut out).expect("write a parsed binding");
    assert_eq!(out, bytes);
    assert_eq!(KeyBinding::parse(&out), Ok(b));
    let mut longer = vec![0u8; bytes.len() + 1];
    assert!(b.write(&mut longer).is_err());
    assert!(b.write(&mut out[..bytes.len() - 1]).is_err());
}

/// An AttestKey request body after the header: whatever decodes re-encodes.
fn check_request(bytes: &[u8]) {
    let Ok((header, req)) = Request::decode(bytes) else {
        return;
    };
    if let Request::AttestKey { nonce, .. } = req {
        assert_eq!(nonce.len(), NONCE_SIZE);
        let mut out = vec![0u8; bytes.len()];
        let n = req
            .encode(header.request_id.get(), &mut out)
            .expect("re-encode");
        assert_eq!(&out[..n], bytes, "an AttestKey request re-encodes to its input");
    } else {
        assert_ne!(header.op.get(), Op::AttestKey as u16);
    }
}

fn report_with(report_data: [u8; 64]) -> VerifiedReport {
    let mut report = AttestationReport::new_zeroed();
    report.report_data = report_data;
    report.policy = U64::new(0x30000);
    VerifiedReport {
        report,
        generation: Generation::Genoa,
        signing_key: SigningKey::Vcek,
        root: RootUsed::Amd(Generation::Genoa),
        chip_id_checked: true,
    }
}

/// The P-384 point of a parsed binding is on the curve (other types: nothing to check).
fn point_ok(b: &KeyBinding<'_>) -> bool {
    b.attributes.key_type.get() != KeyType::EcdsaP384.raw()
        || p384::PublicKey::from_sec1_bytes(&b.spki[b.spki.len() - 97..]).is_ok()
}

/// Input: flags byte, nonce (64 bytes), then the binding.
fn check_policy(data: &[u8]) {
    let Some((flags, rest)) = data.split_first() else {
        return;
    };
    let Some((nonce, binding)) = rest.split_first_chunk::<NONCE_SIZE>() else {
        return;
    };
    let digest: [u8; 64] = Sha512::digest(binding).into();
    let mut report_data = digest;
    let matching_data = flags & 1 == 0;
    if !matching_data {
        report_data[usize::from(flags >> 2) % 64] ^= 1;
    }
    let want_nonce = flags & 2 != 0;
    let with_binding = flags & 0x80 == 0;
    let mut policy = AppraisalPolicy::new();
    if with_binding {
        policy = policy.expect_key_binding(binding);
    }
    if want_nonce {
        policy = policy.expect_binding_nonce(nonce);
    }
    let verdict = policy.appraise(&report_with(report_data));
    let expected = if !with_binding {
        !want_nonce
    } else {
        match KeyBinding::parse(binding) {
            Ok(b) => point_ok(&b) && matching_data && (!want_nonce || b.nonce == nonce),
            Err(_) => false,
        }
    };
    assert_eq!(verdict.is_ok(), expected, "{verdict:?}");
    if let Ok(a) = verdict {
        match a.evidence {
            CheckedEvidence::KeyBinding(b) => {
                assert_eq!(Ok(b), KeyBinding::parse(binding));
            }
            CheckedEvidence::None => assert!(!with_binding),
            other => panic!("unexpected evidence {other:?}"),
        }
    }
}

fn check_table_certs(table: &[u8]) {
    let walked: Result<Vec<(CertKind, &[u8])>, _> = certs::entries(table).collect();
    let picked = table_certs(table);
    let (Ok(walked), Ok(picked)) = (&walked, &picked) else {
        assert_eq!(walked.is_err(), picked.is_err());
        return;
    };
    let first = |k: CertKind| walked.iter().find(|(kind, _)| *kind == k).map(|(_, b)| *b);
    let same = |a: Option<&[u8]>, b: Option<&[u8]>| match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.as_ptr() == b.as_ptr() && a.len() == b.len(),
        _ => false,
    };
    assert!(same(
        picked.endorsement,
        first(CertKind::Vcek).or(first(CertKind::Vlek))
    ));
    assert!(same(picked.ask, first(CertKind::Ask)));
    assert!(same(picked.ark, first(CertKind::Ark)));
    let range = table.as_ptr_range();
    for c in [picked.endorsement, picked.ask, picked.ark]
        .into_iter()
        .flatten()
    {
        let r = c.as_ptr_range();
        assert!(range.start <= r.start && r.end <= range.end);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    match mode & 3 {
        0 => check_binding(rest),
        1 => check_policy(rest),
        2 => check_table_certs(rest),
        _ => {
            check_request(rest);
            check_binding(rest);
        }
    }
});
