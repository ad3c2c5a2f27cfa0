"""audit hashes not indexed

The audit log's hash and prev_hash columns were UNIQUE. The chain does not
need it: seq is the primary key and appends take the head row's lock, so a
fork cannot be written, and ``idmint audit verify`` checks every link. The
two indexes cost the most of each recorded issuance: random 64-hex keys put
every new row on a different index page (measured: 46 -> 27 us per recorded
SVID on SQLite, and fewer pages for each WAL checkpoint to copy).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"

# PostgreSQL's names for the unnamed constraints of migration 0002.
_PG_CONSTRAINTS = ("audit_events_hash_key", "audit_events_prev_hash_key")


def _audit_events(*constraints: sa.Constraint) -> sa.Table:
    return sa.Table(
        "audit_events",
        sa.MetaData(),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=2048), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=2048), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        *constraints,
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot drop a constraint: copy the table into its new shape.
        with op.batch_alter_table("audit_events", copy_from=_audit_events(), recreate="always"):
            pass  # no column changes: leaving the block copies the rows into the new shape
        return
    for name in _PG_CONSTRAINTS:
        op.drop_constraint(name, "audit_events", type_="unique")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        with op.batch_alter_table(
            "audit_events",
            copy_from=_audit_events(sa.UniqueConstraint("hash"), sa.UniqueConstraint("prev_hash")),
            recreate="always",
        ):
            pass  # as above: the copy on leaving is the change
        return
    op.create_unique_constraint(_PG_CONSTRAINTS[0], "audit_events", ["hash"])
    op.create_unique_constraint(_PG_CONSTRAINTS[1], "audit_events", ["prev_hash"])
