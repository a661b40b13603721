"""Rows locked for the rest of a transaction, read from the database once.

``Session.get(..., with_for_update=True)`` always asks the database, even for a row the
transaction already holds. A batch of agent reports locks its attempts, their jobs and their
charges in three queries (``lock_rows``); the code that takes each report then asks for its rows
with ``locked``, which answers a row this transaction already locked without asking again. On
SQLite, where there is no ``SELECT ... FOR UPDATE``, ``store.db.write_lock`` does the locking
and these are plain reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from sqlalchemy import inspect, select
from sqlalchemy.orm import Session

T = TypeVar("T")

_HELD = "gpunet.row_locks"  # Session.info: (the transaction, {(model, key): row})


def _held(s: Session) -> dict[tuple[type, Any], Any]:
    """The rows locked in the session's current transaction (a new transaction holds none),
    kept here: the session's identity map holds its unchanged rows only weakly."""
    tx = s.get_transaction()
    kept = s.info.get(_HELD)
    if kept is None or kept[0] is not tx:
        kept = (tx, {})
        s.info[_HELD] = kept
    held: dict[tuple[type, Any], Any] = kept[1]
    return held


def lock_rows(s: Session, model: type[T], keys: Iterable[Any]) -> list[T]:
    """Lock and read afresh the rows of ``model`` with these primary keys, in one query and in
    key order (two transactions locking overlapping sets then wait for each other rather than
    deadlock). A key with no row is held as absent: ``locked`` answers None for it without
    asking again (for rows written in the same transaction as the row that names them, such
    as an attempt's charge, which exists by the time the attempt can be read, or never)."""
    wanted = sorted(set(keys))
    if not wanted:
        return []
    pk = inspect(model).primary_key[0]
    rows = list(
        s.scalars(
            select(model)
            .where(pk.in_(wanted))
            .order_by(pk)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    )
    held = _held(s)
    held.update(((model, k), None) for k in wanted)
    for row in rows:
        held[(model, inspect(row).identity[0])] = row
    return rows


def locked(s: Session, model: type[T], key: Any, *, fresh: bool = False) -> T | None:
    """The row of ``model`` with primary key ``key``, locked until the transaction ends: read
    under ``SELECT ... FOR UPDATE`` the first time, from the session after that. ``fresh``:
    overwrite what the session holds with the database's row on that first read."""
    held = _held(s)
    if (model, key) in held:
        row: T | None = held[(model, key)]
        return row
    got = s.get(model, key, with_for_update=True, populate_existing=fresh)
    if got is not None:
        held[(model, key)] = got
    return got
