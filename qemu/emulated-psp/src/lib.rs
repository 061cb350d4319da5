//! The emulated AMD Secure Processor: what the hypervisor and the PSP do for a guest
//! request (GUEST_REQUEST and the extended request).
//!
//! Used by the virtual SNP machine (`qemu/snp-machine`), which answers the guest
//! requests a confidential VM sends through its GHCB, and by the SVSM's host tests
//! (`kernel`, as the PSP client's peer) and fuzz targets. It depends on neither:
//! pure Rust, `no_std` + `alloc`, tested on the host. (The SVSM's emulated platform,
//! retired by issue 15, used it too.)
//!
//! It receives the same encrypted guest messages the real PSP would
//! (REFERENCE.md section 6), checks and decrypts them with its copy of the VMPCK
//! named by `msg_vmpck` (VMPCKn belongs to VMPLn), tracks the next expected sequence
//! number of each VMPCK, and answers with an encrypted response. Reports are real
//! version-3 reports signed with the development VCEK from the dev-PSP blob
//! ([`DevPspConfig`], `nitride_protocol::emulated::dev_psp`); derived keys come from
//! the blob's chip secret. `docs/snp-machine.md` ("The PSP") describes the
//! behaviour; the exact rules are:
//!
//! **Transport errors** (the message is not processed, the expected sequence number
//! does not move), as [`RequestError`]:
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
//! **KEY_REQ derivation** (SNP ABI MSG_KEY_REQ: a key rooted in the chip's VCEK secret
//! at a TCB, mixed with the VMPL and the selected guest fields): HKDF-SHA-384
//! (RFC 5869) with no salt, IKM = the chip secret, L = 32, and `info` =
//! [`KEY_DOMAIN`] `|| vmpl (u32 LE) || guest_field_select (u64 LE) || tcb (u64 LE)`,
//! where `tcb` is the requested `tcb_version` when bit 5 selects it and the chip's
//! current TCB otherwise (the VCEK, and every key rooted in it, changes with the TCB),
//! followed by, for each selected field in bit order: policy (u64 LE, the guest
//! policy of the launch), image_id (16 bytes), family_id (16 bytes) (both all-zero:
//! no ID block), measurement (48 bytes, of the launch), guest_svn (u32 LE, from the
//! request). Every piece has a fixed width and the selection bits are part of `info`,
//! so the encoding is unambiguous; nothing depends on the boot, so the same request
//! gives the same key across boots.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

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

use aes_gcm::{Nonce, Tag};

/// Size of a request or response page.
pub const PSP_PAGE: usize = 4096;
/// Size of the message header.
pub const HEADER_SIZE: usize = size_of::<MsgHeader>();
/// Largest payload a page can carry.
pub const MAX_PAYLOAD: usize = PSP_PAGE - HEADER_SIZE;
/// Message version of REPORT_REQ and KEY_REQ.
pub const MSG_VERSION: u8 = 1;

/// The AES-GCM IV of a message: the sequence number (u64 LE), then four zero bytes.
pub fn nonce(seqno: u64) -> Nonce<aes_gcm::aes::cipher::consts::U12> {
    let mut iv = [0u8; 12];
    iv[..8].copy_from_slice(&seqno.to_le_bytes());
    iv.into()
}

/// The GCM tag of a message: `authtag[0..16]`.
pub fn tag_of(header: &MsgHeader) -> Tag {
    let mut tag = [0u8; 16];
    tag.copy_from_slice(&header.authtag[..16]);
    tag.into()
}

/// Why a guest request was not answered: what the hypervisor (`exit_info_2` bits
/// 63:32) or the firmware (bits 31:0) reports for GUEST_REQUEST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestError {
    /// The certificate buffer of an extended request is too small; `pages` are
    /// needed (the hypervisor's INVALID_LEN). The message was not processed.
    CertificatesTooSmall {
        /// Pages needed.
        pages: u32,
    },
    /// The firmware failed the request (SEV status code, [`fw_status`]).
    Firmware(u32),
}

/// SEV firmware status codes the emulated PSP fails a request with
/// ([`RequestError::Firmware`]).
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
pub const KEY_DOMAIN: &[u8] = b"nitride emulated psp key v2\0";

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
    /// Launch flags other than `dev_psp::LAUNCH_DEBUG` are set.
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
            Self::ReservedNotZero => {
                f.write_str("dev-PSP blob: launch flags other than LAUNCH_DEBUG (1) set")
            }
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
    tcb: u64,
    /// The guest policy the launch had (reports, KEY_REQ derivations).
    policy: u64,
    chip_secret: Zeroizing<[u8; 32]>,
    cert_table: Vec<u8>,
}

