"""The test KBS as a process (python3 kbs.py ...), driven over HTTP like an attester,
a relay and an owner would: releases, every refusal (with its log line), and the
protocol details (cookie, version check, 404 vs 401, RFC 7807 bodies)."""

from __future__ import annotations

import email.utils
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

import kbs_client
import kbs_core
import kbs_snp
import testchain
from test_kbs_protocol import manual_decrypt
from testchain import ReportFields, Tcb

HERE = os.path.dirname(os.path.abspath(__file__))
KBS_PY = os.path.join(HERE, "kbs.py")
SECRET = b"owner-signed envelope bytes \x00\x01"
ADMIN_TOKEN = "test-admin-token-0123456789"
ERROR_PREFIX = "https://github.com/confidential-containers/kbs/errors/"


class KbsProcess:
    """`python3 kbs.py --port 0 ARGS`, its address, and the lines it logs."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, KBS_PY, "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self.history: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        first = self.proc.stdout.readline()
        m = re.fullmatch(r"kbs: listening on (http://127\.0\.0\.1:\d+)\n", first)
        if not m:
            self.proc.kill()
            raise AssertionError(f"KBS did not start: {first!r}; log: {self.proc.stderr.read() if self.proc.stderr else ''}")
        self.url = m.group(1)

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.history.append(line.rstrip("\n"))
            self.lines.put(line.rstrip("\n"))

    def saw(self, pattern: str) -> str:
        """A line matching `pattern` logged at any time so far (startup lines)."""
        for line in list(self.history):
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no log line matching {pattern!r} in {self.history}")

    def wait_for(self, pattern: str, timeout: float = 10.0) -> str:
        """The next log line matching `pattern` (regex search)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no log line matching {pattern!r}; seen: {self.log[-10:]}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.log.append(line)
            if re.search(pattern, line):
                return line

    def client(self) -> kbs_client.KbsClient:
        return kbs_client.KbsClient(self.url)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.proc.stdout.close()


class Attester:
    """Makes the evidence a VMPL0 component would: a report over the runtime data,
    signed by a VCEK of the throwaway chain."""

    def __init__(self, chain: testchain.Chain, fields: ReportFields | None = None):
        self.chain = chain
        self.fields = fields or ReportFields()
        self.vcek, self.vcek_key = chain.endorsement_key(self.fields.reported_tcb, self.fields.chip_id)

    def evidence(self, report_data: bytes, fields: ReportFields | None = None, certs=None, key=None) -> dict:
        f = _with(fields or self.fields, report_data=report_data)
        raw = testchain.sign_report(testchain.build_report(f), key or self.vcek_key)
        if certs is None:
            certs = [("VCEK", testchain.der(self.vcek))]
        return kbs_snp.evidence_json(raw, certs)

    def message(self, nonce: str, tee_key=None, jwk_sent=None, jwk_hashed=None, fields=None, **kw) -> dict:
        """The /attest body: REPORT_DATA over `jwk_hashed` (default: the JWK sent)."""
        jwk_sent = jwk_sent or kbs_client.tee_pubkey(tee_key)
        digest = kbs_core.runtime_data_digest(nonce, jwk_hashed or kbs_core.parse_tee_pubkey(jwk_sent))
        return kbs_client.attestation(nonce, jwk_sent, self.evidence(digest + bytes(16), fields, **kw))


def _with(obj, **changes):
    import copy

    new = copy.copy(obj)
    for k, v in changes.items():
        setattr(new, k, v)
    return new


def error(reply: kbs_client.Reply) -> tuple[int, str, str]:
    """(status, error type name, detail), checking the RFC 7807 shape and that no
    Content-Type header comes with it."""
    assert reply.header("Content-Type") is None, reply.headers
    body = reply.json()
    assert list(body) == ["type", "detail"], body
    assert body["type"].startswith(ERROR_PREFIX), body
    return reply.status, body["type"][len(ERROR_PREFIX):], body["detail"]


