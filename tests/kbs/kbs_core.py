"""The RCAR v0.4.0 state of the test KBS (sessions, tokens, policy, JWE, resources),
independent of HTTP.

What this module is for: the behaviour of trustee's KBS between the bytes of a request and
the bytes of its answer, with independent libraries (`jwcrypto` for JOSE, `rfc8785` for
canonical JSON, `cryptography` through kbs_snp for the SNP evidence):

- /auth: the kbs-types `Request` (`{"version","tee","extra-params"}`), the exact semver
  check `=0.4.0` (build metadata accepted, pre-releases not), a 32-byte nonce in standard
  base64 and a session that lives `session_seconds` (trustee: 5 minutes);
- /attest: the kbs-types `Attestation` (top-level kebab-case, `tee-evidence` snake_case),
  the nonce of the session, REPORT_DATA = SHA-384 of the RFC 8785 form of
  `{"additional-evidence","nonce","tee-pubkey"}` with the tee-pubkey re-serialized from its
  known members only, then kbs_snp's checks; a token (ES256 JWT, EAR-shaped claims) on
  success; a second /attest on an attested session answers the old token unchecked;
- /resource: the token from an attested session cookie or `Authorization: Bearer`, the
  resource policy of this instance on the token's claims, then the resource as a flattened
  JWE to the token's tee-pubkey (ECDH-ES+A256KW on P-256/P-521, or RSA-OAEP-256; A256GCM;
  AAD = the ASCII of `protected`);
- errors as trustee's RFC 7807 `{"type","detail"}` with its type names, 401 for every
  refusal and 404 only for an unknown plugin; every refusal has a stable code for the log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import rfc8785
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwcrypto import jwk, jwt
from jwcrypto.common import JWException
from jwcrypto.jwa import JWA

import kbs_snp
from kbs_snp import Refusal

PROTOCOL_VERSION = "0.4.0"
ERROR_TYPE_PREFIX = "https://github.com/confidential-containers/kbs/errors"
SESSION_COOKIE = "kbs-session-id"
NONCE_BYTES = 32
MAX_SESSIONS = 4096

# kbs-types 0.18 `Tee` names (serde), "nvidiadpu" being an accepted alias.
TEE_NAMES = frozenset(
    {
        "az-snp-vtpm", "az-tdx-vtpm", "nvidia", "sgx", "snp", "tdx", "cca", "csv", "se",
        "hygondcu", "nvidia-dpu", "nvidiadpu", "tpm", "sample", "sampledevice",
    }
)

ECDH_ES_A256KW = "ECDH-ES+A256KW"
RSA_OAEP_256 = "RSA-OAEP-256"
A256GCM = "A256GCM"
EC_CURVES = {"P-256": (ec.SECP256R1(), 32), "P-521": (ec.SECP521R1(), 66)}

# The path of the tee-pubkey in an EAR token, where trustee's token verifier finds it.
EAR_TEE_PUBKEY_PATH = (
    "submods", "cpu0", "ear.veraison.annotated-evidence", "runtime_data_claims", "tee-pubkey"
)
TOKEN_PROFILE = "tag:github.com,2024:confidential-containers/Trustee"
TOKEN_ISSUER = "nitride-test-kbs"

# trustee's resource path grammar (ResourceDesc).
_SEG = r"[a-zA-Z0-9_\-]+[a-zA-Z0-9_\-\.]*"
RESOURCE_RE = re.compile(rf"({_SEG})/({_SEG})/({_SEG})")


class KbsError(Exception):
    """An answer other than 200: trustee's error type name, its detail sentence, the HTTP
    status (401, or 404 for an unknown plugin) and the refusal code for the log."""

    def __init__(self, type_name: str, detail: str, code: str, status: int = 401):
        super().__init__(detail)
        self.type_name = type_name
        self.detail = detail
        self.code = code
        self.status = status

    def body(self) -> bytes:
        """The RFC 7807 body, serialized as serde_json serializes kbs-types'
        ErrorInformation (`type` then `detail`, no whitespace)."""
        return compact_json({"type": f"{ERROR_TYPE_PREFIX}/{self.type_name}", "detail": self.detail})


def compact_json(v: Any) -> bytes:
    """serde_json::to_string's form: no whitespace, non-ASCII left as UTF-8."""
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------------------------------
# JSON as serde_json reads it.
# ---------------------------------------------------------------------------------------


