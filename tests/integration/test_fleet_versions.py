"""The scheduler pass keeps the queue, the attempts holding GPUs and the fleet's snapshot
between passes and reads only the rows changed since (change versions set by the store's
triggers); so do the submit-time capacity check and why(). After any series of writes,
whoever makes them, what they keep equals what a full read builds."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import bindparam, event, inspect, select, update
from sqlalchemy.orm import Session

from gpunet.core import ledger as L
from gpunet.core.jobspec import JobSpec
from gpunet.core.scheduling import Explanation, never_fits
from gpunet.services import billing, changes, scheduling
from gpunet.services import leases as leases_mod
from gpunet.services.auth import Principal, Role
from gpunet.services.fleet import (
    GPU_COLUMNS,
    NODE_COLUMNS,
    fleet_snapshot,
    holders,
    job_request,
    with_reliability,
)
from gpunet.services.pass_cache import PassCache, cache_for
from gpunet.services.runtime import LeaseBook
from gpunet.store.db import MIGRATIONS, Database
from gpunet.store.tables import Account, Attempt, Gpu, Job, Node
from gpunet.util import utc
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
    ("node2/0's planned power falls", telemetry("node2/0", planning_power_w=40.0)),
    ("only telemetry the pass ignores", telemetry("node2/0", temperature_c=71.0, power_w=55.0)),
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
            telemetry("node0/0", temperature_c=80.0, utilization_pct=50.0, power_w=301.5)(s)
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


# --- the readers outside the pass: the submit-time capacity check and why() ---------------

# kinds of job whose verdict the fleet's changes move: more GPUs than a node had, a model
# not in the fleet, a price cap, more memory, several nodes
CAPACITY_SPECS: list[dict[str, Any]] = [
    {"resources": {"gpus": 1}},
    {"resources": {"gpus": 2}},
    {"resources": {"gpus": 3}},
    {"resources": {"gpus": 1, "gpu_models": ["H100-80GB"]}},
    {"resources": {"gpus": 1, "min_gpu_memory_gb": 90}},
    {"max_price": "1", "resources": {"gpus": 1}},
    {"max_price": "3", "resources": {"gpus": 2}},
    {"resources": {"gpus": 2, "nodes": 2}},
]
CAPACITY_REQUESTS = [
    job_request(f"k{i}", "acct_user", JobSpec.model_validate({"command": ["true"], **sp}))
    for i, sp in enumerate(CAPACITY_SPECS)
]


def verdicts(cache: PassCache, s: Session) -> list[str | None]:
    check = cache.capacity(s)
    return [check(r) for r in CAPACITY_REQUESTS]


def full_verdicts(s: Session) -> list[str | None]:
    """The verdicts on the fleet read whole, as the check read it before it kept rows."""
    snap = fleet_snapshot(s, all_free=True)
    return [never_fits(snap, r) for r in CAPACITY_REQUESTS]


def watched(s: Session) -> dict[tuple[str, str], str]:
    """Every node and GPU row, in the columns whose change moves a row's version."""
    nodes = s.execute(select(*NODE_COLUMNS))
    gpus = s.execute(select(*GPU_COLUMNS, Gpu.lifecycle_state))
    return {("node", r[0]): repr(tuple(r)) for r in nodes} | {
        ("gpu", r[0]): repr(tuple(r)) for r in gpus
    }


def changed_rows(before: dict[Any, str], after: dict[Any, str]) -> int:
    """How many rows joined, left or changed between two ``watched`` reads."""
    return sum(before.get(k) != after.get(k) for k in before.keys() | after.keys())


