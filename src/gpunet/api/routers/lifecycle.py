"""GPU lifecycle: operator moves and a GPU's timeline."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from gpunet.api.deps import Rt, Who
from gpunet.services import lifecycle as svc

router = APIRouter(prefix="/v1/gpus", tags=["gpus"])


class Action(BaseModel):
    action: str = Field(description="drain | activate | maintain | retire | recycle")
    reason: str = Field(min_length=1, max_length=2000)


@router.post("/{gpu_id:path}/lifecycle")
def act(rt: Rt, who: Who, gpu_id: str, body: Action) -> dict[str, Any]:
    """Move a GPU through its lifecycle (admin, or the provider that owns its node)."""
    out = svc.operate(rt.db, who, gpu_id, body.action, body.reason)
    rt.wakeups.wake_scheduler()  # an activated GPU may take queued work
    return out


@router.get("/{gpu_id:path}/timeline")
def show(rt: Rt, who: Who, gpu_id: str) -> dict[str, Any]:
    """The GPU now, its lifecycle and health events, and the attempts it ran."""
    return svc.timeline(rt.db, who, gpu_id)
