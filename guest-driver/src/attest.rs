//! The SVSM attestation protocol (protocol 1) from a guest kernel: build the
//! ATTEST_SERVICES / ATTEST_SINGLE_SERVICE request in caller-provided memory, make
//! the call over any [`Transport`], and decode the result registers, including the
//! size negotiation (a buffer that is too small gives INVALID_PARAMETER with the
//! needed sizes in RCX/RDX/R8, [`AttestError::BuffersTooSmall`]).
//!
//! Every buffer is guest memory the caller names together with its guest-physical
//! address ([`GuestBuf`]): the SVSM reads the request and nonce and writes report,
//! manifest and certificates by GPA. [`encode_request`] and [`decode_result`] are
//! also used by the relay guest and the host's relay client, so the three agree on
//! one reading of the registers.
#![forbid(unsafe_code)]

use core::mem::size_of;

use nitride_protocol::attest::{
    attest_call, GuestBuffer, Nonce, ServicesRequest, SingleServiceRequest, NONCE_SIZE,
};
use nitride_protocol::snp::Guid;
use nitride_protocol::svsm::{self, ResultCode};
use zerocopy::byteorder::little_endian::{U32, U64};
use zerocopy::IntoBytes;

use crate::call::{CallError, SvsmClient, Transport};

/// Size of an attestation report.
pub const REPORT_SIZE: usize = 0x4A0;

/// What to attest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// ATTEST_SERVICES: every service, the whole services manifest.
    Services,
    /// ATTEST_SINGLE_SERVICE: one service's manifest at `manifest_version` (0 = latest).
    SingleService {
        /// The service GUID (wire byte order).
        guid: Guid,
        /// The manifest version wanted.
        manifest_version: u32,
    },
}

impl Target {
    /// The call number of protocol 1.
    pub fn call_id(&self) -> u32 {
        match self {
            Self::Services => attest_call::SERVICES,
            Self::SingleService { .. } => attest_call::SINGLE_SERVICE,
        }
    }

    /// Length of the request structure.
    pub fn request_len(&self) -> usize {
        match self {
            Self::Services => size_of::<ServicesRequest>(),
            Self::SingleService { .. } => size_of::<SingleServiceRequest>(),
        }
    }
}

/// Guest memory and its guest-physical address.
#[derive(Debug)]
pub struct GuestBuf<'a> {
    /// The bytes, as the guest sees them.
    pub bytes: &'a mut [u8],
    /// Their guest-physical address.
    pub gpa: u64,
}

/// A buffer as named in the request: GPA and the size offered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Region {
    /// Guest-physical address.
    pub gpa: u64,
    /// Size offered (or, for the nonce, its length).
    pub size: u32,
}

/// The four regions of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Regions {
    /// The report buffer.
    pub report: Region,
    /// The nonce.
    pub nonce: Region,
    /// The manifest buffer.
    pub manifest: Region,
    /// The certificate buffer (size 0: no certificates).
    pub certificates: Region,
}

/// Lengths of what the SVSM wrote (on success) or needs (on BuffersTooSmall).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttestSizes {
    /// Manifest length (RCX).
    pub manifest: u64,
    /// Certificate table length (RDX).
    pub certificates: u64,
    /// Report length (R8).
    pub report: u64,
}

/// Why an attestation call did not produce evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttestError {
    /// The nonce buffer cannot hold the 64-byte nonce.
    NonceBufferTooSmall {
        /// Its size.
        len: usize,
        /// Needed ([`NONCE_SIZE`]).
        needed: usize,
    },
    /// The request buffer cannot hold the request structure.
    RequestBufferTooSmall {
        /// Its size.
        len: usize,
        /// Needed.
        needed: usize,
    },
    /// A buffer is larger than the 32-bit size field of the request.
    BufferTooLarge,
    /// The SVSM needs larger buffers (INVALID_PARAMETER with the needed sizes): retry
    /// with at least these.
    BuffersTooSmall {
        /// Manifest size needed.
        manifest: u64,
        /// Certificate size needed.
        certificates: u64,
        /// Report size needed.
        report: u64,
    },
    /// The SVSM claims to have written more than a buffer holds.
    BadLengths {
        /// What it claimed.
        claimed: AttestSizes,
        /// What was offered.
        offered: AttestSizes,
    },
    /// The call failed (protocol not served, bad request, ...).
    Call(CallError),
}

