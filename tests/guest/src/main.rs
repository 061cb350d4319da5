//! The test guest: a bare-metal SEV-SNP program the SVSM runs at VMPL1.
//!
//! It finds the SVSM through the secrets page (RSI at entry), reads its mode from
//! the boot-info command line (RDI at entry), and then either runs the call
//! sequence, printing one `[guest] CHECK` line per call and exiting with
//! GUEST_PASS/GUEST_FAIL, or tries to reach SVSM memory (which must stop it), or
//! idles or halts. See `docs/guest-contract.md`.
#![no_std]
#![no_main]

extern crate alloc;

use nitride_guest_driver::attest::{attest, AttestBuffers, GuestBuf, Target, REPORT_SIZE};
use nitride_guest_driver::call::{CallError, SvsmClient, Transport};
use nitride_guest_driver::vhsm::{SvsmVhsmTransport, VhsmClient, VhsmError};
use nitride_protocol::attest::{ATTEST_PROTOCOL_VERSION, VHSM_SERVICE_GUID};
use nitride_protocol::emulated::exit;
use nitride_protocol::svsm::{
    call_rax, core_call, protocol, query_protocol_arg, CallRegs, ResultCode, SvsmInfo,
};
use nitride_protocol::vhsm::{KeyTemplate, KeyType, KeyUsage, Status, VmplSet, MAX_REQUEST_SIZE};
use nitride_test_guest::CallTransport;
use nitride_test_guest::{cmdline, exit_qemu, say};

mod forgery;

/// A page the guest moves its calling area to.
#[repr(C, align(4096))]
struct Page([u8; 4096]);

static mut SECOND_CAA: Page = Page([0; 4096]);

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

fn call_sequence(info: &SvsmInfo) -> ! {
    // SAFETY: the CAA from the secrets page is a guest page, identity mapped.
    let transport = unsafe { nitride_test_guest::transport(info.caa) };
    let mut svsm = SvsmClient::new(transport);
    let mut c = Checks {
        passed: 0,
        failed: 0,
    };

    let r = svsm.query_protocol(protocol::CORE, 1);
    c.check(
        "query-core-v1",
        r == Ok(Some((1, 1))),
        format_args!("{r:?}"),
    );
    let r = svsm.query_protocol(protocol::CORE, 2);
    c.check("query-core-v2", r == Ok(None), format_args!("{r:?}"));
    let r = svsm.query_protocol(0x1234, 1);
    c.check(
        "query-unknown-protocol",
        r == Ok(None),
        format_args!("{r:?}"),
    );
    let r = svsm.call(protocol::CORE, 0x99, [0; 4]);
    c.check(
        "unsupported-call",
        r == Err(CallError::Svsm(ResultCode::UnsupportedCall)),
        format_args!("{r:?}"),
    );
    rmp_calls(&mut svsm, info, &mut c);
    let r = svsm.call(0x77, 0, [0; 4]);
    c.check(
        "unsupported-protocol",
        r == Err(CallError::Svsm(ResultCode::UnsupportedProtocol)),
        format_args!("{r:?}"),
    );

    let r = svsm.remap_ca(info.caa + 8);
    c.check(
        "remap-ca-unaligned",
        r == Err(CallError::Svsm(ResultCode::InvalidParameter)),
        format_args!("{r:?}"),
    );
    let r = svsm.remap_ca(info.base);
    c.check(
        "remap-ca-svsm-memory",
        r == Err(CallError::Svsm(ResultCode::InvalidAddress)),
        format_args!("{r:?}"),
    );
    let r = svsm.remap_ca(0xFEE0_0000);
    c.check(
        "remap-ca-not-ram",
        r == Err(CallError::Svsm(ResultCode::InvalidAddress)),
        format_args!("{r:?}"),
    );
    let r = svsm.remap_ca(0xFFFF_FFFF_FFFF_F000);
    c.check(
        "remap-ca-top-of-space",
        r == Err(CallError::Svsm(ResultCode::InvalidAddress)),
        format_args!("{r:?}"),
    );

    let new_caa = core::ptr::addr_of_mut!(SECOND_CAA) as u64;
    let r = svsm.remap_ca(new_caa);
    c.check(
        "remap-ca-good",
        r == Ok(()),
        format_args!("{new_caa:#x} -> {r:?}"),
    );
    // SAFETY: SECOND_CAA is a page of this guest's memory that only the transport uses.
    unsafe { svsm.transport().set_caa(new_caa as *mut u8) };
    let r = svsm.query_protocol(protocol::CORE, 1);
    c.check(
        "call-through-new-caa",
        r == Ok(Some((1, 1))),
        format_args!("{r:?}"),
    );
    // The old CAA no longer counts: a call_pending set there is not served.
    // SAFETY: the original CAA page is guest memory, identity mapped.
    let mut old = unsafe { nitride_test_guest::transport(info.caa) };
    let regs = CallRegs {
        rax: call_rax(protocol::CORE, core_call::QUERY_PROTOCOL),
        rcx: query_protocol_arg(0, 1),
        ..CallRegs::default()
    };
    let out = old.call(regs);
    c.check(
        "old-caa-ignored",
        out.still_pending && out.regs == regs,
        format_args!("still_pending={}", out.still_pending),
    );

    // A VMGEXIT without call_pending: the SVSM must not serve it.
    let out = nitride_test_guest::raw_call(svsm.transport(), regs);
    c.check(
        "no-call-pending-not-served",
        out == regs,
        format_args!(
            "RAX {:#x} RCX {:#x} (unchanged: {})",
            out.rax,
            out.rcx,
            out == regs
        ),
    );
    let r = svsm.query_protocol(protocol::CORE, 1);
    c.check(
        "served-again-after",
        r == Ok(Some((1, 1))),
        format_args!("{r:?}"),
    );

    say!("RESULT {} passed, {} failed", c.passed, c.failed);
    exit_qemu(if c.failed == 0 {
        exit::GUEST_PASS
    } else {
        exit::GUEST_FAIL
    })
}

