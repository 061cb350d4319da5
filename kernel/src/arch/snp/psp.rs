//! The PSP transport on SNP: GHCB guest requests (GUEST_REQUEST, and
//! EXT_GUEST_REQUEST for the certificate table) with the request, response and
//! certificate pages shared with the hypervisor, which relays them to the PSP. The
//! messages are encrypted with VMPCK0 by [`nitride_kernel::psp::PspClient`]; the
//! hypervisor sees only ciphertext (and the certificates, which are public).

use super::ghcb;
use super::insn::{self, PageSize};
use nitride_kernel::psp::{ChannelError, PspChannel, PSP_PAGE};
use nitride_protocol::snp::ghcb::{nae, off};

/// Certificate buffer pages (the most the PSP client asks for).
pub const CERT_PAGES: usize = nitride_kernel::psp::MAX_CERT_PAGES as usize;

/// The shared pages of the guest-request channel.
#[repr(C, align(4096))]
pub struct SharedPages {
    request: [u8; PSP_PAGE],
    response: [u8; PSP_PAGE],
    certificates: [[u8; 4096]; CERT_PAGES],
}

/// Writable (`.bss`), reached only through raw pointers: the hypervisor writes it.
static mut PAGES: SharedPages = SharedPages {
    request: [0; PSP_PAGE],
    response: [0; PSP_PAGE],
    certificates: [[0; 4096]; CERT_PAGES],
};

/// The range of the shared pages: the SVSM's page tables map it without the C-bit.
pub fn shared_range() -> (u64, u64) {
    let start = core::ptr::addr_of_mut!(PAGES) as u64;
    (start, start + core::mem::size_of::<SharedPages>() as u64)
}

/// The guest-request channel (shared pages made shared).
#[derive(Debug)]
pub struct GhcbPsp(());

/// Why the channel could not be set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetupError {
    /// Rescinding a page's validation failed (its address, the PVALIDATE code).
    Rescind(u64, u32),
    /// The hypervisor refused to make a page shared (its address, the response).
    PageStateChange(u64, u64),
}

impl GhcbPsp {
    /// Make the channel's pages shared. Call once, after the SVSM's page tables map
    /// them without the C-bit and the GHCB is registered.
    pub fn new() -> Result<Self, SetupError> {
        let (start, end) = shared_range();
        for gpa in (start..end).step_by(4096) {
            insn::pvalidate(gpa, PageSize::Small, false)
                .map_err(|e| SetupError::Rescind(gpa, e))?;
            let r = insn::msr_protocol(nitride_protocol::snp::ghcb::msr::psc(gpa, false));
            if r & 0xFFF != nitride_protocol::snp::ghcb::msr::PSC_RESP || r >> 32 != 0 {
                return Err(SetupError::PageStateChange(gpa, r));
            }
        }
        Ok(Self(()))
    }
}

fn copy_to(dst: *mut u8, src: &[u8]) {
    for (i, &b) in src.iter().enumerate() {
        // SAFETY: `dst` is one of the static shared pages, at least `src.len()` long
        // (callers pass at most a page or the certificate buffer); shared memory is
        // accessed volatile.
        unsafe { dst.add(i).write_volatile(b) };
    }
}

fn copy_from(dst: &mut [u8], src: *const u8) {
    for (i, b) in dst.iter_mut().enumerate() {
        // SAFETY: as in `copy_to`.
        *b = unsafe { src.add(i).read_volatile() };
    }
}

impl PspChannel for GhcbPsp {
    fn guest_request(
        &mut self,
        request: &[u8; PSP_PAGE],
        response: &mut [u8; PSP_PAGE],
        certificates: Option<&mut [u8]>,
    ) -> Result<(), ChannelError> {
        let (base, _) = shared_range();
        let req = base + core::mem::offset_of!(SharedPages, request) as u64;
        let rsp = base + core::mem::offset_of!(SharedPages, response) as u64;
        let certs_at = base + core::mem::offset_of!(SharedPages, certificates) as u64;
        copy_to(req as *mut u8, request);
        let answer = match &certificates {
            None => ghcb::call(nae::GUEST_REQUEST, req, rsp, &[]),
            Some(buf) => {
                let pages = (buf.len() / 4096).min(CERT_PAGES) as u64;
                ghcb::call(
                    nae::EXT_GUEST_REQUEST,
                    req,
                    rsp,
                    &[(off::RAX, certs_at), (off::RBX, pages)],
                )
            }
        };
        let Some((info1, info2)) = answer else {
            return Err(ChannelError::Hypervisor(u32::MAX));
        };
        if info1 != 0 {
            return Err(ChannelError::Hypervisor(info2 as u32));
        }
        match (info2 >> 32, info2 as u32) {
            (0, 0) => {}
            (1, _) => {
                let pages = if ghcb::valid(off::RBX) {
                    ghcb::read64(off::RBX)
                } else {
                    0
                };
                return Err(ChannelError::CertificatesTooSmall {
                    pages: u32::try_from(pages).unwrap_or(u32::MAX),
                });
            }
            (2, _) => return Err(ChannelError::Busy),
            (0, fw) => return Err(ChannelError::Firmware(fw)),
            (hv, _) => return Err(ChannelError::Hypervisor(hv as u32)),
        }
        copy_from(response, rsp as *const u8);
        if let Some(buf) = certificates {
            let n = buf.len().min(CERT_PAGES * 4096);
            copy_from(&mut buf[..n], certs_at as *const u8);
        }
        Ok(())
    }
}
