//! Tests of sealing: Seal/Unseal, ExportState/ImportState, the blob and state
//! formats, against a stand-in PSP whose derived key depends on the chip, the
//! measurement and the TCB as the real one's does.

use alloc::vec;
use alloc::vec::Vec;

use nitride_protocol::attest::VhsmManifest;
use nitride_protocol::sealed::{SealedHeader, SEALED_HEADER_LEN};
use nitride_protocol::vhsm::{
    KeyFlags, KeyTemplate, Request, Response, Status, GCM_NONCE_LEN, MAX_RESPONSE_SIZE,
};
use p384::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha384};
use zerocopy::FromBytes;
use zeroize::Zeroizing;

use crate::seal::{state_bytes_per_key, StatePayload, STATE_BLOB_BASE_LEN};
use crate::vault::{KeySpec, Vault};
use crate::{
    AttestError, Attester, Caller, Error, Evidence, KeyType, KeyUsage, Origin, Platform,
    PlatformError, VaultPolicy, VmplSet,
};

/// Entropy from SHA-384 of a counter starting at `seed`.
struct Entropy(u64);

impl Platform for Entropy {
    fn entropy(&mut self, out: &mut [u8]) -> Result<(), PlatformError> {
        for chunk in out.chunks_mut(48) {
            self.0 += 1;
            let block = Sha384::digest(self.0.to_le_bytes());
            chunk.copy_from_slice(&block[..chunk.len()]);
        }
        Ok(())
    }
}

/// A stand-in PSP: the sealing key is SHA-384(chip || measurement || tcb), refused for
/// a TCB with any component above the current one.
#[derive(Clone, Copy)]
struct Psp {
    chip: u8,
    measurement: u8,
    tcb: [u8; 8],
    zero_key: bool,
    fail: bool,
}

const TCB: [u8; 8] = [9, 0, 0, 0, 0, 0, 23, 72];

fn psp() -> Psp {
    Psp {
        chip: 1,
        measurement: 1,
        tcb: TCB,
        zero_key: false,
        fail: false,
    }
}

impl Attester for Psp {
    fn report(&mut self, _: &[u8; 64], _: bool) -> Result<Evidence, AttestError> {
        Err(AttestError::Unavailable)
    }

    fn sealing_tcb(&mut self) -> Result<[u8; 8], AttestError> {
        Ok(self.tcb)
    }

