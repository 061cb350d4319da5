//! The vHSM in the firmware, driven from the host through the relay guest: every
//! operation goes through a real SVSM call, `openssl` judges the signatures, bad
//! input gets its documented error and the SVSM keeps serving, a 10,000-request load
//! keeps the heap flat, isolation holds with keys in the vault, and the attested vHSM
//! manifest reports the vault policy and the audit log's count and chain, which
//! Python's `hashlib` re-checks against the log.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::Path;
use std::process::Command;
use zerocopy::FromBytes;

use nitride_guest_driver::attest::Target;
use nitride_guest_driver::relay::AttestParams;
use nitride_protocol::attest::{VhsmManifest, VhsmManifestHeader, VHSM_SERVICE_GUID};
use nitride_protocol::launch_config::{LaunchConfig, LaunchPolicy};
use nitride_protocol::relay::RESPONSE_BUFFER_SIZE;
use nitride_protocol::svsm::ResultCode;
use nitride_protocol::vhsm::{
    AuditEntry, KeyTemplate, KeyType, KeyUsage, Origin, Request, Status, VmplSet, HEADER_SIZE,
    MAX_REQUEST_SIZE,
};
use nitride_tests::{
    boot_guest, expect, start_relay, start_relay_with, Outcome, RelayClient, VhsmClient, VhsmError,
};

/// A measured launch configuration that allows plaintext import.
const PLAINTEXT_IMPORT: LaunchConfig = LaunchConfig {
    policy: LaunchPolicy::PLAINTEXT_IMPORT,
    owner_key: None,
};

fn template(t: KeyType, usage: KeyUsage, exportable: bool) -> KeyTemplate {
    KeyTemplate::new(t, usage, VmplSet::all(), exportable)
}

/// Generate a key all VMPLs may use; returns its id.
fn gen(
    c: &mut VhsmClient<RelayClient>,
    t: KeyType,
    usage: KeyUsage,
    exportable: bool,
    label: &[u8],
) -> u32 {
    c.generate(template(t, usage, exportable), label)
        .unwrap()
        .key_id
        .get()
}

/// `openssl dgst -sha384 -verify` of `msg` in `dir` with the key `ec.der` and `sig`.
fn openssl_ecdsa_verify(sig: &str, dir: &Path) -> (bool, String) {
    openssl(
        &[
            "dgst",
            "-sha384",
            "-verify",
            "ec.der",
            "-keyform",
            "DER",
            "-signature",
            sig,
            "msg",
        ],
        dir,
    )
}

