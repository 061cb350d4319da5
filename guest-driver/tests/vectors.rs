//! Real SNP reports: every vector verifies and decodes to its expected.json; each
//! kind of tampering is rejected with the right error.
#![allow(clippy::unwrap_used)]

mod common;

use nitride_guest_driver::verify::{
    verify, AppraisalPolicy, CertRole, Error, PolicyError, RootUsed, TrustAnchors, VerifyError,
};
use nitride_protocol::snp::{Generation, ReportError, SigningKey, Tcb};

fn builtin() -> TrustAnchors {
    TrustAnchors::amd_builtin().unwrap()
}

fn from_roots_dir(gens: &[Generation]) -> TrustAnchors {
    let dir = common::roots_dir();
    let mut a = TrustAnchors::empty();
    for g in gens {
        let read =
            |kind: &str| std::fs::read(dir.join(format!("{}-{kind}.pem", g.name()))).unwrap();
        a.add_amd(*g, &read("ark"), Some(&read("ask")), Some(&read("asvk")))
            .unwrap();
    }
    a
}

fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

fn tcb_json(t: &Tcb) -> serde_json::Value {
    let mut v = serde_json::json!({
        "bootloader": t.bootloader, "tee": t.tee, "snp": t.snp, "microcode": t.microcode,
    });
    if let Some(fmc) = t.fmc {
        v["fmc"] = fmc.into();
    }
    v
}

#[test]
fn every_vector_verifies_and_decodes_as_expected() {
    let anchors = builtin();
    let dir_anchors = from_roots_dir(&Generation::ALL);
    for v in common::all() {
        let e = &v.expected;
        assert_eq!(e["expected_verdict"], "valid", "{}", v.name);
        let verified = verify(&anchors, &v.report, &v.ek)
            .unwrap_or_else(|err| panic!("{}: rejected: {err}", v.name));
        let again = verify(&dir_anchors, &v.report, &v.ek).unwrap();
        assert_eq!(verified, again, "{}", v.name);
        assert_eq!(verified.generation.name(), e["generation"], "{}", v.name);
        assert_eq!(verified.root, RootUsed::Amd(verified.generation));
        let r = &verified.report;
        let layout = verified.tcb_layout();
        let cpuid = r.cpuid().map(|(f, m, s)| serde_json::json!([f, m, s]));
        let (maj, min, build) = r.current_version();
        let got = serde_json::json!({
            "version": r.version.get(),
            "guest_svn": r.guest_svn.get(),
            "policy": format!("{:#x}", r.policy().0),
            "vmpl": r.vmpl.get(),
            "signature_algo": r.signature_algo.get(),
            "signing_key": r.signer_info().signing_key().name(),
            "mask_chip_key": r.signer_info().mask_chip_key(),
            "author_key_en": r.signer_info().author_key_en(),
            "report_data": hex(&r.report_data),
            "measurement": hex(&r.measurement),
            "host_data": hex(&r.host_data),
            "chip_id": hex(&r.chip_id),
            "current_tcb": tcb_json(&r.current_tcb(layout)),
            "reported_tcb": tcb_json(&r.reported_tcb(layout)),
            "committed_tcb": tcb_json(&r.committed_tcb(layout)),
            "launch_tcb": tcb_json(&r.launch_tcb(layout)),
            "cpuid_fam_mod_step": cpuid,
            "current_version": format!("{maj}.{min}.{build}"),
        });
        let mut checked = 0;
        for (key, want) in got.as_object().unwrap() {
            if let Some(exp) = e.get(key) {
                assert_eq!(want, exp, "{}: field {key}", v.name);
                checked += 1;
            }
        }
        assert!(checked >= 15, "{}: only {checked} fields compared", v.name);
        assert_eq!(verified.signing_key.name(), e["signing_key"]);
    }
}

