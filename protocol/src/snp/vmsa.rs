//! The VMSA (`struct sev_es_save_area`, Linux arch/x86/include/asm/svm.h; AMD APM
//! vol. 2, SEV-ES save area): the page that holds a VMPL's whole register state while
//! it does not run. Its first 0x270 bytes have the layout of a VMCB save area (at
//! VMCB offset 0x400). Shared by the virtual SNP machine and the SVSM, which reads
//! and writes its guest's registers here.

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
