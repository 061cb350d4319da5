//! The `nitride` command line (feature `std`).
//!
//! `nitride GROUP COMMAND [ARGS]`. Groups are a table ([`GROUPS`]) so later issues
//! can add `key`, `sign`, `attest`, ... next to `report`. Argument parsing is
//! hand-written: flags are `--name VALUE` or `--name`, anything else is positional.
//!
//! Exit codes: 0 success / valid, 1 rejected or I/O failure, 2 usage error.
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use nitride_protocol::snp::{AttestationReport, Generation, Tcb, TcbLayout};

use crate::verify::{
    verify, AppraisalPolicy, Error as RejectError, RootUsed, TrustAnchors, VerifiedReport,
    VerifyError,
};

mod attest;
mod vhsm;

pub use attest::{guid_string, parse_guid};

/// Why a command did not succeed.
#[derive(Debug)]
pub enum CliError {
    /// Bad command line; the message includes the usage.
    Usage(String),
    /// A file could not be read, or an input is not what it should be.
    Input(String),
    /// The report was rejected.
    Rejected(RejectError),
    /// The vHSM refused or could not be reached.
    Vhsm(String),
    /// The SVSM refused a non-vHSM request (attestation) or could not be reached.
    Svsm(String),
}

impl CliError {
    /// Process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) => 2,
            Self::Input(_) | Self::Rejected(_) | Self::Vhsm(_) | Self::Svsm(_) => 1,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(m) | Self::Input(m) => f.write_str(m),
            Self::Rejected(e) => write!(f, "rejected: {e}"),
            Self::Vhsm(m) => write!(f, "vHSM: {m}"),
            Self::Svsm(m) => write!(f, "SVSM: {m}"),
        }
    }
}

type CmdFn = fn(&Parsed, &mut dyn Write) -> Result<(), CliError>;

/// One command of a group.
#[derive(Debug)]
pub struct Command {
    /// Name.
    pub name: &'static str,
    /// Usage line after `nitride GROUP NAME`.
    pub usage: &'static str,
    /// Flags taking a value.
    pub value_flags: &'static [&'static str],
    /// Flags without a value.
    pub bool_flags: &'static [&'static str],
    /// Fewest and most positional arguments.
    pub positionals: (usize, usize),
    run: CmdFn,
}

/// A group of commands.
#[derive(Debug)]
pub struct Group {
    /// Name.
    pub name: &'static str,
    /// One-line description.
    pub about: &'static str,
    /// Its commands.
    pub commands: &'static [Command],
}

/// All command groups. A group whose only command has an empty name is a
/// top-level command (`nitride sign ...`).
pub const GROUPS: &[Group] = &[
    vhsm::KEY,
    vhsm::SIGN,
    vhsm::VERIFY,
    vhsm::ENCRYPT,
    vhsm::DECRYPT,
    vhsm::WRAP,
    vhsm::UNWRAP,
    vhsm::DERIVE,
    vhsm::RANDOM,
    vhsm::AUDIT,
    attest::ATTEST,
    Group {
        name: "report",
        about: "decode and verify SEV-SNP attestation reports",
        commands: &[
            Command {
                name: "show",
                usage: "FILE [--json]",
                value_flags: &[],
                bool_flags: &["--json"],
                positionals: (1, 1),
                run: report_show,
            },
            Command {
                name: "verify",
                usage: "[FILE] (--vcek CERT | --certs TABLE | -d DIR) [--roots DIR] \
                    [--trust-dev-root DIR] [--expect-vmpl N] \
                    [--report-data HEX | --nonce HEX --manifest FILE | --key-binding FILE [--nonce HEX]] \
                    [--measurement HEX]... [--allow-debug] [--json]",
                value_flags: &[
                    "--vcek",
                    "--certs",
                    "-d",
                    "--dir",
                    "--roots",
                    "--trust-dev-root",
                    "--expect-vmpl",
                    "--vmpl",
                    "--report-data",
                    "--nonce",
                    "--manifest",
                    "--key-binding",
                    "--measurement",
                ],
                bool_flags: &["--allow-debug", "--json"],
                positionals: (0, 1),
                run: report_verify,
            },
        ],
    },
];