/// The core protocol's RMP calls on SNP: PVALIDATE (through a request in the
/// calling area, as Linux places it) and CREATE_VCPU/DELETE_VCPU, with their
/// refusals.
fn rmp_calls(svsm: &mut SvsmClient<CallTransport>, info: &SvsmInfo, c: &mut Checks) {
    use nitride_protocol::svsm::pvalidate::{self as pv, Entry};
    extern "C" {
        static __guest_end: u8;
    }
    // The page after the GHCB (the page after the image): guest RAM nobody validated.
    let free = core::ptr::addr_of!(__guest_end) as u64 + 0x1000;
    let req = info.caa + 8;
    let pvalidate = |svsm: &mut SvsmClient<CallTransport>, e: Entry| {
        // SAFETY: the calling area is this guest's page, identity mapped; the request
        // (header and one entry) fits its buffer.
        unsafe {
            core::ptr::write_volatile(req as *mut u64, 1);
            core::ptr::write_volatile((req + 8) as *mut u64, e.encode());
        }
        let r = svsm.call(protocol::CORE, core_call::PVALIDATE, [req, 0, 0, 0]);
        // SAFETY: as above.
        let next = unsafe { core::ptr::read_volatile((req + 2) as *const u16) };
        (r.map(|_| ()), next)
    };
    let entry = |gpa: u64, validate: bool| Entry {
        gpa,
        huge: false,
        validate,
        ignore_cf: false,
    };
    let r = pvalidate(svsm, entry(info.base, true));
    c.check(
        "pvalidate-svsm-page-refused",
        r == (Err(CallError::Svsm(ResultCode::InvalidAddress)), 0),
        format_args!("{r:?}"),
    );
    let r = pvalidate(svsm, entry(free, true));
    let marker = 0x5EED_0000_0000_0001u64;
    let readback = if r.0.is_ok() {
        // SAFETY: the page was just validated for this VMPL (identity mapped, private).
        unsafe {
            core::ptr::write_volatile(free as *mut u64, marker);
            core::ptr::read_volatile(free as *const u64)
        }
    } else {
        0
    };
    c.check(
        "pvalidate-validate-and-use",
        r == (Ok(()), 1) && readback == marker,
        format_args!("{r:?}, page {free:#x} reads back {readback:#x}"),
    );
    let r = pvalidate(svsm, entry(free, true));
    c.check(
        "pvalidate-unchanged",
        r == (Err(CallError::Other(pv::FAIL_UNCHANGED)), 0),
        format_args!("{r:?}"),
    );
    let r = pvalidate(svsm, entry(free, false));
    c.check("pvalidate-rescind", r == (Ok(()), 1), format_args!("{r:?}"));
    let huge = (free + (4 << 20)) & !((2 << 20) - 1);
    let r = pvalidate(
        svsm,
        Entry {
            gpa: huge,
            huge: true,
            validate: true,
            ignore_cf: false,
        },
    );
    c.check(
        "pvalidate-2m-size-mismatch",
        r == (Err(CallError::Other(pv::fail(6))), 0),
        format_args!("{r:?} (the host backs guest memory with 4 KiB RMP entries)"),
    );
    let r = svsm.call(
        protocol::CORE,
        core_call::CREATE_VCPU,
        [info.base, free, 1, 0],
    );
    c.check(
        "create-vcpu-svsm-page-refused",
        r == Err(CallError::Svsm(ResultCode::InvalidAddress)),
        format_args!("{r:?}"),
    );
    let r = svsm.call(protocol::CORE, core_call::CREATE_VCPU, [free, free, 1, 0]);
    c.check(
        "create-vcpu-same-page-refused",
        r == Err(CallError::Svsm(ResultCode::InvalidParameter)),
        format_args!("{r:?}"),
    );
    // A page of zeros is no VMSA for VMPL1 (VMPL byte 0, no SEV features).
    let r = pvalidate(svsm, entry(free, true));
    let r2 = svsm.call(
        protocol::CORE,
        core_call::CREATE_VCPU,
        [free, free + 0x1000, 1, 0],
    );
    c.check(
        "create-vcpu-bad-vmsa-refused",
        r.0.is_ok() && r2 == Err(CallError::Svsm(ResultCode::InvalidParameter)),
        format_args!("{r2:?}"),
    );
    let r = svsm.call(protocol::CORE, core_call::DELETE_VCPU, [free, 0, 0, 0]);
    c.check(
        "delete-vcpu-unknown-refused",
        r == Err(CallError::Svsm(ResultCode::InvalidParameter)),
        format_args!("{r:?}"),
    );
    for (name, call) in [
        ("deposit-mem-unsupported", core_call::DEPOSIT_MEM),
        ("withdraw-mem-unsupported", core_call::WITHDRAW_MEM),
        ("configure-vtom-unsupported", core_call::CONFIGURE_VTOM),
    ] {
        let r = svsm.call(protocol::CORE, call, [1, 0, 0, 0]);
        c.check(
            name,
            r == Err(CallError::Svsm(ResultCode::UnsupportedCall)),
            format_args!("{r:?}"),
        );
    }
}

