//! The host's end of the relay channel (std only): a byte stream to the relay
//! guest's COM2 (a Unix socket QEMU serves), carrying `nitride_protocol::relay`
//! frames. Each request becomes one real SVSM call inside the guest.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nitride_protocol::relay::{
    AttestHead, AttestResultHead, RawCallHead, RelayInfo, ResponseHead, ATTACK_MAGIC,
    ATTEST_CERT_BUFFER_SIZE, ATTEST_MAGIC, ATTEST_MANIFEST_BUFFER_SIZE, ATTEST_MAX_PAYLOAD,
    ATTEST_NONCE_BUFFER_SIZE, ATTEST_REPORT_BUFFER_SIZE, INFO_MAGIC, RAW_MAGIC,
    REQUEST_BUFFER_SIZE, REQUEST_MAGIC, RESPONSE_BUFFER_SIZE, RESPONSE_MAGIC, SECRETS_MAGIC,
    SECRETS_PAGE_SIZE,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::attest::{decode_result, AttestError, AttestSizes, Target};

/// How long to wait for the relay's answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A relay-channel failure.
#[derive(Debug)]
pub enum RelayError {
    /// The socket failed.
    Io(io::Error),
    /// The relay sent something that is not a response frame.
    BadFrame(&'static str),
    /// A payload is larger than the relay's buffer.
    TooLarge(usize),
    /// The attestation call did not produce evidence.
    Attest(AttestError),
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "relay channel: {e}"),
            Self::BadFrame(what) => write!(f, "relay channel: malformed response ({what})"),
            Self::TooLarge(n) => write!(
                f,
                "relay channel: {n} bytes exceed the relay's {REQUEST_BUFFER_SIZE}-byte buffer"
            ),
            Self::Attest(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RelayError {}

impl From<io::Error> for RelayError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// What one SVSM call through the relay returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallResult {
    /// The SVSM result code (RAX).
    pub rax: u64,
    /// RCX after the call (the response length on success).
    pub rcx: u64,
    /// The response bytes (empty unless RAX is SUCCESS).
    pub payload: Vec<u8>,
}

/// A connection to the relay guest.
#[derive(Debug)]
pub struct RelayClient {
    stream: UnixStream,
}

impl RelayClient {
    /// Connect to the Unix socket at `path`.
    pub fn connect(path: &Path) -> Result<Self, RelayError> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
        Ok(Self { stream })
    }

    /// A client over an already connected stream (tests, or a socket from elsewhere).
    pub fn from_stream(stream: UnixStream) -> Result<Self, RelayError> {
        stream.set_read_timeout(Some(DEFAULT_TIMEOUT))?;
        Ok(Self { stream })
    }

    fn read_response(&mut self) -> Result<CallResult, RelayError> {
        self.read_response_max(RESPONSE_BUFFER_SIZE)
    }

    fn read_response_max(&mut self, max: usize) -> Result<CallResult, RelayError> {
        let mut magic = [0u8; 4];
        self.stream.read_exact(&mut magic)?;
        if magic != RESPONSE_MAGIC {
            return Err(RelayError::BadFrame("magic"));
        }
        let mut head = [0u8; core::mem::size_of::<ResponseHead>()];
        self.stream.read_exact(&mut head)?;
        let head =
            ResponseHead::read_from_bytes(&head).map_err(|_| RelayError::BadFrame("head"))?;
        let len = head.len as usize;
        if len > max {
            return Err(RelayError::BadFrame("length"));
        }
        let mut payload = vec![0u8; len];
        self.stream.read_exact(&mut payload)?;
        Ok(CallResult {
            rax: head.rax,
            rcx: head.rcx,
            payload,
        })
    }

    /// Send one vHSM request; the relay calls the SVSM with it.
    pub fn request(&mut self, request: &[u8]) -> Result<CallResult, RelayError> {
        let len = u32::try_from(request.len()).map_err(|_| RelayError::TooLarge(request.len()))?;
        let mut frame = Vec::with_capacity(8 + request.len());
        frame.extend_from_slice(&REQUEST_MAGIC);
        frame.extend_from_slice(&len.to_le_bytes());
        frame.extend_from_slice(request);
        self.stream.write_all(&frame)?;
        self.read_response()
    }

