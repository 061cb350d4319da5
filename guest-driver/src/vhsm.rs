//! A typed vHSM client, one method per operation, over any [`VhsmTransport`].
//!
//! The client encodes requests (`nitride_protocol::vhsm`), checks that each response
//! answers its request (operation and request id echoed, well-formed), and turns a
//! non-Ok status into [`VhsmError::Status`]. Transports:
//! - [`SvsmVhsmTransport`]: a guest's own SVSM calls (any
//!   [`crate::call::Transport`]: VMGEXIT through the GHCB MSR or a GHCB page) with
//!   request/response buffers in guest memory;
//! - `RelayClient` (std, [`crate::relay`]): the host's channel to the relay guest.
#![forbid(unsafe_code)]

use alloc::vec;
use alloc::vec::Vec;

use nitride_protocol::svsm::{self, vhsm_call, ResultCode};
use nitride_protocol::vhsm::{
    AuditEntry, KeyAttributes, KeyTemplate, Op, Request, Response, Status, VmplSet, WireError,
    MAX_REQUEST_SIZE, MAX_RESPONSE_SIZE,
};

use crate::call::{CallError, SvsmClient, Transport};

/// Why a vHSM operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VhsmError {
    /// The vault refused the operation.
    Status(Status),
    /// The vault answered with a status this client does not know.
    UnknownStatus(u16),
    /// The SVSM call failed (bad buffers, framing, protocol not served...).
    Call(CallError),
    /// The request could not be encoded (too large).
    Encode(WireError),
    /// The response is malformed or answers another request.
    BadResponse(&'static str),
    /// The transport failed (std transports: I/O).
    Transport(alloc::string::String),
}

impl core::fmt::Display for VhsmError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Status(s) => write!(f, "the vHSM refused: {s:?}"),
            Self::UnknownStatus(s) => write!(f, "the vHSM answered with unknown status {s}"),
            Self::Call(e) => write!(f, "SVSM call failed: {e}"),
            Self::Encode(e) => write!(f, "request cannot be encoded: {e:?}"),
            Self::BadResponse(what) => write!(f, "malformed vHSM response: {what}"),
            Self::Transport(e) => write!(f, "transport: {e}"),
        }
    }
}

/// Carries one encoded vHSM request to the vHSM and returns the encoded response.
pub trait VhsmTransport {
    /// Exchange one request for one response.
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, VhsmError>;
}

/// vHSM requests through the guest's own SVSM calls. The buffers are guest memory
/// the caller names together with their guest-physical addresses (the SVSM reads
/// and writes them by GPA); a wrong GPA only makes the SVSM refuse or use other
/// memory of the same guest.
#[derive(Debug)]
pub struct SvsmVhsmTransport<'a, T> {
    svsm: SvsmClient<T>,
    request: &'a mut [u8],
    request_gpa: u64,
    response: &'a mut [u8],
    response_gpa: u64,
}

impl<'a, T: Transport> SvsmVhsmTransport<'a, T> {
    /// A transport over `svsm` using `request` (at `request_gpa`, at least
    /// `MAX_REQUEST_SIZE` bytes) and `response` (at `response_gpa`, at least
    /// `MAX_RESPONSE_SIZE` bytes); `None` when a buffer is too small.
    pub fn new(
        svsm: SvsmClient<T>,
        request: &'a mut [u8],
        request_gpa: u64,
        response: &'a mut [u8],
        response_gpa: u64,
    ) -> Option<Self> {
        (request.len() >= MAX_REQUEST_SIZE && response.len() >= MAX_RESPONSE_SIZE).then_some(Self {
            svsm,
            request,
            request_gpa,
            response,
            response_gpa,
        })
    }
}

impl<T: Transport> VhsmTransport for SvsmVhsmTransport<'_, T> {
    fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, VhsmError> {
        let dst = self
            .request
            .get_mut(..request.len())
            .ok_or(VhsmError::Encode(WireError::TooLarge))?;
        dst.copy_from_slice(request);
        let out = self
            .svsm
            .call(
                svsm::protocol::VHSM,
                vhsm_call::REQUEST,
                [
                    self.request_gpa,
                    request.len() as u64,
                    self.response_gpa,
                    self.response.len() as u64,
                ],
            )
            .map_err(VhsmError::Call)?;
        let len = usize::try_from(out.rcx).map_err(|_| VhsmError::BadResponse("length"))?;
        self.response
            .get(..len)
            .map(<[u8]>::to_vec)
            .ok_or(VhsmError::BadResponse("length"))
    }
}

