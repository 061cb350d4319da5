//! `mode=forgery`: the guest tries to get VMPL0 evidence it could pass off as
//! something the SVSM never said (issue 10, items 2 and 3), through the SVSM
//! attestation protocol exactly as a hostile guest OS would:
//!
//! 1. **Long-nonce services forgery.** Nonce = N || X, where X is the head of a
//!    services table plus a fake vHSM manifest naming the attacker's key as the
//!    vault identity: the old SVSM hashed N || X || M (M the real table), which a
//!    relying party given N and X || M accepted.
//! 2. **Long-nonce single-service forgery.** The same against
//!    ATTEST_SINGLE_SERVICE: X is a vHSM manifest head whose last key record's
//!    length swallows the real manifest.
//! 3. **Key binding from a protocol-1 report.** Nonce = the old key-binding head
//!    (magic, attributes, lengths) and the attacker's SPKI, whose declared length
//!    swallows the real table: the old verifier read `nonce || table` as a binding
//!    of the attacker's key.
//! 4. Every other nonce length.
//!
//! Each must be refused with INVALID_PARAMETER, RCX/RDX/R8 zero and nothing
//! written. A 64-byte nonce chosen to look like a key binding is served, but the
//! hash input it makes has the table's GUID at offset 64, so it reads as a
//! services attestation and never as a binding. Genuine calls before and after
//! still work.

use nitride_guest_driver::attest::{
    attest, encode_request, AttestBuffers, GuestBuf, Region, Regions, Target, REPORT_SIZE,
};
use nitride_guest_driver::call::SvsmClient;
use nitride_protocol::attest::report_data::{self, Form};
use nitride_protocol::attest::{
    KeyBinding, ManifestTable, VhsmManifest, MANIFEST_TABLE_GUID, VHSM_MANIFEST_MAGIC,
    VHSM_SERVICE_GUID,
};
use nitride_protocol::emulated::exit;
use nitride_protocol::svsm::{protocol, ResultCode, SvsmInfo};
use nitride_protocol::vhsm::{KeyTemplate, KeyType, KeyUsage, VmplSet};
use nitride_test_guest::CallTransport;
use nitride_test_guest::{exit_qemu, say};

extern crate alloc;
use alloc::vec::Vec;

/// A page-aligned guest buffer of `N` bytes.
#[repr(C, align(4096))]
struct Pages<const N: usize>([u8; N]);

/// This mode's guest memory: request, nonce, report, manifest, certificates.
struct Memory {
    request: Pages<4096>,
    nonce: Pages<4096>,
    report: Pages<4096>,
    manifest: Pages<{ 16 * 1024 }>,
    certificates: Pages<{ 16 * 1024 }>,
}

static mut MEMORY: Memory = Memory {
    request: Pages([0; 4096]),
    nonce: Pages([0; 4096]),
    report: Pages([0; 4096]),
    manifest: Pages([0; 16 * 1024]),
    certificates: Pages([0; 16 * 1024]),
};

/// What the output buffers hold before a call that must write nothing.
const FILL: u8 = 0xA5;

/// The relying party's nonce.
const N: [u8; 64] = [0x4E; 64];

/// The attacker's P-384 key (the curve's generator), SPKI DER.
const ATTACKER_SPKI: [u8; 120] = {
    let head: [u8; 24] = [
        0x30, 0x76, 0x30, 0x10, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05,
        0x2b, 0x81, 0x04, 0x00, 0x22, 0x03, 0x62, 0x00, 0x04,
    ];
    let g: [u8; 96] = [
        0xaa, 0x87, 0xca, 0x22, 0xbe, 0x8b, 0x05, 0x37, 0x8e, 0xb1, 0xc7, 0x1e, 0xf3, 0x20, 0xad,
        0x74, 0x6e, 0x1d, 0x3b, 0x62, 0x8b, 0xa7, 0x9b, 0x98, 0x59, 0xf7, 0x41, 0xe0, 0x82, 0x54,
        0x2a, 0x38, 0x55, 0x02, 0xf2, 0x5d, 0xbf, 0x55, 0x29, 0x6c, 0x3a, 0x54, 0x5e, 0x38, 0x72,
        0x76, 0x0a, 0xb7, 0x36, 0x17, 0xde, 0x4a, 0x96, 0x26, 0x2c, 0x6f, 0x5d, 0x9e, 0x98, 0xbf,
        0x92, 0x92, 0xdc, 0x29, 0xf8, 0xf4, 0x1d, 0xbd, 0x28, 0x9a, 0x14, 0x7c, 0xe9, 0xda, 0x31,
        0x13, 0xb5, 0xf0, 0xb8, 0xc0, 0x0a, 0x60, 0xb1, 0xce, 0x1d, 0x7e, 0x81, 0x9d, 0x7a, 0x43,
        0x1d, 0x7c, 0x90, 0xea, 0x0e, 0x5f,
    ];
    let mut out = [0u8; 120];
    let mut i = 0;
    while i < 24 {
        out[i] = head[i];
        i += 1;
    }
    while i < 120 {
        out[i] = g[i - 24];
        i += 1;
    }
    out
};

