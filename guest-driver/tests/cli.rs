//! The `nitride report` command line, run as a process on the real vectors.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Command, Output};

fn nitride(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nitride"))
        .args(args)
        .output()
        .unwrap()
}

fn path(v: &common::Vector, f: &str) -> String {
    v.dir.join(f).to_string_lossy().into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn show_json_matches_expected_fields() {
    for v in common::all() {
        let o = nitride(&["report", "show", &path(&v, "report.bin"), "--json"]);
        assert!(o.status.success(), "{}: {}", v.name, stderr(&o));
        let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for key in [
            "version",
            "guest_svn",
            "policy",
            "vmpl",
            "signature_algo",
            "signing_key",
            "mask_chip_key",
            "author_key_en",
            "report_data",
            "measurement",
            "host_data",
            "chip_id",
            "current_tcb",
            "reported_tcb",
            "committed_tcb",
            "launch_tcb",
            "cpuid_fam_mod_step",
            "current_version",
        ] {
            assert_eq!(got[key], v.expected[key], "{}: {key}", v.name);
        }
        // Text form mentions every top-level field too.
        let o = nitride(&["report", "show", &path(&v, "report.bin")]);
        let text = String::from_utf8(o.stdout).unwrap();
        for key in got.as_object().unwrap().keys() {
            assert!(
                text.contains(&format!("{key}:")),
                "{}: text lacks {key}",
                v.name
            );
        }
    }
}

#[test]
fn verify_accepts_every_vector_with_bundled_and_given_roots() {
    let roots = common::roots_dir().to_string_lossy().into_owned();
    for v in common::all() {
        let report = path(&v, "report.bin");
        let ek = v.ek_path.to_string_lossy().into_owned();
        let vmpl = v.expected["vmpl"].to_string();
        let base = [
            "report",
            "verify",
            report.as_str(),
            "--vcek",
            ek.as_str(),
            "--allow-debug",
        ];
        let o = nitride(&[&base[..], &["--expect-vmpl", &vmpl, "--json"]].concat());
        assert!(o.status.success(), "{}: {}", v.name, stderr(&o));
        let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(got["verdict"], "valid");
        assert_eq!(got["generation"], v.expected["generation"]);
        let o = nitride(&[&base[..], &["--roots", &roots]].concat());
        assert!(o.status.success(), "{}: {}", v.name, stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).starts_with("verdict: valid"));
    }
}

