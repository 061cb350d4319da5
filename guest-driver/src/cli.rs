//! The `nitride` command line (feature `std`), on clap's derive API.
//!
//! `nitride COMMAND [ARGS]` or `nitride GROUP COMMAND [ARGS]`: the vHSM commands
//! ([`vhsm`]: `key ...`, `sign`, `verify`, `encrypt`, ...), attestation evidence
//! ([`attest`]), report decoding and verification ([`report`]) and `completions`.
//! Every value is typed and checked at parse time ([`values`]); every command
//! answers `--help`; `nitride --version` names the protocol versions spoken.
//!
//! Exit codes: 0 success / valid, 1 refused, rejected or I/O failure, 2 usage error.
//! With `--json`, stdout carries exactly one JSON document: the result, the verdict
//! (`report verify`, rejected or not) or an error object (see [`error_json`] and
//! `docs/cli.md`); the human-readable message still goes to stderr.
#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::io::Write;
use std::path::Path;
use std::sync::LazyLock;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use serde_json::{json, Value};

use nitride_protocol::vhsm::Status;

use crate::verify::Error as RejectError;

mod attest;
pub mod luks;
mod provision;
mod report;
pub mod seal;
pub mod values;
mod vhsm;

pub use attest::{guid_string, parse_guid};
pub use report::{report_json, DEFAULT_DEV_CHAIN_DIR};
pub use vhsm::DEFAULT_SOCKET;

/// Why a command did not succeed.
#[derive(Debug)]
pub enum CliError {
    /// Bad command line (clap's error: message, usage, suggestion).
    Usage(Box<clap::Error>),
    /// A file could not be read or written, or an input is not what it should be.
    Input(String),
    /// The report was rejected (the verdict is already in the output).
    Rejected(RejectError),
    /// The vHSM refused an operation: the status and what it was about.
    Refused(Refusal),
    /// The vHSM checked a signature and it does not verify (the answer is already
    /// in the output with `--json`).
    SignatureInvalid,
    /// The vHSM could not be reached or answered something unreadable.
    Vhsm(String),
    /// The SVSM refused a non-vHSM request (attestation) or could not be reached.
    Svsm(String),
    /// The Key Broker Service refused (its RFC 7807 body shown), could not be
    /// reached, or answered outside the protocol.
    Kbs(String),
}

/// A vHSM refusal explained: the status the vault answered, the keys the request
/// named, and a sentence naming the object or the limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// What the vault answered.
    pub status: Status,
    /// The keys the request named.
    pub keys: Vec<u32>,
    /// The explanation.
    pub message: String,
}

impl CliError {
    /// Process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) => 2,
            Self::Input(_)
            | Self::Rejected(_)
            | Self::Refused(_)
            | Self::SignatureInvalid
            | Self::Vhsm(_)
            | Self::Svsm(_)
            | Self::Kbs(_) => 1,
        }
    }

    /// The error's kind as named in the JSON error object.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Usage(_) => "usage",
            Self::Input(_) => "input",
            Self::Rejected(_) => "rejected",
            Self::Refused(_) => "refused",
            Self::SignatureInvalid => "signature_invalid",
            Self::Vhsm(_) => "vhsm",
            Self::Svsm(_) => "svsm",
            Self::Kbs(_) => "kbs",
        }
    }

    /// Whether the command already wrote its answer to stdout (a rejected verdict,
    /// `{"valid": false}`): then no JSON error object follows it.
    fn answered(&self) -> bool {
        matches!(self, Self::Rejected(_) | Self::SignatureInvalid)
    }
}

impl From<clap::Error> for CliError {
    fn from(e: clap::Error) -> Self {
        Self::Usage(Box::new(e))
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // clap's rendering, without colour: "error: ...", usage, hint.
            Self::Usage(e) => write!(f, "{e}"),
            Self::Input(m) => f.write_str(m),
            Self::Rejected(e) => write!(f, "rejected: {e}"),
            Self::Refused(r) => write!(f, "vHSM: refused: {} ({:?})", r.message, r.status),
            Self::SignatureInvalid => f.write_str("vHSM: signature invalid"),
            Self::Vhsm(m) => write!(f, "vHSM: {m}"),
            Self::Svsm(m) => write!(f, "SVSM: {m}"),
            Self::Kbs(m) => f.write_str(m),
        }
    }
}

