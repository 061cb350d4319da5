//! Shared helpers for the vault's integration tests and benches: an OS-entropy
//! platform and a small wire client that encodes requests, calls the dispatcher and
//! checks every response header.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::Read;

use nitride_protocol::vhsm::{
    KeyAttributes, KeyTemplate, KeyType, KeyUsage, Request, Response, Status, VmplSet,
    MAX_REQUEST_SIZE,
};
use nitride_vhsm::{Caller, Platform, PlatformError, Vault, VaultPolicy};

/// Entropy from the host's `/dev/urandom`.
#[derive(Debug)]
pub struct OsEntropy;

impl Platform for OsEntropy {
    fn entropy(&mut self, out: &mut [u8]) -> Result<(), PlatformError> {
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(out))
            .map_err(|_| PlatformError::EntropyUnavailable)
    }
}

/// A vault driven only through wire requests.
#[derive(Debug)]
pub struct Client {
    pub vault: Vault<OsEntropy>,
    pub caller: Caller,
    next_request: u64,
    buf: Vec<u8>,
}

impl Client {
    pub fn new(allow_plaintext_import: bool) -> Self {
        let vault = Vault::new(
            OsEntropy,
            VaultPolicy {
                allow_plaintext_import,
                ..VaultPolicy::default()
            },
        )
        .unwrap();
        Self {
            vault,
            caller: Caller::new(1).unwrap(),
            next_request: 1,
            buf: vec![0; MAX_REQUEST_SIZE],
        }
    }

    /// Encode `req` into the client's buffer; returns the request bytes' length.
    pub fn encode(&mut self, req: &Request<'_>) -> usize {
        self.next_request += 1;
        req.encode(self.next_request, &mut self.buf).unwrap()
    }

    /// Send a request; checks the echoed operation and request id.
    pub fn call(&mut self, req: Request<'_>) -> (Status, Vec<u8>) {
        let n = self.encode(&req);
        let resp = self.vault.handle(self.caller, &self.buf[..n]);
        let r = Response::decode(&resp).unwrap();
        assert_eq!(r.header.op.get(), req.op().raw());
        assert_eq!(r.header.request_id.get(), self.next_request);
        (r.status().unwrap(), r.body.to_vec())
    }

    /// Send a request that must succeed; returns the body.
    pub fn ok(&mut self, req: Request<'_>) -> Vec<u8> {
        let (status, body) = self.call(req);
        assert_eq!(status, Status::Ok, "{:?} failed", req.op());
        body
    }

    /// Send a request that must fail with `expected`.
    pub fn fails(&mut self, req: Request<'_>, expected: Status) {
        let (status, body) = self.call(req);
        assert_eq!(status, expected, "{:?}", req.op());
        assert!(body.is_empty());
    }

    pub fn generate(&mut self, kt: KeyType, usage: KeyUsage, exportable: bool) -> u32 {
        let template = template(kt, usage, exportable);
        attrs(&self.ok(Request::Generate {
            template,
            label: b"",
        }))
        .key_id
        .get()
    }

    pub fn import(
        &mut self,
        kt: KeyType,
        usage: KeyUsage,
        exportable: bool,
        material: &[u8],
    ) -> u32 {
        let template = template(kt, usage, exportable);
        attrs(&self.ok(Request::Import {
            template,
            label: b"",
            material,
        }))
        .key_id
        .get()
    }
}

/// A template usable by VMPL0 and VMPL1.
pub fn template(kt: KeyType, usage: KeyUsage, exportable: bool) -> KeyTemplate {
    KeyTemplate::new(kt, usage, VmplSet::VMPL0 | VmplSet::VMPL1, exportable)
}

pub fn attrs(body: &[u8]) -> KeyAttributes {
    use zerocopy::FromBytes;
    KeyAttributes::read_from_bytes(body).unwrap()
}
