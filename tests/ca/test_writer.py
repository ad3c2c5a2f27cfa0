"""The server's writer process protocol, on SQLite and PostgreSQL.

The writer runs here in a thread of the test process, serving a real Unix
socket; the clients are the same WriterClient the server workers use. The
process around it (started, restarted and stopped by ``idmint server``) is
tested through the real server in tests/server/test_writer_process.py.
"""

from __future__ import annotations

import socket
import stat
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select, text

from idmint.attestation.base import AttestationFailed, EvidenceReplayed
from idmint.ca.issuance.entries import EntrySpec, EntryStore, NoMatchingEntry
from idmint.ca.issuance.issuer import Issuer
from idmint.ca.spiffe_id import TrustDomain
from idmint.ca.storage import audit
from idmint.ca.storage.db import Database
from idmint.ca.storage.ledgers import JoinTokens
from idmint.ca.storage.models import AuditEvent, IssuedCredential, JoinToken
from idmint.ca.storage.writer import (
    PROBE_TIMEOUT,
    WriterClient,
    WriterServer,
    WriterUnavailable,
)
from idmint.hsm import KeyStore
from tests.server.conftest import csr_pem

SPIFFE_ID = "spiffe://example.org/writer"


@pytest.fixture
def writer(database: Database, tmp_path: Path) -> Iterator[WriterServer]:
    # A short path: Unix socket paths are limited to ~108 bytes.
    path = Path("/tmp") / f"idmint-writer-{uuid.uuid4().hex[:12]}.sock"
    server = WriterServer(database, path)
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    thread.start()
    for _ in range(200):
        if path.exists():
            break
        threading.Event().wait(0.01)
    yield server
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()


@pytest.fixture
def client(writer: WriterServer) -> Iterator[WriterClient]:
    made = WriterClient(writer.path)
    yield made
    made.close()


@pytest.fixture
def tokens(database: Database, entries: EntryStore, trust_domain: TrustDomain) -> JoinTokens:
    entries.create(
        EntrySpec(
            SPIFFE_ID, ["join_token:any:true"], "tests", datetime.now(UTC) + timedelta(days=1)
        ),
        actor="tests",
    )
    return JoinTokens(database, trust_domain)


def _hash(token: str) -> str:
    from idmint.attestation.join_token import token_hash

    return token_hash(token)


def test_a_join_token_is_spent_once(
    client: WriterClient, writer: WriterServer, tokens: JoinTokens
) -> None:
    issued = tokens.create(SPIFFE_ID, timedelta(minutes=5), actor="tests")
    now = datetime.now(UTC)
    assert client.consume(_hash(issued.token), now) == (issued.id, SPIFFE_ID)
    with pytest.raises(EvidenceReplayed, match="already used"):
        client.consume(_hash(issued.token), now)
    with tokens.database.reading() as session:
        used_at = session.scalar(select(JoinToken.used_at).where(JoinToken.id == issued.id))
    assert used_at is not None


def test_refusals_name_the_reason(
    client: WriterClient, writer: WriterServer, tokens: JoinTokens
) -> None:
    now = datetime.now(UTC)
    with pytest.raises(AttestationFailed, match="unknown join token"):
        client.consume(_hash("idmjt_never-issued"), now)
    revoked = tokens.create(SPIFFE_ID, timedelta(minutes=5), actor="tests")
    tokens.revoke(revoked.id, actor="tests")
    with pytest.raises(AttestationFailed, match="revoked"):
        client.consume(_hash(revoked.token), now)
    expiring = tokens.create(SPIFFE_ID, timedelta(minutes=1), actor="tests")
    with pytest.raises(AttestationFailed, match="expired"):
        client.consume(_hash(expiring.token), now + timedelta(minutes=2))


def test_parallel_spends_of_one_token_have_one_winner(
    client: WriterClient, writer: WriterServer, tokens: JoinTokens
) -> None:
    issued = tokens.create(SPIFFE_ID, timedelta(minutes=5), actor="tests")
    now = datetime.now(UTC)

    def attempt(_: int) -> str:
        own = WriterClient(writer.path)
        try:
            own.consume(_hash(issued.token), now)
            return "won"
        except EvidenceReplayed:
            return "replayed"
        finally:
            own.close()

    with ThreadPoolExecutor(30) as pool:
        outcomes = list(pool.map(attempt, range(30)))
    assert outcomes.count("won") == 1
    assert outcomes.count("replayed") == 29


