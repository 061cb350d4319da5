//! The cryptsetup token plugin for `nitride` tokens (`libcryptsetup-token-nitride.so`).
//!
//! libcryptsetup loads `libcryptsetup-token-<type>.so` for a LUKS2 token of that type
//! and calls its `CRYPTSETUP_TOKEN_1.0` symbols ([`ffi`]). For a `nitride` token
//! (written by `nitride luks enroll`), `open` does what `nitride luks unlock` does:
//! checks the token's UUID binding, has the vHSM unseal the volume key (sealed) or
//! provision it from the KBS after attestation (remote), release the volume's
//! passphrase and delete the key again; the passphrase goes to libcryptsetup in a
//! buffer it hands back to `buffer_free`, which zeroizes it. `validate` refuses a
//! token `nitride` would not write; `dump` adds its fields to `cryptsetup luksDump`.
//!
//! The vHSM is reached through the relay socket named by `$NITRIDE_SOCKET`
//! ([`DEFAULT_SOCKET`] otherwise). Everything but the C boundary is safe Rust;
//! unsafe lives in [`ffi`] only.
#![deny(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use nitride_guest_driver::cli::luks::{dump_lines, token_passphrase, Token};
use zeroize::Zeroizing;

pub mod ffi;

/// The socket used when `$NITRIDE_SOCKET` is unset (where a boot-time relay would
/// put it).
pub const DEFAULT_SOCKET: &str = "/run/nitride/vhsm.sock";

/// The plugin's version string (`cryptsetup_token_version`).
pub const VERSION: &str = concat!("nitride ", env!("CARGO_PKG_VERSION"), "\0");

/// Seconds each KBS request may take.
const KBS_TIMEOUT: Duration = Duration::from_secs(30);

/// Why `open` failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    /// The token is not one `nitride` writes.
    InvalidToken(String),
    /// The vHSM could not be reached.
    Unreachable(String),
    /// The vHSM or the KBS refused, or the token is bound to another volume.
    Refused(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidToken(m) => write!(f, "invalid nitride token: {m}"),
            Self::Unreachable(m) | Self::Refused(m) => f.write_str(m),
        }
    }
}

fn socket() -> PathBuf {
    std::env::var_os("NITRIDE_SOCKET")
        .filter(|s| !s.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from)
}

/// Check a token's JSON.
pub fn validate(json: &str) -> Result<Token, String> {
    Token::parse(json)
}

/// The passphrase for token `token_id` (its JSON) of the volume whose LUKS UUID
/// libcryptsetup reports as `uuid`.
pub fn open(
    json: &str,
    token_id: i32,
    uuid: &str,
    device: &Path,
) -> Result<Zeroizing<Vec<u8>>, OpenError> {
    let token = Token::parse(json).map_err(OpenError::InvalidToken)?;
    let uuid = uuid.to_ascii_lowercase();
    token_passphrase(
        &token,
        &token_id.to_string(),
        device,
        &uuid,
        &socket(),
        KBS_TIMEOUT,
    )
    .map_err(|e| match e {
        nitride_guest_driver::cli::CliError::Vhsm(m) => OpenError::Unreachable(m),
        other => OpenError::Refused(other.to_string()),
    })
}

/// The lines `dump` prints.
pub fn dump(json: &str) -> Vec<String> {
    match Token::parse(json) {
        Ok(t) => dump_lines(&t),
        Err(e) => vec![format!("\tinvalid nitride token: {e}")],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEALED: &str = r#"{"type":"nitride","keyslots":["1"],"nitride_version":1,"volume_uuid":"0b5e6a34-4c1f-4f57-9a43-1c2b8d3e5f60","source":"sealed","sealed_key":"AAEC","tcb":"0300000000001464"}"#;

    #[test]
    fn validate_and_dump() {
        assert!(validate(SEALED).is_ok());
        assert!(validate(&SEALED.replace("\"1\"", "\"1\",\"2\"")).is_err());
        assert!(validate("{}").is_err());
        let lines = dump(SEALED);
        assert!(lines.iter().any(|l| l.contains("0b5e6a34-4c1f")));
        assert!(lines.iter().any(|l| l.contains("0300000000001464")));
        assert!(dump("{")
            .iter()
            .any(|l| l.contains("invalid nitride token")));
    }

    #[test]
    fn open_refuses_before_reaching_anything() {
        let d = Path::new("disk.img");
        assert!(matches!(
            open("{}", 0, "0b5e6a34-4c1f-4f57-9a43-1c2b8d3e5f60", d),
            Err(OpenError::InvalidToken(_))
        ));
        // Bound to another volume: refused without asking the vHSM.
        match open(SEALED, 0, "0b5e6a34-4c1f-4f57-9a43-1c2b8d3e5f61", d) {
            Err(OpenError::Refused(m)) => assert!(m.contains("is bound to volume"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