    /// Copy `payload` into the relay's request buffer, then make the vHSM call with
    /// exactly these registers (tests of the SVSM's address checks).
    pub fn raw_call(
        &mut self,
        rcx: u64,
        rdx: u64,
        r8: u64,
        r9: u64,
        payload: &[u8],
    ) -> Result<CallResult, RelayError> {
        if payload.len() > REQUEST_BUFFER_SIZE {
            return Err(RelayError::TooLarge(payload.len()));
        }
        let head = RawCallHead {
            rcx,
            rdx,
            r8,
            r9,
            len: payload.len() as u32,
        };
        let mut frame = Vec::with_capacity(4 + 36 + payload.len());
        frame.extend_from_slice(&RAW_MAGIC);
        frame.extend_from_slice(head.as_bytes());
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame)?;
        self.read_response()
    }

    /// The relay's buffers, CAA and the SVSM's location.
    pub fn info(&mut self) -> Result<RelayInfo, RelayError> {
        self.stream.write_all(&INFO_MAGIC)?;
        let r = self.read_response()?;
        RelayInfo::read_from_bytes(&r.payload).map_err(|_| RelayError::BadFrame("info"))
    }

    /// Tell the relay to touch `gpa` itself (0 read, 1 write, 2 execute): the SVSM
    /// must stop the VM, so no answer is expected.
    pub fn attack(&mut self, gpa: u64, kind: u8) -> Result<(), RelayError> {
        let mut frame = ATTACK_MAGIC.to_vec();
        frame.extend_from_slice(&gpa.to_le_bytes());
        frame.push(kind);
        self.stream.write_all(&frame)?;
        Ok(())
    }

    /// The relay's secrets page, as the guest reads it.
    pub fn secrets_page(&mut self) -> Result<Vec<u8>, RelayError> {
        self.stream.write_all(&SECRETS_MAGIC)?;
        let r = self.read_response()?;
        if r.payload.len() != SECRETS_PAGE_SIZE {
            return Err(RelayError::BadFrame("secrets page"));
        }
        Ok(r.payload)
    }

    /// One attestation-protocol call through the relay, exactly as `params` say (no
    /// retry): the result registers and, on success, the evidence.
    pub fn attest_call(&mut self, params: &AttestParams<'_>) -> Result<AttestCall, RelayError> {
        let nonce_len = u32::try_from(params.nonce.len())
            .map_err(|_| RelayError::TooLarge(params.nonce.len()))?;
        let (call, service_guid, manifest_version) = match params.target {
            Target::Services => (nitride_protocol::attest::attest_call::SERVICES, [0; 16], 0),
            Target::SingleService {
                guid,
                manifest_version,
            } => (
                nitride_protocol::attest::attest_call::SINGLE_SERVICE,
                guid,
                manifest_version,
            ),
        };
        let head = AttestHead {
            call,
            service_guid,
            manifest_version,
            nonce_len,
            want_certificates: u8::from(params.want_certificates),
            report_size: params.report_size,
            manifest_size: params.manifest_size,
            cert_size: params.cert_size,
        };
        let mut frame = ATTEST_MAGIC.to_vec();
        frame.extend_from_slice(head.as_bytes());
        frame.extend_from_slice(params.nonce);
        self.stream.write_all(&frame)?;
        let r = self.read_response_max(ATTEST_MAX_PAYLOAD)?;
        let (regs, rest) = AttestResultHead::read_from_prefix(&r.payload)
            .map_err(|_| RelayError::BadFrame("attest result"))?;
        let mut call = AttestCall {
            rax: r.rax,
            rcx: r.rcx,
            rdx: regs.rdx,
            r8: regs.r8,
            report: Vec::new(),
            manifest: Vec::new(),
            certificates: Vec::new(),
        };
        if r.rax == 0 {
            let mut rest = rest;
            let mut take = |n: u64| -> Result<Vec<u8>, RelayError> {
                let n = usize::try_from(n).map_err(|_| RelayError::BadFrame("attest lengths"))?;
                let (a, b) = rest
                    .split_at_checked(n)
                    .ok_or(RelayError::BadFrame("attest lengths"))?;
                rest = b;
                Ok(a.to_vec())
            };
            call.report = take(call.r8)?;
            call.manifest = take(call.rcx)?;
            call.certificates = take(call.rdx)?;
            if !rest.is_empty() {
                return Err(RelayError::BadFrame("attest trailing bytes"));
            }
        } else if !rest.is_empty() {
            return Err(RelayError::BadFrame("attest error with payload"));
        }
        Ok(call)
    }

    /// Attest through the relay: make the call with `params`; if the SVSM answers
    /// that the buffers are too small, retry once with the sizes it asked for (still
    /// within the relay's buffers). Returns the evidence.
    pub fn attest(&mut self, params: &AttestParams<'_>) -> Result<AttestEvidence, RelayError> {
        let first = self.attest_call(params)?;
        match first.decode(params) {
            Ok(_) => Ok(first.into_evidence(false)),
            Err(AttestError::BuffersTooSmall {
                manifest,
                certificates,
                report,
            }) => {
                let size = |needed: u64, offered: u32, max: usize| {
                    u32::try_from(needed.min(max as u64)).map_or(offered, |n| n.max(offered))
                };
                let retry = AttestParams {
                    report_size: size(report, params.report_size, ATTEST_REPORT_BUFFER_SIZE),
                    manifest_size: size(
                        manifest,
                        params.manifest_size,
                        ATTEST_MANIFEST_BUFFER_SIZE,
                    ),
                    cert_size: size(certificates, params.cert_size, ATTEST_CERT_BUFFER_SIZE),
                    ..*params
                };
                let second = self.attest_call(&retry)?;
                second.decode(&retry).map_err(RelayError::Attest)?;
                Ok(second.into_evidence(true))
            }
            Err(e) => Err(RelayError::Attest(e)),
        }
    }

    /// Write raw bytes to the channel (tests of the relay's resynchronisation).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), RelayError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }
}

