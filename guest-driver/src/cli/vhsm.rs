//! `nitride` commands for the vHSM: `key generate|import|list|info|delete|pubkey`,
//! `sign`, `verify`, `encrypt`, `decrypt`, `wrap`, `unwrap`, `derive`, `random`,
//! `audit`. Each talks to a running firmware through the relay guest's socket:
//! `--socket PATH`, else `$NITRIDE_SOCKET`, else `target/nitride-up/vhsm.sock`
//! (where `cargo xtask up` puts it). Data comes from `--in FILE` or stdin and goes to
//! `--out FILE` or stdout; `--json` prints machine-readable results.
//!
//! Values the vHSM limits (labels, AAD, random lengths, salts) are checked at parse
//! time ([`super::values`]); inputs read from files are checked against the wire
//! limits before anything is sent; a refusal by the vault is explained naming the
//! key(s) the request was about ([`refused`]).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueHint};
use serde_json::{json, Value};

use nitride_protocol::vhsm::{
    AuditEntry, KeyAttributes, KeyFlags, KeyTemplate, KeyUsage, Op, Origin, Status, VmplSet,
    GCM_NONCE_LEN, GCM_TAG_LEN, KEY_CAPACITY, MAX_CIPHERTEXT_LEN, MAX_DATA_LEN, MAX_SIGNATURE_LEN,
    MAX_WRAPPED_LEN,
};

use super::seal::StateSaving;
use super::values::{self, KeyTypeArg, Named, UsageArg};
use super::{io, read, CliError, Refusal};
use crate::relay::RelayClient;
use crate::vhsm::{VhsmClient, VhsmError};

/// Default socket, relative to the working directory (the repository root).
pub const DEFAULT_SOCKET: &str = "target/nitride-up/vhsm.sock";

/// How to reach the firmware.
#[derive(Debug, Clone, Args)]
pub struct Conn {
    /// The relay guest's socket
    #[arg(
        long,
        value_name = "PATH",
        env = "NITRIDE_SOCKET",
        hide_env_values = true,
        default_value = DEFAULT_SOCKET,
        value_hint = ValueHint::FilePath
    )]
    pub socket: PathBuf,
}

/// Where input comes from.
#[derive(Debug, Clone, Args)]
pub struct Input {
    /// Read the input from FILE ("-": stdin) [default: stdin]
    #[arg(long = "in", value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub input: Option<PathBuf>,
}

/// Where output goes.
#[derive(Debug, Clone, Args)]
pub struct Output {
    /// Write the output to FILE ("-": stdout) [default: stdout]
    #[arg(short = 'o', long = "out", value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub output: Option<PathBuf>,
}

/// The attributes of a new key.
#[derive(Debug, Clone, Args)]
pub struct TemplateArgs {
    /// The key's type
    #[arg(long = "type", value_name = "TYPE", value_parser = Named::<KeyTypeArg>::new("key type"))]
    pub key_type: KeyTypeArg,
    /// What the key may be used for, comma-separated [default: what the type can do,
    /// less wrap, unwrap, derive, attest and release]
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        value_parser = Named::<UsageArg>::new("usage")
    )]
    pub usage: Option<Vec<UsageArg>>,
    /// A label for the key (at most 32 bytes) [default: none]
    #[arg(long, value_name = "TEXT", value_parser = values::label)]
    pub label: Option<String>,
    /// The VMPLs that may use the key, comma-separated, 0 to 3 [default: 0,1,2,3]
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = values::vmpl)]
    pub vmpls: Option<Vec<u8>>,
    /// Let the key leave the vault wrapped (`nitride wrap`) [default: not exportable]
    #[arg(long)]
    pub exportable: bool,
    /// Keep the key in the vault's sealed state (`nitride state export`), so that it
    /// survives a restart [default: not persistent]
    #[arg(long)]
    pub persistent: bool,
}

