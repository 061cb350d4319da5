//! `nitride` commands for the vHSM: `key generate|import|list|info|delete|pubkey`,
//! `sign`, `verify`, `encrypt`, `decrypt`, `wrap`, `unwrap`, `derive`, `random`,
//! `audit`. Each talks to a running firmware through the relay guest's socket:
//! `--socket PATH`, else `$NITRIDE_SOCKET`, else `target/nitride-up/vhsm.sock`
//! (where `cargo xtask up` puts it). Data comes from `--in FILE` or stdin and goes to
//! `--out FILE` or stdout; `--json` prints machine-readable results.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use nitride_protocol::vhsm::{
    AuditEntry, KeyAttributes, KeyTemplate, KeyType, KeyUsage, Op, Origin, Status, VmplSet,
};

use super::{io, read, CliError, Command, Group, Parsed};
use crate::relay::RelayClient;
use crate::vhsm::{VhsmClient, VhsmError};

/// Default socket, relative to the working directory (the repository root).
pub const DEFAULT_SOCKET: &str = "target/nitride-up/vhsm.sock";

const KEY_FLAGS: &[&str] = &["--socket", "--type", "--usage", "--label", "--vmpls"];

macro_rules! cmd {
    ($name:expr, $usage:expr, $values:expr, $bools:expr, $pos:expr, $run:expr) => {
        Command {
            name: $name,
            usage: $usage,
            value_flags: $values,
            bool_flags: $bools,
            positionals: $pos,
            run: $run,
        }
    };
}

macro_rules! top {
    ($name:expr, $about:expr, $usage:expr, $values:expr, $bools:expr, $pos:expr, $run:expr) => {
        Group {
            name: $name,
            about: $about,
            commands: &[cmd!("", $usage, $values, $bools, $pos, $run)],
        }
    };
}

/// `nitride key ...`.
pub const KEY: Group = Group {
    name: "key",
    about: "manage keys in the vHSM",
    commands: &[
        cmd!(
            "generate",
            "--type aes-256|ecdsa-p384|ed25519|hmac-sha384 [--usage LIST] [--label L] [--vmpls LIST] [--exportable] [--json]",
            KEY_FLAGS,
            &["--exportable", "--json"],
            (0, 0),
            key_generate
        ),
        cmd!(
            "import",
            "--type T --in FILE [--usage LIST] [--label L] [--vmpls LIST] [--exportable] [--json]  (plaintext; only if the SVSM allows it)",
            &["--socket", "--type", "--usage", "--label", "--vmpls", "--in"],
            &["--exportable", "--json"],
            (0, 0),
            key_import
        ),
        cmd!("list", "[--json]", &["--socket"], &["--json"], (0, 0), key_list),
        cmd!("info", "ID [--json]", &["--socket"], &["--json"], (1, 1), key_info),
        cmd!("delete", "ID", &["--socket"], &["--json"], (1, 1), key_delete),
        cmd!("pubkey", "ID [--pem] [--out FILE]", &["--socket", "--out"], &["--pem"], (1, 1), key_pubkey),
    ],
};