fn err(anchors: &TrustAnchors, report: &[u8], ek: &[u8]) -> VerifyError {
    match verify(anchors, report, ek) {
        Ok(_) => panic!("tampered report accepted"),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

fn flipped(report: &[u8], offset: usize, bit: u8) -> Vec<u8> {
    let mut r = report.to_vec();
    r[offset] ^= 1 << bit;
    r
}

#[test]
fn flipped_bit_in_each_signed_region_is_rejected() {
    let anchors = builtin();
    let regions = [
        ("guest_svn", 0x04),
        ("policy", 0x08),
        ("family_id", 0x10),
        ("image_id", 0x20),
        ("vmpl", 0x30),
        ("current_tcb", 0x38),
        ("platform_info", 0x40),
        ("report_data", 0x50),
        ("measurement", 0x90 + 47),
        ("host_data", 0xC0),
        ("id_key_digest", 0xE0),
        ("report_id", 0x140),
        ("reported_tcb", 0x180),
        ("reported_tcb.microcode", 0x187),
        ("chip_id", 0x1A0),
        ("chip_id.last", 0x1DF),
        ("committed_tcb", 0x1E0),
        ("current_version", 0x1E8),
        ("launch_tcb", 0x1F0),
        ("reserved", 0x29F),
    ];
    for v in common::all() {
        for (name, off) in regions {
            let e = err(&anchors, &flipped(&v.report, off, 0), &v.ek);
            let want = if v.expected["signing_key"] == "vlek" {
                CertRole::Vlek
            } else {
                CertRole::Vcek
            };
            assert_eq!(
                e,
                VerifyError::ReportSignatureInvalid { key: want },
                "{}: {name}",
                v.name
            );
        }
        // The version field: 2 <-> 3 stays a supported version (then the signature
        // fails), any other flip is an unsupported version.
        let e = err(&anchors, &flipped(&v.report, 0, 4), &v.ek);
        assert!(
            matches!(
                e,
                VerifyError::Report(ReportError::UnsupportedVersion { .. })
            ),
            "{e}"
        );
    }
}

#[test]
fn every_single_bit_of_the_signed_area_matters() {
    let v = common::load("genoa-v3-routex");
    let anchors = builtin();
    let ek = anchors.verify_endorsement(&v.ek, None).unwrap();
    assert!(ek.verify_report(&v.report).is_ok());
    for off in 0..0x2A0 {
        let bit = (off % 8) as u8;
        let r = flipped(&v.report, off, bit);
        assert!(
            ek.verify_report(&r).is_err(),
            "flip at {off:#x} bit {bit} accepted"
        );
    }
}

#[test]
fn signature_read_big_endian_is_rejected() {
    let anchors = builtin();
    for v in common::all() {
        let mut r = v.report.clone();
        r[0x2A0..0x2A0 + 48].reverse();
        r[0x2E8..0x2E8 + 48].reverse();
        let e = err(&anchors, &r, &v.ek);
        assert!(
            matches!(e, VerifyError::ReportSignatureInvalid { .. }),
            "{}: {e}",
            v.name
        );
        // Non-zero padding above the 48-byte scalar.
        let e = err(&anchors, &flipped(&v.report, 0x2A0 + 60, 0), &v.ek);
        assert!(
            matches!(e, VerifyError::ReportSignatureMalformed { .. }),
            "{}: {e}",
            v.name
        );
    }
}

#[test]
fn endorsement_key_from_another_vector_is_rejected() {
    let anchors = builtin();
    let a = common::load("milan-v2-go-sev-guest");
    let b = common::load("milan-v2-virtee");
    let e = err(&anchors, &a.report, &b.ek);
    assert_eq!(
        e,
        VerifyError::ReportSignatureInvalid {
            key: CertRole::Vcek
        }
    );
    let g = common::load("genoa-v3-routex");
    let m = common::load("milan-v3-routex");
    let e = err(&anchors, &m.report, &g.ek);
    assert_eq!(
        e,
        VerifyError::GenerationMismatch {
            report: Generation::Milan,
            cert: Generation::Genoa
        }
    );
    let g2 = common::load("genoa-v3-azure-trustee");
    assert_eq!(
        err(&anchors, &g.report, &g2.ek),
        VerifyError::ReportSignatureInvalid {
            key: CertRole::Vcek
        }
    );
    // A VLEK-signed report with a VCEK, and the reverse.
    let vlek = common::load("milan-v3-vlek-trustee");
    assert_eq!(
        err(&anchors, &vlek.report, &m.ek),
        VerifyError::SigningKeyMismatch {
            report: SigningKey::Vlek,
            cert: SigningKey::Vcek
        }
    );
    assert_eq!(
        err(&anchors, &m.report, &vlek.ek),
        VerifyError::SigningKeyMismatch {
            report: SigningKey::Vcek,
            cert: SigningKey::Vlek
        }
    );
}

#[test]
fn root_of_another_generation_is_rejected() {
    let m = common::load("milan-v2-go-sev-guest");
    // Only Genoa roots trusted.
    let genoa_only = from_roots_dir(&[Generation::Genoa, Generation::Turin]);
    assert_eq!(
        err(&genoa_only, &m.report, &m.ek),
        VerifyError::NoTrustAnchor {
            generation: Generation::Milan,
            role: CertRole::Ark
        }
    );
    // The Genoa ARK offered as the Milan one fails the pin.
    let dir = common::roots_dir();
    let genoa_ark = std::fs::read(dir.join("genoa-ark.pem")).unwrap();
    let genoa_ask = std::fs::read(dir.join("genoa-ask.pem")).unwrap();
    let mut a = TrustAnchors::empty();
    match a.add_amd(Generation::Milan, &genoa_ark, Some(&genoa_ask), None) {
        Err(VerifyError::ArkNotPinned {
            generation: Generation::Milan,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    // Explicitly trusted as an extra root, the Genoa chain still does not sign a Milan VCEK.
    a.add_extra_root(
        "wrong",
        Generation::Milan,
        &genoa_ark,
        Some(&genoa_ask),
        None,
    )
    .unwrap();
    match err(&a, &m.report, &m.ek) {
        VerifyError::CertSignature {
            subject: CertRole::Vcek,
            issuer: CertRole::Ask,
            root,
        } => {
            assert!(matches!(root, RootUsed::Extra { .. }))
        }
        other => panic!("{other}"),
    }
    // The real Milan chain registered as an extra root is used, and named.
    let milan_ark = std::fs::read(dir.join("milan-ark.pem")).unwrap();
    let milan_ask = std::fs::read(dir.join("milan-ask.pem")).unwrap();
    let mut x = TrustAnchors::empty();
    x.add_extra_root("dev", Generation::Milan, &milan_ark, Some(&milan_ask), None)
        .unwrap();
    let ok = verify(&x, &m.report, &m.ek).unwrap();
    assert_eq!(
        ok.root,
        RootUsed::Extra {
            label: "dev".into(),
            generation: Generation::Milan
        }
    );
    // An ASK signed by another ARK.
    let mut y = TrustAnchors::empty();
    y.add_extra_root(
        "mixed",
        Generation::Milan,
        &milan_ark,
        Some(&genoa_ask),
        None,
    )
    .unwrap();
    match err(&y, &m.report, &m.ek) {
        VerifyError::CertSignature {
            subject: CertRole::Ask,
            issuer: CertRole::Ark,
            ..
        } => {}
        other => panic!("{other}"),
    }
}

#[test]
fn vlek_needs_the_asvk() {
    let v = common::load("milan-v3-vlek-trustee");
    let dir = common::roots_dir();
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let mut a = TrustAnchors::empty();
    a.add_amd(
        Generation::Milan,
        &read("milan-ark.pem"),
        Some(&read("milan-ask.pem")),
        None,
    )
    .unwrap();
    assert_eq!(
        err(&a, &v.report, &v.ek),
        VerifyError::NoTrustAnchor {
            generation: Generation::Milan,
            role: CertRole::Asvk
        }
    );
    let mut b = TrustAnchors::empty();
    // The ASK in the ASVK slot does not sign the VLEK.
    b.add_amd(
        Generation::Milan,
        &read("milan-ark.pem"),
        None,
        Some(&read("milan-ask.pem")),
    )
    .unwrap();
    assert!(matches!(
        err(&b, &v.report, &v.ek),
        VerifyError::CertSignature {
            subject: CertRole::Vlek,
            issuer: CertRole::Asvk,
            ..
        }
    ));
    let ok = verify(&builtin(), &v.report, &v.ek).unwrap();
    assert_eq!(ok.signing_key, SigningKey::Vlek);
    assert!(!ok.chip_id_checked);
}

#[test]
fn malformed_reports_are_rejected() {
    let anchors = builtin();
    let v = common::load("milan-v3-routex");
    for len in [0, 1, 0x2A0, 0x49F] {
        assert_eq!(
            err(&anchors, &v.report[..len], &v.ek),
            VerifyError::Report(ReportError::WrongSize {
                seen: len,
                expected: 0x4A0
            })
        );
    }
    let mut long = v.report.clone();
    long.push(0);
    assert_eq!(
        err(&anchors, &long, &v.ek),
        VerifyError::Report(ReportError::WrongSize {
            seen: 0x4A1,
            expected: 0x4A0
        })
    );
    for algo in [0u32, 2, 0x100] {
        let mut r = v.report.clone();
        r[0x34..0x38].copy_from_slice(&algo.to_le_bytes());
        assert_eq!(
            err(&anchors, &r, &v.ek),
            VerifyError::SignatureAlgo {
                seen: algo,
                expected: 1
            }
        );
    }
    for version in [0u32, 1, 4, 6, 0x0300_0000] {
        let mut r = v.report.clone();
        r[0..4].copy_from_slice(&version.to_le_bytes());
        assert_eq!(
            err(&anchors, &r, &v.ek),
            VerifyError::Report(ReportError::UnsupportedVersion { seen: version })
        );
    }
    let mut r = v.report.clone();
    r[0x48] |= 0b111 << 2; // signing key "none"
    assert_eq!(
        err(&anchors, &r, &v.ek),
        VerifyError::SigningKeyUnsupported {
            seen: SigningKey::None
        }
    );
    // Garbage and truncated certificates.
    assert!(matches!(
        err(&anchors, &v.report, b"not a certificate"),
        VerifyError::CertMalformed {
            role: CertRole::Endorsement,
            ..
        }
    ));
    assert!(matches!(
        err(&anchors, &v.report, &v.ek[..v.ek.len() - 1]),
        VerifyError::CertMalformed { .. }
    ));
    // A root in place of the endorsement key.
    let ark = std::fs::read(common::roots_dir().join("milan-ark.pem")).unwrap();
    assert!(matches!(
        err(&anchors, &v.report, &ark),
        VerifyError::CertMalformed { .. }
    ));
}

fn verified(name: &str) -> nitride_guest_driver::verify::VerifiedReport {
    let v = common::load(name);
    verify(&builtin(), &v.report, &v.ek).unwrap()
}

#[test]
fn vmpl_policy_is_exact() {
    // The VLEK vector was requested at VMPL 1 (a guest OS): it must never pass VMPL 0.
    let v1 = verified("milan-v3-vlek-trustee");
    assert_eq!(v1.report.vmpl.get(), 1);
    assert_eq!(
        AppraisalPolicy::new().expect_vmpl(0).appraise(&v1),
        Err(PolicyError::Vmpl {
            seen: 1,
            expected: 0
        })
    );
    assert!(AppraisalPolicy::new().expect_vmpl(1).appraise(&v1).is_ok());
    let v0 = verified("genoa-v3-routex");
    assert!(AppraisalPolicy::new().expect_vmpl(0).appraise(&v0).is_ok());
    assert_eq!(
        AppraisalPolicy::new().expect_vmpl(2).appraise(&v0),
        Err(PolicyError::Vmpl {
            seen: 0,
            expected: 2
        })
    );
    let msg = PolicyError::Vmpl {
        seen: 1,
        expected: 0,
    }
    .to_string();
    assert!(msg.contains("VMPL 1") && msg.contains("VMPL 0"), "{msg}");
    let e: Error = PolicyError::Vmpl {
        seen: 1,
        expected: 0,
    }
    .into();
    assert_eq!(e.to_string(), msg);
}

#[test]
fn other_policy_checks() {
    let v = verified("genoa-v3-routex");
    let r = v.report;
    let ok = AppraisalPolicy::new()
        .expect_report_data(r.report_data)
        .allow_measurement([0; 48])
        .allow_measurement(r.measurement)
        .min_tcb(v.reported_tcb());
    assert!(ok.appraise(&v).is_ok());

    let mut other = r.report_data;
    other[63] ^= 1;
    assert_eq!(
        AppraisalPolicy::new()
            .expect_report_data(other)
            .appraise(&v),
        Err(PolicyError::ReportData {
            seen: Box::new(r.report_data),
            expected: Box::new(other)
        })
    );
    // Not a manifest the SVSM writes: refused before any hash is compared.
    assert!(matches!(
        AppraisalPolicy::new()
            .expect_nonce_manifest(&[0; 64], b"manifest")
            .appraise(&v),
        Err(PolicyError::ManifestMalformed { .. })
    ));
    assert_eq!(
        AppraisalPolicy::new()
            .allow_measurement([7; 48])
            .appraise(&v),
        Err(PolicyError::Measurement {
            seen: r.measurement,
            allowed: vec![[7; 48]]
        })
    );
    let mut min = v.reported_tcb();
    min.snp += 1;
    assert_eq!(
        AppraisalPolicy::new().min_tcb(min).appraise(&v),
        Err(PolicyError::TcbTooLow {
            component: "snp",
            seen: min.snp - 1,
            minimum: min.snp
        })
    );
    assert_eq!(
        AppraisalPolicy::new()
            .allow_signing_keys(&[SigningKey::Vlek])
            .appraise(&v),
        Err(PolicyError::SigningKey {
            seen: SigningKey::Vcek,
            allowed: vec![SigningKey::Vlek]
        })
    );

    // go-sev-guest's report has the DEBUG policy bit set.
    let d = verified("milan-v2-go-sev-guest");
    assert!(d.report.policy().debug());
    assert_eq!(
        AppraisalPolicy::new().appraise(&d),
        Err(PolicyError::Debug {
            policy: d.report.policy().0
        })
    );
    assert!(AppraisalPolicy::new()
        .allow_debug(true)
        .appraise(&d)
        .is_ok());
}

/// The default policy (DEBUG and MIGRATE_MA refused, bit 17 required) against the
/// real reports: every vector passes but go-sev-guest's, whose guest policy allows
/// debugging. None allows MIGRATE_MA, all have bit 17 set, all allow SMT (so
/// requiring SMT off refuses each), none asks for a single socket.
#[test]
fn default_policy_on_the_real_vectors() {
    for v in common::all() {
        let r = verified(&v.name);
        let policy = r.report.policy();
        assert!(policy.reserved_must_be_one(), "{}", v.name);
        assert!(!policy.migrate_ma(), "{}", v.name);
        let default = AppraisalPolicy::new();
        let got = default.appraise(&r);
        if v.name == "milan-v2-go-sev-guest" {
            assert!(matches!(got, Err(PolicyError::Debug { .. })), "{}", v.name);
        } else {
            let a = got.unwrap_or_else(|e| panic!("{}: {e}", v.name));
            assert_eq!(a.guest_policy, policy);
        }
        assert!(policy.smt(), "{}", v.name);
        assert!(
            matches!(
                AppraisalPolicy::new()
                    .allow_debug(true)
                    .require_smt_off(true)
                    .appraise(&r),
                Err(PolicyError::Smt { .. })
            ),
            "{}",
            v.name
        );
        assert!(!policy.single_socket(), "{}", v.name);
        assert!(matches!(
            AppraisalPolicy::new()
                .allow_debug(true)
                .require_single_socket(true)
                .appraise(&r),
            Err(PolicyError::SingleSocket { .. })
        ));
        // Its own REPORTED_TCB as the minimum passes; one more in any component fails.
        let tcb = r.reported_tcb();
        let base = AppraisalPolicy::new().allow_debug(true);
        assert!(base.clone().min_tcb(tcb).appraise(&r).is_ok(), "{}", v.name);
        let mut higher = nitride_guest_driver::verify::MinTcb::from(tcb);
        higher.microcode = Some(tcb.microcode.saturating_add(1));
        if tcb.microcode < u8::MAX {
            assert!(
                matches!(
                    base.min_tcb(higher).appraise(&r),
                    Err(PolicyError::TcbTooLow {
                        component: "microcode",
                        ..
                    })
                ),
                "{}",
                v.name
            );
        }
    }
}

#[test]
fn reported_tcb_not_current_tcb_is_bound() {
    let v = verified("milan-v2-trustee");
    let layout = v.tcb_layout();
    assert_ne!(v.report.current_tcb(layout), v.report.reported_tcb(layout));
}

#[test]
fn certificate_table_and_pem_endorsements() {
    use nitride_protocol::snp::certs::{
        self, CertKind, CertTableEntry, GUID_ARK, GUID_ASK, GUID_VCEK,
    };
    use zerocopy::IntoBytes;

    let v = common::load("genoa-v3-routex");
    let dir = common::roots_dir();
    let ask = std::fs::read(dir.join("genoa-ask.pem")).unwrap();
    let ark = std::fs::read(dir.join("genoa-ark.pem")).unwrap();
    // An extended-request certificate table: VCEK, ASK, ARK, terminator, then the data.
    let blobs = [(GUID_VCEK, &v.ek), (GUID_ASK, &ask), (GUID_ARK, &ark)];
    let mut table = vec![0u8; 4 * certs::ENTRY_SIZE];
    for (i, (guid, blob)) in blobs.iter().enumerate() {
        let e = CertTableEntry {
            guid: *guid,
            offset: (table.len() as u32).into(),
            length: (blob.len() as u32).into(),
        };
        table[i * 24..(i + 1) * 24].copy_from_slice(e.as_bytes());
        table.extend_from_slice(blob);
    }
    let found: Vec<_> = certs::entries(&table).map(|e| e.unwrap()).collect();
    assert_eq!(found.len(), 3);
    assert_eq!(found[0], (CertKind::Vcek, &v.ek[..]));
    assert_eq!(found[2].0, CertKind::Ark);
    let mut anchors = TrustAnchors::empty();
    anchors
        .add_amd(Generation::Genoa, found[2].1, Some(found[1].1), None)
        .unwrap();
    assert!(verify(&anchors, &v.report, found[0].1).is_ok());

    // The same VCEK as PEM.
    let pem = der::Document::try_from(v.ek.as_slice())
        .unwrap()
        .to_pem("CERTIFICATE", der::pem::LineEnding::LF)
        .unwrap();
    assert!(verify(&builtin(), &v.report, pem.as_bytes()).is_ok());
    let wrong = pem.replace("CERTIFICATE", "PUBLIC KEY");
    assert!(matches!(
        verify(&builtin(), &v.report, wrong.as_bytes()),
        Err(VerifyError::CertMalformed {
            role: CertRole::Endorsement,
            ..
        })
    ));
}
