#!/usr/bin/env python3
"""PKCS#11 client checks through PyKCS11, run unchanged against libnitride_pkcs11.so
and against SoftHSMv2 (the reference token).

Usage: clients.py MODULE PIN [BENCH_N]

Prints one JSON object: for every check, its result. Results that do not depend on
the key (attribute semantics, error codes, lengths, agreement with Python's
`cryptography` on known keys) must be equal for both tokens; the test compares them.
Keys of known value enter with C_CreateObject (the vault must allow plaintext import).
"""
import hashlib
import hmac
import json
import os
import sys
import time

import PyKCS11
from PyKCS11 import LowLevel
from PyKCS11.LowLevel import (
    CKA_ALWAYS_SENSITIVE, CKA_CLASS, CKA_DECRYPT, CKA_DERIVE, CKA_EC_PARAMS, CKA_EC_POINT,
    CKA_ENCRYPT, CKA_EXTRACTABLE, CKA_ID, CKA_KEY_TYPE, CKA_LABEL, CKA_LOCAL,
    CKA_NEVER_EXTRACTABLE, CKA_SENSITIVE, CKA_SIGN, CKA_TOKEN, CKA_UNWRAP, CKA_VALUE,
    CKA_VALUE_LEN, CKA_VERIFY, CKA_WRAP, CKK_AES, CKK_EC, CKK_GENERIC_SECRET,
    CKO_PRIVATE_KEY, CKO_PUBLIC_KEY, CKO_SECRET_KEY,
)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.keywrap import (
    aes_key_unwrap_with_padding, aes_key_wrap_with_padding,
)

CKM_AES_KEY_WRAP_KWP = 0x210B
CKM_HKDF_DERIVE = 0x402A
CKF_HKDF_SALT_DATA = 2

P384 = bytes.fromhex("06052b81040022")
P256 = bytes.fromhex("06082a8648ce3d030107")
KEK = bytes(range(32))
AES_KEY = bytes(range(100, 132))
HMAC_KEY = bytes(range(48))
MSG = b"nitride pkcs11 client check"

module, pin = sys.argv[1], sys.argv[2]
bench_n = int(sys.argv[3]) if len(sys.argv) > 3 else 0

lib = PyKCS11.PyKCS11Lib()
lib.load(module)
slot = lib.getSlotList(tokenPresent=True)[0]
info = lib.getTokenInfo(slot)
s = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
s.login(pin)
out = {}


def CKR(code):
    """The CKR_ name of a return value (PyKCS11 lacks the 3.0 ones)."""
    return {0x42: "CKR_AEAD_DECRYPT_FAILED"}.get(code) or PyKCS11.CKR[code]


def rv(f):
    """The CKR_ name of the error `f` raises, or "CKR_OK"."""
    try:
        f()
        return "CKR_OK"
    except PyKCS11.PyKCS11Error as e:
        return CKR(e.value)


def value_rv(o):
    """The CK_RV of C_GetAttributeValue(CKA_VALUE) (PyKCS11 hides it)."""
    t = LowLevel.ckattrlist(1)
    t[0].SetType(CKA_VALUE)
    return CKR(s.lib.C_GetAttributeValue(s.session, o, t))


def attrs(o, names):
    vals = s.getAttributeValue(o, names)
    return [v if not isinstance(v, (tuple, list)) else bytes(v).hex() for v in vals]


def secret(value, key_type, label, extractable, **usage):
    t = [
        (CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, key_type), (CKA_TOKEN, True),
        (CKA_VALUE, value), (CKA_LABEL, label), (CKA_SENSITIVE, True),
        (CKA_EXTRACTABLE, extractable),
    ] + [(getattr(LowLevel, "CKA_" + k.upper()), v) for k, v in usage.items()]
    return s.createObject(t)


out["token_initialized"] = bool(info.flags & PyKCS11.CKF_TOKEN_INITIALIZED)
out["rng"] = bool(info.flags & PyKCS11.CKF_RNG)
out["random_len"] = len(s.generateRandom(100))

