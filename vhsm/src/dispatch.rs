//! The request dispatcher: wire bytes in, wire bytes out.
//!
//! [`Vault::handle`] decodes a request ([`Request::decode`]), runs the typed operation,
//! records one audit entry and encodes the response. Any malformed input yields a
//! response with an error status and an empty body; nothing here can panic (checked
//! arithmetic, `get()` slicing, no `unwrap`), which the `dispatch` fuzz target checks.

use alloc::vec::Vec;

use nitride_protocol::vhsm::{
    response_header, AuditEntry, KeyAttributes, Op, Request, Status, AUDIT_CAPACITY, GCM_NONCE_LEN,
    GCM_TAG_LEN, HEADER_SIZE, KEY_CAPACITY, MAX_DATA_LEN, MAX_RANDOM_LEN, MAX_RESPONSE_SIZE,
    RESPONSE_STATE_CHANGED, SEAL_RESEALED,
};
use zerocopy::little_endian::U16;
use zerocopy::IntoBytes;

use crate::vault::{KeyInfo, KeySpec, Vault};
use crate::{Attester, Caller, Error, NoAttester, Platform};

// Every successful response fits in MAX_RESPONSE_SIZE, so a response is never cut
// after the vault changed.
const _: () =
    assert!(HEADER_SIZE + GCM_NONCE_LEN + MAX_DATA_LEN + GCM_TAG_LEN <= MAX_RESPONSE_SIZE);
const _: () = assert!(HEADER_SIZE + MAX_RANDOM_LEN <= MAX_RESPONSE_SIZE);
const _: () =
    assert!(HEADER_SIZE + 4 + KEY_CAPACITY * size_of::<KeyAttributes>() <= MAX_RESPONSE_SIZE);
const _: () =
    assert!(HEADER_SIZE + 4 + AUDIT_CAPACITY * size_of::<AuditEntry>() <= MAX_RESPONSE_SIZE);

/// Outcome of one operation: the key id for the audit entry, and the result.
type Outcome = (u32, Result<(), Error>);

impl<P: Platform> Vault<P> {
    /// Serve one request from `caller` and return the encoded response.
    ///
    /// The response echoes the request's operation and id (zeros if the header was
    /// unreadable); its body is empty unless the status is [`Status::Ok`].
    ///
    /// No attestation is available here: AttestKey fails with
    /// [`Status::AttestationUnavailable`]. See [`Vault::handle_with`].
    pub fn handle(&mut self, caller: Caller, request: &[u8]) -> Vec<u8> {
        self.handle_with(caller, request, &mut NoAttester)
    }

