"""Leases: nodes that stop heartbeating go offline and their attempts are re-queued."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, select, update

from gpunet.core.jobs import ACTIVE_ATTEMPT_STATES, JobState, LostCause
from gpunet.services.jobs import lose_attempt
from gpunet.services.runtime import LeaseBook
from gpunet.store.db import Database
from gpunet.store.tables import Attempt, Gpu, Node
from gpunet.util import now


def grant_grace(db: Database, leases: LeaseBook) -> None:
    """At coordinator start every online node gets a fresh lease: its agent may have been
    heartbeating into the void while we were down, and deserves a full timeout to reconnect."""
    with db.sessions() as s:
        online = list(s.scalars(select(Node.id).where(Node.status == "online")))
    at = now()
    for node_id in online:
        leases.renew(node_id, at, None, heard=False)


def node_lost(db: Database, node_id: str, reason: str) -> int:
    """Mark a node offline and re-queue (or fail) the jobs of its active attempts."""
    requeued = 0
    with db.transaction() as s:
        node = s.get(Node, node_id, with_for_update=True)
        if node is None:
            return 0
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


def reap(db: Database, leases: LeaseBook, timeout_s: float) -> list[str]:
    """Take every node whose lease lapsed offline; return their ids."""
    gone = leases.expired(timeout_s)
    for node_id in gone:
        node_lost(db, node_id, f"node {node_id} missed heartbeats for {timeout_s:g}s")
        leases.forget(node_id)
    return gone


def flush_telemetry(db: Database, leases: LeaseBook) -> int:
    """Write the latest heartbeat times and GPU telemetry in one transaction, as two batched
    UPDATEs (no rows loaded: this runs every few seconds for the whole fleet)."""
    batch = leases.take_unflushed()
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
    return len(batch)


__all__ = ["flush_telemetry", "grant_grace", "node_lost", "reap"]
