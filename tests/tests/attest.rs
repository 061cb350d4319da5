//! Attestation from the firmware, driven through the relay guest: the SVSM
//! attestation protocol (services and single service, size negotiation) and the
//! vHSM's AttestKey, each report checked with the guest-side verifier against the
//! development root of the virtual SNP machine's PSP (VMPL 0, REPORT_DATA binding, launch
//! measurement), and refused without that root; then the same through the `nitride`
//! command line.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::Path;

use nitride_guest_driver::attest::{AttestError, Target};
use nitride_guest_driver::relay::AttestParams;
use nitride_guest_driver::verify::{
    verify, AppraisalPolicy, CheckedEvidence, PolicyError, RootUsed, TrustAnchors, VerifiedReport,
    DEV_ROOT_LABEL,
};
use nitride_protocol::attest::{KeyBinding, VhsmManifest, MANIFEST_TABLE_GUID, VHSM_SERVICE_GUID};
use nitride_protocol::snp::Generation;
use nitride_protocol::svsm::{secrets, ResultCode};
use nitride_protocol::vhsm::{KeyTemplate, KeyType, KeyUsage, Status, VmplSet};
use nitride_tests::{
    boot_guest, dev_anchors, dev_chain_dir, endorsement_key, expect, start_relay, Outcome,
    RelayClient, VhsmClient, VhsmError,
};

/// The launch measurement of the production SVSM with the relay guest, as the
/// runner computes it (what every report of these VMs must carry).
fn expected_measurement() -> [u8; 48] {
    nitride_tests::relay_measurement()
}

fn p384(c: &mut VhsmClient<RelayClient>, usage: KeyUsage, label: &[u8]) -> u32 {
    c.generate(
        KeyTemplate::new(KeyType::EcdsaP384, usage, VmplSet::all(), false),
        label,
    )
    .unwrap()
    .key_id
    .get()
}

/// Verify `report` (with the endorsement from `table`) against the development
/// root, requiring VMPL 0 and the launch measurement.
fn genuine(report: &[u8], table: &[u8]) -> VerifiedReport {
    let v = verify(&dev_anchors(), report, &endorsement_key(table)).unwrap();
    assert_eq!(
        v.root,
        RootUsed::Extra {
            label: DEV_ROOT_LABEL.into(),
            generation: Generation::Genoa
        }
    );
    AppraisalPolicy::new()
        .expect_vmpl(0)
        .allow_measurement(expected_measurement())
        .appraise(&v)
        .unwrap();
    v
}

