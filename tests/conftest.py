"""Shared fixtures: a fresh database per test, on SQLite and on PostgreSQL.

PostgreSQL tests need the server on 127.0.0.1:5432 (override with GPUNET_TEST_PG). Under CI
(``CI=true``) an unreachable server fails those tests; elsewhere it skips them.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import event

from gpunet.store.db import Database

PG_ADMIN = os.environ.get("GPUNET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(what: str) -> None:
    """A test's system requirement is missing: skip it, saying why; under CI, fail it (CI
    installs every requirement, so a missing one is a broken CI, not a reason to skip)."""
    if in_ci():
        pytest.fail(f"required in CI: {what}")
    pytest.skip(what)


def _pg_unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"PostgreSQL is required in CI but unreachable: {reason}")
    pytest.skip(f"PostgreSQL unreachable: {reason}")


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for as long as the context lasts, dropped afterwards."""
    name = f"gpunet_t_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        _pg_unavailable(str(exc).strip())
    base = PG_ADMIN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    with pg_database() as url:
        yield url


def only_on(database: str) -> pytest.MarkDecorator:
    """Run a test that takes ``db_url`` on one database only (``"sqlite"`` or ``"postgres"``).
    For end-to-end tests whose subject does not depend on the store (what the agent does), or
    whose store-side code paths the integration tests cover on both databases: each real
    network costs seconds, and the second database adds only time."""
    return pytest.mark.parametrize("db_url", [database], indirect=True)


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'gpunet.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


# The migrations, run once per run: {"sqlite": a migrated store's file, "postgres": the SQL
# they sent to a fresh database, as one script}.
_MIGRATED: dict[str, str] = {}


def _sqlite_template() -> str:
    if "sqlite" not in _MIGRATED:
        path = Path(tempfile.mkdtemp(prefix="gpunet-template-")) / "gpunet.db"
        db = Database(f"sqlite:///{path}")
        try:
            db.migrate()
            with db.engine.connect() as conn:  # the whole store in the one file we copy
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            db.dispose()
        _MIGRATED["sqlite"] = str(path)
    return _MIGRATED["sqlite"]


def _pg_migrations() -> str:
    if "postgres" not in _MIGRATED:
        sent: list[tuple[str, Any, bool]] = []

        def record(_c: Any, _cur: Any, sql: str, params: Any, _ctx: Any, many: bool) -> None:
            sent.append((sql, params, many))

        with pg_database() as url:
            db = Database(url)
            event.listen(db.engine, "before_cursor_execute", record)
            try:
                db.migrate()
            finally:
                db.dispose()
            with psycopg.connect(url, connect_timeout=5) as conn:
                bind = psycopg.ClientCursor(conn).mogrify
                _MIGRATED["postgres"] = ";\n".join(
                    bind(sql, p)
                    for sql, params, many in sent
                    for p in (params if many else [params or None])
                )
    return _MIGRATED["postgres"]


def _pg_is_empty(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    return row is not None and row[0] == 0


def migrated(url: str) -> None:
    """Bring the database at ``url`` to the newest schema. A fresh, empty one (what ``db_url``
    gives) gets what the migrations made of another fresh one in this run: on SQLite a copy of
    its file, on PostgreSQL the statements they sent, in one script. Alembic costs about a
    second a test; the schema is the same. The migrations themselves are tested on a fresh
    store of each kind (test_metrics_and_store), and run by the servers of the README's, the
    demo's and the replicas' end-to-end tests. A store with tables is migrated in place."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.exists() or path.stat().st_size == 0:
            path.parent.mkdir(parents=True, exist_ok=True)  # a server's home not made yet
            shutil.copyfile(_sqlite_template(), path)
            return
    elif url.startswith(("postgresql://", "postgres://")):
        with psycopg.connect(url, connect_timeout=5) as conn:
            if _pg_is_empty(conn):
                conn.execute(_pg_migrations())
                return
    db = Database(url)
    try:
        db.migrate()
    finally:
        db.dispose()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if "sqlite" in _MIGRATED:
        shutil.rmtree(Path(_MIGRATED["sqlite"]).parent, ignore_errors=True)
    _MIGRATED.clear()
