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

use nitride_protocol::attest::{
    manifest_table_len, report_data, vhsm_manifest_len, write_manifest_table, write_vhsm_manifest,
    KeyBinding, ManifestError, ManifestKey, VhsmManifestHeader, VHSM_SERVICE_GUID,
    VTPM_SERVICE_GUID,
};
use nitride_protocol::vhsm::{KeyAttributes, KeyType, KeyUsage, Origin, VmplSet};
use sha2::Sha512;
use zerocopy::byteorder::little_endian::U16;

/// The P-384 SPKI DER of `k` times the generator (a real point on the curve).
fn p384_spki(k: u64) -> alloc::vec::Vec<u8> {
    use p384::elliptic_curve::sec1::ToEncodedPoint;
    let point = (p384::ProjectivePoint::GENERATOR * p384::Scalar::from(k)).to_affine();
    let mut v = alloc::vec![
        0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05,
        0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00,
    ];
    v.extend_from_slice(point.to_encoded_point(false).as_bytes());
    v
}

fn attrs(id: u32, key_type: KeyType) -> KeyAttributes {
    let mut label = [0u8; 32];
    label[..4].copy_from_slice(b"key!");
    KeyAttributes {
        key_id: U32::new(id),
        key_type: U16::new(key_type.raw()),
        origin: Origin::Generated.raw(),
        allowed_vmpls: VmplSet::all().bits(),
        usage: U32::new((KeyUsage::SIGN | KeyUsage::ATTEST).bits()),
        exportable: 0,
        label_len: 4,
        reserved: U16::new(0),
        label,
    }
}

/// A vHSM manifest: identity 2G, one P-384 key (3G) with id 4.
fn vhsm_manifest_bytes() -> alloc::vec::Vec<u8> {
    let (identity, key) = (p384_spki(2), p384_spki(3));
    let keys = [ManifestKey {
        attributes: attrs(4, KeyType::EcdsaP384),
        spki: &key,
    }];
    let mut out = alloc::vec![0u8; vhsm_manifest_len(&identity, keys).unwrap()];
    let header = VhsmManifestHeader {
        protocol_version: U32::new(1),
        wire_version: U16::new(1),
        ..Default::default()
    };
    write_vhsm_manifest(&header, &identity, keys, &mut out).unwrap();
    out
}

fn table_of(entries: &[(nitride_protocol::snp::Guid, &[u8])]) -> alloc::vec::Vec<u8> {
    let mut out = alloc::vec![0u8; manifest_table_len(entries).unwrap()];
    write_manifest_table(entries, &mut out).unwrap();
    out
}

#[test]
fn nonce_manifest_binding() {
    let nonce = [0x4E; 64];
    let vhsm = vhsm_manifest_bytes();
    let table = table_of(&[(VHSM_SERVICE_GUID, &vhsm)]);
    let v = verified_with_data(report_data::services(&nonce, &table).unwrap(), 0);
    let p = AppraisalPolicy::new().expect_vmpl(0);
    let ok = p.clone().expect_nonce_manifest(&nonce, &table);
    let a = ok.appraise(&v).unwrap();
    // The evidence comes back parsed: the vHSM manifest of the table.
    let m = a.evidence.vhsm_manifest().unwrap();
    assert_eq!(m.identity, &p384_spki(2)[..]);
    assert_eq!(m.keys().map(|k| k.attributes.key_id.get()).sum::<u32>(), 4);
    assert!(matches!(
        a.evidence,
        CheckedEvidence::Services { nonce: n, .. } if *n == nonce
    ));
    assert_eq!(a.guest_policy.0, 0x30000);
    // Changing the nonce or the manifest's content changes the hash.
    let mut other = nonce;
    other[63] ^= 1;
    assert!(matches!(
        p.clone().expect_nonce_manifest(&other, &table).appraise(&v),
        Err(PolicyError::ReportData { .. })
    ));
    let mut changed = table.clone();
    *changed.last_mut().unwrap() ^= 1;
    assert!(p
        .clone()
        .expect_nonce_manifest(&nonce, &changed)
        .appraise(&v)
        .is_err());

    // The vHSM's manifest on its own (ATTEST_SINGLE_SERVICE) is told apart by its tag.
    let v1 = verified_with_data(
        report_data::single_service(&nonce, &VHSM_SERVICE_GUID, &vhsm).unwrap(),
        0,
    );
    let single = p.clone().expect_nonce_manifest(&nonce, &vhsm);
    let a = single.appraise(&v1).unwrap();
    assert!(matches!(a.evidence, CheckedEvidence::VhsmService { .. }));
    // ... and a report over the table does not pass for it, nor the reverse.
    assert!(single.appraise(&v).is_err());
    assert!(ok.appraise(&v1).is_err());
}

