"""The triggers that set ``change_version`` (migration 0014): one builder for every migration
that creates them again, with the columns watched as of that migration."""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

JSON_COLUMNS = {"runtimes", "gpu_ids"}  # compared as text on PostgreSQL (json has no "=")
INSERT_WHEN = {"jobs": "NEW.state = 'queued'"}
UPDATE_WHEN_ALSO = {"jobs": "(OLD.state = 'queued' OR NEW.state = 'queued')"}


def _changed(col: str, pg: bool) -> str:
    if pg:
        if col in JSON_COLUMNS:
            return f"OLD.{col}::text IS DISTINCT FROM NEW.{col}::text"
        return f"OLD.{col} IS DISTINCT FROM NEW.{col}"
    return f"OLD.{col} IS NOT NEW.{col}"


def create_triggers(table: str, cols: Sequence[str]) -> None:
    """Version ``table``'s rows on insert and on a change of one of ``cols``."""
    pg = op.get_bind().dialect.name == "postgresql"
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


def drop_triggers(table: str) -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    for kind in ("insert", "update"):
        on = f" ON {table}" if pg else ""
        op.execute(f"DROP TRIGGER IF EXISTS {table}_change_{kind}{on}")
