"""What the scheduler pass keeps between passes, so an unchanged queue costs little.

* Each job's scheduler view (its spec validated once: specs never change after submit).
* Node reputations (five 7-day aggregates), recomputed only when one query over their inputs
  shows a change (a node joined or changed status, an attempt was lost, a health event or a
  benchmark was recorded), and at least every ``ttl_s`` as uptime drifts.
* Each account's decayed recent GPU use, refreshed after ``ttl_s``: use a few seconds old
  orders jobs just as well.
* The queue (the ids of queued jobs), the attempts that hold GPUs, and the fleet's node and
  GPU rows with the snapshot built from them: each pass reads only the rows changed since
  the last pass (``services.changes``: versions set by the store's triggers on every write
  the scheduler sees, by any replica) and patches what it keeps; everything is read whole
  again every ``changes.FULL_EVERY_S`` as a safety net.
* The fleet's views (``fleet.ViewMemo``): views of unchanged rows are reused; and, while the
  fleet's capacity is unchanged, whether a kind of job could ever run on it.
* For the readers outside the pass, rows of their own kept the same way (each reads only
  the rows changed since its last read): the fleet's capacity for the submit-time check
  (every node online and idle, the GPUs out of service left out), and the live fleet with
  the attempts holding GPUs for ``why``.

One cache per database (a weak map), so tests and tools that open several stores stay apart.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, func, or_, select
from sqlalchemy.orm import Session

from gpunet.core.jobs import AttemptState, JobState
from gpunet.core.jobspec import JobSpec
from gpunet.core.scheduling import GpuView, JobRequest, NodeView, Snapshot, never_fits
from gpunet.core.scheduling.fairshare import Usage, decayed_gpu_seconds
from gpunet.services.changes import Cursor, KeyedRows, cursor
from gpunet.services.fleet import (
    GPU_COLUMNS,
    HOLDER_COLUMNS,
    HOLDING,
    IN_SERVICE,
    NODE_COLUMNS,
    Holder,
    ViewMemo,
    account_ids,
    holder,
    job_request,
    node_view,
    rounded,
    rows_snapshot,
    with_reliability,
)
from gpunet.services.reputation import GONE_STATES, reliabilities
from gpunet.store.db import Database
from gpunet.store.tables import Attempt, Gpu, GpuBenchmark, GpuEvent, Job, Node

TTL_S = 30.0
# fair share forgets use older than this many half-lives (2^-8 < 0.4%)
HALF_LIVES_KEPT = 8
MAX_REQUESTS = 100_000


class PassCache:
    def __init__(self, ttl_s: float = TTL_S) -> None:
        self.ttl_s = ttl_s
        self._requests: dict[str, JobRequest] = {}
        self._rel: tuple[float, tuple[object, ...], dict[str, float]] | None = None
        self._usage: tuple[float, float, dict[str, float]] | None = None
        self._holders: list[Holder] | None = None
        self.views = ViewMemo()
        self._capacity: tuple[object, dict[JobRequest, str | None]] | None = None
        queued = JobState.QUEUED.value
        self.queue = KeyedRows(
            select(Job.id, Job.state),
            _table(Job),
            keep=lambda r: r[1] == queued,
            where=Job.state == queued,
        )
        self.held = _holding()
        self.fleet = FleetRows(self.views)
        self.lock = threading.Lock()  # held by the scheduler pass
        # The readers outside the pass keep rows of their own, each group under its lock:
        # what the pass keeps moves under the pass's lock, which a submit must not wait for.
        # The submit-time capacity check: every node online and idle, no GPU out of service.
        self.capacity_fleet = FleetRows(self.views, all_free=True)
        self.capacity_lock = threading.Lock()
        # GET /v1/jobs/{id}/why: the live fleet and the attempts that hold GPUs.
        self.shown_fleet = FleetRows(self.views)
        self.shown_held = _holding()
        self.shown_lock = threading.Lock()

    def queued(self, s: Session, now: Cursor) -> list[str]:
        """The ids of the queued jobs (the rows changed since the last pass read)."""
        self.queue.refresh(s, now)
        return list(self.queue.rows)

    def holders(self, s: Session, now: Cursor) -> list[Holder]:
        """The attempts that hold GPUs (the rows changed since the last pass read)."""
        changed = self.held.refresh(s, now)
        if changed is None or changed or self._holders is None:
            self._holders = list(self.held.rows.values())
        return self._holders

    def holders_now(self, s: Session) -> list[Holder]:
        """The attempts that hold GPUs as this transaction sees them now, its own writes
        included (read under the pass's node locks); what is kept does not move."""
        return list(self.held.peek(s).values())

    def never_fits(self, s: Session, req: JobRequest) -> str | None:
        """``core.never_fits`` on the fleet's capacity, remembered per kind of job while the
        capacity stays the same."""
        return self.capacity(s)(req)

    def capacity(self, s: Session) -> Callable[[JobRequest], str | None]:
        """``never_fits`` on the fleet as it stands now (only the rows changed since the last
        check are read), once for a whole batch of specs checked in one transaction."""
        now = cursor(s)
        with self.capacity_lock:
            snap = self.capacity_fleet.current(s, now, clock=None, busy=())
        fleet = (snap.nodes, snap.gpus)  # the same views while no row changed
        got = self._capacity
        if got is None or got[0] != fleet:
            got = self._capacity = (fleet, {})
        known = got[1]

        def check(req: JobRequest) -> str | None:
            kind = replace(req, id="", priority=0, submitted_at=0.0)
            try:  # (another submit may clear it meanwhile)
                return known[kind]
            except KeyError:
                pass
            if len(known) > 10_000:
                known.clear()
            why = known[kind] = never_fits(snap, req)
            return why

        return check

    def shown(
        self, s: Session, reliability: dict[str, float], **extra: Any
    ) -> tuple[list[Holder], Snapshot]:
        """The attempts that hold GPUs and the live fleet's snapshot, with the node
        reputations ``reliability`` (``reliabilities``) and ``extra`` Snapshot fields, for
        readers outside the pass (``why``): only the rows changed since the last read are
        read. Equals ``fleet.holders`` and ``fleet.fleet_snapshot`` on the same store."""
        now = cursor(s)
        with self.shown_lock:
            if now.safe:
                self.shown_held.refresh(s, now)
                held = list(self.shown_held.rows.values())
            else:  # (rows read after one's own writes are not kept)
                held = list(self.shown_held.peek(s).values())
            busy = [g for h in held for g in h.gpu_ids]
            snap = self.shown_fleet.current(s, now, busy=busy, reliability=reliability, **extra)
        return held, snap

    def requests(self, s: Session, job_ids: Iterable[str]) -> dict[str, JobRequest]:
        """Job id -> its scheduler view; specs are read and validated only for new jobs."""
        ids = list(dict.fromkeys(job_ids))
        missing = [j for j in ids if j not in self._requests]
        if missing:
            if len(self._requests) + len(missing) > MAX_REQUESTS:
                self._requests.clear()
            rows = list(
                s.execute(
                    select(Job.id, Job.account_id, Job.spec, Job.priority, Job.created_at).where(
                        Job.id.in_(missing)
                    )
                )
            )
            specs = {jid: JobSpec.model_validate(spec) for jid, _a, spec, _p, _c in rows}
            owners = account_ids(s, (n for sp in specs.values() for n in sp.resources.owners))
            for jid, acct, _spec, prio, created in rows:
                self._requests[jid] = job_request(
                    jid,
                    acct,
                    specs[jid],
                    priority=prio,
                    submitted_at=_ts(created),
                    owner_ids=owners,
                )
        return {j: self._requests[j] for j in ids if j in self._requests}

    def forget(self, job_ids: Iterable[str]) -> None:
        for j in job_ids:
            self._requests.pop(j, None)

    def reliabilities(self, s: Session) -> dict[str, float]:
        """Node id -> reputation, recomputed when a node joins or changes status, an attempt
        is lost, a health event or benchmark is recorded (one cheap query tells), and at
        least every ``ttl_s`` (uptime drifts with time)."""
        t = time.monotonic()
        fp = tuple(s.execute(_REPUTATION_INPUTS).one())
        if self._rel is None or t - self._rel[0] > self.ttl_s or self._rel[1] != fp:
            self._rel = (t, fp, reliabilities(s))
        return self._rel[2]

    def usage(self, s: Session, now: float, half_life_s: float) -> dict[str, float]:
        """Account -> GPU-seconds of its attempts, decayed with ``half_life_s``."""
        t = time.monotonic()
        if self._usage is None or t - self._usage[0] > self.ttl_s or self._usage[1] != half_life_s:
            self._usage = (t, half_life_s, account_usage(s, now, half_life_s))
        return self._usage[2]


# What node reputations are computed from changes only when one of these does.
_REPUTATION_INPUTS = select(
    select(func.count()).select_from(Node).scalar_subquery(),
    select(func.count()).select_from(Node).where(Node.status == "online").scalar_subquery(),
    select(func.count())
    .select_from(Attempt)
    .where(Attempt.state == AttemptState.LOST.value)
    .scalar_subquery(),
    select(func.max(GpuEvent.id)).scalar_subquery(),
    select(func.max(GpuBenchmark.id)).scalar_subquery(),
)


def account_usage(s: Session, now: float, half_life_s: float) -> dict[str, float]:
    """Decayed GPU-seconds per account from its attempts (one query)."""
    since = datetime.fromtimestamp(now, UTC) - timedelta(seconds=HALF_LIVES_KEPT * half_life_s)
    rows = s.execute(
        select(Job.account_id, Attempt.gpu_ids, Attempt.started_at, Attempt.finished_at)
        .join(Job, Job.id == Attempt.job_id)
        .where(
            Attempt.started_at.is_not(None),
            or_(Attempt.finished_at.is_(None), Attempt.finished_at >= since),
        )
    )
    spans = [
        Usage(acct, len(gids or ()), _ts(start), now if end is None else _ts(end))
        for acct, gids, start, end in rows
    ]
    return decayed_gpu_seconds(spans, now, half_life_s)


def _ts(at: datetime) -> float:
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def _table(entity: type[Any]) -> Table:
    return cast(Table, entity.__table__)


class FleetRows:
    """The fleet's node and GPU rows and the scheduler's snapshot built from them, patched
    with the rows changed since the last read and the GPUs whose holder changed. The snapshot
    equals ``fleet.fleet_snapshot`` on the same rows (both list nodes and GPUs in id order).
    ``all_free``: the fleet's capacity (``fleet_snapshot(all_free=True)``: every node online
    and idle, the GPUs out of service left out) rather than the fleet as it is."""

    def __init__(self, memo: ViewMemo, *, all_free: bool = False) -> None:
        self.memo, self.all_free = memo, all_free
        self.nodes = KeyedRows(select(*NODE_COLUMNS), _table(Node))
        self.gpus = _in_service_gpus() if all_free else KeyedRows(select(*GPU_COLUMNS), _table(Gpu))
        self._node_views: tuple[NodeView, ...] = ()
        self._gpu_views: dict[str, GpuView] = {}
        self._order: list[str] = []
        self._busy: set[str] = set()
        self._gpus: tuple[GpuView, ...] | None = None
        self._changed: set[str] = set()  # GPUs whose view changed since ``rated`` last ran
        self._rated: tuple[object, tuple[GpuView, ...]] | None = None
        self._rated_views: dict[str, GpuView] = {}

    def current(
        self,
        s: Session,
        now: Cursor,
        *,
        busy: Iterable[str],
        clock: float | None = None,
        reliability: dict[str, float] | None = None,
        **extra: Any,
    ) -> Snapshot:
        """The snapshot as this transaction sees it (``snapshot``, then ``rated`` when
        ``reliability`` is given). After this transaction's own writes (``now`` not safe) the
        rows are peeked at and nothing kept moves."""
        if not now.safe:
            return rows_snapshot(
                self.nodes.peek(s).values(),
                self.gpus.peek(s).values(),
                all_free=self.all_free,
                now=clock,
                busy=set(busy),
                reliability=reliability or {},
                memo=self.memo,
                **extra,
            )
        snap = self.snapshot(s, now, clock=clock, busy=busy, **extra)
        return snap if reliability is None else self.rated(snap, reliability)

    def snapshot(
        self, s: Session, now: Cursor, *, clock: float | None, busy: Iterable[str], **extra: Any
    ) -> Snapshot:
        """The snapshot (no reputations: ``rated`` adds them) with ``busy`` GPUs held."""
        nodes, gpus = self.nodes.refresh(s, now), self.gpus.refresh(s, now)
        if nodes is None or nodes:
            rows = self.nodes.rows
            free = self.all_free
            self._node_views = tuple(node_view(rows[k], free) for k in sorted(rows))
        held = set(busy)
        rows = self.gpus.rows
        if gpus is None:
            todo: Iterable[str] = rows
            self._gpu_views = {}
        else:
            todo = gpus | (held ^ self._busy)
        self._busy = held
        reorder = False  # a GPU joined or left
        for gid in todo:
            row = rows.get(gid)
            if row is None:
                reorder = self._gpu_views.pop(gid, None) is not None or reorder
                continue
            reorder = reorder or gid not in self._gpu_views
            view = self.memo.gpu(row, gid in held, None, self.all_free)
            if self._gpu_views.get(gid) is not view:
                self._gpu_views[gid] = view
                self._changed.add(gid)
                self._gpus = None
        if reorder or gpus is None:
            self._order = sorted(self._gpu_views)
            self._gpus, self._rated = None, None
            self._changed = set()  # every GPU is rated again
        if self._gpus is None:
            views = self._gpu_views
            self._gpus = tuple(views[g] for g in self._order)
        return Snapshot(nodes=self._node_views, gpus=self._gpus, now=clock, **extra)

    def rated(self, snapshot: Snapshot, reliability: dict[str, float]) -> Snapshot:
        """``snapshot`` (the latest of ``snapshot()``) with the node reputations filled in:
        only the GPUs whose view changed are rated again while the reputations are the same
        (``reliability`` is the same object while they are: ``PassCache.reliabilities``)."""
        got = self._rated
        if got is None or got[0] is not reliability:
            rated = with_reliability(snapshot, reliability, self.memo).gpus
            self._rated_views = {g.id: g for g in rated}
        elif self._changed:
            rel = rounded(reliability)
            views, out = self._gpu_views, self._rated_views
            for gid in self._changed:
                if gid in views:
                    out[gid] = self.memo.rated(views[gid], rel.get(views[gid].node_id))
            rated = tuple(out[g] for g in self._order)
        else:
            rated = got[1]
        self._changed = set()
        self._rated = (reliability, rated)
        return replace(snapshot, gpus=rated)


def _holding() -> KeyedRows:
    """The attempts that hold GPUs (``fleet.holders``), kept by attempt id."""
    return KeyedRows(
        select(*HOLDER_COLUMNS).join(Job, Job.id == Attempt.job_id),
        _table(Attempt),
        keep=lambda r: r[5] in HOLDING,
        where=Attempt.state.in_(HOLDING),
        make=holder,
    )


_GPU_FIELDS = len(GPU_COLUMNS)


def _in_service_gpus() -> KeyedRows:
    """The GPUs in service (``fleet.IN_SERVICE``), kept by id as ``GPU_COLUMNS`` rows: a GPU
    retired or recycled since is dropped, one brought back is read again."""
    return KeyedRows(
        select(*GPU_COLUMNS, Gpu.lifecycle_state),
        _table(Gpu),
        keep=lambda r: r[_GPU_FIELDS] not in GONE_STATES,
        where=IN_SERVICE,
        make=lambda r: tuple(r)[:_GPU_FIELDS],
    )


_CACHES: weakref.WeakKeyDictionary[Database, PassCache] = weakref.WeakKeyDictionary()


def cache_for(db: Database) -> PassCache:
    c = _CACHES.get(db)
    if c is None:
        c = _CACHES[db] = PassCache()
    return c