/// Manifests the SVSM never writes are refused before any hash is compared, even
/// when REPORT_DATA is over exactly those bytes.
#[test]
fn nonce_manifest_must_be_what_the_svsm_writes() {
    let nonce = [0x4E; 64];
    let vhsm = vhsm_manifest_bytes();
    let p = AppraisalPolicy::new().expect_vmpl(0);
    let refused = |manifest: &[u8]| {
        let rd: [u8; 64] = Sha512::digest([&nonce[..], manifest].concat()).into();
        p.clone()
            .expect_nonce_manifest(&nonce, manifest)
            .appraise(&verified_with_data(rd, 0))
            .unwrap_err()
    };
    let malformed = |reason| PolicyError::ManifestMalformed { reason };
    // A service the verifier cannot check, next to the vHSM.
    let two = table_of(&[(VHSM_SERVICE_GUID, &vhsm), (VTPM_SERVICE_GUID, b"tpm")]);
    assert_eq!(refused(&two), malformed(ManifestError::UnknownService));
    // Unreferenced bytes after the table's entries.
    let mut tail = table_of(&[(VHSM_SERVICE_GUID, &vhsm)]);
    tail.extend_from_slice(b"unreferenced");
    let n = tail.len() as u32;
    tail[16..20].copy_from_slice(&n.to_le_bytes());
    assert_eq!(refused(&tail), malformed(ManifestError::BadEntry));
    // The vHSM entry is not a vHSM manifest.
    let junk = table_of(&[(VHSM_SERVICE_GUID, b"NTRDVHSM but not one")]);
    assert!(matches!(
        refused(&junk),
        PolicyError::ManifestMalformed { .. }
    ));
    // Neither a table nor a vHSM manifest.
    assert_eq!(refused(b"{manifest}"), malformed(ManifestError::BadMagic));
    // A point that is not on the curve, in otherwise strict DER.
    let mut off_curve = vhsm.clone();
    let last = off_curve.len() - 1;
    off_curve[last] ^= 1;
    assert_eq!(refused(&off_curve), malformed(ManifestError::BadPublicKey));
    // An empty table (the vHSM not running) is what the SVSM writes.
    let empty = table_of(&[]);
    let rd = report_data::services(&nonce, &empty).unwrap();
    let policy = p.clone().expect_nonce_manifest(&nonce, &empty);
    let a = policy.appraise(&verified_with_data(rd, 0)).unwrap();
    assert!(matches!(
        a.evidence,
        CheckedEvidence::Services { vhsm: None, .. }
    ));
}

