//! `nitride report show|verify`: decode SEV-SNP attestation reports and verify them
//! (AMD chain, signature, TCB and chip binding, then the caller's policy). Works on
//! files only: no firmware needed.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args, Subcommand};
use serde_json::{json, Value};

use nitride_protocol::snp::{AttestationReport, Generation, Tcb, TcbLayout};

use nitride_protocol::attest::Nonce;
use nitride_protocol::snp::{PlatformInfo, Policy};

use super::attest::guid_string;
use super::values::{self, hex_array, vmpl};
use super::{io, read, write_text, CliError};
use crate::verify::{
    verify, Appraisal, AppraisalPolicy, CheckedEvidence, Error as RejectError, MinTcb, RootUsed,
    TrustAnchors, VerifiedReport, VerifyError,
};

/// `nitride report ...`.
#[derive(Debug, Subcommand)]
pub enum ReportCmd {
    /// Decode every field of an SEV-SNP attestation report
    #[command(after_help = SHOW_EXAMPLES)]
    Show(ShowArgs),
    /// Verify a report: AMD chain, signature, TCB and chip binding, then your policy
    #[command(
        long_about = "Verify an SEV-SNP attestation report: the AMD chain (pinned ARK -> ASK/ASVK -> \
                      VCEK/VLEK, RSA-PSS), the report's ECDSA P-384 signature, the TCB and chip \
                      binding, then your policy (VMPL, guest policy bits, REPORT_DATA and the \
                      evidence it binds, measurement, minimum TCB).\n\n\
                      By default the guest policy must have its must-be-one bit 17 set and must \
                      not allow debugging (bit 19) nor a migration agent (MIGRATE_MA, bit 18). \
                      Every verdict shows the guest policy bits.\n\n\
                      Exits 0 with a verdict \"valid\", 1 naming the failed check, 2 for a usage \
                      error. Reports of the virtual SNP machine are signed by a development root, \
                      not AMD: they are refused unless you pass --trust-dev-root.",
        after_help = VERIFY_EXAMPLES
    )]
    Verify(Box<VerifyArgs>),
}

pub(super) const REPORT_EXAMPLES: &str = "\
Examples:
  nitride report show evidence/report.bin
  nitride report verify -d evidence --nonce $NONCE --manifest evidence/manifest.bin";

const SHOW_EXAMPLES: &str = "\
Examples:
  nitride report show evidence/report.bin
  nitride report show evidence/report.bin --json | jq .reported_tcb";

const VERIFY_EXAMPLES: &str = "\
Examples:
  nitride report verify -d evidence --nonce $NONCE --manifest evidence/manifest.bin \\
      --measurement $MEASUREMENT --trust-dev-root target/dev-chain
  nitride report verify -d key-evidence --key-binding key-evidence/key-binding.bin --nonce $NONCE
  nitride report verify report.bin --vcek vcek.der --expect-vmpl 1 --report-data $HEX --json
  nitride report verify -d evidence --min-tcb bootloader=9,snp=23,microcode=72 --require-smt-off";

/// `nitride report show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The report (raw bytes, as the PSP returns it)
    #[arg(value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub file: PathBuf,
    /// Print JSON (every field, decoded) instead of text
    #[arg(long)]
    pub json: bool,
}

