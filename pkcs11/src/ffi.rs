//! The C ABI: every `C_*` function the module implements. This is the only module with
//! `unsafe`: it turns the caller's pointers into Rust values (checking NULLs and
//! lengths; the caller's promise that a pointer covers its length is PKCS#11's
//! contract), calls [`crate::token::Token`] under one lock, and writes results back.
#![allow(non_snake_case, clippy::missing_safety_doc)]

use std::ffi::c_void;
use std::sync::Mutex;

use pkcs11_sys::*;

use crate::objects::AttrValue;
use crate::table::{FUNCTION_LIST, FUNCTION_LIST_3_0};
use crate::token::{Mechanism, Output, Rv, Token, MECHANISMS};

/// The token, present between C_Initialize and C_Finalize.
static TOKEN: Mutex<Option<Token>> = Mutex::new(None);

/// The module's one slot.
pub const SLOT_ID: CK_SLOT_ID = 1;

/// Run `f` on the initialised token.
fn with_token<T>(f: impl FnOnce(&mut Token) -> Result<T, Rv>) -> Result<T, Rv> {
    let mut guard = TOKEN.lock().map_err(|_| CKR_GENERAL_ERROR)?;
    let token = guard.as_mut().ok_or(CKR_CRYPTOKI_NOT_INITIALIZED)?;
    f(token)
}

fn rv(r: Result<(), Rv>) -> CK_RV {
    r.err().unwrap_or(CKR_OK)
}

fn check_slot(slot: CK_SLOT_ID) -> Result<(), Rv> {
    if TOKEN.lock().map_err(|_| CKR_GENERAL_ERROR)?.is_none() {
        return Err(CKR_CRYPTOKI_NOT_INITIALIZED);
    }
    if slot == SLOT_ID {
        Ok(())
    } else {
        Err(CKR_SLOT_ID_INVALID)
    }
}

fn usize_of(n: CK_ULONG) -> Result<usize, Rv> {
    usize::try_from(n).map_err(|_| CKR_ARGUMENTS_BAD)
}