/// `--json`.
#[derive(Debug, Clone, Copy, Args)]
pub struct Json {
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// `nitride key ...`.
#[derive(Debug, Subcommand)]
pub enum KeyCmd {
    /// Generate a key inside the vHSM; prints its id and attributes
    #[command(after_help = GENERATE_EXAMPLES)]
    Generate(GenerateArgs),
    /// Import plaintext key material (only if the SVSM's policy allows it)
    #[command(
        long_about = "Import plaintext key material: the raw AES or HMAC key, the Ed25519 seed or \
                      the big-endian P-384 scalar (32 bytes for aes-256 and ed25519, 48 for \
                      ecdsa-p384 and hmac-sha384, 32 for ecdsa-p256 and ecdh-p256). The vault \
                      refuses unless its measured launch configuration allows it (`nitride owner \
                      launch-config --allow-plaintext-import`); prefer `nitride unwrap`.",
        after_help = IMPORT_EXAMPLES
    )]
    Import(ImportArgs),
    /// List the keys this caller may use
    #[command(after_help = "Examples:\n  nitride key list\n  nitride key list --json")]
    List(ListArgs),
    /// Show one key's attributes
    #[command(after_help = "Examples:\n  nitride key info 1\n  nitride key info 1 --json")]
    Info(KeyIdArgs),
    /// Delete a key (its material is zeroized)
    #[command(after_help = "Examples:\n  nitride key delete 2")]
    Delete(KeyIdArgs),
    /// Export the public key of an asymmetric key (SPKI, DER or PEM)
    #[command(
        after_help = "Examples:\n  nitride key pubkey 1 --pem --out signer.pem\n  \
                      openssl dgst -sha384 -verify signer.pem -signature release.sig release.tar"
    )]
    Pubkey(PubkeyArgs),
}

pub(super) const KEY_EXAMPLES: &str = "\
Examples:
  nitride key generate --type ecdsa-p384 --label release-signing
  nitride key list
  nitride key pubkey 1 --pem --out signer.pem";

const GENERATE_EXAMPLES: &str = "\
Examples:
  nitride key generate --type ecdsa-p384 --label release-signing
  nitride key generate --type aes-256 --usage wrap,unwrap --label kek
  nitride key generate --type ecdsa-p384 --usage sign,verify,attest --vmpls 1,2 --json
  nitride key generate --type ecdsa-p384 --persistent --label survives-restarts";

const IMPORT_EXAMPLES: &str = "\
Examples:
  openssl rand 32 | nitride key import --type aes-256 --label imported";

pub(super) const SIGN_EXAMPLES: &str = "\
Examples:
  nitride sign 1 --in release.tar --out release.sig
  echo -n hello | nitride sign 1 --json";

pub(super) const VERIFY_EXAMPLES: &str = "\
Examples:
  nitride verify 1 --signature release.sig --in release.tar

Exits 0 with \"signature valid\", 1 when the signature does not verify.";

pub(super) const ENCRYPT_EXAMPLES: &str = "\
Examples:
  echo secret | nitride encrypt 2 --aad v1 > secret.enc
  nitride encrypt 2 --in notes.txt --out notes.enc";

pub(super) const DECRYPT_EXAMPLES: &str = "\
Examples:
  nitride decrypt 2 --aad v1 --in secret.enc";

pub(super) const WRAP_EXAMPLES: &str = "\
Examples:
  nitride wrap 3 2 --out key2.wrapped      # key 3: wrap usage; key 2: --exportable";

pub(super) const UNWRAP_EXAMPLES: &str = "\
Examples:
  nitride unwrap 3 --type aes-256 --in key2.wrapped --label restored";

pub(super) const DERIVE_EXAMPLES: &str = "\
Examples:
  nitride derive 4 --type aes-256 --salt v1 --info disk-key --label disk";

pub(super) const RANDOM_EXAMPLES: &str = "\
Examples:
  nitride random 32 --hex
  nitride random 4096 --out seed.bin";

pub(super) const AUDIT_EXAMPLES: &str = "\
Examples:
  nitride audit
  nitride audit --from 100 --json";

/// `nitride key generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    template: TemplateArgs,
    #[command(flatten)]
    json: Json,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride key import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    #[command(flatten)]
    template: TemplateArgs,
    #[command(flatten)]
    input: Input,
    #[command(flatten)]
    json: Json,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride key list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    json: Json,
    #[command(flatten)]
    conn: Conn,
}

