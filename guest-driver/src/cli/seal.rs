//! `nitride seal`, `nitride unseal`, `nitride state export|import`, and the state
//! file every vHSM command keeps current.
//!
//! Sealed blobs are opaque: only the same SVSM image (and guest image) on the same
//! chip opens them (`docs/sealing.md`). The vault's persistent keys live in one state
//! blob; `cargo xtask up --state FILE` imports FILE when the firmware starts and
//! names it in `target/nitride-up/state-file`. From then on, every command whose
//! response says the persistent state changed (a persistent key created or deleted,
//! a persistent AES key's nonce counter moved) exports the state and replaces that
//! file ([`StateSaving`]); `$NITRIDE_STATE` names another file.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueHint};
use serde_json::json;

use nitride_protocol::sealed::{MAX_SEALED_LEN, MAX_SEAL_DATA_LEN};
use nitride_protocol::vhsm::{Request, Response, VmplSet, MAX_REQUEST_SIZE};

use super::vhsm::{connect, refused, Conn, Input, Json, Output};
use super::{io, read, CliError};
use crate::vhsm::{VhsmError, VhsmTransport};

/// The file in the `up` directory (next to the socket) naming the state file.
pub const STATE_FILE_MARKER: &str = "state-file";

/// The state file commands keep current: `$NITRIDE_STATE`, else the file named in
/// `state-file` next to `socket` (written by `cargo xtask up --state FILE`).
pub fn state_file(socket: &Path) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NITRIDE_STATE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let marker = socket.parent()?.join(STATE_FILE_MARKER);
    let named = std::fs::read_to_string(marker).ok()?;
    let named = named.trim();
    (!named.is_empty()).then(|| PathBuf::from(named))
}

/// Replace `path` with `blob` (written to a temporary file next to it, then renamed,
/// so the file is never half-written), readable by its owner only.
pub fn write_state(path: &Path, blob: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(blob)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A transport that, after any response saying the vault's persistent state
/// changed, asks for the state (ExportState) and replaces the state file with it.
/// A failure to save is reported on stderr; the operation's own result stands.
#[derive(Debug)]
pub struct StateSaving<T> {
    inner: T,
    path: Option<PathBuf>,
    next_id: u64,
}

impl<T> StateSaving<T> {
    /// Save to `path` (nothing is saved when `None`).
    pub fn new(inner: T, path: Option<PathBuf>) -> Self {
        Self {
            inner,
            path,
            next_id: 1 << 63,
        }
    }
}

impl<T: VhsmTransport> StateSaving<T> {
    fn save(&mut self, path: &Path) -> Result<u64, String> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let mut buf = vec![0u8; MAX_REQUEST_SIZE];
        let len = Request::ExportState
            .encode(id, &mut buf)
            .map_err(|e| format!("{e:?}"))?;
        let raw = self
            .inner
            .exchange(&buf[..len])
            .map_err(|e| e.to_string())?;
        let resp = Response::decode(&raw).map_err(|e| format!("{e:?}"))?;
        if resp.header.request_id.get() != id {
            return Err("the answer is for another request".into());
        }
        if resp.status() != Some(nitride_protocol::vhsm::Status::Ok) {
            return Err(format!("the vHSM refused: {:?}", resp.status()));
        }
        let (generation, blob) = resp.exported_state().map_err(|e| format!("{e:?}"))?;
        write_state(path, blob).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(generation)
    }
}

impl<T: VhsmTransport> VhsmTransport for StateSaving<T> {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, VhsmError> {
        let raw = self.inner.exchange(request)?;
        let changed = Response::decode(&raw).is_ok_and(|r| r.state_changed());
        if let (true, Some(path)) = (changed, self.path.clone()) {
            if let Err(e) = self.save(&path) {
                eprintln!(
                    "nitride: warning: the vault's state changed but was not saved to {}: {e}",
                    path.display()
                );
            }
        }
        Ok(raw)
    }
}

pub(super) const SEAL_EXAMPLES: &str = "\
Examples:
  nitride seal --in disk.key --out disk.key.sealed
  nitride seal --vmpls 1 --in secret.txt --out secret.sealed   # only VMPL1 may unseal
  nitride unseal --in disk.key.sealed --out disk.key";

pub(super) const UNSEAL_EXAMPLES: &str = "\
Examples:
  nitride unseal --in disk.key.sealed --out disk.key
  nitride unseal --in secret.sealed | sha256sum";

pub(super) const STATE_EXAMPLES: &str = "\
Examples:
  nitride state export --out vault.sealed
  nitride state import --in vault.sealed          # right after the firmware started
  cargo xtask up --state vault.sealed             # does both for you";

/// `nitride seal`.
#[derive(Debug, Args)]
pub struct SealArgs {
    /// The VMPLs that may unseal, comma-separated, 0 to 3; must include this caller's
    /// [default: 0,1,2,3]
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = super::values::vmpl)]
    vmpls: Option<Vec<u8>>,
    #[command(flatten)]
    input: Input,
    #[command(flatten)]
    output: Output,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride unseal`.
#[derive(Debug, Args)]
pub struct UnsealArgs {
    /// Read the blob from FILE ("-": stdin); when it was sealed at an older TCB,
    /// FILE is replaced with the blob sealed again at the current one [default: stdin]
    #[arg(long = "in", value_name = "FILE", value_hint = ValueHint::FilePath)]
    input: Option<PathBuf>,
    #[command(flatten)]
    output: Output,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride state ...`.
