"""Tokens (create, list, revoke) and accounts (create, list)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from gpunet import wire
from gpunet.api.deps import Rt, Who
from gpunet.services import accounts as accounts_svc
from gpunet.services import tokens as svc
from gpunet.services.auth import Role
from gpunet.wire import resources as R

router = APIRouter(prefix="/v1", tags=["tokens"], responses=wire.AUTHENTICATED)


class TokenRequest(BaseModel):
    role: Role
    account: str = Field(min_length=1, max_length=200)
    name: str = Field("", max_length=200)
    expires: str | None = Field(
        None, max_length=40, description="lifetime such as 90m, 12h, 30d; null: never"
    )
    uses: wire.Int32 | None = Field(None, description="agents a join (provider) token may register")


@router.post("/tokens", status_code=201, responses=wire.errors(404), response_model=R.TokenCreated)
def create_token(rt: Rt, who: Who, req: TokenRequest) -> dict[str, Any]:
    """Issue a token (admin only); the answer is the only time its secret is shown.
    Provider tokens are join tokens for agents."""
    return svc.create_token(
        rt.db, who, req.role, req.account, name=req.name, expires=req.expires, uses=req.uses
    )


@router.get("/tokens", responses=wire.errors(404), response_model=list[R.Token])
def list_tokens(
    rt: Rt, who: Who, account: Annotated[str | None, Query(max_length=200)] = None
) -> list[dict[str, Any]]:
    """Tokens without their secrets: every one (an admin) or the caller's account's."""
    return svc.list_tokens(rt.db, who, account)


@router.delete("/tokens/{token_id}", responses=wire.errors(404, 409), response_model=R.Token)
def revoke_token(rt: Rt, who: Who, token_id: str) -> dict[str, Any]:
    """Revoke a token (an admin any, an account its own); refused from the next request."""
    return svc.revoke_token(rt.db, rt.auth, who, token_id)


class AccountRequest(BaseModel):
    name: str = Field(min_length=1, max_length=200)


@router.post("/accounts", status_code=201, responses=wire.errors(409), response_model=R.Account)
def create_account(rt: Rt, who: Who, req: AccountRequest) -> dict[str, Any]:
    return accounts_svc.create_account(rt.db, who, req.name)


@router.get("/accounts", response_model=list[R.Account])
def list_accounts(rt: Rt, who: Who) -> list[dict[str, Any]]:
    """Accounts with the roles of their live tokens and their node counts."""
    return accounts_svc.list_accounts(rt.db, who)
