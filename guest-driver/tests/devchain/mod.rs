//! A throwaway development chain made with `openssl` (ARK/ASK RSA, VCEK P-384, as
//! the virtual SNP machine's, subjects saying DEVELOPMENT) and reports signed with its
//! VCEK: the verifier's tests build evidence with it that no SVSM would produce.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use nitride_protocol::snp::AttestationReport;
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::{FromZeros, IntoBytes};

pub const CHIP_ID: [u8; 64] = [0x5A; 64];
// bootloader, tee, snp, microcode
pub const TCB: (u8, u8, u8, u8) = (9, 0, 23, 72);

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("openssl is required (apt-get install openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub const PSS: [&str; 7] = [
    "-sha384",
    "-sigopt",
    "rsa_padding_mode:pss",
    "-sigopt",
    "rsa_pss_saltlen:48",
    "-sigopt",
    "rsa_mgf1_md:sha384",
];

/// ark.pem, ask.pem, vcek.pem, vcek.der and vcek.key in `dir`.
pub fn make_chain(dir: &Path) {
    let hwid: Vec<String> = CHIP_ID.iter().map(|b| format!("{b:02X}")).collect();
    let cnf = format!(
        "[v3_ca]\nbasicConstraints = critical, CA:TRUE\nkeyUsage = critical, keyCertSign\n\
         [v3_vcek]\n\
         1.3.6.1.4.1.3704.1.1 = ASN1:INTEGER:0\n\
         1.3.6.1.4.1.3704.1.2 = ASN1:IA5STRING:Genoa\n\
         1.3.6.1.4.1.3704.1.3.1 = ASN1:INTEGER:{}\n\
         1.3.6.1.4.1.3704.1.3.2 = ASN1:INTEGER:{}\n\
         1.3.6.1.4.1.3704.1.3.3 = ASN1:INTEGER:{}\n\
         1.3.6.1.4.1.3704.1.3.8 = ASN1:INTEGER:{}\n\
         1.3.6.1.4.1.3704.1.4 = DER:{}\n\
         [req]\ndistinguished_name = dn\nprompt = no\n[dn]\nCN = unused\n",
        TCB.0,
        TCB.1,
        TCB.2,
        TCB.3,
        hwid.join(":")
    );
    std::fs::write(dir.join("openssl.cnf"), cnf).unwrap();
    for (key, alg, opt) in [
        ("ark.key", "RSA", "rsa_keygen_bits:2048"),
        ("ask.key", "RSA", "rsa_keygen_bits:2048"),
        ("vcek.key", "EC", "ec_paramgen_curve:P-384"),
    ] {
        openssl(
            dir,
            &["genpkey", "-algorithm", alg, "-pkeyopt", opt, "-out", key],
        );
    }
    let subj = |cn: &str| format!("/O=Nitride development, NOT AMD/CN=Nitride DEVELOPMENT {cn}");
    let ark_subj = subj("ARK-Genoa");
    let mut args = vec![
        "req",
        "-x509",
        "-new",
        "-config",
        "openssl.cnf",
        "-extensions",
        "v3_ca",
        "-key",
        "ark.key",
        "-subj",
        &ark_subj,
        "-days",
        "30",
        "-out",
        "ark.pem",
    ];
    args.extend(PSS);
    openssl(dir, &args);
    for (key, cn, issuer, issuer_key, section, out) in [
        (
            "ask.key",
            "SEV-Genoa",
            "ark.pem",
            "ark.key",
            "v3_ca",
            "ask.pem",
        ),
        (
            "vcek.key", "SEV-VCEK", "ask.pem", "ask.key", "v3_vcek", "vcek.pem",
        ),
    ] {
        let s = subj(cn);
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-config",
                "openssl.cnf",
                "-key",
                key,
                "-subj",
                &s,
                "-out",
                "req.csr",
            ],
        );
        let mut args = vec![
            "x509",
            "-req",
            "-in",
            "req.csr",
            "-CA",
            issuer,
            "-CAkey",
            issuer_key,
            "-set_serial",
            "0",
            "-days",
            "30",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            section,
            "-out",
            out,
        ];
        args.extend(PSS);
        openssl(dir, &args);
    }
    for (pem, der) in [
        ("vcek.pem", "vcek.der"),
        ("ask.pem", "ask.der"),
        ("ark.pem", "ark.der"),
    ] {
        openssl(dir, &["x509", "-in", pem, "-outform", "DER", "-out", der]);
    }
}

/// Read one DER INTEGER at the front of `b`: (value without leading zeros, rest).
fn der_int(b: &[u8]) -> (&[u8], &[u8]) {
    assert_eq!(b[0], 0x02);
    let len = b[1] as usize;
    let (v, rest) = b[2..].split_at(len);
    let v = if v[0] == 0 { &v[1..] } else { v };
    (v, rest)
}

/// A version-2 report at `vmpl` binding `report_data`, signed with `dir/vcek.key`.
pub fn signed_report(dir: &Path, vmpl: u32, report_data: [u8; 64]) -> Vec<u8> {
    signed_report_with_policy(dir, vmpl, report_data, 0x3_0000)
}

/// [`signed_report`] with the guest policy `policy`.
pub fn signed_report_with_policy(
    dir: &Path,
    vmpl: u32,
    report_data: [u8; 64],
    policy: u64,
) -> Vec<u8> {
    let mut r = AttestationReport::new_zeroed();
    r.version = U32::new(2);
    r.policy = U64::new(policy);
    r.vmpl = U32::new(vmpl);
    r.signature_algo = U32::new(1);
    r.report_data = report_data;
    r.measurement = [0x11; 48];
    r.chip_id = CHIP_ID;
    let tcb = u64::from(TCB.0)
        | (u64::from(TCB.1) << 8)
        | (u64::from(TCB.2) << 48)
        | (u64::from(TCB.3) << 56);
    r.reported_tcb = U64::new(tcb);
    r.current_tcb = U64::new(tcb);
    // Unique names: tests of one binary sign in parallel in the same directory.
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (signed, sig) = (format!("signed-{n}.bin"), format!("sig-{n}.der"));
    std::fs::write(dir.join(&signed), r.signed_bytes()).unwrap();
    openssl(
        dir,
        &[
            "dgst", "-sha384", "-sign", "vcek.key", "-out", &sig, &signed,
        ],
    );
    let sig = std::fs::read(dir.join(&sig)).unwrap();
    assert_eq!(sig[0], 0x30);
    let (rv, rest) = der_int(&sig[2..]);
    let (sv, _) = der_int(rest);
    for (dst, v) in [(&mut r.signature.r, rv), (&mut r.signature.s, sv)] {
        for (i, b) in v.iter().rev().enumerate() {
            dst[i] = *b;
        }
    }
    r.as_bytes().to_vec()
}

/// The SPKI DER of the private key `dir/key`, as OpenSSL writes it.
pub fn public_key_der(dir: &Path, key: &str) -> Vec<u8> {
    let out = format!("{key}.pub.der");
    openssl(
        dir,
        &[
            "pkey", "-in", key, "-pubout", "-outform", "DER", "-out", &out,
        ],
    );
    std::fs::read(dir.join(out)).unwrap()
}

/// A fresh P-384 key `dir/name` (OpenSSL) and its SPKI DER.
pub fn p384_key(dir: &Path, name: &str) -> Vec<u8> {
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out",
            name,
        ],
    );
    public_key_der(dir, name)
}