/// `nitride sign`.
pub const SIGN: Group = top!(
    "sign",
    "sign data with a vHSM key",
    "ID [--in FILE] [--out FILE] [--json]",
    &["--socket", "--in", "--out"],
    &["--json"],
    (1, 1),
    sign
);
/// `nitride verify`.
pub const VERIFY: Group = top!(
    "verify",
    "verify a signature with a vHSM key",
    "ID --signature FILE [--in FILE] [--json]",
    &["--socket", "--in", "--signature"],
    &["--json"],
    (1, 1),
    verify
);
/// `nitride encrypt`.
pub const ENCRYPT: Group = top!(
    "encrypt",
    "AES-256-GCM encrypt (output: nonce || ciphertext || tag)",
    "ID [--aad TEXT] [--in FILE] [--out FILE]",
    &["--socket", "--in", "--out", "--aad"],
    &[],
    (1, 1),
    encrypt
);
/// `nitride decrypt`.
pub const DECRYPT: Group = top!(
    "decrypt",
    "AES-256-GCM decrypt",
    "ID [--aad TEXT] [--in FILE] [--out FILE]",
    &["--socket", "--in", "--out", "--aad"],
    &[],
    (1, 1),
    decrypt
);
/// `nitride wrap`.
pub const WRAP: Group = top!(
    "wrap",
    "export an exportable key wrapped (RFC 5649)",
    "WRAPPING_ID KEY_ID [--out FILE]",
    &["--socket", "--out"],
    &[],
    (2, 2),
    wrap
);
/// `nitride unwrap`.
pub const UNWRAP: Group = top!("unwrap", "import a key wrapped (RFC 5649) under a vHSM key", "WRAPPING_ID --type T [--usage LIST] [--label L] [--vmpls LIST] [--exportable] [--in FILE] [--json]", &["--socket", "--type", "--usage", "--label", "--vmpls", "--in"], &["--exportable", "--json"], (1, 1), unwrap);
/// `nitride derive`.
pub const DERIVE: Group = top!("derive", "derive a new key with HKDF-SHA-384", "PARENT_ID --type T [--usage LIST] [--label L] [--vmpls LIST] [--salt TEXT] [--info TEXT] [--exportable] [--json]", &["--socket", "--type", "--usage", "--label", "--vmpls", "--salt", "--info"], &["--exportable", "--json"], (1, 1), derive);
/// `nitride random`.
pub const RANDOM: Group = top!(
    "random",
    "random bytes from the vHSM's DRBG",
    "N [--hex] [--out FILE] [--json]",
    &["--socket", "--out"],
    &["--hex", "--json"],
    (1, 1),
    random
);
/// `nitride audit`.
pub const AUDIT: Group = top!(
    "audit",
    "read the vHSM's audit log",
    "[--from SEQ] [--json]",
    &["--socket", "--from"],
    &["--json"],
    (0, 0),
    audit
);

pub(super) fn socket(p: &Parsed) -> PathBuf {
    p.value("--socket")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("NITRIDE_SOCKET").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

pub(super) fn connect(p: &Parsed) -> Result<VhsmClient<RelayClient>, CliError> {
    let path = socket(p);
    RelayClient::connect(&path)
        .map(VhsmClient::new)
        .map_err(|e| {
            CliError::Vhsm(format!(
                "cannot reach the vHSM at {}: {e} (is it running? `cargo xtask up`)",
                path.display()
            ))
        })
}

pub(super) fn vhsm(e: VhsmError) -> CliError {
    CliError::Vhsm(e.to_string())
}

pub(super) fn key_id(p: &Parsed, i: usize) -> Result<u32, CliError> {
    let s = p.positional(i).unwrap_or_default();
    s.parse()
        .map_err(|_| CliError::Usage(format!("key id must be a number, got {s:?}")))
}

fn input(p: &Parsed) -> Result<Vec<u8>, CliError> {
    match p.value("--in") {
        Some(f) if f != "-" => read(Path::new(f), "input"),
        _ => {
            let mut v = Vec::new();
            std::io::stdin()
                .read_to_end(&mut v)
                .map_err(|e| CliError::Input(format!("stdin: {e}")))?;
            Ok(v)
        }
    }
}

fn output(p: &Parsed, bytes: &[u8], out: &mut dyn Write) -> Result<(), CliError> {
    match p.value("--out") {
        Some(f) if f != "-" => {
            std::fs::write(f, bytes).map_err(|e| CliError::Input(format!("{f}: {e}")))
        }
        _ => out.write_all(bytes).map_err(io),
    }
}

const TYPES: &[(&str, KeyType)] = &[
    ("aes-256", KeyType::Aes256),
    ("ecdsa-p384", KeyType::EcdsaP384),
    ("ed25519", KeyType::Ed25519),
    ("hmac-sha384", KeyType::HmacSha384),
];

const USAGES: &[(&str, KeyUsage)] = &[
    ("encrypt", KeyUsage::ENCRYPT),
    ("decrypt", KeyUsage::DECRYPT),
    ("sign", KeyUsage::SIGN),
    ("verify", KeyUsage::VERIFY),
    ("wrap", KeyUsage::WRAP),
    ("unwrap", KeyUsage::UNWRAP),
    ("derive", KeyUsage::DERIVE),
    ("attest", KeyUsage::ATTEST),
];

fn type_name(raw: u16) -> &'static str {
    TYPES
        .iter()
        .find(|(_, t)| t.raw() == raw)
        .map_or("unknown", |(n, _)| n)
}

fn usage_names(bits: u32) -> Vec<&'static str> {
    USAGES
        .iter()
        .filter(|(_, u)| bits & u.bits() != 0)
        .map(|(n, _)| *n)
        .collect()
}

