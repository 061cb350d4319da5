//! The measured launch configuration: the vault policy and the owner's public key,
//! fixed when the VM is launched and covered by its launch digest, so that a
//! report's MEASUREMENT shows which policy the vault enforces and which owner it
//! obeys.
//!
//! One fixed-size, versioned, canonical structure ([`LaunchConfig`], 116 bytes, far
//! under one 4 KiB page). It is a measured page of the IGVM image at
//! [`crate::snp::launch::gpa::VAULT_CONFIG`] ([`LaunchConfig::to_page`],
//! [`LaunchConfig::from_page`]; the default configuration's page when none is
//! given), so the PSP measures it with the rest of the image and `cargo xtask measure
//! --launch-config FILE` prints the launch digest under it (`docs/provisioning.md`,
//! `docs/real-snp.md`). The vHSM manifest reports SHA-384 of its exact bytes
//! ([`digest`]).
//!
//! The decoder is canonical: magic and version exact, reserved bytes zero, no
//! unknown policy bit, the owner key either 97 zero bytes (none) or an uncompressed
//! SEC1 P-384 point (`0x04 || x || y`; the vault checks it is on the curve).

use bitflags::bitflags;
use sha2::{Digest, Sha384};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Magic at offset 0.
pub const MAGIC: [u8; 8] = *b"NTRDLCFG";

/// The version this code writes and reads.
pub const VERSION: u16 = 1;

/// Length of an uncompressed SEC1 P-384 point.
pub const OWNER_KEY_LEN: usize = 97;

/// Size of the encoded configuration.
pub const SIZE: usize = 116;

/// Size of the page that carries it in an SNP image.
pub const PAGE_SIZE: usize = 4096;

bitflags! {
    /// The vault policy the configuration sets (`u32`).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
    pub struct LaunchPolicy: u32 {
        /// Plaintext key material may be imported (`Import`).
        const PLAINTEXT_IMPORT = 1 << 0;
        /// Provisioning accepts secrets that are not signed by an owner key, when
        /// no owner key is configured (such keys get the origin
        /// "provisioned-unauthenticated").
        const UNAUTHENTICATED_PROVISIONING = 1 << 1;
    }
}

/// The encoded layout.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct LaunchConfigRaw {
    /// [`MAGIC`].
    pub magic: [u8; 8],
    /// [`VERSION`].
    pub version: U16,
    /// Zero.
    pub reserved: U16,
    /// [`LaunchPolicy`] bits.
    pub policy: U32,
    /// The owner's P-384 public key, uncompressed SEC1, or all zero for none.
    pub owner_key: [u8; OWNER_KEY_LEN],
    /// Zero.
    pub reserved2: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<LaunchConfigRaw>() == SIZE);

/// A decoded launch configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchConfig {
    /// The vault policy.
    pub policy: LaunchPolicy,
    /// The owner's P-384 public key (uncompressed SEC1), if one is configured.
    pub owner_key: Option<[u8; OWNER_KEY_LEN]>,
}

/// Why a configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LaunchConfigError {
    /// Not exactly [`SIZE`] bytes.
    Length,
    /// Wrong magic.
    Magic,
    /// A version other than [`VERSION`].
    Version,
    /// A reserved byte is set.
    Reserved,
    /// An undefined policy bit is set.
    Policy,
    /// The owner key is neither all zero nor an uncompressed point.
    OwnerKey,
}

impl core::fmt::Display for LaunchConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Length => "launch configuration: not 116 bytes (4096 for an SNP image's page)",
            Self::Magic => "launch configuration: magic is not NTRDLCFG",
            Self::Version => "launch configuration: version is not 1",
            Self::Reserved => "launch configuration: a reserved byte is set",
            Self::Policy => "launch configuration: unknown policy bit",
            Self::OwnerKey => {
                "launch configuration: owner key is neither zero nor an uncompressed P-384 point"
            }
        })
    }
}

impl LaunchConfig {
    /// What a launch without a configuration gets: everything refused, no owner.
    pub const DEFAULT: Self = Self {
        policy: LaunchPolicy::empty(),
        owner_key: None,
    };

    /// Decode `bytes` (exactly [`SIZE`] of them).
    pub fn parse(bytes: &[u8]) -> Result<Self, LaunchConfigError> {
        let raw = LaunchConfigRaw::read_from_bytes(bytes).map_err(|_| LaunchConfigError::Length)?;
        if raw.magic != MAGIC {
            return Err(LaunchConfigError::Magic);
        }
        if raw.version.get() != VERSION {
            return Err(LaunchConfigError::Version);
        }
        if raw.reserved.get() != 0 || raw.reserved2 != [0; 3] {
            return Err(LaunchConfigError::Reserved);
        }
        let policy = LaunchPolicy::from_bits(raw.policy.get()).ok_or(LaunchConfigError::Policy)?;
        let owner_key = if raw.owner_key == [0; OWNER_KEY_LEN] {
            None
        } else if raw.owner_key[0] == 0x04 {
            Some(raw.owner_key)
        } else {
            return Err(LaunchConfigError::OwnerKey);
        };
        Ok(Self { policy, owner_key })
    }

