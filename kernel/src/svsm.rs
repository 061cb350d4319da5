//! The request loop and the core protocol, independent of the platform.
//!
//! [`Svsm::run`] runs the guest; on every SVSM call it checks `call_pending` in the
//! current calling area, serves only calls that set it, clears it, dispatches on the
//! protocol number and writes the result registers back. Any other exit is a reason
//! to stop: the guest touched memory it may not, halted for good, or shut down.

use crate::memory::{AddressError, PAGE};
use crate::platform::{Access, GuestExit, Platform};
use nitride_protocol::svsm::{
    caa, core_call, protocol, query_protocol_result, split_rax, CallRegs, ResultCode,
    CORE_PROTOCOL_VERSION,
};

/// Why the SVSM stopped serving the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// The guest touched SVSM memory or memory outside guest RAM.
    Violation {
        /// Guest-physical address.
        gpa: u64,
        /// Guest RIP.
        rip: u64,
        /// Kind of access.
        access: Access,
    },
    /// The guest halted with nothing to wake it.
    Halted {
        /// Guest RIP.
        rip: u64,
    },
    /// The guest shut down (triple fault).
    Shutdown {
        /// Guest RIP.
        rip: u64,
    },
    /// An exit the SVSM cannot handle.
    Unexpected {
        /// Platform exit code.
        code: u64,
        /// Exit information.
        info1: u64,
        /// Exit information.
        info2: u64,
    },
}

/// Counters kept by the request loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Calls served (call_pending was set).
    pub served: u64,
    /// Calls ignored because call_pending was clear.
    pub ignored: u64,
}

/// The SVSM: a platform and the state of the calling protocol.
#[derive(Debug)]
pub struct Svsm<P> {
    platform: P,
    caa_gpa: u64,
    stats: Stats,
}

fn result(code: ResultCode) -> u64 {
    code.raw()
}

impl<P: Platform> Svsm<P> {
    /// An SVSM whose guest starts with its calling area at `caa_gpa`.
    pub fn new(platform: P, caa_gpa: u64) -> Self {
        Self {
            platform,
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

    /// Serve the guest until it has to be stopped.
    pub fn run(&mut self) -> StopReason {
        loop {
            match self.platform.run_guest() {
                GuestExit::SvsmCall => self.handle_call(),
                GuestExit::Violation { gpa, rip, access } => {
                    return StopReason::Violation { gpa, rip, access }
                }
                GuestExit::Halted { rip } => return StopReason::Halted { rip },
                GuestExit::Shutdown { rip } => return StopReason::Shutdown { rip },
                GuestExit::Unexpected { code, info1, info2 } => {
                    return StopReason::Unexpected { code, info1, info2 }
                }
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
            _ => result(ResultCode::UnsupportedProtocol),
        };
        log::debug!("call {proto}:{call} -> {:#x}", regs.rax);
        self.platform.set_call_regs(&regs);
    }

    fn core(&mut self, call: u32, regs: &mut CallRegs) -> u64 {
        match call {
            core_call::QUERY_PROTOCOL => {
                let (proto, version) = split_rax(regs.rcx);
                regs.rcx = match supported_versions(proto) {
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
}

/// `(min, max)` versions of a served protocol.
pub fn supported_versions(proto: u32) -> Option<(u32, u32)> {
    match proto {
        protocol::CORE => Some((CORE_PROTOCOL_VERSION, CORE_PROTOCOL_VERSION)),
        _ => None,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::memory::{GuestMemoryMap, GuestRange, PhysRange};
    use crate::platform::GuestMemoryError;
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

    fn run(p: MockPlatform) -> (Svsm<MockPlatform>, StopReason) {
        let mut s = Svsm::new(p, CAA);
        let stop = s.run();
        (s, stop)
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
        assert_eq!(stop, StopReason::Halted { rip: 0 });
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
            StopReason::Violation {
                gpa: 0x20_0000,
                rip: 0x1234,
                access
            }
        );
    }
}
