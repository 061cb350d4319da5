//! Tests of the request loop and the protocols, on a scripted platform.
use super::*;
use crate::memory::{GuestMemoryMap, GuestRange, PhysRange};
use crate::platform::GuestMemoryError;
use alloc::vec;
use nitride_protocol::svsm::{call_rax, query_protocol_arg};
use nitride_protocol::svsm::{core_call, vhsm_call, CallRegs};
use nitride_protocol::vhsm::{HEADER_SIZE, MAX_REQUEST_SIZE, MAX_RESPONSE_SIZE};
use std::collections::VecDeque;
use std::vec::Vec;

/// A platform whose guest is a script of calls over a small RAM.
pub(crate) struct MockPlatform {
    pub map: GuestMemoryMap,
    pub ram: Vec<u8>,
    pub exits: VecDeque<(GuestExit, Option<CallRegs>)>,
    pub regs: CallRegs,
    pub results: Vec<CallRegs>,
    /// Whether the fake PSP is there.
    pub attest: bool,
    /// Make the fake PSP fail.
    pub attest_fail: Option<crate::platform::AttestError>,
    /// What the fake PSP was asked: REPORT_DATA, with certificates.
    pub asked: Vec<([u8; 64], bool)>,
    /// A fake RMP (validated pages), or `None`: the platform has none.
    pub rmp: Option<std::collections::BTreeSet<u64>>,
    /// PVALIDATEs the platform was asked for: (GPA, size, validate).
    pub pvalidated: Vec<(u64, crate::platform::PageSize, bool)>,
    /// CREATE_VCPU requests that reached the platform.
    pub vcpus: Vec<(u64, u64, u32)>,
}

/// The fake PSP's certificate table length.
pub(crate) const FAKE_CERTS_LEN: usize = 0x380;

/// The fake PSP's report: 0xA5 everywhere but REPORT_DATA (0x50..0x90).
pub(crate) fn fake_report(report_data: &[u8; 64]) -> Vec<u8> {
    let mut report = vec![0xA5u8; nitride_protocol::snp::report::REPORT_SIZE];
    report[0x50..0x90].copy_from_slice(report_data);
    report
}

impl MockPlatform {
    pub(crate) fn new() -> Self {
        let ram = [PhysRange::new(0, 0x40_0000).unwrap()];
        let map = GuestMemoryMap::new(&ram, PhysRange::new(0x20_0000, 0x40_0000).unwrap()).unwrap();
        Self {
            map,
            ram: vec![0; 0x20_0000],
            exits: VecDeque::new(),
            regs: CallRegs::default(),
            results: Vec::new(),
            attest: false,
            attest_fail: None,
            asked: Vec::new(),
            rmp: None,
            pvalidated: Vec::new(),
            vcpus: Vec::new(),
        }
    }

    /// Queue a call; `pending` says whether the guest set call_pending.
    pub(crate) fn call(&mut self, rax: u64, rcx: u64, pending: bool) {
        let regs = CallRegs {
            rax,
            rcx,
            rdx: 0xD,
            r8: 0x8,
            r9: 0x9,
        };
        self.exits.push_back((GuestExit::SvsmCall, Some(regs)));
        // The pending flag is set when the call is taken off the queue.
        if !pending {
            self.exits.back_mut().unwrap().1.as_mut().unwrap().r9 = u64::MAX;
        }
    }
}

impl Platform for MockPlatform {
    fn run_guest(&mut self) -> GuestExit {
        if let Some(prev) = self.results.last_mut() {
            *prev = self.regs;
        }
        match self.exits.pop_front() {
            Some((exit, Some(regs))) => {
                let caa = CAA as usize;
                self.ram[caa] = u8::from(regs.r9 != u64::MAX);
                self.regs = regs;
                self.results.push(regs);
                exit
            }
            Some((exit, None)) => exit,
            None => GuestExit::Halted { rip: 0 },
        }
    }
    fn call_regs(&self) -> CallRegs {
        self.regs
    }
    fn set_call_regs(&mut self, regs: &CallRegs) {
        self.regs = *regs;
    }
    fn caller_vmpl(&self) -> u8 {
        1
    }
    fn memory(&self) -> &GuestMemoryMap {
        &self.map
    }
    fn read_guest(&self, range: GuestRange, out: &mut [u8]) -> Result<(), GuestMemoryError> {
        let at = range.gpa() as usize;
        out.copy_from_slice(
            self.ram
                .get(at..at + out.len())
                .ok_or(GuestMemoryError::LengthMismatch)?,
        );
        Ok(())
    }
    fn cycles(&self) -> u64 {
        0
    }
    fn attestation_available(&self) -> bool {
        self.attest
    }
    fn attestation_report(
        &mut self,
        report_data: &[u8; 64],
        certificates: bool,
    ) -> Result<crate::platform::Evidence, crate::platform::AttestError> {
        if !self.attest {
            return Err(crate::platform::AttestError::Unavailable);
        }
        self.asked.push((*report_data, certificates));
        if let Some(e) = self.attest_fail {
            return Err(e);
        }
        let certificates = if certificates {
            (0..FAKE_CERTS_LEN).map(|i| i as u8).collect()
        } else {
            Vec::new()
        };
        Ok(crate::platform::Evidence {
            report: fake_report(report_data),
            certificates,
        })
    }
    fn write_guest(&mut self, range: GuestRange, data: &[u8]) -> Result<(), GuestMemoryError> {
        let at = range.gpa() as usize;
        self.ram
            .get_mut(at..at + data.len())
            .ok_or(GuestMemoryError::LengthMismatch)?
            .copy_from_slice(data);
        Ok(())
    }
    fn rmp_available(&self) -> bool {
        self.rmp.is_some()
    }
    fn pvalidate_guest(
        &mut self,
        gpa: u64,
        size: crate::platform::PageSize,
        validate: bool,
    ) -> Result<bool, crate::platform::RmpError> {
        let Some(rmp) = self.rmp.as_mut() else {
            return Err(crate::platform::RmpError::Unsupported);
        };
        self.pvalidated.push((gpa, size, validate));
        if size == crate::platform::PageSize::Large {
            // A host that backs guest memory with 4 KiB RMP entries.
            return Err(crate::platform::RmpError::Failed(6));
        }
        Ok(if validate {
            rmp.insert(gpa)
        } else {
            rmp.remove(&gpa)
        })
    }
    fn create_vcpu(
        &mut self,
        vmsa: u64,
        caa: u64,
        apic_id: u32,
    ) -> Result<(), crate::platform::VcpuError> {
        if self.rmp.is_none() {
            return Err(crate::platform::VcpuError::Unsupported);
        }
        self.vcpus.push((vmsa, caa, apic_id));
        // A hypervisor that runs one vCPU.
        Err(crate::platform::VcpuError::Refused)
    }
}

