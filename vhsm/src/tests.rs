//! Unit tests of the vault's operations and policy through the typed API, with access
//! to internal state (snapshots, nonce counters). Wire-level tests live in
//! `tests/dispatch.rs`, interop with other tools in `tests/interop.rs`.

use alloc::vec;
use alloc::vec::Vec;

use sha2::{Digest, Sha384, Sha512};

use crate::vault::{KeyInfo, KeySpec, Label, Vault, DERIVE_INFO_PREFIX, GCM_INVOCATION_LIMIT};
use crate::{
    AttestError, Attester, Caller, Error, Evidence, KeyType, KeyUsage, Origin, Platform,
    PlatformError, VaultPolicy, VmplSet,
};
use nitride_protocol::attest::{KeyBinding, VhsmManifest, NONCE_SIZE};
use nitride_protocol::snp::report::REPORT_SIZE;
use nitride_protocol::vhsm::{
    Request, Response, Status, KEY_CAPACITY, MAX_RANDOM_LEN, MAX_RESPONSE_SIZE,
};
use p384::pkcs8::DecodePublicKey;

/// Deterministic entropy (SHA-384 of a counter) that can be switched off.
struct TestPlatform {
    counter: u64,
    fail: bool,
}

impl Platform for TestPlatform {
    fn entropy(&mut self, out: &mut [u8]) -> Result<(), PlatformError> {
        if self.fail {
            return Err(PlatformError::EntropyUnavailable);
        }
        for chunk in out.chunks_mut(48) {
            self.counter += 1;
            let block = Sha384::digest(self.counter.to_le_bytes());
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        Ok(())
    }
}

const V0: Caller = Caller::SVSM;
fn v1() -> Caller {
    Caller::new(1).unwrap()
}
fn v2() -> Caller {
    Caller::new(2).unwrap()
}

fn vault(allow_import: bool) -> Vault<TestPlatform> {
    Vault::new(
        TestPlatform {
            counter: 0,
            fail: false,
        },
        VaultPolicy {
            allow_plaintext_import: allow_import,
            ..VaultPolicy::default()
        },
    )
    .unwrap()
}

fn spec(kt: KeyType, usage: KeyUsage, exportable: bool) -> KeySpec {
    KeySpec::new(kt, usage, VmplSet::VMPL0 | VmplSet::VMPL1, exportable)
}

fn aes_all() -> KeyUsage {
    KeyType::Aes256.allowed_usage()
}

/// Run `f`, which must fail with `err`, and check the vault's state did not change.
fn fails_unchanged<P: Platform, T: core::fmt::Debug>(
    v: &mut Vault<P>,
    err: Error,
    f: impl FnOnce(&mut Vault<P>) -> Result<T, Error>,
) {
    let before = v.snapshot();
    assert_eq!(f(v).unwrap_err(), err);
    assert_eq!(v.snapshot(), before);
}

#[test]
fn caller_vmpl_range() {
    assert_eq!(Caller::new(3).unwrap().vmpl(), 3);
    assert!(Caller::new(4).is_none());
    assert_eq!(Caller::SVSM.as_set(), VmplSet::VMPL0);
}

#[test]
fn entropy_failure_at_construction_and_later() {
    let err = Vault::new(
        TestPlatform {
            counter: 0,
            fail: true,
        },
        VaultPolicy::default(),
    )
    .unwrap_err();
    assert_eq!(err, Error::Entropy);
    let mut v = vault(false);
    v.platform_mut().fail = true;
    // Until a reseed is due the DRBG still works ...
    let mut out = Vec::new();
    v.random(16, &mut out).unwrap();
    // ... and when it is due, the platform's failure surfaces as an error.
    let mut buf = [0u8; 1];
    let mut result = Ok(());
    for _ in 0..=crate::drbg::RESEED_INTERVAL {
        result = v.fill_random(&mut buf);
        if result.is_err() {
            break;
        }
    }
    assert_eq!(result, Err(Error::Entropy));
    fails_unchanged(&mut v, Error::Entropy, |v| {
        v.generate(V0, &spec(KeyType::Aes256, aes_all(), false))
    });
    v.platform_mut().fail = false;
    assert!(v
        .generate(V0, &spec(KeyType::Aes256, aes_all(), false))
        .is_ok());
}

#[test]
fn generate_every_type() {
    let mut v = vault(false);
    for kt in [
        KeyType::Aes256,
        KeyType::EcdsaP384,
        KeyType::Ed25519,
        KeyType::HmacSha384,
    ] {
        let mut s = spec(kt, kt.allowed_usage(), false);
        s.label = Label::new(b"label").unwrap();
        let info = v.generate(v1(), &s).unwrap();
        assert_eq!(info.key_type, kt);
        assert_eq!(info.origin, Origin::Generated);
        assert_eq!(info.label.as_bytes(), b"label");
        assert_eq!(v.attributes(v1(), info.id).unwrap(), info);
    }
    let ids: Vec<u32> = v.list(v1()).map(|i| i.id).collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    // Two generated keys differ.
    let a = v
        .generate(V0, &spec(KeyType::Ed25519, KeyUsage::SIGN, false))
        .unwrap();
    let b = v
        .generate(V0, &spec(KeyType::Ed25519, KeyUsage::SIGN, false))
        .unwrap();
    let (mut pa, mut pb) = (Vec::new(), Vec::new());
    v.public_key(V0, a.id, &mut pa).unwrap();
    v.public_key(V0, b.id, &mut pb).unwrap();
    assert_ne!(pa, pb);
}

#[test]
fn spec_validation() {
    let mut v = vault(true);
    let bad = [
        KeySpec::new(KeyType::Aes256, KeyUsage::empty(), VmplSet::VMPL0, false),
        KeySpec::new(KeyType::Aes256, KeyUsage::SIGN, VmplSet::VMPL0, false),
        KeySpec::new(KeyType::EcdsaP384, KeyUsage::ENCRYPT, VmplSet::VMPL0, false),
        KeySpec::new(KeyType::Ed25519, KeyUsage::DERIVE, VmplSet::VMPL0, false),
        KeySpec::new(KeyType::HmacSha384, KeyUsage::WRAP, VmplSet::VMPL0, false),
        // The creator must be able to use its key.
        KeySpec::new(KeyType::Aes256, KeyUsage::ENCRYPT, VmplSet::VMPL1, false),
        KeySpec::new(KeyType::Aes256, KeyUsage::ENCRYPT, VmplSet::empty(), false),
    ];
    for s in &bad {
        fails_unchanged(&mut v, Error::InvalidParameter, |v| v.generate(V0, s));
        fails_unchanged(&mut v, Error::InvalidParameter, |v| {
            v.import(V0, s, &[1; 48][..s.key_type.material_len()])
        });
    }
    assert_eq!(
        Label::new(&[b'x'; 33]).unwrap_err(),
        Error::InvalidParameter
    );
    assert_eq!(Label::new(&[b'x'; 32]).unwrap().as_bytes().len(), 32);
}

#[test]
fn import_needs_policy_and_valid_material() {
    let mut v = vault(false);
    let s = spec(KeyType::Aes256, aes_all(), true);
    fails_unchanged(&mut v, Error::PolicyDenied, |v| v.import(V0, &s, &[7; 32]));
    let mut v = vault(true);
    fails_unchanged(&mut v, Error::InvalidKeyMaterial, |v| {
        v.import(V0, &s, &[7; 31])
    });
    let p = spec(KeyType::EcdsaP384, KeyUsage::SIGN, false);
    fails_unchanged(&mut v, Error::InvalidKeyMaterial, |v| {
        v.import(V0, &p, &[0; 48])
    });
    let info = v.import(V0, &s, &[7; 32]).unwrap();
    assert_eq!(info.origin, Origin::Imported);
}

#[test]
fn capacity_and_id_exhaustion() {
    let mut v = vault(true);
    let s = spec(KeyType::HmacSha384, KeyUsage::SIGN, false);
    let kek_spec = spec(
        KeyType::Aes256,
        KeyUsage::WRAP | KeyUsage::UNWRAP | KeyUsage::DERIVE,
        true,
    );
    let kek = v.generate(V0, &kek_spec).unwrap().id;
    let mut wrapped = Vec::new();
    v.wrap_key(V0, kek, kek, &mut wrapped).unwrap();
    for _ in 1..KEY_CAPACITY {
        v.generate(V0, &s).unwrap();
    }
    assert_eq!(v.len(), KEY_CAPACITY);
    // Every creating operation is refused when the store is full.
    let aes = spec(KeyType::Aes256, KeyUsage::ENCRYPT, false);
    fails_unchanged(&mut v, Error::CapacityExceeded, |v| v.generate(V0, &s));
    fails_unchanged(&mut v, Error::CapacityExceeded, |v| {
        v.import(V0, &s, &[1; 48])
    });
    fails_unchanged(&mut v, Error::CapacityExceeded, |v| {
        v.unwrap_key(V0, kek, &aes, &wrapped)
    });
    fails_unchanged(&mut v, Error::CapacityExceeded, |v| {
        v.derive(V0, kek, &aes, b"", b"")
    });
    // Deleting makes room; ids are not reused.
    v.delete(V0, 5).unwrap();
    let info = v.generate(V0, &s).unwrap();
    assert_eq!(info.id, u32::try_from(KEY_CAPACITY).unwrap() + 1);
    assert_eq!(v.attributes(V0, 5).unwrap_err(), Error::KeyNotFound);
    let mut v = vault(false);
    v.set_next_id(u32::MAX - 1);
    assert_eq!(v.generate(V0, &s).unwrap().id, u32::MAX - 1);
    fails_unchanged(&mut v, Error::CapacityExceeded, |v| v.generate(V0, &s));
}

#[test]
fn vmpl_access_rules() {
    let mut v = vault(false);
    let only1 = KeySpec::new(
        KeyType::Ed25519,
        KeyUsage::SIGN | KeyUsage::VERIFY,
        VmplSet::VMPL1,
        false,
    );
    let k = v.generate(v1(), &only1).unwrap().id;
    let mut out = Vec::new();
    v.sign(v1(), k, b"m", &mut out).unwrap();
    // Other VMPLs, including VMPL0, cannot use, see or delete it.
    for c in [V0, v2(), Caller::new(3).unwrap()] {
        let mut o = Vec::new();
        assert_eq!(v.sign(c, k, b"m", &mut o).unwrap_err(), Error::KeyNotFound);
        assert_eq!(v.verify(c, k, b"m", &out).unwrap_err(), Error::KeyNotFound);
        assert_eq!(v.public_key(c, k, &mut o).unwrap_err(), Error::KeyNotFound);
        assert_eq!(v.attributes(c, k).unwrap_err(), Error::KeyNotFound);
        fails_unchanged(&mut v, Error::KeyNotFound, |v| v.delete(c, k));
        assert_eq!(v.list(c).count(), 0);
        assert!(o.is_empty());
    }
    assert_eq!(v.list(v1()).count(), 1);
    assert_eq!(
        v.sign(v1(), 999, b"m", &mut out).unwrap_err(),
        Error::KeyNotFound
    );
}

/// Every request naming `x`, a key of any type: each operation that takes a key id,
/// with `own` (an AES key usable for everything by the caller) in the other key
/// role where there is one.
fn requests_naming(x: u32, own: u32) -> Vec<Vec<u8>> {
    let t = nitride_protocol::vhsm::KeyTemplate::new(
        KeyType::Aes256,
        KeyUsage::ENCRYPT,
        VmplSet::all(),
        false,
    );
    let sealed = [0u8; 40];
    let reqs = [
        Request::Unwrap {
            unwrapping_key: x,
            template: t,
            label: b"",
            wrapped: &[0; 40],
        },
        Request::Wrap {
            wrapping_key: x,
            key: own,
        },
        Request::Wrap {
            wrapping_key: own,
            key: x,
        },
        Request::GetPublicKey { key: x },
        Request::Sign {
            key: x,
            message: b"m",
        },
        Request::Verify {
            key: x,
            message: b"m",
            signature: &[0; 64],
        },
        Request::Encrypt {
            key: x,
            aad: b"",
            plaintext: b"p",
        },
        Request::Decrypt {
            key: x,
            aad: b"",
            ciphertext: &sealed,
        },
        Request::Derive {
            parent: x,
            template: t,
            label: b"",
            salt: b"",
            info: b"",
        },
        Request::GetAttributes { key: x },
        Request::AttestKey {
            key: x,
            nonce: &[0x6e; 64],
        },
        Request::Delete { key: x },
        Request::List,
    ];
    reqs.iter()
        .map(|r| {
            let mut buf = vec![0u8; 512];
            let n = r.encode(77, &mut buf).unwrap();
            buf.truncate(n);
            buf
        })
        .collect()
}

/// What a caller observes of one request: the response bytes, and what its own
/// audit entry records (all but the sequence number, salt and chain value, which
/// differ for every entry).
fn observe(v: &mut Vault<TestPlatform>, caller: Caller, req: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let resp = v.handle(caller, req);
    let entry = v.audit_log().since(0).last().copied().unwrap();
    assert_eq!(entry.caller_vmpl, caller.vmpl());
    (resp, zerocopy::IntoBytes::as_bytes(&entry)[8..24].to_vec())
}

/// A key the caller may not use answers every request exactly like a key that does
/// not exist: status, response bytes and the audit entry the caller can see. The
/// same requests are sent while the key exists (usable by VMPL1 only) and after its
/// owner deleted it; a VMPL2 caller must not tell the two apart.
#[test]
fn invisible_keys_answer_like_missing_ones() {
    let mut v = vault(true);
    let own = v
        .generate(
            v2(),
            &KeySpec::new(KeyType::Aes256, aes_all(), VmplSet::VMPL2, true),
        )
        .unwrap()
        .id;
    for kt in [
        KeyType::Aes256,
        KeyType::EcdsaP384,
        KeyType::Ed25519,
        KeyType::HmacSha384,
    ] {
        let only1 = KeySpec::new(kt, kt.allowed_usage(), VmplSet::VMPL1, true);
        let x = v.generate(v1(), &only1).unwrap().id;
        let requests = requests_naming(x, own);
        let hidden: Vec<_> = requests.iter().map(|r| observe(&mut v, v2(), r)).collect();
        v.delete(v1(), x).unwrap();
        let missing: Vec<_> = requests.iter().map(|r| observe(&mut v, v2(), r)).collect();
        for (i, (h, m)) in hidden.iter().zip(&missing).enumerate() {
            assert_eq!(h, m, "{kt:?}, request {i}");
        }
        // And what they say is: no such key (List: nothing).
        for (resp, _) in &missing[..missing.len() - 1] {
            assert_eq!(
                Response::decode(resp).unwrap().status(),
                Some(Status::KeyNotFound)
            );
        }
    }
}

#[test]
fn sign_verify_every_signing_type() {
    let mut v = vault(false);
    for kt in [KeyType::EcdsaP384, KeyType::Ed25519, KeyType::HmacSha384] {
        let k = v
            .generate(V0, &spec(kt, KeyUsage::SIGN | KeyUsage::VERIFY, false))
            .unwrap()
            .id;
        let mut sig = Vec::new();
        v.sign(V0, k, b"message", &mut sig).unwrap();
        match kt {
            KeyType::Ed25519 => assert_eq!(sig.len(), 64),
            KeyType::HmacSha384 => assert_eq!(sig.len(), 48),
            _ => assert_eq!(sig[0], 0x30, "DER SEQUENCE"),
        }
        v.verify(V0, k, b"message", &sig).unwrap();
        assert_eq!(
            v.verify(V0, k, b"messagf", &sig).unwrap_err(),
            Error::SignatureInvalid
        );
        let mut bad = sig.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(
            v.verify(V0, k, b"message", &bad).unwrap_err(),
            Error::SignatureInvalid
        );
        assert_eq!(
            v.verify(V0, k, b"message", &[]).unwrap_err(),
            Error::SignatureInvalid
        );
    }
}

#[test]
fn hmac_matches_reference() {
    let mut v = vault(true);
    let key = [0x0b; 48];
    let k = v
        .import(V0, &spec(KeyType::HmacSha384, KeyUsage::SIGN, false), &key)
        .unwrap()
        .id;
    let mut tag = Vec::new();
    v.sign(V0, k, b"Hi There", &mut tag).unwrap();
    use hmac::Mac;
    let mut mac = <hmac::Hmac<Sha384> as hmac::digest::KeyInit>::new_from_slice(&key).unwrap();
    mac.update(b"Hi There");
    assert_eq!(tag, mac.finalize().into_bytes().to_vec());
}

#[test]
fn usage_flags_enforced_on_every_operation() {
    let mut v = vault(true);
    let enc_only = v
        .generate(V0, &spec(KeyType::Aes256, KeyUsage::ENCRYPT, true))
        .unwrap()
        .id;
    let dec_only = v
        .generate(V0, &spec(KeyType::Aes256, KeyUsage::DECRYPT, true))
        .unwrap()
        .id;
    let sign_only = v
        .generate(V0, &spec(KeyType::EcdsaP384, KeyUsage::SIGN, true))
        .unwrap()
        .id;
    let verify_only = v
        .generate(V0, &spec(KeyType::Ed25519, KeyUsage::VERIFY, true))
        .unwrap()
        .id;
    let t = spec(KeyType::Aes256, KeyUsage::ENCRYPT, true);
    let mut out = Vec::new();
    let mut sealed = Vec::new();
    v.encrypt(V0, enc_only, b"", b"x", &mut sealed).unwrap();
    let u = Error::UsageNotPermitted;
    fails_unchanged(&mut v, u, |v| v.encrypt(V0, dec_only, b"", b"x", &mut out));
    fails_unchanged(&mut v, u, |v| {
        v.decrypt(V0, enc_only, b"", &sealed, &mut out)
    });
    fails_unchanged(&mut v, u, |v| v.sign(V0, verify_only, b"m", &mut out));
    fails_unchanged(&mut v, u, |v| v.verify(V0, sign_only, b"m", &[0; 64]));
    fails_unchanged(&mut v, u, |v| v.wrap_key(V0, enc_only, dec_only, &mut out));
    fails_unchanged(&mut v, u, |v| v.unwrap_key(V0, enc_only, &t, &[0; 40]));
    fails_unchanged(&mut v, u, |v| v.derive(V0, enc_only, &t, b"", b""));
    fails_unchanged(&mut v, u, |v| v.sign(V0, enc_only, b"m", &mut out));
    fails_unchanged(&mut v, u, |v| v.encrypt(V0, sign_only, b"", b"x", &mut out));
    assert!(out.is_empty());
    // Public keys exist only for asymmetric keys.
    fails_unchanged(&mut v, Error::WrongKeyType, |v| {
        v.public_key(V0, enc_only, &mut out)
    });
    v.public_key(V0, verify_only, &mut out).unwrap();
}

#[test]
fn encrypt_decrypt_and_nonces() {
    let mut v = vault(false);
    let k = v
        .generate(
            V0,
            &spec(
                KeyType::Aes256,
                KeyUsage::ENCRYPT | KeyUsage::DECRYPT,
                false,
            ),
        )
        .unwrap()
        .id;
    let mut nonces = Vec::new();
    for i in 0u32..50 {
        let mut sealed = Vec::new();
        v.encrypt(V0, k, b"aad", b"plaintext", &mut sealed).unwrap();
        assert_eq!(sealed.len(), 12 + 9 + 16);
        assert_eq!(&sealed[8..12], &i.to_be_bytes(), "invocation counter");
        nonces.push(sealed[..12].to_vec());
        let mut plain = Vec::new();
        v.decrypt(V0, k, b"aad", &sealed, &mut plain).unwrap();
        assert_eq!(plain, b"plaintext");
        fails_unchanged(&mut v, Error::AuthenticationFailed, |v| {
            v.decrypt(V0, k, b"aaX", &sealed, &mut plain)
        });
    }
    nonces.sort();
    nonces.dedup();
    assert_eq!(nonces.len(), 50, "no nonce repeats");
    // A second key gets a different fixed field.
    let k2 = v
        .generate(V0, &spec(KeyType::Aes256, KeyUsage::ENCRYPT, false))
        .unwrap()
        .id;
    let mut s2 = Vec::new();
    v.encrypt(V0, k2, b"", b"", &mut s2).unwrap();
    assert_ne!(&s2[..8], &nonces[0][..8]);
    // Short ciphertexts are rejected, not read out of bounds.
    let mut out = Vec::new();
    fails_unchanged(&mut v, Error::InvalidParameter, |v| {
        v.decrypt(V0, k, b"", &[0; 27], &mut out)
    });
}

/// The fixed nonce field is the vault's nonce base plus the key id: deterministic,
/// different for every key of a vault (also for two keys with the same material),
/// and neither creating nor using an AES key draws from the DRBG.
#[test]
fn gcm_nonces_are_per_key_and_draw_no_randomness() {
    let mut v = vault(true);
    let kek = v
        .generate(
            V0,
            &spec(KeyType::Aes256, KeyUsage::WRAP | KeyUsage::UNWRAP, false),
        )
        .unwrap()
        .id;
    let mut wrapped = Vec::new();
    crate::key::kw_wrap(&v.keys_material_for_test(kek), &[7; 32], &mut wrapped).unwrap();
    // From here on every draw from the DRBG fails: the platform fails and a reseed
    // is due.
    v.platform_mut().fail = true;
    let mut one = [0u8; 1];
    while v.fill_random(&mut one).is_ok() {}
    let s = spec(
        KeyType::Aes256,
        KeyUsage::ENCRYPT | KeyUsage::DECRYPT | KeyUsage::DERIVE,
        false,
    );
    let a = v.import(V0, &s, &[7; 32]).unwrap().id;
    let b = v.import(V0, &s, &[7; 32]).unwrap().id;
    let c = v.unwrap_key(V0, kek, &s, &wrapped).unwrap().id;
    let d = v.derive(V0, a, &s, b"", b"d").unwrap().id;
    let base = v.nonce_base();
    let mut seen = Vec::new();
    for k in [a, b, c, d] {
        for i in 0u32..3 {
            let mut sealed = Vec::new();
            v.encrypt(V0, k, b"", b"p", &mut sealed).unwrap();
            let fixed = base.wrapping_add(u64::from(k)).to_be_bytes();
            assert_eq!(&sealed[..8], &fixed, "key {k}");
            assert_eq!(&sealed[8..12], &i.to_be_bytes());
            seen.push(sealed[..12].to_vec());
        }
    }
    seen.sort();
    seen.dedup();
    assert_eq!(
        seen.len(),
        12,
        "no nonce repeats across keys of one material"
    );
    // a, b and c share their material: each decrypts the others' ciphertexts.
    let mut sealed = Vec::new();
    v.encrypt(V0, a, b"", b"same", &mut sealed).unwrap();
    for k in [b, c] {
        let mut p = Vec::new();
        v.decrypt(V0, k, b"", &sealed, &mut p).unwrap();
        assert_eq!(p, b"same");
    }
    // Another vault (another start) has another base.
    assert_ne!(vault(true).nonce_base(), 0);
    let other = Vault::new(
        TestPlatform {
            counter: 77,
            fail: false,
        },
        VaultPolicy::default(),
    )
    .unwrap();
    assert_ne!(other.nonce_base(), base);
}

#[test]
fn gcm_nonce_layout() {
    use crate::vault::gcm_nonce;
    assert_eq!(
        gcm_nonce(0x0102_0304_0506_0708, 0x10, 0x0A0B_0C0D),
        [1, 2, 3, 4, 5, 6, 7, 0x18, 0x0A, 0x0B, 0x0C, 0x0D]
    );
    // The fixed field wraps around modulo 2^64.
    assert_eq!(gcm_nonce(u64::MAX, 2, 0)[..8], 1u64.to_be_bytes());
}

#[test]
fn gcm_invocation_limit() {
    let mut v = vault(false);
    let k = v
        .generate(V0, &spec(KeyType::Aes256, KeyUsage::ENCRYPT, false))
        .unwrap()
        .id;
    let last = u32::try_from(GCM_INVOCATION_LIMIT - 1).unwrap();
    v.set_gcm_counter(k, last);
    let mut out = Vec::new();
    v.encrypt(V0, k, b"", b"last", &mut out).unwrap();
    assert_eq!(&out[8..12], &last.to_be_bytes());
    let mut out2 = Vec::new();
    fails_unchanged(&mut v, Error::NonceLimitReached, |v| {
        v.encrypt(V0, k, b"", b"more", &mut out2)
    });
    assert!(out2.is_empty());
}

#[test]
fn wrap_unwrap_round_trip_every_type() {
    let mut v = vault(false);
    let kek = v
        .generate(
            V0,
            &spec(KeyType::Aes256, KeyUsage::WRAP | KeyUsage::UNWRAP, false),
        )
        .unwrap()
        .id;
    for kt in [
        KeyType::Aes256,
        KeyType::EcdsaP384,
        KeyType::Ed25519,
        KeyType::HmacSha384,
    ] {
        let usage = if kt == KeyType::Aes256 {
            KeyUsage::ENCRYPT | KeyUsage::DECRYPT
        } else {
            KeyUsage::SIGN | KeyUsage::VERIFY
        };
        let k = v.generate(V0, &spec(kt, usage, true)).unwrap().id;
        let mut wrapped = Vec::new();
        v.wrap_key(V0, kek, k, &mut wrapped).unwrap();
        assert_eq!(wrapped.len(), kt.material_len().div_ceil(8) * 8 + 8);
        let copy = v
            .unwrap_key(V0, kek, &spec(kt, usage, false), &wrapped)
            .unwrap();
        assert_eq!(copy.origin, Origin::Unwrapped);
        assert!(!copy.exportable);
        // The copy behaves like the original.
        let mut a = Vec::new();
        if kt == KeyType::Aes256 {
            v.encrypt(V0, k, b"", b"hello", &mut a).unwrap();
            let mut p = Vec::new();
            v.decrypt(V0, copy.id, b"", &a, &mut p).unwrap();
            assert_eq!(p, b"hello");
        } else {
            v.sign(V0, k, b"hello", &mut a).unwrap();
            v.verify(V0, copy.id, b"hello", &a).unwrap();
        }
        // Unwrapping with the wrong type is a material error; tampering an integrity one.
        let other = if kt.material_len() == 32 {
            KeyType::HmacSha384
        } else {
            KeyType::Aes256
        };
        let ou = other.allowed_usage() & (KeyUsage::SIGN | KeyUsage::ENCRYPT);
        fails_unchanged(&mut v, Error::InvalidKeyMaterial, |v| {
            v.unwrap_key(V0, kek, &spec(other, ou, false), &wrapped)
        });
        wrapped[3] ^= 0x80;
        fails_unchanged(&mut v, Error::AuthenticationFailed, |v| {
            v.unwrap_key(V0, kek, &spec(kt, usage, false), &wrapped)
        });
    }
    // Only AES keys wrap.
    let ed = v
        .generate(V0, &spec(KeyType::Ed25519, KeyUsage::SIGN, true))
        .unwrap()
        .id;
    let mut out = Vec::new();
    fails_unchanged(&mut v, Error::UsageNotPermitted, |v| {
        v.wrap_key(V0, ed, ed, &mut out)
    });
}

/// Non-exportable means never: every path that could move material out is refused.
#[test]
fn non_exportable_never_leaves() {
    let mut v = vault(true);
    let kek = v
        .generate(
            V0,
            &spec(KeyType::Aes256, KeyUsage::WRAP | KeyUsage::UNWRAP, true),
        )
        .unwrap()
        .id;
    let secret = v
        .generate(V0, &spec(KeyType::Aes256, aes_all(), false))
        .unwrap()
        .id;
    let hsecret = v
        .generate(
            V0,
            &spec(
                KeyType::HmacSha384,
                KeyUsage::DERIVE | KeyUsage::SIGN,
                false,
            ),
        )
        .unwrap()
        .id;
    let mut out = Vec::new();
    // Not wrapped under another key, nor under itself.
    fails_unchanged(&mut v, Error::NotExportable, |v| {
        v.wrap_key(V0, kek, secret, &mut out)
    });
    fails_unchanged(&mut v, Error::NotExportable, |v| {
        v.wrap_key(V0, secret, secret, &mut out)
    });
    fails_unchanged(&mut v, Error::NotExportable, |v| {
        v.wrap_key(V0, kek, hsecret, &mut out)
    });
    // Not by deriving an exportable child (of any type) ...
    for kt in [
        KeyType::Aes256,
        KeyType::HmacSha384,
        KeyType::Ed25519,
        KeyType::EcdsaP384,
    ] {
        let usage = kt.allowed_usage();
        for parent in [secret, hsecret] {
            fails_unchanged(&mut v, Error::NotExportable, |v| {
                v.derive(V0, parent, &spec(kt, usage, true), b"s", b"i")
            });
        }
    }
    // ... and a non-exportable child is itself unwrappable-out.
    let child = v
        .derive(
            V0,
            secret,
            &spec(KeyType::Aes256, aes_all(), false),
            b"",
            b"c",
        )
        .unwrap();
    assert!(!child.exportable);
    fails_unchanged(&mut v, Error::NotExportable, |v| {
        v.wrap_key(V0, kek, child.id, &mut out)
    });
    // A derived child used as a wrapping key still cannot export its non-exportable parent.
    fails_unchanged(&mut v, Error::NotExportable, |v| {
        v.wrap_key(V0, child.id, secret, &mut out)
    });
    assert!(out.is_empty());
    // Exportable keys do leave, and only wrapped.
    let ok = v
        .generate(V0, &spec(KeyType::Aes256, KeyUsage::ENCRYPT, true))
        .unwrap()
        .id;
    v.wrap_key(V0, kek, ok, &mut out).unwrap();
    assert_eq!(out.len(), 40);
}

#[test]
fn derive_rules_and_reference() {
    let mut v = vault(true);
    let ikm = [0x42u8; 32];
    let parent_spec = KeySpec::new(
        KeyType::Aes256,
        KeyUsage::DERIVE,
        VmplSet::VMPL0 | VmplSet::VMPL1,
        true,
    );
    let parent = v.import(V0, &parent_spec, &ikm).unwrap().id;
    let kek = v
        .generate(V0, &spec(KeyType::Aes256, KeyUsage::WRAP, false))
        .unwrap()
        .id;
    // Derived keys may not widen access beyond the parent's VMPLs.
    let wide = KeySpec::new(
        KeyType::Aes256,
        KeyUsage::ENCRYPT,
        VmplSet::VMPL0 | VmplSet::VMPL2,
        true,
    );
    fails_unchanged(&mut v, Error::PolicyDenied, |v| {
        v.derive(V0, parent, &wide, b"", b"")
    });
    // Deterministic and matches HKDF-SHA-384 with the documented info layout.
    for kt in [KeyType::Aes256, KeyType::HmacSha384] {
        let usage = kt.allowed_usage() & (KeyUsage::ENCRYPT | KeyUsage::SIGN);
        let a = v
            .derive(V0, parent, &spec(kt, usage, true), b"salt", b"info")
            .unwrap();
        let b = v
            .derive(V0, parent, &spec(kt, usage, true), b"salt", b"info")
            .unwrap();
        assert_eq!(a.origin, Origin::Derived);
        let (mut wa, mut wb) = (Vec::new(), Vec::new());
        v.wrap_key(V0, kek, a.id, &mut wa).unwrap();
        v.wrap_key(V0, kek, b.id, &mut wb).unwrap();
        assert_eq!(wa, wb);
        let mut expected = vec![0u8; kt.material_len()];
        let mut info = DERIVE_INFO_PREFIX.to_vec();
        info.extend_from_slice(&kt.raw().to_le_bytes());
        info.extend_from_slice(b"info");
        hkdf::Hkdf::<Sha384>::new(Some(b"salt"), &ikm)
            .expand(&info, &mut expected)
            .unwrap();
        let mut wrapped_expected = Vec::new();
        let kek_bytes = v.keys_material_for_test(kek);
        crate::key::kw_wrap(&kek_bytes, &expected, &mut wrapped_expected).unwrap();
        assert_eq!(wa, wrapped_expected);
    }
    // Asymmetric keys cannot be parents.
    let ed = v
        .generate(V0, &spec(KeyType::Ed25519, KeyUsage::SIGN, true))
        .unwrap()
        .id;
    fails_unchanged(&mut v, Error::UsageNotPermitted, |v| {
        v.derive(
            V0,
            ed,
            &spec(KeyType::Aes256, KeyUsage::ENCRYPT, false),
            b"",
            b"",
        )
    });
    // Derived signing keys work.
    let hparent = v
        .generate(V0, &spec(KeyType::HmacSha384, KeyUsage::DERIVE, false))
        .unwrap()
        .id;
    let dk = v
        .derive(
            V0,
            hparent,
            &spec(KeyType::EcdsaP384, KeyUsage::SIGN | KeyUsage::VERIFY, false),
            b"",
            b"ec",
        )
        .unwrap();
    let mut sig = Vec::new();
    v.sign(V0, dk.id, b"m", &mut sig).unwrap();
    v.verify(V0, dk.id, b"m", &sig).unwrap();
}

#[test]
fn delete_and_random() {
    let mut v = vault(false);
    let k = v
        .generate(V0, &spec(KeyType::Aes256, KeyUsage::ENCRYPT, false))
        .unwrap()
        .id;
    v.delete(V0, k).unwrap();
    assert!(v.is_empty());
    fails_unchanged(&mut v, Error::KeyNotFound, |v| v.delete(V0, k));
    let mut out = Vec::new();
    assert_eq!(
        v.encrypt(V0, k, b"", b"", &mut out).unwrap_err(),
        Error::KeyNotFound
    );
    v.random(MAX_RANDOM_LEN, &mut out).unwrap();
    assert_eq!(out.len(), MAX_RANDOM_LEN);
    let mut again = Vec::new();
    v.random(MAX_RANDOM_LEN, &mut again).unwrap();
    assert_ne!(out, again);
    let mut none = Vec::new();
    assert_eq!(
        v.random(MAX_RANDOM_LEN + 1, &mut none).unwrap_err(),
        Error::InvalidParameter
    );
    assert!(none.is_empty());
}

#[test]
fn debug_output_has_no_key_bytes() {
    let mut v = vault(true);
    v.import(
        V0,
        &spec(KeyType::HmacSha384, KeyUsage::SIGN, false),
        &[0xAB; 48],
    )
    .unwrap();
    let s = alloc::format!("{v:?}");
    assert!(s.contains("[REDACTED]"), "{s}");
    assert!(
        !s.to_lowercase().contains("ab, ab") && !s.contains("171"),
        "{s}"
    );
}

#[test]
fn key_info_wire_form() {
    let info = KeyInfo {
        id: 7,
        key_type: KeyType::Ed25519,
        usage: KeyUsage::SIGN,
        allowed: VmplSet::VMPL1,
        exportable: true,
        persistent: false,
        restored: false,
        origin: Origin::Derived,
        label: Label::new(b"abc").unwrap(),
    };
    let w = info.to_wire();
    assert_eq!(w.key_id.get(), 7);
    assert_eq!(w.key_type.get(), 3);
    assert_eq!(w.origin, 4);
    assert_eq!(w.allowed_vmpls, 2);
    assert_eq!(w.usage.get(), 4);
    assert_eq!(w.exportable, 1);
    assert_eq!(w.label(), b"abc");
    // The flags byte: bit 1 persistent, bit 2 restored.
    let flags = KeyInfo {
        persistent: true,
        restored: true,
        exportable: false,
        ..info
    };
    assert_eq!(flags.to_wire().exportable, 0b110);
}

#[test]
fn errors_map_to_distinct_statuses() {
    let all = [
        Error::InvalidParameter,
        Error::KeyNotFound,
        Error::UsageNotPermitted,
        Error::NotExportable,
        Error::PolicyDenied,
        Error::CapacityExceeded,
        Error::WrongKeyType,
        Error::InvalidKeyMaterial,
        Error::SignatureInvalid,
        Error::AuthenticationFailed,
        Error::NonceLimitReached,
        Error::Entropy,
        Error::TooLarge,
        Error::AttestationUnavailable,
        Error::SealingUnavailable,
        Error::SealedBlobInvalid,
        Error::SealRuleDenied,
        Error::VaultNotEmpty,
        Error::StateRollback,
    ];
    let mut statuses: Vec<u16> = all.iter().map(|e| e.status().raw()).collect();
    assert!(!statuses.contains(&0));
    statuses.sort_unstable();
    statuses.dedup();
    assert_eq!(statuses.len(), all.len());
}

/// An entropy failure reaches the guest as a typed status, through the dispatcher.
#[test]
fn entropy_failure_on_the_wire() {
    let mut v = vault(false);
    v.platform_mut().fail = true;
    let mut req = [0u8; 64];
    let n = Request::Random { len: 16 }.encode(5, &mut req).unwrap();
    let mut last = Status::Ok;
    for _ in 0..=crate::drbg::RESEED_INTERVAL {
        let resp = v.handle(V0, &req[..n]);
        last = Response::decode(&resp).unwrap().status().unwrap();
        if last != Status::Ok {
            break;
        }
    }
    assert_eq!(last, Status::EntropyFailure);
}

/// An attester that records what it was asked and returns a recognisable report.
#[derive(Default)]
struct FakeAttester {
    asked: Vec<([u8; 64], bool)>,
    fail: Option<AttestError>,
    cert_len: usize,
}

impl Attester for FakeAttester {
    fn report(
        &mut self,
        report_data: &[u8; 64],
        certificates: bool,
    ) -> Result<Evidence, AttestError> {
        self.asked.push((*report_data, certificates));
        if let Some(e) = self.fail {
            return Err(e);
        }
        let mut report = vec![0xEEu8; REPORT_SIZE];
        report[0x50..0x90].copy_from_slice(report_data);
        let certificates = if certificates {
            vec![0xCC; self.cert_len]
        } else {
            Vec::new()
        };
        Ok(Evidence {
            report,
            certificates,
        })
    }
}

fn attest_request(key: u32, nonce: &[u8; NONCE_SIZE]) -> Vec<u8> {
    let mut buf = vec![0u8; 1024];
    let n = Request::AttestKey { key, nonce }
        .encode(9, &mut buf)
        .unwrap();
    buf.truncate(n);
    buf
}

/// An AttestKey request whose nonce field holds `nonce`, whatever its length.
fn attest_request_raw(key: u32, nonce: &[u8]) -> Vec<u8> {
    let mut req = attest_request(key, &[0; NONCE_SIZE]);
    req.truncate(nitride_protocol::vhsm::HEADER_SIZE);
    let body_len = (8 + nonce.len()) as u32;
    req[16..20].copy_from_slice(&body_len.to_le_bytes());
    req.extend_from_slice(&key.to_le_bytes());
    req.extend_from_slice(&(nonce.len() as u32).to_le_bytes());
    req.extend_from_slice(nonce);
    req
}

const N: [u8; NONCE_SIZE] = [0x4E; NONCE_SIZE];

fn attest_status(resp: &[u8]) -> Status {
    Response::decode(resp).unwrap().status().unwrap()
}

#[test]
fn identity_key_is_p384_and_stable() {
    let v = vault(false);
    let id = v.identity_public_key().to_vec();
    let vk = p384::ecdsa::VerifyingKey::from_public_key_der(&id).unwrap();
    assert_eq!(vk.to_encoded_point(false).len(), 97);
    assert_eq!(v.identity_public_key(), &id[..]);
    // Two vaults (different entropy) have different identities.
    let other = Vault::new(
        TestPlatform {
            counter: 1000,
            fail: false,
        },
        VaultPolicy::default(),
    )
    .unwrap();
    assert_ne!(other.identity_public_key(), &id[..]);
    // The identity key is not in the key table.
    assert!(v.is_empty());
    assert_eq!(v.list(V0).count(), 0);
}

#[test]
fn attest_key_binds_key_nonce_and_attributes() {
    let mut v = vault(false);
    let ec = v
        .generate(
            V0,
            &spec(KeyType::EcdsaP384, KeyUsage::SIGN | KeyUsage::ATTEST, false),
        )
        .unwrap();
    let mut att = FakeAttester {
        cert_len: 0x600,
        ..FakeAttester::default()
    };
    let nonce = [0x5Au8; 64];
    let resp = v.handle_with(v1(), &attest_request(ec.id, &nonce), &mut att);
    let r = Response::decode(&resp).unwrap();
    assert_eq!(r.status(), Some(Status::Ok));
    let ev = r.attest_key().unwrap();
    let binding = KeyBinding::parse(ev.binding).unwrap();
    assert_eq!(binding.attributes, ec.to_wire());
    assert_eq!(*binding.nonce, nonce);
    let mut spki = Vec::new();
    v.public_key(v1(), ec.id, &mut spki).unwrap();
    assert_eq!(binding.spki, &spki[..]);
    // REPORT_DATA = SHA-512(binding), asked with certificates.
    let rd: [u8; 64] = Sha512::digest(ev.binding).into();
    assert_eq!(att.asked, [(rd, true)]);
    assert_eq!(ev.report.len(), REPORT_SIZE);
    assert_eq!(&ev.report[0x50..0x90], &rd[..]);
    assert_eq!(ev.certificates, &[0xCC; 0x600][..]);
    // Recorded in the audit log like any operation.
    let last = v.audit_log().since(0).last().copied().unwrap();
    assert_eq!(last.op.get(), nitride_protocol::vhsm::Op::AttestKey as u16);
    assert_eq!(last.key_id.get(), ec.id);
    assert_eq!(last.status.get(), Status::Ok.raw());

    // A symmetric key: the binding carries an empty SPKI.
    let hmac = v
        .generate(
            V0,
            &spec(
                KeyType::HmacSha384,
                KeyUsage::SIGN | KeyUsage::ATTEST,
                false,
            ),
        )
        .unwrap();
    let resp = v.handle_with(V0, &attest_request(hmac.id, &N), &mut att);
    let r = Response::decode(&resp).unwrap();
    let ev = r.attest_key().unwrap();
    let binding = KeyBinding::parse(ev.binding).unwrap();
    assert_eq!((binding.spki, binding.nonce), (&[][..], &N));
    assert_eq!(binding.attributes.key_id.get(), hmac.id);
    // The nonce is exactly 64 bytes: any other length is refused before the
    // attester is asked.
    let asked = att.asked.len();
    for len in [0, 1, 63] {
        let resp = v.handle_with(V0, &attest_request_raw(hmac.id, &vec![1; len]), &mut att);
        assert_eq!(attest_status(&resp), Status::Malformed, "{len}");
    }
    for len in [65, 256, 4096] {
        let resp = v.handle_with(V0, &attest_request_raw(hmac.id, &vec![1; len]), &mut att);
        assert_eq!(attest_status(&resp), Status::TooLarge, "{len}");
    }
    assert_eq!(att.asked.len(), asked);
}

#[test]
fn attest_key_checks_and_failures() {
    let mut v = vault(false);
    let plain = v
        .generate(V0, &spec(KeyType::Ed25519, KeyUsage::SIGN, false))
        .unwrap();
    let only_v0 = v
        .generate(
            V0,
            &KeySpec::new(KeyType::Ed25519, KeyUsage::ATTEST, VmplSet::VMPL0, false),
        )
        .unwrap();
    let good = v
        .generate(
            V0,
            &spec(KeyType::Aes256, KeyUsage::ENCRYPT | KeyUsage::ATTEST, false),
        )
        .unwrap();
    let mut att = FakeAttester::default();
    let cases = [
        (V0, 999, Status::KeyNotFound),
        (v1(), only_v0.id, Status::KeyNotFound),
        (V0, plain.id, Status::UsageNotPermitted),
    ];
    for (caller, key, status) in cases {
        let resp = v.handle_with(caller, &attest_request(key, &N), &mut att);
        assert_eq!(attest_status(&resp), status, "key {key}");
        assert!(Response::decode(&resp).unwrap().body.is_empty());
    }
    assert!(
        att.asked.is_empty(),
        "refused before the attester was asked"
    );
    // Without a platform attester (Vault::handle) or when it fails.
    let resp = v.handle(v1(), &attest_request(good.id, &N));
    assert_eq!(attest_status(&resp), Status::AttestationUnavailable);
    for e in [
        AttestError::Busy,
        AttestError::Disabled,
        AttestError::Failed,
    ] {
        att.fail = Some(e);
        let resp = v.handle_with(v1(), &attest_request(good.id, &N), &mut att);
        assert_eq!(attest_status(&resp), Status::AttestationUnavailable);
    }
    att.fail = None;
    let mut out = Vec::new();
    assert!(v.attest_key(V0, good.id, &N, &mut att, &mut out).is_ok());
    // Certificates that would overflow the response: TooLarge, nothing appended.
    att.cert_len = MAX_RESPONSE_SIZE;
    let mut out = Vec::new();
    assert_eq!(
        v.attest_key(V0, good.id, &N, &mut att, &mut out),
        Err(Error::TooLarge)
    );
    assert!(out.is_empty());
    let resp = v.handle_with(V0, &attest_request(good.id, &N), &mut att);
    assert_eq!(attest_status(&resp), Status::TooLarge);
}

#[test]
fn manifest_lists_exactly_the_attestable_keys() {
    let mut v = vault(false);
    let empty = v.manifest();
    let m = VhsmManifest::parse(&empty).unwrap();
    assert_eq!(m.header.key_count.get(), 0);
    assert_eq!(m.header.manifest_version.get(), 3);
    assert_eq!(
        m.header.launch_config,
        nitride_protocol::launch_config::LaunchConfig::DEFAULT.digest(),
        "the manifest reports the launch configuration's digest"
    );
    assert_eq!(
        m.header.protocol_version.get(),
        nitride_protocol::svsm::VHSM_PROTOCOL_VERSION
    );
    assert_eq!(m.header.wire_version.get(), nitride_protocol::vhsm::VERSION);
    assert_eq!(m.identity, v.identity_public_key());

    let a = v
        .generate(
            V0,
            &spec(KeyType::EcdsaP384, KeyUsage::SIGN | KeyUsage::ATTEST, false),
        )
        .unwrap();
    let _not = v
        .generate(V0, &spec(KeyType::EcdsaP384, KeyUsage::SIGN, false))
        .unwrap();
    let b = v
        .generate(
            V0,
            &spec(KeyType::Aes256, KeyUsage::ATTEST | KeyUsage::ENCRYPT, true),
        )
        .unwrap();
    let c = v
        .generate(
            V0,
            &KeySpec::new(KeyType::Ed25519, KeyUsage::ATTEST, VmplSet::VMPL0, false),
        )
        .unwrap();
    let bytes = v.manifest();
    let m = VhsmManifest::parse(&bytes).unwrap();
    let keys: Vec<_> = m.keys().map(|k| (k.attributes, k.spki.to_vec())).collect();
    let spki_of = |id| {
        let mut out = Vec::new();
        v.public_key(V0, id, &mut out).unwrap();
        out
    };
    assert_eq!(
        keys,
        [
            (a.to_wire(), spki_of(a.id)),
            (b.to_wire(), Vec::new()),
            (c.to_wire(), spki_of(c.id)),
        ]
    );
    // Deleted keys disappear.
    v.delete(V0, a.id).unwrap();
    let bytes = v.manifest();
    let m = VhsmManifest::parse(&bytes).unwrap();
    let ids: Vec<u32> = m.keys().map(|k| k.attributes.key_id.get()).collect();
    assert_eq!(ids, [b.id, c.id]);
}

/// The manifest reports the vault policy (fixed by the SVSM's unmeasured command
/// line) and the audit log's entry count and chain, so that evidence shows both.
#[test]
fn manifest_reports_policy_and_audit_log() {
    let random = {
        let mut buf = [0u8; 64];
        let n = Request::Random { len: 8 }.encode(1, &mut buf).unwrap();
        buf[..n].to_vec()
    };
    for (allow, flags) in [(false, 0u32), (true, 1)] {
        let mut v = vault(allow);
        let bytes = v.manifest();
        let m = VhsmManifest::parse(&bytes).unwrap();
        assert_eq!(m.header.policy_flags.get(), flags);
        assert_eq!(
            m.header.policy_flags.get(),
            v.policy().flags().bits(),
            "the flags are the policy's"
        );
        assert_eq!(m.header.state_generation.get(), 0);
        assert_eq!(m.header.audit_count.get(), 0);
        assert_eq!(m.header.audit_chain, [0; 48]);
        // Two "attestations" with requests in between: the count says how many, and
        // the chain value is that of the last entry.
        for _ in 0..3 {
            v.handle(v1(), &random);
        }
        let first = VhsmManifest::parse(&v.manifest()).unwrap().header;
        assert_eq!(first.audit_count.get(), 3);
        let third = v.audit_log().since(3).next().copied().unwrap();
        assert_eq!(first.audit_chain, third.chain);
        // A flood that overwrites the whole ring cannot hide: the count grows by
        // every entry and the chain keeps moving.
        for _ in 0..2 * nitride_protocol::vhsm::AUDIT_CAPACITY {
            v.handle(Caller::new(3).unwrap(), &random);
        }
        let second = VhsmManifest::parse(&v.manifest()).unwrap().header;
        assert_eq!(
            second.audit_count.get() - first.audit_count.get(),
            2 * nitride_protocol::vhsm::AUDIT_CAPACITY as u64
        );
        assert_eq!(&second.audit_chain, v.audit_log().head());
        assert_ne!(second.audit_chain, first.audit_chain);
        assert_eq!(
            v.audit_log().since(0).next().unwrap().seq.get(),
            3 + 256 + 1
        );
    }
}

#[test]
fn manifest_of_a_full_vault_stays_small() {
    let mut v = vault(false);
    for _ in 0..KEY_CAPACITY {
        v.generate(V0, &spec(KeyType::Ed25519, KeyUsage::ATTEST, false))
            .unwrap();
    }
    let bytes = v.manifest();
    assert_eq!(
        VhsmManifest::parse(&bytes).unwrap().keys().count(),
        KEY_CAPACITY
    );
    assert!(
        bytes.len() < 96 + 120 + KEY_CAPACITY * (52 + 120),
        "{}",
        bytes.len()
    );
}
