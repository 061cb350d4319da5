//! The launch measurement of the SVSM with a guest: the launch digest the PSP
//! computes over their IGVM file ([`crate::igvm::build_svsm`],
//! [`crate::igvm::launch_digest`]), which every attestation report of that VM carries
//! in MEASUREMENT. Computed on the host from the files, independently of the machine.

use std::io;
use std::path::Path;

use nitride_protocol::launch_config::LaunchConfig;

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The launch measurement of `svsm_elf` with `guest` under the default launch
/// configuration.
pub fn launch_measurement(svsm_elf: &Path, guest: &Path) -> io::Result<[u8; 48]> {
    launch_measurement_with(svsm_elf, guest, None)
}

/// The launch measurement of `svsm_elf` with `guest` and the launch configuration
/// file `config` (`None`: the default configuration). The file must be a valid
/// configuration: the SVSM refuses to start with any other.
pub fn launch_measurement_with(
    svsm_elf: &Path,
    guest: &Path,
    config: Option<&Path>,
) -> io::Result<[u8; 48]> {
    let config = match config {
        None => None,
        Some(path) => Some(LaunchConfig::parse(&std::fs::read(path)?).map_err(invalid)?),
    };
    let file = crate::igvm::build_svsm(
        &std::fs::read(svsm_elf)?,
        &std::fs::read(guest)?,
        config.as_ref(),
    )
    .map_err(invalid)?;
    crate::igvm::launch_digest(&file).map_err(invalid)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