fn u32le(v: usize) -> [u8; 4] {
    (v as u32).to_le_bytes()
}

/// Key attributes as the old forgery wrote them: key 1, P-384, generated, every
/// VMPL, SIGN | VERIFY | ATTEST, labelled "vault".
fn attributes() -> [u8; 48] {
    let mut a = [0u8; 48];
    a[..4].copy_from_slice(&1u32.to_le_bytes());
    a[4..6].copy_from_slice(&2u16.to_le_bytes());
    a[6] = 1;
    a[7] = 0xF;
    a[8..12].copy_from_slice(&0x8Cu32.to_le_bytes());
    a[13] = 5;
    a[16..21].copy_from_slice(b"vault");
    a
}

/// A vHSM manifest (version 1 layout) naming `identity`, with one key record
/// whose SPKI is `spki` and whose declared SPKI length is `spki.len() + swallow`.
fn fake_vhsm_manifest(identity: &[u8], spki: &[u8], swallow: usize) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&VHSM_MANIFEST_MAGIC);
    m.extend_from_slice(&1u32.to_le_bytes()); // manifest version
    m.extend_from_slice(&1u32.to_le_bytes()); // protocol version
    m.extend_from_slice(&1u16.to_le_bytes()); // wire version
    m.extend_from_slice(&0u16.to_le_bytes());
    m.extend_from_slice(&u32le(1)); // one key
    m.extend_from_slice(&u32le(identity.len()));
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(identity);
    m.extend_from_slice(&attributes());
    m.extend_from_slice(&u32le(spki.len() + swallow));
    m.extend_from_slice(spki);
    m
}

/// The services forgery's X: a table head and one entry (the vHSM, pointing at
/// the fake manifest right after it), the table's length covering X and the real
/// table M that the SVSM appends.
fn services_forgery(real_table_len: usize) -> Vec<u8> {
    let fake = fake_vhsm_manifest(&ATTACKER_SPKI, &ATTACKER_SPKI, 0);
    let mut x = Vec::new();
    x.extend_from_slice(&MANIFEST_TABLE_GUID);
    x.extend_from_slice(&u32le(48 + fake.len() + real_table_len));
    x.extend_from_slice(&u32le(1));
    x.extend_from_slice(&VHSM_SERVICE_GUID);
    x.extend_from_slice(&u32le(48));
    x.extend_from_slice(&u32le(fake.len()));
    x.extend_from_slice(&fake);
    x
}

/// The old key binding's head ("NITRIDE-KEYBIND1", u32 nonce_len, u32 spki_len,
/// attributes) with an empty nonce and the attacker's SPKI, whose declared length
/// swallows the real table.
fn binding_forgery(real_table_len: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"NITRIDE-KEYBIND1");
    b.extend_from_slice(&u32le(0));
    b.extend_from_slice(&u32le(ATTACKER_SPKI.len() + real_table_len));
    b.extend_from_slice(&attributes());
    b.extend_from_slice(&ATTACKER_SPKI);
    b
}

struct Checks {
    passed: u32,
    failed: u32,
}

impl Checks {
    fn check(&mut self, name: &str, ok: bool, detail: core::fmt::Arguments<'_>) {
        if ok {
            self.passed += 1;
        } else {
            self.failed += 1;
        }
        say!(
            "CHECK {name}: {detail} ... {}",
            if ok { "ok" } else { "FAIL" }
        );
    }
}

/// The result registers of one raw protocol-1 call.
#[derive(Debug, PartialEq, Eq)]
struct Raw {
    rax: u64,
    rcx: u64,
    rdx: u64,
    r8: u64,
}

