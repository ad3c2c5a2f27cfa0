"""CRL build time for many revoked serials and OCSP responses per second.

Prints one JSON document. On a fresh SoftHSM token and SQLite database:

- ``crl_100k``: 100,000 revocations inserted, then the CRL read from the
  database, built and signed in the HSM (the server's path), timed end to
  end, and the DER size;
- ``ocsp``: OCSP requests answered per second in-process (request parse,
  status lookup in the database, response build, HSM signature), beside the
  raw HSM sign rate of the same key measured in this run.

- ``root_rotation_propagation``: a server runs on the data directory; the
  operator's ``idmint authority prepare root`` commits a new root, and the
  time until the server's ``/v1/bundle`` carries it is measured (5 times;
  replicas poll the shared database, so this is the time for any replica).

Usage: python benchmarks/revocation.py [--revoked 100000] [--seconds 2]
"""

from __future__ import annotations

import sys

# benchmarks/http.py would shadow the standard library's http package.
sys.path[:] = [p for p in sys.path if not p.endswith("benchmarks")]

import argparse
import hashlib
import json
import os
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from pkcs11 import Mechanism

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from idmint.ca.authority.authorities import active, create_root, ensure_authorities, signing_key
from idmint.ca.revocation.crl import build_crl
from idmint.ca.revocation.ocsp import respond
from idmint.ca.revocation.revocations import revoked_identifiers
from idmint.ca.storage.db import Database, migrate
from idmint.ca.storage.models import AuthorityKind, CredentialKind
from idmint.ca.x509.profiles import random_serial
from idmint.hsm import KeyStore
from idmint.hsm.softhsm import create_token


def propagation(samples: int = 5) -> dict[str, float]:
    """Seconds from a committed root change to the server's bundle showing it."""
    import http.client
    import ssl
    import subprocess

    from benchmarks.serving import IDMINT, clean_env, start_server

    environment = clean_env()
    with tempfile.TemporaryDirectory() as scratch:
        data = Path(scratch) / "data"
        subprocess.run(
            [IDMINT, "init", "--data-dir", str(data), "--trust-domain", "b.test"],
            check=True,
            capture_output=True,
            env=environment,
        )
        server, port = start_server(data, "--workers", "2")

        def roots() -> int:
            context = ssl.create_default_context(cafile=str(data / "server" / "bundle.pem"))
            connection = http.client.HTTPSConnection("127.0.0.1", port, context=context)
            try:
                connection.request("GET", "/v1/bundle?format=pem")
                return connection.getresponse().read().count(b"BEGIN CERTIFICATE")
            finally:
                connection.close()

        try:
            current = roots()
            delays = []
            for _ in range(samples):
                subprocess.run(
                    [IDMINT, "authority", "prepare", "root", "--data-dir", str(data)],
                    check=True,
                    capture_output=True,
                    env=environment,
                )
                committed = time.perf_counter()
                while roots() == current:
                    time.sleep(0.01)
                delays.append(time.perf_counter() - committed)
                current = roots()
                subprocess.run(
                    [IDMINT, "authority", "activate", "root", "--data-dir", str(data)],
                    check=True,
                    capture_output=True,
                    env=environment,
                )
        finally:
            server.terminate()
            server.wait(timeout=30)
    return {"median": round(sorted(delays)[len(delays) // 2], 3), "max": round(max(delays), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revoked", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        token = create_token(Path(scratch) / "hsm", "bench")
        url = f"sqlite:///{Path(scratch) / 'idmint.db'}"
        migrate(url)
        database = Database(url)
        store = KeyStore(token.hsm_config())
        create_root(store, database, "bench.test")
        ensure_authorities(store, database, "bench.test")
        row = active(database, AuthorityKind.INTERMEDIATE)
        assert row.certificate_pem is not None
        issuer = x509.load_pem_x509_certificate(row.certificate_pem.encode())
        key = signing_key(store, row)
        now = datetime.now(UTC)
        serials = [format(random_serial(), "x") for _ in range(args.revoked)]
        with database.session() as session:
            connection = session.connection()
            connection.exec_driver_sql(
                "INSERT INTO revocations (kind, identifier, authority_id, reason, revoked_at, "
                "not_after) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (
                        "x509",
                        s,
                        row.id,
                        "unspecified",
                        now.strftime("%Y-%m-%d %H:%M:%S.%f"),
                        (now + timedelta(minutes=10)).strftime("%Y-%m-%d %H:%M:%S.%f"),
                    )
                    for s in serials
                ],
            )
            connection.exec_driver_sql(
                "INSERT INTO issued_credentials (kind, identifier, spiffe_id, entry_id, "
                "authority_id, issued_at, not_after) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        "x509",
                        s,
                        "spiffe://bench.test/w",
                        None,
                        row.id,
                        now.strftime("%Y-%m-%d %H:%M:%S.%f"),
                        (now + timedelta(minutes=10)).strftime("%Y-%m-%d %H:%M:%S.%f"),
                    )
                    for s in serials[:1000]
                ],
            )
        began = time.perf_counter()
        revoked = revoked_identifiers(database, CredentialKind.X509, now, authority_id=row.id)
        read = time.perf_counter() - began
        der = build_crl(issuer, key, revoked, datetime.now(UTC))
        total = time.perf_counter() - began
        crl = x509.load_der_x509_crl(der)
        assert len(crl) == args.revoked and crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]

        def status(serial: str) -> tuple[str, datetime | None, str | None] | None:
            with database.session() as session:
                found = (
                    session.connection()
                    .exec_driver_sql(
                        "SELECT revoked_at, reason FROM revocations WHERE kind = 'x509' "
                        "AND identifier = ?",
                        (serial,),
                    )
                    .first()
                )
            return ("revoked", now, found[1]) if found else ("good", None, None)

        leaf_key = ec.generate_private_key(ec.SECP256R1())
        requests = []
        for serial in serials[:200]:
            leaf = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(issuer.subject)
                .public_key(leaf_key.public_key())
                .serial_number(int(serial, 16))
                .not_valid_before(now)
                .not_valid_after(now + timedelta(minutes=5))
                .sign(leaf_key, hashes.SHA256())
            )
            requests.append(
                ocsp.OCSPRequestBuilder()
                .add_certificate(leaf, issuer, hashes.SHA1())
                .build()
                .public_bytes(serialization.Encoding.DER)
            )
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < args.seconds:
            respond(requests[done % len(requests)], [(issuer, key)], status, datetime.now(UTC))
            done += 1
        ocsp_rate = done / (time.perf_counter() - began)
        digest = hashlib.sha256(b"x").digest()
        signs, began = 0, time.perf_counter()
        while time.perf_counter() - began < args.seconds:
            store.sign(key.key_id, digest, Mechanism.ECDSA)
            signs += 1
        raw_rate = signs / (time.perf_counter() - began)
        store.close()
        database.close()
    print(
        json.dumps(
            {
                "benchmark": "revocation",
                "machine_cpus": os.cpu_count(),
                "crl": {
                    "revoked_serials": args.revoked,
                    "read_from_database_seconds": round(read, 3),
                    "read_build_and_hsm_sign_seconds": round(total, 3),
                    "der_bytes": len(der),
                    "goal_seconds": 2.0,
                },
                "ocsp": {
                    "responses_per_second": round(ocsp_rate),
                    "raw_hsm_sign_per_second": round(raw_rate),
                },
                "root_rotation_propagation_seconds": propagation(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