fn openssl(args: &[&str], dir: &Path) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("openssl is required for this test (apt-get install openssl): {e}")
        });
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn every_operation_through_the_firmware() {
    let (vm, mut c) = start_relay("every-op", "");
    let dir = vm.dir.clone();
    let msg = b"signed inside the SVSM, checked by openssl";
    std::fs::write(dir.join("msg"), msg).unwrap();

    // ECDSA P-384: sign in the firmware, verify with openssl and the vault.
    let ec = c
        .generate(
            template(KeyType::EcdsaP384, KeyUsage::SIGN | KeyUsage::VERIFY, false),
            b"ec",
        )
        .unwrap();
    assert_eq!(ec.origin, Origin::Generated.raw());
    assert_eq!(ec.label(), b"ec");
    let ec_id = ec.key_id.get();
    let spki = c.public_key(ec_id).unwrap();
    let sig = c.sign(ec_id, msg).unwrap();
    std::fs::write(dir.join("ec.der"), &spki).unwrap();
    std::fs::write(dir.join("ec.sig"), &sig).unwrap();
    let (ok, out) = openssl_ecdsa_verify("ec.sig", &dir);
    assert!(ok && out.contains("Verified OK"), "openssl ECDSA: {out}");
    c.verify(ec_id, msg, &sig).unwrap();
    let mut bad = sig.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    std::fs::write(dir.join("ec.bad"), &bad).unwrap();
    let (ok, _) = openssl_ecdsa_verify("ec.bad", &dir);
    assert!(!ok, "openssl accepted a corrupted signature");
    assert_eq!(
        c.verify(ec_id, msg, &bad),
        Err(VhsmError::Status(Status::SignatureInvalid))
    );

    // Ed25519.
    let ed = gen(
        &mut c,
        KeyType::Ed25519,
        KeyUsage::SIGN | KeyUsage::VERIFY,
        false,
        b"ed",
    );
    std::fs::write(dir.join("ed.der"), c.public_key(ed).unwrap()).unwrap();
    std::fs::write(dir.join("ed.sig"), c.sign(ed, msg).unwrap()).unwrap();
    let (ok, out) = openssl(
        &[
            "pkeyutl", "-verify", "-pubin", "-inkey", "ed.der", "-keyform", "DER", "-rawin", "-in",
            "msg", "-sigfile", "ed.sig",
        ],
        &dir,
    );
    assert!(
        ok && out.contains("Signature Verified Successfully"),
        "openssl Ed25519: {out}"
    );

    // HMAC-SHA-384.
    let hm = gen(
        &mut c,
        KeyType::HmacSha384,
        KeyUsage::SIGN | KeyUsage::VERIFY | KeyUsage::DERIVE,
        false,
        b"",
    );
    let tag = c.sign(hm, msg).unwrap();
    assert_eq!(tag.len(), 48);
    c.verify(hm, msg, &tag).unwrap();
    assert!(matches!(c.public_key(hm), Err(VhsmError::Status(_))));

    // AES-256-GCM: the vault picks a fresh nonce each time.
    let aes = gen(
        &mut c,
        KeyType::Aes256,
        KeyUsage::ENCRYPT | KeyUsage::DECRYPT,
        false,
        b"aes",
    );
    let ct1 = c.encrypt(aes, b"aad", b"secret data").unwrap();
    let ct2 = c.encrypt(aes, b"aad", b"secret data").unwrap();
    assert_ne!(ct1[..12], ct2[..12], "nonces repeat");
    assert_eq!(c.decrypt(aes, b"aad", &ct1).unwrap(), b"secret data");
    assert_eq!(
        c.decrypt(aes, b"other", &ct1),
        Err(VhsmError::Status(Status::AuthenticationFailed))
    );

    // Wrap / unwrap: an exportable key leaves wrapped and comes back as a new key.
    let kek = gen(
        &mut c,
        KeyType::Aes256,
        KeyUsage::WRAP | KeyUsage::UNWRAP,
        false,
        b"kek",
    );
    let data_key = gen(
        &mut c,
        KeyType::Aes256,
        KeyUsage::ENCRYPT | KeyUsage::DECRYPT,
        true,
        b"dk",
    );
    let wrapped = c.wrap(kek, data_key).unwrap();
    assert_eq!(wrapped.len(), 40);
    let back = c
        .unwrap_key(
            kek,
            template(
                KeyType::Aes256,
                KeyUsage::ENCRYPT | KeyUsage::DECRYPT,
                false,
            ),
            b"back",
            &wrapped,
        )
        .unwrap();
    assert_eq!(back.origin, Origin::Unwrapped.raw());
    let ct = c.encrypt(data_key, b"", b"same key").unwrap();
    assert_eq!(c.decrypt(back.key_id.get(), b"", &ct).unwrap(), b"same key");
    // A non-exportable key leaves in no form.
    assert_eq!(
        c.wrap(kek, aes),
        Err(VhsmError::Status(Status::NotExportable))
    );
    assert!(c.wrap(kek, ec_id).is_err());

    // Derive, random, list, attributes, delete, audit.
    let derived = c
        .derive(
            hm,
            template(
                KeyType::Aes256,
                KeyUsage::ENCRYPT | KeyUsage::DECRYPT,
                false,
            ),
            b"d",
            b"salt",
            b"info",
        )
        .unwrap();
    assert_eq!(derived.origin, Origin::Derived.raw());
    let r1 = c.random(64).unwrap();
    assert_eq!(r1.len(), 64);
    assert_ne!(r1, c.random(64).unwrap());
    let listed: Vec<u32> = c.list().unwrap().iter().map(|k| k.key_id.get()).collect();
    for id in [
        ec_id,
        ed,
        hm,
        aes,
        kek,
        data_key,
        back.key_id.get(),
        derived.key_id.get(),
    ] {
        assert!(listed.contains(&id), "key {id} not listed");
    }
    assert_eq!(c.attributes(aes).unwrap().label(), b"aes");
    c.delete(aes).unwrap();
    assert_eq!(
        c.attributes(aes),
        Err(VhsmError::Status(Status::KeyNotFound))
    );
    let audit = c.audit(0).unwrap();
    assert!(audit.len() >= 25, "{} audit entries", audit.len());
    assert!(
        audit.iter().all(|e| e.caller_vmpl == 1),
        "every call came from VMPL1"
    );
    assert!(audit
        .iter()
        .any(|e| e.status.get() == Status::NotExportable.raw()));
    // Plaintext import is refused by default.
    assert_eq!(
        c.import(
            template(KeyType::Aes256, KeyUsage::ENCRYPT, false),
            b"",
            &[7u8; 32]
        )
        .map(|k| k.key_id.get()),
        Err(VhsmError::Status(Status::PolicyDenied))
    );
    // No errors in the SVSM's log.
    assert!(
        !vm.svsm_log_text().contains("ERROR"),
        "{}",
        vm.svsm_log_text()
    );
}