#[test]
fn services_attestation_binds_nonce_manifest_and_keys() {
    let (_vm, mut c) = start_relay("attest-services", "");
    let attested = p384(
        &mut c,
        KeyUsage::SIGN | KeyUsage::VERIFY | KeyUsage::ATTEST,
        b"attested",
    );
    let hidden = p384(&mut c, KeyUsage::SIGN | KeyUsage::VERIFY, b"not attested");
    let attested_spki = c.public_key(attested).unwrap();
    let attested_attrs = c.attributes(attested).unwrap();
    let nonce: [u8; 64] = c.random(64).unwrap().try_into().unwrap();

    let ev = c
        .transport()
        .attest(&AttestParams::new(Target::Services, &nonce))
        .unwrap();
    assert!(!ev.retried);
    let v = genuine(&ev.report, &ev.certificates);
    let policy = AppraisalPolicy::new().expect_vmpl(0);
    let checked = policy.clone().expect_nonce_manifest(&nonce, &ev.manifest);
    let appraisal = checked.appraise(&v).unwrap();

    // The manifest, as the policy checked it: a services table listing the vHSM,
    // whose entry holds the vault identity key and exactly the ATTEST keys.
    assert_eq!(&ev.manifest[..16], &MANIFEST_TABLE_GUID);
    let CheckedEvidence::Services {
        table,
        vhsm: Some(m),
        ..
    } = appraisal.evidence
    else {
        panic!("services evidence expected: {:?}", appraisal.evidence);
    };
    let vhsm_bytes = table.find(&VHSM_SERVICE_GUID).unwrap();
    assert_eq!(VhsmManifest::parse(vhsm_bytes).unwrap(), m);
    assert!(!m.identity.is_empty());
    let keys: Vec<_> = m.keys().collect();
    assert!(
        keys.iter()
            .any(|k| k.attributes == attested_attrs && k.spki == attested_spki.as_slice()),
        "the ATTEST key is listed with its attributes and SPKI"
    );
    assert!(
        keys.iter().all(|k| k.attributes.key_id.get() != hidden),
        "a key without ATTEST is not listed"
    );

    // A changed manifest, a changed nonce: refused.
    let mut other_manifest = ev.manifest.clone();
    // A byte of the listed key's label (table head 48 + vHSM header 144 + identity
    // 120, then the attributes' label at +16): still a manifest the SVSM could write,
    // so it is REPORT_DATA that refuses it. (Flipping a byte of a public key makes
    // it malformed first: see nonce_manifest_must_be_what_the_svsm_writes.)
    assert_eq!(&other_manifest[328..336], b"attested");
    other_manifest[328] ^= 1;
    assert!(matches!(
        policy
            .clone()
            .expect_nonce_manifest(&nonce, &other_manifest)
            .appraise(&v),
        Err(PolicyError::ReportData { .. })
    ));
    let mut other_nonce = nonce;
    other_nonce[0] ^= 1;
    assert!(matches!(
        policy
            .clone()
            .expect_nonce_manifest(&other_nonce, &ev.manifest)
            .appraise(&v),
        Err(PolicyError::ReportData { .. })
    ));
    // Without the development root the report is not genuine.
    let amd = TrustAnchors::amd_builtin().unwrap();
    let e = verify(&amd, &ev.report, &endorsement_key(&ev.certificates)).unwrap_err();
    assert!(matches!(e.check(), "chain" | "trust_anchor"), "{e}");

    // One service: the vHSM's manifest alone, bound the same way; no certificates
    // when none are asked for.
    let mut single = AttestParams::new(
        Target::SingleService {
            guid: VHSM_SERVICE_GUID,
            manifest_version: 0,
        },
        &nonce,
    );
    single.want_certificates = false;
    let one = c.transport().attest(&single).unwrap();
    assert!(one.certificates.is_empty());
    assert_eq!(one.manifest, vhsm_bytes);
    let v1 = genuine(&one.report, &ev.certificates);
    let single = policy.expect_nonce_manifest(&nonce, &one.manifest);
    assert!(matches!(
        single.appraise(&v1).unwrap().evidence,
        CheckedEvidence::VhsmService { .. }
    ));
}

#[test]
fn attest_key_binds_the_public_key_and_attributes() {
    let (_vm, mut c) = start_relay("attest-key", "");
    let key = p384(
        &mut c,
        KeyUsage::SIGN | KeyUsage::VERIFY | KeyUsage::ATTEST,
        b"tls key",
    );
    let nonce = [0x52u8; 64];
    let ak = c.attest_key(key, &nonce).unwrap();
    let b = KeyBinding::parse(&ak.binding).unwrap();
    assert_eq!(b.spki, c.public_key(key).unwrap().as_slice());
    assert_eq!(b.attributes, c.attributes(key).unwrap());
    assert_eq!(b.nonce, &nonce);
    let v = genuine(&ak.report, &ak.certificates);
    let policy = AppraisalPolicy::new().expect_vmpl(0);
    let checked = policy
        .clone()
        .expect_key_binding(&ak.binding)
        .expect_binding_nonce(&nonce);
    assert!(matches!(
        checked.appraise(&v).unwrap().evidence,
        CheckedEvidence::KeyBinding(got) if got == b
    ));
    // Another nonce expected, a binding with another key: refused.
    assert!(matches!(
        policy
            .clone()
            .expect_key_binding(&ak.binding)
            .expect_binding_nonce(&[0x53; 64])
            .appraise(&v),
        Err(PolicyError::KeyBindingNonce { .. })
    ));
    // Another label (the binding's byte 96, the attributes' label): a binding the
    // vault could write, but not the one the report binds.
    let mut other = ak.binding.clone();
    assert_eq!(&other[96..103], b"tls key");
    other[96] ^= 1;
    assert!(matches!(
        policy.expect_key_binding(&other).appraise(&v),
        Err(PolicyError::KeyBindingReportData { .. })
    ));

    // A key without ATTEST usage is refused.
    let plain = p384(&mut c, KeyUsage::SIGN | KeyUsage::VERIFY, b"plain");
    assert_eq!(
        c.attest_key(plain, &nonce),
        Err(VhsmError::Status(Status::UsageNotPermitted))
    );
}

