"""Prices: an owner's suggested price per GPU-hour, energy cost, and statements of sales.

Pure functions over plain data; the reference market table is read by :func:`reference_prices`
(package data, no I/O beyond it)."""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cache
from importlib import resources

from gpunet.catalog import resolve_model
from gpunet.errors import ValidationFailed

CENT = Decimal("0.01")
# reference-table names that the catalog's alias rules do not resolve
_REFERENCE_ALIASES = {
    "H100 SXM 80GB": "H100-80GB",
    "H100 NVL": "H100-NVL-94GB",
    "GH200": "GH200-96GB",
    "A100 SXM4 80GB": "A100-80GB",
    "A100 SXM4 40GB": "A100-40GB",
}
# how a tier prices relative to the reference market (gpunet's own choice, documented here):
# inference and secondary-market GPUs are older or throttled and rent for less
TIER_FACTORS = {
    "training": Decimal("1.0"),
    "inference": Decimal("0.85"),
    "secondary": Decimal("0.6"),
}


@cache
def reference_prices() -> dict[str, tuple[Decimal, ...]]:
    """Canonical model -> public USD prices per GPU-hour (peak quotes left out)."""
    text = resources.files("gpunet.data").joinpath("gpus/rental_prices.csv").read_text()
    out: dict[str, list[Decimal]] = {}
    for r in csv.DictReader(text.splitlines()):
        if "peak" in r["market"]:
            continue
        name = r["gpu"].strip()
        model = _REFERENCE_ALIASES.get(name)
        if model is None:
            try:
                model = resolve_model(name)
            except ValidationFailed:
                continue
        out.setdefault(model, []).append(Decimal(r["usd_per_gpu_hour"]))
    return {m: tuple(sorted(v)) for m, v in out.items()}


def energy_cost_per_hour(power_w: float | None, price_per_kwh: Decimal) -> Decimal:
    """What running one GPU for an hour costs in electricity (0 when its power is unknown)."""
    if not power_w or power_w <= 0:
        return Decimal(0)
    return (Decimal(str(power_w)) / 1000 * price_per_kwh).quantize(
        Decimal("0.000001"), rounding=ROUND_HALF_UP
    )


@dataclass(frozen=True, slots=True)
class Suggestion:
    price: Decimal
    reference: Decimal | None  # median public price of the model
    benchmark_ratio: Decimal
    tier: str | None
    energy_cost: Decimal
    explanation: str


def suggest_price(
    model: str,
    *,
    references: dict[str, tuple[Decimal, ...]],
    energy_cost: Decimal,
    benchmark_ratio: Decimal = Decimal(1),
    tier: str | None = None,
) -> Suggestion:
    """median public price x benchmark ratio (measured / reference score) x tier factor,
    rounded to a cent and never below the GPU's energy cost per hour."""
    if tier is not None and tier not in TIER_FACTORS:
        raise ValidationFailed("tier", f"unknown tier {tier!r}; known: {', '.join(TIER_FACTORS)}")
    if benchmark_ratio <= 0:
        raise ValidationFailed("benchmark_ratio", "must be positive")
    refs = references.get(model, ())
    floor = energy_cost.quantize(CENT, rounding="ROUND_CEILING")
    if not refs:
        return Suggestion(
            floor,
            None,
            benchmark_ratio,
            tier,
            energy_cost,
            f"no public price for {model}: the energy cost {energy_cost}/h, rounded up",
        )
    ref = Decimal(statistics.median(refs))
    factor = TIER_FACTORS[tier] if tier else Decimal(1)
    raw = (ref * benchmark_ratio * factor).quantize(CENT, rounding=ROUND_HALF_UP)
    price = max(raw, floor)
    parts = [f"median of {len(refs)} public prices {ref}/h", f"x benchmark {benchmark_ratio}"]
    if tier:
        parts.append(f"x tier {tier} {factor}")
    why = " ".join(parts) + f" = {raw}"
    if price > raw:
        why += f"; raised to the energy cost {energy_cost}/h"
    return Suggestion(price, ref, benchmark_ratio, tier, energy_cost, why)
