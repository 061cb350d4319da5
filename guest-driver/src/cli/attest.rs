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

use serde_json::{json, Value};

use nitride_protocol::attest::{
    ManifestTable, Nonce, VhsmManifest, NONCE_SIZE, VHSM_SERVICE_GUID, VTPM_SERVICE_GUID,
};
use nitride_protocol::snp::{certs, guid, AttestationReport, CertKind, Guid};

use super::vhsm::{connect, key_id, socket, vhsm};
use super::{io, CliError, Command, Group, Parsed};
use crate::attest::Target;
use crate::relay::{AttestParams, RelayClient};

/// `nitride attest ...`.
pub const ATTEST: Group = Group {
    name: "attest",
    about: "fetch attestation evidence (SVSM attestation protocol, vHSM AttestKey)",
    commands: &[
        Command {
            name: "services",
            usage: "--nonce HEX [--service GUID|vhsm|vtpm] [--manifest-version N] [--no-certs] -o DIR [--json]",
            value_flags: &[
                "--socket",
                "--nonce",
                "--service",
                "--manifest-version",
                "-o",
                "--out",
            ],
            bool_flags: &["--no-certs", "--json"],
            positionals: (0, 0),
            run: attest_services,
        },
        Command {
            name: "key",
            usage: "ID --nonce HEX -o DIR [--json]",
            value_flags: &["--socket", "--nonce", "-o", "--out"],
            bool_flags: &["--json"],
            positionals: (1, 1),
            run: attest_key,
        },
    ],
};

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

fn nonce(p: &Parsed) -> Result<Nonce, CliError> {
    let n = p.value("--nonce").ok_or_else(|| {
        CliError::Usage(format!(
            "--nonce HEX is required: a fresh challenge of exactly {NONCE_SIZE} bytes \
             ({} hex digits, e.g. `openssl rand -hex {NONCE_SIZE}`)",
            2 * NONCE_SIZE
        ))
    })?;
    super::parse_nonce(n)
}

fn out_dir(p: &Parsed) -> Result<PathBuf, CliError> {
    let d = p
        .value("-o")
        .or_else(|| p.value("--out"))
        .ok_or_else(|| CliError::Usage("-o/--out DIR is required".into()))?;
    let dir = PathBuf::from(d);
    std::fs::create_dir_all(&dir).map_err(|e| CliError::Input(format!("{d}: {e}")))?;
    Ok(dir)
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
        Err(e) => json!({ "error": format!("{e:?}") }),
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
        Err(e) => json!({ "error": format!("{e:?}") }),
    }
}

fn print(p: &Parsed, v: &Value, out: &mut dyn Write) -> Result<(), CliError> {
    if p.flag("--json") {
        writeln!(out, "{v:#}").map_err(io)
    } else {
        super::write_text(v, out, 0)
    }
}

fn attest_services(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let nonce = nonce(p)?;
    let service = p
        .value("--service")
        .map(|s| {
            parse_guid(s).ok_or_else(|| {
                CliError::Usage(format!(
                    "--service {s}: expected a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx), vhsm or vtpm"
                ))
            })
        })
        .transpose()?;
    let manifest_version = p
        .value("--manifest-version")
        .map(|v| {
            v.parse::<u32>()
                .map_err(|e| CliError::Usage(format!("--manifest-version {v}: {e}")))
        })
        .transpose()?;
    let target = match (service, manifest_version) {
        (Some(guid), v) => Target::SingleService {
            guid,
            manifest_version: v.unwrap_or(0),
        },
        (None, Some(_)) => {
            return Err(CliError::Usage("--manifest-version needs --service".into()))
        }
        (None, None) => Target::Services,
    };
    let dir = out_dir(p)?;
    let path = socket(p);
    let mut relay = RelayClient::connect(&path).map_err(|e| {
        CliError::Svsm(format!(
            "cannot reach the firmware at {}: {e} (is it running? `cargo xtask up`)",
            path.display()
        ))
    })?;
    let mut params = AttestParams::new(target, &nonce);
    params.want_certificates = !p.flag("--no-certs");
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
        "retried_with_larger_buffers": ev.retried,
    });
    print(p, &v, out)
}

fn attest_key(p: &Parsed, out: &mut dyn Write) -> Result<(), CliError> {
    let id = key_id(p, 0)?;
    let nonce = nonce(p)?;
    let dir = out_dir(p)?;
    let ev = connect(p)?.attest_key(id, &nonce).map_err(vhsm)?;
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
        Err(e) => json!({ "error": format!("{e:?}") }),
    };
    let v = json!({
        "dir": dir.display().to_string(),
        "files": files,
        "key": id,
        "binding": binding,
        "report": report_summary(&ev.report),
    });
    print(p, &v, out)
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
