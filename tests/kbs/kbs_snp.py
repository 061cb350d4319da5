"""SEV-SNP evidence as trustee's KBS reads it, for the test KBS (tests/kbs/kbs.py).

What this module is for: turning the `primary_evidence` JSON of an RCAR /attest request
into a verdict, with the bytes and the order of checks of trustee's SNP verifier:

- the evidence is `{"attestation_report": <report>, "cert_chain": [<entry>...] | null}`,
  the report in the `sev` crate's serde layout (every byte array a JSON array of numbers,
  TCB values as objects, policy / platform info / key info as plain integers, optional
  fields `null` or absent) and each certificate entry `{"cert_type": "VCEK", "data": [..]}`;
- the 0x4A0-byte report is rebuilt from those fields exactly as `sev`'s encoder does
  (reserved bytes written as zeros, the TCB layout chosen by the processor generation),
  and the signature is checked over bytes 0x000..0x2A0 of that rebuild, so a genuine
  report whose reserved bytes were not zero does not verify (as in trustee);
- report version 3 to 5 only; the processor generation from CPUID family/model (Milan,
  Genoa, Turin); the chain ARK (self-signed) -> ASK/ASVK -> VCEK/VLEK with RSASSA-PSS
  SHA-384 salt 48, rooted in a configured anchor of that generation (AMD's ARKs, plus an
  explicitly added development root); the report signature (ECDSA P-384 over SHA-384,
  r and s little-endian); the VCEK's TCB extensions against REPORTED_TCB and its hwID
  against CHIP_ID; VMPL 0 only; REPORT_DATA against the expected runtime-data digest.

The byte layouts follow REFERENCE.md sections 5 and 9 and the `sev` crate's documented
serde/encoder behaviour; the cryptography is Python `cryptography`, independent of the
Rust side. Every refusal is a `Refusal` with a stable `code` (logged by the KBS and asserted
on by the tests) and a sentence naming the object and the limit.
"""

from __future__ import annotations

import hashlib
import os
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

REPORT_LEN = 0x4A0
SIGNED_LEN = 0x2A0
SIGNATURE_OFFSET = 0x2A0
SIG_COMPONENT_LEN = 72

# Report versions trustee's SNP verifier accepts (REPORT_VERSION_MIN/MAX there).
REPORT_VERSION_MIN = 3
REPORT_VERSION_MAX = 5

OID_PREFIX = "1.3.6.1.4.1.3704.1."
OID_BL_SPL = OID_PREFIX + "3.1"
OID_TEE_SPL = OID_PREFIX + "3.2"
OID_SNP_SPL = OID_PREFIX + "3.3"
OID_UCODE_SPL = OID_PREFIX + "3.8"
OID_FMC_SPL = OID_PREFIX + "3.9"
OID_HWID = OID_PREFIX + "4"

RSASSA_PSS_OID = "1.2.840.113549.1.1.10"

GENERATIONS = ("milan", "genoa", "turin")

# Certificate types of `sev`'s CertType that carry a certificate the verifier uses; the
# others (Empty, CRL, OTHER(uuid)) are skipped, as trustee's loop does.
CERT_TYPES_USED = ("ARK", "ASK", "VCEK", "VLEK")
CERT_TYPES_SKIPPED = ("Empty", "CRL")


class Refusal(Exception):
    """A check refused the evidence or the request.

    `code` is stable (a short kebab-case word the KBS logs and the tests assert on);
    `message` is the sentence a person reads.
    """

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


# ---------------------------------------------------------------------------------------
# The report in the sev crate's serde layout.
# ---------------------------------------------------------------------------------------

