//! LUKS volume passphrases (issue 13): ReleaseVolumePassphrase, SealKey and
//! UnsealKey through the wire dispatcher. Python's `cryptography` HKDF is the
//! outside judge of the derivation; a stand-in PSP (its key depends on the chip and
//! the measurement, as the real one's does) drives the sealing.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use common::{attrs, Client};
use nitride_protocol::vhsm::{
    KeyTemplate, KeyType, KeyUsage, Request, Response, Status, VmplSet,
    LUKS_PASSPHRASE_INFO_PREFIX, LUKS_PASSPHRASE_LEN, LUKS_PASSPHRASE_SALT,
};
use nitride_vhsm::{AttestError, Attester, Caller, Evidence};
use sha2::{Digest, Sha384};
use zeroize::Zeroizing;

const UUID: &[u8; 36] = b"0b5e6a34-4c1f-4f57-9a43-1c2b8d3e5f60";
const OTHER_UUID: &[u8; 36] = b"0b5e6a34-4c1f-4f57-9a43-1c2b8d3e5f61";

/// Python's HKDF-SHA-384 over hex arguments.
fn python_hkdf(ikm: &[u8], salt: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    let script = r#"
import sys
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives import hashes
ikm, salt, info = (bytes.fromhex(a) for a in sys.argv[1:4])
print(HKDF(hashes.SHA384(), int(sys.argv[4]), salt, info).derive(ikm).hex())
"#;
    let out = Command::new("python3")
        .args([
            "-c",
            script,
            &hex::encode(ikm),
            &hex::encode(salt),
            &hex::encode(info),
            &len.to_string(),
        ])
        .output()
        .expect("python3 (with the `cryptography` package) is needed");
    assert!(
        out.status.success(),
        "python failed (install python3-cryptography): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    hex::decode(String::from_utf8(out.stdout).unwrap().trim()).unwrap()
}

fn release(c: &mut Client, key: u32, uuid: &[u8; 36]) -> Vec<u8> {
    let body = c.ok(Request::ReleaseVolumePassphrase { key, uuid: *uuid });
    assert_eq!(&body[..4], &(LUKS_PASSPHRASE_LEN as u32).to_le_bytes());
    body[4..].to_vec()
}

fn with_vmpls(kt: KeyType, usage: KeyUsage, allowed: VmplSet) -> KeyTemplate {
    KeyTemplate::new(kt, usage, allowed, false)
}

/// The passphrase is HKDF-SHA-384 as documented (Python computes the same bytes),
/// one per volume, the same every time, for AES and HMAC keys.
#[test]
fn release_is_documented_hkdf_per_volume() {
    let mut c = Client::new(true);
    for (kt, ikm) in [
        (KeyType::Aes256, vec![0x42u8; 32]),
        (KeyType::HmacSha384, vec![0x17u8; 48]),
    ] {
        let key = c.import(kt, KeyUsage::RELEASE, false, &ikm);
        let p = release(&mut c, key, UUID);
        let mut info = LUKS_PASSPHRASE_INFO_PREFIX.to_vec();
        info.extend_from_slice(&hex::decode("0b5e6a344c1f4f579a431c2b8d3e5f60").unwrap());
        assert_eq!(
            p,
            python_hkdf(&ikm, LUKS_PASSPHRASE_SALT, &info, LUKS_PASSPHRASE_LEN),
            "{kt:?}"
        );
        assert_eq!(p, release(&mut c, key, UUID));
        assert_ne!(p, release(&mut c, key, OTHER_UUID));
    }
}

/// Refusals: a key without RELEASE usage, a caller outside the key's VMPL set (told
/// exactly what a missing key is told), a UUID not in canonical lowercase form, a
/// key type that cannot carry RELEASE.
#[test]
fn release_refusals() {
    let mut c = Client::new(false);
    let no_release = c.generate(KeyType::Aes256, KeyUsage::DERIVE | KeyUsage::ENCRYPT, false);
    c.fails(
        Request::ReleaseVolumePassphrase {
            key: no_release,
            uuid: *UUID,
        },
        Status::UsageNotPermitted,
    );
    let key = attrs(&c.ok(Request::Generate {
        template: with_vmpls(KeyType::Aes256, KeyUsage::RELEASE, VmplSet::VMPL1),
        label: b"disk",
    }))
    .key_id
    .get();
    release(&mut c, key, UUID);
    c.caller = Caller::new(2).unwrap();
    c.fails(
        Request::ReleaseVolumePassphrase { key, uuid: *UUID },
        Status::KeyNotFound,
    );
    c.fails(
        Request::ReleaseVolumePassphrase {
            key: 999,
            uuid: *UUID,
        },
        Status::KeyNotFound,
    );
    c.caller = Caller::new(1).unwrap();
    for bad in [
        b"0B5E6A34-4C1F-4F57-9A43-1C2B8D3E5F60",
        b"0b5e6a34_4c1f-4f57-9a43-1c2b8d3e5f60",
        b"0b5e6a344c1f-4f57-9a43-1c2b8d3e5f60-",
        b"0b5e6a34-4c1f-4f57-9a43-1c2b8d3e5fz0",
        b"{b5e6a34-4c1f-4f57-9a43-1c2b8d3e5f6}",
    ] {
        c.fails(
            Request::ReleaseVolumePassphrase { key, uuid: *bad },
            Status::InvalidParameter,
        );
    }
    for kt in [KeyType::EcdsaP384, KeyType::Ed25519, KeyType::EcdhP256] {
        c.fails(
            Request::Generate {
                template: with_vmpls(kt, KeyUsage::RELEASE, VmplSet::VMPL1),
                label: b"",
            },
            Status::InvalidParameter,
        );
    }
}

/// A stand-in PSP: sealing key SHA-384(chip || measurement), one TCB.
struct Psp {
    chip: u8,
    measurement: u8,
}

impl Attester for Psp {
    fn report(&mut self, _: &[u8; 64], _: bool) -> Result<Evidence, AttestError> {
        Err(AttestError::Unavailable)
    }

    fn sealing_tcb(&mut self) -> Result<[u8; 8], AttestError> {
        Ok([3, 0, 0, 0, 0, 0, 20, 100])
    }

    fn sealing_key(&mut self, _: [u8; 8]) -> Result<Zeroizing<[u8; 32]>, AttestError> {
        let d = Sha384::digest([self.chip, self.measurement]);
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&d[..32]);
        Ok(key)
    }
}

