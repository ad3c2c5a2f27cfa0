"""X509-SVID and JWT-SVID requests per second through gunicorn on loopback.

Starts ``idmint server`` on a fresh embedded-default data directory (SoftHSM +
SQLite), then 16 client threads with keep-alive HTTPS connections send
``POST /v1/svid/x509`` (join-token attestation + a P-256 CSR) and
``POST /v1/svid/jwt`` (join-token attestation) for a fixed time each.
Join tokens are single use, so they are minted beforehand straight into the
database. Prints JSON: requests/s, p50/p99 latency, errors.

The clients run on the same machine (2 cores here) and take CPU from the
server; the figures are a floor for a separate load generator.

Usage: python benchmarks/http.py [--seconds 5] [--clients 16] [--workers 2]
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder leads sys.path and this file would
# shadow the standard library's ``http`` package.
sys.path[:] = [p for p in sys.path if not p.endswith("benchmarks")]

import argparse
import http.client
import json
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from attestation.join_token import new_token, token_hash
from benchmarks.serving import IDMINT as IDMINT_PATH
from benchmarks.serving import clean_env, start_server
from ca.storage.db import Database

IDMINT = [IDMINT_PATH]


def mint_tokens(database: Database, spiffe_id: str, count: int) -> list[str]:
    """Join tokens inserted in bulk (setup only; the API path is tested elsewhere)."""
    tokens = [new_token() for _ in range(count)]
    now = datetime.now(UTC)
    rows = [
        {
            "id": str(uuid.uuid4()),
            "token_hash": token_hash(t),
            "spiffe_id": spiffe_id,
            "created_by": "bench",
            "created_at": now,
            "expires_at": now + timedelta(hours=1),
            "used_at": None,
            "revoked": False,
        }
        for t in tokens
    ]
    from sqlalchemy import insert

    from ca.storage.models import JoinToken

    with database.session() as session:
        session.execute(insert(JoinToken), rows)
    return tokens


def run_load(
    port: int, bundle: str, bodies: list[bytes], path: str, clients: int, seconds: float
) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=bundle)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    statuses: dict[int, int] = {}
    next_body = iter(range(len(bodies)))
    lock = threading.Lock()
    stop = time.monotonic() + seconds
    start = threading.Barrier(clients)

    def client(index: int) -> None:
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        start.wait()
        while time.monotonic() < stop:
            with lock:
                n = next(next_body, None)
            if n is None:
                break
            began = time.perf_counter()
            try:
                connection.request(
                    "POST", path, body=bodies[n], headers={"Content-Type": "application/json"}
                )
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection = http.client.HTTPSConnection(
                    "127.0.0.1", port, context=context, timeout=30
                )
                status = 0
            latencies[index].append(time.perf_counter() - began)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
            if status != 201:
                errors[index] += 1
        connection.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    flat = sorted(x for per in latencies for x in per)
    ok = len(flat) - sum(errors)
    return {
        "requests": len(flat),
        "ok": ok,
        "errors": sum(errors),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "requests_per_second": round(ok / elapsed),
        "p50_ms": round(statistics.median(flat) * 1000, 2) if flat else None,
        "p99_ms": round(flat[int(len(flat) * 0.99) - 1] * 1000, 2) if flat else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    environment = clean_env()
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data"
        subprocess.run(
            [*IDMINT, "init", "--data-dir", str(data), "--trust-domain", "bench.test"],
            check=True,
            capture_output=True,
            env=environment,
        )
        for name in ("x509", "jwt"):
            subprocess.run(
                [
                    *IDMINT,
                    "entry",
                    "create",
                    "--data-dir",
                    str(data),
                    "--spiffe-id",
                    f"spiffe://bench.test/{name}",
                    "--selector",
                    "join_token:any:true",
                    "--owner",
                    "bench",
                    "--expires-at",
                    "1d",
                    "--audience",
                    "bench",
                ],
                check=True,
                capture_output=True,
                env=environment,
            )
        database = Database(f"sqlite:///{data / 'idmint.db'}")
        budget = int(args.seconds * 6000)
        x509_tokens = mint_tokens(database, "spiffe://bench.test/x509", budget)
        jwt_tokens = mint_tokens(database, "spiffe://bench.test/jwt", budget)
        database.close()
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([]))
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.PEM)
            .decode()
        )
        x509_bodies = [
            json.dumps({"attestation": {"type": "join_token", "token": t}, "csr": csr}).encode()
            for t in x509_tokens
        ]
        jwt_bodies = [
            json.dumps(
                {"attestation": {"type": "join_token", "token": t}, "audience": "bench"}
            ).encode()
            for t in jwt_tokens
        ]
        server, port = start_server(
            data, "--workers", str(args.workers), "--threads", str(args.threads),
            "--rate-limit", "none", log=Path(scratch) / "server.log",
        )  # fmt: skip
        bundle = str(data / "server" / "bundle.pem")
        try:
            # Warm every worker (sessions, caches) before timing.
            run_load(port, bundle, x509_bodies[-200:], "/v1/svid/x509", args.clients, 1.0)
            run_load(port, bundle, jwt_bodies[-200:], "/v1/svid/jwt", args.clients, 1.0)
            x509_result = run_load(
                port, bundle, x509_bodies[:-200], "/v1/svid/x509", args.clients, args.seconds
            )
            jwt_result = run_load(
                port, bundle, jwt_bodies[:-200], "/v1/svid/jwt", args.clients, args.seconds
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(
        json.dumps(
            {
                "benchmark": "http",
                "setup": f"gunicorn {args.workers} workers x {args.threads} threads, "
                f"SoftHSM + SQLite, {args.clients} keep-alive HTTPS clients on this machine",
                "seconds": args.seconds,
                "x509_svid": x509_result,
                "jwt_svid": jwt_result,
                "goals": {"x509_rps": 2000, "jwt_rps": 3000, "p99_ms": 25},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
