//! The core protocol (protocol 0): QUERY_PROTOCOL, REMAP_CA, PVALIDATE,
//! CREATE_VCPU and DELETE_VCPU, and the answers to the calls this SVSM does not
//! serve (DEPOSIT_MEM, WITHDRAW_MEM: it takes no memory from the guest;
//! CONFIGURE_VTOM: no vTOM). `docs/guest-contract.md` has the guest's view.

use super::{result, Svsm};
use crate::memory::{AddressError, PAGE};
use crate::platform::{PageSize, Platform, RmpError, VcpuError};
use nitride_protocol::svsm::{
    core_call, pvalidate as pv, query_protocol_result, split_rax, CallRegs, ResultCode,
};

impl<P: Platform, V: super::VhsmService> Svsm<P, V> {
    pub(super) fn core(&mut self, call: u32, regs: &mut CallRegs) -> u64 {
        match call {
            core_call::QUERY_PROTOCOL => {
                let (proto, version) = split_rax(regs.rcx);
                regs.rcx = match self.supported_versions(proto) {
                    Some((min, max)) if (min..=max).contains(&version) => {
                        query_protocol_result(max, min)
                    }
                    _ => 0,
                };
                result(ResultCode::Success)
            }
            core_call::REMAP_CA => {
                let gpa = regs.rcx;
                if !gpa.is_multiple_of(PAGE) {
                    return result(ResultCode::InvalidParameter);
                }
                match self.platform.memory().page(gpa) {
                    Ok(_) => {
                        self.caa_gpa = gpa;
                        result(ResultCode::Success)
                    }
                    Err(AddressError::Misaligned) => result(ResultCode::InvalidParameter),
                    Err(_) => result(ResultCode::InvalidAddress),
                }
            }
            core_call::PVALIDATE => self.pvalidate(regs.rcx),
            core_call::CREATE_VCPU => self.create_vcpu(regs),
            core_call::DELETE_VCPU => self.delete_vcpu(regs.rcx),
            _ => result(ResultCode::UnsupportedCall),
        }
    }

    /// PVALIDATE: the request at `gpa` (8-byte aligned, wholly in one page): u16
    /// entries, u16 next, u32 reserved (zero), then the entries. Entries from `next`
    /// on are served in order; `next` is written back after each one, so a failed
    /// call tells the guest where it stopped.
    fn pvalidate(&mut self, gpa: u64) -> u64 {
        if !self.platform.rmp_available() {
            return result(ResultCode::UnsupportedCall);
        }
        if !gpa.is_multiple_of(8) {
            return result(ResultCode::InvalidParameter);
        }
        let Ok(head) = self.platform.memory().range(gpa, pv::HEADER_SIZE) else {
            return result(ResultCode::InvalidAddress);
        };
        let mut h = [0u8; 8];
        if self.platform.read_guest(head, &mut h).is_err() {
            return result(ResultCode::InvalidAddress);
        }
        let entries = u16::from_le_bytes([h[0], h[1]]);
        let mut next = u16::from_le_bytes([h[2], h[3]]);
        let page_end = (gpa | (PAGE - 1)) + 1;
        let len = pv::HEADER_SIZE + 8 * u64::from(entries);
        if h[4..8] != [0; 4] || entries == 0 || next > entries || gpa + len > page_end {
            return result(ResultCode::InvalidParameter);
        }
        let Ok(list) = self
            .platform
            .memory()
            .range(gpa + pv::HEADER_SIZE, len - pv::HEADER_SIZE)
        else {
            return result(ResultCode::InvalidAddress);
        };
        let mut raw = [0u8; 8 * pv::MAX_ENTRIES];
        let raw = &mut raw[..8 * usize::from(entries)];
        if self.platform.read_guest(list, raw).is_err() {
            return result(ResultCode::InvalidAddress);
        }
        let Some(next_field) = head.sub(2, 2) else {
            return result(ResultCode::InvalidAddress);
        };
        while next < entries {
            let at = 8 * usize::from(next);
            let mut e = [0u8; 8];
            e.copy_from_slice(&raw[at..at + 8]);
            let code = match pv::Entry::decode(u64::from_le_bytes(e)) {
                Err(()) => result(ResultCode::InvalidParameter),
                Ok(entry) => self.pvalidate_one(entry),
            };
            if code != result(ResultCode::Success) {
                return code;
            }
            next += 1;
            if self
                .platform
                .write_guest(next_field, &next.to_le_bytes())
                .is_err()
            {
                return result(ResultCode::InvalidAddress);
            }
        }
        result(ResultCode::Success)
    }

    fn pvalidate_one(&mut self, e: pv::Entry) -> u64 {
        let size = if e.huge {
            PageSize::Large
        } else {
            PageSize::Small
        };
        // Guest RAM only: never a page of the SVSM (or anything that is not RAM).
        if self.platform.memory().pages(e.gpa, size.bytes()).is_err() {
            return result(ResultCode::InvalidAddress);
        }
        match self.platform.pvalidate_guest(e.gpa, size, e.validate) {
            Ok(true) => result(ResultCode::Success),
            Ok(false) if e.ignore_cf => result(ResultCode::Success),
            Ok(false) => pv::FAIL_UNCHANGED,
            Err(RmpError::Unsupported) => result(ResultCode::UnsupportedCall),
            Err(RmpError::Failed(code)) => pv::fail(code),
        }
    }

    /// CREATE_VCPU: RCX = the VMSA's GPA, RDX = the new vCPU's calling area, R8[31:0]
    /// = its APIC ID. Both pages aligned, guest RAM, distinct; the platform checks
    /// the VMSA itself and asks the hypervisor for the vCPU.
    fn create_vcpu(&mut self, regs: &CallRegs) -> u64 {
        if !self.platform.rmp_available() {
            return result(ResultCode::UnsupportedCall);
        }
        let (vmsa, caa) = (regs.rcx, regs.rdx);
        if !vmsa.is_multiple_of(PAGE) || !caa.is_multiple_of(PAGE) || vmsa == caa {
            return result(ResultCode::InvalidParameter);
        }
        let mem = self.platform.memory();
        if mem.page(vmsa).is_err() || mem.page(caa).is_err() {
            return result(ResultCode::InvalidAddress);
        }
        vcpu_result(self.platform.create_vcpu(vmsa, caa, regs.r8 as u32))
    }

    /// DELETE_VCPU: RCX = the VMSA's GPA.
    fn delete_vcpu(&mut self, vmsa: u64) -> u64 {
        if !self.platform.rmp_available() {
            return result(ResultCode::UnsupportedCall);
        }
        if !vmsa.is_multiple_of(PAGE) {
            return result(ResultCode::InvalidParameter);
        }
        if self.platform.memory().page(vmsa).is_err() {
            return result(ResultCode::InvalidAddress);
        }
        vcpu_result(self.platform.delete_vcpu(vmsa))
    }
}

fn vcpu_result(r: Result<(), VcpuError>) -> u64 {
    match r {
        Ok(()) => result(ResultCode::Success),
        Err(VcpuError::Unsupported) => result(ResultCode::UnsupportedCall),
        Err(VcpuError::BadVmsa | VcpuError::NotAVcpu) => result(ResultCode::InvalidParameter),
        Err(VcpuError::Rmp(_)) => result(ResultCode::InvalidAddress),
        Err(VcpuError::Refused) => result(ResultCode::InvalidRequest),
    }
}