const CAA: u64 = 0x1000;

/// Entropy for host tests: a counter, deterministic but never repeating.
pub(crate) struct TestEntropy(u8);

impl nitride_vhsm::Platform for TestEntropy {
    fn entropy(&mut self, out: &mut [u8]) -> Result<(), nitride_vhsm::PlatformError> {
        for b in out {
            self.0 = self.0.wrapping_add(1);
            *b = self.0;
        }
        Ok(())
    }
}

type TestVault = nitride_vhsm::Vault<TestEntropy>;

fn vault() -> TestVault {
    nitride_vhsm::Vault::new(TestEntropy(0), nitride_vhsm::VaultPolicy::default()).unwrap()
}

fn run(p: MockPlatform) -> (Svsm<MockPlatform, TestVault>, GuestExit) {
    run_with(p, None)
}

fn run_with(p: MockPlatform, v: Option<TestVault>) -> (Svsm<MockPlatform, TestVault>, GuestExit) {
    let mut s = Svsm::new(p, v, CAA);
    let stop = s.run();
    (s, stop)
}

const REQ: u64 = 0x4000;
const RESP: u64 = 0x1_0000;
const RESP_SIZE: u64 = MAX_RESPONSE_SIZE as u64;

fn random_request(n: u32) -> std::vec::Vec<u8> {
    let mut buf = vec![0u8; 64];
    let len = nitride_protocol::vhsm::Request::Random { len: n }
        .encode(7, &mut buf)
        .unwrap();
    buf.truncate(len);
    buf
}

fn vhsm_call(p: &mut MockPlatform, rcx: u64, rdx: u64, r8: u64, r9: u64) {
    let regs = CallRegs {
        rax: call_rax(protocol::VHSM, vhsm_call::REQUEST),
        rcx,
        rdx,
        r8,
        r9,
    };
    p.exits.push_back((GuestExit::SvsmCall, Some(regs)));
}

#[test]
fn vhsm_protocol_is_advertised_only_with_a_vault() {
    for (with_vault, expected) in [(true, (1u64 << 32) | 1), (false, 0)] {
        let mut p = MockPlatform::new();
        p.call(
            call_rax(protocol::CORE, core_call::QUERY_PROTOCOL),
            query_protocol_arg(protocol::VHSM, 1),
            true,
        );
        vhsm_call(&mut p, REQ, 32, RESP, RESP_SIZE);
        let (s, _) = run_with(p, with_vault.then(vault));
        let r = &s.platform().results;
        assert_eq!(r[0].rcx, expected);
        if !with_vault {
            assert_eq!(r[1].rax, ResultCode::UnsupportedProtocol.raw());
        }
    }
}

#[test]
fn vhsm_request_is_served_into_the_response_buffer() {
    let mut p = MockPlatform::new();
    let req = random_request(32);
    p.ram[REQ as usize..][..req.len()].copy_from_slice(&req);
    vhsm_call(&mut p, REQ, req.len() as u64, RESP, RESP_SIZE);
    let mut unknown = req.clone();
    unknown[2] = 0xEE; // op
    p.ram[0x8000..][..unknown.len()].copy_from_slice(&unknown);
    vhsm_call(&mut p, 0x8000, unknown.len() as u64, 0x2_0000, RESP_SIZE);
    let regs = CallRegs {
        rax: call_rax(protocol::VHSM, 9),
        ..CallRegs::default()
    };
    p.exits.push_back((GuestExit::SvsmCall, Some(regs)));
    let (s, _) = run_with(p, Some(vault()));
    let r = &s.platform().results;
    assert_eq!(r[0].rax, 0);
    assert_eq!(r[0].rcx, (HEADER_SIZE + 32) as u64);
    let ram = &s.platform().ram;
    let resp = nitride_protocol::vhsm::Response::decode(&ram[RESP as usize..][..r[0].rcx as usize])
        .unwrap();
    assert_eq!(resp.status(), Some(nitride_protocol::vhsm::Status::Ok));
    assert_eq!(resp.header.request_id.get(), 7);
    assert_eq!(resp.body.len(), 32);
    // An unknown operation is a typed error inside a served call.
    assert_eq!(r[1].rax, 0);
    let resp =
        nitride_protocol::vhsm::Response::decode(&ram[0x2_0000..][..r[1].rcx as usize]).unwrap();
    assert_ne!(resp.status(), Some(nitride_protocol::vhsm::Status::Ok));
    assert_eq!(r[2].rax, ResultCode::UnsupportedCall.raw());
}

