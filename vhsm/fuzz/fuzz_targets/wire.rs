//! Fuzz the vHSM wire decoders alone (`nitride_protocol::vhsm`), fast enough for tens
//! of millions of executions: the request decoder the SVSM runs on guest bytes, and
//! the response decoders a client runs on what the relay hands it. Checked:
//! - a request that decodes encodes back to exactly the input (one encoding per
//!   request: nothing unreferenced, no second form);
//! - a response that decodes is exactly its header and body; its typed bodies
//!   (attributes, key list, audit entries, AttestKey evidence, the sealing
//!   operations' bodies) account for every
//!   body byte when they decode;
//! - nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nitride_protocol::vhsm::{Request, Response, Status, HEADER_SIZE, MAX_REQUEST_SIZE};
use zerocopy::IntoBytes;

fuzz_target!(|data: &[u8]| {
    if let Ok((header, request)) = Request::decode(data) {
        let mut out = vec![0u8; MAX_REQUEST_SIZE];
        let n = request
            .encode(header.request_id.get(), &mut out)
            .expect("a decoded request encodes");
        assert_eq!(&out[..n], data, "request not canonical: {request:?}");
        assert_eq!(request.op().raw(), header.op.get());
    }
    if let Ok(response) = Response::decode(data) {
        assert_eq!(response.header.as_bytes(), &data[..HEADER_SIZE]);
        assert_eq!(response.body, &data[HEADER_SIZE..]);
        if response.status() != Some(Status::Ok) {
            assert!(response.body.is_empty());
        }
        let body = response.body.len();
        if let Ok(a) = response.attributes() {
            assert_eq!(a.as_bytes(), response.body);
        }
        if let Ok(keys) = response.key_list() {
            assert_eq!(4 + keys.as_bytes().len(), body);
        }
        if let Ok(entries) = response.audit_entries() {
            assert_eq!(4 + entries.as_bytes().len(), body);
        }
        if let Ok(e) = response.attest_key() {
            assert_eq!(
                12 + e.binding.len() + e.report.len() + e.certificates.len(),
                body
            );
        }
        if let Ok(blob) = response.sealed_blob() {
            assert_eq!(4 + blob.len(), body);
        }
        if let Ok(u) = response.unsealed() {
            assert_eq!(12 + u.data.len() + u.resealed.map_or(0, <[u8]>::len), body);
        }
        if let Ok((_, blob)) = response.exported_state() {
            assert_eq!(12 + blob.len(), body);
        }
        if let Ok(i) = response.imported_state() {
            assert_eq!(20 + i.resealed.map_or(0, <[u8]>::len), body);
        }
    }
});