class KbsServerTest(unittest.TestCase):
    """One KBS for the class: development root (the throwaway chain) and AMD's roots,
    one allowed measurement, a minimum TCB, resources from a directory, admin token."""

    extra_args: tuple[str, ...] = ()

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.chain = testchain.shared_chain("genoa")
        root = os.path.join(cls.tmp.name, "dev-chain")
        cls.chain.write_root_dir(root)
        resources = os.path.join(cls.tmp.name, "resources", "nitride", "key")
        os.makedirs(resources)
        with open(os.path.join(resources, "disk"), "wb") as f:
            f.write(SECRET)
        with open(os.path.join(cls.tmp.name, "resources", "README"), "w") as f:
            f.write("not a resource")
        cls.attester = Attester(cls.chain)
        cls.admin_key = ed25519.Ed25519PrivateKey.generate()
        admin_pub = os.path.join(cls.tmp.name, "admin.pub.pem")
        with open(admin_pub, "wb") as f:
            f.write(cls.admin_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        token_file = os.path.join(cls.tmp.name, "admin-token")
        with open(token_file, "w") as f:
            f.write(ADMIN_TOKEN + "\n")
        cls.events = os.path.join(cls.tmp.name, "events.jsonl")
        cls.kbs = KbsProcess(
            "--roots", os.path.join(testchain.vectors_dir(), "roots"),
            "--dev-root", root,
            "--measurement", cls.attester.fields.measurement.hex(),
            "--measurement", "ab" * 48,
            "--min-tcb", "bootloader=9,tee=0,snp=23,microcode=72",
            "--resources", os.path.join(cls.tmp.name, "resources"),
            "--admin-token-file", token_file,
            "--admin-key", admin_pub,
            "--event-log", cls.events,
            *cls.extra_args,
        )

    @classmethod
    def tearDownClass(cls):
        cls.kbs.stop()
        cls.tmp.cleanup()

    def attested(self, key=None, **kw) -> tuple[kbs_client.KbsClient, object, kbs_client.Reply]:
        """A client that went through /auth and /attest (the reply of /attest returned)."""
        c = self.kbs.client()
        nonce = c.auth().json()["nonce"]
        key = key or ec.generate_private_key(ec.SECP256R1())
        return c, key, c.attest(self.attester.message(nonce, key, **kw))

    def refused_at_attest(self, code: str, **kw) -> str:
        c = self.kbs.client()
        nonce = c.auth().json()["nonce"]
        body = kw.pop("body", None) or self.attester.message(nonce, ec.generate_private_key(ec.SECP256R1()), **kw)
        status, kind, detail = error(c.attest(body))
        self.assertEqual((status, kind), (401, "AttestationError"), detail)
        self.assertTrue(detail.startswith("Attestation error: RCAR handshake Attest failed"), detail)
        self.kbs.wait_for(rf"refused POST /kbs/v0/attest \[{re.escape(code)}\]")
        # Nothing was attested: the session has no token.
        status, kind, _ = error(c.resource("nitride/key/disk"))
        self.assertEqual((status, kind), (401, "TokenNotFound"))
        return detail


class Release(KbsServerTest):
    def test_p256_end_to_end(self):
        c, key, r = self.attested()
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("Content-Type"), "application/json")
        self.assertEqual(list(r.json()), ["token"])
        self.kbs.wait_for(r"ok POST /kbs/v0/attest .*root=development key=EC/P-256")
        jwe = c.resource("nitride/key/disk")
        self.assertEqual((jwe.status, jwe.header("Content-Type")), (200, "application/json"))
        self.assertEqual(kbs_client.decrypt_jwe(jwe.body, key), SECRET)
        self.assertEqual(manual_decrypt(jwe.body, key), SECRET)
        self.assertNotIn(SECRET, jwe.body)
        self.kbs.wait_for(r"ok GET /kbs/v0/resource/nitride/key/disk session=\w+ released nitride/key/disk")

    def test_p521_and_rsa_oaep_256(self):
        for key in (ec.generate_private_key(ec.SECP521R1()), rsa.generate_private_key(65537, 2048)):
            with self.subTest(type(key).__name__):
                c, key, r = self.attested(key)
                self.assertEqual(r.status, 200, r.body)
                jwe = c.resource("nitride/key/disk")
                self.assertEqual(manual_decrypt(jwe.body, key), SECRET)
                self.assertEqual(kbs_client.decrypt_jwe(jwe.body, key), SECRET)

    def test_p384_passes_attest_and_fails_at_resource(self):
        c, _, r = self.attested(ec.generate_private_key(ec.SECP384R1()))
        self.assertEqual(r.status, 200)
        status, kind, detail = error(c.resource("nitride/key/disk"))
        self.assertEqual((status, kind), (401, "JweError"))
        self.assertIn("curve P-384", detail)
        self.kbs.wait_for(r"refused GET /kbs/v0/resource/nitride/key/disk \[jwe\]")

    def test_bearer_token_without_cookie(self):
        _, key, r = self.attested()
        token = r.json()["token"]
        fresh = self.kbs.client()
        jwe = fresh.resource("nitride/key/disk", bearer=token)
        self.assertEqual(manual_decrypt(jwe.body, key), SECRET)
        for bad in (token[:-3] + "abc", kbs_core.TokenSigner(None, 60).issue({"submods": {}})):
            status, kind, _ = error(fresh.resource("nitride/key/disk", bearer=bad))
            self.assertEqual((status, kind), (401, "TokenVerifierError"))
        status, kind, _ = error(fresh.resource("nitride/key/disk"))
        self.assertEqual((status, kind), (401, "TokenNotFound"))

    def test_token_carries_the_claims(self):
        _, _, r = self.attested()
        payload = json.loads(kbs_core.b64url_decode(r.json()["token"].split(".")[1], "payload"))
        ev = payload["submods"]["cpu0"]["ear.veraison.annotated-evidence"]
        self.assertEqual(ev["snp"]["measurement"], self.attester.fields.measurement.hex())
        self.assertEqual(ev["runtime_data_claims"]["tee-pubkey"]["kty"], "EC")
        self.assertNotIn("additional-evidence", ev["runtime_data_claims"])
        self.assertGreater(payload["exp"], payload["iat"])

    def test_second_attest_returns_the_old_token_unchecked(self):
        c, key, r = self.attested()
        first = r.json()["token"]
        other_key = ec.generate_private_key(ec.SECP256R1())
        garbage = kbs_client.attestation("wrong nonce", kbs_client.tee_pubkey(other_key), {"not": "evidence"})
        again = c.attest(garbage)
        self.assertEqual(again.status, 200)
        self.assertEqual(again.json()["token"], first)
        self.kbs.wait_for(r"already attested: old token returned")
        # The released secret is still for the first key only.
        jwe = c.resource("nitride/key/disk")
        self.assertEqual(manual_decrypt(jwe.body, key), SECRET)
        with self.assertRaises(Exception):
            manual_decrypt(jwe.body, other_key)
        # A malformed second message is still refused (parsed before the session).
        status, _, _ = error(c.request("POST", "/kbs/v0/attest", b"{}"))
        self.assertEqual(status, 401)

    def test_admin_upload_and_delete(self):
        admin = self.kbs.client()
        path = "/kbs/v0/resource/owner/secret/one"
        for auth in (None, "Bearer wrong", "Basic " + ADMIN_TOKEN):
            with self.subTest(auth=auth):
                headers = {"Authorization": auth} if auth else {}
                status, kind, _ = error(admin.request("POST", path, b"v1", headers))
                self.assertEqual((status, kind), (401, "AdminAuthInitialization"))
                self.kbs.wait_for(r"refused POST /kbs/v0/resource/owner/secret/one \[admin-auth\]")
        r = admin.request("POST", path, b"v1", {"Authorization": f"Bearer {ADMIN_TOKEN}"})
        self.assertEqual((r.status, r.body), (200, b""))
        c, key, _ = self.attested()
        self.assertEqual(manual_decrypt(c.resource("owner/secret/one").body, key), b"v1")
        pem = self.admin_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        jwt_header = {"Authorization": "Bearer " + kbs_client.admin_jwt(pem)}
        self.assertEqual(admin.request("POST", path, b"v2", jwt_header).status, 200)
        self.assertEqual(manual_decrypt(c.resource("owner/secret/one").body, key), b"v2")
        self.assertEqual(admin.request("DELETE", path, None, jwt_header).status, 200)
        status, kind, _ = error(c.resource("owner/secret/one"))
        self.assertEqual((status, kind), (401, "PluginInternalError"))
        self.kbs.wait_for(r"refused GET /kbs/v0/resource/owner/secret/one \[resource-missing\]")
        status, kind, _ = error(admin.request("POST", "/kbs/v0/resource/owner/bad", b"x", {"Authorization": f"Bearer {ADMIN_TOKEN}"}))
        self.assertEqual((status, kind), (401, "PluginInternalError"))

    def test_owner_upload_tool(self):
        f = os.path.join(self.tmp.name, "upload.bin")
        with open(f, "wb") as out:
            out.write(b"from the tool")
        token_file = os.path.join(self.tmp.name, "admin-token")
        run = subprocess.run(
            [sys.executable, os.path.join(HERE, "kbs_client.py"), "upload", "--kbs", self.kbs.url, "--admin-token-file", token_file, "owner/tool/one", f],
            capture_output=True,
            text=True,
        )
        self.assertEqual(run.returncode, 0, run.stderr)
        c, key, _ = self.attested()
        self.assertEqual(manual_decrypt(c.resource("owner/tool/one").body, key), b"from the tool")
        run = subprocess.run(
            [sys.executable, os.path.join(HERE, "kbs_client.py"), "upload", "--kbs", self.kbs.url, "--admin-token", "nope", "owner/tool/one", f],
            capture_output=True,
            text=True,
        )
        self.assertEqual(run.returncode, 1)
        self.assertIn("refused with HTTP 401: failed to initialize [admin] configuration: Admin access denied", run.stderr)

    def test_event_log(self):
        self.attested()
        self.kbs.wait_for(r"ok POST /kbs/v0/attest")
        with open(self.events) as f:
            events = [json.loads(line) for line in f]
        self.assertTrue(any(e["event"] == "ok" and e["path"] == "/kbs/v0/attest" for e in events))