/// `nitride report verify`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("report_source").args(["file", "dir"]).required(true).multiple(true)))]
#[command(group(ArgGroup::new("endorsement").args(["vcek", "certs", "dir"]).required(true).multiple(true)))]
#[command(group(ArgGroup::new("evidence").args(["manifest", "key_binding"])))]
pub struct VerifyArgs {
    /// The report [default: DIR/report.bin with --dir]
    #[arg(value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub file: Option<PathBuf>,
    /// The VCEK or VLEK certificate (DER or PEM) that signed the report
    #[arg(long, value_name = "CERT", conflicts_with = "certs", value_hint = clap::ValueHint::FilePath)]
    pub vcek: Option<PathBuf>,
    /// A certificate table (as the SVSM or an extended guest request returns it)
    /// holding the VCEK or VLEK
    #[arg(long, value_name = "TABLE", value_hint = clap::ValueHint::FilePath)]
    pub certs: Option<PathBuf>,
    /// An `attest` output directory: report.bin, then vcek.der, vlek.der or certs.bin
    #[arg(short = 'd', long = "dir", value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub dir: Option<PathBuf>,
    /// Trust these AMD roots ({milan,genoa,turin}-ark.pem, -ask.pem, -asvk.pem)
    /// instead of the built-in ones [default: the AMD roots built in]
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub roots: Option<PathBuf>,
    /// Also trust the development root in DIR (ark.pem, ask.pem); the verdict names it
    /// [default: trust no development root]
    #[arg(long, value_name = "DIR", value_hint = clap::ValueHint::DirPath)]
    pub trust_dev_root: Option<PathBuf>,
    /// Require the report to have been requested at this VMPL (0 to 3) [default: 0 with
    /// --manifest or --key-binding, else not checked]
    #[arg(long, visible_alias = "vmpl", value_name = "N", value_parser = vmpl)]
    pub expect_vmpl: Option<u8>,
    /// Require REPORT_DATA to be exactly these 64 bytes
    #[arg(long, value_name = "HEX", value_parser = hex_array::<64>, conflicts_with_all = ["evidence", "nonce"])]
    pub report_data: Option<[u8; 64]>,
    /// The nonce the evidence was requested with, exactly 64 bytes (with --manifest:
    /// REPORT_DATA = SHA-512(nonce || manifest); with --key-binding: the binding's
    /// nonce)
    #[arg(long, value_name = "HEX", value_parser = values::nonce, requires = "evidence")]
    pub nonce: Option<Nonce>,
    /// The services manifest of `attest services` (needs --nonce; implies --expect-vmpl 0)
    #[arg(long, value_name = "FILE", requires = "nonce", value_hint = clap::ValueHint::FilePath)]
    pub manifest: Option<PathBuf>,
    /// The key binding of `attest key`: REPORT_DATA = SHA-512(binding) (implies
    /// --expect-vmpl 0)
    #[arg(long, value_name = "FILE", value_hint = clap::ValueHint::FilePath)]
    pub key_binding: Option<PathBuf>,
    /// Accept this launch measurement (48 bytes); repeat to accept several
    /// [default: any measurement]
    #[arg(long, value_name = "HEX", value_parser = hex_array::<48>)]
    pub measurement: Vec<[u8; 48]>,
    /// Accept a guest policy with the debug bit set [default: refused]
    #[arg(long)]
    pub allow_debug: bool,
    /// Accept a guest policy that allows a migration agent (MIGRATE_MA, bit 18)
    /// [default: refused]
    #[arg(long)]
    pub allow_migrate_ma: bool,
    /// Require each TCB component named to be at least N in REPORTED_TCB:
    /// COMPONENT=N,... of bootloader, tee, snp, microcode, fmc [default: any TCB]
    #[arg(long, value_name = "SPEC", value_parser = values::min_tcb)]
    pub min_tcb: Option<MinTcb>,
    /// Require SMT off: the guest policy forbids SMT (bit 16 clear) and the platform
    /// reports it disabled [default: not required]
    #[arg(long)]
    pub require_smt_off: bool,
    /// Require the guest policy's SINGLE_SOCKET bit (20) [default: not required]
    #[arg(long)]
    pub require_single_socket: bool,
    /// Print the verdict as JSON (also when rejected)
    #[arg(long)]
    pub json: bool,
}

pub(super) fn run(cmd: ReportCmd, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        ReportCmd::Show(a) => report_show(&a, out),
        ReportCmd::Verify(a) => report_verify(&a, out),
    }
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

