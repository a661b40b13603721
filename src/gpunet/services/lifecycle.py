"""GPU lifecycle use cases: discovery, operator moves, health verdicts applied, timelines.

The rules live in core/lifecycle.py and core/health.py; this module gathers the data, applies
the decisions in one transaction each, and records every change as a GPU event.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpunet.core.health import Health, HealthReading, Verdict, evaluate
from gpunet.core.jobs import AttemptState, LostCause
from gpunet.core.lifecycle import SCHEDULABLE, GpuState, Move, move, operator_move
from gpunet.errors import NotFound, ValidationFailed
from gpunet.services.auth import Principal, Role
from gpunet.services.fleet import busy_gpu_ids, gpu_dict
from gpunet.services.jobs import lose_attempt
from gpunet.store.db import Database
from gpunet.store.tables import Attempt, Gpu, GpuEvent, Job, Node
from gpunet.util import iso, now

HEALTH_RULE = "rule:health"


def _event(
    s: Session, g: Gpu, kind: str, src: str | None, dst: str, reason: str, actor: str, **data: Any
) -> None:
    s.add(
        GpuEvent(
            gpu_id=g.id,
            kind=kind,
            from_state=src,
            to_state=dst,
            reason=reason,
            actor=actor,
            at=now(),
            data=data,
        )
    )


def apply_move(s: Session, g: Gpu, m: Move) -> None:
    """Record a lifecycle move and keep the scheduler's ``drained`` flag in step with it."""
    g.lifecycle_state = m.dst.value
    g.drained = m.dst not in SCHEDULABLE
    _event(s, g, "lifecycle", m.src.value if m.src else None, m.dst.value, m.reason, m.actor)


def discovered(s: Session, g: Gpu, node_id: str, *, burn_in: bool = False) -> None:
    """A GPU seen for the first time. With ``burn_in`` it waits in burn_in for its agent's
    first benchmark (services/tiers.py moves it on); without, it goes straight into service
    and the event says so."""
    s.flush()
    g.lifecycle_state = GpuState.DISCOVERED.value
    _event(s, g, "lifecycle", None, GpuState.DISCOVERED.value, f"found on {node_id}", node_id)
    if burn_in:
        apply_move(
            s,
            g,
            move(
                GpuState.DISCOVERED, GpuState.BURN_IN, "burn-in benchmark pending", "rule:burn_in"
            ),
        )
        return
    apply_move(
        s,
        g,
        move(
            GpuState.DISCOVERED,
            GpuState.ACTIVE,
            "burn-in is not required by this coordinator",
            "rule:burn_in",
        ),
    )


def _may_operate(s: Session, who: Principal, g: Gpu) -> None:
    if who.is_admin:
        return
    node = s.get(Node, g.node_id)
    if who.role is Role.PROVIDER and node is not None and node.account_id == who.account_id:
        return
    raise NotFound(f"no GPU {g.id!r}", field="gpu_id")  # no existence leak to others


def _gpu(s: Session, gpu_id: str, *, lock: bool = False) -> Gpu:
    g = s.get(Gpu, gpu_id, with_for_update=lock)
    if g is None:
        raise NotFound(f"no GPU {gpu_id!r}", field="gpu_id")
    return g


def operate(db: Database, who: Principal, gpu_id: str, action: str, reason: str) -> dict[str, Any]:
    """An operator's drain | activate | maintain | retire | recycle, with a reason."""
    if not reason.strip():
        raise ValidationFailed("reason", "say why (--reason TEXT)")
    with db.transaction() as s:
        g = _gpu(s, gpu_id, lock=True)
        _may_operate(s, who, g)
        m = operator_move(GpuState(g.lifecycle_state), action, reason, f"operator:{who.token_id}")
        apply_move(s, g, m)
        return gpu_dict(g, busy_gpu_ids(s).get(g.id))


def _holding(s: Session, node_id: str, gpu_id: str) -> list[Attempt]:
    live = [AttemptState.ASSIGNED.value, AttemptState.RUNNING.value]
    rows = s.scalars(select(Attempt).where(Attempt.node_id == node_id, Attempt.state.in_(live)))
    return [a for a in rows if gpu_id in a.gpu_ids]


