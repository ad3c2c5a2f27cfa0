"""Signed checkpoints of the audit log's head, anchored in the HSM.

The audit log (ca/storage/audit.py) is a hash chain in the database: on its
own it cannot catch someone with write access who rewrites the whole chain
and its head consistently, or cuts rows off the end and fixes the head. A
checkpoint closes that gap, as a Certificate Transparency log's signed tree
head does: the audit authority's HSM key signs the head (sequence number,
hash, time). A database administrator cannot forge a checkpoint, so any
copy kept outside the database (``idmint audit checkpoint --out``, or
``GET /v1/audit/checkpoints``) proves what the chain held up to that event.

Format: a compact JWS (RFC 7515), ES256, protected header
``{"alg": "ES256", "kid": <JWK thumbprint>, "typ": "idmint-audit-checkpoint+jwt"}``
and the claims::

    {"iss": "spiffe://TD", "seq": 1234, "hash": "<64 hex>", "iat": 1767225600,
     "time": "2026-01-01T00:00:00.000000Z"}

``hash`` is the ``hash`` of audit event ``seq``; ``time`` keeps microseconds,
``iat`` is the same instant in whole seconds. Any JOSE library verifies it
with the key from ``GET /v1/audit/keys`` (a JWKS).

Checkpoints are signed by the server at a fixed interval (``[audit]
checkpoint_seconds``, default 300) when the head has moved, and at once after
every authority change; :func:`verify_extends` proves the chain still extends
one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import josepy
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from idmint.ca.authority.authorities import (
    AUDIT_ALGORITHM,
    AUDIT_LABEL_PREFIX,
    active,
    jwk_thumbprint_kid,
    signing_key,
)
from idmint.ca.config import CAConfig
from idmint.ca.errors import CAError
from idmint.ca.storage import audit
from idmint.ca.storage.db import Database
from idmint.ca.storage.models import (
    AuditCheckpoint,
    AuditEvent,
    AuditHead,
    Authority,
    AuthorityKind,
    AuthorityState,
)
from idmint.errors import ConfigError
from idmint.hsm import KeyStore

CHECKPOINT_TYPE = "idmint-audit-checkpoint+jwt"
#: josepy's form of it (RFC 7515 section 4.1.9: "application/" may be omitted).
_MEDIA_TYPE = "application/" + CHECKPOINT_TYPE
DEFAULT_CHECKPOINT_SECONDS = 300
#: Audit keys in these states verify checkpoints: a tainted key may have
#: signed forgeries, a removed one is gone.
TRUSTED_STATES = frozenset({AuthorityState.PREPARED, AuthorityState.ACTIVE, AuthorityState.RETIRED})


class CheckpointInvalid(CAError):
    """A checkpoint is malformed, or not signed by one of this CA's audit keys."""

    code = "audit-checkpoint-invalid"


class CheckpointNotFound(CAError):
    """No checkpoint with this number (or none yet)."""

    code = "audit-checkpoint-not-found"


@dataclass(frozen=True)
class AuditSettings:
    """The ``[audit]`` section of idmint.toml."""

    checkpoint_seconds: int = DEFAULT_CHECKPOINT_SECONDS
    key_lifetime: timedelta = timedelta(days=30)
    syslog_address: str | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_seconds < 1:
            raise ConfigError(
                f"[audit] checkpoint_seconds must be at least 1, not {self.checkpoint_seconds}"
            )
        if self.key_lifetime < timedelta(days=1):
            raise ConfigError("[audit] key_lifetime_days must be at least 1")

    @classmethod
    def from_config(cls, config: CAConfig) -> AuditSettings:
        section = config.extra.get("audit") or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{config.config_path}: [audit] must be a table")
        unknown = set(section) - {"checkpoint_seconds", "key_lifetime_days", "syslog_address"}
        if unknown:
            raise ConfigError(f"{config.config_path}: unknown [audit] settings {sorted(unknown)}")

        def whole(name: str, default: int) -> int:
            value = section.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(
                    f"{config.config_path}: [audit] {name} must be a whole number, not {value!r}"
                )
            return value

        address = section.get("syslog_address")
        return cls(
            checkpoint_seconds=whole("checkpoint_seconds", DEFAULT_CHECKPOINT_SECONDS),
            key_lifetime=timedelta(days=whole("key_lifetime_days", 30)),
            syslog_address=None if address is None else str(address),
        )


@dataclass(frozen=True)
class Checkpoint:
    """A stored checkpoint: its number and what it signs."""

    number: int
    seq: int
    hash: str
    at: datetime
    kid: str
    token: str

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "seq": self.seq,
            "hash": self.hash,
            "time": _time_text(self.at),
            "kid": self.kid,
            "checkpoint": self.token,
        }


