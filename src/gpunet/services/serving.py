"""Service use cases: deploy, read, scale, stop; replicas kept at the wanted count; the routing
table the gateway reads; readiness as agents report it. Tenancy is enforced here.

A service is a row of ``services`` and its replicas are jobs with its ``service_id``, placed,
sandboxed, metered and billed like any job (docs/services.md)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gpunet.core.durations import parse_duration
from gpunet.core.jobs import AttemptState, JobState
from gpunet.core.jobspec import JobSpec, parse_spec
from gpunet.core.scheduling import JobRequest
from gpunet.core.serving.autoscale import ScalingPolicy
from gpunet.core.serving.replicas import BACKOFF_WINDOW_S, ReplicaView, reconcile
from gpunet.errors import Conflict, GpunetError, NotFound, Unschedulable, ValidationFailed
from gpunet.services import billing
from gpunet.services.auth import Principal, Role, issue
from gpunet.services.fleet import account_ids, job_request
from gpunet.services.jobs import _add, _cancel
from gpunet.services.pass_cache import cache_for
from gpunet.store.db import Database
from gpunet.store.tables import Account, Attempt, Job, ServiceRow
from gpunet.util import iso, new_id, now

RUNNING, STOPPED = "running", "stopped"
DECISIONS_KEPT = 20
LIVE_JOB_STATES = (JobState.QUEUED.value, JobState.ASSIGNED.value, JobState.RUNNING.value)


def scaling_policy(spec: dict[str, Any], min_replicas: int, max_replicas: int) -> ScalingPolicy:
    """The autoscaler's parameters of a stored service spec with its current bounds."""
    sc = ((spec.get("service") or {}).get("scaling")) or {}
    return ScalingPolicy(
        target_inflight=float(sc.get("target_inflight", 1)),
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        stable_window_s=float(sc.get("stable_window_s", 60)),
        panic_window_s=float(sc.get("panic_window_s", 6)),
        scale_to_zero_after_s=max(
            float(sc.get("scale_to_zero_after_s", 300)), float(sc.get("panic_window_s", 6))
        ),
        queue_limit=int(sc.get("queue_limit", 100)),
    )


def _principal(row: ServiceRow) -> Principal:
    """Who a service's replicas are submitted and stopped as: its account."""
    return Principal(token_id=f"service:{row.name}", role=Role.CONSUMER, account_id=row.account_id)


def _visible(s: Session, who: Principal, name: str) -> ServiceRow:
    q = select(ServiceRow).where(ServiceRow.name == name)
    if not who.is_admin:
        q = q.where(ServiceRow.account_id == who.account_id)
    row = s.scalars(q.order_by(ServiceRow.state)).first()  # an admin: the running one first
    # another tenant's service answers exactly like a missing one: no existence leak
    if row is None:
        raise NotFound(f"no service {name!r}", field="name")
    return row


def _decide(row: ServiceRow, desired: int, reason: str, at: datetime) -> None:
    row.desired = desired
    row.reason = reason
    row.updated_at = at
    entry = {"at": at.isoformat(), "desired": desired, "reason": reason}
    row.decisions = [*(row.decisions or []), entry][-DECISIONS_KEPT:]


