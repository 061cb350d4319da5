//! Each vault operation through the dispatcher (`Vault::handle` on a pre-encoded
//! request, response encoding included) beside the same operation on the raw crypto
//! crate. `docs/benchmarks.md` records the ratios and the OpenSSL comparison;
//! `benches/report.py` prints the table from criterion's output.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::Duration;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit};
use common::{template, Client};
use criterion::{criterion_group, criterion_main, Criterion};
use hmac::Mac;
use nitride_protocol::vhsm::{KeyType, KeyUsage, Request, Response, Status};
use p384::ecdsa::signature::{Signer, Verifier};

const MSG: &[u8] = b"a 64-byte message to sign: an attestation report digest, say....";

/// Benchmark `request` through the dispatcher as `name/dispatch`; it must succeed.
fn dispatch(c: &mut Criterion, client: &mut Client, name: &str, request: Request<'_>) {
    let mut bytes = vec![0u8; 40 * 1024];
    let n = request.encode(1, &mut bytes).unwrap();
    bytes.truncate(n);
    let resp = client.vault.handle(client.caller, &bytes);
    assert_eq!(
        Response::decode(&resp).unwrap().status(),
        Some(Status::Ok),
        "{name}"
    );
    let caller = client.caller;
    c.benchmark_group(name).bench_function("dispatch", |b| {
        b.iter(|| black_box(client.vault.handle(caller, black_box(&bytes))))
    });
}

fn raw(c: &mut Criterion, name: &str, mut f: impl FnMut()) {
    c.benchmark_group(name)
        .bench_function("raw", |b| b.iter(&mut f));
}

fn signatures(c: &mut Criterion) {
    let mut client = Client::new(true);
    let sv = KeyUsage::SIGN | KeyUsage::VERIFY;

    let ec_bytes = [0x11u8; 48];
    let ec = client.import(KeyType::EcdsaP384, sv, false, &ec_bytes);
    let ec_sig = client.ok(Request::Sign {
        key: ec,
        message: MSG,
    });
    dispatch(
        c,
        &mut client,
        "ecdsa_p384_sign",
        Request::Sign {
            key: ec,
            message: MSG,
        },
    );
    let sk = p384::ecdsa::SigningKey::from_slice(&ec_bytes).unwrap();
    raw(c, "ecdsa_p384_sign", || {
        let sig: p384::ecdsa::Signature = sk.sign(black_box(MSG));
        black_box(sig.to_der());
    });
    dispatch(
        c,
        &mut client,
        "ecdsa_p384_verify",
        Request::Verify {
            key: ec,
            message: MSG,
            signature: &ec_sig,
        },
    );
    let vk = *sk.verifying_key();
    raw(c, "ecdsa_p384_verify", || {
        let sig = p384::ecdsa::Signature::from_der(black_box(&ec_sig)).unwrap();
        vk.verify(black_box(MSG), &sig).unwrap();
    });

    let ed_bytes = [0x22u8; 32];
    let ed = client.import(KeyType::Ed25519, sv, false, &ed_bytes);
    let ed_sig = client.ok(Request::Sign {
        key: ed,
        message: MSG,
    });
    dispatch(
        c,
        &mut client,
        "ed25519_sign",
        Request::Sign {
            key: ed,
            message: MSG,
        },
    );
    let sk = ed25519_dalek::SigningKey::from_bytes(&ed_bytes);
    raw(c, "ed25519_sign", || {
        black_box(sk.sign(black_box(MSG)).to_bytes());
    });
    dispatch(
        c,
        &mut client,
        "ed25519_verify",
        Request::Verify {
            key: ed,
            message: MSG,
            signature: &ed_sig,
        },
    );
    let vk = sk.verifying_key();
    raw(c, "ed25519_verify", || {
        let sig = ed25519_dalek::Signature::from_slice(black_box(&ed_sig)).unwrap();
        vk.verify_strict(black_box(MSG), &sig).unwrap();
    });

    let mac_bytes = [0x33u8; 48];
    let mac = client.import(KeyType::HmacSha384, sv, false, &mac_bytes);
    let kib = vec![0xA5u8; 1024];
    dispatch(
        c,
        &mut client,
        "hmac_sha384_1k",
        Request::Sign {
            key: mac,
            message: &kib,
        },
    );
    raw(c, "hmac_sha384_1k", || {
        let mut m = <hmac::Hmac<sha2::Sha384> as KeyInit>::new_from_slice(&mac_bytes).unwrap();
        m.update(black_box(&kib));
        black_box(m.finalize().into_bytes());
    });
}

