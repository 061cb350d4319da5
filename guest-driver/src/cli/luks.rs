//! `nitride luks enroll|unlock`: LUKS2 volumes whose passphrase the vault releases
//! only after attestation (a key provisioned from a KBS) or only to the same SVSM
//! image on the same chip (a key sealed into the volume's header).
//!
//! The passphrase of a volume is the lowercase hex of the vault's
//! ReleaseVolumePassphrase (HKDF-SHA-384 of a vault key with RELEASE usage and the
//! volume's LUKS UUID; `docs/vhsm-protocol.md`, operation 40). It reaches
//! `cryptsetup` only on a pipe (`--key-file -`, or the new-key file `-`): never in
//! argv, the environment, a file or a message; every copy this process holds is
//! zeroized. What unlock needs is a LUKS2 token of type `nitride` in the header
//! ([`Token`]); `docs/luks.md` describes the whole flow and what it protects.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use clap::{Args, Subcommand, ValueHint};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zeroize::Zeroizing;

use nitride_protocol::sealed::{SealedHeader, MAX_SEALED_LEN};
use nitride_protocol::vhsm::{
    parse_luks_uuid, KeyTemplate, KeyType, KeyUsage, Status, VmplSet, LUKS_UUID_LEN,
};
use zerocopy::FromBytes;

use super::vhsm::{connect, refused, About, Conn, Json};
use super::{io, CliError};
use crate::kbs::resource_path;
use crate::vhsm::{VhsmClient, VhsmError, VhsmTransport};

/// The token type.
pub const TOKEN_TYPE: &str = "nitride";

/// The token format version this tool writes and reads.
pub const TOKEN_VERSION: u32 = 1;

/// The `cryptsetup` program (`$NITRIDE_CRYPTSETUP` overrides, for tests that wrap it).
fn cryptsetup() -> Command {
    let program = std::env::var_os("NITRIDE_CRYPTSETUP")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "cryptsetup".into());
    Command::new(program)
}

pub(super) const LUKS_EXAMPLES: &str = "\
The volume's passphrase is derived inside the vHSM from a vault key and the volume's LUKS UUID;
it reaches cryptsetup only on a pipe. A LUKS2 token of type \"nitride\" in the header holds what
unlock needs: the key sealed to this SVSM image and chip (--sealed), or the KBS and resource the
key is provisioned from after attestation (--kbs/--resource).

Examples:
  nitride luks enroll disk.img --sealed --key-file recovery.key
  nitride luks enroll /dev/vdb --kbs http://kbs:8080 --resource nitride/key/disk < old-passphrase
  nitride luks unlock disk.img data            # cryptsetup open disk.img data
  nitride luks unlock disk.img --test-passphrase
  nitride luks unlock /dev/vdb --print-passphrase | cryptsetup open /dev/vdb root --key-file -";

/// `nitride luks ...`.
#[derive(Debug, Subcommand)]
pub enum LuksCmd {
    /// Add a keyslot whose passphrase the vHSM releases, and the token unlock needs
    #[command(after_help = LUKS_EXAMPLES)]
    Enroll(EnrollArgs),
    /// Have the vHSM release the volume's passphrase and open the volume with it
    #[command(after_help = LUKS_EXAMPLES)]
    Unlock(UnlockArgs),
}

