"""Leases: nodes that stop heartbeating go offline and their attempts are re-queued."""

from __future__ import annotations

from sqlalchemy import select

from gpunet.core.jobs import ACTIVE_ATTEMPT_STATES, JobState
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
        leases.renew(node_id, at, None)


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
            requeued += lose_attempt(s, att, reason, "lease reaper") is JobState.QUEUED
    return requeued


def reap(db: Database, leases: LeaseBook, timeout_s: float) -> list[str]:
    """Take every node whose lease lapsed offline; return their ids."""
    gone = leases.expired(timeout_s)
    for node_id in gone:
        node_lost(db, node_id, f"node {node_id} missed heartbeats for {timeout_s:g}s")
        leases.forget(node_id)
    return gone


def flush_telemetry(db: Database, leases: LeaseBook) -> int:
    """Write the latest heartbeat times and GPU telemetry in one transaction."""
    batch = leases.take_unflushed()
    if not batch:
        return 0
    with db.transaction() as s:
        nodes = {n.id: n for n in s.scalars(select(Node).where(Node.id.in_(list(batch))))}
        gpus = list(s.scalars(select(Gpu).where(Gpu.node_id.in_(list(batch)))))
        for node_id, lease in batch.items():
            if node_id in nodes:
                nodes[node_id].last_heartbeat_at = lease.seen_at
        for g in gpus:
            t = next((t for t in batch[g.node_id].telemetry if t.get("index") == g.index), None)
            if t:
                g.utilization_pct = t.get("utilization_pct")
                g.memory_used_mb = t.get("memory_used_mb")
                g.temperature_c = t.get("temperature_c")
                g.power_w = t.get("power_w")
                g.telemetry_at = batch[g.node_id].seen_at
    return len(batch)


__all__ = ["flush_telemetry", "grant_grace", "node_lost", "reap"]
