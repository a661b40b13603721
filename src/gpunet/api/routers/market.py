"""The market: prices, credits, balances, quotas, the ledger check and statements.

Amounts travel as decimal strings (never JSON floats)."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from gpunet import wire
from gpunet.api.deps import Rt, Who
from gpunet.core.ledger import parse_amount
from gpunet.services import market as svc
from gpunet.services import offers as offers_svc
from gpunet.services import reputation as rep_svc
from gpunet.wire import INT32_MAX
from gpunet.wire import resources as R

# an account name, as given in a query
AccountQuery = Annotated[str | None, Query(max_length=200)]

router = APIRouter(prefix="/v1", tags=["market"], responses=wire.AUTHENTICATED)


def _amount(value: str | None, field: str) -> Decimal | None:
    return None if value is None else parse_amount(value, field)


# a decimal string: 14 digits, a point and 6 decimals fit in 40 characters with room to spare
Amount = Annotated[str, Field(max_length=40, description='a decimal string, e.g. "1.5"')]


class PriceRequest(BaseModel):
    gpu_id: str | None = Field(None, max_length=80)
    node_id: str | None = Field(None, max_length=40)
    price: Amount | None = Field(None, description="credits per GPU-hour; null: free")
    min_interruptible: Amount | None = None


@router.put("/prices", responses=wire.errors(404), response_model=list[R.Price])
def set_price(rt: Rt, who: Who, req: PriceRequest) -> list[dict[str, Any]]:
    return svc.set_price(
        rt.db,
        who,
        _amount(req.price, "price"),
        gpu_id=req.gpu_id,
        node_id=req.node_id,
        min_interruptible=_amount(req.min_interruptible, "min_interruptible"),
    )


@router.get("/prices/suggest", responses=wire.errors(404), response_model=R.PriceSuggestion)
def suggest(
    rt: Rt,
    who: Who,
    gpu_id: str = Query(max_length=80),
    tier: str | None = Query(None, max_length=20),
) -> dict[str, Any]:
    return svc.suggest(rt.db, who, gpu_id, tier)


class GrantRequest(BaseModel):
    account: str = Field(min_length=1, max_length=200)
    amount: Amount
    memo: str = Field("", max_length=2000)


@router.post("/credits/grant", status_code=201, responses=wire.errors(404), response_model=R.Grant)
def grant(rt: Rt, who: Who, req: GrantRequest) -> dict[str, Any]:
    amount = parse_amount(req.amount)
    out = svc.grant_credits(rt.db, who, req.account, amount, req.memo)
    rt.wakeups.wake_scheduler()  # jobs waiting for credits may start now
    return dict(out)


@router.get("/balance", responses=wire.errors(404), response_model=R.Balance)
def balance(rt: Rt, who: Who, account: AccountQuery = None) -> dict[str, Any]:
    return svc.get_balance(rt.db, who, account)


class QuotaRequest(BaseModel):
    account: str = Field(min_length=1, max_length=200)
    max_concurrent_gpus: int | None = Field(None, ge=0, le=INT32_MAX)
    monthly_spend: Amount | None = None


@router.put("/quotas", responses=wire.errors(404), response_model=R.Balance)
def set_quota(rt: Rt, who: Who, req: QuotaRequest) -> dict[str, Any]:
    out = svc.set_quota(
        rt.db,
        who,
        req.account,
        req.max_concurrent_gpus,
        _amount(req.monthly_spend, "monthly_spend"),
    )
    rt.wakeups.wake_scheduler()
    return out


@router.get("/ledger/verify", response_model=R.LedgerCheck)
def verify(rt: Rt, who: Who) -> dict[str, Any]:
    problems = svc.verify_ledger(rt.db, who)
    return {"ok": not problems, "problems": problems}


@router.get("/earnings", responses=wire.errors(404), response_model=R.Earnings)
def earnings(rt: Rt, who: Who, account: AccountQuery = None) -> dict[str, Any]:
    return svc.earnings_statement(rt.db, who, account)


@router.get("/spend", responses=wire.errors(404), response_model=R.Spend)
def spend(rt: Rt, who: Who, account: AccountQuery = None) -> dict[str, Any]:
    return svc.spend_statement(rt.db, who, account)


@router.get("/offers", response_model=list[R.Offer])
def offers(
    rt: Rt,
    who: Who,
    q: str | None = Query(None, max_length=1000),
    sort: str | None = Query(None, max_length=40),
) -> list[dict[str, Any]]:
    """Every GPU on the market, from every owner, with its node's reliability; ``q`` is a
    query such as ``gpu=A100-80GB memory>=40 price<=1.5`` and ``sort`` a field (``-`` first:
    descending)."""
    return offers_svc.list_offers(rt.db, who, q, sort)


@router.get("/nodes/{node_id}/reputation", response_model=R.Reputation)
def reputation(rt: Rt, who: Who, node_id: str) -> dict[str, Any]:
    return rep_svc.node_reputation(rt.db, who, node_id)
