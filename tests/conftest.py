"""Shared fixtures: a fresh database per test, on SQLite and on PostgreSQL.

PostgreSQL tests need the server on 127.0.0.1:5432 (override with GPUNET_TEST_PG). Under CI
(``CI=true``) an unreachable server fails those tests; elsewhere it skips them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

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
