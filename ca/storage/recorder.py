"""Recording issued credentials durably, in the transaction that spends their evidence.

DESIGN.md: a credential the CA cannot revoke or answer OCSP for must never
exist. So no credential leaves the server before its issued_credentials row
and its audit event are committed, and they are committed in the same
transaction as the spend of the request's single-use evidence (join token,
nonce, OIDC jti, renewal proof; :mod:`idmint.ca.storage.spends`): one write
per issuance, as before, now carrying the record too.

Until 2026-12 records were written behind issuance, every 20 ms, and a batch
the database refused five times was dropped: a fault trial lost 10-15 of
every few thousand SVIDs (kill -9 of the writer, the database made
immutable), which then read ``unknown`` in OCSP and could not be revoked.

Commits are grouped: whoever finds no commit in progress commits everything
waiting (its own and what arrived meanwhile) and wakes the others, so a
busy process pays one transaction for many issuances without any timer.
The server's writer process (:mod:`idmint.ca.storage.writer`) groups the
same way across workers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection

from idmint.attestation.base import AttestationFailed, EvidenceReplayed
from idmint.ca.storage import audit
from idmint.ca.storage.db import Database, bulk_insert, driver_sql, time_binder
from idmint.ca.storage.spends import Spend
from idmint.errors import IdmintError

log = logging.getLogger(__name__)

_CREDENTIAL_COLUMNS = (
    "kind",
    "identifier",
    "spiffe_id",
    "entry_id",
    "authority_id",
    "issued_at",
    "not_after",
)


@dataclass(frozen=True)
class Issuance:
    """One unit of the issuance log: what it spends, its record, its audit events."""

    spend: Spend | None
    credential: dict[str, Any] | None
    events: Sequence[audit.Event]


class RecordSink(Protocol):
    """Where issuance records go: a :class:`Recorder`, or the server's writer process."""

    def commit(self, item: Issuance) -> None:
        """Spend, record and audit ``item`` in one transaction; raise if refused or not done."""
        ...

    def begin(self, item: Issuance) -> Callable[[], None]:
        """Start :meth:`commit`; the callable returned waits for it (raising as commit does)."""
        ...

    def begin_many(self, items: Sequence[Issuance]) -> Callable[[], None]:
        """Start committing ``items`` together; the callable waits for all of them.

        It raises the first refusal or failure, once every answer is in.
        """
        ...

    def close(self) -> None: ...


# -- the transaction ----------------------------------------------------------

_SPEND_TOKEN = (
    "UPDATE join_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL"
    " AND revoked = FALSE AND expires_at > ? RETURNING id"
)
_SPEND_NONCE = (
    "UPDATE nonces SET used_at = ? WHERE value = ? AND used_at IS NULL AND expires_at > ?"
)
_SPEND_KEY = (
    "INSERT INTO used_evidence (key, used_at, expires_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING"
)


def _spend(connection: Connection, cursor: Any, spend: Spend) -> str | None:
    """Spend what ``spend`` holds; None, or what could not be spent ("key", "token", "nonce").

    Keys first, then the token, then nonces, stopping at the first refusal: a
    refused item may thus have spent part of its own evidence, which a replay
    had already made worthless (no item today carries more than one kind).
    """
    bind = time_binder(connection)
    now = bind(spend.now)
    for key, expires in spend.keys:
        cursor.execute(driver_sql(connection, _SPEND_KEY), (key[:255], now, bind(expires)))
        if cursor.rowcount != 1:
            return "key"
    if spend.token_hash is not None:
        cursor.execute(driver_sql(connection, _SPEND_TOKEN), (now, spend.token_hash, now))
        if cursor.fetchone() is None:
            return "token"
    for nonce in spend.nonces:
        cursor.execute(driver_sql(connection, _SPEND_NONCE), (now, nonce, now))
        if cursor.rowcount != 1:
            return "nonce"
    return None