/// The one-line version: the tool's and the protocols' versions.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    use nitride_protocol::{attest, svsm, vhsm};
    format!(
        "{} (SVSM core protocol {}, attestation protocol {}, vHSM protocol {} wire version {})",
        env!("CARGO_PKG_VERSION"),
        svsm::CORE_PROTOCOL_VERSION,
        attest::ATTEST_PROTOCOL_VERSION,
        svsm::VHSM_PROTOCOL_VERSION,
        vhsm::VERSION,
    )
});

/// `--version`: the tool's version and every protocol version it speaks.
static LONG_VERSION: LazyLock<String> = LazyLock::new(|| {
    use nitride_protocol::{attest, snp, svsm, vhsm};
    let reports: Vec<String> = snp::report::SUPPORTED_VERSIONS
        .iter()
        .map(u32::to_string)
        .collect();
    let rows = [
        (
            format!("SVSM core protocol ({})", svsm::protocol::CORE),
            format!("version {}", svsm::CORE_PROTOCOL_VERSION),
        ),
        (
            format!(
                "SVSM attestation protocol ({})",
                svsm::protocol::ATTESTATION
            ),
            format!("version {}", attest::ATTEST_PROTOCOL_VERSION),
        ),
        (
            format!("vHSM protocol ({:#x})", svsm::protocol::VHSM),
            format!(
                "version {}, message wire version {}",
                svsm::VHSM_PROTOCOL_VERSION,
                vhsm::VERSION
            ),
        ),
        (
            "vHSM attestation manifest".to_string(),
            format!("version {}", attest::VHSM_MANIFEST_VERSION),
        ),
        (
            "SEV-SNP attestation reports".to_string(),
            format!("versions {}", reports.join(", ")),
        ),
    ];
    let mut s = format!("{}\nprotocols:", env!("CARGO_PKG_VERSION"));
    for (name, version) in rows {
        s.push_str(&format!("\n  {name:<34} {version}"));
    }
    s
});

const TOP_AFTER_HELP: &str = "\
Exit status: 0 success (or a valid report), 1 refused, rejected or failed, 2 usage error.

The vHSM commands reach the firmware through the relay guest's socket: --socket PATH,
else $NITRIDE_SOCKET, else target/nitride-up/vhsm.sock (where `cargo xtask up` puts it).

Examples:
  nitride key generate --type ecdsa-p384 --label release-signing
  nitride sign 1 --in release.tar --out release.sig
  nitride report verify -d evidence --nonce $NONCE --manifest evidence/manifest.bin
  nitride completions bash > ~/.local/share/bash-completion/completions/nitride";

