//! The reverse map table: one entry per 4 KiB page of guest RAM (and one for the
//! launch VMSA), and the SNP instructions that change it, with the architectural
//! rules and return codes (AMD APM vol. 2 §15.36, vol. 3 PVALIDATE/RMPADJUST):
//!
//! - an entry is *assigned* to the guest (private) or not (shared, hypervisor-owned);
//!   a private page is *validated* or not; it may be a VMSA; VMPL1-3 each have a
//!   permission mask (bit 0 read, 1 write, 2 user execute, 3 supervisor execute);
//!   VMPL0 may do anything with a validated page.
//! - The host backs every page with a 4 KiB RMP entry (as KVM does without huge
//!   pages), so PVALIDATE and RMPADJUST of a 2 MiB page fail with FAIL_SIZEMISMATCH.
//! - Page state changes and implicit conversions (a private access to a shared page
//!   or the reverse) go through the host: the new state is unvalidated, with no
//!   VMPL1-3 permission, and the contents are not kept (KVM backs private and shared
//!   memory separately).

use alloc::vec;
use alloc::vec::Vec;

use crate::{LAUNCH_VMSA_GPA, RAM_END, RAM_PAGES, VMPLS};

/// Permission bits of an RMP entry for one VMPL.
pub mod perm {
    /// Read.
    pub const READ: u8 = 1;
    /// Write.
    pub const WRITE: u8 = 2;
    /// User-mode execute.
    pub const EXEC_USER: u8 = 4;
    /// Supervisor-mode execute.
    pub const EXEC_SUPERVISOR: u8 = 8;
    /// All four.
    pub const ALL: u8 = 0xF;
}

/// Return codes of PVALIDATE and RMPADJUST (EAX).
pub mod code {
    /// Success.
    pub const SUCCESS: u32 = 0;
    /// An input is invalid.
    pub const FAIL_INPUT: u32 = 1;
    /// The current VMPL lacks the permission.
    pub const FAIL_PERMISSION: u32 = 2;
    /// The page size does not match the RMP entry.
    pub const FAIL_SIZEMISMATCH: u32 = 6;
}

/// One RMP entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Assigned to the guest (private).
    pub assigned: bool,
    /// Validated by the guest (PVALIDATE).
    pub validated: bool,
    /// A VMSA page.
    pub vmsa: bool,
    /// Permissions of VMPL1..3 (index 0 unused: VMPL0 has all).
    pub perms: [u8; VMPLS],
}

impl Entry {
    /// What `vmpl` may do with the page through its private mapping (nothing unless
    /// assigned and validated).
    pub fn allowed(&self, vmpl: usize) -> u8 {
        if !self.assigned || !self.validated {
            0
        } else if vmpl == 0 {
            perm::ALL
        } else {
            self.perms.get(vmpl).copied().unwrap_or(0)
        }
    }
}

/// The outcome of an emulated PVALIDATE or RMPADJUST.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Completed: EAX and CF (PVALIDATE: CF = the entry did not change).
    Done {
        /// EAX.
        eax: u32,
        /// CF.
        cf: bool,
    },
    /// The instruction raises #GP(0).
    GeneralProtection,
}

/// The RMP of guest RAM plus the launch VMSA's entry.
#[derive(Clone, Debug)]
pub struct Rmp {
    ram: Vec<Entry>,
    launch_vmsa: Entry,
}

impl Default for Rmp {
    fn default() -> Self {
        Self::new()
    }
}

impl Rmp {
    /// Every RAM page private and unvalidated: what QEMU sets up for an SNP guest
    /// (all memory private) before the launch.
    pub fn new() -> Self {
        Self {
            ram: vec![
                Entry {
                    assigned: true,
                    ..Entry::default()
                };
                RAM_PAGES
            ],
            launch_vmsa: Entry::default(),
        }
    }

    fn index(gpa: u64) -> Option<usize> {
        (gpa < RAM_END).then_some((gpa / 4096) as usize)
    }

    /// The entry of the page at `gpa` (C-bit already stripped).
    pub fn entry(&self, gpa: u64) -> Option<&Entry> {
        if gpa & !0xFFF == LAUNCH_VMSA_GPA {
            return Some(&self.launch_vmsa);
        }
        Self::index(gpa).map(|i| &self.ram[i])
    }

    fn entry_mut(&mut self, gpa: u64) -> Option<&mut Entry> {
        if gpa & !0xFFF == LAUNCH_VMSA_GPA {
            return Some(&mut self.launch_vmsa);
        }
        Self::index(gpa).map(|i| &mut self.ram[i])
    }

