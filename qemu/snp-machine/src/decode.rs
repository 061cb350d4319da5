//! The instructions the machine decodes itself (QEMU's SVM has no decode assists
//! and no next-RIP): the SNP instructions TCG does not know (they raise #UD, which
//! the machine intercepts), VMGEXIT versus a plain VMMCALL, and MOV to and from
//! debug registers.

/// An instruction recognised at the guest's RIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insn {
    /// PVALIDATE (F2 0F 01 FF).
    Pvalidate,
    /// RMPADJUST (F3 0F 01 FE).
    Rmpadjust,
    /// VMGEXIT (F3 0F 01 D9, `rep vmmcall`).
    Vmgexit,
    /// VMMCALL (0F 01 D9).
    Vmmcall,
    /// MOV to or from a debug register: `dr` the debug register, `gpr` the general
    /// register (0 RAX .. 15 R15), `write` for MOV DRn, reg; `len` bytes.
    MovDr {
        /// Debug register number.
        dr: u8,
        /// General register number.
        gpr: u8,
        /// MOV to the debug register.
        write: bool,
        /// Instruction length.
        len: u8,
    },
    /// MOV to a control register (0F 22 /r): `cr`, from `gpr`, `len` bytes.
    MovToCr {
        /// Control register number.
        cr: u8,
        /// General register number.
        gpr: u8,
        /// Instruction length.
        len: u8,
    },
    /// CLTS (0F 06).
    Clts,
    /// Anything else.
    Other,
}

impl Insn {
    /// The instruction's length (0 for [`Insn::Other`]).
    pub fn length(&self) -> u64 {
        match self {
            Self::Pvalidate | Self::Rmpadjust | Self::Vmgexit => 4,
            Self::Vmmcall => 3,
            Self::MovDr { len, .. } | Self::MovToCr { len, .. } => u64::from(*len),
            Self::Clts => 2,
            Self::Other => 0,
        }
    }
}

/// Decode the instruction starting at `b` (the machine fetches 4 bytes, fewer if the
/// fetch was cut at an unmapped page: every instruction decoded here fits in 4, and
/// no byte after the fourth is read).
pub fn decode(b: &[u8]) -> Insn {
    match b {
        [0xF2, 0x0F, 0x01, 0xFF, ..] => Insn::Pvalidate,
        [0xF3, 0x0F, 0x01, 0xFE, ..] => Insn::Rmpadjust,
        [0xF3, 0x0F, 0x01, 0xD9, ..] => Insn::Vmgexit,
        [0x0F, 0x01, 0xD9, ..] => Insn::Vmmcall,
        [0x0F, 0x06, ..] => Insn::Clts,
        _ => decode_mov_dr(b).unwrap_or(Insn::Other),
    }
}

fn decode_mov_dr(b: &[u8]) -> Option<Insn> {
    let (rex, rest, pre) = match b.first() {
        Some(&r) if r & 0xF0 == 0x40 => (r, &b[1..], 1u8),
        _ => (0, b, 0),
    };
    let reg = |modrm: u8| (modrm >> 3) & 7 | if rex & 4 != 0 { 8 } else { 0 };
    let rm = |modrm: u8| (modrm & 7) | if rex & 1 != 0 { 8 } else { 0 };
    match rest {
        [0x0F, op @ (0x21 | 0x23), modrm, ..] if modrm >> 6 == 3 => Some(Insn::MovDr {
            dr: reg(*modrm),
            gpr: rm(*modrm),
            write: *op == 0x23,
            len: 3 + pre,
        }),
        [0x0F, 0x22, modrm, ..] if modrm >> 6 == 3 => Some(Insn::MovToCr {
            cr: reg(*modrm),
            gpr: rm(*modrm),
            len: 3 + pre,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_bytes_decide() {
        // The machine fetches 4 bytes at an exit: what follows never changes the result.
        let samples: [&[u8]; 9] = [
            &[0xF2, 0x0F, 0x01, 0xFF],
            &[0xF3, 0x0F, 0x01, 0xFE],
            &[0xF3, 0x0F, 0x01, 0xD9],
            &[0x0F, 0x01, 0xD9],
            &[0x0F, 0x06],
            &[0x0F, 0x23, 0xF8],
            &[0x41, 0x0F, 0x21, 0xC1],
            &[0x41, 0x0F, 0x22, 0xC0],
            &[0x90],
        ];
        for s in samples {
            let mut long = [0xCCu8; 15];
            long[..s.len()].copy_from_slice(s);
            let d = decode(&long[..4]);
            assert_eq!(d, decode(&long), "{s:x?}");
            assert!(d.length() <= 4, "{s:x?}");
        }
    }

    #[test]
    fn decodes() {
        assert_eq!(decode(&[0xF2, 0x0F, 0x01, 0xFF]), Insn::Pvalidate);
        assert_eq!(decode(&[0xF3, 0x0F, 0x01, 0xFE, 0x90]), Insn::Rmpadjust);
        assert_eq!(decode(&[0xF3, 0x0F, 0x01, 0xD9]), Insn::Vmgexit);
        assert_eq!(decode(&[0x0F, 0x01, 0xD9]), Insn::Vmmcall);
        assert_eq!(decode(&[0x0F, 0x01]), Insn::Other);
        // mov %rax, %dr7 = 0F 23 F8; mov %dr0, %r9 = 41 0F 21 C1.
        assert_eq!(
            decode(&[0x0F, 0x23, 0xF8]),
            Insn::MovDr {
                dr: 7,
                gpr: 0,
                write: true,
                len: 3
            }
        );
        assert_eq!(
            decode(&[0x41, 0x0F, 0x21, 0xC1]),
            Insn::MovDr {
                dr: 0,
                gpr: 9,
                write: false,
                len: 4
            }
        );
        assert_eq!(decode(&[0x0F, 0x21, 0x00]), Insn::Other);
        // mov %eax, %cr0 = 0F 22 C0.
        assert_eq!(
            decode(&[0x0F, 0x22, 0xC0]),
            Insn::MovToCr {
                cr: 0,
                gpr: 0,
                len: 3
            }
        );
        assert_eq!(decode(&[0x0F, 0x06]), Insn::Clts);
        assert_eq!(Insn::Vmgexit.length(), 4);
    }
}
