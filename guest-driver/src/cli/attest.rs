//! `nitride attest services|key`: fetch attestation evidence from a running
//! firmware through the relay guest (`--socket`, as the vHSM commands) and write it
//! to a directory, ready for `nitride report verify -d DIR`.
//!
//! Files written to `-o DIR`: `report.bin` (the SNP report), `certs.bin` (the raw
//! certificate table, when there is one) and the certificates found in it
//! (`vcek.der` or `vlek.der`, `ask.der`, `ark.der`); `manifest.bin` (services) or
//! `key-binding.bin` (key).

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueHint};
use serde_json::{json, Value};

use nitride_protocol::attest::{
    ManifestTable, Nonce, VhsmManifest, VHSM_SERVICE_GUID, VTPM_SERVICE_GUID,
};
use nitride_protocol::snp::{certs, guid, AttestationReport, CertKind, Guid};

use super::values;
use super::vhsm::{connect, refused, About, Conn};
use super::{io, CliError};
use crate::attest::Target;
use crate::relay::{AttestParams, RelayClient};

/// `nitride attest ...`.
#[derive(Debug, Subcommand)]
pub enum AttestCmd {
    /// Evidence for the SVSM's services: an SNP report at VMPL 0 binding the services
    /// manifest (SVSM attestation protocol)
    #[command(
        long_about = "Fetch evidence for the SVSM's services: the SVSM asks the PSP for an SNP report \
                      at VMPL 0 whose REPORT_DATA is SHA-512(nonce || manifest), the manifest \
                      listing its services (the vHSM's entry: the vault identity and its \
                      attestable keys). Writes DIR/report.bin, manifest.bin and, unless \
                      --no-certs, certs.bin with vcek.der (and ask.der, ark.der) out of it; \
                      check them with `nitride report verify -d DIR --nonce HEX --manifest \
                      DIR/manifest.bin`.",
        after_help = SERVICES_EXAMPLES
    )]
    Services(ServicesArgs),
    /// Evidence for one vHSM key (AttestKey): an SNP report at VMPL 0 binding the key,
    /// its attributes and your nonce
    #[command(
        long_about = "Fetch evidence for one vHSM key (one created with the attest usage): an SNP \
                      report at VMPL 0 whose REPORT_DATA is SHA-512 of a key binding (nonce, \
                      public key, attributes). Writes DIR/report.bin, key-binding.bin, certs.bin \
                      and vcek.der; check them with `nitride report verify -d DIR --key-binding \
                      DIR/key-binding.bin --nonce HEX`.",
        after_help = KEY_EXAMPLES
    )]
    Key(KeyArgs),
}

pub(super) const ATTEST_EXAMPLES: &str = "\
Examples:
  nitride attest services --nonce $(openssl rand -hex 64) -o evidence
  nitride attest key 1 --nonce $(openssl rand -hex 64) -o key-evidence";

const SERVICES_EXAMPLES: &str = "\
Examples:
  nitride attest services --nonce $(openssl rand -hex 64) -o evidence
  nitride attest services --nonce $NONCE --service vhsm --manifest-version 1 -o ev --json";

const KEY_EXAMPLES: &str = "\
Examples:
  nitride attest key 1 --nonce $(openssl rand -hex 64) -o key-evidence";