fn usage() -> String {
    let mut s = String::from("usage: nitride GROUP COMMAND [ARGS]\n");
    for g in GROUPS {
        let _ = writeln!(s, "\n  {} — {}", g.name, g.about);
        for c in g.commands {
            let line = format!("nitride {} {} {}", g.name, c.name, c.usage);
            let _ = writeln!(
                s,
                "    {}",
                line.split_whitespace().collect::<Vec<_>>().join(" ")
            );
        }
    }
    s
}

/// Parsed arguments of one command.
#[derive(Debug, Default)]
pub struct Parsed {
    positionals: Vec<String>,
    values: Vec<(&'static str, String)>,
    flags: Vec<&'static str>,
}

impl Parsed {
    fn parse(cmd: &Command, group: &str, args: &[String]) -> Result<Self, CliError> {
        let bad = |m: String| {
            CliError::Usage(format!(
                "{m}\nusage: nitride {group} {} {}",
                cmd.name, cmd.usage
            ))
        };
        let mut p = Parsed::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if let Some(f) = cmd.value_flags.iter().find(|f| **f == a) {
                let v = it.next().ok_or_else(|| bad(format!("{a} needs a value")))?;
                p.values.push((f, v.clone()));
            } else if let Some(f) = cmd.bool_flags.iter().find(|f| **f == a) {
                p.flags.push(f);
            } else if a.starts_with("--") {
                return Err(bad(format!("unknown option {a}")));
            } else {
                p.positionals.push(a.clone());
            }
        }
        let (min, max) = cmd.positionals;
        if !(min..=max).contains(&p.positionals.len()) {
            return Err(bad(format!(
                "expected {} argument(s), got {}",
                if min == max {
                    min.to_string()
                } else {
                    format!("{min} to {max}")
                },
                p.positionals.len()
            )));
        }
        Ok(p)
    }

    fn value(&self, flag: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(f, _)| *f == flag)
            .map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, flag: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.values
            .iter()
            .filter(move |(f, _)| *f == flag)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, flag: &str) -> bool {
        self.flags.contains(&flag)
    }

    fn positional(&self, i: usize) -> Option<&str> {
        self.positionals.get(i).map(String::as_str)
    }

    fn file(&self) -> &str {
        self.positionals
            .first()
            .map(String::as_str)
            .unwrap_or_default()
    }
}

