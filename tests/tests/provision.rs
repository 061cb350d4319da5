//! Attestation-gated provisioning end to end: the firmware (owner key in its
//! measured launch configuration) in QEMU, the test KBS (tests/kbs, Python) on a
//! loopback port, and `nitride provision` relaying between them.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nitride_guest_driver::kbs::{snp_evidence, KbsClient};
use nitride_protocol::launch_config::LaunchConfig;
use nitride_protocol::vhsm::{Origin, Status};
use nitride_tests::{images, nitride, start_relay_with, test_dir, Kbs, Relay, VhsmError};
use zerocopy::FromBytes;

/// Python AES-256-GCM of `plaintext` under `key` with `aad`: nonce || ct || tag.
fn owner_encrypt(key: &[u8], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, os\n\
             from cryptography.hazmat.primitives.ciphers.aead import AESGCM\n\
             n = os.urandom(12)\n\
             print((n + AESGCM(bytes.fromhex(sys.argv[1])).encrypt(n, bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[2]))).hex())",
            &hex::encode(key),
            &hex::encode(aad),
            &hex::encode(plaintext),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hex::decode(String::from_utf8(out.stdout).unwrap().trim()).unwrap()
}

/// What the owner prepares: an owner key, a launch configuration naming it, a
/// signed envelope of `secret`.
struct Owner {
    config: LaunchConfig,
    config_file: PathBuf,
    envelope: PathBuf,
    other_envelope: PathBuf,
}

fn owner(dir: &Path, secret: &[u8]) -> Owner {
    std::fs::create_dir_all(dir).unwrap();
    let f = |n: &str| dir.join(n).display().to_string();
    std::fs::write(f("secret.bin"), secret).unwrap();
    for key in ["owner.pem", "other.pem"] {
        let (code, _, e) = nitride(None, &["owner", "keygen", "--out", &f(key)]);
        assert_eq!(code, 0, "{e}");
    }
    let (code, _, e) = nitride(
        None,
        &[
            "owner",
            "launch-config",
            "--owner",
            &f("owner.pem.pub"),
            "--out",
            &f("launch-config.bin"),
        ],
    );
    assert_eq!(code, 0, "{e}");
    for (key, out) in [("owner.pem", "envelope.jws"), ("other.pem", "other.jws")] {
        let (code, _, e) = nitride(
            None,
            &[
                "owner",
                "envelope",
                "--key",
                &f(key),
                "--type",
                "aes-256",
                "--usage",
                "encrypt,decrypt",
                "--vmpls",
                "1",
                "--label",
                "disk",
                "--in",
                &f("secret.bin"),
                "--out",
                &f(out),
            ],
        );
        assert_eq!(code, 0, "{e}");
    }
    let config_file = dir.join("launch-config.bin");
    Owner {
        config: LaunchConfig::parse(&std::fs::read(&config_file).unwrap()).unwrap(),
        config_file,
        envelope: dir.join("envelope.jws"),
        other_envelope: dir.join("other.jws"),
    }
}

/// The MEASUREMENT of a relay VM under `config` (the configuration is a measured
/// page of the IGVM image).
fn measurement(config: &LaunchConfig) -> String {
    hex::encode(nitride_tests::relay_measurement_with(Some(config)))
}

