//! Making SVSM calls from the guest.
//!
//! A [`Transport`] carries one call: it sets `call_pending` in the calling area,
//! switches to the SVSM with the SNP register convention, and reports whether the
//! SVSM cleared `call_pending` (served the call). [`SvsmClient`] puts typed core-protocol
//! calls on top of any transport and retries `ERR_INCOMPLETE` / `ERR_BUSY` as Linux does.
//!
//! Transports:
//! - [`VmmcallTransport`]: the emulated platform, where the SVSM runs the guest under
//!   AMD-V and a `VMMCALL` exits to it (x86-64 only).
//! - The GHCB MSR protocol for real SNP will sit behind the same trait.

use nitride_protocol::svsm::{
    self, call_rax, core_call, query_protocol_arg, CallRegs, ResultCode, CORE_PROTOCOL_VERSION,
};

/// One SVSM call, as the transport saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallOutcome {
    /// The registers after the call.
    pub regs: CallRegs,
    /// `call_pending` was still set after the call: the SVSM never served it.
    pub still_pending: bool,
}

/// Something that can carry an SVSM call.
pub trait Transport {
    /// Issue one call with `regs` (RAX = `protocol << 32 | call_id`).
    fn call(&mut self, regs: CallRegs) -> CallOutcome;
}

/// Why a call did not succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallError {
    /// `call_pending` was still set afterwards: the SVSM did not serve the call.
    NotServed,
    /// The SVSM answered with an error result code.
    Svsm(ResultCode),
    /// The SVSM answered with a code this driver does not know (protocol-specific).
    Other(u64),
    /// `ERR_INCOMPLETE` / `ERR_BUSY` kept coming back.
    GaveUp,
}

impl core::fmt::Display for CallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NotServed => {
                f.write_str("the SVSM did not serve the call (call_pending still set)")
            }
            Self::Svsm(code) => write!(f, "SVSM error {} ({:#x})", code.name(), code.raw()),
            Self::Other(raw) => write!(f, "SVSM result {raw:#x}"),
            Self::GaveUp => f.write_str("the SVSM stayed busy"),
        }
    }
}

/// How many times a call answered with `ERR_INCOMPLETE` or `ERR_BUSY` is repeated.
pub const MAX_RETRIES: usize = 64;

/// Typed SVSM calls over a transport.
#[derive(Debug)]
pub struct SvsmClient<T> {
    transport: T,
}

impl<T: Transport> SvsmClient<T> {
    /// A client over `transport`.
    pub fn new(transport: T) -> Self {
        Self { transport }
    }

    /// The transport, for calls this client does not wrap.
    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Issue `protocol`/`call_id` with the given arguments; `Ok` holds the output
    /// registers of a successful call.
    pub fn call(
        &mut self,
        protocol: u32,
        call_id: u32,
        args: [u64; 4],
    ) -> Result<CallRegs, CallError> {
        let out = self.call_regs(protocol, call_id, args)?;
        match ResultCode::from_raw(out.rax) {
            Some(ResultCode::Success) => Ok(out),
            Some(code) => Err(CallError::Svsm(code)),
            None => Err(CallError::Other(out.rax)),
        }
    }

    /// Like [`Self::call`], but an answered call returns its registers whatever the
    /// result code (for calls whose errors carry data, such as the attestation
    /// protocol's needed sizes). `ERR_INCOMPLETE` / `ERR_BUSY` are still retried.
    pub fn call_regs(
        &mut self,
        protocol: u32,
        call_id: u32,
        args: [u64; 4],
    ) -> Result<CallRegs, CallError> {
        let regs = CallRegs {
            rax: call_rax(protocol, call_id),
            rcx: args[0],
            rdx: args[1],
            r8: args[2],
            r9: args[3],
        };
        for _ in 0..MAX_RETRIES {
            let out = self.transport.call(regs);
            if out.still_pending {
                return Err(CallError::NotServed);
            }
            match ResultCode::from_raw(out.regs.rax) {
                Some(ResultCode::Incomplete | ResultCode::Busy) => continue,
                _ => return Ok(out.regs),
            }
        }
        Err(CallError::GaveUp)
    }

    /// `QUERY_PROTOCOL`: `Some((max, min))` versions when `protocol` is served at
    /// `version`, `None` when it is not.
    pub fn query_protocol(
        &mut self,
        protocol: u32,
        version: u32,
    ) -> Result<Option<(u32, u32)>, CallError> {
        let out = self.call(
            svsm::protocol::CORE,
            core_call::QUERY_PROTOCOL,
            [query_protocol_arg(protocol, version), 0, 0, 0],
        )?;
        Ok(match out.rcx {
            0 => None,
            rcx => Some(((rcx >> 32) as u32, rcx as u32)),
        })
    }

    /// Is the core protocol served at the version this driver speaks?
    pub fn core_supported(&mut self) -> Result<bool, CallError> {
        Ok(self
            .query_protocol(svsm::protocol::CORE, CORE_PROTOCOL_VERSION)?
            .is_some())
    }

    /// `REMAP_CA`: move the calling area to `new_caa_gpa`. The caller must then use
    /// the new CAA for every call (see [`VmmcallTransport::set_caa`]).
    pub fn remap_ca(&mut self, new_caa_gpa: u64) -> Result<(), CallError> {
        self.call(
            svsm::protocol::CORE,
            core_call::REMAP_CA,
            [new_caa_gpa, 0, 0, 0],
        )
        .map(|_| ())
    }
}

