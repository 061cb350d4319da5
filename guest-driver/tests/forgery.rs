//! The forgeries of issue 10 (items 2 and 3), reproduced against the relying
//! party: reports signed by a throwaway development VCEK (OpenSSL) over exactly
//! the REPORT_DATA an SVSM that took a long nonce produced, handed to
//! `AppraisalPolicy` and to `nitride report verify` with the bytes the attacker
//! would hand a relying party. Each must be refused. (Before the fix each was
//! accepted: the table parser ignored unreferenced bytes, the vHSM manifest and
//! the key binding took any bytes as an SPKI, and the binding had no tag where a
//! protocol-1 input has its manifest's.)
//!
//! The bytes are built by hand here, as an attacker would, not with the crate's
//! writers.
#![allow(clippy::unwrap_used)]

mod devchain;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use devchain::{make_chain, p384_key, signed_report};
use nitride_guest_driver::verify::{verify, AppraisalPolicy, TrustAnchors, VerifiedReport};
use sha2::{Digest, Sha512};

/// The relying party's nonce.
const N: [u8; 64] = [0x4E; 64];

const TABLE_GUID: [u8; 16] = [
    0xbb, 0x9e, 0x84, 0x63, 0x92, 0x3d, 0x70, 0x46, 0xa1, 0xff, 0x58, 0xf9, 0xc9, 0x4b, 0x87, 0xbb,
];
const VHSM_GUID: [u8; 16] = [
    0xbe, 0x3f, 0x3b, 0x2c, 0x8b, 0x40, 0x1e, 0x43, 0xb9, 0x2e, 0x91, 0xd3, 0x61, 0x9d, 0x16, 0x58,
];
const VTPM_GUID: [u8; 16] = [
    0xeb, 0xf1, 0x76, 0xc4, 0x23, 0x01, 0xa5, 0x45, 0x96, 0x41, 0xb4, 0xe7, 0xdd, 0xe5, 0xbf, 0xe3,
];

/// The chain, the vault's real keys and the attacker's key, made once.
struct World {
    _tmp: tempfile::TempDir,
    chain: PathBuf,
    vault_identity: Vec<u8>,
    vault_key: Vec<u8>,
    attacker: Vec<u8>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let chain = tmp.path().join("chain");
        std::fs::create_dir(&chain).unwrap();
        make_chain(&chain);
        World {
            vault_identity: p384_key(&chain, "identity.key"),
            vault_key: p384_key(&chain, "vault-key.key"),
            attacker: p384_key(&chain, "attacker.key"),
            chain,
            _tmp: tmp,
        }
    })
}

fn le32(v: usize) -> [u8; 4] {
    (v as u32).to_le_bytes()
}

/// KeyAttributes of key `id` (P-384, generated, every VMPL, SIGN|VERIFY|ATTEST).
fn attributes(id: u32, label: &[u8]) -> Vec<u8> {
    let mut a = vec![0u8; 48];
    a[..4].copy_from_slice(&id.to_le_bytes());
    a[4..6].copy_from_slice(&2u16.to_le_bytes());
    a[6] = 1;
    a[7] = 0xF;
    a[8..12].copy_from_slice(&0x8Cu32.to_le_bytes());
    a[13] = label.len() as u8;
    a[16..16 + label.len()].copy_from_slice(label);
    a
}

/// A vHSM manifest (the layout the SVSM writes): `identity`, then `keys` as
/// (attributes, declared SPKI length, SPKI bytes).
fn vhsm_manifest(identity: &[u8], keys: &[(Vec<u8>, usize, &[u8])]) -> Vec<u8> {
    let mut m = b"NTRDVHSM".to_vec();
    m.extend_from_slice(&3u32.to_le_bytes()); // manifest version
    m.extend_from_slice(&1u32.to_le_bytes()); // vHSM protocol version
    m.extend_from_slice(&2u16.to_le_bytes()); // wire version
    m.extend_from_slice(&0u16.to_le_bytes());
    m.extend_from_slice(&le32(keys.len()));
    m.extend_from_slice(&le32(identity.len()));
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes()); // policy flags
    m.extend_from_slice(&0u32.to_le_bytes()); // state generation
    m.extend_from_slice(&0u64.to_le_bytes()); // audit count
    m.extend_from_slice(&[0u8; 48]); // audit chain
    m.extend_from_slice(&[0u8; 48]); // launch configuration digest
    m.extend_from_slice(identity);
    for (a, declared, spki) in keys {
        m.extend_from_slice(a);
        m.extend_from_slice(&le32(*declared));
        m.extend_from_slice(spki);
    }
    m
}