/// `len` bytes at `p` (NULL is only allowed with length 0).
///
/// # Safety
/// A non-NULL `p` must point to `len` readable bytes that stay valid and unchanged
/// for `'a` (PKCS#11's contract for every input buffer).
unsafe fn bytes<'a>(p: *const u8, len: CK_ULONG) -> Result<&'a [u8], Rv> {
    let len = usize_of(len)?;
    if p.is_null() {
        return if len == 0 {
            Ok(&[])
        } else {
            Err(CKR_ARGUMENTS_BAD)
        };
    }
    // SAFETY: non-NULL, and the caller promises `len` readable bytes (above).
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// Store `v` at `p`.
///
/// # Safety
/// A non-NULL `p` must be valid for writing a `T`.
unsafe fn put<T>(p: *mut T, v: T) -> Result<(), Rv> {
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-NULL and, by the caller's promise, writable.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Copy `src` to `dst` (which must hold `src.len()` bytes).
///
/// # Safety
/// `dst` must be valid for writing `src.len()` bytes and not overlap `src`.
unsafe fn copy_out(src: &[u8], dst: *mut u8) {
    // SAFETY: the caller's promise, above.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
}

/// The template at `p` (`n` attributes), values copied.
///
/// # Safety
/// A non-NULL `p` must point to `n` CK_ATTRIBUTEs whose values are readable for their
/// lengths.
unsafe fn template(
    p: *const CK_ATTRIBUTE,
    n: CK_ULONG,
) -> Result<Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)>, Rv> {
    let n = usize_of(n)?;
    if p.is_null() {
        return if n == 0 {
            Ok(Vec::new())
        } else {
            Err(CKR_ARGUMENTS_BAD)
        };
    }
    // SAFETY: non-NULL, and the caller promises `n` attributes.
    let attrs = unsafe { std::slice::from_raw_parts(p, n) };
    attrs
        .iter()
        .map(|a| {
            // SAFETY: the caller promises each value covers its length.
            let v = unsafe { bytes(a.pValue as *const u8, a.ulValueLen) }?;
            Ok((a.type_, v.to_vec()))
        })
        .collect()
}

/// Read a parameter structure `T` of exactly its size.
///
/// # Safety
/// A non-NULL `p` must point to `len` readable bytes.
unsafe fn param<T: Copy>(p: *const c_void, len: CK_ULONG) -> Result<T, Rv> {
    if p.is_null() || usize_of(len)? != std::mem::size_of::<T>() {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    // SAFETY: non-NULL and exactly `size_of::<T>()` readable bytes; read unaligned,
    // and `T` is a C struct of integers and pointers, valid for any bytes.
    Ok(unsafe { (p as *const T).read_unaligned() })
}

/// The mechanism at `p`, with its parameters decoded, and the caller's IV buffer
/// address for CKM_AES_GCM (0 otherwise).
///
/// # Safety
/// A non-NULL `p` must point to a CK_MECHANISM whose parameter (and the buffers the
/// parameter points to) are readable for their lengths.
unsafe fn mechanism(p: *const CK_MECHANISM) -> Result<(Mechanism, usize), Rv> {
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: non-NULL, and the caller promises a CK_MECHANISM.
    let m = unsafe { p.read_unaligned() };
    match m.mechanism {
        CKM_AES_GCM if !m.pParameter.is_null() => {
            // SAFETY: the caller's parameter of its stated length.
            let g: CK_GCM_PARAMS = unsafe { param(m.pParameter, m.ulParameterLen) }?;
            // ulIvBits is often left 0 by clients (PyKCS11 does; SoftHSM ignores it).
            if g.ulIvBits != 0 && g.ulIvBits != g.ulIvLen.saturating_mul(8) {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            // SAFETY: the caller promises the IV and AAD cover their lengths.
            let (iv, aad) = unsafe { (bytes(g.pIv, g.ulIvLen)?, bytes(g.pAAD, g.ulAADLen)?) };
            Ok((
                Mechanism::Gcm {
                    iv: iv.to_vec(),
                    aad: aad.to_vec(),
                    tag_bits: g.ulTagBits,
                },
                g.pIv as usize,
            ))
        }
        CKM_HKDF_DERIVE => {
            // SAFETY: the caller's parameter of its stated length.
            let h: CK_HKDF_PARAMS = unsafe { param(m.pParameter, m.ulParameterLen) }?;
            if h.bExtract == 0 || h.bExpand == 0 || h.prfHashMechanism != CKM_SHA384 {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            let salt = match h.ulSaltType {
                CKF_HKDF_SALT_NULL => Vec::new(),
                // SAFETY: the caller promises the salt covers its length.
                CKF_HKDF_SALT_DATA => unsafe { bytes(h.pSalt, h.ulSaltLen) }?.to_vec(),
                _ => return Err(CKR_MECHANISM_PARAM_INVALID),
            };
            // SAFETY: the caller promises the info covers its length.
            let info = unsafe { bytes(h.pInfo, h.ulInfoLen) }?.to_vec();
            Ok((Mechanism::Hkdf { salt, info }, 0))
        }
        other => {
            if !m.pParameter.is_null() || m.ulParameterLen != 0 {
                return Err(CKR_MECHANISM_PARAM_INVALID);
            }
            if !MECHANISMS.iter().any(|(t, ..)| *t == other) {
                return Err(CKR_MECHANISM_INVALID);
            }
            Ok((Mechanism::Plain(other), 0))
        }
    }
}

/// Deliver an output by PKCS#11's two-call convention.
///
/// # Safety
/// `len` must be writable; a non-NULL `out` must be writable for `*len` bytes.
unsafe fn deliver(out: *mut u8, len: *mut CK_ULONG, o: Output) -> CK_RV {
    let (n, code) = match &o {
        Output::Length(n) => (*n, CKR_OK),
        Output::TooSmall(n) => (*n, CKR_BUFFER_TOO_SMALL),
        Output::Done(v) => {
            // SAFETY: `Done` is only produced when the buffer (the capacity read
            // from `*len`) holds `v.len()` bytes.
            unsafe { copy_out(v, out) };
            (v.len(), CKR_OK)
        }
    };
    // SAFETY: the caller's length pointer.
    match unsafe { put(len, n as CK_ULONG) } {
        Ok(()) => code,
        Err(e) => e,
    }
}

/// The capacity the caller offers: None for a NULL buffer (a length query).
///
/// # Safety
/// `len` must be NULL or readable.
unsafe fn capacity(out: *const u8, len: *const CK_ULONG) -> Result<Option<usize>, Rv> {
    if len.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    if out.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL, the caller's length.
    usize_of(unsafe { len.read_unaligned() }).map(Some)
}

/// A blank-padded fixed-size text field.
fn padded<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [b' '; N];
    for (d, c) in out.iter_mut().zip(s.bytes()) {
        *d = c;
    }
    out
}

const VERSION: CK_VERSION = CK_VERSION { major: 0, minor: 1 };

pub(crate) unsafe extern "C" fn C_Initialize(args: CK_VOID_PTR) -> CK_RV {
    if !args.is_null() {
        // SAFETY: a non-NULL argument is a CK_C_INITIALIZE_ARGS (PKCS#11).
        let a = unsafe { (args as *const CK_C_INITIALIZE_ARGS).read_unaligned() };
        if !a.pReserved.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        let callbacks = a.CreateMutex.is_some();
        if callbacks && a.flags & CKF_OS_LOCKING_OK == 0 {
            // The module locks with the OS's primitives only.
            return CKR_CANT_LOCK;
        }
    }
    let Ok(mut guard) = TOKEN.lock() else {
        return CKR_GENERAL_ERROR;
    };
    if guard.is_some() {
        return CKR_CRYPTOKI_ALREADY_INITIALIZED;
    }
    *guard = Some(Token::new(Token::socket_from_env()));
    CKR_OK
}

pub(crate) unsafe extern "C" fn C_Finalize(reserved: CK_VOID_PTR) -> CK_RV {
    if !reserved.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let Ok(mut guard) = TOKEN.lock() else {
        return CKR_GENERAL_ERROR;
    };
    match guard.take() {
        Some(_) => CKR_OK,
        None => CKR_CRYPTOKI_NOT_INITIALIZED,
    }
}

pub(crate) unsafe extern "C" fn C_GetInfo(info: CK_INFO_PTR) -> CK_RV {
    if let Err(e) = with_token(|_| Ok(())) {
        return e;
    }
    let i = CK_INFO {
        cryptokiVersion: CK_VERSION { major: 3, minor: 0 },
        manufacturerID: padded("Nitride"),
        flags: 0,
        libraryDescription: padded("Nitride vHSM PKCS#11 module"),
        libraryVersion: VERSION,
    };
    // SAFETY: the caller's CK_INFO.
    rv(unsafe { put(info, i) })
}

/// Returns the PKCS#11 2.40 function list.
///
/// # Safety
/// `list` must be NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: CK_FUNCTION_LIST_PTR_PTR) -> CK_RV {
    let p = &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST;
    // SAFETY: the caller's pointer; the list is static and never written through.
    rv(unsafe { put(list, p) })
}

/// The interface name "PKCS 11", NUL-terminated.
static INTERFACE_NAME: &[u8; 8] = b"PKCS 11\0";

/// A CK_INTERFACE in a static: its pointers are to statics that are never written.
struct Interface(CK_INTERFACE);
// SAFETY: the pointers inside point to immutable statics (the name and the lists).
unsafe impl Sync for Interface {}

static INTERFACES: [Interface; 2] = [
    Interface(CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_CHAR,
        pFunctionList: &FUNCTION_LIST_3_0 as *const CK_FUNCTION_LIST_3_0 as *mut c_void,
        flags: 0,
    }),
    Interface(CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_CHAR,
        pFunctionList: &FUNCTION_LIST as *const CK_FUNCTION_LIST as *mut c_void,
        flags: 0,
    }),
];

