//! The host-side runner: builds the SVSM, the guest images and the virtual SNP
//! machine, makes sure QEMU is installed, packs the SVSM and a guest into an IGVM file
//! and boots it on the machine (stock QEMU; `docs/snp-machine.md`) with the devices the
//! guest contract names (COM1, the guest's console; `isa-debugcon` on port 0xE9, the
//! host log, where the machine and only VMPL0 write; `isa-debug-exit`, the machine's
//! exit status), capturing the guest's console, the host log and the exit status.
//!
//! The SVSM is judged by its own channel only: [`RunOutput::outcome`] accepts a
//! termination only as the machine reports it (with the requesting VMPL) and, from
//! VMPL0, with the matching verdict line in the SVSM's log; [`RunOutput::svsm_lines`]
//! reads the host log, never COM1 (a guest can print anything there, `[svsm]` lines
//! included). [`RunOutput::combined`] interleaves both channels in the order QEMU
//! wrote them, for people and for lining up benchmark figures, never for a verdict.
//!
//! Every boot hands the machine's PSP the development PSP blob through fw_cfg
//! ([`dev_chain`]); [`measure`] computes the launch digest the PSP reports.
//!
//! Used by `cargo xtask` (src/main.rs) and by the end-to-end tests in `tests/`.

pub mod dev_chain;
pub mod igvm;
pub mod measure;
pub mod snp;

