//! Development roots: a throwaway ARK/ASK/VCEK chain made with `openssl` (as the
//! virtual SNP machine's, with subjects that say DEVELOPMENT), a report signed with
//! the VCEK; the verifier refuses it unless the root is trusted explicitly, and the
//! CLI says why. Key bindings and the VMPL 0 default are checked on the same report.
#![allow(clippy::unwrap_used)]

mod devchain;

use std::path::Path;
use std::process::{Command, Output};

use devchain::{make_chain, p384_key, signed_report, signed_report_with_policy};
use nitride_guest_driver::verify::{
    verify, AppraisalPolicy, PolicyError, RootUsed, TrustAnchors, VerifyError,
};
use nitride_protocol::attest::KeyBinding;
use nitride_protocol::snp::Generation;
use nitride_protocol::vhsm::{KeyAttributes, KeyType, KeyUsage, Origin, VmplSet};
use sha2::{Digest, Sha512};
use zerocopy::byteorder::little_endian::{U16, U32};

/// The nonce of these tests.
const NONCE: [u8; 64] = [0x74; 64];

/// A key binding of a P-384 key (its SPKI made by OpenSSL) with `nonce`.
fn binding(dir: &Path, nonce: &[u8; 64]) -> Vec<u8> {
    let spki = p384_key(dir, "bound.key");
    let mut label = [0u8; 32];
    label[..5].copy_from_slice(b"bound");
    let attributes = KeyAttributes {
        key_id: U32::new(7),
        key_type: U16::new(KeyType::EcdsaP384.raw()),
        origin: Origin::Generated.raw(),
        allowed_vmpls: VmplSet::all().bits(),
        usage: U32::new((KeyUsage::SIGN | KeyUsage::ATTEST).bits()),
        exportable: 0,
        label_len: 5,
        reserved: U16::new(0),
        label,
    };
    let b = KeyBinding {
        attributes,
        nonce,
        spki: &spki,
    };
    let mut out = vec![0u8; b.encoded_len()];
    b.write(&mut out).unwrap();
    out
}