    /// [`Vault::handle`], with `attester` producing the reports AttestKey returns.
    /// The kernel passes one per request, so the vault never holds the platform.
    pub fn handle_with(
        &mut self,
        caller: Caller,
        request: &[u8],
        attester: &mut dyn Attester,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_SIZE + 64);
        out.resize(HEADER_SIZE, 0);
        let (op, request_id) = peek_header(request);
        let changes = self.state_changes();
        let (key_id, status) = match Request::decode(request) {
            Err(e) => (0, e.status()),
            Ok((_, req)) => match self.execute(caller, &req, attester, &mut out) {
                (key_id, Ok(())) if out.len() <= MAX_RESPONSE_SIZE => (key_id, Status::Ok),
                (key_id, Ok(())) => (key_id, Status::TooLarge),
                (key_id, Err(e)) => (key_id, e.status()),
            },
        };
        if status != Status::Ok {
            out.truncate(HEADER_SIZE);
        }
        self.audit.record(op, key_id, caller.vmpl(), status);
        let body_len = u32::try_from(out.len().saturating_sub(HEADER_SIZE)).unwrap_or(0);
        let mut header = response_header(op, request_id, status, body_len);
        if self.state_changes() != changes && op != Op::ImportState.raw() {
            header.flags = U16::new(RESPONSE_STATE_CHANGED);
        }
        if let Some(dst) = out.get_mut(..HEADER_SIZE) {
            dst.copy_from_slice(header.as_bytes());
        }
        out
    }

    /// Run a decoded request, appending the response body to `out`.
    fn execute(
        &mut self,
        caller: Caller,
        req: &Request<'_>,
        attester: &mut dyn Attester,
        out: &mut Vec<u8>,
    ) -> Outcome {
        match *req {
            Request::Generate { template, label } => created(
                0,
                KeySpec::from_wire(&template, label).and_then(|spec| self.generate(caller, &spec)),
                out,
            ),
            Request::Import {
                template,
                label,
                material,
            } => created(
                0,
                KeySpec::from_wire(&template, label)
                    .and_then(|spec| self.import(caller, &spec, material)),
                out,
            ),
            Request::Unwrap {
                unwrapping_key,
                template,
                label,
                wrapped,
            } => created(
                unwrapping_key,
                KeySpec::from_wire(&template, label)
                    .and_then(|spec| self.unwrap_key(caller, unwrapping_key, &spec, wrapped)),
                out,
            ),
            Request::Derive {
                parent,
                template,
                label,
                salt,
                info,
            } => created(
                parent,
                KeySpec::from_wire(&template, label)
                    .and_then(|spec| self.derive(caller, parent, &spec, salt, info)),
                out,
            ),
            Request::Wrap { wrapping_key, key } => {
                (key, self.wrap_key(caller, wrapping_key, key, out))
            }
            Request::GetPublicKey { key } => (key, self.public_key(caller, key, out)),
            Request::Sign { key, message } => (key, self.sign(caller, key, message, out)),
            Request::Verify {
                key,
                message,
                signature,
            } => (key, self.verify(caller, key, message, signature)),
            Request::Encrypt {
                key,
                aad,
                plaintext,
            } => (key, self.encrypt(caller, key, aad, plaintext, out)),
            Request::Decrypt {
                key,
                aad,
                ciphertext,
            } => (key, self.decrypt(caller, key, aad, ciphertext, out)),
            Request::Random { len } => (
                0,
                usize::try_from(len)
                    .map_err(|_| Error::InvalidParameter)
                    .and_then(|n| self.random(n, out)),
            ),
            Request::Delete { key } => (key, self.delete(caller, key)),
            Request::GetAttributes { key } => (
                key,
                self.attributes(caller, key)
                    .map(|info| out.extend_from_slice(info.to_wire().as_bytes())),
            ),
            Request::List => {
                let keys: Vec<KeyAttributes> = self.list(caller).map(KeyInfo::to_wire).collect();
                (0, put_counted(out, &keys))
            }
            Request::ReadAudit { from_seq } => {
                let entries: Vec<_> = self
                    .audit
                    .visible_since(caller, from_seq)
                    .copied()
                    .collect();
                (0, put_counted(out, &entries))
            }
            Request::AttestKey { key, nonce } => {
                (key, self.attest_key(caller, key, nonce, attester, out))
            }
            Request::Seal { rule, data } => (
                0,
                self.seal(caller, rule, data, attester)
                    .and_then(|blob| put_bytes(out, &blob)),
            ),
            Request::Unseal { blob } => (
                0,
                self.unseal(caller, blob, attester).and_then(|u| {
                    let flags = if u.resealed.is_some() {
                        SEAL_RESEALED
                    } else {
                        0
                    };
                    out.extend_from_slice(&flags.to_le_bytes());
                    put_bytes(out, &u.data)?;
                    put_bytes(out, u.resealed.as_deref().unwrap_or_default())
                }),
            ),
            Request::ExportState => (
                0,
                self.export_state(attester).and_then(|(generation, blob)| {
                    out.extend_from_slice(&generation.to_le_bytes());
                    put_bytes(out, &blob)
                }),
            ),
            Request::ImportState { blob } => (
                0,
                self.import_state(blob, attester).and_then(|i| {
                    let flags = if i.resealed.is_some() {
                        SEAL_RESEALED
                    } else {
                        0
                    };
                    out.extend_from_slice(&i.generation.to_le_bytes());
                    out.extend_from_slice(&i.keys.to_le_bytes());
                    out.extend_from_slice(&flags.to_le_bytes());
                    put_bytes(out, i.resealed.as_deref().unwrap_or_default())
                }),
            ),
            Request::SignDigest { key, digest } => {
                (key, self.sign_digest(caller, key, digest, out))
            }
            Request::HkdfDerive {
                parent,
                template,
                label,
                salt,
                info,
            } => created(
                parent,
                KeySpec::from_wire(&template, label)
                    .and_then(|spec| self.hkdf_derive(caller, parent, &spec, salt, info)),
                out,
            ),
            Request::ReleaseVolumePassphrase { key, uuid } => (
                key,
                self.release_volume_passphrase(caller, key, &uuid)
                    .and_then(|p| put_bytes(out, &p[..])),
            ),
            Request::SealKey { key } => (
                key,
                self.seal_key(caller, key, attester)
                    .and_then(|blob| put_bytes(out, &blob)),
            ),
            Request::UnsealKey { blob } => created(0, self.unseal_key(caller, blob, attester), out),
            Request::ProvisionBegin { nonce } => (0, self.provision_begin(nonce, attester, out)),
            Request::ProvisionFinish { jwe } => created(0, self.provision_finish(jwe), out),
            Request::Agree {
                key,
                template,
                label,
                peer,
                salt,
                info,
            } => created(
                key,
                KeySpec::from_wire(&template, label)
                    .and_then(|spec| self.agree(caller, key, &spec, peer, salt, info)),
                out,
            ),
        }
    }
}

/// The outcome of a key-creating operation: the new key's attributes as the body, and
/// its id in the audit entry (the parent or unwrapping key's id if it failed).
fn created(request_key: u32, result: Result<KeyInfo, Error>, out: &mut Vec<u8>) -> Outcome {
    match result {
        Ok(info) => {
            out.extend_from_slice(info.to_wire().as_bytes());
            (info.id, Ok(()))
        }
        Err(e) => (request_key, Err(e)),
    }
}

/// Append a length-prefixed byte string.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), Error> {
    let len = u32::try_from(bytes.len()).map_err(|_| Error::TooLarge)?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// Append `u32 count` and the records.
fn put_counted<T: IntoBytes + zerocopy::Immutable>(
    out: &mut Vec<u8>,
    items: &[T],
) -> Result<(), Error> {
    let count = u32::try_from(items.len()).map_err(|_| Error::TooLarge)?;
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(items.as_bytes());
    Ok(())
}

/// The operation and request id of a request, read without validation (for the
/// response header and audit entry of a request that fails to decode).
fn peek_header(request: &[u8]) -> (u16, u64) {
    let op = request
        .get(2..4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u16::from_le_bytes);
    let id = request
        .get(8..16)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes);
    (op, id)
}