/// A command on one key.
#[derive(Debug, Args)]
pub struct KeyIdArgs {
    /// The key's id
    #[arg(value_name = "ID", value_parser = values::key_id)]
    id: u32,
    #[command(flatten)]
    json: Json,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride key pubkey`.
#[derive(Debug, Args)]
pub struct PubkeyArgs {
    /// The key's id
    #[arg(value_name = "ID", value_parser = values::key_id)]
    id: u32,
    /// PEM instead of DER
    #[arg(long)]
    pem: bool,
    #[command(flatten)]
    output: Output,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride sign`.
#[derive(Debug, Args)]
pub struct SignArgs {
    /// The signing key's id (usage sign)
    #[arg(value_name = "ID", value_parser = values::key_id)]
    id: u32,
    #[command(flatten)]
    input: Input,
    #[command(flatten)]
    output: Output,
    /// Print {"signature": HEX} instead of the raw signature
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride verify`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The key's id (usage verify)
    #[arg(value_name = "ID", value_parser = values::key_id)]
    id: u32,
    /// The signature to check (as `nitride sign` wrote it)
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    signature: PathBuf,
    #[command(flatten)]
    input: Input,
    /// Print {"valid": true|false}
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride encrypt` and `nitride decrypt`.
#[derive(Debug, Args)]
pub struct CryptArgs {
    /// The AES-256 key's id (usage encrypt or decrypt)
    #[arg(value_name = "ID", value_parser = values::key_id)]
    id: u32,
    /// Additional authenticated data (at most 16384 bytes) [default: none]
    #[arg(long, value_name = "TEXT", value_parser = values::aad)]
    aad: Option<String>,
    #[command(flatten)]
    input: Input,
    #[command(flatten)]
    output: Output,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride wrap`.
#[derive(Debug, Args)]
pub struct WrapArgs {
    /// The wrapping key's id (an AES-256 key with usage wrap)
    #[arg(value_name = "WRAPPING_ID", value_parser = values::key_id)]
    wrapping_id: u32,
    /// The id of the key to export (created --exportable)
    #[arg(value_name = "KEY_ID", value_parser = values::key_id)]
    key_id: u32,
    #[command(flatten)]
    output: Output,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride unwrap`.
#[derive(Debug, Args)]
pub struct UnwrapArgs {
    /// The unwrapping key's id (an AES-256 key with usage unwrap)
    #[arg(value_name = "WRAPPING_ID", value_parser = values::key_id)]
    wrapping_id: u32,
    #[command(flatten)]
    template: TemplateArgs,
    #[command(flatten)]
    input: Input,
    #[command(flatten)]
    json: Json,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride derive`.
#[derive(Debug, Args)]
pub struct DeriveArgs {
    /// The parent key's id (usage derive)
    #[arg(value_name = "PARENT_ID", value_parser = values::key_id)]
    parent_id: u32,
    #[command(flatten)]
    template: TemplateArgs,
    /// HKDF salt (at most 1024 bytes) [default: empty]
    #[arg(long, value_name = "TEXT", value_parser = values::derive_input)]
    salt: Option<String>,
    /// HKDF info (at most 1024 bytes) [default: empty]
    #[arg(long, value_name = "TEXT", value_parser = values::derive_input)]
    info: Option<String>,
    #[command(flatten)]
    json: Json,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride random`.
#[derive(Debug, Args)]
pub struct RandomArgs {
    /// How many bytes (0 to 4096)
    #[arg(value_name = "N", value_parser = values::random_len)]
    n: u32,
    /// Print hex instead of raw bytes
    #[arg(long, conflicts_with = "json")]
    hex: bool,
    #[command(flatten)]
    output: Output,
    /// Print {"random": HEX}
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Start at this sequence number [default: 0, the oldest entry kept]
    #[arg(long, value_name = "SEQ")]
    from: Option<u64>,
    #[command(flatten)]
    json: Json,
    #[command(flatten)]
    conn: Conn,
}

pub(super) fn connect(conn: &Conn) -> Result<VhsmClient<StateSaving<RelayClient>>, CliError> {
    let state = super::seal::state_file(&conn.socket);
    RelayClient::connect(&conn.socket)
        .map(|relay| VhsmClient::new(StateSaving::new(relay, state)))
        .map_err(|e| {
            CliError::Vhsm(format!(
                "cannot reach the vHSM at {}: {e} (is it running? `cargo xtask up`)",
                conn.socket.display()
            ))
        })
}

/// What a request was about, to explain a refusal: the action (a verb phrase) and
/// the keys it named, each with its role.
pub(crate) struct About<'a> {
    pub action: &'a str,
    pub keys: &'a [(&'a str, u32)],
}

fn key_phrase(keys: &[(&str, u32)]) -> String {
    let named: Vec<String> = keys
        .iter()
        .map(|(role, id)| {
            if role.is_empty() {
                format!("key {id}")
            } else {
                format!("key {id} ({role})")
            }
        })
        .collect();
    named.join(" or ")
}

/// Explain a vHSM error: a refusal names the key(s) or the limit concerned. The
/// vault answers `KeyNotFound` both for a key that does not exist and for one this
/// caller may not use, so the message claims no more than that.
pub(super) fn refused(e: VhsmError, about: &About<'_>) -> CliError {
    let s = match e {
        VhsmError::Status(s) => s,
        VhsmError::Encode(w) => {
            return CliError::Input(format!(
                "{}: the request exceeds the vHSM's limits ({w:?})",
                about.action
            ))
        }
        other => return CliError::Vhsm(other.to_string()),
    };
    let keys = about.keys;
    let first = keys.first().map(|(_, id)| *id);
    let key = |id: Option<u32>| id.map_or_else(|| "the key".to_string(), |i| format!("key {i}"));
    let action = about.action;
    let message = match s {
        Status::KeyNotFound => format!(
            "{} does not exist or is not usable by this caller",
            key_phrase(keys)
        ),
        Status::AccessDenied => format!(
            "{}: this caller's VMPL is not among the VMPLs allowed to use it",
            key_phrase(keys)
        ),
        Status::UsageNotPermitted if action == "attest" => format!(
            "{} is not attestable: it was not created with the attest usage \
             (e.g. --usage sign,verify,attest)",
            key(first)
        ),
        Status::UsageNotPermitted => format!(
            "{}'s usage does not allow it to {action} (see `nitride key info {}`)",
            key(first),
            first.unwrap_or_default()
        ),
        Status::WrongKeyType => format!("{}'s type cannot {action}", key(first)),
        Status::NotExportable => format!(
            "{} is not exportable (keys are created non-exportable unless --exportable)",
            key(keys.last().map(|(_, id)| *id))
        ),
        Status::PolicyDenied => format!(
            "the vault's policy forbids this: {action} (plaintext import needs a launch \
             configuration that allows it: `nitride owner launch-config --allow-plaintext-import`; \
             prefer `nitride unwrap`)"
        ),
        Status::NoSession => format!(
            "no provisioning session is open ({action}): another ProvisionBegin ended it, or it \
             was already finished"
        ),
        Status::JweInvalid => format!(
            "the vault refused the KBS's JWE ({action}): malformed, altered, or encrypted to \
             another session's key"
        ),
        Status::EnvelopeInvalid => format!(
            "the vault refused the secret's envelope ({action}): malformed, or not signed by the \
             owner key of the measured launch configuration"
        ),
        Status::Unauthenticated => format!(
            "the vault refused an envelope without the owner's signature ({action}): the measured \
             launch configuration has an owner key, or does not allow unauthenticated secrets"
        ),
        Status::CapacityExceeded => format!(
            "the vault is full: it holds at most {KEY_CAPACITY} keys, or its key ids are \
             exhausted (delete a key with `nitride key delete ID`)"
        ),
        Status::InvalidKeyMaterial => {
            format!("the key material is not a valid key of the requested type ({action})")
        }
        Status::AuthenticationFailed => format!(
            "the input does not authenticate under {} (wrong key, wrong AAD, or altered data)",
            key(first)
        ),
        Status::SignatureInvalid => "signature invalid".to_string(),
        Status::NonceLimitReached => format!(
            "{} has reached its AES-GCM invocation limit: generate a new key",
            key(first)
        ),
        Status::EntropyFailure => "the platform could not provide entropy".to_string(),
        Status::TooLarge => {
            format!("the request or its answer exceeds the vHSM's size limits ({action})")
        }
        Status::AttestationUnavailable => {
            "the platform could not produce an attestation report".to_string()
        }
        Status::InvalidParameter => format!(
            "a value of the request is out of range ({action}); for a new key, --vmpls must \
             include the caller's VMPL"
        ),
        Status::Malformed | Status::UnsupportedVersion | Status::UnknownOperation => format!(
            "the vault did not understand the request ({action}): do this tool and the \
             firmware speak the same vHSM protocol version?"
        ),
        Status::SealingUnavailable => format!(
            "the platform could not derive a sealing key ({action}): no PSP, or the blob was \
             sealed at a TCB above this chip's"
        ),
        Status::SealedBlobInvalid => format!(
            "the blob does not open ({action}): it was sealed by another SVSM image or guest \
             image, on another chip, or was altered or truncated"
        ),
        Status::SealRuleDenied => {
            format!("the blob's unsealing rule does not include this caller's VMPL ({action})")
        }
        Status::VaultNotEmpty => format!(
            "the vault already holds keys: a state is imported only into an empty vault, \
             right after the start ({action})"
        ),
        Status::StateRollback => format!(
            "the state blob is older (a lower generation) than one already imported or \
             exported since the start: refused as a rollback ({action})"
        ),
        Status::Ok => format!("unexpected status Ok ({action})"),
    };
    CliError::Refused(Refusal {
        status: s,
        keys: keys.iter().map(|(_, id)| *id).collect(),
        message,
    })
}

fn about<'a>(action: &'a str, keys: &'a [(&'a str, u32)]) -> About<'a> {
    About { action, keys }
}