#[derive(Debug, Subcommand)]
pub enum StateCmd {
    /// Write the vault's persistent state (every persistent key) as one sealed blob
    #[command(after_help = STATE_EXAMPLES)]
    Export(StateExportArgs),
    /// Restore a state blob into the vault (only while it holds no key)
    #[command(after_help = STATE_EXAMPLES)]
    Import(StateImportArgs),
}

/// `nitride state export`.
#[derive(Debug, Args)]
pub struct StateExportArgs {
    #[command(flatten)]
    output: Output,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride state import`.
#[derive(Debug, Args)]
pub struct StateImportArgs {
    /// The state blob; replaced with the blob sealed again at the current TCB when it
    /// was sealed at an older one
    #[arg(long = "in", value_name = "FILE", value_hint = ValueHint::FilePath)]
    input: PathBuf,
    #[command(flatten)]
    json: Json,
    #[command(flatten)]
    conn: Conn,
}

fn blob_from(input: Option<&Path>, what: &str) -> Result<Vec<u8>, CliError> {
    let i = Input {
        input: input.map(Path::to_path_buf),
    };
    super::vhsm::input(&i, what, MAX_SEALED_LEN)
}

pub(super) fn seal(a: &SealArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let data = zeroize::Zeroizing::new(super::vhsm::input(
        &a.input,
        "the data to seal",
        MAX_SEAL_DATA_LEN,
    )?);
    let rule = match &a.vmpls {
        None => VmplSet::all(),
        Some(list) => list.iter().fold(VmplSet::empty(), |acc, v| {
            acc | VmplSet::from_bits_truncate(1 << v)
        }),
    };
    let blob = connect(&a.conn)?.seal(rule, &data).map_err(|e| {
        refused(
            e,
            &super::vhsm::About {
                action: "seal",
                keys: &[],
            },
        )
    })?;
    super::vhsm::output(&a.output, &blob, out)
}

pub(super) fn unseal(a: &UnsealArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let blob = blob_from(a.input.as_deref(), "a sealed blob")?;
    let u = connect(&a.conn)?.unseal(&blob).map_err(|e| {
        refused(
            e,
            &super::vhsm::About {
                action: "unseal",
                keys: &[],
            },
        )
    })?;
    let data = zeroize::Zeroizing::new(u.data.clone());
    if let Some(resealed) = &u.resealed {
        match a.input.as_deref().filter(|p| *p != Path::new("-")) {
            Some(file) => {
                write_state(file, resealed).map_err(|e| {
                    CliError::Input(format!(
                        "{}: {e} (writing the resealed blob)",
                        file.display()
                    ))
                })?;
                eprintln!(
                    "nitride: the blob was sealed at an older TCB; {} now holds it sealed at the current one",
                    file.display()
                );
            }
            None => eprintln!(
                "nitride: warning: the blob was sealed at an older TCB; pass it with --in FILE \
                 to have FILE replaced with one sealed at the current TCB"
            ),
        }
    }
    super::vhsm::output(&a.output, &data, out)
}

pub(super) fn state(cmd: StateCmd, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        StateCmd::Export(a) => {
            let (generation, blob) = connect(&a.conn)?.export_state().map_err(|e| {
                refused(
                    e,
                    &super::vhsm::About {
                        action: "export the state",
                        keys: &[],
                    },
                )
            })?;
            match a.output.output.as_deref().filter(|p| *p != Path::new("-")) {
                Some(file) => {
                    write_state(file, &blob)
                        .map_err(|e| CliError::Input(format!("{}: {e}", file.display())))?;
                    eprintln!(
                        "nitride: state generation {generation} ({} bytes) written to {}",
                        blob.len(),
                        file.display()
                    );
                    Ok(())
                }
                None => out.write_all(&blob).map_err(io),
            }
        }
        StateCmd::Import(a) => {
            let blob = read(&a.input, "state blob")?;
            let i = connect(&a.conn)?.import_state(&blob).map_err(|e| {
                refused(
                    e,
                    &super::vhsm::About {
                        action: "import the state",
                        keys: &[],
                    },
                )
            })?;
            if let Some(resealed) = &i.resealed {
                write_state(&a.input, resealed)
                    .map_err(|e| CliError::Input(format!("{}: {e}", a.input.display())))?;
            }
            if a.json.json {
                writeln!(
                    out,
                    "{}",
                    json!({
                        "generation": i.generation,
                        "keys": i.keys,
                        "resealed": i.resealed.is_some(),
                    })
                )
                .map_err(io)
            } else {
                writeln!(
                    out,
                    "restored {} key(s), state generation {}{}",
                    i.keys,
                    i.generation,
                    if i.resealed.is_some() {
                        format!(
                            "; sealed at an older TCB: {} now holds it sealed at the current one",
                            a.input.display()
                        )
                    } else {
                        String::new()
                    }
                )
                .map_err(io)
            }
        }
    }
}