/// `nitride luks enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The LUKS2 device or image file
    #[arg(value_name = "DEVICE", value_hint = ValueHint::FilePath)]
    pub device: PathBuf,
    /// Seal the volume's vault key to this SVSM image, launch policy and chip (the
    /// sealed key goes into the token)
    #[arg(long, required_unless_present = "kbs", conflicts_with = "kbs")]
    pub sealed: bool,
    /// Provision the volume's vault key from this KBS after attestation, at enroll
    /// and at every unlock (the KBS URL and resource go into the token)
    #[arg(long, value_name = "URL", requires = "resource", value_hint = ValueHint::Url)]
    pub kbs: Option<String>,
    /// The KBS resource holding the owner-signed envelope of the vault key (an
    /// aes-256 or hmac-sha384 key with usage release): REPO/TYPE/TAG
    #[arg(long, value_name = "REPO/TYPE/TAG", value_parser = resource_path, requires = "kbs")]
    pub resource: Option<String>,
    /// An existing key file of the volume, authorizing the new keyslot [default: an
    /// existing passphrase, one line on stdin]
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub key_file: Option<PathBuf>,
    /// The VMPLs that may release the passphrase (sealed keys), comma-separated, 0
    /// to 3 [default: 0,1,2,3]
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = super::values::vmpl)]
    pub vmpls: Option<Vec<u8>>,
    /// Seconds each KBS request may take
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
    #[command(flatten)]
    json: Json,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride luks unlock`.
#[derive(Debug, Args)]
pub struct UnlockArgs {
    /// The LUKS2 device or image file
    #[arg(value_name = "DEVICE", value_hint = ValueHint::FilePath)]
    pub device: PathBuf,
    /// The device-mapper name to open it as (/dev/mapper/NAME)
    #[arg(
        value_name = "NAME",
        required_unless_present_any = ["print_passphrase", "test_passphrase"]
    )]
    pub name: Option<String>,
    /// Write the passphrase to stdout instead of opening (for a crypttab keyscript);
    /// nothing else is written there
    #[arg(long, conflicts_with = "test_passphrase")]
    pub print_passphrase: bool,
    /// Only check that the released passphrase opens the volume (cryptsetup open
    /// --test-passphrase): no device-mapper device is made
    #[arg(long)]
    pub test_passphrase: bool,
    /// Seconds each KBS request may take
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
    #[command(flatten)]
    conn: Conn,
}

/// Where a volume's vault key comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "source")]
pub enum Source {
    /// Sealed to the SVSM image, launch policy and chip: base64 of the SealKey blob,
    /// and the TCB it was sealed at (hex of the raw TCB_VERSION, informative).
    Sealed {
        /// The SealKey blob, base64.
        sealed_key: String,
        /// The TCB_VERSION it was sealed at, hex.
        tcb: String,
    },
    /// Provisioned from a KBS after attestation.
    Kbs {
        /// The KBS's base URL.
        kbs_url: String,
        /// REPO/TYPE/TAG.
        resource: String,
    },
}

/// The LUKS2 token `nitride luks enroll` writes:
///
/// ```json
/// {"type":"nitride","keyslots":["1"],"nitride_version":1,
///  "volume_uuid":"0b5e6a34-...","source":"sealed","sealed_key":"<base64>","tcb":"<hex>"}
/// {"type":"nitride","keyslots":["1"],"nitride_version":1,
///  "volume_uuid":"0b5e6a34-...","source":"kbs","kbs_url":"http://...","resource":"r/t/t"}
/// ```
///
/// Exactly one keyslot; no other field is accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// [`TOKEN_TYPE`].
    #[serde(rename = "type")]
    pub token_type: String,
    /// The keyslot the passphrase opens (one, as a decimal string).
    pub keyslots: Vec<String>,
    /// [`TOKEN_VERSION`].
    pub nitride_version: u32,
    /// The UUID of the volume the token was made for (the passphrase is bound to it).
    pub volume_uuid: String,
    /// Where the vault key comes from.
    #[serde(flatten)]
    pub source: Source,
}

impl Token {
    /// Parse and check a token's JSON: the type, version, one keyslot in 0..32, a
    /// canonical UUID, a sealed key that is base64 of a sealed-blob-sized value.
    pub fn parse(json: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(json).map_err(|e| format!("malformed: {e}"))?;
        let t: Token = serde_json::from_value(v.clone()).map_err(|e| format!("malformed: {e}"))?;
        // Nothing unreferenced: the token is exactly what its fields encode to.
        if serde_json::to_value(&t).ok() != Some(v) {
            return Err("fields other than a nitride token's".into());
        }
        if t.token_type != TOKEN_TYPE {
            return Err(format!("type {:?}, not {TOKEN_TYPE:?}", t.token_type));
        }
        if t.nitride_version != TOKEN_VERSION {
            return Err(format!(
                "version {} (this tool reads version {TOKEN_VERSION})",
                t.nitride_version
            ));
        }
        t.keyslot()?;
        if parse_luks_uuid(t.volume_uuid.as_bytes()).is_none() {
            return Err(format!(
                "volume_uuid {:?} is not a canonical lowercase UUID",
                t.volume_uuid
            ));
        }
        match &t.source {
            Source::Sealed { .. } => {
                t.sealed_key()?;
            }
            Source::Kbs { resource, .. } => {
                resource_path(resource).map_err(|e| format!("resource: {e}"))?;
            }
        }
        Ok(t)
    }

