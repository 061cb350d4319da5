//! Each vault operation through the dispatcher (`Vault::handle` on a pre-encoded
//! request, response encoding included) beside the same operation on the raw crypto
//! crate.
//!
//! Two measurements of the same cases:
//! 1. criterion, one benchmark per (operation, dispatch|raw) (`target/criterion`,
//!    summarised by `benches/report.py`);
//! 2. a paired run printed at the end: dispatch and raw timed alternately in short
//!    rounds, so that load from other processes on a shared machine hits both sides
//!    alike; the overhead is the median of the per-round ratios.
//!
//! `docs/benchmarks.md` records the results and the OpenSSL comparison.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit};
use common::{template, Client};
use criterion::Criterion;
use hmac::Mac;
use nitride_protocol::vhsm::{KeyType, KeyUsage, Request, Response, Status};
use p384::ecdsa::signature::{Signer, Verifier};

const MSG: &[u8] = b"a 64-byte message to sign: an attestation report digest, say....";

/// One operation: its encoded request, and the same work on the raw crate if any.
struct Case {
    name: String,
    request: Vec<u8>,
    raw: Option<Box<dyn FnMut()>>,
}

fn case(
    client: &mut Client,
    name: &str,
    request: Request<'_>,
    raw: Option<Box<dyn FnMut()>>,
) -> Case {
    let mut bytes = vec![0u8; 40 * 1024];
    let n = request.encode(1, &mut bytes).unwrap();
    bytes.truncate(n);
    let resp = client.vault.handle(client.caller, &bytes);
    assert_eq!(
        Response::decode(&resp).unwrap().status(),
        Some(Status::Ok),
        "{name}"
    );
    Case {
        name: name.to_owned(),
        request: bytes,
        raw,
    }
}

fn cases(client: &mut Client) -> Vec<Case> {
    let mut out = Vec::new();
    let sv = KeyUsage::SIGN | KeyUsage::VERIFY;

    let ec_bytes = [0x11u8; 48];
    let ec = client.import(KeyType::EcdsaP384, sv, false, &ec_bytes);
    let ec_sig = client.ok(Request::Sign {
        key: ec,
        message: MSG,
    });
    let sk = p384::ecdsa::SigningKey::from_slice(&ec_bytes).unwrap();
    let vk = *sk.verifying_key();
    let raw: Box<dyn FnMut()> = Box::new(move || {
        let sig: p384::ecdsa::Signature = sk.sign(black_box(MSG));
        black_box(sig.to_der());
    });
    out.push(case(
        client,
        "ecdsa_p384_sign",
        Request::Sign {
            key: ec,
            message: MSG,
        },
        Some(raw),
    ));
    let sig = ec_sig.clone();
    let raw: Box<dyn FnMut()> = Box::new(move || {
        let sig = p384::ecdsa::Signature::from_der(black_box(&sig)).unwrap();
        vk.verify(black_box(MSG), &sig).unwrap();
    });
    let req = Request::Verify {
        key: ec,
        message: MSG,
        signature: &ec_sig,
    };
    out.push(case(client, "ecdsa_p384_verify", req, Some(raw)));

    let ed_bytes = [0x22u8; 32];
    let ed = client.import(KeyType::Ed25519, sv, false, &ed_bytes);
    let ed_sig = client.ok(Request::Sign {
        key: ed,
        message: MSG,
    });
    let sk = ed25519_dalek::SigningKey::from_bytes(&ed_bytes);
    let vk = sk.verifying_key();
    let raw: Box<dyn FnMut()> = Box::new(move || {
        black_box(sk.sign(black_box(MSG)).to_bytes());
    });
    out.push(case(
        client,
        "ed25519_sign",
        Request::Sign {
            key: ed,
            message: MSG,
        },
        Some(raw),
    ));
    let sig = ed_sig.clone();
    let raw: Box<dyn FnMut()> = Box::new(move || {
        let sig = ed25519_dalek::Signature::from_slice(black_box(&sig)).unwrap();
        vk.verify_strict(black_box(MSG), &sig).unwrap();
    });
    let req = Request::Verify {
        key: ed,
        message: MSG,
        signature: &ed_sig,
    };
    out.push(case(client, "ed25519_verify", req, Some(raw)));

    let mac_bytes = [0x33u8; 48];
    let mac = client.import(KeyType::HmacSha384, sv, false, &mac_bytes);
    let kib = vec![0xA5u8; 1024];
    let data = kib.clone();
    let raw: Box<dyn FnMut()> = Box::new(move || {
        let mut m = <hmac::Hmac<sha2::Sha384> as KeyInit>::new_from_slice(&mac_bytes).unwrap();
        m.update(black_box(&data));
        black_box(m.finalize().into_bytes());
    });
    out.push(case(
        client,
        "hmac_sha384_sign_1k",
        Request::Sign {
            key: mac,
            message: &kib,
        },
        Some(raw),
    ));

    let key_bytes = [0x44u8; 32];
    let key = client.import(
        KeyType::Aes256,
        KeyUsage::ENCRYPT | KeyUsage::DECRYPT,
        false,
        &key_bytes,
    );
    for (label, len) in [("1k", 1024usize), ("16k", 16 * 1024)] {
        let plaintext = vec![0x5Au8; len];
        let sealed = client.ok(Request::Encrypt {
            key,
            aad: b"",
            plaintext: &plaintext,
        });
        // The vault expands each AES key once, when the key enters it; so does the
        // raw side.
        let cipher = Aes256Gcm::new_from_slice(&key_bytes).unwrap();
        let (pt, mut buf) = (plaintext.clone(), Vec::with_capacity(len + 28));
        let raw: Box<dyn FnMut()> = Box::new(move || {
            buf.clear();
            buf.extend_from_slice(black_box(&pt));
            let tag = cipher
                .encrypt_in_place_detached((&[7u8; 12]).into(), b"", &mut buf)
                .unwrap();
            buf.extend_from_slice(&tag);
        });
        let req = Request::Encrypt {
            key,
            aad: b"",
            plaintext: &plaintext,
        };
        out.push(case(
            client,
            &format!("aes256gcm_encrypt_{label}"),
            req,
            Some(raw),
        ));
        let cipher = Aes256Gcm::new_from_slice(&key_bytes).unwrap();
        let (s, mut buf) = (sealed.clone(), Vec::with_capacity(len));
        let raw: Box<dyn FnMut()> = Box::new(move || {
            let (nonce, rest) = s.split_at(12);
            let (ct, tag) = rest.split_at(rest.len() - 16);
            buf.clear();
            buf.extend_from_slice(black_box(ct));
            cipher
                .decrypt_in_place_detached(nonce.into(), b"", &mut buf, tag.into())
                .unwrap();
        });
        let req = Request::Decrypt {
            key,
            aad: b"",
            ciphertext: &sealed,
        };
        out.push(case(
            client,
            &format!("aes256gcm_decrypt_{label}"),
            req,
            Some(raw),
        ));
    }

    let kek_bytes = [0x55u8; 32];
    let kek = client.import(KeyType::Aes256, KeyUsage::WRAP, false, &kek_bytes);
    let target_bytes = [0x66u8; 32];
    let target = client.import(KeyType::Aes256, KeyUsage::ENCRYPT, true, &target_bytes);
    let raw: Box<dyn FnMut()> = Box::new(move || {
        let mut out = [0u8; 40];
        aes_kw::KekAes256::from(kek_bytes)
            .wrap_with_padding(black_box(&target_bytes), &mut out)
            .unwrap();
        black_box(out);
    });
    out.push(case(
        client,
        "wrap_aes256",
        Request::Wrap {
            wrapping_key: kek,
            key: target,
        },
        Some(raw),
    ));

    out.push(case(
        client,
        "get_public_key_p384",
        Request::GetPublicKey { key: ec },
        None,
    ));
    out.push(case(client, "random_32", Request::Random { len: 32 }, None));
    out.push(case(client, "list", Request::List, None));
    out.push(case(
        client,
        "get_attributes",
        Request::GetAttributes { key: ec },
        None,
    ));
    out
}

