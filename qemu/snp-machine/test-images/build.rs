//! Link each image as a freestanding static ELF at its load address.
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rerun-if-changed=vmpl0.ld");
    println!("cargo:rerun-if-changed=vmpl1.ld");
    for arg in [
        "-nostartfiles",
        "-nostdlib",
        "-static",
        "-no-pie",
        "-Wl,--build-id=none",
    ] {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
    println!("cargo:rustc-link-arg-bin=snp-test-vmpl0=-T{dir}/vmpl0.ld");
    println!("cargo:rustc-link-arg-bin=snp-test-vmpl1=-T{dir}/vmpl1.ld");
}
