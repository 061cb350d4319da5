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

use crate::verify::{verify, AppraisalPolicy, Error as RejectError, TrustAnchors, VerifiedReport};

mod vhsm;

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
}

impl CliError {
    /// Process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) => 2,
            Self::Input(_) | Self::Rejected(_) | Self::Vhsm(_) => 1,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(m) | Self::Input(m) => f.write_str(m),
            Self::Rejected(e) => write!(f, "rejected: {e}"),
            Self::Vhsm(m) => write!(f, "vHSM: {m}"),
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
                usage: "FILE --vcek CERT [--roots DIR] [--expect-vmpl N] \
                    [--report-data HEX | --nonce HEX --manifest FILE] [--measurement HEX]... \
                    [--allow-debug] [--json]",
                value_flags: &[
                    "--vcek",
                    "--roots",
                    "--expect-vmpl",
                    "--report-data",
                    "--nonce",
                    "--manifest",
                    "--measurement",
                ],
                bool_flags: &["--allow-debug", "--json"],
                positionals: (1, 1),
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

fn parse_hex<const N: usize>(flag: &str, s: &str) -> Result<[u8; N], CliError> {
    let v = hex::decode(s.trim()).map_err(|e| CliError::Usage(format!("{flag}: {e}")))?;
    v.try_into()
        .map_err(|v: Vec<u8>| CliError::Usage(format!("{flag}: {} bytes, expected {N}", v.len())))
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

fn policy_from(p: &Parsed) -> Result<AppraisalPolicy, CliError> {
    let mut policy = AppraisalPolicy::new().allow_debug(p.flag("--allow-debug"));
    if let Some(v) = p.value("--expect-vmpl") {
        let n = v
            .parse::<u32>()
            .map_err(|e| CliError::Usage(format!("--expect-vmpl {v}: {e}")))?;
        policy = policy.expect_vmpl(n);
    }
    match (
        p.value("--report-data"),
        p.value("--nonce"),
        p.value("--manifest"),
    ) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
            return Err(CliError::Usage(
                "--report-data and --nonce/--manifest are exclusive".into(),
            ))
        }
        (Some(h), None, None) => policy = policy.expect_report_data(parse_hex("--report-data", h)?),
        (None, Some(n), Some(m)) => {
            let nonce =
                hex::decode(n.trim()).map_err(|e| CliError::Usage(format!("--nonce: {e}")))?;
            let manifest = read(Path::new(m), "manifest")?;
            policy = policy.expect_nonce_manifest(&nonce, &manifest);
        }
        (None, Some(_), None) | (None, None, Some(_)) => {
            return Err(CliError::Usage("--nonce and --manifest go together".into()))
        }
        (None, None, None) => {}
    }
    for m in p.all("--measurement") {
        policy = policy.allow_measurement(parse_hex("--measurement", m)?);
    }
    Ok(policy)
}

fn verdict_json(v: &VerifiedReport, p: &Parsed) -> Value {
    json!({
        "verdict": "valid",
        "root": v.root.to_string(),
        "generation": v.generation.name(),
        "signing_key": v.signing_key.name(),
        "vmpl": v.report.vmpl.get(),
        "vmpl_checked": p.value("--expect-vmpl").is_some(),
        "chip_id_checked": v.chip_id_checked,
        "reported_tcb": tcb_json(&v.reported_tcb()),
        "measurement": hex::encode(v.report.measurement),
        "report_data": hex::encode(v.report.report_data),
    })
}

fn report_verify(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let json_out = p.flag("--json");
    let vcek = p.value("--vcek").ok_or_else(|| {
        CliError::Usage("report verify needs --vcek CERT (VCEK or VLEK, PEM or DER)".into())
    })?;
    let policy = policy_from(p)?;
    let anchors = match p.value("--roots") {
        Some(dir) => anchors_from_dir(Path::new(dir))?,
        None => TrustAnchors::amd_builtin()
            .map_err(|e| CliError::Input(format!("bundled roots: {e}")))?,
    };
    let report = read(Path::new(p.file()), "report")?;
    let ek = read(Path::new(vcek), "certificate")?;
    let result = verify(&anchors, &report, &ek)
        .map_err(RejectError::from)
        .and_then(|v| policy.appraise(&v).map(|()| v).map_err(RejectError::from));
    match result {
        Ok(v) => {
            if json_out {
                writeln!(out, "{:#}", verdict_json(&v, p)).map_err(io)?;
            } else {
                write_text(&verdict_json(&v, p), out, 0)?;
                if p.value("--expect-vmpl").is_none() {
                    writeln!(
                        out,
                        "note: VMPL {} was not checked (use --expect-vmpl)",
                        v.report.vmpl.get()
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
