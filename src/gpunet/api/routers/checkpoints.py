"""Checkpoints: the agent's upload (manifest, objects, commit) and restore; the user's list."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from gpunet import wire
from gpunet.api.deps import Rt, Who
from gpunet.errors import NotFound, StoreUnavailable, ValidationFailed
from gpunet.services import checkpoints as svc
from gpunet.wire import INT64_MAX
from gpunet.wire import resources as R
from gpunet.wire.agent import (
    Accepted,
    CheckpointCommitted,
    CheckpointCreated,
    CheckpointManifest,
    Report,
)

log = logging.getLogger("gpunet.checkpoints")

agent_router = APIRouter(prefix="/v1/agent", tags=["agent"], responses=wire.AUTHENTICATED)
router = APIRouter(prefix="/v1", tags=["jobs"], responses=wire.AUTHENTICATED)


def limits(rt: Rt) -> svc.Limits:
    s = rt.settings
    return svc.Limits(max_files=s.checkpoint_max_files, quota_bytes=s.checkpoint_quota_bytes)


@agent_router.post(
    "/attempts/{attempt_id}/checkpoints",
    status_code=201,
    response_model=CheckpointCreated,
    responses=wire.errors(404, 409, 429, 503),
)
def create(rt: Rt, who: Who, attempt_id: str, man: CheckpointManifest) -> CheckpointCreated:
    """Start a checkpoint of the attempt's directory: answers the objects to upload."""
    ck, missing = svc.create(rt.db, who, attempt_id, man, rt.checkpoints, limits(rt))
    return CheckpointCreated(checkpoint_id=ck, missing=missing)


@agent_router.put(
    "/attempts/{attempt_id}/checkpoints/{checkpoint_id}/objects/{digest}",
    response_model=Accepted,
    responses=wire.errors(404, 409, 413, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    },
)
async def put_object(
    rt: Rt,
    who: Who,
    attempt_id: str,
    checkpoint_id: str,
    digest: str,
    request: Request,
    fencing_token: int = Query(..., ge=0, le=INT64_MAX),
) -> Accepted:
    """Upload one object of a pending checkpoint, streamed: kept only if it hashes to
    ``digest`` and has the size its manifest gave."""
    key, size = await run_in_threadpool(
        svc.object_target, rt.db, who, attempt_id, checkpoint_id, digest, fencing_token
    )
    try:
        await rt.checkpoints.put(key, digest, request.stream(), size)
    except ClientDisconnect:
        raise ValidationFailed("body", "the upload was cut short") from None
    return Accepted()


@agent_router.post(
    "/attempts/{attempt_id}/checkpoints/{checkpoint_id}/commit",
    response_model=CheckpointCommitted,
    responses=wire.errors(404, 409, 503),
)
def commit(
    rt: Rt, who: Who, attempt_id: str, checkpoint_id: str, rep: Report
) -> CheckpointCommitted:
    """Make the checkpoint complete (every object is stored); older ones past the job's
    ``checkpoint.keep`` go, and so do objects nothing refers to any more."""
    ck, pruned = svc.commit(
        rt.db, who, attempt_id, checkpoint_id, rep.fencing_token, rt.checkpoints
    )
    if pruned:
        try:
            svc.collect_objects(rt.db, rt.checkpoints, rt.settings.checkpoint_object_grace_s)
        except (OSError, StoreUnavailable) as exc:  # the collection loop tries again later
            log.warning("checkpoint objects not collected: %s", exc)
    return CheckpointCommitted(checkpoint_id=ck.id, files=ck.files, size=ck.size)


@agent_router.get(
    "/checkpoints/objects/{digest}",
    response_class=StreamingResponse,
    responses={
        **wire.errors(404, 503),
        200: {"content": {"application/octet-stream": {"schema": {"type": "string"}}}},
    },
)
def get_object(rt: Rt, who: Who, digest: str) -> StreamingResponse:
    """Download an object of a complete checkpoint of a job this node runs, streamed."""
    key = svc.readable(rt.db, who, digest)
    try:
        chunks = rt.checkpoints.open(key)
    except FileNotFoundError:
        raise NotFound(f"checkpoint object {digest!r} is not stored", field="digest") from None
    return StreamingResponse(chunks, media_type="application/octet-stream")


@router.get("/jobs/{job_id}/checkpoints", response_model=list[R.Checkpoint])
def checkpoints(rt: Rt, who: Who, job_id: str) -> list[dict[str, Any]]:
    """The job's complete checkpoints, newest first."""
    return svc.listing(rt.db, who, job_id)
