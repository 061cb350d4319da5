//! The PSP guest-message client (REFERENCE.md section 6): how the SVSM asks the AMD
//! Secure Processor for attestation reports and derived keys.
//!
//! A request is a 0x60-byte [`MsgHeader`] followed by a payload encrypted with
//! AES-256-GCM under a VMPCK (the key the PSP shares with one VMPL): IV = the u64
//! sequence number little-endian then four zero bytes, AAD = header bytes
//! `0x30..0x60`, tag in `authtag[0..16]`. The request carries `counter + 1`; the
//! response must carry `request + 1`, `msg_type + 1`, the same `msg_version` and the
//! same VMPCK index; then the counter advances by 2. [`PspChannel`] is the
//! transport (GHCB GUEST_REQUEST with the shared request and response pages, in the
//! firmware's `src/arch/snp/psp.rs`; in the host tests, the emulated PSP the virtual
//! SNP machine also uses).
//!
//! GCM must never see an IV twice under one key, and after a failed exchange the
//! client cannot know which sequence numbers the PSP consumed. So on any failure
//! after a message went out (a channel or firmware error, a response that does not
//! check out, BUSY for too long) the client wipes its VMPCK and refuses every later
//! request with [`PspError::Disabled`]. Errors reported *inside* a well-formed,
//! authenticated response (a non-zero status) leave the channel usable: the sequence
//! numbers are in step.
//!
//! An extended request whose certificate buffer is too small fails in the
//! hypervisor with the number of pages needed; as Linux does, the client then
//! re-issues the same request page as a plain request (so the PSP consumes that
//! sequence number), and retries a fresh extended request with a buffer of the
//! size asked for (at most [`MAX_CERT_PAGES`] pages).

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;
use core::fmt;
use core::mem::size_of;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce, Tag};
use nitride_protocol::snp::certs::{self, CertTableEntry, ENTRY_SIZE};
use nitride_protocol::snp::msg::{
    msg_type, KeyReq, KeyRsp, MsgHeader, ReportReq, ReportRsp, AAD_RANGE, AEAD_AES_256_GCM,
    HDR_VERSION,
};
use nitride_protocol::snp::report::REPORT_SIZE;
use nitride_vhsm::{AttestError, Evidence};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, IntoBytes};
use zeroize::{Zeroize, Zeroizing};

/// Size of a request or response page.
pub const PSP_PAGE: usize = 4096;
/// Size of the message header.
pub const HEADER_SIZE: usize = size_of::<MsgHeader>();
/// Largest payload a page can carry.
pub const MAX_PAYLOAD: usize = PSP_PAGE - HEADER_SIZE;
/// Message version used for REPORT_REQ and KEY_REQ.
pub const MSG_VERSION: u8 = 1;
/// How many times a request the PSP answered BUSY is sent again before giving up.
pub const MAX_BUSY_RETRIES: u32 = 16;
/// Largest certificate buffer the client allocates, in pages.
pub const MAX_CERT_PAGES: u32 = 16;
/// Certificate buffer of the first extended request, in pages (the largest table
/// the emulated PSP accepts, `dev_psp::MAX_CERT_TABLE`).
pub const DEFAULT_CERT_PAGES: u32 =
    (nitride_protocol::emulated::dev_psp::MAX_CERT_TABLE / PSP_PAGE) as u32;
/// How many extended requests one report may take (the first, and retries with a
/// larger buffer when the hypervisor asks for one).
const MAX_CERT_ATTEMPTS: u32 = 3;

/// Why the transport could not deliver a guest request (the hypervisor's and the
/// firmware's error codes of GUEST_REQUEST, `exit_info_2` bits 63:32 and 31:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelError {
    /// The PSP is busy: send the same message again.
    Busy,
    /// The certificate buffer of an extended request is too small; `pages` are
    /// needed. The message was not processed.
    CertificatesTooSmall {
        /// Pages needed.
        pages: u32,
    },
    /// The firmware failed the request (SEV status code).
    Firmware(u32),
    /// The hypervisor failed the request (its error code).
    Hypervisor(u32),
}

