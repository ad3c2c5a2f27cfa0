"""Revoking credentials and identities (DESIGN.md, Revocation).

- an X509-SVID by serial: on the CRL and answered ``revoked`` by OCSP;
- a JWT-SVID by jti: on the denylist that JWT validation consults;
- a registration entry: disabled (no further issuance) and every credential
  issued under it that has not expired yet revoked with it.

Each revocation is one transaction with its audit event, so it is durable
and every replica sees it. Revocations are kept until the credential would
have expired anyway; after that they are dropped from the CRL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from idmint.ca.errors import (
    AlreadyRevoked,
    CredentialNotFound,
    InvalidRevocationReason,
    InvalidSerial,
)
from idmint.ca.issuance.entries import EntryNotFound, record_change
from idmint.ca.storage import audit
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import CredentialKind, Entry, IssuedCredential, Revocation

REASONS = frozenset(
    {"unspecified", "keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation"}
)


@dataclass(frozen=True)
class Revoked:
    kind: str
    identifier: str
    revoked_at: datetime
    not_after: datetime
    reason: str


def _check_reason(reason: str) -> None:
    if reason not in REASONS:
        raise InvalidRevocationReason(
            f"revocation reason {reason!r} is not one of {sorted(REASONS)}"
        )


def _revoke_rows(
    session: Session, rows: list[IssuedCredential], reason: str, now: datetime
) -> list[Revoked]:
    done = []
    already = {
        (r.kind, r.identifier)
        for r in session.scalars(
            select(Revocation).where(Revocation.identifier.in_([c.identifier for c in rows]))
        )
    }
    for credential in rows:
        if (credential.kind, credential.identifier) in already:
            continue
        session.add(
            Revocation(
                kind=credential.kind,
                identifier=credential.identifier,
                authority_id=credential.authority_id,
                reason=reason,
                revoked_at=now,
                not_after=credential.not_after,
            )
        )
        done.append(
            Revoked(credential.kind.value, credential.identifier, now, credential.not_after, reason)
        )
    return done


def revoke_credential(
    database: Database,
    kind: CredentialKind,
    identifier: str,
    actor: str,
    reason: str = "unspecified",
    now: datetime | None = None,
) -> Revoked:
    """Revoke one X509-SVID (hex serial) or JWT-SVID (jti)."""
    _check_reason(reason)
    now = now or datetime.now(UTC)
    if kind is CredentialKind.X509:
        # Serials as we store them: lowercase hex, no prefix, no leading zeros.
        given = identifier
        identifier = identifier.lower().removeprefix("0x").replace(":", "").lstrip("0") or "0"
        if not all(c in "0123456789abcdef" for c in identifier):
            raise InvalidSerial(
                f"serial {given!r} is not hexadecimal (e.g. 3f2a..., as openssl x509 -serial "
                "prints it, with or without colons)"
            )
    what = "X509-SVID with serial" if kind is CredentialKind.X509 else "JWT-SVID with jti"
    _wait_for_record(database, kind, identifier)
    try:
        with database.session() as session:
            credential = session.scalars(
                select(IssuedCredential)
                .where(IssuedCredential.kind == kind)
                .where(IssuedCredential.identifier == identifier)
            ).one_or_none()
            if credential is None:
                raise CredentialNotFound(f"no {what} {identifier} was issued by this CA")
            if credential.not_after <= now:
                raise CredentialNotFound(
                    f"the {what} {identifier} expired at {credential.not_after.isoformat()}; "
                    "nothing to revoke"
                )
            done = _revoke_rows(session, [credential], reason, now)
            if not done:
                raise AlreadyRevoked(f"the {what} {identifier} is already revoked")
            audit.append(
                session,
                [
                    audit.Event(
                        f"revoke.{kind.value}",
                        credential.spiffe_id,
                        actor,
                        detail={"identifier": identifier, "reason": reason},
                        at=now,
                    )
                ],
            )
    except IntegrityError:
        raise AlreadyRevoked(f"the {what} {identifier} is already revoked") from None
    return done[0]


#: How long a revocation waits for the issuance record of a credential issued
#: a moment ago: servers write those records a few milliseconds behind.
RECORD_GRACE_SECONDS = 2.0


def _wait_for_record(database: Database, kind: CredentialKind, identifier: str) -> None:
    deadline = time.monotonic() + RECORD_GRACE_SECONDS
    while True:
        with database.session() as session:
            found = session.scalar(
                select(IssuedCredential.id)
                .where(IssuedCredential.kind == kind)
                .where(IssuedCredential.identifier == identifier)
            )
        if found is not None or time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def revoke_entry(
    database: Database,
    entry_id: str,
    actor: str,
    reason: str = "unspecified",
    now: datetime | None = None,
    sweep_after: float = RECORD_GRACE_SECONDS,
) -> list[Revoked]:
    """Disable an entry and revoke every unexpired credential issued under it."""
    _check_reason(reason)
    now = now or datetime.now(UTC)
    with database.session() as session:
        entry = session.scalars(
            select(Entry).where(Entry.id == entry_id).with_for_update()
        ).one_or_none()
        if entry is None:
            raise EntryNotFound(f"no registration entry with id {entry_id!r}")
        session.execute(
            update(Entry).where(Entry.id == entry_id).values(disabled=True, updated_at=now)
        )
        record_change(session, [entry_id], now)  # every worker's index sees it
        outstanding = list(
            session.scalars(
                select(IssuedCredential)
                .where(IssuedCredential.entry_id == entry_id)
                .where(IssuedCredential.not_after > now)
            )
        )
        done = _revoke_rows(session, outstanding, reason, now)
        audit.append(
            session,
            [
                audit.Event(
                    "revoke.entry",
                    entry.spiffe_id,
                    actor,
                    detail={"id": entry_id, "reason": reason, "credentials": len(done)},
                    at=now,
                )
            ],
        )
    if sweep_after:
        # Servers may still issue under the entry for a moment (their caches)
        # and record what they issued a few milliseconds late: sweep again.
        time.sleep(sweep_after)
        later = datetime.now(UTC)
        with database.session() as session:
            stragglers = list(
                session.scalars(
                    select(IssuedCredential)
                    .where(IssuedCredential.entry_id == entry_id)
                    .where(IssuedCredential.not_after > later)
                )
            )
            done += _revoke_rows(session, stragglers, reason, later)
    return done


def revoked_identifiers(
    database: Database, kind: CredentialKind, now: datetime, authority_id: int | None = None
) -> list[tuple[str, datetime, str]]:
    """(identifier, revoked_at, reason) of unexpired revocations of ``kind``."""
    query = (
        select(Revocation.identifier, Revocation.revoked_at, Revocation.reason)
        .where(Revocation.kind == kind)
        .where(Revocation.not_after > now)
    )
    if authority_id is not None:
        query = query.where(Revocation.authority_id == authority_id)
    with database.reading() as session:
        return [(str(i), at, str(r)) for i, at, r in session.execute(query)]
