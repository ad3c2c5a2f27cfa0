"""Issue 12 through a real server: records before credentials, bounded audit, D5, headers, modes.

The kill -9 and database-fault trials are in test_faults.py (slow); these
are the quick checks of the same promises.
"""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.x509 import ocsp
from sqlalchemy import func, select

from idmint.ca.config import load
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import AuditEvent, IssuedCredential
from idmint.pop import make_proof
from tests.server.conftest import Server, csr_pem

P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _database(server: Server) -> Database:
    return Database(load(server.data_dir).database_url)


def _audit_rows(server: Server) -> int:
    database = _database(server)
    try:
        with database.reading() as session:
            return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)
    finally:
        database.close()


def test_a_credential_is_recorded_and_audited_when_the_client_has_it(server: Server) -> None:
    """No flush, no waiting: the row and its audit event are there when the 201 is."""
    _, svid = server.x509_by_token("spiffe://example.org/durable/x509")
    database = _database(server)
    try:
        with database.reading() as session:
            row = session.scalars(
                select(IssuedCredential).where(IssuedCredential.identifier == svid["serial"])
            ).one()
            details = list(
                session.scalars(
                    select(AuditEvent.detail).where(AuditEvent.action == "x509-svid.issue")
                )
            )
    finally:
        database.close()
    assert row.spiffe_id == "spiffe://example.org/durable/x509"
    assert any(json.loads(d).get("serial") == svid["serial"] for d in details)
    leaf, issuer = x509.load_pem_x509_certificates(svid["chain_pem"].encode())[:2]
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA256()).build()
    status, _, der = server.request(
        "POST",
        "/v1/ocsp",
        raw=request.public_bytes(serialization.Encoding.DER),
        headers={"Content-Type": "application/ocsp-request"},
    )
    assert status == 200
    assert ocsp.load_der_ocsp_response(der).certificate_status == ocsp.OCSPCertStatus.GOOD


def test_anonymous_garbage_adds_no_audit_rows_and_refusals_are_aggregated(
    server: Server,
) -> None:
    before = _audit_rows(server)
    for _ in range(50):
        status, _, _ = server.request(
            "POST",
            "/v1/svid/x509",
            {"attestation": {"type": "join_token", "token": "idmjt_x"}, "csr": "garbage"},
        )
        assert status == 400
    assert _audit_rows(server) == before  # input that attests nothing: counted only
    for _ in range(60):
        status, _, _ = server.request(
            "POST",
            "/v1/svid/jwt",
            {"attestation": {"type": "join_token", "token": "idmjt_unknown"}, "audience": "a"},
        )
        assert status == 401
    for _ in range(40):
        assert server.request("GET", "/v1/entries")[0] == 401
    added = _audit_rows(server) - before
    # One row per (action, source, error) and minute, plus its summary later;
    # the minute may turn over during the test: at most twice that.
    assert 2 <= added <= 8, added
    status, _, metrics = server.request("GET", "/metrics")
    text = metrics.decode() if isinstance(metrics, bytes) else str(metrics)
    assert 'idmint_refused_total{action="attestation",reason="attestation-failed"}' in text
    assert 'action="admin.refused",reason="unauthenticated"' in text
    assert 'action="x509-svid.csr"' in text


def _admin_proof(server: Server, chain: str, key: Any, path: str) -> dict[str, Any]:
    return make_proof(chain, key, "admin", f"GET {path}\n".encode())


def _header(proof: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(proof).encode()).decode()


def test_two_admin_proofs_in_one_second_are_two_proofs_and_a_reencoded_one_is_a_replay(
    server: Server,
) -> None:
    key, svid = server.x509_by_token("spiffe://example.org/durable/admin", admin=True)
    time.sleep(1.1)
    path = "/v1/entries"
    first = _admin_proof(server, svid["chain_pem"], key, path)
    second = _admin_proof(server, svid["chain_pem"], key, path)
    for proof in (first, second):
        status, _, body = server.request("GET", path, headers={"X-Idmint-Proof": _header(proof)})
        assert status == 200, body
    # (r, n - s) verifies as well: the same proof, so a replay.
    r, s = decode_dss_signature(base64.b64decode(first["signature"]))
    twin = dict(first, signature=base64.b64encode(encode_dss_signature(r, P256_ORDER - s)).decode())
    status, _, body = server.request("GET", path, headers={"X-Idmint-Proof": _header(twin)})
    assert status == 401 and "already used" in body["detail"], body


