"""The simulator's view of the live network: its fleet and job history as a trace."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gpunet import wire
from gpunet.api.deps import Rt, Who
from gpunet.services.sim_export import export
from gpunet.wire import resources as R

router = APIRouter(prefix="/v1/sim", tags=["sim"], responses=wire.AUTHENTICATED)


@router.get("/export", response_model=R.SimExport)
def sim_export(rt: Rt, who: Who) -> dict[str, Any]:
    """The fleet in service and every finished job that ran, for ``gpunet sim export`` (admin)."""
    return export(rt.db, who)