def random_write(rng: random.Random, s: Session, joined: list[int]) -> str:
    """One change of the fleet, drawn by ``rng`` (its description)."""
    nodes = [f"node{n}" for n in range(3)] + [f"node{n}" for n in joined]
    nid = rng.choice(nodes)
    gid = rng.choice(list(s.scalars(select(Gpu.id).where(Gpu.node_id == nid))))
    kind = rng.randrange(9)
    if kind == 0:
        st = rng.choice(["online", "offline"])
        node_set(nid, status=st)(s)
        return f"{nid} {st}"
    if kind == 1:
        n = 10 + len(joined)
        joined.append(n)
        rows.add_node(s, f"node{n}", rng.randint(1, 4), AT)
        return f"node{n} joins"
    if kind == 2:
        state = rng.choice(["active", "drained", "maintenance", "retired", "recycled"])
        gpu_set(gid, lifecycle_state=state)(s)
        return f"{gid} {state}"
    if kind == 3:
        price = rng.choice([Decimal("0.5"), Decimal("2"), Decimal("5")])
        gpu_set(gid, price_per_hour=price)(s)
        return f"{gid} priced {price}"
    if kind == 4:
        model, mem = rng.choice([("A100-80GB", 80_000), ("H100-80GB", 80_000), ("H200", 141_000)])
        gpu_set(gid, model=model, memory_mb=mem)(s)
        return f"{gid} is a {model}"
    if kind == 5:
        on = rng.random() < 0.5
        telemetry(gid, owner_busy=on)(s)
        return f"{gid} owner busy {on}"
    if kind == 6:
        on = rng.random() < 0.5
        gpu_set(gid, drained=on)(s)
        return f"{gid} drained {on}"
    if kind == 7:
        on = rng.random() < 0.5
        gpu_set(gid, healthy=on)(s)
        return f"{gid} healthy {on}"
    telemetry(gid, temperature_c=rng.uniform(30, 90))(s)  # no version moves
    return f"{gid} telemetry only"


@pytest.mark.parametrize("seed", [1, 2])
def test_the_capacity_check_reads_only_changed_rows_and_agrees_with_a_full_read(
    db_url: str, seed: int
) -> None:
    rng = random.Random(seed)
    with store(db_url) as db:
        cache = PassCache()
        with db.sessions() as s:
            assert verdicts(cache, s) == full_verdicts(s)  # cold: one full read
            seen = watched(s)
        fleet = cache.capacity_fleet
        full = (fleet.nodes.full_reads, fleet.gpus.full_reads)
        outcomes = set()
        joined: list[int] = []
        for _ in range(30):
            with db.transaction() as s:
                what = "; ".join(random_write(rng, s, joined) for _ in range(rng.randint(1, 3)))
            with db.sessions() as s:
                read = fleet.nodes.changed_read + fleet.gpus.changed_read
                got = verdicts(cache, s)
                assert got == full_verdicts(s) == verdicts(PassCache(), s), what
                now = watched(s)
                # only the rows the write changed were read
                assert fleet.nodes.changed_read + fleet.gpus.changed_read - read == (
                    changed_rows(seen, now)
                ), what
                seen = now
            outcomes.add(tuple(got))
        assert (fleet.nodes.full_reads, fleet.gpus.full_reads) == full
        assert len(outcomes) > 2  # the writes moved the verdicts


def test_the_capacity_check_ignores_what_only_the_live_fleet_shows(db_url: str) -> None:
    """Offline nodes, drained, unhealthy or busy GPUs are capacity; retired ones are not."""
    with store(db_url) as db:
        cache = PassCache()
        two = CAPACITY_REQUESTS[1]
        with db.sessions() as s:
            assert cache.capacity(s)(two) is None
        with db.transaction() as s:
            for n in range(3):
                node_set(f"node{n}", status="offline")(s)
                gpu_set(f"node{n}/0", drained=True, healthy=False, owner_busy=True)(s)
            submit(s, "j1")
            start(s, "j1", "node0/1")
        with db.sessions() as s:
            assert cache.capacity(s)(two) is None
            assert cache.capacity(s)(two) == full_verdicts(s)[1]
        with db.transaction() as s:
            for n in range(3):
                gpu_set(f"node{n}/1", lifecycle_state="retired")(s)
        with db.sessions() as s:
            assert cache.capacity(s)(two) is not None
            assert cache.capacity(s)(two) == full_verdicts(s)[1]
        with db.transaction() as s:
            gpu_set("node1/1", lifecycle_state="active")(s)  # back in service
        with db.sessions() as s:
            assert cache.capacity(s)(two) is None
        assert cache.capacity_fleet.gpus.full_reads == 1


