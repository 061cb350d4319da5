//! The relay guest: plays the guest OS for the host-side tools. It reads frames
//! (`nitride_protocol::relay`) from COM2, turns each into a real SVSM call of the
//! vHSM protocol with buffers in its own memory, and writes the result back. It
//! holds no keys; the bytes it forwards are the vHSM's requests and responses.
#![no_std]
#![no_main]

use nitride_guest_driver::call::{SvsmClient, Transport, VmmcallTransport};
use nitride_protocol::emulated::ports;
use nitride_protocol::relay::{
    RawCallHead, RelayInfo, ResponseHead, ATTACK_MAGIC, INFO_MAGIC, RAW_MAGIC, REQUEST_BUFFER_SIZE,
    REQUEST_MAGIC, RESPONSE_BUFFER_SIZE, RESPONSE_MAGIC,
};
use nitride_protocol::svsm::{call_rax, protocol, vhsm_call, CallRegs, VHSM_PROTOCOL_VERSION};
use nitride_rt::uart::Uart;
use nitride_test_guest::say;
use zerocopy::{FromBytes, IntoBytes};

#[repr(C, align(4096))]
struct RequestBuffer([u8; REQUEST_BUFFER_SIZE]);

#[repr(C, align(4096))]
struct ResponseBuffer([u8; RESPONSE_BUFFER_SIZE]);

static mut REQUEST: RequestBuffer = RequestBuffer([0; REQUEST_BUFFER_SIZE]);
static mut RESPONSE: ResponseBuffer = ResponseBuffer([0; RESPONSE_BUFFER_SIZE]);

struct Relay {
    com2: Uart,
    svsm: SvsmClient<VmmcallTransport>,
    request: &'static mut [u8; REQUEST_BUFFER_SIZE],
    response: &'static mut [u8; RESPONSE_BUFFER_SIZE],
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
        let head = ResponseHead {
            rax,
            rcx,
            len: payload.len() as u32,
        };
        for b in RESPONSE_MAGIC.iter().chain(head.as_bytes()).chain(payload) {
            self.com2.put(*b);
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
            if w == REQUEST_MAGIC || w == RAW_MAGIC || w == INFO_MAGIC || w == ATTACK_MAGIC {
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
    let transport = unsafe { VmmcallTransport::new(info.caa as *mut u8) };
    let mut svsm = SvsmClient::new(transport);
    match svsm.query_protocol(protocol::VHSM, VHSM_PROTOCOL_VERSION) {
        Ok(Some((max, min))) => say!("relay: vHSM protocol versions {min}..{max} served"),
        other => say!("relay: vHSM protocol not served ({other:?}); requests will fail"),
    }
    // SAFETY: guest_main runs once and is the only user of the two buffers.
    let (request, response) = unsafe {
        (
            &mut *core::ptr::addr_of_mut!(REQUEST),
            &mut *core::ptr::addr_of_mut!(RESPONSE),
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
        info: relay_info,
    }
    .serve()
}
