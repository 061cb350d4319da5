//! What the guest learns about the machine: the CPUID values it is given (through
//! #VC and the GHCB, the MSR protocol, and the CPUID page the PSP checks), and the
//! secrets page the PSP fills at launch.
//!
//! CPUID is the real processor's (QEMU's `-cpu max`) with the changes an SEV-SNP
//! host makes: leaf 0x8000_001F describes SEV, SEV-ES, SEV-SNP and VMPLs with the
//! machine's C-bit; SVM is hidden (no nested virtualisation in an SNP guest); the
//! XSAVE features are cut to x87, SSE and AVX (what the machine swaps per VMPL).

use crate::C_BIT;

/// XCR0 bits the machine lets a guest enable: x87, SSE, AVX.
pub const XCR0_SUPPORTED: u64 = 0b111;

/// The value of leaf `leaf`, subleaf `sub` the guest sees, given what the real
/// processor returns (`real`) and, for leaf 0xD, the guest's XCR0.
pub fn model(leaf: u32, sub: u32, xcr0: u64, real: impl Fn(u32, u32) -> [u32; 4]) -> [u32; 4] {
    let max_ext = real(0x8000_0000, 0)[0];
    match leaf {
        0x8000_0000 => {
            let mut r = real(leaf, 0);
            r[0] = r[0].max(0x8000_001F);
            r
        }
        0x8000_0001 => {
            let mut r = real(leaf, sub);
            r[2] &= !(1 << 2); // SVM
            r
        }
        0x8000_000A => [0; 4],
        0x8000_001F => [
            (1 << 1) | (1 << 3) | (1 << 4) | (1 << 5), // SEV, SEV-ES, SEV-SNP, VMPL
            C_BIT | (1 << 6) | (4 << 12),              // C-bit, reduction 1, 4 VMPLs
            1,
            1,
        ],
        0x8000_0002..=0x8000_001E if leaf > max_ext => [0; 4],
        0xD => {
            let r = real(0xD, sub);
            let supported =
                (u64::from(real(0xD, 0)[0]) | u64::from(real(0xD, 0)[3]) << 32) & XCR0_SUPPORTED;
            let avx = supported & 4 != 0;
            match sub {
                0 => [
                    supported as u32,
                    if xcr0 & 4 != 0 && avx { 832 } else { 576 },
                    if avx { 832 } else { 576 },
                    0,
                ],
                1 => [r[0] & 1, 0, 0, 0],
                2 if avx => r,
                _ => [0; 4],
            }
        }
        _ => real(leaf, sub),
    }
}

/// The leaves and subleaves put into the CPUID page.
pub fn page_leaves(real: impl Fn(u32, u32) -> [u32; 4]) -> alloc::vec::Vec<(u32, u32)> {
    let mut v = alloc::vec::Vec::new();
    let max_basic = real(0, 0)[0].min(0x1F);
    for leaf in 0..=max_basic {
        match leaf {
            4 => (0..8).for_each(|s| v.push((leaf, s))),
            7 => (0..=real(7, 0)[0].min(2)).for_each(|s| v.push((leaf, s))),
            0xB => (0..2).for_each(|s| v.push((leaf, s))),
            0xD => (0..3).for_each(|s| v.push((leaf, s))),
            _ => v.push((leaf, 0)),
        }
    }
    for leaf in 0x8000_0000..=0x8000_001F {
        v.push((leaf, 0));
    }
    v.truncate(MAX_PAGE_ENTRIES);
    v
}

/// Entries a CPUID page holds.
pub const MAX_PAGE_ENTRIES: usize = 64;

