//! The launch measurement of the emulated platform, computed on the host from the
//! files QEMU boots — independently of the firmware's own computation
//! (`kernel/src/measure.rs`), so that a verifier can predict the MEASUREMENT field
//! of reports. Definition (`docs/emulated-platform.md`, "Launch measurement"):
//!
//! ```text
//! svsm_digest = SHA-384( for each PT_LOAD segment of the SVSM ELF without PF_W,
//!                        memsz > 0, in increasing p_vaddr order:
//!                          u64 LE p_vaddr || u64 LE p_memsz ||
//!                          p_filesz file bytes || (p_memsz - p_filesz) zero bytes )
//! guest_digest = SHA-384(the guest image file, exactly as passed to -initrd)
//! config_digest = SHA-384(the launch configuration file, or the default one's bytes)
//! measurement  = SHA-384(dev_psp::MEASUREMENT_DOMAIN || svsm_digest || guest_digest
//!                        || config_digest)
//! ```

use std::io;
use std::path::Path;

use nitride_protocol::emulated::dev_psp;
use nitride_protocol::launch_config::{self, LaunchConfig};
use sha2::{Digest, Sha384};

const PT_LOAD: u32 = 1;
const PF_W: u32 = 2;

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("SVSM ELF: {what}"))
}

fn field<const N: usize>(b: &[u8], at: usize) -> io::Result<[u8; N]> {
    at.checked_add(N)
        .and_then(|end| b.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| bad("truncated"))
}

fn u16_at(b: &[u8], at: usize) -> io::Result<u16> {
    field(b, at).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], at: usize) -> io::Result<u32> {
    field(b, at).map(u32::from_le_bytes)
}

fn u64_at(b: &[u8], at: usize) -> io::Result<u64> {
    field(b, at).map(u64::from_le_bytes)
}

/// One measured segment: where it is loaded, its size in memory, its file bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasuredSegment {
    /// `p_vaddr` (identity mapped: also where QEMU loads it).
    pub vaddr: u64,
    /// `p_memsz`.
    pub memsz: u64,
    /// The `p_filesz` bytes from the file.
    pub file_bytes: Vec<u8>,
}

/// The non-writable `PT_LOAD` segments of an ELF64 little-endian file, in address
/// order.
pub fn measured_segments(elf: &[u8]) -> io::Result<Vec<MeasuredSegment>> {
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        return Err(bad("not an ELF64 little-endian file"));
    }
    let phoff = usize::try_from(u64_at(elf, 0x20)?).map_err(|_| bad("e_phoff"))?;
    let phentsize = usize::from(u16_at(elf, 0x36)?);
    let phnum = usize::from(u16_at(elf, 0x38)?);
    if phentsize < 56 {
        return Err(bad("e_phentsize"));
    }
    let mut segs = Vec::new();
    for i in 0..phnum {
        let ph = i
            .checked_mul(phentsize)
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(|| bad("program header offset"))?;
        let (p_type, flags) = (u32_at(elf, ph)?, u32_at(elf, ph + 4)?);
        let (offset, vaddr) = (u64_at(elf, ph + 8)?, u64_at(elf, ph + 16)?);
        let (filesz, memsz) = (u64_at(elf, ph + 32)?, u64_at(elf, ph + 40)?);
        if p_type != PT_LOAD || flags & PF_W != 0 || memsz == 0 {
            continue;
        }
        if filesz > memsz {
            return Err(bad("p_filesz > p_memsz"));
        }
        let bytes = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(filesz).ok())
            .and_then(|(o, n)| elf.get(o..o.checked_add(n)?))
            .ok_or_else(|| bad("segment outside the file"))?;
        segs.push(MeasuredSegment {
            vaddr,
            memsz,
            file_bytes: bytes.to_vec(),
        });
    }
    segs.sort_by_key(|s| s.vaddr);
    Ok(segs)
}

/// SHA-384 over the SVSM's measured segments (see the module documentation).
pub fn svsm_digest(elf: &[u8]) -> io::Result<[u8; 48]> {
    let mut h = Sha384::new();
    for s in measured_segments(elf)? {
        h.update(s.vaddr.to_le_bytes());
        h.update(s.memsz.to_le_bytes());
        h.update(&s.file_bytes);
        let mut zeros = s.memsz - s.file_bytes.len() as u64;
        while zeros > 0 {
            let n = zeros.min(4096);
            h.update(&[0u8; 4096][..n as usize]);
            zeros -= n;
        }
    }
    Ok(h.finalize().into())
}