    /// The token's JSON, as `cryptsetup token import` takes it.
    pub fn to_json(&self) -> Result<String, String> {
        serde_json::to_string(self).map_err(|e| e.to_string())
    }

    /// The one keyslot, 0 to 31.
    pub fn keyslot(&self) -> Result<u32, String> {
        match self.keyslots.as_slice() {
            [one] => one
                .parse::<u32>()
                .ok()
                .filter(|n| *n < 32 && n.to_string() == *one)
                .ok_or_else(|| format!("keyslot {one:?} is not 0 to 31")),
            other => Err(format!(
                "{} keyslots listed; a nitride token names exactly one",
                other.len()
            )),
        }
    }

    /// The sealed key blob (sealed tokens).
    pub fn sealed_key(&self) -> Result<Vec<u8>, String> {
        let Source::Sealed { sealed_key, .. } = &self.source else {
            return Err("not a sealed token".into());
        };
        let blob = STANDARD
            .decode(sealed_key)
            .map_err(|e| format!("sealed_key is not base64: {e}"))?;
        if blob.len() > MAX_SEALED_LEN || STANDARD.encode(&blob) != *sealed_key {
            return Err("sealed_key is not the canonical base64 of a sealed blob".into());
        }
        Ok(blob)
    }
}

fn cs_err(device: &Path, what: &str, stderr: &[u8]) -> CliError {
    CliError::Input(format!(
        "{}: cryptsetup {what} failed: {}",
        device.display(),
        String::from_utf8_lossy(stderr).trim()
    ))
}

fn spawn_err(e: std::io::Error) -> CliError {
    CliError::Input(format!(
        "cannot run cryptsetup ({e}): install it (Debian: cryptsetup-bin)"
    ))
}

/// Run cryptsetup with `args` and no input; its stdout.
fn cs_output(device: &Path, what: &str, args: &[&std::ffi::OsStr]) -> Result<Vec<u8>, CliError> {
    let out = cryptsetup()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(spawn_err)?;
    if !out.status.success() {
        return Err(cs_err(device, what, &out.stderr));
    }
    Ok(out.stdout)
}

/// Run cryptsetup with `args`, `input` on its stdin (a pipe); the exit status's
/// success, and stderr.
fn cs_piped(args: &[&std::ffi::OsStr], input: &[u8]) -> Result<(bool, Vec<u8>), CliError> {
    let mut child = cryptsetup()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A child that exits early closes the pipe; its status tells why.
        let _ = stdin.write_all(input);
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    Ok((out.status.success(), out.stderr))
}

/// The volume's LUKS2 UUID (canonical lowercase) and its JSON metadata.
fn volume(device: &Path) -> Result<(String, Value), CliError> {
    let d = device.as_os_str();
    cs_output(
        device,
        "isLuks",
        &["isLuks".as_ref(), "--type".as_ref(), "luks2".as_ref(), d],
    )
    .map_err(|_| {
        CliError::Input(format!(
            "{}: not a LUKS2 volume (cryptsetup isLuks --type luks2)",
            device.display()
        ))
    })?;
    let uuid = cs_output(device, "luksUUID", &["luksUUID".as_ref(), d])?;
    let uuid = String::from_utf8_lossy(&uuid).trim().to_ascii_lowercase();
    if parse_luks_uuid(uuid.as_bytes()).is_none() {
        return Err(CliError::Input(format!(
            "{}: the LUKS UUID {uuid:?} is not in the canonical 8-4-4-4-12 form",
            device.display()
        )));
    }
    let meta = cs_output(
        device,
        "luksDump",
        &["luksDump".as_ref(), "--dump-json-metadata".as_ref(), d],
    )?;
    let meta: Value = serde_json::from_slice(&meta).map_err(|e| {
        CliError::Input(format!(
            "{}: unreadable LUKS2 metadata: {e}",
            device.display()
        ))
    })?;
    Ok((uuid, meta))
}