/// Read the input (`--in FILE`, `-` or nothing: stdin), refusing more than `max`
/// bytes of `what` with the limit named.
pub(super) fn input(i: &Input, what: &str, max: usize) -> Result<Vec<u8>, CliError> {
    let (v, from) = match i.input.as_deref() {
        Some(f) if f != Path::new("-") => (read(f, "input")?, f.display().to_string()),
        _ => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .map_err(|e| CliError::Input(format!("stdin: {e}")))?;
            (v, "stdin".to_string())
        }
    };
    if v.len() > max {
        return Err(CliError::Input(format!(
            "{from}: {} bytes; {what} is at most {max} bytes",
            v.len()
        )));
    }
    Ok(v)
}

pub(super) fn output(o: &Output, bytes: &[u8], out: &mut dyn Write) -> Result<(), CliError> {
    match o.output.as_deref() {
        Some(f) if f != Path::new("-") => {
            std::fs::write(f, bytes).map_err(|e| CliError::Input(format!("{}: {e}", f.display())))
        }
        _ => out.write_all(bytes).map_err(io),
    }
}

fn origin_name(raw: u8) -> &'static str {
    match Origin::from_raw(raw) {
        Some(Origin::Generated) => "generated",
        Some(Origin::Imported) => "imported",
        Some(Origin::Unwrapped) => "unwrapped",
        Some(Origin::Derived) => "derived",
        Some(Origin::Provisioned) => "provisioned",
        Some(Origin::ProvisionedUnauthenticated) => "provisioned-unauthenticated",
        None => "unknown",
    }
}

