"""The SNP evidence checks of the test KBS (kbs_snp.py): real AMD reports, the sev serde
layout and its byte encoding, the chain, the signature, TCB/hwID and every refusal."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import unittest

from cryptography.hazmat.primitives.asymmetric import ec

import kbs_snp
import testchain
from kbs_snp import Refusal
from testchain import ReportFields, Tcb

VECTORS = testchain.vectors_dir()


def vector(name: str) -> tuple[bytes, str, bytes, dict]:
    d = os.path.join(VECTORS, name)
    with open(os.path.join(d, "report.bin"), "rb") as f:
        raw = f.read()
    ek = "vlek.der" if os.path.exists(os.path.join(d, "vlek.der")) else "vcek.der"
    with open(os.path.join(d, ek), "rb") as f:
        cert = f.read()
    with open(os.path.join(d, "expected.json")) as f:
        expected = json.load(f)
    return raw, ek[:4].upper(), cert, expected


def vector_names() -> list[str]:
    return sorted(n for n in os.listdir(VECTORS) if os.path.exists(os.path.join(VECTORS, n, "report.bin")))


def amd_store() -> kbs_snp.TrustStore:
    s = kbs_snp.TrustStore()
    s.add_amd_roots(os.path.join(VECTORS, "roots"))
    return s


def refusal(fn, *args) -> Refusal:
    try:
        fn(*args)
    except Refusal as e:
        return e
    raise AssertionError(f"{fn.__name__} accepted")


class AmdVectors(unittest.TestCase):
    """The seven real reports: each decodes and re-encodes to its own bytes, chains to
    AMD's root of its generation and carries a valid signature; the full verdict
    refuses each at a named check, since none was made for this KBS's nonce."""

    # Where the whole verdict stops for each vector, and why.
    EXPECTED_REFUSAL = {
        "genoa-v3-azure-trustee": "report-data",  # VMPL 0; REPORT_DATA is Azure's, not our runtime data
        "genoa-v3-routex": "report-data",
        "milan-v2-go-sev-guest": "report-version",  # version 2: trustee accepts 3 to 5
        "milan-v2-trustee": "report-version",
        "milan-v2-virtee": "report-version",
        "milan-v3-routex": "report-data",
        "milan-v3-vlek-trustee": "vmpl",  # VMPL 1
    }

    def test_every_vector_is_classified(self):
        self.assertEqual(sorted(self.EXPECTED_REFUSAL), vector_names())

    def test_serde_round_trip_is_byte_exact(self):
        for name in vector_names():
            with self.subTest(name):
                raw, _, _, expected = vector(name)
                report = kbs_snp.decode_report(raw)
                wire = json.loads(json.dumps(kbs_snp.report_to_serde(report)))
                self.assertEqual(kbs_snp.encode_report(kbs_snp.parse_report(wire)), raw)
                self.assertEqual(report["vmpl"], expected["vmpl"])
                self.assertEqual(report["measurement"].hex(), expected["measurement"])
                self.assertEqual(report["report_data"].hex(), expected["report_data"])
                self.assertEqual(report["chip_id"].hex(), expected["chip_id"])
                for k in ("bootloader", "tee", "snp", "microcode"):
                    self.assertEqual(report["reported_tcb"][k], expected["reported_tcb"][k], k)

    def test_chain_and_signature_verify(self):
        store = amd_store()
        for name in vector_names():
            with self.subTest(name):
                raw, kind, cert, expected = vector(name)
                e = kbs_snp.verify_chain(store, expected["generation"].lower(), [(kind, cert)])
                self.assertEqual((e.vek_type, e.root), (kind, "amd-" + expected["generation"].lower()))
                report = kbs_snp.decode_report(raw)
                kbs_snp.verify_report_signature(e.vek, kbs_snp.encode_report(report))
                kbs_snp.verify_report_tcb(report, e, expected["generation"].lower())

    def test_whole_verdict_refuses_each_at_the_named_check(self):
        store = amd_store()
        for name in vector_names():
            with self.subTest(name):
                raw, kind, cert, _ = vector(name)
                ev = kbs_snp.evidence_json(raw, [(kind, cert)])
                e = refusal(kbs_snp.verify_evidence, store, ev, hashlib.sha384(b"our runtime data").digest())
                self.assertEqual(e.code, self.EXPECTED_REFUSAL[name], e.message)

    def test_vmpl0_vector_passes_with_its_own_report_data(self):
        # With REPORT_DATA as expected, a VMPL0 v3 report passes every check.
        store = amd_store()
        raw, kind, cert, _ = vector("genoa-v3-routex")
        ev = kbs_snp.evidence_json(raw, [(kind, cert)])
        v = kbs_snp.verify_evidence(store, ev, raw[0x50:0x90])
        self.assertEqual((v.generation, v.endorsement.root), ("genoa", "amd-genoa"))

    def test_vector_with_full_chain_in_evidence(self):
        store = amd_store()
        raw, kind, cert, _ = vector("milan-v3-vlek-trustee")
        roots = os.path.join(VECTORS, "roots")
        with open(os.path.join(roots, "milan-asvk.pem"), "rb") as f:
            asvk = f.read()
        with open(os.path.join(roots, "milan-ark.pem"), "rb") as f:
            ark = f.read()
        ev = kbs_snp.evidence_json(raw, [("VLEK", cert), ("ASK", asvk), ("ARK", ark)])
        self.assertEqual(refusal(kbs_snp.verify_evidence, store, ev, b"").code, "vmpl")

    def test_flipped_bit_in_a_signed_field_breaks_the_signature(self):
        store = amd_store()
        raw, kind, cert, _ = vector("genoa-v3-routex")
        ev = kbs_snp.evidence_json(raw, [(kind, cert)])
        ev["attestation_report"]["measurement"][0] ^= 1
        self.assertEqual(refusal(kbs_snp.verify_evidence, store, ev, raw[0x50:0x90]).code, "report-signature")

    def test_swapped_endorsement_key_breaks_the_signature(self):
        store = amd_store()
        raw, _, _, _ = vector("genoa-v3-routex")
        _, _, other, _ = vector("genoa-v3-azure-trustee")
        ev = kbs_snp.evidence_json(raw, [("VCEK", other)])
        self.assertEqual(refusal(kbs_snp.verify_evidence, store, ev, raw[0x50:0x90]).code, "report-signature")

    def test_root_of_the_wrong_generation_is_refused(self):
        store = kbs_snp.TrustStore()
        roots = os.path.join(VECTORS, "roots")
        # A store whose Genoa slot holds Milan's certificates.
        store.anchors.append(
            kbs_snp.Anchor(
                label="milan-as-genoa",
                generation="genoa",
                ark=kbs_snp._load_pem_file(os.path.join(roots, "milan-ark.pem"), "ARK"),
                ask=kbs_snp._load_pem_file(os.path.join(roots, "milan-ask.pem"), "ASK"),
            )
        )
        raw, kind, cert, _ = vector("genoa-v3-routex")
        e = refusal(kbs_snp.verify_evidence, store, kbs_snp.evidence_json(raw, [(kind, cert)]), raw[0x50:0x90])
        self.assertEqual(e.code, "chain")
        # And a Genoa report with only Milan roots loaded has no root at all.
        only_milan = kbs_snp.TrustStore()
        only_milan.anchors = [a for a in amd_store().anchors if a.generation == "milan"]
        e = refusal(kbs_snp.verify_evidence, only_milan, kbs_snp.evidence_json(raw, [(kind, cert)]), b"")
        self.assertEqual(e.code, "chain")
        self.assertIn("no trusted root is configured for Genoa", e.message)


