//! Decoding the few guest instructions the SVSM completes itself, and finding them.
//!
//! QEMU's SVM has no next-RIP save and no decode assists, so when the SVSM emulates
//! an intercepted instruction (the calling `VMMCALL`, `MOV` to or from a debug
//! register, `WBINVD`, `INVD`, `MONITOR`) it must know the instruction's exact
//! length and operands itself. [`fetch`] reads the bytes at the guest's RIP through a
//! walk of the guest's own page tables ([`translate`]), every table entry and every
//! instruction byte read through the checked guest-memory accessors; the decoders
//! here take those bytes apart, prefixes included (`rep vmmcall`, F3 0F 01 D9, is
//! what Linux issues as VMGEXIT).
//!
//! Pure logic, tested on the host.

use crate::memory::GuestMemoryMap;
use crate::platform::Platform;

/// The longest x86 instruction.
pub const MAX_LEN: usize = 15;

/// Why an instruction could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the instruction does (or exceed 15 bytes).
    Truncated,
    /// The bytes are not the instruction the exit names.
    Unexpected,
    /// A LOCK prefix, which makes these instructions undefined (#UD).
    Lock,
    /// A debug register above DR7 (REX.R), which is undefined (#UD).
    BadDebugRegister,
}

/// Legacy prefixes and REX, as far as these instructions care.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Prefixes {
    len: usize,
    lock: bool,
    rex: u8,
}

fn prefixes(bytes: &[u8], long_mode: bool) -> Result<Prefixes, DecodeError> {
    let mut p = Prefixes::default();
    for &b in bytes.iter().take(MAX_LEN) {
        match b {
            0xF0 => p.lock = true,
            // Operand size, address size, REPNE/REP, segment overrides.
            0x66 | 0x67 | 0xF2 | 0xF3 | 0x26 | 0x2E | 0x36 | 0x3E | 0x64 | 0x65 => {}
            // REX counts only immediately before the opcode: a legacy prefix after it
            // cancels it.
            0x40..=0x4F if long_mode => {
                p.len += 1;
                p.rex = b;
                continue;
            }
            _ => return Ok(p),
        }
        p.rex = 0;
        p.len += 1;
    }
    Err(DecodeError::Truncated)
}

fn expect(bytes: &[u8], at: usize, opcode: &[u8]) -> Result<usize, DecodeError> {
    let end = at + opcode.len();
    if end > MAX_LEN {
        return Err(DecodeError::Truncated);
    }
    match bytes.get(at..end) {
        Some(b) if b == opcode => Ok(end),
        Some(_) => Err(DecodeError::Unexpected),
        None => Err(DecodeError::Truncated),
    }
}

/// The length of the instruction at the start of `bytes` when it is `opcode` (the
/// bytes after any prefixes), e.g. `[0x0F, 0x01, 0xD9]` for VMMCALL.
pub fn length_of(bytes: &[u8], opcode: &[u8], long_mode: bool) -> Result<usize, DecodeError> {
    let p = prefixes(bytes, long_mode)?;
    let len = expect(bytes, p.len, opcode)?;
    if p.lock {
        return Err(DecodeError::Lock);
    }
    Ok(len)
}

/// VMMCALL, `0F 01 D9`.
pub const VMMCALL: [u8; 3] = [0x0F, 0x01, 0xD9];
/// INVD, `0F 08`.
pub const INVD: [u8; 2] = [0x0F, 0x08];
/// WBINVD, `0F 09` (with an F3 prefix: WBNOINVD, the same intercept).
pub const WBINVD: [u8; 2] = [0x0F, 0x09];
/// MONITOR, `0F 01 C8`.
pub const MONITOR: [u8; 3] = [0x0F, 0x01, 0xC8];

/// A decoded `MOV` between a general-purpose register and a debug register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MovDr {
    /// Instruction length.
    pub len: usize,
    /// The debug register (0..=7, before DR4/DR5 aliasing).
    pub dr: u8,
    /// The general-purpose register, in the ModRM numbering (0 RAX .. 15 R15).
    pub gpr: u8,
    /// Write to the debug register (`0F 23`), else read (`0F 21`).
    pub to_dr: bool,
}

