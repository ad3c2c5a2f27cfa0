"""agents and parented entries

Entries gain ``parent_id`` (the agent SPIFFE ID that serves them) and
``node_selectors`` (every agent whose node selectors include these serves
them); both empty on existing rows, which keep being issued directly. The
``agents`` table records each attested node agent and whether it is banned.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"


def upgrade() -> None:
    with op.batch_alter_table("entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_id", sa.String(length=2048), nullable=True))
        # server_default: rows that exist already get an empty list, not NULL.
        batch_op.add_column(
            sa.Column("node_selectors", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.create_index(batch_op.f("ix_entries_parent_id"), ["parent_id"], unique=False)

    op.create_table(
        "agents",
        sa.Column("spiffe_id", sa.String(length=2048), nullable=False),
        sa.Column("attestation_type", sa.String(length=32), nullable=False),
        sa.Column("selectors", sa.JSON(), nullable=False),
        sa.Column("entry_id", sa.String(length=36), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=True),
        sa.Column("key_sha256", sa.String(length=64), nullable=True),
        sa.Column("svid_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("banned", sa.Boolean(), nullable=False),
        sa.Column("banned_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("spiffe_id"),
    )


def downgrade() -> None:
    op.drop_table("agents")
    with op.batch_alter_table("entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_entries_parent_id"))
        batch_op.drop_column("node_selectors")
        batch_op.drop_column("parent_id")
