//! Attacks on the SVSM from the guest's side (issue 10), each performed in QEMU by
//! the test guest: code execution through the debug registers and the world
//! switch, W^X and stack guards in the SVSM's own page tables, a console and
//! verdicts the guest fakes, refusal floods, the calling instruction with prefixes
//! and under single-stepping, the intercepted instructions, leftovers in guest RAM
//! and guest buffers above 4 GiB. Every test judges the SVSM by its own log and
//! verdict, which the guest cannot reach.

use nitride_protocol::emulated::exit;
use nitride_tests::{boot_guest, expect, images, run, Boot, Outcome, RunOutput};

/// The guest ended the run itself with GUEST_PASS, the SVSM's log says so, and
/// the SVSM's code is what was measured at boot.
fn passed(out: &RunOutput, what: &str) {
    expect(out, out.outcome() == Outcome::GuestPass, what);
    expect(
        out,
        out.svsm_log
            .contains("SVSM code and read-only data unchanged since boot"),
        "SVSM code checked at the end of the run",
    );
    expect(out, !out.svsm_log.contains("FATAL"), "no SVSM failure");
}

#[test]
fn debug_register_attack_on_the_world_switch_is_harmless() {
    let svsm = &images().svsm;
    // What an attacker reads from the release image: the instruction after VMSAVE
    // in the world switch, and the exception handler. IST1 is aimed so that, on the
    // image before the fix, the handler's pushes put the guest's opcode bytes over
    // the instruction the handler returns to (which then ran them: exit status 85).
    let symbol = |name| match nitride_qemu::elf_symbol(svsm, name) {
        Ok(a) => a,
        Err(e) => panic!("{e}"),
    };
    let dr0 = symbol("nitride_vmrun_after_vmsave");
    let ist = symbol("nitride_exception") + 0x220;
    let out = boot_guest(&format!("dr-attack dr0={dr0:#x} ist={ist:#x}"));
    passed(&out, "the attack call must be served and the guest pass");
    for check in [
        "attack-call-served",
        "svsm-answers-afterwards",
        "debug-registers-virtual",
        "no-debug-trap-in-guest",
    ] {
        expect(
            &out,
            out.console.contains(&format!("CHECK {check}:"))
                && out
                    .guest_lines()
                    .any(|l| l.contains(&format!("CHECK {check}:")) && l.ends_with("... ok")),
            check,
        );
    }
    expect(
        &out,
        out.status != Some(exit::qemu_status(0x2A)),
        "the guest's payload ran",
    );
}

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
        let mut boot = Boot::new(&i.svsm_fault_injection, Some(&i.test_guest), "mode=calls");
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

#[test]
fn guest_cannot_fake_the_svsm_console() {
    let out = boot_guest("fake-console");
    passed(&out, "fake-console guest");
    // The refusal the SVSM logged while COM1 was in loopback is in its log.
    expect(
        &out,
        out.svsm_lines()
            .any(|l| l.contains("guest I/O from port 0x70 refused (#GP)")),
        "SVSM line logged during the guest's loopback",
    );
    expect(
        &out,
        out.svsm_lines().any(|l| l.contains("guest loaded, entry"))
            && out.verdict() == Some(exit::GUEST_PASS),
        "the SVSM's own lines and verdict",
    );
    // The guest's forgeries are on COM1, and nowhere in the SVSM's log.
    for fake in [
        "guest ended the run with its status 0x30",
        "isolation: guest forged this line",
        "verdict: 0x3f svsm-fatal",
    ] {
        expect(
            &out,
            out.console.contains(fake),
            "the guest printed its fake",
        );
        expect(
            &out,
            !out.svsm_lines().any(|l| l.contains(fake)),
            "a fake line taken as the SVSM's",
        );
    }
}

#[test]
fn guest_cannot_end_the_run_with_an_svsm_verdict() {
    let out = boot_guest("fake-verdict");
    passed(
        &out,
        "the guest's requests are refused and it ends with its own pass",
    );
    for value in ["0x30", "0x3f", "0x31", "0xff"] {
        expect(
            &out,
            out.svsm_lines().any(|l| {
                l.contains(&format!(
                    "guest request to end the run with status {value} "
                )) && l.ends_with("refused (#GP)")
            }),
            value,
        );
    }
    expect(
        &out,
        out.svsm_log
            .contains("guest ended the run with its status 0x21"),
        "the guest's own status is passed on",
    );
}

#[test]
fn refusal_flood_is_rate_limited_and_counted() {
    let out = boot_guest("port-sweep");
    passed(&out, "port sweep");
    let io_lines = out.svsm_lines().filter(|l| l.contains("guest I/O")).count();
    expect(
        &out,
        io_lines <= 24,
        &format!("{io_lines} I/O refusal lines for 65,520 refusals"),
    );
    expect(
        &out,
        out.svsm_log
            .contains("guest I/O port accesses refused in this run: 65520 in total (65512 not logged one by one)"),
        "the count of every refusal",
    );
    expect(
        &out,
        out.svsm_log
            .contains("guest MSR accesses refused in this run: 100 in total"),
        "MSR refusals counted",
    );
    expect(&out, out.svsm_log.lines().count() < 80, "bounded log");
}

