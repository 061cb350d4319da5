//! Unit tests of the checks that the real vectors cannot reach on their own (they
//! all pass them): TCB and CHIP_ID binding, signature encoding, policy binding.
#![allow(clippy::unwrap_used)]

use super::*;
use nitride_protocol::snp::report::SIGNED_LEN;
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::FromZeros;

fn ext(kind: SigningKey) -> EkExtensions {
    EkExtensions {
        kind,
        product_name: Some("Milan-B0".into()),
        bootloader: 3,
        tee: 0,
        snp: 8,
        microcode: 115,
        fmc: None,
        hw_id: (kind == SigningKey::Vcek).then(|| alloc::vec![0xAB; 64]),
        csp_id: (kind == SigningKey::Vlek).then(|| "csp".into()),
    }
}

#[test]
fn tcb_binding_names_the_component() {
    let e = ext(SigningKey::Vcek);
    let good = Tcb {
        fmc: None,
        bootloader: 3,
        tee: 0,
        snp: 8,
        microcode: 115,
    };
    assert_eq!(check_tcb(&good, &e), Ok(()));
    let bad = Tcb {
        microcode: 114,
        ..good
    };
    assert_eq!(
        check_tcb(&bad, &e),
        Err(VerifyError::TcbMismatch {
            component: "microcode",
            report: 114,
            cert: 115
        })
    );
    let bad = Tcb { tee: 1, ..good };
    assert!(matches!(
        check_tcb(&bad, &e),
        Err(VerifyError::TcbMismatch {
            component: "tee",
            ..
        })
    ));
    // Turin: FMC must be in the certificate and equal.
    let turin = Tcb {
        fmc: Some(2),
        ..good
    };
    assert!(matches!(
        check_tcb(&turin, &e),
        Err(VerifyError::TcbMismatch {
            component: "fmc",
            ..
        })
    ));
    let with_fmc = EkExtensions { fmc: Some(2), ..e };
    assert_eq!(check_tcb(&turin, &with_fmc), Ok(()));
}

fn report_with_chip(chip: [u8; 64], signer_info: u32) -> AttestationReport {
    let mut r = AttestationReport::new_zeroed();
    r.version = U32::new(3);
    r.chip_id = chip;
    r.signer_info = U32::new(signer_info);
    r
}

#[test]
fn chip_id_binding() {
    let vcek = ext(SigningKey::Vcek);
    let r = report_with_chip([0xAB; 64], 0);
    assert_eq!(check_chip_id(&r, &vcek, Generation::Milan), Ok(true));
    let mut other = [0xAB; 64];
    other[63] = 0;
    assert!(matches!(
        check_chip_id(&report_with_chip(other, 0), &vcek, Generation::Milan),
        Err(VerifyError::ChipIdMismatch { .. })
    ));
    // Masked CHIP_ID with a VCEK: accepted, but not compared.
    assert_eq!(
        check_chip_id(&report_with_chip([0; 64], 2), &vcek, Generation::Milan),
        Ok(false)
    );
    // Zero CHIP_ID without the mask bit: a mismatch.
    assert!(check_chip_id(&report_with_chip([0; 64], 0), &vcek, Generation::Milan).is_err());
    // Turin: 8-byte hwID against the first 8 bytes, the rest zero.
    let turin = EkExtensions {
        hw_id: Some(alloc::vec![0x11; 8]),
        ..ext(SigningKey::Vcek)
    };
    let mut chip = [0u8; 64];
    chip[..8].fill(0x11);
    assert_eq!(
        check_chip_id(&report_with_chip(chip, 0), &turin, Generation::Turin),
        Ok(true)
    );
    chip[9] = 1;
    assert!(check_chip_id(&report_with_chip(chip, 0), &turin, Generation::Turin).is_err());
    // VLEK: CHIP_ID must be zero.
    let vlek = ext(SigningKey::Vlek);
    assert_eq!(
        check_chip_id(&report_with_chip([0; 64], 4), &vlek, Generation::Milan),
        Ok(false)
    );
    assert!(matches!(
        check_chip_id(&report_with_chip([1; 64], 4), &vlek, Generation::Milan),
        Err(VerifyError::VlekChipIdNotMasked { .. })
    ));
}

#[test]
fn signature_components_are_little_endian_and_padded() {
    let mut le = [0u8; 72];
    le[0] = 1;
    le[47] = 0x80;
    let be = scalar_be(&le, "r").unwrap();
    assert_eq!((be[0], be[47]), (0x80, 1));
    le[48] = 1;
    assert!(matches!(
        scalar_be(&le, "s"),
        Err(VerifyError::ReportSignatureMalformed { .. })
    ));
    // Zero r and s are refused before any key is involved.
    let r = report_with_chip([0; 64], 0);
    let key_bytes = hex_point();
    let key = VerifyingKey::from_sec1_bytes(&key_bytes).unwrap();
    assert!(matches!(
        verify_report_signature(&r, &key, CertRole::Vcek),
        Err(VerifyError::ReportSignatureMalformed { .. })
    ));
    assert_eq!(r.signed_bytes().len(), SIGNED_LEN);
}

/// The P-384 generator, as an uncompressed SEC1 point (a valid public key).
fn hex_point() -> alloc::vec::Vec<u8> {
    use p384::elliptic_curve::sec1::ToEncodedPoint;
    p384::AffinePoint::GENERATOR
        .to_encoded_point(false)
        .as_bytes()
        .to_vec()
}

