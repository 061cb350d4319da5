//! The dispatcher on the wire: every operation's encoding, malformed input, the audit
//! log, failure atomicity, and a pseudo-random garbage run (the cargo-fuzz target in
//! `vhsm/fuzz` explores much further).
#![allow(clippy::unwrap_used)]

mod common;

use common::{attrs, template, Client};
use nitride_protocol::vhsm::{
    AuditEntry, KeyAttributes, KeyTemplate, KeyType, KeyUsage, Op, Origin, Request, Response,
    Status, VmplSet, AUDIT_CAPACITY, HEADER_SIZE, KEY_CAPACITY, MAX_DATA_LEN, MAX_LABEL_LEN,
    MAX_RANDOM_LEN, MAX_REQUEST_SIZE, MAX_RESPONSE_SIZE,
};
use nitride_vhsm::Caller;

fn body_view(body: &[u8]) -> Response<'_> {
    Response {
        header: Default::default(),
        body,
    }
}

fn audit(c: &mut Client, from_seq: u64) -> Vec<AuditEntry> {
    let body = c.ok(Request::ReadAudit { from_seq });
    body_view(&body).audit_entries().unwrap().to_vec()
}

fn list(c: &mut Client) -> Vec<KeyAttributes> {
    let body = c.ok(Request::List);
    body_view(&body).key_list().unwrap().to_vec()
}

#[test]
fn every_operation_succeeds_on_the_wire() {
    let mut c = Client::new(true);
    let kek = c.generate(KeyType::Aes256, KeyUsage::WRAP | KeyUsage::UNWRAP, false);
    let aes = c.generate(
        KeyType::Aes256,
        KeyUsage::ENCRYPT | KeyUsage::DECRYPT | KeyUsage::DERIVE,
        true,
    );
    let ec = c.generate(KeyType::EcdsaP384, KeyUsage::SIGN | KeyUsage::VERIFY, false);
    let ed = c.generate(KeyType::Ed25519, KeyUsage::SIGN | KeyUsage::VERIFY, false);
    let mac = c.import(
        KeyType::HmacSha384,
        KeyUsage::SIGN | KeyUsage::VERIFY,
        false,
        &[9; 48],
    );

    let sealed = c.ok(Request::Encrypt {
        key: aes,
        aad: b"hdr",
        plaintext: b"payload",
    });
    assert_eq!(sealed.len(), 12 + 7 + 16);
    assert_eq!(
        c.ok(Request::Decrypt {
            key: aes,
            aad: b"hdr",
            ciphertext: &sealed
        }),
        b"payload"
    );

    for (key, spki_len) in [(ec, 120), (ed, 44)] {
        let spki = c.ok(Request::GetPublicKey { key });
        assert_eq!(spki.len(), spki_len);
        let sig = c.ok(Request::Sign {
            key,
            message: b"msg",
        });
        assert!(c
            .ok(Request::Verify {
                key,
                message: b"msg",
                signature: &sig
            })
            .is_empty());
        c.fails(
            Request::Verify {
                key,
                message: b"msh",
                signature: &sig,
            },
            Status::SignatureInvalid,
        );
    }
    let tag = c.ok(Request::Sign {
        key: mac,
        message: b"msg",
    });
    assert_eq!(tag.len(), 48);
    c.ok(Request::Verify {
        key: mac,
        message: b"msg",
        signature: &tag,
    });

    let wrapped = c.ok(Request::Wrap {
        wrapping_key: kek,
        key: aes,
    });
    assert_eq!(wrapped.len(), 40);
    let t = template(KeyType::Aes256, KeyUsage::DECRYPT, false);
    let copy = attrs(&c.ok(Request::Unwrap {
        unwrapping_key: kek,
        template: t,
        label: b"copy",
        wrapped: &wrapped,
    }));
    assert_eq!(copy.label(), b"copy");
    assert_eq!(Origin::from_raw(copy.origin), Some(Origin::Unwrapped));
    assert_eq!(
        c.ok(Request::Decrypt {
            key: copy.key_id.get(),
            aad: b"hdr",
            ciphertext: &sealed
        }),
        b"payload"
    );

    let d = attrs(&c.ok(Request::Derive {
        parent: aes,
        template: t,
        label: b"d",
        salt: b"s",
        info: b"i",
    }));
    assert_eq!(Origin::from_raw(d.origin), Some(Origin::Derived));

    let r = c.ok(Request::Random { len: 64 });
    assert_eq!(r.len(), 64);
    assert!(c.ok(Request::Random { len: 0 }).is_empty());

    let a = attrs(&c.ok(Request::GetAttributes { key: ec }));
    assert_eq!(a.key_id.get(), ec);
    assert_eq!(
        KeyType::from_raw(a.key_type.get()),
        Some(KeyType::EcdsaP384)
    );
    assert_eq!(a.usage.get(), (KeyUsage::SIGN | KeyUsage::VERIFY).bits());
    assert_eq!(a.allowed_vmpls, (VmplSet::VMPL0 | VmplSet::VMPL1).bits());
    assert_eq!(a.exportable, 0);

    assert_eq!(list(&mut c).len(), 7);
    assert!(c
        .ok(Request::Delete {
            key: d.key_id.get()
        })
        .is_empty());
    assert_eq!(list(&mut c).len(), 6);
    c.fails(
        Request::GetAttributes {
            key: d.key_id.get(),
        },
        Status::KeyNotFound,
    );
}