/// `nitride attest services`.
#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// A fresh challenge, in hex: exactly 64 bytes (128 hex digits)
    #[arg(long, value_name = "HEX", value_parser = values::nonce)]
    nonce: Nonce,
    /// Attest one service only: a GUID, vhsm or vtpm [default: every service]
    #[arg(long, value_name = "GUID", value_parser = values::service)]
    service: Option<Guid>,
    /// The manifest version asked of a single service [default: 0, the latest]
    #[arg(long, value_name = "N", requires = "service")]
    manifest_version: Option<u32>,
    /// Do not ask for the certificate table (the VCEK chain)
    #[arg(long)]
    no_certs: bool,
    /// The directory to write the evidence to (created if needed)
    #[arg(short = 'o', long = "out", value_name = "DIR", value_hint = ValueHint::DirPath)]
    out: PathBuf,
    /// Print a JSON summary
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride attest key`.
#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The key's id (a key with the attest usage)
    #[arg(value_name = "ID", value_parser = values::key_id)]
    id: u32,
    /// A fresh challenge, in hex: exactly 64 bytes (128 hex digits)
    #[arg(long, value_name = "HEX", value_parser = values::nonce)]
    nonce: Nonce,
    /// The directory to write the evidence to (created if needed)
    #[arg(short = 'o', long = "out", value_name = "DIR", value_hint = ValueHint::DirPath)]
    out: PathBuf,
    /// Print a JSON summary
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    conn: Conn,
}

pub(super) fn run(cmd: AttestCmd, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        AttestCmd::Services(a) => attest_services(&a, out),
        AttestCmd::Key(a) => attest_key(&a, out),
    }
}

/// Parse a GUID `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` into its wire (mixed-endian)
/// bytes; `vhsm` and `vtpm` name the known services.
pub fn parse_guid(s: &str) -> Option<Guid> {
    match s {
        "vhsm" => return Some(VHSM_SERVICE_GUID),
        "vtpm" => return Some(VTPM_SERVICE_GUID),
        _ => {}
    }
    let parts: Vec<&str> = s.split('-').collect();
    let [a, b, c, d, e] = parts.as_slice() else {
        return None;
    };
    if [a.len(), b.len(), c.len(), d.len(), e.len()] != [8, 4, 4, 4, 12] {
        return None;
    }
    let d1 = u32::from_str_radix(a, 16).ok()?;
    let d2 = u16::from_str_radix(b, 16).ok()?;
    let d3 = u16::from_str_radix(c, 16).ok()?;
    let tail = hex::decode(format!("{d}{e}")).ok()?;
    let d4: [u8; 8] = tail.try_into().ok()?;
    Some(guid(d1, d2, d3, d4))
}

/// The textual form of a wire GUID.
pub fn guid_string(g: &Guid) -> String {
    let d1 = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
    let d2 = u16::from_le_bytes([g[4], g[5]]);
    let d3 = u16::from_le_bytes([g[6], g[7]]);
    format!(
        "{d1:08x}-{d2:04x}-{d3:04x}-{}-{}",
        hex::encode(&g[8..10]),
        hex::encode(&g[10..])
    )
}

fn out_dir(d: &Path) -> Result<PathBuf, CliError> {
    std::fs::create_dir_all(d).map_err(|e| CliError::Input(format!("{}: {e}", d.display())))?;
    Ok(d.to_path_buf())
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<String, CliError> {
    let path = dir.join(name);
    std::fs::write(&path, bytes)
        .map_err(|e| CliError::Input(format!("{}: {e}", path.display())))?;
    Ok(path.display().to_string())
}

/// Write `certs.bin` and the certificates in it; returns the names written.
fn write_certs(dir: &Path, table: &[u8]) -> Result<Vec<String>, CliError> {
    let mut written = Vec::new();
    if table.is_empty() {
        return Ok(written);
    }
    write_file(dir, "certs.bin", table)?;
    written.push("certs.bin".to_string());
    for entry in certs::entries(table) {
        let (kind, bytes) = entry.map_err(|e| CliError::Input(e.to_string()))?;
        let name = match kind {
            CertKind::Vcek => "vcek.der",
            CertKind::Vlek => "vlek.der",
            CertKind::Ask => "ask.der",
            CertKind::Ark => "ark.der",
            CertKind::Other(_) => continue,
        };
        write_file(dir, name, bytes)?;
        written.push(name.to_string());
    }
    Ok(written)
}

fn report_summary(report: &[u8]) -> Value {
    match AttestationReport::from_bytes(report) {
        Ok(r) => json!({
            "vmpl": r.vmpl.get(),
            "measurement": hex::encode(r.measurement),
            "report_data": hex::encode(r.report_data),
            "signing_key": r.signer_info().signing_key().name(),
        }),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

fn vhsm_manifest_json(bytes: &[u8]) -> Value {
    match VhsmManifest::parse(bytes) {
        Ok(m) => json!({
            "identity_key": hex::encode(m.identity),
            "keys": m.keys().map(|k| json!({
                "id": k.attributes.key_id.get(),
                "label": String::from_utf8_lossy(k.attributes.label()),
                "spki": hex::encode(k.spki),
            })).collect::<Vec<_>>(),
        }),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

/// What a services manifest lists (a table for ATTEST_SERVICES, one service's
/// manifest for a single service).
fn manifest_json(bytes: &[u8], single: Option<Guid>) -> Value {
    if let Some(g) = single {
        let mut v = json!({ "service": guid_string(&g), "len": bytes.len() });
        if g == VHSM_SERVICE_GUID {
            v["vhsm"] = vhsm_manifest_json(bytes);
        }
        return v;
    }
    match ManifestTable::parse(bytes) {
        Ok(t) => {
            let services: Vec<Value> = t
                .entries()
                .map(|(g, data)| {
                    let mut v = json!({ "service": guid_string(&g), "len": data.len() });
                    if g == VHSM_SERVICE_GUID {
                        v["vhsm"] = vhsm_manifest_json(data);
                    }
                    v
                })
                .collect();
            json!({ "services": services })
        }
        Err(e) => json!({ "error": e.to_string() }),
    }
}

/// What the summaries say about themselves: they show the evidence as received.
const UNVERIFIED: &str =
    "no: as received; `nitride report verify` checks it and shows the evidence it checked";

fn print(json: bool, v: &Value, out: &mut dyn Write) -> Result<(), CliError> {
    if json {
        writeln!(out, "{v:#}").map_err(io)
    } else {
        super::write_text(v, out, 0)
    }
}

fn attest_services(p: &ServicesArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let nonce = &p.nonce;
    let service = p.service;
    let target = match service {
        Some(guid) => Target::SingleService {
            guid,
            manifest_version: p.manifest_version.unwrap_or(0),
        },
        None => Target::Services,
    };
    let dir = out_dir(&p.out)?;
    let path = &p.conn.socket;
    let mut relay = RelayClient::connect(path).map_err(|e| {
        CliError::Svsm(format!(
            "cannot reach the firmware at {}: {e} (is it running? `cargo xtask up`)",
            path.display()
        ))
    })?;
    let mut params = AttestParams::new(target, nonce);
    params.want_certificates = !p.no_certs;
    let ev = relay
        .attest(&params)
        .map_err(|e| CliError::Svsm(format!("attestation: {e}")))?;
    write_file(&dir, "report.bin", &ev.report)?;
    write_file(&dir, "manifest.bin", &ev.manifest)?;
    let mut files = vec!["report.bin".to_string(), "manifest.bin".to_string()];
    files.extend(write_certs(&dir, &ev.certificates)?);
    let v = json!({
        "dir": dir.display().to_string(),
        "files": files,
        "nonce": hex::encode(nonce),
        "report": report_summary(&ev.report),
        "manifest": manifest_json(&ev.manifest, service),
        "verified": UNVERIFIED,
        "retried_with_larger_buffers": ev.retried,
    });
    print(p.json, &v, out)
}

fn attest_key(p: &KeyArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let id = p.id;
    let dir = out_dir(&p.out)?;
    let ev = connect(&p.conn)?.attest_key(id, &p.nonce).map_err(|e| {
        refused(
            e,
            &About {
                action: "attest",
                keys: &[("", id)],
            },
        )
    })?;
    write_file(&dir, "report.bin", &ev.report)?;
    write_file(&dir, "key-binding.bin", &ev.binding)?;
    let mut files = vec!["report.bin".to_string(), "key-binding.bin".to_string()];
    files.extend(write_certs(&dir, &ev.certificates)?);
    let binding = match nitride_protocol::attest::KeyBinding::parse(&ev.binding) {
        Ok(b) => json!({
            "key": b.attributes.key_id.get(),
            "label": String::from_utf8_lossy(b.attributes.label()),
            "nonce": hex::encode(b.nonce),
            "spki": hex::encode(b.spki),
        }),
        Err(e) => json!({ "error": e.to_string() }),
    };
    let v = json!({
        "dir": dir.display().to_string(),
        "files": files,
        "key": id,
        "binding": binding,
        "verified": UNVERIFIED,
        "report": report_summary(&ev.report),
    });
    print(p.json, &v, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_round_trip() {
        let g = parse_guid("2c3b3fbe-408b-431e-b92e-91d3619d1658").unwrap();
        assert_eq!(g, VHSM_SERVICE_GUID);
        assert_eq!(guid_string(&g), "2c3b3fbe-408b-431e-b92e-91d3619d1658");
        assert_eq!(parse_guid("vtpm"), Some(VTPM_SERVICE_GUID));
        assert_eq!(
            guid_string(&nitride_protocol::attest::MANIFEST_TABLE_GUID),
            "63849ebb-3d92-4670-a1ff-58f9c94b87bb"
        );
        assert_eq!(parse_guid("2c3b3fbe-408b-431e-b92e-91d3619d165"), None);
        assert_eq!(parse_guid("2c3b3fbe408b431eb92e91d3619d1658"), None);
        assert_eq!(parse_guid("zc3b3fbe-408b-431e-b92e-91d3619d1658"), None);
    }

    #[test]
    fn certificate_table_is_split_into_files() {
        use nitride_protocol::snp::certs::{CertTableEntry, GUID_ARK, GUID_VCEK};
        use zerocopy::IntoBytes;
        let mut table = vec![0u8; 3 * 24];
        for (i, (g, blob)) in [(GUID_VCEK, &b"vcek"[..]), (GUID_ARK, &b"ark!"[..])]
            .iter()
            .enumerate()
        {
            let e = CertTableEntry {
                guid: *g,
                offset: (table.len() as u32).into(),
                length: (blob.len() as u32).into(),
            };
            table[i * 24..(i + 1) * 24].copy_from_slice(e.as_bytes());
            table.extend_from_slice(blob);
        }
        let dir = tempfile::tempdir().unwrap();
        let names = write_certs(dir.path(), &table).unwrap();
        assert_eq!(names, ["certs.bin", "vcek.der", "ark.der"]);
        assert_eq!(std::fs::read(dir.path().join("vcek.der")).unwrap(), b"vcek");
        assert_eq!(std::fs::read(dir.path().join("certs.bin")).unwrap(), table);
        assert!(write_certs(dir.path(), &[]).unwrap().is_empty());
        assert!(write_certs(dir.path(), &table[..30]).is_err());
    }
}
