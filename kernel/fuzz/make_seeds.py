#!/usr/bin/env python3
"""Write seed corpora for the kernel fuzz targets into <dir>/<target>/ (usage:
make_seeds.py fuzz/corpus). The inputs are scripts in the targets' own formats
(see the doc comments of fuzz_targets/*.rs): valid exchanges the fuzzer mutates."""
import os
import struct
import sys
import uuid

def g(s):
    return uuid.UUID(s).bytes_le

def cert_table():
    guids = [g("63da758d-e664-4564-adc5-f4b93be8accd"), g("4ab7b379-bbac-4fe4-a02f-05aef327c782"),
             g("c0b406a4-a803-4952-9743-3fb6014cd0ae")]
    head = 24 * 4
    out, body = b"", b""
    for i, gd in enumerate(guids):
        out += gd + struct.pack("<II", head + 8 * i, 8)
        body += bytes([0xA1 + i]) * 8
    return out + bytes(24) + body

table = cert_table()
blob = b"NDPSP001" + bytes([0x11]) * 48 + bytes([0xC5]) * 32 + struct.pack("<II", len(table), 0) + table

SEALED = bytes([5, 0, 0])  # a sealed, unedited response with a canonical body
seeds = {
    "psp_client": {
        # setup: 3 operations, VMPCK0, 1 certificate page; report, extended report, key.
        "all_ok": bytes([0x02, 0, 1, 2]) + SEALED * 3,
        "busy_then_ok": bytes([0x00, 0]) + bytes([0, 0]) + SEALED,
        # Extended request short of pages: the plain resend, then a retry with 2 pages.
        "need_pages": bytes([0x00, 1]) + bytes([1, 2]) + SEALED + SEALED,
        "status": bytes([0x00, 2]) + bytes([5, 0, 1]) + struct.pack("<I", 0x27),
        "vmpck3": bytes([0x31, 0, 2]) + SEALED * 2,
    },
    "emulated_psp": {
        "blob": b"\x01" + blob,
        # report (VMPCK0, user data 0x42, VMPL 0, key_sel 0, no certs), then a key request
        # (VMPCK0, root key 0, fields 0x3F, VMPL 0, svn, tcb) as an extended request.
        "report_key": b"\x00" + bytes([0, 0, 0x42, 0, 0]) + b"\x00"
                      + bytes([2, 0, 0, 0x3F, 0]) + struct.pack("<II", 1, 2) + b"\xff",
        "vmpl1": b"\x00" + bytes([0, 1, 0x42, 1, 0]) + b"\x00",
        "raw": b"\x00\x01" + bytes(96) + b"\x00",
    },
}

out = sys.argv[1]
for target, files in seeds.items():
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)