class Refusals(KbsServerTest):
    """Every refusal the provisioning tests rely on, with its log line."""

    def test_wrong_measurement(self):
        c, _, r = self.attested(fields=_with(self.attester.fields, measurement=b"\x99" * 48))
        self.assertEqual(r.status, 200)  # policy is checked at /resource, as in trustee
        status, kind, detail = error(c.resource("nitride/key/disk"))
        self.assertEqual((status, kind), (401, "PolicyDeny"))
        self.assertIn("99" * 48 + " is not in the allow-list", detail)
        self.kbs.wait_for(r"refused GET /kbs/v0/resource/nitride/key/disk \[policy-measurement\]")

    def test_debug_policy(self):
        c, _, r = self.attested(fields=_with(self.attester.fields, policy=0x30000 | 1 << 19))
        self.assertEqual(r.status, 200)
        status, kind, detail = error(c.resource("nitride/key/disk"))
        self.assertEqual((status, kind), (401, "PolicyDeny"))
        self.kbs.wait_for(r"\[policy-debug\] Access denied by policy: the guest policy allows debugging")

    def test_old_tcb(self):
        old = Tcb(bootloader=9, tee=0, snp=22, microcode=72)
        attester = Attester(self.chain, _with(self.attester.fields, reported_tcb=old))
        c = self.kbs.client()
        nonce = c.auth().json()["nonce"]
        self.assertEqual(c.attest(attester.message(nonce, ec.generate_private_key(ec.SECP256R1()))).status, 200)
        status, kind, detail = error(c.resource("nitride/key/disk"))
        self.assertEqual((status, kind), (401, "PolicyDeny"))
        self.assertIn("REPORTED_TCB snp is 22, below the minimum 23", detail)
        self.kbs.wait_for(r"\[policy-tcb\]")

    def test_nonce_mismatch(self):
        c = self.kbs.client()
        c.auth()
        other = self.kbs.client().auth().json()["nonce"]
        # Evidence and runtime data both made for another session's nonce.
        body = self.attester.message(other, ec.generate_private_key(ec.SECP256R1()))
        status, kind, detail = error(c.attest(body))
        self.assertEqual((status, kind), (401, "AttestationError"))
        self.assertIn("the nonce in the handshake session is different", detail)
        self.kbs.wait_for(r"refused POST /kbs/v0/attest \[nonce-mismatch\]")

    def test_report_data_for_another_nonce(self):
        c = self.kbs.client()
        nonce = c.auth().json()["nonce"]
        other = self.kbs.client().auth().json()["nonce"]
        key = ec.generate_private_key(ec.SECP256R1())
        body = self.attester.message(other, key)
        body["runtime-data"]["nonce"] = nonce  # the relay fixes up the nonce only
        self.assertEqual(error(c.attest(body))[0], 401)
        self.kbs.wait_for(r"refused POST /kbs/v0/attest \[report-data\] .*Report Data Mismatch")

    def test_relay_alters_the_jwk(self):
        c = self.kbs.client()
        nonce = c.auth().json()["nonce"]
        body = self.attester.message(nonce, ec.generate_private_key(ec.SECP256R1()))
        body["runtime-data"]["tee-pubkey"] = kbs_client.tee_pubkey(ec.generate_private_key(ec.SECP256R1()))
        self.assertEqual(error(c.attest(body))[0], 401)
        self.kbs.wait_for(r"refused POST /kbs/v0/attest \[report-data\]")
        self.assertEqual(error(c.resource("nitride/key/disk"))[1], "TokenNotFound")

    def test_relay_alters_the_runtime_data(self):
        key = ec.generate_private_key(ec.SECP256R1())
        for name, change in (
            ("alg", lambda m: m["runtime-data"]["tee-pubkey"].__setitem__("alg", "ECDH-ES+A128KW")),
            ("crv", lambda m: m["runtime-data"]["tee-pubkey"].__setitem__("crv", "P-521")),
            ("x", lambda m: m["runtime-data"]["tee-pubkey"].__setitem__("x", m["runtime-data"]["tee-pubkey"]["y"])),
        ):
            with self.subTest(name):
                c = self.kbs.client()
                nonce = c.auth().json()["nonce"]
                body = self.attester.message(nonce, key)
                change(body)
                self.assertEqual(error(c.attest(body))[0], 401)
                self.kbs.wait_for(r"refused POST /kbs/v0/attest \[report-data\]")

    def test_unknown_jwk_members_are_dropped_before_hashing(self):
        key = ec.generate_private_key(ec.SECP256R1())
        sent = dict(kbs_client.tee_pubkey(key), use="enc", kid="vault-1")
        c, _, r = self.attested(key, jwk_sent=sent)
        self.assertEqual(r.status, 200)  # hashed without use/kid, as trustee does
        self.assertEqual(manual_decrypt(c.resource("nitride/key/disk").body, key), SECRET)
        # Hashing the members trustee drops does not match.
        c = self.kbs.client()
        nonce = c.auth().json()["nonce"]
        body = self.attester.message(nonce, key, jwk_sent=sent, jwk_hashed=sent)
        self.assertEqual(error(c.attest(body))[0], 401)
        self.kbs.wait_for(r"\[report-data\]")

    def test_a_refused_attest_can_be_retried_on_the_same_session(self):
        c = self.kbs.client()
        nonce = c.auth().json()["nonce"]
        key = ec.generate_private_key(ec.SECP256R1())
        bad = self.attester.message(nonce, key, fields=_with(self.attester.fields, vmpl=1))
        self.assertEqual(error(c.attest(bad))[0], 401)
        self.kbs.wait_for(r"\[vmpl\]")
        self.assertEqual(c.attest(self.attester.message(nonce, key)).status, 200)
        self.assertEqual(manual_decrypt(c.resource("nitride/key/disk").body, key), SECRET)

    def test_additional_evidence_and_init_data(self):
        c = self.kbs.client()
        nonce = c.auth().json()["nonce"]
        body = self.attester.message(nonce, ec.generate_private_key(ec.SECP256R1()))
        body["tee-evidence"]["additional_evidence"] = "{}"
        self.assertEqual(error(c.attest(body))[0], 401)
        self.kbs.wait_for(r"\[additional-evidence\]")
        body["tee-evidence"]["additional_evidence"] = ""
        body["init-data"] = {"format": "toml", "body": "x"}
        self.assertEqual(error(c.attest(body))[0], 401)
        self.kbs.wait_for(r"\[init-data\]")

    def test_evidence_refusals(self):
        f = self.attester.fields
        stranger = testchain.shared_chain("genoa", 2048)
        s_vcek, s_key = stranger.endorsement_key(f.reported_tcb, f.chip_id)
        cases = {
            "vmpl": dict(fields=_with(f, vmpl=1)),
            "report-version": dict(fields=_with(f, version=2)),
            "report-signature": dict(fields=_with(f, reserved_pokes=[(0x208, 1)])),
            "chain": dict(certs=[("VCEK", testchain.der(s_vcek))], key=s_key),
            "cert-chain-missing": dict(certs=None),
        }
        for code, kw in cases.items():
            with self.subTest(code):
                if code == "cert-chain-missing":
                    c = self.kbs.client()
                    nonce = c.auth().json()["nonce"]
                    key = ec.generate_private_key(ec.SECP256R1())
                    body = self.attester.message(nonce, key)
                    body["tee-evidence"]["primary_evidence"]["cert_chain"] = None
                    self.assertEqual(error(c.attest(body))[0], 401)
                    self.kbs.wait_for(r"\[cert-chain-missing\]")
                else:
                    self.refused_at_attest(code, **kw)

    def test_real_amd_reports(self):
        vectors = testchain.vectors_dir()
        for name, code in (("genoa-v3-routex", "report-data"), ("milan-v3-vlek-trustee", "vmpl"), ("milan-v2-virtee", "report-version")):
            with self.subTest(name):
                d = os.path.join(vectors, name)
                with open(os.path.join(d, "report.bin"), "rb") as fh:
                    raw = fh.read()
                kind = "VLEK" if os.path.exists(os.path.join(d, "vlek.der")) else "VCEK"
                with open(os.path.join(d, kind.lower() + ".der"), "rb") as fh:
                    cert = fh.read()
                c = self.kbs.client()
                nonce = c.auth().json()["nonce"]
                body = kbs_client.attestation(nonce, kbs_client.tee_pubkey(ec.generate_private_key(ec.SECP256R1())), kbs_snp.evidence_json(raw, [(kind, cert)]))
                self.assertEqual(error(c.attest(body))[0], 401)
                self.kbs.wait_for(rf"\[{code}\]")