/// What to ask the SVSM's attestation protocol for, through the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttestParams<'a> {
    /// All services or one.
    pub target: Target,
    /// The caller's nonce. The SVSM accepts exactly `attest::NONCE_SIZE` (64)
    /// bytes, which [`AttestParams::new`] enforces; the relay carries any length up
    /// to [`AttestParams::MAX_NONCE`] so that tests can set another and see it
    /// refused.
    pub nonce: &'a [u8],
    /// Ask for the certificate table.
    pub want_certificates: bool,
    /// Report buffer size to offer.
    pub report_size: u32,
    /// Manifest buffer size to offer.
    pub manifest_size: u32,
    /// Certificate buffer size to offer (when wanted).
    pub cert_size: u32,
}

impl<'a> AttestParams<'a> {
    /// `target` with `nonce`, certificates wanted, offering the relay's whole buffers.
    pub fn new(target: Target, nonce: &'a nitride_protocol::attest::Nonce) -> Self {
        Self {
            target,
            nonce,
            want_certificates: true,
            report_size: ATTEST_REPORT_BUFFER_SIZE as u32,
            manifest_size: ATTEST_MANIFEST_BUFFER_SIZE as u32,
            cert_size: ATTEST_CERT_BUFFER_SIZE as u32,
        }
    }

    /// The longest nonce the relay carries in its buffer (the SVSM refuses every
    /// length but 64).
    pub const MAX_NONCE: usize = ATTEST_NONCE_BUFFER_SIZE;
}

/// One attestation call through the relay, as it came back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestCall {
    /// Result code.
    pub rax: u64,
    /// Manifest length (needed size on INVALID_PARAMETER).
    pub rcx: u64,
    /// Certificate length (needed size on INVALID_PARAMETER).
    pub rdx: u64,
    /// Report length (needed size on INVALID_PARAMETER).
    pub r8: u64,
    /// The report (success only).
    pub report: Vec<u8>,
    /// The services manifest (success only).
    pub manifest: Vec<u8>,
    /// The certificate table (success only).
    pub certificates: Vec<u8>,
}

impl AttestCall {
    /// Decode the registers against what `params` offered.
    pub fn decode(&self, params: &AttestParams<'_>) -> Result<AttestSizes, AttestError> {
        let offered = AttestSizes {
            manifest: u64::from(params.manifest_size.min(ATTEST_MANIFEST_BUFFER_SIZE as u32)),
            certificates: if params.want_certificates {
                u64::from(params.cert_size.min(ATTEST_CERT_BUFFER_SIZE as u32))
            } else {
                0
            },
            report: u64::from(params.report_size.min(ATTEST_REPORT_BUFFER_SIZE as u32)),
        };
        decode_result(self.rax, self.rcx, self.rdx, self.r8, offered)
    }

    fn into_evidence(self, retried: bool) -> AttestEvidence {
        AttestEvidence {
            report: self.report,
            manifest: self.manifest,
            certificates: self.certificates,
            retried,
        }
    }
}

/// Evidence from the attestation protocol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestEvidence {
    /// The attestation report (REPORT_DATA = SHA-512(nonce || manifest)).
    pub report: Vec<u8>,
    /// The services manifest (or the one service's manifest).
    pub manifest: Vec<u8>,
    /// The certificate table (`snp::certs`; empty when not asked for or none).
    pub certificates: Vec<u8>,
    /// Whether the call was repeated with the sizes the SVSM asked for.
    pub retried: bool,
}

