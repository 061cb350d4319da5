//! The SVSM attestation protocol (protocol 1, version 1) as Nitride serves it, and
//! the adapter that lends the platform's PSP to the vault for AttestKey.
//!
//! [`serve`] handles ATTEST_SERVICES and ATTEST_SINGLE_SERVICE (REFERENCE.md
//! section 3; `docs/attestation.md` is the design note):
//!
//! 1. read the request (0x40 or 0x58 bytes) at the GPA in RCX through a checked
//!    [`GuestRange`] (it may lie in the calling area: Linux puts it in the CAA's
//!    buffer), copy it, then parse it; reserved fields must be zero and the nonce
//!    exactly [`NONCE_SIZE`] (64) bytes;
//! 2. pick the manifest: the services manifest table (with the vHSM's entry when the
//!    vHSM runs), or one service's own manifest;
//! 3. copy the nonce and check every output buffer with the memory map: guest RAM
//!    outside SVSM memory, no wrap-around, not overlapping the calling area or each
//!    other;
//! 4. REPORT_DATA = SHA-512(nonce || manifest), built by
//!    `nitride_protocol::attest::report_data` (the manifest's own tag at offset 64
//!    keeps it apart from every other REPORT_DATA form); ask the PSP for a VMPL0
//!    report (with the certificate table when the certificate buffer's size is not
//!    zero);
//! 5. if a buffer is too small, return ERR_INVALID_PARAMETER with the needed sizes in
//!    RCX (manifest), RDX (certificates) and R8 (report), writing nothing; else write
//!    all three and return SUCCESS with the same registers.
//!
//! Every other failure returns with RCX, RDX and R8 zeroed, so that a guest that
//! retries on ERR_INVALID_PARAMETER with larger buffers (Linux does) never mistakes
//! an input register for a size.

use alloc::vec;
use alloc::vec::Vec;
use core::mem::size_of;

use nitride_protocol::attest::{
    attest_call, manifest_table_len, report_data, write_manifest_table, GuestBuffer, Nonce,
    ServicesRequest, SingleServiceRequest, NONCE_SIZE, VHSM_MANIFEST_VERSION, VHSM_SERVICE_GUID,
};
use nitride_protocol::snp::report::REPORT_SIZE;
use nitride_protocol::snp::Guid;
use nitride_protocol::svsm::{CallRegs, ResultCode};
use nitride_vhsm::{AttestError, Attester, Evidence};
use zerocopy::FromBytes;
use zeroize::Zeroizing;

use crate::memory::{GuestRange, PhysRange, MAX_GUEST_RANGE, PAGE};
use crate::platform::Platform;

/// Lends the platform's PSP to the vault for one request: the vault never holds
/// the platform.
#[derive(Debug)]
pub struct PlatformAttester<'a, P: Platform>(pub &'a mut P);

impl<P: Platform> Attester for PlatformAttester<'_, P> {
    fn report(
        &mut self,
        report_data: &[u8; 64],
        certificates: bool,
    ) -> Result<Evidence, AttestError> {
        self.0.attestation_report(report_data, certificates)
    }

    fn sealing_tcb(&mut self) -> Result<[u8; 8], AttestError> {
        self.0.committed_tcb()
    }

    fn sealing_key(&mut self, tcb: [u8; 8]) -> Result<Zeroizing<[u8; 32]>, AttestError> {
        self.0
            .derived_key(&nitride_protocol::sealed::sealing_key_request(tcb))
    }
}

/// The services the attestation protocol can name.
#[derive(Clone, Copy)]
pub struct Services<'a> {
    /// Builds the vHSM's manifest (`Vault::manifest`), when the vHSM runs. Called
    /// only once a request has been read and names the vHSM.
    pub vhsm: Option<&'a dyn Fn() -> Vec<u8>>,
}

impl core::fmt::Debug for Services<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Services")
            .field("vhsm", &self.vhsm.is_some())
            .finish()
    }
}

impl Services<'_> {
    /// The services manifest table: one entry per running service.
    fn table(&self) -> Result<Vec<u8>, ResultCode> {
        let vhsm = self.vhsm.map(|build| build());
        let mut entries: Vec<(Guid, &[u8])> = Vec::new();
        if let Some(m) = &vhsm {
            entries.push((VHSM_SERVICE_GUID, m));
        }
        let len = manifest_table_len(&entries).ok_or(ResultCode::InvalidRequest)?;
        let mut out = vec![0u8; len];
        write_manifest_table(&entries, &mut out).map_err(|_| ResultCode::InvalidRequest)?;
        Ok(out)
    }

    /// One service's manifest at `version` (0 = the latest).
    fn single(&self, guid: &Guid, version: u32) -> Result<Vec<u8>, ResultCode> {
        match (*guid == VHSM_SERVICE_GUID, self.vhsm) {
            (true, Some(build)) => {
                if version == 0 || version == VHSM_MANIFEST_VERSION {
                    Ok(build())
                } else {
                    Err(ResultCode::InvalidParameter)
                }
            }
            // As coconut-svsm does: a service that is not served is an unsupported
            // protocol.
            _ => Err(ResultCode::UnsupportedProtocol),
        }
    }
}

