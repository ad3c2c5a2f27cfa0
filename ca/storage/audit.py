"""The tamper-evident audit log: an append-only hash chain in the database.

Each row carries the hash of the row before it (``prev_hash``) and its own
hash over its fields and ``prev_hash``. ``audit_head`` holds the newest
sequence number and hash. Appends lock the head row first (an UPDATE), so
writers in every process and replica take turns and the chain never forks.

:func:`verify` recomputes the chain and reports the first row that was
edited (hash mismatch), inserted or deleted (broken link or sequence gap),
and rows cut off the end (head mismatch). It cannot catch someone who
rewrites the whole chain and the head consistently; anchoring the head
outside the database (e.g. a signed checkpoint) is what closes that gap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from idmint.ca.errors import AuditChainBroken
from idmint.ca.storage.db import bulk_insert, driver_sql, time_binder
from idmint.ca.storage.models import AuditEvent, AuditHead

GENESIS = "0" * 64
_COLUMNS = ("seq", "at", "actor", "action", "subject", "outcome", "detail", "prev_hash", "hash")


@dataclass(frozen=True)
class Event:
    """An audit event before it joins the chain."""

    action: str
    subject: str
    actor: str = "system"
    outcome: str = "success"
    detail: Mapping[str, Any] = field(default_factory=dict)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


# json.dumps() with non-default options builds a new encoder on every call;
# these are the same encoders, built once (the recorder hashes every event).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _canonical(detail: Mapping[str, Any]) -> str:
    return _CANONICAL.encode(detail)


def _row_hash(
    seq: int,
    at: datetime,
    actor: str,
    action: str,
    subject: str,
    outcome: str,
    detail: str,
    prev_hash: str,
) -> str:
    material = _COMPACT.encode(
        [
            seq,
            at.astimezone(UTC).isoformat(timespec="microseconds"),
            actor,
            action,
            subject,
            outcome,
            detail,
            prev_hash,
        ]
    )
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def append(session: Session | Connection, events: Sequence[Event]) -> None:
    """Chain ``events`` onto the log inside the caller's transaction.

    Written as driver SQL: the issuance recorder calls this for every batch,
    and building these statements through SQLAlchemy's expression layer
    cost more than running them.
    """
    if not events:
        return
    connection = session if isinstance(session, Connection) else session.connection()
    # Take the head's row lock before reading it: a no-op write is the one
    # portable way (SQLite takes its write lock, PostgreSQL its row lock).
    connection.exec_driver_sql(_LOCK_HEAD)
    head = connection.exec_driver_sql(_READ_HEAD).one()
    seq, prev = int(head[0]), str(head[1])
    bind = time_binder(connection)
    rows = []
    for event in events:
        seq += 1
        # Both SQLite and PostgreSQL keep microseconds, so the hash survives a round trip.
        at = event.at.astimezone(UTC)
        detail = _canonical(event.detail)
        digest = _row_hash(
            seq, at, event.actor, event.action, event.subject, event.outcome, detail, prev
        )
        rows.append(
            (
                seq,
                bind(at),
                event.actor,
                event.action,
                event.subject,
                event.outcome,
                detail,
                prev,
                digest,
            )
        )
        prev = digest
    bulk_insert(connection, "audit_events", _COLUMNS, rows)
    connection.exec_driver_sql(driver_sql(connection, _WRITE_HEAD), (seq, prev))


_LOCK_HEAD = "UPDATE audit_head SET seq = seq WHERE id = 1"
_READ_HEAD = "SELECT seq, hash FROM audit_head WHERE id = 1"
_WRITE_HEAD = "UPDATE audit_head SET seq = ?, hash = ? WHERE id = 1"


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` checked."""

    events: int
    head_seq: int
    head_hash: str


def verify(rows: Iterable[AuditEvent], head: AuditHead) -> VerifyReport:
    """Recompute the chain; raise :class:`AuditChainBroken` at the first fault."""
    expected_seq, prev, count = 1, GENESIS, 0
    for row in rows:
        if row.seq != expected_seq:
            raise AuditChainBroken(
                f"audit event {expected_seq} is missing (next present is {row.seq}): "
                "rows were deleted or inserted"
            )
        if row.prev_hash != prev:
            raise AuditChainBroken(
                f"audit event {row.seq} does not link to event {row.seq - 1}: "
                "a row was inserted, deleted or edited before it"
            )
        digest = _row_hash(
            row.seq,
            row.at,
            row.actor,
            row.action,
            row.subject,
            row.outcome,
            row.detail,
            row.prev_hash,
        )
        if digest != row.hash:
            raise AuditChainBroken(
                f"audit event {row.seq} ({row.action} {row.subject}) was edited: "
                "its content no longer matches its hash"
            )
        prev, expected_seq, count = row.hash, expected_seq + 1, count + 1
    if head.seq != count or head.hash != prev:
        raise AuditChainBroken(
            f"the audit head says {head.seq} events ending in {head.hash[:12]}..., "
            f"the chain has {count} ending in {prev[:12]}...: events were cut off the end"
        )
    return VerifyReport(events=count, head_seq=head.seq, head_hash=head.hash)


def verify_database(session: Session) -> VerifyReport:
    """Verify the whole audit log stored in ``session``'s database."""
    head = session.scalars(select(AuditHead).where(AuditHead.id == 1)).one()
    rows = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).yield_per(1000)
    return verify(rows, head)
