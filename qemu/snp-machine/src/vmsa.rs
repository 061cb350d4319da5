//! The VMSA (`struct sev_es_save_area`, Linux arch/x86/include/asm/svm.h; AMD APM
//! vol. 2, SEV-ES save area): the page that holds a VMPL's whole register state while
//! it does not run. Its first 0x270 bytes have the layout of a VMCB save area (at
//! VMCB offset 0x400), which is how the machine moves state in and out of VMRUN.

/// Field offsets in the VMSA.
pub mod off {
    /// ES selector (segments are 16 bytes: selector, attrib, limit, base).
    pub const ES: usize = 0x000;
    /// CS.
    pub const CS: usize = 0x010;
    /// SS.
    pub const SS: usize = 0x020;
    /// DS.
    pub const DS: usize = 0x030;
    /// FS.
    pub const FS: usize = 0x040;
    /// GS.
    pub const GS: usize = 0x050;
    /// GDTR.
    pub const GDTR: usize = 0x060;
    /// LDTR.
    pub const LDTR: usize = 0x070;
    /// IDTR.
    pub const IDTR: usize = 0x080;
    /// TR.
    pub const TR: usize = 0x090;
    /// VMPL this VMSA belongs to.
    pub const VMPL: usize = 0x0CA;
    /// CPL.
    pub const CPL: usize = 0x0CB;
    /// EFER.
    pub const EFER: usize = 0x0D0;
    /// XSS.
    pub const XSS: usize = 0x140;
    /// CR4.
    pub const CR4: usize = 0x148;
    /// CR3.
    pub const CR3: usize = 0x150;
    /// CR0.
    pub const CR0: usize = 0x158;
    /// DR7.
    pub const DR7: usize = 0x160;
    /// DR6.
    pub const DR6: usize = 0x168;
    /// RFLAGS.
    pub const RFLAGS: usize = 0x170;
    /// RIP.
    pub const RIP: usize = 0x178;
    /// DR0 (DR1..DR3 follow).
    pub const DR0: usize = 0x180;
    /// RSP.
    pub const RSP: usize = 0x1D8;
    /// RAX.
    pub const RAX: usize = 0x1F8;
    /// CR2.
    pub const CR2: usize = 0x240;
    /// PAT.
    pub const G_PAT: usize = 0x268;
    /// RCX (then RDX, RBX, a reserved word, RBP, RSI, RDI, R8..R15).
    pub const RCX: usize = 0x308;
    /// RDX.
    pub const RDX: usize = 0x310;
    /// RBX.
    pub const RBX: usize = 0x318;
    /// R8.
    pub const R8: usize = 0x340;
    /// R9.
    pub const R9: usize = 0x348;
    /// SEV features.
    pub const SEV_FEATURES: usize = 0x3B0;
    /// XCR0.
    pub const XCR0: usize = 0x3E8;
    /// MXCSR.
    pub const MXCSR: usize = 0x408;
    /// x87 FCW.
    pub const X87_FCW: usize = 0x410;
    /// End of `struct sev_es_save_area`.
    pub const END: usize = 0x670;
}

/// The part of the VMSA with the layout of the VMCB save area, moved in and out of
/// the VMCB around each run (segments through PAT).
pub const VMCB_SAVE_LEN: usize = 0x270;
/// The VMCB save area's offset in the VMCB.
pub const VMCB_SAVE_OFFSET: usize = 0x400;

/// The general-purpose registers kept in the VMSA but not in the VMCB, in VMSA order
/// from [`off::RCX`] (the slot at 0x320 is reserved: RSP lives at 0x1D8).
pub const GPR_SLOTS: [usize; 14] = [
    0x308, 0x310, 0x318, 0x328, 0x330, 0x338, 0x340, 0x348, 0x350, 0x358, 0x360, 0x368, 0x370,
    0x378,
];

/// A little-endian u64 at `at`.
pub fn get64(page: &[u8; 4096], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&page[at..at + 8]);
    u64::from_le_bytes(b)
}

/// Store a little-endian u64 at `at`.
pub fn put64(page: &mut [u8; 4096], at: usize, v: u64) {
    page[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Why a launch VMSA was refused: QEMU (10.1 and later) refuses an IGVM VMSA with
/// fields KVM does not keep in step, KVM launches only 32-bit or real-mode starts,
/// and the VMSA KVM measures holds its own values for the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmsaError {
    /// A field KVM does not set from QEMU is not zero (the offset of its first byte).
    UnsupportedField(usize),
    /// CR0 is not 0x30 (real mode) or 0x31 (protected mode, no paging).
    Cr0(u64),
    /// A field KVM writes itself holds another value (offset, value found).
    KvmValue(usize, u64),
    /// `vmpl` is not 0: the launch VMSA is the boot processor's at VMPL0.
    Vmpl(u8),
    /// `sev_features` asks for features this machine does not offer.
    SevFeatures(u64),
}

impl core::fmt::Display for VmsaError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnsupportedField(o) => write!(
                f,
                "VMSA field at {o:#x} is not zero (KVM does not launch it; QEMU refuses it)"
            ),
            Self::Cr0(v) => write!(f, "VMSA CR0 {v:#x}: KVM launches only CR0 0x30 or 0x31"),
            Self::KvmValue(o, v) => write!(
                f,
                "VMSA field at {o:#x} is {v:#x}, not the value KVM puts into a launched VMSA"
            ),
            Self::Vmpl(v) => write!(f, "launch VMSA for VMPL{v}: it must be VMPL0's"),
            Self::SevFeatures(v) => write!(
                f,
                "VMSA sev_features {v:#x}: this machine offers only SNPActive (1)"
            ),
        }
    }
}

