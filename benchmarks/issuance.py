"""In-process SVID issuance rate beside the raw PKCS#11 sign rate, in one run.

Prints one JSON document. On a fresh SoftHSM token and SQLite database (the
embedded default) it measures, each as the median of several rounds:

- ``raw_pkcs11``: python-pkcs11 ``sign(digest, CKM_ECDSA)`` with a P-256 key;
- ``x509_svid``: :meth:`ca.issuer.Issuer.issue_x509` (CSR parse and signature
  check, entry match, certificate build, HSM signature, PEM, record + audit);
- ``jwt_svid``: :meth:`ca.issuer.Issuer.issue_jwt` (claims, JWS, HSM
  signature, record + audit);
- ``peer_python_x509_pkcs11``: that library's ``sign_csr`` on the same token
  and curve, in a subprocess (it re-initialises the PKCS#11 module, which
  would pull the rug from under our sessions if run in this process). Needs
  ``pip install python-x509-pkcs11`` (the ``bench`` extra); reported as
  missing otherwise.

- ``anomaly``: the X509-SVID and JWT-SVID rates with the anomaly response's
  check (ca/anomaly/, default settings) on beside off, in interleaved rounds
  of the same run; every round is reported, and the ratio of the medians.

Each is measured with 1 thread and with 2 (this machine has 2 cores).
Records are committed before each SVID is returned, so their cost
is inside the figures.

Usage: python benchmarks/issuance.py [--seconds 2] [--rounds 3]
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder leads sys.path, and benchmarks/http.py
# would shadow the standard library's ``http`` (prometheus_client imports it).
sys.path[:] = [p for p in sys.path if not p.endswith("benchmarks")]

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, Mechanism, ObjectClass

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.timing import median_rate, rate
from idmint.ca.anomaly.monitor import AnomalyMonitor
from idmint.ca.anomaly.policy import Settings
from idmint.ca.authority.authorities import create_root, ensure_authorities
from idmint.ca.issuance.entries import EntrySpec, EntryStore
from idmint.ca.issuance.issuer import Issuer
from idmint.ca.spiffe_id import TrustDomain
from idmint.ca.storage.db import Database, migrate
from idmint.ca.storage.recorder import Recorder
from idmint.hsm import KeyStore, KeyType
from idmint.hsm.softhsm import create_token

PEER_SCRIPT = r"""
import asyncio, json, os, sys, time
try:
    from python_x509_pkcs11.csr import sign_csr
    from python_x509_pkcs11.pkcs11_handle import PKCS11Session
except ImportError:
    print(json.dumps({"error": "python-x509-pkcs11 is not installed (pip install .[bench])"}))
    sys.exit(0)
csr_pem, seconds = sys.stdin.read(), float(sys.argv[1])
issuer = {"country_name": "SE", "organization_name": "peer", "common_name": "peer CA"}

async def main():
    await PKCS11Session().create_keypair("peer-ca", key_type="secp256r1")
    await sign_csr("peer-ca", issuer, csr_pem, key_type="secp256r1")  # warm up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        await sign_csr("peer-ca", issuer, csr_pem, key_type="secp256r1")
        n += 1
    return n / (time.perf_counter() - start)

print(json.dumps({"rate": asyncio.run(main())}))
"""


def peer_rate(
    token_conf: str, label: str, pin: str, module: str, csr_pem: str, seconds: float
) -> Any:
    environment = {
        **os.environ,
        "SOFTHSM2_CONF": token_conf,
        "PKCS11_MODULE": module,
        "PKCS11_TOKEN": label,
        "PKCS11_PIN": pin,
    }
    done = subprocess.run(
        [sys.executable, "-c", PEER_SCRIPT, str(seconds)],
        input=csr_pem,
        capture_output=True,
        text=True,
        env=environment,
        check=False,
        timeout=300,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _committed() -> None:
    """Nothing to wait for at a round's end: every record is committed before its SVID returns."""


