"""GPU lifecycle: operator moves and a GPU's timeline."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from gpunet import wire
from gpunet.api.deps import Rt, Who
from gpunet.services import energy, tco, tiers
from gpunet.services import lifecycle as svc
from gpunet.services.accounts import account_names
from gpunet.services.auth import Role
from gpunet.wire.agent import BenchmarkReport, BenchmarkScore

router = APIRouter(prefix="/v1/gpus", tags=["gpus"], responses=wire.AUTHENTICATED)


class Action(BaseModel):
    action: str = Field(max_length=20, description="drain | activate | maintain | retire | recycle")
    reason: str = Field(min_length=1, max_length=2000)


@router.post("/{gpu_id:path}/lifecycle", responses=wire.errors(409))
def act(rt: Rt, who: Who, gpu_id: str, body: Action) -> dict[str, Any]:
    """Move a GPU through its lifecycle (admin, or the provider that owns its node)."""
    out = svc.operate(rt.db, who, gpu_id, body.action, body.reason)
    rt.wakeups.wake_scheduler()  # an activated GPU may take queued work
    return out


@router.get("/{gpu_id:path}/timeline")
def show(rt: Rt, who: Who, gpu_id: str) -> dict[str, Any]:
    """The GPU now, its lifecycle and health events, and the attempts it ran."""
    out = svc.timeline(rt.db, who, gpu_id)
    out["benchmarks"] = tiers.benchmarks_of(rt.db, out["id"])
    out["energy"] = energy.gpu_energy(rt.db, out["id"])
    out["tco"] = next((r for r in tco.report(rt.db, who)["gpus"] if r["gpu_id"] == out["id"]), None)
    return out


agent_router = APIRouter(prefix="/v1/agent", tags=["agent"], responses=wire.AUTHENTICATED)


@agent_router.post("/benchmarks", response_model=list[BenchmarkScore])
def benchmarks(rt: Rt, who: Who, rep: BenchmarkReport) -> list[dict[str, Any]]:
    """An agent reports benchmark results; answers each GPU's score."""
    return tiers.record(rt.db, who, rep)


tiers_router = APIRouter(prefix="/v1/tiers", tags=["gpus"], responses=wire.AUTHENTICATED)


@tiers_router.get("")
def tier_proposals(rt: Rt, who: Who) -> list[dict[str, Any]]:
    """The tier rule's proposal for every GPU in service, with its reasons (admin)."""
    who.require(Role.ADMIN)
    return tiers.proposals(rt.db)


class ApplyTiers(BaseModel):
    gpu_ids: list[Annotated[str, Field(max_length=80)]] | None = None  # None: every proposed move


@tiers_router.post("/apply", responses=wire.errors(404, 409))
def apply_tiers(rt: Rt, who: Who, body: ApplyTiers) -> list[dict[str, Any]]:
    """Apply the proposed moves (admin); answers the moves applied."""
    out = tiers.apply(rt.db, who, body.gpu_ids)
    rt.wakeups.wake_scheduler()
    return out


energy_router = APIRouter(prefix="/v1/energy", tags=["gpus"], responses=wire.AUTHENTICATED)


@energy_router.get("")
def energy_by_owner(rt: Rt, who: Who) -> list[dict[str, Any]]:
    """GPU and facility energy, CO2e and cost per owner and per GPU (providers: their own)."""
    rows = energy.by_owner(rt.db, who)
    names = account_names(rt.db, {r["account_id"] for r in rows})
    return [{"account": names.get(r["account_id"]), **r} for r in rows]


economics_router = APIRouter(prefix="/v1", tags=["gpus"], responses=wire.AUTHENTICATED)


@economics_router.post("/gpus-purchases", responses=wire.errors(404))
def purchases(rt: Rt, who: Who, body: tco.Purchase) -> dict[str, Any]:
    """Record the purchase price and date of a GPU, or of every GPU of a model you own."""
    return {"gpu_ids": tco.record_purchase(rt.db, who, body)}


@economics_router.get("/reports/tco")
def tco_report(rt: Rt, who: Who) -> dict[str, Any]:
    """Cost of ownership per GPU and for the fleet, with a recommendation and its arithmetic."""
    return tco.report(rt.db, who)