#[test]
fn vhsm_buffers_are_checked_before_anything_runs() {
    let mut p = MockPlatform::new();
    let req = random_request(16);
    p.ram[REQ as usize..][..req.len()].copy_from_slice(&req);
    let n = req.len() as u64;
    let max_req = MAX_REQUEST_SIZE as u64;
    let cases: &[(u64, u64, u64, u64, ResultCode)] = &[
        (0x20_0000, n, RESP, RESP_SIZE, ResultCode::InvalidAddress), // request in SVSM memory
        (0x1F_FFF0, 0x20, RESP, RESP_SIZE, ResultCode::InvalidAddress), // request runs into SVSM memory
        (CAA + 8, n, RESP, RESP_SIZE, ResultCode::InvalidAddress),      // request overlaps the CAA
        (u64::MAX - 8, n, RESP, RESP_SIZE, ResultCode::InvalidAddress), // wraps around
        (
            REQ,
            max_req + 1,
            RESP,
            RESP_SIZE,
            ResultCode::InvalidAddress,
        ), // larger than the limit
        (REQ, 0, RESP, RESP_SIZE, ResultCode::InvalidAddress),          // empty
        (REQ, n, 0x20_0000, RESP_SIZE, ResultCode::InvalidAddress),     // response in SVSM memory
        (REQ, n, 0x1F_C000, RESP_SIZE, ResultCode::InvalidAddress),     // response runs into it
        (REQ, n, CAA - 0x1000, RESP_SIZE, ResultCode::InvalidAddress),  // response overlaps the CAA
        (
            REQ,
            n,
            u64::MAX - 0x100,
            RESP_SIZE,
            ResultCode::InvalidAddress,
        ), // response wraps
        (REQ, n, RESP, RESP_SIZE - 1, ResultCode::InvalidParameter),    // response too small
        (
            REQ,
            HEADER_SIZE as u64 - 1,
            RESP,
            RESP_SIZE,
            ResultCode::InvalidFormat,
        ), // truncated header
        (REQ, n - 1, RESP, RESP_SIZE, ResultCode::InvalidFormat), // body shorter than header says
        (REQ, n + 1, RESP, RESP_SIZE, ResultCode::InvalidFormat), // trailing byte
    ];
    p.ram[RESP as usize..][..RESP_SIZE as usize].fill(0xAB);
    for &(rcx, rdx, r8, r9, _) in cases {
        vhsm_call(&mut p, rcx, rdx, r8, r9);
    }
    vhsm_call(&mut p, REQ, n, RESP, RESP_SIZE);
    let (s, _) = run_with(p, Some(vault()));
    let r = &s.platform().results;
    for (i, &(.., code)) in cases.iter().enumerate() {
        assert_eq!(r[i].rax, code.raw(), "case {i}");
    }
    assert_eq!(r[10].rcx, RESP_SIZE, "the needed size is reported");
    // Nothing was written by the refused calls, and the SVSM still serves.
    assert_eq!(r[cases.len()].rax, 0);
    let audit = s.vhsm.as_ref().unwrap().audit_log();
    assert_eq!(
        audit.since(0).count(),
        1,
        "refused calls never reached the vault"
    );
}

#[test]
fn core_protocol_calls() {
    let mut p = MockPlatform::new();
    let q = call_rax(protocol::CORE, core_call::QUERY_PROTOCOL);
    p.call(q, query_protocol_arg(protocol::CORE, 1), true);
    p.call(q, query_protocol_arg(protocol::CORE, 2), true);
    p.call(q, query_protocol_arg(0x77, 1), true);
    p.call(call_rax(protocol::CORE, core_call::PVALIDATE), 0, true);
    p.call(call_rax(0x77, 0), 0, true);
    p.call(call_rax(protocol::CORE, core_call::REMAP_CA), 0x3000, true);
    let (s, stop) = run(p);
    assert_eq!(stop, GuestExit::Halted { rip: 0 });
    let r = &s.platform().results;
    assert_eq!((r[0].rax, r[0].rcx), (0, (1 << 32) | 1));
    assert_eq!((r[1].rax, r[1].rcx), (0, 0));
    assert_eq!((r[2].rax, r[2].rcx), (0, 0));
    assert_eq!(r[3].rax, ResultCode::UnsupportedCall.raw());
    assert_eq!(r[4].rax, ResultCode::UnsupportedProtocol.raw());
    assert_eq!(r[5].rax, 0);
    // Registers that carry no output are left alone.
    assert_eq!((r[0].rdx, r[0].r8, r[0].r9), (0xD, 0x8, 0x9));
    assert_eq!(s.caa_gpa(), 0x3000);
    assert_eq!(
        s.stats(),
        Stats {
            served: 6,
            ignored: 0
        }
    );
    // call_pending was cleared in the (old) CAA.
    assert_eq!(s.platform().ram[CAA as usize], 0);
}

#[test]
fn remap_ca_checks_the_address() {
    let mut p = MockPlatform::new();
    let remap = call_rax(protocol::CORE, core_call::REMAP_CA);
    p.call(remap, 0x3008, true);
    p.call(remap, 0x20_0000, true);
    p.call(remap, 0x40_0000, true);
    p.call(remap, !0xFFF, true);
    let (s, _) = run(p);
    let r = &s.platform().results;
    assert_eq!(r[0].rax, ResultCode::InvalidParameter.raw());
    assert_eq!(r[1].rax, ResultCode::InvalidAddress.raw());
    assert_eq!(r[2].rax, ResultCode::InvalidAddress.raw());
    assert_eq!(r[3].rax, ResultCode::InvalidAddress.raw());
    assert_eq!(s.caa_gpa(), CAA);
}

#[test]
fn calls_without_call_pending_are_not_served() {
    let mut p = MockPlatform::new();
    let q = call_rax(protocol::CORE, core_call::QUERY_PROTOCOL);
    p.call(q, query_protocol_arg(protocol::CORE, 1), false);
    let (s, _) = run(p);
    let r = &s.platform().results;
    assert_eq!(
        (r[0].rax, r[0].rcx),
        (q, query_protocol_arg(protocol::CORE, 1))
    );
    assert_eq!(
        s.stats(),
        Stats {
            served: 0,
            ignored: 1
        }
    );
}

// ---- Attestation protocol (protocol 1) ----

use nitride_protocol::attest::{
    attest_call, GuestBuffer, ManifestTable, ServicesRequest, SingleServiceRequest, VhsmManifest,
    NONCE_SIZE, VHSM_MANIFEST_VERSION, VHSM_SERVICE_GUID, VTPM_SERVICE_GUID,
};
use nitride_protocol::snp::report::REPORT_SIZE;
use nitride_vhsm::{Caller, KeySpec, KeyType, KeyUsage, VmplSet};
use sha2::{Digest, Sha512};
use zerocopy::little_endian::{U32 as LeU32, U64 as LeU64};
use zerocopy::IntoBytes;