def _time_text(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _view(row: AuditCheckpoint) -> Checkpoint:
    return Checkpoint(row.id, row.seq, row.hash, row.at, row.kid, row.token)


# -- signing ------------------------------------------------------------------


def _sign(keystore: KeyStore, authority: Authority, claims: Mapping[str, Any]) -> str:
    key = signing_key(keystore, authority)
    payload = json.dumps(claims, sort_keys=True, separators=(",", ":")).encode("ascii")
    # josepy signs through the key's cryptography interface: the HSM signs.
    signed = josepy.JWS.sign(
        payload,
        key=josepy.JWKEC(key=key),
        alg=josepy.ES256,
        kid=authority.kid,
        typ=_MEDIA_TYPE,
        protect=frozenset({"alg", "kid", "typ"}),
    )
    return str(signed.to_compact().decode("ascii"))


def sign_checkpoint(
    keystore: KeyStore, database: Database, trust_domain: str, now: datetime | None = None
) -> Checkpoint | None:
    """Sign the current head with the active audit authority and store it.

    None if the log is empty. If the head is already checkpointed (by this
    or another replica), that checkpoint is returned.
    """
    now = now or datetime.now(UTC)
    authority = active(database, AuthorityKind.AUDIT)
    with database.reading() as session:
        head = session.scalars(select(AuditHead).where(AuditHead.id == 1)).one()
        seq, digest = head.seq, head.hash
        existing = session.scalars(
            select(AuditCheckpoint).where(AuditCheckpoint.seq == seq)
        ).one_or_none()
        if existing is not None:
            return _view(existing)
    if seq == 0:
        return None
    claims = {
        "iss": f"spiffe://{trust_domain}",
        "seq": seq,
        "hash": digest,
        "iat": int(now.timestamp()),
        "time": _time_text(now),
    }
    token = _sign(keystore, authority, claims)
    try:
        with database.session() as session:
            row = AuditCheckpoint(seq=seq, hash=digest, at=now, kid=authority.kid, token=token)
            session.add(row)
            session.flush()
            return _view(row)
    except IntegrityError:  # another replica signed this head a moment ago
        with database.reading() as session:
            return _view(
                session.scalars(select(AuditCheckpoint).where(AuditCheckpoint.seq == seq)).one()
            )


def checkpoint_due(
    keystore: KeyStore,
    database: Database,
    trust_domain: str,
    settings: AuditSettings,
    now: datetime | None = None,
) -> Checkpoint | None:
    """Sign a checkpoint if one is due; return it, or None if none was due.

    Due when the head moved since the last checkpoint and either
    ``checkpoint_seconds`` passed or an authority changed since (an
    ``authority.*`` event after it): key changes are anchored at once.
    """
    now = now or datetime.now(UTC)
    with database.reading() as session:
        head_seq = session.scalars(select(AuditHead.seq).where(AuditHead.id == 1)).one()
        last = session.scalars(
            select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(1)
        ).one_or_none()
        if head_seq == 0 or (last is not None and last.seq >= head_seq):
            return None
        if last is not None and now - last.at < timedelta(seconds=settings.checkpoint_seconds):
            changed = session.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.seq > last.seq, AuditEvent.action.like("authority.%"))
            )
            if not changed:
                return None
    return sign_checkpoint(keystore, database, trust_domain, now)


# -- reading --------------------------------------------------------------------


def latest(database: Database) -> Checkpoint:
    """The newest checkpoint; raise if none was signed yet."""
    with database.reading() as session:
        row = session.scalars(
            select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc()).limit(1)
        ).one_or_none()
        if row is None:
            raise CheckpointNotFound("no audit checkpoint has been signed yet")
        return _view(row)


def by_number(database: Database, number: int) -> Checkpoint:
    with database.reading() as session:
        row = session.get(AuditCheckpoint, number)
        if row is None:
            raise CheckpointNotFound(f"there is no audit checkpoint number {number}")
        return _view(row)


def stored(session: Session) -> list[Checkpoint]:
    """Every stored checkpoint, oldest head first."""
    return [
        _view(r) for r in session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.seq))
    ]


