//! The virtual SNP machine in QEMU, driven by its test program (a VMPL0 and a VMPL1
//! image in one IGVM file):
//! - every check of the test program passes (the guests print PASS/FAIL lines on
//!   COM1, which the machine prefixes with the VMPL; the machine's own lines are on
//!   the host log, QEMU's debug console, which no guest VMPL reaches);
//! - three implementations, one launch digest: the runner's, the `igvm` crate's,
//!   the machine's own parser and digest run on the host, and MEASUREMENT in the
//!   reports the machine's PSP signs with the development VCEK (checked by the
//!   guest driver's verifier against the development chain);
//! - every access a VMPL1 permission mask forbids stops the VM with a violation;
//! - IGVM files that break a launch rule are refused before anything runs.

use std::sync::OnceLock;
use std::time::Duration;

use nitride_qemu::igvm::{launch_digest, reference_digest};
use nitride_qemu::snp::{
    build_snp_images, hex_lines, outcome, test_igvm, write_test_igvm, MachineOutcome, SnpBoot,
    SnpImages,
};
use nitride_qemu::{ensure_dev_chain, images_dir};

struct Built {
    images: SnpImages,
    igvm: std::path::PathBuf,
}

fn built() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let images = build_snp_images().expect("build the machine and its test program");
        let igvm = write_test_igvm(&images).expect("IGVM file");
        Built { images, igvm }
    })
}

fn boot(cmdline: &str) -> nitride_qemu::RunOutput {
    let b = built();
    let mut boot = SnpBoot::new(&b.images.machine, &b.igvm);
    boot.cmdline = cmdline.to_string();
    boot.timeout = Duration::from_secs(120);
    boot.run().expect("QEMU runs")
}

fn machine_digest(console: &str) -> Vec<u8> {
    let line = console
        .lines()
        .find_map(|l| l.strip_prefix("[snp-machine] launch digest "))
        .expect("the machine logs its launch digest");
    hex::decode(line.trim()).expect("hex digest")
}

/// Every check the test program makes, in both VMPLs.
const CHECKS: &[&str] = &[
    "sev-status",
    "msr-sev-info",
    "msr-cpuid",
    "msr-hv-features",
    "psc-and-register-ghcb",
    "vc-cpuid",
    "cpuid-page",
    "ap-destroy",
    "vc-rdmsr",
    "vc-rdmsr-refused",
    "ghcb-msr-gp",
    "vc-ioio",
    "vc-wbinvd",
    "vc-vmmcall",
    "vc-rdpmc",
    "vc-invd",
    "vc-dr7-write",
    "vc-dr7-read",
    "dr0-virtual",
    "xcr0",
    "vc-not-validated",
    "pvalidate",
    "validated-page-reads",
    "pvalidate-rescind",
    "rmpadjust-refusals",
    "rmpadjust-grants",
    "psc-request-pages",
    "report-vmpl0",
    "derive-key",
    "ext-request-too-small",
    "ext-request",
    "vmsa1-created",
    "ap-creation-refusals",
    "run-vmpl-without-vmsa",
    "xcr0-and-dr-per-vmpl",
    "ghcb-msr-in-world-switch",
    "permitted-accesses",
    "rmpadjust-from-vmpl1",
    "vmsa-grant-from-vmpl1-ignored",
    "pvalidate-from-vmpl1",
    "vmpck0-withheld",
    "report-vmpl0-refused",
    "report-vmpl1",
    "key-vmpl0-refused",
    "key-vmpl1",
    "vmsa-holds-vmpl1-registers",
    "vmsa-gpr-offsets",
    "vmsa-registers-edited",
    "registers-kept-across-vmpl-switch",
    "vmpl1-checks",
];