/// The SVSM result code for a raw RAX value, as a [`VhsmError`].
pub fn svsm_error(rax: u64) -> VhsmError {
    VhsmError::Call(match ResultCode::from_raw(rax) {
        Some(code) => CallError::Svsm(code),
        None => CallError::Other(rax),
    })
}

/// A typed client.
#[derive(Debug)]
pub struct VhsmClient<T> {
    transport: T,
    next_id: u64,
    /// Encoding buffer, allocated once.
    buf: Vec<u8>,
    /// Whether the last response said the vault's persistent state changed.
    state_changed: bool,
}

impl<T: VhsmTransport> VhsmClient<T> {
    /// A client over `transport`.
    pub fn new(transport: T) -> Self {
        Self {
            transport,
            next_id: 1,
            buf: vec![0u8; MAX_REQUEST_SIZE],
            state_changed: false,
        }
    }

    /// Whether the last response said the vault's persistent state changed (the
    /// state blob the caller holds is stale: [`VhsmClient::export_state`]).
    pub fn last_changed_state(&self) -> bool {
        self.state_changed
    }

    /// The transport.
    pub fn transport(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Send `req`, check the response answers it, and return its body.
    pub fn call(&mut self, req: &Request<'_>) -> Result<Vec<u8>, VhsmError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let len = req.encode(id, &mut self.buf).map_err(VhsmError::Encode)?;
        let raw = self.transport.exchange(&self.buf[..len])?;
        let resp = Response::decode(&raw).map_err(|_| VhsmError::BadResponse("undecodable"))?;
        if resp.header.request_id.get() != id || resp.header.op.get() != req.op().raw() {
            return Err(VhsmError::BadResponse("answers another request"));
        }
        self.state_changed = resp.state_changed();
        match resp.status() {
            Some(Status::Ok) => Ok(resp.body.to_vec()),
            Some(s) => Err(VhsmError::Status(s)),
            None => Err(VhsmError::UnknownStatus(resp.header.status.get())),
        }
    }

    fn attributes_of(&mut self, req: &Request<'_>) -> Result<KeyAttributes, VhsmError> {
        let body = self.call(req)?;
        body_response(&body)
            .attributes()
            .map_err(|_| VhsmError::BadResponse("attributes"))
    }

    /// The passphrase of the LUKS volume `uuid` (canonical lowercase text form),
    /// derived inside the vault from `key` (RELEASE usage). Every copy of the
    /// response is zeroized.
    #[cfg(feature = "std")]
    pub fn release_volume_passphrase(
        &mut self,
        key: u32,
        uuid: &[u8; nitride_protocol::vhsm::LUKS_UUID_LEN],
    ) -> Result<zeroize::Zeroizing<[u8; nitride_protocol::vhsm::LUKS_PASSPHRASE_LEN]>, VhsmError>
    {
        let req = Request::ReleaseVolumePassphrase { key, uuid: *uuid };
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let len = req.encode(id, &mut self.buf).map_err(VhsmError::Encode)?;
        let raw = zeroize::Zeroizing::new(self.transport.exchange(&self.buf[..len])?);
        let resp = Response::decode(&raw).map_err(|_| VhsmError::BadResponse("undecodable"))?;
        if resp.header.request_id.get() != id || resp.header.op.get() != req.op().raw() {
            return Err(VhsmError::BadResponse("answers another request"));
        }
        self.state_changed = resp.state_changed();
        match resp.status() {
            Some(Status::Ok) => {}
            Some(s) => return Err(VhsmError::Status(s)),
            None => return Err(VhsmError::UnknownStatus(resp.header.status.get())),
        }
        let bytes = resp
            .sealed_blob()
            .map_err(|_| VhsmError::BadResponse("passphrase"))?;
        let mut out = zeroize::Zeroizing::new([0u8; nitride_protocol::vhsm::LUKS_PASSPHRASE_LEN]);
        if bytes.len() != out.len() {
            return Err(VhsmError::BadResponse("passphrase length"));
        }
        out.copy_from_slice(bytes);
        Ok(out)
    }

    /// Seal a key with RELEASE usage to this SVSM image, launch policy and chip.
    pub fn seal_key(&mut self, key: u32) -> Result<Vec<u8>, VhsmError> {
        let body = self.call(&Request::SealKey { key })?;
        body_response(&body)
            .sealed_blob()
            .map(<[u8]>::to_vec)
            .map_err(|_| VhsmError::BadResponse("sealed key"))
    }

    /// Open a SealKey blob into a new (non-persistent) key.
    pub fn unseal_key(&mut self, blob: &[u8]) -> Result<KeyAttributes, VhsmError> {
        self.attributes_of(&Request::UnsealKey { blob })
    }

    /// Generate a key.
    pub fn generate(
        &mut self,
        template: KeyTemplate,
        label: &[u8],
    ) -> Result<KeyAttributes, VhsmError> {
        self.attributes_of(&Request::Generate { template, label })
    }

    /// Import plaintext key material (only when the vault's policy allows it).
    pub fn import(
        &mut self,
        template: KeyTemplate,
        label: &[u8],
        material: &[u8],
    ) -> Result<KeyAttributes, VhsmError> {
        self.attributes_of(&Request::Import {
            template,
            label,
            material,
        })
    }

    /// Import a key wrapped (RFC 5649) under vault key `unwrapping_key`.
    pub fn unwrap_key(
        &mut self,
        unwrapping_key: u32,
        template: KeyTemplate,
        label: &[u8],
        wrapped: &[u8],
    ) -> Result<KeyAttributes, VhsmError> {
        self.attributes_of(&Request::Unwrap {
            unwrapping_key,
            template,
            label,
            wrapped,
        })
    }

    /// Wrap exportable `key` under `wrapping_key` (RFC 5649).
    pub fn wrap(&mut self, wrapping_key: u32, key: u32) -> Result<Vec<u8>, VhsmError> {
        self.call(&Request::Wrap { wrapping_key, key })
    }

    /// The public key as SPKI DER.
    pub fn public_key(&mut self, key: u32) -> Result<Vec<u8>, VhsmError> {
        self.call(&Request::GetPublicKey { key })
    }

    /// Sign `message` (ECDSA P-384/SHA-384 DER, Ed25519, or HMAC-SHA-384).
    pub fn sign(&mut self, key: u32, message: &[u8]) -> Result<Vec<u8>, VhsmError> {
        self.call(&Request::Sign { key, message })
    }

    /// Sign a caller-computed `digest` with an ECDSA key: raw `r || s`.
    pub fn sign_digest(&mut self, key: u32, digest: &[u8]) -> Result<Vec<u8>, VhsmError> {
        self.call(&Request::SignDigest { key, digest })
    }

    /// Plain RFC 5869 HKDF-SHA-384 from `parent` into a new vault key.
    pub fn hkdf_derive(
        &mut self,
        parent: u32,
        template: KeyTemplate,
        label: &[u8],
        salt: &[u8],
        info: &[u8],
    ) -> Result<KeyAttributes, VhsmError> {
        self.attributes_of(&Request::HkdfDerive {
            parent,
            template,
            label,
            salt,
            info,
        })
    }

    /// Verify `signature` over `message`.
    pub fn verify(&mut self, key: u32, message: &[u8], signature: &[u8]) -> Result<(), VhsmError> {
        self.call(&Request::Verify {
            key,
            message,
            signature,
        })
        .map(|_| ())
    }

    /// AES-256-GCM: returns nonce || ciphertext || tag.
    pub fn encrypt(
        &mut self,
        key: u32,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, VhsmError> {
        self.call(&Request::Encrypt {
            key,
            aad,
            plaintext,
        })
    }

    /// Open nonce || ciphertext || tag.
    pub fn decrypt(
        &mut self,
        key: u32,
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, VhsmError> {
        self.call(&Request::Decrypt {
            key,
            aad,
            ciphertext,
        })
    }

    /// HKDF-SHA-384 from `parent` into a new vault key.
    pub fn derive(
        &mut self,
        parent: u32,
        template: KeyTemplate,
        label: &[u8],
        salt: &[u8],
        info: &[u8],
    ) -> Result<KeyAttributes, VhsmError> {
        self.attributes_of(&Request::Derive {
            parent,
            template,
            label,
            salt,
            info,
        })
    }

    /// Random bytes from the vault's DRBG.
    pub fn random(&mut self, len: u32) -> Result<Vec<u8>, VhsmError> {
        self.call(&Request::Random { len })
    }

    /// Delete a key (its material is zeroized).
    pub fn delete(&mut self, key: u32) -> Result<(), VhsmError> {
        self.call(&Request::Delete { key }).map(|_| ())
    }

    /// The keys the caller may use.
    pub fn list(&mut self) -> Result<Vec<KeyAttributes>, VhsmError> {
        let body = self.call(&Request::List)?;
        let list = body_response(&body)
            .key_list()
            .map_err(|_| VhsmError::BadResponse("key list"))?;
        Ok(list.to_vec())
    }

    /// One key's attributes.
    pub fn attributes(&mut self, key: u32) -> Result<KeyAttributes, VhsmError> {
        self.attributes_of(&Request::GetAttributes { key })
    }

    /// AttestKey: a VMPL0 attestation report binding `key` (ATTEST usage), its
    /// attributes and the 64-byte `nonce`.
    pub fn attest_key(
        &mut self,
        key: u32,
        nonce: &nitride_protocol::attest::Nonce,
    ) -> Result<AttestedKey, VhsmError> {
        let body = self.call(&Request::AttestKey { key, nonce })?;
        let ev = body_response(&body)
            .attest_key()
            .map_err(|_| VhsmError::BadResponse("attest-key evidence"))?;
        Ok(AttestedKey {
            binding: ev.binding.to_vec(),
            report: ev.report.to_vec(),
            certificates: ev.certificates.to_vec(),
        })
    }

    /// Seal `data` for the VMPLs in `rule` (which must include the caller's): an
    /// opaque blob only this SVSM image on this chip opens.
    pub fn seal(&mut self, rule: VmplSet, data: &[u8]) -> Result<Vec<u8>, VhsmError> {
        let body = self.call(&Request::Seal {
            rule: u32::from(rule.bits()),
            data,
        })?;
        body_response(&body)
            .sealed_blob()
            .map(<[u8]>::to_vec)
            .map_err(|_| VhsmError::BadResponse("sealed blob"))
    }

    /// Open a blob from [`VhsmClient::seal`]; `resealed` is set when the blob was
    /// sealed at an older TCB (store it instead).
    pub fn unseal(&mut self, blob: &[u8]) -> Result<Unsealed, VhsmError> {
        let body = self.call(&Request::Unseal { blob })?;
        let u = body_response(&body)
            .unsealed()
            .map_err(|_| VhsmError::BadResponse("unsealed data"))?;
        Ok(Unsealed {
            data: u.data.to_vec(),
            resealed: u.resealed.map(<[u8]>::to_vec),
        })
    }

    /// The vault's persistent state as a sealed blob, with its generation.
    pub fn export_state(&mut self) -> Result<(u64, Vec<u8>), VhsmError> {
        let body = self.call(&Request::ExportState)?;
        body_response(&body)
            .exported_state()
            .map(|(g, b)| (g, b.to_vec()))
            .map_err(|_| VhsmError::BadResponse("state blob"))
    }

    /// Restore a state blob into the (empty) vault.
    pub fn import_state(&mut self, blob: &[u8]) -> Result<ImportedState, VhsmError> {
        let body = self.call(&Request::ImportState { blob })?;
        let i = body_response(&body)
            .imported_state()
            .map_err(|_| VhsmError::BadResponse("import result"))?;
        Ok(ImportedState {
            generation: i.generation,
            keys: i.keys,
            resealed: i.resealed.map(<[u8]>::to_vec),
        })
    }

    /// ProvisionBegin: open a provisioning session for the KBS challenge `nonce`.
    pub fn provision_begin(&mut self, nonce: &[u8]) -> Result<ProvisionSession, VhsmError> {
        let body = self.call(&Request::ProvisionBegin { nonce })?;
        let ev = body_response(&body)
            .provision_evidence()
            .map_err(|_| VhsmError::BadResponse("provisioning evidence"))?;
        Ok(ProvisionSession {
            runtime_data: ev.runtime_data.to_vec(),
            jwk: ev.jwk.to_vec(),
            report: ev.report.to_vec(),
            certificates: ev.certificates.to_vec(),
        })
    }

    /// ProvisionFinish: hand the KBS's JWE to the vault; returns the new key.
    pub fn provision_finish(&mut self, jwe: &[u8]) -> Result<KeyAttributes, VhsmError> {
        self.attributes_of(&Request::ProvisionFinish { jwe })
    }

    /// Agree: ECDH P-256 of key `key` with the peer SPKI `peer`, into a new key.
    pub fn agree(
        &mut self,
        key: u32,
        template: KeyTemplate,
        label: &[u8],
        peer: &[u8],
        salt: &[u8],
        info: &[u8],
    ) -> Result<KeyAttributes, VhsmError> {
        self.attributes_of(&Request::Agree {
            key,
            template,
            label,
            peer,
            salt,
            info,
        })
    }

    /// Audit entries with sequence numbers from `from_seq` on.
    pub fn audit(&mut self, from_seq: u64) -> Result<Vec<AuditEntry>, VhsmError> {
        let body = self.call(&Request::ReadAudit { from_seq })?;
        let entries = body_response(&body)
            .audit_entries()
            .map_err(|_| VhsmError::BadResponse("audit entries"))?;
        Ok(entries.to_vec())
    }
}

/// What Unseal returned, owned.
#[derive(Clone, PartialEq, Eq)]
pub struct Unsealed {
    /// The data.
    pub data: Vec<u8>,
    /// The same data sealed at the current TCB, when the blob's TCB was older.
    pub resealed: Option<Vec<u8>>,
}

impl core::fmt::Debug for Unsealed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Unsealed")
            .field("data", &"[REDACTED]")
            .field("resealed", &self.resealed.as_ref().map(Vec::len))
            .finish()
    }
}

/// What ImportState returned, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportedState {
    /// The restored state's generation.
    pub generation: u64,
    /// Keys restored.
    pub keys: u32,
    /// The state sealed at the current TCB, when the blob's TCB was older.
    pub resealed: Option<Vec<u8>>,
}

