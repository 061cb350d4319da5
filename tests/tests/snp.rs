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

#[test]
fn snp_relay_vhsm_and_attestation() {
    use nitride_protocol::vhsm::{KeyTemplate, KeyType, KeyUsage, VmplSet};
    let (vm, mut c) = nitride_tests::start_relay_snp("snp-relay", "");
    let t = KeyTemplate::new(
        KeyType::EcdsaP384,
        KeyUsage::SIGN | KeyUsage::VERIFY | KeyUsage::ATTEST,
        VmplSet::all(),
        false,
    );
    let key = c.generate(t, b"snp").expect("generate").key_id.get();
    let sig = c.sign(key, b"on SNP").expect("sign");
    c.verify(key, b"on SNP", &sig).expect("verify");
    assert_eq!(c.random(32).expect("random").len(), 32);
    let ev = c.attest_key(key, &[7u8; 64]).expect("attest key");
    let anchors = nitride_tests::dev_anchors();
    let v = nitride_guest_driver::verify::verify(
        &anchors,
        &ev.report,
        &nitride_tests::endorsement_key(&ev.certificates),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", vm.svsm_log_text()));
    assert_eq!(v.report.vmpl.get(), 0, "a VMPL0 report");
    println!("{}", vm.svsm_log_text());
}