/// The nitride tokens of a volume: (token id, the token or why it is unusable).
fn nitride_tokens(meta: &Value) -> Vec<(String, Result<Token, String>)> {
    let mut out: Vec<_> = meta["tokens"]
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(_, t)| t["type"] == TOKEN_TYPE)
        .map(|(id, t)| (id.clone(), Token::parse(&t.to_string())))
        .collect();
    out.sort_by_key(|(id, _)| id.parse::<u32>().unwrap_or(u32::MAX));
    out
}

fn uuid_bytes(uuid: &str) -> Result<[u8; LUKS_UUID_LEN], CliError> {
    uuid.as_bytes()
        .try_into()
        .map_err(|_| CliError::Input(format!("the LUKS UUID {uuid:?} is not 36 characters")))
}

/// The passphrase as cryptsetup gets it: 64 lowercase hex digits.
fn release<T: VhsmTransport>(
    vhsm: &mut VhsmClient<T>,
    key: u32,
    uuid: &str,
) -> Result<Zeroizing<Vec<u8>>, CliError> {
    let raw = vhsm
        .release_volume_passphrase(key, &uuid_bytes(uuid)?)
        .map_err(|e| {
            refused(
                e,
                &About {
                    action: "release a volume passphrase",
                    keys: &[("volume key", key)],
                },
            )
        })?;
    let mut hex = Zeroizing::new(Vec::with_capacity(raw.len() * 2));
    for b in raw.iter() {
        for nibble in [b >> 4, b & 0xF] {
            hex.push(b"0123456789abcdef"[usize::from(nibble)]);
        }
    }
    Ok(hex)
}

/// Delete a key the command made for itself (failure only warns: the key is
/// non-persistent and dies with the SVSM).
fn forget<T: VhsmTransport>(vhsm: &mut VhsmClient<T>, key: u32) {
    if let Err(e) = vhsm.delete(key) {
        eprintln!("nitride: warning: could not delete the temporary vault key {key}: {e}");
    }
}

/// `nitride luks ...`.
pub(super) fn run(cmd: LuksCmd, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        LuksCmd::Enroll(a) => enroll(&a, out),
        LuksCmd::Unlock(a) => unlock(&a, out),
    }
}

/// The lowest keyslot number the metadata does not use.
fn free_keyslot(device: &Path, meta: &Value) -> Result<u32, CliError> {
    let used = meta["keyslots"].as_object();
    (0..32u32)
        .find(|n| used.is_none_or(|m| !m.contains_key(&n.to_string())))
        .ok_or_else(|| CliError::Input(format!("{}: all 32 keyslots are used", device.display())))
}

