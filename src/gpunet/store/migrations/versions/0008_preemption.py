"""Preemption: the job a preempted attempt makes room for

Revision ID: 0008_preemption
Revises: 0007_exact_billing
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_preemption"
down_revision = "0007_exact_billing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as b:
        b.add_column(sa.Column("preempted_for", sa.String(40), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as b:
        b.drop_column("preempted_for")