fn binding_bytes(nonce: &[u8; 64], spki: &[u8]) -> alloc::vec::Vec<u8> {
    let b = KeyBinding {
        nonce,
        attributes: attrs(4, KeyType::EcdsaP384),
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
    let (n1, n2) = ([1u8; 64], [2u8; 64]);
    let binding = binding_bytes(&n1, &p384_spki(5));
    let v = verified_with_data(Sha512::digest(&binding).into(), 0);
    let p = AppraisalPolicy::new().expect_vmpl(0);
    let a = p.clone().expect_key_binding(&binding);
    assert!(matches!(
        a.appraise(&v).unwrap().evidence,
        CheckedEvidence::KeyBinding(b) if b.spki == &p384_spki(5)[..]
    ));
    assert!(p
        .clone()
        .expect_key_binding(&binding)
        .expect_binding_nonce(&n1)
        .appraise(&v)
        .is_ok());
    // Another nonce in the expectation: named with both values.
    let e = p
        .clone()
        .expect_key_binding(&binding)
        .expect_binding_nonce(&n2)
        .appraise(&v)
        .unwrap_err();
    assert_eq!(
        e,
        PolicyError::KeyBindingNonce {
            seen: n1.to_vec(),
            expected: n2.to_vec()
        }
    );
    assert_eq!(e.check(), "policy_key_binding");
    assert!(e.to_string().contains(&"01".repeat(64)), "{e}");
    // A binding that parses but is not the one the report binds (other SPKI).
    let other = binding_bytes(&n1, &p384_spki(6));
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
            reason: ManifestError::Truncated
        })
    );
    // A nonce expectation without a binding refuses, also next to a manifest.
    assert_eq!(
        p.clone().expect_binding_nonce(&n1).appraise(&v),
        Err(PolicyError::KeyBindingMissing)
    );
    assert_eq!(
        p.clone()
            .expect_nonce_manifest(&n1, &binding)
            .expect_binding_nonce(&n1)
            .appraise(&v)
            .map(|_| ()),
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

fn with_policy(policy: u64, platform_info: u64) -> VerifiedReport {
    let mut v = verified_with_data([0; 64], 0);
    v.report.policy = U64::new(policy);
    v.report.platform_info = U64::new(platform_info);
    v
}

/// The guest policy bits: bit 17 must be one, MIGRATE_MA and DEBUG refused unless
/// allowed, SMT off and single socket when required.
#[test]
fn guest_policy_bits() {
    let p = AppraisalPolicy::new();
    assert!(p.appraise(&with_policy(0x30000, 1)).is_ok());
    assert_eq!(
        p.appraise(&with_policy(0x10000, 0)),
        Err(PolicyError::ReservedBitClear { policy: 0x10000 })
    );
    let ma = 0x30000 | 1 << 18;
    assert_eq!(
        p.appraise(&with_policy(ma, 0)),
        Err(PolicyError::MigrateMa { policy: ma })
    );
    assert_eq!(
        PolicyError::MigrateMa { policy: ma }.check(),
        "policy_migrate_ma"
    );
    assert!(p
        .clone()
        .allow_migrate_ma(true)
        .appraise(&with_policy(ma, 0))
        .is_ok());
    let dbg = 0x30000 | 1 << 19;
    assert_eq!(
        p.appraise(&with_policy(dbg, 0)),
        Err(PolicyError::Debug { policy: dbg })
    );
    // SMT: the policy must forbid it and the platform must have it off.
    let smt_off = p.clone().require_smt_off(true);
    assert!(smt_off.appraise(&with_policy(0x20000, 0)).is_ok());
    for (policy, info) in [(0x30000, 0), (0x20000, 1), (0x30000, 1)] {
        let e = smt_off.appraise(&with_policy(policy, info)).unwrap_err();
        assert_eq!(
            e,
            PolicyError::Smt {
                policy,
                platform_info: info
            }
        );
        assert!(e.to_string().contains("SMT required off"), "{e}");
    }
    let socket = p.clone().require_single_socket(true);
    let one = 0x30000 | 1 << 20;
    assert!(socket.appraise(&with_policy(one, 0)).is_ok());
    assert_eq!(
        socket.appraise(&with_policy(0x30000, 0)),
        Err(PolicyError::SingleSocket { policy: 0x30000 })
    );
}

#[test]
fn minimum_tcb_per_component() {
    let mut v = verified_with_data([0; 64], 0);
    // Genoa layout: bootloader 3, tee 0, snp 8, microcode 115.
    v.report.reported_tcb = U64::new(3 | 8 << 48 | 115 << 56);
    let p = AppraisalPolicy::new();
    let only = |f: &dyn Fn(&mut MinTcb)| {
        let mut m = MinTcb::default();
        f(&mut m);
        p.clone().min_tcb(m).appraise(&v).map(|_| ())
    };
    assert!(only(&|m| m.microcode = Some(115)).is_ok());
    assert_eq!(
        only(&|m| m.microcode = Some(116)),
        Err(PolicyError::TcbTooLow {
            component: "microcode",
            seen: 115,
            minimum: 116
        })
    );
    assert!(only(&|m| m.snp = Some(8)).is_ok());
    assert!(matches!(
        only(&|m| m.snp = Some(9)),
        Err(PolicyError::TcbTooLow {
            component: "snp",
            ..
        })
    ));
    assert!(matches!(
        only(&|m| m.bootloader = Some(4)),
        Err(PolicyError::TcbTooLow {
            component: "bootloader",
            ..
        })
    ));
    // Genoa has no FMC: a minimum FMC refuses rather than being skipped.
    assert_eq!(
        only(&|m| m.fmc = Some(0)),
        Err(PolicyError::TcbComponentMissing { component: "fmc" })
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