class Protocol(KbsServerTest):
    def test_auth_answer_and_cookie(self):
        c = self.kbs.client()
        before = time.time()
        r = c.auth()
        self.assertEqual((r.status, r.header("Content-Type")), (200, "application/json"))
        self.assertEqual(list(r.json()), ["nonce", "extra-params"])
        self.assertRegex(r.body.decode(), r'^\{"nonce":"[A-Za-z0-9+/]{43}=","extra-params":""\}$')
        m = re.fullmatch(r"kbs-session-id=([0-9a-f]{32}); Expires=(.+ GMT)", r.header("Set-Cookie"))
        self.assertIsNotNone(m, r.header("Set-Cookie"))
        expires = email.utils.parsedate_to_datetime(m.group(2)).timestamp()
        self.assertTrue(before + 299 <= expires <= time.time() + 301, expires - before)

    def test_version_check(self):
        for version, ok in (("0.4.0", True), ("0.4.0+build", True), ("0.4", False), ("v0.4.0", False), ("0.4.0-rc1", False), ("0.3.0", False), ("0.5.0", False)):
            with self.subTest(version):
                r = self.kbs.client().auth(version=version)
                if ok:
                    self.assertEqual(r.status, 200)
                else:
                    status, kind, detail = error(r)
                    self.assertEqual((status, kind), (401, "AttestationError"))
                    self.assertTrue(detail.startswith("Attestation error: RCAR handshake Auth failed: "), detail)
                    self.kbs.wait_for(r"refused POST /kbs/v0/auth \[protocol-version\]")
        detail = error(self.kbs.client().auth(version="0.3.0"))[2]
        self.assertEqual(
            detail,
            "Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: expect =0.4.0 while the request is 0.3.0",
        )

    def test_auth_request_errors(self):
        c = self.kbs.client()
        for body, code in (
            (b"not json", "request-format"),
            (b'{"version":"0.4.0","tee":"snp"}', "request-format"),
            (b'{"version":"0.4.0","tee":"snp","extra-params":"","tee":"snp"}', "request-format"),
            (b'{"version":"0.4.0","tee":"bogus","extra-params":""}', "request-format"),
            (b'{"version":"0.4.0","tee":"tdx","extra-params":""}', "tee-unsupported"),
        ):
            with self.subTest(body=body):
                self.assertEqual(error(c.request("POST", "/kbs/v0/auth", body))[0], 401)
                self.kbs.wait_for(rf"refused POST /kbs/v0/auth \[{code}\]")

    def test_attest_needs_the_session_cookie(self):
        c = self.kbs.client()
        nonce = c.auth().json()["nonce"]
        body = json.dumps(self.attester.message(nonce, ec.generate_private_key(ec.SECP256R1()))).encode()
        status, kind, detail = error(c.request("POST", "/kbs/v0/attest", body, send_cookie=False))
        self.assertEqual((status, kind), (401, "AttestationError"))
        self.assertIn("cookie not found", detail)
        status, _, detail = error(c.request("POST", "/kbs/v0/attest", body, {"Cookie": "kbs-session-id=" + "0" * 32}, send_cookie=False))
        self.assertIn("session not found", detail)
        self.assertEqual(c.request("POST", "/kbs/v0/attest", body).status, 200)

    def test_404_only_for_unknown_paths(self):
        c = self.kbs.client()
        for method, path in (("GET", "/kbs/v0/nothing"), ("GET", "/kbs/v0/auth"), ("GET", "/kbs/v0/attest"), ("POST", "/kbs/v0/"), ("GET", "/kbs/v0/attestation-policy")):
            with self.subTest(path=path, method=method):
                status, kind, detail = error(c.request(method, path, b"" if method == "POST" else None))
                self.assertEqual((status, kind), (404, "PluginNotFound"))
        for path in ("/", "/kbs/v0", "/kbs/v1/auth", "/healthz"):
            with self.subTest(path=path):
                r = c.request("GET", path)
                self.assertEqual((r.status, r.body), (404, b""))
        # Every refusal under a known plugin is 401.
        for method, path in (("GET", "/kbs/v0/resource/a/b/c"), ("GET", "/kbs/v0/resource/a/b"), ("PUT", "/kbs/v0/resource/a/b/c"), ("DELETE", "/kbs/v0/resource/a/b/c")):
            with self.subTest(path=path, method=method):
                self.assertEqual(error(c.request(method, path, b"" if method == "PUT" else None))[0], 401)
        self.assertEqual(c.request("PATCH", "/kbs/v0/resource/a/b/c").status, 405)

    def test_bad_resource_path_after_attestation(self):
        c, _, _ = self.attested()
        for path in ("nitride/key", "nitride/key/disk/extra", ".hidden/key/disk"):
            with self.subTest(path):
                status, kind, _ = error(c.resource(path))
                self.assertEqual((status, kind), (401, "PluginInternalError"))
        self.kbs.wait_for(r"\[resource-path\]")
        self.assertEqual(c.resource("nitride/key/disk?x=1").status, 200)

    def test_resources_dir_and_startup_log(self):
        self.kbs.saw(r"kbs: ignored .*resources/README")
        self.kbs.saw(r"kbs: resources: nitride/key/disk$")
        self.kbs.saw(r"kbs: root development \(genoa\): ARK [0-9a-f]{64}")
        self.kbs.saw(r"kbs: root amd-milan: ARK 69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd")
        self.kbs.saw(r"kbs: admin: bearer token, 1 JWT key\(s\)")


