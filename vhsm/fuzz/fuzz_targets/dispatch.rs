//! Fuzz the vHSM dispatcher: a vault holding four keys (ids 1-4: exportable AES,
//! Ed25519, exportable HMAC, non-exportable AES; all usable by every VMPL) receives a
//! sequence of requests. P-384 keys are left to the input to generate (id 5 onwards),
//! because a P-384 key costs a scalar multiplication per execution.
//!
//! Input: byte 0 picks the caller's VMPL (bits 0-1) and whether the attester fails
//! (bit 2), then each request is `u16 LE length || bytes`. Every key carries its
//! type's full usage, ATTEST included, so AttestKey runs against a fake attester (a
//! fixed report whose REPORT_DATA must be SHA-512 of the returned binding, and a
//! certificate table). The dispatcher must never panic, every
//! response must be a well-formed message within `MAX_RESPONSE_SIZE`, and a failed
//! request must leave every key's attributes unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nitride_protocol::vhsm::Op;
use nitride_protocol::vhsm::{Response, Status, MAX_RESPONSE_SIZE};
use nitride_vhsm::{
    AttestError, Attester, Caller, Evidence, KeyInfo, KeySpec, KeyType, Platform, PlatformError,
    Vault, VaultPolicy, VmplSet,
};
use sha2::{Digest, Sha512};

/// A PSP stand-in: REPORT_DATA at its report offset, a small certificate table.
struct FakeAttester {
    fail: bool,
}

impl Attester for FakeAttester {
    fn report(
        &mut self,
        report_data: &[u8; 64],
        certificates: bool,
    ) -> Result<Evidence, AttestError> {
        if self.fail {
            return Err(AttestError::Failed);
        }
        let mut report = vec![0u8; 0x4A0];
        report[0x50..0x90].copy_from_slice(report_data);
        let certificates = if certificates {
            vec![0xCC; 0x200]
        } else {
            Vec::new()
        };
        Ok(Evidence {
            report,
            certificates,
        })
    }
}

/// Deterministic "entropy", so that every finding reproduces.
struct Counter(u8);

impl Platform for Counter {
    fn entropy(&mut self, out: &mut [u8]) -> Result<(), PlatformError> {
        for b in out {
            self.0 = self.0.wrapping_mul(31).wrapping_add(7);
            *b = self.0;
        }
        Ok(())
    }
}

fn vault() -> Vault<Counter> {
    let mut v = Vault::new(
        Counter(1),
        VaultPolicy {
            allow_plaintext_import: true,
        },
    )
    .unwrap();
    let all = VmplSet::all();
    for (kt, exportable) in [
        (KeyType::Aes256, true),
        (KeyType::Ed25519, false),
        (KeyType::HmacSha384, true),
        (KeyType::Aes256, false),
    ] {
        v.generate(
            Caller::SVSM,
            &KeySpec::new(kt, kt.allowed_usage(), all, exportable),
        )
        .unwrap();
    }
    v
}

/// Every key's attributes, as seen by each VMPL.
fn keys(v: &Vault<Counter>) -> Vec<KeyInfo> {
    (0..4)
        .filter_map(Caller::new)
        .flat_map(|c| v.list(c).copied().collect::<Vec<_>>())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&who, mut rest)) = data.split_first() else {
        return;
    };
    let caller = Caller::new(who % 4).unwrap();
    let mut attester = FakeAttester { fail: who & 4 != 0 };
    let mut v = vault();
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let end = (2 + len).min(rest.len());
        let before = keys(&v);
        let resp = v.handle_with(caller, &rest[2..end], &mut attester);
        assert!(resp.len() <= MAX_RESPONSE_SIZE);
        let r = Response::decode(&resp).expect("response parses");
        let status = r.status().expect("defined status");
        if status != Status::Ok {
            assert!(r.body.is_empty());
            assert!(keys(&v) == before, "a failed request changed the key store");
        } else if r.header.op.get() == Op::AttestKey as u16 {
            let ev = r.attest_key().expect("AttestKey body parses");
            assert_eq!(&ev.report[0x50..0x90], &Sha512::digest(ev.binding)[..]);
            nitride_protocol::attest::KeyBinding::parse(ev.binding).expect("binding parses");
        }
        rest = &rest[end..];
    }
});
