//! The SVSM calling convention (AMD SVSM specification, as summarised in
//! `shared/REFERENCE.md` sections 1 and 2).
//!
//! A call is `RAX = protocol << 32 | call_id` with arguments in RCX, RDX, R8 and R9;
//! the result code comes back in RAX and outputs in RCX, RDX, R8 and R9. Before the
//! call the guest sets `call_pending` in its calling area (CAA); the SVSM serves only
//! calls whose `call_pending` is set, and clears it.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Protocol numbers.
pub mod protocol {
    /// Core protocol.
    pub const CORE: u32 = 0;
    /// Attestation protocol.
    pub const ATTESTATION: u32 = 1;
    /// vTPM protocol (not served by Nitride).
    pub const VTPM: u32 = 2;
    /// Nitride's vHSM protocol: a vendor number far from the 0-4 in use elsewhere,
    /// advertised through `QUERY_PROTOCOL`.
    pub const VHSM: u32 = 0x4E48_534D; // "NHSM"
}

/// Core protocol (0) call identifiers.
pub mod core_call {
    /// Move the calling area: RCX = new CAA GPA (page aligned).
    pub const REMAP_CA: u32 = 0;
    /// Validate or invalidate guest pages.
    pub const PVALIDATE: u32 = 1;
    /// Create a vCPU.
    pub const CREATE_VCPU: u32 = 2;
    /// Delete a vCPU.
    pub const DELETE_VCPU: u32 = 3;
    /// Give memory to the SVSM.
    pub const DEPOSIT_MEM: u32 = 4;
    /// Take memory back from the SVSM.
    pub const WITHDRAW_MEM: u32 = 5;
    /// RCX in = `protocol << 32 | version`; RCX out = `max << 32 | min` or 0.
    pub const QUERY_PROTOCOL: u32 = 6;
    /// Configure the virtual top of memory.
    pub const CONFIGURE_VTOM: u32 = 7;
}

/// The core protocol's PVALIDATE request (SVSM specification; Linux `struct
/// svsm_pvalidate_call`): u16 entries, u16 next, u32 reserved, then u64 entries.
pub mod pvalidate {
    use super::PROTOCOL_RESULT_BASE;

    /// Size of the request header.
    pub const HEADER_SIZE: u64 = 8;
    /// Most entries a request may hold (it lies in one page).
    pub const MAX_ENTRIES: usize = 511;
    /// Most entries a request in the calling area's buffer can hold.
    pub const MAX_ENTRIES_IN_CAA: usize = 510;
    /// Result when a page's validated state did not change and the entry did not set
    /// `ignore_cf` (PVALIDATE's CF = 1).
    pub const FAIL_UNCHANGED: u64 = PROTOCOL_RESULT_BASE + 0x10;

    /// The result of a PVALIDATE that failed with `code` (1 FAIL_INPUT, 6
    /// FAIL_SIZEMISMATCH).
    pub const fn fail(code: u32) -> u64 {
        PROTOCOL_RESULT_BASE + code as u64
    }

    /// One entry: bits 1:0 page size (0 4 KiB, 1 2 MiB), bit 2 validate, bit 3
    /// ignore_cf, bits 11:4 reserved (zero), bits 63:12 the GFN.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Entry {
        /// Guest-physical address of the page.
        pub gpa: u64,
        /// 2 MiB (else 4 KiB).
        pub huge: bool,
        /// Validate (else rescind).
        pub validate: bool,
        /// An unchanged state is not an error.
        pub ignore_cf: bool,
    }

    impl Entry {
        /// Decode; `Err` for a page size above 1 or reserved bits set.
        #[allow(clippy::result_unit_err, reason = "one way to be malformed")]
        pub fn decode(raw: u64) -> Result<Self, ()> {
            if raw & 3 > 1 || raw & 0xFF0 != 0 {
                return Err(());
            }
            Ok(Self {
                gpa: raw & !0xFFF,
                huge: raw & 3 == 1,
                validate: raw & 4 != 0,
                ignore_cf: raw & 8 != 0,
            })
        }

        /// Encode.
        pub fn encode(&self) -> u64 {
            (self.gpa & !0xFFF)
                | u64::from(self.huge)
                | (u64::from(self.validate) << 2)
                | (u64::from(self.ignore_cf) << 3)
        }
    }
}