# (field, kind) in declaration order: the order serde writes them, and the order of the
# JSON object `sev` produces. Kinds: u32/u64 plain integers, bN a JSON array of exactly N
# numbers 0..255, tcb/version/signature nested objects, opt_u8/opt_u64 `null`, absent or
# a number.
REPORT_FIELDS: tuple[tuple[str, str], ...] = (
    ("version", "u32"),
    ("guest_svn", "u32"),
    ("policy", "u64"),
    ("family_id", "b16"),
    ("image_id", "b16"),
    ("vmpl", "u32"),
    ("sig_algo", "u32"),
    ("current_tcb", "tcb"),
    ("plat_info", "u64"),
    ("key_info", "u32"),
    ("report_data", "b64"),
    ("measurement", "b48"),
    ("host_data", "b32"),
    ("id_key_digest", "b48"),
    ("author_key_digest", "b48"),
    ("report_id", "b32"),
    ("report_id_ma", "b32"),
    ("reported_tcb", "tcb"),
    ("cpuid_fam_id", "opt_u8"),
    ("cpuid_mod_id", "opt_u8"),
    ("cpuid_step", "opt_u8"),
    ("chip_id", "b64"),
    ("committed_tcb", "tcb"),
    ("current", "version"),
    ("committed", "version"),
    ("launch_tcb", "tcb"),
    ("launch_mit_vector", "opt_u64"),
    ("current_mit_vector", "opt_u64"),
    ("signature", "signature"),
)
TCB_FIELDS: tuple[tuple[str, str], ...] = (
    ("fmc", "opt_u8"),
    ("bootloader", "u8"),
    ("tee", "u8"),
    ("snp", "u8"),
    ("microcode", "u8"),
)
VERSION_FIELDS: tuple[tuple[str, str], ...] = (
    ("major", "u8"),
    ("minor", "u8"),
    ("build", "u8"),
)
SIGNATURE_FIELDS: tuple[tuple[str, str], ...] = (("r", "b72"), ("s", "b72"))

_UINT_BITS = {"u8": 8, "u32": 32, "u64": 64}