#[test]
fn buffer_sizes_are_negotiated_through_the_relay() {
    let (_vm, mut c) = start_relay("attest-sizes", "");
    let nonce = [0x42u8; 64];
    let mut small = AttestParams::new(Target::Services, &nonce);
    small.manifest_size = 16;
    let first = c.transport().attest_call(&small).unwrap();
    assert_eq!(first.rax, ResultCode::InvalidParameter.raw());
    let Err(AttestError::BuffersTooSmall {
        manifest, report, ..
    }) = first.decode(&small)
    else {
        panic!("expected BuffersTooSmall, got {first:?}");
    };
    assert!(manifest > 16, "needed manifest size {manifest}");
    assert_eq!(report, 0x4A0);
    // The client retries once with the sizes asked for, and gets the evidence.
    let ev = c.transport().attest(&small).unwrap();
    assert!(ev.retried);
    assert_eq!(ev.manifest.len() as u64, manifest);
    let v = genuine(&ev.report, &ev.certificates);
    assert!(AppraisalPolicy::new()
        .expect_nonce_manifest(&nonce, &ev.manifest)
        .appraise(&v)
        .is_ok());
    // A report buffer below 0x4A0 bytes, a certificate buffer too small: the same.
    let mut tiny_report = AttestParams::new(Target::Services, &nonce);
    tiny_report.report_size = 0x100;
    let r = c.transport().attest_call(&tiny_report).unwrap();
    assert!(
        matches!(
            r.decode(&tiny_report),
            Err(AttestError::BuffersTooSmall { report: 0x4A0, .. })
        ),
        "{r:?}"
    );
    let mut tiny_certs = AttestParams::new(Target::Services, &nonce);
    tiny_certs.cert_size = 8;
    let r = c.transport().attest_call(&tiny_certs).unwrap();
    assert!(
        matches!(
            r.decode(&tiny_certs),
            Err(AttestError::BuffersTooSmall { certificates, .. }) if certificates > 8
        ),
        "{r:?}"
    );
    // A nonce of any other size than 64 bytes is refused by the SVSM (the relay
    // passes its length on), with nothing written and no sizes in the registers.
    for len in [0, 32, 63, 65, 4096] {
        let other = vec![0x42u8; len];
        let mut p = AttestParams::new(Target::Services, &nonce);
        p.nonce = &other;
        let r = c.transport().attest_call(&p).unwrap();
        assert_eq!(r.rax, ResultCode::InvalidParameter.raw(), "{len}: {r:?}");
        assert_eq!((r.rcx, r.rdx, r.r8), (0, 0, 0), "{len}: {r:?}");
    }
    // The channel still serves vHSM requests afterwards.
    assert_eq!(c.random(8).unwrap().len(), 8);
}

#[test]
fn guest_secrets_page_holds_no_vmpck0() {
    let (_vm, mut c) = start_relay("attest-secrets", "");
    let page = c.transport().secrets_page().unwrap();
    let info = c.transport().info().unwrap();
    // It is the real secrets page: the SVSM fields match what the relay reported.
    let base = u64::from_le_bytes(page[secrets::SVSM_BASE..][..8].try_into().unwrap());
    assert_eq!(base, info.svsm_base);
    let vmpck0 = &page[secrets::VMPCK[0]..][..32];
    assert!(
        vmpck0.iter().all(|&b| b == 0),
        "the guest can see VMPCK0: {vmpck0:02x?}"
    );
    // The guest's own keys are there (the PSP is present; VMPCK1..3 are the guest's).
    for slot in 1..4 {
        let k = &page[secrets::VMPCK[slot]..][..32];
        assert!(k.iter().any(|&b| b != 0), "VMPCK{slot} missing");
    }
}

/// [`nitride_tests::nitride`] with stdout as text.
fn nitride(sock: Option<&Path>, args: &[&str]) -> (i32, String, String) {
    let (code, out, e) = nitride_tests::nitride(sock, args);
    (code, String::from_utf8_lossy(&out).into_owned(), e)
}

