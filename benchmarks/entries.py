"""Issuance and server readiness with many registration entries, in one run.

For each entry count (default 10, 10,000, 100,000; add 1000000 with
``--sizes``) it prepares a SoftHSM token + SQLite database whose entries are
one workload's entry plus fillers inserted with SQL (not through the API:
setup only). Fillers look like a real fleet: each has a selector of its own
and one that all share (``bench:ns:prod``), which the workload presents too,
so matching by a scan would test every entry.

In-process, per count: the first :meth:`Issuer.state` (the full load of the
entry index) in seconds and the memory it added; then X509-SVID and
JWT-SVID issuance rates (1 thread), in rounds interleaved across the counts,
medians and every round reported, with ratios to the 10-entry rate; and the
cost of one incremental refresh after an entry is created.

Server, per count (``--server-sizes``): seconds from spawning ``idmint
server`` until ``/readyz`` answers 200, ``--server-rounds`` starts each,
interleaved across the counts.

Usage: python benchmarks/entries.py [--seconds 2] [--rounds 3]
                                    [--sizes 10,10000,100000,1000000]
                                    [--server-sizes 10,10000,100000] [--server-rounds 3]
"""

from __future__ import annotations

import sys

# benchmarks/http.py would shadow the standard library's http package.
sys.path[:] = [p for p in sys.path if not p.endswith("benchmarks")]

import argparse
import gc
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.serving import IDMINT, clean_env, start_server
from benchmarks.timing import rate
from idmint.ca.authority.authorities import create_root, ensure_authorities
from idmint.ca.issuance.entries import EntrySpec, EntryStore
from idmint.ca.issuance.entry_index import refresh
from idmint.ca.issuance.issuer import Issuer
from idmint.ca.spiffe_id import TrustDomain
from idmint.ca.storage.db import Database, bulk_insert, migrate, time_binder
from idmint.hsm import KeyStore
from idmint.hsm.softhsm import create_token

DOMAIN = "bench.test"
SHARED = "bench:ns:prod"
WORKLOAD = ["bench:w:1", SHARED, "bench:node:a"]
COLUMNS = (
    "id", "spiffe_id", "selectors", "x509_ttl_seconds", "jwt_ttl_seconds", "audiences",
    "dns_names", "owner", "expires_at", "admin", "disabled", "created_at", "updated_at",
)  # fmt: skip


def fill(database: Database, count: int) -> None:
    """``count`` filler entries, inserted with SQL in chunks."""
    now = datetime.now(UTC)
    with database.connection() as connection:
        when = time_binder(connection)
        expires, created = when(now + timedelta(days=30)), when(now)
        fixed = (600, 300, '["a"]', "[]", "bench", expires, False, False, created, created)
        step = 50_000
        for start in range(0, count, step):
            rows = [
                (
                    str(uuid.uuid4()),
                    f"spiffe://{DOMAIN}/fleet/{n}",
                    json.dumps([SHARED, f"bench:id:{n}"]),
                    *fixed,
                )
                for n in range(start, min(count, start + step))
            ]
            bulk_insert(connection, "entries", COLUMNS, rows)


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Size:
    """One entry count: its database, issuer and figures."""

    def __init__(self, scratch: Path, store: KeyStore, count: int) -> None:
        self.count = count
        url = f"sqlite:///{scratch / f'entries-{count}.db'}"
        migrate(url)
        self.database = Database(url)
        create_root(store, self.database, DOMAIN)
        ensure_authorities(store, self.database, DOMAIN)
        self.store = EntryStore(self.database, TrustDomain(DOMAIN))
        self.store.create(
            EntrySpec(
                f"spiffe://{DOMAIN}/w",
                ["bench:w:1", SHARED],
                "bench",
                datetime.now(UTC) + timedelta(days=1),
                audiences=["a"],
            ),
            actor="bench",
        )
        began = time.perf_counter()
        fill(self.database, count - 1)
        self.fill_seconds = time.perf_counter() - began
        self.issuer = Issuer(store, self.database, TrustDomain(DOMAIN), f"https://{DOMAIN}")
        gc.collect()
        before = rss_mb()
        began = time.perf_counter()
        self.issuer.state()
        self.load_seconds = time.perf_counter() - began
        self.load_rss_mb = rss_mb() - before
        self.x509: list[float] = []
        self.jwt: list[float] = []

    def refresh_seconds(self) -> float:
        """One entry created, then the time the index takes to pick it up."""
        self.store.create(
            EntrySpec(
                f"spiffe://{DOMAIN}/late",
                ["bench:late:1"],
                "bench",
                datetime.now(UTC) + timedelta(days=1),
            ),
            actor="bench",
        )
        index = self.issuer.state().entries
        began = time.perf_counter()
        refreshed = refresh(index, self.database)
        took = time.perf_counter() - began
        assert refreshed.for_spiffe_id(f"spiffe://{DOMAIN}/late"), "the new entry is not indexed"
        return took