/// Under `-icount shift=0` the TSC counts executed instructions (guest and SVSM
/// alike), which turns `rdtsc` into an exact instruction counter.
fn instructions() -> u64 {
    // SAFETY: RDTSC only reads the time-stamp counter.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// A transport that answers SUCCESS without leaving the guest: measures the
/// guest-side cost of a call.
struct NullTransport;

impl Transport for NullTransport {
    fn call(&mut self, regs: CallRegs) -> nitride_guest_driver::call::CallOutcome {
        nitride_guest_driver::call::CallOutcome {
            regs: CallRegs {
                rax: 0,
                rcx: 0x1_0000_0001,
                ..core::hint::black_box(regs)
            },
            still_pending: false,
        }
    }
}

fn per_call(n: u64, mut f: impl FnMut()) -> u64 {
    let t0 = instructions();
    for _ in 0..n {
        f();
    }
    (instructions() - t0) / n
}

fn bench(info: &SvsmInfo, at_entry: u64) -> ! {
    const N: u64 = 1000;
    // SAFETY: the CAA from the secrets page is a guest page, identity mapped.
    let mut svsm = SvsmClient::new(unsafe { nitride_test_guest::transport(info.caa) });
    let first = svsm.query_protocol(protocol::CORE, 1);
    let at_first = instructions();
    let round_trip = per_call(N, || {
        let _ = core::hint::black_box(svsm.query_protocol(protocol::CORE, 1));
    });
    let mut null = SvsmClient::new(NullTransport);
    let guest_side = per_call(N, || {
        let _ = core::hint::black_box(null.query_protocol(protocol::CORE, 1));
    });
    let regs = CallRegs {
        rax: call_rax(protocol::CORE, core_call::QUERY_PROTOCOL),
        ..CallRegs::default()
    };
    let ignored = per_call(N, || {
        core::hint::black_box(nitride_test_guest::raw_call(svsm.transport(), regs));
    });
    say!("BENCH qemu_start_to_guest_entry_insns={at_entry}");
    say!("BENCH qemu_start_to_first_served_call_insns={at_first}");
    say!("BENCH query_protocol_round_trip_insns={round_trip}");
    say!("BENCH query_protocol_guest_side_insns={guest_side}");
    say!(
        "BENCH query_protocol_svsm_side_insns={}",
        round_trip.saturating_sub(guest_side)
    );
    say!("BENCH ignored_vmmcall_round_trip_insns={ignored}");
    exit_qemu(if first == Ok(Some((1, 1))) {
        exit::GUEST_PASS
    } else {
        exit::GUEST_FAIL
    })
}

#[repr(C, align(4096))]
struct Buffer([u8; MAX_REQUEST_SIZE]);

static mut VHSM_REQUEST: Buffer = Buffer([0; MAX_REQUEST_SIZE]);
static mut VHSM_RESPONSE: Buffer = Buffer([0; MAX_REQUEST_SIZE]);

/// A typed vHSM client over this guest's own SVSM calls (once per boot).
fn vhsm_client(info: &SvsmInfo) -> VhsmClient<SvsmVhsmTransport<'static, CallTransport>> {
    // SAFETY: the CAA from the secrets page is a guest page, identity mapped.
    let svsm = SvsmClient::new(unsafe { nitride_test_guest::transport(info.caa) });
    // SAFETY: this function runs once and is the only user of the two buffers.
    let (req, resp) = unsafe {
        (
            &mut (*core::ptr::addr_of_mut!(VHSM_REQUEST)).0,
            &mut (*core::ptr::addr_of_mut!(VHSM_RESPONSE)).0,
        )
    };
    let (req_gpa, resp_gpa) = (req.as_ptr() as u64, resp.as_ptr() as u64);
    let Some(transport) = SvsmVhsmTransport::new(svsm, req, req_gpa, resp, resp_gpa) else {
        say!("vhsm buffers too small");
        exit_qemu(exit::GUEST_FAIL)
    };
    VhsmClient::new(transport)
}

