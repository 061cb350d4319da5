//! The relay guest: plays the guest OS for the host-side tools. It reads frames
//! (`nitride_protocol::relay`) from COM2, turns each into a real SVSM call of the
//! vHSM protocol (or, for attest frames, of the attestation protocol) with buffers in
//! its own memory, and writes the result back. It holds no keys; the bytes it
//! forwards are the vHSM's requests and responses and the SVSM's evidence.
#![no_std]
#![no_main]

use nitride_guest_driver::attest::{encode_request, Region, Regions, Target};
use nitride_guest_driver::call::{SvsmClient, Transport};
use nitride_protocol::attest::{attest_call, ATTEST_PROTOCOL_VERSION};
use nitride_protocol::emulated::ports;
use nitride_protocol::relay::{
    AttestHead, AttestResultHead, RawCallHead, RelayInfo, ResponseHead, ATTACK_MAGIC,
    ATTEST_CERT_BUFFER_SIZE, ATTEST_MAGIC, ATTEST_MANIFEST_BUFFER_SIZE, ATTEST_NONCE_BUFFER_SIZE,
    ATTEST_REPORT_BUFFER_SIZE, HOST_MAGICS, RAW_MAGIC, REQUEST_BUFFER_SIZE, REQUEST_MAGIC,
    RESPONSE_BUFFER_SIZE, RESPONSE_MAGIC, SECRETS_MAGIC,
};
use nitride_protocol::svsm::{call_rax, protocol, vhsm_call, CallRegs, VHSM_PROTOCOL_VERSION};
use nitride_rt::uart::Uart;
use nitride_test_guest::say;
use nitride_test_guest::CallTransport;
use zerocopy::{FromBytes, IntoBytes};

#[repr(C, align(4096))]
struct RequestBuffer([u8; REQUEST_BUFFER_SIZE]);

#[repr(C, align(4096))]
struct ResponseBuffer([u8; RESPONSE_BUFFER_SIZE]);

static mut REQUEST: RequestBuffer = RequestBuffer([0; REQUEST_BUFFER_SIZE]);
static mut RESPONSE: ResponseBuffer = ResponseBuffer([0; RESPONSE_BUFFER_SIZE]);

/// A page-aligned buffer of `N` bytes for the attestation protocol.
#[repr(C, align(4096))]
struct Page<const N: usize>([u8; N]);

/// The attestation buffers: request page, nonce, report, manifest, certificates.
struct AttestMemory {
    request: Page<4096>,
    nonce: Page<ATTEST_NONCE_BUFFER_SIZE>,
    report: Page<ATTEST_REPORT_BUFFER_SIZE>,
    manifest: Page<ATTEST_MANIFEST_BUFFER_SIZE>,
    certificates: Page<ATTEST_CERT_BUFFER_SIZE>,
}

static mut ATTEST: AttestMemory = AttestMemory {
    request: Page([0; 4096]),
    nonce: Page([0; ATTEST_NONCE_BUFFER_SIZE]),
    report: Page([0; ATTEST_REPORT_BUFFER_SIZE]),
    manifest: Page([0; ATTEST_MANIFEST_BUFFER_SIZE]),
    certificates: Page([0; ATTEST_CERT_BUFFER_SIZE]),
};

struct Relay {
    com2: Uart,
    svsm: SvsmClient<CallTransport>,
    request: &'static mut [u8; REQUEST_BUFFER_SIZE],
    response: &'static mut [u8; RESPONSE_BUFFER_SIZE],
    attest: &'static mut AttestMemory,
    secrets_gpa: u64,
    info: RelayInfo,
}

impl Relay {
    fn read_exact(&self, out: &mut [u8]) {
        for b in out {
            *b = self.com2.get();
        }
    }

    fn read_u32(&self) -> u32 {
        let mut b = [0u8; 4];
        self.read_exact(&mut b);
        u32::from_le_bytes(b)
    }

    /// Read a payload of `len` bytes into the request buffer; bytes beyond its size
    /// are read and dropped so the stream stays in step. Returns the bytes kept.
    fn read_payload(&mut self, len: u32) -> usize {
        let len = len as usize;
        let keep = len.min(REQUEST_BUFFER_SIZE);
        for i in 0..len {
            let b = self.com2.get();
            if i < keep {
                self.request[i] = b;
            }
        }
        keep
    }

    fn reply(&self, rax: u64, rcx: u64, payload: &[u8]) {
        self.reply_parts(rax, rcx, &[payload]);
    }