# --- Generated AES key: sensitivity attributes; CKA_VALUE refused. ---
gen = s.generateKey([
    (CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, 32),
    (CKA_TOKEN, True), (CKA_SENSITIVE, True), (CKA_EXTRACTABLE, False),
    (CKA_ENCRYPT, True), (CKA_DECRYPT, True), (CKA_LABEL, "gen-aes"),
], PyKCS11.Mechanism(PyKCS11.CKM_AES_KEY_GEN))
out["generated_aes"] = attrs(gen, [
    CKA_CLASS, CKA_KEY_TYPE, CKA_VALUE_LEN, CKA_SENSITIVE, CKA_EXTRACTABLE,
    CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, CKA_LOCAL, CKA_ENCRYPT, CKA_DECRYPT,
])
out["generated_aes_value"] = value_rv(gen)
out["find_by_label"] = len(s.findObjects([(CKA_LABEL, "gen-aes")]))
out["find_by_class_and_type"] = len(s.findObjects(
    [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_LABEL, "gen-aes")]))
out["find_nothing"] = len(s.findObjects([(CKA_LABEL, "no such key")]))

# --- AES-GCM: the token's ciphertext opens with Python; both directions. ---
aes = secret(AES_KEY, CKK_AES, "aes", False, encrypt=True, decrypt=True)
out["imported_aes"] = attrs(aes, [
    CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, CKA_LOCAL])
zero_iv = bytes(12)
mech = PyKCS11.AES_GCM_Mechanism(zero_iv, b"aad", 128)
ct = bytes(s.encrypt(aes, MSG, mech))
# The vault chose the IV and wrote it into the parameters (SoftHSM used ours).
iv = bytes(mech._source_iv)
out["gcm_ct_len"] = len(ct) - len(MSG)
out["gcm_python_opens"] = AESGCM(AES_KEY).decrypt(iv, ct, b"aad") == MSG
out["gcm_round_trip"] = bytes(
    s.decrypt(aes, ct, PyKCS11.AES_GCM_Mechanism(iv, b"aad", 128))) == MSG
mine_iv = os.urandom(12)
mine = AESGCM(AES_KEY).encrypt(mine_iv, MSG, b"")
out["gcm_opens_python"] = bytes(
    s.decrypt(aes, mine, PyKCS11.AES_GCM_Mechanism(mine_iv, b"", 128))) == MSG
tampered = bytearray(ct)
tampered[0] ^= 1
out["gcm_tampered"] = rv(lambda: s.decrypt(
    aes, bytes(tampered), PyKCS11.AES_GCM_Mechanism(iv, b"aad", 128)))
out["gcm_wrong_key_type"] = rv(lambda: s.sign(aes, MSG, PyKCS11.Mechanism(
    PyKCS11.CKM_SHA384_HMAC)))

# --- AES-GCM through the PKCS#11 3.0 message API (ctypes: PyKCS11 lacks it); the
# token generates the IV. SoftHSMv2 2.6 has no 3.0 interface. ---
def message_api():
    import ctypes
    dll = ctypes.CDLL(module)
    if not hasattr(dll, "C_GetInterface"):
        return "no PKCS#11 3.0 interface"
    version = (ctypes.c_ubyte * 2)(3, 0)
    iface = ctypes.c_void_p()
    r = dll.C_GetInterface(b"PKCS 11", version, ctypes.byref(iface), ctypes.c_ulong(0))
    if r != 0:
        return CKR(r)
    flist = ctypes.c_void_p.from_address(iface.value + 8).value
    # CK_FUNCTION_LIST_3_0: CK_VERSION (padded to 8), then the functions; the 2.40 list's
    # 68, C_GetInterfaceList, C_GetInterface, C_LoginUser, C_SessionCancel, then these.
    ul, vp = ctypes.c_ulong, ctypes.c_void_p

    def fn(index, *args):
        addr = ctypes.c_void_p.from_address(flist + 8 + 8 * index).value
        return ctypes.CFUNCTYPE(ul, *args)(addr)

    enc_init = fn(72, ul, vp, ul)
    enc = fn(73, ul, vp, ul, ctypes.c_char_p, ul, ctypes.c_char_p, ul, vp, ctypes.POINTER(ul))
    enc_final = fn(76, ul)
    dec_init = fn(77, ul, vp, ul)
    dec = fn(78, ul, vp, ul, ctypes.c_char_p, ul, ctypes.c_char_p, ul, vp, ctypes.POINTER(ul))
    dec_final = fn(81, ul)

    class Mech(ctypes.Structure):
        _fields_ = [("mechanism", ul), ("pParameter", vp), ("ulParameterLen", ul)]

    class GcmMessageParams(ctypes.Structure):
        _fields_ = [("pIv", vp), ("ulIvLen", ul), ("ulIvFixedBits", ul),
                    ("ivGenerator", ul), ("pTag", vp), ("ulTagBits", ul)]

    sess, key = s.session.value(), aes.value()
    mech = Mech(PyKCS11.CKM_AES_GCM, None, 0)
    iv, tag = ctypes.create_string_buffer(12), ctypes.create_string_buffer(16)
    p = GcmMessageParams(ctypes.cast(iv, vp), 12, 0, 1, ctypes.cast(tag, vp), 128)  # CKG_GENERATE
    ct = ctypes.create_string_buffer(len(MSG))
    n = ul(len(MSG))
    results = [CKR(enc_init(sess, ctypes.byref(mech), key))]
    results.append(CKR(enc(sess, ctypes.byref(p), ctypes.sizeof(p), b"aad", 3, MSG,
                                   len(MSG), ctypes.cast(ct, vp), ctypes.byref(n))))
    first_iv = iv.raw
    results.append(AESGCM(AES_KEY).decrypt(iv.raw, ct.raw[: n.value] + tag.raw, b"aad") == MSG)
    enc(sess, ctypes.byref(p), ctypes.sizeof(p), b"aad", 3, MSG, len(MSG),
        ctypes.cast(ct, vp), ctypes.byref(n))
    results.append(iv.raw != first_iv)  # a fresh IV per message
    results.append(CKR(enc_final(sess)))
    pt = ctypes.create_string_buffer(len(MSG))
    results.append(CKR(dec_init(sess, ctypes.byref(mech), key)))
    results.append(CKR(dec(sess, ctypes.byref(p), ctypes.sizeof(p), b"aad", 3,
                                   ct.raw[: n.value], n.value, ctypes.cast(pt, vp),
                                   ctypes.byref(ul(len(MSG))))))
    results.append(pt.raw == MSG)
    tag[0] = tag.raw[0] ^ 1
    results.append(CKR(dec(sess, ctypes.byref(p), ctypes.sizeof(p), b"aad", 3,
                                   ct.raw[: n.value], n.value, ctypes.cast(pt, vp),
                                   ctypes.byref(ul(len(MSG))))))
    results.append(CKR(dec_final(sess)))
    return results