/// `count` mixed requests (cheap operations, with a signature, key churn and an
/// audit read now and then); the SVSM reports its heap every 1,000 requests.
fn load(info: &SvsmInfo, count: u32) -> ! {
    let mut vhsm = vhsm_client(info);
    let all = VmplSet::all();
    let keys = (
        vhsm.generate(
            KeyTemplate::new(
                KeyType::HmacSha384,
                KeyUsage::SIGN | KeyUsage::VERIFY,
                all,
                false,
            ),
            b"hmac",
        ),
        vhsm.generate(
            KeyTemplate::new(
                KeyType::Aes256,
                KeyUsage::ENCRYPT | KeyUsage::DECRYPT,
                all,
                false,
            ),
            b"aes",
        ),
        vhsm.generate(
            KeyTemplate::new(
                KeyType::Ed25519,
                KeyUsage::SIGN | KeyUsage::VERIFY,
                all,
                false,
            ),
            b"ed",
        ),
    );
    let (Ok(hmac), Ok(aes), Ok(ed)) = keys else {
        say!("load: key generation failed: {keys:?}");
        exit_qemu(exit::GUEST_FAIL)
    };
    let (hmac, aes, ed) = (hmac.key_id.get(), aes.key_id.get(), ed.key_id.get());
    let mut failures = 0u32;
    let data = [0x5Au8; 256];
    let mut done = 3u32;
    while done < count {
        let ok = match done % 10 {
            0 | 5 => vhsm.random(64).is_ok(),
            1 | 6 => vhsm.sign(hmac, &data).is_ok(),
            2 => vhsm
                .encrypt(aes, b"aad", &data)
                .and_then(|ct| vhsm.decrypt(aes, b"aad", &ct))
                .is_ok_and(|pt| pt == data),
            3 => vhsm.list().is_ok(),
            4 => vhsm.attributes(aes).is_ok(),
            7 if done % 1000 == 7 => vhsm.audit(0).is_ok(),
            7 if done % 500 == 17 => {
                let t = KeyTemplate::new(KeyType::Aes256, KeyUsage::ENCRYPT, all, false);
                vhsm.generate(t, b"churn")
                    .and_then(|k| vhsm.delete(k.key_id.get()))
                    .is_ok()
            }
            8 => vhsm.sign(ed, &data).is_ok(),
            _ => {
                vhsm.verify(hmac, &data, &[0u8; 48])
                    == Err(VhsmError::Status(Status::SignatureInvalid))
            }
        };
        // Encrypt+decrypt and generate+delete are two requests.
        done += if done % 10 == 2 || (done % 10 == 7 && done % 500 == 17) {
            2
        } else {
            1
        };
        if !ok {
            failures += 1;
        }
    }
    say!("LOAD {done} requests, {failures} failures");
    exit_qemu(if failures == 0 {
        exit::GUEST_PASS
    } else {
        exit::GUEST_FAIL
    })
}

