"""Node reputation from the store: histories gathered with a few grouped queries over the
reputation window (never per node), so the scheduler's snapshot can fill every node's
reliability on each pass. The score itself is core/reputation.py.

Uptime approximation: the store keeps no history of a node's status, only its registration,
its status now and its last heartbeat. A node's observed time is now - registration (at most
the window); its downtime is its current outage (now - last heartbeat while it is offline).
Past outages are not counted as downtime; they show up through the attempts they lost.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, true
from sqlalchemy.orm import Session

from gpunet.core.health import Health
from gpunet.core.jobs import AttemptState
from gpunet.core.lifecycle import GONE
from gpunet.core.reputation import WINDOW_S, NodeHistory, Reputation, bench_stats, reputation
from gpunet.errors import NotFound
from gpunet.services.auth import Principal
from gpunet.store.db import Database
from gpunet.store.tables import Attempt, Gpu, GpuBenchmark, GpuEvent, Node
from gpunet.util import now, utc

GONE_STATES = [st.value for st in GONE]  # retired or recycled: not capacity any more
INCIDENT_STATES = [Health.DEGRADED.value, Health.FAILED.value]


def node_histories(
    s: Session, at: datetime | None = None, node_ids: list[str] | None = None
) -> dict[str, NodeHistory]:
    """Every node's (or the given nodes') history over the reputation window."""
    at = at or now()
    since = at - timedelta(seconds=WINDOW_S)
    nq = select(Node.id, Node.registered_at, Node.status, Node.last_heartbeat_at)
    if node_ids is not None:
        nq = nq.where(Node.id.in_(node_ids))
    nodes = s.execute(nq).all()
    ids = [n[0] for n in nodes]

    def mine(col: Any) -> Any:
        # every node: no list of ids (a thousand bound parameters cost more than the query)
        return col.in_(ids) if node_ids is not None else true()

    lost = case((Attempt.state == AttemptState.LOST.value, 1), else_=0)
    reclaimed = case((Attempt.reclaimed.is_(True), 1), else_=0)
    attempts = {
        nid: (int(total), int(n_lost or 0), int(n_reclaimed or 0))
        for nid, total, n_lost, n_reclaimed in s.execute(
            select(Attempt.node_id, func.count(), func.sum(lost), func.sum(reclaimed))
            .where(mine(Attempt.node_id), Attempt.created_at >= since)
            .group_by(Attempt.node_id)
        )
    }
    gpus = dict(
        s.execute(
            select(Gpu.node_id, func.count())
            .where(mine(Gpu.node_id), Gpu.lifecycle_state.notin_(GONE_STATES))
            .group_by(Gpu.node_id)
        ).all()
    )
    incidents = dict(
        s.execute(
            select(Gpu.node_id, func.count())
            .join(GpuEvent, GpuEvent.gpu_id == Gpu.id)
            .where(
                mine(Gpu.node_id),
                GpuEvent.kind == "health",
                GpuEvent.to_state.in_(INCIDENT_STATES),
                GpuEvent.at >= since,
            )
            .group_by(Gpu.node_id)
        ).all()
    )
    score = GpuBenchmark.score_pct
    benches: dict[str, list[Any]] = {}
    for nid, runs, total, total_sq in s.execute(
        select(Gpu.node_id, func.count(score), func.sum(score), func.sum(score * score))
        .join(GpuBenchmark, GpuBenchmark.gpu_id == Gpu.id)
        .where(mine(Gpu.node_id), score.is_not(None), GpuBenchmark.at >= since)
        .group_by(Gpu.node_id, GpuBenchmark.gpu_id)
    ):
        benches.setdefault(nid, []).append(
            bench_stats(int(runs), float(total or 0), float(total_sq or 0))
        )
    out: dict[str, NodeHistory] = {}
    for nid, registered, status, last_hb in nodes:
        start = max(utc(registered) or at, since)
        observed = max((at - start).total_seconds(), 0.0)
        down = 0.0
        if status != "online":
            last = max(utc(last_hb) or start, start)
            down = max((at - last).total_seconds(), 0.0)
        total, n_lost, n_reclaimed = attempts.get(nid, (0, 0, 0))
        out[nid] = NodeHistory(
            observed_s=observed,
            downtime_s=min(down, observed),
            attempts=total,
            lost=n_lost,
            reclaimed=n_reclaimed,
            gpus=int(gpus.get(nid, 0)),
            incidents=int(incidents.get(nid, 0)),
            benchmarks=tuple(benches.get(nid, ())),
        )
    return out


def reliabilities(s: Session, at: datetime | None = None) -> dict[str, float]:
    """Node id -> reputation score, for every node."""
    return {nid: reputation(h).score for nid, h in node_histories(s, at).items()}


def _rep_dict(node_id: str, rep: Reputation) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "score": round(rep.score, 4),
        "components": [
            {
                "name": c.name,
                "value": round(c.value, 4),
                "weight": c.weight,
                "explanation": c.explanation,
            }
            for c in rep.components
        ],
        "explanation": rep.explanation(),
    }


def node_reputation(db: Database, who: Principal, node_id: str) -> dict[str, Any]:
    """A node's score with its breakdown; public like the offers it appears in."""
    with db.sessions() as s:
        hist = node_histories(s, node_ids=[node_id]).get(node_id)
    if hist is None:
        raise NotFound(f"no node {node_id!r}", field="node_id")
    return _rep_dict(node_id, reputation(hist))