/// vHSM protocol calls (protocol [`protocol::VHSM`], version 1). See
/// `docs/vhsm-protocol.md` for the message format.
pub mod vhsm_call {
    /// Serve one vHSM request. In: RCX = request GPA, RDX = request length (1 to
    /// `vhsm::MAX_REQUEST_SIZE`), R8 = response buffer GPA, R9 = its size (at least
    /// `vhsm::MAX_RESPONSE_SIZE`; the SVSM writes at most that many bytes). Out:
    /// RAX = SUCCESS and RCX = response length; the response (a vHSM response, which
    /// may carry an error status) is in the response buffer. Errors, with nothing
    /// written: ERR_INVALID_ADDRESS for a buffer that is not wholly guest RAM outside
    /// SVSM memory and the calling area, wraps around or exceeds its limit;
    /// ERR_INVALID_PARAMETER (RCX = the size needed) for a response buffer that is too
    /// small; ERR_INVALID_FORMAT for a request that is not a framed vHSM message
    /// (shorter than its header, or a header whose body length disagrees with RDX).
    pub const REQUEST: u32 = 0;
}

/// Version of the vHSM protocol served.
pub const VHSM_PROTOCOL_VERSION: u32 = 1;

/// Version of the core protocol served.
pub const CORE_PROTOCOL_VERSION: u32 = 1;

/// Result codes returned in RAX.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u64)]
pub enum ResultCode {
    /// The call succeeded.
    Success = 0,
    /// The call is not finished; the guest repeats it.
    Incomplete = 0x8000_0000,
    /// The protocol is not served.
    UnsupportedProtocol = 0x8000_0001,
    /// The call is not served by this protocol.
    UnsupportedCall = 0x8000_0002,
    /// An address argument is not acceptable.
    InvalidAddress = 0x8000_0003,
    /// A request structure is malformed.
    InvalidFormat = 0x8000_0004,
    /// A parameter is not acceptable.
    InvalidParameter = 0x8000_0005,
    /// The request is not valid in this state.
    InvalidRequest = 0x8000_0006,
    /// The SVSM is busy; the guest repeats the call.
    Busy = 0x8000_0007,
}

/// Base of protocol-specific result codes (`0x8000_1000 + code`).
pub const PROTOCOL_RESULT_BASE: u64 = 0x8000_1000;

impl ResultCode {
    /// The value carried in RAX.
    pub const fn raw(self) -> u64 {
        self as u64
    }

    /// Decode a raw RAX value; `None` for protocol-specific or unknown codes.
    pub const fn from_raw(raw: u64) -> Option<Self> {
        Some(match raw {
            0 => Self::Success,
            0x8000_0000 => Self::Incomplete,
            0x8000_0001 => Self::UnsupportedProtocol,
            0x8000_0002 => Self::UnsupportedCall,
            0x8000_0003 => Self::InvalidAddress,
            0x8000_0004 => Self::InvalidFormat,
            0x8000_0005 => Self::InvalidParameter,
            0x8000_0006 => Self::InvalidRequest,
            0x8000_0007 => Self::Busy,
            _ => return None,
        })
    }

    /// The name used in the SVSM specification.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Success => "SUCCESS",
            Self::Incomplete => "ERR_INCOMPLETE",
            Self::UnsupportedProtocol => "ERR_UNSUPPORTED_PROTOCOL",
            Self::UnsupportedCall => "ERR_UNSUPPORTED_CALL",
            Self::InvalidAddress => "ERR_INVALID_ADDRESS",
            Self::InvalidFormat => "ERR_INVALID_FORMAT",
            Self::InvalidParameter => "ERR_INVALID_PARAMETER",
            Self::InvalidRequest => "ERR_INVALID_REQUEST",
            Self::Busy => "ERR_BUSY",
        }
    }
}

/// Compose RAX for a call.
pub const fn call_rax(protocol: u32, call_id: u32) -> u64 {
    ((protocol as u64) << 32) | call_id as u64
}

/// Split RAX into `(protocol, call_id)`.
pub const fn split_rax(rax: u64) -> (u32, u32) {
    ((rax >> 32) as u32, rax as u32)
}