pub use dev_chain::{dev_psp_blob_path, ensure_dev_chain, DevChain};
pub use measure::launch_measurement;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nitride_protocol::emulated::exit;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// A runner error.
#[derive(Debug)]
pub enum Error {
    /// A build step failed.
    Build(String),
    /// QEMU is missing and could not be installed.
    NoQemu(String),
    /// Starting or talking to QEMU failed.
    Io(std::io::Error),
    /// The development chain could not be generated or read.
    DevChain(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Build(s) => write!(f, "build failed: {s}"),
            Self::NoQemu(s) => write!(f, "{s}"),
            Self::Io(e) => write!(f, "I/O: {e}"),
            Self::DevChain(s) => write!(f, "development chain: {s}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Where images are built (a target directory of their own, so building them from
/// inside `cargo test` never waits on the outer build's lock).
pub fn images_dir() -> PathBuf {
    repo_root().join("target").join("images")
}

/// The built images.
#[derive(Clone, Debug)]
pub struct Images {
    /// The production SVSM (booted from IGVM at VMPL0 on the virtual SNP machine or
    /// an SNP host).
    pub svsm: PathBuf,
    /// The SVSM with `fault-injection` (honours `nitride.fault=`), for tests.
    pub svsm_fault_injection: PathBuf,
    /// The test guest (runs at VMPL1).
    pub test_guest: PathBuf,
    /// The relay guest (serves vHSM requests from COM2, at VMPL1).
    pub relay_guest: PathBuf,
    /// The virtual SNP machine.
    pub machine: PathBuf,
}

pub(crate) const TRIPLE: &str = "x86_64-unknown-linux-gnu";

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub(crate) fn cargo_build(args: &[&str], target_dir: &Path) -> Result<(), Error> {
    cargo_build_profile("release", None, args, target_dir)
}

/// The Cargo profile of the SVSM images (`[profile.firmware]` in the workspace
/// manifest: opt-level "z", fat LTO, the hot crypto crates at opt-level 3).
pub const FIRMWARE_PROFILE: &str = "firmware";

/// Target rustflags of the SVSM images: curve25519-dalek's portable 64-bit
/// backend (its AVX2 backend and tables are dead weight in an image whose CPUID has
/// no AVX2; `docs/benchmarks.md`, issue 15's size section).
pub const FIRMWARE_RUSTFLAGS: &str = "--cfg\x1fcurve25519_dalek_backend=\"serial\"";

/// `cargo build --profile <profile>` into `target_dir`, with `encoded_rustflags`
/// (`CARGO_ENCODED_RUSTFLAGS`, 0x1F-separated) for the target when given.
fn cargo_build_profile(
    profile: &str,
    encoded_rustflags: Option<&str>,
    args: &[&str],
    target_dir: &Path,
) -> Result<(), Error> {
    let mut cmd = Command::new(cargo());
    cmd.current_dir(repo_root())
        .args(["build", "--profile", profile, "--quiet"])
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir);
    if let Some(flags) = encoded_rustflags {
        cmd.env("CARGO_ENCODED_RUSTFLAGS", flags);
    }
    let status = cmd.status()?;
    if !status.success() {
        return Err(Error::Build(format!(
            "cargo build {} ({status})",
            args.join(" ")
        )));
    }
    Ok(())
}

/// Build every image (release profile; the SVSM images with [`FIRMWARE_PROFILE`]).
pub fn build_images() -> Result<Images, Error> {
    let dir = images_dir();
    // The production image, and one honouring `nitride.fault=` for the tests.
    for (features, sub) in [
        ("firmware", "svsm"),
        ("firmware,fault-injection", "svsm-fault-injection"),
    ] {
        let args = [
            "-p",
            "nitride-kernel",
            "--bin",
            "nitride-svsm",
            "--features",
            features,
        ];
        cargo_build_profile(
            FIRMWARE_PROFILE,
            Some(FIRMWARE_RUSTFLAGS),
            &args,
            &dir.join(sub),
        )?;
    }
    cargo_build(
        &["--manifest-path", "tests/guest/Cargo.toml"],
        &dir.join("guest"),
    )?;
    let machine = build_machine()?;
    let bin = |sub: &str, name: &str| dir.join(sub).join(TRIPLE).join("release").join(name);
    let firmware = |sub: &str| {
        dir.join(sub)
            .join(TRIPLE)
            .join(FIRMWARE_PROFILE)
            .join("nitride-svsm")
    };
    Ok(Images {
        svsm: firmware("svsm"),
        svsm_fault_injection: firmware("svsm-fault-injection"),
        test_guest: bin("guest", "test-guest"),
        relay_guest: bin("guest", "relay-guest"),
        machine,
    })
}

/// Build the virtual SNP machine (release); its image's path.
pub(crate) fn build_machine() -> Result<PathBuf, Error> {
    cargo_build(
        &[
            "-p",
            "nitride-snp-machine",
            "--bin",
            "snp-machine",
            "--features",
            "firmware",
        ],
        &images_dir().join("snp-machine"),
    )?;
    Ok(machine_image())
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Make sure `qemu-system-x86_64` exists: install Debian's `qemu-system-x86` with
/// apt-get when running as root, else say exactly what to install.
pub fn ensure_qemu() -> Result<(), Error> {
    if have(QEMU) {
        return Ok(());
    }
    if !is_root() {
        return Err(Error::NoQemu(format!(
            "{QEMU} not found: install it with `sudo apt-get install qemu-system-x86` (Debian/Ubuntu)"
        )));
    }
    eprintln!("{QEMU} not found: installing qemu-system-x86 with apt-get");
    let ok = Command::new("apt-get")
        .arg("update")
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
        && Command::new("apt-get")
            .args([
                "install",
                "-y",
                "--no-install-recommends",
                "qemu-system-x86",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
    if ok && have(QEMU) {
        Ok(())
    } else {
        Err(Error::NoQemu(format!(
            "could not install qemu-system-x86; {QEMU} is required"
        )))
    }
}

/// One boot of the virtual SNP machine: the SVSM and a guest packed into an IGVM file
/// ([`igvm::build_svsm`], with the measured launch configuration) and launched at
/// VMPL0 by the machine, the guest at VMPL1 (`docs/snp-machine.md`). The machine
/// reads the dev-PSP blob through fw_cfg and plays the PSP with it.
#[derive(Clone, Debug)]
pub struct Boot {
    /// The SNP SVSM image (ELF).
    pub svsm: PathBuf,
    /// The guest image (an SNP guest ELF).
    pub guest: PathBuf,
    /// SVSM options (`nitride.*`), the IGVM command line before ` -- `.
    pub svsm_args: String,
    /// The guest's command line (after ` -- `).
    pub guest_args: String,
    /// Count instructions (`-icount shift=0`): the guest's TSC then counts
    /// instructions.
    pub icount: bool,
    /// More QEMU arguments.
    pub extra: Vec<String>,
    /// Kill QEMU after this long.
    pub timeout: Duration,
    /// Once the guest's console shows this text, let QEMU run this much longer and
    /// then stop it (reported as a timeout), so that a test of a guest that should
    /// keep running does not depend on how fast the machine boots.
    pub settle: Option<(String, Duration)>,
    /// Write the guest's console (COM1) to this file instead of QEMU's stdout.
    pub console_file: Option<PathBuf>,
    /// Write the host log (the machine's lines and the SVSM's log, the debug console
    /// on port 0xE9) to this file. `None`: [`Boot::run`] uses a temporary file.
    pub svsm_log: Option<PathBuf>,
    /// Also append both channels, in the order QEMU wrote them, to this file (QEMU's
    /// chardev `logfile`). For reading along and for benchmarks, never for verdicts:
    /// the guest controls half of it.
    pub combined_log: Option<PathBuf>,
    /// Serve COM2 (the relay channel) on this Unix socket.
    pub relay_socket: Option<PathBuf>,
    /// The dev-PSP blob the machine's PSP gets (another chip secret or TCB); the
    /// runner's development chain's when `None`.
    pub dev_psp: Option<PathBuf>,
    /// The measured launch configuration (vault policy, owner key), a page of the
    /// IGVM file; `None`: the default configuration.
    pub launch_config: Option<PathBuf>,
    /// The virtual SNP machine's image ([`Images::machine`]).
    pub machine: PathBuf,
}

impl Boot {
    /// A boot of `svsm` with `guest` and the guest command line `guest_args`.
    pub fn new(svsm: &Path, guest: &Path, guest_args: &str) -> Self {
        Self {
            svsm: svsm.to_path_buf(),
            guest: guest.to_path_buf(),
            svsm_args: String::new(),
            guest_args: guest_args.to_string(),
            icount: false,
            extra: Vec::new(),
            timeout: Duration::from_secs(60),
            settle: None,
            console_file: None,
            svsm_log: None,
            combined_log: None,
            relay_socket: None,
            dev_psp: None,
            launch_config: None,
            machine: machine_image(),
        }
    }

    /// The IGVM file of this boot: the SVSM, the guest and the launch configuration.
    pub fn igvm(&self) -> Result<Vec<u8>, Error> {
        let config = match &self.launch_config {
            None => None,
            Some(path) => {
                let bytes = std::fs::read(path)?;
                Some(
                    nitride_protocol::launch_config::LaunchConfig::parse(&bytes).map_err(|e| {
                        Error::Build(format!("launch configuration {}: {e}", path.display()))
                    })?,
                )
            }
        };
        igvm::build_svsm(
            &std::fs::read(&self.svsm)?,
            &std::fs::read(&self.guest)?,
            config.as_ref(),
        )
        .map_err(|e| Error::Build(e.to_string()))
    }

    /// The IGVM command line: the SVSM's options, then ` -- ` and the guest's.
    pub fn cmdline(&self) -> String {
        let mut line = self.svsm_args.trim().to_string();
        if !self.guest_args.is_empty() {
            line.push_str(" -- ");
            line.push_str(&self.guest_args);
        }
        line.trim().to_string()
    }

    /// The machine boot of this boot with its IGVM file written to `igvm` (the
    /// development chain is created first when the runner's blob is used).
    pub fn prepare(&self, igvm: &Path) -> Result<snp::SnpBoot, Error> {
        ensure_dev_chain()?;
        std::fs::write(igvm, self.igvm()?)?;
        let mut boot = snp::SnpBoot::new(&self.machine, igvm);
        boot.cmdline = self.cmdline();
        boot.icount = self.icount;
        boot.timeout = self.timeout;
        boot.settle.clone_from(&self.settle);
        boot.host_log.clone_from(&self.svsm_log);
        boot.relay_socket.clone_from(&self.relay_socket);
        boot.console_file.clone_from(&self.console_file);
        boot.combined_log.clone_from(&self.combined_log);
        boot.dev_psp.clone_from(&self.dev_psp);
        boot.extra.clone_from(&self.extra);
        Ok(boot)
    }

    /// Boot, wait for QEMU to exit (or kill it at the timeout), and return what
    /// happened. The IGVM file, the host log and the combined log go to temporary
    /// files unless [`Boot::svsm_log`] / [`Boot::combined_log`] name them.
    pub fn run(&self) -> Result<RunOutput, Error> {
        let scratch = ScratchDir::new()?;
        self.prepare(&scratch.0.join("boot.igvm"))?.run()
    }
}

/// Where [`build_images`] puts the virtual SNP machine.
pub fn machine_image() -> PathBuf {
    images_dir()
        .join("snp-machine")
        .join(TRIPLE)
        .join("release")
        .join("snp-machine")
}

/// Start QEMU with `args`, collect its console (stdout) and stderr, and wait for it
/// to end: killed at `timeout`, or `settle.1` after the console first shows
/// `settle.0`. The logs read from files are the caller's to fill in.
pub(crate) fn run_qemu(
    args: &[String],
    timeout: Duration,
    settle: Option<&(String, Duration)>,
) -> Result<RunOutput, Error> {
    let start = Instant::now();
    let mut child = Command::new(QEMU)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::Io(std::io::Error::other("no stdout")))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| Error::Io(std::io::Error::other("no stderr")))?;
    let console_bytes = Arc::new(Mutex::new(Vec::new()));
    let out_thread = {
        let console_bytes = Arc::clone(&console_bytes);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut chunk) {
                let Some(read) = chunk.get(..n).filter(|r| !r.is_empty()) else {
                    break;
                };
                if let Ok(mut v) = console_bytes.lock() {
                    v.extend_from_slice(read);
                }
            }
        })
    };
    let err_thread = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let mut timed_out = false;
    let mut settled_at: Option<Instant> = None;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s.code();
        }
        if let (Some((text, more)), None) = (settle, settled_at) {
            let seen = console_bytes
                .lock()
                .is_ok_and(|v| String::from_utf8_lossy(&v).contains(text.as_str()));
            if seen {
                settled_at = Some(Instant::now() + *more);
            }
        }
        if start.elapsed() > timeout || settled_at.is_some_and(|t| Instant::now() > t) {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = out_thread.join();
    let console = console_bytes
        .lock()
        .map(|v| String::from_utf8_lossy(&v).replace('\r', ""))
        .unwrap_or_default();
    let stderr = String::from_utf8_lossy(&err_thread.join().unwrap_or_default()).into_owned();
    Ok(RunOutput {
        status,
        console,
        stderr,
        timed_out,
        elapsed: start.elapsed(),
        ..Default::default()
    })
}

