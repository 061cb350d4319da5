//! The virtual SNP machine from the host: building the machine image and its test
//! program, packing IGVM files, booting the machine in QEMU and reading what it
//! reports (`docs/snp-machine.md`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use nitride_protocol::emulated::dev_psp;
pub use nitride_snp_machine::exit as machine_exit;

use crate::{dev_psp_blob_path, ensure_dev_chain, images_dir, Error, RunOutput};

/// The machine and the test program.
#[derive(Clone, Debug)]
pub struct SnpImages {
    /// The machine (PVH ELF).
    pub machine: PathBuf,
    /// The test program's VMPL0 image.
    pub test_vmpl0: PathBuf,
    /// The test program's VMPL1 image.
    pub test_vmpl1: PathBuf,
}

/// Build the machine and the test program (release).
pub fn build_snp_images() -> Result<SnpImages, Error> {
    let dir = images_dir();
    let machine = crate::build_machine()?;
    crate::cargo_build(
        &["--manifest-path", "qemu/snp-machine/test-images/Cargo.toml"],
        &dir.join("snp-test"),
    )?;
    let bin = |sub: &str, name: &str| dir.join(sub).join(crate::TRIPLE).join("release").join(name);
    Ok(SnpImages {
        machine,
        test_vmpl0: bin("snp-test", "snp-test-vmpl0"),
        test_vmpl1: bin("snp-test", "snp-test-vmpl1"),
    })
}

/// The test program's IGVM file.
pub fn test_igvm(images: &SnpImages) -> Result<Vec<u8>, Error> {
    let vmpl0 = std::fs::read(&images.test_vmpl0)?;
    let vmpl1 = std::fs::read(&images.test_vmpl1)?;
    crate::igvm::build(&vmpl0, &[&vmpl1]).map_err(|e| Error::Build(e.to_string()))
}

/// Write the test program's IGVM file to `target/images/snp-test.igvm`.
pub fn write_test_igvm(images: &SnpImages) -> Result<PathBuf, Error> {
    let path = images_dir().join("snp-test.igvm");
    std::fs::write(&path, test_igvm(images)?)?;
    Ok(path)
}

/// The IGVM file of the SVSM image `svsm` with the guest `guest` and the vault's
/// launch configuration `config` (the default one when `None`), written next to the
/// images as `NAME.igvm` (`crate::igvm::build_svsm`).
pub fn svsm_igvm(
    svsm: &Path,
    guest: &Path,
    config: Option<&nitride_protocol::launch_config::LaunchConfig>,
    name: &str,
) -> Result<PathBuf, Error> {
    let file = crate::igvm::build_svsm(&std::fs::read(svsm)?, &std::fs::read(guest)?, config)
        .map_err(|e| Error::Build(e.to_string()))?;
    let path = images_dir().join(format!("{name}.igvm"));
    // Written aside and renamed: test processes running at once may write it too.
    let part = images_dir().join(format!("{name}.igvm.{}", std::process::id()));
    std::fs::write(&part, file)?;
    std::fs::rename(&part, &path)?;
    Ok(path)
}

/// One boot of the machine.
#[derive(Clone, Debug)]
pub struct SnpBoot {
    /// The machine image.
    pub machine: PathBuf,
    /// The IGVM file.
    pub igvm: PathBuf,
    /// The guest's command line (written into the IGVM command-line parameter).
    pub cmdline: String,
    /// `-icount shift=0`.
    pub icount: bool,
    /// Kill QEMU after this long.
    pub timeout: Duration,
    /// Write the host log (the machine's lines and VMPL0's log, QEMU's debug console
    /// on port 0xE9) to this file; [`SnpBoot::run`] uses a temporary file when `None`,
    /// [`SnpBoot::qemu_args`] alone then shares the terminal.
    pub host_log: Option<PathBuf>,
    /// Serve COM2 (the relay channel) on this Unix socket.
    pub relay_socket: Option<PathBuf>,
    /// Write the guests' console (COM1) to this file instead of QEMU's stdout.
    pub console_file: Option<PathBuf>,
    /// Also append both channels, in the order QEMU wrote them, to this file (for
    /// reading along and benchmarks, never for verdicts).
    pub combined_log: Option<PathBuf>,
    /// The dev-PSP blob the machine's emulated PSP gets (another chip secret, another
    /// TCB); the runner's when `None`.
    pub dev_psp: Option<PathBuf>,
    /// More QEMU arguments.
    pub extra: Vec<String>,
    /// Once the guest's console shows this text, let QEMU run this much longer and
    /// then stop it (reported as a timeout).
    pub settle: Option<(String, Duration)>,
}

impl SnpBoot {
    /// A boot of `machine` with `igvm`.
    pub fn new(machine: &Path, igvm: &Path) -> Self {
        Self {
            machine: machine.to_path_buf(),
            igvm: igvm.to_path_buf(),
            cmdline: String::new(),
            icount: false,
            timeout: Duration::from_secs(60),
            host_log: None,
            relay_socket: None,
            console_file: None,
            combined_log: None,
            dev_psp: None,
            extra: Vec::new(),
            settle: None,
        }
    }

