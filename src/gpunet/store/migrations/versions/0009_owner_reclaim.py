"""Owners take their GPUs back: a GPU's owner-busy flag, reclaimed attempts

Revision ID: 0009_owner_reclaim
Revises: 0008_preemption
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_owner_reclaim"
down_revision = "0008_preemption"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gpus") as b:
        b.add_column(
            sa.Column("owner_busy", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("attempts") as b:
        b.add_column(
            sa.Column("reclaimed", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("attempts") as b:
        b.drop_column("reclaimed")
    with op.batch_alter_table("gpus") as b:
        b.drop_column("owner_busy")