const AREQ: u64 = 0x5000;
const NONCE: u64 = 0x6000;
const REPORT: u64 = 0x8000;
const MANIFEST: u64 = 0x9000;
const CERTS: u64 = 0xD000;
const FILL: u8 = 0x77;

fn buf(gpa: u64, size: u32) -> GuestBuffer {
    GuestBuffer {
        gpa: LeU64::new(gpa),
        size: LeU32::new(size),
        reserved: LeU32::new(0),
    }
}

/// A services request with the standard buffers; `certs` = certificate size.
fn services(certs: u32) -> ServicesRequest {
    ServicesRequest {
        report: buf(REPORT, 0x1000),
        nonce: buf(NONCE, 64),
        manifest: buf(MANIFEST, 0x4000),
        certificates: buf(CERTS, certs),
    }
}

fn single(base: ServicesRequest, guid: [u8; 16], version: u32) -> SingleServiceRequest {
    SingleServiceRequest {
        base,
        service_guid: guid,
        manifest_version: LeU32::new(version),
        reserved: LeU32::new(0),
    }
}

/// A platform with the fake PSP, a nonce and filled output buffers.
fn attest_platform() -> MockPlatform {
    let mut p = MockPlatform::new();
    p.attest = true;
    for (i, b) in p.ram[NONCE as usize..][..64].iter_mut().enumerate() {
        *b = 0x40 + i as u8;
    }
    p.ram[REPORT as usize..0x1_0000].fill(FILL);
    p
}

fn nonce_of(p: &MockPlatform) -> Vec<u8> {
    p.ram[NONCE as usize..][..64].to_vec()
}

fn put(p: &mut MockPlatform, at: u64, bytes: &[u8]) {
    p.ram[at as usize..][..bytes.len()].copy_from_slice(bytes);
}

fn attest_rax(call: u32) -> u64 {
    call_rax(protocol::ATTESTATION, call)
}

/// A vault holding one attestable P-384 key and one that is not attestable.
fn attest_vault() -> TestVault {
    let mut v = vault();
    for usage in [KeyUsage::SIGN | KeyUsage::ATTEST, KeyUsage::SIGN] {
        v.generate(
            Caller::SVSM,
            &KeySpec::new(KeyType::EcdsaP384, usage, VmplSet::all(), false),
        )
        .unwrap();
    }
    v
}

fn untouched(ram: &[u8], at: u64, len: usize) -> bool {
    ram[at as usize..][..len].iter().all(|&b| b == FILL)
}

#[test]
fn attestation_protocol_is_advertised_only_when_the_platform_can_attest() {
    for attest in [false, true] {
        let mut p = attest_platform();
        p.attest = attest;
        put(&mut p, AREQ, services(0).as_bytes());
        let q = call_rax(protocol::CORE, core_call::QUERY_PROTOCOL);
        p.call(q, query_protocol_arg(protocol::ATTESTATION, 1), true);
        p.call(q, query_protocol_arg(protocol::ATTESTATION, 2), true);
        p.call(attest_rax(attest_call::SERVICES), AREQ, true);
        let (s, _) = run_with(p, Some(vault()));
        let r = &s.platform().results;
        if attest {
            assert_eq!(r[0].rcx, (1 << 32) | 1);
            assert_eq!(r[2].rax, 0);
        } else {
            assert_eq!(r[0].rcx, 0);
            assert_eq!(r[2].rax, ResultCode::UnsupportedProtocol.raw());
            assert!(untouched(&s.platform().ram, REPORT, 0x8000));
        }
        assert_eq!(r[1].rcx, 0, "version 2 is not served");
    }
}

#[test]
fn attest_services_binds_nonce_and_manifest() {
    let mut p = attest_platform();
    put(&mut p, AREQ, services(0x1000).as_bytes());
    p.call(attest_rax(attest_call::SERVICES), AREQ, true);
    let v = attest_vault();
    let vhsm_manifest = v.manifest();
    let (s, _) = run_with(p, Some(v));
    let p = s.platform();
    let r = p.results[0];
    assert_eq!(r.rax, ResultCode::Success.raw());
    let (mlen, clen) = (r.rcx as usize, r.rdx as usize);
    assert_eq!(clen, FAKE_CERTS_LEN);
    assert_eq!(r.r8, REPORT_SIZE as u64);
    // The manifest table holds the vHSM's manifest, which lists the one
    // attestable key.
    let table_bytes = &p.ram[MANIFEST as usize..][..mlen];
    let table = ManifestTable::parse(table_bytes).unwrap();
    assert_eq!(table.entries().count(), 1);
    let m = table.find(&VHSM_SERVICE_GUID).unwrap();
    assert_eq!(m, &vhsm_manifest[..]);
    let parsed = VhsmManifest::parse(m).unwrap();
    assert_eq!(parsed.keys().count(), 1);
    assert_eq!(
        parsed.identity,
        s.vhsm.as_ref().unwrap().identity_public_key()
    );
    // REPORT_DATA = SHA-512(nonce || manifest), asked with certificates.
    let mut h = Sha512::new();
    h.update(nonce_of(p));
    h.update(table_bytes);
    let rd: [u8; 64] = h.finalize().into();
    assert_eq!(p.asked, [(rd, true)]);
    assert_eq!(
        &p.ram[REPORT as usize..][..REPORT_SIZE],
        &fake_report(&rd)[..]
    );
    let certs: Vec<u8> = (0..FAKE_CERTS_LEN).map(|i| i as u8).collect();
    assert_eq!(&p.ram[CERTS as usize..][..clen], &certs[..]);
    // Nothing beyond what was reported.
    assert!(untouched(
        &p.ram,
        REPORT + REPORT_SIZE as u64,
        0x1000 - REPORT_SIZE
    ));
    assert!(untouched(&p.ram, MANIFEST + mlen as u64, 0x4000 - mlen));
    assert!(untouched(&p.ram, CERTS + clen as u64, 0x1000 - clen));
}

