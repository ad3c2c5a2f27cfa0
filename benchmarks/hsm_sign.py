"""ECDSA P-256 signing rate: raw python-pkcs11 against idmint's key store.

Prints one JSON document. Everything is measured in this run on a fresh
SoftHSM token, so the ratios compare like with like on this machine:

- ``raw``: python-pkcs11 ``key.sign(digest, mechanism=ECDSA)`` on sessions of
  our own, one per thread, no pool (the floor the key store cannot beat);
- ``keystore``: :meth:`hsm.KeyStore.sign` (pool borrow, cached handle, the
  same mechanism), with 1, 2, 4 and 8 threads;
- ``keystore_der``: the cryptography ABC path (hash, sign, DER-encode) that
  X.509 builders use.

Usage: python benchmarks/hsm_sign.py [--seconds 1.0] [--rounds 3]
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder leads sys.path, and benchmarks/http.py
# would shadow the standard library's ``http`` (prometheus_client imports it).
sys.path[:] = [p for p in sys.path if not p.endswith("benchmarks")]

import argparse
import hashlib
import json
import platform
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, Mechanism, ObjectClass

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.timing import median_rate, rate
from idmint.hsm import KeyStore, KeyType
from idmint.hsm.softhsm import create_token

THREAD_COUNTS = (1, 2, 4, 8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per figure (median)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        token = create_token(Path(scratch), "bench")
        store = KeyStore(token.hsm_config(max_sessions=8))
        key = store.generate(KeyType.EC_P256, "bench-p256")
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        digest = hashlib.sha256(b"benchmark").digest()
        # The same python-pkcs11 token object; the key store's login (per
        # application) covers the raw sessions opened on it below.
        p11_token = store._token
        raw_sessions: list[Any] = []

        def raw_worker() -> Callable[[], object]:
            session = p11_token.open()
            raw_sessions.append(session)
            (raw_key,) = list(
                session.get_objects(
                    {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: key.key_id}
                )
            )
            sign = raw_key.sign
            return lambda: sign(digest, mechanism=Mechanism.ECDSA)

        def store_worker() -> Callable[[], object]:
            sign, key_id = store.sign, key.key_id
            return lambda: sign(key_id, digest, Mechanism.ECDSA)

        def der_worker() -> Callable[[], object]:
            algorithm = ec.ECDSA(hashes.SHA256())
            return lambda: key.sign(b"benchmark", algorithm)

        # Warm up: open pool sessions and cache handles before timing.
        rate(store_worker, 8, 0.2)
        results: dict[str, Any] = {"raw": {}, "keystore": {}, "keystore_der": {}}
        for threads in THREAD_COUNTS:
            results["raw"][str(threads)] = round(
                median_rate(raw_worker, threads, args.seconds, args.rounds)
            )
            results["keystore"][str(threads)] = round(
                median_rate(store_worker, threads, args.seconds, args.rounds)
            )
        results["keystore_der"]["1"] = round(median_rate(der_worker, 1, args.seconds, args.rounds))
        for session in raw_sessions:
            session.close()
        store.close()

    raw_1 = results["raw"]["1"]
    report = {
        "benchmark": "hsm_sign",
        "mechanism": "CKM_ECDSA P-256 (SHA-256 digest computed outside the token)",
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "module": token.module,
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "signatures_per_second": results,
        "ratio_keystore_to_raw": {
            threads: round(results["keystore"][threads] / raw_1, 3)
            for threads in results["keystore"]
        },
        "ratio_keystore_der_to_raw_1": round(results["keystore_der"]["1"] / raw_1, 3),
        "goal": {
            "keystore_1_thread_vs_raw": 0.9,
            "met": results["keystore"]["1"] >= 0.9 * raw_1,
            "no_collapse": min(results["keystore"].values()) >= 0.9 * results["keystore"]["1"],
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
