//! The development endorsement chain of the emulated PSP: an ARK and an ASK
//! (RSA-4096) and a VCEK (P-384), certificates signed with RSASSA-PSS (SHA-384,
//! MGF1-SHA-384, salt 48) exactly as AMD signs its own, the VCEK carrying AMD's
//! extensions (structVersion, productName, the SPLs of `dev_psp::TCB_*`, hwID =
//! `dev_psp::CHIP_ID`). Subjects say plainly that this is a development chain, not
//! AMD's; a verifier only accepts it through an explicitly added extra root.
//!
//! Generated once with the `openssl` command-line tool and cached under
//! `target/dev-chain/` (never committed): public certificates next to the private
//! keys in `private/` (mode 0600), and `dev-psp.bin`, the blob the runner hands the
//! firmware through fw_cfg (`nitride_protocol::emulated::dev_psp` layout: header
//! with the VCEK scalar and the chip secret, then the certificate table VCEK, ASK,
//! ARK). Every call checks the cached files and regenerates the chain when one is
//! missing or they disagree.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nitride_guest_driver::verify::{Cert, CertRole, TrustAnchors};
use nitride_protocol::emulated::dev_psp;
use nitride_protocol::snp::certs::{CertTableEntry, GUID_ARK, GUID_ASK, GUID_VCEK};
use nitride_protocol::snp::{Generation, Guid};
use p384::pkcs8::DecodePrivateKey;
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::IntoBytes;
use zeroize::Zeroizing;

use crate::Error;

/// Label of the development root in [`DevChain::trust_anchors`] (and in verdicts).
pub const ROOT_LABEL: &str = "development";

/// Validity of the ARK and ASK (days).
const CA_DAYS: &str = "9131";
/// Validity of the VCEK (days; AMD issues seven years).
const VCEK_DAYS: &str = "2557";

/// The `-sigopt`/digest arguments of every certificate signature: RSASSA-PSS with
/// SHA-384, MGF1-SHA-384 and a 48-byte salt, as AMD's.
const PSS: [&str; 7] = [
    "-sha384",
    "-sigopt",
    "rsa_padding_mode:pss",
    "-sigopt",
    "rsa_pss_saltlen:48",
    "-sigopt",
    "rsa_mgf1_md:sha384",
];

const ARK_SUBJECT: &str = "/OU=Development chain, not for production/O=Nitride development, NOT AMD/CN=Nitride DEVELOPMENT ARK-Genoa";
const ASK_SUBJECT: &str = "/OU=Development chain, not for production/O=Nitride development, NOT AMD/CN=Nitride DEVELOPMENT SEV-Genoa";
const VCEK_SUBJECT: &str = "/OU=Development chain, not for production/O=Nitride development, NOT AMD/CN=Nitride DEVELOPMENT SEV-VCEK";

/// The cached development chain.
#[derive(Clone, Debug)]
pub struct DevChain {
    /// `target/dev-chain`.
    pub dir: PathBuf,
    /// ARK certificate (PEM).
    pub ark_pem: PathBuf,
    /// ASK certificate (PEM).
    pub ask_pem: PathBuf,
    /// VCEK certificate (PEM).
    pub vcek_pem: PathBuf,
    /// VCEK certificate (DER).
    pub vcek_der: PathBuf,
    /// The firmware blob (`dev_psp` layout) passed through fw_cfg. Holds the VCEK
    /// scalar and the chip secret: mode 0600.
    pub blob: PathBuf,
    /// Whether this call generated the chain (false: reused the cache).
    pub generated: bool,
    /// Whether this call (re)wrote the blob.
    pub blob_written: bool,
}

impl DevChain {
    /// Trust anchors holding only the development root (label [`ROOT_LABEL`],
    /// Genoa), for verifiers in tests and tools.
    pub fn trust_anchors(&self) -> Result<TrustAnchors, Error> {
        let ark = fs::read(&self.ark_pem)?;
        let ask = fs::read(&self.ask_pem)?;
        let mut a = TrustAnchors::empty();
        a.add_extra_root(ROOT_LABEL, Generation::Genoa, &ark, Some(&ask), None)
            .map_err(|e| Error::DevChain(format!("development root: {e}")))?;
        Ok(a)
    }

