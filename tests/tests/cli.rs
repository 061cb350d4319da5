//! The `nitride` command line against the firmware: the commands a person types,
//! run in-process against a relay VM, with their outputs and exit codes.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::Path;

use nitride_tests::start_relay;

/// Run `nitride ARGS --socket SOCK`; returns (exit code, stdout, error message).
fn nitride(sock: &Path, args: &[&str]) -> (i32, Vec<u8>, String) {
    nitride_tests::nitride(Some(sock), args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn key_lifecycle_sign_encrypt_wrap_and_audit() {
    let (vm, client) = start_relay("cli", "");
    // QEMU serves one connection to the relay socket at a time: each command connects anew.
    drop(client);
    let s = vm.socket.clone();
    let d = vm.dir.clone();
    let f = |name: &str| d.join(name).display().to_string();

    let (code, out, _) = nitride(
        &s,
        &[
            "key",
            "generate",
            "--type",
            "ecdsa-p384",
            "--label",
            "signer",
            "--json",
        ],
    );
    assert_eq!(code, 0);
    let k: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(k["type"], "ecdsa-p384");
    assert_eq!(k["usage"], serde_json::json!(["sign", "verify"]));
    assert_eq!(k["exportable"], false);
    let id = k["id"].to_string();

    std::fs::write(f("msg"), b"file to sign").unwrap();
    assert_eq!(
        nitride(&s, &["sign", &id, "--in", &f("msg"), "--out", &f("sig")]).0,
        0
    );
    assert_eq!(
        nitride(&s, &["key", "pubkey", &id, "--pem", "--out", &f("pub.pem")]).0,
        0
    );
    let ossl = std::process::Command::new("openssl")
        .args([
            "dgst",
            "-sha384",
            "-verify",
            &f("pub.pem"),
            "-signature",
            &f("sig"),
            &f("msg"),
        ])
        .output()
        .expect("openssl is required");
    assert!(ossl.status.success(), "{}", text(&ossl.stdout));
    let (code, out, _) = nitride(
        &s,
        &["verify", &id, "--signature", &f("sig"), "--in", &f("msg")],
    );
    assert_eq!((code, text(&out).trim()), (0, "signature valid"));
    std::fs::write(f("other"), b"another file").unwrap();
    let (code, _, err) = nitride(
        &s,
        &["verify", &id, "--signature", &f("sig"), "--in", &f("other")],
    );
    assert_eq!((code, err.as_str()), (1, "vHSM: signature invalid"));

    let (_, out, _) = nitride(
        &s,
        &[
            "key",
            "generate",
            "--type",
            "aes-256",
            "--exportable",
            "--json",
        ],
    );
    let aes = serde_json::from_slice::<serde_json::Value>(&out).unwrap()["id"].to_string();
    std::fs::write(f("plain"), b"attack at dawn").unwrap();
    assert_eq!(
        nitride(
            &s,
            &[
                "encrypt",
                &aes,
                "--aad",
                "hdr",
                "--in",
                &f("plain"),
                "--out",
                &f("ct")
            ]
        )
        .0,
        0
    );
    assert_eq!(std::fs::read(f("ct")).unwrap().len(), 12 + 14 + 16);
    let (code, out, _) = nitride(&s, &["decrypt", &aes, "--aad", "hdr", "--in", &f("ct")]);
    assert_eq!((code, out.as_slice()), (0, &b"attack at dawn"[..]));
    let (code, _, err) = nitride(&s, &["decrypt", &aes, "--aad", "other", "--in", &f("ct")]);
    assert_eq!(code, 1);
    assert!(err.contains("AuthenticationFailed"), "{err}");

    let (_, out, _) = nitride(
        &s,
        &[
            "key",
            "generate",
            "--type",
            "aes-256",
            "--usage",
            "wrap,unwrap",
            "--json",
        ],
    );
    let kek = serde_json::from_slice::<serde_json::Value>(&out).unwrap()["id"].to_string();
    let (code, _, err) = nitride(&s, &["wrap", &kek, &id]);
    assert_eq!(code, 1);
    assert!(err.contains("NotExportable"), "{err}");
    assert_eq!(
        nitride(&s, &["wrap", &kek, &aes, "--out", &f("wrapped")]).0,
        0
    );
    let (code, out, _) = nitride(
        &s,
        &[
            "unwrap",
            &kek,
            "--type",
            "aes-256",
            "--in",
            &f("wrapped"),
            "--json",
        ],
    );
    assert_eq!(code, 0);
    let back: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(back["origin"], "unwrapped");
    let (code, out, _) = nitride(
        &s,
        &[
            "derive", &kek, "--type", "aes-256", "--info", "ctx", "--json",
        ],
    );
    assert_eq!(code, 1, "{}", text(&out));

    let (code, out, _) = nitride(&s, &["random", "32", "--hex"]);
    assert_eq!((code, text(&out).trim().len()), (0, 64));
    let (code, out, _) = nitride(&s, &["key", "list"]);
    assert_eq!(code, 0);
    assert_eq!(text(&out).lines().count(), 4, "{}", text(&out));
    assert_eq!(nitride(&s, &["key", "delete", &aes]).0, 0);
    let (code, _, err) = nitride(&s, &["key", "info", &aes]);
    assert_eq!(code, 1);
    assert!(err.contains("KeyNotFound"), "{err}");
    let (code, out, _) = nitride(&s, &["audit", "--json"]);
    assert_eq!(code, 0);
    let audit: Vec<serde_json::Value> = serde_json::from_slice(&out).unwrap();
    assert!(audit
        .iter()
        .any(|e| e["op"] == "Wrap" && e["status"] == "NotExportable"));
    assert!(audit.iter().all(|e| e["vmpl"] == 1));

    // Usage errors exit 2 and say what is wrong.
    let (code, _, err) = nitride(&s, &["key", "generate", "--type", "rsa"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown key type rsa"), "{err}");
    let (code, _, _) = nitride(&s, &["sign"]);
    assert_eq!(code, 2);
}

#[test]
fn unreachable_firmware_is_a_clear_error() {
    let (code, _, err) = nitride(Path::new("/nonexistent/vhsm.sock"), &["key", "list"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach the vHSM") && err.contains("cargo xtask up"),
        "{err}"
    );
}

/// Refusals name the key or the limit (issue 10, item 17): limits the tool knows are
/// refused before anything is sent; what only the vault knows is explained naming the
/// key the request was about.
#[test]
fn refusals_name_the_key_or_the_limit() {
    use nitride_protocol::vhsm::{MAX_DATA_LEN, MAX_LABEL_LEN, MAX_RANDOM_LEN};
    let (vm, client) = start_relay("cli-refusals", "");
    drop(client);
    let s = vm.socket.clone();
    let d = vm.dir.clone();
    let f = |name: &str| d.join(name).display().to_string();

    // The tool knows these limits: usage errors naming them, nothing sent.
    let (code, _, err) = nitride(&s, &["random", "100000"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("at most {MAX_RANDOM_LEN} random bytes")),
        "{err}"
    );
    let long = "x".repeat(MAX_LABEL_LEN + 1);
    let (code, _, err) = nitride(
        &s,
        &["key", "generate", "--type", "aes-256", "--label", &long],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("a label is at most {MAX_LABEL_LEN} bytes")),
        "{err}"
    );
    std::fs::write(f("big"), vec![0u8; MAX_DATA_LEN + 1]).unwrap();
    let (code, _, err) = nitride(&s, &["sign", "1", "--in", &f("big")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!(
            "{} bytes; a message to sign is at most {MAX_DATA_LEN} bytes",
            MAX_DATA_LEN + 1
        )),
        "{err}"
    );
    // The vault: nothing was generated, so key 99 does not exist.
    std::fs::write(f("msg"), b"hello").unwrap();
    let (code, _, err) = nitride(&s, &["sign", "99", "--in", &f("msg")]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("key 99 does not exist or is not usable by this caller (KeyNotFound)"),
        "{err}"
    );
    // Non-exportable key named; wrapping key and key to wrap named when one is missing.
    let (_, out, _) = nitride(
        &s,
        &[
            "key",
            "generate",
            "--type",
            "aes-256",
            "--usage",
            "wrap,unwrap",
            "--json",
        ],
    );
    let kek = serde_json::from_slice::<serde_json::Value>(&out).unwrap()["id"].to_string();
    let (_, out, _) = nitride(&s, &["key", "generate", "--type", "ed25519", "--json"]);
    let ed = serde_json::from_slice::<serde_json::Value>(&out).unwrap()["id"].to_string();
    let (code, _, err) = nitride(&s, &["wrap", &kek, &ed]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("key {ed} is not exportable")),
        "{err}"
    );
    let (code, _, err) = nitride(&s, &["wrap", &kek, "77"]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "key {kek} (wrapping key) or key 77 (key to wrap) does not exist"
        )),
        "{err}"
    );
    // A key without the attest usage is named as not attestable.
    let (code, _, err) = nitride(
        &s,
        &[
            "attest",
            "key",
            &ed,
            "--nonce",
            &"00".repeat(64),
            "-o",
            &f("ev"),
        ],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("key {ed} is not attestable")),
        "{err}"
    );
    // A usage the key does not have.
    let (code, _, err) = nitride(&s, &["encrypt", &kek, "--in", &f("msg")]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!("key {kek}'s usage does not allow it to encrypt")),
        "{err}"
    );
}