class Codec(unittest.TestCase):
    """The serde form and the 0x4A0 bytes, against reports testchain.py writes at
    REFERENCE.md's offsets (no shared code)."""

    def test_fields_land_at_reference_offsets(self):
        f = ReportFields(
            version=5,
            guest_svn=7,
            policy=0x30000 | (1 << 19),
            vmpl=2,
            report_data=bytes(range(64)),
            launch_mit_vector=0x1122334455667788,
            current_mit_vector=0x99,
            current_version=(1, 2, 3),
        )
        raw = bytes(testchain.build_report(f))
        r = kbs_snp.decode_report(raw)
        self.assertEqual(
            (r["version"], r["guest_svn"], r["policy"], r["vmpl"], r["report_data"]),
            (5, 7, 0x30000 | (1 << 19), 2, bytes(range(64))),
        )
        self.assertEqual((r["launch_mit_vector"], r["current_mit_vector"]), (0x1122334455667788, 0x99))
        self.assertEqual(r["current"], {"major": 1, "minor": 2, "build": 3})
        self.assertEqual((r["cpuid_fam_id"], r["cpuid_mod_id"], r["cpuid_step"]), (0x19, 0x11, 0x01))
        self.assertEqual(kbs_snp.encode_report(r), raw)

    def test_version3_has_no_mitigation_vectors(self):
        r = kbs_snp.decode_report(bytes(testchain.build_report(ReportFields(version=3))))
        self.assertIsNone(r["launch_mit_vector"])
        s = kbs_snp.report_to_serde(r)
        self.assertIsNone(s["launch_mit_vector"])
        # A v3 report's mitigation vectors are not encoded even when given.
        r["launch_mit_vector"] = 5
        self.assertEqual(kbs_snp.encode_report(r)[0x1F8:0x200], bytes(8))

    def test_turin_tcb_layout(self):
        tcb = Tcb(bootloader=1, tee=2, snp=3, microcode=4, fmc=5)
        raw = bytes(testchain.build_report(ReportFields(reported_tcb=tcb), "turin"))
        self.assertEqual(raw[0x180:0x188], bytes([5, 1, 2, 3, 0, 0, 0, 4]))
        r = kbs_snp.decode_report(raw)
        self.assertEqual(r["reported_tcb"], {"fmc": 5, "bootloader": 1, "tee": 2, "snp": 3, "microcode": 4})
        self.assertEqual(kbs_snp.encode_report(r), raw)

    def test_serde_field_order_and_shapes(self):
        s = kbs_snp.report_to_serde(kbs_snp.decode_report(bytes(testchain.build_report(ReportFields()))))
        self.assertEqual(list(s), [name for name, _ in kbs_snp.REPORT_FIELDS])
        self.assertEqual(list(s["current_tcb"]), ["fmc", "bootloader", "tee", "snp", "microcode"])
        self.assertEqual(list(s["current"]), ["major", "minor", "build"])
        self.assertEqual(list(s["signature"]), ["r", "s"])
        self.assertEqual(len(s["signature"]["r"]), 72)
        self.assertIsInstance(s["policy"], int)
        self.assertIsInstance(s["plat_info"], int)
        self.assertIsInstance(s["key_info"], int)
        self.assertEqual(len(s["report_data"]), 64)

    def test_reserved_bytes_are_not_in_the_serde_form(self):
        f = ReportFields(reserved_pokes=[(0x04C, 1), (0x18B, 2), (0x1EB, 3), (0x208, 4)])
        raw = bytes(testchain.build_report(f))
        rebuilt = kbs_snp.encode_report(kbs_snp.decode_report(raw))
        for off in (0x04C, 0x18B, 0x1EB, 0x208):
            self.assertNotEqual(raw[off], rebuilt[off])
            self.assertEqual(rebuilt[off], 0)