/// The measurement from the three digests.
pub fn combine(
    svsm_digest: &[u8; 48],
    guest_digest: &[u8; 48],
    config_digest: &[u8; 48],
) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(dev_psp::MEASUREMENT_DOMAIN);
    h.update(svsm_digest);
    h.update(guest_digest);
    h.update(config_digest);
    h.finalize().into()
}

/// The launch measurement of booting `svsm_elf` with `guest` as its PVH module and
/// the default launch configuration (none passed).
pub fn launch_measurement(svsm_elf: &Path, guest: &Path) -> io::Result<[u8; 48]> {
    launch_measurement_with(svsm_elf, guest, None)
}

/// The launch measurement of booting `svsm_elf` with `guest` and the launch
/// configuration file `config` (`None`: the default configuration). The file must
/// be a valid configuration: the firmware refuses to start with any other.
pub fn launch_measurement_with(
    svsm_elf: &Path,
    guest: &Path,
    config: Option<&Path>,
) -> io::Result<[u8; 48]> {
    let svsm = svsm_digest(&std::fs::read(svsm_elf)?)?;
    let guest: [u8; 48] = Sha384::digest(std::fs::read(guest)?).into();
    let config = match config {
        None => LaunchConfig::DEFAULT.to_bytes().to_vec(),
        Some(path) => std::fs::read(path)?,
    };
    LaunchConfig::parse(&config)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    Ok(combine(&svsm, &guest, &launch_config::digest(&config)))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A two-segment ELF: a read-only segment with a zero tail, and a writable one.
    fn elf() -> Vec<u8> {
        let mut f = vec![0u8; 0x200];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        let ph =
            |f: &mut Vec<u8>, at: usize, flags: u32, off: u64, vaddr: u64, fs: u64, ms: u64| {
                f[at..at + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
                f[at + 4..at + 8].copy_from_slice(&flags.to_le_bytes());
                f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
                f[at + 16..at + 24].copy_from_slice(&vaddr.to_le_bytes());
                f[at + 32..at + 40].copy_from_slice(&fs.to_le_bytes());
                f[at + 40..at + 48].copy_from_slice(&ms.to_le_bytes());
            };
        ph(&mut f, 64, 6, 0x190, 0x2000, 8, 8);
        ph(&mut f, 120, 5, 0x180, 0x1000, 4, 6);
        f[0x180..0x184].copy_from_slice(b"code");
        f[0x190..0x198].copy_from_slice(b"datadata");
        f
    }

    #[test]
    fn digest_matches_the_definition() {
        let f = elf();
        let segs = measured_segments(&f).unwrap();
        assert_eq!(
            segs,
            [MeasuredSegment {
                vaddr: 0x1000,
                memsz: 6,
                file_bytes: b"code".to_vec()
            }]
        );
        let mut h = Sha384::new();
        h.update(0x1000u64.to_le_bytes());
        h.update(6u64.to_le_bytes());
        h.update(b"code\0\0");
        let want: [u8; 48] = h.finalize().into();
        assert_eq!(svsm_digest(&f).unwrap(), want);
        // The writable segment does not count; the read-only one does.
        let mut g = f.clone();
        g[0x190] = b'X';
        assert_eq!(svsm_digest(&g).unwrap(), want);
        g[0x180] = b'X';
        assert_ne!(svsm_digest(&g).unwrap(), want);
        assert!(svsm_digest(&f[..0x100]).is_err());
        assert!(svsm_digest(b"not an elf").is_err());
    }

    #[test]
    fn combine_is_domain_separated() {
        let (a, b, c) = ([1u8; 48], [2u8; 48], [3u8; 48]);
        let mut h = Sha384::new();
        h.update(b"nitride emulated launch v2\0");
        h.update(a);
        h.update(b);
        h.update(c);
        let want: [u8; 48] = h.finalize().into();
        assert_eq!(combine(&a, &b, &c), want);
        assert_ne!(combine(&b, &a, &c), want);
    }
}
