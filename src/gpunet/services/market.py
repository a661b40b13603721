"""Market use cases: prices, credits, balances, quotas, ledger verification, statements."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from gpunet.catalog import catalog
from gpunet.core import ledger as L
from gpunet.core.energy import gpu_kwh_price, site_from_labels
from gpunet.core.pricing import energy_cost_per_hour, reference_prices, suggest_price
from gpunet.core.statements import ChargeView, earnings, spend
from gpunet.errors import Forbidden, NotFound, ValidationFailed
from gpunet.services.accounts import account_by_name
from gpunet.services.auth import Principal, Role
from gpunet.services.billing import balance, post
from gpunet.store.db import Database
from gpunet.store.tables import (
    Account,
    AccountQuota,
    AttemptCharge,
    Gpu,
    GpuBenchmark,
    LedgerPosting,
    LedgerTxn,
    Node,
)
from gpunet.util import new_id


def _m(amount: Decimal) -> str:
    """An amount as JSON carries it: a decimal string with six places."""
    return str(L.q(amount))


def _owned_gpus(s: Session, who: Principal, gpu_id: str | None, node_id: str | None) -> list[Gpu]:
    if (gpu_id is None) == (node_id is None):
        raise ValidationFailed("target", "give exactly one of a GPU id or a node id")
    q = select(Gpu).where(Gpu.id == gpu_id) if gpu_id else select(Gpu).where(Gpu.node_id == node_id)
    gpus = list(s.scalars(q.order_by(Gpu.node_id, Gpu.index)))
    field = "gpu_id" if gpu_id else "node_id"
    if not gpus:
        raise NotFound(f"no {field.replace('_id', '')} {gpu_id or node_id!r}", field=field)
    owners = set(s.scalars(select(Node.account_id).where(Node.id.in_({g.node_id for g in gpus}))))
    if not who.is_admin and owners != {who.account_id}:
        # another owner's hardware answers like a missing one
        raise NotFound(f"no {field.replace('_id', '')} {gpu_id or node_id!r}", field=field)
    return gpus


def set_price(
    db: Database,
    who: Principal,
    price: Decimal | None,
    *,
    gpu_id: str | None = None,
    node_id: str | None = None,
    min_interruptible: Decimal | None = None,
) -> list[dict[str, Any]]:
    """An owner prices a GPU or every GPU of a node (None: free). Running attempts keep the
    price they started with."""
    who.require(Role.PROVIDER)
    if price is not None and price < 0:
        raise ValidationFailed("price", "must not be negative")
    if min_interruptible is not None:
        if min_interruptible < 0:
            raise ValidationFailed("min_interruptible", "must not be negative")
        if price is not None and min_interruptible > price:
            raise ValidationFailed("min_interruptible", "must not exceed the on-demand price")
    with db.transaction() as s:
        gpus = _owned_gpus(s, who, gpu_id, node_id)
        for g in gpus:
            g.price_per_hour = price
            g.min_interruptible_price = min_interruptible
        return [_price_dict(g) for g in gpus]


def _price_dict(g: Gpu) -> dict[str, Any]:
    return {
        "gpu_id": g.id,
        "model": g.model,
        "price_per_hour": None if g.price_per_hour is None else str(g.price_per_hour),
        "min_interruptible_price": None
        if g.min_interruptible_price is None
        else str(g.min_interruptible_price),
    }


def _kwh_prices(s: Session, node_ids: set[str]) -> dict[str, Decimal]:
    """Node id -> what a GPU's kilowatt-hour costs at its site (core.energy.gpu_kwh_price)."""
    rows = s.execute(select(Node.id, Node.labels).where(Node.id.in_(node_ids)))
    return {nid: gpu_kwh_price(site_from_labels(dict(labels or {}))) for nid, labels in rows}


def suggest(db: Database, who: Principal, gpu_id: str, tier: str | None) -> dict[str, Any]:
    with db.sessions() as s:
        (g,) = _owned_gpus(s, who, gpu_id, None)
        spec = catalog().get(g.model)
        # the planned power (core.power): a suggestion does not swing with each reading
        power = g.planning_power_w or (spec.tdp_w if spec else None)
        energy = energy_cost_per_hour(power, _kwh_prices(s, {g.node_id})[g.node_id])
        # the GPU's own standing: its latest benchmark score and its tier (unless asked for one)
        score = s.scalar(
            select(GpuBenchmark.score_pct)
            .where(GpuBenchmark.gpu_id == g.id, GpuBenchmark.score_pct.is_not(None))
            .order_by(GpuBenchmark.id.desc())
            .limit(1)
        )
        ratio = Decimal(str(score)) / 100 if score else Decimal(1)
        sug = suggest_price(
            g.model,
            references=reference_prices(),
            energy_cost=energy,
            benchmark_ratio=ratio,
            tier=tier or g.tier,
        )
    return {
        "gpu_id": gpu_id,
        "model": g.model,
        "suggested_price": str(sug.price),
        "reference_price": None if sug.reference is None else str(sug.reference),
        "energy_cost_per_hour": str(sug.energy_cost),
        "tier": sug.tier,
        "explanation": sug.explanation,
    }


def _account_by_name(s: Session, name: str) -> Account:
    return account_by_name(s, name)


def grant_credits(db: Database, who: Principal, account: str, amount: Decimal, memo: str) -> Any:
    who.require(Role.ADMIN)
    with db.transaction() as s:
        acct = _account_by_name(s, account)
        post(s, L.grant(acct.id, amount, f"grant:{new_id('g')}", memo))
        return {"account": account, "account_id": acct.id, "balance": _m(_wallet(s, acct.id))}