/// The CPUID page (SNP ABI: u32 count, 12 reserved bytes, then 48-byte entries
/// {eax_in, ecx_in, xcr0_in (u64), xss_in (u64), eax, ebx, ecx, edx, reserved u64}).
pub fn cpuid_page(real: impl Fn(u32, u32) -> [u32; 4] + Copy) -> [u8; 4096] {
    let mut page = [0u8; 4096];
    let leaves = page_leaves(real);
    page[..4].copy_from_slice(&(leaves.len() as u32).to_le_bytes());
    for (i, (leaf, sub)) in leaves.into_iter().enumerate() {
        let e = &mut page[16 + i * 48..16 + (i + 1) * 48];
        e[0..4].copy_from_slice(&leaf.to_le_bytes());
        e[4..8].copy_from_slice(&sub.to_le_bytes());
        let xcr0_in: u64 = if leaf == 0xD { 1 } else { 0 };
        e[8..16].copy_from_slice(&xcr0_in.to_le_bytes());
        let r = model(leaf, sub, xcr0_in, real);
        for (k, reg) in r.iter().enumerate() {
            e[24 + 4 * k..28 + 4 * k].copy_from_slice(&reg.to_le_bytes());
        }
    }
    page
}

/// The secrets page (SNP ABI, Linux `struct snp_secrets_page`): version 3, FMS (CPUID
/// 1 EAX of the chip), VMPCK0..3 at 0x20/0x40/0x60/0x80, the rest zero.
pub fn secrets_page(vmpcks: &[[u8; 32]; 4], fam_mod_step: [u8; 3]) -> [u8; 4096] {
    let mut p = [0u8; 4096];
    p[..4].copy_from_slice(&3u32.to_le_bytes());
    let [family, model, stepping] = fam_mod_step.map(u32::from);
    let (base_fam, ext_fam) = if family > 0xF {
        (0xF, family - 0xF)
    } else {
        (family, 0)
    };
    let fms =
        (stepping & 0xF) | (model & 0xF) << 4 | base_fam << 8 | (model >> 4) << 16 | ext_fam << 20;
    p[8..12].copy_from_slice(&fms.to_le_bytes());
    for (i, k) in vmpcks.iter().enumerate() {
        p[0x20 + 32 * i..0x40 + 32 * i].copy_from_slice(k);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real(leaf: u32, sub: u32) -> [u32; 4] {
        match (leaf, sub) {
            (0, _) => [0xD, 0, 0, 0],
            (0x8000_0000, _) => [0x8000_0008, 0, 0, 0],
            (0x8000_0001, _) => [0, 0, 0xFFFF_FFFF, 0],
            (0xD, 0) => [0x2E7, 0x340, 0xA88, 0],
            (0xD, 2) => [256, 576, 0, 0],
            (7, 0) => [0, 1, 2, 3],
            _ => [leaf, sub, 7, 7],
        }
    }

    #[test]
    fn model_changes() {
        assert_eq!(model(0x8000_0000, 0, 1, real)[0], 0x8000_001F);
        assert_eq!(model(0x8000_0001, 0, 1, real)[2] & 4, 0);
        let f = model(0x8000_001F, 0, 1, real);
        assert_eq!((f[0] >> 4) & 1, 1);
        assert_eq!(f[1] & 0x3F, 47);
        assert_eq!(model(0x8000_0010, 0, 1, real), [0; 4]);
        assert_eq!(model(0xD, 0, 1, real), [7, 576, 832, 0]);
        assert_eq!(model(0xD, 0, 7, real), [7, 832, 832, 0]);
        assert_eq!(model(0xD, 5, 7, real), [0; 4]);
    }

    #[test]
    fn pages() {
        let page = cpuid_page(real);
        let count = u32::from_le_bytes(page[..4].try_into().unwrap()) as usize;
        assert!(count > 30 && count <= MAX_PAGE_ENTRIES);
        let s = secrets_page(&[[1; 32], [2; 32], [3; 32], [4; 32]], [0x19, 0x11, 0x01]);
        assert_eq!(
            u32::from_le_bytes(s[8..12].try_into().unwrap()),
            0x00A1_0F11
        );
        assert_eq!(&s[0x40..0x60], &[2; 32]);
    }
}
