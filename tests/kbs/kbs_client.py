#!/usr/bin/env python3
"""A small RCAR client for the test KBS: the tests' client side, and the owner's upload tool.

What this module is for: speaking to a KBS the way an attester and an owner do, with
nothing hidden (raw status, headers and body of every answer), so the tests can check
the protocol bytes; and, from the command line, uploading or deleting a resource:

    python3 tests/kbs/kbs_client.py upload --kbs http://127.0.0.1:PORT \\
        --admin-token-file FILE nitride/key/disk envelope.jws
    python3 tests/kbs/kbs_client.py delete --kbs URL --admin-token-file FILE nitride/key/disk
    python3 tests/kbs/kbs_client.py admin-jwt --key admin-ed25519.pem [--minutes 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cryptography.hazmat.primitives.asymmetric import ec, rsa  # noqa: E402
from jwcrypto import jwe, jwk, jwt  # noqa: E402

import kbs_core  # noqa: E402

SESSION_COOKIE = "kbs-session-id"


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self) -> Any:
        return json.loads(self.body)


class KbsClient:
    """One attester's conversation: keeps the session cookie between calls."""

    def __init__(self, base_url: str, timeout: float = 10.0):
        u = urllib.parse.urlsplit(base_url)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"KBS URL {base_url!r}: expected http://HOST:PORT")
        self.host = u.hostname
        self.port = u.port or 80
        self.timeout = timeout
        self.cookie: str | None = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        send_cookie: bool = True,
    ) -> Reply:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            h = dict(headers or {})
            if body is not None:
                h.setdefault("Content-Type", "application/json")
            if send_cookie and self.cookie is not None:
                h["Cookie"] = f"{SESSION_COOKIE}={self.cookie}"
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            reply = Reply(status=r.status, headers=r.getheaders(), body=r.read())
        finally:
            conn.close()
        set_cookie = reply.header("Set-Cookie")
        if set_cookie and set_cookie.startswith(SESSION_COOKIE + "="):
            self.cookie = set_cookie.split(";", 1)[0].split("=", 1)[1]
        return reply

    def auth(self, version: str = "0.4.0", tee: str = "snp", extra_params: Any = "") -> Reply:
        body = json.dumps({"version": version, "tee": tee, "extra-params": extra_params}).encode()
        return self.request("POST", "/kbs/v0/auth", body)

    def attest(self, attestation: dict[str, Any]) -> Reply:
        return self.request("POST", "/kbs/v0/attest", json.dumps(attestation, separators=(",", ":")).encode())

    def resource(self, path: str, bearer: str | None = None, send_cookie: bool = True) -> Reply:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
        return self.request("GET", f"/kbs/v0/resource/{path}", headers=headers, send_cookie=send_cookie)


def attestation(nonce: str, tee_pubkey: dict[str, Any], evidence: Any, additional_evidence: str = "") -> dict[str, Any]:
    """The kbs-types Attestation message (top-level kebab-case, tee-evidence snake_case)."""
    return {
        "runtime-data": {"nonce": nonce, "tee-pubkey": tee_pubkey},
        "tee-evidence": {"primary_evidence": evidence, "additional_evidence": additional_evidence},
    }


def tee_pubkey(private_key: Any) -> dict[str, str]:
    """The JWK a TEE sends for its key: EC keys with ECDH-ES+A256KW, RSA with
    RSA-OAEP-256 (members in kbs-types order)."""
    pub = private_key.public_key()
    d = json.loads(jwk.JWK.from_pyca(pub).export_public())
    if isinstance(pub, ec.EllipticCurvePublicKey):
        return {"kty": "EC", "crv": d["crv"], "alg": kbs_core.ECDH_ES_A256KW, "x": d["x"], "y": d["y"]}
    if isinstance(pub, rsa.RSAPublicKey):
        return {"kty": "RSA", "alg": kbs_core.RSA_OAEP_256, "n": d["n"], "e": d["e"]}
    raise TypeError(type(pub))


def decrypt_jwe(body: bytes, private_key: Any) -> bytes:
    """Decrypt a flattened JWE with jwcrypto's own JWE implementation."""
    token = jwe.JWE()
    token.deserialize(body.decode("ascii"), key=jwk.JWK.from_pyca(private_key))
    return token.payload


def admin_jwt(key_pem: bytes, minutes: float = 10.0, subject: str = "owner") -> str:
    """A JWT the KBS's --admin-key accepts (EdDSA for Ed25519, ES256 for P-256)."""
    key = jwk.JWK.from_pem(key_pem)
    alg = "EdDSA" if key.get("kty") == "OKP" else "ES256"
    now = int(time.time())
    t = jwt.JWT(header={"alg": alg, "typ": "JWT"}, claims={"sub": subject, "iat": now, "exp": now + int(minutes * 60)})
    t.make_signed_token(key)
    return t.serialize()


def _admin_header(args: argparse.Namespace) -> dict[str, str]:
    if args.admin_token_file:
        with open(args.admin_token_file, encoding="utf-8") as f:
            credential = f.read().strip()
    elif args.admin_key:
        with open(args.admin_key, "rb") as f:
            credential = admin_jwt(f.read())
    elif args.admin_token:
        credential = args.admin_token
    else:
        raise SystemExit("give --admin-token-file, --admin-token or --admin-key")
    return {"Authorization": f"Bearer {credential}"}


def _show(reply: Reply, what: str) -> int:
    if reply.status == 200:
        print(f"{what}: ok")
        return 0
    detail = reply.body.decode("utf-8", "replace")
    try:
        detail = reply.json()["detail"]
    except (ValueError, KeyError, TypeError):
        pass
    print(f"{what}: refused with HTTP {reply.status}: {detail}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kbs_client.py", description="Owner tools for the test KBS.")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("upload", "delete"):
        s = sub.add_parser(name)
        s.add_argument("--kbs", required=True, help="http://127.0.0.1:PORT")
        s.add_argument("--admin-token")
        s.add_argument("--admin-token-file")
        s.add_argument("--admin-key", help="private key (PEM) whose public half the KBS got with --admin-key")
        s.add_argument("resource", help="REPO/TYPE/TAG")
        if name == "upload":
            s.add_argument("file", help="the bytes to store (opaque to the KBS)")
    s = sub.add_parser("admin-jwt")
    s.add_argument("--key", required=True)
    s.add_argument("--minutes", type=float, default=10.0)
    args = p.parse_args(argv)

    if args.cmd == "admin-jwt":
        with open(args.key, "rb") as f:
            print(admin_jwt(f.read(), args.minutes))
        return 0
    client = KbsClient(args.kbs)
    path = f"/kbs/v0/resource/{args.resource}"
    if args.cmd == "upload":
        with open(args.file, "rb") as f:
            data = f.read()
        headers = _admin_header(args)
        headers["Content-Type"] = "application/octet-stream"
        return _show(client.request("POST", path, data, headers), f"upload {args.resource} ({len(data)} bytes)")
    return _show(client.request("DELETE", path, None, _admin_header(args)), f"delete {args.resource}")


if __name__ == "__main__":
    sys.exit(main())