    fn sealing_key(&mut self, tcb: [u8; 8]) -> Result<Zeroizing<[u8; 32]>, AttestError> {
        if self.fail || tcb.iter().zip(self.tcb.iter()).any(|(w, h)| w > h) {
            return Err(AttestError::Failed);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        if !self.zero_key {
            let d = Sha384::new()
                .chain_update([self.chip, self.measurement])
                .chain_update(tcb)
                .finalize();
            key.copy_from_slice(&d[..32]);
        }
        Ok(key)
    }
}

fn vault(seed: u64) -> Vault<Entropy> {
    Vault::new(Entropy(seed), VaultPolicy::default()).unwrap()
}

fn v1() -> Caller {
    Caller::new(1).unwrap()
}

fn both() -> VmplSet {
    VmplSet::VMPL0 | VmplSet::VMPL1
}

#[test]
fn seal_unseal_round_trip_and_rules() {
    let mut v = vault(0);
    let mut p = psp();
    let data = b"disk key 0123456789";
    let blob = v.seal(v1(), 0b10, data, &mut p).unwrap();
    assert_eq!(blob.len(), SEALED_HEADER_LEN + data.len() + 16);
    let u = v.unseal(v1(), &blob, &mut p).unwrap();
    assert_eq!(&u.data[..], data);
    assert!(u.resealed.is_none());
    // Each blob has its own salt: sealing twice gives two blobs.
    assert_ne!(v.seal(v1(), 0b10, data, &mut p).unwrap(), blob);
    // A rule must name the caller's VMPL and only defined VMPLs.
    for rule in [0b01, 0, 0x10, 0x100] {
        assert_eq!(
            v.seal(v1(), rule, data, &mut p).unwrap_err(),
            Error::InvalidParameter
        );
    }
    // A VMPL0-only blob is not opened for VMPL1; a VMPL1 blob not for VMPL2.
    let strict = v.seal(Caller::SVSM, 0b01, data, &mut p).unwrap();
    assert_eq!(
        v.unseal(v1(), &strict, &mut p).unwrap_err(),
        Error::SealRuleDenied
    );
    assert_eq!(
        &v.unseal(Caller::SVSM, &strict, &mut p).unwrap().data[..],
        data
    );
    assert_eq!(
        v.unseal(Caller::new(2).unwrap(), &blob, &mut p)
            .unwrap_err(),
        Error::SealRuleDenied
    );
    // A data blob is not a state, nor the reverse.
    assert_eq!(
        v.import_state(&blob, &mut p).unwrap_err(),
        Error::SealedBlobInvalid
    );
    let (_, state) = v.export_state(&mut p).unwrap();
    assert_eq!(
        v.unseal(Caller::SVSM, &state, &mut p).unwrap_err(),
        Error::SealedBlobInvalid
    );
}

#[test]
fn every_changed_byte_is_refused() {
    let mut v = vault(0);
    let mut p = psp();
    let blob = v.seal(v1(), 0b11, b"0123456789abcdef", &mut p).unwrap();
    for i in 0..blob.len() {
        for bit in [0x01, 0x80] {
            let mut t = blob.clone();
            t[i] ^= bit;
            let e = v.unseal(v1(), &t, &mut p).unwrap_err();
            assert!(
                matches!(e, Error::SealedBlobInvalid | Error::SealingUnavailable),
                "byte {i}: {e:?}"
            );
        }
    }
    for cut in 0..blob.len() {
        assert!(v.unseal(v1(), &blob[..cut], &mut p).is_err());
    }
    let mut long = blob.clone();
    long.push(0);
    assert_eq!(
        v.unseal(v1(), &long, &mut p).unwrap_err(),
        Error::SealedBlobInvalid
    );
}

#[test]
fn another_image_chip_or_failing_psp_cannot_open() {
    let mut v = vault(0);
    let mut p = psp();
    let blob = v.seal(v1(), 0b10, b"secret", &mut p).unwrap();
    let (_, state) = v.export_state(&mut p).unwrap();
    let other_image = Psp {
        measurement: 2,
        ..psp()
    };
    let other_chip = Psp { chip: 2, ..psp() };
    for mut q in [other_image, other_chip] {
        assert_eq!(
            v.unseal(v1(), &blob, &mut q).unwrap_err(),
            Error::SealedBlobInvalid
        );
        let mut fresh = vault(7);
        assert_eq!(
            fresh.import_state(&state, &mut q).unwrap_err(),
            Error::SealedBlobInvalid
        );
        assert!(fresh.is_empty());
    }
    // An all-zero derived key or a PSP error is never used.
    for mut q in [
        Psp {
            zero_key: true,
            ..psp()
        },
        Psp {
            fail: true,
            ..psp()
        },
    ] {
        assert_eq!(
            v.seal(v1(), 0b10, b"x", &mut q).unwrap_err(),
            Error::SealingUnavailable
        );
        assert_eq!(
            v.unseal(v1(), &blob, &mut q).unwrap_err(),
            Error::SealingUnavailable
        );
    }
    // No PSP at all.
    assert_eq!(
        v.seal(v1(), 0b10, b"x", &mut crate::NoAttester)
            .unwrap_err(),
        Error::SealingUnavailable
    );
}

/// Keys of every type, persistent, plus one that is not.
fn populate(v: &mut Vault<Entropy>) -> Vec<u32> {
    let mut ids = Vec::new();
    for kt in [
        KeyType::EcdsaP384,
        KeyType::Aes256,
        KeyType::Ed25519,
        KeyType::HmacSha384,
    ] {
        let spec = KeySpec::new(kt, kt.allowed_usage(), both(), false).persistent();
        ids.push(v.generate(v1(), &spec).unwrap().id);
    }
    let transient = KeySpec::new(KeyType::Aes256, KeyUsage::ENCRYPT, both(), false);
    v.generate(v1(), &transient).unwrap();
    ids
}

#[test]
fn state_survives_a_restart_with_keys_counters_and_identity() {
    let mut old = vault(0);
    let mut p = psp();
    let ids = populate(&mut old);
    let (ecdsa, aes, ed, hmac) = (ids[0], ids[1], ids[2], ids[3]);
    let mut ciphertexts = Vec::new();
    for i in 0..3u8 {
        let mut ct = Vec::new();
        old.encrypt(v1(), aes, b"aad", &[i; 20], &mut ct).unwrap();
        ciphertexts.push(ct);
    }
    let mut pubkeys = Vec::new();
    for id in [ecdsa, ed] {
        let mut spki = Vec::new();
        old.public_key(v1(), id, &mut spki).unwrap();
        pubkeys.push(spki);
    }
    let mut mac = Vec::new();
    old.sign(v1(), hmac, b"msg", &mut mac).unwrap();
    let before: Vec<_> = old.list(v1()).copied().collect();
    let (generation, state) = old.export_state(&mut p).unwrap();
    assert_eq!(generation, 1);
    assert_eq!(
        state.len(),
        STATE_BLOB_BASE_LEN
            + [
                KeyType::EcdsaP384,
                KeyType::Aes256,
                KeyType::Ed25519,
                KeyType::HmacSha384
            ]
            .iter()
            .map(|&k| state_bytes_per_key(k))
            .sum::<usize>()
    );

    // "Reboot": another vault, other entropy, same image and chip.
    let mut new = vault(1000);
    assert_ne!(new.identity_public_key(), old.identity_public_key());
    let restored = new.import_state(&state, &mut p).unwrap();
    assert_eq!((restored.generation, restored.keys), (1, 4));
    assert!(restored.resealed.is_none());
    assert_eq!(new.identity_public_key(), old.identity_public_key());
    let after: Vec<_> = new.list(v1()).copied().collect();
    assert_eq!(after.len(), 4, "the non-persistent key is not restored");
    for (a, b) in after.iter().zip(before.iter()) {
        assert_eq!(a.id, b.id);
        assert_eq!(
            (a.key_type, a.usage, a.allowed),
            (b.key_type, b.usage, b.allowed)
        );
        assert_eq!(a.origin, Origin::Generated, "the origin stays");
        assert!(a.restored && a.persistent && !b.restored);
        assert_eq!(
            KeyFlags::from_bits(a.to_wire().exportable).unwrap(),
            KeyFlags::PERSISTENT | KeyFlags::RESTORED
        );
    }
    // Same public keys; signatures from the restored keys verify with them.
    for (id, spki) in [(ecdsa, &pubkeys[0]), (ed, &pubkeys[1])] {
        let mut now = Vec::new();
        new.public_key(v1(), id, &mut now).unwrap();
        assert_eq!(&now, spki);
    }
    let mut sig = Vec::new();
    new.sign(v1(), ecdsa, b"after restart", &mut sig).unwrap();
    let vk = p384::ecdsa::VerifyingKey::from_public_key_der(&pubkeys[0]).unwrap();
    let sig = p384::ecdsa::DerSignature::from_bytes(&sig).unwrap();
    p384::ecdsa::signature::Verifier::verify(&vk, b"after restart", &sig).unwrap();
    let mut mac2 = Vec::new();
    new.sign(v1(), hmac, b"msg", &mut mac2).unwrap();
    assert_eq!(mac, mac2);
    // Old ciphertexts decrypt; new encryptions continue the counter and repeat no
    // nonce used before the restart.
    for (i, ct) in ciphertexts.iter().enumerate() {
        let mut pt = Vec::new();
        new.decrypt(v1(), aes, b"aad", ct, &mut pt).unwrap();
        assert_eq!(pt, vec![i as u8; 20]);
    }
    let old_nonces: Vec<&[u8]> = ciphertexts.iter().map(|c| &c[..GCM_NONCE_LEN]).collect();
    for i in 0..5u32 {
        let mut ct = Vec::new();
        new.encrypt(v1(), aes, b"", b"x", &mut ct).unwrap();
        let nonce = &ct[..GCM_NONCE_LEN];
        assert!(!old_nonces.contains(&nonce));
        assert_eq!(u32::from_be_bytes(nonce[8..12].try_into().unwrap()), 3 + i);
    }
    // New keys get new ids.
    let next = new
        .generate(
            v1(),
            &KeySpec::new(KeyType::Aes256, KeyUsage::ENCRYPT, both(), false),
        )
        .unwrap();
    assert_eq!(next.id, 6);
}

#[test]
fn import_needs_an_empty_vault_and_refuses_rollback() {
    let mut a = vault(0);
    let mut p = psp();
    let id = populate(&mut a)[1];
    let (g1, blob1) = a.export_state(&mut p).unwrap();
    // Unchanged state: same generation.
    assert_eq!(a.export_state(&mut p).unwrap().0, g1);
    a.delete(v1(), id).unwrap();
    let (g2, blob2) = a.export_state(&mut p).unwrap();
    assert_eq!((g1, g2), (1, 2));

    let mut b = vault(50);
    b.import_state(&blob2, &mut p).unwrap();
    assert_eq!(
        b.import_state(&blob2, &mut p).unwrap_err(),
        Error::VaultNotEmpty
    );
    // Empty it again: an older state is still refused in this boot, nothing changes.
    let ids: Vec<u32> = b.list(Caller::SVSM).map(|k| k.id).collect();
    for id in ids {
        b.delete(v1(), id).unwrap();
    }
    let identity = b.identity_public_key().to_vec();
    assert_eq!(
        b.import_state(&blob1, &mut p).unwrap_err(),
        Error::StateRollback
    );
    assert!(b.is_empty());
    assert_eq!(b.identity_public_key(), identity);
    // The manifest reports the generation.
    let m = b.manifest();
    assert_eq!(
        VhsmManifest::parse(&m)
            .unwrap()
            .header
            .state_generation
            .get(),
        2
    );
    // A fresh boot cannot tell: it imports the old blob (see docs/sealing.md).
    let mut c = vault(99);
    assert_eq!(c.import_state(&blob1, &mut p).unwrap().generation, 1);
}

#[test]
fn a_raised_tcb_opens_old_blobs_and_reseals() {
    let mut v = vault(0);
    let mut p = psp();
    populate(&mut v);
    let (_, state) = v.export_state(&mut p).unwrap();
    let data_blob = v.seal(v1(), 0b10, b"data", &mut p).unwrap();
    let mut raised = psp();
    raised.tcb[7] += 1; // microcode SPL + 1
    let mut next = vault(5);
    let r = next.import_state(&state, &mut raised).unwrap();
    let resealed = r.resealed.unwrap();
    let (h, _) = SealedHeader::read_from_prefix(&resealed).unwrap();
    assert_eq!(h.tcb, raised.tcb);
    assert_eq!(h.generation.get(), r.generation);
    // The resealed blob imports after the next boot, without another reseal; the old
    // TCB's blob no longer opens on a chip whose TCB went back down below it.
    let mut third = vault(9);
    let r3 = third.import_state(&resealed, &mut raised).unwrap();
    assert!(r3.resealed.is_none());
    assert_eq!(r3.keys, 4);
    assert_eq!(
        vault(11).import_state(&resealed, &mut p).unwrap_err(),
        Error::SealingUnavailable
    );
    let u = v.unseal(v1(), &data_blob, &mut raised).unwrap();
    let again = u.resealed.unwrap();
    let u2 = v.unseal(v1(), &again, &mut raised).unwrap();
    assert_eq!(&u2.data[..], b"data");
    assert!(u2.resealed.is_none());
}

#[test]
fn state_payload_is_canonical() {
    let mut v = vault(0);
    let mut p = psp();
    populate(&mut v);
    let (_, blob) = v.export_state(&mut p).unwrap();
    let (_, payload) =
        crate::seal::open(&mut p, nitride_protocol::sealed::Purpose::VaultState, &blob).unwrap();
    let state = StatePayload::decode(&payload).unwrap();
    assert_eq!(&state.encode().unwrap()[..], &payload[..]);
    // Every byte of the fixed part and of the first key's attributes: any change is
    // either refused or decodes to a different state that re-encodes to itself.
    let first_attr = 4 + 4 + 8 + 48 + 48;
    for i in (0..8).chain(first_attr..first_attr + 48) {
        let mut t = payload.to_vec();
        t[i] ^= 0x40;
        if let Ok(s) = StatePayload::decode(&t) {
            assert_eq!(&s.encode().unwrap()[..], &t[..], "byte {i}");
        }
    }
    // Truncated or extended payloads are refused.
    assert!(StatePayload::decode(&payload[..payload.len() - 1]).is_err());
    let mut long = payload.to_vec();
    long.push(0);
    assert!(StatePayload::decode(&long).is_err());
    // A key without the persistent flag, with the restored flag, with a non-zero
    // label tail or reserved field, or id 0 is refused.
    for (offset, value) in [(12, 0u8), (12, 0b110), (47, 1), (14, 1), (0, 0)] {
        let mut t = payload.to_vec();
        t[first_attr + offset] = value;
        assert!(StatePayload::decode(&t).is_err(), "offset {offset}");
    }
}

fn wire(v: &mut Vault<Entropy>, p: &mut Psp, req: Request<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; 40 * 1024];
    let n = req.encode(1, &mut buf).unwrap();
    v.handle_with(v1(), &buf[..n], p)
}

