//! Link the SVSM binary as a freestanding static ELF at its fixed physical address.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bins=-T{dir}/link.ld");
    // The SNP image starts at its 32-bit IGVM entry (the ELF entry point the IGVM
    // builder puts into the launch VMSA), not at the PVH entry.
    if std::env::var_os("CARGO_FEATURE_SNP").is_some() {
        println!("cargo:rustc-link-arg-bins=-Wl,-e,svsm_snp_start32");
    }
}