    /// QEMU's arguments.
    pub fn qemu_args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "-accel",
            "tcg",
            "-cpu",
            "max,phys-bits=48",
            "-m",
            "256M",
            "-nodefaults",
            "-no-reboot",
            "-display",
            "none",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = |id: &str| match &self.combined_log {
            Some(f) => format!("id={id},logfile={},logappend=on", f.display()),
            None => format!("id={id}"),
        };
        match (&self.console_file, &self.host_log) {
            (None, None) => {
                a.extend(["-chardev".into(), "stdio,mux=on,id=hostlog".into()]);
                a.extend(["-serial".into(), "chardev:hostlog".into()]);
            }
            (console, host) => {
                let backend = |file: &Option<PathBuf>| match file {
                    Some(f) => format!("file,path={}", f.display()),
                    None => "stdio".to_string(),
                };
                a.push("-chardev".into());
                a.push(format!("{},{}", backend(console), log("com1")));
                a.extend(["-serial".into(), "chardev:com1".into()]);
                a.push("-chardev".into());
                a.push(format!("{},{}", backend(host), log("hostlog")));
            }
        }
        a.push("-device".into());
        a.push(format!(
            "isa-debugcon,iobase={:#x},chardev=hostlog",
            nitride_protocol::emulated::ports::SVSM_LOG
        ));
        if let Some(sock) = &self.relay_socket {
            a.push("-serial".into());
            a.push(format!("unix:{},server=on,wait=off", sock.display()));
        }
        a.push("-device".into());
        a.push(format!(
            "isa-debug-exit,iobase={:#x},iosize=0x04",
            nitride_protocol::emulated::ports::DEBUG_EXIT
        ));
        a.extend(["-kernel".into(), self.machine.display().to_string()]);
        a.extend(["-initrd".into(), self.igvm.display().to_string()]);
        if !self.cmdline.is_empty() {
            a.extend(["-append".into(), self.cmdline.clone()]);
        }
        a.push("-fw_cfg".into());
        a.push(format!(
            "name={},file={}",
            dev_psp::FW_CFG_NAME,
            self.dev_psp
                .clone()
                .unwrap_or_else(dev_psp_blob_path)
                .display()
        ));
        if self.icount {
            a.extend(["-icount".into(), "shift=0".into()]);
        }
        a.extend(self.extra.iter().cloned());
        a
    }

    /// Boot and wait for QEMU to end.
    pub fn run(&self) -> Result<RunOutput, Error> {
        ensure_dev_chain()?;
        let scratch = crate::ScratchDir::new()?;
        let mut boot = self.clone();
        let host_log = boot
            .host_log
            .get_or_insert_with(|| scratch.0.join("host.log"))
            .clone();
        let combined = boot
            .combined_log
            .get_or_insert_with(|| scratch.0.join("combined.log"))
            .clone();
        for f in [&host_log, &combined] {
            let _ = std::fs::remove_file(f);
        }
        let mut out = crate::run_qemu(&boot.qemu_args(), self.timeout, self.settle.as_ref())?;
        let read = |f: &Path| {
            std::fs::read(f)
                .map(|b| String::from_utf8_lossy(&b).replace('\r', ""))
                .unwrap_or_default()
        };
        out.svsm_log = read(&host_log);
        out.combined = read(&combined);
        Ok(out)
    }
}

/// How a machine boot ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MachineOutcome {
    /// The guest asked to terminate.
    Terminated,
    /// A VMPL touched a page it may not.
    Violation,
    /// The VM stopped (halt, shutdown, not emulated).
    Stopped,
    /// The IGVM file was refused.
    LaunchRefused,
    /// The machine failed.
    MachineFatal,
    /// Timed out or any other status.
    Other(Option<i32>),
}

/// Classify a machine boot.
pub fn outcome(out: &RunOutput) -> MachineOutcome {
    use machine_exit::*;
    let is = |v: u32| out.status == Some(qemu_status(v));
    if out.timed_out {
        MachineOutcome::Other(None)
    } else if is(TERMINATED) {
        MachineOutcome::Terminated
    } else if is(VIOLATION) {
        MachineOutcome::Violation
    } else if is(GUEST_STOPPED) {
        MachineOutcome::Stopped
    } else if is(LAUNCH_REFUSED) {
        MachineOutcome::LaunchRefused
    } else if is(MACHINE_FATAL) {
        MachineOutcome::MachineFatal
    } else {
        MachineOutcome::Other(out.status)
    }
}

/// The bytes a guest printed as `LABEL i hex` lines (see the test program).
pub fn hex_lines(console: &str, label: &str) -> Vec<u8> {
    let mut parts: Vec<(usize, Vec<u8>)> = console
        .lines()
        .filter_map(|l| {
            let rest = l.split(&format!("] {label} ")).nth(1)?;
            let (i, h) = rest.split_once(' ')?;
            Some((i.parse().ok()?, hex::decode(h.trim()).ok()?))
        })
        .collect();
    parts.sort_by_key(|p| p.0);
    parts.into_iter().flat_map(|p| p.1).collect()
}