/// One guest request to the PSP: an encrypted request page in, an encrypted
/// response page out (GHCB GUEST_REQUEST on SNP; `certificates` = `Some` for the
/// extended request, filled with the certificate table).
pub trait PspChannel {
    /// Deliver `request` and fill `response` (and `certificates`, when given).
    fn guest_request(
        &mut self,
        request: &[u8; PSP_PAGE],
        response: &mut [u8; PSP_PAGE],
        certificates: Option<&mut [u8]>,
    ) -> Result<(), ChannelError>;
}

/// Why a PSP request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PspError {
    /// The channel was shut after an earlier failure (the VMPCK is wiped).
    Disabled,
    /// The PSP stayed busy; the channel is now shut.
    Busy,
    /// The transport failed; the channel is now shut.
    Channel(ChannelError),
    /// The response did not check out; the channel is now shut.
    BadResponse(&'static str),
    /// The PSP answered with a non-zero status (0x16 invalid parameters, 0x27
    /// invalid key); the channel stays usable.
    Status(u32),
    /// The response body is malformed although it authenticated (wrong report size,
    /// malformed certificate table); the channel stays usable.
    BadBody(&'static str),
    /// The hypervisor wants a certificate buffer larger than [`MAX_CERT_PAGES`]
    /// (or kept asking for more); the channel stays usable.
    CertificatesTooLarge {
        /// Pages asked for.
        pages: u32,
    },
    /// The sequence numbers ran out (the channel is shut).
    SequenceExhausted,
}

impl fmt::Display for PspError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disabled => f.write_str("PSP channel disabled after an earlier failure"),
            Self::Busy => f.write_str("PSP stayed busy"),
            Self::Channel(e) => write!(f, "PSP transport failed: {e:?}"),
            Self::BadResponse(why) => write!(f, "PSP response rejected: {why}"),
            Self::Status(s) => write!(f, "PSP returned status {s:#x}"),
            Self::BadBody(why) => write!(f, "PSP response body malformed: {why}"),
            Self::CertificatesTooLarge { pages } => {
                write!(
                    f,
                    "certificate table needs {pages} pages, more than allowed"
                )
            }
            Self::SequenceExhausted => f.write_str("PSP message sequence numbers exhausted"),
        }
    }
}

impl From<PspError> for AttestError {
    fn from(e: PspError) -> Self {
        match e {
            PspError::Disabled | PspError::SequenceExhausted => AttestError::Disabled,
            PspError::Busy => AttestError::Busy,
            PspError::Channel(_)
            | PspError::BadResponse(_)
            | PspError::Status(_)
            | PspError::BadBody(_)
            | PspError::CertificatesTooLarge { .. } => AttestError::Failed,
        }
    }
}

/// The result of one delivered message.
enum Delivery {
    /// The decrypted response payload (`msg_sz` bytes).
    Payload(Zeroizing<Vec<u8>>),
    /// The extended request's buffer was too small; the same message was re-sent as a
    /// plain request and its (valid) response dropped.
    NeedPages(u32),
}

/// The client of one VMPCK: holds the key, its index and the sequence counter.
pub struct PspClient<C> {
    channel: C,
    vmpck: Zeroizing<[u8; 32]>,
    vmpck_index: u8,
    /// The sequence number of the last response (0 before the first message).
    counter: u64,
    disabled: bool,
    cert_pages: u32,
}

impl<C> fmt::Debug for PspClient<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PspClient")
            .field("vmpck", &"[REDACTED]")
            .field("vmpck_index", &self.vmpck_index)
            .field("counter", &self.counter)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

fn zeroed_page() -> Box<[u8; PSP_PAGE]> {
    Box::new([0u8; PSP_PAGE])
}

impl<C: PspChannel> PspClient<C> {
    /// A client talking over `channel` with VMPCK number `vmpck_index`.
    pub fn new(channel: C, vmpck: Zeroizing<[u8; 32]>, vmpck_index: u8) -> Self {
        Self {
            channel,
            vmpck,
            vmpck_index,
            counter: 0,
            disabled: false,
            cert_pages: DEFAULT_CERT_PAGES,
        }
    }

