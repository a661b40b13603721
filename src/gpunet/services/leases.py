"""Leases: nodes that stop heartbeating go offline and their attempts are re-queued.

A heartbeat renews the node's lease in the memory of the replica that took it (no write);
each replica writes the times it heard to ``nodes.last_heartbeat_at`` in one batched UPDATE
every ``telemetry_flush_s``, with the GPU readings that changed since it last wrote them.
The leader's reaper takes a node offline when neither its own memory nor the store (any
replica) heard from it within the lease timeout.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from gpunet.catalog import catalog
from gpunet.core.jobs import ACTIVE_ATTEMPT_STATES, JobState, LostCause
from gpunet.core.power import planning_power, smoothed
from gpunet.services.jobs import lose_attempt
from gpunet.services.runtime import LeaseBook
from gpunet.store.db import Database, write_lock
from gpunet.store.tables import Attempt, Gpu, Node
from gpunet.util import now, utc

Fence = Callable[[Session], None]  # raises unless this replica still leads (services.replicas)


def grant_grace(db: Database, leases: LeaseBook) -> None:
    """At coordinator start every online node gets a fresh lease: its agent may have been
    heartbeating into the void while we were down, and deserves a full timeout to reconnect."""
    with db.sessions() as s:
        online = list(s.scalars(select(Node.id).where(Node.status == "online")))
    at = now()
    for node_id in online:
        leases.renew(node_id, at, None, heard=False)


def node_lost(
    db: Database,
    node_id: str,
    reason: str,
    *,
    fence: Fence | None = None,
    unheard_since: datetime | None = None,
) -> int:
    """Mark a node offline and re-queue (or fail) the jobs of its active attempts.
    ``fence``: refuses the write unless this replica still leads; ``unheard_since``: only if
    no replica recorded a heartbeat since then (checked under the node's row lock)."""
    requeued = 0
    with db.transaction() as s:
        write_lock(s)
        if fence is not None:
            fence(s)
        node = s.get(Node, node_id, with_for_update=True, populate_existing=True)
        if node is None:
            return 0
        heard = utc(node.last_heartbeat_at)
        if unheard_since is not None and (
            node.status != "online" or (heard is not None and heard >= unheard_since)
        ):
            return -1  # heard meanwhile (another replica's flush), or already offline
        node.status = "offline"
        atts = list(
            s.scalars(
                select(Attempt).where(
                    Attempt.node_id == node_id,
                    Attempt.state.in_([st.value for st in ACTIVE_ATTEMPT_STATES]),
                )
            )
        )
        for att in atts:
            requeued += (
                lose_attempt(s, att, reason, "lease reaper", LostCause.LEASE) is JobState.QUEUED
            )
    return requeued


def reap(
    db: Database,
    leases: LeaseBook,
    timeout_s: float,
    *,
    fence: Fence | None = None,
    leading_since: datetime | None = None,
) -> list[str]:
    """Take offline every online node that no replica heard from within ``timeout_s``;
    return their ids. ``leading_since``: when this replica became leader; every node gets
    a full timeout from then (heartbeats may have gone to a replica that died unflushed)."""
    cutoff = now() - timedelta(seconds=timeout_s)
    if leading_since is not None and leading_since > cutoff:
        return []
    with db.sessions() as s:
        stale = list(
            s.scalars(
                select(Node.id).where(Node.status == "online", Node.last_heartbeat_at < cutoff)
            )
        )
    fresh = leases.fresh(timeout_s)  # heard here, maybe not flushed yet
    gone = []
    for node_id in stale:
        if node_id in fresh:
            continue
        why = f"node {node_id} missed heartbeats for {timeout_s:g}s"
        if node_lost(db, node_id, why, fence=fence, unheard_since=cutoff) >= 0:
            gone.append(node_id)
            leases.forget(node_id)
    return gone


def last_heard(db: Database, leases: LeaseBook) -> Callable[[str], datetime | None]:
    """When each node was last heard from, by this replica or (through the store) any other:
    what interim billing may bill up to."""
    with db.sessions() as s:
        stored = {n: utc(at) for n, at in s.execute(select(Node.id, Node.last_heartbeat_at))}

    def at(node_id: str) -> datetime | None:
        times = [t for t in (leases.heard_at(node_id), stored.get(node_id)) if t is not None]
        return max(times) if times else None

    return at


# the readings a GPU row holds, as the flush binds them
READINGS = ("util", "mem", "temp", "power", "owner")
# what a replica remembers of a GPU's row is read from the store again after this long: the
# node may have spoken to another replica meanwhile, or re-registered with another model
RELOAD_AFTER_S = 30.0
_CHUNK = 2000  # ids per IN list


@dataclass(slots=True)
class Written:
    """What a GPU's row holds as this replica last wrote or read it."""

    readings: tuple[Any, ...]  # READINGS' values
    plan: float | None  # planning_power_w
    draw: float | None  # the smoothed draw (core.power.smoothed); kept here only
    tdp_w: float | None  # the catalog's, for the planning buckets
    at: datetime  # the heartbeat whose readings ``draw`` took in last
    loaded: float  # monotonic: when the row was last read from the store


class FlushMemo:
    """Per replica: what its telemetry flush last wrote to each GPU's row, so that a flush
    writes only the rows whose readings or planned power changed (a quiet fleet costs the
    heartbeat times' UPDATE and little else), and the smoothed draw behind the planned
    power (``core.power``)."""

    def __init__(self) -> None:
        self.gpus: dict[str, Written] = {}
        self._swept = time.monotonic()

    def load(self, s: Session, gids: Iterable[str], at: datetime) -> None:
        """Read the rows of the GPUs not remembered, or not read for ``RELOAD_AFTER_S``, from
        the store (the smoothed draw of a GPU remembered is kept)."""
        t = time.monotonic()
        cutoff = t - RELOAD_AFTER_S
        missing = [g for g in gids if g not in self.gpus or self.gpus[g].loaded < cutoff]
        models = catalog()
        for k in range(0, len(missing), _CHUNK):
            for gid, model, plan, *readings in s.execute(
                select(Gpu.id, Gpu.model, Gpu.planning_power_w, *_READING_COLUMNS).where(
                    Gpu.id.in_(missing[k : k + _CHUNK])
                )
            ):
                spec = models.get(model)
                tdp = spec.tdp_w if spec else None
                old = self.gpus.get(gid)
                if old is None:
                    old = Written((), None, readings[READINGS.index("power")], None, at, t)
                self.gpus[gid] = Written(tuple(readings), plan, old.draw, tdp, old.at, t)

    def changes(
        self, rows: list[dict[str, Any]]
    ) -> tuple[list[dict[str, Any]], dict[str, Written]]:
        """The rows (of ``load``ed GPUs) whose readings or planned power changed, with their
        ``planning_power_w`` bound as ``plan``; and what to remember once they are written."""
        writes, after = [], {}
        for row in rows:
            old = self.gpus.get(row["gid"])
            if old is None:
                continue  # no such GPU row
            dt = (row["at"] - old.at).total_seconds()
            draw = smoothed(old.draw, row["power"], dt)
            plan = planning_power(old.plan, draw, old.tdp_w)
            readings = tuple(row[k] for k in READINGS)
            after[row["gid"]] = Written(readings, plan, draw, old.tdp_w, row["at"], old.loaded)
            if readings != old.readings or plan != old.plan:
                writes.append(row | {"plan": plan})
        return writes, after

    def forget_stale(self) -> None:
        """Forget the GPUs not flushed for a while (their node left, or speaks to another
        replica): they would be read again anyway."""
        t = time.monotonic()
        if t - self._swept > RELOAD_AFTER_S:
            self._swept = t
            self.gpus = {g: w for g, w in self.gpus.items() if w.loaded >= t - 2 * RELOAD_AFTER_S}


_READING_COLUMNS = (
    Gpu.utilization_pct,
    Gpu.memory_used_mb,
    Gpu.temperature_c,
    Gpu.power_w,
    Gpu.owner_busy,
)
_MEMOS: weakref.WeakKeyDictionary[LeaseBook, FlushMemo] = weakref.WeakKeyDictionary()


def flush_memo(leases: LeaseBook) -> FlushMemo:
    """The flush memo of the replica that keeps ``leases``."""
    memo = _MEMOS.get(leases)
    if memo is None:
        memo = _MEMOS[leases] = FlushMemo()
    return memo


def flush_telemetry(db: Database, leases: LeaseBook) -> int:
    """Write the latest heartbeat times, and the GPU telemetry that changed since this replica
    last wrote it, in one transaction as two batched UPDATEs (this runs every few seconds for
    the whole fleet). A GPU's ``planning_power_w`` follows its smoothed draw (``core.power``);
    ``telemetry_at`` is when its readings last changed."""
    # in id order: row locks taken in one order by every replica's flush and by the
    # scheduler's node locks cannot deadlock
    batch = dict(sorted(leases.take_unflushed().items()))
    if not batch:
        return 0
    memo = flush_memo(leases)
    node_rows = [{"nid": n, "at": lease.seen_at} for n, lease in batch.items()]
    gpu_rows: list[dict[str, Any]] = [
        {
            "gid": f"{n}/{t['index']}",  # GPU ids are node/index (services.agents._sync_gpus)
            "util": t.get("utilization_pct"),
            "mem": t.get("memory_used_mb"),
            "temp": t.get("temperature_c"),
            "power": t.get("power_w"),
            "owner": bool(t.get("owner_busy")),
            "at": lease.seen_at,
        }
        for n, lease in batch.items()
        for t in lease.telemetry
        if isinstance(t.get("index"), int)
    ]
    nt, gt = cast(Table, Node.__table__), cast(Table, Gpu.__table__)
    with db.transaction() as s:
        # nodes the leader took offline while they spoke to this replica: forgotten here, so
        # their next heartbeat brings them back online (api.routers.agent.heartbeat)
        offline = list(
            s.scalars(select(Node.id).where(Node.id.in_(list(batch)), Node.status != "online"))
        )
        s.execute(
            update(nt).where(nt.c.id == bindparam("nid")).values(last_heartbeat_at=bindparam("at")),
            node_rows,
        )
        memo.load(s, (r["gid"] for r in gpu_rows), min(lease.seen_at for lease in batch.values()))
        writes, after = memo.changes(gpu_rows)
        if writes:
            s.execute(
                update(gt)
                .where(gt.c.id == bindparam("gid"))
                .values(
                    utilization_pct=bindparam("util"),
                    memory_used_mb=bindparam("mem"),
                    temperature_c=bindparam("temp"),
                    power_w=bindparam("power"),
                    planning_power_w=bindparam("plan"),
                    owner_busy=bindparam("owner"),
                    telemetry_at=bindparam("at"),
                ),
                writes,
            )
    # remembered once written (a transaction that failed leaves the memo as it was)
    memo.gpus.update(after)
    memo.forget_stale()
    for node_id in offline:
        leases.forget(node_id)
    return len(batch)


__all__ = [
    "FlushMemo",
    "flush_memo",
    "flush_telemetry",
    "grant_grace",
    "last_heard",
    "node_lost",
    "reap",
]