fn enroll(a: &EnrollArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let (uuid, meta) = volume(&a.device)?;
    let slot = free_keyslot(&a.device, &meta)?;
    // The existing secret first, so that nothing happens in the vault if it is missing.
    let existing = match &a.key_file {
        Some(_) => None,
        None => {
            let mut line = Zeroizing::new(String::new());
            std::io::stdin().lock().read_line(&mut line).map_err(io)?;
            let trimmed = line.trim_end_matches(['\n', '\r']);
            if trimmed.is_empty() {
                return Err(CliError::Input(
                    "enroll needs an existing passphrase of the volume (one line on stdin) or \
                     --key-file FILE"
                        .into(),
                ));
            }
            Some(Zeroizing::new(trimmed.as_bytes().to_vec()))
        }
    };
    let mut vhsm = connect(&a.conn)?;
    let (key, source) = if let (Some(url), Some(resource)) = (&a.kbs, &a.resource) {
        let k = super::provision::provision_key(
            &mut vhsm,
            url,
            resource,
            Duration::from_secs(a.timeout),
            3,
        )?;
        (
            k.key_id.get(),
            Source::Kbs {
                kbs_url: url.clone(),
                resource: resource.clone(),
            },
        )
    } else {
        let vmpls = match &a.vmpls {
            None => VmplSet::all(),
            Some(list) => list.iter().fold(VmplSet::empty(), |acc, v| {
                acc | VmplSet::from_bits_truncate(1 << v)
            }),
        };
        let label = format!("luks {}", &uuid[..8]);
        let k = vhsm
            .generate(
                KeyTemplate::new(KeyType::Aes256, KeyUsage::RELEASE, vmpls, false),
                label.as_bytes(),
            )
            .map_err(|e| {
                refused(
                    e,
                    &About {
                        action: "generate the volume key",
                        keys: &[],
                    },
                )
            })?;
        let id = k.key_id.get();
        let blob = vhsm.seal_key(id).map_err(|e| {
            forget(&mut vhsm, id);
            refused(
                e,
                &About {
                    action: "seal the volume key",
                    keys: &[("volume key", id)],
                },
            )
        })?;
        let tcb = SealedHeader::read_from_prefix(&blob)
            .map(|(h, _)| hex::encode(h.tcb))
            .unwrap_or_default();
        (
            id,
            Source::Sealed {
                sealed_key: STANDARD.encode(&blob),
                tcb,
            },
        )
    };
    let passphrase = release(&mut vhsm, key, &uuid);
    forget(&mut vhsm, key);
    let passphrase = passphrase?;

    // The new keyslot. The passphrase is 256 random bits: a slow KDF adds nothing,
    // so PBKDF2 at cryptsetup's minimum keeps unlock fast.
    let slot_text = slot.to_string();
    let d = a.device.as_os_str();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "luksAddKey".as_ref(),
        "--batch-mode".as_ref(),
        "--pbkdf".as_ref(),
        "pbkdf2".as_ref(),
        "--pbkdf-force-iterations".as_ref(),
        "1000".as_ref(),
        "--key-slot".as_ref(),
        slot_text.as_ref(),
    ];
    // Sized up front: a growing Vec would leave copies of the secrets behind.
    let mut input = Zeroizing::new(Vec::with_capacity(
        passphrase.len() + existing.as_ref().map_or(0, |e| e.len()) + 2,
    ));
    match (&a.key_file, &existing) {
        (Some(file), _) => {
            args.extend(["--key-file".as_ref(), file.as_os_str(), d, "-".as_ref()]);
            input.extend_from_slice(&passphrase);
        }
        (None, Some(old)) => {
            args.push(d);
            input.extend_from_slice(old);
            input.push(b'\n');
            input.extend_from_slice(&passphrase);
            input.push(b'\n');
        }
        (None, None) => unreachable!("read above"),
    }
    let (ok, stderr) = cs_piped(&args, &input)?;
    drop(input);
    if !ok {
        return Err(cs_err(&a.device, "luksAddKey", &stderr));
    }
    let token = Token {
        token_type: TOKEN_TYPE.into(),
        keyslots: vec![slot_text.clone()],
        nitride_version: TOKEN_VERSION,
        volume_uuid: uuid.clone(),
        source,
    };
    let token_json = serde_json::to_string(&token).map_err(|e| CliError::Input(e.to_string()))?;
    let (ok, stderr) = cs_piped(
        &[
            "token".as_ref(),
            "import".as_ref(),
            "--json-file".as_ref(),
            "-".as_ref(),
            d,
        ],
        token_json.as_bytes(),
    )?;
    if !ok {
        return Err(CliError::Input(format!(
            "{}: keyslot {slot} was added but cryptsetup token import failed: {} (remove the \
             keyslot with `cryptsetup luksKillSlot {} {slot}`)",
            a.device.display(),
            String::from_utf8_lossy(&stderr).trim(),
            a.device.display()
        )));
    }
    let kind = match &token.source {
        Source::Sealed { .. } => "sealed",
        Source::Kbs { .. } => "kbs",
    };
    if a.json.json {
        writeln!(
            out,
            "{}",
            json!({"device": a.device.display().to_string(), "volume_uuid": uuid,
                   "keyslot": slot, "source": kind})
        )
        .map_err(io)
    } else {
        writeln!(
            out,
            "enrolled {} (LUKS UUID {uuid}): keyslot {slot}, nitride token ({kind})",
            a.device.display()
        )
        .map_err(io)
    }
}

