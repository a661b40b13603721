"""Database engine, sessions and migrations (SQLite in WAL mode, or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")
WAKE_KEY = "gpunet.wake_nodes"  # Session.info: nodes to wake after the commit


def normalize_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def make_engine(url: str, name: str | None = None) -> Engine:
    """``name``: PostgreSQL's ``application_name`` of the connections (pg_stat_activity)."""
    url = normalize_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        if name:
            kwargs["connect_args"] = {"application_name": name}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers run beside the one writer; NORMAL sync is safe with WAL.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


def write_lock(s: Session) -> None:
    """On SQLite, take the database's write lock now, before the transaction reads anything,
    so that what it reads stays current until it commits. pysqlite runs a transaction's reads
    outside it until its first write and SQLite has no SELECT ... FOR UPDATE, so two
    transactions could both read a row and the later commit overwrite the earlier (a start
    report committed after the same attempt's finish put a succeeded attempt back to running).
    PostgreSQL gets this per row from ``with_for_update``: a no-op there."""
    if s.get_bind().dialect.name == "sqlite":
        s.execute(text("UPDATE nodes SET id = id WHERE 0"))


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # replicas starting together on one database migrate one after another
            conn.execute(text("SELECT pg_advisory_xact_lock(7400917)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Database:
    """An engine plus a session factory."""

    def __init__(self, url: str, *, name: str | None = None) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(url, name)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # told, after a commit, the nodes a transaction asked to wake (their agents' work
        # long-polls: e.g. a gang's members to stop); set by the coordinator's runtime
        self.on_commit_wake: Callable[[list[str]], None] | None = None

    @property
    def is_postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def migrate(self) -> None:
        migrate(self.engine)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits on success and rolls back on error."""
        with self.sessions() as session:
            with session.begin():
                yield session
            wake = session.info.pop(WAKE_KEY, None)
            if wake and self.on_commit_wake is not None:
                self.on_commit_wake(sorted(wake))

    def dispose(self) -> None:
        self.engine.dispose()