/// Protocol-1 calls with a nonce of any length, made by hand as a hostile guest
/// would; the output buffers are filled with [`FILL`] first.
struct Attacker<'a> {
    svsm: SvsmClient<CallTransport>,
    m: &'a mut Memory,
}

impl Attacker<'_> {
    fn gpa(b: &[u8]) -> u64 {
        b.as_ptr() as u64
    }

    fn call(&mut self, target: Target, nonce: &[u8]) -> Raw {
        let m = &mut *self.m;
        m.nonce.0[..nonce.len()].copy_from_slice(nonce);
        m.report.0.fill(FILL);
        m.manifest.0.fill(FILL);
        m.certificates.0.fill(FILL);
        let regions = Regions {
            report: Region {
                gpa: Self::gpa(&m.report.0),
                size: 4096,
            },
            nonce: Region {
                gpa: Self::gpa(&m.nonce.0),
                size: nonce.len() as u32,
            },
            manifest: Region {
                gpa: Self::gpa(&m.manifest.0),
                size: 16 * 1024,
            },
            certificates: Region {
                gpa: Self::gpa(&m.certificates.0),
                size: 16 * 1024,
            },
        };
        if encode_request(target, &regions, &mut m.request.0).is_err() {
            return Raw {
                rax: u64::MAX,
                rcx: 0,
                rdx: 0,
                r8: 0,
            };
        }
        let request = Self::gpa(&m.request.0);
        match self
            .svsm
            .call_regs(protocol::ATTESTATION, target.call_id(), [request, 0, 0, 0])
        {
            Ok(r) => Raw {
                rax: r.rax,
                rcx: r.rcx,
                rdx: r.rdx,
                r8: r.r8,
            },
            Err(_) => Raw {
                rax: u64::MAX - 1,
                rcx: 0,
                rdx: 0,
                r8: 0,
            },
        }
    }

    /// Nothing was written to any output buffer.
    fn untouched(&self) -> bool {
        let m = &*self.m;
        [&m.report.0[..], &m.manifest.0[..], &m.certificates.0[..]]
            .iter()
            .all(|b| b.iter().all(|&x| x == FILL))
    }

    /// A genuine call with a 64-byte nonce through the guest-driver client: the
    /// report and the manifest.
    fn genuine(&mut self, target: Target, nonce: &[u8; 64]) -> Option<(Vec<u8>, Vec<u8>)> {
        let m = &mut *self.m;
        let (req, non, rep, man) = (
            Self::gpa(&m.request.0),
            Self::gpa(&m.nonce.0),
            Self::gpa(&m.report.0),
            Self::gpa(&m.manifest.0),
        );
        let mut bufs = AttestBuffers {
            request: GuestBuf {
                bytes: &mut m.request.0,
                gpa: req,
            },
            nonce: GuestBuf {
                bytes: &mut m.nonce.0,
                gpa: non,
            },
            report: GuestBuf {
                bytes: &mut m.report.0,
                gpa: rep,
            },
            manifest: GuestBuf {
                bytes: &mut m.manifest.0,
                gpa: man,
            },
            certificates: None,
        };
        let ev = attest(&mut self.svsm, target, nonce, &mut bufs).ok()?;
        (ev.report_len == REPORT_SIZE).then(|| {
            (
                bufs.report.bytes[..ev.report_len].to_vec(),
                bufs.manifest.bytes[..ev.manifest_len].to_vec(),
            )
        })
    }
}

fn refused(r: &Raw) -> bool {
    *r == Raw {
        rax: ResultCode::InvalidParameter.raw(),
        rcx: 0,
        rdx: 0,
        r8: 0,
    }
}

/// REPORT_DATA of a report.
fn report_data_of(report: &[u8]) -> &[u8] {
    report.get(0x50..0x90).unwrap_or_default()
}