def test_the_capacity_check_after_its_own_writes_keeps_nothing(db_url: str) -> None:
    with store(db_url) as db:
        cache = PassCache()
        one = CAPACITY_REQUESTS[0]
        with db.sessions() as s:
            assert cache.capacity(s)(one) is None
        with db.sessions() as s:
            for n in range(3):
                for i in range(2):
                    gpu_set(f"node{n}/{i}", lifecycle_state="retired")(s)
            s.flush()
            assert cache.capacity(s)(one) is not None  # it sees its own writes
            s.rollback()
        with db.sessions() as s:
            assert cache.capacity(s)(one) is None
            assert verdicts(cache, s) == full_verdicts(s)
        assert cache.capacity_fleet.gpus.full_reads == 1


def test_the_capacity_check_sees_another_replicas_late_commit(db_url: str) -> None:
    """A follower's write that began before a capacity check and commits after it is seen by
    the next check (on PostgreSQL: a version drawn before the check's snapshot); and the
    follower's own check sees the leader's writes."""
    cheap = CAPACITY_REQUESTS[5]  # at most 1 an hour
    with store(db_url) as db, store_handle(db_url) as follower:
        leader = cache_for(db)
        with db.transaction() as s:
            gpu_set("node2/1", price_per_hour=Decimal("0.5"))(s)
        with db.sessions() as s:
            assert leader.capacity(s)(cheap) is None
        with follower.sessions() as s:
            assert cache_for(follower).capacity(s)(cheap) is None
        wrote, release = threading.Event(), threading.Event()

        def follow() -> None:
            with follower.transaction() as s:
                gpu_set("node2/1", lifecycle_state="retired")(s)
                s.flush()
                wrote.set()
                assert release.wait(10)

        t = threading.Thread(target=follow)
        t.start()
        try:
            assert wrote.wait(10)
            if db.is_postgres:  # a later transaction commits first
                with store_handle(db_url) as other, other.transaction() as s:
                    gpu_set("node0/0", price_per_hour=Decimal("0.8"))(s)
            with db.sessions() as s:
                assert leader.capacity(s)(cheap) is None
        finally:
            release.set()
            t.join(10)
        with db.sessions() as s:
            assert verdicts(leader, s) == full_verdicts(s)
            assert (leader.capacity(s)(cheap) is None) == db.is_postgres  # node0/0 at 0.8
        with db.transaction() as s:  # the leader's write, seen by the follower
            gpu_set("node0/0", price_per_hour=Decimal("7"))(s)
        with follower.sessions() as s:
            assert cache_for(follower).capacity(s)(cheap) is not None
            assert verdicts(cache_for(follower), s) == full_verdicts(s)
        assert cache_for(follower).capacity_fleet.gpus.full_reads == 1


def why_of(db: Database, job_id: str) -> Explanation | None:
    who = Principal(token_id="t", role=Role.CONSUMER, account_id="acct_user")
    return scheduling.why(db, who, job_id, "default")[1]


# STEPS, with the running attempt preempted for the explained job for a while
WHY_STEPS = [
    *STEPS[:4],
    ("j1 is preempted for jw", attempt_set("j1", state="stopping", preempted_for="jw")),
    *STEPS[4:12],
    ("j2 starts on node2/0", lambda s: start(s, "j2", "node2/0")),
    *STEPS[12:15],
    ("node0/0 is retired", gpu_set("node0/0", lifecycle_state="retired")),
    *STEPS[16:],
]