/// A directory for one run's files under the system's temporary directory, removed
/// when dropped.
pub(crate) struct ScratchDir(pub(crate) PathBuf);

impl ScratchDir {
    pub(crate) fn new() -> Result<Self, Error> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nitride-run-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The address of `symbol` in an ELF file's symbol table (e.g. a label of the SVSM
/// image, which an attacker knows from the release image).
pub fn elf_symbol(elf: &Path, symbol: &str) -> Result<u64, Error> {
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(elf)?;
    let file =
        object::File::parse(&*data).map_err(|e| Error::Build(format!("{}: {e}", elf.display())))?;
    file.symbols()
        .find(|s| s.name() == Ok(symbol))
        .map(|s| s.address())
        .ok_or_else(|| Error::Build(format!("{}: no symbol {symbol}", elf.display())))
}

/// What one boot produced.
#[derive(Clone, Debug, Default)]
pub struct RunOutput {
    /// QEMU's exit status (None when killed).
    pub status: Option<i32>,
    /// Everything on COM1: the guest's console (the guest writes what it likes).
    pub console: String,
    /// The SVSM's own log (port 0xE9), which the guest cannot reach.
    pub svsm_log: String,
    /// Both, interleaved in the order QEMU wrote them (for reading and benchmarks;
    /// never for verdicts).
    pub combined: String,
    /// QEMU's own messages.
    pub stderr: String,
    /// Killed at the timeout.
    pub timed_out: bool,
    /// Wall time.
    pub elapsed: Duration,
}

/// How a boot ended, from QEMU's exit status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The guest reported success.
    GuestPass,
    /// The guest reported failure.
    GuestFail,
    /// The SVSM stopped the guest for touching memory it may not.
    Violation,
    /// The SVSM stopped a guest that halted, shut down or exited unexpectedly.
    GuestStopped,
    /// The SVSM failed (exception, panic, boot error).
    SvsmFatal,
    /// Still running at the timeout.
    TimedOut,
    /// Any other status.
    Other(Option<i32>),
}