def _react(s: Session, g: Gpu, v: Verdict) -> int:
    """Lifecycle moves a verdict calls for; returns how many attempts were stopped."""
    state = GpuState(g.lifecycle_state)
    why = "; ".join(v.reasons)
    stopped = 0
    if v.status is Health.FAILED:
        if state in (GpuState.DISCOVERED, GpuState.BURN_IN, GpuState.ACTIVE, GpuState.DEGRADED):
            apply_move(s, g, move(state, GpuState.DRAINED, f"health failed: {why}", HEALTH_RULE))
        if v.stop_running:
            for att in _holding(s, g.node_id, g.id):
                lose_attempt(s, att, f"GPU {g.id} failed: {why}", HEALTH_RULE, LostCause.GPU_FAILED)
                stopped += 1
    elif v.status is Health.DEGRADED and state is GpuState.ACTIVE:
        apply_move(s, g, move(state, GpuState.DEGRADED, f"health degraded: {why}", HEALTH_RULE))
    elif v.status is Health.HEALTHY and state is GpuState.DEGRADED:
        apply_move(s, g, move(state, GpuState.ACTIVE, "health back to normal", HEALTH_RULE))
    return stopped


def apply_health(db: Database, node_id: str, readings: list[dict[str, Any]]) -> int:
    """Evaluate an agent's health readings; record what changed, drain failed GPUs and stop
    the attempts the rule says must stop. Returns the number of attempts stopped."""
    parsed = [HealthReading.from_dict(r) for r in readings]
    if not parsed:
        return 0
    verdicts = {p.index: (p, evaluate(p)) for p in parsed}
    stopped = 0
    with db.transaction() as s:
        for g in s.scalars(select(Gpu).where(Gpu.node_id == node_id).with_for_update()):
            if g.index not in verdicts:
                continue
            reading, v = verdicts[g.index]
            reasons = v.reasons
            if v.status.value == g.health_status and reasons == list(g.health_reasons or []):
                continue  # nothing new: no write
            _event(
                s,
                g,
                "health",
                g.health_status,
                v.status.value,
                "; ".join(reasons) or "no findings",
                HEALTH_RULE,
                verdict=v.to_dict(),
                reading=reading.to_dict(),
            )
            g.health_status, g.health_reasons, g.health_at = v.status.value, reasons, now()
            g.healthy = v.status is not Health.FAILED
            stopped += _react(s, g, v)
    return stopped


def timeline(db: Database, who: Principal, gpu_id: str) -> dict[str, Any]:
    """A GPU's whole story: what it is now, its events, and the attempts it ran."""
    with db.sessions() as s:
        g = _gpu(s, gpu_id)
        if not who.is_admin and who.role is not Role.PROVIDER:
            raise NotFound(f"no GPU {gpu_id!r}", field="gpu_id")
        _may_operate(s, who, g)
        events = [
            {
                "at": iso(e.at),
                "kind": e.kind,
                "from": e.from_state,
                "to": e.to_state,
                "reason": e.reason,
                "actor": e.actor,
                "data": e.data,
            }
            for e in s.scalars(
                select(GpuEvent).where(GpuEvent.gpu_id == g.id).order_by(GpuEvent.id)
            )
        ]
        attempts = []
        busy_s = 0.0
        rows = s.execute(
            select(Attempt, Job.name)
            .join(Job, Job.id == Attempt.job_id)
            .where(Attempt.node_id == g.node_id)
            .order_by(Attempt.created_at)
        )
        for att, name in rows:
            if g.id not in att.gpu_ids:
                continue
            secs = None
            if att.started_at is not None:
                end = att.finished_at or now()
                secs = max(0.0, (_aware(end) - _aware(att.started_at)).total_seconds())
                busy_s += secs
            attempts.append(
                {
                    "attempt_id": att.id,
                    "job_id": att.job_id,
                    "job_name": name,
                    "state": att.state,
                    "started_at": iso(att.started_at),
                    "finished_at": iso(att.finished_at),
                    "seconds": secs,
                    "reason": att.reason,
                }
            )
        first = events[0]["at"] if events else None
        out = gpu_dict(g, busy_gpu_ids(s).get(g.id))
        out.update(events=events, attempts=attempts, busy_s=round(busy_s, 3), first_seen=first)
        return out


def _aware(dt: Any) -> Any:
    from gpunet.util import utc

    return utc(dt)
