//! Typed command-line values: every value `nitride` takes is parsed here, at parse
//! time, so a bad value is a usage error (exit 2) naming the value, the option and
//! the limit, before anything is read or sent.
//!
//! Limits come from `nitride_protocol` (the vHSM's wire limits and the attestation
//! protocol's), never restated as numbers.

use std::ffi::OsStr;
use std::marker::PhantomData;

use clap::builder::{EnumValueParser, PossibleValue, TypedValueParser};
use clap::error::{ContextKind, ContextValue};
use clap::ValueEnum;

use nitride_protocol::attest::{Nonce, NONCE_SIZE};
use nitride_protocol::snp::Guid;

use crate::verify::MinTcb;
use nitride_protocol::vhsm::{
    KeyType, KeyUsage, MAX_DATA_LEN, MAX_DERIVE_INPUT_LEN, MAX_LABEL_LEN, MAX_RANDOM_LEN,
};

/// Bytes given in hex. An alias, so that clap's derive takes a field of this type
/// for one value (it reads a field spelled `Vec<T>` as a repeated option).
pub type Bytes = Vec<u8>;

/// A key type, as typed on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyTypeArg {
    /// AES-256: encrypt/decrypt (GCM), wrap/unwrap (RFC 5649), derive
    #[value(name = "aes-256")]
    Aes256,
    /// ECDSA P-384 with SHA-384: sign/verify
    #[value(name = "ecdsa-p384")]
    EcdsaP384,
    /// Ed25519: sign/verify
    #[value(name = "ed25519")]
    Ed25519,
    /// HMAC-SHA-384: sign/verify (the MAC), derive
    #[value(name = "hmac-sha384")]
    HmacSha384,
    /// ECDSA P-256 with SHA-256: sign/verify
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    /// ECDH P-256: agree with a peer's public key into a new key (usage derive)
    #[value(name = "ecdh-p256")]
    EcdhP256,
}

impl KeyTypeArg {
    /// The wire key type.
    pub fn key_type(self) -> KeyType {
        match self {
            Self::Aes256 => KeyType::Aes256,
            Self::EcdsaP384 => KeyType::EcdsaP384,
            Self::Ed25519 => KeyType::Ed25519,
            Self::HmacSha384 => KeyType::HmacSha384,
            Self::EcdsaP256 => KeyType::EcdsaP256,
            Self::EcdhP256 => KeyType::EcdhP256,
        }
    }

    /// The name typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes256 => "aes-256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Ed25519 => "ed25519",
            Self::HmacSha384 => "hmac-sha384",
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdhP256 => "ecdh-p256",
        }
    }

    /// The command-line name of a wire key type.
    pub fn name_of(raw: u16) -> &'static str {
        Self::value_variants()
            .iter()
            .find(|t| t.key_type().raw() == raw)
            .map_or("unknown", |t| t.name())
    }
}

/// A key usage, as typed on the command line (`--usage sign,verify`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UsageArg {
    /// AES-GCM encryption
    Encrypt,
    /// AES-GCM decryption
    Decrypt,
    /// signing (ECDSA, Ed25519, HMAC)
    Sign,
    /// verification (ECDSA, Ed25519, HMAC)
    Verify,
    /// wrapping exportable keys out of the vault
    Wrap,
    /// unwrapping keys into the vault
    Unwrap,
    /// deriving new keys with HKDF
    Derive,
    /// listed in the attestation manifest, usable with `attest key`
    Attest,
    /// LUKS volume passphrases derived from it may be released (`nitride luks`)
    Release,
}

impl UsageArg {
    /// The wire usage flag.
    pub fn flag(self) -> KeyUsage {
        match self {
            Self::Encrypt => KeyUsage::ENCRYPT,
            Self::Decrypt => KeyUsage::DECRYPT,
            Self::Sign => KeyUsage::SIGN,
            Self::Verify => KeyUsage::VERIFY,
            Self::Wrap => KeyUsage::WRAP,
            Self::Unwrap => KeyUsage::UNWRAP,
            Self::Derive => KeyUsage::DERIVE,
            Self::Attest => KeyUsage::ATTEST,
            Self::Release => KeyUsage::RELEASE,
        }
    }

    /// The name typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Encrypt => "encrypt",
            Self::Decrypt => "decrypt",
            Self::Sign => "sign",
            Self::Verify => "verify",
            Self::Wrap => "wrap",
            Self::Unwrap => "unwrap",
            Self::Derive => "derive",
            Self::Attest => "attest",
            Self::Release => "release",
        }
    }

    /// The command-line names of the usage bits in `bits`.
    pub fn names(bits: u32) -> Vec<&'static str> {
        Self::value_variants()
            .iter()
            .filter(|u| bits & u.flag().bits() != 0)
            .map(|u| u.name())
            .collect()
    }
}

/// A value out of a fixed set ([`ValueEnum`]) whose refusal reads "unknown NOUN
/// VALUE: one of A, B, C" (and clap's "did you mean" when one is close), and whose
/// possible values reach `--help` and the shell completions.
#[derive(Clone, Debug)]
pub struct Named<T> {
    noun: &'static str,
    kind: PhantomData<fn() -> T>,
}