def anomaly_figures(
    store: KeyStore,
    database: Database,
    domain: TrustDomain,
    csrs: list[bytes],
    off: Issuer,
    seconds: float,
    rounds: int,
) -> dict[str, Any]:
    """Issuance with the anomaly check on beside off, interleaved rounds, same run."""
    recorder = Recorder(database)
    monitor = AnomalyMonitor(database, Settings(), recorder)
    on = Issuer(
        store,
        database,
        domain,
        "https://bench.test",
        recorder=recorder,
        cache_seconds=1.0,
        anomaly=monitor,
    )

    def x509_of(issuer: Issuer) -> Callable[[], Callable[[], object]]:
        def make() -> Callable[[], object]:
            counter = iter(range(10**12))
            return lambda: issuer.issue_x509(["bench:w:1"], csrs[next(counter) % len(csrs)])

        return make

    def jwt_of(issuer: Issuer) -> Callable[[], Callable[[], object]]:
        return lambda: lambda: issuer.issue_jwt(["bench:w:1"], ["a"])

    result: dict[str, Any] = {}
    try:
        rate(x509_of(on), 1, 0.3, _committed)  # warm the monitor's cache
        for name, of in (("x509", x509_of), ("jwt", jwt_of)):
            for threads in (1, 2):
                rounds_off: list[float] = []
                rounds_on: list[float] = []
                for _ in range(rounds):
                    rounds_off.append(rate(of(off), threads, seconds, _committed))
                    rounds_on.append(rate(of(on), threads, seconds, _committed))
                median_off = statistics.median(rounds_off)
                median_on = statistics.median(rounds_on)
                result[f"{name}_{threads}_threads"] = {
                    "off": [round(r) for r in rounds_off],
                    "on": [round(r) for r in rounds_on],
                    "median_off": round(median_off),
                    "median_on": round(median_on),
                    "ratio": round(median_on / median_off, 3),
                }
    finally:
        on.close()
        recorder.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        token = create_token(Path(scratch) / "hsm", "bench")
        url = f"sqlite:///{Path(scratch) / 'idmint.db'}"
        migrate(url)
        database = Database(url)
        store = KeyStore(token.hsm_config())
        create_root(store, database, "bench.test")
        ensure_authorities(store, database, "bench.test")
        domain = TrustDomain("bench.test")
        EntryStore(database, domain).create(
            EntrySpec(
                "spiffe://bench.test/w",
                ["bench:w:1"],
                "bench",
                datetime.now(UTC) + timedelta(days=1),
                audiences=["a"],
            ),
            actor="bench",
        )
        issuer = Issuer(store, database, domain, "https://bench.test", cache_seconds=1.0)
        keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(32)]
        csrs = [
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(k, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
            for k in keys
        ]
        raw_key = store.generate(KeyType.EC_P256, "raw-p256")
        digest = hashlib.sha256(b"benchmark").digest()
        p11_token = store._token

        def raw_worker() -> Callable[[], object]:
            session = p11_token.open()
            (found,) = list(
                session.get_objects(
                    {Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.ID: raw_key.key_id}
                )
            )
            return lambda: found.sign(digest, mechanism=Mechanism.ECDSA)

        def x509_worker() -> Callable[[], object]:
            counter = iter(range(10**12))
            return lambda: issuer.issue_x509(["bench:w:1"], csrs[next(counter) % len(csrs)])

        def jwt_worker() -> Callable[[], object]:
            return lambda: issuer.issue_jwt(["bench:w:1"], ["a"])

        rate(x509_worker, 2, 0.3, _committed)  # warm caches and sessions
        rate(jwt_worker, 1, 0.3, _committed)
        figures: dict[str, dict[str, int]] = {"raw_pkcs11": {}, "x509_svid": {}, "jwt_svid": {}}
        for threads in (1, 2):
            key = str(threads)
            figures["raw_pkcs11"][key] = median_rate(raw_worker, threads, args.seconds, args.rounds)
            figures["x509_svid"][key] = median_rate(
                x509_worker, threads, args.seconds, args.rounds, _committed
            )
            figures["jwt_svid"][key] = median_rate(
                jwt_worker, threads, args.seconds, args.rounds, _committed
            )
        anomaly = anomaly_figures(store, database, domain, csrs, issuer, args.seconds, args.rounds)
        csr_pem = x509.load_der_x509_csr(csrs[0]).public_bytes(serialization.Encoding.PEM).decode()
        issuer.close()
        store.close()
        database.close()
        peer = peer_rate(
            str(token.conf),
            token.label,
            token.user_pin_file.read_text().strip(),
            token.module,
            csr_pem,
            args.seconds,
        )

    raw = figures["raw_pkcs11"]
    report: dict[str, Any] = {
        "benchmark": "issuance",
        "setup": "SoftHSM token + SQLite (WAL) in a temp dir; P-256 intermediate and ES256 JWT key",
        "seconds_per_round": args.seconds,
        "rounds": args.rounds,
        "per_second": figures,
        "peer_python_x509_pkcs11_sign_csr_per_second": peer.get("rate") and round(peer["rate"]),
        "peer_note": peer.get("error"),
        "ratios": {
            "x509_vs_raw": {t: round(figures["x509_svid"][t] / raw[t], 3) for t in raw},
            "jwt_vs_raw": {t: round(figures["jwt_svid"][t] / raw[t], 3) for t in raw},
            "x509_vs_peer": peer.get("rate") and round(figures["x509_svid"]["1"] / peer["rate"], 1),
        },
        "anomaly_on_vs_off": anomaly,
        "goals": {
            "x509_vs_raw": 0.45,
            "jwt_vs_raw": 0.6,
            "x509_vs_peer": 20,
            "anomaly_on_vs_off": 0.95,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
