"""The scheduler pass in a process of its own (the default on PostgreSQL).

A pass is CPU work in Python: in the coordinator's process it holds the interpreter's lock in
turns with the event loop and the request threads that answer every agent, so under load a
pass of half a second of CPU took seconds of wall time (docs/benchmarks.md). The leader runs
its passes in one child process instead. Every replica starts its child with the coordinator
(``loops.background.start_all``), so a newly elected leader's first pass does not wait for a
process to start and import; the child keeps its own pass cache and connections between
passes, and stops with the coordinator.

The child's writes are fenced by the epoch the leader was elected with (``replicas.
fence_epoch``), so a pass still running in a child whose parent lost the lead is refused, and
the child dies with its parent (``PR_SET_PDEATHSIG``). On SQLite, the one-machine default, the
pass stays in a thread unless ``Settings.scheduler_process`` says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import signal
import sys
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from gpunet.services import billing, scheduling
from gpunet.services.replicas import fence_epoch
from gpunet.store.db import Database

log = logging.getLogger("gpunet.loops")

__all__ = ["SCHEDULER_APP_NAME", "BrokenProcessPool", "PassOrder", "PassWorker"]

SCHEDULER_APP_NAME = "gpunet-scheduler"  # the child's connections, in pg_stat_activity
_PR_SET_PDEATHSIG = 1
_db: Database | None = None  # the child's store, opened once
_woken: list[str] = []  # nodes the child's transactions asked to wake (Database.on_commit_wake)


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        # without prctl, the pool's pipe closing with the parent still ends the child
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _start(database_url: str, log_level: int) -> None:
    global _db
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops it; ^C is the parent's
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")
    _db = Database(database_url, name=SCHEDULER_APP_NAME)
    _db.on_commit_wake = _woken.extend


def _ready() -> None:
    """Nothing: submitted once so the child starts and imports before the first pass."""


@dataclass(frozen=True)
class PassOrder:
    """What one pass in the child runs with: the settings, and the epoch its writes need."""

    policy: str
    terms: billing.Terms
    half_life_s: float
    max_starts: int
    epoch: int | None  # None: the parent no longer leads (every write is refused)
    replica: str


def _tick(order: PassOrder) -> scheduling.TickResult:
    assert _db is not None, "the worker was not started"
    _woken.clear()

    def fence(s: Any) -> None:
        fence_epoch(s, order.epoch, order.replica)

    result = scheduling.tick(
        _db,
        order.policy,
        order.terms,
        half_life_s=order.half_life_s,
        max_starts=order.max_starts,
        fence=fence,
    )
    result.nodes = sorted({*result.nodes, *_woken})
    return result


class PassWorker:
    """One child process that runs the leader's passes, one at a time."""

    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        # spawn, not fork: the parent has threads and open connections a fork would copy
        pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start,
            initargs=(self._url, logging.getLogger("gpunet").getEffectiveLevel()),
        )
        pool.submit(_ready)  # start the child now: a first pass should not wait for it
        return pool

    async def tick(self, order: PassOrder) -> scheduling.TickResult:
        """One pass in the child. Raises ``replicas.Deposed`` when fenced out, and
        ``BrokenProcessPool`` when the child died (the next call starts a new one)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, _tick, order)
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            raise

    def close(self) -> None:
        """Stop the child now; a pass it was running rolls back with its connection."""
        pool = self._pool
        procs = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.kill()
        for p in procs:
            p.join(timeout=5)
