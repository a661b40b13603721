"""The agent's side of the API. Agents dial out: every call here is made by the agent."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from gpunet import wire
from gpunet.api.deps import Rt, Who
from gpunet.errors import Forbidden
from gpunet.services import agents as svc
from gpunet.services.lifecycle import apply_health
from gpunet.util import now

router = APIRouter(prefix="/v1/agent", tags=["agent"], responses=wire.AUTHENTICATED)


@router.post("/register", status_code=201)
def register(rt: Rt, who: Who, reg: svc.Registration) -> dict[str, Any]:
    """Register a node with a provider join token; answers the node's own token."""
    node_id, token = svc.register(rt.db, who, reg, burn_in=rt.settings.burn_in)
    rt.leases.renew(node_id, now(), None)
    rt.wakeups.wake_scheduler()
    return {"node_id": node_id, "token": token, "lease_timeout_s": rt.settings.lease_timeout_s}


@router.post("/hello", responses=wire.errors(404))
def hello(rt: Rt, who: Who, reg: svc.Registration) -> dict[str, Any]:
    node_id = svc.hello(rt.db, who, reg, burn_in=rt.settings.burn_in)
    rt.leases.renew(node_id, now(), None)
    rt.wakeups.wake_nodes([node_id])  # it may have assigned attempts to pick up again
    rt.wakeups.wake_scheduler()
    return {"node_id": node_id, "lease_timeout_s": rt.settings.lease_timeout_s}


# a finite reading: these land in float columns flushed for the whole fleet in one batch, so
# one bad value from one agent must be refused here, not fail every node's flush
Reading = Annotated[float | None, Field(None, ge=-1e9, le=1e9, allow_inf_nan=False)]


class GpuTelemetry(BaseModel):
    """One GPU's latest readings; other keys (e.g. energy counters) pass through."""

    model_config = ConfigDict(extra="allow")
    index: int = Field(ge=0, le=svc.MAX_GPU_INDEX)
    utilization_pct: Reading = None
    memory_used_mb: Reading = None
    temperature_c: Reading = None
    power_w: Reading = None


class Heartbeat(BaseModel):
    gpus: list[GpuTelemetry] = Field(default_factory=list)
    attempts: list[Annotated[str, Field(max_length=40)]] = Field(
        default_factory=list
    )  # attempts the agent is running
    health: list[dict[str, Any]] = Field(default_factory=list)  # health readings per GPU index


@router.post("/heartbeat")
async def heartbeat(rt: Rt, who: Who, hb: Heartbeat) -> dict[str, Any]:
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
    fingerprint = json.dumps(hb.health, sort_keys=True) if hb.health else ""
    if hb.health and rt.health_seen.get(who.node_id) != fingerprint:
        stopped: int = await run_in_threadpool(apply_health, rt.db, who.node_id, hb.health)
        rt.health_seen[who.node_id] = fingerprint
        if stopped:
            rt.wakeups.wake_scheduler()  # attempts on a failed GPU were re-queued
    stop = (
        await run_in_threadpool(svc.check_reported, rt.db, who, hb.attempts) if hb.attempts else []
    )
    return {"stop": stop, "lease_timeout_s": rt.settings.lease_timeout_s}


@router.get("/work")
async def work(rt: Rt, who: Who, wait: float = Query(20.0, ge=0, le=60)) -> dict[str, Any]:
    """Long-poll for attempts to start or stop; answers at once when there are any."""
    if who.node_id is None:
        raise Forbidden("only an agent's own token may ask for work")
    wk, node = rt.wakeups, who.node_id
    nothing: dict[str, Any] = {"start": [], "stop": []}
    event = wk.node_event(node)
    event.clear()
    if node not in wk.quiet:
        found = await run_in_threadpool(svc.work_for, rt.db, who, rt.settings.max_log_bytes)
        if found["start"] or found["stop"] or wait == 0 or wk.closing:
            return found
        wk.quiet.add(node)
    try:
        # a little jitter keeps a fleet that started together from re-polling in step
        await asyncio.wait_for(event.wait(), timeout=wait * random.uniform(0.8, 1.0))
    except TimeoutError:
        return nothing
    if wk.closing:
        return nothing
    found = await run_in_threadpool(svc.work_for, rt.db, who, rt.settings.max_log_bytes)
    if not (found["start"] or found["stop"]):
        wk.quiet.add(node)
    return found


@router.post("/attempts/{attempt_id}/started", responses=wire.errors(409))
def started(rt: Rt, who: Who, attempt_id: str, rep: svc.Report) -> dict[str, str]:
    svc.attempt_started(rt.db, who, attempt_id, rep)
    return {"status": "ok"}


@router.post("/attempts/{attempt_id}/logs", responses=wire.errors(409, 413))
def logs(rt: Rt, who: Who, attempt_id: str, rep: svc.LogReport) -> dict[str, Any]:
    """Store output; ``truncated`` once the attempt's output cap is reached (send no more)."""
    truncated = svc.append_logs(rt.db, who, attempt_id, rep, rt.settings.max_log_bytes)
    return {"status": "ok", "truncated": truncated}


@router.post("/attempts/{attempt_id}/finished", responses=wire.errors(409))
def finished(rt: Rt, who: Who, attempt_id: str, rep: svc.FinishReport) -> dict[str, str]:
    svc.attempt_finished(rt.db, who, attempt_id, rep)
    rt.wakeups.wake_scheduler()
    return {"status": "ok"}


@router.get(
    "/blobs/{digest}",
    response_class=Response,
    responses={
        200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}}}
    },
)
def blob(rt: Rt, who: Who, digest: str) -> Response:
    return Response(svc.read_blob(rt.db, who, digest), media_type="application/gzip")
