"""Rows locked once per transaction (store.row_locks): read under a lock the first time,
from the session after that; a new transaction locks again."""

from __future__ import annotations

import gc
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, select

from gpunet.store import tables
from gpunet.store.db import Database
from gpunet.store.row_locks import lock_rows, locked
from tests.conftest import migrated


def _accounts(d: Database, *ids: str) -> None:
    at = datetime.now(UTC)
    with d.transaction() as s:
        for i in ids:
            s.add(tables.Account(id=i, name=i, created_at=at))


def test_a_row_is_read_under_its_lock_once_per_transaction(db_url: str) -> None:
    migrated(db_url)
    d = Database(db_url)
    _accounts(d, "a1", "a2", "a3")
    sent: list[str] = []
    event.listen(d.engine, "before_cursor_execute", lambda _c, _k, sql, *_a: sent.append(sql))
    try:
        with d.transaction() as s:
            rows = lock_rows(s, tables.Account, ["a3", "a1", "a1", "missing"])
            assert [r.id for r in rows] == ["a1", "a3"]  # in key order, once each
            assert len(sent) == 1
            if d.is_postgres:
                assert "FOR UPDATE" in sent[0]
            one = locked(s, tables.Account, "a1")
            assert one is rows[0] and len(sent) == 1  # from what the transaction holds
            del rows, one
            gc.collect()  # the session holds unchanged rows weakly; the lock's record does not
            assert locked(s, tables.Account, "a3") is not None and len(sent) == 1
            two = locked(s, tables.Account, "a2")  # not locked yet: read under a lock
            assert two is not None and len(sent) == 2
            if d.is_postgres:
                assert "FOR UPDATE" in sent[1]
            assert locked(s, tables.Account, "a2") is two and len(sent) == 2
            assert locked(s, tables.Account, "missing") is None
            assert len(sent) == 2  # locked as absent: not asked again
            assert locked(s, tables.Account, "other") is None
            assert locked(s, tables.Account, "other") is None
            assert len(sent) == 4  # never locked, no row: asked each time
        with d.transaction() as s:  # a new transaction holds nothing
            locked(s, tables.Account, "a1")
            assert len(sent) == 5
    finally:
        d.dispose()


def test_fresh_overwrites_what_the_session_held(db_url: str) -> None:
    migrated(db_url)
    d = Database(db_url)
    _accounts(d, "a1", "a2")
    try:
        with d.transaction() as s:
            old: Any = s.get(tables.Account, "a1")
            kept: Any = s.get(tables.Account, "a2")
            with d.transaction() as other:  # another writer, committed meanwhile
                for row in other.scalars(select(tables.Account)):
                    row.name = f"renamed-{row.id}"
            assert locked(s, tables.Account, "a1", fresh=True) is old
            assert old.name == "renamed-a1"
            assert locked(s, tables.Account, "a2") is kept
            assert kept.name == "a2"  # without ``fresh``, what the session held stands
    finally:
        d.dispose()