def _wallet(s: Session, account_id: str) -> Decimal:
    return balance(s, L.wallet(account_id))


def _held(s: Session, account_id: str) -> Decimal:
    open_ids = list(
        s.scalars(
            select(AttemptCharge.attempt_id).where(
                AttemptCharge.payer_account_id == account_id, AttemptCharge.settled_at.is_(None)
            )
        )
    )
    return sum((balance(s, L.hold_account(a)) for a in open_ids), L.ZERO)


def _target(s: Session, who: Principal, account: str | None) -> Account:
    if account is None:
        acct = s.get(Account, who.account_id)
        assert acct is not None
        return acct
    acct = _account_by_name(s, account)
    if not who.is_admin and acct.id != who.account_id:
        raise Forbidden("only an admin may see another account")
    return acct


def get_balance(db: Database, who: Principal, account: str | None) -> dict[str, Any]:
    with db.sessions() as s:
        acct = _target(s, who, account)
        quota = s.get(AccountQuota, acct.id)
        return {
            "account": acct.name,
            "account_id": acct.id,
            "balance": _m(_wallet(s, acct.id)),
            "held": _m(_held(s, acct.id)),
            "max_concurrent_gpus": quota.max_concurrent_gpus if quota else None,
            "monthly_spend": None
            if quota is None or quota.monthly_spend is None
            else str(quota.monthly_spend),
        }


def set_quota(
    db: Database,
    who: Principal,
    account: str,
    max_concurrent_gpus: int | None,
    monthly_spend: Decimal | None,
) -> dict[str, Any]:
    who.require(Role.ADMIN)
    if max_concurrent_gpus is not None and max_concurrent_gpus < 0:
        raise ValidationFailed("max_concurrent_gpus", "must not be negative")
    if monthly_spend is not None and monthly_spend < 0:
        raise ValidationFailed("monthly_spend", "must not be negative")
    with db.transaction() as s:
        acct = _account_by_name(s, account)
        quota = s.get(AccountQuota, acct.id)
        if quota is None:
            quota = AccountQuota(account_id=acct.id)
            s.add(quota)
        quota.max_concurrent_gpus = max_concurrent_gpus
        quota.monthly_spend = monthly_spend
    return get_balance(db, who, account)


def verify_ledger(db: Database, who: Principal) -> list[str]:
    """Every broken ledger invariant (empty: sound), checked from the stored postings."""
    who.require(Role.ADMIN)
    with db.sessions() as s:
        totals = dict(
            s.execute(
                select(LedgerTxn.ref, func.coalesce(func.sum(LedgerPosting.amount), 0))
                .outerjoin(LedgerPosting, LedgerPosting.txn_id == LedgerTxn.id)
                .group_by(LedgerTxn.ref)
            ).all()
        )
        bals = dict(
            s.execute(
                select(LedgerPosting.account, func.sum(LedgerPosting.amount)).group_by(
                    LedgerPosting.account
                )
            ).all()
        )
        closed = [
            L.hold_account(a)
            for a in s.scalars(
                select(AttemptCharge.attempt_id).where(AttemptCharge.settled_at.is_not(None))
            )
        ]
        charges = list(s.scalars(select(AttemptCharge)))
    problems = L.verify(
        {r: Decimal(t) for r, t in totals.items()},
        {a: Decimal(b) for a, b in bals.items()},
        closed,
    )
    for c in charges:
        if c.owner_share + c.fee != c.charged:
            problems.append(f"attempt {c.attempt_id}: owner share + fee != charged")
    return problems


def _charges(s: Session, **where: str) -> list[ChargeView]:
    q = select(AttemptCharge).order_by(AttemptCharge.created_at)
    for col, val in where.items():
        q = q.where(getattr(AttemptCharge, col) == val)
    return [
        ChargeView(
            attempt_id=c.attempt_id,
            job_id=c.job_id,
            gpu_prices={g: Decimal(p) for g, p in c.gpu_prices.items()},
            billed_seconds=c.billed_seconds,
            charged=c.charged,
            owner_share=c.owner_share,
            fee=c.fee,
            outcome=c.outcome,
        )
        for c in s.scalars(q)
    ]


def earnings_statement(db: Database, who: Principal, account: str | None) -> dict[str, Any]:
    with db.sessions() as s:
        acct = _target(s, who, account)
        charges = _charges(s, owner_account_id=acct.id)
        gids = {g for c in charges for g in c.gpu_prices}
        power: dict[str, float | None] = {}
        node_of: dict[str, str] = {}
        for gid, node_id, model, pw in s.execute(
            select(Gpu.id, Gpu.node_id, Gpu.model, Gpu.power_w).where(Gpu.id.in_(gids))
        ):
            spec = catalog().get(model)
            power[gid] = pw or (spec.tdp_w if spec else None)
            node_of[gid] = node_id
        by_node = _kwh_prices(s, set(node_of.values()))
        rows = earnings(charges, power, {gid: by_node[nid] for gid, nid in node_of.items()})
        return {
            "account": acct.name,
            "gpus": rows,
            "total_revenue": _m(sum((c.owner_share for c in charges), L.ZERO)),
            "balance": _m(_wallet(s, acct.id)),
        }


def spend_statement(db: Database, who: Principal, account: str | None) -> dict[str, Any]:
    with db.sessions() as s:
        acct = _target(s, who, account)
        charges = _charges(s, payer_account_id=acct.id)
        return {
            "account": acct.name,
            "jobs": spend(charges),
            "total_charged": _m(sum((c.charged for c in charges), L.ZERO)),
            "held": _m(_held(s, acct.id)),
            "balance": _m(_wallet(s, acct.id)),
        }
