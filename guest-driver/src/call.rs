//! Making SVSM calls from the guest.
//!
//! A [`Transport`] carries one call: it sets `call_pending` in the calling area,
//! switches to the SVSM with the SNP register convention, and reports whether the
//! SVSM cleared `call_pending` (served the call). [`SvsmClient`] puts typed core-protocol
//! calls on top of any transport and retries `ERR_INCOMPLETE` / `ERR_BUSY` as Linux does.
//!
//! Transports (x86-64 only):
//! - [`GhcbMsrTransport`]: SEV-SNP, the way Linux calls an SVSM: VMGEXIT with an
//!   SNP_RUN_VMPL(0) request in the GHCB MSR (GHCB MSR protocol), the GHCB MSR saved
//!   and restored around it;
//! - [`GhcbPageTransport`]: SEV-SNP for a caller that has a registered GHCB page:
//!   the SNP_RUN_VMPL NAE event (SW_EXITCODE 0x8000_0018) through it.

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
    /// the new CAA for every call (see [`GhcbMsrTransport::set_caa`]).
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
pub use snp::{GhcbMsrTransport, GhcbPageTransport};

#[cfg(target_arch = "x86_64")]
mod snp {
    use super::{CallOutcome, CallRegs, Transport};
    use core::sync::atomic::{AtomicU8, Ordering};
    use nitride_protocol::snp::ghcb::{msr, nae, off, valid_bit, PROTOCOL_VERSION_SNP};