    /// Answer with a payload made of `parts`, in order.
    fn reply_parts(&self, rax: u64, rcx: u64, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let head = ResponseHead {
            rax,
            rcx,
            len: len as u32,
        };
        for b in RESPONSE_MAGIC.iter().chain(head.as_bytes()) {
            self.com2.put(*b);
        }
        for b in parts.iter().flat_map(|p| p.iter()) {
            self.com2.put(*b);
        }
    }

    /// Serve an attest frame: one call of protocol 1 with the relay's own buffers.
    fn attest(&mut self) {
        let mut h = [0u8; core::mem::size_of::<AttestHead>()];
        self.read_exact(&mut h);
        let Ok(head) = AttestHead::read_from_bytes(&h) else {
            return;
        };
        let nonce_len = head.nonce_len;
        for i in 0..nonce_len as usize {
            let b = self.com2.get();
            if let Some(slot) = self.attest.nonce.0.get_mut(i) {
                *slot = b;
            }
        }
        let m = &mut *self.attest;
        let gpa = |p: &[u8]| p.as_ptr() as u64;
        let clamp = |want: u32, max: usize| want.min(max as u32);
        let target = if head.call == attest_call::SERVICES {
            Target::Services
        } else {
            Target::SingleService {
                guid: head.service_guid,
                manifest_version: head.manifest_version,
            }
        };
        let regions = Regions {
            report: Region {
                gpa: gpa(&m.report.0),
                size: clamp(head.report_size, ATTEST_REPORT_BUFFER_SIZE),
            },
            nonce: Region {
                gpa: gpa(&m.nonce.0),
                size: nonce_len,
            },
            manifest: Region {
                gpa: gpa(&m.manifest.0),
                size: clamp(head.manifest_size, ATTEST_MANIFEST_BUFFER_SIZE),
            },
            certificates: Region {
                gpa: if head.want_certificates != 0 {
                    gpa(&m.certificates.0)
                } else {
                    0
                },
                size: if head.want_certificates != 0 {
                    clamp(head.cert_size, ATTEST_CERT_BUFFER_SIZE)
                } else {
                    0
                },
            },
        };
        if encode_request(target, &regions, &mut m.request.0).is_err() {
            return;
        }
        let regs = CallRegs {
            // Any call number the host names goes through, so the SVSM's own
            // check of unknown calls can be exercised.
            rax: call_rax(protocol::ATTESTATION, head.call),
            rcx: gpa(&m.request.0),
            rdx: 0,
            r8: 0,
            r9: 0,
        };
        let out = self.svsm.transport().call(regs);
        if out.still_pending {
            say!("relay: the SVSM did not serve the attestation call");
        }
        let r = out.regs;
        let result = AttestResultHead {
            rdx: r.rdx,
            r8: r.r8,
        };
        let m = &*self.attest;
        if r.rax == 0 {
            fn part(b: &[u8], n: u64, offered: u32) -> &[u8] {
                &b[..(n as usize).min(offered as usize).min(b.len())]
            }
            let report = part(&m.report.0, r.r8, regions.report.size);
            let manifest = part(&m.manifest.0, r.rcx, regions.manifest.size);
            let certs = part(&m.certificates.0, r.rdx, regions.certificates.size);
            self.reply_parts(r.rax, r.rcx, &[result.as_bytes(), report, manifest, certs]);
        } else {
            self.reply_parts(r.rax, r.rcx, &[result.as_bytes()]);
        }
    }

    fn call(&mut self, rcx: u64, rdx: u64, r8: u64, r9: u64) {
        let regs = CallRegs {
            rax: call_rax(protocol::VHSM, vhsm_call::REQUEST),
            rcx,
            rdx,
            r8,
            r9,
        };
        let out = self.svsm.transport().call(regs);
        if out.still_pending {
            say!("relay: the SVSM did not serve the call");
        }
        let body = if out.regs.rax == 0 {
            let n = (out.regs.rcx as usize).min(RESPONSE_BUFFER_SIZE);
            &self.response[..n]
        } else {
            &[][..]
        };
        self.reply(out.regs.rax, out.regs.rcx, body);
    }

    /// Wait for the next frame magic, resynchronising byte by byte on garbage.
    fn next_magic(&self) -> [u8; 4] {
        let mut w = [0u8; 4];
        self.read_exact(&mut w);
        loop {
            if HOST_MAGICS.contains(&w) {
                return w;
            }
            w.copy_within(1.., 0);
            w[3] = self.com2.get();
        }
    }