#[test]
fn nonce_manifest_binding() {
    let mut report = AttestationReport::new_zeroed();
    let mut h = Sha512::new();
    h.update(b"nonce-123");
    h.update(b"{manifest}");
    report.report_data = h.finalize().into();
    report.vmpl = U32::new(0);
    report.policy = U64::new(0x30000);
    let v = VerifiedReport {
        report,
        generation: Generation::Genoa,
        signing_key: SigningKey::Vcek,
        root: RootUsed::Amd(Generation::Genoa),
        chip_id_checked: true,
    };
    let p = AppraisalPolicy::new().expect_vmpl(0);
    assert_eq!(
        p.clone()
            .expect_nonce_manifest(b"nonce-123", b"{manifest}")
            .appraise(&v),
        Ok(())
    );
    // The split between nonce and manifest is not part of the hash input; changing
    // either's content is.
    assert!(p
        .clone()
        .expect_nonce_manifest(b"nonce-124", b"{manifest}")
        .appraise(&v)
        .is_err());
    assert!(p
        .expect_nonce_manifest(b"nonce-123", b"{manifest!")
        .appraise(&v)
        .is_err());
}

use sha2::Sha512;

fn binding_bytes(nonce: &[u8], spki: &[u8]) -> alloc::vec::Vec<u8> {
    use nitride_protocol::attest::KeyBinding;
    let attributes = nitride_protocol::vhsm::KeyAttributes {
        key_id: U32::new(4),
        ..Default::default()
    };
    let b = KeyBinding {
        attributes,
        nonce,
        spki,
    };
    let mut out = alloc::vec![0u8; b.encoded_len()];
    b.write(&mut out).unwrap();
    out
}

fn verified_with_data(report_data: [u8; 64], vmpl: u32) -> VerifiedReport {
    let mut report = AttestationReport::new_zeroed();
    report.report_data = report_data;
    report.vmpl = U32::new(vmpl);
    report.policy = U64::new(0x30000);
    VerifiedReport {
        report,
        generation: Generation::Genoa,
        signing_key: SigningKey::Vcek,
        root: RootUsed::Amd(Generation::Genoa),
        chip_id_checked: true,
    }
}

#[test]
fn key_binding_policy() {
    let binding = binding_bytes(b"nonce-1", b"spki");
    let v = verified_with_data(Sha512::digest(&binding).into(), 0);
    let p = AppraisalPolicy::new().expect_vmpl(0);
    assert_eq!(p.clone().expect_key_binding(&binding).appraise(&v), Ok(()));
    assert_eq!(
        p.clone()
            .expect_key_binding(&binding)
            .expect_binding_nonce(b"nonce-1")
            .appraise(&v),
        Ok(())
    );
    // Another nonce in the expectation: named with both values.
    let e = p
        .clone()
        .expect_key_binding(&binding)
        .expect_binding_nonce(b"nonce-2")
        .appraise(&v)
        .unwrap_err();
    assert_eq!(
        e,
        PolicyError::KeyBindingNonce {
            seen: b"nonce-1".to_vec(),
            expected: b"nonce-2".to_vec()
        }
    );
    assert_eq!(e.check(), "policy_key_binding");
    assert!(e.to_string().contains("6e6f6e63652d31"), "{e}");
    // A binding that parses but is not the one the report binds (other SPKI).
    let other = binding_bytes(b"nonce-1", b"spkj");
    assert!(matches!(
        p.clone().expect_key_binding(&other).appraise(&v),
        Err(PolicyError::KeyBindingReportData { .. })
    ));
    // Truncated binding: malformed, before any hash is compared.
    assert_eq!(
        p.clone()
            .expect_key_binding(&binding[..binding.len() - 1])
            .appraise(&v),
        Err(PolicyError::KeyBindingMalformed {
            reason: nitride_protocol::attest::ManifestError::Truncated
        })
    );
    // A nonce expectation without a binding refuses.
    assert_eq!(
        p.clone().expect_binding_nonce(b"nonce-1").appraise(&v),
        Err(PolicyError::KeyBindingMissing)
    );
    // The same binding in a report requested at VMPL 1 fails the VMPL check first.
    let v1 = verified_with_data(Sha512::digest(&binding).into(), 1);
    assert_eq!(
        p.expect_key_binding(&binding).appraise(&v1),
        Err(PolicyError::Vmpl {
            seen: 1,
            expected: 0
        })
    );
}

#[test]
fn table_certs_prefers_the_vcek() {
    use nitride_protocol::snp::certs::{CertTableEntry, GUID_ARK, GUID_VCEK, GUID_VLEK};
    use zerocopy::IntoBytes;
    let build = |blobs: &[(nitride_protocol::snp::Guid, &[u8])]| {
        let mut t = alloc::vec![0u8; (blobs.len() + 1) * 24];
        for (i, (g, b)) in blobs.iter().enumerate() {
            let e = CertTableEntry {
                guid: *g,
                offset: U32::new(t.len() as u32),
                length: U32::new(b.len() as u32),
            };
            t[i * 24..(i + 1) * 24].copy_from_slice(e.as_bytes());
            t.extend_from_slice(b);
        }
        t
    };
    let t = build(&[
        (GUID_VLEK, b"vlek"),
        (GUID_VCEK, b"vcek"),
        (GUID_ARK, b"ark"),
    ]);
    let c = table_certs(&t).unwrap();
    assert_eq!(c.endorsement, Some(&b"vcek"[..]));
    assert_eq!((c.ask, c.ark), (None, Some(&b"ark"[..])));
    let t = build(&[(GUID_VLEK, b"vlek")]);
    assert_eq!(table_certs(&t).unwrap().endorsement, Some(&b"vlek"[..]));
    assert!(table_certs(&t[..30]).is_err());
    assert_eq!(table_certs(&[0u8; 24]).unwrap(), TableCerts::default());
}