/// Lists the 3.0 and 2.40 interfaces.
///
/// # Safety
/// `count` must be writable; a non-NULL `list` must hold `*count` CK_INTERFACEs.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterfaceList(list: CK_INTERFACE_PTR, count: CK_ULONG_PTR) -> CK_RV {
    if count.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let n = INTERFACES.len() as CK_ULONG;
    if !list.is_null() {
        // SAFETY: non-NULL: the caller's capacity.
        if unsafe { count.read_unaligned() } < n {
            // SAFETY: as above.
            unsafe { count.write_unaligned(n) };
            return CKR_BUFFER_TOO_SMALL;
        }
        for (i, iface) in INTERFACES.iter().enumerate() {
            // SAFETY: `i < n <= *count` entries the caller provides.
            unsafe { list.add(i).write_unaligned(CK_INTERFACE { ..iface.0 }) };
        }
    }
    // SAFETY: non-NULL (checked above).
    unsafe { count.write_unaligned(n) };
    CKR_OK
}

/// Returns the interface named (NULL: the default, 3.0) with the version asked for.
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string, `version` NULL or readable,
/// `iface` writable.
#[no_mangle]
pub unsafe extern "C" fn C_GetInterface(
    name: CK_UTF8CHAR_PTR,
    version: CK_VERSION_PTR,
    iface: CK_INTERFACE_PTR_PTR,
    flags: CK_FLAGS,
) -> CK_RV {
    if iface.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    if !name.is_null() {
        // SAFETY: a NUL-terminated string (the caller's promise).
        let n = unsafe { std::ffi::CStr::from_ptr(name as *const std::ffi::c_char) };
        if n.to_bytes_with_nul() != INTERFACE_NAME {
            return CKR_ARGUMENTS_BAD;
        }
    }
    let wanted = if version.is_null() {
        None
    } else {
        // SAFETY: non-NULL, the caller's version.
        Some(unsafe { version.read_unaligned() })
    };
    let found = INTERFACES.iter().find(|i| {
        // SAFETY: both lists start with their CK_VERSION.
        let v = unsafe { (i.0.pFunctionList as *const CK_VERSION).read() };
        wanted.is_none_or(|w| w.major == v.major && w.minor == v.minor)
            && i.0.flags & flags == flags
    });
    match found {
        Some(i) => {
            let p = &i.0 as *const CK_INTERFACE as *mut CK_INTERFACE;
            // SAFETY: non-NULL (checked above).
            unsafe { iface.write_unaligned(p) };
            CKR_OK
        }
        None => CKR_ARGUMENTS_BAD,
    }
}

pub(crate) unsafe extern "C" fn C_GetSlotList(
    _token_present: CK_BBOOL,
    list: CK_SLOT_ID_PTR,
    count: CK_ULONG_PTR,
) -> CK_RV {
    if let Err(e) = with_token(|_| Ok(())) {
        return e;
    }
    if count.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    if !list.is_null() {
        // SAFETY: non-NULL, the caller's capacity.
        if unsafe { count.read_unaligned() } < 1 {
            // SAFETY: as above.
            unsafe { count.write_unaligned(1) };
            return CKR_BUFFER_TOO_SMALL;
        }
        // SAFETY: room for one slot id.
        unsafe { list.write_unaligned(SLOT_ID) };
    }
    // SAFETY: non-NULL (checked above).
    unsafe { count.write_unaligned(1) };
    CKR_OK
}

