//! QEMU's fw_cfg device, read through its legacy I/O-port interface: how the
//! runner hands the virtual SNP machine files at boot (`-fw_cfg name=...,file=...`),
//! in particular its PSP's blob (`dev_psp::FW_CFG_NAME`).
//!
//! Selector port 0x510 (16-bit write), data port 0x511 (byte reads, the offset
//! advancing by one per read and reset by each selector write). Key 0x0000 reads
//! the signature `"QEMU"`; key 0x0019 the file directory: a big-endian `u32` count,
//! then 64-byte entries `{ u32 BE size, u16 BE select, u16 reserved, name[56] }`.
//! The data is host-supplied: sizes are capped and names compared exactly. Used by
//! the virtual SNP machine (every guest port access is intercepted); the SVSM reads
//! nothing from fw_cfg.
//! Needs `alloc`: behind the `fw_cfg` feature.

use alloc::vec::Vec;
use x86_64::instructions::port::Port;

const SELECTOR: u16 = 0x510;
const DATA: u16 = 0x511;
const KEY_SIGNATURE: u16 = 0x0000;
const KEY_FILE_DIR: u16 = 0x0019;
const NAME_LEN: usize = 56;
/// More directory entries than QEMU ever lists are refused.
const MAX_FILES: u32 = 4096;

/// Largest file [`read_file`] returns.
pub const MAX_FILE: usize = 64 * 1024;

/// Why a file could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FwCfgError {
    /// No fw_cfg device (the signature is not `"QEMU"`).
    NoDevice,
    /// The directory lists an implausible number of files.
    BadDirectory(u32),
    /// No file of that name.
    NotFound,
    /// The file is larger than the cap.
    TooLarge(u32),
}

fn select(key: u16) {
    let mut port: Port<u16> = Port::new(SELECTOR);
    // SAFETY: writing the fw_cfg selector only chooses which item the data port
    // reads; it has no effect on memory.
    unsafe { port.write(key) }
}

fn read_bytes(out: &mut [u8]) {
    let mut port: Port<u8> = Port::new(DATA);
    for b in out {
        // SAFETY: reading the fw_cfg data port returns the next byte of the
        // selected item (zero past its end); it has no effect on memory.
        *b = unsafe { port.read() };
    }
}

fn be32(b: &[u8; 4]) -> u32 {
    u32::from_be_bytes(*b)
}

/// Whether the fw_cfg device is present.
pub fn present() -> bool {
    select(KEY_SIGNATURE);
    let mut sig = [0u8; 4];
    read_bytes(&mut sig);
    &sig == b"QEMU"
}

/// The selector and size of file `name`.
fn find(name: &str) -> Result<(u16, u32), FwCfgError> {
    if !present() {
        return Err(FwCfgError::NoDevice);
    }
    select(KEY_FILE_DIR);
    let mut count = [0u8; 4];
    read_bytes(&mut count);
    let count = be32(&count);
    if count > MAX_FILES {
        return Err(FwCfgError::BadDirectory(count));
    }
    let want = name.as_bytes();
    for _ in 0..count {
        let mut e = [0u8; 8 + NAME_LEN];
        read_bytes(&mut e);
        let size = be32(&[e[0], e[1], e[2], e[3]]);
        let key = u16::from_be_bytes([e[4], e[5]]);
        let raw = &e[8..];
        let len = raw.iter().position(|&c| c == 0).unwrap_or(NAME_LEN);
        if &raw[..len] == want {
            return Ok((key, size));
        }
    }
    Err(FwCfgError::NotFound)
}

/// The contents of fw_cfg file `name` (at most [`MAX_FILE`] bytes).
pub fn read_file(name: &str) -> Result<Vec<u8>, FwCfgError> {
    let (key, size) = find(name)?;
    let len = usize::try_from(size)
        .ok()
        .filter(|&n| n <= MAX_FILE)
        .ok_or(FwCfgError::TooLarge(size))?;
    let mut out = alloc::vec![0u8; len];
    select(key);
    read_bytes(&mut out);
    Ok(out)
}
