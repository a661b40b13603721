"""GPU lifecycle: state, tier and health per GPU; the gpu_events timeline

Revision ID: 0003_lifecycle
Revises: 0002_market
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_lifecycle"
down_revision = "0002_market"
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
        b.add_column(sa.Column("purchase_price", sa.Float(), nullable=True))
        b.add_column(sa.Column("purchased_at", sa.DateTime(timezone=True), nullable=True))
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
    op.create_table(
        "attempt_energy",
        sa.Column("attempt_id", sa.String(length=40), nullable=False),
        sa.Column("gpu_id", sa.String(length=80), nullable=False),
        sa.Column("joules", sa.Float(), nullable=False),
        sa.Column("method", sa.String(length=20), nullable=False),
        sa.Column("resets", sa.Integer(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("counter_start_j", sa.Float(), nullable=True),
        sa.Column("counter_end_j", sa.Float(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["attempt_id"], ["attempts.id"]),
        sa.ForeignKeyConstraint(["gpu_id"], ["gpus.id"]),
        sa.PrimaryKeyConstraint("attempt_id", "gpu_id"),
    )
    op.create_index("ix_attempt_energy_gpu_id", "attempt_energy", ["gpu_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_attempt_energy_gpu_id", table_name="attempt_energy")
    op.drop_table("attempt_energy")
    op.drop_index("ix_gpu_benchmarks_gpu", table_name="gpu_benchmarks")
    op.drop_table("gpu_benchmarks")
    op.drop_index("ix_gpu_events_gpu", table_name="gpu_events")
    op.drop_table("gpu_events")
    with op.batch_alter_table("gpus") as b:
        for col in (
            "purchased_at",
            "purchase_price",
            "health_at",
            "health_reasons",
            "health_status",
            "tier",
            "lifecycle_state",
        ):
            b.drop_column(col)