def test_why_equals_a_cold_why_after_every_write(db_url: str) -> None:
    with store(db_url) as db:
        with db.transaction() as s:
            rows.add_queued_job(s, "jw", AT, {**SPEC, "resources": {"gpus": 2}})
        # node reputations are recomputed at least every ttl_s (a started attempt moves them
        # without a change the cache looks for): each call computes them here, as a cold one
        cache_for(db).ttl_s = 0.0
        warm = why_of(db, "jw")
        fleet = cache_for(db).shown_fleet
        full = (fleet.nodes.full_reads, fleet.gpus.full_reads, cache_for(db).shown_held.full_reads)
        told = set()
        for what, write in WHY_STEPS:
            with db.transaction() as s:
                write(s)
            read = fleet.gpus.changed_read
            warm = why_of(db, "jw")
            with store_handle(db_url) as cold:  # another handle: a cache that read nothing
                assert warm == why_of(cold, "jw"), what
            assert warm is not None
            told.add((warm.summary(), warm.note))
            with db.sessions() as s:  # what it kept equals a full read
                rel = cache_for(db).reliabilities(s)
                held, snap = cache_for(db).shown(s, rel, clock=1.0)
                assert sorted(held, key=lambda h: h.attempt_id) == sorted(
                    holders(s), key=lambda h: h.attempt_id
                )
                busy = {g: h.attempt_id for h in holders(s) for g in h.gpu_ids}
                assert snap == fleet_snapshot(s, now=1.0, busy=busy, reliability=rel), what
            assert fleet.gpus.changed_read - read <= 1, what  # each step writes one GPU
        assert (
            fleet.nodes.full_reads,
            fleet.gpus.full_reads,
            cache_for(db).shown_held.full_reads,
        ) == full
        assert len(told) > 3
        assert any(note.startswith("waiting for preempted job j1") for _, note in told)


# --- the telemetry flush: live readings apart from the power the scheduler plans with ---

GPUS = [f"node{n}/{i}" for n in range(3) for i in range(2)]  # A100-80GB: 400 W TDP, 20 W steps


def flush(
    db: Database, leases: LeaseBook, at: datetime, power: Callable[[str], float], **readings: Any
) -> None:
    """Every node of ``store`` reports its GPUs at ``at`` (``power``: each GPU's draw), and
    the replica keeping ``leases`` flushes."""
    for n in range(3):
        reports = [
            {
                "index": i,
                "utilization_pct": 0.0,
                "memory_used_mb": 0.0,
                "temperature_c": 35.0,
                "power_w": power(f"node{n}/{i}"),
            }
            | readings
            for i in range(2)
        ]
        leases.renew(f"node{n}", at, reports)
    assert leases_mod.flush_telemetry(db, leases) == 3


def gpu_columns(db: Database, *cols: Any) -> dict[str, tuple[Any, ...]]:
    with db.sessions() as s:
        return {gid: tuple(rest) for gid, *rest in s.execute(select(Gpu.id, *cols))}


def test_power_jitter_within_a_bucket_moves_no_version(db_url: str) -> None:
    with store(db_url) as db:
        leases = LeaseBook()
        flush(db, leases, AT, lambda _g: 250.0)
        cache = warmed(db)
        versions = gpu_columns(db, Gpu.change_version)
        for k in range(1, 11):  # +-7 W every second, as a real GPU's draw moves
            jitter = 7.0 if k % 2 else -7.0
            flush(db, leases, AT + timedelta(seconds=k), lambda g, j=jitter, k=k: 250 + j + k / 10)
        assert gpu_columns(db, Gpu.change_version) == versions
        with db.sessions() as s:
            assert cache.fleet.gpus.refresh(s, changes.cursor(s)) == set()
        # the live reading is written all the same (metrics, the dashboard, energy)
        live = gpu_columns(db, Gpu.power_w, Gpu.planning_power_w)
        assert set(live.values()) == {(244.0, 260.0)}


def test_a_material_change_moves_the_planned_power_and_the_pass_sees_it(db_url: str) -> None:
    with store(db_url) as db:
        leases = LeaseBook()
        flush(db, leases, AT, lambda g: 252.0 if g.endswith("/0") else 257.0)
        cache, probe = warmed(db), warmed(db)
        later = AT + timedelta(minutes=1)
        flush(db, leases, later, lambda g: 400.0 if g == "node0/0" else 247.0)
        with db.sessions() as s:
            assert probe.fleet.gpus.refresh(s, changes.cursor(s)) == {"node0/0"}
        with db.sessions() as s:
            snap = kept(cache, s)[2]
            assert snap == fresh(s)[2]
        planned = {g.id: g.power_w for g in snap.gpus}
        # one planned figure for the GPUs drawing 247 to 257 W: one GPU class, not several
        assert planned == {g: 400.0 if g == "node0/0" else 260.0 for g in GPUS}


