#!/usr/bin/env python3
"""A Key Broker Service for Nitride's tests and demo: trustee's RCAR protocol v0.4.0 on a
loopback HTTP port, verifying SEV-SNP evidence itself (see README.md in this directory).

What this file is for: the command line and the HTTP layer (routes, status codes,
headers, the log). The protocol lives in kbs_core.py, the SNP evidence in kbs_snp.py.

    python3 tests/kbs/kbs.py --port 0 --dev-root target/dev-chain \\
        --measurement <96 hex digits> --resources DIR --admin-token-file FILE

prints `kbs: listening on http://127.0.0.1:PORT` on stdout, then logs one line per
request on stderr, every refusal as `kbs: refused METHOD PATH [code] detail`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from jwcrypto import jwk  # noqa: E402

import kbs_core  # noqa: E402
import kbs_snp  # noqa: E402
from kbs_core import Answer, KbsError  # noqa: E402

PREFIX = "/kbs/v0/"
# trustee's default HTTP payload limit is 2 MiB.
MAX_BODY = 2 * 1024 * 1024


class Log:
    """Lines on stderr, and JSON events in --event-log when given."""

    def __init__(self, event_path: str | None):
        self._lock = threading.Lock()
        self._events = open(event_path, "a", buffering=1, encoding="utf-8") if event_path else None

    def line(self, text: str) -> None:
        with self._lock:
            sys.stderr.write(text + "\n")
            sys.stderr.flush()

    def event(self, **fields: Any) -> None:
        if self._events is not None:
            fields["time"] = round(time.time(), 3)
            with self._lock:
                self._events.write(json.dumps(fields, sort_keys=True) + "\n")


class Faults:
    """Injected failures for client tests (retries, timeouts): the first `n503`
    requests under /kbs/v0/ answer 503, and every answer waits `delay` seconds."""

    def __init__(self, n503: int = 0, delay: float = 0.0):
        self._lock = threading.Lock()
        self.n503 = n503
        self.delay = delay

    def take_503(self) -> bool:
        with self._lock:
            if self.n503 > 0:
                self.n503 -= 1
                return True
            return False


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "nitride-test-kbs/0.4.0"

    def version_string(self) -> str:
        return self.server_version

    # Set on the class by serve().
    kbs: kbs_core.Kbs
    log: Log
    faults: Faults

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # every request is logged by _dispatch

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def _not_allowed(self) -> None:
        self._read_body()
        self._send(405, b"", None, None)
        self.log.line(f"kbs: {self.command} {self.path} -> 405")

    do_HEAD = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding"):
            return None
        n = self.headers.get("Content-Length", "0")
        if not n.isdigit() or int(n) > MAX_BODY:
            return None
        return self.rfile.read(int(n))

    def _send(self, status: int, body: bytes, content_type: str | None, cookie: str | None) -> None:
        try:
            self.send_response(status)
            if content_type is not None:
                self.send_header("Content-Type", content_type)
            if cookie is not None:
                self.send_header("Set-Cookie", cookie)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            self.log.line(f"kbs: {self.command} {self.path}: the client went away before the answer")

    def _dispatch(self, method: str) -> None:
        body = self._read_body()
        path = self.path.split("?", 1)[0]
        if body is None:
            self.close_connection = True
            self._send(413, b"", None, None)
            self.log.line(
                f"kbs: refused {method} {path} [payload] no Content-Length, chunked body or more than {MAX_BODY} bytes"
            )
            return
        if self.faults.delay:
            time.sleep(self.faults.delay)
        if path.startswith(PREFIX) and self.faults.take_503():
            self._send(503, b"injected fault (--fault-503)", None, None)
            self.log.line(f"kbs: fault {method} {path} -> 503 (injected)")
            return
        try:
            answer = self._route(method, path, body)
        except KbsError as e:
            # RFC 7807 body without a Content-Type header, as trustee answers errors.
            self._send(e.status, e.body(), None, None)
            self.log.line(f"kbs: refused {method} {path} [{e.code}] {e.detail}")
            self.log.event(event="refused", method=method, path=path, status=e.status, code=e.code, detail=e.detail)
            return
        except Exception as e:  # a bug in this KBS: say so, keep serving
            self._send(500, b"", None, None)
            self.log.line(f"kbs: INTERNAL ERROR {method} {path}: {type(e).__name__}: {e}")
            self.log.event(event="internal-error", method=method, path=path, detail=f"{type(e).__name__}: {e}")
            return
        if answer is None:
            self._send(404, b"", None, None)
            self.log.line(f"kbs: {method} {path} -> 404 (not under {PREFIX})")
            return
        self._send(200, answer.body, answer.content_type, answer.cookie)
        self.log.line(f"kbs: ok {method} {path} {answer.note}".rstrip())
        self.log.event(event="ok", method=method, path=path, note=answer.note)

    def _route(self, method: str, path: str, body: bytes) -> Answer | None:
        if not path.startswith(PREFIX):
            return None
        rest = path[len(PREFIX):]
        plugin, _, sub = rest.partition("/")
        cookies = kbs_core.parse_cookies(self.headers.get_all("Cookie") or [])
        authorization = self.headers.get("Authorization")
        if plugin == "auth" and method == "POST":
            return self.kbs.auth(body)
        if plugin == "attest" and method == "POST":
            return self.kbs.attest(body, cookies)
        if plugin == "resource":
            if method == "POST":
                return self.kbs.put_resource(sub, body, authorization)
            if method == "DELETE":
                return self.kbs.delete_resource(sub, authorization)
            return self.kbs.get_resource(sub, cookies, authorization, method)
        raise kbs_core.plugin_not_found(plugin)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kbs.py",
        description="Test Key Broker Service: trustee's RCAR v0.4.0 on loopback, verifying SEV-SNP evidence.",
    )
    net = p.add_argument_group("listening")
    net.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    net.add_argument("--port", type=int, default=8080, help="TCP port; 0 picks a free one (default 8080)")
    net.add_argument("--port-file", help="write the bound port to this file once listening")

    roots = p.add_argument_group("trusted roots (at least one)")
    roots.add_argument("--roots", help="directory of AMD roots {milan,genoa,turin}-{ark,ask,asvk}.pem")
    roots.add_argument("--dev-root", help="directory with the development ark.pem and ask.pem (target/dev-chain)")
    roots.add_argument(
        "--dev-root-generation",
        default="genoa",
        choices=kbs_snp.GENERATIONS,
        help="processor generation the development root serves (default genoa, as the emulated PSP)",
    )

    pol = p.add_argument_group("resource policy (checked at /resource)")
    pol.add_argument("--policy", help="JSON policy file (members: " + ", ".join(kbs_core.Policy.KEYS) + ")")
    pol.add_argument("--measurement", action="append", default=[], metavar="HEX", help="allowed launch measurement (48 bytes hex); repeatable")
    pol.add_argument("--any-measurement", action="store_true", help="allow any measurement (trustee's default policy)")
    pol.add_argument("--allow-debug", action="store_true", help="release to guests whose policy allows debugging")
    pol.add_argument("--allow-migrate-ma", action="store_true", help="release to guests whose policy allows a migration agent")
    pol.add_argument("--min-tcb", metavar="SPEC", help="minimum REPORTED_TCB, e.g. bootloader=9,tee=0,snp=23,microcode=72")
    pol.add_argument("--min-guest-svn", type=int, metavar="N")
    pol.add_argument("--host-data", action="append", metavar="HEX", help="allowed HOST_DATA (32 bytes hex); repeatable")
    pol.add_argument("--require-root", action="append", metavar="LABEL", help="allowed root label (development, amd-genoa, ...); repeatable")

    res = p.add_argument_group("resources")
    res.add_argument("--resources", metavar="DIR", help="load DIR/<repo>/<type>/<tag> files at start")
    res.add_argument("--resource", action="append", default=[], metavar="REPO/TYPE/TAG=FILE", help="load one resource; repeatable")
    res.add_argument("--admin-token", help="bearer token that may upload/delete resources")
    res.add_argument("--admin-token-file", help="file holding the admin bearer token")
    res.add_argument("--admin-key", action="append", default=[], metavar="PEM", help="public key (Ed25519 or P-256) whose JWTs may upload/delete; repeatable")

    misc = p.add_argument_group("sessions and tokens")
    misc.add_argument("--session-seconds", type=float, default=300.0, help="session lifetime (trustee: 5 minutes)")
    misc.add_argument("--token-seconds", type=float, default=300.0, help="attestation token lifetime (trustee: 5 minutes)")
    misc.add_argument("--token-key", metavar="PEM", help="P-256 private key signing the tokens (default: a fresh one)")
    misc.add_argument("--event-log", metavar="FILE", help="append one JSON line per answered request")

    fault = p.add_argument_group("fault injection (for client tests)")
    fault.add_argument("--fault-503", type=int, default=0, metavar="N", help="answer the first N requests under /kbs/v0/ with 503")
    fault.add_argument("--fault-delay", type=float, default=0.0, metavar="SECONDS", help="delay every answer")
    return p


def configure(args: argparse.Namespace, log: Log) -> kbs_core.Kbs:
    if not _loopback(args.host):
        raise SystemExit(f"kbs: --host {args.host} is not a loopback address; this KBS serves tests on loopback only")

    store = kbs_snp.TrustStore()
    if args.roots:
        for a in store.add_amd_roots(args.roots):
            log.line(f"kbs: root {a.label}: ARK {kbs_snp.cert_sha256(a.ark)}")
    if args.dev_root:
        a = store.add_dev_root(args.dev_root, args.dev_root_generation)
        log.line(f"kbs: root {a.label} ({a.generation}): ARK {kbs_snp.cert_sha256(a.ark)}")
    if not store.anchors:
        raise SystemExit("kbs: no trusted root: give --roots DIR and/or --dev-root DIR")

    if args.policy:
        with open(args.policy, encoding="utf-8") as f:
            policy = kbs_core.Policy.from_json(kbs_core.load_json(f.read().encode("utf-8")))
    else:
        policy = kbs_core.Policy()
    policy.merge_json(
        {
            "measurements": args.measurement,
            "host_data": args.host_data,
            "roots": args.require_root,
            "min_guest_svn": args.min_guest_svn,
        }
    )
    if args.any_measurement:
        policy.any_measurement = True
    if args.allow_debug:
        policy.allow_debug = True
    if args.allow_migrate_ma:
        policy.allow_migrate_ma = True
    if args.min_tcb:
        policy.min_tcb.update(kbs_core.parse_tcb_spec(args.min_tcb))
    policy.validate()
    log.line(f"kbs: policy: {policy.describe()}")

    resources = kbs_core.ResourceStore()
    if args.resources:
        for skipped in resources.load_dir(args.resources):
            log.line(f"kbs: ignored {args.resources}/{skipped} (not <repo>/<type>/<tag>)")
    for spec in args.resource:
        path, sep, file = spec.partition("=")
        if not sep:
            raise SystemExit(f"kbs: --resource {spec!r}: expected REPO/TYPE/TAG=FILE")
        with open(file, "rb") as f:
            resources.put(path, f.read())
    log.line(f"kbs: resources: {', '.join(resources.paths()) or '(none yet)'}")

    token = args.admin_token
    if args.admin_token_file:
        with open(args.admin_token_file, encoding="utf-8") as f:
            token = f.read().strip()
    keys = []
    for path in args.admin_key:
        with open(path, "rb") as f:
            keys.append(jwk.JWK.from_pem(f.read()))
    admin = kbs_core.Admin(token=token or None, keys=keys)
    log.line(
        "kbs: admin: "
        + (", ".join(filter(None, ["bearer token" if token else "", f"{len(keys)} JWT key(s)" if keys else ""])) or "none (uploads refused)")
    )

    token_key = None
    if args.token_key:
        with open(args.token_key, "rb") as f:
            token_key = jwk.JWK.from_pem(f.read())

    return kbs_core.Kbs(
        store=store,
        policy=policy,
        resources=resources,
        admin=admin,
        session_seconds=args.session_seconds,
        token_seconds=args.token_seconds,
        token_key=token_key,
        log=log.line,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    log = Log(args.event_log)
    try:
        kbs = configure(args, log)
    except (ValueError, OSError) as e:
        print(f"kbs: {e}", file=sys.stderr)
        return 2

    faults = Faults(args.fault_503, args.fault_delay)
    if args.fault_503 or args.fault_delay:
        log.line(f"kbs: fault injection: first {args.fault_503} request(s) 503, {args.fault_delay} s delay")
    handler = type("KbsHandler", (Handler,), {"kbs": kbs, "log": log, "faults": faults})
    server_class = ThreadingHTTPServer
    if ":" in args.host:
        server_class = type("KbsServer6", (ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
    server = server_class((args.host, args.port), handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    if args.port_file:
        with open(args.port_file, "w", encoding="utf-8") as f:
            f.write(f"{port}\n")
    shown = f"[{host}]" if ":" in host else host
    print(f"kbs: listening on http://{shown}:{port}", flush=True)

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        log.line("kbs: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
