//! Interop with independent implementations: the `openssl` command-line tool and
//! Python's `cryptography` package check the vault's signatures, public keys, key wrap
//! (RFC 5649, `id-aes256-wrap-pad`), AES-256-GCM and HKDF output, and the vault
//! accepts theirs. A missing tool fails the test with a message naming the package.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{template, Client};
use nitride_protocol::vhsm::{KeyType, KeyUsage, Request, Status};
use nitride_vhsm::vault::DERIVE_INFO_PREFIX;

/// Run a tool; a missing tool is a test failure that says what to install.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!(
            "cannot run `{program}` ({e}): install it (Debian: `openssl` for openssl, `python3` and \
             `python3-cryptography` or `pip install cryptography` for python3)"
        )
    })
}

fn openssl(args: &[&str]) -> Output {
    run("openssl", args)
}

fn openssl_ok(args: &[&str]) -> Vec<u8> {
    let out = openssl(args);
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Run a Python snippet with `cryptography`; arguments and the result are hex strings.
fn python(script: &str, args: &[&str]) -> Vec<u8> {
    let probe = run("python3", &["-c", "import cryptography"]);
    assert!(
        probe.status.success(),
        "python3 lacks the `cryptography` package: install python3-cryptography (Debian) or `pip install cryptography`"
    );
    let mut all = vec!["-c", script];
    all.extend_from_slice(args);
    let out = run("python3", &all);
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    hex::decode(String::from_utf8(out.stdout).unwrap().trim()).unwrap()
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }
    fn write(&self, name: &str, bytes: &[u8]) -> String {
        let p: PathBuf = self.0.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.to_str().unwrap().to_owned()
    }
    fn path(&self, name: &str) -> String {
        self.0.path().join(name).to_str().unwrap().to_owned()
    }
}

/// Write the vault's SPKI DER and convert it to PEM with openssl (which parses it).
fn public_pem(c: &mut Client, dir: &Dir, key: u32) -> String {
    let der = dir.write("pub.der", &c.ok(Request::GetPublicKey { key }));
    let pem = dir.path("pub.pem");
    openssl_ok(&[
        "pkey", "-pubin", "-inform", "DER", "-in", &der, "-out", &pem,
    ]);
    pem
}