/// Key creation through the dispatcher: generate then delete (two requests).
fn generate_delete(c: &mut Criterion, client: &mut Client) {
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

/// Seconds per call of `f`, timed over `n` calls.
fn per_call(n: u32, f: &mut dyn FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_secs_f64() / f64::from(n)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Dispatch and raw alternately, 31 rounds of ~20 ms per side (criterion filter args
/// do not apply: `cargo bench --bench vault -- none` runs only this).
fn paired(client: &mut Client, cases: &mut [Case]) {
    println!("\npaired run: fastest of 31 alternating rounds per side; overhead = median per-round ratio");
    println!("| Operation | Dispatcher (min) | Raw crate (min) | Overhead |");
    println!("|---|---|---|---|");
    let caller = client.caller;
    for case in cases.iter_mut() {
        let Some(raw) = case.raw.as_mut() else {
            continue;
        };
        let request = case.request.clone();
        let mut dispatch = || {
            black_box(client.vault.handle(caller, black_box(&request)));
        };
        let once = per_call(1, raw).max(1e-8);
        let n = ((0.02 / once) as u32).clamp(1, 1_000_000);
        let (mut d, mut r, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..31 {
            let (td, tr) = if round % 2 == 0 {
                let td = per_call(n, &mut dispatch);
                (td, per_call(n, raw))
            } else {
                let tr = per_call(n, raw);
                (per_call(n, &mut dispatch), tr)
            };
            d.push(td);
            r.push(tr);
            ratio.push(td / tr);
        }
        let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
        let (d, r, ratio) = (min(&d), min(&r), median(&mut ratio));
        println!(
            "| {} | {:.2} µs | {:.2} µs | {:+.1}% |",
            case.name,
            d * 1e6,
            r * 1e6,
            (ratio - 1.0) * 100.0
        );
    }
}

fn main() {
    let mut client = Client::new(true);
    let mut cases = cases(&mut client);
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let caller = client.caller;
    for case in &mut cases {
        let mut group = c.benchmark_group(&case.name);
        let request = &case.request;
        let vault = &mut client.vault;
        group.bench_function("dispatch", |b| {
            b.iter(|| black_box(vault.handle(caller, black_box(request))))
        });
        if let Some(raw) = case.raw.as_mut() {
            group.bench_function("raw", |b| b.iter(&mut *raw));
        }
        group.finish();
    }
    generate_delete(&mut c, &mut client);
    c.final_summary();
    // `cargo bench` passes --bench; `cargo test --benches` does not: skip the long run.
    if std::env::args().any(|a| a == "--bench") {
        paired(&mut client, &mut cases);
    }
}