#[test]
fn policy_and_errors_map_to_statuses() {
    let mut c = Client::new(false);
    let t = template(KeyType::Aes256, KeyUsage::ENCRYPT, true);
    c.fails(
        Request::Import {
            template: t,
            label: b"",
            material: &[1; 32],
        },
        Status::PolicyDenied,
    );
    let bad_type = KeyTemplate {
        key_type: 99.into(),
        ..t
    };
    c.fails(
        Request::Generate {
            template: bad_type,
            label: b"",
        },
        Status::InvalidParameter,
    );
    let bad_usage = KeyTemplate {
        usage: (1u32 << 20).into(),
        ..t
    };
    c.fails(
        Request::Generate {
            template: bad_usage,
            label: b"",
        },
        Status::InvalidParameter,
    );
    let bad_vmpl = KeyTemplate {
        allowed_vmpls: 0x10,
        ..t
    };
    c.fails(
        Request::Generate {
            template: bad_vmpl,
            label: b"",
        },
        Status::InvalidParameter,
    );
    // Flags: bit 1 persistent may be asked for; bit 2 (restored) and unknown bits not.
    for flags in [0b100, 0b1000, 0x80] {
        let bad_export = KeyTemplate {
            exportable: flags,
            ..t
        };
        c.fails(
            Request::Generate {
                template: bad_export,
                label: b"",
            },
            Status::InvalidParameter,
        );
    }
    c.fails(
        Request::Generate {
            template: t,
            label: &[b'l'; MAX_LABEL_LEN + 1],
        },
        Status::TooLarge,
    );

    let kek = c.generate(KeyType::Aes256, KeyUsage::WRAP, false);
    let secret = c.generate(KeyType::Aes256, KeyUsage::ENCRYPT | KeyUsage::DERIVE, false);
    c.fails(
        Request::Wrap {
            wrapping_key: kek,
            key: secret,
        },
        Status::NotExportable,
    );
    let exp = template(KeyType::Aes256, KeyUsage::ENCRYPT, true);
    c.fails(
        Request::Derive {
            parent: secret,
            template: exp,
            label: b"",
            salt: b"",
            info: b"",
        },
        Status::NotExportable,
    );
    c.fails(
        Request::Sign {
            key: secret,
            message: b"",
        },
        Status::UsageNotPermitted,
    );
    c.fails(Request::GetPublicKey { key: secret }, Status::WrongKeyType);
    c.fails(
        Request::Unwrap {
            unwrapping_key: kek,
            template: t,
            label: b"",
            wrapped: &[0; 40],
        },
        Status::UsageNotPermitted,
    );
    c.fails(
        Request::Random {
            len: u32::try_from(MAX_RANDOM_LEN).unwrap() + 1,
        },
        Status::InvalidParameter,
    );
    c.fails(Request::Delete { key: 12345 }, Status::KeyNotFound);

    // To another VMPL the key does not exist.
    c.caller = Caller::new(2).unwrap();
    c.fails(
        Request::Encrypt {
            key: secret,
            aad: b"",
            plaintext: b"",
        },
        Status::KeyNotFound,
    );
    assert!(list(&mut c).is_empty());
}

