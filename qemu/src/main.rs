//! `cargo xtask`: the project's entry points (on clap: `cargo xtask --help`, and
//! `cargo xtask COMMAND --help` for each command).
//!
//! - `build`: build the SVSM and guest images.
//! - `run [--guest ELF] [--svsm ELF] [--guest-args ARGS] [--svsm-args ARGS] [--icount] [-- QEMU ARGS]`:
//!   boot the SVSM and a guest from an IGVM file on the virtual SNP machine, with the
//!   console on this terminal.
//! - `test`: every test (host unit tests and the QEMU end-to-end tests).
//! - `demo`: boot, run the test guest's call sequence and the isolation probes, and
//!   tell what happened.
//! - `bench`: instruction counts on the virtual SNP machine with `-icount shift=0`.
//! - `up` / `down`: start the firmware with the relay guest in the background (for
//!   the `nitride` command line) / stop it.
//! - `dev-chain [--force]`: create (or show) the development ARK/ASK/VCEK chain and the
//!   machine PSP's blob under `target/dev-chain/`.
//! - `measure [--guest relay|test|ELF] [--svsm ELF] [--launch-config FILE]`: print the
//!   launch digest of the SVSM's IGVM image with that guest (what reports carry).
//! - `igvm`, `snp`: the virtual SNP machine's own test program.
//! - `man [--out DIR]`: write `nitride`'s man pages (clap_mangen).
//! - `install [--root DIR]`: `cargo install --path guest-driver`, plus the man pages.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use clap::{Args, Parser, Subcommand};

use nitride_qemu::{
    build_images, dev_chain, ensure_dev_chain, ensure_qemu, launch_measurement, measure, repo_root,
    Boot, Error, Images, Outcome, RunningVm, QEMU,
};

/// `cargo xtask`.
#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Build, boot, test and demonstrate Nitride (the SVSM in QEMU)",
    after_help = "Examples:\n  cargo xtask demo\n  cargo xtask test\n  \
                  cargo xtask up && nitride key list && cargo xtask down\n  \
                  cargo xtask run --guest-args mode=calls",
    subcommand_required = true,
    arg_required_else_help = true,
    max_term_width = 100
)]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Build the SVSM and the guest images; print their paths and sizes
    #[command(after_help = "Examples:\n  cargo xtask build")]
    Build,
    /// Boot the SVSM on the virtual SNP machine (QEMU), console on this terminal
    #[command(after_help = "Examples:\n  cargo xtask run\n  \
                            cargo xtask run --guest-args mode=vhsm\n  \
                            cargo xtask run --icount -- -d int -D qemu.log")]
    Run(RunArgs),
    /// Run every test: unit, QEMU end-to-end on the virtual SNP machine, test KBS tests
    #[command(after_help = "Examples:\n  cargo xtask test")]
    Test,
    /// Boot the SVSM and show it at work: SVSM calls, isolation, the vHSM, attestation
    #[command(after_help = "Examples:\n  cargo xtask demo")]
    Demo,
    /// Instruction counts of SVSM calls and vHSM operations on the SNP machine (-icount)
    #[command(after_help = "Examples:\n  cargo xtask bench")]
    Bench,
    /// Start the firmware with the relay guest in the background, for `nitride`
    #[command(
        after_help = "Examples:\n  cargo xtask up\n  nitride key list\n  cargo xtask down\n  \
                            cargo xtask up --state vault.sealed   # keys that survive `down`\n  \
                            cargo xtask up --launch-config launch-config.bin"
    )]
    Up(UpArgs),
    /// Stop the firmware started by `cargo xtask up`
    #[command(after_help = "Examples:\n  cargo xtask down")]
    Down,
    /// Create (or show) the development ARK/ASK/VCEK chain in target/dev-chain/
    #[command(after_help = "Examples:\n  cargo xtask dev-chain\n  cargo xtask dev-chain --force")]
    DevChain(DevChainArgs),
    /// Print the launch digest of the SVSM's IGVM image (target/images/measure.igvm)
    #[command(after_help = "Examples:\n  cargo xtask measure --guest relay\n  \
                            MEASUREMENT=$(cargo xtask measure --guest relay)\n  \
                            cargo xtask measure --guest relay --launch-config launch-config.bin")]
    Measure(MeasureArgs),
    /// Build an IGVM file for the SNP machine and check its launch digest three ways
    #[command(after_help = "Examples:\n  cargo xtask igvm\n  \
                            cargo xtask igvm --boot vmpl0.elf --extra vmpl1.elf --out image.igvm")]
    Igvm(IgvmArgs),
    /// Boot the virtual SNP machine (QEMU) with an IGVM file, console on this terminal
    #[command(after_help = "Examples:\n  cargo xtask snp\n  \
                            cargo xtask snp --icount\n  \
                            cargo xtask snp --igvm image.igvm --cmdline probe=read:0")]
    Snp(SnpArgs),
    /// Write nitride's man pages (one per command) to a directory
    #[command(after_help = "Examples:\n  cargo xtask man\n  man -l target/man/nitride.1")]
    Man(ManArgs),
    /// Install nitride on PATH (cargo install --path guest-driver) and its man pages
    #[command(
        after_help = "Examples:\n  cargo xtask install\n  cargo xtask install --root ~/.local"
    )]
    Install(InstallArgs),
    /// Install the cryptsetup token plugin libcryptsetup-token-nitride.so
    ///
    /// Builds it and copies it (without debug information) where libcryptsetup loads
    /// plugins (root needed for the default DIR).
    #[command(
        after_help = "Examples:\n  cargo xtask install-token\n  cargo xtask install-token --debug      # what .ci/run does\n  NITRIDE_SOCKET=target/nitride-up/vhsm.sock cryptsetup open --token-only disk.img data"
    )]
    InstallToken(InstallTokenArgs),
}

#[derive(Debug, Args)]
struct InstallTokenArgs {
    /// Install into DIR (Debian's libcryptsetup 2.6 loads plugins from this one
    /// directory only)
    #[arg(long, value_name = "DIR", default_value = "/lib/x86_64-linux-gnu/cryptsetup", value_hint = clap::ValueHint::DirPath)]
    dir: PathBuf,
    /// Build with the debug profile (faster when the tests built it already)
    #[arg(long)]
    debug: bool,
}

#[derive(Debug, Args)]
struct UpArgs {
    /// Keep the vault's persistent keys in FILE: import it at start (through the
    /// relay, as a guest would; created when missing), write the new sealed state
    /// back after every change (`nitride` does) and at `down` [default: no state]
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    state: Option<PathBuf>,
    /// The measured launch configuration (`nitride owner launch-config`) [default: the
    /// default configuration: no plaintext import, no owner key]
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    launch_config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The guest ELF [default: the test guest]
    #[arg(long, value_name = "ELF", value_hint = clap::ValueHint::FilePath)]
    guest: Option<PathBuf>,
    /// The SVSM ELF [default: the SVSM just built]
    #[arg(long, value_name = "ELF", value_hint = clap::ValueHint::FilePath)]
    svsm: Option<PathBuf>,
    /// The guest's command line (the test guest takes mode=NAME) [default: none]
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    guest_args: Option<String>,
    /// The SVSM's command line (e.g. nitride.log=debug) [default: none]
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    svsm_args: Option<String>,
    /// The measured launch configuration (`nitride owner launch-config`) [default: the
    /// default configuration: no plaintext import, no owner key]
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    launch_config: Option<PathBuf>,
    /// Deterministic instruction counting (-icount shift=0)
    #[arg(long)]
    icount: bool,
    /// More QEMU arguments, after `--`
    #[arg(last = true, value_name = "QEMU ARGS")]
    qemu: Vec<String>,
}

#[derive(Debug, Args)]
struct DevChainArgs {
    /// Throw the existing chain away and generate a new one
    #[arg(long)]
    force: bool,
}

/// The guest image a measurement is for.
#[derive(Debug, Clone)]
enum GuestImage {
    Relay,
    Test,
    Elf(PathBuf),
}

fn guest_image(s: &str) -> Result<GuestImage, String> {
    match s {
        "relay" => Ok(GuestImage::Relay),
        "test" => Ok(GuestImage::Test),
        "" => Err("expected relay, test or the path of a guest ELF".into()),
        path => Ok(GuestImage::Elf(path.into())),
    }
}

