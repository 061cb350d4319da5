//! The emulated PSP (`nitride_emulated_psp`, the virtual SNP machine's PSP): `DevPspConfig::parse` on
//! arbitrary dev-PSP blobs, and `EmulatedPsp::handle` fed arbitrary request pages
//! (raw, or sealed under one of its VMPCKs with fuzzer-chosen header fields, body
//! and tag corruption) with arbitrary certificate buffers.
//!
//! Properties:
//! - never a panic;
//! - a blob that parses has a valid header, a table of exactly the declared length
//!   that walks cleanly, and `cert_table()` is that table;
//! - the PSP answers only a message whose tag verifies under the VMPCK it names and
//!   whose sequence number is the one expected; the answer authenticates under that
//!   VMPCK with sequence number + 1 and type + 1, and the expected number moves by 2;
//! - a refused message moves no sequence number;
//! - an extended request gets the certificate table (or the pages it needs).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nitride_emulated_psp::{DevPspConfig, EmulatedPsp, LaunchInfo, RequestError};
use nitride_kernel::psp::{HEADER_SIZE, PSP_PAGE};
use nitride_kernel_fuzz::{open, seal, Script};
use nitride_protocol::emulated::dev_psp::{self, BlobHeader};
use nitride_protocol::snp::certs;
use nitride_protocol::snp::msg::{
    msg_type, KeyReq, MsgHeader, ReportReq, AEAD_AES_256_GCM, HDR_VERSION,
};
use zerocopy::byteorder::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, IntoBytes};
use zeroize::Zeroizing;

fn vmpck(n: usize) -> [u8; 32] {
    [0x70 + n as u8; 32]
}

fn cert_table() -> Vec<u8> {
    let mut t = vec![0u8; 4 * certs::ENTRY_SIZE + 3 * 8];
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
        t[i * certs::ENTRY_SIZE..(i + 1) * certs::ENTRY_SIZE].copy_from_slice(e.as_bytes());
        t[at..at + 8].fill(0xA1 + i as u8);
        at += 8;
    }
    t
}

fn blob() -> &'static [u8] {
    static BLOB: OnceLock<Vec<u8>> = OnceLock::new();
    BLOB.get_or_init(|| {
        let table = cert_table();
        let header = BlobHeader {
            magic: dev_psp::MAGIC,
            vcek_scalar: [0x11; 48],
            chip_secret: [0xC5; 32],
            cert_table_len: U32::new(table.len() as u32),
            launch_flags: U32::new(0),
            tcb_version: U64::new(dev_psp::TCB_VERSION),
        };
        let mut b = header.as_bytes().to_vec();
        b.extend_from_slice(&table);
        b
    })
}

fn check_blob(b: &[u8]) {
    let Ok(config) = DevPspConfig::parse(b) else {
        return;
    };
    let (header, table) = BlobHeader::ref_from_prefix(b).expect("a parsed blob has a header");
    assert_eq!(header.magic, dev_psp::MAGIC);
    assert_eq!(header.launch_flags.get() & !dev_psp::LAUNCH_DEBUG, 0);
    assert_eq!(header.cert_table_len.get() as usize, table.len());
    assert!(table.len() <= dev_psp::MAX_CERT_TABLE);
    assert_eq!(config.cert_table(), table);
    for e in certs::entries(table) {
        e.expect("a parsed blob's table walks cleanly");
    }
    let _ = config.vcek_public();
}

/// Whether `page` authenticates under VMPCK `n`.
fn authentic(page: &[u8; PSP_PAGE], n: usize) -> Option<(MsgHeader, Vec<u8>)> {
    open(&vmpck(n), page)
}

