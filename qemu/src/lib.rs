//! The host-side runner: builds the firmware and guest images, makes sure QEMU is
//! installed, and boots the emulated platform with the devices the guest contract
//! names (COM1, the guest's console; `isa-debugcon` on port 0xE9, the SVSM's own
//! log; `isa-debug-exit`), capturing the guest's console, the SVSM's log and the
//! exit status.
//!
//! The SVSM is judged by its own channel only: [`RunOutput::outcome`] accepts an exit
//! status only when the SVSM's log ends with the matching verdict line, and
//! [`RunOutput::svsm_lines`] reads the SVSM's log, never COM1 (a guest can print
//! anything there, `[svsm]` lines included). [`RunOutput::combined`] interleaves both
//! channels in the order QEMU wrote them, for people and for lining up benchmark
//! figures, never for a verdict.
//!
//! Every boot also hands the firmware the development PSP blob through fw_cfg
//! ([`dev_chain`]); [`measure`] computes the launch measurement the firmware reports.
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

use nitride_protocol::emulated::{dev_psp, exit, ports};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

/// QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// Guest RAM given to the VM by default.
pub const DEFAULT_MEMORY_MB: u32 = 512;

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
    /// The production SVSM.
    pub svsm: PathBuf,
    /// The SVSM with `fault-injection` (honours `nitride.fault=`), for tests.
    pub svsm_fault_injection: PathBuf,
    /// The test guest.
    pub test_guest: PathBuf,
    /// The relay guest (serves vHSM requests from COM2).
    pub relay_guest: PathBuf,
    /// The SVSM for SEV-SNP (booted from IGVM on the virtual SNP machine or an SNP
    /// host).
    pub svsm_snp: PathBuf,
    /// The SNP SVSM with `fault-injection`, for tests.
    pub svsm_snp_fault_injection: PathBuf,
    /// The test guest built for SEV-SNP.
    pub test_guest_snp: PathBuf,
    /// The relay guest built for SEV-SNP.
    pub relay_guest_snp: PathBuf,
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

/// The Cargo profile of the SNP SVSM images (`[profile.firmware]` in the workspace
/// manifest: opt-level "z", fat LTO, the hot crypto crates at opt-level 3).
pub const FIRMWARE_PROFILE: &str = "firmware";

/// Target rustflags of the SNP SVSM images: curve25519-dalek's portable 64-bit
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