/// Explain why a sealed token's key does not come back.
fn unseal_refused(device: &Path, token_id: &str, e: VhsmError) -> CliError {
    match e {
        VhsmError::Status(Status::SealedBlobInvalid) => CliError::Input(format!(
            "{}: nitride token {token_id}: the sealed volume key does not open in this SVSM: it \
             was sealed by another SVSM or guest image, launch policy or chip, or the token was \
             changed",
            device.display()
        )),
        VhsmError::Status(Status::SealRuleDenied) => CliError::Input(format!(
            "{}: nitride token {token_id}: this caller's VMPL may not unseal the volume key",
            device.display()
        )),
        other => refused(
            other,
            &About {
                action: "unseal the volume key",
                keys: &[],
            },
        ),
    }
}

/// The passphrase one nitride token leads to, for the volume `uuid` (the device's
/// canonical LUKS UUID), from the vHSM behind `socket`: the token's UUID binding
/// checked, its vault key unsealed (sealed) or provisioned after attestation (KBS),
/// the passphrase released, the key deleted again. `token_id` names the token in
/// messages. (The cryptsetup token plugin calls this too.)
pub fn token_passphrase(
    token: &Token,
    token_id: &str,
    device: &Path,
    uuid: &str,
    socket: &Path,
    timeout: Duration,
) -> Result<Zeroizing<Vec<u8>>, CliError> {
    if token.volume_uuid != uuid {
        return Err(CliError::Input(format!(
            "nitride token {token_id} is bound to volume {} but {} is volume {uuid} (a header \
             copied from another volume?)",
            token.volume_uuid,
            device.display()
        )));
    }
    let mut v = connect(&Conn {
        socket: socket.to_path_buf(),
    })?;
    let key = match &token.source {
        Source::Sealed { .. } => {
            let blob = token.sealed_key().map_err(CliError::Input)?;
            v.unseal_key(&blob)
                .map_err(|e| unseal_refused(device, token_id, e))?
                .key_id
                .get()
        }
        Source::Kbs { kbs_url, resource } => {
            super::provision::provision_key(&mut v, kbs_url, resource, timeout, 3)
                .map_err(|e| {
                    CliError::Input(format!(
                        "nitride token {token_id}: provisioning {resource} from {kbs_url} \
                         failed: {e}"
                    ))
                })?
                .key_id
                .get()
        }
    };
    let p = release(&mut v, key, uuid);
    forget(&mut v, key);
    p
}

/// The passphrase of `device` from its first usable nitride token, and the keyslot.
fn released_passphrase(
    device: &Path,
    uuid: &str,
    meta: &Value,
    conn: &Conn,
    timeout: u64,
) -> Result<(Zeroizing<Vec<u8>>, u32), CliError> {
    let tokens = nitride_tokens(meta);
    if tokens.is_empty() {
        return Err(CliError::Input(format!(
            "{}: no nitride token in the LUKS2 header (enroll the volume with `nitride luks \
             enroll`)",
            device.display()
        )));
    }
    let mut reasons = Vec::new();
    for (id, token) in tokens {
        let token = match token {
            Ok(t) => t,
            Err(why) => {
                reasons.push(format!("nitride token {id} is invalid: {why}"));
                continue;
            }
        };
        let slot = token.keyslot().map_err(CliError::Input)?;
        match token_passphrase(
            &token,
            &id,
            device,
            uuid,
            &conn.socket,
            Duration::from_secs(timeout),
        ) {
            Ok(p) => return Ok((p, slot)),
            // The vHSM cannot be reached: no other token will do better.
            Err(e @ CliError::Vhsm(_)) => return Err(e),
            Err(e) => reasons.push(e.to_string()),
        }
    }
    Err(CliError::Input(format!(
        "{}: no nitride token released a passphrase: {}",
        device.display(),
        reasons.join("; ")
    )))
}