    /// Use a first certificate buffer of `pages` pages (clamped to
    /// `1..=MAX_CERT_PAGES`) for extended requests.
    pub fn with_cert_pages(mut self, pages: u32) -> Self {
        self.cert_pages = pages.clamp(1, MAX_CERT_PAGES);
        self
    }

    /// Whether the channel was shut (the VMPCK is wiped).
    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    /// The transport.
    pub fn channel(&self) -> &C {
        &self.channel
    }

    /// The transport, mutably.
    pub fn channel_mut(&mut self) -> &mut C {
        &mut self.channel
    }

    /// MSG_REPORT_REQ for `vmpl` (the SVSM uses 0) with `report_data`; with
    /// `certificates`, an extended request that also returns the certificate table.
    pub fn report(
        &mut self,
        report_data: &[u8; 64],
        vmpl: u32,
        certificates: bool,
    ) -> Result<Evidence, PspError> {
        let mut req = ReportReq::new_zeroed();
        req.user_data = *report_data;
        req.vmpl = U32::new(vmpl);
        // Bits 1:0 = 0: the VLEK if one is installed, else the VCEK.
        req.key_sel = U32::new(0);

        let (payload, table) = if certificates {
            let mut pages = self.cert_pages;
            let mut attempt = 0;
            loop {
                attempt += 1;
                let len = (pages as usize)
                    .checked_mul(PSP_PAGE)
                    .ok_or(PspError::CertificatesTooLarge { pages })?;
                let mut buf = vec![0u8; len];
                match self.send(msg_type::REPORT_REQ, req.as_bytes(), Some(&mut buf))? {
                    Delivery::Payload(p) => break (p, Some(buf)),
                    Delivery::NeedPages(need) => {
                        if need > MAX_CERT_PAGES || need <= pages || attempt >= MAX_CERT_ATTEMPTS {
                            return Err(PspError::CertificatesTooLarge { pages: need });
                        }
                        pages = need;
                    }
                }
            }
        } else {
            match self.send(msg_type::REPORT_REQ, req.as_bytes(), None)? {
                Delivery::Payload(p) => (p, None),
                // Only an extended request can be short of certificate pages.
                Delivery::NeedPages(_) => return Err(PspError::BadBody("unexpected reply")),
            }
        };

        let rsp = ReportRsp::ref_from_prefix(&payload)
            .map_err(|_| PspError::BadBody("REPORT_RSP shorter than its layout"))?
            .0;
        let status = rsp.status.get();
        if status != 0 {
            return Err(PspError::Status(status));
        }
        if rsp.report_size.get() as usize != REPORT_SIZE {
            return Err(PspError::BadBody("report_size is not 0x4A0"));
        }
        let certificates = match table {
            Some(buf) => trim_cert_table(buf)?,
            None => Vec::new(),
        };
        Ok(Evidence {
            report: rsp.report.as_bytes().to_vec(),
            certificates,
        })
    }

    /// MSG_KEY_REQ: a key derived by the PSP as `request` selects.
    pub fn derive_key(&mut self, request: &KeyReq) -> Result<Zeroizing<[u8; 32]>, PspError> {
        let payload = match self.send(msg_type::KEY_REQ, request.as_bytes(), None)? {
            Delivery::Payload(p) => p,
            Delivery::NeedPages(_) => return Err(PspError::BadBody("unexpected reply")),
        };
        let rsp = KeyRsp::ref_from_prefix(&payload)
            .map_err(|_| PspError::BadBody("KEY_RSP shorter than its layout"))?
            .0;
        let status = rsp.status.get();
        if status != 0 {
            return Err(PspError::Status(status));
        }
        Ok(Zeroizing::new(rsp.derived_key))
    }

    /// Wipe the VMPCK and shut the channel.
    fn disable(&mut self) {
        self.vmpck.zeroize();
        self.disabled = true;
    }