#[cfg(target_arch = "x86_64")]
pub use vmmcall::VmmcallTransport;

#[cfg(target_arch = "x86_64")]
mod vmmcall {
    use super::{CallOutcome, CallRegs, Transport};
    use core::sync::atomic::{AtomicU8, Ordering};

    /// SVSM calls with `VMMCALL`, for a guest the emulated platform runs under AMD-V.
    ///
    /// Holds the calling area's address as the guest sees it (identity mapped in
    /// the guest contract, see `docs/guest-contract.md`).
    #[derive(Debug)]
    pub struct VmmcallTransport {
        caa: *mut u8,
    }

    impl VmmcallTransport {
        /// A transport using the CAA at `caa`.
        ///
        /// # Safety
        ///
        /// `caa` must point to the guest's calling-area page, mapped writable for
        /// the lifetime of the transport, and the code must run as a guest of the
        /// Nitride emulated platform (elsewhere `VMMCALL` raises #UD).
        pub unsafe fn new(caa: *mut u8) -> Self {
            Self { caa }
        }

        /// Use another calling area (after a successful `REMAP_CA`).
        ///
        /// # Safety
        ///
        /// As for [`VmmcallTransport::new`].
        pub unsafe fn set_caa(&mut self, caa: *mut u8) {
            self.caa = caa;
        }

        fn pending(&self) -> &AtomicU8 {
            // SAFETY: `new`/`set_caa` promise `caa` points to a mapped, writable
            // page for the transport's lifetime; AtomicU8 has the layout of u8 and
            // the SVSM only writes this byte while the guest is stopped in VMMCALL.
            unsafe { AtomicU8::from_ptr(self.caa) }
        }

        /// Issue `VMMCALL` with `regs` without touching `call_pending`: what a guest
        /// that forgets the CAA protocol does. Exists to test that the SVSM ignores
        /// such calls.
        pub fn vmmcall_raw(&mut self, regs: CallRegs) -> CallRegs {
            let mut out = regs;
            // SAFETY: VMMCALL exits to the SVSM, which either resumes the guest after
            // the instruction with RAX/RCX/RDX/R8/R9 possibly changed, or stops the
            // VM. The asm declares exactly those registers as outputs and touches no
            // memory of ours; the stack is not used.
            unsafe {
                core::arch::asm!(
                    "vmmcall",
                    inout("rax") out.rax,
                    inout("rcx") out.rcx,
                    inout("rdx") out.rdx,
                    inout("r8") out.r8,
                    inout("r9") out.r9,
                    options(nostack),
                );
            }
            out
        }
    }

    impl Transport for VmmcallTransport {
        fn call(&mut self, regs: CallRegs) -> CallOutcome {
            self.pending().store(1, Ordering::SeqCst);
            let out = self.vmmcall_raw(regs);
            let pending = self.pending().swap(0, Ordering::SeqCst);
            CallOutcome {
                regs: out,
                still_pending: pending != 0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nitride_protocol::svsm::query_protocol_result;

    /// A transport that answers from a script.
    struct Scripted {
        answers: [Option<CallOutcome>; 4],
        next: usize,
        seen: [CallRegs; 4],
    }

    impl Transport for Scripted {
        fn call(&mut self, regs: CallRegs) -> CallOutcome {
            self.seen[self.next] = regs;
            let a = self.answers[self.next].take().expect("scripted answer");
            self.next += 1;
            a
        }
    }

    fn ok(rax: u64, rcx: u64) -> Option<CallOutcome> {
        Some(CallOutcome {
            regs: CallRegs {
                rax,
                rcx,
                ..Default::default()
            },
            still_pending: false,
        })
    }

    fn client(answers: [Option<CallOutcome>; 4]) -> SvsmClient<Scripted> {
        SvsmClient::new(Scripted {
            answers,
            next: 0,
            seen: [CallRegs::default(); 4],
        })
    }

    #[test]
    fn query_protocol_decodes_versions_and_retries_busy() {
        let mut c = client([
            ok(ResultCode::Busy.raw(), 0),
            ok(0, query_protocol_result(1, 1)),
            None,
            None,
        ]);
        assert_eq!(c.query_protocol(0, 1), Ok(Some((1, 1))));
        assert_eq!(c.transport().seen[1].rax, 6);
        assert_eq!(c.transport().seen[1].rcx, 1);
    }

    #[test]
    fn unsupported_protocol_is_none() {
        let mut c = client([ok(0, 0), None, None, None]);
        assert_eq!(c.query_protocol(77, 1), Ok(None));
    }

    #[test]
    fn errors_are_typed() {
        let mut c = client([
            ok(ResultCode::InvalidParameter.raw(), 0),
            ok(0x8000_1001, 0),
            Some(CallOutcome {
                regs: CallRegs::default(),
                still_pending: true,
            }),
            None,
        ]);
        assert_eq!(
            c.remap_ca(0x1234),
            Err(CallError::Svsm(ResultCode::InvalidParameter))
        );
        assert_eq!(c.remap_ca(0x1000), Err(CallError::Other(0x8000_1001)));
        assert_eq!(c.remap_ca(0x1000), Err(CallError::NotServed));
    }
}
