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

pub use nitride_guest_driver::relay::RelayClient;
pub use nitride_guest_driver::vhsm::{VhsmClient, VhsmError};
pub use nitride_qemu::RunningVm;

/// Boot the production SVSM with the relay guest in a fresh directory named after
/// the test, and connect a typed client to it.
pub fn start_relay(test: &str, svsm_args: &str) -> (RunningVm, VhsmClient<RelayClient>) {
    let i = images();
    let dir = nitride_qemu::repo_root()
        .join("target")
        .join("e2e")
        .join(format!("{test}-{}", std::process::id()));
    let vm = match RunningVm::start(&i.svsm, &i.relay_guest, &dir, svsm_args) {
        Ok(vm) => vm,
        Err(e) => panic!("could not start the relay VM: {e}"),
    };
    let client = match RelayClient::connect(&vm.socket) {
        Ok(c) => c,
        Err(e) => panic!("could not connect to the relay: {e}"),
    };
    (vm, VhsmClient::new(client))
}
