"""Exact billing: the running time each attempt's agent measured, and why an attempt was lost

Revision ID: 0007_exact_billing
Revises: 0006_checkpoints
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_exact_billing"
down_revision = "0006_checkpoints"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as b:
        b.add_column(sa.Column("runtime_s", sa.Float(), nullable=True))
        b.add_column(sa.Column("lost_cause", sa.String(20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as b:
        b.drop_column("lost_cause")
        b.drop_column("runtime_s")
