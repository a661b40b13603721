"""The agent's side of the API. Agents dial out: every call here is made by the agent."""

from __future__ import annotations

import asyncio
import json
import random

from fastapi import APIRouter, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from gpunet import wire
from gpunet.api.deps import Rt, Who
from gpunet.errors import Forbidden
from gpunet.services import agents as svc
from gpunet.services import serving
from gpunet.services.lifecycle import apply_health
from gpunet.util import now
from gpunet.wire.agent import (
    MAX_HELD_CHARS,
    Accepted,
    FinishReport,
    Heartbeat,
    HeartbeatAnswer,
    Hello,
    HelloRequest,
    LogReport,
    LogsAccepted,
    Registered,
    Registration,
    Report,
    Reports,
    ReportsAccepted,
    Work,
)

router = APIRouter(prefix="/v1/agent", tags=["agent"], responses=wire.AUTHENTICATED)


@router.post("/register", status_code=201, response_model=Registered)
def register(rt: Rt, who: Who, reg: Registration) -> Registered:
    """Register a node with a provider join token; answers the node's own token."""
    node_id, token = svc.register(rt.db, who, reg, burn_in=rt.settings.burn_in)
    rt.leases.renew(node_id, now(), None)
    rt.wakeups.wake_scheduler()
    return Registered(node_id=node_id, token=token, lease_timeout_s=rt.settings.lease_timeout_s)


@router.post("/hello", response_model=Hello, responses=wire.errors(404))
def hello(rt: Rt, who: Who, reg: HelloRequest) -> Hello:
    """A registered node (re)connects with its own token: the attempts that finished while it
    was cut off are settled, its GPUs and settings refresh."""
    node_id, outcomes = svc.hello(rt.db, who, reg, burn_in=rt.settings.burn_in)
    rt.metrics.count_finishes(outcomes)
    rt.leases.renew(node_id, now(), None)
    rt.wakeups.wake_nodes([node_id])  # it may have assigned attempts to pick up again
    rt.wakeups.wake_scheduler()
    return Hello(node_id=node_id, lease_timeout_s=rt.settings.lease_timeout_s)


@router.post("/heartbeat", response_model=HeartbeatAnswer)
async def heartbeat(rt: Rt, who: Who, hb: Heartbeat) -> HeartbeatAnswer:
    """Renew the node's lease. Answers attempts the agent must stop."""
    if who.node_id is None:
        raise Forbidden("only an agent's own token may heartbeat")
    was_known = rt.leases.known(who.node_id)
    gap = rt.leases.renew(who.node_id, now(), [g.model_dump() for g in hb.gpus])
    if gap:
        rt.metrics.heartbeat_lag.observe(gap)
    if not was_known:  # back after being reaped (or after our restart): online again
        await run_in_threadpool(svc.mark_online, rt.db, who.node_id)
        rt.wakeups.wake_scheduler()
    # readings repeat heartbeat after heartbeat: judge them only when they change
    health = [h.model_dump(mode="json") for h in hb.health]
    fingerprint = json.dumps(health, sort_keys=True) if health else ""
    if health and rt.health_seen.get(who.node_id) != fingerprint:
        stopped: int = await run_in_threadpool(apply_health, rt.db, who.node_id, health)
        rt.health_seen[who.node_id] = fingerprint
        if stopped:
            rt.wakeups.wake_scheduler()  # attempts on a failed GPU were re-queued
    ready = frozenset(hb.ready)
    if rt.ready_seen.get(who.node_id) != ready:
        # a replica entered or left the gateway's rotation: the routes are re-read at once
        # (the first heartbeat a coordinator hears from a node is always compared: the store
        # may say what this process never heard)
        if await run_in_threadpool(serving.set_ready, rt.db, who.node_id, set(ready)):
            rt.services_changed()
        rt.ready_seen[who.node_id] = ready
    stop = (
        await run_in_threadpool(svc.check_reported, rt.db, who, hb.attempts) if hb.attempts else []
    )
    return HeartbeatAnswer(stop=stop, lease_timeout_s=rt.settings.lease_timeout_s)