/// RCX argument of `QUERY_PROTOCOL`.
pub const fn query_protocol_arg(protocol: u32, version: u32) -> u64 {
    ((protocol as u64) << 32) | version as u64
}

/// RCX result of `QUERY_PROTOCOL` for a served protocol.
pub const fn query_protocol_result(max: u32, min: u32) -> u64 {
    ((max as u64) << 32) | min as u64
}

/// The registers of one SVSM call, in and out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CallRegs {
    /// In: `protocol << 32 | call_id`; out: result code.
    pub rax: u64,
    /// First argument / output.
    pub rcx: u64,
    /// Second argument / output.
    pub rdx: u64,
    /// Third argument / output.
    pub r8: u64,
    /// Fourth argument / output.
    pub r9: u64,
}

/// Size of a page, and of the CAA.
pub const PAGE_SIZE: u64 = 4096;

/// The calling area: one 4 KiB page per vCPU, owned by the guest.
pub mod caa {
    /// Offset of `call_pending` (u8).
    pub const CALL_PENDING: u64 = 0x0;
    /// Offset of `mem_available` (u8).
    pub const MEM_AVAILABLE: u64 = 0x1;
    /// Offset of the buffer.
    pub const BUFFER: u64 = 0x8;
    /// Size of the buffer.
    pub const BUFFER_SIZE: u64 = 4088;
}

/// The SVSM fields of the SNP secrets page (REFERENCE.md section 1), from offset
/// 0x140. The SVSM fills them in the guest's copy of the secrets page
/// (`docs/guest-contract.md`), where a guest's discovery code (Linux's too) reads
/// them.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct SecretsSvsmFields {
    /// GPA of the SVSM's memory.
    pub svsm_base: u64,
    /// Size of the SVSM's memory.
    pub svsm_size: u64,
    /// GPA of the boot vCPU's calling area.
    pub svsm_caa: u64,
    /// Highest SVSM protocol version.
    pub svsm_max_version: u32,
    /// VMPL the guest runs at.
    pub svsm_guest_vmpl: u8,
    /// Padding up to `tsc_factor` at 0x160.
    pub reserved: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<SecretsSvsmFields>() == 0x160 - 0x140);

/// Offsets in the secrets page.
pub mod secrets {
    /// Secrets-page format version.
    pub const VERSION: usize = 0x000;
    /// VMPCK0..3, 32 bytes each.
    pub const VMPCK: [usize; 4] = [0x020, 0x040, 0x060, 0x080];
    /// Start of the SVSM fields ([`super::SecretsSvsmFields`]).
    pub const SVSM_FIELDS: usize = 0x140;
    /// `svsm_base`.
    pub const SVSM_BASE: usize = 0x140;
    /// `svsm_size`.
    pub const SVSM_SIZE: usize = 0x148;
    /// `svsm_caa`.
    pub const SVSM_CAA: usize = 0x150;
    /// `svsm_max_version`.
    pub const SVSM_MAX_VERSION: usize = 0x158;
    /// `svsm_guest_vmpl`.
    pub const SVSM_GUEST_VMPL: usize = 0x15C;
}

/// What a guest learns about its SVSM from the secrets page, after the checks Linux
/// makes (size not 0, guest VMPL not 0, CAA page aligned).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SvsmInfo {
    /// GPA of the SVSM's memory.
    pub base: u64,
    /// Size of the SVSM's memory.
    pub size: u64,
    /// GPA of the boot vCPU's CAA.
    pub caa: u64,
    /// Highest protocol version.
    pub max_version: u32,
    /// The guest's VMPL.
    pub guest_vmpl: u8,
}

/// Why the secrets page does not describe a usable SVSM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiscoveryError {
    /// The page is shorter than the SVSM fields.
    Truncated,
    /// `svsm_size` is 0: no SVSM.
    NoSvsm,
    /// `svsm_guest_vmpl` is 0: the guest would share VMPL0 with the SVSM.
    GuestAtVmpl0,
    /// The CAA is not page aligned.
    UnalignedCaa(u64),
    /// `svsm_base + svsm_size` overflows.
    RangeOverflow,
}