/// `nitride`: use the Nitride vHSM and check SEV-SNP attestation evidence.
#[derive(Debug, Parser)]
#[command(
    name = "nitride",
    about = "Use the Nitride vHSM and check SEV-SNP attestation evidence",
    long_about = "Use the Nitride vHSM (keys held by the SVSM at VMPL0 of an SEV-SNP guest) \
                  and check SEV-SNP attestation evidence.\n\n\
                  Every command has its own help: `nitride COMMAND --help`.",
    after_help = TOP_AFTER_HELP,
    subcommand_required = true,
    arg_required_else_help = true,
    max_term_width = 100
)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Cmd,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Manage keys in the vHSM: generate, import, list, inspect, delete, public keys
    #[command(
        subcommand,
        subcommand_required = true,
        arg_required_else_help = true,
        after_help = vhsm::KEY_EXAMPLES
    )]
    Key(vhsm::KeyCmd),
    /// Sign data with a vHSM key
    #[command(after_help = vhsm::SIGN_EXAMPLES)]
    Sign(vhsm::SignArgs),
    /// Verify a signature with a vHSM key
    #[command(after_help = vhsm::VERIFY_EXAMPLES)]
    Verify(vhsm::VerifyArgs),
    /// Encrypt with AES-256-GCM (output: nonce || ciphertext || tag)
    #[command(after_help = vhsm::ENCRYPT_EXAMPLES)]
    Encrypt(vhsm::CryptArgs),
    /// Decrypt what `nitride encrypt` produced
    #[command(after_help = vhsm::DECRYPT_EXAMPLES)]
    Decrypt(vhsm::CryptArgs),
    /// Export an exportable key wrapped (RFC 5649) under a vHSM key
    #[command(after_help = vhsm::WRAP_EXAMPLES)]
    Wrap(vhsm::WrapArgs),
    /// Import a key wrapped (RFC 5649) under a vHSM key
    #[command(after_help = vhsm::UNWRAP_EXAMPLES)]
    Unwrap(vhsm::UnwrapArgs),
    /// Derive a new key from a vHSM key with HKDF-SHA-384
    #[command(after_help = vhsm::DERIVE_EXAMPLES)]
    Derive(vhsm::DeriveArgs),
    /// Random bytes from the vHSM's DRBG
    #[command(after_help = vhsm::RANDOM_EXAMPLES)]
    Random(vhsm::RandomArgs),
    /// Read the vHSM's audit log
    #[command(after_help = vhsm::AUDIT_EXAMPLES)]
    Audit(vhsm::AuditArgs),
    /// Seal data to this SVSM image on this chip (an opaque blob you store)
    #[command(after_help = seal::SEAL_EXAMPLES)]
    Seal(seal::SealArgs),
    /// Open a blob made by `nitride seal`
    #[command(after_help = seal::UNSEAL_EXAMPLES)]
    Unseal(seal::UnsealArgs),
    /// Save or restore the vault's persistent keys as one sealed blob
    #[command(
        subcommand,
        subcommand_required = true,
        arg_required_else_help = true,
        after_help = seal::STATE_EXAMPLES
    )]
    State(seal::StateCmd),
    /// Fetch attestation evidence from the running firmware (SVSM attestation, AttestKey)
    #[command(
        subcommand,
        subcommand_required = true,
        arg_required_else_help = true,
        after_help = attest::ATTEST_EXAMPLES
    )]
    Attest(attest::AttestCmd),
    /// Decode and verify SEV-SNP attestation reports
    #[command(
        subcommand,
        subcommand_required = true,
        arg_required_else_help = true,
        after_help = report::REPORT_EXAMPLES
    )]
    Report(report::ReportCmd),
    /// Provision a secret from a Key Broker Service into the vHSM (attestation-gated)
    #[command(after_help = provision::PROVISION_EXAMPLES)]
    Provision(provision::ProvisionArgs),
    /// The owner's side of provisioning: owner key, signed envelopes, launch configuration
    #[command(
        subcommand,
        subcommand_required = true,
        arg_required_else_help = true,
        after_help = provision::OWNER_EXAMPLES
    )]
    Owner(provision::OwnerCmd),
    /// LUKS2 volumes unlocked by a passphrase the vHSM releases (sealed key or KBS)
    #[command(
        subcommand,
        subcommand_required = true,
        arg_required_else_help = true,
        after_help = luks::LUKS_EXAMPLES
    )]
    Luks(luks::LuksCmd),
    /// Print a shell completion script for nitride
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
}

const COMPLETIONS_EXAMPLES: &str = "\
Examples:
  nitride completions bash > ~/.local/share/bash-completion/completions/nitride
  nitride completions zsh > ~/.zfunc/_nitride      # with fpath+=(~/.zfunc) in ~/.zshrc
  nitride completions fish > ~/.config/fish/completions/nitride.fish";

/// `nitride completions SHELL`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// The `nitride` command as clap sees it (with the version lines): for `--help`,
/// completions and man pages.
pub fn command() -> clap::Command {
    Cli::command()
        .version(VERSION.as_str())
        .long_version(LONG_VERSION.as_str())
}

/// Parse `args` (without the program name).
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv = std::iter::once(OsString::from("nitride")).chain(args.into_iter().map(Into::into));
    let matches = command().try_get_matches_from(argv)?;
    Cli::from_arg_matches(&matches)
}

/// A usage error found after parsing (a combination clap cannot express), rendered
/// like clap's own with the usage of the command at `path`.
pub(crate) fn usage_error(path: &[&str], kind: ErrorKind, message: String) -> CliError {
    let mut cmd = command();
    cmd.build();
    for name in path {
        match cmd.find_subcommand(name) {
            Some(sub) => cmd = sub.clone(),
            None => break,
        }
    }
    CliError::from(cmd.error(kind, message))
}

/// Run a parsed command, writing its output to `out`.
pub fn execute(cli: Cli, out: &mut dyn Write) -> Result<(), CliError> {
    match cli.command {
        Cmd::Key(c) => vhsm::key(c, out),
        Cmd::Sign(a) => vhsm::sign(&a, out),
        Cmd::Verify(a) => vhsm::verify(&a, out),
        Cmd::Encrypt(a) => vhsm::encrypt(&a, out),
        Cmd::Decrypt(a) => vhsm::decrypt(&a, out),
        Cmd::Wrap(a) => vhsm::wrap(&a, out),
        Cmd::Unwrap(a) => vhsm::unwrap(&a, out),
        Cmd::Derive(a) => vhsm::derive(&a, out),
        Cmd::Random(a) => vhsm::random(&a, out),
        Cmd::Audit(a) => vhsm::audit(&a, out),
        Cmd::Seal(a) => seal::seal(&a, out),
        Cmd::Unseal(a) => seal::unseal(&a, out),
        Cmd::State(c) => seal::state(c, out),
        Cmd::Attest(c) => attest::run(c, out),
        Cmd::Report(c) => report::run(c, out),
        Cmd::Provision(a) => provision::provision(&a, out),
        Cmd::Owner(c) => provision::owner(c, out),
        Cmd::Luks(c) => luks::run(c, out),
        Cmd::Completions(a) => {
            clap_complete::generate(a.shell, &mut command(), "nitride", out);
            Ok(())
        }
    }
}

