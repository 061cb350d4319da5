//! Fuzz the vHSM dispatcher: a vault holding five keys (ids 1-4: exportable AES,
//! Ed25519, exportable HMAC, non-exportable AES, all usable by every VMPL; id 5: an
//! Ed25519 key only VMPL0 may use) receives a sequence of requests. P-384 keys are
//! left to the input to generate (id 6 onwards), because a P-384 key costs a scalar
//! multiplication per execution.
//!
//! Input: byte 0 picks the caller's VMPL (bits 0-1) and whether the attester fails
//! (bit 2), then each request is `u16 LE length || bytes`. Every key carries its
//! type's full usage, ATTEST included, so AttestKey runs against a fake attester (a
//! fixed report whose REPORT_DATA must be SHA-512 of the returned binding, and a
//! certificate table), which also derives a fixed sealing key per TCB (Seal, Unseal,
//! ExportState, ImportState). Checked for every request:
//! - the dispatcher never panics, every response is a well-formed message within
//!   `MAX_RESPONSE_SIZE`, an error response has an empty body, and a failed request
//!   leaves every key's attributes unchanged;
//! - a twin vault, identical but for key 5 deleted, answers a caller other than
//!   VMPL0 with exactly the same bytes (a key the caller may not use answers like a
//!   key that does not exist), until either vault's store fills (the capacity is
//!   shared by design);
//! - the audit entry recorded links to the chain head before it, and the head and
//!   count move with it; ReadAudit returns no entry of a more privileged VMPL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nitride_protocol::vhsm::Op;
use nitride_protocol::vhsm::{audit_chain_input, Response, Status, MAX_RESPONSE_SIZE};
use nitride_vhsm::{
    AttestError, Attester, Caller, Evidence, KeyInfo, KeySpec, KeyType, Platform, PlatformError,
    Vault, VaultPolicy, VmplSet,
};
use sha2::{Digest, Sha384, Sha512};

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

    fn sealing_tcb(&mut self) -> Result<[u8; 8], AttestError> {
        if self.fail {
            return Err(AttestError::Failed);
        }
        Ok([9, 0, 0, 0, 0, 0, 23, 72])
    }

    /// A fixed key per TCB, so Seal, Unseal, ExportState and ImportState run their
    /// whole paths (a blob the input carries opens only if it was made with it).
    fn sealing_key(&mut self, tcb: [u8; 8]) -> Result<zeroize::Zeroizing<[u8; 32]>, AttestError> {
        if self.fail {
            return Err(AttestError::Failed);
        }
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&Sha384::digest(tcb)[..32]);
        Ok(key)
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

/// The id of the key only VMPL0 may use.
const HIDDEN: u32 = 5;

/// The vault, and (for a caller other than VMPL0) its twin without key [`HIDDEN`].
fn vaults(caller: Caller) -> (Vault<Counter>, Option<Vault<Counter>>) {
    let make = || {
        let mut v = Vault::new(
            Counter(1),
            VaultPolicy {
                allow_plaintext_import: true,
                ..VaultPolicy::default()
            },
        )
        .unwrap();
        let all = VmplSet::all();
        for (kt, allowed, exportable) in [
            (KeyType::Aes256, all, true),
            (KeyType::Ed25519, all, false),
            (KeyType::HmacSha384, all, true),
            (KeyType::Aes256, all, false),
            (KeyType::Ed25519, VmplSet::VMPL0, true),
        ] {
            v.generate(
                Caller::SVSM,
                &KeySpec::new(kt, kt.allowed_usage(), allowed, exportable),
            )
            .unwrap();
        }
        v
    };
    let twin = (caller != Caller::SVSM).then(|| {
        let mut b = make();
        b.delete(Caller::SVSM, HIDDEN).unwrap();
        b
    });
    (make(), twin)
}

/// Every key's attributes, as seen by each VMPL.
fn keys(v: &Vault<Counter>) -> Vec<KeyInfo> {
    (0..4)
        .filter_map(Caller::new)
        .flat_map(|c| v.list(c).copied().collect::<Vec<_>>())
        .collect()
}

fn status_of(resp: &[u8]) -> Status {
    Response::decode(resp)
        .expect("response parses")
        .status()
        .expect("defined status")
}

fuzz_target!(|data: &[u8]| {
    let Some((&who, mut rest)) = data.split_first() else {
        return;
    };
    let caller = Caller::new(who % 4).unwrap();
    let mut attester = FakeAttester { fail: who & 4 != 0 };
    let (mut v, mut twin) = vaults(caller);
    while rest.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
        let end = (2 + len).min(rest.len());
        let request = &rest[2..end];
        let before = keys(&v);
        let head = *v.audit_log().head();
        let resp = v.handle_with(caller, request, &mut attester);
        assert!(resp.len() <= MAX_RESPONSE_SIZE);
        let r = Response::decode(&resp).expect("response parses");
        let status = r.status().expect("defined status");
        assert_ne!(
            status,
            Status::AccessDenied,
            "never told apart from KeyNotFound"
        );
        if status != Status::Ok {
            assert!(r.body.is_empty());
            assert!(keys(&v) == before, "a failed request changed the key store");
        } else if r.header.op.get() == Op::AttestKey as u16 {
            let ev = r.attest_key().expect("AttestKey body parses");
            assert_eq!(&ev.report[0x50..0x90], &Sha512::digest(ev.binding)[..]);
            nitride_protocol::attest::KeyBinding::parse(ev.binding).expect("binding parses");
        } else if r.header.op.get() == Op::ReadAudit as u16 {
            let entries = r.audit_entries().expect("ReadAudit body parses");
            assert!(entries.iter().all(|e| e.caller_vmpl >= caller.vmpl()));
        }
        // The new audit entry extends the chain.
        let last = *v.audit_log().since(0).last().expect("an entry per request");
        assert_eq!(last.seq.get(), v.audit_log().count());
        assert_eq!(
            &Sha384::digest(audit_chain_input(&head, &last))[..],
            &last.chain[..]
        );
        assert_eq!(v.audit_log().head(), &last.chain);
        // The twin without the hidden key answers exactly the same.
        if let Some(t) = twin.as_mut() {
            let twin_resp = t.handle_with(caller, request, &mut attester);
            if status == Status::CapacityExceeded
                || status_of(&twin_resp) == Status::CapacityExceeded
            {
                twin = None;
            } else {
                assert!(resp == twin_resp, "the hidden key changed an answer");
            }
        }
        rest = &rest[end..];
    }
});