def deploy(db: Database, who: Principal, spec: JobSpec) -> ServiceRow:
    """Create a service (or start a stopped one of that name again with the new spec)."""
    who.require(Role.CONSUMER)
    svc = spec.service
    if svc is None:
        raise ValidationFailed("service", "a service needs a service: block")
    with db.transaction() as s:
        owners = account_ids(s, spec.resources.owners)
        unknown = [n for n in spec.resources.owners if n not in owners]
        if unknown:
            raise ValidationFailed("resources.owners", f"no account named {unknown[0]!r}")
        why = cache_for(db).never_fits(
            s, job_request("svc-check", who.account_id, spec, owner_ids=owners)
        )
        why = why or billing.never_fits(s, who.account_id, spec.resources.gpus)
        if why:
            raise Unschedulable(
                f"this service can never run on this fleet: {why}", field="resources"
            )
        same = s.scalars(
            select(ServiceRow).where(
                ServiceRow.account_id == who.account_id, ServiceRow.state == RUNNING
            )
        ).all()
        for other in same:
            if other.name == spec.name:
                raise Conflict(
                    f"service {spec.name!r} is running: stop it first "
                    f"(gpunet services stop {spec.name}) or change its replicas "
                    "(gpunet services scale)",
                    field="name",
                )
            if svc.model is not None and other.model == svc.model:
                raise Conflict(
                    f"model {svc.model!r} is served by service {other.name!r} already",
                    field="service.model",
                )
        at = now()
        row = s.scalar(
            select(ServiceRow).where(
                ServiceRow.account_id == who.account_id, ServiceRow.name == spec.name
            )
        )
        if row is None:
            row = ServiceRow(
                id=new_id("svc"),
                account_id=who.account_id,
                name=spec.name,
                created_at=at,
                decisions=[],
            )
            s.add(row)
        row.spec = spec.model_dump(mode="json")
        row.state = RUNNING
        row.model = svc.model
        row.min_replicas = svc.replicas.min
        row.max_replicas = svc.replicas.max
        row.decisions = []
        _decide(row, svc.replicas.min, f"deployed: min {svc.replicas.min}", at)
        s.flush()
        return row


def create_key(
    db: Database, who: Principal, name: str, label: str = "", expires: str | None = None
) -> dict[str, Any]:
    """A service key: a token that calls the service ``name`` through the gateway and
    nothing else (revoked like any token). Answers it in clear, the only time it is seen."""
    who.require(Role.CONSUMER)
    at = now()
    expires_at = at + parse_duration(expires, "expires") if expires is not None else None
    with db.transaction() as s:
        row = _visible(s, who, name)
        acct = s.get(Account, row.account_id)
        assert acct is not None
        tok, token = issue(
            s,
            Role.SERVICE,
            acct.name,
            name=label or f"key of service {name}",
            expires_at=expires_at,
        )
        tok.service_id = row.id
        return {"token": token, "id": tok.id, "service": name, "expires_at": iso(expires_at)}


def list_services(db: Database, who: Principal, *, stopped: bool = False) -> list[ServiceRow]:
    with db.sessions() as s:
        q = select(ServiceRow).order_by(ServiceRow.name)
        if not who.is_admin:
            q = q.where(ServiceRow.account_id == who.account_id)
        if not stopped:
            q = q.where(ServiceRow.state == RUNNING)
        return list(s.scalars(q))


@dataclass(frozen=True)
class ReplicaInfo:
    """A replica as ``services show`` lists it."""

    job_id: str
    state: str
    attempt_id: str | None
    node_id: str | None
    ready: bool | None
    started_at: datetime | None


def get_service(db: Database, who: Principal, name: str) -> tuple[ServiceRow, list[ReplicaInfo]]:
    with db.sessions() as s:
        row = _visible(s, who, name)
        return row, _replicas(s, [row.id]).get(row.id, [])


def _replicas(s: Session, service_ids: list[str]) -> dict[str, list[ReplicaInfo]]:
    """The replicas of these services that have not ended, with their current attempts."""
    rows = s.execute(
        select(
            Job.service_id,
            Job.id,
            Job.state,
            Attempt.id,
            Attempt.node_id,
            Attempt.ready,
            Attempt.started_at,
        )
        .outerjoin(Attempt, Attempt.id == Job.current_attempt_id)
        .where(Job.service_id.in_(service_ids), Job.state.in_(LIVE_JOB_STATES))
        .order_by(Job.created_at)
    ).all()
    out: dict[str, list[ReplicaInfo]] = defaultdict(list)
    for sid, jid, state, aid, node, ready, started in rows:
        assert sid is not None  # selected by service id
        out[sid].append(ReplicaInfo(jid, state, aid, node, ready, started))
    return out