impl<T> Named<T> {
    /// A parser for values called `noun` in messages.
    pub fn new(noun: &'static str) -> Self {
        Self {
            noun,
            kind: PhantomData,
        }
    }
}

impl<T: ValueEnum + Clone + Send + Sync + 'static> TypedValueParser for Named<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let suggestion = match EnumValueParser::<T>::new().parse_ref(cmd, arg, value) {
            Ok(v) => return Ok(v),
            Err(e) => match e.get(ContextKind::SuggestedValue) {
                Some(ContextValue::String(s)) => format!(" (did you mean {s}?)"),
                _ => String::new(),
            },
        };
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(ValueEnum::to_possible_value)
            .map(|p| p.get_name().to_string())
            .collect();
        let noun = self.noun;
        let refuse = move |s: &str| -> Result<T, String> {
            Err(format!(
                "unknown {noun} {s}: one of {}{suggestion}",
                names.join(", ")
            ))
        };
        refuse.parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            T::value_variants()
                .iter()
                .filter_map(ValueEnum::to_possible_value),
        ))
    }
}

/// A key id.
pub fn key_id(s: &str) -> Result<u32, String> {
    s.parse()
        .map_err(|_| format!("a key id is a number from 0 to {}", u32::MAX))
}

/// A VMPL, 0 to 3.
pub fn vmpl(s: &str) -> Result<u8, String> {
    match s.trim().parse::<u8>() {
        Ok(n) if n < 4 => Ok(n),
        _ => Err(format!("bad VMPL {s}: a VMPL is 0, 1, 2 or 3")),
    }
}

/// The length of a `random` request: at most [`MAX_RANDOM_LEN`].
pub fn random_len(s: &str) -> Result<u32, String> {
    let n: u64 = s
        .parse()
        .map_err(|_| format!("N is a number of bytes, from 0 to {MAX_RANDOM_LEN}"))?;
    if n > MAX_RANDOM_LEN as u64 {
        return Err(format!(
            "{n} bytes is too many: the vHSM gives at most {MAX_RANDOM_LEN} random bytes per request"
        ));
    }
    u32::try_from(n).map_err(|_| format!("at most {MAX_RANDOM_LEN} bytes"))
}

/// A key label: at most [`MAX_LABEL_LEN`] bytes.
pub fn label(s: &str) -> Result<String, String> {
    if s.len() > MAX_LABEL_LEN {
        return Err(format!(
            "the label is {} bytes long; a label is at most {MAX_LABEL_LEN} bytes",
            s.len()
        ));
    }
    Ok(s.to_string())
}

/// Additional authenticated data: at most [`MAX_DATA_LEN`] bytes.
pub fn aad(s: &str) -> Result<String, String> {
    if s.len() > MAX_DATA_LEN {
        return Err(format!(
            "the AAD is {} bytes long; the vHSM takes at most {MAX_DATA_LEN} bytes of AAD",
            s.len()
        ));
    }
    Ok(s.to_string())
}

/// An HKDF salt or info string: at most [`MAX_DERIVE_INPUT_LEN`] bytes.
pub fn derive_input(s: &str) -> Result<String, String> {
    if s.len() > MAX_DERIVE_INPUT_LEN {
        return Err(format!(
            "{} bytes long; a salt or info string is at most {MAX_DERIVE_INPUT_LEN} bytes",
            s.len()
        ));
    }
    Ok(s.to_string())
}

fn hex_decode(s: &str) -> Result<Vec<u8>, String> {
    hex::decode(s.trim()).map_err(|e| match e {
        hex::FromHexError::OddLength => {
            format!(
                "{} hex digits: hex takes two digits per byte",
                s.trim().len()
            )
        }
        hex::FromHexError::InvalidHexCharacter { c, index } => {
            format!("{c:?} at position {index} is not a hex digit")
        }
        other => other.to_string(),
    })
}

/// Hex bytes of any length.
pub fn hex_any(s: &str) -> Result<Bytes, String> {
    hex_decode(s)
}

/// Exactly `N` hex bytes (`2N` digits).
pub fn hex_array<const N: usize>(s: &str) -> Result<[u8; N], String> {
    let v = hex_decode(s)?;
    let len = v.len();
    v.try_into()
        .map_err(|_: Vec<u8>| format!("{len} bytes, expected exactly {N} ({} hex digits)", 2 * N))
}

/// A nonce: exactly `attest::NONCE_SIZE` (64) bytes in hex, the only size the SVSM's
/// attestation protocol and AttestKey accept.
pub fn nonce(s: &str) -> Result<Nonce, String> {
    let v = hex_decode(s)?;
    let len = v.len();
    v.try_into().map_err(|_: Vec<u8>| {
        format!(
            "the nonce is {len} bytes; it must be exactly {NONCE_SIZE} bytes ({} hex digits, \
             e.g. from `openssl rand -hex {NONCE_SIZE}`)",
            2 * NONCE_SIZE
        )
    })
}