def _parse_err(mutate) -> Refusal:
    ev = kbs_snp.evidence_json(bytes(testchain.build_report(ReportFields())), [])
    mutate(ev)
    return refusal(kbs_snp.parse_evidence, ev)


class EvidenceFormat(unittest.TestCase):
    """What serde refuses, this KBS refuses (and what serde ignores, it ignores)."""

    def test_type_and_range_errors(self):
        cases = {
            "float": lambda ev: ev["attestation_report"].__setitem__("vmpl", 0.0),
            "bool": lambda ev: ev["attestation_report"].__setitem__("vmpl", False),
            "negative": lambda ev: ev["attestation_report"].__setitem__("guest_svn", -1),
            "u32 overflow": lambda ev: ev["attestation_report"].__setitem__("version", 1 << 32),
            "byte 256": lambda ev: ev["attestation_report"]["measurement"].__setitem__(0, 256),
            "short array": lambda ev: ev["attestation_report"]["report_data"].pop(),
            "long array": lambda ev: ev["attestation_report"]["chip_id"].append(0),
            "hex string": lambda ev: ev["attestation_report"].__setitem__("measurement", "00" * 48),
            "missing field": lambda ev: ev["attestation_report"].pop("chip_id"),
            "null non-option": lambda ev: ev["attestation_report"].__setitem__("policy", None),
            "tcb missing member": lambda ev: ev["attestation_report"]["reported_tcb"].pop("snp"),
            "signature short": lambda ev: ev["attestation_report"]["signature"]["r"].pop(),
            "unknown cert type": lambda ev: ev.__setitem__("cert_chain", [{"cert_type": "PEK", "data": []}]),
            "cert data not bytes": lambda ev: ev.__setitem__("cert_chain", [{"cert_type": "VCEK", "data": [300]}]),
            "no report": lambda ev: ev.pop("attestation_report"),
        }
        for name, mutate in cases.items():
            with self.subTest(name):
                self.assertEqual(_parse_err(mutate).code, "evidence-format")

    def test_options_absent_or_null_and_unknown_members_ignored(self):
        ev = kbs_snp.evidence_json(bytes(testchain.build_report(ReportFields())), [])
        ev["attestation_report"].pop("launch_mit_vector")
        ev["attestation_report"]["current_mit_vector"] = None
        ev["attestation_report"]["reported_tcb"].pop("fmc")
        ev["attestation_report"]["extra"] = 1
        ev["cert_chain"].append({"cert_type": {"OTHER": "00000000-0000-0000-0000-000000000001"}, "data": [1]})
        ev["cert_chain"].append({"cert_type": "CRL", "data": [1, 2]})
        parsed = kbs_snp.parse_evidence(ev)
        self.assertIsNone(parsed.report["launch_mit_vector"])
        self.assertIsNone(parsed.report["reported_tcb"]["fmc"])
        self.assertEqual(parsed.cert_chain, [])
        self.assertEqual(parsed.ignored, ["attestation_report.extra"])

    def test_null_or_absent_chain(self):
        ev = kbs_snp.evidence_json(bytes(testchain.build_report(ReportFields())), None)
        self.assertIsNone(kbs_snp.parse_evidence(ev).cert_chain)
        ev.pop("cert_chain")
        self.assertIsNone(kbs_snp.parse_evidence(ev).cert_chain)