impl core::fmt::Display for AttestError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::NonceBufferTooSmall { len, needed } => {
                write!(f, "nonce buffer of {len} bytes, the nonce needs {needed}")
            }
            Self::RequestBufferTooSmall { len, needed } => {
                write!(f, "request buffer of {len} bytes, the request needs {needed}")
            }
            Self::BufferTooLarge => f.write_str("a buffer exceeds 4 GiB"),
            Self::BuffersTooSmall {
                manifest,
                certificates,
                report,
            } => write!(
                f,
                "buffers too small: the SVSM needs manifest {manifest}, certificates {certificates}, report {report} bytes"
            ),
            Self::BadLengths { claimed, offered } => write!(
                f,
                "the SVSM claims lengths (manifest {}, certificates {}, report {}) beyond the buffers offered ({}, {}, {})",
                claimed.manifest,
                claimed.certificates,
                claimed.report,
                offered.manifest,
                offered.certificates,
                offered.report
            ),
            Self::Call(e) => write!(f, "attestation call: {e}"),
        }
    }
}

fn guest_buffer(r: Region) -> GuestBuffer {
    GuestBuffer {
        gpa: U64::new(r.gpa),
        size: U32::new(r.size),
        reserved: U32::new(0),
    }
}

/// Write the request for `target` naming `regions` into `out`; returns its length
/// ([`Target::request_len`]).
pub fn encode_request(
    target: Target,
    regions: &Regions,
    out: &mut [u8],
) -> Result<usize, AttestError> {
    let needed = target.request_len();
    let len = out.len();
    let dst = out
        .get_mut(..needed)
        .ok_or(AttestError::RequestBufferTooSmall { len, needed })?;
    let base = ServicesRequest {
        report: guest_buffer(regions.report),
        nonce: guest_buffer(regions.nonce),
        manifest: guest_buffer(regions.manifest),
        certificates: guest_buffer(regions.certificates),
    };
    match target {
        Target::Services => dst.copy_from_slice(base.as_bytes()),
        Target::SingleService {
            guid,
            manifest_version,
        } => {
            let req = SingleServiceRequest {
                base,
                service_guid: guid,
                manifest_version: U32::new(manifest_version),
                reserved: U32::new(0),
            };
            dst.copy_from_slice(req.as_bytes());
        }
    }
    Ok(needed)
}

/// Read the result registers of an attestation call that offered `offered` bytes:
/// on SUCCESS the lengths written (each within what was offered); on
/// INVALID_PARAMETER with a needed size above an offered one,
/// [`AttestError::BuffersTooSmall`]; any other code as [`AttestError::Call`].
pub fn decode_result(
    rax: u64,
    rcx: u64,
    rdx: u64,
    r8: u64,
    offered: AttestSizes,
) -> Result<AttestSizes, AttestError> {
    let got = AttestSizes {
        manifest: rcx,
        certificates: rdx,
        report: r8,
    };
    let fits = got.manifest <= offered.manifest
        && got.certificates <= offered.certificates
        && got.report <= offered.report;
    match ResultCode::from_raw(rax) {
        Some(ResultCode::Success) if fits => Ok(got),
        Some(ResultCode::Success) => Err(AttestError::BadLengths {
            claimed: got,
            offered,
        }),
        Some(ResultCode::InvalidParameter) if !fits => Err(AttestError::BuffersTooSmall {
            manifest: rcx,
            certificates: rdx,
            report: r8,
        }),
        Some(code) => Err(AttestError::Call(CallError::Svsm(code))),
        None => Err(AttestError::Call(CallError::Other(rax))),
    }
}

/// The buffers of one attestation call.
#[derive(Debug)]
pub struct AttestBuffers<'a> {
    /// Where the request structure is built (at least 0x58 bytes).
    pub request: GuestBuf<'a>,
    /// Where the nonce is copied (at least [`NONCE_SIZE`] bytes).
    pub nonce: GuestBuf<'a>,
    /// The report buffer (at least [`REPORT_SIZE`] bytes for success).
    pub report: GuestBuf<'a>,
    /// The manifest buffer.
    pub manifest: GuestBuf<'a>,
    /// The certificate buffer; `None` asks for no certificates.
    pub certificates: Option<GuestBuf<'a>>,
}

fn size32(n: usize) -> Result<u32, AttestError> {
    u32::try_from(n).map_err(|_| AttestError::BufferTooLarge)
}

/// Lengths of the evidence an [`attest`] call left in the buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Evidence {
    /// Report bytes at the start of the report buffer.
    pub report_len: usize,
    /// Manifest bytes at the start of the manifest buffer.
    pub manifest_len: usize,
    /// Certificate-table bytes at the start of the certificate buffer.
    pub certificates_len: usize,
}