def _type_name(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "floating point"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "sequence"
    if isinstance(v, dict):
        return "map"
    return type(v).__name__


def _uint(v: Any, bits: int, where: str) -> int:
    # serde_json: only JSON integers (no floats, no booleans) within the type's range.
    if type(v) is not int:
        raise Refusal(
            "evidence-format", f"{where}: invalid type {_type_name(v)}, expected u{bits}"
        )
    if v < 0 or v >= 1 << bits:
        raise Refusal("evidence-format", f"{where}: invalid value {v}, expected u{bits}")
    return v


def _byte_array(v: Any, n: int, where: str) -> bytes:
    if not isinstance(v, list):
        raise Refusal(
            "evidence-format",
            f"{where}: invalid type {_type_name(v)}, expected an array of length {n}",
        )
    if len(v) != n:
        raise Refusal(
            "evidence-format", f"{where}: invalid length {len(v)}, expected an array of length {n}"
        )
    return bytes(_uint(b, 8, f"{where}[{i}]") for i, b in enumerate(v))


def _parse_struct(
    obj: Any, spec: tuple[tuple[str, str], ...], where: str, ignored: list[str]
) -> dict[str, Any]:
    """A struct as serde's derived Deserialize reads it: every non-Option field required,
    Option fields `null` or absent, unknown members ignored (noted in `ignored`)."""
    if not isinstance(obj, dict):
        raise Refusal("evidence-format", f"{where}: invalid type {_type_name(obj)}, expected a map")
    out: dict[str, Any] = {}
    for name, kind in spec:
        sub = f"{where}.{name}"
        if name not in obj or (obj[name] is None and kind.startswith("opt_")):
            if kind.startswith("opt_"):
                out[name] = None
                continue
            raise Refusal("evidence-format", f"{where}: missing field `{name}`")
        out[name] = _parse_value(obj[name], kind, sub, ignored)
    known = {name for name, _ in spec}
    ignored.extend(f"{where}.{k}" for k in obj if k not in known)
    return out


def _parse_value(v: Any, kind: str, where: str, ignored: list[str]) -> Any:
    if kind in _UINT_BITS:
        return _uint(v, _UINT_BITS[kind], where)
    if kind.startswith("opt_"):
        return _parse_value(v, kind[4:], where, ignored)
    if kind.startswith("b"):
        return _byte_array(v, int(kind[1:]), where)
    if kind == "tcb":
        return _parse_struct(v, TCB_FIELDS, where, ignored)
    if kind == "version":
        return _parse_struct(v, VERSION_FIELDS, where, ignored)
    if kind == "signature":
        return _parse_struct(v, SIGNATURE_FIELDS, where, ignored)
    raise AssertionError(kind)


def parse_report(obj: Any, ignored: list[str] | None = None) -> dict[str, Any]:
    """The report from its serde JSON form (a dict with bytes for the byte arrays)."""
    return _parse_struct(obj, REPORT_FIELDS, "attestation_report", [] if ignored is None else ignored)


def _serde_value(v: Any, kind: str) -> Any:
    if v is None:
        return None
    if kind.startswith("opt_"):
        return _serde_value(v, kind[4:])
    if kind in _UINT_BITS:
        return v
    if kind.startswith("b"):
        return list(v)
    spec = {"tcb": TCB_FIELDS, "version": VERSION_FIELDS, "signature": SIGNATURE_FIELDS}[kind]
    return {name: _serde_value(v[name], k) for name, k in spec}


def report_to_serde(report: dict[str, Any]) -> dict[str, Any]:
    """The report as `sev` serializes it with serde (field order kept; `None` -> null)."""
    return {name: _serde_value(report[name], kind) for name, kind in REPORT_FIELDS}


# ---------------------------------------------------------------------------------------
# Processor generation and the byte encoding.
# ---------------------------------------------------------------------------------------


def trustee_generation(fam: int | None, model: int | None) -> str:
    """The generation trustee's verifier derives from CPUID (its own table: Genoa's
    0xA0.. range there is half-open, so model 0xAF is refused)."""
    if fam is None:
        raise Refusal("processor", "Attestation report version 3+ is missing CPU family ID")
    if model is None:
        raise Refusal("processor", "Attestation report version 3+ is missing CPU model ID")
    if fam == 0x19:
        if model <= 0x0F:
            return "milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model < 0xAF:
            return "genoa"
        raise Refusal("processor", f"Processor model 0x{model:02x} of family 0x19 not supported")
    if fam == 0x1A:
        if model <= 0x11:
            return "turin"
        raise Refusal("processor", f"Processor model 0x{model:02x} of family 0x1a not supported")
    raise Refusal("processor", f"Processor family 0x{fam:02x} not supported")


def sev_generation(fam: int, model: int) -> str:
    """`sev`'s Generation::identify_cpu, which picks the TCB byte layout when encoding
    (Venice shares Turin's layout)."""
    if fam == 0x19:
        if model <= 0x0F:
            return "milan"
        if 0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF:
            return "genoa"
    elif fam == 0x1A:
        if model <= 0x11:
            return "turin"
        if 0x50 <= model <= 0x57 or 0x90 <= model <= 0xAF or 0xC0 <= model <= 0xC7:
            return "venice"
    raise Refusal(
        "report-encoding",
        f"processor family 0x{fam:02x} model 0x{model:02x} is not a known SEV-SNP generation",
    )


def _turin_like_tcb(gen: str) -> bool:
    return gen in ("turin", "venice")


def _chip_id_generation(chip_id: bytes) -> str:
    # Version 2 reports carry no CPUID: `sev` calls a CHIP_ID with only its first 8 bytes
    # set Turin and anything else Genoa (the layouts of Milan and Genoa are the same).
    if chip_id == bytes(64):
        raise Refusal(
            "report-encoding", "a version 2 report with a masked (all-zero) CHIP_ID cannot be encoded"
        )
    return "turin" if chip_id[8:] == bytes(56) else "genoa"


def _tcb_bytes(tcb: dict[str, Any], gen: str) -> bytes:
    if _turin_like_tcb(gen):
        fmc = tcb["fmc"] if tcb["fmc"] is not None else 0
        return bytes([fmc, tcb["bootloader"], tcb["tee"], tcb["snp"], 0, 0, 0, tcb["microcode"]])
    return bytes([tcb["bootloader"], tcb["tee"], 0, 0, 0, 0, tcb["snp"], tcb["microcode"]])


def _tcb_from_bytes(b: bytes, gen: str) -> dict[str, Any]:
    if _turin_like_tcb(gen):
        return {"fmc": b[0], "bootloader": b[1], "tee": b[2], "snp": b[3], "microcode": b[7]}
    return {"fmc": None, "bootloader": b[0], "tee": b[1], "snp": b[6], "microcode": b[7]}


def _variant(version: int) -> str:
    if version in (0, 1):
        raise Refusal("report-encoding", f"report version {version} is not supported by sev")
    if version == 2:
        return "v2"
    if version in (3, 4):
        return "v3"
    return "v5"


def encode_report(r: dict[str, Any]) -> bytes:
    """The 0x4A0 bytes `sev`'s encoder writes for this report (reserved bytes zero)."""
    variant = _variant(r["version"])
    if variant == "v2":
        gen = _chip_id_generation(r["chip_id"])
    else:
        gen = sev_generation(r["cpuid_fam_id"] or 0, r["cpuid_mod_id"] or 0)
    out = bytearray()
    out += struct.pack("<IIQ", r["version"], r["guest_svn"], r["policy"])
    out += r["family_id"] + r["image_id"]
    out += struct.pack("<II", r["vmpl"], r["sig_algo"])
    out += _tcb_bytes(r["current_tcb"], gen)
    out += struct.pack("<QI", r["plat_info"], r["key_info"])
    out += bytes(4)
    out += r["report_data"] + r["measurement"] + r["host_data"]
    out += r["id_key_digest"] + r["author_key_digest"] + r["report_id"] + r["report_id_ma"]
    out += _tcb_bytes(r["reported_tcb"], gen)
    if variant == "v2":
        out += bytes(24)
    else:
        out += bytes(
            [r["cpuid_fam_id"] or 0, r["cpuid_mod_id"] or 0, r["cpuid_step"] or 0]
        ) + bytes(21)
    out += r["chip_id"]
    out += _tcb_bytes(r["committed_tcb"], gen)
    for name in ("current", "committed"):
        v = r[name]
        out += bytes([v["build"], v["minor"], v["major"], 0])
    out += _tcb_bytes(r["launch_tcb"], gen)
    if variant == "v5":
        out += struct.pack("<QQ", r["launch_mit_vector"] or 0, r["current_mit_vector"] or 0)
        out += bytes(152)
    else:
        out += bytes(168)
    assert len(out) == SIGNATURE_OFFSET
    out += r["signature"]["r"] + r["signature"]["s"] + bytes(368)
    assert len(out) == REPORT_LEN
    return bytes(out)


def decode_report(raw: bytes) -> dict[str, Any]:
    """The report `sev`'s decoder reads from 0x4A0 bytes (what a client serializes)."""
    if len(raw) != REPORT_LEN:
        raise Refusal("report-encoding", f"a report is {REPORT_LEN} bytes, not {len(raw)}")
    version = struct.unpack_from("<I", raw, 0)[0]
    variant = _variant(version)
    if variant == "v2":
        gen = _chip_id_generation(raw[0x1A0:0x1E0])
    else:
        gen = sev_generation(raw[0x188], raw[0x189])
    u32 = lambda off: struct.unpack_from("<I", raw, off)[0]  # noqa: E731
    u64 = lambda off: struct.unpack_from("<Q", raw, off)[0]  # noqa: E731
    tcb = lambda off: _tcb_from_bytes(raw[off : off + 8], gen)  # noqa: E731
    ver = lambda off: {"major": raw[off + 2], "minor": raw[off + 1], "build": raw[off]}  # noqa: E731
    v3 = variant != "v2"
    v5 = variant == "v5"
    return {
        "version": version,
        "guest_svn": u32(0x004),
        "policy": u64(0x008),
        "family_id": raw[0x010:0x020],
        "image_id": raw[0x020:0x030],
        "vmpl": u32(0x030),
        "sig_algo": u32(0x034),
        "current_tcb": tcb(0x038),
        "plat_info": u64(0x040),
        "key_info": u32(0x048),
        "report_data": raw[0x050:0x090],
        "measurement": raw[0x090:0x0C0],
        "host_data": raw[0x0C0:0x0E0],
        "id_key_digest": raw[0x0E0:0x110],
        "author_key_digest": raw[0x110:0x140],
        "report_id": raw[0x140:0x160],
        "report_id_ma": raw[0x160:0x180],
        "reported_tcb": tcb(0x180),
        "cpuid_fam_id": raw[0x188] if v3 else None,
        "cpuid_mod_id": raw[0x189] if v3 else None,
        "cpuid_step": raw[0x18A] if v3 else None,
        "chip_id": raw[0x1A0:0x1E0],
        "committed_tcb": tcb(0x1E0),
        "current": ver(0x1E8),
        "committed": ver(0x1EC),
        "launch_tcb": tcb(0x1F0),
        "launch_mit_vector": u64(0x1F8) if v5 else None,
        "current_mit_vector": u64(0x200) if v5 else None,
        "signature": {
            "r": raw[0x2A0:0x2E8],
            "s": raw[0x2E8:0x330],
        },
    }


# ---------------------------------------------------------------------------------------
# The evidence object.
# ---------------------------------------------------------------------------------------


@dataclass
class Evidence:
    report: dict[str, Any]
    # (cert_type, raw bytes) of the entries the verifier uses, in order; None when the
    # client sent `"cert_chain": null` (or left it out).
    cert_chain: list[tuple[str, bytes]] | None
    # Members that serde ignores (reported in the KBS log, never an error).
    ignored: list[str] = field(default_factory=list)


def parse_cert_chain(v: Any, ignored: list[str]) -> list[tuple[str, bytes]] | None:
    if v is None:
        return None
    if not isinstance(v, list):
        raise Refusal("evidence-format", f"cert_chain: invalid type {_type_name(v)}, expected a sequence")
    out = []
    for i, entry in enumerate(v):
        where = f"cert_chain[{i}]"
        if not isinstance(entry, dict):
            raise Refusal("evidence-format", f"{where}: invalid type {_type_name(entry)}, expected a map")
        for name in ("cert_type", "data"):
            if name not in entry:
                raise Refusal("evidence-format", f"{where}: missing field `{name}`")
        ignored.extend(f"{where}.{k}" for k in entry if k not in ("cert_type", "data"))
        ct = entry["cert_type"]
        data = entry["data"]
        if not isinstance(data, list):
            raise Refusal("evidence-format", f"{where}.data: invalid type {_type_name(data)}, expected a sequence")
        raw = bytes(_uint(b, 8, f"{where}.data[{j}]") for j, b in enumerate(data))
        if isinstance(ct, str) and ct in CERT_TYPES_USED:
            out.append((ct, raw))
        elif isinstance(ct, str) and ct in CERT_TYPES_SKIPPED:
            continue
        elif (
            isinstance(ct, dict)
            and list(ct) == ["OTHER"]
            and isinstance(ct["OTHER"], str)
        ):
            continue
        else:
            raise Refusal(
                "evidence-format",
                f"{where}.cert_type: unknown variant {ct!r}, expected one of "
                "Empty, ARK, ASK, VCEK, VLEK, CRL, OTHER",
            )
    return out


def parse_evidence(v: Any) -> Evidence:
    """`primary_evidence` as trustee's SnpEvidence (sev serde) reads it."""
    ignored: list[str] = []
    if not isinstance(v, dict):
        raise Refusal("evidence-format", f"SNP evidence: invalid type {_type_name(v)}, expected a map")
    if "attestation_report" not in v:
        raise Refusal("evidence-format", "SNP evidence: missing field `attestation_report`")
    report = parse_report(v["attestation_report"], ignored)
    chain = parse_cert_chain(v.get("cert_chain"), ignored)
    ignored.extend(k for k in v if k not in ("attestation_report", "cert_chain"))
    return Evidence(report=report, cert_chain=chain, ignored=ignored)


def evidence_json(raw_report: bytes, certs: list[tuple[str, bytes]] | None) -> dict[str, Any]:
    """The evidence object a client sends: the report decoded and serialized as `sev`
    does, and the certificate entries (DER bytes) as `sev`'s CertTableEntry."""
    return {
        "attestation_report": report_to_serde(decode_report(raw_report)),
        "cert_chain": None
        if certs is None
        else [{"cert_type": t, "data": list(d)} for t, d in certs],
    }


# ---------------------------------------------------------------------------------------
# Certificates and roots.
# ---------------------------------------------------------------------------------------


def load_cert(data: bytes, what: str) -> x509.Certificate:
    """DER, or PEM (the `sev` crate accepts both in a certificate entry)."""
    with warnings.catch_warnings():
        # AMD's VCEKs and VLEKs carry serial number 0, which cryptography warns about.
        warnings.simplefilter("ignore")
        try:
            if data.lstrip().startswith(b"-----BEGIN"):
                return x509.load_pem_x509_certificate(data)
            return x509.load_der_x509_certificate(data)
        except ValueError as e:
            raise Refusal("chain", f"{what}: not a parsable X.509 certificate ({e})") from None


def cert_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(names[0].value) if len(names) == 1 else "?"


def verify_cert_signature(issuer: x509.Certificate, cert: x509.Certificate, what: str) -> None:
    """`issuer` signed `cert` with RSASSA-PSS, SHA-384, MGF1-SHA-384, salt 48."""
    key = issuer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise Refusal("chain", f"{what}: the issuer key is not RSA")
    if cert.signature_algorithm_oid.dotted_string != RSASSA_PSS_OID:
        raise Refusal(
            "chain",
            f"{what}: signed with {cert.signature_algorithm_oid.dotted_string}, not RSASSA-PSS",
        )
    try:
        key.verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48),
            hashes.SHA384(),
        )
    except InvalidSignature:
        raise Refusal(
            "chain",
            f"{what}: signature of {_common_name(cert)!r} does not verify under "
            f"{_common_name(issuer)!r} (RSASSA-PSS SHA-384 salt 48)",
        ) from None


