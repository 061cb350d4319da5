//! Framing on the relay channel: the host-side tools talk to the relay guest over a
//! byte stream (QEMU's COM2), and the relay guest turns each frame into a real SVSM
//! call. The relay plays the guest OS: it holds no keys and is not trusted by the
//! host either (the host checks what comes back like any SVSM result).
//!
//! All integers little-endian. Host to relay:
//!
//! | frame | layout |
//! |---|---|
//! | request | `"NRQ1"`, u32 len, len bytes of vHSM request |
//! | raw call | `"NRW1"`, u64 rcx, u64 rdx, u64 r8, u64 r9, u32 len, len bytes copied to the relay's request buffer first |
//! | info | `"NIN1"` |
//! | attack | `"NAT1"`, u64 gpa, u8 kind (0 read, 1 write, 2 execute): the relay touches `gpa` itself (isolation tests; the SVSM must stop it) |
//!
//! Relay to host: `"NRS1"`, u64 rax, u64 rcx, u32 len, len bytes. For a request and a
//! raw call, RAX/RCX are the SVSM's result registers and the bytes are the response
//! (RCX bytes of the relay's response buffer) when RAX is SUCCESS. For info, the
//! bytes are [`RelayInfo`].
//!
//! A request frame is sent as the vHSM call `REQUEST` with RCX/RDX naming the relay's
//! request buffer and R8/R9 its response buffer ([`RESPONSE_BUFFER_SIZE`] bytes).

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Magic of a request frame.
pub const REQUEST_MAGIC: [u8; 4] = *b"NRQ1";
/// Magic of a raw-call frame.
pub const RAW_MAGIC: [u8; 4] = *b"NRW1";
/// Magic of an info frame.
pub const INFO_MAGIC: [u8; 4] = *b"NIN1";
/// Magic of an attack frame.
pub const ATTACK_MAGIC: [u8; 4] = *b"NAT1";
/// Magic of a response frame.
pub const RESPONSE_MAGIC: [u8; 4] = *b"NRS1";

/// Size of the relay's request buffer: the largest vHSM request, and the largest
/// payload a frame may carry.
pub const REQUEST_BUFFER_SIZE: usize = crate::vhsm::MAX_REQUEST_SIZE;
/// Size of the relay's response buffer: the largest vHSM response.
pub const RESPONSE_BUFFER_SIZE: usize = crate::vhsm::MAX_RESPONSE_SIZE;

/// Head of a raw-call frame after the magic.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C, packed)]
pub struct RawCallHead {
    /// RCX for the vHSM call.
    pub rcx: u64,
    /// RDX.
    pub rdx: u64,
    /// R8.
    pub r8: u64,
    /// R9.
    pub r9: u64,
    /// Payload length.
    pub len: u32,
}
const _: () = assert!(core::mem::size_of::<RawCallHead>() == 36);

/// Head of a response frame after the magic.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C, packed)]
pub struct ResponseHead {
    /// RAX after the call (the SVSM result code).
    pub rax: u64,
    /// RCX after the call.
    pub rcx: u64,
    /// Payload length.
    pub len: u32,
}
const _: () = assert!(core::mem::size_of::<ResponseHead>() == 20);

/// What the relay tells the host about itself (payload of the info response), so
/// tests can aim raw calls at its buffers, its CAA and the SVSM.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct RelayInfo {
    /// GPA of the relay's calling area.
    pub caa: u64,
    /// GPA of its request buffer.
    pub request_buffer: u64,
    /// GPA of its response buffer.
    pub response_buffer: u64,
    /// SVSM base from the secrets page.
    pub svsm_base: u64,
    /// SVSM size from the secrets page.
    pub svsm_size: u64,
}
const _: () = assert!(core::mem::size_of::<RelayInfo>() == 40);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip() {
        let h = RawCallHead {
            rcx: 1,
            rdx: 2,
            r8: 3,
            r9: 4,
            len: 5,
        };
        let b = h.as_bytes();
        assert_eq!(&b[..8], &1u64.to_le_bytes());
        assert_eq!(&b[32..36], &5u32.to_le_bytes());
        assert_eq!(RawCallHead::read_from_bytes(b), Ok(h));
        let r = ResponseHead {
            rax: 0x8000_0003,
            rcx: 9,
            len: 0,
        };
        assert_eq!(ResponseHead::read_from_bytes(r.as_bytes()), Ok(r));
        let i = RelayInfo {
            caa: 1,
            request_buffer: 2,
            response_buffer: 3,
            svsm_base: 4,
            svsm_size: 5,
        };
        assert_eq!(RelayInfo::read_from_bytes(i.as_bytes()).ok(), Some(i));
    }
}
