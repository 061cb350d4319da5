//! Link the cdylib with the version script that puts the token entry points in the
//! `CRYPTSETUP_TOKEN_1.0` version node (libcryptsetup looks them up with `dlvsym`).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    println!("cargo:rerun-if-changed=cryptsetup-token.map");
    println!("cargo:rustc-cdylib-link-arg=-Wl,--version-script={dir}/cryptsetup-token.map");
}
