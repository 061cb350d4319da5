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
//! | attest | `"NAS1"`, [`AttestHead`] (call, service GUID, manifest version, nonce length, want-certificates flag, buffer sizes to offer), nonce_len bytes of nonce |
//! | secrets | `"NSC1"`: the relay answers with its secrets page (4096 bytes) as it reads it |
//!
//! Relay to host: `"NRS1"`, u64 rax, u64 rcx, u32 len, len bytes. For a request and a
//! raw call, RAX/RCX are the SVSM's result registers and the bytes are the response
//! (RCX bytes of the relay's response buffer) when RAX is SUCCESS. For info, the
//! bytes are [`RelayInfo`].
//!
//! A request frame is sent as the vHSM call `REQUEST` with RCX/RDX naming the relay's
//! request buffer and R8/R9 its response buffer ([`RESPONSE_BUFFER_SIZE`] bytes).
//!
//! An attest frame becomes one call of the SVSM attestation protocol (protocol 1,
//! `attest::attest_call`): the relay writes the `ServicesRequest` /
//! `SingleServiceRequest` into a page of its own (not the CAA's buffer: the request
//! page stays the relay's alone, and the SVSM must accept any guest page), the nonce
//! into its nonce buffer, and offers its report, manifest and certificate buffers with
//! the sizes the frame asks for (clamped to [`ATTEST_REPORT_BUFFER_SIZE`],
//! [`ATTEST_MANIFEST_BUFFER_SIZE`], [`ATTEST_CERT_BUFFER_SIZE`]; certificate size 0
//! when `want_certificates` is 0). The relay passes on any nonce length: the SVSM
//! accepts exactly `attest::NONCE_SIZE` (64) bytes and answers every other length with
//! INVALID_PARAMETER; a nonce longer than [`ATTEST_NONCE_BUFFER_SIZE`] is read and
//! dropped but announced with its real length, so that check is what answers it. The answer is `"NRS1"` with RAX and RCX (manifest length) of the
//! call and a payload of [`AttestResultHead`] (RDX = certificate length, R8 = report
//! length), followed on SUCCESS by report (R8 bytes) || manifest (RCX bytes) ||
//! certificates (RDX bytes). On INVALID_PARAMETER the registers carry the sizes the
//! SVSM needs and nothing follows.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Magic of a request frame.
pub const REQUEST_MAGIC: [u8; 4] = *b"NRQ1";
/// Magic of a raw-call frame.
pub const RAW_MAGIC: [u8; 4] = *b"NRW1";
/// Magic of an info frame.
pub const INFO_MAGIC: [u8; 4] = *b"NIN1";
/// Magic of an attack frame.
pub const ATTACK_MAGIC: [u8; 4] = *b"NAT1";
/// Magic of an attest frame.
pub const ATTEST_MAGIC: [u8; 4] = *b"NAS1";
/// Magic of a secrets-page frame.
pub const SECRETS_MAGIC: [u8; 4] = *b"NSC1";
/// Magic of a response frame.
pub const RESPONSE_MAGIC: [u8; 4] = *b"NRS1";
/// Every frame the host may send the relay.
pub const HOST_MAGICS: [[u8; 4]; 6] = [
    REQUEST_MAGIC,
    RAW_MAGIC,
    INFO_MAGIC,
    ATTACK_MAGIC,
    ATTEST_MAGIC,
    SECRETS_MAGIC,
];

/// Size of the relay's request buffer: the largest vHSM request, and the largest
/// payload a frame may carry.
pub const REQUEST_BUFFER_SIZE: usize = crate::vhsm::MAX_REQUEST_SIZE;
/// Size of the relay's response buffer: the largest vHSM response.
pub const RESPONSE_BUFFER_SIZE: usize = crate::vhsm::MAX_RESPONSE_SIZE;

