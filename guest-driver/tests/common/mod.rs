//! Loading the real SNP vectors from `$NITRIDE_SNP_VECTORS` or
//! `<CARGO_MANIFEST_DIR>/../../shared/snp-vectors`. Missing vectors fail the test.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

pub struct Vector {
    pub name: String,
    pub dir: PathBuf,
    pub report: Vec<u8>,
    pub ek: Vec<u8>,
    pub ek_path: PathBuf,
    pub expected: serde_json::Value,
}

pub fn vectors_dir() -> PathBuf {
    let dir = std::env::var_os("NITRIDE_SNP_VECTORS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // Cargo sets CARGO_MANIFEST_DIR when running tests too; prefer that to the
            // compile-time value so a relocated build still finds the vectors.
            let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
            manifest.join("../../shared/snp-vectors")
        });
    assert!(
        dir.join("roots").is_dir(),
        "SNP test vectors not found at {}: set NITRIDE_SNP_VECTORS or clone the repository next to shared/",
        dir.display()
    );
    dir
}

pub fn roots_dir() -> PathBuf {
    vectors_dir().join("roots")
}

pub fn all() -> Vec<Vector> {
    let dir = vectors_dir();
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("report.bin").is_file())
        .collect();
    names.sort();
    assert!(
        names.len() >= 7,
        "expected at least 7 vectors in {}, found {}",
        dir.display(),
        names.len()
    );
    names.into_iter().map(load_dir).collect()
}

pub fn load(name: &str) -> Vector {
    load_dir(vectors_dir().join(name))
}

fn load_dir(dir: PathBuf) -> Vector {
    let report = std::fs::read(dir.join("report.bin")).unwrap();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let ek_name = expected["endorsement"].as_str().unwrap().to_string();
    let ek_path = dir.join(&ek_name);
    let ek = std::fs::read(&ek_path).unwrap();
    Vector {
        name: dir.file_name().unwrap().to_string_lossy().into_owned(),
        dir,
        report,
        ek,
        ek_path,
        expected,
    }
}
