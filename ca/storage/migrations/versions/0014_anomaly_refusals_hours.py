"""anomaly baselines: refusals per minute and hours of activity

``anomaly_baselines`` gains the refusals signal's statistics
(``refusal_count`` in the current minute, ``refusal_mean`` and
``refusal_var``: their EWMA per closed minute) and the hours-of-activity
signal's (``hours``: issuances per hour of day, UTC; ``hours_since``: when
counting began). Existing rows start at zero and count hours from their next
issuance, so no hour is news until a week after the upgrade.

Numbered 0014 (0013 is taken on another branch); it follows 0012, the head
here.

Revision ID: 0014
Revises: 0012
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0012"


def upgrade() -> None:
    with op.batch_alter_table("anomaly_baselines", schema=None) as batch_op:
        # server_default: rows that exist already get zeros and an empty list.
        batch_op.add_column(
            sa.Column("refusal_count", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("refusal_mean", sa.Float(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column("refusal_var", sa.Float(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("hours", sa.JSON(), nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("hours_since", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("anomaly_baselines", schema=None) as batch_op:
        batch_op.drop_column("hours_since")
        batch_op.drop_column("hours")
        batch_op.drop_column("refusal_var")
        batch_op.drop_column("refusal_mean")
        batch_op.drop_column("refusal_count")