#[test]
fn attest_services_without_certificates_or_vhsm() {
    let mut p = attest_platform();
    put(&mut p, AREQ, services(0).as_bytes());
    p.call(attest_rax(attest_call::SERVICES), AREQ, true);
    let (s, _) = run_with(p, None);
    let p = s.platform();
    let r = p.results[0];
    assert_eq!((r.rax, r.rdx, r.r8), (0, 0, REPORT_SIZE as u64));
    let table_bytes = &p.ram[MANIFEST as usize..][..r.rcx as usize];
    assert_eq!(
        ManifestTable::parse(table_bytes).unwrap().entries().count(),
        0
    );
    let rd: [u8; 64] = Sha512::digest([&nonce_of(p)[..], table_bytes].concat()).into();
    assert_eq!(p.asked, [(rd, false)]);
    assert!(untouched(&p.ram, CERTS, 0x1000));
}

#[test]
fn attest_single_service() {
    let mut p = attest_platform();
    let requests = [
        single(services(0), VHSM_SERVICE_GUID, 0),
        single(services(0x1000), VHSM_SERVICE_GUID, VHSM_MANIFEST_VERSION),
        single(services(0), VHSM_SERVICE_GUID, VHSM_MANIFEST_VERSION + 1),
        single(services(0), VTPM_SERVICE_GUID, 0),
        single(services(0), [0; 16], 0),
    ];
    for (i, req) in requests.iter().enumerate() {
        let at = AREQ + 0x100 * i as u64;
        put(&mut p, at, req.as_bytes());
        p.call(attest_rax(attest_call::SINGLE_SERVICE), at, true);
    }
    let v = attest_vault();
    let m = v.manifest();
    let (s, _) = run_with(p, Some(v));
    let p = s.platform();
    let r = &p.results;
    let rd: [u8; 64] = Sha512::digest([&nonce_of(p)[..], &m[..]].concat()).into();
    assert_eq!(p.asked, [(rd, false), (rd, true)]);
    assert_eq!((r[0].rax, r[0].rcx, r[0].rdx), (0, m.len() as u64, 0));
    assert_eq!(
        (r[1].rax, r[1].rcx, r[1].rdx),
        (0, m.len() as u64, FAKE_CERTS_LEN as u64)
    );
    assert_eq!(&p.ram[MANIFEST as usize..][..m.len()], &m[..]);
    assert_eq!(
        &p.ram[REPORT as usize..][..REPORT_SIZE],
        &fake_report(&rd)[..]
    );
    assert_eq!(r[2].rax, ResultCode::InvalidParameter.raw());
    assert_eq!(r[3].rax, ResultCode::UnsupportedProtocol.raw());
    assert_eq!(r[4].rax, ResultCode::UnsupportedProtocol.raw());
    for r in &r[2..] {
        assert_eq!((r.rcx, r.rdx, r.r8), (0, 0, 0), "no sizes on errors");
    }
}

#[test]
fn single_service_vhsm_without_a_vault_is_unsupported() {
    let mut p = attest_platform();
    put(
        &mut p,
        AREQ,
        single(services(0), VHSM_SERVICE_GUID, 0).as_bytes(),
    );
    p.call(attest_rax(attest_call::SINGLE_SERVICE), AREQ, true);
    let (s, _) = run_with(p, None);
    assert_eq!(
        s.platform().results[0].rax,
        ResultCode::UnsupportedProtocol.raw()
    );
    assert!(s.platform().asked.is_empty());
}

#[test]
fn size_negotiation_reports_every_size_and_writes_nothing() {
    let mut p = attest_platform();
    let m_len = {
        let v = attest_vault();
        v.manifest().len() as u32
    };
    let cert_len = FAKE_CERTS_LEN as u32;
    let mut cases = Vec::new();
    // (request, whether the PSP is asked).
    let mut r = services(0);
    r.report.size = LeU32::new(REPORT_SIZE as u32 - 1);
    cases.push((single(r, VHSM_SERVICE_GUID, 0), false, 0));
    let mut r = services(0);
    r.manifest.size = LeU32::new(m_len - 1);
    cases.push((single(r, VHSM_SERVICE_GUID, 0), false, 0));
    let mut r = services(0);
    r.manifest.size = LeU32::new(0);
    cases.push((single(r, VHSM_SERVICE_GUID, 0), false, 0));
    let mut r = services(cert_len - 1);
    r.report.size = LeU32::new(0);
    cases.push((single(r, VHSM_SERVICE_GUID, 0), true, cert_len));
    cases.push((
        single(services(cert_len - 1), VHSM_SERVICE_GUID, 0),
        true,
        cert_len,
    ));
    // Exactly the sizes returned: served.
    let mut r = services(cert_len);
    r.report.size = LeU32::new(REPORT_SIZE as u32);
    r.manifest.size = LeU32::new(m_len);
    cases.push((single(r, VHSM_SERVICE_GUID, 0), true, cert_len));
    for (i, (req, _, _)) in cases.iter().enumerate() {
        let at = AREQ + 0x100 * i as u64;
        put(&mut p, at, req.as_bytes());
        p.call(attest_rax(attest_call::SINGLE_SERVICE), at, true);
    }
    let (s, _) = run_with(p, Some(attest_vault()));
    let p = s.platform();
    let last = cases.len() - 1;
    for (i, (_, _, certs)) in cases.iter().enumerate() {
        let r = p.results[i];
        let expected = if i == last {
            ResultCode::Success
        } else {
            ResultCode::InvalidParameter
        };
        assert_eq!(r.rax, expected.raw(), "case {i}");
        assert_eq!(
            (r.rcx, r.rdx, r.r8),
            (u64::from(m_len), u64::from(*certs), REPORT_SIZE as u64),
            "case {i}"
        );
    }
    let asked: Vec<bool> = p.asked.iter().map(|a| a.1).collect();
    assert_eq!(
        asked,
        [true, true, true],
        "the PSP is asked only for the certificate length"
    );
    // Only the last call wrote anything.
    assert!(untouched(
        &p.ram,
        REPORT + REPORT_SIZE as u64,
        0x1000 - REPORT_SIZE
    ));
    assert!(untouched(&p.ram, MANIFEST + u64::from(m_len), 0x1000));
}

