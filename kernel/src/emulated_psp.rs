//! The emulated AMD Secure Processor: what the hypervisor and the PSP do for a guest
//! request (GUEST_REQUEST and the extended request) on the emulated platform.
//!
//! It receives the same encrypted guest messages the real PSP would
//! (REFERENCE.md section 6), checks and decrypts them with its copy of the VMPCK
//! named by `msg_vmpck` (VMPCKn belongs to VMPLn), tracks the next expected sequence
//! number of each VMPCK, and answers with an encrypted response. Reports are real
//! version-3 reports signed with the development VCEK from the dev-PSP blob
//! ([`DevPspConfig`], `nitride_protocol::emulated::dev_psp`); derived keys come from
//! the blob's chip secret. `docs/emulated-platform.md` ("The emulated PSP") describes
//! the behaviour; the exact rules are:
//!
//! **Transport errors** (the message is not processed, the expected sequence number
//! does not move), as [`ChannelError`]:
//! - extended request whose buffer is shorter than the certificate table:
//!   `CertificatesTooSmall { pages }` with the pages needed (the hypervisor's
//!   INVALID_LEN), checked first;
//! - malformed header (`algo` not AES-256-GCM, `hdr_version` not 1, `hdr_sz` not 0x60,
//!   `msg_vmpck` above 3, unknown `msg_type`, `msg_version` not 1, `msg_sz` not the
//!   size of the request body): `Firmware(`[`fw_status::INVALID_PARAM`]`)` (0x16);
//! - sequence number not the expected one, or authentication tag invalid:
//!   `Firmware(`[`fw_status::SECURE_DATA_INVALID`]`)` (0x18);
//! - sequence numbers exhausted: `Firmware(`[`fw_status::AEAD_OFLOW`]`)` (0x1D).
//!
//! **Status in the response body** (the message is answered, sequence numbers move):
//! 0x16 invalid parameters, 0x27 invalid key ([`status`]).
//!
//! **KEY_REQ derivation**: HKDF-SHA-384 (RFC 5869) with no salt, IKM = the chip
//! secret, L = 32, and `info` =
//! [`KEY_DOMAIN`] `|| vmpl (u32 LE) || guest_field_select (u64 LE)`, followed by,
//! for each selected field in bit order: policy (u64 LE, the guest policy of the
//! launch), image_id (16 bytes), family_id (16 bytes) (both all-zero: the emulated
//! launch has no ID block), measurement (48 bytes, of the launch), guest_svn (u32 LE,
//! from the request), tcb_version (u64 LE, from the request). Every piece has a fixed
//! width and the selection bits are part of `info`, so the encoding is unambiguous;
//! nothing depends on the boot, so the same request gives the same key across boots.

use alloc::vec::Vec;
use core::fmt;
use core::mem::size_of;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit};
use hkdf::Hkdf;
use nitride_protocol::emulated::dev_psp::{self, BlobHeader};
use nitride_protocol::snp::certs::{self, CertTableError};
use nitride_protocol::snp::msg::{
    guest_field, msg_type, KeyReq, KeyRsp, MsgHeader, ReportReq, ReportRsp, AAD_RANGE,
    AEAD_AES_256_GCM, HDR_VERSION,
};
use nitride_protocol::snp::report::{
    AttestationReport, REPORT_SIZE, SIGNED_LEN, SIG_ALGO_ECDSA_P384_SHA384,
};
use p384::ecdsa::signature::Signer;
use p384::ecdsa::{Signature, SigningKey};
use sha2::Sha384;
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, IntoBytes};
use zeroize::{Zeroize, Zeroizing};

use crate::psp::{
    nonce, tag_of, ChannelError, PspChannel, HEADER_SIZE, MAX_PAYLOAD, MSG_VERSION, PSP_PAGE,
};

/// SEV firmware status codes the emulated PSP fails a request with
/// ([`ChannelError::Firmware`]).
pub mod fw_status {
    /// A malformed header.
    pub const INVALID_PARAM: u32 = 0x16;
    /// Wrong sequence number or authentication tag.
    pub const SECURE_DATA_INVALID: u32 = 0x18;
    /// The sequence numbers of the VMPCK are exhausted.
    pub const AEAD_OFLOW: u32 = 0x1D;
}

/// Status codes in REPORT_RSP and KEY_RSP.
pub mod status {
    /// Success.
    pub const SUCCESS: u32 = 0;
    /// Invalid parameters (a VMPL below the caller's, VMPK root key, reserved values).
    pub const INVALID_PARAM: u32 = 0x16;
    /// Invalid key (VLEK asked for; the emulated chip has none).
    pub const INVALID_KEY: u32 = 0x27;
}

