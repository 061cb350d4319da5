//! The core protocol (protocol 0): QUERY_PROTOCOL and REMAP_CA, and the answers to
//! the calls a platform does not serve.

use super::{result, Svsm};
use crate::memory::{AddressError, PAGE};
use crate::platform::Platform;
use nitride_protocol::svsm::{core_call, query_protocol_result, split_rax, CallRegs, ResultCode};

impl<P: Platform, V: super::VhsmService> Svsm<P, V> {
    pub(super) fn core(&mut self, call: u32, regs: &mut CallRegs) -> u64 {
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
}