def test_every_503_says_when_to_retry_and_every_405_what_is_allowed(server: Server) -> None:
    status, headers, _ = server.request("GET", "/v1/svid/x509")
    assert status == 405
    assert set(headers["allow"].replace(" ", "").split(",")) >= {"POST"}
    status, headers, _ = server.request("DELETE", "/v1/bundle")
    assert status == 405 and "GET" in headers["allow"]


def test_files_of_the_data_directory_are_private(server: Server) -> None:
    for name in ("idmint.db", "idmint.db-wal", "idmint.db-shm", "idmint.toml"):
        path = server.data_dir / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
    metrics = server.data_dir / "server" / "metrics"
    assert stat.S_IMODE(metrics.stat().st_mode) == 0o700


def test_readyz_checks_the_writer(server: Server) -> None:
    status, _, body = server.request("GET", "/readyz")
    assert status == 200 and body["checks"]["writer"] == "ok"


def test_a_csr_key_pair_from_another_request_still_issues(server: Server) -> None:
    """Sanity: the deferred spend does not change an ordinary issuance."""
    server.entry("spiffe://example.org/durable/plain", ["join_token:any:true"])
    token = server.join_token("spiffe://example.org/durable/plain")
    key = ec.generate_private_key(ec.SECP256R1())
    body = {"attestation": {"type": "join_token", "token": token}, "csr": csr_pem(key)}
    assert server.request("POST", "/v1/svid/x509", body)[0] == 201
    status, _, problem = server.request("POST", "/v1/svid/x509", body)
    assert status == 401 and "already used" in problem["detail"]


def test_ocsp_post_without_a_body_is_a_bad_request_and_get_is_documented(server: Server) -> None:
    status, _, problem = server.request("POST", "/v1/ocsp", raw=b"")
    assert status == 400 and "DER OCSP request" in problem["detail"]
    status, _, document = server.request("GET", "/v1/openapi.json")
    assert status == 200 and "get" in document["paths"]["/v1/ocsp/{request}"]
    reason = document["paths"]["/v1/revocations"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["properties"]["reason"]
    assert "keyCompromise" in reason["enum"]


def test_a_sha1_signed_csr_is_refused_for_its_hash(server: Server, tmp_path: Path) -> None:
    server.entry("spiffe://example.org/durable/sha1", ["join_token:any:true"])
    token = server.join_token("spiffe://example.org/durable/sha1")
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    # cryptography will not sign with SHA-1 any more; openssl still does.
    csr = subprocess.run(
        ["openssl", "req", "-new", "-sha1", "-key", str(key_file), "-subj", "/"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    body = {"attestation": {"type": "join_token", "token": token}, "csr": csr}
    status, _, problem = server.request("POST", "/v1/svid/x509", body)
    assert status == 400 and "SHA1, a hash that is not allowed" in problem["detail"], problem
    # The CSR is checked before the token is spent: it still works.
    body["csr"] = csr_pem(key)
    assert server.request("POST", "/v1/svid/x509", body)[0] == 201


def test_a_killed_writer_is_logged_as_killed_not_as_a_clean_exit(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """gunicorn reaps every child; the writer's status must still reach the log."""
    import os
    import signal
    import socket
    import struct

    from tests.server.conftest import init_data_dir, start_server

    base = tmp_path_factory.mktemp("killed")
    data = init_data_dir(base / "data")
    running = start_server(data, base, "killed")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.connect(str(data / "server" / "writer.sock"))
            raw = probe.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        os.kill(struct.unpack("3i", raw)[0], signal.SIGKILL)
        log = base / "killed.log"
        deadline = time.monotonic() + 20
        while "standby takes over" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        text = log.read_text()
        assert "the database writer was killed by signal SIGKILL (9)" in text, text
        assert "exited with status 0" not in text
    finally:
        running.process.terminate()
        running.process.wait(timeout=30)
