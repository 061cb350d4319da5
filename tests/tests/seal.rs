//! Sealing end to end: the firmware in QEMU, keys made, the state exported, the VM
//! stopped, a new VM started (the same image, another image, another chip, a raised
//! TCB), the state imported through the relay guest as a guest would.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

use std::path::{Path, PathBuf};

use nitride_protocol::emulated::dev_psp::BlobHeader;
use nitride_protocol::sealed::SEALED_HEADER_LEN;
use nitride_protocol::vhsm::{
    KeyAttributes, KeyFlags, KeyTemplate, KeyType, KeyUsage, Status, VmplSet, GCM_NONCE_LEN,
};
use nitride_tests::{RelayClient, RunningVm, VhsmClient, VhsmError};
use zerocopy::FromBytes;

fn dir(name: &str) -> PathBuf {
    let d = nitride_qemu::repo_root()
        .join("target")
        .join("e2e")
        .join(format!("seal-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Boot the production SVSM with `guest` (the relay guest, or a variant) and the
/// dev-PSP blob `psp` (the runner's when `None`).
fn boot(
    name: &str,
    guest: Option<&Path>,
    psp: Option<&Path>,
) -> (RunningVm, VhsmClient<RelayClient>) {
    nitride_tests::start_relay_with(
        &format!("seal-{name}"),
        "",
        nitride_tests::Relay {
            guest,
            dev_psp: psp,
            config: None,
        },
    )
}

fn template(kt: KeyType, usage: KeyUsage) -> KeyTemplate {
    KeyTemplate::new(kt, usage, VmplSet::all(), false).persistent()
}

fn status(e: VhsmError) -> Status {
    match e {
        VhsmError::Status(s) => s,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// The runner's dev-PSP blob with the header changed by `f`, in `dir`.
fn psp_variant(dir: &Path, name: &str, f: impl FnOnce(&mut BlobHeader)) -> PathBuf {
    nitride_qemu::ensure_dev_chain().unwrap();
    let mut blob = std::fs::read(nitride_qemu::dev_psp_blob_path()).unwrap();
    let (header, _) = BlobHeader::mut_from_prefix(&mut blob).unwrap();
    f(header);
    let path = dir.join(name);
    std::fs::write(&path, blob).unwrap();
    path
}

/// Whether openssl verifies `sig` over `msg` with the SPKI DER `spki`.
fn openssl_verifies(dir: &Path, spki: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let (k, m, s) = (dir.join("pub.der"), dir.join("msg"), dir.join("sig"));
    std::fs::write(&k, spki).unwrap();
    std::fs::write(&m, msg).unwrap();
    std::fs::write(&s, sig).unwrap();
    std::process::Command::new("openssl")
        .args(["dgst", "-sha384", "-keyform", "DER", "-verify"])
        .arg(&k)
        .arg("-signature")
        .arg(&s)
        .arg(&m)
        .output()
        .expect("openssl is required")
        .status
        .success()
}

/// What the first boot left behind.
struct FirstBoot {
    keys: Vec<KeyAttributes>,
    ecdsa: u32,
    aes: u32,
    spki: Vec<u8>,
    ciphertexts: Vec<Vec<u8>>,
    /// The state after the first key only (an older generation).
    early_state: Vec<u8>,
    state: Vec<u8>,
    generation: u64,
    data_blob: Vec<u8>,
}

fn first_boot(name: &str) -> FirstBoot {
    let (_vm, mut c) = boot(name, None, None);
    let ecdsa = c
        .generate(
            template(KeyType::EcdsaP384, KeyUsage::SIGN | KeyUsage::VERIFY),
            b"signer",
        )
        .unwrap();
    assert!(c.last_changed_state(), "a persistent key changes the state");
    let (g_early, early_state) = c.export_state().unwrap();
    let aes = c
        .generate(
            template(KeyType::Aes256, KeyUsage::ENCRYPT | KeyUsage::DECRYPT),
            b"data",
        )
        .unwrap();
    c.generate(template(KeyType::Ed25519, KeyUsage::SIGN), b"ed")
        .unwrap();
    let transient = KeyTemplate::new(KeyType::Aes256, KeyUsage::ENCRYPT, VmplSet::all(), false);
    c.generate(transient, b"transient").unwrap();
    assert!(!c.last_changed_state(), "a transient key does not");
    let mut ciphertexts = Vec::new();
    for i in 0..4u8 {
        ciphertexts.push(c.encrypt(aes.key_id.get(), b"aad", &[i; 24]).unwrap());
        assert!(c.last_changed_state(), "the nonce counter is state");
    }
    let spki = c.public_key(ecdsa.key_id.get()).unwrap();
    let data_blob = c.seal(VmplSet::VMPL1, b"a disk key").unwrap();
    // A VMPL1 caller cannot make a blob it could not open itself.
    assert_eq!(
        status(c.seal(VmplSet::VMPL0, b"x").unwrap_err()),
        Status::InvalidParameter
    );
    let keys: Vec<KeyAttributes> = c
        .list()
        .unwrap()
        .into_iter()
        .filter(|k| k.flags().unwrap().contains(KeyFlags::PERSISTENT))
        .collect();
    let (generation, state) = c.export_state().unwrap();
    assert!(generation > g_early);
    FirstBoot {
        keys,
        ecdsa: ecdsa.key_id.get(),
        aes: aes.key_id.get(),
        spki,
        ciphertexts,
        early_state,
        state,
        generation,
        data_blob,
    }
}

#[test]
fn keys_survive_a_restart_of_the_same_image() {
    let d = dir("restart");
    let first = first_boot("restart-1");
    // The VM is gone; a new one starts from the same image on the same chip.
    let (_vm, mut c) = boot("restart-2", None, None);

    // A changed byte anywhere (header, ciphertext, tag) or a cut blob: refused, and
    // the vault stays empty.
    for i in [
        0,
        9,
        12,
        24,
        40,
        SEALED_HEADER_LEN + 3,
        first.state.len() - 1,
    ] {
        let mut t = first.state.clone();
        t[i] ^= 0x01;
        let s = status(c.import_state(&t).unwrap_err());
        assert!(
            matches!(s, Status::SealedBlobInvalid | Status::SealingUnavailable),
            "byte {i}: {s:?}"
        );
    }
    assert_eq!(
        status(
            c.import_state(&first.state[..first.state.len() - 1])
                .unwrap_err()
        ),
        Status::SealedBlobInvalid
    );
    assert!(c.list().unwrap().is_empty());

    let r = c.import_state(&first.state).unwrap();
    assert_eq!((r.generation, r.keys), (first.generation, 3));
    assert!(r.resealed.is_none());
    let now = c.list().unwrap();
    assert_eq!(now.len(), 3, "only the persistent keys come back");
    for (a, b) in now.iter().zip(first.keys.iter()) {
        assert_eq!(a.key_id, b.key_id);
        assert_eq!(
            (a.key_type, a.usage, a.allowed_vmpls),
            (b.key_type, b.usage, b.allowed_vmpls)
        );
        assert_eq!(a.origin, b.origin, "the origin stays");
        assert_eq!(a.label(), b.label());
        assert_eq!(
            a.flags().unwrap(),
            KeyFlags::PERSISTENT | KeyFlags::RESTORED
        );
    }
    // The same public key; a signature made now verifies with the key exported
    // before the restart (openssl judges).
    assert_eq!(c.public_key(first.ecdsa).unwrap(), first.spki);
    let sig = c.sign(first.ecdsa, b"signed after the restart").unwrap();
    assert!(openssl_verifies(
        &d,
        &first.spki,
        b"signed after the restart",
        &sig
    ));
    // AES-GCM opens what was encrypted before; new encryptions use no nonce used
    // before, and their invocation field continues the counter.
    for (i, ct) in first.ciphertexts.iter().enumerate() {
        assert_eq!(c.decrypt(first.aes, b"aad", ct).unwrap(), vec![i as u8; 24]);
    }
    let old: Vec<&[u8]> = first
        .ciphertexts
        .iter()
        .map(|c| &c[..GCM_NONCE_LEN])
        .collect();
    for n in 0..4u32 {
        let ct = c.encrypt(first.aes, b"", b"after").unwrap();
        assert!(!old.contains(&&ct[..GCM_NONCE_LEN]));
        assert_eq!(ct[8..12], (4 + n).to_be_bytes());
    }
    // Data sealed before the restart opens.
    assert_eq!(c.unseal(&first.data_blob).unwrap().data, b"a disk key");
    // A second import, or an older state in the same boot: refused.
    assert_eq!(
        status(c.import_state(&first.state).unwrap_err()),
        Status::VaultNotEmpty
    );
    for k in c.list().unwrap() {
        c.delete(k.key_id.get()).unwrap();
    }
    assert_eq!(
        status(c.import_state(&first.early_state).unwrap_err()),
        Status::StateRollback
    );
    assert!(c.list().unwrap().is_empty());
}

#[test]
fn another_image_or_chip_cannot_open_the_state() {
    let d = dir("other");
    let first = first_boot("other-1");
    // Another guest image (the launch measurement covers it).
    let other_guest = d.join("relay-guest-variant");
    std::fs::write(&other_guest, nitride_tests::relay_guest_variant()).unwrap();
    {
        let (_vm, mut c) = boot("other-image", Some(&other_guest), None);
        assert_eq!(
            status(c.import_state(&first.state).unwrap_err()),
            Status::SealedBlobInvalid
        );
        assert_eq!(
            status(c.unseal(&first.data_blob).unwrap_err()),
            Status::SealedBlobInvalid
        );
        assert!(c.list().unwrap().is_empty(), "the vault is unchanged");
    }
    // Another development chip: another chip secret.
    let other_chip = psp_variant(&d, "dev-psp-other-chip.bin", |h| h.chip_secret[0] ^= 1);
    {
        let (_vm, mut c) = boot("other-chip", None, Some(&other_chip));
        assert_eq!(
            status(c.import_state(&first.state).unwrap_err()),
            Status::SealedBlobInvalid
        );
        assert!(c.list().unwrap().is_empty(), "the vault is unchanged");
    }
}

#[test]
fn a_raised_tcb_imports_the_old_state_and_reseals_it() {
    let d = dir("tcb");
    let first = first_boot("tcb-1");
    // A firmware update between boots: the microcode SPL (byte 7) goes up by one.
    let raised = psp_variant(&d, "dev-psp-raised-tcb.bin", |h| {
        let mut tcb = h.tcb_version.get().to_le_bytes();
        tcb[7] += 1;
        h.tcb_version = tcb_u64(tcb);
    });
    let resealed = {
        let (_vm, mut c) = boot("tcb-2", None, Some(&raised));
        let r = c.import_state(&first.state).unwrap();
        assert_eq!(r.keys, 3);
        let resealed = r
            .resealed
            .expect("a blob sealed at the current TCB comes back");
        assert_ne!(
            resealed[24..32],
            first.state[24..32],
            "the header's TCB moved"
        );
        let sig = c.sign(first.ecdsa, b"after the update").unwrap();
        assert!(openssl_verifies(&d, &first.spki, b"after the update", &sig));
        resealed
    };
    // The next boot (same raised TCB) imports the resealed blob without resealing.
    let (_vm, mut c) = boot("tcb-3", None, Some(&raised));
    let r = c.import_state(&resealed).unwrap();
    assert_eq!((r.keys, r.resealed), (3, None));
    assert_eq!(c.public_key(first.ecdsa).unwrap(), first.spki);
}

fn tcb_u64(bytes: [u8; 8]) -> zerocopy::little_endian::U64 {
    zerocopy::little_endian::U64::from_bytes(bytes)
}
