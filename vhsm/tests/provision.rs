//! Provisioning against independent implementations: Python's `jwcrypto` makes the
//! JWEs (ECDH-ES+A256KW, A256GCM; through the test KBS's `make_jwe`, which lays
//! them out as trustee does) to the session key the vault announces and signs
//! the owner's envelopes (JWS ES384), `rfc8785` canonicalizes the runtime data the
//! vault hashed, and `cryptography` checks P-256 signatures and ECDH. Every attack
//! the issue lists (a tampered JWE, an envelope not signed by the measured owner,
//! a JWE replayed into a later session) is refused with the vault unchanged.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{attrs, OsEntropy};
use nitride_protocol::provision::{Envelope, JWS_HEADER};
use nitride_protocol::vhsm::{
    KeyTemplate, KeyType, KeyUsage, Origin, Request, Response, Status, VmplSet, MAX_REQUEST_SIZE,
};
use nitride_vhsm::{AttestError, Attester, Caller, Evidence, Vault, VaultPolicy};
use sha2::{Digest, Sha384};

/// Run a Python snippet (with jwcrypto, rfc8785, cryptography); returns stdout.
fn python(script: &str, args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 ({e}): install python3"));
    assert!(
        out.status.success(),
        "python failed (needs `pip install -r tests/kbs/requirements.txt`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// An owner key pair from Python: (private PEM, uncompressed public point).
fn owner_key() -> (String, [u8; 97]) {
    let out = python(
        "from cryptography.hazmat.primitives.asymmetric import ec\n\
         from cryptography.hazmat.primitives import serialization as s\n\
         k = ec.generate_private_key(ec.SECP384R1())\n\
         print(k.public_key().public_bytes(s.Encoding.X962, s.PublicFormat.UncompressedPoint).hex())\n\
         print(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()).decode())",
        &[],
    );
    let (point, pem) = out.split_once('\n').unwrap();
    (
        pem.to_string(),
        hex::decode(point).unwrap().try_into().unwrap(),
    )
}

/// jwcrypto's JWS (compact, ES384) of `payload` with the envelope header.
fn owner_sign(pem: &str, payload: &[u8]) -> Vec<u8> {
    python(
        "import sys\n\
         from jwcrypto import jwk, jws\n\
         k = jwk.JWK.from_pem(sys.argv[1].encode())\n\
         s = jws.JWS(bytes.fromhex(sys.argv[2]))\n\
         s.add_signature(k, None, protected=sys.argv[3])\n\
         print(s.serialize(compact=True))",
        &[
            pem,
            &hex::encode(payload),
            std::str::from_utf8(JWS_HEADER).unwrap(),
        ],
    )
    .into_bytes()
}

/// The flattened JWE of `plaintext` to the JWK `tee_pubkey` exactly as the test KBS
/// makes it (tests/kbs/kbs_core.py `make_jwe`: jwcrypto's ECDH-ES+A256KW and
/// A256GCM, with trustee's protected header carrying `epk`).
fn kbs_encrypt(tee_pubkey: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let kbs_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/kbs");
    python(
        "import sys, json\n\
         sys.path.insert(0, sys.argv[3])\n\
         import kbs_core\n\
         print(kbs_core.make_jwe(json.loads(sys.argv[1]), bytes.fromhex(sys.argv[2])).decode())",
        &[
            std::str::from_utf8(tee_pubkey).unwrap(),
            &hex::encode(plaintext),
            kbs_dir,
        ],
    )
    .into_bytes()
}

fn envelope(kt: KeyType, usage: KeyUsage, label: &[u8], material: &[u8]) -> Vec<u8> {
    let e = Envelope {
        template: KeyTemplate::new(kt, usage, VmplSet::VMPL1, false),
        label,
        material,
    };
    let mut b = vec![0u8; e.encoded_len()];
    e.write(&mut b).unwrap();
    b
}

/// An attester that remembers the REPORT_DATA it was asked for.
#[derive(Default)]
struct Recorder {
    report_data: Option<[u8; 64]>,
}

impl Attester for Recorder {
    fn report(&mut self, report_data: &[u8; 64], _: bool) -> Result<Evidence, AttestError> {
        self.report_data = Some(*report_data);
        Ok(Evidence {
            report: vec![0xAA; 0x4A0],
            certificates: vec![],
        })
    }
}

struct Session {
    runtime_data: Vec<u8>,
    jwk: Vec<u8>,
    report_data: [u8; 64],
}

struct Kbs {
    vault: Vault<OsEntropy>,
    buf: Vec<u8>,
}

impl Kbs {
    fn new(policy: VaultPolicy) -> Self {
        Self {
            vault: Vault::new(OsEntropy, policy).unwrap(),
            buf: vec![0; MAX_REQUEST_SIZE],
        }
    }

    fn call(&mut self, req: Request<'_>, attester: &mut dyn Attester) -> (Status, Vec<u8>) {
        let n = req.encode(1, &mut self.buf).unwrap();
        let resp = self
            .vault
            .handle_with(Caller::new(1).unwrap(), &self.buf[..n], attester);
        let r = Response::decode(&resp).unwrap();
        (r.status().unwrap(), resp)
    }

    fn begin(&mut self, nonce: &str) -> Session {
        let mut rec = Recorder::default();
        let (status, resp) = self.call(
            Request::ProvisionBegin {
                nonce: nonce.as_bytes(),
            },
            &mut rec,
        );
        assert_eq!(status, Status::Ok);
        let r = Response::decode(&resp).unwrap();
        let ev = r.provision_evidence().unwrap();
        assert_eq!(ev.report, &[0xAA; 0x4A0][..]);
        Session {
            runtime_data: ev.runtime_data.to_vec(),
            jwk: ev.jwk.to_vec(),
            report_data: rec.report_data.unwrap(),
        }
    }

    fn finish(&mut self, jwe: &[u8]) -> Result<nitride_protocol::vhsm::KeyAttributes, Status> {
        let (status, resp) = self.call(Request::ProvisionFinish { jwe }, &mut Recorder::default());
        match status {
            Status::Ok => Ok(attrs(Response::decode(&resp).unwrap().body)),
            s => Err(s),
        }
    }
}

fn owner_policy(point: [u8; 97]) -> VaultPolicy {
    VaultPolicy {
        owner_key: Some(point),
        ..VaultPolicy::default()
    }
}

/// The runtime data is exactly what `rfc8785` makes of it and REPORT_DATA is its
/// SHA-384 zero-padded; the JWE jwcrypto makes to the announced key decrypts
/// inside the vault; the key decrypts what the owner encrypted with it, is listed
/// as provisioned and non-exportable, and Wrap refuses it.
#[test]
fn an_owner_signed_secret_is_provisioned() {
    let (pem, point) = owner_key();
    let mut kbs = Kbs::new(owner_policy(point));
    let nonce = "q83vEjRWeJCrze8SNFZ4kKvN7xI0VniQq83vEjRWeJA=";
    let s = kbs.begin(nonce);
    let jcs = python(
        "import sys, json, rfc8785\n\
         print(rfc8785.dumps(json.loads(sys.argv[1])).decode())",
        &[std::str::from_utf8(&s.runtime_data).unwrap()],
    );
    assert_eq!(jcs.as_bytes(), &s.runtime_data[..], "RFC 8785 form");
    let mut want = [0u8; 64];
    want[..48].copy_from_slice(&Sha384::digest(&s.runtime_data));
    assert_eq!(s.report_data, want);
    assert!(std::str::from_utf8(&s.runtime_data)
        .unwrap()
        .contains(&format!("\"nonce\":\"{nonce}\"")));

    let secret = [0x5Cu8; 32];
    let payload = envelope(
        KeyType::Aes256,
        KeyUsage::ENCRYPT | KeyUsage::DECRYPT,
        b"disk",
        &secret,
    );
    let jwe = kbs_encrypt(&s.jwk, &owner_sign(&pem, &payload));
    let key = kbs.finish(&jwe).unwrap();
    assert_eq!(key.origin, Origin::Provisioned.raw());
    assert_eq!(key.exportable, 0);
    assert_eq!(key.label(), b"disk");
    assert_eq!(key.allowed_vmpls, VmplSet::VMPL1.bits());
    // The owner's ciphertext (Python AES-GCM under the secret) decrypts in the vault.
    let sealed = hex::decode(python(
        "import sys\n\
         from cryptography.hazmat.primitives.ciphers.aead import AESGCM\n\
         n = bytes(12)\n\
         print((n + AESGCM(bytes.fromhex(sys.argv[1])).encrypt(n, b'owner data', b'v1')).hex())",
        &[&hex::encode(secret)],
    ))
    .unwrap();
    let caller = Caller::new(1).unwrap();
    let mut out = Vec::new();
    kbs.vault
        .decrypt(caller, key.key_id.get(), b"v1", &sealed, &mut out)
        .unwrap();
    assert_eq!(out, b"owner data");
    // Wrap refuses it: provisioned keys follow the envelope's exportability.
    let kek = kbs
        .vault
        .generate(
            caller,
            &nitride_vhsm::KeySpec::new(KeyType::Aes256, KeyUsage::WRAP, VmplSet::VMPL1, false),
        )
        .unwrap();
    assert_eq!(
        kbs.vault
            .wrap_key(caller, kek.id, key.key_id.get(), &mut Vec::new()),
        Err(nitride_vhsm::Error::NotExportable)
    );
    // The session is over.
    assert_eq!(kbs.finish(&jwe), Err(Status::NoSession));
}

/// Every field of the JWE altered, an envelope encrypted to the right key but not
/// signed, one signed by another key, a JWE replayed into a later session: all
/// refused, nothing stored.
#[test]
fn tampered_unsigned_foreign_and_replayed_secrets_are_refused() {
    let (pem, point) = owner_key();
    let (other_pem, _) = owner_key();
    let mut kbs = Kbs::new(owner_policy(point));
    let payload = envelope(KeyType::Aes256, KeyUsage::DECRYPT, b"x", &[7; 32]);
    let signed = owner_sign(&pem, &payload);

    let first = kbs.begin("bm9uY2U=");
    let jwe = kbs_encrypt(&first.jwk, &signed);
    for field in ["protected", "encrypted_key", "iv", "ciphertext", "tag"] {
        let s = kbs.begin("bm9uY2U=");
        let mut t: serde_json::Value =
            serde_json::from_slice(&kbs_encrypt(&s.jwk, &signed)).unwrap();
        // Change one character, keeping it base64url.
        let mut chars: Vec<char> = t[field].as_str().unwrap().chars().collect();
        chars[2] = if chars[2] == 'A' { 'B' } else { 'A' };
        t[field] = serde_json::Value::String(chars.into_iter().collect());
        assert_eq!(
            kbs.finish(serde_json::to_string(&t).unwrap().as_bytes()),
            Err(Status::JweInvalid),
            "{field} altered"
        );
        assert_eq!(kbs.vault.len(), 0);
    }
    // An extra member (which could carry meaning the vault ignores) is refused.
    let s = kbs.begin("bm9uY2U=");
    let mut extra: serde_json::Value =
        serde_json::from_slice(&kbs_encrypt(&s.jwk, &signed)).unwrap();
    extra["aad"] = serde_json::Value::String("eA".into());
    assert_eq!(
        kbs.finish(serde_json::to_string(&extra).unwrap().as_bytes()),
        Err(Status::JweInvalid)
    );
    // Replayed: the first session's JWE into a later session.
    let _later = kbs.begin("bm9uY2U=");
    assert_eq!(kbs.finish(&jwe), Err(Status::JweInvalid), "replayed");

    // Encrypted to the right key, but a bare envelope: the owner did not sign it.
    let s = kbs.begin("bm9uY2U=");
    assert_eq!(
        kbs.finish(&kbs_encrypt(&s.jwk, &payload)),
        Err(Status::Unauthenticated)
    );
    // Signed by another key.
    let s = kbs.begin("bm9uY2U=");
    assert_eq!(
        kbs.finish(&kbs_encrypt(&s.jwk, &owner_sign(&other_pem, &payload))),
        Err(Status::EnvelopeInvalid)
    );
    // Signed by the owner over another header (a JWS not meant as an envelope).
    let other_header = python(
        "import sys\n\
         from jwcrypto import jwk, jws\n\
         k = jwk.JWK.from_pem(sys.argv[1].encode())\n\
         s = jws.JWS(bytes.fromhex(sys.argv[2]))\n\
         s.add_signature(k, None, protected='{\"alg\":\"ES384\"}')\n\
         print(s.serialize(compact=True))",
        &[&pem, &hex::encode(&payload)],
    );
    let s = kbs.begin("bm9uY2U=");
    assert_eq!(
        kbs.finish(&kbs_encrypt(&s.jwk, other_header.as_bytes())),
        Err(Status::EnvelopeInvalid)
    );
    assert_eq!(kbs.vault.len(), 0, "nothing entered the vault");
    // And the genuine one still works in its own session.
    let s = kbs.begin("bm9uY2U=");
    assert!(kbs.finish(&kbs_encrypt(&s.jwk, &signed)).is_ok());
}

/// Without an owner key, a bare envelope is accepted only when the measured policy
/// allows it, and the key carries its own origin.
#[test]
fn unauthenticated_secrets_need_the_policy() {
    let payload = envelope(KeyType::HmacSha384, KeyUsage::SIGN, b"u", &[3; 48]);
    let mut strict = Kbs::new(VaultPolicy::default());
    let s = strict.begin("bm9uY2U=");
    assert_eq!(
        strict.finish(&kbs_encrypt(&s.jwk, &payload)),
        Err(Status::Unauthenticated)
    );
    let mut lax = Kbs::new(VaultPolicy {
        allow_unauthenticated_provisioning: true,
        ..VaultPolicy::default()
    });
    let s = lax.begin("bm9uY2U=");
    let key = lax.finish(&kbs_encrypt(&s.jwk, &payload)).unwrap();
    assert_eq!(key.origin, Origin::ProvisionedUnauthenticated.raw());
    // A nonce that would need JSON escaping is refused.
    let (status, _) = lax.call(
        Request::ProvisionBegin { nonce: b"a\"b" },
        &mut Recorder::default(),
    );
    assert_eq!(status, Status::InvalidParameter);
    // Finish without Begin.
    assert_eq!(lax.finish(b"{}"), Err(Status::NoSession));
}

/// ECDSA P-256 signatures verify with `cryptography`, and ECDH P-256 agreement
/// gives the key Python derives from the same shared secret.
#[test]
fn p256_keys_interoperate() {
    let mut c = common::Client::new(false);
    let caller = c.caller;
    let sign = c.generate(KeyType::EcdsaP256, KeyUsage::SIGN | KeyUsage::VERIFY, false);
    let spki = c.ok(Request::GetPublicKey { key: sign });
    let sig = c.ok(Request::Sign {
        key: sign,
        message: b"hello p256",
    });
    python(
        "import sys\n\
         from cryptography.hazmat.primitives import hashes, serialization\n\
         from cryptography.hazmat.primitives.asymmetric import ec\n\
         k = serialization.load_der_public_key(bytes.fromhex(sys.argv[1]))\n\
         assert k.curve.name == 'secp256r1'\n\
         k.verify(bytes.fromhex(sys.argv[2]), b'hello p256', ec.ECDSA(hashes.SHA256()))",
        &[&hex::encode(&spki), &hex::encode(&sig)],
    );
    let ecdh = c.generate(KeyType::EcdhP256, KeyUsage::DERIVE, false);
    let ours = c.ok(Request::GetPublicKey { key: ecdh });
    // Python: a peer key; its SPKI; and the AES key HKDF-SHA-384 gives from Z.
    let out = python(
        "import sys\n\
         from cryptography.hazmat.primitives import hashes, serialization as s\n\
         from cryptography.hazmat.primitives.asymmetric import ec\n\
         from cryptography.hazmat.primitives.kdf.hkdf import HKDF\n\
         peer = ec.generate_private_key(ec.SECP256R1())\n\
         z = peer.exchange(ec.ECDH(), s.load_der_public_key(bytes.fromhex(sys.argv[1])))\n\
         info = b'nitride-vhsm agree v1\\x00' + (1).to_bytes(2, 'little') + b'ctx'\n\
         k = HKDF(hashes.SHA384(), 32, b'salt', info).derive(z)\n\
         print(peer.public_key().public_bytes(s.Encoding.DER, s.PublicFormat.SubjectPublicKeyInfo).hex())\n\
         print(k.hex())",
        &[&hex::encode(&ours)],
    );
    let (peer, want) = out.split_once('\n').unwrap();
    let peer = hex::decode(peer).unwrap();
    let want = hex::decode(want).unwrap();
    let body = c.ok(Request::Agree {
        key: ecdh,
        template: common::template(KeyType::Aes256, KeyUsage::ENCRYPT, false),
        label: b"shared",
        peer: &peer,
        salt: b"salt",
        info: b"ctx",
    });
    let shared = attrs(&body);
    assert_eq!(shared.origin, Origin::Derived.raw());
    // The vault's key encrypts what Python's decrypts.
    let sealed = c.ok(Request::Encrypt {
        key: shared.key_id.get(),
        aad: b"",
        plaintext: b"agreed",
    });
    python(
        "import sys\n\
         from cryptography.hazmat.primitives.ciphers.aead import AESGCM\n\
         b = bytes.fromhex(sys.argv[2])\n\
         assert AESGCM(bytes.fromhex(sys.argv[1])).decrypt(b[:12], b[12:], b'') == b'agreed'",
        &[&hex::encode(&want), &hex::encode(&sealed)],
    );
    // A P-384 peer key, or garbage, is refused.
    let mut bad = peer.clone();
    bad[30] ^= 1;
    c.fails(
        Request::Agree {
            key: ecdh,
            template: common::template(KeyType::Aes256, KeyUsage::ENCRYPT, false),
            label: b"",
            peer: &bad,
            salt: b"",
            info: b"",
        },
        Status::InvalidParameter,
    );
    let _ = caller;
}