fn call_with(c: &mut Client, psp: &mut Psp, req: Request<'_>) -> (Status, Vec<u8>) {
    let n = c.encode(&req);
    let mut buf = vec![0u8; n];
    req.encode(1, &mut buf).unwrap();
    let resp = c.vault.handle_with(c.caller, &buf, psp);
    let r = Response::decode(&resp).unwrap();
    (r.status().unwrap(), r.body.to_vec())
}

fn seal_key(c: &mut Client, psp: &mut Psp, key: u32) -> Vec<u8> {
    let (status, body) = call_with(c, psp, Request::SealKey { key });
    assert_eq!(status, Status::Ok);
    body[4..].to_vec()
}

fn unseal_key(c: &mut Client, psp: &mut Psp, blob: &[u8]) -> Result<u32, Status> {
    match call_with(c, psp, Request::UnsealKey { blob }) {
        (Status::Ok, body) => Ok(attrs(&body).key_id.get()),
        (s, _) => Err(s),
    }
}

/// A sealed key comes back (in a new vault: a restarted SVSM) under the same
/// measurement and chip as a new, non-persistent, restored key releasing the same
/// passphrase; another measurement or chip, a changed byte, a caller outside the
/// rule and a key without RELEASE usage are refused.
#[test]
fn sealed_key_survives_a_restart_and_nothing_else() {
    let mut psp = Psp {
        chip: 1,
        measurement: 1,
    };
    let mut c = Client::new(false);
    let key = attrs(&c.ok(Request::Generate {
        template: with_vmpls(
            KeyType::Aes256,
            KeyUsage::RELEASE,
            VmplSet::VMPL1 | VmplSet::VMPL2,
        ),
        label: b"vol",
    }))
    .key_id
    .get();
    let passphrase = release(&mut c, key, UUID);
    let blob = seal_key(&mut c, &mut psp, key);
    assert!(
        !blob
            .windows(passphrase.len())
            .any(|w| w == passphrase.as_slice()),
        "the blob holds no passphrase"
    );

    let mut restarted = Client::new(false);
    let again = unseal_key(&mut restarted, &mut psp, &blob).unwrap();
    assert_eq!(release(&mut restarted, again, UUID), passphrase);
    let a = attrs(&restarted.ok(Request::GetAttributes { key: again }));
    assert_eq!(a.label(), b"vol");
    assert_eq!(a.allowed_vmpls, 0b110);
    assert_eq!(
        a.exportable, 0b100,
        "restored, not persistent, not exportable"
    );
    assert_eq!(a.origin, 1, "origin: generated");

    for mut other in [
        Psp {
            chip: 1,
            measurement: 2,
        },
        Psp {
            chip: 2,
            measurement: 1,
        },
    ] {
        let mut fresh = Client::new(false);
        assert_eq!(
            unseal_key(&mut fresh, &mut other, &blob),
            Err(Status::SealedBlobInvalid)
        );
        assert!(fresh.vault.is_empty());
    }
    for i in [0usize, 10, 60, 80, blob.len() / 2, blob.len() - 1] {
        let mut t = blob.clone();
        t[i] ^= 1;
        assert_eq!(
            unseal_key(&mut restarted, &mut psp, &t),
            Err(Status::SealedBlobInvalid),
            "byte {i}"
        );
    }
    // A blob of another purpose (Seal's data) is not a key.
    let (s, data_blob) = call_with(
        &mut restarted,
        &mut psp,
        Request::Seal {
            rule: 0b10,
            data: &[0u8; 96],
        },
    );
    assert_eq!(s, Status::Ok);
    assert_eq!(
        unseal_key(&mut restarted, &mut psp, &data_blob[4..]),
        Err(Status::SealedBlobInvalid)
    );
    // VMPL3 is not in the rule.
    restarted.caller = Caller::new(3).unwrap();
    assert_eq!(
        unseal_key(&mut restarted, &mut psp, &blob),
        Err(Status::SealRuleDenied)
    );
    // Only keys with RELEASE usage are sealed this way.
    restarted.caller = Caller::new(1).unwrap();
    let plain = restarted.generate(KeyType::Aes256, KeyUsage::ENCRYPT, false);
    let (s, body) = call_with(&mut restarted, &mut psp, Request::SealKey { key: plain });
    assert_eq!((s, body.len()), (Status::UsageNotPermitted, 0));
}
