//! The guest can never reach SVSM memory: every read, write or instruction fetch
//! ends in a nested page fault, the SVSM reports the violation and stops the VM. On
//! SNP (`nitride_tests::on_snp`) the RMP refuses the access and the machine (the
//! hypervisor's role) reports it and stops the VM; the SVSM never sees it.

use nitride_qemu::snp::{outcome, MachineOutcome};
use nitride_tests::{boot_guest, expect, on_snp, Outcome};

fn stopped(mode: &str, access: &str, gpa: &str, what: &str) {
    let out = boot_guest(mode);
    if on_snp() {
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
        return;
    }
    expect(
        &out,
        out.outcome() == Outcome::Violation,
        "violation exit status",
    );
    expect(
        &out,
        out.svsm_log
            .contains(&format!("isolation: guest {access} of {what} at GPA {gpa}")),
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
    stopped("read-svsm", "read", "0x1001000", "SVSM memory");
}

#[test]
fn read_of_last_svsm_bytes_is_stopped() {
    stopped("read-svsm-end", "read", "0x1fffff8", "SVSM memory");
}

#[test]
fn write_to_svsm_memory_is_stopped() {
    stopped("write-svsm", "write", "0x1001000", "SVSM memory");
}

#[test]
fn execution_of_svsm_memory_is_stopped() {
    stopped("exec-svsm", "execute", "0x1001000", "SVSM memory");
}

#[test]
fn access_outside_guest_ram_is_stopped() {
    stopped(
        "read-mmio",
        "read",
        "0xfee00030",
        "memory outside guest RAM",
    );
}
