//! The request loop and the core protocol, independent of the platform.
//!
//! [`Svsm::run`] runs the guest; on every SVSM call it checks `call_pending` in the
//! current calling area, serves only calls that set it, clears it, dispatches on the
//! protocol number and writes the result registers back. Any other exit is a reason
//! to stop: the guest touched memory it may not, halted for good, or shut down.

use crate::memory::{AddressError, GuestRange, PhysRange, PAGE};
use crate::platform::{GuestExit, Platform};
use alloc::vec;
use alloc::vec::Vec;
use nitride_protocol::svsm::{
    caa, core_call, protocol, query_protocol_result, split_rax, vhsm_call, CallRegs, ResultCode,
    CORE_PROTOCOL_VERSION, VHSM_PROTOCOL_VERSION,
};
use nitride_protocol::vhsm::{RequestHeader, HEADER_SIZE, MAX_REQUEST_SIZE, MAX_RESPONSE_SIZE};
use zerocopy::FromBytes;
use zeroize::Zeroizing;

/// The vHSM behind the vHSM protocol: framed request bytes in, response bytes out
/// (at most `MAX_RESPONSE_SIZE`). Implemented by the vault.
pub trait VhsmService {
    /// Serve one request from a caller at `vmpl`.
    fn handle(&mut self, vmpl: u8, request: &[u8]) -> Vec<u8>;
}

impl<E: nitride_vhsm::Platform> VhsmService for nitride_vhsm::Vault<E> {
    fn handle(&mut self, vmpl: u8, request: &[u8]) -> Vec<u8> {
        match nitride_vhsm::Caller::new(vmpl) {
            Some(caller) => nitride_vhsm::Vault::handle(self, caller, request),
            // A platform never reports a VMPL above 3; refuse rather than guess.
            None => Vec::new(),
        }
    }
}

/// Counters kept by the request loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls served (call_pending was set).
    pub served: u64,
    /// Calls ignored because call_pending was clear.
    pub ignored: u64,
}

/// The SVSM: a platform, the vHSM (when it could be created) and the state of the
/// calling protocol.
#[derive(Debug)]
pub struct Svsm<P, V> {
    platform: P,
    vhsm: Option<V>,
    caa_gpa: u64,
    stats: Stats,
}

fn result(code: ResultCode) -> u64 {
    code.raw()
}

impl<P: Platform, V: VhsmService> Svsm<P, V> {
    /// An SVSM whose guest starts with its calling area at `caa_gpa`; the vHSM
    /// protocol is served when `vhsm` is `Some`.
    pub fn new(platform: P, vhsm: Option<V>, caa_gpa: u64) -> Self {
        Self {
            platform,
            vhsm,
            caa_gpa,
            stats: Stats::default(),
        }
    }

    /// The platform.
    pub fn platform(&self) -> &P {
        &self.platform
    }

