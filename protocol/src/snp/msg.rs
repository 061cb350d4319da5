//! Guest messages to the PSP (REFERENCE.md section 6): the 0x60-byte header and the
//! REPORT_REQ / REPORT_RSP / KEY_REQ / KEY_RSP bodies. Encryption (AES-256-GCM with
//! a VMPCK) is done by the caller; these are the plaintext layouts.

use core::mem::{offset_of, size_of};

use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::report::AttestationReport;

/// Message types.
pub mod msg_type {
    /// Key derivation request.
    pub const KEY_REQ: u8 = 3;
    /// Key derivation response.
    pub const KEY_RSP: u8 = 4;
    /// Report request.
    pub const REPORT_REQ: u8 = 5;
    /// Report response.
    pub const REPORT_RSP: u8 = 6;
}

/// `algo` value for AES-256-GCM.
pub const AEAD_AES_256_GCM: u8 = 1;
/// Header version.
pub const HDR_VERSION: u8 = 1;
/// The AAD is header bytes `0x30..0x60`.
pub const AAD_RANGE: core::ops::Range<usize> = 0x30..0x60;

/// Guest message header (0x60 bytes); the payload follows.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct MsgHeader {
    /// Authentication tag (AES-GCM uses the first 16 bytes).
    pub authtag: [u8; 32],
    /// Sequence number (also the IV).
    pub msg_seqno: U64,
    /// Reserved.
    pub reserved1: [u8; 8],
    /// AEAD algorithm ([`AEAD_AES_256_GCM`]).
    pub algo: u8,
    /// Header version ([`HDR_VERSION`]).
    pub hdr_version: u8,
    /// Header size (0x60).
    pub hdr_sz: U16,
    /// Message type ([`msg_type`]).
    pub msg_type: u8,
    /// Message version.
    pub msg_version: u8,
    /// Payload size.
    pub msg_sz: U16,
    /// Reserved.
    pub reserved2: U32,
    /// VMPCK index used.
    pub msg_vmpck: u8,
    /// Reserved.
    pub reserved3: [u8; 35],
}

const _: () = assert!(size_of::<MsgHeader>() == 0x60);
const _: () = assert!(offset_of!(MsgHeader, msg_seqno) == 0x20);
const _: () = assert!(offset_of!(MsgHeader, algo) == 0x30);
const _: () = assert!(offset_of!(MsgHeader, msg_type) == 0x34);
const _: () = assert!(offset_of!(MsgHeader, msg_sz) == 0x36);
const _: () = assert!(offset_of!(MsgHeader, msg_vmpck) == 0x3C);

/// REPORT_REQ body.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ReportReq {
    /// Data placed in REPORT_DATA.
    pub user_data: [u8; 64],
    /// VMPL recorded in the report (must be >= the caller's VMPL).
    pub vmpl: U32,
    /// Key selection (bits 1:0: 0 VLEK if installed else VCEK, 1 VCEK, 2 VLEK).
    pub key_sel: U32,
    /// Reserved.
    pub reserved: [u8; 24],
}

const _: () = assert!(size_of::<ReportReq>() == 0x60);
const _: () = assert!(offset_of!(ReportReq, vmpl) == 0x40);
const _: () = assert!(offset_of!(ReportReq, key_sel) == 0x44);

/// REPORT_RSP body.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned,
)]
#[repr(C)]
pub struct ReportRsp {
    /// Status: 0 success, 0x16 invalid parameters, 0x27 invalid key.
    pub status: U32,
    /// Size of the report.
    pub report_size: U32,
    /// Reserved.
    pub reserved: [u8; 24],
    /// The report.
    pub report: AttestationReport,
}

const _: () = assert!(size_of::<ReportRsp>() == 0x20 + 0x4A0);
const _: () = assert!(offset_of!(ReportRsp, report) == 0x20);

/// KEY_REQ body.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct KeyReq {
    /// Root key: 0 VCEK, 1 VMRK.
    pub root_key_select: U32,
    /// Reserved.
    pub reserved: U32,
    /// Guest fields mixed in ([`guest_field`]).
    pub guest_field_select: U64,
    /// VMPL mixed in (must be >= the caller's VMPL).
    pub vmpl: U32,
    /// Guest SVN mixed in.
    pub guest_svn: U32,
    /// TCB version mixed in.
    pub tcb_version: U64,
}

