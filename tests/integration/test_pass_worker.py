"""The leader's scheduler pass in a child process (loops.pass_worker), on PostgreSQL: it
places, its writes are fenced by the leader's epoch, a dead child is replaced, and the child
dies with its parent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import auth, coordinator, gpu, one_queued_job, wait_for
from sqlalchemy import select, text, update

from gpunet.loops.pass_worker import (
    SCHEDULER_APP_NAME,
    BrokenProcessPool,
    PassOrder,
    PassWorker,
)
from gpunet.services import billing
from gpunet.services.replicas import Deposed
from gpunet.services.scheduling import TickResult
from gpunet.store.db import Database
from gpunet.store.tables import Attempt, CoordinatorLeader
from tests.conftest import only_on

ON_POSTGRES = only_on("postgres")


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    with one_queued_job(db_url) as d:
        with d.transaction() as s:
            s.execute(update(CoordinatorLeader).where(CoordinatorLeader.id == 1).values(epoch=7))
        yield d


def _order(epoch: int | None) -> PassOrder:
    return PassOrder("default", billing.Terms(), 3600.0, 500, epoch, "test")


def _tick(worker: PassWorker, epoch: int | None) -> TickResult:
    return asyncio.run(worker.tick(_order(epoch)))


def _attempts(db: Database) -> list[Attempt]:
    with db.sessions() as s:
        return list(s.scalars(select(Attempt)))


def _child_pids(worker: PassWorker) -> list[int]:
    return [p.pid for p in worker._pool._processes.values()]  # type: ignore[attr-defined]


@ON_POSTGRES
def test_a_pass_in_the_child_places_the_queued_job(db: Database) -> None:
    worker = PassWorker(db.url)
    try:
        result = _tick(worker, 7)
        assert [a.job_id for a in _attempts(db)] == ["job1"]
        assert result.nodes == ["n1"]
        (pid,) = _child_pids(worker)
        assert pid != os.getpid()
    finally:
        worker.close()
    assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


@ON_POSTGRES
def test_a_stale_epoch_is_refused_and_nothing_is_written(db: Database) -> None:
    worker = PassWorker(db.url)
    try:
        with pytest.raises(Deposed, match="no longer leads"):
            _tick(worker, 6)  # another replica was elected since (epoch 7)
        with pytest.raises(Deposed):
            _tick(worker, None)  # the parent knows it lost the lead
        assert _attempts(db) == []
        _tick(worker, 7)
        assert len(_attempts(db)) == 1
    finally:
        worker.close()


@ON_POSTGRES
def test_a_killed_child_is_replaced_by_the_next_pass(db: Database) -> None:
    worker = PassWorker(db.url)
    try:
        with pytest.raises(Deposed):
            _tick(worker, 6)  # starts the child
        (pid,) = _child_pids(worker)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(BrokenProcessPool):
            _tick(worker, 7)
        _tick(worker, 7)
        assert len(_attempts(db)) == 1
        assert _child_pids(worker) != [pid]
    finally:
        worker.close()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except OSError:
        return True  # gone


@ON_POSTGRES
def test_the_child_dies_with_its_parent(db: Database, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from gpunet.loops.pass_worker import PassOrder, PassWorker
        from gpunet.services import billing
        w = PassWorker({db.url!r})
        asyncio.run(w.tick(PassOrder("default", billing.Terms(), 3600.0, 500, 7, "test")))
        print(*[p.pid for p in w._pool._processes.values()], flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert len(_attempts(db)) == 1
        parent.kill()
        parent.wait(timeout=10)
        wait_for(lambda: _is_zombie(child), timeout=10, what="the child to die")
    finally:
        parent.kill()
        parent.wait(timeout=10)
        if child and not _is_zombie(child):
            os.kill(child, signal.SIGKILL)  # the test failed: leave no process behind


@ON_POSTGRES
def test_a_coordinator_on_postgres_runs_its_passes_in_a_child(db_url: str) -> None:
    with coordinator(db_url, scheduler_process=None) as co:  # the servers' default
        worker = co.c.app.state.runtime.pass_worker  # type: ignore[attr-defined]
        assert worker is not None and _child_pids(worker), "started with the coordinator"
        node = co.register(co.token("provider", "prov"), [gpu(0)])
        user = auth(co.token("consumer", "u"))
        r = co.c.post("/v1/jobs", json={"command": ["true"]}, headers=user)
        assert r.status_code == 201, r.text
        wait_for(lambda: _attempts(co.db), what="the job placed")
        assert _attempts(co.db)[0].node_id == node.id
        with co.db.sessions() as s:
            # the child names its connections; the coordinator's own are unnamed
            passes = s.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND application_name = :n"
                ),
                {"n": SCHEDULER_APP_NAME},
            )
        assert passes and passes >= 1


def test_on_sqlite_the_pass_may_run_in_a_child_too(tmp_path: Path) -> None:
    with coordinator(f"sqlite:///{tmp_path / 'gpunet.db'}", scheduler_process=True) as co:
        node = co.register(co.token("provider", "prov"), [gpu(0), gpu(1)])
        user = auth(co.token("consumer", "u"))
        r = co.c.post("/v1/jobs/batch", json={"jobs": [{"command": ["true"]}] * 3}, headers=user)
        assert r.status_code == 201, r.text
        wait_for(lambda: len(_attempts(co.db)) == 2, what="two jobs placed")
        assert {a.node_id for a in _attempts(co.db)} == {node.id}
        kids = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()
        assert kids, "the pass ran in no child process"