#[test]
fn verify_rejections_exit_non_zero_with_the_check() {
    let vlek = common::load("milan-v3-vlek-trustee");
    let report = path(&vlek, "report.bin");
    let ek = vlek.ek_path.to_string_lossy().into_owned();
    let rd = vlek.expected["report_data"].as_str().unwrap().to_string();
    let m = vlek.expected["measurement"].as_str().unwrap().to_string();
    let run = |extra: &[&str]| {
        nitride(
            &[
                &["report", "verify", report.as_str(), "--vcek", ek.as_str()][..],
                extra,
            ]
            .concat(),
        )
    };
    // VMPL 1 report never passes a VMPL 0 requirement.
    let o = run(&["--expect-vmpl", "0"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("VMPL 1, expected VMPL 0"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "--expect-vmpl",
        "1",
        "--report-data",
        &rd,
        "--measurement",
        &"00".repeat(48),
        "--measurement",
        &m,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(&["--report-data", &"00".repeat(64)]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("policy report_data"), "{}", stderr(&o));
    let manifest = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(manifest.path(), b"manifest").unwrap();
    let nonce = "11".repeat(64);
    // A nonce of any other length than 64 bytes is a usage error that says so.
    let o = run(&[
        "--nonce",
        "0011",
        "--manifest",
        &manifest.path().to_string_lossy(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("the nonce is 2 bytes; it must be exactly 64 bytes"),
        "{}",
        stderr(&o)
    );
    let o = run(&[
        "--nonce",
        &nonce,
        "--manifest",
        &manifest.path().to_string_lossy(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // SVSM evidence (--manifest / --key-binding) implies VMPL 0: this VMPL 1 report,
    // one a guest OS asked for, is refused for that before REPORT_DATA is compared.
    assert_eq!(got["check"], "policy_vmpl", "{got}");
    let o = run(&[
        "--nonce",
        &nonce,
        "--manifest",
        &manifest.path().to_string_lossy(),
        "--expect-vmpl",
        "1",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // Not a manifest the SVSM writes: refused before any hash is compared.
    assert_eq!(got["check"], "policy_manifest", "{got}");
    // The same for a key binding; a binding that does not parse is named as such.
    let o = run(&[
        "--key-binding",
        &manifest.path().to_string_lossy(),
        "--vmpl",
        "1",
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got["check"], "policy_key_binding", "{got}");
    assert!(
        got["error"].as_str().unwrap().contains("malformed"),
        "{got}"
    );
    let o = run(&[
        "--key-binding",
        &manifest.path().to_string_lossy(),
        "--json",
    ]);
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got["check"], "policy_vmpl", "{got}");
    let o = run(&["--measurement", &"00".repeat(48)]);
    assert!(stderr(&o).contains("policy measurement"), "{}", stderr(&o));

    // Debug policy bit refused by default.
    let dbg = common::load("milan-v2-go-sev-guest");
    let o = nitride(&[
        "report",
        "verify",
        &path(&dbg, "report.bin"),
        "--vcek",
        &dbg.ek_path.to_string_lossy(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("policy debug"), "{}", stderr(&o));

    // Wrong certificate, truncated file, bad roots dir, usage errors.
    let other = common::load("milan-v3-routex");
    let o = run(&[]);
    assert!(o.status.success());
    let o = nitride(&[
        "report",
        "verify",
        &path(&other, "report.bin"),
        "--vcek",
        &ek,
    ]);
    assert!(stderr(&o).contains("signing key"), "{}", stderr(&o));
    let short = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(short.path(), &vlek.report[..100]).unwrap();
    let o = nitride(&[
        "report",
        "verify",
        &short.path().to_string_lossy(),
        "--vcek",
        &ek,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("report size: 100 bytes"),
        "{}",
        stderr(&o)
    );
    let o = nitride(&["report", "show", &short.path().to_string_lossy()]);
    assert_eq!(o.status.code(), Some(1));
    let o = run(&["--roots", "/nonexistent"]);
    assert_eq!(o.status.code(), Some(1));
    for bad in [
        &["report", "verify", report.as_str()][..],
        &["report", "frobnicate"],
        &["nosuchgroup"],
        &[],
        &["report", "show", report.as_str(), "--bogus"],
        &[
            "report",
            "verify",
            report.as_str(),
            "--vcek",
            ek.as_str(),
            "--nonce",
            "00",
        ],
        &[
            "report",
            "verify",
            report.as_str(),
            "--vcek",
            ek.as_str(),
            "--report-data",
            "zz",
        ],
        &[
            "report",
            "verify",
            report.as_str(),
            "--vcek",
            ek.as_str(),
            "--manifest",
            report.as_str(),
            "--key-binding",
            report.as_str(),
            "--nonce",
            "00",
        ],
        &[
            "report",
            "verify",
            report.as_str(),
            "--vcek",
            ek.as_str(),
            "--certs",
            ek.as_str(),
        ],
        &["report", "verify", "--vcek", ek.as_str()],
        &["report", "verify", report.as_str()],
        &["attest", "services", "-o", "/tmp/x"],
        &["attest", "key", "1", "--nonce", "00"],
        &[
            "attest",
            "services",
            "--nonce",
            "00",
            "--service",
            "nope",
            "-o",
            "/tmp/x",
        ],
    ] {
        let o = nitride(bad);
        assert_eq!(o.status.code(), Some(2), "{bad:?}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("usage") || stderr(&o).contains("--"),
            "{bad:?}"
        );
    }
}

/// A certificate table VCEK, ASK, ARK (as an extended guest request or the SVSM
/// returns it) for a vector of `generation`.
fn cert_table(ek: &[u8], ask: &[u8], ark: &[u8]) -> Vec<u8> {
    use nitride_protocol::snp::certs::{self, CertTableEntry, GUID_ARK, GUID_ASK, GUID_VCEK};
    use zerocopy::IntoBytes;
    let blobs = [(GUID_VCEK, ek), (GUID_ASK, ask), (GUID_ARK, ark)];
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
    table
}

#[test]
fn verify_from_certificate_table_and_attest_dir() {
    let v = common::load("genoa-v3-routex");
    let roots = common::roots_dir();
    let ask = std::fs::read(roots.join("genoa-ask.pem")).unwrap();
    let ark = std::fs::read(roots.join("genoa-ark.pem")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("report.bin"), &v.report).unwrap();
    std::fs::write(d.join("certs.bin"), cert_table(&v.ek, &ask, &ark)).unwrap();
    let certs = d.join("certs.bin").to_string_lossy().into_owned();
    let report = d.join("report.bin").to_string_lossy().into_owned();
    let o = nitride(&["report", "verify", &report, "--certs", &certs, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(got["root"], "AMD ARK (genoa, pinned)");
    // -d DIR: report.bin and, without vcek.der, certs.bin.
    let ds = d.to_string_lossy().into_owned();
    let vmpl = v.expected["vmpl"].to_string();
    let other = (v.expected["vmpl"].as_u64().unwrap() + 1).to_string();
    let o = nitride(&["report", "verify", "-d", &ds, "--expect-vmpl", &other]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("policy vmpl"), "{}", stderr(&o));
    let o = nitride(&["report", "verify", "-d", &ds, "--vmpl", &vmpl]);
    assert!(o.status.success(), "{}", stderr(&o));
    // A table without an endorsement key is an input error.
    let no_ek = cert_table(&[], &ask, &ark);
    std::fs::write(d.join("certs.bin"), &no_ek[24..]).unwrap();
    let o = nitride(&["report", "verify", &report, "--certs", &certs]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // vcek.der in the directory wins over certs.bin.
    std::fs::write(d.join("vcek.der"), &v.ek).unwrap();
    let o = nitride(&["report", "verify", "-d", &ds]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Issue 10 item 4 on the real vectors: every verdict (valid or rejected, text or
/// JSON) shows the guest policy bits; --require-smt-off, --require-single-socket and
/// --min-tcb refuse what they should; a refused --roots directory still gives a
/// JSON verdict.
#[test]
fn verify_policy_bits_and_options() {
    for v in common::all() {
        let report = path(&v, "report.bin");
        let ek = v.ek_path.to_string_lossy().into_owned();
        let run = |extra: &[&str]| {
            let o = nitride(
                &[
                    &["report", "verify", report.as_str(), "--vcek", ek.as_str()][..],
                    &["--allow-debug", "--json"],
                    extra,
                ]
                .concat(),
            );
            let verdict: serde_json::Value = serde_json::from_slice(&o.stdout)
                .unwrap_or_else(|e| panic!("{}: {e}: {}", v.name, stderr(&o)));
            (o.status.code(), verdict)
        };
        let (code, ok) = run(&[]);
        assert_eq!(code, Some(0), "{}: {ok}", v.name);
        let policy = &ok["guest_policy"];
        assert_eq!(policy["value"], v.expected["policy"], "{}", v.name);
        assert_eq!(policy["smt_allowed"], true, "{}", v.name);
        assert_eq!(policy["reserved_bit_17_set"], true, "{}", v.name);
        assert_eq!(policy["migrate_ma"], false, "{}", v.name);
        assert_eq!(policy["single_socket"], false, "{}", v.name);
        // Every vector's guest policy allows SMT: refused when SMT must be off.
        let (code, r) = run(&["--require-smt-off"]);
        assert_eq!(code, Some(1), "{}", v.name);
        assert_eq!(r["check"], "policy_smt", "{r}");
        assert_eq!(r["guest_policy"], *policy, "rejections show the bits too");
        let (code, r) = run(&["--require-single-socket"]);
        assert_eq!(
            (code, &r["check"]),
            (Some(1), &"policy_single_socket".into())
        );
        // Its own REPORTED_TCB passes as the minimum; one microcode SPL more fails.
        let t = &v.expected["reported_tcb"];
        let mut spec = format!(
            "bootloader={},tee={},snp={},microcode={}",
            t["bootloader"], t["tee"], t["snp"], t["microcode"]
        );
        if let Some(fmc) = t.get("fmc") {
            spec.push_str(&format!(",fmc={fmc}"));
        }
        let (code, r) = run(&["--min-tcb", &spec]);
        assert_eq!(code, Some(0), "{}: {spec}: {r}", v.name);
        let more = format!("microcode={}", t["microcode"].as_u64().unwrap() + 1);
        let (code, r) = run(&["--min-tcb", &more]);
        assert_eq!(code, Some(1), "{}", v.name);
        assert_eq!(r["check"], "policy_tcb", "{r}");
        assert!(r["error"].as_str().unwrap().contains("microcode"), "{r}");
    }
    // The text verdict shows them as well.
    let v = common::load("genoa-v3-routex");
    let o = nitride(&[
        "report",
        "verify",
        &path(&v, "report.bin"),
        "--vcek",
        &v.ek_path.to_string_lossy(),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        text.contains("guest_policy:") && text.contains("  migrate_ma: false"),
        "{text}"
    );

    // A --roots directory without roots: a rejected verdict, in JSON, naming it.
    let empty = tempfile::tempdir().unwrap();
    let o = nitride(&[
        "report",
        "verify",
        &path(&v, "report.bin"),
        "--vcek",
        &v.ek_path.to_string_lossy(),
        "--roots",
        &empty.path().to_string_lossy(),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["verdict"], "rejected", "{r}");
    assert_eq!(r["check"], "roots", "{r}");
    assert!(r["error"].as_str().unwrap().contains("--roots"), "{r}");
    assert_eq!(r["guest_policy"]["value"], v.expected["policy"], "{r}");
}
