"""The migrations (the hand-written market one included) create exactly what the tables declare."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from gpunet.store.db import Database
from gpunet.store.tables import Base


def test_market_migration_matches_the_tables(db_url: str) -> None:
    db = Database(db_url)
    db.migrate()
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": False})
        diffs = compare_metadata(ctx, Base.metadata)
    db.dispose()
    assert diffs == []