/// A services table as the SVSM writes it.
fn table(entries: &[([u8; 16], &[u8])]) -> Vec<u8> {
    let head = 24 + 24 * entries.len();
    let total = head + entries.iter().map(|(_, d)| d.len()).sum::<usize>();
    let mut t = TABLE_GUID.to_vec();
    t.extend_from_slice(&le32(total));
    t.extend_from_slice(&le32(entries.len()));
    let mut at = head;
    for (g, d) in entries {
        t.extend_from_slice(g);
        t.extend_from_slice(&le32(at));
        t.extend_from_slice(&le32(d.len()));
        at += d.len();
    }
    for (_, d) in entries {
        t.extend_from_slice(d);
    }
    t
}

/// The genuine vHSM manifest and table (the vault's identity and one key).
fn real_manifest(w: &World) -> Vec<u8> {
    vhsm_manifest(
        &w.vault_identity,
        &[(attributes(1, b"vault"), w.vault_key.len(), &w.vault_key)],
    )
}

/// A VMPL0 report over SHA-512(`input`), signed by the development VCEK.
fn report_over(w: &World, input: &[u8]) -> Vec<u8> {
    signed_report(&w.chain, 0, Sha512::digest(input).into())
}

fn genuine(w: &World, report: &[u8]) -> VerifiedReport {
    let mut anchors = TrustAnchors::empty();
    anchors.add_dev_root_dir(&w.chain).unwrap();
    let vcek = std::fs::read(w.chain.join("vcek.der")).unwrap();
    verify(&anchors, report, &vcek).unwrap()
}

fn nitride(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nitride"))
        .args(args)
        .output()
        .unwrap()
}

/// `nitride report verify -d DIR --trust-dev-root CHAIN ARGS --json` on an
/// evidence directory holding `report` and the VCEK: (exit code, JSON verdict).
fn cli_verify(w: &World, dir: &Path, report: &[u8], args: &[&str]) -> (i32, serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("report.bin"), report).unwrap();
    std::fs::copy(w.chain.join("vcek.der"), dir.join("vcek.der")).unwrap();
    let (d, c) = (dir.to_string_lossy(), w.chain.to_string_lossy());
    let mut all = vec![
        "report",
        "verify",
        "-d",
        &d,
        "--trust-dev-root",
        &c,
        "--json",
    ];
    all.extend_from_slice(args);
    let o = nitride(&all);
    let verdict = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o.status.code().unwrap_or(-1), verdict)
}

/// Item 2: nonce = N || X, X = a table head and a fake vHSM manifest naming the
/// attacker's key as the vault identity; the old SVSM signed SHA-512(N || X || M).
/// The relying party is given N and X || M.
#[test]
fn long_nonce_services_forgery_is_refused() {
    let w = world();
    let m = table(&[(VHSM_GUID, &real_manifest(w))]);
    let fake = vhsm_manifest(&w.attacker, &[]);
    let mut x = TABLE_GUID.to_vec();
    x.extend_from_slice(&le32(48 + fake.len() + m.len()));
    x.extend_from_slice(&le32(1));
    x.extend_from_slice(&VHSM_GUID);
    x.extend_from_slice(&le32(48));
    x.extend_from_slice(&le32(fake.len()));
    x.extend_from_slice(&fake);
    let hash_input = [&N[..], &x, &m].concat();
    let report = report_over(w, &hash_input);
    let v = genuine(w, &report);
    let forged = [&x[..], &m].concat();

    // Library.
    let policy = AppraisalPolicy::new()
        .expect_vmpl(0)
        .expect_nonce_manifest(&N, &forged);
    let verdict = policy.appraise(&v).map(|_| ());
    assert!(
        verdict.is_err(),
        "the forged services manifest was accepted"
    );
    assert_eq!(verdict.unwrap_err().check(), "policy_manifest");

    // Command line.
    let dir = w.chain.join("../services-forgery");
    std::fs::create_dir_all(&dir).unwrap();
    let mpath = dir.join("manifest.bin");
    std::fs::write(&mpath, &forged).unwrap();
    let (code, verdict) = cli_verify(
        w,
        &dir,
        &report,
        &[
            "--nonce",
            &hex::encode(N),
            "--manifest",
            &mpath.to_string_lossy(),
        ],
    );
    assert_eq!(code, 1, "nitride accepted the forged manifest: {verdict}");
    assert_eq!(verdict["verdict"], "rejected", "{verdict}");
    assert_eq!(verdict["check"], "policy_manifest", "{verdict}");

    // The smarter variant, every byte covered by an entry (M under a second
    // service's GUID): refused too, as a service the verifier cannot check.
    let mut y = TABLE_GUID.to_vec();
    y.extend_from_slice(&le32(72 + fake.len() + m.len()));
    y.extend_from_slice(&le32(2));
    y.extend_from_slice(&VHSM_GUID);
    y.extend_from_slice(&le32(72));
    y.extend_from_slice(&le32(fake.len()));
    y.extend_from_slice(&VTPM_GUID);
    y.extend_from_slice(&le32(72 + fake.len()));
    y.extend_from_slice(&le32(m.len()));
    y.extend_from_slice(&fake);
    let report = report_over(w, &[&N[..], &y, &m].concat());
    let forged = [&y[..], &m].concat();
    let policy = AppraisalPolicy::new()
        .expect_vmpl(0)
        .expect_nonce_manifest(&N, &forged);
    let verdict = policy.appraise(&genuine(w, &report)).map(|_| ());
    assert_eq!(verdict.unwrap_err().check(), "policy_manifest");
}

