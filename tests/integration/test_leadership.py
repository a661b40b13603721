"""Leader election and fencing among replicas (services.replicas): a deposed leader's
placements and reaping are refused, and an election waits for a fenced write in flight."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from test_tick_reaper_race import db  # noqa: F401 - the one-node, one-job store

from gpunet.services import leases, scheduling
from gpunet.services.replicas import Deposed, Leadership
from gpunet.store.db import Database
from gpunet.store.tables import Attempt, Node


@pytest.fixture
def db_url(pg_url: str) -> str:
    """Replicas share a PostgreSQL database (SQLite serves one coordinator)."""
    return pg_url


def _elected(lead: Leadership, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lead.check():
            return True
        time.sleep(0.05)  # the server releases a closed connection's lock a moment later
    return False


def test_a_deposed_leader_can_neither_place_nor_reap(db: Database) -> None:  # noqa: F811
    a, b = Leadership(db, "a"), Leadership(db, "b")
    try:
        assert a.check() and not b.check()
        assert b.view() == {"replica": "b", "leader": "a", "epoch": a.epoch, "leads": []}
        assert a.epoch is not None
        first = a.epoch
        # a's lock connection breaks while a, not knowing it yet, still runs its loops
        a._conn.close()
        assert _elected(b)
        assert b.epoch == first + 1 and a.is_leader
        with pytest.raises(Deposed):
            scheduling.tick(db, "default", fence=a.fence)
        with pytest.raises(Deposed):
            leases.node_lost(db, "n1", "missed heartbeats", fence=a.fence)
        with db.sessions() as s:
            assert list(s.scalars(select(Attempt))) == []
            node = s.get(Node, "n1")
            assert node is not None and node.status == "online"
        assert not a.check()  # a notices at its next check
        assert len(scheduling.tick(db, "default", fence=b.fence).assigned) == 1
    finally:
        a.close()
        b.close()


def test_an_election_waits_for_the_old_leaders_fenced_write(db: Database) -> None:  # noqa: F811
    a, b = Leadership(db, "a"), Leadership(db, "b")
    try:
        assert a.check()
        won = threading.Event()
        with db.transaction() as s:
            a.fence(s)  # a's pass is applying its placements
            a._conn.close()  # ... when a loses its lock

            def elect() -> None:
                if _elected(b, timeout=20):
                    won.set()

            t = threading.Thread(target=elect, daemon=True)
            t.start()
            time.sleep(1.0)
            assert not won.is_set()  # b took the lock but its epoch waits for a's commit
        t.join(timeout=20)
        assert won.is_set() and b.epoch is not None and a.epoch is not None
        assert b.epoch == a.epoch + 1
    finally:
        a.close()
        b.close()


def test_on_sqlite_the_one_coordinator_always_leads(tmp_path: Path) -> None:
    d = Database(f"sqlite:///{tmp_path / 'gpunet.db'}")
    d.migrate()
    try:
        lead = Leadership(d, "solo")
        assert lead.check() and lead.is_leader
        assert lead.view()["leads"] and lead.view()["leader"] == "solo"
        with d.transaction() as s:
            lead.fence(s)  # nothing to check: one process
    finally:
        d.dispose()
