//! Fuzz the SVSM's decoders of guest instructions and its guest page-table walk
//! (`nitride_kernel::platform::emulated::insn`): the bytes at the guest's RIP and the guest's page tables
//! are the guest's to choose.
//!
//! Input: byte 0 picks long mode (bit 0) and the paging mode (bits 1-3: CR0.PG,
//! CR4.PAE, CR4.LA57), bytes 1-8 a virtual address; the rest is both the instruction
//! bytes and a small guest RAM (at GPA 0) holding page tables. Checked:
//! - nothing panics;
//! - a decoded length is at most 15 and within the bytes given; the bytes before
//!   the opcode are prefixes only, and the opcode is where the length says;
//! - `MOV DR` decodes to DR0-7 and GPR 0-15, and outside long mode never to R8-R15;
//! - a translation keeps the offset within the smallest page (low 12 bits), is the
//!   identity without paging, and reads only 8-byte table entries inside the RAM.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nitride_kernel::platform::emulated::insn::{
    length_of, mov_dr, translate, DecodeError, Paging, INVD, MAX_LEN, MONITOR, VMMCALL, WBINVD,
};

const PREFIXES: &[u8] = &[
    0xF0, 0x66, 0x67, 0xF2, 0xF3, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65,
];

fn is_prefix(b: u8, long_mode: bool) -> bool {
    PREFIXES.contains(&b) || (long_mode && (0x40..=0x4F).contains(&b))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some((va, bytes)) = rest.split_first_chunk::<8>() else {
        return;
    };
    let va = u64::from_le_bytes(*va);
    let long_mode = mode & 1 != 0;

    for opcode in [&VMMCALL[..], &INVD, &WBINVD, &MONITOR] {
        match length_of(bytes, opcode, long_mode) {
            Ok(len) => {
                assert!(len <= MAX_LEN && len <= bytes.len());
                let at = len - opcode.len();
                assert_eq!(&bytes[at..len], opcode);
                assert!(bytes[..at].iter().all(|&b| is_prefix(b, long_mode)));
                assert!(!bytes[..at].contains(&0xF0), "LOCK accepted");
            }
            Err(DecodeError::Truncated | DecodeError::Unexpected | DecodeError::Lock) => {}
            Err(e) => panic!("{e:?} for a plain opcode"),
        }
    }
    if let Ok(m) = mov_dr(bytes, long_mode) {
        assert!(m.len <= MAX_LEN && m.len <= bytes.len() && m.len >= 3);
        assert_eq!(bytes[m.len - 3], 0x0F);
        assert_eq!(bytes[m.len - 2], if m.to_dr { 0x23 } else { 0x21 });
        assert!(m.dr < 8 && m.gpr < 16);
        assert!(long_mode || m.gpr < 8, "REX outside long mode");
        assert!(bytes[..m.len - 3].iter().all(|&b| is_prefix(b, long_mode)));
    }

    let paging = Paging {
        cr0: if mode & 2 != 0 { 1 << 31 } else { 0 },
        cr3: 0,
        cr4: (if mode & 4 != 0 { 1 << 5 } else { 0 }) | (if mode & 8 != 0 { 1 << 12 } else { 0 }),
        efer: if long_mode { 1 << 10 } else { 0 },
    };
    let ram = bytes;
    let entry = |gpa: u64| -> Option<u64> {
        assert_eq!(gpa % 8, 0, "unaligned table entry read");
        let at = usize::try_from(gpa).ok()?;
        let e = ram.get(at..at.checked_add(8)?)?;
        Some(u64::from_le_bytes(e.try_into().ok()?))
    };
    if let Ok(gpa) = translate(&paging, va, entry) {
        assert_eq!(gpa & 0xFFF, va & 0xFFF);
        if paging.cr0 == 0 {
            assert_eq!(gpa, va);
        }
    }
});
