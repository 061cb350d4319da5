//! `nitride`: the Nitride command-line tool (see `nitride_guest_driver::cli`).
#![forbid(unsafe_code)]

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(nitride_guest_driver::cli::main_with_args(&args));
}