    /// SNP_LAUNCH_UPDATE of a page: private, validated, no VMPL1-3 permission;
    /// `vmsa` for the launch VMSA.
    pub fn launch(&mut self, gpa: u64, vmsa: bool) -> bool {
        self.entry_mut(gpa)
            .map(|e| {
                *e = Entry {
                    assigned: true,
                    validated: true,
                    vmsa,
                    perms: [0; VMPLS],
                }
            })
            .is_some()
    }

    /// The host makes the page shared (`private` false) or private (true), as for
    /// a page state change or an implicit conversion. False when `gpa` is not RAM.
    pub fn set_state(&mut self, gpa: u64, private: bool) -> bool {
        match Self::index(gpa) {
            Some(i) => {
                self.ram[i] = Entry {
                    assigned: private,
                    ..Entry::default()
                };
                true
            }
            None => false,
        }
    }

    /// PVALIDATE of the page at `gpa` by `vmpl` at `cpl`: `size` (ECX) 0 = 4 KiB,
    /// 1 = 2 MiB; `validate` (EDX bit 0). The caller has translated RAX and checked
    /// that the page is assigned (an unassigned page is the host's #NPF).
    pub fn pvalidate(
        &mut self,
        vmpl: usize,
        cpl: u8,
        gpa: u64,
        size: u64,
        validate: bool,
    ) -> Outcome {
        if cpl != 0 || vmpl != 0 {
            return Outcome::GeneralProtection;
        }
        let fail = |eax| Outcome::Done { eax, cf: false };
        match size {
            0 => {}
            1 => return fail(code::FAIL_SIZEMISMATCH),
            _ => return fail(code::FAIL_INPUT),
        }
        let Some(e) = self.entry_mut(gpa) else {
            return fail(code::FAIL_INPUT);
        };
        if !e.assigned {
            return fail(code::FAIL_INPUT);
        }
        if e.validated == validate {
            return Outcome::Done {
                eax: code::SUCCESS,
                cf: true,
            };
        }
        e.validated = validate;
        Outcome::Done {
            eax: code::SUCCESS,
            cf: false,
        }
    }