/// Domain string at the start of the KEY_REQ HKDF `info`.
pub const KEY_DOMAIN: &[u8] = b"nitride emulated psp key v1\0";

/// The guest fields KEY_REQ can mix in here (bit 6, the launch mitigation vector,
/// exists only with version-5 reports; this chip reports version 3).
const SUPPORTED_FIELDS: u64 = guest_field::POLICY
    | guest_field::IMAGE_ID
    | guest_field::FAMILY_ID
    | guest_field::MEASUREMENT
    | guest_field::GUEST_SVN
    | guest_field::TCB_VERSION;

/// Guest SVN of the emulated launch (no ID block).
const GUEST_SVN: u32 = 0;

/// Why a dev-PSP blob was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DevPspError {
    /// Shorter than its header.
    TooShort {
        /// Length given.
        len: usize,
    },
    /// The magic is not `dev_psp::MAGIC`.
    BadMagic,
    /// The reserved field is not zero.
    ReservedNotZero,
    /// The certificate table is longer than `dev_psp::MAX_CERT_TABLE`.
    TableTooLarge {
        /// Length in the header.
        len: usize,
    },
    /// The blob is not exactly header + certificate table.
    LengthMismatch {
        /// Length given.
        len: usize,
        /// Length the header implies.
        expected: usize,
    },
    /// The VCEK scalar is zero or not below the P-384 order.
    BadScalar,
    /// The certificate table does not parse.
    BadTable(CertTableError),
}

impl fmt::Display for DevPspError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort { len } => {
                write!(f, "dev-PSP blob: {len} bytes, shorter than its header")
            }
            Self::BadMagic => f.write_str("dev-PSP blob: bad magic"),
            Self::ReservedNotZero => f.write_str("dev-PSP blob: reserved field not zero"),
            Self::TableTooLarge { len } => write!(
                f,
                "dev-PSP blob: certificate table of {len} bytes exceeds {}",
                dev_psp::MAX_CERT_TABLE
            ),
            Self::LengthMismatch { len, expected } => {
                write!(f, "dev-PSP blob: {len} bytes, expected {expected}")
            }
            Self::BadScalar => f.write_str("dev-PSP blob: VCEK scalar out of range"),
            Self::BadTable(e) => write!(f, "dev-PSP blob: {e}"),
        }
    }
}

/// The emulated chip's secrets and certificates, from the dev-PSP blob.
pub struct DevPspConfig {
    vcek: SigningKey,
    chip_secret: Zeroizing<[u8; 32]>,
    cert_table: Vec<u8>,
}

impl fmt::Debug for DevPspConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevPspConfig")
            .field("vcek", &"[REDACTED]")
            .field("chip_secret", &"[REDACTED]")
            .field("cert_table_len", &self.cert_table.len())
            .finish()
    }
}

impl DevPspConfig {
    /// Parse a dev-PSP blob: `dev_psp::BlobHeader`, then the certificate table.
    pub fn parse(blob: &[u8]) -> Result<Self, DevPspError> {
        let (header, rest) = BlobHeader::ref_from_prefix(blob)
            .map_err(|_| DevPspError::TooShort { len: blob.len() })?;
        if header.magic != dev_psp::MAGIC {
            return Err(DevPspError::BadMagic);
        }
        if header.reserved.get() != 0 {
            return Err(DevPspError::ReservedNotZero);
        }
        let table_len = header.cert_table_len.get() as usize;
        if table_len > dev_psp::MAX_CERT_TABLE {
            return Err(DevPspError::TableTooLarge { len: table_len });
        }
        if rest.len() != table_len {
            return Err(DevPspError::LengthMismatch {
                len: blob.len(),
                expected: size_of::<BlobHeader>() + table_len,
            });
        }
        for entry in certs::entries(rest) {
            entry.map_err(DevPspError::BadTable)?;
        }
        let vcek =
            SigningKey::from_slice(&header.vcek_scalar).map_err(|_| DevPspError::BadScalar)?;
        Ok(Self {
            vcek,
            chip_secret: Zeroizing::new(header.chip_secret),
            cert_table: rest.to_vec(),
        })
    }

    /// The certificate table returned with extended requests.
    pub fn cert_table(&self) -> &[u8] {
        &self.cert_table
    }

    /// The VCEK's public key.
    pub fn vcek_public(&self) -> p384::ecdsa::VerifyingKey {
        *self.vcek.verifying_key()
    }
}

