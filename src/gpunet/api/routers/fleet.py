"""The fleet: nodes and GPUs with live telemetry; who the caller is."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gpunet import wire
from gpunet.api.deps import Rt, Who
from gpunet.services.accounts import account_names
from gpunet.services.auth import Role
from gpunet.services.fleet import list_gpus, list_nodes
from gpunet.wire import resources as R

router = APIRouter(prefix="/v1", tags=["fleet"], responses=wire.AUTHENTICATED)


@router.get("/nodes", response_model=list[R.Node])
def nodes(rt: Rt, who: Who) -> list[dict[str, Any]]:
    with rt.db.sessions() as s:
        out = list_nodes(s)
    if who.role is Role.PROVIDER:
        out = [n for n in out if n["account_id"] == who.account_id]
    return out


@router.get("/gpus", response_model=list[R.Gpu])
def gpus(rt: Rt, who: Who) -> list[dict[str, Any]]:
    with rt.db.sessions() as s:
        out = list_gpus(s)
        if who.role is Role.PROVIDER:
            mine = {n["id"] for n in list_nodes(s) if n["account_id"] == who.account_id}
            out = [g for g in out if g["node_id"] in mine]
    if not who.is_admin:
        for g in out:
            g["attempt_id"] = None  # which attempt holds a GPU is not a tenant's business
    return out


@router.get("/whoami", response_model=R.Whoami)
def whoami(rt: Rt, who: Who) -> dict[str, Any]:
    return {
        "role": who.role.value,
        "account_id": who.account_id,
        "account": account_names(rt.db, {who.account_id}).get(who.account_id),
        "node_id": who.node_id,
    }