/// Instructions per vHSM round trip for each operation (`-icount shift=0`).
fn bench_vhsm(info: &SvsmInfo) -> ! {
    let mut vhsm = vhsm_client(info);
    let all = VmplSet::all();
    let mut gen = |t, u| {
        vhsm.generate(KeyTemplate::new(t, u, all, false), b"")
            .map(|k| k.key_id.get())
            .unwrap_or(0)
    };
    let ec = gen(KeyType::EcdsaP384, KeyUsage::SIGN | KeyUsage::VERIFY);
    let ed = gen(KeyType::Ed25519, KeyUsage::SIGN | KeyUsage::VERIFY);
    let hm = gen(KeyType::HmacSha384, KeyUsage::SIGN | KeyUsage::VERIFY);
    let aes = gen(KeyType::Aes256, KeyUsage::ENCRYPT | KeyUsage::DECRYPT);
    let msg = [0x42u8; 64];
    let kib = [0x17u8; 1024];
    let ec_sig = vhsm.sign(ec, &msg).unwrap_or_default();
    let ed_sig = vhsm.sign(ed, &msg).unwrap_or_default();
    let mut failures = 0u32;
    let mut run = |name: &str, n: u64, f: &mut dyn FnMut(&mut VhsmClient<_>) -> bool| {
        let mut ok = true;
        let per = per_call(n, || ok &= f(&mut vhsm));
        failures += u32::from(!ok);
        say!("BENCH vhsm_{name}_insns={per}");
    };
    run("get_attributes", 200, &mut |v| v.attributes(aes).is_ok());
    run("random32", 200, &mut |v| v.random(32).is_ok());
    run("hmac_sign64", 200, &mut |v| v.sign(hm, &msg).is_ok());
    run("aes_gcm_encrypt1k", 100, &mut |v| {
        v.encrypt(aes, b"", &kib).is_ok()
    });
    run("ed25519_sign64", 50, &mut |v| v.sign(ed, &msg).is_ok());
    run("ed25519_verify64", 50, &mut |v| {
        v.verify(ed, &msg, &ed_sig).is_ok()
    });
    run("ecdsa_p384_sign64", 20, &mut |v| v.sign(ec, &msg).is_ok());
    run("ecdsa_p384_verify64", 20, &mut |v| {
        v.verify(ec, &msg, &ec_sig).is_ok()
    });
    exit_qemu(if failures == 0 {
        exit::GUEST_PASS
    } else {
        exit::GUEST_FAIL
    })
}

