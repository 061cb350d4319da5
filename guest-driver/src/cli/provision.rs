//! `nitride provision` (a secret from a Key Broker Service into the vault, the
//! guest only relaying) and `nitride owner keygen|envelope|launch-config` (the
//! owner's side: the key the vault obeys, the signed envelope uploaded to the KBS,
//! the measured launch configuration naming that key).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use clap::{Args, Subcommand, ValueHint};
use p384::ecdsa::signature::Signer as _;
use p384::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use serde_json::json;

use nitride_protocol::launch_config::{LaunchConfig, LaunchPolicy};
use nitride_protocol::provision::{Envelope, JWS_HEADER};

use super::vhsm::{
    connect, key_json, key_line, label, refused, template, Conn, Json, TemplateArgs,
};
use super::{io, read, CliError};
use crate::kbs::{resource_path, snp_evidence, KbsClient};

pub(super) const PROVISION_EXAMPLES: &str = "\
The vault proves itself to the KBS with a VMPL0 SNP report whose REPORT_DATA binds the KBS's
nonce and a fresh session key; the KBS releases the resource encrypted to that key; the vault
decrypts it inside and checks the owner's signature against the measured launch configuration.
This tool only relays: it never sees the secret.

Examples:
  nitride provision --kbs http://127.0.0.1:8080 --resource nitride/key/disk
  nitride provision --kbs http://127.0.0.1:8080 --resource nitride/key/disk --json";

/// `nitride provision`.
#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// The KBS's base URL (http:// or https://)
    #[arg(long, value_name = "URL", value_hint = ValueHint::Url)]
    pub kbs: String,
    /// The resource to provision: REPO/TYPE/TAG
    #[arg(long, value_name = "REPO/TYPE/TAG", value_parser = resource_path)]
    pub resource: String,
    /// Seconds each KBS request may take
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
    /// Retries of a KBS request answered 5xx or not answered
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub retries: u32,
    #[command(flatten)]
    json: Json,
    #[command(flatten)]
    conn: Conn,
}

/// `nitride provision`: auth, Begin, attest, resource, Finish.
pub(super) fn provision(a: &ProvisionArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let mut vhsm = connect(&a.conn)?;
    let key = provision_key(
        &mut vhsm,
        &a.kbs,
        &a.resource,
        Duration::from_secs(a.timeout),
        a.retries,
    )?;
    if a.json.json {
        let mut v = key_json(&key);
        v["resource"] = a.resource.clone().into();
        v["kbs"] = a.kbs.clone().into();
        writeln!(out, "{v}").map_err(io)
    } else {
        writeln!(out, "provisioned {} from {}", a.resource, a.kbs).map_err(io)?;
        writeln!(out, "{}", key_line(&key)).map_err(io)
    }
}

/// One provisioning exchange (auth, Begin, attest, resource, Finish) of `resource`
/// from the KBS at `url` into the vault behind `vhsm`; the new key's attributes.
pub(super) fn provision_key<T: crate::vhsm::VhsmTransport>(
    vhsm: &mut crate::vhsm::VhsmClient<T>,
    url: &str,
    resource: &str,
    timeout: Duration,
    retries: u32,
) -> Result<nitride_protocol::vhsm::KeyAttributes, CliError> {
    let kbs_err = |e: crate::kbs::KbsError| CliError::Kbs(e.to_string());
    let mut kbs = KbsClient::new(url, timeout, retries).map_err(kbs_err)?;
    let nonce = kbs.auth().map_err(kbs_err)?;
    let session = vhsm.provision_begin(nonce.as_bytes()).map_err(|e| {
        refused(
            e,
            &super::vhsm::About {
                action: "begin provisioning",
                keys: &[],
            },
        )
    })?;
    let evidence = snp_evidence(&session.report, &session.certificates).map_err(kbs_err)?;
    kbs.attest(&nonce, &session.jwk, evidence)
        .map_err(kbs_err)?;
    let jwe = kbs.resource(resource).map_err(kbs_err)?;
    vhsm.provision_finish(&jwe).map_err(|e| {
        refused(
            e,
            &super::vhsm::About {
                action: "finish provisioning",
                keys: &[],
            },
        )
    })
}