    /// SHA-256 fingerprint of the development ARK (DER), hex.
    pub fn ark_fingerprint(&self) -> Result<String, Error> {
        let cert = Cert::from_pem_or_der(CertRole::Ark, &fs::read(&self.ark_pem)?)
            .map_err(|e| Error::DevChain(format!("ARK: {e}")))?;
        Ok(cert.sha256().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// Where the chain is cached.
pub fn dev_chain_dir() -> PathBuf {
    crate::repo_root().join("target").join("dev-chain")
}

/// The blob the runner passes to QEMU by default.
pub fn dev_psp_blob_path() -> PathBuf {
    dev_chain_dir().join("dev-psp.bin")
}

struct Paths {
    dir: PathBuf,
    private: PathBuf,
    ark_pem: PathBuf,
    ask_pem: PathBuf,
    vcek_pem: PathBuf,
    vcek_der: PathBuf,
    ark_key: PathBuf,
    ask_key: PathBuf,
    vcek_key: PathBuf,
    chip_secret: PathBuf,
    blob: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Self {
        let private = dir.join("private");
        Self {
            dir: dir.to_path_buf(),
            ark_pem: dir.join("ark.pem"),
            ask_pem: dir.join("ask.pem"),
            vcek_pem: dir.join("vcek.pem"),
            vcek_der: dir.join("vcek.der"),
            ark_key: private.join("ark.key"),
            ask_key: private.join("ask.key"),
            vcek_key: private.join("vcek.key"),
            chip_secret: private.join("chip-secret.bin"),
            blob: dir.join("dev-psp.bin"),
            private,
        }
    }
}

/// Make sure the development chain exists in [`dev_chain_dir`] and is consistent;
/// generate it (openssl) otherwise. Says on stderr which it did. The full check runs
/// once per process; later calls only check that the files are still there.
pub fn ensure_dev_chain() -> Result<DevChain, Error> {
    static CHECKED: std::sync::Mutex<Option<DevChain>> = std::sync::Mutex::new(None);
    let mut checked = CHECKED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(chain) = checked.as_ref() {
        let p = Paths::new(&chain.dir);
        if [&p.ark_pem, &p.ask_pem, &p.vcek_pem, &p.vcek_der, &p.blob]
            .iter()
            .all(|f| f.exists())
        {
            return Ok(DevChain {
                generated: false,
                blob_written: false,
                ..chain.clone()
            });
        }
    }
    let chain = ensure_dev_chain_in(&dev_chain_dir())?;
    *checked = Some(chain.clone());
    Ok(chain)
}

/// [`ensure_dev_chain`] in `dir`. Concurrent callers (parallel tests) serialise on
/// a lock file next to `dir`.
pub fn ensure_dev_chain_in(dir: &Path) -> Result<DevChain, Error> {
    let p = Paths::new(dir);
    fs::create_dir_all(&p.dir)?;
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p.dir.join(".lock"))?;
    lock.lock()?;
    let generated = match check(&p) {
        Ok(()) => false,
        Err(why) => {
            eprintln!(
                "dev-chain: generating a development ARK/ASK/VCEK in {} ({why})",
                p.dir.display()
            );
            generate(&p)?;
            check(&p).map_err(|e| {
                Error::DevChain(format!("the freshly generated chain is inconsistent: {e}"))
            })?;
            true
        }
    };
    let blob = build_blob(&p)?;
    let blob_written = fs::read(&p.blob).ok().as_deref() != Some(&blob[..]);
    if blob_written {
        write_private(&p.blob, &blob)?;
    }
    if !generated {
        eprintln!(
            "dev-chain: reusing the development chain in {}",
            p.dir.display()
        );
    }
    drop(lock);
    Ok(DevChain {
        dir: p.dir.clone(),
        ark_pem: p.ark_pem,
        ask_pem: p.ask_pem,
        vcek_pem: p.vcek_pem,
        vcek_der: p.vcek_der,
        blob: p.blob,
        generated,
        blob_written,
    })
}

fn openssl(args: &[&str]) -> Result<Vec<u8>, Error> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::DevChain(format!("cannot run openssl (install it): {e}")))?;
    if !out.status.success() {
        return Err(Error::DevChain(format!(
            "openssl {} failed ({}): {}",
            args.first().copied().unwrap_or(""),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

fn path_str(p: &Path) -> Result<&str, Error> {
    p.to_str()
        .ok_or_else(|| Error::DevChain(format!("non-UTF-8 path {}", p.display())))
}

/// Write a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    Ok(())
}

fn hex_colons(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The OpenSSL extension configuration of the three certificates. The VCEK's
/// AMD extensions are encoded as AMD's: the SPLs and structVersion as INTEGER
/// (structVersion 0, the value every AMD VCEK in `snp-vectors` carries), productName
/// as IA5String, hwID as the raw 64 bytes of the extension value; no other
/// extensions, like AMD's VCEKs.
fn extensions_config() -> String {
    format!(
        "[v3_ark]\n\
         keyUsage = critical, keyCertSign, cRLSign\n\
         basicConstraints = critical, CA:TRUE\n\
         subjectKeyIdentifier = hash\n\
         [v3_ask]\n\
         basicConstraints = critical, CA:TRUE, pathlen:0\n\
         keyUsage = critical, keyCertSign\n\
         subjectKeyIdentifier = hash\n\
         authorityKeyIdentifier = keyid:always\n\
         [v3_vcek]\n\
         1.3.6.1.4.1.3704.1.1 = ASN1:INTEGER:0\n\
         1.3.6.1.4.1.3704.1.2 = ASN1:IA5STRING:{product}\n\
         1.3.6.1.4.1.3704.1.3.1 = ASN1:INTEGER:{bl}\n\
         1.3.6.1.4.1.3704.1.3.2 = ASN1:INTEGER:{tee}\n\
         1.3.6.1.4.1.3704.1.3.3 = ASN1:INTEGER:{snp}\n\
         1.3.6.1.4.1.3704.1.3.8 = ASN1:INTEGER:{ucode}\n\
         1.3.6.1.4.1.3704.1.4 = DER:{hwid}\n\
         subjectKeyIdentifier = none\n\
         authorityKeyIdentifier = none\n\
         [req]\n\
         distinguished_name = req_dn\n\
         prompt = no\n\
         [req_dn]\n\
         CN = unused\n",
        product = dev_psp::PRODUCT_NAME,
        bl = dev_psp::TCB_BOOTLOADER,
        tee = dev_psp::TCB_TEE,
        snp = dev_psp::TCB_SNP,
        ucode = dev_psp::TCB_MICROCODE,
        hwid = hex_colons(&dev_psp::CHIP_ID),
    )
}

fn generate(p: &Paths) -> Result<(), Error> {
    for f in [
        &p.ark_pem,
        &p.ask_pem,
        &p.vcek_pem,
        &p.vcek_der,
        &p.blob,
        &p.ark_key,
        &p.ask_key,
        &p.vcek_key,
        &p.chip_secret,
    ] {
        let _ = fs::remove_file(f);
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&p.private)?;
    fs::set_permissions(&p.private, fs::Permissions::from_mode(0o700))?;
    let cnf = p.dir.join("openssl.cnf");
    fs::write(&cnf, extensions_config())?;
    let csr = p.dir.join("request.csr");
    let (cnf_s, csr_s) = (path_str(&cnf)?, path_str(&csr)?);
    let (ark_key, ask_key, vcek_key) = (
        path_str(&p.ark_key)?,
        path_str(&p.ask_key)?,
        path_str(&p.vcek_key)?,
    );
    let (ark_pem, ask_pem, vcek_pem) = (
        path_str(&p.ark_pem)?,
        path_str(&p.ask_pem)?,
        path_str(&p.vcek_pem)?,
    );

    for (key, alg) in [
        (
            ark_key,
            ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"],
        ),
        (
            ask_key,
            ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"],
        ),
        (
            vcek_key,
            ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
        ),
    ] {
        let mut args = vec!["genpkey", "-quiet", "-out", key];
        args.extend(alg);
        openssl(&args)?;
        fs::set_permissions(key, fs::Permissions::from_mode(0o600))?;
    }

    // ARK: self-signed.
    let mut args = vec![
        "req",
        "-x509",
        "-new",
        "-config",
        cnf_s,
        "-extensions",
        "v3_ark",
        "-key",
        ark_key,
        "-subj",
        ARK_SUBJECT,
        "-set_serial",
        "1",
        "-days",
        CA_DAYS,
        "-out",
        ark_pem,
    ];
    args.extend(PSS);
    openssl(&args)?;

    // ASK and VCEK: a request, then signed by the issuer.
    for (key, subject, issuer, issuer_key, section, serial, days, out) in [
        (
            ask_key,
            ASK_SUBJECT,
            ark_pem,
            ark_key,
            "v3_ask",
            "2",
            CA_DAYS,
            ask_pem,
        ),
        (
            vcek_key,
            VCEK_SUBJECT,
            ask_pem,
            ask_key,
            "v3_vcek",
            "0",
            VCEK_DAYS,
            vcek_pem,
        ),
    ] {
        openssl(&[
            "req", "-new", "-config", cnf_s, "-key", key, "-subj", subject, "-out", csr_s,
        ])?;
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            csr_s,
            "-CA",
            issuer,
            "-CAkey",
            issuer_key,
            "-set_serial",
            serial,
            "-days",
            days,
            "-extfile",
            cnf_s,
            "-extensions",
            section,
            "-out",
            out,
        ];
        args.extend(PSS);
        openssl(&args)?;
    }
    let _ = fs::remove_file(&csr);
    let _ = fs::remove_file(&cnf);
    openssl(&[
        "x509",
        "-in",
        vcek_pem,
        "-outform",
        "DER",
        "-out",
        path_str(&p.vcek_der)?,
    ])?;

    let mut secret = Zeroizing::new([0u8; 32]);
    fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut secret[..]))?;
    write_private(&p.chip_secret, &secret[..])?;
    Ok(())
}

/// Why the cached chain cannot be reused (a sentence), if it cannot.
fn check(p: &Paths) -> Result<(), String> {
    for f in [
        &p.ark_pem,
        &p.ask_pem,
        &p.vcek_pem,
        &p.vcek_der,
        &p.ark_key,
        &p.ask_key,
        &p.vcek_key,
        &p.chip_secret,
    ] {
        if !f.exists() {
            return Err(format!("{} missing", f.display()));
        }
    }
    let read = |f: &Path| fs::read(f).map_err(|e| format!("{}: {e}", f.display()));
    let secret = Zeroizing::new(read(&p.chip_secret)?);
    if secret.len() != 32 {
        return Err("chip secret is not 32 bytes".into());
    }
    // Private keys match their certificates.
    for (key, cert) in [(&p.ark_key, &p.ark_pem), (&p.ask_key, &p.ask_pem)] {
        let k = path_str(key).map_err(|e| e.to_string())?;
        let c = path_str(cert).map_err(|e| e.to_string())?;
        let from_key = openssl(&["pkey", "-in", k, "-pubout"]).map_err(|e| e.to_string())?;
        let from_cert =
            openssl(&["x509", "-in", c, "-noout", "-pubkey"]).map_err(|e| e.to_string())?;
        if from_key != from_cert {
            return Err(format!(
                "{} does not match {}",
                key.display(),
                cert.display()
            ));
        }
    }
    let vcek_pem = read(&p.vcek_pem)?;
    let vcek = Cert::from_pem_or_der(CertRole::Vcek, &vcek_pem).map_err(|e| e.to_string())?;
    if vcek.der() != read(&p.vcek_der)? {
        return Err("vcek.der differs from vcek.pem".into());
    }
    let scalar = vcek_scalar(p).map_err(|e| e.to_string())?;
    let secret_key = p384::SecretKey::from_bytes(&(*scalar).into())
        .map_err(|_| "VCEK private key is not a valid P-384 scalar".to_string())?;
    let cert_key = vcek.p384_key(CertRole::Vcek).map_err(|e| e.to_string())?;
    if p384::ecdsa::VerifyingKey::from(secret_key.public_key()) != cert_key {
        return Err("VCEK private key does not match vcek.pem".into());
    }
    // The chain verifies up to the development root, with today's constants.
    let mut anchors = TrustAnchors::empty();
    anchors
        .add_extra_root(
            ROOT_LABEL,
            Generation::Genoa,
            &read(&p.ark_pem)?,
            Some(&read(&p.ask_pem)?),
            None,
        )
        .map_err(|e| e.to_string())?;
    let e = anchors
        .verify_endorsement(&vcek_pem, Some(Generation::Genoa))
        .map_err(|e| format!("chain does not verify: {e}"))?;
    let x = &e.extensions;
    let want = (
        Some(dev_psp::PRODUCT_NAME),
        dev_psp::TCB_BOOTLOADER,
        dev_psp::TCB_TEE,
        dev_psp::TCB_SNP,
        dev_psp::TCB_MICROCODE,
        Some(&dev_psp::CHIP_ID[..]),
    );
    let have = (
        x.product_name.as_deref(),
        x.bootloader,
        x.tee,
        x.snp,
        x.microcode,
        x.hw_id.as_deref(),
    );
    if have != want {
        return Err("VCEK extensions differ from dev_psp's TCB/CHIP_ID/product".into());
    }
    Ok(())
}

/// The VCEK's private scalar (48 bytes, big-endian) from `private/vcek.key`.
fn vcek_scalar(p: &Paths) -> Result<Zeroizing<[u8; 48]>, Error> {
    let pem = Zeroizing::new(fs::read_to_string(&p.vcek_key)?);
    let key = p384::SecretKey::from_pkcs8_pem(&pem)
        .or_else(|_| {
            use p384::elliptic_curve::SecretKey;
            SecretKey::from_sec1_pem(&pem)
        })
        .map_err(|e| Error::DevChain(format!("VCEK private key: {e}")))?;
    let mut out = Zeroizing::new([0u8; 48]);
    out.copy_from_slice(&key.to_bytes());
    Ok(out)
}

/// The certificate table (`snp::certs` layout) holding `certs` in order, then the
/// all-zero entry; certificate offsets count from the start of the table.
pub fn cert_table(certs: &[(Guid, &[u8])]) -> Result<Vec<u8>, Error> {
    let entry = core::mem::size_of::<CertTableEntry>();
    let too_big = || Error::DevChain("certificate table too large".into());
    let head = certs
        .len()
        .checked_add(1)
        .and_then(|n| n.checked_mul(entry))
        .ok_or_else(too_big)?;
    let mut entries = Vec::new();
    let mut body = Vec::new();
    for (guid, der) in certs {
        let offset = head.checked_add(body.len()).ok_or_else(too_big)?;
        let e = CertTableEntry {
            guid: *guid,
            offset: U32::new(u32::try_from(offset).map_err(|_| too_big())?),
            length: U32::new(u32::try_from(der.len()).map_err(|_| too_big())?),
        };
        entries.extend_from_slice(e.as_bytes());
        body.extend_from_slice(der);
    }
    entries.extend_from_slice(CertTableEntry::default().as_bytes());
    entries.extend_from_slice(&body);
    Ok(entries)
}

/// The `dev_psp` blob: header (magic, VCEK scalar, chip secret, table length),
/// then the certificate table VCEK, ASK, ARK.
fn build_blob(p: &Paths) -> Result<Zeroizing<Vec<u8>>, Error> {
    let der = |f: &Path| -> Result<Vec<u8>, Error> {
        Ok(Cert::from_pem_or_der(CertRole::Ark, &fs::read(f)?)
            .map_err(|e| Error::DevChain(format!("{}: {e}", f.display())))?
            .der()
            .to_vec())
    };
    let (vcek, ask, ark) = (der(&p.vcek_der)?, der(&p.ask_pem)?, der(&p.ark_pem)?);
    let table = cert_table(&[
        (GUID_VCEK, &vcek[..]),
        (GUID_ASK, &ask[..]),
        (GUID_ARK, &ark[..]),
    ])?;
    if table.len() > dev_psp::MAX_CERT_TABLE {
        return Err(Error::DevChain(format!(
            "certificate table of {} bytes exceeds dev_psp::MAX_CERT_TABLE",
            table.len()
        )));
    }
    let secret = Zeroizing::new(fs::read(&p.chip_secret)?);
    let mut header = dev_psp::BlobHeader {
        magic: dev_psp::MAGIC,
        vcek_scalar: *vcek_scalar(p)?,
        chip_secret: secret
            .as_slice()
            .try_into()
            .map_err(|_| Error::DevChain("chip secret is not 32 bytes".into()))?,
        cert_table_len: U32::new(u32::try_from(table.len()).unwrap_or(u32::MAX)),
        launch_flags: U32::new(0),
        tcb_version: U64::new(dev_psp::TCB_VERSION),
    };
    let mut blob = Zeroizing::new(Vec::with_capacity(
        size_of::<dev_psp::BlobHeader>() + table.len(),
    ));
    blob.extend_from_slice(header.as_bytes());
    blob.extend_from_slice(&table);
    zeroize::Zeroize::zeroize(&mut header.vcek_scalar);
    zeroize::Zeroize::zeroize(&mut header.chip_secret);
    Ok(blob)
}