def commit_issuances(connection: Connection, items: Sequence[Issuance]) -> list[str | None]:
    """Spend, record and audit ``items`` in ``connection``'s transaction.

    Returns, per item, None (done) or what of its evidence was already spent
    (:func:`refusal` turns that into the error to answer with); refused items
    leave no record and no audit event. The caller commits.
    """
    cursor = connection.connection.cursor()  # the same DB-API connection: same transaction
    try:
        outcome = [None if i.spend is None else _spend(connection, cursor, i.spend) for i in items]
    finally:
        cursor.close()
    accepted = [item for item, failed in zip(items, outcome, strict=True) if failed is None]
    bind = time_binder(connection)
    rows = [
        (
            c["kind"].value,
            c["identifier"],
            c["spiffe_id"],
            c["entry_id"],
            c["authority_id"],
            bind(c["issued_at"]),
            bind(c["not_after"]),
        )
        for c in (item.credential for item in accepted)
        if c is not None
    ]
    bulk_insert(connection, "issued_credentials", _CREDENTIAL_COLUMNS, rows)
    audit.append(connection, [event for item in accepted for event in item.events])
    return outcome


def refusal(database: Database, item: Issuance, failed: str) -> IdmintError:
    """The error for an item :func:`commit_issuances` refused (read after its transaction)."""
    from idmint.ca.storage.ledgers import join_token_refusal

    if failed == "token" and item.spend is not None and item.spend.token_hash is not None:
        return join_token_refusal(database, item.spend.token_hash)
    if failed == "nonce" and item.spend is not None:
        from sqlalchemy import select

        from idmint.ca.storage.models import Nonce

        with database.reading() as session:
            used = session.scalars(
                select(Nonce.value)
                .where(Nonce.value.in_(item.spend.nonces))
                .where(Nonce.used_at.is_not(None))
            ).first()
        if used is not None:
            return EvidenceReplayed("this nonce was already used; ask for a new one")
        return AttestationFailed("unknown or expired nonce; ask for a new one")
    return EvidenceReplayed("this evidence was already used; get a fresh one")


def _done() -> None:
    pass


class Recorder:
    """Commits issuances in this process (no writer process), grouped across threads."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self._lock = threading.Condition()
        self._waiting: list[tuple[Issuance, list[Any]]] = []
        self._committing = False

    def begin(self, item: Issuance) -> Callable[[], None]:
        self.commit(item)  # in this process: committed before signing, nothing to overlap
        return _done

    def begin_many(self, items: Sequence[Issuance]) -> Callable[[], None]:
        # One transaction for the lot (the database serialises it with commit()'s).
        batch: list[tuple[Issuance, list[Any]]] = [(item, []) for item in items]
        try:
            results: list[Any] = self._commit(batch)
        except Exception as error:
            results = [error] * len(batch)
        for (item, slot), result in zip(batch, results, strict=True):
            slot.append(result)
            self._settle(item, slot)
        return _done

    def commit(self, item: Issuance) -> None:
        slot: list[Any] = []
        with self._lock:
            self._waiting.append((item, slot))
            while self._committing and not slot:
                self._lock.wait()
            if slot:
                return self._settle(item, slot)
            self._committing = True
            batch, self._waiting = self._waiting, []
        try:
            results: list[Any] = self._commit(batch)
        except Exception as error:
            results = [error] * len(batch)
        with self._lock:
            for (_, each), result in zip(batch, results, strict=True):
                each.append(result)
            self._committing = False
            self._lock.notify_all()
        return self._settle(item, slot)

    def _commit(self, batch: list[tuple[Issuance, list[Any]]]) -> list[Any]:
        items = [item for item, _ in batch]
        with self.database.connection() as connection:
            outcome = commit_issuances(connection, items)
        return [
            None if failed is None else refusal(self.database, item, failed)
            for item, failed in zip(items, outcome, strict=True)
        ]

    def _settle(self, item: Issuance, slot: list[Any]) -> None:
        result = slot[0]
        if result is None:
            return
        if isinstance(result, IdmintError):
            raise result
        from idmint.ca.storage.writer import WriterUnavailable

        log.error("recording an issuance failed: %s", result)
        raise WriterUnavailable(
            f"the database did not record the issuance ({type(result).__name__}); retry shortly"
        ) from result

    def close(self) -> None:
        pass  # nothing is held back: every commit() returned after its transaction