@dataclass
class Anchor:
    """A trusted ARK for one generation, with the ASK and ASVK that fill a chain whose
    client left them out (as trustee fills them from its bundled certificates)."""

    label: str
    generation: str
    ark: x509.Certificate
    ask: x509.Certificate | None = None
    asvk: x509.Certificate | None = None


def _load_pem_file(path: str, what: str) -> x509.Certificate:
    with open(path, "rb") as f:
        return load_cert(f.read(), f"{what} {path}")


class TrustStore:
    """The roots a KBS instance accepts. trustee pins AMD's three ARKs and has no way to
    add another; this KBS loads AMD's from a directory and may add a development root."""

    def __init__(self) -> None:
        self.anchors: list[Anchor] = []

    def _add(self, anchor: Anchor) -> Anchor:
        verify_cert_signature(anchor.ark, anchor.ark, f"{anchor.label} ARK (self-signed)")
        for name in ("ask", "asvk"):
            cert = getattr(anchor, name)
            if cert is not None:
                verify_cert_signature(anchor.ark, cert, f"{anchor.label} {name.upper()}")
        self.anchors.append(anchor)
        return anchor

    def add_amd_roots(self, directory: str) -> list[Anchor]:
        """`{milan,genoa,turin}-{ark,ask,asvk}.pem` from `directory` (each generation
        whose ARK is there)."""
        added = []
        for gen in GENERATIONS:
            ark_path = os.path.join(directory, f"{gen}-ark.pem")
            if not os.path.exists(ark_path):
                continue
            opt = {}
            for name in ("ask", "asvk"):
                p = os.path.join(directory, f"{gen}-{name}.pem")
                opt[name] = _load_pem_file(p, name.upper()) if os.path.exists(p) else None
            added.append(
                self._add(
                    Anchor(
                        label=f"amd-{gen}",
                        generation=gen,
                        ark=_load_pem_file(ark_path, "ARK"),
                        **opt,
                    )
                )
            )
        if not added:
            raise ValueError(f"no {{milan,genoa,turin}}-ark.pem in {directory}")
        return added

    def add_dev_root(self, directory: str, generation: str, label: str = "development") -> Anchor:
        """`ark.pem` and `ask.pem` (and `asvk.pem` if present) from `directory`, the
        layout `cargo xtask dev-chain` writes under target/dev-chain."""
        if generation not in GENERATIONS:
            raise ValueError(f"generation {generation!r} is not one of {GENERATIONS}")
        opt = {}
        for name in ("ask", "asvk"):
            p = os.path.join(directory, f"{name}.pem")
            opt[name] = _load_pem_file(p, name.upper()) if os.path.exists(p) else None
        if opt["ask"] is None:
            raise ValueError(f"{directory}/ask.pem is missing")
        return self._add(
            Anchor(
                label=label,
                generation=generation,
                ark=_load_pem_file(os.path.join(directory, "ark.pem"), "ARK"),
                **opt,
            )
        )


