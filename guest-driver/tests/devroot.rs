//! Development roots: a throwaway ARK/ASK/VCEK chain made with `openssl` (as the
//! emulated platform's, with subjects that say DEVELOPMENT), a report signed with
//! the VCEK; the verifier refuses it unless the root is trusted explicitly, and the
//! CLI says why. Key bindings and the VMPL 0 default are checked on the same report.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use nitride_guest_driver::verify::{verify, RootUsed, TrustAnchors, VerifyError};
use nitride_protocol::attest::KeyBinding;
use nitride_protocol::snp::{AttestationReport, Generation};
use nitride_protocol::vhsm::KeyAttributes;
use sha2::{Digest, Sha512};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromZeros, IntoBytes};

const CHIP_ID: [u8; 64] = [0x5A; 64];
// bootloader, tee, snp, microcode
const TCB: (u8, u8, u8, u8) = (9, 0, 23, 72);

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl is required (apt-get install openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const PSS: [&str; 7] = [
    "-sha384",
    "-sigopt",
    "rsa_padding_mode:pss",
    "-sigopt",
    "rsa_pss_saltlen:48",
    "-sigopt",
    "rsa_mgf1_md:sha384",
];

/// ark.pem, ask.pem, vcek.pem, vcek.der and vcek.key in `dir`.
fn make_chain(dir: &Path) {
    let hwid: Vec<String> = CHIP_ID.iter().map(|b| format!("{b:02X}")).collect();
    let cnf = format!(
        "[v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign\n\
         [v3_vcek]\n\
         1.3.6.1.4.1.3704.1.1 = ASN1:INTEGER:0\n\
         1.3.6.1.4.1.3704.1.2 = ASN1:IA5STRING:Genoa\n\
         1.3.6.1.4.1.3704.1.3.1 = ASN1:INTEGER:{}\n\
         1.3.6.1.4.1.3704.1.3.2 = ASN1:INTEGER:{}\n\
         1.3.6.1.4.1.3704.1.3.3 = ASN1:INTEGER:{}\n\
         1.3.6.1.4.1.3704.1.3.8 = ASN1:INTEGER:{}\n\
         1.3.6.1.4.1.3704.1.4 = DER:{}\n\
         [req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n",
        TCB.0,
        TCB.1,
        TCB.2,
        TCB.3,
        hwid.join(":")
    );
    std::fs::write(dir.join("openssl.cnf"), cnf).unwrap();
    for (key, alg, opt) in [
        ("ark.key", "RSA", "rsa_keygen_bits:2048"),
        ("ask.key", "RSA", "rsa_keygen_bits:2048"),
        ("vcek.key", "EC", "ec_paramgen_curve:P-384"),
    ] {
        openssl(
            dir,
            &["genpkey", "-algorithm", alg, "-pkeyopt", opt, "-out", key],
        );
    }
    let subj = |cn: &str| format!("/O=Nitride development, NOT AMD/CN=Nitride DEVELOPMENT {cn}");
    let ark_subj = subj("ARK-Genoa");
    let mut args = vec![
        "req",
        "-x509",
        "-new",
        "-config",
        "openssl.cnf",
        "-extensions",
        "v3_ca",
        "-key",
        "ark.key",
        "-subj",
        &ark_subj,
        "-days",
        "30",
        "-out",
        "ark.pem",
    ];
    args.extend(PSS);
    openssl(dir, &args);
    for (key, cn, issuer, issuer_key, section, out) in [
        (
            "ask.key",
            "SEV-Genoa",
            "ark.pem",
            "ark.key",
            "v3_ca",
            "ask.pem",
        ),
        (
            "vcek.key", "SEV-VCEK", "ask.pem", "ask.key", "v3_vcek", "vcek.pem",
        ),
    ] {
        let s = subj(cn);
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-config",
                "openssl.cnf",
                "-key",
                key,
                "-subj",
                &s,
                "-out",
                "req.csr",
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            issuer,
            "-CAkey",
            issuer_key,
            "-set_serial",
            "0",
            "-days",
            "30",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            section,
            "-out",
            out,
        ];
        args.extend(PSS);
        openssl(dir, &args);
    }
    for (pem, der) in [
        ("vcek.pem", "vcek.der"),
        ("ask.pem", "ask.der"),
        ("ark.pem", "ark.der"),
    ] {
        openssl(dir, &["x509", "-in", pem, "-outform", "DER", "-out", der]);
    }
}

/// Read one DER INTEGER at the front of `b`: (value without leading zeros, rest).
fn der_int(b: &[u8]) -> (&[u8], &[u8]) {
    assert_eq!(b[0], 0x02);
    let len = b[1] as usize;
    let (v, rest) = b[2..].split_at(len);
    let v = if v[0] == 0 { &v[1..] } else { v };
    (v, rest)
}

/// A version-2 report at `vmpl` binding `report_data`, signed with `dir/vcek.key`.
fn signed_report(dir: &Path, vmpl: u32, report_data: [u8; 64]) -> Vec<u8> {
    let mut r = AttestationReport::new_zeroed();
    r.version = U32::new(2);
    r.policy = U64::new(0x3_0000);
    r.vmpl = U32::new(vmpl);
    r.signature_algo = U32::new(1);
    r.report_data = report_data;
    r.measurement = [0x11; 48];
    r.chip_id = CHIP_ID;
    let tcb = u64::from(TCB.0)
        | (u64::from(TCB.1) << 8)
        | (u64::from(TCB.2) << 48)
        | (u64::from(TCB.3) << 56);
    r.reported_tcb = U64::new(tcb);
    r.current_tcb = U64::new(tcb);
    std::fs::write(dir.join("signed.bin"), r.signed_bytes()).unwrap();
    openssl(
        dir,
        &[
            "dgst",
            "-sha384",
            "-sign",
            "vcek.key",
            "-out",
            "sig.der",
            "signed.bin",
        ],
    );
    let sig = std::fs::read(dir.join("sig.der")).unwrap();
    assert_eq!(sig[0], 0x30);
    let (rv, rest) = der_int(&sig[2..]);
    let (sv, _) = der_int(rest);
    for (dst, v) in [(&mut r.signature.r, rv), (&mut r.signature.s, sv)] {
        for (i, b) in v.iter().rev().enumerate() {
            dst[i] = *b;
        }
    }
    r.as_bytes().to_vec()
}

fn binding(nonce: &[u8]) -> Vec<u8> {
    let attributes = KeyAttributes {
        key_id: U32::new(7),
        ..Default::default()
    };
    let b = KeyBinding {
        attributes,
        nonce,
        spki: b"not really an spki",
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
    let bind = binding(b"the nonce");
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
        &hex::encode(b"the nonce"),
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
        "00",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("policy key binding: nonce"),
        "{}",
        stderr(&o)
    );
    let mut altered = bind.clone();
    *altered.last_mut().unwrap() ^= 1;
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
