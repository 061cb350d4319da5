//! The host-side runner: builds the firmware and guest images, makes sure QEMU is
//! installed, and boots the emulated platform with the devices the guest contract
//! names (COM1 console, `isa-debug-exit`), capturing the console and the exit status.
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
}

pub(crate) const TRIPLE: &str = "x86_64-unknown-linux-gnu";

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

pub(crate) fn cargo_build(args: &[&str], target_dir: &Path) -> Result<(), Error> {
    let status = Command::new(cargo())
        .current_dir(repo_root())
        .args(["build", "--release", "--quiet"])
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir)
        .status()?;
    if !status.success() {
        return Err(Error::Build(format!(
            "cargo build {} ({status})",
            args.join(" ")
        )));
    }
    Ok(())
}

/// Build every image (release profile).
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
    cargo_build(
        &["--manifest-path", "tests/guest/Cargo.toml"],
        &dir.join("guest"),
    )?;
    let bin = |sub: &str, name: &str| dir.join(sub).join(TRIPLE).join("release").join(name);
    Ok(Images {
        svsm: bin("svsm", "nitride-svsm"),
        svsm_fault_injection: bin("svsm-fault-injection", "nitride-svsm"),
        test_guest: bin("guest", "test-guest"),
        relay_guest: bin("guest", "relay-guest"),
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
    /// Write the console (COM1) to this file instead of QEMU's stdout.
    pub console_file: Option<PathBuf>,
    /// Serve COM2 (the relay channel) on this Unix socket.
    pub relay_socket: Option<PathBuf>,
    /// The emulated PSP's blob, passed as fw_cfg file `opt/nitride/dev-psp`
    /// (default: the cached development chain's, generated on first boot; `None`
    /// boots a platform without a PSP).
    pub dev_psp: Option<PathBuf>,
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
            console_file: None,
            relay_socket: None,
            dev_psp: Some(dev_psp_blob_path()),
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
        a.push("-serial".into());
        a.push(match &self.console_file {
            Some(f) => format!("file:{}", f.display()),
            None => "stdio".into(),
        });
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
        if self.icount {
            a.push("-icount".into());
            a.push("shift=0".into());
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Boot, wait for QEMU to exit (or kill it at the timeout), and return what
    /// happened.
    pub fn run(&self) -> Result<RunOutput, Error> {
        self.ensure_inputs()?;
        let start = Instant::now();
        let mut child = Command::new(QEMU)
            .args(self.qemu_args())
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
        let out_thread = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = stdout.read_to_end(&mut v);
            v
        });
        let err_thread = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = stderr.read_to_end(&mut v);
            v
        });
        let mut timed_out = false;
        let status = loop {
            if let Some(s) = child.try_wait()? {
                break s.code();
            }
            if start.elapsed() > self.timeout {
                timed_out = true;
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let console =
            String::from_utf8_lossy(&out_thread.join().unwrap_or_default()).replace('\r', "");
        let stderr = String::from_utf8_lossy(&err_thread.join().unwrap_or_default()).into_owned();
        Ok(RunOutput {
            status,
            console,
            stderr,
            timed_out,
            elapsed: start.elapsed(),
        })
    }
}

/// What one boot produced.
#[derive(Clone, Debug)]
pub struct RunOutput {
    /// QEMU's exit status (None when killed).
    pub status: Option<i32>,
    /// Everything on COM1.
    pub console: String,
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
    /// Classify the exit status.
    pub fn outcome(&self) -> Outcome {
        if self.timed_out {
            return Outcome::TimedOut;
        }
        let is = |v: u32| self.status == Some(exit::qemu_status(v));
        if is(exit::GUEST_PASS) {
            Outcome::GuestPass
        } else if is(exit::GUEST_FAIL) {
            Outcome::GuestFail
        } else if is(exit::GUEST_VIOLATION) {
            Outcome::Violation
        } else if is(exit::GUEST_STOPPED) {
            Outcome::GuestStopped
        } else if is(exit::SVSM_FATAL) {
            Outcome::SvsmFatal
        } else {
            Outcome::Other(self.status)
        }
    }

    /// Console lines the SVSM printed.
    pub fn svsm_lines(&self) -> impl Iterator<Item = &str> {
        self.console
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

/// A VM running in the background with the relay guest, its console in a file and
/// its relay channel on a Unix socket; killed when dropped.
#[derive(Debug)]
pub struct RunningVm {
    child: std::process::Child,
    /// The directory holding the console log and the socket.
    pub dir: PathBuf,
    /// The relay socket.
    pub socket: PathBuf,
    /// The console log.
    pub console: PathBuf,
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
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("vhsm.sock");
        let console = dir.join("console.log");
        let _ = std::fs::remove_file(&socket);
        let _ = std::fs::remove_file(&console);
        let mut boot = Boot::new(svsm, Some(relay_guest), "");
        boot.svsm_args = svsm_args.to_string();
        boot.console_file = Some(console.clone());
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
        };
        vm.wait_ready(Duration::from_secs(60))?;
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
                    "QEMU exited ({status}) before the relay was up:\n{}",
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

    /// Everything on the console so far.
    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console)
            .unwrap_or_default()
            .replace('\r', "")
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
