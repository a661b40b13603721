"""The fleet: nodes and GPUs with live telemetry; tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from gpunet import wire
from gpunet.api.deps import Rt, Who
from gpunet.services.auth import Role, issue_token
from gpunet.services.fleet import list_gpus, list_nodes

router = APIRouter(prefix="/v1", tags=["fleet"], responses=wire.AUTHENTICATED)


@router.get("/nodes")
def nodes(rt: Rt, who: Who) -> list[dict[str, Any]]:
    with rt.db.sessions() as s:
        out = list_nodes(s)
    if who.role is Role.PROVIDER:
        out = [n for n in out if n["account_id"] == who.account_id]
    return out


@router.get("/gpus")
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


class TokenRequest(BaseModel):
    role: Role
    account: str = Field(min_length=1, max_length=200)
    name: str = Field("", max_length=200)


@router.post("/tokens", status_code=201)
def create_token(rt: Rt, who: Who, req: TokenRequest) -> dict[str, Any]:
    """Issue a token (admin only). Provider tokens are join tokens for agents."""
    who.require(Role.ADMIN)
    if req.role is Role.AGENT:
        from gpunet.errors import ValidationFailed

        raise ValidationFailed("role", "agent tokens are issued at registration")
    with rt.db.transaction() as s:
        token = issue_token(s, req.role, req.account, name=req.name)
    return {"token": token, "role": req.role.value, "account": req.account}


@router.get("/whoami")
def whoami(who: Who) -> dict[str, Any]:
    return {"role": who.role.value, "account_id": who.account_id, "node_id": who.node_id}