def scale(
    db: Database, who: Principal, name: str, min_replicas: int | None, max_replicas: int | None
) -> ServiceRow:
    """Change a running service's bounds; the wanted count is clamped into them at once."""
    with db.transaction() as s:
        row = _visible(s, who, name)
        if row.state != RUNNING:
            raise Conflict(f"service {name!r} is stopped: deploy it again", field="name")
        lo = row.min_replicas if min_replicas is None else min_replicas
        hi = row.max_replicas if max_replicas is None else max_replicas
        if not 0 <= lo <= 100:
            raise ValidationFailed("min", "must be 0 to 100")
        if not 1 <= hi <= 100:
            raise ValidationFailed("max", "must be 1 to 100")
        if hi < lo:
            raise ValidationFailed("max", f"must be at least min ({lo})")
        row.min_replicas, row.max_replicas = lo, hi
        spec = dict(row.spec)
        spec["service"] = {**spec.get("service", {}), "replicas": {"min": lo, "max": hi}}
        row.spec = spec
        desired = min(max(row.desired, lo), hi)
        _decide(row, desired, f"scaled by {who.token_id}: min {lo}, max {hi} → {desired}", now())
        return row


def stop(db: Database, who: Principal, name: str) -> tuple[ServiceRow, list[str]]:
    """Stop a service: every replica is cancelled. Answers the nodes to wake."""
    with db.transaction() as s:
        row = _visible(s, who, name)
        if row.state == STOPPED:
            return row, []
        row.state = STOPPED
        _decide(row, 0, f"stopped by {who.token_id}", now())
        wake: list[str] = []
        for job in s.scalars(
            select(Job).where(Job.service_id == row.id, Job.state.in_(LIVE_JOB_STATES))
        ):
            wake += _cancel(s, who, job, "service stopped", "service stopped")
        return row, wake


@dataclass
class Reconciled:
    added: int = 0
    stopped: int = 0
    wake: list[str] = field(default_factory=list)
    draining: dict[str, float] = field(default_factory=dict)  # attempt id -> since (epoch s)


def reconcile_all(
    db: Database,
    at: datetime | None = None,
    *,
    fence: Callable[[Session], None] | None = None,
    decisions: Sequence[tuple[str, int, str]] = (),
    outstanding: Mapping[str, int] | None = None,
    draining: Mapping[str, float] | None = None,
) -> Reconciled:
    """Record the autoscaler's ``decisions`` (service id, count, reason), then add and stop
    replicas so that each service runs its wanted count (core.serving.replicas). ``fence``
    refuses the writes unless this replica still leads. ``outstanding``: requests in flight
    per replica (attempt id), ``draining``: replicas out of the rotation since when (epoch
    seconds); the answer's ``draining`` is the new set."""
    at = at or now()
    t = at.timestamp()
    out = Reconciled()
    with db.transaction() as s:
        if fence is not None:
            fence(s)
        for sid, desired, reason in decisions:
            row = s.get(ServiceRow, sid)
            if row is not None and row.state == RUNNING and row.desired != desired:
                _decide(row, desired, reason, at)
        rows = list(s.scalars(select(ServiceRow).where(ServiceRow.state == RUNNING)))
        by_id = {r.id: r for r in rows}
        live = _replicas(s, list(by_id))
        since = at - timedelta(seconds=BACKOFF_WINDOW_S)
        failures: dict[str, list[float]] = defaultdict(list)
        for failed_of, fin in s.execute(
            select(Job.service_id, Job.finished_at).where(
                Job.service_id.in_(list(by_id)),
                Job.state == JobState.FAILED.value,
                Job.finished_at >= since,
            )
        ):
            if failed_of is not None and fin is not None:
                failures[failed_of].append(fin.timestamp())
        fits: Callable[[JobRequest], str | None] | None = None
        for sid, row in by_id.items():
            reps = live.get(sid, [])
            spec = row.spec
            readiness = (spec.get("service") or {}).get("readiness") or {}
            views = [
                ReplicaView(
                    job_id=r.job_id,
                    state=r.state,
                    created_at=0.0,
                    started_at=r.started_at.timestamp() if r.started_at else None,
                    ready=bool(r.ready),
                    ever_ready=r.ready is not None,
                    node_id=r.node_id,
                    attempt_id=r.attempt_id,
                    outstanding=(outstanding or {}).get(r.attempt_id or "", 0),
                    draining_since=(draining or {}).get(r.attempt_id or ""),
                )
                for r in reps
            ]
            p = reconcile(
                views,
                row.desired,
                t,
                readiness_timeout_s=float(readiness.get("timeout_s", 300)),
                failure_times=failures.get(sid, []),
            )
            who = _principal(row)
            by_job = {v.job_id: v for v in views}
            for job_id in p.drain:
                att = by_job[job_id].attempt_id
                if att is not None:
                    out.draining[att] = (draining or {}).get(att, t)
            for job_id, why in p.stop:
                job = s.get(Job, job_id)
                if job is not None:
                    out.wake += _cancel(s, who, job, f"service: {why}", f"service: {why}")
                    out.stopped += 1
            if p.add:
                fits = fits or cache_for(db).capacity(s)  # once per pass
                try:
                    parsed = parse_spec(spec)
                    for i in range(p.add):
                        job = _add(s, fits, who, parsed, None, at + timedelta(microseconds=i))[0]
                        job.service_id = sid
                        out.added += 1
                except GpunetError as exc:  # the fleet changed under it: say so, retry later
                    why = f"cannot add a replica: {exc.message}"
                    if row.reason != why:
                        _decide(row, row.desired, why, at)
    return out


