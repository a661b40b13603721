"""Job arrays: the tasks of one array share an array id and each has its index

Revision ID: 0012_arrays
Revises: 0011_gangs
"""

import sqlalchemy as sa
from alembic import op

revision = "0012_arrays"
down_revision = "0011_gangs"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("array_id", sa.String(40), nullable=True))
        b.add_column(sa.Column("array_index", sa.Integer(), nullable=True))
        b.create_index("ix_jobs_array", ["array_id", "array_index"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as b:
        b.drop_index("ix_jobs_array")
        b.drop_column("array_index")
        b.drop_column("array_id")
