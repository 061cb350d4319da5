//! The launch digest the virtual SNP machine computes over the SVSM's IGVM file (and
//! its PSP puts into every report) equals the one the host computes from the files
//! (`nitride_qemu::launch_measurement`); the machine starts its PSP from the dev-PSP
//! blob passed through fw_cfg and refuses to run without a valid one. Boots QEMU.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use nitride_qemu::snp::{outcome, MachineOutcome};
use nitride_qemu::{build_images, ensure_qemu, launch_measurement, measure, Boot, Images, Outcome};

fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        ensure_qemu().unwrap();
        build_images().unwrap()
    })
}

fn logged_digest(log: &str) -> Option<String> {
    log.lines()
        .filter(|l| l.starts_with("[snp-machine] "))
        .find_map(|l| l.split("launch digest ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
}

#[test]
fn machine_computes_the_digest_the_host_predicts() {
    let i = images();
    for (svsm, guest, args) in [
        (&i.svsm, &i.test_guest, "mode=calls"),
        (&i.svsm_fault_injection, &i.test_guest, "mode=calls"),
    ] {
        let out = Boot::new(svsm, guest, args).run().unwrap();
        assert_eq!(out.outcome(), Outcome::GuestPass, "{}", out.svsm_log);
        let want = measure::hex(&launch_measurement(svsm, guest).unwrap());
        assert_eq!(
            logged_digest(&out.svsm_log).as_deref(),
            Some(want.as_str()),
            "{}",
            out.svsm_log
        );
    }
    // Different images, different measurements.
    assert_ne!(
        launch_measurement(&i.svsm, &i.test_guest).unwrap(),
        launch_measurement(&i.svsm, &i.relay_guest).unwrap()
    );
    assert_ne!(
        launch_measurement(&i.svsm, &i.test_guest).unwrap(),
        launch_measurement(&i.svsm_fault_injection, &i.test_guest).unwrap()
    );
}

#[test]
fn malformed_blob_stops_the_machine() {
    let i = images();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("dev-psp.bin");
    // A valid blob with one byte of its magic changed.
    let mut blob = std::fs::read(nitride_qemu::ensure_dev_chain().unwrap().blob).unwrap();
    blob[0] ^= 0x20;
    std::fs::write(&bad, &blob).unwrap();
    let mut boot = Boot::new(&i.svsm, &i.test_guest, "mode=calls");
    boot.dev_psp = Some(bad);
    let out = boot.run().unwrap();
    assert_eq!(
        outcome(&out),
        MachineOutcome::MachineFatal,
        "{}",
        out.svsm_log
    );
    assert!(
        out.svsm_log.contains("[snp-machine] PSP: "),
        "{}",
        out.svsm_log
    );
    assert!(!out.console.contains("[guest]"), "{}", out.console);
}
