"""Rows kept between scheduler passes, refreshed from the rows changed since the last read.

Nodes, GPUs, attempts and jobs carry ``change_version``, set by the store's triggers on every
write of a column the scheduler reads (migration 0014), whichever replica or tool wrote it.
A reader keeps a *cursor* (what it has seen) and asks for the rows changed since:

* SQLite: the version is a counter (``change_clock``) bumped by each such write; one writer
  at a time, so versions commit in order and "version > cursor" is every later change.
* PostgreSQL: the version is the writing transaction's id and the cursor is the reader's
  snapshot (``pg_current_snapshot()``); "changed since" is every row whose transaction was
  not yet visible in that snapshot, so a transaction that started before the last read and
  commits after it is never skipped (a sequence would be: numbers are drawn in one order and
  committed in another).

A cursor is taken before the rows are read, so rows read may be newer than it (read again
next time, harmless); and only when the reading transaction has written nothing yet, so it
never covers a write that may still roll back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, and_, text
from sqlalchemy.orm import Session

# a full read every this many seconds whatever the versions say: a safety net, not a need
FULL_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Cursor:
    clock: int = 0  # SQLite: change_clock's value
    snapshot: str | None = None  # PostgreSQL: the snapshot, as text
    xmin: int = 0  # PostgreSQL: every transaction below it was visible in the snapshot
    safe: bool = True  # the reading transaction had written nothing when it was taken

    def same(self, other: Cursor) -> bool:
        """Nothing can have changed between the two (no transaction committed)."""
        return self.clock == other.clock and self.snapshot == other.snapshot


_PG_CURSOR = text(
    "SELECT s::text, pg_snapshot_xmin(s)::text::bigint, pg_current_xact_id_if_assigned() IS NULL"
    " FROM pg_current_snapshot() AS s"
)
_SQLITE_CURSOR = text("SELECT value FROM change_clock WHERE id = 1")


def cursor(s: Session) -> Cursor:
    """Where the store's changes stand now (one statement)."""
    if s.get_bind().dialect.name == "postgresql":
        snap, xmin, clean = s.execute(_PG_CURSOR).one()
        return Cursor(snapshot=snap, xmin=int(xmin), safe=bool(clean))
    # SQLite: the transaction's own uncommitted writes are in the counter too; safe only if
    # it has written nothing (the driver begins the transaction at the first write)
    raw = s.connection().connection.dbapi_connection
    clean = not s.new and not s.dirty and not getattr(raw, "in_transaction", True)
    return Cursor(clock=int(s.scalar(_SQLITE_CURSOR) or 0), safe=clean)


def changed_since(table: Table, c: Cursor) -> ColumnElement[bool]:
    """Rows of ``table`` changed after ``c`` was taken."""
    if c.snapshot is None:
        return table.c.change_version > c.clock
    return and_(
        table.c.change_version >= c.xmin,
        text(
            f"NOT pg_visible_in_snapshot(CAST(CAST({table.name}.change_version AS text) AS xid8),"
            f" CAST(:snap_{table.name} AS pg_snapshot))"
        ).bindparams(**{f"snap_{table.name}": c.snapshot}),
    )


class KeyedRows:
    """The rows of one query by their first column, kept up to date incrementally.

    ``base``: the columns (and joins), without a filter; ``table``: the table whose versions
    tell what changed; ``keep(row)``: whether a row belongs (``where``: the same in SQL, for a
    full read). A changed row that no longer belongs is dropped. ``make(row)``: what is kept
    of a row (built once per change)."""

    def __init__(
        self,
        base: Select[*tuple[Any, ...]],
        table: Table,
        keep: Callable[[Any], bool] = lambda _row: True,
        where: ColumnElement[bool] | None = None,
        full_every_s: float = FULL_EVERY_S,
        make: Callable[[Any], Any] = tuple,
    ) -> None:
        self.base, self.table, self.keep, self.where = base, table, keep, where
        self.make = make
        self.full_every_s = full_every_s
        self.rows: dict[Any, Any] = {}
        self.cursor: Cursor | None = None
        self.loaded_at = 0.0
        self.full_reads = 0  # counted for tests and benchmarks
        self.changed_read = 0  # rows read by the refreshes that read only changes (the same)

    def refresh(self, s: Session, now: Cursor) -> set[Any] | None:
        """Bring the rows up to ``now``, a cursor taken in this transaction (the scheduler
        pass takes it before it writes; one taken after a write is not kept, and the next
        refresh reads everything). The keys of the rows changed, or None after a full read."""
        t = time.monotonic()
        if self.cursor is None or t - self.loaded_at > self.full_every_s:
            q = self.base if self.where is None else self.base.where(self.where)
            self.rows = {r[0]: self.make(r) for r in s.execute(q)}
            self.cursor, self.loaded_at = (now, t) if now.safe else (None, 0.0)
            self.full_reads += 1
            return None
        if now.safe and now.same(self.cursor):  # (a snapshot does not show one's own writes)
            return set()
        out = set()
        for r in s.execute(self.base.where(changed_since(self.table, self.cursor))):
            key = r[0]
            out.add(key)
            self.changed_read += 1
            if self.keep(r):
                self.rows[key] = self.make(r)
            else:
                self.rows.pop(key, None)
        # rows read by a transaction that has written may hold its own writes, which may
        # still roll back: the next refresh reads everything again
        self.cursor = now if now.safe else None
        return out

    def peek(self, s: Session) -> dict[Any, Any]:
        """The rows as they stand now, this transaction's writes included, without moving the
        cursor (rows changed since it are read again next time)."""
        if self.cursor is None:
            q = self.base if self.where is None else self.base.where(self.where)
            return {r[0]: self.make(r) for r in s.execute(q)}
        out = dict(self.rows)
        for r in s.execute(self.base.where(changed_since(self.table, self.cursor))):
            if self.keep(r):
                out[r[0]] = self.make(r)
            else:
                out.pop(r[0], None)
        return out
