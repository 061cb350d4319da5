//! The vHSM key binding (`nitride_protocol::attest::KeyBinding`), the verifier's
//! key-binding policy (`AppraisalPolicy::expect_key_binding` /
//! `expect_binding_nonce`) and `verify::table_certs` on arbitrary certificate tables.
//!
//! Properties:
//! - a binding that parses re-encodes with `write` to the input byte for byte, and a
//!   wrong-sized output buffer is refused;
//! - the policy accepts a report exactly when the binding parses, REPORT_DATA is
//!   SHA-512(binding) and the expected nonce (if any) is the binding's; a nonce
//!   requirement without a binding refuses every report;
//! - `table_certs` hands out slices of the table, each the first certificate of its
//!   kind (the VLEK only without a VCEK), and fails exactly when the walk fails.
//!
//! First input byte: bits 0-1 select the part, the rest is its input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nitride_guest_driver::verify::{table_certs, AppraisalPolicy, RootUsed, VerifiedReport};
use nitride_protocol::attest::KeyBinding;
use nitride_protocol::snp::{certs, AttestationReport, CertKind, Generation, SigningKey};
use sha2::{Digest, Sha512};
use zerocopy::FromZeros;

fn check_binding(bytes: &[u8]) {
    let Ok(b) = KeyBinding::parse(bytes) else {
        return;
    };
    assert_eq!(b.encoded_len(), bytes.len());
    let mut out = vec![0u8; bytes.len()];
    b.write(&mut out).expect("write a parsed binding");
    assert_eq!(out, bytes);
    assert_eq!(KeyBinding::parse(&out), Ok(b));
    let mut longer = vec![0u8; bytes.len() + 1];
    assert!(b.write(&mut longer).is_err());
    assert!(b.write(&mut out[..bytes.len() - 1]).is_err());
}

fn report_with(report_data: [u8; 64]) -> VerifiedReport {
    let mut report = AttestationReport::new_zeroed();
    report.report_data = report_data;
    VerifiedReport {
        report,
        generation: Generation::Genoa,
        signing_key: SigningKey::Vcek,
        root: RootUsed::Amd(Generation::Genoa),
        chip_id_checked: true,
    }
}

/// Input: flags byte, nonce length byte, nonce, then the binding.
fn check_policy(data: &[u8]) {
    let [flags, nonce_len, rest @ ..] = data else {
        return;
    };
    let n = usize::from(*nonce_len).min(rest.len());
    let (nonce, binding) = rest.split_at(n);
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
            Ok(b) => matching_data && (!want_nonce || b.nonce == nonce),
            Err(_) => false,
        }
    };
    assert_eq!(verdict.is_ok(), expected, "{verdict:?}");
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
            check_binding(rest);
            check_table_certs(rest);
        }
    }
});