#[test]
fn capacity_on_the_wire() {
    let mut c = Client::new(false);
    for _ in 0..KEY_CAPACITY {
        c.generate(KeyType::Ed25519, KeyUsage::SIGN, false);
    }
    let t = template(KeyType::Ed25519, KeyUsage::SIGN, false);
    c.fails(
        Request::Generate {
            template: t,
            label: b"",
        },
        Status::CapacityExceeded,
    );
    assert_eq!(list(&mut c).len(), KEY_CAPACITY);
    let body = c.ok(Request::List);
    assert_eq!(body.len(), 4 + KEY_CAPACITY * 48);
}

#[test]
fn largest_messages_fit() {
    let mut c = Client::new(false);
    let k = c.generate(
        KeyType::Aes256,
        KeyUsage::ENCRYPT | KeyUsage::DECRYPT,
        false,
    );
    let big = vec![0x5a; MAX_DATA_LEN];
    let sealed = c.ok(Request::Encrypt {
        key: k,
        aad: &big,
        plaintext: &big,
    });
    assert!(HEADER_SIZE + sealed.len() <= MAX_RESPONSE_SIZE);
    assert_eq!(
        c.ok(Request::Decrypt {
            key: k,
            aad: &big,
            ciphertext: &sealed
        }),
        big
    );
    let too_big = vec![0; MAX_DATA_LEN + 1];
    c.fails(
        Request::Encrypt {
            key: k,
            aad: b"",
            plaintext: &too_big,
        },
        Status::TooLarge,
    );
    let s = c.generate(KeyType::EcdsaP384, KeyUsage::SIGN, false);
    c.fails(
        Request::Sign {
            key: s,
            message: &too_big,
        },
        Status::TooLarge,
    );
    c.ok(Request::Sign {
        key: s,
        message: &big,
    });
}

#[test]
fn malformed_requests_get_typed_errors() {
    let mut c = Client::new(false);
    let mut base = vec![0u8; HEADER_SIZE + 4];
    Request::Random { len: 8 }.encode(77, &mut base).unwrap();
    let cases: Vec<(Vec<u8>, Status)> = vec![
        (vec![], Status::Malformed),
        (base[..HEADER_SIZE - 1].to_vec(), Status::Malformed),
        (base[..HEADER_SIZE + 3].to_vec(), Status::Malformed),
        ([base.as_slice(), &[0]].concat(), Status::Malformed),
        (
            {
                let mut b = base.clone();
                b[0] = 9;
                b
            },
            Status::UnsupportedVersion,
        ),
        (
            {
                let mut b = base.clone();
                b[2] = 0;
                b
            },
            Status::UnknownOperation,
        ),
        (
            {
                let mut b = base.clone();
                b[2] = 200;
                b
            },
            Status::UnknownOperation,
        ),
        (
            {
                let mut b = base.clone();
                b[5] = 1;
                b
            },
            Status::Malformed,
        ),
        (
            {
                let mut b = base.clone();
                b[23] = 1;
                b
            },
            Status::Malformed,
        ),
        (
            {
                let mut b = base.clone();
                b[16] = 5;
                b
            },
            Status::Malformed,
        ),
        (vec![0; MAX_REQUEST_SIZE + 1], Status::TooLarge),
    ];
    for (req, expected) in cases {
        let resp = c.vault.handle(c.caller, &req);
        let r = Response::decode(&resp).unwrap();
        assert_eq!(r.status(), Some(expected), "request {req:02x?}");
        assert!(r.body.is_empty());
        if req.len() >= 16 && req.len() <= MAX_REQUEST_SIZE {
            assert_eq!(r.header.request_id.get(), 77, "request id echoed");
        }
    }
    // All of these were audited as failures.
    let log = audit(&mut c, 0);
    assert_eq!(log.iter().filter(|e| e.status.get() != 0).count(), 11);
}

/// (seq, op, key id, caller VMPL, status) of each entry.
fn summary(log: &[AuditEntry]) -> Vec<(u64, u16, u32, u8, u16)> {
    log.iter()
        .map(|e| {
            (
                e.seq.get(),
                e.op.get(),
                e.key_id.get(),
                e.caller_vmpl,
                e.status.get(),
            )
        })
        .collect()
}

/// Check that `entries` (consecutive) link: each chain value is SHA-384 of the
/// documented input over the one before; `previous` is the chain before the first.
fn check_chain(previous: [u8; 48], entries: &[AuditEntry]) -> [u8; 48] {
    use sha2::Digest;
    let mut prev = previous;
    for e in entries {
        let input = nitride_protocol::vhsm::audit_chain_input(&prev, e);
        assert_eq!(
            &sha2::Sha384::digest(input)[..],
            &e.chain[..],
            "seq {}",
            e.seq.get()
        );
        prev = e.chain;
    }
    prev
}

