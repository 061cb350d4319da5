//! The digest of the SVSM's own code and read-only data, which the SVSM computes at
//! boot (read back from memory) and again when its request loop ends, to show that
//! neither changed while it ran. The launch digest a relying party checks is the
//! PSP's, over the whole IGVM image (`docs/real-snp.md`); this one is for the log.
//! Definition:
//!
//! ```text
//! svsm_digest  = SHA-384( for each non-writable PT_LOAD segment of the SVSM ELF
//!                         (memsz > 0), in increasing address order:
//!                           u64 LE vaddr || u64 LE memsz || memsz bytes as loaded )
//! ```

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
    fn hex_is_lower_case_and_whole() {
        assert_eq!(&hex(&[0xAB; 48])[..4], "abab");
        assert_eq!(hex(&[0x01; 48]).len(), 96);
    }
}