impl fmt::Debug for DevPspConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevPspConfig")
            .field("vcek", &"[REDACTED]")
            .field("chip_secret", &"[REDACTED]")
            .field("cert_table_len", &self.cert_table.len())
            .field("tcb", &self.tcb)
            .field("policy", &self.policy)
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
        let flags = header.launch_flags.get();
        if flags & !dev_psp::LAUNCH_DEBUG != 0 {
            return Err(DevPspError::ReservedNotZero);
        }
        let policy = if flags & dev_psp::LAUNCH_DEBUG != 0 {
            dev_psp::GUEST_POLICY | dev_psp::POLICY_DEBUG
        } else {
            dev_psp::GUEST_POLICY
        };
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
            tcb: header.tcb_version.get(),
            policy,
            chip_secret: Zeroizing::new(header.chip_secret),
            cert_table: rest.to_vec(),
        })
    }

    /// The chip's TCB_VERSION (`dev_psp::BlobHeader::tcb_version`).
    pub fn tcb_version(&self) -> u64 {
        self.tcb
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

/// A monotonic counter read around the emulated PSP's work (the TSC in the virtual
/// SNP machine: under QEMU's `-icount shift=0` it counts instructions).
pub type Clock = fn() -> u64;

/// Where the emulated PSP's last request spent its time, in [`Clock`] ticks (zero
/// without a clock).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PspTiming {
    /// The whole request: checks, decryption, the answer, encryption.
    pub handled: u64,
    /// Of that, signing the report.
    pub signing: u64,
}