pub(super) const OWNER_EXAMPLES: &str = "\
Examples:
  nitride owner keygen --out owner.pem
  nitride owner launch-config --owner owner.pem --out launch-config.bin
  echo -n 0123456789abcdef0123456789abcdef > disk.key
  nitride owner envelope --key owner.pem --type aes-256 --usage encrypt,decrypt --vmpls 1 \\
      --label disk --in disk.key --out envelope.jws";

/// `nitride owner ...`.
#[derive(Debug, Subcommand)]
pub enum OwnerCmd {
    /// Generate an owner key (P-384): the private key's PEM, and its public key beside it
    #[command(after_help = OWNER_EXAMPLES)]
    Keygen(KeygenArgs),
    /// Sign a secret and its attributes for the vault (what gets uploaded to the KBS)
    #[command(after_help = OWNER_EXAMPLES)]
    Envelope(EnvelopeArgs),
    /// Write a measured launch configuration: the vault policy and the owner key
    #[command(after_help = OWNER_EXAMPLES)]
    LaunchConfig(LaunchConfigArgs),
}

/// `nitride owner keygen`.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM); the public key goes to FILE.pub
    #[arg(short = 'o', long = "out", value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub out: PathBuf,
}

/// `nitride owner envelope`.
#[derive(Debug, Args)]
pub struct EnvelopeArgs {
    /// The owner's private key (PEM, from `nitride owner keygen`)
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath, required_unless_present = "unsigned")]
    pub key: Option<PathBuf>,
    /// Write a bare envelope nobody signed (accepted only by a vault whose launch
    /// configuration has no owner key and allows unauthenticated secrets)
    #[arg(long, conflicts_with = "key")]
    pub unsigned: bool,
    #[command(flatten)]
    pub template: TemplateArgs,
    /// The secret key material (raw bytes of the type's length)
    #[arg(long = "in", value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub input: PathBuf,
    /// Where to write the envelope
    #[arg(short = 'o', long = "out", value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub out: PathBuf,
}

/// `nitride owner launch-config`.
#[derive(Debug, Args)]
pub struct LaunchConfigArgs {
    /// The owner key (its private PEM or its public .pub PEM) [default: none]
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub owner: Option<PathBuf>,
    /// Let the vault import plaintext key material
    #[arg(long)]
    pub allow_plaintext_import: bool,
    /// Let the vault accept provisioned secrets nobody signed (only without --owner)
    #[arg(long, conflicts_with = "owner")]
    pub allow_unauthenticated: bool,
    /// Where to write the configuration (116 bytes)
    #[arg(short = 'o', long = "out", value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub out: PathBuf,
    #[command(flatten)]
    json: Json,
}

pub(super) fn owner(cmd: OwnerCmd, out: &mut dyn Write) -> Result<(), CliError> {
    match cmd {
        OwnerCmd::Keygen(a) => keygen(&a, out),
        OwnerCmd::Envelope(a) => envelope(&a, out),
        OwnerCmd::LaunchConfig(a) => launch_config(&a, out),
    }
}

fn write_file(path: &std::path::Path, bytes: &[u8]) -> Result<(), CliError> {
    std::fs::write(path, bytes).map_err(|e| CliError::Input(format!("{}: {e}", path.display())))
}

fn pub_path(path: &std::path::Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

fn keygen(a: &KeygenArgs, out: &mut dyn Write) -> Result<(), CliError> {
    use std::io::Read;
    let mut urandom = std::fs::File::open("/dev/urandom")
        .map_err(|e| CliError::Input(format!("/dev/urandom: {e}")))?;
    let key = loop {
        let mut bytes = zeroize::Zeroizing::new([0u8; 48]);
        urandom
            .read_exact(&mut bytes[..])
            .map_err(|e| CliError::Input(format!("/dev/urandom: {e}")))?;
        if let Ok(k) = p384::SecretKey::from_slice(&bytes[..]) {
            break k;
        }
    };
    let pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| CliError::Input(format!("encoding the key: {e}")))?;
    let public = key
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| CliError::Input(format!("encoding the public key: {e}")))?;
    write_file(&a.out, pem.as_bytes())?;
    let pub_file = pub_path(&a.out);
    write_file(&pub_file, public.as_bytes())?;
    writeln!(
        out,
        "owner key: {} (private, keep it), {} (public)",
        a.out.display(),
        pub_file.display()
    )
    .map_err(io)
}

