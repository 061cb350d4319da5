//! The C boundary: the `CRYPTSETUP_TOKEN_1.0` entry points libcryptsetup 2.4+ looks
//! up in an external token plugin, and the few libcryptsetup calls they make
//! (`crypt_token_json_get`, `crypt_get_uuid`, `crypt_get_device_name`, `crypt_log`),
//! resolved against the libcryptsetup that loaded the plugin.
//!
//! Symbol versions: libcryptsetup looks the entry points up with `dlvsym(...,
//! "CRYPTSETUP_TOKEN_1.0")`. The `.symver` directives at the end of this module bind
//! each one to that version node, which the version script
//! `luks-token/cryptsetup-token.map` (passed by `build.rs`) defines; a version script
//! alone leaves a Rust cdylib's symbols at `Base`.
#![allow(unsafe_code)]

use core::ffi::{c_char, c_int, c_void, CStr};
use std::ffi::CString;
use std::path::Path;

use zeroize::Zeroize as _;

use crate::OpenError;

/// `struct crypt_device` (opaque).
#[repr(C)]
#[derive(Debug)]
pub struct CryptDevice {
    _opaque: [u8; 0],
}

/// `CRYPT_LOG_NORMAL`.
const LOG_NORMAL: c_int = 0;
/// `CRYPT_LOG_ERROR`.
const LOG_ERROR: c_int = 1;

const EINVAL: c_int = 22;
const EPERM: c_int = 1;
const EAGAIN: c_int = 11;

extern "C" {
    fn crypt_token_json_get(cd: *mut CryptDevice, token: c_int, json: *mut *const c_char) -> c_int;
    fn crypt_get_uuid(cd: *mut CryptDevice) -> *const c_char;
    fn crypt_get_device_name(cd: *mut CryptDevice) -> *const c_char;
    fn crypt_log(cd: *mut CryptDevice, level: c_int, msg: *const c_char);
}

/// A C string libcryptsetup owns, as UTF-8 (`None` for NULL or invalid UTF-8).
///
/// # Safety
/// `p` is NULL or a NUL-terminated string valid for the duration of the call.
unsafe fn text<'a>(p: *const c_char) -> Option<&'a str> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-NULL and NUL-terminated per this function's contract.
    unsafe { CStr::from_ptr(p) }.to_str().ok()
}

fn log(cd: *mut CryptDevice, level: c_int, message: &str) {
    let line = CString::new(format!("{}\n", message.replace('\0', " ")))
        .unwrap_or_else(|_| c"nitride: (unprintable message)\n".to_owned());
    // SAFETY: `cd` is the device libcryptsetup passed to the entry point (or NULL,
    // which crypt_log accepts); `line` is NUL-terminated and outlives the call.
    unsafe { crypt_log(cd, level, line.as_ptr()) }
}

/// `const char *cryptsetup_token_version(void)`.
#[no_mangle]
pub extern "C" fn cryptsetup_token_version() -> *const c_char {
    crate::VERSION.as_ptr().cast()
}