/// The relay's nonce buffer: a page. The SVSM accepts only nonces of exactly
/// `attest::NONCE_SIZE` (64) bytes; the relay carries any length up to a page so
/// that tests can show every other length is refused.
pub const ATTEST_NONCE_BUFFER_SIZE: usize = 4096;
/// The relay's report buffer.
pub const ATTEST_REPORT_BUFFER_SIZE: usize = 4096;
/// The relay's manifest buffer.
pub const ATTEST_MANIFEST_BUFFER_SIZE: usize = 16 * 1024;
/// The relay's certificate buffer.
pub const ATTEST_CERT_BUFFER_SIZE: usize = 16 * 1024;
/// The largest payload of an attest answer: the result head and all three buffers.
pub const ATTEST_MAX_PAYLOAD: usize = core::mem::size_of::<AttestResultHead>()
    + ATTEST_REPORT_BUFFER_SIZE
    + ATTEST_MANIFEST_BUFFER_SIZE
    + ATTEST_CERT_BUFFER_SIZE;
/// Size of the secrets page a secrets frame returns.
pub const SECRETS_PAGE_SIZE: usize = 4096;

/// Head of an attest frame after the magic; the nonce follows.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C, packed)]
pub struct AttestHead {
    /// Call of protocol 1 (`attest::attest_call`: 0 services, 1 single service).
    pub call: u32,
    /// The service (single service only; mixed-endian GUID).
    pub service_guid: crate::snp::Guid,
    /// The manifest version wanted (single service only).
    pub manifest_version: u32,
    /// Length of the nonce that follows.
    pub nonce_len: u32,
    /// Non-zero: offer the certificate buffer; zero: certificate size 0.
    pub want_certificates: u8,
    /// Report buffer size to offer.
    pub report_size: u32,
    /// Manifest buffer size to offer.
    pub manifest_size: u32,
    /// Certificate buffer size to offer (when wanted).
    pub cert_size: u32,
}
const _: () = assert!(core::mem::size_of::<AttestHead>() == 41);

/// Start of an attest answer's payload: the result registers RCX does not carry.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C, packed)]
pub struct AttestResultHead {
    /// RDX after the call: certificate length (needed size on INVALID_PARAMETER).
    pub rdx: u64,
    /// R8 after the call: report length (needed size on INVALID_PARAMETER).
    pub r8: u64,
}
const _: () = assert!(core::mem::size_of::<AttestResultHead>() == 16);

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

    #[test]
    fn attest_layouts() {
        let h = AttestHead {
            call: 1,
            service_guid: crate::attest::VHSM_SERVICE_GUID,
            manifest_version: 2,
            nonce_len: 64,
            want_certificates: 1,
            report_size: 0x4A0,
            manifest_size: 0x1000,
            cert_size: 0x2000,
        };
        let b = h.as_bytes();
        assert_eq!(&b[..4], &1u32.to_le_bytes());
        assert_eq!(&b[4..20], &crate::attest::VHSM_SERVICE_GUID);
        assert_eq!(&b[20..24], &2u32.to_le_bytes());
        assert_eq!(&b[24..28], &64u32.to_le_bytes());
        assert_eq!(b[28], 1);
        assert_eq!(&b[29..33], &0x4A0u32.to_le_bytes());
        assert_eq!(&b[33..37], &0x1000u32.to_le_bytes());
        assert_eq!(&b[37..41], &0x2000u32.to_le_bytes());
        assert_eq!(AttestHead::read_from_bytes(b), Ok(h));
        let r = AttestResultHead { rdx: 7, r8: 0x4A0 };
        assert_eq!(&r.as_bytes()[8..], &0x4A0u64.to_le_bytes());
        assert_eq!(AttestResultHead::read_from_bytes(r.as_bytes()), Ok(r));
        assert_eq!(ATTEST_MAX_PAYLOAD, 16 + 4096 + 32 * 1024);
        // Every magic is distinct, so the relay's resynchronisation can tell them apart.
        let magics = [
            REQUEST_MAGIC,
            RAW_MAGIC,
            INFO_MAGIC,
            ATTACK_MAGIC,
            ATTEST_MAGIC,
            SECRETS_MAGIC,
            RESPONSE_MAGIC,
        ];
        for (i, a) in magics.iter().enumerate() {
            assert!(magics[i + 1..].iter().all(|b| a != b));
        }
    }
}
