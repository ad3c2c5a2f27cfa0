"""Typed models. Column types are chosen to behave alike on SQLite and PostgreSQL."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every dialect (SQLite drops the zone otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: idmint stores aware UTC times only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _enum(cls: type[enum.Enum]) -> Enum:
    # Stored as plain strings with a CHECK-free VARCHAR: adding a state later
    # needs no ALTER TYPE on PostgreSQL.
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class Base(DeclarativeBase):
    """Declarative base of every idmint table."""


class AuthorityKind(enum.StrEnum):
    """What an authority signs."""

    ROOT = "root"
    INTERMEDIATE = "intermediate"
    JWT = "jwt"
    #: Signs checkpoints of the audit log's head; published at /v1/audit/keys,
    #: never in the SPIFFE bundle.
    AUDIT = "audit"


class AuthorityState(enum.StrEnum):
    """Life cycle of an authority (see DESIGN.md, Keys and authorities)."""

    PREPARED = "prepared"
    ACTIVE = "active"
    RETIRED = "retired"
    REMOVED = "removed"
    TAINTED = "tainted"


class Authority(Base):
    """A CA or JWT signing key in the HSM, its certificate and its state."""

    __tablename__ = "authorities"
    __table_args__ = (
        # At most one active authority per kind, settled by the database so
        # that replicas racing on a rotation cannot both win.
        Index(
            "uq_authorities_one_active",
            "kind",
            unique=True,
            sqlite_where=text("state = 'active'"),
            postgresql_where=text("state = 'active'"),
        ),
        # And at most one successor waiting: replicas racing to prepare one
        # produce exactly one.
        Index(
            "uq_authorities_one_prepared",
            "kind",
            unique=True,
            sqlite_where=text("state = 'prepared'"),
            postgresql_where=text("state = 'prepared'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[AuthorityKind] = mapped_column(_enum(AuthorityKind))
    state: Mapped[AuthorityState] = mapped_column(_enum(AuthorityState))
    key_uri: Mapped[str] = mapped_column(String(512))
    key_type: Mapped[str] = mapped_column(String(32))
    #: JWT key id, or the hex SKI of a CA certificate.
    kid: Mapped[str] = mapped_column(String(128), unique=True)
    certificate_pem: Mapped[str | None] = mapped_column(Text)
    public_key_pem: Mapped[str] = mapped_column(Text)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("authorities.id"))
    not_before: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class CredentialKind(enum.StrEnum):
    """The two SVID types."""

    X509 = "x509"
    JWT = "jwt"


class Entry(Base):
    """A registration entry: all of these selectors -> this SPIFFE ID, with policy."""

    __tablename__ = "entries"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    spiffe_id: Mapped[str] = mapped_column(String(2048), index=True)
    #: Sorted, de-duplicated ``type:name:value`` strings.
    selectors: Mapped[list[str]] = mapped_column(JSON)
    x509_ttl_seconds: Mapped[int] = mapped_column(Integer)
    jwt_ttl_seconds: Mapped[int] = mapped_column(Integer)
    audiences: Mapped[list[str]] = mapped_column(JSON)
    dns_names: Mapped[list[str]] = mapped_column(JSON)
    owner: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: The agent SPIFFE ID that serves this entry (None: issued directly).
    parent_id: Mapped[str | None] = mapped_column(String(2048), index=True, default=None)
    #: Agents whose node selectors include all of these serve the entry too.
    node_selectors: Mapped[list[str]] = mapped_column(JSON, default=list)


class Agent(Base):
    """A node agent that attested: its SPIFFE ID, how it proved itself, and a ban flag."""

    __tablename__ = "agents"

    spiffe_id: Mapped[str] = mapped_column(String(2048), primary_key=True)
    attestation_type: Mapped[str] = mapped_column(String(32))
    #: Verified node selectors from its attestation (entries may target them).
    selectors: Mapped[list[str]] = mapped_column(JSON)
    #: The registration entry that holds its own SVID policy (created with it).
    entry_id: Mapped[str] = mapped_column(String(36))
    serial: Mapped[str | None] = mapped_column(String(64))
    #: SHA-256 of the current agent SVID's public key (SPKI DER), see ca/api/agent.py.
    key_sha256: Mapped[str | None] = mapped_column(String(64))
    svid_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    attested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    banned: Mapped[bool] = mapped_column(Boolean, default=False)
    banned_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IssuedCredential(Base):
    """One SVID the CA signed: enough to revoke it and to know what is outstanding."""

    __tablename__ = "issued_credentials"
    __table_args__ = (UniqueConstraint("kind", "identifier"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[CredentialKind] = mapped_column(_enum(CredentialKind))
    #: Hex serial number of an X509-SVID, or the jti of a JWT-SVID.
    identifier: Mapped[str] = mapped_column(String(64))
    spiffe_id: Mapped[str] = mapped_column(String(2048))
    entry_id: Mapped[str | None] = mapped_column(String(36), index=True)
    authority_id: Mapped[int] = mapped_column(ForeignKey("authorities.id"), index=True)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Revocation(Base):
    """A revoked credential, kept until it would have expired anyway."""

    __tablename__ = "revocations"
    __table_args__ = (UniqueConstraint("kind", "identifier"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[CredentialKind] = mapped_column(_enum(CredentialKind))
    identifier: Mapped[str] = mapped_column(String(64))
    authority_id: Mapped[int | None] = mapped_column(ForeignKey("authorities.id"))
    reason: Mapped[str] = mapped_column(String(64))
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime())
    not_after: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class EntryRevision(Base):
    """One row: the revision of the registration entries, raised by every entry change.

    Writers take this row's lock first (an UPDATE), so revisions commit in
    the order they are numbered on PostgreSQL as on SQLite, and a reader
    that has seen revision N can never later find a change numbered below N.
    """

    __tablename__ = "entry_revision"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(Integer)


class EntryChange(Base):
    """The change log of the entries: revision N changed (or deleted) this entry.

    Workers and replicas read it to refresh their entry index incrementally;
    old rows are pruned, and a reader that fell behind the pruning reloads.
    """

    __tablename__ = "entry_changes"

    revision: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    entry_id: Mapped[str] = mapped_column(String(36))
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditEvent(Base):
    """An append-only, hash-chained audit record (see ca.audit)."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    actor: Mapped[str] = mapped_column(String(2048))
    action: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(2048))
    outcome: Mapped[str] = mapped_column(String(16))
    #: Canonical JSON (sorted keys) so the hash is reproducible on any database.
    detail: Mapped[str] = mapped_column(Text)
    # Not unique or indexed: seq orders the chain (migration 0005 says why).
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row: the newest sequence number and hash of the audit chain.

    Appenders lock this row first (an UPDATE), which serialises appends from
    every process and replica on both SQLite and PostgreSQL, and lets
    ``audit verify`` notice rows cut off the end of the chain.
    """

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class BundleState(Base):
    """One row: the SPIFFE bundle sequence number, raised on every change."""

    __tablename__ = "bundle_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class JoinToken(Base):
    """A one-time join token, stored hashed."""

    __tablename__ = "join_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    spiffe_id: Mapped[str] = mapped_column(String(2048))
    created_by: Mapped[str] = mapped_column(String(2048))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)


class Nonce(Base):
    """A server nonce for proof-of-possession, single use."""

    __tablename__ = "nonces"

    value: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class UsedEvidence(Base):
    """Evidence already used (OIDC jti, renewal proofs), kept until it expires."""

    __tablename__ = "used_evidence"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    used_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class AuditCheckpoint(Base):
    """A signed checkpoint of the audit head (see ca.authority.checkpoints).

    ``token`` is a compact JWS by an audit authority over ``seq``, ``hash``
    and the time: a database administrator can delete these rows but cannot
    forge one, so each row anchors the chain up to ``seq``.
    """

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    #: Unique: replicas racing to sign the same head store one checkpoint.
    seq: Mapped[int] = mapped_column(Integer, unique=True)
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    kid: Mapped[str] = mapped_column(String(128))
    token: Mapped[str] = mapped_column(Text)


class AnomalyBaseline(Base):
    """What one registration entry's issuance usually looks like, and the standing decision.

    One row per entry, shared by every replica (see ca.anomaly.baseline),
    and one per agent for what it asks on its workloads' behalf (keyed
    ``agent:<the agent's entry id>``); the row ``*`` holds the trust
    domain's default policy and learning switch.
    """

    __tablename__ = "anomaly_baselines"

    entry_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    #: Issuances observed so far (learning) and the start of the current minute.
    samples: Mapped[int] = mapped_column(Integer)
    #: Closed minutes folded into the rate EWMA.
    minutes: Mapped[int] = mapped_column(Integer)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime())
    window_count: Mapped[int] = mapped_column(Integer)
    #: EWMA of issuances per minute over closed minutes, and of its squared deviation.
    rate_mean: Mapped[float] = mapped_column(Float)
    rate_var: Mapped[float] = mapped_column(Float)
    #: EWMA of seconds between issuances (renewal cadence) and its variance.
    interval_mean: Mapped[float] = mapped_column(Float)
    interval_var: Mapped[float] = mapped_column(Float)
    #: Refusals in the current minute, and their EWMA per closed minute with its variance.
    refusal_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    refusal_mean: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    refusal_var: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    #: Issuances per hour of day (UTC, 24 counts; [] before any) since ``hours_since``.
    hours: Mapped[list[int]] = mapped_column(JSON, default=list, server_default="[]")
    hours_since: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Seen source networks, audiences and attestation sources (sorted, bounded).
    networks: Mapped[list[str]] = mapped_column(JSON)
    audiences: Mapped[list[str]] = mapped_column(JSON)
    sources: Mapped[list[str]] = mapped_column(JSON)
    #: The standing decision (throttle, step-up, deny) until cleared, and why.
    action: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    #: Per-entry policy: the strongest action allowed ("" = trust-domain default).
    policy: Mapped[str] = mapped_column(String(16), default="")
    exempt: Mapped[bool] = mapped_column(Boolean, default=False)
    #: Learning frozen (``idmint anomaly policy --learn off``).
    frozen: Mapped[bool] = mapped_column(Boolean, default=False)
