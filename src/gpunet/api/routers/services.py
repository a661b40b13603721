"""Services: deploy, list, show, scale, stop; the gateway at /services/NAME/...; the
OpenAI-compatible routes, forwarded by the request's ``model``."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from gpunet import wire
from gpunet.api.deps import Rt, Who
from gpunet.core.jobspec import JobSpec, parse_spec
from gpunet.errors import ValidationFailed
from gpunet.services import serving as svc
from gpunet.services.accounts import account_names
from gpunet.services.gateway import forwarded_headers
from gpunet.services.serving import ReplicaInfo
from gpunet.store.tables import ServiceRow
from gpunet.util import iso
from gpunet.wire import services as W

router = APIRouter(tags=["services"], responses=wire.AUTHENTICATED)


def _summary(
    rt: Rt, row: ServiceRow, reps: list[ReplicaInfo] | None = None, account: str | None = None
) -> dict[str, Any]:
    route = rt.gateway.by_id.get(row.id)
    if reps is not None:
        ready = sum(1 for r in reps if r.ready and r.state == "running")
        starting = len(reps) - ready
    else:
        ready = len(route.replicas) if route else 0
        starting = route.starting if route else 0
    return {
        "id": row.id,
        "name": row.name,
        "account": account,
        "state": row.state,
        "model": row.model,
        "min_replicas": row.min_replicas,
        "max_replicas": row.max_replicas,
        "desired": row.desired,
        "ready": ready,
        "starting": starting,
        "path": f"/services/{row.name}/",
        "reason": row.reason,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }


@router.post(
    "/v1/services",
    status_code=201,
    openapi_extra=wire.json_body(JobSpec),
    responses=wire.errors(409),
    response_model=W.ServiceSummary,
)
async def deploy(rt: Rt, who: Who, body: dict[str, Any]) -> dict[str, Any]:
    """Deploy a service: a job spec with a ``service:`` block. Its replicas start at once
    (``replicas.min`` of them; with 0, at the first request)."""
    spec = parse_spec(body)
    if spec.service is None:
        raise ValidationFailed("service", "a service needs a service: block (docs/services.md)")
    row = await run_in_threadpool(svc.deploy, rt.db, who, spec)
    await rt.gateway.refresh()  # this replica routes to it from the answer on
    rt.services_changed()
    return _summary(rt, row, [])


@router.get("/v1/services", response_model=list[W.ServiceSummary])
async def list_services(rt: Rt, who: Who, stopped: bool = False) -> list[dict[str, Any]]:
    """The caller's services (an admin: everyone's); ``stopped``: include stopped ones."""
    rows = await run_in_threadpool(svc.list_services, rt.db, who, stopped=stopped)
    names = account_names(rt.db, {r.account_id for r in rows})
    return [_summary(rt, r, account=names.get(r.account_id)) for r in rows]


@router.get("/v1/services/{name}", response_model=W.ServiceDetail, responses=wire.errors(404))
async def show(rt: Rt, who: Who, name: str) -> dict[str, Any]:
    """A service with its replicas, its latest decisions and the autoscaler's view."""
    row, reps = await run_in_threadpool(svc.get_service, rt.db, who, name)
    names = account_names(rt.db, {row.account_id})
    out = _summary(rt, row, reps, names.get(row.account_id))
    out["replicas"] = [
        {
            "job_id": r.job_id,
            "state": r.state,
            "attempt_id": r.attempt_id,
            "node_id": r.node_id,
            "ready": r.ready,
            "started_at": iso(r.started_at),
        }
        for r in reps
    ]
    out["decisions"] = list(row.decisions or [])
    d = rt.gateway.decided.get(row.id)
    route = rt.gateway.by_id.get(row.id)
    out["autoscaler"] = (
        None
        if d is None or route is None
        else {
            "inflight": rt.gateway.inflight(route),
            "stable_inflight": round(d.stable_inflight, 3),
            "panic_inflight": round(d.panic_inflight, 3),
            "panic": d.panic,
        }
    )
    out["spec"] = row.spec
    return out


@router.post(
    "/v1/services/{name}/scale", response_model=W.ServiceSummary, responses=wire.errors(404, 409)
)
async def scale(rt: Rt, who: Who, name: str, body: W.ScaleRequest) -> dict[str, Any]:
    """Change the bounds of the replica count (the autoscaler stays within them)."""
    row = await run_in_threadpool(svc.scale, rt.db, who, name, body.min, body.max)
    rt.services_changed()
    return _summary(rt, row)


@router.post(
    "/v1/services/{name}/stop", response_model=W.ServiceSummary, responses=wire.errors(404)
)
async def stop(rt: Rt, who: Who, name: str) -> dict[str, Any]:
    """Stop a service: its replicas are cancelled; ``services deploy`` starts it again."""
    row, wake = await run_in_threadpool(svc.stop, rt.db, who, name)
    rt.wakeups.wake_nodes(wake)
    await rt.gateway.refresh()
    rt.services_changed()
    return _summary(rt, row, [])


@router.post(
    "/v1/services/{name}/keys",
    status_code=201,
    response_model=W.ServiceKey,
    responses=wire.errors(404, 422),
)
async def create_key(rt: Rt, who: Who, name: str, body: W.KeyRequest) -> dict[str, Any]:
    """A service key: a token that calls this service through the gateway (and the
    OpenAI-compatible routes, for its model) and nothing else. Revoke it like any token."""
    return await run_in_threadpool(svc.create_key, rt.db, who, name, body.name, body.expires)


# ---- the OpenAI-compatible routes (the gateway itself is api/gateway_app.py) ------------
async def _forward(rt: Rt, request: Request, route: svc.Route, path: str) -> Response:
    body = await request.body()
    target = "/" + path + (f"?{request.url.query}" if request.url.query else "")
    client = request.client.host if request.client else ""
    headers = forwarded_headers(request.headers.items(), client, request.url.scheme, route.name)
    out = await rt.gateway.send(route, request.method, target, headers, body)
    resp = StreamingResponse(out.body, status_code=out.status)
    # the replica's headers as they came (a repeated Set-Cookie included)
    resp.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in out.headers]
    resp.raw_headers.append((b"x-gpunet-replica", out.replica.encode()))
    return resp


@router.get("/v1/models", tags=["services"])
async def models(rt: Rt, who: Who) -> dict[str, Any]:
    """The models the caller's services answer for (OpenAI-compatible listing)."""
    return {
        "object": "list",
        "data": [
            {"id": r.model, "object": "model", "owned_by": r.name, "created": 0}
            for r in rt.gateway.models(who)
        ],
    }


async def _by_model(rt: Rt, who: Who, request: Request, path: str) -> Response:
    raw = await request.body()
    try:
        model = json.loads(raw or b"{}").get("model")
    except (ValueError, AttributeError):
        raise ValidationFailed("body", "must be a JSON object") from None
    if not isinstance(model, str) or not model:
        raise ValidationFailed("model", "name the model (GET /v1/models lists them)")
    return await _forward(rt, request, rt.gateway.model_route(who, model), path)


@router.post("/v1/chat/completions", include_in_schema=False)
async def chat_completions(rt: Rt, who: Who, request: Request) -> Response:
    return await _by_model(rt, who, request, "v1/chat/completions")


@router.post("/v1/completions", include_in_schema=False)
async def completions(rt: Rt, who: Who, request: Request) -> Response:
    return await _by_model(rt, who, request, "v1/completions")


@router.post("/v1/embeddings", include_in_schema=False)
async def embeddings(rt: Rt, who: Who, request: Request) -> Response:
    return await _by_model(rt, who, request, "v1/embeddings")