@router.get("/work", response_model=Work)
async def work(
    rt: Rt,
    who: Who,
    wait: float = Query(20.0, ge=0, le=60),
    have: str | None = Query(None, max_length=MAX_HELD_CHARS),
    stopping: str | None = Query(None, max_length=MAX_HELD_CHARS),
) -> Work:
    """Long-poll for attempts to start or stop; answers at once when there are any.
    ``have``: the attempts (comma-separated ids) the agent already holds, ``stopping``: those
    whose stop it already took; neither is sent again, so an agent whose attempts are not yet
    reported started waits instead of being answered the same work over and over. An agent
    that sends neither (an older one) is sent every assigned and stopping attempt."""
    if who.node_id is None:
        raise Forbidden("only an agent's own token may ask for work")
    wk, node = rt.wakeups, who.node_id
    held = svc.Held.parse(have, stopping)
    nothing = Work()
    event = wk.node_event(node)
    event.clear()
    if node not in wk.quiet or wk.quiet[node] != held:
        found = await run_in_threadpool(svc.work_for, rt.db, who, rt.settings.max_log_bytes, held)
        if found.start or found.stop or wait == 0 or wk.closing:
            rt.metrics.count_work(len(found.start), len(found.stop))
            return found
        wk.quiet[node] = held
    try:
        # a little jitter keeps a fleet that started together from re-polling in step
        await asyncio.wait_for(event.wait(), timeout=wait * random.uniform(0.8, 1.0))
    except TimeoutError:
        rt.metrics.count_work(0, 0)
        return nothing
    if wk.closing:
        return nothing
    found = await run_in_threadpool(svc.work_for, rt.db, who, rt.settings.max_log_bytes, held)
    if not (found.start or found.stop):
        wk.quiet[node] = held
    rt.metrics.count_work(len(found.start), len(found.stop))
    return found


@router.post("/attempts/{attempt_id}/started", response_model=Accepted, responses=wire.errors(409))
def started(rt: Rt, who: Who, attempt_id: str, rep: Report) -> Accepted:
    """The attempt's processes are running."""
    rt.metrics.report_requests.labels("started").inc()
    svc.attempt_started(rt.db, who, attempt_id, rep)
    return Accepted()


@router.post(
    "/attempts/{attempt_id}/logs", response_model=LogsAccepted, responses=wire.errors(409, 413)
)
def logs(rt: Rt, who: Who, attempt_id: str, rep: LogReport) -> LogsAccepted:
    """Store output; ``truncated`` once the attempt's output cap is reached (send no more)."""
    rt.metrics.report_requests.labels("logs").inc()
    truncated = svc.append_logs(rt.db, who, attempt_id, rep, rt.settings.max_log_bytes)
    return LogsAccepted(truncated=truncated)


@router.post("/attempts/{attempt_id}/finished", response_model=Accepted, responses=wire.errors(409))
def finished(rt: Rt, who: Who, attempt_id: str, rep: FinishReport) -> Accepted:
    """The attempt ended: its exit code, or lost, and the energy its GPUs used."""
    rt.metrics.report_requests.labels("finished").inc()
    outcome = svc.attempt_finished(rt.db, who, attempt_id, rep)
    rt.metrics.count_finishes([outcome])
    rt.wakeups.wake_scheduler()
    return Accepted()


@router.post("/reports", response_model=ReportsAccepted)
def reports(rt: Rt, who: Who, rep: Reports) -> ReportsAccepted:
    """Several attempts' started and finished reports in one request: each is fenced, taken
    and answered as its own request would be (``status`` 200, 404 or 409)."""
    rt.metrics.report_requests.labels("reports").inc()
    results, taken = svc.take_reports(rt.db, who, rep)
    rt.metrics.count_finishes(taken)
    if taken:
        rt.wakeups.wake_scheduler()
    return ReportsAccepted(results=results)


@router.get(
    "/blobs/{digest}",
    response_class=Response,
    responses={
        200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}
    },
)
def blob(rt: Rt, who: Who, digest: str) -> Response:
    return Response(svc.read_blob(rt.db, who, digest), media_type="application/gzip")
