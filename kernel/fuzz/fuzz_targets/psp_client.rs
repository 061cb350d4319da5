//! The SVSM's PSP guest-message client (`nitride_kernel::psp::PspClient`) against a
//! channel whose behaviour the fuzzer scripts: transport errors (BUSY, certificate
//! buffer too small, firmware and hypervisor errors), raw response pages, and
//! responses correctly sealed under the VMPCK but with fuzzer-chosen header edits,
//! bodies, tag corruption and certificate tables.
//!
//! Properties:
//! - never a panic;
//! - a failure that leaves the sequence numbers unknown (BUSY for too long, a
//!   transport error, a response that does not check out, exhausted sequence
//!   numbers) disables the client; after that every call returns `Disabled` without
//!   touching the channel;
//! - failures inside an authenticated response (status, malformed body, too many
//!   certificate pages) leave the client usable;
//! - GCM never sees an IV twice: every request page the channel sees authenticates
//!   under the VMPCK, and one sequence number is only ever sent with one page;
//! - successful results are well-formed (a 0x4A0-byte report, a certificate table
//!   that walks cleanly).
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use nitride_kernel::psp::{
    ChannelError, PspChannel, PspClient, PspError, HEADER_SIZE, MAX_PAYLOAD, PSP_PAGE,
};
use nitride_kernel_fuzz::{open, seal, Script};
use nitride_protocol::snp::certs;
use nitride_protocol::snp::msg::{msg_type, KeyReq, KeyRsp, MsgHeader, ReportRsp};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, IntoBytes};
use zeroize::Zeroizing;

const VMPCK: [u8; 32] = [0x70; 32];

/// Check a request page: it authenticates under the VMPCK; returns its header.
fn open_request(page: &[u8; PSP_PAGE]) -> MsgHeader {
    let header = MsgHeader::read_from_bytes(&page[..HEADER_SIZE]).expect("header");
    let len = usize::from(header.msg_sz.get());
    assert!(len <= MAX_PAYLOAD, "request msg_sz {len}");
    open(&VMPCK, page)
        .expect("every request authenticates under the VMPCK")
        .0
}

struct FuzzChannel<'a> {
    script: Script<'a>,
    calls: usize,
    /// Every sequence number sent, with the page that carried it.
    sent: HashMap<u64, Box<[u8; PSP_PAGE]>>,
}