out["gcm_message_api"] = message_api()

# --- HMAC-SHA-384 over a known key equals Python's. ---
hk = secret(HMAC_KEY, CKK_GENERIC_SECRET, "hmac", False, sign=True, verify=True)
tag = bytes(s.sign(hk, MSG, PyKCS11.Mechanism(PyKCS11.CKM_SHA384_HMAC)))
out["hmac_matches_python"] = tag == hmac.new(HMAC_KEY, MSG, hashlib.sha384).digest()
out["hmac_verify"] = s.verify(hk, MSG, tag, PyKCS11.Mechanism(PyKCS11.CKM_SHA384_HMAC))
out["hmac_verify_bad"] = s.verify(
    hk, MSG + b"!", tag, PyKCS11.Mechanism(PyKCS11.CKM_SHA384_HMAC))

# --- RFC 5649 wrap/unwrap: the token's wrapping equals Python's, both ways. ---
kek = secret(KEK, CKK_AES, "kek", False, wrap=True, unwrap=True)
exportable = secret(AES_KEY, CKK_AES, "exportable", True, encrypt=True, decrypt=True)
# RFC 5649: CKM_AES_KEY_WRAP_KWP; SoftHSM 2.6 names it CKM_AES_KEY_WRAP_PAD (0x210A).
mechs = lib.getMechanismList(slot)
kwp_type = CKM_AES_KEY_WRAP_KWP if "CKM_AES_KEY_WRAP_KWP" in mechs or 0x210B in mechs else 0x210A
kwp = PyKCS11.Mechanism(kwp_type)
wrapped = bytes(s.wrapKey(kek, exportable, kwp))
out["kwp_wrap_matches_python"] = wrapped == aes_key_wrap_with_padding(KEK, AES_KEY)
out["kwp_wrap_non_extractable"] = rv(lambda: s.wrapKey(kek, aes, kwp))
blob = aes_key_wrap_with_padding(KEK, HMAC_KEY)
uk = s.unwrapKey(kek, blob, [
    (CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET), (CKA_TOKEN, True),
    (CKA_SENSITIVE, True), (CKA_EXTRACTABLE, False), (CKA_SIGN, True), (CKA_VERIFY, True),
    (CKA_LABEL, "unwrapped"),
], kwp)
out["kwp_unwrapped_hmac"] = bytes(s.sign(uk, MSG, PyKCS11.Mechanism(
    PyKCS11.CKM_SHA384_HMAC))) == hmac.new(HMAC_KEY, MSG, hashlib.sha384).digest()
