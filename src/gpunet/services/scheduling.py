"""One scheduler pass: load once, call the core planner, apply its plan once.

The pass reads the queue, the attempts that hold GPUs, the fleet and the accounts of waiting
jobs (credits, quota, budget) into one ``Snapshot``; the core decides placements, admission and
preemptions; the pass then applies them in the same transaction, under a lock on the nodes it
places on, so an attempt is never placed on a node that went offline meanwhile.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from gpunet.core.gangs import DEFAULT_PORTS, parse_ports, pick_port
from gpunet.core.jobs import ACTIVE_ATTEMPT_STATES, AttemptState, JobState, LostCause, StopKind
from gpunet.core.scheduling import Explanation, JobRequest, Plan, Snapshot, explain, plan
from gpunet.services import billing, changes, gangs
from gpunet.services.auth import Principal
from gpunet.services.fleet import Holder, spread_group
from gpunet.services.jobs import _visible, move_job, stop_attempt
from gpunet.services.pass_cache import PassCache, cache_for
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
    more: bool = False  # the plan held more starts than one pass applies: run again at once


# Starts applied by one pass: a pass over a deep queue on a large fleet could plan thousands,
# and its one transaction would hold the store's write lock (SQLite) and its rows for
# seconds while the agents' reports wait; the rest start in the next pass, at once.
MAX_STARTS_PER_PASS = 500


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
    max_starts: int = MAX_STARTS_PER_PASS,
    fence: Callable[[Session], None] | None = None,
) -> TickResult:
    """Place queued jobs and stop the interruptible attempts the plan preempts, at most
    ``max_starts`` starts. ``fence`` refuses the pass's writes unless this replica still
    leads (services.replicas)."""
    terms = terms or billing.Terms()
    cache = cache_for(db)
    result = TickResult([], [], [])
    # one pass at a time per store: what it keeps moves with each pass
    with cache.lock, db.transaction() as s:
        # what changed since the last pass: taken before this pass writes anything
        since = changes.cursor(s)
        queued = cache.queued(s, since)
        if not queued:
            return result
        held = cache.holders(s, since)
        # a job some attempt is being stopped for waits for those GPUs: it must not preempt more
        making_room = {
            h.preempted_for
            for h in held
            if h.state == AttemptState.STOPPING.value and h.preempted_for is not None
        }
        running = [h for h in held if h.state == AttemptState.RUNNING.value]
        reqs = cache.requests(s, [*queued, *(h.job_id for h in running)])
        pending = [reqs[j] for j in queued if j in reqs and j not in making_room]
        running_on: dict[str, tuple[str, ...]] = defaultdict(tuple)
        for h in running:  # a gang runs on every member's GPUs
            running_on[h.job_id] += h.gpu_ids
        preemptible = {
            j: replace(reqs[j], running_on=gids)
            for j, gids in running_on.items()
            if j in reqs and reqs[j].interruptible
        }
        clock = time.time()
        busy = (g for h in held for g in h.gpu_ids)
        snapshot = cache.fleet.snapshot(s, since, clock=clock, busy=busy, keep_running=True)
        if not pending or (not preemptible and not _free_gpu_exists(snapshot)):
            return result  # nothing could start: no reputation, account or usage is read
        snapshot = cache.fleet.rated(snapshot, cache.reliabilities(s))
        in_use: dict[str, int] = defaultdict(int)
        for h in held:
            in_use[h.account_id] += len(h.gpu_ids)
        snapshot = replace(
            snapshot,
            spread_nodes=_spread_nodes(s) if any(r.spread for r in pending) else {},
            accounts=billing.account_views(s, in_use, {r.account for r in pending}, now()),
            hold_hours=terms.hold_hours,
            account_usage=cache.usage(s, clock, half_life_s),
        )
        p = plan(snapshot, [*pending, *preemptible.values()], policy, max_starts=max_starts)
        p = _avoid_bad_pairs(s, p, snapshot, reqs, policy)
        if fence is not None:
            fence(s)
        _apply(s, p, snapshot, reqs, held, terms, result, cache, max_starts)
    return result


def _spread_nodes(s: Session) -> dict[str, frozenset[str]]:
    """Per spread group (a service's replicas), the nodes where a member runs now."""
    rows = s.execute(
        select(Job.account_id, Job.name, Attempt.node_id)
        .join(Attempt, Attempt.job_id == Job.id)
        .where(
            Job.service_id.is_not(None),
            Attempt.state.in_([st.value for st in ACTIVE_ATTEMPT_STATES]),
        )
    ).all()
    out: dict[str, set[str]] = defaultdict(set)
    for account_id, name, node_id in rows:
        out[spread_group(account_id, name)].add(node_id)
    return {k: frozenset(v) for k, v in out.items()}


def _apply(
    s: Session,
    p: Plan,
    snapshot: Snapshot,
    reqs: Mapping[str, JobRequest],
    held: list[Holder],
    terms: billing.Terms,
    result: TickResult,
    cache: PassCache,
    max_starts: int = MAX_STARTS_PER_PASS,
) -> None:
    by_job: dict[str, list[Holder]] = defaultdict(list)
    for h in held:
        by_job[h.job_id].append(h)
    _preempt(s, p, reqs, by_job, result)
    starts = [pl for pl in p.placements if pl.job_id not in by_job]  # kept jobs stay as they are
    result.more = p.capped  # the plan left jobs unconsidered: the next pass runs at once
    if not starts:
        return
    if len(starts) > max_starts:  # the plan's order: its first choices start now
        starts, result.more = starts[:max_starts], True
    node_ids = sorted({n for pl in starts for n, _ in pl.ranks()})
    # Lock the nodes' rows before reading their state (an UPDATE locks on both stores: a row
    # lock on PostgreSQL, the write lock on SQLite), so the lease reaper either took a node
    # offline before this read or waits until these attempts are committed and then loses
    # them: an attempt is never left on an offline node. A gang locks all its members' nodes.
    s.execute(
        update(Node)
        .where(Node.id.in_(node_ids))
        .values(status=Node.status)
        .execution_options(synchronize_session=False)
    )
    online = set(s.scalars(select(Node.id).where(Node.id.in_(node_ids), Node.status == "online")))
    busy = {g for h in cache.holders_now(s) for g in h.gpu_ids}  # re-read under the lock
    gpu_ids = [g for pl in starts for g in pl.all_gpu_ids]
    index = dict(s.execute(select(Gpu.id, Gpu.index).where(Gpu.id.in_(gpu_ids))).all())
    views = {g.id: g for g in snapshot.gpus}
    owners = {n.id: n.owner for n in snapshot.nodes}
    # a gang starts whole or not at all: every member's node online and every GPU free
    todo = [
        pl
        for pl in starts
        if all(n in online for n, _ in pl.ranks()) and not busy.intersection(pl.all_gpu_ids)
    ]
    if not todo:
        return
    jobs = {
        j.id: j
        for j in s.scalars(
            select(Job)
            .where(Job.id.in_([pl.job_id for pl in todo]), Job.state == JobState.QUEUED.value)
            .with_for_update(skip_locked=True)  # a job being cancelled waits for the next pass
        )
    }
    since = _queued_since(s, list(jobs))
    ports = _gang_ports(s, [pl.node_id for pl in todo if len(pl.ranks()) > 1])
    at = now()
    charges: list[billing.NewCharge] = []
    attempts: list[dict[str, object]] = []  # written in one INSERT, without ORM objects
    for pl in todo:
        job = jobs.get(pl.job_id)
        ranks = pl.ranks()
        if job is None or any(owners.get(n) is None for n, _ in ranks):
            continue  # cancelled since the plan was made
        port = None
        if len(ranks) > 1:
            lo_hi, used = ports[pl.node_id]
            port = pick_port(lo_hi, used)
            if port is None:
                continue  # every rendezvous port of rank 0's node is taken: next pass
            used.add(port)
        job.attempts_made += 1
        interruptible = reqs[job.id].interruptible
        first: str | None = None
        for rank, (node_id, gids) in enumerate(ranks):
            att_id = new_id("att")
            attempts.append(
                {
                    "id": att_id,
                    "job_id": job.id,
                    "number": job.attempts_made,
                    "fencing_token": job.attempts_made,
                    "node_id": node_id,
                    "gpu_ids": list(gids),
                    "gpu_indices": [index[g] for g in gids],
                    "state": AttemptState.ASSIGNED.value,
                    "created_at": at,
                    "rank": rank,
                    "gang_size": len(ranks),
                    "master_port": port,
                }
            )
            prices = {g: views[g].rate_for(interruptible) for g in gids}
            owner = owners[node_id]
            assert owner is not None
            charges.append(
                billing.NewCharge(att_id, job.id, job.account_id, node_id, owner, prices)
            )
            first = first or att_id
            result.assigned.append(att_id)
            result.nodes.append(node_id)
        assert first is not None
        job.current_attempt_id = first
        where = "; ".join(f"{n} GPUs {','.join(g)}" for n, g in ranks)
        move_job(
            s,
            job,
            JobState.ASSIGNED,
            reason=f"placed on {where}"
            if len(ranks) == 1
            else f"placed as a gang of {len(ranks)} on {where}",
            actor="scheduler",
        )
        result.waits_s.append(max(0.0, (at - since.get(job.id, at)).total_seconds()))
    if attempts:
        s.execute(insert(Attempt), attempts)
    # the holds in a few batched writes, not a flush per placement
    billing.open_charges(s, charges, terms)


# how long a gang whose rendezvous check failed keeps off the pair of nodes that failed it
BAD_PAIR_MEMORY_S = 600.0


def _bad_pairs(s: Session, job_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
    """For each job, the (rank 0 node, reporting node) pairs of its gangs whose rendezvous
    check failed lately (a failing rank 0 pairs with each of its members)."""
    if not job_ids:
        return {}
    since = now() - timedelta(seconds=BAD_PAIR_MEMORY_S)
    failed = list(
        s.execute(
            select(Attempt.job_id, Attempt.number, Attempt.rank, Attempt.node_id).where(
                Attempt.job_id.in_(job_ids),
                Attempt.lost_cause == LostCause.RENDEZVOUS.value,
                Attempt.finished_at >= since,
            )
        )
    )
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for job_id, number, rank, node in failed:
        nodes = [m.node_id for m in gangs.members(s, job_id, number)]
        peers = nodes[1:] if rank == 0 else nodes[:1]
        out[job_id] += [(p, node) for p in peers if p != node]
    return out


def _avoid_bad_pairs(
    s: Session, p: Plan, snapshot: Snapshot, reqs: Mapping[str, JobRequest], policy: str
) -> Plan:
    """A gang placed again on a pair of nodes whose rendezvous check failed it lately is
    planned once more without the node that reported the failure (its GPUs shown busy, with
    those the rest of the plan takes); without another placement it waits for the next pass."""
    bad = _bad_pairs(s, [pl.job_id for pl in p.placements if len(pl.ranks()) > 1])
    if not bad:
        return p
    keep, redo = [], []
    for pl in p.placements:
        nodes = {n for n, _ in pl.ranks()}
        if any(a in nodes and b in nodes for a, b in bad.get(pl.job_id, ())):
            redo.append(pl)
        else:
            keep.append(pl)
    if not redo:
        return p
    taken = {g for pl in keep for g in pl.all_gpu_ids}
    for pl in redo:
        avoid = {b for a, b in bad[pl.job_id]}
        view = replace(
            snapshot,
            gpus=tuple(
                replace(g, busy=True) if g.id in taken or g.node_id in avoid else g
                for g in snapshot.gpus
            ),
        )
        again = plan(view, [reqs[pl.job_id]], policy).placements
        if again:
            keep.append(again[0])
            taken.update(again[0].all_gpu_ids)
    return replace(p, placements=keep)


def _gang_ports(s: Session, node_ids: list[str]) -> dict[str, tuple[tuple[int, int], set[int]]]:
    """For each node that will be rank 0 of a gang: its rendezvous port range and the ports
    its active gangs use."""
    out: dict[str, tuple[tuple[int, int], set[int]]] = {}
    for nid, declared in s.execute(
        select(Node.id, Node.rendezvous_ports).where(Node.id.in_(sorted(set(node_ids))))
    ):
        try:
            lo_hi = parse_ports(declared)
        except ValueError:
            lo_hi = DEFAULT_PORTS
        out[nid] = (lo_hi, gangs.ports_in_use(s, nid))
    return out


def _preempt(
    s: Session,
    p: Plan,
    reqs: Mapping[str, JobRequest],
    by_job: Mapping[str, list[Holder]],
    result: TickResult,
) -> None:
    """Stop the running attempts the plan gives to a job that outranks them (every member of
    a gang). A preemption with no job taking the GPUs (they went unusable) is not applied:
    the attempt runs on."""
    for job_id in p.preemptions:
        taker = p.preempted_for.get(job_id)
        if taker is None or not by_job.get(job_id):
            continue
        for h in by_job[job_id]:
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
        # the fleet and its holders kept between calls: only rows changed since are read
        held, snapshot = cache.shown(
            s, cache.reliabilities(s), clock=time.time(), hold_hours=terms.hold_hours
        )
        in_use: dict[str, int] = defaultdict(int)
        for h in held:
            in_use[h.account_id] += len(h.gpu_ids)
        accounts = billing.account_views(s, in_use, [job.account_id], now())
        snapshot = replace(snapshot, accounts=accounts)
        req = cache.requests(s, [job.id])[job.id]
        exp = explain(snapshot, req, policy)
        stopping = sorted((h for h in held if h.preempted_for == job.id), key=_attempt_id)
        if stopping and exp.placed is None:
            names = ", ".join(h.job_id for h in stopping)
            exp.note = f"waiting for preempted job {names} to stop and free its GPUs"
        return job, exp


def _attempt_id(h: Holder) -> str:
    return h.attempt_id
