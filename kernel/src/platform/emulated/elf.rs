//! Reading the guest image: a static x86-64 ELF executable whose loadable segments
//! go to their physical addresses in guest RAM.
//!
//! Only parses and checks; the platform copies the segments through checked guest
//! ranges. The image is host-supplied, so every field is checked: sizes inside the
//! file, no arithmetic overflow, a bounded number of segments.

use heapless::Vec;

/// Most loadable segments accepted.
pub const MAX_SEGMENTS: usize = 16;

/// A loadable segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offset of the segment's bytes in the file.
    pub offset: u64,
    /// Bytes present in the file.
    pub file_size: u64,
    /// Guest-physical load address.
    pub paddr: u64,
    /// Bytes in memory (the rest after `file_size` is zero).
    pub mem_size: u64,
}

/// A parsed image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Entry point (guest-physical, identity mapped).
    pub entry: u64,
    /// Loadable segments.
    pub segments: Vec<Segment, MAX_SEGMENTS>,
}

/// Why an image was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    /// Shorter than its headers say.
    Truncated,
    /// Not a little-endian 64-bit ELF.
    NotElf64,
    /// Not an x86-64 executable.
    WrongMachineOrType,
    /// Program-header size is not 56.
    BadPhentsize,
    /// More than [`MAX_SEGMENTS`] loadable segments.
    TooManySegments,
    /// A segment's numbers overflow or its file part lies outside the file.
    BadSegment,
    /// No loadable segment.
    NoSegments,
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, ElfError> {
    let s = b.get(off..off + 2).ok_or(ElfError::Truncated)?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, ElfError> {
    let s = b.get(off..off + 4).ok_or(ElfError::Truncated)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Ok(u32::from_le_bytes(a))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, ElfError> {
    let s = b.get(off..off + 8).ok_or(ElfError::Truncated)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Ok(u64::from_le_bytes(a))
}

const PT_LOAD: u32 = 1;
const ET_EXEC: u16 = 2;
const EM_X86_64: u16 = 62;
const PHENT_SIZE: u16 = 56;

/// Parse an image.
pub fn parse(file: &[u8]) -> Result<Image, ElfError> {
    let ident = file.get(..16).ok_or(ElfError::Truncated)?;
    // Magic, ELFCLASS64, ELFDATA2LSB.
    if ident[..4] != *b"\x7fELF" || ident[4] != 2 || ident[5] != 1 {
        return Err(ElfError::NotElf64);
    }
    if u16_at(file, 0x10)? != ET_EXEC || u16_at(file, 0x12)? != EM_X86_64 {
        return Err(ElfError::WrongMachineOrType);
    }
    let entry = u64_at(file, 0x18)?;
    let phoff = u64_at(file, 0x20)?;
    if u16_at(file, 0x36)? != PHENT_SIZE {
        return Err(ElfError::BadPhentsize);
    }
    let phnum = u16_at(file, 0x38)?;
    let mut segments = Vec::new();
    for i in 0..u64::from(phnum) {
        let at = i
            .checked_mul(u64::from(PHENT_SIZE))
            .and_then(|o| o.checked_add(phoff))
            .and_then(|o| usize::try_from(o).ok())
            .ok_or(ElfError::Truncated)?;
        if u32_at(file, at)? != PT_LOAD {
            continue;
        }
        let seg = Segment {
            offset: u64_at(file, at + 0x08)?,
            paddr: u64_at(file, at + 0x18)?,
            file_size: u64_at(file, at + 0x20)?,
            mem_size: u64_at(file, at + 0x28)?,
        };
        let file_end = seg
            .offset
            .checked_add(seg.file_size)
            .ok_or(ElfError::BadSegment)?;
        if file_end > file.len() as u64
            || seg.mem_size < seg.file_size
            || seg.paddr.checked_add(seg.mem_size).is_none()
        {
            return Err(ElfError::BadSegment);
        }
        if seg.mem_size == 0 {
            continue;
        }
        segments.push(seg).map_err(|_| ElfError::TooManySegments)?;
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    Ok(Image { entry, segments })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec as StdVec;

    fn image(segs: &[(u32, u64, u64, u64, u64)]) -> StdVec<u8> {
        let mut f = vec![0u8; 64 + 56 * segs.len()];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        f[0x10..0x12].copy_from_slice(&ET_EXEC.to_le_bytes());
        f[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[0x18..0x20].copy_from_slice(&0x20_1000u64.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        f[0x36..0x38].copy_from_slice(&PHENT_SIZE.to_le_bytes());
        f[0x38..0x3A].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for (i, &(ty, off, paddr, filesz, memsz)) in segs.iter().enumerate() {
            let at = 64 + 56 * i;
            f[at..at + 4].copy_from_slice(&ty.to_le_bytes());
            f[at + 8..at + 16].copy_from_slice(&off.to_le_bytes());
            f[at + 0x18..at + 0x20].copy_from_slice(&paddr.to_le_bytes());
            f[at + 0x20..at + 0x28].copy_from_slice(&filesz.to_le_bytes());
            f[at + 0x28..at + 0x30].copy_from_slice(&memsz.to_le_bytes());
        }
        let len = f.len().max(0x200);
        f.resize(len, 0xAA);
        f
    }

    #[test]
    fn parses_loadable_segments() {
        let f = image(&[(PT_LOAD, 0x100, 0x20_0000, 0x80, 0x1000), (4, 0, 0, 0, 0)]);
        let img = parse(&f).unwrap();
        assert_eq!(img.entry, 0x20_1000);
        assert_eq!(
            img.segments.as_slice(),
            &[Segment {
                offset: 0x100,
                file_size: 0x80,
                paddr: 0x20_0000,
                mem_size: 0x1000
            }]
        );
    }

    #[test]
    fn refuses_bad_images() {
        assert_eq!(parse(b"\x7fELF"), Err(ElfError::Truncated));
        assert_eq!(parse(&[0u8; 64]), Err(ElfError::NotElf64));
        let past_end = image(&[(PT_LOAD, 0x1F0, 0x20_0000, 0x20, 0x20)]);
        assert_eq!(parse(&past_end), Err(ElfError::BadSegment));
        let overflow = image(&[(PT_LOAD, u64::MAX, 0x20_0000, 2, 2)]);
        assert_eq!(parse(&overflow), Err(ElfError::BadSegment));
        let shrink = image(&[(PT_LOAD, 0x100, 0x20_0000, 0x20, 0x10)]);
        assert_eq!(parse(&shrink), Err(ElfError::BadSegment));
        let wrap = image(&[(PT_LOAD, 0x100, u64::MAX - 4, 0x10, 0x10)]);
        assert_eq!(parse(&wrap), Err(ElfError::BadSegment));
        assert_eq!(parse(&image(&[(4, 0, 0, 0, 0)])), Err(ElfError::NoSegments));
        let mut many = StdVec::new();
        for _ in 0..=MAX_SEGMENTS {
            many.push((PT_LOAD, 0x100, 0x20_0000, 0x10, 0x10));
        }
        assert_eq!(parse(&image(&many)), Err(ElfError::TooManySegments));
        let mut bad_machine = image(&[(PT_LOAD, 0x100, 0x20_0000, 0x10, 0x10)]);
        bad_machine[0x12] = 3;
        assert_eq!(parse(&bad_machine), Err(ElfError::WrongMachineOrType));
    }
}