/// Serve protocol-1 call `call`; returns the result code for RAX and sets RCX, RDX
/// and R8 as the protocol says. `caa_gpa` is the caller's calling area.
pub fn serve<P: Platform>(
    platform: &mut P,
    caa_gpa: u64,
    call: u32,
    regs: &mut CallRegs,
    services: &Services<'_>,
) -> u64 {
    let request_gpa = regs.rcx;
    regs.rcx = 0;
    regs.rdx = 0;
    regs.r8 = 0;
    match attest(platform, caa_gpa, call, request_gpa, services) {
        Ok(sizes) => {
            sizes.set(regs);
            ResultCode::Success.raw()
        }
        Err(Failure::TooSmall(sizes)) => {
            sizes.set(regs);
            ResultCode::InvalidParameter.raw()
        }
        Err(Failure::Code(code)) => code.raw(),
    }
}

/// The sizes reported in RCX, RDX and R8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sizes {
    manifest: u64,
    certificates: u64,
    report: u64,
}

impl Sizes {
    fn set(self, regs: &mut CallRegs) {
        regs.rcx = self.manifest;
        regs.rdx = self.certificates;
        regs.r8 = self.report;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// A buffer is too small: report the needed sizes.
    TooSmall(Sizes),
    /// Any other failure.
    Code(ResultCode),
}

impl From<ResultCode> for Failure {
    fn from(code: ResultCode) -> Self {
        Self::Code(code)
    }
}

/// What a PSP failure becomes.
fn psp_failure(e: AttestError) -> ResultCode {
    match e {
        // The PSP stayed busy: the guest repeats the call.
        AttestError::Busy => ResultCode::Busy,
        // No PSP, or the channel was shut after a failure: from now on the protocol
        // is no longer advertised either.
        AttestError::Unavailable | AttestError::Disabled => ResultCode::UnsupportedProtocol,
        AttestError::Failed => ResultCode::InvalidRequest,
    }
}

/// One output buffer, checked: `None` when the guest gave size 0.
struct OutBuffer {
    size: u64,
    range: Option<GuestRange>,
}

impl OutBuffer {
    /// The span checked for overlaps.
    fn span(&self) -> Option<PhysRange> {
        self.range.map(|r| PhysRange {
            start: r.gpa(),
            end: r.gpa() + r.len(),
        })
    }

