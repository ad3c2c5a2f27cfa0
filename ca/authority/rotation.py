"""Authority rotation: the operator's transitions and the server's automatic ones.

States (DESIGN.md, Keys and authorities)::

    prepared --activate--> active --retire--> retired --(all it signed expired)--> removed
        any but removed --taint--> tainted --revoke--> removed

- prepare: a successor is made and published (bundle, JWKS) before it signs;
- activate: the successor signs from now on and the old active retires, in
  one transaction;
- retire: an active authority stops signing (another must be active);
- taint: compromised: stops signing at once; an active intermediate or JWT
  key is replaced by a fresh successor in the same call;
- revoke: dropped from the bundle at once: everything it signed stops
  validating. The only usable root cannot be revoked.

Every transition is one database transaction with its audit event and a new
bundle sequence number; the partial unique indexes (one active, one prepared
per kind) make replicas that race on the same transition settle on one.

Intermediate and JWT authorities rotate by themselves (:func:`rotate_due`):
a successor is prepared at 1/2 of the active one's life, activated at 5/6,
and a retired one is removed, and its HSM key destroyed, once everything it
signed has expired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from idmint.ca.authority.authorities import (
    AuthorityConflict,
    authorities,
    bump_bundle_sequence,
    create_intermediate,
    create_jwt_authority,
    create_root,
    jwt_algorithm,
)
from idmint.ca.config import CAConfig
from idmint.ca.errors import InvalidTransition
from idmint.ca.storage import audit
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import Authority, AuthorityKind, AuthorityState
from idmint.hsm import KeyStore, KeyType
from idmint.hsm.uri import PKCS11URI

#: Longest credential an authority may have signed: an X509-SVID TTL is at
#: most 60 min, a JWT-SVID's 15 min. A retired authority stays this long.
MAX_CREDENTIAL_LIFETIME = {
    AuthorityKind.INTERMEDIATE: timedelta(minutes=60),
    AuthorityKind.JWT: timedelta(minutes=15),
}


@dataclass(frozen=True)
class RotationPolicy:
    """Key types and lifetimes of the automatically rotated authorities."""

    trust_domain: str
    intermediate_key_type: KeyType = KeyType.EC_P256
    intermediate_lifetime: timedelta = timedelta(hours=24)
    jwt_algorithm: str = "ES256"
    jwt_lifetime: timedelta = timedelta(hours=24)
    root_key_type: KeyType = KeyType.EC_P256
    root_lifetime: timedelta = timedelta(days=365)

    @classmethod
    def from_config(cls, config: CAConfig) -> RotationPolicy:
        return cls(
            trust_domain=config.trust_domain,
            intermediate_key_type=KeyType.parse(config.intermediate_key_type),
            intermediate_lifetime=timedelta(hours=config.intermediate_lifetime_hours),
            jwt_algorithm=config.jwt_algorithm,
            jwt_lifetime=timedelta(hours=config.jwt_lifetime_hours),
            root_key_type=KeyType.parse(config.root_key_type),
            root_lifetime=timedelta(days=config.root_lifetime_days),
        )


def _locked(session: Session, authority_id: int) -> Authority:
    row = session.scalars(
        select(Authority).where(Authority.id == authority_id).with_for_update()
    ).one_or_none()
    if row is None:
        raise InvalidTransition(f"there is no authority with id {authority_id}")
    return row


def _one(database: Database, kind: AuthorityKind, state: AuthorityState) -> Authority:
    found = authorities(database, kind, state)
    if not found:
        raise InvalidTransition(f"there is no {state.value} {kind.value} authority")
    return found[-1]


def _event(
    session: Session, action: str, row: Authority, actor: str, now: datetime, **detail: object
) -> None:
    bump_bundle_sequence(session, now)
    audit.append(
        session,
        [
            audit.Event(
                f"authority.{action}.{row.kind.value}",
                row.kid,
                actor,
                detail={"id": row.id, "state": row.state.value, **detail},
                at=now,
            )
        ],
    )


def prepare(
    keystore: KeyStore,
    database: Database,
    kind: AuthorityKind,
    policy: RotationPolicy,
    actor: str,
    now: datetime | None = None,
) -> Authority:
    """Make and publish a successor for ``kind`` (at most one waits at a time)."""
    now = now or datetime.now(UTC)
    if authorities(database, kind, AuthorityState.PREPARED):
        raise InvalidTransition(f"a prepared {kind.value} authority is already waiting")
    try:
        if kind is AuthorityKind.ROOT:
            return create_root(
                keystore,
                database,
                policy.trust_domain,
                policy.root_key_type,
                policy.root_lifetime,
                AuthorityState.PREPARED,
                now,
                actor,
            )
        if kind is AuthorityKind.INTERMEDIATE:
            return create_intermediate(
                keystore,
                database,
                policy.trust_domain,
                policy.intermediate_key_type,
                policy.intermediate_lifetime,
                AuthorityState.PREPARED,
                now,
                actor,
            )
        return create_jwt_authority(
            keystore,
            database,
            policy.jwt_algorithm,
            policy.jwt_lifetime,
            AuthorityState.PREPARED,
            now,
            actor,
        )
    except AuthorityConflict:
        raise InvalidTransition(
            f"another server prepared a {kind.value} authority at the same moment"
        ) from None


def activate(
    database: Database, authority_id: int, actor: str, now: datetime | None = None
) -> Authority:
    """The prepared authority signs from now on; the active one of its kind retires."""
    now = now or datetime.now(UTC)
    with database.session() as session:
        row = _locked(session, authority_id)
        if row.state is not AuthorityState.PREPARED:
            raise InvalidTransition(
                f"{row.kind.value} authority {row.id} is {row.state.value}; "
                "only a prepared authority can be activated"
            )
        if row.not_after <= now:
            raise InvalidTransition(f"{row.kind.value} authority {row.id} has expired")
        previous = session.scalars(
            select(Authority)
            .where(Authority.kind == row.kind, Authority.state == AuthorityState.ACTIVE)
            .with_for_update()
        ).all()
        for old in previous:
            old.state, old.updated_at = AuthorityState.RETIRED, now
        # Flushed first: the one-active index must see the old one retired.
        session.flush()
        row.state, row.updated_at = AuthorityState.ACTIVE, now
        try:
            session.flush()
        except IntegrityError:
            raise InvalidTransition(
                "another server activated an authority at the same moment"
            ) from None
        _event(session, "activate", row, actor, now, retired=[o.id for o in previous])
    return row


def retire(
    database: Database, authority_id: int, actor: str, now: datetime | None = None
) -> Authority:
    """An active authority stops signing: its prepared successor takes over.

    The retired authority stays in the bundle until nothing it signed can
    still be valid, then it is removed (automatically, by :func:`rotate_due`).
    """
    now = now or datetime.now(UTC)
    row = next((a for a in authorities(database) if a.id == authority_id), None)
    if row is None:
        raise InvalidTransition(f"there is no authority with id {authority_id}")
    if row.state is not AuthorityState.ACTIVE:
        raise InvalidTransition(
            f"{row.kind.value} authority {row.id} is {row.state.value}; only an active one retires"
        )
    waiting = authorities(database, row.kind, AuthorityState.PREPARED)
    if not waiting:
        raise InvalidTransition(
            f"retiring the active {row.kind.value} authority would leave none to sign; "
            f"prepare a successor first (idmint authority prepare {row.kind.value})"
        )
    activate(database, waiting[-1].id, actor, now)
    return next(a for a in authorities(database) if a.id == authority_id)


def taint(
    keystore: KeyStore,
    database: Database,
    authority_id: int,
    policy: RotationPolicy,
    actor: str,
    now: datetime | None = None,
) -> tuple[Authority, Authority | None]:
    """Mark an authority compromised: it stops signing at once.

    An active intermediate or JWT authority is replaced in the same call by
    a fresh successor (activated at once); a tainted root stays in the bundle
    until revoked, and its intermediates are replaced once a new root is
    active.
    """
    now = now or datetime.now(UTC)
    with database.session() as session:
        row = _locked(session, authority_id)
        if row.state in (AuthorityState.REMOVED, AuthorityState.TAINTED):
            raise InvalidTransition(
                f"{row.kind.value} authority {row.id} is already {row.state.value}"
            )
        was_active = row.state is AuthorityState.ACTIVE
        if was_active and row.kind is AuthorityKind.ROOT:
            others = session.scalars(
                select(Authority.id).where(
                    Authority.kind == AuthorityKind.ROOT, Authority.state == AuthorityState.PREPARED
                )
            ).all()
            if not others:
                raise InvalidTransition(
                    "taint of the active root needs a prepared successor first "
                    "(idmint authority prepare root), so that issuance can continue"
                )
        row.state, row.updated_at = AuthorityState.TAINTED, now
        _event(session, "taint", row, actor, now, was_active=was_active)
    successor: Authority | None = None
    if was_active and row.kind is AuthorityKind.ROOT:
        successor = activate(
            database, _one(database, AuthorityKind.ROOT, AuthorityState.PREPARED).id, actor, now
        )
    elif was_active:
        waiting = authorities(database, row.kind, AuthorityState.PREPARED)
        if not waiting:
            waiting = [prepare(keystore, database, row.kind, policy, actor, now)]
        successor = activate(database, waiting[-1].id, actor, now)
    return row, successor


def revoke(
    keystore: KeyStore,
    database: Database,
    authority_id: int,
    actor: str,
    now: datetime | None = None,
) -> Authority:
    """Drop an authority from the bundle at once and destroy its key."""
    now = now or datetime.now(UTC)
    with database.session() as session:
        row = _locked(session, authority_id)
        if row.state is AuthorityState.REMOVED:
            raise InvalidTransition(f"{row.kind.value} authority {row.id} is already removed")
        if row.kind is AuthorityKind.ROOT:
            successors = session.scalars(
                select(Authority.id).where(
                    Authority.kind == AuthorityKind.ROOT,
                    Authority.state.in_([AuthorityState.ACTIVE, AuthorityState.PREPARED]),
                    Authority.id != row.id,
                )
            ).all()
            if not successors:
                raise InvalidTransition(
                    "revoking the only root without a successor is refused; "
                    "prepare one first (idmint authority prepare root)"
                )
        if row.state is AuthorityState.ACTIVE:
            raise InvalidTransition(
                f"{row.kind.value} authority {row.id} is active; taint it first "
                "(a successor takes over), then revoke it"
            )
        row.state, row.updated_at = AuthorityState.REMOVED, now
        _event(session, "revoke", row, actor, now)
        key_uri = row.key_uri
    _destroy_key(keystore, key_uri)
    return row


def _destroy_key(keystore: KeyStore, key_uri: str) -> None:
    key_id = PKCS11URI.parse(key_uri).id
    if key_id is None:
        return
    from idmint.hsm import KeyNotFound

    try:
        keystore.destroy(key_id)
    except KeyNotFound:
        pass  # another replica destroyed it first


def rotate_due(
    keystore: KeyStore,
    database: Database,
    policy: RotationPolicy,
    now: datetime | None = None,
    actor: str = "system:rotation",
) -> list[str]:
    """Run the automatic transitions that are due; return what was done."""
    now = now or datetime.now(UTC)
    done: list[str] = []
    for kind in (AuthorityKind.INTERMEDIATE, AuthorityKind.JWT):
        active = authorities(database, kind, AuthorityState.ACTIVE)
        if not active:
            continue
        current = active[-1]
        life = current.not_after - current.not_before
        waiting = authorities(database, kind, AuthorityState.PREPARED)
        if not waiting and now >= current.not_before + life / 2:
            try:
                waiting = [prepare(keystore, database, kind, policy, actor, now)]
                done.append(f"prepared {kind.value} {waiting[0].id}")
            except InvalidTransition:
                waiting = authorities(database, kind, AuthorityState.PREPARED)
        if waiting and now >= current.not_before + life * 5 / 6:
            try:
                activate(database, waiting[-1].id, actor, now)
                done.append(f"activated {kind.value} {waiting[-1].id}")
            except InvalidTransition:
                pass  # another replica did it
        for old in authorities(database, kind, AuthorityState.RETIRED):
            if now >= old.updated_at + MAX_CREDENTIAL_LIFETIME[kind] or now >= old.not_after:
                if _remove_retired(database, old.id, now, actor):
                    _destroy_key(keystore, old.key_uri)
                    done.append(f"removed {kind.value} {old.id}")
    # A retired root goes once no intermediate it signed can still be valid.
    intermediates = authorities(database, AuthorityKind.INTERMEDIATE)
    for root in authorities(database, AuthorityKind.ROOT, AuthorityState.RETIRED):
        children = [
            i
            for i in intermediates
            if i.parent_id == root.id
            and i.state is not AuthorityState.REMOVED
            and i.not_after > now
        ]
        if not children and _remove_retired(database, root.id, now, actor):
            _destroy_key(keystore, root.key_uri)
            done.append(f"removed root {root.id}")
    return done


def _remove_retired(database: Database, authority_id: int, now: datetime, actor: str) -> bool:
    with database.session() as session:
        row = _locked(session, authority_id)
        if row.state is not AuthorityState.RETIRED:
            return False
        row.state, row.updated_at = AuthorityState.REMOVED, now
        _event(session, "remove", row, actor, now)
    return True


def describe(rows: Sequence[Authority]) -> list[dict[str, object]]:
    """Authorities as operators see them."""
    return [
        {
            "id": r.id,
            "kind": r.kind.value,
            "state": r.state.value,
            "kid": r.kid,
            "key_type": r.key_type if r.kind is not AuthorityKind.JWT else jwt_algorithm(r),
            "not_before": r.not_before.isoformat().replace("+00:00", "Z"),
            "not_after": r.not_after.isoformat().replace("+00:00", "Z"),
            "parent_id": r.parent_id,
            "key_uri": r.key_uri,
        }
        for r in rows
    ]