fn nitride(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nitride"))
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn development_root_only_when_trusted_explicitly() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = tmp.path().join("chain");
    std::fs::create_dir(&chain).unwrap();
    make_chain(&chain);
    let bind = binding(&chain, &NONCE);
    let report = signed_report(&chain, 0, Sha512::digest(&bind).into());
    let vcek = std::fs::read(chain.join("vcek.der")).unwrap();

    // Library: AMD roots refuse it; the dev root dir accepts it and says so.
    let amd = TrustAnchors::amd_builtin().unwrap();
    assert!(matches!(
        verify(&amd, &report, &vcek),
        Err(VerifyError::CertSignature { .. } | VerifyError::NoTrustAnchor { .. })
    ));
    let mut dev = TrustAnchors::amd_builtin().unwrap();
    assert_eq!(dev.add_dev_root_dir(&chain).unwrap(), Generation::Genoa);
    let v = verify(&dev, &report, &vcek).unwrap();
    assert_eq!(
        v.root,
        RootUsed::Extra {
            label: "development".into(),
            generation: Generation::Genoa
        }
    );
    assert!(v.chip_id_checked);
    // An AMD ARK is no development root; a missing directory is an error.
    let roots = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs");
    let amd_ark = std::fs::read(roots.join("genoa-ark.pem")).unwrap();
    let amd_ask = std::fs::read(roots.join("genoa-ask.pem")).unwrap();
    assert!(TrustAnchors::empty()
        .add_dev_root(&amd_ark, &amd_ask)
        .is_err());
    assert!(TrustAnchors::empty()
        .add_dev_root_dir(&tmp.path().join("nope"))
        .is_err());

    // CLI: the evidence directory as `nitride attest key` writes it.
    let ev = tmp.path().join("evidence");
    std::fs::create_dir(&ev).unwrap();
    std::fs::write(ev.join("report.bin"), &report).unwrap();
    std::fs::write(ev.join("vcek.der"), &vcek).unwrap();
    std::fs::write(ev.join("key-binding.bin"), &bind).unwrap();
    let (evs, chains) = (
        ev.to_string_lossy().into_owned(),
        chain.to_string_lossy().into_owned(),
    );
    let kb = ev.join("key-binding.bin").to_string_lossy().into_owned();
    // Without --trust-dev-root: refused, and the message says why and what to do.
    let o = nitride(&["report", "verify", "-d", &evs, "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got["check"], "development_root", "{got}");
    let e = stderr(&o);
    assert!(
        e.contains("*development* root, not by AMD") && e.contains("--trust-dev-root DIR"),
        "{e}"
    );
    // With the ARK and ASK next to the evidence, the chain itself is what tells.
    std::fs::copy(chain.join("ark.der"), ev.join("ark.der")).unwrap();
    std::fs::copy(chain.join("ask.der"), ev.join("ask.der")).unwrap();
    let o = nitride(&["report", "verify", "-d", &evs]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("chains to the non-AMD ARK"),
        "{}",
        stderr(&o)
    );
    // Trusted explicitly: accepted, and the verdict names the development root.
    let o = nitride(&[
        "report",
        "verify",
        "-d",
        &evs,
        "--trust-dev-root",
        &chains,
        "--key-binding",
        &kb,
        "--nonce",
        &hex::encode(NONCE),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("extra root 'development'") && text.contains("NOT an AMD root"),
        "{text}"
    );
    // Wrong nonce, altered binding: refused with the key-binding check.
    let o = nitride(&[
        "report",
        "verify",
        "-d",
        &evs,
        "--trust-dev-root",
        &chains,
        "--key-binding",
        &kb,
        "--nonce",
        &"00".repeat(64),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("policy key binding: nonce"),
        "{}",
        stderr(&o)
    );
    // Another label (byte 96: the first of the attributes' label), still a binding
    // the vault could write.
    let mut altered = bind.clone();
    altered[96] ^= 1;
    std::fs::write(ev.join("altered.bin"), &altered).unwrap();
    let o = nitride(&[
        "report",
        "verify",
        "-d",
        &evs,
        "--trust-dev-root",
        &chains,
        "--key-binding",
        &ev.join("altered.bin").to_string_lossy(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("policy key binding: REPORT_DATA"),
        "{}",
        stderr(&o)
    );

    // The same binding in a VMPL 1 report: refused by the VMPL 0 default.
    let vmpl1 = signed_report(&chain, 1, Sha512::digest(&bind).into());
    std::fs::write(ev.join("report.bin"), &vmpl1).unwrap();
    let o = nitride(&[
        "report",
        "verify",
        "-d",
        &evs,
        "--trust-dev-root",
        &chains,
        "--key-binding",
        &kb,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("VMPL 1, expected VMPL 0"),
        "{}",
        stderr(&o)
    );
}

/// The guest policy bits a signed report carries: MIGRATE_MA (bit 18) is refused
/// unless allowed, a clear must-be-one bit 17 is refused always, by the library and
/// by `nitride report verify` (whose verdict shows the bits).
#[test]
fn migrate_ma_and_the_must_be_one_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let chain = tmp.path().join("chain");
    std::fs::create_dir(&chain).unwrap();
    make_chain(&chain);
    let mut anchors = TrustAnchors::empty();
    anchors.add_dev_root_dir(&chain).unwrap();
    let vcek = std::fs::read(chain.join("vcek.der")).unwrap();
    let cases = [
        (0x3_0000u64, None),
        (0x7_0000, Some("policy_migrate_ma")),
        (0x1_0000, Some("policy_reserved_bit")),
    ];
    for (policy, refused) in cases {
        let report = signed_report_with_policy(&chain, 0, [0x11; 64], policy);
        let v = verify(&anchors, &report, &vcek).unwrap();
        let got = AppraisalPolicy::new()
            .appraise(&v)
            .map(|a| a.guest_policy.0);
        match refused {
            None => assert_eq!(got, Ok(policy)),
            Some(check) => assert_eq!(got.unwrap_err().check(), check, "{policy:#x}"),
        }
        let dir = tmp.path().join(format!("ev-{policy:x}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("report.bin"), &report).unwrap();
        std::fs::write(dir.join("vcek.der"), &vcek).unwrap();
        let (d, c) = (dir.to_string_lossy(), chain.to_string_lossy());
        let args = [
            "report",
            "verify",
            "-d",
            &d,
            "--trust-dev-root",
            &c,
            "--json",
        ];
        let o = nitride(&args);
        let verdict: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(
            verdict["guest_policy"]["value"],
            format!("{policy:#x}"),
            "{verdict}"
        );
        match refused {
            None => assert!(o.status.success(), "{verdict}"),
            Some(check) => {
                assert_eq!(o.status.code(), Some(1), "{verdict}");
                assert_eq!(verdict["check"], check, "{verdict}");
            }
        }
    }
    // MIGRATE_MA allowed explicitly.
    let report = signed_report_with_policy(&chain, 0, [0x11; 64], 0x7_0000);
    let v = verify(&anchors, &report, &vcek).unwrap();
    assert!(AppraisalPolicy::new()
        .allow_migrate_ma(true)
        .appraise(&v)
        .is_ok());
    assert_eq!(
        AppraisalPolicy::new().appraise(&v).map(|_| ()),
        Err(PolicyError::MigrateMa { policy: 0x7_0000 })
    );
    let dir = tmp.path().join("ev-70000");
    let (d, c) = (dir.to_string_lossy(), chain.to_string_lossy());
    let o = nitride(&[
        "report",
        "verify",
        "-d",
        &d,
        "--trust-dev-root",
        &c,
        "--allow-migrate-ma",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("migrate_ma: true"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