#[test]
fn audit_log_records_every_request_without_key_bytes() {
    let mut c = Client::new(true);
    let material = [0xC3u8; 32];
    let k = c.import(KeyType::Aes256, KeyUsage::ENCRYPT, false, &material);
    c.ok(Request::Encrypt {
        key: k,
        aad: b"",
        plaintext: b"x",
    });
    c.fails(
        Request::Decrypt {
            key: k,
            aad: b"",
            ciphertext: &[0; 28],
        },
        Status::UsageNotPermitted,
    );
    c.caller = Caller::SVSM;
    c.ok(Request::Random { len: 1 });
    c.caller = Caller::new(2).unwrap();
    c.fails(
        Request::Encrypt {
            key: k,
            aad: b"",
            plaintext: b"x",
        },
        Status::KeyNotFound,
    );
    // VMPL2 sees its own entries only.
    assert_eq!(
        summary(&audit(&mut c, 0)),
        [(5, Op::Encrypt.raw(), k, 2, Status::KeyNotFound.raw())]
    );
    // VMPL1 sees its own and VMPL2's, not the SVSM's (VMPL0).
    c.caller = Caller::new(1).unwrap();
    let body = c.ok(Request::ReadAudit { from_seq: 0 });
    assert!(
        !body.windows(4).any(|w| w == [0xC3; 4]),
        "audit holds no key bytes"
    );
    let log = body_view(&body).audit_entries().unwrap().to_vec();
    assert_eq!(
        summary(&log),
        [
            (1, Op::Import.raw(), k, 1, Status::Ok.raw()),
            (2, Op::Encrypt.raw(), k, 1, Status::Ok.raw()),
            (3, Op::Decrypt.raw(), k, 1, Status::UsageNotPermitted.raw()),
            (5, Op::Encrypt.raw(), k, 2, Status::KeyNotFound.raw()),
            (6, Op::ReadAudit.raw(), 0, 2, Status::Ok.raw()),
        ]
    );
    assert!(log.iter().all(|e| e.reserved == [0; 7]));
    // Where entries are consecutive, their chain values link.
    check_chain(log[0].chain, &log[1..3]);
    check_chain(log[3].chain, &log[4..]);
    // The SVSM sees everything, and the chain links from the first entry (after
    // zeros) to the vault's head, which counts every entry.
    c.caller = Caller::SVSM;
    let all = audit(&mut c, 0);
    assert_eq!(all.len(), 7);
    assert_eq!(all[3].caller_vmpl, 0);
    let head = check_chain([0; 48], &all);
    // The SVSM's ReadAudit is recorded after its response was built.
    assert_eq!(c.vault.audit_log().count(), 8);
    let last = c.vault.audit_log().since(8).next().copied().unwrap();
    assert_eq!(check_chain(head, &[last]), *c.vault.audit_log().head());
    // from_seq filters; the read itself is recorded afterwards.
    c.caller = Caller::new(1).unwrap();
    let tail = audit(&mut c, 5);
    assert_eq!(
        tail.iter().map(|e| e.seq.get()).collect::<Vec<_>>(),
        [5, 6, 7]
    );
    assert_eq!(tail[2].op.get(), Op::ReadAudit.raw());
    // The ring is bounded; the count and the chain cover what it dropped.
    for _ in 0..AUDIT_CAPACITY {
        c.ok(Request::Random { len: 1 });
    }
    let all = audit(&mut c, 0);
    assert_eq!(all.len(), AUDIT_CAPACITY);
    assert!(all[0].seq.get() > 1);
    assert_eq!(c.vault.audit_log().count(), 10 + AUDIT_CAPACITY as u64);
    check_chain(all[0].chain, &all[1..]);
}