/// Run `nitride` with `args` (without the program name), writing to `out`. Help
/// and version requests write their text (without colour) to `out` and succeed.
pub fn run(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    match parse(args) {
        Ok(cli) => execute(cli, out),
        Err(e) if e.exit_code() == 0 => write!(out, "{e}").map_err(io),
        Err(e) => Err(e.into()),
    }
}

/// Run `nitride ARGS --socket SOCKET` in-process, capturing what it writes: for
/// tools and tests that drive a running firmware through the command line.
pub fn run_with_socket(socket: &Path, args: &[&str]) -> (Result<(), CliError>, Vec<u8>) {
    let mut argv: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    argv.push("--socket".into());
    argv.push(socket.display().to_string());
    let mut out = Vec::new();
    let result = run(&argv, &mut out);
    (result, out)
}

/// Whether the command line asks for JSON output (looked up in the raw arguments,
/// so that a command line that does not parse still gets a JSON error).
fn wants_json(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| a.as_str() != "--")
        .any(|a| a == "--json")
}

fn usage_kind(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => "invalid_value",
        ErrorKind::UnknownArgument => "unknown_argument",
        ErrorKind::InvalidSubcommand => "unknown_command",
        ErrorKind::NoEquals => "no_equals",
        ErrorKind::TooManyValues | ErrorKind::TooFewValues | ErrorKind::WrongNumberOfValues => {
            "wrong_number_of_values"
        }
        ErrorKind::ArgumentConflict => "argument_conflict",
        ErrorKind::MissingRequiredArgument => "missing_argument",
        ErrorKind::MissingSubcommand | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            "missing_command"
        }
        ErrorKind::InvalidUtf8 => "invalid_utf8",
        _ => "other",
    }
}

fn context_string(e: &clap::Error, kind: ContextKind) -> Option<Value> {
    match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone().into()),
        ContextValue::Strings(v) => Some(v.clone().into()),
        ContextValue::StyledStr(s) => Some(s.to_string().trim().to_string().into()),
        ContextValue::StyledStrs(v) => Some(
            v.iter()
                .map(|s| s.to_string().trim().to_string())
                .collect::<Vec<_>>()
                .into(),
        ),
        ContextValue::Number(n) => Some((*n).into()),
        _ => None,
    }
}

/// The JSON error object printed on stdout with `--json`:
///
/// ```json
/// {"error": {"kind": "usage" | "input" | "refused" | "vhsm" | "svsm",
///            "exit_code": 2,
///            "message": "the error in one line",
///            ...}}
/// ```
///
/// Usage errors add `usage_error` (`unknown_command`, `unknown_argument`,
/// `invalid_value`, `missing_argument`, `argument_conflict`, `missing_command`,
/// `wrong_number_of_values`, `other`), `argument`, `value`, `suggestion` and `usage`
/// when known; refusals add `status` (the vHSM status) and `keys` (the keys the
/// request named).
pub fn error_json(e: &CliError) -> Value {
    let mut v = json!({
        "kind": e.kind(),
        "exit_code": e.exit_code(),
    });
    match e {
        CliError::Usage(c) => {
            let text = c.to_string();
            let first = text.lines().next().unwrap_or_default();
            v["message"] = first.strip_prefix("error: ").unwrap_or(first).into();
            v["usage_error"] = usage_kind(c.kind()).into();
            for (key, kind) in [
                ("argument", ContextKind::InvalidArg),
                ("value", ContextKind::InvalidValue),
                ("command", ContextKind::InvalidSubcommand),
                ("suggestion", ContextKind::SuggestedArg),
                ("suggestion", ContextKind::SuggestedSubcommand),
                ("suggestion", ContextKind::SuggestedValue),
                ("prior_argument", ContextKind::PriorArg),
                ("valid_values", ContextKind::ValidValue),
            ] {
                if let Some(x) = context_string(c, kind) {
                    v[key] = x;
                }
            }
            if let Some(usage) = text
                .lines()
                .find_map(|l| l.strip_prefix("Usage: "))
                .map(str::to_string)
            {
                v["usage"] = usage.into();
            }
        }
        CliError::Refused(r) => {
            v["message"] = r.message.clone().into();
            v["status"] = format!("{:?}", r.status).into();
            v["keys"] = r.keys.clone().into();
        }
        other => v["message"] = other.to_string().into(),
    }
    json!({ "error": v })
}

