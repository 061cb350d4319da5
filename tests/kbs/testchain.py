"""Throwaway SEV-SNP endorsement chains and signed reports for the KBS tests.

What this module is for: evidence the tests can make without firmware. An ARK and an ASK
(RSA, certificates signed with RSASSA-PSS SHA-384 salt 48 as AMD's), VCEKs and VLEKs
(P-384) carrying AMD's extensions, and 0x4A0-byte reports written field by field at the
offsets of REFERENCE.md section 5 and signed with ECDSA P-384 (r, s little-endian). It
shares no code with kbs_snp.py: the KBS must read what this writes.
"""

from __future__ import annotations

import datetime
import os
import struct
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
AMD = "1.3.6.1.4.1.3704.1."

# CPUID family, model, stepping per generation.
CPUID = {"milan": (0x19, 0x01, 0x01), "genoa": (0x19, 0x11, 0x01), "turin": (0x1A, 0x02, 0x00)}


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "KBS tests, not AMD"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _der_int(n: int) -> bytes:
    body = n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big")
    return bytes([0x02, len(body)]) + body


def _der_ia5(s: str) -> bytes:
    return bytes([0x16, len(s)]) + s.encode("ascii")


def _validity(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return builder.not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(
        now + datetime.timedelta(days=365)
    )


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@dataclass
class Tcb:
    bootloader: int = 9
    tee: int = 0
    snp: int = 23
    microcode: int = 72
    fmc: int | None = None

    def raw(self, generation: str) -> bytes:
        """TCB_VERSION bytes: Milan/Genoa byte 0 BL, 1 TEE, 6 SNP, 7 ucode; Turin byte
        0 FMC, 1 BL, 2 TEE, 3 SNP, 7 ucode."""
        if generation == "turin":
            return bytes([self.fmc or 0, self.bootloader, self.tee, self.snp, 0, 0, 0, self.microcode])
        return bytes([self.bootloader, self.tee, 0, 0, 0, 0, self.snp, self.microcode])


class Chain:
    """An ARK, an ASK (and an ASVK) of one generation, and the endorsement keys they sign."""

    def __init__(self, generation: str = "genoa", rsa_bits: int = 4096):
        self.generation = generation
        gen = generation.capitalize()
        self.ark_key = rsa.generate_private_key(65537, rsa_bits)
        self.ask_key = rsa.generate_private_key(65537, rsa_bits)
        ark_name = _name(f"TEST ARK-{gen}")
        self.ark = (
            _validity(x509.CertificateBuilder())
            .subject_name(ark_name)
            .issuer_name(ark_name)
            .public_key(self.ark_key.public_key())
            .serial_number(1)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.ark_key, hashes.SHA384(), rsa_padding=PSS)
        )
        self.ask = self._ca(self.ask_key, f"TEST SEV-{gen}", 2)
        self.asvk = self._ca(self.ask_key, f"TEST SEV-VLEK-{gen}", 3)

    def _ca(self, key: rsa.RSAPrivateKey, cn: str, serial: int) -> x509.Certificate:
        return (
            _validity(x509.CertificateBuilder())
            .subject_name(_name(cn))
            .issuer_name(self.ark.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.ark_key, hashes.SHA384(), rsa_padding=PSS)
        )

    def endorsement_key(
        self,
        tcb: Tcb,
        chip_id: bytes,
        kind: str = "VCEK",
        hwid: bytes | None = None,
        extra: dict[str, bytes] | None = None,
        omit: tuple[str, ...] = (),
        issuer_key: rsa.RSAPrivateKey | None = None,
        curve: ec.EllipticCurve | None = None,
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """A VCEK (hwID = chip_id unless `hwid` is given) or VLEK (no hwID) for `tcb`;
        `extra` overrides extension values (raw DER) by OID suffix, `omit` drops some."""
        key = ec.generate_private_key(curve or ec.SECP384R1())
        exts = {
            "1": _der_int(0),
            "2": _der_ia5(self.generation.capitalize()),
            "3.1": _der_int(tcb.bootloader),
            "3.2": _der_int(tcb.tee),
            "3.3": _der_int(tcb.snp),
            "3.8": _der_int(tcb.microcode),
        }
        if self.generation == "turin":
            exts["3.9"] = _der_int(tcb.fmc or 0)
        if kind == "VCEK":
            exts["4"] = chip_id if hwid is None else hwid
        else:
            exts["5"] = _der_ia5("CN=test-csp")
        exts.update(extra or {})
        b = (
            _validity(x509.CertificateBuilder())
            .subject_name(_name(f"SEV-{kind}"))
            .issuer_name((self.asvk if kind == "VLEK" else self.ask).subject)
            .public_key(key.public_key())
            .serial_number(1)
        )
        for suffix, value in exts.items():
            if suffix in omit:
                continue
            b = b.add_extension(x509.UnrecognizedExtension(x509.ObjectIdentifier(AMD + suffix), value), critical=False)
        cert = b.sign(issuer_key or self.ask_key, hashes.SHA384(), rsa_padding=PSS)
        return cert, key

    def write_root_dir(self, directory: str) -> None:
        """ark.pem and ask.pem (and asvk.pem), the layout of target/dev-chain."""
        os.makedirs(directory, exist_ok=True)
        for name, cert in (("ark", self.ark), ("ask", self.ask), ("asvk", self.asvk)):
            with open(os.path.join(directory, f"{name}.pem"), "wb") as f:
                f.write(pem(cert))


@dataclass
class ReportFields:
    """The fields of a report; defaults describe a VMPL0, version 3, Genoa guest."""

    version: int = 3
    guest_svn: int = 1
    policy: int = (1 << 16) | (1 << 17)
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    vmpl: int = 0
    sig_algo: int = 1
    current_tcb: Tcb = field(default_factory=Tcb)
    platform_info: int = 0x3
    key_info: int = 0  # signing key 0 = VCEK (bits 4:2)
    report_data: bytes = bytes(64)
    measurement: bytes = bytes(range(48))
    host_data: bytes = bytes(32)
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    report_id: bytes = b"\x11" * 32
    report_id_ma: bytes = b"\xff" * 32
    reported_tcb: Tcb = field(default_factory=Tcb)
    cpuid: tuple[int, int, int] | None = None  # default: the generation's
    chip_id: bytes = bytes(range(1, 65))
    committed_tcb: Tcb = field(default_factory=Tcb)
    current_version: tuple[int, int, int] = (1, 55, 21)  # major, minor, build
    committed_version: tuple[int, int, int] = (1, 55, 21)
    launch_tcb: Tcb = field(default_factory=Tcb)
    launch_mit_vector: int = 0
    current_mit_vector: int = 0
    # (offset, byte) written into reserved space after the fields.
    reserved_pokes: list[tuple[int, int]] = field(default_factory=list)


def build_report(f: ReportFields, generation: str = "genoa") -> bytearray:
    """The unsigned 0x4A0 bytes, field by field at REFERENCE.md section 5's offsets."""
    raw = bytearray(0x4A0)

    def put(off: int, b: bytes) -> None:
        raw[off : off + len(b)] = b

    put(0x000, struct.pack("<I", f.version))
    put(0x004, struct.pack("<I", f.guest_svn))
    put(0x008, struct.pack("<Q", f.policy))
    put(0x010, f.family_id)
    put(0x020, f.image_id)
    put(0x030, struct.pack("<I", f.vmpl))
    put(0x034, struct.pack("<I", f.sig_algo))
    put(0x038, f.current_tcb.raw(generation))
    put(0x040, struct.pack("<Q", f.platform_info))
    put(0x048, struct.pack("<I", f.key_info))
    put(0x050, f.report_data)
    put(0x090, f.measurement)
    put(0x0C0, f.host_data)
    put(0x0E0, f.id_key_digest)
    put(0x110, f.author_key_digest)
    put(0x140, f.report_id)
    put(0x160, f.report_id_ma)
    put(0x180, f.reported_tcb.raw(generation))
    if f.version >= 3:
        put(0x188, bytes(f.cpuid or CPUID[generation]))
    put(0x1A0, f.chip_id)
    put(0x1E0, f.committed_tcb.raw(generation))
    major, minor, build = f.current_version
    put(0x1E8, bytes([build, minor, major]))
    major, minor, build = f.committed_version
    put(0x1EC, bytes([build, minor, major]))
    put(0x1F0, f.launch_tcb.raw(generation))
    if f.version >= 5:
        put(0x1F8, struct.pack("<Q", f.launch_mit_vector))
        put(0x200, struct.pack("<Q", f.current_mit_vector))
    for off, b in f.reserved_pokes:
        raw[off] = b
    return raw


def sign_report(raw: bytearray, key: ec.EllipticCurvePrivateKey) -> bytes:
    """ECDSA P-384 / SHA-384 over bytes 0x000..0x2A0; r at 0x2A0 and s at 0x2E8, 72
    bytes little-endian each."""
    r, s = decode_dss_signature(key.sign(bytes(raw[:0x2A0]), ec.ECDSA(hashes.SHA384())))
    raw[0x2A0:0x2E8] = r.to_bytes(72, "little")
    raw[0x2E8:0x330] = s.to_bytes(72, "little")
    return bytes(raw)


_CHAINS: dict[tuple[str, int], Chain] = {}


def shared_chain(generation: str = "genoa", rsa_bits: int = 4096) -> Chain:
    """One chain per generation and key size for the whole test run (RSA-4096 key
    generation takes seconds)."""
    key = (generation, rsa_bits)
    if key not in _CHAINS:
        _CHAINS[key] = Chain(generation, rsa_bits)
    return _CHAINS[key]


def vectors_dir() -> str:
    """The real AMD reports: $NITRIDE_SNP_VECTORS or <repository>/../shared/snp-vectors.
    Missing vectors fail the tests that need them (as the Rust tests do)."""
    d = os.environ.get("NITRIDE_SNP_VECTORS") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared", "snp-vectors"
    )
    d = os.path.normpath(d)
    if not os.path.isdir(os.path.join(d, "roots")):
        raise AssertionError(
            f"SNP test vectors not found at {d}: set NITRIDE_SNP_VECTORS or clone the repository next to shared/"
        )
    return d
