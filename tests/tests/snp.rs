//! The SVSM on the virtual SNP machine: booted from its IGVM image at VMPL0, it runs
//! the SNP test guest at VMPL1 and serves its calls.

use nitride_tests::{boot_guest_snp, expect, Outcome};

#[test]
fn snp_call_sequence() {
    let out = boot_guest_snp("calls");
    expect(
        &out,
        out.outcome() == Outcome::GuestPass,
        "guest did not pass",
    );
    let lines: Vec<&str> = out.guest_lines().filter(|l| l.contains("CHECK ")).collect();
    for l in &lines {
        println!("{l}");
    }
    expect(
        &out,
        lines.iter().all(|l| l.ends_with("... ok")),
        "a check failed",
    );
}
