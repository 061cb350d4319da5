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

/// Boot the production SVSM with the test guest in `mode` (on the virtual SNP
/// machine when [`on_snp`]).
pub fn boot_guest(mode: &str) -> RunOutput {
    if on_snp() {
        return boot_guest_snp(mode);
    }
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

/// Whether the end-to-end suites run on the virtual SNP machine: set
/// `NITRIDE_E2E_PLATFORM=snp` (`cargo xtask test --snp`) and every suite that starts
/// its VMs through [`start_relay`] / [`start_relay_with`] boots the SNP SVSM from an
/// IGVM image with the SNP relay guest at VMPL1 instead of the emulated platform.
pub fn on_snp() -> bool {
    std::env::var("NITRIDE_E2E_PLATFORM").is_ok_and(|v| v == "snp")
}

/// The relay guest of the selected platform ([`on_snp`]): the image a test copies
/// to make a variant for [`start_relay_with`].
pub fn relay_guest() -> &'static std::path::Path {
    let i = images();
    if on_snp() {
        &i.relay_guest_snp
    } else {
        &i.relay_guest
    }
}

/// The launch measurement every report of a [`start_relay`] VM carries: the runner's
/// measurement of the production SVSM with the relay guest, or on SNP the launch
/// digest of the relay IGVM image (what the machine's PSP puts in MEASUREMENT).
pub fn relay_measurement() -> [u8; 48] {
    relay_measurement_with(None)
}

/// [`relay_measurement`] of a VM under the launch configuration `config` (`None`: the
/// default one), as [`start_relay_with`] starts it: on SNP the configuration is a
/// measured page of the IGVM image, on the emulated platform the firmware folds its
/// digest in.
pub fn relay_measurement_with(
    config: Option<&nitride_protocol::launch_config::LaunchConfig>,
) -> [u8; 48] {
    let i = images();
    let m = if on_snp() {
        let read =
            |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        read(&i.svsm_snp).and_then(|svsm| {
            nitride_qemu::igvm::build_svsm(&svsm, &read(&i.relay_guest_snp)?, config)
                .and_then(|f| nitride_qemu::igvm::launch_digest(&f))
                .map_err(|e| e.to_string())
        })
    } else {
        let file = config.map(|c| {
            let path = std::env::temp_dir().join(format!(
                "nitride-launch-config-{}-{}.bin",
                std::process::id(),
                c.digest()[..8]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            ));
            std::fs::write(&path, c.to_bytes()).map(|()| path)
        });
        match file.transpose() {
            Ok(file) => nitride_qemu::measure::launch_measurement_with(
                &i.svsm,
                &i.relay_guest,
                file.as_deref(),
            )
            .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    match m {
        Ok(m) => m,
        Err(e) => panic!("the launch measurement of the relay VM: {e}"),
    }
}

/// Boot the production SVSM with the relay guest in a fresh directory named after
/// the test, and connect a typed client to it (on the platform [`on_snp`] selects).
pub fn start_relay(test: &str, svsm_args: &str) -> (RunningVm, VhsmClient<RelayClient>) {
    start_relay_with(test, svsm_args, Relay::default())
}

/// The directory of a test's VM: `target/e2e/TEST-PID`.
pub fn test_dir(test: &str) -> std::path::PathBuf {
    nitride_qemu::repo_root()
        .join("target")
        .join("e2e")
        .join(format!("{test}-{}", std::process::id()))
}

/// What a relay VM differs in from [`start_relay`]'s (each `None`: the default).
#[derive(Clone, Copy, Debug, Default)]
pub struct Relay<'a> {
    /// Another relay guest image (the platform's relay guest when `None`).
    pub guest: Option<&'a std::path::Path>,
    /// Another dev-PSP blob (another chip secret or TCB; the runner's when `None`).
    pub dev_psp: Option<&'a std::path::Path>,
    /// A measured launch configuration (the default one when `None`).
    pub config: Option<&'a nitride_protocol::launch_config::LaunchConfig>,
}

impl<'a> Relay<'a> {
    /// The default VM under the launch configuration `config`.
    pub fn config(config: &'a nitride_protocol::launch_config::LaunchConfig) -> Self {
        Self {
            config: Some(config),
            ..Self::default()
        }
    }
}

/// A launch configuration alone (`start_relay_with(test, "", Some(&config))`).
impl<'a> From<Option<&'a nitride_protocol::launch_config::LaunchConfig>> for Relay<'a> {
    fn from(config: Option<&'a nitride_protocol::launch_config::LaunchConfig>) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }
}

impl<'a> From<&Relay<'a>> for Relay<'a> {
    fn from(relay: &Relay<'a>) -> Self {
        *relay
    }
}