fn vmpl_list(bits: u8) -> Vec<u8> {
    (0..4).filter(|v| bits & (1 << v) != 0).collect()
}

/// The template from `--type`, `--usage` (default: what the type can do, less
/// wrap/unwrap/derive/attest: listing a key in the attestation manifest is opt-in),
/// `--vmpls` (default: all) and `--exportable`. A usage the type cannot have is a
/// usage error here, before the vault sees it.
pub(super) fn template(t: &TemplateArgs, path: &[&str]) -> Result<KeyTemplate, CliError> {
    let key_type = t.key_type.key_type();
    let allowed = key_type.allowed_usage();
    let usage = match &t.usage {
        // An ECDH key can only agree (derive).
        None if key_type == nitride_protocol::vhsm::KeyType::EcdhP256 => KeyUsage::DERIVE,
        None => {
            allowed
                - (KeyUsage::WRAP
                    | KeyUsage::UNWRAP
                    | KeyUsage::DERIVE
                    | KeyUsage::ATTEST
                    | KeyUsage::RELEASE)
        }
        Some(list) => list.iter().fold(KeyUsage::empty(), |acc, u| acc | u.flag()),
    };
    if !allowed.contains(usage) {
        let bad = UsageArg::names((usage - allowed).bits());
        return Err(super::usage_error(
            path,
            clap::error::ErrorKind::ValueValidation,
            format!(
                "invalid value for '--usage': a key of type {} cannot have usage {}; it can have {}",
                t.key_type.name(),
                bad.join(","),
                UsageArg::names(allowed.bits()).join(",")
            ),
        ));
    }
    if usage.is_empty() {
        return Err(super::usage_error(
            path,
            clap::error::ErrorKind::ValueValidation,
            "invalid value for '--usage': a key needs at least one usage".into(),
        ));
    }
    let vmpls = match &t.vmpls {
        None => VmplSet::all(),
        Some(list) => list.iter().fold(VmplSet::empty(), |acc, v| {
            acc | VmplSet::from_bits_truncate(1 << v)
        }),
    };
    let template = KeyTemplate::new(key_type, usage, vmpls, t.exportable);
    Ok(if t.persistent {
        template.persistent()
    } else {
        template
    })
}