/// What ProvisionBegin returned, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionSession {
    /// The RFC 8785 runtime-data JSON the vault hashed into REPORT_DATA.
    pub runtime_data: Vec<u8>,
    /// The session key's JWK (inside the runtime data).
    pub jwk: Vec<u8>,
    /// The report.
    pub report: Vec<u8>,
    /// The certificate table.
    pub certificates: Vec<u8>,
}

/// What AttestKey returned, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttestedKey {
    /// The key binding (`attest::KeyBinding`); SHA-512 of it is the report's REPORT_DATA.
    pub binding: Vec<u8>,
    /// The attestation report.
    pub report: Vec<u8>,
    /// The certificate table (`snp::certs`), empty when the platform has none.
    pub certificates: Vec<u8>,
}

/// A response carrying `body`, to reuse [`Response`]'s body decoders.
fn body_response(body: &[u8]) -> Response<'_> {
    Response {
        header: nitride_protocol::vhsm::response_header(Op::List.raw(), 0, Status::Ok, 0),
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nitride_protocol::vhsm::{response_header, KeyType, KeyUsage, VmplSet};
    use zerocopy::IntoBytes;

    /// Answers every request with a scripted status and body, echoing id and op,
    /// or tampering with them.
    struct Echo {
        status: Status,
        body: Vec<u8>,
        tamper_id: bool,
    }

    impl VhsmTransport for Echo {
        fn exchange(&mut self, request: &[u8]) -> Result<Vec<u8>, VhsmError> {
            let (h, _) = Request::decode(request).map_err(|_| VhsmError::BadResponse("test"))?;
            let id = h.request_id.get() + u64::from(self.tamper_id);
            let mut out = response_header(h.op.get(), id, self.status, self.body.len() as u32)
                .as_bytes()
                .to_vec();
            out.extend_from_slice(&self.body);
            Ok(out)
        }
    }

    #[test]
    fn ok_bodies_and_errors_are_typed() {
        let mut c = VhsmClient::new(Echo {
            status: Status::Ok,
            body: vec![7; 16],
            tamper_id: false,
        });
        assert_eq!(c.random(16), Ok(vec![7; 16]));
        c.transport().status = Status::AccessDenied;
        // An error with a body is no response the vault writes.
        assert!(matches!(c.sign(1, b"m"), Err(VhsmError::BadResponse(_))));
        c.transport().body.clear();
        assert_eq!(
            c.sign(1, b"m"),
            Err(VhsmError::Status(Status::AccessDenied))
        );
        c.transport().body = vec![7; 16];
        c.transport().status = Status::Ok;
        c.transport().tamper_id = true;
        assert_eq!(
            c.random(16),
            Err(VhsmError::BadResponse("answers another request"))
        );
        c.transport().tamper_id = false;
        c.transport().body = vec![1, 2, 3];
        let t = KeyTemplate::new(KeyType::EcdsaP384, KeyUsage::SIGN, VmplSet::all(), false);
        assert_eq!(
            c.generate(t, b"x"),
            Err(VhsmError::BadResponse("attributes"))
        );
        // AttestKey: three length-prefixed byte strings.
        let mut body = Vec::new();
        for part in [&b"bind"[..], &[7u8; 0x4A0][..], &b""[..]] {
            body.extend_from_slice(&(part.len() as u32).to_le_bytes());
            body.extend_from_slice(part);
        }
        c.transport().body = body;
        let got = c.attest_key(3, &[9; 64]).unwrap();
        assert_eq!(got.binding, b"bind");
        assert_eq!(got.report, vec![7u8; 0x4A0]);
        assert!(got.certificates.is_empty());
        c.transport().body = vec![1, 0, 0];
        assert_eq!(
            c.attest_key(3, &[9; 64]),
            Err(VhsmError::BadResponse("attest-key evidence"))
        );
    }
}
