//! The token: sessions, searches, operations and their mapping onto vault requests.
//! Safe code only; [`crate::ffi`] turns C arguments into these calls and the results
//! back. Every error is the `CK_RV` the caller gets.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use nitride_guest_driver::relay::RelayClient;
use nitride_guest_driver::vhsm::{VhsmClient, VhsmError};
use nitride_protocol::vhsm::{
    KeyAttributes, KeyTemplate, KeyType, KeyUsage, Status, VmplSet, GCM_NONCE_LEN, GCM_TAG_LEN,
    MAX_DATA_LEN, MAX_LABEL_LEN, MAX_RANDOM_LEN,
};
use p384::ecdsa::signature::hazmat::PrehashVerifier as _;
use pkcs11_sys::*;
use zeroize::Zeroizing;

use crate::objects::{
    self, from_handle, handle, is_asymmetric, AttrValue, Half, Object, ED25519_PARAMS,
    ED25519_PARAMS_ALT, P256_PARAMS, P384_PARAMS,
};

/// A `CK_RV` error.
pub type Rv = CK_RV;

/// An input template: attribute types and values.
pub type Template = [(CK_ATTRIBUTE_TYPE, Vec<u8>)];

/// The mechanisms the token offers, with their key sizes (bytes or bits as
/// PKCS#11 says for the key type) and flags.
pub const MECHANISMS: &[(CK_MECHANISM_TYPE, CK_ULONG, CK_ULONG, CK_FLAGS)] = &[
    (
        CKM_EC_KEY_PAIR_GEN,
        256,
        384,
        CKF_GENERATE_KEY_PAIR | CKF_EC_F_P | CKF_EC_OID | CKF_EC_UNCOMPRESS,
    ),
    (
        CKM_EC_EDWARDS_KEY_PAIR_GEN,
        255,
        255,
        CKF_GENERATE_KEY_PAIR | CKF_EC_OID,
    ),
    (CKM_AES_KEY_GEN, 32, 32, CKF_GENERATE),
    (CKM_GENERIC_SECRET_KEY_GEN, 48, 48, CKF_GENERATE),
    (
        CKM_ECDSA,
        256,
        384,
        CKF_SIGN | CKF_VERIFY | CKF_EC_F_P | CKF_EC_OID | CKF_EC_UNCOMPRESS,
    ),
    (
        CKM_ECDSA_SHA256,
        256,
        384,
        CKF_SIGN | CKF_VERIFY | CKF_EC_F_P | CKF_EC_OID | CKF_EC_UNCOMPRESS,
    ),
    (
        CKM_ECDSA_SHA384,
        256,
        384,
        CKF_SIGN | CKF_VERIFY | CKF_EC_F_P | CKF_EC_OID | CKF_EC_UNCOMPRESS,
    ),
    (CKM_EDDSA, 255, 255, CKF_SIGN | CKF_VERIFY | CKF_EC_OID),
    (CKM_SHA384_HMAC, 48, 48, CKF_SIGN | CKF_VERIFY),
    (
        CKM_AES_GCM,
        32,
        32,
        CKF_ENCRYPT | CKF_DECRYPT | CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT,
    ),
    (CKM_AES_KEY_WRAP_KWP, 32, 32, CKF_WRAP | CKF_UNWRAP),
    (CKM_HKDF_DERIVE, 32, 48, CKF_DERIVE),
];

/// A mechanism with its decoded parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mechanism {
    /// A mechanism without parameters (key generation, signatures, KWP, message GCM).
    Plain(CK_MECHANISM_TYPE),
    /// CKM_AES_GCM single-part: the caller's IV length and content, AAD, tag bits.
    Gcm {
        /// The IV (decrypt), or the caller's buffer's content (encrypt: ignored).
        iv: Vec<u8>,
        /// Additional authenticated data.
        aad: Vec<u8>,
        /// Tag length in bits (must be 128).
        tag_bits: CK_ULONG,
    },
    /// CKM_HKDF_DERIVE with extract and expand, SHA-384, and salt data.
    Hkdf {
        /// The salt (empty: none, RFC 5869's default).
        salt: Vec<u8>,
        /// The info.
        info: Vec<u8>,
    },
}

impl Mechanism {
    /// The mechanism type.
    pub fn kind(&self) -> CK_MECHANISM_TYPE {
        match self {
            Self::Plain(m) => *m,
            Self::Gcm { .. } => CKM_AES_GCM,
            Self::Hkdf { .. } => CKM_HKDF_DERIVE,
        }
    }
}

/// What an output-producing call returns (PKCS#11's two-call convention): the
/// caller only asked for the length, its buffer is too small (the operation stays
/// active), or the output.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// The length the output needs (no buffer given).
    Length(usize),
    /// The buffer is too small for this many bytes.
    TooSmall(usize),
    /// The output (the operation is finished).
    Done(Zeroizing<Vec<u8>>),
}

/// A signing or verifying operation (`Debug` shows no data).
struct SignOp {
    mechanism: CK_MECHANISM_TYPE,
    key: u32,
    key_type: KeyType,
    data: Zeroizing<Vec<u8>>,
    /// A computed result a too-small buffer did not take.
    pending: Option<Zeroizing<Vec<u8>>>,
}

/// A single-part GCM operation (`Debug` shows no data).
struct CipherOp {
    key: u32,
    iv: Vec<u8>,
    aad: Vec<u8>,
    /// A computed result a too-small buffer did not take (with the IV it used).
    pending: Option<(Zeroizing<Vec<u8>>, Vec<u8>)>,
    /// The caller's IV buffer (an address the FFI layer owns), for encryption.
    iv_out: usize,
}