/// Instructions per sealing round trip (`-icount shift=0`): Seal and Unseal of 1 KiB,
/// ExportState and ImportState with 1, 16 and 64 persistent keys (ECDSA P-384), and
/// the state blob's size. Every sealing call asks the PSP for a derived key.
fn bench_seal(info: &SvsmInfo) -> ! {
    let mut vhsm = vhsm_client(info);
    let mut failures = 0u32;
    let kib = [0x17u8; 1024];
    let blob = vhsm.seal(VmplSet::VMPL1, &kib).unwrap_or_default();
    let mut count = |ok: bool| failures += u32::from(!ok);
    let per = per_call(10, || count(vhsm.seal(VmplSet::VMPL1, &kib).is_ok()));
    say!("BENCH seal_seal1k_insns={per}");
    let per = per_call(10, || {
        count(vhsm.unseal(&blob).is_ok_and(|u| u.data == kib));
    });
    say!("BENCH seal_unseal1k_insns={per}");
    let t = KeyTemplate::new(
        KeyType::EcdsaP384,
        KeyUsage::SIGN | KeyUsage::VERIFY,
        VmplSet::all(),
        false,
    )
    .persistent();
    let mut ids = alloc::vec::Vec::new();
    for keys in [1usize, 16, 64] {
        while ids.len() < keys {
            match vhsm.generate(t, b"bench") {
                Ok(k) => ids.push(k.key_id.get()),
                Err(e) => {
                    say!("bench-seal: generate failed: {e:?}");
                    exit_qemu(exit::GUEST_FAIL)
                }
            }
        }
        let mut state = alloc::vec::Vec::new();
        let per = per_call(5, || match vhsm.export_state() {
            Ok((_, b)) => state = b,
            Err(_) => failures += 1,
        });
        say!("BENCH seal_export{keys}_insns={per}");
        say!("BENCH seal_state{keys}_bytes={}", state.len());
        // ImportState needs an empty vault: delete the keys (not measured), import.
        let mut total = 0;
        for _ in 0..3 {
            for &id in &ids {
                failures += u32::from(vhsm.delete(id).is_err());
            }
            let t0 = instructions();
            let ok = vhsm
                .import_state(&state)
                .is_ok_and(|i| i.keys as usize == keys);
            total += instructions() - t0;
            failures += u32::from(!ok);
        }
        say!("BENCH seal_import{keys}_insns={}", total / 3);
    }
    say!("bench-seal: {failures} failures");
    exit_qemu(if failures == 0 {
        exit::GUEST_PASS
    } else {
        exit::GUEST_FAIL
    })
}

/// A page-aligned guest buffer of `N` bytes.
#[repr(C, align(4096))]
struct Pages<const N: usize>([u8; N]);

/// The buffers of the attestation bench: request, nonce, report, manifest,
/// certificates.
struct AttestMemory {
    request: Pages<4096>,
    nonce: Pages<4096>,
    report: Pages<4096>,
    manifest: Pages<{ 16 * 1024 }>,
    certificates: Pages<{ 16 * 1024 }>,
}

static mut ATTEST_MEMORY: AttestMemory = AttestMemory {
    request: Pages([0; 4096]),
    nonce: Pages([0; 4096]),
    report: Pages([0; 4096]),
    manifest: Pages([0; 16 * 1024]),
    certificates: Pages([0; 16 * 1024]),
};

/// Attestation calls measured per request kind (each is millions of instructions).
const ATTEST_CALLS: u64 = 5;

