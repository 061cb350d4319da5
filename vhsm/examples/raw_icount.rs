//! The raw crypto crates doing one vault operation `N` times, for instruction counts
//! under callgrind (`cargo xtask bench` runs it with N = 0 and N = n and takes the
//! difference): the baseline the firmware's per-operation counts are compared with.
//!
//! Usage: `raw_icount OP N`, OP one of hmac_sign64, aes_gcm_encrypt1k,
//! ed25519_sign64, ed25519_verify64, ecdsa_p384_sign64, ecdsa_p384_verify64,
//! ecdsa_p384_sign_report (what the emulated PSP does per report: sign the 0x2A0
//! signed bytes of an attestation report, raw r||s).
#![allow(
    clippy::unwrap_used,
    reason = "a measurement tool: failing loudly is right"
)]

use std::hint::black_box;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use hmac::Mac;
use p384::ecdsa::signature::{Signer, Verifier};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let op = args.get(1).map(String::as_str).unwrap_or("");
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let msg = [0x42u8; 64];
    let kib = [0x17u8; 1024];
    let report = [0x5Au8; 0x2A0];
    let ec = p384::ecdsa::SigningKey::from_slice(&[0x11u8; 48]).unwrap();
    let ec_sig: p384::ecdsa::Signature = ec.sign(&msg);
    let ed = ed25519_dalek::SigningKey::from_bytes(&[0x22u8; 32]);
    let ed_sig = ed.sign(&msg);
    let aes = aes_gcm::Aes256Gcm::new_from_slice(&[0x33u8; 32]).unwrap();
    let nonce = aes_gcm::Nonce::default();
    for _ in 0..n {
        match op {
            "hmac_sign64" => {
                let mut m =
                    <hmac::Hmac<sha2::Sha384> as Mac>::new_from_slice(&[0x44u8; 48]).unwrap();
                m.update(black_box(&msg));
                black_box(m.finalize().into_bytes());
            }
            "aes_gcm_encrypt1k" => {
                let mut buf = kib.to_vec();
                let tag = aes
                    .encrypt_in_place_detached(&nonce, b"", black_box(&mut buf))
                    .unwrap();
                black_box((buf, tag));
            }
            "ed25519_sign64" => {
                black_box(ed.sign(black_box(&msg)));
            }
            "ed25519_verify64" => {
                ed.verifying_key()
                    .verify_strict(black_box(&msg), &ed_sig)
                    .unwrap();
            }
            "ecdsa_p384_sign64" => {
                let s: p384::ecdsa::Signature = ec.sign(black_box(&msg));
                black_box(s.to_der());
            }
            "ecdsa_p384_sign_report" => {
                let s: p384::ecdsa::Signature = ec.sign(black_box(&report));
                black_box(s.split_bytes());
            }
            "ecdsa_p384_verify64" => {
                ec.verifying_key().verify(black_box(&msg), &ec_sig).unwrap();
            }
            other => panic!("unknown op {other}"),
        }
    }
}