/// A key's flag.
fn has(k: &KeyAttributes, flag: KeyFlags) -> bool {
    k.exportable & flag.bits() != 0
}

pub(super) fn label(t: &TemplateArgs) -> &[u8] {
    t.label.as_deref().unwrap_or_default().as_bytes()
}

pub(super) fn key_json(k: &KeyAttributes) -> Value {
    json!({
        "id": k.key_id.get(),
        "type": KeyTypeArg::name_of(k.key_type.get()),
        "usage": UsageArg::names(k.usage.get()),
        "origin": origin_name(k.origin),
        "exportable": has(k, KeyFlags::EXPORTABLE),
        "persistent": has(k, KeyFlags::PERSISTENT),
        "restored": has(k, KeyFlags::RESTORED),
        "vmpls": vmpl_list(k.allowed_vmpls),
        "label": String::from_utf8_lossy(k.label()),
    })
}

pub(super) fn key_line(k: &KeyAttributes) -> String {
    format!(
        "key {:<4} {:<12} usage {:<22} origin {:<9} exportable {:<3} vmpls {:?} label {:?}{}{}",
        k.key_id.get(),
        KeyTypeArg::name_of(k.key_type.get()),
        UsageArg::names(k.usage.get()).join(","),
        origin_name(k.origin),
        if has(k, KeyFlags::EXPORTABLE) {
            "yes"
        } else {
            "no"
        },
        vmpl_list(k.allowed_vmpls),
        String::from_utf8_lossy(k.label()),
        if has(k, KeyFlags::PERSISTENT) {
            " persistent"
        } else {
            ""
        },
        if has(k, KeyFlags::RESTORED) {
            " restored"
        } else {
            ""
        },
    )
}

fn print_key(json: Json, k: &KeyAttributes, out: &mut dyn Write) -> Result<(), CliError> {
    if json.json {
        writeln!(out, "{}", key_json(k)).map_err(io)
    } else {
        writeln!(out, "{}", key_line(k)).map_err(io)
    }
}

pub(super) fn key(cmd: KeyCmd, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        KeyCmd::Generate(a) => key_generate(&a, out),
        KeyCmd::Import(a) => key_import(&a, out),
        KeyCmd::List(a) => key_list(&a, out),
        KeyCmd::Info(a) => key_info(&a, out),
        KeyCmd::Delete(a) => key_delete(&a, out),
        KeyCmd::Pubkey(a) => key_pubkey(&a, out),
    }
}

fn key_generate(a: &GenerateArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let t = template(&a.template, &["key", "generate"])?;
    let k = connect(&a.conn)?
        .generate(t, label(&a.template))
        .map_err(|e| refused(e, &about("generate a key", &[])))?;
    print_key(a.json, &k, out)
}

fn key_import(a: &ImportArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let t = template(&a.template, &["key", "import"])?;
    let key_type = a.template.key_type;
    let len = key_type.key_type().material_len();
    let material = zeroize::Zeroizing::new(input(&a.input, "key material", MAX_DATA_LEN)?);
    if material.len() != len {
        return Err(CliError::Input(format!(
            "the key material is {} bytes; an {} key is exactly {len} bytes",
            material.len(),
            key_type.name()
        )));
    }
    let k = connect(&a.conn)?
        .import(t, label(&a.template), &material)
        .map_err(|e| refused(e, &about("import a key", &[])))?;
    print_key(a.json, &k, out)
}

fn key_list(a: &ListArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let keys = connect(&a.conn)?
        .list()
        .map_err(|e| refused(e, &about("list keys", &[])))?;
    if a.json.json {
        return writeln!(out, "{}", Value::Array(keys.iter().map(key_json).collect())).map_err(io);
    }
    if keys.is_empty() {
        writeln!(out, "no keys").map_err(io)?;
    }
    for k in &keys {
        writeln!(out, "{}", key_line(k)).map_err(io)?;
    }
    Ok(())
}

fn key_info(a: &KeyIdArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let k = connect(&a.conn)?
        .attributes(a.id)
        .map_err(|e| refused(e, &about("show its attributes", &[("", a.id)])))?;
    print_key(a.json, &k, out)
}