@contextmanager
def gpu_rows_written(db: Database) -> Iterator[list[int]]:
    """The GPU rows each UPDATE of ``gpus`` sent while the context lasts."""
    written: list[int] = []

    def seen(_conn: Any, _cur: Any, stmt: str, params: Any, _ctx: Any, many: bool) -> None:
        if stmt.lstrip().upper().startswith("UPDATE GPUS"):
            written.append(len(params) if many else 1)

    event.listen(db.engine, "before_cursor_execute", seen)
    try:
        yield written
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)


def test_unchanged_telemetry_writes_no_gpu_row(db_url: str) -> None:
    with store(db_url) as db:
        leases = LeaseBook()
        flush(db, leases, AT, lambda _g: 250.0)
        with gpu_rows_written(db) as written:
            flush(db, leases, AT + timedelta(seconds=1), lambda _g: 250.0)
            assert sum(written) == 0
            # another replica, which never wrote these rows, compares with the store
            other = LeaseBook()
            flush(db, other, AT + timedelta(seconds=2), lambda _g: 250.0)
            assert sum(written) == 0
            flush(db, leases, AT + timedelta(seconds=3), lambda g: 261.0 if g == GPUS[3] else 250.0)
            assert sum(written) == 1
        at = gpu_columns(db, Gpu.telemetry_at, Gpu.power_w)
        assert {g: utc(t) for g, (t, _p) in at.items()} == {
            g: AT + timedelta(seconds=3 if g == GPUS[3] else 0) for g in GPUS
        }
        with db.sessions() as s:  # the heartbeat times are written every flush
            heard = {utc(t) for t in s.scalars(select(Node.last_heartbeat_at))}
        assert heard == {AT + timedelta(seconds=3)}


def test_the_planning_power_migration_goes_down_and_up_again(db_url: str) -> None:
    with store(db_url) as db:
        with db.transaction() as s:
            telemetry("node0/0", power_w=301.0)(s)

        def bumps(write: Callable[[Session], None]) -> bool:
            before = gpu_columns(db, Gpu.change_version)["node0/0"]
            with db.transaction() as s:
                write(s)
            return gpu_columns(db, Gpu.change_version)["node0/0"] != before

        migrate_to(db, "0014_fleet_version")
        assert "planning_power_w" not in {c["name"] for c in inspect(db.engine).get_columns("gpus")}
        assert bumps(telemetry("node0/0", power_w=305.0))  # 0014 watched the live draw
        migrate_to(db, "head")
        planned = gpu_columns(db, Gpu.planning_power_w)
        assert planned["node0/0"] == (300.0,) and planned["node1/0"] == (None,)  # backfilled
        assert not bumps(telemetry("node0/0", power_w=330.0))
        assert bumps(telemetry("node0/0", planning_power_w=340.0))
        assert bumps(gpu_set("node0/0", drained=True))  # the other watched columns still are


def migrate_to(db: Database, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        if revision == "head":
            command.upgrade(cfg, revision)
        else:
            command.downgrade(cfg, revision)


def test_a_replica_reads_its_gpus_rows_again_after_a_while(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that spoke to another replica meanwhile: what that replica wrote is not taken
    for what this one wrote, once this one's memory of the rows is old."""
    with store(db_url) as db:
        here, there = LeaseBook(), LeaseBook()
        flush(db, here, AT, lambda _g: 250.0)
        flush(db, there, AT + timedelta(seconds=1), lambda _g: 250.0, temperature_c=60.0)
        monkeypatch.setattr(leases_mod, "RELOAD_AFTER_S", 0.0)
        flush(db, here, AT + timedelta(seconds=2), lambda _g: 250.0)
        assert set(gpu_columns(db, Gpu.temperature_c).values()) == {(35.0,)}
