"""Never lose work: why an attempt is being stopped (cancel or preempt)

Revision ID: 0005_never_lose_work
Revises: 0004_safe_to_join
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_never_lose_work"
down_revision = "0004_safe_to_join"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as b:
        b.add_column(sa.Column("stop_kind", sa.String(20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as b:
        b.drop_column("stop_kind")