#[test]
fn cli_attest_then_verify() {
    let (vm, client) = start_relay("attest-cli", "");
    // QEMU serves one connection at a time: each command connects anew.
    drop(client);
    let s = vm.socket.clone();
    let sock = Some(s.as_path());
    let dir = vm.dir.join("services");
    let d = dir.display().to_string();
    let dev = dev_chain_dir().display().to_string();
    let m = hex::encode(expected_measurement());
    let nonce = "00112233445566778899aabbccddeeff".repeat(4);

    let (code, out, err) = nitride(
        sock,
        &["attest", "services", "--nonce", &nonce, "-o", &d, "--json"],
    );
    assert_eq!(code, 0, "{err}");
    let summary: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(summary["report"]["vmpl"], 0, "{summary}");
    for f in ["report.bin", "manifest.bin", "certs.bin", "vcek.der"] {
        assert!(dir.join(f).is_file(), "{f} missing: {summary}");
    }
    let manifest = dir.join("manifest.bin").display().to_string();
    let verify_args = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "report",
            "verify",
            "-d",
            &d,
            "--nonce",
            &nonce,
            "--manifest",
            &manifest,
            "--measurement",
            &m,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    // Without the development root: refused, saying it is a development root.
    let args = verify_args(&[]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = nitride(None, &argv);
    assert_eq!(code, 1);
    assert!(
        err.contains("*development* root") && err.contains("--trust-dev-root"),
        "{err}"
    );
    // With it: valid, VMPL 0 checked (implied by --manifest).
    let mut args = verify_args(&["--json"]);
    args.extend(["--trust-dev-root".to_string(), dev.clone()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out, err) = nitride(None, &argv);
    assert_eq!(code, 0, "{err}");
    let verdict: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(verdict["verdict"], "valid");
    assert_eq!(verdict["vmpl"], 0);
    assert_eq!(verdict["vmpl_checked"], true);
    // The verdict shows the guest policy bits and the evidence as checked.
    assert_eq!(verdict["guest_policy"]["value"], "0x30000", "{verdict}");
    assert_eq!(verdict["evidence"]["kind"], "services", "{verdict}");
    assert_eq!(verdict["evidence"]["nonce"], nonce, "{verdict}");
    assert!(
        verdict["evidence"]["vhsm"]["identity_key"]
            .as_str()
            .is_some_and(|k| k.len() == 240),
        "{verdict}"
    );
    // Another nonce: refused.
    let other = "ff".repeat(64);
    let args: Vec<String> = argv
        .iter()
        .map(|a| {
            if *a == nonce {
                other.clone()
            } else {
                a.to_string()
            }
        })
        .collect();
    let argv2: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = nitride(None, &argv2);
    assert_eq!(code, 1);
    assert!(err.contains("policy report_data"), "{err}");

    // AttestKey through the CLI.
    let (code, out, err) = nitride(
        sock,
        &[
            "key",
            "generate",
            "--type",
            "ecdsa-p384",
            "--usage",
            "sign,verify,attest",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"].to_string();
    let (key_nonce, other_key_nonce) = ("c0ffee00".repeat(16), "c0ffef00".repeat(16));
    let kdir = vm.dir.join("key");
    let kd = kdir.display().to_string();
    let (code, _, err) = nitride(
        sock,
        &["attest", "key", &id, "--nonce", &key_nonce, "-o", &kd],
    );
    assert_eq!(code, 0, "{err}");
    let kb = kdir.join("key-binding.bin").display().to_string();
    let (code, _, err) = nitride(
        None,
        &[
            "report",
            "verify",
            "-d",
            &kd,
            "--key-binding",
            &kb,
            "--nonce",
            &key_nonce,
            "--trust-dev-root",
            &dev,
            "--measurement",
            &m,
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = nitride(
        None,
        &[
            "report",
            "verify",
            "-d",
            &kd,
            "--key-binding",
            &kb,
            "--nonce",
            &other_key_nonce,
            "--trust-dev-root",
            &dev,
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("policy key binding: nonce"), "{err}");
}

/// The test guest plays a hostile guest OS against the firmware (`mode=forgery`,
/// `tests/guest/src/forgery.rs`): the long-nonce services and single-service
/// forgeries and the key binding made from a protocol-1 report are refused with
/// INVALID_PARAMETER and nothing written; so is every nonce length but 64; a
/// binding-shaped 64-byte nonce gives evidence that reads as a services
/// attestation only.
#[test]
fn firmware_refuses_the_guest_forgeries() {
    let out = boot_guest("forgery");
    for check in [
        "genuine-services",
        "forged-services-refused",
        "forged-single-service-refused",
        "forged-binding-refused",
        "binding-shaped-nonce-reads-as-services",
        "other-nonce-length-refused",
        "genuine-after",
    ] {
        expect(
            &out,
            out.guest_lines()
                .any(|l| l.contains(&format!("CHECK {check}:")) && l.ends_with("... ok")),
            check,
        );
    }
    expect(
        &out,
        !out.guest_lines().any(|l| l.ends_with("... FAIL")),
        "a check failed",
    );
    expect(
        &out,
        out.outcome() == Outcome::GuestPass,
        "guest did not pass",
    );
}