#[test]
fn size_negotiation_writes_nothing_when_refused() {
    let mut p = attest_platform();
    let mut r = services(0x1000);
    r.manifest.size = LeU32::new(30);
    put(&mut p, AREQ, r.as_bytes());
    p.call(attest_rax(attest_call::SERVICES), AREQ, true);
    let (s, _) = run_with(p, Some(attest_vault()));
    let p = s.platform();
    assert_eq!(p.results[0].rax, ResultCode::InvalidParameter.raw());
    assert!(untouched(&p.ram, REPORT, 0x8000));
}

#[test]
fn attestation_buffers_are_checked() {
    let svsm = 0x20_0000u64;
    let mut p = attest_platform();
    let ok = services(0x1000);
    let with = |f: &dyn Fn(&mut ServicesRequest)| {
        let mut r = ok;
        f(&mut r);
        r
    };
    // (request GPA, request, expected).
    let mut cases: Vec<(u64, ServicesRequest, ResultCode)> = vec![
        (svsm, ok, ResultCode::InvalidAddress), // request in SVSM memory
        (svsm - 0x20, ok, ResultCode::InvalidAddress), // request runs into it
        (u64::MAX - 0x10, ok, ResultCode::InvalidAddress), // wraps
        (0x50_0000, ok, ResultCode::InvalidAddress), // outside RAM
        (
            AREQ,
            with(&|r| r.nonce.gpa = LeU64::new(svsm)),
            ResultCode::InvalidAddress,
        ),
        (
            AREQ,
            with(&|r| r.nonce.reserved = LeU32::new(1)),
            ResultCode::InvalidParameter,
        ),
        (
            AREQ,
            with(&|r| r.report.gpa = LeU64::new(svsm - 0x800)),
            ResultCode::InvalidAddress,
        ),
        (
            AREQ,
            with(&|r| r.manifest.gpa = LeU64::new(u64::MAX - 0x100)),
            ResultCode::InvalidAddress,
        ),
        (
            AREQ,
            with(&|r| r.certificates.gpa = LeU64::new(0x50_0000)),
            ResultCode::InvalidAddress,
        ),
        (
            AREQ,
            with(&|r| r.report.gpa = LeU64::new(CAA)),
            ResultCode::InvalidAddress,
        ), // output over the calling area
        (
            AREQ,
            with(&|r| r.certificates.gpa = LeU64::new(MANIFEST + 0x3000)),
            ResultCode::InvalidAddress,
        ), // outputs overlap
        (
            AREQ,
            with(&|r| r.manifest.reserved = LeU32::new(1)),
            ResultCode::InvalidParameter,
        ),
    ];
    // The nonce is exactly 64 bytes: every other size is refused before
    // anything is read, built or written (a longer nonce would let the guest put
    // its own bytes where the manifest's tag is, at offset 64 of the hash input).
    for size in [0u32, 1, 32, 63, 65, 128, 4096, u32::MAX] {
        assert_ne!(size as usize, NONCE_SIZE);
        cases.push((
            AREQ,
            with(&|r| r.nonce.size = LeU32::new(size)),
            ResultCode::InvalidParameter,
        ));
    }
    // The declared extent counts, not just the bytes that would be written.
    cases.push((
        AREQ,
        with(&|r| {
            r.certificates.gpa = LeU64::new(svsm - 0x8000);
            r.certificates.size = LeU32::new(0x10_0000);
        }),
        ResultCode::InvalidAddress,
    ));
    for (i, (gpa, req, _)) in cases.iter().enumerate() {
        let at = if *gpa == AREQ {
            AREQ + 0x100 * i as u64
        } else {
            *gpa
        };
        if at.checked_add(0x40).is_some_and(|end| end <= svsm) {
            put(&mut p, at, req.as_bytes());
        }
        p.call(attest_rax(attest_call::SERVICES), at, true);
    }
    // An unknown call.
    put(&mut p, AREQ, ok.as_bytes());
    p.call(attest_rax(2), AREQ, true);
    let (s, _) = run_with(p, Some(attest_vault()));
    let p = s.platform();
    for (i, (.., code)) in cases.iter().enumerate() {
        let r = p.results[i];
        assert_eq!(r.rax, code.raw(), "case {i}");
        assert_eq!((r.rcx, r.rdx, r.r8), (0, 0, 0), "case {i}");
    }
    assert_eq!(
        p.results[cases.len()].rax,
        ResultCode::UnsupportedCall.raw()
    );
    assert!(p.asked.is_empty(), "refused before the PSP was asked");
    assert!(untouched(&p.ram, REPORT, 0x8000));
}