@dataclass
class Endorsement:
    vek: x509.Certificate
    vek_type: str  # "VCEK" or "VLEK"
    root: str  # the anchor's label


def _chain_with(anchor: Anchor, entries: list[tuple[str, bytes]]) -> Endorsement:
    ark = ask = vek = None
    vek_type = "VCEK"
    for ct, data in entries:
        if ct == "ARK":
            ark = load_cert(data, "ARK entry")
            verify_cert_signature(anchor.ark, ark, "provided ARK against the trusted ARK")
        elif ct == "ASK":
            ask = load_cert(data, "ASK entry")
        elif vek is None:  # VCEK or VLEK: the first one counts, as in trustee
            vek = load_cert(data, f"{ct} entry")
            vek_type = ct
    if vek is None:
        raise Refusal("chain", "If a cert chain is provided, it must include a VCEK/VLEK")
    ark = ark or anchor.ark
    if ask is None:
        ask = anchor.asvk if vek_type == "VLEK" else anchor.ask
        if ask is None:
            raise Refusal(
                "chain",
                f"no {'ASVK' if vek_type == 'VLEK' else 'ASK'} in the chain and none configured "
                f"for root {anchor.label}",
            )
    verify_cert_signature(ark, ark, "ARK (self-signed)")
    verify_cert_signature(ark, ask, "ARK -> ASK/ASVK")
    verify_cert_signature(ask, vek, f"ASK/ASVK -> {vek_type}")
    key = vek.public_key()
    if not (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp384r1"):
        raise Refusal("chain", f"the {vek_type} key is not ECDSA P-384")
    return Endorsement(vek=vek, vek_type=vek_type, root=anchor.label)


def verify_chain(
    store: TrustStore, generation: str, entries: list[tuple[str, bytes]] | None
) -> Endorsement:
    """The VCEK/VLEK, endorsed through a trusted root of `generation`."""
    if entries is None:
        raise Refusal(
            "cert-chain-missing",
            "cert_chain is null: trustee would fetch the VCEK from AMD's key service, which "
            "this KBS does not reach (and which cannot serve a development chip); send the "
            "chain from the report's certificate table",
        )
    anchors = [a for a in store.anchors if a.generation == generation]
    if not anchors:
        raise Refusal("chain", f"no trusted root is configured for {generation.capitalize()}")
    errors = []
    for anchor in anchors:
        try:
            return _chain_with(anchor, entries)
        except Refusal as e:
            errors.append(f"root {anchor.label}: {e.message}")
    raise Refusal("chain", "Certificate chain provided by user failed to verify: " + "; ".join(errors))


def verify_report_signature(vek: x509.Certificate, raw: bytes) -> None:
    """ECDSA P-384 / SHA-384 over bytes 0x000..0x2A0; r and s are little-endian."""
    r = int.from_bytes(raw[0x2A0:0x2E8], "little")
    s = int.from_bytes(raw[0x2E8:0x330], "little")
    key = vek.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    try:
        key.verify(encode_dss_signature(r, s), raw[:SIGNED_LEN], ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError):
        raise Refusal(
            "report-signature",
            "Report signature verification against VEK signature failed (the report "
            "re-encoded from its fields does not carry a valid ECDSA P-384 signature of "
            "this VCEK/VLEK)",
        ) from None


def _der_u8(value: bytes, what: str) -> int:
    # DER INTEGER, short form, minimal, non-negative, at most 255, nothing after it.
    if len(value) < 3 or value[0] != 0x02 or value[1] != len(value) - 2 or value[1] > 2:
        raise Refusal("tcb-endorsement", f"{what}: not a DER INTEGER of one or two bytes")
    content = value[2:]
    if content[0] & 0x80 or (len(content) == 2 and (content[0] != 0 or content[1] < 0x80)):
        raise Refusal("tcb-endorsement", f"{what}: not a minimal non-negative DER INTEGER")
    n = int.from_bytes(content, "big")
    if n > 255:
        raise Refusal("tcb-endorsement", f"{what}: {n} does not fit in a byte")
    return n


def _ext_value(cert: x509.Certificate, oid: str, what: str) -> bytes:
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(oid))
    except x509.ExtensionNotFound:
        raise Refusal("tcb-endorsement", f"{what} extension ({oid}) not found") from None
    v = ext.value
    if not isinstance(v, x509.UnrecognizedExtension):
        raise Refusal("tcb-endorsement", f"{what} extension ({oid}) has an unexpected form")
    return v.value


