//! The launch measurement of the emulated platform: what the emulated PSP puts in
//! the MEASUREMENT field of its reports, standing for the digest a real PSP
//! computes while the host launches the guest. Pure functions; the firmware feeds
//! them its own read-only segments (read back from memory) and the guest image as
//! QEMU passed it. The host computes the same from the files
//! (`nitride_qemu::measure`), independently. Definition (`docs/emulated-platform.md`):
//!
//! ```text
//! svsm_digest  = SHA-384( for each non-writable PT_LOAD segment of the SVSM ELF
//!                         (memsz > 0), in increasing address order:
//!                           u64 LE vaddr || u64 LE memsz || memsz bytes as loaded )
//! guest_digest = SHA-384( the PVH module (guest image) bytes, exactly as passed )
//! config_digest = SHA-384( the launch configuration, as passed in fw_cfg, or the
//!                         default one's 116 bytes when none is )
//! measurement  = SHA-384( dev_psp::MEASUREMENT_DOMAIN || svsm_digest || guest_digest
//!                         || config_digest )
//! ```
//!
//! Only the SVSM's code and read-only data are covered (they never change at run
//! time), and the launch configuration (the vault policy and the owner key); its
//! writable data, its command line and the guest command line are not.

use nitride_protocol::emulated::dev_psp::MEASUREMENT_DOMAIN;
use sha2::{Digest, Sha384};

/// A SHA-384 digest.
pub type Digest384 = [u8; 48];

/// One measured segment of the SVSM image: its load address and its bytes in
/// memory (`memsz` of them, the zero tail included).
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    /// Load address (`p_vaddr`, identity mapped).
    pub vaddr: u64,
    /// The segment's bytes as loaded.
    pub bytes: &'a [u8],
}

/// Why the SVSM digest could not be computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeasureError {
    /// Segments are not in strictly increasing, non-overlapping address order.
    Unordered {
        /// Address of the offending segment.
        vaddr: u64,
    },
}

/// SHA-384 over the SVSM's non-writable segments, given in address order.
pub fn svsm_digest(segments: &[Segment<'_>]) -> Result<Digest384, MeasureError> {
    let mut h = Sha384::new();
    let mut next = 0u64;
    for s in segments.iter().filter(|s| !s.bytes.is_empty()) {
        if s.vaddr < next {
            return Err(MeasureError::Unordered { vaddr: s.vaddr });
        }
        let len = s.bytes.len() as u64;
        next = s
            .vaddr
            .checked_add(len)
            .ok_or(MeasureError::Unordered { vaddr: s.vaddr })?;
        h.update(s.vaddr.to_le_bytes());
        h.update(len.to_le_bytes());
        h.update(s.bytes);
    }
    Ok(h.finalize().into())
}

/// SHA-384 of the guest image.
pub fn guest_digest(image: &[u8]) -> Digest384 {
    Sha384::digest(image).into()
}

/// The launch measurement from the three digests.
pub fn launch_measurement(svsm: &Digest384, guest: &Digest384, config: &Digest384) -> Digest384 {
    let mut h = Sha384::new();
    h.update(MEASUREMENT_DOMAIN);
    h.update(svsm);
    h.update(guest);
    h.update(config);
    h.finalize().into()
}

/// Lower-case hex of a digest, for the boot log.
pub fn hex(d: &Digest384) -> heapless::String<96> {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = heapless::String::new();
    for b in d {
        for nibble in [b >> 4, b & 0xF] {
            // 96 characters exactly fit.
            let _ = s.push(char::from(DIGITS[usize::from(nibble)]));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha384(parts: &[&[u8]]) -> Digest384 {
        let mut h = Sha384::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    #[test]
    fn svsm_digest_follows_the_definition() {
        let segs = [
            Segment {
                vaddr: 0x100_0000,
                bytes: b"text",
            },
            Segment {
                vaddr: 0x100_1000,
                bytes: &[],
            },
            Segment {
                vaddr: 0x100_2000,
                bytes: b"ro\0\0",
            },
        ];
        let want = sha384(&[
            &0x100_0000u64.to_le_bytes(),
            &4u64.to_le_bytes(),
            b"text",
            &0x100_2000u64.to_le_bytes(),
            &4u64.to_le_bytes(),
            b"ro\0\0",
        ]);
        assert_eq!(svsm_digest(&segs), Ok(want));
        // Order matters and is checked; overlaps are refused.
        assert_eq!(
            svsm_digest(&[segs[2], segs[0]]),
            Err(MeasureError::Unordered { vaddr: 0x100_0000 })
        );
        let overlap = Segment {
            vaddr: 0x100_0002,
            bytes: b"xx",
        };
        assert!(svsm_digest(&[segs[0], overlap]).is_err());
        // Any byte, address or length change changes the digest.
        let moved = Segment {
            vaddr: 0x100_3000,
            ..segs[2]
        };
        assert_ne!(svsm_digest(&[segs[0], moved]), Ok(want));
        let shorter = Segment {
            bytes: b"ro\0",
            ..segs[2]
        };
        assert_ne!(svsm_digest(&[segs[0], shorter]), Ok(want));
    }

    #[test]
    fn measurement_is_domain_separated_and_ordered() {
        let (s, g, c) = ([1u8; 48], [2u8; 48], [3u8; 48]);
        let m = launch_measurement(&s, &g, &c);
        assert_eq!(m, sha384(&[b"nitride emulated launch v2\0", &s, &g, &c]));
        assert_ne!(m, launch_measurement(&g, &s, &c));
        assert_ne!(m, launch_measurement(&s, &g, &[4u8; 48]));
        assert_eq!(guest_digest(b"abc"), sha384(&[b"abc"]));
        assert_eq!(&hex(&[0xAB; 48])[..4], "abab");
        assert_eq!(hex(&m).len(), 96);
    }
}
