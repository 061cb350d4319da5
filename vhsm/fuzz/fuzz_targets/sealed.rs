//! Fuzz the sealing decoders, which must be canonical:
//! - `SealedHeader::parse` (both purposes): whatever it accepts re-encodes to the
//!   input's first 80 bytes, its lengths add up to the input's, and every header
//!   field holds a value the SVSM writes;
//! - `StatePayload::decode`: whatever it accepts re-encodes to exactly the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nitride_protocol::sealed::{Purpose, SealedHeader, SEALED_HEADER_LEN, SEALING_FIELDS};
use nitride_vhsm::seal::StatePayload;
use zerocopy::IntoBytes;

fuzz_target!(|data: &[u8]| {
    for purpose in [Purpose::Data, Purpose::VaultState] {
        if let Ok((header, rest)) = SealedHeader::parse(data, purpose) {
            assert_eq!(header.as_bytes(), &data[..SEALED_HEADER_LEN]);
            assert_eq!(header.blob_len(), data.len());
            assert_eq!(rest.len() + SEALED_HEADER_LEN, data.len());
            assert_eq!(header.field_select.get(), SEALING_FIELDS);
            assert_eq!(header.key_vmpl, 0);
        }
    }
    if let Ok(state) = StatePayload::decode(data) {
        assert_eq!(&state.encode().expect("a decoded state encodes")[..], data);
    }
});