    /// `call_pending` of a calling area.
    fn pending(caa: *mut u8) -> &'static AtomicU8 {
        // SAFETY: the transports' constructors promise `caa` points to the guest's
        // mapped, writable calling-area page for their lifetime; AtomicU8 has the
        // layout of u8, and the SVSM writes this byte only while this vCPU is stopped
        // in VMGEXIT.
        unsafe { AtomicU8::from_ptr(caa) }
    }

    /// SVSM calls through the GHCB MSR protocol: `call_pending`, the call registers,
    /// the GHCB MSR set to SNP_RUN_VMPL(0) (saved before and restored after), VMGEXIT.
    /// The hypervisor runs VMPL0, the SVSM serves the call from this vCPU's VMSA and
    /// has the hypervisor run this VMPL again; the MSR then holds the response (0x017,
    /// bits 63:32 zero).
    #[derive(Debug)]
    pub struct GhcbMsrTransport {
        caa: *mut u8,
        /// The last response of the hypervisor that was not a plain success.
        last_error: Option<u64>,
    }

    impl GhcbMsrTransport {
        /// A transport using the CAA at `caa`.
        ///
        /// # Safety
        ///
        /// `caa` must point to the guest's calling-area page, mapped writable (private)
        /// for the lifetime of the transport, and the code must run in an SEV-SNP guest
        /// at a VMPL below an SVSM, at CPL 0 (the GHCB MSR and VMGEXIT).
        pub unsafe fn new(caa: *mut u8) -> Self {
            Self {
                caa,
                last_error: None,
            }
        }

        /// Use another calling area (after a successful `REMAP_CA`).
        ///
        /// # Safety
        ///
        /// As for [`GhcbMsrTransport::new`].
        pub unsafe fn set_caa(&mut self, caa: *mut u8) {
            self.caa = caa;
        }

        /// The hypervisor's last response to SNP_RUN_VMPL that was not a success.
        pub fn last_error(&self) -> Option<u64> {
            self.last_error
        }

        /// VMGEXIT with SNP_RUN_VMPL(0) and `regs`, without touching `call_pending`
        /// (what a guest that forgets the CAA protocol does). Returns the registers
        /// after the exit and the hypervisor's response in the GHCB MSR.
        pub fn run_vmpl0_raw(&mut self, regs: CallRegs) -> (CallRegs, u64) {
            let mut out = regs;
            let response: u64;
            // SAFETY: the GHCB MSR is saved, set to the SNP_RUN_VMPL(0) request, and
            // restored; VMGEXIT hands the vCPU to the hypervisor, which runs VMPL0 and
            // later resumes this VMPL after the instruction with RAX/RCX/RDX/R8/R9
            // possibly changed by the SVSM (through the VMSA) and nothing else. The asm
            // saves the call registers on the stack around WRMSR/RDMSR, declares every
            // register it changes, and touches no memory of ours but the stack.
            unsafe {
                core::arch::asm!(
                    // Save the GHCB MSR into r12.
                    "push rax",
                    "push rcx",
                    "push rdx",
                    "mov ecx, 0xC0010130",
                    "rdmsr",
                    "mov r12d, eax",
                    "shl rdx, 32",
                    "or r12, rdx",
                    // Request SNP_RUN_VMPL(0).
                    "mov eax, {req}",
                    "xor edx, edx",
                    "wrmsr",
                    "pop rdx",
                    "pop rcx",
                    "pop rax",
                    "rep vmmcall",
                    // Read the response into r13, then restore the GHCB MSR.
                    "push rax",
                    "push rcx",
                    "push rdx",
                    "mov ecx, 0xC0010130",
                    "rdmsr",
                    "mov r13d, eax",
                    "shl rdx, 32",
                    "or r13, rdx",
                    "mov eax, r12d",
                    "mov rdx, r12",
                    "shr rdx, 32",
                    "wrmsr",
                    "pop rdx",
                    "pop rcx",
                    "pop rax",
                    req = const msr::RUN_VMPL_REQ,
                    inout("rax") out.rax,
                    inout("rcx") out.rcx,
                    inout("rdx") out.rdx,
                    inout("r8") out.r8,
                    inout("r9") out.r9,
                    out("r12") _,
                    out("r13") response,
                );
            }
            (out, response)
        }
    }

    impl Transport for GhcbMsrTransport {
        fn call(&mut self, regs: CallRegs) -> CallOutcome {
            pending(self.caa).store(1, Ordering::SeqCst);
            let (out, response) = self.run_vmpl0_raw(regs);
            if response & 0xFFF != msr::RUN_VMPL_RESP || response >> 32 != 0 {
                self.last_error = Some(response);
            }
            let still = pending(self.caa).swap(0, Ordering::SeqCst);
            CallOutcome {
                regs: out,
                still_pending: still != 0,
            }
        }
    }

    /// SVSM calls through a registered GHCB page: the SNP_RUN_VMPL NAE event
    /// (SW_EXITCODE 0x8000_0018, SW_EXITINFO1 = 0: VMPL0, SW_EXITINFO2 = 0).
    #[derive(Debug)]
    pub struct GhcbPageTransport {
        caa: *mut u8,
        ghcb: *mut u8,
        ghcb_gpa: u64,
        last_error: Option<(u64, u64)>,
    }

    impl GhcbPageTransport {
        /// A transport using the CAA at `caa` and the GHCB page mapped (shared, C-bit
        /// clear) at `ghcb`, registered with the hypervisor at `ghcb_gpa`.
        ///
        /// # Safety
        ///
        /// As for [`GhcbMsrTransport::new`]; and `ghcb` must point to this vCPU's
        /// registered GHCB page, mapped writable, which nothing else uses during a call.
        pub unsafe fn new(caa: *mut u8, ghcb: *mut u8, ghcb_gpa: u64) -> Self {
            Self {
                caa,
                ghcb,
                ghcb_gpa,
                last_error: None,
            }
        }

        /// Use another calling area (after a successful `REMAP_CA`).
        ///
        /// # Safety
        ///
        /// As for [`GhcbPageTransport::new`].
        pub unsafe fn set_caa(&mut self, caa: *mut u8) {
            self.caa = caa;
        }

        /// SW_EXITINFO1/2 of the last SNP_RUN_VMPL the hypervisor failed.
        pub fn last_error(&self) -> Option<(u64, u64)> {
            self.last_error
        }

        fn put(&mut self, at: usize, v: u64) {
            // SAFETY: `new` promises `ghcb` maps the whole GHCB page; `at` is a field
            // offset below 0x1000, 8-aligned. Shared memory: volatile.
            unsafe { self.ghcb.add(at).cast::<u64>().write_volatile(v) }
        }

        fn get(&self, at: usize) -> u64 {
            // SAFETY: as in `put`.
            unsafe { self.ghcb.add(at).cast::<u64>().read_volatile() }
        }
    }

    impl Transport for GhcbPageTransport {
        fn call(&mut self, regs: CallRegs) -> CallOutcome {
            let mut bitmap = [0u64; 2];
            for (at, v) in [
                (off::SW_EXIT_CODE, nae::RUN_VMPL),
                (off::SW_EXIT_INFO_1, 0),
                (off::SW_EXIT_INFO_2, 0),
            ] {
                self.put(at, v);
                let bit = valid_bit(at);
                bitmap[bit / 64] |= 1 << (bit % 64);
            }
            self.put(off::VALID_BITMAP, bitmap[0]);
            self.put(off::VALID_BITMAP + 8, bitmap[1]);
            self.put(0xFF8, PROTOCOL_VERSION_SNP << 16);
            pending(self.caa).store(1, Ordering::SeqCst);
            let mut out = regs;
            // SAFETY: the GHCB MSR is set to the registered GHCB page (the GHCB-page
            // protocol); VMGEXIT hands the vCPU to the hypervisor, which runs VMPL0 and
            // resumes this VMPL after the instruction with RAX/RCX/RDX/R8/R9 possibly
            // changed by the SVSM and nothing else; the GHCB is read afterwards
            // (volatile). The asm declares every register it changes.
            unsafe {
                core::arch::asm!(
                    "push rax",
                    "push rcx",
                    "push rdx",
                    "mov ecx, 0xC0010130",
                    "mov eax, r12d",
                    "mov rdx, r12",
                    "shr rdx, 32",
                    "wrmsr",
                    "pop rdx",
                    "pop rcx",
                    "pop rax",
                    "rep vmmcall",
                    in("r12") self.ghcb_gpa,
                    inout("rax") out.rax,
                    inout("rcx") out.rcx,
                    inout("rdx") out.rdx,
                    inout("r8") out.r8,
                    inout("r9") out.r9,
                );
            }
            let (i1, i2) = (self.get(off::SW_EXIT_INFO_1), self.get(off::SW_EXIT_INFO_2));
            if i1 != 0 {
                self.last_error = Some((i1, i2));
            }
            let still = pending(self.caa).swap(0, Ordering::SeqCst);
            CallOutcome {
                regs: out,
                still_pending: still != 0,
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
