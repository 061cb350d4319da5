//! The launch measurement the firmware logs at boot equals the one the host
//! computes from the files (`nitride_qemu::launch_measurement`); the firmware starts
//! the emulated PSP from the dev-PSP blob passed through fw_cfg, and a boot without
//! the blob, or with a malformed one, runs without a PSP. Boots QEMU.
#![allow(clippy::unwrap_used)]

use std::sync::OnceLock;

use nitride_qemu::{build_images, ensure_qemu, launch_measurement, measure, Boot, Images, Outcome};

fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        ensure_qemu().unwrap();
        build_images().unwrap()
    })
}

fn logged_measurement(console: &str) -> Option<String> {
    console
        .lines()
        .filter(|l| l.contains("[svsm]"))
        .find_map(|l| l.split("launch measurement ").nth(1))
        .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
}

#[test]
fn firmware_logs_the_measurement_the_host_predicts() {
    let i = images();
    for (svsm, guest, args) in [
        (&i.svsm, &i.test_guest, "mode=calls"),
        (&i.svsm_fault_injection, &i.test_guest, "mode=calls"),
    ] {
        let out = Boot::new(svsm, Some(guest), args).run().unwrap();
        assert_eq!(out.outcome(), Outcome::GuestPass, "{}", out.svsm_log);
        let want = measure::hex(&launch_measurement(svsm, guest).unwrap());
        assert_eq!(
            logged_measurement(&out.svsm_log).as_deref(),
            Some(want.as_str()),
            "{}",
            out.svsm_log
        );
        let ready = format!("emulated PSP ready: measurement {want}, chip NITRIDE-DEV-CHIP");
        assert!(
            out.svsm_lines().any(|l| l.contains(&ready)),
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
fn boot_without_the_blob_has_no_psp() {
    let i = images();
    let mut boot = Boot::new(&i.svsm, Some(&i.test_guest), "mode=calls");
    boot.dev_psp = None;
    assert!(!boot.qemu_args().iter().any(|a| a == "-fw_cfg"));
    let out = boot.run().unwrap();
    assert_eq!(out.outcome(), Outcome::GuestPass, "{}", out.svsm_log);
    assert!(
        out.svsm_lines()
            .any(|l| l.contains("no dev-PSP blob in fw_cfg")),
        "{}",
        out.svsm_log
    );
    assert!(
        !out.svsm_log.contains("emulated PSP ready"),
        "{}",
        out.svsm_log
    );
    // The measurement is still logged.
    assert!(logged_measurement(&out.svsm_log).is_some());
}

#[test]
fn malformed_blob_means_no_psp() {
    let i = images();
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("dev-psp.bin");
    // A valid blob with one byte of its magic changed.
    let mut blob = std::fs::read(nitride_qemu::ensure_dev_chain().unwrap().blob).unwrap();
    blob[0] ^= 0x20;
    std::fs::write(&bad, &blob).unwrap();
    let mut boot = Boot::new(&i.svsm, Some(&i.test_guest), "mode=calls");
    boot.dev_psp = Some(bad);
    let out = boot.run().unwrap();
    assert_eq!(out.outcome(), Outcome::GuestPass, "{}", out.svsm_log);
    assert!(
        out.svsm_lines().any(|l| l.contains("dev-PSP blob refused")),
        "{}",
        out.svsm_log
    );
    assert!(
        !out.svsm_log.contains("emulated PSP ready"),
        "{}",
        out.svsm_log
    );
}