/// The lines `cryptsetup luksDump` shows for a nitride token (the plugin's `_dump`).
pub fn dump_lines(token: &Token) -> Vec<String> {
    let mut lines = vec![
        format!("\tnitride version: {}", token.nitride_version),
        format!("\tvolume UUID:     {}", token.volume_uuid),
    ];
    match &token.source {
        Source::Sealed { sealed_key, tcb } => {
            lines
                .push("\tsource:          sealed to the SVSM image, launch policy and chip".into());
            lines.push(format!("\tsealed at TCB:   {tcb}"));
            lines.push(format!(
                "\tsealed key:      {} bytes",
                STANDARD.decode(sealed_key).map_or(0, |b| b.len())
            ));
        }
        Source::Kbs { kbs_url, resource } => {
            lines.push("\tsource:          KBS (attestation-gated provisioning)".into());
            lines.push(format!("\tKBS:             {kbs_url}"));
            lines.push(format!("\tresource:        {resource}"));
        }
    }
    lines
}

fn unlock(a: &UnlockArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let (uuid, meta) = volume(&a.device)?;
    let (passphrase, slot) = released_passphrase(&a.device, &uuid, &meta, &a.conn, a.timeout)?;
    if a.print_passphrase {
        out.write_all(&passphrase).map_err(io)?;
        return out.flush().map_err(io);
    }
    let slot_text = slot.to_string();
    let d = a.device.as_os_str();
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "open".as_ref(),
        "--type".as_ref(),
        "luks2".as_ref(),
        "--key-file".as_ref(),
        "-".as_ref(),
        "--key-slot".as_ref(),
        slot_text.as_ref(),
    ];
    if a.test_passphrase {
        args.extend(["--test-passphrase".as_ref(), d]);
    } else {
        let name = a.name.as_deref().unwrap_or_default();
        args.extend([d, name.as_ref()]);
    }
    let (ok, stderr) = cs_piped(&args, &passphrase)?;
    drop(passphrase);
    if !ok {
        return Err(cs_err(&a.device, "open", &stderr));
    }
    match (&a.name, a.test_passphrase) {
        (_, true) => writeln!(
            out,
            "{}: the released passphrase opens keyslot {slot}",
            a.device.display()
        ),
        (Some(name), false) => writeln!(out, "opened {} as /dev/mapper/{name}", a.device.display()),
        (None, false) => Ok(()),
    }
    .map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEALED: &str = r#"{"type":"nitride","keyslots":["1"],"nitride_version":1,"volume_uuid":"0b5e6a34-4c1f-4f57-9a43-1c2b8d3e5f60","source":"sealed","sealed_key":"AAEC","tcb":"00"}"#;

    #[test]
    fn token_round_trips_and_refuses_what_it_would_not_write() {
        let t = Token::parse(SEALED).unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), SEALED);
        assert_eq!(t.keyslot(), Ok(1));
        let kbs = r#"{"type":"nitride","keyslots":["0"],"nitride_version":1,"volume_uuid":"0b5e6a34-4c1f-4f57-9a43-1c2b8d3e5f60","source":"kbs","kbs_url":"http://k","resource":"a/b/c"}"#;
        let t = Token::parse(kbs).unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), kbs);
        for (from, to) in [
            (r#""keyslots":["1"]"#, r#""keyslots":["1","2"]"#),
            (r#""keyslots":["1"]"#, r#""keyslots":["01"]"#),
            (r#""keyslots":["1"]"#, r#""keyslots":["32"]"#),
            (r#""nitride_version":1"#, r#""nitride_version":2"#),
            (r#""type":"nitride""#, r#""type":"other""#),
            (r#""tcb":"00""#, r#""tcb":"00","extra":1"#),
            (r#""sealed_key":"AAEC""#, r#""sealed_key":"AAE*""#),
            (r#""sealed_key":"AAEC""#, r#""sealed_key":"AAF=""#),
            ("0b5e6a34-", "0B5E6A34-"),
            (r#""source":"sealed""#, r#""source":"tpm""#),
        ] {
            let bad = SEALED.replace(from, to);
            assert_ne!(bad, SEALED);
            assert!(Token::parse(&bad).is_err(), "{bad}");
        }
    }
}
