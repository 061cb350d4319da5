//! The vHSM protocol: one framed vHSM request per call, with guest buffers for the
//! request and the response (register contract: `vhsm_call::REQUEST`,
//! `docs/vhsm-protocol.md`).

use super::{result, Svsm};
use crate::memory::{GuestRange, PhysRange, PAGE};
use crate::platform::Platform;
use crate::svsm::attest::PlatformAttester;
use alloc::vec;
use alloc::vec::Vec;
use nitride_protocol::svsm::{vhsm_call, CallRegs, ResultCode};
use nitride_protocol::vhsm::{RequestHeader, HEADER_SIZE, MAX_REQUEST_SIZE, MAX_RESPONSE_SIZE};
use nitride_vhsm::Attester;
use zerocopy::{FromBytes, IntoBytes};
use zeroize::Zeroizing;

/// The vHSM behind the vHSM protocol: framed request bytes in, response bytes out
/// (at most `MAX_RESPONSE_SIZE`). Implemented by the vault.
pub trait VhsmService {
    /// Serve one request from a caller at `vmpl`; `attester` produces the reports
    /// AttestKey returns (the request loop lends it the platform's PSP).
    fn handle(&mut self, vmpl: u8, request: &[u8], attester: &mut dyn Attester) -> Vec<u8>;
    /// The vHSM's service manifest, as the attestation protocol reports it.
    fn manifest(&self) -> Vec<u8>;
}

impl<E: nitride_vhsm::Platform> VhsmService for nitride_vhsm::Vault<E> {
    fn handle(&mut self, vmpl: u8, request: &[u8], attester: &mut dyn Attester) -> Vec<u8> {
        match nitride_vhsm::Caller::new(vmpl) {
            Some(caller) => self.handle_with(caller, request, attester),
            // A platform never reports a VMPL above 3; refuse rather than guess.
            None => Vec::new(),
        }
    }

    fn manifest(&self) -> Vec<u8> {
        nitride_vhsm::Vault::manifest(self)
    }
}

impl<P: Platform, V: VhsmService> Svsm<P, V> {
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
    pub(super) fn vhsm(&mut self, call: u32, regs: &mut CallRegs) -> u64 {
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
        // Held as words so that the wipe on drop is one volatile store per 8 bytes
        // (the request is at most MAX_REQUEST_SIZE, checked by `vhsm_buffer`).
        let len = request.len() as usize;
        let mut words = Zeroizing::new(vec![0u64; len.div_ceil(8)]);
        let Some(bytes) = words.as_mut_bytes().get_mut(..len) else {
            return result(ResultCode::InvalidAddress);
        };
        if self.platform.read_guest(request, bytes).is_err() {
            return result(ResultCode::InvalidAddress);
        }
        let bytes = &*bytes;
        if !well_framed(bytes) {
            return result(ResultCode::InvalidFormat);
        }
        let vmpl = self.platform.caller_vmpl();
        let Some(service) = self.vhsm.as_mut() else {
            return result(ResultCode::UnsupportedProtocol);
        };
        let started = self.platform.cycles();
        // Disjoint fields: the vault gets the platform's PSP for this request only.
        let mut attester = PlatformAttester(&mut self.platform);
        let answer = Zeroizing::new(service.handle(vmpl, bytes, &mut attester));
        // Measurements (`cargo xtask bench`, the provisioning figures): the time in
        // the vault, instructions under `-icount shift=0`. The op and the length
        // only: nothing of the request's content.
        log::debug!(
            "vHSM op {}: {} cycles in the vault",
            RequestHeader::read_from_prefix(bytes).map_or(0, |(h, _)| h.op.get()),
            self.platform.cycles().wrapping_sub(started)
        );
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