pub fn run(info: &SvsmInfo) -> ! {
    let mut c = Checks {
        passed: 0,
        failed: 0,
    };
    // An attestable key, so the vHSM's manifest lists one.
    let mut vhsm = crate::vhsm_client(info);
    let t = KeyTemplate::new(
        KeyType::EcdsaP384,
        KeyUsage::SIGN | KeyUsage::VERIFY | KeyUsage::ATTEST,
        VmplSet::all(),
        false,
    );
    let key = vhsm.generate(t, b"vault-key");
    c.check(
        "attestable-key",
        key.is_ok(),
        format_args!("{:?}", key.map(|k| k.key_id.get())),
    );
    // SAFETY: the CAA from the secrets page is a guest page, identity mapped; the
    // vHSM client above shares it but never calls at the same time.
    let svsm = SvsmClient::new(unsafe { nitride_test_guest::transport(info.caa) });
    // SAFETY: `run` runs once and is the only user of MEMORY.
    let m = unsafe { &mut *core::ptr::addr_of_mut!(MEMORY) };
    let mut a = Attacker { svsm, m };
    let single = Target::SingleService {
        guid: VHSM_SERVICE_GUID,
        manifest_version: 0,
    };

    // The genuine evidence the attacker builds on.
    let real = a.genuine(Target::Services, &N);
    let real_single = a.genuine(single, &N);
    let (Some((report, table)), Some((_, vhsm_manifest))) = (real, real_single) else {
        say!("genuine attestation failed");
        exit_qemu(exit::GUEST_FAIL)
    };
    let rd = report_data::services(&N, &table);
    c.check(
        "genuine-services",
        rd.as_ref().is_ok_and(|rd| report_data_of(&report) == rd)
            && ManifestTable::parse(&table).is_ok()
            && VhsmManifest::parse(&vhsm_manifest).is_ok(),
        format_args!(
            "table {} bytes, vHSM manifest {} bytes",
            table.len(),
            vhsm_manifest.len()
        ),
    );

    // 1. N || X through ATTEST_SERVICES.
    let mut nonce = N.to_vec();
    nonce.extend_from_slice(&services_forgery(table.len()));
    let r = a.call(Target::Services, &nonce);
    c.check(
        "forged-services-refused",
        refused(&r) && a.untouched(),
        format_args!(
            "{}-byte nonce: {r:x?}, untouched {}",
            nonce.len(),
            a.untouched()
        ),
    );

    // 2. N || X' through ATTEST_SINGLE_SERVICE: X' swallows the real manifest in
    //    its last key's SPKI.
    let mut nonce = N.to_vec();
    nonce.extend_from_slice(&fake_vhsm_manifest(
        &ATTACKER_SPKI,
        &ATTACKER_SPKI,
        vhsm_manifest.len(),
    ));
    let r = a.call(single, &nonce);
    c.check(
        "forged-single-service-refused",
        refused(&r) && a.untouched(),
        format_args!(
            "{}-byte nonce: {r:x?}, untouched {}",
            nonce.len(),
            a.untouched()
        ),
    );

    // 3. A key binding of the attacker's key from a protocol-1 report.
    let nonce = binding_forgery(table.len());
    let r = a.call(Target::Services, &nonce);
    c.check(
        "forged-binding-refused",
        refused(&r) && a.untouched(),
        format_args!(
            "{}-byte nonce: {r:x?}, untouched {}",
            nonce.len(),
            a.untouched()
        ),
    );
    // The most of it that fits a 64-byte nonce is served, but the hash input has
    // the table GUID at offset 64: a services attestation, never a binding.
    let mut short = [0u8; 64];
    short.copy_from_slice(&nonce[..64]);
    let served = a.genuine(Target::Services, &short);
    let input = served.as_ref().map(|(_, t)| [&short[..], t].concat());
    c.check(
        "binding-shaped-nonce-reads-as-services",
        input.as_ref().is_some_and(|i| {
            KeyBinding::parse(i).is_err()
                && report_data::classify(i) == Some(Form::Services)
                && report_data::key_binding(i).is_err()
        }),
        format_args!(
            "{:?}",
            input
                .as_ref()
                .map(|i| (KeyBinding::parse(i).err(), report_data::classify(i)))
        ),
    );

    // 4. Every other nonce length, both calls.
    for len in [0usize, 1, 32, 63, 65, 128, 4096] {
        let other = alloc::vec![0x4Eu8; len];
        for (name, target) in [("services", Target::Services), ("single", single)] {
            let r = a.call(target, &other);
            c.check(
                "other-nonce-length-refused",
                refused(&r) && a.untouched(),
                format_args!("{name}, {len} bytes: {r:x?}"),
            );
        }
    }

    // The SVSM still attests.
    let again = a.genuine(Target::Services, &N);
    c.check(
        "genuine-after",
        again.is_some_and(|(_, t)| t == table),
        format_args!("same table"),
    );

    say!("RESULT {} passed, {} failed", c.passed, c.failed);
    exit_qemu(if c.failed == 0 {
        exit::GUEST_PASS
    } else {
        exit::GUEST_FAIL
    })
}
