"""The scheduler pass keeps the queue, the attempts holding GPUs and the fleet's snapshot
between passes and reads only the rows changed since (change versions set by the store's
triggers). After any series of writes, whoever makes them, what it keeps equals what a full
read builds."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from gpunet.core import ledger as L
from gpunet.services import billing, changes, scheduling
from gpunet.services.fleet import fleet_snapshot, holders, with_reliability
from gpunet.services.pass_cache import PassCache, cache_for
from gpunet.store.db import Database
from gpunet.store.tables import Account, Attempt, Gpu, Job, Node
from tests import rows
from tests.conftest import migrated

AT = datetime(2026, 12, 1, tzinfo=UTC)
SPEC = {"name": "t", "command": ["true"], "resources": {"gpus": 1}}


@contextmanager
def store(url: str) -> Iterator[Database]:
    migrated(url)
    db = Database(url)
    try:
        with db.transaction() as s:
            s.add(Account(id="acct_owner", name="owner", created_at=AT))
            s.add(Account(id="acct_user", name="user", created_at=AT))
            s.flush()
            for n in range(3):
                add_node(s, f"node{n}", gpus=2)
            billing.post(s, L.grant("acct_user", Decimal("1000"), "grant:t"))
        yield db
    finally:
        db.dispose()


def add_node(s: Session, nid: str, gpus: int) -> None:
    rows.add_node(s, nid, gpus, AT)


def submit(s: Session, jid: str) -> None:
    rows.add_queued_job(s, jid, AT, SPEC)


def start(s: Session, jid: str, gid: str) -> None:
    s.execute(update(Job).where(Job.id == jid).values(state="assigned"))
    node, index = gid.split("/")
    s.add(
        Attempt(
            id=f"att-{jid}",
            job_id=jid,
            number=1,
            fencing_token=1,
            node_id=node,
            gpu_ids=[gid],
            gpu_indices=[int(index)],
            state="assigned",
            created_at=AT,
        )
    )


def gpu_set(gid: str, **values: Any) -> Callable[[Session], None]:
    def write(s: Session) -> None:  # through the ORM, as the services' handlers write
        g = s.get(Gpu, gid)
        assert g is not None
        for k, v in values.items():
            setattr(g, k, v)

    return write


def node_set(nid: str, **values: Any) -> Callable[[Session], None]:
    def write(s: Session) -> None:  # one UPDATE statement, as the lease reaper writes
        s.execute(update(Node).where(Node.id == nid).values(**values))

    return write


def telemetry(gid: str, **values: Any) -> Callable[[Session], None]:
    def write(s: Session) -> None:  # a batched executemany, as the telemetry flush writes
        t = Gpu.__table__
        s.execute(
            update(t).where(t.c.id == bindparam("gid")).values(**{k: bindparam(k) for k in values}),
            [{"gid": gid, **values}],
        )

    return write


def attempt_set(jid: str, **values: Any) -> Callable[[Session], None]:
    def write(s: Session) -> None:
        s.execute(update(Attempt).where(Attempt.job_id == jid).values(**values))

    return write


def job_set(jid: str, **values: Any) -> Callable[[Session], None]:
    def write(s: Session) -> None:
        s.execute(update(Job).where(Job.id == jid).values(**values))

    return write


def new_node(nid: str) -> Callable[[Session], None]:
    return lambda s: add_node(s, nid, gpus=1)


# (what happens, the write): each changes what the scheduler sees, unless it says otherwise
STEPS: list[tuple[str, Callable[[Session], None]]] = [
    ("a job is submitted", lambda s: submit(s, "j1")),
    ("another", lambda s: submit(s, "j2")),
    ("j1 starts on node0/0", lambda s: start(s, "j1", "node0/0")),
    ("its attempt runs", attempt_set("j1", state="running")),
    ("node1 goes offline", node_set("node1", status="offline")),
    ("node0/1 turns unhealthy", gpu_set("node0/1", healthy=False)),
    ("node2/0's price changes", gpu_set("node2/0", price_per_hour=Decimal("3.5"))),
    ("node2/1 is drained", gpu_set("node2/1", drained=True)),
    ("node2/0's owner is busy", telemetry("node2/0", owner_busy=True)),
    ("node2/0 draws less power", telemetry("node2/0", power_w=40.0)),
    ("only telemetry the pass ignores", telemetry("node2/0", temperature_c=71.0)),
    ("node1's runtimes change", node_set("node1", runtimes=["podman"])),
    ("j1's attempt is told to stop", attempt_set("j1", state="stopping", stop_kind="cancel")),
    ("j1's attempt finishes", attempt_set("j1", state="cancelled")),
    ("j1 is cancelled", job_set("j1", state="cancelled")),
    ("j2 is cancelled while queued", job_set("j2", state="cancelled")),
    ("a node joins", new_node("node9")),
    ("node1 comes back", node_set("node1", status="online")),
    ("node0/1 is healthy again", gpu_set("node0/1", healthy=True)),
    ("the interruptible floor", gpu_set("node9/0", min_interruptible_price=Decimal("1"))),
    ("node9/0 is retired", gpu_set("node9/0", lifecycle_state="retired", tier="spot")),
]


def kept(cache: PassCache, s: Session) -> tuple[Any, ...]:
    """What the pass keeps, brought up to date as a pass does."""
    now = changes.cursor(s)
    queued = cache.queued(s, now)
    held = cache.holders(s, now)
    busy = [g for h in held for g in h.gpu_ids]
    snap = cache.fleet.snapshot(s, now, clock=1.0, busy=busy)
    rated = cache.fleet.rated(snap, RELIABILITY)
    return sorted(queued), sorted(held, key=lambda h: h.attempt_id), snap, rated


def fresh(s: Session) -> tuple[Any, ...]:
    """The same, read whole."""
    queued = list(s.scalars(select(Job.id).where(Job.state == "queued")))
    held = holders(s)
    busy = {g: h.attempt_id for h in held for g in h.gpu_ids}
    snap = fleet_snapshot(s, now=1.0, busy=busy, reliability={})
    rated = with_reliability(snap, RELIABILITY)
    return sorted(queued), sorted(held, key=lambda h: h.attempt_id), snap, rated


# node reputations, as the pass gets them (the same object while they do not change)
RELIABILITY = {"node0": 0.91, "node1": 0.5, "node9": 0.333}


def warmed(db: Database) -> PassCache:
    """A pass cache that has read the store once."""
    cache = PassCache()
    with db.sessions() as s:
        kept(cache, s)
    return cache


def test_what_a_pass_keeps_equals_a_full_read_after_every_write(db_url: str) -> None:
    with store(db_url) as db:
        cache = PassCache()
        with db.sessions() as s:
            first = kept(cache, s)
            assert first == fresh(s)
        reads = (cache.fleet.gpus.full_reads, cache.queue.full_reads, cache.held.full_reads)
        for k, (what, write) in enumerate(STEPS):
            if k == len(STEPS) // 2:  # the reputations change too (a new object, as they do)
                global RELIABILITY
                RELIABILITY = {"node0": 0.4, "node2": 0.97}
            with db.transaction() as s:
                write(s)
            with db.sessions() as s:
                assert kept(cache, s) == fresh(s), what
        # every step was followed incrementally, never by reading everything again
        assert (cache.fleet.gpus.full_reads, cache.queue.full_reads, cache.held.full_reads) == (
            reads
        )


def test_writes_the_pass_does_not_see_move_no_version(db_url: str) -> None:
    with store(db_url) as db:
        cache = warmed(db)
        with db.transaction() as s:
            telemetry("node0/0", temperature_c=80.0, utilization_pct=50.0)(s)
            node_set("node0", last_heartbeat_at=datetime.now(UTC))(s)
            node_set("node1", status="online")(s)  # unchanged: the pass's node lock writes this
            submit(s, "j1")
        with db.sessions() as s:
            now = changes.cursor(s)
            assert cache.fleet.gpus.refresh(s, now) == set()
            assert cache.fleet.nodes.refresh(s, now) == set()
            assert cache.queue.refresh(s, now) == {"j1"}


def test_a_write_committed_after_the_pass_read_is_seen_by_the_next(db_url: str) -> None:
    """A follower's transaction that began before the leader's pass and commits after it
    (on PostgreSQL: a version drawn before the pass's snapshot, committed after it)."""
    with store(db_url) as db, store_handle(db_url) as follower:
        leader = cache_for(db)
        with db.transaction() as s:
            submit(s, "j1")
        with db.sessions() as s:
            assert kept(leader, s) == fresh(s)
        wrote, release = threading.Event(), threading.Event()

        def follow() -> None:
            with follower.transaction() as s:
                gpu_set("node0/0", drained=True)(s)
                node_set("node1", status="offline")(s)
                submit(s, "j2")
                s.flush()
                wrote.set()
                assert release.wait(10)

        t = threading.Thread(target=follow)
        t.start()
        try:
            assert wrote.wait(10)
            if db.is_postgres:  # (SQLite has one writer at a time: this would wait)
                # a later transaction commits first: its version is above the follower's,
                # so the highest version seen is no cursor
                with store_handle(db_url) as other, other.transaction() as s:
                    gpu_set("node2/0", price_per_hour=Decimal("9"))(s)
            # the leader's pass runs while the follower's writes are not committed
            with db.sessions() as s:
                between = kept(leader, s)
                assert between == fresh(s)
            assert between[0] == ["j1"]
        finally:
            release.set()
            t.join(10)
        with db.sessions() as s:
            after = kept(leader, s)
            assert after == fresh(s)
        assert after[0] == ["j1", "j2"]
        gpus = {g.id: g for g in after[2].gpus}
        assert gpus["node0/0"].drained
        assert gpus["node2/0"].price_per_hour == Decimal("9" if db.is_postgres else "2")
        assert not {n.id: n for n in after[2].nodes}["node1"].online


def test_the_leader_places_nothing_on_a_gpu_a_follower_drained(db_url: str) -> None:
    """The pass itself: a follower replica drains a node's GPUs between two passes."""
    with store(db_url) as db, store_handle(db_url) as follower:
        with db.transaction() as s:
            submit(s, "j1")
        first = scheduling.tick(db, "default")
        assert len(first.assigned) == 1
        with db.sessions() as s:
            taken = s.get(Attempt, first.assigned[0])
            assert taken is not None
        free = next(
            f"node{n}/{i}" for n in range(3) for i in range(2) if [f"node{n}/{i}"] != taken.gpu_ids
        )
        with follower.transaction() as s:
            for n in range(3):
                for i in range(2):
                    gpu_set(f"node{n}/{i}", drained=True)(s)
            submit(s, "j2")
        assert scheduling.tick(db, "default").assigned == []
        with follower.transaction() as s:
            gpu_set(free, drained=False)(s)
        placed = scheduling.tick(db, "default").assigned
        assert len(placed) == 1
        with db.sessions() as s:
            att = s.get(Attempt, placed[0])
            assert att is not None and att.gpu_ids == [free] and att.job_id == "j2"


def test_rows_read_after_a_write_that_rolls_back_are_not_kept(db_url: str) -> None:
    with store(db_url) as db:
        cache = warmed(db)
        with db.sessions() as s:
            gpu_set("node0/0", drained=True)(s)
            submit(s, "j1")
            s.flush()
            inside = kept(cache, s)  # sees its own writes
            assert inside == fresh(s) and inside[0] == ["j1"]
            s.rollback()
        with db.transaction() as s:  # on SQLite this draws the version the rollback freed
            gpu_set("node1/0", price_per_hour=Decimal("4"))(s)
        with db.sessions() as s:
            after = kept(cache, s)
            assert after == fresh(s)
        assert after[0] == [] and not {g.id: g for g in after[2].gpus}["node0/0"].drained


def test_the_pass_sees_its_own_writes_under_its_locks(db_url: str) -> None:
    with store(db_url) as db:
        cache = warmed(db)
        with db.sessions() as s:
            submit(s, "j1")
            start(s, "j1", "node1/1")
            s.flush()
            now = {h.attempt_id for h in cache.holders_now(s)}
            assert now == {"att-j1"}
            assert cache.held.rows == {}  # what is kept did not move
            s.rollback()
        with db.sessions() as s:
            assert kept(cache, s) == fresh(s)


def test_everything_is_read_again_after_a_while(db_url: str) -> None:
    with store(db_url) as db:
        cache = PassCache()
        cache.fleet.gpus.full_every_s = 0.05
        with db.sessions() as s:
            kept(cache, s)
            before = cache.fleet.gpus.full_reads
            time.sleep(0.1)
            kept(cache, s)
            assert cache.fleet.gpus.full_reads == before + 1
            kept(cache, s)
            assert cache.fleet.gpus.full_reads == before + 1


@contextmanager
def store_handle(url: str) -> Iterator[Database]:
    """Another process's handle on the same store (another replica)."""
    db = Database(url)
    try:
        yield db
    finally:
        db.dispose()
