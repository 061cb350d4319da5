//! What the kernel fuzz targets share: a reader over the fuzzer's script, and guest
//! messages sealed and opened with a VMPCK the way the PSP and its client do.

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit};
use nitride_kernel::psp::{nonce, tag_of, HEADER_SIZE, MAX_PAYLOAD, PSP_PAGE};
use nitride_protocol::snp::msg::{MsgHeader, AAD_RANGE};
use zerocopy::{FromBytes, IntoBytes};

/// Reads the fuzzer's script; zeros once it runs out.
pub struct Script<'a>(pub &'a [u8]);

impl Script<'_> {
    /// The next byte.
    pub fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }

    /// The next four bytes, little-endian.
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }

    /// Up to `n` next bytes.
    pub fn bytes(&mut self, n: usize) -> &[u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    /// Whether the script is used up.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Write `header` and `body` into `page` (zeroed first), encrypted under `key`; the
/// tag goes into the page's header and into `header`.
pub fn seal(key: &[u8; 32], header: &mut MsgHeader, body: &[u8], page: &mut [u8; PSP_PAGE]) {
    page.fill(0);
    page[..HEADER_SIZE].copy_from_slice(header.as_bytes());
    let (head, rest) = page.split_at_mut(HEADER_SIZE);
    let out = &mut rest[..body.len()];
    out.copy_from_slice(body);
    let tag = Aes256Gcm::new(key.into())
        .encrypt_in_place_detached(&nonce(header.msg_seqno.get()), &head[AAD_RANGE], out)
        .expect("seal");
    head[..16].copy_from_slice(&tag);
    header.authtag[..16].copy_from_slice(&tag);
}

/// The header and decrypted body of `page` if it authenticates under `key`.
pub fn open(key: &[u8; 32], page: &[u8; PSP_PAGE]) -> Option<(MsgHeader, Vec<u8>)> {
    let header = MsgHeader::read_from_bytes(&page[..HEADER_SIZE]).ok()?;
    let len = usize::from(header.msg_sz.get());
    if len > MAX_PAYLOAD {
        return None;
    }
    let mut body = page[HEADER_SIZE..HEADER_SIZE + len].to_vec();
    Aes256Gcm::new(key.into())
        .decrypt_in_place_detached(
            &nonce(header.msg_seqno.get()),
            &page[AAD_RANGE],
            &mut body,
            &tag_of(&header),
        )
        .ok()?;
    Some((header, body))
}