out["kwp_unwrapped_attrs"] = attrs(uk, [
    CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_ALWAYS_SENSITIVE, CKA_NEVER_EXTRACTABLE, CKA_LOCAL])
out["kwp_unwrap_tampered"] = rv(lambda: s.unwrapKey(
    kek, blob[:-1] + bytes([blob[-1] ^ 1]),
    [(CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_GENERIC_SECRET)], kwp))

# --- HKDF (CKM_HKDF_DERIVE, SHA-384): the derived key's value equals Python's. ---
base = secret(AES_KEY, CKK_AES, "hkdf-base", True, derive=True)


try:
    import ctypes

    class HkdfParams(ctypes.Structure):
        _fields_ = [
            ("bExtract", ctypes.c_ubyte), ("bExpand", ctypes.c_ubyte),
            ("prfHashMechanism", ctypes.c_ulong), ("ulSaltType", ctypes.c_ulong),
            ("pSalt", ctypes.c_char_p), ("ulSaltLen", ctypes.c_ulong),
            ("hSaltKey", ctypes.c_ulong), ("pInfo", ctypes.c_char_p),
            ("ulInfoLen", ctypes.c_ulong),
        ]

    salt, hinfo = b"salt", b"pkcs11 hkdf"
    p = HkdfParams(1, 1, PyKCS11.CKM_SHA384, CKF_HKDF_SALT_DATA, salt, len(salt), 0,
                   hinfo, len(hinfo))
    raw = ctypes.string_at(ctypes.addressof(p), ctypes.sizeof(p))
    m = PyKCS11.Mechanism(CKM_HKDF_DERIVE, raw)
    derived = s.deriveKey(base, [
        (CKA_CLASS, CKO_SECRET_KEY), (CKA_KEY_TYPE, CKK_AES), (CKA_VALUE_LEN, 32),
        (CKA_TOKEN, True), (CKA_SENSITIVE, True), (CKA_EXTRACTABLE, True),
        (CKA_ENCRYPT, True), (CKA_DECRYPT, True), (CKA_LABEL, "derived"),
    ], m)
    value = aes_key_unwrap_with_padding(KEK, bytes(s.wrapKey(kek, derived, kwp)))
    expected = HKDF(hashes.SHA384(), 32, salt, hinfo).derive(AES_KEY)
    out["hkdf"] = "matches python" if value == expected else "differs"
except PyKCS11.PyKCS11Error as e:
    out["hkdf"] = CKR(e.value)

# --- ECDSA P-384: raw r||s signatures that Python verifies. ---
pub, priv = s.generateKeyPair(
    [(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_EC_PARAMS, P384),
     (CKA_TOKEN, True), (CKA_VERIFY, True), (CKA_LABEL, "p384")],
    [(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_TOKEN, True),
     (CKA_SENSITIVE, True), (CKA_EXTRACTABLE, False), (CKA_SIGN, True), (CKA_LABEL, "p384")],
    PyKCS11.Mechanism(PyKCS11.CKM_EC_KEY_PAIR_GEN))
out["ec_private"] = attrs(priv, [
    CKA_CLASS, CKA_KEY_TYPE, CKA_SENSITIVE, CKA_EXTRACTABLE, CKA_ALWAYS_SENSITIVE,
    CKA_NEVER_EXTRACTABLE, CKA_LOCAL, CKA_SIGN])
out["ec_public"] = attrs(pub, [CKA_CLASS, CKA_KEY_TYPE, CKA_EC_PARAMS, CKA_VERIFY])
out["ec_same_id"] = attrs(pub, [CKA_ID]) == attrs(priv, [CKA_ID])
out["ec_private_value"] = value_rv(priv)
point = bytes(s.getAttributeValue(pub, [CKA_EC_POINT])[0])
assert point[0] == 4 and point[1] == len(point) - 2
vk = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP384R1(), point[2:])


def check(sig, data, hash_alg):
    r = int.from_bytes(sig[:48], "big")
    t = int.from_bytes(sig[48:], "big")
    try:
        vk.verify(utils.encode_dss_signature(r, t), data, hash_alg)
        return True
    except Exception:
        return False


try:
    sig = bytes(s.sign(priv, MSG, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA_SHA384)))
    out["ecdsa_sha384"] = [len(sig), check(sig, MSG, ec.ECDSA(hashes.SHA384()))]
except PyKCS11.PyKCS11Error as e:
    out["ecdsa_sha384"] = CKR(e.value)


