//! The development chain: it verifies through an explicitly trusted development
//! root and never through AMD's; the blob carries what the firmware needs; the cache
//! is reused when consistent and regenerated when not.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use nitride_guest_driver::verify::{RootUsed, TrustAnchors, VerifyError};
use nitride_protocol::emulated::dev_psp::{self, BlobHeader};
use nitride_protocol::snp::certs::{entries, CertKind};
use nitride_protocol::snp::Generation;
use nitride_qemu::dev_chain::{ensure_dev_chain_in, ROOT_LABEL};
use nitride_qemu::ensure_dev_chain;
use p384::ecdsa::VerifyingKey;
use zerocopy::FromBytes;

#[test]
fn dev_vcek_chains_to_the_development_root_only() {
    let chain = ensure_dev_chain().unwrap();
    let ark = fs::read(&chain.ark_pem).unwrap();
    let ask = fs::read(&chain.ask_pem).unwrap();
    let vcek = fs::read(&chain.vcek_pem).unwrap();
    let mut dev = TrustAnchors::empty();
    dev.add_extra_root(ROOT_LABEL, Generation::Genoa, &ark, Some(&ask), None)
        .unwrap();
    let e = dev
        .verify_endorsement(&vcek, Some(Generation::Genoa))
        .unwrap();
    assert_eq!(
        e.root,
        RootUsed::Extra {
            label: "development".into(),
            generation: Generation::Genoa
        }
    );
    assert_eq!(e.extensions.hw_id.as_deref(), Some(&dev_psp::CHIP_ID[..]));
    assert_eq!(
        e.extensions.product_name.as_deref(),
        Some(dev_psp::PRODUCT_NAME)
    );
    assert_eq!(
        (
            e.extensions.bootloader,
            e.extensions.tee,
            e.extensions.snp,
            e.extensions.microcode
        ),
        (
            dev_psp::TCB_BOOTLOADER,
            dev_psp::TCB_TEE,
            dev_psp::TCB_SNP,
            dev_psp::TCB_MICROCODE
        )
    );
    // The DER file is the same certificate.
    let der = fs::read(&chain.vcek_der).unwrap();
    assert!(dev.verify_endorsement(&der, None).is_ok());
    // The helper gives the same anchors.
    assert!(chain
        .trust_anchors()
        .unwrap()
        .verify_endorsement(&vcek, Some(Generation::Genoa))
        .is_ok());

    // AMD's roots refuse it.
    let amd = TrustAnchors::amd_builtin().unwrap();
    let err = amd
        .verify_endorsement(&vcek, Some(Generation::Genoa))
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::CertSignature { .. }),
        "AMD roots: {err:?}"
    );
    // And the development ARK cannot pose as AMD's.
    let mut pinned = TrustAnchors::empty();
    assert!(matches!(
        pinned.add_amd(Generation::Genoa, &ark, Some(&ask), None),
        Err(VerifyError::ArkNotPinned { .. })
    ));
}

#[test]
fn blob_carries_scalar_secret_and_table() {
    let chain = ensure_dev_chain().unwrap();
    let blob = fs::read(&chain.blob).unwrap();
    let (h, table) = BlobHeader::read_from_prefix(&blob).unwrap();
    assert_eq!(h.magic, dev_psp::MAGIC);
    assert_eq!(h.launch_flags.get(), 0);
    assert_eq!(h.tcb_version.get(), dev_psp::TCB_VERSION);
    assert_eq!(h.cert_table_len.get() as usize, table.len());
    assert!(table.len() <= dev_psp::MAX_CERT_TABLE);
    assert_eq!(
        h.chip_secret[..],
        fs::read(chain.dir.join("private/chip-secret.bin")).unwrap()[..]
    );
    let certs: Vec<_> = entries(table).map(|e| e.unwrap()).collect();
    let kinds: Vec<_> = certs.iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds, [CertKind::Vcek, CertKind::Ask, CertKind::Ark]);
    assert_eq!(certs[0].1, &fs::read(&chain.vcek_der).unwrap()[..]);
    // The scalar is the VCEK's private key.
    let sk = p384::SecretKey::from_bytes(&h.vcek_scalar.into()).unwrap();
    let cert = nitride_guest_driver::verify::Cert::from_pem_or_der(
        nitride_guest_driver::verify::CertRole::Vcek,
        certs[0].1,
    )
    .unwrap();
    assert_eq!(
        VerifyingKey::from(sk.public_key()),
        cert.p384_key(nitride_guest_driver::verify::CertRole::Vcek)
            .unwrap()
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in [
            chain.blob.clone(),
            chain.dir.join("private/vcek.key"),
            chain.dir.join("private/ark.key"),
            chain.dir.join("private/chip-secret.bin"),
        ] {
            let mode = fs::metadata(&f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", f.display());
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to.join("private")).unwrap();
    for sub in ["", "private"] {
        for e in fs::read_dir(from.join(sub)).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                fs::copy(e.path(), to.join(sub).join(e.file_name())).unwrap();
            }
        }
    }
}

#[test]
fn cache_is_reused_repaired_and_regenerated() {
    let chain = ensure_dev_chain().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev-chain");
    copy_dir(&chain.dir, &dir);

    let again = ensure_dev_chain_in(&dir).unwrap();
    assert!(!again.generated && !again.blob_written);
    let vcek = fs::read(&again.vcek_pem).unwrap();

    // A damaged blob is rebuilt from the chain.
    let mut blob = fs::read(&again.blob).unwrap();
    blob[20] ^= 1;
    fs::write(&again.blob, &blob).unwrap();
    let again = ensure_dev_chain_in(&dir).unwrap();
    assert!(!again.generated && again.blob_written);
    assert_eq!(
        fs::read(&again.blob).unwrap(),
        fs::read(&chain.blob).unwrap()
    );

    // A VCEK that no longer matches its key means a new chain.
    fs::copy(&chain.ark_pem, &again.vcek_pem).unwrap();
    let regen = ensure_dev_chain_in(&dir).unwrap();
    assert!(regen.generated);
    assert_ne!(fs::read(&regen.vcek_pem).unwrap(), vcek);
    assert!(regen
        .trust_anchors()
        .unwrap()
        .verify_endorsement(&fs::read(&regen.vcek_pem).unwrap(), None)
        .is_ok());
}
