"""Checkpoints: uploads of a job's checkpoint directory and the files each holds

Revision ID: 0006_checkpoints
Revises: 0005_never_lose_work
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_checkpoints"
down_revision = "0005_never_lose_work"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("job_id", sa.String(40), sa.ForeignKey("jobs.id"), nullable=False),
        sa.Column("attempt_id", sa.String(40), nullable=False),
        sa.Column("account_id", sa.String(40), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_checkpoints_job_state", "checkpoints", ["job_id", "state"])
    op.create_index("ix_checkpoints_account_id", "checkpoints", ["account_id"])
    op.create_table(
        "checkpoint_files",
        sa.Column(
            "checkpoint_id", sa.String(40), sa.ForeignKey("checkpoints.id"), primary_key=True
        ),
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("digest", sa.String(80), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mode", sa.Integer(), nullable=False),
    )
    op.create_index("ix_checkpoint_files_digest", "checkpoint_files", ["digest"])


def downgrade() -> None:
    op.drop_index("ix_checkpoint_files_digest", table_name="checkpoint_files")
    op.drop_table("checkpoint_files")
    op.drop_index("ix_checkpoints_account_id", table_name="checkpoints")
    op.drop_index("ix_checkpoints_job_state", table_name="checkpoints")
    op.drop_table("checkpoints")