#[test]
fn attest_request_in_the_calling_area_and_at_linux_offsets() {
    // Built by hand at the offsets Linux's `struct svsm_attest_call` uses, in the
    // CAA's buffer (CAA + 8) as Linux places it.
    let mut raw = [0u8; 0x58];
    let mut put_u64 = |o: usize, v: u64| raw[o..o + 8].copy_from_slice(&v.to_le_bytes());
    put_u64(0x00, REPORT);
    put_u64(0x10, NONCE);
    put_u64(0x20, MANIFEST);
    put_u64(0x30, CERTS);
    let mut put_u32 = |o: usize, v: u32| raw[o..o + 4].copy_from_slice(&v.to_le_bytes());
    put_u32(0x08, 0x1000);
    put_u32(0x18, 64);
    put_u32(0x28, 0x4000);
    put_u32(0x38, 0x1000);
    put_u32(0x50, 0);
    raw[0x40..0x50].copy_from_slice(&[
        0xbe, 0x3f, 0x3b, 0x2c, 0x8b, 0x40, 0x1e, 0x43, 0xb9, 0x2e, 0x91, 0xd3, 0x61, 0x9d, 0x16,
        0x58,
    ]);
    let mut p = attest_platform();
    let at = CAA + nitride_protocol::svsm::caa::BUFFER;
    put(&mut p, at, &raw);
    p.call(attest_rax(attest_call::SINGLE_SERVICE), at, true);
    put(&mut p, at + 0x100, &raw[..0x40]);
    p.call(attest_rax(attest_call::SERVICES), at + 0x100, true);
    let v = attest_vault();
    let m = v.manifest();
    let (s, _) = run_with(p, Some(v));
    let p = s.platform();
    assert_eq!(p.results[0].rax, 0);
    assert_eq!(p.results[0].rcx, m.len() as u64);
    assert_eq!(p.results[0].rdx, FAKE_CERTS_LEN as u64);
    let rd: [u8; 64] = Sha512::digest([&nonce_of(p)[..], &m[..]].concat()).into();
    assert_eq!(p.asked[0], (rd, true));
    assert_eq!(p.results[1].rax, 0);
    let table = &p.ram[MANIFEST as usize..][..p.results[1].rcx as usize];
    assert_eq!(
        ManifestTable::parse(table)
            .unwrap()
            .find(&VHSM_SERVICE_GUID),
        Some(&m[..])
    );
}

#[test]
fn psp_failures_map_to_result_codes() {
    use crate::platform::AttestError;
    for (e, code) in [
        (AttestError::Busy, ResultCode::Busy),
        (AttestError::Failed, ResultCode::InvalidRequest),
        (AttestError::Disabled, ResultCode::UnsupportedProtocol),
    ] {
        let mut p = attest_platform();
        p.attest_fail = Some(e);
        put(&mut p, AREQ, services(0x1000).as_bytes());
        p.call(attest_rax(attest_call::SERVICES), AREQ, true);
        let (s, _) = run_with(p, Some(attest_vault()));
        let p = s.platform();
        let r = p.results[0];
        assert_eq!((r.rax, r.rcx, r.rdx, r.r8), (code.raw(), 0, 0, 0), "{e:?}");
        assert!(untouched(&p.ram, REPORT, 0x8000));
    }
}

#[test]
fn attest_key_reaches_the_platform_psp() {
    use nitride_protocol::attest::KeyBinding;
    use nitride_protocol::vhsm::{Request, Response, Status};
    let mut p = attest_platform();
    let mut req = vec![0u8; 256];
    let n = Request::AttestKey {
        key: 1,
        nonce: &[0x66; 64],
    }
    .encode(3, &mut req)
    .unwrap();
    put(&mut p, REQ, &req[..n]);
    vhsm_call(&mut p, REQ, n as u64, 0x2_0000, RESP_SIZE);
    let (s, _) = run_with(p, Some(attest_vault()));
    let p = s.platform();
    assert_eq!(p.results[0].rax, 0);
    let resp = Response::decode(&p.ram[0x2_0000..][..p.results[0].rcx as usize]).unwrap();
    assert_eq!(resp.status(), Some(Status::Ok));
    let ev = resp.attest_key().unwrap();
    let rd: [u8; 64] = Sha512::digest(ev.binding).into();
    assert_eq!(p.asked, [(rd, true)]);
    assert_eq!(ev.report, &fake_report(&rd)[..]);
    assert_eq!(ev.certificates.len(), FAKE_CERTS_LEN);
    assert_eq!(KeyBinding::parse(ev.binding).unwrap().nonce, &[0x66; 64]);
}

mod core_calls {
    use super::*;
    use crate::platform::PageSize;
    use nitride_protocol::svsm::pvalidate::{self as pv, Entry};

    const PV_REQ: u64 = CAA + 8;

    fn pvalidate_request(p: &mut MockPlatform, at: u64, next: u16, entries: &[u64]) {
        let a = at as usize;
        p.ram[a..a + 2].copy_from_slice(&(entries.len() as u16).to_le_bytes());
        p.ram[a + 2..a + 4].copy_from_slice(&next.to_le_bytes());
        for (i, e) in entries.iter().enumerate() {
            p.ram[a + 8 + 8 * i..a + 16 + 8 * i].copy_from_slice(&e.to_le_bytes());
        }
    }

    fn entry(gpa: u64, validate: bool) -> u64 {
        Entry {
            gpa,
            huge: false,
            validate,
            ignore_cf: false,
        }
        .encode()
    }

    fn core(p: &mut MockPlatform, call: u32, rcx: u64) {
        p.call(call_rax(protocol::CORE, call), rcx, true);
    }

    fn next_of(p: &MockPlatform, at: u64) -> u16 {
        u16::from_le_bytes([p.ram[at as usize + 2], p.ram[at as usize + 3]])
    }

    #[test]
    fn pvalidate_serves_entries_in_order_from_next() {
        let mut p = MockPlatform::new();
        p.rmp = Some(Default::default());
        pvalidate_request(
            &mut p,
            PV_REQ,
            1,
            &[
                entry(0x5000, true),
                entry(0x6000, true),
                entry(0x7000, true),
            ],
        );
        core(&mut p, core_call::PVALIDATE, PV_REQ);
        let (s, _) = run(p);
        let p = s.platform();
        assert_eq!(p.results[0].rax, 0);
        assert_eq!(next_of(p, PV_REQ), 3);
        assert_eq!(
            p.pvalidated,
            [
                (0x6000, PageSize::Small, true),
                (0x7000, PageSize::Small, true)
            ]
        );
    }

    #[test]
    fn pvalidate_refuses_svsm_pages_and_stops_there() {
        let mut p = MockPlatform::new();
        p.rmp = Some(Default::default());
        // The SVSM region starts at 0x20_0000 in the mock.
        pvalidate_request(
            &mut p,
            PV_REQ,
            0,
            &[
                entry(0x5000, true),
                entry(0x20_0000, false),
                entry(0x6000, true),
            ],
        );
        core(&mut p, core_call::PVALIDATE, PV_REQ);
        let (s, _) = run(p);
        let p = s.platform();
        assert_eq!(p.results[0].rax, ResultCode::InvalidAddress.raw());
        assert_eq!(next_of(p, PV_REQ), 1, "next points at the refused entry");
        assert_eq!(p.pvalidated, [(0x5000, PageSize::Small, true)]);
    }