#[test]
fn failed_requests_leave_the_vault_unchanged() {
    let mut c = Client::new(true);
    let k = c.generate(KeyType::Aes256, KeyUsage::ENCRYPT | KeyUsage::WRAP, false);
    let before = list(&mut c);
    let first = c.ok(Request::Encrypt {
        key: k,
        aad: b"",
        plaintext: b"a",
    });
    // A batch of failing creating and mutating requests.
    let t = template(KeyType::Aes256, KeyUsage::ENCRYPT, true);
    c.fails(
        Request::Unwrap {
            unwrapping_key: k,
            template: t,
            label: b"",
            wrapped: &[1; 40],
        },
        Status::UsageNotPermitted,
    );
    c.fails(
        Request::Import {
            template: t,
            label: b"",
            material: &[1; 31],
        },
        Status::InvalidKeyMaterial,
    );
    c.fails(
        Request::Derive {
            parent: k,
            template: t,
            label: b"",
            salt: b"",
            info: b"",
        },
        Status::UsageNotPermitted,
    );
    c.fails(
        Request::Wrap {
            wrapping_key: k,
            key: k,
        },
        Status::NotExportable,
    );
    c.fails(
        Request::Encrypt {
            key: k,
            aad: b"",
            plaintext: &vec![0; MAX_DATA_LEN + 1],
        },
        Status::TooLarge,
    );
    c.fails(Request::Delete { key: k + 1 }, Status::KeyNotFound);
    assert_eq!(list(&mut c), before);
    // The nonce counter moved by exactly one per successful encryption.
    let second = c.ok(Request::Encrypt {
        key: k,
        aad: b"",
        plaintext: b"a",
    });
    assert_eq!(&first[..8], &second[..8]);
    assert_eq!(
        u32::from_be_bytes(second[8..12].try_into().unwrap()),
        1 + u32::from_be_bytes(first[8..12].try_into().unwrap())
    );
}

/// The example request in docs/vhsm-protocol.md decodes as documented.
#[test]
fn documented_example_request() {
    let hex = "0200 0100 00000000 2a00000000000000 10000000 00000000 \
               0100 02 00 02000000 04000000 6469736b";
    let bytes = hex::decode(hex.replace(' ', "")).unwrap();
    let (header, req) = Request::decode(&bytes).unwrap();
    assert_eq!(header.request_id.get(), 42);
    assert_eq!(
        req,
        Request::Generate {
            template: KeyTemplate::new(KeyType::Aes256, KeyUsage::DECRYPT, VmplSet::VMPL1, false),
            label: b"disk",
        }
    );
    let mut c = Client::new(false);
    let resp = c.vault.handle(c.caller, &bytes);
    let expected_header = "0200 0100 0000 0000 2a00000000000000 30000000 00000000";
    let r = Response::decode(&resp).unwrap();
    assert_eq!(
        hex::encode(&resp[..HEADER_SIZE]),
        expected_header.replace(' ', "")
    );
    let expected_body = format!(
        "01000000 0100 01 02 02000000 00 04 0000 6469736b{}",
        "00".repeat(28)
    );
    assert_eq!(hex::encode(r.body), expected_body.replace(' ', ""));
}

/// A cheap in-tree stand-in for fuzzing: mutated valid requests and random bytes never
/// panic, and every response parses.
#[test]
fn garbage_never_panics() {
    let mut c = Client::new(true);
    c.generate(KeyType::Aes256, KeyType::Aes256.allowed_usage(), true);
    c.generate(KeyType::EcdsaP384, KeyUsage::SIGN, false);
    let mut seeds = Vec::new();
    for req in [
        Request::Sign {
            key: 2,
            message: b"hello",
        },
        Request::Encrypt {
            key: 1,
            aad: b"a",
            plaintext: b"p",
        },
        Request::Wrap {
            wrapping_key: 1,
            key: 1,
        },
        Request::Derive {
            parent: 1,
            template: template(KeyType::HmacSha384, KeyUsage::SIGN, true),
            label: b"x",
            salt: b"",
            info: b"",
        },
        Request::ReadAudit { from_seq: 0 },
    ] {
        let mut b = vec![0; 256];
        let n = req.encode(1, &mut b).unwrap();
        b.truncate(n);
        seeds.push(b);
    }
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..20_000u64 {
        let mut m = seeds[usize::try_from(i % 5).unwrap()].clone();
        for _ in 0..=(next() % 4) {
            let r = next();
            let pos = usize::try_from(r % (m.len() as u64 + 1)).unwrap();
            match (r >> 32) % 3 {
                0 if pos < m.len() => m[pos] ^= 1 << ((r >> 40) % 8),
                1 => m.insert(pos, (r >> 48) as u8),
                _ => m.truncate(pos),
            }
        }
        let resp = c
            .vault
            .handle(Caller::new(u8::try_from(next() % 4).unwrap()).unwrap(), &m);
        let r = Response::decode(&resp).unwrap();
        assert!(r.status().is_some());
        assert!(resp.len() <= MAX_RESPONSE_SIZE);
    }
}
