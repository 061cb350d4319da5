#!/usr/bin/env python3
"""Write seed corpora into the directory given as argument: for the `dispatch` fuzz
target (one valid request of each operation, framed as the target expects, and
sequences naming the key only VMPL0 may use) in it, and for the `wire` target (each
request alone, and responses of each body kind) in its `wire/` subdirectory."""
import os
import struct
import sys

def req(op, body, rid=1):
    return struct.pack("<HHIQII", 2, op, 0, rid, len(body), 0) + body

def b(x):
    return struct.pack("<I", len(x)) + x

def tmpl(kt, usage, vmpls=0xF, exportable=1):
    return struct.pack("<HBBI", kt, vmpls, exportable, usage)

u32 = lambda v: struct.pack("<I", v)
seeds = {
    "generate": req(1, tmpl(1, 0x7F & 0x73) + b(b"lbl")),
    "import": req(2, tmpl(4, 0x4C) + b(b"") + b(bytes(range(48)))),
    "unwrap": req(3, u32(4) + tmpl(1, 0x1) + b(b"") + b(bytes(40))),
    "wrap": req(4, u32(4) + u32(1)),
    "generate_p384": req(1, tmpl(2, 0x0C) + b(b"")),
    "pubkey": req(5, u32(6)),
    "sign": req(6, u32(6) + b(b"hello")),
    "verify": req(7, u32(2) + b(b"hello") + b(bytes(64))),
    "encrypt": req(8, u32(1) + b(b"aad") + b(b"plaintext")),
    "decrypt": req(9, u32(1) + b(b"aad") + b(bytes(40))),
    "derive": req(10, u32(3) + tmpl(1, 0x3, exportable=1) + b(b"") + b(b"salt") + b(b"info")),
    "random": req(11, u32(32)),
    "delete": req(12, u32(2)),
    "list": req(13, b""),
    "attrs": req(14, u32(6)),
    "audit": req(15, struct.pack("<Q", 0)),
    "attest": req(16, u32(2) + b(bytes(64))),
    # Key 5: only VMPL0 may use it.
    "hidden_sign": req(6, u32(5) + b(b"hello")),
    "hidden_wrap": req(4, u32(1) + u32(5)),
    "hidden_attest": req(16, u32(5) + b(bytes(64))),
    "hidden_delete": req(12, u32(5)),
    "hidden_attrs": req(14, u32(5)),
}
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for name, r in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(b"\x01" + struct.pack("<H", len(r)) + r)
# Sequences: generate a P-384 key (id 6) and use it; encrypt, wrap, delete, list, audit;
# name the hidden key from VMPL1 (first byte 1) and from VMPL0 (first byte 0).
for name, who, ops in [("p384", 0, ["generate_p384", "sign", "pubkey", "attrs"]),
                       ("sequence", 0, ["encrypt", "wrap", "delete", "list", "audit"]),
                       ("attest_sequence", 0, ["attest", "delete", "attest", "generate_p384", "list"]),
                       ("hidden_vmpl1", 1, ["hidden_sign", "hidden_wrap", "hidden_attest", "hidden_attrs",
                                            "hidden_delete", "list", "audit"]),
                       ("hidden_vmpl0", 0, ["hidden_sign", "hidden_attest", "hidden_delete", "audit"])]:
    with open(os.path.join(out, name), "wb") as f:
        f.write(bytes([who]) + b"".join(struct.pack("<H", len(seeds[k])) + seeds[k] for k in ops))

# The wire target: bare requests, and responses (header: version, op, status,
# reserved, request id, body length, reserved).
wire = os.path.join(out, "wire")
os.makedirs(wire, exist_ok=True)
def resp(op, status, body):
    return struct.pack("<HHHHQII", 2, op, status, 0, 1, len(body), 0) + body
attrs = bytes(48)
responses = {
    "r_attrs": resp(14, 0, attrs),
    "r_list": resp(13, 0, u32(2) + attrs + attrs),
    "r_audit": resp(15, 0, u32(1) + bytes(88)),
    "r_attest": resp(16, 0, b(bytes(256)) + b(bytes(0x4A0)) + b(b"")),
    "r_error": resp(6, 5, b""),
}
for name, r in list(seeds.items()) + list(responses.items()):
    with open(os.path.join(wire, name), "wb") as f:
        f.write(r)