    #[test]
    fn pvalidate_result_codes() {
        let mut p = MockPlatform::new();
        p.rmp = Some(Default::default());
        let cases: &[(&[u64], u64)] = &[
            // Validated twice: unchanged, an error without ignore_cf.
            (
                &[entry(0x5000, true), entry(0x5000, true)],
                pv::FAIL_UNCHANGED,
            ),
            (&[entry(0x5000, true) | 8], 0),
            // 2 MiB on a host with 4 KiB RMP entries: FAIL_SIZEMISMATCH passed on.
            (&[1], pv::fail(6)), // 2 MiB at 0
            // Reserved bits, page size 2.
            (
                &[entry(0x5000, true) | 0x10],
                ResultCode::InvalidParameter.raw(),
            ),
            (
                &[entry(0x5000, true) | 2],
                ResultCode::InvalidParameter.raw(),
            ),
            // Not RAM.
            (&[entry(0x50_0000, true)], ResultCode::InvalidAddress.raw()),
        ];
        for (i, (entries, _)) in cases.iter().enumerate() {
            let at = 0x3000 + 0x100 * i as u64;
            pvalidate_request(&mut p, at, 0, entries);
            core(&mut p, core_call::PVALIDATE, at);
        }
        // Malformed requests: misaligned, no entries, next beyond, crossing a page,
        // reserved header bytes, in SVSM memory.
        pvalidate_request(&mut p, 0x8FF8, 0, &[entry(0x5000, true)]);
        core(&mut p, core_call::PVALIDATE, 0x8FF8);
        pvalidate_request(&mut p, 0x9000, 0, &[]);
        core(&mut p, core_call::PVALIDATE, 0x9000);
        pvalidate_request(&mut p, 0x9100, 3, &[entry(0x5000, true)]);
        core(&mut p, core_call::PVALIDATE, 0x9100);
        core(&mut p, core_call::PVALIDATE, 0x9204);
        p.ram[0x9304] = 1;
        pvalidate_request(&mut p, 0x9300, 0, &[entry(0x5000, true)]);
        core(&mut p, core_call::PVALIDATE, 0x9300);
        core(&mut p, core_call::PVALIDATE, 0x20_0000);
        let (s, _) = run(p);
        let r = &s.platform().results;
        for (i, (_, code)) in cases.iter().enumerate() {
            assert_eq!(r[i].rax, *code, "case {i}");
        }
        let n = cases.len();
        assert_eq!(
            r[n].rax,
            ResultCode::InvalidParameter.raw(),
            "crosses a page"
        );
        assert_eq!(
            r[n + 1].rax,
            ResultCode::InvalidParameter.raw(),
            "no entries"
        );
        assert_eq!(
            r[n + 2].rax,
            ResultCode::InvalidParameter.raw(),
            "next beyond"
        );
        assert_eq!(
            r[n + 3].rax,
            ResultCode::InvalidParameter.raw(),
            "misaligned"
        );
        assert_eq!(r[n + 4].rax, ResultCode::InvalidParameter.raw(), "reserved");
        assert_eq!(
            r[n + 5].rax,
            ResultCode::InvalidAddress.raw(),
            "SVSM memory"
        );
    }

    #[test]
    fn pvalidate_without_an_rmp_is_unsupported() {
        let mut p = MockPlatform::new();
        pvalidate_request(&mut p, PV_REQ, 0, &[entry(0x5000, true)]);
        core(&mut p, core_call::PVALIDATE, PV_REQ);
        let (s, _) = run(p);
        assert_eq!(
            s.platform().results[0].rax,
            ResultCode::UnsupportedCall.raw()
        );
    }

    #[test]
    fn create_vcpu_checks_before_the_platform() {
        let mut p = MockPlatform::new();
        p.rmp = Some(Default::default());
        let create = |p: &mut MockPlatform, vmsa: u64, caa: u64, apic: u64| {
            let regs = CallRegs {
                rax: call_rax(protocol::CORE, core_call::CREATE_VCPU),
                rcx: vmsa,
                rdx: caa,
                r8: apic,
                r9: 0,
            };
            p.exits.push_back((GuestExit::SvsmCall, Some(regs)));
        };
        create(&mut p, 0x5008, 0x6000, 1); // unaligned VMSA
        create(&mut p, 0x5000, 0x5000, 1); // VMSA = CAA
        create(&mut p, 0x20_1000, 0x6000, 1); // VMSA in SVSM memory
        create(&mut p, 0x5000, 0x30_0000, 1); // CAA in SVSM memory
        create(&mut p, 0x5000, 0x6000, 1); // reaches the platform, which refuses
        let regs = CallRegs {
            rax: call_rax(protocol::CORE, core_call::DELETE_VCPU),
            rcx: 0x20_0000,
            ..CallRegs::default()
        };
        p.exits.push_back((GuestExit::SvsmCall, Some(regs)));
        for call in [
            core_call::DEPOSIT_MEM,
            core_call::WITHDRAW_MEM,
            core_call::CONFIGURE_VTOM,
        ] {
            core(&mut p, call, 0);
        }
        let (s, _) = run(p);
        let p = s.platform();
        let codes: Vec<u64> = p.results.iter().map(|r| r.rax).collect();
        assert_eq!(
            codes,
            [
                ResultCode::InvalidParameter.raw(),
                ResultCode::InvalidParameter.raw(),
                ResultCode::InvalidAddress.raw(),
                ResultCode::InvalidAddress.raw(),
                ResultCode::InvalidRequest.raw(),
                ResultCode::InvalidAddress.raw(),
                ResultCode::UnsupportedCall.raw(),
                ResultCode::UnsupportedCall.raw(),
                ResultCode::UnsupportedCall.raw(),
            ]
        );
        assert_eq!(p.vcpus, [(0x5000, 0x6000, 1)]);
    }
}
