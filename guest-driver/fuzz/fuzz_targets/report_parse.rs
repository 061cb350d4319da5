//! Report parsing: size/version checks, every accessor, then the signature, TCB and
//! CHIP_ID checks against a real (chain-checked) VCEK.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nitride_guest_driver::verify::{AppraisalPolicy, Endorsement, TrustAnchors};
use nitride_protocol::snp::{AttestationReport, TcbLayout};

static VCEK: &[u8] = include_bytes!("../../../../shared/snp-vectors/genoa-v3-routex/vcek.der");

fn endorsement() -> &'static Endorsement {
    static EK: OnceLock<Endorsement> = OnceLock::new();
    EK.get_or_init(|| {
        let anchors = TrustAnchors::amd_builtin().expect("bundled roots");
        anchors.verify_endorsement(VCEK, None).expect("vector VCEK")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = AttestationReport::from_bytes(data) {
        let _ = (r.policy().debug(), r.platform_info().smt_enabled(), r.signer_info().signing_key());
        let _ = (r.generation(), r.cpuid(), r.mit_vectors(), r.current_version());
        for layout in [TcbLayout::MilanGenoa, TcbLayout::Turin] {
            let t = r.reported_tcb(layout);
            assert_eq!(nitride_protocol::snp::Tcb::decode(t.encode(layout), layout), t);
        }
    }
    if let Ok(v) = endorsement().verify_report(data) {
        let _ = AppraisalPolicy::new().expect_vmpl(0).appraise(&v);
    }
});