fn key_delete(a: &KeyIdArgs, out: &mut dyn Write) -> Result<(), CliError> {
    connect(&a.conn)?
        .delete(a.id)
        .map_err(|e| refused(e, &about("be deleted", &[("", a.id)])))?;
    if a.json.json {
        writeln!(out, "{}", json!({ "deleted": a.id })).map_err(io)
    } else {
        writeln!(out, "key {} deleted", a.id).map_err(io)
    }
}

fn key_pubkey(a: &PubkeyArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let der = connect(&a.conn)?
        .public_key(a.id)
        .map_err(|e| refused(e, &about("give a public key", &[("", a.id)])))?;
    if a.pem {
        let pem = der::pem::encode_string("PUBLIC KEY", der::pem::LineEnding::LF, &der)
            .map_err(|e| CliError::Input(format!("PEM encoding: {e}")))?;
        output(&a.output, pem.as_bytes(), out)
    } else {
        output(&a.output, &der, out)
    }
}

pub(super) fn sign(a: &SignArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let data = input(&a.input, "a message to sign", MAX_DATA_LEN)?;
    let sig = connect(&a.conn)?
        .sign(a.id, &data)
        .map_err(|e| refused(e, &about("sign", &[("", a.id)])))?;
    if a.json {
        writeln!(out, "{}", json!({ "signature": hex::encode(&sig) })).map_err(io)
    } else {
        output(&a.output, &sig, out)
    }
}

pub(super) fn verify(a: &VerifyArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let sig = read(&a.signature, "signature")?;
    if sig.len() > MAX_SIGNATURE_LEN {
        return Err(CliError::Input(format!(
            "{}: {} bytes; a signature is at most {MAX_SIGNATURE_LEN} bytes",
            a.signature.display(),
            sig.len()
        )));
    }
    let data = input(&a.input, "a message to verify", MAX_DATA_LEN)?;
    let result = connect(&a.conn)?.verify(a.id, &data, &sig);
    let valid = match result {
        Ok(()) => true,
        Err(VhsmError::Status(Status::SignatureInvalid)) => false,
        Err(e) => return Err(refused(e, &about("verify", &[("", a.id)]))),
    };
    if a.json {
        writeln!(out, "{}", json!({ "valid": valid })).map_err(io)?;
    } else if valid {
        writeln!(out, "signature valid").map_err(io)?;
    }
    if valid {
        Ok(())
    } else {
        Err(CliError::SignatureInvalid)
    }
}

fn aad(a: &CryptArgs) -> &[u8] {
    a.aad.as_deref().unwrap_or_default().as_bytes()
}

pub(super) fn encrypt(a: &CryptArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let data = zeroize::Zeroizing::new(input(&a.input, "a plaintext", MAX_DATA_LEN)?);
    let ct = connect(&a.conn)?
        .encrypt(a.id, aad(a), &data)
        .map_err(|e| refused(e, &about("encrypt", &[("", a.id)])))?;
    output(&a.output, &ct, out)
}

pub(super) fn decrypt(a: &CryptArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let data = input(&a.input, "a ciphertext", MAX_CIPHERTEXT_LEN)?;
    if data.len() < GCM_NONCE_LEN + GCM_TAG_LEN {
        return Err(CliError::Input(format!(
            "the ciphertext is {} bytes; `nitride encrypt` output is at least {} bytes \
             (nonce and tag)",
            data.len(),
            GCM_NONCE_LEN + GCM_TAG_LEN
        )));
    }
    let pt = zeroize::Zeroizing::new(
        connect(&a.conn)?
            .decrypt(a.id, aad(a), &data)
            .map_err(|e| refused(e, &about("decrypt", &[("", a.id)])))?,
    );
    output(&a.output, &pt, out)
}

pub(super) fn wrap(a: &WrapArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let wrapped = connect(&a.conn)?
        .wrap(a.wrapping_id, a.key_id)
        .map_err(|e| {
            refused(
                e,
                &about(
                    "wrap",
                    &[("wrapping key", a.wrapping_id), ("key to wrap", a.key_id)],
                ),
            )
        })?;
    output(&a.output, &wrapped, out)
}

