//! The guest can never reach SVSM memory: every read, write or instruction fetch
//! from VMPL1 is refused by the RMP (the SVSM never granted its pages to the guest's
//! VMPL), and the machine, playing the hypervisor, reports the violation with the
//! VMPL and the page and stops the VM; the SVSM never sees it.

use nitride_qemu::snp::{outcome, MachineOutcome};
use nitride_tests::{boot_guest, expect};

fn stopped(mode: &str, access: &str, gpa: &str) {
    let out = boot_guest(mode);
    expect(
        &out,
        outcome(&out) == MachineOutcome::Violation,
        "violation exit status",
    );
    expect(
        &out,
        out.svsm_log.contains(&format!(
            "VIOLATION: VMPL1 {access} of guest-physical {gpa}"
        )),
        "violation report",
    );
    expect(
        &out,
        !out.console.contains("ISOLATION BROKEN"),
        "the access went through",
    );
}

#[test]
fn read_of_svsm_memory_is_stopped() {
    stopped("read-svsm", "read", "0x1001000");
}

#[test]
fn read_of_last_svsm_bytes_is_stopped() {
    stopped("read-svsm-end", "read", "0x1fffff8");
}

#[test]
fn write_to_svsm_memory_is_stopped() {
    stopped("write-svsm", "write", "0x1001000");
}

#[test]
fn execution_of_svsm_memory_is_stopped() {
    stopped("exec-svsm", "execute", "0x1001000");
}

#[test]
fn access_outside_guest_ram_is_stopped() {
    stopped("read-mmio", "read", "0xfee00030");
}