impl RunOutput {
    /// Classify the run by the SVSM's verdict: the exit status counts only when the
    /// SVSM's own log ends with the verdict line for exactly that status.
    pub fn outcome(&self) -> Outcome {
        if self.timed_out {
            return Outcome::TimedOut;
        }
        self.machine_outcome()
    }

    /// The last termination request the machine reported: (VMPL, reason set, code).
    pub fn termination(&self) -> Option<(u8, u64, u64)> {
        self.svsm_log.lines().rev().find_map(|l| {
            let rest = l.strip_prefix("[snp-machine] VMPL")?;
            let (vmpl, rest) = rest.split_once(" requested termination: reason set ")?;
            let (set, code) = rest.split_once(", code ")?;
            Some((
                vmpl.parse().ok()?,
                set.parse().ok()?,
                code.trim().parse().ok()?,
            ))
        })
    }

    /// The verdict of a run: the machine's exit status and its own report. A termination request counts only with Nitride's reason set:
    /// from VMPL0 (the SVSM) with the matching verdict line in the SVSM's log, from a
    /// guest VMPL only with a status of the guest's range.
    fn machine_outcome(&self) -> Outcome {
        use nitride_protocol::snp::ghcb::term::SET_NITRIDE;
        use snp::machine_exit as m;
        let is = |v: u32| self.status == Some(m::qemu_status(v));
        if is(m::VIOLATION) {
            return Outcome::Violation;
        }
        if is(m::GUEST_STOPPED) {
            return Outcome::GuestStopped;
        }
        if !is(m::TERMINATED) {
            return Outcome::Other(self.status);
        }
        let Some((vmpl, set, code)) = self.termination() else {
            return Outcome::Other(self.status);
        };
        let Ok(code) = u32::try_from(code) else {
            return Outcome::Other(self.status);
        };
        if set != SET_NITRIDE {
            return Outcome::Other(self.status);
        }
        let known = |v: u32| match v {
            exit::GUEST_PASS => Outcome::GuestPass,
            exit::GUEST_FAIL => Outcome::GuestFail,
            exit::GUEST_STOPPED => Outcome::GuestStopped,
            exit::SVSM_FATAL => Outcome::SvsmFatal,
            _ => Outcome::Other(self.status),
        };
        match vmpl {
            0 if self.verdict() == Some(code) => known(code),
            1..=3 if exit::is_guest_status(code) => known(code),
            _ => Outcome::Other(self.status),
        }
    }