    /// Encrypt `payload` as a `ty` message and deliver it; on an extended request
    /// that is short of pages, consume the sequence number with a plain request.
    fn send(
        &mut self,
        ty: u8,
        payload: &[u8],
        certificates: Option<&mut [u8]>,
    ) -> Result<Delivery, PspError> {
        if self.disabled {
            return Err(PspError::Disabled);
        }
        let result = self.send_inner(ty, payload, certificates);
        if let Err(e) = result {
            if e.shuts_channel() {
                self.disable();
            }
        }
        result
    }

    fn send_inner(
        &mut self,
        ty: u8,
        payload: &[u8],
        certificates: Option<&mut [u8]>,
    ) -> Result<Delivery, PspError> {
        let seqno = self
            .counter
            .checked_add(1)
            .filter(|s| s.checked_add(1).is_some())
            .ok_or(PspError::SequenceExhausted)?;
        let request = self.seal_request(ty, seqno, payload)?;
        let mut response = zeroed_page();
        let wants_certs = certificates.is_some();
        match self.deliver(&request, &mut response, certificates) {
            Ok(()) => {}
            Err(ChannelError::CertificatesTooSmall { pages }) if wants_certs => {
                // The hypervisor did not process the message: send the same page as a
                // plain request so the PSP consumes this sequence number.
                self.deliver(&request, &mut response, None)
                    .map_err(channel_error)?;
                self.open_response(ty, seqno, &mut response)?;
                self.counter = seqno + 1;
                return Ok(Delivery::NeedPages(pages));
            }
            Err(e) => return Err(channel_error(e)),
        }
        let plain = self.open_response(ty, seqno, &mut response)?;
        self.counter = seqno + 1;
        Ok(Delivery::Payload(plain))
    }

    /// Send the request, resending the same page while the PSP is busy.
    fn deliver(
        &mut self,
        request: &[u8; PSP_PAGE],
        response: &mut [u8; PSP_PAGE],
        mut certificates: Option<&mut [u8]>,
    ) -> Result<(), ChannelError> {
        let mut busy = 0;
        loop {
            match self
                .channel
                .guest_request(request, response, certificates.as_deref_mut())
            {
                Err(ChannelError::Busy) if busy < MAX_BUSY_RETRIES => busy += 1,
                other => return other,
            }
        }
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(self.vmpck.as_slice().into())
    }

    fn seal_request(
        &self,
        ty: u8,
        seqno: u64,
        payload: &[u8],
    ) -> Result<Box<[u8; PSP_PAGE]>, PspError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(PspError::BadBody("request payload larger than a page"));
        }
        let msg_sz = u16::try_from(payload.len())
            .map_err(|_| PspError::BadBody("request payload larger than a page"))?;
        let mut page = zeroed_page();
        let header = MsgHeader {
            msg_seqno: U64::new(seqno),
            algo: AEAD_AES_256_GCM,
            hdr_version: HDR_VERSION,
            hdr_sz: U16::new(HEADER_SIZE as u16),
            msg_type: ty,
            msg_version: MSG_VERSION,
            msg_sz: U16::new(msg_sz),
            msg_vmpck: self.vmpck_index,
            ..MsgHeader::new_zeroed()
        };
        page[..HEADER_SIZE].copy_from_slice(header.as_bytes());
        let (head, body) = page.split_at_mut(HEADER_SIZE);
        let body = &mut body[..payload.len()];
        body.copy_from_slice(payload);
        let tag = self
            .cipher()
            .encrypt_in_place_detached(&nonce(seqno), &head[AAD_RANGE], body)
            .map_err(|_| PspError::BadBody("request too large to encrypt"))?;
        head[..16].copy_from_slice(&tag);
        Ok(page)
    }

    /// Check the response header against the request and decrypt its payload.
    fn open_response(
        &self,
        ty: u8,
        seqno: u64,
        response: &mut [u8; PSP_PAGE],
    ) -> Result<Zeroizing<Vec<u8>>, PspError> {
        let (head, body) = response.split_at_mut(HEADER_SIZE);
        let header =
            MsgHeader::read_from_bytes(head).map_err(|_| PspError::BadResponse("header"))?;
        if header.algo != AEAD_AES_256_GCM {
            return Err(PspError::BadResponse("algo is not AES-256-GCM"));
        }
        if header.hdr_version != HDR_VERSION {
            return Err(PspError::BadResponse("hdr_version"));
        }
        if usize::from(header.hdr_sz.get()) != HEADER_SIZE {
            return Err(PspError::BadResponse("hdr_sz"));
        }
        if Some(header.msg_seqno.get()) != seqno.checked_add(1) {
            return Err(PspError::BadResponse("msg_seqno is not request + 1"));
        }
        if Some(header.msg_type) != ty.checked_add(1) {
            return Err(PspError::BadResponse("msg_type is not request + 1"));
        }
        if header.msg_version != MSG_VERSION {
            return Err(PspError::BadResponse(
                "msg_version differs from the request",
            ));
        }
        if header.msg_vmpck != self.vmpck_index {
            return Err(PspError::BadResponse("msg_vmpck differs from the request"));
        }
        let msg_sz = usize::from(header.msg_sz.get());
        if msg_sz == 0 || msg_sz > MAX_PAYLOAD {
            return Err(PspError::BadResponse("msg_sz"));
        }
        let mut plain = Zeroizing::new(body[..msg_sz].to_vec());
        self.cipher()
            .decrypt_in_place_detached(
                &nonce(header.msg_seqno.get()),
                &head[AAD_RANGE],
                &mut plain,
                &tag_of(&header),
            )
            .map_err(|_| PspError::BadResponse("authentication tag"))?;
        Ok(plain)
    }
}