/// Entry point for the binary: runs, prints errors to stderr (and as JSON on stdout
/// with `--json`), returns the exit code.
pub fn main_with_args(args: &[String]) -> i32 {
    let stdout = std::io::stdout();
    let json = wants_json(args);
    let result = match parse(args) {
        Ok(cli) => execute(cli, &mut stdout.lock()),
        // --help and --version: clap prints them (coloured on a terminal).
        Err(e) if e.exit_code() == 0 => {
            let _ = e.print();
            return 0;
        }
        Err(e) => Err(e.into()),
    };
    let Err(e) = result else { return 0 };
    let mut out = stdout.lock();
    let _ = out.flush();
    if json && !e.answered() {
        let _ = writeln!(out, "{:#}", error_json(&e));
        let _ = out.flush();
    }
    match &e {
        CliError::Usage(c) => {
            let _ = c.print();
        }
        other => eprintln!("nitride: {other}"),
    }
    e.exit_code()
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Input(format!("{what} {}: {e}", path.display())))
}

fn io(e: std::io::Error) -> CliError {
    CliError::Input(format!("writing output: {e}"))
}

/// Print `v` as indented `key: value` lines (objects nested), the verdict first.
fn write_text(v: &Value, out: &mut dyn Write, indent: usize) -> Result<(), CliError> {
    if let Value::Object(map) = v {
        // The verdict, when there is one, comes first.
        let first = map.get_key_value("verdict");
        for (k, val) in first
            .into_iter()
            .chain(map.iter().filter(|(k, _)| *k != "verdict"))
        {
            match val {
                Value::Object(_) => {
                    writeln!(out, "{:indent$}{k}:", "").map_err(io)?;
                    write_text(val, out, indent + 2)?;
                }
                Value::String(s) => writeln!(out, "{:indent$}{k}: {s}", "").map_err(io)?,
                Value::Null => writeln!(out, "{:indent$}{k}: -", "").map_err(io)?,
                other => writeln!(out, "{:indent$}{k}: {other}", "").map_err(io)?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn clap_definition_is_consistent() {
        command().debug_assert();
    }

    /// The limits written in the help texts are the protocol's.
    #[test]
    fn help_states_the_protocol_limits() {
        use nitride_protocol::{attest, vhsm};
        let help = |path: &[&str]| {
            let mut cmd = command();
            cmd.build();
            for name in path {
                cmd = cmd.find_subcommand(name).unwrap().clone();
            }
            cmd.render_long_help().to_string()
        };
        for (path, needle) in [
            (&["random"][..], format!("0 to {}", vhsm::MAX_RANDOM_LEN)),
            (
                &["key", "generate"],
                format!("at most {} bytes", vhsm::MAX_LABEL_LEN),
            ),
            (
                &["encrypt"],
                format!("at most {} bytes", vhsm::MAX_DATA_LEN),
            ),
            (
                &["derive"],
                format!("at most {} bytes", vhsm::MAX_DERIVE_INPUT_LEN),
            ),
            (
                &["attest", "services"],
                format!("exactly {} bytes", attest::NONCE_SIZE),
            ),
            (
                &["attest", "key"],
                format!("exactly {} bytes", attest::NONCE_SIZE),
            ),
            (
                &["report", "verify"],
                format!("exactly {} bytes", attest::NONCE_SIZE),
            ),
        ] {
            let h = help(path);
            assert!(h.contains(&needle), "{path:?} lacks {needle:?}: {h}");
        }
    }

    #[test]
    fn version_names_the_protocols() {
        let v = LONG_VERSION.as_str();
        assert!(v.starts_with(env!("CARGO_PKG_VERSION")), "{v}");
        for needle in [
            "SVSM core protocol (0)",
            "SVSM attestation protocol (1)",
            "vHSM protocol (0x4e48534d)",
        ] {
            assert!(v.contains(needle), "{v}");
        }
    }
}