@dataclass(frozen=True)
class Route:
    """What the gateway needs to know of one running service."""

    service_id: str
    account_id: str
    name: str
    model: str | None
    spec: dict[str, Any]
    replicas: tuple[tuple[str, str], ...]  # (attempt id, node id) of the ready replicas
    starting: int  # replicas not ready yet (queued, assigned, running unready)
    desired: int
    min_replicas: int
    max_replicas: int


def routing_table(db: Database) -> list[Route]:
    """Every running service with its ready replicas, in one read."""
    with db.sessions() as s:
        rows = list(s.scalars(select(ServiceRow).where(ServiceRow.state == RUNNING)))
        live = _replicas(s, [r.id for r in rows])
    out = []
    for row in rows:
        reps = live.get(row.id, [])
        ready = tuple(
            (r.attempt_id, r.node_id)
            for r in reps
            if r.ready and r.state == JobState.RUNNING.value and r.attempt_id and r.node_id
        )
        out.append(
            Route(
                service_id=row.id,
                account_id=row.account_id,
                name=row.name,
                model=row.model,
                spec=row.spec,
                replicas=ready,
                starting=len(reps) - len(ready),
                desired=row.desired,
                min_replicas=row.min_replicas,
                max_replicas=row.max_replicas,
            )
        )
    return out


def set_ready(db: Database, node_id: str, ready: set[str]) -> bool:
    """Record which of a node's replicas pass their readiness probe (``ready``: attempt ids
    its agent reports ready). A replica that was ready and is no longer is marked not ready;
    one never ready stays unprobed (None). Answers whether anything changed."""
    with db.transaction() as s:
        rows = s.execute(
            select(Attempt.id, Attempt.ready)
            .join(Job, Job.id == Attempt.job_id)
            .where(
                Attempt.node_id == node_id,
                Attempt.state == AttemptState.RUNNING.value,
                Job.service_id.is_not(None),
            )
        ).all()
        up = [a for a, r in rows if a in ready and r is not True]
        down = [a for a, r in rows if a not in ready and r is True]
        if up:
            s.execute(update(Attempt).where(Attempt.id.in_(up)).values(ready=True))
        if down:
            s.execute(update(Attempt).where(Attempt.id.in_(down)).values(ready=False))
        return bool(up or down)
