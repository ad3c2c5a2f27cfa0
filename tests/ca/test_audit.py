"""The audit hash chain: appends from many threads, and tampering done in SQL is caught."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from idmint.ca.storage import audit
from idmint.ca.storage.db import Database


def _append(database: Database, *actions: str) -> None:
    with database.session() as session:
        audit.append(session, [audit.Event(a, f"spiffe://example.org/{a}") for a in actions])


def _verify(database: Database) -> audit.VerifyReport:
    with database.session() as session:
        return audit.verify_database(session)


def test_empty_and_growing_chain_verifies(database: Database) -> None:
    assert _verify(database).events == 0
    _append(database, "a", "b")
    _append(database, "c")
    report = _verify(database)
    assert report.events == 3 and report.head_seq == 3


def test_concurrent_appends_never_fork(database: Database) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                _append(database, f"t{n}-{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert _verify(database).events == 40


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (
            "UPDATE audit_events SET subject = 'spiffe://example.org/evil' WHERE seq = 2",
            "was edited",
        ),
        ("UPDATE audit_events SET outcome = 'refused' WHERE seq = 3", "was edited"),
        ("DELETE FROM audit_events WHERE seq = 2", "event 2 is missing"),
        ("DELETE FROM audit_events WHERE seq = 4", "cut off the end"),
        (
            "UPDATE audit_events SET seq = seq + 100 WHERE seq >= 3",
            "event 3 is missing",
        ),
    ],
)
def test_tampering_in_sql_is_detected(database: Database, tamper: str, reason: str) -> None:
    _append(database, "a", "b", "c", "d")
    assert _verify(database).events == 4
    with database.engine.begin() as connection:
        connection.execute(text(tamper))
    with pytest.raises(audit.AuditChainBroken, match=reason):
        _verify(database)


def test_inserted_row_is_detected(database: Database) -> None:
    _append(database, "a", "b")
    with database.session() as session:
        row = session.execute(text("SELECT * FROM audit_events WHERE seq = 2")).mappings().one()
        forged = dict(row)
        forged.update(seq=3, prev_hash=row["hash"], hash="f" * 64, action="entry.delete")
        session.execute(
            text(
                "INSERT INTO audit_events (seq, at, actor, action, subject, outcome, detail, "
                "prev_hash, hash) VALUES (:seq, :at, :actor, :action, :subject, :outcome, "
                ":detail, :prev_hash, :hash)"
            ),
            forged,
        )
    with pytest.raises(audit.AuditChainBroken, match=r"event 3 .* was edited"):
        _verify(database)


def test_hash_survives_the_database_round_trip(database: Database) -> None:
    moment = datetime(2026, 11, 23, 7, 0, 0, 123456, tzinfo=UTC)
    with database.session() as session:
        audit.append(session, [audit.Event("x", "y", detail={"b": 1, "a": [1, 2]}, at=moment)])
    assert _verify(database).events == 1


def test_a_batch_larger_than_one_insert_statement_chains_in_order(database: Database) -> None:
    # 9 columns: bulk_insert writes 100 rows per statement, so 250 take three.
    events = [audit.Event("batch.event", f"s{n}", detail={"n": n}) for n in range(250)]
    with database.session() as session:
        audit.append(session, events)
    with database.session() as session:
        report = audit.verify_database(session)
        details = session.execute(text("SELECT detail FROM audit_events ORDER BY seq")).scalars()
        assert [int(d.split(":")[1].rstrip("}")) for d in details] == list(range(250))
    assert report.events == 250
