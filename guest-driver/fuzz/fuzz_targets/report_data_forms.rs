//! REPORT_DATA domain separation, end to end through the verifier: one hash input
//! `h` (REPORT_DATA = SHA-512(h), a VMPL0 report) is offered to the appraisal
//! policy in every reading a relying party could be given: split at every point
//! into a nonce and a manifest (ATTEST_SERVICES or ATTEST_SINGLE_SERVICE, told
//! apart by the manifest's tag), or whole as an AttestKey key binding.
//!
//! Properties:
//! - no two readings of one hash input both verify: at most one is accepted, and
//!   only a split at 64 bytes (the nonce is a `[u8; 64]`; a relying party holding a
//!   nonce of another length cannot even state it);
//! - the accepted reading is the form `report_data::classify` names from the tag
//!   at offset 64, and its REPORT_DATA is what that form's constructor computes;
//! - decode then encode is the identity: the accepted manifest (table or vHSM
//!   manifest) re-encodes to `h[64..]`, the accepted binding to `h`.
//!
//! Input: the hash input itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nitride_guest_driver::verify::{AppraisalPolicy, CheckedEvidence, RootUsed, VerifiedReport};
use nitride_protocol::attest::report_data::{self, Form};
use nitride_protocol::attest::{Nonce, NONCE_SIZE, VHSM_SERVICE_GUID};
use nitride_protocol::snp::{AttestationReport, Generation, SigningKey};
use sha2::{Digest, Sha512};
use zerocopy::byteorder::little_endian::U64;
use zerocopy::FromZeros;

fn report(report_data: [u8; 64]) -> VerifiedReport {
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

fuzz_target!(|h: &[u8]| {
    if h.len() > 64 * 1024 {
        return;
    }
    let v = report(Sha512::digest(h).into());
    assert!(!report_data::has_kbs_padding(&v.report.report_data));
    let mut accepted: Vec<(usize, Form)> = Vec::new();

    // Every split into (nonce, manifest); only a 64-byte nonce can be stated.
    for k in 0..=h.len() {
        let (nonce, manifest) = h.split_at(k);
        let Ok(nonce) = <&Nonce>::try_from(nonce) else {
            continue;
        };
        let policy = AppraisalPolicy::new()
            .expect_vmpl(0)
            .expect_nonce_manifest(nonce, manifest);
        let Ok(a) = policy.appraise(&v) else { continue };
        let mut again = vec![0u8; manifest.len()];
        let form = match a.evidence {
            CheckedEvidence::Services { nonce: n, table, .. } => {
                assert_eq!(n, nonce);
                table.write(&mut again).expect("re-encode the table");
                assert_eq!(
                    report_data::services(nonce, manifest),
                    Ok(v.report.report_data)
                );
                Form::Services
            }
            CheckedEvidence::VhsmService { nonce: n, manifest: m } => {
                assert_eq!(n, nonce);
                m.write(&mut again).expect("re-encode the manifest");
                assert_eq!(
                    report_data::single_service(nonce, &VHSM_SERVICE_GUID, manifest),
                    Ok(v.report.report_data)
                );
                Form::VhsmService
            }
            other => panic!("a manifest policy accepted {other:?}"),
        };
        assert_eq!(again, manifest, "decode then encode");
        accepted.push((k, form));
    }

    // The whole input as a key binding, with and without its nonce expected.
    let binding = AppraisalPolicy::new().expect_vmpl(0).expect_key_binding(h);
    if let Ok(a) = binding.appraise(&v) {
        let CheckedEvidence::KeyBinding(b) = a.evidence else {
            panic!("a binding policy accepted {:?}", a.evidence);
        };
        let mut again = vec![0u8; h.len()];
        b.write(&mut again).expect("re-encode the binding");
        assert_eq!(again, h, "decode then encode");
        assert_eq!(report_data::key_binding(h), Ok(v.report.report_data));
        let with_nonce = binding.clone().expect_binding_nonce(b.nonce);
        assert!(with_nonce.appraise(&v).is_ok());
        accepted.push((h.len(), Form::KeyBinding));
    }

    assert!(accepted.len() <= 1, "two readings verify: {accepted:?}");
    if let Some((k, form)) = accepted.first() {
        assert!(*k == NONCE_SIZE || *form == Form::KeyBinding);
        assert_eq!(report_data::classify(h), Some(*form));
    }
});
