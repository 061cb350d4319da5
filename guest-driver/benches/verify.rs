//! Reports verified per second: the full chain (ARK self-signature, ARK -> ASK,
//! ASK -> VCEK, report signature, TCB and CHIP_ID binding) and report-only (the
//! VCEK already chain-checked), and the chain alone. See docs/benchmarks.md.
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use nitride_guest_driver::verify::{verify, TrustAnchors};

fn vector(name: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = std::env::var_os("NITRIDE_SNP_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/snp-vectors")
        });
    let d = dir.join(name);
    let read = |f: &str| {
        std::fs::read(d.join(f))
            .unwrap_or_else(|e| panic!("SNP vectors missing at {}: {e}", d.display()))
    };
    (read("report.bin"), read("vcek.der"))
}

fn bench(c: &mut Criterion) {
    let anchors = TrustAnchors::amd_builtin().unwrap();
    let mut g = c.benchmark_group("report_verification");
    g.throughput(Throughput::Elements(1));
    for name in ["milan-v3-routex", "genoa-v3-routex"] {
        let (report, vcek) = vector(name);
        g.bench_function(format!("full_chain/{name}"), |b| {
            b.iter(|| verify(&anchors, &report, &vcek).unwrap())
        });
        g.bench_function(format!("chain_only/{name}"), |b| {
            b.iter(|| anchors.verify_endorsement(&vcek, None).unwrap())
        });
        let ek = anchors.verify_endorsement(&vcek, None).unwrap();
        g.bench_function(format!("report_only/{name}"), |b| {
            b.iter(|| ek.verify_report(&report).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