    /// The current calling area.
    pub fn caa_gpa(&self) -> u64 {
        self.caa_gpa
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Serve the guest until it has to be stopped; returns the exit that ended it
    /// (never [`GuestExit::SvsmCall`]).
    pub fn run(&mut self) -> GuestExit {
        loop {
            match self.platform.run_guest() {
                GuestExit::SvsmCall => self.handle_call(),
                stop => return stop,
            }
        }
    }

    /// Take and clear `call_pending`; false when it was not set (or the CAA is no
    /// longer valid guest memory).
    fn take_call_pending(&mut self) -> bool {
        let Ok(flag) = self
            .platform
            .memory()
            .range(self.caa_gpa + caa::CALL_PENDING, 1)
        else {
            log::warn!("calling area {:#x} is not guest memory", self.caa_gpa);
            return false;
        };
        let mut pending = [0u8];
        if self.platform.read_guest(flag, &mut pending).is_err() || pending[0] == 0 {
            return false;
        }
        self.platform.write_guest(flag, &[0]).is_ok()
    }

    /// Serve one SVSM call.
    pub fn handle_call(&mut self) {
        if !self.take_call_pending() {
            self.stats.ignored += 1;
            log::debug!("SVSM call without call_pending: ignored");
            return;
        }
        self.stats.served += 1;
        let mut regs = self.platform.call_regs();
        let (proto, call) = split_rax(regs.rax);
        regs.rax = match proto {
            protocol::CORE => self.core(call, &mut regs),
            protocol::VHSM if self.vhsm.is_some() => self.vhsm(call, &mut regs),
            _ => result(ResultCode::UnsupportedProtocol),
        };
        log::debug!("call {proto}:{call} -> {:#x}", regs.rax);
        self.platform.set_call_regs(&regs);
    }

    fn core(&mut self, call: u32, regs: &mut CallRegs) -> u64 {
        match call {
            core_call::QUERY_PROTOCOL => {
                let (proto, version) = split_rax(regs.rcx);
                regs.rcx = match self.supported_versions(proto) {
                    Some((min, max)) if (min..=max).contains(&version) => {
                        query_protocol_result(max, min)
                    }
                    _ => 0,
                };
                result(ResultCode::Success)
            }
            core_call::REMAP_CA => {
                let gpa = regs.rcx;
                if !gpa.is_multiple_of(PAGE) {
                    return result(ResultCode::InvalidParameter);
                }
                match self.platform.memory().page(gpa) {
                    Ok(_) => {
                        self.caa_gpa = gpa;
                        result(ResultCode::Success)
                    }
                    Err(AddressError::Misaligned) => result(ResultCode::InvalidParameter),
                    Err(_) => result(ResultCode::InvalidAddress),
                }
            }
            _ => result(ResultCode::UnsupportedCall),
        }
    }

    /// `(min, max)` versions of a served protocol.
    pub fn supported_versions(&self, proto: u32) -> Option<(u32, u32)> {
        match proto {
            protocol::CORE => Some((CORE_PROTOCOL_VERSION, CORE_PROTOCOL_VERSION)),
            protocol::VHSM if self.vhsm.is_some() => {
                Some((VHSM_PROTOCOL_VERSION, VHSM_PROTOCOL_VERSION))
            }
            _ => None,
        }
    }

    /// A guest buffer for a vHSM call: guest RAM outside SVSM memory, no
    /// wrap-around, at most `limit` bytes, and not overlapping the calling area.
    fn vhsm_buffer(&self, gpa: u64, len: u64, limit: usize) -> Option<GuestRange> {
        let range = self
            .platform
            .memory()
            .range_bounded(gpa, len, limit as u64)
            .ok()?;
        let caa = PhysRange {
            start: self.caa_gpa,
            end: self.caa_gpa.saturating_add(PAGE),
        };
        let span = PhysRange {
            start: range.gpa(),
            end: range.gpa() + range.len(),
        };
        (!span.overlaps(&caa)).then_some(range)
    }

    /// The vHSM protocol: see `vhsm_call::REQUEST` for the register contract.
    fn vhsm(&mut self, call: u32, regs: &mut CallRegs) -> u64 {
        if call != vhsm_call::REQUEST {
            return result(ResultCode::UnsupportedCall);
        }
        let Some(request) = self.vhsm_buffer(regs.rcx, regs.rdx, MAX_REQUEST_SIZE) else {
            return result(ResultCode::InvalidAddress);
        };
        if regs.r9 < MAX_RESPONSE_SIZE as u64 {
            regs.rcx = MAX_RESPONSE_SIZE as u64;
            return result(ResultCode::InvalidParameter);
        }
        let Some(response) = self.vhsm_buffer(regs.r8, MAX_RESPONSE_SIZE as u64, MAX_RESPONSE_SIZE)
        else {
            return result(ResultCode::InvalidAddress);
        };
        // Copy first, then parse: the guest may change its memory meanwhile.
        // Requests and responses may carry key material or plaintext: wiped on drop.
        let mut bytes = Zeroizing::new(vec![0u8; request.len() as usize]);
        if self.platform.read_guest(request, &mut bytes).is_err() {
            return result(ResultCode::InvalidAddress);
        }
        if !well_framed(&bytes) {
            return result(ResultCode::InvalidFormat);
        }
        let vmpl = self.platform.caller_vmpl();
        let Some(service) = self.vhsm.as_mut() else {
            return result(ResultCode::UnsupportedProtocol);
        };
        let answer = Zeroizing::new(service.handle(vmpl, &bytes));
        let Some(out) = response.sub(0, answer.len() as u64) else {
            log::error!(
                "vHSM produced an empty or oversized response ({} bytes)",
                answer.len()
            );
            return result(ResultCode::InvalidRequest);
        };
        if self.platform.write_guest(out, &answer).is_err() {
            return result(ResultCode::InvalidAddress);
        }
        regs.rcx = answer.len() as u64;
        result(ResultCode::Success)
    }
}

/// A request is framed when it holds a whole header whose body length accounts for
/// every remaining byte.
fn well_framed(bytes: &[u8]) -> bool {
    let Some((header, body)) = bytes.split_at_checked(HEADER_SIZE) else {
        return false;
    };
    RequestHeader::read_from_bytes(header).is_ok_and(|h| h.body_len.get() as usize == body.len())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::memory::{GuestMemoryMap, GuestRange, PhysRange};
    use crate::platform::{Access, GuestMemoryError};
    use nitride_protocol::svsm::{call_rax, query_protocol_arg};
    use std::collections::VecDeque;
    use std::vec::Vec;

    /// A platform whose guest is a script of calls over a small RAM.
    pub(crate) struct MockPlatform {
        pub map: GuestMemoryMap,
        pub ram: Vec<u8>,
        pub exits: VecDeque<(GuestExit, Option<CallRegs>)>,
        pub regs: CallRegs,
        pub results: Vec<CallRegs>,
    }

    impl MockPlatform {
        pub(crate) fn new() -> Self {
            let ram = [PhysRange::new(0, 0x40_0000).unwrap()];
            let map =
                GuestMemoryMap::new(&ram, PhysRange::new(0x20_0000, 0x40_0000).unwrap()).unwrap();
            Self {
                map,
                ram: vec![0; 0x20_0000],
                exits: VecDeque::new(),
                regs: CallRegs::default(),
                results: Vec::new(),
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
        fn attestation_available(&self) -> bool {
            false
        }
        fn attestation_report(
            &mut self,
            _report_data: &[u8; 64],
            _certificates: bool,
        ) -> Result<crate::platform::Evidence, crate::platform::AttestError> {
            Err(crate::platform::AttestError::Unavailable)
        }
        fn write_guest(&mut self, range: GuestRange, data: &[u8]) -> Result<(), GuestMemoryError> {
            let at = range.gpa() as usize;
            self.ram
                .get_mut(at..at + data.len())
                .ok_or(GuestMemoryError::LengthMismatch)?
                .copy_from_slice(data);
            Ok(())
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

    fn run_with(
        p: MockPlatform,
        v: Option<TestVault>,
    ) -> (Svsm<MockPlatform, TestVault>, GuestExit) {
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
        let resp =
            nitride_protocol::vhsm::Response::decode(&ram[RESP as usize..][..r[0].rcx as usize])
                .unwrap();
        assert_eq!(resp.status(), Some(nitride_protocol::vhsm::Status::Ok));
        assert_eq!(resp.header.request_id.get(), 7);
        assert_eq!(resp.body.len(), 32);
        // An unknown operation is a typed error inside a served call.
        assert_eq!(r[1].rax, 0);
        let resp = nitride_protocol::vhsm::Response::decode(&ram[0x2_0000..][..r[1].rcx as usize])
            .unwrap();
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
            (CAA + 8, n, RESP, RESP_SIZE, ResultCode::InvalidAddress), // request overlaps the CAA
            (u64::MAX - 8, n, RESP, RESP_SIZE, ResultCode::InvalidAddress), // wraps around
            (
                REQ,
                max_req + 1,
                RESP,
                RESP_SIZE,
                ResultCode::InvalidAddress,
            ), // larger than the limit
            (REQ, 0, RESP, RESP_SIZE, ResultCode::InvalidAddress),     // empty
            (REQ, n, 0x20_0000, RESP_SIZE, ResultCode::InvalidAddress), // response in SVSM memory
            (REQ, n, 0x1F_C000, RESP_SIZE, ResultCode::InvalidAddress), // response runs into it
            (REQ, n, CAA - 0x1000, RESP_SIZE, ResultCode::InvalidAddress), // response overlaps the CAA
            (
                REQ,
                n,
                u64::MAX - 0x100,
                RESP_SIZE,
                ResultCode::InvalidAddress,
            ), // response wraps
            (REQ, n, RESP, RESP_SIZE - 1, ResultCode::InvalidParameter),   // response too small
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

    #[test]
    fn violations_stop_the_guest() {
        let mut p = MockPlatform::new();
        let access = Access {
            write: true,
            execute: false,
        };
        p.exits.push_back((
            GuestExit::Violation {
                gpa: 0x20_0000,
                rip: 0x1234,
                access,
            },
            None,
        ));
        let (_, stop) = run(p);
        assert_eq!(
            stop,
            GuestExit::Violation {
                gpa: 0x20_0000,
                rip: 0x1234,
                access
            }
        );
    }
}