/// Instructions per attestation request (`-icount shift=0`): the attestation
/// protocol's ATTEST_SERVICES with and without certificates and
/// ATTEST_SINGLE_SERVICE of the vHSM, and the vHSM's AttestKey of a P-384 key;
/// first with one attestable key, then with 17 (a larger manifest to hash).
///
/// Before each measured batch the guest prints `ATTEST-BEGIN <name>` so the
/// runner can put the SVSM's per-request log lines (its own split of the cost)
/// beside the guest's `BENCH attest_<name>_insns=N`.
fn bench_attest(info: &SvsmInfo) -> ! {
    let mut vhsm = vhsm_client(info);
    // SAFETY: the CAA from the secrets page is a guest page, identity mapped; this
    // client and the vHSM client's share it but never call at the same time (one
    // thread, each call completes before the next).
    let mut svsm = SvsmClient::new(unsafe { nitride_test_guest::transport(info.caa) });
    let served = svsm.query_protocol(protocol::ATTESTATION, ATTEST_PROTOCOL_VERSION);
    say!("attestation protocol: {served:?}");
    if !matches!(served, Ok(Some((max, min))) if min <= ATTEST_PROTOCOL_VERSION && ATTEST_PROTOCOL_VERSION <= max)
    {
        say!("attestation protocol {ATTEST_PROTOCOL_VERSION} not served");
        exit_qemu(exit::GUEST_FAIL)
    }
    // SAFETY: this function runs once and is the only user of ATTEST_MEMORY.
    let m = unsafe { &mut *core::ptr::addr_of_mut!(ATTEST_MEMORY) };
    let gpa = |b: &[u8]| b.as_ptr() as u64;
    let (request_gpa, nonce_gpa, report_gpa, manifest_gpa, certs_gpa) = (
        gpa(&m.request.0),
        gpa(&m.nonce.0),
        gpa(&m.report.0),
        gpa(&m.manifest.0),
        gpa(&m.certificates.0),
    );
    let mut bufs = AttestBuffers {
        request: GuestBuf {
            bytes: &mut m.request.0,
            gpa: request_gpa,
        },
        nonce: GuestBuf {
            bytes: &mut m.nonce.0,
            gpa: nonce_gpa,
        },
        report: GuestBuf {
            bytes: &mut m.report.0,
            gpa: report_gpa,
        },
        manifest: GuestBuf {
            bytes: &mut m.manifest.0,
            gpa: manifest_gpa,
        },
        certificates: None,
    };
    // Lent to `bufs` for the requests that ask for certificates.
    let mut cert_buf = Some(GuestBuf {
        bytes: &mut m.certificates.0,
        gpa: certs_gpa,
    });
    let nonce = [0x6Eu8; 64];
    let attestable = KeyTemplate::new(
        KeyType::EcdsaP384,
        KeyUsage::SIGN | KeyUsage::VERIFY | KeyUsage::ATTEST,
        VmplSet::all(),
        false,
    );
    let mut failures = 0u32;
    let Ok(key) = vhsm.generate(attestable, b"attested") else {
        say!("bench-attest: key generation failed");
        exit_qemu(exit::GUEST_FAIL)
    };
    let key = key.key_id.get();
    let single = Target::SingleService {
        guid: VHSM_SERVICE_GUID,
        manifest_version: 0,
    };
    let mut attestable_keys = 1;
    for keys in [1u32, 17] {
        // Attestable keys beyond the first: each adds its entry to the vHSM manifest.
        for _ in attestable_keys..keys {
            failures += u32::from(vhsm.generate(attestable, b"more").is_err());
        }
        attestable_keys = keys;
        let kinds: [(&str, Option<Target>, bool); 4] = [
            ("services_certs", Some(Target::Services), true),
            ("services", Some(Target::Services), false),
            ("single_vhsm", Some(single), false),
            ("attest_key", None, true),
        ];
        for (kind, target, certs) in kinds {
            let name = format_args!("{kind}_keys{keys}");
            let mut lens = (0, 0, 0);
            let mut ok = true;
            say!("ATTEST-BEGIN {name}");
            let per = match target {
                Some(target) => {
                    let mut call = || {
                        if certs {
                            bufs.certificates = cert_buf.take();
                        }
                        let r = attest(&mut svsm, target, &nonce, &mut bufs);
                        if certs {
                            cert_buf = bufs.certificates.take();
                        }
                        r
                    };
                    per_call(ATTEST_CALLS, || match call() {
                        Ok(e)
                            if e.report_len == REPORT_SIZE
                                && e.manifest_len != 0
                                && (e.certificates_len != 0) == certs =>
                        {
                            lens = (e.report_len, e.manifest_len, e.certificates_len)
                        }
                        _ => ok = false,
                    })
                }
                None => per_call(ATTEST_CALLS, || match vhsm.attest_key(key, &nonce) {
                    Ok(e) if e.report.len() == REPORT_SIZE && !e.certificates.is_empty() => {
                        lens = (e.report.len(), e.binding.len(), e.certificates.len())
                    }
                    _ => ok = false,
                }),
            };
            failures += u32::from(!ok);
            say!(
                "BENCH attest_{name}_insns={per} (report {}, manifest/binding {}, certificates {} bytes{})",
                lens.0,
                lens.1,
                lens.2,
                if ok { "" } else { ", FAILED" }
            );
        }
    }
    say!("bench-attest: {failures} failures");
    exit_qemu(if failures == 0 {
        exit::GUEST_PASS
    } else {
        exit::GUEST_FAIL
    })
}