/// What the launch recorded about this guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchInfo {
    /// The launch measurement.
    pub measurement: [u8; 48],
    /// Host-supplied data.
    pub host_data: [u8; 32],
    /// The guest's report ID.
    pub report_id: [u8; 32],
}

/// The emulated PSP of one guest.
pub struct EmulatedPsp {
    config: DevPspConfig,
    launch: LaunchInfo,
    vmpcks: [Zeroizing<[u8; 32]>; 4],
    /// The next request sequence number expected on each VMPCK.
    expected: [u64; 4],
}

impl fmt::Debug for EmulatedPsp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatedPsp")
            .field("config", &self.config)
            .field("launch", &self.launch)
            .field("vmpcks", &"[REDACTED]")
            .field("expected", &self.expected)
            .finish()
    }
}

/// A message that passed the header and tag checks.
struct Opened {
    vmpck: usize,
    seqno: u64,
    msg_type: u8,
    body: Zeroizing<Vec<u8>>,
}

impl EmulatedPsp {
    /// The PSP of a guest launched as `launch`, sharing `vmpcks` (VMPCK0..3) with it.
    pub fn new(config: DevPspConfig, launch: LaunchInfo, vmpcks: [Zeroizing<[u8; 32]>; 4]) -> Self {
        Self {
            config,
            launch,
            vmpcks,
            expected: [1; 4],
        }
    }

    /// The configuration (certificates, VCEK public key).
    pub fn config(&self) -> &DevPspConfig {
        &self.config
    }

    /// Serve one guest request (what the hypervisor + PSP do for GUEST_REQUEST /
    /// the extended request).
    pub fn handle(
        &mut self,
        request: &[u8; PSP_PAGE],
        response: &mut [u8; PSP_PAGE],
        certificates: Option<&mut [u8]>,
    ) -> Result<(), ChannelError> {
        if let Some(buf) = certificates {
            let table = &self.config.cert_table;
            let Some(dst) = buf.get_mut(..table.len()) else {
                let pages = table.len().div_ceil(PSP_PAGE);
                return Err(ChannelError::CertificatesTooSmall {
                    pages: u32::try_from(pages).unwrap_or(u32::MAX),
                });
            };
            dst.copy_from_slice(table);
            buf[table.len()..].fill(0);
        }
        let opened = self.open(request)?;
        let body = match opened.msg_type {
            msg_type::REPORT_REQ => self.report(&opened)?,
            msg_type::KEY_REQ => self.key(&opened)?,
            _ => return Err(ChannelError::Firmware(fw_status::INVALID_PARAM)),
        };
        self.seal(&opened, &body, response)?;
        self.expected[opened.vmpck] = opened.seqno + 2;
        Ok(())
    }

    fn cipher(&self, vmpck: usize) -> Aes256Gcm {
        Aes256Gcm::new(self.vmpcks[vmpck].as_slice().into())
    }

    /// Check the header, the sequence number and the tag; decrypt the body.
    fn open(&self, request: &[u8; PSP_PAGE]) -> Result<Opened, ChannelError> {
        const INVALID: ChannelError = ChannelError::Firmware(fw_status::INVALID_PARAM);
        const SECURE: ChannelError = ChannelError::Firmware(fw_status::SECURE_DATA_INVALID);
        let (head, body) = request.split_at(HEADER_SIZE);
        let header = MsgHeader::read_from_bytes(head).map_err(|_| INVALID)?;
        let body_size = match header.msg_type {
            msg_type::REPORT_REQ => size_of::<ReportReq>(),
            msg_type::KEY_REQ => size_of::<KeyReq>(),
            _ => return Err(INVALID),
        };
        if header.algo != AEAD_AES_256_GCM
            || header.hdr_version != HDR_VERSION
            || usize::from(header.hdr_sz.get()) != HEADER_SIZE
            || header.msg_version != MSG_VERSION
            || usize::from(header.msg_sz.get()) != body_size
        {
            return Err(INVALID);
        }
        let vmpck = usize::from(header.msg_vmpck);
        let expected = *self.expected.get(vmpck).ok_or(INVALID)?;
        let seqno = header.msg_seqno.get();
        if seqno.checked_add(1).is_none() {
            return Err(ChannelError::Firmware(fw_status::AEAD_OFLOW));
        }
        if seqno != expected {
            return Err(SECURE);
        }
        let mut plain = Zeroizing::new(body[..body_size].to_vec());
        self.cipher(vmpck)
            .decrypt_in_place_detached(
                &nonce(seqno),
                &head[AAD_RANGE],
                &mut plain,
                &tag_of(&header),
            )
            .map_err(|_| SECURE)?;
        Ok(Opened {
            vmpck,
            seqno,
            msg_type: header.msg_type,
            body: plain,
        })
    }