/// A secret provisioned through the agent decrypts data the owner encrypted with
/// it; the vault lists it as provisioned and non-exportable; wrap refuses it. The
/// bytes the relay handled (runtime data, evidence, JWE) never contain the secret,
/// and a JWE replayed into a later session is refused.
#[test]
fn a_secret_from_the_kbs_enters_the_vault() {
    let dir = test_dir("provision-ok");
    let secret: Vec<u8> = (0u8..32)
        .map(|b| b.wrapping_mul(37).wrapping_add(11))
        .collect();
    let o = owner(&dir, &secret);
    let m = measurement(&o.config);
    let kbs = Kbs::start(
        &dir,
        "kbs",
        &[
            "--measurement",
            &m,
            "--resource",
            &format!("nitride/key/disk={}", o.envelope.display()),
            "--resource",
            &format!("nitride/key/other={}", o.other_envelope.display()),
        ],
    );
    let (vm, client) = start_relay_with("provision-ok", "", Some(&o.config));
    drop(client);
    let s = vm.socket.clone();

    let started = std::time::Instant::now();
    let (code, out, e) = nitride(
        Some(&s),
        &[
            "provision",
            "--kbs",
            &kbs.url,
            "--resource",
            "nitride/key/disk",
            "--json",
        ],
    );
    // A figure for docs/benchmarks.md (not asserted).
    eprintln!(
        "provision: the whole exchange through the relay took {:?}",
        started.elapsed()
    );
    assert_eq!(code, 0, "{e}\n{}\n{}", kbs.log(), vm.svsm_log_text());
    let k: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(k["origin"], "provisioned");
    assert_eq!(k["exportable"], false);
    assert_eq!(k["type"], "aes-256");
    assert_eq!(k["label"], "disk");
    let id = k["id"].as_u64().unwrap() as u32;

    let mut c = nitride_tests::VhsmClient::new(nitride_tests::RelayClient::connect(&s).unwrap());
    let sealed = owner_encrypt(&secret, b"v1", b"data the owner encrypted");
    assert_eq!(
        c.decrypt(id, b"v1", &sealed).unwrap(),
        b"data the owner encrypted"
    );
    let listed = c.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].origin, Origin::Provisioned.raw());
    let kek = c
        .generate(
            nitride_protocol::vhsm::KeyTemplate::new(
                nitride_protocol::vhsm::KeyType::Aes256,
                nitride_protocol::vhsm::KeyUsage::WRAP,
                nitride_protocol::vhsm::VmplSet::VMPL1,
                false,
            ),
            b"kek",
        )
        .unwrap();
    assert_eq!(
        c.wrap(kek.key_id.get(), id),
        Err(VhsmError::Status(Status::NotExportable))
    );

    // The relay's view, step by step: nothing it handles contains the secret.
    let mut client = KbsClient::new(&kbs.url, Duration::from_secs(10), 0).unwrap();
    let nonce = client.auth().unwrap();
    let session = c.provision_begin(nonce.as_bytes()).unwrap();
    let evidence = snp_evidence(&session.report, &session.certificates).unwrap();
    let evidence_text = evidence.to_string();
    client.attest(&nonce, &session.jwk, evidence).unwrap();
    let jwe = client.resource("nitride/key/disk").unwrap();
    for bytes in [
        &session.runtime_data[..],
        evidence_text.as_bytes(),
        &jwe[..],
    ] {
        assert!(!bytes.windows(secret.len()).any(|w| w == &secret[..]));
        for encoded in [hex::encode(&secret), base64url(&secret)] {
            assert!(!String::from_utf8_lossy(bytes).contains(&encoded));
        }
    }
    // A later session: the earlier JWE does not open in it.
    let nonce = client.auth().unwrap();
    let _later = c.provision_begin(nonce.as_bytes()).unwrap();
    assert_eq!(
        c.provision_finish(&jwe),
        Err(VhsmError::Status(Status::JweInvalid))
    );
    // An envelope signed by another key, properly encrypted to the session key.
    let mut client = KbsClient::new(&kbs.url, Duration::from_secs(10), 0).unwrap();
    let nonce = client.auth().unwrap();
    let session = c.provision_begin(nonce.as_bytes()).unwrap();
    let evidence = snp_evidence(&session.report, &session.certificates).unwrap();
    client.attest(&nonce, &session.jwk, evidence).unwrap();
    let jwe = client.resource("nitride/key/other").unwrap();
    assert_eq!(
        c.provision_finish(&jwe),
        Err(VhsmError::Status(Status::EnvelopeInvalid))
    );
    assert_eq!(
        c.list().unwrap().len(),
        2,
        "the provisioned key and the KEK only"
    );
}