def test_issuance_records_go_through_the_writer_and_the_chain_verifies(
    client: WriterClient,
    keystore: KeyStore,
    database: Database,
    authorities: None,
    trust_domain: TrustDomain,
    tokens: JoinTokens,
) -> None:
    issuer = Issuer(keystore, database, trust_domain, "https://idmint.test", recorder=client)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = csr_pem(key).encode()
    selectors = ["join_token:any:true"]
    svids = [issuer.issue_x509(selectors, csr) for _ in range(3)]
    token = issuer.issue_jwt(selectors, ["db"])
    with pytest.raises(NoMatchingEntry):  # refusals are audited through the writer too
        issuer.issue_jwt(selectors, ["db"], spiffe_id="spiffe://example.org/nobody")
    with database.reading() as session:
        identifiers = set(session.scalars(select(IssuedCredential.identifier)))
        events = session.execute(
            select(AuditEvent.action, AuditEvent.outcome).order_by(AuditEvent.seq)
        ).all()
        report = audit.verify_database(session)
    assert {s.serial for s in svids} | {token.jti} <= identifiers
    assert events.count(("x509-svid.issue", "success")) == 3
    assert events.count(("jwt-svid.issue", "success")) == 1
    assert events[-1] == ("jwt-svid.issue", "refused")
    assert report.events == len(events)


def test_used_evidence_is_refused_the_second_time(
    client: WriterClient, writer: WriterServer
) -> None:
    now = datetime.now(UTC)
    key = f"oidc:jti:{uuid.uuid4().hex}"
    client.spend([(key, now + timedelta(minutes=5))], now)
    with pytest.raises(EvidenceReplayed, match="already used"):
        client.spend([(key, now + timedelta(minutes=5))], now)