    /// Encrypt `body` as the response to `req` into `response`.
    fn seal(
        &self,
        req: &Opened,
        body: &[u8],
        response: &mut [u8; PSP_PAGE],
    ) -> Result<(), ChannelError> {
        const INVALID: ChannelError = ChannelError::Firmware(fw_status::INVALID_PARAM);
        let seqno = req
            .seqno
            .checked_add(1)
            .ok_or(ChannelError::Firmware(fw_status::AEAD_OFLOW))?;
        if body.len() > MAX_PAYLOAD {
            return Err(INVALID);
        }
        let header = MsgHeader {
            msg_seqno: U64::new(seqno),
            algo: AEAD_AES_256_GCM,
            hdr_version: HDR_VERSION,
            hdr_sz: U16::new(HEADER_SIZE as u16),
            msg_type: req.msg_type + 1,
            msg_version: MSG_VERSION,
            msg_sz: U16::new(u16::try_from(body.len()).map_err(|_| INVALID)?),
            msg_vmpck: req.vmpck as u8,
            ..MsgHeader::new_zeroed()
        };
        response.fill(0);
        let (head, rest) = response.split_at_mut(HEADER_SIZE);
        head.copy_from_slice(header.as_bytes());
        let out = &mut rest[..body.len()];
        out.copy_from_slice(body);
        let tag = self
            .cipher(req.vmpck)
            .encrypt_in_place_detached(&nonce(seqno), &head[AAD_RANGE], out)
            .map_err(|_| INVALID)?;
        head[..16].copy_from_slice(&tag);
        Ok(())
    }

    /// Answer a REPORT_REQ.
    fn report(&self, req: &Opened) -> Result<Zeroizing<Vec<u8>>, ChannelError> {
        let body = ReportReq::read_from_bytes(&req.body)
            .map_err(|_| ChannelError::Firmware(fw_status::INVALID_PARAM))?;
        let mut rsp = ReportRsp::new_zeroed();
        let vmpl = body.vmpl.get();
        let status = if vmpl < req.vmpck as u32 || vmpl > 3 {
            status::INVALID_PARAM
        } else {
            match body.key_sel.get() & 0b11 {
                0 | 1 => status::SUCCESS,
                2 => status::INVALID_KEY,
                _ => status::INVALID_PARAM,
            }
        };
        rsp.status = U32::new(status);
        if status == status::SUCCESS {
            rsp.report_size = U32::new(REPORT_SIZE as u32);
            rsp.report = self.build_report(&body.user_data, vmpl);
        }
        Ok(Zeroizing::new(rsp.as_bytes().to_vec()))
    }

    /// A signed version-3 report for `vmpl` carrying `report_data`.
    pub fn build_report(&self, report_data: &[u8; 64], vmpl: u32) -> AttestationReport {
        let tcb = U64::new(dev_psp::TCB_VERSION);
        let [build, minor, major] = dev_psp::FIRMWARE_VERSION;
        let [fam, model, step] = dev_psp::CPUID_FAM_MOD_STEP;
        let mut r = AttestationReport::new_zeroed();
        r.version = U32::new(dev_psp::REPORT_VERSION);
        r.guest_svn = U32::new(GUEST_SVN);
        r.policy = U64::new(dev_psp::GUEST_POLICY);
        r.vmpl = U32::new(vmpl);
        r.signature_algo = U32::new(SIG_ALGO_ECDSA_P384_SHA384);
        r.current_tcb = tcb;
        r.platform_info = U64::new(0);
        // author_key_en 0, mask_chip_key 0, signing_key 0 (VCEK).
        r.signer_info = U32::new(0);
        r.report_data = *report_data;
        r.measurement = self.launch.measurement;
        r.host_data = self.launch.host_data;
        r.report_id = self.launch.report_id;
        r.report_id_ma = [0xFF; 32];
        r.reported_tcb = tcb;
        r.cpuid_fam_id = fam;
        r.cpuid_mod_id = model;
        r.cpuid_step = step;
        r.chip_id = dev_psp::CHIP_ID;
        r.committed_tcb = tcb;
        (r.current_build, r.current_minor, r.current_major) = (build, minor, major);
        (r.committed_build, r.committed_minor, r.committed_major) = (build, minor, major);
        r.launch_tcb = tcb;
        let sig: Signature = self.config.vcek.sign(&r.as_bytes()[..SIGNED_LEN]);
        let (sr, ss) = sig.split_bytes();
        for (dst, src) in r.signature.r.iter_mut().zip(sr.iter().rev()) {
            *dst = *src;
        }
        for (dst, src) in r.signature.s.iter_mut().zip(ss.iter().rev()) {
            *dst = *src;
        }
        r
    }

