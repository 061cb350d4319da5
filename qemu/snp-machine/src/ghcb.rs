//! The GHCB protocol (GHCB specification 56421; Linux sev-common.h, svm.h): the MSR
//! protocol carried in MSR 0xC001_0130, and the layout and codes of the GHCB page.

/// The GHCB MSR.
pub const MSR_GHCB: u32 = 0xC001_0130;
/// SEV_STATUS.
pub const MSR_SEV_STATUS: u32 = 0xC001_0131;

/// MSR protocol request and response codes (bits 11:0).
pub mod msr {
    /// SEV information request / response.
    pub const SEV_INFO_REQ: u64 = 0x002;
    /// SEV information response: max version 63:48, min 47:32, C-bit 31:24.
    pub const SEV_INFO_RESP: u64 = 0x001;
    /// CPUID request: function 63:32, register 31:30.
    pub const CPUID_REQ: u64 = 0x004;
    /// CPUID response: value 63:32.
    pub const CPUID_RESP: u64 = 0x005;
    /// Register the GHCB GPA (GFN in 63:12).
    pub const REG_GPA_REQ: u64 = 0x012;
    /// Its response (the GFN, or all ones when refused).
    pub const REG_GPA_RESP: u64 = 0x013;
    /// Page state change: GFN 51:12, operation 55:52 (1 private, 2 shared).
    pub const PSC_REQ: u64 = 0x014;
    /// Its response: error 63:32 (0 success).
    pub const PSC_RESP: u64 = 0x015;
    /// Run a VMPL (VMPL in 39:32).
    pub const RUN_VMPL_REQ: u64 = 0x016;
    /// Its response: error 63:32 (0 success).
    pub const RUN_VMPL_RESP: u64 = 0x017;
    /// Hypervisor features request.
    pub const HV_FT_REQ: u64 = 0x080;
    /// Hypervisor features response (features 63:12).
    pub const HV_FT_RESP: u64 = 0x081;
    /// Termination request: reason set 15:12, code 23:16.
    pub const TERM_REQ: u64 = 0x100;
}

/// The GHCB protocol versions served (2: SEV-SNP).
pub const PROTOCOL_MIN: u64 = 2;
/// Highest version served.
pub const PROTOCOL_MAX: u64 = 2;
/// Hypervisor features: SEV-SNP (bit 0), AP creation (bit 1).
pub const HV_FEATURES: u64 = 0b11;

/// GHCB page offsets.
pub mod off {
    /// RAX.
    pub const RAX: usize = 0x1F8;
    /// RCX.
    pub const RCX: usize = 0x308;
    /// RDX.
    pub const RDX: usize = 0x310;
    /// RBX.
    pub const RBX: usize = 0x318;
    /// SW_EXITCODE.
    pub const SW_EXIT_CODE: usize = 0x390;
    /// SW_EXITINFO1.
    pub const SW_EXIT_INFO_1: usize = 0x398;
    /// SW_EXITINFO2.
    pub const SW_EXIT_INFO_2: usize = 0x3A0;
    /// SW_SCRATCH.
    pub const SW_SCRATCH: usize = 0x3A8;
    /// XCR0.
    pub const XCR0: usize = 0x3E8;
    /// Valid bitmap (one bit per 8-byte field of the save area).
    pub const VALID_BITMAP: usize = 0x3F0;
    /// Shared buffer.
    pub const SHARED_BUFFER: usize = 0x800;
    /// Shared buffer size.
    pub const SHARED_BUFFER_SIZE: usize = 2032;
    /// Protocol version (u16).
    pub const PROTOCOL_VERSION: usize = 0xFFA;
    /// GHCB usage (u32; 0 = the standard format).
    pub const USAGE: usize = 0xFFC;
}

/// The valid-bitmap bit of the field at `offset`.
pub const fn valid_bit(offset: usize) -> usize {
    offset / 8
}

/// NAE exit codes (SW_EXITCODE).
pub mod nae {
    /// CPUID.
    pub const CPUID: u64 = 0x72;
    /// I/O port access.
    pub const IOIO: u64 = 0x7B;
    /// MSR access.
    pub const MSR: u64 = 0x7C;
    /// Page state change.
    pub const PSC: u64 = 0x8000_0010;
    /// Guest request.
    pub const GUEST_REQUEST: u64 = 0x8000_0011;
    /// Extended guest request.
    pub const EXT_GUEST_REQUEST: u64 = 0x8000_0012;
    /// AP creation.
    pub const AP_CREATION: u64 = 0x8000_0013;
    /// Run a VMPL.
    pub const RUN_VMPL: u64 = 0x8000_0018;
    /// Hypervisor features.
    pub const HV_FEATURES: u64 = 0x8000_FFFD;
    /// Termination request.
    pub const TERM_REQUEST: u64 = 0x8000_FFFE;
}

/// AP creation operations (SW_EXITINFO1 bits 15:0).
pub mod ap {
    /// Create the VMSA, run on INIT.
    pub const CREATE_ON_INIT: u64 = 0;
    /// Create the VMSA.
    pub const CREATE: u64 = 1;
    /// Destroy it.
    pub const DESTROY: u64 = 2;
}

/// Errors in SW_EXITINFO2 when SW_EXITINFO1 is 2.
pub mod err {
    /// The GHCB is not registered.
    pub const NOT_REGISTERED: u64 = 1;
    /// Invalid GHCB usage.
    pub const INVALID_USAGE: u64 = 2;
    /// Invalid scratch area.
    pub const INVALID_SCRATCH_AREA: u64 = 3;
    /// A required input is not marked valid.
    pub const MISSING_INPUT: u64 = 4;
    /// An input is invalid.
    pub const INVALID_INPUT: u64 = 5;
    /// Unknown event.
    pub const INVALID_EVENT: u64 = 6;
}

/// The event a hypervisor asks the guest to take (SW_EXITINFO1 = 1): #GP(0).
pub const INJECT_GP: u64 = 0x8000_0B0D;

/// Guest-request hypervisor error (SW_EXITINFO2 bits 63:32): certificate buffer too
/// small (RBX = pages needed).
pub const GUEST_REQUEST_INVALID_LEN: u64 = 1;