def audit_jwks(database: Database) -> dict[str, Any]:
    """The audit keys that verify checkpoints, as a JWKS (``GET /v1/audit/keys``)."""
    from cryptography.hazmat.primitives import serialization

    with database.reading() as session:
        rows = list(
            session.scalars(
                select(Authority)
                .where(Authority.kind == AuthorityKind.AUDIT)
                .where(Authority.state.in_(list(TRUSTED_STATES)))
                .order_by(Authority.id)
            )
        )
    keys = []
    for row in rows:
        public = serialization.load_pem_public_key(row.public_key_pem.encode("ascii"))
        assert isinstance(public, ec.EllipticCurvePublicKey)
        keys.append(
            {
                **josepy.JWKEC(key=public).to_partial_json(),
                "kid": row.kid,
                "use": "sig",
                "alg": AUDIT_ALGORITHM,
            }
        )
    return {"keys": keys}


# -- verifying ------------------------------------------------------------------

PublicKeys = Mapping[str, ec.EllipticCurvePublicKey]


def hsm_audit_keys(keystore: KeyStore, database: Database) -> dict[str, ec.EllipticCurvePublicKey]:
    """Audit public keys read from the HSM itself, by kid (JWK thumbprint).

    Not from the database: whoever can write the database could add a key
    of their own there. Keys labelled as audit keys on the token, minus
    those the database marks tainted (a key may have signed forgeries).
    """
    with database.reading() as session:
        distrusted = set(
            session.scalars(
                select(Authority.kid)
                .where(Authority.kind == AuthorityKind.AUDIT)
                .where(Authority.state.not_in(list(TRUSTED_STATES)))
            )
        )
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for info in keystore.list_keys():
        if not info.label.startswith(AUDIT_LABEL_PREFIX):
            continue
        public = keystore.get(key_id=info.key_id).public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey):
            continue
        kid = jwk_thumbprint_kid(public)
        if kid not in distrusted:
            keys[kid] = public
    return keys


def jwks_keys(document: Any) -> dict[str, ec.EllipticCurvePublicKey]:
    """EC keys by kid from a JWKS (e.g. a saved ``GET /v1/audit/keys``)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise CheckpointInvalid("the audit key set must be a JWKS: an object with a 'keys' list")
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for item in document["keys"]:
        try:
            jwk = josepy.JWK.from_json(item)
        except (josepy.errors.DeserializationError, TypeError, ValueError) as error:
            raise CheckpointInvalid(
                f"a key in the audit key set is not a valid JWK: {error}"
            ) from None
        kid = item.get("kid") if isinstance(item, dict) else None
        if not isinstance(jwk, josepy.JWKEC):
            continue  # audit keys are EC; anything else cannot verify a checkpoint
        # josepy wraps the key; its numbers give back a plain cryptography key.
        public = jwk.public_key().key.public_numbers().public_key()
        if isinstance(kid, str) and isinstance(public, ec.EllipticCurvePublicKey):
            keys[kid] = public
    return keys


@dataclass(frozen=True)
class CheckpointClaims:
    """What a verified checkpoint says."""

    issuer: str
    seq: int
    hash: str
    time: datetime
    kid: str


def verify_token(token: str, keys: PublicKeys) -> CheckpointClaims:
    """Check a checkpoint's form and signature; raise :class:`CheckpointInvalid`."""
    token = token.strip()
    try:
        signed = josepy.JWS.from_compact(token.encode("ascii"))
        header = signed.signature.combined
    except (josepy.errors.DeserializationError, UnicodeError, ValueError, TypeError) as error:
        raise CheckpointInvalid(f"the checkpoint is not a compact JWS: {error}") from None
    typ = None if header.typ is None else str(header.typ)
    if typ not in (CHECKPOINT_TYPE, _MEDIA_TYPE):
        raise CheckpointInvalid(
            f"the token's typ is {typ!r}, not {CHECKPOINT_TYPE!r}: not an audit checkpoint"
        )
    if header.alg is not josepy.ES256:
        raise CheckpointInvalid(f"audit checkpoints are signed with ES256, not {header.alg}")
    kid = str(header.kid or "")
    public = keys.get(kid)
    if public is None:
        raise CheckpointInvalid(
            f"the checkpoint is signed by key {kid!r}, which is not one of this CA's "
            f"trusted audit keys ({', '.join(sorted(keys)) or 'none'}): refused"
        )
    if not signed.verify(josepy.JWKEC(key=public)):
        raise CheckpointInvalid(
            f"the checkpoint's signature does not verify with audit key {kid}: "
            "it was altered or forged"
        )
    try:
        claims = json.loads(signed.payload)
        seq, digest, moment = claims["seq"], claims["hash"], claims["time"]
        issuer = claims["iss"]
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise ValueError(f"seq {seq!r} is not a positive whole number")
        if not (isinstance(digest, str) and len(digest) == 64):
            raise ValueError(f"hash {digest!r} is not 64 hex digits")
        at = datetime.fromisoformat(str(moment).replace("Z", "+00:00"))
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointInvalid(f"the checkpoint's claims are malformed: {error}") from None
    return CheckpointClaims(str(issuer), seq, digest, at, kid)