    /// Decode the configuration page of an SNP image (4096 bytes: the encoding then
    /// zeros, or all zero for [`LaunchConfig::DEFAULT`]) and the digest the vHSM
    /// manifest reports: that of the encoding (of the default's for a zero page).
    pub fn from_page(page: &[u8]) -> Result<(Self, [u8; 48]), LaunchConfigError> {
        if page.len() != PAGE_SIZE {
            return Err(LaunchConfigError::Length);
        }
        if page.iter().all(|&b| b == 0) {
            return Ok((Self::DEFAULT, Self::DEFAULT.digest()));
        }
        let (encoded, rest) = page.split_at(SIZE);
        if rest.iter().any(|&b| b != 0) {
            return Err(LaunchConfigError::Reserved);
        }
        Ok((Self::parse(encoded)?, digest(encoded)))
    }

    /// The page [`LaunchConfig::from_page`] reads: the encoding, then zeros.
    pub fn to_page(&self) -> [u8; PAGE_SIZE] {
        let mut page = [0u8; PAGE_SIZE];
        page[..SIZE].copy_from_slice(&self.to_bytes());
        page
    }

    /// Encode.
    pub fn to_bytes(&self) -> [u8; SIZE] {
        let raw = LaunchConfigRaw {
            magic: MAGIC,
            version: U16::new(VERSION),
            reserved: U16::new(0),
            policy: U32::new(self.policy.bits()),
            owner_key: self.owner_key.unwrap_or([0; OWNER_KEY_LEN]),
            reserved2: [0; 3],
        };
        let mut out = [0u8; SIZE];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// SHA-384 of the encoding: what the launch measurement folds in and the vHSM
    /// manifest reports.
    pub fn digest(&self) -> [u8; 48] {
        digest(&self.to_bytes())
    }
}

/// SHA-384 of an encoded configuration.
pub fn digest(encoded: &[u8]) -> [u8; 48] {
    Sha384::digest(encoded).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_is_canonical() {
        let mut key = [7u8; OWNER_KEY_LEN];
        key[0] = 4;
        for c in [
            LaunchConfig::DEFAULT,
            LaunchConfig {
                policy: LaunchPolicy::all(),
                owner_key: Some(key),
            },
        ] {
            let b = c.to_bytes();
            assert_eq!(LaunchConfig::parse(&b), Ok(c));
            assert_eq!(LaunchConfig::parse(&b).unwrap().to_bytes(), b);
            assert_eq!(c.digest(), digest(&b));
        }
        let good = LaunchConfig {
            policy: LaunchPolicy::PLAINTEXT_IMPORT,
            owner_key: Some(key),
        }
        .to_bytes();
        assert_eq!(&good[..8], b"NTRDLCFG");
        let bad = |at: usize, v: u8| {
            let mut b = good;
            b[at] = v;
            LaunchConfig::parse(&b)
        };
        assert_eq!(bad(0, b'X'), Err(LaunchConfigError::Magic));
        assert_eq!(bad(8, 2), Err(LaunchConfigError::Version));
        assert_eq!(bad(10, 1), Err(LaunchConfigError::Reserved));
        assert_eq!(bad(113, 1), Err(LaunchConfigError::Reserved));
        assert_eq!(bad(12, 4), Err(LaunchConfigError::Policy));
        assert_eq!(bad(16, 2), Err(LaunchConfigError::OwnerKey));
        assert_eq!(
            LaunchConfig::parse(&good[..SIZE - 1]),
            Err(LaunchConfigError::Length)
        );
        assert_eq!(
            LaunchConfig::parse(&[&good[..], &[0]].concat()),
            Err(LaunchConfigError::Length)
        );
        // The SNP image's page: the encoding then zeros; zero is the default.
        let (c, d) =
            LaunchConfig::from_page(&LaunchConfig::parse(&good).unwrap().to_page()).unwrap();
        assert_eq!((c.to_bytes(), d), (good, digest(&good)));
        assert_eq!(
            LaunchConfig::from_page(&[0; PAGE_SIZE]),
            Ok((LaunchConfig::DEFAULT, LaunchConfig::DEFAULT.digest()))
        );
        let mut page = LaunchConfig::DEFAULT.to_page();
        page[SIZE] = 1;
        assert_eq!(
            LaunchConfig::from_page(&page),
            Err(LaunchConfigError::Reserved)
        );
        page[SIZE] = 0;
        page[0] = b'X';
        assert_eq!(
            LaunchConfig::from_page(&page),
            Err(LaunchConfigError::Magic)
        );
        assert_eq!(
            LaunchConfig::from_page(&page[..SIZE]),
            Err(LaunchConfigError::Length)
        );
        // Any change of the policy or the key changes the digest.
        assert_ne!(
            LaunchConfig::DEFAULT.digest(),
            LaunchConfig {
                policy: LaunchPolicy::UNAUTHENTICATED_PROVISIONING,
                owner_key: None
            }
            .digest()
        );
    }
}
