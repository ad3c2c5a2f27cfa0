"""The anomaly response's own cost per request, beside the crypto of one credential.

Prints one JSON document: microseconds of CPU per ``AnomalyMonitor.check``
(default settings, SQLite, counts written back every second as in the
server) for a baseline still learning and for a learned one (a week of
renewals every 5 minutes, so every check compares with a band), and, in the
same interleaved rounds, one P-256 signature and its verification with
cryptography (the per-credential crypto floor). The ratio says what share
of an issuance's least possible cost the check adds; benchmarks/http.py and
benchmarks/issuance.py give the rates with the checks on beside off.

Usage: python benchmarks/anomaly_check.py [--checks 20000] [--rounds 5]
"""

from __future__ import annotations

import sys

sys.path[:] = [p for p in sys.path if not p.endswith("benchmarks")]

import argparse
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from idmint.ca.anomaly.monitor import REQUEST_SOURCE, AnomalyMonitor, Request
from idmint.ca.anomaly.policy import Settings
from idmint.ca.storage.db import Database, migrate
from idmint.ca.storage.recorder import Recorder

SELECTORS = ("join_token:any:true",)


def _learned(monitor: AnomalyMonitor, entry: Any, end: datetime) -> None:
    moment = end - timedelta(days=7)
    while moment < end - timedelta(minutes=1):
        monitor.check(entry, Request("x509", moment, SELECTORS))
        moment += timedelta(minutes=5)


def _checks_us(monitor: AnomalyMonitor, entry: Any, count: int) -> float:
    started = time.process_time()
    for _ in range(count):
        monitor.check(entry, Request("x509", datetime.now(UTC), SELECTORS))
    return (time.process_time() - started) / count * 1e6


def _crypto_us(count: int) -> float:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    started = time.process_time()
    for n in range(count):
        data = n.to_bytes(8, "big")
        public.verify(key.sign(data, ec.ECDSA(hashes.SHA256())), data, ec.ECDSA(hashes.SHA256()))
    return (time.process_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{scratch}/idmint.db"
        migrate(url)
        database = Database(url)
        monitor = AnomalyMonitor(database, Settings(), Recorder(database))
        REQUEST_SOURCE.set("127.0.0.1")
        learning = SimpleNamespace(id="learning", spiffe_id="spiffe://bench.test/learning")
        learned = SimpleNamespace(id="learned", spiffe_id="spiffe://bench.test/learned")
        # A week in the past at a 5-minute cadence, then checks at "now": the
        # learned entry's first real minute would be above its band of ~0.2/min,
        # so it is exempt from acting (checks still compare with the band).
        _learned(monitor, learned, datetime.now(UTC))
        monitor.flush()
        baseline = monitor._cache["learned"].baseline
        baseline.rate_mean, baseline.rate_var = 1e9, 0.0  # never above: no decision
        rounds: dict[str, list[float]] = {"learning": [], "learned": [], "crypto": []}
        for _ in range(args.rounds):
            rounds["learning"].append(round(_checks_us(monitor, learning, args.checks), 2))
            rounds["learned"].append(round(_checks_us(monitor, learned, args.checks), 2))
            rounds["crypto"].append(round(_crypto_us(max(200, args.checks // 50)), 2))
        database.close()
    medians = {name: statistics.median(values) for name, values in rounds.items()}
    print(
        json.dumps(
            {
                "benchmark": "anomaly_check",
                "unit": "microseconds of CPU per call",
                "rounds": rounds,
                "median": medians,
                "check_share_of_crypto_floor": {
                    "learning": round(medians["learning"] / medians["crypto"], 4),
                    "learned": round(medians["learned"] / medians["crypto"], 4),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