pub(crate) unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: CK_SLOT_INFO_PTR) -> CK_RV {
    if let Err(e) = check_slot(slot) {
        return e;
    }
    let i = CK_SLOT_INFO {
        slotDescription: padded("Nitride vHSM (SVSM at VMPL0)"),
        manufacturerID: padded("Nitride"),
        flags: CKF_TOKEN_PRESENT,
        hardwareVersion: VERSION,
        firmwareVersion: VERSION,
    };
    // SAFETY: the caller's CK_SLOT_INFO.
    rv(unsafe { put(info, i) })
}

pub(crate) unsafe extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, info: CK_TOKEN_INFO_PTR) -> CK_RV {
    if let Err(e) = check_slot(slot) {
        return e;
    }
    let (sessions, rw) = match with_token(|t| Ok(t.session_counts())) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let i = CK_TOKEN_INFO {
        label: padded("nitride"),
        manufacturerID: padded("Nitride"),
        model: padded("vHSM"),
        serialNumber: padded("0001"),
        flags: CKF_RNG | CKF_TOKEN_INITIALIZED | CKF_USER_PIN_INITIALIZED,
        ulMaxSessionCount: CK_EFFECTIVELY_INFINITE,
        ulSessionCount: sessions as CK_ULONG,
        ulMaxRwSessionCount: CK_EFFECTIVELY_INFINITE,
        ulRwSessionCount: rw as CK_ULONG,
        ulMaxPinLen: 255,
        ulMinPinLen: 0,
        ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
        ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
        ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
        ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
        hardwareVersion: VERSION,
        firmwareVersion: VERSION,
        utcTime: padded(""),
    };
    // SAFETY: the caller's CK_TOKEN_INFO.
    rv(unsafe { put(info, i) })
}

pub(crate) unsafe extern "C" fn C_GetMechanismList(
    slot: CK_SLOT_ID,
    list: CK_MECHANISM_TYPE_PTR,
    count: CK_ULONG_PTR,
) -> CK_RV {
    if let Err(e) = check_slot(slot) {
        return e;
    }
    if count.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let n = MECHANISMS.len();
    if !list.is_null() {
        // SAFETY: non-NULL, the caller's capacity.
        if unsafe { count.read_unaligned() } < n as CK_ULONG {
            // SAFETY: as above.
            unsafe { count.write_unaligned(n as CK_ULONG) };
            return CKR_BUFFER_TOO_SMALL;
        }
        for (i, m) in MECHANISMS.iter().enumerate() {
            // SAFETY: `i < n <= *count` entries the caller provides.
            unsafe { list.add(i).write_unaligned(m.0) };
        }
    }
    // SAFETY: non-NULL (checked above).
    unsafe { count.write_unaligned(n as CK_ULONG) };
    CKR_OK
}

pub(crate) unsafe extern "C" fn C_GetMechanismInfo(
    slot: CK_SLOT_ID,
    mech: CK_MECHANISM_TYPE,
    info: CK_MECHANISM_INFO_PTR,
) -> CK_RV {
    if let Err(e) = check_slot(slot) {
        return e;
    }
    match MECHANISMS.iter().find(|m| m.0 == mech) {
        Some(&(_, min, max, flags)) => {
            let i = CK_MECHANISM_INFO {
                ulMinKeySize: min,
                ulMaxKeySize: max,
                flags,
            };
            // SAFETY: the caller's CK_MECHANISM_INFO.
            rv(unsafe { put(info, i) })
        }
        None => CKR_MECHANISM_INVALID,
    }
}

pub(crate) unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _app: CK_VOID_PTR,
    _notify: CK_NOTIFY,
    session: CK_SESSION_HANDLE_PTR,
) -> CK_RV {
    if let Err(e) = check_slot(slot) {
        return e;
    }
    if session.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    match with_token(|t| t.open_session(flags)) {
        // SAFETY: non-NULL (checked above), the caller's handle.
        Ok(h) => rv(unsafe { put(session, h) }),
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
    rv(with_token(|t| t.close_session(session)))
}

pub(crate) unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    if let Err(e) = check_slot(slot) {
        return e;
    }
    rv(with_token(|t| {
        t.close_all();
        Ok(())
    }))
}