fn load_signing_key(path: &std::path::Path) -> Result<p384::ecdsa::SigningKey, CliError> {
    let pem = String::from_utf8(read(path, "owner key")?)
        .map_err(|_| CliError::Input(format!("{}: not a PEM file", path.display())))?;
    p384::SecretKey::from_pkcs8_pem(&pem)
        .map(p384::ecdsa::SigningKey::from)
        .map_err(|e| {
            CliError::Input(format!(
                "{}: not a P-384 private key in PKCS#8 PEM ({e})",
                path.display()
            ))
        })
}

fn envelope(a: &EnvelopeArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let template = template(&a.template, &["owner", "envelope"])?;
    let material = zeroize::Zeroizing::new(read(&a.input, "secret")?);
    let want = a.template.key_type.key_type().material_len();
    if material.len() != want {
        return Err(CliError::Input(format!(
            "{}: {} bytes; a {} key is exactly {want} bytes",
            a.input.display(),
            material.len(),
            a.template.key_type.name()
        )));
    }
    let e = Envelope {
        template,
        label: label(&a.template),
        material: &material,
    };
    let mut payload = zeroize::Zeroizing::new(vec![0u8; e.encoded_len()]);
    e.write(&mut payload)
        .map_err(|err| CliError::Input(format!("envelope: {err:?}")))?;
    let result = match &a.key {
        Some(key) if !a.unsigned => {
            let key = load_signing_key(key)?;
            let mut signed = URL_SAFE_NO_PAD.encode(JWS_HEADER);
            signed.push('.');
            signed.push_str(&URL_SAFE_NO_PAD.encode(&payload[..]));
            let sig: p384::ecdsa::Signature = key.sign(signed.as_bytes());
            signed.push('.');
            signed.push_str(&URL_SAFE_NO_PAD.encode(sig.to_bytes()));
            zeroize::Zeroizing::new(signed.into_bytes())
        }
        _ => payload,
    };
    write_file(&a.out, &result)?;
    writeln!(
        out,
        "envelope: {} ({} key, {}; upload it to the KBS)",
        a.out.display(),
        a.template.key_type.name(),
        if a.unsigned {
            "unsigned"
        } else {
            "signed ES384"
        }
    )
    .map_err(io)
}

fn launch_config(a: &LaunchConfigArgs, out: &mut dyn Write) -> Result<(), CliError> {
    use p384::elliptic_curve::sec1::ToEncodedPoint;
    let owner_key = match &a.owner {
        None => None,
        Some(path) => {
            let pem = String::from_utf8(read(path, "owner key")?)
                .map_err(|_| CliError::Input(format!("{}: not a PEM file", path.display())))?;
            let public = p384::PublicKey::from_public_key_pem(&pem)
                .or_else(|_| p384::SecretKey::from_pkcs8_pem(&pem).map(|k| k.public_key()))
                .map_err(|_| {
                    CliError::Input(format!(
                        "{}: not a P-384 key (public SPKI PEM or private PKCS#8 PEM)",
                        path.display()
                    ))
                })?;
            let point = public.to_encoded_point(false);
            let mut raw = [0u8; nitride_protocol::launch_config::OWNER_KEY_LEN];
            raw.copy_from_slice(point.as_bytes());
            Some(raw)
        }
    };
    let mut policy = LaunchPolicy::empty();
    policy.set(LaunchPolicy::PLAINTEXT_IMPORT, a.allow_plaintext_import);
    policy.set(
        LaunchPolicy::UNAUTHENTICATED_PROVISIONING,
        a.allow_unauthenticated,
    );
    let config = LaunchConfig { policy, owner_key };
    write_file(&a.out, &config.to_bytes())?;
    let digest = hex::encode(config.digest());
    if a.json.json {
        writeln!(
            out,
            "{}",
            json!({
                "file": a.out.display().to_string(),
                "digest": digest,
                "plaintext_import": a.allow_plaintext_import,
                "unauthenticated_provisioning": a.allow_unauthenticated,
                "owner_key": owner_key.map(hex::encode),
            })
        )
        .map_err(io)
    } else {
        writeln!(
            out,
            "launch configuration: {} (SHA-384 {digest}); boot with it: cargo xtask up --launch-config {}",
            a.out.display(),
            a.out.display()
        )
        .map_err(io)
    }
}