fn base64url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The KBS refuses (wrong measurement, old TCB, a relay altering the JWK or the
/// nonce, a launch whose policy allows debugging): nothing enters the vault and the
/// CLI says why.
#[test]
fn kbs_refusals_leave_the_vault_unchanged() {
    let dir = test_dir("provision-refused");
    let o = owner(&dir, &[0x42; 32]);
    let m = measurement(&o.config);
    let resource = format!("nitride/key/disk={}", o.envelope.display());
    let (vm, client) = start_relay_with("provision-refused", "", Some(&o.config));
    drop(client);
    let s = vm.socket.clone();
    let wrong = "00".repeat(48);
    for (name, args, code, expect) in [
        (
            "measurement",
            vec!["--measurement", wrong.as_str()],
            "policy-measurement",
            "PolicyDeny",
        ),
        (
            "tcb",
            vec![
                "--measurement",
                m.as_str(),
                "--min-tcb",
                "bootloader=99,tee=0,snp=0,microcode=0",
            ],
            "policy-tcb",
            "PolicyDeny",
        ),
    ] {
        let kbs = Kbs::start(
            &dir,
            name,
            &[&args[..], &["--resource", &resource]].concat(),
        );
        let (exit, out, e) = nitride(
            Some(&s),
            &[
                "provision",
                "--kbs",
                &kbs.url,
                "--resource",
                "nitride/key/disk",
                "--json",
            ],
        );
        assert_eq!(exit, 1, "{name}: {e}");
        assert!(e.contains(expect) && e.contains("401"), "{name}: {e}");
        assert!(out.is_empty(), "{name}: no result printed");
        assert!(
            e.starts_with("KBS refused /kbs/v0/resource/"),
            "{name}: {e}"
        );
        assert!(kbs.logged(&format!("[{code}]")), "{name}: {}", kbs.log());
    }
    // A relay that alters the JWK or the nonce: the KBS refuses at /attest.
    let kbs = Kbs::start(
        &dir,
        "relay",
        &["--measurement", &m, "--resource", &resource],
    );
    let mut c = nitride_tests::VhsmClient::new(nitride_tests::RelayClient::connect(&s).unwrap());
    let mut client = KbsClient::new(&kbs.url, Duration::from_secs(10), 0).unwrap();
    let nonce = client.auth().unwrap();
    let session = c.provision_begin(nonce.as_bytes()).unwrap();
    let other = c.provision_begin(nonce.as_bytes()).unwrap();
    let evidence = snp_evidence(&session.report, &session.certificates).unwrap();
    let e = client
        .attest(&nonce, &other.jwk, evidence)
        .unwrap_err()
        .to_string();
    assert!(e.contains("AttestationError"), "{e}");
    assert!(kbs.logged("[report-data]"), "{}", kbs.log());
    let mut client = KbsClient::new(&kbs.url, Duration::from_secs(10), 0).unwrap();
    let _nonce = client.auth().unwrap();
    let session = c.provision_begin(b"b3RoZXIgbm9uY2U=").unwrap();
    let evidence = snp_evidence(&session.report, &session.certificates).unwrap();
    let e = client
        .attest("b3RoZXIgbm9uY2U=", &session.jwk, evidence)
        .unwrap_err()
        .to_string();
    assert!(e.contains("AttestationError"), "{e}");
    assert!(kbs.logged("[nonce-mismatch]"), "{}", kbs.log());
    assert!(c.list().unwrap().is_empty(), "nothing entered the vault");
    drop(c);
    drop(vm);

    // The same firmware and configuration (so the same MEASUREMENT), launched with a
    // policy that allows debugging (the emulated PSP's reports carry DEBUG, bit 19):
    // the KBS refuses at /resource and the CLI says why.
    nitride_qemu::ensure_dev_chain().unwrap();
    let mut blob = std::fs::read(nitride_qemu::dev_psp_blob_path()).unwrap();
    let (header, _) =
        nitride_protocol::emulated::dev_psp::BlobHeader::mut_from_prefix(&mut blob).unwrap();
    header.launch_flags = nitride_protocol::emulated::dev_psp::LAUNCH_DEBUG.into();
    let debug_blob = dir.join("dev-psp-debug.bin");
    std::fs::write(&debug_blob, blob).unwrap();
    let (vm, _) = start_relay_with(
        "provision-refused-debug",
        "",
        Relay {
            dev_psp: Some(&debug_blob),
            config: Some(&o.config),
            guest: None,
        },
    );
    let kbs = Kbs::start(
        &dir,
        "debug",
        &["--measurement", &m, "--resource", &resource],
    );
    let (exit, out, e) = nitride(
        Some(&vm.socket),
        &[
            "provision",
            "--kbs",
            &kbs.url,
            "--resource",
            "nitride/key/disk",
        ],
    );
    assert_eq!(exit, 1, "{e}");
    assert!(out.is_empty(), "no result printed");
    assert!(
        e.contains("401 PolicyDeny") && e.contains("debug"),
        "the CLI says why: {e}"
    );
    assert!(kbs.logged("[policy-debug]"), "{}", kbs.log());
    let mut c =
        nitride_tests::VhsmClient::new(nitride_tests::RelayClient::connect(&vm.socket).unwrap());
    assert!(c.list().unwrap().is_empty(), "nothing entered the vault");
}

/// The figures docs/benchmarks.md records for issue 12 (printed, not asserted):
/// instructions inside the SVSM for ProvisionBegin (op 24) and ProvisionFinish (op
/// 25) under `-icount shift=0`, from the SVSM's debug log of each vHSM request, and
/// the wall time of the whole `nitride provision` in that run.
#[test]
fn provisioning_instruction_counts() {
    let dir = test_dir("provision-icount");
    let o = owner(&dir, &[0x5A; 32]);
    let m = measurement(&o.config);
    let resource = format!("nitride/key/disk={}", o.envelope.display());
    let kbs = Kbs::start(&dir, "kbs", &["--measurement", &m, "--resource", &resource]);
    let i = images();
    let mut boot = nitride_qemu::Boot::new(&i.svsm, &i.relay_guest, "");
    boot.svsm_args = "nitride.log=debug".into();
    boot.launch_config = Some(o.config_file.clone());
    boot.icount = true;
    let vm = nitride_qemu::RunningVm::start_boot(boot, &dir.join("vm")).unwrap();
    let started = std::time::Instant::now();
    let (code, _, e) = nitride(
        Some(&vm.socket),
        &[
            "provision",
            "--kbs",
            &kbs.url,
            "--resource",
            "nitride/key/disk",
        ],
    );
    let wall = started.elapsed();
    let log = vm.svsm_log_text();
    assert_eq!(code, 0, "{e}\n{}\n{log}", kbs.log());
    let count = |op: u16| {
        let tag = format!("vHSM op {op}: ");
        log.lines()
            .filter_map(|l| l.split(tag.as_str()).nth(1))
            .filter_map(|r| r.split(' ').next()?.parse::<u64>().ok())
            .next_back()
    };
    let (begin, finish) = (count(24), count(25));
    assert!(begin.is_some() && finish.is_some(), "{log}");
    eprintln!(
        "provision (icount): ProvisionBegin {} instructions, ProvisionFinish {} \
         instructions in the SVSM; nitride provision {wall:?} wall",
        begin.unwrap_or(0),
        finish.unwrap_or(0)
    );
}