const _: () = assert!(size_of::<KeyReq>() == 0x20);
const _: () = assert!(offset_of!(KeyReq, vmpl) == 0x10);
const _: () = assert!(offset_of!(KeyReq, tcb_version) == 0x18);

/// Bits of [`KeyReq::guest_field_select`].
pub mod guest_field {
    /// Guest policy.
    pub const POLICY: u64 = 1 << 0;
    /// Image ID.
    pub const IMAGE_ID: u64 = 1 << 1;
    /// Family ID.
    pub const FAMILY_ID: u64 = 1 << 2;
    /// Launch measurement.
    pub const MEASUREMENT: u64 = 1 << 3;
    /// Guest SVN.
    pub const GUEST_SVN: u64 = 1 << 4;
    /// TCB version.
    pub const TCB_VERSION: u64 = 1 << 5;
    /// Launch mitigation vector.
    pub const LAUNCH_MIT_VECTOR: u64 = 1 << 6;
}

/// KEY_RSP body.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct KeyRsp {
    /// Status (0 success).
    pub status: U32,
    /// Reserved.
    pub reserved: [u8; 28],
    /// The derived key.
    pub derived_key: [u8; 32],
}

const _: () = assert!(size_of::<KeyRsp>() == 0x40);
const _: () = assert!(offset_of!(KeyRsp, derived_key) == 0x20);

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn header_round_trip() {
        let h = MsgHeader {
            msg_seqno: U64::new(0x0102_0304_0506_0708),
            algo: AEAD_AES_256_GCM,
            hdr_version: HDR_VERSION,
            hdr_sz: U16::new(0x60),
            msg_type: msg_type::REPORT_REQ,
            msg_version: 1,
            msg_sz: U16::new(0x60),
            msg_vmpck: 2,
            ..MsgHeader::new_zeroed()
        };
        let b = h.as_bytes();
        assert_eq!(&b[0x20..0x28], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[AAD_RANGE][..8], &[1, 1, 0x60, 0, 5, 1, 0x60, 0]);
        assert_eq!(b[0x3C], 2);
        assert_eq!(MsgHeader::read_from_bytes(b), Ok(h));
    }

    #[test]
    fn report_req_rsp_round_trip() {
        let mut req = ReportReq::new_zeroed();
        req.user_data = [0x5a; 64];
        req.vmpl = U32::new(1);
        req.key_sel = U32::new(2);
        let b = req.as_bytes();
        assert_eq!((b[0x3f], b[0x40], b[0x44]), (0x5a, 1, 2));
        assert_eq!(ReportReq::read_from_bytes(b), Ok(req));

        let mut rsp = ReportRsp::new_zeroed();
        rsp.status = U32::new(0x16);
        rsp.report_size = U32::new(0x4A0);
        rsp.report.version = U32::new(5);
        let b = rsp.as_bytes();
        assert_eq!((b[0], b[4], b[5], b[0x20]), (0x16, 0xA0, 0x04, 5));
        assert_eq!(ReportRsp::read_from_bytes(b), Ok(rsp));
    }

    #[test]
    fn key_req_rsp_round_trip() {
        let req = KeyReq {
            root_key_select: U32::new(1),
            guest_field_select: U64::new(guest_field::MEASUREMENT | guest_field::POLICY),
            vmpl: U32::new(0),
            guest_svn: U32::new(7),
            tcb_version: U64::new(0xAB),
            ..Default::default()
        };
        let b = req.as_bytes();
        assert_eq!((b[0], b[8], b[0x14], b[0x18]), (1, 9, 7, 0xAB));
        assert_eq!(KeyReq::read_from_bytes(b), Ok(req));
        let mut rsp = KeyRsp::default();
        rsp.derived_key[31] = 9;
        let b = rsp.as_bytes();
        assert_eq!(b[0x3F], 9);
        assert_eq!(KeyRsp::read_from_bytes(b), Ok(rsp));
    }
}
