"""Economics: purchase prices recorded by owners, and the TCO report per GPU and fleet."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import func, select

from gpunet.catalog import catalog, resolve_model
from gpunet.core.energy import J_PER_KWH, site_from_labels
from gpunet.core.lifecycle import GONE, GpuState
from gpunet.core.tco import TcoInput, defaults, fleet_totals, market_rent, tco
from gpunet.errors import NotFound, ValidationFailed
from gpunet.services.auth import Principal, Role
from gpunet.store.db import Database
from gpunet.store.tables import Attempt, AttemptEnergy, Gpu, GpuEvent, Node
from gpunet.util import now, utc


class Purchase(BaseModel):
    gpu_id: str | None = Field(None, max_length=80)
    model: str | None = Field(None, max_length=40)  # every GPU of this model on the caller's nodes
    price: float = Field(gt=0, le=1e12, allow_inf_nan=False, description="purchase price per GPU")
    purchased_on: date


def record_purchase(db: Database, who: Principal, p: Purchase) -> list[str]:
    """Record what GPUs cost; answers the GPU ids updated."""
    who.require(Role.PROVIDER)
    if (p.gpu_id is None) == (p.model is None):
        raise ValidationFailed("gpu_id", "give either a GPU id or a model")
    at = datetime(p.purchased_on.year, p.purchased_on.month, p.purchased_on.day, tzinfo=UTC)
    if at > now():
        raise ValidationFailed("purchased_on", "cannot be in the future")
    with db.transaction() as s:
        q = select(Gpu).join(Node, Node.id == Gpu.node_id)
        if not who.is_admin:
            q = q.where(Node.account_id == who.account_id)
        if p.gpu_id is not None:
            gpus = list(s.scalars(q.where(Gpu.id == p.gpu_id)))
            if not gpus:
                raise NotFound(f"no GPU {p.gpu_id!r}", field="gpu_id")
        else:
            model = resolve_model(p.model or "", field="model")
            gpus = list(s.scalars(q.where(Gpu.model == model)))
            if not gpus:
                raise NotFound(f"no {model} GPUs of yours", field="model")
        for g in gpus:
            g.purchase_price, g.purchased_at = p.price, at
        return [g.id for g in gpus]


def report(db: Database, who: Principal, *, at: datetime | None = None) -> dict[str, Any]:
    """TCO of every GPU in the fleet (providers: their own) and of the fleet."""
    who.require(Role.PROVIDER)
    t_now = at or now()
    d = defaults()
    with db.sessions() as s:
        q = select(Gpu, Node.labels, Node.account_id).join(Node, Node.id == Gpu.node_id)
        rows = [
            (g, labels, acct)
            for g, labels, acct in s.execute(q.order_by(Gpu.node_id, Gpu.index))
            if (who.is_admin or acct == who.account_id) and GpuState(g.lifecycle_state) not in GONE
        ]
        first_seen = dict(
            s.execute(
                select(GpuEvent.gpu_id, func.min(GpuEvent.at)).group_by(GpuEvent.gpu_id)
            ).all()
        )
        joules = dict(
            s.execute(
                select(AttemptEnergy.gpu_id, func.sum(AttemptEnergy.joules)).group_by(
                    AttemptEnergy.gpu_id
                )
            ).all()
        )
        busy: dict[str, float] = {}
        for att in s.scalars(select(Attempt).where(Attempt.started_at.is_not(None))):
            end = utc(att.finished_at) or t_now
            secs = max(0.0, (end - utc(att.started_at)).total_seconds())  # type: ignore[operator]
            for gid in att.gpu_ids:
                busy[gid] = busy.get(gid, 0.0) + secs
    items, utils, out = [], [], []
    for g, labels, _acct in rows:
        spec = catalog().get(g.model)
        rated_kw = (spec.tdp_w or 0.0) / 1000 if spec else 0.0
        since = utc(first_seen.get(g.id)) or t_now
        hours = max((t_now - since).total_seconds() / 3600, 1e-9)
        util = min(1.0, busy.get(g.id, 0.0) / 3600 / hours)
        measured = joules.get(g.id)
        power_kw = (measured / J_PER_KWH / hours) if measured else rated_kw * util
        site = site_from_labels(dict(labels or {}))
        bought = utc(g.purchased_at)
        age = (t_now - bought).days / 365.25 if bought else None
        t = tco(
            TcoInput(
                g.id,
                g.model,
                g.purchase_price,
                age,
                d.depreciation_years,
                power_kw,
                rated_kw,
                site.pue,
                site.tariff_per_kwh,
                d.space_per_kw_month,
                util,
                market_rent(g.model),
            )
        )
        items.append(t)
        utils.append(util)
        out.append(
            t.to_dict()
            | {
                "model": g.model,
                "utilization": round(util, 4),
                "power_kw": round(power_kw, 4),
                "power_source": "measured energy of its work" if measured else "rated power x use",
                "purchase_price": g.purchase_price,
                "age_years": None if age is None else round(age, 2),
            }
        )
    return {
        "gpus": out,
        "fleet": fleet_totals(items, utils),
        "assumptions": {
            "depreciation_years": d.depreciation_years,
            "space_per_kw_month": d.space_per_kw_month,
            "sources": list(d.sources),
            "rent": "median of rental_prices.csv rows for the model (USD per GPU-hour)",
        },
    }


def plot(rep: dict[str, Any], path: str) -> None:
    """Cost per useful GPU-hour against market rent, per GPU (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rep["gpus"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(rows) + 2), 4.5))
    xs = range(len(rows))
    cost = [r["cost_per_useful_hour"] or 0.0 for r in rows]
    rent = [r["rent_per_hour"] or 0.0 for r in rows]
    ax.bar([x - 0.2 for x in xs], cost, width=0.4, label="cost per useful GPU-hour")
    ax.bar([x + 0.2 for x in xs], rent, width=0.4, label="market rent per GPU-hour")
    ax.set_xticks(list(xs), [f"{r['gpu_id']}\n{r['recommendation']}" for r in rows], fontsize=7)
    ax.set_ylabel("USD per hour")
    ax.set_title("GPU cost of ownership vs market rent")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
