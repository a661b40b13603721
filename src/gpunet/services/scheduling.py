"""One scheduler pass: snapshot the fleet, call the core planner, apply the plan."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpunet.core.jobs import AttemptState, JobState
from gpunet.core.scheduling import Explanation, explain, plan
from gpunet.services import billing
from gpunet.services.auth import Principal
from gpunet.services.fleet import busy_gpu_ids, fleet_snapshot, requests_for
from gpunet.services.jobs import _visible, move_job
from gpunet.store.db import Database
from gpunet.store.tables import Attempt, Gpu, Job, JobEvent
from gpunet.util import new_id, now, utc


@dataclass
class TickResult:
    assigned: list[str]  # attempt ids
    nodes: list[str]  # nodes to wake
    waits_s: list[float]  # queue time of each assigned job


def tick(db: Database, policy: str, terms: billing.Terms | None = None) -> TickResult:
    """Place queued jobs. The plan is applied in one transaction that re-checks every GPU
    is still free, so a concurrent change can only make a placement wait a tick."""
    result = TickResult([], [], [])
    with db.transaction() as s:
        queued = list(s.scalars(select(Job).where(Job.state == JobState.QUEUED.value)))
        if not queued:
            return result
        snapshot = fleet_snapshot(s, now=time.time())
        p = plan(snapshot, requests_for(s, queued), policy)
        if not p.placements:
            return result
        jobs = {j.id: j for j in queued}
        busy = busy_gpu_ids(s)
        gpus = {
            g.id: g
            for g in s.scalars(
                select(Gpu).where(Gpu.id.in_([gid for pl in p.placements for gid in pl.gpu_ids]))
            )
        }
        at = now()
        for pl in p.placements:
            job = jobs[pl.job_id]
            if any(gid in busy for gid in pl.gpu_ids):
                continue
            blocked = billing.start_blocker(s, job, list(pl.gpu_ids), terms or billing.Terms())
            if blocked:
                job.reason = blocked  # shown by `jobs why`; the job stays queued
                continue
            job.attempts_made += 1
            att = Attempt(
                id=new_id("att"),
                job_id=job.id,
                number=job.attempts_made,
                fencing_token=job.attempts_made,
                node_id=pl.node_id,
                gpu_ids=list(pl.gpu_ids),
                gpu_indices=[gpus[g].index for g in pl.gpu_ids],
                state=AttemptState.ASSIGNED.value,
                created_at=at,
            )
            s.add(att)
            billing.open_charge(s, att, job, terms or billing.Terms())
            job.current_attempt_id = att.id
            move_job(
                s,
                job,
                JobState.ASSIGNED,
                reason=f"placed on {pl.node_id} GPUs {','.join(pl.gpu_ids)}",
                actor="scheduler",
            )
            busy.update({gid: att.id for gid in pl.gpu_ids})
            result.assigned.append(att.id)
            result.nodes.append(pl.node_id)
            queued_since = _queued_since(s, job)
            result.waits_s.append(max(0.0, (at - queued_since).total_seconds()))
    return result


def _queued_since(s: Session, job: Job) -> datetime:
    last = s.scalar(
        select(JobEvent.at)
        .where(JobEvent.job_id == job.id, JobEvent.to_state == JobState.QUEUED.value)
        .order_by(JobEvent.id.desc())
        .limit(1)
    )
    return utc(last or job.created_at)  # type: ignore[return-value]


def why(
    db: Database,
    who: Principal,
    job_id: str,
    policy: str,
    terms: billing.Terms | None = None,
) -> tuple[Job, Explanation | None]:
    """Why a job is (not) running: the core's explanation on the current fleet, plus what
    keeps a placeable job waiting (its credits, budget or quota)."""
    with db.sessions() as s:
        job = _visible(s, who, job_id)
        if job.state != JobState.QUEUED.value:
            return job, None
        exp = explain(fleet_snapshot(s, now=time.time()), requests_for(s, [job])[0], policy)
        if exp.placed is not None:
            blocked = billing.start_blocker(
                s, job, list(exp.placed.gpu_ids), terms or billing.Terms()
            )
            if blocked:
                exp.note = f"{exp.note}; {blocked}" if exp.note else blocked
        return job, exp