def verify_report_tcb(report: dict[str, Any], e: Endorsement, generation: str) -> None:
    """The VCEK/VLEK's SPL extensions equal REPORTED_TCB, and a VCEK's hwID equals
    CHIP_ID (trustee's order: hwID, microcode, SNP, TEE, boot loader, FMC)."""
    tcb = report["reported_tcb"]
    if e.vek_type == "VCEK":
        hwid = _ext_value(e.vek, OID_HWID, "hwID")
        if len(hwid) == 64:
            pass
        elif len(hwid) == 66 and hwid[0] == 0x04 and hwid[1] == 64:
            hwid = hwid[2:]
        elif generation == "turin" and len(hwid) == 8:
            pass
        else:
            raise Refusal("tcb-endorsement", f"hwID extension has an unexpected length ({len(hwid)})")
        if hwid != report["chip_id"][: len(hwid)]:
            raise Refusal(
                "tcb-endorsement",
                f"Chip ID mismatch: the VCEK's hwID is {hwid.hex()[:16]}..., the report's "
                f"CHIP_ID is {report['chip_id'].hex()[:16]}...",
            )
    checks = [
        (OID_UCODE_SPL, "microcode", "Microcode"),
        (OID_SNP_SPL, "snp", "SNP"),
        (OID_TEE_SPL, "tee", "TEE"),
        (OID_BL_SPL, "bootloader", "Boot loader"),
    ]
    if generation == "turin":
        if tcb["fmc"] is None:
            raise Refusal("tcb-endorsement", "a Turin report's REPORTED_TCB has no FMC value")
        checks.append((OID_FMC_SPL, "fmc", "FMC"))
    for oid, name, label in checks:
        cert_value = _der_u8(_ext_value(e.vek, oid, f"{label} SPL"), f"{label} SPL")
        if cert_value != tcb[name]:
            raise Refusal(
                "tcb-endorsement",
                f"{label} version mismatch: the {e.vek_type} certifies {cert_value}, "
                f"REPORTED_TCB says {tcb[name]}",
            )