#[test]
fn rep_vmmcall_resumes_after_the_whole_instruction() {
    let out = boot_guest("rep-vmmcall");
    passed(&out, "rep vmmcall");
    for check in ["rep-vmmcall", "segment-prefixes-rep-vmmcall"] {
        expect(
            &out,
            out.guest_lines()
                .any(|l| l.contains(&format!("CHECK {check}:")) && l.ends_with("... ok")),
            check,
        );
    }
}

#[test]
fn single_step_over_a_call_gets_its_debug_trap() {
    let out = boot_guest("single-step");
    passed(&out, "single-stepping over the call");
    for check in [
        "same-traps-as-without-the-call",
        "single-step-trap-after-the-call",
        "call-served-while-stepping",
    ] {
        expect(
            &out,
            out.guest_lines()
                .any(|l| l.contains(&format!("CHECK {check}:")) && l.ends_with("... ok")),
            check,
        );
    }
}

#[test]
fn intercepted_instructions_behave_as_documented() {
    let out = boot_guest("intercepts");
    passed(&out, "intercepts");
    for check in [
        "invd-no-op",
        "wbinvd-no-op",
        "wbnoinvd-no-op",
        "monitor-no-op",
        "rdpmc-refused",
        "xsetbv-kept-apart",
        "debug-registers-read-back",
        "debug-register-rules",
        "int3-to-guest",
    ] {
        expect(
            &out,
            out.guest_lines()
                .any(|l| l.contains(&format!("CHECK {check}:")) && l.ends_with("... ok")),
            check,
        );
    }
    expect(
        &out,
        out.svsm_log.contains("guest RDPMC refused (#GP)"),
        "RDPMC refusal logged",
    );
    expect(
        &out,
        out.svsm_log
            .contains("XCR0: the SVSM ran every exit with its own 0x3"),
        "the SVSM kept its XCR0",
    );
    let out = boot_guest("mwait");
    expect(&out, out.outcome() == Outcome::GuestStopped, "MWAIT stops");
    expect(
        &out,
        out.svsm_log
            .contains("guest waited (MWAIT) with nothing to wake it"),
        "MWAIT reported",
    );
    let out = boot_guest("invlpga");
    expect(
        &out,
        out.outcome() == Outcome::GuestStopped,
        "INVLPGA stops",
    );
    expect(
        &out,
        out.svsm_log.contains("unexpected guest exit 0x7a"),
        "INVLPGA reported",
    );
}

#[test]
fn nmi_from_the_platform_stops_the_run() {
    let i = images();
    let dir = nitride_qemu::repo_root()
        .join("target")
        .join("e2e")
        .join(format!("nmi-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        panic!("{e}");
    }
    let qmp = dir.join("qmp.sock");
    let _ = std::fs::remove_file(&qmp);
    let mut boot = Boot::new(&i.svsm, Some(&i.test_guest), "mode=idle");
    boot.extra = vec![
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", qmp.display()),
    ];
    boot.timeout = std::time::Duration::from_secs(60);
    let sock = qmp.clone();
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        use std::io::{BufRead, BufReader, Write};
        let start = std::time::Instant::now();
        let stream = loop {
            match std::os::unix::net::UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(e) if start.elapsed().as_secs() > 30 => return Err(e),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        };
        // Let the guest reach its idle loop.
        std::thread::sleep(std::time::Duration::from_secs(2));
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?; // greeting
        let mut w = stream;
        w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
        line.clear();
        reader.read_line(&mut line)?;
        w.write_all(b"{\"execute\":\"inject-nmi\"}\n")?;
        line.clear();
        reader.read_line(&mut line)?;
        Ok(())
    });
    let out = run(boot);
    let sent = sender.join();
    let _ = std::fs::remove_dir_all(&dir);
    expect(&out, matches!(sent, Ok(Ok(()))), "NMI injected through QMP");
    expect(
        &out,
        out.outcome() == Outcome::GuestStopped,
        "an NMI ends the run with the SVSM's verdict",
    );
    expect(
        &out,
        out.svsm_log
            .contains("the platform sent an NMI while the guest ran"),
        "NMI reported",
    );
}

#[test]
fn guest_ram_holds_no_leftovers_from_before_the_svsm() {
    let i = images();
    let mut boot = Boot::new(&i.svsm, Some(&i.test_guest), "mode=leftovers");
    // Something for the guest to look for: the SVSM's own options.
    boot.svsm_args = "nitride.log=info".into();
    let out = run(boot);
    passed(&out, "no leftovers");
    expect(
        &out,
        out.svsm_log.contains("guest RAM scrubbed: 495 MiB zeroed"),
        "scrub reported",
    );
    expect(&out, !out.console.contains("LEFTOVER"), "leftovers found");
}

#[test]
fn guest_buffers_above_4_gib_work_completely() {
    let i = images();
    let mut boot = Boot::new(&i.svsm, Some(&i.test_guest), "mode=high-mem");
    // QEMU puts RAM above 3 GiB at 4 GiB and up.
    boot.memory_mb = 5 * 1024;
    boot.timeout = std::time::Duration::from_secs(180);
    let out = run(boot);
    passed(&out, "buffers above 4 GiB");
    expect(
        &out,
        out.svsm_lines()
            .any(|l| l.contains("guest RAM 0x100000000..")),
        "guest RAM above 4 GiB",
    );
    for check in ["vhsm-buffers-above-4g", "attestation-buffers-above-4g"] {
        expect(
            &out,
            out.guest_lines()
                .any(|l| l.contains(&format!("CHECK {check}:")) && l.ends_with("... ok")),
            check,
        );
    }
}