#[test]
fn openssl_verifies_ecdsa_p384_signatures() {
    let mut c = Client::new(false);
    let dir = Dir::new();
    let key = c.generate(KeyType::EcdsaP384, KeyUsage::SIGN, false);
    let pem = public_pem(&mut c, &dir, key);
    let text = String::from_utf8(openssl_ok(&[
        "pkey", "-pubin", "-in", &pem, "-text", "-noout",
    ]))
    .unwrap();
    assert!(text.contains("P-384"), "{text}");
    let msg = dir.write("msg.bin", b"attested message");
    let sig = dir.write(
        "sig.der",
        &c.ok(Request::Sign {
            key,
            message: b"attested message",
        }),
    );
    let out = openssl(&["dgst", "-sha384", "-verify", &pem, "-signature", &sig, &msg]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Verified OK"));
    let other = dir.write("other.bin", b"attested messagE");
    let out = openssl(&[
        "dgst",
        "-sha384",
        "-verify",
        &pem,
        "-signature",
        &sig,
        &other,
    ]);
    assert!(!out.status.success(), "a tampered message must not verify");
}

#[test]
fn openssl_verifies_ed25519_signatures() {
    let mut c = Client::new(false);
    let dir = Dir::new();
    let key = c.generate(KeyType::Ed25519, KeyUsage::SIGN, false);
    let pem = public_pem(&mut c, &dir, key);
    let msg = dir.write("msg.bin", b"boot log");
    let sig = dir.write(
        "sig.bin",
        &c.ok(Request::Sign {
            key,
            message: b"boot log",
        }),
    );
    let verify = |m: &str| {
        openssl(&[
            "pkeyutl", "-verify", "-pubin", "-inkey", &pem, "-rawin", "-in", m, "-sigfile", &sig,
        ])
    };
    let out = verify(&msg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Signature Verified Successfully"));
    assert!(!verify(&dir.write("other.bin", b"boot loG"))
        .status
        .success());
}

/// Keys and signatures made by `cryptography` import into and verify in the vault, and
/// the vault derives the same public key.
#[test]
fn vault_verifies_signatures_from_python() {
    let script = r#"
import sys
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives import hashes, serialization
msg = b"from python"
if sys.argv[1] == "ec":
    k = ec.generate_private_key(ec.SECP384R1())
    raw = k.private_numbers().private_value.to_bytes(48, "big")
    sig = k.sign(msg, ec.ECDSA(hashes.SHA384()))
else:
    k = ed25519.Ed25519PrivateKey.generate()
    raw = k.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    sig = k.sign(msg)
spki = k.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
print((len(raw).to_bytes(2, "big") + raw + len(sig).to_bytes(2, "big") + sig + spki).hex())
"#;
    let mut c = Client::new(true);
    for (arg, kt) in [("ec", KeyType::EcdsaP384), ("ed", KeyType::Ed25519)] {
        let out = python(script, &[arg]);
        let (rl, rest) = out.split_at(2);
        let (raw, rest) = rest.split_at(usize::from(u16::from_be_bytes([rl[0], rl[1]])));
        let (sl, rest) = rest.split_at(2);
        let (sig, spki) = rest.split_at(usize::from(u16::from_be_bytes([sl[0], sl[1]])));
        let key = c.import(kt, KeyUsage::VERIFY, false, raw);
        assert_eq!(c.ok(Request::GetPublicKey { key }), spki);
        c.ok(Request::Verify {
            key,
            message: b"from python",
            signature: sig,
        });
        c.fails(
            Request::Verify {
                key,
                message: b"from pythoN",
                signature: sig,
            },
            Status::SignatureInvalid,
        );
    }
}

const KEK_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn kwp(dir: &Dir, decrypt: bool, input: &[u8]) -> Vec<u8> {
    let inp = dir.write("kw.in", input);
    let mode = if decrypt { "-d" } else { "-e" };
    openssl_ok(&[
        "enc",
        "-id-aes256-wrap-pad",
        mode,
        "-K",
        KEK_HEX,
        "-iv",
        "A65959A6",
        "-in",
        &inp,
    ])
}

#[test]
fn key_wrap_interoperates_with_openssl_both_ways() {
    let mut c = Client::new(true);
    let dir = Dir::new();
    let kek = c.import(
        KeyType::Aes256,
        KeyUsage::WRAP | KeyUsage::UNWRAP,
        false,
        &hex::decode(KEK_HEX).unwrap(),
    );

    // Vault -> openssl: a generated exportable key, wrapped, unwraps with openssl to the
    // key that really encrypts (checked by decrypting vault output with Python).
    let key = c.generate(KeyType::Aes256, KeyUsage::ENCRYPT, true);
    let wrapped = c.ok(Request::Wrap {
        wrapping_key: kek,
        key,
    });
    let material = kwp(&dir, true, &wrapped);
    assert_eq!(material.len(), 32);
    let sealed = c.ok(Request::Encrypt {
        key,
        aad: b"a",
        plaintext: b"exported",
    });
    assert_eq!(gcm_open_python(&material, b"a", &sealed), b"exported");

    // Every key size (32 and 48 bytes) wraps identically to openssl: KWP is deterministic.
    let mac_material = [0x77u8; 48];
    let mac = c.import(KeyType::HmacSha384, KeyUsage::SIGN, true, &mac_material);
    assert_eq!(
        c.ok(Request::Wrap {
            wrapping_key: kek,
            key: mac
        }),
        kwp(&dir, false, &mac_material)
    );

    // openssl -> vault: a key wrapped by openssl unwraps into a working vault key.
    let hmac_key = [0x5cu8; 48];
    let blob = kwp(&dir, false, &hmac_key);
    let t = template(KeyType::HmacSha384, KeyUsage::SIGN, false);
    let body = c.ok(Request::Unwrap {
        unwrapping_key: kek,
        template: t,
        label: b"",
        wrapped: &blob,
    });
    let unwrapped = common::attrs(&body).key_id.get();
    let tag = c.ok(Request::Sign {
        key: unwrapped,
        message: b"data",
    });
    let data = dir.write("data.bin", b"data");
    let expected = openssl_ok(&[
        "dgst",
        "-sha384",
        "-mac",
        "HMAC",
        "-macopt",
        &format!("hexkey:{}", hex::encode(hmac_key)),
        "-binary",
        &data,
    ]);
    assert_eq!(tag, expected);
    // A corrupted openssl blob is refused.
    let mut bad = blob.clone();
    bad[10] ^= 1;
    c.fails(
        Request::Unwrap {
            unwrapping_key: kek,
            template: t,
            label: b"",
            wrapped: &bad,
        },
        Status::AuthenticationFailed,
    );
}

fn gcm_open_python(key: &[u8], aad: &[u8], sealed: &[u8]) -> Vec<u8> {
    let script = r#"
import sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key, aad, sealed = (bytes.fromhex(a) for a in sys.argv[1:4])
print(AESGCM(key).decrypt(sealed[:12], sealed[12:], aad).hex())
"#;
    python(
        script,
        &[&hex::encode(key), &hex::encode(aad), &hex::encode(sealed)],
    )
}

#[test]
fn aes_gcm_interoperates_with_python_both_ways() {
    let mut c = Client::new(true);
    let key_bytes = [0x42u8; 32];
    let key = c.import(
        KeyType::Aes256,
        KeyUsage::ENCRYPT | KeyUsage::DECRYPT,
        false,
        &key_bytes,
    );
    for len in [0usize, 1, 16, 1024, 16 * 1024] {
        let plaintext: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let sealed = c.ok(Request::Encrypt {
            key,
            aad: b"context",
            plaintext: &plaintext,
        });
        assert_eq!(gcm_open_python(&key_bytes, b"context", &sealed), plaintext);
    }
    // Python -> vault, with a nonce the vault did not choose.
    let script = r#"
import sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
key = bytes.fromhex(sys.argv[1]); nonce = bytes(range(12))
print((nonce + AESGCM(key).encrypt(nonce, b"from python", b"ad")).hex())
"#;
    let sealed = python(script, &[&hex::encode(key_bytes)]);
    assert_eq!(
        c.ok(Request::Decrypt {
            key,
            aad: b"ad",
            ciphertext: &sealed
        }),
        b"from python"
    );
    c.fails(
        Request::Decrypt {
            key,
            aad: b"ae",
            ciphertext: &sealed,
        },
        Status::AuthenticationFailed,
    );
}

/// A derived key, exported (wrapped, unwrapped by openssl), equals HKDF-SHA-384 as
/// computed by Python with the documented info layout.
#[test]
fn derive_matches_python_hkdf() {
    let mut c = Client::new(true);
    let dir = Dir::new();
    let kek = c.import(
        KeyType::Aes256,
        KeyUsage::WRAP,
        false,
        &hex::decode(KEK_HEX).unwrap(),
    );
    let ikm = [0x13u8; 48];
    let parent = c.import(KeyType::HmacSha384, KeyUsage::DERIVE, true, &ikm);
    let t = template(KeyType::Aes256, KeyUsage::ENCRYPT, true);
    let body = c.ok(Request::Derive {
        parent,
        template: t,
        label: b"",
        salt: b"salt",
        info: b"volume-1",
    });
    let child = common::attrs(&body).key_id.get();
    let material = kwp(
        &dir,
        true,
        &c.ok(Request::Wrap {
            wrapping_key: kek,
            key: child,
        }),
    );
    let mut info = DERIVE_INFO_PREFIX.to_vec();
    info.extend_from_slice(&KeyType::Aes256.raw().to_le_bytes());
    info.extend_from_slice(b"volume-1");
    let script = r#"
import sys
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes
ikm, salt, info = (bytes.fromhex(a) for a in sys.argv[1:4])
print(HKDF(hashes.SHA384(), 32, salt, info).derive(ikm).hex())
"#;
    let expected = python(
        script,
        &[
            &hex::encode(ikm),
            &hex::encode(b"salt"),
            &hex::encode(&info),
        ],
    );
    assert_eq!(material, expected);
    assert!(Path::new(&dir.path("kw.in")).exists());
}

/// Python's `hashlib` re-checks the audit chain from the ReadAudit body alone (the
/// layout documented in docs/vhsm-protocol.md), and finds the vault's head.
#[test]
fn audit_chain_checks_out_in_python() {
    let mut c = Client::new(false);
    c.caller = nitride_vhsm::Caller::SVSM;
    let k = c.generate(KeyType::Aes256, KeyUsage::ENCRYPT, false);
    c.ok(Request::Encrypt {
        key: k,
        aad: b"",
        plaintext: b"x",
    });
    c.fails(Request::GetPublicKey { key: k }, Status::WrongKeyType);
    let body = c.ok(Request::ReadAudit { from_seq: 0 });
    // The ReadAudit itself is entry 4; the head covers it.
    let head = *c.vault.audit_log().head();
    let script = r#"
import hashlib, struct, sys
body = bytes.fromhex(sys.argv[1])
(count,) = struct.unpack_from("<I", body, 0)
assert len(body) == 4 + 88 * count
prev = bytes(48)
for i in range(count):
    e = body[4 + 88 * i: 4 + 88 * (i + 1)]
    seq, key_id, op, status, vmpl = struct.unpack_from("<QIHHB", e, 0)
    assert seq == i + 1 and e[17:24] == bytes(7)
    link = hashlib.sha384(b"NITRIDE-AUDIT-V1" + prev + e[:40]).digest()
    assert link == e[40:88], i
    prev = link
print(prev.hex())
"#;
    let last = python(script, &[&hex::encode(&body)]);
    let fourth = c.vault.audit_log().since(4).next().copied().unwrap();
    use sha2::Digest;
    let expected: [u8; 48] = sha2::Sha384::digest(nitride_protocol::vhsm::audit_chain_input(
        &last.try_into().unwrap(),
        &fourth,
    ))
    .into();
    assert_eq!(expected, head);
}

// --- PKCS#11 support (issue 16): SignDigest and HkdfDerive. ---

/// SignDigest signs a digest computed outside the vault: openssl checks the raw
/// `r || s` (turned into DER here) against the digest with `pkeyutl -verify`, and
/// the vault refuses digests outside 24..=64 bytes and keys that are not ECDSA.
#[test]
fn openssl_verifies_sign_digest_signatures() {
    use p384::ecdsa::Signature;
    use sha2::{Digest, Sha384, Sha512};
    let mut c = Client::new(false);
    let dir = Dir::new();
    let key = c.generate(KeyType::EcdsaP384, KeyUsage::SIGN, false);
    let pem = public_pem(&mut c, &dir, key);
    for digest in [
        Sha384::digest(b"pkcs11 digest").to_vec(),
        Sha512::digest(b"pkcs11 digest").to_vec(),
        vec![0x5Au8; 24],
    ] {
        let raw = c.ok(Request::SignDigest {
            key,
            digest: &digest,
        });
        assert_eq!(raw.len(), 96, "raw r || s");
        let der = Signature::from_slice(&raw).unwrap().to_der();
        let sig = dir.write("sig.der", der.as_bytes());
        let dg = dir.write("digest.bin", &digest);
        let out = openssl(&[
            "pkeyutl", "-verify", "-pubin", "-inkey", &pem, "-in", &dg, "-sigfile", &sig,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut other = digest.clone();
        other[0] ^= 1;
        let dg = dir.write("digest.bin", &other);
        let out = openssl(&[
            "pkeyutl", "-verify", "-pubin", "-inkey", &pem, "-in", &dg, "-sigfile", &sig,
        ]);
        assert!(!out.status.success(), "another digest must not verify");
    }
    for len in [0usize, 23, 65] {
        c.fails(
            Request::SignDigest {
                key,
                digest: &vec![1; len],
            },
            if len > 64 {
                Status::TooLarge
            } else {
                Status::InvalidParameter
            },
        );
    }
    let ed = c.generate(KeyType::Ed25519, KeyUsage::SIGN, false);
    c.fails(
        Request::SignDigest {
            key: ed,
            digest: &[1; 48],
        },
        Status::WrongKeyType,
    );
    let verify_only = c.generate(KeyType::EcdsaP384, KeyUsage::VERIFY, false);
    c.fails(
        Request::SignDigest {
            key: verify_only,
            digest: &[1; 48],
        },
        Status::UsageNotPermitted,
    );
}

/// SignDigest with an ECDSA P-256 key: a 64-byte `r || s` that openssl verifies
/// against the digest (SHA-256, and SHA-384 truncated to the order's bit length);
/// an ECDH P-256 key cannot sign.
#[test]
fn openssl_verifies_p256_sign_digest_signatures() {
    use p256::ecdsa::Signature;
    use sha2::{Digest, Sha256, Sha384};
    let mut c = Client::new(false);
    let dir = Dir::new();
    let key = c.generate(KeyType::EcdsaP256, KeyUsage::SIGN, false);
    let pem = public_pem(&mut c, &dir, key);
    for digest in [
        Sha256::digest(b"pkcs11 digest").to_vec(),
        Sha384::digest(b"pkcs11 digest").to_vec(),
    ] {
        let raw = c.ok(Request::SignDigest {
            key,
            digest: &digest,
        });
        assert_eq!(raw.len(), 64, "raw r || s");
        let der = Signature::from_slice(&raw).unwrap().to_der();
        let sig = dir.write("sig.der", der.as_bytes());
        let dg = dir.write("digest.bin", &digest);
        let out = openssl(&[
            "pkeyutl", "-verify", "-pubin", "-inkey", &pem, "-in", &dg, "-sigfile", &sig,
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut other = digest.clone();
        other[0] ^= 1;
        let dg = dir.write("digest.bin", &other);
        let out = openssl(&[
            "pkeyutl", "-verify", "-pubin", "-inkey", &pem, "-in", &dg, "-sigfile", &sig,
        ]);
        assert!(!out.status.success(), "another digest must not verify");
    }
    let ecdh = c.generate(KeyType::EcdhP256, KeyUsage::DERIVE, false);
    c.fails(
        Request::SignDigest {
            key: ecdh,
            digest: &[1; 32],
        },
        // An ECDH key cannot carry SIGN usage, so the usage check refuses it first.
        Status::UsageNotPermitted,
    );
}

/// HkdfDerive is plain RFC 5869 HKDF-SHA-384: Python's HKDF with the same salt and
/// info gives the derived key's material (read back through key wrap), unlike
/// Derive, which prefixes `info`; an empty salt is RFC 5869's default.
#[test]
fn hkdf_derive_matches_python_hkdf_without_prefix() {
    let mut c = Client::new(true);
    let dir = Dir::new();
    let kek = c.import(
        KeyType::Aes256,
        KeyUsage::WRAP,
        false,
        &hex::decode(KEK_HEX).unwrap(),
    );
    let ikm = [0x27u8; 32];
    let parent = c.import(KeyType::Aes256, KeyUsage::DERIVE, true, &ikm);
    let script = r#"
import sys
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes
ikm, salt, info, n = (bytes.fromhex(a) for a in sys.argv[1:5])
print(HKDF(hashes.SHA384(), n[0], salt or None, info).derive(ikm).hex())
"#;
    for (kt, salt) in [
        (KeyType::Aes256, &b"salt"[..]),
        (KeyType::HmacSha384, &b""[..]),
    ] {
        let usage = kt.allowed_usage() & (KeyUsage::ENCRYPT | KeyUsage::SIGN);
        let body = c.ok(Request::HkdfDerive {
            parent,
            template: template(kt, usage, true),
            label: b"hkdf",
            salt,
            info: b"pkcs11",
        });
        let child = common::attrs(&body);
        assert_eq!(child.origin, 4, "origin: derived");
        let material = kwp(
            &dir,
            true,
            &c.ok(Request::Wrap {
                wrapping_key: kek,
                key: child.key_id.get(),
            }),
        );
        let n = u8::try_from(kt.material_len()).unwrap();
        let expected = python(
            script,
            &[
                &hex::encode(ikm),
                &hex::encode(salt),
                &hex::encode(b"pkcs11"),
                &hex::encode([n]),
            ],
        );
        assert_eq!(material, expected, "{kt:?}");
    }
    // The same rules as Derive: no exportable child of a non-exportable parent.
    let sealed = c.generate(KeyType::HmacSha384, KeyUsage::DERIVE, false);
    c.fails(
        Request::HkdfDerive {
            parent: sealed,
            template: template(KeyType::Aes256, KeyUsage::ENCRYPT, true),
            label: b"",
            salt: b"",
            info: b"",
        },
        Status::NotExportable,
    );
    let no_derive = c.generate(KeyType::Aes256, KeyUsage::ENCRYPT, true);
    c.fails(
        Request::HkdfDerive {
            parent: no_derive,
            template: template(KeyType::Aes256, KeyUsage::ENCRYPT, true),
            label: b"",
            salt: b"",
            info: b"",
        },
        Status::UsageNotPermitted,
    );
}
