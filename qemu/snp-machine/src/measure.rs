//! The launch digest as the PSP chains it (SNP firmware ABI, SNP_LAUNCH_UPDATE):
//! it starts as 48 zero bytes, and each launched page replaces it with SHA-384 of a
//! 0x70-byte PAGE_INFO:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0x00 | 48 | the digest so far |
//! | 0x30 | 48 | contents: SHA-384 of the page (NORMAL, VMSA), else zero |
//! | 0x60 | 2 | length = 0x70 |
//! | 0x62 | 1 | page type |
//! | 0x63 | 1 | IMI page = 0 |
//! | 0x64 | 4 | VMPL3/2/1 permissions and a reserved byte: 0, as KVM launches |
//! | 0x68 | 8 | guest-physical address |

use sha2::{Digest, Sha384};

/// SNP page types.
pub mod page_type {
    /// Measured contents.
    pub const NORMAL: u8 = 1;
    /// A VMSA (measured contents).
    pub const VMSA: u8 = 2;
    /// Zero page.
    pub const ZERO: u8 = 3;
    /// Contents not measured.
    pub const UNMEASURED: u8 = 4;
    /// The secrets page.
    pub const SECRETS: u8 = 5;
    /// The CPUID page.
    pub const CPUID: u8 = 6;
}

/// The running launch digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchDigest([u8; 48]);

impl Default for LaunchDigest {
    fn default() -> Self {
        Self([0; 48])
    }
}

impl LaunchDigest {
    /// Chain one page of `page_type` at `gpa`; `contents` is the page for NORMAL and
    /// VMSA pages (ignored for the others).
    pub fn add(&mut self, page_type: u8, gpa: u64, contents: &[u8; 4096]) {
        let measured: [u8; 48] = match page_type {
            page_type::NORMAL | page_type::VMSA => Sha384::digest(contents).into(),
            _ => [0; 48],
        };
        let mut info = [0u8; 0x70];
        info[..48].copy_from_slice(&self.0);
        info[48..96].copy_from_slice(&measured);
        info[0x60..0x62].copy_from_slice(&0x70u16.to_le_bytes());
        info[0x62] = page_type;
        info[0x68..0x70].copy_from_slice(&gpa.to_le_bytes());
        self.0 = Sha384::digest(info).into();
    }

    /// The digest.
    pub fn value(&self) -> [u8; 48] {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contents_matter_only_for_measured_types() {
        let (a, b) = ([0u8; 4096], [1u8; 4096]);
        for ty in [page_type::NORMAL, page_type::VMSA] {
            let (mut x, mut y) = (LaunchDigest::default(), LaunchDigest::default());
            x.add(ty, 0x1000, &a);
            y.add(ty, 0x1000, &b);
            assert_ne!(x, y);
        }
        for ty in [page_type::UNMEASURED, page_type::SECRETS, page_type::CPUID] {
            let (mut x, mut y) = (LaunchDigest::default(), LaunchDigest::default());
            x.add(ty, 0x1000, &a);
            y.add(ty, 0x1000, &b);
            assert_eq!(x, y);
            let mut z = LaunchDigest::default();
            z.add(ty, 0x2000, &a);
            assert_ne!(x, z, "the address is measured");
        }
    }
}