fn origin_name(raw: u8) -> &'static str {
    match Origin::from_raw(raw) {
        Some(Origin::Generated) => "generated",
        Some(Origin::Imported) => "imported",
        Some(Origin::Unwrapped) => "unwrapped",
        Some(Origin::Derived) => "derived",
        None => "unknown",
    }
}

fn vmpl_list(bits: u8) -> Vec<u8> {
    (0..4).filter(|v| bits & (1 << v) != 0).collect()
}

/// The template from `--type`, `--usage` (default: what the type can do, less
/// wrap/unwrap/derive/attest: listing a key in the attestation manifest is opt-in), `--vmpls` (default: all) and `--exportable`.
fn template(p: &Parsed) -> Result<KeyTemplate, CliError> {
    let t = p
        .value("--type")
        .ok_or_else(|| CliError::Usage("--type is required".into()))?;
    let (_, key_type) = TYPES.iter().find(|(n, _)| *n == t).ok_or_else(|| {
        CliError::Usage(format!(
            "unknown key type {t}: one of aes-256, ecdsa-p384, ed25519, hmac-sha384"
        ))
    })?;
    let usage = match p.value("--usage") {
        None => {
            key_type.allowed_usage()
                - (KeyUsage::WRAP | KeyUsage::UNWRAP | KeyUsage::DERIVE | KeyUsage::ATTEST)
        }
        Some(list) => list.split(',').try_fold(KeyUsage::empty(), |acc, u| {
            USAGES
                .iter()
                .find(|(n, _)| *n == u.trim())
                .map(|(_, f)| acc | *f)
                .ok_or_else(|| CliError::Usage(format!("unknown usage {u}")))
        })?,
    };
    let vmpls = match p.value("--vmpls") {
        None => VmplSet::all(),
        Some(list) => {
            list.split(',')
                .try_fold(VmplSet::empty(), |acc, v| match v.trim().parse::<u8>() {
                    Ok(n) if n < 4 => Ok(acc | VmplSet::from_bits_truncate(1 << n)),
                    _ => Err(CliError::Usage(format!("bad VMPL {v}: 0 to 3"))),
                })?
        }
    };
    Ok(KeyTemplate::new(
        *key_type,
        usage,
        vmpls,
        p.flag("--exportable"),
    ))
}

fn label(p: &Parsed) -> &[u8] {
    p.value("--label").unwrap_or_default().as_bytes()
}

fn key_json(k: &KeyAttributes) -> Value {
    json!({
        "id": k.key_id.get(),
        "type": type_name(k.key_type.get()),
        "usage": usage_names(k.usage.get()),
        "origin": origin_name(k.origin),
        "exportable": k.exportable != 0,
        "vmpls": vmpl_list(k.allowed_vmpls),
        "label": String::from_utf8_lossy(k.label()),
    })
}

fn key_line(k: &KeyAttributes) -> String {
    format!(
        "key {:<4} {:<12} usage {:<22} origin {:<9} exportable {:<3} vmpls {:?} label {:?}",
        k.key_id.get(),
        type_name(k.key_type.get()),
        usage_names(k.usage.get()).join(","),
        origin_name(k.origin),
        if k.exportable != 0 { "yes" } else { "no" },
        vmpl_list(k.allowed_vmpls),
        String::from_utf8_lossy(k.label()),
    )
}

fn print_key(p: &Parsed, k: &KeyAttributes, out: &mut dyn Write) -> Result<(), CliError> {
    if p.flag("--json") {
        writeln!(out, "{}", key_json(k)).map_err(io)
    } else {
        writeln!(out, "{}", key_line(k)).map_err(io)
    }
}

fn key_generate(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let t = template(p)?;
    let k = connect(p)?.generate(t, label(p)).map_err(vhsm)?;
    print_key(p, &k, out)
}

fn key_import(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let t = template(p)?;
    let material = input(p)?;
    let k = connect(p)?.import(t, label(p), &material).map_err(vhsm)?;
    print_key(p, &k, out)
}

