"""How a service's replicas follow its wanted count: which to add, which to stop, and why.

A replica is a job of the service (one attempt at a time, placed like any job). The
coordinator calls :func:`reconcile` every second with the replicas that have not ended and
the count the autoscaler wants. It answers how many replicas to add and which to stop:

- **Too few**: add the difference, unless replicas keep failing (a crash loop): after
  ``FAILURES_BEFORE_BACKOFF`` failures within the backoff window, new replicas wait, the wait
  doubling with each further failure up to ``MAX_BACKOFF_S``, so a broken service does not
  churn the fleet.
- **Too many**: stop the extra ones, cheapest first: queued replicas (no work lost), then
  replicas not ready yet, then the newest ready ones (the oldest have the warmest caches).
  A ready replica with requests in flight is **drained** first: it takes no new request and
  is stopped once its requests are answered, or after ``DRAIN_S`` at the latest.
- **Stuck**: a replica running for longer than the readiness timeout without ever passing its
  probe is stopped and replaced (it counts as a failure for the backoff).

Pure: time is passed in, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

FAILURES_BEFORE_BACKOFF = 3
BACKOFF_WINDOW_S = 300.0
FIRST_BACKOFF_S = 10.0
MAX_BACKOFF_S = 300.0
DRAIN_S = 30.0  # longest a replica on its way out waits for its requests in flight


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One replica (a job of the service that has not ended)."""

    job_id: str
    state: str  # the job's: queued | assigned | running
    created_at: float  # seconds, the caller's clock
    started_at: float | None = None  # its current attempt started running
    ready: bool = False  # passes its readiness probe now
    ever_ready: bool = False  # passed it at least once in this attempt
    node_id: str | None = None
    attempt_id: str | None = None
    outstanding: int = 0  # requests forwarded to it and not yet answered
    draining_since: float | None = None  # taking no new request since then


@dataclass(frozen=True, slots=True)
class Plan:
    """What to do now; ``reasons`` say why, one line per action (empty: nothing to do)."""

    add: int = 0
    stop: tuple[tuple[str, str], ...] = ()  # (job id, why)
    drain: tuple[str, ...] = ()  # job ids to take out of the rotation, stopped later
    wait_s: float = 0.0  # replicas are missing but a crash-loop backoff holds them
    reasons: tuple[str, ...] = field(default_factory=tuple)


def backoff_s(failure_times: Sequence[float], now: float) -> float:
    """Seconds still to wait before adding a replica, given when replicas failed."""
    recent = sorted(t for t in failure_times if now - t <= BACKOFF_WINDOW_S)
    if len(recent) < FAILURES_BEFORE_BACKOFF:
        return 0.0
    extra = len(recent) - FAILURES_BEFORE_BACKOFF
    wait = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2**extra)
    return max(0.0, recent[-1] + wait - now)


def _stop_order(r: ReplicaView) -> tuple[int, float]:
    if r.state != "running":
        return (0, -r.created_at)  # queued or assigned: nothing started yet, newest first
    if not r.ready:
        return (1, -(r.started_at or r.created_at))
    return (2, -(r.started_at or r.created_at))  # newest ready first: the oldest stay


def reconcile(
    replicas: Sequence[ReplicaView],
    desired: int,
    now: float,
    *,
    readiness_timeout_s: float,
    failure_times: Sequence[float] = (),
) -> Plan:
    """What to add and stop so that ``desired`` replicas run; see the module's docstring."""
    stop: list[tuple[str, str]] = []
    reasons: list[str] = []
    live = []
    for r in replicas:
        if (
            r.state == "running"
            and not r.ever_ready
            and r.started_at is not None
            and now - r.started_at > readiness_timeout_s
        ):
            waited = now - r.started_at
            why = f"not ready {waited:.0f} s after it started (timeout {readiness_timeout_s:g} s)"
            stop.append((r.job_id, why))
            reasons.append(f"replace {r.job_id}: {why}")
        else:
            live.append(r)
    extra = len(live) - desired
    drain: list[str] = []
    if extra > 0:
        for r in sorted(live, key=_stop_order)[:extra]:
            why = f"scaled to {desired}"
            since = now if r.draining_since is None else r.draining_since
            if r.state == "running" and r.outstanding > 0 and now - since < DRAIN_S:
                drain.append(r.job_id)
                if r.draining_since is None:
                    reasons.append(f"drain {r.job_id} ({r.outstanding} in flight): {why}")
                continue
            stop.append((r.job_id, why))
            reasons.append(f"stop {r.job_id} ({r.state}{', ready' if r.ready else ''}): {why}")
    missing = desired - len(live)
    add, wait = 0, 0.0
    if missing > 0:
        wait = backoff_s(failure_times, now)
        recent = sum(1 for t in failure_times if now - t <= BACKOFF_WINDOW_S)
        if wait > 0:
            reasons.append(
                f"{missing} replica(s) missing; {recent} failed within "
                f"{BACKOFF_WINDOW_S:g} s: next in {wait:.0f} s"
            )
        else:
            add = missing
            reasons.append(f"add {missing}: {len(live)} of {desired} replica(s)")
    return Plan(add=add, stop=tuple(stop), drain=tuple(drain), wait_s=wait, reasons=tuple(reasons))
