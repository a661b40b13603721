"""Change versions: nodes, GPUs, attempts and jobs carry the version of their last change
the scheduler sees, set by triggers, so a pass reads only the rows changed since the last one

Every write that changes a column the scheduler pass reads sets the row's ``change_version``
in the database itself (a trigger), whoever writes it: the leader, a follower replica, a
tool. On SQLite the version is a counter in ``change_clock`` (one writer at a time, so
versions commit in order); on PostgreSQL it is the writing transaction's id, and a reader
asks which of those were not yet visible in its previous snapshot (``services.pass_cache``),
so a transaction that commits late is never skipped.

A later migration that rebuilds one of these tables on SQLite (``batch_alter_table`` with a
change SQLite cannot make in place) drops its triggers and must create them again
(``store.change_triggers``); 0015 changed the GPUs' watched columns.

Revision ID: 0014_fleet_version
Revises: 0013_services
"""

import sqlalchemy as sa
from alembic import op

from gpunet.store import change_triggers

revision = "0014_fleet_version"
down_revision = "0013_services"
branch_labels = None
depends_on = None

# table -> the columns whose change the scheduler sees (what its snapshot, queue and holders
# read); an insert always counts, except a job's that does not enter the queue
WATCHED = {
    "nodes": ["status", "site", "account_id", "isolation", "runtimes", "accepts_unisolated"],
    "gpus": [
        "node_id",
        "model",
        "memory_mb",
        "cc_major",
        "cc_minor",
        "healthy",
        "drained",
        "simulated",
        "power_w",
        "tier",
        "price_per_hour",
        "owner_busy",
        "min_interruptible_price",
        "lifecycle_state",
    ],
    "attempts": ["job_id", "node_id", "gpu_ids", "state", "stop_kind", "preempted_for"],
    "jobs": ["state"],
}


def create_triggers(table: str) -> None:
    """``table``'s triggers with the columns watched as of this migration."""
    change_triggers.create_triggers(table, WATCHED[table])


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    for table in WATCHED:
        with op.batch_alter_table(table) as b:
            b.add_column(
                sa.Column("change_version", sa.BigInteger(), nullable=False, server_default="0")
            )
            b.create_index(f"ix_{table}_change_version", ["change_version"])
    # SQLite's version counter (on PostgreSQL the versions are transaction ids and the one
    # row stays at 0: the table exists on both so that both have the same schema)
    op.create_table(
        "change_clock",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )
    op.execute("INSERT INTO change_clock (id, value) VALUES (1, 0)")
    if pg:
        op.execute(
            "CREATE FUNCTION gpunet_change_version() RETURNS trigger LANGUAGE plpgsql AS $$ "
            "BEGIN NEW.change_version := pg_current_xact_id()::text::bigint; RETURN NEW; END $$"
        )
    for table in WATCHED:
        create_triggers(table)


def downgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    for table in WATCHED:
        change_triggers.drop_triggers(table)
    if pg:
        op.execute("DROP FUNCTION gpunet_change_version()")
    op.drop_table("change_clock")
    for table in WATCHED:
        with op.batch_alter_table(table) as b:
            b.drop_index(f"ix_{table}_change_version")
            b.drop_column("change_version")