    /// Answer a KEY_REQ.
    fn key(&self, req: &Opened) -> Result<Zeroizing<Vec<u8>>, ChannelError> {
        let body = KeyReq::read_from_bytes(&req.body)
            .map_err(|_| ChannelError::Firmware(fw_status::INVALID_PARAM))?;
        let mut rsp = KeyRsp::default();
        match self.derive(&body, req.vmpck as u32) {
            Ok(key) => rsp.derived_key = *key,
            Err(code) => rsp.status = U32::new(code),
        }
        let out = Zeroizing::new(rsp.as_bytes().to_vec());
        rsp.derived_key.zeroize();
        Ok(out)
    }

    /// The key a KEY_REQ from a caller at `caller_vmpl` selects, or a status code.
    fn derive(&self, req: &KeyReq, caller_vmpl: u32) -> Result<Zeroizing<[u8; 32]>, u32> {
        let vmpl = req.vmpl.get();
        if vmpl < caller_vmpl || vmpl > 3 {
            return Err(status::INVALID_PARAM);
        }
        // 0 = VCEK-rooted; 1 = VMRK, which only a migration agent has (none here).
        if req.root_key_select.get() != 0 {
            return Err(status::INVALID_PARAM);
        }
        let select = req.guest_field_select.get();
        if select & !SUPPORTED_FIELDS != 0 {
            return Err(status::INVALID_PARAM);
        }
        // A guest may ask only for an SVN and TCB not above its own.
        if select & guest_field::GUEST_SVN != 0 && req.guest_svn.get() > GUEST_SVN {
            return Err(status::INVALID_PARAM);
        }
        if select & guest_field::TCB_VERSION != 0 {
            let want = req.tcb_version.get().to_le_bytes();
            let have = dev_psp::TCB_VERSION.to_le_bytes();
            if want.iter().zip(have.iter()).any(|(w, h)| w > h) {
                return Err(status::INVALID_PARAM);
            }
        }
        let mut info = Zeroizing::new(Vec::with_capacity(KEY_DOMAIN.len() + 160));
        info.extend_from_slice(KEY_DOMAIN);
        info.extend_from_slice(&vmpl.to_le_bytes());
        info.extend_from_slice(&select.to_le_bytes());
        if select & guest_field::POLICY != 0 {
            info.extend_from_slice(&dev_psp::GUEST_POLICY.to_le_bytes());
        }
        if select & guest_field::IMAGE_ID != 0 {
            info.extend_from_slice(&[0u8; 16]);
        }
        if select & guest_field::FAMILY_ID != 0 {
            info.extend_from_slice(&[0u8; 16]);
        }
        if select & guest_field::MEASUREMENT != 0 {
            info.extend_from_slice(&self.launch.measurement);
        }
        if select & guest_field::GUEST_SVN != 0 {
            info.extend_from_slice(&req.guest_svn.get().to_le_bytes());
        }
        if select & guest_field::TCB_VERSION != 0 {
            info.extend_from_slice(&req.tcb_version.get().to_le_bytes());
        }
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha384>::new(None, self.config.chip_secret.as_slice())
            .expand(&info, key.as_mut_slice())
            .map_err(|_| status::INVALID_PARAM)?;
        Ok(key)
    }
}

/// The [`PspChannel`] of the emulated platform: guest requests go straight to the
/// [`EmulatedPsp`] (no shared pages and no hypervisor in between).
#[derive(Debug)]
pub struct EmulatedPspChannel(EmulatedPsp);

impl EmulatedPspChannel {
    /// A channel to `psp`.
    pub fn new(psp: EmulatedPsp) -> Self {
        Self(psp)
    }

    /// The emulated PSP.
    pub fn psp(&self) -> &EmulatedPsp {
        &self.0
    }
}

impl PspChannel for EmulatedPspChannel {
    fn guest_request(
        &mut self,
        request: &[u8; PSP_PAGE],
        response: &mut [u8; PSP_PAGE],
        certificates: Option<&mut [u8]>,
    ) -> Result<(), ChannelError> {
        self.0.handle(request, response, certificates)
    }
}