class JsonError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise JsonError(f"duplicate member {k!r}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise JsonError(f"{name} is not JSON")


# serde_json (recursion limit 128) parses at most 127 nested arrays/objects.
MAX_JSON_DEPTH = 127


def _check_strings(v: Any, depth: int = 0) -> None:
    # Python accepts lone UTF-16 surrogates in \u escapes; serde_json does not.
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise JsonError("a string holds a lone surrogate") from None
    elif isinstance(v, (list, dict)):
        if depth >= MAX_JSON_DEPTH:
            raise JsonError(f"nested deeper than {MAX_JSON_DEPTH} levels")
        for k, x in v.items() if isinstance(v, dict) else enumerate(v):
            _check_strings(k, depth + 1)
            _check_strings(x, depth + 1)


def load_json(body: bytes) -> Any:
    """Strict JSON: UTF-8 without BOM, no NaN/Infinity, no duplicate member names (this
    KBS refuses duplicates everywhere; serde refuses them in structs)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise JsonError(f"not UTF-8 ({e.reason} at byte {e.start})") from None
    if text.startswith("\ufeff"):
        raise JsonError("starts with a byte order mark")
    try:
        v = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except json.JSONDecodeError as e:
        raise JsonError(f"{e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise JsonError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    _check_strings(v)
    return v


def b64url_decode(s: Any, what: str) -> bytes:
    """Base64url without padding, canonical (as the `base64` crate's URL_SAFE_NO_PAD)."""
    if not isinstance(s, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", s) or len(s) % 4 == 1:
        raise ValueError(f"{what} is not base64url without padding")
    raw = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    if b64url(raw) != s:
        raise ValueError(f"{what} is not canonical base64url (non-zero trailing bits)")
    return raw


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


# ---------------------------------------------------------------------------------------
# Version, request and attestation messages (kbs-types 0.18).
# ---------------------------------------------------------------------------------------

_NUM = r"(0|[1-9][0-9]*)"
_PRE_ID = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_BUILD_ID = r"[0-9A-Za-z-]+"
SEMVER_RE = re.compile(
    rf"{_NUM}\.{_NUM}\.{_NUM}(?:-({_PRE_ID}(?:\.{_PRE_ID})*))?(?:\+({_BUILD_ID}(?:\.{_BUILD_ID})*))?"
)


def parse_semver(s: str) -> tuple[int, int, int, str | None]:
    """A version as the `semver` crate's Version::parse reads it (strict: no `v`
    prefix, no missing component, no leading zeros, no whitespace)."""
    m = SEMVER_RE.fullmatch(s)
    if not m:
        raise ValueError(f"{s!r} is not a semantic version")
    nums = tuple(int(m.group(i)) for i in (1, 2, 3))
    if any(n >= 1 << 64 for n in nums):
        raise ValueError(f"{s!r}: a component exceeds u64")
    return nums[0], nums[1], nums[2], m.group(4)


def version_matches(s: str) -> bool:
    """semver `=0.4.0`: major.minor.patch equal and no pre-release (build metadata is
    ignored, so `0.4.0+build` matches)."""
    major, minor, patch, pre = parse_semver(s)
    return (major, minor, patch) == (0, 4, 0) and pre is None


def _json_type(v: Any) -> str:
    return kbs_snp._type_name(v)


def _require(obj: dict[str, Any], name: str, where: str) -> Any:
    if name not in obj:
        raise ValueError(f"{where}: missing field `{name}`")
    return obj[name]


def _string(obj: dict[str, Any], name: str, where: str) -> str:
    v = _require(obj, name, where)
    if not isinstance(v, str):
        raise ValueError(f"{where}.{name}: invalid type {_json_type(v)}, expected a string")
    return v


def _map(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"{where}: invalid type {_json_type(v)}, expected a map")
    return v


@dataclass
class AuthRequest:
    version: str
    tee: str
    extra_params: Any


def parse_request(v: Any) -> AuthRequest:
    v = _map(v, "Request")
    version = _string(v, "version", "Request")
    tee = _string(v, "tee", "Request")
    if tee not in TEE_NAMES:
        raise ValueError(f"Request.tee: unknown variant {tee!r}")
    extra = _require(v, "extra-params", "Request")
    return AuthRequest(version=version, tee=tee, extra_params=extra)


# kbs-types TeePubKey, internally tagged by `kty`: member names per variant, in the order
# kbs-types serializes them after `kty`.
TEE_PUBKEY_MEMBERS = {"RSA": ("alg", "n", "e"), "EC": ("crv", "alg", "x", "y"), "AKP": ("alg", "pub")}


def parse_tee_pubkey(v: Any, where: str = "tee-pubkey") -> dict[str, str]:
    """The tee-pubkey as kbs-types deserializes it, re-serialized with the members it
    knows only (`kty` first): the JWK that trustee hashes and puts in its token.
    Other members (`use`, `kid`, ...) are dropped, as serde drops them."""
    v = _map(v, where)
    kty = _require(v, "kty", where)
    if not isinstance(kty, str) or kty not in TEE_PUBKEY_MEMBERS:
        raise ValueError(f"{where}.kty: unknown variant {kty!r}, expected RSA, EC or AKP")
    out = {"kty": kty}
    for name in TEE_PUBKEY_MEMBERS[kty]:
        out[name] = _string(v, name, where)
    return out


@dataclass
class Attestation:
    init_data: Any
    nonce: str
    tee_pubkey: dict[str, str]
    primary_evidence: Any
    additional_evidence: str


def parse_attestation(v: Any) -> Attestation:
    v = _map(v, "Attestation")
    init_data = v.get("init-data")
    if init_data is not None:
        init = _map(init_data, "init-data")
        _string(init, "format", "init-data")
        _string(init, "body", "init-data")
    rd = _map(_require(v, "runtime-data", "Attestation"), "runtime-data")
    nonce = _string(rd, "nonce", "runtime-data")
    tee_pubkey = parse_tee_pubkey(_require(rd, "tee-pubkey", "runtime-data"), "runtime-data.tee-pubkey")
    te = _map(_require(v, "tee-evidence", "Attestation"), "tee-evidence")
    primary = _require(te, "primary_evidence", "tee-evidence")
    additional = _string(te, "additional_evidence", "tee-evidence")
    return Attestation(
        init_data=init_data,
        nonce=nonce,
        tee_pubkey=tee_pubkey,
        primary_evidence=primary,
        additional_evidence=additional,
    )


def runtime_data(nonce: str, tee_pubkey: dict[str, str], additional_evidence: str = "") -> dict[str, Any]:
    return {"tee-pubkey": tee_pubkey, "nonce": nonce, "additional-evidence": additional_evidence}


def runtime_data_bytes(nonce: str, tee_pubkey: dict[str, str], additional_evidence: str = "") -> bytes:
    """The RFC 8785 bytes whose SHA-384 is REPORT_DATA."""
    return rfc8785.dumps(runtime_data(nonce, tee_pubkey, additional_evidence))


def runtime_data_digest(nonce: str, tee_pubkey: dict[str, str], additional_evidence: str = "") -> bytes:
    return hashlib.sha384(runtime_data_bytes(nonce, tee_pubkey, additional_evidence)).digest()


# ---------------------------------------------------------------------------------------
# Sessions.
# ---------------------------------------------------------------------------------------


@dataclass
class Session:
    id: str
    nonce: str
    tee: str
    expires: float  # Unix time
    token: str | None = None


class SessionStore:
    def __init__(self, lifetime_s: float, clock: Callable[[], float] = time.time):
        self.lifetime_s = lifetime_s
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}

    def new(self, tee: str) -> Session:
        now = self.clock()
        s = Session(
            id=uuid.uuid4().hex,
            nonce=base64.b64encode(secrets.token_bytes(NONCE_BYTES)).decode("ascii"),
            tee=tee,
            expires=now + self.lifetime_s,
        )
        with self._lock:
            for sid in [k for k, v in self._sessions.items() if v.expires < now]:
                del self._sessions[sid]
            if len(self._sessions) >= MAX_SESSIONS:
                raise KbsError(
                    "AttestationError",
                    f"Attestation error: RCAR handshake Auth failed: {MAX_SESSIONS} sessions are open",
                    "sessions-full",
                )
            self._sessions[s.id] = s
        return s

    def get(self, sid: str) -> Session | None:
        """The live session `sid` (an expired one is removed and not found, as trustee's
        SessionMap::get does)."""
        with self._lock:
            s = self._sessions.get(sid)
            if s is None:
                return None
            if s.expires < self.clock():
                del self._sessions[sid]
                return None
            return s

    def attest(self, s: Session, token: str) -> None:
        with self._lock:
            if s.token is None:
                s.token = token


def http_date(t: float) -> str:
    """IMF-fixdate, as the `cookie` crate formats Expires."""
    from email.utils import formatdate

    return formatdate(t, usegmt=True)


def session_cookie(s: Session) -> str:
    return f"{SESSION_COOKIE}={s.id}; Expires={http_date(s.expires)}"


def parse_cookies(headers: list[str]) -> dict[str, str]:
    """Cookie headers -> name: value (the first of a name wins)."""
    out: dict[str, str] = {}
    for h in headers:
        for part in h.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name and name not in out:
                out[name] = value
    return out


# ---------------------------------------------------------------------------------------
# Tokens.
# ---------------------------------------------------------------------------------------


def verify_jwt(token: str, key: jwk.JWK, algs: list[str], check_claims: dict[str, Any]) -> str:
    """The claims (JSON text) of a JWS-signed JWT `key` verifies, with one of `algs`,
    whose `check_claims` hold (exp checked without leeway)."""
    t = jwt.JWT(algs=algs, check_claims=check_claims, expected_type="JWS")
    t.leeway = 0
    t.deserialize(token, key)
    return t.claims


class TokenSigner:
    """Signs and checks the attestation tokens of this instance (ES256 JWTs)."""

    def __init__(self, key: jwk.JWK | None, lifetime_s: float, clock: Callable[[], float] = time.time):
        self.key = key or jwk.JWK.generate(kty="EC", crv="P-256")
        self.kid = self.key.thumbprint()
        self.lifetime_s = lifetime_s
        self.clock = clock

    def issue(self, claims: dict[str, Any]) -> str:
        now = int(self.clock())
        body = dict(claims)
        body.update({"iat": now, "exp": now + int(self.lifetime_s), "iss": TOKEN_ISSUER})
        t = jwt.JWT(header={"alg": "ES256", "typ": "JWT", "kid": self.kid}, claims=body)
        t.make_signed_token(self.key)
        return t.serialize()

    def verify(self, token: str) -> dict[str, Any]:
        """The claims, if this instance signed the token and it has not expired."""
        try:
            claims = json.loads(verify_jwt(token, self.key, ["ES256"], {"exp": None, "iss": TOKEN_ISSUER}))
        except (JWException, ValueError, TypeError) as e:
            raise KbsError(
                "TokenVerifierError", f"Token Verifier error: {type(e).__name__}: {e}", "token-invalid"
            ) from None
        if not isinstance(claims, dict):
            raise KbsError("TokenVerifierError", "Token Verifier error: claims are not a map", "token-invalid")
        return claims


def token_claims(verified: kbs_snp.Verified, runtime: dict[str, Any]) -> dict[str, Any]:
    """EAR-shaped claims: where trustee's token puts the evidence claims, the runtime
    data (without additional-evidence, as trustee's non-verbose token) and tee-pubkey."""
    rd = {"nonce": runtime["nonce"], "tee-pubkey": runtime["tee-pubkey"]}
    snp = kbs_snp.claims(verified)
    return {
        "eat_profile": TOKEN_PROFILE,
        "ear.verifier-id": {"developer": "nitride tests/kbs", "build": "kbs.py"},
        "submods": {
            "cpu0": {
                "ear.appraisal-policy-id": "default",
                "ear.veraison.annotated-evidence": {
                    "snp": snp,
                    "report_data": snp["report_data"],
                    "runtime_data_claims": rd,
                },
            }
        },
    }


def _claim_path(claims: dict[str, Any], path: tuple[str, ...]) -> Any:
    v: Any = claims
    for p in path:
        if not isinstance(v, dict) or p not in v:
            return None
        v = v[p]
    return v


# ---------------------------------------------------------------------------------------
# The resource policy.
# ---------------------------------------------------------------------------------------

TCB_COMPONENTS = ("bootloader", "tee", "snp", "microcode", "fmc")


def _hex_bytes(s: str, n: int, what: str) -> bytes:
    s = s.strip().lower()
    if not re.fullmatch(r"[0-9a-f]*", s) or len(s) != 2 * n:
        raise ValueError(f"{what} must be {n} bytes in hex ({2 * n} digits), got {s!r}")
    return bytes.fromhex(s)


def parse_tcb_spec(spec: str) -> dict[str, int]:
    """`bootloader=9,tee=0,snp=23,microcode=72[,fmc=N]` -> dict."""
    out: dict[str, int] = {}
    for part in spec.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name not in TCB_COMPONENTS or not value.isdigit() or int(value) > 255:
            raise ValueError(
                f"TCB component {part!r}: expected NAME=0..255 with NAME one of {', '.join(TCB_COMPONENTS)}"
            )
        out[name] = int(value)
    return out


@dataclass
class Policy:
    """What a report must show for this instance to release a resource (checked at
    /resource on the token's claims, as trustee's resource policy is).

    trustee's default policy releases to any genuine report; its typical EAR policy
    checks the measurement against reference values, REPORTED_TCB components against
    allowed values, DEBUG and MIGRATE_MA off, and platform/policy flags. This one:
    """

    measurements: list[bytes] = field(default_factory=list)
    any_measurement: bool = False
    allow_debug: bool = False
    allow_migrate_ma: bool = False
    min_tcb: dict[str, int] = field(default_factory=dict)
    min_guest_svn: int | None = None
    host_data: list[bytes] | None = None
    roots: list[str] | None = None
    min_abi: tuple[int, int] | None = None
    smt_allowed: bool | None = None
    single_socket: bool | None = None

    KEYS = (
        "measurements", "any_measurement", "allow_debug", "allow_migrate_ma", "min_tcb",
        "min_guest_svn", "host_data", "roots", "min_abi", "smt_allowed", "single_socket",
    )

    @classmethod
    def from_json(cls, v: Any) -> "Policy":
        if not isinstance(v, dict):
            raise ValueError("the policy file must hold a JSON object")
        unknown = [k for k in v if k not in cls.KEYS]
        if unknown:
            raise ValueError(f"unknown policy member(s) {unknown}; known: {', '.join(cls.KEYS)}")
        p = cls()
        p.merge_json(v)
        return p

    def merge_json(self, v: dict[str, Any]) -> None:
        for k in ("any_measurement", "allow_debug", "allow_migrate_ma"):
            if k in v:
                if not isinstance(v[k], bool):
                    raise ValueError(f"policy {k} must be true or false")
                setattr(self, k, v[k])
        for k in ("smt_allowed", "single_socket"):
            if k in v and v[k] is not None:
                if not isinstance(v[k], bool):
                    raise ValueError(f"policy {k} must be true, false or null")
                setattr(self, k, v[k])
        if "measurements" in v:
            self.measurements += [_hex_bytes(m, 48, "a measurement") for m in v["measurements"]]
        if "host_data" in v and v["host_data"] is not None:
            self.host_data = (self.host_data or []) + [_hex_bytes(h, 32, "host_data") for h in v["host_data"]]
        if "roots" in v and v["roots"] is not None:
            self.roots = (self.roots or []) + [str(r) for r in v["roots"]]
        if "min_tcb" in v:
            tcb = v["min_tcb"]
            if not isinstance(tcb, dict) or any(
                k not in TCB_COMPONENTS or type(x) is not int or not 0 <= x <= 255 for k, x in tcb.items()
            ):
                raise ValueError(f"policy min_tcb must map {', '.join(TCB_COMPONENTS)} to 0..255")
            self.min_tcb.update(tcb)
        if "min_guest_svn" in v and v["min_guest_svn"] is not None:
            if type(v["min_guest_svn"]) is not int or v["min_guest_svn"] < 0:
                raise ValueError("policy min_guest_svn must be a non-negative integer")
            self.min_guest_svn = v["min_guest_svn"]
        if "min_abi" in v and v["min_abi"] is not None:
            a = v["min_abi"]
            if not (isinstance(a, list) and len(a) == 2 and all(type(x) is int for x in a)):
                raise ValueError("policy min_abi must be [major, minor]")
            self.min_abi = (a[0], a[1])

    def validate(self) -> None:
        if not self.measurements and not self.any_measurement:
            raise ValueError(
                "no measurement is allowed: give --measurement HEX (repeatable), a policy file "
                "with `measurements`, or --any-measurement for trustee's default (any genuine report)"
            )

    def describe(self) -> str:
        parts = [
            "measurement: any" if self.any_measurement
            else f"measurement in {{{', '.join(m.hex()[:16] + '...' for m in self.measurements)}}}",
            "debug: " + ("allowed" if self.allow_debug else "refused"),
            "migrate_ma: " + ("allowed" if self.allow_migrate_ma else "refused"),
        ]
        if self.min_tcb:
            parts.append("min TCB " + ",".join(f"{k}={v}" for k, v in self.min_tcb.items()))
        if self.min_guest_svn is not None:
            parts.append(f"guest_svn >= {self.min_guest_svn}")
        if self.host_data is not None:
            parts.append(f"host_data in {len(self.host_data)} value(s)")
        if self.roots is not None:
            parts.append(f"root in {self.roots}")
        if self.min_abi is not None:
            parts.append(f"ABI >= {self.min_abi[0]}.{self.min_abi[1]}")
        if self.smt_allowed is not None:
            parts.append(f"policy SMT bit == {int(self.smt_allowed)}")
        if self.single_socket is not None:
            parts.append(f"policy SINGLE_SOCKET bit == {int(self.single_socket)}")
        return "; ".join(parts)

    def evaluate(self, claims: dict[str, Any]) -> None:
        """Refuse (PolicyDeny, code policy-*) unless the token's SNP claims satisfy this
        policy."""
        snp = _claim_path(claims, ("submods", "cpu0", "ear.veraison.annotated-evidence", "snp"))
        if not isinstance(snp, dict):
            deny("policy-claims", "the token carries no SNP claims")

        if self.roots is not None and snp.get("endorsement_root") not in self.roots:
            deny(
                "policy-root",
                f"the report chains to root {snp.get('endorsement_root')!r}, not one of {self.roots}",
            )
        if not self.any_measurement:
            m = str(snp.get("measurement"))
            if m not in {x.hex() for x in self.measurements}:
                deny(
                    "policy-measurement",
                    f"measurement {m} is not in the allow-list ({len(self.measurements)} entries)",
                )
        if snp.get("policy_debug_allowed") and not self.allow_debug:
            deny("policy-debug", "the guest policy allows debugging (DEBUG bit 19 set)")
        if snp.get("policy_migrate_ma") and not self.allow_migrate_ma:
            deny("policy-migrate-ma", "the guest policy allows a migration agent (MIGRATE_MA bit 18 set)")
        for comp in TCB_COMPONENTS:
            if comp not in self.min_tcb:
                continue
            have = snp.get(f"reported_tcb_{comp}")
            if have is None or have < self.min_tcb[comp]:
                deny(
                    "policy-tcb",
                    f"REPORTED_TCB {comp} is {have}, below the minimum {self.min_tcb[comp]}",
                )
        if self.min_guest_svn is not None and snp.get("guest_svn", -1) < self.min_guest_svn:
            deny("policy-guest-svn", f"guest SVN {snp.get('guest_svn')} is below {self.min_guest_svn}")
        if self.host_data is not None and snp.get("init_data") not in {h.hex() for h in self.host_data}:
            deny("policy-host-data", f"HOST_DATA {snp.get('init_data')} is not allowed")
        if self.min_abi is not None:
            have_abi = (snp.get("policy_abi_major", -1), snp.get("policy_abi_minor", -1))
            if have_abi < self.min_abi:
                deny("policy-abi", f"guest policy ABI {have_abi[0]}.{have_abi[1]} is below {self.min_abi[0]}.{self.min_abi[1]}")
        if self.smt_allowed is not None and snp.get("policy_smt_allowed") != self.smt_allowed:
            deny("policy-smt", f"guest policy SMT bit is {int(bool(snp.get('policy_smt_allowed')))}, expected {int(self.smt_allowed)}")
        if self.single_socket is not None and snp.get("policy_single_socket") != self.single_socket:
            deny(
                "policy-single-socket",
                f"guest policy SINGLE_SOCKET bit is {int(bool(snp.get('policy_single_socket')))}, expected {int(self.single_socket)}",
            )


def deny(code: str, why: str) -> None:
    raise KbsError("PolicyDeny", f"Access denied by policy: {why}", code)


# ---------------------------------------------------------------------------------------
# The JWE.
# ---------------------------------------------------------------------------------------


def _jwe_error(why: str) -> KbsError:
    return KbsError("JweError", f"JWE failed: {why}", "jwe")


def protected_header(alg: str, epk: dict[str, str] | None = None) -> str:
    """kbs-types ProtectedHeader as serde_json writes it: alg, enc, then the other
    fields (here `epk`, whose members serde_json's map writes in sorted order)."""
    h: dict[str, Any] = {"alg": alg, "enc": A256GCM}
    if epk is not None:
        h["epk"] = {"crv": epk["crv"], "kty": "EC", "x": epk["x"], "y": epk["y"]}
    return compact_json(h).decode("ascii")


def make_jwe(tee_pubkey: dict[str, str], payload: bytes) -> bytes:
    """The flattened JWE trustee answers: `{"protected","encrypted_key","iv","ciphertext",
    "tag"}` (base64url, no padding), ECDH-ES+A256KW on P-256/P-521 (Z = the shared
    x-coordinate, Concat KDF SHA-256 with AlgorithmID "ECDH-ES+A256KW", empty PartyU/V,
    SuppPubInfo 256; CEK wrapped by RFC 3394) or RSA-OAEP-256; A256GCM with AAD = the
    ASCII of `protected`. Key agreement, wrapping and encryption are jwcrypto's."""
    kty = tee_pubkey.get("kty")
    alg = tee_pubkey.get("alg", "")
    headers = {"alg": alg, "enc": A256GCM}
    try:
        if kty == "EC":
            crv = tee_pubkey["crv"]
            if alg != ECDH_ES_A256KW or crv not in EC_CURVES:
                raise _jwe_error(f"curve {crv} and algorithm {alg} is not supported")
            curve, size = EC_CURVES[crv]
            x = b64url_decode(tee_pubkey["x"], "x")
            y = b64url_decode(tee_pubkey["y"], "y")
            if len(x) != size:
                raise _jwe_error(f"invalid bytes length of coordinates X ({len(x)}, expected {size})")
            if len(y) != size:
                raise _jwe_error(f"invalid bytes length of coordinates Y ({len(y)}, expected {size})")
            try:
                pub = ec.EllipticCurvePublicNumbers(
                    int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
                ).public_key()
            except ValueError:
                raise _jwe_error("invalid TEE public key (not a point of the curve)") from None
            wrapped = JWA.keymgmt_alg(ECDH_ES_A256KW).wrap(jwk.JWK.from_pyca(pub), 256, None, headers)
            protected = protected_header(alg, wrapped["header"]["epk"])
        elif kty == "RSA":
            if alg != RSA_OAEP_256:
                raise _jwe_error(f"algorithm {alg} is not supported")
            n = int.from_bytes(b64url_decode(tee_pubkey["n"], "n"), "big")
            e = int.from_bytes(b64url_decode(tee_pubkey["e"], "e"), "big")
            if n.bit_length() > 4096:
                raise _jwe_error(f"the RSA modulus has {n.bit_length()} bits, more than 4096")
            try:
                pub = rsa.RSAPublicNumbers(e, n).public_key()
            except ValueError as err:
                raise _jwe_error(f"Building RSA key from modulus and exponent failed: {err}") from None
            wrapped = JWA.keymgmt_alg(RSA_OAEP_256).wrap(jwk.JWK.from_pyca(pub), 256, None, headers)
            protected = protected_header(alg)
        else:
            raise _jwe_error(f"algorithm {alg} is not supported")
    except ValueError as err:
        raise _jwe_error(str(err)) from None
    iv, ciphertext, tag = JWA.encryption_alg(A256GCM).encrypt(
        wrapped["cek"], b64url(protected.encode("ascii")).encode("ascii"), payload
    )
    return compact_json(
        {
            "protected": b64url(protected.encode("ascii")),
            "encrypted_key": b64url(wrapped["ek"]),
            "iv": b64url(iv),
            "ciphertext": b64url(ciphertext),
            "tag": b64url(tag),
        }
    )


# ---------------------------------------------------------------------------------------
# Resources and the admin credential.
# ---------------------------------------------------------------------------------------


def check_resource_path(path: str) -> tuple[str, str, str]:
    m = RESOURCE_RE.fullmatch(path)
    if not m:
        raise KbsError(
            "PluginInternalError",
            f"Plugin internal error: illegal ResourceDesc format {path!r} (expected "
            "<repository>/<type>/<tag>, each [A-Za-z0-9_-][A-Za-z0-9_.-]*)",
            "resource-path",
        )
    return m.group(1), m.group(2), m.group(3)


class ResourceStore:
    """Opaque bytes by `repo/type/tag` (the vault checks the owner's envelope, not the
    KBS)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, bytes] = {}

    def put(self, path: str, data: bytes) -> None:
        check_resource_path(path)
        with self._lock:
            self._items[path] = bytes(data)

    def delete(self, path: str) -> None:
        check_resource_path(path)
        with self._lock:
            if self._items.pop(path, None) is None:
                raise KbsError("PluginInternalError", f"Plugin internal error: no resource {path}", "resource-missing")

    def get(self, path: str) -> bytes:
        check_resource_path(path)
        with self._lock:
            data = self._items.get(path)
        if data is None:
            raise KbsError("PluginInternalError", f"Plugin internal error: no resource {path}", "resource-missing")
        return data

    def paths(self) -> list[str]:
        with self._lock:
            return sorted(self._items)

    def load_dir(self, directory: str) -> list[str]:
        """Files `directory/<repo>/<type>/<tag>`; other files are reported, not loaded."""
        skipped = []
        for root, dirs, files in os.walk(directory):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                rel = os.path.relpath(full, directory).replace(os.sep, "/")
                if rel.count("/") != 2 or not RESOURCE_RE.fullmatch(rel):
                    skipped.append(rel)
                    continue
                with open(full, "rb") as f:
                    self.put(rel, f.read())
        return skipped


class Admin:
    """Who may upload and delete resources: a static bearer token and/or JWTs (EdDSA or
    ES256, with `exp`) signed by configured public keys, as trustee's bearer-JWT admin.
    With neither configured, every admin request is refused."""

    def __init__(self, token: str | None = None, keys: list[jwk.JWK] | None = None):
        self.token = token
        self.keys = keys or []

    @property
    def configured(self) -> bool:
        return bool(self.token) or bool(self.keys)

    def check(self, authorization: str | None) -> str:
        """Who was admitted (for the log), or KbsError."""

        def refuse(why: str) -> KbsError:
            return KbsError(
                "AdminAuthInitialization",
                f"failed to initialize [admin] configuration: Admin access denied: {why}",
                "admin-auth",
            )

        if not self.configured:
            raise refuse("no admin credential is configured (--admin-token or --admin-key)")
        if authorization is None or not authorization.startswith("Bearer "):
            raise refuse("no `Authorization: Bearer` header")
        presented = authorization[len("Bearer "):].strip()
        if self.token and hmac.compare_digest(presented.encode(), self.token.encode()):
            return "admin token"
        for k in self.keys:
            try:
                claims = json.loads(verify_jwt(presented, k, ["EdDSA", "ES256"], {"exp": None}))
                return f"admin JWT of key {k.thumbprint()[:16]} (sub {claims.get('sub')!r})"
            except (JWException, ValueError, TypeError):
                continue
        raise refuse("the bearer credential is neither the admin token nor a valid admin JWT")


# ---------------------------------------------------------------------------------------
# The protocol.
# ---------------------------------------------------------------------------------------


@dataclass
class Answer:
    body: bytes
    content_type: str | None = "application/json"
    cookie: str | None = None
    # What the log says about a success.
    note: str = ""


class Kbs:
    def __init__(
        self,
        store: kbs_snp.TrustStore,
        policy: Policy,
        resources: ResourceStore,
        admin: Admin,
        session_seconds: float = 300,
        token_seconds: float = 300,
        token_key: jwk.JWK | None = None,
        log: Callable[[str], None] = lambda line: None,
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.policy = policy
        self.resources = resources
        self.admin = admin
        self.sessions = SessionStore(session_seconds, clock)
        self.tokens = TokenSigner(token_key, token_seconds, clock)
        self.log = log

    # /kbs/v0/auth
    def auth(self, body: bytes) -> Answer:
        def fail(why: str, code: str) -> KbsError:
            return KbsError("AttestationError", f"Attestation error: RCAR handshake Auth failed: {why}", code)

        try:
            req = parse_request(load_json(body))
        except ValueError as e:
            raise fail(f"deserialize Request: {e}", "request-format") from None
        try:
            ok = version_matches(req.version)
        except ValueError as e:
            raise fail(f"failed to parse KBS version: {e}", "protocol-version") from None
        if not ok:
            raise fail(
                f"KBS Client Protocol Version Mismatch: expect ={PROTOCOL_VERSION} while the request is {req.version}",
                "protocol-version",
            )
        if req.tee != "snp":
            raise fail(f"this KBS verifies SNP evidence only; tee {req.tee!r} is not supported", "tee-unsupported")
        s = self.sessions.new(req.tee)
        return Answer(
            body=compact_json({"nonce": s.nonce, "extra-params": ""}),
            cookie=session_cookie(s),
            note=f"session={s.id[:8]}",
        )

    # /kbs/v0/attest
    def attest(self, body: bytes, cookies: dict[str, str]) -> Answer:
        def fail(why: str, code: str) -> KbsError:
            return KbsError("AttestationError", f"Attestation error: RCAR handshake Attest failed: {why}", code)

        sid = cookies.get(SESSION_COOKIE)
        if sid is None:
            raise fail(f"cookie not found: send the {SESSION_COOKIE} cookie of /auth", "session")
        try:
            att = parse_attestation(load_json(body))
        except ValueError as e:
            raise fail(f"deserialize Attestation: {e}", "attestation-format") from None
        s = self.sessions.get(sid)
        if s is None:
            raise fail("session not found (unknown or expired; start again with /auth)", "session")
        if s.token is not None:
            # trustee: "Session is already attested. Skip attestation and return the old token".
            return Answer(
                body=compact_json({"token": s.token}),
                cookie=session_cookie(s),
                note=f"session={sid[:8]} already attested: old token returned, nothing checked",
            )
        if att.nonce != s.nonce:
            raise fail(
                "the nonce in the handshake session is different from the client side in KBS "
                f"protocol's Attestation message (runtime-data.nonce {att.nonce!r})",
                "nonce-mismatch",
            )
        if att.init_data is not None:
            raise fail("init-data is not supported by this KBS (send null or leave it out)", "init-data")
        if att.additional_evidence != "":
            raise fail("additional_evidence must be \"\": this KBS verifies the primary SNP evidence only", "additional-evidence")
        rd = runtime_data(s.nonce, att.tee_pubkey, att.additional_evidence)
        digest = hashlib.sha384(rfc8785.dumps(rd)).digest()
        try:
            verified = kbs_snp.verify_evidence(self.store, att.primary_evidence, digest)
        except Refusal as e:
            raise fail(f"verify TEE evidence failed: {e.message}", e.code) from None
        if verified.ignored:
            self.log(f"kbs: note: /attest session={sid[:8]} ignored unknown member(s) {verified.ignored}")
        token = self.tokens.issue(token_claims(verified, rd))
        self.sessions.attest(s, token)
        return Answer(
            body=compact_json({"token": token}),
            cookie=session_cookie(s),
            note=(
                f"session={sid[:8]} measurement={verified.report['measurement'].hex()[:16]}... "
                f"root={verified.endorsement.root} key={att.tee_pubkey['kty']}/{att.tee_pubkey.get('crv', att.tee_pubkey['alg'])}"
            ),
        )

    def _token(self, cookies: dict[str, str], authorization: str | None) -> tuple[str, str]:
        sid = cookies.get(SESSION_COOKIE)
        if sid is not None:
            s = self.sessions.get(sid)
            if s is not None and s.token is not None:
                return s.token, f"session={sid[:8]}"
        if authorization is not None and authorization.startswith("Bearer "):
            return authorization[len("Bearer "):].strip(), "bearer"
        raise KbsError(
            "TokenNotFound",
            "Attestation Token not found: no attested, unexpired session cookie and no "
            "`Authorization: Bearer` token",
            "token-missing",
        )

    # GET (or PUT) /kbs/v0/resource/<repo>/<type>/<tag>
    def get_resource(self, path: str, cookies: dict[str, str], authorization: str | None, method: str = "GET") -> Answer:
        token, who = self._token(cookies, authorization)
        claims = self.tokens.verify(token)
        self.policy.evaluate(claims)
        if method != "GET":
            raise KbsError(
                "PluginInternalError",
                "Plugin internal error: Illegal HTTP method. Only supports `GET`, `POST` and `DELETE`",
                "method",
            )
        data = self.resources.get(path)
        pubkey = _claim_path(claims, EAR_TEE_PUBKEY_PATH)
        try:
            tee_pubkey = parse_tee_pubkey(pubkey)
        except ValueError as e:
            raise KbsError("TokenVerifierError", f"Token Verifier error: tee-pubkey: {e}", "tee-pubkey") from None
        answer = make_jwe(tee_pubkey, data)
        return Answer(body=answer, note=f"{who} released {path} ({len(data)} bytes) as JWE {tee_pubkey['alg']}")

    # POST /kbs/v0/resource/<repo>/<type>/<tag>
    def put_resource(self, path: str, body: bytes, authorization: str | None) -> Answer:
        who = self.admin.check(authorization)
        self.resources.put(path, body)
        return Answer(body=b"", content_type="text/xml", note=f"{who} stored {path} ({len(body)} bytes)")

    # DELETE /kbs/v0/resource/<repo>/<type>/<tag>
    def delete_resource(self, path: str, authorization: str | None) -> Answer:
        who = self.admin.check(authorization)
        self.resources.delete(path)
        return Answer(body=b"", content_type="text/xml", note=f"{who} deleted {path}")


def plugin_not_found(name: str) -> KbsError:
    return KbsError("PluginNotFound", f"Plugin {name} not found", "not-found", status=404)