class DevChainVerdicts(unittest.TestCase):
    """Every check, on evidence made with a throwaway chain."""

    @classmethod
    def setUpClass(cls):
        cls.chain = testchain.shared_chain("genoa")
        cls.store = kbs_snp.TrustStore()
        cls.store.anchors.append(
            kbs_snp.Anchor("development", "genoa", cls.chain.ark, cls.chain.ask, cls.chain.asvk)
        )
        cls.fields = ReportFields(report_data=b"\x42" * 48 + bytes(16))
        cls.vcek, cls.vcek_key = cls.chain.endorsement_key(cls.fields.reported_tcb, cls.fields.chip_id)

    def evidence(self, fields=None, key=None, certs=None, generation="genoa"):
        raw = testchain.sign_report(testchain.build_report(fields or self.fields, generation), key or self.vcek_key)
        return kbs_snp.evidence_json(raw, certs if certs is not None else [("VCEK", testchain.der(self.vcek))])

    def verdict(self, ev, expected=b"\x42" * 48, store=None):
        return kbs_snp.verify_evidence(store or self.store, ev, expected)

    def code(self, ev, expected=b"\x42" * 48, store=None) -> str:
        return refusal(self.verdict, ev, expected, store).code

    def test_genuine_report_passes(self):
        v = self.verdict(self.evidence())
        self.assertEqual((v.endorsement.vek_type, v.endorsement.root), ("VCEK", "development"))
        c = kbs_snp.claims(v)
        self.assertEqual(c["measurement"], bytes(range(48)).hex())
        self.assertFalse(c["policy_debug_allowed"])
        self.assertEqual(c["reported_tcb_snp"], 23)

    def test_full_chain_in_evidence(self):
        certs = [("VCEK", testchain.der(self.vcek)), ("ASK", testchain.der(self.chain.ask)), ("ARK", testchain.der(self.chain.ark))]
        self.verdict(self.evidence(certs=certs))
        pem_certs = [("VCEK", testchain.pem(self.vcek))]
        self.verdict(self.evidence(certs=pem_certs))

    def test_report_versions(self):
        for version, ok in ((2, False), (3, True), (4, True), (5, True), (6, False)):
            with self.subTest(version=version):
                ev = self.evidence(_with(self.fields, version=version))
                if ok:
                    self.verdict(ev)
                else:
                    self.assertEqual(self.code(ev), "report-version")

    def test_vmpl_other_than_zero(self):
        for vmpl in (1, 2, 3):
            self.assertEqual(self.code(self.evidence(_with(self.fields, vmpl=vmpl))), "vmpl")

    def test_report_data_must_bind_the_runtime_data(self):
        self.assertEqual(self.code(self.evidence(), expected=b"\x43" * 48), "report-data")
        # The expected digest is zero-padded to 64 bytes: a report with a non-zero tail fails.
        self.assertEqual(self.code(self.evidence(_with(self.fields, report_data=b"\x42" * 48 + b"\x01" + bytes(15)))), "report-data")

    def test_nonzero_reserved_byte_breaks_a_genuine_report(self):
        for off in (0x04C, 0x18B, 0x1A0 - 1, 0x1EB, 0x1EF, 0x208, 0x29F):
            with self.subTest(offset=hex(off)):
                ev = self.evidence(_with(self.fields, reserved_pokes=[(off, 0x80)]))
                self.assertEqual(self.code(ev), "report-signature")

    def test_signature_by_another_key(self):
        other = ec.generate_private_key(ec.SECP384R1())
        self.assertEqual(self.code(self.evidence(key=other)), "report-signature")

    def test_unknown_root(self):
        stranger = testchain.shared_chain("genoa", 2048)
        vcek, key = stranger.endorsement_key(self.fields.reported_tcb, self.fields.chip_id)
        e = refusal(self.verdict, self.evidence(key=key, certs=[("VCEK", testchain.der(vcek))]))
        self.assertEqual(e.code, "chain")
        # Sending the stranger's own ARK does not help: it is checked against the anchor.
        e = refusal(
            self.verdict,
            self.evidence(key=key, certs=[("VCEK", testchain.der(vcek)), ("ASK", testchain.der(stranger.ask)), ("ARK", testchain.der(stranger.ark))]),
        )
        self.assertIn("provided ARK against the trusted ARK", e.message)

    def test_missing_or_null_chain(self):
        self.assertEqual(self.code(self.evidence(certs=[("ASK", testchain.der(self.chain.ask))])), "chain")
        raw = testchain.sign_report(testchain.build_report(self.fields), self.vcek_key)
        self.assertEqual(self.code(kbs_snp.evidence_json(raw, None)), "cert-chain-missing")

    def test_vcek_signed_with_pkcs1_is_refused(self):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        b = (
            testchain._validity(x509.CertificateBuilder())
            .subject_name(self.vcek.subject)
            .issuer_name(self.chain.ask.subject)
            .public_key(self.vcek_key.public_key())
            .serial_number(5)
        )
        for ext in self.vcek.extensions:
            b = b.add_extension(ext.value, ext.critical)
        pkcs1 = b.sign(self.chain.ask_key, hashes.SHA384())
        e = refusal(self.verdict, self.evidence(certs=[("VCEK", testchain.der(pkcs1))]))
        self.assertEqual(e.code, "chain")
        self.assertIn("not RSASSA-PSS", e.message)

    def test_tcb_extensions_must_equal_reported_tcb(self):
        for comp in ("bootloader", "tee", "snp", "microcode"):
            with self.subTest(comp):
                tcb = _with(self.fields.reported_tcb, **{comp: getattr(self.fields.reported_tcb, comp) + 1})
                vcek, key = self.chain.endorsement_key(tcb, self.fields.chip_id)
                e = refusal(self.verdict, self.evidence(key=key, certs=[("VCEK", testchain.der(vcek))]))
                self.assertEqual(e.code, "tcb-endorsement")
                self.assertIn("version mismatch", e.message)

    def test_hwid_must_equal_chip_id(self):
        vcek, key = self.chain.endorsement_key(self.fields.reported_tcb, self.fields.chip_id, hwid=bytes(64))
        e = refusal(self.verdict, self.evidence(key=key, certs=[("VCEK", testchain.der(vcek))]))
        self.assertEqual((e.code, e.message[:16]), ("tcb-endorsement", "Chip ID mismatch"))
        # hwID wrapped in a DER OCTET STRING is accepted, as trustee reads it.
        wrapped = b"\x04\x40" + self.fields.chip_id
        vcek, key = self.chain.endorsement_key(self.fields.reported_tcb, self.fields.chip_id, hwid=wrapped)
        self.verdict(self.evidence(key=key, certs=[("VCEK", testchain.der(vcek))]))

    def test_missing_or_malformed_tcb_extension(self):
        vcek, key = self.chain.endorsement_key(self.fields.reported_tcb, self.fields.chip_id, omit=("3.3",))
        self.assertEqual(self.code(self.evidence(key=key, certs=[("VCEK", testchain.der(vcek))])), "tcb-endorsement")
        vcek, key = self.chain.endorsement_key(self.fields.reported_tcb, self.fields.chip_id, extra={"3.3": b"\x02\x02\x01\x17"})
        self.assertEqual(self.code(self.evidence(key=key, certs=[("VCEK", testchain.der(vcek))])), "tcb-endorsement")

    def test_vlek_through_asvk(self):
        vlek, key = self.chain.endorsement_key(self.fields.reported_tcb, self.fields.chip_id, kind="VLEK", issuer_key=self.chain.ask_key)
        f = _with(self.fields, key_info=1 << 2)
        v = self.verdict(self.evidence(f, key=key, certs=[("VLEK", testchain.der(vlek))]))
        self.assertEqual(v.endorsement.vek_type, "VLEK")
        # The SIGNING_KEY field must say VLEK.
        self.assertEqual(self.code(self.evidence(key=key, certs=[("VLEK", testchain.der(vlek))])), "signing-key")

    def test_signature_algorithm_field(self):
        self.assertEqual(self.code(self.evidence(_with(self.fields, sig_algo=2))), "signature-algorithm")

    def test_processor_generation(self):
        # Set in the serde form: a client's decoder (sev's) cannot even read these.
        for fam, model in ((0x17, 0x31), (0x19, 0xAF), (0x19, 0x21), (0x1A, 0x12), (None, 0x11), (0x19, None)):
            with self.subTest(fam=fam, model=model):
                ev = self.evidence()
                ev["attestation_report"]["cpuid_fam_id"] = fam
                ev["attestation_report"]["cpuid_mod_id"] = model
                self.assertEqual(self.code(ev), "processor")
        # Genoa's second model range (0xA0..0xAE) is Genoa for trustee.
        ev = self.evidence()
        ev["attestation_report"]["cpuid_mod_id"] = 0xA0
        self.assertEqual(self.code(ev), "report-signature")
        # A Milan report has no Genoa root to chain to here.
        self.assertEqual(self.code(self.evidence(_with(self.fields, cpuid=(0x19, 0x01, 0)))), "chain")

    def test_vcek_must_be_p384(self):
        vcek, key = self.chain.endorsement_key(self.fields.reported_tcb, self.fields.chip_id, curve=ec.SECP256R1())
        self.assertEqual(self.code(self.evidence(key=None, certs=[("VCEK", testchain.der(vcek))])), "chain")


def _with(obj, **changes):
    new = copy.copy(obj)
    for k, v in changes.items():
        setattr(new, k, v)
    return new


if __name__ == "__main__":
    unittest.main()