/// `int cryptsetup_token_open(struct crypt_device *cd, int token, char **buffer,
/// size_t *buffer_len, void *usrptr)`: the passphrase in a buffer freed by
/// [`cryptsetup_token_buffer_free`]. 0, or a negative errno: -EINVAL (token not
/// ours), -EAGAIN (vHSM unreachable), -EPERM (refused).
///
/// # Safety
/// Called by libcryptsetup with its device, a token id, and valid out-pointers.
#[no_mangle]
pub unsafe extern "C" fn cryptsetup_token_open(
    cd: *mut CryptDevice,
    token: c_int,
    buffer: *mut *mut c_char,
    buffer_len: *mut usize,
    _usrptr: *mut c_void,
) -> c_int {
    if buffer.is_null() || buffer_len.is_null() {
        return -EINVAL;
    }
    let mut json = core::ptr::null();
    // SAFETY: `cd` and `token` come from libcryptsetup; `json` is a valid out-pointer.
    if unsafe { crypt_token_json_get(cd, token, &mut json) } < 0 {
        return -EINVAL;
    }
    // SAFETY: libcryptsetup returns NUL-terminated strings it owns for the call.
    let (json, uuid, device) = unsafe {
        (
            text(json),
            text(crypt_get_uuid(cd)),
            text(crypt_get_device_name(cd)),
        )
    };
    let (Some(json), Some(uuid)) = (json, uuid) else {
        return -EINVAL;
    };
    let device = Path::new(device.unwrap_or("the volume"));
    match crate::open(json, token, uuid, device) {
        Ok(passphrase) => {
            let boxed: Box<[u8]> = passphrase.to_vec().into_boxed_slice();
            drop(passphrase);
            let len = boxed.len();
            let ptr = Box::into_raw(boxed);
            // SAFETY: both out-pointers were checked non-NULL above.
            unsafe {
                *buffer = ptr.cast();
                *buffer_len = len;
            }
            0
        }
        Err(e) => {
            log(cd, LOG_ERROR, &format!("nitride: {e}"));
            match e {
                OpenError::InvalidToken(_) => -EINVAL,
                OpenError::Unreachable(_) => -EAGAIN,
                OpenError::Refused(_) => -EPERM,
            }
        }
    }
}

/// `void cryptsetup_token_buffer_free(void *buffer, size_t buffer_len)`: zeroize and
/// free a buffer from [`cryptsetup_token_open`].
///
/// # Safety
/// `buffer` and `buffer_len` are exactly what `cryptsetup_token_open` returned.
#[no_mangle]
pub unsafe extern "C" fn cryptsetup_token_buffer_free(buffer: *mut c_void, buffer_len: usize) {
    if buffer.is_null() {
        return;
    }
    let slice = core::ptr::slice_from_raw_parts_mut(buffer.cast::<u8>(), buffer_len);
    // SAFETY: the pointer and length are those of the Box<[u8]> leaked by open.
    let mut boxed = unsafe { Box::from_raw(slice) };
    boxed.zeroize();
}

/// `int cryptsetup_token_validate(struct crypt_device *cd, const char *json)`: 0 for
/// a token `nitride luks enroll` would write, -EINVAL otherwise.
///
/// # Safety
/// `json` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn cryptsetup_token_validate(
    cd: *mut CryptDevice,
    json: *const c_char,
) -> c_int {
    // SAFETY: per this function's contract.
    let Some(json) = (unsafe { text(json) }) else {
        return -EINVAL;
    };
    match crate::validate(json) {
        Ok(_) => 0,
        Err(e) => {
            log(cd, LOG_ERROR, &format!("nitride: invalid token: {e}"));
            -EINVAL
        }
    }
}

/// `void cryptsetup_token_dump(struct crypt_device *cd, const char *json)`.
///
/// # Safety
/// `json` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn cryptsetup_token_dump(cd: *mut CryptDevice, json: *const c_char) {
    // SAFETY: per this function's contract.
    let Some(json) = (unsafe { text(json) }) else {
        return;
    };
    for line in crate::dump(json) {
        log(cd, LOG_NORMAL, &line);
    }
}

// Each entry point under its versioned name, as libcryptsetup's dlvsym asks for it.
core::arch::global_asm!(
    ".symver cryptsetup_token_version, cryptsetup_token_version@@CRYPTSETUP_TOKEN_1.0",
    ".symver cryptsetup_token_open, cryptsetup_token_open@@CRYPTSETUP_TOKEN_1.0",
    ".symver cryptsetup_token_buffer_free, cryptsetup_token_buffer_free@@CRYPTSETUP_TOKEN_1.0",
    ".symver cryptsetup_token_validate, cryptsetup_token_validate@@CRYPTSETUP_TOKEN_1.0",
    ".symver cryptsetup_token_dump, cryptsetup_token_dump@@CRYPTSETUP_TOKEN_1.0",
);