/// Decode `MOV r, DRn` (`0F 21 /r`) or `MOV DRn, r` (`0F 23 /r`). As on the CPU, the
/// ModRM `mod` bits are ignored (always a register operand); REX.B extends the
/// general-purpose register, REX.R would name DR8+ and is undefined.
pub fn mov_dr(bytes: &[u8], long_mode: bool) -> Result<MovDr, DecodeError> {
    let p = prefixes(bytes, long_mode)?;
    let at = p.len;
    if at + 3 > MAX_LEN {
        return Err(DecodeError::Truncated);
    }
    let (Some(&0x0F), Some(&op), Some(&modrm)) =
        (bytes.get(at), bytes.get(at + 1), bytes.get(at + 2))
    else {
        return Err(if bytes.len() < at + 3 {
            DecodeError::Truncated
        } else {
            DecodeError::Unexpected
        });
    };
    let to_dr = match op {
        0x21 => false,
        0x23 => true,
        _ => return Err(DecodeError::Unexpected),
    };
    if p.lock {
        return Err(DecodeError::Lock);
    }
    if p.rex & 0x4 != 0 {
        return Err(DecodeError::BadDebugRegister);
    }
    Ok(MovDr {
        len: at + 3,
        dr: (modrm >> 3) & 7,
        gpr: (modrm & 7) | ((p.rex & 1) << 3),
        to_dr,
    })
}

/// The guest's paging state, from its saved registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paging {
    /// CR0.
    pub cr0: u64,
    /// CR3.
    pub cr3: u64,
    /// CR4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PRESENT: u64 = 1;
const LARGE: u64 = 1 << 7;
/// Physical-address bits of a table entry (bits 12..51).
const ADDR: u64 = 0x000F_FFFF_FFFF_F000;

/// Why a guest-virtual address could not be translated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WalkError {
    /// Paging without long mode (32-bit or PAE paging): not supported.
    LegacyPaging,
    /// A table entry on the way is not present.
    NotPresent,
    /// A table entry is not guest RAM (or could not be read).
    NotGuestRam,
}

/// Translate guest-virtual `va` to guest-physical, reading each 8-byte table entry
/// with `entry(gpa)` (which returns `None` for anything that is not guest RAM).
/// Long-mode 4- and 5-level paging with 1 GiB and 2 MiB pages, or no paging.
pub fn translate(
    paging: &Paging,
    va: u64,
    mut entry: impl FnMut(u64) -> Option<u64>,
) -> Result<u64, WalkError> {
    if paging.cr0 & CR0_PG == 0 {
        return Ok(va);
    }
    if paging.efer & EFER_LMA == 0 || paging.cr4 & CR4_PAE == 0 {
        return Err(WalkError::LegacyPaging);
    }
    let levels: u32 = if paging.cr4 & CR4_LA57 != 0 { 5 } else { 4 };
    let mut table = paging.cr3 & ADDR;
    for level in (0..levels).rev() {
        let shift = 12 + 9 * level;
        let index = (va >> shift) & 0x1FF;
        let e = entry(table + index * 8).ok_or(WalkError::NotGuestRam)?;
        if e & PRESENT == 0 {
            return Err(WalkError::NotPresent);
        }
        // A large page at the PDPT (1 GiB) or PD (2 MiB) level.
        if level == 0 || ((level == 1 || level == 2) && e & LARGE != 0) {
            let size = 1u64 << shift;
            return Ok((e & ADDR & !(size - 1)) | (va & (size - 1)));
        }
        table = e & ADDR;
    }
    Err(WalkError::NotPresent)
}

/// Where the guest's current instruction is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    /// RIP.
    pub rip: u64,
    /// CS base (used outside 64-bit mode).
    pub cs_base: u64,
    /// 64-bit code segment (CS.L with EFER.LMA).
    pub long_mode: bool,
}

