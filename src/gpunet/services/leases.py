"""Leases: nodes that stop heartbeating go offline and their attempts are re-queued.

A heartbeat renews the node's lease in the memory of the replica that took it (no write);
each replica writes the times it heard to ``nodes.last_heartbeat_at`` in one batched UPDATE
every ``telemetry_flush_s``. The leader's reaper takes a node offline when neither its own
memory nor the store (any replica) heard from it within the lease timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from gpunet.core.jobs import ACTIVE_ATTEMPT_STATES, JobState, LostCause
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


def flush_telemetry(db: Database, leases: LeaseBook) -> int:
    """Write the latest heartbeat times and GPU telemetry in one transaction, as two batched
    UPDATEs (no rows loaded: this runs every few seconds for the whole fleet)."""
    # in id order: row locks taken in one order by every replica's flush and by the
    # scheduler's node locks cannot deadlock
    batch = dict(sorted(leases.take_unflushed().items()))
    if not batch:
        return 0
    node_rows = [{"nid": n, "at": lease.seen_at} for n, lease in batch.items()]
    gpu_rows = [
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
        if gpu_rows:
            s.execute(
                update(gt)
                .where(gt.c.id == bindparam("gid"))
                .values(
                    utilization_pct=bindparam("util"),
                    memory_used_mb=bindparam("mem"),
                    temperature_c=bindparam("temp"),
                    power_w=bindparam("power"),
                    owner_busy=bindparam("owner"),
                    telemetry_at=bindparam("at"),
                ),
                gpu_rows,
            )
    for node_id in offline:
        leases.forget(node_id)
    return len(batch)


__all__ = ["flush_telemetry", "grant_grace", "last_heard", "node_lost", "reap"]