    fn serve(&mut self) -> ! {
        loop {
            match self.next_magic() {
                REQUEST_MAGIC => {
                    let len = self.read_u32();
                    let kept = self.read_payload(len);
                    // A frame longer than the buffer is passed on with its real
                    // length, so the SVSM's limit check is what answers it.
                    let rdx = if (len as usize) > kept {
                        u64::from(len)
                    } else {
                        kept as u64
                    };
                    let (req, resp) = (self.info.request_buffer, self.info.response_buffer);
                    self.call(req, rdx, resp, RESPONSE_BUFFER_SIZE as u64);
                }
                RAW_MAGIC => {
                    let mut h = [0u8; core::mem::size_of::<RawCallHead>()];
                    self.read_exact(&mut h);
                    let Ok(head) = RawCallHead::read_from_bytes(&h) else {
                        continue;
                    };
                    self.read_payload(head.len);
                    self.call(head.rcx, head.rdx, head.r8, head.r9);
                }
                ATTACK_MAGIC => {
                    let mut g = [0u8; 9];
                    self.read_exact(&mut g);
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&g[..8]);
                    attack(u64::from_le_bytes(a), g[8]);
                    self.reply(0, 0, &[]);
                }
                ATTEST_MAGIC => self.attest(),
                SECRETS_MAGIC => {
                    let page = nitride_test_guest::fixed_page(self.secrets_gpa);
                    self.reply(0, 0, page);
                }
                _ => {
                    let info = self.info;
                    self.reply(0, 0, info.as_bytes());
                }
            }
        }
    }
}

/// Touch `gpa` as told; returns only if the access was not stopped.
fn attack(gpa: u64, kind: u8) {
    say!(
        "relay: attack: {} at {gpa:#x}",
        ["read", "write", "execute"]
            .get(usize::from(kind))
            .unwrap_or(&"?")
    );
    match kind {
        // SAFETY: deliberately reads memory the host names; the SVSM must stop the
        // guest when it is SVSM memory.
        0 => say!("relay: ISOLATION BROKEN: read {:#x}", unsafe {
            core::ptr::read_volatile(gpa as *const u64)
        }),
        1 => {
            // SAFETY: deliberately writes memory the host names (see above).
            unsafe { core::ptr::write_volatile(gpa as *mut u64, 0x4141_4141_4141_4141) };
            say!("relay: ISOLATION BROKEN: write went through");
        }
        _ => {
            // SAFETY: deliberately jumps to memory the host names (see above).
            let f: extern "C" fn() = unsafe { core::mem::transmute(gpa as usize) };
            f();
            say!("relay: ISOLATION BROKEN: executed");
        }
    }
}

#[no_mangle]
extern "C" fn guest_main(_boot_info_gpa: u64, secrets_gpa: u64) -> ! {
    let info = nitride_test_guest::start(secrets_gpa);
    // SAFETY: the CAA from the secrets page is a guest page, identity mapped, used
    // only by this transport.
    let transport = unsafe { nitride_test_guest::transport(info.caa) };
    let mut svsm = SvsmClient::new(transport);
    match svsm.query_protocol(protocol::VHSM, VHSM_PROTOCOL_VERSION) {
        Ok(Some((max, min))) => say!("relay: vHSM protocol versions {min}..{max} served"),
        other => say!("relay: vHSM protocol not served ({other:?}); requests will fail"),
    }
    match svsm.query_protocol(protocol::ATTESTATION, ATTEST_PROTOCOL_VERSION) {
        Ok(Some((max, min))) => say!("relay: attestation protocol versions {min}..{max} served"),
        other => say!("relay: attestation protocol not served ({other:?})"),
    }
    // SAFETY: guest_main runs once and is the only user of the buffers.
    let (request, response, attest) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(REQUEST),
            &mut *core::ptr::addr_of_mut!(RESPONSE),
            &mut *core::ptr::addr_of_mut!(ATTEST),
        )
    };
    let relay_info = RelayInfo {
        caa: info.caa,
        request_buffer: request.0.as_ptr() as u64,
        response_buffer: response.0.as_ptr() as u64,
        svsm_base: info.base,
        svsm_size: info.size,
    };
    let com2 = Uart::new(ports::COM2);
    com2.init();
    say!(
        "relay: serving COM2; request buffer {:#x}, response buffer {:#x}, CAA {:#x}",
        relay_info.request_buffer,
        relay_info.response_buffer,
        relay_info.caa
    );
    Relay {
        com2,
        svsm,
        request: &mut request.0,
        response: &mut response.0,
        attest,
        secrets_gpa,
        info: relay_info,
    }
    .serve()
}
