//! The SVSM's SNP paths end to end on the virtual SNP machine: vHSM requests from
//! the relay guest at VMPL1 and VMPL0 reports through GHCB guest requests, and
//! sealing keys from MSG_KEY_REQ across a restart and on another chip.

#[test]
fn snp_relay_vhsm_and_attestation() {
    use nitride_protocol::vhsm::{KeyTemplate, KeyType, KeyUsage, VmplSet};
    let (vm, mut c) = nitride_tests::start_relay("snp-relay", "");
    let t = KeyTemplate::new(
        KeyType::EcdsaP384,
        KeyUsage::SIGN | KeyUsage::VERIFY | KeyUsage::ATTEST,
        VmplSet::all(),
        false,
    );
    let key = c.generate(t, b"snp").expect("generate").key_id.get();
    let sig = c.sign(key, b"on SNP").expect("sign");
    c.verify(key, b"on SNP", &sig).expect("verify");
    assert_eq!(c.random(32).expect("random").len(), 32);
    let ev = c.attest_key(key, &[7u8; 64]).expect("attest key");
    let anchors = nitride_tests::dev_anchors();
    let v = nitride_guest_driver::verify::verify(
        &anchors,
        &ev.report,
        &nitride_tests::endorsement_key(&ev.certificates),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", vm.svsm_log_text()));
    assert_eq!(v.report.vmpl.get(), 0, "a VMPL0 report");
    println!("{}", vm.svsm_log_text());
}

/// Sealing on SNP: the keys come from MSG_KEY_REQ through GHCB guest requests. Data
/// and state sealed in one boot open in a new boot of the same IGVM image on the same
/// chip, and not on another chip (another chip secret in the machine's PSP).
#[test]
fn snp_sealing_survives_a_restart() {
    use nitride_protocol::vhsm::{KeyTemplate, KeyType, KeyUsage, Status, VmplSet};
    use nitride_tests::{start_relay, start_relay_with, Relay, VhsmError};
    use zerocopy::FromBytes;
    let t =
        KeyTemplate::new(KeyType::EcdsaP384, KeyUsage::SIGN, VmplSet::all(), false).persistent();
    let (key, spki, blob, state) = {
        let (_vm, mut c) = start_relay("snp-seal-1", "");
        let key = c.generate(t, b"kept").expect("generate").key_id.get();
        let blob = c.seal(VmplSet::VMPL1, b"a disk key").expect("seal");
        let (_, state) = c.export_state().expect("export");
        (key, c.public_key(key).expect("public key"), blob, state)
    };
    {
        let (_vm, mut c) = start_relay("snp-seal-2", "");
        assert_eq!(c.unseal(&blob).expect("unseal").data, b"a disk key");
        assert_eq!(c.import_state(&state).expect("import").keys, 1);
        assert_eq!(c.public_key(key).expect("restored key"), spki);
    }
    // Another chip: the runner's dev-PSP blob with another chip secret.
    nitride_qemu::ensure_dev_chain().expect("dev chain");
    let mut psp = std::fs::read(nitride_qemu::dev_psp_blob_path()).expect("dev-PSP blob");
    let (header, _) = nitride_protocol::emulated::dev_psp::BlobHeader::mut_from_prefix(&mut psp)
        .expect("blob header");
    header.chip_secret[0] ^= 1;
    let dir = nitride_qemu::repo_root().join("target").join("e2e");
    let other = dir.join(format!("snp-other-chip-{}.bin", std::process::id()));
    std::fs::write(&other, psp).expect("write the blob");
    let (_vm, mut c) = start_relay_with(
        "snp-seal-3",
        "",
        Relay {
            dev_psp: Some(&other),
            ..Relay::default()
        },
    );
    for e in [
        c.unseal(&blob)
            .map(|_| ())
            .expect_err("unseal on another chip"),
        c.import_state(&state)
            .map(|_| ())
            .expect_err("import on another chip"),
    ] {
        assert!(
            matches!(e, VhsmError::Status(Status::SealedBlobInvalid)),
            "{e:?}"
        );
    }
}