/// Item 2, ATTEST_SINGLE_SERVICE: nonce = N || X', X' a vHSM manifest naming the
/// attacker as identity whose last key's SPKI length swallows the real manifest.
#[test]
fn long_nonce_single_service_forgery_is_refused() {
    let w = world();
    let m = real_manifest(w);
    let x = vhsm_manifest(
        &w.attacker,
        &[(
            attributes(7, b"vault"),
            w.attacker.len() + m.len(),
            &w.attacker,
        )],
    );
    let report = report_over(w, &[&N[..], &x, &m].concat());
    let v = genuine(w, &report);
    let forged = [&x[..], &m].concat();
    let policy = AppraisalPolicy::new()
        .expect_vmpl(0)
        .expect_nonce_manifest(&N, &forged);
    let verdict = policy.appraise(&v).map(|_| ());
    assert!(verdict.is_err(), "the forged vHSM manifest was accepted");
    assert_eq!(verdict.unwrap_err().check(), "policy_manifest");

    let dir = w.chain.join("../single-forgery");
    std::fs::create_dir_all(&dir).unwrap();
    let mpath = dir.join("manifest.bin");
    std::fs::write(&mpath, &forged).unwrap();
    let (code, verdict) = cli_verify(
        w,
        &dir,
        &report,
        &[
            "--nonce",
            &hex::encode(N),
            "--manifest",
            &mpath.to_string_lossy(),
        ],
    );
    assert_eq!(code, 1, "nitride accepted the forged manifest: {verdict}");
    assert_eq!(verdict["check"], "policy_manifest", "{verdict}");
}

/// Item 3: a protocol-1 nonce that is the old key binding's head (magic, empty
/// nonce, an SPKI length covering the attacker's key and the real table,
/// attributes) followed by the attacker's SPKI: `nonce || table` read as a binding
/// of the attacker's key, which OpenSSL reads as that key alone.
#[test]
fn key_binding_forged_from_a_protocol_1_report_is_refused() {
    let w = world();
    let m = table(&[(VHSM_GUID, &real_manifest(w))]);
    let mut nonce = b"NITRIDE-KEYBIND1".to_vec();
    nonce.extend_from_slice(&le32(0));
    nonce.extend_from_slice(&le32(w.attacker.len() + m.len()));
    nonce.extend_from_slice(&attributes(1, b"vault"));
    nonce.extend_from_slice(&w.attacker);
    let binding = [&nonce[..], &m].concat();
    let report = report_over(w, &binding);
    let v = genuine(w, &report);

    // The outside judge: OpenSSL takes the forged "SPKI" (the attacker's key with
    // the table after it) for the attacker's key.
    let spki = &binding[72..];
    let dir = w.chain.join("../binding-forgery");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("spki.der"), spki).unwrap();
    let o = Command::new("openssl")
        .args(["pkey", "-pubin", "-inform", "DER", "-in", "spki.der"])
        .args(["-outform", "DER", "-out", "read.der"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read(dir.join("read.der")).unwrap(), w.attacker);

    // Library: refused, with or without the nonce expected.
    let policy = AppraisalPolicy::new()
        .expect_vmpl(0)
        .expect_key_binding(&binding);
    let verdict = policy.appraise(&v).map(|_| ());
    assert!(verdict.is_err(), "the forged key binding was accepted");
    assert_eq!(verdict.unwrap_err().check(), "policy_key_binding");

    // Command line.
    let kb = dir.join("key-binding.bin");
    std::fs::write(&kb, &binding).unwrap();
    let (code, verdict) = cli_verify(w, &dir, &report, &["--key-binding", &kb.to_string_lossy()]);
    assert_eq!(code, 1, "nitride accepted the forged binding: {verdict}");
    assert_eq!(verdict["check"], "policy_key_binding", "{verdict}");

    // With 64-byte nonces the attacker's bytes end at offset 64, where every
    // protocol-1 input has its manifest's tag: `nonce || table` is no binding.
    let short: [u8; 64] = binding[..64].try_into().unwrap();
    let report = report_over(w, &[&short[..], &m].concat());
    let as_binding = [&short[..], &m].concat();
    let policy = AppraisalPolicy::new()
        .expect_vmpl(0)
        .expect_key_binding(&as_binding);
    let verdict = policy.appraise(&genuine(w, &report)).map(|_| ());
    assert_eq!(verdict.unwrap_err().check(), "policy_key_binding");
    // ... while it verifies as what it is, a services attestation.
    let policy = AppraisalPolicy::new()
        .expect_vmpl(0)
        .expect_nonce_manifest(&short, &m);
    assert!(policy.appraise(&genuine(w, &report)).is_ok());
}