impl PspChannel for FuzzChannel<'_> {
    fn guest_request(
        &mut self,
        request: &[u8; PSP_PAGE],
        response: &mut [u8; PSP_PAGE],
        certificates: Option<&mut [u8]>,
    ) -> Result<(), ChannelError> {
        self.calls += 1;
        let req = open_request(request);
        let seqno = req.msg_seqno.get();
        match self.sent.get(&seqno) {
            Some(page) => assert!(
                page[..] == request[..],
                "IV reuse: seqno {seqno} with a new page"
            ),
            None => {
                self.sent.insert(seqno, Box::new(*request));
            }
        }
        let s = &mut self.script;
        match s.byte() % 8 {
            0 => Err(ChannelError::Busy),
            1 => Err(ChannelError::CertificatesTooSmall {
                pages: u32::from(s.byte()),
            }),
            2 => Err(ChannelError::Firmware(s.u32())),
            3 => Err(ChannelError::Hypervisor(s.u32())),
            4 => {
                // A raw response page.
                let raw = s.bytes(PSP_PAGE);
                response.fill(0);
                response[..raw.len()].copy_from_slice(raw);
                Ok(())
            }
            _ => {
                // A sealed response, possibly with edits.
                let edits = s.byte();
                let body_kind = s.byte();
                let mut body = match req.msg_type {
                    msg_type::REPORT_REQ => {
                        let mut rsp = ReportRsp::new_zeroed();
                        rsp.status = U32::new(if body_kind & 1 == 0 { 0 } else { s.u32() });
                        rsp.report_size =
                            U32::new(if body_kind & 2 == 0 { 0x4A0 } else { s.u32() });
                        rsp.as_bytes().to_vec()
                    }
                    _ => {
                        let mut rsp = KeyRsp::new_zeroed();
                        rsp.status = U32::new(if body_kind & 1 == 0 { 0 } else { s.u32() });
                        rsp.derived_key.copy_from_slice(&[0xD5; 32]);
                        rsp.as_bytes().to_vec()
                    }
                };
                if body_kind & 4 != 0 {
                    // A body of another length.
                    let n = (s.u32() as usize) % (MAX_PAYLOAD + 1);
                    body.resize(n, 0);
                }
                let mut h = MsgHeader {
                    msg_seqno: U64::new(seqno.wrapping_add(1)),
                    msg_type: req.msg_type.wrapping_add(1),
                    msg_sz: U16::new(body.len() as u16),
                    ..req
                };
                if edits & 1 != 0 {
                    h.msg_seqno = U64::new(u64::from(s.u32()));
                }
                if edits & 2 != 0 {
                    h.msg_type = s.byte();
                }
                if edits & 4 != 0 {
                    h.msg_vmpck = s.byte();
                }
                if edits & 8 != 0 {
                    h.msg_version = s.byte();
                }
                if edits & 16 != 0 {
                    h.algo = s.byte();
                    h.hdr_version = s.byte();
                    h.hdr_sz = U16::new(u16::from(s.byte()));
                }
                if edits & 32 != 0 {
                    h.msg_sz = U16::new(s.u32() as u16);
                }
                seal(&VMPCK, &mut h, &body, response);
                if edits & 64 != 0 {
                    let i = usize::from(s.byte()) % PSP_PAGE;
                    response[i] ^= 1 | s.byte();
                }
                if let Some(buf) = certificates {
                    if edits & 128 != 0 {
                        let raw = s.bytes(buf.len());
                        buf.fill(0);
                        buf[..raw.len()].copy_from_slice(raw);
                    } else {
                        buf.fill(0);
                        // VCEK, ASK, ARK of 8 bytes each, then the terminator.
                        let mut at = 4 * certs::ENTRY_SIZE;
                        for (i, g) in [certs::GUID_VCEK, certs::GUID_ASK, certs::GUID_ARK]
                            .into_iter()
                            .enumerate()
                        {
                            let e = certs::CertTableEntry {
                                guid: g,
                                offset: U32::new(at as u32),
                                length: U32::new(8),
                            };
                            buf[i * certs::ENTRY_SIZE..(i + 1) * certs::ENTRY_SIZE]
                                .copy_from_slice(e.as_bytes());
                            buf[at..at + 8].fill(0xA1 + i as u8);
                            at += 8;
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

fn shuts(e: &PspError) -> bool {
    matches!(
        e,
        PspError::Busy
            | PspError::Channel(_)
            | PspError::BadResponse(_)
            | PspError::SequenceExhausted
    )
}

fuzz_target!(|data: &[u8]| {
    let Some((&setup, rest)) = data.split_first() else {
        return;
    };
    // The operations come from the front, the channel's script from the rest.
    let ops_len = usize::from(setup & 0x0F) + 1;
    let (ops, script) = rest.split_at(ops_len.min(rest.len()));
    let channel = FuzzChannel {
        script: Script(script),
        calls: 0,
        sent: HashMap::new(),
    };
    let mut client = PspClient::new(channel, Zeroizing::new(VMPCK), (setup >> 4) & 3)
        .with_cert_pages(u32::from(setup >> 6) + 1);
    for &op in ops {
        let was_disabled = client.is_disabled();
        let calls = client.channel().calls;
        let result: Result<(), PspError> = match op % 3 {
            0 => client.report(&[op; 64], 0, false).map(|ev| {
                assert_eq!(ev.report.len(), 0x4A0);
                assert!(ev.certificates.is_empty());
            }),
            1 => client.report(&[op; 64], 0, true).map(|ev| {
                assert_eq!(ev.report.len(), 0x4A0);
                // Empty when the table has no entries; else it walks cleanly.
                if !ev.certificates.is_empty() {
                    for entry in certs::entries(&ev.certificates) {
                        entry.expect("a returned table walks cleanly");
                    }
                }
            }),
            _ => {
                let mut req = KeyReq::new_zeroed();
                req.guest_field_select = U64::new(u64::from(op));
                client.derive_key(&req).map(|k| assert_eq!(k.len(), 32))
            }
        };
        if was_disabled {
            assert_eq!(result, Err(PspError::Disabled));
            assert_eq!(
                client.channel().calls,
                calls,
                "a disabled client used the channel"
            );
            continue;
        }
        match &result {
            Ok(()) => assert!(!client.is_disabled()),
            Err(PspError::Disabled) => panic!("Disabled from an enabled client"),
            Err(e) if shuts(e) => assert!(client.is_disabled(), "{e:?} left the client usable"),
            Err(e) => assert!(!client.is_disabled(), "{e:?} disabled the client"),
        }
        if client.channel().script.is_empty() && client.is_disabled() {
            break;
        }
    }
});
