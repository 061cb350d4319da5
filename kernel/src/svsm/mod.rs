//! The platform-independent core of the SVSM: the request loop and the protocols it
//! serves, each in its own module.
//!
//! [`Svsm::run`] runs the guest; on every SVSM call it checks `call_pending` in the
//! current calling area, serves only calls that set it, clears it, dispatches on the
//! protocol number and writes the result registers back. Any other exit is a reason
//! to stop: the guest touched memory it may not, halted for good, or shut down.
//!
//! Protocols served:
//! - [`core_protocol`]: the core protocol (0);
//! - [`attest`]: the attestation protocol (1), only when the platform can attest;
//! - [`vhsm`]: the vHSM protocol, when the vault could be created.
//!
//! Nothing here knows which platform runs underneath: everything goes through
//! [`Platform`].

pub mod attest;
pub mod core_protocol;
pub mod vhsm;

pub use vhsm::VhsmService;

use crate::platform::{GuestExit, Platform};
use alloc::vec::Vec;
use attest::Services;
use nitride_protocol::attest::ATTEST_PROTOCOL_VERSION;
use nitride_protocol::svsm::{
    caa, protocol, split_rax, ResultCode, CORE_PROTOCOL_VERSION, VHSM_PROTOCOL_VERSION,
};

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

pub(crate) fn result(code: ResultCode) -> u64 {
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
            protocol::ATTESTATION if self.platform.attestation_available() => {
                // The manifest is built only for a request that needs it.
                let vhsm_manifest = self.vhsm.as_ref().map(|v| move || v.manifest());
                let services = Services {
                    vhsm: vhsm_manifest.as_ref().map(|f| f as &dyn Fn() -> Vec<u8>),
                };
                attest::serve(&mut self.platform, self.caa_gpa, call, &mut regs, &services)
            }
            protocol::VHSM if self.vhsm.is_some() => self.vhsm(call, &mut regs),
            _ => result(ResultCode::UnsupportedProtocol),
        };
        log::debug!("call {proto}:{call} -> {:#x}", regs.rax);
        self.platform.set_call_regs(&regs);
    }

    /// `(min, max)` versions of a served protocol.
    pub fn supported_versions(&self, proto: u32) -> Option<(u32, u32)> {
        match proto {
            protocol::CORE => Some((CORE_PROTOCOL_VERSION, CORE_PROTOCOL_VERSION)),
            protocol::ATTESTATION if self.platform.attestation_available() => {
                Some((ATTEST_PROTOCOL_VERSION, ATTEST_PROTOCOL_VERSION))
            }
            protocol::VHSM if self.vhsm.is_some() => {
                Some((VHSM_PROTOCOL_VERSION, VHSM_PROTOCOL_VERSION))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