/// A minimum TCB: `COMPONENT=N[,COMPONENT=N]...`, components `bootloader`, `tee`,
/// `snp`, `microcode` and `fmc` (Turin), each 0 to 255, each at most once.
pub fn min_tcb(s: &str) -> Result<MinTcb, String> {
    let mut min = MinTcb::default();
    for part in s.split(',') {
        let (name, value) = part.split_once('=').ok_or_else(|| {
            format!("`{part}`: expected COMPONENT=N (bootloader, tee, snp, microcode, fmc)")
        })?;
        let value: u8 = value.trim().parse().map_err(|_| {
            format!("`{part}`: the minimum must be a number from 0 to 255 (an SPL)")
        })?;
        let slot = match name.trim() {
            "bootloader" => &mut min.bootloader,
            "tee" => &mut min.tee,
            "snp" => &mut min.snp,
            "microcode" => &mut min.microcode,
            "fmc" => &mut min.fmc,
            other => {
                return Err(format!(
                    "`{other}` is not a TCB component: bootloader, tee, snp, microcode or fmc"
                ))
            }
        };
        if slot.replace(value).is_some() {
            return Err(format!("`{}` is given twice", name.trim()));
        }
    }
    Ok(min)
}

/// A service: `vhsm`, `vtpm` or a GUID `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn service(s: &str) -> Result<Guid, String> {
    super::attest::parse_guid(s).ok_or_else(|| {
        "expected a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx), vhsm or vtpm".to_string()
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_named_in_refusals() {
        assert_eq!(random_len("4096"), Ok(4096));
        assert_eq!(random_len("0"), Ok(0));
        let e = random_len("100000").unwrap_err();
        assert!(e.contains("at most 4096"), "{e}");
        let e = random_len("99999999999999999999").unwrap_err();
        assert!(e.contains("4096"), "{e}");
        assert!(label(&"x".repeat(MAX_LABEL_LEN)).is_ok());
        let e = label(&"x".repeat(MAX_LABEL_LEN + 1)).unwrap_err();
        assert!(e.contains("at most 32 bytes"), "{e}");
        let e = aad(&"a".repeat(MAX_DATA_LEN + 1)).unwrap_err();
        assert!(e.contains("at most 16384 bytes"), "{e}");
        let e = derive_input(&"a".repeat(MAX_DERIVE_INPUT_LEN + 1)).unwrap_err();
        assert!(e.contains("at most 1024 bytes"), "{e}");
        assert_eq!(vmpl("3"), Ok(3));
        assert!(vmpl("4").unwrap_err().contains("0, 1, 2 or 3"));
    }

    #[test]
    fn hex_values_are_checked() {
        assert_eq!(hex_array::<2>("0a0B"), Ok([0x0a, 0x0b]));
        assert!(hex_array::<2>("0a")
            .unwrap_err()
            .contains("expected exactly 2"));
        assert!(hex_any("abc").unwrap_err().contains("two digits per byte"));
        assert!(hex_any("zz").unwrap_err().contains("not a hex digit"));
        assert_eq!(nonce(&"4e".repeat(64)), Ok([0x4e; 64]));
        for len in [0, 1, 32, 63, 65, 256] {
            let e = nonce(&"4e".repeat(len)).unwrap_err();
            assert!(
                e.contains(&format!("is {len} bytes")) && e.contains("exactly 64 bytes"),
                "{e}"
            );
        }
    }

    #[test]
    fn minimum_tcb_per_component() {
        assert_eq!(
            min_tcb("microcode=115"),
            Ok(MinTcb {
                microcode: Some(115),
                ..MinTcb::default()
            })
        );
        assert_eq!(
            min_tcb("bootloader=3, tee=0,snp=8,microcode=115,fmc=1"),
            Ok(MinTcb {
                bootloader: Some(3),
                tee: Some(0),
                snp: Some(8),
                microcode: Some(115),
                fmc: Some(1),
            })
        );
        assert!(min_tcb("ucode=1")
            .unwrap_err()
            .contains("not a TCB component"));
        assert!(min_tcb("snp=256").unwrap_err().contains("0 to 255"));
        assert!(min_tcb("snp").unwrap_err().contains("COMPONENT=N"));
        assert!(min_tcb("snp=1,snp=2").unwrap_err().contains("given twice"));
    }

    #[test]
    fn names_round_trip() {
        for t in KeyTypeArg::value_variants() {
            assert_eq!(KeyTypeArg::name_of(t.key_type().raw()), t.name());
            assert_eq!(
                KeyTypeArg::from_str(t.name(), false).unwrap().key_type(),
                t.key_type()
            );
        }
        let all = UsageArg::value_variants()
            .iter()
            .fold(0, |acc, u| acc | u.flag().bits());
        assert_eq!(
            UsageArg::names(all),
            [
                "encrypt", "decrypt", "sign", "verify", "wrap", "unwrap", "derive", "attest",
                "release"
            ]
        );
    }
}
