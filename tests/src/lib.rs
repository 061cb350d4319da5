//! Shared helpers for the end-to-end tests: build the images once per test binary
//! and boot them.

use std::sync::OnceLock;

pub use nitride_qemu::{Boot, Images, Outcome, RunOutput};

/// The images, built once per test process (QEMU is installed first if missing).
pub fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        if let Err(e) = nitride_qemu::ensure_qemu() {
            panic!("end-to-end tests need QEMU: {e}");
        }
        match nitride_qemu::build_images() {
            Ok(i) => i,
            Err(e) => panic!("building the images failed: {e}"),
        }
    })
}

/// Boot the production SVSM with the test guest in `mode`.
pub fn boot_guest(mode: &str) -> RunOutput {
    let i = images();
    run(Boot::new(
        &i.svsm,
        Some(&i.test_guest),
        &format!("mode={mode}"),
    ))
}

/// Boot and return the output, failing the test if QEMU cannot be started.
pub fn run(boot: Boot) -> RunOutput {
    match boot.run() {
        Ok(o) => o,
        Err(e) => panic!("QEMU failed to run: {e}"),
    }
}

/// Panic with the console when `cond` is false.
#[track_caller]
pub fn expect(out: &RunOutput, cond: bool, what: &str) {
    assert!(
        cond,
        "{what}\n--- console ---\n{}\n--- stderr ---\n{}",
        out.console, out.stderr
    );
}