    /// RMPADJUST of the page at `gpa` by `vmpl` at `cpl`: `size` (RCX), `attrs`
    /// (RDX: bits 7:0 permissions, 15:8 target VMPL, bit 16 VMSA).
    pub fn rmpadjust(&mut self, vmpl: usize, cpl: u8, gpa: u64, size: u64, attrs: u64) -> Outcome {
        if cpl != 0 {
            return Outcome::GeneralProtection;
        }
        let fail = |eax| Outcome::Done { eax, cf: false };
        match size {
            0 => {}
            1 => return fail(code::FAIL_SIZEMISMATCH),
            _ => return fail(code::FAIL_INPUT),
        }
        let mask = (attrs & 0xFF) as u8;
        let target = ((attrs >> 8) & 0xFF) as usize;
        let want_vmsa = attrs & (1 << 16) != 0;
        if attrs >> 17 != 0 || mask & !perm::ALL != 0 || target >= VMPLS {
            return fail(code::FAIL_INPUT);
        }
        if target <= vmpl {
            return fail(code::FAIL_PERMISSION);
        }
        let Some(e) = self.entry_mut(gpa) else {
            return fail(code::FAIL_INPUT);
        };
        if !e.assigned || !e.validated {
            return fail(code::FAIL_INPUT);
        }
        if mask & !e.allowed(vmpl) != 0 {
            return fail(code::FAIL_PERMISSION);
        }
        e.perms[target] = mask;
        // Only VMPL0 changes the VMSA attribute; from any other VMPL it is ignored.
        if vmpl == 0 {
            e.vmsa = want_vmsa;
        }
        Outcome::Done {
            eax: code::SUCCESS,
            cf: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DONE: Outcome = Outcome::Done { eax: 0, cf: false };
    const SAME: Outcome = Outcome::Done { eax: 0, cf: true };
    fn fail(eax: u32) -> Outcome {
        Outcome::Done { eax, cf: false }
    }

    #[test]
    fn pvalidate_rules() {
        let mut r = Rmp::new();
        let p = 0x5000;
        assert_eq!(r.pvalidate(1, 0, p, 0, true), Outcome::GeneralProtection);
        assert_eq!(r.pvalidate(0, 3, p, 0, true), Outcome::GeneralProtection);
        assert_eq!(r.pvalidate(0, 0, p, 1, true), fail(code::FAIL_SIZEMISMATCH));
        assert_eq!(r.pvalidate(0, 0, p, 2, true), fail(code::FAIL_INPUT));
        assert_eq!(r.pvalidate(0, 0, p, 0, true), DONE);
        assert!(r.entry(p).unwrap().validated);
        assert_eq!(r.pvalidate(0, 0, p, 0, true), SAME);
        assert_eq!(r.pvalidate(0, 0, p, 0, false), DONE);
        assert_eq!(r.pvalidate(0, 0, p, 0, false), SAME);
        r.set_state(p, false);
        assert_eq!(r.pvalidate(0, 0, p, 0, true), fail(code::FAIL_INPUT));
        assert_eq!(r.pvalidate(0, 0, RAM_END, 0, true), fail(code::FAIL_INPUT));
    }

    #[test]
    fn rmpadjust_rules() {
        let mut r = Rmp::new();
        let p = 0x7000;
        let attrs = |mask: u64, vmpl: u64, vmsa: bool| mask | (vmpl << 8) | (u64::from(vmsa) << 16);
        // Not validated yet.
        assert_eq!(
            r.rmpadjust(0, 0, p, 0, attrs(1, 1, false)),
            fail(code::FAIL_INPUT)
        );
        r.launch(p, false);
        assert_eq!(
            r.rmpadjust(0, 3, p, 0, attrs(1, 1, false)),
            Outcome::GeneralProtection
        );
        assert_eq!(
            r.rmpadjust(0, 0, p, 1, attrs(1, 1, false)),
            fail(code::FAIL_SIZEMISMATCH)
        );
        assert_eq!(
            r.rmpadjust(0, 0, p, 0, attrs(0x10, 1, false)),
            fail(code::FAIL_INPUT)
        );
        assert_eq!(
            r.rmpadjust(0, 0, p, 0, attrs(1, 4, false)),
            fail(code::FAIL_INPUT)
        );
        assert_eq!(r.rmpadjust(0, 0, p, 0, 1 << 17), fail(code::FAIL_INPUT));
        assert_eq!(
            r.rmpadjust(0, 0, p, 0, attrs(1, 0, false)),
            fail(code::FAIL_PERMISSION)
        );
        // VMPL0 grants VMPL1 read+write.
        assert_eq!(r.rmpadjust(0, 0, p, 0, attrs(3, 1, false)), DONE);
        assert_eq!(r.entry(p).unwrap().allowed(1), 3);
        // VMPL1 cannot adjust itself or VMPL0, nor grant more than it has.
        assert_eq!(
            r.rmpadjust(1, 0, p, 0, attrs(1, 1, false)),
            fail(code::FAIL_PERMISSION)
        );
        assert_eq!(
            r.rmpadjust(1, 0, p, 0, attrs(1, 0, false)),
            fail(code::FAIL_PERMISSION)
        );
        assert_eq!(
            r.rmpadjust(1, 0, p, 0, attrs(7, 2, false)),
            fail(code::FAIL_PERMISSION)
        );
        // It may grant VMPL2 what it has, but its VMSA bit is ignored.
        assert_eq!(r.rmpadjust(1, 0, p, 0, attrs(1, 2, true)), DONE);
        assert_eq!(r.entry(p).unwrap().allowed(2), 1);
        assert!(!r.entry(p).unwrap().vmsa);
        // VMPL0 sets and clears it.
        assert_eq!(r.rmpadjust(0, 0, p, 0, attrs(0, 1, true)), DONE);
        assert!(r.entry(p).unwrap().vmsa);
        assert_eq!(r.entry(p).unwrap().allowed(1), 0);
        assert_eq!(r.rmpadjust(0, 0, p, 0, attrs(0, 1, false)), DONE);
        assert!(!r.entry(p).unwrap().vmsa);
    }

    #[test]
    fn state_changes_reset_the_entry() {
        let mut r = Rmp::new();
        r.launch(0x3000, false);
        r.rmpadjust(0, 0, 0x3000, 0, 0x10F);
        assert!(r.set_state(0x3000, false));
        assert_eq!(*r.entry(0x3000).unwrap(), Entry::default());
        assert!(r.set_state(0x3000, true));
        assert_eq!(
            r.entry(0x3000).unwrap().allowed(0),
            0,
            "private again, not validated"
        );
        assert!(!r.set_state(RAM_END, true));
        assert!(r.launch(LAUNCH_VMSA_GPA, true));
        assert!(r.entry(LAUNCH_VMSA_GPA).unwrap().vmsa);
    }
}