pub(crate) unsafe extern "C" fn C_GetSessionInfo(
    session: CK_SESSION_HANDLE,
    info: CK_SESSION_INFO_PTR,
) -> CK_RV {
    match with_token(|t| t.session_info(session)) {
        Ok((state, flags)) => {
            let i = CK_SESSION_INFO {
                slotID: SLOT_ID,
                state,
                flags,
                ulDeviceError: 0,
            };
            // SAFETY: the caller's CK_SESSION_INFO.
            rv(unsafe { put(info, i) })
        }
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_Login(
    session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    _pin: CK_UTF8CHAR_PTR,
    _pin_len: CK_ULONG,
) -> CK_RV {
    rv(with_token(|t| t.login(session, user)))
}

pub(crate) unsafe extern "C" fn C_LoginUser(
    session: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    _pin: CK_UTF8CHAR_PTR,
    _pin_len: CK_ULONG,
    _name: CK_UTF8CHAR_PTR,
    _name_len: CK_ULONG,
) -> CK_RV {
    rv(with_token(|t| t.login(session, user)))
}

pub(crate) unsafe extern "C" fn C_Logout(session: CK_SESSION_HANDLE) -> CK_RV {
    rv(with_token(|t| t.logout(session)))
}

pub(crate) unsafe extern "C" fn C_CreateObject(
    session: CK_SESSION_HANDLE,
    tpl: CK_ATTRIBUTE_PTR,
    n: CK_ULONG,
    object: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    if object.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // SAFETY: the caller's template of `n` attributes.
    let r = unsafe { template(tpl, n) }.and_then(|t| {
        let t = zeroize::Zeroizing::new(t);
        with_token(|tok| tok.create_object(session, &t))
    });
    match r {
        // SAFETY: non-NULL (checked above).
        Ok(h) => rv(unsafe { put(object, h) }),
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_DestroyObject(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
) -> CK_RV {
    rv(with_token(|t| t.destroy(session, object)))
}

pub(crate) unsafe extern "C" fn C_GetAttributeValue(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    tpl: CK_ATTRIBUTE_PTR,
    n: CK_ULONG,
) -> CK_RV {
    let Ok(count) = usize_of(n) else {
        return CKR_ARGUMENTS_BAD;
    };
    if tpl.is_null() && count > 0 {
        return CKR_ARGUMENTS_BAD;
    }
    let attrs: &mut [CK_ATTRIBUTE] = if count == 0 {
        &mut []
    } else {
        // SAFETY: non-NULL, the caller's `n` attributes.
        unsafe { std::slice::from_raw_parts_mut(tpl, count) }
    };
    let types: Vec<_> = attrs.iter().map(|a| a.type_).collect();
    let values = match with_token(|t| t.attributes(session, object, &types)) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let mut code = CKR_OK;
    for (a, v) in attrs.iter_mut().zip(values) {
        match v {
            AttrValue::Value(bytes) => {
                if a.pValue.is_null() {
                    a.ulValueLen = bytes.len() as CK_ULONG;
                } else if usize::try_from(a.ulValueLen).is_ok_and(|cap| cap >= bytes.len()) {
                    // SAFETY: the caller's buffer of `ulValueLen` >= len bytes.
                    unsafe { copy_out(&bytes, a.pValue as *mut u8) };
                    a.ulValueLen = bytes.len() as CK_ULONG;
                } else {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    code = CKR_BUFFER_TOO_SMALL;
                }
            }
            AttrValue::Sensitive => {
                a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                code = CKR_ATTRIBUTE_SENSITIVE;
            }
            AttrValue::Invalid => {
                a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                code = CKR_ATTRIBUTE_TYPE_INVALID;
            }
        }
    }
    code
}

pub(crate) unsafe extern "C" fn C_SetAttributeValue(
    session: CK_SESSION_HANDLE,
    object: CK_OBJECT_HANDLE,
    _tpl: CK_ATTRIBUTE_PTR,
    _n: CK_ULONG,
) -> CK_RV {
    // Vault keys' attributes are fixed when they are made.
    match with_token(|t| t.attributes(session, object, &[])) {
        Ok(_) => CKR_ATTRIBUTE_READ_ONLY,
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_FindObjectsInit(
    session: CK_SESSION_HANDLE,
    tpl: CK_ATTRIBUTE_PTR,
    n: CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's template of `n` attributes.
    rv(unsafe { template(tpl, n) }.and_then(|t| with_token(|tok| tok.find_init(session, &t))))
}

pub(crate) unsafe extern "C" fn C_FindObjects(
    session: CK_SESSION_HANDLE,
    out: CK_OBJECT_HANDLE_PTR,
    max: CK_ULONG,
    count: CK_ULONG_PTR,
) -> CK_RV {
    if out.is_null() || count.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let Ok(max) = usize_of(max) else {
        return CKR_ARGUMENTS_BAD;
    };
    match with_token(|t| t.find(session, max)) {
        Ok(found) => {
            for (i, h) in found.iter().enumerate() {
                // SAFETY: `i < max` entries the caller provides.
                unsafe { out.add(i).write_unaligned(*h) };
            }
            // SAFETY: non-NULL (checked above).
            rv(unsafe { put(count, found.len() as CK_ULONG) })
        }
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_FindObjectsFinal(session: CK_SESSION_HANDLE) -> CK_RV {
    rv(with_token(|t| t.find_final(session)))
}

pub(crate) unsafe extern "C" fn C_EncryptInit(
    session: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: the caller's mechanism.
    rv(unsafe { mechanism(mech) }
        .and_then(|(m, iv_out)| with_token(|t| t.cipher_init(session, &m, key, false, iv_out))))
}

pub(crate) unsafe extern "C" fn C_Encrypt(
    session: CK_SESSION_HANDLE,
    data: CK_BYTE_PTR,
    data_len: CK_ULONG,
    out: CK_BYTE_PTR,
    out_len: CK_ULONG_PTR,
) -> CK_RV {
    // SAFETY: the caller's input and output buffers.
    let r = unsafe { bytes(data, data_len).and_then(|d| Ok((d, capacity(out, out_len)?))) };
    let (d, cap) = match r {
        Ok(v) => v,
        Err(e) => return e,
    };
    match with_token(|t| t.encrypt(session, d, cap)) {
        Ok((o, iv, iv_out)) => {
            if matches!(o, Output::Done(_)) && iv_out != 0 {
                // SAFETY: `iv_out` is the `pIv` of the CK_GCM_PARAMS given to
                // C_EncryptInit, which C_EncryptInit checked holds 12 bytes and which
                // the caller keeps valid until the operation ends (the documented
                // contract of this module, as with AWS CloudHSM).
                unsafe { copy_out(&iv, iv_out as *mut u8) };
            }
            // SAFETY: the caller's output buffer and length.
            unsafe { deliver(out, out_len, o) }
        }
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_DecryptInit(
    session: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: the caller's mechanism.
    rv(unsafe { mechanism(mech) }
        .and_then(|(m, _)| with_token(|t| t.cipher_init(session, &m, key, true, 0))))
}

pub(crate) unsafe extern "C" fn C_Decrypt(
    session: CK_SESSION_HANDLE,
    data: CK_BYTE_PTR,
    data_len: CK_ULONG,
    out: CK_BYTE_PTR,
    out_len: CK_ULONG_PTR,
) -> CK_RV {
    // SAFETY: the caller's input and output buffers.
    let r = unsafe { bytes(data, data_len).and_then(|d| Ok((d, capacity(out, out_len)?))) };
    match r.and_then(|(d, cap)| with_token(|t| t.decrypt(session, d, cap))) {
        // SAFETY: the caller's output buffer and length.
        Ok(o) => unsafe { deliver(out, out_len, o) },
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_SignInit(
    session: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: the caller's mechanism.
    rv(unsafe { mechanism(mech) }
        .and_then(|(m, _)| with_token(|t| t.sign_init(session, &m, key, false))))
}

pub(crate) unsafe extern "C" fn C_Sign(
    session: CK_SESSION_HANDLE,
    data: CK_BYTE_PTR,
    data_len: CK_ULONG,
    sig: CK_BYTE_PTR,
    sig_len: CK_ULONG_PTR,
) -> CK_RV {
    // SAFETY: the caller's input and output buffers.
    let r = unsafe { bytes(data, data_len).and_then(|d| Ok((d, capacity(sig, sig_len)?))) };
    match r.and_then(|(d, cap)| with_token(|t| t.sign(session, Some(d), cap))) {
        // SAFETY: the caller's output buffer and length.
        Ok(o) => unsafe { deliver(sig, sig_len, o) },
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_SignUpdate(
    session: CK_SESSION_HANDLE,
    data: CK_BYTE_PTR,
    data_len: CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's input.
    rv(unsafe { bytes(data, data_len) }
        .and_then(|d| with_token(|t| t.sign_update(session, d, false))))
}

pub(crate) unsafe extern "C" fn C_SignFinal(
    session: CK_SESSION_HANDLE,
    sig: CK_BYTE_PTR,
    sig_len: CK_ULONG_PTR,
) -> CK_RV {
    // SAFETY: the caller's output buffer and length.
    match unsafe { capacity(sig, sig_len) }
        .and_then(|cap| with_token(|t| t.sign(session, None, cap)))
    {
        // SAFETY: as above.
        Ok(o) => unsafe { deliver(sig, sig_len, o) },
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_VerifyInit(
    session: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: the caller's mechanism.
    rv(unsafe { mechanism(mech) }
        .and_then(|(m, _)| with_token(|t| t.sign_init(session, &m, key, true))))
}

pub(crate) unsafe extern "C" fn C_Verify(
    session: CK_SESSION_HANDLE,
    data: CK_BYTE_PTR,
    data_len: CK_ULONG,
    sig: CK_BYTE_PTR,
    sig_len: CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's input buffers.
    let r = unsafe { bytes(data, data_len).and_then(|d| Ok((d, bytes(sig, sig_len)?))) };
    rv(r.and_then(|(d, s)| with_token(|t| t.verify(session, Some(d), s))))
}

pub(crate) unsafe extern "C" fn C_VerifyUpdate(
    session: CK_SESSION_HANDLE,
    data: CK_BYTE_PTR,
    data_len: CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's input.
    rv(unsafe { bytes(data, data_len) }
        .and_then(|d| with_token(|t| t.sign_update(session, d, true))))
}

pub(crate) unsafe extern "C" fn C_VerifyFinal(
    session: CK_SESSION_HANDLE,
    sig: CK_BYTE_PTR,
    sig_len: CK_ULONG,
) -> CK_RV {
    // SAFETY: the caller's signature.
    rv(unsafe { bytes(sig, sig_len) }.and_then(|s| with_token(|t| t.verify(session, None, s))))
}

pub(crate) unsafe extern "C" fn C_GenerateKey(
    session: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_PTR,
    tpl: CK_ATTRIBUTE_PTR,
    n: CK_ULONG,
    key: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    if key.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // SAFETY: the caller's mechanism and template.
    let r = unsafe { mechanism(mech).and_then(|(m, _)| Ok((m, template(tpl, n)?))) };
    match r.and_then(|(m, t)| with_token(|tok| tok.generate_key(session, &m, &t))) {
        // SAFETY: non-NULL (checked above).
        Ok(h) => rv(unsafe { put(key, h) }),
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_GenerateKeyPair(
    session: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_PTR,
    pub_tpl: CK_ATTRIBUTE_PTR,
    pub_n: CK_ULONG,
    priv_tpl: CK_ATTRIBUTE_PTR,
    priv_n: CK_ULONG,
    pub_key: CK_OBJECT_HANDLE_PTR,
    priv_key: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    if pub_key.is_null() || priv_key.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // SAFETY: the caller's mechanism and templates.
    let r = unsafe {
        mechanism(mech)
            .and_then(|(m, _)| Ok((m, template(pub_tpl, pub_n)?, template(priv_tpl, priv_n)?)))
    };
    match r.and_then(|(m, p, s)| with_token(|t| t.generate_key_pair(session, &m, &p, &s))) {
        Ok((p, s)) => {
            // SAFETY: both non-NULL (checked above).
            rv(unsafe { put(pub_key, p).and_then(|()| put(priv_key, s)) })
        }
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_WrapKey(
    session: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_PTR,
    wrapping: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    out: CK_BYTE_PTR,
    out_len: CK_ULONG_PTR,
) -> CK_RV {
    // SAFETY: the caller's mechanism and output length.
    let r = unsafe { mechanism(mech).and_then(|(m, _)| Ok((m, capacity(out, out_len)?))) };
    let (m, cap) = match r {
        Ok(v) => v,
        Err(e) => return e,
    };
    match with_token(|t| t.wrap(session, &m, wrapping, key)) {
        Ok(w) => {
            let o = match cap {
                None => Output::Length(w.len()),
                Some(c) if c < w.len() => Output::TooSmall(w.len()),
                Some(_) => Output::Done(zeroize::Zeroizing::new(w)),
            };
            // SAFETY: the caller's output buffer and length.
            unsafe { deliver(out, out_len, o) }
        }
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_UnwrapKey(
    session: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_PTR,
    unwrapping: CK_OBJECT_HANDLE,
    wrapped: CK_BYTE_PTR,
    wrapped_len: CK_ULONG,
    tpl: CK_ATTRIBUTE_PTR,
    n: CK_ULONG,
    key: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    if key.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // SAFETY: the caller's mechanism, wrapped key and template.
    let r = unsafe {
        mechanism(mech).and_then(|(m, _)| Ok((m, bytes(wrapped, wrapped_len)?, template(tpl, n)?)))
    };
    match r.and_then(|(m, w, t)| with_token(|tok| tok.unwrap(session, &m, unwrapping, w, &t))) {
        // SAFETY: non-NULL (checked above).
        Ok(h) => rv(unsafe { put(key, h) }),
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_DeriveKey(
    session: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_PTR,
    base: CK_OBJECT_HANDLE,
    tpl: CK_ATTRIBUTE_PTR,
    n: CK_ULONG,
    key: CK_OBJECT_HANDLE_PTR,
) -> CK_RV {
    if key.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    // SAFETY: the caller's mechanism and template.
    let r = unsafe { mechanism(mech).and_then(|(m, _)| Ok((m, template(tpl, n)?))) };
    match r.and_then(|(m, t)| with_token(|tok| tok.derive(session, &m, base, &t))) {
        // SAFETY: non-NULL (checked above).
        Ok(h) => rv(unsafe { put(key, h) }),
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_SeedRandom(
    session: CK_SESSION_HANDLE,
    _seed: CK_BYTE_PTR,
    _len: CK_ULONG,
) -> CK_RV {
    // The vault's DRBG takes entropy from the platform only.
    match with_token(|t| t.session_info(session)) {
        Ok(_) => CKR_RANDOM_SEED_NOT_SUPPORTED,
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_GenerateRandom(
    session: CK_SESSION_HANDLE,
    out: CK_BYTE_PTR,
    len: CK_ULONG,
) -> CK_RV {
    let Ok(n) = usize_of(len) else {
        return CKR_ARGUMENTS_BAD;
    };
    if out.is_null() && n > 0 {
        return CKR_ARGUMENTS_BAD;
    }
    match with_token(|t| t.random(session, n)) {
        Ok(bytes) => {
            // SAFETY: the caller's buffer of `len` bytes; `bytes` has exactly `len`.
            unsafe { copy_out(&bytes[..n.min(bytes.len())], out) };
            CKR_OK
        }
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_MessageEncryptInit(
    session: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: the caller's mechanism.
    rv(unsafe { mechanism(mech) }
        .and_then(|(m, _)| with_token(|t| t.message_init(session, &m, key, false))))
}

/// The CK_GCM_MESSAGE_PARAMS of one message.
///
/// # Safety
/// As [`param`].
unsafe fn gcm_message_params(p: CK_VOID_PTR, len: CK_ULONG) -> Result<CK_GCM_MESSAGE_PARAMS, Rv> {
    // SAFETY: the caller's parameter of its stated length.
    let g: CK_GCM_MESSAGE_PARAMS = unsafe { param(p, len) }?;
    if g.pIv.is_null() || g.pTag.is_null() || g.ulIvLen != 12 || g.ulTagBits != 128 {
        return Err(CKR_MECHANISM_PARAM_INVALID);
    }
    Ok(g)
}

pub(crate) unsafe extern "C" fn C_EncryptMessage(
    session: CK_SESSION_HANDLE,
    params: CK_VOID_PTR,
    params_len: CK_ULONG,
    aad: CK_BYTE_PTR,
    aad_len: CK_ULONG,
    pt: CK_BYTE_PTR,
    pt_len: CK_ULONG,
    ct: CK_BYTE_PTR,
    ct_len: CK_ULONG_PTR,
) -> CK_RV {
    // SAFETY: the caller's parameter, AAD, plaintext and output length.
    let r = unsafe {
        gcm_message_params(params, params_len).and_then(|g| {
            Ok((
                g,
                bytes(aad, aad_len)?,
                bytes(pt, pt_len)?,
                capacity(ct, ct_len)?,
            ))
        })
    };
    let (g, aad, pt, cap) = match r {
        Ok(v) => v,
        Err(e) => return e,
    };
    // The vault generates every IV: no caller-fixed part.
    if !matches!(g.ivGenerator, CKG_GENERATE | CKG_GENERATE_COUNTER) || g.ulIvFixedBits != 0 {
        return CKR_MECHANISM_PARAM_INVALID;
    }
    let early = match cap {
        None => Some(Output::Length(pt.len())),
        Some(c) if c < pt.len() => Some(Output::TooSmall(pt.len())),
        Some(_) => None,
    };
    if let Some(o) = early {
        // SAFETY: the caller's output length (the buffer is not written).
        return unsafe { deliver(ct, ct_len, o) };
    }
    match with_token(|t| t.encrypt_message(session, aad, pt)) {
        Ok((iv, c, tag)) => {
            // SAFETY: `pIv` holds 12 bytes and `pTag` 16 (ulIvLen and ulTagBits were
            // checked), the IV is 12 bytes and the tag 16.
            unsafe {
                copy_out(&iv[..12.min(iv.len())], g.pIv);
                copy_out(&tag[..16.min(tag.len())], g.pTag);
            }
            // SAFETY: the caller's output, with room for the ciphertext (checked).
            unsafe { deliver(ct, ct_len, Output::Done(zeroize::Zeroizing::new(c))) }
        }
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_MessageEncryptFinal(session: CK_SESSION_HANDLE) -> CK_RV {
    rv(with_token(|t| t.message_final(session, false)))
}

pub(crate) unsafe extern "C" fn C_MessageDecryptInit(
    session: CK_SESSION_HANDLE,
    mech: CK_MECHANISM_PTR,
    key: CK_OBJECT_HANDLE,
) -> CK_RV {
    // SAFETY: the caller's mechanism.
    rv(unsafe { mechanism(mech) }
        .and_then(|(m, _)| with_token(|t| t.message_init(session, &m, key, true))))
}

pub(crate) unsafe extern "C" fn C_DecryptMessage(
    session: CK_SESSION_HANDLE,
    params: CK_VOID_PTR,
    params_len: CK_ULONG,
    aad: CK_BYTE_PTR,
    aad_len: CK_ULONG,
    ct: CK_BYTE_PTR,
    ct_len: CK_ULONG,
    pt: CK_BYTE_PTR,
    pt_len: CK_ULONG_PTR,
) -> CK_RV {
    // SAFETY: the caller's parameter (its IV and tag), AAD, ciphertext and output length.
    let r = unsafe {
        gcm_message_params(params, params_len).and_then(|g| {
            Ok((
                bytes(g.pIv, 12)?,
                bytes(g.pTag, 16)?,
                bytes(aad, aad_len)?,
                bytes(ct, ct_len)?,
                capacity(pt, pt_len)?,
            ))
        })
    };
    let (iv, tag, aad, c, cap) = match r {
        Ok(v) => v,
        Err(e) => return e,
    };
    let early = match cap {
        None => Some(Output::Length(c.len())),
        Some(n) if n < c.len() => Some(Output::TooSmall(c.len())),
        Some(_) => None,
    };
    if let Some(o) = early {
        // SAFETY: the caller's output length (the buffer is not written).
        return unsafe { deliver(pt, pt_len, o) };
    }
    match with_token(|t| t.decrypt_message(session, iv, tag, aad, c)) {
        // SAFETY: the caller's output, with room for the plaintext (checked).
        Ok(p) => unsafe { deliver(pt, pt_len, Output::Done(p)) },
        Err(e) => e,
    }
}

pub(crate) unsafe extern "C" fn C_MessageDecryptFinal(session: CK_SESSION_HANDLE) -> CK_RV {
    rv(with_token(|t| t.message_final(session, true)))
}