#[test]
fn responses_say_when_the_state_changed() {
    let mut v = vault(0);
    let mut p = psp();
    let t = KeyTemplate::new(KeyType::Aes256, KeyUsage::ENCRYPT, both(), false);
    let cases: [(Request<'_>, bool); 6] = [
        (
            Request::Generate {
                template: t,
                label: b"",
            },
            false,
        ),
        (
            Request::Generate {
                template: t.persistent(),
                label: b"p",
            },
            true,
        ),
        (
            Request::Encrypt {
                key: 1,
                aad: b"",
                plaintext: b"x",
            },
            false,
        ),
        (
            Request::Encrypt {
                key: 2,
                aad: b"",
                plaintext: b"x",
            },
            true,
        ),
        (Request::ExportState, false),
        (Request::Delete { key: 2 }, true),
    ];
    for (req, changed) in cases {
        let resp = wire(&mut v, &mut p, req);
        let r = Response::decode(&resp).unwrap();
        assert_eq!(r.status(), Some(Status::Ok), "{req:?}");
        assert_eq!(r.state_changed(), changed, "{req:?}");
        if let Request::Generate { .. } = req {
            let a = r.attributes().unwrap();
            assert_eq!(a.flags().unwrap().contains(KeyFlags::PERSISTENT), changed);
        }
    }
    // The restored flag cannot be asked for.
    let mut bad = t;
    bad.exportable = KeyFlags::RESTORED.bits();
    let resp = wire(
        &mut v,
        &mut p,
        Request::Generate {
            template: bad,
            label: b"",
        },
    );
    assert_eq!(
        Response::decode(&resp).unwrap().status(),
        Some(Status::InvalidParameter)
    );
    // Wire round trip of every sealing operation.
    let resp = wire(
        &mut v,
        &mut p,
        Request::Seal {
            rule: 2,
            data: b"hi",
        },
    );
    let blob = Response::decode(&resp)
        .unwrap()
        .sealed_blob()
        .unwrap()
        .to_vec();
    let resp = wire(&mut v, &mut p, Request::Unseal { blob: &blob });
    let r = Response::decode(&resp).unwrap();
    assert_eq!(r.unsealed().unwrap().data, b"hi");
    let resp = wire(&mut v, &mut p, Request::ExportState);
    let (g, state) = Response::decode(&resp).unwrap().exported_state().unwrap();
    assert_eq!(g, 2);
    let state = state.to_vec();
    let mut fresh = vault(77);
    let resp = wire(&mut fresh, &mut p, Request::ImportState { blob: &state });
    let r = Response::decode(&resp).unwrap();
    let i = r.imported_state().unwrap();
    assert_eq!((i.generation, i.keys, i.resealed), (2, 0, None));
    assert!(resp.len() <= MAX_RESPONSE_SIZE);
}

#[test]
fn a_full_vault_fits_in_one_blob() {
    let mut v = vault(0);
    let mut p = psp();
    for _ in 0..nitride_protocol::vhsm::KEY_CAPACITY {
        let spec = KeySpec::new(KeyType::EcdsaP384, KeyUsage::SIGN, both(), false).persistent();
        v.generate(v1(), &spec).unwrap();
    }
    let (_, blob) = v.export_state(&mut p).unwrap();
    assert_eq!(
        blob.len(),
        STATE_BLOB_BASE_LEN + 64 * state_bytes_per_key(KeyType::EcdsaP384)
    );
    let mut w = vault(3);
    assert_eq!(w.import_state(&blob, &mut p).unwrap().keys, 64);
}
