//! SEV-SNP layouts: the attestation report, the certificate table returned with an
//! extended guest request, and the guest messages exchanged with the PSP
//! (`shared/REFERENCE.md` sections 5 and 6); the GHCB protocol and the VMSA
//! (section 8); and the guest-physical layout of Nitride's IGVM images with the
//! measured launch configuration the SVSM boots from ([`launch`]).
//!
//! All multi-byte integers are little-endian; the layouts use zerocopy's
//! little-endian integer types so they are `Unaligned` and can be viewed in place
//! from any byte buffer, on any host.

pub mod certs;
pub mod ghcb;
pub mod launch;
pub mod msg;
pub mod report;
pub mod vmsa;

pub use certs::{CertKind, CertTableEntry, CertTableError, CertTableIter};
pub use report::{
    AttestationReport, Generation, PlatformInfo, Policy, ReportError, SignerInfo, SigningKey,
    SnpSignature, Tcb, TcbLayout,
};

/// An EFI GUID as stored on the wire (mixed-endian UEFI byte order).
pub type Guid = [u8; 16];

/// Build the wire bytes of a GUID from its textual fields
/// (`d1-d2-d3-d4[0..2]-d4[2..8]`): the first three fields little-endian, the rest as is.
pub const fn guid(d1: u32, d2: u16, d3: u16, d4: [u8; 8]) -> Guid {
    let a = d1.to_le_bytes();
    let b = d2.to_le_bytes();
    let c = d3.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d4[0], d4[1], d4[2], d4[3], d4[4], d4[5],
        d4[6], d4[7],
    ]
}
