"""The live network's fleet and finished jobs, as the simulator replays them (admin only)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import select

from gpunet.core.jobs import TERMINAL_JOB_STATES
from gpunet.services.auth import Principal, Role
from gpunet.services.reputation import GONE_STATES
from gpunet.store.db import Database
from gpunet.store.tables import Attempt, Gpu, Job
from gpunet.util import iso


def export(db: Database, who: Principal) -> dict[str, Any]:
    """GPUs in service by model, and every job in a final state whose attempts ran, oldest
    first. A job's running time is the sum over its attempts (retries and preempted runs used
    GPU time too); its GPU model is that of its last attempt that ran."""
    who.require(Role.ADMIN)
    with db.sessions() as s:
        models = {g.id: g.model for g in s.scalars(select(Gpu))}
        in_service = s.scalars(select(Gpu.model).where(Gpu.lifecycle_state.notin_(GONE_STATES)))
        fleet = sorted(Counter(in_service).items())
        done = [st.value for st in TERMINAL_JOB_STATES]
        jobs = list(
            s.scalars(select(Job).where(Job.state.in_(done)).order_by(Job.created_at, Job.id))
        )
        ran: dict[str, list[Attempt]] = {}
        both = Attempt.started_at.is_not(None) & Attempt.finished_at.is_not(None)
        for a in s.scalars(select(Attempt).where(both).order_by(Attempt.number)):
            ran.setdefault(a.job_id, []).append(a)
    rows = [(j, ran[j.id]) for j in jobs if j.id in ran and j.finished_at is not None]
    origin = rows[0][0].created_at if rows else None
    out = []
    for j, atts in rows:
        assert origin is not None and j.finished_at is not None
        running = 0.0
        for a in atts:
            assert a.started_at is not None and a.finished_at is not None
            running += (a.finished_at - a.started_at).total_seconds()
        last = atts[-1]
        out.append(
            {
                "id": j.id,
                "account_id": j.account_id,
                "priority": j.priority,
                "state": j.state,
                "submitted_at": iso(j.created_at),
                "arrival_s": (j.created_at - origin).total_seconds(),
                "gpu_count": j.gpu_count,
                "job_class": j.spec.get("job_class"),
                "gpu_model": models.get(str(last.gpu_ids[0])) if last.gpu_ids else None,
                "running_s": running,
                "attempts": len(atts),
                "jct_s": (j.finished_at - j.created_at).total_seconds(),
            }
        )
    return {"fleet": [{"model": m, "count": n} for m, n in fleet], "jobs": out}