def test_a_malformed_frame_drops_only_that_connection(
    client: WriterClient, writer: WriterServer, tokens: JoinTokens
) -> None:
    for garbage in (b"\x00\x00\x00\x05hello", b"\xff\xff\xff\xff", b"\x00\x00\x00\x02{}"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
            raw.settimeout(5)
            raw.connect(str(writer.path))
            raw.sendall(garbage)
            assert raw.recv(16) == b""  # the writer closed it
    issued = tokens.create(SPIFFE_ID, timedelta(minutes=5), actor="tests")
    assert client.consume(_hash(issued.token), datetime.now(UTC))[1] == SPIFFE_ID


def test_the_socket_is_private(client: WriterClient, writer: WriterServer) -> None:
    assert stat.S_IMODE(writer.path.stat().st_mode) == 0o600


def test_no_writer_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nobody.sock"
    with pytest.raises(WriterUnavailable, match=r"nobody\.sock"):
        WriterClient(missing).consume("x", datetime.now(UTC))


def test_a_database_failure_is_an_answer_and_the_writer_keeps_serving(
    client: WriterClient, writer: WriterServer, database: Database
) -> None:
    with database.session() as session:
        session.execute(text("DROP TABLE join_tokens"))
    with pytest.raises(WriterUnavailable, match="database refused"):
        client.consume(_hash("idmjt_any"), datetime.now(UTC))
    # Writes are answered at once (503) until the next probe of the database.
    threading.Event().wait(PROBE_TIMEOUT + 0.05)
    now = datetime.now(UTC)
    client.spend([(f"oidc:jti:{uuid.uuid4().hex}", now + timedelta(minutes=5))], now)


def test_a_spend_and_garbage_in_one_write_do_not_stop_the_writer(
    client: WriterClient, writer: WriterServer, tokens: JoinTokens
) -> None:
    from idmint.ca.storage.writer import _frame

    issued = tokens.create(SPIFFE_ID, timedelta(minutes=5), actor="tests")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.settimeout(5)
        raw.connect(str(writer.path))
        spend = _frame(["consume", _hash(issued.token), datetime.now(UTC).isoformat()])
        raw.sendall(spend + b"\x00\x00\x00\x03{x}")
        assert raw.recv(1 << 16) == b""  # dropped, unanswered
    other = tokens.create(SPIFFE_ID, timedelta(minutes=5), actor="tests")
    assert client.consume(_hash(other.token), datetime.now(UTC))[0] == other.id


def test_an_issuance_spends_and_records_in_one_transaction(
    client: WriterClient,
    keystore: KeyStore,
    database: Database,
    authorities: None,
    trust_domain: TrustDomain,
    tokens: JoinTokens,
) -> None:
    """The record is committed when issue_x509 returns; a replay leaves no record."""
    from idmint.ca.storage.spends import Spend

    issuer = Issuer(keystore, database, trust_domain, "https://idmint.test", recorder=client)
    issued = tokens.create(SPIFFE_ID, timedelta(minutes=5), actor="tests")
    csr = csr_pem(ec.generate_private_key(ec.SECP256R1())).encode()
    selectors = ["join_token:any:true"]
    now = datetime.now(UTC)
    svid = issuer.issue_x509(selectors, csr, spend=Spend(now, token_hash=_hash(issued.token)))
    with database.reading() as session:
        assert session.scalar(
            select(IssuedCredential.id).where(IssuedCredential.identifier == svid.serial)
        )
        assert session.scalar(select(JoinToken.used_at).where(JoinToken.id == issued.id))
        before = int(session.scalar(select(func.count()).select_from(IssuedCredential)) or 0)
    with pytest.raises(EvidenceReplayed, match="already used"):
        issuer.issue_x509(selectors, csr, spend=Spend(now, token_hash=_hash(issued.token)))
    key = f"oidc:jti:{uuid.uuid4().hex}"
    issuer.issue_jwt(selectors, ["db"], spend=Spend(now, keys=[(key, now + timedelta(minutes=5))]))
    with pytest.raises(EvidenceReplayed):
        issuer.issue_jwt(
            selectors, ["db"], spend=Spend(now, keys=[(key, now + timedelta(minutes=5))])
        )
    with database.reading() as session:
        after = session.scalar(select(func.count()).select_from(IssuedCredential))
        audit.verify_database(session)
    assert after == before + 1  # the JWT; neither replay left a record


def test_refusals_are_chained_once_per_source_and_minute(database: Database) -> None:
    from idmint.ca.storage.recorder import Recorder
    from idmint.ca.storage.refusals import RefusalLog

    moment = [1_800_000_000.0]
    seen: list[tuple[str, str]] = []
    log = RefusalLog(
        Recorder(database), clock=lambda: moment[0], observer=lambda a, r: seen.append((a, r))
    )
    error = AttestationFailed("unknown join token")
    for _ in range(500):
        log.refused("attestation", "192.0.2.1", error)
    log.refused("attestation", "192.0.2.2", error)
    moment[0] += 60
    log.flush()
    log.close()
    with database.reading() as session:
        rows = session.execute(
            select(AuditEvent.actor, AuditEvent.outcome, AuditEvent.detail).order_by(AuditEvent.seq)
        ).all()
        audit.verify_database(session)
    assert len(seen) == 501
    assert [(a, o) for a, o, _ in rows] == [
        ("192.0.2.1", "refused"),
        ("192.0.2.2", "refused"),
        ("192.0.2.1", "refused"),
    ]
    assert '"count":499' in rows[2][2]


def test_a_locked_database_is_answered_within_the_timeout_and_recovers(
    client: WriterClient, writer: WriterServer, database: Database, tokens: JoinTokens
) -> None:
    import sqlite3
    import time

    if not database.url.startswith("sqlite"):
        pytest.skip("BEGIN EXCLUSIVE from another connection is the SQLite case")
    assert database.engine.url.database is not None
    holder = sqlite3.connect(database.engine.url.database, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        took = []
        for _ in range(5):
            started = time.monotonic()
            with pytest.raises(WriterUnavailable, match=r"did not answer in time"):
                client.consume(_hash("idmjt_locked"), datetime.now(UTC))
            took.append(time.monotonic() - started)
        assert took[0] < database.timeout + 1.0
        assert max(took[1:]) < 0.5  # once down: answered at once
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    made = tokens.create(SPIFFE_ID, timedelta(minutes=5), actor="tests")
    threading.Event().wait(PROBE_TIMEOUT + 0.05)  # the next probe finds it back
    assert client.consume(_hash(made.token), datetime.now(UTC))[0] == made.id


def test_the_writer_process_imports_no_key_store_migrations_or_attestors() -> None:
    # Two of it run beside every server (writer and standby), each its own
    # interpreter: these took 18 MB of each one's 70 MB RSS.
    import subprocess
    import sys

    heavy = ("pkcs11", "alembic", "jwt", "josepy", "idmint.hsm.keystore", "idmint.attestation.oidc")
    probe = (
        "import sys, idmint.ca.storage.writer\n"
        "from idmint.ca.config import load\n"
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stdout
