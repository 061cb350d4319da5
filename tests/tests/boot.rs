//! The SVSM boots from its IGVM image at VMPL0 on the virtual SNP machine, runs the
//! test guest at VMPL1, and answers its SVSM calls (the core protocol, PVALIDATE and
//! CREATE_VCPU refusals included); guests that do not call or halt are handled; the
//! SVSM's own failures are reported cleanly.

use nitride_tests::{boot_guest, expect, images, run, Boot, Outcome};
use std::time::Duration;

/// Every check of the guest's call sequence, in order.
const CHECKS: &[&str] = &[
    "query-core-v1",
    "query-core-v2",
    "query-unknown-protocol",
    "unsupported-call",
    "pvalidate-svsm-page-refused",
    "pvalidate-validate-and-use",
    "pvalidate-unchanged",
    "pvalidate-rescind",
    "pvalidate-2m-size-mismatch",
    "create-vcpu-svsm-page-refused",
    "create-vcpu-same-page-refused",
    "create-vcpu-bad-vmsa-refused",
    "delete-vcpu-unknown-refused",
    "deposit-mem-unsupported",
    "withdraw-mem-unsupported",
    "configure-vtom-unsupported",
    "unsupported-protocol",
    "remap-ca-unaligned",
    "remap-ca-svsm-memory",
    "remap-ca-not-ram",
    "remap-ca-top-of-space",
    "remap-ca-good",
    "call-through-new-caa",
    "old-caa-ignored",
    "no-call-pending-not-served",
    "served-again-after",
];

#[test]
fn call_sequence_is_served_as_specified() {
    let out = boot_guest("calls");
    expect(
        &out,
        out.outcome() == Outcome::GuestPass,
        "guest did not pass",
    );
    let lines: Vec<&str> = out.guest_lines().filter(|l| l.contains("CHECK ")).collect();
    expect(&out, lines.len() == CHECKS.len(), "wrong number of checks");
    for (line, name) in lines.iter().zip(CHECKS) {
        expect(
            &out,
            line.contains(&format!("CHECK {name}:")) && line.ends_with("... ok"),
            name,
        );
    }
    expect(
        &out,
        out.console.contains("[guest] RESULT 26 passed, 0 failed"),
        "result line",
    );
    // Discovery through the secrets-page fields.
    expect(
        &out,
        out.console.contains(
            "SVSM at 0x1000000 size 0x1000000, CAA 0x101000, guest VMPL 1, protocol max version 1",
        ),
        "discovery",
    );
}

#[test]
fn guest_that_never_calls_keeps_running() {
    let i = images();
    let mut boot = Boot::new(&i.svsm, &i.test_guest, "mode=idle");
    // Still running two seconds after the guest said it idles (boot time varies
    // with the machine's load: the timeout is only a backstop).
    boot.settle = Some((
        "idling without calling the SVSM".into(),
        Duration::from_secs(2),
    ));
    boot.timeout = Duration::from_secs(60);
    let out = run(boot);
    expect(
        &out,
        out.outcome() == Outcome::TimedOut,
        "QEMU should still be running",
    );
    expect(
        &out,
        out.console.contains("idling without calling the SVSM"),
        "guest started",
    );
    expect(
        &out,
        !out.svsm_log.contains("ERROR") && !out.svsm_log.contains("FATAL"),
        "no errors",
    );
}

#[test]
fn halted_guest_is_stopped() {
    let out = boot_guest("halt");
    expect(
        &out,
        out.outcome() == Outcome::GuestStopped,
        "halt should stop the guest",
    );
    expect(
        &out,
        out.svsm_log.contains("[snp-machine] VMPL1 halted at RIP ")
            && out
                .svsm_log
                .contains("(no interrupt will wake it): stopped"),
        "halt reported",
    );
}

fn faulting_boot(kind: &str) -> nitride_tests::RunOutput {
    let i = images();
    let mut boot = Boot::new(&i.svsm_fault_injection, &i.test_guest, "mode=calls");
    boot.svsm_args = format!("nitride.fault={kind}");
    run(boot)
}

#[test]
fn svsm_exceptions_are_reported() {
    for (kind, vector, cr2) in [
        ("ud", "vector 6 invalid opcode (#UD)", None),
        (
            "pf",
            "vector 14 page fault (#PF)",
            Some("CR2 0x0000004000000000"),
        ),
        ("gp", "vector 13 general protection (#GP)", None),
    ] {
        let out = faulting_boot(kind);
        expect(&out, out.outcome() == Outcome::SvsmFatal, kind);
        expect(
            &out,
            out.svsm_log
                .contains(&format!("CPU exception in the SVSM: {vector}")),
            kind,
        );
        expect(
            &out,
            out.svsm_log.contains("error code") && out.svsm_log.contains("RIP 0x0000000001"),
            kind,
        );
        if let Some(cr2) = cr2 {
            expect(&out, out.svsm_log.contains(cr2), kind);
        }
        expect(&out, !out.console.contains("[guest]"), "guest must not run");
    }
    let out = faulting_boot("panic");
    expect(&out, out.outcome() == Outcome::SvsmFatal, "panic");
    expect(
        &out,
        out.svsm_log.contains("[svsm] FATAL: panic: ") && out.svsm_log.contains("deliberate panic"),
        "panic report",
    );
}

#[test]
fn production_image_ignores_fault_injection() {
    let i = images();
    let mut boot = Boot::new(&i.svsm, &i.test_guest, "mode=calls");
    boot.svsm_args = "nitride.fault=ud".into();
    let out = run(boot);
    expect(
        &out,
        out.svsm_log.contains("nitride.fault ignored"),
        "warning",
    );
    expect(
        &out,
        out.outcome() == Outcome::GuestPass,
        "guest still served",
    );
}