/// [`start_relay`] with the differences `relay` names (a [`Relay`], or just an
/// `Option<&LaunchConfig>`), in [`test_dir`], on the platform [`on_snp`] selects.
pub fn start_relay_with<'a>(
    test: &str,
    svsm_args: &str,
    relay: impl Into<Relay<'a>>,
) -> (RunningVm, VhsmClient<RelayClient>) {
    let relay = &relay.into();
    if on_snp() {
        return start_relay_snp_with(test, svsm_args, relay);
    }
    let i = images();
    let dir = test_dir(test);
    let config_file = relay.config.map(|c| {
        let path = dir.join("launch-config.bin");
        if let Err(e) =
            std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, c.to_bytes()))
        {
            panic!("could not write {}: {e}", path.display());
        }
        path
    });
    let vm = match RunningVm::start_with_options(
        &i.svsm,
        relay.guest.unwrap_or(&i.relay_guest),
        &dir,
        svsm_args,
        relay.dev_psp,
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

/// The IGVM file of the SNP SVSM with the SNP test guest (written once per test
/// process).
pub fn test_igvm() -> &'static std::path::Path {
    static IGVM: OnceLock<std::path::PathBuf> = OnceLock::new();
    IGVM.get_or_init(|| {
        let i = images();
        match nitride_qemu::snp::svsm_igvm(&i.svsm_snp, &i.test_guest_snp, None, "svsm-test-guest")
        {
            Ok(p) => p,
            Err(e) => panic!("IGVM of the SVSM and the test guest: {e}"),
        }
    })
}

/// Boot the SNP SVSM with the SNP test guest in `mode` on the virtual SNP machine.
pub fn boot_guest_snp(mode: &str) -> RunOutput {
    let i = images();
    let mut boot = nitride_qemu::snp::SnpBoot::new(&i.machine, test_igvm());
    boot.cmdline = format!("-- mode={mode}");
    match boot.run() {
        Ok(o) => o,
        Err(e) => panic!("QEMU failed to run: {e}"),
    }
}

/// The IGVM file of the SNP SVSM with the SNP relay guest (written once per test
/// process).
pub fn relay_igvm() -> &'static std::path::Path {
    static IGVM: OnceLock<std::path::PathBuf> = OnceLock::new();
    IGVM.get_or_init(|| {
        let i = images();
        match nitride_qemu::snp::svsm_igvm(
            &i.svsm_snp,
            &i.relay_guest_snp,
            None,
            "svsm-relay-guest",
        ) {
            Ok(p) => p,
            Err(e) => panic!("IGVM of the SVSM and the relay guest: {e}"),
        }
    })
}

/// Boot the SNP SVSM with the SNP relay guest on the virtual SNP machine in a fresh
/// directory named after the test, and connect a typed client to it (whatever
/// [`on_snp`] says).
pub fn start_relay_snp(test: &str, svsm_args: &str) -> (RunningVm, VhsmClient<RelayClient>) {
    start_relay_snp_with(test, svsm_args, &Relay::default())
}

/// [`start_relay_snp`] with the differences `relay` names (whatever [`on_snp`]
/// says): a guest or launch configuration other than the default gets its own IGVM
/// file, `svsm-TEST.igvm`.
pub fn start_relay_snp_with(
    test: &str,
    svsm_args: &str,
    relay: &Relay<'_>,
) -> (RunningVm, VhsmClient<RelayClient>) {
    let i = images();
    let dir = test_dir(test);
    let igvm = match (relay.guest, relay.config) {
        (None, None) => relay_igvm().to_path_buf(),
        (guest, config) => {
            let guest = guest.unwrap_or(&i.relay_guest_snp);
            match nitride_qemu::snp::svsm_igvm(&i.svsm_snp, guest, config, &format!("svsm-{test}"))
            {
                Ok(p) => p,
                Err(e) => panic!("IGVM of the SVSM and {}: {e}", guest.display()),
            }
        }
    };
    let vm = match RunningVm::start_snp(&i.machine, &igvm, &dir, svsm_args, relay.dev_psp) {
        Ok(vm) => vm,
        Err(e) => panic!("could not start the relay VM: {e}"),
    };
    let client = match RelayClient::connect(&vm.socket) {
        Ok(c) => c,
        Err(e) => panic!("could not connect to the relay: {e}"),
    };
    (vm, VhsmClient::new(client))
}

/// The test KBS (tests/kbs, Python) as a process on a free loopback port, killed
/// when dropped; its stderr log in a file.
#[derive(Debug)]
pub struct Kbs {
    child: std::process::Child,
    /// Its base URL (`http://127.0.0.1:PORT`).
    pub url: String,
    log: std::path::PathBuf,
}

impl Drop for Kbs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Kbs {
    /// Start it with `args`, its log in `dir/NAME.log`.
    pub fn start(dir: &std::path::Path, name: &str, args: &[&str]) -> Self {
        use std::io::BufRead as _;
        use std::process::{Command, Stdio};
        let root = nitride_qemu::repo_root();
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new("python3")
            .arg(root.join("tests/kbs/kbs.py"))
            .args(["--port", "0", "--dev-root"])
            .arg(root.join("target/dev-chain"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("the KBS log file"))
            .spawn()
            .expect("python3 runs the test KBS (pip install -r tests/kbs/requirements.txt)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("the KBS stdout is piped"))
            .read_line(&mut line)
            .expect("the KBS first line");
        let url = line
            .trim()
            .strip_prefix("kbs: listening on ")
            .unwrap_or_else(|| panic!("KBS did not start: {line:?}"))
            .to_string();
        Self { child, url, log }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the log shows `tag` within a few seconds (the KBS may write its log
    /// line just after it answered).
    pub fn logged(&self, tag: &str) -> bool {
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(10) {
            if self.log().contains(tag) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }
}