# ---------------------------------------------------------------------------------------
# The whole verdict.
# ---------------------------------------------------------------------------------------


@dataclass
class Verified:
    report: dict[str, Any]
    raw: bytes
    generation: str
    endorsement: Endorsement
    ignored: list[str]


def regularize(data: bytes, n: int) -> bytes:
    """trustee's regularize_data: zero-pad (or truncate) to n bytes."""
    return data[:n] + bytes(max(0, n - len(data)))


def verify_evidence(store: TrustStore, evidence: Any, expected_report_data: bytes) -> Verified:
    """Every check of trustee's SNP verifier, in its order, plus the few this KBS adds
    (signature algorithm, signing-key field, hwID of every VCEK: see README.md)."""
    ev = parse_evidence(evidence)
    r = ev.report
    if r["version"] < REPORT_VERSION_MIN:
        raise Refusal(
            "report-version",
            f"Attestation Report version {r['version']} is too old (accepted: "
            f"{REPORT_VERSION_MIN} to {REPORT_VERSION_MAX}). Please update your firmware.",
        )
    if r["version"] > REPORT_VERSION_MAX:
        raise Refusal(
            "report-version",
            f"Unexpected attestation report version {r['version']} (accepted: "
            f"{REPORT_VERSION_MIN} to {REPORT_VERSION_MAX})",
        )
    if r["sig_algo"] != 1:
        raise Refusal(
            "signature-algorithm",
            f"signature algorithm {r['sig_algo']} is not 1 (ECDSA P-384 with SHA-384)",
        )
    generation = trustee_generation(r["cpuid_fam_id"], r["cpuid_mod_id"])
    endorsement = verify_chain(store, generation, ev.cert_chain)
    raw = encode_report(r)
    verify_report_signature(endorsement.vek, raw)
    verify_report_tcb(r, endorsement, generation)
    signing_key = (r["key_info"] >> 2) & 7
    want = {"VCEK": 0, "VLEK": 1}[endorsement.vek_type]
    if signing_key != want:
        raise Refusal(
            "signing-key",
            f"the report's SIGNING_KEY field is {signing_key}, but a {endorsement.vek_type} "
            f"({want}) signed it",
        )
    if r["vmpl"] != 0:
        raise Refusal(
            "vmpl",
            f"VMPL Check Failed: the report was requested at VMPL {r['vmpl']}; only VMPL 0 "
            "reports are accepted",
        )
    expected = regularize(expected_report_data, 64)
    if expected != r["report_data"]:
        raise Refusal(
            "report-data",
            f"Report Data Mismatch: REPORT_DATA is {r['report_data'].hex()}, the runtime data "
            f"hashes to {expected.hex()}",
        )
    return Verified(report=r, raw=raw, generation=generation, endorsement=endorsement, ignored=ev.ignored)


