"""One coordinator per SQLite file: an exclusive lock on ``<database>.lock``, held for the
process's lifetime.

``flock`` locks belong to the open file, so the kernel releases this one when the process
ends, however it ends (kill -9 included): a stale lock file never blocks a restart.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

from gpunet.errors import GpunetError

_held: dict[Path, IO[str]] = {}  # lock files this process holds, kept open until it exits


def sqlite_path(database_url: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URL (None for PostgreSQL or an in-memory database)."""
    if not database_url.startswith("sqlite:///"):
        return None
    path = database_url.removeprefix("sqlite:///")
    return None if path in ("", ":memory:") else Path(path)


def hold_sqlite_lock(database_url: str) -> Path | None:
    """Take the lock of the URL's SQLite file for the rest of this process (no-op for
    PostgreSQL, where replicas share the database: docs/replicas.md). Returns the lock file.
    Raises GpunetError naming the file and the holding process when another coordinator has
    it."""
    db = sqlite_path(database_url)
    if db is None:
        return None
    lock = db.resolve().with_name(db.name + ".lock")
    if lock in _held:
        return lock
    lock.parent.mkdir(parents=True, exist_ok=True)
    fh = lock.open("a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        who = f" (held by process {holder})" if holder else ""
        raise GpunetError(
            f"another gpunet coordinator is using the SQLite database {db}{who}: its lock file "
            f"{lock} is taken. SQLite serves one coordinator; for several replicas use "
            "PostgreSQL (docs/replicas.md)"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    _held[lock] = fh
    return lock


def release(lock: Path) -> None:
    """Let go of a lock this process holds (tests; a coordinator keeps it until it exits)."""
    fh = _held.pop(lock, None)
    if fh is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()