    /// The value of the SVSM's verdict line (`[svsm] verdict: 0x21 guest-pass`), if
    /// its log has one.
    pub fn verdict(&self) -> Option<u32> {
        verdict_in(&self.svsm_log)
    }

    /// Lines of the SVSM's log.
    pub fn svsm_lines(&self) -> impl Iterator<Item = &str> {
        self.svsm_log
            .lines()
            .filter_map(|l| l.find("[svsm]").map(|i| &l[i..]))
    }

    /// Console lines the guest printed.
    pub fn guest_lines(&self) -> impl Iterator<Item = &str> {
        self.console
            .lines()
            .filter_map(|l| l.find("[guest]").map(|i| &l[i..]))
    }
}

/// The last verdict line in an SVSM log.
pub fn verdict_in(svsm_log: &str) -> Option<u32> {
    let prefix = format!("[svsm] {}0x", exit::VERDICT_PREFIX);
    svsm_log.lines().rev().find_map(|l| {
        let hex = l.strip_prefix(&prefix)?.split(' ').next()?;
        u32::from_str_radix(hex, 16).ok()
    })
}

/// A VM running in the background with the relay guest, its console in a file and
/// its relay channel on a Unix socket; killed when dropped.
#[derive(Debug)]
pub struct RunningVm {
    child: std::process::Child,
    /// The directory holding the console log and the socket.
    pub dir: PathBuf,
    /// The relay socket.
    pub socket: PathBuf,
    /// The guest's console (COM1).
    pub console: PathBuf,
    /// The SVSM's log (port 0xE9).
    pub svsm_log: PathBuf,
}

