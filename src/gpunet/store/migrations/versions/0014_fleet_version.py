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
(``create_triggers``).

Revision ID: 0014_fleet_version
Revises: 0013_services
"""

import sqlalchemy as sa
from alembic import op

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
JSON_COLUMNS = {"runtimes", "gpu_ids"}  # compared as text on PostgreSQL (json has no "=")
INSERT_WHEN = {"jobs": "NEW.state = 'queued'"}
UPDATE_WHEN_ALSO = {"jobs": "(OLD.state = 'queued' OR NEW.state = 'queued')"}


def _changed(col: str, pg: bool) -> str:
    if pg:
        if col in JSON_COLUMNS:
            return f"OLD.{col}::text IS DISTINCT FROM NEW.{col}::text"
        return f"OLD.{col} IS DISTINCT FROM NEW.{col}"
    return f"OLD.{col} IS NOT NEW.{col}"


def create_triggers(table: str) -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    cols = WATCHED[table]
    when = "(" + " OR ".join(_changed(c, pg) for c in cols) + ")"
    if table in UPDATE_WHEN_ALSO:
        when = f"{when} AND {UPDATE_WHEN_ALSO[table]}"
    on_insert = INSERT_WHEN.get(table)
    if pg:
        ins_when = f" WHEN ({on_insert})" if on_insert else ""
        op.execute(
            f"CREATE TRIGGER {table}_change_insert BEFORE INSERT ON {table} FOR EACH ROW"
            f"{ins_when} EXECUTE FUNCTION gpunet_change_version()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_change_update BEFORE UPDATE OF {', '.join(cols)} ON {table}"
            f" FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION gpunet_change_version()"
        )
        return
    body = (
        "BEGIN UPDATE change_clock SET value = value + 1 WHERE id = 1; "
        f"UPDATE {table} SET change_version = (SELECT value FROM change_clock WHERE id = 1) "
        "WHERE rowid = NEW.rowid; END"
    )
    ins_when = f" WHEN {on_insert}" if on_insert else ""
    op.execute(f"CREATE TRIGGER {table}_change_insert AFTER INSERT ON {table}{ins_when} {body}")
    op.execute(
        f"CREATE TRIGGER {table}_change_update AFTER UPDATE OF {', '.join(cols)} ON {table}"
        f" WHEN {when} {body}"
    )


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
        for kind in ("insert", "update"):
            on = f" ON {table}" if pg else ""
            op.execute(f"DROP TRIGGER IF EXISTS {table}_change_{kind}{on}")
    if pg:
        op.execute("DROP FUNCTION gpunet_change_version()")
    op.drop_table("change_clock")
    for table in WATCHED:
        with op.batch_alter_table(table) as b:
            b.drop_index(f"ix_{table}_change_version")
            b.drop_column("change_version")