def hashed(priv_, pub_, mech, check_, hash_alg):
    """Sign MSG with a hashing ECDSA mechanism: [length, Python verifies, the token
    verifies], or the CKR_ name where the token lacks the mechanism."""
    try:
        m = PyKCS11.Mechanism(mech)
        sig_ = bytes(s.sign(priv_, MSG, m))
        return [len(sig_), check_(sig_, MSG, ec.ECDSA(hash_alg)), s.verify(pub_, MSG, sig_, m)]
    except PyKCS11.PyKCS11Error as e:
        return CKR(e.value)


out["ecdsa_sha256"] = hashed(priv, pub, PyKCS11.CKM_ECDSA_SHA256, check, hashes.SHA256())
digest = hashlib.sha384(MSG).digest()
sig = bytes(s.sign(priv, digest, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA)))
out["ecdsa_digest"] = [len(sig), check(sig, digest, ec.ECDSA(utils.Prehashed(hashes.SHA384())))]
out["ecdsa_verify"] = s.verify(pub, digest, sig, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA))
out["ecdsa_verify_bad"] = s.verify(
    pub, digest, sig[:-1] + bytes([sig[-1] ^ 1]), PyKCS11.Mechanism(PyKCS11.CKM_ECDSA))

# --- ECDSA P-256: the same through CKM_ECDSA_SHA256 and raw CKM_ECDSA. ---
pub256, priv256 = s.generateKeyPair(
    [(CKA_CLASS, CKO_PUBLIC_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_EC_PARAMS, P256),
     (CKA_TOKEN, True), (CKA_VERIFY, True), (CKA_LABEL, "p256")],
    [(CKA_CLASS, CKO_PRIVATE_KEY), (CKA_KEY_TYPE, CKK_EC), (CKA_TOKEN, True),
     (CKA_SENSITIVE, True), (CKA_EXTRACTABLE, False), (CKA_SIGN, True), (CKA_LABEL, "p256")],
    PyKCS11.Mechanism(PyKCS11.CKM_EC_KEY_PAIR_GEN))
out["p256_public"] = attrs(pub256, [CKA_CLASS, CKA_KEY_TYPE, CKA_EC_PARAMS, CKA_VERIFY])
point256 = bytes(s.getAttributeValue(pub256, [CKA_EC_POINT])[0])
assert point256[0] == 4 and point256[1] == len(point256) - 2
vk256 = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point256[2:])


def check256(sig, data, hash_alg):
    r = int.from_bytes(sig[:32], "big")
    t = int.from_bytes(sig[32:], "big")
    try:
        vk256.verify(utils.encode_dss_signature(r, t), data, hash_alg)
        return True
    except Exception:
        return False


out["p256_ecdsa_sha256"] = hashed(
    priv256, pub256, PyKCS11.CKM_ECDSA_SHA256, check256, hashes.SHA256())
out["p256_ecdsa_sha384"] = hashed(
    priv256, pub256, PyKCS11.CKM_ECDSA_SHA384, check256, hashes.SHA384())
digest256 = hashlib.sha256(MSG).digest()
sig256 = bytes(s.sign(priv256, digest256, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA)))
out["p256_ecdsa_digest"] = [
    len(sig256), check256(sig256, digest256, ec.ECDSA(utils.Prehashed(hashes.SHA256())))]
out["p256_ecdsa_verify"] = s.verify(
    pub256, digest256, sig256, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA))
out["p256_ecdsa_verify_bad"] = s.verify(
    pub256, digest256, sig256[:-1] + bytes([sig256[-1] ^ 1]),
    PyKCS11.Mechanism(PyKCS11.CKM_ECDSA))

out["unknown_mechanism"] = rv(lambda: s.generateKey(
    [(CKA_CLASS, CKO_SECRET_KEY)], PyKCS11.Mechanism(0x80004E48)))

# --- Destroy: the object is gone. ---
s.destroyObject(gen)
out["destroyed_find"] = len(s.findObjects([(CKA_LABEL, "gen-aes")]))
out["destroyed_attr"] = rv(lambda: s.getAttributeValue(gen, [CKA_CLASS]))

# --- Signatures per second through the module (CKM_ECDSA_SHA384). ---
if bench_n:
    m = PyKCS11.Mechanism(PyKCS11.CKM_ECDSA_SHA384)
    s.sign(priv, MSG, m)
    t0 = time.perf_counter()
    for _ in range(bench_n):
        s.sign(priv, MSG, m)
    out["bench_sign_per_s"] = bench_n / (time.perf_counter() - t0)

s.logout()
s.closeSession()
print(json.dumps(out))