class Faults(KbsServerTest):
    extra_args = ("--fault-503", "2", "--fault-delay", "0.3")

    def test_injected_503_then_service(self):
        c = self.kbs.client()
        for _ in range(2):
            r = c.auth()
            self.assertEqual((r.status, r.body), (503, b"injected fault (--fault-503)"))
            self.kbs.wait_for(r"fault POST /kbs/v0/auth -> 503")
        t0 = time.monotonic()
        self.assertEqual(c.auth().status, 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)
        timeout_client = kbs_client.KbsClient(self.kbs.url, timeout=0.1)
        with self.assertRaises(OSError):
            timeout_client.auth()


class Expiry(KbsServerTest):
    extra_args = ("--session-seconds", "2", "--token-seconds", "2")

    def test_session_and_token_expire(self):
        c = self.kbs.client()
        nonce = c.auth().json()["nonce"]
        key = ec.generate_private_key(ec.SECP256R1())
        late = self.kbs.client()
        late_nonce = late.auth().json()["nonce"]
        r = c.attest(self.attester.message(nonce, key))
        token = r.json()["token"]
        self.assertEqual(c.resource("nitride/key/disk").status, 200)
        time.sleep(3.2)
        # The session is gone: /attest on it, and /resource by its cookie, fail.
        status, _, detail = error(late.attest(self.attester.message(late_nonce, key)))
        self.assertIn("session not found", detail)
        self.assertEqual(error(c.resource("nitride/key/disk"))[1], "TokenNotFound")
        # And the token has expired too.
        self.assertEqual(error(self.kbs.client().resource("nitride/key/disk", bearer=token))[1], "TokenVerifierError")


class Startup(unittest.TestCase):
    def run_kbs(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, KBS_PY, "--port", "0", *args], capture_output=True, text=True, timeout=60)

    def test_refuses_to_start_without_roots_or_measurements(self):
        r = self.run_kbs("--any-measurement")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no trusted root", r.stderr)
        roots = os.path.join(testchain.vectors_dir(), "roots")
        r = self.run_kbs("--roots", roots)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("no measurement is allowed", r.stderr)
        r = self.run_kbs("--roots", roots, "--any-measurement", "--host", "0.0.0.0")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("not a loopback address", r.stderr)

    def test_policy_file(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "policy.json")
            with open(p, "w") as f:
                json.dump({"measurements": ["00" * 48], "min_tcb": {"snp": 23}, "bogus": 1}, f)
            r = self.run_kbs("--roots", os.path.join(testchain.vectors_dir(), "roots"), "--policy", p)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("unknown policy member(s) ['bogus']", r.stderr)


if __name__ == "__main__":
    unittest.main()
