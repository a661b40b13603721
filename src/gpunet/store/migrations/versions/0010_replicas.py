"""Coordinator replicas: the leader's fencing epoch (one row)

Revision ID: 0010_replicas
Revises: 0009_owner_reclaim
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_replicas"
down_revision = "0009_owner_reclaim"
branch_labels = None
depends_on = None


def upgrade() -> None:
    t = op.create_table(
        "coordinator_leader",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("replica", sa.String(), nullable=True),
        sa.Column("elected_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.bulk_insert(t, [{"id": 1, "epoch": 0, "replica": None, "elected_at": None}])


def downgrade() -> None:
    op.drop_table("coordinator_leader")