impl crate::vhsm::VhsmTransport for RelayClient {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, crate::vhsm::VhsmError> {
        let r = self
            .request(request)
            .map_err(|e| crate::vhsm::VhsmError::Transport(e.to_string()))?;
        if r.rax != 0 {
            return Err(crate::vhsm::svsm_error(r.rax));
        }
        Ok(r.payload)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use nitride_protocol::svsm::ResultCode;

    /// Plays the relay for `answers.len()` attest frames: checks each frame, records
    /// its head, answers (rax, rcx, rdx, r8, body).
    fn fake_relay(
        answers: Vec<(u64, u64, u64, u64, Vec<u8>)>,
    ) -> (RelayClient, std::thread::JoinHandle<Vec<AttestHead>>) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let handle = std::thread::spawn(move || {
            let mut s = theirs;
            let mut heads = Vec::new();
            for (rax, rcx, rdx, r8, body) in answers {
                let mut magic = [0u8; 4];
                s.read_exact(&mut magic).unwrap();
                assert_eq!(magic, ATTEST_MAGIC);
                let mut h = [0u8; core::mem::size_of::<AttestHead>()];
                s.read_exact(&mut h).unwrap();
                let head = AttestHead::read_from_bytes(&h).unwrap();
                let mut nonce = vec![0u8; head.nonce_len as usize];
                s.read_exact(&mut nonce).unwrap();
                heads.push(head);
                let mut payload = AttestResultHead { rdx, r8 }.as_bytes().to_vec();
                payload.extend_from_slice(&body);
                let resp = ResponseHead {
                    rax,
                    rcx,
                    len: payload.len() as u32,
                };
                s.write_all(&RESPONSE_MAGIC).unwrap();
                s.write_all(resp.as_bytes()).unwrap();
                s.write_all(&payload).unwrap();
            }
            heads
        });
        (RelayClient::from_stream(ours).unwrap(), handle)
    }

    #[test]
    fn attest_retries_once_with_the_sizes_asked_for() {
        let inval = ResultCode::InvalidParameter.raw();
        let mut body = vec![1u8; 0x4A0];
        body.extend_from_slice(&[2u8; 100]);
        body.extend_from_slice(&[3u8; 10]);
        let (mut c, relay) = fake_relay(vec![
            (inval, 100, 10, 0x4A0, Vec::new()),
            (0, 100, 10, 0x4A0, body),
        ]);
        let mut p = AttestParams::new(Target::Services, &[0x4E; 64]);
        p.manifest_size = 16;
        p.cert_size = 4;
        let ev = c.attest(&p).unwrap();
        assert!(ev.retried);
        assert_eq!(ev.report, vec![1u8; 0x4A0]);
        assert_eq!(ev.manifest, vec![2u8; 100]);
        assert_eq!(ev.certificates, vec![3u8; 10]);
        let heads = relay.join().unwrap();
        let (m0, c0, m1, c1) = (
            heads[0].manifest_size,
            heads[0].cert_size,
            heads[1].manifest_size,
            heads[1].cert_size,
        );
        assert_eq!((m0, c0), (16, 4));
        assert_eq!((m1, c1), (100, 10));
        let (nonce_len, want) = (heads[1].nonce_len, heads[1].want_certificates);
        assert_eq!((nonce_len, want), (64, 1));
    }

    #[test]
    fn attest_errors_are_typed() {
        let inval = ResultCode::InvalidParameter.raw();
        let unsupported = ResultCode::UnsupportedProtocol.raw();
        let (mut c, relay) = fake_relay(vec![
            // Still too small after the retry: the second answer is the error.
            (inval, 100, 0, 0x4A0, Vec::new()),
            (inval, 200, 0, 0x4A0, Vec::new()),
            (unsupported, 0, 0, 0, Vec::new()),
            // Success whose lengths do not match the payload.
            (0, 5, 0, 0x4A0, vec![0u8; 10]),
        ]);
        let mut p = AttestParams::new(Target::Services, &[0x4E; 64]);
        p.manifest_size = 16;
        assert!(matches!(
            c.attest(&p),
            Err(RelayError::Attest(AttestError::BuffersTooSmall {
                manifest: 200,
                ..
            }))
        ));
        assert!(matches!(
            c.attest(&p),
            Err(RelayError::Attest(AttestError::Call(
                crate::call::CallError::Svsm(ResultCode::UnsupportedProtocol)
            )))
        ));
        assert!(matches!(
            c.attest(&AttestParams::new(Target::Services, &[0x4E; 64])),
            Err(RelayError::BadFrame(_))
        ));
        relay.join().unwrap();
    }
}
