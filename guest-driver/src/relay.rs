//! The host's end of the relay channel (std only): a byte stream to the relay
//! guest's COM2 (a Unix socket QEMU serves), carrying `nitride_protocol::relay`
//! frames. Each request becomes one real SVSM call inside the guest.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use nitride_protocol::relay::{
    RawCallHead, RelayInfo, ResponseHead, ATTACK_MAGIC, INFO_MAGIC, RAW_MAGIC, REQUEST_BUFFER_SIZE,
    REQUEST_MAGIC, RESPONSE_BUFFER_SIZE, RESPONSE_MAGIC,
};
use zerocopy::{FromBytes, IntoBytes};

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

    fn read_response(&mut self) -> Result<CallResult, RelayError> {
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
        if len > RESPONSE_BUFFER_SIZE {
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

    /// Write raw bytes to the channel (tests of the relay's resynchronisation).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), RelayError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }
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
