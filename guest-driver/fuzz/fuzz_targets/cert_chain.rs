//! Certificate-chain parsing: the input is tried as a VCEK/VLEK (PEM or DER) against
//! the bundled AMD roots, and as an extended-request certificate table whose entries
//! are tried the same way; also as an extra (unpinned) root set.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use nitride_guest_driver::verify::{Cert, CertRole, TrustAnchors};
use nitride_protocol::snp::{certs, Generation};

fn anchors() -> &'static TrustAnchors {
    static A: OnceLock<TrustAnchors> = OnceLock::new();
    A.get_or_init(|| TrustAnchors::amd_builtin().expect("bundled roots"))
}

fuzz_target!(|data: &[u8]| {
    let _ = anchors().verify_endorsement(data, None);
    let _ = anchors().verify_endorsement(data, Some(Generation::Turin));
    if let Ok(c) = Cert::from_pem_or_der(CertRole::Endorsement, data) {
        let _ = c.amd_extensions();
        let _ = c.p384_key(CertRole::Vcek);
        let _ = c.rsa_key(CertRole::Ark);
    }
    for entry in certs::entries(data).take(8) {
        match entry {
            Ok((_, cert)) => {
                let _ = anchors().verify_endorsement(cert, None);
            }
            Err(_) => break,
        }
    }
    let mut extra = TrustAnchors::empty();
    if extra.add_extra_root("fuzz", Generation::Milan, data, Some(data), Some(data)).is_ok() {
        let _ = extra.verify_endorsement(data, Some(Generation::Milan));
    }
});
