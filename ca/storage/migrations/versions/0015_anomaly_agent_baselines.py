"""anomaly baselines for agents: a longer key

``anomaly_baselines.entry_id`` held a registration entry's UUID (36
characters). An agent's baseline of what it asks for on its workloads'
behalf is keyed ``agent:<the agent's entry id>`` (42), so the column grows
to 64. PostgreSQL enforces the length; SQLite rebuilds the table.

Revision ID: 0015
Revises: 0014
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"


def upgrade() -> None:
    with op.batch_alter_table("anomaly_baselines", schema=None) as batch_op:
        batch_op.alter_column(
            "entry_id", existing_type=sa.String(36), type_=sa.String(64), existing_nullable=False
        )


def downgrade() -> None:
    with op.batch_alter_table("anomaly_baselines", schema=None) as batch_op:
        batch_op.alter_column(
            "entry_id", existing_type=sa.String(64), type_=sa.String(36), existing_nullable=False
        )
