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

/// Panic with the SVSM's log, the guest's console and QEMU's messages when `cond`
/// is false.
#[track_caller]
pub fn expect(out: &RunOutput, cond: bool, what: &str) {
    assert!(
        cond,
        "{what}\n--- SVSM log ---\n{}\n--- guest console ---\n{}\n--- stderr ---\n{}",
        out.svsm_log, out.console, out.stderr
    );
}

pub use nitride_guest_driver::relay::RelayClient;
pub use nitride_guest_driver::vhsm::{VhsmClient, VhsmError};
pub use nitride_qemu::RunningVm;

/// Boot the production SVSM with the relay guest in a fresh directory named after
/// the test, and connect a typed client to it.
pub fn start_relay(test: &str, svsm_args: &str) -> (RunningVm, VhsmClient<RelayClient>) {
    start_relay_with(test, svsm_args, None)
}

/// The directory of a test's VM.
pub fn test_dir(test: &str) -> std::path::PathBuf {
    nitride_qemu::repo_root()
        .join("target")
        .join("e2e")
        .join(format!("{test}-{}", std::process::id()))
}

/// [`start_relay`] under a measured launch configuration (`None`: the default).
pub fn start_relay_with(
    test: &str,
    svsm_args: &str,
    config: Option<&nitride_protocol::launch_config::LaunchConfig>,
) -> (RunningVm, VhsmClient<RelayClient>) {
    let i = images();
    let dir = test_dir(test);
    let config_file = config.map(|c| {
        let path = dir.join("launch-config.bin");
        if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, c.to_bytes()))
        {
            panic!("could not write {}: {e}", path.display());
        }
        path
    });
    let vm = match RunningVm::start_with(
        &i.svsm,
        &i.relay_guest,
        &dir,
        svsm_args,
        config_file.as_deref(),
    ) {
        Ok(vm) => vm,
        Err(e) => panic!("could not start the relay VM: {e}"),
    };
    let client = match RelayClient::connect(&vm.socket) {
        Ok(c) => c,
        Err(e) => panic!("could not connect to the relay: {e}"),
    };
    (vm, VhsmClient::new(client))
}

/// Where the runner keeps the development endorsement chain of the emulated PSP
/// (`ark.pem`, `ask.pem`, `vcek.pem`, `vcek.der`): the directory a verifier passes to
/// `--trust-dev-root` / `TrustAnchors::add_dev_root_dir`. Created by the runner when
/// it starts a VM with the emulated PSP.
pub fn dev_chain_dir() -> std::path::PathBuf {
    nitride_qemu::repo_root().join("target").join("dev-chain")
}

/// Trust anchors for reports of the emulated platform: the bundled AMD roots plus,
/// explicitly, the development root in [`dev_chain_dir`].
pub fn dev_anchors() -> nitride_guest_driver::verify::TrustAnchors {
    let mut a = match nitride_guest_driver::verify::TrustAnchors::amd_builtin() {
        Ok(a) => a,
        Err(e) => panic!("bundled AMD roots: {e}"),
    };
    if let Err(e) = a.add_dev_root_dir(&dev_chain_dir()) {
        panic!("development root: {e}");
    }
    a
}

/// The endorsement key for evidence with certificate table `table`: its VCEK (or
/// VLEK), else the development VCEK in [`dev_chain_dir`].
pub fn endorsement_key(table: &[u8]) -> Vec<u8> {
    match nitride_guest_driver::verify::table_certs(table) {
        Ok(c) if c.endorsement.is_some() => c.endorsement.unwrap_or_default().to_vec(),
        Ok(_) => match std::fs::read(dev_chain_dir().join("vcek.der")) {
            Ok(v) => v,
            Err(e) => panic!("no VCEK in the certificate table nor in the dev chain: {e}"),
        },
        Err(e) => panic!("certificate table: {e}"),
    }
}