/// Run `nitride` with `args` (without the program name), writing to `out`.
pub fn run(args: &[String], out: &mut dyn Write) -> Result<(), CliError> {
    let (group, rest) = match args {
        [g, rest @ ..] if g != "-h" && g != "--help" => (g, rest),
        _ => return Err(CliError::Usage(usage())),
    };
    let g = GROUPS
        .iter()
        .find(|x| x.name == group)
        .ok_or_else(|| CliError::Usage(format!("unknown group {group}\n{}", usage())))?;
    let (c, rest) = match (g.commands, rest) {
        ([only], _) if only.name.is_empty() => (only, rest),
        (_, [cmd, rest @ ..]) => {
            let c = g.commands.iter().find(|x| x.name == cmd).ok_or_else(|| {
                CliError::Usage(format!("unknown command {group} {cmd}\n{}", usage()))
            })?;
            (c, rest)
        }
        (_, []) => return Err(CliError::Usage(usage())),
    };
    let parsed = Parsed::parse(c, group, rest)?;
    (c.run)(&parsed, out)
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

/// Entry point for the binary: runs, prints errors to stderr, returns the exit code.
pub fn main_with_args(args: &[String]) -> i32 {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run(args, &mut out) {
        Ok(()) => 0,
        Err(e) => {
            let _ = out.flush();
            eprintln!("nitride: {e}");
            e.exit_code()
        }
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|e| CliError::Input(format!("{what} {}: {e}", path.display())))
}

fn io(e: std::io::Error) -> CliError {
    CliError::Input(format!("writing output: {e}"))
}

/// A `--nonce` value: exactly `attest::NONCE_SIZE` (64) bytes in hex.
fn parse_nonce(s: &str) -> Result<nitride_protocol::attest::Nonce, CliError> {
    parse_hex("--nonce", s)
}

fn parse_hex<const N: usize>(flag: &str, s: &str) -> Result<[u8; N], CliError> {
    let v = hex::decode(s.trim()).map_err(|e| CliError::Usage(format!("{flag}: {e}")))?;
    v.try_into().map_err(|v: Vec<u8>| {
        CliError::Usage(format!(
            "{flag}: {} bytes, expected exactly {N} ({} hex digits)",
            v.len(),
            2 * N
        ))
    })
}

fn tcb_json(t: &Tcb) -> Value {
    let mut v = json!({
        "bootloader": t.bootloader, "tee": t.tee, "snp": t.snp, "microcode": t.microcode,
    });
    if let Some(fmc) = t.fmc {
        v["fmc"] = fmc.into();
    }
    v
}

/// Every decoded field of a report, as JSON (names as in the vectors' expected.json).
pub fn report_json(
    r: &AttestationReport,
    layout: TcbLayout,
    generation: Option<Generation>,
) -> Value {
    let policy = r.policy();
    let pi = r.platform_info();
    let si = r.signer_info();
    let ver = |(a, b, c): (u8, u8, u8)| format!("{a}.{b}.{c}");
    json!({
        "version": r.version.get(),
        "guest_svn": r.guest_svn.get(),
        "policy": format!("{:#x}", policy.0),
        "policy_decoded": {
            "abi_major": policy.abi_major(), "abi_minor": policy.abi_minor(),
            "smt": policy.smt(), "reserved_must_be_one": policy.reserved_must_be_one(),
            "migrate_ma": policy.migrate_ma(), "debug": policy.debug(),
            "single_socket": policy.single_socket(),
        },
        "family_id": hex::encode(r.family_id),
        "image_id": hex::encode(r.image_id),
        "vmpl": r.vmpl.get(),
        "signature_algo": r.signature_algo.get(),
        "platform_info": format!("{:#x}", pi.0),
        "platform_info_decoded": {
            "smt_enabled": pi.smt_enabled(), "tsme_enabled": pi.tsme_enabled(),
            "ecc_enabled": pi.ecc_enabled(), "rapl_disabled": pi.rapl_disabled(),
            "ciphertext_hiding_enabled": pi.ciphertext_hiding_enabled(),
        },
        "signing_key": si.signing_key().to_string(),
        "mask_chip_key": si.mask_chip_key(),
        "author_key_en": si.author_key_en(),
        "report_data": hex::encode(r.report_data),
        "measurement": hex::encode(r.measurement),
        "host_data": hex::encode(r.host_data),
        "id_key_digest": hex::encode(r.id_key_digest),
        "author_key_digest": hex::encode(r.author_key_digest),
        "report_id": hex::encode(r.report_id),
        "report_id_ma": hex::encode(r.report_id_ma),
        "chip_id": hex::encode(r.chip_id),
        "tcb_layout": match layout { TcbLayout::Turin => "turin", TcbLayout::MilanGenoa => "milan/genoa" },
        "current_tcb": tcb_json(&r.current_tcb(layout)),
        "reported_tcb": tcb_json(&r.reported_tcb(layout)),
        "committed_tcb": tcb_json(&r.committed_tcb(layout)),
        "launch_tcb": tcb_json(&r.launch_tcb(layout)),
        "cpuid_fam_mod_step": r.cpuid().map(|(f, m, s)| json!([f, m, s])),
        "generation": generation.map(Generation::name),
        "current_version": ver(r.current_version()),
        "committed_version": ver(r.committed_version()),
        "mit_vectors": r.mit_vectors().map(|(l, c)| json!({"launch": l, "current": c})),
        "signature_r": hex::encode(r.signature.r),
        "signature_s": hex::encode(r.signature.s),
    })
}

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

fn report_show(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let bytes = read(Path::new(p.file()), "report")?;
    let r = AttestationReport::from_bytes(&bytes).map_err(|e| CliError::Input(e.to_string()))?;
    let v = report_json(r, r.tcb_layout(), r.generation());
    if p.flag("--json") {
        writeln!(out, "{v:#}").map_err(io)?;
    } else {
        write_text(&v, out, 0)?;
        if r.generation().is_none() {
            writeln!(out, "note: generation not in the report (v2 without Turin CHIP_ID): TCB decoded as Milan/Genoa")
                .map_err(io)?;
        }
    }
    Ok(())
}

fn anchors_from_dir(dir: &Path) -> Result<TrustAnchors, CliError> {
    let mut a = TrustAnchors::empty();
    let mut found = 0;
    for g in Generation::ALL {
        let path = |kind: &str| dir.join(format!("{}-{kind}.pem", g.name()));
        let ark = path("ark");
        if !ark.is_file() {
            continue;
        }
        let opt = |p: PathBuf| {
            if p.is_file() {
                read(&p, "root").map(Some)
            } else {
                Ok(None)
            }
        };
        let (ask, asvk) = (opt(path("ask"))?, opt(path("asvk"))?);
        a.add_amd(g, &read(&ark, "root")?, ask.as_deref(), asvk.as_deref())
            .map_err(|e| CliError::Input(format!("{}: {e}", ark.display())))?;
        found += 1;
    }
    if found == 0 {
        return Err(CliError::Input(format!(
            "--roots {}: no {{milan,genoa,turin}}-ark.pem found",
            dir.display()
        )));
    }
    Ok(a)
}

/// The VMPL required: `--expect-vmpl`/`--vmpl`, else 0 when the report must bind
/// SVSM evidence (`--manifest` or `--key-binding`: the SVSM asks for those reports at
/// VMPL 0, and a report the guest OS asked for must not pass), else none.
fn expected_vmpl(p: &Parsed) -> Result<Option<u32>, CliError> {
    let given = p.value("--expect-vmpl").or_else(|| p.value("--vmpl"));
    match given {
        Some(v) => v
            .parse::<u32>()
            .map(Some)
            .map_err(|e| CliError::Usage(format!("--expect-vmpl {v}: {e}"))),
        None if p.value("--manifest").is_some() || p.value("--key-binding").is_some() => {
            Ok(Some(0))
        }
        None => Ok(None),
    }
}

fn policy_from(p: &Parsed) -> Result<AppraisalPolicy, CliError> {
    let mut policy = AppraisalPolicy::new().allow_debug(p.flag("--allow-debug"));
    if let Some(n) = expected_vmpl(p)? {
        policy = policy.expect_vmpl(n);
    }
    let nonce = p.value("--nonce").map(parse_nonce).transpose()?;
    let exclusive = [
        p.value("--report-data").is_some(),
        p.value("--manifest").is_some(),
        p.value("--key-binding").is_some(),
    ];
    if exclusive.iter().filter(|x| **x).count() > 1 {
        return Err(CliError::Usage(
            "--report-data, --manifest and --key-binding are exclusive".into(),
        ));
    }
    match (
        p.value("--report-data"),
        p.value("--manifest"),
        p.value("--key-binding"),
        nonce,
    ) {
        (Some(_), _, _, Some(_)) => {
            return Err(CliError::Usage(
                "--report-data and --nonce are exclusive".into(),
            ))
        }
        (Some(h), _, _, None) => policy = policy.expect_report_data(parse_hex("--report-data", h)?),
        (None, Some(m), _, Some(nonce)) => {
            let manifest = read(Path::new(m), "manifest")?;
            policy = policy.expect_nonce_manifest(&nonce, &manifest);
        }
        (None, Some(_), _, None) => return Err(CliError::Usage("--manifest needs --nonce".into())),
        (None, None, Some(b), nonce) => {
            let binding = read(Path::new(b), "key binding")?;
            policy = policy.expect_key_binding(&binding);
            if let Some(n) = nonce {
                policy = policy.expect_binding_nonce(&n);
            }
        }
        (None, None, None, Some(_)) => {
            return Err(CliError::Usage(
                "--nonce goes with --manifest or --key-binding".into(),
            ))
        }
        (None, None, None, None) => {}
    }
    for m in p.all("--measurement") {
        policy = policy.allow_measurement(parse_hex("--measurement", m)?);
    }
    Ok(policy)
}

/// The inputs of `report verify`: the report and the endorsement key, from FILE,
/// `--vcek`, `--certs` (a certificate table) or `-d DIR` (an `attest` output
/// directory: report.bin, then vcek.der, vlek.der or certs.bin); plus whatever ARK
/// and ASK came along (table or directory), used only to name a development root.
struct Inputs {
    report: Vec<u8>,
    ek: Vec<u8>,
    ark: Option<Vec<u8>>,
    ask: Option<Vec<u8>>,
}

fn inputs(p: &Parsed) -> Result<Inputs, CliError> {
    let dir = p
        .value("-d")
        .or_else(|| p.value("--dir"))
        .map(PathBuf::from);
    let report_path = match (p.positional(0), &dir) {
        (Some(f), _) => PathBuf::from(f),
        (None, Some(d)) => d.join("report.bin"),
        (None, None) => {
            return Err(CliError::Usage(
                "report verify needs a report FILE or -d/--dir DIR".into(),
            ))
        }
    };
    let report = read(&report_path, "report")?;
    let from_table = |path: &Path| -> Result<Inputs, CliError> {
        let table = read(path, "certificate table")?;
        let found = crate::verify::table_certs(&table)
            .map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?;
        let ek = found.endorsement.ok_or_else(|| {
            CliError::Input(format!(
                "{}: the certificate table holds no VCEK or VLEK",
                path.display()
            ))
        })?;
        Ok(Inputs {
            report: Vec::new(),
            ek: ek.to_vec(),
            ark: found.ark.map(<[u8]>::to_vec),
            ask: found.ask.map(<[u8]>::to_vec),
        })
    };
    let mut got = match (p.value("--vcek"), p.value("--certs"), &dir) {
        (Some(_), Some(_), _) => {
            return Err(CliError::Usage("--vcek and --certs are exclusive".into()))
        }
        (Some(v), None, _) => Inputs {
            report: Vec::new(),
            ek: read(Path::new(v), "certificate")?,
            ark: None,
            ask: None,
        },
        (None, Some(t), _) => from_table(Path::new(t))?,
        (None, None, Some(d)) => {
            let ek = ["vcek.der", "vlek.der"]
                .iter()
                .map(|n| d.join(n))
                .find(|f| f.is_file());
            match ek {
                Some(f) => Inputs {
                    report: Vec::new(),
                    ek: read(&f, "certificate")?,
                    ark: None,
                    ask: None,
                },
                None => from_table(&d.join("certs.bin"))?,
            }
        }
        (None, None, None) => {
            return Err(CliError::Usage(
                "report verify needs --vcek CERT, --certs TABLE or -d DIR".into(),
            ))
        }
    };
    if let Some(d) = &dir {
        let opt = |n: &str| std::fs::read(d.join(n)).ok();
        got.ark = got.ark.or_else(|| opt("ark.der"));
        got.ask = got.ask.or_else(|| opt("ask.der"));
    }
    got.report = report;
    Ok(got)
}

/// Where the development chain lives when `cargo xtask` made it.
pub const DEFAULT_DEV_CHAIN_DIR: &str = "target/dev-chain";

/// After a chain failure: does the endorsement chain to a development root? Tried:
/// the ARK/ASK that came with the evidence (when not AMD's), then
/// [`DEFAULT_DEV_CHAIN_DIR`]; failing that, whether the certificate's issuer calls
/// itself a development chain. Never accepts anything: it only names the reason.
fn development_root(inputs: &Inputs) -> Option<String> {
    let chains = |ark: &[u8], ask: &[u8]| {
        let mut a = TrustAnchors::empty();
        a.add_dev_root(ark, ask).is_ok() && verify(&a, &inputs.report, &inputs.ek).is_ok()
    };
    if let (Some(ark), Some(ask)) = (&inputs.ark, &inputs.ask) {
        if chains(ark, ask) {
            return Some(
                "its VCEK chains to the non-AMD ARK shipped with the evidence".to_string(),
            );
        }
    }
    let dir = Path::new(DEFAULT_DEV_CHAIN_DIR);
    if let (Ok(ark), Ok(ask)) = (
        std::fs::read(dir.join("ark.pem")),
        std::fs::read(dir.join("ask.pem")),
    ) {
        if chains(&ark, &ask) {
            return Some(format!(
                "its VCEK chains to the development ARK in {DEFAULT_DEV_CHAIN_DIR}"
            ));
        }
    }
    let cert =
        crate::verify::Cert::from_pem_or_der(crate::verify::CertRole::Endorsement, &inputs.ek)
            .ok()?;
    let issuer = cert.certificate().tbs_certificate.issuer.to_string();
    let upper = issuer.to_ascii_uppercase();
    (upper.contains("DEVELOPMENT") || upper.contains("NOT AMD"))
        .then(|| format!("its VCEK's issuer is \"{issuer}\""))
}

fn verdict_json(v: &VerifiedReport, p: &Parsed) -> Value {
    json!({
        "verdict": "valid",
        "root": v.root.to_string(),
        "generation": v.generation.name(),
        "signing_key": v.signing_key.name(),
        "vmpl": v.report.vmpl.get(),
        "vmpl_checked": expected_vmpl(p).ok().flatten().is_some(),
        "chip_id_checked": v.chip_id_checked,
        "reported_tcb": tcb_json(&v.reported_tcb()),
        "measurement": hex::encode(v.report.measurement),
        "report_data": hex::encode(v.report.report_data),
    })
}

fn report_verify(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let json_out = p.flag("--json");
    let policy = policy_from(p)?;
    let mut anchors = match p.value("--roots") {
        Some(dir) => anchors_from_dir(Path::new(dir))?,
        None => TrustAnchors::amd_builtin()
            .map_err(|e| CliError::Input(format!("bundled roots: {e}")))?,
    };
    if let Some(dir) = p.value("--trust-dev-root") {
        anchors
            .add_dev_root_dir(Path::new(dir))
            .map_err(|e| CliError::Input(format!("--trust-dev-root {dir}: {e}")))?;
    }
    let inputs = inputs(p)?;
    let genuine = verify(&anchors, &inputs.report, &inputs.ek).map_err(|e| {
        let chain_failure = matches!(
            e,
            VerifyError::CertSignature { .. } | VerifyError::NoTrustAnchor { .. }
        );
        match chain_failure.then(|| development_root(&inputs)).flatten() {
            Some(evidence) => VerifyError::DevelopmentRoot { evidence },
            None => e,
        }
    });
    let result = genuine
        .map_err(RejectError::from)
        .and_then(|v| policy.appraise(&v).map(|_| v).map_err(RejectError::from));
    match result {
        Ok(v) => {
            if json_out {
                writeln!(out, "{:#}", verdict_json(&v, p)).map_err(io)?;
            } else {
                write_text(&verdict_json(&v, p), out, 0)?;
                if expected_vmpl(p)?.is_none() {
                    writeln!(
                        out,
                        "note: VMPL {} was not checked (use --expect-vmpl)",
                        v.report.vmpl.get()
                    )
                    .map_err(io)?;
                }
                if let RootUsed::Extra { label, .. } = &v.root {
                    writeln!(
                        out,
                        "note: trusted through the explicitly added root '{label}', NOT an AMD root"
                    )
                    .map_err(io)?;
                }
            }
            Ok(())
        }
        Err(e) => {
            let v = json!({"verdict": "rejected", "check": e.check(), "error": e.to_string()});
            if json_out {
                writeln!(out, "{v:#}").map_err(io)?;
            } else {
                write_text(&v, out, 0)?;
            }
            Err(CliError::Rejected(e))
        }
    }
}