fn key_list(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let keys = connect(p)?.list().map_err(vhsm)?;
    if p.flag("--json") {
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

fn key_info(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let k = connect(p)?.attributes(key_id(p, 0)?).map_err(vhsm)?;
    print_key(p, &k, out)
}

fn key_delete(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let id = key_id(p, 0)?;
    connect(p)?.delete(id).map_err(vhsm)?;
    if p.flag("--json") {
        writeln!(out, "{}", json!({ "deleted": id })).map_err(io)
    } else {
        writeln!(out, "key {id} deleted").map_err(io)
    }
}

fn key_pubkey(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let der = connect(p)?.public_key(key_id(p, 0)?).map_err(vhsm)?;
    if p.flag("--pem") {
        let pem = der::pem::encode_string("PUBLIC KEY", der::pem::LineEnding::LF, &der)
            .map_err(|e| CliError::Input(format!("PEM encoding: {e}")))?;
        output(p, pem.as_bytes(), out)
    } else {
        output(p, &der, out)
    }
}

fn sign(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let data = input(p)?;
    let sig = connect(p)?.sign(key_id(p, 0)?, &data).map_err(vhsm)?;
    if p.flag("--json") {
        writeln!(out, "{}", json!({ "signature": hex::encode(&sig) })).map_err(io)
    } else {
        output(p, &sig, out)
    }
}

fn verify(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let sig_file = p
        .value("--signature")
        .ok_or_else(|| CliError::Usage("--signature FILE is required".into()))?;
    let sig = read(Path::new(sig_file), "signature")?;
    let data = input(p)?;
    let result = connect(p)?.verify(key_id(p, 0)?, &data, &sig);
    let valid = match result {
        Ok(()) => true,
        Err(VhsmError::Status(Status::SignatureInvalid)) => false,
        Err(e) => return Err(vhsm(e)),
    };
    if p.flag("--json") {
        writeln!(out, "{}", json!({ "valid": valid })).map_err(io)?;
    } else if valid {
        writeln!(out, "signature valid").map_err(io)?;
    }
    if valid {
        Ok(())
    } else {
        Err(CliError::Vhsm("signature invalid".into()))
    }
}

fn aad(p: &Parsed) -> &[u8] {
    p.value("--aad").unwrap_or_default().as_bytes()
}

fn encrypt(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let data = input(p)?;
    let ct = connect(p)?
        .encrypt(key_id(p, 0)?, aad(p), &data)
        .map_err(vhsm)?;
    output(p, &ct, out)
}

fn decrypt(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let data = input(p)?;
    let pt = connect(p)?
        .decrypt(key_id(p, 0)?, aad(p), &data)
        .map_err(vhsm)?;
    output(p, &pt, out)
}

fn wrap(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let wrapped = connect(p)?
        .wrap(key_id(p, 0)?, key_id(p, 1)?)
        .map_err(vhsm)?;
    output(p, &wrapped, out)
}

fn unwrap(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let t = template(p)?;
    let wrapped = input(p)?;
    let k = connect(p)?
        .unwrap_key(key_id(p, 0)?, t, label(p), &wrapped)
        .map_err(vhsm)?;
    print_key(p, &k, out)
}

fn derive(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let t = template(p)?;
    let salt = p.value("--salt").unwrap_or_default().as_bytes();
    let info = p.value("--info").unwrap_or_default().as_bytes();
    let k = connect(p)?
        .derive(key_id(p, 0)?, t, label(p), salt, info)
        .map_err(vhsm)?;
    print_key(p, &k, out)
}

fn random(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let n = p.positional(0).unwrap_or_default();
    let n: u32 = n
        .parse()
        .map_err(|_| CliError::Usage(format!("N must be a number, got {n:?}")))?;
    let bytes = connect(p)?.random(n).map_err(vhsm)?;
    if p.flag("--json") {
        writeln!(out, "{}", json!({ "random": hex::encode(&bytes) })).map_err(io)
    } else if p.flag("--hex") {
        writeln!(out, "{}", hex::encode(&bytes)).map_err(io)
    } else {
        output(p, &bytes, out)
    }
}

fn op_name(raw: u16) -> String {
    Op::from_raw(raw).map_or_else(|| format!("op#{raw}"), |o| format!("{o:?}"))
}

fn status_name(raw: u16) -> String {
    Status::from_raw(raw).map_or_else(|| format!("status#{raw}"), |s| format!("{s:?}"))
}

fn audit(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let from = p
        .value("--from")
        .map(str::parse::<u64>)
        .transpose()
        .map_err(|_| CliError::Usage("--from takes a number".into()))?;
    let entries: Vec<AuditEntry> = connect(p)?.audit(from.unwrap_or(0)).map_err(vhsm)?;
    if p.flag("--json") {
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
