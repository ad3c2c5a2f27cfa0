"""Single-use things, settled by the database: join tokens, nonces, used evidence.

Each consumption is one conditional UPDATE (or an INSERT against a primary
key), so among any number of parallel attempts across processes and
replicas exactly one succeeds. Rows are kept until they expire and are then
purged.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from idmint.attestation.base import AttestationFailed, EvidenceReplayed
from idmint.attestation.join_token import new_token, token_hash
from idmint.ca.errors import InvalidEntry, JoinTokenNotFound
from idmint.ca.spiffe_id import SpiffeID, TrustDomain
from idmint.ca.storage import audit
from idmint.ca.storage.db import Database, driver_sql, time_binder
from idmint.ca.storage.models import Entry, JoinToken, Nonce, UsedEvidence

JOIN_TOKEN_TTL_RANGE = (timedelta(minutes=1), timedelta(days=7))
NONCE_TTL = timedelta(minutes=2)


def _rowcount(result: object) -> int:
    # UPDATE and DELETE give a CursorResult; its rowcount is how many rows matched.
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True)
class IssuedToken:
    """A join token as shown once, at creation."""

    id: str
    token: str
    spiffe_id: str
    expires_at: datetime


@dataclass(frozen=True)
class TokenView:
    id: str
    spiffe_id: str
    created_by: str
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    revoked: bool

    def to_json(self) -> dict[str, object]:
        def iso(moment: datetime | None) -> str | None:
            return None if moment is None else moment.isoformat().replace("+00:00", "Z")

        return {
            "id": self.id,
            "spiffe_id": self.spiffe_id,
            "created_by": self.created_by,
            "created_at": iso(self.created_at),
            "expires_at": iso(self.expires_at),
            "used_at": iso(self.used_at),
            "revoked": self.revoked,
            "state": "revoked" if self.revoked else "used" if self.used_at else "unused",
        }


class JoinTokens:
    """Create, list, revoke and consume join tokens."""

    def __init__(self, database: Database, trust_domain: TrustDomain) -> None:
        self.database = database
        self.trust_domain = trust_domain

    def create(
        self, spiffe_id: str, ttl: timedelta, actor: str, now: datetime | None = None
    ) -> IssuedToken:
        now = now or datetime.now(UTC)
        parsed = SpiffeID.parse(spiffe_id)
        if not parsed.member_of(self.trust_domain):
            raise InvalidEntry(f"{spiffe_id} is not in trust domain {self.trust_domain.name}")
        low, high = JOIN_TOKEN_TTL_RANGE
        if not low <= ttl <= high:
            raise InvalidEntry(
                f"join token TTL {int(ttl.total_seconds())}s is outside "
                f"{int(low.total_seconds())}s-{int(high.total_seconds())}s"
            )
        token = new_token()
        row = JoinToken(
            id=str(uuid.uuid4()),
            token_hash=token_hash(token),
            spiffe_id=str(parsed),
            created_by=actor,
            created_at=now,
            expires_at=now + ttl,
            used_at=None,
            revoked=False,
        )
        with self.database.session() as session:
            entry = session.scalars(select(Entry.id).where(Entry.spiffe_id == str(parsed))).first()
            if entry is None:
                raise InvalidEntry(
                    f"no registration entry for {parsed}; create one first "
                    "(idmint entry create --spiffe-id ... --selector join_token:any:true ...)"
                )
            session.add(row)
            audit.append(
                session,
                [
                    audit.Event(
                        "join-token.create",
                        str(parsed),
                        actor,
                        detail={"id": row.id, "expires_at": row.expires_at},
                        at=now,
                    )
                ],
            )
        return IssuedToken(row.id, token, row.spiffe_id, row.expires_at)

    def list(self) -> list[TokenView]:
        with self.database.session() as session:
            rows = session.scalars(select(JoinToken).order_by(JoinToken.created_at))
            return [
                TokenView(
                    r.id,
                    r.spiffe_id,
                    r.created_by,
                    r.created_at,
                    r.expires_at,
                    r.used_at,
                    r.revoked,
                )
                for r in rows
            ]

    def revoke(self, token_id: str, actor: str, now: datetime | None = None) -> None:
        now = now or datetime.now(UTC)
        with self.database.session() as session:
            changed = _rowcount(
                session.execute(
                    update(JoinToken).where(JoinToken.id == token_id).values(revoked=True)
                )
            )
            if not changed:
                raise JoinTokenNotFound(f"no join token with id {token_id!r}")
            audit.append(session, [audit.Event("join-token.revoke", token_id, actor, at=now)])

    def consume(self, hashed: str, now: datetime) -> tuple[str, str]:
        """The JoinTokenLedger protocol: use a token once, atomically."""
        with self.database.cursor() as cursor:
            spent = spend_join_token(self.database, cursor, hashed, now)
        if spent is None:
            raise join_token_refusal(self.database, hashed)
        return spent


# One statement, written for the driver: this runs once per join-token
# attestation inside the database's write turn, and building it through
# SQLAlchemy's expression and ORM layers took longer than executing it.
_CONSUME = (
    "UPDATE join_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL"
    " AND revoked = FALSE AND expires_at > ? RETURNING id, spiffe_id"
)


def spend_join_token(
    database: Database, cursor: Any, hashed: str, now: datetime
) -> tuple[str, str] | None:
    """Mark the token with this hash used, in the transaction of ``cursor``.

    ``cursor`` comes from :meth:`Database.cursor`. Returns (token id, SPIFFE
    ID), or None when it is unknown, used, revoked or expired
    (:func:`join_token_refusal` says which).
    """
    stamp = time_binder(database.engine)(now)
    cursor.execute(driver_sql(database.engine, _CONSUME), (stamp, hashed, stamp))
    row = cursor.fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def join_token_refusal(database: Database, hashed: str) -> AttestationFailed:
    """Why the token with this hash could not be spent, without revealing more."""
    with database.reading() as session:
        row = session.scalars(select(JoinToken).where(JoinToken.token_hash == hashed)).first()
        if row is None:
            return AttestationFailed("unknown join token")
        if row.used_at is not None:
            return EvidenceReplayed("this join token was already used")
        if row.revoked:
            return AttestationFailed("this join token was revoked")
        return AttestationFailed("this join token has expired")


class Nonces:
    """Server nonces for proof of possession (x509pop, renewal)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def issue(self, purpose: str, now: datetime | None = None) -> tuple[str, datetime]:
        now = now or datetime.now(UTC)
        value = secrets.token_urlsafe(32)
        expires = now + NONCE_TTL
        with self.database.session() as session:
            session.execute(
                insert(Nonce).values(value=value, purpose=purpose, expires_at=expires, used_at=None)
            )
        return value, expires

    def consume(self, nonce: str, now: datetime) -> None:
        with self.database.session() as session:
            used = _rowcount(
                session.execute(
                    update(Nonce)
                    .where(Nonce.value == nonce)
                    .where(Nonce.used_at.is_(None))
                    .where(Nonce.expires_at > now)
                    .values(used_at=now)
                )
            )
            if used != 1:
                exists = session.scalars(select(Nonce.used_at).where(Nonce.value == nonce)).first()
                if exists is not None:
                    raise EvidenceReplayed("this nonce was already used; ask for a new one")
                raise AttestationFailed("unknown or expired nonce; ask for a new one")


class UsedEvidenceLedger:
    """Replay protection for evidence that carries its own expiry (OIDC jti...)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def spend(
        self, keys: Iterable[tuple[str, datetime]], now: datetime, timeout: float | None = None
    ) -> None:
        rows = [{"key": key[:255], "used_at": now, "expires_at": exp} for key, exp in keys]
        if not rows:
            return
        try:
            with self.database.connection(timeout) as connection:
                connection.execute(insert(UsedEvidence), rows)
        except IntegrityError:
            raise EvidenceReplayed(
                "this evidence was already used; get a fresh token from your platform"
            ) from None

    def purge(self, now: datetime) -> int:
        with self.database.session() as session:
            removed = session.execute(delete(UsedEvidence).where(UsedEvidence.expires_at < now))
            session.execute(delete(Nonce).where(Nonce.expires_at < now))
            return _rowcount(removed)
