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

- ``crl_vs_floor``: for each of ``--crl-sizes`` revoked serials, in
  separate processes and interleaved rounds: a bare cryptography build
  (``RevokedCertificateBuilder`` per serial from an in-memory list, then
  ``CertificateRevocationListBuilder`` and the same HSM key's signature),
  beside idmint's :class:`CRLPublisher` from the database: its first build
  (read + build + sign) and its rebuild after one more revocation (what a
  revocation costs once the server runs); seconds and peak RSS of each.

Usage: python benchmarks/revocation.py [--revoked 100000] [--seconds 2]
                                       [--crl-sizes 100000,1000000] [--rounds 2] [--only-crl]
"""

from __future__ import annotations

import sys

# benchmarks/http.py would shadow the standard library's http package.
sys.path[:] = [p for p in sys.path if not p.endswith("benchmarks")]

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

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


def _insert_revocations(database: Database, authority_id: int, count: int) -> None:
    now = datetime.now(UTC)
    revoked_at = now.strftime("%Y-%m-%d %H:%M:%S.%f")
    not_after = (now + timedelta(minutes=30)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with database.session() as session:
        session.connection().exec_driver_sql(
            "INSERT INTO revocations (kind, identifier, authority_id, reason, revoked_at, "
            "not_after) VALUES (?, ?, ?, ?, ?, ?)",
            [
                ("x509", format(random_serial(), "x"), authority_id, "unspecified", revoked_at,
                 not_after)
                for _ in range(count)
            ],
        )  # fmt: skip


def _child_setup(data: Path) -> tuple[Database, KeyStore, int, x509.Certificate, Any]:
    from idmint.hsm.softhsm import SoftHSMToken

    fields = json.loads((data / "token.json").read_text())
    token = SoftHSMToken(
        Path(fields["directory"]), fields["label"], fields["module"], Path(fields["secrets_dir"])
    )
    database = Database(f"sqlite:///{data / 'idmint.db'}")
    store = KeyStore(token.hsm_config())
    row = active(database, AuthorityKind.INTERMEDIATE)
    assert row.certificate_pem is not None
    issuer = x509.load_pem_x509_certificate(row.certificate_pem.encode())
    return database, store, row.id, issuer, signing_key(store, row)


def crl_child(kind: str, data: Path) -> None:
    """One measurement in its own process, so that its peak RSS is its own."""
    import resource

    from idmint.ca.revocation.crl import NEXT_UPDATE, CRLPublisher

    database, store, authority_id, issuer, key = _child_setup(data)
    figures: dict[str, Any] = {}
    if kind == "floor":
        rows = revoked_identifiers(database, CredentialKind.X509, datetime.now(UTC), authority_id)
        serials = [(int(s, 16), at) for s, at, _ in rows]
        del rows
        began = time.perf_counter()
        now = datetime.now(UTC)
        entries = [
            x509.RevokedCertificateBuilder().serial_number(s).revocation_date(at).build()
            for s, at in serials
        ]
        crl = (
            x509.CertificateRevocationListBuilder(
                issuer_name=issuer.subject,
                last_update=now,
                next_update=now + NEXT_UPDATE,
                revoked_certificates=entries,
            )
            .sign(key, hashes.SHA256())
            .public_bytes(serialization.Encoding.DER)
        )
        figures["seconds"] = time.perf_counter() - began
        figures["entries"] = len(x509.load_der_x509_crl(crl))
    else:
        publisher = CRLPublisher(database)
        began = time.perf_counter()
        der = publisher.der(authority_id, issuer, key)
        figures["seconds"] = time.perf_counter() - began
        _insert_revocations(Database(database.url), authority_id, 1)
        began = time.perf_counter()
        der = publisher.der(authority_id, issuer, key)
        figures["rebuild_seconds"] = time.perf_counter() - began
        figures["entries"] = len(x509.load_der_x509_crl(der))
        publisher.close()
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    store.close()
    print(json.dumps(figures))


def crl_vs_floor(sizes: list[int], rounds: int) -> dict[str, Any]:
    import subprocess
    from dataclasses import asdict

    report: dict[str, Any] = {}
    for size in sizes:
        with tempfile.TemporaryDirectory() as scratch:
            data = Path(scratch)
            token = create_token(data / "hsm", "bench")
            (data / "token.json").write_text(
                json.dumps({k: str(v) for k, v in asdict(token).items()})
            )
            url = f"sqlite:///{data / 'idmint.db'}"
            migrate(url)
            database = Database(url)
            store = KeyStore(token.hsm_config())
            create_root(store, database, "bench.test")
            ensure_authorities(store, database, "bench.test")
            row = active(database, AuthorityKind.INTERMEDIATE)
            _insert_revocations(database, row.id, size)
            store.close()
            database.close()
            runs: dict[str, list[dict[str, Any]]] = {"floor": [], "idmint": []}
            for _ in range(rounds):
                for kind in ("floor", "idmint"):
                    done = subprocess.run(
                        [sys.executable, __file__, "--child", kind, "--data", str(data)],
                        capture_output=True, text=True, check=False,
                    )  # fmt: skip
                    if done.returncode != 0:
                        raise SystemExit(f"{kind} child failed: {done.stderr[-2000:]}")
                    runs[kind].append(json.loads(done.stdout.strip().splitlines()[-1]))

        def med(kind: str, key: str, runs: dict[str, list[dict[str, Any]]] = runs) -> float:
            return float(statistics.median(r[key] for r in runs[kind]))

        floor = med("floor", "seconds")
        report[str(size)] = {
            "floor_seconds": round(floor, 3),
            "idmint_first_build_seconds": round(med("idmint", "seconds"), 3),
            "idmint_rebuild_after_one_revocation_seconds": round(
                med("idmint", "rebuild_seconds"), 3
            ),
            "first_build_vs_floor": round(med("idmint", "seconds") / floor, 2),
            "rebuild_vs_floor": round(med("idmint", "rebuild_seconds") / floor, 2),
            "floor_peak_rss_mb": round(med("floor", "peak_rss_mb")),
            "idmint_peak_rss_mb": round(med("idmint", "peak_rss_mb")),
            "rounds": runs,
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revoked", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--crl-sizes", type=lambda t: [int(p) for p in t.split(",") if p], default=[100_000]
    )
    parser.add_argument("--only-crl", action="store_true")
    parser.add_argument("--child", choices=("floor", "idmint"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        crl_child(args.child, args.data)
        return
    if args.only_crl:
        print(json.dumps({"benchmark": "revocation", "crl_vs_floor": crl_vs_floor(
            args.crl_sizes, args.rounds)}, indent=2))  # fmt: skip
        return
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
                "crl_vs_floor": crl_vs_floor(args.crl_sizes, args.rounds),
                "goals": {"crl_vs_floor": 1.3, "peak_rss_mb_1m": 300},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