def claims(v: Verified) -> dict[str, Any]:
    """The report's claims (trustee's parse_tee_evidence names, plus a few more the
    resource policy of this KBS uses)."""
    r = v.report
    pol = r["policy"]
    plat = r["plat_info"]
    tcb = r["reported_tcb"]
    return {
        "policy_abi_major": (pol >> 8) & 0xFF,
        "policy_abi_minor": pol & 0xFF,
        "policy_smt_allowed": bool(pol >> 16 & 1),
        "policy_migrate_ma": bool(pol >> 18 & 1),
        "policy_debug_allowed": bool(pol >> 19 & 1),
        "policy_single_socket": bool(pol >> 20 & 1),
        "reported_tcb_bootloader": tcb["bootloader"],
        "reported_tcb_tee": tcb["tee"],
        "reported_tcb_snp": tcb["snp"],
        "reported_tcb_microcode": tcb["microcode"],
        "reported_tcb_fmc": tcb["fmc"],
        "platform_tsme_enabled": bool(plat >> 1 & 1),
        "platform_smt_enabled": bool(plat & 1),
        "measurement": r["measurement"].hex(),
        "report_data": r["report_data"].hex(),
        "init_data": r["host_data"].hex(),
        "chip_id": r["chip_id"].hex(),
        # Not in trustee's claim set:
        "report_version": r["version"],
        "vmpl": r["vmpl"],
        "guest_svn": r["guest_svn"],
        "policy": pol,
        "family_id": r["family_id"].hex(),
        "image_id": r["image_id"].hex(),
        "id_key_digest": r["id_key_digest"].hex(),
        "author_key_digest": r["author_key_digest"].hex(),
        "generation": v.generation,
        "endorsement_key": v.endorsement.vek_type,
        "endorsement_root": v.endorsement.root,
    }