@dataclass(frozen=True)
class ExtendsReport:
    """The chain verified from genesis to the head and extends the checkpoint."""

    checkpoint: CheckpointClaims
    chain: audit.VerifyReport


def verify_extends(
    session: Session, claims: CheckpointClaims, stored_checkpoints: list[CheckpointClaims]
) -> ExtendsReport:
    """Prove the chain in ``session`` still extends a verified checkpoint.

    The row at ``claims.seq`` must carry the checkpoint's hash, and the whole
    chain must verify up to the head. If the row differs, the other verified
    checkpoints narrow down the first event that differs: it lies after the
    newest one that still matches.
    """
    _check_covered(session, claims, stored_checkpoints, _head_seq(session))
    chain = audit.verify_database(session)
    return ExtendsReport(claims, chain)


def _first_difference(
    session: Session, claims: CheckpointClaims, others: list[CheckpointClaims]
) -> str:
    anchors = sorted(
        {(c.seq, c.hash) for c in [*others, claims] if c.seq <= claims.seq}, key=lambda a: a[0]
    )
    hashes: dict[int, str] = {
        seq: digest
        for seq, digest in session.execute(
            select(AuditEvent.seq, AuditEvent.hash).where(
                AuditEvent.seq.in_([seq for seq, _ in anchors])
            )
        )
    }
    good, bad = 0, claims.seq
    for seq, digest in anchors:
        if hashes.get(seq) == digest:
            good = seq
        else:
            bad = seq
            break
    where = (
        f"the first event that differs is event {bad}"
        if bad == good + 1
        else f"the first event that differs is one of events {good + 1}-{bad}"
    )
    return (
        f"audit event {claims.seq} no longer has the hash the checkpoint signed at "
        f"{_time_text(claims.time)} says ({claims.hash[:12]}...): the chain was rewritten; "
        f"{where} (signed checkpoints match up to event {good})"
    )


@dataclass(frozen=True)
class LogReport:
    """What ``idmint audit verify`` checked."""

    chain: audit.VerifyReport
    summary: audit.LogSummary
    checkpoints: int
    latest: Checkpoint | None
    extends: CheckpointClaims | None


def verify_log(
    session: Session, keys: PublicKeys, checkpoint: CheckpointClaims | None = None
) -> LogReport:
    """Verify the chain, every stored checkpoint, and that the chain extends ``checkpoint``.

    Each stored checkpoint must be signed by a trusted audit key and match
    its row: a rewrite in SQL that kept the chain consistent still breaks
    the stored checkpoints, unless they were deleted too, which is what an
    operator's own copy (``checkpoint``) is for.
    """
    rows = stored(session)
    verified = []
    for row in rows:
        try:
            verified.append(verify_token(row.token, keys))
        except CheckpointInvalid as error:
            raise CheckpointInvalid(f"stored audit checkpoint {row.number}: {error}") from None
    head_seq = _head_seq(session)
    # The operator's copy first: its message is the one they asked for.
    for claims in ([checkpoint] if checkpoint is not None else []) + verified[::-1]:
        _check_covered(session, claims, verified, head_seq)
    chain = audit.verify_database(session)
    return LogReport(
        chain=chain,
        summary=audit.summary(session),
        checkpoints=len(rows),
        latest=max(rows, key=lambda c: c.number) if rows else None,
        extends=checkpoint,
    )


def _head_seq(session: Session) -> int:
    return int(session.scalars(select(AuditHead.seq).where(AuditHead.id == 1)).one())


def _check_covered(
    session: Session, claims: CheckpointClaims, others: list[CheckpointClaims], head_seq: int
) -> None:
    """The log still reaches the checkpoint, and its row has the signed hash."""
    if head_seq < claims.seq:
        raise audit.AuditChainBroken(
            f"the checkpoint signed at {_time_text(claims.time)} covers events up to "
            f"{claims.seq}, but the log ends at event {head_seq}: "
            "events were cut off the end"
        )
    row_hash = session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == claims.seq))
    if row_hash is None:
        raise audit.AuditChainBroken(
            f"audit event {claims.seq}, which the checkpoint signed at "
            f"{_time_text(claims.time)} covers, is missing: rows were deleted"
        )
    if row_hash != claims.hash:
        raise audit.AuditChainBroken(_first_difference(session, claims, others))