impl std::fmt::Debug for SignOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignOp")
            .field("mechanism", &self.mechanism)
            .field("key", &self.key)
            .field("data", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for CipherOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CipherOp")
            .field("key", &self.key)
            .field("data", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

/// One session's state.
#[derive(Debug, Default)]
struct Session {
    read_write: bool,
    find: Option<Vec<CK_OBJECT_HANDLE>>,
    sign: Option<SignOp>,
    verify: Option<SignOp>,
    encrypt: Option<CipherOp>,
    decrypt: Option<CipherOp>,
    message_encrypt: Option<u32>,
    message_decrypt: Option<u32>,
}

/// The token: one connection to the vault (opened when first needed) and the
/// sessions of this process.
#[derive(Debug)]
pub struct Token {
    socket: PathBuf,
    client: Option<VhsmClient<RelayClient>>,
    sessions: HashMap<CK_SESSION_HANDLE, Session>,
    next_session: CK_SESSION_HANDLE,
    logged_in: bool,
}

/// The CK_RV for a vault refusal.
pub fn rv_of(e: &VhsmError) -> Rv {
    match e {
        VhsmError::Status(s) => match s {
            Status::KeyNotFound | Status::AccessDenied => CKR_KEY_HANDLE_INVALID,
            Status::UsageNotPermitted => CKR_KEY_FUNCTION_NOT_PERMITTED,
            Status::NotExportable => CKR_KEY_UNEXTRACTABLE,
            Status::PolicyDenied => CKR_ACTION_PROHIBITED,
            Status::CapacityExceeded => CKR_DEVICE_MEMORY,
            Status::WrongKeyType => CKR_KEY_TYPE_INCONSISTENT,
            Status::SignatureInvalid => CKR_SIGNATURE_INVALID,
            Status::AuthenticationFailed => CKR_ENCRYPTED_DATA_INVALID,
            Status::TooLarge => CKR_DATA_LEN_RANGE,
            Status::InvalidParameter | Status::InvalidKeyMaterial => CKR_ARGUMENTS_BAD,
            _ => CKR_DEVICE_ERROR,
        },
        _ => CKR_DEVICE_ERROR,
    }
}

/// The bytes of a CK_BBOOL template value.
fn template_bool(v: &[u8]) -> Result<bool, Rv> {
    match v {
        [0] => Ok(false),
        [_] => Ok(true),
        _ => Err(CKR_ATTRIBUTE_VALUE_INVALID),
    }
}

/// The value of a CK_ULONG template value.
fn template_ulong(v: &[u8]) -> Result<CK_ULONG, Rv> {
    v.try_into()
        .map(CK_ULONG::from_ne_bytes)
        .map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)
}

/// The usage bits each boolean attribute grants.
const USAGE_ATTRS: &[(CK_ATTRIBUTE_TYPE, KeyUsage)] = &[
    (CKA_SIGN, KeyUsage::SIGN),
    (CKA_VERIFY, KeyUsage::VERIFY),
    (CKA_ENCRYPT, KeyUsage::ENCRYPT),
    (CKA_DECRYPT, KeyUsage::DECRYPT),
    (CKA_WRAP, KeyUsage::WRAP),
    (CKA_UNWRAP, KeyUsage::UNWRAP),
    (CKA_DERIVE, KeyUsage::DERIVE),
];

/// What a key template asks for.
#[derive(Debug)]
struct Wanted {
    class: Option<CK_OBJECT_CLASS>,
    key_type: Option<CK_KEY_TYPE>,
    value_len: Option<CK_ULONG>,
    ec_params: Option<Vec<u8>>,
    label: Vec<u8>,
    extractable: Option<bool>,
    usage_on: KeyUsage,
    usage_off: KeyUsage,
    value: Option<Zeroizing<Vec<u8>>>,
}

/// Read a template; attributes the vault cannot honour are refused.
fn read_template(t: &Template) -> Result<Wanted, Rv> {
    let mut w = Wanted {
        class: None,
        key_type: None,
        value_len: None,
        ec_params: None,
        label: Vec::new(),
        extractable: None,
        usage_on: KeyUsage::empty(),
        usage_off: KeyUsage::empty(),
        value: None,
    };
    for (ty, v) in t {
        match *ty {
            CKA_CLASS => w.class = Some(template_ulong(v)?),
            CKA_KEY_TYPE => w.key_type = Some(template_ulong(v)?),
            CKA_VALUE_LEN => w.value_len = Some(template_ulong(v)?),
            CKA_EC_PARAMS => w.ec_params = Some(v.clone()),
            CKA_LABEL => {
                if v.len() > MAX_LABEL_LEN {
                    return Err(CKR_ATTRIBUTE_VALUE_INVALID);
                }
                w.label = v.clone();
            }
            CKA_EXTRACTABLE => w.extractable = Some(template_bool(v)?),
            CKA_VALUE => w.value = Some(Zeroizing::new(v.clone())),
            // The vault never shows material in the clear: a key is always sensitive.
            CKA_SENSITIVE | CKA_ALWAYS_SENSITIVE => {
                if !template_bool(v)? {
                    return Err(CKR_ATTRIBUTE_VALUE_INVALID);
                }
            }
            // Objects live in the vault and are visible without login.
            CKA_TOKEN => {
                if !template_bool(v)? {
                    return Err(CKR_ATTRIBUTE_VALUE_INVALID);
                }
            }
            CKA_PRIVATE | CKA_MODIFIABLE | CKA_COPYABLE => {
                // Accepted whatever they say: the token's objects are neither
                // private nor modifiable (documented).
                template_bool(v)?;
            }
            CKA_DESTROYABLE => {
                if !template_bool(v)? {
                    return Err(CKR_ATTRIBUTE_VALUE_INVALID);
                }
            }
            // The token assigns CKA_ID (from the vault key id).
            CKA_ID => return Err(CKR_ATTRIBUTE_READ_ONLY),
            other => match USAGE_ATTRS.iter().find(|(a, _)| *a == other) {
                Some((_, u)) => {
                    if template_bool(v)? {
                        w.usage_on |= *u;
                    } else {
                        w.usage_off |= *u;
                    }
                }
                None => return Err(CKR_ATTRIBUTE_TYPE_INVALID),
            },
        }
    }
    Ok(w)
}

/// The vault key type of a secret-key template (AES: 32 bytes; generic secret or
/// SHA-384 HMAC: 48 bytes = HMAC-SHA-384).
fn secret_type(w: &Wanted) -> Result<KeyType, Rv> {
    if w.class.is_some_and(|c| c != CKO_SECRET_KEY) {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    let len = w
        .value_len
        .or_else(|| w.value.as_ref().map(|v| v.len() as CK_ULONG));
    match w.key_type {
        Some(CKK_AES) if len.is_none_or(|l| l == 32) => Ok(KeyType::Aes256),
        Some(CKK_GENERIC_SECRET | CKK_SHA384_HMAC) if len.is_none_or(|l| l == 48) => {
            Ok(KeyType::HmacSha384)
        }
        Some(CKK_AES | CKK_GENERIC_SECRET | CKK_SHA384_HMAC) => Err(CKR_ATTRIBUTE_VALUE_INVALID),
        None => Err(CKR_TEMPLATE_INCOMPLETE),
        Some(_) => Err(CKR_ATTRIBUTE_VALUE_INVALID),
    }
}

/// The vault template: usage = what the type can do (except ATTEST), minus what the
/// template turns off; an asked-for usage the type cannot have is refused.
/// Non-exportable unless CKA_EXTRACTABLE is true. Persistent: every object is a token
/// object (CKA_TOKEN true), so the vault seals it into its state and a restart that
/// restores the state brings it back under the same CKA_ID (docs/sealing.md).
/// Whether the vault's own Sign computes the hash of ECDSA mechanism `mech` for a
/// key of type `kt` (SHA-384 for P-384, SHA-256 for P-256): the module then passes
/// the message, otherwise it hashes and uses SignDigest.
fn vault_hashes(mech: CK_MECHANISM_TYPE, kt: KeyType) -> bool {
    matches!(
        (mech, kt),
        (CKM_ECDSA_SHA384, KeyType::EcdsaP384) | (CKM_ECDSA_SHA256, KeyType::EcdsaP256)
    )
}

/// The digest an ECDSA mechanism signs: the data itself for raw CKM_ECDSA (which
/// must have a digest's length), else its SHA-256 or SHA-384.
fn ecdsa_digest(mech: CK_MECHANISM_TYPE, data: &[u8]) -> Result<Vec<u8>, Rv> {
    use sha2::Digest as _;
    match mech {
        CKM_ECDSA => {
            if !(nitride_protocol::vhsm::MIN_DIGEST_LEN..=nitride_protocol::vhsm::MAX_DIGEST_LEN)
                .contains(&data.len())
            {
                return Err(CKR_DATA_LEN_RANGE);
            }
            Ok(data.to_vec())
        }
        CKM_ECDSA_SHA256 => Ok(sha2::Sha256::digest(data).to_vec()),
        CKM_ECDSA_SHA384 => Ok(sha2::Sha384::digest(data).to_vec()),
        _ => Err(CKR_MECHANISM_INVALID),
    }
}

/// The vault's DER ECDSA signature as PKCS#11's raw `r || s`.
fn ecdsa_der_to_raw(kt: KeyType, der: &[u8]) -> Result<Vec<u8>, Rv> {
    match kt {
        KeyType::EcdsaP384 => p384::ecdsa::Signature::from_der(der).map(|s| s.to_bytes().to_vec()),
        KeyType::EcdsaP256 => p256::ecdsa::Signature::from_der(der).map(|s| s.to_bytes().to_vec()),
        _ => return Err(CKR_KEY_TYPE_INCONSISTENT),
    }
    .map_err(|_| CKR_DEVICE_ERROR)
}

/// A caller's raw `r || s` (the curve's length exactly) as DER.
fn ecdsa_raw_to_der(kt: KeyType, raw: &[u8]) -> Result<Vec<u8>, Rv> {
    match kt {
        KeyType::EcdsaP384 => {
            p384::ecdsa::Signature::from_slice(raw).map(|s| s.to_der().as_bytes().to_vec())
        }
        KeyType::EcdsaP256 => {
            p256::ecdsa::Signature::from_slice(raw).map(|s| s.to_der().as_bytes().to_vec())
        }
        _ => return Err(CKR_KEY_TYPE_INCONSISTENT),
    }
    .map_err(|_| CKR_SIGNATURE_LEN_RANGE)
}

fn vault_template(
    kt: KeyType,
    on: KeyUsage,
    off: KeyUsage,
    extractable: bool,
) -> Result<KeyTemplate, Rv> {
    // Attestable and release keys are made with `nitride`, not through PKCS#11.
    let allowed = kt.allowed_usage() - KeyUsage::ATTEST - KeyUsage::RELEASE;
    if !allowed.contains(on) {
        return Err(CKR_TEMPLATE_INCONSISTENT);
    }
    let usage = allowed - off;
    Ok(KeyTemplate::new(kt, usage, VmplSet::all(), extractable).persistent())
}

impl Token {
    /// A token talking to the relay at `socket` (connected when first needed).
    pub fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            client: None,
            sessions: HashMap::new(),
            next_session: 1,
            logged_in: false,
        }
    }

    /// The socket path: `$NITRIDE_SOCKET`, else `target/nitride-up/vhsm.sock`
    /// relative to the working directory, as the `nitride` tool finds it.
    pub fn socket_from_env() -> PathBuf {
        std::env::var_os("NITRIDE_SOCKET")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/nitride-up/vhsm.sock"))
    }

    /// Run `f` with the vault client, connecting first if needed; a transport
    /// failure drops the connection (the next call connects again).
    fn vault<T>(
        &mut self,
        f: impl FnOnce(&mut VhsmClient<RelayClient>) -> Result<T, VhsmError>,
    ) -> Result<T, Rv> {
        if self.client.is_none() {
            let relay = RelayClient::connect(&self.socket).map_err(|_| CKR_DEVICE_ERROR)?;
            self.client = Some(VhsmClient::new(relay));
        }
        let client = self.client.as_mut().ok_or(CKR_DEVICE_ERROR)?;
        match f(client) {
            Ok(v) => Ok(v),
            Err(e) => {
                if !matches!(e, VhsmError::Status(_)) {
                    self.client = None;
                }
                Err(rv_of(&e))
            }
        }
    }

    fn session(&mut self, h: CK_SESSION_HANDLE) -> Result<&mut Session, Rv> {
        self.sessions.get_mut(&h).ok_or(CKR_SESSION_HANDLE_INVALID)
    }

    /// Number of (all, read-write) sessions.
    pub fn session_counts(&self) -> (usize, usize) {
        (
            self.sessions.len(),
            self.sessions.values().filter(|s| s.read_write).count(),
        )
    }

    /// C_OpenSession.
    pub fn open_session(&mut self, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE, Rv> {
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
        }
        let h = self.next_session;
        self.next_session = h.checked_add(1).ok_or(CKR_SESSION_COUNT)?;
        self.sessions.insert(
            h,
            Session {
                read_write: flags & CKF_RW_SESSION != 0,
                ..Session::default()
            },
        );
        Ok(h)
    }

    /// C_CloseSession.
    pub fn close_session(&mut self, h: CK_SESSION_HANDLE) -> Result<(), Rv> {
        self.sessions.remove(&h).ok_or(CKR_SESSION_HANDLE_INVALID)?;
        if self.sessions.is_empty() {
            self.logged_in = false;
        }
        Ok(())
    }

    /// C_CloseAllSessions.
    pub fn close_all(&mut self) {
        self.sessions.clear();
        self.logged_in = false;
    }

    /// C_GetSessionInfo: (state, flags).
    pub fn session_info(&mut self, h: CK_SESSION_HANDLE) -> Result<(CK_STATE, CK_FLAGS), Rv> {
        let logged_in = self.logged_in;
        let s = self.session(h)?;
        let state = match (s.read_write, logged_in) {
            (true, true) => CKS_RW_USER_FUNCTIONS,
            (true, false) => CKS_RW_PUBLIC_SESSION,
            (false, true) => CKS_RO_USER_FUNCTIONS,
            (false, false) => CKS_RO_PUBLIC_SESSION,
        };
        let flags = CKF_SERIAL_SESSION | if s.read_write { CKF_RW_SESSION } else { 0 };
        Ok((state, flags))
    }

    /// C_Login: any PIN of the normal user is accepted (the vault's authority is the
    /// caller's VMPL; see the module docs); the SO cannot log in.
    pub fn login(&mut self, h: CK_SESSION_HANDLE, user: CK_USER_TYPE) -> Result<(), Rv> {
        self.session(h)?;
        match user {
            CKU_USER | CKU_CONTEXT_SPECIFIC if !self.logged_in || user == CKU_CONTEXT_SPECIFIC => {
                self.logged_in = true;
                Ok(())
            }
            CKU_USER => Err(CKR_USER_ALREADY_LOGGED_IN),
            CKU_SO => Err(CKR_USER_TYPE_INVALID),
            _ => Err(CKR_USER_TYPE_INVALID),
        }
    }

    /// C_Logout.
    pub fn logout(&mut self, h: CK_SESSION_HANDLE) -> Result<(), Rv> {
        self.session(h)?;
        if !self.logged_in {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        self.logged_in = false;
        Ok(())
    }

    fn rw(&mut self, h: CK_SESSION_HANDLE) -> Result<(), Rv> {
        if self.session(h)?.read_write {
            Ok(())
        } else {
            Err(CKR_SESSION_READ_ONLY)
        }
    }

    /// Every object of the token, in vault key order.
    fn objects(&mut self) -> Result<Vec<Object>, Rv> {
        let keys = self.vault(|c| c.list())?;
        let mut out = Vec::new();
        for attrs in keys {
            out.extend(self.objects_of(attrs)?);
        }
        Ok(out)
    }

    /// The objects of one vault key.
    fn objects_of(&mut self, attrs: KeyAttributes) -> Result<Vec<Object>, Rv> {
        let Some(kt) = KeyType::from_raw(attrs.key_type.get()) else {
            return Ok(Vec::new());
        };
        if !is_asymmetric(kt) {
            return Ok(vec![Object {
                attrs,
                half: Half::Secret,
                spki: Vec::new(),
            }]);
        }
        let spki = self.vault(|c| c.public_key(attrs.key_id.get()))?;
        Ok(vec![
            Object {
                attrs,
                half: Half::Secret,
                spki: spki.clone(),
            },
            Object {
                attrs,
                half: Half::Public,
                spki,
            },
        ])
    }

    /// The object behind handle `h`.
    fn object(&mut self, h: CK_OBJECT_HANDLE) -> Result<Object, Rv> {
        let (id, half) = from_handle(h).ok_or(CKR_OBJECT_HANDLE_INVALID)?;
        let attrs = match self.vault(|c| c.attributes(id)) {
            Ok(a) => a,
            Err(CKR_KEY_HANDLE_INVALID) => return Err(CKR_OBJECT_HANDLE_INVALID),
            Err(e) => return Err(e),
        };
        self.objects_of(attrs)?
            .into_iter()
            .find(|o| o.half == half)
            .ok_or(CKR_OBJECT_HANDLE_INVALID)
    }

    /// A key object for an operation: the vault id and type, checked to be the right
    /// half (`public`: the public half may be used, for verification).
    fn key(&mut self, h: CK_OBJECT_HANDLE, public: bool) -> Result<(u32, KeyType), Rv> {
        let (id, half) = from_handle(h).ok_or(CKR_KEY_HANDLE_INVALID)?;
        let attrs = self.vault(|c| c.attributes(id))?;
        let kt = KeyType::from_raw(attrs.key_type.get()).ok_or(CKR_KEY_HANDLE_INVALID)?;
        match (half, public) {
            (Half::Public, false) => Err(CKR_KEY_TYPE_INCONSISTENT),
            (Half::Public, true) if !is_asymmetric(kt) => Err(CKR_KEY_HANDLE_INVALID),
            _ => Ok((id, kt)),
        }
    }

    /// C_GetAttributeValue.
    pub fn attributes(
        &mut self,
        session: CK_SESSION_HANDLE,
        h: CK_OBJECT_HANDLE,
        types: &[CK_ATTRIBUTE_TYPE],
    ) -> Result<Vec<AttrValue>, Rv> {
        self.session(session)?;
        let o = self.object(h)?;
        Ok(types.iter().map(|t| o.attribute(*t)).collect())
    }

    /// C_FindObjectsInit.
    pub fn find_init(&mut self, h: CK_SESSION_HANDLE, template: &Template) -> Result<(), Rv> {
        if self.session(h)?.find.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        let found: Vec<_> = self
            .objects()?
            .iter()
            .filter(|o| o.matches(template))
            .map(Object::handle)
            .rev()
            .collect();
        self.session(h)?.find = Some(found);
        Ok(())
    }

    /// C_FindObjects: up to `max` handles.
    pub fn find(&mut self, h: CK_SESSION_HANDLE, max: usize) -> Result<Vec<CK_OBJECT_HANDLE>, Rv> {
        let found = self
            .session(h)?
            .find
            .as_mut()
            .ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let mut out = Vec::new();
        while out.len() < max {
            match found.pop() {
                Some(o) => out.push(o),
                None => break,
            }
        }
        Ok(out)
    }

    /// C_FindObjectsFinal.
    pub fn find_final(&mut self, h: CK_SESSION_HANDLE) -> Result<(), Rv> {
        self.session(h)?
            .find
            .take()
            .map(|_| ())
            .ok_or(CKR_OPERATION_NOT_INITIALIZED)
    }

    /// C_GenerateKey: AES-256 (CKM_AES_KEY_GEN) or HMAC-SHA-384 (a 48-byte generic
    /// secret, CKM_GENERIC_SECRET_KEY_GEN).
    pub fn generate_key(
        &mut self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        template: &Template,
    ) -> Result<CK_OBJECT_HANDLE, Rv> {
        self.rw(h)?;
        let mut w = read_template(template)?;
        if w.value.is_some() {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        match mech.kind() {
            CKM_AES_KEY_GEN => {
                w.key_type.get_or_insert(CKK_AES);
            }
            CKM_GENERIC_SECRET_KEY_GEN => {
                w.key_type.get_or_insert(CKK_GENERIC_SECRET);
            }
            _ => return Err(CKR_MECHANISM_INVALID),
        }
        let kt = secret_type(&w)?;
        if (mech.kind() == CKM_AES_KEY_GEN) != (kt == KeyType::Aes256) {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        let t = vault_template(kt, w.usage_on, w.usage_off, w.extractable.unwrap_or(false))?;
        let label = w.label;
        let a = self.vault(|c| c.generate(t, &label))?;
        Ok(handle(a.key_id.get(), Half::Secret))
    }

    /// C_GenerateKeyPair: P-384 or P-256 (CKM_EC_KEY_PAIR_GEN, CKA_EC_PARAMS the
    /// curve's OID) or Ed25519 (CKM_EC_EDWARDS_KEY_PAIR_GEN). A P-256 pair whose
    /// private template asks for CKA_DERIVE and not CKA_SIGN is an ECDH key
    /// (the vault's EcdhP256, used by its Agree operation; PKCS#11 ECDH1_DERIVE is
    /// not offered, see docs/pkcs11.md); other P-256 pairs are ECDSA keys. The label
    /// is the private template's, else the public one's. Returns (public, private).
    pub fn generate_key_pair(
        &mut self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        public: &Template,
        private: &Template,
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE), Rv> {
        self.rw(h)?;
        let wp = read_template(public)?;
        let ws = read_template(private)?;
        if wp.value.is_some() || ws.value.is_some() {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        let params = wp.ec_params.as_ref().or(ws.ec_params.as_ref());
        let kt = match mech.kind() {
            CKM_EC_KEY_PAIR_GEN => match params {
                Some(p) if p == P384_PARAMS => KeyType::EcdsaP384,
                Some(p) if p == P256_PARAMS => {
                    if ws.usage_on.contains(KeyUsage::DERIVE)
                        && !ws.usage_on.contains(KeyUsage::SIGN)
                    {
                        KeyType::EcdhP256
                    } else {
                        KeyType::EcdsaP256
                    }
                }
                Some(_) => return Err(CKR_CURVE_NOT_SUPPORTED),
                None => return Err(CKR_TEMPLATE_INCOMPLETE),
            },
            CKM_EC_EDWARDS_KEY_PAIR_GEN => match params {
                Some(p) if p == ED25519_PARAMS || ED25519_PARAMS_ALT.contains(&p.as_slice()) => {
                    KeyType::Ed25519
                }
                None => KeyType::Ed25519,
                Some(_) => return Err(CKR_CURVE_NOT_SUPPORTED),
            },
            _ => return Err(CKR_MECHANISM_INVALID),
        };
        let expect = objects::ck_key_type(kt);
        for w in [&wp, &ws] {
            if w.key_type.is_some_and(|k| k != expect) {
                return Err(CKR_TEMPLATE_INCONSISTENT);
            }
        }
        if wp.class.is_some_and(|c| c != CKO_PUBLIC_KEY)
            || ws.class.is_some_and(|c| c != CKO_PRIVATE_KEY)
        {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        // Each half's usage attributes only mean something on that half. CKA_DERIVE
        // (ECDH), which pkcs11-tool asks for on every EC pair, is granted only to an
        // ECDH key; a signing pair then shows CKA_DERIVE false.
        let (on, off) = if kt == KeyType::EcdhP256 {
            (KeyUsage::DERIVE, KeyUsage::empty())
        } else {
            (
                (ws.usage_on & KeyUsage::SIGN) | (wp.usage_on & KeyUsage::VERIFY),
                (ws.usage_off & KeyUsage::SIGN) | (wp.usage_off & KeyUsage::VERIFY),
            )
        };
        if !(ws.usage_on | wp.usage_on)
            .difference(on | KeyUsage::DERIVE)
            .is_empty()
        {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        let t = vault_template(kt, on, off, ws.extractable.unwrap_or(false))?;
        let label = if ws.label.is_empty() {
            wp.label
        } else {
            ws.label
        };
        let a = self.vault(|c| c.generate(t, &label))?;
        let id = a.key_id.get();
        Ok((handle(id, Half::Public), handle(id, Half::Secret)))
    }

    /// C_CreateObject: a secret key from its value (vault Import: only when the
    /// vault's policy allows plaintext import, else CKR_ACTION_PROHIBITED).
    pub fn create_object(
        &mut self,
        h: CK_SESSION_HANDLE,
        template: &Template,
    ) -> Result<CK_OBJECT_HANDLE, Rv> {
        self.rw(h)?;
        let w = read_template(template)?;
        if w.class != Some(CKO_SECRET_KEY) {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        let kt = secret_type(&w)?;
        let value = w.value.as_ref().ok_or(CKR_TEMPLATE_INCOMPLETE)?;
        if value.len() != kt.material_len() {
            return Err(CKR_ATTRIBUTE_VALUE_INVALID);
        }
        let t = vault_template(kt, w.usage_on, w.usage_off, w.extractable.unwrap_or(false))?;
        let a = self.vault(|c| c.import(t, &w.label, value))?;
        Ok(handle(a.key_id.get(), Half::Secret))
    }

    /// C_DestroyObject: deletes the vault key (both halves).
    pub fn destroy(&mut self, h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> Result<(), Rv> {
        self.rw(h)?;
        let (id, _) = from_handle(o).ok_or(CKR_OBJECT_HANDLE_INVALID)?;
        match self.vault(|c| c.delete(id)) {
            Err(CKR_KEY_HANDLE_INVALID) => Err(CKR_OBJECT_HANDLE_INVALID),
            r => r,
        }
    }

    /// C_SignInit / C_VerifyInit.
    pub fn sign_init(
        &mut self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        key: CK_OBJECT_HANDLE,
        verify: bool,
    ) -> Result<(), Rv> {
        let s = self.session(h)?;
        if (if verify { &s.verify } else { &s.sign }).is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        let (id, kt) = self.key(key, verify)?;
        let ok = match mech {
            Mechanism::Plain(CKM_ECDSA | CKM_ECDSA_SHA256 | CKM_ECDSA_SHA384) => {
                matches!(kt, KeyType::EcdsaP384 | KeyType::EcdsaP256)
            }
            Mechanism::Plain(CKM_EDDSA) => kt == KeyType::Ed25519,
            Mechanism::Plain(CKM_SHA384_HMAC) => kt == KeyType::HmacSha384,
            Mechanism::Plain(_) => return Err(CKR_MECHANISM_INVALID),
            _ => return Err(CKR_MECHANISM_PARAM_INVALID),
        };
        if !ok {
            return Err(CKR_KEY_TYPE_INCONSISTENT);
        }
        let op = SignOp {
            mechanism: mech.kind(),
            key: id,
            key_type: kt,
            data: Zeroizing::new(Vec::new()),
            pending: None,
        };
        let s = self.session(h)?;
        if verify {
            s.verify = Some(op);
        } else {
            s.sign = Some(op);
        }
        Ok(())
    }

    /// C_SignUpdate / C_VerifyUpdate: collect the data (the vault signs whole
    /// messages of at most 16 KiB).
    pub fn sign_update(
        &mut self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        verify: bool,
    ) -> Result<(), Rv> {
        let s = self.session(h)?;
        let slot = if verify { &mut s.verify } else { &mut s.sign };
        let op = slot.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let raw_ecdsa = op.mechanism == CKM_ECDSA;
        if op.pending.is_some() || raw_ecdsa || op.mechanism == CKM_EDDSA {
            // Raw ECDSA and EdDSA are single-part only.
            *slot = None;
            return Err(CKR_FUNCTION_NOT_SUPPORTED);
        }
        if op.data.len().saturating_add(data.len()) > MAX_DATA_LEN {
            *slot = None;
            return Err(CKR_DATA_LEN_RANGE);
        }
        op.data.extend_from_slice(data);
        Ok(())
    }

    /// C_Sign (`data` = Some) or C_SignFinal (None): the signature, raw `r || s` for
    /// ECDSA.
    pub fn sign(
        &mut self,
        h: CK_SESSION_HANDLE,
        data: Option<&[u8]>,
        cap: Option<usize>,
    ) -> Result<Output, Rv> {
        let s = self.session(h)?;
        let op = s.sign.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let result = match op.pending.take() {
            Some(r) => r,
            None => {
                if let Some(d) = data {
                    if !op.data.is_empty() {
                        s.sign = None;
                        return Err(CKR_OPERATION_ACTIVE);
                    }
                    op.data.extend_from_slice(d);
                }
                let (mech, key, kt, msg) = (op.mechanism, op.key, op.key_type, op.data.clone());
                match self.vault_sign(mech, key, kt, &msg) {
                    Ok(r) => r,
                    Err(e) => {
                        self.session(h)?.sign = None;
                        return Err(e);
                    }
                }
            }
        };
        let s = self.session(h)?;
        let len = result.len();
        match cap {
            None => {
                if let Some(op) = s.sign.as_mut() {
                    op.pending = Some(result);
                }
                Ok(Output::Length(len))
            }
            Some(c) if c < len => {
                if let Some(op) = s.sign.as_mut() {
                    op.pending = Some(result);
                }
                Ok(Output::TooSmall(len))
            }
            Some(_) => {
                s.sign = None;
                Ok(Output::Done(result))
            }
        }
    }

    fn vault_sign(
        &mut self,
        mech: CK_MECHANISM_TYPE,
        key: u32,
        kt: KeyType,
        msg: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Rv> {
        if !matches!(mech, CKM_ECDSA | CKM_ECDSA_SHA256 | CKM_ECDSA_SHA384) {
            return self.vault(|c| c.sign(key, msg)).map(Zeroizing::new);
        }
        if vault_hashes(mech, kt) {
            // The vault's Sign hashes with this curve's hash: it sees the message.
            let der = self.vault(|c| c.sign(key, msg))?;
            return ecdsa_der_to_raw(kt, &der).map(Zeroizing::new);
        }
        let digest = ecdsa_digest(mech, msg)?;
        self.vault(|c| c.sign_digest(key, &digest))
            .map(Zeroizing::new)
    }

    /// C_Verify (`data` = Some) or C_VerifyFinal (None). CKM_ECDSA is checked here
    /// against the public key; the others by the vault.
    pub fn verify(
        &mut self,
        h: CK_SESSION_HANDLE,
        data: Option<&[u8]>,
        signature: &[u8],
    ) -> Result<(), Rv> {
        let s = self.session(h)?;
        let mut op = s.verify.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        if let Some(d) = data {
            if !op.data.is_empty() {
                return Err(CKR_OPERATION_ACTIVE);
            }
            op.data.extend_from_slice(d);
        }
        let key = op.key;
        match op.mechanism {
            CKM_ECDSA | CKM_ECDSA_SHA384 | CKM_ECDSA_SHA256 => {
                let kt = op.key_type;
                let der = ecdsa_raw_to_der(kt, signature)?;
                if vault_hashes(op.mechanism, kt) {
                    let msg = op.data.clone();
                    return self.vault(|c| c.verify(key, &msg, &der));
                }
                // A digest the vault does not compute itself: checked here against
                // the public key (the vault's Verify takes messages only).
                let digest = ecdsa_digest(op.mechanism, &op.data)?;
                let spki = self.vault(|c| c.public_key(key))?;
                let point = objects::point_from_spki(kt, &spki).ok_or(CKR_DEVICE_ERROR)?;
                let ok = match kt {
                    KeyType::EcdsaP384 => p384::ecdsa::VerifyingKey::from_sec1_bytes(point)
                        .map_err(|_| CKR_DEVICE_ERROR)?
                        .verify_prehash(
                            &digest,
                            &p384::ecdsa::Signature::from_der(&der)
                                .map_err(|_| CKR_SIGNATURE_LEN_RANGE)?,
                        )
                        .is_ok(),
                    _ => p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
                        .map_err(|_| CKR_DEVICE_ERROR)?
                        .verify_prehash(
                            &digest,
                            &p256::ecdsa::Signature::from_der(&der)
                                .map_err(|_| CKR_SIGNATURE_LEN_RANGE)?,
                        )
                        .is_ok(),
                };
                if ok {
                    Ok(())
                } else {
                    Err(CKR_SIGNATURE_INVALID)
                }
            }
            _ => {
                let msg = op.data.clone();
                self.vault(|c| c.verify(key, &msg, signature))
            }
        }
    }

    /// C_EncryptInit / C_DecryptInit with CKM_AES_GCM: 12-byte IV, 128-bit tag.
    /// `iv_out` is the caller's IV buffer, where the FFI layer writes the IV the
    /// vault chose after C_Encrypt.
    pub fn cipher_init(
        &mut self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        key: CK_OBJECT_HANDLE,
        decrypt: bool,
        iv_out: usize,
    ) -> Result<(), Rv> {
        let s = self.session(h)?;
        if (if decrypt { &s.decrypt } else { &s.encrypt }).is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        let Mechanism::Gcm { iv, aad, tag_bits } = mech else {
            return Err(if mech.kind() == CKM_AES_GCM {
                CKR_MECHANISM_PARAM_INVALID
            } else {
                CKR_MECHANISM_INVALID
            });
        };
        if iv.len() != GCM_NONCE_LEN || *tag_bits != (GCM_TAG_LEN * 8) as CK_ULONG {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        if aad.len() > MAX_DATA_LEN {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        let (id, kt) = self.key(key, false)?;
        if kt != KeyType::Aes256 {
            return Err(CKR_KEY_TYPE_INCONSISTENT);
        }
        let op = CipherOp {
            key: id,
            iv: iv.clone(),
            aad: aad.clone(),
            pending: None,
            iv_out,
        };
        let s = self.session(h)?;
        if decrypt {
            s.decrypt = Some(op);
        } else {
            s.encrypt = Some(op);
        }
        Ok(())
    }

    /// C_Encrypt with CKM_AES_GCM: `ciphertext || tag`; the second value is the IV the
    /// vault chose and the caller's IV buffer address (the FFI layer writes it there).
    pub fn encrypt(
        &mut self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        cap: Option<usize>,
    ) -> Result<(Output, Vec<u8>, usize), Rv> {
        self.cipher(h, data, cap, false)
    }

    /// C_Decrypt with CKM_AES_GCM: input `ciphertext || tag`, IV from the parameters.
    pub fn decrypt(
        &mut self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        cap: Option<usize>,
    ) -> Result<Output, Rv> {
        self.cipher(h, data, cap, true).map(|(o, _, _)| o)
    }

    fn cipher(
        &mut self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        cap: Option<usize>,
        decrypt: bool,
    ) -> Result<(Output, Vec<u8>, usize), Rv> {
        let s = self.session(h)?;
        let slot = if decrypt {
            &mut s.decrypt
        } else {
            &mut s.encrypt
        };
        let op = slot.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let iv_out = op.iv_out;
        let (result, iv) = match op.pending.take() {
            Some(p) => p,
            None => {
                let (key, aad, iv) = (op.key, op.aad.clone(), op.iv.clone());
                let r = if decrypt {
                    if data.len() < GCM_TAG_LEN {
                        *slot = None;
                        return Err(CKR_ENCRYPTED_DATA_LEN_RANGE);
                    }
                    let mut sealed = iv.clone();
                    sealed.extend_from_slice(data);
                    self.vault(|c| c.decrypt(key, &aad, &sealed))
                        .map(|pt| (Zeroizing::new(pt), iv))
                } else if data.len() > MAX_DATA_LEN {
                    Err(CKR_DATA_LEN_RANGE)
                } else {
                    self.vault(|c| c.encrypt(key, &aad, data))
                        .and_then(|mut sealed| {
                            if sealed.len() < GCM_NONCE_LEN {
                                return Err(CKR_DEVICE_ERROR);
                            }
                            let ct = Zeroizing::new(sealed.split_off(GCM_NONCE_LEN));
                            Ok((ct, sealed))
                        })
                };
                match r {
                    Ok(r) => r,
                    Err(e) => {
                        let s = self.session(h)?;
                        *(if decrypt {
                            &mut s.decrypt
                        } else {
                            &mut s.encrypt
                        }) = None;
                        return Err(e);
                    }
                }
            }
        };
        let s = self.session(h)?;
        let slot = if decrypt {
            &mut s.decrypt
        } else {
            &mut s.encrypt
        };
        let len = result.len();
        let out = match cap {
            Some(c) if c >= len => {
                *slot = None;
                return Ok((Output::Done(result), iv, iv_out));
            }
            Some(_) => Output::TooSmall(len),
            None => Output::Length(len),
        };
        if let Some(op) = slot.as_mut() {
            op.pending = Some((result, iv.clone()));
        }
        Ok((out, iv, iv_out))
    }

    /// C_MessageEncryptInit / C_MessageDecryptInit with CKM_AES_GCM.
    pub fn message_init(
        &mut self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        key: CK_OBJECT_HANDLE,
        decrypt: bool,
    ) -> Result<(), Rv> {
        let s = self.session(h)?;
        if (if decrypt {
            s.message_decrypt
        } else {
            s.message_encrypt
        })
        .is_some()
        {
            return Err(CKR_OPERATION_ACTIVE);
        }
        if mech != &Mechanism::Plain(CKM_AES_GCM) {
            return Err(CKR_MECHANISM_INVALID);
        }
        let (id, kt) = self.key(key, false)?;
        if kt != KeyType::Aes256 {
            return Err(CKR_KEY_TYPE_INCONSISTENT);
        }
        let s = self.session(h)?;
        if decrypt {
            s.message_decrypt = Some(id);
        } else {
            s.message_encrypt = Some(id);
        }
        Ok(())
    }

    /// C_EncryptMessage: the vault generates the IV. Returns (IV, ciphertext, tag).
    #[allow(
        clippy::type_complexity,
        reason = "three byte strings, named in the docs"
    )]
    pub fn encrypt_message(
        &mut self,
        h: CK_SESSION_HANDLE,
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>), Rv> {
        let key = self
            .session(h)?
            .message_encrypt
            .ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        if plaintext.len() > MAX_DATA_LEN || aad.len() > MAX_DATA_LEN {
            return Err(CKR_DATA_LEN_RANGE);
        }
        let mut sealed = self.vault(|c| c.encrypt(key, aad, plaintext))?;
        let tag_at = sealed
            .len()
            .checked_sub(GCM_TAG_LEN)
            .ok_or(CKR_DEVICE_ERROR)?;
        if tag_at < GCM_NONCE_LEN {
            return Err(CKR_DEVICE_ERROR);
        }
        let tag = sealed.split_off(tag_at);
        let ct = sealed.split_off(GCM_NONCE_LEN);
        Ok((sealed, ct, tag))
    }

    /// C_DecryptMessage: IV and tag from the caller.
    pub fn decrypt_message(
        &mut self,
        h: CK_SESSION_HANDLE,
        iv: &[u8],
        tag: &[u8],
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Rv> {
        let key = self
            .session(h)?
            .message_decrypt
            .ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        if iv.len() != GCM_NONCE_LEN || tag.len() != GCM_TAG_LEN {
            return Err(CKR_MECHANISM_PARAM_INVALID);
        }
        let mut sealed = iv.to_vec();
        sealed.extend_from_slice(ciphertext);
        sealed.extend_from_slice(tag);
        match self.vault(|c| c.decrypt(key, aad, &sealed)) {
            Ok(pt) => Ok(Zeroizing::new(pt)),
            // PKCS#11 3.0's code for a failed AEAD tag in the message API.
            Err(CKR_ENCRYPTED_DATA_INVALID) => Err(CKR_AEAD_DECRYPT_FAILED),
            Err(e) => Err(e),
        }
    }

    /// C_MessageEncryptFinal / C_MessageDecryptFinal.
    pub fn message_final(&mut self, h: CK_SESSION_HANDLE, decrypt: bool) -> Result<(), Rv> {
        let s = self.session(h)?;
        let slot = if decrypt {
            &mut s.message_decrypt
        } else {
            &mut s.message_encrypt
        };
        slot.take().map(|_| ()).ok_or(CKR_OPERATION_NOT_INITIALIZED)
    }

    /// C_WrapKey with CKM_AES_KEY_WRAP_KWP: RFC 5649 of a secret key's value. Private
    /// keys are not wrappable (PKCS#11 wraps them as PKCS#8, the vault as raw scalars).
    pub fn wrap(
        &mut self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
    ) -> Result<Vec<u8>, Rv> {
        self.session(h)?;
        if mech != &Mechanism::Plain(CKM_AES_KEY_WRAP_KWP) {
            return Err(CKR_MECHANISM_INVALID);
        }
        let (kek, kek_type) = self
            .key(wrapping, false)
            .map_err(|_| CKR_WRAPPING_KEY_HANDLE_INVALID)?;
        if kek_type != KeyType::Aes256 {
            return Err(CKR_WRAPPING_KEY_TYPE_INCONSISTENT);
        }
        let (id, kt) = self.key(key, false)?;
        if is_asymmetric(kt) {
            return Err(CKR_KEY_NOT_WRAPPABLE);
        }
        self.vault(|c| c.wrap(kek, id))
    }

    /// C_UnwrapKey with CKM_AES_KEY_WRAP_KWP into a new secret key.
    pub fn unwrap(
        &mut self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        template: &Template,
    ) -> Result<CK_OBJECT_HANDLE, Rv> {
        self.rw(h)?;
        if mech != &Mechanism::Plain(CKM_AES_KEY_WRAP_KWP) {
            return Err(CKR_MECHANISM_INVALID);
        }
        let (kek, kek_type) = self
            .key(unwrapping, false)
            .map_err(|_| CKR_UNWRAPPING_KEY_HANDLE_INVALID)?;
        if kek_type != KeyType::Aes256 {
            return Err(CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT);
        }
        let w = read_template(template)?;
        if w.value.is_some() {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        let kt = secret_type(&w)?;
        let t = vault_template(kt, w.usage_on, w.usage_off, w.extractable.unwrap_or(false))?;
        let a = match self.vault(|c| c.unwrap_key(kek, t, &w.label, wrapped)) {
            Err(CKR_ENCRYPTED_DATA_INVALID | CKR_ARGUMENTS_BAD | CKR_DATA_LEN_RANGE) => {
                return Err(CKR_WRAPPED_KEY_INVALID)
            }
            r => r?,
        };
        Ok(handle(a.key_id.get(), Half::Secret))
    }

    /// C_DeriveKey with CKM_HKDF_DERIVE (extract and expand, SHA-384): the vault's
    /// plain HKDF (HkdfDerive) into a new AES-256 or HMAC-SHA-384 key.
    pub fn derive(
        &mut self,
        h: CK_SESSION_HANDLE,
        mech: &Mechanism,
        base: CK_OBJECT_HANDLE,
        template: &Template,
    ) -> Result<CK_OBJECT_HANDLE, Rv> {
        self.rw(h)?;
        let Mechanism::Hkdf { salt, info } = mech else {
            return Err(CKR_MECHANISM_INVALID);
        };
        let (parent, _) = self.key(base, false)?;
        let w = read_template(template)?;
        if w.value.is_some() {
            return Err(CKR_TEMPLATE_INCONSISTENT);
        }
        let kt = secret_type(&w)?;
        let t = vault_template(kt, w.usage_on, w.usage_off, w.extractable.unwrap_or(false))?;
        let a = self.vault(|c| c.hkdf_derive(parent, t, &w.label, salt, info))?;
        Ok(handle(a.key_id.get(), Half::Secret))
    }

    /// C_GenerateRandom.
    pub fn random(&mut self, h: CK_SESSION_HANDLE, len: usize) -> Result<Zeroizing<Vec<u8>>, Rv> {
        self.session(h)?;
        let mut out = Zeroizing::new(Vec::with_capacity(len));
        while out.len() < len {
            let n = (len - out.len()).min(MAX_RANDOM_LEN) as u32;
            let chunk = self.vault(|c| c.random(n))?;
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use nitride_protocol::vhsm::KeyFlags;

    fn b(v: bool) -> Vec<u8> {
        vec![u8::from(v)]
    }

    #[test]
    fn templates_map_to_vault_templates() {
        let w = read_template(&[
            (CKA_CLASS, objects::ulong(CKO_SECRET_KEY)),
            (CKA_KEY_TYPE, objects::ulong(CKK_AES)),
            (CKA_ENCRYPT, b(true)),
            (CKA_WRAP, b(false)),
            (CKA_SENSITIVE, b(true)),
        ])
        .unwrap();
        assert_eq!(secret_type(&w).unwrap(), KeyType::Aes256);
        let t = vault_template(KeyType::Aes256, w.usage_on, w.usage_off, false).unwrap();
        let usage = KeyUsage::from_bits_truncate(t.usage.get());
        assert!(usage.contains(KeyUsage::ENCRYPT | KeyUsage::DECRYPT));
        assert!(!usage.contains(KeyUsage::WRAP) && !usage.contains(KeyUsage::ATTEST));
        assert_eq!(
            KeyFlags::from_bits(t.exportable),
            Some(KeyFlags::PERSISTENT),
            "non-exportable unless asked; persistent"
        );
        // A usage the type cannot have, a clear key, a caller-chosen id: refused.
        let sign_aes = read_template(&[(CKA_SIGN, b(true))]).unwrap();
        assert_eq!(
            vault_template(
                KeyType::Aes256,
                sign_aes.usage_on,
                sign_aes.usage_off,
                false
            ),
            Err(CKR_TEMPLATE_INCONSISTENT)
        );
        assert_eq!(
            read_template(&[(CKA_SENSITIVE, b(false))]).map(|_| ()),
            Err(CKR_ATTRIBUTE_VALUE_INVALID)
        );
        assert_eq!(
            read_template(&[(CKA_ID, vec![1])]).map(|_| ()),
            Err(CKR_ATTRIBUTE_READ_ONLY)
        );
        assert_eq!(
            read_template(&[(CKA_LABEL, vec![b'x'; 33])]).map(|_| ()),
            Err(CKR_ATTRIBUTE_VALUE_INVALID)
        );
        // Generic secrets are HMAC-SHA-384 keys of 48 bytes only.
        let g = read_template(&[
            (CKA_KEY_TYPE, objects::ulong(CKK_GENERIC_SECRET)),
            (CKA_VALUE_LEN, objects::ulong(32)),
        ])
        .unwrap();
        assert_eq!(secret_type(&g), Err(CKR_ATTRIBUTE_VALUE_INVALID));
    }

    #[test]
    fn debug_shows_no_data() {
        let mut t = Token::new(PathBuf::from("/nonexistent/vhsm.sock"));
        let h = t.open_session(CKF_SERIAL_SESSION).unwrap();
        let s = t.session(h).unwrap();
        s.decrypt = Some(CipherOp {
            key: 1,
            iv: vec![0; 12],
            aad: Vec::new(),
            pending: Some((Zeroizing::new(b"plaintext secret".to_vec()), vec![0; 12])),
            iv_out: 0,
        });
        s.sign = Some(SignOp {
            mechanism: CKM_SHA384_HMAC,
            key: 2,
            key_type: KeyType::HmacSha384,
            data: Zeroizing::new(b"message secret".to_vec()),
            pending: Some(Zeroizing::new(vec![0xAB; 48])),
        });
        let text = format!("{t:?}");
        assert!(text.contains("[REDACTED]"), "{text}");
        // The bytes of "secret", in any Debug rendering of a byte vector.
        assert!(!text.contains("115, 101, 99, 114, 101, 116"), "{text}");
        assert!(!text.contains("171, 171"), "{text}");
    }

    #[test]
    fn sessions_and_login() {
        let mut t = Token::new(PathBuf::from("/nonexistent/vhsm.sock"));
        assert_eq!(t.open_session(0), Err(CKR_SESSION_PARALLEL_NOT_SUPPORTED));
        let ro = t.open_session(CKF_SERIAL_SESSION).unwrap();
        let rw = t.open_session(CKF_SERIAL_SESSION | CKF_RW_SESSION).unwrap();
        assert_ne!(ro, rw);
        assert_eq!(t.session_counts(), (2, 1));
        assert_eq!(t.session_info(ro).unwrap().0, CKS_RO_PUBLIC_SESSION);
        assert_eq!(t.logout(ro), Err(CKR_USER_NOT_LOGGED_IN));
        t.login(ro, CKU_USER).unwrap();
        assert_eq!(t.login(rw, CKU_USER), Err(CKR_USER_ALREADY_LOGGED_IN));
        assert_eq!(t.session_info(rw).unwrap().0, CKS_RW_USER_FUNCTIONS);
        assert_eq!(t.login(rw, CKU_SO), Err(CKR_USER_TYPE_INVALID));
        // A read-only session cannot create; an unreachable vault is a device error.
        let m = Mechanism::Plain(CKM_AES_KEY_GEN);
        assert_eq!(t.generate_key(ro, &m, &[]), Err(CKR_SESSION_READ_ONLY));
        assert_eq!(t.generate_key(rw, &m, &[]), Err(CKR_DEVICE_ERROR));
        assert_eq!(t.find(rw, 1), Err(CKR_OPERATION_NOT_INITIALIZED));
        t.close_session(ro).unwrap();
        assert_eq!(t.close_session(ro), Err(CKR_SESSION_HANDLE_INVALID));
        t.close_all();
        assert_eq!(t.session_counts(), (0, 0));
        assert_eq!(t.session_info(rw), Err(CKR_SESSION_HANDLE_INVALID));
    }
}