/// The emulated PSP of one guest.
pub struct EmulatedPsp {
    config: DevPspConfig,
    launch: LaunchInfo,
    vmpcks: [Zeroizing<[u8; 32]>; 4],
    /// The next request sequence number expected on each VMPCK.
    expected: [u64; 4],
    clock: Option<Clock>,
    timing: core::cell::Cell<PspTiming>,
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
            clock: None,
            timing: core::cell::Cell::new(PspTiming::default()),
        }
    }

    /// Time requests with `clock` (see [`Self::last_timing`]).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Where the last request spent its time.
    pub fn last_timing(&self) -> PspTiming {
        self.timing.get()
    }

    fn now(&self) -> u64 {
        self.clock.map_or(0, |c| c())
    }

    /// The next sequence number expected on VMPCK `n` (0 for `n` above 3).
    pub fn expected_seqno(&self, n: usize) -> u64 {
        self.expected.get(n).copied().unwrap_or(0)
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
    ) -> Result<(), RequestError> {
        let start = self.now();
        self.timing.set(PspTiming::default());
        if let Some(buf) = certificates {
            let table = &self.config.cert_table;
            let Some(dst) = buf.get_mut(..table.len()) else {
                let pages = table.len().div_ceil(PSP_PAGE);
                return Err(RequestError::CertificatesTooSmall {
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
            _ => return Err(RequestError::Firmware(fw_status::INVALID_PARAM)),
        };
        self.seal(&opened, &body, response)?;
        self.expected[opened.vmpck] = opened.seqno + 2;
        let mut timing = self.timing.get();
        timing.handled = self.now().wrapping_sub(start);
        self.timing.set(timing);
        Ok(())
    }

    fn cipher(&self, vmpck: usize) -> Aes256Gcm {
        Aes256Gcm::new(self.vmpcks[vmpck].as_slice().into())
    }

    /// Check the header, the sequence number and the tag; decrypt the body.
    fn open(&self, request: &[u8; PSP_PAGE]) -> Result<Opened, RequestError> {
        const INVALID: RequestError = RequestError::Firmware(fw_status::INVALID_PARAM);
        const SECURE: RequestError = RequestError::Firmware(fw_status::SECURE_DATA_INVALID);
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
            return Err(RequestError::Firmware(fw_status::AEAD_OFLOW));
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
    ) -> Result<(), RequestError> {
        const INVALID: RequestError = RequestError::Firmware(fw_status::INVALID_PARAM);
        let seqno = req
            .seqno
            .checked_add(1)
            .ok_or(RequestError::Firmware(fw_status::AEAD_OFLOW))?;
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
    fn report(&self, req: &Opened) -> Result<Zeroizing<Vec<u8>>, RequestError> {
        let body = ReportReq::read_from_bytes(&req.body)
            .map_err(|_| RequestError::Firmware(fw_status::INVALID_PARAM))?;
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
        let tcb = U64::new(self.config.tcb);
        let [build, minor, major] = dev_psp::FIRMWARE_VERSION;
        let [fam, model, step] = dev_psp::CPUID_FAM_MOD_STEP;
        let mut r = AttestationReport::new_zeroed();
        r.version = U32::new(dev_psp::REPORT_VERSION);
        r.guest_svn = U32::new(GUEST_SVN);
        r.policy = U64::new(self.config.policy);
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
        let start = self.now();
        let sig: Signature = self.config.vcek.sign(&r.as_bytes()[..SIGNED_LEN]);
        let mut timing = self.timing.get();
        timing.signing = self.now().wrapping_sub(start);
        self.timing.set(timing);
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
    fn key(&self, req: &Opened) -> Result<Zeroizing<Vec<u8>>, RequestError> {
        let body = KeyReq::read_from_bytes(&req.body)
            .map_err(|_| RequestError::Firmware(fw_status::INVALID_PARAM))?;
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
        // key_select: bit 0 ROOT_KEY_SELECT (0 the VCEK-rooted key; 1 the VMRK, which
        // only a migration agent sets up: none here), bits 2:1 KEY_SEL (0 the VLEK if
        // one is installed, else the VCEK; 1 the VCEK; 2 the VLEK: none installed),
        // the other bits reserved.
        let key_select = req.root_key_select.get();
        if key_select & !0b111 != 0 || key_select & 1 != 0 {
            return Err(status::INVALID_PARAM);
        }
        match (key_select >> 1) & 0b11 {
            0 | 1 => {}
            2 => return Err(status::INVALID_KEY),
            _ => return Err(status::INVALID_PARAM),
        }
        if req.reserved.get() != 0 {
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
        // The key is rooted in the VCEK at a TCB: the one asked for when selected
        // (never above the current one), else the current one.
        let tcb = if select & guest_field::TCB_VERSION != 0 {
            let want = req.tcb_version.get().to_le_bytes();
            let have = self.config.tcb.to_le_bytes();
            if want.iter().zip(have.iter()).any(|(w, h)| w > h) {
                return Err(status::INVALID_PARAM);
            }
            req.tcb_version.get()
        } else {
            self.config.tcb
        };
        let mut info = Zeroizing::new(Vec::with_capacity(KEY_DOMAIN.len() + 168));
        info.extend_from_slice(KEY_DOMAIN);
        info.extend_from_slice(&vmpl.to_le_bytes());
        info.extend_from_slice(&select.to_le_bytes());
        info.extend_from_slice(&tcb.to_le_bytes());
        if select & guest_field::POLICY != 0 {
            info.extend_from_slice(&self.config.policy.to_le_bytes());
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
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha384>::new(None, self.config.chip_secret.as_slice())
            .expand(&info, key.as_mut_slice())
            .map_err(|_| status::INVALID_PARAM)?;
        Ok(key)
    }
}

/// Fixtures shared by the tests of this crate and of the kernel's PSP client
/// (feature `testing`).
#[cfg(any(test, feature = "testing"))]
#[allow(clippy::unwrap_used, reason = "test fixtures")]
pub mod testing {
    use super::*;
    use alloc::boxed::Box;
    use alloc::vec;
    use nitride_protocol::snp::certs::{CertTableEntry, ENTRY_SIZE, GUID_ARK, GUID_ASK, GUID_VCEK};

    /// The development VCEK scalar of the tests (big-endian, below the order).
    pub const SCALAR: [u8; 48] = [0x11; 48];
    /// The chip secret of the tests.
    pub const CHIP_SECRET: [u8; 32] = [0xC5; 32];

    /// A certificate table: VCEK, ASK and ARK of `cert_len` bytes each (filled with
    /// 0xA1, 0xA2, 0xA3), then the terminator.
    pub fn cert_table(cert_len: usize) -> Vec<u8> {
        let head = 4 * ENTRY_SIZE;
        let mut t = vec![0u8; head + 3 * cert_len];
        for (i, guid) in [GUID_VCEK, GUID_ASK, GUID_ARK].into_iter().enumerate() {
            let offset = head + i * cert_len;
            let e = CertTableEntry {
                guid,
                offset: U32::new(offset as u32),
                length: U32::new(cert_len as u32),
            };
            t[i * ENTRY_SIZE..(i + 1) * ENTRY_SIZE].copy_from_slice(e.as_bytes());
            t[offset..offset + cert_len].fill(0xA1 + i as u8);
        }
        t
    }

    /// A dev-PSP blob with `scalar` and `table`.
    pub fn blob_with(scalar: [u8; 48], table: &[u8]) -> Vec<u8> {
        let header = BlobHeader {
            magic: dev_psp::MAGIC,
            vcek_scalar: scalar,
            chip_secret: CHIP_SECRET,
            cert_table_len: U32::new(table.len() as u32),
            launch_flags: U32::new(0),
            tcb_version: U64::new(dev_psp::TCB_VERSION),
        };
        let mut b = header.as_bytes().to_vec();
        b.extend_from_slice(table);
        b
    }

    /// The launch of the tests.
    pub fn launch() -> LaunchInfo {
        LaunchInfo {
            measurement: [0x4D; 48],
            host_data: [0x48; 32],
            report_id: [0x52; 32],
        }
    }

    /// VMPCKn of the tests: 32 bytes of `0x70 + n`.
    pub fn vmpck(n: u8) -> [u8; 32] {
        [0x70 + n; 32]
    }

    /// An emulated PSP with a table of three `cert_len`-byte certificates.
    pub fn psp_with(cert_len: usize, launch: LaunchInfo) -> EmulatedPsp {
        let config = DevPspConfig::parse(&blob_with(SCALAR, &cert_table(cert_len)));
        EmulatedPsp::new(
            config.unwrap(),
            launch,
            core::array::from_fn(|n| Zeroizing::new(vmpck(n as u8))),
        )
    }

    /// The emulated PSP most tests use.
    pub fn psp() -> EmulatedPsp {
        psp_with(100, launch())
    }

    /// A request page as a guest would build it (no checks: tests tamper with it).
    pub fn seal(key: &[u8; 32], header: MsgHeader, body: &[u8]) -> Box<[u8; PSP_PAGE]> {
        let mut page = Box::new([0u8; PSP_PAGE]);
        page[..HEADER_SIZE].copy_from_slice(header.as_bytes());
        let (head, rest) = page.split_at_mut(HEADER_SIZE);
        let out = &mut rest[..body.len()];
        out.copy_from_slice(body);
        let tag = Aes256Gcm::new(key.into())
            .encrypt_in_place_detached(&nonce(header.msg_seqno.get()), &head[AAD_RANGE], out)
            .unwrap();
        head[..16].copy_from_slice(&tag);
        page
    }

    /// A well-formed request header.
    pub fn header(vmpck: u8, seqno: u64, ty: u8, body_len: usize) -> MsgHeader {
        MsgHeader {
            msg_seqno: U64::new(seqno),
            algo: AEAD_AES_256_GCM,
            hdr_version: HDR_VERSION,
            hdr_sz: U16::new(HEADER_SIZE as u16),
            msg_type: ty,
            msg_version: MSG_VERSION,
            msg_sz: U16::new(body_len as u16),
            msg_vmpck: vmpck,
            ..MsgHeader::new_zeroed()
        }
    }

    /// Decrypt a page sealed under `key`: its header and body.
    pub fn open(key: &[u8; 32], page: &[u8; PSP_PAGE]) -> (MsgHeader, Vec<u8>) {
        let header = MsgHeader::read_from_bytes(&page[..HEADER_SIZE]).unwrap();
        let mut body = page[HEADER_SIZE..HEADER_SIZE + usize::from(header.msg_sz.get())].to_vec();
        Aes256Gcm::new(key.into())
            .decrypt_in_place_detached(
                &nonce(header.msg_seqno.get()),
                &page[AAD_RANGE],
                &mut body,
                &tag_of(&header),
            )
            .unwrap();
        (header, body)
    }

    /// Decrypt `page`, let `change` edit the header, and seal it again (a valid tag).
    pub fn reseal(key: &[u8; 32], page: &mut [u8; PSP_PAGE], change: impl FnOnce(&mut MsgHeader)) {
        let (mut header, body) = open(key, page);
        change(&mut header);
        *page = *seal(key, header, &body);
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use nitride_guest_driver::verify::verify_report_signature;
    use nitride_guest_driver::verify::CertRole;
    use nitride_protocol::snp::certs::ENTRY_SIZE;
    use p384::ecdsa::signature::Verifier;

    /// A failed request as a guest sees it.
    #[derive(Debug, PartialEq, Eq)]
    enum PspError {
        /// A non-zero status in the authenticated response.
        Status(u32),
    }

    /// A report and the certificates that came with it.
    #[derive(Debug, PartialEq, Eq)]
    struct Evidence {
        report: Vec<u8>,
        certificates: Vec<u8>,
    }

    /// A minimal guest: VMPCK `n`, its sequence counter, plain requests.
    struct Client {
        psp: EmulatedPsp,
        n: u8,
        counter: u64,
    }

    impl Client {
        fn request(&mut self, ty: u8, body: &[u8]) -> Vec<u8> {
            let seqno = self.counter + 1;
            let req = seal(&vmpck(self.n), header(self.n, seqno, ty, body.len()), body);
            let mut rsp = Box::new([0u8; PSP_PAGE]);
            self.psp.handle(&req, &mut rsp, None).unwrap();
            let (h, body) = open(&vmpck(self.n), &rsp);
            assert_eq!((h.msg_seqno.get(), h.msg_type), (seqno + 1, ty + 1));
            self.counter += 2;
            body
        }

        fn report(
            &mut self,
            data: &[u8; 64],
            vmpl: u32,
            _certs: bool,
        ) -> Result<Evidence, PspError> {
            let mut req = ReportReq::new_zeroed();
            req.user_data = *data;
            req.vmpl = U32::new(vmpl);
            let body = self.request(msg_type::REPORT_REQ, req.as_bytes());
            let rsp = ReportRsp::read_from_bytes(&body).unwrap();
            match rsp.status.get() {
                0 => Ok(Evidence {
                    report: rsp.report.as_bytes().to_vec(),
                    certificates: Vec::new(),
                }),
                s => Err(PspError::Status(s)),
            }
        }

        fn derive_key(&mut self, req: &KeyReq) -> Result<Zeroizing<[u8; 32]>, PspError> {
            let body = self.request(msg_type::KEY_REQ, req.as_bytes());
            let rsp = KeyRsp::read_from_bytes(&body).unwrap();
            match rsp.status.get() {
                0 => Ok(Zeroizing::new(rsp.derived_key)),
                s => Err(PspError::Status(s)),
            }
        }

        fn psp(&self) -> &EmulatedPsp {
            &self.psp
        }
    }

    fn client(psp: EmulatedPsp, n: u8) -> Client {
        Client { psp, n, counter: 0 }
    }

    fn report_req(vmpl: u32, key_sel: u32) -> ReportReq {
        let mut r = ReportReq::new_zeroed();
        r.user_data = [0x55; 64];
        r.vmpl = U32::new(vmpl);
        r.key_sel = U32::new(key_sel);
        r
    }

    /// Send a raw body on VMPCK `n` with `seqno`; the decrypted response body.
    fn raw(
        psp: &mut EmulatedPsp,
        n: u8,
        seqno: u64,
        ty: u8,
        body: &[u8],
    ) -> Result<Vec<u8>, RequestError> {
        let req = seal(&vmpck(n), header(n, seqno, ty, body.len()), body);
        let mut rsp = Box::new([0u8; PSP_PAGE]);
        psp.handle(&req, &mut rsp, None)?;
        let (h, body) = open(&vmpck(n), &rsp);
        assert_eq!(
            (h.msg_seqno.get(), h.msg_type, h.msg_vmpck),
            (seqno + 1, ty + 1, n)
        );
        Ok(body)
    }

    #[test]
    fn parse_accepts_a_good_blob_and_redacts() {
        let table = cert_table(10);
        let config = DevPspConfig::parse(&blob_with(SCALAR, &table)).unwrap();
        assert_eq!(config.cert_table(), &table[..]);
        let expected = SigningKey::from_slice(&SCALAR).unwrap();
        assert_eq!(config.vcek_public(), *expected.verifying_key());
        let dbg = format!("{config:?}");
        assert!(dbg.contains("REDACTED") && !dbg.contains("197"), "{dbg}");
    }

    #[test]
    fn parse_rejects_bad_blobs() {
        let table = cert_table(10);
        let good = blob_with(SCALAR, &table);
        let parse = |b: &[u8]| DevPspConfig::parse(b).map(|_| ());
        assert_eq!(parse(&good[..95]), Err(DevPspError::TooShort { len: 95 }));
        let mut b = good.clone();
        b[0] ^= 1;
        assert_eq!(parse(&b), Err(DevPspError::BadMagic));
        let mut b = good.clone();
        b[92] = 2; // launch flags other than LAUNCH_DEBUG
        assert_eq!(parse(&b), Err(DevPspError::ReservedNotZero));
        let mut b = good.clone();
        b[92] = dev_psp::LAUNCH_DEBUG as u8;
        let debug = EmulatedPsp::new(
            DevPspConfig::parse(&b).unwrap(),
            launch(),
            core::array::from_fn(|n| Zeroizing::new(vmpck(n as u8))),
        );
        let r = debug.build_report(&[0; 64], 0);
        assert_eq!(
            r.policy.get(),
            dev_psp::GUEST_POLICY | dev_psp::POLICY_DEBUG,
            "a debug launch's reports say so"
        );
        let mut b = good.clone();
        b.push(0);
        assert_eq!(
            parse(&b),
            Err(DevPspError::LengthMismatch {
                len: good.len() + 1,
                expected: good.len()
            })
        );
        assert!(matches!(
            parse(&good[..good.len() - 1]),
            Err(DevPspError::LengthMismatch { .. })
        ));
        let big = vec![0u8; dev_psp::MAX_CERT_TABLE + 1];
        assert_eq!(
            parse(&blob_with(SCALAR, &big)),
            Err(DevPspError::TableTooLarge { len: big.len() })
        );
        assert_eq!(
            parse(&blob_with([0; 48], &table)),
            Err(DevPspError::BadScalar)
        );
        assert_eq!(
            parse(&blob_with([0xFF; 48], &table)),
            Err(DevPspError::BadScalar)
        );
        // No terminator: one entry (pointing at itself) and nothing after it.
        let mut t = table[..ENTRY_SIZE].to_vec();
        t[16..24].copy_from_slice(&[0, 0, 0, 0, 24, 0, 0, 0]);
        assert!(matches!(
            parse(&blob_with(SCALAR, &t)),
            Err(DevPspError::BadTable(
                CertTableError::MissingTerminator { .. }
            ))
        ));
        let mut t = table.clone();
        t[16..20].copy_from_slice(&5000u32.to_le_bytes());
        assert!(matches!(
            parse(&blob_with(SCALAR, &t)),
            Err(DevPspError::BadTable(
                CertTableError::EntryOutOfBounds { .. }
            ))
        ));
    }

    #[test]
    fn report_fields_and_signature() {
        let mut c = client(psp(), 0);
        let ev = c.report(&[0x5A; 64], 0, false).unwrap();
        assert!(ev.certificates.is_empty());
        let r = AttestationReport::read_from_bytes(&ev.report).unwrap();
        assert_eq!(r.version.get(), 3);
        assert_eq!(r.guest_svn.get(), 0);
        assert_eq!(r.policy.get(), dev_psp::GUEST_POLICY);
        assert_eq!(r.vmpl.get(), 0);
        assert_eq!(r.signature_algo.get(), 1);
        for tcb in [r.current_tcb, r.reported_tcb, r.committed_tcb, r.launch_tcb] {
            assert_eq!(tcb.get(), dev_psp::TCB_VERSION);
        }
        assert_eq!((r.platform_info.get(), r.signer_info.get()), (0, 0));
        assert_eq!(r.report_data, [0x5A; 64]);
        assert_eq!(r.measurement, launch().measurement);
        assert_eq!(r.host_data, launch().host_data);
        assert_eq!(r.report_id, launch().report_id);
        assert_eq!(r.report_id_ma, [0xFF; 32]);
        assert_eq!(
            [r.cpuid_fam_id, r.cpuid_mod_id, r.cpuid_step],
            dev_psp::CPUID_FAM_MOD_STEP
        );
        assert_eq!(r.chip_id, dev_psp::CHIP_ID);
        assert_eq!(
            [r.current_build, r.current_minor, r.current_major],
            dev_psp::FIRMWARE_VERSION
        );
        assert_eq!(
            [r.committed_build, r.committed_minor, r.committed_major],
            dev_psp::FIRMWARE_VERSION
        );
        assert_eq!((r.family_id, r.image_id), ([0; 16], [0; 16]));
        assert_eq!(r.id_key_digest, [0; 48]);
        assert!(r.signature.r[48..].iter().all(|&b| b == 0));
        assert!(r.signature.s[48..].iter().all(|&b| b == 0));

        // The signature, checked independently: r and s little-endian.
        let be = |le: &[u8]| {
            let mut b = [0u8; 48];
            b.iter_mut()
                .zip(le[..48].iter().rev())
                .for_each(|(d, s)| *d = *s);
            p384::FieldBytes::from(b)
        };
        let sig = Signature::from_scalars(be(&r.signature.r), be(&r.signature.s)).unwrap();
        let vk = c.psp().config().vcek_public();
        vk.verify(&ev.report[..SIGNED_LEN], &sig).unwrap();
        // ... and by the guest driver's verifier.
        verify_report_signature(&r, &vk, CertRole::Vcek).unwrap();
        let mut forged = r;
        forged.report_data[0] ^= 1;
        assert!(verify_report_signature(&forged, &vk, CertRole::Vcek).is_err());
        assert!(vk.verify(forged.signed_bytes(), &sig).is_err());
    }

    #[test]
    fn report_vmpl_and_key_selection() {
        // VMPCK1 belongs to VMPL1: it may ask for VMPL 1..3 only.
        let mut c = client(psp(), 1);
        assert_eq!(c.report(&[0; 64], 0, false), Err(PspError::Status(0x16)));
        let ev = c.report(&[0; 64], 2, false).unwrap();
        let r = AttestationReport::read_from_bytes(&ev.report).unwrap();
        assert_eq!(r.vmpl.get(), 2);
        assert_eq!(c.report(&[0; 64], 4, false), Err(PspError::Status(0x16)));

        let mut p = psp();
        let status = |b: &[u8]| u32::from_le_bytes(b[..4].try_into().unwrap());
        let size = |b: &[u8]| u32::from_le_bytes(b[4..8].try_into().unwrap());
        let ty = msg_type::REPORT_REQ;
        let b = raw(&mut p, 0, 1, ty, report_req(0, 1).as_bytes()).unwrap();
        assert_eq!((status(&b), size(&b)), (0, 0x4A0));
        let b = raw(&mut p, 0, 3, ty, report_req(0, 2).as_bytes()).unwrap();
        assert_eq!((status(&b), size(&b)), (0x27, 0));
        assert!(b[0x20..].iter().all(|&x| x == 0));
        let b = raw(&mut p, 0, 5, ty, report_req(0, 3).as_bytes()).unwrap();
        assert_eq!(status(&b), 0x16);
        let b = raw(&mut p, 0, 7, ty, report_req(0, 0).as_bytes()).unwrap();
        assert_eq!(status(&b), 0);
    }

    #[test]
    fn certificates_too_small_is_not_processed() {
        let mut p = psp_with(2000, launch()); // 96 + 6000 bytes: two pages
        let body = report_req(0, 0);
        let req = seal(&vmpck(0), header(0, 1, 5, 0x60), body.as_bytes());
        let mut rsp = Box::new([0u8; PSP_PAGE]);
        let mut small = vec![0u8; PSP_PAGE];
        assert_eq!(
            p.handle(&req, &mut rsp, Some(&mut small)),
            Err(RequestError::CertificatesTooSmall { pages: 2 })
        );
        assert!(rsp.iter().all(|&b| b == 0));
        // Seqno 1 is still expected; the table arrives with a large enough buffer.
        let mut big = vec![0xEEu8; 2 * PSP_PAGE];
        p.handle(&req, &mut rsp, Some(&mut big)).unwrap();
        let table = cert_table(2000);
        assert_eq!(&big[..table.len()], &table[..]);
        assert!(big[table.len()..].iter().all(|&b| b == 0));
        assert_eq!(open(&vmpck(0), &rsp).0.msg_seqno.get(), 2);
    }

    #[test]
    fn bad_requests_fail_without_advancing() {
        let mut p = psp();
        let body = report_req(0, 0);
        let body = body.as_bytes();
        let key = vmpck(0);
        let mut rsp = Box::new([0u8; PSP_PAGE]);
        let good = header(0, 1, msg_type::REPORT_REQ, body.len());
        let mut cases: Vec<(MsgHeader, u32)> = Vec::new();
        let mut h = good;
        h.algo = 2;
        cases.push((h, 0x16));
        let mut h = good;
        h.hdr_version = 2;
        cases.push((h, 0x16));
        let mut h = good;
        h.hdr_sz = U16::new(0x40);
        cases.push((h, 0x16));
        let mut h = good;
        h.msg_version = 2;
        cases.push((h, 0x16));
        let mut h = good;
        h.msg_type = 7;
        cases.push((h, 0x16));
        let mut h = good;
        h.msg_type = msg_type::REPORT_RSP;
        cases.push((h, 0x16));
        let mut h = good;
        h.msg_sz = U16::new(0x61);
        cases.push((h, 0x16));
        let mut h = good;
        h.msg_vmpck = 4;
        cases.push((h, 0x16));
        let mut h = good;
        h.msg_seqno = U64::new(3); // not the expected 1
        cases.push((h, 0x18));
        let mut h = good;
        h.msg_seqno = U64::new(u64::MAX);
        cases.push((h, 0x1D));
        for (h, code) in cases {
            let req = seal(&key, h, body);
            assert_eq!(
                p.handle(&req, &mut rsp, None),
                Err(RequestError::Firmware(code)),
                "{h:?}"
            );
        }
        // A bad tag, and a message sealed with VMPCK0 but naming VMPCK1.
        let mut req = seal(&key, good, body);
        req[HEADER_SIZE] ^= 1;
        assert_eq!(
            p.handle(&req, &mut rsp, None),
            Err(RequestError::Firmware(0x18))
        );
        let mut h = good;
        h.msg_vmpck = 1;
        let req = seal(&key, h, body);
        assert_eq!(
            p.handle(&req, &mut rsp, None),
            Err(RequestError::Firmware(0x18))
        );
        assert_eq!(p.expected, [1; 4]);
        // The good request is still accepted, once: a replay fails.
        let req = seal(&key, good, body);
        p.handle(&req, &mut rsp, None).unwrap();
        assert_eq!(p.expected, [3, 1, 1, 1]);
        assert_eq!(
            p.handle(&req, &mut rsp, None),
            Err(RequestError::Firmware(0x18))
        );
    }

    fn key_req(select: u64, vmpl: u32) -> KeyReq {
        KeyReq {
            guest_field_select: U64::new(select),
            vmpl: U32::new(vmpl),
            ..KeyReq::default()
        }
    }

    /// An emulated PSP whose chip has `tcb` and `secret`.
    fn psp_at(tcb: u64, secret: [u8; 32]) -> EmulatedPsp {
        let mut blob = blob_with(SCALAR, &cert_table(100));
        let (header, _) = BlobHeader::mut_from_prefix(&mut blob).unwrap();
        header.tcb_version = U64::new(tcb);
        header.chip_secret = secret;
        let config = DevPspConfig::parse(&blob).unwrap();
        assert_eq!(config.tcb_version(), tcb);
        EmulatedPsp::new(
            config,
            launch(),
            core::array::from_fn(|n| Zeroizing::new(vmpck(n as u8))),
        )
    }

    #[test]
    fn the_chip_tcb_and_secret_root_every_key_and_report() {
        use guest_field::*;
        let old = dev_psp::TCB_VERSION;
        let raised = old + (1 << 56); // microcode SPL + 1: a firmware update
        let mut at_old = key_req(POLICY | MEASUREMENT | TCB_VERSION, 0);
        at_old.tcb_version = U64::new(old);
        let mut at_raised = at_old;
        at_raised.tcb_version = U64::new(raised);
        let mut before = client(psp(), 0);
        let mut after = client(psp_at(raised, CHIP_SECRET), 0);
        // After the update, the old TCB's key is still derivable, and it is the same.
        assert_eq!(
            *after.derive_key(&at_old).unwrap(),
            *before.derive_key(&at_old).unwrap()
        );
        // The new TCB's key exists only after the update, and differs.
        assert_eq!(before.derive_key(&at_raised), Err(PspError::Status(0x16)));
        assert_ne!(
            *after.derive_key(&at_raised).unwrap(),
            *after.derive_key(&at_old).unwrap()
        );
        // Unselected, the TCB is the chip's current one.
        let plain = key_req(POLICY, 0);
        assert_ne!(
            *after.derive_key(&plain).unwrap(),
            *before.derive_key(&plain).unwrap()
        );
        // The reports carry the chip's TCB.
        let r = after.report(&[0; 64], 0, false).unwrap();
        let r = AttestationReport::read_from_bytes(&r.report).unwrap();
        for tcb in [r.current_tcb, r.reported_tcb, r.committed_tcb, r.launch_tcb] {
            assert_eq!(tcb.get(), raised);
        }
        // Another chip secret: another key for the same request.
        let mut other = client(psp_at(old, [0x3C; 32]), 0);
        assert_ne!(
            *other.derive_key(&at_old).unwrap(),
            *before.derive_key(&at_old).unwrap()
        );
    }

    #[test]
    fn derived_keys_are_deterministic_and_separated() {
        use guest_field::*;
        let sel = POLICY | MEASUREMENT;
        let k1 = client(psp(), 0).derive_key(&key_req(sel, 0)).unwrap();
        // A new boot (a new PSP instance) gives the same key, at any seqno.
        let mut c = client(psp(), 0);
        c.report(&[0; 64], 0, false).unwrap();
        assert_eq!(*c.derive_key(&key_req(sel, 0)).unwrap(), *k1);
        assert_ne!(*k1, [0; 32]);
        // The VMPL, the selection and (when selected) the measurement separate keys.
        assert_ne!(*c.derive_key(&key_req(sel, 1)).unwrap(), *k1);
        assert_ne!(*c.derive_key(&key_req(POLICY, 0)).unwrap(), *k1);
        let mut other = launch();
        other.measurement[47] ^= 1;
        let mut c2 = client(psp_with(100, other), 0);
        assert_ne!(*c2.derive_key(&key_req(sel, 0)).unwrap(), *k1);
        assert_eq!(
            *c2.derive_key(&key_req(POLICY, 0)).unwrap(),
            *c.derive_key(&key_req(POLICY, 0)).unwrap()
        );
        // VMPCK1 derives VMPL 1 keys like VMPCK0 does; VMPL 0 keys are out of reach.
        let mut c1 = client(psp(), 1);
        assert_eq!(
            *c1.derive_key(&key_req(sel, 1)).unwrap(),
            *c.derive_key(&key_req(sel, 1)).unwrap()
        );
        assert_eq!(c1.derive_key(&key_req(sel, 0)), Err(PspError::Status(0x16)));
    }

    #[test]
    fn derived_key_matches_the_documented_encoding() {
        use guest_field::*;
        let mut req = key_req(
            POLICY | IMAGE_ID | FAMILY_ID | MEASUREMENT | GUEST_SVN | TCB_VERSION,
            2,
        );
        req.tcb_version = U64::new(dev_psp::TCB_VERSION);
        let got = client(psp(), 0).derive_key(&req).unwrap();
        let mut info = KEY_DOMAIN.to_vec();
        info.extend_from_slice(&2u32.to_le_bytes());
        info.extend_from_slice(&0x3Fu64.to_le_bytes());
        info.extend_from_slice(&dev_psp::TCB_VERSION.to_le_bytes());
        info.extend_from_slice(&dev_psp::GUEST_POLICY.to_le_bytes());
        info.extend_from_slice(&[0; 32]);
        info.extend_from_slice(&launch().measurement);
        info.extend_from_slice(&0u32.to_le_bytes());
        let mut want = [0u8; 32];
        Hkdf::<Sha384>::new(None, &CHIP_SECRET)
            .expand(&info, &mut want)
            .unwrap();
        assert_eq!(*got, want);
    }

    #[test]
    fn key_requests_with_bad_parameters() {
        use guest_field::*;
        let mut c = client(psp(), 0);
        let mut vmrk = key_req(0, 0);
        vmrk.root_key_select = U32::new(1);
        let mut svn = key_req(GUEST_SVN, 0);
        svn.guest_svn = U32::new(1);
        let mut tcb = key_req(TCB_VERSION, 0);
        tcb.tcb_version = U64::new(dev_psp::TCB_VERSION + (1 << 56)); // microcode + 1
        for req in [vmrk, svn, tcb, key_req(LAUNCH_MIT_VECTOR, 0), key_req(0, 4)] {
            assert_eq!(c.derive_key(&req), Err(PspError::Status(0x16)), "{req:?}");
        }
        // KEY_SEL: 1 names the VCEK explicitly (the same key as 0), 2 the VLEK (none
        // installed: invalid key), 3 is invalid; bits above 2 are reserved.
        let with_sel = |v: u32| {
            let mut r = key_req(POLICY, 0);
            r.root_key_select = U32::new(v);
            r
        };
        assert_eq!(
            *c.derive_key(&with_sel(0b010)).unwrap(),
            *c.derive_key(&with_sel(0)).unwrap()
        );
        assert_eq!(c.derive_key(&with_sel(0b100)), Err(PspError::Status(0x27)));
        assert_eq!(c.derive_key(&with_sel(0b110)), Err(PspError::Status(0x16)));
        assert_eq!(c.derive_key(&with_sel(0b1000)), Err(PspError::Status(0x16)));
        let mut reserved = key_req(0, 0);
        reserved.reserved = U32::new(1);
        assert_eq!(c.derive_key(&reserved), Err(PspError::Status(0x16)));
        // Not selected: the values do not matter.
        let mut tcb_unselected = key_req(0, 0);
        tcb_unselected.tcb_version = U64::new(u64::MAX);
        assert_eq!(
            *c.derive_key(&tcb_unselected).unwrap(),
            *c.derive_key(&key_req(0, 0)).unwrap()
        );
        // A lower TCB is allowed and gives another key.
        let mut lower = key_req(TCB_VERSION, 0);
        lower.tcb_version = U64::new(dev_psp::TCB_VERSION - 1);
        let mut same = key_req(TCB_VERSION, 0);
        same.tcb_version = U64::new(dev_psp::TCB_VERSION);
        assert_ne!(
            *c.derive_key(&lower).unwrap(),
            *c.derive_key(&same).unwrap()
        );
    }
}