    /// Where `len` bytes go (`len` is at most `size`, checked before).
    fn prefix(&self, len: usize) -> Result<Option<GuestRange>, ResultCode> {
        if len == 0 {
            return Ok(None);
        }
        let range = self.range.ok_or(ResultCode::InvalidAddress)?;
        range
            .sub(0, len as u64)
            .map(Some)
            .ok_or(ResultCode::InvalidAddress)
    }
}

/// Check an output buffer: its declared extent (capped at [`MAX_GUEST_RANGE`], more
/// than anything the SVSM writes) must be guest RAM outside SVSM memory.
fn out_buffer<P: Platform>(platform: &P, b: &GuestBuffer) -> Result<OutBuffer, ResultCode> {
    if b.reserved.get() != 0 {
        return Err(ResultCode::InvalidParameter);
    }
    let size = u64::from(b.size.get());
    let range = if size == 0 {
        None
    } else {
        Some(
            platform
                .memory()
                .range(b.gpa.get(), size.min(MAX_GUEST_RANGE))
                .map_err(|_| ResultCode::InvalidAddress)?,
        )
    };
    Ok(OutBuffer { size, range })
}

fn attest<P: Platform>(
    platform: &mut P,
    caa_gpa: u64,
    call: u32,
    request_gpa: u64,
    services: &Services<'_>,
) -> Result<Sizes, Failure> {
    let started = platform.cycles();
    // 1. The request: copied, then parsed.
    let len = match call {
        attest_call::SERVICES => size_of::<ServicesRequest>(),
        attest_call::SINGLE_SERVICE => size_of::<SingleServiceRequest>(),
        _ => return Err(ResultCode::UnsupportedCall.into()),
    };
    let range = platform
        .memory()
        .range(request_gpa, len as u64)
        .map_err(|_| ResultCode::InvalidAddress)?;
    let mut raw = [0u8; size_of::<SingleServiceRequest>()];
    let raw = raw.get_mut(..len).ok_or(ResultCode::InvalidRequest)?;
    platform
        .read_guest(range, raw)
        .map_err(|_| ResultCode::InvalidAddress)?;
    let (base, single) = if call == attest_call::SINGLE_SERVICE {
        let r =
            SingleServiceRequest::read_from_bytes(raw).map_err(|_| ResultCode::InvalidParameter)?;
        if r.reserved.get() != 0 {
            return Err(ResultCode::InvalidParameter.into());
        }
        (r.base, Some((r.service_guid, r.manifest_version.get())))
    } else {
        let r = ServicesRequest::read_from_bytes(raw).map_err(|_| ResultCode::InvalidParameter)?;
        (r, None)
    };
    // The nonce is exactly 64 bytes: a longer one would let the guest put bytes of
    // its choosing where the manifest's tag belongs (at offset 64 of the hash input).
    if base.nonce.reserved.get() != 0 || base.nonce.size.get() as usize != NONCE_SIZE {
        return Err(ResultCode::InvalidParameter.into());
    }

    // 2. The manifest.
    let manifest_started = platform.cycles();
    let manifest = match single {
        Some((guid, version)) => services.single(&guid, version)?,
        None => services.table()?,
    };
    let manifest_cycles = platform.cycles().wrapping_sub(manifest_started);

    // 3. The nonce (copied) and the output buffers (checked).
    let mut nonce: Nonce = [0; NONCE_SIZE];
    let range = platform
        .memory()
        .range(base.nonce.gpa.get(), NONCE_SIZE as u64)
        .map_err(|_| ResultCode::InvalidAddress)?;
    platform
        .read_guest(range, &mut nonce)
        .map_err(|_| ResultCode::InvalidAddress)?;
    let report = out_buffer(platform, &base.report)?;
    let manifest_buf = out_buffer(platform, &base.manifest)?;
    let certs = out_buffer(platform, &base.certificates)?;
    let caa = PhysRange {
        start: caa_gpa,
        end: caa_gpa.saturating_add(PAGE),
    };
    let spans: Vec<PhysRange> = [&report, &manifest_buf, &certs]
        .iter()
        .filter_map(|b| b.span())
        .collect();
    for (i, a) in spans.iter().enumerate() {
        let others = spans.get(i + 1..).unwrap_or_default();
        if a.overlaps(&caa) || others.iter().any(|b| a.overlaps(b)) {
            return Err(ResultCode::InvalidAddress.into());
        }
    }

    // 4. REPORT_DATA binds the nonce and the manifest.
    let hash_started = platform.cycles();
    let report_data = match single {
        Some((guid, _)) => report_data::single_service(&nonce, &guid, &manifest),
        None => report_data::services(&nonce, &manifest),
    }
    .map_err(|e| {
        // The SVSM built the manifest itself: its tag is always right.
        log::error!("attestation: manifest without its REPORT_DATA tag: {e}");
        ResultCode::InvalidRequest
    })?;
    let hash_cycles = platform.cycles().wrapping_sub(hash_started);
    let want_certs = certs.size != 0;
    let mut sizes = Sizes {
        manifest: manifest.len() as u64,
        certificates: 0,
        report: REPORT_SIZE as u64,
    };
    let fits = |s: &Sizes| {
        report.size >= s.report && manifest_buf.size >= s.manifest && certs.size >= s.certificates
    };
    // Without certificates every size is known before asking the PSP.
    if !want_certs && !fits(&sizes) {
        return Err(Failure::TooSmall(sizes));
    }
    let psp_started = platform.cycles();
    let evidence = platform
        .attestation_report(&report_data, want_certs)
        .map_err(psp_failure)?;
    let psp_cycles = platform.cycles().wrapping_sub(psp_started);
    if evidence.report.len() != REPORT_SIZE {
        log::error!(
            "attestation: the PSP returned a {}-byte report",
            evidence.report.len()
        );
        return Err(ResultCode::InvalidRequest.into());
    }
    let cert_table: &[u8] = if want_certs {
        &evidence.certificates
    } else {
        &[]
    };
    sizes.certificates = cert_table.len() as u64;
    // 5. Sizes, then the writes.
    if !fits(&sizes) {
        return Err(Failure::TooSmall(sizes));
    }
    let writes = [
        (report.prefix(evidence.report.len())?, &evidence.report[..]),
        (manifest_buf.prefix(manifest.len())?, &manifest[..]),
        (certs.prefix(cert_table.len())?, cert_table),
    ];
    for (range, data) in writes {
        if let Some(range) = range {
            platform
                .write_guest(range, data)
                .map_err(|_| ResultCode::InvalidAddress)?;
        }
    }
    log::info!(
        "attestation: {} cycles: manifest {} ({} bytes), SHA-512 {}, PSP {}",
        platform.cycles().wrapping_sub(started),
        manifest_cycles,
        manifest.len(),
        hash_cycles,
        psp_cycles
    );
    Ok(sizes)
}