#[test]
fn plaintext_import_when_the_svsm_allows_it() {
    let (_vm, mut c) = start_relay_with("import", "", Some(&PLAINTEXT_IMPORT));
    let k = c
        .import(
            template(
                KeyType::HmacSha384,
                KeyUsage::SIGN | KeyUsage::VERIFY,
                false,
            ),
            b"imp",
            &[9u8; 48],
        )
        .unwrap();
    assert_eq!(k.origin, Origin::Imported.raw());
    let tag = c.sign(k.key_id.get(), b"m").unwrap();
    c.verify(k.key_id.get(), b"m", &tag).unwrap();
}

fn random_request() -> Vec<u8> {
    let mut buf = vec![0u8; 64];
    let n = Request::Random { len: 16 }.encode(1, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn bad_input_gets_its_documented_error_and_the_svsm_keeps_serving() {
    let (vm, mut c) = start_relay("bad-input", "");
    let info = c.transport().info().unwrap();
    let req = random_request();
    let n = req.len() as u64;
    let (rq, rs, resp) = (
        info.request_buffer,
        info.response_buffer,
        RESPONSE_BUFFER_SIZE as u64,
    );
    let svsm_mid = info.svsm_base + 0x1000;
    let cases: Vec<(&str, u64, u64, u64, u64, ResultCode)> = vec![
        (
            "request in SVSM memory",
            svsm_mid,
            n,
            rs,
            resp,
            ResultCode::InvalidAddress,
        ),
        (
            "request ending in SVSM memory",
            info.svsm_base - 8,
            n,
            rs,
            resp,
            ResultCode::InvalidAddress,
        ),
        (
            "request overlapping the CAA",
            info.caa + 0x800,
            n,
            rs,
            resp,
            ResultCode::InvalidAddress,
        ),
        (
            "request wrapping around",
            u64::MAX - 16,
            n,
            rs,
            resp,
            ResultCode::InvalidAddress,
        ),
        (
            "request larger than the limit",
            rq,
            MAX_REQUEST_SIZE as u64 + 1,
            rs,
            resp,
            ResultCode::InvalidAddress,
        ),
        (
            "request outside RAM",
            0xFEE0_0000,
            n,
            rs,
            resp,
            ResultCode::InvalidAddress,
        ),
        (
            "response in SVSM memory",
            rq,
            n,
            svsm_mid,
            resp,
            ResultCode::InvalidAddress,
        ),
        (
            "response overlapping the CAA",
            rq,
            n,
            info.caa,
            resp,
            ResultCode::InvalidAddress,
        ),
        (
            "response wrapping around",
            rq,
            n,
            u64::MAX - 0x1000,
            resp,
            ResultCode::InvalidAddress,
        ),
        (
            "response buffer too small",
            rq,
            n,
            rs,
            100,
            ResultCode::InvalidParameter,
        ),
        (
            "truncated frame",
            rq,
            10,
            rs,
            resp,
            ResultCode::InvalidFormat,
        ),
        (
            "frame shorter than its header says",
            rq,
            n - 1,
            rs,
            resp,
            ResultCode::InvalidFormat,
        ),
    ];
    for (what, rcx, rdx, r8, r9, code) in &cases {
        let r = c.transport().raw_call(*rcx, *rdx, *r8, *r9, &req).unwrap();
        assert_eq!(r.rax, code.raw(), "{what}: got {:#x}", r.rax);
        assert!(r.payload.is_empty(), "{what}: a response was written");
    }
    let r = c.transport().raw_call(rq, n, rs, 100, &req).unwrap();
    assert_eq!(
        r.rcx,
        nitride_protocol::vhsm::MAX_RESPONSE_SIZE as u64,
        "needed size reported"
    );

    // Garbage that is framed: a typed error inside a served call.
    let mut garbage = vec![0xA5u8; HEADER_SIZE + 8];
    garbage[16..20].copy_from_slice(&8u32.to_le_bytes());
    let r = c.transport().request(&garbage).unwrap();
    assert_eq!(r.rax, 0);
    assert_eq!(status_of(&r.payload), Some(Status::UnsupportedVersion));
    // Unknown operation and unknown version.
    let mut unknown_op = req.clone();
    unknown_op[2..4].copy_from_slice(&0x7777u16.to_le_bytes());
    assert_eq!(
        status_of(&c.transport().request(&unknown_op).unwrap().payload),
        Some(Status::UnknownOperation)
    );
    let mut other_version = req.clone();
    other_version[0] = 3;
    assert_eq!(
        status_of(&c.transport().request(&other_version).unwrap().payload),
        Some(Status::UnsupportedVersion)
    );
    // Bytes on the channel that are no frame at all: the relay resynchronises.
    c.transport().send_raw(b"\x00garbage\xffNRQ").unwrap();
    // Still serving.
    assert_eq!(c.random(16).unwrap().len(), 16);
    let audit = c.audit(0).unwrap();
    assert_eq!(
        audit.len(),
        4,
        "only the framed requests reached the vault: {audit:?}"
    );
    assert!(!vm.svsm_log_text().contains("FATAL"));
}

fn status_of(response: &[u8]) -> Option<Status> {
    nitride_protocol::vhsm::Response::decode(response)
        .ok()
        .and_then(|r| r.status())
}

#[test]
fn isolation_holds_with_the_vault_populated() {
    for (kind, access) in [(0u8, "read"), (1, "write"), (2, "execute")] {
        let (mut vm, mut c) = start_relay(&format!("isolation-{kind}"), "");
        for t in [KeyType::EcdsaP384, KeyType::Aes256, KeyType::HmacSha384] {
            let usage = t.allowed_usage() & (KeyUsage::SIGN | KeyUsage::ENCRYPT);
            c.generate(template(t, usage, false), b"k").unwrap();
        }
        let info = c.transport().info().unwrap();
        let target = info.svsm_base + 0x2000;
        c.transport().attack(target, kind).unwrap();
        let start = std::time::Instant::now();
        while vm.exited().is_none() && start.elapsed().as_secs() < 30 {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let console = vm.svsm_log_text();
        assert!(!vm.console_text().contains("ISOLATION BROKEN"), "{console}");
        // The RMP stops the access: the machine (the hypervisor's role) ends the
        // VM and names the page; the SVSM never sees it.
        assert_eq!(
            vm.exited(),
            Some(nitride_qemu::snp::machine_exit::qemu_status(
                nitride_qemu::snp::machine_exit::VIOLATION
            )),
            "{console}"
        );
        assert!(
            console.contains(&format!(
                "VIOLATION: VMPL1 {access} of guest-physical {target:#x}"
            )),
            "{console}"
        );
    }
}

#[test]
fn typed_client_inside_the_guest() {
    let out = boot_guest("vhsm");
    expect(
        &out,
        out.outcome() == Outcome::GuestPass,
        "in-guest vHSM sequence",
    );
    expect(
        &out,
        out.console.contains("RESULT 6 passed, 0 failed"),
        "all checks",
    );
}

/// Parse `(served, in use, high-water)` from the SVSM's periodic heap reports.
fn heap_reports(console: &str) -> Vec<(u64, u64, u64)> {
    console
        .lines()
        .filter_map(|l| {
            let rest = l.split("vhsm: ").nth(1)?;
            let served = rest.split(' ').next()?.parse().ok()?;
            let in_use = rest
                .split("heap in use ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            let peak = rest
                .split("high-water ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()?;
            Some((served, in_use, peak))
        })
        .collect()
}

#[test]
fn ten_thousand_requests_keep_the_heap_flat() {
    let out = boot_guest("load count=10000");
    expect(&out, out.outcome() == Outcome::GuestPass, "load run");
    expect(
        &out,
        out.console.contains("LOAD 10000 requests, 0 failures"),
        "all requests served",
    );
    let reports = heap_reports(&out.svsm_log);
    let at = |n: u64| reports.iter().find(|r| r.0 == n).copied();
    // From 2,000 on every kind of request (the audit read at 1,007 and the key churn
    // at 1,017 included) has run at least twice: nothing may grow after that (the
    // audit read at 1,007 is the first peak).
    let (Some(early), Some(late)) = (at(2000), at(10_000)) else {
        panic!("heap reports missing: {reports:?}");
    };
    assert_eq!(early.1, late.1, "heap in use grew: {reports:?}");
    assert_eq!(early.2, late.2, "heap high-water grew: {reports:?}");
    println!(
        "heap after 2,000 requests: {} in use, {} high-water; after 10,000: {} / {}",
        early.1, early.2, late.1, late.2
    );
}

/// The vHSM manifest of a single-service attestation (the report itself is checked by
/// `tests/attest.rs`).
fn attested_vhsm_header(c: &mut VhsmClient<RelayClient>) -> VhsmManifestHeader {
    attested_vhsm(c).1
}

/// The report and the vHSM manifest header of a single-service attestation.
fn attested_vhsm(
    c: &mut VhsmClient<RelayClient>,
) -> (nitride_protocol::snp::AttestationReport, VhsmManifestHeader) {
    let mut params = AttestParams::new(
        Target::SingleService {
            guid: VHSM_SERVICE_GUID,
            manifest_version: 0,
        },
        &[0x5A; 64],
    );
    params.want_certificates = false;
    let ev = c.transport().attest(&params).unwrap();
    let report = nitride_protocol::snp::AttestationReport::read_from_bytes(&ev.report).unwrap();
    (report, VhsmManifest::parse(&ev.manifest).unwrap().header)
}

/// Python's `hashlib` links `entries` (consecutive, oldest first) from `previous` and
/// returns the last chain value it computed; it fails if any entry's `chain` differs.
fn python_chain(previous: &[u8; 48], entries: &[AuditEntry]) -> [u8; 48] {
    // The 88-byte wire layout (docs/vhsm-protocol.md), written out field by field.
    let mut body = Vec::new();
    for e in entries {
        body.extend_from_slice(&e.seq.get().to_le_bytes());
        body.extend_from_slice(&e.key_id.get().to_le_bytes());
        body.extend_from_slice(&e.op.get().to_le_bytes());
        body.extend_from_slice(&e.status.get().to_le_bytes());
        body.push(e.caller_vmpl);
        body.extend_from_slice(&e.reserved);
        body.extend_from_slice(&e.salt);
        body.extend_from_slice(&e.chain);
    }
    let script = r#"
import hashlib, sys
prev, body = bytes.fromhex(sys.argv[1]), bytes.fromhex(sys.argv[2])
assert len(body) % 88 == 0
for i in range(0, len(body), 88):
    e = body[i:i + 88]
    link = hashlib.sha384(b"NITRIDE-AUDIT-V1" + prev + e[:40]).digest()
    assert link == e[40:], "entry %d does not link" % (i // 88)
    prev = link
print(prev.hex())
"#;
    let out = Command::new("python3")
        .args(["-c", script, &hex::encode(previous), &hex::encode(&body)])
        .output()
        .expect("python3 is required for this test");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    hex::decode(String::from_utf8(out.stdout).unwrap().trim())
        .unwrap()
        .try_into()
        .unwrap()
}

/// The attested vHSM manifest shows the vault policy, which comes from the measured
/// launch configuration (flags and the configuration's digest), and commits to the audit log: two attestations show how
/// many entries were recorded in between, a flood that overwrites the ring shows in
/// the count, and the entries the relay guest (VMPL1) reads re-check against the
/// attested chain values.
#[test]
fn manifest_reports_the_vault_policy_and_the_audit_log() {
    for (config, flags) in [(None, 0u32), (Some(&PLAINTEXT_IMPORT), 1)] {
        let (vm, mut c) = start_relay_with(&format!("manifest-policy-{flags}"), "", config);
        let (report, first) = attested_vhsm(&mut c);
        // The configuration is measured: the report's MEASUREMENT is that of this
        // configuration (on SNP: the launch digest of the IGVM image with its page).
        assert_eq!(
            report.measurement,
            nitride_tests::relay_measurement_with(config),
            "{config:?}"
        );
        assert_eq!(first.policy_flags.get(), flags, "{config:?}");
        assert_eq!(
            first.launch_config,
            config.unwrap_or(&LaunchConfig::DEFAULT).digest(),
            "the manifest reports the measured configuration"
        );
        let at_first = first.audit_count.get();
        let k = gen(&mut c, KeyType::HmacSha384, KeyUsage::SIGN, false, b"a");
        for _ in 0..4 {
            c.sign(k, b"m").unwrap();
        }
        let second = attested_vhsm_header(&mut c);
        assert_eq!(
            second.audit_count.get(),
            at_first + 5,
            "five requests between"
        );
        assert_eq!(second.policy_flags.get(), flags);
        // Every entry is the relay guest's, so it sees them all: they link from the
        // first attested chain value to the second.
        let log = c.audit(at_first + 1).unwrap();
        assert_eq!(log.len(), 5);
        assert_eq!(log[0].seq.get(), at_first + 1);
        assert_eq!(python_chain(&first.audit_chain, &log), second.audit_chain);
        // A flood of more than the ring holds: the entries are gone, the count and
        // the chain show it.
        let flood = 2 * nitride_protocol::vhsm::AUDIT_CAPACITY as u64;
        for _ in 0..flood {
            c.random(1).unwrap();
        }
        let third = attested_vhsm_header(&mut c);
        // The ReadAudit above, then the flood.
        assert_eq!(
            third.audit_count.get(),
            second.audit_count.get() + 1 + flood
        );
        let retained = c.audit(0).unwrap();
        assert!(
            retained[0].seq.get() > second.audit_count.get(),
            "overwritten"
        );
        let last = retained
            .iter()
            .find(|e| e.seq.get() == third.audit_count.get())
            .unwrap();
        assert_eq!(last.chain, third.audit_chain);
        assert_eq!(
            python_chain(&retained[0].chain, &retained[1..]),
            retained.last().unwrap().chain
        );
        assert!(!vm.console_text().contains("ERROR"));
    }
}