fn request_page(psp: &EmulatedPsp, s: &mut Script<'_>) -> Box<[u8; PSP_PAGE]> {
    let mut page = Box::new([0u8; PSP_PAGE]);
    let kind = s.byte();
    if kind & 1 == 1 {
        let raw = s.bytes(PSP_PAGE);
        page[..raw.len()].copy_from_slice(raw);
        return page;
    }
    let vmpck_n = usize::from(s.byte() & 3);
    let ty = if kind & 2 == 0 {
        msg_type::REPORT_REQ
    } else {
        msg_type::KEY_REQ
    };
    let body: Vec<u8> = if ty == msg_type::REPORT_REQ {
        let mut r = ReportReq::new_zeroed();
        r.user_data = [s.byte(); 64];
        r.vmpl = U32::new(u32::from(s.byte() % 5));
        r.key_sel = U32::new(u32::from(s.byte()));
        r.as_bytes().to_vec()
    } else {
        let mut k = KeyReq::new_zeroed();
        k.root_key_select = U32::new(u32::from(s.byte() & 1));
        k.guest_field_select = U64::new(u64::from(s.byte()));
        k.vmpl = U32::new(u32::from(s.byte() % 5));
        k.guest_svn = U32::new(s.u32());
        k.tcb_version = U64::new(u64::from(s.u32()));
        k.as_bytes().to_vec()
    };
    let mut h = MsgHeader {
        msg_seqno: U64::new(psp.expected_seqno(vmpck_n)),
        algo: AEAD_AES_256_GCM,
        hdr_version: HDR_VERSION,
        hdr_sz: U16::new(HEADER_SIZE as u16),
        msg_type: ty,
        msg_version: 1,
        msg_sz: U16::new(body.len() as u16),
        msg_vmpck: vmpck_n as u8,
        ..MsgHeader::new_zeroed()
    };
    let edits = if kind & 4 != 0 { s.byte() } else { 0 };
    if edits & 1 != 0 {
        h.msg_seqno = U64::new(u64::from(s.u32()) | (u64::from(s.byte()) << 56));
    }
    if edits & 2 != 0 {
        h.msg_type = s.byte();
    }
    if edits & 4 != 0 {
        h.msg_vmpck = s.byte();
    }
    if edits & 8 != 0 {
        h.msg_version = s.byte();
        h.algo = s.byte();
        h.hdr_version = s.byte();
    }
    if edits & 16 != 0 {
        h.msg_sz = U16::new(s.u32() as u16);
    }
    let key = if edits & 32 != 0 {
        vmpck(usize::from(s.byte() & 3))
    } else {
        vmpck(vmpck_n)
    };
    seal(&key, &mut h, &body, &mut page);
    if edits & 64 != 0 {
        let i = usize::from(s.byte()) % PSP_PAGE;
        page[i] ^= 1 | s.byte();
    }
    page
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 1 {
        check_blob(rest);
        return;
    }
    let config = DevPspConfig::parse(blob()).expect("fixture blob");
    let launch = LaunchInfo {
        measurement: [0x4D; 48],
        host_data: [0x48; 32],
        report_id: [0x52; 32],
    };
    let mut psp = EmulatedPsp::new(
        config,
        launch,
        core::array::from_fn(|n| Zeroizing::new(vmpck(n))),
    );
    let table_len = cert_table().len();
    let mut s = Script(rest);
    for _ in 0..8 {
        if s.0.is_empty() {
            break;
        }
        let request = request_page(&psp, &mut s);
        let cert_len = match s.byte() {
            0..=127 => None,
            b => Some(usize::from(b - 128) * 2),
        };
        let mut certs_buf = cert_len.map(|n| vec![0xEEu8; n]);
        let before: Vec<u64> = (0..4).map(|n| psp.expected_seqno(n)).collect();
        let mut response = Box::new([0u8; PSP_PAGE]);
        let result = psp.handle(&request, &mut response, certs_buf.as_deref_mut());
        let header = MsgHeader::read_from_bytes(&request[..HEADER_SIZE]).expect("header");
        match result {
            Ok(()) => {
                let n = usize::from(header.msg_vmpck);
                assert!(n < 4);
                let (_, _) =
                    authentic(&request, n).expect("answered a request whose tag does not verify");
                let seqno = header.msg_seqno.get();
                assert_eq!(seqno, before[n], "answered an unexpected sequence number");
                let (rh, _) = authentic(&response, n).expect("the response authenticates");
                assert_eq!(rh.msg_seqno.get(), seqno + 1);
                assert_eq!(rh.msg_type, header.msg_type + 1);
                assert_eq!(rh.msg_vmpck, header.msg_vmpck);
                for m in 0..4 {
                    let want = if m == n { seqno + 2 } else { before[m] };
                    assert_eq!(psp.expected_seqno(m), want);
                }
                if let Some(buf) = &certs_buf {
                    assert_eq!(&buf[..table_len], &cert_table()[..]);
                    assert!(buf[table_len..].iter().all(|&b| b == 0));
                }
            }
            Err(e) => {
                for m in 0..4 {
                    assert_eq!(
                        psp.expected_seqno(m),
                        before[m],
                        "{e:?} moved a sequence number"
                    );
                }
                if let RequestError::CertificatesTooSmall { pages } = e {
                    let len = cert_len.expect("only an extended request is short of pages");
                    assert!(len < table_len);
                    assert_eq!(pages as usize, table_len.div_ceil(PSP_PAGE));
                }
            }
        }
    }
});
