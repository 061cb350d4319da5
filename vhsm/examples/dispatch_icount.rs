//! The vault's dispatcher (`Vault::handle` on a pre-encoded request: decode, checks,
//! the operation, the audit entry with its chain link, the response) doing one
//! operation `N` times, for instruction counts under callgrind: run with N = 0 and N =
//! n and take the difference. Beside `raw_icount` (the raw crates) and the firmware's
//! round trips (`cargo xtask bench`), it splits a firmware figure into the raw crypto,
//! the vault's own work, and the rest of the calling path (guest, world switch, the
//! SVSM's copies). `docs/benchmarks.md` has the commands and figures.
//!
//! Usage: `dispatch_icount OP N`, OP one of get_attributes, hmac_sign64,
//! aes_gcm_encrypt1k, ed25519_sign64, ed25519_verify64, ecdsa_p384_sign64,
//! ecdsa_p384_verify64 (the keys and messages `raw_icount` uses).
#![allow(
    clippy::unwrap_used,
    reason = "a measurement tool: failing loudly is right"
)]

use std::hint::black_box;

use nitride_protocol::vhsm::{KeyTemplate, KeyType, KeyUsage, Request, Response, Status, VmplSet};
use nitride_vhsm::{Caller, Platform, PlatformError, Vault, VaultPolicy};

/// Deterministic entropy, so that every run does the same work.
struct Counter(u64);

impl Platform for Counter {
    fn entropy(&mut self, out: &mut [u8]) -> Result<(), PlatformError> {
        for b in out {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            *b = (self.0 >> 56) as u8;
        }
        Ok(())
    }
}

fn call(v: &mut Vault<Counter>, req: &Request<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 4096];
    let n = req.encode(1, &mut buf).unwrap();
    let resp = v.handle(Caller::new(1).unwrap(), &buf[..n]);
    let r = Response::decode(&resp).unwrap();
    assert_eq!(r.status(), Some(Status::Ok), "{:?}", req.op());
    r.body.to_vec()
}

fn import(v: &mut Vault<Counter>, kt: KeyType, usage: KeyUsage, material: &[u8]) -> u32 {
    let body = call(
        v,
        &Request::Import {
            template: KeyTemplate::new(kt, usage, VmplSet::VMPL1, false),
            label: b"",
            material,
        },
    );
    Response {
        header: Default::default(),
        body: &body,
    }
    .attributes()
    .unwrap()
    .key_id
    .get()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let op = args.get(1).map(String::as_str).unwrap_or("");
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut v = Vault::new(
        Counter(1),
        VaultPolicy {
            allow_plaintext_import: true,
            ..VaultPolicy::default()
        },
    )
    .unwrap();
    let msg = [0x42u8; 64];
    let kib = [0x17u8; 1024];
    let sv = KeyUsage::SIGN | KeyUsage::VERIFY;
    let ec = import(&mut v, KeyType::EcdsaP384, sv, &[0x11; 48]);
    let ed = import(&mut v, KeyType::Ed25519, sv, &[0x22; 32]);
    let aes = import(&mut v, KeyType::Aes256, KeyUsage::ENCRYPT, &[0x33; 32]);
    let hm = import(&mut v, KeyType::HmacSha384, sv, &[0x44; 48]);
    let ec_sig = call(
        &mut v,
        &Request::Sign {
            key: ec,
            message: &msg,
        },
    );
    let ed_sig = call(
        &mut v,
        &Request::Sign {
            key: ed,
            message: &msg,
        },
    );
    let req = match op {
        "get_attributes" => Request::GetAttributes { key: aes },
        "hmac_sign64" => Request::Sign {
            key: hm,
            message: &msg,
        },
        "aes_gcm_encrypt1k" => Request::Encrypt {
            key: aes,
            aad: b"",
            plaintext: &kib,
        },
        "ed25519_sign64" => Request::Sign {
            key: ed,
            message: &msg,
        },
        "ed25519_verify64" => Request::Verify {
            key: ed,
            message: &msg,
            signature: &ed_sig,
        },
        "ecdsa_p384_sign64" => Request::Sign {
            key: ec,
            message: &msg,
        },
        "ecdsa_p384_verify64" => Request::Verify {
            key: ec,
            message: &msg,
            signature: &ec_sig,
        },
        other => panic!("unknown op {other}"),
    };
    let mut buf = vec![0u8; 4096];
    let len = req.encode(1, &mut buf).unwrap();
    let caller = Caller::new(1).unwrap();
    for _ in 0..n {
        black_box(v.handle(caller, black_box(&buf[..len])));
    }
}
