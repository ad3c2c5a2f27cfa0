"""Typed models. Column types are chosen to behave alike on SQLite and PostgreSQL."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, Enum, ForeignKey, Index, Integer, String, Text, text
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