pub(super) fn unwrap(a: &UnwrapArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let t = template(&a.template, &["unwrap"])?;
    let wrapped = input(&a.input, "a wrapped key", MAX_WRAPPED_LEN)?;
    let k = connect(&a.conn)?
        .unwrap_key(a.wrapping_id, t, label(&a.template), &wrapped)
        .map_err(|e| refused(e, &about("unwrap", &[("", a.wrapping_id)])))?;
    print_key(a.json, &k, out)
}

pub(super) fn derive(a: &DeriveArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let t = template(&a.template, &["derive"])?;
    let salt = a.salt.as_deref().unwrap_or_default().as_bytes();
    let info = a.info.as_deref().unwrap_or_default().as_bytes();
    let k = connect(&a.conn)?
        .derive(a.parent_id, t, label(&a.template), salt, info)
        .map_err(|e| refused(e, &about("derive", &[("", a.parent_id)])))?;
    print_key(a.json, &k, out)
}

pub(super) fn random(a: &RandomArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let bytes = connect(&a.conn)?
        .random(a.n)
        .map_err(|e| refused(e, &about("give random bytes", &[])))?;
    if a.json {
        writeln!(out, "{}", json!({ "random": hex::encode(&bytes) })).map_err(io)
    } else if a.hex {
        writeln!(out, "{}", hex::encode(&bytes)).map_err(io)
    } else {
        output(&a.output, &bytes, out)
    }
}

fn op_name(raw: u16) -> String {
    Op::from_raw(raw).map_or_else(|| format!("op#{raw}"), |o| format!("{o:?}"))
}

fn status_name(raw: u16) -> String {
    Status::from_raw(raw).map_or_else(|| format!("status#{raw}"), |s| format!("{s:?}"))
}

pub(super) fn audit(a: &AuditArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let entries: Vec<AuditEntry> = connect(&a.conn)?
        .audit(a.from.unwrap_or(0))
        .map_err(|e| refused(e, &about("read the audit log", &[])))?;
    if a.json.json {
        let v: Vec<Value> = entries
            .iter()
            .map(|e| {
                json!({
                    "seq": e.seq.get(), "op": op_name(e.op.get()), "key": e.key_id.get(),
                    "vmpl": e.caller_vmpl, "status": status_name(e.status.get()),
                })
            })
            .collect();
        return writeln!(out, "{}", Value::Array(v)).map_err(io);
    }
    writeln!(
        out,
        "{:>6}  {:<14} {:>5}  {:>4}  status",
        "seq", "operation", "key", "vmpl"
    )
    .map_err(io)?;
    for e in &entries {
        writeln!(
            out,
            "{:>6}  {:<14} {:>5}  {:>4}  {}",
            e.seq.get(),
            op_name(e.op.get()),
            e.key_id.get(),
            e.caller_vmpl,
            status_name(e.status.get())
        )
        .map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn message(status: Status, action: &str, keys: &[(&str, u32)]) -> String {
        refused(VhsmError::Status(status), &about(action, keys)).to_string()
    }

    #[test]
    fn refusals_name_the_key() {
        assert_eq!(
            message(Status::KeyNotFound, "sign", &[("", 99)]),
            "vHSM: refused: key 99 does not exist or is not usable by this caller (KeyNotFound)"
        );
        let m = message(
            Status::KeyNotFound,
            "wrap",
            &[("wrapping key", 3), ("key to wrap", 1)],
        );
        assert!(
            m.contains("key 3 (wrapping key) or key 1 (key to wrap) does not exist"),
            "{m}"
        );
        let m = message(
            Status::NotExportable,
            "wrap",
            &[("wrapping key", 3), ("key to wrap", 1)],
        );
        assert!(m.contains("key 1 is not exportable"), "{m}");
        assert!(m.ends_with("(NotExportable)"), "{m}");
        let m = message(Status::UsageNotPermitted, "attest", &[("", 4)]);
        assert!(m.contains("key 4 is not attestable"), "{m}");
        let m = message(Status::CapacityExceeded, "generate a key", &[]);
        assert!(m.contains(&format!("at most {KEY_CAPACITY} keys")), "{m}");
        // Every status gets an explanation of its own.
        for s in Status::ALL {
            let e = refused(VhsmError::Status(*s), &about("sign", &[("", 7)]));
            let CliError::Refused(r) = &e else {
                panic!("{s:?}: {e}")
            };
            assert_eq!((r.status, r.keys.as_slice()), (*s, &[7][..]));
            assert!(!r.message.is_empty());
        }
    }
}