fn report_show(p: &ShowArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let bytes = read(&p.file, "report")?;
    let r = AttestationReport::from_bytes(&bytes).map_err(|e| CliError::Input(e.to_string()))?;
    let v = report_json(r, r.tcb_layout(), r.generation());
    if p.json {
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
fn expected_vmpl(p: &VerifyArgs) -> Option<u32> {
    match p.expect_vmpl {
        Some(v) => Some(u32::from(v)),
        None if p.manifest.is_some() || p.key_binding.is_some() => Some(0),
        None => None,
    }
}

/// The policy from the options. Which options go together is clap's to check
/// (`--report-data` against `--nonce`/`--manifest`/`--key-binding`, `--manifest`
/// needing `--nonce`, `--nonce` needing one of them).
fn policy_from(p: &VerifyArgs) -> Result<AppraisalPolicy, CliError> {
    let mut policy = AppraisalPolicy::new()
        .allow_debug(p.allow_debug)
        .allow_migrate_ma(p.allow_migrate_ma)
        .require_smt_off(p.require_smt_off)
        .require_single_socket(p.require_single_socket);
    if let Some(min) = p.min_tcb {
        policy = policy.min_tcb(min);
    }
    if let Some(n) = expected_vmpl(p) {
        policy = policy.expect_vmpl(n);
    }
    if let Some(rd) = p.report_data {
        policy = policy.expect_report_data(rd);
    }
    if let (Some(m), Some(nonce)) = (&p.manifest, &p.nonce) {
        let manifest = read(m, "manifest")?;
        policy = policy.expect_nonce_manifest(nonce, &manifest);
    }
    if let Some(b) = &p.key_binding {
        let binding = read(b, "key binding")?;
        policy = policy.expect_key_binding(&binding);
        if let Some(n) = &p.nonce {
            policy = policy.expect_binding_nonce(n);
        }
    }
    for m in &p.measurement {
        policy = policy.allow_measurement(*m);
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

fn inputs(p: &VerifyArgs) -> Result<Inputs, CliError> {
    let dir = p.dir.clone();
    // clap requires FILE or --dir, and one of --vcek, --certs, --dir.
    let report_path = match (&p.file, &dir) {
        (Some(f), _) => f.clone(),
        (None, Some(d)) => d.join("report.bin"),
        (None, None) => {
            return Err(super::usage_error(
                &["report", "verify"],
                clap::error::ErrorKind::MissingRequiredArgument,
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
    let mut got = match (&p.vcek, &p.certs, &dir) {
        (Some(v), _, _) => Inputs {
            report: Vec::new(),
            ek: read(v, "certificate")?,
            ark: None,
            ask: None,
        },
        (None, Some(t), _) => from_table(t)?,
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
            return Err(super::usage_error(
                &["report", "verify"],
                clap::error::ErrorKind::MissingRequiredArgument,
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

/// The guest policy bits (and the platform's SMT state), for every verdict.
fn guest_policy_json(policy: Policy, platform: PlatformInfo) -> Value {
    json!({
        "value": format!("{:#x}", policy.0),
        "abi_minimum": format!("{}.{}", policy.abi_major(), policy.abi_minor()),
        "smt_allowed": policy.smt(),
        "reserved_bit_17_set": policy.reserved_must_be_one(),
        "migrate_ma": policy.migrate_ma(),
        "debug": policy.debug(),
        "single_socket": policy.single_socket(),
        "platform_smt_enabled": platform.smt_enabled(),
    })
}

fn vhsm_json(m: &nitride_protocol::attest::VhsmManifest<'_>) -> Value {
    json!({
        "identity_key": hex::encode(m.identity),
        "keys": m.keys().map(|k| json!({
            "id": k.attributes.key_id.get(),
            "label": String::from_utf8_lossy(k.attributes.label()),
            "spki": hex::encode(k.spki),
        })).collect::<Vec<_>>(),
    })
}

/// The evidence as the policy checked it (never read from the files again).
fn evidence_json(e: &CheckedEvidence<'_>) -> Value {
    match e {
        CheckedEvidence::None => Value::Null,
        CheckedEvidence::Services { nonce, table, vhsm } => json!({
            "kind": "services",
            "nonce": hex::encode(nonce),
            "services": table.entries().map(|(g, _)| guid_string(&g)).collect::<Vec<_>>(),
            "vhsm": vhsm.as_ref().map(vhsm_json),
        }),
        CheckedEvidence::VhsmService { nonce, manifest } => json!({
            "kind": "vhsm_service",
            "nonce": hex::encode(nonce),
            "vhsm": vhsm_json(manifest),
        }),
        CheckedEvidence::KeyBinding(b) => json!({
            "kind": "key_binding",
            "nonce": hex::encode(b.nonce),
            "key": b.attributes.key_id.get(),
            "label": String::from_utf8_lossy(b.attributes.label()),
            "spki": hex::encode(b.spki),
        }),
    }
}

fn verdict_json(v: &VerifiedReport, a: &Appraisal<'_>, p: &VerifyArgs) -> Value {
    let mut verdict = json!({
        "verdict": "valid",
        "root": v.root.to_string(),
        "generation": v.generation.name(),
        "signing_key": v.signing_key.name(),
        "vmpl": v.report.vmpl.get(),
        "vmpl_checked": expected_vmpl(p).is_some(),
        "chip_id_checked": v.chip_id_checked,
        "guest_policy": guest_policy_json(a.guest_policy, v.report.platform_info()),
        "reported_tcb": tcb_json(&v.reported_tcb()),
        "measurement": hex::encode(v.report.measurement),
        "report_data": hex::encode(v.report.report_data),
    });
    let evidence = evidence_json(&a.evidence);
    if !evidence.is_null() {
        verdict["evidence"] = evidence;
    }
    verdict
}

/// A rejected verdict: the failed check, the error, and the guest policy bits when
/// the report is one.
fn rejected_json(e: &RejectError, report: Option<&[u8]>) -> Value {
    let mut v = json!({"verdict": "rejected", "check": e.check(), "error": e.to_string()});
    if let Some(r) = report.and_then(|r| AttestationReport::from_bytes(r).ok()) {
        v["guest_policy"] = guest_policy_json(r.policy(), r.platform_info());
    }
    v
}

fn print_verdict(v: &Value, json_out: bool, out: &mut dyn Write) -> Result<(), CliError> {
    if json_out {
        writeln!(out, "{v:#}").map_err(io)
    } else {
        write_text(v, out, 0)
    }
}

/// The trust anchors from `--roots` and `--trust-dev-root`; a directory that cannot
/// serve is a rejection (the report cannot be verified against it).
fn anchors(p: &VerifyArgs) -> Result<TrustAnchors, RejectError> {
    let unusable = |option: &str, dir: &Path, reason: String| {
        RejectError::Verify(VerifyError::RootsUnusable {
            option: format!("{option} {}", dir.display()),
            reason,
        })
    };
    let mut anchors = match &p.roots {
        Some(dir) => anchors_from_dir(dir).map_err(|e| unusable("--roots", dir, e.to_string()))?,
        None => TrustAnchors::amd_builtin().map_err(RejectError::Verify)?,
    };
    if let Some(dir) = &p.trust_dev_root {
        anchors
            .add_dev_root_dir(dir)
            .map_err(|e| unusable("--trust-dev-root", dir, e.to_string()))?;
    }
    Ok(anchors)
}

fn report_verify(p: &VerifyArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let json_out = p.json;
    let policy = policy_from(p)?;
    let inputs = inputs(p)?;
    let anchors = match anchors(p) {
        Ok(a) => a,
        Err(e) => {
            print_verdict(&rejected_json(&e, Some(&inputs.report)), json_out, out)?;
            return Err(CliError::Rejected(e));
        }
    };
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
    let result = genuine.map_err(RejectError::from).and_then(|v| {
        policy
            .appraise(&v)
            .map(|a| verdict_json(&v, &a, p))
            .map_err(RejectError::from)
            .map(|verdict| (v, verdict))
    });
    match result {
        Ok((v, verdict)) => {
            print_verdict(&verdict, json_out, out)?;
            if !json_out {
                if expected_vmpl(p).is_none() {
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
            print_verdict(&rejected_json(&e, Some(&inputs.report)), json_out, out)?;
            Err(CliError::Rejected(e))
        }
    }
}