#[test]
fn the_test_program_passes_and_three_digests_agree() {
    let out = boot("");
    assert_eq!(
        outcome(&out),
        MachineOutcome::Terminated,
        "{}\n{}",
        out.console,
        out.stderr
    );
    assert!(
        out.svsm_log
            .contains("[snp-machine] VMPL0 requested termination: reason set 1, code 0"),
        "{}\n{}",
        out.svsm_log,
        out.console
    );
    assert!(!out.console.contains("FAIL"), "{}", out.console);
    for name in CHECKS {
        assert!(
            out.console.contains(&format!("] PASS {name}:")),
            "check {name} missing:\n{}",
            out.console
        );
    }

    // Three implementations, one number.
    let file = test_igvm(&built().images).unwrap();
    let ours = launch_digest(&file).unwrap();
    assert_eq!(
        ours,
        reference_digest(&file).unwrap(),
        "runner vs igvm crate"
    );
    let plan = nitride_snp_machine::igvm::parse(&file).unwrap();
    assert_eq!(
        ours,
        nitride_snp_machine::igvm::launch_digest(&plan),
        "machine's code on the host"
    );
    assert_eq!(machine_digest(&out.svsm_log), ours, "the machine in QEMU");

    // Reports from VMPL0 and VMPL1: signed by the development VCEK, MEASUREMENT = the
    // digest, VMPL as asked, REPORT_DATA as sent.
    let chain = ensure_dev_chain().unwrap();
    let anchors = chain.trust_anchors().unwrap();
    let vcek = std::fs::read(&chain.vcek_der).unwrap();
    for (label, vmpl, data) in [("REPORT0", 0u32, 0xA0u8), ("REPORT1", 1, 0xA1)] {
        let bytes = hex_lines(&out.console, label);
        assert_eq!(bytes.len(), 0x4A0, "{label}");
        let v = nitride_guest_driver::verify::verify(&anchors, &bytes, &vcek)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        assert_eq!(v.report.measurement, ours, "{label}");
        assert_eq!(v.report.vmpl.get(), vmpl, "{label}");
        assert_eq!(v.report.report_data, [data; 64], "{label}");
        let mut forged = bytes.clone();
        forged[0x90] ^= 1;
        assert!(nitride_guest_driver::verify::verify(&anchors, &forged, &vcek).is_err());
    }
    // The VMPL1 key is the same whether VMPL0 (VMPCK0) or VMPL1 (VMPCK1) asks.
    let k0 = hex_lines(&out.console, "KEY1-BY-VMPL0");
    assert_eq!(k0.len(), 32);
    assert_eq!(k0, hex_lines(&out.console, "KEY1-BY-VMPL1"));
}

#[test]
fn forbidden_accesses_stop_the_vm() {
    built();
    // Every mask without read (for reads) and without write (for writes).
    let cases: Vec<(&str, u64)> = (0..16u64)
        .filter(|m| m & 1 == 0)
        .map(|m| ("read", m))
        .chain((0..16u64).filter(|m| m & 2 == 0).map(|m| ("write", m)))
        .collect();
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for chunk in cases.chunks(cases.len().div_ceil(2)) {
            let results = &results;
            s.spawn(move || {
                for &(what, mask) in chunk {
                    let out = boot(&format!("probe={what}:{mask}"));
                    results.lock().unwrap().push((what, mask, out));
                }
            });
        }
    });
    let results = results.into_inner().unwrap();
    assert_eq!(results.len(), 16);
    for (what, mask, out) in results {
        let page = 0x82_0000 + mask * 0x1000;
        assert_eq!(
            outcome(&out),
            MachineOutcome::Violation,
            "{what} of mask {mask}:\n{}",
            out.console
        );
        assert!(
            out.svsm_log.contains(&format!(
                "VIOLATION: VMPL1 {what} of guest-physical {page:#x}"
            )),
            "{what} of mask {mask}:\n{}",
            out.svsm_log
        );
        assert!(!out.console.contains("probe survived"));
    }
}

#[test]
fn igvm_files_breaking_launch_rules_are_refused() {
    let b = built();
    let vmpl0 = std::fs::read(&b.images.test_vmpl0).unwrap();
    let good = test_igvm(&b.images).unwrap();
    // A corrupted header checksum, and a VMSA starting with paging on (KVM starts
    // only with CR0 0x30 or 0x31): the machine refuses both before anything runs.
    let mut bad_crc = good.clone();
    bad_crc[20] ^= 1;
    let file = nitride_qemu::igvm::build(&vmpl0, &[]).unwrap();
    let parsed = igvm::IgvmFile::new_from_binary(&file, None).unwrap();
    let mut directives = parsed.directives().to_vec();
    for d in &mut directives {
        if let igvm::IgvmDirectiveHeader::SnpVpContext { vmsa, .. } = d {
            vmsa.cr0 = 0x8000_0031;
        }
    }
    let bad_vmsa_file = igvm::IgvmFile::new(
        igvm::IgvmRevision::V1,
        parsed.platforms().to_vec(),
        parsed.initializations().to_vec(),
        directives,
    )
    .unwrap();
    let mut bad_vmsa = Vec::new();
    bad_vmsa_file.serialize(&mut bad_vmsa).unwrap();
    for (name, bytes, why) in [
        ("bad-crc", bad_crc, "IGVM checksum"),
        ("bad-vmsa", bad_vmsa, "KVM launches only CR0 0x30 or 0x31"),
    ] {
        let path = images_dir().join(format!("snp-test-{name}.igvm"));
        std::fs::write(&path, &bytes).unwrap();
        let mut boot = SnpBoot::new(&b.images.machine, &path);
        boot.timeout = Duration::from_secs(60);
        let out = boot.run().unwrap();
        assert_eq!(
            outcome(&out),
            MachineOutcome::LaunchRefused,
            "{name}:\n{}",
            out.console
        );
        assert!(out.svsm_log.contains(why), "{name}:\n{}", out.svsm_log);
        assert!(!out.console.contains("[vmpl0]"), "{name}: nothing runs");
    }
}
