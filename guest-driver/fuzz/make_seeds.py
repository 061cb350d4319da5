#!/usr/bin/env python3
"""Write seed corpora for the attestation fuzz targets (attest_manifest, key_binding,
attest_relay, report_data_forms) into <dir>/<target>/, valid inputs framed as each
target expects (a selector byte first where the target has one). Public keys are
real (Python `cryptography`), so the verifier's curve check passes on the seeds.
Usage: make_seeds.py fuzz/corpus"""
import hashlib
import os
import struct
import sys
import uuid

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519


def spki(key):
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


P384_A = spki(ec.generate_private_key(ec.SECP384R1()))
P384_B = spki(ec.generate_private_key(ec.SECP384R1()))
ED = spki(ed25519.Ed25519PrivateKey.generate())

def g(s):
    return uuid.UUID(s).bytes_le

TABLE = g("63849ebb-3d92-4670-a1ff-58f9c94b87bb")
VHSM = g("2c3b3fbe-408b-431e-b92e-91d3619d1658")
VTPM = g("c476f1eb-0123-45a5-9641-b4e7dde5bfe3")
VCEK = g("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK = g("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK = g("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK = g("c0b406a4-a803-4952-9743-3fb6014cd0ae")

def attrs(key_id, key_type=2, usage=0x8C, label=b"k"):
    # usage 0x8C = SIGN | VERIFY | ATTEST; AES: 0x83 = ENCRYPT | DECRYPT | ATTEST
    # key_id u32, key_type u16, origin u8, vmpls u8, usage u32, exportable u8,
    # label_len u8, reserved u16, label[32]
    return struct.pack("<IHBBIBBH", key_id, key_type, 1, 0xF, usage, 0, len(label), 0) + label.ljust(32, b"\0")

def table(entries):
    head = 24 + 24 * len(entries)
    total = head + sum(len(d) for _, d in entries)
    out = TABLE + struct.pack("<II", total, len(entries))
    at = head
    for gd, d in entries:
        out += gd + struct.pack("<II", at, len(d))
        at += len(d)
    return out + b"".join(d for _, d in entries)

def vhsm_manifest(identity, keys):
    out = b"NTRDVHSM" + struct.pack("<IIHHIII", 1, 1, 1, 0, len(keys), len(identity), 0) + identity
    for a, spki in keys:
        out += a + struct.pack("<I", len(spki)) + spki
    return out

def binding(nonce, spki, a):
    assert len(nonce) == 64
    return nonce + b"NITRIDE-KEYBIND2" + a + struct.pack("<II", len(spki), 0) + spki

def cert_table(certs):
    head = 24 * (len(certs) + 1)
    out, body, at = b"", b"", head
    for gd, c in certs:
        out += gd + struct.pack("<II", at, len(c))
        at += len(c)
        body += c
    return out + bytes(24) + body

NONCE = bytes(range(64))
man = vhsm_manifest(P384_A, [(attrs(2), P384_B), (attrs(3, 1, 0x83), b""), (attrs(5, 3), ED)])
tbl = table([(VHSM, man)])
tbl2 = table([(VHSM, man), (VTPM, b"tpm")])
bind = binding(NONCE, P384_B, attrs(2))
seeds = {
    "attest_manifest": {
        "table": b"\0" + tbl,
        "table_two": b"\0" + tbl2,
        "empty_table": b"\0" + table([]),
        "manifest": b"\0" + man,
        "services_request": b"\0" + struct.pack("<QII", 0x1000, 0x4A0, 0) * 4,
        "single_request": b"\0" + struct.pack("<QII", 0x1000, 0x4A0, 0) * 4 + VHSM + struct.pack("<II", 0, 0),
        "recipe": b"\x01" + bytes([0, 4]) + b"abcd" + bytes([1, 3]) + VTPM + b"xyz",
    },
    "key_binding": {
        "binding": b"\0" + bind,
        "binding_no_spki": b"\0" + binding(NONCE, b"", attrs(3, 1, 0x83)),
        "binding_ed25519": b"\0" + binding(NONCE, ED, attrs(5, 3)),
        "policy": b"\x01" + bytes([0x02]) + NONCE + bind,
        "policy_no_nonce": b"\x01" + bytes([0x00]) + NONCE + bind,
        "request": b"\x03" + struct.pack("<HHIQII", 1, 16, 0, 7, 72, 0) + struct.pack("<II", 2, 64) + NONCE,
        "certs": b"\x02" + cert_table([(VCEK, b"vcek"), (ASK, b"ask"), (ARK, b"ark")]),
        "certs_vlek": b"\x02" + cert_table([(VLEK, b"vlek"), (ASK, b"asvk"), (ARK, b"ark")]),
    },
}

def relay_answer(rax, rcx, rdx, r8, body=b""):
    payload = struct.pack("<QQ", rdx, r8) + body
    return b"NRS1" + struct.pack("<QQI", rax, rcx, len(payload)) + payload

def relay_seed(flags, sizes, regs, stream):
    return bytes([flags]) + struct.pack("<HHH", *sizes) + struct.pack("<QQQQ", *regs) + stream

report = bytes(0x4A0)
ok = relay_answer(0, len(tbl), 12, 0x4A0, report + tbl + b"certificates")
seeds["attest_relay"] = {
    "success": relay_seed(3, (4096, 16384, 16384), (0, 100, 0, 0x4A0), ok),
    "no_certs": relay_seed(0, (4096, 16384, 0), (0x8000_0005, 20000, 0, 0x4A0),
                           relay_answer(0, len(tbl), 0, 0x4A0, report + tbl)),
    "retry": relay_seed(3, (0x4A0, 16, 16), (0x8000_0005, 200, 300, 0x4A0),
                        relay_answer(0x8000_0005, len(tbl), 12, 0x4A0) + ok),
    "error": relay_seed(2, (4096, 4096, 4096), (0x8000_0000, 0, 0, 0), relay_answer(0x8000_0000, 0, 0, 0)),
}

seeds["report_data_forms"] = {
    "services": NONCE + tbl,
    "services_empty": NONCE + table([]),
    "single": NONCE + man,
    "binding": bind,
    "binding_aes": binding(NONCE, b"", attrs(3, 1, 0x83)),
    # The old forgery shapes: a longer "nonce" carrying a table head and a fake
    # manifest in front of the real table; a v1 binding around a real table.
    "long_nonce": NONCE + table([(VHSM, man), (VTPM, tbl)])[:24 + 48] + man + tbl,
    "old_binding": b"NITRIDE-KEYBIND1" + struct.pack("<II", 0, len(P384_B) + len(tbl)) + attrs(2) + P384_B + tbl,
}

out = sys.argv[1]
for target, files in seeds.items():
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