impl RunningVm {
    /// Boot `svsm` with the relay guest in `dir` (created if needed) and wait until
    /// the relay serves its channel.
    pub fn start(
        svsm: &Path,
        relay_guest: &Path,
        dir: &Path,
        svsm_args: &str,
    ) -> Result<Self, Error> {
        Self::start_with_options(svsm, relay_guest, dir, svsm_args, None, None)
    }

    /// [`RunningVm::start`], handing the machine's PSP `dev_psp` (a dev-PSP blob:
    /// another chip secret, another TCB) instead of the runner's.
    pub fn start_with_psp(
        svsm: &Path,
        relay_guest: &Path,
        dir: &Path,
        svsm_args: &str,
        dev_psp: Option<&Path>,
    ) -> Result<Self, Error> {
        Self::start_with_options(svsm, relay_guest, dir, svsm_args, dev_psp, None)
    }

    /// [`RunningVm::start`] with a launch configuration file ([`Boot::launch_config`]).
    pub fn start_with(
        svsm: &Path,
        relay_guest: &Path,
        dir: &Path,
        svsm_args: &str,
        launch_config: Option<&Path>,
    ) -> Result<Self, Error> {
        Self::start_with_options(svsm, relay_guest, dir, svsm_args, None, launch_config)
    }

    /// [`RunningVm::start`] with another dev-PSP blob and/or a launch configuration.
    pub fn start_with_options(
        svsm: &Path,
        relay_guest: &Path,
        dir: &Path,
        svsm_args: &str,
        dev_psp: Option<&Path>,
        launch_config: Option<&Path>,
    ) -> Result<Self, Error> {
        let mut boot = Boot::new(svsm, relay_guest, "");
        boot.svsm_args = svsm_args.to_string();
        boot.launch_config = launch_config.map(Path::to_path_buf);
        boot.dev_psp = dev_psp.map(Path::to_path_buf);
        Self::start_boot(boot, dir)
    }

    /// Start `boot` (the SVSM with the relay guest, and whatever else it sets, such
    /// as `icount`) as a relay VM in `dir` (created if needed): its IGVM file
    /// (`vm.igvm`), guest console, host log (the machine's lines and the SVSM's) and
    /// relay socket there.
    pub fn start_boot(mut boot: Boot, dir: &Path) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("vhsm.sock");
        let console = dir.join("console.log");
        let svsm_log = dir.join("svsm.log");
        for f in [&socket, &console, &svsm_log] {
            let _ = std::fs::remove_file(f);
        }
        boot.console_file = Some(console.clone());
        boot.svsm_log = Some(svsm_log.clone());
        boot.relay_socket = Some(socket.clone());
        let machine = boot.prepare(&dir.join("vm.igvm"))?;
        let child = Command::new(QEMU)
            .args(machine.qemu_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut vm = Self {
            child,
            dir: dir.to_path_buf(),
            socket,
            console,
            svsm_log,
        };
        vm.wait_ready(Duration::from_secs(120))?;
        Ok(vm)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<(), Error> {
        let start = Instant::now();
        loop {
            if self.console_text().contains("relay: serving COM2") && self.socket.exists() {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(Error::Io(std::io::Error::other(format!(
                    "QEMU exited ({status}) before the relay was up:\n{}\n{}",
                    self.svsm_log_text(),
                    self.console_text()
                ))));
            }
            if start.elapsed() > limit {
                return Err(Error::Io(std::io::Error::other(
                    "timed out waiting for the relay guest",
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything on the guest's console so far.
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console)
            .unwrap_or_default()
            .replace('\r', "")
    }

    /// Everything on the SVSM's log so far.
    pub fn svsm_log_text(&self) -> String {
        std::fs::read_to_string(&self.svsm_log)
            .unwrap_or_default()
            .replace('\r', "")
    }

    /// The SVSM's verdict, once it has ended the run.
    pub fn verdict(&self) -> Option<u32> {
        verdict_in(&self.svsm_log_text())
    }

    /// QEMU's exit status, if it has exited.
    pub fn exited(&mut self) -> Option<i32> {
        self.child
            .try_wait()
            .ok()
            .flatten()
            .map(|s| s.code().unwrap_or(-1))
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Leave QEMU running after this handle is gone (for `cargo xtask up`).
    pub fn detach(self) {
        std::mem::forget(self);
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