impl SvsmInfo {
    /// Parse and check the SVSM fields of a secrets page (the whole page or at
    /// least its first 0x160 bytes).
    pub fn from_secrets_page(page: &[u8]) -> Result<Self, DiscoveryError> {
        let fields = page
            .get(
                secrets::SVSM_FIELDS
                    ..secrets::SVSM_FIELDS + core::mem::size_of::<SecretsSvsmFields>(),
            )
            .and_then(|b| SecretsSvsmFields::read_from_bytes(b).ok())
            .ok_or(DiscoveryError::Truncated)?;
        if fields.svsm_size == 0 {
            return Err(DiscoveryError::NoSvsm);
        }
        if fields.svsm_guest_vmpl == 0 {
            return Err(DiscoveryError::GuestAtVmpl0);
        }
        if fields.svsm_caa % PAGE_SIZE != 0 {
            return Err(DiscoveryError::UnalignedCaa(fields.svsm_caa));
        }
        fields
            .svsm_base
            .checked_add(fields.svsm_size)
            .ok_or(DiscoveryError::RangeOverflow)?;
        Ok(Self {
            base: fields.svsm_base,
            size: fields.svsm_size,
            caa: fields.svsm_caa,
            max_version: fields.svsm_max_version,
            guest_vmpl: fields.svsm_guest_vmpl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rax_round_trip() {
        let rax = call_rax(protocol::VHSM, 7);
        assert_eq!(split_rax(rax), (protocol::VHSM, 7));
        assert_eq!(call_rax(0, core_call::QUERY_PROTOCOL), 6);
    }

    #[test]
    fn result_codes_match_spec() {
        assert_eq!(ResultCode::Success.raw(), 0);
        assert_eq!(ResultCode::InvalidAddress.raw(), 0x8000_0003);
        assert_eq!(ResultCode::Busy.raw(), 0x8000_0007);
        for raw in 0x8000_0000u64..=0x8000_0007 {
            let code = ResultCode::from_raw(raw).expect("known code");
            assert_eq!(code.raw(), raw);
        }
        assert_eq!(ResultCode::from_raw(1), None);
        assert_eq!(ResultCode::from_raw(0x8000_0008), None);
    }

    fn page_with(base: u64, size: u64, caa: u64, vmpl: u8) -> [u8; 4096] {
        let mut page = [0u8; 4096];
        page[secrets::SVSM_BASE..][..8].copy_from_slice(&base.to_le_bytes());
        page[secrets::SVSM_SIZE..][..8].copy_from_slice(&size.to_le_bytes());
        page[secrets::SVSM_CAA..][..8].copy_from_slice(&caa.to_le_bytes());
        page[secrets::SVSM_MAX_VERSION..][..4].copy_from_slice(&1u32.to_le_bytes());
        page[secrets::SVSM_GUEST_VMPL] = vmpl;
        page
    }

    #[test]
    fn discovery_accepts_a_good_page() {
        let info = SvsmInfo::from_secrets_page(&page_with(0x100_0000, 0x100_0000, 0x10_1000, 1))
            .expect("valid");
        assert_eq!(info.base, 0x100_0000);
        assert_eq!(info.size, 0x100_0000);
        assert_eq!(info.caa, 0x10_1000);
        assert_eq!(info.max_version, 1);
        assert_eq!(info.guest_vmpl, 1);
    }

    #[test]
    fn discovery_refuses_what_linux_refuses() {
        assert_eq!(
            SvsmInfo::from_secrets_page(&page_with(0x100_0000, 0, 0x10_1000, 1)),
            Err(DiscoveryError::NoSvsm)
        );
        assert_eq!(
            SvsmInfo::from_secrets_page(&page_with(0x100_0000, 0x1000, 0x10_1000, 0)),
            Err(DiscoveryError::GuestAtVmpl0)
        );
        assert_eq!(
            SvsmInfo::from_secrets_page(&page_with(0x100_0000, 0x1000, 0x10_1008, 1)),
            Err(DiscoveryError::UnalignedCaa(0x10_1008))
        );
        assert_eq!(
            SvsmInfo::from_secrets_page(&page_with(u64::MAX, 0x1000, 0x10_1000, 1)),
            Err(DiscoveryError::RangeOverflow)
        );
        assert_eq!(
            SvsmInfo::from_secrets_page(&[0u8; 0x150]),
            Err(DiscoveryError::Truncated)
        );
    }
}