#[derive(Debug, Args)]
struct MeasureArgs {
    /// The guest: relay, test or the path of a guest ELF
    #[arg(long, value_name = "relay|test|ELF", default_value = "test", value_parser = guest_image)]
    guest: GuestImage,
    /// The SVSM ELF [default: the SVSM just built]
    #[arg(long, value_name = "ELF", value_hint = clap::ValueHint::FilePath)]
    svsm: Option<PathBuf>,
    /// The launch configuration measured into the image [default: the default one]
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    launch_config: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct IgvmArgs {
    /// The image started at VMPL0 (entered in 32-bit protected mode at its ELF entry)
    /// [default: the machine's test program]
    #[arg(long, value_name = "ELF", value_hint = clap::ValueHint::FilePath)]
    boot: Option<PathBuf>,
    /// More images to load and measure (started by the boot image)
    #[arg(long, value_name = "ELF", requires = "boot", value_hint = clap::ValueHint::FilePath)]
    extra: Vec<PathBuf>,
    /// Where to write the file [default: target/images/snp-test.igvm]
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SnpArgs {
    /// The IGVM file [default: the machine's test program]
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    igvm: Option<PathBuf>,
    /// The guest's command line (the IGVM command-line parameter) [default: none]
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    cmdline: Option<String>,
    /// Deterministic instruction counting (-icount shift=0)
    #[arg(long)]
    icount: bool,
}

#[derive(Debug, Args)]
struct ManArgs {
    /// The directory to write the pages to (created if needed)
    #[arg(long, value_name = "DIR", default_value = "target/man", value_hint = clap::ValueHint::DirPath)]
    out: PathBuf,
}

#[derive(Debug, Args)]
struct InstallArgs {
    /// Install under DIR (DIR/bin/nitride, DIR/share/man/man1) [default: cargo's
    /// install root: $CARGO_INSTALL_ROOT, else $CARGO_HOME, else ~/.cargo]
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    root: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Xtask::parse();
    let result = match args.task {
        Task::Build => build().map(|_| ExitCode::SUCCESS),
        Task::Run(a) => run(a),
        Task::Test => test(),
        Task::Demo => demo(),
        Task::Bench => bench(),
        Task::Up(a) => up(&a),
        Task::Down => down(),
        Task::DevChain(a) => show_dev_chain(&a),
        Task::Measure(a) => measure_cmd(a),
        Task::Igvm(a) => igvm_cmd(&a),
        Task::Snp(a) => snp_cmd(&a),
        Task::Man(a) => man(&a),
        Task::Install(a) => install(&a),
        Task::InstallToken(a) => install_token(&a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn build() -> Result<Images, Error> {
    let images = build_images()?;
    for (name, path) in [
        ("SVSM (IGVM payload)", &images.svsm),
        (
            "SVSM (fault injection, tests only)",
            &images.svsm_fault_injection,
        ),
        ("test guest", &images.test_guest),
        ("relay guest", &images.relay_guest),
        ("virtual SNP machine", &images.machine),
    ] {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        println!("{name:36} {} ({size} bytes)", path.display());
    }
    Ok(images)
}

fn run(a: RunArgs) -> Result<ExitCode, Error> {
    ensure_qemu()?;
    let images = build_images()?;
    let mut boot = Boot::new(&images.svsm, &images.test_guest, "");
    if let Some(g) = a.guest {
        boot.guest = g;
    }
    if let Some(s) = a.svsm {
        boot.svsm = s;
    }
    if let Some(g) = a.guest_args {
        boot.guest_args = g;
    }
    if let Some(s) = a.svsm_args {
        boot.svsm_args = s;
    }
    boot.launch_config = a.launch_config;
    boot.icount = a.icount;
    boot.extra = a.qemu;
    let machine = boot.prepare(&nitride_qemu::images_dir().join("run.igvm"))?;
    let status = Command::new(QEMU).args(machine.qemu_args()).status()?;
    println!("\nQEMU exited with status {:?}", status.code());
    Ok(ExitCode::from(
        status.code().unwrap_or(1).clamp(0, 255) as u8
    ))
}

fn test() -> Result<ExitCode, Error> {
    ensure_qemu()?;
    let start = Instant::now();
    build()?;
    let cargo_bin = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo = Command::new(&cargo_bin)
        .args(["test", "--workspace"])
        .status()?;
    // The test KBS's own suite (Python, no QEMU): run it even when a Rust test
    // failed, so one run shows every failure.
    let kbs = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s"])
        .arg(repo_root().join("tests").join("kbs"))
        .status()?;
    let passed = cargo.success() && kbs.success();
    println!(
        "cargo xtask test: {} in {:.1} s{}",
        if passed { "passed" } else { "FAILED" },
        start.elapsed().as_secs_f64(),
        match (cargo.success(), kbs.success()) {
            (false, false) => " (Rust tests and test KBS tests)",
            (false, true) => " (Rust tests)",
            (true, false) => " (test KBS tests: python3 -m unittest discover -s tests/kbs)",
            (true, true) => "",
        }
    );
    Ok(if passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What each check of the test guest's call sequence shows.
const CALLS: &[(&str, &str)] = &[
    (
        "query-core-v1",
        "QUERY_PROTOCOL(core, v1) -> SUCCESS, RCX = versions 1..1",
    ),
    (
        "query-core-v2",
        "QUERY_PROTOCOL(core, v2) -> SUCCESS, RCX = 0 (version not served)",
    ),
    (
        "query-unknown-protocol",
        "QUERY_PROTOCOL(0x1234, v1) -> SUCCESS, RCX = 0 (protocol not served)",
    ),
    ("unsupported-call", "core call 0x99 -> ERR_UNSUPPORTED_CALL"),
    (
        "pvalidate-svsm-page-refused",
        "PVALIDATE of an SVSM page -> ERR_INVALID_ADDRESS",
    ),
    (
        "pvalidate-validate-and-use",
        "PVALIDATE of a guest page -> SUCCESS, the page is usable",
    ),
    (
        "pvalidate-unchanged",
        "PVALIDATE of a page already valid -> FAIL_UNCHANGED",
    ),
    (
        "pvalidate-rescind",
        "PVALIDATE rescind (revoked from VMPL1 first) -> SUCCESS",
    ),
    (
        "pvalidate-2m-size-mismatch",
        "PVALIDATE of a 2 MiB page on 4 KiB RMP entries -> FAIL_SIZEMISMATCH",
    ),
    (
        "create-vcpu-svsm-page-refused",
        "CREATE_VCPU with a VMSA in SVSM memory -> ERR_INVALID_ADDRESS",
    ),
    (
        "create-vcpu-same-page-refused",
        "CREATE_VCPU with VMSA and CAA on one page -> ERR_INVALID_PARAMETER",
    ),
    (
        "create-vcpu-bad-vmsa-refused",
        "CREATE_VCPU with a VMSA of the wrong VMPL or features -> ERR_INVALID_PARAMETER",
    ),
    (
        "delete-vcpu-unknown-refused",
        "DELETE_VCPU of an unknown VMSA -> ERR_INVALID_PARAMETER",
    ),
    (
        "deposit-mem-unsupported",
        "DEPOSIT_MEM -> ERR_UNSUPPORTED_CALL (the SVSM needs no memory from the guest)",
    ),
    (
        "withdraw-mem-unsupported",
        "WITHDRAW_MEM -> ERR_UNSUPPORTED_CALL",
    ),
    (
        "configure-vtom-unsupported",
        "CONFIGURE_VTOM -> ERR_UNSUPPORTED_CALL (no vTOM)",
    ),
    (
        "unsupported-protocol",
        "protocol 0x77 -> ERR_UNSUPPORTED_PROTOCOL",
    ),
    (
        "remap-ca-unaligned",
        "REMAP_CA to an unaligned address -> ERR_INVALID_PARAMETER",
    ),
    (
        "remap-ca-svsm-memory",
        "REMAP_CA into SVSM memory -> ERR_INVALID_ADDRESS",
    ),
    (
        "remap-ca-not-ram",
        "REMAP_CA onto the APIC page (not RAM) -> ERR_INVALID_ADDRESS",
    ),
    (
        "remap-ca-top-of-space",
        "REMAP_CA at the top of the address space -> ERR_INVALID_ADDRESS",
    ),
    ("remap-ca-good", "REMAP_CA to a guest page -> SUCCESS"),
    (
        "call-through-new-caa",
        "a call through the new calling area is served",
    ),
    (
        "old-caa-ignored",
        "call_pending in the old calling area is no longer served",
    ),
    (
        "no-call-pending-not-served",
        "VMGEXIT without call_pending: registers untouched, not served",
    ),
    ("served-again-after", "the SVSM keeps serving afterwards"),
];

fn demo() -> Result<ExitCode, Error> {
    ensure_qemu()?;
    println!("Building the SVSM and the test guest...");
    let images = build_images()?;
    println!("\n== 1. Boot: the virtual SNP machine (stock QEMU) launches the SVSM's IGVM image at VMPL0; the SVSM starts the guest at VMPL1 and serves its SVSM calls\n");
    let out = Boot::new(&images.svsm, &images.test_guest, "mode=calls").run()?;
    for l in out
        .svsm_log
        .lines()
        .filter(|l| l.starts_with("[snp-machine] ") || l.starts_with("[svsm] "))
        .take_while(|l| !l.contains("entering guest"))
    {
        println!("  {l}");
    }
    if let Some(l) = out.svsm_lines().find(|l| l.contains("entering guest")) {
        println!("  {l}");
    }
    for l in out.guest_lines().filter(|l| l.contains("SVSM at")) {
        println!("  {l}   <- discovered from the secrets page");
    }
    println!("\n== 2. The guest's call sequence (guest at VMPL1 calls the SVSM: call_pending in its CAA + VMGEXIT with SNP_RUN_VMPL(0))\n");
    let mut all_ok = out.outcome() == Outcome::GuestPass;
    for (name, what) in CALLS {
        let line = out
            .guest_lines()
            .find(|l| l.contains(&format!("CHECK {name}:")));
        let ok = line.is_some_and(|l| l.ends_with("... ok"));
        all_ok &= ok;
        println!("  [{}] {what}", if ok { "ok" } else { "FAILED" });
    }
    if let Some(l) = out.guest_lines().find(|l| l.contains("RESULT")) {
        println!(
            "\n  {l}  ({:.2} s wall, QEMU status {:?})",
            out.elapsed.as_secs_f64(),
            out.status
        );
    }
    println!("\n== 3. Isolation: the guest tries to reach SVSM memory; the RMP stops every attempt (the SVSM never granted its pages to VMPL1)\n");
    for mode in ["read-svsm", "write-svsm", "exec-svsm", "read-mmio"] {
        let out = Boot::new(&images.svsm, &images.test_guest, &format!("mode={mode}")).run()?;
        let stopped = out.outcome() == Outcome::Violation;
        all_ok &= stopped && !out.console.contains("ISOLATION BROKEN");
        let line = out
            .svsm_log
            .lines()
            .find(|l| l.contains("VIOLATION: VMPL1"))
            .unwrap_or("(no report)");
        println!(
            "  {mode:11} {} {line}",
            if stopped { "stopped:" } else { "NOT STOPPED:" }
        );
    }
    all_ok &= vhsm_story(&images)?;
    all_ok &= sealing_story(&images)?;
    all_ok &= pkcs11_story(&images)?;
    all_ok &= provisioning_story(&images)?;
    all_ok &= luks_story(&images)?;
    println!(
        "\n{}",
        if all_ok {
            "Demo complete: calls answered as specified, every isolation probe stopped, the vHSM served from VMPL0, its attestation verified, a key survived a restart, a PKCS#11 client signed with a vHSM key, a KBS released an owner-signed secret only to the measured firmware, LUKS2 volumes opened with passphrases the vHSM released (sealed and KBS)."
        } else {
            "Demo found problems (see above)."
        }
    );
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn bench() -> Result<ExitCode, Error> {
    ensure_qemu()?;
    let images = build_images()?;
    println!("On the virtual SNP machine (the SVSM from IGVM at VMPL0, the test guest at VMPL1):");
    let mut all_ok = true;
    let mut firmware = Vec::new();
    for mode in [
        "mode=bench",
        "mode=bench-vhsm",
        "mode=bench-attest",
        "mode=bench-seal",
    ] {
        let mut boot = Boot::new(&images.svsm, &images.test_guest, mode);
        boot.icount = true;
        boot.timeout = std::time::Duration::from_secs(600);
        let out = boot.run()?;
        for l in out.guest_lines().filter(|l| l.contains("BENCH")) {
            println!("{l}");
            if let Some((name, n)) = l
                .split("BENCH vhsm_")
                .nth(1)
                .and_then(|r| r.split_once("_insns="))
            {
                firmware.push((name.to_string(), n.trim().parse::<u64>().unwrap_or(0)));
            }
        }
        println!(
            "{mode}: QEMU status {:?}, {:.2} s wall",
            out.status,
            out.elapsed.as_secs_f64()
        );
        if mode == "mode=bench-attest" {
            attestation_split(&out.combined);
        }
        all_ok &= out.outcome() == Outcome::GuestPass;
    }
    raw_crypto_comparison(&firmware)?;
    let stripped = repo_root().join("target").join("bench-svsm.stripped");
    let status = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&images.svsm)
        .status()?;
    if status.success() {
        println!(
            "SVSM: {} bytes, stripped {} bytes",
            std::fs::metadata(&images.svsm)?.len(),
            std::fs::metadata(&stripped)?.len()
        );
    }
    relay_throughput(&images)?;
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The number right after `label` in `line`.
fn number_after(line: &str, label: &str) -> Option<u64> {
    let rest = &line[line.find(label)? + label.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Sums of one request kind's measurements (instructions under icount).
#[derive(Default)]
struct AttestSplit {
    /// Guest-measured instructions per request (`BENCH attest_<kind>_insns=`).
    guest: u64,
    /// Requests the SVSM's `attestation:` line was seen for, and its sums:
    /// total, manifest build, manifest bytes, SHA-512, PSP.
    svsm_n: u64,
    svsm: [u64; 5],
    /// Requests a `PSP round trip:` line was seen for, and the sum of their round
    /// trips (the GHCB guest request, the machine's PSP inside it).
    psp_n: u64,
    psp: u64,
}

/// Put the SVSM's per-request log lines (`attestation: ...`, `PSP round trip: ...`)
/// beside the guest's `BENCH attest_*` counts of `mode=bench-attest`, per request
/// kind, and print the split.
fn attestation_split(console: &str) {
    let mut kinds: Vec<(String, AttestSplit)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in console.lines() {
        if let Some(name) = line.split("ATTEST-BEGIN ").nth(1) {
            kinds.push((name.trim().to_string(), AttestSplit::default()));
            current = Some(kinds.len() - 1);
            continue;
        }
        let Some((_, split)) = current.and_then(|i| kinds.get_mut(i)) else {
            continue;
        };
        if line.contains("[guest]") && line.contains("BENCH attest_") {
            split.guest = number_after(line, "_insns=").unwrap_or(0);
            current = None;
        } else if line.contains("[svsm]") && line.contains("attestation: ") {
            let fields = [
                number_after(line, "attestation: "),
                number_after(line, "manifest "),
                number_after(line, "("),
                number_after(line, "SHA-512 "),
                number_after(line, "PSP "),
            ];
            if let [Some(a), Some(b), Some(c), Some(d), Some(e)] = fields {
                split.svsm_n += 1;
                for (sum, v) in split.svsm.iter_mut().zip([a, b, c, d, e]) {
                    *sum += v;
                }
            }
        } else if line.contains("[svsm]") && line.contains("PSP round trip: ") {
            if let Some(round_trip) = number_after(line, "PSP round trip: ") {
                split.psp_n += 1;
                split.psp += round_trip;
            }
        }
    }
    if kinds.is_empty() {
        println!("no attestation measurements in the console");
        return;
    }
    let avg = |sum: u64, n: u64| sum.checked_div(n);
    let cell = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    println!(
        "\nattestation, instructions per request (averages; SVSM split from its log lines)\n\
         {:<24} {:>10} {:>10} {:>8} {:>9} {:>6} {:>8} {:>10} {:>10}",
        "request",
        "total",
        "SVSM",
        "rest",
        "manifest",
        "bytes",
        "SHA-512",
        "PSP call",
        "round trip",
    );
    for (name, s) in &kinds {
        let svsm = |i: usize| avg(s.svsm[i], s.svsm_n);
        let psp = avg(s.psp, s.psp_n);
        println!(
            "{name:<24} {:>10} {:>10} {:>8} {:>9} {:>6} {:>8} {:>10} {:>10}",
            s.guest,
            cell(svsm(0)),
            cell(svsm(0).or(psp).map(|inner| s.guest.saturating_sub(inner))),
            cell(svsm(1)),
            cell(svsm(2)),
            cell(svsm(3)),
            cell(svsm(4)),
            cell(psp),
        );
    }
    println!(
        "total: guest-measured round trip; SVSM: the attestation handler; rest = total - \
         SVSM (AttestKey: total - round trip): guest side, world switches, dispatch, the \
         vault's request handling (AttestKey), log lines; manifest: the vault's manifest \
         and the services table; PSP call: the handler's platform call (round trip + its \
         log line); round trip: the GHCB guest request, the machine's PSP (decryption, \
         report, signing, encryption) included"
    );
}

/// Requests per second through the relay guest on the virtual SNP machine (wall
/// clock, QEMU TCG).
fn relay_throughput(images: &Images) -> Result<(), Error> {
    use nitride_guest_driver::relay::RelayClient;
    use nitride_guest_driver::vhsm::VhsmClient;
    use nitride_protocol::vhsm::{KeyTemplate, KeyType, KeyUsage, VmplSet};
    let dir = repo_root().join("target").join("bench-relay");
    let vm = RunningVm::start(&images.svsm, &images.relay_guest, &dir, "")?;
    let relay = RelayClient::connect(&vm.socket).map_err(|e| Error::Build(e.to_string()))?;
    let mut c = VhsmClient::new(relay);
    let t = KeyTemplate::new(KeyType::HmacSha384, KeyUsage::SIGN, VmplSet::all(), false);
    let key = c
        .generate(t, b"")
        .map_err(|e| Error::Build(e.to_string()))?
        .key_id
        .get();
    println!();
    for (name, n) in [("random(32)", 500u32), ("hmac sign(64 B)", 500)] {
        let start = Instant::now();
        for _ in 0..n {
            let r = if name.starts_with("random") {
                c.random(32)
            } else {
                c.sign(key, &[0u8; 64])
            };
            r.map_err(|e| Error::Build(e.to_string()))?;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "relay, {name}: {n} requests in {secs:.2} s = {:.0} requests/s",
            f64::from(n) / secs,
        );
    }
    Ok(())
}

/// Operations `raw_icount` implements.
const RAW_OPS: &[&str] = &[
    "hmac_sign64",
    "aes_gcm_encrypt1k",
    "ed25519_sign64",
    "ed25519_verify64",
    "ecdsa_p384_sign64",
    "ecdsa_p384_verify64",
    "ecdsa_p384_sign_report",
];

/// Instructions of one raw-crypto operation on the host: callgrind over
/// `raw_icount OP n` minus `raw_icount OP 0`, divided by n.
fn callgrind_per_op(exe: &std::path::Path, op: &str, n: u64) -> Option<u64> {
    let total = |count: u64| -> Option<u64> {
        let out = Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(exe)
            .args([op, &count.to_string()])
            .output()
            .ok()?;
        let err = String::from_utf8_lossy(&out.stderr);
        err.lines()
            .find_map(|l| l.split("Collected : ").nth(1))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(total(n)?.saturating_sub(total(0)?) / n)
}

/// The firmware's round trip per operation beside the raw crypto's instructions
/// on the host (same crates, release profile).
fn raw_crypto_comparison(firmware: &[(String, u64)]) -> Result<(), Error> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!(
            "valgrind not found: skipping the raw-crypto comparison (apt-get install valgrind)"
        );
        return Ok(());
    }
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "nitride-vhsm",
            "--example",
            "raw_icount",
        ])
        .status()?;
    if !status.success() {
        return Err(Error::Build("raw_icount example".into()));
    }
    let exe = repo_root().join("target/x86_64-unknown-linux-gnu/release/examples/raw_icount");
    println!(
        "\n{:<22} {:>14} {:>14} {:>14} {:>8}",
        "operation", "firmware", "raw crypto", "calling path", "ratio"
    );
    for (op, fw) in firmware {
        // Operations with no single raw-crypto counterpart: the calling path alone.
        if !RAW_OPS.contains(&op.as_str()) {
            println!("{op:<22} {fw:>14} {:>14} {fw:>14} {:>8}", "-", "-");
            continue;
        }
        let n = if op.starts_with("ecdsa") { 10 } else { 100 };
        let Some(raw) = callgrind_per_op(&exe, op, n).filter(|&r| r > 0) else {
            continue;
        };
        println!(
            "{op:<22} {fw:>14} {raw:>14} {:>14} {:>8.3}",
            fw.saturating_sub(raw),
            *fw as f64 / raw as f64
        );
    }
    Ok(())
}

/// Where `up` keeps the running VM's socket, console and pid.
fn up_dir() -> std::path::PathBuf {
    repo_root().join("target").join("nitride-up")
}

fn up(args: &UpArgs) -> Result<ExitCode, Error> {
    ensure_qemu()?;
    down_quietly();
    let images = build_images()?;
    let dir = up_dir();
    let marker = dir.join(nitride_guest_driver::cli::seal::STATE_FILE_MARKER);
    let _ = std::fs::remove_file(&marker);
    let config = args
        .launch_config
        .as_ref()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()));
    let vm = RunningVm::start_with(
        &images.svsm,
        &images.relay_guest,
        &dir,
        "",
        config.as_deref(),
    )?;
    if let Some(state) = &args.state {
        // An absolute path: `nitride` may run from anywhere.
        let state = std::path::absolute(state)?;
        match load_state(&vm.socket, &state) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("xtask: up: {}: {e}; stopping", state.display());
                return Ok(ExitCode::FAILURE);
            }
        }
        std::fs::write(&marker, state.as_os_str().as_encoded_bytes())?;
    }
    std::fs::write(dir.join("qemu.pid"), vm.pid().to_string())?;
    println!("Nitride is up (QEMU pid {}).", vm.pid());
    println!("  relay socket: {}", vm.socket.display());
    println!("  console log:  {}", vm.console.display());
    println!(
        "Use it with:  export NITRIDE_SOCKET={}",
        vm.socket.display()
    );
    println!("              nitride key list     (install nitride with `cargo xtask install`)");
    println!("Stop it with: cargo xtask down");
    vm.detach();
    Ok(ExitCode::SUCCESS)
}

/// `up --state FILE`: import FILE into the fresh vault (writing back the blob
/// resealed at the current TCB, if the vault made one), or, when FILE does not exist,
/// export the empty state into it.
fn load_state(socket: &Path, state: &Path) -> Result<String, String> {
    use nitride_guest_driver::cli::seal::write_state;
    use nitride_guest_driver::relay::RelayClient;
    use nitride_guest_driver::vhsm::VhsmClient;
    let relay = RelayClient::connect(socket).map_err(|e| e.to_string())?;
    let mut client = VhsmClient::new(relay);
    match std::fs::read(state) {
        Ok(blob) => {
            let i = client.import_state(&blob).map_err(|e| e.to_string())?;
            if let Some(resealed) = &i.resealed {
                write_state(state, resealed).map_err(|e| e.to_string())?;
            }
            Ok(format!(
                "Restored {} persistent key(s) from {} (state generation {}{}).",
                i.keys,
                state.display(),
                i.generation,
                if i.resealed.is_some() {
                    "; it was sealed at an older TCB and now holds the state sealed at the current one"
                } else {
                    ""
                }
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (generation, blob) = client.export_state().map_err(|e| e.to_string())?;
            write_state(state, &blob).map_err(|e| e.to_string())?;
            Ok(format!(
                "New vault state in {} (generation {generation}): keys made with --persistent are kept there.",
                state.display()
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// At `down`: the running vault's state into the state file `up --state` named.
fn save_state() -> Option<String> {
    use nitride_guest_driver::relay::RelayClient;
    use nitride_guest_driver::vhsm::VhsmClient;
    let dir = up_dir();
    let marker = dir.join(nitride_guest_driver::cli::seal::STATE_FILE_MARKER);
    let state = PathBuf::from(std::fs::read_to_string(&marker).ok()?.trim());
    let _ = std::fs::remove_file(&marker);
    let result = RelayClient::connect(&dir.join("vhsm.sock"))
        .map_err(|e| e.to_string())
        .and_then(|relay| {
            VhsmClient::new(relay)
                .export_state()
                .map_err(|e| e.to_string())
        })
        .and_then(|(generation, blob)| {
            nitride_guest_driver::cli::seal::write_state(&state, &blob)
                .map(|()| generation)
                .map_err(|e| e.to_string())
        });
    Some(match result {
        Ok(g) => format!(
            "Vault state (generation {g}) saved to {}.",
            state.display()
        ),
        Err(e) => format!(
            "warning: the vault state could not be saved to {} at down: {e} (the file holds the state of the last change)",
            state.display()
        ),
    })
}

fn down_quietly() -> bool {
    let pidfile = up_dir().join("qemu.pid");
    let Ok(pid) = std::fs::read_to_string(&pidfile) else {
        return false;
    };
    if let Some(line) = save_state() {
        println!("{line}");
    }
    let _ = std::fs::remove_file(&pidfile);
    Command::new("kill")
        .arg(pid.trim())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn down() -> Result<ExitCode, Error> {
    if down_quietly() {
        println!("Nitride stopped.");
    } else {
        println!("Nitride was not running.");
    }
    Ok(ExitCode::SUCCESS)
}

/// Run one `nitride` command in-process against `socket`, printing it as typed and
/// its output (binary output summarised); returns (success, stdout).
fn nitride(socket: &std::path::Path, args: &[&str]) -> (bool, Vec<u8>) {
    println!("  $ nitride {}", args.join(" "));
    // `report` and `owner` work on files only and take no socket.
    let (result, out) = if matches!(args.first(), Some(&"report" | &"owner")) {
        let argv: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut out = Vec::new();
        (nitride_guest_driver::cli::run(&argv, &mut out), out)
    } else {
        nitride_guest_driver::cli::run_with_socket(socket, args)
    };
    let ok = match result {
        Ok(()) => true,
        Err(e) => {
            println!("    nitride: {e}");
            false
        }
    };
    match std::str::from_utf8(&out) {
        Ok(t) => t.lines().for_each(|l| println!("    {l}")),
        Err(_) => println!("    ({} bytes of binary output)", out.len()),
    }
    (ok, out)
}

fn vhsm_story(images: &Images) -> Result<bool, Error> {
    println!("\n== 4. The vHSM: keys live in SVSM memory; the guest (the relay) only forwards requests\n");
    let dir = repo_root().join("target").join("demo");
    let vm = RunningVm::start(&images.svsm, &images.relay_guest, &dir, "")?;
    let s = vm.socket.clone();
    std::env::set_current_dir(&dir)?;
    println!("  (in {})", dir.display());
    let f = |n: &str| n.to_string();
    std::fs::write(
        dir.join("release.txt"),
        b"Nitride release 0.1.0: signed inside the SVSM\n",
    )?;
    std::fs::write(dir.join("secret.txt"), b"the database password\n")?;
    let mut ok = true;
    ok &= nitride(
        &s,
        &[
            "key",
            "generate",
            "--type",
            "ecdsa-p384",
            "--label",
            "release-signing",
        ],
    )
    .0;
    ok &= nitride(
        &s,
        &[
            "sign",
            "1",
            "--in",
            &f("release.txt"),
            "--out",
            &f("release.sig"),
        ],
    )
    .0;
    ok &= nitride(
        &s,
        &["key", "pubkey", "1", "--pem", "--out", &f("signer.pem")],
    )
    .0;
    let args = [
        "dgst",
        "-sha384",
        "-verify",
        &f("signer.pem"),
        "-signature",
        &f("release.sig"),
        &f("release.txt"),
    ];
    println!("  $ openssl {}", args.join(" "));
    let ossl = Command::new("openssl").args(args).output()?;
    println!("    {}", String::from_utf8_lossy(&ossl.stdout).trim());
    ok &= ossl.status.success();
    ok &= nitride(
        &s,
        &[
            "key", "generate", "--type", "aes-256", "--label", "app-data",
        ],
    )
    .0;
    ok &= nitride(
        &s,
        &[
            "encrypt",
            "2",
            "--aad",
            "v1",
            "--in",
            &f("secret.txt"),
            "--out",
            &f("secret.enc"),
        ],
    )
    .0;
    ok &= nitride(
        &s,
        &["decrypt", "2", "--aad", "v1", "--in", &f("secret.enc")],
    )
    .0;
    ok &= nitride(
        &s,
        &[
            "key",
            "generate",
            "--type",
            "aes-256",
            "--usage",
            "wrap,unwrap",
            "--label",
            "kek",
        ],
    )
    .0;
    println!(
        "  (keys are generated non-exportable unless asked: no path gets them out, wrapped or not)"
    );
    ok &= !nitride(&s, &["wrap", "3", "1"]).0;
    ok &= !nitride(&s, &["wrap", "3", "2"]).0;
    ok &= nitride(&s, &["key", "list"]).0;
    ok &= nitride(&s, &["audit"]).0;
    let console = vm.svsm_log_text();
    if let Some(l) = console.lines().find(|l| l.contains("vHSM ready")) {
        println!("\n  SVSM console: {}", l.trim());
    }
    ok &= attestation_story(&s, images)?;
    let console = vm.svsm_log_text();
    println!();
    for l in console.lines().filter(|l| {
        l.contains("PSP channel") || l.contains("attestation:") || l.contains("PSP round trip")
    }) {
        println!("  SVSM console: {}", l.trim());
    }
    Ok(ok)
}

/// Part 6 of the demo: a persistent key survives a restart. The state file is kept as
/// `cargo xtask up --state` keeps it: imported at start, written by `nitride` after
/// every change.
fn sealing_story(images: &Images) -> Result<bool, Error> {
    println!("\n== 6. Sealing: a persistent key survives a restart; only this image on this chip opens its state\n");
    let dir = repo_root().join("target").join("demo-seal");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::env::set_current_dir(&dir)?;
    println!("  (in {})", dir.display());
    let state = dir.join("vault.sealed");
    let marker = |vm: &RunningVm| {
        std::fs::write(
            vm.dir
                .join(nitride_guest_driver::cli::seal::STATE_FILE_MARKER),
            state.as_os_str().as_encoded_bytes(),
        )
    };
    std::fs::write(dir.join("note.txt"), b"signed before and after a restart\n")?;
    std::fs::write(dir.join("disk.key"), b"0123456789abcdef0123456789abcdef")?;
    let mut ok = true;
    let vm_dir = dir.join("vm");
    {
        let vm = RunningVm::start(&images.svsm, &images.relay_guest, &vm_dir, "")?;
        let s = vm.socket.clone();
        match load_state(&s, &state) {
            Ok(line) => println!("  {line}"),
            Err(e) => {
                println!("  state: {e}");
                ok = false;
            }
        }
        marker(&vm)?;
        ok &= nitride(
            &s,
            &[
                "key",
                "generate",
                "--type",
                "ecdsa-p384",
                "--persistent",
                "--label",
                "long-lived",
            ],
        )
        .0;
        ok &= nitride(
            &s,
            &["key", "pubkey", "1", "--pem", "--out", "long-lived.pem"],
        )
        .0;
        ok &= nitride(
            &s,
            &[
                "seal",
                "--vmpls",
                "1",
                "--in",
                "disk.key",
                "--out",
                "disk.key.sealed",
            ],
        )
        .0;
        println!(
            "  ({} now holds the state: {} bytes; the VM stops)",
            state.display(),
            std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0)
        );
    }
    let vm = RunningVm::start(&images.svsm, &images.relay_guest, &vm_dir, "")?;
    let s = vm.socket.clone();
    println!("  (a new VM: same SVSM and guest images, same chip)");
    match load_state(&s, &state) {
        Ok(line) => println!("  {line}"),
        Err(e) => {
            println!("  state: {e}");
            ok = false;
        }
    }
    marker(&vm)?;
    ok &= nitride(&s, &["key", "list"]).0;
    ok &= nitride(&s, &["sign", "1", "--in", "note.txt", "--out", "note.sig"]).0;
    let args = [
        "dgst",
        "-sha384",
        "-verify",
        "long-lived.pem",
        "-signature",
        "note.sig",
        "note.txt",
    ];
    println!(
        "  $ openssl {}   # the public key exported before the restart",
        args.join(" ")
    );
    let ossl = Command::new("openssl").args(args).output()?;
    println!("    {}", String::from_utf8_lossy(&ossl.stdout).trim());
    ok &= ossl.status.success();
    let (unsealed, out) = nitride(&s, &["unseal", "--in", "disk.key.sealed"]);
    ok &= unsealed && out == std::fs::read(dir.join("disk.key"))?;
    Ok(ok)
}

/// The test KBS (tests/kbs) as a process, stopped when dropped.
struct DemoKbs(std::process::Child);

impl Drop for DemoKbs {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the test KBS with `args` on a free loopback port, its log in `log`; returns
/// it and its URL.
fn start_demo_kbs(args: &[&str], log: &std::path::Path) -> Result<(DemoKbs, String), Error> {
    use std::io::BufRead as _;
    let root = repo_root();
    let mut child = Command::new("python3")
        .arg(root.join("tests/kbs/kbs.py"))
        .args(["--port", "0", "--dev-root"])
        .arg(root.join("target/dev-chain"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        std::io::BufReader::new(out).read_line(&mut line)?;
    }
    let kbs = DemoKbs(child);
    match line.trim().strip_prefix("kbs: listening on ") {
        Some(url) => Ok((kbs, url.to_string())),
        None => Err(Error::Io(std::io::Error::other(format!(
            "the test KBS did not start ({}): {}",
            line.trim(),
            std::fs::read_to_string(log).unwrap_or_default()
        )))),
    }
}

/// The owner's side of demo parts 8 and 9, in `dir`: a fresh 32-byte secret (in
/// `NAME.key`), an owner key pair (`owner.pem`), the launch
/// configuration naming its public key (`launch-config.bin`) and the secret in an
/// envelope the owner signed (`envelope.jws`: an AES-256 key labelled NAME with
/// `usage`, for VMPL1). Returns whether every command succeeded, the configuration
/// file and the relay VM's expected MEASUREMENT under it.
fn owner_side(
    dir: &Path,
    images: &Images,
    name: &str,
    usage: &str,
) -> Result<(bool, PathBuf, String), Error> {
    let key_file = format!("{name}.key");
    let mut secret = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut secret)?;
    std::fs::write(dir.join(&key_file), secret)?;
    let none = Path::new("");
    let mut ok = nitride(none, &["owner", "keygen", "--out", "owner.pem"]).0;
    ok &= nitride(
        none,
        &[
            "owner",
            "launch-config",
            "--owner",
            "owner.pem.pub",
            "--out",
            "launch-config.bin",
        ],
    )
    .0;
    ok &= nitride(
        none,
        &[
            "owner",
            "envelope",
            "--key",
            "owner.pem",
            "--type",
            "aes-256",
            "--usage",
            usage,
            "--vmpls",
            "1",
            "--label",
            name,
            "--in",
            &key_file,
            "--out",
            "envelope.jws",
        ],
    )
    .0;
    let config = dir.join("launch-config.bin");
    let measurement = hex::encode(nitride_qemu::measure::launch_measurement_with(
        &images.svsm,
        &images.relay_guest,
        Some(&config),
    )?);
    Ok((ok, config, measurement))
}

/// Part 8 of the demo, the seeds' Case B: the owner signs a secret for the vault and
/// puts it in a KBS (the test KBS of tests/kbs); the firmware, measured with the
/// owner's public key in its launch configuration, attests to the KBS at VMPL0 and
/// receives the secret encrypted to a key only the vault holds; a KBS expecting
/// another measurement refuses. Skipped (not failed) without the KBS's Python
/// packages.
fn provisioning_story(images: &Images) -> Result<bool, Error> {
    println!("\n== 8. Case B: a Key Broker Service releases an owner-signed secret to the attested vault\n");
    let probe = Command::new("python3")
        .args(["-c", "import jwcrypto, rfc8785, cryptography"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!(
            "  skipped: the test KBS needs Python's jwcrypto, rfc8785 and cryptography \
             (pip install -r tests/kbs/requirements.txt; .ci/run installs them)"
        );
        return Ok(true);
    }
    let dir = repo_root().join("target").join("demo-provision");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::env::set_current_dir(&dir)?;
    println!("  (in {})", dir.display());
    let mut ok = true;
    // The owner's side: a key pair, the launch configuration naming its public key,
    // and the secret in an envelope signed with it.
    let (owner_ok, config, measurement) = owner_side(&dir, images, "disk", "encrypt,decrypt")?;
    ok &= owner_ok;
    println!("  (the firmware's expected MEASUREMENT with this configuration: {measurement})");
    let resource = format!("nitride/key/disk={}", dir.join("envelope.jws").display());
    let (_kbs, url) = start_demo_kbs(
        &["--measurement", &measurement, "--resource", &resource],
        &dir.join("kbs.log"),
    )?;
    println!("  (test KBS at {url}: releases nitride/key/disk to that measurement only)");
    let vm = RunningVm::start_with(
        &images.svsm,
        &images.relay_guest,
        &dir.join("vm"),
        "",
        Some(&config),
    )?;
    let s = vm.socket.clone();
    let (provisioned, _) = nitride(
        &s,
        &["provision", "--kbs", &url, "--resource", "nitride/key/disk"],
    );
    ok &= provisioned;
    let (listed, out) = nitride(&s, &["key", "list"]);
    ok &= listed && String::from_utf8_lossy(&out).contains("provisioned");
    // The secret now encrypts in the vault (the guest relayed only the report, the
    // JWK and the JWE: tests/tests/provision.rs checks those bytes never hold it).
    std::fs::write(dir.join("note.txt"), b"data for the owner\n")?;
    ok &= nitride(
        &s,
        &["encrypt", "1", "--in", "note.txt", "--out", "note.enc"],
    )
    .0;
    // The owner, holding the secret, opens what the vault encrypted (Python's
    // `cryptography`): the vault's key is the owner's secret.
    let script = "import sys; from cryptography.hazmat.primitives.ciphers.aead import AESGCM; \
                  b = open('note.enc', 'rb').read(); k = open('disk.key', 'rb').read(); \
                  sys.stdout.write(AESGCM(k).decrypt(b[:12], b[12:], None).decode())";
    println!("  $ python3 -c '<AES-256-GCM decryption of note.enc with the owner's disk.key>'");
    let py = Command::new("python3").args(["-c", script]).output()?;
    println!(
        "    {}",
        String::from_utf8_lossy(if py.status.success() {
            &py.stdout
        } else {
            &py.stderr
        })
        .trim()
    );
    ok &= py.status.success() && py.stdout == b"data for the owner\n";
    // A KBS that expects another measurement refuses; nothing enters the vault.
    let (_other, url) = start_demo_kbs(
        &["--measurement", &"00".repeat(48), "--resource", &resource],
        &dir.join("kbs-other.log"),
    )?;
    println!("  (a second KBS that expects another measurement, at {url})");
    let (refused, _) = nitride(
        &s,
        &["provision", "--kbs", &url, "--resource", "nitride/key/disk"],
    );
    ok &= !refused;
    Ok(ok)
}

/// A token's JSON text.
fn serde_json_text(t: &nitride_guest_driver::cli::luks::Token) -> Result<String, Error> {
    t.to_json()
        .map_err(|e| Error::Build(format!("token JSON: {e}")))
}

/// `cryptsetup ARGS` for the demo: the command line shown, its output indented.
fn demo_cryptsetup(args: &[&str], socket: Option<&Path>) -> Result<bool, Error> {
    println!("  $ cryptsetup {}", args.join(" "));
    let mut c = Command::new("cryptsetup");
    c.args(args).stdin(std::process::Stdio::null());
    if let Some(s) = socket {
        c.env("NITRIDE_SOCKET", s);
    }
    let out = c.output()?;
    for l in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("    {l}");
    }
    Ok(out.status.success())
}

/// Part 9 of the demo, the seeds' disk flow: a LUKS2 image (real cryptsetup) whose
/// passphrase the vHSM releases. Sealed: enrolled in one VM, unlocked after a
/// restart. Remote: the vault key comes from the KBS after attestation; a KBS that
/// expects another measurement keeps the volume closed. With the token plugin
/// installed (`cargo xtask install-token`), `cryptsetup --token-only` unlocks too.
fn luks_story(images: &Images) -> Result<bool, Error> {
    println!("\n== 9. LUKS2: a volume opens only when the vHSM releases its passphrase (sealed or KBS)\n");
    if Command::new("cryptsetup")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("  skipped: cryptsetup is not installed (Debian: cryptsetup-bin)");
        return Ok(true);
    }
    let dir = repo_root().join("target").join("demo-luks");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::env::set_current_dir(&dir)?;
    println!("  (in {})", dir.display());
    let plugin =
        Path::new("/lib/x86_64-linux-gnu/cryptsetup/libcryptsetup-token-nitride.so").exists();
    let mut recovery = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut recovery)?;
    std::fs::write(dir.join("recovery.key"), recovery)?;
    let mut ok = true;
    for img in ["sealed.img", "remote.img"] {
        std::fs::File::create(dir.join(img))?.set_len(24 << 20)?;
        ok &= demo_cryptsetup(
            &[
                "luksFormat",
                "--batch-mode",
                "--type",
                "luks2",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--key-file",
                "recovery.key",
                img,
            ],
            None,
        )?;
    }
    println!(
        "\n  -- sealed: the vault key is sealed into the LUKS2 token, to this image on this chip"
    );
    {
        let vm = RunningVm::start(&images.svsm, &images.relay_guest, &dir.join("vm1"), "")?;
        ok &= nitride(
            &vm.socket,
            &[
                "luks",
                "enroll",
                "sealed.img",
                "--sealed",
                "--key-file",
                "recovery.key",
            ],
        )
        .0;
    }
    println!("  (the firmware restarted: a new VM, the same images)");
    {
        let vm = RunningVm::start(&images.svsm, &images.relay_guest, &dir.join("vm2"), "")?;
        ok &= nitride(
            &vm.socket,
            &["luks", "unlock", "sealed.img", "--test-passphrase"],
        )
        .0;
        if plugin {
            ok &= demo_cryptsetup(
                &[
                    "open",
                    "--test-passphrase",
                    "--token-only",
                    "-v",
                    "sealed.img",
                ],
                Some(&vm.socket),
            )?;
        } else {
            println!("  (token plugin not installed: `cargo xtask install-token` adds cryptsetup --token-only)");
        }
    }
    println!("\n  -- remote: the vault key is provisioned from the KBS after attestation, at every unlock");
    let probe = Command::new("python3")
        .args(["-c", "import jwcrypto, rfc8785, cryptography"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!("  skipped: the test KBS needs Python's jwcrypto, rfc8785 and cryptography");
        return Ok(ok);
    }
    let (owner_ok, config, measurement) = owner_side(&dir, images, "volume", "release")?;
    ok &= owner_ok;
    let _ = std::fs::remove_file(dir.join("volume.key"));
    let resource = format!("nitride/key/volume={}", dir.join("envelope.jws").display());
    let (_kbs, url) = start_demo_kbs(
        &["--measurement", &measurement, "--resource", &resource],
        &dir.join("kbs.log"),
    )?;
    let (_other, other_url) = start_demo_kbs(
        &["--measurement", &"00".repeat(48), "--resource", &resource],
        &dir.join("kbs-other.log"),
    )?;
    println!("  (test KBS at {url}: releases nitride/key/volume to this measurement only)");
    let vm = RunningVm::start_with(
        &images.svsm,
        &images.relay_guest,
        &dir.join("vm3"),
        "",
        Some(&config),
    )?;
    let s = vm.socket.clone();
    ok &= nitride(
        &s,
        &[
            "luks",
            "enroll",
            "remote.img",
            "--kbs",
            &url,
            "--resource",
            "nitride/key/volume",
            "--key-file",
            "recovery.key",
        ],
    )
    .0;
    ok &= nitride(&s, &["luks", "unlock", "remote.img", "--test-passphrase"]).0;
    if plugin {
        ok &= demo_cryptsetup(
            &[
                "open",
                "--test-passphrase",
                "--token-only",
                "-v",
                "remote.img",
            ],
            Some(&s),
        )?;
    }
    // Point the token at a KBS that expects another measurement: no release.
    let token = Command::new("cryptsetup")
        .args(["token", "export", "--token-id", "0", "remote.img"])
        .output()?;
    use nitride_guest_driver::cli::luks::{Source, Token};
    let mut t = Token::parse(&String::from_utf8_lossy(&token.stdout))
        .map_err(|e| Error::Build(format!("token export: {e}")))?;
    if let Source::Kbs { kbs_url, .. } = &mut t.source {
        kbs_url.clone_from(&other_url);
    }
    let changed = serde_json_text(&t)?;
    println!("  (the token now names a KBS that expects another measurement, at {other_url})");
    let replace = |json: &str| -> Result<bool, Error> {
        let removed = Command::new("cryptsetup")
            .args(["token", "remove", "--token-id", "0", "remote.img"])
            .status()?
            .success();
        let mut c = Command::new("cryptsetup")
            .args([
                "token",
                "import",
                "--token-id",
                "0",
                "--json-file",
                "-",
                "remote.img",
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()?;
        if let Some(mut stdin) = c.stdin.take() {
            std::io::Write::write_all(&mut stdin, json.as_bytes())?;
        }
        Ok(removed && c.wait()?.success())
    };
    ok &= replace(&changed)?;
    ok &= !nitride(&s, &["luks", "unlock", "remote.img", "--test-passphrase"]).0;
    ok &= replace(&String::from_utf8_lossy(&token.stdout))?;
    for img in ["sealed.img", "remote.img"] {
        let _ = std::fs::remove_file(dir.join(img));
    }
    Ok(ok)
}

/// Part 7 of the demo: an unmodified PKCS#11 client (OpenSC's `pkcs11-tool`) makes a
/// key in the vHSM and signs through `libnitride_pkcs11.so`; `openssl` verifies with
/// the public key `nitride` exports. Skipped (not failed) where `pkcs11-tool` is not
/// installed.
fn pkcs11_story(images: &Images) -> Result<bool, Error> {
    println!("\n== 7. PKCS#11: pkcs11-tool uses a vHSM key through libnitride_pkcs11.so\n");
    if Command::new("pkcs11-tool").arg("--help").output().is_err() {
        println!("  skipped: pkcs11-tool is not installed (Debian: opensc; .ci/run installs it)");
        return Ok(true);
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "--quiet", "--release", "-p", "nitride-pkcs11"])
        .current_dir(repo_root())
        .status()?;
    if !built.success() {
        println!("  building nitride-pkcs11 failed");
        return Ok(false);
    }
    let module = repo_root()
        .join("target")
        .join("x86_64-unknown-linux-gnu")
        .join("release")
        .join("libnitride_pkcs11.so");
    let dir = repo_root().join("target").join("demo-pkcs11");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    std::env::set_current_dir(&dir)?;
    println!("  (in {})", dir.display());
    let vm = RunningVm::start(&images.svsm, &images.relay_guest, &dir.join("vm"), "")?;
    let s = vm.socket.clone();
    std::fs::write(dir.join("release.tar"), b"a release to sign\n")?;
    let m = module.display().to_string();
    let tool = |args: &[&str]| -> Result<(bool, String), Error> {
        println!(
            "  $ pkcs11-tool --module libnitride_pkcs11.so {}",
            args.join(" ")
        );
        let o = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&m)
            .args(args)
            .env("NITRIDE_SOCKET", &s)
            .output()?;
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        for l in out
            .lines()
            .chain(String::from_utf8_lossy(&o.stderr).lines())
        {
            println!("    {l}");
        }
        Ok((o.status.success(), out))
    };
    let (mut ok, gen) = tool(&[
        "--keypairgen",
        "--key-type",
        "EC:secp384r1",
        "--label",
        "signer",
    ])?;
    let id = gen
        .lines()
        .find_map(|l| l.trim().strip_prefix("ID:"))
        .map(|i| i.trim().to_owned())
        .unwrap_or_default();
    ok &= tool(&[
        "--sign",
        "-m",
        "ECDSA-SHA384",
        "--id",
        &id,
        "-i",
        "release.tar",
        "-o",
        "release.sig",
        "--signature-format",
        "openssl",
    ])?
    .0;
    let key = u32::from_str_radix(&id, 16).unwrap_or(0).to_string();
    ok &= nitride(&s, &["key", "pubkey", &key, "--pem", "--out", "signer.pem"]).0;
    let args = [
        "dgst",
        "-sha384",
        "-verify",
        "signer.pem",
        "-signature",
        "release.sig",
        "release.tar",
    ];
    println!("  $ openssl {}", args.join(" "));
    let ossl = Command::new("openssl").args(args).output()?;
    println!("    {}", String::from_utf8_lossy(&ossl.stdout).trim());
    ok &= ossl.status.success();
    Ok(ok)
}

/// Part 5 of the demo, on the running relay VM: VMPL0 evidence for the services and
/// for one key, checked by the guest-side verifier against the development root.
fn attestation_story(s: &std::path::Path, images: &Images) -> Result<bool, Error> {
    println!("\n== 5. Attestation: the SVSM asks the PSP (the machine's, through GHCB guest requests with VMPCK0) for VMPL0 reports; the verifier checks them\n");
    // Nonces are exactly 64 bytes (what Linux's configfs-tsm sends).
    let mut random = [0u8; 128];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut random)?;
    let (services_nonce, key_random) = random.split_at(64);
    let nonce = measure::hex(services_nonce);
    let chain = ensure_dev_chain()?;
    let root = chain.dir.display().to_string();
    let expected = measure::hex(&launch_measurement(&images.svsm, &images.relay_guest)?);
    println!("  measurement the runner expects (SHA-384 over the SVSM's code and the guest image): {expected}");
    let mut ok = true;
    ok &= nitride(
        s,
        &[
            "key",
            "generate",
            "--type",
            "ecdsa-p384",
            "--usage",
            "sign,verify,attest",
            "--label",
            "attested-signer",
        ],
    )
    .0;
    ok &= nitride(
        s,
        &["attest", "services", "--nonce", &nonce, "-o", "evidence"],
    )
    .0;
    let verify = |extra: &[&str]| {
        let mut args = vec![
            "report",
            "verify",
            "-d",
            "evidence",
            "--nonce",
            &nonce,
            "--manifest",
            "evidence/manifest.bin",
            "--measurement",
            &expected,
        ];
        args.extend_from_slice(extra);
        nitride(s, &args).0
    };
    println!("  (without trusting the development root: refused)");
    ok &= !verify(&[]);
    ok &= verify(&["--trust-dev-root", &root]);
    println!("  (a changed manifest is refused)");
    let mut manifest = std::fs::read("evidence/manifest.bin")?;
    if let Some(b) = manifest.last_mut() {
        *b ^= 1;
    }
    std::fs::write("evidence/manifest.bin", &manifest)?;
    ok &= !verify(&["--trust-dev-root", &root]);
    let key_nonce = &measure::hex(key_random);
    ok &= nitride(
        s,
        &[
            "attest",
            "key",
            "4",
            "--nonce",
            key_nonce,
            "-o",
            "key-evidence",
        ],
    )
    .0;
    ok &= nitride(
        s,
        &[
            "report",
            "verify",
            "-d",
            "key-evidence",
            "--key-binding",
            "key-evidence/key-binding.bin",
            "--nonce",
            key_nonce,
            "--measurement",
            &expected,
            "--trust-dev-root",
            &root,
        ],
    )
    .0;
    println!("  (key 1 was not generated attestable)");
    ok &= !nitride(
        s,
        &[
            "attest",
            "key",
            "1",
            "--nonce",
            key_nonce,
            "-o",
            "key-evidence",
        ],
    )
    .0;
    Ok(ok)
}

fn show_dev_chain(a: &DevChainArgs) -> Result<ExitCode, Error> {
    if a.force {
        let dir = dev_chain::dev_chain_dir();
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
    }
    let chain = ensure_dev_chain()?;
    println!(
        "development chain ({}) in {}",
        if chain.generated {
            "generated now"
        } else {
            "reused"
        },
        chain.dir.display()
    );
    for (name, path) in [
        ("ARK", &chain.ark_pem),
        ("ASK", &chain.ask_pem),
        ("VCEK", &chain.vcek_pem),
        ("VCEK (DER)", &chain.vcek_der),
        ("dev-PSP blob (fw_cfg)", &chain.blob),
    ] {
        println!("  {name:22} {}", path.display());
    }
    println!(
        "  private keys           {}",
        chain.dir.join("private").display()
    );
    println!("  ARK SHA-256            {}", chain.ark_fingerprint()?);
    println!("NOT AMD's chain: verifiers accept it only when told to trust this ARK.");
    Ok(ExitCode::SUCCESS)
}

fn measure_cmd(a: MeasureArgs) -> Result<ExitCode, Error> {
    let images = build_images()?;
    let guest = match a.guest {
        GuestImage::Test => images.test_guest.clone(),
        GuestImage::Relay => images.relay_guest.clone(),
        GuestImage::Elf(path) => path,
    };
    let svsm = a.svsm.unwrap_or(images.svsm.clone());
    let config = match &a.launch_config {
        None => None,
        Some(p) => Some(
            nitride_protocol::launch_config::LaunchConfig::parse(&std::fs::read(p)?)
                .map_err(|e| Error::Build(format!("{}: {e}", p.display())))?,
        ),
    };
    let igvm = nitride_qemu::snp::svsm_igvm(&svsm, &guest, config.as_ref(), "measure")?;
    let digest = nitride_qemu::igvm::launch_digest(&std::fs::read(&igvm)?)
        .map_err(|e| Error::Build(e.to_string()))?;
    println!("{}", measure::hex(&digest));
    eprintln!(
        "  SVSM  {}\n  guest {}\n  launch configuration {}\n  IGVM  {}",
        svsm.display(),
        guest.display(),
        a.launch_config
            .as_ref()
            .map_or("(default)".to_string(), |p| p.display().to_string()),
        igvm.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask igvm`: build the file, print where and its launch digest, refuse a
/// file on which the three implementations disagree.
fn igvm_cmd(a: &IgvmArgs) -> Result<ExitCode, Error> {
    use nitride_qemu::igvm;
    let bad = |e: igvm::Error| Error::Build(e.to_string());
    let file = match &a.boot {
        Some(boot) => {
            let boot = std::fs::read(boot)?;
            let extra = a
                .extra
                .iter()
                .map(std::fs::read)
                .collect::<Result<Vec<_>, _>>()?;
            let extra: Vec<&[u8]> = extra.iter().map(Vec::as_slice).collect();
            igvm::build(&boot, &extra).map_err(bad)?
        }
        None => nitride_qemu::snp::test_igvm(&nitride_qemu::snp::build_snp_images()?)?,
    };
    let out = a
        .out
        .clone()
        .unwrap_or_else(|| nitride_qemu::images_dir().join("snp-test.igvm"));
    std::fs::write(&out, &file)?;
    let ours = igvm::launch_digest(&file).map_err(bad)?;
    let reference = igvm::reference_digest(&file).map_err(bad)?;
    let machine = nitride_snp_machine::igvm::parse(&file)
        .map(|plan| nitride_snp_machine::igvm::launch_digest(&plan))
        .map_err(|e| Error::Build(format!("the machine refuses the file: {e}")))?;
    println!("{}", measure::hex(&ours));
    eprintln!(
        "  {} ({} bytes, {} launched pages)\n  runner {}\n  igvm crate {}\n  machine {}",
        out.display(),
        file.len(),
        igvm::launched_pages(&file).map_err(bad)?,
        measure::hex(&ours),
        measure::hex(&reference),
        measure::hex(&machine)
    );
    if ours != reference || ours != machine {
        eprintln!("xtask: the launch digests disagree");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask snp`: boot the machine, console on this terminal.
fn snp_cmd(a: &SnpArgs) -> Result<ExitCode, Error> {
    ensure_qemu()?;
    let images = nitride_qemu::snp::build_snp_images()?;
    let igvm = match &a.igvm {
        Some(p) => p.clone(),
        None => nitride_qemu::snp::write_test_igvm(&images)?,
    };
    let mut boot = nitride_qemu::snp::SnpBoot::new(&images.machine, &igvm);
    boot.cmdline = a.cmdline.clone().unwrap_or_default();
    boot.icount = a.icount;
    ensure_dev_chain()?;
    let status = Command::new(QEMU).args(boot.qemu_args()).status()?;
    let out = nitride_qemu::RunOutput {
        status: status.code(),
        ..Default::default()
    };
    let outcome = nitride_qemu::snp::outcome(&out);
    println!("machine: {outcome:?}");
    Ok(
        if outcome == nitride_qemu::snp::MachineOutcome::Terminated {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}

/// Write `nitride`'s man pages (`nitride.1` and one per command, `nitride-key-generate.1`
/// ...) into `dir`; returns how many.
fn write_man_pages(dir: &Path) -> Result<usize, Error> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(nitride_guest_driver::cli::command(), dir)?;
    let pages = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("nitride") && name.ends_with(".1")
        })
        .count();
    Ok(pages)
}

fn man(a: &ManArgs) -> Result<ExitCode, Error> {
    let dir = if a.out.is_absolute() {
        a.out.clone()
    } else {
        repo_root().join(&a.out)
    };
    let n = write_man_pages(&dir)?;
    println!("{n} man pages in {}", dir.display());
    println!("Read one with:  man -l {}", dir.join("nitride.1").display());
    Ok(ExitCode::SUCCESS)
}

/// Cargo's install root: `$CARGO_INSTALL_ROOT`, else `$CARGO_HOME`, else `~/.cargo`.
fn cargo_install_root() -> Option<PathBuf> {
    let env = |v: &str| {
        std::env::var_os(v)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    env("CARGO_INSTALL_ROOT")
        .or_else(|| env("CARGO_HOME"))
        .or_else(|| env("HOME").map(|h| h.join(".cargo")))
}

/// `cargo xtask install-token`: build `nitride-luks-token` and copy its cdylib,
/// without debug information, to DIR/libcryptsetup-token-nitride.so.
fn install_token(a: &InstallTokenArgs) -> Result<ExitCode, Error> {
    let mut build = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    build
        .current_dir(repo_root())
        .args(["build", "--quiet", "-p", "nitride-luks-token"]);
    if !a.debug {
        build.arg("--release");
    }
    if !build.status()?.success() {
        return Err(Error::Build("cargo build -p nitride-luks-token".into()));
    }
    let so = repo_root()
        .join("target/x86_64-unknown-linux-gnu")
        .join(if a.debug { "debug" } else { "release" })
        .join("libcryptsetup_token_nitride.so");
    std::fs::create_dir_all(&a.dir)?;
    let dest = a.dir.join("libcryptsetup-token-nitride.so");
    let status = Command::new("objcopy")
        .arg("--strip-debug")
        .arg(&so)
        .arg(&dest)
        .status()?;
    if !status.success() {
        return Err(Error::Build(format!(
            "objcopy {} {} (binutils; root for a system directory)",
            so.display(),
            dest.display()
        )));
    }
    println!("Installed {}", dest.display());
    println!(
        "  cryptsetup open --token-only DEVICE NAME now asks the vHSM at $NITRIDE_SOCKET \
         (default /run/nitride/vhsm.sock)"
    );
    Ok(ExitCode::SUCCESS)
}

fn install(a: &InstallArgs) -> Result<ExitCode, Error> {
    let root = match a.root.clone().or_else(cargo_install_root) {
        Some(r) => r,
        None => {
            return Err(Error::Build(
                "no install root: pass --root DIR (or set CARGO_INSTALL_ROOT)".into(),
            ))
        }
    };
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(repo_root())
        .args(["install", "--locked", "--path", "guest-driver", "--root"])
        .arg(&root)
        .status()?;
    if !status.success() {
        return Err(Error::Build("cargo install --path guest-driver".into()));
    }
    let man_dir = root.join("share").join("man").join("man1");
    let n = write_man_pages(&man_dir)?;
    let bin = root.join("bin");
    println!("Installed {}", bin.join("nitride").display());
    println!("  {n} man pages in {}", man_dir.display());
    let on_path =
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d == bin));
    if !on_path {
        println!(
            "  {} is not on your PATH: add it, e.g.  export PATH=\"{}:$PATH\"",
            bin.display(),
            bin.display()
        );
    }
    println!(
        "  man pages: man nitride (with {} on MANPATH)",
        root.join("share").join("man").display()
    );
    println!("  completions: nitride completions bash|zsh|fish (see nitride completions --help)");
    Ok(ExitCode::SUCCESS)
}