/// Byte ranges of the fields KVM takes from QEMU's IGVM VMSA: segments and
/// descriptor tables, EFER, CR0/3/4, XCR0, DR6/DR7, RFLAGS, RIP, RSP, RAX and the
/// other GPRs, PAT, x87 FCW, MXCSR, `sev_features` and `vmpl`.
const KVM_FIELDS: [(usize, usize); 16] = [
    (0x000, 0x0A0),
    (off::VMPL, 1),
    (off::EFER, 8),
    (off::CR4, 8),
    (off::CR3, 8),
    (off::CR0, 8),
    (off::DR7, 8),
    (off::DR6, 8),
    (off::RFLAGS, 8),
    (off::RIP, 8),
    (off::RSP, 8),
    (off::RAX, 8),
    (off::G_PAT, 8),
    (0x308, 0x78),
    (off::SEV_FEATURES, 8),
    (off::XCR0, 8),
];

/// Check the launch VMSA of an IGVM file against the rules of a KVM launch.
pub fn check_launch_vmsa(page: &[u8; 4096]) -> Result<(), VmsaError> {
    let mut rest = *page;
    for (at, len) in KVM_FIELDS {
        rest[at..at + len].fill(0);
    }
    rest[off::MXCSR..off::MXCSR + 4].fill(0);
    rest[off::X87_FCW..off::X87_FCW + 2].fill(0);
    if let Some(i) = rest.iter().position(|&b| b != 0) {
        return Err(VmsaError::UnsupportedField(i));
    }
    if page[off::VMPL] != 0 {
        return Err(VmsaError::Vmpl(page[off::VMPL]));
    }
    let cr0 = get64(page, off::CR0);
    if cr0 != 0x30 && cr0 != 0x31 {
        return Err(VmsaError::Cr0(cr0));
    }
    let features = get64(page, off::SEV_FEATURES);
    if features != crate::SEV_FEATURES {
        return Err(VmsaError::SevFeatures(features));
    }
    let u32_at = |at: usize| {
        u64::from(u32::from_le_bytes([
            page[at],
            page[at + 1],
            page[at + 2],
            page[at + 3],
        ]))
    };
    let u16_at = |at: usize| u64::from(u16::from_le_bytes([page[at], page[at + 1]]));
    for (at, want, got) in [
        (off::XCR0, 1, get64(page, off::XCR0)),
        (off::X87_FCW, 0x37F, u16_at(off::X87_FCW)),
        (off::MXCSR, 0x1F80, u32_at(off::MXCSR)),
        (off::G_PAT, 0x0007_0406_0007_0406, get64(page, off::G_PAT)),
        (off::DR6, 0xFFFF_0FF0, get64(page, off::DR6)),
        (off::DR7, 0x400, get64(page, off::DR7)),
    ] {
        if got != want {
            return Err(VmsaError::KvmValue(at, got));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> [u8; 4096] {
        let mut p = [0u8; 4096];
        put64(&mut p, off::CR0, 0x31);
        put64(&mut p, off::RIP, 0x10_0000);
        put64(&mut p, off::SEV_FEATURES, 1);
        put64(&mut p, off::XCR0, 1);
        p[off::X87_FCW..off::X87_FCW + 2].copy_from_slice(&0x37Fu16.to_le_bytes());
        p[off::MXCSR..off::MXCSR + 4].copy_from_slice(&0x1F80u32.to_le_bytes());
        put64(&mut p, off::G_PAT, 0x0007_0406_0007_0406);
        put64(&mut p, off::DR6, 0xFFFF_0FF0);
        put64(&mut p, off::DR7, 0x400);
        p
    }

    #[test]
    fn launch_vmsa_rules() {
        assert_eq!(check_launch_vmsa(&good()), Ok(()));
        let mut p = good();
        put64(&mut p, off::CR0, 0x8000_0031);
        assert_eq!(check_launch_vmsa(&p), Err(VmsaError::Cr0(0x8000_0031)));
        let mut p = good();
        put64(&mut p, off::DR0, 5);
        assert_eq!(
            check_launch_vmsa(&p),
            Err(VmsaError::UnsupportedField(off::DR0))
        );
        let mut p = good();
        put64(&mut p, off::CR2, 1);
        assert_eq!(
            check_launch_vmsa(&p),
            Err(VmsaError::UnsupportedField(off::CR2))
        );
        let mut p = good();
        p[off::VMPL] = 1;
        assert_eq!(check_launch_vmsa(&p), Err(VmsaError::Vmpl(1)));
        let mut p = good();
        put64(&mut p, off::SEV_FEATURES, 0x21);
        assert_eq!(check_launch_vmsa(&p), Err(VmsaError::SevFeatures(0x21)));
        let mut p = good();
        put64(&mut p, off::XCR0, 7);
        assert_eq!(
            check_launch_vmsa(&p),
            Err(VmsaError::KvmValue(off::XCR0, 7))
        );
        let mut p = good();
        put64(&mut p, off::DR7, 0x401);
        assert_eq!(
            check_launch_vmsa(&p),
            Err(VmsaError::KvmValue(off::DR7, 0x401))
        );
    }
}
