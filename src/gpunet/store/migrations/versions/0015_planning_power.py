"""Planning power: the scheduler plans with a GPU's power held in buckets
(``planning_power_w``, ``core.power``), no longer with the live reading (``power_w``)

The live draw changes at nearly every telemetry flush; while it was a watched column every
GPU row's change version moved every flush and each scheduler pass read the whole fleet
again. The GPUs' triggers now watch ``planning_power_w`` instead of ``power_w``. The backfill
buckets each GPU's last reading with its catalog TDP.

Revision ID: 0015_planning_power
Revises: 0014_fleet_version
"""

import sqlalchemy as sa
from alembic import op

from gpunet.catalog import catalog
from gpunet.core.power import planning_power
from gpunet.store import change_triggers

revision = "0015_planning_power"
down_revision = "0014_fleet_version"
branch_labels = None
depends_on = None

# 0014's watched GPU columns, ``power_w`` replaced by ``planning_power_w``
GPU_WATCHED = [
    "node_id",
    "model",
    "memory_mb",
    "cc_major",
    "cc_minor",
    "healthy",
    "drained",
    "simulated",
    "planning_power_w",
    "tier",
    "price_per_hour",
    "owner_busy",
    "min_interruptible_price",
    "lifecycle_state",
]
GPU_WATCHED_BEFORE = [("power_w" if c == "planning_power_w" else c) for c in GPU_WATCHED]

_gpus = sa.table(
    "gpus",
    sa.column("id", sa.String),
    sa.column("model", sa.String),
    sa.column("power_w", sa.Float),
    sa.column("planning_power_w", sa.Float),
)


def upgrade() -> None:
    op.add_column("gpus", sa.Column("planning_power_w", sa.Float(), nullable=True))
    bind = op.get_bind()
    models = catalog()
    rows = bind.execute(
        sa.select(_gpus.c.id, _gpus.c.model, _gpus.c.power_w).where(_gpus.c.power_w.is_not(None))
    ).all()
    planned = []
    for gid, model, power in rows:
        spec = models.get(model)
        plan = planning_power(None, power, spec.tdp_w if spec else None)
        planned.append({"gid": gid, "plan": plan})
    if planned:
        bind.execute(
            _gpus.update()
            .where(_gpus.c.id == sa.bindparam("gid"))
            .values(planning_power_w=sa.bindparam("plan")),
            planned,
        )
    change_triggers.drop_triggers("gpus")
    change_triggers.create_triggers("gpus", GPU_WATCHED)


def downgrade() -> None:
    # the triggers name the column: dropped first (in place, SQLite 3.35 or later)
    change_triggers.drop_triggers("gpus")
    op.drop_column("gpus", "planning_power_w")
    change_triggers.create_triggers("gpus", GPU_WATCHED_BEFORE)
