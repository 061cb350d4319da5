#!/usr/bin/env python3
"""Wall time of the three RCAR requests against a local test KBS (kbs.py as a process),
for README.md's figures: python3 tests/kbs/bench_kbs.py [ROUNDS]."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

import testchain  # noqa: E402
from test_kbs_server import Attester, KbsProcess  # noqa: E402


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    with tempfile.TemporaryDirectory() as d:
        chain = testchain.Chain("genoa")
        chain.write_root_dir(os.path.join(d, "root"))
        attester = Attester(chain)
        with open(os.path.join(d, "secret"), "wb") as f:
            f.write(bytes(64))
        kbs = KbsProcess(
            "--dev-root", os.path.join(d, "root"),
            "--measurement", attester.fields.measurement.hex(),
            "--resource", f"bench/key/one={os.path.join(d, 'secret')}",
        )
        times: dict[str, list[float]] = {"/auth": [], "/attest": [], "/resource": []}
        try:
            for _ in range(rounds):
                c = kbs.client()
                key = ec.generate_private_key(ec.SECP256R1())
                t0 = time.perf_counter()
                nonce = c.auth().json()["nonce"]
                t1 = time.perf_counter()
                message = attester.message(nonce, key)  # the attester's work, not timed
                t2 = time.perf_counter()
                assert c.attest(message).status == 200
                t3 = time.perf_counter()
                assert c.resource("bench/key/one").status == 200
                t4 = time.perf_counter()
                times["/auth"].append(t1 - t0)
                times["/attest"].append(t3 - t2)
                times["/resource"].append(t4 - t3)
        finally:
            kbs.stop()
    for name, v in times.items():
        print(f"{name:10s} median {statistics.median(v) * 1e3:6.1f} ms  min {min(v) * 1e3:6.1f}  max {max(v) * 1e3:6.1f}  (n={len(v)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