impl Location {
    /// The linear address of the instruction.
    pub fn linear(&self) -> u64 {
        if self.long_mode {
            self.rip
        } else {
            (self.cs_base.wrapping_add(self.rip)) & 0xFFFF_FFFF
        }
    }
}

/// Read up to [`MAX_LEN`] bytes of the instruction at `at` through the guest's page
/// tables and `platform`'s checked accessors. Returns the bytes that could be read
/// (fewer when the instruction runs into an untranslatable page) and their number,
/// or the error of the first byte's page.
pub fn fetch<P: Platform + ?Sized>(
    platform: &P,
    paging: &Paging,
    at: &Location,
) -> Result<([u8; MAX_LEN], usize), WalkError> {
    let map: &GuestMemoryMap = platform.memory();
    let read_entry = |gpa: u64| -> Option<u64> {
        let range = map.range(gpa, 8).ok()?;
        let mut b = [0u8; 8];
        platform.read_guest(range, &mut b).ok()?;
        Some(u64::from_le_bytes(b))
    };
    let mut out = [0u8; MAX_LEN];
    let mut got = 0usize;
    let start = at.linear();
    while got < MAX_LEN {
        let va = start.wrapping_add(got as u64);
        let gpa = match translate(paging, va, read_entry) {
            Ok(gpa) => gpa,
            Err(e) if got == 0 => return Err(e),
            Err(_) => break,
        };
        // Up to the end of this 4 KiB page (the smallest page the walk can end on).
        let in_page = (0x1000 - (gpa & 0xFFF)) as usize;
        let n = in_page.min(MAX_LEN - got);
        let Some(range) = map.range(gpa, n as u64).ok() else {
            if got == 0 {
                return Err(WalkError::NotGuestRam);
            }
            break;
        };
        if platform.read_guest(range, &mut out[got..got + n]).is_err() {
            if got == 0 {
                return Err(WalkError::NotGuestRam);
            }
            break;
        }
        got += n;
    }
    Ok((out, got))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn vmmcall_with_and_without_prefixes() {
        assert_eq!(length_of(&[0x0F, 0x01, 0xD9, 0xCC], &VMMCALL, true), Ok(3));
        // rep vmmcall: what Linux issues as VMGEXIT.
        assert_eq!(length_of(&[0xF3, 0x0F, 0x01, 0xD9], &VMMCALL, true), Ok(4));
        assert_eq!(
            length_of(
                &[0x2E, 0x3E, 0x66, 0xF3, 0x48, 0x0F, 0x01, 0xD9],
                &VMMCALL,
                true
            ),
            Ok(8)
        );
        assert_eq!(
            length_of(&[0xF0, 0x0F, 0x01, 0xD9], &VMMCALL, true),
            Err(DecodeError::Lock)
        );
        assert_eq!(
            length_of(&[0x0F, 0x01, 0xC1], &VMMCALL, true),
            Err(DecodeError::Unexpected)
        );
        assert_eq!(
            length_of(&[0xF3, 0x0F, 0x01], &VMMCALL, true),
            Err(DecodeError::Truncated)
        );
        // 14 prefixes and a 3-byte opcode exceed 15 bytes.
        let mut long = vec![0x66u8; 13];
        long.extend_from_slice(&VMMCALL);
        assert_eq!(
            length_of(&long, &VMMCALL, true),
            Err(DecodeError::Truncated)
        );
        let mut fits = vec![0x66u8; 12];
        fits.extend_from_slice(&VMMCALL);
        assert_eq!(length_of(&fits, &VMMCALL, true), Ok(15));
        // Outside 64-bit mode 0x48 is DEC, not REX.
        assert_eq!(
            length_of(&[0x48, 0x0F, 0x01, 0xD9], &VMMCALL, false),
            Err(DecodeError::Unexpected)
        );
    }

    #[test]
    fn cache_instructions() {
        assert_eq!(length_of(&[0x0F, 0x09], &WBINVD, true), Ok(2));
        assert_eq!(length_of(&[0xF3, 0x0F, 0x09], &WBINVD, true), Ok(3));
        assert_eq!(length_of(&[0x0F, 0x08], &INVD, true), Ok(2));
        assert_eq!(length_of(&[0x0F, 0x01, 0xC8], &MONITOR, true), Ok(3));
    }

    #[test]
    fn mov_dr_operands() {
        // mov rax, dr7
        assert_eq!(
            mov_dr(&[0x0F, 0x21, 0xF8], true),
            Ok(MovDr {
                len: 3,
                dr: 7,
                gpr: 0,
                to_dr: false
            })
        );
        // mov dr0, r15 (REX.B)
        assert_eq!(
            mov_dr(&[0x41, 0x0F, 0x23, 0xC7], true),
            Ok(MovDr {
                len: 4,
                dr: 0,
                gpr: 15,
                to_dr: true
            })
        );
        // mod bits ignored: 0x07 is still a register operand (rdi), DR0.
        assert_eq!(
            mov_dr(&[0x0F, 0x23, 0x07], true),
            Ok(MovDr {
                len: 3,
                dr: 0,
                gpr: 7,
                to_dr: true
            })
        );
        assert_eq!(
            mov_dr(&[0x44, 0x0F, 0x23, 0xC0], true),
            Err(DecodeError::BadDebugRegister)
        );
        assert_eq!(
            mov_dr(&[0x0F, 0x22, 0xC0], true),
            Err(DecodeError::Unexpected)
        );
        assert_eq!(mov_dr(&[0x0F, 0x23], true), Err(DecodeError::Truncated));
    }

    fn paging(cr3: u64) -> Paging {
        Paging {
            cr0: CR0_PG | 1,
            cr3,
            cr4: CR4_PAE,
            efer: EFER_LMA | (1 << 8),
        }
    }

    #[test]
    fn walks_four_levels_and_large_pages() {
        let mut mem: HashMap<u64, u64> = HashMap::new();
        // PML4 at 0x1000 -> PDPT 0x2000 -> PD 0x3000 -> PT 0x4000.
        mem.insert(0x1000, 0x2000 | 3);
        mem.insert(0x2000, 0x3000 | 3);
        mem.insert(0x2000 + 8, 0x4000_0000 | 0x83); // 1 GiB page for 1..2 GiB
        mem.insert(0x3000, 0x4000 | 3);
        mem.insert(0x3000 + 8, 0x60_0000 | 0x83); // 2 MiB page for 2..4 MiB
        mem.insert(0x4000 + 5 * 8, 0x9000 | 3); // 4 KiB: 0x5000 -> 0x9000
        let e = |gpa: u64| mem.get(&gpa).copied().or(Some(0));
        let p = paging(0x1000);
        assert_eq!(translate(&p, 0x5123, e), Ok(0x9123));
        assert_eq!(translate(&p, 0x20_0010, e), Ok(0x60_0010));
        assert_eq!(translate(&p, 0x4123_4567, e), Ok(0x4123_4567));
        assert_eq!(translate(&p, 0x6000, e), Err(WalkError::NotPresent));
        assert_eq!(translate(&p, 0x5000, |_| None), Err(WalkError::NotGuestRam));
        let unpaged = Paging { cr0: 1, ..p };
        assert_eq!(translate(&unpaged, 0x1234, e), Ok(0x1234));
        let legacy = Paging { efer: 0, ..p };
        assert_eq!(translate(&legacy, 0x1234, e), Err(WalkError::LegacyPaging));
    }

    #[test]
    fn compatibility_mode_uses_cs_base() {
        let l = Location {
            rip: 0x10,
            cs_base: 0x1000,
            long_mode: false,
        };
        assert_eq!(l.linear(), 0x1010);
        let l = Location {
            long_mode: true,
            ..l
        };
        assert_eq!(l.linear(), 0x10);
    }
}
