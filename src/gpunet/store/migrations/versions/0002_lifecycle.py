"""GPU lifecycle: state, tier and health per GPU; the gpu_events timeline

Revision ID: 0002_lifecycle
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_lifecycle"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gpus") as b:
        # GPUs known before lifecycle tracking were in service: they start active
        b.add_column(
            sa.Column("lifecycle_state", sa.String(20), nullable=False, server_default="active")
        )
        b.add_column(sa.Column("tier", sa.String(20), nullable=True))
        b.add_column(
            sa.Column("health_status", sa.String(20), nullable=False, server_default="healthy")
        )
        b.add_column(sa.Column("health_reasons", sa.JSON(), nullable=False, server_default="[]"))
        b.add_column(sa.Column("health_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "gpu_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("gpu_id", sa.String(length=80), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("from_state", sa.String(length=20), nullable=True),
        sa.Column("to_state", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["gpu_id"], ["gpus.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_gpu_events_gpu", "gpu_events", ["gpu_id", "id"], unique=False)
    op.create_table(
        "gpu_benchmarks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("gpu_id", sa.String(length=80), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("simulated", sa.Boolean(), nullable=False),
        sa.Column("score_pct", sa.Float(), nullable=True),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("scored", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["gpu_id"], ["gpus.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_gpu_benchmarks_gpu", "gpu_benchmarks", ["gpu_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_gpu_benchmarks_gpu", table_name="gpu_benchmarks")
    op.drop_table("gpu_benchmarks")
    op.drop_index("ix_gpu_events_gpu", table_name="gpu_events")
    op.drop_table("gpu_events")
    with op.batch_alter_table("gpus") as b:
        for col in ("health_at", "health_reasons", "health_status", "tier", "lifecycle_state"):
            b.drop_column(col)
