"""Single-use evidence held back until the credential it pays for is recorded.

DESIGN.md: a credential is recorded durably before it is handed out, in the
same transaction that spends its single-use evidence. So during a request
the attestors do not spend anything: the join-token ledger only checks the
token (a read) and the nonce ledger only notes the nonce, both into the
request's :class:`Spend`. The issuer then decides the serial (or jti),
not_after and entry, and the spend, the issued_credentials row and its
audit event are committed together (:func:`idmint.ca.storage.recorder.commit_issuances`)
before anything is signed. A credential whose signing then fails leaves a
record of a serial nobody holds: harmless (it is audited as unsigned).

Outside a request (no Spend open: the CLI, tests calling an attestor
directly) the ledgers spend at once, as before.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from idmint.attestation.base import AttestationFailed, EvidenceReplayed
from idmint.ca.storage.db import Database, driver_sql, time_binder


@dataclass
class Spend:
    """What one issuance spends: a join token, nonces, used-evidence keys."""

    now: datetime
    token_hash: str | None = None
    nonces: list[str] = field(default_factory=list)
    keys: list[tuple[str, datetime]] = field(default_factory=list)

    def empty(self) -> bool:
        return self.token_hash is None and not self.nonces and not self.keys

    def to_wire(self) -> list[object]:
        return [
            self.now.isoformat(),
            self.token_hash,
            list(self.nonces),
            [[key, exp.isoformat()] for key, exp in self.keys],
        ]

    @classmethod
    def from_wire(cls, wire: list[object]) -> Spend:
        now, token, nonces, keys = wire
        assert isinstance(now, str) and isinstance(nonces, list) and isinstance(keys, list)
        return cls(
            now=datetime.fromisoformat(now),
            token_hash=None if token is None else str(token),
            nonces=[str(n) for n in nonces],
            keys=[(str(k), datetime.fromisoformat(str(e))) for k, e in keys],
        )


_current: contextvars.ContextVar[Spend | None] = contextvars.ContextVar(
    "idmint_spend", default=None
)


@contextmanager
def collecting(now: datetime) -> Iterator[Spend]:
    """Collect what the code inside spends instead of spending it."""
    spend = Spend(now)
    token = _current.set(spend)
    try:
        yield spend
    finally:
        _current.reset(token)


def current() -> Spend | None:
    """The Spend being collected in this request, if any."""
    return _current.get()


class ImmediateJoinTokens(Protocol):
    def consume(self, token_hash: str, now: datetime) -> tuple[str, str]: ...


class ImmediateNonces(Protocol):
    def consume(self, nonce: str, now: datetime) -> None: ...


_PEEK_TOKEN = (
    "SELECT id, spiffe_id FROM join_tokens WHERE token_hash = ? AND used_at IS NULL"
    " AND revoked = FALSE AND expires_at > ?"
)


class DeferredJoinTokens:
    """The JoinTokenLedger for requests: check now, spend with the record.

    The check is a read (no write turn); the spend, later, is the same
    conditional UPDATE as before, so of two parallel uses one still wins.
    """

    def __init__(self, database: Database, immediate: ImmediateJoinTokens) -> None:
        self.database = database
        self.immediate = immediate

    def consume(self, token_hash: str, now: datetime) -> tuple[str, str]:
        spend = current()
        if spend is None:
            return self.immediate.consume(token_hash, now)
        from idmint.ca.storage.ledgers import join_token_refusal

        engine = self.database.engine
        stamp = time_binder(engine)(now)
        connection = engine.raw_connection()
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(driver_sql(engine, _PEEK_TOKEN), (token_hash, stamp))
                row = cursor.fetchone()
            finally:
                cursor.close()
            connection.rollback()  # end the read transaction (PostgreSQL opens one)
        finally:
            connection.close()
        if row is None:
            raise join_token_refusal(self.database, token_hash)
        if spend.token_hash is not None:
            raise AttestationFailed("one request may spend one join token")
        spend.token_hash = token_hash
        return str(row[0]), str(row[1])


class DeferredNonces:
    """The NonceLedger for requests: the nonce is spent with the record."""

    def __init__(self, immediate: ImmediateNonces) -> None:
        self.immediate = immediate

    def consume(self, nonce: str, now: datetime) -> None:
        spend = current()
        if spend is None:
            self.immediate.consume(nonce, now)
            return
        if nonce in spend.nonces:
            raise EvidenceReplayed("this nonce was already used; ask for a new one")
        spend.nonces.append(nonce)
