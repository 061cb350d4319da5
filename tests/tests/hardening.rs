//! The SVSM's own memory is W^X with stack guards (issue 10): the fault-injection
//! image makes the SVSM write its code, run its data or guest RAM, and touch the
//! guard under its stack; each must end in a page fault the SVSM reports with the
//! address it aimed at, before the guest runs.
//!
//! The guest-side attacks of the emulated platform (debug registers across the
//! world switch, the calling instruction with prefixes and under single-stepping,
//! intercepted instructions, port and MSR refusal floods, NMIs, a faked console or
//! verdict) tested the SVSM as the guest's hypervisor. On SEV-SNP the SVSM is not
//! the guest's hypervisor: the hardware switches VMPLs and keeps each VMSA's state
//! apart, and the host intercepts the guest's instructions, so those attacks are the
//! host's (on the virtual SNP machine: `qemu/tests/snp_machine.rs`); what the guest
//! can reach of the SVSM is its memory (tests/isolation.rs) and its calls.

use nitride_tests::{expect, images, run, Boot, Outcome};

#[test]
fn svsm_memory_is_w_xor_x_with_stack_guards() {
    let i = images();
    // (fault, page-fault error code, the SVSM's line naming the target)
    for (fault, error, aimed) in [
        ("write-text", "0x3", "writing to SVSM code at 0x"),
        ("exec-data", "0x11", "calling SVSM data at 0x"),
        ("exec-guest", "0x11", "calling guest RAM at 0x"),
        (
            "stack-guard",
            "0x2",
            "writing the guard page under the boot stack at 0x",
        ),
    ] {
        let mut boot = Boot::new(&i.svsm_fault_injection, &i.test_guest, "mode=calls");
        boot.svsm_args = format!("nitride.fault={fault}");
        let out = run(boot);
        expect(&out, out.outcome() == Outcome::SvsmFatal, fault);
        expect(
            &out,
            out.svsm_log
                .contains("CPU exception in the SVSM: vector 14 page fault (#PF)")
                && out.svsm_log.contains(&format!("error code {error} ")),
            fault,
        );
        // The address the fault names is the one the injected access aimed at.
        let Some(target) = out
            .svsm_log
            .lines()
            .find_map(|l| l.split(aimed).nth(1))
            .map(|a| a.trim().to_string())
        else {
            panic!("{fault}: no target in the log:\n{}", out.svsm_log);
        };
        let cr2 = format!("CR2 0x{target:0>16}");
        expect(&out, out.svsm_log.contains(&cr2), &cr2);
        expect(&out, !out.console.contains("[guest]"), "guest must not run");
    }
}
