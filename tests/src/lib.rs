//! Shared helpers for the end-to-end tests: build the images once per test binary
//! and boot them on the virtual SNP machine: the SVSM from an IGVM image at VMPL0,
//! the test or relay guest at VMPL1 (`docs/snp-machine.md`).

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
    run(Boot::new(&i.svsm, &i.test_guest, &format!("mode={mode}")))
}

/// Boot and return the output, failing the test if QEMU cannot be started.
pub fn run(boot: Boot) -> RunOutput {
    match boot.run() {
        Ok(o) => o,
        Err(e) => panic!("QEMU failed to run: {e}"),
    }
}

/// Panic with the host log (the machine's and the SVSM's lines), the guest's
/// console and QEMU's messages when `cond` is false.
#[track_caller]
pub fn expect(out: &RunOutput, cond: bool, what: &str) {
    assert!(
        cond,
        "{what}\n--- host log (machine and SVSM) ---\n{}\n--- guest console ---\n{}\n--- stderr ---\n{}",
        out.svsm_log, out.console, out.stderr
    );
}

pub use nitride_guest_driver::relay::RelayClient;
pub use nitride_guest_driver::vhsm::{VhsmClient, VhsmError};
pub use nitride_qemu::RunningVm;

/// The relay guest: the image a test copies to make a variant for
/// [`start_relay_with`].
pub fn relay_guest() -> &'static std::path::Path {
    &images().relay_guest
}

/// The relay guest, changed so that its launch measurement differs: an IGVM image
/// measures the loaded pages, so the first `PT_LOAD` segment loads one more byte, a
/// non-zero one from the padding after it (the page it ends in changes; the code
/// does not).
pub fn relay_guest_variant() -> Vec<u8> {
    let mut elf = match std::fs::read(relay_guest()) {
        Ok(e) => e,
        Err(e) => panic!("the relay guest: {e}"),
    };
    let u64_at =
        |e: &[u8], at: usize| u64::from_le_bytes(e[at..at + 8].try_into().expect("8 bytes"));
    let ph = u64_at(&elf, 0x20) as usize;
    assert_eq!(
        &elf[ph..ph + 4],
        &1u32.to_le_bytes(),
        "the first header loads"
    );
    let (offset, filesz, memsz) = (
        u64_at(&elf, ph + 8),
        u64_at(&elf, ph + 32),
        u64_at(&elf, ph + 40),
    );
    let end = (offset + filesz) as usize;
    assert_eq!(filesz, memsz, "the first segment has no .bss");
    assert!(!end.is_multiple_of(4096), "the segment ends inside a page");
    assert_eq!(elf[end], 0, "padding after the segment");
    elf[end] = 0x5A;
    for field in [ph + 32, ph + 40] {
        elf[field..field + 8].copy_from_slice(&(filesz + 1).to_le_bytes());
    }
    elf
}

/// The launch measurement every report of a [`start_relay`] VM carries: the launch
/// digest of the relay VM's IGVM file (what the PSP puts in MEASUREMENT).
pub fn relay_measurement() -> [u8; 48] {
    relay_measurement_with(None)
}

/// [`relay_measurement`] of a VM under the launch configuration `config` (`None`: the
/// default one), as [`start_relay_with`] starts it: the configuration is a measured
/// page of the IGVM file.
pub fn relay_measurement_with(
    config: Option<&nitride_protocol::launch_config::LaunchConfig>,
) -> [u8; 48] {
    let i = images();
    let read = |p: &std::path::Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let m = read(&i.svsm).and_then(|svsm| {
        nitride_qemu::igvm::build_svsm(&svsm, &read(&i.relay_guest)?, config)
            .and_then(|f| nitride_qemu::igvm::launch_digest(&f))
            .map_err(|e| e.to_string())
    });
    match m {
        Ok(m) => m,
        Err(e) => panic!("the launch measurement of the relay VM: {e}"),
    }
}

/// Boot the production SVSM with the relay guest in a fresh directory named after
/// the test, and connect a typed client to it.
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
    /// Another relay guest image (the relay guest when `None`).
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
/// `Option<&LaunchConfig>`), in [`test_dir`]: the VM's IGVM file, console, host log
/// and relay socket there.
pub fn start_relay_with<'a>(
    test: &str,
    svsm_args: &str,
    relay: impl Into<Relay<'a>>,
) -> (RunningVm, VhsmClient<RelayClient>) {
    let relay = &relay.into();
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

/// Where the runner keeps the development endorsement chain of the machine's PSP
/// (`ark.pem`, `ask.pem`, `vcek.pem`, `vcek.der`): the directory a verifier passes to
/// `--trust-dev-root` / `TrustAnchors::add_dev_root_dir`. Created by the runner when
/// it starts a VM with the machine's PSP.
pub fn dev_chain_dir() -> std::path::PathBuf {
    nitride_qemu::repo_root().join("target").join("dev-chain")
}

/// Trust anchors for reports of the virtual SNP machine: the bundled AMD roots plus,
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

/// Run `nitride ARGS` in this process (against the relay socket `sock` when given):
/// (exit code, stdout, error message).
pub fn nitride(sock: Option<&std::path::Path>, args: &[&str]) -> (i32, Vec<u8>, String) {
    use nitride_guest_driver::cli;
    let (result, out) = match sock {
        Some(s) => cli::run_with_socket(s, args),
        None => {
            let argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
            let mut out = Vec::new();
            let r = cli::run(&argv, &mut out);
            (r, out)
        }
    };
    match result {
        Ok(()) => (0, out, String::new()),
        Err(e) => (e.exit_code(), out, e.to_string()),
    }
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