fn aead(c: &mut Criterion) {
    let mut client = Client::new(true);
    let key_bytes = [0x44u8; 32];
    let key = client.import(
        KeyType::Aes256,
        KeyUsage::ENCRYPT | KeyUsage::DECRYPT,
        false,
        &key_bytes,
    );
    let cipher = Aes256Gcm::new_from_slice(&key_bytes).unwrap();
    for (label, len) in [("1k", 1024usize), ("16k", 16 * 1024)] {
        let plaintext = vec![0x5Au8; len];
        let sealed = client.ok(Request::Encrypt {
            key,
            aad: b"",
            plaintext: &plaintext,
        });
        dispatch(
            c,
            &mut client,
            &format!("aes256gcm_encrypt_{label}"),
            Request::Encrypt {
                key,
                aad: b"",
                plaintext: &plaintext,
            },
        );
        let mut buf = Vec::with_capacity(len + 28);
        raw(c, &format!("aes256gcm_encrypt_{label}"), || {
            buf.clear();
            buf.extend_from_slice(black_box(&plaintext));
            let tag = cipher
                .encrypt_in_place_detached((&[7u8; 12]).into(), b"", &mut buf)
                .unwrap();
            buf.extend_from_slice(&tag);
        });
        dispatch(
            c,
            &mut client,
            &format!("aes256gcm_decrypt_{label}"),
            Request::Decrypt {
                key,
                aad: b"",
                ciphertext: &sealed,
            },
        );
        let (nonce, rest) = sealed.split_at(12);
        let (ct, tag) = rest.split_at(rest.len() - 16);
        raw(c, &format!("aes256gcm_decrypt_{label}"), || {
            buf.clear();
            buf.extend_from_slice(black_box(ct));
            cipher
                .decrypt_in_place_detached(nonce.into(), b"", &mut buf, tag.into())
                .unwrap();
        });
    }
}

fn management(c: &mut Criterion) {
    let mut client = Client::new(true);
    let kek_bytes = [0x55u8; 32];
    let kek = client.import(KeyType::Aes256, KeyUsage::WRAP, false, &kek_bytes);
    let target_bytes = [0x66u8; 32];
    let target = client.import(KeyType::Aes256, KeyUsage::ENCRYPT, true, &target_bytes);
    dispatch(
        c,
        &mut client,
        "wrap_aes256",
        Request::Wrap {
            wrapping_key: kek,
            key: target,
        },
    );
    let kw = aes_kw::KekAes256::from(kek_bytes);
    raw(c, "wrap_aes256", || {
        let mut out = [0u8; 40];
        kw.wrap_with_padding(black_box(&target_bytes), &mut out)
            .unwrap();
        black_box(out);
    });
    let ec = client.generate(KeyType::EcdsaP384, KeyUsage::SIGN, false);
    dispatch(
        c,
        &mut client,
        "get_public_key_p384",
        Request::GetPublicKey { key: ec },
    );
    dispatch(c, &mut client, "random_32", Request::Random { len: 32 });
    dispatch(c, &mut client, "list", Request::List);
    dispatch(
        c,
        &mut client,
        "get_attributes",
        Request::GetAttributes { key: ec },
    );

    // Key creation: generate then delete (two requests per iteration).
    let mut generate = vec![0u8; 256];
    let t = template(KeyType::Ed25519, KeyUsage::SIGN, false);
    let n = Request::Generate {
        template: t,
        label: b"",
    }
    .encode(1, &mut generate)
    .unwrap();
    generate.truncate(n);
    let caller = client.caller;
    c.benchmark_group("generate_delete_ed25519")
        .bench_function("dispatch", |b| {
            b.iter(|| {
                let resp = client.vault.handle(caller, &generate);
                let id = Response::decode(&resp)
                    .unwrap()
                    .attributes()
                    .unwrap()
                    .key_id
                    .get();
                let mut del = [0u8; 28];
                Request::Delete { key: id }.encode(2, &mut del).unwrap();
                black_box(client.vault.handle(caller, &del));
            })
        });
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! { name = benches; config = config(); targets = signatures, aead, management }
criterion_main!(benches);