/// The typed vHSM client over this guest's own SVSM calls.
fn vhsm_sequence(info: &SvsmInfo) -> ! {
    let mut vhsm = vhsm_client(info);
    let mut c = Checks {
        passed: 0,
        failed: 0,
    };
    let r = vhsm.random(32);
    c.check(
        "vhsm-random",
        r.as_ref().is_ok_and(|b| b.len() == 32),
        format_args!("{:?}", r.as_ref().map(|b| b.len())),
    );
    let t = KeyTemplate::new(
        KeyType::EcdsaP384,
        KeyUsage::SIGN | KeyUsage::VERIFY,
        VmplSet::all(),
        false,
    );
    let key = vhsm.generate(t, b"guest-key");
    c.check(
        "vhsm-generate",
        key.is_ok(),
        format_args!("{:?}", key.as_ref().map(|k| k.key_id.get())),
    );
    let id = key.map(|k| k.key_id.get()).unwrap_or(0);
    let sig = vhsm.sign(id, b"message from VMPL1").unwrap_or_default();
    c.check(
        "vhsm-sign",
        !sig.is_empty(),
        format_args!("{} signature bytes", sig.len()),
    );
    let v = vhsm.verify(id, b"message from VMPL1", &sig);
    c.check("vhsm-verify", v.is_ok(), format_args!("{v:?}"));
    let v = vhsm.verify(id, b"another message", &sig);
    c.check(
        "vhsm-verify-wrong-message",
        v == Err(VhsmError::Status(Status::SignatureInvalid)),
        format_args!("{v:?}"),
    );
    let wrap = vhsm.wrap(id, id);
    c.check(
        "vhsm-no-export",
        matches!(wrap, Err(VhsmError::Status(_))),
        format_args!("{wrap:?}"),
    );
    say!("RESULT {} passed, {} failed", c.passed, c.failed);
    exit_qemu(if c.failed == 0 {
        exit::GUEST_PASS
    } else {
        exit::GUEST_FAIL
    })
}

fn isolation(mode: &str, info: &SvsmInfo) -> ! {
    // Aim into the middle of the SVSM region and at its very first byte.
    let target = match mode {
        "read-svsm-end" => info.base + info.size - 8,
        _ => info.base + 0x1000,
    };
    say!("ISOLATION {mode}: touching SVSM memory at {target:#x}");
    match mode {
        "read-svsm" | "read-svsm-end" => {
            // SAFETY: deliberately reads SVSM memory; the SVSM must stop the guest.
            let v = unsafe { core::ptr::read_volatile(target as *const u64) };
            say!("ISOLATION BROKEN: read {v:#x}");
        }
        "write-svsm" => {
            // SAFETY: deliberately writes SVSM memory; the SVSM must stop the guest.
            unsafe { core::ptr::write_volatile(target as *mut u64, 0x4141_4141_4141_4141) };
            say!("ISOLATION BROKEN: write went through");
        }
        "exec-svsm" => {
            // SAFETY: deliberately jumps into SVSM memory; the SVSM must stop the guest.
            let f: extern "C" fn() = unsafe { core::mem::transmute(target as usize) };
            f();
            say!("ISOLATION BROKEN: executed SVSM code");
        }
        "read-mmio" => {
            // SAFETY: deliberately reads outside guest RAM (the local APIC page).
            let v = unsafe { core::ptr::read_volatile(0xFEE0_0030 as *const u32) };
            say!("ISOLATION BROKEN: read {v:#x} outside guest RAM");
        }
        _ => say!("unknown mode {mode}"),
    }
    exit_qemu(exit::GUEST_FAIL)
}

#[no_mangle]
extern "C" fn guest_main(boot_info_gpa: u64, secrets_gpa: u64) -> ! {
    let at_entry = instructions();
    let info = nitride_test_guest::start(secrets_gpa);
    let cmd = cmdline(boot_info_gpa);
    let mode = cmd
        .split_ascii_whitespace()
        .find_map(|w| w.strip_prefix("mode="))
        .unwrap_or("calls");
    say!("test guest up, mode {mode}");
    say!(
        "SVSM at {:#x} size {:#x}, CAA {:#x}, guest VMPL {}, protocol max version {}",
        info.base,
        info.size,
        info.caa,
        info.guest_vmpl,
        info.max_version
    );
    match mode {
        "calls" => call_sequence(&info),
        "bench" => bench(&info, at_entry),
        "vhsm" => vhsm_sequence(&info),
        "bench-vhsm" => bench_vhsm(&info),
        "bench-attest" => bench_attest(&info),
        "bench-seal" => bench_seal(&info),
        "forgery" => forgery::run(&info),
        "load" => {
            let count = cmd
                .split_ascii_whitespace()
                .find_map(|w| w.strip_prefix("count="));
            load(&info, count.and_then(|c| c.parse().ok()).unwrap_or(10_000))
        }
        "idle" => {
            say!("idling without calling the SVSM");
            loop {
                core::hint::spin_loop();
            }
        }
        "halt" => {
            say!("halting with interrupts off");
            nitride_test_guest::halt_forever()
        }
        other => isolation(other, &info),
    }
}