/// Build every image (release profile; the SNP SVSM images with [`FIRMWARE_PROFILE`]).
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
        cargo_build(&args, &dir.join(sub))?;
    }
    for (features, sub) in [
        ("firmware,snp", "svsm-snp"),
        ("firmware,snp,fault-injection", "svsm-snp-fault-injection"),
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
    cargo_build(
        &[
            "--manifest-path",
            "tests/guest/Cargo.toml",
            "--features",
            "snp",
        ],
        &dir.join("guest-snp"),
    )?;
    cargo_build(
        &[
            "-p",
            "nitride-snp-machine",
            "--bin",
            "snp-machine",
            "--features",
            "firmware",
        ],
        &dir.join("snp-machine"),
    )?;
    let bin = |sub: &str, name: &str| dir.join(sub).join(TRIPLE).join("release").join(name);
    let firmware = |sub: &str| {
        dir.join(sub)
            .join(TRIPLE)
            .join(FIRMWARE_PROFILE)
            .join("nitride-svsm")
    };
    Ok(Images {
        svsm: bin("svsm", "nitride-svsm"),
        svsm_fault_injection: bin("svsm-fault-injection", "nitride-svsm"),
        test_guest: bin("guest", "test-guest"),
        relay_guest: bin("guest", "relay-guest"),
        svsm_snp: firmware("svsm-snp"),
        svsm_snp_fault_injection: firmware("svsm-snp-fault-injection"),
        test_guest_snp: bin("guest-snp", "test-guest"),
        relay_guest_snp: bin("guest-snp", "relay-guest"),
        machine: bin("snp-machine", "snp-machine"),
    })
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

/// One boot of the emulated platform.
#[derive(Clone, Debug)]
pub struct Boot {
    /// SVSM image (`-kernel`).
    pub svsm: PathBuf,
    /// Guest image (`-initrd`), if any.
    pub guest: Option<PathBuf>,
    /// SVSM options (`nitride.*`).
    pub svsm_args: String,
    /// The guest's command line (after ` -- `).
    pub guest_args: String,
    /// RAM in MiB.
    pub memory_mb: u32,
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
    /// Write the SVSM's log (the debug console on port 0xE9) to this file. `None`:
    /// [`Boot::run`] uses a temporary file; [`Boot::qemu_args`] alone shares the
    /// terminal with COM1 (or takes it, when COM1 goes to a file).
    pub svsm_log: Option<PathBuf>,
    /// Also append both channels, in the order QEMU wrote them, to this file (QEMU's
    /// chardev `logfile`). For reading along and for benchmarks, never for verdicts:
    /// the guest controls half of it.
    pub combined_log: Option<PathBuf>,
    /// Serve COM2 (the relay channel) on this Unix socket.
    pub relay_socket: Option<PathBuf>,
    /// The emulated PSP's blob, passed as fw_cfg file `opt/nitride/dev-psp`
    /// (default: the cached development chain's, generated on first boot; `None`
    /// boots a platform without a PSP).
    pub dev_psp: Option<PathBuf>,
    /// The measured launch configuration (vault policy, owner key), passed as
    /// fw_cfg file `opt/nitride/launch-config`; `None`: the default configuration.
    pub launch_config: Option<PathBuf>,
}

impl Boot {
    /// A boot of `svsm` with `guest` and the guest command line `guest_args`.
    pub fn new(svsm: &Path, guest: Option<&Path>, guest_args: &str) -> Self {
        Self {
            svsm: svsm.to_path_buf(),
            guest: guest.map(Path::to_path_buf),
            svsm_args: String::new(),
            guest_args: guest_args.to_string(),
            memory_mb: DEFAULT_MEMORY_MB,
            icount: false,
            extra: Vec::new(),
            timeout: Duration::from_secs(60),
            settle: None,
            console_file: None,
            svsm_log: None,
            combined_log: None,
            relay_socket: None,
            dev_psp: Some(dev_psp_blob_path()),
            launch_config: None,
        }
    }

    /// Create what the boot reads that may not exist yet: the development chain,
    /// when [`Boot::dev_psp`] is its default blob. [`Boot::run`] and
    /// [`RunningVm::start`] call this; callers using [`Boot::qemu_args`] directly
    /// must too.
    pub fn ensure_inputs(&self) -> Result<(), Error> {
        if self.dev_psp.as_deref() == Some(dev_psp_blob_path().as_path()) {
            ensure_dev_chain()?;
        }
        Ok(())
    }

    /// The full QEMU argument list.
    pub fn qemu_args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // COM1 (the guest's console) and the SVSM's log, each on its own chardev.
        let log = |id: &str| match &self.combined_log {
            Some(f) => format!("id={id},logfile={},logappend=on", f.display()),
            None => format!("id={id}"),
        };
        match (&self.console_file, &self.svsm_log) {
            (None, None) => {
                // Interactive: both on the terminal, through one multiplexer.
                a.push("-chardev".into());
                a.push("stdio,mux=on,id=term".into());
                a.push("-serial".into());
                a.push("chardev:term".into());
                a.push("-device".into());
                a.push(format!(
                    "isa-debugcon,iobase={:#x},chardev=term",
                    ports::SVSM_LOG
                ));
            }
            (console, svsm) => {
                let backend = |file: &Option<PathBuf>| match file {
                    Some(f) => format!("file,path={}", f.display()),
                    None => "stdio".to_string(),
                };
                a.push("-chardev".into());
                a.push(format!("{},{}", backend(console), log("com1")));
                a.push("-serial".into());
                a.push("chardev:com1".into());
                a.push("-chardev".into());
                a.push(format!("{},{}", backend(svsm), log("svsmlog")));
                a.push("-device".into());
                a.push(format!(
                    "isa-debugcon,iobase={:#x},chardev=svsmlog",
                    ports::SVSM_LOG
                ));
            }
        }
        if let Some(sock) = &self.relay_socket {
            a.push("-serial".into());
            a.push(format!("unix:{},server=on,wait=off", sock.display()));
        }
        a.push("-m".into());
        a.push(format!("{}M", self.memory_mb));
        a.push("-device".into());
        a.push(format!(
            "isa-debug-exit,iobase={:#x},iosize=0x04",
            ports::DEBUG_EXIT
        ));
        a.push("-kernel".into());
        a.push(self.svsm.display().to_string());
        if let Some(g) = &self.guest {
            a.push("-initrd".into());
            a.push(g.display().to_string());
        }
        let mut append = self.svsm_args.clone();
        if !self.guest_args.is_empty() {
            append.push_str(" -- ");
            append.push_str(&self.guest_args);
        }
        if !append.trim().is_empty() {
            a.push("-append".into());
            a.push(append.trim().to_string());
        }
        if let Some(blob) = &self.dev_psp {
            a.push("-fw_cfg".into());
            a.push(format!(
                "name={},file={}",
                dev_psp::FW_CFG_NAME,
                blob.display()
            ));
        }
        if let Some(config) = &self.launch_config {
            a.push("-fw_cfg".into());
            a.push(format!(
                "name={},file={}",
                nitride_protocol::launch_config::FW_CFG_NAME,
                config.display()
            ));
        }
        if self.icount {
            a.push("-icount".into());
            a.push("shift=0".into());
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Boot, wait for QEMU to exit (or kill it at the timeout), and return what
    /// happened. The SVSM's log and the combined log go to temporary files unless
    /// [`Boot::svsm_log`] / [`Boot::combined_log`] name them.
    pub fn run(&self) -> Result<RunOutput, Error> {
        self.ensure_inputs()?;
        let scratch = ScratchDir::new()?;
        let mut boot = self.clone();
        let svsm_log = boot
            .svsm_log
            .get_or_insert_with(|| scratch.0.join("svsm.log"))
            .clone();
        let combined = boot
            .combined_log
            .get_or_insert_with(|| scratch.0.join("combined.log"))
            .clone();
        for f in [&svsm_log, &combined] {
            let _ = std::fs::remove_file(f);
        }
        let run = run_qemu(&boot.qemu_args(), self.timeout, self.settle.as_ref())?;
        let read = |f: &Path| {
            std::fs::read(f)
                .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
                .unwrap_or_default()
        };
        Ok(RunOutput {
            svsm_log: read(&svsm_log),
            combined: read(&combined),
            ..run
        })
    }
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
        if self.on_machine() {
            return self.machine_outcome();
        }
        let Some(v) = self
            .verdict()
            .filter(|&v| self.status == Some(exit::qemu_status(v)))
        else {
            return Outcome::Other(self.status);
        };
        match v {
            exit::GUEST_PASS => Outcome::GuestPass,
            exit::GUEST_FAIL => Outcome::GuestFail,
            exit::GUEST_VIOLATION => Outcome::Violation,
            exit::GUEST_STOPPED => Outcome::GuestStopped,
            exit::SVSM_FATAL => Outcome::SvsmFatal,
            _ => Outcome::Other(self.status),
        }
    }

    /// Whether this run was on the virtual SNP machine (its lines are in the host
    /// log).
    pub fn on_machine(&self) -> bool {
        self.svsm_log
            .lines()
            .any(|l| l.starts_with("[snp-machine] "))
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

    /// The verdict of a run on the virtual SNP machine: the machine's exit status and
    /// its own report. A termination request counts only with Nitride's reason set:
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
            exit::GUEST_VIOLATION => Outcome::Violation,
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

    /// [`RunningVm::start`], handing the emulated PSP `dev_psp` (a dev-PSP blob: another
    /// chip secret, another TCB) instead of the runner's.
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
        let mut boot = Boot::new(svsm, Some(relay_guest), "");
        boot.svsm_args = svsm_args.to_string();
        boot.launch_config = launch_config.map(Path::to_path_buf);
        boot.ensure_inputs()?;
        if let Some(blob) = dev_psp {
            boot.dev_psp = Some(blob.to_path_buf());
        }
        Self::start_boot(boot, dir)
    }

    /// Start `boot` (the SVSM with the relay guest, and whatever else it sets, such
    /// as `icount`) as a relay VM in `dir`: its console, SVSM log and relay socket
    /// there.
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
        boot.ensure_inputs()?;
        let child = Command::new(QEMU)
            .args(boot.qemu_args())
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
        vm.wait_ready(Duration::from_secs(60))?;
        Ok(vm)
    }

    /// Boot the virtual SNP machine `machine` with the IGVM file `igvm` (the SNP SVSM
    /// with the SNP relay guest) in `dir` (created if needed), the IGVM command line
    /// `cmdline` (`SVSM OPTIONS -- GUEST ARGS`) and the machine's emulated PSP given
    /// `dev_psp` (the runner's blob when `None`), and wait until the relay serves its
    /// channel. `svsm_log` is then the host log: the machine's lines and the SVSM's.
    pub fn start_snp(
        machine: &Path,
        igvm: &Path,
        dir: &Path,
        cmdline: &str,
        dev_psp: Option<&Path>,
    ) -> Result<Self, Error> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("vhsm.sock");
        let console = dir.join("console.log");
        let svsm_log = dir.join("svsm.log");
        for f in [&socket, &console, &svsm_log] {
            let _ = std::fs::remove_file(f);
        }
        let mut boot = snp::SnpBoot::new(machine, igvm);
        boot.cmdline = cmdline.to_string();
        boot.console_file = Some(console.clone());
        boot.host_log = Some(svsm_log.clone());
        boot.relay_socket = Some(socket.clone());
        boot.dev_psp = dev_psp.map(Path::to_path_buf);
        ensure_dev_chain()?;
        let child = Command::new(QEMU)
            .args(boot.qemu_args())
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
