//! The host's reading of attestation answers: `attest::decode_result` (the result
//! registers of protocol 1, also used by the guest-side client and the relay guest),
//! `relay::AttestCall::decode`, and `RelayClient::attest` reading the relay's attest
//! answer frames (`relay::AttestResultHead` + report, manifest, certificates) from a
//! socket whose contents the fuzzer chooses, including the retry with larger buffers.
//!
//! Properties:
//! - `decode_result` is SUCCESS with every length within what was offered, or
//!   BuffersTooSmall exactly for INVALID_PARAMETER with a needed size above an offered
//!   one, or BadLengths exactly for SUCCESS with a length too large;
//! - evidence from `RelayClient::attest` never exceeds the relay's buffers nor (without
//!   a retry) the sizes offered, and has no certificates when none were asked for;
//! - the attest frames' heads round-trip through their byte layout.
//!
//! Input: flags (1 byte), report/manifest/certificate sizes offered (3 x u16 LE),
//! registers for `decode_result` (4 x u64 LE), then the bytes the relay "sends".
#![no_main]

use std::io::Write;
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use libfuzzer_sys::fuzz_target;
use nitride_guest_driver::attest::{decode_result, AttestError, AttestSizes, Target};
use nitride_guest_driver::relay::{AttestCall, AttestParams, RelayClient};
use nitride_protocol::attest::VHSM_SERVICE_GUID;
use nitride_protocol::relay::{
    AttestHead, AttestResultHead, ATTEST_CERT_BUFFER_SIZE, ATTEST_MANIFEST_BUFFER_SIZE,
    ATTEST_REPORT_BUFFER_SIZE,
};
use nitride_protocol::svsm::ResultCode;
use zerocopy::{FromBytes, IntoBytes};

fn check_decode(rax: u64, rcx: u64, rdx: u64, r8: u64, offered: AttestSizes) {
    let fits = rcx <= offered.manifest && rdx <= offered.certificates && r8 <= offered.report;
    let code = ResultCode::from_raw(rax);
    match decode_result(rax, rcx, rdx, r8, offered) {
        Ok(s) => {
            assert_eq!(code, Some(ResultCode::Success));
            assert!(fits);
            assert_eq!((s.manifest, s.certificates, s.report), (rcx, rdx, r8));
        }
        Err(AttestError::BuffersTooSmall { .. }) => {
            assert_eq!(code, Some(ResultCode::InvalidParameter));
            assert!(!fits);
        }
        Err(AttestError::BadLengths { .. }) => {
            assert_eq!(code, Some(ResultCode::Success));
            assert!(!fits);
        }
        Err(_) => assert_ne!(code, Some(ResultCode::Success)),
    }
}

fn u16_at(b: &[u8], i: usize) -> u32 {
    u32::from(u16::from_le_bytes([b[i], b[i + 1]]))
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
}

fuzz_target!(|data: &[u8]| {
    const HEAD: usize = 1 + 6 + 32;
    if data.len() < HEAD || data.len() > 100_000 {
        return;
    }
    let (head, stream) = data.split_at(HEAD);
    let flags = head[0];
    let nonce = [0x5Au8; 64];
    let target = if flags & 1 == 0 {
        Target::Services
    } else {
        Target::SingleService {
            guid: VHSM_SERVICE_GUID,
            manifest_version: 0,
        }
    };
    let params = AttestParams {
        target,
        nonce: &nonce,
        want_certificates: flags & 2 != 0,
        report_size: u16_at(head, 1),
        manifest_size: u16_at(head, 3),
        cert_size: u16_at(head, 5),
    };
    let offered = AttestSizes {
        manifest: u64::from(params.manifest_size),
        certificates: u64::from(params.cert_size),
        report: u64::from(params.report_size),
    };
    let (rax, rcx, rdx, r8) = (
        u64_at(head, 7),
        u64_at(head, 15),
        u64_at(head, 23),
        u64_at(head, 31),
    );
    check_decode(rax, rcx, rdx, r8, offered);
    // AttestCall::decode offers at most the relay's buffers.
    let call = AttestCall {
        rax,
        rcx,
        rdx,
        r8,
        report: Vec::new(),
        manifest: Vec::new(),
        certificates: Vec::new(),
    };
    if let Ok(s) = call.decode(&params) {
        assert!(s.report <= ATTEST_REPORT_BUFFER_SIZE as u64 && s.report <= offered.report);
        assert!(s.manifest <= ATTEST_MANIFEST_BUFFER_SIZE as u64 && s.manifest <= offered.manifest);
        assert!(s.certificates <= ATTEST_CERT_BUFFER_SIZE as u64);
        assert!(params.want_certificates || s.certificates == 0);
    }

    // The frame heads' layouts.
    if let Ok(h) = AttestHead::read_from_bytes(&stream[..stream.len().min(41)]) {
        assert_eq!(h.as_bytes(), &stream[..41]);
    }
    if let Ok((r, _)) = AttestResultHead::read_from_prefix(stream) {
        assert_eq!(r.as_bytes(), &stream[..16]);
    }

    // The relay's answers, over a real socket.
    let (ours, mut relay) = UnixStream::pair().expect("socketpair");
    relay.write_all(stream).expect("prefill");
    // EOF after the answers; the relay end stays open for reading so our requests
    // do not raise SIGPIPE.
    relay.shutdown(Shutdown::Write).expect("shutdown");
    let mut client = RelayClient::from_stream(ours).expect("client");
    if let Ok(ev) = client.attest(&params) {
        assert!(ev.report.len() <= ATTEST_REPORT_BUFFER_SIZE);
        assert!(ev.manifest.len() <= ATTEST_MANIFEST_BUFFER_SIZE);
        assert!(ev.certificates.len() <= ATTEST_CERT_BUFFER_SIZE);
        if !ev.retried {
            assert!(ev.report.len() as u64 <= offered.report);
            assert!(ev.manifest.len() as u64 <= offered.manifest);
        }
        if !params.want_certificates {
            assert!(ev.certificates.is_empty());
        }
    }
    drop(relay);
});
