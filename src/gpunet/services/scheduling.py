"""One scheduler pass: load once, call the core planner, apply its plan once.

The pass reads the queue, the attempts that hold GPUs, the fleet and the accounts of waiting
jobs (credits, quota, budget) into one ``Snapshot``; the core decides placements, admission and
preemptions; the pass then applies them in the same transaction, under a lock on the nodes it
places on, so an attempt is never placed on a node that went offline meanwhile.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from gpunet.core.jobs import AttemptState, JobState, StopKind
from gpunet.core.scheduling import Explanation, JobRequest, Plan, Snapshot, explain, plan
from gpunet.services import billing
from gpunet.services.auth import Principal
from gpunet.services.fleet import Holder, fleet_snapshot, holders, with_reliability
from gpunet.services.jobs import _visible, move_job, stop_attempt
from gpunet.services.pass_cache import cache_for
from gpunet.store.db import Database
from gpunet.store.tables import Attempt, Gpu, Job, JobEvent, Node
from gpunet.util import new_id, now, utc

# Fair share remembers each account's GPU use with this half-life (Settings.fair_share_half_life_s).
DEFAULT_HALF_LIFE_S = 24 * 3600.0


@dataclass
class TickResult:
    assigned: list[str]  # attempt ids
    nodes: list[str]  # nodes to wake (new work, or an attempt to stop)
    waits_s: list[float]  # queue time of each assigned job
    preempted: list[str] = field(default_factory=list)  # attempt ids told to stop


def _free_gpu_exists(snapshot: Snapshot) -> bool:
    online = {n.id for n in snapshot.nodes if n.online}
    return any(
        not g.busy and g.healthy and not g.drained and g.node_id in online for g in snapshot.gpus
    )


def tick(
    db: Database,
    policy: str,
    terms: billing.Terms | None = None,
    *,
    half_life_s: float = DEFAULT_HALF_LIFE_S,
) -> TickResult:
    """Place queued jobs and stop the interruptible attempts the plan preempts."""
    terms = terms or billing.Terms()
    cache = cache_for(db)
    result = TickResult([], [], [])
    with db.transaction() as s:
        queued = list(s.scalars(select(Job.id).where(Job.state == JobState.QUEUED.value)))
        if not queued:
            return result
        held = holders(s)
        # a job some attempt is being stopped for waits for those GPUs: it must not preempt more
        making_room = {
            h.preempted_for
            for h in held
            if h.state == AttemptState.STOPPING.value and h.preempted_for is not None
        }
        running = [h for h in held if h.state == AttemptState.RUNNING.value]
        reqs = cache.requests(s, [*queued, *(h.job_id for h in running)])
        pending = [reqs[j] for j in queued if j in reqs and j not in making_room]
        preemptible = {
            h.job_id: replace(reqs[h.job_id], running_on=h.gpu_ids)
            for h in running
            if h.job_id in reqs and reqs[h.job_id].interruptible
        }
        busy = {g: h.attempt_id for h in held for g in h.gpu_ids}
        clock = time.time()
        snapshot = fleet_snapshot(
            s, now=clock, busy=busy, reliability={}, memo=cache.views, keep_running=True
        )
        if not pending or (not preemptible and not _free_gpu_exists(snapshot)):
            return result  # nothing could start: no reputation, account or usage is read
        snapshot = with_reliability(snapshot, cache.reliabilities(s), cache.views)
        in_use: dict[str, int] = defaultdict(int)
        for h in held:
            in_use[h.account_id] += len(h.gpu_ids)
        snapshot = replace(
            snapshot,
            accounts=billing.account_views(s, in_use, {r.account for r in pending}, now()),
            hold_hours=terms.hold_hours,
            account_usage=cache.usage(s, clock, half_life_s),
        )
        p = plan(snapshot, [*pending, *preemptible.values()], policy)
        _apply(s, p, snapshot, reqs, held, terms, result)
    return result


def _apply(
    s: Session,
    p: Plan,
    snapshot: Snapshot,
    reqs: Mapping[str, JobRequest],
    held: list[Holder],
    terms: billing.Terms,
    result: TickResult,
) -> None:
    by_job = {h.job_id: h for h in held}
    _preempt(s, p, reqs, by_job, result)
    starts = [pl for pl in p.placements if pl.job_id not in by_job]  # kept jobs stay as they are
    if not starts:
        return
    node_ids = sorted({pl.node_id for pl in starts})
    # Lock the nodes' rows before reading their state (an UPDATE locks on both stores: a row
    # lock on PostgreSQL, the write lock on SQLite), so the lease reaper either took a node
    # offline before this read or waits until these attempts are committed and then loses
    # them: an attempt is never left on an offline node.
    s.execute(
        update(Node)
        .where(Node.id.in_(node_ids))
        .values(status=Node.status)
        .execution_options(synchronize_session=False)
    )
    online = set(s.scalars(select(Node.id).where(Node.id.in_(node_ids), Node.status == "online")))
    busy = {g for h in holders(s) for g in h.gpu_ids}  # re-read under the lock
    gpu_ids = [g for pl in starts for g in pl.gpu_ids]
    index = dict(s.execute(select(Gpu.id, Gpu.index).where(Gpu.id.in_(gpu_ids))).all())
    views = {g.id: g for g in snapshot.gpus}
    owners = {n.id: n.owner for n in snapshot.nodes}
    todo = [pl for pl in starts if pl.node_id in online and not busy.intersection(pl.gpu_ids)]
    if not todo:
        return
    jobs = {
        j.id: j
        for j in s.scalars(
            select(Job)
            .where(Job.id.in_([pl.job_id for pl in todo]), Job.state == JobState.QUEUED.value)
            .with_for_update()
        )
    }
    since = _queued_since(s, list(jobs))
    at = now()
    for pl in todo:
        job = jobs.get(pl.job_id)
        owner = owners.get(pl.node_id)
        if job is None or owner is None:
            continue  # cancelled since the plan was made
        job.attempts_made += 1
        att = Attempt(
            id=new_id("att"),
            job_id=job.id,
            number=job.attempts_made,
            fencing_token=job.attempts_made,
            node_id=pl.node_id,
            gpu_ids=list(pl.gpu_ids),
            gpu_indices=[index[g] for g in pl.gpu_ids],
            state=AttemptState.ASSIGNED.value,
            created_at=at,
        )
        s.add(att)
        interruptible = reqs[job.id].interruptible
        prices = {g: views[g].rate_for(interruptible) for g in pl.gpu_ids}
        billing.open_charge(s, att, job, terms, prices, owner)
        job.current_attempt_id = att.id
        move_job(
            s,
            job,
            JobState.ASSIGNED,
            reason=f"placed on {pl.node_id} GPUs {','.join(pl.gpu_ids)}",
            actor="scheduler",
        )
        result.assigned.append(att.id)
        result.nodes.append(pl.node_id)
        result.waits_s.append(max(0.0, (at - since.get(job.id, at)).total_seconds()))


def _preempt(
    s: Session,
    p: Plan,
    reqs: Mapping[str, JobRequest],
    by_job: Mapping[str, Holder],
    result: TickResult,
) -> None:
    """Stop the running attempts the plan gives to a job that outranks them. A preemption
    with no job taking the GPUs (they went unusable) is not applied: the attempt runs on."""
    for job_id in p.preemptions:
        taker = p.preempted_for.get(job_id)
        h = by_job.get(job_id)
        if taker is None or h is None:
            continue
        att = s.get(Attempt, h.attempt_id, with_for_update=True, populate_existing=True)
        if att is None or att.state != AttemptState.RUNNING.value:
            continue
        reason = f"preempted by job {taker} (priority {reqs[taker].priority})"
        stop_attempt(att, StopKind.PREEMPT, reason)
        att.preempted_for = taker
        result.preempted.append(att.id)
        result.nodes.append(att.node_id)


def _queued_since(s: Session, job_ids: list[str]) -> dict[str, datetime]:
    """When each job last entered the queue (one grouped query)."""
    if not job_ids:
        return {}
    rows = s.execute(
        select(JobEvent.job_id, func.max(JobEvent.at))
        .where(JobEvent.job_id.in_(job_ids), JobEvent.to_state == JobState.QUEUED.value)
        .group_by(JobEvent.job_id)
    )
    out: dict[str, datetime] = {}
    for jid, at in rows:
        t = utc(at)
        if t is not None:
            out[jid] = t
    return out


def why(
    db: Database,
    who: Principal,
    job_id: str,
    policy: str,
    terms: billing.Terms | None = None,
) -> tuple[Job, Explanation | None]:
    """Why a job is (not) running: the core's explanation on the current fleet, with the
    same admission as the scheduler pass (credits, quota, budget) and, for a job an attempt
    is being preempted for, which one it waits for."""
    terms = terms or billing.Terms()
    cache = cache_for(db)
    with db.sessions() as s:
        job = _visible(s, who, job_id)
        if job.state != JobState.QUEUED.value:
            return job, None
        held = holders(s)
        in_use: dict[str, int] = defaultdict(int)
        for h in held:
            in_use[h.account_id] += len(h.gpu_ids)
        snapshot = fleet_snapshot(
            s,
            now=time.time(),
            busy={g: h.attempt_id for h in held for g in h.gpu_ids},
            reliability=cache.reliabilities(s),
            accounts=billing.account_views(s, in_use, [job.account_id], now()),
            hold_hours=terms.hold_hours,
        )
        req = cache.requests(s, [job.id])[job.id]
        exp = explain(snapshot, req, policy)
        stopping = [h for h in held if h.preempted_for == job.id]
        if stopping and exp.placed is None:
            names = ", ".join(h.job_id for h in stopping)
            exp.note = f"waiting for preempted job {names} to stop and free its GPUs"
        return job, exp
