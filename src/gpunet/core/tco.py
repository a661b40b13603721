"""Total cost of ownership per GPU: capital, energy and space cost per hour, utilization,
cost per useful GPU-hour, market rent, and a keep | move tier | sell | retire
recommendation with the arithmetic shown. Pure; defaults come from the shipped data.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from gpunet.catalog import catalog

HOURS_PER_YEAR = 8760.0
HOURS_PER_MONTH = HOURS_PER_YEAR / 12


def _rows(name: str) -> list[dict[str, str]]:
    text = resources.files("gpunet.data").joinpath(f"gpus/{name}").read_text()
    return list(csv.DictReader(text.splitlines()))


@dataclass(frozen=True, slots=True)
class Defaults:
    depreciation_years: float
    space_per_kw_month: float
    sources: tuple[str, ...]


@cache
def defaults() -> Defaults:
    """The median server/GPU useful life in the filings of depreciation_and_costs.csv, and
    the global average wholesale colocation rate (CBRE, 2025-Q1), USD per kW-month."""
    rows = _rows("depreciation_and_costs.csv")
    lives = [float(r["value"]) for r in rows if r["item"].startswith("depreciation_life_")]
    space = next(float(r["value"]) for r in rows if r["item"] == "colocation_global_average")
    return Defaults(
        statistics.median(lives),
        space,
        (
            f"depreciation: median of {len(lives)} useful lives (depreciation_and_costs.csv)",
            "space: colocation_global_average, USD per kW-month (depreciation_and_costs.csv)",
        ),
    )


@cache
def market_rent(model: str) -> float | None:
    """Median published rent per GPU-hour for the model (rental_prices.csv), USD."""
    spec = catalog().get(model)
    if spec is None:
        return None
    prices = [
        float(r["usd_per_gpu_hour"])
        for r in _rows("rental_prices.csv")
        if r["spec_name"] == spec.full_name
    ]
    return round(statistics.median(prices), 4) if prices else None


@dataclass(frozen=True, slots=True)
class TcoInput:
    gpu_id: str
    model: str
    purchase_price: float | None
    age_years: float | None  # since purchase
    depreciation_years: float
    power_kw: float  # average draw at the GPU while in service (measured, else estimated)
    rated_kw: float  # for space: colocation is sold per kW of capacity
    pue: float
    tariff_per_kwh: float
    space_per_kw_month: float
    utilization: float  # 0..1 of the hours in service
    rent_per_hour: float | None


@dataclass(frozen=True, slots=True)
class Tco:
    gpu_id: str
    capital_per_hour: float
    energy_per_hour: float
    space_per_hour: float
    cost_per_hour: float
    cost_per_useful_hour: float | None
    rent_per_hour: float | None
    recommendation: str  # keep | move tier | sell | retire
    reasons: tuple[str, ...]
    arithmetic: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu_id": self.gpu_id,
            "capital_per_hour": round(self.capital_per_hour, 4),
            "energy_per_hour": round(self.energy_per_hour, 4),
            "space_per_hour": round(self.space_per_hour, 4),
            "cost_per_hour": round(self.cost_per_hour, 4),
            "cost_per_useful_hour": None
            if self.cost_per_useful_hour is None
            else round(self.cost_per_useful_hour, 4),
            "rent_per_hour": self.rent_per_hour,
            "recommendation": self.recommendation,
            "reasons": list(self.reasons),
            "arithmetic": list(self.arithmetic),
        }


def tco(i: TcoInput) -> Tco:
    math: list[str] = []
    if i.purchase_price is None:
        capital = 0.0
        math.append("capital: no purchase price recorded -> 0/h")
    elif i.age_years is not None and i.age_years >= i.depreciation_years:
        capital = 0.0
        math.append(
            f"capital: {i.age_years:.1f} y old >= {i.depreciation_years:g} y life -> written off"
        )
    else:
        capital = i.purchase_price / (i.depreciation_years * HOURS_PER_YEAR)
        math.append(
            f"capital: {i.purchase_price:g} / ({i.depreciation_years:g} y x 8760 h) "
            f"= {capital:.4f}/h"
        )
    energy = i.power_kw * i.pue * i.tariff_per_kwh
    math.append(
        f"energy: {i.power_kw:.3f} kW x PUE {i.pue:g} x {i.tariff_per_kwh:g}/kWh = {energy:.4f}/h"
    )
    space = i.rated_kw * i.space_per_kw_month / HOURS_PER_MONTH
    math.append(
        f"space: {i.rated_kw:.3f} kW x {i.space_per_kw_month:g}/kW-month / 730 h = {space:.4f}/h"
    )
    total = capital + energy + space
    math.append(f"cost: {capital:.4f} + {energy:.4f} + {space:.4f} = {total:.4f}/h")
    useful = total / i.utilization if i.utilization > 0 else None
    math.append(
        f"per useful GPU-hour: {total:.4f} / {i.utilization:.0%} utilization = {useful:.4f}"
        if useful is not None
        else "per useful GPU-hour: no use recorded"
    )
    rent = i.rent_per_hour
    operating = energy + space
    if rent is None:
        rec, why = "keep", [f"no market rent known for {i.model}: nothing to compare with"]
    elif operating > rent:
        rec = "retire"
        why = [
            f"running it ({operating:.4f}/h for energy and space) costs more than "
            f"it rents for ({rent:g}/h)"
        ]
    elif useful is not None and useful <= rent:
        rec = "keep"
        why = [f"a useful hour costs {useful:.4f}, below the {rent:g}/h market rent"]
    elif i.utilization < 0.5:
        rec = "move tier"
        why = [
            f"a useful hour costs {'more than it earns' if useful is None else f'{useful:.4f}'} "
            f"against {rent:g}/h rent at {i.utilization:.0%} utilization: move it where it is used"
        ]
    else:
        rec = "sell"
        why = [
            f"even at {i.utilization:.0%} utilization a useful hour costs {useful:.4f}, "
            f"above the {rent:g}/h rent"
        ]
    return Tco(i.gpu_id, capital, energy, space, total, useful, rent, rec, tuple(why), tuple(math))


def fleet_totals(items: list[Tco], utilizations: list[float]) -> dict[str, Any]:
    cost = sum(t.cost_per_hour for t in items)
    used = sum(utilizations)
    return {
        "gpus": len(items),
        "cost_per_hour": round(cost, 4),
        "utilization": round(used / len(items), 4) if items else 0.0,
        "cost_per_useful_hour": round(cost / used, 4) if used > 0 else None,
        "recommendations": {
            r: sum(1 for t in items if t.recommendation == r)
            for r in ("keep", "move tier", "sell", "retire")
        },
    }