impl PspError {
    /// Whether this error leaves the sequence numbers unknown (or the channel
    /// unusable), so the VMPCK must be wiped.
    fn shuts_channel(&self) -> bool {
        match self {
            Self::Busy | Self::Channel(_) | Self::BadResponse(_) | Self::SequenceExhausted => true,
            Self::Disabled | Self::Status(_) | Self::BadBody(_) => false,
            Self::CertificatesTooLarge { .. } => false,
        }
    }
}

fn channel_error(e: ChannelError) -> PspError {
    match e {
        ChannelError::Busy => PspError::Busy,
        other => PspError::Channel(other),
    }
}

/// The GCM IV of sequence number `seqno`: the u64 little-endian, then zeros.
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

/// The certificate table in `buf` cut to its used length (the terminating entry
/// and every certificate it points to); empty when the table has no entries.
fn trim_cert_table(mut buf: Vec<u8>) -> Result<Vec<u8>, PspError> {
    const MALFORMED: PspError = PspError::BadBody("malformed certificate table");
    let mut entries = 0usize;
    for entry in certs::entries(&buf) {
        entry.map_err(|_| MALFORMED)?;
        entries += 1;
    }
    if entries == 0 {
        return Ok(Vec::new());
    }
    // The walk above checked every entry lies inside `buf` and the terminator exists.
    let mut end = entries
        .checked_add(1)
        .and_then(|n| n.checked_mul(ENTRY_SIZE))
        .ok_or(MALFORMED)?;
    for raw in buf.chunks_exact(ENTRY_SIZE).take(entries) {
        let entry = CertTableEntry::read_from_bytes(raw).map_err(|_| MALFORMED)?;
        let cert_end = (entry.offset.get() as usize)
            .checked_add(entry.length.get() as usize)
            .ok_or(MALFORMED)?;
        end = end.max(cert_end);
    }
    buf.truncate(end);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nitride_emulated_psp::testing::{self, open, psp, psp_with, reseal, vmpck};
    use nitride_emulated_psp::{EmulatedPsp, RequestError};
    use nitride_protocol::snp::msg::guest_field;

    type HeaderEdit = Box<dyn FnOnce(&mut MsgHeader)>;

    /// The emulated PSP behind a channel that records and can misbehave.
    struct Tamper {
        psp: EmulatedPsp,
        /// Every call: the request's seqno and whether it was an extended request.
        calls: Vec<(u64, bool)>,
        /// Answer BUSY this many times (without reaching the PSP).
        busy: u32,
        /// Fail the next call with this error (without reaching the PSP).
        fail: Option<ChannelError>,
        /// Edit the next response's header and seal it again (valid tag).
        edit: Option<HeaderEdit>,
        /// Flip a byte of the next response's tag.
        corrupt_tag: bool,
        /// Answer the next call with this page instead (a replay).
        replay: Option<Box<[u8; PSP_PAGE]>>,
        /// The last response delivered.
        last: Option<Box<[u8; PSP_PAGE]>>,
    }

    impl Tamper {
        fn new(psp: EmulatedPsp) -> Self {
            Self {
                psp,
                calls: Vec::new(),
                busy: 0,
                fail: None,
                edit: None,
                corrupt_tag: false,
                replay: None,
                last: None,
            }
        }
    }

    impl PspChannel for Tamper {
        fn guest_request(
            &mut self,
            request: &[u8; PSP_PAGE],
            response: &mut [u8; PSP_PAGE],
            certificates: Option<&mut [u8]>,
        ) -> Result<(), ChannelError> {
            let header = MsgHeader::read_from_bytes(&request[..HEADER_SIZE]).unwrap();
            self.calls
                .push((header.msg_seqno.get(), certificates.is_some()));
            if self.busy > 0 {
                self.busy -= 1;
                return Err(ChannelError::Busy);
            }
            if let Some(e) = self.fail.take() {
                return Err(e);
            }
            if let Some(page) = self.replay.take() {
                *response = *page;
                return Ok(());
            }
            self.psp
                .handle(request, response, certificates)
                .map_err(|e| match e {
                    RequestError::CertificatesTooSmall { pages } => {
                        ChannelError::CertificatesTooSmall { pages }
                    }
                    RequestError::Firmware(code) => ChannelError::Firmware(code),
                })?;
            if let Some(edit) = self.edit.take() {
                reseal(&vmpck(0), response, edit);
            }
            if core::mem::take(&mut self.corrupt_tag) {
                response[3] ^= 0x80;
            }
            self.last = Some(Box::new(*response));
            Ok(())
        }
    }

    fn client() -> PspClient<Tamper> {
        PspClient::new(Tamper::new(psp()), Zeroizing::new(vmpck(0)), 0)
    }

    fn seqnos(c: &PspClient<Tamper>) -> Vec<u64> {
        c.channel().calls.iter().map(|c| c.0).collect()
    }

    /// After a failure: the VMPCK is wiped, and nothing more reaches the channel.
    fn assert_shut(c: &mut PspClient<Tamper>) {
        assert!(c.is_disabled());
        assert_eq!(*c.vmpck, [0; 32]);
        let calls = c.channel().calls.len();
        assert_eq!(c.report(&[0; 64], 0, false), Err(PspError::Disabled));
        assert_eq!(
            c.derive_key(&KeyReq::default()).map(|_| ()),
            Err(PspError::Disabled)
        );
        assert_eq!(c.channel().calls.len(), calls);
    }

    #[test]
    fn sequence_numbers_advance_by_two() {
        let mut c = client();
        let a = c.report(&[1; 64], 0, false).unwrap();
        c.derive_key(&KeyReq::default()).unwrap();
        let b = c.report(&[1; 64], 0, false).unwrap();
        assert_eq!(seqnos(&c), [1, 3, 5]);
        assert_eq!(c.channel().psp.expected_seqno(0), 7);
        assert_eq!(c.counter, 6);
        // Same input, same (deterministically signed) report.
        assert_eq!(a, b);
        // The request on the wire is encrypted.
        let mut c = client();
        c.report(&[0xAB; 64], 0, false).unwrap();
        let last = c.channel().last.as_ref().unwrap();
        assert!(!last[HEADER_SIZE..].windows(64).any(|w| w == [0xAB; 64]));
        assert_eq!(open(&vmpck(0), last).0.msg_type, msg_type::REPORT_RSP);
    }

    fn expect_rejected(edit: impl FnOnce(&mut MsgHeader) + 'static, why: &'static str) {
        let mut c = client();
        c.report(&[0; 64], 0, false).unwrap();
        c.channel_mut().edit = Some(Box::new(edit));
        assert_eq!(
            c.report(&[0; 64], 0, false),
            Err(PspError::BadResponse(why)).map(|()| unreachable!())
        );
        assert_shut(&mut c);
    }

    #[test]
    fn responses_that_do_not_match_the_request_shut_the_channel() {
        expect_rejected(
            |h| h.msg_seqno = U64::new(h.msg_seqno.get() + 2),
            "msg_seqno is not request + 1",
        );
        expect_rejected(
            |h| h.msg_seqno = U64::new(h.msg_seqno.get() - 1),
            "msg_seqno is not request + 1",
        );
        expect_rejected(|h| h.msg_type += 2, "msg_type is not request + 1");
        expect_rejected(
            |h| h.msg_version = 2,
            "msg_version differs from the request",
        );
        expect_rejected(|h| h.msg_vmpck = 1, "msg_vmpck differs from the request");
        expect_rejected(|h| h.algo = 2, "algo is not AES-256-GCM");
        expect_rejected(|h| h.hdr_version = 2, "hdr_version");
        expect_rejected(|h| h.hdr_sz = U16::new(0x20), "hdr_sz");
        expect_rejected(|h| h.msg_sz = U16::new(0), "msg_sz");
    }

    #[test]
    fn a_bad_tag_shuts_the_channel() {
        let mut c = client();
        c.channel_mut().corrupt_tag = true;
        assert_eq!(
            c.derive_key(&KeyReq::default()).map(|_| ()),
            Err(PspError::BadResponse("authentication tag"))
        );
        assert_shut(&mut c);
    }

    #[test]
    fn a_replayed_response_is_refused() {
        let mut c = client();
        c.report(&[0; 64], 0, false).unwrap();
        let old = c.channel().last.clone();
        c.channel_mut().replay = old;
        assert_eq!(
            c.report(&[0; 64], 0, false),
            Err(PspError::BadResponse("msg_seqno is not request + 1")).map(|()| unreachable!())
        );
        assert_shut(&mut c);
    }

    #[test]
    fn busy_is_retried_with_the_same_message() {
        let mut c = client();
        c.channel_mut().busy = 3;
        c.report(&[0; 64], 0, false).unwrap();
        assert_eq!(seqnos(&c), [1, 1, 1, 1]);
        c.report(&[0; 64], 0, false).unwrap();
        assert_eq!(seqnos(&c), [1, 1, 1, 1, 3]);
        assert!(!c.is_disabled());
    }

    #[test]
    fn busy_forever_gives_up_and_shuts_the_channel() {
        let mut c = client();
        c.channel_mut().busy = u32::MAX;
        assert_eq!(
            c.report(&[0; 64], 0, false).map(|_| ()),
            Err(PspError::Busy)
        );
        assert_eq!(c.channel().calls.len(), MAX_BUSY_RETRIES as usize + 1);
        assert_eq!(AttestError::from(PspError::Busy), AttestError::Busy);
        assert_shut(&mut c);
    }

    #[test]
    fn transport_errors_shut_the_channel() {
        for e in [ChannelError::Firmware(0x18), ChannelError::Hypervisor(7)] {
            let mut c = client();
            c.channel_mut().fail = Some(e);
            assert_eq!(
                c.report(&[0; 64], 0, true).map(|_| ()),
                Err(PspError::Channel(e))
            );
            assert_shut(&mut c);
        }
        // The emulated PSP's own refusal (here: a VMPCK the PSP does not share).
        let mut c = PspClient::new(Tamper::new(psp()), Zeroizing::new([9; 32]), 0);
        assert_eq!(
            c.report(&[0; 64], 0, false).map(|_| ()),
            Err(PspError::Channel(ChannelError::Firmware(0x18)))
        );
        assert_shut(&mut c);
    }

    #[test]
    fn status_errors_keep_the_channel() {
        let mut c = PspClient::new(Tamper::new(psp()), Zeroizing::new(vmpck(1)), 1);
        assert_eq!(
            c.report(&[0; 64], 0, false).map(|_| ()),
            Err(PspError::Status(0x16))
        );
        let vmrk = KeyReq {
            root_key_select: U32::new(1),
            vmpl: U32::new(1),
            ..KeyReq::default()
        };
        assert_eq!(c.derive_key(&vmrk).map(|_| ()), Err(PspError::Status(0x16)));
        assert_eq!(
            AttestError::from(PspError::Status(0x16)),
            AttestError::Failed
        );
        assert!(!c.is_disabled());
        c.report(&[0; 64], 1, false).unwrap();
        assert_eq!(seqnos(&c), [1, 3, 5]);
    }

    #[test]
    fn extended_request_returns_the_trimmed_table() {
        let mut c = client();
        let ev = c.report(&[7; 64], 0, true).unwrap();
        assert_eq!(ev.certificates, testing::cert_table(100));
        assert_eq!(ev.report.len(), 0x4A0);
        assert_eq!(c.channel().calls, [(1, true)]);
    }

    #[test]
    fn too_small_certificate_buffer_keeps_seqnos_in_step() {
        // Three 2000-byte certificates: two pages; the client starts with one.
        let mut c = PspClient::new(
            Tamper::new(psp_with(2000, testing::launch())),
            Zeroizing::new(vmpck(0)),
            0,
        )
        .with_cert_pages(1);
        let ev = c.report(&[7; 64], 0, true).unwrap();
        assert_eq!(ev.certificates, testing::cert_table(2000));
        // Extended (too small), the same message plain, a fresh extended request.
        assert_eq!(c.channel().calls, [(1, true), (1, false), (3, true)]);
        c.report(&[7; 64], 0, false).unwrap();
        assert_eq!(c.channel().calls.last(), Some(&(5, false)));
        assert!(!c.is_disabled());
    }

    #[test]
    fn too_many_certificate_pages_are_refused_in_step() {
        let mut c = client();
        c.channel_mut().fail = Some(ChannelError::CertificatesTooSmall {
            pages: MAX_CERT_PAGES + 1,
        });
        assert_eq!(
            c.report(&[0; 64], 0, true).map(|_| ()),
            Err(PspError::CertificatesTooLarge {
                pages: MAX_CERT_PAGES + 1
            })
        );
        assert!(!c.is_disabled());
        c.report(&[0; 64], 0, true).unwrap();
        assert_eq!(c.channel().calls, [(1, true), (1, false), (3, true)]);
    }

    #[test]
    fn certificates_too_small_on_a_plain_request_shuts_the_channel() {
        let mut c = client();
        let e = ChannelError::CertificatesTooSmall { pages: 2 };
        c.channel_mut().fail = Some(e);
        assert_eq!(
            c.report(&[0; 64], 0, false).map(|_| ()),
            Err(PspError::Channel(e))
        );
        assert_shut(&mut c);
    }

    #[test]
    fn empty_certificate_table_gives_no_certificates() {
        assert_eq!(trim_cert_table(vec![0; PSP_PAGE]), Ok(Vec::new()));
        let mut t = testing::cert_table(10);
        let len = t.len();
        t.resize(PSP_PAGE, 0);
        assert_eq!(trim_cert_table(t.clone()).map(|t| t.len()), Ok(len));
        t[16..20].fill(0xFF); // first entry's offset beyond the buffer
        assert_eq!(
            trim_cert_table(t),
            Err(PspError::BadBody("malformed certificate table"))
        );
    }

    #[test]
    fn keys_come_back_and_debug_redacts() {
        let mut c = client();
        let req = KeyReq {
            guest_field_select: U64::new(guest_field::MEASUREMENT),
            ..KeyReq::default()
        };
        let k = c.derive_key(&req).unwrap();
        assert_ne!(*k, [0; 32]);
        let dbg = format!("{c:?}");
        assert!(dbg.contains("REDACTED") && !dbg.contains("112"), "{dbg}");
    }

    #[test]
    fn exhausted_sequence_numbers_shut_the_channel() {
        let mut c = client();
        c.counter = u64::MAX - 1;
        assert_eq!(
            c.report(&[0; 64], 0, false).map(|_| ()),
            Err(PspError::SequenceExhausted)
        );
        assert!(c.channel().calls.is_empty());
        assert_shut(&mut c);
    }
}