def median(values: list[float]) -> int:
    return round(statistics.median(values))


def in_process(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    token = create_token(scratch / "hsm", "bench")
    store = KeyStore(token.hsm_config())
    sizes = [Size(scratch, store, n) for n in args.sizes]
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(16)]
    csrs = [
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(k, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
        for k in keys
    ]

    def x509_worker(issuer: Issuer) -> Callable[[], Callable[[], object]]:
        def make() -> Callable[[], object]:
            counter = iter(range(10**12))
            return lambda: issuer.issue_x509(WORKLOAD, csrs[next(counter) % len(csrs)])

        return make

    def jwt_worker(issuer: Issuer) -> Callable[[], Callable[[], object]]:
        return lambda: lambda: issuer.issue_jwt(WORKLOAD, ["a"])

    for size in sizes:  # warm sessions and caches
        rate(x509_worker(size.issuer), 1, 0.3)
    for _ in range(args.rounds):
        for size in sizes:
            # Every record is committed before its SVID returns: nothing to wait for after.
            size.x509.append(rate(x509_worker(size.issuer), 1, args.seconds))
            size.jwt.append(rate(jwt_worker(size.issuer), 1, args.seconds))
    base = sizes[0]
    figures: dict[str, Any] = {}
    for size in sizes:
        figures[str(size.count)] = {
            "fill_seconds": round(size.fill_seconds, 2),
            "index_load_seconds": round(size.load_seconds, 3),
            "index_rss_mb": round(size.load_rss_mb, 1),
            "refresh_after_one_change_ms": round(size.refresh_seconds() * 1000, 2),
            "x509_per_second": median(size.x509),
            "jwt_per_second": median(size.jwt),
            "x509_rounds": [round(r) for r in size.x509],
            "jwt_rounds": [round(r) for r in size.jwt],
            "x509_vs_base": round(statistics.median(size.x509) / statistics.median(base.x509), 3),
            "jwt_vs_base": round(statistics.median(size.jwt) / statistics.median(base.jwt), 3),
        }
    for size in sizes:
        size.issuer.close()
        size.database.close()
    store.close()
    return figures


def server_ready(counts: list[int], rounds: int, scratch: Path) -> dict[str, Any]:
    """Seconds to /readyz per count: ``rounds`` starts each, interleaved across the counts."""
    for count in counts:
        data = scratch / f"server-{count}"
        subprocess.run(
            [IDMINT, "init", "--data-dir", str(data), "--trust-domain", DOMAIN],
            check=True,
            capture_output=True,
            env=clean_env(),
        )
        database = Database(f"sqlite:///{data / 'idmint.db'}")
        fill(database, count)
        database.close()
    took: dict[int, list[float]] = {count: [] for count in counts}
    for _ in range(rounds):
        for count in counts:
            data = scratch / f"server-{count}"
            began = time.perf_counter()
            server, _port = start_server(data, log=scratch / f"server-{count}.log")
            took[count].append(time.perf_counter() - began)
            server.terminate()
            server.wait(timeout=30)
    return {
        str(count): {
            "ready_seconds": round(statistics.median(took[count]), 2),
            "ready_rounds": [round(t, 2) for t in took[count]],
        }
        for count in counts
    }


def counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=counts, default=[10, 10_000, 100_000])
    parser.add_argument("--server-sizes", type=counts, default=[10, 10_000, 100_000])
    parser.add_argument("--server-rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        scratch = Path(name)
        report = {
            "benchmark": "entries",
            "setup": "SoftHSM + SQLite (WAL); fillers share one selector with the workload",
            "seconds_per_round": args.seconds,
            "rounds": args.rounds,
            "in_process": in_process(args, scratch) if args.sizes else {},
            "server": (
                server_ready(args.server_sizes, args.server_rounds, scratch)
                if args.server_sizes
                else {}
            ),
            "goals": {"x509_and_jwt_vs_base": {"100000": 0.9, "1000000": 0.8}, "ready_s": 5},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