/// Attest `target` with `nonce` (exactly 64 bytes, as the SVSM requires): build the
/// request in `bufs.request`, copy the nonce, call protocol 1 and decode the result.
/// On success the report, manifest and certificates are at the start of their
/// buffers, with the returned lengths.
pub fn attest<T: Transport>(
    svsm: &mut SvsmClient<T>,
    target: Target,
    nonce: &Nonce,
    bufs: &mut AttestBuffers<'_>,
) -> Result<Evidence, AttestError> {
    let len = bufs.nonce.bytes.len();
    bufs.nonce
        .bytes
        .get_mut(..NONCE_SIZE)
        .ok_or(AttestError::NonceBufferTooSmall {
            len,
            needed: NONCE_SIZE,
        })?
        .copy_from_slice(nonce);
    let (cert_gpa, cert_len) = bufs
        .certificates
        .as_ref()
        .map_or((0, 0), |c| (c.gpa, c.bytes.len()));
    let regions = Regions {
        report: Region {
            gpa: bufs.report.gpa,
            size: size32(bufs.report.bytes.len())?,
        },
        nonce: Region {
            gpa: bufs.nonce.gpa,
            size: size32(nonce.len())?,
        },
        manifest: Region {
            gpa: bufs.manifest.gpa,
            size: size32(bufs.manifest.bytes.len())?,
        },
        certificates: Region {
            gpa: cert_gpa,
            size: size32(cert_len)?,
        },
    };
    encode_request(target, &regions, bufs.request.bytes)?;
    let out = svsm
        .call_regs(
            svsm::protocol::ATTESTATION,
            target.call_id(),
            [bufs.request.gpa, 0, 0, 0],
        )
        .map_err(AttestError::Call)?;
    let offered = AttestSizes {
        manifest: u64::from(regions.manifest.size),
        certificates: u64::from(regions.certificates.size),
        report: u64::from(regions.report.size),
    };
    let got = decode_result(out.rax, out.rcx, out.rdx, out.r8, offered)?;
    // Each length is at most a buffer length (a usize), checked by decode_result.
    let len = |n: u64| usize::try_from(n).map_err(|_| AttestError::BufferTooLarge);
    Ok(Evidence {
        report_len: len(got.report)?,
        manifest_len: len(got.manifest)?,
        certificates_len: len(got.certificates)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::CallOutcome;
    use nitride_protocol::attest::VHSM_SERVICE_GUID;
    use nitride_protocol::svsm::CallRegs;
    use zerocopy::FromBytes;

    /// Plays the SVSM: checks the request it is handed (through a copy the test
    /// gives it, standing in for guest memory) and answers with fixed sizes.
    struct FakeSvsm {
        seen: Option<CallRegs>,
        needed: AttestSizes,
        answer_busy_once: bool,
    }

    impl Transport for FakeSvsm {
        fn call(&mut self, regs: CallRegs) -> CallOutcome {
            if self.answer_busy_once {
                self.answer_busy_once = false;
                return CallOutcome {
                    regs: CallRegs {
                        rax: ResultCode::Busy.raw(),
                        ..regs
                    },
                    still_pending: false,
                };
            }
            self.seen = Some(regs);
            CallOutcome {
                regs: CallRegs {
                    rax: 0,
                    rcx: self.needed.manifest,
                    rdx: self.needed.certificates,
                    r8: self.needed.report,
                    r9: 0,
                },
                still_pending: false,
            }
        }
    }

    #[test]
    fn request_is_built_in_caller_memory_and_result_decoded() {
        let (mut req, mut nonce, mut report, mut manifest, mut certs) =
            ([0u8; 0x58], [0u8; 64], [0u8; 0x4A0], [0u8; 256], [0u8; 512]);
        let mut bufs = AttestBuffers {
            request: GuestBuf {
                bytes: &mut req,
                gpa: 0x1000,
            },
            nonce: GuestBuf {
                bytes: &mut nonce,
                gpa: 0x2000,
            },
            report: GuestBuf {
                bytes: &mut report,
                gpa: 0x3000,
            },
            manifest: GuestBuf {
                bytes: &mut manifest,
                gpa: 0x4000,
            },
            certificates: Some(GuestBuf {
                bytes: &mut certs,
                gpa: 0x5000,
            }),
        };
        let mut svsm = SvsmClient::new(FakeSvsm {
            seen: None,
            needed: AttestSizes {
                manifest: 100,
                certificates: 200,
                report: 0x4A0,
            },
            answer_busy_once: true,
        });
        let target = Target::SingleService {
            guid: VHSM_SERVICE_GUID,
            manifest_version: 3,
        };
        let fresh = [0x5Au8; 64];
        let ev = attest(&mut svsm, target, &fresh, &mut bufs).unwrap();
        assert_eq!(
            ev,
            Evidence {
                report_len: 0x4A0,
                manifest_len: 100,
                certificates_len: 200
            }
        );
        let regs = svsm.transport().seen.unwrap();
        assert_eq!(regs.rax, (1 << 32) | 1);
        assert_eq!(regs.rcx, 0x1000);
        let r = SingleServiceRequest::read_from_bytes(&bufs.request.bytes[..]).unwrap();
        assert_eq!(
            (r.base.report.gpa.get(), r.base.report.size.get()),
            (0x3000, 0x4A0)
        );
        assert_eq!(
            (r.base.nonce.gpa.get(), r.base.nonce.size.get()),
            (0x2000, 64)
        );
        assert_eq!(
            (r.base.manifest.gpa.get(), r.base.manifest.size.get()),
            (0x4000, 256)
        );
        assert_eq!(
            (
                r.base.certificates.gpa.get(),
                r.base.certificates.size.get()
            ),
            (0x5000, 512)
        );
        assert_eq!(r.service_guid, VHSM_SERVICE_GUID);
        assert_eq!(r.manifest_version.get(), 3);
        assert_eq!(bufs.nonce.bytes[..], fresh[..]);

        // No certificates: size 0, services request (0x40 bytes, call 0).
        bufs.certificates = None;
        svsm.transport().needed.certificates = 0;
        attest(&mut svsm, Target::Services, &fresh, &mut bufs).unwrap();
        assert_eq!(svsm.transport().seen.unwrap().rax, 1 << 32);
        let r = ServicesRequest::read_from_bytes(&bufs.request.bytes[..0x40]).unwrap();
        assert_eq!(
            (r.certificates.gpa.get(), r.certificates.size.get()),
            (0, 0)
        );

        // A claim beyond the buffers is refused.
        svsm.transport().needed.manifest = 257;
        assert!(matches!(
            attest(&mut svsm, Target::Services, &fresh, &mut bufs),
            Err(AttestError::BadLengths { .. })
        ));
        // A nonce buffer that cannot hold the nonce.
        let mut small = [0u8; 63];
        bufs.nonce = GuestBuf {
            bytes: &mut small,
            gpa: 0x2000,
        };
        assert_eq!(
            attest(&mut svsm, Target::Services, &fresh, &mut bufs),
            Err(AttestError::NonceBufferTooSmall {
                len: 63,
                needed: 64
            })
        );
    }

    #[test]
    fn size_negotiation_and_errors() {
        let offered = AttestSizes {
            manifest: 16,
            certificates: 0,
            report: 0x4A0,
        };
        let inval = ResultCode::InvalidParameter.raw();
        assert_eq!(
            decode_result(inval, 900, 0, 0x4A0, offered),
            Err(AttestError::BuffersTooSmall {
                manifest: 900,
                certificates: 0,
                report: 0x4A0
            })
        );
        // INVALID_PARAMETER whose sizes all fit is a plain invalid parameter.
        assert_eq!(
            decode_result(inval, 16, 0, 0x4A0, offered),
            Err(AttestError::Call(CallError::Svsm(
                ResultCode::InvalidParameter
            )))
        );
        assert_eq!(
            decode_result(ResultCode::UnsupportedProtocol.raw(), 0, 0, 0, offered),
            Err(AttestError::Call(CallError::Svsm(
                ResultCode::UnsupportedProtocol
            )))
        );
        assert_eq!(
            decode_result(0x8000_1000, 0, 0, 0, offered),
            Err(AttestError::Call(CallError::Other(0x8000_1000)))
        );
        assert_eq!(
            decode_result(0, 10, 0, 0x4A0, offered),
            Ok(AttestSizes {
                manifest: 10,
                certificates: 0,
                report: 0x4A0
            })
        );
        let mut small = [0u8; 0x40];
        let t = Target::SingleService {
            guid: [0; 16],
            manifest_version: 0,
        };
        assert_eq!(
            encode_request(t, &Regions::default(), &mut small),
            Err(AttestError::RequestBufferTooSmall {
                len: 0x40,
                needed: 0x58
            })
        );
        assert_eq!(
            encode_request(Target::Services, &Regions::default(), &mut small),
            Ok(0x40)
        );
    }
}
